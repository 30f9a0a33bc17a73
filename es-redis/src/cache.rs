//! [`RedisCache`]: es-core's [`Cache`] on Redis strings with `PX` expiry.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use es_core::{Cache, Result};
use redis::Script;

use crate::connection::{ttl_millis, RedisConnection};

/// The key space of cache entries: `{key_prefix}cache:{key}`.
const SPACE: &str = "cache";

/// Every entry starts with a header: `v` (a value) or `m` (a change mark, no value), then its
/// version as 20 decimal digits (a `u64`, zero-padded). Values follow the header.
const HEADER: usize = 21;

/// Writes a value or a mark unless the entry holds something as new: a value is kept against
/// a value of its version or newer and a mark newer than it; a mark against anything of its
/// version or newer. An entry without a header (written by an older version of this crate)
/// counts as absent. Versions are compared as two 10-digit halves, each exact as a Lua number.
/// ARGV: the new entry (header included), its TTL in ms (0: none). 1 when written.
static SET_IF_NEWER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local new = ARGV[1]
local current = redis.call('GET', KEYS[1])
if current and #current >= 21 then
  local kind = string.sub(current, 1, 1)
  if kind == 'v' or kind == 'm' then
    local function half(s, from) return tonumber(string.sub(s, from, from + 9)) end
    local held_hi, held_lo = half(current, 2), half(current, 12)
    local new_hi, new_lo = half(new, 2), half(new, 12)
    if held_hi and held_lo then
      local order = 0
      if held_hi ~= new_hi then
        order = held_hi > new_hi and 1 or -1
      elseif held_lo ~= new_lo then
        order = held_lo > new_lo and 1 or -1
      end
      if order > 0 then return 0 end
      if order == 0 and (kind == 'v' or string.sub(new, 1, 1) == 'm') then return 0 end
    end
  end
end
if ARGV[2] == '0' then
  redis.call('SET', KEYS[1], new)
else
  redis.call('SET', KEYS[1], new, 'PX', ARGV[2])
end
return 1
",
    )
});

/// An entry: header (`kind`, `version`) and `value`.
fn entry(kind: u8, version: u64, value: &[u8]) -> Vec<u8> {
    let mut entry = Vec::with_capacity(HEADER + value.len());
    entry.push(kind);
    entry.extend_from_slice(format!("{version:020}").as_bytes());
    entry.extend_from_slice(value);
    entry
}

/// The value of a stored entry: `None` for a mark or an entry without a header.
fn value_of(entry: Vec<u8>) -> Option<Bytes> {
    let header_ok = entry.len() >= HEADER && entry[1..HEADER].iter().all(u8::is_ascii_digit);
    (header_ok && entry[0] == b'v').then(|| Bytes::from(entry).slice(HEADER..))
}

fn ttl_arg(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, ttl_millis)
}

/// A [`Cache`] on Redis: each entry is one string key with its TTL as a Redis expiry.
///
/// An entry is its kind (a value or a [change mark](Cache::mark_changed)) and its version,
/// then the value's bytes; [`set_if_newer`](Cache::set_if_newer) and
/// [`mark_changed`](Cache::mark_changed) compare versions and write in one Lua script, so a
/// load that raced a writer cannot put an older value back.
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
/// use es_core::{Cache, CacheExt};
/// use es_redis::{RedisCache, RedisConfig, RedisConnection};
///
/// let cache = RedisCache::new(RedisConnection::connect(RedisConfig::default()).await?);
/// let ttl = Some(Duration::from_secs(60));
/// let total: Option<u64> = cache
///     .get_or_load("order:{42}:total", ttl, || async {
///         // Read the model from the store here, with the version it reflects.
///         Ok::<_, es_core::Error>(Some((1250, 3)))
///     })
///     .await?;
/// // The writer that moved order 42 to version 4 marks its entry: the cached total is
/// // dropped, and a load of version 3 still in flight elsewhere cannot put it back.
/// cache.mark_changed("order:{42}:total", 4, ttl).await?;
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
        Ok(value.and_then(value_of))
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
                set.arg(&key).arg(entry(b'v', 0, &value));
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

    async fn set_if_newer(
        &self,
        key: &str,
        version: u64,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool> {
        self.write_if_newer(key, entry(b'v', version, &value), ttl)
            .await
    }

    async fn mark_changed(&self, key: &str, version: u64, ttl: Option<Duration>) -> Result<()> {
        self.write_if_newer(key, entry(b'm', version, &[]), ttl)
            .await
            .map(drop)
    }
}

impl RedisCache {
    async fn write_if_newer(
        &self,
        key: &str,
        entry: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let key = self.redis_key(key);
        let written = self
            .redis
            .run(|mut connection| async move {
                SET_IF_NEWER
                    .key(&key)
                    .arg(entry)
                    .arg(ttl_arg(ttl))
                    .invoke_async::<i64>(&mut connection)
                    .await
            })
            .await?;
        Ok(written == 1)
    }
}
