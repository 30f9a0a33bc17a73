//! Sagas with deadlines, projections with checkpoints, inline projections and the relay, on the
//! in-memory backends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use es_core::memory::{MemoryEventBus, MemoryEventStore};
use es_core::saga::SagaOutcome;
use es_core::testing::{envelope, SagaTest};
use es_core::{
    BoxError, CommandContext, CommandDispatcher, Consumer, DispatchError, DomainEvent, Envelope,
    EventBus, EventStore, ExpectedVersion, InlineProjection, MessageHandler, Metadata, NewEvent,
    Projection, ProjectionRunner, RecordedEvent, Relay, Saga, SagaDecision, SagaRunner, SagaStore,
    StreamFilter, StreamId,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Flow {
    Started { id: String },
    Paid { id: String },
}
impl DomainEvent for Flow {}

#[derive(Debug, Clone, PartialEq)]
enum Cmd {
    Ship(String),
    Cancel(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Timeout {
    id: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkout {
    id: String,
    paid: bool,
}

impl Saga for Checkout {
    const NAME: &'static str = "checkout";
    type Event = Flow;
    type Command = Cmd;
    type Deadline = Timeout;
    type Config = Duration;

    fn instance_id(event: &Envelope<Flow>) -> Option<String> {
        match &event.event {
            Flow::Started { id } | Flow::Paid { id } => Some(id.clone()),
        }
    }

    fn handle(&mut self, timeout: &Duration, event: &Envelope<Flow>) -> SagaDecision<Cmd, Timeout> {
        match &event.event {
            Flow::Started { id } => {
                self.id = id.clone();
                let due = event.recorded_at + chrono::Duration::from_std(*timeout).unwrap();
                SagaDecision::none().schedule("timeout", due, Timeout { id: id.clone() })
            }
            Flow::Paid { id } => {
                self.paid = true;
                SagaDecision::none()
                    .send(Cmd::Ship(id.clone()))
                    .cancel("timeout")
                    .complete()
            }
        }
    }

    fn on_deadline(&mut self, _: &Duration, deadline: Timeout) -> SagaDecision<Cmd, Timeout> {
        SagaDecision::none()
            .send(Cmd::Cancel(deadline.id))
            .complete()
    }
}

#[derive(Default)]
struct Dispatched(Mutex<Vec<(Cmd, Metadata)>>);

#[es_core::async_trait]
impl CommandDispatcher<Cmd> for Dispatched {
    async fn dispatch(&self, command: Cmd, context: CommandContext) -> Result<(), DispatchError> {
        self.0.lock().unwrap().push((command, context.metadata));
        Ok(())
    }
}

impl Dispatched {
    fn commands(&self) -> Vec<Cmd> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(c, _)| c.clone())
            .collect()
    }
}

async fn record(store: &MemoryEventStore, event: Flow, meta: Metadata) -> RecordedEvent {
    let id = match &event {
        Flow::Started { id } | Flow::Paid { id } => id.clone(),
    };
    let stream = StreamId::for_aggregate("flow", &id).unwrap();
    let r = store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![NewEvent::from_domain(&event, meta).unwrap()],
        )
        .await
        .unwrap();
    store
        .read_stream(&stream, r.next_expected_version, 1)
        .await
        .unwrap()
        .remove(0)
}

#[tokio::test]
async fn a_deadline_fires_once_even_across_a_restart() {
    let store = MemoryEventStore::new();
    let dispatched = Arc::new(Dispatched::default());
    let runner = SagaRunner::<Checkout>::new(store.clone(), dispatched.clone(), Duration::ZERO);
    let meta = Metadata::new_correlation();
    let started = record(&store, Flow::Started { id: "o1".into() }, meta.clone()).await;
    assert_eq!(
        runner.handle_event(&started).await.unwrap(),
        SagaOutcome::Handled
    );
    assert_eq!(store.deadlines_of("checkout", "o1").await.unwrap().len(), 1);

    // A "restarted" runner (new instance, same store) and the old one both try to fire.
    let restarted = SagaRunner::<Checkout>::new(store.clone(), dispatched.clone(), Duration::ZERO);
    let now = Utc::now() + chrono::Duration::seconds(1);
    let fired = restarted.fire_due(now).await.unwrap() + runner.fire_due(now).await.unwrap();
    assert_eq!(fired, 1, "the deadline fires once");
    assert_eq!(dispatched.commands(), vec![Cmd::Cancel("o1".into())]);
    let (_, cancel_meta) = dispatched.0.lock().unwrap()[0].clone();
    assert_eq!(
        cancel_meta.correlation_id, meta.correlation_id,
        "the deadline keeps the correlation"
    );

    // The instance is complete: a late payment changes nothing.
    let late = record(&store, Flow::Paid { id: "o1".into() }, meta).await;
    assert_eq!(
        runner.handle_event(&late).await.unwrap(),
        SagaOutcome::Ignored
    );
    assert_eq!(dispatched.commands().len(), 1);
}

#[tokio::test]
async fn a_redelivered_event_is_not_handled_twice_and_cancels_its_deadline() {
    let store = MemoryEventStore::new();
    let dispatched = Arc::new(Dispatched::default());
    let runner =
        SagaRunner::<Checkout>::new(store.clone(), dispatched.clone(), Duration::from_secs(3600));
    let meta = Metadata::new_correlation();
    let started = record(&store, Flow::Started { id: "o2".into() }, meta.clone()).await;
    let paid = record(&store, Flow::Paid { id: "o2".into() }, meta).await;
    assert_eq!(
        runner.handle_event(&started).await.unwrap(),
        SagaOutcome::Handled
    );
    assert_eq!(
        runner.handle_event(&started).await.unwrap(),
        SagaOutcome::AlreadyHandled
    );
    assert_eq!(
        runner.handle_event(&paid).await.unwrap(),
        SagaOutcome::Handled
    );
    assert_eq!(dispatched.commands(), vec![Cmd::Ship("o2".into())]);
    assert!(
        store
            .deadlines_of("checkout", "o2")
            .await
            .unwrap()
            .is_empty(),
        "paying cancels the timeout"
    );
    assert_eq!(
        runner
            .fire_due(Utc::now() + chrono::Duration::days(1))
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn events_the_saga_does_not_know_are_ignored() {
    let store = MemoryEventStore::new();
    let runner = SagaRunner::<Checkout>::new(store.clone(), Dispatched::default(), Duration::ZERO);
    let stream = StreamId::new("other-1").unwrap();
    store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![NewEvent::raw("Unrelated", "{}")],
        )
        .await
        .unwrap();
    let event = store.read_stream(&stream, 1, 1).await.unwrap().remove(0);
    assert_eq!(
        runner.handle_event(&event).await.unwrap(),
        SagaOutcome::Ignored
    );
}

#[test]
fn the_saga_kit_shows_decisions() {
    let started = envelope(
        "flow-o3",
        1,
        Flow::Started { id: "o3".into() },
        Metadata::default(),
    );
    let (decision, saga) = SagaTest::<Checkout>::new(Duration::from_secs(30)).when(started.clone());
    assert_eq!(decision.schedule.len(), 1);
    assert_eq!(
        decision.schedule[0].1,
        started.recorded_at + chrono::Duration::seconds(30)
    );
    assert_eq!(saga.id, "o3");
    let (decision, saga) = SagaTest::<Checkout>::new(Duration::from_secs(30))
        .given(vec![started])
        .when(envelope(
            "flow-o3",
            2,
            Flow::Paid { id: "o3".into() },
            Metadata::default(),
        ));
    assert_eq!(decision.commands, vec![Cmd::Ship("o3".into())]);
    assert!(decision.complete && saga.paid);
}

/// Counts events per stream; used as both a projection and an inline projection.
#[derive(Default)]
struct Counter {
    seen: Mutex<Vec<RecordedEvent>>,
}

#[es_core::async_trait]
impl Projection for Counter {
    fn name(&self) -> &str {
        "counter"
    }
    fn filter(&self) -> StreamFilter {
        StreamFilter::category("flow")
    }
    async fn apply(&self, event: &RecordedEvent) -> Result<(), BoxError> {
        self.seen.lock().unwrap().push(event.clone());
        Ok(())
    }
}

impl InlineProjection for Counter {
    fn name(&self) -> &str {
        "inline-counter"
    }
    fn apply(&self, event: &RecordedEvent) -> Result<(), BoxError> {
        if event.event_type == "Poison" {
            return Err("poison refused".into());
        }
        self.seen.lock().unwrap().push(event.clone());
        Ok(())
    }
}

#[tokio::test]
async fn a_projection_resumes_from_its_checkpoint() {
    let store = MemoryEventStore::new();
    for i in 0..5 {
        record(
            &store,
            Flow::Started {
                id: format!("p{i}"),
            },
            Metadata::default(),
        )
        .await;
    }
    let runner = ProjectionRunner::new(store.clone(), store.clone());
    let first = Counter::default();
    let checkpoint = runner.catch_up(&first).await.unwrap();
    assert_eq!(first.seen.lock().unwrap().len(), 5);
    assert_eq!(checkpoint, store.head().await.unwrap());

    for i in 5..8 {
        record(
            &store,
            Flow::Started {
                id: format!("p{i}"),
            },
            Metadata::default(),
        )
        .await;
    }
    // A new instance with the same name only sees what came after the checkpoint.
    let second = Arc::new(Counter::default());
    let mut handle = runner.spawn(second.clone());
    handle.wait_for(store.head().await.unwrap()).await;
    assert_eq!(second.seen.lock().unwrap().len(), 3);
    record(&store, Flow::Paid { id: "p0".into() }, Metadata::default()).await;
    let head = store.head().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), handle.wait_for(head))
        .await
        .expect("live events arrive");
    assert_eq!(second.seen.lock().unwrap().len(), 4);
    assert_eq!(handle.status().position, head);
    handle.stop().await;
}

#[tokio::test]
async fn projections_under_a_service_token_stop_alone_or_all_together() {
    let store = MemoryEventStore::new();
    // Two runners with checkpoints of their own: the two projections share a name.
    let runner = || ProjectionRunner::new(store.clone(), MemoryEventStore::new());
    let service = CancellationToken::new();
    let (a, b) = (Arc::new(Counter::default()), Arc::new(Counter::default()));
    let first = runner().spawn_until(a.clone(), &service);
    let mut second = runner().spawn_until(b.clone(), &service);

    // Stopping one stops that one only: the service's token stays as it was.
    first.stop().await;
    assert!(!service.is_cancelled());
    record(
        &store,
        Flow::Started { id: "t1".into() },
        Metadata::default(),
    )
    .await;
    let head = store.head().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), second.wait_for(head))
        .await
        .expect("the other projection still follows the log");
    assert_eq!(
        (a.seen.lock().unwrap().len(), b.seen.lock().unwrap().len()),
        (0, 1)
    );

    // Cancelling the service's token stops every projection under it.
    service.cancel();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !second.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the service's cancel stops the projection");
}

#[tokio::test]
async fn an_inline_projection_sees_the_append_before_it_returns_and_can_veto_it() {
    let counter = Arc::new(Counter::default());
    let store = MemoryEventStore::new().with_inline_projection(counter.clone());
    record(
        &store,
        Flow::Started { id: "i1".into() },
        Metadata::default(),
    )
    .await;
    assert_eq!(counter.seen.lock().unwrap().len(), 1, "read-your-writes");
    let stream = StreamId::new("flow-i2").unwrap();
    let err = store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![NewEvent::raw("Poison", "{}")],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, es_core::Error::Backend { .. }));
    assert_eq!(
        store.stream_version(&stream).await.unwrap(),
        None,
        "a failing inline projection fails the append"
    );
}

struct Collect(Mutex<Vec<RecordedEvent>>);

#[es_core::async_trait]
impl MessageHandler for Collect {
    async fn handle(&self, message: &RecordedEvent) -> Result<(), es_core::HandlerError> {
        self.0.lock().unwrap().push(message.clone());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_every_committed_event_once_and_resumes_from_its_checkpoint() {
    let store = MemoryEventStore::new();
    let bus = MemoryEventBus::new();
    let sink = Arc::new(Collect(Mutex::default()));
    let consumer = bus
        .subscribe(
            Consumer::new("sink", ["flow.#"]).with_prefetch(1),
            sink.clone(),
        )
        .await
        .unwrap();
    for i in 0..10 {
        record(
            &store,
            Flow::Started {
                id: format!("r{i}"),
            },
            Metadata::default(),
        )
        .await;
    }
    let relay = Relay::builder("relay")
        .store(store.clone())
        .bus(bus.clone())
        .checkpoints(store.clone())
        .batch_size(3)
        .build();
    assert_eq!(relay.relay_available().await.unwrap(), 10);
    assert_eq!(
        relay.relay_available().await.unwrap(),
        0,
        "the checkpoint moved past them"
    );
    assert_eq!(
        relay.checkpoint().await.unwrap(),
        store.head().await.unwrap()
    );

    // The live loop picks up new commits.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let live = relay.clone();
    let task = tokio::spawn(async move {
        live.run(async {
            let _ = stop_rx.await;
        })
        .await
    });
    for i in 10..15 {
        record(
            &store,
            Flow::Started {
                id: format!("r{i}"),
            },
            Metadata::default(),
        )
        .await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sink.0.lock().unwrap().len() < 15 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_tx.send(()).unwrap();
    task.await.unwrap();
    consumer.stop().await;
    let got = sink.0.lock().unwrap().clone();
    assert_eq!(got.len(), 15, "every committed event was published once");
    let mut ids: Vec<_> = got.iter().map(|e| e.event_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 15);
}

/// A checkpoint store that counts the saves it passes on.
#[derive(Debug, Clone, Default)]
struct CountedCheckpoints {
    inner: MemoryEventStore,
    saves: Arc<std::sync::atomic::AtomicUsize>,
}

#[es_core::async_trait]
impl es_core::CheckpointStore for CountedCheckpoints {
    async fn load(&self, name: &str) -> es_core::Result<Option<es_core::Position>> {
        es_core::CheckpointStore::load(&self.inner, name).await
    }

    async fn save(&self, name: &str, position: es_core::Position) -> es_core::Result<()> {
        self.saves.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        es_core::CheckpointStore::save(&self.inner, name, position).await
    }
}

/// With a checkpoint interval, a running projection saves its checkpoint once per interval
/// however many events it applies meanwhile, gets there once the events stop, and saves what
/// it applied when it is stopped; without one it saves after every event.
#[tokio::test]
async fn a_checkpoint_interval_saves_once_per_interval_and_on_stop() {
    use es_core::CheckpointStore;
    use std::sync::atomic::Ordering;

    let store = MemoryEventStore::new();
    let checkpoints = CountedCheckpoints::default();
    let runner = ProjectionRunner::new(store.clone(), checkpoints.clone())
        .with_checkpoint_interval(Duration::from_millis(300));
    let counter = Arc::new(Counter::default());
    let mut handle = runner.spawn(counter.clone());
    for i in 0..40 {
        record(
            &store,
            Flow::Started {
                id: format!("c{i}"),
            },
            Metadata::default(),
        )
        .await;
    }
    let head = store.head().await.unwrap();
    handle.wait_for(head).await;
    assert_eq!(counter.seen.lock().unwrap().len(), 40);
    assert!(
        checkpoints.saves.load(Ordering::SeqCst) <= 1,
        "at most one save within the interval: {}",
        checkpoints.saves.load(Ordering::SeqCst)
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(checkpoints.load("counter").await.unwrap(), Some(head));
    let saves = checkpoints.saves.load(Ordering::SeqCst);
    assert!((1..=2).contains(&saves), "{saves} saves for 40 events");

    // Applied, not saved yet when it stops: saved on the way out.
    record(&store, Flow::Paid { id: "c0".into() }, Metadata::default()).await;
    let head = store.head().await.unwrap();
    handle.wait_for(head).await;
    handle.stop().await;
    assert_eq!(checkpoints.load("counter").await.unwrap(), Some(head));

    // Without an interval: a save per event.
    let every = CountedCheckpoints::default();
    let mut handle =
        ProjectionRunner::new(store.clone(), every.clone()).spawn(Arc::new(Counter::default()));
    handle.wait_for(head).await;
    handle.stop().await;
    assert_eq!(every.saves.load(Ordering::SeqCst), 41);
}

/// A relay with a checkpoint interval saves once per interval however many batches it
/// publishes meanwhile, gets there once the events stop, and saves what it published when it
/// is stopped.
#[tokio::test]
async fn a_relay_checkpoint_interval_saves_once_per_interval_and_on_stop() {
    use es_core::testing::RecordingHandler;
    use es_core::CheckpointStore;
    use std::sync::atomic::Ordering;

    let store = MemoryEventStore::new();
    let bus = MemoryEventBus::new();
    let handler = RecordingHandler::new();
    let _consumer = bus
        .subscribe(Consumer::new("interval-consumer", ["#"]), handler.clone())
        .await
        .unwrap();
    let checkpoints = CountedCheckpoints::default();
    let relay = Relay::builder("interval-relay")
        .store(store.clone())
        .bus(bus.clone())
        .checkpoints(checkpoints.clone())
        .checkpoint_interval(Duration::from_millis(300))
        .build();
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let (relay, stop) = (relay.clone(), stop.clone());
        async move { relay.run(stop.cancelled_owned()).await }
    });
    let delivered = |n: usize| {
        let handler = handler.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(10), async {
                while handler.handled().len() < n {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("the relay publishes the events")
        }
    };
    // One at a time: a batch each.
    let started = std::time::Instant::now();
    for i in 0..20 {
        record(
            &store,
            Flow::Started {
                id: format!("r{i}"),
            },
            Metadata::default(),
        )
        .await;
        delivered(i + 1).await;
    }
    let intervals = started.elapsed().as_millis() / 300;
    let saves = checkpoints.saves.load(Ordering::SeqCst);
    assert!(
        saves as u128 <= intervals + 1 && saves < 20,
        "{saves} saves for 20 batches in {} intervals",
        intervals
    );
    let head = store.head().await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        checkpoints.load("interval-relay").await.unwrap(),
        Some(head)
    );

    record(&store, Flow::Paid { id: "r0".into() }, Metadata::default()).await;
    delivered(21).await;
    stop.cancel();
    running.await.unwrap();
    assert_eq!(
        checkpoints.load("interval-relay").await.unwrap(),
        Some(store.head().await.unwrap()),
        "saved on the way out"
    );
}
