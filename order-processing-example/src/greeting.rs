//! The few lines a started system prints before its log: where each service answers, which
//! backends hold the data, and one order to place.

use std::fmt::Write;
use std::net::SocketAddr;

use crate::backends::redact;
use crate::config::Settings;
use crate::service_kind::ServiceKind;

/// An order the seeded catalogue accepts, for the greeting's `curl` line.
pub const SAMPLE_ORDER: &str = r#"{"customerId":"aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa","items":[{"productId":"11111111-1111-1111-1111-111111111111","productName":"Laptop","quantity":1,"unitPrice":999.99}]}"#;

/// The greeting for `services`, each bound at its address, on the backends of `settings`.
/// Secrets in backend URLs are hidden.
pub fn greeting(services: &[(ServiceKind, SocketAddr)], settings: &Settings) -> String {
    let mut text = String::new();
    let what = match services {
        [(kind, _)] => format!("the {} service", kind.name()),
        _ => format!("{} services", count(services.len())),
    };
    let _ = writeln!(
        text,
        "order-processing {}: {what} on {}",
        env!("CARGO_PKG_VERSION"),
        settings.host
    );
    for (kind, address) in services {
        let url = format!("http://{address}");
        let _ = writeln!(
            text,
            "  {:<13} {url:<24} API docs {url}/scalar",
            kind.name()
        );
    }
    text.push_str(&backends(settings));
    let try_line = match services.iter().find(|(kind, _)| *kind == ServiceKind::Order) {
        Some((_, address)) => format!(
            "curl -s -X POST http://{address}/api/orders -H 'content-type: application/json' -d '{SAMPLE_ORDER}'"
        ),
        None => match services.first() {
            Some((_, address)) => format!("curl -s http://{address}/health"),
            None => return text,
        },
    };
    let _ = writeln!(text, "try:  {try_line}");
    text
}

/// Prints the [`greeting`] on stdout in one write, so no log line lands inside it.
pub fn print(services: &[(ServiceKind, SocketAddr)], settings: &Settings) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    // A closed stdout is no reason not to serve.
    let _ = out.write_all(greeting(services, settings).as_bytes());
    let _ = out.flush();
}

/// The backends line(s): all embedded, or each part named with its (redacted) URL.
fn backends(settings: &Settings) -> String {
    let parts = [
        (
            "event store",
            "PostgreSQL",
            &settings.database_url,
            "in memory: gone when the process exits",
        ),
        (
            "event bus",
            "RabbitMQ",
            &settings.amqp_url,
            "in memory: reaches only this process",
        ),
        (
            "cache",
            "Redis",
            &settings.redis_url,
            if settings.database_url.is_some() || settings.amqp_url.is_some() {
                // Beside other processes an in-process cache would go stale.
                "none: reads go to the event store"
            } else {
                "in memory"
            },
        ),
    ];
    if parts.iter().all(|(_, _, url, _)| url.is_none()) {
        return "backends: embedded (in-memory event store, bus and cache: the data lives in \
                this process and is gone when it exits)\n"
            .to_owned();
    }
    let mut text = String::from("backends:\n");
    for (part, name, url, otherwise) in parts {
        let _ = match url {
            Some(url) => writeln!(text, "  {part:<13} {name:<11} {}", redact(url)),
            None => writeln!(text, "  {part:<13} {otherwise}"),
        };
    }
    text
}

fn count(n: usize) -> String {
    match n {
        5 => "five".to_owned(),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_five() -> Vec<(ServiceKind, SocketAddr)> {
        ServiceKind::ALL
            .iter()
            .enumerate()
            .map(|(i, &kind)| (kind, SocketAddr::from(([127, 0, 0, 1], 5001 + i as u16))))
            .collect()
    }

    /// The JSON body of the greeting's `curl` line.
    fn curl_body(text: &str) -> serde_json::Value {
        let line = text
            .lines()
            .find(|line| line.starts_with("try:  curl"))
            .expect("a curl line");
        let body = line
            .split_once(" -d '")
            .and_then(|(_, rest)| rest.strip_suffix('\''))
            .expect("a quoted -d body");
        serde_json::from_str(body).expect("the body is JSON")
    }

    fn assert_every_service(text: &str) {
        for port in 5001..=5005 {
            let url = format!("http://127.0.0.1:{port}");
            assert!(text.contains(&format!("{url} ")), "{url} in\n{text}");
            assert!(
                text.contains(&format!("{url}/scalar")),
                "{url}/scalar in\n{text}"
            );
        }
        for kind in ServiceKind::ALL {
            assert!(text.contains(kind.name()), "{} in\n{text}", kind.name());
        }
    }

    #[test]
    fn embedded_names_every_service_and_says_the_data_is_gone_on_exit() {
        let text = greeting(&all_five(), &Settings::default());
        assert!(
            text.starts_with(&format!(
                "order-processing {}: five services on 127.0.0.1\n",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert_every_service(&text);
        assert!(text.contains("backends: embedded"), "{text}");
        assert!(text.contains("gone when it exits"), "{text}");
        let line = text.lines().last().unwrap();
        assert!(
            line.starts_with("try:  curl -s -X POST http://127.0.0.1:5001/api/orders "),
            "{line}"
        );
        let body = curl_body(&text);
        let order = crate::order::validate_place_order(&body.into())
            .expect("the curl body is a valid POST /api/orders body");
        assert_eq!(order.items.len(), 1);
    }

    #[test]
    fn real_backends_are_named_with_their_secrets_hidden() {
        let settings = Settings {
            database_url: Some("postgres://app:pg-secret@db:5432/orders".into()),
            amqp_url: Some("amqp://guest:mq-secret@mq:5672/%2f".into()),
            redis_url: Some("redis://:redis-secret@cache:6379/0?token=tok-secret".into()),
            ..Settings::default()
        };
        let text = greeting(&all_five(), &settings);
        for secret in ["pg-secret", "mq-secret", "redis-secret", "tok-secret"] {
            assert!(!text.contains(secret), "{secret} shown in\n{text}");
        }
        assert!(!text.contains("embedded"), "{text}");
        for (name, host) in [
            ("PostgreSQL", "db:5432"),
            ("RabbitMQ", "mq:5672"),
            ("Redis", "cache:6379"),
        ] {
            let line = text
                .lines()
                .find(|line| line.contains(name))
                .unwrap_or_else(|| panic!("{name} in\n{text}"));
            assert!(line.contains(host), "{line}");
        }
        assert_every_service(&text);
        crate::order::validate_place_order(&curl_body(&text).into()).expect("a valid order body");
    }

    #[test]
    fn a_lone_service_is_named_and_a_missing_part_stays_in_memory() {
        let settings = Settings {
            amqp_url: Some("amqp://guest:guest@localhost:5672/%2f".into()),
            ..Settings::default()
        };
        let payment = [(
            ServiceKind::Payment,
            SocketAddr::from(([127, 0, 0, 1], 5003)),
        )];
        let text = greeting(&payment, &settings);
        assert!(
            text.contains(": the payment service on 127.0.0.1"),
            "{text}"
        );
        assert!(text.contains("http://127.0.0.1:5003/scalar"), "{text}");
        assert!(text.contains("event store   in memory"), "{text}");
        assert!(text.contains("RabbitMQ"), "{text}");
        assert!(!text.contains("guest:guest"), "{text}");
        assert!(
            text.ends_with("try:  curl -s http://127.0.0.1:5003/health\n"),
            "{text}"
        );
    }
}
