//! The one error type of `decide`: every rejected command says why, in words a person can act on,
//! and belongs to a [`ErrorKind`] that the HTTP layer maps to a status code.

use thiserror::Error;

/// How a rejection should be reported: the API maps these to 422, 404, 409 and 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The command's values are wrong in themselves (422).
    Invalid,
    /// The entity the command names does not exist (404).
    NotFound,
    /// The command conflicts with the entity's current state (409).
    Conflict,
    /// The actor may not do this to this entity (403).
    Forbidden,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DomainError {
    #[error("{field} {message}")]
    Invalid { field: &'static str, message: String },
    #[error("quality rating {value} is out of range: ratings are whole numbers from 1 to 5")]
    RatingOutOfRange { value: i64 },
    #[error("{entity} {id} does not exist")]
    NotFound { entity: &'static str, id: String },
    #[error("{entity} {id} already exists")]
    AlreadyExists { entity: &'static str, id: String },
    #[error("{entity} is {state}: {action} is not possible")]
    WrongState { entity: &'static str, state: String, action: &'static str },
    #[error("round {round} is closed: no more annotations are accepted")]
    RoundClosed { round: String },
    #[error("annotator {annotator} has already annotated item {item}")]
    AlreadyAnnotated { annotator: String, item: String },
    #[error("item {item} is not assigned to annotator {annotator}: ask for the next task first")]
    NotAssigned { annotator: String, item: String },
    #[error("item {item} already has its {needed} annotations")]
    ItemComplete { item: String, needed: u32 },
    #[error("round {round} is not closed: fine-tuning needs the outcome of a closed round 1")]
    RoundNotClosed { round: String },
    #[error("{message}")]
    Forbidden { message: String },
    #[error("{entity} is leased to worker {holder} until {until}: another worker may take it over only after that")]
    LeaseHeld { entity: &'static str, holder: String, until: String },
    #[error("worker {worker} does not hold the {entity}'s lease (held by {holder}): it was taken over")]
    NotLeaseHolder { entity: &'static str, worker: String, holder: String },
}

impl DomainError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        DomainError::Invalid { field, message: message.into() }
    }

    pub fn wrong_state(entity: &'static str, state: impl std::fmt::Debug, action: &'static str) -> Self {
        DomainError::WrongState { entity, state: format!("{state:?}").to_lowercase(), action }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            DomainError::Invalid { .. } | DomainError::RatingOutOfRange { .. } => ErrorKind::Invalid,
            DomainError::NotFound { .. } => ErrorKind::NotFound,
            DomainError::AlreadyExists { .. }
            | DomainError::WrongState { .. }
            | DomainError::RoundClosed { .. }
            | DomainError::AlreadyAnnotated { .. }
            | DomainError::ItemComplete { .. }
            | DomainError::RoundNotClosed { .. }
            | DomainError::LeaseHeld { .. }
            | DomainError::NotLeaseHolder { .. } => ErrorKind::Conflict,
            DomainError::NotAssigned { .. } | DomainError::Forbidden { .. } => ErrorKind::Forbidden,
        }
    }
}
