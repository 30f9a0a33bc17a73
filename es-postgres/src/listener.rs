//! Live delivery: the `NOTIFY` sent after appends commit, and the background `LISTEN` task that
//! turns notifications into subscription wake-ups.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use es_core::{Backoff, StreamFilter};
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::{watch, Notify};

/// Separates the categories in a notification's payload: a control character, which no stream
/// id (and so no category) contains.
const SEPARATOR: char = '\n';

/// The longest payload that names categories; a longer list goes out empty, which wakes every
/// subscription (PostgreSQL refuses payloads of 8000 bytes and more).
const MAX_PAYLOAD: usize = 4000;

/// Subscription wake-ups, by category: a subscription to one category wakes only for appends
/// to it (or for a wake-up of everything), so a busy log does not have every subscription of
/// the process read after every append.
#[derive(Debug, Default)]
pub(crate) struct Wakes {
    /// Changes on every append.
    all: watch::Sender<()>,
    /// Changes on appends to the category; created for the first subscription to it.
    categories: RwLock<HashMap<String, watch::Sender<()>>>,
}

impl Wakes {
    /// A receiver that changes when an append that `filter` lets through is announced.
    pub(crate) fn receiver(&self, filter: &StreamFilter) -> watch::Receiver<()> {
        match filter {
            StreamFilter::Category(category) => {
                let Ok(mut categories) = self.categories.write() else {
                    return self.all.subscribe();
                };
                if let Some(sender) = categories.get(category) {
                    return sender.subscribe();
                }
                // Forget the categories nobody waits on any more before adding one.
                categories.retain(|_, sender| sender.receiver_count() > 0);
                let (sender, receiver) = watch::channel(());
                categories.insert(category.clone(), sender);
                receiver
            }
            _ => self.all.subscribe(),
        }
    }

    /// Wakes the subscriptions that see appends to `categories`.
    pub(crate) fn wake<'a>(&self, categories: impl IntoIterator<Item = &'a str>) {
        self.all.send_replace(());
        let Ok(senders) = self.categories.read() else {
            return;
        };
        for category in categories {
            if let Some(sender) = senders.get(category) {
                sender.send_replace(());
            }
        }
    }

    /// Wakes every subscription: after announcements may have been lost, or when one did not
    /// say which categories it is about.
    pub(crate) fn wake_all(&self) {
        self.all.send_replace(());
        if let Ok(senders) = self.categories.read() {
            for sender in senders.values() {
                sender.send_replace(());
            }
        }
    }

    /// Wakes the subscriptions a notification's payload names (all, for an empty payload).
    fn wake_for_payload(&self, payload: &str) {
        if payload.is_empty() {
            self.wake_all();
        } else {
            self.wake(payload.split(SEPARATOR));
        }
    }
}

/// A running listener; dropping it stops the task.
#[derive(Debug)]
pub(crate) struct Listener {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    /// Listens on `channel` with a connection of its own, waking the subscriptions each
    /// notification names.
    pub(crate) fn spawn(
        runtime: &tokio::runtime::Handle,
        pool: PgPool,
        channel: String,
        wake: Arc<Wakes>,
    ) -> Self {
        Listener {
            task: runtime.spawn(listen(pool, channel, wake)),
        }
    }
}

async fn listen(pool: PgPool, channel: String, wake: Arc<Wakes>) {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        match connect(&pool, &channel).await {
            Ok(mut listener) => {
                backoff.reset();
                // Notifications sent while nobody listened are lost: let subscribers read.
                wake.wake_all();
                loop {
                    match listener.try_recv().await {
                        Ok(Some(notification)) => {
                            wake.wake_for_payload(notification.payload());
                        }
                        // The connection dropped; the next call reconnects. Whatever was
                        // announced meanwhile is lost, so wake everyone to read.
                        Ok(None) => {
                            wake.wake_all();
                        }
                        Err(error) => {
                            tracing::warn!(%error, %channel, "listening for appends failed; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(error) => {
                tracing::debug!(%error, %channel, "cannot listen for appends yet; subscriptions poll meanwhile");
            }
        }
        wake.wake_all();
        backoff.sleep().await;
    }
}

async fn connect(pool: &PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    Ok(listener)
}

/// Sends one `NOTIFY` on the schema's channel after appends commit, coalescing bursts: while
/// one is on its way, and for [`MIN_GAP`] after, any number of further commits ask for
/// just one more, naming every category they appended to. Subscribers in the appending process
/// are woken at once, without it.
///
/// The notification is not sent inside the append's transaction on purpose: a transaction that
/// notifies holds a database-wide lock from its pre-commit to its end, fsync included, so
/// concurrent appends would commit one by one.
#[derive(Debug)]
pub(crate) struct Announcer {
    pending: Arc<Pending>,
    task: tokio::task::JoinHandle<()>,
}

/// The categories appended to since the last notification, and the signal that there are some.
#[derive(Debug, Default)]
struct Pending {
    categories: Mutex<HashSet<String>>,
    signal: Notify,
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Announcer {
    pub(crate) fn spawn(runtime: &tokio::runtime::Handle, pool: PgPool, channel: String) -> Self {
        let pending = Arc::new(Pending::default());
        let task = runtime.spawn(announce(pool, channel, pending.clone()));
        Announcer { pending, task }
    }

    /// Asks for a notification about appends to `categories` (cheap; never waits).
    pub(crate) fn announce<'a>(&self, categories: impl IntoIterator<Item = &'a str>) {
        if let Ok(mut pending) = self.pending.categories.lock() {
            for category in categories {
                if !pending.contains(category) {
                    pending.insert(category.to_owned());
                }
            }
        }
        self.pending.signal.notify_one();
    }
}

/// The shortest time between two notifications: under load, one announces many commits, and
/// the statements it saves are the appends' to use. An append after a quiet spell is announced
/// at once; under steady load subscribers in other processes hear at most this much later.
/// (At 10 ms, a lone writer ran about 12 % slower than with no notifications at all; at 50 ms
/// the difference is within the benchmark's noise.)
const MIN_GAP: Duration = Duration::from_millis(50);

async fn announce(pool: PgPool, channel: String, pending: Arc<Pending>) {
    loop {
        pending.signal.notified().await;
        let categories = match pending.categories.lock() {
            Ok(mut categories) => std::mem::take(&mut *categories),
            Err(_) => HashSet::new(),
        };
        let payload = payload(&categories);
        // A wake-up is worth no fsync: if it is lost in a crash, subscribers poll anyway.
        let sent =
            sqlx::query("SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, $2)")
                .bind(&channel)
                .bind(&payload)
                .execute(&pool)
                .await;
        if let Err(error) = sent {
            tracing::debug!(%error, %channel, "cannot announce appends; subscribers will poll");
        }
        tokio::time::sleep(MIN_GAP).await;
    }
}

/// The payload naming `categories`: empty (wake everyone) when there are none or too many.
fn payload(categories: &HashSet<String>) -> String {
    let mut payload = String::new();
    for category in categories {
        if !payload.is_empty() {
            payload.push(SEPARATOR);
        }
        payload.push_str(category);
        if payload.len() > MAX_PAYLOAD {
            return String::new();
        }
    }
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_category_subscription_wakes_for_its_category_only() {
        let wakes = Wakes::default();
        let mut orders = wakes.receiver(&StreamFilter::category("order"));
        let payments = wakes.receiver(&StreamFilter::category("payment"));
        let mut everything = wakes.receiver(&StreamFilter::All);
        wakes.wake(["order"]);
        assert!(orders.has_changed().unwrap());
        assert!(!payments.has_changed().unwrap());
        assert!(everything.has_changed().unwrap());
        orders.borrow_and_update();
        everything.borrow_and_update();
        wakes.wake_all();
        assert!(orders.has_changed().unwrap());
        assert!(payments.has_changed().unwrap());
        assert!(everything.has_changed().unwrap());
    }

    #[test]
    fn a_payload_names_its_categories_and_an_empty_one_wakes_everyone() {
        let wakes = Wakes::default();
        let orders = wakes.receiver(&StreamFilter::category("order"));
        let payments = wakes.receiver(&StreamFilter::category("payment"));
        let stock = wakes.receiver(&StreamFilter::category("stock"));
        let categories: HashSet<String> = ["order".to_owned(), "payment".to_owned()].into();
        wakes.wake_for_payload(&payload(&categories));
        assert!(orders.has_changed().unwrap());
        assert!(payments.has_changed().unwrap());
        assert!(!stock.has_changed().unwrap());
        wakes.wake_for_payload("");
        assert!(stock.has_changed().unwrap());
    }

    #[test]
    fn too_many_categories_make_an_empty_payload() {
        let categories: HashSet<String> = (0..1000).map(|i| format!("category{i}")).collect();
        assert_eq!(payload(&categories), "");
        assert_eq!(payload(&HashSet::new()), "");
    }

    #[test]
    fn categories_nobody_waits_on_are_forgotten() {
        let wakes = Wakes::default();
        drop(wakes.receiver(&StreamFilter::category("gone")));
        let _kept = wakes.receiver(&StreamFilter::category("kept"));
        let categories = wakes.categories.read().unwrap();
        assert!(!categories.contains_key("gone"));
        assert!(categories.contains_key("kept"));
    }
}
