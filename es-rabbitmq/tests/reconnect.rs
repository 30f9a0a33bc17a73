//! The broker closes the bus's connection mid-stream: the bus reconnects, re-declares its
//! topology, resumes its consumer, and nothing is lost.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use es_core::bus::Consumer;
use es_core::testing::RecordingHandler;
use es_core::EventBus;
use uuid::Uuid;

/// The broker-side pids of the connections whose client-provided name is `name`.
fn connection_pids(name: &str) -> Vec<String> {
    let output = Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties", "--quiet"])
        .output()
        .expect("rabbitmqctl runs (the broker's CLI must be on PATH for this test)");
    assert!(
        output.status.success(),
        "rabbitmqctl list_connections failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // One line per connection: `<pid>\t[client properties]`.
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains(name))
        .filter_map(|line| line.split('\t').next())
        .map(|pid| pid.trim().to_owned())
        .collect()
}

fn close_connection(pid: &str) {
    let status = Command::new("rabbitmqctl")
        .args(["close_connection", pid, "closed by the reconnect test"])
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl close_connection {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_reconnects_after_the_broker_closes_its_connection_and_loses_nothing() {
    let config = common::config("reconnect");
    let name = config.connection_name.clone();
    let bus = common::connect(config).await;
    let category = common::category();
    let consumer = common::unique("reconnect");
    // Slow enough that messages are in flight and waiting when the connection goes.
    let recorder = RecordingHandler::with_delay(Duration::from_millis(50));
    let handle = bus
        .subscribe(
            Consumer::new(&consumer, [format!("{category}.#")]).with_prefetch(2),
            recorder.clone(),
        )
        .await
        .unwrap();

    let events: Vec<_> = (0..600)
        .map(|n| common::event(&category, "Placed", n))
        .collect();
    let (before_close, after_close) = events.split_at(300);
    bus.publish(before_close).await.unwrap();
    assert!(recorder.wait_for(50, Duration::from_secs(20)).await >= 50);

    let before = connection_pids(&name);
    assert_eq!(before.len(), 1, "the bus has one connection named {name}");
    let publisher = {
        let bus = bus.clone();
        let events = after_close.to_vec();
        tokio::spawn(async move {
            let mut failures = 0;
            for batch in events.chunks(10) {
                // As the relay does: a batch that is not confirmed is published again.
                while let Err(error) = bus.publish(batch).await {
                    failures += 1;
                    assert!(failures < 500, "publishing never recovered: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            failures
        })
    };
    let handled_at_close = recorder.handled_count();
    close_connection(&before[0]);
    assert!(
        handled_at_close < 300,
        "the close came mid-stream ({handled_at_close} of the first 300 handled)"
    );

    let failures = publisher.await.expect("publisher task");
    let everything = common::eventually(Duration::from_secs(30), || async {
        let handled: HashSet<Uuid> = recorder.handled().iter().map(|e| e.event_id).collect();
        events.iter().all(|e| handled.contains(&e.event_id))
    })
    .await;
    let handled: HashSet<Uuid> = recorder.handled().iter().map(|e| e.event_id).collect();
    let missing = events
        .iter()
        .filter(|e| !handled.contains(&e.event_id))
        .count();
    assert!(everything, "{missing} events were lost");
    assert!(
        recorder.handled_count() > handled_at_close,
        "the consumer resumed after the close"
    );
    let after = connection_pids(&name);
    assert_eq!(after.len(), 1, "one new connection: {after:?}");
    assert_ne!(after, before, "the bus opened a new connection");
    eprintln!(
        "publish failures during the outage: {failures}; deliveries {} for {} events",
        recorder.handled_count(),
        events.len()
    );
    handle.stop().await;
    common::cleanup(&bus, &[&consumer]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_cut_off_by_a_lost_connection_is_reported_failed_never_sent() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let category = common::category();
    let consumer = common::unique("inflight");
    let mut config = common::config("inflight");
    config.topology = config
        .topology
        .clone()
        .with_queue(&consumer, [format!("{category}.#")]);
    let name = config.connection_name.clone();
    let bus = common::connect(config).await;

    let closed = Arc::new(AtomicBool::new(false));
    let publisher = {
        let bus = bus.clone();
        let closed = closed.clone();
        let category = category.clone();
        tokio::spawn(async move {
            // (event ids, whether publish said Ok) per batch.
            let mut outcomes: Vec<(Vec<Uuid>, bool)> = Vec::new();
            let mut ok_after_close = 0;
            let mut n = 0;
            while ok_after_close < 5 {
                assert!(outcomes.len() < 2_000, "publishing never recovered");
                let batch: Vec<_> = (0..200)
                    .map(|_| {
                        n += 1;
                        common::event(&category, "Placed", n)
                    })
                    .collect();
                let was_closed = closed.load(Ordering::SeqCst);
                let ok = bus.publish(&batch).await.is_ok();
                if ok && was_closed {
                    ok_after_close += 1;
                }
                if !ok {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                outcomes.push((batch.iter().map(|e| e.event_id).collect(), ok));
            }
            outcomes
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pids = connection_pids(&name);
    assert_eq!(pids.len(), 1, "the bus has one connection named {name}");
    close_connection(&pids[0]);
    closed.store(true, Ordering::SeqCst);
    let outcomes = publisher.await.expect("publisher task");

    let recorder = RecordingHandler::new();
    let handle = bus
        .subscribe(
            Consumer::new(&consumer, [format!("{category}.#")]).with_prefetch(256),
            recorder.clone(),
        )
        .await
        .unwrap();
    let confirmed: Vec<Uuid> = outcomes
        .iter()
        .filter(|(_, ok)| *ok)
        .flat_map(|(ids, _)| ids.iter().copied())
        .collect();
    let arrived = common::eventually(Duration::from_secs(30), || async {
        let handled: HashSet<Uuid> = recorder.handled().iter().map(|e| e.event_id).collect();
        confirmed.iter().all(|id| handled.contains(id))
    })
    .await;
    let failed = outcomes.iter().filter(|(_, ok)| !*ok).count();
    eprintln!(
        "{} batches, {failed} reported failed, {} messages confirmed, {} received",
        outcomes.len(),
        confirmed.len(),
        recorder.handled_count()
    );
    assert!(arrived, "every message reported sent is in the queue");
    handle.stop().await;
    common::cleanup(&bus, &[&consumer]).await;
}
