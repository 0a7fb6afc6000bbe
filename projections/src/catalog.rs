//! Lists of the work a deployment holds: model versions, campaigns, prompt sets, generation and
//! fine-tune jobs — what the API's list endpoints show. Details come from each entity's stream.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use domain::campaign::Stage;
use domain::fine_tune::Arm;
use domain::generation::{GenerationPurpose, JobStatus};
use domain::model_version::ModelStatus;
use domain::*;
use serde::{Deserialize, Serialize};

use crate::Projection;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersionView {
    pub id: ModelVersionId,
    pub name: String,
    pub status: ModelStatus,
    /// None for a base model.
    pub parent: Option<ModelVersionId>,
    pub fine_tune_id: Option<FineTuneId>,
    pub arm: Option<Arm>,
    pub registered_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CampaignView {
    pub id: CampaignId,
    pub name: String,
    pub stage: Stage,
    pub associations: Vec<AssociationId>,
    pub base_model: ModelVersionId,
    pub promoted: Option<ModelVersionId>,
    pub started_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptSetView {
    pub id: PromptSetId,
    pub association_id: AssociationId,
    pub prompts: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub finalized: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationView {
    pub id: GenerationId,
    pub model_version: ModelVersionId,
    pub purpose: GenerationPurpose,
    pub status: JobStatus,
    pub requested: u64,
    pub images: u64,
    pub campaign_id: Option<CampaignId>,
    pub requested_at: DateTime<Utc>,
    /// The worker running (or last running) the job, and the end of its lease.
    #[serde(default)]
    pub worker: Option<String>,
    #[serde(default)]
    pub lease_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FineTuneView {
    pub id: FineTuneId,
    pub base_model: ModelVersionId,
    pub arm: Arm,
    pub status: JobStatus,
    pub examples: u64,
    pub last_step: u32,
    pub total_steps: u32,
    pub campaign_id: Option<CampaignId>,
    pub requested_at: DateTime<Utc>,
    /// The worker running (or last running) the job, and the end of its lease.
    #[serde(default)]
    pub worker: Option<String>,
    #[serde(default)]
    pub lease_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub model_versions: BTreeMap<ModelVersionId, ModelVersionView>,
    pub campaigns: BTreeMap<CampaignId, CampaignView>,
    pub prompt_sets: BTreeMap<PromptSetId, PromptSetView>,
    pub generations: BTreeMap<GenerationId, GenerationView>,
    pub fine_tunes: BTreeMap<FineTuneId, FineTuneView>,
}

impl Catalog {
    /// Generation and fine-tune jobs still requested or running, oldest first (ids are UUIDv7):
    /// the jobs a worker may look at.
    pub fn pending_jobs(&self) -> (Vec<GenerationId>, Vec<FineTuneId>) {
        let pending = |status: JobStatus| matches!(status, JobStatus::Requested | JobStatus::Running);
        let generations = self.generations.values().filter(|g| pending(g.status)).map(|g| g.id).collect();
        let fine_tunes = self.fine_tunes.values().filter(|f| pending(f.status)).map(|f| f.id).collect();
        (generations, fine_tunes)
    }
}

impl Projection for Catalog {
    const NAME: &'static str = "catalog";

    fn apply(&mut self, event: &Recorded) {
        let at = event.metadata.recorded_at;
        match &event.event {
            DomainEvent::ModelVersion(model_event) => match model_event {
                ModelVersionEvent::BaseModelRegistered { model_version_id, name, .. } => {
                    self.model_versions.insert(
                        *model_version_id,
                        ModelVersionView {
                            id: *model_version_id,
                            name: name.clone(),
                            status: ModelStatus::Registered,
                            parent: None,
                            fine_tune_id: None,
                            arm: None,
                            registered_at: at,
                        },
                    );
                }
                ModelVersionEvent::ModelVersionDerived {
                    model_version_id, name, parent, fine_tune_id, arm, ..
                } => {
                    self.model_versions.insert(
                        *model_version_id,
                        ModelVersionView {
                            id: *model_version_id,
                            name: name.clone(),
                            status: ModelStatus::Registered,
                            parent: Some(*parent),
                            fine_tune_id: Some(*fine_tune_id),
                            arm: Some(*arm),
                            registered_at: at,
                        },
                    );
                }
                ModelVersionEvent::ModelVersionPromoted { model_version_id, .. } => {
                    if let Some(view) = self.model_versions.get_mut(model_version_id) {
                        view.status = ModelStatus::Promoted;
                    }
                }
                ModelVersionEvent::ModelVersionRolledBack { model_version_id, .. } => {
                    if let Some(view) = self.model_versions.get_mut(model_version_id) {
                        view.status = ModelStatus::RolledBack;
                    }
                }
            },
            DomainEvent::Campaign(campaign_event) => match campaign_event {
                CampaignEvent::CampaignStarted { campaign_id, name, associations, base_model, .. } => {
                    self.campaigns.insert(
                        *campaign_id,
                        CampaignView {
                            id: *campaign_id,
                            name: name.clone(),
                            stage: Stage::Baseline,
                            associations: associations.clone(),
                            base_model: *base_model,
                            promoted: None,
                            started_at: at,
                        },
                    );
                }
                CampaignEvent::StageEntered { campaign_id, stage } => {
                    if let Some(view) = self.campaigns.get_mut(campaign_id) {
                        view.stage = *stage;
                    }
                }
                CampaignEvent::CampaignCompleted { campaign_id, promoted } => {
                    if let Some(view) = self.campaigns.get_mut(campaign_id) {
                        view.stage = Stage::Completed;
                        view.promoted = *promoted;
                    }
                }
                CampaignEvent::CampaignFailed { campaign_id, .. } => {
                    if let Some(view) = self.campaigns.get_mut(campaign_id) {
                        view.stage = Stage::Failed;
                    }
                }
                CampaignEvent::WorkLinked { .. } | CampaignEvent::EvaluationRecorded { .. } => {}
            },
            DomainEvent::PromptSet(prompt_event) => match prompt_event {
                PromptSetEvent::PromptSetCreated { prompt_set_id, association_id, .. } => {
                    self.prompt_sets.insert(
                        *prompt_set_id,
                        PromptSetView {
                            id: *prompt_set_id,
                            association_id: *association_id,
                            prompts: 0,
                            accepted: 0,
                            rejected: 0,
                            finalized: false,
                            created_at: at,
                        },
                    );
                }
                PromptSetEvent::PromptAdded { prompt_set_id, .. } => {
                    if let Some(view) = self.prompt_sets.get_mut(prompt_set_id) {
                        view.prompts += 1;
                    }
                }
                PromptSetEvent::PromptAccepted { prompt_set_id, .. } => {
                    if let Some(view) = self.prompt_sets.get_mut(prompt_set_id) {
                        view.accepted += 1;
                    }
                }
                PromptSetEvent::PromptRejected { prompt_set_id, .. } => {
                    if let Some(view) = self.prompt_sets.get_mut(prompt_set_id) {
                        view.rejected += 1;
                    }
                }
                PromptSetEvent::PromptSetFinalized { prompt_set_id, accepted } => {
                    if let Some(view) = self.prompt_sets.get_mut(prompt_set_id) {
                        view.finalized = true;
                        view.accepted = accepted.len() as u64;
                    }
                }
                // An edit sends an accepted prompt back to review; the count is settled at finalization.
                PromptSetEvent::PromptEdited { .. } => {}
            },
            DomainEvent::Generation(generation_event) => match generation_event {
                GenerationEvent::GenerationRequested {
                    generation_id,
                    model_version,
                    purpose,
                    items,
                    campaign_id,
                    ..
                } => {
                    self.generations.insert(
                        *generation_id,
                        GenerationView {
                            id: *generation_id,
                            model_version: *model_version,
                            purpose: *purpose,
                            status: JobStatus::Requested,
                            requested: items.len() as u64,
                            images: 0,
                            campaign_id: *campaign_id,
                            requested_at: at,
                            worker: None,
                            lease_until: None,
                        },
                    );
                }
                GenerationEvent::GenerationStarted { generation_id, worker, lease_until, .. } => {
                    if let Some(view) = self.generations.get_mut(generation_id) {
                        view.status = JobStatus::Running;
                        view.worker = Some(worker.clone());
                        view.lease_until = *lease_until;
                    }
                }
                GenerationEvent::GenerationLeaseRenewed { generation_id, worker, lease_until } => {
                    if let Some(view) = self.generations.get_mut(generation_id) {
                        view.worker = Some(worker.clone());
                        view.lease_until = Some(*lease_until);
                    }
                }
                GenerationEvent::ImageGenerated { generation_id, .. } => {
                    if let Some(view) = self.generations.get_mut(generation_id) {
                        view.images += 1;
                    }
                }
                GenerationEvent::GenerationCompleted { generation_id, .. } => {
                    if let Some(view) = self.generations.get_mut(generation_id) {
                        view.status = JobStatus::Completed;
                    }
                }
                GenerationEvent::GenerationFailed { generation_id, .. } => {
                    if let Some(view) = self.generations.get_mut(generation_id) {
                        view.status = JobStatus::Failed;
                    }
                }
            },
            DomainEvent::FineTune(fine_tune_event) => match fine_tune_event {
                FineTuneEvent::FineTuneRequested {
                    fine_tune_id,
                    base_model,
                    arm,
                    examples,
                    config,
                    campaign_id,
                    ..
                } => {
                    self.fine_tunes.insert(
                        *fine_tune_id,
                        FineTuneView {
                            id: *fine_tune_id,
                            base_model: *base_model,
                            arm: *arm,
                            status: JobStatus::Requested,
                            examples: examples.len() as u64,
                            last_step: 0,
                            total_steps: config.steps,
                            campaign_id: *campaign_id,
                            requested_at: at,
                            worker: None,
                            lease_until: None,
                        },
                    );
                }
                FineTuneEvent::FineTuneStarted { fine_tune_id, worker, lease_until } => {
                    if let Some(view) = self.fine_tunes.get_mut(fine_tune_id) {
                        view.status = JobStatus::Running;
                        view.worker = Some(worker.clone());
                        view.lease_until = *lease_until;
                        view.last_step = 0;
                    }
                }
                FineTuneEvent::FineTuneLeaseRenewed { fine_tune_id, worker, lease_until } => {
                    if let Some(view) = self.fine_tunes.get_mut(fine_tune_id) {
                        view.worker = Some(worker.clone());
                        view.lease_until = Some(*lease_until);
                    }
                }
                FineTuneEvent::FineTuneProgressed { fine_tune_id, step, .. } => {
                    if let Some(view) = self.fine_tunes.get_mut(fine_tune_id) {
                        view.last_step = *step;
                    }
                }
                FineTuneEvent::FineTuneCompleted { fine_tune_id, .. } => {
                    if let Some(view) = self.fine_tunes.get_mut(fine_tune_id) {
                        view.status = JobStatus::Completed;
                    }
                }
                FineTuneEvent::FineTuneFailed { fine_tune_id, .. } => {
                    if let Some(view) = self.fine_tunes.get_mut(fine_tune_id) {
                        view.status = JobStatus::Failed;
                    }
                }
            },
            _ => {}
        }
    }
}
