//! The event store: an append-only log of events, grouped into streams, each stream hash-chained.
//!
//! The store knows nothing of domain enums. A payload is JSON text; the caller (the command
//! handler) serialises its domain events and upcasts them when read back. What every event carries
//! besides its payload is [`domain::EventMetadata`].
//!
//! Key design decisions in this module:
//!
//! - **The trait is synchronous.** The embedded adapter is SQLite, which blocks anyway; an async
//!   trait would only hide that. Callers on an async runtime wrap calls in `spawn_blocking`.
//! - **Two orders.** A stream has versions `1..=n` (a stream's version is its number of events;
//!   "no stream" is version 0), used for optimistic concurrency ([`ExpectedVersion`]). The whole
//!   log has global positions, strictly increasing in commit order, used by projections and
//!   subscriptions. The SQLite adapter's positions start at 1 and have no gaps
//!   ([`Capabilities::gap_free_positions`]); other adapters only promise "strictly increasing".
//! - **Positions are not hashed.** The per-stream hash chain ([`chain`]) covers the stream name,
//!   version, metadata and payload, but not the global position, so a stream copied into another
//!   store (another adapter, a restored backup) keeps its chain. `chain::verify` still checks that
//!   positions increase with version, so reordering the log is detected.
//! - **Idempotency by event id.** Appending a batch whose every event id is already stored, as the
//!   same events (same stream, type, schema version, metadata and payload) in the same order, is
//!   a no-op that returns the original [`AppendResult`], whatever the expected version says: a
//!   client that retries after a lost response gets the first answer. An id stored with different
//!   content is [`StoreError::DuplicateEventId`]; a batch that mixes stored and new ids (or
//!   replays stored ids in another order) is [`StoreError::PartialReplay`]. Both append nothing.
//!   An id stored in *another* stream is refused only where the adapter declares
//!   [`Capabilities::detects_event_id_reuse_across_streams`] (SQLite does, EventStoreDB cannot).
//! - **An append needs events.** An empty batch is [`StoreError::EmptyAppend`] rather than a
//!   silent no-op: a command that decided nothing should not touch the store.
//! - **What is hashed is what is stored.** The store truncates `recorded_at` to microseconds and
//!   serialises the payload once with `serde_json::to_string`; that text is stored, hashed, and
//!   returned as [`StoredEvent::payload`], so a verifier never re-serialises anything.

pub mod chain;
#[cfg(feature = "testkit")]
pub mod contract;
pub mod copy;
#[cfg(feature = "esdb")]
pub mod esdb;
mod prepared;
pub mod sqlite;
pub mod subscription;

use std::fmt;
use std::time::Duration;

use domain::EventMetadata;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use chain::{VerifyFailure, VerifyReport, verify};
#[cfg(feature = "esdb")]
pub use esdb::EsdbStore;
pub use sqlite::SqliteStore;
pub use subscription::{Subscription, subscribe};

/// The longest stream name, in characters (all allowed characters are ASCII, so also bytes).
pub const MAX_STREAM_NAME_LEN: usize = 200;

/// A validated stream name: 1..=200 characters from `[A-Za-z0-9_.:-]`, e.g.
/// `association-0190c3e4-…`. Validated once here so adapters and URLs never see anything else.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamName(String);

impl StreamName {
    pub fn new(name: impl Into<String>) -> Result<Self, StoreError> {
        let name = name.into();
        let valid_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if name.is_empty() || name.len() > MAX_STREAM_NAME_LEN || !valid_chars {
            return Err(StoreError::InvalidStreamName(name));
        }
        Ok(StreamName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for StreamName {
    type Error = StoreError;
    fn try_from(name: String) -> Result<Self, StoreError> {
        StreamName::new(name)
    }
}

impl From<StreamName> for String {
    fn from(name: StreamName) -> String {
        name.0
    }
}

impl AsRef<str> for StreamName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// What the caller believes the stream's version is; an append with a different actual version
/// fails with [`StoreError::WrongExpectedVersion`] and appends nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// No check: append after whatever is there.
    Any,
    /// The stream must not exist yet (same as `Exact(0)`).
    NoStream,
    /// The stream must have exactly this many events.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `actual` satisfies this expectation.
    pub fn matches(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(version) => actual == version,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(version) => write!(f, "version {version}"),
        }
    }
}

/// An event to append. The store assigns stream version, position and hashes.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_type: String,
    pub schema_version: u32,
    pub payload: serde_json::Value,
    pub metadata: EventMetadata,
}

/// An event as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Global position: strictly increasing in commit order, starts at 1
    /// (gap-free in the SQLite adapter).
    pub position: u64,
    pub stream: StreamName,
    /// 1-based position within the stream.
    pub version: u64,
    pub event_type: String,
    pub schema_version: u32,
    /// `recorded_at` is at microsecond precision (truncated on append).
    pub metadata: EventMetadata,
    /// The JSON text exactly as stored and hashed.
    pub payload: String,
    /// The previous event's hash in this stream; 32 zero bytes for version 1.
    pub prev_hash: [u8; 32],
    /// `SHA-256(prev_hash ‖ canonical bytes)`, see [`chain`].
    pub hash: [u8; 32],
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AppendResult {
    pub first_position: u64,
    pub last_position: u64,
    /// The stream's version after the append (the last appended event's version).
    pub stream_version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("stream {stream} is at version {actual}, the append expected {expected}")]
    WrongExpectedVersion { stream: StreamName, expected: ExpectedVersion, actual: u64 },
    /// The id is already stored with different content (a replay of identical content is not an
    /// error, see the module doc).
    #[error("event id {event_id} is already stored with different content")]
    DuplicateEventId { event_id: Uuid },
    /// Part of the batch is already stored and part is not (or stored in another order), so the
    /// batch is neither new nor a replay of one earlier append.
    #[error(
        "event id {event_id} breaks the replay: the batch mixes already-stored and new events, \
         or replays stored events in another order"
    )]
    PartialReplay { event_id: Uuid },
    #[error("an append needs at least one event")]
    EmptyAppend,
    #[error("invalid stream name {0:?}: use 1 to 200 characters from A-Z, a-z, 0-9, '_', '.', ':', '-'")]
    InvalidStreamName(String),
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    /// The store file is not one this build can read (another program's, or a newer format).
    #[error("unsupported store format: {0}")]
    UnsupportedFormat(String),
    #[error("event store backend error: {0}")]
    Backend(String),
    /// A stored row cannot be read back as an event (tampering or a bug); `chain::verify` says more.
    #[error("corrupt event store: {0}")]
    Corrupt(String),
}

/// An append-only event log. Implementations must pass [`contract`]'s cases.
pub trait EventStore: Send + Sync {
    /// Appends `events` atomically to `stream` if its version matches `expected`.
    fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError>;

    /// Up to `limit` events of `stream` from `from_version` (inclusive, 1-based; 0 reads as 1),
    /// in version order. An unknown stream reads as empty.
    fn read_stream(&self, stream: &StreamName, from_version: u64, limit: usize)
    -> Result<Vec<StoredEvent>, StoreError>;

    /// The stream's number of events; 0 when it does not exist.
    fn stream_version(&self, stream: &StreamName) -> Result<u64, StoreError>;

    /// Up to `limit` events with position > `after_position` (0 = from the start), in position
    /// order. Once a position is visible, every smaller position that will ever exist is too,
    /// which is what makes a subscription gap-free.
    fn read_all(&self, after_position: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError>;

    /// The largest position; 0 for an empty store.
    fn head_position(&self) -> Result<u64, StoreError>;

    /// Blocks until `head_position() > position` or the timeout passes; returns the head.
    fn wait_for_position_after(&self, position: u64, timeout: Duration) -> Result<u64, StoreError>;

    /// Every stream with its version, sorted by name.
    fn list_streams(&self) -> Result<Vec<(StreamName, u64)>, StoreError>;

    /// The guarantees this adapter gives beyond every adapter's (none unless it says so). A
    /// wrapper around another store must pass its inner store's on.
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }
}

/// Guarantees an [`EventStore`] adapter may give beyond those every adapter gives. Each is a
/// promise: where it is declared, `chain::verify` and the contract cases (`store::contract`) rely
/// on it; where it is not, they check only what every adapter promises. An adapter declares what
/// it gives in [`EventStore::capabilities`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Capabilities {
    /// Positions are exactly `1..=head` (SQLite). `chain::verify` then also detects a deleted
    /// event whose stream shows nothing (the last event of a stream), and the contract cases
    /// assert exact positions. Without it positions only strictly increase.
    pub gap_free_positions: bool,
    /// An append carrying an event id that is already stored in *another* stream is refused
    /// ([`StoreError::DuplicateEventId`], nothing appended), as one stored in the same stream
    /// always is (SQLite: `UNIQUE(event_id)`). Without it such an append may be stored, whole,
    /// and the id is then in two streams (EventStoreDB has no index by event id, see `esdb`).
    pub detects_event_id_reuse_across_streams: bool,
}

impl Capabilities {
    /// Only what every adapter gives.
    pub const NONE: Capabilities =
        Capabilities { gap_free_positions: false, detects_event_id_reuse_across_streams: false };
    /// Every guarantee there is.
    pub const ALL: Capabilities =
        Capabilities { gap_free_positions: true, detects_event_id_reuse_across_streams: true };

    /// The name of each guarantee, with whether `self` gives it, in declaration order.
    fn each(&self) -> [(&'static str, bool); 2] {
        let Capabilities { gap_free_positions, detects_event_id_reuse_across_streams } = *self;
        [
            ("gap_free_positions", gap_free_positions),
            ("detects_event_id_reuse_across_streams", detects_event_id_reuse_across_streams),
        ]
    }

    /// The names of the guarantees `self` does not give.
    pub fn missing(&self) -> Vec<&'static str> {
        self.each().into_iter().filter(|(_, given)| !given).map(|(name, _)| name).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_validated_once() {
        assert_eq!(StreamName::new("association-0190c3e4.a:b_c").unwrap().as_str(), "association-0190c3e4.a:b_c");
        assert_eq!(StreamName::new("x".repeat(200)).unwrap().as_str().len(), 200);
        for bad in ["", "has space", "slash/", "é", "nul\0"] {
            assert_eq!(StreamName::new(bad), Err(StoreError::InvalidStreamName(bad.to_string())));
        }
        let too_long = "x".repeat(201);
        assert_eq!(StreamName::new(too_long.clone()), Err(StoreError::InvalidStreamName(too_long)));
    }

    #[test]
    fn stream_names_serialise_as_validated_strings() {
        let name = StreamName::new("campaign-1").unwrap();
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"campaign-1\"");
        assert_eq!(serde_json::from_str::<StreamName>("\"campaign-1\"").unwrap(), name);
        assert!(
            serde_json::from_str::<StreamName>("\"bad name\"").unwrap_err().to_string().contains("invalid stream name")
        );
    }

    #[test]
    fn capabilities_name_every_guarantee() {
        assert_eq!(Capabilities::ALL.missing(), Vec::<&str>::new());
        assert_eq!(Capabilities::NONE.missing(), ["gap_free_positions", "detects_event_id_reuse_across_streams"]);
        let some = Capabilities { gap_free_positions: true, ..Capabilities::NONE };
        assert_eq!(some.missing(), ["detects_event_id_reuse_across_streams"]);
        assert!(Capabilities::ALL.each().iter().all(|(_, given)| *given));
    }

    #[test]
    fn expected_version_matching() {
        assert!(ExpectedVersion::Any.matches(0) && ExpectedVersion::Any.matches(7));
        assert!(ExpectedVersion::NoStream.matches(0) && !ExpectedVersion::NoStream.matches(1));
        assert!(ExpectedVersion::Exact(0).matches(0) && ExpectedVersion::Exact(3).matches(3));
        assert!(!ExpectedVersion::Exact(3).matches(2));
    }
}
