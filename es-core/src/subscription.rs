//! A catch-up-then-live subscription built on [`EventStore::read_all`] and a wake-up signal.
//!
//! Backends implement [`EventStore::subscribe`] with [`poll_subscription`]: it reads pages after
//! the last delivered position, and when it has caught up waits for a wake-up (a commit in
//! memory, a `NOTIFY` in PostgreSQL) or the poll interval, whichever comes first. Because every
//! read starts after the last *delivered* position and the store's `read_all` never skips a
//! late commit, the subscription has no gap and no duplicate.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream;
use tokio::sync::watch;

use crate::error::Error;
use crate::event::RecordedEvent;
use crate::store::{EventStore, EventSubscription};
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
    wake: Option<watch::Receiver<()>>,
    config: PollConfig,
    backoff: Option<Duration>,
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
        wake,
        config,
        backoff: None,
    };
    Box::pin(stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.buffer.pop_front() {
                state.after = event.position;
                return Some((Ok(event), state));
            }
            if let Some(delay) = state.backoff {
                tokio::time::sleep(delay).await;
            }
            // Mark the current wake-up as seen *before* reading, so a commit that lands after
            // the read still wakes the wait below.
            if let Some(wake) = state.wake.as_mut() {
                wake.borrow_and_update();
            }
            match state
                .store
                .read_all(&state.filter, state.after, state.config.page_size)
                .await
            {
                Ok(events) if !events.is_empty() => {
                    state.backoff = None;
                    state.buffer.extend(events);
                }
                Ok(_) => {
                    state.backoff = None;
                    wait_for_wake(&mut state).await;
                }
                Err(error) => {
                    state.backoff = Some(match state.backoff {
                        None => state.config.min_backoff,
                        Some(d) => (d * 2).min(state.config.max_backoff),
                    });
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
