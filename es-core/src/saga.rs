//! Sagas (process managers): react to events with commands, keep state per instance, and set
//! deadlines that come back later as messages of their own.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Serialize};
use uuid::Uuid;

use crate::bus::{HandlerError, MessageHandler};
use crate::error::{BoxError, Error, Result};
use crate::event::{DomainEvent, Envelope, Metadata, RecordedEvent};

/// A process manager: a pure reaction to events and deadlines.
///
/// The runner keeps one state per instance (see [`instance_id`](Saga::instance_id)), hands it
/// the events it listens to, dispatches the commands it decides, and stores the deadlines it
/// sets. Like an aggregate, a saga does no I/O: its commands are carried out by a
/// [`CommandDispatcher`].
///
/// Commands are dispatched *before* the saga's new state is saved, so after a crash a command
/// may be dispatched again: make command handling idempotent (a repository command with an
/// inbox entry is).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), es_core::BoxError> {
/// use std::sync::{Arc, Mutex};
/// use chrono::{Duration, Utc};
/// use es_core::memory::MemoryEventStore;
/// use es_core::{BoxError, CommandDispatcher, DomainEvent, Envelope, EventStore, ExpectedVersion,
///     Metadata, NewEvent, Saga, SagaDecision, SagaRunner, StreamId};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// enum Flow { OrderPlaced { order: String }, PaymentProcessed { order: String } }
/// impl DomainEvent for Flow {}
///
/// #[derive(Debug, PartialEq)]
/// enum Command { Confirm(String), Cancel(String) }
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Checkout;
///
/// impl Saga for Checkout {
///     const NAME: &'static str = "checkout";
///     type Event = Flow;
///     type Command = Command;
///     type Deadline = String; // the order to cancel
///     type Config = Duration; // the timeout
///
///     fn instance_id(event: &Envelope<Flow>) -> Option<String> {
///         match &event.event { Flow::OrderPlaced { order } | Flow::PaymentProcessed { order } => Some(order.clone()) }
///     }
///     fn handle(&mut self, timeout: &Duration, event: &Envelope<Flow>) -> SagaDecision<Command, String> {
///         match &event.event {
///             Flow::OrderPlaced { order } =>
///                 SagaDecision::none().schedule("timeout", event.recorded_at + *timeout, order.clone()),
///             Flow::PaymentProcessed { order } =>
///                 SagaDecision::none().send(Command::Confirm(order.clone())).cancel("timeout").complete(),
///         }
///     }
///     fn on_deadline(&mut self, _: &Duration, order: String) -> SagaDecision<Command, String> {
///         SagaDecision::none().send(Command::Cancel(order)).complete()
///     }
/// }
///
/// /// Where the commands go: in a real system, a repository.
/// #[derive(Default)]
/// struct Sent(Mutex<Vec<Command>>);
/// #[es_core::async_trait]
/// impl CommandDispatcher<Command> for Sent {
///     async fn dispatch(&self, command: Command, _: Metadata) -> Result<(), BoxError> {
///         self.0.lock().unwrap().push(command);
///         Ok(())
///     }
/// }
///
/// let store = MemoryEventStore::new(); // keeps saga state and deadlines too
/// let sent = Arc::new(Sent::default());
/// let runner = SagaRunner::<Checkout>::new(Arc::new(store.clone()), sent.clone(), Duration::zero());
///
/// let stream = StreamId::new("order-1")?;
/// let placed = NewEvent::from_domain(&Flow::OrderPlaced { order: "1".into() }, Metadata::new_correlation())?;
/// store.append(&stream, ExpectedVersion::NoStream, vec![placed]).await?;
/// for event in store.read_stream(&stream, 1, 10).await? {
///     runner.handle_event(&event).await?; // usually fed by a bus consumer or a subscription
/// }
/// // The zero timeout is due at once: the order is cancelled, exactly once.
/// assert_eq!(runner.fire_due(Utc::now()).await?, 1);
/// assert_eq!(runner.fire_due(Utc::now()).await?, 0);
/// assert_eq!(*sent.0.lock().unwrap(), vec![Command::Cancel("1".into())]);
/// # Ok(()) }
/// ```
pub trait Saga: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The saga's name: its state and inbox are kept under it. Renaming it forgets them.
    const NAME: &'static str;

    /// The events it reacts to: an enum whose variants are named like the stored event types
    /// (from any aggregates). Events of other types are ignored.
    type Event: DomainEvent;

    /// The commands it sends.
    type Command: Send + Sync;

    /// The deadlines it sets; they come back through [`on_deadline`](Saga::on_deadline).
    type Deadline: Serialize + DeserializeOwned + Send + Sync;

    /// Settings the saga reads (timeouts, limits); `()` when none.
    type Config: Send + Sync + 'static;

    /// Which instance an event belongs to, `None` to ignore the event. The default is the
    /// event's correlation id.
    fn instance_id(event: &Envelope<Self::Event>) -> Option<String> {
        event.metadata.correlation_id.map(|id| id.to_string())
    }

    /// Reacts to an event.
    fn handle(
        &mut self,
        config: &Self::Config,
        event: &Envelope<Self::Event>,
    ) -> SagaDecision<Self::Command, Self::Deadline>;

    /// Reacts to a deadline that came due.
    fn on_deadline(
        &mut self,
        config: &Self::Config,
        deadline: Self::Deadline,
    ) -> SagaDecision<Self::Command, Self::Deadline>;
}

/// What a saga decided: commands to send, deadlines to set or cancel, whether it is done.
#[derive(Debug)]
pub struct SagaDecision<C, D> {
    /// Commands to dispatch, in order.
    pub commands: Vec<C>,
    /// Deadlines to set: `(key, due at, deadline)`. Setting a key again replaces it.
    pub schedule: Vec<(String, DateTime<Utc>, D)>,
    /// Keys of deadlines to cancel.
    pub cancel: Vec<String>,
    /// The instance is finished: later events and deadlines are ignored.
    pub complete: bool,
}

impl<C, D> Default for SagaDecision<C, D> {
    fn default() -> Self {
        SagaDecision {
            commands: Vec::new(),
            schedule: Vec::new(),
            cancel: Vec::new(),
            complete: false,
        }
    }
}

impl<C, D> SagaDecision<C, D> {
    /// Nothing to do.
    pub fn none() -> Self {
        Self::default()
    }

    /// Sends a command.
    pub fn send(mut self, command: C) -> Self {
        self.commands.push(command);
        self
    }

    /// Sets deadline `key` to come due at `at`.
    pub fn schedule(mut self, key: impl Into<String>, at: DateTime<Utc>, deadline: D) -> Self {
        self.schedule.push((key.into(), at, deadline));
        self
    }

    /// Cancels deadline `key`.
    pub fn cancel(mut self, key: impl Into<String>) -> Self {
        self.cancel.push(key.into());
        self
    }

    /// Marks the instance finished.
    pub fn complete(mut self) -> Self {
        self.complete = true;
        self
    }
}

/// Carries out a saga's commands.
#[async_trait]
pub trait CommandDispatcher<C>: Send + Sync {
    /// Carries out `command`, with `metadata` for the events it causes.
    async fn dispatch(&self, command: C, metadata: Metadata) -> Result<(), BoxError>;
}

/// A saga instance's stored state.
#[derive(Clone, Debug, PartialEq)]
pub struct SagaState {
    /// The serialized saga (JSON).
    pub data: Bytes,
    /// Bumped by each save; saves expect it.
    pub version: u64,
    /// The instance finished.
    pub completed: bool,
}

/// A stored deadline.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadlineRecord {
    /// Unique id of this deadline.
    pub id: Uuid,
    /// The saga's name.
    pub saga: String,
    /// The instance that set it.
    pub instance: String,
    /// The key the saga set it under (unique per instance).
    pub key: String,
    /// When it comes due.
    pub due_at: DateTime<Utc>,
    /// The serialized deadline (JSON).
    pub payload: Bytes,
    /// The correlation metadata of the event that set it.
    pub metadata: Metadata,
}

/// One atomic change of a saga instance: its new state, its deadlines, and what it handled.
#[derive(Clone, Debug, PartialEq)]
pub struct SagaChange {
    /// The saga's name.
    pub saga: String,
    /// The instance.
    pub instance: String,
    /// The version the change was decided on (0: a new instance).
    pub expected_version: u64,
    /// The new state.
    pub state: Bytes,
    /// The instance is finished.
    pub completed: bool,
    /// Deadlines to set (replacing those with the same key).
    pub schedule: Vec<DeadlineRecord>,
    /// Keys of deadlines to remove.
    pub cancel: Vec<String>,
    /// The event this change handles; if the saga already handled it, nothing is written.
    pub handled_event: Option<Uuid>,
    /// The deadline this change handles; if it is gone (fired already), nothing is written.
    pub fired_deadline: Option<Uuid>,
}

/// What a [`SagaStore::save`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SagaSaved {
    /// The change is stored.
    Saved,
    /// The event was already handled or the deadline already fired: nothing was written.
    AlreadyHandled,
}

/// Stores saga state and deadlines.
#[async_trait]
pub trait SagaStore: Send + Sync + fmt::Debug {
    /// The state of an instance.
    async fn load(&self, saga: &str, instance: &str) -> Result<Option<SagaState>>;

    /// Saves a change atomically. A state whose version moved since `expected_version` is a
    /// [`Error::Conflict`].
    async fn save(&self, change: SagaChange) -> Result<SagaSaved>;

    /// Deadlines due at or before `now`, oldest first, at most `limit`.
    async fn due_deadlines(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<DeadlineRecord>>;

    /// Whether the saga already handled `event_id` (an early check before dispatching; `save`
    /// checks again atomically).
    async fn has_handled(&self, saga: &str, event_id: Uuid) -> Result<bool>;

    /// The pending deadlines of one instance (for inspection and tests).
    async fn deadlines_of(&self, saga: &str, instance: &str) -> Result<Vec<DeadlineRecord>>;
}

/// What the runner did with one event or deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SagaOutcome {
    /// The saga handled it.
    Handled,
    /// Not for this saga (another event type, no instance id, a finished instance).
    Ignored,
    /// Handled before (a redelivery), or the deadline fired already.
    AlreadyHandled,
}

/// Runs a [`Saga`]: loads its instance, lets it decide, dispatches, saves.
pub struct SagaRunner<S: Saga> {
    store: Arc<dyn SagaStore>,
    dispatcher: Arc<dyn CommandDispatcher<S::Command>>,
    config: Arc<S::Config>,
    max_retries: usize,
}

impl<S: Saga> Clone for SagaRunner<S> {
    fn clone(&self) -> Self {
        SagaRunner {
            store: self.store.clone(),
            dispatcher: self.dispatcher.clone(),
            config: self.config.clone(),
            max_retries: self.max_retries,
        }
    }
}

impl<S: Saga> fmt::Debug for SagaRunner<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaRunner")
            .field("saga", &S::NAME)
            .field("store", &self.store)
            .finish()
    }
}

impl<S: Saga> SagaRunner<S> {
    /// A runner keeping state in `store` and sending commands through `dispatcher`.
    pub fn new(
        store: Arc<dyn SagaStore>,
        dispatcher: Arc<dyn CommandDispatcher<S::Command>>,
        config: S::Config,
    ) -> Self {
        SagaRunner {
            store,
            dispatcher,
            config: Arc::new(config),
            max_retries: 16,
        }
    }

    /// Handles one stored event (from a bus or a store subscription).
    pub async fn handle_event(&self, recorded: &RecordedEvent) -> Result<SagaOutcome> {
        let envelope = match recorded.to_envelope::<S::Event>() {
            Ok(envelope) => envelope,
            Err(Error::UnknownEventType { .. }) => return Ok(SagaOutcome::Ignored),
            Err(error) => return Err(error),
        };
        let Some(instance) = S::instance_id(&envelope) else {
            return Ok(SagaOutcome::Ignored);
        };
        let metadata = Metadata::caused_by(recorded);
        let mut attempt = 0;
        loop {
            let (mut saga, version) = match self.load(&instance).await? {
                Loaded::Completed(_) => return Ok(SagaOutcome::Ignored),
                Loaded::State(saga, version) => (saga, version),
            };
            let decision = saga.handle(&self.config, &envelope);
            match self
                .apply(
                    &instance,
                    saga,
                    version,
                    decision,
                    &metadata,
                    Some(recorded.event_id),
                    None,
                )
                .await
            {
                Err(error) if error.is_conflict() && attempt < self.max_retries => attempt += 1,
                other => return other,
            }
        }
    }

    /// Fires one due deadline.
    pub async fn fire(&self, deadline: &DeadlineRecord) -> Result<SagaOutcome> {
        let payload: S::Deadline = serde_json::from_slice(&deadline.payload)
            .map_err(|e| Error::serialization(format!("{} deadline", S::NAME), e))?;
        let (mut saga, version) = match self.load(&deadline.instance).await? {
            Loaded::State(saga, version) => (saga, version),
            Loaded::Completed(state) => {
                // A finished instance: drop the deadline without running it.
                let change = SagaChange {
                    saga: S::NAME.to_owned(),
                    instance: deadline.instance.clone(),
                    expected_version: state.version,
                    state: state.data,
                    completed: true,
                    schedule: Vec::new(),
                    cancel: Vec::new(),
                    handled_event: None,
                    fired_deadline: Some(deadline.id),
                };
                self.store.save(change).await?;
                return Ok(SagaOutcome::Ignored);
            }
        };
        let decision = saga.on_deadline(&self.config, payload);
        self.apply(
            &deadline.instance,
            saga,
            version,
            decision,
            &deadline.metadata,
            None,
            Some(deadline.id),
        )
        .await
    }

    /// Fires every deadline due now; returns how many fired.
    pub async fn fire_due(&self, now: DateTime<Utc>) -> Result<usize> {
        let due = self.store.due_deadlines(now, 100).await?;
        let mut fired = 0;
        for deadline in due.iter().filter(|d| d.saga == S::NAME) {
            match self.fire(deadline).await {
                Ok(SagaOutcome::Handled) => fired += 1,
                Ok(_) => {}
                // Another instance of the runner fired it, or the state moved: next round.
                Err(error) if error.is_conflict() => {}
                Err(error) => return Err(error),
            }
        }
        Ok(fired)
    }

    /// Fires due deadlines every `interval` until `shutdown` completes.
    pub async fn run_deadlines(
        &self,
        interval: Duration,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) {
        tokio::pin!(shutdown);
        loop {
            if let Err(error) = self.fire_due(Utc::now()).await {
                tracing::warn!(saga = S::NAME, %error, "firing deadlines failed; retrying");
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    async fn load(&self, instance: &str) -> Result<Loaded<S>> {
        match self.store.load(S::NAME, instance).await? {
            None => Ok(Loaded::State(S::default(), 0)),
            Some(state) if state.completed => Ok(Loaded::Completed(state)),
            Some(state) => {
                let saga = serde_json::from_slice(&state.data)
                    .map_err(|e| Error::serialization(S::NAME, e))?;
                Ok(Loaded::State(saga, state.version))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply(
        &self,
        instance: &str,
        saga: S,
        version: u64,
        decision: SagaDecision<S::Command, S::Deadline>,
        metadata: &Metadata,
        handled_event: Option<Uuid>,
        fired_deadline: Option<Uuid>,
    ) -> Result<SagaOutcome> {
        if let Some(event_id) = handled_event {
            // Skip the dispatch of a redelivered event that this saga already handled.
            if self.store.has_handled(S::NAME, event_id).await? {
                return Ok(SagaOutcome::AlreadyHandled);
            }
        }
        let state = serde_json::to_vec(&saga).map_err(|e| Error::serialization(S::NAME, e))?;
        let schedule = decision
            .schedule
            .into_iter()
            .map(|(key, due_at, deadline)| {
                Ok(DeadlineRecord {
                    id: Uuid::now_v7(),
                    saga: S::NAME.to_owned(),
                    instance: instance.to_owned(),
                    key,
                    due_at,
                    payload: serde_json::to_vec(&deadline)
                        .map_err(|e| Error::serialization(S::NAME, e))?
                        .into(),
                    metadata: metadata.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        for command in decision.commands {
            self.dispatcher
                .dispatch(command, metadata.clone())
                .await
                .map_err(|e| Error::backend("saga command", e))?;
        }
        let change = SagaChange {
            saga: S::NAME.to_owned(),
            instance: instance.to_owned(),
            expected_version: version,
            state: state.into(),
            completed: decision.complete,
            schedule,
            cancel: decision.cancel,
            handled_event,
            fired_deadline,
        };
        Ok(match self.store.save(change).await? {
            SagaSaved::Saved => SagaOutcome::Handled,
            SagaSaved::AlreadyHandled => SagaOutcome::AlreadyHandled,
        })
    }
}

enum Loaded<S> {
    State(S, u64),
    Completed(SagaState),
}

#[async_trait]
impl<S: Saga> MessageHandler for SagaRunner<S> {
    async fn handle(&self, message: &RecordedEvent) -> Result<(), HandlerError> {
        self.handle_event(message).await?;
        Ok(())
    }
}
