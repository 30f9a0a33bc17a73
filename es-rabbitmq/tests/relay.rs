//! The outbox relay onto RabbitMQ: killed between publish and checkpoint, it loses nothing,
//! and the consumers' inbox drops the duplicates.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use es_core::bus::{Consumer, HandlerError, MessageHandler};
use es_core::memory::MemoryEventStore;
use es_core::testing::sample_event;
use es_core::{
    CheckpointStore, Error, EventBus, EventStore, ExpectedVersion, Inbox, Position, RecordedEvent,
    Result, StreamId,
};
use uuid::Uuid;

/// A checkpoint store that fails saves while `crash` is set: the relay has published its
/// batch and dies before the checkpoint is written.
#[derive(Debug)]
struct CrashingCheckpoints {
    inner: MemoryEventStore,
    crash: AtomicBool,
}

#[async_trait]
impl CheckpointStore for CrashingCheckpoints {
    async fn load(&self, name: &str) -> Result<Option<Position>> {
        self.inner.load(name).await
    }

    async fn save(&self, name: &str, position: Position) -> Result<()> {
        if self.crash.load(Ordering::SeqCst) {
            return Err(Error::unavailable("test", "killed before the checkpoint"));
        }
        self.inner.save(name, position).await
    }
}

/// A consumer that records each event in its inbox and counts the effects and the duplicates.
struct InboxConsumer {
    name: String,
    inbox: MemoryEventStore,
    effects: Mutex<Vec<Uuid>>,
    duplicates: AtomicUsize,
}

#[async_trait]
impl MessageHandler for InboxConsumer {
    async fn handle(&self, message: &RecordedEvent) -> Result<(), HandlerError> {
        if self.inbox.record(&self.name, message.event_id).await? {
            self.effects.lock().unwrap().push(message.event_id);
        } else {
            self.duplicates.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

async fn append_events(store: &MemoryEventStore, category: &str, count: u64) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for n in 0..count {
        let stream = StreamId::for_aggregate(category, &(n % 7).to_string()).unwrap();
        let event = sample_event("Placed", n);
        ids.push(event.event_id);
        store
            .append(&stream, ExpectedVersion::Any, vec![event])
            .await
            .unwrap();
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_between_publish_and_checkpoint_loses_nothing_and_the_inbox_drops_duplicates(
) {
    let bus = common::connect(common::config("relay")).await;
    let category = common::category();
    let consumer_name = common::unique("relay");
    let consumer = Arc::new(InboxConsumer {
        name: consumer_name.clone(),
        inbox: MemoryEventStore::new(),
        effects: Mutex::default(),
        duplicates: AtomicUsize::new(0),
    });
    let handle = bus
        .subscribe(
            Consumer::new(&consumer_name, [format!("{category}.#")]),
            consumer.clone(),
        )
        .await
        .unwrap();

    let store = Arc::new(MemoryEventStore::new());
    let ids = append_events(&store, &category, 100).await;
    let checkpoints = Arc::new(CrashingCheckpoints {
        inner: MemoryEventStore::new(),
        crash: AtomicBool::new(true),
    });

    // First life: the first batch goes out and is confirmed, then the process dies.
    let relay = bus
        .relay("outbox")
        .store(store.clone())
        .checkpoints(checkpoints.clone())
        .batch_size(30)
        .build();
    assert!(relay.relay_available().await.is_err());
    assert_eq!(relay.checkpoint().await.unwrap(), Position::START);

    // Second life, from the saved checkpoint: everything, the first batch again included.
    checkpoints.crash.store(false, Ordering::SeqCst);
    let relay = bus
        .relay("outbox")
        .store(store.clone())
        .checkpoints(checkpoints.clone())
        .batch_size(30)
        .build();
    assert_eq!(relay.relay_available().await.unwrap(), 100);
    assert_eq!(
        relay.checkpoint().await.unwrap(),
        store.head().await.unwrap()
    );

    let all = common::eventually(Duration::from_secs(20), || async {
        consumer.effects.lock().unwrap().len() == 100
            && consumer.duplicates.load(Ordering::SeqCst) == 30
    })
    .await;
    let effects: Vec<Uuid> = consumer.effects.lock().unwrap().clone();
    assert!(
        all,
        "{} effects, {} duplicates",
        effects.len(),
        consumer.duplicates.load(Ordering::SeqCst)
    );
    let unique: HashSet<Uuid> = effects.iter().copied().collect();
    assert_eq!(unique.len(), 100, "each event took effect once");
    assert!(
        ids.iter().all(|id| unique.contains(id)),
        "no event was lost"
    );
    handle.stop().await;
    common::cleanup(&bus, &[&consumer_name]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_relay_aborted_again_and_again_delivers_every_event() {
    let bus = common::connect(common::config("relayrun")).await;
    let category = common::category();
    let consumer_name = common::unique("relayrun");
    let consumer = Arc::new(InboxConsumer {
        name: consumer_name.clone(),
        inbox: MemoryEventStore::new(),
        effects: Mutex::default(),
        duplicates: AtomicUsize::new(0),
    });
    let handle = bus
        .subscribe(
            Consumer::new(&consumer_name, [format!("{category}.#")]),
            consumer.clone(),
        )
        .await
        .unwrap();
    let store = Arc::new(MemoryEventStore::new());
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(MemoryEventStore::new());
    let writer = {
        let store = store.clone();
        let category = category.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..10 {
                ids.extend(append_events(&store, &category, 30).await);
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            ids
        })
    };
    // Killed at arbitrary points, over and over, while events keep arriving.
    for round in 0..12u64 {
        let relay = bus
            .relay("outbox")
            .store(store.clone())
            .checkpoints(checkpoints.clone())
            .batch_size(8)
            .build();
        let task = tokio::spawn(async move { relay.run(std::future::pending()).await });
        tokio::time::sleep(Duration::from_millis(7 + round * 3)).await;
        task.abort();
        let _ = task.await;
    }
    let ids = writer.await.unwrap();
    let relay = bus
        .relay("outbox")
        .store(store.clone())
        .checkpoints(checkpoints.clone())
        .batch_size(8)
        .build();
    relay.relay_available().await.unwrap();

    let all = common::eventually(Duration::from_secs(20), || async {
        consumer.effects.lock().unwrap().len() == ids.len()
    })
    .await;
    assert!(
        all,
        "{} of {} events took effect",
        consumer.effects.lock().unwrap().len(),
        ids.len()
    );
    let effects: HashSet<Uuid> = consumer.effects.lock().unwrap().iter().copied().collect();
    assert!(
        ids.iter().all(|id| effects.contains(id)),
        "no event was lost"
    );
    eprintln!(
        "{} events, {} duplicates dropped by the inbox",
        ids.len(),
        consumer.duplicates.load(Ordering::SeqCst)
    );
    handle.stop().await;
    common::cleanup(&bus, &[&consumer_name]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_wire_cannot_carry_are_parked_and_the_relay_goes_on() {
    let bus = common::connect(common::config("poison")).await;
    let category = common::category();
    let consumer_name = common::unique("poison");
    let consumer = es_core::testing::RecordingHandler::new();
    let handle = bus
        .subscribe(
            Consumer::new(&consumer_name, [format!("{category}.#")]),
            consumer.clone(),
        )
        .await
        .unwrap();
    let store = Arc::new(MemoryEventStore::new());
    let mut good = append_events(&store, &category, 10).await;
    // A payload that is not JSON (the envelope cannot embed it), and an event type longer
    // than an AMQP short string (it would corrupt the frame and close the connection).
    let stream = StreamId::for_aggregate(&category, "poison").unwrap();
    let not_json = es_core::NewEvent::raw("Placed", b"not json".to_vec());
    let too_long = es_core::NewEvent::raw("P".repeat(300), br#"{"n":0}"#.to_vec());
    let poison = [not_json.event_id, too_long.event_id];
    store
        .append(&stream, ExpectedVersion::NoStream, vec![not_json, too_long])
        .await
        .unwrap();
    good.extend(append_events(&store, &category, 10).await);

    let relay = bus
        .relay("outbox")
        .store(store.clone())
        .checkpoints(store.clone())
        .build();
    let running = {
        let relay = relay.clone();
        tokio::spawn(async move { relay.run(std::future::pending()).await })
    };
    assert_eq!(
        consumer.wait_for(20, Duration::from_secs(20)).await,
        20,
        "every good event arrives"
    );
    let parked = relay.parked(10).await.unwrap();
    assert_eq!(
        parked.iter().map(|p| p.event_id).collect::<Vec<_>>(),
        poison,
        "{parked:?}"
    );
    assert!(parked[0].error.contains("serialize"), "{}", parked[0].error);
    assert!(
        parked[1].error.contains("cannot travel over AMQP"),
        "{}",
        parked[1].error
    );

    // The relay goes on, on the same connection.
    good.extend(append_events(&store, &category, 5).await);
    assert_eq!(consumer.wait_for(25, Duration::from_secs(20)).await, 25);
    let handled: HashSet<Uuid> = consumer.handled().iter().map(|e| e.event_id).collect();
    assert_eq!(handled, good.iter().copied().collect::<HashSet<_>>());
    running.abort();
    handle.stop().await;
    common::cleanup(&bus, &[&consumer_name]).await;
}
