//! Projections: read models fed from the global log, with a checkpoint.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::error::{BoxError, Error, Result};
use crate::event::{DomainEvent, Envelope, RecordedEvent};
use crate::store::{CheckpointStore, EventStore};
use crate::stream::{Position, StreamFilter};
use crate::telemetry::ProjectionMetrics;

/// A read model that follows the global log.
///
/// The runner hands it every event that passes [`filter`](Projection::filter), once, in
/// position order, and saves the checkpoint after each event it handled. If the process dies
/// between `apply` and the checkpoint, the event is handed over again: make `apply`
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
///     async fn apply(&self, event: &RecordedEvent) -> Result<(), BoxError> {
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
/// let runner = ProjectionRunner::new(store.clone(), store.clone());
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

    /// Applies one event to the read model (as [`InlineProjection::apply`] and
    /// [`Aggregate::apply`](crate::Aggregate::apply) fold one event into theirs).
    async fn apply(&self, event: &RecordedEvent) -> Result<(), BoxError>;
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

/// A projection written against one domain event type, with its state owned by the adaptor
/// [`Typed`]: user code folds typed events into plain fields, with no lock and no decoding.
///
/// Events of a type that [`Event`](TypedProjection::Event) does not know (added later by
/// another service) are skipped and logged once per type, so an unknown event never halts the
/// runner. A payload of a known type that fails to decode is an error, retried like any other.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), es_core::BoxError> {
/// use std::sync::Arc;
/// use es_core::memory::MemoryEventStore;
/// use es_core::projection::{Typed, TypedProjection};
/// use es_core::{BoxError, DomainEvent, Envelope, EventStore, ExpectedVersion, NewEvent, ProjectionRunner, StreamFilter, StreamId};
///
/// #[derive(Debug, serde::Serialize, serde::Deserialize)]
/// enum OrderEvent { Placed { total: u64 }, Cancelled }
/// impl DomainEvent for OrderEvent {}
///
/// #[derive(Default)]
/// struct Revenue { total: u64 }
///
/// impl TypedProjection for Revenue {
///     type Event = OrderEvent;
///     const NAME: &'static str = "revenue";
///     fn filter(&self) -> StreamFilter { StreamFilter::category("order") }
///     fn apply(&mut self, event: Envelope<OrderEvent>) -> Result<(), BoxError> {
///         if let OrderEvent::Placed { total } = event.event { self.total += total }
///         Ok(())
///     }
/// }
///
/// let store = MemoryEventStore::new();
/// let stream = StreamId::new("order-1")?;
/// store.append(&stream, ExpectedVersion::Any, vec![
///     NewEvent::raw("Placed", r#"{"total":5}"#),
///     NewEvent::raw("Refunded", "{}"), // a type this code does not know: skipped
/// ]).await?;
///
/// let revenue = Arc::new(Typed::new(Revenue::default()));
/// ProjectionRunner::new(store.clone(), store).catch_up(&*revenue).await?;
/// assert_eq!(revenue.read().total, 5);
/// # Ok(()) }
/// ```
pub trait TypedProjection: Send + Sync + 'static {
    /// The events it reads.
    type Event: DomainEvent;

    /// The checkpoint name; renaming it rebuilds the projection from the start.
    const NAME: &'static str;

    /// The version of this code: raise it when what `apply` makes of the events changes, and a
    /// versioned runner ([`MemoryReadModels`](crate::memory::MemoryReadModels)) rebuilds the
    /// state from the log beside the one that serves, then swaps them.
    const VERSION: u32 = 1;

    /// Which streams it reads.
    fn filter(&self) -> StreamFilter {
        StreamFilter::All
    }

    /// Folds one event into the state. An error leaves the event unhandled: the runner retries
    /// it (asynchronous projections) or the append fails (inline ones).
    fn apply(&mut self, event: Envelope<Self::Event>) -> Result<(), BoxError>;
}

/// Decodes stored events into one domain event type, skipping (and logging once per type) the
/// types it does not know. The decoding half of [`Typed`], for adaptors of other backends
/// (e.g. a PostgreSQL projection that writes rows).
#[derive(Debug, Default)]
pub struct TypedDecoder {
    unknown: Mutex<HashSet<String>>,
}

impl TypedDecoder {
    /// A decoder that has logged nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The event as `E`; `Ok(None)` when `E` does not know its type (logged at `warn` the first
    /// time this decoder meets the type, so a busy unknown type does not flood the log).
    pub fn decode<E: DomainEvent>(
        &self,
        projection: &str,
        event: &RecordedEvent,
    ) -> Result<Option<Envelope<E>>> {
        match event.to_envelope::<E>() {
            Ok(envelope) => Ok(Some(envelope)),
            Err(Error::UnknownEventType {
                event_type,
                schema_version,
            }) => {
                let first = self
                    .unknown
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(event_type.clone());
                if first {
                    tracing::warn!(projection, %event_type, schema_version, position = %event.position, "skipping events of a type this projection does not know");
                }
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }
}

/// The adaptor that runs a [`TypedProjection`] as a [`Projection`] (with a
/// [`ProjectionRunner`]) or as an [`InlineProjection`]: it decodes, skips unknown types, and
/// keeps the state behind a lock of its own. Read the state with [`read`](Typed::read).
pub struct Typed<P> {
    state: RwLock<P>,
    decoder: TypedDecoder,
}

impl<P: TypedProjection> fmt::Debug for Typed<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Typed").field("name", &P::NAME).finish()
    }
}

impl<P: TypedProjection> Typed<P> {
    /// Wraps `projection` (its initial state).
    pub fn new(projection: P) -> Self {
        Typed {
            state: RwLock::new(projection),
            decoder: TypedDecoder::new(),
        }
    }

    /// The state, for reading. Hold the guard briefly: `apply` waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, P> {
        // `apply` takes `&mut P` and returns before the guard drops; a panic inside it leaves
        // the state as far as it got, which a reader may still see.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The state, unwrapped.
    pub fn into_inner(self) -> P {
        self.state.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the state at once (a rebuilt copy taking over), returning the old one.
    pub fn replace(&self, state: P) -> P {
        let mut guard = self.state.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *guard, state)
    }

    fn apply_recorded(&self, event: &RecordedEvent) -> Result<(), BoxError> {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if !state.filter().matches(&event.stream_id) {
            return Ok(());
        }
        match self.decoder.decode::<P::Event>(P::NAME, event)? {
            Some(envelope) => state.apply(envelope),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl<P: TypedProjection> Projection for Typed<P> {
    fn name(&self) -> &str {
        P::NAME
    }

    fn filter(&self) -> StreamFilter {
        self.read().filter()
    }

    async fn apply(&self, event: &RecordedEvent) -> Result<(), BoxError> {
        self.apply_recorded(event)
    }
}

impl<P: TypedProjection> InlineProjection for Typed<P> {
    fn name(&self) -> &str {
        P::NAME
    }

    fn apply(&self, event: &RecordedEvent) -> Result<(), BoxError> {
        self.apply_recorded(event)
    }
}

/// Whether a generation of a read model serves reads or is being built beside the one that does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProjectionPhase {
    /// Readers see this generation.
    Active,
    /// Being rebuilt from the log beside the active generation; readers switch to it at once
    /// when it has caught up.
    Building,
}

/// One generation of a read model: its code version, checkpoint and lag.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ProjectionInfo {
    /// The projection's name.
    pub name: String,
    /// The version of the projection's code that builds this generation.
    pub version: u32,
    /// Counts up with every rebuild of the projection.
    pub generation: u64,
    /// Whether readers see it.
    pub phase: ProjectionPhase,
    /// The position of the last event it handled.
    pub position: Position,
    /// Events it has still to read (of the streams its filter reads).
    pub events_behind: u64,
    /// How long ago the oldest event it has still to read was recorded (zero when none).
    pub time_behind: Duration,
}

impl ProjectionInfo {
    /// A generation's status (for backends implementing [`ProjectionAdmin`]).
    pub fn new(
        name: impl Into<String>,
        version: u32,
        generation: u64,
        phase: ProjectionPhase,
        position: Position,
    ) -> Self {
        ProjectionInfo {
            name: name.into(),
            version,
            generation,
            phase,
            position,
            events_behind: 0,
            time_behind: Duration::ZERO,
        }
    }

    /// With its lag.
    pub fn with_lag(mut self, events_behind: u64, time_behind: Duration) -> Self {
        self.events_behind = events_behind;
        self.time_behind = time_behind;
        self
    }
}

/// What operators ask of a backend's versioned read models: where each stands, and a rebuild.
///
/// A rebuild builds a new generation from the start of the log beside the active one, which
/// keeps serving; readers switch to the new one at once when it has caught up, and the old one
/// is dropped. A projection whose code version changed rebuilds itself the same way when its
/// runner starts.
#[async_trait]
pub trait ProjectionAdmin: Send + Sync + fmt::Debug {
    /// Every generation of every versioned projection, by name, the active one first.
    async fn status(&self) -> Result<Vec<ProjectionInfo>>;

    /// Starts rebuilding projection `name` into a new generation; its runner does the work.
    /// Asking again while a rebuild runs changes nothing. An unknown name is
    /// [`Error::InvalidInput`].
    async fn rebuild(&self, name: &str) -> Result<()>;
}

/// Where a running projection is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProjectionStatus {
    /// The position of the last handled event.
    pub position: Position,
    /// The last error `apply` returned, cleared by the next success.
    pub last_error: Option<String>,
}

/// Feeds projections from a store's subscription and keeps their checkpoints.
#[derive(Clone)]
pub struct ProjectionRunner {
    store: Arc<dyn EventStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    backoff: Backoff,
    checkpoint_interval: Duration,
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
    stop: CancellationToken,
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

    /// Whether the projection's task has ended (it was stopped, or its service's token was
    /// cancelled, or the log ended).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the projection after the event in hand and waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

impl ProjectionRunner {
    /// A runner reading from `store` and saving checkpoints to `checkpoints` (often the same
    /// backend, passed twice: `ProjectionRunner::new(store.clone(), store.clone())`).
    pub fn new(
        store: impl EventStore + 'static,
        checkpoints: impl CheckpointStore + 'static,
    ) -> Self {
        ProjectionRunner {
            store: crate::shared::event_store(store),
            checkpoints: crate::shared::checkpoint_store(checkpoints),
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(5)),
            checkpoint_interval: Duration::ZERO,
        }
    }

    /// The same runner saving the checkpoint of a running projection at most once per
    /// `interval` (and when it stops), instead of after every event: under a steady stream of
    /// events that is one write per interval where it was one per event. A crash then applies
    /// again up to `interval` of events after a restart, so the projection must take an event
    /// twice calmly (as it must already: a crash between `apply` and the save does the same to
    /// one event). Zero, the default, saves after every event.
    pub fn with_checkpoint_interval(mut self, interval: Duration) -> Self {
        self.checkpoint_interval = interval;
        self
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
                    .apply(event)
                    .await
                    .map_err(|e| crate::Error::backend("projection", e))?;
                self.checkpoints
                    .save(projection.name(), event.position)
                    .await?;
                position = event.position;
            }
        }
    }

    /// Runs `projection` until `shutdown` completes (a [`CancellationToken`]'s
    /// `cancelled_owned()`, a signal, any future). A failing `apply` is retried with backoff
    /// (the projection halts on that event rather than skip it); a failing store read is
    /// retried by the subscription. [`spawn`](Self::spawn) runs it in the background with a
    /// handle that reports where it is.
    pub async fn run(
        &self,
        projection: Arc<dyn Projection>,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        let (status, _) = watch::channel(ProjectionStatus::default());
        self.run_reporting(projection, shutdown, &status).await;
    }

    /// [`run`](Self::run), reporting each step to `status`.
    async fn run_reporting(
        &self,
        projection: Arc<dyn Projection>,
        shutdown: impl Future<Output = ()> + Send,
        status: &watch::Sender<ProjectionStatus>,
    ) {
        tokio::pin!(shutdown);
        let name = projection.name().to_owned();
        let mut backoff = self.backoff.clone();
        let start = loop {
            match self.checkpoints.load(&name).await {
                Ok(position) => break position.unwrap_or_default(),
                Err(error) => {
                    tracing::warn!(projection = %name, %error, "cannot load the checkpoint; retrying");
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = backoff.sleep() => {}
                    }
                }
            }
        };
        status.send_modify(|s| s.position = start);
        let metrics = ProjectionMetrics::new(&name);
        let mut events = self.store.subscribe(projection.filter(), start);
        // Applied but not saved yet (with a checkpoint interval), and when it is due.
        let mut unsaved: Option<Position> = None;
        let mut save_at = tokio::time::Instant::now();
        loop {
            let next = tokio::select! {
                _ = &mut shutdown => {
                    if let Some(position) = unsaved {
                        // Best effort: a failure only means applying these again at restart.
                        if let Err(error) = self.checkpoints.save(&name, position).await {
                            tracing::warn!(projection = %name, %error, "cannot save the checkpoint while stopping");
                        }
                    }
                    return;
                }
                _ = tokio::time::sleep_until(save_at), if unsaved.is_some() => {
                    if let Some(position) = unsaved.take() {
                        if !self.save_checkpoint(&name, position, &mut backoff, &mut shutdown).await {
                            return;
                        }
                    }
                    continue;
                }
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
            backoff.reset();
            let took = loop {
                let started = std::time::Instant::now();
                match projection.apply(&event).await {
                    Ok(()) => break started.elapsed(),
                    Err(error) => {
                        tracing::error!(projection = %name, position = %event.position, event_type = %event.event_type, %error, "projection failed; retrying");
                        status.send_modify(|s| s.last_error = Some(error.to_string()));
                        tokio::select! {
                            _ = &mut shutdown => return,
                            _ = backoff.sleep() => {}
                        }
                    }
                }
            };
            backoff.reset();
            if self.checkpoint_interval.is_zero() {
                if !self
                    .save_checkpoint(&name, event.position, &mut backoff, &mut shutdown)
                    .await
                {
                    return;
                }
            } else {
                if unsaved.is_none() {
                    save_at = tokio::time::Instant::now() + self.checkpoint_interval;
                }
                unsaved = Some(event.position);
            }
            metrics.handled(took, event.recorded_at);
            status.send_modify(|s| {
                s.position = event.position;
                s.last_error = None;
            });
        }
    }

    /// Saves `position` as `name`'s checkpoint, retrying with backoff; `false` when `shutdown`
    /// came first.
    async fn save_checkpoint(
        &self,
        name: &str,
        position: Position,
        backoff: &mut Backoff,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> bool {
        while let Err(error) = self.checkpoints.save(name, position).await {
            tracing::warn!(projection = %name, %error, "cannot save the checkpoint; retrying");
            tokio::select! {
                _ = &mut *shutdown => return false,
                _ = backoff.sleep() => {}
            }
        }
        true
    }

    /// Runs `projection` on a background task; the handle reports its status and stops it.
    pub fn spawn(&self, projection: Arc<dyn Projection>) -> ProjectionHandle {
        self.spawn_until(projection, &CancellationToken::new())
    }

    /// [`spawn`](Self::spawn), stopping also when `shutdown` (the service's token) is
    /// cancelled; [`ProjectionHandle::stop`] stops only this projection (a child token).
    pub fn spawn_until(
        &self,
        projection: Arc<dyn Projection>,
        shutdown: &CancellationToken,
    ) -> ProjectionHandle {
        let (status_tx, status) = watch::channel(ProjectionStatus::default());
        let runner = self.clone();
        let stop = shutdown.child_token();
        let stopped = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            runner.run_reporting(projection, stopped, &status_tx).await;
        });
        ProjectionHandle { status, stop, task }
    }
}
