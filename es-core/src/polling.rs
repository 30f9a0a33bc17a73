//! A catch-up-then-live subscription built on [`EventStore::read_all`] and a wake-up signal.
//!
//! Backends implement [`EventStore::subscribe`] with [`poll_subscription`]: it reads pages after
//! the last delivered position, and when it has caught up waits for a wake-up (a commit in
//! memory, a `NOTIFY` in PostgreSQL) or the poll interval, whichever comes first. Because every
//! read starts after the last *delivered* position and the store's `read_all` never skips a
//! late commit, the subscription has no gap and no duplicate.
//!
//! A page that reached the head ([`EventStore::read_page`]: for most stores, a page that came
//! back short) is the last read until a wake-up or the poll interval: reading again at once
//! would only find nothing, so each wake-up costs one read, not two.
//!
//! While it catches up, it reads one page ahead: as soon as a full page arrives, the read of the
//! next one starts in a task of its own, so the store produces page N+1 while the consumer works
//! through page N. At most two pages are held at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::event::RecordedEvent;
use crate::store::{EventStore, EventSubscription, Page};
use crate::stream::{Position, StreamFilter};

/// How a polling subscription reads.
#[derive(Clone, Copy, Debug)]
pub struct PollConfig {
    /// Events read per page.
    pub page_size: usize,
    /// How long to wait for a wake-up before polling anyway.
    pub poll_interval: Duration,
    /// The first wait after a failed read; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// The longest wait between retries after failed reads.
    pub max_backoff: Duration,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            page_size: 1000,
            poll_interval: Duration::from_millis(500),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
        }
    }
}

struct State {
    store: Arc<dyn EventStore>,
    filter: StreamFilter,
    after: Position,
    buffer: VecDeque<RecordedEvent>,
    /// The read of the page after the buffer, started when the buffer's page came back full.
    ahead: Option<ReadAhead>,
    wake: Option<watch::Receiver<()>>,
    config: PollConfig,
    backoff: Backoff,
    /// The wait before the next read, after a failed one.
    retry_in: Option<Duration>,
    /// The buffer's page reached the head: once it is delivered, wait before reading again.
    at_head: bool,
}

/// A page read running in its own task; aborted when the subscription is dropped.
struct ReadAhead(JoinHandle<Result<Page>>);

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl State {
    /// Starts reading the page after `after` in a task of its own (when there is a runtime to
    /// run it on).
    fn read_ahead(&mut self, after: Position) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // As before any read: a commit after this point must still wake the wait.
        if let Some(wake) = self.wake.as_mut() {
            wake.borrow_and_update();
        }
        let (store, filter, limit) = (
            self.store.clone(),
            self.filter.clone(),
            self.config.page_size,
        );
        self.ahead =
            Some(ReadAhead(runtime.spawn(async move {
                store.read_page(&filter, after, limit).await
            })));
    }

    /// The next page: the one read ahead when there is one, else a read now.
    async fn next_page(&mut self) -> Result<Page> {
        if let Some(mut ahead) = self.ahead.take() {
            return match (&mut ahead.0).await {
                Ok(read) => read,
                // A read that panicked panics here, as it would have read in place.
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(error) => Err(Error::unavailable("subscription", error)),
            };
        }
        // Mark the current wake-up as seen *before* reading, so a commit that lands after the
        // read still wakes the wait below.
        if let Some(wake) = self.wake.as_mut() {
            wake.borrow_and_update();
        }
        self.store
            .read_page(&self.filter, self.after, self.config.page_size)
            .await
    }
}

/// A subscription to `store`'s global log after `after`, woken early by `wake` when given.
pub fn poll_subscription(
    store: Arc<dyn EventStore>,
    filter: StreamFilter,
    after: Position,
    wake: Option<watch::Receiver<()>>,
    config: PollConfig,
) -> EventSubscription {
    let state = State {
        store,
        filter,
        after,
        buffer: VecDeque::new(),
        ahead: None,
        wake,
        backoff: Backoff::new(config.min_backoff, config.max_backoff),
        config,
        retry_in: None,
        at_head: false,
    };
    Box::pin(stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.buffer.pop_front() {
                state.after = event.position;
                return Some((Ok(event), state));
            }
            if let Some(delay) = state.retry_in.take() {
                tokio::time::sleep(delay).await;
            }
            if std::mem::take(&mut state.at_head) {
                // Everything up to the head is delivered; the wake-up was marked as seen before
                // the read that reached it, so a commit since then ends the wait at once.
                wait_for_wake(&mut state).await;
            }
            match state.next_page().await {
                Ok(page) if !page.events.is_empty() => {
                    state.backoff.reset();
                    if page.events.len() >= state.config.page_size && !page.at_head {
                        if let Some(last) = page.events.last() {
                            state.read_ahead(last.position);
                        }
                    }
                    state.at_head = page.at_head;
                    state.buffer.extend(page.events);
                }
                Ok(_) => {
                    state.backoff.reset();
                    wait_for_wake(&mut state).await;
                }
                Err(error) => {
                    state.retry_in = Some(state.backoff.next_delay());
                    return Some((Err::<RecordedEvent, Error>(error), state));
                }
            }
        }
    }))
}

async fn wait_for_wake(state: &mut State) {
    let interval = state.config.poll_interval;
    match state.wake.as_mut() {
        Some(wake) => {
            // A closed channel means no more wake-ups: fall back to polling.
            if tokio::time::timeout(interval, wake.changed())
                .await
                .is_ok_and(|changed| changed.is_err())
            {
                state.wake = None;
                tokio::time::sleep(interval).await;
            }
        }
        None => tokio::time::sleep(interval).await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use futures_util::StreamExt;

    use super::*;
    use crate::memory::MemoryEventStore;
    use crate::store::{CommitOutcome, UnitOfWork};
    use crate::stream::ExpectedVersion;
    use crate::stream::StreamId;
    use crate::NewEvent;

    /// The memory store, counting the pages read.
    #[derive(Debug)]
    struct Counting {
        inner: MemoryEventStore,
        reads: AtomicUsize,
    }

    #[async_trait]
    impl EventStore for Counting {
        async fn commit(&self, unit: UnitOfWork) -> Result<CommitOutcome> {
            self.inner.commit(unit).await
        }
        async fn read_stream(
            &self,
            stream_id: &StreamId,
            from_version: u64,
            limit: usize,
        ) -> Result<Vec<RecordedEvent>> {
            self.inner.read_stream(stream_id, from_version, limit).await
        }
        async fn stream_version(&self, stream_id: &StreamId) -> Result<Option<u64>> {
            self.inner.stream_version(stream_id).await
        }
        async fn read_all(
            &self,
            filter: &StreamFilter,
            after: Position,
            limit: usize,
        ) -> Result<Vec<RecordedEvent>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.inner.read_all(filter, after, limit).await
        }
        async fn head(&self) -> Result<Position> {
            self.inner.head().await
        }
        fn subscribe(&self, filter: StreamFilter, after: Position) -> EventSubscription {
            self.inner.subscribe(filter, after)
        }
    }

    fn events(n: usize) -> Vec<NewEvent> {
        (0..n)
            .map(|i| NewEvent::raw("Counted", format!("{{\"i\":{i}}}").into_bytes()))
            .collect()
    }

    #[tokio::test]
    async fn a_full_page_starts_the_next_read_before_the_consumer_asks_for_it() {
        let store = Arc::new(Counting {
            inner: MemoryEventStore::new(),
            reads: AtomicUsize::new(0),
        });
        let stream = StreamId::new("counted-1").unwrap();
        store
            .inner
            .append(&stream, ExpectedVersion::NoStream, events(25))
            .await
            .unwrap();
        let config = PollConfig {
            page_size: 10,
            ..PollConfig::default()
        };
        let mut subscription = poll_subscription(
            store.clone(),
            StreamFilter::All,
            Position::START,
            None,
            config,
        );

        let first = subscription.next().await.unwrap().unwrap();
        assert_eq!(first.stream_version, 1);
        // The consumer holds the first event of a full page; the next page is read meanwhile.
        tokio::time::timeout(Duration::from_secs(5), async {
            while store.reads.load(Ordering::SeqCst) < 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the second page is read ahead");

        let rest: Vec<u64> = subscription
            .by_ref()
            .take(24)
            .map(|e| e.unwrap().stream_version)
            .collect()
            .await;
        assert_eq!(rest, (2..=25).collect::<Vec<_>>(), "in order, none twice");
        // Pages of 10, 10, 5: the short last page starts no read ahead.
        assert_eq!(store.reads.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_short_page_is_the_last_read_until_a_wake_up() {
        let store = Arc::new(Counting {
            inner: MemoryEventStore::new(),
            reads: AtomicUsize::new(0),
        });
        let stream = StreamId::new("counted-1").unwrap();
        store
            .inner
            .append(&stream, ExpectedVersion::NoStream, events(3))
            .await
            .unwrap();
        let (wake, woken) = watch::channel(());
        let config = PollConfig {
            page_size: 10,
            // Far longer than the test: only wake-ups end a wait.
            poll_interval: Duration::from_secs(60),
            ..PollConfig::default()
        };
        let mut subscription = poll_subscription(
            store.clone(),
            StreamFilter::All,
            Position::START,
            Some(woken),
            config,
        );

        let mut version = 0;
        for wake_up in 1..=3 {
            let page: Vec<u64> = subscription
                .by_ref()
                .take(3)
                .map(|e| e.unwrap().stream_version)
                .collect()
                .await;
            assert_eq!(page, vec![version + 1, version + 2, version + 3]);
            version += 3;
            // Asked for more, the subscription waits for a wake-up without reading again.
            let idle = tokio::time::timeout(Duration::from_millis(100), subscription.next()).await;
            assert!(idle.is_err(), "nothing new yet: {idle:?}");
            assert_eq!(
                store.reads.load(Ordering::SeqCst),
                wake_up,
                "one read per wake-up, none after the short page that reached the head"
            );
            store
                .inner
                .append(&stream, ExpectedVersion::Exact(version), events(3))
                .await
                .unwrap();
            wake.send_replace(());
        }
        let next = tokio::time::timeout(Duration::from_secs(5), subscription.next())
            .await
            .expect("woken")
            .unwrap()
            .unwrap();
        assert_eq!(next.stream_version, version + 1);
        assert_eq!(store.reads.load(Ordering::SeqCst), 4);
    }
}
