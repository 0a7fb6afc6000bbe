//! Requesting generation and fine-tune jobs: the rules every caller obeys (the HTTP routes, the
//! campaign runner, the CLI). A job names a model version that exists; a fine-tune's source round
//! exists, and its kind and status travel in the command so that the aggregate can judge it.

use domain::fine_tune::{Arm, LoraConfig, SourceRound, TrainingExample};
use domain::generation::{GenerationItem, GenerationPurpose, SamplerSettings};
use domain::{
    Aggregate, AnnotationRound, CampaignId, FineTune, FineTuneCommand, FineTuneId, Generation, GenerationCommand,
    GenerationId, ModelVersion, ModelVersionId, RoundId,
};
use uuid::Uuid;

use crate::commands::{CommandBus, CommandContext, CommandError, Outcome};

/// Why a job was not requested.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("model version {0} does not exist: register it first")]
    UnknownModel(ModelVersionId),
    #[error("round {0} does not exist")]
    UnknownRound(RoundId),
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// What a generation job is asked to make.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub model_version: ModelVersionId,
    pub purpose: GenerationPurpose,
    pub items: Vec<GenerationItem>,
    pub sampler: SamplerSettings,
    pub campaign_id: Option<CampaignId>,
}

/// What a fine-tune job is asked to train.
#[derive(Debug, Clone)]
pub struct FineTuneRequest {
    pub base_model: ModelVersionId,
    pub arm: Arm,
    /// The closed round 1 whose accepted images are the examples (T-HITL only).
    pub source_round: Option<RoundId>,
    pub examples: Vec<TrainingExample>,
    pub prior_preservation: Vec<TrainingExample>,
    pub config: LoraConfig,
    pub progress_every: u32,
    pub campaign_id: Option<CampaignId>,
}

/// Fails unless model version `id` has been registered.
pub fn require_model(bus: &CommandBus, id: ModelVersionId) -> Result<(), JobError> {
    if bus.load::<ModelVersion>(&id.stream())?.0.exists() { Ok(()) } else { Err(JobError::UnknownModel(id)) }
}

/// Records a generation request (a worker runs it); `expected` is the new stream's version
/// (`Some(0)` or `None`).
pub fn request_generation(
    bus: &CommandBus,
    context: &CommandContext,
    expected: Option<u64>,
    request: GenerationRequest,
) -> Result<(GenerationId, Outcome), JobError> {
    require_model(bus, request.model_version)?;
    let generation_id = GenerationId(Uuid::now_v7());
    let command = GenerationCommand::Request {
        generation_id,
        model_version: request.model_version,
        purpose: request.purpose,
        items: request.items,
        sampler: request.sampler,
        campaign_id: request.campaign_id,
    };
    let outcome = bus.execute::<Generation>(&generation_id.stream(), expected, context, command)?;
    Ok((generation_id, outcome))
}

/// Records a fine-tune request (a worker runs it).
pub fn request_fine_tune(
    bus: &CommandBus,
    context: &CommandContext,
    expected: Option<u64>,
    request: FineTuneRequest,
) -> Result<(FineTuneId, Outcome), JobError> {
    require_model(bus, request.base_model)?;
    let source_round = match request.source_round {
        Some(round_id) => {
            let (round, _) = bus.load::<AnnotationRound>(&round_id.stream())?;
            if !round.exists() {
                return Err(JobError::UnknownRound(round_id));
            }
            Some(SourceRound { round_id, kind: round.kind, status: round.status })
        }
        None => None,
    };
    let fine_tune_id = FineTuneId(Uuid::now_v7());
    let command = FineTuneCommand::Request {
        fine_tune_id,
        base_model: request.base_model,
        arm: request.arm,
        source_round,
        examples: request.examples,
        prior_preservation: request.prior_preservation,
        config: request.config,
        progress_every: request.progress_every,
        campaign_id: request.campaign_id,
    };
    let outcome = bus.execute::<FineTune>(&fine_tune_id.stream(), expected, context, command)?;
    Ok((fine_tune_id, outcome))
}
