//! The server's guards against slow and many clients: a request head that stalls closes its
//! connection, a body that stalls is answered 408, and past the connection cap clients wait
//! until a connection closes. Each test serves one service on the embedded backends.

mod common;

use std::time::{Duration, Instant};

use order_processing_example::http::{serve, ServeLimits};
use order_processing_example::{Backends, Service, ServiceKind, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Served {
    address: std::net::SocketAddr,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
}

async fn inventory_within(limits: ServeLimits) -> Served {
    let service = Service::start(
        ServiceKind::Inventory,
        &Backends::embedded(),
        &Settings::default(),
    )
    .await
    .expect("start the inventory");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(
        listener,
        service.router(),
        shutdown.clone().cancelled_owned(),
        limits,
    ));
    Served {
        address,
        shutdown,
        server,
    }
}

/// Reads what the server sends until it closes the connection, for at most `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut answer = Vec::new();
    match tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await {
        Ok(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
        Err(_) => None,
    }
}

async fn health(address: std::net::SocketAddr) -> reqwest::StatusCode {
    common::client()
        .get(format!("http://{address}/health"))
        .send()
        .await
        .expect("GET /health")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_in_its_request_head_is_disconnected_while_others_are_served() {
    let served = inventory_within(ServeLimits {
        header_read_timeout: Duration::from_millis(500),
        ..ServeLimits::default()
    })
    .await;
    let mut slow = TcpStream::connect(served.address).await.expect("connect");
    slow.write_all(b"GET /health HT")
        .await
        .expect("half a request line");
    let started = Instant::now();
    // Others are served meanwhile.
    assert_eq!(health(served.address).await, 200);
    let answer = read_until_closed(&mut slow, Duration::from_secs(5))
        .await
        .expect("the stalled connection to be closed");
    let waited = started.elapsed();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "closed with {answer:?}"
    );
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    served.shutdown.cancel();
    served.server.await.expect("join").expect("serve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_body_stalls_is_answered_408_problem_json() {
    // As `main` does: the recorder must be in place before the request is counted.
    order_processing_example::telemetry::install();
    let served = inventory_within(ServeLimits {
        request_timeout: Duration::from_millis(500),
        ..ServeLimits::default()
    })
    .await;
    let mut slow = TcpStream::connect(served.address).await.expect("connect");
    let head = "PUT /api/inventory/products/11111111-1111-1111-1111-111111111111 HTTP/1.1\r\n\
                host: localhost\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n";
    slow.write_all(head.as_bytes()).await.expect("head");
    slow.write_all(b"{\"name\":").await.expect("a little body");
    let started = Instant::now();
    let answer = read_until_closed(&mut slow, Duration::from_secs(5))
        .await
        .expect("an answer within the timeout");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // The timed-out request is counted like any other answer.
    let metrics = common::client()
        .get(format!("http://{}/metrics", served.address))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics");
    let timed_out = metrics.lines().find(|line| {
        line.starts_with("http_requests_total{")
            && line.contains("route=\"/api/inventory/products/{product_id}\"")
            && line.contains("status=\"408\"")
    });
    assert!(timed_out.is_some(), "no 408 in {metrics}");
    served.shutdown.cancel();
    served.server.await.expect("join").expect("serve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_a_client_waits_until_a_connection_closes() {
    let served = inventory_within(ServeLimits {
        max_connections: 2,
        ..ServeLimits::default()
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(served.address).await.expect("connect");
        // One whole request on each, so both are surely accepted and held open (keep-alive).
        stream
            .write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .expect("request");
        let mut buffer = [0u8; 12];
        stream.read_exact(&mut buffer).await.expect("answer");
        assert_eq!(&buffer, b"HTTP/1.1 200");
        open.push(stream);
    }
    let address = served.address;
    let third = tokio::spawn(async move { health(address).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served past the cap of two"
    );
    drop(open.pop());
    let status = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a connection closed")
        .expect("join");
    assert_eq!(status, 200);
    drop(open);
    served.shutdown.cancel();
    served.server.await.expect("join").expect("serve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_and_returns() {
    let served = inventory_within(ServeLimits::default()).await;
    let mut idle = TcpStream::connect(served.address).await.expect("connect");
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("request");
    let mut buffer = [0u8; 12];
    idle.read_exact(&mut buffer).await.expect("answer");
    served.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), served.server)
        .await
        .expect("the server to stop with a connection still open")
        .expect("join")
        .expect("serve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_read_timeout() {
    let served = inventory_within(ServeLimits {
        header_read_timeout: Duration::from_millis(500),
        ..ServeLimits::default()
    })
    .await;
    let mut idle = TcpStream::connect(served.address).await.expect("connect");
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("request");
    let started = Instant::now();
    let answer = read_until_closed(&mut idle, Duration::from_secs(5))
        .await
        .expect("the idle connection to be closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));
    served.shutdown.cancel();
    served.server.await.expect("join").expect("serve");
}
