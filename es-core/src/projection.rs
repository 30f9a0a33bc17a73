//! Projections: read models fed from the global log, with a checkpoint.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::error::{BoxError, Result};
use crate::event::RecordedEvent;
use crate::store::{CheckpointStore, EventStore};
use crate::stream::{Position, StreamFilter};
use crate::telemetry::ProjectionMetrics;

/// A read model that follows the global log.
///
/// The runner hands it every event that passes [`filter`](Projection::filter), once, in
/// position order, and saves the checkpoint after each event it handled. If the process dies
/// between `handle` and the checkpoint, the event is handed over again: make `handle`
/// idempotent, or keep the read model and the checkpoint in one transaction (`es-postgres`'s
/// transactional projections do).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), es_core::BoxError> {
/// use std::collections::HashMap;
/// use std::sync::{Arc, Mutex};
/// use es_core::memory::MemoryEventStore;
/// use es_core::{BoxError, EventStore, ExpectedVersion, NewEvent, Projection, ProjectionRunner, RecordedEvent, StreamFilter, StreamId};
///
/// /// How many events each order stream has.
/// #[derive(Default)]
/// struct OrderSizes(Mutex<HashMap<String, u64>>);
///
/// #[es_core::async_trait]
/// impl Projection for OrderSizes {
///     fn name(&self) -> &str { "order-sizes" }
///     fn filter(&self) -> StreamFilter { StreamFilter::category("order") }
///     async fn handle(&self, event: &RecordedEvent) -> Result<(), BoxError> {
///         let mut sizes = self.0.lock().map_err(|_| "poisoned")?;
///         sizes.insert(event.stream_id.entity_id().to_owned(), event.stream_version);
///         Ok(())
///     }
/// }
///
/// let store = MemoryEventStore::new();
/// let stream = StreamId::new("order-7")?;
/// store.append(&stream, ExpectedVersion::Any, vec![NewEvent::raw("Placed", "{}"), NewEvent::raw("Paid", "{}")]).await?;
///
/// let sizes = Arc::new(OrderSizes::default());
/// let runner = ProjectionRunner::new(Arc::new(store.clone()), Arc::new(store.clone()));
/// runner.catch_up(&*sizes).await?; // or `runner.spawn(sizes.clone())` to follow live
/// assert_eq!(sizes.0.lock().unwrap()["7"], 2);
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Projection: Send + Sync {
    /// The checkpoint name; renaming it rebuilds the projection from the start.
    fn name(&self) -> &str;

    /// Which streams it reads.
    fn filter(&self) -> StreamFilter {
        StreamFilter::All
    }

    /// Applies one event to the read model.
    async fn handle(&self, event: &RecordedEvent) -> Result<(), BoxError>;
}

/// A projection applied inside the append's own unit of work, so a read right after the append
/// sees it (read-your-writes). A failing inline projection fails the append.
///
/// Registered on a store, e.g. [`MemoryEventStore::with_inline_projection`](crate::memory::MemoryEventStore::with_inline_projection).
pub trait InlineProjection: Send + Sync {
    /// A name for logs and errors.
    fn name(&self) -> &str;

    /// Applies one just-appended event. Runs while the store holds its commit, so keep it quick.
    fn apply(&self, event: &RecordedEvent) -> Result<(), BoxError>;
}

/// Where a running projection is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProjectionStatus {
    /// The position of the last handled event.
    pub position: Position,
    /// The last error `handle` returned, cleared by the next success.
    pub last_error: Option<String>,
}

/// Feeds projections from a store's subscription and keeps their checkpoints.
#[derive(Clone)]
pub struct ProjectionRunner {
    store: Arc<dyn EventStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    min_backoff: Duration,
    max_backoff: Duration,
}

impl fmt::Debug for ProjectionRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field("store", &self.store)
            .field("checkpoints", &self.checkpoints)
            .finish()
    }
}

/// A projection running in the background; dropping the handle does not stop it.
#[derive(Debug)]
pub struct ProjectionHandle {
    status: watch::Receiver<ProjectionStatus>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ProjectionHandle {
    /// The current status.
    pub fn status(&self) -> ProjectionStatus {
        self.status.borrow().clone()
    }

    /// Waits until the projection has handled everything up to `position`.
    pub async fn wait_for(&mut self, position: Position) {
        let _ = self.status.wait_for(|s| s.position >= position).await;
    }

    /// Stops the projection after the event in hand and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

impl ProjectionRunner {
    /// A runner reading from `store` and saving checkpoints to `checkpoints`.
    pub fn new(store: Arc<dyn EventStore>, checkpoints: Arc<dyn CheckpointStore>) -> Self {
        ProjectionRunner {
            store,
            checkpoints,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
        }
    }

    /// Handles every event stored now (up to the head) and returns the new checkpoint.
    pub async fn catch_up(&self, projection: &dyn Projection) -> Result<Position> {
        let mut position = self
            .checkpoints
            .load(projection.name())
            .await?
            .unwrap_or_default();
        let filter = projection.filter();
        loop {
            let page = self.store.read_all(&filter, position, 1000).await?;
            if page.is_empty() {
                return Ok(position);
            }
            for event in &page {
                projection
                    .handle(event)
                    .await
                    .map_err(|e| crate::Error::backend("projection", e))?;
                self.checkpoints
                    .save(projection.name(), event.position)
                    .await?;
                position = event.position;
            }
        }
    }

    /// Runs `projection` until `shutdown` completes. A failing `handle` is retried with
    /// backoff (the projection halts on that event rather than skip it); a failing store read
    /// is retried by the subscription.
    pub async fn run(
        &self,
        projection: Arc<dyn Projection>,
        shutdown: impl Future<Output = ()> + Send,
        status: Option<watch::Sender<ProjectionStatus>>,
    ) {
        tokio::pin!(shutdown);
        let name = projection.name().to_owned();
        let start = loop {
            match self.checkpoints.load(&name).await {
                Ok(position) => break position.unwrap_or_default(),
                Err(error) => {
                    tracing::warn!(projection = %name, %error, "cannot load the checkpoint; retrying");
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(self.max_backoff) => {}
                    }
                }
            }
        };
        if let Some(status) = &status {
            status.send_modify(|s| s.position = start);
        }
        let metrics = ProjectionMetrics::new(&name);
        let mut events = self.store.subscribe(projection.filter(), start);
        loop {
            let next = tokio::select! {
                _ = &mut shutdown => return,
                next = events.next() => next,
            };
            let event = match next {
                Some(Ok(event)) => event,
                Some(Err(error)) => {
                    tracing::warn!(projection = %name, %error, "reading the log failed; retrying");
                    continue;
                }
                None => return,
            };
            let mut backoff = self.min_backoff;
            let took = loop {
                let started = std::time::Instant::now();
                match projection.handle(&event).await {
                    Ok(()) => break started.elapsed(),
                    Err(error) => {
                        tracing::error!(projection = %name, position = %event.position, event_type = %event.event_type, %error, "projection failed; retrying");
                        if let Some(status) = &status {
                            status.send_modify(|s| s.last_error = Some(error.to_string()));
                        }
                        tokio::select! {
                            _ = &mut shutdown => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(self.max_backoff);
                    }
                }
            };
            let mut backoff = self.min_backoff;
            while let Err(error) = self.checkpoints.save(&name, event.position).await {
                tracing::warn!(projection = %name, %error, "cannot save the checkpoint; retrying");
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(self.max_backoff);
            }
            metrics.handled(took, event.recorded_at);
            if let Some(status) = &status {
                status.send_modify(|s| {
                    s.position = event.position;
                    s.last_error = None;
                });
            }
        }
    }

    /// Runs `projection` on a background task.
    pub fn spawn(&self, projection: Arc<dyn Projection>) -> ProjectionHandle {
        let (status_tx, status) = watch::channel(ProjectionStatus::default());
        let (stop, mut stop_rx) = watch::channel(false);
        let runner = self.clone();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            };
            runner.run(projection, shutdown, Some(status_tx)).await;
        });
        ProjectionHandle { status, stop, task }
    }
}
