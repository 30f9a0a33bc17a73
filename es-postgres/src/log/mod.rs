//! The event log as its readers see it: stored events as rows, the visibility horizon that
//! keeps a reader from stepping past a transaction still running, and the reads built on both.
//! Nothing here knows the store: every read takes a pool or a connection.

mod horizon;
mod read;
mod row;
mod stream;

pub(crate) use horizon::HORIZON;
pub(crate) use read::{
    head, read_all_settled, read_committed, read_page_settled, read_visible, visible_query,
    visible_sql,
};
pub(crate) use row::{EventRow, EVENT_COLUMNS};
pub(crate) use stream::{read_stream, replay_stream, replay_streams, stream_version};
