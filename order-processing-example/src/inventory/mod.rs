//! The inventory service (5002): stock per product, and each order's reservation.
//!
//! Never oversell: each product is its own stream, and a reservation is one atomic commit of
//! the order's reservation stream and every product stream it touches, each expecting the
//! version the decision was made on. If any product moved meanwhile (another order, another
//! process) nothing is written and the decision is made again on fresh state. So an order
//! reserves all its lines or none, and stock never goes below zero, however many race.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use es_core::bus::{HandlerError, MessageHandler};
use es_core::projection::TypedDecoder;
use es_core::{
    Aggregate, BoxError, CommandError, CommitOutcome, Decision, DomainEvent, EventStore,
    ExpectedVersion, InboxEntry, Metadata, NewEvent, Projection, RecordedEvent, Repository,
    StreamAppend, StreamFilter, UnitOfWork,
};
use es_postgres::{PgEventStore, PgProjection};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::backends::Backends;
use crate::background::Background;
use crate::config::Settings;
use crate::http::{finish_router, ApiJson, ApiPath, AppError, Validator};
use crate::listing::Listings;
use crate::service_kind::ServiceKind;

/// The products seeded on first start with empty state.
pub const SEED: [(&str, &str, u64); 4] = [
    ("11111111-1111-1111-1111-111111111111", "Laptop", 100),
    ("22222222-2222-2222-2222-222222222222", "Mouse", 500),
    ("33333333-3333-3333-3333-333333333333", "Keyboard", 200),
    ("44444444-4444-4444-4444-444444444444", "Monitor", 50),
];

/// What happens to a product's stock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub enum ProductEvent {
    /// Created, or its available stock set.
    ProductStocked {
        /// The product.
        product_id: Uuid,
        /// Its name.
        name: String,
        /// What can be reserved now.
        available_quantity: u64,
        /// When.
        at: DateTime<Utc>,
    },
    /// Held for an order.
    StockReserved {
        /// The order.
        order_id: Uuid,
        /// How many.
        quantity: u64,
    },
    /// Given back by an order.
    StockReleased {
        /// The order.
        order_id: Uuid,
        /// How many.
        quantity: u64,
    },
    /// Sold to a confirmed order.
    StockCommitted {
        /// The order.
        order_id: Uuid,
        /// How many.
        quantity: u64,
    },
}

impl DomainEvent for ProductEvent {}

/// What can be asked of a product.
#[derive(Debug, Clone)]
pub enum ProductCommand {
    /// Create it or set its available stock.
    Stock {
        /// The product.
        product_id: Uuid,
        /// Its name.
        name: String,
        /// The available stock.
        available_quantity: u64,
    },
    /// Hold stock for an order.
    Reserve {
        /// The order.
        order_id: Uuid,
        /// How many.
        quantity: u64,
    },
    /// Give back an order's stock.
    Release {
        /// The order.
        order_id: Uuid,
        /// How many.
        quantity: u64,
    },
    /// Sell an order's held stock.
    Commit {
        /// The order.
        order_id: Uuid,
        /// How many.
        quantity: u64,
    },
}

/// Why a product refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProductError {
    /// The product does not exist.
    #[error("unknown product")]
    Unknown,
    /// Not enough available stock.
    #[error("insufficient stock for product")]
    Insufficient,
}

/// A product's stock.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Product {
    product_id: Option<Uuid>,
    name: String,
    available: u64,
    reserved: u64,
}

impl Aggregate for Product {
    const TYPE: &'static str = "product";
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Error = ProductError;

    fn handle(&self, command: ProductCommand) -> Result<Vec<ProductEvent>, ProductError> {
        Ok(match command {
            ProductCommand::Stock {
                product_id,
                name,
                available_quantity,
            } => vec![ProductEvent::ProductStocked {
                product_id,
                name,
                available_quantity,
                at: Utc::now(),
            }],
            ProductCommand::Reserve { .. } if self.product_id.is_none() => {
                return Err(ProductError::Unknown)
            }
            ProductCommand::Reserve { order_id, quantity } => {
                if self.available < quantity {
                    return Err(ProductError::Insufficient);
                }
                vec![ProductEvent::StockReserved { order_id, quantity }]
            }
            ProductCommand::Release { order_id, quantity } => {
                vec![ProductEvent::StockReleased { order_id, quantity }]
            }
            ProductCommand::Commit { order_id, quantity } => {
                vec![ProductEvent::StockCommitted { order_id, quantity }]
            }
        })
    }

    fn apply(&mut self, event: &ProductEvent) {
        match event {
            ProductEvent::ProductStocked {
                product_id,
                name,
                available_quantity,
                ..
            } => {
                self.product_id = Some(*product_id);
                self.name = name.clone();
                self.available = *available_quantity;
            }
            ProductEvent::StockReserved { quantity, .. } => {
                self.available = self.available.saturating_sub(*quantity);
                self.reserved += quantity;
            }
            ProductEvent::StockReleased { quantity, .. } => {
                self.available += quantity;
                self.reserved = self.reserved.saturating_sub(*quantity);
            }
            ProductEvent::StockCommitted { quantity, .. } => {
                self.reserved = self.reserved.saturating_sub(*quantity);
            }
        }
    }
}

/// A product as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductView {
    /// The product.
    pub product_id: Uuid,
    /// Its name.
    pub name: String,
    /// What can still be reserved.
    pub available_quantity: u64,
    /// What open reservations hold.
    pub reserved_quantity: u64,
}

impl Product {
    fn view(&self) -> Option<ProductView> {
        Some(ProductView {
            product_id: self.product_id?,
            name: self.name.clone(),
            available_quantity: self.available,
            reserved_quantity: self.reserved,
        })
    }
}

/// One reserved line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReservedItem {
    /// The product.
    pub product_id: Uuid,
    /// How many.
    pub quantity: u64,
}

/// What happens to an order's reservation. `InventoryReserved`, `InventoryFailed` and
/// `InventoryReleased` travel on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub enum ReservationEvent {
    /// Every line is held.
    InventoryReserved {
        /// The order.
        order_id: Uuid,
        /// Who ordered.
        customer_id: Uuid,
        /// The lines.
        items: Vec<ReservedItem>,
        /// The order's total, for the payment.
        #[serde(with = "crate::money")]
        total_amount: Decimal,
        /// When.
        at: DateTime<Utc>,
    },
    /// Nothing is held: a product is unknown or short.
    InventoryFailed {
        /// The order.
        order_id: Uuid,
        /// Who ordered.
        customer_id: Uuid,
        /// Why.
        reason: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The held stock went back.
    InventoryReleased {
        /// The order.
        order_id: Uuid,
        /// Who ordered.
        customer_id: Uuid,
        /// The lines.
        items: Vec<ReservedItem>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The held stock was sold (the order is confirmed).
    InventoryCommitted {
        /// The order.
        order_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// The order was cancelled before anything was reserved for it: a tombstone, so that an
    /// `OrderPlaced` arriving later reserves nothing. It stays inside the service.
    ReservationCancelled {
        /// The order.
        order_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for ReservationEvent {}

/// Where a reservation is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ReservationStatus {
    /// No reservation (never asked, or it failed).
    #[default]
    None,
    /// The stock is held.
    Reserved,
    /// The stock went back.
    Released,
    /// The stock was sold.
    Committed,
}

/// An order's reservation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reservation {
    decided: bool,
    status: ReservationStatus,
    customer_id: Uuid,
    items: Vec<ReservedItem>,
}

/// What can be asked of a reservation.
#[derive(Debug, Clone)]
pub enum ReservationCommand {
    /// Record the outcome of reserving: held lines, or why not.
    Decide(ReservationEvent),
    /// Give the stock back; before any decision, refuse every later reservation.
    Release,
    /// Sell the stock.
    Commit,
}

impl Aggregate for Reservation {
    const TYPE: &'static str = "reservation";
    type Command = (Uuid, ReservationCommand);
    type Event = ReservationEvent;
    type Error = std::convert::Infallible;

    fn handle(
        &self,
        (order_id, command): Self::Command,
    ) -> Result<Vec<ReservationEvent>, std::convert::Infallible> {
        let at = Utc::now();
        Ok(match command {
            ReservationCommand::Decide(_) if self.decided => Vec::new(),
            ReservationCommand::Decide(event) => vec![event],
            ReservationCommand::Release if self.status == ReservationStatus::Reserved => {
                vec![ReservationEvent::InventoryReleased {
                    order_id,
                    customer_id: self.customer_id,
                    items: self.items.clone(),
                    at,
                }]
            }
            ReservationCommand::Commit if self.status == ReservationStatus::Reserved => {
                vec![ReservationEvent::InventoryCommitted { order_id, at }]
            }
            // The cancellation overtook the order: record it, so the reservation that
            // `OrderPlaced` would ask for later is refused (see `Decide` above).
            ReservationCommand::Release if !self.decided => {
                vec![ReservationEvent::ReservationCancelled { order_id, at }]
            }
            ReservationCommand::Release | ReservationCommand::Commit => Vec::new(),
        })
    }

    fn apply(&mut self, event: &ReservationEvent) {
        self.decided = true;
        match event {
            ReservationEvent::InventoryReserved {
                customer_id, items, ..
            } => {
                self.status = ReservationStatus::Reserved;
                self.customer_id = *customer_id;
                self.items = items.clone();
            }
            ReservationEvent::InventoryFailed { customer_id, .. } => {
                self.customer_id = *customer_id;
            }
            ReservationEvent::InventoryReleased { .. } => {
                self.status = ReservationStatus::Released;
            }
            ReservationEvent::InventoryCommitted { .. } => {
                self.status = ReservationStatus::Committed;
            }
            ReservationEvent::ReservationCancelled { .. } => {
                self.status = ReservationStatus::Released;
            }
        }
    }
}

/// A reservation as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReservationView {
    /// The order.
    pub order_id: Uuid,
    /// `Reserved`, `Released` or `Committed`.
    pub status: ReservationStatus,
    /// The lines.
    pub items: Vec<ReservedItem>,
}

// ---- the consumer ----------------------------------------------------------------------

/// What the inventory listens to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
enum InventoryInput {
    OrderPlaced {
        order_id: Uuid,
        customer_id: Uuid,
        items: Vec<ReservedItem>,
        #[serde(with = "crate::money")]
        total_amount: Decimal,
    },
    OrderConfirmed {
        order_id: Uuid,
    },
    OrderCancelled {
        order_id: Uuid,
    },
    PaymentFailed {
        order_id: Uuid,
    },
}

impl DomainEvent for InventoryInput {}

/// Reserves on `OrderPlaced`, releases on `PaymentFailed` / `OrderCancelled`, commits on
/// `OrderConfirmed`; each effect commits with the message's inbox entry.
#[derive(Debug, Clone)]
pub struct InventoryHandler {
    store: Arc<dyn EventStore>,
    products: Repository<Product>,
    reservations: Repository<Reservation>,
    consumer: String,
    stripes: Arc<ProductStripes>,
}

/// In-process locks by product: handlers in one process that touch the same product take
/// turns instead of racing to a version conflict. Across processes the expected versions
/// still decide; the locks only spare wasted work.
#[derive(Debug)]
struct ProductStripes {
    locks: Vec<tokio::sync::Mutex<()>>,
}

impl ProductStripes {
    const STRIPES: usize = 64;

    fn new() -> Self {
        ProductStripes {
            locks: (0..Self::STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    /// Locks the stripes of `products`, always in the same order, so two handlers never
    /// wait on each other in a circle.
    async fn lock(&self, products: &[Uuid]) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = products
            .iter()
            .map(|id| (id.as_u128() % Self::STRIPES as u128) as usize)
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for stripe in stripes {
            guards.push(self.locks[stripe].lock().await);
        }
        guards
    }
}

/// What one message changes: the appends of one unit of work, and the product decisions in
/// it (folded and snapshotted once it committed).
#[derive(Debug)]
struct Plan {
    appends: Vec<StreamAppend>,
    products: Vec<Decision<Product>>,
}

/// Attempts before a contended reservation goes back to the bus for a later retry.
const MAX_ATTEMPTS: usize = 200;

impl InventoryHandler {
    /// Decides once on fresh state; `None` when there is nothing left to do.
    async fn decide(
        &self,
        message: &RecordedEvent,
        input: &InventoryInput,
    ) -> es_core::Result<Option<Plan>> {
        let metadata = Metadata::caused_by(message);
        let (order_id, reservation_command, product_command): (
            Uuid,
            ReservationCommand,
            fn(Uuid, u64) -> ProductCommand,
        ) = match input {
            InventoryInput::OrderPlaced {
                order_id,
                customer_id,
                items,
                total_amount,
            } => {
                return self
                    .decide_reservation(*order_id, *customer_id, items, *total_amount, &metadata)
                    .await
            }
            InventoryInput::OrderConfirmed { order_id } => (
                *order_id,
                ReservationCommand::Commit,
                |order_id, quantity| ProductCommand::Commit { order_id, quantity },
            ),
            InventoryInput::OrderCancelled { order_id }
            | InventoryInput::PaymentFailed { order_id } => (
                *order_id,
                ReservationCommand::Release,
                |order_id, quantity| ProductCommand::Release { order_id, quantity },
            ),
        };
        let reservation = self
            .reservations
            .decide(
                &order_id.to_string(),
                (order_id, reservation_command),
                &metadata,
            )
            .await?;
        if reservation.append.events.is_empty() {
            return Ok(None);
        }
        let mut appends = Vec::new();
        let mut products = Vec::new();
        for item in &reservation.state.items {
            let product = self
                .products
                .decide(
                    &item.product_id.to_string(),
                    product_command(order_id, item.quantity),
                    &metadata,
                )
                .await?;
            if let Err(error) = product.outcome {
                return Err(es_core::Error::InvalidInput(format!(
                    "cannot change the stock of order {order_id}: {error}"
                )));
            }
            appends.push(product.append.clone());
            products.push(product);
        }
        appends.insert(0, reservation.append);
        Ok(Some(Plan { appends, products }))
    }

    async fn decide_reservation(
        &self,
        order_id: Uuid,
        customer_id: Uuid,
        items: &[ReservedItem],
        total_amount: Decimal,
        metadata: &Metadata,
    ) -> es_core::Result<Option<Plan>> {
        let reservation = self.reservations.load(&order_id.to_string()).await?;
        if reservation.state.decided {
            return Ok(None);
        }
        let mut product_appends = Vec::new();
        let mut products = Vec::new();
        let mut failure = None;
        for item in items {
            let command = ProductCommand::Reserve {
                order_id,
                quantity: item.quantity,
            };
            let product = self
                .products
                .decide(&item.product_id.to_string(), command, metadata)
                .await?;
            // A refusal writes no stock, but its append still expects the version it was
            // decided on, so a refusal on stale state is a conflict and is decided again.
            product_appends.push(product.append.clone());
            if let Err(error) = &product.outcome {
                failure = Some(format!("{error} {}", item.product_id));
                break;
            }
            products.push(product);
        }
        let at = Utc::now();
        let decision = match failure {
            Some(reason) => {
                // Nothing is reserved: keep only the expectations.
                product_appends.iter_mut().for_each(|a| a.events.clear());
                products.clear();
                ReservationEvent::InventoryFailed {
                    order_id,
                    customer_id,
                    reason,
                    at,
                }
            }
            None => ReservationEvent::InventoryReserved {
                order_id,
                customer_id,
                items: items.to_vec(),
                total_amount,
                at,
            },
        };
        let reservation = self
            .reservations
            .decide(
                &order_id.to_string(),
                (order_id, ReservationCommand::Decide(decision)),
                metadata,
            )
            .await?;
        // Decided meanwhile (a cancellation's tombstone, say): this reload saw it, so reserve
        // nothing. The stock decisions above must not commit on their own.
        if reservation.append.events.is_empty() {
            return Ok(None);
        }
        let mut appends = vec![reservation.append];
        appends.extend(product_appends);
        Ok(Some(Plan { appends, products }))
    }
}

#[async_trait]
impl MessageHandler for InventoryHandler {
    async fn handle(&self, message: &RecordedEvent) -> Result<(), HandlerError> {
        let input = match message.decode::<InventoryInput>() {
            Ok(input) => input,
            Err(es_core::Error::UnknownEventType { .. }) => return Ok(()),
            Err(error) => return Err(HandlerError::reject(error)),
        };
        let inbox = InboxEntry::new(self.consumer.clone(), message.event_id);
        let touched = match &input {
            InventoryInput::OrderPlaced { items, .. } => {
                items.iter().map(|item| item.product_id).collect()
            }
            InventoryInput::OrderConfirmed { order_id }
            | InventoryInput::OrderCancelled { order_id }
            | InventoryInput::PaymentFailed { order_id } => self
                .reservations
                .load(&order_id.to_string())
                .await?
                .state
                .items
                .iter()
                .map(|item| item.product_id)
                .collect::<Vec<_>>(),
        };
        let _turn = self.stripes.lock(&touched).await;
        let mut backoff = es_core::Backoff::new(
            std::time::Duration::from_millis(5),
            std::time::Duration::from_millis(100),
        );
        for attempt in 0..MAX_ATTEMPTS {
            let (unit, products) = match self.decide(message, &input).await? {
                Some(plan) => (
                    UnitOfWork {
                        appends: plan.appends,
                        inbox: vec![inbox.clone()],
                        checkpoint: None,
                    },
                    plan.products,
                ),
                // Nothing to change; still remember the message as handled.
                None => (UnitOfWork::new().handled(inbox.clone()), Vec::new()),
            };
            match self.store.commit(unit).await {
                Ok(CommitOutcome::Committed(results)) => {
                    if let Some(first) = results.first() {
                        tracing::info!(stream = %first.stream_id, attempt, "inventory changed");
                    }
                    // Snapshot busy products, so loading one reads only a short tail.
                    for product in products {
                        self.products.committed(product).await;
                    }
                    return Ok(());
                }
                Ok(CommitOutcome::AlreadyHandled) => return Ok(()),
                Err(error) if error.is_conflict() => {
                    backoff.sleep().await;
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(HandlerError::retry(
            "stock stayed contended; retrying the message later",
        ))
    }

    /// The whole batch in one unit of work: every reservation and product stream it changes,
    /// each expecting the version it was decided on, with every message's inbox entry.
    async fn handle_batch(&self, messages: &[RecordedEvent]) -> Result<(), HandlerError> {
        let mut inputs = Vec::with_capacity(messages.len());
        for message in messages {
            match message.decode::<InventoryInput>() {
                Ok(input) => inputs.push((message, input)),
                Err(es_core::Error::UnknownEventType { .. }) => {}
                Err(error) => return Err(HandlerError::reject(error)),
            }
        }
        if inputs.is_empty() {
            return Ok(());
        }
        let mut backoff = es_core::Backoff::new(
            std::time::Duration::from_millis(5),
            std::time::Duration::from_millis(100),
        );
        for _ in 0..BATCH_ATTEMPTS {
            if self.try_batch(&inputs).await? {
                return Ok(());
            }
            backoff.sleep().await;
        }
        Err(HandlerError::retry(
            "stock stayed contended; handling the batch's messages one by one",
        ))
    }
}

/// One stream as a batch sees it: as loaded, and what the batch adds to it.
struct Slot<A: Aggregate> {
    stream: es_core::StreamId,
    loaded: A,
    version: u64,
    state: A,
    events: Vec<A::Event>,
    written: Vec<NewEvent>,
    /// Part of the commit: it changed, or a decision stands on its state (a refusal).
    checked: bool,
}

impl<A: Aggregate + Clone> Slot<A> {
    fn new(stream: es_core::StreamId, loaded: es_core::Loaded<A>) -> Self {
        Slot {
            stream,
            state: loaded.state.clone(),
            loaded: loaded.state,
            version: loaded.version,
            events: Vec::new(),
            written: Vec::new(),
            checked: false,
        }
    }

    fn push(&mut self, events: Vec<A::Event>, metadata: &Metadata) -> es_core::Result<()> {
        for event in events {
            self.written
                .push(NewEvent::from_domain(&event, metadata.clone())?);
            self.state.apply(&event);
            self.events.push(event);
        }
        self.checked = true;
        Ok(())
    }

    /// The append: the batch's events, expecting the version the stream was loaded at.
    fn append(&self) -> StreamAppend {
        StreamAppend::new(
            self.stream.clone(),
            ExpectedVersion::Exact(self.version),
            self.written.clone(),
        )
    }

    /// The slot as a committed [`Decision`], to fold into the repository's cache.
    fn decision(self) -> Decision<A> {
        Decision {
            append: self.append(),
            outcome: Ok(self.events),
            state: self.loaded,
            version: self.version,
        }
    }
}

/// Attempts of a contended batch before its messages go one at a time.
const BATCH_ATTEMPTS: usize = 20;

impl InventoryHandler {
    /// Decides the batch in order on the loaded state (a later message sees what an earlier
    /// one decided), in memory; the caller commits it.
    fn decide_batch(
        inputs: &[(&RecordedEvent, InventoryInput)],
        reservations: &mut [Slot<Reservation>],
        order_slot: &std::collections::HashMap<Uuid, usize>,
        products: &mut [Slot<Product>],
        product_slot: &std::collections::HashMap<Uuid, usize>,
    ) -> es_core::Result<()> {
        for (message, input) in inputs {
            let metadata = Metadata::caused_by(message);
            match input {
                InventoryInput::OrderPlaced {
                    order_id,
                    customer_id,
                    items,
                    total_amount,
                } => {
                    let reservation = &mut reservations[order_slot[order_id]];
                    if reservation.state.decided {
                        continue;
                    }
                    let mut failure = None;
                    let mut reserved = Vec::with_capacity(items.len());
                    for item in items {
                        let product = &mut products[product_slot[&item.product_id]];
                        // A refusal stands on this version too: it is checked at the commit.
                        product.checked = true;
                        let command = ProductCommand::Reserve {
                            order_id: *order_id,
                            quantity: item.quantity,
                        };
                        match product.state.handle(command) {
                            Ok(events) => reserved.push((product_slot[&item.product_id], events)),
                            Err(error) => {
                                failure = Some(format!("{error} {}", item.product_id));
                                break;
                            }
                        }
                    }
                    let at = Utc::now();
                    let decision = match failure {
                        Some(reason) => ReservationEvent::InventoryFailed {
                            order_id: *order_id,
                            customer_id: *customer_id,
                            reason,
                            at,
                        },
                        None => {
                            for (slot, events) in reserved {
                                products[slot].push(events, &metadata)?;
                            }
                            ReservationEvent::InventoryReserved {
                                order_id: *order_id,
                                customer_id: *customer_id,
                                items: items.clone(),
                                total_amount: *total_amount,
                                at,
                            }
                        }
                    };
                    let events = reservation
                        .state
                        .handle((*order_id, ReservationCommand::Decide(decision)))
                        .unwrap_or_default();
                    reservation.push(events, &metadata)?;
                }
                InventoryInput::OrderConfirmed { order_id }
                | InventoryInput::OrderCancelled { order_id }
                | InventoryInput::PaymentFailed { order_id } => {
                    let confirmed = matches!(input, InventoryInput::OrderConfirmed { .. });
                    let reservation = &mut reservations[order_slot[order_id]];
                    let command = if confirmed {
                        ReservationCommand::Commit
                    } else {
                        ReservationCommand::Release
                    };
                    let items = reservation.state.items.clone();
                    let events = reservation
                        .state
                        .handle((*order_id, command))
                        .unwrap_or_default();
                    if events.is_empty() {
                        continue;
                    }
                    reservation.push(events, &metadata)?;
                    for item in items {
                        let product = &mut products[product_slot[&item.product_id]];
                        let command = if confirmed {
                            ProductCommand::Commit {
                                order_id: *order_id,
                                quantity: item.quantity,
                            }
                        } else {
                            ProductCommand::Release {
                                order_id: *order_id,
                                quantity: item.quantity,
                            }
                        };
                        let events = product.state.handle(command).map_err(|error| {
                            es_core::Error::InvalidInput(format!(
                                "cannot change the stock of order {order_id}: {error}"
                            ))
                        })?;
                        product.push(events, &metadata)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// One attempt at a batch: load what it touches, decide, commit. `Ok(false)` on a
    /// version conflict (decide again).
    async fn try_batch(
        &self,
        inputs: &[(&RecordedEvent, InventoryInput)],
    ) -> Result<bool, HandlerError> {
        let mut orders: Vec<Uuid> = Vec::new();
        for (_, input) in inputs {
            let order_id = match input {
                InventoryInput::OrderPlaced { order_id, .. }
                | InventoryInput::OrderConfirmed { order_id }
                | InventoryInput::OrderCancelled { order_id }
                | InventoryInput::PaymentFailed { order_id } => *order_id,
            };
            if !orders.contains(&order_id) {
                orders.push(order_id);
            }
        }
        let order_ids: Vec<String> = orders.iter().map(Uuid::to_string).collect();
        let loaded = self.reservations.load_many(&order_ids).await?;
        let mut touched: Vec<Uuid> = Vec::new();
        let mut touch = |id: Uuid| {
            if !touched.contains(&id) {
                touched.push(id);
            }
        };
        for (_, input) in inputs {
            if let InventoryInput::OrderPlaced { items, .. } = input {
                items.iter().for_each(|item| touch(item.product_id));
            }
        }
        for reservation in &loaded {
            reservation
                .state
                .items
                .iter()
                .for_each(|item| touch(item.product_id));
        }
        let mut reservations = Vec::with_capacity(orders.len());
        for (id, loaded) in order_ids.iter().zip(loaded) {
            reservations.push(Slot::new(Repository::<Reservation>::stream_id(id)?, loaded));
        }
        let order_slot = orders.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        // Products are decided under their stripes' locks, so that this process's batches
        // take turns on a product instead of conflicting on it.
        let _turn = self.stripes.lock(&touched).await;
        let product_ids: Vec<String> = touched.iter().map(Uuid::to_string).collect();
        let loaded = self.products.load_many(&product_ids).await?;
        let mut products = Vec::with_capacity(touched.len());
        for (id, loaded) in product_ids.iter().zip(loaded) {
            products.push(Slot::new(Repository::<Product>::stream_id(id)?, loaded));
        }
        let product_slot = touched.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        Self::decide_batch(
            inputs,
            &mut reservations,
            &order_slot,
            &mut products,
            &product_slot,
        )
        .map_err(HandlerError::from)?;
        let mut unit = UnitOfWork::new();
        for slot in reservations.iter().filter(|slot| slot.checked) {
            unit = unit.append(slot.append());
        }
        for slot in products.iter().filter(|slot| slot.checked) {
            unit = unit.append(slot.append());
        }
        for (message, _) in inputs {
            unit = unit.handled(InboxEntry::new(self.consumer.clone(), message.event_id));
        }
        match self.store.commit(unit).await {
            Ok(CommitOutcome::Committed(_)) => {
                tracing::info!(messages = inputs.len(), "inventory changed");
                for slot in products.into_iter().filter(|slot| !slot.events.is_empty()) {
                    self.products.committed(slot.decision()).await;
                }
                Ok(true)
            }
            // A message of the batch was handled before (a redelivery): one at a time.
            Ok(CommitOutcome::AlreadyHandled) => Err(HandlerError::retry(
                "a message of the batch was handled before; handling them one by one",
            )),
            Err(error) if error.is_conflict() => Ok(false),
            Err(error) => Err(error.into()),
        }
    }
}

// ---- read model ------------------------------------------------------------------------

/// Every product's stock, folded from the product streams.
#[derive(Debug, Default)]
pub struct ProductCatalog {
    products: Mutex<BTreeMap<Uuid, (Product, u64)>>,
}

#[async_trait]
impl Projection for ProductCatalog {
    fn name(&self) -> &str {
        "product-catalog"
    }

    fn filter(&self) -> StreamFilter {
        StreamFilter::category(Product::TYPE)
    }

    async fn handle(&self, recorded: &RecordedEvent) -> Result<(), BoxError> {
        let event: ProductEvent = recorded.decode()?;
        let product_id = Uuid::parse_str(recorded.stream_id.entity_id())?;
        let mut products = self.products.lock().unwrap_or_else(|e| e.into_inner());
        let entry = products.entry(product_id).or_default();
        if recorded.stream_version > entry.1 {
            entry.0.apply(&event);
            entry.1 = recorded.stream_version;
        }
        Ok(())
    }
}

/// The product catalog's name: its checkpoint, its tables' schema, and what
/// `order-processing projections rebuild` takes.
pub const PRODUCT_CATALOG: &str = "product-catalog";

/// The product catalog on PostgreSQL: the table `product_catalog`, one row per product with
/// its stock and the version of its stream that row reflects, kept by a
/// [`PgReadModelRunner`](es_postgres::PgReadModelRunner). Each event is one `UPDATE` guarded by
/// that version, so an event read twice (a retried batch) changes nothing.
#[derive(Debug, Default)]
pub struct PgProductCatalog {
    decoder: TypedDecoder,
}

#[async_trait]
impl PgProjection for PgProductCatalog {
    fn name(&self) -> &str {
        PRODUCT_CATALOG
    }

    fn filter(&self) -> StreamFilter {
        StreamFilter::category(Product::TYPE)
    }

    fn tables(&self) -> Vec<String> {
        vec!["product_catalog".into()]
    }

    async fn create(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query(
            "CREATE TABLE product_catalog (\
               product_id uuid PRIMARY KEY, \
               name text NOT NULL, \
               available bigint NOT NULL, \
               reserved bigint NOT NULL, \
               version bigint NOT NULL)",
        )
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn apply(&self, conn: &mut PgConnection, event: &RecordedEvent) -> Result<(), BoxError> {
        let Some(envelope) = self
            .decoder
            .decode::<ProductEvent>(PRODUCT_CATALOG, event)?
        else {
            return Ok(());
        };
        let product_id = Uuid::parse_str(event.stream_id.entity_id())?;
        let version = i64::try_from(event.stream_version)?;
        // The same arithmetic as `Product::apply`, saturating at zero.
        let (available, reserved) = match envelope.event {
            ProductEvent::ProductStocked {
                name,
                available_quantity,
                ..
            } => {
                sqlx::query(
                    "INSERT INTO product_catalog (product_id, name, available, reserved, version) \
                     VALUES ($1, $2, $3, 0, $4) \
                     ON CONFLICT (product_id) DO UPDATE \
                       SET name = EXCLUDED.name, available = EXCLUDED.available, \
                           version = EXCLUDED.version \
                     WHERE product_catalog.version < EXCLUDED.version",
                )
                .bind(product_id)
                .bind(name)
                .bind(i64::try_from(available_quantity)?)
                .bind(version)
                .execute(&mut *conn)
                .await?;
                return Ok(());
            }
            ProductEvent::StockReserved { quantity, .. } => {
                let q = i64::try_from(quantity)?;
                (-q, q)
            }
            ProductEvent::StockReleased { quantity, .. } => {
                let q = i64::try_from(quantity)?;
                (q, -q)
            }
            ProductEvent::StockCommitted { quantity, .. } => (0, -i64::try_from(quantity)?),
        };
        // A product never stocked has no row, and none is shown (as in memory).
        sqlx::query(
            "UPDATE product_catalog SET available = greatest(available + $2, 0), \
               reserved = greatest(reserved + $3, 0), version = $4 \
             WHERE product_id = $1 AND version < $4",
        )
        .bind(product_id)
        .bind(available)
        .bind(reserved)
        .bind(version)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

// ---- HTTP ------------------------------------------------------------------------------

/// Where the product list is read.
#[derive(Clone)]
enum Catalog {
    /// Folded in the process (embedded backends).
    Memory(Arc<ProductCatalog>),
    /// The table of [`PgProductCatalog`] (a view of its active generation).
    Postgres(PgEventStore),
}

impl Catalog {
    /// Every product, by id.
    async fn list(&self) -> es_core::Result<Vec<ProductView>> {
        match self {
            Catalog::Memory(catalog) => {
                let products = catalog.products.lock().unwrap_or_else(|e| e.into_inner());
                Ok(products.values().filter_map(|(p, _)| p.view()).collect())
            }
            Catalog::Postgres(store) => {
                let rows: Vec<(Uuid, String, i64, i64)> = sqlx::query_as(
                    "SELECT product_id, name, available, reserved FROM product_catalog \
                     ORDER BY product_id",
                )
                .fetch_all(store.pool())
                .await
                .map_err(|e| es_core::Error::backend("product catalog", e))?;
                let count = |n: i64| u64::try_from(n).unwrap_or_default();
                Ok(rows
                    .into_iter()
                    .map(|(product_id, name, available, reserved)| ProductView {
                        product_id,
                        name,
                        available_quantity: count(available),
                        reserved_quantity: count(reserved),
                    })
                    .collect())
            }
        }
    }
}

#[derive(Clone)]
struct InventoryState {
    products: Repository<Product>,
    reservations: Repository<Reservation>,
    catalog: Catalog,
}

/// Every product.
#[utoipa::path(get, path = "/api/inventory/products", tag = "inventory",
    responses((status = 200, body = [ProductView])))]
async fn list_products(
    State(state): State<InventoryState>,
) -> Result<Json<Vec<ProductView>>, AppError> {
    Ok(Json(state.catalog.list().await?))
}

/// One product, from its stream.
#[utoipa::path(get, path = "/api/inventory/products/{productId}", tag = "inventory",
    params(("productId" = Uuid, Path, description = "The product")),
    responses((status = 200, body = ProductView), (status = 400), (status = 404)))]
async fn get_product(
    State(state): State<InventoryState>,
    ApiPath(product_id): ApiPath<Uuid>,
) -> Result<Json<ProductView>, AppError> {
    state
        .products
        .find(&product_id.to_string())
        .await?
        .and_then(|loaded| loaded.state.view())
        .map(Json)
        .ok_or_else(|| AppError::not_found(format!("no product {product_id}")))
}

// The bounds `PUT /api/inventory/products/{productId}` enforces. The schema attributes of
// `StockRequest` repeat them as literals (utoipa takes no constant there);
// `tests/openapi_bounds.rs` proves the two agree.

/// Most characters (Unicode scalar values) of a product name; it is never blank.
pub const MAX_PRODUCT_NAME_CHARS: usize = 200;
/// Least stock a product can be given.
pub const MIN_AVAILABLE_QUANTITY: u64 = 0;
/// Most stock a product can be given.
pub const MAX_AVAILABLE_QUANTITY: u64 = 1_000_000_000;

/// The body of `PUT /api/inventory/products/{productId}` (documentation only: the handler
/// reads the JSON value field by field, so it can name every bad field).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StockRequest {
    /// 1 to 200 characters, not blank.
    // Not blank: some character that is not whitespace. U+0085 is named because ECMA-262's
    // `\s` (which JSON Schema patterns use) lacks it while `str::trim` strips it.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "[^\\s\\u0085]",
        example = "Laptop"
    )]
    pub name: String,
    /// 0 to 1,000,000,000.
    #[schema(minimum = 0, maximum = 1000000000, example = 100)]
    pub available_quantity: u64,
}

/// Creates a product or sets its available stock.
#[utoipa::path(put, path = "/api/inventory/products/{productId}", tag = "inventory",
    params(("productId" = Uuid, Path, description = "The product")),
    request_body = StockRequest,
    responses((status = 200, body = ProductView), (status = 400)))]
async fn put_product(
    State(state): State<InventoryState>,
    ApiPath(product_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<ProductView>, AppError> {
    if !body.is_object() {
        return Err(AppError::bad_request("the body must be a JSON object"));
    }
    let mut check = Validator::default();
    let name = check.text(&body, "name", "name", MAX_PRODUCT_NAME_CHARS);
    let available = check.integer(
        &body,
        "availableQuantity",
        "availableQuantity",
        MIN_AVAILABLE_QUANTITY,
        MAX_AVAILABLE_QUANTITY,
    );
    check.finish()?;
    let (Some(name), Some(available_quantity)) = (name, available) else {
        return Err(AppError::bad_request(
            "name and availableQuantity are required",
        ));
    };
    let executed = state
        .products
        .execute(
            &product_id.to_string(),
            ProductCommand::Stock {
                product_id,
                name,
                available_quantity,
            },
            Metadata::new_correlation(),
        )
        .await
        .map_err(|error| match error {
            CommandError::Store(error) => AppError::from(error),
            other => AppError::internal(&other),
        })?;
    executed
        .state
        .view()
        .map(Json)
        .ok_or_else(|| AppError::not_found(format!("no product {product_id}")))
}

/// An order's reservation.
#[utoipa::path(get, path = "/api/inventory/reservations/{orderId}", tag = "inventory",
    params(("orderId" = Uuid, Path, description = "The order")),
    responses((status = 200, body = ReservationView), (status = 400), (status = 404)))]
async fn get_reservation(
    State(state): State<InventoryState>,
    ApiPath(order_id): ApiPath<Uuid>,
) -> Result<Json<ReservationView>, AppError> {
    let loaded = state.reservations.load(&order_id.to_string()).await?;
    if loaded.state.status == ReservationStatus::None {
        return Err(AppError::not_found(format!(
            "no reservation for order {order_id}"
        )));
    }
    Ok(Json(ReservationView {
        order_id,
        status: loaded.state.status,
        items: loaded.state.items,
    }))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Inventory service",
        description = "Stock per product and each order's reservation."
    ),
    paths(list_products, get_product, put_product, get_reservation),
    components(schemas(
        ProductView,
        StockRequest,
        ReservationView,
        ReservedItem,
        ReservationStatus
    ))
)]
struct InventoryApi;

/// The service's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    InventoryApi::openapi()
}

/// Seeds the four products, once: a marker stream and the products commit together, each
/// expecting no stream, so of racing first starts exactly one seeds.
async fn seed(store: &Arc<dyn EventStore>) -> es_core::Result<()> {
    let metadata = Metadata::new_correlation();
    let mut unit = UnitOfWork::new().append(StreamAppend::new(
        es_core::StreamId::new("inventoryseed-v1")?,
        ExpectedVersion::NoStream,
        vec![NewEvent::raw("InventorySeeded", "{}").with_metadata(metadata.clone())],
    ));
    for (id, name, available_quantity) in SEED {
        let product_id =
            Uuid::parse_str(id).map_err(|e| es_core::Error::InvalidInput(e.to_string()))?;
        let event = ProductEvent::ProductStocked {
            product_id,
            name: name.to_owned(),
            available_quantity,
            at: Utc::now(),
        };
        unit = unit.append(StreamAppend::new(
            Repository::<Product>::stream_id(id)?,
            ExpectedVersion::NoStream,
            vec![NewEvent::from_domain(&event, metadata.clone())?],
        ));
    }
    match store.commit(unit).await {
        Ok(_) => {
            tracing::info!("inventory seeded");
            Ok(())
        }
        Err(error) if error.is_conflict() => Ok(()),
        Err(error) => Err(error),
    }
}

/// How many products' folded states the inventory keeps in memory.
const PRODUCT_CACHE: usize = 4096;

/// Starts the inventory service: seeding, its consumer, relay and catalog.
pub(crate) async fn start(
    backends: &Backends,
    _settings: &Settings,
    background: &mut Background,
) -> es_core::Result<Router> {
    seed(&backends.store).await?;
    // Every order adds to its products' streams: keep each product's state in memory and read
    // only what other processes appended since (the append still checks the version), with a
    // snapshot and a short tail on a miss.
    let products = Repository::<Product>::new(backends.store.clone())
        .with_snapshots(backends.snapshots.clone(), 64)
        .with_cache(PRODUCT_CACHE)
        .with_max_retries(64);
    let reservations = Repository::<Reservation>::new(backends.store.clone());
    let memory = Arc::new(ProductCatalog::default());
    background
        .read_model(
            backends,
            Arc::new(PgProductCatalog::default()),
            memory.clone(),
        )
        .await?;
    let catalog = match &backends.listings {
        Listings::Postgres(store) => Catalog::Postgres(store.clone()),
        Listings::Memory(_) => Catalog::Memory(memory),
    };
    let consumer = backends.consumer("inventory");
    let handler = Arc::new(InventoryHandler {
        store: backends.store.clone(),
        products: products.clone(),
        reservations: reservations.clone(),
        consumer: consumer.clone(),
        stripes: Arc::new(ProductStripes::new()),
    });
    background
        .consume_batched(
            &backends.bus,
            consumer,
            crate::events::bindings(ServiceKind::Inventory),
            handler,
            crate::background::CONSUMER_BATCH,
        )
        .await?;
    background.relay(backends, Reservation::TYPE);
    let state = InventoryState {
        products,
        reservations,
        catalog,
    };
    let api = Router::new()
        .route("/api/inventory/products", get(list_products))
        .route(
            "/api/inventory/products/{product_id}",
            get(get_product).put(put_product),
        )
        .route(
            "/api/inventory/reservations/{order_id}",
            get(get_reservation),
        )
        .with_state(state);
    Ok(finish_router(api, openapi(), backends.health.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::testing::message;
    use crate::order::{OrderEvent, OrderItem};
    use es_core::memory::MemoryEventStore;

    const LAPTOP: &str = "11111111-1111-1111-1111-111111111111";

    fn laptop() -> Uuid {
        Uuid::parse_str(LAPTOP).unwrap()
    }

    /// An inventory handler (one per process) on `store`, seeded.
    async fn handler(store: &Arc<dyn EventStore>) -> InventoryHandler {
        seed(store).await.unwrap();
        InventoryHandler {
            store: store.clone(),
            products: Repository::new(store.clone()),
            reservations: Repository::new(store.clone()),
            consumer: "inventory".into(),
            stripes: Arc::new(ProductStripes::new()),
        }
    }

    fn placed(order_id: Uuid, quantity: u32) -> RecordedEvent {
        let event = OrderEvent::OrderPlaced {
            order_id,
            customer_id: Uuid::nil(),
            items: vec![OrderItem {
                product_id: laptop(),
                product_name: "Laptop".into(),
                quantity,
                unit_price: Decimal::ONE,
            }],
            total_amount: Decimal::from(quantity),
            placed_at: Utc::now(),
        };
        message(&format!("order-{order_id}"), &event)
    }

    fn cancelled(order_id: Uuid) -> RecordedEvent {
        let event = OrderEvent::OrderCancelled {
            order_id,
            customer_id: Uuid::nil(),
            total_amount: Decimal::ONE,
            reason: "timed out".into(),
            at: Utc::now(),
        };
        message(&format!("order-{order_id}"), &event)
    }

    async fn stock(handler: &InventoryHandler) -> (u64, u64) {
        let product = handler.products.load(LAPTOP).await.unwrap().state;
        (product.available, product.reserved)
    }

    #[tokio::test]
    async fn a_cancellation_that_overtakes_the_order_leaves_its_stock_untouched() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
        let inventory = handler(&store).await;
        let order_id = Uuid::now_v7();

        inventory.handle(&cancelled(order_id)).await.unwrap();
        inventory.handle(&placed(order_id, 5)).await.unwrap();

        assert_eq!(stock(&inventory).await, (100, 0), "nothing may stay held");
        let reservation = inventory
            .reservations
            .load(&order_id.to_string())
            .await
            .unwrap()
            .state;
        assert_eq!(reservation.status, ReservationStatus::Released);
        assert!(reservation.items.is_empty(), "nothing was ever reserved");
        // Nothing went on the wire for the refused reservation.
        let events = store
            .read_stream_to_end(
                &Repository::<Reservation>::stream_id(&order_id.to_string()).unwrap(),
                0,
            )
            .await
            .unwrap();
        let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, ["ReservationCancelled"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancellation_racing_the_reservation_never_leaves_stock_held() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
        cancellations_race_reservations(store).await;
    }

    /// The same race on PostgreSQL, where the expected versions are the store's to check
    /// (as `es-test-services` finds it; a schema of its own, dropped after).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_postgres_a_cancellation_racing_the_reservation_never_leaves_stock_held() {
        crate::backends::testing::on_postgres(|backends| {
            cancellations_race_reservations(backends.store.clone())
        })
        .await;
    }

    fn confirmed(order_id: Uuid) -> RecordedEvent {
        let event = OrderEvent::OrderConfirmed {
            order_id,
            customer_id: Uuid::nil(),
            total_amount: Decimal::ONE,
            at: Utc::now(),
        };
        message(&format!("order-{order_id}"), &event)
    }

    #[tokio::test]
    async fn a_batch_on_one_product_reserves_what_there_is_in_order_and_never_oversells() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
        let inventory = handler(&store).await;
        let orders: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
        // 8 × 30 of 100 laptops: the first three fit; a cancellation overtakes the fourth
        // order; the first order is confirmed in the same batch.
        let mut batch: Vec<RecordedEvent> = Vec::new();
        batch.push(cancelled(orders[3]));
        batch.extend(orders.iter().map(|&id| placed(id, 30)));
        batch.push(confirmed(orders[0]));
        let head = store.head().await.unwrap();
        inventory.handle_batch(&batch).await.unwrap();
        let written = store
            .read_all(&StreamFilter::All, head, 1000)
            .await
            .unwrap();
        assert!(
            written
                .iter()
                .all(|e| e.position.commit == written[0].position.commit),
            "one commit for the whole batch"
        );
        assert_eq!(
            stock(&inventory).await,
            (10, 60),
            "30 sold, 60 held, never below zero"
        );
        let mut statuses = Vec::new();
        for id in &orders {
            let reservation = inventory
                .reservations
                .load(&id.to_string())
                .await
                .unwrap()
                .state;
            statuses.push(reservation.status);
        }
        use ReservationStatus::*;
        assert_eq!(
            statuses,
            [Committed, Reserved, Reserved, Released, None, None, None, None],
            "in the batch's order: the overtaken order reserves nothing, the rest fail"
        );
        // A redelivery of the whole batch changes nothing: its messages are handled one by one
        // and each is skipped.
        inventory.handle(&batch[1]).await.unwrap();
        assert!(
            inventory.handle_batch(&batch).await.is_err(),
            "handled before: one by one"
        );
        for message in &batch {
            inventory.handle(message).await.unwrap();
        }
        assert_eq!(stock(&inventory).await, (10, 60));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_racing_single_messages_keep_the_stock_whole() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
        batches_race_single_messages(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_postgres_batches_racing_single_messages_keep_the_stock_whole() {
        crate::backends::testing::on_postgres(|backends| {
            batches_race_single_messages(backends.store.clone())
        })
        .await;
    }

    /// The same product events give the same list from the PostgreSQL table as from the
    /// in-memory fold, with two instances' runners building the table at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_catalog_table_lists_as_the_memory_model_with_two_instances_running() {
        crate::backends::testing::on_postgres(|backends| async move {
            let Listings::Postgres(pg) = backends.listings.clone() else {
                panic!("on PostgreSQL");
            };
            let store = backends.store.clone();
            seed(&store).await.unwrap();
            let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
            let mut moves = 0;
            for (i, id) in ids.iter().enumerate() {
                let stream = Repository::<Product>::stream_id(&id.to_string()).unwrap();
                let mut events = vec![ProductEvent::ProductStocked {
                    product_id: *id,
                    name: format!("Thing {i}"),
                    available_quantity: 40,
                    at: Utc::now(),
                }];
                for k in 0..30u64 {
                    let order_id = Uuid::now_v7();
                    let quantity = k % 4 + 1;
                    events.push(ProductEvent::StockReserved { order_id, quantity });
                    events.push(match k % 3 {
                        0 => ProductEvent::StockCommitted { order_id, quantity },
                        1 => ProductEvent::StockReleased { order_id, quantity },
                        // Restocked while held: the stock is set, the held part stays held.
                        _ => ProductEvent::ProductStocked {
                            product_id: *id,
                            name: format!("Thing {i} v{k}"),
                            available_quantity: 40 + k,
                            at: Utc::now(),
                        },
                    });
                }
                moves += events.len();
                let events = events
                    .iter()
                    .map(|e| NewEvent::from_domain(e, Metadata::default()).unwrap())
                    .collect();
                store
                    .append(&stream, ExpectedVersion::NoStream, events)
                    .await
                    .unwrap();
            }
            assert!(moves > 100);
            let memory = Arc::new(ProductCatalog::default());
            es_core::ProjectionRunner::new(store.clone(), Arc::new(MemoryEventStore::new()))
                .catch_up(&*memory)
                .await
                .unwrap();
            let memory = Catalog::Memory(memory).list().await.unwrap();
            assert_eq!(memory.len(), 7, "four seeded, three of the test");
            let tables = Catalog::Postgres(pg.clone());
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let runs: Vec<_> = (0..2)
                    .map(|_| {
                        let runner =
                            es_postgres::PgReadModelRunner::new(pg.clone()).with_batch_size(9);
                        tokio::spawn(
                            async move { runner.catch_up(&PgProductCatalog::default()).await },
                        )
                    })
                    .collect();
                for run in runs {
                    run.await.unwrap().unwrap();
                }
                // Step until the horizon let every event through (a test beside may hold it).
                if tables.list().await.unwrap() == memory {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the table lists {:?}, the memory model {memory:?}",
                    tables.list().await.unwrap()
                );
            }
        })
        .await;
    }

    /// Two processes: one takes batches, the other single messages, over the same orders.
    async fn batches_race_single_messages(store: Arc<dyn EventStore>) {
        let batched = Arc::new(handler(&store).await);
        let single = Arc::new(handler(&store).await);
        let orders: Vec<Uuid> = (0..120).map(|_| Uuid::now_v7()).collect();
        let mut tasks = Vec::new();
        for chunk in orders.chunks(8) {
            let (a, b) = (batched.clone(), single.clone());
            let places: Vec<RecordedEvent> = chunk.iter().map(|&id| placed(id, 1)).collect();
            let cancels: Vec<RecordedEvent> = chunk.iter().map(|&id| cancelled(id)).collect();
            tasks.push(tokio::spawn(async move {
                // A failed batch is handled one by one, as the bus would.
                if a.handle_batch(&places).await.is_err() {
                    for message in &places {
                        a.handle(message).await?;
                    }
                }
                Ok::<_, HandlerError>(())
            }));
            tasks.push(tokio::spawn(async move {
                for message in &cancels {
                    b.handle(message).await?;
                }
                Ok(())
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(
            stock(&batched).await,
            (100, 0),
            "every cancelled order's stock is back"
        );
    }

    async fn cancellations_race_reservations(store: Arc<dyn EventStore>) {
        // Two processes' handlers: the stripes of one do not order the other's work.
        let first = Arc::new(handler(&store).await);
        let second = Arc::new(handler(&store).await);
        // A few rounds, as each pair races only once.
        for _round in 0..3 {
            let orders: Vec<Uuid> = (0..200).map(|_| Uuid::now_v7()).collect();
            let mut tasks = Vec::new();
            for (i, &order_id) in orders.iter().enumerate() {
                let (a, b) = if i % 2 == 0 {
                    (first.clone(), second.clone())
                } else {
                    (second.clone(), first.clone())
                };
                tasks.push(tokio::spawn(async move {
                    let place = placed(order_id, 2);
                    a.handle(&place).await
                }));
                tasks.push(tokio::spawn(async move {
                    let cancel = cancelled(order_id);
                    b.handle(&cancel).await
                }));
            }
            for task in tasks {
                task.await.unwrap().unwrap();
            }
            assert_eq!(
                stock(&first).await,
                (100, 0),
                "every cancelled order's stock is back"
            );
            for order_id in orders {
                let reservation = first
                    .reservations
                    .load(&order_id.to_string())
                    .await
                    .unwrap()
                    .state;
                // Released, or refused for too little stock while others held it: never held.
                assert!(
                    matches!(
                        reservation.status,
                        ReservationStatus::Released | ReservationStatus::None
                    ),
                    "order {order_id}: {:?}",
                    reservation.status
                );
            }
        }
    }
}
