//! A subscription to the whole log: catch up from a position, then follow live appends.
//!
//! There is no separate "live mode" to switch into, which is what keeps the switch free of gaps
//! and duplicates: every batch is a `read_all` after the last position handed out, and waiting
//! (`wait_for_position_after`) only decides *when* to read again, never *what*. This relies on the
//! store's promise that once a position is visible every smaller one is too.

use std::sync::Arc;
use std::time::Duration;

use super::{EventStore, StoreError, StoredEvent};

/// Reads the log in order from a checkpoint; see the module doc.
pub struct Subscription {
    store: Arc<dyn EventStore>,
    position: u64,
}

/// Subscribes to every event with a position greater than `after_position` (0 = from the start).
pub fn subscribe(store: Arc<dyn EventStore>, after_position: u64) -> Subscription {
    Subscription { store, position: after_position }
}

impl Subscription {
    /// The position of the last event handed out (the checkpoint a consumer persists).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Up to `max` next events, in position order. Returns at once while catching up; when caught
    /// up, waits up to `timeout` for new events and returns an empty batch if none came.
    pub fn next_batch(&mut self, max: usize, timeout: Duration) -> Result<Vec<StoredEvent>, StoreError> {
        let events = self.read(max)?;
        if !events.is_empty() || max == 0 {
            return Ok(events);
        }
        let head = self.store.wait_for_position_after(self.position, timeout)?;
        if head <= self.position {
            return Ok(Vec::new());
        }
        self.read(max)
    }

    fn read(&mut self, max: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let events = self.store.read_all(self.position, max)?;
        let mut previous = self.position;
        for event in &events {
            if event.position <= previous {
                return Err(StoreError::Corrupt(format!(
                    "read_all after position {} returned position {} after {previous}",
                    self.position, event.position
                )));
            }
            previous = event.position;
        }
        self.position = previous;
        Ok(events)
    }
}
