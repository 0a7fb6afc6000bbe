//! The write side: load an aggregate from its stream, `decide`, append with the expected version.
//!
//! HTTP handlers, the CLI and the campaign runner all go through [`CommandBus::execute`], so
//! every event gets the same metadata (UUIDv7 id, UTC time, actor, correlation and causation)
//! and every append is checked against the version the decision was made on.

use std::sync::Arc;

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
#[derive(Clone)]
pub struct CommandBus {
    store: Arc<dyn EventStore>,
}

/// How many events to read per batch when loading an aggregate.
const LOAD_BATCH: usize = 10_000;

impl CommandBus {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        CommandBus { store }
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// The aggregate's current state and version.
    pub fn load<A: Aggregate>(&self, stream: &str) -> Result<(A, u64), CommandError> {
        let name = StreamName::new(stream)?;
        let mut state = A::default();
        let mut version = 0;
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
        self.append::<A>(stream, version, context, &events)
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
    let event = domain::DomainEvent::decode_str(stored.stream.as_str(), &stored.event_type, stored.schema_version, &stored.payload)?;
    Ok(domain::Recorded {
        position: stored.position,
        stream: stored.stream.as_str().to_string(),
        version: stored.version,
        event_type: stored.event_type.clone(),
        metadata: stored.metadata.clone(),
        event,
    })
}
