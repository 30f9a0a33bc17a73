#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod bus;
mod config;
mod connection;
pub mod wire;

pub use bus::AmqpEventBus;
pub use config::{AmqpConfig, QueueSpec, QueueType, ReconnectPolicy, Topology, Unroutable};
/// The outbox relay, generic over store and bus; [`AmqpEventBus::relay`] builds one onto
/// RabbitMQ.
pub use es_core::Relay;
