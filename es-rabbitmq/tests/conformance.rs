//! The bus conformance suite of es-core, against the real RabbitMQ.

mod common;

use es_rabbitmq::{QueueType, Unroutable};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_amqp_bus_passes_the_bus_conformance_suite() {
    // The suite publishes events that no queue binds and expects them to be dropped, as a
    // topic exchange does.
    let config = common::config("conformance").with_unroutable(Unroutable::Ignore);
    let bus = common::connect(config).await;
    es_core::testing::bus_conformance(bus.clone()).await;
    common::cleanup(&bus, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_amqp_bus_on_quorum_queues_passes_the_bus_conformance_suite() {
    let mut config = common::config("quorum").with_unroutable(Unroutable::Ignore);
    config.topology.queue_type = QueueType::Quorum;
    let bus = common::connect(config).await;
    es_core::testing::bus_conformance(bus.clone()).await;
    common::cleanup(&bus, &[]).await;
}
