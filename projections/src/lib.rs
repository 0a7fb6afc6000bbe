//! thitl's read models: small folds over recorded events, and the statistics they report.
//!
//! Each read model implements [`Projection`]: `apply` takes one [`domain::Recorded`] event and
//! cannot fail. A projection rebuilt from position 0 equals the live one, because `apply` is a
//! pure function of the model and the event (no clock, no IO, no randomness). The runner that
//! feeds them from the event store, and their checkpoints, live in `app`.
//!
//! Architecture invariant: `projections` depends only on `domain`; it never reads the store.

pub mod access;
pub mod catalog;
pub mod evaluations;
pub mod images;
pub mod models;
pub mod stats;

pub use access::{TokenRegistry, TokenView};
pub use catalog::Catalog;
pub use evaluations::{EvaluationRecord, Evaluations};
pub use images::{ImageCatalog, ImageRecord};

pub use models::{
    AssociationList, AssociationView, AuditSummary, EntityHistory, EntitySummary, RoundProgress, RoundView,
};

use domain::Recorded;
use serde::{Deserialize, Serialize};

/// A read model folded from events.
pub trait Projection {
    /// A stable name, used for checkpoints.
    const NAME: &'static str;
    fn apply(&mut self, event: &Recorded);
}

/// Every read model, and the global position they all reflect.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Projections {
    /// The position of the last event applied (0: none).
    pub position: u64,
    pub audit: AuditSummary,
    pub entities: EntityHistory,
    pub associations: AssociationList,
    pub rounds: RoundProgress,
    pub tokens: TokenRegistry,
    pub catalog: Catalog,
    pub evaluations: Evaluations,
}

impl Projections {
    pub fn apply(&mut self, event: &Recorded) {
        self.audit.apply(event);
        self.entities.apply(event);
        self.associations.apply(event);
        self.rounds.apply(event);
        self.tokens.apply(event);
        self.catalog.apply(event);
        self.evaluations.apply(event);
        self.position = event.position;
    }
}
