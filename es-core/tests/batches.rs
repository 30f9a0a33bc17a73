//! Batched consumers end to end on the memory backends: a repository commits a batch of
//! commands in one unit of work, a saga handles a batch with one round of store calls, and
//! the memory bus hands a backlog over in batches while a poison message still goes to the
//! dead-letter queue alone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use es_core::bus::RetryPolicy;
use es_core::memory::{MemoryEventBus, MemoryEventStore};
use es_core::{
    async_trait, Aggregate, CommandContext, CommandDispatcher, CommandError, CommitOutcome,
    Consumer, DeadLetterQueue, DispatchError, DomainEvent, Envelope, EventBus, EventStore,
    EventSubscription, HandlerError, InboxEntry, MessageHandler, Metadata, Page, Position,
    RecordedEvent, Repository, Result, Saga, SagaDecision, SagaRunner, SagaStore, StreamFilter,
    StreamId, UnitOfWork,
};
use serde::{Deserialize, Serialize};

// ---- a counter aggregate and a store that counts commits --------------------------------

#[derive(Debug, Clone, Default, PartialEq)]
struct Counter {
    n: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Counted {
    Added { by: u64 },
}
impl DomainEvent for Counted {}

#[derive(Debug, thiserror::Error)]
#[error("too many")]
struct TooMany;

impl Aggregate for Counter {
    const TYPE: &'static str = "counter";
    type Command = u64;
    type Event = Counted;
    type Error = TooMany;

    fn handle(&self, by: u64) -> Result<Vec<Counted>, TooMany> {
        match by {
            0 => Ok(Vec::new()),
            by if by > 100 => Err(TooMany),
            by => Ok(vec![Counted::Added { by }]),
        }
    }

    fn apply(&mut self, event: &Counted) {
        let Counted::Added { by } = event;
        self.n += by;
    }
}

/// The memory store, counting commits.
#[derive(Debug, Default)]
struct Counting {
    inner: MemoryEventStore,
    commits: AtomicUsize,
}

#[async_trait]
impl EventStore for Counting {
    async fn commit(&self, unit: UnitOfWork) -> Result<CommitOutcome> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        self.inner.commit(unit).await
    }
    async fn read_stream(
        &self,
        s: &StreamId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.inner.read_stream(s, from, limit).await
    }
    async fn stream_version(&self, s: &StreamId) -> Result<Option<u64>> {
        self.inner.stream_version(s).await
    }
    async fn read_all(
        &self,
        f: &StreamFilter,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.inner.read_all(f, after, limit).await
    }
    async fn read_page(&self, f: &StreamFilter, after: Position, limit: usize) -> Result<Page> {
        self.inner.read_page(f, after, limit).await
    }
    async fn head(&self) -> Result<Position> {
        self.inner.head().await
    }
    fn subscribe(&self, f: StreamFilter, after: Position) -> EventSubscription {
        self.inner.subscribe(f, after)
    }
}

fn message(n: u64) -> RecordedEvent {
    RecordedEvent {
        event_id: uuid::Uuid::now_v7(),
        stream_id: StreamId::for_aggregate("source", &n.to_string()).unwrap(),
        stream_version: 1,
        position: Position::new(n, n),
        recorded_at: Utc::now(),
        event_type: "Happened".into(),
        schema_version: 1,
        payload: bytes::Bytes::from_static(b"{}"),
        metadata: Metadata::default(),
    }
}

#[tokio::test]
async fn a_batch_of_commands_commits_once_with_every_inbox_entry() {
    let store = Arc::new(Counting::default());
    let counters = Repository::<Counter>::new(store.clone());
    let messages: Vec<_> = (1..=4).map(message).collect();
    let batch = vec![
        ("a", 1, CommandContext::caused_by(&messages[0], "c")),
        ("b", 2, CommandContext::caused_by(&messages[1], "c")),
        ("a", 3, CommandContext::caused_by(&messages[2], "c")),
        // Decides nothing, yet its message counts as handled.
        ("b", 0, CommandContext::caused_by(&messages[3], "c")),
    ];
    let done = counters.execute_batch(batch).await.unwrap();
    assert_eq!(
        store.commits.load(Ordering::SeqCst),
        1,
        "one commit for the batch"
    );
    let versions: Vec<u64> = done.iter().map(|e| e.version).collect();
    assert_eq!(versions, [2, 1, 2, 1]);
    assert_eq!(done[2].events, [Counted::Added { by: 3 }]);
    assert!(done[3].events.is_empty());
    assert_eq!(
        counters.load("a").await.unwrap().state.n,
        4,
        "a later command saw the earlier one"
    );
    assert_eq!(counters.load("b").await.unwrap().state.n, 2);
    for m in &messages {
        let again = UnitOfWork::new().handled(InboxEntry::new("c", m.event_id));
        assert_eq!(
            store.commit(again).await.unwrap(),
            CommitOutcome::AlreadyHandled,
            "every message of the batch is in the inbox"
        );
    }
}

#[tokio::test]
async fn a_batch_holding_a_handled_message_is_carried_out_one_at_a_time() {
    let store = Arc::new(Counting::default());
    let counters = Repository::<Counter>::new(store.clone());
    let (old, new) = (message(1), message(2));
    counters
        .execute("a", 5, CommandContext::caused_by(&old, "c"))
        .await
        .unwrap();
    let done = counters
        .execute_batch(vec![
            ("a", 5, CommandContext::caused_by(&old, "c")),
            ("a", 7, CommandContext::caused_by(&new, "c")),
        ])
        .await
        .unwrap();
    assert!(done[0].already_handled, "the redelivery is skipped");
    assert!(!done[1].already_handled);
    assert_eq!(
        counters.load("a").await.unwrap().state.n,
        12,
        "the new one still counts, once"
    );
}

#[tokio::test]
async fn a_refused_command_refuses_the_batch_and_writes_nothing() {
    let store = Arc::new(Counting::default());
    let counters = Repository::<Counter>::new(store.clone());
    let outcome = counters
        .execute_batch(vec![
            ("a", 1, CommandContext::caused_by(&message(1), "c")),
            ("b", 101, CommandContext::caused_by(&message(2), "c")),
        ])
        .await;
    assert!(matches!(outcome, Err(CommandError::Rejected(TooMany))));
    assert_eq!(store.commits.load(Ordering::SeqCst), 0);
    assert_eq!(counters.load("a").await.unwrap().version, 0);
}

// ---- a saga, batched ----------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Flow {
    Placed { id: String },
    Paid { id: String },
}
impl DomainEvent for Flow {}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkout {
    steps: u32,
}

impl Saga for Checkout {
    const NAME: &'static str = "batched-checkout";
    type Event = Flow;
    type Command = String;
    type Deadline = String;
    type Config = ();

    fn instance_id(event: &Envelope<Flow>) -> Option<String> {
        match &event.event {
            Flow::Placed { id } | Flow::Paid { id } => Some(id.clone()),
        }
    }

    fn handle(&mut self, _: &(), event: &Envelope<Flow>) -> SagaDecision<String, String> {
        self.steps += 1;
        match &event.event {
            Flow::Placed { id } => {
                SagaDecision::none().send(format!("reserve {id} at step {}", self.steps))
            }
            Flow::Paid { id } => SagaDecision::none()
                .send(format!("confirm {id} at step {}", self.steps))
                .complete(),
        }
    }

    fn on_deadline(&mut self, _: &(), _: String) -> SagaDecision<String, String> {
        SagaDecision::none()
    }
}

/// Records every command, and how many calls carried them.
#[derive(Default)]
struct Recorder {
    commands: Mutex<Vec<String>>,
    calls: AtomicUsize,
}

#[async_trait]
impl CommandDispatcher<String> for Recorder {
    async fn dispatch(&self, command: String, _: CommandContext) -> Result<(), DispatchError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.commands.lock().unwrap().push(command);
        Ok(())
    }

    async fn dispatch_many(
        &self,
        commands: Vec<(String, CommandContext)>,
    ) -> Result<(), DispatchError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.commands
            .lock()
            .unwrap()
            .extend(commands.into_iter().map(|(c, _)| c));
        Ok(())
    }
}

fn flow(event: Flow) -> RecordedEvent {
    let (event_type, payload) = event.encode().unwrap();
    RecordedEvent {
        event_type,
        payload,
        ..message(1)
    }
}

#[tokio::test]
async fn a_saga_batch_goes_instance_by_instance_in_rounds_and_skips_what_it_handled() {
    let store = Arc::new(MemoryEventStore::new());
    let recorder = Arc::new(Recorder::default());
    let runner = SagaRunner::<Checkout>::new(store.clone(), recorder.clone(), ());
    let placed_a = flow(Flow::Placed { id: "a".into() });
    // Handled before: a redelivery in the batch dispatches nothing again.
    runner.handle_event(&placed_a).await.unwrap();
    let batch = vec![
        placed_a.clone(),
        flow(Flow::Placed { id: "b".into() }),
        flow(Flow::Paid { id: "b".into() }),
        flow(Flow::Paid { id: "a".into() }),
    ];
    runner.handle_batch(&batch).await.unwrap();
    let mut commands = recorder.commands.lock().unwrap().clone();
    commands.sort();
    assert_eq!(
        commands,
        [
            "confirm a at step 2",
            "confirm b at step 2",
            "reserve a at step 1",
            "reserve b at step 1",
        ],
        "each event once; a later event of an instance sees the state the earlier one left"
    );
    assert_eq!(
        recorder.calls.load(Ordering::SeqCst),
        3,
        "one call before, then one per round: (placed b, paid a), then (paid b)"
    );
    for id in ["a", "b"] {
        assert!(
            store
                .load(Checkout::NAME, id)
                .await
                .unwrap()
                .unwrap()
                .completed
        );
    }
    // The same batch again does nothing.
    runner.handle_batch(&batch).await.unwrap();
    assert_eq!(recorder.commands.lock().unwrap().len(), 4);
}

// ---- the memory bus, batched ------------------------------------------------------------

/// Counts into the repository in batches, and refuses a poison message.
struct CountingConsumer {
    counters: Repository<Counter>,
    poison: uuid::Uuid,
    batches: Mutex<Vec<usize>>,
}

impl CountingConsumer {
    fn command(
        &self,
        message: &RecordedEvent,
    ) -> Result<(String, u64, CommandContext), HandlerError> {
        if message.event_id == self.poison {
            return Err(HandlerError::reject("poison"));
        }
        Ok((
            "total".to_owned(),
            1,
            CommandContext::caused_by(message, "counting"),
        ))
    }
}

#[async_trait]
impl MessageHandler for CountingConsumer {
    async fn handle(&self, message: &RecordedEvent) -> Result<(), HandlerError> {
        let (id, by, context) = self.command(message)?;
        self.counters
            .execute(&id, by, context)
            .await
            .map_err(HandlerError::reject)?;
        Ok(())
    }

    async fn handle_batch(&self, messages: &[RecordedEvent]) -> Result<(), HandlerError> {
        let batch = messages
            .iter()
            .map(|m| self.command(m))
            .collect::<Result<Vec<_>, _>>()?;
        self.counters
            .execute_batch(batch)
            .await
            .map_err(HandlerError::reject)?;
        self.batches.lock().unwrap().push(messages.len());
        Ok(())
    }
}

#[tokio::test]
async fn a_backlog_commits_in_batches_and_a_poison_message_is_dead_lettered_alone() {
    let store = Arc::new(Counting::default());
    let bus = MemoryEventBus::new();
    let messages: Vec<RecordedEvent> = (0..50)
        .map(|n| RecordedEvent {
            event_type: "Happened".into(),
            stream_id: StreamId::for_aggregate("source", &n.to_string()).unwrap(),
            ..message(n)
        })
        .collect();
    let consumer = Arc::new(CountingConsumer {
        counters: Repository::new(store.clone()),
        poison: messages[17].event_id,
        batches: Mutex::default(),
    });
    let subscription = Consumer::new("counting", ["source.#"])
        .with_batch(16)
        .with_retry(RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
        });
    // The queue exists from the first subscription; the backlog piles up meanwhile.
    bus.subscribe(subscription.clone(), consumer.clone())
        .await
        .unwrap()
        .stop()
        .await;
    bus.publish(&messages).await.unwrap();
    let handle = bus.subscribe(subscription, consumer.clone()).await.unwrap();
    let counters = Repository::<Counter>::new(store.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while counters.load("total").await.unwrap().state.n < 49
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.stop().await;
    assert_eq!(
        counters.load("total").await.unwrap().state.n,
        49,
        "every good message counted once"
    );
    let dead = bus.dead_letters("counting", 10).await.unwrap();
    assert_eq!(dead.len(), 1, "only the poison message is a dead letter");
    assert_eq!(
        dead[0].event.as_ref().unwrap().event_id,
        messages[17].event_id
    );
    let batches = consumer.batches.lock().unwrap().clone();
    assert!(
        batches.iter().any(|&n| n > 1),
        "the backlog came in batches: {batches:?}"
    );
    assert!(
        store.commits.load(Ordering::SeqCst) < 49,
        "fewer commits than messages: {}",
        store.commits.load(Ordering::SeqCst)
    );
}
