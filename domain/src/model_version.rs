//! A model version: a base model's weights, or a base plus a LoRA adapter from a fine-tune.
//! A curator promotes a version once its evaluation convinces; a promoted version can be rolled back.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::aggregate::{Aggregate, EventPayload};
use crate::error::DomainError;
use crate::fine_tune::{Arm, JobStatus};
use crate::ids::{FineTuneId, ModelVersionId};
use crate::values::{BlobHash, Name, Sentence};

/// What the caller read about the fine-tune a version derives from.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceFineTune {
    pub fine_tune_id: FineTuneId,
    pub status: JobStatus,
    pub base_model: Option<ModelVersionId>,
    pub arm: Option<Arm>,
    pub adapter: Option<BlobHash>,
}

#[derive(Debug, Clone)]
pub enum ModelVersionCommand {
    RegisterBase { model_version_id: ModelVersionId, name: String, weights: BlobHash, config: Value },
    DeriveFromFineTune { model_version_id: ModelVersionId, name: String, fine_tune: SourceFineTune },
    Promote { reason: String },
    RollBack { reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ModelVersionEvent {
    BaseModelRegistered {
        model_version_id: ModelVersionId,
        name: String,
        weights: BlobHash,
        config: Value,
    },
    ModelVersionDerived {
        model_version_id: ModelVersionId,
        name: String,
        parent: ModelVersionId,
        fine_tune_id: FineTuneId,
        arm: Arm,
        adapter: BlobHash,
    },
    ModelVersionPromoted {
        model_version_id: ModelVersionId,
        reason: String,
    },
    ModelVersionRolledBack {
        model_version_id: ModelVersionId,
        reason: String,
    },
}

impl EventPayload for ModelVersionEvent {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelStatus {
    #[default]
    Unregistered,
    Registered,
    Promoted,
    RolledBack,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelVersion {
    pub id: Option<ModelVersionId>,
    pub status: ModelStatus,
    pub name: String,
    pub parent: Option<ModelVersionId>,
    pub fine_tune_id: Option<FineTuneId>,
    pub weights: Option<BlobHash>,
    pub adapter: Option<BlobHash>,
    /// The model family a base version's config names (`"family"`); `None` for the reference
    /// world's models, which predate the key. A derived version belongs to its parent's family.
    pub family: Option<String>,
    /// A base version's config as registered (`None` for a derived version: see its parent).
    pub config: Option<Value>,
}

impl Aggregate for ModelVersion {
    type Command = ModelVersionCommand;
    type Event = ModelVersionEvent;
    const ENTITY: &'static str = "model version";

    fn exists(&self) -> bool {
        self.id.is_some()
    }

    fn decide(&self, command: ModelVersionCommand) -> Result<Vec<ModelVersionEvent>, DomainError> {
        let already = |id: ModelVersionId| DomainError::AlreadyExists { entity: "model version", id: id.to_string() };
        match command {
            ModelVersionCommand::RegisterBase { model_version_id, name, weights, config } => {
                if self.exists() {
                    return Err(already(model_version_id));
                }
                let name = Name::parse("name", &name)?;
                Ok(vec![ModelVersionEvent::BaseModelRegistered {
                    model_version_id,
                    name: name.into(),
                    weights,
                    config,
                }])
            }
            ModelVersionCommand::DeriveFromFineTune { model_version_id, name, fine_tune } => {
                if self.exists() {
                    return Err(already(model_version_id));
                }
                let name = Name::parse("name", &name)?;
                let (JobStatus::Completed, Some(parent), Some(arm), Some(adapter)) =
                    (fine_tune.status, fine_tune.base_model, fine_tune.arm, fine_tune.adapter)
                else {
                    return Err(DomainError::WrongState {
                        entity: "fine-tune",
                        state: format!("{:?}", fine_tune.status).to_lowercase(),
                        action: "deriving a model version (it must have completed)",
                    });
                };
                Ok(vec![ModelVersionEvent::ModelVersionDerived {
                    model_version_id,
                    name: name.into(),
                    parent,
                    fine_tune_id: fine_tune.fine_tune_id,
                    arm,
                    adapter,
                }])
            }
            ModelVersionCommand::Promote { reason } => {
                let id =
                    self.id.ok_or(DomainError::NotFound { entity: "model version", id: "(unregistered)".into() })?;
                let reason = Sentence::parse("reason", &reason)?;
                match self.status {
                    ModelStatus::Registered | ModelStatus::RolledBack => {
                        Ok(vec![ModelVersionEvent::ModelVersionPromoted {
                            model_version_id: id,
                            reason: reason.into(),
                        }])
                    }
                    status => Err(DomainError::wrong_state("model version", status, "promoting")),
                }
            }
            ModelVersionCommand::RollBack { reason } => {
                let id =
                    self.id.ok_or(DomainError::NotFound { entity: "model version", id: "(unregistered)".into() })?;
                let reason = Sentence::parse("reason", &reason)?;
                match self.status {
                    ModelStatus::Promoted => Ok(vec![ModelVersionEvent::ModelVersionRolledBack {
                        model_version_id: id,
                        reason: reason.into(),
                    }]),
                    status => Err(DomainError::wrong_state(
                        "model version",
                        status,
                        "rolling back (only a promoted version can be)",
                    )),
                }
            }
        }
    }

    fn evolve(&mut self, event: &ModelVersionEvent) {
        match event {
            ModelVersionEvent::BaseModelRegistered { model_version_id, name, weights, config } => {
                self.id = Some(*model_version_id);
                self.status = ModelStatus::Registered;
                self.name = name.clone();
                self.weights = Some(weights.clone());
                self.family = config.get("family").and_then(Value::as_str).map(str::to_string);
                self.config = Some(config.clone());
            }
            ModelVersionEvent::ModelVersionDerived {
                model_version_id, name, parent, fine_tune_id, adapter, ..
            } => {
                self.id = Some(*model_version_id);
                self.status = ModelStatus::Registered;
                self.name = name.clone();
                self.parent = Some(*parent);
                self.fine_tune_id = Some(*fine_tune_id);
                self.adapter = Some(adapter.clone());
            }
            ModelVersionEvent::ModelVersionPromoted { .. } => self.status = ModelStatus::Promoted,
            ModelVersionEvent::ModelVersionRolledBack { .. } => self.status = ModelStatus::RolledBack,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ApplyAll, then_error};
    use uuid::Uuid;

    fn hash(c: char) -> BlobHash {
        BlobHash::parse(&c.to_string().repeat(64)).unwrap()
    }

    fn fine_tune(status: JobStatus) -> SourceFineTune {
        SourceFineTune {
            fine_tune_id: FineTuneId(Uuid::from_u128(5)),
            status,
            base_model: Some(ModelVersionId(Uuid::from_u128(1))),
            arm: Some(Arm::Thitl),
            adapter: (status == JobStatus::Completed).then(|| hash('a')),
        }
    }

    fn derive(status: JobStatus) -> ModelVersionCommand {
        ModelVersionCommand::DeriveFromFineTune {
            model_version_id: ModelVersionId(Uuid::from_u128(2)),
            name: "base+thitl".into(),
            fine_tune: fine_tune(status),
        }
    }

    #[test]
    fn a_base_model_is_registered_once() {
        let register = || ModelVersionCommand::RegisterBase {
            model_version_id: ModelVersionId(Uuid::from_u128(1)),
            name: "scenes-base".into(),
            weights: hash('b'),
            config: serde_json::json!({"width": 128}),
        };
        let (model, _) = ModelVersion::default().then(register());
        assert_eq!(model.status, ModelStatus::Registered);
        then_error(model.decide(register()), |e| matches!(e, DomainError::AlreadyExists { .. }));
    }

    #[test]
    fn a_version_derives_only_from_a_completed_fine_tune() {
        then_error(ModelVersion::default().decide(derive(JobStatus::Running)), |e| {
            matches!(e, DomainError::WrongState { entity: "fine-tune", .. })
        });
        let (model, events) = ModelVersion::default().then(derive(JobStatus::Completed));
        assert!(matches!(&events[..], [ModelVersionEvent::ModelVersionDerived { arm: Arm::Thitl, .. }]));
        assert_eq!(model.parent, Some(ModelVersionId(Uuid::from_u128(1))));
    }

    #[test]
    fn promotion_and_rollback_follow_each_other() {
        let (model, _) = ModelVersion::default().then(derive(JobStatus::Completed));
        then_error(model.decide(ModelVersionCommand::RollBack { reason: "x".into() }), |e| {
            matches!(e, DomainError::WrongState { .. })
        });
        let (model, _) = model.then(ModelVersionCommand::Promote { reason: "rate fell to 0%".into() });
        then_error(model.decide(ModelVersionCommand::Promote { reason: "again".into() }), |e| {
            matches!(e, DomainError::WrongState { .. })
        });
        let (model, events) = model.then(ModelVersionCommand::RollBack { reason: "quality complaints".into() });
        assert!(matches!(&events[..], [ModelVersionEvent::ModelVersionRolledBack { .. }]));
        assert_eq!(model.apply_all(&[]).status, ModelStatus::RolledBack);
        then_error(ModelVersion::default().decide(ModelVersionCommand::Promote { reason: "x".into() }), |e| {
            matches!(e, DomainError::NotFound { .. })
        });
    }
}
