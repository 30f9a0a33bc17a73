//! The PostgreSQL order listing when some of an order's events were appended by code that does
//! not write the listing inline (a rolling deploy): the inline write must not fold a later
//! event over a row that misses an earlier one; the runner brings the row up in order.

mod common;

use chrono::Utc;
use common::*;
use es_core::{EventStore, ExpectedVersion, Metadata, NewEvent, StreamId};
use es_postgres::{PgConfig, PgEventStore, PgReadModelRunner};
use order_processing_example::listing::{Listings, Page, PgOrderListing};
use order_processing_example::order::OrderEvent;
use rust_decimal::Decimal;
use uuid::Uuid;

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

    PgReadModelRunner::new(plain.clone())
        .catch_up(&PgOrderListing::default())
        .await
        .expect("catch up");
    let page = Page {
        limit: 10,
        after: None,
    };
    let (orders, _) = listings.page(customer_id, &page).await.expect("page");
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
