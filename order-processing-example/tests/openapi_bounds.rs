//! The OpenAPI documents state the bounds the services enforce, so a client or fuzzer generated
//! from them sends what the services accept.
//!
//! Two halves: the documents' bounds equal the constants the validators use (read from the
//! generated JSON, not from the source), and requests generated from the documents' bounds are
//! accepted while requests just outside them answer 400 problem+json. The generators take their
//! bounds from the documents, so a bound changed on one side only fails here.

use std::collections::HashSet;
use std::sync::Mutex;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use chrono::NaiveDate;
use order_processing_example::{
    analytics, inventory, notification, order, payment, Backends, Service, ServiceKind, Settings,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tower::ServiceExt;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Reading the documents

fn document(api: utoipa::openapi::OpenApi) -> Value {
    serde_json::to_value(api).expect("the document is JSON")
}

/// Follows a `$ref` to `#/components/schemas/...`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected $ref {reference}"));
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

fn property<'a>(doc: &'a Value, object: &'a Value, name: &str) -> &'a Value {
    let found = &object["properties"][name];
    assert!(found.is_object(), "no property {name} in {object}");
    resolve(doc, found)
}

/// The parameter `name` of the operation `method path`.
fn parameter<'a>(doc: &'a Value, method: &str, path: &str, name: &str) -> &'a Value {
    doc["paths"][path][method]["parameters"]
        .as_array()
        .unwrap_or_else(|| panic!("{method} {path} has no parameters"))
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))
}

fn request_body<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    let body = &doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"];
    assert!(body.is_object(), "{method} {path} documents no JSON body");
    resolve(doc, body)
}

fn integer(schema: &Value, key: &str) -> u64 {
    schema[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` is not a whole number in {schema}"))
}

fn decimal(schema: &Value, key: &str) -> Decimal {
    let number = schema[key]
        .as_number()
        .unwrap_or_else(|| panic!("`{key}` is not a number in {schema}"));
    order_processing_example::money::from_json_number(number)
        .unwrap_or_else(|| panic!("`{key}` is not a decimal in {schema}"))
}

fn text<'a>(schema: &'a Value, key: &str) -> &'a str {
    schema[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` is not a string in {schema}"))
}

fn required(object: &Value) -> Vec<&str> {
    object["required"]
        .as_array()
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// A string's documented bounds.
#[derive(Debug, Clone)]
struct Text {
    min: usize,
    max: usize,
    /// A regex matching one character; a valid string holds at least one.
    pattern: String,
}

impl Text {
    fn of(schema: &Value) -> Text {
        Text {
            min: integer(schema, "minLength") as usize,
            max: integer(schema, "maxLength") as usize,
            pattern: text(schema, "pattern").to_owned(),
        }
    }

    /// Strings the document allows: one character of the pattern, then any characters, at
    /// both ends of the length range and in between.
    fn valid(&self) -> BoxedStrategy<String> {
        assert!(self.min >= 1, "a pattern needs a character");
        let with = |low: usize, high: usize| {
            proptest::string::string_regex(&format!("{}(?s:.){{{low},{high}}}", self.pattern))
                .expect("the documented pattern is a regex")
        };
        prop_oneof![
            with(self.min - 1, self.min - 1),
            with(self.max - 1, self.max - 1),
            with(self.min - 1, self.max - 1),
        ]
        .boxed()
    }
}

/// `POST /api/orders` as documented.
#[derive(Debug, Clone)]
struct OrderBounds {
    min_items: usize,
    max_items: usize,
    min_quantity: u64,
    max_quantity: u64,
    min_price: Decimal,
    max_price: Decimal,
    price_step: Decimal,
    name: Text,
    key_min: usize,
    key_max: usize,
    key_pattern: String,
}

fn order_bounds() -> OrderBounds {
    let doc = document(order::openapi());
    let body = request_body(&doc, "post", "/api/orders");
    let items = property(&doc, body, "items");
    let line = resolve(&doc, &items["items"]);
    let quantity = property(&doc, line, "quantity");
    let price = property(&doc, line, "unitPrice");
    let key = &parameter(&doc, "post", "/api/orders", "Idempotency-Key")["schema"];
    OrderBounds {
        min_items: integer(items, "minItems") as usize,
        max_items: integer(items, "maxItems") as usize,
        min_quantity: integer(quantity, "minimum"),
        max_quantity: integer(quantity, "maximum"),
        min_price: decimal(price, "minimum"),
        max_price: decimal(price, "maximum"),
        price_step: decimal(price, "multipleOf"),
        name: Text::of(property(&doc, line, "productName")),
        key_min: integer(key, "minLength") as usize,
        key_max: integer(key, "maxLength") as usize,
        key_pattern: text(key, "pattern").to_owned(),
    }
}

/// `PUT /api/inventory/products/{productId}` as documented.
#[derive(Debug, Clone)]
struct StockBounds {
    name: Text,
    min_available: u64,
    max_available: u64,
}

fn stock_bounds() -> StockBounds {
    let doc = document(inventory::openapi());
    let body = request_body(&doc, "put", "/api/inventory/products/{productId}");
    let available = property(&doc, body, "availableQuantity");
    StockBounds {
        name: Text::of(property(&doc, body, "name")),
        min_available: integer(available, "minimum"),
        max_available: integer(available, "maximum"),
    }
}

/// `GET /api/analytics/events/recent`'s `limit` as documented.
fn recent_limit_bounds() -> (u64, u64) {
    let doc = document(analytics::openapi());
    let limit = &parameter(&doc, "get", "/api/analytics/events/recent", "limit")["schema"];
    (integer(limit, "minimum"), integer(limit, "maximum"))
}

// ---------------------------------------------------------------------------------------------
// The documents say what the validators check

#[test]
fn the_order_document_states_the_bounds_the_validator_enforces() {
    let bounds = order_bounds();
    assert_eq!(bounds.min_items, order::MIN_ITEMS);
    assert_eq!(bounds.max_items, order::MAX_ITEMS);
    assert_eq!(bounds.min_quantity, order::MIN_QUANTITY);
    assert_eq!(bounds.max_quantity, order::MAX_QUANTITY);
    assert_eq!(bounds.min_price, order::MIN_UNIT_PRICE);
    assert_eq!(bounds.max_price, order::MAX_UNIT_PRICE);
    assert_eq!(
        bounds.price_step,
        Decimal::new(1, order::UNIT_PRICE_DECIMALS)
    );
    assert_eq!(bounds.name.min, 1);
    assert_eq!(bounds.name.max, order::MAX_PRODUCT_NAME_CHARS);
    assert_eq!(bounds.name.pattern, r"[^\s\u0085]");
    assert_eq!(bounds.key_min, 1);
    assert_eq!(bounds.key_max, order::MAX_IDEMPOTENCY_KEY_CHARS);
    assert_eq!(bounds.key_pattern, "^[!-~]+$");

    let doc = document(order::openapi());
    let body = request_body(&doc, "post", "/api/orders");
    assert_eq!(required(body), ["customerId", "items"]);
    assert_eq!(text(property(&doc, body, "customerId"), "format"), "uuid");
    let items = property(&doc, body, "items");
    assert!(
        text(items, "description").contains("productId"),
        "the rule against a repeated productId is described: {items}"
    );
    let line = resolve(&doc, &items["items"]);
    let mut line_required = required(line);
    line_required.sort_unstable();
    assert_eq!(
        line_required,
        ["productId", "productName", "quantity", "unitPrice"]
    );
    assert_eq!(text(property(&doc, line, "productId"), "format"), "uuid");
    assert_eq!(text(property(&doc, line, "quantity"), "type"), "integer");
    assert_eq!(text(property(&doc, line, "unitPrice"), "type"), "number");
    let key = parameter(&doc, "post", "/api/orders", "Idempotency-Key");
    assert_eq!(key["in"], "header");
    assert_ne!(key["required"], true, "the key is optional");
    // Optional, yet never null: a header has no null to send.
    assert_eq!(key["schema"]["type"], "string", "{key}");
}

#[test]
fn the_inventory_document_states_the_bounds_the_validator_enforces() {
    let bounds = stock_bounds();
    assert_eq!(bounds.name.min, 1);
    assert_eq!(bounds.name.max, inventory::MAX_PRODUCT_NAME_CHARS);
    assert_eq!(bounds.name.pattern, r"[^\s\u0085]");
    assert_eq!(bounds.min_available, inventory::MIN_AVAILABLE_QUANTITY);
    assert_eq!(bounds.max_available, inventory::MAX_AVAILABLE_QUANTITY);
    let doc = document(inventory::openapi());
    let body = request_body(&doc, "put", "/api/inventory/products/{productId}");
    let mut names = required(body);
    names.sort_unstable();
    assert_eq!(names, ["availableQuantity", "name"]);
}

#[test]
fn the_analytics_document_states_the_bounds_the_handlers_enforce() {
    let (min, max) = recent_limit_bounds();
    assert_eq!(min as usize, analytics::MIN_RECENT_LIMIT);
    assert_eq!(max as usize, analytics::MAX_RECENT_LIMIT);
    let doc = document(analytics::openapi());
    let limit = parameter(&doc, "get", "/api/analytics/events/recent", "limit");
    assert!(text(limit, "description")
        .contains(&format!("default {}", analytics::DEFAULT_RECENT_LIMIT)));
    for name in ["from", "to"] {
        let date = parameter(&doc, "get", "/api/analytics/metrics/range", name);
        assert_eq!(date["required"], true, "{name} is required");
        assert_eq!(text(&date["schema"], "format"), "date", "{name}");
    }
    let to = parameter(&doc, "get", "/api/analytics/metrics/range", "to");
    assert!(text(to, "description").contains(&analytics::MAX_RANGE_DAYS.to_string()));
}

/// Every id in a path is a UUID (a bad one answers 400), in every service's document.
#[test]
fn every_path_id_is_documented_as_a_uuid() {
    let documents = [
        order::openapi(),
        inventory::openapi(),
        payment::openapi(),
        notification::openapi(),
        analytics::openapi(),
    ];
    let mut seen = 0;
    for doc in documents.map(document) {
        for (path, operations) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in operations.as_object().expect("operations") {
                for parameter in operation["parameters"].as_array().into_iter().flatten() {
                    if parameter["in"] == "path" {
                        seen += 1;
                        assert_eq!(
                            parameter["schema"]["format"], "uuid",
                            "{method} {path} {}",
                            parameter["name"]
                        );
                    }
                }
            }
        }
    }
    assert!(seen >= 7, "only {seen} path parameters found");
}

// ---------------------------------------------------------------------------------------------
// What the documents allow is accepted; what lies just outside is refused

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn runner() -> TestRunner {
    // Few cases: the edges are drawn on purpose, and two cores are shared.
    TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    })
}

async fn start(kind: ServiceKind) -> Service {
    Service::start(kind, &Backends::embedded(), &Settings::default())
        .await
        .unwrap_or_else(|e| panic!("start {kind:?}: {e}"))
}

/// Status, content type and JSON body of one request through the router.
async fn call(router: &Router, request: Request<Body>) -> (StatusCode, String, Value) {
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("the body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, content_type, body)
}

fn json_request(method: &str, uri: &str, body: &Value, key: Option<&str>) -> Request<Body> {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request
        .body(Body::from(body.to_string()))
        .expect("a request")
}

/// An exact JSON number for an amount (no trip through `f64`).
fn number(amount: Decimal) -> Value {
    serde_json::from_str(&amount.to_string()).expect("a JSON number")
}

fn amount(value: &Value) -> Option<Decimal> {
    value
        .as_number()
        .and_then(order_processing_example::money::from_json_number)
}

/// A refusal: 400 problem+json naming a field that contains `field`.
fn assert_refused(
    (status, content_type, body): &(StatusCode, String, Value),
    field: &str,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(*status, StatusCode::BAD_REQUEST, "{}", body);
    prop_assert_eq!(content_type.as_str(), "application/problem+json");
    prop_assert_eq!(&body["status"], &json!(400));
    let errors = body["errors"].as_object();
    prop_assert!(
        errors.is_some_and(|errors| errors.keys().any(|k| k.contains(field))),
        "no error for {} in {}",
        field,
        body
    );
    Ok(())
}

/// Values of `low..=high`, the two ends drawn as often as the middle.
fn edges_and_between(low: u64, high: u64) -> BoxedStrategy<u64> {
    prop_oneof![Just(low), Just(high), low..=high].boxed()
}

/// A whole number of `low..=high` as JSON Schema's `integer` allows it: `7`, `7.0` or `7e0`.
fn documented_integer(low: u64, high: u64) -> BoxedStrategy<Value> {
    (edges_and_between(low, high), 0..3u8)
        .prop_map(|(n, spelling)| {
            let text = match spelling {
                0 => n.to_string(),
                1 => format!("{n}.0"),
                _ => format!("{n}e0"),
            };
            serde_json::from_str(&text).expect("a JSON number")
        })
        .boxed()
}

/// The whole number a JSON number stands for.
fn whole(value: &Value) -> Option<Decimal> {
    amount(value).map(|n| n.normalize())
}

/// An order line as the document allows it (its productId is set by [`order_body`]).
fn order_line(bounds: &OrderBounds) -> impl Strategy<Value = Value> {
    let steps = |amount: Decimal| -> u64 {
        (amount / bounds.price_step)
            .try_into()
            .expect("a bound is a whole number of steps")
    };
    let step = bounds.price_step;
    (
        bounds.name.valid(),
        documented_integer(bounds.min_quantity, bounds.max_quantity),
        edges_and_between(steps(bounds.min_price), steps(bounds.max_price)),
    )
        .prop_map(move |(name, quantity, price_steps)| {
            json!({
                "productName": name,
                "quantity": quantity,
                "unitPrice": number(Decimal::from(price_steps) * step),
            })
        })
}

/// A `POST /api/orders` body the document allows: distinct product ids, every count of lines.
fn order_body(bounds: &OrderBounds) -> impl Strategy<Value = Value> {
    let lines = prop_oneof![
        proptest::collection::vec(order_line(bounds), bounds.min_items),
        proptest::collection::vec(order_line(bounds), bounds.max_items),
        proptest::collection::vec(order_line(bounds), bounds.min_items..=bounds.max_items),
    ];
    (any::<u128>(), any::<u128>(), lines).prop_map(|(customer, first_product, mut lines)| {
        for (i, line) in lines.iter_mut().enumerate() {
            let product = Uuid::from_u128(first_product.wrapping_add(i as u128));
            line["productId"] = json!(product);
        }
        json!({"customerId": Uuid::from_u128(customer), "items": lines})
    })
}

#[test]
fn orders_within_the_documented_bounds_are_placed() {
    let bounds = order_bounds();
    let key =
        proptest::string::string_regex(&format!("[!-~]{{{},{}}}", bounds.key_min, bounds.key_max))
            .expect("a regex");
    let runtime = runtime();
    let service = runtime.block_on(start(ServiceKind::Order));
    let router = service.router();
    let used_keys = Mutex::new(HashSet::new());
    runner()
        .run(
            &(order_body(&bounds), proptest::option::of(key)),
            |(body, key)| {
                // A short key drawn twice would be a reuse with another body (422).
                let key = key.filter(|k| used_keys.lock().unwrap().insert(k.clone()));
                let request = json_request("POST", "/api/orders", &body, key.as_deref());
                let (status, _, answer) = runtime.block_on(call(&router, request));
                prop_assert_eq!(status, StatusCode::CREATED, "{} for {}", answer, body);
                // The order holds what was sent (amounts compared as decimals: `0` is `0.00`).
                let sent = body["items"].as_array().expect("items");
                let kept = answer["items"].as_array().expect("items");
                prop_assert_eq!(kept.len(), sent.len());
                for (kept, sent) in kept.iter().zip(sent) {
                    for field in ["productId", "productName"] {
                        prop_assert_eq!(&kept[field], &sent[field]);
                    }
                    prop_assert_eq!(whole(&kept["quantity"]), whole(&sent["quantity"]));
                    prop_assert_eq!(amount(&kept["unitPrice"]), amount(&sent["unitPrice"]));
                }
                Ok(())
            },
        )
        .unwrap_or_else(|failure| panic!("{failure}"));
    runtime.block_on(service.stop());
}

/// Ways to take a valid order just outside one documented bound, with the field the 400 names.
#[derive(Debug, Clone, Copy)]
enum OrderBreak {
    NoLines,
    OneLineTooMany,
    QuantityBelow,
    QuantityAbove,
    QuantityFraction,
    PriceBelow,
    PriceAbove,
    PriceOneDecimalTooMany,
    NameEmpty,
    NameTooLong,
    NameBlank,
    RepeatedProduct,
    CustomerNotUuid,
    ProductNotUuid,
    KeyEmpty,
    KeyTooLong,
}

const ORDER_BREAKS: [OrderBreak; 16] = [
    OrderBreak::NoLines,
    OrderBreak::OneLineTooMany,
    OrderBreak::QuantityBelow,
    OrderBreak::QuantityAbove,
    OrderBreak::QuantityFraction,
    OrderBreak::PriceBelow,
    OrderBreak::PriceAbove,
    OrderBreak::PriceOneDecimalTooMany,
    OrderBreak::NameEmpty,
    OrderBreak::NameTooLong,
    OrderBreak::NameBlank,
    OrderBreak::RepeatedProduct,
    OrderBreak::CustomerNotUuid,
    OrderBreak::ProductNotUuid,
    OrderBreak::KeyEmpty,
    OrderBreak::KeyTooLong,
];

/// Breaks `body` (and picks the key) as `how` says: the field the 400 must name.
fn break_order(
    bounds: &OrderBounds,
    how: OrderBreak,
    body: &mut Value,
    line: usize,
) -> (&'static str, Option<String>) {
    let lines = body["items"].as_array_mut().expect("items");
    let line = line % lines.len();
    let target = &mut lines[line];
    let tenth_of_step = bounds.price_step / Decimal::TEN;
    match how {
        OrderBreak::NoLines => {
            lines.truncate(bounds.min_items - 1);
            return ("items", None);
        }
        OrderBreak::OneLineTooMany => {
            let template = lines[0].clone();
            while lines.len() <= bounds.max_items {
                let mut extra = template.clone();
                extra["productId"] = json!(Uuid::new_v4());
                lines.push(extra);
            }
            return ("items", None);
        }
        OrderBreak::QuantityBelow => target["quantity"] = json!(bounds.min_quantity - 1),
        OrderBreak::QuantityAbove => target["quantity"] = json!(bounds.max_quantity + 1),
        OrderBreak::QuantityFraction => target["quantity"] = json!(1.5),
        OrderBreak::PriceBelow => {
            target["unitPrice"] = number(bounds.min_price - bounds.price_step)
        }
        OrderBreak::PriceAbove => {
            target["unitPrice"] = number(bounds.max_price + bounds.price_step)
        }
        OrderBreak::PriceOneDecimalTooMany => {
            // Below the maximum, so only the decimals are wrong.
            let price = (bounds.max_price - bounds.price_step).min(
                order_processing_example::money::from_json_number(
                    target["unitPrice"].as_number().expect("a number"),
                )
                .expect("a decimal"),
            );
            target["unitPrice"] = number(price + tenth_of_step);
        }
        OrderBreak::NameEmpty => target["productName"] = json!(""),
        OrderBreak::NameTooLong => target["productName"] = json!("n".repeat(bounds.name.max + 1)),
        OrderBreak::NameBlank => target["productName"] = json!(" \t\u{85}\u{3000}"),
        OrderBreak::RepeatedProduct => {
            let first = lines[0]["productId"].clone();
            let mut copy = lines[0].clone();
            copy["productId"] = first;
            if lines.len() >= bounds.max_items {
                lines.pop();
            }
            lines.push(copy);
            return ("productId", None);
        }
        OrderBreak::CustomerNotUuid => {
            body["customerId"] = json!("not-a-uuid");
            return ("customerId", None);
        }
        OrderBreak::ProductNotUuid => {
            target["productId"] = json!("11111111-1111-1111-1111");
            return ("productId", None);
        }
        OrderBreak::KeyEmpty => return ("Idempotency-Key", Some("x".repeat(bounds.key_min - 1))),
        OrderBreak::KeyTooLong => return ("Idempotency-Key", Some("k".repeat(bounds.key_max + 1))),
    }
    match how {
        OrderBreak::QuantityBelow | OrderBreak::QuantityAbove | OrderBreak::QuantityFraction => {
            ("quantity", None)
        }
        OrderBreak::PriceBelow | OrderBreak::PriceAbove | OrderBreak::PriceOneDecimalTooMany => {
            ("unitPrice", None)
        }
        _ => ("productName", None),
    }
}

#[test]
fn orders_just_outside_the_documented_bounds_answer_400_problem_json() {
    let bounds = order_bounds();
    let runtime = runtime();
    let service = runtime.block_on(start(ServiceKind::Order));
    let router = service.router();
    runner()
        .run(
            &(
                order_body(&bounds),
                proptest::sample::select(&ORDER_BREAKS[..]),
                any::<usize>(),
            ),
            |(mut body, how, line)| {
                let (field, key) = break_order(&bounds, how, &mut body, line);
                let request = json_request("POST", "/api/orders", &body, key.as_deref());
                let answer = runtime.block_on(call(&router, request));
                assert_refused(&answer, field)
            },
        )
        .unwrap_or_else(|failure| panic!("{failure}"));
    runtime.block_on(service.stop());
}

#[test]
fn stock_within_the_documented_bounds_is_set_and_just_outside_is_refused() {
    let bounds = stock_bounds();
    let runtime = runtime();
    let service = runtime.block_on(start(ServiceKind::Inventory));
    let router = service.router();
    let valid = (
        any::<u128>(),
        bounds.name.valid(),
        documented_integer(bounds.min_available, bounds.max_available),
    );
    runner()
        .run(&valid, |(product, name, available)| {
            let uri = format!("/api/inventory/products/{}", Uuid::from_u128(product));
            let body = json!({"name": name, "availableQuantity": available});
            let (status, _, answer) =
                runtime.block_on(call(&router, json_request("PUT", &uri, &body, None)));
            prop_assert_eq!(status, StatusCode::OK, "{} for {}", answer, body);
            prop_assert_eq!(&answer["name"], &body["name"]);
            prop_assert_eq!(
                whole(&answer["availableQuantity"]),
                whole(&body["availableQuantity"])
            );
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));

    let broken = (
        any::<u128>(),
        bounds.name.valid(),
        edges_and_between(bounds.min_available, bounds.max_available),
        0..6usize,
    );
    runner()
        .run(&broken, |(product, name, available, how)| {
            let uri = format!("/api/inventory/products/{}", Uuid::from_u128(product));
            let mut body = json!({"name": name, "availableQuantity": available});
            let field = match how {
                0 => {
                    body["name"] = json!("");
                    "name"
                }
                1 => {
                    body["name"] = json!("n".repeat(bounds.name.max + 1));
                    "name"
                }
                2 => {
                    body["name"] = json!("\u{85} \n");
                    "name"
                }
                3 => {
                    body["availableQuantity"] = json!(bounds.min_available as i64 - 1);
                    "availableQuantity"
                }
                4 => {
                    body["availableQuantity"] = json!(bounds.max_available + 1);
                    "availableQuantity"
                }
                _ => {
                    body["availableQuantity"] = json!(0.5);
                    "availableQuantity"
                }
            };
            let answer = runtime.block_on(call(&router, json_request("PUT", &uri, &body, None)));
            assert_refused(&answer, field)
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    runtime.block_on(service.stop());
}

fn get(uri: &str) -> Request<Body> {
    Request::builder()
        .uri(uri)
        .body(Body::empty())
        .expect("a request")
}

#[test]
fn analytics_queries_within_the_documented_bounds_are_answered_and_just_outside_refused() {
    let (min, max) = recent_limit_bounds();
    let runtime = runtime();
    let service = runtime.block_on(start(ServiceKind::Analytics));
    let router = service.router();
    let days = analytics::MAX_RANGE_DAYS as u64;
    // Days from 1900 to 2200, and spans up to the longest range.
    let first = NaiveDate::from_ymd_opt(1900, 1, 1).expect("a date");
    let queries = (
        edges_and_between(min, max),
        0..110_000u64,
        edges_and_between(0, days - 1),
    );
    runner()
        .run(&queries, |(limit, start, span)| {
            let uri = format!("/api/analytics/events/recent?limit={limit}");
            let (status, _, answer) = runtime.block_on(call(&router, get(&uri)));
            prop_assert_eq!(status, StatusCode::OK, "{}", answer);
            prop_assert!(answer.is_array());

            let from = first + chrono::Days::new(start);
            let to = from + chrono::Days::new(span);
            let uri = format!("/api/analytics/metrics/range?from={from}&to={to}");
            let (status, _, answer) = runtime.block_on(call(&router, get(&uri)));
            prop_assert_eq!(status, StatusCode::OK, "{} for {}", answer, uri);
            prop_assert_eq!(answer.as_array().map(Vec::len), Some(span as usize + 1));

            // Just outside: a limit past either end, a range one day too long or reversed.
            for outside in [min - 1, max + 1] {
                let uri = format!("/api/analytics/events/recent?limit={outside}");
                assert_refused(&runtime.block_on(call(&router, get(&uri))), "limit")?;
            }
            let too_far = from + chrono::Days::new(days);
            let uri = format!("/api/analytics/metrics/range?from={from}&to={too_far}");
            assert_refused(&runtime.block_on(call(&router, get(&uri))), "to")?;
            if span > 0 {
                let uri = format!("/api/analytics/metrics/range?from={to}&to={from}");
                assert_refused(&runtime.block_on(call(&router, get(&uri))), "from")?;
            }
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    runtime.block_on(service.stop());
}
