#![doc = include_str!("../README.md")]

pub mod analytics;
pub mod backends;
mod background;
pub mod chaos;
pub mod config;
pub mod dlq;
pub mod events;
pub mod greeting;
pub mod http;
pub mod inventory;
pub mod listing;
pub mod loadtest;
pub mod money;
pub mod notification;
pub mod order;
pub mod payment;
pub mod projections;
pub mod service;
pub mod service_kind;
pub mod shutdown;
pub mod telemetry;

pub use backends::{Backends, StartError};
pub use config::{Cli, Command, Settings};
pub use service::{run, run_services, Service};
pub use service_kind::ServiceKind;
