//! A backend lost after start: `/health` says so with 503, reads keep working where they can,
//! and the service recovers by itself when the backend is back. The lost backend is a private
//! Redis server this test starts and stops (the shared services are never touched).

mod common;

use std::process::Stdio;

use common::processes::*;
use common::*;
use order_processing_example::ServiceKind;
use tokio::process::{Child, Command};

fn private_redis(port: u16) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server on the PATH (the fault test runs a private one)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_redis_turns_health_503_and_the_service_recovers_by_itself() {
    let port = free_port();
    let mut redis = private_redis(port);
    let mut settings = isolated(patient());
    settings.redis_url = Some(format!("redis://127.0.0.1:{port}"));
    let backends = eventually("the private Redis to answer", || async {
        let backends = order_processing_example::Backends::from_settings(&settings)
            .await
            .ok()?;
        backends.health.check().await.0.then_some(backends)
    })
    .await;
    let _schema = SchemaGuard(settings.database_schema.clone());
    let system = System::start(
        backends,
        settings,
        &[
            ServiceKind::Order,
            ServiceKind::Inventory,
            ServiceKind::Payment,
        ],
    )
    .await;
    let order_id = system.place(&customer(), &[(MOUSE, 1, "25.00")]).await;

    redis.kill().await.expect("stop the private Redis");
    let health = eventually("health to turn 503", || async {
        let (status, health) = system.get(ServiceKind::Order, "/health").await;
        (status == 503).then_some(health)
    })
    .await;
    assert_eq!(health["status"], "Unhealthy");
    assert_eq!(
        health["entries"]["cache"]["status"], "Unhealthy",
        "{health}"
    );
    assert_eq!(
        health["entries"]["eventStore"]["status"], "Healthy",
        "{health}"
    );
    // The cache is never the truth: reads go to the store meanwhile, and orders still flow.
    let (status, order) = system
        .get(ServiceKind::Order, &format!("/api/orders/{order_id}"))
        .await;
    assert_eq!(status, 200, "{order}");
    assert_eq!(system.settled(&order_id).await["status"], "Confirmed");
    // Idempotency keys live in Redis: without it a keyed request is refused, not a crash.
    let (status, problem) = system
        .post_order(
            &order_body(&customer(), &[(MOUSE, 1, "25.00")]),
            Some("while-down"),
        )
        .await;
    assert_eq!(status, 503, "{problem}");

    let _redis = private_redis(port);
    eventually("health to recover", || async {
        let (status, _) = system.get(ServiceKind::Order, "/health").await;
        (status == 200).then_some(())
    })
    .await;
    let (status, _) = system
        .post_order(
            &order_body(&customer(), &[(MOUSE, 1, "25.00")]),
            Some("after"),
        )
        .await;
    assert_eq!(status, 201);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_backend_is_named_in_the_log_with_its_url() {
    let redis_port = free_port();
    let mut redis = private_redis(redis_port);
    let order_port = free_port();
    let mut service = all_services(order_port)
        .args(["--redis-url", &format!("redis://127.0.0.1:{redis_port}")])
        .env_remove("DATABASE_URL")
        .env_remove("AMQP_URL")
        .env("RUST_LOG", "info")
        .spawn()
        .expect("spawn");
    wait_healthy(order_port, "the service to be healthy").await;
    redis.kill().await.expect("stop the private Redis");
    wait_for_health(order_port, 503, "health to turn 503").await;
    // The watcher looks every 5 s.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    sigterm(&service);
    service.wait().await.expect("exit");
    let log = read_log(&mut service).await;
    assert!(log.contains("a backend cannot be reached"), "{log}");
    assert!(
        log.contains(&format!("redis://127.0.0.1:{redis_port}")),
        "{log}"
    );
}
