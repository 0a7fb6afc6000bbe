//! The behaviour every [`EventStore`] adapter must have, as test cases written against the trait
//! only. An adapter's integration test runs them all with one line per adapter:
//!
//! ```text
//! store::event_store_contract_tests!(fresh_store); // fn fresh_store() -> Arc<dyn EventStore>
//! ```
//!
//! which generates one `#[test]` per case; [`run_all`] runs them in sequence instead. `make` must
//! return a new, empty store on each call. The cases panic (they are assertions), so this module
//! is only meant to be called from tests; it is compiled into the library so that adapters in
//! other crates or test binaries share it.
//!
//! A case that tests a guarantee only some adapters give ([`Capabilities`]) asks the store's
//! [`EventStore::capabilities`]: where the guarantee is declared it asserts it, and where it is
//! not it asserts what every adapter still promises instead, so every case can pass on every
//! correct adapter. [`WEAKER_WITHOUT`] lists those cases, for harnesses to report.
//!
//! [`Capabilities`]: crate::Capabilities

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use chrono::Utc;
use domain::{Actor, EventMetadata, Role};
use serde_json::json;
use uuid::Uuid;

use super::chain::{self, VerifyReport};
use super::subscription::subscribe;
use super::{AppendResult, EventStore, ExpectedVersion, NewEvent, StoreError, StoredEvent, StreamName};

/// Makes a fresh, empty store for one case.
pub type MakeStore<'a> = &'a dyn Fn() -> Arc<dyn EventStore>;

/// One contract case.
pub type ContractCase = fn(MakeStore<'_>);

/// Every case, by name.
pub const CASES: &[(&str, ContractCase)] = &[
    ("append_to_new_stream", append_to_new_stream),
    ("expected_version_conflicts", expected_version_conflicts),
    ("failing_batch_appends_nothing", failing_batch_appends_nothing),
    ("replayed_event_ids_are_idempotent", replayed_event_ids_are_idempotent),
    ("same_event_id_with_different_content_is_rejected", same_event_id_with_different_content_is_rejected),
    ("read_stream_ranges", read_stream_ranges),
    ("read_all_ordering_and_limits", read_all_ordering_and_limits),
    ("positions_strictly_increase", positions_strictly_increase),
    ("hashes_chain_and_verify_passes", hashes_chain_and_verify_passes),
    (
        "subscription_catches_up_then_follows_concurrent_appends",
        subscription_catches_up_then_follows_concurrent_appends,
    ),
    (
        "wait_for_position_after_returns_on_append_and_on_timeout",
        wait_for_position_after_returns_on_append_and_on_timeout,
    ),
    ("list_streams_reports_every_stream_version", list_streams_reports_every_stream_version),
];

/// For each guarantee of [`Capabilities`] (by the name [`Capabilities::missing`] gives), the
/// cases that assert it only where it is declared, and otherwise a weaker behaviour.
///
/// [`Capabilities`]: crate::Capabilities
/// [`Capabilities::missing`]: crate::Capabilities::missing
pub const WEAKER_WITHOUT: &[(&str, &[&str])] = &[
    (
        "gap_free_positions",
        &[
            "append_to_new_stream",
            "failing_batch_appends_nothing",
            "positions_strictly_increase",
            "subscription_catches_up_then_follows_concurrent_appends",
        ],
    ),
    (
        "detects_event_id_reuse_across_streams",
        &["failing_batch_appends_nothing", "same_event_id_with_different_content_is_rejected"],
    ),
];

/// The guarantees among `missing` (names from [`Capabilities::missing`]) without which case
/// `name` asserts a weaker behaviour.
///
/// [`Capabilities::missing`]: crate::Capabilities::missing
pub fn weakened(name: &str, missing: &[&'static str]) -> Vec<&'static str> {
    WEAKER_WITHOUT
        .iter()
        .filter(|(capability, cases)| missing.contains(capability) && cases.contains(&name))
        .map(|(capability, _)| *capability)
        .collect()
}

/// Runs every case, each on a fresh store.
pub fn run_all(make: MakeStore<'_>) {
    for (_, case) in CASES {
        case(make);
    }
}

/// Generates one `#[test]` per contract case, each calling `$make()` for a fresh store.
#[macro_export]
macro_rules! event_store_contract_tests {
    ($make:path) => {
        $crate::event_store_contract_tests!(@cases $make;
            append_to_new_stream,
            expected_version_conflicts,
            failing_batch_appends_nothing,
            replayed_event_ids_are_idempotent,
            same_event_id_with_different_content_is_rejected,
            read_stream_ranges,
            read_all_ordering_and_limits,
            positions_strictly_increase,
            hashes_chain_and_verify_passes,
            subscription_catches_up_then_follows_concurrent_appends,
            wait_for_position_after_returns_on_append_and_on_timeout,
            list_streams_reports_every_stream_version,
        );
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::contract::$case(&$make);
            }
        )*
    };
}

/// A new event with fresh ids and the current time (nanoseconds included, which the store
/// truncates to microseconds).
pub fn new_event(event_type: &str, payload: serde_json::Value) -> NewEvent {
    NewEvent {
        event_type: event_type.to_owned(),
        schema_version: 1,
        payload,
        metadata: EventMetadata {
            event_id: Uuid::now_v7(),
            recorded_at: Utc::now(),
            actor: Actor::new("contract-test", Role::Curator),
            correlation_id: Uuid::now_v7(),
            causation_id: None,
        },
    }
}

fn numbered_events(count: usize, label: &str) -> Vec<NewEvent> {
    (0..count).map(|index| new_event("Numbered", json!({ "label": label, "index": index }))).collect()
}

fn stream(name: &str) -> StreamName {
    StreamName::new(name).expect("test stream names are valid")
}

fn read_everything(store: &dyn EventStore) -> Vec<StoredEvent> {
    store.read_all(0, usize::MAX).expect("read_all")
}

/// Asserts that `stored` is what `new` became when appended.
fn assert_stored_as(stored: &StoredEvent, new: &NewEvent) {
    assert_eq!(stored.event_type, new.event_type);
    assert_eq!(stored.schema_version, new.schema_version);
    assert_eq!(stored.payload, serde_json::to_string(&new.payload).expect("serialise payload"));
    let expected_metadata =
        EventMetadata { recorded_at: chain::truncate_to_micros(new.metadata.recorded_at), ..new.metadata.clone() };
    assert_eq!(stored.metadata, expected_metadata);
}

/// Nothing changed: same head, same stream version, none of `events` stored.
fn assert_nothing_appended(
    store: &dyn EventStore,
    head_before: u64,
    stream: &StreamName,
    version_before: u64,
    events: &[NewEvent],
) {
    assert_eq!(store.head_position().expect("head"), head_before, "head moved");
    assert_eq!(store.stream_version(stream).expect("version"), version_before, "stream version moved");
    let ids: HashSet<Uuid> = events.iter().map(|event| event.metadata.event_id).collect();
    let leaked: Vec<_> =
        read_everything(store).into_iter().filter(|event| ids.contains(&event.metadata.event_id)).collect();
    assert!(leaked.is_empty(), "events of a failed append were stored: {leaked:?}");
}

pub fn append_to_new_stream(make: MakeStore<'_>) {
    let store = make();
    let name = stream("association-new");
    assert_eq!(store.stream_version(&name).expect("version"), 0);
    assert_eq!(store.head_position().expect("head"), 0);
    let events = numbered_events(3, "new");

    let result = store.append(&name, ExpectedVersion::NoStream, &events).expect("append");

    assert_eq!(result.stream_version, 3);
    assert!(result.first_position >= 1 && result.first_position < result.last_position);
    assert_eq!(store.stream_version(&name).expect("version"), 3);
    assert_eq!(store.head_position().expect("head"), result.last_position);
    let stored = store.read_stream(&name, 1, 10).expect("read_stream");
    assert_eq!(stored.len(), 3);
    for (index, (stored, new)) in stored.iter().zip(&events).enumerate() {
        assert_eq!(stored.stream, name);
        assert_eq!(stored.version, index as u64 + 1);
        assert_stored_as(stored, new);
    }
    assert_eq!(stored[0].position, result.first_position);
    assert_eq!(stored[2].position, result.last_position);
    if store.capabilities().gap_free_positions {
        assert_eq!((result.first_position, result.last_position), (1, 3));
    }
    assert_eq!(
        store.append(&name, ExpectedVersion::Exact(0), &numbered_events(1, "x")).unwrap_err(),
        StoreError::WrongExpectedVersion { stream: name.clone(), expected: ExpectedVersion::Exact(0), actual: 3 }
    );
    assert_eq!(store.append(&name, ExpectedVersion::Any, &[]), Err(StoreError::EmptyAppend));
}

pub fn expected_version_conflicts(make: MakeStore<'_>) {
    let store = make();
    let name = stream("campaign-conflicts");
    store.append(&name, ExpectedVersion::Exact(0), &numbered_events(2, "first")).expect("Exact(0) on a new stream");
    let head = store.head_position().expect("head");

    for expected in
        [ExpectedVersion::NoStream, ExpectedVersion::Exact(0), ExpectedVersion::Exact(1), ExpectedVersion::Exact(3)]
    {
        let events = numbered_events(2, "conflicting");
        assert_eq!(
            store.append(&name, expected, &events),
            Err(StoreError::WrongExpectedVersion { stream: name.clone(), expected, actual: 2 }),
            "{expected:?}"
        );
        assert_nothing_appended(&*store, head, &name, 2, &events);
    }
    let missing = stream("campaign-missing");
    let events = numbered_events(1, "missing");
    assert_eq!(
        store.append(&missing, ExpectedVersion::Exact(4), &events),
        Err(StoreError::WrongExpectedVersion {
            stream: missing.clone(),
            expected: ExpectedVersion::Exact(4),
            actual: 0
        })
    );
    assert_nothing_appended(&*store, head, &missing, 0, &events);

    let after_exact = store.append(&name, ExpectedVersion::Exact(2), &numbered_events(1, "exact")).expect("Exact(2)");
    assert_eq!(after_exact.stream_version, 3);
    let after_any = store.append(&name, ExpectedVersion::Any, &numbered_events(2, "any")).expect("Any");
    assert_eq!(after_any.stream_version, 5);
    let any_new =
        store.append(&stream("campaign-any"), ExpectedVersion::Any, &numbered_events(1, "any")).expect("Any new");
    assert_eq!(any_new.stream_version, 1);
}

pub fn failing_batch_appends_nothing(make: MakeStore<'_>) {
    let store = make();
    let name = stream("model-batch");
    let taken = numbered_events(1, "taken");
    store.append(&name, ExpectedVersion::NoStream, &taken).expect("append");
    let head = store.head_position().expect("head");

    // The third event reuses the stream's stored id with other content: the others must not be stored.
    let mut batch = numbered_events(4, "batch");
    batch[2].metadata.event_id = taken[0].metadata.event_id;
    assert_eq!(
        store.append(&name, ExpectedVersion::Exact(1), &batch),
        Err(StoreError::DuplicateEventId { event_id: taken[0].metadata.event_id })
    );
    assert_nothing_appended(&*store, head, &name, 1, &[batch[0].clone(), batch[1].clone(), batch[3].clone()]);

    // The same id twice within one batch.
    let mut batch = numbered_events(3, "twice");
    batch[2].metadata.event_id = batch[0].metadata.event_id;
    assert!(matches!(store.append(&name, ExpectedVersion::Any, &batch), Err(StoreError::InvalidEvent(_))));
    assert_nothing_appended(&*store, head, &name, 1, &batch);

    // The store is still usable, and positions continue without a hole.
    let result = store.append(&name, ExpectedVersion::Exact(1), &numbered_events(2, "after")).expect("append");
    assert_eq!(result.stream_version, 3);
    assert!(result.first_position > head);
    if store.capabilities().gap_free_positions {
        assert_eq!(result.first_position, head + 1);
    }

    // The third event reuses the id of an event in another stream.
    let mut batch = numbered_events(4, "elsewhere");
    batch[2].metadata.event_id = taken[0].metadata.event_id;
    assert_reuse_of_another_streams_id(&*store, &stream("model-elsewhere"), &batch, taken[0].metadata.event_id);
    assert_eq!(store.stream_version(&name).expect("version"), 3, "the other stream changed");
}

/// Appends `batch` (expecting a new stream) to `name`, where `reused` is the id of an event
/// stored in another stream. An adapter that declares `detects_event_id_reuse_across_streams`
/// refuses it and stores nothing. One that does not may not notice the reuse, but the append is
/// still atomic: refused as a duplicate with nothing stored, or stored whole.
fn assert_reuse_of_another_streams_id(store: &dyn EventStore, name: &StreamName, batch: &[NewEvent], reused: Uuid) {
    let head = store.head_position().expect("head");
    let outcome = store.append(name, ExpectedVersion::NoStream, batch);
    let refused = Err(StoreError::DuplicateEventId { event_id: reused });
    if store.capabilities().detects_event_id_reuse_across_streams || outcome == refused {
        assert_eq!(outcome, refused);
        let others: Vec<NewEvent> = batch.iter().filter(|event| event.metadata.event_id != reused).cloned().collect();
        assert_nothing_appended(store, head, name, 0, &others);
        return;
    }
    let result = outcome.expect("an append the adapter does not refuse is stored");
    assert_eq!(result.stream_version, batch.len() as u64, "{result:?}");
    let stored = store.read_stream(name, 1, usize::MAX).expect("read_stream");
    assert_eq!(stored.len(), batch.len(), "stored in part");
    for (stored, new) in stored.iter().zip(batch) {
        assert_stored_as(stored, new);
    }
}

pub fn replayed_event_ids_are_idempotent(make: MakeStore<'_>) {
    let store = make();
    let name = stream("prompt-replay");
    store.append(&name, ExpectedVersion::NoStream, &numbered_events(2, "before")).expect("append");
    let batch = numbered_events(3, "replayed");
    let original = store.append(&name, ExpectedVersion::Exact(2), &batch).expect("append");
    store.append(&name, ExpectedVersion::Exact(5), &numbered_events(1, "after")).expect("append");
    let head = store.head_position().expect("head");

    // The retried request carries the expected version it had the first time: still a replay.
    for expected in
        [ExpectedVersion::Exact(2), ExpectedVersion::Any, ExpectedVersion::NoStream, ExpectedVersion::Exact(6)]
    {
        assert_eq!(store.append(&name, expected, &batch), Ok(original), "{expected:?}");
    }
    // A single event of the batch replays to its own position.
    let middle = store.read_stream(&name, 4, 1).expect("read")[0].clone();
    assert_eq!(
        store.append(&name, ExpectedVersion::Any, &batch[1..2]),
        Ok(AppendResult { first_position: middle.position, last_position: middle.position, stream_version: 4 })
    );
    assert_eq!(store.head_position().expect("head"), head);
    assert_eq!(store.stream_version(&name).expect("version"), 6);

    // Stored and new ids mixed: neither a replay nor new.
    let mut mixed = numbered_events(2, "mixed");
    mixed.insert(1, batch[0].clone());
    assert_eq!(
        store.append(&name, ExpectedVersion::Any, &mixed),
        Err(StoreError::PartialReplay { event_id: batch[0].metadata.event_id })
    );
    assert_nothing_appended(&*store, head, &name, 6, &[mixed[0].clone(), mixed[2].clone()]);
    let mut mixed = vec![batch[0].clone()];
    mixed.extend(numbered_events(1, "mixed"));
    assert_eq!(
        store.append(&name, ExpectedVersion::Any, &mixed),
        Err(StoreError::PartialReplay { event_id: mixed[1].metadata.event_id })
    );
    // Stored events in another order.
    let reordered = vec![batch[1].clone(), batch[0].clone()];
    assert_eq!(
        store.append(&name, ExpectedVersion::Any, &reordered),
        Err(StoreError::PartialReplay { event_id: batch[0].metadata.event_id })
    );
    assert_nothing_appended(&*store, head, &name, 6, &mixed[1..]);
}

pub fn same_event_id_with_different_content_is_rejected(make: MakeStore<'_>) {
    let store = make();
    let name = stream("annotation-dup");
    let original = numbered_events(1, "original");
    store.append(&name, ExpectedVersion::NoStream, &original).expect("append");
    let head = store.head_position().expect("head");
    let event_id = original[0].metadata.event_id;

    let mut other_payload = original[0].clone();
    other_payload.payload = json!({ "label": "changed" });
    let mut other_type = original[0].clone();
    other_type.event_type = "Other".into();
    let mut other_schema = original[0].clone();
    other_schema.schema_version = 2;
    let mut other_actor = original[0].clone();
    other_actor.metadata.actor = Actor::new("mallory", Role::Admin);
    let mut other_time = original[0].clone();
    other_time.metadata.recorded_at += chrono::Duration::seconds(1);
    let mut other_causation = original[0].clone();
    other_causation.metadata.causation_id = Some(Uuid::now_v7());
    for changed in [other_payload, other_type, other_schema, other_actor, other_time, other_causation] {
        assert_eq!(
            store.append(&name, ExpectedVersion::Any, std::slice::from_ref(&changed)),
            Err(StoreError::DuplicateEventId { event_id })
        );
    }
    assert_nothing_appended(&*store, head, &name, 1, &[]);
    // The same event in another stream is another event with the same id.
    assert_reuse_of_another_streams_id(&*store, &stream("annotation-elsewhere"), &original, event_id);
    assert_eq!(store.stream_version(&name).expect("version"), 1);
}

pub fn read_stream_ranges(make: MakeStore<'_>) {
    let store = make();
    let name = stream("association-ranges");
    let events = numbered_events(10, "ranges");
    store.append(&name, ExpectedVersion::NoStream, &events[..4]).expect("append");
    store
        .append(&stream("association-noise"), ExpectedVersion::NoStream, &numbered_events(3, "noise"))
        .expect("append");
    store.append(&name, ExpectedVersion::Exact(4), &events[4..]).expect("append");

    let versions = |from: u64, limit: usize| -> Vec<u64> {
        store.read_stream(&name, from, limit).expect("read_stream").iter().map(|event| event.version).collect()
    };
    assert_eq!(versions(1, 100), (1..=10).collect::<Vec<_>>());
    assert_eq!(versions(0, 100), (1..=10).collect::<Vec<_>>(), "from_version 0 reads from the start");
    assert_eq!(versions(4, 3), vec![4, 5, 6]);
    assert_eq!(versions(10, 5), vec![10]);
    assert!(versions(11, 5).is_empty());
    assert!(versions(1, 0).is_empty());
    assert!(store.read_stream(&stream("association-unknown"), 1, 10).expect("read").is_empty());

    let all = store.read_stream(&name, 1, usize::MAX).expect("read_stream");
    for (stored, new) in all.iter().zip(&events) {
        assert_eq!(stored.stream, name);
        assert_stored_as(stored, new);
    }
    // Causation ids round-trip too.
    let mut caused = new_event("Caused", json!({ "nested": { "b": [1, 2.5, null], "a": "ü\"\n" } }));
    caused.metadata.causation_id = Some(all[0].metadata.event_id);
    caused.metadata.actor = Actor::system();
    caused.schema_version = 7;
    store.append(&name, ExpectedVersion::Exact(10), std::slice::from_ref(&caused)).expect("append");
    assert_stored_as(&store.read_stream(&name, 11, 1).expect("read")[0], &caused);
}

pub fn read_all_ordering_and_limits(make: MakeStore<'_>) {
    let store = make();
    assert!(read_everything(&*store).is_empty());
    let names = [stream("a-stream"), stream("b-stream"), stream("c-stream")];
    let mut appended_ids = Vec::new();
    for round in 0..5 {
        for name in &names {
            let events = numbered_events(1 + round % 3, name.as_str());
            appended_ids.extend(events.iter().map(|event| event.metadata.event_id));
            store.append(name, ExpectedVersion::Any, &events).expect("append");
        }
    }
    let all = read_everything(&*store);
    assert_eq!(
        all.iter().map(|event| event.metadata.event_id).collect::<Vec<_>>(),
        appended_ids,
        "read_all is in append order"
    );
    assert_eq!(store.head_position().expect("head"), all.last().expect("events").position);

    for page_size in [1, 4, 7] {
        let mut paged = Vec::new();
        let mut after = 0;
        loop {
            let page = store.read_all(after, page_size).expect("read_all");
            assert!(page.len() <= page_size);
            let Some(last) = page.last() else { break };
            after = last.position;
            paged.extend(page);
        }
        assert_eq!(paged, all, "paging by {page_size}");
    }
    let middle = all[5].position;
    assert_eq!(store.read_all(middle, 3).expect("read_all"), all[6..9].to_vec());
    assert!(store.read_all(store.head_position().expect("head"), 10).expect("read_all").is_empty());
    assert!(store.read_all(0, 0).expect("read_all").is_empty());
}

pub fn positions_strictly_increase(make: MakeStore<'_>) {
    let store = make();
    let mut results = Vec::new();
    for index in 0..40usize {
        let name = stream(&format!("job-{}", index % 7));
        results.push(store.append(&name, ExpectedVersion::Any, &numbered_events(1 + index % 4, "p")).expect("append"));
    }
    let mut previous_last = 0;
    for result in &results {
        assert!(result.first_position > previous_last && result.first_position <= result.last_position, "{result:?}");
        previous_last = result.last_position;
    }
    let all = read_everything(&*store);
    assert!(all.windows(2).all(|pair| pair[0].position < pair[1].position));
    if store.capabilities().gap_free_positions {
        assert_eq!(
            all.iter().map(|event| event.position).collect::<Vec<_>>(),
            (1..=all.len() as u64).collect::<Vec<_>>()
        );
        for result in &results {
            assert_eq!(
                result.last_position - result.first_position + 1,
                all.iter()
                    .filter(|event| event.position >= result.first_position && event.position <= result.last_position)
                    .count() as u64
            );
        }
    }
}

pub fn hashes_chain_and_verify_passes(make: MakeStore<'_>) {
    let store = make();
    assert_eq!(chain::verify(&*store), Ok(VerifyReport { events: 0, streams: 0 }));
    let names = [stream("association-h1"), stream("association-h2"), stream("model-h3")];
    for round in 0..4 {
        for name in &names {
            store.append(name, ExpectedVersion::Any, &numbered_events(1 + round, name.as_str())).expect("append");
        }
    }
    for name in &names {
        let events = store.read_stream(name, 1, usize::MAX).expect("read_stream");
        assert_eq!(events.len(), 10);
        let mut prev_hash = chain::GENESIS_PREV_HASH;
        for event in &events {
            assert_eq!(event.prev_hash, prev_hash, "{name} version {}", event.version);
            assert_eq!(event.hash, chain::recompute_hash(event), "{name} version {}", event.version);
            prev_hash = event.hash;
        }
    }
    // The hash covers the stream: equal content in two streams hashes differently.
    let first_hashes: HashSet<[u8; 32]> =
        names.iter().map(|name| store.read_stream(name, 1, 1).expect("read")[0].hash).collect();
    assert_eq!(first_hashes.len(), names.len());
    assert_eq!(chain::verify(&*store), Ok(VerifyReport { events: 30, streams: 3 }));
}

pub fn subscription_catches_up_then_follows_concurrent_appends(make: MakeStore<'_>) {
    const WRITERS: usize = 4;
    const EVENTS_PER_WRITER: usize = 800;
    const BEFORE: usize = 300;
    let total = BEFORE + WRITERS * EVENTS_PER_WRITER;
    let store = make();
    for index in 0..BEFORE / 5 {
        store
            .append(&stream(&format!("before-{}", index % 3)), ExpectedVersion::Any, &numbered_events(5, "before"))
            .expect("append");
    }

    let start = Arc::new(Barrier::new(WRITERS + 1));
    let subscriber = {
        let store = Arc::clone(&store);
        let start = Arc::clone(&start);
        thread::spawn(move || {
            let mut subscription = subscribe(store, 0);
            let mut seen = Vec::with_capacity(total);
            // The first batch is catch-up; the writers start once it is read.
            seen.extend(
                subscription
                    .next_batch(97, Duration::from_millis(100))
                    .expect("next_batch")
                    .iter()
                    .map(|event| event.position),
            );
            start.wait();
            let deadline = Instant::now() + Duration::from_secs(120);
            while seen.len() < total && Instant::now() < deadline {
                let batch = subscription.next_batch(97, Duration::from_millis(200)).expect("next_batch");
                seen.extend(batch.iter().map(|event| event.position));
            }
            let extra = subscription.next_batch(97, Duration::from_millis(50)).expect("next_batch");
            assert!(extra.is_empty(), "events after the last append: {extra:?}");
            assert_eq!(subscription.position(), *seen.last().expect("events"));
            seen
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = Arc::clone(&store);
            let start = Arc::clone(&start);
            thread::spawn(move || {
                start.wait();
                // Each writer owns its streams, so it can use exact expected versions.
                let mut versions = BTreeMap::new();
                let mut written = 0;
                let mut round = 0;
                while written < EVENTS_PER_WRITER {
                    let size = (1 + round % 4).min(EVENTS_PER_WRITER - written);
                    let name = stream(&format!("writer-{writer}-{}", round % 3));
                    let version = versions.entry(name.clone()).or_insert(0u64);
                    let result = store
                        .append(&name, ExpectedVersion::Exact(*version), &numbered_events(size, "live"))
                        .expect("append");
                    *version = result.stream_version;
                    written += size;
                    round += 1;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer thread");
    }
    let seen = subscriber.join().expect("subscriber thread");

    let expected: Vec<u64> = read_everything(&*store).iter().map(|event| event.position).collect();
    assert_eq!(expected.len(), total);
    assert_eq!(seen.len(), total, "the subscriber saw a different number of events");
    assert!(seen == expected, "the subscriber skipped, repeated or reordered positions");
    if store.capabilities().gap_free_positions {
        assert!(seen.iter().copied().eq(1..=total as u64), "positions are not exactly 1..={total}");
    }
    // A subscription from the middle starts right after its checkpoint.
    let mut from_middle = subscribe(Arc::clone(&store), expected[99]);
    let batch = from_middle.next_batch(10, Duration::from_millis(10)).expect("next_batch");
    assert_eq!(batch.iter().map(|event| event.position).collect::<Vec<_>>(), expected[100..110].to_vec());
    assert_eq!(chain::verify(&*store).map(|report| report.events), Ok(total as u64));
}

pub fn wait_for_position_after_returns_on_append_and_on_timeout(make: MakeStore<'_>) {
    let store = make();
    let timeout = Duration::from_millis(150);
    let started = Instant::now();
    assert_eq!(store.wait_for_position_after(0, timeout), Ok(0));
    let waited = started.elapsed();
    assert!(waited >= timeout && waited < Duration::from_secs(5), "waited {waited:?} for a {timeout:?} timeout");

    let name = stream("wait-stream");
    let first = store.append(&name, ExpectedVersion::NoStream, &numbered_events(1, "first")).expect("append");
    let started = Instant::now();
    assert_eq!(store.wait_for_position_after(0, Duration::from_secs(10)), Ok(first.last_position));
    assert!(started.elapsed() < Duration::from_secs(1), "a reached position must return at once");

    let appender = {
        let store = Arc::clone(&store);
        let name = name.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            store.append(&name, ExpectedVersion::Exact(1), &numbered_events(2, "later")).expect("append")
        })
    };
    let started = Instant::now();
    let head = store.wait_for_position_after(first.last_position, Duration::from_secs(20)).expect("wait");
    let waited = started.elapsed();
    let second = appender.join().expect("appender thread");
    assert!(head > first.last_position && head <= second.last_position, "head {head} after {second:?}");
    assert!(waited >= Duration::from_millis(150) && waited < Duration::from_secs(10), "waited {waited:?}");
}

pub fn list_streams_reports_every_stream_version(make: MakeStore<'_>) {
    let store = make();
    assert!(store.list_streams().expect("list").is_empty());
    let mut expected = BTreeMap::new();
    for (index, name) in ["zeta", "alpha", "model-1", "model-10", "model-2"].into_iter().enumerate() {
        let name = stream(name);
        store.append(&name, ExpectedVersion::NoStream, &numbered_events(index + 1, "list")).expect("append");
        expected.insert(name, index as u64 + 1);
    }
    let listed = store.list_streams().expect("list");
    assert_eq!(listed, expected.into_iter().collect::<Vec<_>>(), "every stream, sorted by name");
}
