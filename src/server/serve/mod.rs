//! Serving connections: the accept loop, a worker thread per busy
//! connection and the thread cache, the parking thread where idle ones
//! wait without a thread, the timer thread and its wheel, the registry of
//! live connections, the [`Handler`](handler::Handler) API and
//! the [`ServerHandle`](handle::ServerHandle).

pub(crate) mod acceptor;
pub(crate) mod handle;
pub(crate) mod handler;
pub(crate) mod park;
pub(crate) mod registry;
pub(crate) mod shared;
pub(crate) mod threads;
pub(crate) mod timer;
pub(crate) mod worker;
