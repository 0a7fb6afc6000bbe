//! A LoRA fine-tuning job: (accepted image, original training prompt) pairs plus a
//! prior-preservation set, trained on a base model; progress every N steps; an adapter blob.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, EventPayload};
use crate::error::DomainError;
use crate::ids::{CampaignId, FineTuneId, ImageId, ModelVersionId, PromptId, RoundId};
use crate::lease::Lease;
use crate::round::{RoundKind, RoundStatus};
use crate::values::{BlobHash, Name, Sentence};

pub const MAX_EXAMPLES: usize = 100_000;

/// T-HITL trains only on what round 1 accepted; the traditional arm trains on every candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    Thitl,
    Traditional,
}

/// Layers an adapter can target (attention qkv and output, the MLP's two layers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum LoraTarget {
    Qkv,
    AttnOut,
    MlpIn,
    MlpOut,
}

/// LoRA settings (every field has its default: a client names only what it changes). The
/// bounds are those `validate_config` checks; a number beyond the largest single-precision float is not
/// finite once read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct LoraConfig {
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 256))]
    pub rank: u32,
    #[cfg_attr(feature = "openapi", schema(exclusive_minimum = 0, maximum = 3.4028235e38))]
    pub alpha: f32,
    /// The layers to adapt: at least one.
    #[cfg_attr(feature = "openapi", schema(min_items = 1))]
    pub targets: Vec<LoraTarget>,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1_000_000))]
    pub steps: u32,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 4096))]
    pub batch_size: u32,
    #[cfg_attr(feature = "openapi", schema(exclusive_minimum = 0, exclusive_maximum = 1, default = 0.001))]
    pub learning_rate: f32,
    #[cfg_attr(feature = "openapi", schema(minimum = 0, exclusive_maximum = 1))]
    pub weight_decay: f32,
    pub seed: u64,
    /// Weight of the prior-preservation loss.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 3.4028235e38))]
    pub prior_weight: f32,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 8.0,
            targets: vec![LoraTarget::Qkv, LoraTarget::AttnOut, LoraTarget::MlpIn, LoraTarget::MlpOut],
            steps: 400,
            batch_size: 32,
            learning_rate: 1e-3,
            weight_decay: 0.0,
            seed: 0,
            prior_weight: 1.0,
        }
    }
}

/// One image to train on, with its prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TrainingExample {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = "uuid"))]
    pub image_id: ImageId,
    pub blob: BlobHash,
    /// The original training prompt (not its neutral form).
    #[cfg_attr(feature = "openapi", schema(value_type = Sentence))]
    pub prompt: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = "uuid"))]
    pub prompt_id: Option<PromptId>,
}

/// What the caller read about the round the dataset comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceRound {
    pub round_id: RoundId,
    pub kind: Option<RoundKind>,
    pub status: RoundStatus,
}

#[derive(Debug, Clone)]
pub enum FineTuneCommand {
    Request {
        fine_tune_id: FineTuneId,
        base_model: ModelVersionId,
        arm: Arm,
        /// Required for T-HITL: a closed round 1. None for the traditional arm.
        source_round: Option<SourceRound>,
        examples: Vec<TrainingExample>,
        prior_preservation: Vec<TrainingExample>,
        config: LoraConfig,
        progress_every: u32,
        campaign_id: Option<CampaignId>,
    },
    /// A worker claims the job for `lease_seconds` from `now` (again after a crash: training
    /// restarts from step 0). Refused while another worker's lease runs ([`crate::lease`]).
    Start {
        worker: String,
        now: DateTime<Utc>,
        lease_seconds: u32,
    },
    /// The holder keeps the job for `lease_seconds` more from `now`.
    Renew {
        worker: String,
        now: DateTime<Utc>,
        lease_seconds: u32,
    },
    RecordProgress {
        worker: String,
        step: u32,
        loss: f32,
    },
    Complete {
        worker: String,
        adapter: BlobHash,
        final_loss: f32,
    },
    /// Ends the job as failed; while it runs, only its holder may.
    Fail {
        worker: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FineTuneEvent {
    FineTuneRequested {
        fine_tune_id: FineTuneId,
        base_model: ModelVersionId,
        arm: Arm,
        source_round: Option<RoundId>,
        examples: Vec<TrainingExample>,
        prior_preservation: Vec<TrainingExample>,
        config: LoraConfig,
        progress_every: u32,
        campaign_id: Option<CampaignId>,
    },
    FineTuneStarted {
        fine_tune_id: FineTuneId,
        worker: String,
        /// The end of the worker's lease (absent in jobs started before leases existed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_until: Option<DateTime<Utc>>,
    },
    FineTuneLeaseRenewed {
        fine_tune_id: FineTuneId,
        worker: String,
        lease_until: DateTime<Utc>,
    },
    FineTuneProgressed {
        fine_tune_id: FineTuneId,
        step: u32,
        total_steps: u32,
        loss: f32,
    },
    FineTuneCompleted {
        fine_tune_id: FineTuneId,
        adapter: BlobHash,
        final_loss: f32,
    },
    FineTuneFailed {
        fine_tune_id: FineTuneId,
        reason: String,
    },
}

impl EventPayload for FineTuneEvent {}

pub use crate::generation::JobStatus;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FineTune {
    pub id: Option<FineTuneId>,
    pub status: JobStatus,
    pub base_model: Option<ModelVersionId>,
    pub arm: Option<Arm>,
    pub config: Option<LoraConfig>,
    pub progress_every: u32,
    pub last_step: u32,
    pub losses: Vec<(u32, f32)>,
    pub adapter: Option<BlobHash>,
    pub campaign_id: Option<CampaignId>,
    /// What the worker trains on (from the request).
    pub examples: Vec<TrainingExample>,
    pub prior_preservation: Vec<TrainingExample>,
    /// The round whose accepted images the examples are (T-HITL).
    pub source_round: Option<RoundId>,
    pub final_loss: Option<f32>,
    /// The worker running (or last running) the job, and until when.
    pub lease: Option<Lease>,
}

impl FineTune {
    /// The job runs and `worker` holds it.
    fn check_running(&self, worker: &str, action: &'static str) -> Result<(), DomainError> {
        if self.status != JobStatus::Running {
            return Err(DomainError::wrong_state("fine-tune", self.status, action));
        }
        Lease::check_holder(self.lease.as_ref(), "fine-tune", worker)
    }

    fn unfinished_id(&self, action: &'static str) -> Result<FineTuneId, DomainError> {
        let id = self.id.ok_or(DomainError::NotFound { entity: "fine-tune", id: "(not requested)".into() })?;
        if self.status.is_finished() {
            return Err(DomainError::wrong_state("fine-tune", self.status, action));
        }
        Ok(id)
    }
}

pub(crate) fn validate_config(config: &LoraConfig) -> Result<(), DomainError> {
    if !(1..=256).contains(&config.rank) {
        return Err(DomainError::invalid("rank", "must be between 1 and 256"));
    }
    if !(config.alpha.is_finite() && config.alpha > 0.0) {
        return Err(DomainError::invalid("alpha", "must be a positive number"));
    }
    if config.targets.is_empty() {
        return Err(DomainError::invalid("targets", "must name at least one layer (qkv, attn_out, mlp_in, mlp_out)"));
    }
    if !(1..=1_000_000).contains(&config.steps) {
        return Err(DomainError::invalid("steps", "must be between 1 and 1,000,000"));
    }
    if !(1..=4096).contains(&config.batch_size) {
        return Err(DomainError::invalid("batch_size", "must be between 1 and 4096"));
    }
    if !(config.learning_rate.is_finite() && config.learning_rate > 0.0 && config.learning_rate < 1.0) {
        return Err(DomainError::invalid("learning_rate", "must be between 0 and 1 (exclusive)"));
    }
    if !(config.weight_decay.is_finite() && (0.0..1.0).contains(&config.weight_decay)) {
        return Err(DomainError::invalid("weight_decay", "must be in [0, 1)"));
    }
    if !(config.prior_weight.is_finite() && config.prior_weight >= 0.0) {
        return Err(DomainError::invalid("prior_weight", "must be zero or positive"));
    }
    Ok(())
}

impl Aggregate for FineTune {
    type Command = FineTuneCommand;
    type Event = FineTuneEvent;
    const ENTITY: &'static str = "fine-tune";

    fn exists(&self) -> bool {
        self.id.is_some()
    }

    fn decide(&self, command: FineTuneCommand) -> Result<Vec<FineTuneEvent>, DomainError> {
        match command {
            FineTuneCommand::Request {
                fine_tune_id,
                base_model,
                arm,
                source_round,
                examples,
                prior_preservation,
                config,
                progress_every,
                campaign_id,
            } => {
                if self.exists() {
                    return Err(DomainError::AlreadyExists { entity: "fine-tune", id: fine_tune_id.to_string() });
                }
                match (arm, source_round) {
                    (Arm::Thitl, None) => {
                        return Err(DomainError::invalid(
                            "source_round",
                            "a T-HITL fine-tune trains on the images a closed round 1 accepted: name that round",
                        ));
                    }
                    (Arm::Thitl, Some(round)) => {
                        if round.status != RoundStatus::Closed {
                            return Err(DomainError::RoundNotClosed { round: round.round_id.to_string() });
                        }
                        if round.kind != Some(RoundKind::Screen) {
                            return Err(DomainError::invalid("source_round", "must be a round 1 (quality screen)"));
                        }
                    }
                    (Arm::Traditional, Some(_)) => {
                        return Err(DomainError::invalid(
                            "source_round",
                            "the traditional arm skips round 1 and trains on every candidate: name no round",
                        ));
                    }
                    (Arm::Traditional, None) => {}
                }
                if examples.is_empty() || examples.len() > MAX_EXAMPLES {
                    return Err(DomainError::invalid(
                        "examples",
                        format!("must hold 1 to {MAX_EXAMPLES} images, not {}", examples.len()),
                    ));
                }
                for example in examples.iter().chain(&prior_preservation) {
                    Sentence::parse("prompt", &example.prompt)?;
                }
                validate_config(&config)?;
                if progress_every == 0 {
                    return Err(DomainError::invalid("progress_every", "must be at least 1 step"));
                }
                Ok(vec![FineTuneEvent::FineTuneRequested {
                    fine_tune_id,
                    base_model,
                    arm,
                    source_round: source_round.map(|r| r.round_id),
                    examples,
                    prior_preservation,
                    config,
                    progress_every,
                    campaign_id,
                }])
            }
            FineTuneCommand::Start { worker, now, lease_seconds } => {
                let fine_tune_id = self.unfinished_id("starting")?;
                let worker = Name::parse("worker", &worker)?;
                let lease_until = Lease::end(now, lease_seconds)?;
                Lease::check_start(self.lease.as_ref(), "fine-tune", worker.as_str(), now)?;
                Ok(vec![FineTuneEvent::FineTuneStarted {
                    fine_tune_id,
                    worker: worker.into(),
                    lease_until: Some(lease_until),
                }])
            }
            FineTuneCommand::Renew { worker, now, lease_seconds } => {
                let fine_tune_id = self.unfinished_id("renewing its lease")?;
                let lease_until = Lease::end(now, lease_seconds)?;
                self.check_running(&worker, "renewing its lease")?;
                Ok(vec![FineTuneEvent::FineTuneLeaseRenewed { fine_tune_id, worker, lease_until }])
            }
            FineTuneCommand::RecordProgress { worker, step, loss } => {
                let fine_tune_id = self.unfinished_id("recording progress")?;
                self.check_running(&worker, "recording progress")?;
                let total_steps = self.config.as_ref().map_or(0, |c| c.steps);
                if step == 0 || step > total_steps {
                    return Err(DomainError::invalid("step", format!("must be between 1 and {total_steps}")));
                }
                if step <= self.last_step {
                    return Err(DomainError::invalid(
                        "step",
                        format!("must come after the last recorded step ({})", self.last_step),
                    ));
                }
                if !loss.is_finite() {
                    return Err(DomainError::invalid("loss", "must be a finite number"));
                }
                Ok(vec![FineTuneEvent::FineTuneProgressed { fine_tune_id, step, total_steps, loss }])
            }
            FineTuneCommand::Complete { worker, adapter, final_loss } => {
                let fine_tune_id = self.unfinished_id("completing")?;
                self.check_running(&worker, "completing")?;
                if !final_loss.is_finite() {
                    return Err(DomainError::invalid("final_loss", "must be a finite number"));
                }
                Ok(vec![FineTuneEvent::FineTuneCompleted { fine_tune_id, adapter, final_loss }])
            }
            FineTuneCommand::Fail { worker, reason } => {
                let fine_tune_id = self.unfinished_id("failing")?;
                if self.status == JobStatus::Running {
                    Lease::check_holder(self.lease.as_ref(), "fine-tune", &worker)?;
                }
                let reason = Sentence::parse("reason", &reason)?;
                Ok(vec![FineTuneEvent::FineTuneFailed { fine_tune_id, reason: reason.into() }])
            }
        }
    }

    fn evolve(&mut self, event: &FineTuneEvent) {
        match event {
            FineTuneEvent::FineTuneRequested {
                fine_tune_id,
                base_model,
                arm,
                config,
                progress_every,
                campaign_id,
                examples,
                prior_preservation,
                source_round,
            } => {
                self.source_round = *source_round;
                self.examples.clone_from(examples);
                self.prior_preservation.clone_from(prior_preservation);
                self.id = Some(*fine_tune_id);
                self.status = JobStatus::Requested;
                self.base_model = Some(*base_model);
                self.arm = Some(*arm);
                self.config = Some(config.clone());
                self.progress_every = *progress_every;
                self.campaign_id = *campaign_id;
            }
            FineTuneEvent::FineTuneStarted { worker, lease_until, .. } => {
                self.status = JobStatus::Running;
                self.lease = Some(Lease::recorded(worker, *lease_until));
                // A restarted job trains again from step 0.
                self.last_step = 0;
            }
            FineTuneEvent::FineTuneLeaseRenewed { worker, lease_until, .. } => {
                self.lease = Some(Lease::recorded(worker, Some(*lease_until)));
            }
            FineTuneEvent::FineTuneProgressed { step, loss, .. } => {
                self.last_step = *step;
                self.losses.push((*step, *loss));
            }
            FineTuneEvent::FineTuneCompleted { adapter, final_loss, .. } => {
                self.final_loss = Some(*final_loss);
                self.status = JobStatus::Completed;
                self.adapter = Some(adapter.clone());
            }
            FineTuneEvent::FineTuneFailed { .. } => self.status = JobStatus::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `seconds` after a fixed instant.
    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn start(worker: &str, seconds: i64) -> FineTuneCommand {
        FineTuneCommand::Start { worker: worker.into(), now: at(seconds), lease_seconds: 60 }
    }
    use crate::testing::{ApplyAll, then_error};
    use uuid::Uuid;

    fn example(n: u128) -> TrainingExample {
        TrainingExample {
            image_id: ImageId(Uuid::from_u128(n)),
            blob: BlobHash::parse(&format!("{n:064x}")).unwrap(),
            prompt: "a woman at the beach".into(),
            prompt_id: None,
        }
    }

    fn round(status: RoundStatus, kind: RoundKind) -> SourceRound {
        SourceRound { round_id: RoundId(Uuid::from_u128(3)), kind: Some(kind), status }
    }

    fn request(arm: Arm, source_round: Option<SourceRound>) -> FineTuneCommand {
        FineTuneCommand::Request {
            fine_tune_id: FineTuneId(Uuid::from_u128(1)),
            base_model: ModelVersionId(Uuid::from_u128(2)),
            arm,
            source_round,
            examples: vec![example(1), example(2)],
            prior_preservation: vec![example(3)],
            config: LoraConfig { steps: 10, ..LoraConfig::default() },
            progress_every: 5,
            campaign_id: None,
        }
    }

    #[test]
    fn fine_tuning_on_a_round_that_is_not_closed_is_rejected() {
        then_error(
            FineTune::default().decide(request(Arm::Thitl, Some(round(RoundStatus::Open, RoundKind::Screen)))),
            |e| matches!(e, DomainError::RoundNotClosed { .. }),
        );
        then_error(FineTune::default().decide(request(Arm::Thitl, None)), |e| {
            matches!(e, DomainError::Invalid { field: "source_round", .. })
        });
        then_error(
            FineTune::default().decide(request(Arm::Thitl, Some(round(RoundStatus::Closed, RoundKind::Check)))),
            |e| matches!(e, DomainError::Invalid { field: "source_round", .. }),
        );
        then_error(
            FineTune::default().decide(request(Arm::Traditional, Some(round(RoundStatus::Closed, RoundKind::Screen)))),
            |e| matches!(e, DomainError::Invalid { field: "source_round", .. }),
        );
    }

    #[test]
    fn a_fine_tune_runs_with_progress_to_an_adapter() {
        let (job, events) =
            FineTune::default().then(request(Arm::Thitl, Some(round(RoundStatus::Closed, RoundKind::Screen))));
        assert!(matches!(
            &events[..],
            [FineTuneEvent::FineTuneRequested { source_round: Some(_), arm: Arm::Thitl, .. }]
        ));
        let progress = |step, loss| FineTuneCommand::RecordProgress { worker: "gpu-0".into(), step, loss };
        then_error(job.decide(progress(5, 0.3)), |e| matches!(e, DomainError::WrongState { .. }));
        let (job, _) = job.then(start("gpu-0", 0));
        let (job, events) = job.then(progress(5, 0.3));
        assert_eq!(
            events,
            vec![FineTuneEvent::FineTuneProgressed {
                fine_tune_id: job.id.unwrap(),
                step: 5,
                total_steps: 10,
                loss: 0.3
            }]
        );
        then_error(job.decide(progress(5, 0.2)), |e| matches!(e, DomainError::Invalid { field: "step", .. }));
        then_error(job.decide(progress(11, 0.2)), |e| matches!(e, DomainError::Invalid { field: "step", .. }));
        then_error(job.decide(progress(6, f32::NAN)), |e| matches!(e, DomainError::Invalid { field: "loss", .. }));
        let adapter = BlobHash::parse(&"f".repeat(64)).unwrap();
        let complete = |worker: &str| FineTuneCommand::Complete {
            worker: worker.into(),
            adapter: adapter.clone(),
            final_loss: 0.1,
        };
        then_error(job.decide(complete("gpu-1")), |e| matches!(e, DomainError::NotLeaseHolder { .. }));
        let (job, _) = job.then(complete("gpu-0"));
        assert_eq!(job.adapter, Some(adapter.clone()));
        then_error(job.decide(complete("gpu-0")), |e| matches!(e, DomainError::WrongState { .. }));
    }

    #[test]
    fn a_dead_workers_fine_tune_is_taken_over_after_its_lease_and_trains_from_step_0() {
        let (job, _) = FineTune::default().then(request(Arm::Traditional, None));
        let (job, _) = job.then(start("gpu-0", 0));
        let (job, _) = job.then(FineTuneCommand::RecordProgress { worker: "gpu-0".into(), step: 5, loss: 0.3 });
        let renew = |worker: &str, seconds| FineTuneCommand::Renew {
            worker: worker.into(),
            now: at(seconds),
            lease_seconds: 60,
        };
        let (job, _) = job.then(renew("gpu-0", 30));
        then_error(job.decide(start("gpu-1", 89)), |e| matches!(e, DomainError::LeaseHeld { .. }));
        let (job, events) = job.then(start("gpu-1", 90));
        assert!(matches!(&events[..], [FineTuneEvent::FineTuneStarted { worker, .. }] if worker == "gpu-1"));
        assert_eq!(job.last_step, 0);
        then_error(job.decide(renew("gpu-0", 91)), |e| matches!(e, DomainError::NotLeaseHolder { .. }));
        then_error(job.decide(FineTuneCommand::Fail { worker: "gpu-0".into(), reason: "gave up".into() }), |e| {
            matches!(e, DomainError::NotLeaseHolder { .. })
        });
        let (job, _) = job.then(FineTuneCommand::RecordProgress { worker: "gpu-1".into(), step: 5, loss: 0.25 });
        assert_eq!(job.losses, [(5, 0.3), (5, 0.25)]);
    }

    #[test]
    fn the_traditional_arm_needs_no_round() {
        let (job, _) = FineTune::default().then(request(Arm::Traditional, None));
        assert_eq!(job.arm, Some(Arm::Traditional));
        let fail = |reason: &str| FineTuneCommand::Fail { worker: "w".into(), reason: reason.into() };
        let (job, events) = job.then(fail("worker lost"));
        assert!(matches!(&events[..], [FineTuneEvent::FineTuneFailed { .. }]));
        then_error(job.decide(start("w", 0)), |e| matches!(e, DomainError::WrongState { .. }));
        then_error(job.decide(fail("again")), |e| matches!(e, DomainError::WrongState { .. }));
        then_error(FineTune::default().decide(start("w", 0)), |e| matches!(e, DomainError::NotFound { .. }));
        assert_eq!(job.apply_all(&[]).status, JobStatus::Failed);
    }

    #[test]
    fn lora_settings_are_validated() {
        let with = |edit: &dyn Fn(&mut LoraConfig)| {
            let mut command = request(Arm::Traditional, None);
            if let FineTuneCommand::Request { config, .. } = &mut command {
                edit(config);
            }
            FineTune::default().decide(command)
        };
        then_error(with(&|c| c.rank = 0), |e| matches!(e, DomainError::Invalid { field: "rank", .. }));
        then_error(with(&|c| c.alpha = -1.0), |e| matches!(e, DomainError::Invalid { field: "alpha", .. }));
        then_error(with(&|c| c.targets.clear()), |e| matches!(e, DomainError::Invalid { field: "targets", .. }));
        then_error(with(&|c| c.learning_rate = f32::INFINITY), |e| {
            matches!(e, DomainError::Invalid { field: "learning_rate", .. })
        });
        let mut empty = request(Arm::Traditional, None);
        if let FineTuneCommand::Request { examples, .. } = &mut empty {
            examples.clear();
        }
        then_error(FineTune::default().decide(empty), |e| matches!(e, DomainError::Invalid { field: "examples", .. }));
    }
}
