//! Pruning the bookkeeping tables, so that they do not grow with the log.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use es_core::housekeeping::{Housekeeping, PruneReport};
use es_core::Result;

use crate::error::from_sqlx;
use crate::store::PgEventStore;

#[async_trait]
impl Housekeeping for PgEventStore {
    /// Deletes `inbox` and `saga_inbox` rows handled longer than `retention` ago, finished
    /// `saga_states` unchanged for longer than that (with their leftover deadlines), and
    /// `idempotency_keys` past their `expires_at`.
    ///
    /// Each kind is one statement of its own; rows are deleted by their timestamp column, which
    /// has no index (an index would cost every handled message a write, for a prune that runs
    /// hourly), so each statement reads its table once.
    async fn prune(&self, retention: Duration) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        // A retention reaching back before 1970 finds nothing older; it is not an error.
        let cutoff = chrono::Duration::from_std(retention)
            .ok()
            .and_then(|retention| Utc::now().checked_sub_signed(retention))
            .filter(|cutoff| *cutoff > DateTime::UNIX_EPOCH);
        if let Some(cutoff) = cutoff {
            report.inbox = self
                .delete("DELETE FROM inbox WHERE handled_at < $1", cutoff)
                .await?;
            report.saga_inbox = self
                .delete("DELETE FROM saga_inbox WHERE handled_at < $1", cutoff)
                .await?;
            report.saga_states = sqlx::query_scalar::<_, i64>(
                "WITH gone AS ( \
                   DELETE FROM saga_states WHERE completed AND updated_at < $1 \
                   RETURNING saga, instance), \
                 leftover AS ( \
                   DELETE FROM saga_deadlines d USING gone g \
                   WHERE d.saga = g.saga AND d.instance = g.instance) \
                 SELECT count(*) FROM gone",
            )
            .bind(cutoff)
            .fetch_one(self.pool())
            .await
            .map_err(from_sqlx)?
            .unsigned_abs();
        }
        report.idempotency_keys =
            sqlx::query("DELETE FROM idempotency_keys WHERE expires_at < now()")
                .execute(self.pool())
                .await
                .map_err(from_sqlx)?
                .rows_affected();
        Ok(report)
    }
}

impl PgEventStore {
    async fn delete(&self, sql: &'static str, cutoff: DateTime<Utc>) -> Result<u64> {
        Ok(sqlx::query(sql)
            .bind(cutoff)
            .execute(self.pool())
            .await
            .map_err(from_sqlx)?
            .rows_affected())
    }
}
