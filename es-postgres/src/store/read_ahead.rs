//! Read-ahead for scans of the global log: once [`read_all`](es_core::EventStore::read_all)
//! hands out a full page, the page after it is read while the caller works through this one.
//!
//! Page by page, the server and the client otherwise take turns: the server idles while the
//! caller decodes a page, the caller waits while the server reads the next. With the next page
//! already under way, a scan (a projection rebuilt, a consumer catching up, an export) runs
//! both at once, as one streaming query does.
//!
//! A page read ahead is handed out only when it came back full, and a full page is final: it
//! holds only events below the horizon of its read (every transaction with a smaller id had
//! ended), so no event can commit later at a position inside it, and a fresh read would
//! return the same events. A short page (the head reached) may grow, so it is read again.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use es_core::{Position, RecordedEvent, Result, StreamFilter};
use sqlx::PgPool;
use tokio::task::JoinHandle;

use crate::log::read_all_settled;

/// The smallest page that reads ahead: smaller ones are polls of the head, not scans.
pub(super) const MIN_PAGE: usize = 100;

/// Pages read ahead at most at once (one per scan under way); the oldest is dropped for a new
/// one.
const MAX_PENDING: usize = 4;

/// The pages read ahead, by the read they answer.
#[derive(Default)]
pub(super) struct ReadAhead {
    pending: Mutex<VecDeque<Pending>>,
}

/// A page being read (or read) for the `read_all(filter, after, limit)` expected next.
struct Pending {
    filter: StreamFilter,
    after: Position,
    limit: usize,
    page: JoinHandle<Result<Vec<RecordedEvent>>>,
}

impl ReadAhead {
    /// Starts reading the page `read_all(filter, after, limit)` will ask for.
    pub(super) fn start(
        &self,
        pool: &PgPool,
        filter: &StreamFilter,
        after: Position,
        limit: usize,
    ) {
        let (pool, task_filter) = (pool.clone(), filter.clone());
        let page = tokio::spawn(async move {
            read_all_settled(&pool, &task_filter, after, limit, Duration::ZERO).await
        });
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() >= MAX_PENDING {
            if let Some(oldest) = pending.pop_front() {
                oldest.page.abort();
            }
        }
        pending.push_back(Pending {
            filter: filter.clone(),
            after,
            limit,
            page,
        });
    }

    /// The page read ahead for `read_all(filter, after, limit)`, when one was and it came back
    /// full; `None` when the caller must read it.
    pub(super) async fn take(
        &self,
        filter: &StreamFilter,
        after: Position,
        limit: usize,
    ) -> Option<Vec<RecordedEvent>> {
        let page = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let at = pending
                .iter()
                .position(|p| p.after == after && p.limit == limit && &p.filter == filter)?;
            pending.remove(at)?.page
        };
        match page.await {
            Ok(Ok(events)) if events.len() == limit => Some(events),
            // Short (it may have grown since), failed or aborted: read it now.
            _ => None,
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        let pending = self.pending.get_mut().unwrap_or_else(|e| e.into_inner());
        for p in pending.drain(..) {
            p.page.abort();
        }
    }
}
