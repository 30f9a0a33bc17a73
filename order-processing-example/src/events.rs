//! The wire: which stored events travel, their routing keys, and the consumers' bindings.

use std::sync::Arc;

use async_trait::async_trait;
use es_core::bus::{HandlerError, MessageHandler, Router};
use es_core::RecordedEvent;
use tracing::Instrument;

use crate::service_kind::ServiceKind;

/// `OrderPlaced`: an order was accepted (order service).
pub const ORDER_PLACED: &str = "OrderPlaced";
/// `OrderConfirmed`: an order is paid and final (order service).
pub const ORDER_CONFIRMED: &str = "OrderConfirmed";
/// `OrderCancelled`: an order is cancelled and final (order service).
pub const ORDER_CANCELLED: &str = "OrderCancelled";
/// `InventoryReserved`: every line of an order is held (inventory service).
pub const INVENTORY_RESERVED: &str = "InventoryReserved";
/// `InventoryFailed`: an order could not be reserved; no stock changed (inventory service).
pub const INVENTORY_FAILED: &str = "InventoryFailed";
/// `InventoryReleased`: a reservation was given back (inventory service).
pub const INVENTORY_RELEASED: &str = "InventoryReleased";
/// `PaymentProcessed`: an order was charged (payment service).
pub const PAYMENT_PROCESSED: &str = "PaymentProcessed";
/// `PaymentFailed`: the charge was declined (payment service).
pub const PAYMENT_FAILED: &str = "PaymentFailed";
/// `PaymentRefunded`: an order was cancelled after its charge, and the charge went back
/// (payment service). Not in the contract's list: this example's extension.
pub const PAYMENT_REFUNDED: &str = "PaymentRefunded";

/// The events on the wire and their routing keys: the contract's eight, then
/// `payment.refunded`, which this example adds.
pub const WIRE_EVENTS: [(&str, &str); 9] = [
    (ORDER_PLACED, "order.placed"),
    (ORDER_CONFIRMED, "order.confirmed"),
    (ORDER_CANCELLED, "order.cancelled"),
    (INVENTORY_RESERVED, "inventory.reserved"),
    (INVENTORY_FAILED, "inventory.failed"),
    (INVENTORY_RELEASED, "inventory.released"),
    (PAYMENT_PROCESSED, "payment.processed"),
    (PAYMENT_FAILED, "payment.failed"),
    (PAYMENT_REFUNDED, "payment.refunded"),
];

/// Every routing key on the wire (what notification and analytics bind).
pub fn all_routing_keys() -> Vec<String> {
    WIRE_EVENTS
        .iter()
        .map(|(_, key)| (*key).to_owned())
        .collect()
}

/// The routing keys `service`'s queue binds.
pub fn bindings(service: ServiceKind) -> Vec<String> {
    let keys: &[&str] = match service {
        ServiceKind::Order => &[
            "order.placed",
            "inventory.reserved",
            "inventory.failed",
            "payment.processed",
            "payment.failed",
        ],
        ServiceKind::Inventory => &[
            "order.placed",
            "order.confirmed",
            "order.cancelled",
            "payment.failed",
        ],
        // A cancellation refunds a charge, or refuses the one a late reservation asks for.
        ServiceKind::Payment => &["inventory.reserved", "order.cancelled"],
        ServiceKind::Notification | ServiceKind::Analytics => return all_routing_keys(),
    };
    keys.iter().map(|key| (*key).to_owned()).collect()
}

/// The routing key of a wire event type, `None` for an event that stays inside its service.
pub fn routing_key_of(event_type: &str) -> Option<&'static str> {
    WIRE_EVENTS
        .iter()
        .find(|(ty, _)| *ty == event_type)
        .map(|(_, key)| *key)
}

/// The bus's router: the contract's keys for wire events; a service's internal events (which
/// a relay may still carry) get `internal.{category}.{type}`, which no queue binds.
pub fn router() -> Router {
    Arc::new(
        |event: &RecordedEvent| match routing_key_of(&event.event_type) {
            Some(key) => key.to_owned(),
            None => format!(
                "internal.{}.{}",
                event.stream_id.category(),
                es_core::bus::snake_case(&event.event_type)
            ),
        },
    )
}

/// Runs a handler inside a span carrying the message's correlation id, so every log line of
/// an order's saga names the order's flow.
pub struct Traced {
    consumer: String,
    inner: Arc<dyn MessageHandler>,
}

impl std::fmt::Debug for Traced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traced")
            .field("consumer", &self.consumer)
            .finish()
    }
}

impl Traced {
    /// Wraps `inner`, consuming as `consumer`.
    pub fn new(consumer: impl Into<String>, inner: Arc<dyn MessageHandler>) -> Arc<Self> {
        Arc::new(Traced {
            consumer: consumer.into(),
            inner,
        })
    }
}

#[async_trait]
impl MessageHandler for Traced {
    async fn handle(&self, message: &RecordedEvent) -> Result<(), HandlerError> {
        let correlation_id = message
            .metadata
            .correlation_id
            .map(|id| id.to_string())
            .unwrap_or_default();
        let span = tracing::info_span!(
            "message",
            consumer = %self.consumer,
            event_type = %message.event_type,
            event_id = %message.event_id,
            correlation_id = %correlation_id,
        );
        async {
            let outcome = self.inner.handle(message).await;
            match &outcome {
                Ok(()) => tracing::debug!("handled"),
                Err(error) => tracing::warn!(%error, "handler failed"),
            }
            outcome
        }
        .instrument(span)
        .await
    }

    async fn handle_batch(&self, messages: &[RecordedEvent]) -> Result<(), HandlerError> {
        let span = tracing::info_span!(
            "batch",
            consumer = %self.consumer,
            size = messages.len(),
        );
        async {
            let outcome = self.inner.handle_batch(messages).await;
            match &outcome {
                Ok(()) => tracing::debug!("handled"),
                // The bus handles the messages one by one next; each logs its own failure.
                Err(error) => tracing::debug!(%error, "batch failed"),
            }
            outcome
        }
        .instrument(span)
        .await
    }
}

/// Messages for the handlers' unit tests, as the bus would deliver them.
#[cfg(test)]
pub(crate) mod testing {
    use es_core::{DomainEvent, RecordedEvent};

    /// `event` of stream `stream` as a delivered message (a fresh event id each call).
    pub(crate) fn message(stream: &str, event: &impl DomainEvent) -> RecordedEvent {
        let (event_type, payload) = event.encode().expect("encode");
        RecordedEvent {
            event_id: uuid::Uuid::now_v7(),
            stream_id: es_core::StreamId::new(stream).expect("stream id"),
            stream_version: 1,
            position: es_core::Position::new(1, 1),
            recorded_at: chrono::Utc::now(),
            event_type,
            schema_version: 1,
            payload,
            metadata: es_core::Metadata::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_events_route_by_the_contract_and_others_stay_internal() {
        assert_eq!(routing_key_of("PaymentFailed"), Some("payment.failed"));
        assert_eq!(routing_key_of("OrderInventoryReserved"), None);
        let event = RecordedEvent {
            event_id: uuid::Uuid::now_v7(),
            stream_id: es_core::StreamId::new("order-1").unwrap(),
            stream_version: 2,
            position: es_core::Position::new(1, 1),
            recorded_at: chrono::Utc::now(),
            event_type: "OrderInventoryReserved".into(),
            schema_version: 1,
            payload: bytes::Bytes::from_static(b"{}"),
            metadata: es_core::Metadata::default(),
        };
        assert_eq!(router()(&event), "internal.order.order_inventory_reserved");
    }

    #[test]
    fn every_binding_is_a_wire_key_and_the_watching_services_bind_them_all() {
        for service in ServiceKind::ALL {
            for key in bindings(service) {
                assert!(
                    WIRE_EVENTS.iter().any(|(_, wire)| *wire == key),
                    "{} binds {key}, which nothing sends",
                    service.name()
                );
            }
        }
        assert_eq!(bindings(ServiceKind::Notification), all_routing_keys());
        assert_eq!(bindings(ServiceKind::Analytics), all_routing_keys());
        assert!(bindings(ServiceKind::Payment).contains(&"order.cancelled".to_owned()));
    }
}
