//! Turning driver errors into `es_core::Error`, so no sqlx error reaches the public API.

use es_core::Error;

/// The backend name in every error of this crate.
pub(crate) const BACKEND: &str = "postgres";

/// Unique violation.
pub(crate) const UNIQUE_VIOLATION: &str = "23505";

/// Maps a driver error: lost or refused connections and server shutdowns are
/// [`Error::Unavailable`] (retry later), bad data is [`Error::InvalidInput`], the rest
/// [`Error::Backend`].
pub(crate) fn from_sqlx(error: sqlx::Error) -> Error {
    match &error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Error::unavailable(BACKEND, error),
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            if is_transient_code(&code) {
                Error::unavailable(BACKEND, error)
            } else if code.starts_with("22") {
                // Data exceptions: text with a NUL byte, a number out of range, ...
                Error::InvalidInput(db.message().to_owned())
            } else {
                Error::backend(BACKEND, error)
            }
        }
        _ => Error::backend(BACKEND, error),
    }
}

/// SQLSTATEs after which the same call may succeed later.
fn is_transient_code(code: &str) -> bool {
    // 08: connection exceptions; 57P01-57P03: admin shutdown, crash shutdown, cannot connect
    // now (starting up); 53300: too many connections; 40001 and 40P01: serialization failure
    // and deadlock, which the transaction's retry resolves.
    code.starts_with("08")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01"
        )
}

/// The name of the violated constraint, when `error` is a unique violation.
pub(crate) fn unique_violation(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some(UNIQUE_VIOLATION) => {
            Some(db.constraint().unwrap_or_default().to_owned())
        }
        _ => None,
    }
}

/// Maps an error that user code returned inside a store transaction: es-core errors pass
/// through, driver errors are mapped like the store's own, anything else is a backend error.
pub(crate) fn from_user(error: es_core::BoxError) -> Error {
    match error.downcast::<Error>() {
        Ok(error) => *error,
        Err(error) => match error.downcast::<sqlx::Error>() {
            Ok(error) => from_sqlx(*error),
            Err(error) => Error::Backend {
                backend: BACKEND,
                source: error,
            },
        },
    }
}

/// Converts a position part or version to the `bigint` PostgreSQL stores.
pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64, Error> {
    i64::try_from(value)
        .map_err(|_| Error::InvalidInput(format!("{what} {value} is beyond PostgreSQL's bigint")))
}

/// Converts a stored `bigint` back; stored values are never negative.
pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
}
