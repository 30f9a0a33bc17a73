//! The order service (5001): places orders, and carries each through the order saga.
//!
//! By idea, one file each: `domain.rs`, the order aggregate; `saga.rs`, the order saga and
//! the dispatcher that carries out its commands; `read_model.rs`, the cache of order views and
//! what keeps it fresh; `validation.rs` and `idempotency.rs`, what `POST /api/orders` accepts
//! and what makes its retries safe; `http.rs`, the routes and their handlers. This file starts
//! the service from them. (The customers' order listing is [`crate::listing`].)

mod domain;
mod http;
mod idempotency;
mod read_model;
mod saga;
mod validation;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use es_core::saga::SagaRunner;
use es_core::{Aggregate, Repository};

pub use domain::{Order, OrderCommand, OrderError, OrderEvent, OrderItem, OrderStatus, OrderView};
pub use http::{openapi, OrderEventView};
pub use read_model::{OrderCache, OrderReadModel};
pub use saga::{
    FlowAction, FlowCommand, FlowEvent, FlowRef, OrderDispatcher, OrderFulfillment, OrderTimeout,
};
pub use validation::{
    validate_place_order, PlaceOrderRequest, MAX_IDEMPOTENCY_KEY_CHARS, MAX_ITEMS,
    MAX_PRODUCT_NAME_CHARS, MAX_QUANTITY, MAX_UNIT_PRICE, MIN_ITEMS, MIN_QUANTITY, MIN_UNIT_PRICE,
    UNIT_PRICE_DECIMALS,
};

use crate::backends::Backends;
use crate::background::Background;
use crate::config::Settings;
use crate::http::finish_router;
use crate::listing::Listings;
use crate::service_kind::ServiceKind;
use http::OrderState;

/// Starts the order service: its read model, its relay, the saga's consumer and deadlines.
pub(crate) async fn start(
    backends: &Backends,
    settings: &Settings,
    background: &mut Background,
) -> es_core::Result<Router> {
    let orders = Repository::<Order>::new(backends.store.clone())
        .with_trusted_cache(crate::service::AGGREGATE_CACHE);
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
            backends.consumer(ServiceKind::Order),
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
    Ok(finish_router(
        http::routes(state),
        openapi(),
        backends.health.clone(),
    ))
}
