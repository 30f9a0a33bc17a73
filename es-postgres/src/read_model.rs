//! Versioned read models: tables per generation, views that readers query, blue/green rebuilds.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use es_core::{
    Backoff, Error, Position, ProjectionAdmin, ProjectionInfo, ProjectionPhase, RecordedEvent,
    Result, StreamFilter,
};
use sqlx::{PgConnection, Postgres, Transaction};

use crate::error::{from_sqlx, to_i64, to_u64, BACKEND};
use crate::log::{read_committed, EventRow, EVENT_COLUMNS, HORIZON};
use crate::projection::PgProjection;
use crate::store::{wait_for_work, PgEventStore};

/// Runs versioned read models: a [`PgProjection`] whose tables live in a schema per
/// generation, seen by readers through views in the store's schema that always point at a
/// complete generation.
///
/// - The first run creates generation 1 (its schema, [`create`](PgProjection::create), the
///   views of its [`tables`](PgProjection::tables)) and makes it active.
/// - Each batch reads events after the generation's checkpoint, applies them and moves the
///   checkpoint in one transaction, so a crash mid-batch neither loses nor doubles an effect.
///   Runners of one generation (several instances of a service) take turns on a
///   transaction-scoped advisory lock of that generation and read the checkpoint after taking
///   it, so they never apply an event twice.
/// - When the code's [`version`](PgProjection::version) is newer than the active generation's,
///   or an operator asks for a rebuild ([`ProjectionAdmin::rebuild`]), a new generation is
///   built from the start of the log beside the active one, which keeps serving (and keeps
///   being updated by the runners that still run the old code). Once the new generation has
///   caught up, one transaction holding both generations' locks applies what is left, points
///   the views at the new tables, makes it active and drops the old schema: readers never see
///   a half-built model, and nothing is lost at the switch.
/// - A runner whose code is older than the active generation's does nothing (it logs why):
///   newer code has taken over.
///
/// ```no_run
/// # async fn example(store: es_postgres::PgEventStore, model: std::sync::Arc<dyn es_postgres::PgProjection>) -> es_core::Result<()> {
/// use es_core::ProjectionAdmin;
/// use es_postgres::PgReadModelRunner;
///
/// let runner = PgReadModelRunner::new(store.clone());
/// runner.catch_up(&*model).await?; // or `runner.run(model, shutdown)` to follow live
/// for generation in store.status().await? {
///     println!("{} v{}: {} events behind", generation.name, generation.version, generation.events_behind);
/// }
/// store.rebuild("order-summaries").await?; // the runner rebuilds it beside the active one
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgReadModelRunner {
    store: PgEventStore,
    batch_size: usize,
    backoff: Backoff,
    linger: Duration,
}

impl fmt::Debug for PgReadModelRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgReadModelRunner")
            .field("store", &self.store)
            .field("batch_size", &self.batch_size)
            .field("linger", &self.linger)
            .finish()
    }
}

/// What one [`PgReadModelRunner::step`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadModelStep {
    /// Events applied, to every generation this runner builds.
    pub applied: usize,
    /// Whether a full batch was applied (more may be waiting).
    pub more: bool,
    /// Whether a rebuilt generation became active.
    pub switched: bool,
    /// Whether a rebuild is still under way.
    pub building: bool,
    /// Whether newer code has taken the read model over, so this runner does nothing.
    pub superseded: bool,
}

#[derive(Clone, Copy, Debug)]
struct Generation {
    generation: i64,
    version: i32,
    ready: bool,
}

impl PgReadModelRunner {
    /// A runner on `store`, applying batches of up to 500 events.
    pub fn new(store: PgEventStore) -> Self {
        PgReadModelRunner {
            store,
            batch_size: 500,
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(5)),
            linger: Duration::ZERO,
        }
    }

    /// Applies at most `batch_size` events per transaction (at least 1).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// In [`run`](Self::run), waits this long after an append wakes it before applying, so
    /// that the appends arriving meanwhile share the batch (default: none). Under a steady
    /// stream of small commits each wake-up would otherwise apply one or two events in a
    /// transaction of its own; a few milliseconds trade that much freshness of the read model
    /// for far fewer transactions. A full batch, and the catch-up after a restart, never wait.
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// The schema of generation `generation` of projection `name`.
    pub fn schema_of(&self, name: &str, generation: u64) -> Result<String> {
        generation_schema(&self.store.config().schema, name, generation as i64)
    }

    /// One step: sets up a generation when one is due (the first, or a rebuild), applies a
    /// batch to each generation this code builds, and switches readers to a rebuilt generation
    /// that has caught up.
    pub async fn step(&self, model: &dyn PgProjection) -> Result<ReadModelStep> {
        let name = model.name();
        let version = i32::try_from(model.version())
            .map_err(|_| Error::InvalidInput(format!("projection `{name}`: version too large")))?;
        generation_schema(&self.store.config().schema, name, 1)?;
        let (active, building) = match self.plan(model, version).await? {
            Some(plan) => plan,
            None => {
                return Ok(ReadModelStep {
                    superseded: true,
                    ..ReadModelStep::default()
                })
            }
        };
        let mut step = ReadModelStep::default();
        if active.version == version {
            let applied = self.run_batch(model, active.generation).await?;
            step.applied += applied;
            step.more |= applied == self.batch_size;
        }
        if let Some(building) = building.filter(|b| b.version == version && b.ready) {
            step.building = true;
            let applied = self.run_batch(model, building.generation).await?;
            step.applied += applied;
            if applied == self.batch_size {
                step.more = true;
            } else {
                let (applied, switched) = self.switch(model, active, building).await?;
                step.applied += applied;
                step.switched = switched;
                step.building = !switched;
                step.more |= !switched;
            }
        }
        Ok(step)
    }

    /// Steps until the read model has caught up and no rebuild is under way.
    pub async fn catch_up(&self, model: &dyn PgProjection) -> Result<()> {
        loop {
            let step = self.step(model).await?;
            if step.superseded || (!step.more && !step.building) {
                return Ok(());
            }
        }
    }

    /// Runs `model` until `shutdown` completes: steps while there is work, then waits for
    /// appends (notifications, with the store's poll interval as fallback; a requested rebuild
    /// is noticed at the next wake-up or poll). Failures are logged and retried with backoff.
    pub async fn run(
        &self,
        model: Arc<dyn PgProjection>,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        tokio::pin!(shutdown);
        let mut wake = self.store.wake_receiver_for(&model.filter());
        let poll = self.store.config().poll_interval;
        let mut backoff = self.backoff.clone();
        let mut told_superseded = false;
        loop {
            wake.borrow_and_update();
            let pause = match self.step(&*model).await {
                Ok(step) if step.more => {
                    backoff.reset();
                    continue;
                }
                Ok(step) => {
                    backoff.reset();
                    if step.superseded && !told_superseded {
                        told_superseded = true;
                        tracing::warn!(projection = model.name(), version = model.version(), backend = BACKEND, "a newer version of this projection is active; this runner leaves it alone");
                    }
                    // Woken by an append, look before stepping: most wake-ups of a busy store
                    // find nothing visible for this model yet (another category's commit, or
                    // one held back by an older transaction), and a step costs two
                    // transactions where the look is one statement. The poll always steps, so
                    // a requested rebuild is noticed however quiet the log.
                    let woken =
                        wait_for_work(&mut wake, poll, &mut shutdown, || self.has_work(&*model));
                    if !woken.await {
                        return;
                    }
                    if !self.linger.is_zero() {
                        tokio::select! {
                            _ = &mut shutdown => return,
                            _ = tokio::time::sleep(self.linger) => {}
                        }
                    }
                    continue;
                }
                Err(error) => {
                    tracing::warn!(projection = model.name(), %error, backend = BACKEND, "read model step failed; retrying");
                    backoff.next_delay()
                }
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Whether a [`step`](Self::step) would do anything for `model`: `false` only when its
    /// active generation is ready, built by this code's version, no rebuild is under way, and
    /// no event it reads is visible after its checkpoint. One statement, outside a transaction.
    async fn has_work(&self, model: &dyn PgProjection) -> Result<bool> {
        let version = i32::try_from(model.version())
            .map_err(|_| Error::InvalidInput("projection version too large".into()))?;
        let (category, bind_category) = match model.filter() {
            StreamFilter::Category(category) => ("category = $3 AND ", Some(category)),
            _ => ("", None),
        };
        let sql = format!(
            "SELECT coalesce(bool_or(\
               pv.state <> 'active' OR NOT pv.ready OR pv.version <> $2 \
               OR (SELECT tx_id FROM events \
                   WHERE {category}(tx_id, seq) > (pv.tx_id, pv.seq) AND tx_id < {HORIZON} \
                   ORDER BY tx_id, seq LIMIT 1) IS NOT NULL), true) \
             FROM projection_versions pv WHERE pv.name = $1"
        );
        let query = sqlx::query_scalar::<_, bool>(&sql)
            .bind(model.name())
            .bind(version);
        let query = match bind_category {
            Some(category) => query.bind(category),
            None => query,
        };
        query.fetch_one(self.store.pool()).await.map_err(from_sqlx)
    }

    /// Under the projection's lock: creates the first generation, or a building one when the
    /// code is newer than the active one, or the tables of a requested rebuild. `None` when
    /// the active generation is newer than this code.
    async fn plan(
        &self,
        model: &dyn PgProjection,
        version: i32,
    ) -> Result<Option<(Generation, Option<Generation>)>> {
        let name = model.name();
        const GENERATIONS: &str =
            "SELECT generation, version, state, ready FROM projection_versions WHERE name = $1";
        // Most steps change nothing here: the active generation is this code's, and a rebuild
        // under way (if any) is this code's and set up. That needs no lock and no transaction,
        // one read. Anything else (a first generation, a rebuild to start, set up or give way)
        // takes the projection's lock and reads again under it. A switch may follow either
        // read: the batch then finds its generation gone and applies nothing.
        let rows: Vec<(i64, i32, String, bool)> = sqlx::query_as(GENERATIONS)
            .bind(name)
            .fetch_all(self.store.pool())
            .await
            .map_err(from_sqlx)?;
        match (
            find_generation(&rows, "active"),
            find_generation(&rows, "building"),
        ) {
            (Some(active), _) if active.version > version => return Ok(None),
            (Some(active), building)
                if active.version == version
                    && building.is_none_or(|b| b.version == version && b.ready) =>
            {
                return Ok(Some((active, building)))
            }
            _ => {}
        }
        let mut tx = self.store.pool().begin().await.map_err(from_sqlx)?;
        lock(&mut tx, name, None).await?;
        let rows: Vec<(i64, i32, String, bool)> = sqlx::query_as(GENERATIONS)
            .bind(name)
            .fetch_all(&mut *tx)
            .await
            .map_err(from_sqlx)?;
        let find = |state: &str| find_generation(&rows, state);
        let next = rows.iter().map(|r| r.0).max().unwrap_or(0) + 1;
        let category = match model.filter() {
            StreamFilter::Category(category) => Some(category),
            _ => None,
        };
        let mut changed = false;
        let active = match find("active") {
            Some(active) => active,
            None => {
                let active = Generation {
                    generation: next,
                    version,
                    ready: true,
                };
                self.insert(&mut tx, name, active, "active", category.as_deref())
                    .await?;
                self.create(&mut tx, model, next).await?;
                self.point_views(&mut tx, model, next).await?;
                tx.commit().await.map_err(from_sqlx)?;
                return Ok(Some((active, None)));
            }
        };
        if active.version > version {
            tx.rollback().await.map_err(from_sqlx)?;
            return Ok(None);
        }
        let mut building = find("building");
        // A rebuild for other code than this (an older version, or an operator's rebuild of
        // the version this code replaces) gives way to one of this code's version.
        if let Some(stale) = building.filter(|b| b.version != version && active.version < version) {
            self.drop_generation(&mut tx, name, stale.generation)
                .await?;
            building = None;
            changed = true;
        }
        if building.is_none() && active.version < version {
            let new = Generation {
                generation: next,
                version,
                ready: false,
            };
            self.insert(&mut tx, name, new, "building", category.as_deref())
                .await?;
            building = Some(new);
            changed = true;
        }
        if let Some(b) = building
            .as_mut()
            .filter(|b| !b.ready && b.version == version)
        {
            // Leftovers of a generation whose row is gone would be in the way.
            let schema = generation_schema(&self.store.config().schema, name, b.generation)?;
            sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .execute(&mut *tx)
                .await
                .map_err(from_sqlx)?;
            self.create(&mut tx, model, b.generation).await?;
            sqlx::query(
                "UPDATE projection_versions SET ready = true, category = $3, updated_at = now() \
                 WHERE name = $1 AND generation = $2",
            )
            .bind(name)
            .bind(b.generation)
            .bind(category.as_deref())
            .execute(&mut *tx)
            .await
            .map_err(from_sqlx)?;
            b.ready = true;
            changed = true;
            tracing::info!(
                projection = name,
                generation = b.generation,
                version,
                backend = BACKEND,
                "rebuilding the read model beside the active one"
            );
        }
        if changed {
            tx.commit().await.map_err(from_sqlx)?;
        } else {
            tx.rollback().await.map_err(from_sqlx)?;
        }
        Ok(Some((active, building)))
    }

    async fn insert(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        name: &str,
        generation: Generation,
        state: &str,
        category: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO projection_versions (name, generation, version, state, ready, category) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(name)
        .bind(generation.generation)
        .bind(generation.version)
        .bind(state)
        .bind(generation.ready)
        .bind(category)
        .execute(&mut **tx)
        .await
        .map_err(from_sqlx)?;
        Ok(())
    }

    /// Creates generation `generation`'s schema and the model's tables in it.
    async fn create(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        model: &dyn PgProjection,
        generation: i64,
    ) -> Result<()> {
        let schema = generation_schema(&self.store.config().schema, model.name(), generation)?;
        sqlx::query(&format!("CREATE SCHEMA \"{schema}\""))
            .execute(&mut **tx)
            .await
            .map_err(from_sqlx)?;
        self.use_schema(tx, &schema).await?;
        model.create(tx).await.map_err(|e| {
            Error::backend(
                "projection",
                format!("{} cannot create its tables: {e}", model.name()),
            )
        })?;
        self.reset_schema(tx).await
    }

    /// Puts `schema` first in the transaction's search path (ended by its end).
    async fn use_schema(&self, conn: &mut PgConnection, schema: &str) -> Result<()> {
        sqlx::query(&format!(
            "SET LOCAL search_path TO \"{schema}\", \"{}\", public",
            self.store.config().schema
        ))
        .execute(&mut *conn)
        .await
        .map_err(from_sqlx)?;
        Ok(())
    }

    async fn reset_schema(&self, conn: &mut PgConnection) -> Result<()> {
        sqlx::query(&format!(
            "SET LOCAL search_path TO \"{}\", public",
            self.store.config().schema
        ))
        .execute(&mut *conn)
        .await
        .map_err(from_sqlx)?;
        Ok(())
    }

    /// Points the views of the model's tables at generation `generation`.
    async fn point_views(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        model: &dyn PgProjection,
        generation: i64,
    ) -> Result<()> {
        let schema = generation_schema(&self.store.config().schema, model.name(), generation)?;
        self.on_views(tx, model, |view, table| {
            vec![
                format!("DROP VIEW IF EXISTS {view}"),
                format!("CREATE VIEW {view} AS SELECT * FROM \"{schema}\".\"{table}\""),
            ]
        })
        .await
    }

    /// Runs in `tx` the statements `sql` writes for each of `model`'s views: it is given the
    /// view's qualified name (in the store's schema) and the table's name, both checked.
    async fn on_views(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        model: &dyn PgProjection,
        sql: impl Fn(&str, &str) -> Vec<String>,
    ) -> Result<()> {
        let store_schema = &self.store.config().schema;
        for table in model.tables() {
            check_identifier(&table)?;
            let view = format!("\"{store_schema}\".\"{table}\"");
            for statement in sql(&view, &table) {
                sqlx::query(&statement)
                    .execute(&mut **tx)
                    .await
                    .map_err(from_sqlx)?;
            }
        }
        Ok(())
    }

    async fn drop_generation(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        name: &str,
        generation: i64,
    ) -> Result<()> {
        let schema = generation_schema(&self.store.config().schema, name, generation)?;
        // CASCADE drops the views that point into it as well.
        sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .execute(&mut **tx)
            .await
            .map_err(from_sqlx)?;
        sqlx::query("DELETE FROM projection_versions WHERE name = $1 AND generation = $2")
            .bind(name)
            .bind(generation)
            .execute(&mut **tx)
            .await
            .map_err(from_sqlx)?;
        Ok(())
    }

    /// One batch for `generation` in its own transaction, under that generation's lock.
    async fn run_batch(&self, model: &dyn PgProjection, generation: i64) -> Result<usize> {
        let mut tx = self.store.pool().begin().await.map_err(from_sqlx)?;
        lock(&mut tx, model.name(), Some(generation)).await?;
        let applied = self.batch_in(&mut tx, model, generation).await?;
        if applied == 0 {
            tx.rollback().await.map_err(from_sqlx)?;
        } else {
            tx.commit().await.map_err(from_sqlx)?;
        }
        Ok(applied)
    }

    /// One batch for `generation` in `tx`, whose caller holds the generation's lock: reads
    /// after its checkpoint, moves the checkpoint, applies. Returns how many events it
    /// applied; 0 as well when the generation is gone (dropped by a switch). When it applied
    /// any, `tx` is left with the generation's schema first in its `search_path`: a caller
    /// that runs more statements in `tx` resets it first.
    async fn batch_in(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        model: &dyn PgProjection,
        generation: i64,
    ) -> Result<usize> {
        let name = model.name();
        // Read after the lock (a runner that waited for another sees the checkpoint it left)
        // and before this transaction writes (and takes a transaction id, which would hold
        // back its own read). The checkpoint and the events in one statement.
        let events = read_after_checkpoint(tx, model, generation, self.batch_size).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(0);
        };
        // The checkpoint moves before the batch is applied, in the same transaction: while
        // the store's schema still comes first in the `search_path`, and with no statement
        // after the batch's.
        sqlx::query(
            "UPDATE projection_versions SET tx_id = $3, seq = $4, updated_at = now() \
             WHERE name = $1 AND generation = $2",
        )
        .bind(name)
        .bind(generation)
        .bind(to_i64(last.commit, "position")?)
        .bind(to_i64(last.sequence, "position")?)
        .execute(&mut **tx)
        .await
        .map_err(from_sqlx)?;
        let schema = generation_schema(&self.store.config().schema, name, generation)?;
        self.use_schema(tx, &schema).await?;
        model
            .apply_batch(tx, &events)
            .await
            .map_err(|e| Error::backend("projection", format!("{name} failed: {e}")))?;
        Ok(events.len())
    }

    /// Makes `building` active if it can catch up in one last batch, in one transaction that
    /// holds the projection's lock and both generations' locks (so the old generation's
    /// runners are between batches, and the new one has read everything they have): the
    /// views move, the old generation is dropped. Returns what the last batch applied and
    /// whether it switched (not when the last batch was full: events keep coming faster).
    async fn switch(
        &self,
        model: &dyn PgProjection,
        active: Generation,
        building: Generation,
    ) -> Result<(usize, bool)> {
        let name = model.name();
        let mut tx = self.store.pool().begin().await.map_err(from_sqlx)?;
        lock(&mut tx, name, None).await?;
        lock(&mut tx, name, Some(building.generation)).await?;
        lock(&mut tx, name, Some(active.generation)).await?;
        // Still the same pair? (Another instance may have switched meanwhile.)
        let states: Vec<(i64, String)> = sqlx::query_as(
            "SELECT generation, state FROM projection_versions WHERE name = $1 ORDER BY generation",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await
        .map_err(from_sqlx)?;
        let expected = vec![
            (active.generation, "active".to_owned()),
            (building.generation, "building".to_owned()),
        ];
        if states != expected {
            tx.rollback().await.map_err(from_sqlx)?;
            return Ok((0, false));
        }
        if model.written_inline() {
            // Inline writes land in the active generation (through the views). Locking the
            // views waits for the commits that have written through them and holds new ones
            // until the switch commits (they then write into the new generation).
            self.lock_views(&mut tx, model).await?;
        }
        let applied = self.batch_in(&mut tx, model, building.generation).await?;
        if applied == self.batch_size {
            tx.commit().await.map_err(from_sqlx)?;
            return Ok((applied, false));
        }
        if applied > 0 {
            self.reset_schema(&mut tx).await?;
        }
        if model.written_inline() {
            // What those commits wrote may still lie beyond the horizon (an older transaction
            // still runs), where the batch above does not read. Carry it over, without moving
            // the checkpoint: the runner applies it again in order later, idempotently.
            self.carry_committed(&mut tx, model, building.generation)
                .await?;
        }
        if !model.written_inline() {
            // Readers lock a view, then the table behind it. Dropping the old generation
            // locks its tables and then the views that point into them: taken in that order
            // while a reader sat between its two locks, the two deadlocked and PostgreSQL
            // failed the read. Taking the views first is the readers' order; it waits only
            // for the reads in flight, and the ones after it wait for the switch (a moment).
            self.lock_views(&mut tx, model).await?;
        }
        self.drop_generation(&mut tx, name, active.generation)
            .await?;
        sqlx::query(
            "UPDATE projection_versions SET state = 'active', updated_at = now() \
             WHERE name = $1 AND generation = $2",
        )
        .bind(name)
        .bind(building.generation)
        .execute(&mut *tx)
        .await
        .map_err(from_sqlx)?;
        self.point_views(&mut tx, model, building.generation)
            .await?;
        tx.commit().await.map_err(from_sqlx)?;
        tracing::info!(
            projection = name,
            generation = building.generation,
            version = building.version,
            backend = BACKEND,
            "readers switched to the rebuilt read model"
        );
        Ok((applied, true))
    }
}

impl PgReadModelRunner {
    /// Locks the views of `model`'s tables against every other use until `tx` ends.
    async fn lock_views(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        model: &dyn PgProjection,
    ) -> Result<()> {
        self.on_views(tx, model, |view, _| {
            vec![format!("LOCK TABLE {view} IN ACCESS EXCLUSIVE MODE")]
        })
        .await
    }

    /// Applies to `generation` every committed event after its checkpoint, beyond the horizon
    /// too, leaving the checkpoint where it is.
    async fn carry_committed(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        model: &dyn PgProjection,
        generation: i64,
    ) -> Result<usize> {
        let name = model.name();
        let Some((tx_id, seq)) = sqlx::query_as::<_, (i64, i64)>(
            "SELECT tx_id, seq FROM projection_versions WHERE name = $1 AND generation = $2",
        )
        .bind(name)
        .bind(generation)
        .fetch_optional(&mut **tx)
        .await
        .map_err(from_sqlx)?
        else {
            return Ok(0);
        };
        let schema = generation_schema(&self.store.config().schema, name, generation)?;
        let mut after = Position::new(to_u64(tx_id), to_u64(seq));
        let mut carried = 0;
        loop {
            let events = read_committed(tx, &model.filter(), after, self.batch_size).await?;
            let Some(last) = events.last().map(|e| e.position) else {
                break;
            };
            self.use_schema(tx, &schema).await?;
            model
                .apply_batch(tx, &events)
                .await
                .map_err(|e| Error::backend("projection", format!("{name} failed: {e}")))?;
            self.reset_schema(tx).await?;
            carried += events.len();
            if events.len() < self.batch_size {
                break;
            }
            after = last;
        }
        if carried > 0 {
            tracing::debug!(
                projection = name,
                carried,
                backend = BACKEND,
                "carried committed inline writes beyond the horizon into the new generation"
            );
        }
        Ok(carried)
    }
}

/// The generation in `state` among rows of `projection_versions` (generation, version, state,
/// ready).
fn find_generation(rows: &[(i64, i32, String, bool)], state: &str) -> Option<Generation> {
    rows.iter()
        .find(|r| r.2 == state)
        .map(|&(generation, version, _, ready)| Generation {
            generation,
            version,
            ready,
        })
}

/// The safe events after the checkpoint of `generation` of `model` (its ready row in
/// `projection_versions`), at most `limit`, in the global order: the checkpoint and the events
/// in one statement. None when the generation has no ready row (a switch dropped it).
async fn read_after_checkpoint(
    conn: &mut PgConnection,
    model: &dyn PgProjection,
    generation: i64,
    limit: usize,
) -> Result<Vec<RecordedEvent>> {
    let filter = model.filter();
    let category = match filter {
        StreamFilter::Category(_) => "category = $4 AND ",
        _ => "",
    };
    let sql = format!(
        "SELECT e.* FROM (SELECT tx_id, seq FROM projection_versions \
                          WHERE name = $1 AND generation = $2 AND ready) AS checkpoint \
         CROSS JOIN LATERAL (SELECT {EVENT_COLUMNS} FROM events \
           WHERE {category}(tx_id, seq) > (checkpoint.tx_id, checkpoint.seq) \
             AND tx_id < {HORIZON} \
           ORDER BY tx_id, seq LIMIT $3) AS e"
    );
    let query = sqlx::query_as::<_, EventRow>(&sql)
        .bind(model.name())
        .bind(generation)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX));
    let query = match &filter {
        StreamFilter::Category(category) => query.bind(category.as_str()),
        _ => query,
    };
    let rows = query.fetch_all(&mut *conn).await.map_err(from_sqlx)?;
    rows.into_iter().map(EventRow::recorded).collect()
}

/// Takes the transaction-scoped advisory lock of projection `name` (setting up and switching
/// generations) or of one of its generations (applying batches to it). Taking one takes no
/// transaction id, so the log reads that follow are not held back by it.
async fn lock(
    tx: &mut Transaction<'static, Postgres>,
    name: &str,
    generation: Option<i64>,
) -> Result<()> {
    let key = match generation {
        None => format!("es-read-model:{name}"),
        Some(generation) => format!("es-read-model:{name}:{generation}"),
    };
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(key)
        .execute(&mut **tx)
        .await
        .map_err(from_sqlx)?;
    Ok(())
}

/// The schema of one generation: `<store schema>_rm_<name>_<generation>`, with `-` in the
/// name as `_`. Names are checked, since they become identifiers.
fn generation_schema(store_schema: &str, name: &str, generation: i64) -> Result<String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(Error::InvalidInput(format!(
            "projection name `{name}`: a versioned read model's name takes a-z, 0-9, `_` and `-`"
        )));
    }
    let schema = format!("{store_schema}_rm_{}_{generation}", name.replace('-', "_"));
    // PostgreSQL cuts identifiers at 63 bytes; two generations must not meet there.
    if schema.len() > 63 {
        return Err(Error::InvalidInput(format!(
            "projection name `{name}`: the schema `{schema}` of its tables would be longer than \
             63 bytes; shorten the name or the store's schema"
        )));
    }
    Ok(schema)
}

fn check_identifier(table: &str) -> Result<()> {
    if table.is_empty()
        || table.len() > 63
        || !table
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(Error::InvalidInput(format!(
            "read model table `{table}`: a table name takes a-z, 0-9 and `_`, at most 63 bytes"
        )));
    }
    Ok(())
}

#[async_trait]
impl ProjectionAdmin for PgEventStore {
    async fn status(&self) -> Result<Vec<ProjectionInfo>> {
        let rows: Vec<(String, i32, i64, String, i64, i64, i64, Option<f64>)> =
            sqlx::query_as(&format!(
                "SELECT p.name, p.version, p.generation, p.state, p.tx_id, p.seq, \
                   (SELECT count(*) FROM events e WHERE (e.tx_id, e.seq) > (p.tx_id, p.seq) \
                      AND e.tx_id < {HORIZON} AND (p.category IS NULL OR e.category = p.category)), \
                   (SELECT EXTRACT(EPOCH FROM clock_timestamp() - e.recorded_at)::float8 \
                      FROM events e WHERE (e.tx_id, e.seq) > (p.tx_id, p.seq) \
                      AND e.tx_id < {HORIZON} AND (p.category IS NULL OR e.category = p.category) \
                      ORDER BY e.tx_id, e.seq LIMIT 1) \
                 FROM projection_versions p ORDER BY p.name, p.state, p.generation"
            ))
            .fetch_all(self.pool())
            .await
            .map_err(from_sqlx)?;
        Ok(rows
            .into_iter()
            .map(
                |(name, version, generation, state, tx_id, seq, behind, age)| {
                    let phase = if state == "active" {
                        ProjectionPhase::Active
                    } else {
                        ProjectionPhase::Building
                    };
                    ProjectionInfo::new(
                        name,
                        u32::try_from(version).unwrap_or_default(),
                        to_u64(generation),
                        phase,
                        Position::new(to_u64(tx_id), to_u64(seq)),
                    )
                    .with_lag(
                        to_u64(behind),
                        age.filter(|s| s.is_finite() && *s > 0.0)
                            .map_or(Duration::ZERO, Duration::from_secs_f64),
                    )
                },
            )
            .collect())
    }

    async fn rebuild(&self, name: &str) -> Result<()> {
        let mut tx = self.pool().begin().await.map_err(from_sqlx)?;
        lock(&mut tx, name, None).await?;
        let rows: Vec<(i64, i32, String)> = sqlx::query_as(
            "SELECT generation, version, state FROM projection_versions WHERE name = $1",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await
        .map_err(from_sqlx)?;
        let Some(&(_, version, _)) = rows.iter().find(|r| r.2 == "active") else {
            return Err(Error::InvalidInput(format!(
                "no versioned read model is named `{name}`"
            )));
        };
        if rows.iter().any(|r| r.2 == "building") {
            return Ok(());
        }
        let next = rows.iter().map(|r| r.0).max().unwrap_or(0) + 1;
        // Its runner creates the tables (it has the code) and builds it.
        sqlx::query(
            "INSERT INTO projection_versions (name, generation, version, state, ready) \
             VALUES ($1, $2, $3, 'building', false)",
        )
        .bind(name)
        .bind(next)
        .bind(version)
        .execute(&mut *tx)
        .await
        .map_err(from_sqlx)?;
        tx.commit().await.map_err(from_sqlx)?;
        tracing::info!(
            projection = name,
            generation = next,
            backend = BACKEND,
            "rebuild requested"
        );
        Ok(())
    }
}
