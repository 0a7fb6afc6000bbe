//! Tampering with the SQLite file behind the store's back must make `verify` fail, naming the
//! stream and version (or log position) that was touched.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};
use serde_json::json;
use store::chain::{self, EventProblem, LogProblem, VerifyFailure, VerifyReport};
use store::contract::new_event;
use store::{EventStore, ExpectedVersion, SqliteStore, StoreError, StoredEvent, StreamName};
use tempfile::TempDir;

const STREAM_A: &str = "association-a";

/// Three interleaved streams: association-a (6 events), association-b (5), model-c (4).
fn build_store() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = SqliteStore::open(&path).unwrap();
    let plan = [("association-a", 6), ("association-b", 5), ("model-c", 4)];
    for round in 0..6 {
        for (name, count) in plan {
            if round < count {
                let event = new_event("Tamperable", json!({ "stream": name, "round": round, "text": "abcdef" }));
                store.append(&StreamName::new(name).unwrap(), ExpectedVersion::Exact(round as u64), &[event]).unwrap();
            }
        }
    }
    assert_eq!(chain::verify(&store), Ok(VerifyReport { events: 15, streams: 3 }));
    (dir, path)
}

fn event_at(path: &Path, stream: &str, version: u64) -> StoredEvent {
    let store = SqliteStore::open(path).unwrap();
    store.read_stream(&StreamName::new(stream).unwrap(), version, 1).unwrap().remove(0)
}

fn tamper(path: &Path, sql: &str, params: impl rusqlite::Params) {
    let connection = Connection::open(path).unwrap();
    let changed = connection.execute(sql, params).unwrap();
    assert_eq!(changed, 1, "{sql}");
}

fn verify_file(path: &Path) -> Result<VerifyReport, VerifyFailure> {
    chain::verify(&SqliteStore::open(path).unwrap())
}

fn event_failure(version: u64, position: Option<u64>, problem: EventProblem) -> VerifyFailure {
    VerifyFailure::Event { stream: StreamName::new(STREAM_A).unwrap(), version, position, problem }
}

#[test]
fn changed_payload_byte_is_a_hash_mismatch() {
    let (_dir, path) = build_store();
    let target = event_at(&path, STREAM_A, 3);
    let tampered = target.payload.replacen("abcdef", "abcdeF", 1);
    assert_ne!(tampered, target.payload);
    tamper(&path, "UPDATE events SET payload = ?1 WHERE position = ?2", params![tampered, target.position as i64]);

    let failure = verify_file(&path).unwrap_err();
    assert_eq!(failure, event_failure(3, Some(target.position), EventProblem::HashMismatch));
    assert_eq!(
        failure.to_string(),
        format!(
            "stream association-a version 3 (position {}): hash mismatch — the stored event differs from what was appended",
            target.position
        )
    );
}

#[test]
fn deleted_row_is_a_missing_version() {
    let (_dir, path) = build_store();
    tamper(&path, "DELETE FROM events WHERE stream = ?1 AND version = 3", [STREAM_A]);

    let failure = verify_file(&path).unwrap_err();
    assert_eq!(failure, event_failure(3, None, EventProblem::Missing { next_stored: Some(4) }));
    assert!(failure.to_string().starts_with("stream association-a version 3: missing"), "{failure}");
}

#[test]
fn deleted_last_event_of_a_stream_is_a_hole_in_the_log() {
    let (_dir, path) = build_store();
    // The stream's chain alone cannot show a truncated tail; the gap-free log does.
    // (model-c's last event is not the log's last, whose deletion nothing in the store can show.)
    let last = event_at(&path, "model-c", 4);
    tamper(&path, "DELETE FROM events WHERE position = ?1", [last.position as i64]);

    assert_eq!(verify_file(&path), Err(VerifyFailure::Log { position: last.position, problem: LogProblem::Missing }));
}

#[test]
fn swapped_positions_within_a_stream_are_out_of_order() {
    let (_dir, path) = build_store();
    let (second, third) = (event_at(&path, STREAM_A, 2), event_at(&path, STREAM_A, 3));
    let connection = Connection::open(&path).unwrap();
    connection
        .execute_batch(&format!(
            "BEGIN;
             UPDATE events SET position = -1 WHERE position = {p2};
             UPDATE events SET position = {p2} WHERE position = {p3};
             UPDATE events SET position = {p3} WHERE position = -1;
             COMMIT;",
            p2 = second.position,
            p3 = third.position
        ))
        .unwrap();
    drop(connection);

    // Version 2 now sits at the later position, so version 3 is the first one out of order.
    assert_eq!(
        verify_file(&path),
        Err(event_failure(3, Some(second.position), EventProblem::OutOfOrder { previous_position: third.position }))
    );
}

#[test]
fn swapped_versions_within_a_stream_break_the_chain() {
    let (_dir, path) = build_store();
    let connection = Connection::open(&path).unwrap();
    connection
        .execute_batch(
            "BEGIN;
             UPDATE events SET version = -1 WHERE stream = 'association-a' AND version = 2;
             UPDATE events SET version = 2 WHERE stream = 'association-a' AND version = 3;
             UPDATE events SET version = 3 WHERE stream = 'association-a' AND version = -1;
             COMMIT;",
        )
        .unwrap();
    drop(connection);
    let now_second = event_at(&path, STREAM_A, 2);

    assert_eq!(verify_file(&path), Err(event_failure(2, Some(now_second.position), EventProblem::BrokenLink)));
}

#[test]
fn rehashed_tampered_event_breaks_the_next_link() {
    let (_dir, path) = build_store();
    let mut target = event_at(&path, STREAM_A, 3);
    target.payload = target.payload.replacen("abcdef", "abcdeF", 1);
    let forged_hash = chain::recompute_hash(&target);
    tamper(
        &path,
        "UPDATE events SET payload = ?1, hash = ?2 WHERE position = ?3",
        params![target.payload, &forged_hash[..], target.position as i64],
    );
    let next = event_at(&path, STREAM_A, 4);

    assert_eq!(verify_file(&path), Err(event_failure(4, Some(next.position), EventProblem::BrokenLink)));

    // Forging the next link too just moves the failure to that event's own hash.
    tamper(
        &path,
        "UPDATE events SET prev_hash = ?1 WHERE position = ?2",
        params![&forged_hash[..], next.position as i64],
    );
    assert_eq!(verify_file(&path), Err(event_failure(4, Some(next.position), EventProblem::HashMismatch)));
}

#[test]
fn unreadable_row_is_reported_as_corrupt() {
    let (_dir, path) = build_store();
    let target = event_at(&path, STREAM_A, 2);
    tamper(&path, "UPDATE events SET recorded_at = 'yesterday' WHERE position = ?1", [target.position as i64]);

    assert_eq!(
        verify_file(&path),
        Err(VerifyFailure::Store(StoreError::Corrupt(format!("position {}: unreadable recorded_at", target.position))))
    );
}
