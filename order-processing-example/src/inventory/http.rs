//! The inventory service's HTTP API: the products (list, read, stock) and an order's
//! reservation; and its OpenAPI document.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use es_core::{CommandError, Metadata, Repository};
use serde::Deserialize;
use serde_json::Value;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use super::catalog::Catalog;
use super::product::{Product, ProductCommand, ProductView};
use super::reservation::{Reservation, ReservationStatus, ReservationView, ReservedItem};
use crate::http::{ApiJson, ApiPath, AppError, Validator};

/// What the handlers share.
#[derive(Clone)]
pub(super) struct InventoryState {
    pub(super) products: Repository<Product>,
    pub(super) reservations: Repository<Reservation>,
    pub(super) catalog: Catalog,
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

/// The inventory service's routes on `state`.
pub(super) fn routes(state: InventoryState) -> Router {
    Router::new()
        .route("/api/inventory/products", get(list_products))
        .route(
            "/api/inventory/products/{product_id}",
            get(get_product).put(put_product),
        )
        .route(
            "/api/inventory/reservations/{order_id}",
            get(get_reservation),
        )
        .with_state(state)
}
