//! An acknowledged append survives SIGKILL.
//!
//! The test re-runs this test binary, filtered to itself, as a child process with an environment
//! variable that makes the same test the appender: it appends from several threads and prints
//! `ack <event id>` only after `append` returned. The parent kills it mid-way, reopens the store
//! and checks that every acknowledged event is there, positions have no gaps, streams are
//! contiguous and every chain verifies. Three rounds on the same file, each appending more.
//! (One test that is either side, rather than a second `#[test]` for the child, so that nothing
//! counts as a passing test without checking anything.)

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use store::chain;
use store::contract::new_event;
use store::{EventStore, ExpectedVersion, SqliteStore, StreamName};
use uuid::Uuid;

/// Set to the store's path (and `ROUND` to the round) in the child.
const CHILD_STORE: &str = "THITL_DURABILITY_CHILD_STORE";
const CHILD_ROUND: &str = "THITL_DURABILITY_CHILD_ROUND";
const CHILD_THREADS: usize = 4;
const ACKS_BEFORE_KILL: usize = 500;

/// The test's own name, which the child is run filtered to.
const TEST_NAME: &str = "sigkill_during_appends_loses_no_acknowledged_event";

/// The child: appends to the store at `path` until killed (or, should the parent be gone, for at
/// most a minute).
fn append_until_killed(path: &str) {
    let round: usize = std::env::var(CHILD_ROUND).unwrap().parse().unwrap();
    let store = Arc::new(SqliteStore::open(path).unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let threads: Vec<_> = (0..CHILD_THREADS)
        .map(|thread_index| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                let mut count = 0usize;
                while Instant::now() < deadline {
                    // Singles and small batches; a shared stream makes threads contend for versions.
                    let name = if count.is_multiple_of(3) {
                        "durability-shared".to_string()
                    } else {
                        format!("durability-{round}-{thread_index}")
                    };
                    let size = 1 + count % 3;
                    let events: Vec<_> = (0..size)
                        .map(|index| {
                            new_event("Durable", json!({ "thread": thread_index, "count": count, "index": index }))
                        })
                        .collect();
                    store.append(&StreamName::new(name).unwrap(), ExpectedVersion::Any, &events).unwrap();
                    let mut stdout = std::io::stdout().lock();
                    for event in &events {
                        writeln!(stdout, "ack {}", event.metadata.event_id).unwrap();
                    }
                    stdout.flush().unwrap();
                    count += 1;
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

/// Runs one child until `ACKS_BEFORE_KILL` acknowledgements, SIGKILLs it, and returns every
/// event id it acknowledged (including those still in the pipe when it died).
fn run_child_and_kill(path: &Path, round: usize) -> Vec<Uuid> {
    // `--quiet`: the harness prints no "test … " before the child's first line.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1", "--quiet"])
        .env(CHILD_STORE, path)
        .env(CHILD_ROUND, round.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut acknowledged = Vec::new();
    let mut killed = false;
    for line in stdout.lines() {
        let line = line.unwrap();
        let Some(id) = line.strip_prefix("ack ") else {
            continue;
        };
        acknowledged.push(Uuid::parse_str(id).unwrap());
        if !killed && acknowledged.len() >= ACKS_BEFORE_KILL {
            child.kill().unwrap(); // SIGKILL on Unix: no destructors, no flush, no checkpoint.
            killed = true;
        }
    }
    let status = child.wait().unwrap();
    assert!(killed && !status.success(), "the child ended on its own: {status:?}");
    acknowledged
}

fn assert_store_intact(path: &Path, acknowledged: &HashSet<Uuid>) -> u64 {
    let store = SqliteStore::open(path).unwrap();
    let all = store.read_all(0, usize::MAX).unwrap();
    let positions: Vec<u64> = all.iter().map(|event| event.position).collect();
    assert!(positions.iter().copied().eq(1..=all.len() as u64), "positions are not 1..={}", all.len());

    let stored: HashSet<Uuid> = all.iter().map(|event| event.metadata.event_id).collect();
    let lost: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "{} acknowledged events lost, e.g. {:?}", lost.len(), lost.first());

    let mut versions: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for event in &all {
        versions.entry(event.stream.as_str()).or_default().push(event.version);
    }
    for (stream, versions) in &versions {
        assert!(versions.iter().copied().eq(1..=versions.len() as u64), "stream {stream} versions are not contiguous");
    }
    let report = chain::verify(&store).unwrap();
    assert_eq!(report.events, all.len() as u64);
    report.events
}

#[test]
fn sigkill_during_appends_loses_no_acknowledged_event() {
    if let Ok(path) = std::env::var(CHILD_STORE) {
        append_until_killed(&path);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let mut acknowledged = HashSet::new();
    let mut previous_total = 0;
    for round in 0..3 {
        acknowledged.extend(run_child_and_kill(&path, round));
        let total = assert_store_intact(&path, &acknowledged);
        assert!(total >= acknowledged.len() as u64 && total > previous_total, "round {round}: {total} events");
        previous_total = total;
    }
}
