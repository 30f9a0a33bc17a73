//! CONTRACT.md against the running services, so that neither drifts from the other: each
//! service section lists exactly the operations of that service's `/openapi.json`, the
//! endpoints of "Every service" answer on all five, and every routing key and setting the
//! binary has is listed.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::CommandFactory;
use order_processing_example::{Backends, Cli, Service, ServiceKind, Settings};
use serde_json::Value;
use tower::ServiceExt;

const CONTRACT: &str = include_str!("../CONTRACT.md");

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// `(METHOD, /path)` of every `` `METHOD /path…` `` span in `text`, the query string dropped.
fn operations(text: &str) -> BTreeSet<(String, String)> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|span| {
            let (method, rest) = span.split_once(' ')?;
            if !METHODS.contains(&method) || !rest.starts_with('/') {
                return None;
            }
            let path = rest.split(['?', ' ']).next().unwrap_or(rest);
            Some((method.to_owned(), path.to_owned()))
        })
        .collect()
}

/// The document's `## ` sections by heading.
fn sections() -> BTreeMap<String, String> {
    let mut sections = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in CONTRACT.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            if let Some((name, body)) = current.take() {
                sections.insert(name, body);
            }
            current = Some((heading.trim().to_owned(), String::new()));
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    if let Some((name, body)) = current {
        sections.insert(name, body);
    }
    sections
}

/// The section of a service, found by the port in its heading (`## Order service (5001)`).
fn service_section(kind: ServiceKind) -> String {
    let port = kind.port(&Settings::default());
    let sections = sections();
    let mut found = sections
        .iter()
        .filter(|(heading, _)| heading.ends_with(&format!("({port})")));
    let (_, body) = found
        .next()
        .unwrap_or_else(|| panic!("CONTRACT.md has no section headed `… ({port})`"));
    assert!(found.next().is_none(), "two sections for port {port}");
    body.clone()
}

async fn get(service: &Service, path: &str) -> (StatusCode, String) {
    let request = Request::get(path).body(Body::empty()).expect("request");
    let response = service.router().oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// The operations a service's served `/openapi.json` documents.
async fn documented(service: &Service) -> BTreeSet<(String, String)> {
    let (status, text) = get(service, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let document: Value = serde_json::from_str(&text).expect("the document is JSON");
    let paths = document["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("a path item")
                .keys()
                .filter(|key| METHODS.contains(&key.to_uppercase().as_str()))
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect()
}

#[tokio::test]
async fn each_service_section_lists_exactly_the_operations_of_its_openapi_document() {
    let backends = Backends::embedded();
    let mut problems = Vec::new();
    for kind in ServiceKind::ALL {
        let service = Service::start(kind, &backends, &Settings::default())
            .await
            .expect("start");
        let served = documented(&service).await;
        let written = operations(&service_section(kind));
        assert!(!served.is_empty(), "{kind:?} documents no operation");
        for (method, path) in served.difference(&written) {
            problems.push(format!(
                "{kind:?}: `{method} {path}` is served but not in CONTRACT.md"
            ));
        }
        for (method, path) in written.difference(&served) {
            problems.push(format!(
                "{kind:?}: `{method} {path}` is in CONTRACT.md but not in /openapi.json"
            ));
        }
        service.stop().await;
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test]
async fn every_service_answers_the_endpoints_every_service_has() {
    let common = operations(&sections()["Every service"]);
    assert!(
        common.contains(&("GET".to_owned(), "/openapi.json".to_owned())),
        "{common:?}"
    );
    let backends = Backends::embedded();
    for kind in ServiceKind::ALL {
        let service = Service::start(kind, &backends, &Settings::default())
            .await
            .expect("start");
        for (method, path) in &common {
            assert_eq!(method, "GET", "only GETs are common");
            let (status, text) = get(&service, path).await;
            assert_eq!(status, StatusCode::OK, "{kind:?} GET {path}: {text}");
        }
        service.stop().await;
    }
}

#[test]
fn every_routing_key_is_listed_with_its_event_type() {
    for (event_type, key) in order_processing_example::events::WIRE_EVENTS {
        let row = format!("| `{event_type}` | `{key}`");
        assert!(CONTRACT.contains(&row), "CONTRACT.md lacks the row {row}");
    }
}

#[test]
fn every_setting_of_the_binary_is_listed_with_its_variable() {
    for arg in Cli::command().get_arguments() {
        if arg.is_hide_set() {
            continue;
        }
        let Some(var) = arg.get_env().and_then(|var| var.to_str()) else {
            continue;
        };
        assert!(
            CONTRACT.contains(&format!("`{var}`")),
            "CONTRACT.md does not name the variable {var}"
        );
        if let Some(long) = arg.get_long() {
            // The ports are written as a range (`--order-port` … `--analytics-port`).
            let listed = CONTRACT.contains(&format!("`--{long}`")) || long.ends_with("-port");
            assert!(listed, "CONTRACT.md does not name the flag --{long}");
        }
    }
}
