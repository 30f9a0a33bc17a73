use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use uuid::Uuid;

use super::{unique_category, HandlerBehaviour, RecordingHandler};
use crate::bus::{Consumer, DeadLetterQueue, EventBus, RetryPolicy};
use crate::event::{Metadata, RecordedEvent};
use crate::stream::{Position, StreamId};

fn event(category: &str, event_type: &str, n: u64) -> RecordedEvent {
    RecordedEvent {
        event_id: Uuid::now_v7(),
        stream_id: StreamId::for_aggregate(category, &n.to_string()).unwrap(),
        stream_version: n + 1,
        position: Position::new(n + 1, n + 1),
        recorded_at: Utc::now(),
        event_type: event_type.to_owned(),
        schema_version: 1,
        payload: Bytes::from(format!(r#"{{"n":{n},"text":"ünïcode ✓"}}"#)),
        metadata: Metadata {
            correlation_id: Some(Uuid::new_v4()),
            causation_id: Some(Uuid::new_v4()),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            headers: [("tenant".to_owned(), "t1".to_owned())].into(),
        },
    }
}

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    }
}

/// Checks [`EventBus`] and [`DeadLetterQueue`]: routing, the envelope surviving the trip,
/// retries, dead letters that do not stop the consumer, competing consumers, requeue and purge,
/// and batched consumers ([`Consumer::with_batch`]): a backlog arrives in batches, and a
/// poison message in a batch is dead-lettered alone while the rest is handled once; with a
/// linger ([`Consumer::with_linger`]), messages that arrive while a call runs share a batch
/// that goes when that call ends, and one that finds the consumer idle goes at once.
///
/// The bus must route with [`default_routing_key`](crate::bus::default_routing_key) (an event of
/// type `Placed` in stream `{category}-1` routes as `{category}.placed`).
pub async fn bus_conformance<B>(bus: Arc<B>)
where
    B: EventBus + DeadLetterQueue + 'static,
{
    routes_by_key_and_keeps_the_envelope(&*bus).await;
    retries_then_succeeds_and_dead_letters_without_stopping(&*bus).await;
    competing_consumers_share_the_work(&*bus).await;
    dead_letters_can_be_requeued_and_purged(&*bus).await;
    a_backlog_arrives_in_batches(&*bus).await;
    a_poison_message_in_a_batch_goes_to_the_dead_letter_queue_alone(&*bus).await;
    messages_arriving_within_the_linger_share_a_batch(&*bus).await;
}

/// Subscribes `consumer` once and stops, so its queue exists and keeps what is published
/// while no instance consumes.
async fn declare_queue<B: EventBus>(bus: &B, subscription: &Consumer) {
    bus.subscribe(subscription.clone(), RecordingHandler::new())
        .await
        .expect("subscribe")
        .stop()
        .await;
}

async fn a_backlog_arrives_in_batches<B: EventBus + DeadLetterQueue>(bus: &B) {
    let category = unique_category("batch");
    let consumer = format!("{category}-c");
    let subscription = Consumer::new(&consumer, [format!("{category}.*")])
        .with_prefetch(32)
        .with_batch(8);
    declare_queue(bus, &subscription).await;
    // Published before the consumer starts: a backlog waits for it.
    let events: Vec<_> = (0..40).map(|n| event(&category, "Placed", n)).collect();
    bus.publish(&events).await.unwrap();
    let recorder = RecordingHandler::new();
    let handle = bus.subscribe(subscription, recorder.clone()).await.unwrap();
    assert_eq!(
        recorder
            .wait_for(events.len(), Duration::from_secs(20))
            .await,
        events.len(),
        "every message of the backlog arrives"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ids: Vec<Uuid> = recorder.handled().iter().map(|e| e.event_id).collect();
    ids.sort();
    let mut expected: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    expected.sort();
    assert_eq!(ids, expected, "each message of the backlog is handled once");
    let sizes = recorder.batch_sizes();
    assert!(
        sizes.iter().any(|&size| size > 1),
        "a backlog is handed over in batches: {sizes:?}"
    );
    assert!(
        sizes.iter().all(|&size| size <= 8),
        "no batch is larger than the subscription's batch size: {sizes:?}"
    );
    handle.stop().await;
    assert!(bus.dead_letters(&consumer, 10).await.unwrap().is_empty());
}

async fn messages_arriving_within_the_linger_share_a_batch<B: EventBus + DeadLetterQueue>(bus: &B) {
    // Far longer than the test waits: a batch that lingers goes when the call before it ends,
    // never at the end of this.
    const LINGER: Duration = Duration::from_secs(60);
    let category = unique_category("linger");
    let consumer = format!("{category}-c");
    let subscription = Consumer::new(&consumer, [format!("{category}.*")])
        .with_prefetch(32)
        .with_batch(8)
        .with_linger(LINGER);
    // Each call takes a while, so the messages after the first arrive while it runs.
    let recorder = RecordingHandler::with_delay(Duration::from_millis(500));
    let handle = bus.subscribe(subscription, recorder.clone()).await.unwrap();
    // Six messages one after another, 20 ms apart. The first finds the consumer idle and goes
    // at once; without the linger each of the others would find a free call and go alone too.
    let events: Vec<_> = (0..6).map(|n| event(&category, "Placed", n)).collect();
    for event in &events {
        bus.publish(std::slice::from_ref(event)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        recorder
            .wait_for(events.len(), Duration::from_secs(20))
            .await,
        events.len(),
        "the lingering batch goes when the call it waited on ends, not when the linger runs out"
    );
    let sizes = recorder.batch_sizes();
    assert!(
        sizes.iter().sum::<usize>() >= events.len() - 1 && sizes.len() <= 2,
        "the messages that arrived while a call ran share a batch: {sizes:?}"
    );
    // With no call running (the last one acked), a message goes at once: a low rate pays no
    // linger.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lone = event(&category, "Placed", 6);
    bus.publish(std::slice::from_ref(&lone)).await.unwrap();
    assert_eq!(
        recorder
            .wait_for(events.len() + 1, Duration::from_secs(20))
            .await,
        events.len() + 1,
        "a message that finds the consumer idle does not linger"
    );
    handle.stop().await;
    assert!(bus.dead_letters(&consumer, 10).await.unwrap().is_empty());
}

async fn a_poison_message_in_a_batch_goes_to_the_dead_letter_queue_alone<
    B: EventBus + DeadLetterQueue,
>(
    bus: &B,
) {
    let category = unique_category("batchpoison");
    let consumer = format!("{category}-c");
    let subscription = Consumer::new(&consumer, [format!("{category}.*")])
        .with_prefetch(16)
        .with_batch(16)
        .with_retry(fast_retry(2));
    declare_queue(bus, &subscription).await;
    let events: Vec<_> = (0..12).map(|n| event(&category, "Placed", n)).collect();
    let (poison, rejected) = (events[3].clone(), events[7].clone());
    let recorder = RecordingHandler::new();
    recorder.set(poison.event_id, HandlerBehaviour::AlwaysFail);
    recorder.set(rejected.event_id, HandlerBehaviour::Reject);
    bus.publish(&events).await.unwrap();
    let handle = bus.subscribe(subscription, recorder.clone()).await.unwrap();

    let good = events.len() - 2;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let dead = bus.dead_letters(&consumer, 10).await.unwrap();
        if (dead.len() >= 2 && recorder.handled_count() >= good)
            || tokio::time::Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut handled: Vec<Uuid> = recorder.handled().iter().map(|e| e.event_id).collect();
    handled.sort();
    let mut expected: Vec<Uuid> = events
        .iter()
        .map(|e| e.event_id)
        .filter(|id| *id != poison.event_id && *id != rejected.event_id)
        .collect();
    expected.sort();
    assert_eq!(
        handled, expected,
        "the rest of a batch with a poison message is handled, each once"
    );
    assert_eq!(
        recorder.deliveries(poison.event_id),
        2,
        "the poison message meets its own retries"
    );
    assert_eq!(recorder.deliveries(rejected.event_id), 1);
    let dead = bus.dead_letters(&consumer, 10).await.unwrap();
    let mut dead_ids: Vec<Uuid> = dead
        .iter()
        .filter_map(|d| d.event.as_ref().map(|e| e.event_id))
        .collect();
    dead_ids.sort();
    let mut poisoned = vec![poison.event_id, rejected.event_id];
    poisoned.sort();
    assert_eq!(
        dead_ids, poisoned,
        "only the failing messages are dead letters: {dead:?}"
    );
    handle.stop().await;
    bus.purge_dead_letters(&consumer).await.unwrap();
}

async fn routes_by_key_and_keeps_the_envelope<B: EventBus + DeadLetterQueue>(bus: &B) {
    let category = unique_category("bus");
    let recorder = RecordingHandler::new();
    let consumer = format!("{category}-placed");
    let handle = bus
        .subscribe(
            Consumer::new(&consumer, [format!("{category}.placed")]),
            recorder.clone(),
        )
        .await
        .expect("subscribe");
    let placed: Vec<_> = (0..3).map(|n| event(&category, "Placed", n)).collect();
    let other: Vec<_> = (0..2).map(|n| event(&category, "Shipped", n)).collect();
    bus.publish(&[placed[0].clone(), other[0].clone(), placed[1].clone()])
        .await
        .expect("publish");
    bus.publish(&[other[1].clone(), placed[2].clone()])
        .await
        .expect("publish");

    assert_eq!(
        recorder.wait_for(3, Duration::from_secs(10)).await,
        3,
        "the bound messages arrive"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let handled = recorder.handled();
    assert_eq!(handled.len(), 3, "unbound routing keys are not delivered");
    for sent in &placed {
        let got = handled
            .iter()
            .find(|h| h.event_id == sent.event_id)
            .expect("every bound message arrives");
        assert_eq!(got.event_type, sent.event_type);
        assert_eq!(got.stream_id, sent.stream_id);
        assert_eq!(got.stream_version, sent.stream_version);
        assert_eq!(got.schema_version, sent.schema_version);
        assert_eq!(
            got.metadata, sent.metadata,
            "correlation, causation, traceparent and headers survive"
        );
        let got_json: serde_json::Value = serde_json::from_slice(&got.payload).unwrap();
        let sent_json: serde_json::Value = serde_json::from_slice(&sent.payload).unwrap();
        assert_eq!(got_json, sent_json, "the payload survives");
    }
    handle.stop().await;
    assert!(bus.dead_letters(&consumer, 10).await.unwrap().is_empty());
}

async fn retries_then_succeeds_and_dead_letters_without_stopping<B: EventBus + DeadLetterQueue>(
    bus: &B,
) {
    let category = unique_category("retry");
    let recorder = RecordingHandler::new();
    let consumer = format!("{category}-c");
    let flaky = event(&category, "Placed", 1);
    let poison = event(&category, "Placed", 2);
    let rejected = event(&category, "Placed", 3);
    let good = event(&category, "Placed", 4);
    recorder.set(flaky.event_id, HandlerBehaviour::FailFirst(2));
    recorder.set(poison.event_id, HandlerBehaviour::AlwaysFail);
    recorder.set(rejected.event_id, HandlerBehaviour::Reject);
    let handle = bus
        .subscribe(
            Consumer::new(&consumer, [format!("{category}.#")]).with_retry(fast_retry(3)),
            recorder.clone(),
        )
        .await
        .unwrap();
    bus.publish(&[
        flaky.clone(),
        poison.clone(),
        rejected.clone(),
        good.clone(),
    ])
    .await
    .unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let dead = bus.dead_letters(&consumer, 10).await.unwrap();
        if (dead.len() >= 2 && recorder.handled_count() >= 2)
            || tokio::time::Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let handled: Vec<Uuid> = recorder.handled().iter().map(|e| e.event_id).collect();
    assert!(
        handled.contains(&good.event_id),
        "a poison message does not stop the consumer"
    );
    assert_eq!(
        handled.iter().filter(|id| **id == flaky.event_id).count(),
        1,
        "a message that failed twice is handled once on the third delivery: handled {handled:?}, flaky {} good {} deliveries {}",
        flaky.event_id, good.event_id, recorder.deliveries(flaky.event_id)
    );
    assert_eq!(recorder.deliveries(flaky.event_id), 3);
    assert_eq!(
        recorder.deliveries(poison.event_id),
        3,
        "an always-failing message is tried max_attempts times"
    );
    assert_eq!(
        recorder.deliveries(rejected.event_id),
        1,
        "a rejected message is not retried"
    );

    let dead = bus.dead_letters(&consumer, 10).await.unwrap();
    assert_eq!(
        dead.len(),
        2,
        "the failing and the rejected message are dead letters: {dead:?}"
    );
    let poison_letter = dead
        .iter()
        .find(|d| d.event.as_ref().map(|e| e.event_id) == Some(poison.event_id))
        .expect("the poison message is a dead letter");
    assert_eq!(
        poison_letter.attempts, 3,
        "the attempt count travels with the dead letter"
    );
    assert!(
        poison_letter.reason.contains("induced failure"),
        "the last error travels with the dead letter: {}",
        poison_letter.reason
    );
    let rejected_letter = dead
        .iter()
        .find(|d| d.event.as_ref().map(|e| e.event_id) == Some(rejected.event_id))
        .expect("the rejected message is a dead letter");
    assert_eq!(rejected_letter.attempts, 1);
    handle.stop().await;
    bus.purge_dead_letters(&consumer).await.unwrap();
}

async fn competing_consumers_share_the_work<B: EventBus + DeadLetterQueue>(bus: &B) {
    let category = unique_category("compete");
    let consumer = format!("{category}-c");
    let (a, b) = (
        RecordingHandler::with_delay(Duration::from_millis(2)),
        RecordingHandler::with_delay(Duration::from_millis(2)),
    );
    let subscription = Consumer::new(&consumer, [format!("{category}.*")]).with_prefetch(4);
    let ha = bus
        .subscribe(subscription.clone(), a.clone())
        .await
        .unwrap();
    let hb = bus.subscribe(subscription, b.clone()).await.unwrap();
    let events: Vec<_> = (0..60).map(|n| event(&category, "Placed", n)).collect();
    bus.publish(&events).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while a.handled_count() + b.handled_count() < events.len()
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ids: Vec<Uuid> = a
        .handled()
        .iter()
        .chain(b.handled().iter())
        .map(|e| e.event_id)
        .collect();
    ids.sort();
    let mut expected: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    expected.sort();
    assert_eq!(
        ids, expected,
        "two instances of one consumer handle each message once in all"
    );
    assert!(
        !a.handled().is_empty() && !b.handled().is_empty(),
        "both instances got work"
    );
    ha.stop().await;
    hb.stop().await;
}

async fn dead_letters_can_be_requeued_and_purged<B: EventBus + DeadLetterQueue>(bus: &B) {
    let category = unique_category("dlq");
    let consumer = format!("{category}-c");
    let recorder = RecordingHandler::new();
    let first = event(&category, "Placed", 1);
    let second = event(&category, "Placed", 2);
    recorder.set(first.event_id, HandlerBehaviour::Reject);
    recorder.set(second.event_id, HandlerBehaviour::Reject);
    let handle = bus
        .subscribe(
            Consumer::new(&consumer, [format!("{category}.placed")]).with_retry(fast_retry(2)),
            recorder.clone(),
        )
        .await
        .unwrap();
    bus.publish(&[first.clone(), second.clone()]).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bus.dead_letters(&consumer, 10).await.unwrap().len() < 2
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dead = bus.dead_letters(&consumer, 10).await.unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(
        bus.dead_letters(&consumer, 10).await.unwrap().len(),
        2,
        "listing leaves dead letters in place"
    );

    // Fixed: the handler accepts them now, and one is moved back for reprocessing.
    recorder.set(first.event_id, HandlerBehaviour::Succeed);
    recorder.set(second.event_id, HandlerBehaviour::Succeed);
    assert_eq!(bus.requeue_dead_letters(&consumer, 1).await.unwrap(), 1);
    assert_eq!(
        recorder.wait_for(1, Duration::from_secs(10)).await,
        1,
        "a requeued dead letter is handled again"
    );
    assert_eq!(bus.dead_letters(&consumer, 10).await.unwrap().len(), 1);
    assert_eq!(
        bus.purge_dead_letters(&consumer).await.unwrap(),
        1,
        "purge deletes the rest"
    );
    assert!(bus.dead_letters(&consumer, 10).await.unwrap().is_empty());
    handle.stop().await;
}
