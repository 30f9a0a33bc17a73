//! Stream ids, categories, positions in the global log, and the version a writer expects of a
//! stream.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The longest stream id a store accepts, in bytes.
pub const MAX_STREAM_ID_LEN: usize = 255;

/// The id of one stream of events, e.g. `order-5f0c…`.
///
/// A stream id is non-empty, at most [`MAX_STREAM_ID_LEN`] bytes and has no control characters.
/// The part before the first `-` is the stream's *category* (`order` for `order-5f0c…`); reading
/// a category reads every stream in it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId(String);

impl StreamId {
    /// Validates and wraps a stream id.
    ///
    /// ```
    /// # use es_core::StreamId;
    /// let id = StreamId::new("order-42").unwrap();
    /// assert_eq!(id.category(), "order");
    /// assert!(StreamId::new("").is_err());
    /// ```
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        if id.is_empty() {
            return Err(Error::InvalidInput("a stream id cannot be empty".into()));
        }
        if id.len() > MAX_STREAM_ID_LEN {
            return Err(Error::InvalidInput(format!(
                "a stream id is at most {MAX_STREAM_ID_LEN} bytes, got {}",
                id.len()
            )));
        }
        if has_control_character(&id) {
            return Err(Error::InvalidInput(
                "a stream id cannot contain control characters".into(),
            ));
        }
        Ok(StreamId(id))
    }

    /// The stream of one aggregate instance: `{category}-{id}`.
    ///
    /// ```
    /// # use es_core::StreamId;
    /// assert_eq!(StreamId::for_aggregate("order", "7").unwrap().as_str(), "order-7");
    /// ```
    pub fn for_aggregate(category: &str, id: &str) -> Result<Self> {
        if category.is_empty() || category.contains('-') {
            return Err(Error::InvalidInput(format!(
                "an aggregate category must be non-empty and free of '-', got `{category}`"
            )));
        }
        if id.is_empty() {
            return Err(Error::InvalidInput(
                "an aggregate id cannot be empty".into(),
            ));
        }
        StreamId::new(format!("{category}-{id}"))
    }

    /// The id under which a conflict on the state of saga `saga`'s instance `instance` is
    /// reported ([`Error::Conflict`]): `saga-{saga}/{instance}`. Saga state is not an event
    /// stream, so this id only names it; it never fails, replacing control characters and
    /// cutting the id to [`MAX_STREAM_ID_LEN`] bytes where a valid id could not hold them.
    ///
    /// ```
    /// # use es_core::StreamId;
    /// assert_eq!(StreamId::of_saga("checkout", "o-1").as_str(), "saga-checkout/o-1");
    /// assert_eq!(StreamId::of_saga("checkout", &"x".repeat(300)).as_str().len(), 255);
    /// ```
    pub fn of_saga(saga: &str, instance: &str) -> Self {
        let mut id: String = format!("saga-{saga}/{instance}")
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        if id.len() > MAX_STREAM_ID_LEN {
            let mut end = MAX_STREAM_ID_LEN;
            while !id.is_char_boundary(end) {
                end -= 1;
            }
            id.truncate(end);
        }
        StreamId(id)
    }

    /// The stream id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The category: everything before the first `-`, or the whole id when it has none.
    pub fn category(&self) -> &str {
        self.0
            .split_once('-')
            .map_or(&self.0, |(category, _)| category)
    }

    /// The part after the category and its `-` (the aggregate id), or the whole id.
    pub fn entity_id(&self) -> &str {
        self.0.split_once('-').map_or(&self.0, |(_, id)| id)
    }
}

/// Whether `id` holds a control character (`char::is_control`). Every stream id of every event
/// a store reads passes here: printable ASCII, the common case, is settled in one plain pass over
/// the bytes, and only other text is decoded `char` by `char`.
fn has_control_character(id: &str) -> bool {
    if id.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return false;
    }
    id.chars().any(char::is_control)
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for StreamId {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        StreamId::new(value)
    }
}

impl TryFrom<&str> for StreamId {
    type Error = Error;
    fn try_from(value: &str) -> Result<Self> {
        StreamId::new(value)
    }
}

impl From<StreamId> for String {
    fn from(value: StreamId) -> Self {
        value.0
    }
}

impl AsRef<str> for StreamId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Which streams a read of the global log or a subscription sees.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StreamFilter {
    /// Every stream.
    #[default]
    All,
    /// The streams of one category (`order` for every `order-…` stream).
    Category(String),
}

impl StreamFilter {
    /// A filter for one category.
    pub fn category(category: impl Into<String>) -> Self {
        StreamFilter::Category(category.into())
    }

    /// Whether the filter lets `stream` through.
    pub fn matches(&self, stream: &StreamId) -> bool {
        match self {
            StreamFilter::All => true,
            StreamFilter::Category(category) => stream.category() == category,
        }
    }
}

/// A point in the global log, in the order the store delivers events.
///
/// Positions are ordered by `commit`, then `sequence`. `commit` orders the appends as they became
/// visible (PostgreSQL: the writer's transaction id; in memory: the append counter), `sequence`
/// is the event's unique global sequence number. Reading "after" a position never skips an event
/// that commits later: see the ordering guarantee in the guide.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    /// Orders the commits: every event of a later commit has a larger value.
    pub commit: u64,
    /// The event's global sequence number, unique across the store.
    pub sequence: u64,
}

impl Position {
    /// Before the first event: reading after it reads everything.
    pub const START: Position = Position {
        commit: 0,
        sequence: 0,
    };

    /// A position from its two parts.
    pub const fn new(commit: u64, sequence: u64) -> Self {
        Position { commit, sequence }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.commit, self.sequence)
    }
}

/// What a writer expects of a stream's version when it appends.
///
/// Stream versions count events: a stream with three events is at version 3, and its next event
/// gets version 4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must exist (have at least one event).
    StreamExists,
    /// The stream must be at exactly this version (`Exact(0)` is the same as `NoStream`).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream currently at `actual` (`None`: no stream) meets this expectation.
    pub fn is_met_by(self, actual: Option<u64>) -> bool {
        match (self, actual) {
            (ExpectedVersion::Any, _) => true,
            (ExpectedVersion::NoStream, None) | (ExpectedVersion::Exact(0), None) => true,
            (ExpectedVersion::StreamExists, Some(_)) => true,
            (ExpectedVersion::Exact(expected), Some(actual)) => expected == actual,
            _ => false,
        }
    }

    /// The conflict error for `stream` when this expectation failed against `actual`.
    pub fn conflict(self, stream: &StreamId, actual: Option<u64>) -> Error {
        Error::Conflict {
            stream: stream.clone(),
            expected: self,
            actual,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("an existing stream"),
            ExpectedVersion::Exact(version) => write!(f, "version {version}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_against_actual_versions() {
        use ExpectedVersion::*;
        assert!(Any.is_met_by(None) && Any.is_met_by(Some(3)));
        assert!(NoStream.is_met_by(None) && !NoStream.is_met_by(Some(1)));
        assert!(StreamExists.is_met_by(Some(1)) && !StreamExists.is_met_by(None));
        assert!(Exact(0).is_met_by(None) && !Exact(0).is_met_by(Some(1)));
        assert!(Exact(2).is_met_by(Some(2)) && !Exact(2).is_met_by(Some(3)));
        assert!(!Exact(2).is_met_by(None));
    }

    #[test]
    fn empty_and_control_stream_ids_are_rejected() {
        assert!(matches!(StreamId::new(""), Err(Error::InvalidInput(_))));
        assert!(matches!(StreamId::new("a\nb"), Err(Error::InvalidInput(_))));
        assert!(matches!(
            StreamId::new("x".repeat(MAX_STREAM_ID_LEN + 1)),
            Err(Error::InvalidInput(_))
        ));
        assert!(StreamId::new("x".repeat(MAX_STREAM_ID_LEN)).is_ok());
    }

    #[test]
    fn the_byte_check_finds_exactly_the_control_characters() {
        // Every character up to U+00FF and a few beyond, alone and between other text.
        for c in (0u32..=0x2ff)
            .chain([0x2028, 0xfeff, 0x1f600])
            .filter_map(char::from_u32)
        {
            for id in [c.to_string(), format!("a{c}b"), format!("é{c}")] {
                assert_eq!(
                    has_control_character(&id),
                    id.chars().any(char::is_control),
                    "U+{:04X} in {id:?}",
                    c as u32
                );
            }
        }
    }

    #[test]
    fn category_is_the_part_before_the_first_dash() {
        let id = StreamId::new("order-aaaa-bbbb").unwrap();
        assert_eq!(id.category(), "order");
        assert_eq!(id.entity_id(), "aaaa-bbbb");
        assert_eq!(StreamId::new("plain").unwrap().category(), "plain");
        assert!(StreamFilter::category("order").matches(&id));
        assert!(!StreamFilter::category("ord").matches(&id));
    }

    #[test]
    fn aggregate_categories_cannot_contain_dashes() {
        assert!(StreamId::for_aggregate("a-b", "1").is_err());
        assert!(StreamId::for_aggregate("order", "").is_err());
    }

    #[test]
    fn positions_order_by_commit_then_sequence() {
        assert!(Position::new(1, 9) < Position::new(2, 3));
        assert!(Position::new(2, 3) < Position::new(2, 4));
        assert!(Position::START < Position::new(0, 1));
    }
}
