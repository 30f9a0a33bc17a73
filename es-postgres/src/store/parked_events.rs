//! [`ParkedEventStore`] on the table `parked_events`: the events a relay gave up on.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use es_core::{ParkedEvent, ParkedEventStore, Position, Result, StreamId};
use uuid::Uuid;

use super::PgEventStore;
use crate::error::{from_sqlx, to_i64, to_u64};

/// Parked events live in the table `parked_events`, beside the relay's checkpoint.
#[async_trait]
impl ParkedEventStore for PgEventStore {
    async fn park(&self, parked: ParkedEvent) -> Result<()> {
        sqlx::query(
            "INSERT INTO parked_events (relay, event_id, stream_id, stream_version, event_type, \
               tx_id, seq, error, parked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (relay, event_id) DO UPDATE SET error = EXCLUDED.error, \
               parked_at = EXCLUDED.parked_at",
        )
        .bind(&parked.relay)
        .bind(parked.event_id)
        .bind(parked.stream_id.as_str())
        .bind(to_i64(parked.stream_version, "stream version")?)
        .bind(&parked.event_type)
        .bind(to_i64(parked.position.commit, "position")?)
        .bind(to_i64(parked.position.sequence, "position")?)
        .bind(&parked.error)
        .bind(parked.parked_at)
        .execute(self.pool())
        .await
        .map_err(from_sqlx)?;
        Ok(())
    }

    async fn parked(&self, relay: &str, limit: usize) -> Result<Vec<ParkedEvent>> {
        type Row = (Uuid, String, i64, String, i64, i64, String, DateTime<Utc>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT event_id, stream_id, stream_version, event_type, tx_id, seq, error, parked_at \
             FROM parked_events WHERE relay = $1 ORDER BY tx_id, seq LIMIT $2",
        )
        .bind(relay)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.pool())
        .await
        .map_err(from_sqlx)?;
        rows.into_iter()
            .map(
                |(event_id, stream_id, version, event_type, tx_id, seq, error, parked_at)| {
                    Ok(ParkedEvent {
                        relay: relay.to_owned(),
                        event_id,
                        stream_id: StreamId::new(stream_id)?,
                        stream_version: to_u64(version),
                        event_type,
                        position: Position::new(to_u64(tx_id), to_u64(seq)),
                        error,
                        parked_at,
                    })
                },
            )
            .collect()
    }
}
