//! Events: the typed [`DomainEvent`], its stored form, metadata, and upcasting.
//!
//! A domain event type is an enum in serde's default (externally tagged) representation. The
//! variant name, after any `#[serde(rename)]`, is the *event type* that is stored; the variant's
//! content is the stored payload. Renaming a variant orphans the events stored under the old
//! name, so name variants for the long run (or keep the old name with `#[serde(rename)]`).

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::stream::{Position, StreamId};

/// A domain event type: a serde enum whose variant names are the stored event types.
///
/// ```
/// use es_core::DomainEvent;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// enum AccountEvent {
///     Opened { owner: String },
///     Deposited { amount: u64 },
///     Closed,
/// }
///
/// impl DomainEvent for AccountEvent {}
///
/// let (event_type, payload) = AccountEvent::Deposited { amount: 5 }.encode().unwrap();
/// assert_eq!(event_type, "Deposited");
/// assert_eq!(&payload[..], br#"{"amount":5}"#);
/// let back = AccountEvent::decode(&event_type, 1, &payload).unwrap();
/// assert_eq!(back, AccountEvent::Deposited { amount: 5 });
/// ```
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The schema version written with new events of `event_type`. Raise it when the shape of
    /// that event changes, and add an [`Upcaster`] from the previous version.
    fn schema_version(event_type: &str) -> u32 {
        let _ = event_type;
        1
    }

    /// The upcasters that turn stored older versions into today's shape, in any order.
    fn upcasters() -> &'static [Upcaster] {
        &[]
    }

    /// The stored event type and payload of this event.
    fn encode(&self) -> Result<(String, Bytes)> {
        encode_externally_tagged(self)
    }

    /// Decodes a stored event, running upcasters when `schema_version` is older than today's.
    fn decode(event_type: &str, schema_version: u32, payload: &[u8]) -> Result<Self> {
        decode_externally_tagged::<Self>(event_type, schema_version, payload)
    }
}

/// Turns one stored version of one event type into the next version.
///
/// ```
/// use es_core::Upcaster;
/// use serde_json::{json, Value};
///
/// // v1 stored `amount` in cents as an integer; v2 stores a string with a currency.
/// fn cents_to_money(mut v: Value) -> Result<Value, String> {
///     let cents = v["amount"].as_u64().ok_or("amount is not a number")?;
///     v["amount"] = json!(format!("{}.{:02} EUR", cents / 100, cents % 100));
///     Ok(v)
/// }
/// static UPCASTERS: &[Upcaster] = &[Upcaster::new("Deposited", 1, cents_to_money)];
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Upcaster {
    /// The stored event type this upcaster reads.
    pub event_type: &'static str,
    /// The version it reads; it produces `from_version + 1`.
    pub from_version: u32,
    /// The new event type name, when the event was renamed in this step.
    pub renamed_to: Option<&'static str>,
    /// The transformation of the payload.
    pub upcast: fn(Value) -> std::result::Result<Value, String>,
}

impl Upcaster {
    /// An upcaster of `event_type` from `from_version` to the next version.
    pub const fn new(
        event_type: &'static str,
        from_version: u32,
        upcast: fn(Value) -> std::result::Result<Value, String>,
    ) -> Self {
        Upcaster {
            event_type,
            from_version,
            renamed_to: None,
            upcast,
        }
    }

    /// The same upcaster, also renaming the event type.
    pub const fn renaming_to(mut self, new_name: &'static str) -> Self {
        self.renamed_to = Some(new_name);
        self
    }
}

/// The serde variant name of an externally tagged enum value: its event type.
pub fn event_type_of<E: Serialize>(event: &E) -> Result<String> {
    encode_externally_tagged(event).map(|(event_type, _)| event_type)
}

fn encode_externally_tagged<E: Serialize + ?Sized>(event: &E) -> Result<(String, Bytes)> {
    let value = serde_json::to_value(event)
        .map_err(|e| Error::serialization(std::any::type_name::<E>(), e))?;
    match value {
        Value::Object(map) if map.len() == 1 => {
            let (event_type, content) = map.into_iter().next().expect("one entry");
            let payload = serde_json::to_vec(&content)
                .map_err(|e| Error::serialization(event_type.clone(), e))?;
            Ok((event_type, Bytes::from(payload)))
        }
        Value::String(event_type) => Ok((event_type, Bytes::from_static(b"null"))),
        _ => Err(Error::serialization(
            std::any::type_name::<E>(),
            "a domain event must be an enum in serde's default, externally tagged representation",
        )),
    }
}

fn decode_externally_tagged<E: DomainEvent>(
    event_type: &str,
    schema_version: u32,
    payload: &[u8],
) -> Result<E> {
    let mut event_type = std::borrow::Cow::Borrowed(event_type);
    let mut version = schema_version;
    let mut upcast: Option<Value> = None;
    // Walk the upcaster chain; each step reads one version and yields the next.
    while let Some(step) = E::upcasters()
        .iter()
        .find(|u| u.event_type == event_type && u.from_version == version)
    {
        let value = match upcast.take() {
            Some(value) => value,
            None => serde_json::from_slice(payload)
                .map_err(|e| Error::serialization(event_type.to_string(), e))?,
        };
        let value = (step.upcast)(value).map_err(|message| {
            Error::serialization(
                event_type.to_string(),
                format!("upcasting from version {version}: {message}"),
            )
        })?;
        upcast = Some(value);
        if let Some(new_name) = step.renamed_to {
            event_type = std::borrow::Cow::Borrowed(new_name);
        }
        version += 1;
    }
    let current = E::schema_version(&event_type);
    if version != current {
        return Err(Error::serialization(
            event_type.to_string(),
            format!(
                "stored schema version {version} cannot be read as version {current}: no upcaster"
            ),
        ));
    }
    let decoded = match upcast {
        // Rare (old events only): the upcast value is written out once more and read like a
        // stored payload, so that both paths tell an unknown type apart the same way.
        Some(content) => {
            let content = serde_json::to_vec(&content)
                .map_err(|e| Error::serialization(event_type.to_string(), e))?;
            tagged::read::<E>(&event_type, &content)
        }
        // Fast path: decode the stored bytes once, as the content of `{"Type":payload}`.
        None => tagged::read::<E>(&event_type, payload),
    };
    decoded.map_err(|failure| match failure {
        tagged::Failure::UnknownTag(_) => Error::UnknownEventType {
            event_type: event_type.to_string(),
            schema_version,
        },
        tagged::Failure::Json(e) => Error::serialization(event_type.to_string(), e),
    })
}

/// Reading `{"<event type>":<payload>}` straight from the payload's bytes.
///
/// serde's externally tagged enums are read from a one-entry JSON object. Building that object
/// (an allocation and a copy of every payload) cost a scan of the log a measurable share of its
/// time; this deserializer presents the stored event type as the object's key and the stored
/// payload, read in place, as its value, so the event type decodes exactly as from the object.
///
/// It also tells an event type that names no variant apart from any other failure, without
/// reading serde's message: the tag is read through a deserializer whose error type records
/// serde's `unknown_variant` call. A payload with an unknown variant of its own, deeper down,
/// stays a payload error.
mod tagged {
    use std::cell::Cell;
    use std::fmt;

    use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, Visitor};
    use serde::forward_to_deserialize_any;
    use serde_json::de::SliceRead;

    type Json<'de> = serde_json::Deserializer<SliceRead<'de>>;

    /// Why [`read`] failed.
    #[derive(Debug)]
    pub(super) enum Failure {
        /// The tag names no variant of the type (serde's `unknown_variant` on the tag).
        UnknownTag(#[allow(dead_code)] serde_json::Error),
        /// Anything else: the payload does not fit, is not JSON, ...
        Json(serde_json::Error),
    }

    /// `T` from the object `{tag: payload}`, the payload read in place.
    #[cfg(test)]
    pub(super) fn from_slice<T: de::DeserializeOwned>(
        tag: &str,
        payload: &[u8],
    ) -> serde_json::Result<T> {
        read(tag, payload).map_err(|failure| match failure {
            Failure::UnknownTag(e) | Failure::Json(e) => e,
        })
    }

    /// `T` from the object `{tag: payload}`, the payload read in place, telling an unknown
    /// tag apart.
    pub(super) fn read<T: de::DeserializeOwned>(tag: &str, payload: &[u8]) -> Result<T, Failure> {
        let unknown_tag = Cell::new(false);
        let mut content = serde_json::Deserializer::from_slice(payload);
        let value = T::deserialize(Tagged {
            tag,
            content: &mut content,
            unknown_tag: &unknown_tag,
        })
        // As `from_slice` would: nothing but whitespace after the payload.
        .and_then(|value| content.end().map(|()| value));
        value.map_err(|e| match unknown_tag.get() {
            true => Failure::UnknownTag(e),
            false => Failure::Json(e),
        })
    }

    /// The one-entry object `{tag: content}`.
    struct Tagged<'a, 'de> {
        tag: &'a str,
        content: &'a mut Json<'de>,
        /// Set when the tag named no variant.
        unknown_tag: &'a Cell<bool>,
    }

    /// The error of reading the tag: remembers whether serde called it an unknown variant.
    #[derive(Debug)]
    struct TagError {
        unknown_variant: bool,
        message: String,
    }

    impl fmt::Display for TagError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.message)
        }
    }

    impl std::error::Error for TagError {}

    impl de::Error for TagError {
        fn custom<T: fmt::Display>(message: T) -> Self {
            TagError {
                unknown_variant: false,
                message: message.to_string(),
            }
        }

        fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
            TagError {
                unknown_variant: true,
                message: format!("unknown variant `{variant}`, expected one of {expected:?}"),
            }
        }
    }

    impl<'de> Deserializer<'de> for Tagged<'_, 'de> {
        type Error = serde_json::Error;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> serde_json::Result<V::Value> {
            visitor.visit_map(Entry {
                tag: self.tag,
                content: Some(self.content),
            })
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _name: &'static str,
            _variants: &'static [&'static str],
            visitor: V,
        ) -> serde_json::Result<V::Value> {
            visitor.visit_enum(self)
        }

        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> serde_json::Result<V::Value> {
            visitor.visit_some(self)
        }

        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            visitor: V,
        ) -> serde_json::Result<V::Value> {
            visitor.visit_newtype_struct(self)
        }

        forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
        }
    }

    impl<'de> de::EnumAccess<'de> for Tagged<'_, 'de> {
        type Error = serde_json::Error;
        type Variant = Self;

        fn variant_seed<V: DeserializeSeed<'de>>(
            self,
            seed: V,
        ) -> serde_json::Result<(V::Value, Self)> {
            let tag: de::value::StrDeserializer<'_, TagError> = self.tag.into_deserializer();
            match seed.deserialize(tag) {
                Ok(variant) => Ok((variant, self)),
                Err(error) => {
                    if error.unknown_variant {
                        self.unknown_tag.set(true);
                    }
                    Err(de::Error::custom(error))
                }
            }
        }
    }

    /// The variant's content, read as serde_json reads the value of a one-entry object.
    impl<'de> de::VariantAccess<'de> for Tagged<'_, 'de> {
        type Error = serde_json::Error;

        fn unit_variant(self) -> serde_json::Result<()> {
            de::Deserialize::deserialize(self.content)
        }

        fn newtype_variant_seed<T: DeserializeSeed<'de>>(
            self,
            seed: T,
        ) -> serde_json::Result<T::Value> {
            seed.deserialize(self.content)
        }

        fn tuple_variant<V: Visitor<'de>>(
            self,
            _len: usize,
            visitor: V,
        ) -> serde_json::Result<V::Value> {
            self.content.deserialize_seq(visitor)
        }

        fn struct_variant<V: Visitor<'de>>(
            self,
            fields: &'static [&'static str],
            visitor: V,
        ) -> serde_json::Result<V::Value> {
            self.content.deserialize_struct("", fields, visitor)
        }
    }

    /// The object as a map of one entry, for types that read it as a map.
    struct Entry<'a, 'de> {
        tag: &'a str,
        content: Option<&'a mut Json<'de>>,
    }

    impl<'de> de::MapAccess<'de> for Entry<'_, 'de> {
        type Error = serde_json::Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> serde_json::Result<Option<K::Value>> {
            match self.content {
                Some(_) => seed.deserialize(self.tag.into_deserializer()).map(Some),
                None => Ok(None),
            }
        }

        fn next_value_seed<V: DeserializeSeed<'de>>(
            &mut self,
            seed: V,
        ) -> serde_json::Result<V::Value> {
            match self.content.take() {
                Some(content) => seed.deserialize(content),
                None => Err(de::Error::custom("no value left in the event's object")),
            }
        }

        fn size_hint(&self) -> Option<usize> {
            Some(usize::from(self.content.is_some()))
        }
    }
}

/// What travels with an event besides its payload: who caused it, and trace context.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// Shared by every event and message that follows from one request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The id of the event or message that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// The W3C `traceparent` of the trace this event belongs to, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Free headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl Metadata {
    /// Metadata of a new flow: a fresh correlation id, no cause.
    pub fn new_correlation() -> Self {
        Metadata {
            correlation_id: Some(Uuid::now_v7()),
            ..Metadata::default()
        }
    }

    /// Metadata with the given correlation id and no cause.
    pub fn with_correlation(correlation_id: Uuid) -> Self {
        Metadata {
            correlation_id: Some(correlation_id),
            ..Metadata::default()
        }
    }

    /// Metadata for an event caused by `cause`: the same correlation id (the cause's own event
    /// id when it had none), the cause's event id as causation id, and its trace context.
    pub fn caused_by(cause: &RecordedEvent) -> Self {
        Metadata {
            correlation_id: Some(cause.metadata.correlation_id.unwrap_or(cause.event_id)),
            causation_id: Some(cause.event_id),
            traceparent: cause.metadata.traceparent.clone(),
            headers: BTreeMap::new(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Serializes to JSON bytes (for stores and transports).
    pub fn to_json(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("metadata always serializes"))
    }

    /// Reads metadata from JSON bytes; empty input is empty metadata.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        if bytes.is_empty() {
            return Ok(Metadata::default());
        }
        if let Some(metadata) = Self::from_compact_json(bytes) {
            return Ok(metadata);
        }
        serde_json::from_slice(bytes).map_err(|e| Error::serialization("Metadata", e))
    }

    /// Reads the shape [`to_json`](Self::to_json) writes when there are no headers
    /// (`{"correlationId":"…","causationId":"…","traceparent":"…"}`, any of them left out,
    /// nothing escaped), or `None` for anything else, which serde then reads.
    ///
    /// A scan of the log decodes the metadata of every event it hands out, and through serde
    /// that took a fifth of a scan's client time; this reads the same bytes into the same value
    /// without serde's machinery.
    fn from_compact_json(bytes: &[u8]) -> Option<Self> {
        let mut rest = bytes.strip_prefix(b"{")?.strip_suffix(b"}")?;
        let mut metadata = Metadata::default();
        if rest.is_empty() {
            return Some(metadata);
        }
        loop {
            // A repeated key is an error to serde: leave it to serde to report.
            if let Some(after) = rest.strip_prefix(br#""correlationId":""#) {
                let (id, after) = compact_uuid(after)?;
                metadata
                    .correlation_id
                    .replace(id)
                    .is_none()
                    .then_some(())?;
                rest = after;
            } else if let Some(after) = rest.strip_prefix(br#""causationId":""#) {
                let (id, after) = compact_uuid(after)?;
                metadata.causation_id.replace(id).is_none().then_some(())?;
                rest = after;
            } else if let Some(after) = rest.strip_prefix(br#""traceparent":""#) {
                let end = after
                    .iter()
                    .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
                (after[end] == b'"').then_some(())?;
                let value = std::str::from_utf8(&after[..end]).ok()?.to_owned();
                metadata
                    .traceparent
                    .replace(value)
                    .is_none()
                    .then_some(())?;
                rest = &after[end + 1..];
            } else {
                return None;
            }
            if rest.is_empty() {
                return Some(metadata);
            }
            rest = rest.strip_prefix(b",")?;
        }
    }
}

/// The hyphenated uuid at the start of `bytes`, closed by its quote, and what follows; `None`
/// for any other form (serde reads those).
fn compact_uuid(bytes: &[u8]) -> Option<(Uuid, &[u8])> {
    let rest = bytes.get(36..)?.strip_prefix(b"\"")?;
    Some((Uuid::try_parse_ascii(&bytes[..36]).ok()?, rest))
}

/// An event about to be appended: serialized, not yet in a stream.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// Unique id of the event; a retry of the same append should reuse it.
    pub event_id: Uuid,
    /// The stable event type name.
    pub event_type: String,
    /// The schema version of `payload`.
    pub schema_version: u32,
    /// The serialized event (JSON).
    pub payload: Bytes,
    /// Correlation, causation, trace context and headers.
    pub metadata: Metadata,
}

impl NewEvent {
    /// Serializes a domain event with a fresh (time-ordered) event id.
    pub fn from_domain<E: DomainEvent>(event: &E, metadata: Metadata) -> Result<Self> {
        let (event_type, payload) = event.encode()?;
        Ok(NewEvent {
            event_id: Uuid::now_v7(),
            schema_version: E::schema_version(&event_type),
            event_type,
            payload,
            metadata,
        })
    }

    /// An event from raw parts (schema version 1, fresh id, empty metadata).
    pub fn raw(event_type: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        NewEvent {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            payload: payload.into(),
            metadata: Metadata::default(),
        }
    }

    /// The same event with other metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }
}

/// A stored event, as every store and bus hands it out: the serialized envelope.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedEvent {
    /// Unique id of the event.
    pub event_id: Uuid,
    /// The stream it belongs to.
    pub stream_id: StreamId,
    /// Its version in the stream: 1 for the first event.
    pub stream_version: u64,
    /// Its place in the global log.
    pub position: Position,
    /// When the store recorded it.
    pub recorded_at: DateTime<Utc>,
    /// The stable event type name.
    pub event_type: String,
    /// The schema version of `payload`.
    pub schema_version: u32,
    /// The serialized event, exactly as it was written.
    pub payload: Bytes,
    /// Correlation, causation, trace context and headers.
    pub metadata: Metadata,
}

impl RecordedEvent {
    /// Decodes the payload into a domain event (through its upcasters).
    pub fn decode<E: DomainEvent>(&self) -> Result<E> {
        E::decode(&self.event_type, self.schema_version, &self.payload)
    }

    /// Decodes into a typed [`Envelope`].
    pub fn to_envelope<E: DomainEvent>(&self) -> Result<Envelope<E>> {
        Ok(Envelope {
            event: self.decode()?,
            event_id: self.event_id,
            stream_id: self.stream_id.clone(),
            stream_version: self.stream_version,
            position: self.position,
            recorded_at: self.recorded_at,
            metadata: self.metadata.clone(),
        })
    }

    /// The payload as a JSON value (for logs, APIs and wire formats).
    pub fn payload_json(&self) -> Result<Value> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| Error::serialization(self.event_type.clone(), e))
    }
}

/// A decoded event with everything the store knows about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope<E> {
    /// The domain event.
    pub event: E,
    /// Unique id of the event.
    pub event_id: Uuid,
    /// The stream it belongs to.
    pub stream_id: StreamId,
    /// Its version in the stream: 1 for the first event.
    pub stream_version: u64,
    /// Its place in the global log.
    pub position: Position,
    /// When the store recorded it.
    pub recorded_at: DateTime<Utc>,
    /// Correlation, causation, trace context and headers.
    pub metadata: Metadata,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de;
    use serde_json::json;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Ev {
        Opened { owner: String },
        Deposited(u64),
        Closed,
        Renamed { name: String },
    }

    fn split_name(mut v: Value) -> std::result::Result<Value, String> {
        let full = v["fullName"].as_str().ok_or("no fullName")?.to_owned();
        v = json!({ "owner": full });
        Ok(v)
    }

    static UPS: &[Upcaster] = &[
        Upcaster::new("Opened", 1, split_name),
        Upcaster::new("Titled", 1, |v| Ok(json!({ "name": v["title"] }))).renaming_to("Renamed"),
    ];

    impl DomainEvent for Ev {
        fn schema_version(event_type: &str) -> u32 {
            match event_type {
                "Opened" | "Renamed" => 2,
                _ => 1,
            }
        }
        fn upcasters() -> &'static [Upcaster] {
            UPS
        }
    }

    #[test]
    fn round_trips_every_variant_shape() {
        for ev in [
            Ev::Opened { owner: "a".into() },
            Ev::Deposited(7),
            Ev::Closed,
            Ev::Renamed { name: "n".into() },
        ] {
            let (ty, payload) = ev.encode().unwrap();
            let v = Ev::schema_version(&ty);
            assert_eq!(Ev::decode(&ty, v, &payload).unwrap(), ev);
        }
        assert_eq!(&Ev::Closed.encode().unwrap().1[..], b"null");
    }

    /// What the tagged reading must agree with: serde_json on the object it stands for.
    fn wrapped<T: de::DeserializeOwned>(tag: &str, payload: &[u8]) -> serde_json::Result<T> {
        let mut object = format!("{{{}:", serde_json::to_string(tag).unwrap()).into_bytes();
        object.extend_from_slice(payload);
        object.push(b'}');
        serde_json::from_slice(&object)
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(tag = "kind")]
    enum Internally {
        A { x: u32 },
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(untagged)]
    enum Untagged {
        Number(u64),
        Text(String),
    }

    #[test]
    fn the_tagged_reading_agrees_with_serde_on_the_wrapped_object() {
        let cases: &[(&str, &str)] = &[
            ("Opened", r#"{"owner":"a"}"#),
            (
                "Opened",
                r#" { "owner" : "a" , "extra": [1, {"x": null}] } "#,
            ),
            ("Opened", r#"{"owner":1}"#),
            ("Opened", r#"{"owner":"a"} x"#),
            ("Opened", r#"{"owner":"a""#),
            ("Opened", ""),
            ("Deposited", "7"),
            ("Deposited", "-7"),
            ("Deposited", "[7]"),
            ("Closed", "null"),
            ("Closed", "{}"),
            ("Closed", "1"),
            ("Nope", "{}"),
            ("", "null"),
            ("Op\"ened", "{}"),
        ];
        for &(tag, payload) in cases {
            let payload = payload.as_bytes();
            let ours = tagged::from_slice::<Ev>(tag, payload).map_err(|e| e.is_data());
            let theirs = wrapped::<Ev>(tag, payload).map_err(|e| e.is_data());
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{tag} {payload:?}"),
                (Err(_), Err(_)) => {}
                _ => panic!("{tag} {payload:?}: {ours:?} against {theirs:?}"),
            }
            let value = tagged::from_slice::<Value>(tag, payload).ok();
            assert_eq!(
                value,
                wrapped::<Value>(tag, payload).ok(),
                "{tag} {payload:?}"
            );
            let map = tagged::from_slice::<BTreeMap<String, Value>>(tag, payload).ok();
            assert_eq!(map, wrapped(tag, payload).ok(), "{tag} {payload:?}");
            assert_eq!(
                tagged::from_slice::<Option<Ev>>(tag, payload).ok(),
                wrapped::<Option<Ev>>(tag, payload).ok()
            );
            assert_eq!(
                tagged::from_slice::<Untagged>(tag, payload).ok(),
                wrapped::<Untagged>(tag, payload).ok()
            );
        }
        assert_eq!(
            tagged::from_slice::<Internally>("kind", br#""A""#).ok(),
            wrapped::<Internally>("kind", br#""A""#).ok()
        );
        // An unknown type is still told apart from a bad payload.
        assert!(matches!(
            Ev::decode("Nope", 1, b"{}"),
            Err(Error::UnknownEventType { .. })
        ));
    }

    #[test]
    fn old_versions_are_upcast_and_renamed() {
        let old = br#"{"fullName":"Ada"}"#;
        assert_eq!(
            Ev::decode("Opened", 1, old).unwrap(),
            Ev::Opened {
                owner: "Ada".into()
            }
        );
        assert_eq!(
            Ev::decode("Titled", 1, br#"{"title":"x"}"#).unwrap(),
            Ev::Renamed { name: "x".into() }
        );
    }

    #[test]
    fn bad_payloads_give_typed_errors_not_panics() {
        assert!(matches!(
            Ev::decode("Deposited", 1, b"{not json"),
            Err(Error::Serialization { .. })
        ));
        assert!(matches!(
            Ev::decode("Nope", 1, b"{}"),
            Err(Error::UnknownEventType { .. })
        ));
        // A version from the future has no upcaster.
        assert!(matches!(
            Ev::decode("Deposited", 9, b"1"),
            Err(Error::Serialization { .. })
        ));
        // Version 2 stored but the upcaster input shape is wrong.
        assert!(matches!(
            Ev::decode("Opened", 1, br#"{"x":1}"#),
            Err(Error::Serialization { .. })
        ));
    }

    #[test]
    fn an_unknown_variant_inside_the_payload_is_a_payload_error_not_an_unknown_type() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        enum Status {
            Open,
        }
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        enum Tracked {
            Moved { to: Status },
        }
        impl DomainEvent for Tracked {}
        // The event type is known; the payload holds a status this code does not know. Calling
        // it an unknown event type would let a reader skip an event it must not skip.
        assert!(matches!(
            Tracked::decode("Moved", 1, br#"{"to":"Closed"}"#),
            Err(Error::Serialization { .. })
        ));
        assert!(matches!(
            Tracked::decode("Gone", 1, br#"{"to":"Open"}"#),
            Err(Error::UnknownEventType { .. })
        ));
        assert_eq!(
            Tracked::decode("Moved", 1, br#"{"to":"Open"}"#).unwrap(),
            Tracked::Moved { to: Status::Open }
        );
    }

    #[test]
    fn an_unknown_type_is_told_apart_after_upcasting_too() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        enum Renamed {
            Kept { n: u32 },
        }
        impl DomainEvent for Renamed {
            fn upcasters() -> &'static [Upcaster] {
                // An upcaster that renames to a type the enum no longer has.
                static UPCASTERS: &[Upcaster] =
                    &[Upcaster::new("Old", 1, Ok).renaming_to("Dropped")];
                UPCASTERS
            }
            fn schema_version(_: &str) -> u32 {
                2
            }
        }
        assert!(matches!(
            Renamed::decode("Old", 1, br#"{"n":1}"#),
            Err(Error::UnknownEventType { .. })
        ));
    }

    #[test]
    fn caused_by_carries_correlation_and_causation() {
        let cause = RecordedEvent {
            event_id: Uuid::now_v7(),
            stream_id: StreamId::new("a-1").unwrap(),
            stream_version: 1,
            position: Position::new(1, 1),
            recorded_at: Utc::now(),
            event_type: "Closed".into(),
            schema_version: 1,
            payload: Bytes::from_static(b"null"),
            metadata: Metadata {
                traceparent: Some("00-abc-def-01".into()),
                ..Metadata::default()
            },
        };
        let m = Metadata::caused_by(&cause);
        assert_eq!(m.correlation_id, Some(cause.event_id));
        assert_eq!(m.causation_id, Some(cause.event_id));
        assert_eq!(m.traceparent.as_deref(), Some("00-abc-def-01"));
        let json = m.to_json();
        assert_eq!(Metadata::from_json(&json).unwrap(), m);
        assert_eq!(Metadata::from_json(b"").unwrap(), Metadata::default());
    }

    #[test]
    fn the_compact_reading_of_metadata_agrees_with_serde() {
        let id = "0190e5a4-5b6e-7c3d-9f00-0123456789ab";
        let written = [
            Metadata::default(),
            Metadata::new_correlation(),
            Metadata {
                correlation_id: Some(Uuid::now_v7()),
                causation_id: Some(Uuid::now_v7()),
                traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
                headers: BTreeMap::new(),
            },
            Metadata {
                traceparent: Some("é ünïcode".into()),
                ..Metadata::default()
            },
            Metadata::new_correlation().with_header("tenant", "a"),
        ];
        let mut inputs: Vec<Vec<u8>> = written.iter().map(|m| m.to_json().to_vec()).collect();
        for odd in [
            format!(r#"{{"causationId":"{id}","correlationId":"{id}"}}"#),
            r#"{"correlationId":null}"#.to_owned(),
            format!(r#"{{"correlationId":"{id}","correlationId":"{id}"}}"#),
            format!(r#"{{"correlationId":"{id}",}}"#),
            format!(r#"{{"correlationId":"{id}","other":"x"}}"#),
            format!(r#"{{ "correlationId": "{id}" }}"#),
            r#"{"correlationId":"not a uuid"}"#.to_owned(),
            format!(r#"{{"correlationId":"{}"}}"#, id.replace('-', "")),
            format!(r#"{{"correlationId":"{{{id}}}"}}"#),
            format!(r#"{{"correlationId":"urn:uuid:{id}"}}"#),
            format!(r#"{{"correlationId":"{}"}}"#, id.to_uppercase()),
            format!(r#"{{"correlationId":"{id}"x}}"#),
            format!(r#"{{"correlationId":"{id}"}}"#).replace("9f00", "9g00"),
            format!(r#"{{"causationId":"{id}","causationId":"{id}"}}"#),
            r#"{"traceparent":"a","traceparent":"b"}"#.to_owned(),
            r#"{,}"#.to_owned(),
            r#"{"traceparent":"a",,"causationId":"x"}"#.to_owned(),
            r#"{"traceparent":"a"b"}"#.to_owned(),
            r#"{"traceparent":"a\"b"}"#.to_owned(),
            r#"{"traceparent":"a\u0041"}"#.to_owned(),
            "{\"traceparent\":\"a\tb\"}".to_owned(),
            r#"{"traceparent":""}"#.to_owned(),
            r#"{"traceparent":"x"} "#.to_owned(),
            r#"{"traceparent":"x""#.to_owned(),
            r#"{"traceparent""#.to_owned(),
            r#"{"""#.to_owned(),
            "{}".to_owned(),
            "{".to_owned(),
            "}".to_owned(),
            "null".to_owned(),
        ] {
            inputs.push(odd.into_bytes());
        }
        inputs.push(b"{\"traceparent\":\"\xff\"}".to_vec());
        for input in inputs {
            let serde: std::result::Result<Metadata, _> = serde_json::from_slice(&input);
            match (Metadata::from_compact_json(&input), serde) {
                (Some(compact), Ok(serde)) => assert_eq!(compact, serde, "{input:?}"),
                (Some(compact), Err(e)) => panic!("{input:?}: read as {compact:?}, serde: {e}"),
                (None, _) => {}
            }
            // Whichever way, the public reading is serde's.
            assert_eq!(
                Metadata::from_json(&input).ok(),
                serde_json::from_slice::<Metadata>(&input).ok(),
                "{input:?}"
            );
        }
        // What the store writes is read the compact way.
        for metadata in &written[..4] {
            assert_eq!(
                Metadata::from_compact_json(&metadata.to_json()).as_ref(),
                Some(metadata)
            );
        }
    }
}
