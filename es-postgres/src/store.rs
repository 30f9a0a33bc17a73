//! [`PgEventStore`]: the event log, and the unit of work that commits with it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use es_core::polling::{poll_subscription, PollConfig};
use es_core::{
    AppendResult, Backoff, BoxError, CommitOutcome, Error, EventStore, EventSubscription,
    ExpectedVersion, Metadata, NewEvent, Page, Position, RecordedEvent, ReplayedEvent, Result,
    StreamAppend, StreamFilter, StreamId, UnitOfWork,
};
use futures_util::TryStreamExt;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::query::QueryAs;
use sqlx::{PgConnection, Postgres};
use tokio::sync::{watch, Semaphore};
use uuid::Uuid;

use crate::config::PgConfig;
use crate::error::{from_sqlx, from_user, to_i64, to_u64, unique_violation, BACKEND};
use crate::listener::{Announcer, Listener, Wakes};
use crate::projection::PgProjection;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A PostgreSQL event store on one connection pool.
///
/// One struct implements [`EventStore`], [`Inbox`](es_core::Inbox),
/// [`CheckpointStore`](es_core::CheckpointStore), [`SnapshotStore`](es_core::SnapshotStore) and
/// [`SagaStore`](es_core::SagaStore), so a [`UnitOfWork`] (appends, inbox entry, checkpoint) is
/// one transaction. Cloning is cheap and shares the pool.
///
/// See the crate documentation for the schema and the ordering guarantee.
#[derive(Clone)]
pub struct PgEventStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    pub(crate) config: PgConfig,
    channel: String,
    sql: Sql,
    /// Wakes subscriptions after this process's appends and when a `NOTIFY` arrives.
    pub(crate) wake: Arc<Wakes>,
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
}

impl fmt::Debug for PgEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgEventStore")
            .field("schema", &self.inner.config.schema)
            .field("pool_size", &self.inner.pool.size())
            .finish()
    }
}

/// The statements whose text depends on the expectation kind, built once.
struct Sql {
    append_any: String,
    append_no_stream: String,
    append_exists: String,
    append_exact: String,
}

impl Sql {
    fn new() -> Self {
        Sql {
            append_any: append_sql("true"),
            append_no_stream: append_new_stream_sql(),
            append_exists: append_sql("current.version IS NOT NULL"),
            append_exact: append_after_version_sql(),
        }
    }

    fn append(&self, expected: ExpectedVersion) -> &str {
        match expected {
            ExpectedVersion::Any => &self.append_any,
            ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => &self.append_no_stream,
            ExpectedVersion::StreamExists => &self.append_exists,
            ExpectedVersion::Exact(_) => &self.append_exact,
        }
    }
}

/// One statement that checks the expectation against the stream's version (its newest event,
/// read through the primary key) and inserts the events from arrays at the versions after it:
/// one round trip, and when it runs on its own, one implicit transaction.
///
/// The primary key `(stream_id, stream_version)` settles races: of writers inserting the same
/// version, one commits and the others fail with a unique violation as soon as it does (they
/// wait on its transaction, all at once). When the expectation fails against what the
/// statement sees, nothing is inserted and it returns no row; the caller then reads the version
/// for the conflict. (Returning that version from the same statement, through a `UNION` with
/// the `INSERT`'s CTE, cost every append about 5 % of its throughput to save the rare conflict
/// a round trip.)
fn append_sql(expectation_holds: &str) -> String {
    format!(
        "INSERT INTO events (stream_id, stream_version, category, event_id, event_type, \
                             schema_version, payload, metadata) \
         SELECT $1, COALESCE(current.version, 0) + e.n, $2, e.event_id, e.event_type, \
                e.schema_version, e.payload, e.metadata \
         FROM (SELECT (SELECT max(stream_version) FROM events WHERE stream_id = $1) AS version) \
              AS current, \
              UNNEST($3::uuid[], $4::text[], $5::int4[], $6::bytea[], $7::bytea[]) \
              WITH ORDINALITY AS e(event_id, event_type, schema_version, payload, metadata, n) \
         WHERE {expectation_holds} \
         RETURNING tx_id, seq, stream_version"
    )
}

/// The append that expects an exact version `$8` of a stream that exists: the events take the
/// versions after it when an event of version `$8` is stored. That is the whole check, with
/// the primary key: versions have no gaps (every append inserts right after a version it found
/// stored), so the stream is at `$8` exactly when version `$8` exists and `$8 + 1` does not,
/// and a stored `$8 + 1` fails the insert with a unique violation. An equality probe of the
/// primary key costs less than finding the stream's newest version (about 5 % of an append's
/// server time under 16 writers, measured with pgbench).
fn append_after_version_sql() -> String {
    "INSERT INTO events (stream_id, stream_version, category, event_id, event_type, \
                         schema_version, payload, metadata) \
     SELECT $1, $8 + e.n, $2, e.event_id, e.event_type, e.schema_version, e.payload, e.metadata \
     FROM UNNEST($3::uuid[], $4::text[], $5::int4[], $6::bytea[], $7::bytea[]) \
          WITH ORDINALITY AS e(event_id, event_type, schema_version, payload, metadata, n) \
     WHERE EXISTS (SELECT FROM events WHERE stream_id = $1 AND stream_version = $8) \
     RETURNING tx_id, seq, stream_version"
        .to_owned()
}

/// The append that creates a stream: its events take versions 1.. with no look at the stream
/// first, since the primary key already refuses version 1 of a stream that exists (the unique
/// violation is the conflict). That saves the index probe of `append_sql` on every new
/// aggregate's first command.
fn append_new_stream_sql() -> String {
    "INSERT INTO events (stream_id, stream_version, category, event_id, event_type, \
                         schema_version, payload, metadata) \
     SELECT $1, e.n, $2, e.event_id, e.event_type, e.schema_version, e.payload, e.metadata \
     FROM UNNEST($3::uuid[], $4::text[], $5::int4[], $6::bytea[], $7::bytea[]) \
          WITH ORDINALITY AS e(event_id, event_type, schema_version, payload, metadata, n) \
     RETURNING tx_id, seq, stream_version"
        .to_owned()
}

/// The stream's version: its newest event's.
const STREAM_VERSION: &str = "SELECT max(stream_version) FROM events WHERE stream_id = $1";

/// Attempts of an `Any` or `StreamExists` append that lose a race for the same version before
/// the store gives up with a conflict.
const MAX_RACE_RETRIES: usize = 1000;

pub(crate) const EVENT_COLUMNS: &str =
    "event_id, stream_id, stream_version, tx_id, seq, recorded_at, \
                             event_type, schema_version, payload, metadata";

/// The transaction horizon: every transaction with a smaller id has ended. Evaluated once per
/// statement (an uncorrelated scalar subquery).
pub(crate) const HORIZON: &str = "(SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint)";

pub(crate) type EventRow = (
    Uuid,
    String,
    i64,
    i64,
    i64,
    DateTime<Utc>,
    String,
    i32,
    Vec<u8>,
    Vec<u8>,
);

type StreamEventRow = (
    Uuid,
    i64,
    i64,
    i64,
    DateTime<Utc>,
    String,
    i32,
    Vec<u8>,
    Vec<u8>,
);

pub(crate) fn recorded(row: EventRow) -> Result<RecordedEvent> {
    let (event_id, stream_id, version, tx_id, seq, recorded_at, event_type, schema, payload, meta) =
        row;
    let stream_id = StreamId::new(stream_id).map_err(|e| Error::backend(BACKEND, e))?;
    recorded_in(
        stream_id,
        (
            event_id,
            version,
            tx_id,
            seq,
            recorded_at,
            event_type,
            schema,
            payload,
            meta,
        ),
    )
}

fn recorded_in(stream_id: StreamId, row: StreamEventRow) -> Result<RecordedEvent> {
    let (event_id, version, tx_id, seq, recorded_at, event_type, schema, payload, meta) = row;
    Ok(RecordedEvent {
        event_id,
        stream_id,
        stream_version: to_u64(version),
        position: Position::new(to_u64(tx_id), to_u64(seq)),
        recorded_at,
        event_type,
        schema_version: u32::try_from(schema).unwrap_or_default(),
        payload: Bytes::from(payload),
        metadata: Metadata::from_json(&meta)?,
    })
}

/// The column arrays of one stream's events, checked before anything is sent.
struct Columns {
    ids: Vec<Uuid>,
    types: Vec<String>,
    schema_versions: Vec<i32>,
    payloads: Vec<Vec<u8>>,
    metadata: Vec<Vec<u8>>,
}

impl Columns {
    fn new(events: Vec<NewEvent>) -> Result<Self> {
        let mut columns = Columns {
            ids: Vec::with_capacity(events.len()),
            types: Vec::with_capacity(events.len()),
            schema_versions: Vec::with_capacity(events.len()),
            payloads: Vec::with_capacity(events.len()),
            metadata: Vec::with_capacity(events.len()),
        };
        for event in events {
            if event.event_type.is_empty() {
                return Err(Error::InvalidInput("an event type cannot be empty".into()));
            }
            let schema_version = i32::try_from(event.schema_version).map_err(|_| {
                Error::InvalidInput(format!(
                    "schema version {} of `{}` is too large",
                    event.schema_version, event.event_type
                ))
            })?;
            columns.ids.push(event.event_id);
            columns.types.push(event.event_type);
            columns.schema_versions.push(schema_version);
            columns.payloads.push(Vec::from(event.payload));
            columns.metadata.push(event.metadata.to_json().to_vec());
        }
        Ok(columns)
    }
}

/// Why a unit's statements failed inside its transaction.
enum Failure {
    /// The error to return.
    Error(Error),
    /// Another writer took a version this unit expected to write: a conflict whose actual
    /// version can only be read once the transaction (which the failure aborted) has ended.
    VersionTaken {
        stream_id: StreamId,
        expected: ExpectedVersion,
    },
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure::Error(error)
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
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(config.min_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(from_sqlx)?;
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
                channel,
                config,
                sql: Sql::new(),
                wake: Arc::new(Wakes::default()),
                listener: Mutex::new(None),
                announcer: Mutex::new(announcer),
                catch_up_permits,
                inline: RwLock::default(),
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

    /// Closes the pool and stops the listener; later calls fail with [`Error::Unavailable`].
    pub async fn close(&self) {
        if let Ok(mut listener) = self.inner.listener.lock() {
            listener.take();
        }
        if let Ok(mut announcer) = self.inner.announcer.lock() {
            announcer.take();
        }
        self.inner.pool.close().await;
    }

    /// Registers `projection` as inline: every commit of this store (and of its clones) applies
    /// the appended events that pass the projection's filter in its own transaction, after the
    /// appends, so a read right after the commit returns sees them (read-your-writes), and a
    /// failing `apply` fails the commit. Commits then always run in an explicit transaction.
    ///
    /// ```no_run
    /// # async fn example(store: es_postgres::PgEventStore, counts: std::sync::Arc<dyn es_postgres::PgProjection>) {
    /// let store = store.with_inline_projection(counts);
    /// # }
    /// ```
    pub fn with_inline_projection(self, projection: Arc<dyn PgProjection>) -> Self {
        self.inner
            .inline
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(projection);
        self
    }

    /// The inline projections whose filter takes a stream of `appends`: a commit that none of
    /// them reads keeps the single-statement path (an order projection costs a payment append
    /// nothing).
    fn inline_projections_for(&self, appends: &[StreamAppend]) -> Vec<Arc<dyn PgProjection>> {
        let mut inline = self.inline_projections();
        inline.retain(|projection| {
            let filter = projection.filter();
            appends
                .iter()
                .any(|append| filter.matches(&append.stream_id))
        });
        inline
    }

    fn inline_projections(&self) -> Vec<Arc<dyn PgProjection>> {
        self.inner
            .inline
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A receiver that changes whenever an append to this schema is announced (and after the
    /// listener reconnects, since announcements may have been missed meanwhile).
    pub fn wake_receiver(&self) -> watch::Receiver<()> {
        self.wake_receiver_for(&StreamFilter::All)
    }

    /// A receiver that changes whenever an append that `filter` lets through is announced (and
    /// after the listener reconnects). A category's receiver stays still while other categories
    /// are appended to, so its owner does not read for nothing.
    pub fn wake_receiver_for(&self, filter: &StreamFilter) -> watch::Receiver<()> {
        // The receiver first: the listener's first wake-up, once it listens, must reach it.
        let receiver = self.inner.wake.receiver(filter);
        self.ensure_listener();
        receiver
    }

    /// Tells subscribers that events were committed: this process's at once, others through
    /// a `NOTIFY` that the announcer sends after the commit.
    fn announce(&self, results: &[AppendResult]) {
        if results.iter().all(|r| r.positions.is_empty()) {
            return;
        }
        let categories = || {
            results
                .iter()
                .filter(|r| !r.positions.is_empty())
                .map(|r| r.stream_id.category())
        };
        self.inner.wake.wake(categories());
        if let Ok(announcer) = self.inner.announcer.lock() {
            if let Some(announcer) = announcer.as_ref() {
                announcer.announce(categories());
            }
        }
    }

    fn ensure_listener(&self) {
        let Ok(mut listener) = self.inner.listener.lock() else {
            return;
        };
        if listener.is_none() {
            // Without a runtime there is no listener: subscriptions fall back to polling.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                *listener = Some(Listener::spawn(
                    &runtime,
                    self.inner.pool.clone(),
                    self.inner.channel.clone(),
                    self.inner.wake.clone(),
                ));
            }
        }
    }

    /// Commits `unit` and, in the same transaction, runs `work` on the transaction's connection
    /// after the appends (whose results it receives): the application's own writes commit with
    /// the events, the inbox entry and the checkpoint, or nothing does.
    ///
    /// Returns `None` when the unit's inbox entry was already there: then nothing was written
    /// and `work` did not run. An error from `work` rolls everything back; an `es_core::Error`
    /// or `sqlx::Error` it returns comes back mapped like the store's own errors.
    ///
    /// ```no_run
    /// # async fn example(store: es_postgres::PgEventStore, unit: es_core::UnitOfWork) -> es_core::Result<()> {
    /// let outcome = store
    ///     .commit_with(unit, |conn, results| {
    ///         let version = results[0].next_expected_version as i64;
    ///         Box::pin(async move {
    ///             sqlx::query("UPDATE order_summary SET version = $1")
    ///                 .bind(version)
    ///                 .execute(&mut *conn)
    ///                 .await?;
    ///             Ok(())
    ///         })
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn commit_with<T, F>(
        &self,
        unit: UnitOfWork,
        work: F,
    ) -> Result<Option<(Vec<AppendResult>, T)>>
    where
        F: for<'c> FnOnce(
                &'c mut PgConnection,
                &'c [AppendResult],
            )
                -> Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'c>>
            + Send,
        T: Send,
    {
        unit.validate()?;
        let mut tx = self.inner.pool.begin().await.map_err(from_sqlx)?;
        let outcome = match self.commit_in(&mut tx, unit).await {
            Ok(outcome) => outcome,
            Err(failure) => {
                // End the transaction first: its connection goes back to the pool.
                let _ = tx.rollback().await;
                return Err(self.failure_error(failure).await);
            }
        };
        let Some(results) = outcome else {
            tx.rollback().await.map_err(from_sqlx)?;
            return Ok(None);
        };
        let value = work(&mut tx, &results).await.map_err(from_user)?;
        tx.commit().await.map_err(from_sqlx)?;
        self.announce(&results);
        Ok(Some((results, value)))
    }

    /// The error to return for a failure; a taken version is read now, after the failed
    /// transaction has ended and given its connection back.
    async fn failure_error(&self, failure: Failure) -> Error {
        match failure {
            Failure::Error(error) => error,
            Failure::VersionTaken {
                stream_id,
                expected,
            } => match self.stream_version(&stream_id).await {
                Ok(actual) => expected.conflict(&stream_id, actual),
                Err(error) => error,
            },
        }
    }

    /// Everything of `unit` inside an open transaction; `None` when its inbox entry was there.
    async fn commit_in(
        &self,
        conn: &mut PgConnection,
        unit: UnitOfWork,
    ) -> Result<Option<Vec<AppendResult>>, Failure> {
        match unit.inbox.as_slice() {
            [] => {}
            [entry] => {
                let inserted = sqlx::query_scalar::<_, i32>(
                    "INSERT INTO inbox (consumer, event_id) VALUES ($1, $2) \
                     ON CONFLICT DO NOTHING RETURNING 1",
                )
                .bind(&entry.consumer)
                .bind(entry.event_id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(from_sqlx)?;
                if inserted.is_none() {
                    return Ok(None);
                }
            }
            // A batch's entries in one statement: one round trip however many messages.
            entries => {
                let consumers: Vec<&str> = entries.iter().map(|e| e.consumer.as_str()).collect();
                let ids: Vec<Uuid> = entries.iter().map(|e| e.event_id).collect();
                let inserted: i64 = sqlx::query_scalar(
                    "WITH added AS (INSERT INTO inbox (consumer, event_id) \
                     SELECT * FROM UNNEST($1::text[], $2::uuid[]) \
                     ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*) FROM added",
                )
                .bind(&consumers)
                .bind(&ids)
                .fetch_one(&mut *conn)
                .await
                .map_err(from_sqlx)?;
                // One of them was there already (or came twice): the caller rolls back.
                if inserted != entries.len() as i64 {
                    return Ok(None);
                }
            }
        }
        if unit.appends.len() > 1 {
            // Take the streams' locks in one order, so two units touching the same streams in
            // opposite orders wait for each other instead of deadlocking on the versions.
            let mut streams: Vec<&str> =
                unit.appends.iter().map(|a| a.stream_id.as_str()).collect();
            streams.sort_unstable();
            sqlx::query(
                "SELECT pg_advisory_xact_lock(hashtextextended('es-stream:' || s, 0)) \
                 FROM UNNEST($1::text[]) AS s",
            )
            .bind(&streams)
            .execute(&mut *conn)
            .await
            .map_err(from_sqlx)?;
        }
        let inline = self.inline_projections_for(&unit.appends);
        // The inline projections need the events as recorded; keep them (cheap: `Bytes`).
        let written: Vec<Vec<NewEvent>> = if inline.is_empty() {
            Vec::new()
        } else {
            unit.appends.iter().map(|a| a.events.clone()).collect()
        };
        let mut results = Vec::with_capacity(unit.appends.len());
        for append in unit.appends {
            results.push(self.append_on(&mut *conn, append, true).await?);
        }
        if !inline.is_empty() {
            apply_inline(&mut *conn, &inline, &results, written).await?;
        }
        if let Some((name, position)) = unit.checkpoint {
            save_checkpoint(&mut *conn, &name, position).await?;
        }
        Ok(Some(results))
    }

    /// Appends one stream's events on `conn` (in a transaction when `in_tx`).
    async fn append_on(
        &self,
        conn: &mut PgConnection,
        append: StreamAppend,
        in_tx: bool,
    ) -> Result<AppendResult, Failure> {
        let StreamAppend {
            stream_id,
            expected,
            events,
        } = append;
        if events.is_empty() {
            // Only the expectation is checked, as of now.
            let actual = current_version(&mut *conn, &stream_id).await?;
            if !expected.is_met_by(actual) {
                return Err(expected.conflict(&stream_id, actual).into());
            }
            return Ok(AppendResult {
                stream_id,
                next_expected_version: actual.unwrap_or(0),
                positions: Vec::new(),
            });
        }
        let columns = Columns::new(events)?;
        let expected_version = match expected {
            ExpectedVersion::Exact(version) if version > 0 => {
                Some(to_i64(version, "expected version")?)
            }
            _ => None,
        };
        // `Any` and `StreamExists` pin no version: losing a race for one is no conflict, so
        // they try again (behind a savepoint in a transaction, which the failure would abort).
        let retries = matches!(
            expected,
            ExpectedVersion::Any | ExpectedVersion::StreamExists
        );
        let mut attempt = 0;
        let rows = loop {
            if retries && in_tx {
                sqlx::query("SAVEPOINT es_append")
                    .execute(&mut *conn)
                    .await
                    .map_err(from_sqlx)?;
            }
            let mut query = sqlx::query_as::<_, (i64, i64, i64)>(self.inner.sql.append(expected))
                .bind(stream_id.as_str())
                .bind(stream_id.category())
                .bind(&columns.ids)
                .bind(&columns.types)
                .bind(&columns.schema_versions)
                .bind(&columns.payloads)
                .bind(&columns.metadata);
            if let Some(version) = expected_version {
                query = query.bind(version);
            }
            match query.fetch_all(&mut *conn).await {
                Ok(rows) if !rows.is_empty() => break rows,
                Ok(_) => {
                    // The statement inserts exactly when the expectation holds for the version
                    // it sees; it wrote nothing, so that version failed it. Reading the version
                    // costs a round trip on this path only, which keeps the common one a plain
                    // INSERT. Should it hold by now (another writer created the stream
                    // meanwhile), this is a lost race like any other: try again.
                    let actual = current_version(&mut *conn, &stream_id).await?;
                    if !expected.is_met_by(actual) || attempt >= MAX_RACE_RETRIES {
                        return Err(expected.conflict(&stream_id, actual).into());
                    }
                    attempt += 1;
                }
                Err(error) => match unique_violation(&error).as_deref() {
                    Some("events_event_id_key") => {
                        return Err(Error::InvalidInput(format!(
                            "an event id of the append to `{stream_id}` is already stored"
                        ))
                        .into())
                    }
                    Some("events_stream_version_key") if retries && attempt < MAX_RACE_RETRIES => {
                        attempt += 1;
                        if in_tx {
                            sqlx::query("ROLLBACK TO SAVEPOINT es_append")
                                .execute(&mut *conn)
                                .await
                                .map_err(from_sqlx)?;
                        }
                    }
                    // Another writer took the version: the conflict reports the version it made
                    // (read on another connection when this transaction is aborted).
                    Some("events_stream_version_key") if in_tx => {
                        return Err(Failure::VersionTaken {
                            stream_id,
                            expected,
                        })
                    }
                    Some("events_stream_version_key") => {
                        let actual = current_version(&mut *conn, &stream_id).await?;
                        return Err(expected.conflict(&stream_id, actual).into());
                    }
                    _ => return Err(from_sqlx(error).into()),
                },
            }
        };
        let mut rows = rows;
        // RETURNING follows the insertion order in practice, which SQL does not promise.
        rows.sort_unstable_by_key(|&(_, seq, _)| seq);
        let next_expected_version = rows.last().map_or(0, |&(_, _, version)| to_u64(version));
        let positions = rows
            .iter()
            .map(|&(tx_id, seq, _)| Position::new(to_u64(tx_id), to_u64(seq)))
            .collect();
        Ok(AppendResult {
            stream_id,
            next_expected_version,
            positions,
        })
    }

    /// Reads the global log under the horizon rule; a page that comes back short waits, at
    /// most `max_wait`, for the transactions that were running when the read began and hold
    /// newer events back.
    pub(crate) async fn read_all_settled(
        &self,
        filter: &StreamFilter,
        after: Position,
        limit: usize,
        max_wait: Duration,
    ) -> Result<Vec<RecordedEvent>> {
        if limit == 0 {
            return Err(Error::InvalidInput(
                "a read limit must be at least 1".into(),
            ));
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut pause = Backoff::new(Duration::from_millis(2), Duration::from_millis(50));
        // The transactions worth waiting for are those running when the read began; one that
        // began later could keep a busy log held back for ever.
        let mut began_before: Option<i64> = None;
        loop {
            let mut conn = self.inner.pool.acquire().await.map_err(from_sqlx)?;
            let events = read_visible(&mut conn, filter, after, limit).await?;
            let short = events.len() < limit;
            if !short || max_wait.is_zero() || tokio::time::Instant::now() >= deadline {
                return Ok(events);
            }
            let hold = held_back(&mut conn, filter, after).await?;
            let target = *began_before.get_or_insert(hold.xmax);
            let worth_waiting = hold.xmin < target;
            if !hold.events_beyond || !worth_waiting {
                return Ok(events);
            }
            drop(conn);
            pause.sleep().await;
        }
    }
}

impl PgEventStore {
    /// A subscription's page: the safe events after `after`, and whether they reach the head.
    /// A page that comes back short reaches the head unless committed events are held back
    /// behind it (then the subscription reads again at once, and that read waits them out);
    /// an empty page with events held back waits, up to `max_wait`, for the transactions
    /// holding them, as their end may announce nothing.
    pub(crate) async fn read_page_settled(
        &self,
        filter: &StreamFilter,
        after: Position,
        limit: usize,
        max_wait: Duration,
    ) -> Result<Page> {
        if limit == 0 {
            return Err(Error::InvalidInput(
                "a read limit must be at least 1".into(),
            ));
        }
        let sql = page_sql(filter);
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut pause = Backoff::new(Duration::from_millis(2), Duration::from_millis(50));
        loop {
            let mut conn = self.inner.pool.acquire().await.map_err(from_sqlx)?;
            let mut rows = visible_query::<PageRow>(&sql, filter, after, limit)?.fetch(&mut *conn);
            let mut events = Vec::with_capacity(limit.min(PAGE_CAPACITY));
            let mut beyond = false;
            while let Some(row) = rows.try_next().await.map_err(from_sqlx)? {
                let (id, stream, version, tx_id, seq, at, event_type, schema, payload, meta, held) =
                    row;
                beyond = held;
                events.push(recorded((
                    id, stream, version, tx_id, seq, at, event_type, schema, payload, meta,
                ))?);
            }
            drop(rows);
            if !events.is_empty() {
                let at_head = events.len() < limit && !beyond;
                return Ok(Page::new(events, at_head));
            }
            // No row carried the answer: ask on its own.
            if max_wait.is_zero() || tokio::time::Instant::now() >= deadline {
                return Ok(Page::new(events, false));
            }
            if !held_back(&mut conn, filter, after).await?.events_beyond {
                return Ok(Page::new(events, true));
            }
            drop(conn);
            pause.sleep().await;
        }
    }
}

/// The stream's version now (`None`: no stream).
async fn current_version(conn: &mut PgConnection, stream_id: &StreamId) -> Result<Option<u64>> {
    Ok(sqlx::query_scalar::<_, Option<i64>>(STREAM_VERSION)
        .bind(stream_id.as_str())
        .fetch_one(&mut *conn)
        .await
        .map_err(from_sqlx)?
        .map(to_u64))
}

/// The events after `after` that are safe to hand out: those of transactions older than every
/// transaction still running.
pub(crate) async fn read_visible(
    conn: &mut PgConnection,
    filter: &StreamFilter,
    after: Position,
    limit: usize,
) -> Result<Vec<RecordedEvent>> {
    let sql = visible_sql(filter);
    // Each row becomes an event as it arrives: no second vector of rows to fill and walk.
    let mut rows = visible_query(&sql, filter, after, limit)?.fetch(&mut *conn);
    let mut events = Vec::with_capacity(limit.min(PAGE_CAPACITY));
    while let Some(row) = rows.try_next().await.map_err(from_sqlx)? {
        events.push(recorded(row)?);
    }
    Ok(events)
}

/// Every committed event after `after` that `filter` takes, at most `limit`, in the global
/// order, *without* the horizon: also those of transactions that committed while an older one
/// still runs. Not for moving a checkpoint (an older transaction may still commit events that
/// sort before these); for a caller that must see every committed event now, and applies them
/// idempotently (a read-model switch carrying inline writes over, see `PgReadModelRunner`).
pub(crate) async fn read_committed(
    conn: &mut PgConnection,
    filter: &StreamFilter,
    after: Position,
    limit: usize,
) -> Result<Vec<RecordedEvent>> {
    let category = match filter {
        StreamFilter::Category(_) => "category = $4 AND ",
        _ => "",
    };
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE {category}(tx_id, seq) > ($1, $2) \
         ORDER BY tx_id, seq LIMIT $3"
    );
    let rows: Vec<EventRow> = visible_query(&sql, filter, after, limit)?
        .fetch_all(&mut *conn)
        .await
        .map_err(from_sqlx)?;
    rows.into_iter().map(recorded).collect()
}

/// The most events a page reserves room for before its rows arrive.
const PAGE_CAPACITY: usize = 1024;

/// The statement that reads the safe events after `($1, $2)`, at most `$3` of them (in
/// category `$4` when the filter names one), in the global order.
pub(crate) fn visible_sql(filter: &StreamFilter) -> String {
    let category = match filter {
        StreamFilter::Category(_) => "category = $4 AND ",
        _ => "",
    };
    format!(
        "SELECT {EVENT_COLUMNS} FROM events \
         WHERE {category}(tx_id, seq) > ($1, $2) AND tx_id < {HORIZON} \
         ORDER BY tx_id, seq LIMIT $3"
    )
}

/// [`visible_sql`] with one more column on every row: whether committed events after `($1, $2)`
/// lie beyond the horizon, held back by an older transaction still running. Read in the same
/// statement (and snapshot) as the page, so a subscription learns whether a short page reached
/// the head without a statement of its own.
fn page_sql(filter: &StreamFilter) -> String {
    let category = match filter {
        StreamFilter::Category(_) => "category = $4 AND ",
        _ => "",
    };
    format!(
        "SELECT {EVENT_COLUMNS}, {beyond} FROM events \
         WHERE {category}(tx_id, seq) > ($1, $2) AND tx_id < {HORIZON} \
         ORDER BY tx_id, seq LIMIT $3",
        beyond = beyond_horizon_sql(category)
    )
}

/// A row of [`page_sql`]: an event and whether events are held back beyond the horizon.
type PageRow = (
    Uuid,
    String,
    i64,
    i64,
    i64,
    DateTime<Utc>,
    String,
    i32,
    Vec<u8>,
    Vec<u8>,
    bool,
);

/// [`visible_sql`] with its parameters bound: the events after `after`, at most `limit`.
pub(crate) fn visible_query<'q, R>(
    sql: &'q str,
    filter: &'q StreamFilter,
    after: Position,
    limit: usize,
) -> Result<QueryAs<'q, Postgres, R, PgArguments>>
where
    R: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    let query = sqlx::query_as(sql)
        .bind(to_i64(after.commit, "position")?)
        .bind(to_i64(after.sequence, "position")?)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX));
    Ok(match filter {
        StreamFilter::Category(category) => query.bind(category.as_str()),
        _ => query,
    })
}

/// What holds a read back: whether committed events after `after` exist beyond the horizon
/// (written by a transaction newer than one still running), and the snapshot's bounds.
struct Hold {
    events_beyond: bool,
    /// The horizon: every transaction below it has ended.
    xmin: i64,
    /// The next transaction id to be assigned: every transaction that committed before this
    /// snapshot is below it.
    xmax: i64,
}

/// Whether committed events after `($1, $2)` (of the category the clause `category` names) lie
/// beyond the horizon: the first one in the index from the horizon on, if any.
///
/// Not `EXISTS (…)`: the planner drops an `ORDER BY … LIMIT 1` inside `EXISTS`, and planned
/// with a position far behind (a reader of a rare category) it scanned the whole table (17 ms
/// at 100,000 events). `tx_id + 0` keeps the position out of the index condition, so the scan
/// starts at the horizon rather than at the reader's position, however far behind that is; past
/// the horizon there are only the few events of recent transactions.
fn beyond_horizon_sql(category: &str) -> String {
    format!(
        "(SELECT tx_id FROM events \
          WHERE {category}tx_id >= {HORIZON} AND (tx_id + 0, seq) > ($1, $2) \
          ORDER BY tx_id, seq LIMIT 1) IS NOT NULL"
    )
}

async fn held_back(
    conn: &mut PgConnection,
    filter: &StreamFilter,
    after: Position,
) -> Result<Hold> {
    let commit = to_i64(after.commit, "position")?;
    let sequence = to_i64(after.sequence, "position")?;
    let category = match filter {
        StreamFilter::Category(_) => "category = $3 AND ",
        _ => "",
    };
    let sql = format!(
        "SELECT {}, \
                pg_snapshot_xmin(pg_current_snapshot())::text::bigint, \
                pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
        beyond_horizon_sql(category)
    );
    let query = sqlx::query_as::<_, (bool, i64, i64)>(&sql)
        .bind(commit)
        .bind(sequence);
    let query = match filter {
        StreamFilter::Category(category) => query.bind(category.as_str()),
        _ => query,
    };
    let (events_beyond, xmin, xmax) = query.fetch_one(&mut *conn).await.map_err(from_sqlx)?;
    Ok(Hold {
        events_beyond,
        xmin,
        xmax,
    })
}

/// Upserts checkpoint `name`.
/// Applies the events just appended (in the open transaction on `conn`) to the inline
/// projections.
async fn apply_inline(
    conn: &mut PgConnection,
    inline: &[Arc<dyn PgProjection>],
    results: &[AppendResult],
    written: Vec<Vec<NewEvent>>,
) -> Result<()> {
    if results.iter().all(|r| r.positions.is_empty()) {
        return Ok(());
    }
    // The events' `recorded_at` is the transaction's start, `now()`.
    let recorded_at: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *conn)
        .await
        .map_err(from_sqlx)?;
    let mut recorded = Vec::new();
    for (result, events) in results.iter().zip(written) {
        let first_version = result.next_expected_version + 1 - result.positions.len() as u64;
        for ((event, &position), version) in events
            .into_iter()
            .zip(&result.positions)
            .zip(first_version..)
        {
            recorded.push(RecordedEvent {
                event_id: event.event_id,
                stream_id: result.stream_id.clone(),
                stream_version: version,
                position,
                recorded_at,
                event_type: event.event_type,
                schema_version: event.schema_version,
                payload: event.payload,
                metadata: event.metadata,
            });
        }
    }
    for projection in inline {
        let filter = projection.filter();
        for event in recorded.iter().filter(|e| filter.matches(&e.stream_id)) {
            projection.apply(&mut *conn, event).await.map_err(|e| {
                Error::backend(
                    "inline projection",
                    format!("{} failed at {}: {e}", projection.name(), event.position),
                )
            })?;
        }
    }
    Ok(())
}

pub(crate) async fn save_checkpoint(
    conn: &mut PgConnection,
    name: &str,
    position: Position,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO checkpoints (name, tx_id, seq) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET tx_id = EXCLUDED.tx_id, seq = EXCLUDED.seq, \
         updated_at = now()",
    )
    .bind(name)
    .bind(to_i64(position.commit, "position")?)
    .bind(to_i64(position.sequence, "position")?)
    .execute(&mut *conn)
    .await
    .map_err(from_sqlx)?;
    Ok(())
}

#[async_trait]
impl EventStore for PgEventStore {
    async fn commit(&self, unit: UnitOfWork) -> Result<CommitOutcome> {
        let started = std::time::Instant::now();
        unit.validate()?;
        if unit.inbox.is_empty() && unit.checkpoint.is_none() && unit.appends.is_empty() {
            return Ok(CommitOutcome::Committed(Vec::new()));
        }
        if unit.inbox.is_empty()
            && unit.checkpoint.is_none()
            && unit.appends.len() == 1
            && self.inline_projections_for(&unit.appends).is_empty()
        {
            // The common case needs no explicit transaction: one statement, one round trip.
            let mut appends = unit.appends;
            let append = appends.remove(0);
            let mut conn = self.inner.pool.acquire().await.map_err(from_sqlx)?;
            let result = match self.append_on(&mut conn, append, false).await {
                Ok(result) => result,
                Err(failure) => {
                    drop(conn);
                    return Err(self.failure_error(failure).await);
                }
            };
            drop(conn);
            crate::telemetry::store().append(started.elapsed());
            let results = vec![result];
            self.announce(&results);
            return Ok(CommitOutcome::Committed(results));
        }
        let mut tx = self.inner.pool.begin().await.map_err(from_sqlx)?;
        let outcome = match self.commit_in(&mut tx, unit).await {
            Ok(outcome) => outcome,
            Err(failure) => {
                // End the transaction first: its connection goes back to the pool.
                let _ = tx.rollback().await;
                return Err(self.failure_error(failure).await);
            }
        };
        match outcome {
            Some(results) => {
                tx.commit().await.map_err(from_sqlx)?;
                crate::telemetry::store().commit(started.elapsed());
                self.announce(&results);
                Ok(CommitOutcome::Committed(results))
            }
            None => {
                tx.rollback().await.map_err(from_sqlx)?;
                Ok(CommitOutcome::AlreadyHandled)
            }
        }
    }

    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let from = to_i64(from_version.max(1), "stream version")?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<StreamEventRow> = sqlx::query_as(
            "SELECT event_id, stream_version, tx_id, seq, recorded_at, event_type, \
             schema_version, payload, metadata FROM events \
             WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version LIMIT $3",
        )
        .bind(stream_id.as_str())
        .bind(from)
        .bind(limit)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(from_sqlx)?;
        rows.into_iter()
            .map(|row| recorded_in(stream_id.clone(), row))
            .collect()
    }

    async fn replay_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<ReplayedEvent>> {
        let from = to_i64(from_version.max(1), "stream version")?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Only what folding needs: no ids, positions, times or metadata to send and decode.
        let rows: Vec<(i64, String, i32, Vec<u8>)> = sqlx::query_as(
            "SELECT stream_version, event_type, schema_version, payload FROM events \
             WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version LIMIT $3",
        )
        .bind(stream_id.as_str())
        .bind(from)
        .bind(limit)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(from_sqlx)?;
        Ok(rows
            .into_iter()
            .map(|(version, event_type, schema, payload)| ReplayedEvent {
                stream_version: to_u64(version),
                event_type,
                schema_version: u32::try_from(schema).unwrap_or_default(),
                payload: Bytes::from(payload),
            })
            .collect())
    }

    async fn replay_streams(
        &self,
        requests: &[(StreamId, u64)],
        limit: usize,
    ) -> Result<Vec<Vec<ReplayedEvent>>> {
        self.replay_many(requests, limit).await
    }

    async fn stream_version(&self, stream_id: &StreamId) -> Result<Option<u64>> {
        let mut conn = self.inner.pool.acquire().await.map_err(from_sqlx)?;
        current_version(&mut conn, stream_id).await
    }

    async fn read_all(
        &self,
        filter: &StreamFilter,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.read_all_settled(filter, after, limit, self.inner.config.read_settle)
            .await
    }

    /// The page a subscription reads: what is safe now, and whether it reached the head, in
    /// one statement. An empty page with committed events held back behind an older running
    /// transaction waits for that transaction (polling: its end may announce nothing).
    async fn read_page(
        &self,
        filter: &StreamFilter,
        after: Position,
        limit: usize,
    ) -> Result<Page> {
        self.read_page_settled(filter, after, limit, HELD_BACK_POLL_LIMIT)
            .await
    }

    async fn head(&self) -> Result<Position> {
        let deadline = tokio::time::Instant::now() + self.inner.config.read_settle;
        let mut pause = Backoff::new(Duration::from_millis(2), Duration::from_millis(50));
        let mut began_before: Option<i64> = None;
        loop {
            let (tx_id, seq, held, xmin, xmax): (Option<i64>, Option<i64>, bool, i64, i64) =
                sqlx::query_as(&format!(
                    "SELECT h.tx_id, h.seq, EXISTS (SELECT 1 FROM events WHERE tx_id >= {HORIZON}), \
                       pg_snapshot_xmin(pg_current_snapshot())::text::bigint, \
                       pg_snapshot_xmax(pg_current_snapshot())::text::bigint \
                     FROM (SELECT 1) AS one LEFT JOIN LATERAL (SELECT tx_id, seq FROM events \
                       WHERE tx_id < {HORIZON} ORDER BY tx_id DESC, seq DESC LIMIT 1) AS h ON true"
                ))
                .fetch_one(&self.inner.pool)
                .await
                .map_err(from_sqlx)?;
            let head = Position::new(tx_id.map_or(0, to_u64), seq.map_or(0, to_u64));
            let target = *began_before.get_or_insert(xmax);
            if !held || xmin >= target || tokio::time::Instant::now() >= deadline {
                return Ok(head);
            }
            pause.sleep().await;
        }
    }

    fn subscribe(&self, filter: StreamFilter, after: Position) -> EventSubscription {
        // Listening from now, so no announcement is missed while catching up.
        self.ensure_listener();
        let store = self.clone();
        let live_filter = filter.clone();
        crate::catch_up::subscription(
            self.inner.pool.clone(),
            self.inner.catch_up_permits.clone(),
            self.inner.config.catch_up_rows,
            filter,
            after,
            move |last| store.poll_subscription(live_filter, last),
        )
    }
}

impl PgEventStore {
    /// The polling subscription after `after`: pages, woken by announcements.
    fn poll_subscription(&self, filter: StreamFilter, after: Position) -> EventSubscription {
        let wake = self.wake_receiver_for(&filter);
        let config = PollConfig {
            page_size: self.inner.config.page_size,
            poll_interval: self.inner.config.poll_interval,
            ..PollConfig::default()
        };
        // The store itself: its `read_page` is the subscription's read.
        poll_subscription(Arc::new(self.clone()), filter, after, Some(wake), config)
    }
}

/// How long one subscription read keeps polling while newer events are held back: the end of
/// the holding transaction may announce nothing (it may have written no event). The bound only
/// keeps one read finite.
const HELD_BACK_POLL_LIMIT: Duration = Duration::from_secs(30);
