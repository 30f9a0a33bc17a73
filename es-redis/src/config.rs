//! [`RedisConfig`]: where Redis is, how keys are named, how long a call may take.

use std::fmt;
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
#[derive(Clone, PartialEq, Eq)]
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

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redacted(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("cluster", &self.cluster)
            .finish()
    }
}

/// `url` with the password of every node replaced by `***`, fit for logs and error messages.
pub(crate) fn redacted(url: &str) -> String {
    url.split(',')
        .map(|node| {
            let Some((scheme, rest)) = node.split_once("://") else {
                return node.to_owned();
            };
            // The userinfo ends at the last `@` before the host; a password may contain `@`.
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => {
                    let user = rest[..at].split_once(':').map_or("", |(user, _)| user);
                    format!("{scheme}://{user}:***{}", &rest[at..])
                }
                None => node.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show_in_debug_output() {
        let config = RedisConfig::new("redis://app:s3cr@t@cache.internal:6379/2");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(
            shown.contains("redis://app:***@cache.internal:6379/2"),
            "{shown}"
        );
    }

    #[test]
    fn redaction_covers_every_node_and_leaves_plain_urls_alone() {
        assert_eq!(
            redacted("redis://:pw@a:1,redis://b:2,rediss://u:pw@c:3"),
            "redis://:***@a:1,redis://b:2,rediss://u:***@c:3"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redacted("not a url"), "not a url");
    }

    #[test]
    fn cluster_seed_nodes_join_into_the_url_and_split_back() {
        let config = RedisConfig::cluster(["redis://a:1", "redis://b:2"]);
        assert!(config.cluster);
        assert_eq!(config.url, "redis://a:1,redis://b:2");
        assert_eq!(config.nodes(), ["redis://a:1", "redis://b:2"]);
        assert!(RedisConfig::new(" , ").nodes().is_empty());
    }
}
