//! [`PgIdempotencyStore`]: idempotency keys in PostgreSQL.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use es_core::{Claim, ClaimToken, IdempotencyStore, Ownership, Result};
use sqlx::postgres::PgPool;

use crate::error::from_sqlx;
use crate::store::PgEventStore;

/// An [`IdempotencyStore`] in the event store's schema (table `idempotency_keys`).
///
/// An in-progress claim holds its key for its lease, a completed one for the TTL given to
/// `complete`; only the claim's token (column `owner`) renews, completes or releases it.
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
    async fn claim(&self, key: &str, fingerprint: &str, lease: Duration) -> Result<Claim> {
        // A released key may vanish between the two statements; then claim again.
        loop {
            let token = ClaimToken::new();
            // Racing claims of an expired row serialize on its lock; the losers see the
            // winner's fresh lease in the WHERE clause and update nothing.
            let acquired = sqlx::query_scalar::<_, i32>(
                "INSERT INTO idempotency_keys AS k (key, fingerprint, response, expires_at, owner) \
                 VALUES ($1, $2, NULL, clock_timestamp() + make_interval(secs => $3), $4) \
                 ON CONFLICT (key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, \
                   response = NULL, expires_at = EXCLUDED.expires_at, owner = EXCLUDED.owner \
                 WHERE k.expires_at <= clock_timestamp() \
                 RETURNING 1",
            )
            .bind(key)
            .bind(fingerprint)
            .bind(seconds(lease))
            .bind(token.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(from_sqlx)?;
            if acquired.is_some() {
                return Ok(Claim::Acquired(token));
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

    async fn renew(&self, key: &str, token: &ClaimToken, lease: Duration) -> Result<Ownership> {
        let renewed = sqlx::query(
            "UPDATE idempotency_keys \
             SET expires_at = clock_timestamp() + make_interval(secs => $3) \
             WHERE key = $1 AND owner = $2 AND response IS NULL \
               AND expires_at > clock_timestamp()",
        )
        .bind(key)
        .bind(token.as_str())
        .bind(seconds(lease))
        .execute(&self.pool)
        .await
        .map_err(from_sqlx)?
        .rows_affected();
        Ok(Ownership::from(renewed == 1))
    }

    async fn complete(
        &self,
        key: &str,
        token: &ClaimToken,
        response: Bytes,
        ttl: Duration,
    ) -> Result<Ownership> {
        // A second completion by the same holder matches the row and keeps the first response.
        let completed = sqlx::query(
            "UPDATE idempotency_keys \
             SET response = COALESCE(response, $3), \
                 expires_at = CASE WHEN response IS NULL \
                   THEN clock_timestamp() + make_interval(secs => $4) ELSE expires_at END \
             WHERE key = $1 AND owner = $2 AND expires_at > clock_timestamp()",
        )
        .bind(key)
        .bind(token.as_str())
        .bind(&response[..])
        .bind(seconds(ttl))
        .execute(&self.pool)
        .await
        .map_err(from_sqlx)?
        .rows_affected();
        Ok(Ownership::from(completed == 1))
    }

    async fn release(&self, key: &str, token: &ClaimToken) -> Result<Ownership> {
        let held = sqlx::query_scalar::<_, bool>(
            "WITH held AS ( \
               SELECT response IS NULL AS in_progress FROM idempotency_keys \
               WHERE key = $1 AND owner = $2 AND expires_at > clock_timestamp() \
             ), gone AS ( \
               DELETE FROM idempotency_keys \
               WHERE key = $1 AND owner = $2 AND response IS NULL \
                 AND expires_at > clock_timestamp() \
             ) \
             SELECT EXISTS (SELECT 1 FROM held)",
        )
        .bind(key)
        .bind(token.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(from_sqlx)?;
        Ok(Ownership::from(held))
    }
}
