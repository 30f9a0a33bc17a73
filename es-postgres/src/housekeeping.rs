//! Pruning the bookkeeping tables, so that they do not grow with the log.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use es_core::housekeeping::{Housekeeping, PruneReport};
use es_core::Result;

use crate::error::from_sqlx;
use crate::idempotency::PgIdempotencyStore;
use crate::store::PgEventStore;

/// Rows deleted by one statement: a first prune after a long pause (days of inbox rows) is many
/// short transactions, not one that holds its locks and bloats the WAL in one go.
const CHUNK: i64 = 5_000;

#[async_trait]
impl Housekeeping for PgEventStore {
    /// Deletes `inbox` and `saga_inbox` rows handled longer than `retention` ago, finished
    /// `saga_states` unchanged for longer than that (with their leftover deadlines), and
    /// `idempotency_keys` past their `expires_at` (as [`PgIdempotencyStore::purge_expired`]).
    ///
    /// Rows are deleted in chunks of a few thousand, each chunk a statement (and transaction)
    /// of its own. Rows are found by their timestamp column, which has no index (an index would
    /// cost every handled message a write, for a prune that runs hourly).
    async fn prune(&self, retention: Duration) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        // A retention reaching back before 1970 finds nothing older; it is not an error.
        let cutoff = chrono::Duration::from_std(retention)
            .ok()
            .and_then(|retention| Utc::now().checked_sub_signed(retention))
            .filter(|cutoff| *cutoff > DateTime::UNIX_EPOCH);
        if let Some(cutoff) = cutoff {
            report.inbox = self
                .delete_in_chunks(
                    "WITH gone AS ( \
                       DELETE FROM inbox WHERE ctid = ANY(ARRAY( \
                         SELECT ctid FROM inbox WHERE handled_at < $1 LIMIT $2)) \
                       RETURNING 1) \
                     SELECT count(*) FROM gone",
                    cutoff,
                    CHUNK,
                )
                .await?;
            report.saga_inbox = self
                .delete_in_chunks(
                    "WITH gone AS ( \
                       DELETE FROM saga_inbox WHERE ctid = ANY(ARRAY( \
                         SELECT ctid FROM saga_inbox WHERE handled_at < $1 LIMIT $2)) \
                       RETURNING 1) \
                     SELECT count(*) FROM gone",
                    cutoff,
                    CHUNK,
                )
                .await?;
            report.saga_states = self
                .delete_in_chunks(
                    "WITH gone AS ( \
                       DELETE FROM saga_states WHERE ctid = ANY(ARRAY( \
                         SELECT ctid FROM saga_states WHERE completed AND updated_at < $1 \
                         LIMIT $2)) \
                       RETURNING saga, instance), \
                     leftover AS ( \
                       DELETE FROM saga_deadlines d USING gone g \
                       WHERE d.saga = g.saga AND d.instance = g.instance) \
                     SELECT count(*) FROM gone",
                    cutoff,
                    CHUNK,
                )
                .await?;
        }
        report.idempotency_keys = PgIdempotencyStore::new(self).purge_expired().await?;
        Ok(report)
    }
}

impl PgEventStore {
    /// Runs `sql` (which deletes at most `$2` rows older than `$1` and selects how many) until a
    /// run deletes fewer than `chunk`; returns the total.
    async fn delete_in_chunks(
        &self,
        sql: &'static str,
        cutoff: DateTime<Utc>,
        chunk: i64,
    ) -> Result<u64> {
        let mut total = 0;
        loop {
            let deleted = sqlx::query_scalar::<_, i64>(sql)
                .bind(cutoff)
                .bind(chunk)
                .fetch_one(self.pool())
                .await
                .map_err(from_sqlx)?
                .unsigned_abs();
            total += deleted;
            if deleted < chunk.unsigned_abs() {
                return Ok(total);
            }
        }
    }
}
