//! Transactional projections: read-model writes and the checkpoint commit together.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use es_core::projection::TypedDecoder;
use es_core::{
    Backoff, BoxError, DomainEvent, Envelope, Error, Position, RecordedEvent, Result, StreamFilter,
};
use sqlx::PgConnection;

use crate::error::{from_sqlx, to_u64, BACKEND};
use crate::log::{read_visible, HORIZON};
use crate::store::{save_checkpoint, wait_for_work, PgEventStore};

/// A read model in the same database as the events, updated in the transaction that also
/// moves its checkpoint: each event's effect happens exactly once, whatever crashes.
///
/// ```
/// use es_core::{BoxError, RecordedEvent};
/// use es_postgres::PgProjection;
/// use sqlx::PgConnection;
///
/// struct EventCounts;
///
/// #[async_trait::async_trait]
/// impl PgProjection for EventCounts {
///     fn name(&self) -> &str {
///         "event-counts"
///     }
///
///     async fn apply(&self, conn: &mut PgConnection, event: &RecordedEvent) -> Result<(), BoxError> {
///         sqlx::query(
///             "INSERT INTO event_counts (event_type, n) VALUES ($1, 1) \
///              ON CONFLICT (event_type) DO UPDATE SET n = event_counts.n + 1",
///         )
///         .bind(&event.event_type)
///         .execute(&mut *conn)
///         .await?;
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait PgProjection: Send + Sync {
    /// The checkpoint name; renaming it rebuilds the projection from the start.
    fn name(&self) -> &str;

    /// Which streams it reads.
    fn filter(&self) -> StreamFilter {
        StreamFilter::All
    }

    /// Applies one event inside the batch's transaction. An error rolls back the whole batch
    /// (and its checkpoint), so the batch is retried from where it began.
    async fn apply(&self, conn: &mut PgConnection, event: &RecordedEvent) -> Result<(), BoxError>;

    /// Applies a batch of events, in order, inside the batch's transaction: what the runners
    /// call. By default one [`apply`](PgProjection::apply) per event; override it to write a
    /// batch in a few statements (rows from arrays through `UNNEST`) when the projection sees
    /// many events per batch, which saves a round trip and a statement per event. It must
    /// leave the tables as applying the events one by one would. An error rolls back the whole
    /// batch.
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), BoxError> {
        for event in events {
            self.apply(&mut *conn, event)
                .await
                .map_err(|e| format!("at {}: {e}", event.position))?;
        }
        Ok(())
    }

    /// Applies the events a commit appended, inside the commit's transaction, when the
    /// projection is written inline ([`PgEventStore::with_inline_projection`]). By default
    /// [`apply_batch`](PgProjection::apply_batch). A read model written inline and also kept by
    /// a runner can tell the two apart here: a commit's events are new, where most of what the
    /// runner reads the commits have written already (so its `apply_batch` may first look
    /// which rows are behind, a read the commit need not make).
    async fn apply_inline(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), BoxError> {
        self.apply_batch(conn, events).await
    }

    /// The version of this projection's code, for [`PgReadModelRunner`](crate::PgReadModelRunner):
    /// raise it when the tables or what `apply` writes change, and the read model is rebuilt
    /// into new tables while the old ones keep serving.
    fn version(&self) -> u32 {
        1
    }

    /// The tables readers query, for [`PgReadModelRunner`](crate::PgReadModelRunner): each is
    /// seen through a view of the same name in the store's schema.
    fn tables(&self) -> Vec<String> {
        Vec::new()
    }

    /// Creates the tables of a new generation, for
    /// [`PgReadModelRunner`](crate::PgReadModelRunner). It runs with the generation's own schema
    /// first in the `search_path`, so unqualified names (as `apply` uses them too) land there.
    async fn create(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        let _ = conn;
        Ok(())
    }

    /// Whether commits also write this read model inline
    /// ([`PgEventStore::with_inline_projection`]), for
    /// [`PgReadModelRunner`](crate::PgReadModelRunner): its switch to a rebuilt generation then
    /// waits for inline writes in flight and carries every committed event into the new
    /// generation before readers see it, so a read right after a commit finds its rows across
    /// the switch. `apply` must then be idempotent, as an inline projection's is anyway (its
    /// runner applies each event again).
    fn written_inline(&self) -> bool {
        false
    }
}

/// A [`PgProjection`] written against one domain event type: wrap it in [`PgTyped`], which
/// decodes the events and skips (logging once per type) those of a type
/// [`Event`](PgTypedProjection::Event) does not know, such as a type another service added
/// later. Run it with a [`PgProjectionRunner`], or inline with
/// [`PgEventStore::with_inline_projection`].
///
/// ```
/// use es_core::{BoxError, DomainEvent, Envelope, StreamFilter};
/// use es_postgres::{PgTyped, PgTypedProjection};
/// use sqlx::PgConnection;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// enum OrderEvent { Placed { total: i64 }, Cancelled }
/// impl DomainEvent for OrderEvent {}
///
/// struct OrderTotals;
///
/// #[es_core::async_trait]
/// impl PgTypedProjection for OrderTotals {
///     type Event = OrderEvent;
///     const NAME: &'static str = "order-totals";
///     fn filter(&self) -> StreamFilter { StreamFilter::category("order") }
///     async fn apply(&self, conn: &mut PgConnection, event: Envelope<OrderEvent>) -> Result<(), BoxError> {
///         if let OrderEvent::Placed { total } = event.event {
///             sqlx::query("INSERT INTO order_totals (order_id, total) VALUES ($1, $2)")
///                 .bind(event.stream_id.entity_id())
///                 .bind(total)
///                 .execute(&mut *conn)
///                 .await?;
///         }
///         Ok(())
///     }
/// }
///
/// let projection = std::sync::Arc::new(PgTyped::new(OrderTotals));
/// # let _ = projection;
/// ```
#[async_trait]
pub trait PgTypedProjection: Send + Sync + 'static {
    /// The events it reads.
    type Event: DomainEvent;

    /// The checkpoint name; renaming it rebuilds the projection from the start.
    const NAME: &'static str;

    /// Which streams it reads.
    fn filter(&self) -> StreamFilter {
        StreamFilter::All
    }

    /// Applies one event inside the batch's (or the append's) transaction.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: Envelope<Self::Event>,
    ) -> Result<(), BoxError>;
    /// See [`PgProjection::version`].
    fn version(&self) -> u32 {
        1
    }

    /// See [`PgProjection::tables`].
    fn tables(&self) -> Vec<String> {
        Vec::new()
    }

    /// See [`PgProjection::create`].
    async fn create(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        let _ = conn;
        Ok(())
    }

    /// See [`PgProjection::written_inline`].
    fn written_inline(&self) -> bool {
        false
    }
}

/// The adaptor that runs a [`PgTypedProjection`] as a [`PgProjection`].
pub struct PgTyped<P> {
    projection: P,
    decoder: TypedDecoder,
}

impl<P: PgTypedProjection> fmt::Debug for PgTyped<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTyped").field("name", &P::NAME).finish()
    }
}

impl<P: PgTypedProjection> PgTyped<P> {
    /// Wraps `projection`.
    pub fn new(projection: P) -> Self {
        PgTyped {
            projection,
            decoder: TypedDecoder::new(),
        }
    }

    /// The wrapped projection.
    pub fn inner(&self) -> &P {
        &self.projection
    }
}

#[async_trait]
impl<P: PgTypedProjection> PgProjection for PgTyped<P> {
    fn name(&self) -> &str {
        P::NAME
    }

    fn filter(&self) -> StreamFilter {
        self.projection.filter()
    }

    fn version(&self) -> u32 {
        self.projection.version()
    }

    fn tables(&self) -> Vec<String> {
        self.projection.tables()
    }

    async fn create(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        self.projection.create(conn).await
    }

    fn written_inline(&self) -> bool {
        self.projection.written_inline()
    }

    async fn apply(&self, conn: &mut PgConnection, event: &RecordedEvent) -> Result<(), BoxError> {
        match self.decoder.decode::<P::Event>(P::NAME, event)? {
            Some(envelope) => self.projection.apply(conn, envelope).await,
            None => Ok(()),
        }
    }
}

/// Runs [`PgProjection`]s: reads a batch after the checkpoint, applies it and saves the new
/// checkpoint in one transaction.
///
/// Two runners of the same projection (two instances of a service) take turns: each batch
/// holds a transaction-scoped advisory lock on the projection's name.
#[derive(Clone)]
pub struct PgProjectionRunner {
    store: PgEventStore,
    batch_size: usize,
    backoff: Backoff,
}

impl fmt::Debug for PgProjectionRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgProjectionRunner")
            .field("store", &self.store)
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

impl PgProjectionRunner {
    /// A runner on `store`, applying batches of up to 500 events.
    pub fn new(store: PgEventStore) -> Self {
        PgProjectionRunner {
            store,
            batch_size: 500,
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(5)),
        }
    }

    /// Applies at most `batch_size` events per transaction (at least 1).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Applies one batch after the projection's checkpoint and moves the checkpoint, in one
    /// transaction. Returns how many events it applied (0: caught up).
    pub async fn run_batch(&self, projection: &dyn PgProjection) -> Result<usize> {
        let name = projection.name();
        let mut tx = self.store.pool().begin().await.map_err(from_sqlx)?;
        // Serializes runners of one projection without taking a transaction id: reading the
        // log below must not be held back by this very transaction.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('es-projection:' || $1, 0))")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(from_sqlx)?;
        let after =
            sqlx::query_as::<_, (i64, i64)>("SELECT tx_id, seq FROM checkpoints WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(from_sqlx)?
                .map_or(Position::START, |(tx_id, seq)| {
                    Position::new(to_u64(tx_id), to_u64(seq))
                });
        let events = read_visible(&mut tx, &projection.filter(), after, self.batch_size).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            tx.rollback().await.map_err(from_sqlx)?;
            return Ok(0);
        };
        projection
            .apply_batch(&mut tx, &events)
            .await
            .map_err(|e| Error::backend("projection", format!("{name} failed: {e}")))?;
        save_checkpoint(&mut tx, name, last).await?;
        tx.commit().await.map_err(from_sqlx)?;
        Ok(events.len())
    }

    /// Applies batches until the projection has caught up; returns its checkpoint.
    pub async fn catch_up(&self, projection: &dyn PgProjection) -> Result<Position> {
        while self.run_batch(projection).await? == self.batch_size {}
        Ok(
            es_core::CheckpointStore::load(&self.store, projection.name())
                .await?
                .unwrap_or_default(),
        )
    }

    /// Whether an event `projection` reads is visible after its checkpoint. One statement,
    /// outside a transaction.
    async fn has_work(&self, projection: &dyn PgProjection) -> Result<bool> {
        let (category, bind_category) = match projection.filter() {
            StreamFilter::Category(category) => ("category = $2 AND ", Some(category)),
            _ => ("", None),
        };
        let sql = format!(
            "SELECT (SELECT tx_id FROM events \
                     WHERE {category}(tx_id, seq) > (c.tx_id, c.seq) AND tx_id < {HORIZON} \
                     ORDER BY tx_id, seq LIMIT 1) IS NOT NULL \
             FROM (SELECT coalesce(max(tx_id), 0) AS tx_id, coalesce(max(seq), 0) AS seq \
                   FROM checkpoints WHERE name = $1) AS c"
        );
        let query = sqlx::query_scalar::<_, bool>(&sql).bind(projection.name());
        let query = match bind_category {
            Some(category) => query.bind(category),
            None => query,
        };
        query.fetch_one(self.store.pool()).await.map_err(from_sqlx)
    }

    /// Runs `projection` until `shutdown` completes: catches up, then waits for appends
    /// (notifications, with the store's poll interval as fallback). Failures (the database
    /// gone, `apply` failing) are logged and retried with backoff from the checkpoint, so the
    /// projection resumes where it stood once the cause is gone.
    pub async fn run(
        &self,
        projection: Arc<dyn PgProjection>,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        tokio::pin!(shutdown);
        let mut wake = self.store.wake_receiver_for(&projection.filter());
        let poll = self.store.config().poll_interval;
        let mut backoff = self.backoff.clone();
        loop {
            wake.borrow_and_update();
            let pause = match self.run_batch(&*projection).await {
                Ok(applied) if applied == self.batch_size => {
                    backoff.reset();
                    continue;
                }
                Ok(_) => {
                    backoff.reset();
                    // Woken by an append, look before starting a batch (one statement against
                    // a transaction of four): most wake-ups of a busy store find nothing
                    // visible for this projection yet.
                    let woken = wait_for_work(&mut wake, poll, &mut shutdown, || {
                        self.has_work(&*projection)
                    });
                    if !woken.await {
                        return;
                    }
                    continue;
                }
                Err(error) => {
                    tracing::warn!(projection = projection.name(), %error, backend = BACKEND, "projection batch failed; retrying");
                    backoff.next_delay()
                }
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}
