//! The shape every aggregate shares, and how its events become stored bytes and back.
//!
//! A key design decision: an aggregate's `decide` receives everything it needs inside the
//! command — including facts about *other* aggregates (the taxonomy, a round's state), which the
//! caller loads first. That keeps `decide` a pure function of (state, command) and makes each
//! cross-aggregate rule visible in the command's type.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::DomainError;

pub trait Aggregate: Default + Clone + Send + Sync + 'static {
    type Command: Clone + Send + 'static;
    type Event: EventPayload;

    /// The entity's name in errors and its stream category (`association`, `round`, …).
    const ENTITY: &'static str;

    /// Whether any event has been applied (a stream with no events is "not found").
    fn exists(&self) -> bool;

    /// Checks the command against the current state and returns the events it causes.
    fn decide(&self, command: Self::Command) -> Result<Vec<Self::Event>, DomainError>;

    /// Applies one event. Cannot fail: an event is a fact that has already happened.
    fn evolve(&mut self, event: &Self::Event);

    /// Folds a history into a state.
    fn from_history<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self
    where
        Self::Event: 'a,
    {
        let mut state = Self::default();
        for event in events {
            state.evolve(event);
        }
        state
    }
}

/// An event enum whose variants are struct variants, stored as (type name, schema version,
/// JSON payload).
pub trait EventPayload: Serialize + DeserializeOwned + Clone + std::fmt::Debug {
    /// The schema version written for an event type today. Older stored versions are upcast.
    fn schema_version(_event_type: &str) -> u32 {
        1
    }

    /// Rewrites an older payload into today's shape (never touching the stored bytes).
    fn upcast(_event_type: &str, _schema_version: u32, payload: Value) -> Result<Value, DecodeError> {
        Ok(payload)
    }

    /// The variant's name, e.g. `AssociationRegistered`.
    fn event_type(&self) -> String {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map.keys().next().cloned().unwrap_or_default(),
            Ok(Value::String(name)) => name,
            _ => String::new(),
        }
    }
}

/// An event type and payload that do not decode into the current schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode event {event_type} (schema v{schema_version}): {message}")]
pub struct DecodeError {
    pub event_type: String,
    pub schema_version: u32,
    pub message: String,
}

/// An event split into what the store keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub event_type: String,
    pub schema_version: u32,
    pub payload: Value,
}

pub fn encode<E: EventPayload>(event: &E) -> Encoded {
    // Events are plain data (strings, numbers, ids): serialising them cannot fail.
    let value = serde_json::to_value(event).unwrap_or(Value::Null);
    let (event_type, payload) = match value {
        Value::Object(map) if map.len() == 1 => map.into_iter().next().unwrap_or_default(),
        other => (event.event_type(), other),
    };
    let schema_version = E::schema_version(&event_type);
    Encoded { event_type, schema_version, payload }
}

pub fn decode<E: EventPayload>(event_type: &str, schema_version: u32, payload: Value) -> Result<E, DecodeError> {
    let fail = |message: String| DecodeError { event_type: event_type.to_string(), schema_version, message };
    let current = E::schema_version(event_type);
    if schema_version > current {
        return Err(fail(format!("written by a newer thitl (this one reads up to v{current})")));
    }
    let payload = if schema_version < current { E::upcast(event_type, schema_version, payload)? } else { payload };
    let mut tagged = serde_json::Map::new();
    tagged.insert(event_type.to_string(), payload);
    serde_json::from_value(Value::Object(tagged)).map_err(|error| fail(error.to_string()))
}
