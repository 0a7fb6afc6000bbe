//! An event checked and made ready to append: the payload text that is stored and hashed, and
//! `recorded_at` truncated to microseconds. Shared by the adapters, so that both hash, store and
//! recognise a replay the same way.

use domain::EventMetadata;
use uuid::Uuid;

use super::chain::{self, EventFields};
use super::{NewEvent, StoreError, StoredEvent, StreamName};

/// A `NewEvent` made ready to store: payload text, and `recorded_at` truncated to microseconds.
/// Owned, because an append may be committed by another thread than the caller's.
#[derive(Debug, Clone)]
pub(crate) struct PreparedEvent {
    pub(crate) event_type: String,
    pub(crate) schema_version: u32,
    pub(crate) metadata: EventMetadata,
    pub(crate) payload: String,
}

impl PreparedEvent {
    pub(crate) fn fields<'b>(&'b self, stream: &'b StreamName, version: u64) -> EventFields<'b> {
        EventFields {
            stream: stream.as_str(),
            version,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            metadata: &self.metadata,
            payload: &self.payload,
        }
    }

    /// Whether `stored` is this very event (the idempotent-replay test). Payloads compare as JSON
    /// values, so a stored text that differs only in key order or spacing still counts as equal.
    pub(crate) fn is_same_as(&self, stream: &StreamName, stored: &StoredEvent) -> bool {
        let same_json = || {
            let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text).ok();
            parse(&stored.payload).is_some_and(|stored| parse(&self.payload) == Some(stored))
        };
        stored.stream == *stream
            && stored.event_type == self.event_type
            && stored.schema_version == self.schema_version
            && stored.metadata == self.metadata
            && (stored.payload == self.payload || same_json())
    }
}

/// Checks a batch (not empty, no id twice, a type, a representable time, a hashable size) and
/// prepares each event.
pub(crate) fn prepare(events: &[NewEvent]) -> Result<Vec<PreparedEvent>, StoreError> {
    if events.is_empty() {
        return Err(StoreError::EmptyAppend);
    }
    let mut ids: Vec<Uuid> = events.iter().map(|event| event.metadata.event_id).collect();
    ids.sort_unstable();
    if let Some(pair) = ids.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(StoreError::InvalidEvent(format!("event id {} appears twice in one append", pair[0])));
    }
    events
        .iter()
        .map(|event| {
            let event_id = event.metadata.event_id;
            if event.event_type.is_empty() {
                return Err(StoreError::InvalidEvent(format!("event {event_id} has an empty event type")));
            }
            if !chain::is_representable(&event.metadata.recorded_at) {
                return Err(StoreError::InvalidEvent(format!(
                    "event {event_id}: recorded_at must be within the years 0000 to 9999 (RFC 3339)"
                )));
            }
            let payload = serde_json::to_string(&event.payload)
                .map_err(|error| StoreError::InvalidEvent(format!("event {event_id}: payload: {error}")))?;
            // The hash prefixes each field with a u32 length.
            if payload.len() > u32::MAX as usize || event.metadata.actor.principal.len() > u32::MAX as usize {
                return Err(StoreError::InvalidEvent(format!("event {event_id} is too large")));
            }
            let metadata = EventMetadata {
                recorded_at: chain::truncate_to_micros(event.metadata.recorded_at),
                ..event.metadata.clone()
            };
            Ok(PreparedEvent {
                event_type: event.event_type.clone(),
                schema_version: event.schema_version,
                metadata,
                payload,
            })
        })
        .collect()
}
