//! [`RedisLeaseStore`]: es-core's [`LeaseStore`] as one Redis string per lease, holding the
//! holder's id and expiring after the TTL.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use es_core::{LeaseStore, Result};
use redis::Script;

use crate::connection::{ttl_millis, RedisConnection};

/// The key space of leases: `{key_prefix}lease:{name}`.
const SPACE: &str = "lease";

/// Takes a free lease (`SET NX PX`), or renews it when the caller already holds it; one
/// script, so a lease that expires between the two steps cannot be lost to a stale answer.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
",
    )
});

/// Deletes the lease only if the caller holds it.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// A [`LeaseStore`] on Redis, for relays that run on several instances of a service.
///
/// Each lease is one key holding its holder's id, with Redis's own expiry as the TTL, so the
/// hosts' clocks need not agree. Acquiring and releasing are Lua scripts: a holder renews and
/// releases only its own lease. Every lease is a single key, so it lives in one slot of a
/// cluster.
///
/// ```no_run
/// # async fn demo() -> es_core::Result<()> {
/// use std::time::Duration;
/// use es_core::LeaseStore;
/// use es_redis::{RedisConfig, RedisConnection, RedisLeaseStore};
///
/// let leases = RedisLeaseStore::new(RedisConnection::connect(RedisConfig::default()).await?);
/// if leases.try_acquire("relay-order", "instance-a", Duration::from_secs(5)).await? {
///     // instance-a relays; it renews well before the 5 s run out
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RedisLeaseStore {
    redis: RedisConnection,
}

impl RedisLeaseStore {
    /// A store on `redis`, its keys under the connection's key prefix.
    pub fn new(redis: RedisConnection) -> Self {
        RedisLeaseStore { redis }
    }

    /// The connection this store uses.
    pub fn connection(&self) -> &RedisConnection {
        &self.redis
    }

    /// The full Redis key that holds the lease `name`.
    pub fn redis_key(&self, name: &str) -> String {
        self.redis.key(SPACE, name)
    }
}

#[async_trait]
impl LeaseStore for RedisLeaseStore {
    async fn try_acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let redis_key = self.redis_key(name);
        let acquired = self
            .redis
            .run(|mut connection| async move {
                ACQUIRE
                    .key(&redis_key)
                    .arg(holder)
                    .arg(ttl_millis(ttl))
                    .invoke_async::<i64>(&mut connection)
                    .await
            })
            .await?;
        Ok(acquired == 1)
    }

    async fn release(&self, name: &str, holder: &str) -> Result<()> {
        let redis_key = self.redis_key(name);
        self.redis
            .run(|mut connection| async move {
                RELEASE
                    .key(&redis_key)
                    .arg(holder)
                    .invoke_async::<()>(&mut connection)
                    .await
            })
            .await
    }
}
