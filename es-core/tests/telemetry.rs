//! What the in-memory bus, the relay and the projection runner record through the `metrics`
//! facade, read back from a debugging recorder installed for this test binary.
#![cfg(feature = "metrics")]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use es_core::bus::RetryPolicy;
use es_core::memory::{MemoryEventBus, MemoryEventStore};
use es_core::telemetry;
use es_core::{
    BoxError, Consumer, DeadLetterQueue, EventBus, EventStore, ExpectedVersion, HandlerError,
    MessageHandler, NewEvent, Projection, ProjectionRunner, RecordedEvent, Relay, StreamId,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The recorder of this test binary, installed on first use. Each test reads only the labels
/// of its own (uniquely named) consumer, relay or projection, so tests running at once do not
/// see each other's values.
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("the only recorder of this binary")
    })
}

/// The value of the sample `name` with the label `key="label"` in the rendered text.
fn value(name: &str, key: &str, label: &str) -> Option<f64> {
    let label = format!("{key}=\"{label}\"");
    recorder()
        .render()
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(&label))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
}

fn counter(name: &str, key: &str, label: &str) -> u64 {
    value(name, key, label).unwrap_or(0.0) as u64
}

fn gauge(name: &str, key: &str, label: &str) -> Option<f64> {
    value(name, key, label)
}

/// How many samples the histogram `name` took.
fn histogram_len(name: &str, key: &str, label: &str) -> usize {
    value(&format!("{name}_count"), key, label).unwrap_or(0.0) as usize
}

/// `n` events appended to one order stream of a fresh store.
async fn store_with(n: u64) -> (MemoryEventStore, Vec<RecordedEvent>) {
    let store = MemoryEventStore::new();
    let stream = StreamId::for_aggregate("order", "1").unwrap();
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            (0..n)
                .map(|i| NewEvent::raw("Placed", format!("{{\"n\":{i}}}")))
                .collect(),
        )
        .await
        .unwrap();
    let events = store.read_stream(&stream, 1, 1000).await.unwrap();
    (store, events)
}

/// Takes the first event it sees, fails the second once then takes it, always rejects the
/// third, and panics on the fourth every time.
struct Mixed {
    ids: Vec<uuid::Uuid>,
    failed_once: std::sync::atomic::AtomicBool,
}

#[es_core::async_trait]
impl MessageHandler for Mixed {
    async fn handle(&self, message: &RecordedEvent) -> Result<(), HandlerError> {
        let index = self.ids.iter().position(|id| *id == message.event_id);
        match index {
            Some(1)
                if !self
                    .failed_once
                    .swap(true, std::sync::atomic::Ordering::SeqCst) =>
            {
                Err(HandlerError::retry("not yet"))
            }
            Some(2) => Err(HandlerError::reject("never")),
            Some(3) => panic!("cannot handle it"),
            _ => Ok(()),
        }
    }
}

/// Takes everything.
struct Accepting;

#[es_core::async_trait]
impl MessageHandler for Accepting {
    async fn handle(&self, _: &RecordedEvent) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_bus_counts_handled_retried_and_dead_lettered_messages_per_consumer() {
    recorder();
    let bus = MemoryEventBus::new();
    let (_, events) = store_with(4).await;
    let retry = RetryPolicy {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(5),
    };
    let mixed = Arc::new(Mixed {
        ids: events.iter().map(|e| e.event_id).collect(),
        failed_once: Default::default(),
    });
    let a = bus
        .subscribe(
            Consumer::new("telemetry-mixed", ["order.#"]).with_retry(retry),
            mixed,
        )
        .await
        .unwrap();
    let b = bus
        .subscribe(
            Consumer::new("telemetry-accepting", ["order.#"]),
            Arc::new(Accepting),
        )
        .await
        .unwrap();
    bus.publish(&events).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bus.dead_letters("telemetry-mixed", 10).await.unwrap().len() < 2
        || counter(telemetry::MESSAGES_HANDLED, "consumer", "telemetry-mixed") < 2
        || counter(
            telemetry::MESSAGES_HANDLED,
            "consumer",
            "telemetry-accepting",
        ) < 4
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the consumers did not finish"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.stop().await;
    b.stop().await;

    let c = |name| counter(name, "consumer", "telemetry-mixed");
    // The first and the second (after one retry) were taken.
    assert_eq!(c(telemetry::MESSAGES_HANDLED), 2);
    // The second's failure and the panic's first attempt are retried; the rejection is not.
    assert_eq!(c(telemetry::MESSAGES_RETRIED), 2);
    // The rejected one at once, the panicking one after its two attempts.
    assert_eq!(c(telemetry::MESSAGES_DEAD_LETTERED), 2);
    let other = |name| counter(name, "consumer", "telemetry-accepting");
    assert_eq!(other(telemetry::MESSAGES_HANDLED), 4);
    assert_eq!(other(telemetry::MESSAGES_RETRIED), 0);
    assert_eq!(other(telemetry::MESSAGES_DEAD_LETTERED), 0);
    // Every attempt is timed: 2 handled + 2 retried + 2 dead-lettered.
    assert_eq!(
        histogram_len(
            telemetry::MESSAGE_HANDLING_SECONDS,
            "consumer",
            "telemetry-mixed"
        ),
        6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_records_what_it_published_and_how_old_it_was() {
    recorder();
    let (store, _) = store_with(7).await;
    let store = Arc::new(store);
    let bus = Arc::new(MemoryEventBus::new());
    let relay = Relay::builder("telemetry-relay")
        .store(store.clone())
        .bus(bus)
        .checkpoints(MemoryEventStore::new())
        .batch_size(5)
        .build();
    assert_eq!(relay.relay_available().await.unwrap(), 7);

    assert_eq!(
        counter(telemetry::RELAY_PUBLISHED, "relay", "telemetry-relay"),
        7
    );
    // Two batches, of 5 then 2: the gauge holds the last.
    assert_eq!(
        gauge(telemetry::RELAY_LAG_EVENTS, "relay", "telemetry-relay"),
        Some(2.0)
    );
    let lag = gauge(telemetry::RELAY_LAG_SECONDS, "relay", "telemetry-relay").unwrap();
    assert!((0.0..60.0).contains(&lag), "lag {lag}");
}

struct Counting;

#[es_core::async_trait]
impl Projection for Counting {
    fn name(&self) -> &str {
        "telemetry-projection"
    }
    async fn apply(&self, _: &RecordedEvent) -> Result<(), BoxError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_projection_records_what_it_handled_and_its_lag() {
    recorder();
    let (store, events) = store_with(3).await;
    let store = Arc::new(store);
    let runner = ProjectionRunner::new(store.clone(), store.clone());
    let mut handle = runner.spawn(Arc::new(Counting));
    tokio::time::timeout(
        Duration::from_secs(10),
        handle.wait_for(events.last().unwrap().position),
    )
    .await
    .expect("the projection caught up");
    handle.stop().await;

    let label = "telemetry-projection";
    assert_eq!(
        counter(telemetry::PROJECTION_HANDLED, "projection", label),
        3
    );
    assert_eq!(
        histogram_len(telemetry::PROJECTION_HANDLING_SECONDS, "projection", label),
        3
    );
    let lag = gauge(telemetry::PROJECTION_LAG_SECONDS, "projection", label).unwrap();
    assert!((0.0..60.0).contains(&lag), "lag {lag}");
}
