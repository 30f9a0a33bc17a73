//! How far readers lag and what holds them back, for health endpoints and logs.

use std::time::Duration;

use es_core::{Position, Result};

use crate::error::{from_sqlx, to_u64};
use crate::log::HORIZON;
use crate::store::PgEventStore;

/// A snapshot of the store's health.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct PgHealth {
    /// The newest position a reader can see.
    pub head: Position,
    /// Each saved checkpoint and how far it is behind the head.
    pub checkpoints: Vec<CheckpointLag>,
    /// Committed events that readers cannot see yet because an older write transaction is
    /// still running (see the ordering guarantee in the crate docs).
    pub events_held_back: u64,
    /// How long the oldest write transaction in the cluster (one holding a transaction id) has
    /// been running; `None` when there is none. A long one holds every reader back.
    pub oldest_write_transaction_age: Option<Duration>,
}

/// One checkpoint's position and lag.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckpointLag {
    /// The checkpoint's name (a projection, a relay, a subscription).
    pub name: String,
    /// Its saved position.
    pub position: Position,
    /// Events after it that a reader can see now (of every stream: a checkpoint does not
    /// record its reader's filter).
    pub events_behind: u64,
}

impl PgEventStore {
    /// Reports the head, each checkpoint's lag, the events held back and the age of the oldest
    /// write transaction. Counting a lag scans the `(tx_id, seq)` index from the checkpoint to
    /// the head, so a reader far behind makes this slower.
    pub async fn health(&self) -> Result<PgHealth> {
        let mut conn = self.pool().acquire().await.map_err(from_sqlx)?;
        let (tx_id, seq, horizon): (Option<i64>, Option<i64>, i64) = sqlx::query_as(&format!(
            "SELECT h.tx_id, h.seq, pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
             FROM (SELECT 1) AS one LEFT JOIN LATERAL (SELECT tx_id, seq FROM events \
               WHERE tx_id < {HORIZON} ORDER BY tx_id DESC, seq DESC LIMIT 1) AS h ON true"
        ))
        .fetch_one(&mut *conn)
        .await
        .map_err(from_sqlx)?;
        // The horizon as a parameter, not the subquery: planned without knowing it, `tx_id >=`
        // the subquery is guessed to match a third of the log and PostgreSQL counted it by
        // reading the whole table. Bound, and not kept as a prepared statement, each run is
        // planned for its value and reads the index from there (only the newest events). A
        // kept statement switches to a generic plan after five runs when those were as dear:
        // five reports taken while a long transaction held the whole log back left a
        // sequential scan for every report after.
        let held_back: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE tx_id >= $1")
            .persistent(false)
            .bind(horizon)
            .fetch_one(&mut *conn)
            .await
            .map_err(from_sqlx)?;
        let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(&format!(
            "SELECT c.name, c.tx_id, c.seq, (SELECT count(*) FROM events e \
               WHERE (e.tx_id, e.seq) > (c.tx_id, c.seq) AND e.tx_id < {HORIZON}) \
             FROM checkpoints c ORDER BY c.name"
        ))
        .fetch_all(&mut *conn)
        .await
        .map_err(from_sqlx)?;
        let oldest: Option<f64> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM clock_timestamp() - min(xact_start))::float8 \
             FROM pg_stat_activity WHERE backend_xid IS NOT NULL",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(from_sqlx)?;
        Ok(PgHealth {
            head: Position::new(tx_id.map_or(0, to_u64), seq.map_or(0, to_u64)),
            checkpoints: rows
                .into_iter()
                .map(|(name, tx_id, seq, behind)| CheckpointLag {
                    name,
                    position: Position::new(to_u64(tx_id), to_u64(seq)),
                    events_behind: to_u64(behind),
                })
                .collect(),
            events_held_back: to_u64(held_back),
            oldest_write_transaction_age: oldest
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64),
        })
    }
}
