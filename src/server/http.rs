//! The operations endpoint (`--metrics-listen`): `GET /metrics`,
//! `GET /connections`, `GET /healthz`, served by `tiny_http` on a thread of
//! its own.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use serde_json::json;
use tiny_http::{Header, Method, Request, Response};
use tracing::debug;

use super::shared::Shared;

/// `GET /connections` lists at most this many unless `?limit=` says.
const DEFAULT_LIMIT: usize = 1000;

/// The running endpoint.
pub(crate) struct Endpoint {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl Endpoint {
    /// Binds `addr` and starts serving.
    pub(crate) fn start(shared: Arc<Shared>, addr: SocketAddr) -> io::Result<Endpoint> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| io::Error::other(format!("cannot listen for metrics on {addr}: {e}")))?;
        let server = Arc::new(server);
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| io::Error::other("metrics endpoint is not on an IP address"))?;
        let serving = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("wheel-metrics".into())
            .spawn(move || {
                for request in serving.incoming_requests() {
                    respond(&shared, request);
                }
            })?;
        Ok(Endpoint {
            server,
            thread: Some(thread),
            addr,
        })
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the thread.
    pub(crate) fn stop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop();
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}

fn respond(shared: &Shared, request: Request) {
    let (path, query) = request.url().split_once('?').unwrap_or((request.url(), ""));
    let path = path.to_owned();
    let query = query.to_owned();
    let response = if !matches!(request.method(), Method::Get | Method::Head) {
        Response::from_string("method not allowed\n")
            .with_status_code(405)
            .with_header(header("Allow", "GET, HEAD"))
    } else {
        match path.as_str() {
            "/metrics" => Response::from_string(shared.metrics.encode(&shared.registry))
                .with_header(header(
                    "Content-Type",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )),
            "/connections" => match limit(&query) {
                Ok(limit) => Response::from_string(connections(shared, limit))
                    .with_header(header("Content-Type", "application/json")),
                Err(e) => Response::from_string(format!("{e}\n")).with_status_code(400),
            },
            "/healthz" if shared.stopping.load(Ordering::Acquire) => {
                Response::from_string("draining\n").with_status_code(503)
            }
            "/healthz" => Response::from_string("ok\n"),
            _ => Response::from_string("not found\n").with_status_code(404),
        }
    };
    if let Err(e) = request.respond(response) {
        debug!("metrics endpoint: could not answer {path}: {e}");
    }
}

/// `limit=N` from a query string.
fn limit(query: &str) -> Result<usize, String> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "limit" {
            return value
                .parse()
                .map_err(|_| format!("limit must be a non-negative integer, got {value:?}"));
        }
    }
    Ok(DEFAULT_LIMIT)
}

/// One JSON object per live connection, oldest slot first.
fn connections(shared: &Shared, limit: usize) -> String {
    let now_tick = shared.clock.now();
    let tick_ms = shared.config.tick.as_secs_f64() * 1e3;
    let list: Vec<_> = shared
        .registry
        .snapshot()
        .iter()
        .take(limit)
        .map(|conn| {
            let (received, sent) = conn.traffic.snapshot();
            let idle_ticks = now_tick.saturating_sub(conn.activity.get());
            json!({
                "id": conn.id.to_string(),
                "peer": conn.peer().to_string(),
                "state": conn.out.close_state().label(),
                "protocol": conn.protocol.as_str(),
                "outbox_bytes": conn.out.queued_bytes(),
                "age_ms": conn.opened.elapsed().as_millis() as u64,
                "idle_ms": (idle_ticks as f64 * tick_ms) as u64,
                "frames_in": received.frames.iter().sum::<u64>(),
                "frames_out": sent.frames.iter().sum::<u64>(),
                "bytes_in": received.bytes.iter().sum::<u64>(),
                "bytes_out": sent.bytes.iter().sum::<u64>(),
            })
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}
