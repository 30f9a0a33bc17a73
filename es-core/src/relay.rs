//! The outbox relay: the event log is the outbox.
//!
//! Nothing publishes straight after an append. The [`Relay`] tails the store's gap-free global
//! log from its checkpoint, publishes each batch to the bus, and moves the checkpoint only after
//! the bus confirmed the batch. Killed at any point, it loses nothing: it starts again from the
//! checkpoint, and at worst publishes the last batch twice — consumers drop the duplicates with
//! their inbox.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};

use crate::bus::EventBus;
use crate::error::Result;
use crate::store::{CheckpointStore, EventStore};
use crate::stream::{Position, StreamFilter};

/// Publishes committed events from an [`EventStore`] to an [`EventBus`], at least once.
#[derive(Clone)]
pub struct Relay {
    name: String,
    store: Arc<dyn EventStore>,
    bus: Arc<dyn EventBus>,
    checkpoints: Arc<dyn CheckpointStore>,
    filter: StreamFilter,
    batch_size: usize,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("name", &self.name)
            .field("filter", &self.filter)
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

impl Relay {
    /// A relay whose checkpoint is saved under `name`, relaying every stream.
    pub fn new(
        name: impl Into<String>,
        store: Arc<dyn EventStore>,
        bus: Arc<dyn EventBus>,
        checkpoints: Arc<dyn CheckpointStore>,
    ) -> Self {
        Relay {
            name: name.into(),
            store,
            bus,
            checkpoints,
            filter: StreamFilter::All,
            batch_size: 500,
        }
    }

    /// Relays only the streams `filter` lets through (e.g. one service's own categories).
    pub fn with_filter(mut self, filter: StreamFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Publishes at most `batch_size` events per confirmed batch.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// The checkpoint's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The saved checkpoint.
    pub async fn checkpoint(&self) -> Result<Position> {
        Ok(self.checkpoints.load(&self.name).await?.unwrap_or_default())
    }

    /// Relays everything readable now, batch by batch; returns how many events it published.
    pub async fn relay_available(&self) -> Result<usize> {
        let mut position = self.checkpoint().await?;
        let mut published = 0;
        loop {
            let batch = self
                .store
                .read_all(&self.filter, position, self.batch_size)
                .await?;
            let Some(last) = batch.last() else {
                return Ok(published);
            };
            let last = last.position;
            self.bus.publish(&batch).await?;
            self.checkpoints.save(&self.name, last).await?;
            published += batch.len();
            position = last;
        }
    }

    /// Relays until `shutdown` completes: follows the log live, publishes what is ready as one
    /// batch, retries a failed publish or checkpoint with backoff, never skips an event.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        let min_backoff = Duration::from_millis(50);
        let max_backoff = Duration::from_secs(5);
        let mut backoff = min_backoff;
        'restart: loop {
            let start = match self.checkpoint().await {
                Ok(position) => position,
                Err(error) => {
                    tracing::warn!(relay = %self.name, %error, "cannot load the relay checkpoint; retrying");
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(max_backoff);
                    continue;
                }
            };
            backoff = min_backoff;
            let mut events = self.store.subscribe(self.filter.clone(), start);
            loop {
                let first = tokio::select! {
                    _ = &mut shutdown => return,
                    next = events.next() => next,
                };
                let first = match first {
                    Some(Ok(event)) => event,
                    Some(Err(error)) => {
                        tracing::warn!(relay = %self.name, %error, "reading the log failed; retrying");
                        continue;
                    }
                    None => return,
                };
                let mut batch = vec![first];
                // Take whatever else is ready, without waiting, up to the batch size.
                while batch.len() < self.batch_size {
                    match events.next().now_or_never() {
                        Some(Some(Ok(event))) => batch.push(event),
                        _ => break,
                    }
                }
                let last = batch.last().map(|e| e.position).unwrap_or_default();
                let mut backoff = min_backoff;
                while let Err(error) = self.bus.publish(&batch).await {
                    tracing::warn!(relay = %self.name, %error, events = batch.len(), "publishing failed; retrying");
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(max_backoff);
                }
                if let Err(error) = self.checkpoints.save(&self.name, last).await {
                    // The batch went out; restarting from the saved checkpoint republishes it,
                    // which the consumers' inboxes absorb.
                    tracing::warn!(relay = %self.name, %error, "cannot save the relay checkpoint; restarting from the last one");
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(min_backoff) => {}
                    }
                    continue 'restart;
                }
            }
        }
    }
}
