//! The event store contract (`store::contract`) run against the SQLite adapter, each case
//! on a fresh database in its own temporary directory.

use std::sync::Arc;
use std::time::Duration;

use store::{AppendResult, EventStore, ExpectedVersion, NewEvent, SqliteStore, StoreError, StoredEvent, StreamName};
use tempfile::TempDir;

/// A store that owns its temporary directory, so the directory lives exactly as long as the store.
struct TempSqliteStore {
    store: SqliteStore,
    _dir: TempDir,
}

fn fresh_store() -> Arc<dyn EventStore> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(dir.path().join("events.db")).expect("open a new store");
    Arc::new(TempSqliteStore { store, _dir: dir })
}

impl EventStore for TempSqliteStore {
    fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        self.store.append(stream, expected, events)
    }
    fn read_stream(
        &self,
        stream: &StreamName,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.store.read_stream(stream, from_version, limit)
    }
    fn stream_version(&self, stream: &StreamName) -> Result<u64, StoreError> {
        self.store.stream_version(stream)
    }
    fn read_all(&self, after_position: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.store.read_all(after_position, limit)
    }
    fn head_position(&self) -> Result<u64, StoreError> {
        self.store.head_position()
    }
    fn wait_for_position_after(&self, position: u64, timeout: Duration) -> Result<u64, StoreError> {
        self.store.wait_for_position_after(position, timeout)
    }
    fn list_streams(&self) -> Result<Vec<(StreamName, u64)>, StoreError> {
        self.store.list_streams()
    }
    fn gap_free_positions(&self) -> bool {
        self.store.gap_free_positions()
    }
}

store::event_store_contract_tests!(fresh_store);
