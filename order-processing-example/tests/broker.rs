//! RabbitMQ as an operator meets it.
//!
//! - A service started while the broker cannot be reached stays up, answers `/health` 503,
//!   names the broker in its log, and starts consuming by itself once the broker answers. The
//!   broker "appears" through a small TCP proxy in front of the shared one: it refuses
//!   connections at first, then forwards them.
//! - `order-processing dlq list|requeue|purge` shows dead letters, hands them back to their
//!   service (which then handles them once), and drops them.

mod common;

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::processes::*;
use common::*;
use es_core::testing::{HandlerBehaviour, RecordingHandler};
use es_core::{Consumer, RecordedEvent, StreamId};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// A proxy on a port of its own to `target`: it closes every connection at once until
/// `forward` is set, then carries them through.
struct Proxy {
    port: u16,
    forward: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("its address").port();
        let forward = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let forward = forward.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !forward.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let target = target.clone();
                    tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(&target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                }
            }
        });
        Proxy {
            port,
            forward,
            task,
        }
    }

    fn open(&self) {
        self.forward.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The host and port of the test broker's URL (`amqp://user:pass@host:port/vhost`).
fn broker_address() -> String {
    let url = amqp_url();
    let after_at = url.rsplit('@').next().unwrap_or(&url);
    let host_port = after_at.split('/').next().unwrap_or(after_at);
    let host_port = host_port.trim_start_matches("amqp://");
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5672")
    }
}

/// `amqp_url()` pointed at `port` on this host instead.
fn url_through(port: u16) -> String {
    let url = amqp_url();
    url.replace(&broker_address(), &format!("127.0.0.1:{port}"))
}

/// One service on the in-memory store, the broker at `amqp_url`, names of `suffix`.
fn service(kind: &str, amqp_url: &str, port: u16, suffix: &str) -> Child {
    Command::new(BINARY)
        .arg(kind)
        .args(["--amqp-url", amqp_url])
        .args(["--exchange", &format!("op-test-{suffix}")])
        .args(["--queue-prefix", &format!("op-test-{suffix}-")])
        .args(["--amqp-queue-expires", "120s"])
        .args([format!("--{kind}-port"), port.to_string()])
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("AMQP_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the order-processing binary")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_started_without_its_broker_waits_for_it_and_then_consumes() {
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let proxy = Proxy::start(broker_address()).await;
    let through_proxy = url_through(proxy.port);
    let notification_port = free_port();
    let mut notification = service("notification", &through_proxy, notification_port, &suffix);

    let health_url = format!("http://127.0.0.1:{notification_port}/health");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            notification.try_wait().expect("its status").is_none(),
            "the service exited because the broker was unreachable"
        );
        if let Ok(response) = client().get(&health_url).send().await {
            if response.status() == 503 {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/health never answered 503 while the broker was away"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Still up a while later, still saying it is not healthy.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        notification.try_wait().expect("its status").is_none(),
        "the service exited while the broker was unreachable"
    );
    let health: serde_json::Value = client()
        .get(&health_url)
        .send()
        .await
        .expect("/health answers")
        .json()
        .await
        .expect("json");
    assert_eq!(health["status"], "Unhealthy", "{health}");

    proxy.open();
    wait_healthy(
        notification_port,
        "/health to answer 200 once the broker is there",
    )
    .await;

    // An order placed now (by an order service on the broker itself) reaches it.
    let order_port = free_port();
    let _order = service("order", &amqp_url(), order_port, &suffix);
    wait_healthy(order_port, "the order service").await;
    let customer = customer();
    let response = client()
        .post(format!("http://127.0.0.1:{order_port}/api/orders"))
        .json(&order_body(&customer, &[(MOUSE, 1, "25.00")]))
        .send()
        .await
        .expect("place an order");
    assert_eq!(response.status(), 201);
    let url = format!("http://127.0.0.1:{notification_port}/api/notifications/customer/{customer}");
    let notifications = eventually("the OrderPlaced notification", || async {
        let list: serde_json::Value = client().get(&url).send().await.ok()?.json().await.ok()?;
        (!list.as_array()?.is_empty()).then_some(list)
    })
    .await;
    assert_eq!(notifications[0]["kind"], "OrderPlaced", "{notifications}");

    assert!(sigterm(&notification).success());
    notification.wait().await.expect("it exits");
    let log = read_log(&mut notification).await;
    assert!(
        log.contains(&format!("127.0.0.1:{}", proxy.port)),
        "the log names the broker it cannot reach: {log}"
    );
}

/// Runs `order-processing dlq ARGS` against the test broker with the names of `suffix`;
/// returns its output, failing the test when it fails.
async fn dlq(args: &[&str], suffix: &str) -> String {
    let output = Command::new(BINARY)
        .arg("dlq")
        .args(args)
        .args(["--amqp-url", &amqp_url()])
        .args(["--exchange", &format!("op-test-{suffix}")])
        .args(["--queue-prefix", &format!("op-test-{suffix}-")])
        .args(["--amqp-queue-expires", "120s"])
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("AMQP_URL")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run the dlq command");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "dlq {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// An `OrderPlaced` event as the order service publishes it.
fn order_placed(customer: &str) -> RecordedEvent {
    let order_id = uuid::Uuid::new_v4();
    RecordedEvent {
        event_id: uuid::Uuid::now_v7(),
        stream_id: StreamId::for_aggregate("order", &order_id.to_string()).unwrap(),
        stream_version: 1,
        position: Default::default(),
        recorded_at: chrono::Utc::now(),
        event_type: "OrderPlaced".into(),
        schema_version: 1,
        payload: serde_json::to_vec(&serde_json::json!({
            "orderId": order_id, "customerId": customer, "totalAmount": 25.0,
            "items": [], "placedAt": chrono::Utc::now(),
        }))
        .unwrap()
        .into(),
        metadata: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_requeued_by_the_dlq_command_is_handled_once() {
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let settings = order_processing_example::Settings {
        amqp_url: Some(amqp_url()),
        exchange: format!("op-test-{suffix}"),
        queue_prefix: format!("op-test-{suffix}-"),
        queue_expires: Some(Duration::from_secs(120)),
        ..Default::default()
    };
    let backends = order_processing_example::Backends::from_settings(&settings)
        .await
        .expect("backends");
    let bus = backends.bus.clone();
    let queue = format!("op-test-{suffix}-notification-service");

    // Dead-letter two events for real: a consumer on the notification queue rejects them.
    let customer = customer();
    let (kept, dropped) = (order_placed(&customer), order_placed(&customer));
    let rejecting = RecordingHandler::new();
    rejecting.set(kept.event_id, HandlerBehaviour::Reject);
    rejecting.set(dropped.event_id, HandlerBehaviour::Reject);
    let consumer = bus
        .subscribe(
            Consumer::new(queue.clone(), ["order.placed"]),
            rejecting.clone(),
        )
        .await
        .expect("the broker answers (start RabbitMQ or set AMQP_URL)");
    bus.publish(&[kept.clone(), dropped.clone()]).await.unwrap();
    let listed = eventually("two dead letters", || async {
        let out = dlq(&["list", "--service", "notification"], &suffix).await;
        out.contains(&format!("{queue}.dlq: 2 listed"))
            .then_some(out)
    })
    .await;
    consumer.stop().await;
    for event in [&kept, &dropped] {
        assert!(listed.contains(&event.event_id.to_string()), "{listed}");
    }
    assert!(listed.contains("type=OrderPlaced"), "{listed}");
    assert!(listed.contains("attempts=1"), "{listed}");
    assert!(listed.contains("error=induced rejection"), "{listed}");
    // Without --service: all five queues, the other four empty.
    let everywhere = dlq(&["list"], &suffix).await;
    assert_eq!(everywhere.matches(" 0 listed").count(), 4, "{everywhere}");
    assert_eq!(everywhere.matches(" 2 listed").count(), 1, "{everywhere}");

    // Requeue one while the service is down, then start it: it handles that one, once.
    let out = dlq(
        &["requeue", "--service", "notification", "--limit", "1"],
        &suffix,
    )
    .await;
    assert!(out.contains("1 requeued"), "{out}");
    // The two were rejected concurrently, so either may stand first in the dead-letter queue:
    // the one still listed is the one the purge drops, the other is the one requeued.
    let out = dlq(&["list", "--service", "notification"], &suffix).await;
    assert!(out.contains("1 listed"), "{out}");
    let (kept, dropped) = if out.contains(&dropped.event_id.to_string()) {
        (kept, dropped)
    } else {
        (dropped, kept)
    };
    assert!(out.contains(&dropped.event_id.to_string()), "{out}");
    let out = dlq(&["purge", "--service", "notification"], &suffix).await;
    assert!(out.contains("1 purged"), "{out}");

    let port = free_port();
    let mut notification = service("notification", &amqp_url(), port, &suffix);
    wait_healthy(port, "the notification service").await;
    let url = format!("http://127.0.0.1:{port}/api/notifications/customer/{customer}");
    let list = eventually("the requeued event handled", || async {
        let list: serde_json::Value = client().get(&url).send().await.ok()?.json().await.ok()?;
        (!list.as_array()?.is_empty()).then_some(list)
    })
    .await;
    assert_eq!(list[0]["orderId"], kept.stream_id.entity_id(), "{list}");
    // Once: nothing more arrives, and nothing is left in the dead-letter queue.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let list: serde_json::Value = client()
        .get(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let out = dlq(&["list"], &suffix).await;
    assert_eq!(out.matches(" 0 listed").count(), 5, "{out}");
    assert!(sigterm(&notification).success());
    notification.wait().await.expect("it exits");
}
