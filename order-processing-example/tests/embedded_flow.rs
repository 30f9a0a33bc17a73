//! The saga on the embedded backends: every way an order can end.

mod common;

use std::time::Duration;

use common::*;
use order_processing_example::{ServiceKind, Settings};
use rust_decimal::Decimal;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_order_is_confirmed_notified_and_counted() {
    let system = System::embedded().await;
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
    assert_eq!(order["version"], 4);

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
    assert_eq!(
        types,
        [
            "OrderPlaced",
            "OrderInventoryReserved",
            "OrderPaymentProcessed",
            "OrderConfirmed"
        ]
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_stock_cancels_the_order_and_changes_no_stock() {
    let system = System::embedded().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_product_cancels_the_order() {
    let system = System::embedded().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_cancels_the_order_and_restores_the_stock() {
    let system = System::embedded().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_nobody_pays_times_out_and_releases_its_stock() {
    let settings = Settings {
        order_timeout: Duration::from_millis(800),
        ..Settings::default()
    };
    // No payment service: the reservation is never answered.
    let system = System::embedded_with(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_orders_for_twenty_units_confirm_exactly_twenty() {
    let system = System::embedded().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_counts_each_event_and_answers_ranges() {
    let system = System::embedded().await;
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
