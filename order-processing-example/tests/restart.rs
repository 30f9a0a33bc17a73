//! A restart reads only what came after the read models' checkpoints.
//!
//! Against the real PostgreSQL: a history of 20,000 orders' events is appended straight to the
//! store (as a system that has run a while leaves it: its relays have published everything),
//! all five services start and their read models catch up, the services stop, K more orders'
//! events are appended, and the services start again. PostgreSQL's own statistics of the
//! `events` table count the rows the restart read; it must be the new events (each read once by
//! the read model of its category), not the history.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::*;
use es_core::{
    Aggregate, CheckpointStore, EventStore, ExpectedVersion, Metadata, NewEvent, StreamAppend,
    StreamId, UnitOfWork,
};
use es_postgres::{PgConfig, PgEventStore};
use order_processing_example::analytics::{AnalyticsEvent, CountedEvent, OrderActivity};
use order_processing_example::inventory::{Product, ProductEvent};
use order_processing_example::listing::Listings;
use order_processing_example::notification::{
    NotificationEvent, NotificationView, OrderNotifications,
};
use order_processing_example::order::{Order, OrderEvent, OrderItem};
use order_processing_example::{Backends, ServiceKind, Settings};
use rust_decimal::Decimal;
use uuid::Uuid;

/// Orders in the history.
const HISTORY: usize = 20_000;
/// Orders appended while the services are down.
const K: usize = 200;
/// Events each order adds: 2 in its stream, 2 notifications, 2 analytics counts, 2 stock moves.
const EVENTS_PER_ORDER: usize = 8;
/// Customers the orders are spread over.
const CUSTOMERS: usize = 100;
/// Stock each test product starts with.
const STOCK: u64 = 1_000_000;
/// Orders appended per unit of work.
const CHUNK: usize = 250;

/// The test's own products, so the inventory's seed does not meet their streams.
fn products() -> [Uuid; 4] {
    [
        Uuid::from_u128(0xaaaa_0001),
        Uuid::from_u128(0xaaaa_0002),
        Uuid::from_u128(0xaaaa_0003),
        Uuid::from_u128(0xaaaa_0004),
    ]
}

fn customers() -> Vec<Uuid> {
    (0..CUSTOMERS)
        .map(|i| Uuid::from_u128(0xc000_0000 + i as u128))
        .collect()
}

fn event<E: es_core::DomainEvent>(event: &E) -> NewEvent {
    NewEvent::from_domain(event, Metadata::default()).expect("serialize")
}

/// Appends orders `from..to`: each placed and confirmed, notified twice, counted twice, and its
/// unit reserved and committed from one of the products.
async fn append_orders(store: &PgEventStore, from: usize, to: usize) {
    let products = products();
    let customers = customers();
    let price = Decimal::new(1000, 2);
    for chunk in (from..to).step_by(CHUNK) {
        let mut unit = UnitOfWork::new();
        let mut stock: HashMap<Uuid, Vec<NewEvent>> = HashMap::new();
        for i in chunk..(chunk + CHUNK).min(to) {
            let order_id = Uuid::now_v7();
            let customer_id = customers[i % CUSTOMERS];
            let product_id = products[i % products.len()];
            let now = Utc::now();
            let placed = OrderEvent::OrderPlaced {
                order_id,
                customer_id,
                items: vec![OrderItem {
                    product_id,
                    product_name: "Thing".into(),
                    quantity: 1,
                    unit_price: price,
                }],
                total_amount: price,
                placed_at: now,
            };
            let confirmed = OrderEvent::OrderConfirmed {
                order_id,
                customer_id,
                total_amount: price,
                at: now,
            };
            let id = order_id.to_string();
            unit = unit.append(StreamAppend::new(
                StreamId::for_aggregate(Order::TYPE, &id).unwrap(),
                ExpectedVersion::NoStream,
                vec![event(&placed), event(&confirmed)],
            ));
            let notes = ["OrderPlaced", "OrderConfirmed"].map(|kind| {
                event(&NotificationEvent::NotificationSent(NotificationView {
                    notification_id: Uuid::now_v7(),
                    customer_id,
                    order_id,
                    kind: kind.into(),
                    message: format!("{kind} {order_id}"),
                    created_at: now,
                }))
            });
            unit = unit.append(StreamAppend::new(
                StreamId::for_aggregate(OrderNotifications::TYPE, &id).unwrap(),
                ExpectedVersion::NoStream,
                notes.to_vec(),
            ));
            let counted = [("OrderPlaced", None), ("OrderConfirmed", Some(price))].map(
                |(event_type, amount)| {
                    event(&AnalyticsEvent::EventCounted(CountedEvent {
                        event_id: Uuid::now_v7(),
                        event_type: event_type.into(),
                        order_id,
                        occurred_at: now,
                        amount,
                    }))
                },
            );
            unit = unit.append(StreamAppend::new(
                StreamId::for_aggregate(OrderActivity::TYPE, &id).unwrap(),
                ExpectedVersion::NoStream,
                counted.to_vec(),
            ));
            let moves = stock.entry(product_id).or_default();
            moves.push(event(&ProductEvent::StockReserved {
                order_id,
                quantity: 1,
            }));
            moves.push(event(&ProductEvent::StockCommitted {
                order_id,
                quantity: 1,
            }));
        }
        for (product_id, moves) in stock {
            unit = unit.append(StreamAppend::new(
                StreamId::for_aggregate(Product::TYPE, &product_id.to_string()).unwrap(),
                ExpectedVersion::Any,
                moves,
            ));
        }
        store.commit(unit).await.expect("append a chunk of orders");
    }
}

/// Moves the relays' checkpoints to the head: the history has been published (as in a system
/// that ran), so the restarted services' consumers have nothing to do with it.
async fn published(store: &PgEventStore) {
    let head = store.head().await.expect("head");
    for relay in ["relay-order", "relay-reservation", "relay-payment"] {
        store.save(relay, head).await.expect("relay checkpoint");
    }
}

/// Rows of `events` read so far, by sequential and index scans, as PostgreSQL counts them. A
/// server process reports its counts when it goes idle or exits; read until two readings a
/// moment apart agree.
async fn events_rows_read(pool: &sqlx::PgPool, schema: &str) -> i64 {
    let read = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT (coalesce(t.seq_tup_read, 0) + coalesce((SELECT sum(i.idx_tup_read) \
                 FROM pg_stat_user_indexes i WHERE i.relid = t.relid), 0))::bigint \
             FROM pg_stat_user_tables t WHERE t.schemaname = $1 AND t.relname = 'events'",
        )
        .bind(schema)
        .fetch_one(pool)
        .await
        .expect("read the table statistics")
    };
    let mut last = read().await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = read().await;
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// Starts all five services on `settings` (without a health check: `/health` counts the read
/// models' lag by reading the log, which is not what is measured here).
async fn start(settings: &Settings) -> (System, PgEventStore) {
    let backends =
        Backends::from_settings_until(settings, tokio::time::sleep(Duration::from_secs(45)))
            .await
            .unwrap_or_else(|e| panic!("{e}: start PostgreSQL or set DATABASE_URL"));
    let Listings::Postgres(store) = &backends.listings else {
        panic!("the listings are on PostgreSQL");
    };
    let store = store.clone();
    (
        System::start(backends, settings.clone(), &ServiceKind::ALL).await,
        store,
    )
}

/// Waits until every read model shows `orders` orders, through the services' HTTP APIs.
async fn caught_up(system: &System, orders: usize) {
    let per_customer = orders / CUSTOMERS;
    let customer = customers()[0];
    let from = (Utc::now() - chrono::Duration::days(1)).date_naive();
    let to = (Utc::now() + chrono::Duration::days(1)).date_naive();
    eventually("the analytics figures", || async {
        let (_, days) = system
            .get(
                ServiceKind::Analytics,
                &format!("/api/analytics/metrics/range?from={from}&to={to}"),
            )
            .await;
        let sum = |field: &str| -> u64 {
            days.as_array()
                .map(|days| days.iter().filter_map(|d| d[field].as_u64()).sum())
                .unwrap_or_default()
        };
        (sum("ordersPlaced") == orders as u64 && sum("ordersConfirmed") == orders as u64)
            .then_some(())
    })
    .await;
    eventually("the product catalog", || async {
        let (_, list) = system
            .get(ServiceKind::Inventory, "/api/inventory/products")
            .await;
        let list = list.as_array()?.clone();
        products()
            .iter()
            .all(|id| {
                list.iter().any(|p| {
                    p["productId"] == id.to_string()
                        && p["availableQuantity"] == STOCK - (orders / 4) as u64
                        && p["reservedQuantity"] == 0
                })
            })
            .then_some(())
    })
    .await;
    eventually("the customer's notifications", || async {
        let (_, list) = system
            .get(
                ServiceKind::Notification,
                &format!("/api/notifications/customer/{customer}?limit=1000"),
            )
            .await;
        (list.as_array()?.len() == 2 * per_customer).then_some(())
    })
    .await;
    eventually("the customer's orders", || async {
        let (_, list) = system
            .get(
                ServiceKind::Order,
                &format!("/api/orders/customer/{customer}?limit=1000"),
            )
            .await;
        let list = list.as_array()?.clone();
        (list.len() == per_customer && list.iter().all(|o| o["status"] == "Confirmed"))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reads_only_the_events_after_the_read_models_checkpoints() {
    let suffix = Uuid::new_v4().simple().to_string()[..12].to_owned();
    let schema = format!("op_test_{suffix}");
    let _guard = SchemaGuard(schema.clone());
    // PostgreSQL alone: the embedded bus carries what the relays publish (nothing here).
    let settings = Settings {
        database_url: Some(database_url()),
        database_schema: schema.clone(),
        database_max_connections: 8,
        ..patient()
    };
    let writer = {
        let mut config = PgConfig::new(&schema);
        config.max_connections = 2;
        let store = PgEventStore::connect(&database_url(), config)
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        store
    };
    // The products exist before any order moves their stock.
    let mut unit = UnitOfWork::new();
    for (i, product_id) in products().into_iter().enumerate() {
        unit = unit.append(StreamAppend::new(
            StreamId::for_aggregate(Product::TYPE, &product_id.to_string()).unwrap(),
            ExpectedVersion::NoStream,
            vec![event(&ProductEvent::ProductStocked {
                product_id,
                name: format!("Test product {i}"),
                available_quantity: STOCK,
                at: Utc::now(),
            })],
        ));
    }
    writer.commit(unit).await.expect("stock the products");
    let started = Instant::now();
    append_orders(&writer, 0, HISTORY).await;
    published(&writer).await;
    eprintln!(
        "appended {} events of {HISTORY} orders in {:?}",
        HISTORY * EVENTS_PER_ORDER,
        started.elapsed()
    );

    let started = Instant::now();
    let (system, store) = start(&settings).await;
    caught_up(&system, HISTORY).await;
    eprintln!("first start caught up in {:?}", started.elapsed());
    system.stop().await;
    store.close().await;

    append_orders(&writer, HISTORY, HISTORY + K).await;
    published(&writer).await;
    writer.close().await;
    let pool = sqlx::PgPool::connect(&database_url())
        .await
        .expect("connect");
    let before = events_rows_read(&pool, &schema).await;

    let (system, store) = start(&settings).await;
    caught_up(&system, HISTORY + K).await;
    system.stop().await;
    store.close().await;
    let read = events_rows_read(&pool, &schema).await - before;
    pool.close().await;

    let new_events = (K * EVENTS_PER_ORDER) as i64;
    let history = (HISTORY * EVENTS_PER_ORDER) as i64;
    eprintln!("the restart read {read} event rows: {new_events} new, {history} in the history");
    // Every new event is read at least once (by the read model of its category): fewer would
    // mean the statistics missed reads, and the test proved nothing.
    assert!(
        read >= new_events,
        "the restart read {read} event rows, fewer than the {new_events} new events"
    );
    // A read model that started from the beginning would read at least its share of the
    // history (a quarter of it); rereading a batch now and then stays far below that.
    assert!(
        read <= 2 * new_events,
        "the restart read {read} event rows for {new_events} new ones ({history} in the history)"
    );
}
