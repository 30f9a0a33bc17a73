//! The order service's HTTP API: place an order (idempotently, with a key), read one, its
//! events, and a customer's orders; and its OpenAPI document.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use es_core::idempotency::{claim_or_wait, ClaimGuard, Ownership};
use es_core::{CacheExt, Claim, CommandError, EventStore, IdempotencyStore, Metadata, Repository};
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use super::domain::{Order, OrderCommand, OrderError, OrderItem, OrderStatus, OrderView};
use super::idempotency::{
    fingerprint, idempotency_key, keyed_order_id, IDEMPOTENCY_TTL, IDEMPOTENCY_WAIT,
};
use super::read_model::OrderCache;
use super::validation::{validate_place_order, PlaceOrderRequest};
use crate::http::{ApiJson, ApiPath, ApiQuery, AppError, ExactJson};
use crate::listing::{Listings, Page, PageQuery};

/// What the handlers share.
#[derive(Clone)]
pub(super) struct OrderState {
    pub(super) orders: Repository<Order>,
    pub(super) store: Arc<dyn EventStore>,
    pub(super) listing: Listings,
    pub(super) cache: OrderCache,
    pub(super) idempotency: Arc<dyn IdempotencyStore>,
    /// How long a claimed key is held without renewal (renewed while the request runs).
    pub(super) idempotency_lease: Duration,
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

/// The order service's routes on `state`.
pub(super) fn routes(state: OrderState) -> Router {
    Router::new()
        .route("/api/orders", post(place_order))
        .route("/api/orders/{order_id}", get(get_order))
        .route("/api/orders/{order_id}/events", get(order_events))
        .route("/api/orders/customer/{customer_id}", get(customer_orders))
        .with_state(state)
}
