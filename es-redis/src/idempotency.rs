//! [`RedisIdempotencyStore`]: es-core's [`IdempotencyStore`] as one Redis hash per key,
//! changed only by Lua scripts so that each check-and-set is atomic.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use es_core::{Claim, ClaimToken, Error, IdempotencyStore, Ownership, Result};
use redis::Script;

use crate::connection::{ttl_millis, RedisConnection};
use crate::error::Corrupt;

/// The key space of idempotency records: `{key_prefix}idem:{key}`.
const SPACE: &str = "idem";

/// Claims a free key, or reports what holds it. The record is a hash: `fp` (the fingerprint
/// of the request that claimed it), `owner` (the holder's token) and, once finished, `resp`
/// (its response). An in-progress record expires with its lease, so a key whose holder stopped
/// renewing is simply absent here. Lua's `false` becomes a nil reply, so the reply is always a
/// pair.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local fp = redis.call('HGET', KEYS[1], 'fp')
if not fp then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'owner', ARGV[3])
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

/// Extends the lease of an in-progress record held by the token; 1 when it did.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
if redis.call('HEXISTS', KEYS[1], 'resp') == 1 then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
",
    )
});

/// Stores the holder's finished response and restarts the TTL, in one step; 1 when the token
/// holds the record (a second completion keeps the first response).
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
if redis.call('HEXISTS', KEYS[1], 'resp') == 1 then return 1 end
redis.call('HSET', KEYS[1], 'resp', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
",
    )
});

/// Frees a key whose holder's request failed, but never forgets a finished response; 1 when
/// the token holds the record.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
if redis.call('HEXISTS', KEYS[1], 'resp') == 0 then redis.call('DEL', KEYS[1]) end
return 1
",
    )
});

/// An [`IdempotencyStore`] on Redis.
///
/// Each idempotency key is one Redis hash (the claiming request's fingerprint, its holder's
/// token and, once it finished, its response). An in-progress claim expires with its short
/// lease, which its holder renews; a completed one with the response's TTL. Every change runs
/// as a Lua script, so of any number of racing claims of a free key exactly one gets
/// [`Claim::Acquired`], a claim with a different fingerprint gets [`Claim::Mismatch`], and
/// only the holder's token renews, completes or releases. Every record is a single key, so it
/// lives in one slot of a cluster.
///
/// ```no_run
/// # async fn demo() -> es_core::Result<()> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use es_core::{Claim, ClaimGuard, IdempotencyStore, Ownership};
/// use es_redis::{RedisConfig, RedisConnection, RedisIdempotencyStore};
///
/// let redis = RedisConnection::connect(RedisConfig::default()).await?;
/// let store: Arc<dyn IdempotencyStore> = Arc::new(RedisIdempotencyStore::new(redis));
/// let (lease, ttl) = (Duration::from_secs(15), Duration::from_secs(24 * 60 * 60));
/// match store.claim("Idempotency-Key: 7f3a", "sha256-of-the-body", lease).await? {
///     Claim::Acquired(token) => {
///         // Renewed while the request runs; released if the request is cut off.
///         let guard = ClaimGuard::hold(store.clone(), "Idempotency-Key: 7f3a", token, lease);
///         let response = br#"{"order_id":"42"}"#; // handle the request here
///         if guard.complete(response.to_vec().into(), ttl).await? == Ownership::Lost {
///             // The lease ran out first: a retry may have run the request again.
///         }
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
    async fn claim(&self, key: &str, fingerprint: &str, lease: Duration) -> Result<Claim> {
        let redis_key = self.redis_key(key);
        let token = ClaimToken::new();
        let owner = token.as_str();
        let (outcome, response) = self
            .redis
            .run(|mut connection| async move {
                CLAIM
                    .key(&redis_key)
                    .arg(fingerprint)
                    .arg(ttl_millis(lease))
                    .arg(owner)
                    .invoke_async::<(i64, Option<Vec<u8>>)>(&mut connection)
                    .await
            })
            .await?;
        match (outcome, response) {
            (0, _) => Ok(Claim::Acquired(token)),
            (1, _) => Ok(Claim::InProgress),
            (2, Some(response)) => Ok(Claim::Completed(Bytes::from(response))),
            (3, _) => Ok(Claim::Mismatch),
            (outcome, _) => Err(Error::serialization(
                "idempotency claim",
                Corrupt(format!("unexpected claim outcome {outcome} for `{key}`")),
            )),
        }
    }

    async fn renew(&self, key: &str, token: &ClaimToken, lease: Duration) -> Result<Ownership> {
        let redis_key = self.redis_key(key);
        let held = self
            .redis
            .run(|mut connection| async move {
                RENEW
                    .key(&redis_key)
                    .arg(token.as_str())
                    .arg(ttl_millis(lease))
                    .invoke_async::<i64>(&mut connection)
                    .await
            })
            .await?;
        Ok(Ownership::from(held == 1))
    }

    async fn complete(
        &self,
        key: &str,
        token: &ClaimToken,
        response: Bytes,
        ttl: Duration,
    ) -> Result<Ownership> {
        let redis_key = self.redis_key(key);
        let held = self
            .redis
            .run(|mut connection| async move {
                COMPLETE
                    .key(&redis_key)
                    .arg(token.as_str())
                    .arg(response.as_ref())
                    .arg(ttl_millis(ttl))
                    .invoke_async::<i64>(&mut connection)
                    .await
            })
            .await?;
        Ok(Ownership::from(held == 1))
    }

    async fn release(&self, key: &str, token: &ClaimToken) -> Result<Ownership> {
        let redis_key = self.redis_key(key);
        let held = self
            .redis
            .run(|mut connection| async move {
                RELEASE
                    .key(&redis_key)
                    .arg(token.as_str())
                    .invoke_async::<i64>(&mut connection)
                    .await
            })
            .await?;
        Ok(Ownership::from(held == 1))
    }
}
