//! The one error type of `es-core`, shared by every backend.

use crate::stream::{ExpectedVersion, StreamId};

/// A boxed error from a backend or from user code, kept as the `source` of an [`Error`].
///
/// Backends put their driver errors here so that no driver type shows in the public API.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong below the domain: in a store, a bus, a cache or a codec.
///
/// Each variant says what the caller can do about it: retry after a [`Conflict`](Error::Conflict)
/// (the [`Repository`](crate::Repository) does it for you), back off after
/// [`Unavailable`](Error::Unavailable), fix the input after
/// [`InvalidInput`](Error::InvalidInput).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream's version did not match the expectation: another writer got there first.
    /// Reload the stream and decide again.
    #[error("version conflict on stream `{stream}`: expected {expected}, found {}", display_actual(*.actual))]
    Conflict {
        /// The stream whose expectation failed (for a saga instance's state,
        /// [`StreamId::of_saga`]).
        stream: StreamId,
        /// What the writer expected.
        expected: ExpectedVersion,
        /// The stream's actual version (`None`: the stream does not exist).
        actual: Option<u64>,
    },

    /// A thing that was asked for by its key does not exist.
    #[error("{0} not found")]
    NotFound(String),

    /// The caller passed something that can never work (an empty stream id, a zero limit, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// An event or a state could not be serialized, or a stored payload could not be decoded
    /// (corrupt JSON, a shape that no upcaster turns into today's type).
    #[error("cannot (de)serialize `{type_name}`: {source}")]
    Serialization {
        /// The event type or state that failed.
        type_name: String,
        /// What the codec said.
        #[source]
        source: BoxError,
    },

    /// A stored event has a type that the reading code does not know.
    #[error("unknown event type `{event_type}` (schema version {schema_version})")]
    UnknownEventType {
        /// The stored event type.
        event_type: String,
        /// The stored schema version.
        schema_version: u32,
    },

    /// The backend could not be reached or failed while answering. Retry with backoff; the
    /// operation may or may not have taken effect if it was a write whose answer was lost.
    #[error("{backend} is unavailable: {source}")]
    Unavailable {
        /// Which backend (`"postgres"`, `"rabbitmq"`, `"redis"`, ...).
        backend: &'static str,
        /// The driver's error.
        #[source]
        source: BoxError,
    },

    /// The backend refused the operation for a reason that retrying will not change
    /// (a constraint, a permission, a broker nack, ...).
    #[error("{backend} rejected the operation: {source}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
}

fn display_actual(actual: Option<u64>) -> String {
    match actual {
        Some(version) => format!("version {version}"),
        None => "no stream".to_owned(),
    }
}

impl Error {
    /// Builds an [`Error::Serialization`].
    pub fn serialization(type_name: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Serialization {
            type_name: type_name.into(),
            source: source.into(),
        }
    }

    /// Builds an [`Error::Unavailable`].
    pub fn unavailable(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Unavailable {
            backend,
            source: source.into(),
        }
    }

    /// Builds an [`Error::Backend`].
    pub fn backend(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            backend,
            source: source.into(),
        }
    }

    /// `true` for a version conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }

    /// `true` when the input itself can never work, however often it is tried: an
    /// [`InvalidInput`](Error::InvalidInput), a [`Serialization`](Error::Serialization) failure or
    /// an [`UnknownEventType`](Error::UnknownEventType). A bus answers so for an event it can
    /// never carry, and the [`Relay`](crate::Relay) then parks that event instead of retrying it.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Error::InvalidInput(_) | Error::Serialization { .. } | Error::UnknownEventType { .. }
        )
    }

    /// `true` when retrying later may succeed (a conflict or an unavailable backend).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Conflict { .. } | Error::Unavailable { .. })
    }
}
