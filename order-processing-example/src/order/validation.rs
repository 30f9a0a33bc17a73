//! What `POST /api/orders` accepts: its bounds, its body, and the validation that names every
//! bad field.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::domain::OrderItem;
use crate::http::{AppError, ExactJson, Validator};

// The bounds `POST /api/orders` enforces. The schema attributes of `OrderItem` and
// `PlaceOrderRequest` repeat them as literals (utoipa takes no constant there);
// `tests/openapi_bounds.rs` proves the document and these constants agree, so neither can
// drift alone.

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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use serde_json::json;

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
}
