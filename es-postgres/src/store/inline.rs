//! Inline projections: read models written in every commit's transaction, after its appends,
//! so a read right after the commit sees them.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use es_core::{AppendResult, Error, NewEvent, RecordedEvent, Result, StreamAppend};
use sqlx::PgConnection;

use super::PgEventStore;
use crate::projection::PgProjection;

impl PgEventStore {
    /// Registers `projection` as inline: every commit of this store (and of its clones) applies
    /// the appended events that pass the projection's filter in its own transaction, after the
    /// appends, so a read right after the commit returns sees them (read-your-writes), and a
    /// failing `apply` fails the commit. Commits then always run in an explicit transaction.
    ///
    /// ```no_run
    /// # async fn example(store: es_postgres::PgEventStore, counts: std::sync::Arc<dyn es_postgres::PgProjection>) {
    /// let store = store.with_inline_projection(counts);
    /// # }
    /// ```
    pub fn with_inline_projection(self, projection: Arc<dyn PgProjection>) -> Self {
        self.inner
            .inline
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(projection);
        self
    }

    /// The inline projections whose filter takes a stream of `appends`: a commit that none of
    /// them reads keeps the single-statement path (an order projection costs a payment append
    /// nothing).
    pub(super) fn inline_projections_for(
        &self,
        appends: &[StreamAppend],
    ) -> Vec<Arc<dyn PgProjection>> {
        let mut inline = self.inline_projections();
        inline.retain(|projection| {
            let filter = projection.filter();
            appends
                .iter()
                .any(|append| filter.matches(&append.stream_id))
        });
        inline
    }

    fn inline_projections(&self) -> Vec<Arc<dyn PgProjection>> {
        self.inner
            .inline
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Applies the events just appended (in the open transaction on `conn`, all recorded at
/// `recorded_at`, the transaction's start) to the inline projections.
pub(super) async fn apply_inline(
    conn: &mut PgConnection,
    inline: &[Arc<dyn PgProjection>],
    results: &[AppendResult],
    written: Vec<Vec<NewEvent>>,
    recorded_at: DateTime<Utc>,
) -> Result<()> {
    let mut recorded = Vec::new();
    for (result, events) in results.iter().zip(written) {
        let first_version = result.next_expected_version + 1 - result.positions.len() as u64;
        for ((event, &position), version) in events
            .into_iter()
            .zip(&result.positions)
            .zip(first_version..)
        {
            recorded.push(RecordedEvent {
                event_id: event.event_id,
                stream_id: result.stream_id.clone(),
                stream_version: version,
                position,
                recorded_at,
                event_type: event.event_type,
                schema_version: event.schema_version,
                payload: event.payload,
                metadata: event.metadata,
            });
        }
    }
    for projection in inline {
        let filter = projection.filter();
        let events: Vec<RecordedEvent> = recorded
            .iter()
            .filter(|e| filter.matches(&e.stream_id))
            .cloned()
            .collect();
        if events.is_empty() {
            continue;
        }
        projection
            .apply_inline(&mut *conn, &events)
            .await
            .map_err(|e| {
                Error::backend(
                    "inline projection",
                    format!("{} failed: {e}", projection.name()),
                )
            })?;
    }
    Ok(())
}
