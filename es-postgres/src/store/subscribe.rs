//! How subscribers learn of new events: wake-ups in this process, a `NOTIFY` to the others,
//! the `LISTEN` task that hears them, and the subscription that catches up, then polls.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use es_core::polling::{poll_subscription, PollConfig};
use es_core::{AppendResult, EventSubscription, Position, Result, StreamFilter};
use tokio::sync::watch;

use super::PgEventStore;
use crate::listener::Listener;

impl PgEventStore {
    /// A receiver that changes whenever an append to this schema is announced (and after the
    /// listener reconnects, since announcements may have been missed meanwhile).
    pub fn wake_receiver(&self) -> watch::Receiver<()> {
        self.wake_receiver_for(&StreamFilter::All)
    }

    /// A receiver that changes whenever an append that `filter` lets through is announced (and
    /// after the listener reconnects). A category's receiver stays still while other categories
    /// are appended to, so its owner does not read for nothing.
    pub fn wake_receiver_for(&self, filter: &StreamFilter) -> watch::Receiver<()> {
        // The receiver first: the listener's first wake-up, once it listens, must reach it.
        let receiver = self.inner.wake.receiver(filter);
        self.ensure_listener();
        receiver
    }

    /// Tells subscribers that events were committed: this process's at once, others through
    /// a `NOTIFY` that the announcer sends after the commit.
    pub(super) fn announce(&self, results: &[AppendResult]) {
        if results.iter().all(|r| r.positions.is_empty()) {
            return;
        }
        let categories = || {
            results
                .iter()
                .filter(|r| !r.positions.is_empty())
                .map(|r| r.stream_id.category())
        };
        self.inner.wake.wake(categories());
        if let Ok(announcer) = self.inner.announcer.lock() {
            if let Some(announcer) = announcer.as_ref() {
                announcer.announce(categories());
            }
        }
    }

    fn ensure_listener(&self) {
        let Ok(mut listener) = self.inner.listener.lock() else {
            return;
        };
        if listener.is_none() {
            // Without a runtime there is no listener: subscriptions fall back to polling.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                *listener = Some(Listener::spawn(
                    &runtime,
                    self.inner.pool.clone(),
                    self.inner.channel.clone(),
                    self.inner.wake.clone(),
                ));
            }
        }
    }

    /// A subscription after `after`: what is safe now, streamed while far behind, then pages
    /// woken by announcements.
    pub(super) fn subscription(&self, filter: StreamFilter, after: Position) -> EventSubscription {
        // Listening from now, so no announcement is missed while catching up.
        self.ensure_listener();
        let store = self.clone();
        let live_filter = filter.clone();
        crate::catch_up::subscription(
            self.inner.pool.clone(),
            self.inner.catch_up_permits.clone(),
            self.inner.config.catch_up_rows,
            filter,
            after,
            move |last| store.poll_subscription(live_filter, last),
        )
    }

    /// The polling subscription after `after`: pages, woken by announcements.
    fn poll_subscription(&self, filter: StreamFilter, after: Position) -> EventSubscription {
        let wake = self.wake_receiver_for(&filter);
        let config = PollConfig {
            page_size: self.inner.config.page_size,
            poll_interval: self.inner.config.poll_interval,
            ..PollConfig::default()
        };
        // The store itself: its `read_page` is the subscription's read.
        poll_subscription(Arc::new(self.clone()), filter, after, Some(wake), config)
    }
}

/// For a runner that has caught up: waits until an append wakes it and `has_work` says a batch
/// would find something (a look is one statement, a batch a transaction of several), or until
/// `poll` has passed (then it steps regardless, so that what no wake-up announces, such as a
/// requested rebuild, is noticed). `false` when `shutdown` completes first.
pub(crate) async fn wait_for_work<S, F, Fut>(
    wake: &mut watch::Receiver<()>,
    poll: Duration,
    shutdown: &mut Pin<&mut S>,
    mut has_work: F,
) -> bool
where
    S: Future<Output = ()>,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let sleep = tokio::time::sleep(poll);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = shutdown.as_mut() => return false,
            _ = wake.changed() => {
                wake.borrow_and_update();
                // A failed look steps anyway: the batch reports the failure and backs off.
                if has_work().await.unwrap_or(true) {
                    return true;
                }
            }
            _ = &mut sleep => return true,
        }
    }
}
