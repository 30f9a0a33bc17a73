//! [`SnapshotStore`] on the table `snapshots`: one snapshot per stream, never replaced by an
//! older one.

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use es_core::{Result, Snapshot, SnapshotStore, StreamId};

use super::PgEventStore;
use crate::error::{from_sqlx, to_i64, to_u64};

#[async_trait]
impl SnapshotStore for PgEventStore {
    async fn save(&self, snapshot: Snapshot) -> Result<()> {
        sqlx::query(
            "INSERT INTO snapshots AS s (stream_id, version, schema_version, payload, taken_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (stream_id) DO UPDATE SET version = EXCLUDED.version, \
               schema_version = EXCLUDED.schema_version, payload = EXCLUDED.payload, \
               taken_at = EXCLUDED.taken_at \
             WHERE s.version <= EXCLUDED.version",
        )
        .bind(snapshot.stream_id.as_str())
        .bind(to_i64(snapshot.version, "snapshot version")?)
        .bind(i64::from(snapshot.schema_version))
        .bind(&snapshot.payload[..])
        .bind(snapshot.taken_at)
        .execute(self.pool())
        .await
        .map_err(from_sqlx)?;
        Ok(())
    }

    async fn load(&self, stream_id: &StreamId) -> Result<Option<Snapshot>> {
        let row = sqlx::query_as::<_, (i64, i32, Vec<u8>, DateTime<Utc>)>(
            "SELECT version, schema_version, payload, taken_at FROM snapshots WHERE stream_id = $1",
        )
        .bind(stream_id.as_str())
        .fetch_optional(self.pool())
        .await
        .map_err(from_sqlx)?;
        Ok(
            row.map(|(version, schema_version, payload, taken_at)| Snapshot {
                stream_id: stream_id.clone(),
                version: to_u64(version),
                schema_version: u32::try_from(schema_version).unwrap_or_default(),
                payload: Bytes::from(payload),
                taken_at,
            }),
        )
    }

    async fn delete(&self, stream_id: &StreamId) -> Result<()> {
        sqlx::query("DELETE FROM snapshots WHERE stream_id = $1")
            .bind(stream_id.as_str())
            .execute(self.pool())
            .await
            .map_err(from_sqlx)?;
        Ok(())
    }
}
