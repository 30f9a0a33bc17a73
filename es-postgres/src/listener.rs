//! The background `LISTEN` task that turns notifications into subscription wake-ups.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::watch;

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
