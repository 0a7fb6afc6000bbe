//! Copying a whole event store into an empty one (`thitl store copy`): every event in global
//! order, with its metadata and payload exactly as recorded, so every stream's hash chain is the
//! same link for link (positions are not hashed; see the module above).
//!
//! ```text
//! source.read_all(after, 1000) ─ runs of one stream ─> target.append(stream, Exact(version - 1), run)
//!                                                     └─ the target's hashes == the source's, event by event
//! at the end: chain::verify(target), and the heads compared
//! ```
//!
//! Key design decisions:
//! - **Only into an empty store**: a copy is a migration or a backup, never a merge; a target that
//!   holds anything is refused before a single event is written.
//! - **Checked as it goes**: each run appended is read back and its hashes compared with the
//!   source's, so a difference stops the copy at the first event that differs, naming it.
//! - **Idempotent appends make a retry safe**: a copy interrupted mid-way leaves a prefix; the
//!   store's event-id idempotency would accept the same runs again, but the empty-target rule
//!   asks for a fresh target instead, which keeps the rule simple to state.

use super::{EventStore, ExpectedVersion, NewEvent, StoreError, StoredEvent, chain};

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("the target store is not empty (its head is at position {0}): copy into an empty store")]
    TargetNotEmpty(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("event at position {position} ({stream} version {version}) cannot be copied: {message}")]
    Event { position: u64, stream: String, version: u64, message: String },
    #[error("the copy does not verify: {0}")]
    Verify(String),
}

/// What a copy moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyReport {
    pub events: u64,
    pub streams: u64,
    /// The last position copied (the source's head when the copy started).
    pub head: u64,
}

/// Copies every event of `from` (up to its head when the copy starts) into the empty `to`;
/// `progress(done, total)` hears how far it is.
pub fn copy_store(
    from: &dyn EventStore,
    to: &dyn EventStore,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CopyReport, CopyError> {
    let target_head = to.head_position()?;
    if target_head != 0 {
        return Err(CopyError::TargetNotEmpty(target_head));
    }
    let head = from.head_position()?;
    let mut after = 0;
    let mut copied = 0u64;
    progress(0, head);
    while after < head {
        let page: Vec<StoredEvent> = from.read_all(after, 1000)?.into_iter().filter(|e| e.position <= head).collect();
        let Some(last) = page.last() else { break };
        after = last.position;
        // Consecutive events of one stream go in one append (one transaction).
        let mut start = 0;
        while start < page.len() {
            let stream = &page[start].stream;
            let end =
                page[start..].iter().position(|e| e.stream != *stream).map_or(page.len(), |offset| start + offset);
            copy_run(to, &page[start..end])?;
            copied += (end - start) as u64;
            start = end;
        }
        progress(copied, head);
    }
    let report = chain::verify(to).map_err(|failure| CopyError::Verify(failure.to_string()))?;
    if report.events != copied {
        return Err(CopyError::Verify(format!("{} events verified in the target, {copied} copied", report.events)));
    }
    Ok(CopyReport { events: copied, streams: report.streams, head })
}

/// Appends `run` (events of one stream, in version order) and checks the target's chain links.
fn copy_run(to: &dyn EventStore, run: &[StoredEvent]) -> Result<(), CopyError> {
    let first = &run[0];
    let fail = |event: &StoredEvent, message: String| CopyError::Event {
        position: event.position,
        stream: event.stream.to_string(),
        version: event.version,
        message,
    };
    let events = run
        .iter()
        .map(|event| {
            let payload = serde_json::from_str(&event.payload)
                .map_err(|e| fail(event, format!("its payload is not JSON: {e}")))?;
            Ok(NewEvent {
                event_type: event.event_type.clone(),
                schema_version: event.schema_version,
                payload,
                metadata: event.metadata.clone(),
            })
        })
        .collect::<Result<Vec<_>, CopyError>>()?;
    to.append(&first.stream, ExpectedVersion::Exact(first.version - 1), &events)
        .map_err(|e| fail(first, e.to_string()))?;
    let written = to.read_stream(&first.stream, first.version, run.len())?;
    for (source, target) in run.iter().zip(&written) {
        if source.hash != target.hash || source.payload != target.payload || source.version != target.version {
            return Err(fail(
                source,
                "the copy's chain link differs from the source's (payload or metadata changed in the copy)".into(),
            ));
        }
    }
    if written.len() != run.len() {
        return Err(fail(first, format!("{} of {} events read back", written.len(), run.len())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SqliteStore, StreamName};
    use domain::{Actor, EventMetadata};

    fn event(n: u64) -> NewEvent {
        NewEvent {
            event_type: "Noted".into(),
            schema_version: 1,
            // Floats whose shortest text is long: a payload must come back as the same text.
            payload: serde_json::json!({"n": n, "text": format!("note {n}"), "share": n as f64 / 3.0, "loss": f64::from(0.1f32 + n as f32 / 7.0), "tiny": 1e-300 * n as f64}),
            metadata: EventMetadata {
                event_id: uuid::Uuid::now_v7(),
                recorded_at: chrono::Utc::now(),
                actor: Actor::system(),
                correlation_id: uuid::Uuid::now_v7(),
                causation_id: None,
            },
        }
    }

    #[test]
    fn a_copy_has_the_same_events_positions_and_chains_and_needs_an_empty_target() {
        let dir = tempfile::tempdir().unwrap();
        let source = SqliteStore::open(dir.path().join("a.db")).unwrap();
        // Interleaved streams, batches of several events.
        let (a, b) = (StreamName::new("note-a").unwrap(), StreamName::new("note-b").unwrap());
        for round in 0..5u64 {
            source.append(&a, ExpectedVersion::Any, &[event(round * 10), event(round * 10 + 1)]).unwrap();
            source.append(&b, ExpectedVersion::Any, &[event(round * 10 + 2)]).unwrap();
        }
        let target = SqliteStore::open(dir.path().join("b.db")).unwrap();
        let mut seen = Vec::new();
        let report = copy_store(&source, &target, &mut |done, total| seen.push((done, total))).unwrap();
        assert_eq!(report, CopyReport { events: 15, streams: 2, head: 15 });
        assert_eq!(seen.last(), Some(&(15, 15)));
        let (all_source, all_target) = (source.read_all(0, 100).unwrap(), target.read_all(0, 100).unwrap());
        assert_eq!(all_source, all_target, "positions, versions, metadata, payloads and hashes");

        // Into a store that holds anything: refused, nothing written.
        let again = copy_store(&source, &target, &mut |_, _| {});
        assert!(matches!(again, Err(CopyError::TargetNotEmpty(15))), "{again:?}");
        assert_eq!(target.head_position().unwrap(), 15);
    }
}
