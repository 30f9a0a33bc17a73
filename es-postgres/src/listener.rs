//! Live delivery: the `NOTIFY` sent after appends commit, and the background `LISTEN` task that
//! turns notifications into subscription wake-ups.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::{watch, Notify};

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
    /// Listens on `channel` with a connection of its own, waking `wake` on every notification.
    pub(crate) fn spawn(
        runtime: &tokio::runtime::Handle,
        pool: PgPool,
        channel: String,
        wake: Arc<watch::Sender<()>>,
    ) -> Self {
        Listener {
            task: runtime.spawn(listen(pool, channel, wake)),
        }
    }
}

async fn listen(pool: PgPool, channel: String, wake: Arc<watch::Sender<()>>) {
    const MIN_BACKOFF: Duration = Duration::from_millis(50);
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    let mut backoff = MIN_BACKOFF;
    loop {
        match connect(&pool, &channel).await {
            Ok(mut listener) => {
                backoff = MIN_BACKOFF;
                // Notifications sent while nobody listened are lost: let subscribers read.
                wake.send_replace(());
                loop {
                    match listener.try_recv().await {
                        Ok(Some(_)) => {
                            wake.send_replace(());
                        }
                        // The connection dropped; the next call reconnects. Whatever was
                        // announced meanwhile is lost, so wake everyone to read.
                        Ok(None) => {
                            wake.send_replace(());
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
        wake.send_replace(());
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn connect(pool: &PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    Ok(listener)
}

/// Sends one `NOTIFY` on the schema's channel after appends commit, coalescing bursts: while
/// one is on its way, and for [`MIN_GAP`] after, any number of further commits ask for
/// just one more. Subscribers in the appending process are woken at once, without it.
///
/// The notification is not sent inside the append's transaction on purpose: a transaction that
/// notifies holds a database-wide lock from its pre-commit to its end, fsync included, so
/// concurrent appends would commit one by one.
#[derive(Debug)]
pub(crate) struct Announcer {
    pending: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Announcer {
    pub(crate) fn spawn(runtime: &tokio::runtime::Handle, pool: PgPool, channel: String) -> Self {
        let pending = Arc::new(Notify::new());
        let task = runtime.spawn(announce(pool, channel, pending.clone()));
        Announcer { pending, task }
    }

    /// Asks for a notification (cheap; never waits).
    pub(crate) fn announce(&self) {
        self.pending.notify_one();
    }
}

/// The shortest time between two notifications: under load, one announces many commits, and
/// the statements it saves are the appends' to use. An append after a quiet spell is announced
/// at once; under steady load subscribers in other processes hear at most this much later.
/// (At 10 ms, a lone writer ran about 12 % slower than with no notifications at all; at 50 ms
/// the difference is within the benchmark's noise.)
const MIN_GAP: Duration = Duration::from_millis(50);

async fn announce(pool: PgPool, channel: String, pending: Arc<Notify>) {
    loop {
        pending.notified().await;
        // A wake-up is worth no fsync: if it is lost in a crash, subscribers poll anyway.
        let sent =
            sqlx::query("SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, '')")
                .bind(&channel)
                .execute(&pool)
                .await;
        if let Err(error) = sent {
            tracing::debug!(%error, %channel, "cannot announce appends; subscribers will poll");
        }
        tokio::time::sleep(MIN_GAP).await;
    }
}
