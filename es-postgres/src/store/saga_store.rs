//! [`SagaStore`] on the tables `saga_states`, `saga_inbox` and `saga_deadlines`: each saga
//! instance's state, the events it has handled, and the deadlines it has scheduled.

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use es_core::saga::{DeadlineRecord, SagaChange, SagaSaved, SagaState, SagaStore};
use es_core::{Error, Metadata, Result};
use uuid::Uuid;

use super::PgEventStore;
use crate::error::{from_sqlx, to_i64, to_u64};

#[derive(sqlx::FromRow)]
struct DeadlineRow {
    id: Uuid,
    saga: String,
    instance: String,
    key: String,
    due_at: DateTime<Utc>,
    payload: Vec<u8>,
    metadata: Vec<u8>,
    attempts: i32,
    retry_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
}

fn deadline(row: DeadlineRow) -> Result<DeadlineRecord> {
    Ok(DeadlineRecord {
        id: row.id,
        saga: row.saga,
        instance: row.instance,
        key: row.key,
        due_at: row.due_at,
        payload: Bytes::from(row.payload),
        metadata: Metadata::from_json(&row.metadata)?,
        attempts: u32::try_from(row.attempts).unwrap_or_default(),
        retry_at: row.retry_at,
        last_error: row.last_error,
    })
}

const DEADLINE_COLUMNS: &str =
    "id, saga, instance, key, due_at, payload, metadata, attempts, retry_at, last_error";

/// The end of [`SAVE_NEW`] and [`SAVE_NEXT`], after the statement that writes the state (the CTE
/// `state`, one row when it wrote): every other write of the change hangs on that row, so the
/// statement writes all of the change or nothing, and needs no transaction around it.
///
/// The inbox entry is a plain `INSERT`: the state's write already checked that the event was not
/// handled, and two changes racing on one instance meet on its row (the later one then finds
/// the version moved, or the instance there); a change of another instance recording the same
/// event fails the statement on the inbox's key, which takes the state's write back out. The
/// replaced deadlines are deleted before the new ones go in: the insert waits for the count of
/// the deletes (an init plan), so a key scheduled again does not meet its old row.
const SAVE_TAIL: &str = "\
    inbox AS ( \
      INSERT INTO saga_inbox (saga, event_id) \
      SELECT $1, $6 FROM state WHERE $6::uuid IS NOT NULL RETURNING 1), \
    replaced AS ( \
      DELETE FROM saga_deadlines \
      WHERE saga = $1 AND instance = $2 AND key = ANY($7::text[]) \
        AND EXISTS (SELECT 1 FROM state) RETURNING 1), \
    scheduled AS ( \
      INSERT INTO saga_deadlines (id, saga, instance, key, due_at, payload, metadata) \
      SELECT d.id, $1, $2, d.key, d.due_at, d.payload, d.metadata \
      FROM UNNEST($8::uuid[], $9::text[], $10::timestamptz[], $11::bytea[], $12::bytea[]) \
        AS d(id, key, due_at, payload, metadata) \
      WHERE EXISTS (SELECT 1 FROM state) AND (SELECT count(*) FROM replaced) >= 0 \
      RETURNING 1) \
    SELECT EXISTS (SELECT 1 FROM state), (SELECT count(*) FROM inbox), \
      (SELECT count(*) FROM scheduled)";

/// A change to a new instance (`expected_version` 0), in one statement: the state goes in
/// unless the event was handled or the instance exists (`$5`, the expected version, is 0).
static SAVE_NEW: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH state AS ( \
           INSERT INTO saga_states (saga, instance, data, version, completed) \
           SELECT $1, $2, $3, 1, $4 \
           WHERE $5::bigint = 0 AND ($6::uuid IS NULL OR NOT EXISTS ( \
             SELECT 1 FROM saga_inbox WHERE saga = $1 AND event_id = $6)) \
           ON CONFLICT DO NOTHING RETURNING 1), {SAVE_TAIL}"
    )
});

/// A change to an instance at `$5`, in one statement: the state moves on unless the event was
/// handled or the version moved.
static SAVE_NEXT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH state AS ( \
           UPDATE saga_states SET data = $3, version = version + 1, completed = $4, \
             updated_at = now() \
           WHERE saga = $1 AND instance = $2 AND version = $5 \
             AND ($6::uuid IS NULL OR NOT EXISTS ( \
               SELECT 1 FROM saga_inbox WHERE saga = $1 AND event_id = $6)) \
           RETURNING 1), {SAVE_TAIL}"
    )
});

/// Takes a fired deadline (`$1`) out, having locked its instance's state row (`$2`, `$3`)
/// first: the init plan's lock comes before the delete's.
///
/// A change's own statement ([`SAVE_NEXT`]) locks the state's row, then the deadlines it
/// replaces. Deleting the deadline first, a firing that met a change of its instance
/// rescheduling or cancelling that deadline held the deadline and waited for the state while
/// the change held the state and waited for the deadline: a deadlock that PostgreSQL breaks
/// only after `deadlock_timeout` (a second by default), failing one side.
const FIRE_DEADLINE: &str = "\
    WITH instance AS ( \
      SELECT 1 FROM saga_states WHERE saga = $2 AND instance = $3 FOR NO KEY UPDATE) \
    DELETE FROM saga_deadlines WHERE id = $1 AND (SELECT count(*) FROM instance) >= 0 \
    RETURNING 1";

/// Checks what a store cannot: each deadline a change schedules belongs to its instance.
fn check_deadlines(change: &SagaChange) -> Result<()> {
    match change
        .schedule
        .iter()
        .find(|d| d.saga != change.saga || d.instance != change.instance)
    {
        Some(d) => Err(Error::InvalidInput(format!(
            "deadline `{}` belongs to {}/{}, not to the saved instance",
            d.key, d.saga, d.instance
        ))),
        None => Ok(()),
    }
}

/// Writes one saga change on `conn` in one statement (see [`SAVE_TAIL`]): all of it or nothing,
/// inside a transaction of the caller's or alone. Inside one, the caller rolls back on any
/// answer but `Saved` (an `AlreadyHandled` from the inbox's key leaves the transaction aborted).
/// A change that fires a deadline first takes the deadline out, so it must run inside one.
async fn save_in(conn: &mut sqlx::PgConnection, change: &SagaChange) -> Result<SagaSaved> {
    if let Some(id) = change.fired_deadline {
        let removed = sqlx::query_scalar::<_, i32>(FIRE_DEADLINE)
            .bind(id)
            .bind(&change.saga)
            .bind(&change.instance)
            .fetch_optional(&mut *conn)
            .await
            .map_err(from_sqlx)?;
        if removed.is_none() {
            return Ok(SagaSaved::AlreadyHandled);
        }
    }
    let expected = to_i64(change.expected_version, "saga version")?;
    let replaced: Vec<&str> = change
        .cancel
        .iter()
        .map(String::as_str)
        .chain(change.schedule.iter().map(|d| d.key.as_str()))
        .collect();
    let count = change.schedule.len();
    let (mut ids, mut keys, mut due, mut payloads, mut metadata) = (
        Vec::with_capacity(count),
        Vec::with_capacity(count),
        Vec::with_capacity(count),
        Vec::with_capacity(count),
        Vec::with_capacity(count),
    );
    for d in &change.schedule {
        ids.push(d.id);
        keys.push(d.key.as_str());
        due.push(d.due_at);
        payloads.push(&d.payload[..]);
        metadata.push(d.metadata.to_json().to_vec());
    }
    let sql: &str = if expected == 0 { &SAVE_NEW } else { &SAVE_NEXT };
    let saved = sqlx::query_as::<_, (bool, i64, i64)>(sql)
        .bind(&change.saga)
        .bind(&change.instance)
        .bind(&change.state[..])
        .bind(change.completed)
        .bind(expected)
        .bind(change.handled_event)
        .bind(&replaced)
        .bind(&ids)
        .bind(&keys)
        .bind(&due)
        .bind(&payloads)
        .bind(&metadata)
        .fetch_one(&mut *conn)
        .await;
    match saved {
        Ok((true, ..)) => Ok(SagaSaved::Saved),
        Ok((false, ..)) => not_saved(conn, change).await,
        Err(error) => match crate::error::unique_violation(&error).as_deref() {
            // Another instance recorded the event first.
            Some("saga_inbox_pkey") => Ok(SagaSaved::AlreadyHandled),
            Some(_) => Err(Error::InvalidInput(
                "a saga change schedules one key twice, or reuses a deadline id".into(),
            )),
            None => Err(from_sqlx(error)),
        },
    }
}

/// Why a change wrote nothing, asked after its statement (so with what committed since): the
/// event was handled (a redelivery, even one decided on a stale version), or the version moved.
async fn not_saved(conn: &mut sqlx::PgConnection, change: &SagaChange) -> Result<SagaSaved> {
    let (handled, actual) = sqlx::query_as::<_, (bool, Option<i64>)>(
        "SELECT $3::uuid IS NOT NULL AND EXISTS ( \
                  SELECT 1 FROM saga_inbox WHERE saga = $1 AND event_id = $3), \
                (SELECT version FROM saga_states WHERE saga = $1 AND instance = $2)",
    )
    .bind(&change.saga)
    .bind(&change.instance)
    .bind(change.handled_event)
    .fetch_one(&mut *conn)
    .await
    .map_err(from_sqlx)?;
    if handled {
        return Ok(SagaSaved::AlreadyHandled);
    }
    Err(change.conflict(actual.map_or(0, to_u64)))
}

#[async_trait]
impl SagaStore for PgEventStore {
    async fn load(&self, saga: &str, instance: &str) -> Result<Option<SagaState>> {
        Ok(sqlx::query_as::<_, (Vec<u8>, i64, bool)>(
            "SELECT data, version, completed FROM saga_states WHERE saga = $1 AND instance = $2",
        )
        .bind(saga)
        .bind(instance)
        .fetch_optional(self.pool())
        .await
        .map_err(from_sqlx)?
        .map(|(data, version, completed)| SagaState {
            data: Bytes::from(data),
            version: to_u64(version),
            completed,
        }))
    }

    async fn save(&self, change: SagaChange) -> Result<SagaSaved> {
        self.save_many(vec![change]).await
    }

    /// All the changes in one transaction: a batched saga's one commit. A lone change that
    /// fires no deadline is one statement with no transaction around it.
    async fn save_many(&self, mut changes: Vec<SagaChange>) -> Result<SagaSaved> {
        for change in &changes {
            check_deadlines(change)?;
        }
        match changes.as_slice() {
            [] => return Ok(SagaSaved::Saved),
            [change] if change.fired_deadline.is_none() => {
                let mut conn = self.pool().acquire().await.map_err(from_sqlx)?;
                return save_in(&mut conn, change).await;
            }
            _ => {}
        }
        // Rows are locked in one order, so two batches sharing instances wait for each other
        // (and the later one meets a version conflict) instead of deadlocking.
        changes.sort_by(|a, b| (&a.saga, &a.instance).cmp(&(&b.saga, &b.instance)));
        let mut tx = self.pool().begin().await.map_err(from_sqlx)?;
        for change in &changes {
            match save_in(&mut tx, change).await {
                Ok(SagaSaved::Saved) => {}
                other => {
                    tx.rollback().await.map_err(from_sqlx)?;
                    return other;
                }
            }
        }
        tx.commit().await.map_err(from_sqlx)?;
        Ok(SagaSaved::Saved)
    }

    async fn load_many(&self, saga: &str, instances: &[String]) -> Result<Vec<Option<SagaState>>> {
        let rows = sqlx::query_as::<_, (String, Vec<u8>, i64, bool)>(
            // One primary-key probe per instance: `instance = ANY($2)` beside `saga = $1` was
            // planned as a scan of every row of the saga with a filter (the index's first
            // column alone), so each batch read the whole saga. The LIMIT keeps the planner
            // from flattening the lateral probe back into such a join. The array is opaque
            // (a scalar subquery), so the plan made once serves every batch size (see
            // `crate::plan`).
            "SELECT s.instance, s.data, s.version, s.completed \
             FROM unnest((SELECT $2::text[])) AS u(instance) \
             CROSS JOIN LATERAL ( \
               SELECT instance, data, version, completed FROM saga_states \
               WHERE saga = $1 AND instance = u.instance LIMIT 1) s",
        )
        .bind(saga)
        .bind(instances)
        .fetch_all(self.pool())
        .await
        .map_err(from_sqlx)?;
        let found: std::collections::HashMap<String, SagaState> = rows
            .into_iter()
            .map(|(instance, data, version, completed)| {
                let state = SagaState {
                    data: Bytes::from(data),
                    version: to_u64(version),
                    completed,
                };
                (instance, state)
            })
            .collect();
        // An instance asked twice is answered twice.
        Ok(instances
            .iter()
            .map(|instance| found.get(instance).cloned())
            .collect())
    }

    async fn handled_among(&self, saga: &str, event_ids: &[Uuid]) -> Result<Vec<Uuid>> {
        sqlx::query_scalar::<_, Uuid>(
            // One primary-key probe per id. A plain join on the array was planned as a hash
            // join over every row of the saga (all a service's sagas share one name), so each
            // batch read the whole saga inbox; the LIMIT keeps the lateral probe from being
            // flattened back into that join. The array is opaque (a scalar subquery, see
            // `crate::plan`).
            "SELECT s.event_id FROM unnest((SELECT $2::uuid[])) AS u(event_id) \
             CROSS JOIN LATERAL ( \
               SELECT event_id FROM saga_inbox \
               WHERE saga = $1 AND event_id = u.event_id LIMIT 1) s",
        )
        .bind(saga)
        .bind(event_ids)
        .fetch_all(self.pool())
        .await
        .map_err(from_sqlx)
    }

    async fn due_deadlines(
        &self,
        saga: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<DeadlineRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // By when the next attempt is due (the index saga_deadlines_saga_next): ordered by
        // due_at, each poll would read every parked deadline, due long ago, before a live one.
        let rows: Vec<DeadlineRow> = sqlx::query_as(&format!(
            "SELECT {DEADLINE_COLUMNS} FROM saga_deadlines \
             WHERE saga = $1 AND coalesce(retry_at, due_at) <= $2 AND due_at <= $2 \
             ORDER BY coalesce(retry_at, due_at), id LIMIT $3"
        ))
        .bind(saga)
        .bind(now)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .map_err(from_sqlx)?;
        rows.into_iter().map(deadline).collect()
    }

    async fn defer_deadline(&self, id: Uuid, retry_at: DateTime<Utc>, error: &str) -> Result<()> {
        sqlx::query(
            "UPDATE saga_deadlines SET attempts = LEAST(attempts, 2147483646) + 1, \
               retry_at = $2, last_error = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(retry_at)
        .bind(error)
        .execute(self.pool())
        .await
        .map_err(from_sqlx)?;
        Ok(())
    }

    async fn parked_deadlines(&self, saga: &str, limit: usize) -> Result<Vec<DeadlineRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<DeadlineRow> = sqlx::query_as(&format!(
            "SELECT {DEADLINE_COLUMNS} FROM saga_deadlines WHERE saga = $1 AND attempts > 0 \
             ORDER BY due_at, id LIMIT $2"
        ))
        .bind(saga)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .map_err(from_sqlx)?;
        rows.into_iter().map(deadline).collect()
    }

    async fn has_handled(&self, saga: &str, event_id: Uuid) -> Result<bool> {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM saga_inbox WHERE saga = $1 AND event_id = $2)",
        )
        .bind(saga)
        .bind(event_id)
        .fetch_one(self.pool())
        .await
        .map_err(from_sqlx)
    }

    async fn deadlines_of(&self, saga: &str, instance: &str) -> Result<Vec<DeadlineRecord>> {
        let rows: Vec<DeadlineRow> = sqlx::query_as(&format!(
            "SELECT {DEADLINE_COLUMNS} FROM saga_deadlines WHERE saga = $1 AND instance = $2 \
             ORDER BY due_at, id"
        ))
        .bind(saga)
        .bind(instance)
        .fetch_all(self.pool())
        .await
        .map_err(from_sqlx)?;
        rows.into_iter().map(deadline).collect()
    }
}
