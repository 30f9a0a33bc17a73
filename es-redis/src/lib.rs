#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cache;
mod config;
mod connection;
mod error;
mod idempotency;
mod lease;
mod snapshot;

pub use cache::RedisCache;
pub use config::{RedisConfig, DEFAULT_URL};
pub use connection::RedisConnection;
pub use error::TimedOut;
pub use idempotency::RedisIdempotencyStore;
pub use lease::RedisLeaseStore;
pub use snapshot::RedisSnapshotStore;
