//! The wire format: a JSON envelope in the body, the same facts in AMQP properties.
//!
//! Body (the fields of the contract first, then what a [`RecordedEvent`] needs to round-trip):
//!
//! ```json
//! {"eventId":"…","eventType":"OrderPlaced","aggregateId":"5f0c…","occurredAt":"2024-…Z",
//!  "correlationId":"…","causationId":null,"data":{…},
//!  "streamId":"order-5f0c…","streamVersion":1,"schemaVersion":1,
//!  "position":{"commit":7,"sequence":7},"traceparent":"00-…","headers":{…}}
//! ```
//!
//! Properties: `message_id` = eventId, `type` = eventType, `content_type` = `application/json`,
//! `delivery_mode` = 2 (persistent), `correlation_id`, `timestamp` = occurredAt (seconds), and
//! the headers `causation-id` and `traceparent`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use es_core::{Error, Metadata, Position, RecordedEvent, Result, StreamId};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// The AMQP header that carries the causation id.
pub const CAUSATION_ID_HEADER: &str = "causation-id";
/// The AMQP header that carries the W3C trace context.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// How many deliveries of a message failed before this one (retries and dead letters).
pub const ATTEMPTS_HEADER: &str = "x-es-attempts";
/// The last error of a retried or dead-lettered message.
pub const ERROR_HEADER: &str = "x-es-error";
/// The routing key a message was first published with (kept across retries and dead letters).
pub const ROUTING_KEY_HEADER: &str = "x-es-routing-key";
/// When a message was dead-lettered (RFC 3339).
pub const DEAD_LETTERED_AT_HEADER: &str = "x-es-dead-lettered-at";

/// The content type of every message.
pub const CONTENT_TYPE: &str = "application/json";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutgoingEnvelope<'a> {
    event_id: Uuid,
    event_type: &'a str,
    aggregate_id: &'a str,
    occurred_at: DateTime<Utc>,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    data: &'a RawValue,
    stream_id: &'a str,
    stream_version: u64,
    schema_version: u32,
    position: Position,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: &'a BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IncomingEnvelope<'a> {
    event_id: Uuid,
    event_type: String,
    #[serde(default)]
    aggregate_id: Option<String>,
    #[serde(default)]
    occurred_at: Option<DateTime<Utc>>,
    #[serde(default)]
    correlation_id: Option<Uuid>,
    #[serde(default)]
    causation_id: Option<Uuid>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    stream_id: Option<String>,
    #[serde(default)]
    stream_version: Option<u64>,
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    position: Option<Position>,
    #[serde(default)]
    traceparent: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// The body of `event`: the JSON envelope. Fails when the payload is not JSON.
pub fn encode_body(event: &RecordedEvent) -> Result<Vec<u8>> {
    let data: &RawValue = serde_json::from_slice(&event.payload)
        .map_err(|e| Error::serialization(event.event_type.clone(), e))?;
    let envelope = OutgoingEnvelope {
        event_id: event.event_id,
        event_type: &event.event_type,
        aggregate_id: event.stream_id.entity_id(),
        occurred_at: event.recorded_at,
        correlation_id: event.metadata.correlation_id,
        causation_id: event.metadata.causation_id,
        data,
        stream_id: event.stream_id.as_str(),
        stream_version: event.stream_version,
        schema_version: event.schema_version,
        position: event.position,
        traceparent: event.metadata.traceparent.as_deref(),
        headers: &event.metadata.headers,
    };
    serde_json::to_vec(&envelope).map_err(|e| Error::serialization(event.event_type.clone(), e))
}

/// The longest AMQP short string (routing keys, the `type` property): 255 bytes.
pub const MAX_SHORT_STRING: usize = 255;

/// Checks that `event`, routed with `routing_key`, fits the AMQP frame: its routing key and its
/// type travel as short strings of at most [`MAX_SHORT_STRING`] bytes. Fails with
/// [`Error::InvalidInput`] naming the event: such an event can never be published (lapin would
/// write a corrupt frame and the broker would close the whole connection).
pub fn check_fits(event: &RecordedEvent, routing_key: &str) -> Result<()> {
    for (what, value) in [
        ("routing key", routing_key),
        ("event type", event.event_type.as_str()),
    ] {
        if value.len() > MAX_SHORT_STRING {
            return Err(Error::InvalidInput(format!(
                "event {} cannot travel over AMQP: its {what} is {} bytes, at most {MAX_SHORT_STRING} fit",
                event.event_id,
                value.len()
            )));
        }
    }
    Ok(())
}

/// The AMQP properties of `event`.
pub fn properties(event: &RecordedEvent) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(causation_id) = event.metadata.causation_id {
        headers.insert(
            CAUSATION_ID_HEADER.into(),
            AMQPValue::LongString(causation_id.to_string().into()),
        );
    }
    if let Some(traceparent) = &event.metadata.traceparent {
        headers.insert(
            TRACEPARENT_HEADER.into(),
            AMQPValue::LongString(traceparent.as_str().into()),
        );
    }
    let mut properties = BasicProperties::default()
        .with_message_id(event.event_id.to_string().into())
        .with_type(event.event_type.as_str().into())
        .with_content_type(CONTENT_TYPE.into())
        .with_delivery_mode(2)
        .with_timestamp(u64::try_from(event.recorded_at.timestamp()).unwrap_or_default())
        .with_headers(headers);
    if let Some(correlation_id) = event.metadata.correlation_id {
        properties = properties.with_correlation_id(correlation_id.to_string().into());
    }
    properties
}

/// Why a message could not be read as an event.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(String);

/// Reads a message back into the event it carries.
///
/// Producers that follow only the contract's fields are understood too: a missing `streamId`
/// becomes `{first word of the routing key}-{aggregateId}`, a missing schema version 1, and
/// correlation, causation and trace context fall back to the AMQP properties.
pub fn decode(
    body: &[u8],
    properties: &BasicProperties,
    routing_key: &str,
) -> std::result::Result<RecordedEvent, DecodeError> {
    let envelope: IncomingEnvelope<'_> = serde_json::from_slice(body)
        .map_err(|e| DecodeError(format!("the body is not an event envelope: {e}")))?;
    let stream_id = match (envelope.stream_id, envelope.aggregate_id) {
        (Some(stream_id), _) => StreamId::new(stream_id),
        (None, Some(aggregate_id)) => {
            let category = routing_key.split('.').next().unwrap_or_default();
            StreamId::for_aggregate(category, &aggregate_id)
        }
        (None, None) => {
            return Err(DecodeError(
                "the envelope has neither streamId nor aggregateId".into(),
            ))
        }
    }
    .map_err(|e| DecodeError(format!("bad stream id: {e}")))?;
    let recorded_at = match envelope.occurred_at {
        Some(at) => at,
        None => (*properties.timestamp())
            .and_then(|seconds| i64::try_from(seconds).ok())
            .and_then(|seconds| DateTime::from_timestamp(seconds, 0))
            .ok_or_else(|| DecodeError("the envelope has no occurredAt".into()))?,
    };
    let header_uuid = |name: &str| header_str(properties, name).and_then(|s| s.parse().ok());
    let metadata = Metadata {
        correlation_id: envelope.correlation_id.or_else(|| {
            properties
                .correlation_id()
                .as_ref()
                .and_then(|id| id.as_str().parse().ok())
        }),
        causation_id: envelope
            .causation_id
            .or_else(|| header_uuid(CAUSATION_ID_HEADER)),
        traceparent: envelope
            .traceparent
            .or_else(|| header_str(properties, TRACEPARENT_HEADER)),
        headers: envelope.headers,
    };
    Ok(RecordedEvent {
        event_id: envelope.event_id,
        stream_id,
        stream_version: envelope.stream_version.unwrap_or_default(),
        position: envelope.position.unwrap_or_default(),
        recorded_at,
        event_type: envelope.event_type,
        schema_version: envelope.schema_version.unwrap_or(1),
        payload: bytes::Bytes::copy_from_slice(envelope.data.get().as_bytes()),
        metadata,
    })
}

/// A header's value as text, when it is a string.
pub(crate) fn header_str(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// A header's value as a count, whatever integer type the sender used.
pub(crate) fn header_u32(properties: &BasicProperties, name: &str) -> Option<u32> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    let wide: i64 = match *value {
        AMQPValue::ShortShortInt(v) => v.into(),
        AMQPValue::ShortShortUInt(v) => v.into(),
        AMQPValue::ShortInt(v) => v.into(),
        AMQPValue::ShortUInt(v) => v.into(),
        AMQPValue::LongInt(v) => v.into(),
        AMQPValue::LongUInt(v) => v.into(),
        AMQPValue::LongLongInt(v) => v,
        _ => return None,
    };
    u32::try_from(wide).ok()
}

/// `properties` with extra headers set (replacing any of the same name).
pub(crate) fn with_headers(
    properties: &BasicProperties,
    extra: impl IntoIterator<Item = (&'static str, AMQPValue)>,
) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    for (name, value) in extra {
        headers.insert(ShortString::from(name), value);
    }
    properties.clone().with_headers(headers)
}

/// `properties` without the bus's retry and dead-letter bookkeeping (and the broker's
/// `x-death`), as for a fresh message.
pub(crate) fn without_bookkeeping(properties: &BasicProperties) -> BasicProperties {
    let Some(headers) = properties.headers() else {
        return properties.clone();
    };
    let kept: BTreeMap<ShortString, AMQPValue> = headers
        .inner()
        .iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                ATTEMPTS_HEADER | ERROR_HEADER | DEAD_LETTERED_AT_HEADER | "x-death"
            ) && !name.as_str().starts_with("x-first-death")
                && !name.as_str().starts_with("x-last-death")
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    properties.clone().with_headers(FieldTable::from(kept))
}

/// A text header value.
pub(crate) fn text(value: impl Into<Vec<u8>>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> RecordedEvent {
        RecordedEvent {
            event_id: Uuid::now_v7(),
            stream_id: StreamId::new("order-5f0c-aa").unwrap(),
            stream_version: 3,
            position: Position::new(9, 11),
            recorded_at: DateTime::parse_from_rfc3339("2024-05-01T12:00:00.123Z")
                .unwrap()
                .with_timezone(&Utc),
            event_type: "OrderPlaced".into(),
            schema_version: 2,
            payload: bytes::Bytes::from_static(br#"{"total": 12.50, "items":[1,2]}"#),
            metadata: Metadata {
                correlation_id: Some(Uuid::new_v4()),
                causation_id: Some(Uuid::new_v4()),
                traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
                headers: [("tenant".to_owned(), "t1".to_owned())].into(),
            },
        }
    }

    #[test]
    fn the_body_has_the_contract_fields() {
        let event = sample();
        let body: serde_json::Value =
            serde_json::from_slice(&encode_body(&event).unwrap()).unwrap();
        assert_eq!(body["eventId"], json!(event.event_id.to_string()));
        assert_eq!(body["eventType"], json!("OrderPlaced"));
        assert_eq!(body["aggregateId"], json!("5f0c-aa"));
        assert_eq!(body["occurredAt"], json!("2024-05-01T12:00:00.123Z"));
        assert_eq!(
            body["correlationId"],
            json!(event.metadata.correlation_id.unwrap().to_string())
        );
        assert_eq!(
            body["causationId"],
            json!(event.metadata.causation_id.unwrap().to_string())
        );
        assert_eq!(body["data"], json!({"total": 12.5, "items": [1, 2]}));
    }

    #[test]
    fn an_event_round_trips_with_its_payload_bytes_untouched() {
        let event = sample();
        let body = encode_body(&event).unwrap();
        let back = decode(&body, &properties(&event), "order.placed").unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn missing_ids_are_null_and_read_back_as_none() {
        let mut event = sample();
        event.metadata = Metadata::default();
        let body = encode_body(&event).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(json["correlationId"].is_null() && json["causationId"].is_null());
        let back = decode(&body, &properties(&event), "order.placed").unwrap();
        assert_eq!(back.metadata, Metadata::default());
    }

    #[test]
    fn properties_carry_ids_and_trace_context() {
        let event = sample();
        let props = properties(&event);
        assert_eq!(
            props.message_id().as_ref().unwrap().as_str(),
            event.event_id.to_string()
        );
        assert_eq!(props.kind().as_ref().unwrap().as_str(), "OrderPlaced");
        assert_eq!(
            props.content_type().as_ref().unwrap().as_str(),
            CONTENT_TYPE
        );
        assert_eq!(*props.delivery_mode(), Some(2));
        assert_eq!(
            header_str(&props, TRACEPARENT_HEADER),
            event.metadata.traceparent
        );
        assert_eq!(
            header_str(&props, CAUSATION_ID_HEADER),
            event.metadata.causation_id.map(|id| id.to_string())
        );
    }

    #[test]
    fn a_contract_only_envelope_is_understood() {
        let id = Uuid::new_v4();
        let correlation = Uuid::new_v4();
        let body = json!({
            "eventId": id, "eventType": "OrderPlaced", "aggregateId": "42",
            "occurredAt": "2024-05-01T12:00:00Z", "correlationId": null, "causationId": null,
            "data": {"a": 1}
        });
        let props = BasicProperties::default()
            .with_correlation_id(correlation.to_string().into())
            .with_headers(FieldTable::from(BTreeMap::from([(
                ShortString::from(TRACEPARENT_HEADER),
                text("00-abc-def-01"),
            )])));
        let event = decode(&serde_json::to_vec(&body).unwrap(), &props, "order.placed").unwrap();
        assert_eq!(event.event_id, id);
        assert_eq!(event.stream_id.as_str(), "order-42");
        assert_eq!(event.schema_version, 1);
        assert_eq!(event.metadata.correlation_id, Some(correlation));
        assert_eq!(event.metadata.traceparent.as_deref(), Some("00-abc-def-01"));
        assert_eq!(&event.payload[..], br#"{"a":1}"#);
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        let props = BasicProperties::default();
        for body in [&b"\xff\xfe"[..], b"{}", b"[]", br#"{"eventId":"x"}"#, b""] {
            assert!(decode(body, &props, "a.b").is_err());
        }
    }

    #[test]
    fn a_payload_that_is_not_json_cannot_be_published() {
        let mut event = sample();
        event.payload = bytes::Bytes::from_static(b"not json");
        assert!(matches!(
            encode_body(&event),
            Err(Error::Serialization { .. })
        ));
    }

    #[test]
    fn names_longer_than_a_short_string_do_not_fit() {
        let mut event = sample();
        assert!(check_fits(&event, "order.placed").is_ok());
        assert!(check_fits(&event, &"k".repeat(MAX_SHORT_STRING)).is_ok());
        let long_key = check_fits(&event, &"k".repeat(MAX_SHORT_STRING + 1));
        assert!(
            matches!(long_key, Err(Error::InvalidInput(_))),
            "{long_key:?}"
        );
        event.event_type = "é".repeat(200);
        let long_type = check_fits(&event, "order.placed");
        assert!(
            matches!(&long_type, Err(e) if e.is_bad_input() && e.to_string().contains("event type")),
            "{long_type:?}"
        );
    }

    #[test]
    fn bookkeeping_headers_are_stripped_for_a_fresh_start() {
        let props = with_headers(
            &properties(&sample()),
            [
                (ATTEMPTS_HEADER, AMQPValue::LongInt(3)),
                (ERROR_HEADER, text("boom")),
            ],
        );
        assert_eq!(header_u32(&props, ATTEMPTS_HEADER), Some(3));
        let fresh = without_bookkeeping(&props);
        assert_eq!(header_u32(&fresh, ATTEMPTS_HEADER), None);
        assert_eq!(header_str(&fresh, ERROR_HEADER), None);
        assert!(header_str(&fresh, TRACEPARENT_HEADER).is_some());
    }
}
