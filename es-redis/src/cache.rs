//! [`RedisCache`]: es-core's [`Cache`] on Redis strings with `PX` expiry.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use es_core::{Cache, Result};

use crate::connection::{ttl_millis, RedisConnection};

/// The key space of cache entries: `{key_prefix}cache:{key}`.
const SPACE: &str = "cache";

/// A [`Cache`] on Redis: each entry is one string key with its TTL as a Redis expiry.
///
/// Typed JSON values and cache-aside loading come from [`es_core::CacheExt`], which every
/// `Cache` has. The cache is an optimization, never the truth: when Redis is down each call
/// fails within [`RedisConfig::timeout`](crate::RedisConfig::timeout), and
/// [`get_or_load`](es_core::CacheExt::get_or_load) then loads from the store and answers
/// anyway.
///
/// ```no_run
/// # async fn demo() -> es_core::Result<()> {
/// use std::time::Duration;
/// use es_core::CacheExt;
/// use es_redis::{RedisCache, RedisConfig, RedisConnection};
///
/// let cache = RedisCache::new(RedisConnection::connect(RedisConfig::default()).await?);
/// let total: Option<u64> = cache
///     .get_or_load("order:{42}:total", Some(Duration::from_secs(60)), || async {
///         Ok::<_, es_core::Error>(Some(1250)) // read the model from the store here
///     })
///     .await?;
/// // The projection that changed order 42 drops what was cached about it:
/// cache.invalidate(["order:{42}:total", "order:{42}:lines"]).await?;
/// # let _ = total; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RedisCache {
    redis: RedisConnection,
}

impl RedisCache {
    /// A cache on `redis`, its keys under the connection's key prefix.
    pub fn new(redis: RedisConnection) -> Self {
        RedisCache { redis }
    }

    /// The connection this cache uses.
    pub fn connection(&self) -> &RedisConnection {
        &self.redis
    }

    /// The full Redis key under which `key` is cached (prefix and key space included).
    pub fn redis_key(&self, key: &str) -> String {
        self.redis.key(SPACE, key)
    }

    /// Removes every one of `keys`, in one round trip; returns how many were present.
    ///
    /// A projection calls this when it changes a read model, for every cache entry derived
    /// from it. On one node the removal is atomic. On a cluster, keys are removed together
    /// per hash slot, so give keys that belong together one hash tag (`order:{42}:total`,
    /// `order:{42}:lines`) and a reader never sees half of them gone.
    pub async fn invalidate<I, K>(&self, keys: I) -> Result<u64>
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        let keys: Vec<String> = keys
            .into_iter()
            .map(|key| self.redis_key(key.as_ref()))
            .collect();
        if keys.is_empty() {
            return Ok(0);
        }
        self.redis
            .run(|mut connection| async move {
                // UNLINK frees large values off the server's main thread.
                redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async::<u64>(&mut connection)
                    .await
            })
            .await
    }
}

#[async_trait]
impl Cache for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let key = self.redis_key(key);
        let value = self
            .redis
            .run(|mut connection| async move {
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<Vec<u8>>>(&mut connection)
                    .await
            })
            .await?;
        Ok(value.map(Bytes::from))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        if ttl.is_some_and(|ttl| ttl.is_zero()) {
            // An entry that expires at once: the same as no entry, and Redis refuses `PX 0`.
            return self.delete(key).await;
        }
        let key = self.redis_key(key);
        self.redis
            .run(|mut connection| async move {
                let mut set = redis::cmd("SET");
                set.arg(&key).arg(value.as_ref());
                if let Some(ttl) = ttl {
                    set.arg("PX").arg(ttl_millis(ttl));
                }
                set.query_async::<()>(&mut connection).await
            })
            .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.invalidate([key]).await.map(drop)
    }
}
