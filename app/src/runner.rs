//! The projection runner: keeps the read models of `projections` up to date from the event
//! store, from a persisted checkpoint.
//!
//! The checkpoint is a snapshot of every read model with the position it reflects and that
//! event's hash, written atomically (temporary file, then rename). On start the runner loads it
//! only if the store still holds that very event at that position — otherwise (a different or
//! restored store) it rebuilds from position 0. Rebuilding gives the same state as the live
//! fold, which `projections rebuild` relies on and the tests check.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use projections::Projections;
use serde::{Deserialize, Serialize};

use crate::commands::into_recorded;
use store::{EventStore, StoreError};

const CHECKPOINT_FORMAT: u32 = 4;
const BATCH: usize = 5_000;
/// Save the checkpoint after this many events (and on shutdown).
const SAVE_EVERY: u64 = 50_000;

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("event at position {position} cannot be decoded: {source}")]
    Decode { position: u64, source: domain::DecodeError },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: String, message: String },
}

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    format: u32,
    position: u64,
    last_event_hash: String,
    projections: Projections,
}

pub struct ProjectionRunner {
    store: Arc<dyn EventStore>,
    state: RwLock<Projections>,
    checkpoint_path: Option<PathBuf>,
    applied: Mutex<u64>,
    advanced: Condvar,
    unsaved: Mutex<u64>,
    /// Serialises catch-up so two callers never fold the same event twice.
    folding: Mutex<()>,
}

impl ProjectionRunner {
    /// A runner whose read models start from the checkpoint at `checkpoint_path` (if it exists and
    /// matches the store), else from nothing. Call [`catch_up`](Self::catch_up) next.
    pub fn open(store: Arc<dyn EventStore>, checkpoint_path: Option<PathBuf>) -> Result<Self, RunnerError> {
        let mut initial = Projections::default();
        if let Some(path) = &checkpoint_path
            && let Some(checkpoint) = load_checkpoint(path)?
            && matches_store(store.as_ref(), &checkpoint)?
        {
            initial = checkpoint.projections;
        }
        let position = initial.position;
        Ok(ProjectionRunner {
            store,
            state: RwLock::new(initial),
            checkpoint_path,
            applied: Mutex::new(position),
            advanced: Condvar::new(),
            unsaved: Mutex::new(0),
            folding: Mutex::new(()),
        })
    }

    /// The position the read models reflect.
    pub fn position(&self) -> u64 {
        *self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the read models.
    pub fn read<R>(&self, f: impl FnOnce(&Projections) -> R) -> R {
        f(&self.state.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Folds every event recorded after the current position; returns the new position.
    pub fn catch_up(&self) -> Result<u64, RunnerError> {
        let _folding = self.folding.lock().unwrap_or_else(|e| e.into_inner());
        scan(self.store.as_ref(), self.position(), |batch| {
            let count = batch.len() as u64;
            let last = batch.last().map_or(0, |e| e.position);
            let mut recorded = Vec::with_capacity(batch.len());
            for stored in batch {
                let position = stored.position;
                recorded.push(into_recorded(stored).map_err(|source| RunnerError::Decode { position, source })?);
            }
            {
                let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                for event in &recorded {
                    state.apply(event);
                }
            }
            *self.applied.lock().unwrap_or_else(|e| e.into_inner()) = last;
            self.advanced.notify_all();
            let due = {
                let mut unsaved = self.unsaved.lock().unwrap_or_else(|e| e.into_inner());
                *unsaved += count;
                *unsaved >= SAVE_EVERY
            };
            if due {
                self.save()?;
            }
            Ok(true)
        })?;
        Ok(self.position())
    }

    /// Blocks until the read models reflect `position` or `timeout` passes; true if reached.
    pub fn wait_for(&self, position: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        while *applied < position {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            applied = self.advanced.wait_timeout(applied, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }

    /// Follows the store until `stop` is set, then saves the checkpoint.
    pub fn run(&self, stop: &AtomicBool) -> Result<(), RunnerError> {
        while !stop.load(Ordering::Relaxed) {
            let position = self.catch_up()?;
            self.store.wait_for_position_after(position, Duration::from_millis(200))?;
        }
        self.catch_up()?;
        self.save()
    }

    /// Writes the checkpoint (if this runner has a path).
    pub fn save(&self) -> Result<(), RunnerError> {
        let Some(path) = &self.checkpoint_path else { return Ok(()) };
        let state = self.state.read().unwrap_or_else(|e| e.into_inner()).clone();
        if state.position == 0 {
            return Ok(());
        }
        let last = self.store.read_all(state.position - 1, 1)?;
        let Some(last) = last.first().filter(|e| e.position == state.position) else {
            return Err(RunnerError::Checkpoint {
                path: path.display().to_string(),
                message: format!("position {} is not in the store", state.position),
            });
        };
        let checkpoint = Checkpoint {
            format: CHECKPOINT_FORMAT,
            position: state.position,
            last_event_hash: hex::encode(last.hash),
            projections: state,
        };
        let fail = |message: String| RunnerError::Checkpoint { path: path.display().to_string(), message };
        let bytes = serde_json::to_vec(&checkpoint).map_err(|e| fail(e.to_string()))?;
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, bytes).map_err(|e| fail(e.to_string()))?;
        std::fs::rename(&temporary, path).map_err(|e| fail(e.to_string()))?;
        *self.unsaved.lock().unwrap_or_else(|e| e.into_inner()) = 0;
        Ok(())
    }
}

fn load_checkpoint(path: &Path) -> Result<Option<Checkpoint>, RunnerError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RunnerError::Checkpoint { path: path.display().to_string(), message: e.to_string() }),
    };
    // A checkpoint from another format is not an error: it is rebuilt from the events.
    Ok(serde_json::from_slice::<Checkpoint>(&bytes).ok().filter(|c| c.format == CHECKPOINT_FORMAT))
}

fn matches_store(store: &dyn EventStore, checkpoint: &Checkpoint) -> Result<bool, RunnerError> {
    if checkpoint.position == 0 {
        return Ok(false);
    }
    let events = store.read_all(checkpoint.position - 1, 1)?;
    Ok(events
        .first()
        .is_some_and(|e| e.position == checkpoint.position && hex::encode(e.hash) == checkpoint.last_event_hash))
}

/// Where `audit replay` stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Up to and including this global position.
    Position(u64),
    /// Every event recorded at or before this time.
    Time(DateTime<Utc>),
}

impl std::str::FromStr for Until {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(position) = text.parse::<u64>() {
            return Ok(Until::Position(position));
        }
        DateTime::parse_from_rfc3339(text).map(|t| Until::Time(t.with_timezone(&Utc))).map_err(|_| {
            format!("'{text}' is neither a position (a whole number) nor an RFC 3339 time such as 2026-11-26T12:00:00Z")
        })
    }
}

/// The read models as they were at `until`: a fresh fold of the log from position 0.
pub fn replay(store: &dyn EventStore, until: Until) -> Result<Projections, RunnerError> {
    let mut state = Projections::default();
    scan(store, 0, |batch| {
        for stored in batch {
            let past = match until {
                Until::Position(p) => stored.position > p,
                Until::Time(t) => stored.metadata.recorded_at > t,
            };
            if past {
                return Ok(false);
            }
            let position = stored.position;
            let recorded = into_recorded(stored).map_err(|source| RunnerError::Decode { position, source })?;
            state.apply(&recorded);
        }
        Ok(true)
    })?;
    Ok(state)
}

/// Reads the log after `after` in batches on a second thread while `visit` folds the previous
/// batch on this one (reading and decoding cost about the same, so replay runs on two cores).
/// `visit` returns false to stop early.
fn scan(
    store: &dyn EventStore,
    after: u64,
    mut visit: impl FnMut(Vec<store::StoredEvent>) -> Result<bool, RunnerError>,
) -> Result<(), RunnerError> {
    std::thread::scope(|scope| {
        let (sender, receiver) = std::sync::mpsc::sync_channel(2);
        scope.spawn(move || {
            let mut from = after;
            loop {
                let batch = store.read_all(from, BATCH);
                let done = match &batch {
                    Ok(events) => match events.last() {
                        Some(last) => {
                            from = last.position;
                            false
                        }
                        None => true,
                    },
                    Err(_) => true,
                };
                // A closed channel means the folder stopped early: stop reading.
                if (!done || batch.is_err()) && sender.send(batch).is_err() {
                    return;
                }
                if done {
                    return;
                }
            }
        });
        for batch in receiver {
            if !visit(batch?)? {
                break;
            }
        }
        Ok(())
    })
}

/// Stops a background runner thread when dropped.
pub struct RunnerHandle {
    pub runner: Arc<ProjectionRunner>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), RunnerError>>>,
}

impl RunnerHandle {
    pub fn spawn(runner: Arc<ProjectionRunner>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (runner, stop) = (runner.clone(), stop.clone());
            std::thread::Builder::new()
                .name("projections".into())
                .spawn(move || {
                    let result = runner.run(&stop);
                    if let Err(error) = &result {
                        tracing::error!(%error, "projection runner stopped");
                    }
                    result
                })
                .ok()
        };
        RunnerHandle { runner, stop, thread }
    }

    /// Stops the thread, saving the checkpoint.
    pub fn stop(mut self) -> Result<(), RunnerError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), RunnerError> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(RunnerError::Checkpoint { path: "-".into(), message: "runner thread panicked".into() }),
            None => Ok(()),
        }
    }
}

impl Drop for RunnerHandle {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
