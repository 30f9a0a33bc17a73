//! RabbitMQ throughput of es-rabbitmq beside raw lapin in the same run: confirmed publish
//! (pipelined confirms), consume and ack, and the outbox relay from a store to the broker.
//!
//! ```sh
//! cargo bench -p es-benches --bench bus
//! ```
//!
//! `BENCH_MESSAGES` (default 20,000) messages per measurement, `BENCH_RUNS` (default 3; the
//! median is kept). The broker comes from `AMQP_URL` or the standard local port; each run uses
//! an exchange and queues of its own and deletes them at the end.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use es_benches::{order_placed, table, Plan, Row};
use es_core::memory::MemoryEventStore;
use es_core::{
    async_trait, Consumer, EventBus, EventStore, ExpectedVersion, HandlerError, MessageHandler,
    Metadata, NewEvent, RecordedEvent, Relay, StreamId,
};
use es_rabbitmq::{wire, AmqpConfig, AmqpEventBus, Topology};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

const WINDOW: usize = 1024;

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

async fn raw_channel() -> (Connection, lapin::Channel) {
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    let connection = Connection::connect(&amqp_url(), props)
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ at {} ({e}); set AMQP_URL", amqp_url()));
    let channel = connection.create_channel().await.expect("channel");
    (connection, channel)
}

/// Events stored in a memory store, so they are real `RecordedEvent`s with positions.
async fn recorded_events(n: usize) -> Vec<RecordedEvent> {
    let store = MemoryEventStore::new();
    let stream = StreamId::new(format!("order-{}", uuid::Uuid::new_v4())).expect("id");
    for chunk in 0..n.div_ceil(1000) {
        let count = 1000.min(n - chunk * 1000);
        let events = (0..count)
            .map(|_| {
                NewEvent::from_domain(&order_placed(), Metadata::new_correlation())
                    .expect("encodes")
            })
            .collect();
        store
            .append(&stream, ExpectedVersion::Any, events)
            .await
            .expect("append");
    }
    store.read_stream(&stream, 1, n).await.expect("read")
}

/// Raw lapin: persistent messages, publisher confirms pipelined `WINDOW` deep, waiting for all
/// confirms every `batch` messages (a batch of `bodies.len()` never drains the pipeline).
async fn raw_publish(
    channel: &lapin::Channel,
    exchange: &str,
    bodies: &[(Vec<u8>, BasicProperties)],
    batch: usize,
) {
    for chunk in bodies.chunks(batch) {
        raw_publish_window(channel, exchange, chunk).await;
    }
}

async fn raw_publish_window(
    channel: &lapin::Channel,
    exchange: &str,
    bodies: &[(Vec<u8>, BasicProperties)],
) {
    let mut in_flight = VecDeque::with_capacity(WINDOW);
    for (body, properties) in bodies {
        if in_flight.len() == WINDOW {
            let confirm: lapin::publisher_confirm::PublisherConfirm =
                in_flight.pop_front().expect("one");
            assert!(confirm.await.expect("confirm").is_ack());
        }
        let confirm = channel
            .basic_publish(
                exchange,
                "order.placed",
                // Mandatory, as the bus publishes by default (an unroutable event is an error).
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body,
                properties.clone(),
            )
            .await
            .expect("publish");
        in_flight.push_back(confirm);
    }
    for confirm in in_flight {
        assert!(confirm.await.expect("confirm").is_ack());
    }
}

struct Count(AtomicU64);

#[async_trait]
impl MessageHandler for Count {
    async fn handle(&self, _: &RecordedEvent) -> Result<(), HandlerError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

async fn wait_for(counter: &AtomicU64, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while counter.load(Ordering::Relaxed) < n {
        assert!(
            Instant::now() < deadline,
            "consumers stalled at {}",
            counter.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("bus: run with `cargo bench -p es-benches --bench bus`");
        return;
    }
    let plan = Plan::from_env();
    let n: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let (exchange, raw_exchange) = (format!("bench-{run}"), format!("bench-raw-{run}"));
    let (queue, raw_queue) = (format!("bench-{run}-c"), format!("bench-raw-{run}-c"));
    let events = recorded_events(n).await;
    // The raw side sends exactly the bus's bytes and properties: the same work, minus the bus.
    let bodies: Vec<(Vec<u8>, BasicProperties)> = events
        .iter()
        .map(|e| {
            (
                wire::encode_body(e).expect("encodes").to_vec(),
                wire::properties(e),
            )
        })
        .collect();

    // Raw topology: a durable topic exchange and a durable queue bound to everything.
    let (connection, channel) = raw_channel().await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    channel
        .exchange_declare(
            &raw_exchange,
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange");
    channel
        .queue_declare(
            &raw_queue,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue");
    channel
        .queue_bind(
            &raw_queue,
            &raw_exchange,
            "#",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");

    let bus = AmqpEventBus::connect(
        AmqpConfig::new(amqp_url(), &exchange)
            .with_connection_name(format!("bench-{run}"))
            .with_topology(Topology::new(&exchange).with_queue(&queue, ["#"])),
    )
    .await
    .expect("bus");

    let mut rows = Vec::new();
    let (mut ours, mut raw, mut ours_consume, mut raw_consume, mut relayed) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut ours_batched, mut raw_batched) = (vec![], vec![]);
    for _ in 0..plan.runs {
        // Confirmed publish: all n in one call (the pipeline never drains), then in calls of
        // WINDOW events each waiting for its confirms (the relay's shape), beside raw lapin
        // doing the same.
        let start = Instant::now();
        raw_publish(&channel, &raw_exchange, &bodies, n).await;
        raw.push(n as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        bus.publish(&events).await.expect("publish");
        ours.push(n as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        raw_publish(&channel, &raw_exchange, &bodies, WINDOW).await;
        raw_batched.push(n as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        for batch in events.chunks(WINDOW) {
            bus.publish(batch).await.expect("publish");
        }
        ours_batched.push(n as f64 / start.elapsed().as_secs_f64());

        // Consume and ack what was just published.
        let consume_channel = connection.create_channel().await.expect("channel");
        consume_channel
            .basic_qos(WINDOW as u16, BasicQosOptions::default())
            .await
            .expect("qos");
        let start = Instant::now();
        let mut consumer = consume_channel
            .basic_consume(
                &raw_queue,
                &format!("raw-{}", uuid::Uuid::new_v4()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        for _ in 0..2 * n {
            let delivery = consumer
                .next()
                .await
                .expect("a delivery")
                .expect("delivery");
            delivery.ack(BasicAckOptions::default()).await.expect("ack");
        }
        raw_consume.push(2.0 * n as f64 / start.elapsed().as_secs_f64());
        consume_channel.close(200, "done").await.expect("close");

        let counter = Arc::new(Count(AtomicU64::new(0)));
        let start = Instant::now();
        let handle = bus
            .subscribe(
                Consumer::new(&queue, ["#"]).with_prefetch(WINDOW as u16),
                counter.clone(),
            )
            .await
            .expect("subscribe");
        wait_for(&counter.0, 2 * n as u64).await;
        ours_consume.push(2.0 * n as f64 / start.elapsed().as_secs_f64());
        handle.stop().await;

        // The relay: from a store with n events to the broker, checkpoint after each confirmed batch.
        let store = MemoryEventStore::new();
        let stream = StreamId::new(format!("order-{}", uuid::Uuid::new_v4())).expect("id");
        for chunk in events.chunks(1000) {
            let copies = chunk
                .iter()
                .map(|_| {
                    NewEvent::from_domain(&order_placed(), Metadata::new_correlation())
                        .expect("encodes")
                })
                .collect();
            store
                .append(&stream, ExpectedVersion::Any, copies)
                .await
                .expect("append");
        }
        let relay = Relay::builder("bench-relay")
            .store(store.clone())
            .bus(bus.clone())
            .checkpoints(store)
            .batch_size(WINDOW)
            .build();
        let start = Instant::now();
        assert_eq!(relay.relay_available().await.expect("relay"), n);
        relayed.push(n as f64 / start.elapsed().as_secs_f64());
        // Drain what the relay published so the next run starts from an empty queue.
        let counter = Arc::new(Count(AtomicU64::new(0)));
        let handle = bus
            .subscribe(
                Consumer::new(&queue, ["#"]).with_prefetch(WINDOW as u16),
                counter.clone(),
            )
            .await
            .expect("subscribe");
        wait_for(&counter.0, n as u64).await;
        handle.stop().await;
    }
    let raw_publish_rate = median(raw);
    let raw_batched_rate = median(raw_batched);
    rows.push(Row {
        scenario: format!(
            "confirmed publish ({n} persistent messages in one call, {WINDOW} in flight)"
        ),
        contender: "es-rabbitmq".into(),
        rate: median(ours),
        raw: Some(raw_publish_rate),
        target: Some(0.9),
        unit: "msg/s",
    });
    rows.push(Row {
        scenario: format!("confirmed publish (calls of {WINDOW}, each awaiting its confirms)"),
        contender: "es-rabbitmq".into(),
        rate: median(ours_batched),
        raw: Some(raw_batched_rate),
        target: Some(0.9),
        unit: "msg/s",
    });
    rows.push(Row {
        scenario: format!("consume + ack (prefetch {WINDOW})"),
        contender: "es-rabbitmq".into(),
        rate: median(ours_consume),
        raw: Some(median(raw_consume)),
        target: Some(0.9),
        unit: "msg/s",
    });
    rows.push(Row {
        scenario: format!("relay: store → broker, checkpoint per confirmed batch of {WINDOW}"),
        contender: "Relay + es-rabbitmq".into(),
        rate: median(relayed),
        raw: Some(raw_batched_rate),
        target: None,
        unit: "events/s",
    });

    for q in [&raw_queue, &queue] {
        let _ = channel.queue_delete(q, QueueDeleteOptions::default()).await;
    }
    let _ = channel
        .queue_delete(&format!("{queue}.dlq"), QueueDeleteOptions::default())
        .await;
    for e in [&raw_exchange, &exchange, &format!("{exchange}.dlx")] {
        let _ = channel.exchange_delete(e, Default::default()).await;
    }
    bus.close().await;
    let table = table(&rows);
    println!("\n{table}");
    if std::env::var_os("BENCH_WRITE_DOCS").is_some() {
        // Only the RabbitMQ table; the rest of docs/benchmarks.md is written by hand.
        es_benches::write_doc_section(
            "bus",
            "RabbitMQ",
            &format!(
                "{n} messages per measurement, median of {} runs, RabbitMQ on loopback.\n\n{table}",
                plan.runs
            ),
        );
    }
}
