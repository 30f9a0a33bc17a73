//! Read-ahead for scans of the global log: once [`read_all`](es_core::EventStore::read_all)
//! hands out a full page, the pages after it are read while the caller works through this one.
//!
//! Page by page, the server and the client otherwise take turns: the server idles while the
//! caller decodes a page, the caller waits while the server reads the next. With the next pages
//! already under way, a scan (a projection rebuilt, a consumer catching up, an export) runs
//! both at once, as one streaming query does.
//!
//! The pages after a full one come from streaming queries of many pages (two pages, then
//! twice as many each time, up to the store's
//! [`catch_up_rows`](crate::PgConfig::catch_up_rows) rows), cut into pages of the caller's
//! size and handed over one at a time through a channel of one page, so the query runs a page
//! ahead of the caller and no further. One query of a hundred pages costs the server a
//! statement where a query per page cost a hundred, and the caller's next page is usually
//! waiting when it asks. Such a stream holds a connection while its caller works, so it takes
//! one of the permits the streaming catch-ups share (half the pool); without one, a single page
//! is read ahead, as a query of its own. A stream that ends before its query does (its scan
//! stopped asking, or was dropped for a newer one) closes its connection: returned to the pool,
//! the connection would first have to take in the rest of the query.
//!
//! A page read ahead is handed out only when it is full, and a full page is final: it holds
//! only events below the horizon of its read (every transaction with a smaller id had ended),
//! so no event can commit later at a position inside it, and a fresh read would return the
//! same events. The short page at the head (which may still grow) is left for the caller to
//! read, and ends the stream.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use es_core::{Position, RecordedEvent, StreamFilter};
use futures_util::StreamExt;
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::error::from_sqlx;
use crate::log::{visible_query, visible_sql, EventRow};

/// The smallest page that reads ahead: smaller ones are polls of the head, not scans.
pub(super) const MIN_PAGE: usize = 100;

/// Scans read ahead at most at once; the oldest is dropped for a new one.
const MAX_PENDING: usize = 4;

/// How long a page read ahead waits for its scan to ask for it. A scan that stopped (its
/// caller had what it wanted, or went away) then ends its query and gives back the connection.
const IDLE: Duration = Duration::from_secs(1);

/// The most events a page read ahead makes room for before its rows arrive.
const PAGE_CAPACITY: usize = 1024;

/// The pages read ahead, by the scans they serve.
#[derive(Default)]
pub(super) struct ReadAhead {
    pending: Mutex<VecDeque<Pending>>,
}

/// The pages being read for a scan whose next call will be `read_all(filter, next_after, limit)`.
struct Pending {
    filter: StreamFilter,
    limit: usize,
    /// Where the next page starts: after the last event handed out.
    next_after: Position,
    /// Full pages, in order, one at a time; closed when the reading ends.
    pages: mpsc::Receiver<Vec<RecordedEvent>>,
    /// Whether it streams page after page (it holds a permit), rather than reading one.
    streaming: bool,
    task: JoinHandle<()>,
}

/// Where the pages read ahead come from.
pub(super) struct Source<'a> {
    pub(super) pool: &'a PgPool,
    /// The permits of streams that hold a connection while their callers work.
    pub(super) permits: &'a Arc<Semaphore>,
    /// The most rows one streaming query reads.
    pub(super) rows_per_query: usize,
}

impl ReadAhead {
    /// Starts reading the pages after `after` for the scan that just got a full page ending
    /// there, unless they are being read already.
    pub(super) fn start(
        &self,
        source: Source<'_>,
        filter: &StreamFilter,
        after: Position,
        limit: usize,
    ) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending
            .iter()
            .any(|p| p.next_after == after && p.limit == limit && &p.filter == filter)
        {
            return;
        }
        let (sender, pages) = mpsc::channel(1);
        let permit = source.permits.clone().try_acquire_owned().ok();
        let streaming = permit.is_some();
        let task = tokio::spawn(read_pages(
            source.pool.clone(),
            permit,
            source.rows_per_query,
            filter.clone(),
            after,
            limit,
            sender,
        ));
        push(
            &mut pending,
            Pending {
                filter: filter.clone(),
                limit,
                next_after: after,
                pages,
                streaming,
                task,
            },
        );
    }

    /// The page read ahead for `read_all(filter, after, limit)`, when one was (it is full);
    /// `None` when the caller must read it.
    pub(super) async fn take(
        &self,
        filter: &StreamFilter,
        after: Position,
        limit: usize,
    ) -> Option<Vec<RecordedEvent>> {
        let mut scan = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let at = pending
                .iter()
                .position(|p| p.next_after == after && p.limit == limit && &p.filter == filter)?;
            pending.remove(at)?
        };
        // `None`: the reading ended (the head, a failure, or the scan was too slow to ask).
        let page = scan.pages.recv().await?;
        // A single page read ahead is spent: the caller's `start` reads the next one.
        if scan.streaming {
            scan.next_after = page.last()?.position;
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            push(&mut pending, scan);
        }
        Some(page)
    }
}

/// Adds `scan`, dropping the oldest one beyond [`MAX_PENDING`].
fn push(pending: &mut VecDeque<Pending>, scan: Pending) {
    if pending.len() >= MAX_PENDING {
        if let Some(oldest) = pending.pop_front() {
            oldest.task.abort();
        }
    }
    pending.push_back(scan);
}

/// Reads the full pages after `after` into `sender`: while `permit` is held, in queries of
/// two pages, then twice as many each time up to `rows_per_query` rows; a single page without
/// one. Ends at the first short page (the head), a failure (the caller's own read reports it),
/// or when a page waits longer than [`IDLE`] to be taken.
async fn read_pages(
    pool: PgPool,
    permit: Option<OwnedSemaphorePermit>,
    rows_per_query: usize,
    filter: StreamFilter,
    mut after: Position,
    limit: usize,
    sender: mpsc::Sender<Vec<RecordedEvent>>,
) {
    let most_pages = match permit {
        Some(_) => (rows_per_query / limit).max(1),
        None => 1,
    };
    let Ok(conn) = pool.acquire().await else {
        return;
    };
    let mut conn = ClosedUnlessDrained {
        conn,
        drained: true,
    };
    let sql = visible_sql(&filter);
    let mut pages = most_pages.min(2);
    loop {
        let per_query = pages * limit;
        let Ok(query) = visible_query::<EventRow>(&sql, &filter, after, per_query) else {
            return;
        };
        conn.drained = false;
        let mut rows = query.fetch(&mut *conn.conn);
        let mut page = Vec::with_capacity(limit.min(PAGE_CAPACITY));
        let mut read = 0;
        while let Some(row) = rows.next().await {
            let Ok(event) = row.map_err(from_sqlx).and_then(EventRow::recorded) else {
                return;
            };
            after = event.position;
            read += 1;
            page.push(event);
            if page.len() == limit {
                let full =
                    std::mem::replace(&mut page, Vec::with_capacity(limit.min(PAGE_CAPACITY)));
                match tokio::time::timeout(IDLE, sender.send(full)).await {
                    Ok(Ok(())) => {}
                    // Not taken in time, or the scan is gone.
                    _ => return,
                }
            }
        }
        drop(rows);
        conn.drained = true;
        if read < per_query || permit.is_none() {
            return;
        }
        pages = (pages * 2).min(most_pages);
    }
}

/// A pool connection that is closed when dropped in the middle of a query (the task ended
/// early, or was aborted), instead of going back to the pool, which would first take in every
/// row left of the query.
struct ClosedUnlessDrained {
    conn: PoolConnection<Postgres>,
    /// Whether the last query's rows were all read.
    drained: bool,
}

impl Drop for ClosedUnlessDrained {
    fn drop(&mut self) {
        if !self.drained {
            self.conn.close_on_drop();
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        let pending = self.pending.get_mut().unwrap_or_else(|e| e.into_inner());
        for p in pending.drain(..) {
            p.task.abort();
        }
    }
}
