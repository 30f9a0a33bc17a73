//! The order service (5001): places orders, and carries each through the order saga.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use es_core::idempotency::{claim_or_wait, ClaimGuard, Ownership};
use es_core::saga::SagaRunner;
use es_core::{
    Aggregate, BoxError, Cache, CacheExt, Claim, CommandDispatcher, CommandError, DispatchError,
    DomainEvent, Envelope, EventStore, IdempotencyStore, Metadata, Projection, RecordedEvent,
    Repository, Saga, SagaDecision, StreamFilter,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::Instrument;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::backends::Backends;
use crate::background::Background;
use crate::config::Settings;
use crate::events;
use crate::http::{finish_router, ApiJson, ApiPath, ApiQuery, AppError, ExactJson, Validator};
use crate::listing::{Listings, Page, PageQuery};
use crate::service_kind::ServiceKind;

// The bounds `POST /api/orders` enforces. The schema attributes below repeat them as literals
// (utoipa takes no constant there); `tests/openapi_bounds.rs` proves the document and these
// constants agree, so neither can drift alone.

/// Fewest lines in one order.
pub const MIN_ITEMS: usize = 1;
/// Most lines in one order.
pub const MAX_ITEMS: usize = 100;
/// Smallest quantity of one line.
pub const MIN_QUANTITY: u64 = 1;
/// Largest quantity of one line.
pub const MAX_QUANTITY: u64 = 10_000;
/// Smallest unit price.
pub const MIN_UNIT_PRICE: Decimal = Decimal::ZERO;
/// Largest unit price.
pub const MAX_UNIT_PRICE: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);
/// Most decimals of a unit price (it is a multiple of 0.01).
pub const UNIT_PRICE_DECIMALS: u32 = 2;
/// Most characters (Unicode scalar values) of a product name; it is never blank.
pub const MAX_PRODUCT_NAME_CHARS: usize = 200;
/// Most characters of an `Idempotency-Key` header (visible ASCII, so also bytes).
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderItem {
    /// The product.
    #[schema(example = "11111111-1111-1111-1111-111111111111")]
    pub product_id: Uuid,
    /// Its name as ordered: 1 to 200 characters, not blank.
    // Not blank: some character that is not whitespace. U+0085 is named because ECMA-262's
    // `\s` (which JSON Schema patterns use) lacks it while `str::trim` strips it.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "[^\\s\\u0085]",
        example = "Laptop"
    )]
    pub product_name: String,
    /// How many (1 to 10,000).
    #[schema(minimum = 1, maximum = 10000, example = 1)]
    pub quantity: u32,
    /// Price of one (0 to 1,000,000, at most two decimals).
    #[serde(with = "crate::money")]
    #[schema(value_type = f64, minimum = 0, maximum = 1000000, multiple_of = 0.01, example = 999.99)]
    pub unit_price: Decimal,
}

/// Where an order is in its flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum OrderStatus {
    /// Placed; stock not yet reserved.
    #[default]
    Pending,
    /// Stock reserved; payment not yet taken.
    InventoryReserved,
    /// Paid.
    PaymentProcessed,
    /// Final: paid and done.
    Confirmed,
    /// Final: cancelled (see the reason).
    Cancelled,
}

impl OrderStatus {
    /// Confirmed and Cancelled are final: nothing changes them.
    pub fn is_final(self) -> bool {
        matches!(self, OrderStatus::Confirmed | OrderStatus::Cancelled)
    }
}

/// What happens to an order. Variant names are the stored event types; `OrderPlaced`,
/// `OrderConfirmed` and `OrderCancelled` travel on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub enum OrderEvent {
    /// An order was accepted.
    OrderPlaced {
        /// The order.
        order_id: Uuid,
        /// Who ordered.
        customer_id: Uuid,
        /// What.
        items: Vec<OrderItem>,
        /// The sum of quantity × unit price.
        #[serde(with = "crate::money")]
        total_amount: Decimal,
        /// When.
        placed_at: DateTime<Utc>,
    },
    /// The inventory holds the order's stock.
    OrderInventoryReserved {
        /// The order.
        order_id: Uuid,
        /// Who ordered.
        customer_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// The payment went through.
    OrderPaymentProcessed {
        /// The order.
        order_id: Uuid,
        /// Who ordered.
        customer_id: Uuid,
        /// The payment.
        payment_id: Option<Uuid>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The order is confirmed (final).
    OrderConfirmed {
        /// The order.
        order_id: Uuid,
        /// Who ordered.
        customer_id: Uuid,
        /// The order's total.
        #[serde(with = "crate::money")]
        total_amount: Decimal,
        /// When.
        at: DateTime<Utc>,
    },
    /// The order is cancelled (final).
    OrderCancelled {
        /// The order.
        order_id: Uuid,
        /// Who ordered.
        customer_id: Uuid,
        /// The order's total.
        #[serde(with = "crate::money")]
        total_amount: Decimal,
        /// Why.
        reason: String,
        /// When.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for OrderEvent {}

/// What can be asked of an order.
#[derive(Debug, Clone)]
pub enum OrderCommand {
    /// Places a new order.
    Place {
        /// Its id.
        order_id: Uuid,
        /// Who orders.
        customer_id: Uuid,
        /// What (validated).
        items: Vec<OrderItem>,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Records that the stock is reserved.
    MarkInventoryReserved {
        /// Now.
        at: DateTime<Utc>,
    },
    /// Records the payment and confirms.
    ConfirmPayment {
        /// The payment.
        payment_id: Option<Uuid>,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Cancels.
    Cancel {
        /// Why.
        reason: String,
        /// Now.
        at: DateTime<Utc>,
    },
}

/// Why an order refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// Placing an order whose id is taken.
    #[error("the order already exists")]
    AlreadyPlaced,
    /// A command for an order that was never placed.
    #[error("the order does not exist")]
    NotPlaced,
}

/// An order's state: everything its API shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Order {
    order_id: Uuid,
    customer_id: Uuid,
    items: Vec<OrderItem>,
    total_amount: Decimal,
    status: OrderStatus,
    cancellation_reason: Option<String>,
    created_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
}

impl Aggregate for Order {
    const TYPE: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn handle(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        let placed = self.created_at.is_some();
        let (order_id, customer_id, total_amount) =
            (self.order_id, self.customer_id, self.total_amount);
        Ok(match command {
            OrderCommand::Place { .. } if placed => return Err(OrderError::AlreadyPlaced),
            OrderCommand::Place {
                order_id,
                customer_id,
                items,
                at,
            } => {
                let total_amount = crate::money::to_cents(
                    items
                        .iter()
                        .map(|item| item.unit_price * Decimal::from(item.quantity))
                        .sum(),
                );
                vec![OrderEvent::OrderPlaced {
                    order_id,
                    customer_id,
                    items,
                    total_amount,
                    placed_at: at,
                }]
            }
            _ if !placed => return Err(OrderError::NotPlaced),
            // Final states are final: a late event changes nothing.
            _ if self.status.is_final() => Vec::new(),
            OrderCommand::MarkInventoryReserved { at } => match self.status {
                OrderStatus::Pending => vec![OrderEvent::OrderInventoryReserved {
                    order_id,
                    customer_id,
                    at,
                }],
                _ => Vec::new(),
            },
            OrderCommand::ConfirmPayment { payment_id, at } => {
                let mut events = Vec::new();
                if self.status != OrderStatus::PaymentProcessed {
                    events.push(OrderEvent::OrderPaymentProcessed {
                        order_id,
                        customer_id,
                        payment_id,
                        at,
                    });
                }
                events.push(OrderEvent::OrderConfirmed {
                    order_id,
                    customer_id,
                    total_amount,
                    at,
                });
                events
            }
            OrderCommand::Cancel { reason, at } => vec![OrderEvent::OrderCancelled {
                order_id,
                customer_id,
                total_amount,
                reason,
                at,
            }],
        })
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::OrderPlaced {
                order_id,
                customer_id,
                items,
                total_amount,
                placed_at,
            } => {
                self.order_id = *order_id;
                self.customer_id = *customer_id;
                self.items = items.clone();
                self.total_amount = *total_amount;
                self.status = OrderStatus::Pending;
                self.created_at = Some(*placed_at);
                self.updated_at = Some(*placed_at);
            }
            OrderEvent::OrderInventoryReserved { at, .. } => {
                self.status = OrderStatus::InventoryReserved;
                self.updated_at = Some(*at);
            }
            OrderEvent::OrderPaymentProcessed { at, .. } => {
                self.status = OrderStatus::PaymentProcessed;
                self.updated_at = Some(*at);
            }
            OrderEvent::OrderConfirmed { at, .. } => {
                self.status = OrderStatus::Confirmed;
                self.updated_at = Some(*at);
            }
            OrderEvent::OrderCancelled { reason, at, .. } => {
                self.status = OrderStatus::Cancelled;
                self.cancellation_reason = Some(reason.clone());
                self.updated_at = Some(*at);
            }
        }
    }
}

impl Order {
    /// The API's view of this order at `version`.
    pub fn view(&self, version: u64) -> OrderView {
        let created_at = self.created_at.unwrap_or_default();
        OrderView {
            order_id: self.order_id,
            customer_id: self.customer_id,
            items: self.items.clone(),
            total_amount: self.total_amount,
            status: self.status,
            cancellation_reason: self.cancellation_reason.clone(),
            created_at,
            updated_at: self.updated_at.unwrap_or(created_at),
            version,
        }
    }
}

/// An order as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    /// The order.
    pub order_id: Uuid,
    /// Who ordered.
    pub customer_id: Uuid,
    /// What.
    pub items: Vec<OrderItem>,
    /// Sum of the lines.
    #[serde(with = "crate::money")]
    #[schema(value_type = f64, example = 999.99)]
    pub total_amount: Decimal,
    /// Where it is.
    pub status: OrderStatus,
    /// Why it was cancelled (`null` unless Cancelled).
    pub cancellation_reason: Option<String>,
    /// When it was placed.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// The order's event count.
    pub version: u64,
}

/// One stored event of an order, as `GET /api/orders/{id}/events` lists it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderEventView {
    /// Its version in the order's stream (1 first).
    pub version: u64,
    /// Its type.
    pub event_type: String,
    /// When it was recorded.
    pub occurred_at: DateTime<Utc>,
    /// Its payload.
    #[schema(value_type = Object)]
    pub data: Value,
}

// ---- the saga ---------------------------------------------------------------------------

/// What the order saga listens to: the wire events, read for their order id and reason.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FlowEvent {
    /// An order was placed: start its timeout.
    OrderPlaced(FlowRef),
    /// Its stock is reserved.
    InventoryReserved(FlowRef),
    /// Its stock could not be reserved.
    InventoryFailed(FlowRef),
    /// It was paid.
    PaymentProcessed(FlowRef),
    /// Its payment was declined.
    PaymentFailed(FlowRef),
}

/// The part of a wire event the saga reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowRef {
    /// The order.
    pub order_id: Uuid,
    /// Why it failed, for failures.
    #[serde(default)]
    pub reason: Option<String>,
    /// The payment, for payments.
    #[serde(default)]
    pub payment_id: Option<Uuid>,
}

impl DomainEvent for FlowEvent {}

impl FlowEvent {
    fn order_ref(&self) -> &FlowRef {
        match self {
            FlowEvent::OrderPlaced(r)
            | FlowEvent::InventoryReserved(r)
            | FlowEvent::InventoryFailed(r)
            | FlowEvent::PaymentProcessed(r)
            | FlowEvent::PaymentFailed(r) => r,
        }
    }
}

/// A command the saga sends to an order.
#[derive(Debug, Clone)]
pub struct FlowCommand {
    /// The order.
    pub order_id: Uuid,
    /// What to do.
    pub action: FlowAction,
}

/// What the saga asks of an order.
#[derive(Debug, Clone, PartialEq)]
pub enum FlowAction {
    /// Record the reservation.
    MarkInventoryReserved,
    /// Record the payment and confirm.
    Confirm(Option<Uuid>),
    /// Cancel for this reason.
    Cancel(String),
}

/// The order timeout: fires when an order is neither Confirmed nor Cancelled in time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderTimeout {
    /// The order.
    pub order_id: Uuid,
}

/// The order saga: reserve, pay, confirm; or cancel on a failure or the timeout.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderFulfillment {
    order_id: Option<Uuid>,
}

impl Saga for OrderFulfillment {
    const NAME: &'static str = "order-fulfillment";
    type Event = FlowEvent;
    type Command = FlowCommand;
    type Deadline = OrderTimeout;
    /// The order timeout.
    type Config = chrono::Duration;

    fn instance_id(event: &Envelope<FlowEvent>) -> Option<String> {
        Some(event.event.order_ref().order_id.to_string())
    }

    fn handle(
        &mut self,
        timeout: &chrono::Duration,
        event: &Envelope<FlowEvent>,
    ) -> SagaDecision<FlowCommand, OrderTimeout> {
        let order = event.event.order_ref();
        self.order_id = Some(order.order_id);
        let command = |action| FlowCommand {
            order_id: order.order_id,
            action,
        };
        let reason = order.reason.clone().unwrap_or_default();
        match &event.event {
            // Saturates instead of panicking when a huge timeout runs past the end of time.
            FlowEvent::OrderPlaced(_) => SagaDecision::none().schedule_after(
                "timeout",
                event.recorded_at,
                *timeout,
                OrderTimeout {
                    order_id: order.order_id,
                },
            ),
            FlowEvent::InventoryReserved(_) => {
                SagaDecision::none().send(command(FlowAction::MarkInventoryReserved))
            }
            FlowEvent::InventoryFailed(_) => SagaDecision::none()
                .send(command(FlowAction::Cancel(reason)))
                .cancel("timeout")
                .complete(),
            FlowEvent::PaymentProcessed(payment) => SagaDecision::none()
                .send(command(FlowAction::Confirm(payment.payment_id)))
                .cancel("timeout")
                .complete(),
            FlowEvent::PaymentFailed(_) => SagaDecision::none()
                .send(command(FlowAction::Cancel(format!(
                    "payment declined: {reason}"
                ))))
                .cancel("timeout")
                .complete(),
        }
    }

    fn on_deadline(
        &mut self,
        _timeout: &chrono::Duration,
        deadline: OrderTimeout,
    ) -> SagaDecision<FlowCommand, OrderTimeout> {
        SagaDecision::none()
            .send(FlowCommand {
                order_id: deadline.order_id,
                action: FlowAction::Cancel("timed out".into()),
            })
            .complete()
    }
}

/// Carries out the saga's commands on the order repository, and drops the cached order.
#[derive(Debug, Clone)]
pub struct OrderDispatcher {
    orders: Repository<Order>,
    cache: OrderCache,
}

#[async_trait]
impl CommandDispatcher<FlowCommand> for OrderDispatcher {
    async fn dispatch(
        &self,
        command: FlowCommand,
        metadata: Metadata,
    ) -> Result<(), DispatchError> {
        let at = Utc::now();
        let order_command = match command.action.clone() {
            FlowAction::MarkInventoryReserved => OrderCommand::MarkInventoryReserved { at },
            FlowAction::Confirm(payment_id) => OrderCommand::ConfirmPayment { payment_id, at },
            FlowAction::Cancel(reason) => OrderCommand::Cancel { reason, at },
        };
        let span = tracing::info_span!("saga", correlation_id = %metadata.correlation_id.unwrap_or(command.order_id), order_id = %command.order_id);
        async {
            // `?` keeps the store error's kind: an outage is retried, a refusal dead-letters.
            let executed = self
                .orders
                .execute(&command.order_id.to_string(), order_command, metadata)
                .await?;
            if !executed.events.is_empty() {
                tracing::info!(action = ?command.action, status = ?executed.state.status, "order moved");
                self.cache
                    .changed(command.order_id, executed.version)
                    .await;
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// The saga's commands of a batch, on every order they touch, in one commit.
    async fn dispatch_many(
        &self,
        commands: Vec<(FlowCommand, Metadata)>,
    ) -> Result<(), DispatchError> {
        let at = Utc::now();
        let batch: Vec<_> = commands
            .iter()
            .map(|(command, metadata)| {
                let order_command = match command.action.clone() {
                    FlowAction::MarkInventoryReserved => OrderCommand::MarkInventoryReserved { at },
                    FlowAction::Confirm(payment_id) => {
                        OrderCommand::ConfirmPayment { payment_id, at }
                    }
                    FlowAction::Cancel(reason) => OrderCommand::Cancel { reason, at },
                };
                (
                    command.order_id.to_string(),
                    order_command,
                    es_core::CommandContext::with_metadata(metadata.clone()),
                )
            })
            .collect();
        let executed = self.orders.execute_batch(batch).await?;
        for ((command, _), executed) in commands.iter().zip(executed) {
            if !executed.events.is_empty() {
                tracing::info!(order_id = %command.order_id, action = ?command.action, status = ?executed.state.status, "order moved");
                self.cache.changed(command.order_id, executed.version).await;
            }
        }
        Ok(())
    }
}

// ---- read models -----------------------------------------------------------------------

/// The cached order views: cache-aside, each stored with the order's version, and marked
/// changed (not merely deleted) whenever the order moves, so that a GET which loaded an older
/// version while the saga wrote a newer one cannot cache the older view afterwards.
#[derive(Debug, Clone)]
pub struct OrderCache {
    cache: Option<Arc<dyn Cache>>,
}

impl OrderCache {
    /// How long a view, and a change mark, is kept. The mark only has to outlive a load that
    /// started before the change (bounded by the request timeout); keeping it as long as a
    /// view costs one small key per changed order.
    const TTL: Duration = Duration::from_secs(300);

    fn key(order_id: Uuid) -> String {
        format!("order:{order_id}")
    }

    /// The order is now at `version`: drop any older cached view, and refuse older loads.
    async fn changed(&self, order_id: Uuid, version: u64) {
        if let Some(cache) = &self.cache {
            if let Err(error) = cache
                .mark_changed(&Self::key(order_id), version, Some(Self::TTL))
                .await
            {
                tracing::warn!(%order_id, %error, "cannot mark a cached order changed; it expires by itself");
            }
        }
    }
}

/// Marks each changed order's cached view in this instance's cache too (another instance may
/// have changed the order). The customers' listing is [`Listings`], written inline.
#[derive(Debug, Default)]
pub struct OrderReadModel {
    cache: Option<OrderCache>,
}

#[async_trait]
impl Projection for OrderReadModel {
    fn name(&self) -> &str {
        "order-read-model"
    }

    fn filter(&self) -> StreamFilter {
        StreamFilter::category(Order::TYPE)
    }

    async fn handle(&self, recorded: &RecordedEvent) -> Result<(), BoxError> {
        let event: OrderEvent = recorded.decode()?;
        let order_id = match &event {
            OrderEvent::OrderPlaced { order_id, .. }
            | OrderEvent::OrderInventoryReserved { order_id, .. }
            | OrderEvent::OrderPaymentProcessed { order_id, .. }
            | OrderEvent::OrderConfirmed { order_id, .. }
            | OrderEvent::OrderCancelled { order_id, .. } => *order_id,
        };
        if let Some(cache) = &self.cache {
            cache.changed(order_id, recorded.stream_version).await;
        }
        Ok(())
    }
}

// ---- HTTP ------------------------------------------------------------------------------

#[derive(Clone)]
struct OrderState {
    orders: Repository<Order>,
    store: Arc<dyn EventStore>,
    listing: Listings,
    cache: OrderCache,
    idempotency: Arc<dyn IdempotencyStore>,
    /// How long a claimed key is held without renewal (renewed while the request runs).
    idempotency_lease: Duration,
}

/// How long an idempotency key's answer is kept.
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a retry waits for a racing request with the same key. As long as the default
/// lease, so a retry behind a request that died usually takes the key over within one wait.
const IDEMPOTENCY_WAIT: Duration = Duration::from_secs(10);

/// The body of `POST /api/orders`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlaceOrderRequest {
    /// Who orders.
    #[schema(example = "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa")]
    pub customer_id: Uuid,
    /// 1 to 100 lines. No two lines may have the same `productId` (a 400 names the repeated
    /// line); JSON Schema's `uniqueItems` cannot say this of objects that differ elsewhere.
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<OrderItem>,
}

/// Validates a `POST /api/orders` body, naming every bad field. Prices and quantities are
/// read from the numbers' text as sent, so `0.10000000000000000001` is refused (more than two
/// decimals), not taken for `0.1`.
pub fn validate_place_order(body: &ExactJson) -> Result<PlaceOrderRequest, AppError> {
    let mut check = Validator::exact(body);
    let body = &body.value;
    if !body.is_object() {
        return Err(AppError::bad_request("the body must be a JSON object"));
    }
    let customer_id = check.uuid(body, "customerId", "customerId");
    let mut items = Vec::new();
    match body.get("items") {
        None | Some(Value::Null) => check.error("items", "is required"),
        Some(Value::Array(lines)) if !(MIN_ITEMS..=MAX_ITEMS).contains(&lines.len()) => check
            .error(
                "items",
                format!("must have {MIN_ITEMS} to {MAX_ITEMS} items"),
            ),
        Some(Value::Array(lines)) => {
            let mut seen = std::collections::HashSet::new();
            for (i, line) in lines.iter().enumerate() {
                let field = |name: &str| format!("items[{i}].{name}");
                if !line.is_object() {
                    check.error(format!("items[{i}]"), "must be an object");
                    continue;
                }
                let product_id = check.uuid(line, "productId", &field("productId"));
                if let Some(id) = product_id {
                    if !seen.insert(id) {
                        check.error(field("productId"), "appears more than once in the order");
                    }
                }
                let product_name = check.text(
                    line,
                    "productName",
                    &field("productName"),
                    MAX_PRODUCT_NAME_CHARS,
                );
                let quantity = check.integer(
                    line,
                    "quantity",
                    &field("quantity"),
                    MIN_QUANTITY,
                    MAX_QUANTITY,
                );
                let unit_price = check.money(
                    line,
                    "unitPrice",
                    &field("unitPrice"),
                    MIN_UNIT_PRICE,
                    MAX_UNIT_PRICE,
                );
                if let (Some(product_id), Some(product_name), Some(quantity), Some(unit_price)) =
                    (product_id, product_name, quantity, unit_price)
                {
                    items.push(OrderItem {
                        product_id,
                        product_name,
                        quantity: quantity as u32,
                        unit_price,
                    });
                }
            }
        }
        Some(_) => check.error("items", "must be an array"),
    }
    check.finish()?;
    let customer_id = customer_id.ok_or_else(|| AppError::bad_request("customerId is required"))?;
    Ok(PlaceOrderRequest { customer_id, items })
}

/// A stable fingerprint of a request: the SHA-256 of its canonical JSON, in hex. Two requests
/// with one key and different bodies must never look alike, so a cryptographic hash, not a
/// fast one.
fn fingerprint(request: &PlaceOrderRequest) -> String {
    let canonical = serde_json::to_vec(request).unwrap_or_default();
    Sha256::digest(&canonical)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The id of the order placed by `customer_id` with idempotency key `key`: a name-based
/// UUIDv8 (RFC 9562, B.2) from SHA-256. Every run of one keyed request, also one that takes
/// the key over after the first was cut off, creates the same stream, so the event store
/// itself refuses a second order (the append expects no stream).
fn keyed_order_id(customer_id: Uuid, key: &str) -> Uuid {
    let mut hash = Sha256::new();
    hash.update(b"order-processing-example/order\0");
    hash.update(customer_id.as_bytes());
    hash.update(key.as_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, AppError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let invalid = || {
        let mut errors = crate::http::FieldErrors::new();
        errors.insert(
            "Idempotency-Key".into(),
            vec![format!(
                "must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} visible ASCII characters"
            )],
        );
        AppError::validation(errors)
    };
    let key = value.to_str().map_err(|_| invalid())?;
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_CHARS {
        return Err(invalid());
    }
    Ok(Some(key.to_owned()))
}

fn created(view: &OrderView) -> Response {
    let location = format!("/api/orders/{}", view.order_id);
    (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(view),
    )
        .into_response()
}

fn store_error(error: CommandError<OrderError>) -> AppError {
    match error {
        CommandError::Rejected(OrderError::NotPlaced) => AppError::not_found("no such order"),
        CommandError::Rejected(error) => AppError::new(StatusCode::CONFLICT, error.to_string()),
        CommandError::Store(error) => error.into(),
    }
}

/// Places an order.
#[utoipa::path(post, path = "/api/orders", tag = "orders",
    request_body = PlaceOrderRequest,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "1 to 200 visible ASCII characters; makes retries safe",
        min_length = 1, max_length = 200, pattern = "^[!-~]+$", nullable = false,
        example = "order-7f3a")),
    responses(
        (status = 201, description = "Placed", body = OrderView),
        (status = 200, description = "A retry with the same key and body: the same order", body = OrderView),
        (status = 400, description = "Malformed or invalid", content_type = "application/problem+json"),
        (status = 413, description = "Body over 1 MiB", content_type = "application/problem+json"),
        (status = 422, description = "The key was used with another body", content_type = "application/problem+json"),
    ))]
async fn place_order(
    State(state): State<OrderState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ExactJson>,
) -> Result<Response, AppError> {
    let key = idempotency_key(&headers)?;
    let request = validate_place_order(&body)?;
    let Some(key) = key else {
        let view = create_order(&state, Uuid::now_v7(), request)
            .await
            .map_err(store_error)?;
        return Ok(created(&view));
    };
    let fingerprint = fingerprint(&request);
    let store_key = format!("order:{key}");
    match claim_or_wait(
        state.idempotency.as_ref(),
        &store_key,
        &fingerprint,
        state.idempotency_lease,
        IDEMPOTENCY_WAIT,
    )
    .await?
    {
        Claim::Acquired(token) => {
            // Renewed while the order is placed; released at once if this request is cut off
            // (timeout, disconnect), so a retry need not wait out the lease.
            let guard = ClaimGuard::hold(
                state.idempotency.clone(),
                store_key,
                token,
                state.idempotency_lease,
            );
            let order_id = keyed_order_id(request.customer_id, &key);
            match place_keyed(&state, order_id, request).await {
                Ok((view, placed_now)) => {
                    let answer = view.order_id.to_string().into_bytes();
                    match guard.complete(answer.into(), IDEMPOTENCY_TTL).await {
                        Ok(Ownership::Held) => {}
                        // The order stands either way: a retry finds it by its key-derived id.
                        Ok(Ownership::Lost) => tracing::warn!(
                            %order_id,
                            "the idempotency key's lease ran out before its answer was stored"
                        ),
                        Err(error) => tracing::warn!(
                            %order_id, %error,
                            "cannot store the idempotent answer; a retry finds the order by its id"
                        ),
                    }
                    Ok(if placed_now {
                        created(&view)
                    } else {
                        (StatusCode::OK, Json(view)).into_response()
                    })
                }
                Err(error) => {
                    match guard.release().await {
                        Ok(Ownership::Held) => {}
                        Ok(Ownership::Lost) => {
                            tracing::debug!("the idempotency key was already free")
                        }
                        Err(release) => tracing::warn!(
                            error = %release,
                            "cannot release an idempotency key; it is free when its lease runs out"
                        ),
                    }
                    Err(error)
                }
            }
        }
        Claim::Completed(answer) => {
            let order_id = std::str::from_utf8(&answer)
                .ok()
                .and_then(|text| Uuid::parse_str(text).ok())
                .ok_or_else(|| {
                    AppError::internal(&es_core::Error::InvalidInput(
                        "a stored idempotent answer is not an order id".into(),
                    ))
                })?;
            let view = load_order(&state, order_id)
                .await?
                .ok_or_else(|| AppError::not_found("the order of this idempotency key is gone"))?;
            Ok((StatusCode::OK, Json(view)).into_response())
        }
        Claim::Mismatch => Err(reused_key()),
        Claim::InProgress => Err(AppError::new(
            StatusCode::CONFLICT,
            "a request with this Idempotency-Key is still being handled; retry later",
        )),
    }
}

async fn create_order(
    state: &OrderState,
    order_id: Uuid,
    request: PlaceOrderRequest,
) -> Result<OrderView, CommandError<OrderError>> {
    let span = tracing::info_span!("order", correlation_id = %order_id, order_id = %order_id);
    async {
        let executed = state
            .orders
            .execute(
                &order_id.to_string(),
                OrderCommand::Place {
                    order_id,
                    customer_id: request.customer_id,
                    items: request.items,
                    at: Utc::now(),
                },
                // The order id is the correlation id of everything that follows from it.
                Metadata::with_correlation(order_id),
            )
            .await?;
        tracing::info!(total = %executed.state.total_amount, "order placed");
        Ok(executed.state.view(executed.version))
    }
    .instrument(span)
    .await
}

/// Places the order of a keyed request under its key-derived id, or finds the one an earlier
/// run of the same request placed (it was cut off before its answer was stored): `true` when
/// placed now. An order under that id with another body answers 422, as a reused key does.
async fn place_keyed(
    state: &OrderState,
    order_id: Uuid,
    request: PlaceOrderRequest,
) -> Result<(OrderView, bool), AppError> {
    let (customer_id, items) = (request.customer_id, request.items.clone());
    match create_order(state, order_id, request).await {
        Ok(view) => Ok((view, true)),
        Err(CommandError::Rejected(OrderError::AlreadyPlaced)) => {
            let existing = state
                .orders
                .find(&order_id.to_string())
                .await?
                .ok_or_else(|| {
                    AppError::internal(&es_core::Error::NotFound(order_id.to_string()))
                })?;
            if existing.state.customer_id != customer_id || existing.state.items != items {
                return Err(reused_key());
            }
            tracing::info!(%order_id, "a retry found the order its key already placed");
            Ok((existing.state.view(existing.version), false))
        }
        Err(error) => Err(store_error(error)),
    }
}

fn reused_key() -> AppError {
    AppError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "this Idempotency-Key was already used with a different request",
    )
}

async fn load_order(state: &OrderState, order_id: Uuid) -> Result<Option<OrderView>, AppError> {
    let orders = state.orders.clone();
    let load = || async move {
        let loaded = orders.find(&order_id.to_string()).await?;
        Ok::<_, es_core::Error>(loaded.map(|l| (l.state.view(l.version), l.version)))
    };
    let view = match &state.cache.cache {
        Some(cache) => {
            cache
                .get_or_load(&OrderCache::key(order_id), Some(OrderCache::TTL), load)
                .await?
        }
        None => load().await?.map(|(view, _)| view),
    };
    Ok(view)
}

/// One order, straight from its stream (read-your-writes).
#[utoipa::path(get, path = "/api/orders/{orderId}", tag = "orders",
    params(("orderId" = Uuid, Path, description = "The order")),
    responses((status = 200, body = OrderView), (status = 400), (status = 404)))]
async fn get_order(
    State(state): State<OrderState>,
    ApiPath(order_id): ApiPath<Uuid>,
) -> Result<Json<OrderView>, AppError> {
    load_order(&state, order_id)
        .await?
        .map(Json)
        .ok_or_else(|| AppError::not_found(format!("no order {order_id}")))
}

/// A customer's orders, newest first, in pages: an order is listed once its `POST` has answered.
#[utoipa::path(get, path = "/api/orders/customer/{customerId}", tag = "orders",
    params(("customerId" = Uuid, Path, description = "The customer"), PageQuery),
    responses(
        (status = 200, body = [OrderView], headers(("Link" = String, description = "`<…?limit=N&cursor=C>; rel=\"next\"` when more orders follow"))),
        (status = 400, description = "Bad customer id, limit or cursor", content_type = "application/problem+json"),
    ))]
async fn customer_orders(
    State(state): State<OrderState>,
    ApiPath(customer_id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Response, AppError> {
    let page = Page::from_query(&query)?;
    let (orders, next) = state.listing.page(customer_id, &page).await?;
    Ok(page.respond(&format!("/api/orders/customer/{customer_id}"), orders, next))
}

/// The order's stored events, oldest first.
#[utoipa::path(get, path = "/api/orders/{orderId}/events", tag = "orders",
    params(("orderId" = Uuid, Path, description = "The order")),
    responses((status = 200, body = [OrderEventView]), (status = 400), (status = 404)))]
async fn order_events(
    State(state): State<OrderState>,
    ApiPath(order_id): ApiPath<Uuid>,
) -> Result<Json<Vec<OrderEventView>>, AppError> {
    let stream = Repository::<Order>::stream_id(&order_id.to_string())?;
    let events = state.store.read_stream_to_end(&stream, 1).await?;
    if events.is_empty() {
        return Err(AppError::not_found(format!("no order {order_id}")));
    }
    let views = events
        .iter()
        .map(|event| {
            Ok(OrderEventView {
                version: event.stream_version,
                event_type: event.event_type.clone(),
                occurred_at: event.recorded_at,
                data: event.payload_json()?,
            })
        })
        .collect::<Result<Vec<_>, es_core::Error>>()?;
    Ok(Json(views))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Order service",
        description = "Places orders and carries them through the saga."
    ),
    paths(place_order, get_order, customer_orders, order_events),
    components(schemas(OrderView, OrderItem, OrderStatus, OrderEventView, PlaceOrderRequest))
)]
struct OrderApi;

/// The service's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    OrderApi::openapi()
}

/// Starts the order service: its read model, its relay, the saga's consumer and deadlines.
pub(crate) async fn start(
    backends: &Backends,
    settings: &Settings,
    background: &mut Background,
) -> es_core::Result<Router> {
    let orders = Repository::<Order>::new(backends.store.clone());
    let cache = OrderCache {
        cache: backends.cache.clone(),
    };
    // Without a cache there is nothing to mark: reading the log for it would be waste.
    if backends.cache.is_some() {
        background.project(
            backends,
            Arc::new(OrderReadModel {
                cache: Some(cache.clone()),
            }),
        );
    }
    if let Listings::Postgres(store) = &backends.listings {
        // Rows are written inline; the runner takes over events appended by older code and
        // carries out rebuilds (`order-processing projections rebuild order-listing`).
        let runner = es_postgres::PgReadModelRunner::new(store.clone());
        let model: Arc<dyn es_postgres::PgProjection> =
            Arc::new(crate::listing::PgOrderListing::default());
        background.spawn(move |stop| async move { runner.run(model, stop).await });
    }
    let dispatcher = Arc::new(OrderDispatcher {
        orders: orders.clone(),
        cache: cache.clone(),
    });
    // `parse_duration` only accepts what fits; a `Settings` built in code saturates.
    let timeout =
        chrono::Duration::from_std(settings.order_timeout).unwrap_or(chrono::Duration::MAX);
    let saga = SagaRunner::<OrderFulfillment>::new(backends.sagas.clone(), dispatcher, timeout);
    background
        .consume_batched(
            &backends.bus,
            backends.consumer("order"),
            crate::events::bindings(ServiceKind::Order),
            Arc::new(saga.clone()),
            crate::background::CONSUMER_BATCH,
        )
        .await?;
    // Fire timeouts often enough that a short timeout is honoured closely.
    let interval =
        (settings.order_timeout / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
    background.spawn(move |stop| async move { saga.run_deadlines(interval, stop).await });
    background.relay(backends, Order::TYPE);
    let state = OrderState {
        orders,
        store: backends.store.clone(),
        listing: backends.listings.clone(),
        cache,
        idempotency: backends.idempotency.clone(),
        idempotency_lease: settings.idempotency_lease,
    };
    let api = Router::new()
        .route("/api/orders", post(place_order))
        .route("/api/orders/{order_id}", get(get_order))
        .route("/api/orders/{order_id}/events", get(order_events))
        .route("/api/orders/customer/{customer_id}", get(customer_orders))
        .with_state(state);
    let _ = events::ORDER_PLACED;
    Ok(finish_router(api, openapi(), backends.health.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn place() -> OrderCommand {
        OrderCommand::Place {
            order_id: Uuid::nil(),
            customer_id: Uuid::nil(),
            items: vec![OrderItem {
                product_id: Uuid::nil(),
                product_name: "Laptop".into(),
                quantity: 3,
                unit_price: Decimal::new(33333, 2),
            }],
            at: Utc::now(),
        }
    }

    fn placed() -> Order {
        let mut order = Order::default();
        for event in order.handle(place()).unwrap() {
            order.apply(&event);
        }
        order
    }

    #[test]
    fn placing_sums_the_lines_exactly() {
        let order = placed();
        assert_eq!(order.total_amount.to_string(), "999.99");
        assert_eq!(order.handle(place()), Err(OrderError::AlreadyPlaced));
    }

    #[test]
    fn final_states_ignore_late_commands() {
        let mut order = placed();
        let cancel = OrderCommand::Cancel {
            reason: "timed out".into(),
            at: Utc::now(),
        };
        for event in order.handle(cancel).unwrap() {
            order.apply(&event);
        }
        assert_eq!(order.status, OrderStatus::Cancelled);
        let confirm = OrderCommand::ConfirmPayment {
            payment_id: None,
            at: Utc::now(),
        };
        assert_eq!(order.handle(confirm), Ok(vec![]));
    }

    #[test]
    fn a_timeout_past_the_end_of_time_saturates_instead_of_panicking() {
        let placed = es_core::testing::envelope(
            "order-1",
            1,
            FlowEvent::OrderPlaced(FlowRef {
                order_id: Uuid::nil(),
                reason: None,
                payment_id: None,
            }),
            Metadata::default(),
        );
        // `--order-timeout 100000000d`: past the last representable time.
        let timeout = chrono::Duration::from_std(
            crate::config::parse_duration("100000000d").expect("a long but valid timeout"),
        )
        .expect("fits a chrono duration");
        let decision = OrderFulfillment::default().handle(&timeout, &placed);
        assert_eq!(decision.schedule[0].1, chrono::DateTime::<Utc>::MAX_UTC);
    }

    #[test]
    fn commands_on_an_unplaced_order_are_refused() {
        let command = OrderCommand::MarkInventoryReserved { at: Utc::now() };
        assert_eq!(Order::default().handle(command), Err(OrderError::NotPlaced));
    }

    #[test]
    fn validation_names_each_bad_field() {
        let body = json!({"customerId": "nope", "items": [
            {"productId": "11111111-1111-1111-1111-111111111111", "productName": "", "quantity": 0, "unitPrice": 1.234},
            {"productId": "11111111-1111-1111-1111-111111111111", "productName": "x", "quantity": 1, "unitPrice": -1}
        ]});
        let error = validate_place_order(&body.into()).unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        let body = json!({"customerId": "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa", "items": [
            {"productId": "11111111-1111-1111-1111-111111111111", "productName": "Laptop", "quantity": 1, "unitPrice": 999.99}
        ]});
        let request = validate_place_order(&body.into()).unwrap();
        assert_eq!(request.items[0].unit_price, Decimal::new(99999, 2));
    }

    #[test]
    fn a_keyed_order_id_depends_on_the_customer_and_the_key_only() {
        let (alice, bob) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let id = keyed_order_id(alice, "key-1");
        assert_eq!(
            id,
            keyed_order_id(alice, "key-1"),
            "every retry aims at one stream"
        );
        assert_ne!(id, keyed_order_id(alice, "key-2"));
        assert_ne!(
            id,
            keyed_order_id(bob, "key-1"),
            "customers do not share keys"
        );
        assert_eq!(id.get_version_num(), 8);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
    }

    #[test]
    fn fingerprints_are_sha256_of_the_canonical_request() {
        let body = json!({"customerId": Uuid::nil(), "items": [
            {"productId": Uuid::nil(), "productName": "Laptop", "quantity": 1, "unitPrice": 1}
        ]});
        let request = validate_place_order(&body.into()).unwrap();
        let print = fingerprint(&request);
        assert_eq!(print.len(), 64);
        assert!(print.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(print, fingerprint(&request.clone()));
        let mut other = request;
        other.items[0].quantity = 2;
        assert_ne!(print, fingerprint(&other));
    }
}
