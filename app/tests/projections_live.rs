//! The projection runner, following a store while a campaign is written to it, ends in exactly
//! the state that a rebuild from position 0 gives; and a runner restarted from its checkpoint
//! continues where it left off.

mod common;

use std::sync::Arc;
use std::time::Duration;

use app::commands::CommandBus;
use app::runner::{ProjectionRunner, RunnerHandle, Until, replay};
use common::{Scale, scripted_campaign};
use store::{EventStore, SqliteStore};

#[test]
fn live_projections_equal_a_rebuild_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(dir.path().join("events.db")).unwrap());
    let checkpoint = dir.path().join("projections.json");

    // Follow the store from the start, while the campaign runs.
    let live = RunnerHandle::spawn(Arc::new(ProjectionRunner::open(store.clone(), Some(checkpoint.clone())).unwrap()));
    let bus = CommandBus::new(store.clone());
    let report = scripted_campaign(&bus, Scale::QUICK, 7);
    assert_eq!(report.stages.last().map(String::as_str), Some("completed"));

    let head = store.head_position().unwrap();
    assert!(live.runner.wait_for(head, Duration::from_secs(30)), "runner did not catch up");
    let live_state = live.runner.read(|p| p.clone());
    live.stop().unwrap();

    let rebuilt = replay(store.as_ref(), Until::Position(u64::MAX)).unwrap();
    assert_eq!(live_state.position, head);
    assert_eq!(live_state, rebuilt);
    assert_eq!(rebuilt.associations.associations.len(), 3);
    assert_eq!(rebuilt.rounds.rounds.len(), 3);
    assert!(rebuilt.rounds.rounds.values().all(|r| r.status == "closed"));

    // A new runner starts from the checkpoint the first one saved, not from zero…
    let resumed = ProjectionRunner::open(store.clone(), Some(checkpoint.clone())).unwrap();
    assert_eq!(resumed.position(), head);
    // …and keeps folding new events.
    scripted_campaign(&bus, Scale::QUICK, 8);
    let new_head = resumed.catch_up().unwrap();
    assert_eq!(new_head, store.head_position().unwrap());
    let resumed_state = resumed.read(|p| p.clone());
    assert_eq!(resumed_state, replay(store.as_ref(), Until::Position(u64::MAX)).unwrap());
    assert_eq!(resumed_state.associations.associations.len(), 6);
}

#[test]
fn a_checkpoint_from_another_store_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let first: Arc<dyn EventStore> = Arc::new(SqliteStore::open(dir.path().join("a.db")).unwrap());
    let checkpoint = dir.path().join("projections.json");
    scripted_campaign(&CommandBus::new(first.clone()), Scale::QUICK, 1);
    let runner = ProjectionRunner::open(first.clone(), Some(checkpoint.clone())).unwrap();
    runner.catch_up().unwrap();
    runner.save().unwrap();

    // A different store with as many events: the checkpoint's last hash does not match.
    let second: Arc<dyn EventStore> = Arc::new(SqliteStore::open(dir.path().join("b.db")).unwrap());
    scripted_campaign(&CommandBus::new(second.clone()), Scale::QUICK, 2);
    let runner = ProjectionRunner::open(second.clone(), Some(checkpoint)).unwrap();
    assert_eq!(runner.position(), 0, "a foreign checkpoint must not be trusted");
    runner.catch_up().unwrap();
    assert_eq!(runner.read(|p| p.clone()), replay(second.as_ref(), Until::Position(u64::MAX)).unwrap());
}
