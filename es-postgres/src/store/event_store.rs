//! [`EventStore`] for [`PgEventStore`]: the commit, and the reads of the log.

use std::time::Duration;

use async_trait::async_trait;
use es_core::{
    CommitOutcome, EventStore, EventSubscription, Page, Position, RecordedEvent, ReplayedEvent,
    Result, StreamFilter, StreamId, UnitOfWork,
};

use super::{read_ahead, PgEventStore};
use crate::error::from_sqlx;
use crate::log;

/// How long one subscription read keeps polling while newer events are held back: the end of
/// the holding transaction may announce nothing (it may have written no event). The bound only
/// keeps one read finite.
const HELD_BACK_POLL_LIMIT: Duration = Duration::from_secs(30);

#[async_trait]
impl EventStore for PgEventStore {
    async fn commit(&self, unit: UnitOfWork) -> Result<CommitOutcome> {
        self.commit_unit(unit).await
    }

    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        log::read_stream(&self.inner.pool, stream_id, from_version, limit).await
    }

    async fn replay_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<ReplayedEvent>> {
        log::replay_stream(&self.inner.pool, stream_id, from_version, limit).await
    }

    async fn replay_streams(
        &self,
        requests: &[(StreamId, u64)],
        limit: usize,
    ) -> Result<Vec<Vec<ReplayedEvent>>> {
        log::replay_streams(&self.inner.pool, requests, limit).await
    }

    async fn stream_version(&self, stream_id: &StreamId) -> Result<Option<u64>> {
        let mut conn = self.inner.pool.acquire().await.map_err(from_sqlx)?;
        log::stream_version(&mut conn, stream_id).await
    }

    async fn read_all(
        &self,
        filter: &StreamFilter,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        // A full page of a scan: the next ones are read while the caller works through this
        // one (see `read_ahead`).
        let reads_ahead = self.inner.config.read_ahead && limit >= read_ahead::MIN_PAGE;
        let read_already = if reads_ahead {
            self.inner.read_ahead.take(filter, after, limit).await
        } else {
            None
        };
        let page = match read_already {
            Some(page) => page,
            None => {
                log::read_all_settled(
                    &self.inner.pool,
                    filter,
                    after,
                    limit,
                    self.inner.config.read_settle,
                )
                .await?
            }
        };
        if let Some(last) = page.last().filter(|_| reads_ahead && page.len() == limit) {
            let source = read_ahead::Source {
                pool: &self.inner.pool,
                permits: &self.inner.catch_up_permits,
                rows_per_query: self.inner.config.catch_up_rows,
            };
            self.inner
                .read_ahead
                .start(source, filter, last.position, limit);
        }
        Ok(page)
    }

    /// The page a subscription reads: what is safe now, and whether it reached the head, in
    /// one statement. An empty page with committed events held back behind an older running
    /// transaction waits for that transaction (polling: its end may announce nothing). On the
    /// page-read pool (`PgConfig::page_read_connections`).
    async fn read_page(
        &self,
        filter: &StreamFilter,
        after: Position,
        limit: usize,
    ) -> Result<Page> {
        log::read_page_settled(
            self.page_read_pool(),
            filter,
            after,
            limit,
            HELD_BACK_POLL_LIMIT,
        )
        .await
    }

    async fn head(&self) -> Result<Position> {
        log::head(&self.inner.pool, self.inner.config.read_settle).await
    }

    fn subscribe(&self, filter: StreamFilter, after: Position) -> EventSubscription {
        self.subscription(filter, after)
    }
}
