//! The payment service (5003): a simulated gateway charging each order at most once.

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use es_core::bus::{HandlerError, MessageHandler};
use es_core::{Aggregate, CommandContext, CommandError, DomainEvent, RecordedEvent, Repository};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::backends::Backends;
use crate::config::Settings;
use crate::http::{finish_router, ApiPath, AppError};
use crate::service::Background;

/// What happens to an order's payment; both travel on the wire.
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

/// An order's payment: at most one charge.
#[derive(Debug, Clone, Default)]
pub struct Payment {
    outcome: Option<PaymentEvent>,
}

impl Aggregate for Payment {
    const TYPE: &'static str = "payment";
    type Command = Charge;
    type Event = PaymentEvent;
    type Error = std::convert::Infallible;

    fn handle(&self, charge: Charge) -> Result<Vec<PaymentEvent>, std::convert::Infallible> {
        if self.outcome.is_some() {
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
        self.outcome = Some(event.clone());
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
    /// `Succeeded` or `Failed`.
    pub status: String,
    /// Why it failed (`null` when it succeeded).
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
}

impl DomainEvent for PaymentInput {}

/// Charges on `InventoryReserved`; the payment and the inbox entry commit together.
#[derive(Debug, Clone)]
struct PaymentHandler {
    payments: Repository<Payment>,
    decline_above: Decimal,
    consumer: String,
}

#[async_trait]
impl MessageHandler for PaymentHandler {
    async fn handle(&self, message: &RecordedEvent) -> Result<(), HandlerError> {
        let PaymentInput::InventoryReserved {
            order_id,
            customer_id,
            total_amount,
        } = match message.decode::<PaymentInput>() {
            Ok(input) => input,
            Err(es_core::Error::UnknownEventType { .. }) => return Ok(()),
            Err(error) => return Err(HandlerError::reject(error)),
        };
        let charge = Charge {
            order_id,
            customer_id,
            amount: total_amount,
            decline_above: self.decline_above,
        };
        let context = CommandContext::caused_by(message, self.consumer.clone());
        match self
            .payments
            .execute_with(&order_id.to_string(), charge, context)
            .await
        {
            Ok(executed) => {
                if !executed.events.is_empty() {
                    tracing::info!(%order_id, amount = %total_amount, "payment decided");
                }
                Ok(())
            }
            Err(CommandError::Store(error)) => Err(error.into()),
            Err(other) => Err(HandlerError::reject(other)),
        }
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
    let payments = Repository::<Payment>::new(backends.store.clone());
    let consumer = backends.consumer("payment");
    let handler = Arc::new(PaymentHandler {
        payments: payments.clone(),
        decline_above: settings.payment_decline_above,
        consumer: consumer.clone(),
    });
    background
        .consume(
            &backends.bus,
            consumer,
            crate::events::bindings("payment"),
            handler,
        )
        .await?;
    background.relay(backends, Payment::TYPE);
    let api = Router::new()
        .route("/api/payments/order/{order_id}", get(payment_of_order))
        .with_state(PaymentState { payments });
    Ok(finish_router(api, openapi(), backends.health.clone()))
}
