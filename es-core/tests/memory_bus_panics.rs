//! A handler that panics on the in-memory bus: the message is retried, then dead-lettered, as on
//! RabbitMQ, and the consumer keeps going.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use es_core::bus::RetryPolicy;
use es_core::memory::{MemoryEventBus, MemoryEventStore};
use es_core::testing::sample_event;
use es_core::{
    Consumer, DeadLetterQueue, EventBus, EventStore, ExpectedVersion, HandlerError, MessageHandler,
    RecordedEvent, StreamId,
};
use uuid::Uuid;

/// Panics on every delivery of the events in `poison`; records the others.
#[derive(Default)]
struct Panicky {
    poison: Mutex<Vec<Uuid>>,
    panics: AtomicU32,
    handled: Mutex<Vec<Uuid>>,
}

#[es_core::async_trait]
impl MessageHandler for Panicky {
    async fn handle(&self, message: &RecordedEvent) -> Result<(), HandlerError> {
        if self.poison.lock().unwrap().contains(&message.event_id) {
            self.panics.fetch_add(1, Ordering::SeqCst);
            panic!("cannot handle {}", message.event_id);
        }
        self.handled.lock().unwrap().push(message.event_id);
        Ok(())
    }
}

async fn events(n: u64) -> Vec<RecordedEvent> {
    let store = MemoryEventStore::new();
    let stream = StreamId::for_aggregate("order", "1").unwrap();
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            (0..n).map(|i| sample_event("Placed", i)).collect(),
        )
        .await
        .unwrap();
    store.read_stream(&stream, 1, 1000).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_retried_then_dead_lettered_and_the_consumer_keeps_going() {
    let bus = MemoryEventBus::new();
    let handler = Arc::new(Panicky::default());
    let prefetch = 2u16;
    let max_attempts = 3;
    let subscription = Consumer::new("panicky", ["order.#"])
        .with_prefetch(prefetch)
        .with_retry(RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
        });
    let consumer = bus.subscribe(subscription, handler.clone()).await.unwrap();

    let all = events(40).await;
    // Three poison messages, each panicking `max_attempts` times: nine panics, far more than
    // the two workers a prefetch of 2 starts.
    let poison: Vec<Uuid> = [3usize, 17, 30].iter().map(|&i| all[i].event_id).collect();
    handler.poison.lock().unwrap().extend(&poison);
    bus.publish(&all).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let handled = handler.handled.lock().unwrap().len();
        let dead = bus.dead_letters("panicky", 100).await.unwrap().len();
        if handled == all.len() - poison.len() && dead == poison.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stalled: {handled} handled, {dead} dead-lettered, {} panics",
            handler.panics.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dead = bus.dead_letters("panicky", 100).await.unwrap();
    for letter in &dead {
        let event = letter.event.as_ref().expect("the message is kept");
        assert!(poison.contains(&event.event_id));
        assert_eq!(
            letter.attempts, max_attempts,
            "a panic counts as a failed attempt"
        );
        assert!(letter.reason.contains("panicked"), "{}", letter.reason);
    }
    assert_eq!(
        handler.panics.load(Ordering::SeqCst),
        max_attempts * poison.len() as u32
    );
    assert!(
        handler.panics.load(Ordering::SeqCst) > u32::from(prefetch),
        "more panics than workers"
    );

    // Still consuming after all those panics.
    assert!(!consumer.is_finished());
    let more = events(3).await;
    bus.publish(&more).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while handler.handled.lock().unwrap().len() < all.len() - poison.len() + more.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the consumer stopped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    consumer.stop().await;
}
