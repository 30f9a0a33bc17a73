//! [`RedisConnection`]: one multiplexed, self-healing connection shared by every store.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use es_core::{Error, Result};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::OnceCell;

use crate::config::{redacted, RedisConfig};
use crate::error::{from_redis, TimedOut, BACKEND};

/// A connection to Redis (one node or a cluster), cheap to clone and shared by every store.
///
/// On a single node it is the redis crate's `ConnectionManager`: one multiplexed connection
/// that every task pipelines its commands over, replaced in the background when it breaks. On
/// a cluster it is the crate's cluster connection, which keeps one such connection per node
/// and follows slot moves. Either way every call is bounded by
/// [`RedisConfig::timeout`]: when Redis is down, calls fail with
/// [`Error::Unavailable`] instead of waiting, and work again once it is back.
///
/// ```no_run
/// # async fn demo() -> es_core::Result<()> {
/// use es_redis::{RedisCache, RedisConfig, RedisConnection, RedisIdempotencyStore};
///
/// let redis = RedisConnection::connect(RedisConfig::new("redis://127.0.0.1:6379")).await?;
/// let cache = RedisCache::new(redis.clone());
/// let idempotency = RedisIdempotencyStore::new(redis);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisConnection {
    inner: Arc<Inner>,
}

struct Inner {
    config: RedisConfig,
    target: Target,
    /// Opened by the first call that needs it; a failed attempt leaves it empty so the next
    /// call tries again. Once open, the connection repairs itself.
    connection: OnceCell<Connection>,
}

enum Target {
    Single(redis::Client),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster::ClusterClient),
}

/// The open connection, whichever kind; cloning shares it.
#[derive(Clone)]
pub(crate) enum Connection {
    Single(ConnectionManager),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl RedisConnection {
    /// Connects, waiting (at most [`RedisConfig::timeout`]) for the first connection.
    ///
    /// Fails with [`Error::InvalidInput`] for a malformed configuration and with
    /// [`Error::Unavailable`] when Redis does not answer. Use [`lazy`](Self::lazy) when an
    /// application should start while Redis is still down.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        let redis = Self::lazy(config)?;
        redis.ping().await?;
        Ok(redis)
    }

    /// Checks the configuration now and connects on first use. While Redis cannot be
    /// reached, each call fails fast with [`Error::Unavailable`] and the next one tries again.
    pub fn lazy(config: RedisConfig) -> Result<Self> {
        if config.timeout.is_zero() {
            return Err(Error::InvalidInput(
                "the redis timeout must be longer than zero".into(),
            ));
        }
        let nodes = config.nodes();
        if nodes.is_empty() {
            return Err(Error::InvalidInput("no redis url given".into()));
        }
        let invalid = |error: redis::RedisError| {
            Error::InvalidInput(format!(
                "invalid redis url `{}`: {error}",
                redacted(&config.url)
            ))
        };
        let target = if config.cluster {
            Self::cluster_target(&config, &nodes)?
        } else {
            let [url] = nodes.as_slice() else {
                return Err(Error::InvalidInput(format!(
                    "`{}` names several nodes; set `cluster` to use a Redis Cluster",
                    redacted(&config.url)
                )));
            };
            Target::Single(redis::Client::open(*url).map_err(invalid)?)
        };
        Ok(RedisConnection {
            inner: Arc::new(Inner {
                config,
                target,
                connection: OnceCell::new(),
            }),
        })
    }

    #[cfg(feature = "cluster")]
    fn cluster_target(config: &RedisConfig, nodes: &[&str]) -> Result<Target> {
        let client = redis::cluster::ClusterClient::builder(nodes.to_vec())
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.timeout)
            // A few quick retries ride out a slot move or a fail-over; the call's own
            // timeout still bounds the whole.
            .retries(2)
            .min_retry_wait(10)
            .max_retry_wait(200)
            .build()
            .map_err(|error| {
                Error::InvalidInput(format!(
                    "invalid redis cluster `{}`: {error}",
                    redacted(&config.url)
                ))
            })?;
        Ok(Target::Cluster(client))
    }

    #[cfg(not(feature = "cluster"))]
    fn cluster_target(_config: &RedisConfig, _nodes: &[&str]) -> Result<Target> {
        Err(Error::InvalidInput(
            "redis cluster mode needs es-redis to be built with its feature `cluster`".into(),
        ))
    }

    /// The configuration this connection was made with.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// `true` when this connection talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.config.cluster
    }

    /// Asks Redis for a `PONG`: a health check, bounded by the timeout like every call.
    pub async fn ping(&self) -> Result<()> {
        self.run(|mut connection| async move {
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .map(drop)
        })
        .await
    }

    /// `{key_prefix}{space}:{key}`: the full Redis key of `key` in one store's key space.
    pub(crate) fn key(&self, space: &str, key: &str) -> String {
        let prefix = &self.inner.config.key_prefix;
        let mut full = String::with_capacity(prefix.len() + space.len() + 1 + key.len());
        full.push_str(prefix);
        full.push_str(space);
        full.push(':');
        full.push_str(key);
        full
    }

    /// Runs `op` on the connection (opening it first when needed), bounded by the timeout,
    /// with redis errors mapped to [`es_core::Error`].
    pub(crate) async fn run<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let timeout = self.inner.config.timeout;
        let call = async {
            let connection = self.open().await?;
            op(connection).await.map_err(from_redis)
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(Error::unavailable(BACKEND, TimedOut { after: timeout })),
        }
    }

    async fn open(&self) -> Result<Connection> {
        self.inner
            .connection
            .get_or_try_init(|| async {
                match &self.inner.target {
                    Target::Single(client) => {
                        let config = ConnectionManagerConfig::new()
                            .set_connection_timeout(self.inner.config.connect_timeout)
                            // No retries inside one reconnect: its backoff starts at a second
                            // and grows to a minute, and calls would wait on it all that time.
                            // A failed attempt makes the next call start a fresh one instead,
                            // so the connection is back as soon as Redis is.
                            .set_number_of_retries(0);
                        ConnectionManager::new_with_config(client.clone(), config)
                            .await
                            .map(Connection::Single)
                    }
                    #[cfg(feature = "cluster")]
                    Target::Cluster(client) => {
                        client.get_async_connection().await.map(Connection::Cluster)
                    }
                }
                .map_err(from_redis)
            })
            .await
            .cloned()
    }
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnection")
            .field("config", &self.inner.config)
            .field("opened", &self.inner.connection.initialized())
            .finish()
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            #[cfg(feature = "cluster")]
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(connection) => connection.req_packed_commands(cmd, offset, count),
            #[cfg(feature = "cluster")]
            Connection::Cluster(connection) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            #[cfg(feature = "cluster")]
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

/// Milliseconds for `PX`/`PEXPIRE`: at least 1 (Redis refuses 0), at most a century (Redis
/// refuses expiry times that overflow its clock; nobody can tell a century from forever).
pub(crate) fn ttl_millis(ttl: Duration) -> u64 {
    const CENTURY_MS: u128 = 100 * 365 * 24 * 60 * 60 * 1000;
    ttl.as_millis().clamp(1, CENTURY_MS) as u64
}
