//! [`PgLeaseStore`]: es-core's [`LeaseStore`] in PostgreSQL.

use std::time::Duration;

use async_trait::async_trait;
use es_core::{LeaseStore, Result};
use sqlx::postgres::PgPool;

use crate::error::from_sqlx;
use crate::store::PgEventStore;

/// A [`LeaseStore`] in the event store's schema (table `leases`), for relays that run on
/// several instances of a service.
///
/// Acquiring is one `INSERT ... ON CONFLICT DO UPDATE` that takes the lease when it is free,
/// expired or already the caller's, so racing holders are settled by the primary key. Expiry
/// uses the database clock, so the hosts' clocks need not agree.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use es_core::{EventBus, Relay};
/// use es_postgres::{PgEventStore, PgLeaseStore};
///
/// # async fn demo(store: PgEventStore, bus: Arc<dyn EventBus>) {
/// # let shutdown = std::future::pending::<()>();
/// // Every instance of the service runs this; only the lease holder publishes.
/// let relay = Relay::builder("relay-order")
///     .store(store.clone())
///     .bus(bus)
///     .checkpoints(store.clone())
///     .lease(PgLeaseStore::new(&store), Duration::from_secs(5))
///     .build();
/// relay.run(shutdown).await; // releases the lease on the way out
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct PgLeaseStore {
    pool: PgPool,
}

impl PgLeaseStore {
    /// A store on `store`'s pool and schema (run [`PgEventStore::migrate`] first).
    pub fn new(store: &PgEventStore) -> Self {
        PgLeaseStore {
            pool: store.pool().clone(),
        }
    }
}

#[async_trait]
impl LeaseStore for PgLeaseStore {
    async fn try_acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        Ok(sqlx::query_scalar::<_, i32>(
            "INSERT INTO leases (name, holder, expires_at) \
             VALUES ($1, $2, now() + make_interval(secs => $3)) \
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, \
               expires_at = EXCLUDED.expires_at \
             WHERE leases.holder = EXCLUDED.holder OR leases.expires_at < now() \
             RETURNING 1",
        )
        .bind(name)
        .bind(holder)
        .bind(ttl.as_secs_f64())
        .fetch_optional(&self.pool)
        .await
        .map_err(from_sqlx)?
        .is_some())
    }

    async fn release(&self, name: &str, holder: &str) -> Result<()> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(from_sqlx)?;
        Ok(())
    }
}
