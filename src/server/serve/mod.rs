//! Serving connections: the accept loop, a worker thread per busy
//! connection and the thread cache, the timer thread and its wheel, the
//! registry of live connections, the [`Handler`](handler::Handler) API and
//! the [`ServerHandle`](handle::ServerHandle).

pub(crate) mod acceptor;
pub(crate) mod handle;
pub(crate) mod handler;
pub(crate) mod registry;
pub(crate) mod shared;
pub(crate) mod threads;
pub(crate) mod timer;
pub(crate) mod worker;
