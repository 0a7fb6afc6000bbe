//! How recorded events are shown to auditors (CLI and HTTP).

use serde_json::{Value, json};

use store::StoredEvent;

/// One event as JSON: where it lies, who recorded it when, what it says, and its chain link.
pub fn event_json(event: &StoredEvent) -> Value {
    let payload: Value = serde_json::from_str(&event.payload).unwrap_or_else(|_| Value::String(event.payload.clone()));
    json!({
        "position": event.position,
        "stream": event.stream.as_str(),
        "version": event.version,
        "event_id": event.metadata.event_id,
        "type": event.event_type,
        "schema_version": event.schema_version,
        "recorded_at": event.metadata.recorded_at,
        "actor": {"principal": event.metadata.actor.principal, "role": event.metadata.actor.role},
        "correlation_id": event.metadata.correlation_id,
        "causation_id": event.metadata.causation_id,
        "payload": payload,
        "prev_hash": hex::encode(event.prev_hash),
        "hash": hex::encode(event.hash),
    })
}

/// One event as a line of text.
pub fn event_line(event: &StoredEvent) -> String {
    let mut payload = event.payload.clone();
    if payload.chars().count() > 120 {
        payload = payload.chars().take(117).collect::<String>() + "...";
    }
    format!(
        "{:>8}  {}  {:<28} {}@{}  by {} ({})  {}  #{}",
        event.position,
        event.metadata.recorded_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        event.event_type,
        event.stream,
        event.version,
        event.metadata.actor.principal,
        event.metadata.actor.role,
        payload,
        &hex::encode(event.hash)[..12],
    )
}
