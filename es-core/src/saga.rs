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

use crate::bus::{HandlerError, MessageHandler, RetryPolicy};
use crate::error::{BoxError, Error, Result};
use crate::event::{DomainEvent, Envelope, Metadata, RecordedEvent};
use crate::repository::{CommandContext, CommandError};
use crate::store::InboxEntry;
use crate::stream::StreamFilter;

/// A process manager: a pure reaction to events and deadlines.
///
/// The runner keeps one state per instance (see [`instance_id`](Saga::instance_id)), hands it
/// the events it listens to, dispatches the commands it decides, and stores the deadlines it
/// sets. Like an aggregate, a saga does no I/O: its commands are carried out by a
/// [`CommandDispatcher`].
///
/// Commands are dispatched *before* the saga's new state is saved, so after a crash a command
/// may be dispatched again. Each command therefore comes with a [`CommandContext`] whose inbox
/// entry names it (see [`CommandDispatcher`]): a dispatcher that runs it through
/// [`Repository::execute`](crate::Repository::execute) (as [`RepositoryDispatcher`] does)
/// commits that entry with the command's events, and the command dispatched again is skipped.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), es_core::BoxError> {
/// use std::sync::{Arc, Mutex};
/// use chrono::{Duration, Utc};
/// use es_core::memory::MemoryEventStore;
/// use es_core::{BoxError, CommandContext, CommandDispatcher, DispatchError, DomainEvent, Envelope, EventStore,
///     ExpectedVersion, Metadata, NewEvent, Saga, SagaDecision, SagaRunner, StreamId};
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
///                 SagaDecision::none().schedule_after("timeout", event.recorded_at, *timeout, order.clone()),
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
///     async fn dispatch(&self, command: Command, _: CommandContext) -> Result<(), DispatchError> {
///         self.0.lock().unwrap().push(command);
///         Ok(())
///     }
/// }
///
/// let store = MemoryEventStore::new(); // keeps saga state and deadlines too
/// let sent = Arc::new(Sent::default());
/// let runner = SagaRunner::<Checkout>::new(store.clone(), sent.clone(), Duration::zero());
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

    /// Sets deadline `key` to come due `after` the time `from` (usually the event's
    /// `recorded_at`). Where the sum lies past the range of [`DateTime`] it saturates instead of
    /// panicking as `from + after` would: a huge timeout comes due at
    /// [`DateTime::<Utc>::MAX_UTC`] (never, in practice), a hugely negative one at once (at the
    /// Unix epoch, a time every store can keep).
    pub fn schedule_after(
        self,
        key: impl Into<String>,
        from: DateTime<Utc>,
        after: chrono::Duration,
        deadline: D,
    ) -> Self {
        let at = from
            .checked_add_signed(after)
            .unwrap_or(if after < chrono::Duration::zero() {
                DateTime::<Utc>::UNIX_EPOCH
            } else {
                DateTime::<Utc>::MAX_UTC
            });
        self.schedule(key, at, deadline)
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
///
/// Each command comes with a [`CommandContext`]: the metadata for the events it causes (caused
/// by the saga's event or deadline), and an inbox entry that names this command of this
/// decision: the saga, the instance and its version, the command's place among the decision's
/// commands, and the event or deadline that caused it. Pass the context on to
/// [`Repository::execute`](crate::Repository::execute) and a command dispatched again after a
/// crash (the saga's state not saved yet) finds its entry and changes nothing. A decision made
/// on another version of the instance names its commands anew, so nothing a later decision
/// sends is skipped. [`RepositoryDispatcher`] does all of this for commands of one aggregate.
///
/// The error's kind decides what becomes of the event or deadline behind the command: a
/// transient [`Error`] (an outage, a conflict streak) is retried with backoff, anything else
/// (a refusal, a permanent backend error) dead-letters the event or parks the deadline. A
/// [`Repository`](crate::Repository) command's [`CommandError`] converts with `?` and keeps
/// its kind.
#[async_trait]
pub trait CommandDispatcher<C>: Send + Sync {
    /// Carries out `command` within `context` (its events' metadata and its inbox entry).
    async fn dispatch(&self, command: C, context: CommandContext) -> Result<(), DispatchError>;

    /// Carries out the commands of a batch of events, in order (a batched saga calls it once
    /// per batch; see [`SagaRunner::handle_events`]). Override it to commit them together,
    /// for instance with [`Repository::execute_batch`](crate::Repository::execute_batch). The
    /// default dispatches them one after the other and stops at the first failure: like every
    /// saga command, they must be safe to carry out again.
    async fn dispatch_many(&self, commands: Vec<(C, CommandContext)>) -> Result<(), DispatchError>
    where
        C: Send + 'async_trait,
    {
        for (command, context) in commands {
            self.dispatch(command, context).await?;
        }
        Ok(())
    }
}

/// The inbox entries of one decision's commands: one per command, named by the saga, the
/// instance, the version the decision was made on and the command's place, for the event or
/// deadline `cause`.
fn command_contexts<C>(
    saga: &str,
    instance: &str,
    version: u64,
    cause: Uuid,
    metadata: &Metadata,
    commands: Vec<C>,
) -> Vec<(C, CommandContext)> {
    commands
        .into_iter()
        .enumerate()
        .map(|(index, command)| {
            let context = CommandContext {
                metadata: metadata.clone(),
                inbox: Some(InboxEntry::new(
                    format!("{saga}/{instance}@{version}#{index}"),
                    cause,
                )),
            };
            (command, context)
        })
        .collect()
}

/// A [`CommandDispatcher`] that carries out a saga's commands on one aggregate type through a
/// [`Repository`](crate::Repository): `route` turns a saga command into the aggregate's id and
/// command. Each command commits with its inbox entry, so one dispatched again is skipped; a
/// batch goes through [`Repository::execute_batch`](crate::Repository::execute_batch).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), es_core::BoxError> {
/// # use es_core::{Aggregate, DomainEvent, Repository, RepositoryDispatcher, CommandDispatcher, CommandContext, Metadata};
/// # use es_core::memory::MemoryEventStore;
/// # #[derive(Debug, Default, Clone)] struct Order { confirmed: bool }
/// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)] enum OrderEvent { Confirmed }
/// # impl DomainEvent for OrderEvent {}
/// # #[derive(Debug, thiserror::Error)] #[error("never")] struct Never;
/// # impl Aggregate for Order {
/// #     const TYPE: &'static str = "order";
/// #     type Command = (); type Event = OrderEvent; type Error = Never;
/// #     fn handle(&self, _: ()) -> Result<Vec<OrderEvent>, Never> { Ok(vec![OrderEvent::Confirmed]) }
/// #     fn apply(&mut self, _: &OrderEvent) { self.confirmed = true }
/// # }
/// /// What the saga sends: confirm this order.
/// struct Confirm(String);
///
/// let orders = Repository::<Order>::new(MemoryEventStore::new());
/// let dispatcher = RepositoryDispatcher::new(orders.clone(), |Confirm(id): Confirm| (id, ()));
/// dispatcher.dispatch(Confirm("o-1".into()), CommandContext::default()).await?;
/// assert!(orders.load("o-1").await?.state.confirmed);
/// # Ok(()) }
/// ```
pub struct RepositoryDispatcher<A: crate::Aggregate, F> {
    repository: crate::Repository<A>,
    route: F,
}

impl<A: crate::Aggregate, F> RepositoryDispatcher<A, F> {
    /// Dispatches to `repository`, each saga command turned into `(aggregate id, command)` by
    /// `route`.
    pub fn new(repository: crate::Repository<A>, route: F) -> Self {
        RepositoryDispatcher { repository, route }
    }
}

impl<A: crate::Aggregate, F> fmt::Debug for RepositoryDispatcher<A, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepositoryDispatcher")
            .field("aggregate", &A::TYPE)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<C, A, F> CommandDispatcher<C> for RepositoryDispatcher<A, F>
where
    C: Send + 'static,
    A: crate::Aggregate + Clone,
    A::Command: Clone,
    A::Error: std::error::Error + Send + Sync + 'static,
    F: Fn(C) -> (String, A::Command) + Send + Sync,
{
    async fn dispatch(&self, command: C, context: CommandContext) -> Result<(), DispatchError> {
        let (id, command) = (self.route)(command);
        self.repository.execute(&id, command, context).await?;
        Ok(())
    }

    async fn dispatch_many(&self, commands: Vec<(C, CommandContext)>) -> Result<(), DispatchError>
    where
        C: Send + 'async_trait,
    {
        let batch: Vec<(String, A::Command, CommandContext)> = commands
            .into_iter()
            .map(|(command, context)| {
                let (id, command) = (self.route)(command);
                (id, command, context)
            })
            .collect();
        self.repository.execute_batch(batch).await?;
        Ok(())
    }
}

/// Why a saga's command was not carried out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    /// A store or another backend failed. Its kind is kept: a transient one
    /// ([`Error::is_transient`]) is retried with backoff, the others are permanent.
    #[error(transparent)]
    Store(#[from] Error),
    /// The command was refused (a domain error): retrying will not change it.
    #[error("command refused: {0}")]
    Rejected(#[source] BoxError),
}

impl DispatchError {
    /// A refusal: permanent.
    pub fn rejected(error: impl Into<BoxError>) -> Self {
        DispatchError::Rejected(error.into())
    }

    /// `true` when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, DispatchError::Store(error) if error.is_transient())
    }

    /// The error the runner reports: a store error as it is, a refusal as a permanent
    /// [`Error::Backend`].
    fn into_error(self) -> Error {
        match self {
            DispatchError::Store(error) => error,
            DispatchError::Rejected(error) => Error::backend("saga command", error),
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<CommandError<E>> for DispatchError {
    /// A store failure keeps its kind; the aggregate's refusal is [`DispatchError::Rejected`].
    fn from(error: CommandError<E>) -> Self {
        match error {
            CommandError::Rejected(error) => DispatchError::Rejected(Box::new(error)),
            CommandError::Store(error) => DispatchError::Store(error),
        }
    }
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
    /// How many times firing it failed (0: never). A deadline that failed is parked: kept, and
    /// tried again from [`retry_at`](DeadlineRecord::retry_at) on.
    pub attempts: u32,
    /// After a failure: not fired before this time.
    pub retry_at: Option<DateTime<Utc>>,
    /// After a failure: why the last firing failed.
    pub last_error: Option<String>,
}

impl DeadlineRecord {
    /// A new deadline of `saga`'s `instance` under `key`, due at `due_at`, never tried.
    pub fn new(
        saga: impl Into<String>,
        instance: impl Into<String>,
        key: impl Into<String>,
        due_at: DateTime<Utc>,
        payload: impl Into<Bytes>,
        metadata: Metadata,
    ) -> Self {
        DeadlineRecord {
            id: Uuid::now_v7(),
            saga: saga.into(),
            instance: instance.into(),
            key: key.into(),
            due_at,
            payload: payload.into(),
            metadata,
            attempts: 0,
            retry_at: None,
            last_error: None,
        }
    }
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

impl SagaChange {
    /// The conflict a store answers when the instance's stored version is `actual`, not the
    /// change's [`expected_version`](SagaChange::expected_version).
    pub fn conflict(&self, actual: u64) -> Error {
        Error::Conflict {
            stream: crate::StreamId::of_saga(&self.saga, &self.instance),
            expected: crate::ExpectedVersion::Exact(self.expected_version),
            actual: Some(actual),
        }
    }
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

    /// The deadlines of `saga` due at or before `now`, at most `limit`; a parked deadline (one
    /// whose firing failed) only once its [`retry_at`](DeadlineRecord::retry_at) has come too.
    /// Earliest first, by `retry_at` for a parked deadline and `due_at` for the others. Other
    /// sagas' deadlines never take a place in the answer.
    async fn due_deadlines(
        &self,
        saga: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<DeadlineRecord>>;

    /// Parks deadline `id` after a failed firing: counts the attempt, keeps `error`, and leaves
    /// it out of [`due_deadlines`](SagaStore::due_deadlines) until `retry_at`. A deadline that is
    /// gone (it fired or was cancelled meanwhile) stays gone.
    async fn defer_deadline(&self, id: Uuid, retry_at: DateTime<Utc>, error: &str) -> Result<()>;

    /// The parked deadlines of `saga` (those whose firing failed at least once), oldest due
    /// first, at most `limit`: for operators and tests.
    async fn parked_deadlines(&self, saga: &str, limit: usize) -> Result<Vec<DeadlineRecord>>;

    /// Whether the saga already handled `event_id` (an early check before dispatching; `save`
    /// checks again atomically).
    async fn has_handled(&self, saga: &str, event_id: Uuid) -> Result<bool>;

    /// The pending deadlines of one instance (for inspection and tests).
    async fn deadlines_of(&self, saga: &str, instance: &str) -> Result<Vec<DeadlineRecord>>;

    /// The states of several instances, one answer per instance in order: a batched saga
    /// loads its instances with this. The default asks [`load`](SagaStore::load) for each;
    /// backends with a round trip per query answer in one.
    async fn load_many(&self, saga: &str, instances: &[String]) -> Result<Vec<Option<SagaState>>> {
        let mut states = Vec::with_capacity(instances.len());
        for instance in instances {
            states.push(self.load(saga, instance).await?);
        }
        Ok(states)
    }

    /// Which of `event_ids` the saga already handled (in no particular order): the early
    /// check of a batch. The default asks [`has_handled`](SagaStore::has_handled) for each.
    async fn handled_among(&self, saga: &str, event_ids: &[Uuid]) -> Result<Vec<Uuid>> {
        let mut handled = Vec::new();
        for &event_id in event_ids {
            if self.has_handled(saga, event_id).await? {
                handled.push(event_id);
            }
        }
        Ok(handled)
    }

    /// Saves several changes (of distinct instances): `Saved` when all are stored,
    /// `AlreadyHandled` or an error when one of them is not.
    ///
    /// A backend should store all or none (the memory and PostgreSQL stores do, and
    /// `testing::saga_store_conformance` checks it). The
    /// default saves one after the other and stops at the first that is not saved, leaving the
    /// ones before it saved: still correct for the runner, which then handles the batch one
    /// event at a time and skips those as handled, but it fails that check.
    async fn save_many(&self, changes: Vec<SagaChange>) -> Result<SagaSaved> {
        for change in changes {
            if self.save(change).await? == SagaSaved::AlreadyHandled {
                return Ok(SagaSaved::AlreadyHandled);
            }
        }
        Ok(SagaSaved::Saved)
    }
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
    deadline_retry: RetryPolicy,
    /// Where it reads when it follows the store's log (see its [`Projection`] impl).
    log: LogFollowing,
}

/// The checkpoint name and filter of a saga that follows the store's log.
#[derive(Clone, Debug)]
struct LogFollowing {
    checkpoint: String,
    filter: StreamFilter,
}

impl<S: Saga> Clone for SagaRunner<S> {
    fn clone(&self) -> Self {
        SagaRunner {
            store: self.store.clone(),
            dispatcher: self.dispatcher.clone(),
            config: self.config.clone(),
            max_retries: self.max_retries,
            deadline_retry: self.deadline_retry,
            log: self.log.clone(),
        }
    }
}

/// How many due deadlines [`SagaRunner::fire_due`] reads at a time.
const DEADLINE_BATCH: usize = 100;

/// How many batches one [`SagaRunner::fire_due`] call reads at most.
const MAX_DEADLINE_ROUNDS: usize = 10;

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
    ///
    /// Both by value: a backend store (`MemoryEventStore`, `PgEventStore`) is a cheap handle,
    /// and a dispatcher may be given as an `Arc` to keep a handle on it.
    pub fn new(
        store: impl SagaStore + 'static,
        dispatcher: impl CommandDispatcher<S::Command> + 'static,
        config: S::Config,
    ) -> Self {
        SagaRunner {
            store: crate::shared::saga_store(store),
            dispatcher: Arc::new(dispatcher),
            config: Arc::new(config),
            max_retries: 16,
            deadline_retry: RetryPolicy {
                max_attempts: u32::MAX,
                initial_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(300),
            },
            log: LogFollowing {
                checkpoint: format!("saga:{}", S::NAME),
                filter: StreamFilter::All,
            },
        }
    }

    /// The same runner, reading only `filter`'s streams when it follows the store's log
    /// (every stream by default; the saga ignores the event types it does not know either way).
    pub fn with_log_filter(mut self, filter: StreamFilter) -> Self {
        self.log.filter = filter;
        self
    }

    /// The same runner, waiting from `initial` (doubling, with jitter) up to `max` before it
    /// tries a failed deadline again. The default is 1 s up to 5 min.
    pub fn with_deadline_backoff(mut self, initial: Duration, max: Duration) -> Self {
        // Never zero: a parked deadline must leave the due set, or a round would pick it again.
        let initial = initial.max(Duration::from_millis(1));
        self.deadline_retry.initial_backoff = initial;
        self.deadline_retry.max_backoff = max.max(initial);
        self
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
                Instance::Completed(_) => return Ok(SagaOutcome::Ignored),
                Instance::State(saga, version) => (saga, version),
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
                Ok(outcome) => return Ok(outcome),
                // The saga's state moved under it: decide again on the new state.
                Err(Failed::Store(error)) if error.is_conflict() && attempt < self.max_retries => {
                    attempt += 1
                }
                // A command's failure goes back to the caller with its kind, so a transient one
                // is retried with the bus's backoff rather than at once.
                Err(Failed::Store(error) | Failed::Dispatch(error)) => return Err(error),
            }
        }
    }

    /// Handles a batch of stored events (a bus batch, see
    /// [`MessageHandler::handle_batch`]) with a few round trips for all of them: which were
    /// handled already, the instances' states, the commands
    /// ([`CommandDispatcher::dispatch_many`]), and one save of every change
    /// ([`SagaStore::save_many`]).
    ///
    /// Events of one instance take turns: each round takes at most one event per instance,
    /// in order, so a later event sees the state the earlier one left. A round whose save
    /// meets a moved state decides again, as [`handle_event`](Self::handle_event) does; one
    /// whose events were handled meanwhile elsewhere fails with a transient error, and a
    /// batched consumer then handles the events one by one.
    pub async fn handle_events(&self, recorded: &[RecordedEvent]) -> Result<()> {
        let mut pending = Vec::with_capacity(recorded.len());
        for event in recorded {
            let envelope = match event.to_envelope::<S::Event>() {
                Ok(envelope) => envelope,
                Err(Error::UnknownEventType { .. }) => continue,
                Err(error) => return Err(error),
            };
            if let Some(instance) = S::instance_id(&envelope) {
                pending.push((event, envelope, instance));
            }
        }
        while !pending.is_empty() {
            let mut seen = std::collections::HashSet::new();
            let (round, rest): (Vec<_>, Vec<_>) = pending
                .into_iter()
                .partition(|(_, _, instance)| seen.insert(instance.clone()));
            self.handle_round(&round).await?;
            pending = rest;
        }
        Ok(())
    }

    /// One round of [`handle_events`](Self::handle_events): events of distinct instances.
    async fn handle_round(
        &self,
        round: &[(&RecordedEvent, Envelope<S::Event>, String)],
    ) -> Result<()> {
        let ids: Vec<Uuid> = round.iter().map(|(event, _, _)| event.event_id).collect();
        let mut attempt = 0;
        loop {
            // Redelivered events are skipped before their commands go out again.
            let handled = self.store.handled_among(S::NAME, &ids).await?;
            let live: Vec<_> = round
                .iter()
                .filter(|(event, _, _)| !handled.contains(&event.event_id))
                .collect();
            if live.is_empty() {
                return Ok(());
            }
            let instances: Vec<String> = live.iter().map(|(_, _, i)| i.clone()).collect();
            let states = self.store.load_many(S::NAME, &instances).await?;
            let mut commands = Vec::new();
            let mut changes = Vec::with_capacity(live.len());
            for ((event, envelope, instance), state) in live.into_iter().zip(states) {
                let (mut saga, version) = match state {
                    None => (S::default(), 0),
                    // A finished instance ignores what comes late.
                    Some(state) if state.completed => continue,
                    Some(state) => (
                        serde_json::from_slice(&state.data)
                            .map_err(|e| Error::serialization(S::NAME, e))?,
                        state.version,
                    ),
                };
                let metadata = Metadata::caused_by(event);
                let decision = saga.handle(&self.config, envelope);
                let (change, decided) = self.change(
                    instance,
                    &saga,
                    version,
                    decision,
                    &metadata,
                    Some(event.event_id),
                    None,
                )?;
                commands.extend(command_contexts(
                    S::NAME,
                    instance,
                    version,
                    event.event_id,
                    &metadata,
                    decided,
                ));
                changes.push(change);
            }
            if !commands.is_empty() {
                self.dispatcher
                    .dispatch_many(commands)
                    .await
                    .map_err(DispatchError::into_error)?;
            }
            match self.store.save_many(changes).await {
                Ok(SagaSaved::Saved) => return Ok(()),
                Ok(SagaSaved::AlreadyHandled) => return Err(Error::unavailable(
                    S::NAME,
                    "an event of the batch was handled elsewhere meanwhile; handle them one by one",
                )),
                Err(error) if error.is_conflict() && attempt < self.max_retries => attempt += 1,
                Err(error) => return Err(error),
            }
        }
    }

    /// Fires one due deadline.
    pub async fn fire(&self, deadline: &DeadlineRecord) -> Result<SagaOutcome> {
        let payload: S::Deadline = serde_json::from_slice(&deadline.payload)
            .map_err(|e| Error::serialization(format!("{} deadline", S::NAME), e))?;
        let (mut saga, version) = match self.load(&deadline.instance).await? {
            Instance::State(saga, version) => (saga, version),
            Instance::Completed(state) => {
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
        .map_err(Failed::into_error)
    }

    /// Fires every deadline of this saga due at `now`; returns how many fired.
    ///
    /// A deadline whose firing fails (its command is refused, a backend is down, its payload
    /// does not decode) does not hold up the others: it is parked with
    /// [`SagaStore::defer_deadline`], logged at warn, listed by
    /// [`SagaStore::parked_deadlines`], and tried again after a backoff that doubles per failure
    /// (with jitter, up to the cap of [`with_deadline_backoff`](Self::with_deadline_backoff)).
    /// An `Err` means the saga store itself failed.
    pub async fn fire_due(&self, now: DateTime<Utc>) -> Result<usize> {
        let mut fired = 0;
        // Rounds per call are bounded, so that a saga that keeps scheduling deadlines already
        // due cannot keep one call going forever; the next call goes on.
        for _ in 0..MAX_DEADLINE_ROUNDS {
            let due = self
                .store
                .due_deadlines(S::NAME, now, DEADLINE_BATCH)
                .await?;
            let mut settled = 0;
            for deadline in &due {
                match self.fire(deadline).await {
                    Ok(outcome) => {
                        settled += 1;
                        if outcome == SagaOutcome::Handled {
                            fired += 1;
                        }
                    }
                    // Another instance of the runner fired it, or the state moved: next round.
                    Err(error) if error.is_conflict() => {}
                    Err(error) => {
                        self.park(deadline, now, &error).await?;
                        settled += 1;
                    }
                }
            }
            // A full batch that made progress may hide more due deadlines behind it.
            if due.len() < DEADLINE_BATCH || settled == 0 {
                break;
            }
        }
        Ok(fired)
    }

    /// Parks a deadline whose firing failed until its next attempt.
    async fn park(
        &self,
        deadline: &DeadlineRecord,
        now: DateTime<Utc>,
        error: &Error,
    ) -> Result<()> {
        let attempts = deadline.attempts.saturating_add(1);
        let wait = self.deadline_retry.jittered_backoff(attempts);
        let retry_at = chrono::Duration::from_std(wait)
            .ok()
            .and_then(|wait| now.checked_add_signed(wait))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        tracing::warn!(
            saga = S::NAME,
            instance = %deadline.instance,
            key = %deadline.key,
            deadline_id = %deadline.id,
            attempts,
            %retry_at,
            %error,
            "firing a deadline failed; parked until its next attempt"
        );
        self.store
            .defer_deadline(deadline.id, retry_at, &error.to_string())
            .await
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

    async fn load(&self, instance: &str) -> Result<Instance<S>> {
        match self.store.load(S::NAME, instance).await? {
            None => Ok(Instance::State(S::default(), 0)),
            Some(state) if state.completed => Ok(Instance::Completed(state)),
            Some(state) => {
                let saga = serde_json::from_slice(&state.data)
                    .map_err(|e| Error::serialization(S::NAME, e))?;
                Ok(Instance::State(saga, state.version))
            }
        }
    }

    /// The change a decision makes to an instance, and the commands it sends.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn change(
        &self,
        instance: &str,
        saga: &S,
        version: u64,
        decision: SagaDecision<S::Command, S::Deadline>,
        metadata: &Metadata,
        handled_event: Option<Uuid>,
        fired_deadline: Option<Uuid>,
    ) -> Result<(SagaChange, Vec<S::Command>)> {
        let state = serde_json::to_vec(saga).map_err(|e| Error::serialization(S::NAME, e))?;
        let schedule = decision
            .schedule
            .into_iter()
            .map(|(key, due_at, deadline)| {
                Ok(DeadlineRecord::new(
                    S::NAME,
                    instance,
                    key,
                    due_at,
                    serde_json::to_vec(&deadline).map_err(|e| Error::serialization(S::NAME, e))?,
                    metadata.clone(),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
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
        Ok((change, decision.commands))
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
    ) -> Result<SagaOutcome, Failed> {
        if let Some(event_id) = handled_event {
            // Skip the dispatch of a redelivered event that this saga already handled.
            if self
                .store
                .has_handled(S::NAME, event_id)
                .await
                .map_err(Failed::Store)?
            {
                return Ok(SagaOutcome::AlreadyHandled);
            }
        }
        let (change, commands) = self
            .change(
                instance,
                &saga,
                version,
                decision,
                metadata,
                handled_event,
                fired_deadline,
            )
            .map_err(Failed::Store)?;
        // Every call site gives one cause: the event handled or the deadline fired.
        let cause = handled_event.or(fired_deadline).unwrap_or_default();
        for (command, context) in
            command_contexts(S::NAME, instance, version, cause, metadata, commands)
        {
            self.dispatcher
                .dispatch(command, context)
                .await
                .map_err(|error| Failed::Dispatch(error.into_error()))?;
        }
        Ok(
            match self.store.save(change).await.map_err(Failed::Store)? {
                SagaSaved::Saved => SagaOutcome::Handled,
                SagaSaved::AlreadyHandled => SagaOutcome::AlreadyHandled,
            },
        )
    }
}

/// Why [`SagaRunner::apply`] failed: the saga's own store, or one of its commands.
enum Failed {
    Store(Error),
    Dispatch(Error),
}

impl Failed {
    fn into_error(self) -> Error {
        match self {
            Failed::Store(error) | Failed::Dispatch(error) => error,
        }
    }
}

/// A saga instance as the runner finds it in its store (named apart from the repository's
/// [`Loaded`](crate::Loaded), which is an aggregate's state).
enum Instance<S> {
    /// Running: its state and version (0: new).
    State(S, u64),
    /// Finished: it takes no more events.
    Completed(SagaState),
}

/// A saga driven from the store's log instead of a bus: run it with a
/// [`ProjectionRunner`](crate::ProjectionRunner), which keeps its place under the checkpoint
/// `saga:{NAME}` and hands it every event after it (those of the
/// [`with_log_filter`](SagaRunner::with_log_filter) streams).
///
/// A redelivered event is skipped by the saga's inbox as on a bus, so the checkpoint may lag.
/// A failure halts the saga on that event and is retried with backoff, as a projection does: a
/// refused command is not skipped (there is no dead-letter queue on the log), and shows in the
/// runner's status and log until it is resolved.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), es_core::BoxError> {
/// # use std::sync::{Arc, Mutex};
/// # use es_core::{CommandContext, CommandDispatcher, DispatchError, DomainEvent, Envelope, EventStore,
/// #     ExpectedVersion, Metadata, NewEvent, ProjectionRunner, Saga, SagaDecision, SagaRunner, StreamId};
/// # use es_core::memory::MemoryEventStore;
/// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)] enum Flow { Paid { order: String } }
/// # impl DomainEvent for Flow {}
/// # #[derive(Default, serde::Serialize, serde::Deserialize)] struct Ship;
/// # impl Saga for Ship {
/// #     const NAME: &'static str = "ship";
/// #     type Event = Flow; type Command = String; type Deadline = (); type Config = ();
/// #     fn instance_id(e: &Envelope<Flow>) -> Option<String> { let Flow::Paid { order } = &e.event; Some(order.clone()) }
/// #     fn handle(&mut self, _: &(), e: &Envelope<Flow>) -> SagaDecision<String, ()> {
/// #         let Flow::Paid { order } = &e.event; SagaDecision::none().send(order.clone())
/// #     }
/// #     fn on_deadline(&mut self, _: &(), _: ()) -> SagaDecision<String, ()> { SagaDecision::none() }
/// # }
/// # #[derive(Default)] struct Shipped(Mutex<Vec<String>>);
/// # #[es_core::async_trait]
/// # impl CommandDispatcher<String> for Shipped {
/// #     async fn dispatch(&self, order: String, _: CommandContext) -> Result<(), DispatchError> {
/// #         self.0.lock().unwrap().push(order); Ok(())
/// #     }
/// # }
/// let store = MemoryEventStore::new();
/// let shipped = Arc::new(Shipped::default());
/// let saga = SagaRunner::<Ship>::new(store.clone(), shipped.clone(), ());
/// let paid = NewEvent::from_domain(&Flow::Paid { order: "o-1".into() }, Metadata::default())?;
/// store.append(&StreamId::new("payment-1")?, ExpectedVersion::Any, vec![paid]).await?;
///
/// // In a service: `ProjectionRunner::spawn(Arc::new(saga))`; here, up to the head.
/// let follower = ProjectionRunner::new(store.clone(), store.clone());
/// follower.catch_up(&saga).await?;
/// follower.catch_up(&saga).await?; // from its checkpoint: nothing new
/// assert_eq!(*shipped.0.lock().unwrap(), vec!["o-1".to_owned()]);
/// # Ok(()) }
/// ```
#[async_trait]
impl<S: Saga> crate::Projection for SagaRunner<S> {
    fn name(&self) -> &str {
        &self.log.checkpoint
    }

    fn filter(&self) -> StreamFilter {
        self.log.filter.clone()
    }

    async fn apply(&self, event: &RecordedEvent) -> Result<(), BoxError> {
        self.handle_event(event).await?;
        Ok(())
    }
}

#[async_trait]
impl<S: Saga> MessageHandler for SagaRunner<S> {
    async fn handle(&self, message: &RecordedEvent) -> Result<(), HandlerError> {
        self.handle_event(message).await?;
        Ok(())
    }

    /// [`handle_events`](SagaRunner::handle_events): one round of store calls per batch.
    async fn handle_batch(&self, messages: &[RecordedEvent]) -> Result<(), HandlerError> {
        self.handle_events(messages).await?;
        Ok(())
    }
}
