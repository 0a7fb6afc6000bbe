//! `thitl audit …` and `thitl projections rebuild` on a data directory a campaign wrote.

use std::path::Path;

use serde_json::Value;

use crate::helpers::{campaign_copy, stdout, thitl};

fn db(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("events.db")).expect("open events.db")
}

/// The number of blobs `audit verify` says it rehashed ("… N blobs (X MB) verified").
fn blob_count(out: &str) -> u64 {
    let before = out.split(" blobs (").next().unwrap_or_default();
    before
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no blob count in {out}"))
}

fn verify(dir: &Path) -> (i32, String) {
    let output = thitl(&["audit", "verify", "--data", dir.to_str().unwrap()]);
    (output.status.code().unwrap_or(-1), stdout(&output))
}

#[test]
fn verify_passes_on_an_untouched_campaign() {
    let dir = campaign_copy();
    let (code, out) = verify(dir.path());
    assert_eq!(code, 0, "{out}");
    let line = out.lines().next().unwrap_or_default();
    assert!(line.ends_with("streams verified"), "{line}");
    // The demo's blobs: the base weights, every image and both adapters, each rehashed.
    assert!(blob_count(&out) > 100, "{out}");
    let events: u64 = line.split_whitespace().next().unwrap().parse().unwrap();
    let rows: i64 = db(dir.path()).query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0)).unwrap();
    assert_eq!(events, rows as u64);
}

/// A row of a round stream in the middle of its history: (position, stream, version).
fn middle_of_a_round(dir: &Path) -> (i64, String, i64) {
    db(dir)
        .query_row(
            "SELECT position, stream, version FROM events WHERE stream LIKE 'round-%' AND version = 10 LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("a round with at least 10 events")
}

#[test]
fn verify_detects_a_changed_payload_byte() {
    let dir = campaign_copy();
    let (position, stream, version) = middle_of_a_round(dir.path());
    let payload: String =
        db(dir.path()).query_row("SELECT payload FROM events WHERE position = ?1", [position], |r| r.get(0)).unwrap();
    // Flip one annotator's answer: the kind of edit a tamperer would make.
    let tampered =
        if payload.contains("true") { payload.replacen("true", "fals", 1) } else { payload.replacen('a', "b", 1) };
    assert_ne!(tampered, payload);
    db(dir.path())
        .execute("UPDATE events SET payload = ?1 WHERE position = ?2", rusqlite::params![tampered, position])
        .unwrap();
    let (code, out) = verify(dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("stream {stream} version {version}")), "{out}");
    assert!(out.contains("hash mismatch"), "{out}");
}

#[test]
fn verify_detects_a_deleted_row() {
    let dir = campaign_copy();
    let (position, stream, version) = middle_of_a_round(dir.path());
    db(dir.path()).execute("DELETE FROM events WHERE position = ?1", [position]).unwrap();
    let (code, out) = verify(dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("stream {stream} version {version}")), "{out}");
    assert!(out.contains("missing"), "{out}");
}

#[test]
fn verify_detects_two_swapped_rows() {
    let dir = campaign_copy();
    let (position, stream, version) = middle_of_a_round(dir.path());
    let next: i64 = db(dir.path())
        .query_row(
            "SELECT position FROM events WHERE stream = ?1 AND version = ?2",
            rusqlite::params![stream, version + 1],
            |r| r.get(0),
        )
        .unwrap();
    // Swap the two events' places in the log: move one aside, move the other in, move it back.
    let conn = db(dir.path());
    conn.execute("UPDATE events SET position = -1 WHERE position = ?1", [position]).unwrap();
    conn.execute("UPDATE events SET position = ?1 WHERE position = ?2", [position, next]).unwrap();
    conn.execute("UPDATE events SET position = ?1 WHERE position = -1", [next]).unwrap();
    let (code, out) = verify(dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("stream {stream} version")), "{out}");
}

#[test]
fn verify_refuses_a_directory_without_a_store() {
    let empty = tempfile::tempdir().unwrap();
    let output = thitl(&["audit", "verify", "--data", empty.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no event store"));
    assert!(!empty.path().join("events.db").exists(), "verify must not create a store");
}

fn replay(dir: &Path, until: &str) -> Value {
    let output = thitl(&["audit", "replay", "--data", dir.to_str().unwrap(), "--until", until, "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(&stdout(&output)).expect("replay --json prints JSON")
}

#[test]
fn replay_at_an_earlier_position_shows_the_earlier_state() {
    let dir = campaign_copy();
    let conn = db(dir.path());
    let head: i64 = conn.query_row("SELECT MAX(position) FROM events", [], |r| r.get(0)).unwrap();
    // The position where round 1 (the quality screen) was opened.
    let round1_opened: i64 = conn
        .query_row(
            "SELECT position FROM events WHERE event_type = 'RoundOpened' AND payload LIKE '%\"kind\":\"screen\"%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let (head, round1_opened) = (head as u64, round1_opened as u64);
    let before = replay(dir.path(), &(round1_opened - 1).to_string());
    let after = replay(dir.path(), &round1_opened.to_string());
    let full = replay(dir.path(), &head.to_string());
    let rounds = |v: &Value| v["rounds"]["rounds"].as_object().unwrap().len();
    assert_eq!(before["position"], round1_opened - 1);
    assert_eq!(rounds(&before), 1, "only the baseline round existed before");
    assert_eq!(rounds(&after), 2);
    assert_eq!(rounds(&full), 3);
    assert_eq!(full["audit"]["events"], head);
    // No evaluation was known before the campaign recorded it.
    let evaluations = |v: &Value| {
        v["associations"]["associations"]
            .as_object()
            .unwrap()
            .values()
            .map(|a| a["evaluations"].as_array().unwrap().len())
            .sum::<usize>()
    };
    assert_eq!(evaluations(&before), 0);
    assert_eq!(evaluations(&full), 6, "three associations × the T-HITL and the traditional arm");

    // The same cut by time: everything recorded at or before the round-1 event's time.
    let recorded_at: String = conn
        .query_row("SELECT recorded_at FROM events WHERE position = ?1", [round1_opened as i64], |r| r.get(0))
        .unwrap();
    let by_time = replay(dir.path(), &recorded_at);
    assert!(by_time["position"].as_u64().unwrap() >= round1_opened);
    assert!(by_time["position"].as_u64().unwrap() < head);
    assert_eq!(rounds(&by_time), 2);
}

#[test]
fn replay_rejects_an_unreadable_until() {
    let dir = campaign_copy();
    let output = thitl(&["audit", "replay", "--data", dir.path().to_str().unwrap(), "--until", "yesterday"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("RFC 3339"));
}

#[test]
fn rebuild_reproduces_the_checkpointed_state() {
    let dir = campaign_copy();
    let checkpoint = dir.path().join("projections.json");
    let live: Value = serde_json::from_slice(&std::fs::read(&checkpoint).unwrap()).unwrap();
    let output = thitl(&["projections", "rebuild", "--data", dir.path().to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout(&output).contains("rebuilt projections from position 0"));
    let rebuilt: Value = serde_json::from_slice(&std::fs::read(&checkpoint).unwrap()).unwrap();
    assert_eq!(live["position"], rebuilt["position"]);
    assert_eq!(live["projections"], rebuilt["projections"]);
}

#[test]
fn log_prints_one_stream_or_the_global_log_as_json() {
    let dir = campaign_copy();
    let output = thitl(&["audit", "log", "--data", dir.path().to_str().unwrap(), "--stream", "taxonomy", "--json"]);
    assert!(output.status.success());
    let events: Vec<Value> = stdout(&output).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 4, "the four default categories");
    assert!(events.iter().all(|e| e["type"] == "CategoryDefined" && e["stream"] == "taxonomy"));
    let output =
        thitl(&["audit", "log", "--data", dir.path().to_str().unwrap(), "--after", "10", "--limit", "5", "--json"]);
    let positions: Vec<u64> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, [11, 12, 13, 14, 15]);
    let output = thitl(&["audit", "log", "--data", dir.path().to_str().unwrap(), "--stream", "no spaces allowed"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn verify_rehashes_every_blob() {
    use app::blobs::{BlobStore, LocalBlobStore};
    let dir = campaign_copy();
    let (_, out) = verify(dir.path());
    let blobs = blob_count(&out);
    let stored =
        LocalBlobStore::open(&dir.path().join("blobs")).unwrap().put(b"\x89PNG\r\n\x1a\n not really an image").unwrap();
    let (code, out) = verify(dir.path());
    assert_eq!(code, 0, "{out}");
    assert_eq!(blob_count(&out), blobs + 1, "{out}");

    // Change one byte of the stored blob: its name no longer matches its content.
    let hash = stored.hash.as_str().to_string();
    let path = dir.path().join("blobs").join(&hash[..2]).join(&hash);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let (code, out) = verify(dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("streams verified"), "the chains still verify: {out}");
    assert!(out.contains(&format!("blob {hash} is corrupt")), "{out}");
}
