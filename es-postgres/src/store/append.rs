//! Appending one stream's events: the statements, one per kind of expectation, and the retries
//! of an append that loses a race it may lose.

use chrono::{DateTime, Utc};
use es_core::{
    AppendResult, Error, ExpectedVersion, InboxEntry, NewEvent, Position, Result, StreamAppend,
    StreamId,
};
use sqlx::PgConnection;
use uuid::Uuid;

use super::PgEventStore;
use crate::error::{from_sqlx, to_i64, to_u64, unique_violation};
use crate::log::stream_version;
use crate::plan::opaque;

/// The statements whose text depends on the expectation kind, built once.
pub(super) struct AppendStatements {
    append_any: String,
    append_no_stream: String,
    append_exists: String,
    append_exact: String,
    append_many: String,
    append_new_stream_recording: String,
    append_exact_recording: String,
}

impl AppendStatements {
    pub(super) fn new() -> Self {
        AppendStatements {
            append_any: append_sql("true"),
            append_no_stream: append_new_stream_sql(),
            append_exists: append_sql("current.version IS NOT NULL"),
            append_exact: append_after_version_sql(),
            append_many: append_many_sql(),
            append_new_stream_recording: recording_sql(&append_new_stream_sql(), 8),
            append_exact_recording: recording_sql(&append_after_version_sql(), 9),
        }
    }

    /// The append statement for `expected`.
    fn statement(&self, expected: ExpectedVersion) -> &str {
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
         RETURNING tx_id, seq, stream_version, recorded_at"
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
     RETURNING tx_id, seq, stream_version, recorded_at"
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
     RETURNING tx_id, seq, stream_version, recorded_at"
        .to_owned()
}

/// The appends of several streams in one statement, each at the versions its expectation pins
/// (`NoStream` from 1, `Exact(v)` from `v + 1`): `$1`–`$8` are the events' columns, stream by
/// stream in the unit's order, with their versions; `$9`/`$10` the streams expected at an exact
/// version `v`, each of which must hold an event of version `v`. The primary key refuses a
/// version another writer took (or version 1 of a stream that exists), as for one stream; an
/// exact version not stored inserts nothing and returns no row.
///
/// A unit of work over many streams (a batch of orders reserving stock on their products) was
/// a round trip per stream inside its transaction.
///
/// The arrays are [`opaque`]: planned for their lengths, the statement was planned on every
/// call, for the same probes whatever the number of streams (see [`crate::plan`]).
fn append_many_sql() -> String {
    let [stream_ids, versions, categories, event_ids, event_types, schemas, payloads, metadata, exact_streams, exact_versions] =
        [
            "$1::text[]",
            "$2::int8[]",
            "$3::text[]",
            "$4::uuid[]",
            "$5::text[]",
            "$6::int4[]",
            "$7::bytea[]",
            "$8::bytea[]",
            "$9::text[]",
            "$10::int8[]",
        ]
        .map(opaque);
    format!(
        "INSERT INTO events (stream_id, stream_version, category, event_id, event_type, \
                             schema_version, payload, metadata) \
         SELECT e.stream_id, e.stream_version, e.category, e.event_id, e.event_type, \
                e.schema_version, e.payload, e.metadata \
         FROM UNNEST({stream_ids}, {versions}, {categories}, {event_ids}, {event_types}, \
                     {schemas}, {payloads}, {metadata}) \
              AS e(stream_id, stream_version, category, event_id, event_type, schema_version, \
                   payload, metadata) \
         WHERE NOT EXISTS (SELECT FROM UNNEST({exact_streams}, {exact_versions}) \
                             AS x(stream_id, version) \
                           WHERE NOT EXISTS (SELECT FROM events s \
                                             WHERE s.stream_id = x.stream_id \
                                               AND s.stream_version = x.version)) \
         RETURNING stream_id, tx_id, seq, stream_version, recorded_at"
    )
}

/// `append` (an append statement pinned to a version, `$1`–`$7` or `$1`–`$8`) and the inbox
/// entry `$first_entry`/`$first_entry + 1` (consumer, event id) in one statement: a consumer's
/// unit of work of one message on one stream, with no transaction around it. The entry goes in
/// only when the events did (the data-modifying CTE sees the append's rows), and the statement
/// is atomic: an entry that is there already fails it with a unique violation on `inbox_pkey`,
/// which takes the events back out. That saves the `BEGIN`, the separate inbox `INSERT` and the
/// `COMMIT` of the transaction the unit would take, three of its four round trips.
fn recording_sql(append: &str, first_entry: usize) -> String {
    format!(
        "WITH appended AS ({append}), \
              entry AS (INSERT INTO inbox (consumer, event_id) \
                        SELECT ${first_entry}::text, ${}::uuid \
                        WHERE EXISTS (SELECT FROM appended)) \
         SELECT tx_id, seq, stream_version, recorded_at FROM appended",
        first_entry + 1
    )
}

/// Whether [`PgEventStore::append_recording`] takes a unit of `appends` and `inbox` entries:
/// one append with events, pinned to a version (`NoStream`, `Exact`), and one entry.
pub(super) fn append_records_entry(appends: &[StreamAppend], inbox: &[InboxEntry]) -> bool {
    matches!(
        (appends, inbox),
        ([append], [_]) if !append.events.is_empty()
            && matches!(append.expected, ExpectedVersion::NoStream | ExpectedVersion::Exact(_))
    )
}

/// Whether [`PgEventStore::append_many_on`] takes `appends`: several, each with events and an
/// expectation that pins its versions (`NoStream` or `Exact`). `Any` and `StreamExists` may
/// lose a race they then retry alone, behind a savepoint.
pub(super) fn appends_combine(appends: &[StreamAppend]) -> bool {
    appends.len() > 1
        && appends.iter().all(|a| {
            !a.events.is_empty()
                && matches!(
                    a.expected,
                    ExpectedVersion::NoStream | ExpectedVersion::Exact(_)
                )
        })
}

/// Attempts of an `Any` or `StreamExists` append that lose a race for the same version before
/// the store gives up with a conflict.
const MAX_RACE_RETRIES: usize = 1000;

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
        let mut columns = Columns::with_capacity(events.len());
        for event in events {
            columns.push(event)?;
        }
        Ok(columns)
    }

    fn with_capacity(n: usize) -> Self {
        Columns {
            ids: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            schema_versions: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
        }
    }

    /// Adds `event`'s columns, once it is checked.
    fn push(&mut self, event: NewEvent) -> Result<()> {
        if event.event_type.is_empty() {
            return Err(Error::InvalidInput("an event type cannot be empty".into()));
        }
        let schema_version = i32::try_from(event.schema_version).map_err(|_| {
            Error::InvalidInput(format!(
                "schema version {} of `{}` is too large",
                event.schema_version, event.event_type
            ))
        })?;
        self.ids.push(event.event_id);
        self.types.push(event.event_type);
        self.schema_versions.push(schema_version);
        self.payloads.push(Vec::from(event.payload));
        self.metadata.push(event.metadata.to_json().to_vec());
        Ok(())
    }
}

/// Why a unit's statements failed inside its transaction.
pub(super) enum Failure {
    /// The error to return.
    Error(Error),
    /// Another writer took a version this unit expected to write, in one of `streams`: a
    /// conflict whose actual version can only be read once the transaction (which the failure
    /// aborted) has ended.
    VersionTaken {
        streams: Vec<(StreamId, ExpectedVersion)>,
    },
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure::Error(error)
    }
}

/// What an append wrote: its result, and the time its events were recorded at (the
/// transaction's start, `now()`), when it wrote any.
pub(super) struct Appended {
    pub(super) result: AppendResult,
    pub(super) recorded_at: Option<DateTime<Utc>>,
}

impl PgEventStore {
    /// Appends the events of several streams on `conn`, inside a transaction, in one statement
    /// ([`appends_combine`] says which units may). The results and times come in the order of
    /// `appends`, positions in the same order as appending them one after another gives.
    pub(super) async fn append_many_on(
        &self,
        conn: &mut PgConnection,
        mut appends: Vec<StreamAppend>,
    ) -> Result<Vec<Appended>, Failure> {
        // The events move into the columns; the appends keep their streams and expectations.
        let events: Vec<Vec<NewEvent>> = appends
            .iter_mut()
            .map(|a| std::mem::take(&mut a.events))
            .collect();
        let total: usize = events.iter().map(Vec::len).sum();
        let mut stream_ids: Vec<&str> = Vec::with_capacity(total);
        let mut versions: Vec<i64> = Vec::with_capacity(total);
        let mut categories: Vec<&str> = Vec::with_capacity(total);
        let mut exact_streams: Vec<&str> = Vec::new();
        let mut exact_versions: Vec<i64> = Vec::new();
        let mut columns = Columns::with_capacity(total);
        for (append, events) in appends.iter().zip(events) {
            let base = match append.expected {
                ExpectedVersion::Exact(version) if version > 0 => {
                    let version = to_i64(version, "expected version")?;
                    exact_streams.push(append.stream_id.as_str());
                    exact_versions.push(version);
                    version
                }
                _ => 0,
            };
            for (k, event) in events.into_iter().enumerate() {
                stream_ids.push(append.stream_id.as_str());
                versions.push(base + to_i64(k as u64 + 1, "stream version")?);
                categories.push(append.stream_id.category());
                columns.push(event)?;
            }
        }
        let rows = sqlx::query_as::<_, (String, i64, i64, i64, DateTime<Utc>)>(
            &self.inner.appends.append_many,
        )
        .bind(&stream_ids)
        .bind(&versions)
        .bind(&categories)
        .bind(&columns.ids)
        .bind(&columns.types)
        .bind(&columns.schema_versions)
        .bind(&columns.payloads)
        .bind(&columns.metadata)
        .bind(&exact_streams)
        .bind(&exact_versions)
        .fetch_all(&mut *conn)
        .await;
        let mut rows = match rows {
            Ok(rows) if rows.len() == total => rows,
            // Nothing written: a stream expected at an exact version is not at it. Which one,
            // and where it is, is read now (the transaction is still usable).
            Ok(_) => {
                for append in &appends {
                    let actual = stream_version(&mut *conn, &append.stream_id).await?;
                    if !append.expected.is_met_by(actual) {
                        return Err(append.expected.conflict(&append.stream_id, actual).into());
                    }
                }
                return Err(Error::backend(
                    crate::error::BACKEND,
                    "a combined append wrote nothing, yet every expectation holds",
                )
                .into());
            }
            Err(error) => {
                return Err(match unique_violation(&error).as_deref() {
                    Some("events_event_id_key") => Error::InvalidInput(
                        "an event id of the unit of work is already stored".into(),
                    )
                    .into(),
                    Some("events_stream_version_key") => Failure::VersionTaken {
                        streams: appends
                            .iter()
                            .map(|a| (a.stream_id.clone(), a.expected))
                            .collect(),
                    },
                    _ => from_sqlx(error).into(),
                })
            }
        };
        // RETURNING follows the insertion order in practice, which SQL does not promise.
        rows.sort_unstable_by_key(|&(_, _, seq, _, _)| seq);
        let mut appended = Vec::with_capacity(appends.len());
        for append in appends {
            let mine = rows.iter().filter(|row| row.0 == append.stream_id.as_str());
            let mut positions = Vec::new();
            let (mut next_expected_version, mut recorded_at) = (0, None);
            for &(_, tx_id, seq, version, at) in mine {
                positions.push(Position::new(to_u64(tx_id), to_u64(seq)));
                next_expected_version = to_u64(version);
                recorded_at = recorded_at.or(Some(at));
            }
            appended.push(Appended {
                result: AppendResult {
                    stream_id: append.stream_id,
                    next_expected_version,
                    positions,
                },
                recorded_at,
            });
        }
        Ok(appended)
    }

    /// Appends one stream's events and records `entry` in the inbox, in one statement on its
    /// own ([`append_records_entry`] says which units may). `None` when `entry` was recorded
    /// before: then nothing is written, as the transaction of the unit would roll back.
    ///
    /// When the expectation fails and the entry is there too (a redelivery decided on an old
    /// state), this reports the conflict: deciding again on a fresh read then finds the entry.
    pub(super) async fn append_recording(
        &self,
        conn: &mut PgConnection,
        append: StreamAppend,
        entry: &InboxEntry,
    ) -> Result<Option<Appended>, Failure> {
        let StreamAppend {
            stream_id,
            expected,
            events,
        } = append;
        let columns = Columns::new(events)?;
        let (statement, expected_version) = match expected {
            ExpectedVersion::Exact(version) if version > 0 => (
                &self.inner.appends.append_exact_recording,
                Some(to_i64(version, "expected version")?),
            ),
            _ => (&self.inner.appends.append_new_stream_recording, None),
        };
        let rows = match bind_append(statement, &stream_id, &columns, expected_version)
            .bind(&entry.consumer)
            .bind(entry.event_id)
            .fetch_all(&mut *conn)
            .await
        {
            Ok(rows) if !rows.is_empty() => rows,
            // Nothing written: the stream is not at the exact version expected.
            Ok(_) => {
                let actual = stream_version(&mut *conn, &stream_id).await?;
                return Err(expected.conflict(&stream_id, actual).into());
            }
            Err(error) => {
                return match unique_violation(&error).as_deref() {
                    Some("inbox_pkey") => Ok(None),
                    Some("events_event_id_key") => Err(event_id_taken(&stream_id).into()),
                    Some("events_stream_version_key") => {
                        let actual = stream_version(&mut *conn, &stream_id).await?;
                        Err(expected.conflict(&stream_id, actual).into())
                    }
                    _ => Err(from_sqlx(error).into()),
                }
            }
        };
        Ok(Some(appended_from_rows(stream_id, rows)))
    }

    /// Appends one stream's events on `conn` (in a transaction when `in_tx`).
    pub(super) async fn append_on(
        &self,
        conn: &mut PgConnection,
        append: StreamAppend,
        in_tx: bool,
    ) -> Result<Appended, Failure> {
        let StreamAppend {
            stream_id,
            expected,
            events,
        } = append;
        if events.is_empty() {
            // Only the expectation is checked, as of now.
            let actual = stream_version(&mut *conn, &stream_id).await?;
            if !expected.is_met_by(actual) {
                return Err(expected.conflict(&stream_id, actual).into());
            }
            return Ok(Appended {
                result: AppendResult {
                    stream_id,
                    next_expected_version: actual.unwrap_or(0),
                    positions: Vec::new(),
                },
                recorded_at: None,
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
            let query = bind_append(
                self.inner.appends.statement(expected),
                &stream_id,
                &columns,
                expected_version,
            );
            match query.fetch_all(&mut *conn).await {
                Ok(rows) if !rows.is_empty() => break rows,
                Ok(_) => {
                    // The statement inserts exactly when the expectation holds for the version
                    // it sees; it wrote nothing, so that version failed it. Reading the version
                    // costs a round trip on this path only, which keeps the common one a plain
                    // INSERT. Should it hold by now (another writer created the stream
                    // meanwhile), this is a lost race like any other: try again.
                    let actual = stream_version(&mut *conn, &stream_id).await?;
                    if !expected.is_met_by(actual) || attempt >= MAX_RACE_RETRIES {
                        return Err(expected.conflict(&stream_id, actual).into());
                    }
                    attempt += 1;
                }
                Err(error) => match unique_violation(&error).as_deref() {
                    Some("events_event_id_key") => return Err(event_id_taken(&stream_id).into()),
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
                            streams: vec![(stream_id, expected)],
                        })
                    }
                    Some("events_stream_version_key") => {
                        let actual = stream_version(&mut *conn, &stream_id).await?;
                        return Err(expected.conflict(&stream_id, actual).into());
                    }
                    _ => return Err(from_sqlx(error).into()),
                },
            }
        };
        Ok(appended_from_rows(stream_id, rows))
    }
}

/// The refusal of an append to `stream_id` one of whose event ids is stored already.
fn event_id_taken(stream_id: &StreamId) -> Error {
    Error::InvalidInput(format!(
        "an event id of the append to `{stream_id}` is already stored"
    ))
}

/// The row an append statement returns for each event: its position, version and time.
type AppendRow = (i64, i64, i64, DateTime<Utc>);

/// One stream's append statement `sql` with its parameters bound: the stream, its category,
/// the events' columns and, for an exact expectation, the version expected (`$8`).
fn bind_append<'q>(
    sql: &'q str,
    stream_id: &'q StreamId,
    columns: &'q Columns,
    expected_version: Option<i64>,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, AppendRow, sqlx::postgres::PgArguments> {
    let query = sqlx::query_as::<_, AppendRow>(sql)
        .bind(stream_id.as_str())
        .bind(stream_id.category())
        .bind(&columns.ids)
        .bind(&columns.types)
        .bind(&columns.schema_versions)
        .bind(&columns.payloads)
        .bind(&columns.metadata);
    match expected_version {
        Some(version) => query.bind(version),
        None => query,
    }
}

/// What one stream's append wrote, from the rows its statement returned.
fn appended_from_rows(stream_id: StreamId, mut rows: Vec<AppendRow>) -> Appended {
    // RETURNING follows the insertion order in practice, which SQL does not promise.
    rows.sort_unstable_by_key(|&(_, seq, _, _)| seq);
    let next_expected_version = rows.last().map_or(0, |&(_, _, version, _)| to_u64(version));
    let recorded_at = rows.first().map(|&(_, _, _, at)| at);
    let positions = rows
        .iter()
        .map(|&(tx_id, seq, _, _)| Position::new(to_u64(tx_id), to_u64(seq)))
        .collect();
    Appended {
        result: AppendResult {
            stream_id,
            next_expected_version,
            positions,
        },
        recorded_at,
    }
}
