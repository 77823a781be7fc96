//! Where Redis is: one URL, or a master found through Sentinel, and the
//! connections made to it.

use std::time::Duration;

use parking_lot::Mutex;
use redis::{Connection, RedisResult};

/// The client for the Redis at `url` (`redis://[:password@]host:port/db`);
/// `password`, if given, overrides the URL's.
///
/// # Errors
///
/// A URL the `redis` crate does not accept (the message holds no password).
pub(crate) fn client(url: &str, password: Option<&str>) -> Result<redis::Client, String> {
    let mut info = redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|e| format!("invalid URL: {e}"))?;
    if let Some(password) = password {
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    redis::Client::open(info).map_err(|e| format!("invalid URL: {e}"))
}

/// Where Redis is: one address, or whichever server the Sentinels name as
/// the master now (asked again on every connect, so that a fail-over is
/// followed).
pub(crate) enum Target {
    Direct(redis::Client),
    Sentinel(Mutex<redis::sentinel::SentinelClient>),
}

impl Target {
    /// A connection to the master, within `timeout`.
    pub(super) fn connection(&self, timeout: Duration) -> RedisResult<Connection> {
        match self {
            Target::Direct(client) => client.get_connection_with_timeout(timeout),
            Target::Sentinel(sentinel) => {
                let client = sentinel.lock().get_client()?;
                client.get_connection_with_timeout(timeout)
            }
        }
    }
}

/// Where `config` says Redis is: `--redis URL`, or `--redis-sentinel` with
/// `--redis-master-name`; `None` without either.
///
/// # Errors
///
/// A URL the `redis` crate does not accept, or Sentinel settings that do
/// not go together (the message holds no password).
pub(crate) fn target(config: &crate::server::config::Config) -> Result<Option<Target>, String> {
    let password = config.redis_password.as_deref();
    match (
        &config.redis,
        config.redis_sentinels.as_slice(),
        &config.redis_master_name,
    ) {
        (None, [], None) => Ok(None),
        (Some(url), [], None) => client(url, password).map(|c| Some(Target::Direct(c))),
        (None, [_, ..], Some(name)) => {
            let mut node = redis::RedisConnectionInfo::default();
            if let Some(password) = password {
                node = node.set_password(password);
            }
            let info = redis::sentinel::SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(node);
            let nodes: Vec<String> = config
                .redis_sentinels
                .iter()
                .map(|addr| format!("redis://{addr}"))
                .collect();
            redis::sentinel::SentinelClient::build(
                nodes,
                name.clone(),
                Some(info),
                redis::sentinel::SentinelServerType::Master,
            )
            .map(|c| Some(Target::Sentinel(Mutex::new(c))))
            .map_err(|e| format!("invalid Sentinel address: {e}"))
        }
        (Some(_), [_, ..], _) => {
            Err("give --redis URL or --redis-sentinel with --redis-master-name, not both".into())
        }
        (_, [], Some(_)) => Err("--redis-master-name needs --redis-sentinel".into()),
        (None, [_, ..], None) => Err("--redis-sentinel needs --redis-master-name".into()),
    }
}

pub(super) fn connect(target: &Target, timeout: Duration) -> RedisResult<Connection> {
    let conn = target.connection(timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    Ok(conn)
}
