//! Messages and a seeded handler for the inventory's unit tests.

use std::sync::Arc;

use chrono::Utc;
use es_core::{EventStore, RecordedEvent, Repository};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::handler::InventoryHandler;
use super::seed::seed;
use crate::events::testing::message;
use crate::order::{OrderEvent, OrderItem};

/// The seeded laptop's id, as text.
pub(super) const LAPTOP: &str = "11111111-1111-1111-1111-111111111111";

/// The seeded laptop's id.
pub(super) fn laptop() -> Uuid {
    Uuid::parse_str(LAPTOP).unwrap()
}

/// An inventory handler (one per process) on `store`, seeded.
pub(super) async fn handler(store: &Arc<dyn EventStore>) -> InventoryHandler {
    seed(store).await.unwrap();
    InventoryHandler::new(
        store.clone(),
        Repository::new(store.clone()),
        Repository::new(store.clone()),
        "inventory".into(),
    )
}

/// `OrderPlaced` of `quantity` laptops, as the bus delivers it.
pub(super) fn placed(order_id: Uuid, quantity: u32) -> RecordedEvent {
    placed_lines(order_id, &[quantity])
}

/// `OrderPlaced` with one laptop line per quantity, as the bus delivers it.
pub(super) fn placed_lines(order_id: Uuid, quantities: &[u32]) -> RecordedEvent {
    let event = OrderEvent::OrderPlaced {
        order_id,
        customer_id: Uuid::nil(),
        items: quantities
            .iter()
            .map(|&quantity| OrderItem {
                product_id: laptop(),
                product_name: "Laptop".into(),
                quantity,
                unit_price: Decimal::ONE,
            })
            .collect(),
        total_amount: Decimal::from(quantities.iter().sum::<u32>()),
        placed_at: Utc::now(),
    };
    message(&format!("order-{order_id}"), &event)
}

/// `OrderCancelled` of `order_id`, as the bus delivers it.
pub(super) fn cancelled(order_id: Uuid) -> RecordedEvent {
    let event = OrderEvent::OrderCancelled {
        order_id,
        customer_id: Uuid::nil(),
        total_amount: Decimal::ONE,
        reason: "timed out".into(),
        at: Utc::now(),
    };
    message(&format!("order-{order_id}"), &event)
}

/// `OrderConfirmed` of `order_id`, as the bus delivers it.
pub(super) fn confirmed(order_id: Uuid) -> RecordedEvent {
    let event = OrderEvent::OrderConfirmed {
        order_id,
        customer_id: Uuid::nil(),
        total_amount: Decimal::ONE,
        at: Utc::now(),
    };
    message(&format!("order-{order_id}"), &event)
}

/// The laptop's available and reserved stock, as `handler` loads it.
pub(super) async fn stock(handler: &InventoryHandler) -> (u64, u64) {
    let product = handler.products.load(LAPTOP).await.unwrap().state;
    (product.available, product.reserved)
}
