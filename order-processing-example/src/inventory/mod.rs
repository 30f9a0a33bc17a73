//! The inventory service (5002): stock per product, and each order's reservation.
//!
//! Never oversell: each product is its own stream, and a reservation is one atomic commit of
//! the order's reservation stream and every product stream it touches, each expecting the
//! version the decision was made on. If any product moved meanwhile (another order, another
//! process) nothing is written and the decision is made again on fresh state. So an order
//! reserves all its lines or none, and stock never goes below zero, however many race.
//!
//! By idea, one file each: `product.rs` and `reservation.rs`, the two aggregates;
//! `handler.rs`, the consumer that reserves, releases and commits, a message or a batch of them
//! as one `MultiCommand` over the reservations and products they touch, with `stripes.rs`, the
//! locks that let one process's handlers take turns on a product; `catalog.rs`, the product list's read model;
//! `http.rs`, the routes and their handlers; `seed.rs`, the products a new inventory starts
//! with. This file starts the service from them.

mod catalog;
mod handler;
mod http;
mod product;
mod reservation;
mod seed;
mod stripes;
#[cfg(test)]
mod testing;

use std::sync::Arc;

use axum::Router;
use es_core::{Aggregate, Repository};

pub use catalog::{PgProductCatalog, ProductCatalog, PRODUCT_CATALOG};
pub use handler::InventoryHandler;
pub use http::{
    openapi, StockRequest, MAX_AVAILABLE_QUANTITY, MAX_PRODUCT_NAME_CHARS, MIN_AVAILABLE_QUANTITY,
};
pub use product::{Product, ProductCommand, ProductError, ProductEvent, ProductView};
pub use reservation::{
    Reservation, ReservationCommand, ReservationEvent, ReservationStatus, ReservationView,
    ReservedItem,
};
pub use seed::SEED;

use crate::backends::Backends;
use crate::background::Background;
use crate::config::Settings;
use crate::http::finish_router;
use crate::listing::Listings;
use crate::service_kind::ServiceKind;
use catalog::Catalog;
use http::InventoryState;
use seed::seed;

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
    let consumer = backends.consumer(ServiceKind::Inventory);
    let handler = Arc::new(InventoryHandler::new(
        backends.store.clone(),
        products.clone(),
        reservations.clone(),
        consumer.clone(),
    ));
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
    Ok(finish_router(
        http::routes(state),
        openapi(),
        backends.health.clone(),
    ))
}
