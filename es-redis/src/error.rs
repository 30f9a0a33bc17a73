//! How redis errors become [`es_core::Error`]s.

use std::time::Duration;

use es_core::Error;
use redis::{ErrorKind, RedisError};

/// The name every error of this crate gives as its backend.
pub(crate) const BACKEND: &str = "redis";

/// The source of an [`Error::Unavailable`] when Redis did not answer within
/// [`RedisConfig::timeout`](crate::RedisConfig::timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no answer from redis within {after:?}")]
pub struct TimedOut {
    /// How long the call waited.
    pub after: Duration,
}

/// Sorts a redis error into what the caller can do about it: wait and retry
/// ([`Error::Unavailable`]: the server is gone, loading, failing over, or moving slots), or
/// not ([`Error::Backend`]: a wrong type at a key, a refused argument, a broken script).
pub(crate) fn from_redis(error: RedisError) -> Error {
    let transient = matches!(
        error.kind(),
        ErrorKind::IoError
            | ErrorKind::BusyLoadingError
            | ErrorKind::TryAgain
            | ErrorKind::ClusterDown
            | ErrorKind::MasterDown
            | ErrorKind::ReadOnly
            | ErrorKind::ClusterConnectionNotFound
            | ErrorKind::Moved
            | ErrorKind::Ask
    ) || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal();
    if transient {
        Error::unavailable(BACKEND, error)
    } else {
        Error::backend(BACKEND, error)
    }
}

/// A stored value that this crate cannot read back (written by something else, or damaged).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Corrupt(pub(crate) String);
