//! The order aggregate: what can be asked of an order, what happens to it, and how it decides
//! and folds. Pure and synchronous; the saga and the HTTP handlers carry out its decisions.

use chrono::{DateTime, Utc};
use es_core::{Aggregate, DomainEvent};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

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
    pub(super) order_id: Uuid,
    pub(super) customer_id: Uuid,
    pub(super) items: Vec<OrderItem>,
    pub(super) total_amount: Decimal,
    pub(super) status: OrderStatus,
    pub(super) cancellation_reason: Option<String>,
    pub(super) created_at: Option<DateTime<Utc>>,
    pub(super) updated_at: Option<DateTime<Utc>>,
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The payment and the reservation travel apart from the inventory service, so under load
    /// the order can hear of the payment first: it is paid and confirmed from Pending, and the
    /// reservation that arrives late records nothing.
    #[test]
    fn a_payment_that_overtakes_the_reservation_confirms_and_the_late_reservation_records_nothing()
    {
        let mut order = placed();
        let confirm = OrderCommand::ConfirmPayment {
            payment_id: Some(Uuid::nil()),
            at: Utc::now(),
        };
        let events = order.handle(confirm).unwrap();
        assert!(
            matches!(
                events.as_slice(),
                [
                    OrderEvent::OrderPaymentProcessed { .. },
                    OrderEvent::OrderConfirmed { .. }
                ]
            ),
            "{events:?}"
        );
        for event in &events {
            order.apply(event);
        }
        assert_eq!(order.status, OrderStatus::Confirmed);
        let reserved = OrderCommand::MarkInventoryReserved { at: Utc::now() };
        assert_eq!(order.handle(reserved), Ok(vec![]));
    }

    #[test]
    fn commands_on_an_unplaced_order_are_refused() {
        let command = OrderCommand::MarkInventoryReserved { at: Utc::now() };
        assert_eq!(Order::default().handle(command), Err(OrderError::NotPlaced));
    }
}
