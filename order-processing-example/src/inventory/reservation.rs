//! The reservation aggregate: an order's reservation, decided once (held lines, or why not),
//! then released or committed.

use chrono::{DateTime, Utc};
use es_core::{Aggregate, DomainEvent};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

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
    pub(super) decided: bool,
    pub(super) status: ReservationStatus,
    pub(super) customer_id: Uuid,
    pub(super) items: Vec<ReservedItem>,
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
