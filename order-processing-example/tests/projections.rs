//! `order-processing projections status|rebuild`: the read models on PostgreSQL, their
//! checkpoints and lag, and a rebuild while the order service keeps serving its listing.

mod common;

use common::processes::BINARY;
use common::*;
use order_processing_example::{ServiceKind, Settings};
use tokio::process::Command;

/// Runs `order-processing projections ARGS` with `settings`' database; returns its stdout,
/// failing the test when it fails.
async fn projections(args: &[&str], settings: &Settings) -> String {
    let mut command = Command::new(BINARY);
    command.arg("projections").args(args);
    if let Some(url) = &settings.database_url {
        command
            .args(["--database-url", url])
            .args(["--database-schema", &settings.database_schema]);
    }
    let output = command
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("AMQP_URL")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run the projections command");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "projections {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_the_order_listing_and_a_rebuild_keeps_it_serving() {
    let settings = isolated(patient());
    let _schema = SchemaGuard(settings.database_schema.clone());
    let backends = connect(&settings).await;
    let system = System::start(backends, settings.clone(), &ServiceKind::ALL).await;
    let customer = customer();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(system.place(&customer, &[(KEYBOARD, 1, "49.99")]).await);
    }
    ids.reverse();
    let listed = |list: serde_json::Value| -> Vec<String> {
        list.as_array()
            .expect("array")
            .iter()
            .map(|o| o["orderId"].as_str().unwrap().to_owned())
            .collect()
    };

    let status = eventually("the listing's runner to catch up", || async {
        let status = projections(&["status"], &settings).await;
        status.contains(", 0 events behind").then_some(status)
    })
    .await;
    assert!(
        status.contains("order-listing v1 generation 1 active: checkpoint "),
        "{status}"
    );
    // Every read model of the example lives in PostgreSQL, none in process memory.
    for model in [
        "notification-listing",
        "analytics-figures",
        "product-catalog",
    ] {
        assert!(
            status.contains(&format!("{model} v1 generation 1 active: checkpoint ")),
            "{status}"
        );
    }
    // The notifications are listed from their table.
    eventually("the orders' notifications listed", || async {
        let (_, list) = system
            .get(
                ServiceKind::Notification,
                &format!("/api/notifications/customer/{customer}"),
            )
            .await;
        (list.as_array()?.len() >= 3).then_some(())
    })
    .await;
    let schema = &settings.database_schema;
    let pool = sqlx::PgPool::connect(settings.database_url.as_deref().unwrap())
        .await
        .expect("connect");
    let rows: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{schema}\".notification_listing WHERE customer_id = $1"
    ))
    .bind(uuid::Uuid::parse_str(&customer).unwrap())
    .fetch_one(&pool)
    .await
    .expect("count the notification rows");
    assert!(rows >= 3, "{rows}");
    pool.close().await;

    let out = projections(&["rebuild", "order-listing"], &settings).await;
    assert!(out.contains("order-listing: rebuild requested"), "{out}");
    // The listing serves throughout the rebuild, and the rebuilt generation takes over.
    eventually("generation 2 to take over", || async {
        let (status, list) = system
            .get(
                ServiceKind::Order,
                &format!("/api/orders/customer/{customer}"),
            )
            .await;
        assert_eq!((status, listed(list)), (200, ids.clone()));
        let status = projections(&["status"], &settings).await;
        (status.contains("order-listing v1 generation 2 active")
            && !status.contains("order-listing v1 generation 1"))
        .then_some(())
    })
    .await;
    let more = system.place(&customer, &[(KEYBOARD, 1, "49.99")]).await;
    let (_, list) = system
        .get(
            ServiceKind::Order,
            &format!("/api/orders/customer/{customer}"),
        )
        .await;
    assert_eq!(
        listed(list)[0],
        more,
        "written inline into the rebuilt generation"
    );

    let out = projections(&["rebuild", "no-such-model"], &Settings::default()).await;
    assert!(out.contains("read models live in memory"), "{out}");
    system.stop().await;
}

#[tokio::test]
async fn unknown_read_models_are_refused() {
    let settings = isolated(patient());
    let _schema = SchemaGuard(settings.database_schema.clone());
    let output = Command::new(BINARY)
        .args(["projections", "rebuild", "no-such-model"])
        .args(["--database-url", settings.database_url.as_deref().unwrap()])
        .args(["--database-schema", &settings.database_schema])
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no-such-model"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A rebuild of the analytics figures while orders keep coming: the figures answer throughout,
/// never fewer than before (no half-built generation is shown), and once the rebuilt
/// generation serves they count every order exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_rebuilt_while_orders_flow_counts_each_order_once() {
    let settings = isolated(patient());
    let _schema = SchemaGuard(settings.database_schema.clone());
    let backends = connect(&settings).await;
    let system =
        std::sync::Arc::new(System::start(backends, settings.clone(), &ServiceKind::ALL).await);
    let date = chrono::Utc::now().date_naive();
    let range = format!(
        "/api/analytics/metrics/range?from={}&to={}",
        date - chrono::Days::new(1),
        date + chrono::Days::new(1)
    );
    let placed = |days: serde_json::Value| -> u64 {
        days.as_array()
            .map(|days| days.iter().filter_map(|d| d["ordersPlaced"].as_u64()).sum())
            .unwrap_or_default()
    };
    let customer = customer();
    let mut orders = 0u64;
    for _ in 0..10 {
        system.place(&customer, &[(MOUSE, 1, "5.00")]).await;
        orders += 1;
    }
    eventually("the first orders counted", || async {
        let (_, days) = system.get(ServiceKind::Analytics, &range).await;
        (placed(days) == orders).then_some(())
    })
    .await;

    let flow = tokio::spawn({
        let (system, customer) = (system.clone(), customer.clone());
        async move {
            for _ in 0..20 {
                system.place(&customer, &[(MOUSE, 1, "5.00")]).await;
            }
        }
    });
    let out = projections(&["rebuild", "analytics-figures"], &settings).await;
    assert!(
        out.contains("analytics-figures: rebuild requested"),
        "{out}"
    );
    let seen = std::sync::atomic::AtomicU64::new(orders);
    eventually("generation 2 to take over", || async {
        let (status, days) = system.get(ServiceKind::Analytics, &range).await;
        assert_eq!(status, 200);
        let now = placed(days);
        let before = seen.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
        assert!(
            now >= before,
            "the figures went back from {before} to {now}"
        );
        let status = projections(&["status"], &settings).await;
        (status.contains("analytics-figures v1 generation 2 active")
            && !status.contains("analytics-figures v1 generation 1"))
        .then_some(())
    })
    .await;
    flow.await.unwrap();
    orders += 20;
    eventually("every order counted once", || async {
        let (_, days) = system.get(ServiceKind::Analytics, &range).await;
        let now = placed(days);
        assert!(now <= orders, "{now} counted for {orders} orders");
        (now == orders).then_some(())
    })
    .await;
    match std::sync::Arc::try_unwrap(system) {
        Ok(system) => system.stop().await,
        Err(_) => panic!("the system is still shared"),
    }
}
