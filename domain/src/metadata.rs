//! What every recorded event carries besides its payload: who did it, when, and why.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The role a principal acts in. `System` is thitl itself (workers, the campaign process manager).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Curator,
    Annotator,
    Operator,
    Auditor,
    /// A GPU worker reaching thitl over HTTPS: takes and runs generation and fine-tune jobs.
    Worker,
    System,
}

impl Role {
    pub const ALL: [Role; 7] =
        [Role::Admin, Role::Curator, Role::Annotator, Role::Operator, Role::Auditor, Role::Worker, Role::System];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Curator => "curator",
            Role::Annotator => "annotator",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::Worker => "worker",
            Role::System => "system",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == text)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who caused an event: a principal (a token's name, or `thitl` for the system) in a role.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Actor {
    pub principal: String,
    pub role: Role,
}

impl Actor {
    pub fn new(principal: impl Into<String>, role: Role) -> Self {
        Actor { principal: principal.into(), role }
    }

    pub fn system() -> Self {
        Actor::new("thitl", Role::System)
    }
}

/// Metadata recorded with every event. Time and ids are chosen by the caller (the edge), never
/// by `domain`, which keeps `decide` deterministic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// UUIDv7: unique, and sortable by creation time.
    pub event_id: Uuid,
    /// UTC, at microsecond precision (stores keep exactly this many digits).
    pub recorded_at: DateTime<Utc>,
    pub actor: Actor,
    /// Shared by every event that one request or one campaign step caused.
    pub correlation_id: Uuid,
    /// The event or command that directly caused this one, if any.
    pub causation_id: Option<Uuid>,
}
