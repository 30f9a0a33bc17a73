//! The payment service (5003): a simulated gateway charging each order at most once.

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use es_core::bus::{HandlerError, MessageHandler};
use es_core::{Aggregate, CommandContext, DomainEvent, RecordedEvent, Repository};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::backends::Backends;
use crate::background::Background;
use crate::config::Settings;
use crate::http::{finish_router, ApiPath, AppError};
use crate::service_kind::ServiceKind;

/// What happens to an order's payment. `PaymentProcessed`, `PaymentFailed` and
/// `PaymentRefunded` travel on the wire; `PaymentCancelled` stays inside the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub enum PaymentEvent {
    /// The order was charged.
    PaymentProcessed {
        /// The payment.
        payment_id: Uuid,
        /// The order.
        order_id: Uuid,
        /// Who paid.
        customer_id: Uuid,
        /// How much.
        #[serde(with = "crate::money")]
        amount: Decimal,
        /// When.
        processed_at: DateTime<Utc>,
    },
    /// The charge was declined.
    PaymentFailed {
        /// The payment.
        payment_id: Uuid,
        /// The order.
        order_id: Uuid,
        /// Who would have paid.
        customer_id: Uuid,
        /// How much.
        #[serde(with = "crate::money")]
        amount: Decimal,
        /// Why.
        reason: String,
        /// When.
        processed_at: DateTime<Utc>,
    },
    /// The order was cancelled after it was charged: the charge went back.
    PaymentRefunded {
        /// The payment refunded.
        payment_id: Uuid,
        /// The order.
        order_id: Uuid,
        /// Who is paid back.
        customer_id: Uuid,
        /// How much.
        #[serde(with = "crate::money")]
        amount: Decimal,
        /// Why (`order cancelled: {the order's cancellation reason}`).
        reason: String,
        /// When.
        refunded_at: DateTime<Utc>,
    },
    /// The order was cancelled before it was charged: a tombstone, so that a charge asked
    /// for later (a late `InventoryReserved`) is refused.
    PaymentCancelled {
        /// The order.
        order_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for PaymentEvent {}

/// Charge an order (the gateway's limit is passed in: the aggregate does no I/O).
#[derive(Debug, Clone)]
pub struct Charge {
    /// The order.
    pub order_id: Uuid,
    /// Who pays.
    pub customer_id: Uuid,
    /// How much.
    pub amount: Decimal,
    /// The gateway declines anything above this.
    pub decline_above: Decimal,
}

/// What can be asked of an order's payment.
#[derive(Debug, Clone)]
pub enum PaymentCommand {
    /// Charge the order, unless it was charged or cancelled already.
    Charge(Charge),
    /// The order was cancelled: refund its charge, or refuse any charge to come.
    Cancel {
        /// The order.
        order_id: Uuid,
        /// The order's cancellation reason.
        reason: String,
    },
}

/// An order's payment: at most one charge, and none that outlives the order's cancellation.
#[derive(Debug, Clone, Default)]
pub struct Payment {
    outcome: Option<PaymentEvent>,
    cancelled: bool,
}

impl Aggregate for Payment {
    const TYPE: &'static str = "payment";
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type Error = std::convert::Infallible;

    fn handle(
        &self,
        command: PaymentCommand,
    ) -> Result<Vec<PaymentEvent>, std::convert::Infallible> {
        let charge = match command {
            PaymentCommand::Charge(charge) => charge,
            PaymentCommand::Cancel { order_id, reason } => return Ok(self.cancel(order_id, reason)),
        };
        // Charged (or declined) once already, or the order is cancelled: nothing to do.
        if self.outcome.is_some() || self.cancelled {
            return Ok(Vec::new());
        }
        let payment_id = Uuid::now_v7();
        let processed_at = Utc::now();
        Ok(vec![if charge.amount > charge.decline_above {
            PaymentEvent::PaymentFailed {
                payment_id,
                order_id: charge.order_id,
                customer_id: charge.customer_id,
                amount: charge.amount,
                reason: "amount exceeds limit".into(),
                processed_at,
            }
        } else {
            PaymentEvent::PaymentProcessed {
                payment_id,
                order_id: charge.order_id,
                customer_id: charge.customer_id,
                amount: charge.amount,
                processed_at,
            }
        }])
    }

    fn apply(&mut self, event: &PaymentEvent) {
        match event {
            PaymentEvent::PaymentCancelled { .. } => self.cancelled = true,
            PaymentEvent::PaymentRefunded { .. } => {
                self.cancelled = true;
                self.outcome = Some(event.clone());
            }
            _ => self.outcome = Some(event.clone()),
        }
    }
}

impl Payment {
    /// What an order's cancellation means here, decided from what is recorded: a charge is
    /// refunded; before any charge a tombstone refuses the one to come; a declined or
    /// refunded payment, or a second cancellation, changes nothing.
    fn cancel(&self, order_id: Uuid, reason: String) -> Vec<PaymentEvent> {
        match &self.outcome {
            Some(PaymentEvent::PaymentProcessed {
                payment_id,
                customer_id,
                amount,
                ..
            }) => vec![PaymentEvent::PaymentRefunded {
                payment_id: *payment_id,
                order_id,
                customer_id: *customer_id,
                amount: *amount,
                reason: format!("order cancelled: {reason}"),
                refunded_at: Utc::now(),
            }],
            Some(_) => Vec::new(),
            None if self.cancelled => Vec::new(),
            None => vec![PaymentEvent::PaymentCancelled {
                order_id,
                at: Utc::now(),
            }],
        }
    }
}

/// A payment as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentView {
    /// The payment.
    pub payment_id: Uuid,
    /// The order.
    pub order_id: Uuid,
    /// How much.
    #[serde(with = "crate::money")]
    #[schema(value_type = f64)]
    pub amount: Decimal,
    /// `Succeeded`, `Failed`, or `Refunded` (the order was cancelled after the charge).
    pub status: String,
    /// Why it failed or was refunded (`null` when it succeeded).
    pub reason: Option<String>,
    /// When.
    pub processed_at: DateTime<Utc>,
}

impl Payment {
    fn view(&self) -> Option<PaymentView> {
        Some(match self.outcome.as_ref()? {
            PaymentEvent::PaymentProcessed {
                payment_id,
                order_id,
                amount,
                processed_at,
                ..
            } => PaymentView {
                payment_id: *payment_id,
                order_id: *order_id,
                amount: *amount,
                status: "Succeeded".into(),
                reason: None,
                processed_at: *processed_at,
            },
            PaymentEvent::PaymentFailed {
                payment_id,
                order_id,
                amount,
                reason,
                processed_at,
                ..
            } => PaymentView {
                payment_id: *payment_id,
                order_id: *order_id,
                amount: *amount,
                status: "Failed".into(),
                reason: Some(reason.clone()),
                processed_at: *processed_at,
            },
            PaymentEvent::PaymentRefunded {
                payment_id,
                order_id,
                amount,
                reason,
                refunded_at,
                ..
            } => PaymentView {
                payment_id: *payment_id,
                order_id: *order_id,
                amount: *amount,
                status: "Refunded".into(),
                reason: Some(reason.clone()),
                processed_at: *refunded_at,
            },
            // A tombstone is no payment: the order was never charged.
            PaymentEvent::PaymentCancelled { .. } => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
enum PaymentInput {
    InventoryReserved {
        order_id: Uuid,
        customer_id: Uuid,
        #[serde(with = "crate::money")]
        total_amount: Decimal,
    },
    OrderCancelled {
        order_id: Uuid,
        reason: String,
    },
}

impl DomainEvent for PaymentInput {}

/// Charges on `InventoryReserved`; on `OrderCancelled` refunds the charge or refuses the one
/// to come. Each decision and the message's inbox entry commit together, and the payment's
/// stream version serializes a charge racing a cancellation: exactly one of "charged, then
/// refunded" and "cancelled, then refused" happens.
#[derive(Debug, Clone)]
struct PaymentHandler {
    payments: Repository<Payment>,
    decline_above: Decimal,
    consumer: String,
}

impl PaymentHandler {
    /// The command a message asks for; `None` for a type this service does not read.
    fn command(
        &self,
        message: &RecordedEvent,
    ) -> Result<Option<(Uuid, PaymentCommand)>, HandlerError> {
        Ok(Some(match message.decode::<PaymentInput>() {
            Ok(PaymentInput::InventoryReserved {
                order_id,
                customer_id,
                total_amount,
            }) => (
                order_id,
                PaymentCommand::Charge(Charge {
                    order_id,
                    customer_id,
                    amount: total_amount,
                    decline_above: self.decline_above,
                }),
            ),
            Ok(PaymentInput::OrderCancelled { order_id, reason }) => {
                (order_id, PaymentCommand::Cancel { order_id, reason })
            }
            Err(es_core::Error::UnknownEventType { .. }) => return Ok(None),
            Err(error) => return Err(HandlerError::reject(error)),
        }))
    }

    fn log(order_id: Uuid, events: &[PaymentEvent]) {
        for event in events {
            match event {
                PaymentEvent::PaymentRefunded { amount, .. } => {
                    tracing::info!(%order_id, %amount, "payment refunded: the order was cancelled")
                }
                PaymentEvent::PaymentCancelled { .. } => {
                    tracing::info!(%order_id, "order cancelled before its charge; none will be made")
                }
                _ => tracing::info!(%order_id, "payment decided"),
            }
        }
    }
}

#[async_trait]
impl MessageHandler for PaymentHandler {
    async fn handle(&self, message: &RecordedEvent) -> Result<(), HandlerError> {
        let Some((order_id, command)) = self.command(message)? else {
            return Ok(());
        };
        let context = CommandContext::caused_by(message, self.consumer.clone());
        let executed = self
            .payments
            .execute(&order_id.to_string(), command, context)
            .await?;
        Self::log(order_id, &executed.events);
        Ok(())
    }

    /// Every payment of the batch decided on state loaded in one read, and committed with the
    /// messages' inbox entries in one transaction.
    async fn handle_batch(&self, messages: &[RecordedEvent]) -> Result<(), HandlerError> {
        let mut commands = Vec::with_capacity(messages.len());
        let mut orders = Vec::with_capacity(messages.len());
        for message in messages {
            if let Some((order_id, command)) = self.command(message)? {
                let context = CommandContext::caused_by(message, self.consumer.clone());
                commands.push((order_id.to_string(), command, context));
                orders.push(order_id);
            }
        }
        if commands.is_empty() {
            return Ok(());
        }
        let executed = self.payments.execute_batch(commands).await?;
        for (order_id, executed) in orders.into_iter().zip(executed) {
            Self::log(order_id, &executed.events);
        }
        Ok(())
    }
}

#[derive(Clone)]
struct PaymentState {
    payments: Repository<Payment>,
}

/// The payment of an order.
#[utoipa::path(get, path = "/api/payments/order/{orderId}", tag = "payments",
    params(("orderId" = Uuid, Path, description = "The order")),
    responses((status = 200, body = PaymentView), (status = 400), (status = 404)))]
async fn payment_of_order(
    State(state): State<PaymentState>,
    ApiPath(order_id): ApiPath<Uuid>,
) -> Result<Json<PaymentView>, AppError> {
    state
        .payments
        .find(&order_id.to_string())
        .await?
        .and_then(|loaded| loaded.state.view())
        .map(Json)
        .ok_or_else(|| AppError::not_found(format!("no payment for order {order_id}")))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Payment service",
        description = "A simulated gateway: charges each order at most once."
    ),
    paths(payment_of_order),
    components(schemas(PaymentView))
)]
struct PaymentApi;

/// The service's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    PaymentApi::openapi()
}

/// Starts the payment service: its consumer and relay.
pub(crate) async fn start(
    backends: &Backends,
    settings: &Settings,
    background: &mut Background,
) -> es_core::Result<Router> {
    let payments = Repository::<Payment>::new(backends.store.clone())
        .with_trusted_cache(crate::service::AGGREGATE_CACHE);
    let consumer = backends.consumer(ServiceKind::Payment);
    let handler = Arc::new(PaymentHandler {
        payments: payments.clone(),
        decline_above: settings.payment_decline_above,
        consumer: consumer.clone(),
    });
    background
        .consume_batched(
            &backends.bus,
            consumer,
            crate::events::bindings(ServiceKind::Payment),
            handler,
            crate::background::CONSUMER_BATCH,
        )
        .await?;
    background.relay(backends, Payment::TYPE);
    let api = Router::new()
        .route("/api/payments/order/{order_id}", get(payment_of_order))
        .with_state(PaymentState { payments });
    Ok(finish_router(api, openapi(), backends.health.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::testing::message;
    use crate::inventory::{ReservationEvent, ReservedItem};
    use crate::order::OrderEvent;
    use es_core::memory::MemoryEventStore;
    use es_core::EventStore;

    fn handler() -> PaymentHandler {
        let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
        PaymentHandler {
            payments: Repository::new(store),
            decline_above: Decimal::from(10_000),
            consumer: "payment".into(),
        }
    }

    fn reserved(order_id: Uuid) -> RecordedEvent {
        let event = ReservationEvent::InventoryReserved {
            order_id,
            customer_id: Uuid::nil(),
            items: vec![ReservedItem {
                product_id: Uuid::nil(),
                quantity: 1,
            }],
            total_amount: Decimal::new(99_999, 2),
            at: Utc::now(),
        };
        message(&format!("reservation-{order_id}"), &event)
    }

    fn cancelled(order_id: Uuid) -> RecordedEvent {
        let event = OrderEvent::OrderCancelled {
            order_id,
            customer_id: Uuid::nil(),
            total_amount: Decimal::new(99_999, 2),
            reason: "timed out".into(),
            at: Utc::now(),
        };
        message(&format!("order-{order_id}"), &event)
    }

    async fn view(handler: &PaymentHandler, order_id: Uuid) -> Option<PaymentView> {
        handler
            .payments
            .find(&order_id.to_string())
            .await
            .unwrap()
            .and_then(|loaded| loaded.state.view())
    }

    #[tokio::test]
    async fn a_charge_asked_after_the_cancellation_is_refused() {
        let payment = handler();
        let order_id = Uuid::now_v7();
        payment.handle(&cancelled(order_id)).await.unwrap();
        payment.handle(&reserved(order_id)).await.unwrap();
        assert!(
            view(&payment, order_id).await.is_none(),
            "a cancelled order is never charged"
        );
    }

    #[tokio::test]
    async fn a_charge_made_before_the_cancellation_is_refunded_once() {
        let payment = handler();
        let order_id = Uuid::now_v7();
        payment.handle(&reserved(order_id)).await.unwrap();
        assert_eq!(view(&payment, order_id).await.unwrap().status, "Succeeded");
        payment.handle(&cancelled(order_id)).await.unwrap();
        // A second cancellation (another message) and a late redelivered charge change nothing.
        payment.handle(&cancelled(order_id)).await.unwrap();
        payment.handle(&reserved(order_id)).await.unwrap();
        let refunded = view(&payment, order_id).await.unwrap();
        assert_eq!(refunded.status, "Refunded");
        assert_eq!(
            refunded.reason.as_deref(),
            Some("order cancelled: timed out")
        );
        assert_eq!(refunded.amount, Decimal::new(99_999, 2));
        let loaded = payment.payments.load(&order_id.to_string()).await.unwrap();
        assert_eq!(loaded.version, 2, "one charge, one refund");
    }

    #[tokio::test]
    async fn a_declined_payment_is_not_refunded_when_the_order_is_cancelled() {
        let payment = PaymentHandler {
            decline_above: Decimal::ONE,
            ..handler()
        };
        let order_id = Uuid::now_v7();
        payment.handle(&reserved(order_id)).await.unwrap();
        payment.handle(&cancelled(order_id)).await.unwrap();
        let view = view(&payment, order_id).await.unwrap();
        assert_eq!(view.status, "Failed");
        assert_eq!(view.reason.as_deref(), Some("amount exceeds limit"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancellation_racing_the_charge_leaves_no_charge_standing() {
        cancellations_race_charges(Arc::new(handler())).await;
    }

    /// The same race on PostgreSQL (as `es-test-services` finds it; a schema of
    /// its own, dropped after).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_postgres_a_cancellation_racing_the_charge_leaves_no_charge_standing() {
        crate::backends::testing::on_postgres(|backends| {
            let payment = PaymentHandler {
                payments: Repository::new(backends.store.clone()),
                ..handler()
            };
            cancellations_race_charges(Arc::new(payment))
        })
        .await;
    }

    async fn cancellations_race_charges(payment: Arc<PaymentHandler>) {
        let orders: Vec<Uuid> = (0..40).map(|_| Uuid::now_v7()).collect();
        let mut tasks = Vec::new();
        for &order_id in &orders {
            let (a, b) = (payment.clone(), payment.clone());
            tasks.push(tokio::spawn(
                async move { a.handle(&reserved(order_id)).await },
            ));
            tasks.push(tokio::spawn(
                async move { b.handle(&cancelled(order_id)).await },
            ));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        for order_id in orders {
            if let Some(view) = view(&payment, order_id).await {
                assert_eq!(view.status, "Refunded", "order {order_id}");
            }
        }
    }
}
