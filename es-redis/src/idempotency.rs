//! [`RedisIdempotencyStore`]: es-core's [`IdempotencyStore`] as one Redis hash per key,
//! changed only by Lua scripts so that each check-and-set is atomic.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use es_core::{Claim, Error, IdempotencyStore, Result};
use redis::Script;

use crate::connection::{ttl_millis, RedisConnection};
use crate::error::Corrupt;

/// The key space of idempotency records: `{key_prefix}idem:{key}`.
const SPACE: &str = "idem";

/// Claims a free key, or reports what holds it. The record is a hash: `fp` (the fingerprint
/// of the request that claimed it) and, once finished, `resp` (its response). Lua's `false`
/// becomes a nil reply, so the reply is always a pair.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local fp = redis.call('HGET', KEYS[1], 'fp')
if not fp then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {0, false}
end
if fp ~= ARGV[1] then return {3, false} end
local resp = redis.call('HGET', KEYS[1], 'resp')
if resp then return {2, resp} end
return {1, false}
",
    )
});

/// Stores the finished response and restarts the TTL, in one step.
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'resp', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
",
    )
});

/// Frees a key whose request failed, but never forgets a finished response.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HEXISTS', KEYS[1], 'resp') == 0 then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// An [`IdempotencyStore`] on Redis.
///
/// Each idempotency key is one Redis hash (the claiming request's fingerprint and, once it
/// finished, its response) that expires after the TTL. Claims run as a Lua script, so of any
/// number of racing claims of a free key exactly one gets [`Claim::Acquired`], and a claim
/// with a different fingerprint gets [`Claim::Mismatch`]. Every record is a single key, so
/// it lives in one slot of a cluster.
///
/// ```no_run
/// # async fn demo() -> es_core::Result<()> {
/// use std::time::Duration;
/// use es_core::{Claim, IdempotencyStore};
/// use es_redis::{RedisConfig, RedisConnection, RedisIdempotencyStore};
///
/// let store = RedisIdempotencyStore::new(RedisConnection::connect(RedisConfig::default()).await?);
/// let ttl = Duration::from_secs(24 * 60 * 60);
/// match store.claim("Idempotency-Key: 7f3a", "sha256-of-the-body", ttl).await? {
///     Claim::Acquired => {
///         let response = br#"{"order_id":"42"}"#; // handle the request here
///         store.complete("Idempotency-Key: 7f3a", "sha256-of-the-body", response.to_vec().into(), ttl).await?;
///     }
///     Claim::Completed(response) => { /* answer `response` again */ let _ = response; }
///     Claim::InProgress => { /* 409: the first request is still running */ }
///     Claim::Mismatch => { /* 422: the key was used for another request */ }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RedisIdempotencyStore {
    redis: RedisConnection,
}

impl RedisIdempotencyStore {
    /// A store on `redis`, its keys under the connection's key prefix.
    pub fn new(redis: RedisConnection) -> Self {
        RedisIdempotencyStore { redis }
    }

    /// The connection this store uses.
    pub fn connection(&self) -> &RedisConnection {
        &self.redis
    }

    /// The full Redis key that holds the record of `key`.
    pub fn redis_key(&self, key: &str) -> String {
        self.redis.key(SPACE, key)
    }
}

#[async_trait]
impl IdempotencyStore for RedisIdempotencyStore {
    async fn claim(&self, key: &str, fingerprint: &str, ttl: Duration) -> Result<Claim> {
        let redis_key = self.redis_key(key);
        let (outcome, response) = self
            .redis
            .run(|mut connection| async move {
                CLAIM
                    .key(&redis_key)
                    .arg(fingerprint)
                    .arg(ttl_millis(ttl))
                    .invoke_async::<(i64, Option<Vec<u8>>)>(&mut connection)
                    .await
            })
            .await?;
        match (outcome, response) {
            (0, _) => Ok(Claim::Acquired),
            (1, _) => Ok(Claim::InProgress),
            (2, Some(response)) => Ok(Claim::Completed(Bytes::from(response))),
            (3, _) => Ok(Claim::Mismatch),
            (outcome, _) => Err(Error::serialization(
                "idempotency claim",
                Corrupt(format!("unexpected claim outcome {outcome} for `{key}`")),
            )),
        }
    }

    async fn complete(
        &self,
        key: &str,
        fingerprint: &str,
        response: Bytes,
        ttl: Duration,
    ) -> Result<()> {
        let redis_key = self.redis_key(key);
        self.redis
            .run(|mut connection| async move {
                COMPLETE
                    .key(&redis_key)
                    .arg(fingerprint)
                    .arg(response.as_ref())
                    .arg(ttl_millis(ttl))
                    .invoke_async::<()>(&mut connection)
                    .await
            })
            .await
    }

    async fn release(&self, key: &str) -> Result<()> {
        let redis_key = self.redis_key(key);
        self.redis
            .run(|mut connection| async move {
                RELEASE
                    .key(&redis_key)
                    .invoke_async::<()>(&mut connection)
                    .await
            })
            .await
    }
}
