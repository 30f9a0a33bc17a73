//! A relay facing a bus that fails: an event the bus can never carry is parked and the relay
//! goes on; a bus that is down is waited for, and everything goes out once it is back.

use std::sync::Arc;
use std::time::Duration;

use es_core::memory::{MemoryEventBus, MemoryEventStore};
use es_core::testing::{sample_event, unique_category, FaultyBus, RecordingHandler};
use es_core::{Consumer, EventBus, EventStore, ExpectedVersion, NewEvent, Relay, StreamId};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(10);

/// Appends `events` to one stream each of `category`; returns their ids.
async fn append(store: &MemoryEventStore, category: &str, events: Vec<NewEvent>) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for event in events {
        ids.push(event.event_id);
        let stream = StreamId::for_aggregate(category, &Uuid::new_v4().to_string()).unwrap();
        store
            .append(&stream, ExpectedVersion::Any, vec![event])
            .await
            .unwrap();
    }
    ids
}

fn good(from: u64, count: u64) -> Vec<NewEvent> {
    (from..from + count)
        .map(|n| sample_event("Placed", n))
        .collect()
}

fn poison() -> NewEvent {
    NewEvent::raw("Poisoned", b"not json".to_vec())
}

/// Runs `relay` until the returned sender is dropped or fired.
fn spawn(relay: Relay) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        relay
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    (stop, task)
}

/// A memory bus behind a faulty one, and a consumer of everything in `category` that handles
/// one message at a time.
async fn buses(category: &str) -> (Arc<FaultyBus>, Arc<RecordingHandler>) {
    let memory = MemoryEventBus::new();
    let consumer = RecordingHandler::new();
    let _handle = memory
        .subscribe(
            // One message at a time, so that the order handled is the order published.
            Consumer::new(unique_category("consumer"), [format!("{category}.#")]).with_prefetch(1),
            consumer.clone(),
        )
        .await
        .unwrap();
    // The handle may go: a dropped handle leaves its consumer running.
    (FaultyBus::new(Arc::new(memory)), consumer)
}

fn ids_of(handler: &RecordingHandler) -> Vec<Uuid> {
    handler.handled().iter().map(|e| e.event_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_parked_and_the_events_after_it_still_go_out() {
    let category = unique_category("poison");
    let store = MemoryEventStore::new();
    let (bus, consumer) = buses(&category).await;
    bus.refuse("Poisoned");

    let mut good_ids = append(&store, &category, good(0, 10)).await;
    let poison_id = append(&store, &category, vec![poison()]).await[0];
    good_ids.extend(append(&store, &category, good(10, 10)).await);

    let parking = MemoryEventStore::new();
    let relay = Relay::builder("outbox")
        .store(store.clone())
        .bus(bus.clone())
        .checkpoints(store.clone())
        .parked_events(parking.clone())
        .build();
    let (stop, task) = spawn(relay.clone());

    assert_eq!(
        consumer.wait_for(20, WITHIN).await,
        20,
        "every good event arrives"
    );
    assert_eq!(
        ids_of(&consumer),
        good_ids,
        "in log order, the poison one left out"
    );
    let parked = relay.parked(10).await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].event_id, poison_id);
    assert_eq!(parked[0].event_type, "Poisoned");
    assert_eq!(parked[0].relay, "outbox");
    assert!(parked[0].error.contains("cannot"), "{}", parked[0].error);

    // The relay goes on with what comes later.
    let later = append(&store, &category, good(20, 5)).await;
    assert_eq!(consumer.wait_for(25, WITHIN).await, 25);
    assert_eq!(ids_of(&consumer)[20..], later[..]);
    let head = store.head().await.unwrap();
    assert_eq!(
        relay.checkpoint().await.unwrap(),
        head,
        "the checkpoint moved past it"
    );
    stop.send(()).unwrap();
    task.await.unwrap();
    assert_eq!(consumer.handled_count(), 25, "nothing twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_available_parks_a_poison_event_too() {
    let category = unique_category("poison");
    let store = MemoryEventStore::new();
    let (bus, consumer) = buses(&category).await;
    bus.refuse("Poisoned");
    let mut events = good(0, 3);
    events.insert(1, poison());
    events.push(poison());
    append(&store, &category, events).await;

    let relay = Relay::builder("outbox")
        .store(store.clone())
        .bus(bus.clone())
        .checkpoints(store.clone())
        .batch_size(2)
        .build();
    assert_eq!(relay.relay_available().await.unwrap(), 5);
    assert_eq!(consumer.wait_for(3, WITHIN).await, 3);
    assert_eq!(relay.parked(10).await.unwrap().len(), 2);
    assert_eq!(relay.relay_available().await.unwrap(), 0, "nothing left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_that_is_down_is_waited_for_and_then_gets_everything() {
    let category = unique_category("outage");
    let store = MemoryEventStore::new();
    let (bus, consumer) = buses(&category).await;
    bus.set_down(true);
    let ids = append(&store, &category, good(0, 30)).await;
    let relay = Relay::builder("outbox")
        .store(store.clone())
        .bus(bus.clone())
        .checkpoints(store.clone())
        .batch_size(7)
        .build();
    let (stop, task) = spawn(relay.clone());

    // It keeps trying, with backoff: not once, not in a hot loop.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let attempts = bus.publish_attempts();
    assert!((2..200).contains(&attempts), "{attempts} attempts");
    assert_eq!(consumer.handled_count(), 0);
    assert!(
        relay.parked(10).await.unwrap().is_empty(),
        "an outage parks nothing"
    );
    let more = append(&store, &category, good(30, 5)).await;

    bus.set_down(false);
    assert_eq!(consumer.wait_for(35, WITHIN).await, 35);
    assert_eq!(ids_of(&consumer), [ids, more].concat());
    stop.send(()).unwrap();
    task.await.unwrap();
}
