//! The write side: load an aggregate from its stream, `decide`, append with the expected version.
//!
//! HTTP handlers, the CLI and the campaign runner all go through [`CommandBus::execute`], so
//! every event gets the same metadata (UUIDv7 id, UTC time, actor, correlation and causation)
//! and every append is checked against the version the decision was made on.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use domain::{Actor, Aggregate, DecodeError, DomainError, EventMetadata, decode, encode};
use uuid::Uuid;

use crate::store::{EventStore, ExpectedVersion, NewEvent, StoreError, StreamName};

/// Who asks, and in what context; becomes every event's metadata.
#[derive(Debug, Clone)]
pub struct CommandContext {
    pub actor: Actor,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
}

impl CommandContext {
    pub fn new(actor: Actor) -> Self {
        CommandContext { actor, correlation_id: Uuid::now_v7(), causation_id: None }
    }

    pub fn system() -> Self {
        Self::new(Actor::system())
    }
}

/// Where a command's events landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stream: String,
    /// The stream's version after the command (unchanged if it caused no event).
    pub stream_version: u64,
    /// The global position of the last event written (None if the command caused no event).
    pub position: Option<u64>,
    pub event_ids: Vec<Uuid>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("{stream} changed since version {expected}: it is now at version {actual}; reload and retry")]
    Conflict { stream: String, expected: u64, actual: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored history cannot be read: {0}")]
    Decode(#[from] DecodeError),
}

/// Runs commands against an event store.
///
/// A key design decision: the bus keeps recently used aggregate states in memory with the
/// version they reflect, and loading one reads only the events recorded after that version.
/// That is safe because events are immutable — a cached prefix of a stream never changes, and
/// whatever another writer appended is read and folded before every decision. Without it,
/// every annotation would re-read and re-decode its whole round.
#[derive(Clone)]
pub struct CommandBus {
    store: Arc<dyn EventStore>,
    cache: Arc<Mutex<HashMap<(TypeId, String), Cached>>>,
}

struct Cached {
    state: Box<dyn Any + Send + Sync>,
    version: u64,
}

/// How many events to read per batch when loading an aggregate.
const LOAD_BATCH: usize = 10_000;
/// How many aggregate states the bus keeps; past this it forgets them all and starts again
/// (simple, and a reload costs only a stream read).
const CACHE_CAPACITY: usize = 4096;

impl CommandBus {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        CommandBus { store, cache: Arc::new(Mutex::new(HashMap::new())) }
    }

    fn cached<A: Aggregate>(&self, stream: &str) -> (A, u64) {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match cache.get(&(TypeId::of::<A>(), stream.to_string())) {
            Some(entry) => match entry.state.downcast_ref::<A>() {
                Some(state) => (state.clone(), entry.version),
                None => (A::default(), 0),
            },
            None => (A::default(), 0),
        }
    }

    fn remember<A: Aggregate>(&self, stream: &str, state: &A, version: u64) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let key = (TypeId::of::<A>(), stream.to_string());
        // Never replace a newer state with an older one (two commands may finish out of order).
        if cache.get(&key).is_some_and(|entry| entry.version >= version) {
            return;
        }
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(key, Cached { state: Box::new(state.clone()), version });
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// The aggregate's current state and version.
    pub fn load<A: Aggregate>(&self, stream: &str) -> Result<(A, u64), CommandError> {
        let name = StreamName::new(stream)?;
        let (mut state, mut version) = self.cached::<A>(stream);
        let cached_version = version;
        loop {
            let batch = self.store.read_stream(&name, version + 1, LOAD_BATCH)?;
            let done = batch.len() < LOAD_BATCH;
            for stored in batch {
                let payload = serde_json::from_str(&stored.payload).map_err(|e| DecodeError {
                    event_type: stored.event_type.clone(),
                    schema_version: stored.schema_version,
                    message: e.to_string(),
                })?;
                let event: A::Event = decode(&stored.event_type, stored.schema_version, payload)?;
                state.evolve(&event);
                version = stored.version;
            }
            if done {
                if version > cached_version {
                    self.remember(stream, &state, version);
                }
                return Ok((state, version));
            }
        }
    }

    /// Decides `command` on the current state and appends the events. With `expected` set
    /// (an `If-Match` header), the decision is refused unless the stream is at that version.
    pub fn execute<A: Aggregate>(
        &self,
        stream: &str,
        expected: Option<u64>,
        context: &CommandContext,
        command: A::Command,
    ) -> Result<Outcome, CommandError> {
        let (state, version) = self.load::<A>(stream)?;
        if let Some(expected) = expected
            && expected != version
        {
            return Err(CommandError::Conflict { stream: stream.to_string(), expected, actual: version });
        }
        let events = state.decide(command)?;
        let outcome = self.append::<A>(stream, version, context, &events)?;
        if !events.is_empty() {
            let mut state = state;
            for event in &events {
                state.evolve(event);
            }
            self.remember(stream, &state, outcome.stream_version);
        }
        Ok(outcome)
    }

    /// Like [`execute`](Self::execute) with no expected version, retrying when another writer
    /// got in between (the command is decided again on the newer state).
    pub fn execute_retrying<A: Aggregate>(
        &self,
        stream: &str,
        context: &CommandContext,
        command: impl Fn() -> A::Command,
    ) -> Result<Outcome, CommandError> {
        let mut attempts = 0;
        loop {
            match self.execute::<A>(stream, None, context, command()) {
                Err(CommandError::Conflict { .. }) if attempts < 10 => attempts += 1,
                other => return other,
            }
        }
    }

    fn append<A: Aggregate>(
        &self,
        stream: &str,
        version: u64,
        context: &CommandContext,
        events: &[A::Event],
    ) -> Result<Outcome, CommandError> {
        if events.is_empty() {
            return Ok(Outcome { stream: stream.to_string(), stream_version: version, position: None, event_ids: vec![] });
        }
        let name = StreamName::new(stream)?;
        let now = Utc::now();
        let new_events: Vec<NewEvent> = events
            .iter()
            .map(|event| {
                let encoded = encode(event);
                NewEvent {
                    event_type: encoded.event_type,
                    schema_version: encoded.schema_version,
                    payload: encoded.payload,
                    metadata: EventMetadata {
                        event_id: Uuid::now_v7(),
                        recorded_at: now,
                        actor: context.actor.clone(),
                        correlation_id: context.correlation_id,
                        causation_id: context.causation_id,
                    },
                }
            })
            .collect();
        let event_ids = new_events.iter().map(|e| e.metadata.event_id).collect();
        let expected = if version == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(version) };
        match self.store.append(&name, expected, &new_events) {
            Ok(result) => Ok(Outcome {
                stream: stream.to_string(),
                stream_version: result.stream_version,
                position: Some(result.last_position),
                event_ids,
            }),
            Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                Err(CommandError::Conflict { stream: stream.to_string(), expected: version, actual })
            }
            Err(other) => Err(other.into()),
        }
    }
}

/// Decodes a stored event into what projections fold.
pub fn to_recorded(stored: &crate::store::StoredEvent) -> Result<domain::Recorded, DecodeError> {
    into_recorded(stored.clone())
}

/// [`to_recorded`] without copying the event's strings (replay owns its batches).
pub fn into_recorded(stored: crate::store::StoredEvent) -> Result<domain::Recorded, DecodeError> {
    let event = domain::DomainEvent::decode_str(stored.stream.as_str(), &stored.event_type, stored.schema_version, &stored.payload)?;
    Ok(domain::Recorded {
        position: stored.position,
        stream: String::from(stored.stream),
        version: stored.version,
        event_type: stored.event_type,
        metadata: stored.metadata,
        event,
    })
}
