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

/// Writes one saga change on `conn`, inside the caller's transaction: the caller commits on
/// `Saved` and rolls back otherwise (an `AlreadyHandled` or an error may come after writes).
async fn save_in(conn: &mut sqlx::PgConnection, change: SagaChange) -> Result<SagaSaved> {
    // The checks that make a redelivery a no-op come first, so a stale version on a
    // redelivered event is not reported as a conflict.
    if let Some(event_id) = change.handled_event {
        let new = sqlx::query_scalar::<_, i32>(
            "INSERT INTO saga_inbox (saga, event_id) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING RETURNING 1",
        )
        .bind(&change.saga)
        .bind(event_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(from_sqlx)?;
        if new.is_none() {
            return Ok(SagaSaved::AlreadyHandled);
        }
    }
    if let Some(id) = change.fired_deadline {
        let removed =
            sqlx::query_scalar::<_, i32>("DELETE FROM saga_deadlines WHERE id = $1 RETURNING 1")
                .bind(id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(from_sqlx)?;
        if removed.is_none() {
            return Ok(SagaSaved::AlreadyHandled);
        }
    }
    let expected = to_i64(change.expected_version, "saga version")?;
    let stored = if expected == 0 {
        sqlx::query_scalar::<_, i32>(
            "INSERT INTO saga_states (saga, instance, data, version, completed) \
             VALUES ($1, $2, $3, 1, $4) ON CONFLICT DO NOTHING RETURNING 1",
        )
        .bind(&change.saga)
        .bind(&change.instance)
        .bind(&change.state[..])
        .bind(change.completed)
        .fetch_optional(&mut *conn)
        .await
    } else {
        sqlx::query_scalar::<_, i32>(
            "UPDATE saga_states SET data = $3, version = version + 1, completed = $4, \
             updated_at = now() WHERE saga = $1 AND instance = $2 AND version = $5 RETURNING 1",
        )
        .bind(&change.saga)
        .bind(&change.instance)
        .bind(&change.state[..])
        .bind(change.completed)
        .bind(expected)
        .fetch_optional(&mut *conn)
        .await
    }
    .map_err(from_sqlx)?;
    if stored.is_none() {
        let actual = sqlx::query_scalar::<_, i64>(
            "SELECT version FROM saga_states WHERE saga = $1 AND instance = $2",
        )
        .bind(&change.saga)
        .bind(&change.instance)
        .fetch_optional(&mut *conn)
        .await
        .map_err(from_sqlx)?;
        return Err(change.conflict(actual.map_or(0, to_u64)));
    }
    let replaced: Vec<&str> = change
        .cancel
        .iter()
        .map(String::as_str)
        .chain(change.schedule.iter().map(|d| d.key.as_str()))
        .collect();
    if !replaced.is_empty() {
        sqlx::query(
            "DELETE FROM saga_deadlines WHERE saga = $1 AND instance = $2 AND key = ANY($3)",
        )
        .bind(&change.saga)
        .bind(&change.instance)
        .bind(&replaced)
        .execute(&mut *conn)
        .await
        .map_err(from_sqlx)?;
    }
    if !change.schedule.is_empty() {
        let mut ids = Vec::with_capacity(change.schedule.len());
        let mut keys = Vec::with_capacity(change.schedule.len());
        let mut due = Vec::with_capacity(change.schedule.len());
        let mut payloads = Vec::with_capacity(change.schedule.len());
        let mut metadata = Vec::with_capacity(change.schedule.len());
        for d in &change.schedule {
            if d.saga != change.saga || d.instance != change.instance {
                return Err(Error::InvalidInput(format!(
                    "deadline `{}` belongs to {}/{}, not to the saved instance",
                    d.key, d.saga, d.instance
                )));
            }
            ids.push(d.id);
            keys.push(d.key.as_str());
            due.push(d.due_at);
            payloads.push(&d.payload[..]);
            metadata.push(d.metadata.to_json().to_vec());
        }
        sqlx::query(
            "INSERT INTO saga_deadlines (id, saga, instance, key, due_at, payload, metadata) \
             SELECT d.id, $1, $2, d.key, d.due_at, d.payload, d.metadata \
             FROM UNNEST($3::uuid[], $4::text[], $5::timestamptz[], $6::bytea[], $7::bytea[]) \
               AS d(id, key, due_at, payload, metadata)",
        )
        .bind(&change.saga)
        .bind(&change.instance)
        .bind(&ids)
        .bind(&keys)
        .bind(&due)
        .bind(&payloads)
        .bind(&metadata)
        .execute(&mut *conn)
        .await
        .map_err(|e| match crate::error::unique_violation(&e) {
            Some(_) => Error::InvalidInput(
                "a saga change schedules one key twice, or reuses a deadline id".into(),
            ),
            None => from_sqlx(e),
        })?;
    }
    Ok(SagaSaved::Saved)
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

    /// All the changes in one transaction: a batched saga's one commit.
    async fn save_many(&self, mut changes: Vec<SagaChange>) -> Result<SagaSaved> {
        if changes.is_empty() {
            return Ok(SagaSaved::Saved);
        }
        // Rows are locked in one order, so two batches sharing instances wait for each other
        // (and the later one meets a version conflict) instead of deadlocking.
        changes.sort_by(|a, b| (&a.saga, &a.instance).cmp(&(&b.saga, &b.instance)));
        let mut tx = self.pool().begin().await.map_err(from_sqlx)?;
        for change in changes {
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
