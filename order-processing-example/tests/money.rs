//! Money over HTTP, byte for byte: amounts go out as exact JSON numbers with two decimals and
//! come in read from the text the client wrote (serde_json's `arbitrary_precision` is off).

mod common;

use common::{customer, money, System, KEYBOARD, LAPTOP, MOUSE};
use order_processing_example::ServiceKind;
use rust_decimal::Decimal;
use serde_json::Value;

/// Posts `body` as written and returns the status and the answer's text.
async fn post_text(system: &System, body: &str) -> (u16, String) {
    let response = system
        .client
        .post(system.url(ServiceKind::Order, "/api/orders"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("POST");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// An order body with lines of (product, quantity, price), each written as given.
fn order_text(customer: &str, lines: Lines) -> String {
    let items: Vec<String> = lines
        .iter()
        .map(|(product, quantity, price)| {
            format!(
                r#"{{"productId":"{product}","productName":"Thing","quantity":{quantity},"unitPrice":{price}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"customerId":"{customer}","items":[{}]}}"#,
        items.join(",")
    )
}

/// Order lines as (product, quantity, price), each written as given.
type Lines<'a> = &'a [(&'a str, &'a str, &'a str)];

fn decimal(text: &str) -> Decimal {
    text.parse().expect("a decimal")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amounts_are_answered_as_exact_numbers_with_two_decimals() {
    let system = System::embedded().await;
    let cases: [(Lines, &str); 3] = [
        // 0.1 + 0.2 is 0.30000000000000004 in f64.
        (&[(LAPTOP, "1", "0.1"), (MOUSE, "1", "0.2")], "0.30"),
        (&[(LAPTOP, "1", "999.99")], "999.99"),
        (&[(KEYBOARD, "3", "1000000.00")], "3000000.00"),
    ];
    for (lines, total) in cases {
        let (status, text) = post_text(&system, &order_text(&customer(), lines)).await;
        assert_eq!(status, 201, "{text}");
        assert!(
            text.contains(&format!(r#""totalAmount":{total},"#)),
            "total {total} written exactly in {text}"
        );
        let first_price = match lines[0].2 {
            "0.1" => "0.10",
            other => other,
        };
        assert!(
            text.contains(&format!(r#""unitPrice":{first_price}}}"#)),
            "price {first_price} written exactly in {text}"
        );
    }
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_two_decimals_answer_400_however_far_out_they_are() {
    let system = System::embedded().await;
    for price in [
        "1.234",
        // f64 holds this as 0.1: only the text shows the third and later decimals.
        "0.10000000000000000001",
        "999.990000000000000001",
    ] {
        let (status, text) =
            post_text(&system, &order_text(&customer(), &[(MOUSE, "1", price)])).await;
        assert_eq!(status, 400, "{price}: {text}");
        let answer: Value = serde_json::from_str(&text).expect("problem+json");
        assert_eq!(
            answer["errors"]["items[0].unitPrice"][0], "must have at most two decimals",
            "{price}: {text}"
        );
    }
    // A quantity that f64 would round to a whole number is not one.
    let (status, text) = post_text(
        &system,
        &order_text(&customer(), &[(MOUSE, "1.0000000000000000001", "1.00")]),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("items[0].quantity"), "{text}");
    // A key written as the path of another number does not stand in for it.
    let body = format!(
        r#"{{"items[0].unitPrice":0.1,"customerId":"{}","items":[{{"productId":"{MOUSE}","productName":"Thing","quantity":1,"unitPrice":0.123}}]}}"#,
        customer()
    );
    let (status, text) = post_text(&system, &body).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("must have at most two decimals"), "{text}");
    // Trailing zeros are not decimals that matter.
    let (status, text) = post_text(
        &system,
        &order_text(&customer(), &[(MOUSE, "2.0", "12.500")]),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    assert!(text.contains(r#""totalAmount":25.00,"#), "{text}");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amount_stays_exact_through_the_events_the_payment_and_analytics() {
    let system = System::embedded().await;
    let (status, text) = post_text(
        &system,
        &order_text(&customer(), &[(MOUSE, "3", "0.1"), (KEYBOARD, "1", "0.2")]),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    let order: Value = serde_json::from_str(&text).expect("the order");
    let order_id = order["orderId"].as_str().expect("orderId").to_owned();
    let settled = system.settled(&order_id).await;
    assert_eq!(settled["status"], "Confirmed", "{settled}");
    assert_eq!(money(&settled["totalAmount"]), decimal("0.50"));

    // The stored event carries the amount as a number that reads back as 0.50 exactly.
    let (status, events) = system
        .get(
            ServiceKind::Order,
            &format!("/api/orders/{order_id}/events"),
        )
        .await;
    assert_eq!(status, 200, "{events}");
    assert_eq!(money(&events[0]["data"]["totalAmount"]), decimal("0.50"));

    // The payment answers the charge written with two decimals.
    let response = system
        .client
        .get(system.url(
            ServiceKind::Payment,
            &format!("/api/payments/order/{order_id}"),
        ))
        .send()
        .await
        .expect("GET");
    let text = response.text().await.expect("body");
    assert!(text.contains(r#""amount":0.50,"#), "{text}");
    system.stop().await;
}
