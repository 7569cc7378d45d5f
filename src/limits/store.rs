//! The store of the shared budgets: Redis, standalone (TLS or not) or Cluster, through
//! one connection that every call's lease shares (requests are pipelined on it).
//!
//! Each bucket is one key and each lease one script run on it ([`LEASE`]), so the store
//! decides atomically and Redis Cluster places every bucket by its own key. Every
//! request is bounded by `limits.global.timeout`; a connection that breaks is dropped at
//! once, so the requests after it fail without waiting, and [`Store::connect`] (called by
//! the replica announcer every second) makes a new one.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, Script, TlsCertificates};

use super::buckets::Grant;
use super::rules::Rule;
use crate::config::{GlobalLimits, Problem, RedisNodes};

/// The lease script: GCRA over one key per bucket.
pub const LEASE: &str = include_str!("lease.lua");
/// The replica announcement script: a sorted set of live replicas.
pub const ANNOUNCE: &str = include_str!("announce.lua");

/// How long opening a connection may take (TLS included); no call waits for it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the store did not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not connected")]
    NotConnected,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Redis(#[source] redis::RedisError),
    #[error("unexpected answer to the {0} script")]
    Reply(&'static str),
}

impl StoreError {
    /// The `kind` label of `gatehouse_global_limit_store_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::NotConnected => "not_connected",
            StoreError::Timeout(_) => "timeout",
            StoreError::Redis(error) if error.is_timeout() => "timeout",
            StoreError::Redis(error) if broken(error) => "connection",
            StoreError::Redis(_) => "redis",
            StoreError::Reply(_) => "reply",
        }
    }
}

/// Whether the connection `error` came from is gone: a slow answer is not.
fn broken(error: &redis::RedisError) -> bool {
    !error.is_timeout()
        && (error.is_io_error() || error.is_connection_dropped() || error.is_unrecoverable_error())
}

enum Target {
    Standalone(Box<redis::Client>),
    Cluster(Box<redis::cluster::ClusterClient>),
}

#[derive(Clone)]
enum Connection {
    Standalone(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// The store, and the one connection to it.
pub struct Store {
    target: Target,
    timeout: Duration,
    lease: Script,
    announce: Script,
    connection: Mutex<Option<Connection>>,
}

impl Store {
    /// A store for `config`, with `password_file` and `ca_file` read; nothing is
    /// connected yet. Problems name the field at fault.
    pub fn new(config: &GlobalLimits) -> Result<Store, Vec<Problem>> {
        let mut problems = Vec::new();
        let read = |field: &str, path: &std::path::Path, problems: &mut Vec<Problem>| {
            std::fs::read(path)
                .map_err(|error| {
                    problems.push(Problem::new(field, format!("{}: {error}", path.display())));
                })
                .ok()
        };
        let password = config.password_file.as_deref().and_then(|path| {
            let bytes = read("limits.global.password_file", path, &mut problems)?;
            let text = String::from_utf8(bytes).map_err(|_| {
                problems.push(Problem::new(
                    "limits.global.password_file",
                    "not UTF-8 text",
                ));
            });
            Some(text.ok()?.trim_end_matches(['\n', '\r']).to_owned())
        });
        let roots = config
            .ca_file
            .as_deref()
            .and_then(|path| read("limits.global.ca_file", path, &mut problems));
        if !problems.is_empty() {
            return Err(problems);
        }
        let target = target(
            &config.redis,
            password.as_deref(),
            roots,
            config.timeout.get(),
        )?;
        Ok(Store {
            target,
            timeout: config.timeout.get(),
            lease: Script::new(LEASE),
            announce: Script::new(ANNOUNCE),
            connection: Mutex::new(None),
        })
    }

    /// Opens a connection unless one is open; bounded by [`CONNECT_TIMEOUT`].
    pub async fn connect(&self) -> Result<(), StoreError> {
        if self.current().is_ok() {
            return Ok(());
        }
        let connecting = async {
            match &self.target {
                Target::Standalone(client) => {
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(CONNECT_TIMEOUT))
                        .set_response_timeout(Some(self.timeout));
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map(Connection::Standalone)
                }
                Target::Cluster(client) => {
                    client.get_async_connection().await.map(Connection::Cluster)
                }
            }
        };
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| StoreError::Timeout(CONNECT_TIMEOUT))?
            .map_err(StoreError::Redis)?;
        *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = Some(connection);
        Ok(())
    }

    fn current(&self) -> Result<Connection, StoreError> {
        let connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        connection.clone().ok_or(StoreError::NotConnected)
    }

    /// Leases up to `want` tokens of `rule` from the bucket at `key`.
    pub async fn lease(&self, key: &str, rule: &Rule, want: u32) -> Result<Grant, StoreError> {
        let mut invocation = self.lease.key(key);
        invocation
            .arg(format!("{:.3}", rule.interval_us))
            .arg(rule.burst)
            .arg(want);
        let reply: Vec<i64> = self.run(&invocation).await?;
        match reply[..] {
            [granted, left, refill] if granted >= 0 && left >= 0 && refill >= 0 => Ok(Grant {
                granted: u32::try_from(granted).unwrap_or(want).min(want),
                left: left as u64,
                refill: Duration::from_micros(refill as u64),
            }),
            _ => Err(StoreError::Reply("lease")),
        }
    }

    /// Says that `member` is live for `ttl`; the number of live replicas.
    pub async fn announce(
        &self,
        key: &str,
        member: &str,
        ttl: Duration,
    ) -> Result<u32, StoreError> {
        let mut invocation = self.announce.key(key);
        invocation.arg(member).arg(ttl.as_millis() as u64);
        let live: i64 = self.run(&invocation).await?;
        u32::try_from(live).map_err(|_| StoreError::Reply("announce"))
    }

    /// Runs a script within the timeout; a connection found broken is dropped.
    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut connection = self.current()?;
        let answer = async {
            match &mut connection {
                Connection::Standalone(connection) => invocation.invoke_async(connection).await,
                Connection::Cluster(connection) => invocation.invoke_async(connection).await,
            }
        };
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                // A Cluster connection reconnects to its nodes by itself.
                if broken(&error) && matches!(self.target, Target::Standalone(_)) {
                    *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                Err(StoreError::Redis(error))
            }
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }
}

/// The client for `nodes`, with the password and the TLS roots; no I/O.
fn target(
    nodes: &RedisNodes,
    password: Option<&str>,
    roots: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Target, Vec<Problem>> {
    let urls = nodes.urls();
    let mut infos = Vec::new();
    for (field, url) in &urls {
        match url.into_connection_info() {
            Ok(info) => infos.push(info),
            Err(error) => return Err(vec![Problem::new(field, format!("{url:?}: {error}"))]),
        }
    }
    let certificates = || TlsCertificates {
        client_tls: None,
        root_cert: roots.clone(),
    };
    let invalid = |error: redis::RedisError| vec![Problem::new("limits.global.redis", error)];
    match nodes {
        RedisNodes::Standalone(_) => {
            let info = infos.pop().expect("one URL");
            let mut settings = info.redis_settings().clone();
            if let Some(password) = password {
                settings = settings.set_password(password);
            }
            let info = info.set_redis_settings(settings);
            let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
            let client = if tls && roots.is_some() {
                redis::Client::build_with_tls(info, certificates())
            } else {
                redis::Client::open(info)
            };
            client
                .map(|client| Target::Standalone(Box::new(client)))
                .map_err(invalid)
        }
        RedisNodes::Cluster(_) => {
            let username = infos
                .first()
                .and_then(|info| info.redis_settings().username().map(str::to_owned));
            let tls = infos
                .iter()
                .any(|info| matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }));
            let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(timeout)
                .retries(2);
            if let Some(password) = password {
                builder = builder.password(password);
            }
            if let Some(username) = username {
                builder = builder.username(username);
            }
            if tls && roots.is_some() {
                builder = builder.certs(certificates());
            }
            builder
                .build()
                .map(|client| Target::Cluster(Box::new(client)))
                .map_err(invalid)
        }
    }
}
