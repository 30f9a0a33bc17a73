//! The product aggregate: one product's stock, what can be asked of it, and what happens to it.

use chrono::{DateTime, Utc};
use es_core::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

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
    pub(super) product_id: Option<Uuid>,
    pub(super) name: String,
    pub(super) available: u64,
    pub(super) reserved: u64,
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
    /// The API's view of this product; `None` for one never stocked.
    pub(super) fn view(&self) -> Option<ProductView> {
        Some(ProductView {
            product_id: self.product_id?,
            name: self.name.clone(),
            available_quantity: self.available,
            reserved_quantity: self.reserved,
        })
    }
}
