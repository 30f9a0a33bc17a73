#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod catch_up;
mod config;
mod error;
mod health;
mod housekeeping;
mod idempotency;
mod lease;
mod listener;
mod log;
mod plan;
mod projection;
mod read_model;
mod store;
mod telemetry;

pub use config::{PgConfig, MAX_SCHEMA_LEN};
pub use health::{CheckpointLag, PgHealth};
pub use idempotency::PgIdempotencyStore;
pub use lease::PgLeaseStore;
pub use projection::{PgProjection, PgProjectionRunner, PgTyped, PgTypedProjection};
pub use read_model::{PgReadModelRunner, ReadModelStep};
pub use store::PgEventStore;
