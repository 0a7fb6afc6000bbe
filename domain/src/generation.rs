//! A generation job: a model version asked for images from prompts with fixed seeds. Workers
//! record each image (its blob's hash, never its bytes) and complete or fail the job explicitly.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, EventPayload};
use crate::error::DomainError;
use crate::ids::{AssociationId, CampaignId, GenerationId, ImageId, ModelVersionId, PromptId};
use crate::lease::Lease;
use crate::values::{BlobHash, Sentence};

pub const MAX_IMAGES_PER_JOB: usize = 100_000;

/// Why the images are made; decides where they go next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GenerationPurpose {
    /// Probe prompts on the current model, to measure the association before.
    Baseline,
    /// Neutral training prompts with the concept as negative prompt: round 1's candidates.
    Candidates,
    /// Unrelated prompts on the base model, to keep what fine-tuning must not change.
    PriorPreservation,
    /// Held-out probe prompts on a model version, for round 2.
    Evaluation,
}

/// How a generation samples (every field has its default: a client names only what it changes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct SamplerSettings {
    /// Denoising steps, 1 to 1000.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub steps: u32,
    /// Classifier-free guidance, 0 to 50.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 50))]
    pub guidance_scale: f32,
    /// DDIM's eta, 0 (deterministic) to 1.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1))]
    pub eta: f32,
}

impl SamplerSettings {
    /// Steps 1 to 1000, guidance 0 to 50, eta 0 to 1.
    pub fn validate(&self) -> Result<(), DomainError> {
        if !(1..=1000).contains(&self.steps) {
            return Err(DomainError::invalid("steps", "must be between 1 and 1000"));
        }
        if !(self.guidance_scale.is_finite() && (0.0..=50.0).contains(&self.guidance_scale)) {
            return Err(DomainError::invalid("guidance_scale", "must be between 0 and 50"));
        }
        if !(self.eta.is_finite() && (0.0..=1.0).contains(&self.eta)) {
            return Err(DomainError::invalid("eta", "must be between 0 and 1"));
        }
        Ok(())
    }
}

impl Default for SamplerSettings {
    fn default() -> Self {
        SamplerSettings { steps: 25, guidance_scale: 4.0, eta: 0.0 }
    }
}

/// One image to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GenerationItem {
    #[cfg_attr(feature = "openapi", schema(value_type = Sentence))]
    pub prompt: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Sentence>))]
    pub negative_prompt: Option<String>,
    pub seed: u64,
    /// The curated prompt this item came from, if any (candidates).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = "uuid"))]
    pub prompt_id: Option<PromptId>,
    /// The association the item measures or mitigates, if any.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = "uuid"))]
    pub association_id: Option<AssociationId>,
}

#[derive(Debug, Clone)]
pub enum GenerationCommand {
    Request {
        generation_id: GenerationId,
        model_version: ModelVersionId,
        purpose: GenerationPurpose,
        items: Vec<GenerationItem>,
        sampler: SamplerSettings,
        campaign_id: Option<CampaignId>,
    },
    /// A worker claims the job for `lease_seconds` from `now` (again, after a crash: images
    /// already recorded are kept). Refused while another worker's lease runs ([`crate::lease`]).
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
    RecordImage {
        worker: String,
        index: u32,
        image_id: ImageId,
        blob: BlobHash,
    },
    Complete {
        worker: String,
    },
    /// Ends the job as failed; while it runs, only its holder may.
    Fail {
        worker: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GenerationEvent {
    GenerationRequested {
        generation_id: GenerationId,
        model_version: ModelVersionId,
        purpose: GenerationPurpose,
        items: Vec<GenerationItem>,
        sampler: SamplerSettings,
        campaign_id: Option<CampaignId>,
    },
    GenerationStarted {
        generation_id: GenerationId,
        worker: String,
        already_done: u32,
        /// The end of the worker's lease (absent in jobs started before leases existed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_until: Option<DateTime<Utc>>,
    },
    GenerationLeaseRenewed {
        generation_id: GenerationId,
        worker: String,
        lease_until: DateTime<Utc>,
    },
    ImageGenerated {
        generation_id: GenerationId,
        index: u32,
        image_id: ImageId,
        blob: BlobHash,
        model_version: ModelVersionId,
        purpose: GenerationPurpose,
        item: GenerationItem,
    },
    GenerationCompleted {
        generation_id: GenerationId,
        images: u32,
    },
    GenerationFailed {
        generation_id: GenerationId,
        reason: String,
        images: u32,
    },
}

impl EventPayload for GenerationEvent {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    #[default]
    NotRequested,
    Requested,
    Running,
    Completed,
    Failed,
}

impl JobStatus {
    pub fn is_finished(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed)
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Generation {
    pub id: Option<GenerationId>,
    pub status: JobStatus,
    pub model_version: Option<ModelVersionId>,
    pub purpose: Option<GenerationPurpose>,
    pub items: Vec<GenerationItem>,
    pub sampler: SamplerSettings,
    pub campaign_id: Option<CampaignId>,
    pub images: BTreeMap<u32, (ImageId, BlobHash)>,
    /// The worker running (or last running) the job, and until when.
    pub lease: Option<Lease>,
}

impl Generation {
    fn unfinished_id(&self, action: &'static str) -> Result<GenerationId, DomainError> {
        let id = self.id.ok_or(DomainError::NotFound { entity: "generation", id: "(not requested)".into() })?;
        if self.status.is_finished() {
            return Err(DomainError::wrong_state("generation", self.status, action));
        }
        Ok(id)
    }

    /// The job runs and `worker` holds it.
    fn check_running(&self, worker: &str, action: &'static str) -> Result<(), DomainError> {
        if self.status != JobStatus::Running {
            return Err(DomainError::wrong_state("generation", self.status, action));
        }
        Lease::check_holder(self.lease.as_ref(), "generation", worker)
    }

    /// Indices still to generate, in order.
    pub fn remaining(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.items.len() as u32).filter(|i| !self.images.contains_key(i))
    }
}

impl Aggregate for Generation {
    type Command = GenerationCommand;
    type Event = GenerationEvent;
    const ENTITY: &'static str = "generation";

    fn exists(&self) -> bool {
        self.id.is_some()
    }

    fn decide(&self, command: GenerationCommand) -> Result<Vec<GenerationEvent>, DomainError> {
        match command {
            GenerationCommand::Request { generation_id, model_version, purpose, items, sampler, campaign_id } => {
                if self.exists() {
                    return Err(DomainError::AlreadyExists { entity: "generation", id: generation_id.to_string() });
                }
                if items.is_empty() || items.len() > MAX_IMAGES_PER_JOB {
                    return Err(DomainError::invalid(
                        "items",
                        format!("must hold 1 to {MAX_IMAGES_PER_JOB} images, not {}", items.len()),
                    ));
                }
                for item in &items {
                    Sentence::parse("prompt", &item.prompt)?;
                    if let Some(negative) = &item.negative_prompt {
                        Sentence::parse("negative_prompt", negative)?;
                    }
                }
                sampler.validate()?;
                Ok(vec![GenerationEvent::GenerationRequested {
                    generation_id,
                    model_version,
                    purpose,
                    items,
                    sampler,
                    campaign_id,
                }])
            }
            GenerationCommand::Start { worker, now, lease_seconds } => {
                let generation_id = self.unfinished_id("starting")?;
                let worker = crate::values::Name::parse("worker", &worker)?;
                let lease_until = Lease::end(now, lease_seconds)?;
                Lease::check_start(self.lease.as_ref(), "generation", worker.as_str(), now)?;
                Ok(vec![GenerationEvent::GenerationStarted {
                    generation_id,
                    worker: worker.into(),
                    already_done: self.images.len() as u32,
                    lease_until: Some(lease_until),
                }])
            }
            GenerationCommand::Renew { worker, now, lease_seconds } => {
                let generation_id = self.unfinished_id("renewing its lease")?;
                let lease_until = Lease::end(now, lease_seconds)?;
                self.check_running(&worker, "renewing its lease")?;
                Ok(vec![GenerationEvent::GenerationLeaseRenewed { generation_id, worker, lease_until }])
            }
            GenerationCommand::RecordImage { worker, index, image_id, blob } => {
                let generation_id = self.unfinished_id("recording images")?;
                self.check_running(&worker, "recording images")?;
                let Some(item) = self.items.get(index as usize) else {
                    return Err(DomainError::invalid(
                        "index",
                        format!("{index} is out of range: the job has {} images", self.items.len()),
                    ));
                };
                match self.images.get(&index) {
                    Some((existing, hash)) if *existing == image_id && *hash == blob => Ok(vec![]),
                    Some(_) => Err(DomainError::AlreadyExists { entity: "image at index", id: index.to_string() }),
                    None => Ok(vec![GenerationEvent::ImageGenerated {
                        generation_id,
                        index,
                        image_id,
                        blob,
                        model_version: self.model_version.unwrap_or(ModelVersionId(uuid::Uuid::nil())),
                        purpose: self.purpose.unwrap_or(GenerationPurpose::Baseline),
                        item: item.clone(),
                    }]),
                }
            }
            GenerationCommand::Complete { worker } => {
                let generation_id = self.unfinished_id("completing")?;
                self.check_running(&worker, "completing")?;
                let missing = self.items.len() - self.images.len();
                if missing > 0 {
                    return Err(DomainError::WrongState {
                        entity: "generation",
                        state: format!("missing {missing} of {} images", self.items.len()),
                        action: "completing",
                    });
                }
                Ok(vec![GenerationEvent::GenerationCompleted { generation_id, images: self.images.len() as u32 }])
            }
            GenerationCommand::Fail { worker, reason } => {
                let generation_id = self.unfinished_id("failing")?;
                if self.status == JobStatus::Running {
                    Lease::check_holder(self.lease.as_ref(), "generation", &worker)?;
                }
                let reason = Sentence::parse("reason", &reason)?;
                Ok(vec![GenerationEvent::GenerationFailed {
                    generation_id,
                    reason: reason.into(),
                    images: self.images.len() as u32,
                }])
            }
        }
    }

    fn evolve(&mut self, event: &GenerationEvent) {
        match event {
            GenerationEvent::GenerationRequested {
                generation_id,
                model_version,
                purpose,
                items,
                sampler,
                campaign_id,
            } => {
                self.id = Some(*generation_id);
                self.status = JobStatus::Requested;
                self.model_version = Some(*model_version);
                self.purpose = Some(*purpose);
                self.items = items.clone();
                self.sampler = sampler.clone();
                self.campaign_id = *campaign_id;
            }
            GenerationEvent::GenerationStarted { worker, lease_until, .. } => {
                self.status = JobStatus::Running;
                self.lease = Some(Lease::recorded(worker, *lease_until));
            }
            GenerationEvent::GenerationLeaseRenewed { worker, lease_until, .. } => {
                self.lease = Some(Lease::recorded(worker, Some(*lease_until)));
            }
            GenerationEvent::ImageGenerated { index, image_id, blob, .. } => {
                self.images.insert(*index, (*image_id, blob.clone()));
            }
            GenerationEvent::GenerationCompleted { .. } => self.status = JobStatus::Completed,
            GenerationEvent::GenerationFailed { .. } => self.status = JobStatus::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ApplyAll, then_error};
    use uuid::Uuid;

    fn item(seed: u64) -> GenerationItem {
        GenerationItem {
            prompt: "a photo of a woman at the beach".into(),
            negative_prompt: None,
            seed,
            prompt_id: None,
            association_id: None,
        }
    }

    fn request(items: Vec<GenerationItem>) -> GenerationCommand {
        GenerationCommand::Request {
            generation_id: GenerationId(Uuid::from_u128(1)),
            model_version: ModelVersionId(Uuid::from_u128(2)),
            purpose: GenerationPurpose::Baseline,
            items,
            sampler: SamplerSettings::default(),
            campaign_id: None,
        }
    }

    fn blob(c: char) -> BlobHash {
        BlobHash::parse(&c.to_string().repeat(64)).unwrap()
    }

    fn image(index: u32, c: char) -> GenerationCommand {
        image_by("worker-1", index, c)
    }

    fn image_by(worker: &str, index: u32, c: char) -> GenerationCommand {
        GenerationCommand::RecordImage {
            worker: worker.into(),
            index,
            image_id: ImageId(Uuid::from_u128(100 + index as u128)),
            blob: blob(c),
        }
    }

    /// `seconds` after a fixed instant.
    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn start(worker: &str, seconds: i64) -> GenerationCommand {
        GenerationCommand::Start { worker: worker.into(), now: at(seconds), lease_seconds: 60 }
    }

    fn complete() -> GenerationCommand {
        GenerationCommand::Complete { worker: "worker-1".into() }
    }

    fn fail(worker: &str, reason: &str) -> GenerationCommand {
        GenerationCommand::Fail { worker: worker.into(), reason: reason.into() }
    }

    #[test]
    fn a_job_runs_from_request_to_completion() {
        let (job, _) = Generation::default().then(request(vec![item(1), item(2)]));
        let (job, started) = job.then(start("worker-1", 0));
        assert!(matches!(&started[..], [GenerationEvent::GenerationStarted { already_done: 0, .. }]));
        let (job, events) = job.then(image(0, 'a'));
        match &events[..] {
            [GenerationEvent::ImageGenerated { item, purpose, .. }] => {
                assert_eq!(item.seed, 1);
                assert_eq!(*purpose, GenerationPurpose::Baseline);
            }
            other => panic!("unexpected {other:?}"),
        }
        // Recording the same image again (a retried request) changes nothing.
        assert_eq!(job.decide(image(0, 'a')), Ok(vec![]));
        then_error(job.decide(image(0, 'b')), |e| matches!(e, DomainError::AlreadyExists { .. }));
        then_error(job.decide(complete()), |e| matches!(e, DomainError::WrongState { .. }));
        let (job, _) = job.then(image(1, 'b'));
        let (job, done) = job.then(complete());
        assert_eq!(done, vec![GenerationEvent::GenerationCompleted { generation_id: job.id.unwrap(), images: 2 }]);
        then_error(job.decide(image(1, 'b')), |e| matches!(e, DomainError::WrongState { .. }));
    }

    #[test]
    fn an_interrupted_job_is_resumed_where_it_stopped() {
        let (job, _) = Generation::default().then(request(vec![item(1), item(2), item(3)]));
        let (job, _) = job.then(start("w1", 0));
        let (job, _) = job.then(image_by("w1", 1, 'a'));
        // w1 went quiet; w2 takes the job over once w1's lease has expired, not before.
        then_error(
            job.decide(start("w2", 59)),
            |e| matches!(e, DomainError::LeaseHeld { holder, .. } if holder == "w1"),
        );
        let (job, events) = job.then(start("w2", 60));
        assert!(matches!(&events[..], [GenerationEvent::GenerationStarted { already_done: 1, .. }]));
        assert_eq!(job.remaining().collect::<Vec<_>>(), [0, 2]);
        // w1 comes back: what it records, completes or fails is refused, and the job goes on.
        then_error(job.decide(image_by("w1", 0, 'b')), |e| matches!(e, DomainError::NotLeaseHolder { .. }));
        then_error(job.decide(fail("w1", "lost my GPU")), |e| matches!(e, DomainError::NotLeaseHolder { .. }));
        let (job, _) = job.then(image_by("w2", 0, 'b'));
        assert_eq!(job.remaining().collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn a_holder_keeps_its_job_by_renewing_the_lease() {
        let (job, _) = Generation::default().then(request(vec![item(1)]));
        let (job, _) = job.then(start("w1", 0));
        let renew = |worker: &str, seconds| GenerationCommand::Renew {
            worker: worker.into(),
            now: at(seconds),
            lease_seconds: 60,
        };
        let (job, events) = job.then(renew("w1", 50));
        assert!(
            matches!(&events[..], [GenerationEvent::GenerationLeaseRenewed { lease_until, .. }] if *lease_until == at(110))
        );
        then_error(job.decide(start("w2", 100)), |e| matches!(e, DomainError::LeaseHeld { .. }));
        then_error(job.decide(renew("w2", 100)), |e| matches!(e, DomainError::NotLeaseHolder { .. }));
        // A lapsed lease that nobody took over is still its holder's.
        let (job, _) = job.then(renew("w1", 500));
        let (job, _) = job.then(image_by("w1", 0, 'a'));
        let (job, _) = job.then(GenerationCommand::Complete { worker: "w1".into() });
        then_error(job.decide(renew("w1", 501)), |e| matches!(e, DomainError::WrongState { .. }));
        // The lease survives a round trip through the log (old events without one read as free).
        let old = r#"{"GenerationStarted":{"generation_id":"00000000-0000-0000-0000-000000000001","worker":"w0","already_done":0}}"#;
        let event: GenerationEvent = serde_json::from_str(old).unwrap();
        assert!(matches!(&event, GenerationEvent::GenerationStarted { lease_until: None, .. }));
        let (requested, _) = Generation::default().then(request(vec![item(1)]));
        let mut taken = requested.clone();
        taken.evolve(&event);
        assert_eq!(taken.decide(start("w9", 0)).map(|events| events.len()), Ok(1));
    }

    #[test]
    fn bad_requests_and_indices_are_rejected() {
        then_error(Generation::default().decide(request(vec![])), |e| {
            matches!(e, DomainError::Invalid { field: "items", .. })
        });
        let mut bad_steps = request(vec![item(1)]);
        if let GenerationCommand::Request { sampler, .. } = &mut bad_steps {
            sampler.steps = 0;
        }
        then_error(Generation::default().decide(bad_steps), |e| {
            matches!(e, DomainError::Invalid { field: "steps", .. })
        });
        let (job, _) = Generation::default().then(request(vec![item(1)]));
        // Images are recorded only by a worker that started the job.
        then_error(job.decide(image(0, 'a')), |e| matches!(e, DomainError::WrongState { .. }));
        then_error(job.decide(GenerationCommand::Start { worker: "w".into(), now: at(0), lease_seconds: 0 }), |e| {
            matches!(e, DomainError::Invalid { field: "lease_seconds", .. })
        });
        let (job, _) = job.then(start("worker-1", 0));
        then_error(job.decide(image(5, 'a')), |e| matches!(e, DomainError::Invalid { field: "index", .. }));
        then_error(job.clone().decide(request(vec![item(1)])), |e| matches!(e, DomainError::AlreadyExists { .. }));
    }

    #[test]
    fn a_failed_job_is_final() {
        let (job, _) = Generation::default().then(request(vec![item(1)]));
        let (job, events) = job.then(fail("anyone", "out of GPU memory"));
        assert!(matches!(&events[..], [GenerationEvent::GenerationFailed { images: 0, .. }]));
        then_error(job.decide(start("w", 0)), |e| matches!(e, DomainError::WrongState { .. }));
        then_error(job.decide(fail("w", "again")), |e| matches!(e, DomainError::WrongState { .. }));
        then_error(Generation::default().decide(fail("w", "x")), |e| matches!(e, DomainError::NotFound { .. }));
        let job = job.apply_all(&[]);
        assert_eq!(job.status, JobStatus::Failed);
    }
}
