//! What each path of the admin endpoint answers (the table in README,
//! "Operations endpoint"), and who may ask.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::json;

use super::Inner;
use super::http::{Head, Response, host_allowed, same_origin};
use super::metrics::{self, Format};
use crate::server::conn::id::ConnId;
use crate::server::serve::handle::{SendError, ServerHandle};
use crate::server::topics::presence::{Member, parse_member_id};

/// `GET /connections` lists at most this many unless `?limit=` says.
const DEFAULT_LIMIT: usize = 1000;

/// `GET /topics` lists this many per page unless `?limit=` says.
const DEFAULT_TOPICS: usize = 100;

/// The largest `?limit=` of `GET /topics`: a page stays small however many
/// topics there are (the dashboard polls it every second).
const MAX_TOPICS_PAGE: usize = 1000;

/// The pages under `web/`, built in so that the binary serves them as is.
mod web {
    /// `GET /`: live connections, rates by close reason, topics.
    pub(super) const DASHBOARD: &str = include_str!("../../../web/dashboard.html");
    /// `GET /demo`: the browser client against a WebSocket listener.
    pub(super) const DEMO: &str = include_str!("../../../web/demo.html");
    /// `GET /wheel-client.js`: the browser client module.
    pub(super) const CLIENT: &str = include_str!("../../../web/wheel-client.js");
}

/// The status for a failed push to a connection.
fn send_status(e: &SendError) -> u16 {
    match e {
        SendError::UnknownConnection => 404,
        SendError::Closed => 409,
        SendError::OutboxFull | SendError::Unavailable(_) | SendError::TooManyTopics => 503,
        SendError::TooLarge(_) => 413,
        // Gateway Timeout: the backend (Redis) did not answer in time, and
        // the message may have been published.
        SendError::Unknown(_) => 504,
        _ => 400,
    }
}

/// `code=C&reason=R` from a close request's query (code 1000 and an empty
/// reason when left out).
fn close_params(query: &str) -> Result<(u16, String), String> {
    let code = match query_param(query, "code") {
        Some(value) => value
            .parse()
            .map_err(|_| format!("code must be a number, got {value:?}"))?,
        None => crate::protocol::code::NORMAL,
    };
    Ok((code, query_param(query, "reason").unwrap_or_default()))
}

/// The (decoded) value of `key` in a query string.
fn query_param(query: &str, key: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// `limit=N` from a query string.
fn limit(query: &str) -> Result<usize, String> {
    match query_param(query, "limit") {
        Some(value) => value
            .parse()
            .map_err(|_| format!("limit must be a non-negative integer, got {value:?}")),
        None => Ok(DEFAULT_LIMIT),
    }
}

/// One JSON object per live connection, oldest slot first: the public
/// [`ConnectionInfo`](crate::server::ConnectionInfo), as JSON.
fn connections(handle: &ServerHandle, limit: usize) -> String {
    let list: Vec<_> = handle
        .connections()
        .into_iter()
        .take(limit)
        .map(|c| {
            json!({
                "id": c.id.to_string(),
                "peer": c.peer.to_string(),
                "state": c.state,
                "parked": c.parked,
                "protocol": c.protocol.as_str(),
                "tls": c.tls,
                "outbox_bytes": c.outbox_bytes,
                "subscriptions": c.subscriptions,
                "sub": c.subject,
                "age_ms": c.age.as_millis() as u64,
                "idle_ms": c.idle.as_millis() as u64,
                "frames_in": c.received.0,
                "frames_out": c.answered.0,
                "pushed_frames": c.pushed.0,
                "pushed_bytes": c.pushed.1,
                "bytes_in": c.received.1,
                "bytes_out": c.answered.1,
            })
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

impl Inner {
    /// The answer to a request with its body.
    pub(super) fn respond(&self, head: &Head, body: &[u8]) -> Response {
        let shared = &self.shared;
        let (path, query) = head.target.split_once('?').unwrap_or((&head.target, ""));
        // Each segment percent-decoded: a topic or subject with `/`, `:` or
        // a space is reachable (`/publish/chat%2Froom%3A1`, or for a topic,
        // unencoded after `/publish/`).
        let Some(decoded) = path
            .trim_start_matches('/')
            .split('/')
            .map(|s| percent_encoding::percent_decode_str(s).decode_utf8().ok())
            .collect::<Option<Vec<_>>>()
        else {
            return Response::text(400, "a path segment is not UTF-8 once percent-decoded\n");
        };
        let segments: Vec<&str> = decoded.iter().map(|s| s.as_ref()).collect();
        let read = head.method == "GET" || head.method == "HEAD";
        let post = head.method == "POST";
        // The pages hold no data of their own: what they show, they fetch
        // (with the token where one is needed).
        let open = matches!(
            path,
            "/metrics" | "/healthz" | "/readyz" | "/" | "/demo" | "/wheel-client.js" | "/listeners"
        );
        // DNS rebinding: a page on attacker.example that resolves to this
        // address reads what it serves with `Host: attacker.example`.
        if !open
            && let Some(host) = &head.host
            && !host_allowed(host, &shared.config.admin_allowed_hosts)
        {
            return Response::text(
                421,
                &format!(
                    "misdirected request: Host {host} is not this endpoint (allow a name with --admin-allowed-host)\n"
                ),
            );
        }
        // Cross-site request forgery: a browser page elsewhere can POST
        // here (a "simple request" needs no preflight). Browsers say where
        // a request came from; only the endpoint's own pages may change
        // state.
        if post
            && (head.cross_site
                || head
                    .origin
                    .as_deref()
                    .is_some_and(|o| !same_origin(o, head.host.as_deref())))
        {
            return Response::text(403, "cross-site request refused\n");
        }
        if !open && !self.authorized(head) {
            return Response {
                www_authenticate: true,
                ..Response::text(401, "unauthorized: Authorization: Bearer <token>\n")
            };
        }
        match (segments.as_slice(), read, post) {
            ([""], true, _) => Response::page("text/html; charset=utf-8", web::DASHBOARD),
            (["demo"], true, _) => Response::page("text/html; charset=utf-8", web::DEMO),
            (["wheel-client.js"], true, _) => {
                Response::page("text/javascript; charset=utf-8", web::CLIENT)
            }
            (["listeners"], true, _) => {
                let list: Vec<_> = shared
                    .listeners
                    .iter()
                    .map(|l| json!({"addr": l.addr.to_string(), "protocol": l.protocol.as_str(), "path": l.path}))
                    .collect();
                Response::json(200, serde_json::Value::Array(list).to_string())
            }
            (["metrics"], true, _) => {
                let format = Format::negotiate(head.accept.as_deref());
                Response {
                    content_type: format.content_type(),
                    ..Response::text(200, &metrics::scrape(shared, format))
                }
            }
            (["healthz"], true, _) if shared.stopping.load(Ordering::Acquire) => {
                Response::text(503, "draining\n")
            }
            (["healthz"], true, _) => match shared.topics.redis() {
                Some(redis) if !redis.is_up() => Response::text(200, "ok; redis down\n"),
                Some(_) => Response::text(200, "ok; redis up\n"),
                None => Response::text(200, "ok\n"),
            },
            // For balancers that should prefer instances that can publish.
            (["readyz"], true, _) if shared.stopping.load(Ordering::Acquire) => {
                Response::text(503, "draining\n")
            }
            (["readyz"], true, _) => match shared.topics.redis() {
                Some(redis) if !redis.is_up() => Response::text(503, "redis down\n"),
                _ => Response::text(200, "ready\n"),
            },
            (["connections"], true, _) => match limit(query) {
                Ok(limit) => Response::json(200, connections(&self.handle(), limit)),
                Err(e) => Response::text(400, &format!("{e}\n")),
            },
            (["topics"], true, _) => {
                let limit = match query_param(query, "limit").map(|l| l.parse::<usize>()) {
                    None => DEFAULT_TOPICS,
                    Some(Ok(limit)) if (1..=MAX_TOPICS_PAGE).contains(&limit) => limit,
                    Some(_) => {
                        return Response::text(
                            400,
                            &format!("limit must be 1 to {MAX_TOPICS_PAGE}\n"),
                        );
                    }
                };
                let after = query_param(query, "after");
                let (page, total) = self.handle().topics_after(after.as_deref(), limit);
                // The last name of a full page: where the next one starts.
                let next = (page.len() == limit)
                    .then(|| page.last().map(|t| t.topic.clone()))
                    .flatten();
                let list: Vec<_> = page
                    .into_iter()
                    .map(|t| json!({"topic": t.topic, "subscribers": t.subscribers, "last_seq": t.last_seq}))
                    .collect();
                Response::json(
                    200,
                    json!({"total": total, "topics": list, "next": next}).to_string(),
                )
            }
            (["presence", rest @ ..], true, _) if !rest.is_empty() => {
                let topic = rest.join("/");
                let most = shared.config.presence_page;
                let limit = match query_param(query, "limit").map(|l| l.parse::<usize>()) {
                    None => most,
                    Some(Ok(limit)) if (1..=most).contains(&limit) => limit,
                    Some(_) => {
                        return Response::text(400, &format!("limit must be 1 to {most}\n"));
                    }
                };
                let after = query_param(query, "after");
                if after
                    .as_deref()
                    .is_some_and(|a| parse_member_id(a).is_none())
                {
                    return Response::text(400, "after: not a member id\n");
                }
                let page = match self.handle().presence(&topic, after.as_deref(), limit) {
                    Ok(page) => page,
                    Err(e) => return Response::text(503, &format!("{e}\n")),
                };
                // The last member of a page with more after it: where the
                // next one starts.
                let next = page
                    .more
                    .then(|| page.members.last().map(Member::id))
                    .flatten();
                let members: Vec<_> = page
                    .members
                    .iter()
                    .map(|m| json!({"id": m.id(), "user": m.user, "since_ms": m.since_ms}))
                    .collect();
                Response::json(
                    200,
                    json!({
                        "topic": topic,
                        "connections": page.connections,
                        "users": page.users,
                        "members": members,
                        "next": next,
                    })
                    .to_string(),
                )
            }
            (["admin", "reload-tls"], _, true) => {
                match crate::server::admission::tls::reload(shared.tls.as_ref(), &shared.metrics) {
                    Ok(()) => Response::text(200, "reloaded\n"),
                    Err(why) => Response::text(409, &format!("not reloaded: {why}\n")),
                }
            }
            (["publish", rest @ ..], _, true) if !rest.is_empty() => {
                match match &head.idempotency_key {
                    Some(key) => self.handle().publish_once(&rest.join("/"), key, body),
                    None => self.handle().publish(&rest.join("/"), body),
                }
                .inspect_err(|e| e.count_refusal(&shared.metrics))
                {
                    // With Redis, delivery follows the publish on every
                    // instance: nothing to count here.
                    Ok(p) if shared.topics.redis().is_some() => Response::json(
                        200,
                        json!({"topic": rest.join("/"), "seq": p.seq}).to_string(),
                    ),
                    Ok(p) => Response::json(
                        200,
                        json!({"topic": rest.join("/"), "seq": p.seq, "delivered": p.delivered})
                            .to_string(),
                    ),
                    Err(e) => Response::text(send_status(&e), &format!("{e}\n")),
                }
            }
            (["connections", id, "send"], _, true) => {
                let Ok(id) = id.parse::<ConnId>() else {
                    return Response::text(404, "unknown connection\n");
                };
                match self.handle().send(id, body) {
                    Ok(()) => Response::json(
                        200,
                        json!({"id": id.to_string(), "sent": body.len()}).to_string(),
                    ),
                    Err(e) => Response::text(send_status(&e), &format!("{e}\n")),
                }
            }
            (["connections", id, "close"], _, true) => {
                let Ok(id) = id.parse::<ConnId>() else {
                    return Response::text(404, "unknown connection\n");
                };
                let (code, reason) = match close_params(query) {
                    Ok(params) => params,
                    Err(e) => return Response::text(400, &format!("{e}\n")),
                };
                match self.handle().close(id, code, &reason) {
                    Ok(()) => {
                        Response::json(200, json!({"id": id.to_string(), "code": code}).to_string())
                    }
                    Err(e) => Response::text(send_status(&e), &format!("{e}\n")),
                }
            }
            (["users", sub, "send"], _, true) => {
                let (sent, connections) = self.handle().send_to_user(sub, body);
                let status = if connections == 0 { 404 } else { 200 };
                Response::json(
                    status,
                    json!({"sub": sub, "connections": connections, "sent": sent}).to_string(),
                )
            }
            (["users", sub, "close"], _, true) => {
                let (code, reason) = match close_params(query) {
                    Ok(params) => params,
                    Err(e) => return Response::text(400, &format!("{e}\n")),
                };
                let closed = self.handle().close_user(sub, code, &reason);
                let status = if closed == 0 { 404 } else { 200 };
                Response::json(status, json!({"sub": sub, "closed": closed}).to_string())
            }
            (["metrics" | "healthz" | "readyz" | "connections" | "topics"], false, _)
            | (["presence", _, ..], false, _) => Response {
                allow: Some("GET, HEAD"),
                ..Response::text(405, "method not allowed\n")
            },
            (["publish", _, ..] | ["connections" | "users", _, "send" | "close"], _, false) => {
                Response {
                    allow: Some("POST"),
                    ..Response::text(405, "method not allowed\n")
                }
            }
            _ => Response::text(404, "not found\n"),
        }
    }

    /// Whether the request carries the admin token (compared in constant
    /// time), or none is configured.
    pub(super) fn authorized(&self, head: &Head) -> bool {
        let Some(token) = &self.shared.config.admin_token else {
            return true;
        };
        // The scheme is case-insensitive (RFC 9110 section 11.1).
        let given = head
            .authorization
            .as_deref()
            .and_then(|a| a.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
            .unwrap_or_default();
        constant_time_eq::constant_time_eq(given.trim().as_bytes(), token.as_bytes())
    }

    pub(super) fn handle(&self) -> ServerHandle {
        ServerHandle::new(Arc::clone(&self.shared))
    }
}
