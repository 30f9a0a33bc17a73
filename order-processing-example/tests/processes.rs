//! The system as five processes of the `order-processing` binary on PostgreSQL, RabbitMQ and
//! Redis: the flow across processes, a service killed with SIGKILL mid-flow and restarted, an
//! undecodable message on the exchange, graceful shutdown, and a lone service with no broker.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::processes::*;
use common::*;
use es_core::DeadLetterQueue;
use order_processing_example::{ServiceKind, Settings};
use tokio::process::{Child, Command};

/// Five service processes sharing one isolated set of names on the real backends.
/// At most two clusters at once: each is five or more processes, and the machine has few cores.
static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

struct Cluster {
    /// Dropped last, also when a test panics.
    schema: SchemaGuard,
    _slot: tokio::sync::SemaphorePermit<'static>,
    settings: Settings,
    ports: HashMap<ServiceKind, u16>,
    children: HashMap<ServiceKind, Child>,
    /// Extra instances (competing consumers on their service's queue).
    extra: Vec<Child>,
}

impl Cluster {
    async fn start(settings: Settings) -> Cluster {
        let settings = isolated(settings);
        let schema = SchemaGuard(settings.database_schema.clone());
        // Fail early, with a way out, when a backend is missing.
        drop(connect(&settings).await);
        let ports = ServiceKind::ALL.iter().map(|&k| (k, free_port())).collect();
        let slot = SLOTS
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let mut cluster = Cluster {
            schema,
            _slot: slot,
            settings,
            ports,
            children: HashMap::new(),
            extra: Vec::new(),
        };
        for kind in ServiceKind::ALL {
            cluster.spawn(kind);
        }
        for kind in ServiceKind::ALL {
            cluster.wait_healthy(kind).await;
        }
        cluster
    }

    fn spawn(&mut self, kind: ServiceKind) {
        let child = spawn_service(kind, &self.settings, self.ports[&kind]);
        self.children.insert(kind, child);
    }

    /// Starts one more instance of `kind` on a port of its own; returns the port.
    fn spawn_extra(&mut self, kind: ServiceKind) -> u16 {
        let port = free_port();
        let child = spawn_service(kind, &self.settings, port);
        self.extra.push(child);
        port
    }

    async fn wait_healthy(&self, kind: ServiceKind) {
        let what = format!("{} to be healthy", kind.name());
        wait_healthy(self.ports[&kind], &what).await;
    }

    fn system(&self) -> System {
        System::at(
            self.ports
                .iter()
                .map(|(&k, port)| (k, format!("http://127.0.0.1:{port}")))
                .collect(),
        )
    }

    async fn kill(&mut self, kind: ServiceKind) {
        let mut child = self.children.remove(&kind).expect("a running service");
        child.kill().await.expect("SIGKILL");
    }

    async fn stop(mut self) {
        for (_, mut child) in self.children.drain() {
            let _ = child.kill().await;
        }
        for mut child in self.extra.drain(..) {
            let _ = child.kill().await;
        }
        drop(self.schema);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_processes_confirm_one_order_and_cancel_another() {
    let cluster = Cluster::start(patient()).await;
    let system = cluster.system();
    let customer = customer();
    let paid = system.place(&customer, &[(LAPTOP, 1, "999.99")]).await;
    let declined = system.place(&customer, &[(MONITOR, 50, "300.00")]).await;
    assert_eq!(system.settled(&paid).await["status"], "Confirmed");
    let cancelled = system.settled(&declined).await;
    assert_eq!(
        cancelled["cancellationReason"],
        "payment declined: amount exceeds limit"
    );
    eventually("the monitors to come back", || async {
        let monitor = system.product(MONITOR).await;
        (monitor["availableQuantity"] == 50 && monitor["reservedQuantity"] == 0).then_some(())
    })
    .await;
    eventually("four notifications", || async {
        let (_, list) = system
            .get(
                ServiceKind::Notification,
                &format!("/api/notifications/customer/{customer}"),
            )
            .await;
        (list.as_array()?.len() == 4).then_some(())
    })
    .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_inventory_processes_never_sell_twenty_units_twice() {
    let mut cluster = Cluster::start(patient()).await;
    // A second inventory and a second order service compete for their queues.
    let inventory = cluster.spawn_extra(ServiceKind::Inventory);
    let order = cluster.spawn_extra(ServiceKind::Order);
    for port in [inventory, order] {
        wait_healthy(port, "the second instance to be healthy").await;
    }
    let system = cluster.system();
    let product = uuid::Uuid::new_v4().to_string();
    assert_eq!(system.put_product(&product, "Limited", 20).await.0, 200);
    let placing = (0..60).map(|_| {
        let system = &system;
        let product = product.clone();
        async move { system.place(&customer(), &[(&product, 1, "10.00")]).await }
    });
    let order_ids = futures_util::future::join_all(placing).await;
    let mut confirmed = 0;
    for order_id in &order_ids {
        if system.settled(order_id).await["status"] == "Confirmed" {
            confirmed += 1;
        }
    }
    assert_eq!(confirmed, 20);
    eventually("every reservation committed", || async {
        let p = system.product(&product).await;
        (p["reservedQuantity"] == 0).then_some(p)
    })
    .await;
    assert_eq!(system.product(&product).await["availableQuantity"], 0);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_killed_mid_flow_lose_nothing_and_do_nothing_twice() {
    let mut cluster = Cluster::start(patient()).await;
    let system = cluster.system();
    let customer = customer();
    let mut orders = Vec::new();
    for _ in 0..10 {
        orders.push(system.place(&customer, &[(KEYBOARD, 1, "10.00")]).await);
    }
    // Kill the saga's home and the gateway while the orders are in flight, then more orders
    // pile up in their queues before they come back.
    cluster.kill(ServiceKind::Payment).await;
    cluster.kill(ServiceKind::Order).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.spawn(ServiceKind::Order);
    cluster.wait_healthy(ServiceKind::Order).await;
    for _ in 0..10 {
        orders.push(system.place(&customer, &[(KEYBOARD, 1, "10.00")]).await);
    }
    cluster.kill(ServiceKind::Inventory).await;
    cluster.spawn(ServiceKind::Payment);
    cluster.spawn(ServiceKind::Inventory);
    cluster.wait_healthy(ServiceKind::Payment).await;
    cluster.wait_healthy(ServiceKind::Inventory).await;

    for order_id in &orders {
        let order = system.settled(order_id).await;
        assert_eq!(order["status"], "Confirmed", "{order}");
        let (status, payment) = system
            .get(
                ServiceKind::Payment,
                &format!("/api/payments/order/{order_id}"),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(payment["status"], "Succeeded");
    }
    eventually("20 keyboards sold, none held", || async {
        let keyboard = system.product(KEYBOARD).await;
        (keyboard["availableQuantity"] == 180 && keyboard["reservedQuantity"] == 0).then_some(())
    })
    .await;
    // Exactly one notification per order and kind, whatever was redelivered.
    let list = eventually("40 notifications", || async {
        let (_, list) = system
            .get(
                ServiceKind::Notification,
                &format!("/api/notifications/customer/{customer}"),
            )
            .await;
        (list.as_array()?.len() >= 40).then_some(list)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, list_after) = system
        .get(
            ServiceKind::Notification,
            &format!("/api/notifications/customer/{customer}"),
        )
        .await;
    assert_eq!(
        list_after.as_array().map(Vec::len),
        list.as_array().map(Vec::len)
    );
    assert_eq!(list.as_array().unwrap().len(), 40);
    let (_, today) = system
        .get(ServiceKind::Analytics, "/api/analytics/metrics/today")
        .await;
    assert_eq!(today["ordersPlaced"], 20, "{today}");
    eventually("20 confirmations counted once", || async {
        let (_, today) = system
            .get(ServiceKind::Analytics, "/api/analytics/metrics/today")
            .await;
        (today["ordersConfirmed"] == 20).then_some(())
    })
    .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_message_goes_to_the_dead_letter_queue_while_orders_complete() {
    use lapin::options::BasicPublishOptions;
    use lapin::BasicProperties;

    let cluster = Cluster::start(patient()).await;
    let system = cluster.system();
    let properties = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    let connection = lapin::Connection::connect(&amqp_url(), properties)
        .await
        .expect("a raw AMQP connection");
    let channel = connection.create_channel().await.expect("a channel");
    channel
        .basic_publish(
            &cluster.settings.exchange,
            "order.placed",
            BasicPublishOptions::default(),
            b"{this is not an event",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let order_id = system.place(&customer(), &[(MOUSE, 2, "25.00")]).await;
    assert_eq!(system.settled(&order_id).await["status"], "Confirmed");

    let bus = es_rabbitmq::AmqpEventBus::new(es_rabbitmq::AmqpConfig::new(
        amqp_url(),
        cluster.settings.exchange.clone(),
    ));
    let inventory_queue = format!("{}inventory-service", cluster.settings.queue_prefix);
    let dead = eventually("the dead letter", || async {
        let dlq = bus_dead_letters(&bus, &inventory_queue).await;
        (!dlq.is_empty()).then_some(dlq)
    })
    .await;
    assert_eq!(&dead[0].body[..], b"{this is not an event");
    assert!(dead[0].event.is_none());
    // Every consumer bound to `order.placed` dead-lettered it, and still works.
    for service in ["order", "notification", "analytics"] {
        let queue = format!("{}{service}-service", cluster.settings.queue_prefix);
        assert_eq!(bus_dead_letters(&bus, &queue).await.len(), 1, "{queue}");
    }
    let later = system.place(&customer(), &[(MOUSE, 1, "25.00")]).await;
    assert_eq!(system.settled(&later).await["status"], "Confirmed");
    let _ = connection.close(0, "done").await;
    cluster.stop().await;
}

async fn bus_dead_letters(
    bus: &es_rabbitmq::AmqpEventBus,
    queue: &str,
) -> Vec<es_core::DeadLetter> {
    bus.dead_letters(queue, 10).await.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_service_cleanly() {
    let mut cluster = Cluster::start(patient()).await;
    let mut child = cluster
        .children
        .remove(&ServiceKind::Analytics)
        .expect("analytics");
    assert!(sigterm(&child).success());
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the service to exit within 10 s")
        .expect("an exit status");
    assert!(exit.success(), "{exit:?}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_service_without_a_broker_exits_at_once_saying_why() {
    let output = tokio::time::timeout(
        Duration::from_secs(10),
        Command::new(BINARY)
            .arg("payment")
            .env_remove("AMQP_URL")
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .output(),
    )
    .await
    .expect("it exits at once")
    .expect("it runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--amqp-url"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_gives_503_health_and_no_crash() {
    let port = free_port();
    let mut child = all_services(port)
        // Nothing listens on port 1: the store cannot be reached.
        .args([
            "--database-url",
            "postgres://postgres:postgres@127.0.0.1:1/postgres",
        ])
        .env_remove("AMQP_URL")
        .env_remove("REDIS_URL")
        .env("RUST_LOG", "error")
        .spawn()
        .expect("spawn");
    let client = &client();
    let url = &format!("http://127.0.0.1:{port}/health");
    let health = eventually("a 503 health answer", || {
        // A service that exited (on its port, say) never answers: say so at once.
        let exited = child.try_wait().expect("status");
        async move {
            assert!(exited.is_none(), "the service exited: {exited:?}");
            let response = client.get(url).send().await.ok()?;
            (response.status() == 503).then_some(())?;
            response.json::<serde_json::Value>().await.ok()
        }
    })
    .await;
    assert_eq!(health["status"], "Unhealthy");
    let description = health["entries"]["eventStore"]["description"].to_string();
    assert!(
        description.contains("127.0.0.1:1") && !description.contains("postgres:postgres@"),
        "{description}"
    );
    let (status, problem) = read(
        client
            .get(format!("http://127.0.0.1:{port}/api/orders/x"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, &problem["status"]), (503, &serde_json::json!(503)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(child.try_wait().expect("status").is_none(), "still running");
    sigterm(&child);
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits on SIGTERM")
        .expect("status");
    assert!(exit.success());
    let log = read_log(&mut child).await;
    assert!(
        log.contains("cannot reach PostgreSQL") && log.contains("127.0.0.1:1"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_processes_failures_cancel_and_an_unpaid_order_times_out() {
    let settings = Settings {
        order_timeout: Duration::from_secs(2),
        ..Settings::default()
    };
    let mut cluster = Cluster::start(settings).await;
    let system = cluster.system();
    let short = system.place(&customer(), &[(MONITOR, 51, "1.00")]).await;
    let unknown = system
        .place(
            &customer(),
            &[("99999999-9999-9999-9999-999999999999", 1, "1.00")],
        )
        .await;
    assert_eq!(
        system.settled(&short).await["cancellationReason"],
        format!("insufficient stock for product {MONITOR}")
    );
    assert_eq!(
        system.settled(&unknown).await["cancellationReason"],
        "unknown product 99999999-9999-9999-9999-999999999999"
    );

    // With the gateway stopped, the reservation is never paid: the order times out.
    cluster.kill(ServiceKind::Payment).await;
    let unpaid = system.place(&customer(), &[(LAPTOP, 3, "999.99")]).await;
    let order = system.settled(&unpaid).await;
    assert_eq!(order["cancellationReason"], "timed out");
    eventually("the laptops to come back", || async {
        let laptop = system.product(LAPTOP).await;
        (laptop["availableQuantity"] == 100 && laptop["reservedQuantity"] == 0).then_some(())
    })
    .await;
    // The gateway comes back to a reservation and a cancellation: the order stays Cancelled.
    cluster.spawn(ServiceKind::Payment);
    cluster.wait_healthy(ServiceKind::Payment).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, order) = system
        .get(ServiceKind::Order, &format!("/api/orders/{unpaid}"))
        .await;
    assert_eq!(order["status"], "Cancelled");
    // Its late charge is refused, or made and refunded, as the two messages are handled in
    // one order or the other: it never stands.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, payment) = system
        .get(
            ServiceKind::Payment,
            &format!("/api/payments/order/{unpaid}"),
        )
        .await;
    assert!(
        status == 404
            || (payment["status"] == "Refunded"
                && payment["reason"] == "order cancelled: timed out"),
        "{status} {payment}"
    );
    cluster.stop().await;
}

/// The order timeout fires while the saga's messages queue up, so cancellations overtake the
/// reservations and charges they cancel (two inventory processes take the queue in turns).
/// Once every order is final, no cancelled order holds stock or a charge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellations_that_overtake_the_saga_leave_no_stock_held_and_no_charge() {
    use futures_util::StreamExt;
    const ORDERS: usize = 200;
    const STOCK: u64 = 10_000;
    let settings = Settings {
        order_timeout: Duration::from_millis(200),
        ..Settings::default()
    };
    let mut cluster = Cluster::start(settings).await;
    let inventory = cluster.spawn_extra(ServiceKind::Inventory);
    wait_healthy(inventory, "the second inventory to be healthy").await;
    let system = cluster.system();
    let product = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        system.put_product(&product, "Contended", STOCK).await.0,
        200
    );
    // 16 clients place the orders as fast as they are answered; each takes 1 to 3 units.
    let order_ids: Vec<(String, u64)> = futures_util::stream::iter(0..ORDERS)
        .map(|i| {
            let system = &system;
            let product = product.clone();
            async move {
                let quantity = 1 + (i as u64 % 3);
                let id = system
                    .place(&customer(), &[(&product, quantity, "10.00")])
                    .await;
                (id, quantity)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut sold = 0;
    let mut cancelled = Vec::new();
    for (order_id, quantity) in &order_ids {
        match system.settled(order_id).await["status"].as_str() {
            Some("Confirmed") => sold += quantity,
            _ => cancelled.push(order_id.clone()),
        }
    }
    assert!(
        !cancelled.is_empty(),
        "the timeout must cancel some orders for this test to mean anything"
    );
    // Releases, commits and refunds follow the final statuses by a few messages: give them a
    // bounded while, then say what stayed wrong.
    let settle = tokio::time::Instant::now() + Duration::from_secs(20);
    let (available, reserved) = loop {
        let p = system.product(&product).await;
        let now = (
            p["availableQuantity"].as_u64().expect("available"),
            p["reservedQuantity"].as_u64().expect("reserved"),
        );
        if now == (STOCK - sold, 0) || tokio::time::Instant::now() > settle {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (available, reserved),
        (STOCK - sold, 0),
        "{} of {ORDERS} orders cancelled; the confirmed ones took {sold} units",
        cancelled.len()
    );
    let charged = loop {
        let mut charged = Vec::new();
        for order_id in &cancelled {
            let (status, payment) = system
                .get(
                    ServiceKind::Payment,
                    &format!("/api/payments/order/{order_id}"),
                )
                .await;
            if status == 200 && payment["status"] == "Succeeded" {
                charged.push(order_id.clone());
            }
        }
        if charged.is_empty() || tokio::time::Instant::now() > settle {
            break charged;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        charged.is_empty(),
        "cancelled orders left charged: {charged:?}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_racing_through_two_order_processes_make_one_order() {
    let mut cluster = Cluster::start(patient()).await;
    let second = cluster.spawn_extra(ServiceKind::Order);
    wait_healthy(second, "the second order service").await;
    let client = client();
    let urls = [
        format!(
            "http://127.0.0.1:{}/api/orders",
            cluster.ports[&ServiceKind::Order]
        ),
        format!("http://127.0.0.1:{second}/api/orders"),
    ];
    let body = order_body(&customer(), &[(MOUSE, 1, "25.00")]);
    let racing = (0..10).map(|i| {
        let request = client
            .post(&urls[i % 2])
            .header("Idempotency-Key", "across-processes")
            .json(&body);
        async move { read(request.send().await.expect("POST")).await }
    });
    let answers = futures_util::future::join_all(racing).await;
    let created: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status == 201)
        .collect();
    assert_eq!(created.len(), 1, "{answers:?}");
    let id = &created[0].1["orderId"];
    assert!(
        answers
            .iter()
            .all(|(status, body)| (*status == 200 || *status == 201) && &body["orderId"] == id),
        "{answers:?}"
    );
    cluster.stop().await;
}
