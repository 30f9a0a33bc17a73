//! The saga command suite: a saga's commands carry inbox entries on the store under test, so a
//! command dispatched again after a failure (the saga's state not saved) is skipped while a
//! later decision's commands all go through, and a saga follows the store's log from a
//! checkpoint of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregate;
use crate::error::Error;
use crate::event::{DomainEvent, Envelope, Metadata, NewEvent, RecordedEvent};
use crate::projection::ProjectionRunner;
use crate::repository::{CommandContext, Repository};
use crate::saga::{
    CommandDispatcher, DispatchError, RepositoryDispatcher, Saga, SagaDecision, SagaRunner,
    SagaStore,
};
use crate::store::CheckpointStore;
use crate::store::EventStore;
use crate::stream::{ExpectedVersion, StreamFilter, StreamId};

/// Checks a store that keeps events, saga state and checkpoints (as `MemoryEventStore` and
/// `PgEventStore` do) under a saga: a command dispatched again after a later one of the same
/// decision failed is skipped, one at a time and in a batch; a later decision's commands all
/// go through; a saga run from the log keeps its place under the checkpoint `saga:{NAME}` and
/// reads on from there.
pub async fn saga_command_conformance<S>(store: S)
where
    S: EventStore + SagaStore + CheckpointStore + Clone + 'static,
{
    a_command_dispatched_again_after_a_later_one_failed_is_skipped(store.clone()).await;
    a_batch_dispatched_again_skips_what_went_through(store.clone()).await;
    a_saga_follows_the_log_from_its_checkpoint(store).await;
}

/// An aggregate that is not idempotent by itself: every bump is one more event.
#[derive(Debug, Default, Clone)]
struct Counter {
    bumps: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum CounterEvent {
    Bumped,
}
impl DomainEvent for CounterEvent {}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Counter {
    const TYPE: &'static str = "sagacounter";
    type Command = ();
    type Event = CounterEvent;
    type Error = Never;
    fn handle(&self, _: ()) -> Result<Vec<CounterEvent>, Never> {
        Ok(vec![CounterEvent::Bumped])
    }
    fn apply(&mut self, _: &CounterEvent) {
        self.bumps += 1;
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Flow {
    Ping { instance: String },
}
impl DomainEvent for Flow {}

/// Bump counter `.0`.
#[derive(Debug, Clone)]
struct Bump(String);

/// Each ping bumps counters `a` and `b`, in that order.
#[derive(Default, Serialize, Deserialize)]
struct Pinger {
    pings: u32,
}

impl Saga for Pinger {
    const NAME: &'static str = "pinger";
    type Event = Flow;
    type Command = Bump;
    type Deadline = ();
    type Config = ();

    fn instance_id(event: &Envelope<Flow>) -> Option<String> {
        let Flow::Ping { instance } = &event.event;
        Some(instance.clone())
    }

    fn handle(&mut self, _: &(), event: &Envelope<Flow>) -> SagaDecision<Bump, ()> {
        let Flow::Ping { instance } = &event.event;
        self.pings += 1;
        SagaDecision::none()
            .send(Bump(format!("{instance}a")))
            .send(Bump(format!("{instance}b")))
    }

    fn on_deadline(&mut self, _: &(), _: ()) -> SagaDecision<Bump, ()> {
        SagaDecision::none()
    }
}

type Route = fn(Bump) -> (String, ());

/// The ready repository dispatcher, with counter `b` down for its first command.
struct BDownOnce {
    inner: RepositoryDispatcher<Counter, Route>,
    b_down: AtomicBool,
}

#[async_trait::async_trait]
impl CommandDispatcher<Bump> for BDownOnce {
    async fn dispatch(&self, command: Bump, context: CommandContext) -> Result<(), DispatchError> {
        if command.0.ends_with('b') && self.b_down.swap(false, Ordering::SeqCst) {
            return Err(Error::unavailable("counter b", "down for a moment").into());
        }
        self.inner.dispatch(command, context).await
    }

    async fn dispatch_many(
        &self,
        commands: Vec<(Bump, CommandContext)>,
    ) -> Result<(), DispatchError> {
        if commands.iter().any(|(c, _)| c.0.ends_with('b'))
            && self.b_down.swap(false, Ordering::SeqCst)
        {
            // As a batch commit that failed part way: `a` went through, `b` did not.
            for (command, context) in commands.into_iter().filter(|(c, _)| c.0.ends_with('a')) {
                self.inner.dispatch(command, context).await?;
            }
            return Err(Error::unavailable("counter b", "down for a moment").into());
        }
        self.inner.dispatch_many(commands).await
    }
}

fn route(Bump(id): Bump) -> (String, ()) {
    (id, ())
}

/// One case's world on `store`: its own instance (so its own counters and pings stream).
struct Case<S> {
    store: S,
    instance: String,
    counters: Repository<Counter>,
    runner: SagaRunner<Pinger>,
}

impl<S: EventStore + SagaStore + Clone + 'static> Case<S> {
    fn new(store: S, b_down: bool) -> Self {
        let counters = Repository::<Counter>::new(store.clone());
        let dispatcher = BDownOnce {
            inner: RepositoryDispatcher::new(counters.clone(), route as Route),
            b_down: AtomicBool::new(b_down),
        };
        let runner = SagaRunner::<Pinger>::new(store.clone(), dispatcher, ());
        Case {
            store,
            instance: uuid::Uuid::new_v4().simple().to_string(),
            counters,
            runner,
        }
    }

    /// The `n`th ping of this case's instance, as stored.
    async fn ping(&self, n: u64) -> RecordedEvent {
        let stream = StreamId::new(format!("pings{}-1", self.instance)).expect("stream id");
        let event = NewEvent::from_domain(
            &Flow::Ping {
                instance: self.instance.clone(),
            },
            Metadata::new_correlation(),
        )
        .expect("encode");
        let expected = if n == 1 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(n - 1)
        };
        self.store
            .append(&stream, expected, vec![event])
            .await
            .expect("append a ping");
        self.store
            .read_stream(&stream, n, 1)
            .await
            .expect("read the ping")
            .remove(0)
    }

    /// How many bumps counters `a` and `b` of this case have.
    async fn bumps(&self) -> (u64, u64) {
        let load = |suffix: &str| {
            let id = format!("{}{suffix}", self.instance);
            let counters = self.counters.clone();
            async move { counters.load(&id).await.expect("load").state.bumps }
        };
        (load("a").await, load("b").await)
    }
}

async fn a_command_dispatched_again_after_a_later_one_failed_is_skipped<S>(store: S)
where
    S: EventStore + SagaStore + Clone + 'static,
{
    let case = Case::new(store, true);
    let first = case.ping(1).await;

    // `a` is bumped, `b` is down: the event fails and the saga's state is not saved.
    let failed = case.runner.handle_event(&first).await;
    assert!(failed.is_err_and(|e| e.is_transient()));
    assert_eq!(case.bumps().await, (1, 0));

    // The redelivery decides the same on the same state: `a` is skipped, `b` goes through.
    case.runner.handle_event(&first).await.expect("redelivery");
    assert_eq!(case.bumps().await, (1, 1), "the bump of `a` went out twice");

    // A later event is a new decision on a newer state: both of its commands go through.
    let second = case.ping(2).await;
    case.runner
        .handle_event(&second)
        .await
        .expect("second ping");
    assert_eq!(case.bumps().await, (2, 2));
}

async fn a_batch_dispatched_again_skips_what_went_through<S>(store: S)
where
    S: EventStore + SagaStore + Clone + 'static,
{
    let case = Case::new(store, true);
    let first = case.ping(1).await;

    assert!(case
        .runner
        .handle_events(std::slice::from_ref(&first))
        .await
        .is_err());
    assert_eq!(case.bumps().await, (1, 0));

    case.runner
        .handle_events(std::slice::from_ref(&first))
        .await
        .expect("redelivered batch");
    assert_eq!(case.bumps().await, (1, 1), "the bump of `a` went out twice");
}

async fn a_saga_follows_the_log_from_its_checkpoint<S>(store: S)
where
    S: EventStore + SagaStore + CheckpointStore + Clone + 'static,
{
    let case = Case::new(store.clone(), false);
    // This case's pings alone: the counters' own events, and the other cases' pings, are not
    // its business.
    let runner = case
        .runner
        .clone()
        .with_log_filter(StreamFilter::category(format!("pings{}", case.instance)));
    let first = case.ping(1).await;

    let follower = ProjectionRunner::new(store.clone(), store.clone());
    let handle = follower.spawn(Arc::new(runner.clone()));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while case.bumps().await.1 < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the saga never saw the ping"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    handle.stop().await;
    assert_eq!(
        CheckpointStore::load(&store, "saga:pinger")
            .await
            .expect("checkpoint"),
        Some(first.position),
        "the saga's place in the log is kept under its own checkpoint"
    );

    // Started again, it reads on from there: the second ping alone.
    let second = case.ping(2).await;
    let position = follower.catch_up(&runner).await.expect("catch up");
    assert_eq!(position, second.position);
    assert_eq!(case.bumps().await, (2, 2));
}
