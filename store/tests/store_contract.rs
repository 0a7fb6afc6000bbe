//! The event store contract (`store::contract`) run against the SQLite adapter, each case
//! on a fresh database in its own temporary directory. SQLite declares every guarantee, so every
//! case runs in full; the same cases also pass with the adapter declaring none, so the weaker
//! behaviour a case accepts from a lesser adapter never contradicts a full one.

use std::sync::Arc;
use std::time::Duration;

use store::contract::{CASES, WEAKER_WITHOUT};
use store::{
    AppendResult, Capabilities, EventStore, ExpectedVersion, NewEvent, SqliteStore, StoreError, StoredEvent, StreamName,
};
use tempfile::TempDir;

/// A store that owns its temporary directory, so the directory lives exactly as long as the store.
struct TempSqliteStore {
    store: SqliteStore,
    _dir: TempDir,
    /// What it declares: SQLite's own, or fewer to run the cases' weaker checks.
    capabilities: Capabilities,
}

fn store_declaring(capabilities: Capabilities) -> Arc<dyn EventStore> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(dir.path().join("events.db")).expect("open a new store");
    Arc::new(TempSqliteStore { store, _dir: dir, capabilities })
}

fn fresh_store() -> Arc<dyn EventStore> {
    store_declaring(SqliteStore::CAPABILITIES)
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
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }
}

store::event_store_contract_tests!(fresh_store);

/// The run above asserts every guarantee in full.
#[test]
fn the_sqlite_adapter_declares_every_capability() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(dir.path().join("events.db")).expect("open a new store");
    assert_eq!(store.capabilities(), Capabilities::ALL);
    assert_eq!(fresh_store().capabilities(), Capabilities::ALL);
}

#[test]
fn every_case_passes_on_sqlite_declaring_no_capability() {
    store::contract::run_all(&|| store_declaring(Capabilities::NONE));
}

#[test]
fn the_weakened_cases_name_real_cases_and_capabilities() {
    let names: Vec<&str> = CASES.iter().map(|(name, _)| *name).collect();
    let capabilities: Vec<&str> = WEAKER_WITHOUT.iter().map(|(capability, _)| *capability).collect();
    assert_eq!(capabilities, Capabilities::NONE.missing(), "one entry per capability, in declaration order");
    for (capability, cases) in WEAKER_WITHOUT {
        for case in *cases {
            assert!(names.contains(case), "{capability}: no case {case}");
        }
    }
    let missing = ["detects_event_id_reuse_across_streams"];
    assert_eq!(store::contract::weakened("failing_batch_appends_nothing", &missing), missing);
    assert!(store::contract::weakened("read_stream_ranges", &Capabilities::NONE.missing()).is_empty());
    assert!(store::contract::weakened("failing_batch_appends_nothing", &[]).is_empty());
}
