//! [`RedisConfig`]: where Redis is, how keys are named, how long a call may take.

use std::time::Duration;

/// The standard local Redis, used when nothing else is configured.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// How to reach Redis, shared by every store of a [`RedisConnection`](crate::RedisConnection).
///
/// Build it with [`RedisConfig::new`] and the `with_*` methods, or with struct update syntax
/// from [`RedisConfig::default`]:
///
/// ```
/// use std::time::Duration;
/// use es_redis::RedisConfig;
///
/// let config = RedisConfig::new("redis://127.0.0.1:6379")
///     .with_key_prefix("shop:")
///     .with_timeout(Duration::from_millis(250));
/// assert_eq!(config.key_prefix, "shop:");
///
/// let same = RedisConfig {
///     key_prefix: "shop:".into(),
///     timeout: Duration::from_millis(250),
///     ..RedisConfig::default()
/// };
/// assert_eq!(same.url, config.url);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// The server's URL (`redis://[user:password@]host:port[/db]`, `rediss://` for TLS when
    /// the redis crate is built with it). With [`cluster`](Self::cluster) on, a comma-separated
    /// list of seed nodes of the cluster (one reachable node is enough to find the rest).
    pub url: String,
    /// Put in front of every key this crate writes (`es:` by default), so several applications
    /// or test runs can share one Redis without seeing each other's keys. Keep hash tags
    /// (`{...}`) out of it on a cluster, or every key lands in one slot.
    pub key_prefix: String,
    /// The longest any one call may take, connecting included. When it passes, the call
    /// returns [`Error::Unavailable`](es_core::Error::Unavailable): a dead or stuck Redis costs
    /// the caller this much at most, never a hang.
    pub timeout: Duration,
    /// The longest one attempt to open a connection to a node may take.
    pub connect_timeout: Duration,
    /// Talk to a Redis Cluster through the redis crate's cluster connection, which follows
    /// slot moves and node failures. Needs this crate's feature `cluster`; without it,
    /// connecting fails with [`Error::InvalidInput`](es_core::Error::InvalidInput).
    pub cluster: bool,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: DEFAULT_URL.to_owned(),
            key_prefix: "es:".to_owned(),
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(500),
            cluster: false,
        }
    }
}

impl RedisConfig {
    /// The defaults, with `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            ..RedisConfig::default()
        }
    }

    /// The configuration for a Redis Cluster reached through `seed_nodes`.
    pub fn cluster<I, S>(seed_nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let url = seed_nodes
            .into_iter()
            .map(|node| node.as_ref().to_owned())
            .collect::<Vec<_>>()
            .join(",");
        RedisConfig {
            url,
            cluster: true,
            ..RedisConfig::default()
        }
    }

    /// Sets [`key_prefix`](Self::key_prefix).
    pub fn with_key_prefix(mut self, key_prefix: impl Into<String>) -> Self {
        self.key_prefix = key_prefix.into();
        self
    }

    /// Sets [`timeout`](Self::timeout).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn with_connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.connect_timeout = connect_timeout;
        self
    }

    /// Sets [`cluster`](Self::cluster).
    pub fn with_cluster(mut self, cluster: bool) -> Self {
        self.cluster = cluster;
        self
    }

    /// The seed nodes: [`url`](Self::url) split at commas, blanks dropped.
    pub(crate) fn nodes(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|node| !node.is_empty())
            .collect()
    }
}
