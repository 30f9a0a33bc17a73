//! [`CheckpointStore`] on the table `checkpoints`: how far each named reader has read.

use async_trait::async_trait;
use es_core::{CheckpointStore, Position, Result};
use sqlx::PgConnection;

use super::PgEventStore;
use crate::error::{from_sqlx, to_i64, to_u64};

#[async_trait]
impl CheckpointStore for PgEventStore {
    async fn load(&self, name: &str) -> Result<Option<Position>> {
        Ok(
            sqlx::query_as::<_, (i64, i64)>("SELECT tx_id, seq FROM checkpoints WHERE name = $1")
                .bind(name)
                .fetch_optional(self.pool())
                .await
                .map_err(from_sqlx)?
                .map(|(tx_id, seq)| Position::new(to_u64(tx_id), to_u64(seq))),
        )
    }

    async fn save(&self, name: &str, position: Position) -> Result<()> {
        let mut conn = self.pool().acquire().await.map_err(from_sqlx)?;
        save_checkpoint(&mut conn, name, position).await
    }
}

/// Upserts checkpoint `name`.
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
