//! Relays with a lease: of the instances running the same relay only one publishes, and a
//! standby takes over when the holder stops, from the checkpoint, missing nothing.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use es_core::bus::ConsumerHandle;
use es_core::memory::{MemoryEventBus, MemoryEventStore, MemoryLeaseStore};
use es_core::testing::sample_event;
use es_core::{
    async_trait, Consumer, EventBus, EventStore, ExpectedVersion, HandlerError, LeaseStore,
    MessageHandler, Position, RecordedEvent, Relay, StreamFilter, StreamId,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Long enough that a loaded machine delaying a renewal by a few hundred milliseconds does not
/// hand the lease over; every wait below is a multiple of it.
const TTL: Duration = Duration::from_millis(1500);

/// One instance's view of the shared bus: counts what this instance published.
#[derive(Debug)]
struct InstanceBus {
    bus: MemoryEventBus,
    published: AtomicUsize,
}

impl InstanceBus {
    fn new(bus: &MemoryEventBus) -> Arc<Self> {
        Arc::new(InstanceBus {
            bus: bus.clone(),
            published: AtomicUsize::new(0),
        })
    }

    fn published(&self) -> usize {
        self.published.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl EventBus for InstanceBus {
    async fn publish(&self, events: &[RecordedEvent]) -> es_core::Result<()> {
        self.bus.publish(events).await?;
        self.published.fetch_add(events.len(), Ordering::SeqCst);
        Ok(())
    }

    async fn subscribe(
        &self,
        subscription: Consumer,
        handler: Arc<dyn MessageHandler>,
    ) -> es_core::Result<ConsumerHandle> {
        self.bus.subscribe(subscription, handler).await
    }
}

/// What a consumer of the relayed events received.
#[derive(Default)]
struct Sink(Mutex<Vec<Uuid>>);

#[async_trait]
impl MessageHandler for Sink {
    async fn handle(&self, message: &RecordedEvent) -> Result<(), HandlerError> {
        self.0.lock().unwrap().push(message.event_id);
        Ok(())
    }
}

impl Sink {
    fn distinct(&self) -> HashSet<Uuid> {
        self.0.lock().unwrap().iter().copied().collect()
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

fn start(relay: Relay) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        relay
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    Running { stop, task }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

async fn append(store: &MemoryEventStore, from: u64, to: u64) {
    let stream = StreamId::for_aggregate("leased", "one").unwrap();
    for n in from..to {
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![sample_event("LeasedHappened", n)],
            )
            .await
            .unwrap();
    }
}

async fn all_ids(store: &MemoryEventStore) -> HashSet<Uuid> {
    store
        .read_all(&StreamFilter::All, Position::default(), 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect()
}

async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Cluster {
    store: MemoryEventStore,
    leases: MemoryLeaseStore,
    sink: Arc<Sink>,
    consumer: ConsumerHandle,
    buses: [Arc<InstanceBus>; 2],
    relays: [Option<Running>; 2],
}

/// Two instances of one relay on a shared store, bus and lease store, and a consumer.
async fn cluster() -> Cluster {
    let store = MemoryEventStore::new();
    let bus = MemoryEventBus::new();
    let leases = MemoryLeaseStore::new();
    let sink = Arc::new(Sink::default());
    let consumer = bus
        .subscribe(Consumer::new("sink", ["leased.#"]), sink.clone())
        .await
        .unwrap();
    let buses = [InstanceBus::new(&bus), InstanceBus::new(&bus)];
    let relay = |bus: &Arc<InstanceBus>| {
        Relay::builder("relay-leased")
            .store(store.clone())
            .bus(bus.clone())
            .checkpoints(store.clone())
            .batch_size(4)
            .lease(leases.clone(), TTL)
            .build()
    };
    let relays = [Some(start(relay(&buses[0]))), Some(start(relay(&buses[1])))];
    Cluster {
        store,
        leases,
        sink,
        consumer,
        buses,
        relays,
    }
}

impl Cluster {
    /// Waits until one instance published `n` events; returns which one.
    async fn holder_after(&self, n: usize) -> usize {
        let buses = self.buses.clone();
        wait_until("one instance published everything", TTL * 10, || {
            buses.iter().any(|b| b.published() >= n)
        })
        .await;
        if self.buses[0].published() >= n {
            0
        } else {
            1
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_publishes_and_a_standby_takes_over_when_it_stops() {
    let mut c = cluster().await;
    append(&c.store, 0, 20).await;
    let holder = c.holder_after(20).await;
    let standby = 1 - holder;

    // Both keep running for several renewals while more events commit: still only one publishes.
    for round in 0..4 {
        append(&c.store, 20 + round * 5, 25 + round * 5).await;
        tokio::time::sleep(TTL / 2).await;
    }
    let holder_published = c.holder_after(40).await;
    assert_eq!(holder_published, holder, "the lease stayed with its holder");
    assert_eq!(
        c.buses[standby].published(),
        0,
        "the standby published nothing while the holder ran"
    );
    wait_until("the consumer got the first 40", TTL * 5, || {
        c.sink.len() >= 40
    })
    .await;
    assert_eq!(c.sink.len(), 40, "each event was published once");

    // The holder stops (releasing its lease); the standby takes over within the TTL.
    c.relays[holder].take().unwrap().stop().await;
    assert_eq!(
        c.leases.holder("relay-leased"),
        None,
        "stopping released the lease"
    );
    append(&c.store, 40, 50).await;
    let standby_bus = c.buses[standby].clone();
    wait_until("the standby took over", TTL, || standby_bus.published() > 0).await;
    wait_until("the standby published the rest", TTL * 5, || {
        standby_bus.published() >= 10
    })
    .await;
    assert_eq!(
        standby_bus.published(),
        10,
        "the standby started from the holder's checkpoint"
    );

    let expected = all_ids(&c.store).await;
    assert_eq!(expected.len(), 50);
    let sink = c.sink.clone();
    wait_until("the consumer got all 50", TTL * 5, || {
        sink.distinct().len() >= 50
    })
    .await;
    assert_eq!(c.sink.distinct(), expected, "nothing is missing");
    c.relays[standby].take().unwrap().stop().await;
    c.consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_holder_that_died_once_its_lease_expires() {
    let mut c = cluster().await;
    append(&c.store, 0, 10).await;
    let holder = c.holder_after(10).await;
    let standby = 1 - holder;
    let sink = c.sink.clone();
    wait_until("the consumer got the first 10", TTL * 5, || {
        sink.len() >= 10
    })
    .await;

    // Killed: no release, the lease runs out.
    let dead = c.relays[holder].take().unwrap();
    dead.task.abort();
    let _ = dead.task.await;
    let died_at = tokio::time::Instant::now();
    append(&c.store, 10, 30).await;
    let standby_bus = c.buses[standby].clone();
    wait_until(
        "the standby published everything after the checkpoint",
        TTL * 3,
        || standby_bus.published() >= 20,
    )
    .await;
    assert!(
        died_at.elapsed() >= TTL / 2,
        "the standby waited for the lease to expire"
    );
    let expected = all_ids(&c.store).await;
    wait_until("the consumer got all 30", TTL * 5, || {
        sink.distinct().len() >= 30
    })
    .await;
    assert_eq!(sink.distinct(), expected, "nothing is missing");
    c.relays[standby].take().unwrap().stop().await;
    c.consumer.stop().await;
}

/// A lease store whose answers for one holder can be turned off, as if another had taken it.
#[derive(Debug)]
struct Revocable {
    inner: MemoryLeaseStore,
    denied: AtomicBool,
}

#[async_trait]
impl LeaseStore for Revocable {
    async fn try_acquire(&self, name: &str, holder: &str, ttl: Duration) -> es_core::Result<bool> {
        if self.denied.load(Ordering::SeqCst) {
            return Ok(false);
        }
        self.inner.try_acquire(name, holder, ttl).await
    }

    async fn release(&self, name: &str, holder: &str) -> es_core::Result<()> {
        self.inner.release(name, holder).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_loses_its_lease_stops_publishing_and_resumes_from_the_checkpoint() {
    let store = MemoryEventStore::new();
    let bus = InstanceBus::new(&MemoryEventBus::new());
    let leases = Arc::new(Revocable {
        inner: MemoryLeaseStore::new(),
        denied: AtomicBool::new(false),
    });
    let relay = Relay::builder("relay-revoked")
        .store(store.clone())
        .bus(bus.clone())
        .checkpoints(store.clone())
        .lease(leases.clone(), TTL)
        .build();
    let running = start(relay.clone());
    append(&store, 0, 5).await;
    let b = bus.clone();
    wait_until("the relay published the first 5", TTL * 5, || {
        b.published() >= 5
    })
    .await;

    // Another holder "takes" the lease: within one renewal period the relay stops publishing.
    leases.denied.store(true, Ordering::SeqCst);
    tokio::time::sleep(TTL * 2 / 3).await;
    append(&store, 5, 10).await;
    tokio::time::sleep(TTL).await;
    assert_eq!(
        bus.published(),
        5,
        "a relay without its lease publishes nothing"
    );

    // The checkpoint moves on meanwhile (as another holder would move it).
    let head = store.head().await.unwrap();
    es_core::CheckpointStore::save(&store, "relay-revoked", head)
        .await
        .unwrap();
    append(&store, 10, 13).await;
    leases.denied.store(false, Ordering::SeqCst);
    wait_until("the relay took the lease back", TTL * 3, || {
        b.published() >= 8
    })
    .await;
    tokio::time::sleep(TTL / 2).await;
    assert_eq!(
        bus.published(),
        8,
        "after reacquiring, the relay reloaded the checkpoint and published only what follows"
    );
    running.stop().await;
    assert_eq!(
        relay.checkpoint().await.unwrap(),
        store.head().await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_without_a_lease_behaves_as_before() {
    let store = MemoryEventStore::new();
    let bus = InstanceBus::new(&MemoryEventBus::new());
    let relay = Relay::builder("relay-plain")
        .store(store.clone())
        .bus(bus.clone())
        .checkpoints(store.clone())
        .build();
    let running = start(relay.clone());
    append(&store, 0, 7).await;
    let b = bus.clone();
    wait_until("the relay published all 7", TTL * 5, || b.published() >= 7).await;
    running.stop().await;
    assert_eq!(
        relay.checkpoint().await.unwrap(),
        store.head().await.unwrap()
    );
}
