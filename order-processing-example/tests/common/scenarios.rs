//! The contract's scenarios, each run on the embedded and on the real backends.

use std::time::Duration;

use order_processing_example::{ServiceKind, Settings};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use super::*;

pub fn assert_problem(status: u16, body: &Value, expected: u16) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["status"], expected, "{body}");
    assert!(
        body["title"].is_string() && body["detail"].is_string() && body["type"].is_string(),
        "{body}"
    );
}

pub fn valid_line() -> Value {
    json!({"productId": LAPTOP, "productName": "Laptop", "quantity": 1, "unitPrice": 999.99})
}

pub async fn a_paid_order_is_confirmed_notified_and_counted(backend: Backend) {
    let system = System::launch(backend, patient(), &ServiceKind::ALL).await;
    let customer = customer();
    let (status, placed) = system
        .post_order(
            &order_body(&customer, &[(LAPTOP, 2, "999.99"), (MOUSE, 1, "25.50")]),
            None,
        )
        .await;
    assert_eq!(status, 201, "{placed}");
    assert_eq!(placed["status"], "Pending");
    assert_eq!(placed["version"], 1);
    assert_eq!(money(&placed["totalAmount"]), Decimal::new(202548, 2));
    assert!(placed["cancellationReason"].is_null());
    let order_id = placed["orderId"].as_str().unwrap().to_owned();

    // Read-your-writes: the order is there at once.
    let (status, fetched) = system
        .get(ServiceKind::Order, &format!("/api/orders/{order_id}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(fetched["orderId"], placed["orderId"]);

    let order = system.settled(&order_id).await;
    assert_eq!(order["status"], "Confirmed", "{order}");

    let (_, events) = system
        .get(
            ServiceKind::Order,
            &format!("/api/orders/{order_id}/events"),
        )
        .await;
    let types: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    // The payment and the reservation travel apart from the inventory service: on a busy
    // machine the order can hear of the payment first, and then goes from placed to paid and
    // never records the reservation (the order domain's tests, `loadtest::stats::Steps`).
    let happy_path: &[&str] = if types.contains(&"OrderInventoryReserved") {
        &[
            "OrderPlaced",
            "OrderInventoryReserved",
            "OrderPaymentProcessed",
            "OrderConfirmed",
        ]
    } else {
        &["OrderPlaced", "OrderPaymentProcessed", "OrderConfirmed"]
    };
    assert_eq!(types, happy_path);
    assert_eq!(order["version"], happy_path.len());
    assert_eq!(events[0]["version"], 1);
    assert_eq!(events[0]["data"]["customerId"], customer.as_str());

    let (status, payment) = system
        .get(
            ServiceKind::Payment,
            &format!("/api/payments/order/{order_id}"),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(payment["status"], "Succeeded");
    assert_eq!(money(&payment["amount"]), Decimal::new(202548, 2));

    eventually("the reservation to be committed", || async {
        let (_, reservation) = system
            .get(
                ServiceKind::Inventory,
                &format!("/api/inventory/reservations/{order_id}"),
            )
            .await;
        (reservation["status"] == "Committed").then_some(())
    })
    .await;
    eventually("the stock to be sold", || async {
        let laptop = system.product(LAPTOP).await;
        (laptop["availableQuantity"] == 98 && laptop["reservedQuantity"] == 0).then_some(())
    })
    .await;

    let notifications = eventually("two notifications", || async {
        let (_, list) = system
            .get(
                ServiceKind::Notification,
                &format!("/api/notifications/customer/{customer}"),
            )
            .await;
        (list.as_array().map_or(0, Vec::len) == 2).then_some(list)
    })
    .await;
    assert_eq!(notifications[0]["kind"], "OrderConfirmed", "newest first");
    assert_eq!(notifications[1]["kind"], "OrderPlaced");
    assert_eq!(notifications[0]["orderId"], order_id.as_str());

    let today = eventually("analytics to count the confirmation", || async {
        let (_, today) = system
            .get(ServiceKind::Analytics, "/api/analytics/metrics/today")
            .await;
        (today["ordersConfirmed"] == 1).then_some(today)
    })
    .await;
    assert_eq!(today["ordersPlaced"], 1);
    assert_eq!(today["ordersCancelled"], 0);
    assert_eq!(money(&today["revenue"]), Decimal::new(202548, 2));
    assert_eq!(money(&today["averageOrderValue"]), Decimal::new(202548, 2));
    system.stop().await;
}

pub async fn too_little_stock_cancels_the_order_and_changes_no_stock(backend: Backend) {
    let system = System::launch(backend, patient(), &ServiceKind::ALL).await;
    // The monitor line fits, the laptop line does not: neither may be reserved.
    let order_id = system
        .place(
            &customer(),
            &[(MONITOR, 5, "199.00"), (LAPTOP, 101, "999.99")],
        )
        .await;
    let order = system.settled(&order_id).await;
    assert_eq!(order["status"], "Cancelled");
    assert_eq!(
        order["cancellationReason"],
        format!("insufficient stock for product {LAPTOP}")
    );
    let monitor = system.product(MONITOR).await;
    assert_eq!(monitor["availableQuantity"], 50);
    assert_eq!(monitor["reservedQuantity"], 0);
    assert_eq!(system.product(LAPTOP).await["availableQuantity"], 100);
    let (status, _) = system
        .get(
            ServiceKind::Inventory,
            &format!("/api/inventory/reservations/{order_id}"),
        )
        .await;
    assert_eq!(status, 404, "a failed reservation holds nothing");
    system.stop().await;
}

pub async fn an_unknown_product_cancels_the_order(backend: Backend) {
    let system = System::launch(backend, patient(), &ServiceKind::ALL).await;
    let unknown = "99999999-9999-9999-9999-999999999999";
    let order_id = system
        .place(&customer(), &[(KEYBOARD, 1, "49.99"), (unknown, 1, "1.00")])
        .await;
    let order = system.settled(&order_id).await;
    assert_eq!(order["status"], "Cancelled");
    assert_eq!(
        order["cancellationReason"],
        format!("unknown product {unknown}")
    );
    assert_eq!(system.product(KEYBOARD).await["availableQuantity"], 200);
    system.stop().await;
}

pub async fn a_declined_payment_cancels_the_order_and_restores_the_stock(backend: Backend) {
    let system = System::launch(backend, patient(), &ServiceKind::ALL).await;
    let customer = customer();
    // 11 × 999.99 = 10,999.89: above the default limit of 10,000.00.
    let order_id = system.place(&customer, &[(LAPTOP, 11, "999.99")]).await;
    let order = system.settled(&order_id).await;
    assert_eq!(order["status"], "Cancelled");
    assert_eq!(
        order["cancellationReason"],
        "payment declined: amount exceeds limit"
    );
    let (_, payment) = system
        .get(
            ServiceKind::Payment,
            &format!("/api/payments/order/{order_id}"),
        )
        .await;
    assert_eq!(payment["status"], "Failed");
    assert_eq!(payment["reason"], "amount exceeds limit");
    eventually("the stock to come back", || async {
        let laptop = system.product(LAPTOP).await;
        (laptop["availableQuantity"] == 100 && laptop["reservedQuantity"] == 0).then_some(())
    })
    .await;
    let (_, reservation) = system
        .get(
            ServiceKind::Inventory,
            &format!("/api/inventory/reservations/{order_id}"),
        )
        .await;
    assert_eq!(reservation["status"], "Released");
    let kinds = eventually("the cancellation notice", || async {
        let (_, list) = system
            .get(
                ServiceKind::Notification,
                &format!("/api/notifications/customer/{customer}"),
            )
            .await;
        let kinds: Vec<String> = list
            .as_array()?
            .iter()
            .map(|n| n["kind"].as_str().unwrap_or("").to_owned())
            .collect();
        (kinds.len() == 2).then_some(kinds)
    })
    .await;
    assert_eq!(kinds, ["OrderCancelled", "OrderPlaced"]);
    system.stop().await;
}

pub async fn an_order_nobody_pays_times_out_and_releases_its_stock(backend: Backend) {
    let settings = Settings {
        order_timeout: Duration::from_millis(800),
        ..Settings::default()
    };
    // No payment service: the reservation is never answered.
    let system = System::launch(
        backend,
        settings,
        &[
            ServiceKind::Order,
            ServiceKind::Inventory,
            ServiceKind::Notification,
            ServiceKind::Analytics,
        ],
    )
    .await;
    let order_id = system.place(&customer(), &[(MOUSE, 3, "25.00")]).await;
    eventually("the reservation", || async {
        let (status, _) = system
            .get(
                ServiceKind::Inventory,
                &format!("/api/inventory/reservations/{order_id}"),
            )
            .await;
        (status == 200).then_some(())
    })
    .await;
    let order = system.settled(&order_id).await;
    assert_eq!(order["status"], "Cancelled");
    assert_eq!(order["cancellationReason"], "timed out");
    eventually("the stock to come back", || async {
        let mouse = system.product(MOUSE).await;
        (mouse["availableQuantity"] == 500 && mouse["reservedQuantity"] == 0).then_some(())
    })
    .await;
    system.stop().await;
}

pub async fn sixty_orders_for_twenty_units_confirm_exactly_twenty(backend: Backend) {
    let system = System::launch(backend, patient(), &ServiceKind::ALL).await;
    let product = uuid::Uuid::new_v4().to_string();
    let (status, _) = system.put_product(&product, "Limited edition", 20).await;
    assert_eq!(status, 200);
    let placing = (0..60).map(|_| {
        let system = &system;
        let product = product.clone();
        async move { system.place(&customer(), &[(&product, 1, "10.00")]).await }
    });
    let order_ids = futures_util::future::join_all(placing).await;
    let mut confirmed = 0;
    let mut cancelled = 0;
    for order_id in &order_ids {
        let order = system.settled(order_id).await;
        match order["status"].as_str() {
            Some("Confirmed") => confirmed += 1,
            Some("Cancelled") => {
                assert_eq!(
                    order["cancellationReason"],
                    format!("insufficient stock for product {product}")
                );
                cancelled += 1;
            }
            other => panic!("unexpected status {other:?}"),
        }
    }
    assert_eq!((confirmed, cancelled), (20, 40));
    eventually("every reservation to be committed", || async {
        let p = system.product(&product).await;
        (p["reservedQuantity"] == 0).then_some(())
    })
    .await;
    assert_eq!(system.product(&product).await["availableQuantity"], 0);
    system.stop().await;
}

pub async fn analytics_counts_each_event_and_answers_ranges(backend: Backend) {
    let system = System::launch(backend, patient(), &ServiceKind::ALL).await;
    let confirmed = system.place(&customer(), &[(KEYBOARD, 2, "50.00")]).await;
    let cancelled = system.place(&customer(), &[(LAPTOP, 11, "999.99")]).await;
    system.settled(&confirmed).await;
    system.settled(&cancelled).await;
    let today = eventually("both outcomes counted", || async {
        let (_, today) = system
            .get(ServiceKind::Analytics, "/api/analytics/metrics/today")
            .await;
        (today["ordersConfirmed"] == 1 && today["ordersCancelled"] == 1).then_some(today)
    })
    .await;
    assert_eq!(today["ordersPlaced"], 2);
    assert_eq!(money(&today["revenue"]), Decimal::new(10000, 2));
    let date = chrono::Utc::now().date_naive();
    assert_eq!(today["date"], date.to_string());

    let from = date - chrono::Days::new(2);
    let (status, days) = system
        .get(
            ServiceKind::Analytics,
            &format!("/api/analytics/metrics/range?from={from}&to={date}"),
        )
        .await;
    assert_eq!(status, 200);
    let days = days.as_array().unwrap().clone();
    assert_eq!(days.len(), 3);
    assert_eq!(days[0]["date"], from.to_string());
    assert_eq!(days[0]["ordersPlaced"], 0);
    assert_eq!(days[2]["ordersPlaced"], 2);

    // Placed, reserved, processed, confirmed; placed, reserved, failed, cancelled, released.
    let recent = eventually("nine recent events", || async {
        let (_, recent) = system
            .get(ServiceKind::Analytics, "/api/analytics/events/recent")
            .await;
        (recent.as_array()?.len() == 9).then_some(recent)
    })
    .await;
    let times: Vec<&str> = recent
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["occurredAt"].as_str().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "newest first");
    let (_, two) = system
        .get(
            ServiceKind::Analytics,
            "/api/analytics/events/recent?limit=2",
        )
        .await;
    assert_eq!(two.as_array().unwrap().len(), 2);
    system.stop().await;
}

pub async fn each_invalid_field_answers_400_with_its_name(backend: Backend) {
    let system = System::launch(backend, patient(), &ServiceKind::ALL).await;
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

pub async fn bad_requests_answer_problem_json_never_500(backend: Backend) {
    let system = System::launch(backend, patient(), &ServiceKind::ALL).await;
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

pub async fn analytics_rejects_bad_ranges_and_limits(backend: Backend) {
    let system = System::launch(backend, patient(), &ServiceKind::ALL).await;
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

pub async fn an_idempotency_key_answers_the_same_order(backend: Backend) {
    let system = System::launch(backend, patient(), &ServiceKind::ALL).await;
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

pub async fn a_customers_orders_are_listed_newest_first(backend: Backend) {
    let system = System::launch(backend, patient(), &ServiceKind::ALL).await;
    let customer = customer();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(system.place(&customer, &[(KEYBOARD, 1, "49.99")]).await);
    }
    let other = system
        .place(&super::customer(), &[(KEYBOARD, 1, "49.99")])
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

pub async fn every_service_serves_health_openapi_and_scalar(backend: Backend) {
    let system = System::launch(backend, patient(), &ServiceKind::ALL).await;
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

/// The largest sample of `name` whose labels hold every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        // The recorder is the test process's: systems of the tests running beside this one
        // record series of the same names (their consumers under other prefixes).
        .reduce(f64::max)
}

pub async fn every_service_serves_metrics(backend: Backend) {
    let system = System::launch(backend, patient(), &ServiceKind::ALL).await;
    let order_id = system.place(&customer(), &[(LAPTOP, 1, "999.99")]).await;
    system.settled(&order_id).await;
    let mut texts = Vec::new();
    for kind in ServiceKind::ALL {
        let response = system
            .client
            .get(system.url(kind, "/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{kind:?}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let text = response.text().await.unwrap();
        assert!(
            text.contains("# TYPE http_requests_total counter"),
            "{text}"
        );
        texts.push((kind, text));
    }
    let order = &texts
        .iter()
        .find(|(kind, _)| *kind == ServiceKind::Order)
        .unwrap()
        .1;
    // By route template, method and status.
    let posted = sample(
        order,
        "http_requests_total",
        &["route=\"/api/orders\"", "method=\"POST\"", "status=\"201\""],
    );
    assert!(posted.is_some_and(|n| n >= 1.0), "{order}");
    // The order's own path names its template, not its id.
    assert!(
        order.contains("route=\"/api/orders/{order_id}\""),
        "{order}"
    );
    assert!(!order.contains(&order_id), "an id made a series: {order}");
    assert!(
        order.contains("http_request_duration_seconds_bucket{"),
        "{order}"
    );
    // The bus consumers' messages, by consumer: the inventory service took the order.
    let handled = sample(order, "es_messages_handled_total", &["inventory-service\""]);
    assert!(handled.is_some_and(|n| n >= 1.0), "{order}");
    assert!(
        order.contains("es_message_handling_seconds_bucket{consumer="),
        "{order}"
    );
    assert!(order.contains("es_relay_lag_seconds{relay="), "{order}");
    if backend == Backend::Real {
        // An order's appends commit with its listing rows (an inline projection), so they
        // take the transaction path: commits, not single-statement appends.
        let timed = |name| sample(order, name, &["backend=\"postgres\""]).unwrap_or(0.0);
        assert!(
            timed("es_store_commit_seconds_count") + timed("es_store_append_seconds_count") >= 1.0,
            "{order}"
        );
        assert!(
            sample(order, "es_pool_connections", &["state=\"idle\""]).is_some(),
            "{order}"
        );
        // Each read model's lag, counted by PostgreSQL at the scrape (within the scrape's
        // 2 s for such counts, which a loaded machine may miss: scrape again until then).
        let models = [
            "order-listing",
            "notification-listing",
            "analytics-figures",
            "product-catalog",
        ];
        let lags = |text: &str| {
            models.iter().all(|model| {
                let projection = format!("projection=\"{model}\"");
                ["es_read_model_lag_events", "es_read_model_lag_seconds"]
                    .iter()
                    .all(|name| sample(text, name, &[&projection, "phase=\"active\""]).is_some())
            })
        };
        eventually(
            "every read model's lag on the order service's /metrics",
            || async {
                let response = system
                    .client
                    .get(system.url(ServiceKind::Order, "/metrics"))
                    .send()
                    .await
                    .ok()?;
                let text = response.text().await.ok()?;
                lags(&text).then_some(())
            },
        )
        .await;
    }
    system.stop().await;
}

pub async fn products_are_seeded_and_can_be_stocked(backend: Backend) {
    let system = System::launch(backend, patient(), &ServiceKind::ALL).await;
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

/// The customer's listing, as answered: status, body, and the `Link: rel="next"` target.
async fn listing_page(
    system: &System,
    kind: ServiceKind,
    path: &str,
) -> (u16, Value, Option<String>) {
    let response = system
        .client
        .get(system.url(kind, path))
        .send()
        .await
        .expect("GET");
    let link = response
        .headers()
        .get("link")
        .map(|v| v.to_str().expect("ASCII link").to_owned());
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let (status, body) = read(response).await;
    if status >= 400 {
        assert_eq!(content_type, "application/problem+json", "{body}");
    }
    let next = link.map(|link| {
        assert!(link.ends_with(">; rel=\"next\""), "{link}");
        link[link.find('<').expect("<") + 1..link.find('>').expect(">")].to_owned()
    });
    (status, body, next)
}

fn ids_of(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|o| o["orderId"].as_str().expect("orderId").to_owned())
        .collect()
}

/// Read-your-writes: once `POST /api/orders` has answered 201, the customer's listing includes
/// the order at once (no waiting), also in a burst of writers; and a status the saga records
/// shows in the listing as soon as it shows on the order.
pub async fn a_placed_order_is_listed_as_soon_as_it_is_placed(backend: Backend) {
    let system = std::sync::Arc::new(System::launch(backend, patient(), &ServiceKind::ALL).await);
    let mut writers = Vec::new();
    for _ in 0..4 {
        let system = system.clone();
        writers.push(tokio::spawn(async move {
            let customer = customer();
            let mut placed = Vec::new();
            for _ in 0..10 {
                let id = system.place(&customer, &[(KEYBOARD, 1, "49.99")]).await;
                placed.push(id.clone());
                let (status, list, _) = listing_page(
                    &system,
                    ServiceKind::Order,
                    &format!("/api/orders/customer/{customer}"),
                )
                .await;
                assert_eq!(status, 200, "{list}");
                let mut expected = placed.clone();
                expected.reverse();
                assert_eq!(ids_of(&list), expected, "listed right after the 201");
            }
            (customer, placed)
        }));
    }
    let mut last = None;
    for writer in writers {
        last = Some(writer.await.expect("writer"));
    }
    let (customer, placed) = last.expect("a writer");
    let order = system.settled(&placed[0]).await;
    let (_, list, _) = listing_page(
        &system,
        ServiceKind::Order,
        &format!("/api/orders/customer/{customer}"),
    )
    .await;
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["orderId"] == order["orderId"])
        .expect("listed")
        .clone();
    assert!(
        listed["version"].as_u64() >= order["version"].as_u64(),
        "the listing lags the order: {listed} vs {order}"
    );
    assert_eq!(listed["status"], order["status"], "{listed} vs {order}");
    match std::sync::Arc::try_unwrap(system) {
        Ok(system) => system.stop().await,
        Err(_) => panic!("the system is still shared"),
    }
}

/// Walks `path` from its first page by its `Link`s; returns the ids in order and the page sizes.
/// `between` runs after each page (to add items while the walk goes on).
async fn walk(
    system: &System,
    kind: ServiceKind,
    first: &str,
    id_field: &str,
    mut between: impl FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) -> (Vec<String>, Vec<usize>) {
    let (mut ids, mut sizes) = (Vec::new(), Vec::new());
    let mut next = Some(first.to_owned());
    while let Some(path) = next.take() {
        let (status, list, link) = listing_page(system, kind, &path).await;
        assert_eq!(status, 200, "{path}: {list}");
        let page: Vec<String> = list
            .as_array()
            .expect("a JSON array")
            .iter()
            .map(|o| o[id_field].as_str().expect("id").to_owned())
            .collect();
        sizes.push(page.len());
        ids.extend(page);
        between().await;
        next = link;
        assert!(sizes.len() <= 100, "the walk does not end");
    }
    (ids, sizes)
}

/// Keyset pages: following `Link`s from the first page lists every order exactly once, newest
/// first, while new orders arrive; the last page has no `Link`; no parameters lists up to 100.
pub async fn customer_listings_are_paged_newest_first(backend: Backend) {
    let system = std::sync::Arc::new(System::launch(backend, patient(), &ServiceKind::ALL).await);
    let customer = customer();
    let mut originals = Vec::new();
    for _ in 0..10 {
        originals.push(system.place(&customer, &[(KEYBOARD, 1, "49.99")]).await);
    }
    originals.reverse();
    let arrivals = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (walked, sizes) = {
        let (system2, customer2, arrivals2) = (system.clone(), customer.clone(), arrivals.clone());
        walk(
            &system,
            ServiceKind::Order,
            &format!("/api/orders/customer/{customer}?limit=3"),
            "orderId",
            move || {
                let (system, customer, arrivals) =
                    (system2.clone(), customer2.clone(), arrivals2.clone());
                Box::pin(async move {
                    for _ in 0..2 {
                        let id = system.place(&customer, &[(KEYBOARD, 1, "49.99")]).await;
                        arrivals.lock().unwrap().push(id);
                    }
                })
            },
        )
        .await
    };
    assert_eq!(walked, originals, "every original once, newest first");
    assert_eq!(sizes, vec![3, 3, 3, 1]);
    // Without parameters: everything (under 100), newest first, and no `Link`.
    let (status, list, link) = listing_page(
        &system,
        ServiceKind::Order,
        &format!("/api/orders/customer/{customer}"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(link, None);
    let mut everything: Vec<String> = arrivals.lock().unwrap().clone();
    everything.reverse();
    everything.extend(originals.iter().cloned());
    assert_eq!(ids_of(&list), everything);
    // A page exactly as long as what is left has no `Link` either.
    let (_, list, link) = listing_page(
        &system,
        ServiceKind::Order,
        &format!("/api/orders/customer/{customer}?limit={}", everything.len()),
    )
    .await;
    assert_eq!((ids_of(&list).len(), link), (everything.len(), None));

    // Notifications: one per placed order (and more as they settle); walk one at a time.
    let total = everything.len();
    eventually("every order notified", || async {
        let (_, list) = system
            .get(
                ServiceKind::Notification,
                &format!("/api/notifications/customer/{customer}"),
            )
            .await;
        (list.as_array()?.len() >= total).then_some(())
    })
    .await;
    let (_, all, _) = listing_page(
        &system,
        ServiceKind::Notification,
        &format!("/api/notifications/customer/{customer}?limit=1000"),
    )
    .await;
    let all: Vec<String> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["notificationId"].as_str().unwrap().to_owned())
        .collect();
    let (walked, _) = walk(
        &system,
        ServiceKind::Notification,
        &format!("/api/notifications/customer/{customer}?limit=4"),
        "notificationId",
        || Box::pin(async {}),
    )
    .await;
    // Notifications keep arriving as orders settle: those the walk saw come in the order of
    // one listing of them all, each once.
    let unique: std::collections::HashSet<&String> = walked.iter().collect();
    assert_eq!(unique.len(), walked.len(), "no notification twice");
    let positions: Vec<usize> = walked
        .iter()
        .filter_map(|id| all.iter().position(|a| a == id))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "newest first");
    match std::sync::Arc::try_unwrap(system) {
        Ok(system) => system.stop().await,
        Err(_) => panic!("the system is still shared"),
    }
}

/// A bad `limit` or `cursor` answers 400 problem+json naming it, on both listings.
pub async fn bad_page_parameters_answer_400(backend: Backend) {
    let system = System::launch(
        backend,
        patient(),
        &[ServiceKind::Order, ServiceKind::Notification],
    )
    .await;
    let customer = customer();
    for (kind, base) in [
        (
            ServiceKind::Order,
            format!("/api/orders/customer/{customer}"),
        ),
        (
            ServiceKind::Notification,
            format!("/api/notifications/customer/{customer}"),
        ),
    ] {
        for (query, field) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=x", "limit"),
            ("limit=-1", "limit"),
            ("cursor=nope", "cursor"),
            ("limit=5&cursor=00", "cursor"),
        ] {
            let (status, body, link) =
                listing_page(&system, kind, &format!("{base}?{query}")).await;
            assert_problem(status, &body, 400);
            assert!(body["errors"][field].is_array(), "{query}: {body}");
            assert_eq!(link, None);
        }
        for query in ["limit=1", "limit=1000", ""] {
            let (status, body, _) = listing_page(&system, kind, &format!("{base}?{query}")).await;
            assert_eq!((status, body), (200, json!([])), "{query}");
        }
    }
    system.stop().await;
}
