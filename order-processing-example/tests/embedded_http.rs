//! The HTTP contract on the embedded backends: validation, errors, idempotency, listings.

mod common;

use common::*;
use order_processing_example::ServiceKind;
use serde_json::{json, Value};

fn assert_problem(status: u16, body: &Value, expected: u16) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["status"], expected, "{body}");
    assert!(
        body["title"].is_string() && body["detail"].is_string() && body["type"].is_string(),
        "{body}"
    );
}

fn valid_line() -> Value {
    json!({"productId": LAPTOP, "productName": "Laptop", "quantity": 1, "unitPrice": 999.99})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invalid_field_answers_400_with_its_name() {
    let system = System::embedded().await;
    let customer = customer();
    let line = |patch: Value| {
        let mut line = valid_line();
        for (k, v) in patch.as_object().unwrap() {
            line[k] = v.clone();
        }
        line
    };
    let cases: Vec<(Value, &str)> = vec![
        (json!({"items": [valid_line()]}), "customerId"),
        (
            json!({"customerId": "not-a-uuid", "items": [valid_line()]}),
            "customerId",
        ),
        (json!({"customerId": customer, "items": []}), "items"),
        (json!({"customerId": customer}), "items"),
        (
            json!({"customerId": customer, "items": vec![valid_line(); 101]}),
            "items",
        ),
        (
            json!({"customerId": customer, "items": [line(json!({"quantity": 0}))]}),
            "items[0].quantity",
        ),
        (
            json!({"customerId": customer, "items": [line(json!({"quantity": 10001}))]}),
            "items[0].quantity",
        ),
        (
            json!({"customerId": customer, "items": [line(json!({"quantity": 1.5}))]}),
            "items[0].quantity",
        ),
        (
            json!({"customerId": customer, "items": [line(json!({"unitPrice": -0.01}))]}),
            "items[0].unitPrice",
        ),
        (
            json!({"customerId": customer, "items": [line(json!({"unitPrice": 1000000.01}))]}),
            "items[0].unitPrice",
        ),
        (
            json!({"customerId": customer, "items": [line(json!({"unitPrice": 1.005}))]}),
            "items[0].unitPrice",
        ),
        (
            json!({"customerId": customer, "items": [line(json!({"unitPrice": "10"}))]}),
            "items[0].unitPrice",
        ),
        (
            json!({"customerId": customer, "items": [line(json!({"productName": ""}))]}),
            "items[0].productName",
        ),
        (
            json!({"customerId": customer, "items": [line(json!({"productName": "x".repeat(201)}))]}),
            "items[0].productName",
        ),
        (
            json!({"customerId": customer, "items": [line(json!({"productId": "nope"}))]}),
            "items[0].productId",
        ),
        (
            json!({"customerId": customer, "items": [valid_line(), valid_line()]}),
            "items[1].productId",
        ),
    ];
    for (body, field) in cases {
        let (status, problem) = system.post_order(&body, None).await;
        assert_problem(status, &problem, 400);
        assert!(
            problem["errors"][field].is_array(),
            "{field} not named in {problem}"
        );
    }
    // The edges themselves are valid.
    let edges = json!({"customerId": customer, "items": [
        line(json!({"quantity": 10000, "unitPrice": 0, "productName": "x".repeat(200)}))
    ]});
    let (status, body) = system.post_order(&edges, None).await;
    assert_eq!(status, 201, "{body}");
    let (status, problem) = system
        .post_order(
            &order_body(&customer, &[(MOUSE, 1, "1.00")]),
            Some(&"k".repeat(201)),
        )
        .await;
    assert_problem(status, &problem, 400);
    assert!(problem["errors"]["Idempotency-Key"].is_array());
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_answer_problem_json_never_500() {
    let system = System::embedded().await;
    let url = system.url(ServiceKind::Order, "/api/orders");
    let malformed = system
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"customerId\":")
        .send()
        .await
        .unwrap();
    assert_eq!(
        malformed.headers()["content-type"],
        "application/problem+json"
    );
    let (status, body) = read(malformed).await;
    assert_problem(status, &body, 400);

    let wrong_type = system
        .client
        .post(&url)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, body) = read(wrong_type).await;
    assert_problem(status, &body, 400);

    let not_object = system
        .client
        .post(&url)
        .json(&json!([1, 2]))
        .send()
        .await
        .unwrap();
    let (status, body) = read(not_object).await;
    assert_problem(status, &body, 400);

    let huge = format!(
        "{{\"customerId\":\"{}\",\"pad\":\"{}\"}}",
        customer(),
        "x".repeat(1024 * 1024 + 10)
    );
    let too_big = system
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    let (status, body) = read(too_big).await;
    assert_problem(status, &body, 413);

    for (kind, path) in [
        (ServiceKind::Order, "/api/orders/not-a-uuid"),
        (ServiceKind::Order, "/api/orders/customer/42"),
        (ServiceKind::Order, "/api/orders/zzz/events"),
        (ServiceKind::Inventory, "/api/inventory/products/nope"),
        (ServiceKind::Inventory, "/api/inventory/reservations/nope"),
        (ServiceKind::Payment, "/api/payments/order/nope"),
        (
            ServiceKind::Notification,
            "/api/notifications/customer/nope",
        ),
    ] {
        let (status, body) = system.get(kind, path).await;
        assert_problem(status, &body, 400);
    }
    let unknown = uuid::Uuid::new_v4();
    for (kind, path) in [
        (ServiceKind::Order, format!("/api/orders/{unknown}")),
        (ServiceKind::Order, format!("/api/orders/{unknown}/events")),
        (
            ServiceKind::Inventory,
            format!("/api/inventory/products/{unknown}"),
        ),
        (
            ServiceKind::Inventory,
            format!("/api/inventory/reservations/{unknown}"),
        ),
        (
            ServiceKind::Payment,
            format!("/api/payments/order/{unknown}"),
        ),
        (ServiceKind::Analytics, "/api/nothing/here".to_owned()),
        (ServiceKind::Order, "/".to_owned()),
    ] {
        let (status, body) = system.get(kind, &path).await;
        assert_problem(status, &body, 404);
    }
    let (status, list) = system
        .get(
            ServiceKind::Order,
            &format!("/api/orders/customer/{unknown}"),
        )
        .await;
    assert_eq!((status, list), (200, json!([])));

    let put = |body: Value| {
        let request = system
            .client
            .put(system.url(
                ServiceKind::Inventory,
                &format!("/api/inventory/products/{unknown}"),
            ))
            .json(&body);
        async move { read(request.send().await.unwrap()).await }
    };
    let (status, body) = put(json!({"name": "", "availableQuantity": -1})).await;
    assert_problem(status, &body, 400);
    assert!(
        body["errors"]["name"].is_array() && body["errors"]["availableQuantity"].is_array(),
        "{body}"
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_rejects_bad_ranges_and_limits() {
    let system = System::embedded().await;
    for query in [
        "/api/analytics/metrics/range",
        "/api/analytics/metrics/range?from=2024-01-01",
        "/api/analytics/metrics/range?from=2024-13-01&to=2024-12-31",
        "/api/analytics/metrics/range?from=2024-02-01&to=2024-01-01",
        "/api/analytics/metrics/range?from=2024-01-01&to=2025-01-02",
        "/api/analytics/events/recent?limit=0",
        "/api/analytics/events/recent?limit=1001",
        "/api/analytics/events/recent?limit=ten",
    ] {
        let (status, body) = system.get(ServiceKind::Analytics, query).await;
        assert_problem(status, &body, 400);
    }
    // 2024 is a leap year: 366 days is the longest range allowed.
    let (status, days) = system
        .get(
            ServiceKind::Analytics,
            "/api/analytics/metrics/range?from=2024-01-01&to=2024-12-31",
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(days.as_array().unwrap().len(), 366);
    let (status, _) = system
        .get(
            ServiceKind::Analytics,
            "/api/analytics/events/recent?limit=1000",
        )
        .await;
    assert_eq!(status, 200);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_answers_the_same_order() {
    let system = System::embedded().await;
    let customer = customer();
    let body = order_body(&customer, &[(MOUSE, 2, "25.00")]);
    let (first_status, first) = system.post_order(&body, Some("key-1")).await;
    assert_eq!(first_status, 201);
    let (again_status, again) = system.post_order(&body, Some("key-1")).await;
    assert_eq!(again_status, 200, "{again}");
    assert_eq!(again["orderId"], first["orderId"]);
    let other = order_body(&customer, &[(MOUSE, 3, "25.00")]);
    let (status, problem) = system.post_order(&other, Some("key-1")).await;
    assert_problem(status, &problem, 422);

    // Racing retries: one creates, the others wait for it and answer the same order.
    let racing = (0..12).map(|_| system.post_order(&body, Some("key-2")));
    let answers = futures_util::future::join_all(racing).await;
    let created: Vec<_> = answers.iter().filter(|(s, _)| *s == 201).collect();
    assert_eq!(created.len(), 1, "{answers:?}");
    let id = &created[0].1["orderId"];
    assert!(
        answers
            .iter()
            .all(|(s, b)| (*s == 201 || *s == 200) && &b["orderId"] == id),
        "{answers:?}"
    );

    // Two orders in all for this customer.
    eventually("the customer's two orders", || async {
        let (_, list) = system
            .get(
                ServiceKind::Order,
                &format!("/api/orders/customer/{customer}"),
            )
            .await;
        (list.as_array()?.len() == 2).then_some(())
    })
    .await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customers_orders_are_listed_newest_first() {
    let system = System::embedded().await;
    let customer = customer();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(system.place(&customer, &[(KEYBOARD, 1, "49.99")]).await);
    }
    let other = system
        .place(&common::customer(), &[(KEYBOARD, 1, "49.99")])
        .await;
    let list = eventually("three orders listed", || async {
        let (_, list) = system
            .get(
                ServiceKind::Order,
                &format!("/api/orders/customer/{customer}"),
            )
            .await;
        (list.as_array()?.len() == 3).then_some(list)
    })
    .await;
    let listed: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["orderId"].as_str().unwrap())
        .collect();
    ids.reverse();
    assert_eq!(listed, ids);
    assert!(!listed.contains(&other.as_str()));
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_serves_health_openapi_and_scalar() {
    let system = System::embedded().await;
    for kind in ServiceKind::ALL {
        let (status, health) = system.get(kind, "/health").await;
        assert_eq!(status, 200);
        assert_eq!(health["status"], "Healthy");
        assert!(
            health["entries"]["eventStore"]["status"] == "Healthy",
            "{health}"
        );
        let (status, spec) = system.get(kind, "/openapi.json").await;
        assert_eq!(status, 200);
        assert!(
            spec["openapi"].as_str().unwrap().starts_with("3.1"),
            "{spec}"
        );
        assert!(!spec["paths"].as_object().unwrap().is_empty());
        let scalar = system
            .client
            .get(system.url(kind, "/scalar"))
            .send()
            .await
            .unwrap();
        assert_eq!(scalar.status(), 200);
        assert!(scalar.text().await.unwrap().contains("<html"));
    }
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_are_seeded_and_can_be_stocked() {
    let system = System::embedded().await;
    let products = eventually("the four seeded products", || async {
        let (_, list) = system
            .get(ServiceKind::Inventory, "/api/inventory/products")
            .await;
        (list.as_array()?.len() == 4).then_some(list)
    })
    .await;
    assert_eq!(products[0]["productId"], LAPTOP);
    assert_eq!(products[0]["name"], "Laptop");
    assert_eq!(products[0]["availableQuantity"], 100);
    assert_eq!(products[3]["availableQuantity"], 50);
    let new = uuid::Uuid::new_v4().to_string();
    let (status, created) = system.put_product(&new, "Webcam", 7).await;
    assert_eq!(status, 200);
    assert_eq!(
        created,
        json!({"productId": new, "name": "Webcam", "availableQuantity": 7, "reservedQuantity": 0})
    );
    let (status, updated) = system.put_product(&new, "Webcam HD", 9).await;
    assert_eq!(status, 200);
    assert_eq!(updated["availableQuantity"], 9);
    assert_eq!(system.product(&new).await["name"], "Webcam HD");
    system.stop().await;
}
