//! A saga's commands carry inbox entries: a command dispatched again after a failure (the
//! saga's state not saved) is skipped, while a later decision's commands all go through. A
//! saga also follows the store's log, from a checkpoint of its own.

use std::sync::atomic::{AtomicBool, Ordering};

use es_core::memory::MemoryEventStore;
use es_core::{
    Aggregate, CheckpointStore, CommandContext, CommandDispatcher, DispatchError, DomainEvent,
    Envelope, Error, EventStore, ExpectedVersion, Metadata, NewEvent, ProjectionRunner,
    RecordedEvent, Repository, RepositoryDispatcher, Saga, SagaDecision, SagaRunner, StreamFilter,
    StreamId,
};
use serde::{Deserialize, Serialize};

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
    const TYPE: &'static str = "counter";
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

    fn handle(&mut self, _: &(), _: &Envelope<Flow>) -> SagaDecision<Bump, ()> {
        self.pings += 1;
        SagaDecision::none()
            .send(Bump("a".into()))
            .send(Bump("b".into()))
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

#[es_core::async_trait]
impl CommandDispatcher<Bump> for BDownOnce {
    async fn dispatch(&self, command: Bump, context: CommandContext) -> Result<(), DispatchError> {
        if command.0 == "b" && self.b_down.swap(false, Ordering::SeqCst) {
            return Err(Error::unavailable("counter b", "down for a moment").into());
        }
        self.inner.dispatch(command, context).await
    }

    async fn dispatch_many(
        &self,
        commands: Vec<(Bump, CommandContext)>,
    ) -> Result<(), DispatchError> {
        if commands.iter().any(|(c, _)| c.0 == "b") && self.b_down.swap(false, Ordering::SeqCst) {
            // As a batch commit that failed part way: `a` went through, `b` did not.
            for (command, context) in commands.into_iter().filter(|(c, _)| c.0 == "a") {
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

async fn setup() -> (MemoryEventStore, Repository<Counter>, SagaRunner<Pinger>) {
    setup_with(true).await
}

async fn setup_with(b_down: bool) -> (MemoryEventStore, Repository<Counter>, SagaRunner<Pinger>) {
    let store = MemoryEventStore::new();
    let counters = Repository::<Counter>::new(store.clone());
    let dispatcher = BDownOnce {
        inner: RepositoryDispatcher::new(counters.clone(), route as Route),
        b_down: AtomicBool::new(b_down),
    };
    let runner = SagaRunner::<Pinger>::new(store.clone(), dispatcher, ());
    (store, counters, runner)
}

async fn ping(store: &MemoryEventStore, n: u64) -> RecordedEvent {
    let stream = StreamId::new("pings-1").unwrap();
    let event = NewEvent::from_domain(
        &Flow::Ping {
            instance: "1".into(),
        },
        Metadata::new_correlation(),
    )
    .unwrap();
    let expected = if n == 1 {
        ExpectedVersion::NoStream
    } else {
        ExpectedVersion::Exact(n - 1)
    };
    store.append(&stream, expected, vec![event]).await.unwrap();
    store.read_stream(&stream, n, 1).await.unwrap().remove(0)
}

async fn bumps(counters: &Repository<Counter>, id: &str) -> u64 {
    counters.load(id).await.unwrap().state.bumps
}

#[tokio::test]
async fn a_command_dispatched_again_after_a_later_one_failed_is_skipped() {
    let (store, counters, runner) = setup().await;
    let first = ping(&store, 1).await;

    // `a` is bumped, `b` is down: the event fails and the saga's state is not saved.
    let failed = runner.handle_event(&first).await;
    assert!(failed.is_err_and(|e| e.is_transient()));
    assert_eq!(
        (bumps(&counters, "a").await, bumps(&counters, "b").await),
        (1, 0)
    );

    // The redelivery decides the same on the same state: `a` is skipped, `b` goes through.
    runner.handle_event(&first).await.unwrap();
    assert_eq!(
        (bumps(&counters, "a").await, bumps(&counters, "b").await),
        (1, 1),
        "the bump of `a` went out twice"
    );

    // A later event is a new decision on a newer state: both of its commands go through.
    let second = ping(&store, 2).await;
    runner.handle_event(&second).await.unwrap();
    assert_eq!(
        (bumps(&counters, "a").await, bumps(&counters, "b").await),
        (2, 2)
    );
}

#[tokio::test]
async fn a_batch_dispatched_again_skips_what_went_through() {
    let (store, counters, runner) = setup().await;
    let first = ping(&store, 1).await;

    assert!(runner
        .handle_events(std::slice::from_ref(&first))
        .await
        .is_err());
    assert_eq!(
        (bumps(&counters, "a").await, bumps(&counters, "b").await),
        (1, 0)
    );

    runner
        .handle_events(std::slice::from_ref(&first))
        .await
        .unwrap();
    assert_eq!(
        (bumps(&counters, "a").await, bumps(&counters, "b").await),
        (1, 1),
        "the bump of `a` went out twice"
    );
}

#[tokio::test]
async fn a_saga_follows_the_log_from_its_checkpoint() {
    let (store, counters, runner) = setup_with(false).await;
    // The pings alone: the counters' own events are not the saga's business.
    let runner = runner.with_log_filter(StreamFilter::category("pings"));
    let first = ping(&store, 1).await;

    let follower = ProjectionRunner::new(store.clone(), store.clone());
    let handle = follower.spawn(std::sync::Arc::new(runner.clone()));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while bumps(&counters, "b").await < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the saga never saw the ping"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    handle.stop().await;
    assert_eq!(
        store.load("saga:pinger").await.unwrap(),
        Some(first.position),
        "the saga's place in the log is kept under its own checkpoint"
    );

    // Started again, it reads on from there: the second ping alone.
    let second = ping(&store, 2).await;
    let position = follower.catch_up(&runner).await.unwrap();
    assert_eq!(position, second.position);
    assert_eq!(
        (bumps(&counters, "a").await, bumps(&counters, "b").await),
        (2, 2)
    );
}
