//! Publishing and consuming against the real RabbitMQ: confirms under load, poison messages,
//! retries, dead letters, competing consumers, unroutable events and the wire format.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use es_core::bus::{Consumer, RetryPolicy};
use es_core::testing::{HandlerBehaviour, RecordingHandler};
use es_core::{DeadLetterQueue, Error, EventBus};
use es_rabbitmq::{AmqpConfig, AmqpEventBus, Unroutable};
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::BasicProperties;
use uuid::Uuid;

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_messages_are_all_confirmed_and_consumed() {
    let bus = common::connect(common::config("load")).await;
    let category = common::category();
    let consumer = common::unique("load");
    let recorder = RecordingHandler::new();
    let handle = bus
        .subscribe(
            Consumer::new(&consumer, [format!("{category}.#")]).with_prefetch(256),
            recorder.clone(),
        )
        .await
        .unwrap();
    let events: Vec<_> = (0..5_000)
        .map(|n| common::event(&category, "Placed", n))
        .collect();
    let started = Instant::now();
    for batch in events.chunks(1_000) {
        bus.publish(batch).await.expect("every confirm arrives");
    }
    let published_in = started.elapsed();
    let handled = recorder
        .wait_for(events.len(), Duration::from_secs(60))
        .await;
    eprintln!(
        "published 5,000 confirmed in {published_in:?}; consumed in {:?}",
        started.elapsed()
    );
    assert_eq!(handled, events.len(), "every confirmed message is consumed");
    let ids: HashSet<Uuid> = recorder.handled().iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), events.len(), "each message once");
    assert!(events.iter().all(|e| ids.contains(&e.event_id)));
    handle.stop().await;
    assert_eq!(common::ready_messages(&consumer).await, 0, "all were acked");
    common::cleanup(&bus, &[&consumer]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_goes_to_the_dead_letter_queue_while_good_messages_keep_flowing() {
    let bus = common::connect(common::config("poison")).await;
    let category = common::category();
    let consumer = common::unique("poison");
    let recorder = RecordingHandler::new();
    let handle = bus
        .subscribe(
            Consumer::new(&consumer, [format!("{category}.placed")]),
            recorder.clone(),
        )
        .await
        .unwrap();
    let before: Vec<_> = (0..5)
        .map(|n| common::event(&category, "Placed", n))
        .collect();
    bus.publish(&before).await.unwrap();

    // Published raw to the exchange, as a broken producer would.
    let (connection, channel) = common::raw_channel().await;
    channel
        .basic_publish(
            &bus.config().topology.exchange,
            &format!("{category}.placed"),
            BasicPublishOptions::default(),
            b"{not an envelope",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let after: Vec<_> = (5..10)
        .map(|n| common::event(&category, "Placed", n))
        .collect();
    bus.publish(&after).await.unwrap();

    assert_eq!(recorder.wait_for(10, Duration::from_secs(10)).await, 10);
    let got_dead = common::eventually(Duration::from_secs(10), || async {
        bus.dead_letters(&consumer, 10).await.unwrap().len() == 1
    })
    .await;
    assert!(got_dead, "the poison message is a dead letter");
    let dead = bus.dead_letters(&consumer, 10).await.unwrap();
    assert!(dead[0].event.is_none());
    assert_eq!(&dead[0].body[..], b"{not an envelope");
    assert!(dead[0].reason.contains("undecodable"), "{}", dead[0].reason);
    assert_eq!(dead[0].attempts, 1);
    let handled: HashSet<Uuid> = recorder.handled().iter().map(|e| e.event_id).collect();
    assert!(before
        .iter()
        .chain(&after)
        .all(|e| handled.contains(&e.event_id)));
    handle.stop().await;
    let _ = connection.close(200, "done").await;
    common::cleanup(&bus, &[&consumer]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_failing_twice_then_succeeding_is_handled_and_acked_once() {
    let bus = common::connect(common::config("flaky")).await;
    let category = common::category();
    let consumer = common::unique("flaky");
    let recorder = RecordingHandler::new();
    let flaky = common::event(&category, "Placed", 1);
    recorder.set(flaky.event_id, HandlerBehaviour::FailFirst(2));
    let handle = bus
        .subscribe(
            Consumer::new(&consumer, [format!("{category}.placed")]).with_retry(fast_retry(5)),
            recorder.clone(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    bus.publish(std::slice::from_ref(&flaky)).await.unwrap();
    assert_eq!(recorder.wait_for(1, Duration::from_secs(10)).await, 1);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "the retries waited their backoff (50 ms, then 100 ms): {:?}",
        started.elapsed()
    );
    // Time for a stray redelivery to show up, should the ack have gone missing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(recorder.handled_count(), 1, "handled once");
    assert_eq!(
        recorder.deliveries(flaky.event_id),
        3,
        "two failures, one success"
    );
    handle.stop().await;
    assert_eq!(
        common::ready_messages(&consumer).await,
        0,
        "acked: nothing came back to the queue when the consumer stopped"
    );
    assert!(bus.dead_letters(&consumer, 10).await.unwrap().is_empty());
    common::cleanup(&bus, &[&consumer]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_always_failing_sends_the_message_to_the_dead_letter_queue_after_n_attempts() {
    let bus = common::connect(common::config("failing")).await;
    let category = common::category();
    let consumer = common::unique("failing");
    let recorder = RecordingHandler::new();
    let doomed = common::event(&category, "Placed", 1);
    let fine = common::event(&category, "Placed", 2);
    recorder.set(doomed.event_id, HandlerBehaviour::AlwaysFail);
    let handle = bus
        .subscribe(
            Consumer::new(&consumer, [format!("{category}.placed")]).with_retry(fast_retry(4)),
            recorder.clone(),
        )
        .await
        .unwrap();
    bus.publish(&[doomed.clone(), fine.clone()]).await.unwrap();
    let dead_lettered = common::eventually(Duration::from_secs(10), || async {
        !bus.dead_letters(&consumer, 10).await.unwrap().is_empty()
    })
    .await;
    assert!(dead_lettered, "the message reaches the dead-letter queue");
    let dead = bus.dead_letters(&consumer, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    assert_eq!(
        letter.event.as_ref().map(|e| e.event_id),
        Some(doomed.event_id)
    );
    assert_eq!(letter.attempts, 4, "the attempt count is in the headers");
    assert!(
        letter.reason.contains("induced failure 4"),
        "the last error is in the headers: {}",
        letter.reason
    );
    assert_eq!(recorder.deliveries(doomed.event_id), 4);
    assert_eq!(recorder.handled().len(), 1, "the other message was handled");
    handle.stop().await;
    common::cleanup(&bus, &[&consumer]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_competing_consumers_handle_each_message_once_in_all() {
    let config = common::config("compete");
    let first = common::connect(config.clone()).await;
    // A second process would have its own connection.
    let second = common::connect(config).await;
    let category = common::category();
    let consumer = common::unique("compete");
    let (a, b) = (
        RecordingHandler::with_delay(Duration::from_millis(1)),
        RecordingHandler::with_delay(Duration::from_millis(1)),
    );
    let subscription = Consumer::new(&consumer, [format!("{category}.*")]).with_prefetch(8);
    let ha = first
        .subscribe(subscription.clone(), a.clone())
        .await
        .unwrap();
    let hb = second.subscribe(subscription, b.clone()).await.unwrap();
    let events: Vec<_> = (0..400)
        .map(|n| common::event(&category, "Placed", n))
        .collect();
    first.publish(&events).await.unwrap();
    let all = common::eventually(Duration::from_secs(20), || async {
        a.handled_count() + b.handled_count() >= events.len()
    })
    .await;
    assert!(all, "every message is handled");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ids: Vec<Uuid> = a
        .handled()
        .iter()
        .chain(&b.handled())
        .map(|e| e.event_id)
        .collect();
    ids.sort();
    let mut expected: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    expected.sort();
    assert_eq!(ids, expected, "each message once in all");
    assert!(
        a.handled_count() > 0 && b.handled_count() > 0,
        "both got work"
    );
    ha.stop().await;
    hb.stop().await;
    common::cleanup(&first, &[&consumer]).await;
    second.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_no_queue_binds_fails_the_publish_by_default() {
    let bus = common::connect(common::config("unroutable")).await;
    assert_eq!(bus.config().unroutable, Unroutable::Fail);
    let category = common::category();
    let consumer = common::unique("unroutable");
    let handle = bus
        .subscribe(
            Consumer::new(&consumer, [format!("{category}.placed")]),
            RecordingHandler::new(),
        )
        .await
        .unwrap();
    let bound = common::event(&category, "Placed", 1);
    let unbound = common::event(&category, "Shipped", 2);
    bus.publish(std::slice::from_ref(&bound))
        .await
        .expect("a bound event is confirmed");
    let error = bus
        .publish(&[bound.clone(), unbound])
        .await
        .expect_err("an unbound event is reported, not dropped");
    assert!(
        matches!(
            error,
            Error::Backend {
                backend: "rabbitmq",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains(".shipped"), "{error}");
    handle.stop().await;
    common::cleanup(&bus, &[&consumer]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_a_typed_unavailable_error() {
    // Port 1 on loopback: nothing listens there.
    let config = AmqpConfig::new("amqp://guest:guest@127.0.0.1:1/%2f", common::unique("down"));
    let error = AmqpEventBus::connect(config.clone())
        .await
        .expect_err("no broker");
    assert!(
        matches!(
            error,
            Error::Unavailable {
                backend: "rabbitmq",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_transient());

    let lazy = AmqpEventBus::new(config);
    let event = common::event(&common::category(), "Placed", 1);
    let error = lazy.publish(&[event]).await.expect_err("no broker");
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    let error = lazy
        .subscribe(Consumer::new("nobody", ["#"]), RecordingHandler::new())
        .await
        .expect_err("no broker");
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    assert!(matches!(
        lazy.dead_letters("nobody", 10).await,
        Err(Error::Unavailable { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_answer_is_skipped_for_the_next_one() {
    let working = common::config("fallback");
    let config = AmqpConfig {
        url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
        ..working.clone()
    }
    .with_fallback_urls([working.url.clone()]);
    let bus = common::connect(config).await;
    let category = common::category();
    let consumer = common::unique("fallback");
    let recorder = RecordingHandler::new();
    let handle = bus
        .subscribe(
            Consumer::new(&consumer, [format!("{category}.#")]),
            recorder.clone(),
        )
        .await
        .unwrap();
    bus.publish(&[common::event(&category, "Placed", 1)])
        .await
        .unwrap();
    assert_eq!(recorder.wait_for(1, Duration::from_secs(10)).await, 1);
    handle.stop().await;
    common::cleanup(&bus, &[&consumer]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_url_is_invalid_input() {
    let error = AmqpEventBus::connect(AmqpConfig::new("amqp://host:notaport/%2f", "x"))
        .await
        .expect_err("cannot parse");
    assert!(matches!(error, Error::InvalidInput(_)), "{error:?}");
    assert!(!error.is_transient());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_follow_the_wire_contract() {
    let consumer = common::unique("wire");
    let category = common::category();
    let mut config = common::config("wire");
    // Declared with the topology, before any consumer runs: the message waits for it.
    config.topology = config
        .topology
        .clone()
        .with_queue(&consumer, [format!("{category}.#")]);
    let bus = common::connect(config).await;
    let mut event = common::event(&category, "Placed", 7);
    event.metadata.causation_id = Some(Uuid::new_v4());
    event.metadata.traceparent =
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    bus.publish(std::slice::from_ref(&event)).await.unwrap();

    let (connection, channel) = common::raw_channel().await;
    let message = channel
        .basic_get(&consumer, BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the message waits in the queue declared up front");
    let delivery = message.delivery;
    assert_eq!(delivery.routing_key.as_str(), format!("{category}.placed"));
    let p = &delivery.properties;
    assert_eq!(
        p.message_id().as_ref().map(|s| s.as_str().to_owned()),
        Some(event.event_id.to_string())
    );
    assert_eq!(p.kind().as_ref().map(|s| s.as_str()), Some("Placed"));
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(*p.delivery_mode(), Some(2), "persistent");
    assert_eq!(
        p.correlation_id().as_ref().map(|s| s.as_str().to_owned()),
        event.metadata.correlation_id.map(|id| id.to_string())
    );
    let headers = p.headers().as_ref().expect("headers").inner();
    assert!(headers.contains_key("causation-id") && headers.contains_key("traceparent"));

    let body: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
    for field in [
        "eventId",
        "eventType",
        "aggregateId",
        "occurredAt",
        "correlationId",
        "causationId",
        "data",
    ] {
        assert!(body.get(field).is_some(), "the body has `{field}`: {body}");
    }
    assert_eq!(body["aggregateId"], serde_json::json!("7"));
    assert_eq!(body["data"], serde_json::json!({"n": 7}));
    let _ = connection.close(200, "done").await;
    common::cleanup(&bus, &[&consumer]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_does_not_stop_the_consumer() {
    struct Panicky(Arc<RecordingHandler>, Uuid);
    #[async_trait::async_trait]
    impl es_core::MessageHandler for Panicky {
        async fn handle(
            &self,
            message: &es_core::RecordedEvent,
        ) -> Result<(), es_core::HandlerError> {
            if message.event_id == self.1 {
                panic!("handler bug");
            }
            self.0.handle(message).await
        }
    }
    let bus = common::connect(common::config("panic")).await;
    let category = common::category();
    let consumer = common::unique("panic");
    let recorder = RecordingHandler::new();
    let bad = common::event(&category, "Placed", 1);
    let good = common::event(&category, "Placed", 2);
    let handle = bus
        .subscribe(
            Consumer::new(&consumer, [format!("{category}.placed")]).with_retry(fast_retry(2)),
            Arc::new(Panicky(recorder.clone(), bad.event_id)),
        )
        .await
        .unwrap();
    bus.publish(&[bad.clone(), good.clone()]).await.unwrap();
    assert_eq!(recorder.wait_for(1, Duration::from_secs(10)).await, 1);
    let dead = common::eventually(Duration::from_secs(10), || async {
        bus.dead_letters(&consumer, 10).await.unwrap().len() == 1
    })
    .await;
    assert!(
        dead,
        "the message whose handler panics ends as a dead letter"
    );
    let letter = &bus.dead_letters(&consumer, 10).await.unwrap()[0];
    assert!(letter.reason.contains("panicked"), "{}", letter.reason);
    assert!(!handle.is_finished());
    handle.stop().await;
    common::cleanup(&bus, &[&consumer]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_tools_on_a_consumer_that_never_ran_answer_empty() {
    let bus = common::connect(common::config("nodlq")).await;
    let nobody = common::unique("nobody");
    assert!(bus.dead_letters(&nobody, 10).await.unwrap().is_empty());
    assert_eq!(bus.requeue_dead_letters(&nobody, 10).await.unwrap(), 0);
    assert_eq!(bus.purge_dead_letters(&nobody).await.unwrap(), 0);
    common::cleanup(&bus, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_broker_nacks_fails_the_publish() {
    use lapin::options::{QueueBindOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};

    let bus = common::connect(common::config("nack")).await;
    let category = common::category();
    // A queue that holds one message and refuses the rest: the broker nacks them.
    let full = common::unique("full");
    let (connection, channel) = common::raw_channel().await;
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(1));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    arguments.insert("x-expires".into(), AMQPValue::LongInt(120_000));
    channel
        .queue_declare(&full, QueueDeclareOptions::default(), arguments)
        .await
        .unwrap();
    channel
        .queue_bind(
            &full,
            &bus.config().topology.exchange,
            &format!("{category}.#"),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let events: Vec<_> = (0..3)
        .map(|n| common::event(&category, "Placed", n))
        .collect();
    let error = bus
        .publish(&events)
        .await
        .expect_err("a nack is reported, not taken for a success");
    assert!(
        matches!(
            error,
            Error::Backend {
                backend: "rabbitmq",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("nack"), "{error}");
    let _ = channel.queue_delete(&full, Default::default()).await;
    let _ = connection.close(200, "done").await;
    common::cleanup(&bus, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_pipeline_is_confirmed_in_full() {
    let bus = common::connect(common::config("window").with_max_in_flight(7)).await;
    let category = common::category();
    let consumer = common::unique("window");
    let recorder = RecordingHandler::new();
    let handle = bus
        .subscribe(
            Consumer::new(&consumer, [format!("{category}.#")]).with_prefetch(64),
            recorder.clone(),
        )
        .await
        .unwrap();
    let events: Vec<_> = (0..500)
        .map(|n| common::event(&category, "Placed", n))
        .collect();
    bus.publish(&events).await.unwrap();
    assert_eq!(recorder.wait_for(500, Duration::from_secs(20)).await, 500);
    let ids: HashSet<Uuid> = recorder.handled().iter().map(|e| e.event_id).collect();
    assert!(events.iter().all(|e| ids.contains(&e.event_id)));
    handle.stop().await;
    common::cleanup(&bus, &[&consumer]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_dead_letter_queue_is_declared_again_when_needed() {
    let bus = common::connect(common::config("redeclare")).await;
    let category = common::category();
    let consumer = common::unique("redeclare");
    let recorder = RecordingHandler::new();
    let doomed = common::event(&category, "Placed", 1);
    recorder.set(doomed.event_id, HandlerBehaviour::AlwaysFail);
    let handle = bus
        .subscribe(
            Consumer::new(&consumer, [format!("{category}.#")]).with_retry(fast_retry(1)),
            recorder.clone(),
        )
        .await
        .unwrap();
    let (connection, channel) = common::raw_channel().await;
    channel
        .queue_delete(
            &bus.config().topology.dead_letter_queue(&consumer),
            Default::default(),
        )
        .await
        .unwrap();
    bus.publish(std::slice::from_ref(&doomed)).await.unwrap();
    let dead = common::eventually(Duration::from_secs(10), || async {
        bus.dead_letters(&consumer, 10).await.unwrap().len() == 1
    })
    .await;
    assert!(dead, "the dead letter landed in a re-declared queue");
    assert_eq!(recorder.deliveries(doomed.event_id), 1);
    handle.stop().await;
    let _ = connection.close(200, "done").await;
    common::cleanup(&bus, &[&consumer]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_consumer_waits_for_the_broker_and_stops_on_request() {
    // No broker at this address: the consumer keeps trying, and stops when asked.
    let down = AmqpEventBus::new(
        AmqpConfig::new("amqp://guest:guest@127.0.0.1:1/%2f", common::unique("down"))
            .with_reconnect(es_rabbitmq::ReconnectPolicy {
                initial_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(100),
            }),
    );
    let waiting = down
        .subscribe_in_background(Consumer::new("nobody", ["#"]), RecordingHandler::new())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "it keeps trying");
    tokio::time::timeout(Duration::from_secs(5), waiting.stop())
        .await
        .expect("stops promptly while reconnecting");

    // With a broker: it starts consuming by itself.
    let category = common::category();
    let consumer = common::unique("background");
    let mut config = common::config("background");
    config.topology = config
        .topology
        .clone()
        .with_queue(&consumer, [format!("{category}.#")]);
    let bus = common::connect(config).await;
    let recorder = RecordingHandler::new();
    let handle = bus
        .subscribe_in_background(
            Consumer::new(&consumer, [format!("{category}.#")]),
            recorder.clone(),
        )
        .unwrap();
    bus.publish(&[common::event(&category, "Placed", 1)])
        .await
        .unwrap();
    assert_eq!(recorder.wait_for(1, Duration::from_secs(10)).await, 1);
    handle.stop().await;
    common::cleanup(&bus, &[&consumer]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_without_a_limit_stops_at_what_the_dead_letter_queue_held_at_the_start() {
    // A handler that rejects everything sends each requeued message straight back to the
    // dead-letter queue, within milliseconds: a requeue that drains "until empty" never ends.
    struct AlwaysReject(std::sync::atomic::AtomicUsize);
    #[async_trait::async_trait]
    impl es_core::MessageHandler for AlwaysReject {
        async fn handle(
            &self,
            _message: &es_core::RecordedEvent,
        ) -> Result<(), es_core::HandlerError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(es_core::HandlerError::reject("never going to work"))
        }
    }
    let bus = common::connect(common::config("requeue")).await;
    let category = common::category();
    let consumer = common::unique("requeue");
    let handler = Arc::new(AlwaysReject(Default::default()));
    let handle = bus
        .subscribe(
            Consumer::new(&consumer, [format!("{category}.placed")]),
            handler.clone(),
        )
        .await
        .unwrap();
    let events: Vec<_> = (0..3)
        .map(|n| common::event(&category, "Placed", n))
        .collect();
    bus.publish(&events).await.unwrap();
    let all_dead = common::eventually(Duration::from_secs(10), || async {
        bus.dead_letters(&consumer, 10).await.unwrap().len() == 3
    })
    .await;
    assert!(all_dead, "the rejected messages are dead letters");

    let moved = tokio::time::timeout(
        Duration::from_secs(10),
        bus.requeue_dead_letters(&consumer, usize::MAX),
    )
    .await
    .expect("requeue returns: it moves what was there, not what comes back");
    let moved = moved.unwrap();
    assert_eq!(moved, 3, "each dead letter is requeued once");
    handle.stop().await;
    // Three first deliveries plus one per requeued message; the handler ran no more than that.
    assert!(
        handler.0.load(std::sync::atomic::Ordering::SeqCst) <= 6,
        "handled {} times",
        handler.0.load(std::sync::atomic::Ordering::SeqCst)
    );
    common::cleanup(&bus, &[&consumer]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_dead_letters_are_back_in_place_when_the_listing_returns() {
    // Listing takes the messages off the queue unacknowledged and lets the broker put them
    // back; a quorum queue does that through its log, after the channel's close is answered.
    // Whatever is called next (another listing, a requeue) must find them all there.
    const DEAD: usize = 3;
    let mut config = common::config("relist");
    config.topology.queue_type = es_rabbitmq::QueueType::Quorum;
    let bus = common::connect(config).await;
    let category = common::category();
    let consumer = common::unique("relist");
    let recorder = RecordingHandler::new();
    let events: Vec<_> = (0..DEAD as u64)
        .map(|n| common::event(&category, "Placed", n))
        .collect();
    for event in &events {
        recorder.set(event.event_id, HandlerBehaviour::Reject);
    }
    let handle = bus
        .subscribe(
            Consumer::new(&consumer, [format!("{category}.placed")]).with_retry(fast_retry(1)),
            recorder.clone(),
        )
        .await
        .unwrap();
    bus.publish(&events).await.unwrap();
    let all_dead = common::eventually(Duration::from_secs(20), || async {
        bus.dead_letters(&consumer, 10).await.unwrap().len() == DEAD
    })
    .await;
    assert!(all_dead, "the rejected messages are dead letters");
    handle.stop().await;

    // One listing after another, each right after the last: the race is lost only now and then
    // (seen under load, not provoked at will), so the rounds catch it by chance, not surely.
    for round in 0..20 {
        assert_eq!(
            bus.dead_letters(&consumer, 10).await.unwrap().len(),
            DEAD,
            "listing {round} finds every dead letter the one before it listed"
        );
    }
    for round in 0..DEAD {
        assert_eq!(
            bus.requeue_dead_letters(&consumer, 1).await.unwrap(),
            1,
            "requeue {round}, right after a listing, moves a dead letter"
        );
        bus.dead_letters(&consumer, 10).await.unwrap();
    }
    let work_queue = bus.config().topology.queue(&consumer);
    let all_back = common::eventually(Duration::from_secs(5), || async {
        common::ready_messages(&work_queue).await == DEAD as u32
    })
    .await;
    assert!(
        all_back,
        "every dead letter is back on the work queue, once"
    );
    common::cleanup(&bus, &[&consumer]).await;
}
