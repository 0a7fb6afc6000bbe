//! Event store and projection throughput on the embedded SQLite store.
//!
//! ```text
//! cargo bench -p thitl-app --bench store            # full run (1,000,000-event replay)
//! cargo bench -p thitl-app --bench store -- --quick  # smaller, for a smoke test
//! ```
//!
//! Reports medians over repeated runs, after a warm-up:
//! - durable single-event appends/s (one SQLite commit, fsync'd, per event), one writer;
//! - events/s appended in batches of 100 (one commit per batch);
//! - replay: events/s read from the store, decoded and folded into every read model, over a
//!   history of realistic annotation-round events.

use std::sync::Arc;
use std::time::Instant;

use app::runner::{Until, replay};
use chrono::Utc;
use domain::round::{Answer, ImageRef, ItemContent, ItemLabel, RoundItem, RoundKind};
use domain::values::{BlobHash, Quality};
use domain::{Actor, EventMetadata, ImageId, ItemId, ModelVersionId, Role, RoundEvent, RoundId, encode};
use store::{EventStore, ExpectedVersion, NewEvent, SqliteStore, StreamName};
use uuid::Uuid;

fn metadata(actor: &Actor) -> EventMetadata {
    EventMetadata {
        event_id: Uuid::now_v7(),
        recorded_at: Utc::now(),
        actor: actor.clone(),
        correlation_id: Uuid::now_v7(),
        causation_id: None,
    }
}

fn new_event(event: &RoundEvent, actor: &Actor) -> NewEvent {
    let encoded = encode(event);
    NewEvent {
        event_type: encoded.event_type,
        schema_version: encoded.schema_version,
        payload: encoded.payload,
        metadata: metadata(actor),
    }
}

fn submission(round_id: RoundId, item: u128, annotator: &str) -> RoundEvent {
    RoundEvent::AnnotationSubmitted {
        round_id,
        item_id: ItemId(Uuid::from_u128(item)),
        annotator: annotator.to_string(),
        answer: Answer::Screen { quality: Quality::new(4).unwrap(), group_depicted: true, concept_present: false },
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn store_in(dir: &tempfile::TempDir, name: &str) -> Arc<dyn EventStore> {
    Arc::new(SqliteStore::open(dir.path().join(name)).expect("open store"))
}

/// Durable single-event appends per second, one writer.
fn single_appends(dir: &tempfile::TempDir, run: usize, count: usize) -> f64 {
    let store = store_in(dir, &format!("single-{run}.db"));
    let actor = Actor::new("annotator-1", Role::Annotator);
    let round_id = RoundId(Uuid::now_v7());
    let stream = StreamName::new(format!("round-{}", round_id.0)).unwrap();
    let events: Vec<NewEvent> =
        (0..count).map(|i| new_event(&submission(round_id, i as u128, "annotator-1"), &actor)).collect();
    let started = Instant::now();
    for (i, event) in events.iter().enumerate() {
        store.append(&stream, ExpectedVersion::Exact(i as u64), std::slice::from_ref(event)).expect("append");
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// Events per second appended in batches of 100.
fn batched_appends(dir: &tempfile::TempDir, run: usize, batches: usize) -> f64 {
    let store = store_in(dir, &format!("batched-{run}.db"));
    let actor = Actor::new("annotator-1", Role::Annotator);
    let round_id = RoundId(Uuid::now_v7());
    let stream = StreamName::new(format!("round-{}", round_id.0)).unwrap();
    let prepared: Vec<Vec<NewEvent>> = (0..batches)
        .map(|b| {
            (0..100).map(|i| new_event(&submission(round_id, (b * 100 + i) as u128, "annotator-1"), &actor)).collect()
        })
        .collect();
    let started = Instant::now();
    for (b, batch) in prepared.iter().enumerate() {
        store.append(&stream, ExpectedVersion::Exact(b as u64 * 100), batch).expect("append");
    }
    (batches * 100) as f64 / started.elapsed().as_secs_f64()
}

/// Writes a history of `events` events: rounds of 1,000 items, each rated by 3 annotators
/// (a task assignment and a submission per rating).
fn write_history(store: &dyn EventStore, events: usize) {
    let system = Actor::system();
    let annotators: Vec<Actor> = (1..=6).map(|i| Actor::new(format!("annotator-{i}"), Role::Annotator)).collect();
    let items_per_round = 1000u128;
    let mut written = 0;
    let mut round_number = 0u128;
    while written < events {
        round_number += 1;
        let round_id = RoundId(Uuid::from_u128(round_number << 64));
        let stream = StreamName::new(format!("round-{}", round_id.0)).unwrap();
        let items: Vec<RoundItem> = (0..items_per_round)
            .map(|i| RoundItem {
                item_id: ItemId(Uuid::from_u128((round_number << 64) + i)),
                content: ItemContent::Image(ImageRef {
                    image_id: ImageId(Uuid::from_u128((round_number << 64) + i)),
                    blob: BlobHash::parse(&format!("{:064x}", (round_number << 64) + i)).unwrap(),
                }),
                label: ItemLabel {
                    association_id: None,
                    prompt_id: None,
                    prompt: "a photo of a woman at the beach".into(),
                    seed: i as u64,
                    models: vec![ModelVersionId(Uuid::from_u128(1))],
                },
            })
            .collect();
        let opened = RoundEvent::RoundOpened {
            round_id,
            kind: RoundKind::Screen,
            items,
            raters_per_item: 3,
            quality_threshold: Quality::new(3).unwrap(),
            assignment_lease_seconds: 900,
            campaign_id: None,
            controls: domain::round::RoundControls::default(),
        };
        store.append(&stream, ExpectedVersion::NoStream, &[new_event(&opened, &system)]).expect("append");
        written += 1;
        let mut version = 1u64;
        let mut batch = Vec::with_capacity(1000);
        'round: for rater in 0..3usize {
            for item in 0..items_per_round {
                if written + batch.len() + 2 > events {
                    break 'round;
                }
                let annotator = &annotators[(rater + item as usize) % annotators.len()];
                let item_id = ItemId(Uuid::from_u128((round_number << 64) + item));
                let assigned = RoundEvent::TaskAssigned {
                    round_id,
                    item_id,
                    annotator: annotator.principal.clone(),
                    expires_at: Utc::now() + chrono::Duration::minutes(15),
                };
                batch.push(new_event(&assigned, annotator));
                batch.push(new_event(
                    &submission(round_id, (round_number << 64) + item, &annotator.principal),
                    annotator,
                ));
                if batch.len() >= 1000 {
                    store.append(&stream, ExpectedVersion::Exact(version), &batch).expect("append");
                    version += batch.len() as u64;
                    written += batch.len();
                    batch.clear();
                }
            }
        }
        if !batch.is_empty() {
            store.append(&stream, ExpectedVersion::Exact(version), &batch).expect("append");
            written += batch.len();
        }
        if written + 2 > events && written < events {
            break;
        }
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (single, batches, history, runs) = if quick { (300, 20, 50_000, 3) } else { (3_000, 300, 1_000_000, 5) };
    let dir = tempfile::tempdir().expect("tempdir");
    println!("thitl store benchmark ({} run{})", if quick { "quick" } else { "full" }, if quick { "" } else { "s" });

    single_appends(&dir, 0, single / 10); // warm-up
    let single_rates: Vec<f64> = (1..=runs).map(|run| single_appends(&dir, run, single)).collect();
    println!(
        "durable single-event appends: median {:>10.0} events/s  (runs: {})",
        median(single_rates.clone()),
        fmt(&single_rates)
    );

    batched_appends(&dir, 0, batches / 10);
    let batch_rates: Vec<f64> = (1..=runs).map(|run| batched_appends(&dir, run, batches)).collect();
    println!(
        "batches of 100:               median {:>10.0} events/s  (runs: {})",
        median(batch_rates.clone()),
        fmt(&batch_rates)
    );

    let store = store_in(&dir, "history.db");
    let started = Instant::now();
    write_history(store.as_ref(), history);
    let head = store.head_position().unwrap();
    println!("wrote a history of {head} events in {:.1?}", started.elapsed());
    let _ = replay(store.as_ref(), Until::Position(u64::MAX)); // warm-up (and page cache)
    let replay_rates: Vec<f64> = (0..runs.min(3))
        .map(|_| {
            let started = Instant::now();
            let state = replay(store.as_ref(), Until::Position(u64::MAX)).expect("replay");
            assert_eq!(state.position, head);
            head as f64 / started.elapsed().as_secs_f64()
        })
        .collect();
    println!(
        "replay into all projections:  median {:>10.0} events/s  (runs: {})",
        median(replay_rates.clone()),
        fmt(&replay_rates)
    );

    // Where replay's time goes: reading rows, then decoding them, then folding.
    let read_rates: Vec<f64> = (0..runs.min(3)).map(|_| stage_rate(store.as_ref(), head, false)).collect();
    println!("  of which read_all alone:    median {:>10.0} events/s", median(read_rates));
    let decode_rates: Vec<f64> = (0..runs.min(3)).map(|_| stage_rate(store.as_ref(), head, true)).collect();
    println!("  read_all + decode:          median {:>10.0} events/s", median(decode_rates));
}

fn stage_rate(store: &dyn EventStore, head: u64, decode: bool) -> f64 {
    let started = Instant::now();
    let mut after = 0;
    let mut decoded = 0u64;
    loop {
        let batch = store.read_all(after, 5000).expect("read_all");
        let Some(last) = batch.last() else { break };
        after = last.position;
        if decode {
            for event in &batch {
                decoded += app::commands::to_recorded(event).map(|r| r.version).unwrap_or(0).min(1);
            }
        }
    }
    assert!(!decode || decoded == head);
    head as f64 / started.elapsed().as_secs_f64()
}

fn fmt(values: &[f64]) -> String {
    values.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", ")
}
