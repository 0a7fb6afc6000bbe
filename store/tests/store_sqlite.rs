//! What is specific to the SQLite adapter: the file format check, persistence across opens, and
//! several handles (as several processes would) sharing one file.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde_json::json;
use store::chain::{self, VerifyReport};
use store::contract::new_event;
use store::{EventStore, ExpectedVersion, SqliteStore, StoreError, StreamName};

fn stream(name: &str) -> StreamName {
    StreamName::new(name).unwrap()
}

#[test]
fn events_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let events: Vec<_> = (0..3).map(|index| new_event("Kept", json!({ "index": index }))).collect();
    let first = SqliteStore::open(&path).unwrap();
    first.append(&stream("kept"), ExpectedVersion::NoStream, &events).unwrap();
    let before = first.read_all(0, 100).unwrap();
    drop(first);

    let reopened = SqliteStore::open(&path).unwrap();
    assert_eq!(reopened.read_all(0, 100).unwrap(), before);
    let result = reopened.append(&stream("kept"), ExpectedVersion::Exact(3), &[new_event("Kept", json!(3))]).unwrap();
    assert_eq!((result.first_position, result.stream_version), (4, 4));
    assert_eq!(chain::verify(&reopened), Ok(VerifyReport { events: 4, streams: 1 }));
}

#[test]
fn a_newer_format_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    drop(SqliteStore::open(&path).unwrap());
    Connection::open(&path).unwrap().pragma_update(None, "user_version", 2).unwrap();

    let Err(StoreError::UnsupportedFormat(message)) = SqliteStore::open(&path) else {
        panic!("a newer format must be refused")
    };
    assert!(message.contains("format 2, written by a newer thitl; this build reads format 1"), "{message}");
    let format: i32 =
        Connection::open(&path).unwrap().pragma_query_value(None, "user_version", |row| row.get(0)).unwrap();
    assert_eq!(format, 2);
}

#[test]
fn other_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text_file = dir.path().join("notes.txt");
    std::fs::write(&text_file, "this is not a database, just some words that fill a page.".repeat(100)).unwrap();
    let Err(StoreError::UnsupportedFormat(message)) = SqliteStore::open(&text_file) else {
        panic!("a text file must be refused")
    };
    assert!(message.contains("is not an SQLite database"), "{message}");

    let other_database = dir.path().join("other.db");
    Connection::open(&other_database).unwrap().execute_batch("CREATE TABLE things (id INTEGER)").unwrap();
    let Err(StoreError::UnsupportedFormat(message)) = SqliteStore::open(&other_database) else {
        panic!("another database must be refused")
    };
    assert!(message.contains("not a thitl event store"), "{message}");

    let missing_dir = dir.path().join("no-such-dir").join("events.db");
    assert!(matches!(SqliteStore::open(&missing_dir), Err(StoreError::Backend(_))));
}

#[test]
fn two_handles_on_one_file_share_positions_and_see_each_others_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let first = Arc::new(SqliteStore::open(&path).unwrap());
    let second = Arc::new(SqliteStore::open(&path).unwrap());

    // The in-process notification of `second` never fires for `first`'s appends: the poll must.
    let waiter = {
        let second = Arc::clone(&second);
        thread::spawn(move || {
            let started = Instant::now();
            (second.wait_for_position_after(0, Duration::from_secs(20)).unwrap(), started.elapsed())
        })
    };
    thread::sleep(Duration::from_millis(100));
    first.append(&stream("shared"), ExpectedVersion::NoStream, &[new_event("Shared", json!(0))]).unwrap();
    let (head, waited) = waiter.join().unwrap();
    assert_eq!(head, 1);
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");

    let writers: Vec<_> = [first.clone(), second.clone()]
        .into_iter()
        .enumerate()
        .map(|(index, store)| {
            thread::spawn(move || {
                for round in 0..100 {
                    store
                        .append(
                            &stream(&format!("handle-{index}")),
                            ExpectedVersion::Any,
                            &[new_event("Shared", json!(round))],
                        )
                        .unwrap();
                    store
                        .append(&stream("shared"), ExpectedVersion::Any, &[new_event("Shared", json!(round))])
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let positions: Vec<u64> = first.read_all(0, usize::MAX).unwrap().iter().map(|event| event.position).collect();
    assert_eq!(positions, (1..=401).collect::<Vec<_>>());
    assert_eq!(second.stream_version(&stream("shared")).unwrap(), 201);
    assert_eq!(chain::verify(&*second), Ok(VerifyReport { events: 401, streams: 3 }));
}

/// Concurrent appends are committed in groups, each append in its own savepoint: conflicting
/// ones must fail alone, without holes in the positions or effects on their group.
#[test]
fn conflicting_concurrent_appends_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("events.db")).unwrap());
    let contested = stream("contested");
    let threads: Vec<_> = (0..8)
        .map(|thread_index| {
            let store = Arc::clone(&store);
            let contested = contested.clone();
            thread::spawn(move || {
                let (mut appended, mut conflicts) = (0u64, 0u64);
                for round in 0..60 {
                    let version = store.stream_version(&contested).unwrap();
                    let events = [
                        new_event("Contested", json!({ "thread": thread_index, "round": round })),
                        new_event("Contested", json!({ "thread": thread_index, "round": round })),
                    ];
                    match store.append(&contested, ExpectedVersion::Exact(version), &events) {
                        Ok(result) => {
                            assert_eq!(result.stream_version, version + 2);
                            appended += 2;
                        }
                        Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                            assert!(actual > version);
                            conflicts += 1;
                        }
                        Err(other) => panic!("unexpected error: {other}"),
                    }
                    // Uncontested appends share the same groups.
                    let own = stream(&format!("own-{thread_index}"));
                    store.append(&own, ExpectedVersion::Exact(round), &[new_event("Own", json!(round))]).unwrap();
                }
                (appended, conflicts)
            })
        })
        .collect();
    let (appended, conflicts) = threads
        .into_iter()
        .map(|thread| thread.join().unwrap())
        .fold((0, 0), |total, each| (total.0 + each.0, total.1 + each.1));

    assert_eq!(store.stream_version(&contested).unwrap(), appended);
    let total = appended + 8 * 60;
    let positions: Vec<u64> = store.read_all(0, usize::MAX).unwrap().iter().map(|event| event.position).collect();
    assert_eq!(positions, (1..=total).collect::<Vec<_>>());
    assert_eq!(chain::verify(&*store), Ok(VerifyReport { events: total, streams: 9 }));
    // On two cores the threads do contend; the count only shows the case was exercised.
    println!("{appended} contested events appended, {conflicts} conflicts");
}
