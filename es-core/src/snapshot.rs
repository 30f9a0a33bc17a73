//! Snapshots: an aggregate's state at a version, so loading reads only the tail of its stream.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::stream::StreamId;

/// A serialized aggregate state at a stream version.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The aggregate's stream.
    pub stream_id: StreamId,
    /// The stream version the state includes.
    pub version: u64,
    /// The snapshot format version ([`Aggregate::SNAPSHOT_VERSION`](crate::Aggregate::SNAPSHOT_VERSION)).
    pub schema_version: u32,
    /// The serialized state (JSON).
    pub payload: Bytes,
    /// When it was taken.
    pub taken_at: DateTime<Utc>,
}

/// Keeps the latest snapshot of each stream.
#[async_trait]
pub trait SnapshotStore: Send + Sync + fmt::Debug {
    /// Saves a snapshot. A snapshot older than the stored one is ignored, so racing writers
    /// never move a stream's snapshot backwards.
    async fn save(&self, snapshot: Snapshot) -> Result<()>;

    /// The latest snapshot of `stream_id`.
    async fn load(&self, stream_id: &StreamId) -> Result<Option<Snapshot>>;

    /// Deletes the snapshot of `stream_id`, if any.
    async fn delete(&self, stream_id: &StreamId) -> Result<()>;
}
