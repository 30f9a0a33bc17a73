//! [`PgIdempotencyStore`]: idempotency keys in PostgreSQL.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use es_core::{Claim, IdempotencyStore, Result};
use sqlx::postgres::PgPool;

use crate::error::from_sqlx;
use crate::store::PgEventStore;

/// An [`IdempotencyStore`] in the event store's schema (table `idempotency_keys`).
///
/// Expiry uses the database clock, so every instance of a service agrees on it. Expired keys are
/// reclaimed on their next claim; [`purge_expired`](Self::purge_expired) deletes the rest.
#[derive(Clone, Debug)]
pub struct PgIdempotencyStore {
    pool: PgPool,
}

impl PgIdempotencyStore {
    /// A store on `store`'s pool and schema (run [`PgEventStore::migrate`] first).
    pub fn new(store: &PgEventStore) -> Self {
        PgIdempotencyStore {
            pool: store.pool().clone(),
        }
    }

    /// Deletes expired keys; returns how many.
    pub async fn purge_expired(&self) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= now()")
                .execute(&self.pool)
                .await
                .map_err(from_sqlx)?
                .rows_affected(),
        )
    }
}

fn seconds(ttl: Duration) -> f64 {
    ttl.as_secs_f64()
}

#[async_trait]
impl IdempotencyStore for PgIdempotencyStore {
    async fn claim(&self, key: &str, fingerprint: &str, ttl: Duration) -> Result<Claim> {
        // A released key may vanish between the two statements; then claim again.
        loop {
            let acquired = sqlx::query_scalar::<_, i32>(
                "INSERT INTO idempotency_keys AS k (key, fingerprint, response, expires_at) \
                 VALUES ($1, $2, NULL, clock_timestamp() + make_interval(secs => $3)) \
                 ON CONFLICT (key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, \
                   response = NULL, expires_at = EXCLUDED.expires_at \
                 WHERE k.expires_at <= clock_timestamp() \
                 RETURNING 1",
            )
            .bind(key)
            .bind(fingerprint)
            .bind(seconds(ttl))
            .fetch_optional(&self.pool)
            .await
            .map_err(from_sqlx)?;
            if acquired.is_some() {
                return Ok(Claim::Acquired);
            }
            let held = sqlx::query_as::<_, (String, Option<Vec<u8>>)>(
                "SELECT fingerprint, response FROM idempotency_keys \
                 WHERE key = $1 AND expires_at > clock_timestamp()",
            )
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(from_sqlx)?;
            match held {
                Some((held, _)) if held != fingerprint => return Ok(Claim::Mismatch),
                Some((_, Some(response))) => return Ok(Claim::Completed(Bytes::from(response))),
                Some((_, None)) => return Ok(Claim::InProgress),
                None => continue,
            }
        }
    }

    async fn complete(
        &self,
        key: &str,
        fingerprint: &str,
        response: Bytes,
        ttl: Duration,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO idempotency_keys (key, fingerprint, response, expires_at) \
             VALUES ($1, $2, $3, clock_timestamp() + make_interval(secs => $4)) \
             ON CONFLICT (key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, \
               response = EXCLUDED.response, expires_at = EXCLUDED.expires_at",
        )
        .bind(key)
        .bind(fingerprint)
        .bind(&response[..])
        .bind(seconds(ttl))
        .execute(&self.pool)
        .await
        .map_err(from_sqlx)?;
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM idempotency_keys WHERE key = $1 AND response IS NULL")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(from_sqlx)?;
        Ok(())
    }
}
