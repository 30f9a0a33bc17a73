//! [`PgEventStore`]: the store on its pool (and a small one for subscriptions' page reads), how
//! it opens, migrates and closes. Beside this file: appends, the commit of a unit of work,
//! inline projections, subscriptions, and the stores that share its transactions, each in a file named after its trait (`Inbox` in
//! `inbox.rs`, `SagaStore` in `saga_store.rs`, ...). Housekeeping, health, telemetry and
//! read-model administration are features of their own, in the crate's top-level files.

mod append;
mod checkpoints;
mod commit;
mod event_store;
mod inbox;
mod inline;
mod parked_events;
mod read_ahead;
mod saga_store;
mod snapshots;
mod subscribe;

use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

use es_core::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Connection;
use tokio::sync::Semaphore;

use crate::config::PgConfig;
use crate::error::{from_sqlx, unique_violation, BACKEND};
use crate::listener::{Announcer, Listener, Wakes};
use crate::projection::PgProjection;

use append::AppendStatements;
pub(crate) use checkpoints::save_checkpoint;
pub(crate) use subscribe::wait_for_work;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A PostgreSQL event store on one connection pool (and a small second one that only
/// subscriptions' page reads use, see [`PgConfig::page_read_connections`]).
///
/// One struct implements [`EventStore`](es_core::EventStore), [`Inbox`](es_core::Inbox),
/// [`CheckpointStore`](es_core::CheckpointStore), [`SnapshotStore`](es_core::SnapshotStore) and
/// [`SagaStore`](es_core::SagaStore), so a [`UnitOfWork`](es_core::UnitOfWork) (appends, inbox
/// entry, checkpoint) is one transaction. Cloning is cheap and shares the pools.
///
/// See the crate documentation for the schema and the ordering guarantee.
#[derive(Clone)]
pub struct PgEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// Subscriptions' page reads, on connections that keep one plan per statement.
    page_reads: PgPool,
    config: PgConfig,
    channel: String,
    appends: AppendStatements,
    /// Wakes subscriptions after this process's appends and when a `NOTIFY` arrives.
    wake: Arc<Wakes>,
    /// The background `LISTEN` task, started by the first subscription.
    listener: Mutex<Option<Listener>>,
    /// Sends the `NOTIFY` after appends commit.
    announcer: Mutex<Option<Announcer>>,
    /// Streaming catch-ups that may run at once: each holds a pool connection while its
    /// consumer works, and consumers (a relay saving its checkpoint, a projection writing) need
    /// connections of the same pool. Half the pool beside the listener's connection.
    catch_up_permits: Arc<Semaphore>,
    /// Projections applied in every commit's transaction (read-your-writes).
    inline: RwLock<Vec<Arc<dyn PgProjection>>>,
    /// The next pages of scans under way, read while their callers work.
    read_ahead: read_ahead::ReadAhead,
}

impl fmt::Debug for PgEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgEventStore")
            .field("schema", &self.inner.config.schema)
            .field("pool_size", &self.inner.pool.size())
            .field("page_read_pool_size", &self.inner.page_reads.size())
            .finish()
    }
}

impl PgEventStore {
    /// Connects to `url` (e.g. `postgres://user:pass@host/db`) with `config`.
    ///
    /// Fails with [`Error::Unavailable`] when the server does not answer. Call
    /// [`migrate`](Self::migrate) before the first use of a schema.
    pub async fn connect(url: &str, config: PgConfig) -> Result<Self> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| Error::InvalidInput(format!("bad PostgreSQL URL: {e}")))?;
        Self::connect_with(options, config).await
    }

    /// Connects with explicit connect options (TLS, socket, ...) and `config`. The options'
    /// `search_path` and `application_name` are replaced by the config's.
    pub async fn connect_with(options: PgConnectOptions, config: PgConfig) -> Result<Self> {
        config.validate()?;
        // The search path travels in the startup packet: no extra round trip per connection,
        // and the listener's connection gets it too. `public` stays reachable for the user's
        // own tables.
        let options = options
            .application_name(&config.application_name)
            .options([("search_path", format!("{},public", config.schema))]);
        let pool = pool_options(&config, config.max_connections)
            .min_connections(config.min_connections)
            .connect_with(options.clone())
            .await
            .map_err(from_sqlx)?;
        // Opened as page reads need them; see `PgConfig::page_read_connections`.
        let page_reads = pool_options(&config, config.page_read_connections)
            .connect_lazy_with(options.options([("plan_cache_mode", "force_generic_plan")]));
        let channel = config.channel();
        let announcer = tokio::runtime::Handle::try_current()
            .ok()
            .filter(|_| config.notify)
            .map(|runtime| Announcer::spawn(&runtime, pool.clone(), channel.clone()));
        // One connection is the listener's; of the rest, half may stream.
        let catch_up_permits = Arc::new(Semaphore::new(
            config.max_connections.saturating_sub(1) as usize / 2,
        ));
        Ok(PgEventStore {
            inner: Arc::new(Inner {
                pool,
                page_reads,
                channel,
                config,
                appends: AppendStatements::new(),
                wake: Arc::new(Wakes::default()),
                listener: Mutex::new(None),
                announcer: Mutex::new(announcer),
                catch_up_permits,
                inline: RwLock::default(),
                read_ahead: read_ahead::ReadAhead::default(),
            }),
        })
    }

    /// Creates the schema if needed and applies the embedded migrations. Idempotent, and safe
    /// to run from several processes at once (the migrator takes an advisory lock).
    pub async fn migrate(&self) -> Result<()> {
        let create = format!(
            "CREATE SCHEMA IF NOT EXISTS \"{}\"",
            self.inner.config.schema
        );
        // Two processes creating the same schema at once can collide in the catalog; the
        // loser finds it there on the second try.
        for attempt in 0..2 {
            match sqlx::query(&create).execute(&self.inner.pool).await {
                Ok(_) => break,
                Err(e) if attempt == 0 && unique_violation(&e).is_some() => continue,
                Err(e) => return Err(from_sqlx(e)),
            }
        }
        MIGRATOR.run(&self.inner.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => from_sqlx(e),
            other => Error::backend(BACKEND, other),
        })?;
        self.check_transaction_ids().await
    }

    /// Refuses a log whose stored transaction ids are ahead of the cluster's: that happens when
    /// events are restored from a logical dump into another cluster, and new events would then
    /// sort before old ones, behind every reader's checkpoint.
    async fn check_transaction_ids(&self) -> Result<()> {
        let (stored, next): (Option<i64>, i64) = sqlx::query_as(
            "SELECT (SELECT max(tx_id) FROM events), \
             pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
        )
        .fetch_one(&self.inner.pool)
        .await
        .map_err(from_sqlx)?;
        match stored {
            Some(stored) if stored >= next => Err(Error::backend(
                BACKEND,
                format!(
                    "the events of schema `{}` carry transaction ids up to {stored}, but this \
                     cluster's next transaction id is {next}: the log was restored from another \
                     cluster, and new events would sort before old ones (see the crate's \
                     operations notes)",
                    self.inner.config.schema
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The pool, for the application's own queries (its connections use this store's schema
    /// first in their `search_path`).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The settings this store runs with.
    pub fn config(&self) -> &PgConfig {
        &self.inner.config
    }

    /// Closes the pools and stops the listener; later calls fail with [`Error::Unavailable`].
    pub async fn close(&self) {
        if let Ok(mut listener) = self.inner.listener.lock() {
            listener.take();
        }
        if let Ok(mut announcer) = self.inner.announcer.lock() {
            announcer.take();
        }
        self.inner.pool.close().await;
        self.inner.page_reads.close().await;
    }

    /// The pool of subscriptions' page reads.
    pub(crate) fn page_read_pool(&self) -> &PgPool {
        &self.inner.page_reads
    }
}

/// A pool of at most `max` connections with the store's timeouts and checks.
fn pool_options(config: &PgConfig, max: u32) -> PgPoolOptions {
    // sqlx checks a connection with a round trip as it is released, and by default again as it
    // is acquired: under load that second check is a round trip per statement or transaction
    // for a connection released a moment ago. Only one idle for a while, which the server may
    // have closed meanwhile, is checked again.
    let check_idle_after = config.check_idle_after;
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(config.acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= check_idle_after {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}
