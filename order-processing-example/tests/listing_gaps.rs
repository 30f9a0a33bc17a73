//! The PostgreSQL order listing when some of an order's events were appended by code that does
//! not write the listing inline (a rolling deploy): the inline write must not fold a later
//! event over a row that misses an earlier one; the runner brings the row up in order.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use es_core::{EventStore, ExpectedVersion, Metadata, NewEvent, StreamId};
use es_postgres::{PgConfig, PgEventStore, PgReadModelRunner};
use order_processing_example::listing::{Listings, Page, PgOrderListing};
use order_processing_example::order::OrderEvent;
use rust_decimal::Decimal;
use uuid::Uuid;

/// A migrated store in a schema of its own (dropped with the guard) whose commits write the
/// order listing inline, and the listings it serves.
async fn store_with_listings(max_connections: u32) -> (SchemaGuard, PgEventStore, Listings) {
    let schema = format!("op_test_{}", &Uuid::new_v4().simple().to_string()[..12]);
    let guard = SchemaGuard(schema.clone());
    let mut config = PgConfig::new(&schema);
    config.max_connections = max_connections;
    let store = PgEventStore::connect(&database_url(), config)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    let (store, listings) = Listings::install(store).await.expect("install");
    (guard, store, listings)
}

#[tokio::test]
async fn an_event_ahead_of_the_row_waits_for_the_runner() {
    let schema = format!("op_test_{}", &Uuid::new_v4().simple().to_string()[..12]);
    let _guard = SchemaGuard(schema.clone());
    let mut config = PgConfig::new(&schema);
    config.max_connections = 2;
    let plain = PgEventStore::connect(&database_url(), config.clone())
        .await
        .expect("connect");
    plain.migrate().await.expect("migrate");
    // The listing set up: its table exists and later commits of `inline` (and of its clones,
    // so a store of its own stands for the older code) write it.
    let with_listing = PgEventStore::connect(&database_url(), config)
        .await
        .expect("connect");
    let (inline, listings) = Listings::install(with_listing).await.expect("install");

    let (order_id, customer_id) = (Uuid::now_v7(), Uuid::new_v4());
    let stream = StreamId::for_aggregate("order", &order_id.to_string()).unwrap();
    let placed = OrderEvent::OrderPlaced {
        order_id,
        customer_id,
        items: Vec::new(),
        total_amount: Decimal::new(4999, 2),
        placed_at: Utc::now(),
    };
    let reserved = OrderEvent::OrderInventoryReserved {
        order_id,
        customer_id,
        at: Utc::now(),
    };
    // Version 1 through a store that does not write the listing (older code) ...
    plain
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![NewEvent::from_domain(&placed, Metadata::default()).unwrap()],
        )
        .await
        .expect("append version 1");
    // ... version 2 through one that does.
    inline
        .append(
            &stream,
            ExpectedVersion::Exact(1),
            vec![NewEvent::from_domain(&reserved, Metadata::default()).unwrap()],
        )
        .await
        .expect("append version 2");

    let page = Page {
        limit: 10,
        after: None,
    };
    // The runner reads below the visibility horizon, which a transaction of a test beside this
    // one can hold back for a moment: catch up until the order is there.
    let runner = PgReadModelRunner::new(plain.clone());
    let orders = eventually("the runner listed the order", || async {
        runner
            .catch_up(&PgOrderListing::default())
            .await
            .expect("catch up");
        let (orders, _) = listings.page(customer_id, &page).await.expect("page");
        (orders.first().is_some_and(|o| o.version == 2)).then_some(orders)
    })
    .await;
    assert_eq!(orders.len(), 1, "the order is listed for its customer");
    assert_eq!(orders[0].order_id, order_id);
    assert_eq!(orders[0].version, 2);
    assert_eq!(
        serde_json::to_value(orders[0].status).unwrap(),
        "InventoryReserved"
    );
    inline.close().await;
    plain.close().await;
}

/// The runner reads past what the commits already wrote inline without taking the rows'
/// locks: a transaction holding an order's row (as the inline write of its next event does)
/// does not stall the listing's runner.
#[tokio::test]
async fn the_runner_passes_over_rows_written_inline_without_waiting_for_their_locks() {
    let (_guard, store, listings) = store_with_listings(4).await;

    let (order_id, customer_id) = (Uuid::now_v7(), Uuid::new_v4());
    let stream = StreamId::for_aggregate("order", &order_id.to_string()).unwrap();
    let placed = OrderEvent::OrderPlaced {
        order_id,
        customer_id,
        items: Vec::new(),
        total_amount: Decimal::new(1250, 2),
        placed_at: Utc::now(),
    };
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![NewEvent::from_domain(&placed, Metadata::default()).unwrap()],
        )
        .await
        .expect("append");

    let mut holder = store.pool().begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM order_listing WHERE order_id = $1 FOR UPDATE")
        .bind(order_id)
        .execute(&mut *holder)
        .await
        .expect("lock the row");
    let caught_up = tokio::time::timeout(
        Duration::from_secs(5),
        PgReadModelRunner::new(store.clone()).catch_up(&PgOrderListing::default()),
    )
    .await;
    holder.rollback().await.expect("rollback");
    caught_up
        .expect("the runner waited for the lock of a row that had the event already")
        .expect("catch up");

    let page = Page {
        limit: 10,
        after: None,
    };
    let (orders, _) = listings.page(customer_id, &page).await.expect("page");
    assert_eq!(orders.len(), 1);
    assert_eq!((orders[0].order_id, orders[0].version), (order_id, 1));
    store.close().await;
}

/// `/health` names a read model whose runner lags past the limit, answering `"Degraded"` with
/// 200 (the service still works), and is `"Healthy"` again once the runner has caught up.
#[tokio::test]
async fn a_lagging_read_model_degrades_health_without_failing_it() {
    use axum::body::Body;
    use axum::http::Request;
    use order_processing_example::http::{finish_router, Health};
    use tower::ServiceExt;

    let (_guard, store, _) = store_with_listings(2).await;
    let health = Health::default().with_soft(
        "readModels",
        order_processing_example::listing::lag_probe(store.clone(), Duration::from_millis(200)),
    );
    let router = finish_router(
        axum::Router::new(),
        utoipa::openapi::OpenApi::default(),
        health,
    );
    let get_health = || async {
        let response = router
            .clone()
            .oneshot(Request::get("/health").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
        )
    };
    let (status, body) = get_health().await;
    assert_eq!(
        (status, &body["status"]),
        (200, &serde_json::json!("Healthy")),
        "{body}"
    );

    // An order written (inline) with no runner running: its checkpoint falls behind.
    let order_id = Uuid::now_v7();
    let stream = StreamId::for_aggregate("order", &order_id.to_string()).unwrap();
    let placed = OrderEvent::OrderPlaced {
        order_id,
        customer_id: Uuid::new_v4(),
        items: Vec::new(),
        total_amount: Decimal::ONE,
        placed_at: Utc::now(),
    };
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![NewEvent::from_domain(&placed, Metadata::default()).unwrap()],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, body) = get_health().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "Degraded", "{body}");
    assert_eq!(
        body["entries"]["readModels"]["status"], "Degraded",
        "{body}"
    );
    assert!(
        body["entries"]["readModels"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("order-listing is 1 events")),
        "{body}"
    );

    // Caught up below the visibility horizon, which a transaction of a test beside this one
    // can hold back for a moment.
    let runner = PgReadModelRunner::new(store.clone());
    eventually("healthy again", || async {
        runner.catch_up(&PgOrderListing::default()).await.unwrap();
        let (status, body) = get_health().await;
        (status == 200 && body["status"] == "Healthy").then_some(())
    })
    .await;
    store.close().await;
}

/// `/metrics` shows each read model's lag in events and seconds, counted when scraped: an
/// event its runner has not read shows, and is gone once the runner has caught up.
#[tokio::test]
async fn metrics_show_each_read_models_lag_in_events_and_seconds() {
    use axum::body::Body;
    use axum::http::Request;
    use order_processing_example::{Backends, Settings};
    use tower::ServiceExt;

    order_processing_example::telemetry::install();
    let schema = format!("op_test_{}", &Uuid::new_v4().simple().to_string()[..12]);
    let _guard = SchemaGuard(schema.clone());
    let settings = Settings {
        database_url: Some(database_url()),
        database_schema: schema,
        database_max_connections: 2,
        ..Settings::default()
    };
    let backends =
        Backends::from_settings_until(&settings, tokio::time::sleep(Duration::from_secs(45)))
            .await
            .expect("connect");
    let Listings::Postgres(store) = backends.listings.clone() else {
        panic!("on PostgreSQL");
    };
    let router = order_processing_example::http::finish_router(
        axum::Router::new(),
        utoipa::openapi::OpenApi::default(),
        backends.health.clone(),
    );
    let lag = || async {
        let response = router
            .clone()
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let body = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        let value = |name: &str| -> f64 {
            text.lines()
                .find(|line| {
                    line.starts_with(&format!("{name}{{"))
                        && line.contains("projection=\"order-listing\"")
                        && line.contains("phase=\"active\"")
                })
                .and_then(|line| line.rsplit(' ').next()?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} of order-listing in {text}"))
        };
        (
            value("es_read_model_lag_events"),
            value("es_read_model_lag_seconds"),
        )
    };
    assert_eq!(lag().await, (0.0, 0.0));

    // An order written (inline) while no runner runs: its checkpoint stays behind.
    let order_id = Uuid::now_v7();
    let placed = OrderEvent::OrderPlaced {
        order_id,
        customer_id: Uuid::new_v4(),
        items: Vec::new(),
        total_amount: Decimal::ONE,
        placed_at: Utc::now(),
    };
    store
        .append(
            &StreamId::for_aggregate("order", &order_id.to_string()).unwrap(),
            ExpectedVersion::NoStream,
            vec![NewEvent::from_domain(&placed, Metadata::default()).unwrap()],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Counted below the visibility horizon, which a transaction of a test beside this one can
    // hold back for a moment.
    let (_, seconds) = eventually("the lag counted", || async {
        let lag = lag().await;
        (lag.0 == 1.0).then_some(lag)
    })
    .await;
    assert!(seconds >= 0.2, "{seconds}");

    let runner = PgReadModelRunner::new(store.clone());
    eventually("the runner caught up", || async {
        runner.catch_up(&PgOrderListing::default()).await.unwrap();
        (lag().await == (0.0, 0.0)).then_some(())
    })
    .await;
    store.close().await;
}
