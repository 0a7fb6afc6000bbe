//! Workers: the jobs the event log asks for, run in this process on a model family reached
//! through [`crate::ports`] (the reference world's DiT, or a test's placeholder family).
//!
//! ```text
//! GenerationRequested ──run_generation──> Start ─> (sample 32 items ─> PNG blobs ─> RecordImage…)* ─> Complete
//!                                                  any error ─────────────────────────────────────> Fail
//! FineTuneRequested ──run_fine_tune──> Start ─> (LoRA steps ─> RecordProgress every N)* ─> adapter blob ─> Complete
//!                                                  any error ───────────────────────────────────────────> Fail
//! ModelVersion (weights blob | parent + adapter blob) ──Models::load──> dyn Model (cached)
//! ```
//!
//! Key design decisions:
//! - **The log is the job's memory.** A worker records each image as soon as its blob is stored,
//!   so a crash loses at most the batch in flight: started again, the job continues from the
//!   images not yet recorded ([`Generation::remaining`]), and the images already made are kept.
//!   An error the worker sees (a missing blob, a prompt with unknown words) fails the job
//!   explicitly with its reason; nothing is left "running" by a worker that is still alive.
//! - **An image depends only on its item** (prompt, negative prompt, seed) and the sampler
//!   settings, never on the batch it was sampled in (a family's [`Model::sample`] promises it): a
//!   resumed job makes the same pictures an uninterrupted one would.
//! - **A negative prompt is the concept to steer away from** (the neutral prompt transformation
//!   sets it to the bare concept); how a family reads it is the family's business.
//! - Models are loaded from blobs once per process and shared; a fine-tuned version is its parent
//!   plus the adapter blob its fine-tune recorded.
//! - **Jobs are leased** ([`domain::lease`]): `Start` claims the job for [`Worker::lease`], a
//!   heartbeat thread renews the lease every third of it while the job runs, and only the holder's
//!   records are accepted. Several worker processes can share one store: a job another worker
//!   holds is refused at `Start` (the caller moves on to another job), a dead worker's job is
//!   taken over once its lease expires, and the old holder, should it come back, stops at its next
//!   record without failing the job.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use domain::fine_tune::{FineTuneCommand, LoraConfig, TrainingExample};
use domain::generation::{GenerationCommand, GenerationItem, JobStatus, SamplerSettings};
use domain::lease::Lease;
use domain::values::BlobHash;
use domain::{
    Actor, Aggregate, DomainError, FineTune, FineTuneId, Generation, GenerationId, ImageId, ModelVersion,
    ModelVersionId, Role,
};
use uuid::Uuid;

use crate::blobs::{BlobError, BlobStore};
use crate::commands::{CommandBus, CommandContext, CommandError, Outcome};
use crate::ports::{Flow, Model, ModelError, ModelFamily, SampleRequest, TrainingImage};

/// The lease a worker takes when `THITL_JOB_LEASE_SECONDS` does not say.
pub const DEFAULT_LEASE_SECONDS: u32 = 60;

/// Items sampled per batch (and recorded before the next batch starts).
const BATCH: usize = 32;

/// What can stop a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("model: {0}")]
    Model(#[from] ModelError),
    #[error("{0}")]
    Unusable(String),
    /// Another worker took the job over (this one's lease had expired): it stopped, and the
    /// job goes on there.
    #[error("{0}")]
    TakenOver(String),
}

impl WorkerError {
    /// The job is another worker's: its lease is running (at `Start`) or it took the job over.
    /// Not a failure of the job.
    pub fn is_other_workers(&self) -> bool {
        matches!(
            self,
            WorkerError::TakenOver(_)
                | WorkerError::Command(CommandError::Domain(
                    DomainError::LeaseHeld { .. } | DomainError::NotLeaseHolder { .. }
                ))
        )
    }
}

/// Who runs jobs, and for how long a claim holds without renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    /// Unique among the processes that share a store (see [`domain::lease`]).
    pub name: String,
    pub lease_seconds: u32,
}

impl Worker {
    /// `name` with the lease `THITL_JOB_LEASE_SECONDS` gives (default [`DEFAULT_LEASE_SECONDS`]).
    pub fn from_env(name: impl Into<String>) -> Result<Worker, String> {
        let lease_seconds = match std::env::var("THITL_JOB_LEASE_SECONDS") {
            Ok(text) => text
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|s| (1..=domain::lease::MAX_LEASE_SECONDS).contains(s))
                .ok_or_else(|| {
                    format!(
                        "THITL_JOB_LEASE_SECONDS={text:?} is not a whole number of seconds from 1 to {}",
                        domain::lease::MAX_LEASE_SECONDS
                    )
                })?,
            Err(_) => DEFAULT_LEASE_SECONDS,
        };
        Ok(Worker { name: name.into(), lease_seconds })
    }

    /// `{role}@{host}`, or `{role}@{host}-{pid}` with `per_process`: a name no other process on
    /// another machine uses.
    pub fn default_name(role: &str, per_process: bool) -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| {
                h.trim()
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
                    .collect::<String>()
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        if per_process { format!("{role}@{host}-{}", std::process::id()) } else { format!("{role}@{host}") }
    }

    /// The actor of the records this worker makes in this process's log.
    pub fn context(&self) -> CommandContext {
        CommandContext::new(Actor::new(&self.name, Role::System))
    }
}

/// A job's reference, for what every kind of job shares (its lease, its failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobRef {
    Generation(GenerationId),
    FineTune(FineTuneId),
}

impl std::fmt::Display for JobRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobRef::Generation(id) => write!(f, "generation {id}"),
            JobRef::FineTune(id) => write!(f, "fine-tune {id}"),
        }
    }
}

/// A generation job as its holder needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationJob {
    pub id: GenerationId,
    pub model_version: ModelVersionId,
    pub items: Vec<GenerationItem>,
    pub sampler: SamplerSettings,
    /// Indices of the items whose images are recorded already (a resumed job).
    pub recorded: BTreeSet<u32>,
}

impl GenerationJob {
    fn of(job: &Generation) -> Result<GenerationJob, WorkerError> {
        let id = job.id.ok_or_else(|| WorkerError::Unusable("a generation that was never requested".into()))?;
        Ok(GenerationJob {
            id,
            model_version: job
                .model_version
                .ok_or_else(|| WorkerError::Unusable(format!("generation {id} names no model version")))?,
            items: job.items.clone(),
            sampler: job.sampler.clone(),
            recorded: job.images.keys().copied().collect(),
        })
    }
}

/// A fine-tune job as its holder needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FineTuneJob {
    pub id: FineTuneId,
    pub base_model: ModelVersionId,
    pub config: LoraConfig,
    pub examples: Vec<TrainingExample>,
    pub prior_preservation: Vec<TrainingExample>,
    /// Record the loss every this many steps.
    pub progress_every: u32,
}

impl FineTuneJob {
    fn of(job: &FineTune) -> Result<FineTuneJob, WorkerError> {
        let id = job.id.ok_or_else(|| WorkerError::Unusable("a fine-tune that was never requested".into()))?;
        Ok(FineTuneJob {
            id,
            base_model: job
                .base_model
                .ok_or_else(|| WorkerError::Unusable(format!("fine-tune {id} names no base model")))?,
            config: job
                .config
                .clone()
                .ok_or_else(|| WorkerError::Unusable(format!("fine-tune {id} has no configuration")))?,
            examples: job.examples.clone(),
            prior_preservation: job.prior_preservation.clone(),
            progress_every: job.progress_every,
        })
    }
}

/// What a worker needs to know of a model version to load it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub id: ModelVersionId,
    /// A base version's weights blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<BlobHash>,
    /// A derived version's parent and adapter blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ModelVersionId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<BlobHash>,
    /// The family a base version's config names (none: the reference world).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
}

/// A job a worker was given, with the model versions it runs on (the job's model and its
/// ancestors) and until when the worker holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeasedJob {
    pub job: Job,
    pub lease_until: DateTime<Utc>,
    pub models: Vec<ModelRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Job {
    Generation(GenerationJob),
    FineTune(FineTuneJob),
}

impl Job {
    pub fn reference(&self) -> JobRef {
        match self {
            Job::Generation(job) => JobRef::Generation(job.id),
            Job::FineTune(job) => JobRef::FineTune(job.id),
        }
    }
}

/// Where a worker's jobs live: the event log and blob store of this process ([`LocalJobs`]), or
/// a thitl server reached over HTTPS (the API crate's remote worker). Every record is the job
/// holder's: a host refuses it once another worker took the job over.
pub trait JobHost: Send + Sync {
    /// Model version `id`, as far as loading it goes.
    fn model(&self, id: ModelVersionId) -> Result<ModelRecord, WorkerError>;
    /// The bytes of a blob; `None` when the host has none under `hash`.
    fn blob(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>, WorkerError>;
    /// Keeps `job` for the worker's lease from now; [`WorkerError::TakenOver`] once it is no
    /// longer the worker's (another took it over, or it ended).
    fn renew(&self, job: JobRef, worker: &Worker) -> Result<(), WorkerError>;
    /// Stores `png` and records it as the image of item `index`.
    fn record_image(&self, id: GenerationId, worker: &Worker, index: u32, png: &[u8]) -> Result<(), WorkerError>;
    fn complete_generation(&self, id: GenerationId, worker: &Worker) -> Result<(), WorkerError>;
    fn record_progress(&self, id: FineTuneId, worker: &Worker, step: u32, loss: f32) -> Result<(), WorkerError>;
    /// Stores the adapter and completes the job with it; its blob's hash.
    fn complete_fine_tune(
        &self,
        id: FineTuneId,
        worker: &Worker,
        adapter: &[u8],
        final_loss: f32,
    ) -> Result<BlobHash, WorkerError>;
    /// Ends `job` as failed with `reason`.
    fn fail(&self, job: JobRef, worker: &Worker, reason: &str) -> Result<(), WorkerError>;
}

/// The jobs of this process's event log and blob store.
#[derive(Clone, Copy)]
pub struct LocalJobs<'a> {
    pub bus: &'a CommandBus,
    pub blobs: &'a dyn BlobStore,
}

impl LocalJobs<'_> {
    fn generation(&self, id: GenerationId, worker: &Worker, command: GenerationCommand) -> Result<(), WorkerError> {
        self.bus.execute::<Generation>(&id.stream(), None, &worker.context(), command)?;
        Ok(())
    }

    fn fine_tune(&self, id: FineTuneId, worker: &Worker, command: FineTuneCommand) -> Result<(), WorkerError> {
        self.bus.execute::<FineTune>(&id.stream(), None, &worker.context(), command)?;
        Ok(())
    }
}

/// Model version `id` of `bus`'s log, as far as loading it goes.
fn model_record(bus: &CommandBus, id: ModelVersionId) -> Result<ModelRecord, WorkerError> {
    let (version, _) = bus.load::<ModelVersion>(&id.stream())?;
    if !version.exists() {
        return Err(WorkerError::Unusable(format!("model version {id} does not exist")));
    }
    Ok(ModelRecord {
        id,
        weights: version.weights,
        parent: version.parent,
        adapter: version.adapter,
        family: version.family,
    })
}

impl JobHost for LocalJobs<'_> {
    fn model(&self, id: ModelVersionId) -> Result<ModelRecord, WorkerError> {
        model_record(self.bus, id)
    }

    fn blob(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>, WorkerError> {
        Ok(self.blobs.get(hash)?)
    }

    fn renew(&self, job: JobRef, worker: &Worker) -> Result<(), WorkerError> {
        let (name, now, lease_seconds) = (worker.name.clone(), Utc::now(), worker.lease_seconds);
        let renewed = match job {
            JobRef::Generation(id) => {
                self.generation(id, worker, GenerationCommand::Renew { worker: name, now, lease_seconds })
            }
            JobRef::FineTune(id) => {
                self.fine_tune(id, worker, FineTuneCommand::Renew { worker: name, now, lease_seconds })
            }
        };
        match renewed {
            Err(WorkerError::Command(CommandError::Domain(
                error @ (DomainError::NotLeaseHolder { .. } | DomainError::WrongState { .. }),
            ))) => Err(WorkerError::TakenOver(error.to_string())),
            other => other,
        }
    }

    fn record_image(&self, id: GenerationId, worker: &Worker, index: u32, png: &[u8]) -> Result<(), WorkerError> {
        let blob = self.blobs.put(png)?.hash;
        let image_id = ImageId(Uuid::now_v7());
        self.generation(
            id,
            worker,
            GenerationCommand::RecordImage { worker: worker.name.clone(), index, image_id, blob },
        )
    }

    fn complete_generation(&self, id: GenerationId, worker: &Worker) -> Result<(), WorkerError> {
        self.generation(id, worker, GenerationCommand::Complete { worker: worker.name.clone() })
    }

    fn record_progress(&self, id: FineTuneId, worker: &Worker, step: u32, loss: f32) -> Result<(), WorkerError> {
        self.fine_tune(id, worker, FineTuneCommand::RecordProgress { worker: worker.name.clone(), step, loss })
    }

    fn complete_fine_tune(
        &self,
        id: FineTuneId,
        worker: &Worker,
        adapter: &[u8],
        final_loss: f32,
    ) -> Result<BlobHash, WorkerError> {
        let adapter = self.blobs.put(adapter)?.hash;
        let command = FineTuneCommand::Complete { worker: worker.name.clone(), adapter: adapter.clone(), final_loss };
        self.fine_tune(id, worker, command)?;
        Ok(adapter)
    }

    fn fail(&self, job: JobRef, worker: &Worker, reason: &str) -> Result<(), WorkerError> {
        let (name, reason) = (worker.name.clone(), reason.to_string());
        match job {
            JobRef::Generation(id) => self.generation(id, worker, GenerationCommand::Fail { worker: name, reason }),
            JobRef::FineTune(id) => self.fine_tune(id, worker, FineTuneCommand::Fail { worker: name, reason }),
        }
    }
}

/// Claims generation job `id` in this process's log for `worker` (again after a crash: the
/// images already recorded are kept). Refused while another worker's lease runs.
pub fn start_generation(bus: &CommandBus, id: GenerationId, worker: &Worker) -> Result<GenerationJob, WorkerError> {
    claim_generation(bus, id, worker, &worker.context()).map(|(job, _)| job)
}

/// Claims fine-tune job `id` in this process's log for `worker` (training starts again from
/// step 0). Refused while another worker's lease runs.
pub fn start_fine_tune(bus: &CommandBus, id: FineTuneId, worker: &Worker) -> Result<FineTuneJob, WorkerError> {
    claim_fine_tune(bus, id, worker, &worker.context()).map(|(job, _)| job)
}

fn claim_generation(
    bus: &CommandBus,
    id: GenerationId,
    worker: &Worker,
    context: &CommandContext,
) -> Result<(GenerationJob, Outcome), WorkerError> {
    let start =
        GenerationCommand::Start { worker: worker.name.clone(), now: Utc::now(), lease_seconds: worker.lease_seconds };
    let outcome = bus.execute::<Generation>(&id.stream(), None, context, start)?;
    let (job, _) = bus.load::<Generation>(&id.stream())?;
    Ok((GenerationJob::of(&job)?, outcome))
}

fn claim_fine_tune(
    bus: &CommandBus,
    id: FineTuneId,
    worker: &Worker,
    context: &CommandContext,
) -> Result<(FineTuneJob, Outcome), WorkerError> {
    let start =
        FineTuneCommand::Start { worker: worker.name.clone(), now: Utc::now(), lease_seconds: worker.lease_seconds };
    let outcome = bus.execute::<FineTune>(&id.stream(), None, context, start)?;
    let (job, _) = bus.load::<FineTune>(&id.stream())?;
    Ok((FineTuneJob::of(&job)?, outcome))
}

/// Claims for `worker` the first of `generations`, then of `fine_tunes`, that it may take
/// (requested, or running under an expired lease or its own), recording `context` as who did;
/// the job with the model versions it needs, and where its claim landed in the log. `None` when
/// there is none. What `POST /v1/jobs/lease` answers a remote worker.
pub fn lease_next_job(
    bus: &CommandBus,
    worker: &Worker,
    context: &CommandContext,
    generations: &[GenerationId],
    fine_tunes: &[FineTuneId],
) -> Result<Option<(LeasedJob, Outcome)>, WorkerError> {
    let claimed = |result: Result<(Job, Outcome), WorkerError>| match result {
        Ok(claim) => Ok(Some(claim)),
        // Taken by another worker since the list was made: the next one.
        Err(error) if error.is_other_workers() => Ok(None),
        Err(error) => Err(error),
    };
    let mut found = None;
    let stream_state = |job: &Generation| (job.status, job.lease.clone());
    for id in claimable::<Generation, _>(bus, worker, generations, |id| id.stream(), stream_state) {
        found = claimed(claim_generation(bus, id, worker, context).map(|(job, o)| (Job::Generation(job), o)))?;
        if found.is_some() {
            break;
        }
    }
    if found.is_none() {
        let stream_state = |job: &FineTune| (job.status, job.lease.clone());
        for id in claimable::<FineTune, _>(bus, worker, fine_tunes, |id| id.stream(), stream_state) {
            found = claimed(claim_fine_tune(bus, id, worker, context).map(|(job, o)| (Job::FineTune(job), o)))?;
            if found.is_some() {
                break;
            }
        }
    }
    let Some((job, outcome)) = found else { return Ok(None) };
    let lease = match job.reference() {
        JobRef::Generation(id) => bus.read::<Generation, _>(&id.stream(), |job, _| job.lease.clone())?,
        JobRef::FineTune(id) => bus.read::<FineTune, _>(&id.stream(), |job, _| job.lease.clone())?,
    };
    let lease_until = lease.map(|lease| lease.until).unwrap_or_else(Utc::now);
    let mut models = Vec::new();
    let mut next = Some(match &job {
        Job::Generation(job) => job.model_version,
        Job::FineTune(job) => job.base_model,
    });
    while let Some(id) = next {
        if models.iter().any(|m: &ModelRecord| m.id == id) {
            break;
        }
        let record = model_record(bus, id)?;
        next = record.parent;
        models.push(record);
    }
    Ok(Some((LeasedJob { job, lease_until, models }, outcome)))
}

/// Those of `ids` whose stream (read now, not the read model) says they still need running and
/// are not held by another worker's unexpired lease. (`Start` checks the lease again: this only
/// spares the log a refused claim.)
fn claimable<A: domain::aggregate::Aggregate + 'static, Id: Copy>(
    bus: &CommandBus,
    worker: &Worker,
    ids: &[Id],
    stream: fn(&Id) -> String,
    state: fn(&A) -> (JobStatus, Option<Lease>),
) -> Vec<Id> {
    let now = Utc::now();
    let me = worker.name.clone();
    ids.iter()
        .copied()
        .filter(|id| {
            let me = me.clone();
            bus.read::<A, _>(&stream(id), move |job, _| {
                let (status, lease) = state(job);
                matches!(status, JobStatus::Requested | JobStatus::Running)
                    && Lease::check_start(lease.as_ref(), A::ENTITY, &me, now).is_ok()
            })
            .unwrap_or(false)
        })
        .collect()
}

/// Renews a job's lease from its own thread while the job runs, every third of the lease; notes
/// when the job is no longer the worker's.
struct Heartbeat {
    stop: (Mutex<bool>, Condvar),
    lost: Mutex<Option<String>>,
}

impl Heartbeat {
    /// Runs `body` with a heartbeat renewing `job` beside it.
    fn beside<T>(host: &dyn JobHost, job: JobRef, worker: &Worker, body: impl FnOnce(&Heartbeat) -> T) -> T {
        let heartbeat = Heartbeat { stop: (Mutex::new(false), Condvar::new()), lost: Mutex::new(None) };
        let period = Duration::from_millis(u64::from(worker.lease_seconds) * 1000 / 3).max(Duration::from_millis(200));
        std::thread::scope(|scope| {
            let beat = &heartbeat;
            let thread = std::thread::Builder::new()
                .name("thitl-lease".into())
                .spawn_scoped(scope, move || beat.run(host, job, worker, period))
                .map_err(
                    |error| tracing::error!(%error, "cannot start the lease heartbeat: the job's lease will lapse"),
                )
                .ok();
            let result = body(beat);
            *beat.stop.0.lock().unwrap_or_else(PoisonError::into_inner) = true;
            beat.stop.1.notify_all();
            if let Some(thread) = thread {
                let _ = thread.join();
            }
            result
        })
    }

    fn run(&self, host: &dyn JobHost, job: JobRef, worker: &Worker, period: Duration) {
        loop {
            let stopped = self.stop.0.lock().unwrap_or_else(PoisonError::into_inner);
            let (stopped, _) = self
                .stop
                .1
                .wait_timeout_while(stopped, period, |stopped| !*stopped)
                .unwrap_or_else(PoisonError::into_inner);
            if *stopped {
                return;
            }
            drop(stopped);
            match host.renew(job, worker) {
                Ok(()) => {}
                Err(WorkerError::TakenOver(why)) => {
                    *self.lost.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
                    return;
                }
                // The store or the server may be busy for a moment: the lease has two more periods to go.
                Err(error) => tracing::warn!(%job, %error, "cannot renew the job's lease; trying again"),
            }
        }
    }

    /// Why the job is no longer this worker's, if it is not.
    fn lost(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Model versions loaded from their blobs, shared by the jobs of a process.
pub struct Models {
    family: Arc<dyn ModelFamily>,
    /// Families a base version names in its config (`"family"`), by name.
    named: HashMap<String, Arc<dyn ModelFamily>>,
    loaded: Mutex<HashMap<ModelVersionId, Arc<dyn Model>>>,
}

impl Models {
    /// Versions whose config names no family load with `family`.
    pub fn new(family: Arc<dyn ModelFamily>) -> Self {
        Models { family, named: HashMap::new(), loaded: Mutex::new(HashMap::new()) }
    }

    /// Also runs the versions whose config names `name` as their family (an imported Stable
    /// Diffusion pipeline: [`crate::sd::FAMILY`]).
    pub fn with_family(mut self, name: &str, family: Arc<dyn ModelFamily>) -> Self {
        self.named.insert(name.to_string(), family);
        self
    }

    fn family_named(&self, id: ModelVersionId, name: Option<&str>) -> Result<&Arc<dyn ModelFamily>, WorkerError> {
        match name {
            None => Ok(&self.family),
            Some(name) => self.named.get(name).ok_or_else(|| {
                let mut known: Vec<&str> = self.named.keys().map(String::as_str).collect();
                known.sort_unstable();
                WorkerError::Unusable(format!(
                    "model version {id} belongs to the model family {name:?}, which this worker does not run (it runs {})",
                    if known.is_empty() { "the reference world only".to_string() } else { format!("the reference world and {}", known.join(", ")) }
                ))
            }),
        }
    }

    /// The family the versions belong to.
    pub fn family(&self) -> Arc<dyn ModelFamily> {
        self.family.clone()
    }

    /// The model of version `id`, from `host`: its weights blob, or its parent with its adapter blob.
    pub fn load(&self, host: &dyn JobHost, id: ModelVersionId) -> Result<Arc<dyn Model>, WorkerError> {
        if let Some(model) = self.loaded.lock().unwrap_or_else(PoisonError::into_inner).get(&id) {
            return Ok(model.clone());
        }
        let version = host.model(id)?;
        let blob = |hash: &BlobHash, what: &str| -> Result<Vec<u8>, WorkerError> {
            host.blob(hash)?.ok_or_else(|| {
                WorkerError::Unusable(format!("the {what} blob {hash} of model version {id} is not in the blob store"))
            })
        };
        let model = match (&version.weights, version.parent, &version.adapter) {
            (Some(weights), _, _) => {
                self.family_named(id, version.family.as_deref())?.load(&blob(weights, "weights")?)?
            }
            (None, Some(parent), Some(adapter)) => {
                let parent_model = self.load(host, parent)?;
                if parent_model.is_tuned() {
                    return Err(WorkerError::Unusable(format!(
                        "model version {id} derives from {parent}, itself fine-tuned: stacked adapters are not supported"
                    )));
                }
                parent_model.with_adapter(&blob(adapter, "adapter")?)?
            }
            _ => {
                return Err(WorkerError::Unusable(format!(
                    "model version {id} has neither weights nor a parent with an adapter"
                )));
            }
        };
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner).insert(id, model.clone());
        Ok(model)
    }
}

/// What a generation run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationRun {
    /// Images the job holds now.
    pub images: u32,
    /// Images it held already when this run started (a resumed job).
    pub already_done: u32,
}

/// Runs (or resumes) generation job `generation_id` of this process's log as `worker`: claims
/// it and works it ([`work_generation`]). A job another worker holds is refused (an error for
/// which [`WorkerError::is_other_workers`] is true, the job untouched).
pub fn run_generation(
    bus: &CommandBus,
    models: &Models,
    blobs: &dyn BlobStore,
    generation_id: GenerationId,
    worker: &Worker,
    progress: &mut dyn FnMut(u32, u32),
) -> Result<GenerationRun, WorkerError> {
    let job = start_generation(bus, generation_id, worker)?;
    work_generation(&LocalJobs { bus, blobs }, models, &job, worker, progress)
}

/// Works generation job `job`, which `worker` holds on `host`: samples every item not yet
/// recorded, records each image as soon as it is made, and completes the job; on an error,
/// fails the job with the reason and returns the error. `progress(images, total)` after each batch.
pub fn work_generation(
    host: &dyn JobHost,
    models: &Models,
    job: &GenerationJob,
    worker: &Worker,
    progress: &mut dyn FnMut(u32, u32),
) -> Result<GenerationRun, WorkerError> {
    let total = job.items.len() as u32;
    let already_done = job.recorded.len() as u32;
    let reference = JobRef::Generation(job.id);
    let result = Heartbeat::beside(host, reference, worker, |heartbeat| -> Result<GenerationRun, WorkerError> {
        let model = models.load(host, job.model_version)?;
        let remaining: Vec<u32> = (0..total).filter(|index| !job.recorded.contains(index)).collect();
        let mut done = total - remaining.len() as u32;
        progress(done, total);
        for batch in remaining.chunks(BATCH) {
            if let Some(why) = heartbeat.lost() {
                return Err(WorkerError::TakenOver(why));
            }
            let requests: Vec<SampleRequest> = batch
                .iter()
                .map(|index| {
                    let item = &job.items[*index as usize];
                    SampleRequest {
                        prompt: item.prompt.clone(),
                        negative_prompt: item.negative_prompt.clone(),
                        seed: item.seed,
                    }
                })
                .collect();
            let images = model.sample(&requests, &job.sampler)?;
            if images.len() != requests.len() {
                return Err(WorkerError::Unusable(format!(
                    "the model returned {} images for {} prompts",
                    images.len(),
                    requests.len()
                )));
            }
            for (index, png) in batch.iter().zip(images) {
                host.record_image(job.id, worker, *index, &png)?;
                done += 1;
            }
            progress(done, total);
        }
        host.complete_generation(job.id, worker)?;
        Ok(GenerationRun { images: done, already_done })
    });
    fail_unless_taken_over(host, reference, worker, &result);
    result
}

/// The job must not stay "running" behind a worker that gave up on it. If even this record
/// fails, the job stays running and, once its lease expires, another worker (or this one,
/// restarted) resumes it.
fn fail_unless_taken_over<T>(host: &dyn JobHost, job: JobRef, worker: &Worker, result: &Result<T, WorkerError>) {
    if let Err(error) = result
        && !error.is_other_workers()
        && let Err(failed) = host.fail(job, worker, &error.to_string())
    {
        tracing::error!(%job, error = %failed, "could not record the job's failure");
    }
}

/// Works `job`, which `worker` holds on `host`, to its end, logging its progress (every 64
/// images, every 50 steps) and how it ended: what `thitl serve`'s driver and `thitl worker`, on a
/// store or over HTTPS, do with each job they claim. A failure is recorded on the job by
/// [`work_generation`] or [`work_fine_tune`]; a job another worker took over is left to it.
pub fn work_job(host: &dyn JobHost, models: &Models, job: &Job, worker: &Worker) {
    let reference = job.reference();
    let outcome = match job {
        Job::Generation(generation) => {
            let mut last_logged = 0;
            work_generation(host, models, generation, worker, &mut |done, total| {
                if done == total || done >= last_logged + 64 {
                    last_logged = done;
                    tracing::info!(job = %reference, "images {done}/{total}");
                }
            })
            .map(|run| format!("{} images ({} made before)", run.images, run.already_done))
        }
        Job::FineTune(fine_tune) => {
            let mut last_logged = 0;
            work_fine_tune(host, models, fine_tune, worker, &mut |step, steps, loss| {
                if step == steps || step >= last_logged + 50 {
                    last_logged = step;
                    tracing::info!(job = %reference, "step {step}/{steps}, loss {loss:.4}");
                }
            })
            .map(|run| format!("adapter {}, final loss {:.4}", run.adapter, run.final_loss))
        }
    };
    match outcome {
        Ok(what) => tracing::info!(job = %reference, "completed: {what}"),
        Err(error) if error.is_other_workers() => {
            tracing::info!(job = %reference, %error, "the job is another worker's now")
        }
        Err(error) => tracing::error!(job = %reference, %error, "the job failed"),
    }
}

/// What a fine-tune run did.
#[derive(Debug, Clone, PartialEq)]
pub struct FineTuneRun {
    /// The adapter's blob (PEFT-named safetensors).
    pub adapter: BlobHash,
    pub final_loss: f32,
    pub examples: usize,
    pub prior: usize,
}

/// Runs fine-tune job `fine_tune_id` of this process's log as `worker`: claims it and works it
/// ([`work_fine_tune`]). A job started again after a crash trains from step 0 (the domain
/// resets its progress on `Start`): the result depends only on the request.
pub fn run_fine_tune(
    bus: &CommandBus,
    models: &Models,
    blobs: &dyn BlobStore,
    fine_tune_id: FineTuneId,
    worker: &Worker,
    progress: &mut dyn FnMut(u32, u32, f32),
) -> Result<FineTuneRun, WorkerError> {
    let job = start_fine_tune(bus, fine_tune_id, worker)?;
    work_fine_tune(&LocalJobs { bus, blobs }, models, &job, worker, progress)
}

/// Works fine-tune job `job`, which `worker` holds on `host`: fetches its examples and
/// prior-preservation images, trains a LoRA adapter on the job's base model, records the loss
/// every `progress_every` steps, stores the adapter and completes the job; on an error, fails
/// the job with the reason. `progress(step, steps, loss)` after each report.
pub fn work_fine_tune(
    host: &dyn JobHost,
    models: &Models,
    job: &FineTuneJob,
    worker: &Worker,
    progress: &mut dyn FnMut(u32, u32, f32),
) -> Result<FineTuneRun, WorkerError> {
    let (id, reference) = (job.id, JobRef::FineTune(job.id));
    let result = Heartbeat::beside(host, reference, worker, |heartbeat| -> Result<FineTuneRun, WorkerError> {
        let base = models.load(host, job.base_model)?;
        if base.is_tuned() {
            return Err(WorkerError::Unusable(format!(
                "model version {} is itself fine-tuned: stacked adapters are not supported",
                job.base_model
            )));
        }
        let fetch = |set: &[TrainingExample]| -> Result<Vec<TrainingImage>, WorkerError> {
            set.iter()
                .map(|example| {
                    let bytes = host.blob(&example.blob)?.ok_or_else(|| {
                        WorkerError::Unusable(format!(
                            "the image blob {} of fine-tune {id} is not in the blob store",
                            example.blob
                        ))
                    })?;
                    Ok(TrainingImage { name: example.image_id.to_string(), prompt: example.prompt.clone(), png: bytes })
                })
                .collect()
        };
        let (examples, prior) = (fetch(&job.examples)?, fetch(&job.prior_preservation)?);
        // Why training stopped early: a record refused, or the job taken over.
        let mut stopped: Option<WorkerError> = None;
        let tuned = base.fine_tune(&examples, &prior, &job.config, job.progress_every, &mut |report| {
            if let Some(why) = heartbeat.lost() {
                stopped = Some(WorkerError::TakenOver(why));
                return Flow::Stop;
            }
            match host.record_progress(id, worker, report.step, report.loss) {
                Ok(()) => {
                    progress(report.step, report.steps, report.loss);
                    Flow::Continue
                }
                Err(error) => {
                    stopped = Some(error);
                    Flow::Stop
                }
            }
        });
        if let Some(error) = stopped {
            return Err(error);
        }
        let tuned = tuned?;
        let adapter = host.complete_fine_tune(id, worker, &tuned.adapter, tuned.final_loss)?;
        Ok(FineTuneRun { adapter, final_loss: tuned.final_loss, examples: examples.len(), prior: prior.len() })
    });
    fail_unless_taken_over(host, reference, worker, &result);
    result
}

#[cfg(test)]
mod tests {
    use domain::generation::JobStatus;
    use domain::generation::{GenerationItem, GenerationPurpose, SamplerSettings};
    use domain::model_version::ModelVersionCommand;
    use scenes::base::{BaseConfig, TrainedBase};

    use super::*;
    use crate::blobs::MemoryBlobStore;
    use store::sqlite::SqliteStore;

    struct Setup {
        _dir: tempfile::TempDir,
        bus: CommandBus,
        blobs: Arc<MemoryBlobStore>,
        models: Models,
        model: ModelVersionId,
    }

    /// A bus over a fresh store, and a registered model version whose weights are a tiny,
    /// untrained base model in the blob store.
    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("events.db")).unwrap();
        let bus = CommandBus::new(Arc::new(store));
        let blobs = Arc::new(MemoryBlobStore::default());
        let config = BaseConfig::tiny();
        let mut weights = gpu::model::HostWeights::init(&config.model.dit_config(), 5);
        // Off adaLN-Zero's zero gates, so that every layer (and an adapter on it) matters.
        for (_, values) in weights.tensors.values_mut() {
            for (i, value) in values.iter_mut().enumerate() {
                *value += 0.05 * (i as f32 * 0.7).sin();
            }
        }
        let bytes = TrainedBase {
            config,
            weights,
            final_loss: 0.0,
            loss_curve: Vec::new(),
            elapsed: Default::default(),
            backend: String::new(),
        }
        .safetensors()
        .unwrap();
        let hash = blobs.put(&bytes).unwrap().hash;
        let model = ModelVersionId(Uuid::now_v7());
        let operator = CommandContext::new(Actor::new("operator", Role::Operator));
        let register = ModelVersionCommand::RegisterBase {
            model_version_id: model,
            name: "tiny".into(),
            weights: hash,
            config: serde_json::json!({}),
        };
        bus.execute::<ModelVersion>(&model.stream(), None, &operator, register).unwrap();
        let models = Models::new(Arc::new(crate::reference::ReferenceWorld::new(gpu::Backend::Cpu)));
        Setup { _dir: dir, bus, blobs, models, model }
    }

    fn worker(name: &str) -> Worker {
        Worker { name: name.into(), lease_seconds: 60 }
    }

    fn request(setup: &Setup, prompts: &[&str]) -> GenerationId {
        let id = GenerationId(Uuid::now_v7());
        let items = prompts
            .iter()
            .enumerate()
            .map(|(i, prompt)| GenerationItem {
                prompt: prompt.to_string(),
                negative_prompt: (i % 2 == 1).then(|| "hippopotamus".into()),
                seed: 100 + i as u64,
                prompt_id: None,
                association_id: None,
            })
            .collect();
        let command = GenerationCommand::Request {
            generation_id: id,
            model_version: setup.model,
            purpose: GenerationPurpose::Baseline,
            items,
            sampler: SamplerSettings { steps: 3, guidance_scale: 2.0, eta: 0.0 },
            campaign_id: None,
        };
        let curator = CommandContext::new(Actor::new("curator", Role::Curator));
        setup.bus.execute::<Generation>(&id.stream(), None, &curator, command).unwrap();
        id
    }

    #[test]
    fn a_job_makes_every_image_as_a_png_blob_and_completes() {
        let setup = setup();
        let prompts: Vec<&str> =
            ["a woman at the beach", "a man with a dog", "a child in a park"].into_iter().cycle().take(35).collect();
        let id = request(&setup, &prompts);
        let mut reports = Vec::new();
        let run = run_generation(
            &setup.bus,
            &setup.models,
            setup.blobs.as_ref(),
            id,
            &worker("worker-1"),
            &mut |done, total| reports.push((done, total)),
        )
        .unwrap();
        assert_eq!(run, GenerationRun { images: 35, already_done: 0 });
        assert_eq!(reports, vec![(0, 35), (32, 35), (35, 35)]);
        let (job, _) = setup.bus.load::<Generation>(&id.stream()).unwrap();
        assert_eq!(job.status, JobStatus::Completed);
        assert_eq!(job.images.len(), 35);
        for (_, blob) in job.images.values() {
            let png = setup.blobs.get(blob).unwrap().expect("stored");
            assert!(crate::blobs::is_png(&png));
        }
        // The same item gives the same picture in another job.
        let again = request(&setup, &prompts[..2]);
        run_generation(&setup.bus, &setup.models, setup.blobs.as_ref(), again, &worker("worker-2"), &mut |_, _| {})
            .unwrap();
        let (second, _) = setup.bus.load::<Generation>(&again.stream()).unwrap();
        assert_eq!(second.images[&0].1, job.images[&0].1, "same prompt and seed, same blob");
        assert_eq!(second.images[&1].1, job.images[&1].1);
    }

    #[test]
    fn a_version_of_a_family_the_worker_does_not_run_is_refused_by_name() {
        let setup = setup();
        let other = ModelVersionId(Uuid::now_v7());
        let operator = CommandContext::new(Actor::new("operator", Role::Operator));
        let (reference, _) = setup.bus.load::<ModelVersion>(&setup.model.stream()).unwrap();
        let register = ModelVersionCommand::RegisterBase {
            model_version_id: other,
            name: "elsewhere".into(),
            weights: reference.weights.clone().unwrap(),
            config: serde_json::json!({"family": "some-other-family"}),
        };
        setup.bus.execute::<ModelVersion>(&other.stream(), None, &operator, register).unwrap();
        let error = setup
            .models
            .load(&LocalJobs { bus: &setup.bus, blobs: setup.blobs.as_ref() }, other)
            .err()
            .expect("refused");
        assert!(error.to_string().contains("\"some-other-family\""), "{error}");
        // The same weights under a family the worker runs load, through that family.
        let models = Models::new(Arc::new(crate::reference::ReferenceWorld::new(gpu::Backend::Cpu)))
            .with_family("some-other-family", Arc::new(crate::reference::ReferenceWorld::new(gpu::Backend::Cpu)));
        assert!(models.load(&LocalJobs { bus: &setup.bus, blobs: setup.blobs.as_ref() }, other).is_ok());
    }

    #[test]
    fn an_interrupted_job_resumes_where_it_stopped() {
        let setup = setup();
        let id = request(&setup, &["a woman at the beach", "a child in a park", "a man", "an elderly person"]);
        // A worker recorded two images, then died (two minutes ago: its lease has expired).
        let context = CommandContext::new(Actor::new("worker-1", Role::System));
        let long_ago = Utc::now() - chrono::TimeDelta::seconds(120);
        setup
            .bus
            .execute::<Generation>(
                &id.stream(),
                None,
                &context,
                GenerationCommand::Start { worker: "worker-1".into(), now: long_ago, lease_seconds: 60 },
            )
            .unwrap();
        let uninterrupted =
            request(&setup, &["a woman at the beach", "a child in a park", "a man", "an elderly person"]);
        run_generation(
            &setup.bus,
            &setup.models,
            setup.blobs.as_ref(),
            uninterrupted,
            &worker("worker-0"),
            &mut |_, _| {},
        )
        .unwrap();
        let (reference, _) = setup.bus.load::<Generation>(&uninterrupted.stream()).unwrap();
        for index in [0u32, 1] {
            let blob = reference.images[&index].1.clone();
            setup
                .bus
                .execute::<Generation>(
                    &id.stream(),
                    None,
                    &context,
                    GenerationCommand::RecordImage {
                        worker: "worker-1".into(),
                        index,
                        image_id: ImageId(Uuid::now_v7()),
                        blob,
                    },
                )
                .unwrap();
        }
        let run =
            run_generation(&setup.bus, &setup.models, setup.blobs.as_ref(), id, &worker("worker-2"), &mut |_, _| {})
                .unwrap();
        assert_eq!(run, GenerationRun { images: 4, already_done: 2 });
        let (job, _) = setup.bus.load::<Generation>(&id.stream()).unwrap();
        assert_eq!(job.status, JobStatus::Completed);
        let blobs = |job: &Generation| job.images.values().map(|(_, blob)| blob.clone()).collect::<Vec<_>>();
        assert_eq!(blobs(&job), blobs(&reference), "the resumed job made the pictures an uninterrupted one made");
    }

    #[test]
    fn a_job_another_worker_holds_is_left_alone() {
        let setup = setup();
        let id = request(&setup, &["a woman at the beach"]);
        let context = CommandContext::new(Actor::new("worker-1", Role::System));
        setup
            .bus
            .execute::<Generation>(
                &id.stream(),
                None,
                &context,
                GenerationCommand::Start { worker: "worker-1".into(), now: Utc::now(), lease_seconds: 60 },
            )
            .unwrap();
        let version = setup.bus.load::<Generation>(&id.stream()).unwrap().1;
        let error =
            run_generation(&setup.bus, &setup.models, setup.blobs.as_ref(), id, &worker("worker-2"), &mut |_, _| {})
                .unwrap_err();
        assert!(error.is_other_workers(), "{error}");
        assert!(error.to_string().contains("leased to worker worker-1"), "{error}");
        let (job, after) = setup.bus.load::<Generation>(&id.stream()).unwrap();
        assert_eq!(
            (job.status, after),
            (JobStatus::Running, version),
            "the refused worker recorded nothing, not even a failure"
        );
        // Its holder (restarted under the same name) resumes it at once.
        run_generation(&setup.bus, &setup.models, setup.blobs.as_ref(), id, &worker("worker-1"), &mut |_, _| {})
            .unwrap();
        assert_eq!(setup.bus.load::<Generation>(&id.stream()).unwrap().0.status, JobStatus::Completed);
    }

    #[test]
    fn the_heartbeat_keeps_the_lease_and_notices_a_takeover() {
        let setup = setup();
        let id = request(&setup, &["a woman at the beach"]);
        let short = Worker { name: "worker-1".into(), lease_seconds: 1 };
        let context = short.context();
        setup
            .bus
            .execute::<Generation>(
                &id.stream(),
                None,
                &context,
                GenerationCommand::Start { worker: short.name.clone(), now: Utc::now(), lease_seconds: 1 },
            )
            .unwrap();
        let host = LocalJobs { bus: &setup.bus, blobs: setup.blobs.as_ref() };
        Heartbeat::beside(&host, JobRef::Generation(id), &short, |heartbeat| {
            std::thread::sleep(Duration::from_millis(1500));
            // Past the first lease's end, it is still worker-1's: the heartbeat renewed it.
            let other = CommandContext::new(Actor::new("worker-2", Role::System));
            let take = |now| GenerationCommand::Start { worker: "worker-2".into(), now, lease_seconds: 60 };
            let refused = setup.bus.execute::<Generation>(&id.stream(), None, &other, take(Utc::now())).unwrap_err();
            assert!(matches!(refused, CommandError::Domain(DomainError::LeaseHeld { .. })), "{refused}");
            assert!(heartbeat.lost().is_none());
            // worker-2 takes it over (as it would once worker-1 stopped renewing); worker-1's next
            // renewal is refused and the heartbeat says so.
            setup
                .bus
                .execute::<Generation>(&id.stream(), None, &other, take(Utc::now() + chrono::TimeDelta::seconds(10)))
                .unwrap();
            std::thread::sleep(Duration::from_millis(800));
            let lost = heartbeat.lost().expect("the heartbeat noticed the takeover");
            assert!(lost.contains("taken over"), "{lost}");
        });
        let renewals = setup
            .bus
            .store()
            .read_stream(&store::StreamName::new(id.stream()).unwrap(), 1, 100)
            .unwrap()
            .iter()
            .filter(|e| e.event_type == "GenerationLeaseRenewed")
            .count();
        assert!(renewals >= 3, "{renewals} renewals in 1.5 s of a 1 s lease");
    }

    #[test]
    fn a_job_that_cannot_run_fails_with_its_reason() {
        let setup = setup();
        let id = request(&setup, &["a woman riding a giraffe"]);
        let error =
            run_generation(&setup.bus, &setup.models, setup.blobs.as_ref(), id, &worker("worker-1"), &mut |_, _| {})
                .unwrap_err();
        assert!(error.to_string().contains("giraffe"), "{error}");
        let (job, _) = setup.bus.load::<Generation>(&id.stream()).unwrap();
        assert_eq!(job.status, JobStatus::Failed);
        // A model version whose weights are missing from the blob store.
        let other = Setup { blobs: Arc::new(MemoryBlobStore::default()), ..setup };
        let models = Models::new(Arc::new(crate::reference::ReferenceWorld::new(gpu::Backend::Cpu)));
        let id = request(&other, &["a woman"]);
        let error = run_generation(&other.bus, &models, other.blobs.as_ref(), id, &worker("worker-1"), &mut |_, _| {})
            .unwrap_err();
        assert!(error.to_string().contains("not in the blob store"), "{error}");
        assert_eq!(other.bus.load::<Generation>(&id.stream()).unwrap().0.status, JobStatus::Failed);
    }

    #[test]
    fn a_fine_tune_trains_an_adapter_blob_that_a_derived_version_loads() {
        use domain::fine_tune::{Arm, FineTuneCommand, LoraConfig, TrainingExample};
        use domain::generation::JobStatus;
        use domain::model_version::{ModelVersionCommand, SourceFineTune};
        let setup = setup();
        let id = request(&setup, &["a woman at the beach", "a man in a park", "a child", "a woman"]);
        run_generation(&setup.bus, &setup.models, setup.blobs.as_ref(), id, &worker("worker-1"), &mut |_, _| {})
            .unwrap();
        let (job, _) = setup.bus.load::<Generation>(&id.stream()).unwrap();
        let examples: Vec<TrainingExample> = job
            .images
            .iter()
            .map(|(index, (image_id, blob))| TrainingExample {
                image_id: *image_id,
                blob: blob.clone(),
                prompt: job.items[*index as usize].prompt.clone(),
                prompt_id: None,
            })
            .collect();
        let ask = |examples: Vec<TrainingExample>| {
            let fine_tune_id = FineTuneId(Uuid::now_v7());
            let config = LoraConfig { steps: 6, batch_size: 4, rank: 2, alpha: 2.0, ..LoraConfig::default() };
            let command = FineTuneCommand::Request {
                fine_tune_id,
                base_model: setup.model,
                arm: Arm::Traditional,
                source_round: None,
                examples: examples[..3].to_vec(),
                prior_preservation: examples[3..].to_vec(),
                config,
                progress_every: 2,
                campaign_id: None,
            };
            setup.bus.execute::<FineTune>(&fine_tune_id.stream(), None, &CommandContext::system(), command).unwrap();
            fine_tune_id
        };
        let fine_tune_id = ask(examples.clone());
        let mut reports = Vec::new();
        let run = run_fine_tune(
            &setup.bus,
            &setup.models,
            setup.blobs.as_ref(),
            fine_tune_id,
            &worker("trainer"),
            &mut |step, steps, _| reports.push((step, steps)),
        )
        .unwrap();
        assert_eq!(reports, vec![(2, 6), (4, 6), (6, 6)]);
        assert_eq!((run.examples, run.prior), (3, 1));
        let (tuned, _) = setup.bus.load::<FineTune>(&fine_tune_id.stream()).unwrap();
        assert_eq!(tuned.status, JobStatus::Completed);
        assert_eq!(tuned.losses.iter().map(|(step, _)| *step).collect::<Vec<_>>(), vec![2, 4, 6]);
        assert_eq!(tuned.adapter.as_ref(), Some(&run.adapter));

        // The blob is the trained adapter (its B matrices moved off their zero start), and a
        // version derived from the fine-tune loads the base with it attached.
        let adapter_bytes = setup.blobs.get(&run.adapter).unwrap().unwrap();
        let adapter = scenes::finetune::adapter_from_safetensors(&adapter_bytes).unwrap();
        assert_eq!(adapter.config.rank, 2);
        let trained_b = adapter
            .weights
            .tensors
            .iter()
            .filter(|(name, _)| name.contains("lora_B"))
            .any(|(_, (_, values))| values.iter().any(|v| *v != 0.0));
        assert!(trained_b, "the adapter's B matrices are still zero");
        let derived = ModelVersionId(Uuid::now_v7());
        let source = SourceFineTune {
            fine_tune_id,
            status: tuned.status,
            base_model: tuned.base_model,
            arm: tuned.arm,
            adapter: tuned.adapter.clone(),
        };
        let derive = ModelVersionCommand::DeriveFromFineTune {
            model_version_id: derived,
            name: "tuned".into(),
            fine_tune: source,
        };
        setup.bus.execute::<ModelVersion>(&derived.stream(), None, &CommandContext::system(), derive).unwrap();
        let model = setup.models.load(&LocalJobs { bus: &setup.bus, blobs: setup.blobs.as_ref() }, derived).unwrap();
        assert!(model.is_tuned());
        let base = setup
            .models
            .load(&LocalJobs { bus: &setup.bus, blobs: setup.blobs.as_ref() }, tuned.base_model.unwrap())
            .unwrap();
        assert!(!base.is_tuned());
        let request =
            [crate::ports::SampleRequest { prompt: "a woman at the beach".into(), negative_prompt: None, seed: 3 }];
        let sampler = SamplerSettings { steps: 4, ..SamplerSettings::default() };
        assert_eq!(
            model.sample(&request, &sampler).unwrap(),
            base.with_adapter(&adapter_bytes).unwrap().sample(&request, &sampler).unwrap(),
            "the derived version is its base with the fine-tune's adapter"
        );

        // An example whose blob is missing fails the job with its reason.
        let mut broken = examples;
        broken[0].blob = crate::blobs::blob_hash(b"never stored");
        let failing = ask(broken);
        let error = run_fine_tune(
            &setup.bus,
            &setup.models,
            setup.blobs.as_ref(),
            failing,
            &worker("trainer"),
            &mut |_, _, _| {},
        )
        .unwrap_err();
        assert!(error.to_string().contains("not in the blob store"), "{error}");
        assert_eq!(setup.bus.load::<FineTune>(&failing.stream()).unwrap().0.status, JobStatus::Failed);
    }
}
