//! [`Inbox`] on the table `inbox`: which consumer has handled which event. A unit of work's
//! entries go in its commit's transaction.

use async_trait::async_trait;
use es_core::{Inbox, InboxEntry, Result};
use sqlx::PgConnection;
use uuid::Uuid;

use super::PgEventStore;
use crate::error::from_sqlx;

#[async_trait]
impl Inbox for PgEventStore {
    async fn contains(&self, consumer: &str, event_id: Uuid) -> Result<bool> {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM inbox WHERE consumer = $1 AND event_id = $2)",
        )
        .bind(consumer)
        .bind(event_id)
        .fetch_one(self.pool())
        .await
        .map_err(from_sqlx)
    }

    async fn record(&self, consumer: &str, event_id: Uuid) -> Result<bool> {
        Ok(sqlx::query_scalar::<_, i32>(
            "INSERT INTO inbox (consumer, event_id) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING RETURNING 1",
        )
        .bind(consumer)
        .bind(event_id)
        .fetch_optional(self.pool())
        .await
        .map_err(from_sqlx)?
        .is_some())
    }
}

/// Records a unit's inbox entries on `conn`, inside the unit's transaction: `false` when one of
/// them was there already (or came twice), and then the caller rolls back.
pub(super) async fn record_entries(
    conn: &mut PgConnection,
    entries: &[InboxEntry],
) -> Result<bool> {
    match entries {
        [] => Ok(true),
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
            Ok(inserted.is_some())
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
            Ok(inserted == entries.len() as i64)
        }
    }
}
