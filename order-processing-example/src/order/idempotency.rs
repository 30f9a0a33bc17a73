//! What makes a retried `POST /api/orders` safe: the `Idempotency-Key` header, the fingerprint
//! a reused key is checked against, and the order id each key derives.

use std::time::Duration;

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::validation::{PlaceOrderRequest, MAX_IDEMPOTENCY_KEY_CHARS};
use crate::http::AppError;

/// How long an idempotency key's answer is kept.
pub(super) const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a retry waits for a racing request with the same key. As long as the default
/// lease, so a retry behind a request that died usually takes the key over within one wait.
pub(super) const IDEMPOTENCY_WAIT: Duration = Duration::from_secs(10);

/// A stable fingerprint of a request: the SHA-256 of its canonical JSON, in hex. Two requests
/// with one key and different bodies must never look alike, so a cryptographic hash, not a
/// fast one.
pub(super) fn fingerprint(request: &PlaceOrderRequest) -> String {
    let canonical = serde_json::to_vec(request).unwrap_or_default();
    Sha256::digest(&canonical)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The id of the order placed by `customer_id` with idempotency key `key`: a name-based
/// UUIDv8 (RFC 9562, B.2) from SHA-256. Every run of one keyed request, also one that takes
/// the key over after the first was cut off, creates the same stream, so the event store
/// itself refuses a second order (the append expects no stream).
pub(super) fn keyed_order_id(customer_id: Uuid, key: &str) -> Uuid {
    let mut hash = Sha256::new();
    hash.update(b"order-processing-example/order\0");
    hash.update(customer_id.as_bytes());
    hash.update(key.as_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// The `Idempotency-Key` header, if any: 400 unless 1 to [`MAX_IDEMPOTENCY_KEY_CHARS`] visible
/// ASCII characters.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, AppError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let invalid = || {
        let mut errors = crate::http::FieldErrors::new();
        errors.insert(
            "Idempotency-Key".into(),
            vec![format!(
                "must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} visible ASCII characters"
            )],
        );
        AppError::validation(errors)
    };
    let key = value.to_str().map_err(|_| invalid())?;
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_CHARS {
        return Err(invalid());
    }
    Ok(Some(key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::validate_place_order;
    use serde_json::json;

    #[test]
    fn a_keyed_order_id_depends_on_the_customer_and_the_key_only() {
        let (alice, bob) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let id = keyed_order_id(alice, "key-1");
        assert_eq!(
            id,
            keyed_order_id(alice, "key-1"),
            "every retry aims at one stream"
        );
        assert_ne!(id, keyed_order_id(alice, "key-2"));
        assert_ne!(
            id,
            keyed_order_id(bob, "key-1"),
            "customers do not share keys"
        );
        assert_eq!(id.get_version_num(), 8);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
    }

    #[test]
    fn fingerprints_are_sha256_of_the_canonical_request() {
        let body = json!({"customerId": Uuid::nil(), "items": [
            {"productId": Uuid::nil(), "productName": "Laptop", "quantity": 1, "unitPrice": 1}
        ]});
        let request = validate_place_order(&body.into()).unwrap();
        let print = fingerprint(&request);
        assert_eq!(print.len(), 64);
        assert!(print.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(print, fingerprint(&request.clone()));
        let mut other = request;
        other.items[0].quantity = 2;
        assert_ne!(print, fingerprint(&other));
    }
}
