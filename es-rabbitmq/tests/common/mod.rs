//! Shared by the integration tests: the broker's URL, isolated configurations, raw access to
//! the broker and cleanup. The recording handler is es-core's `testing::RecordingHandler`.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use es_core::{Metadata, Position, RecordedEvent, StreamId};
use es_rabbitmq::{AmqpConfig, AmqpEventBus, Topology};
use lapin::{Channel, Connection, ConnectionProperties};
use uuid::Uuid;

/// The broker's URL (`AMQP_URL`, else the local port, else a container); fails the test,
/// saying how to provide one, when there is none.
pub fn amqp_url() -> String {
    es_test_services::amqp_url()
}

/// A fresh name unique to one test.
pub fn unique(prefix: &str) -> String {
    format!("es-test-{prefix}-{}", Uuid::new_v4().simple())
}

/// A raw lapin connection to the test broker; fails the test, saying how to provide a broker,
/// when nothing answers.
pub async fn raw_connection() -> Connection {
    let url = amqp_url();
    let properties = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    match Connection::connect(&url, properties).await {
        Ok(connection) => connection,
        Err(error) => panic!(
            "no RabbitMQ answers at {url} ({error}). Start one (`rabbitmq-server -detached`) or \
             point AMQP_URL at a broker, e.g. AMQP_URL=amqp://guest:guest@host:5672/%2f"
        ),
    }
}

/// A raw channel to the test broker.
pub async fn raw_channel() -> (Connection, Channel) {
    let connection = raw_connection().await;
    let channel = connection.create_channel().await.expect("channel");
    (connection, channel)
}

/// A configuration of its own for one test: a unique exchange and connection name, queues
/// that expire when the test is gone.
pub fn config(prefix: &str) -> AmqpConfig {
    let name = unique(prefix);
    AmqpConfig::new(amqp_url(), name.clone())
        .with_connection_name(name)
        .with_topology(Topology::new(unique(prefix)).with_queue_expires(Duration::from_secs(120)))
}

/// Connects a bus, failing the test with instructions when the broker is not there.
pub async fn connect(config: AmqpConfig) -> Arc<AmqpEventBus> {
    // Fails with a clear message first when there is no broker at all.
    drop(raw_connection().await);
    Arc::new(
        AmqpEventBus::connect(config)
            .await
            .expect("connect the bus"),
    )
}

/// Deletes the test's exchanges and the queues of `consumers` (queues also expire by
/// themselves should a test fail before this).
pub async fn cleanup(bus: &AmqpEventBus, consumers: &[&str]) {
    let (connection, channel) = raw_channel().await;
    let topology = &bus.config().topology;
    for consumer in consumers {
        for queue in [
            topology.queue(consumer),
            topology.dead_letter_queue(consumer),
        ] {
            let _ = channel.queue_delete(&queue, Default::default()).await;
        }
    }
    let _ = channel
        .exchange_delete(&topology.exchange, Default::default())
        .await;
    let _ = channel
        .exchange_delete(&topology.dead_letter_exchange(), Default::default())
        .await;
    bus.close().await;
    let _ = connection.close(200, "cleanup").await;
}

/// How many messages wait in `queue` (ready, not counting unacknowledged ones).
pub async fn ready_messages(queue: &str) -> u32 {
    let (connection, channel) = raw_channel().await;
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let count = channel
        .queue_declare(queue, passive, Default::default())
        .await
        .expect("the queue exists")
        .message_count();
    let _ = connection.close(200, "counted").await;
    count
}

/// An event of `event_type` in stream `{category}-{n}`, routed as `{category}.{snake type}`.
pub fn event(category: &str, event_type: &str, n: u64) -> RecordedEvent {
    RecordedEvent {
        event_id: Uuid::now_v7(),
        stream_id: StreamId::for_aggregate(category, &n.to_string()).expect("stream id"),
        stream_version: 1,
        position: Position::new(n + 1, n + 1),
        recorded_at: Utc::now(),
        event_type: event_type.to_owned(),
        schema_version: 1,
        payload: Bytes::from(format!(r#"{{"n":{n}}}"#)),
        metadata: Metadata::new_correlation(),
    }
}

/// A category name unique to one test (no `-`).
pub fn category() -> String {
    format!("c{}", Uuid::new_v4().simple())
}

/// Polls `condition` every 50 ms until it holds or `within` passed; returns whether it held.
pub async fn eventually<F, Fut>(within: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
