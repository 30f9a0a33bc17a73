//! What the RabbitMQ consumer records through the `metrics` facade: the same names as the
//! in-memory bus, read back from a Prometheus recorder installed for this test binary.
#![cfg(feature = "metrics")]

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use es_core::bus::{Consumer, RetryPolicy};
use es_core::telemetry;
use es_core::testing::{HandlerBehaviour, RecordingHandler};
use es_core::EventBus;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The recorder of this test binary, installed before any bus is built.
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("the only recorder of this binary")
    })
}

/// The value of the sample `name` of `consumer`, 0 when there is none.
fn value(name: &str, consumer: &str) -> f64 {
    let label = format!("consumer=\"{consumer}\"");
    recorder()
        .render()
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(&label))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_counts_handled_retried_and_dead_lettered_messages() {
    recorder();
    let bus = common::connect(common::config("telemetry")).await;
    let category = common::category();
    let consumer = common::unique("telemetry");
    let handler = RecordingHandler::new();
    let events: Vec<_> = (0..4)
        .map(|n| common::event(&category, "Placed", n))
        .collect();
    handler.set(events[1].event_id, HandlerBehaviour::FailFirst(1));
    handler.set(events[2].event_id, HandlerBehaviour::Reject);
    handler.set(events[3].event_id, HandlerBehaviour::AlwaysFail);
    let retry = RetryPolicy {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(50),
    };
    let handle = bus
        .subscribe(
            Consumer::new(&consumer, [format!("{category}.#")]).with_retry(retry),
            handler.clone(),
        )
        .await
        .unwrap();
    bus.publish(&events).await.unwrap();

    let settled = common::eventually(Duration::from_secs(30), || async {
        value(telemetry::MESSAGES_HANDLED, &consumer) >= 2.0
            && value(telemetry::MESSAGES_DEAD_LETTERED, &consumer) >= 2.0
    })
    .await;
    handle.stop().await;
    assert!(settled, "{}", recorder().render());
    // The first, and the second after one retry.
    assert_eq!(value(telemetry::MESSAGES_HANDLED, &consumer), 2.0);
    // The second's first attempt and the always-failing one's first attempt.
    assert_eq!(value(telemetry::MESSAGES_RETRIED, &consumer), 2.0);
    // The rejected one at once, the always-failing one after its two attempts.
    assert_eq!(value(telemetry::MESSAGES_DEAD_LETTERED, &consumer), 2.0);
    // Every attempt is timed.
    let attempts = value(
        &format!("{}_count", telemetry::MESSAGE_HANDLING_SECONDS),
        &consumer,
    );
    assert_eq!(attempts, 6.0);
    common::cleanup(&bus, &[&consumer]).await;
}
