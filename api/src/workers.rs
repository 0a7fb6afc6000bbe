//! Workers: the jobs the event log asks for, run on the reference world's DiT in this process.
//!
//! ```text
//! GenerationRequested ──run_generation──> Start ─> (sample 32 items ─> PNG blobs ─> RecordImage…)* ─> Complete
//!                                                  any error ─────────────────────────────────────> Fail
//! ModelVersion (weights blob | parent + adapter blob) ──Models::load──> BaseModel (cached)
//! ```
//!
//! Key design decisions:
//! - **The log is the job's memory.** A worker records each image as soon as its blob is stored,
//!   so a crash loses at most the batch in flight: started again, the job continues from the
//!   images not yet recorded ([`Generation::remaining`]), and the images already made are kept.
//!   An error the worker sees (a missing blob, a prompt with unknown words) fails the job
//!   explicitly with its reason; nothing is left "running" by a worker that is still alive.
//! - **An image depends only on its item** (prompt, negative prompt, seed) and the sampler
//!   settings, never on the batch it was sampled in ([`BaseModel::sample_items`]): a resumed
//!   job makes the same pictures an uninterrupted one would.
//! - Models are loaded from blobs once per process and shared; a fine-tuned version is its parent
//!   plus the adapter blob its fine-tune recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use domain::generation::GenerationCommand;
use domain::{Actor, Aggregate, Generation, GenerationId, ImageId, ModelVersion, ModelVersionId, Role};
use gpu::Backend;
use scenes::base::{BaseModel, Flow, SampleItem, SampleSettings};
use scenes::finetune::adapter_from_safetensors;
use uuid::Uuid;

use crate::blobs::{BlobError, BlobStore};
use crate::commands::{CommandBus, CommandContext, CommandError};

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
    Model(#[from] scenes::BaseError),
    #[error("{0}")]
    Unusable(String),
}

/// Model versions loaded from the blob store, shared by the jobs of a process.
pub struct Models {
    blobs: Arc<dyn BlobStore>,
    backend: Backend,
    loaded: Mutex<HashMap<ModelVersionId, Arc<BaseModel>>>,
}

impl Models {
    pub fn new(blobs: Arc<dyn BlobStore>, backend: Backend) -> Self {
        Models { blobs, backend, loaded: Mutex::new(HashMap::new()) }
    }

    /// The model of version `id`: its weights blob, or its parent with its adapter blob.
    pub fn load(&self, bus: &CommandBus, id: ModelVersionId) -> Result<Arc<BaseModel>, WorkerError> {
        if let Some(model) = self.loaded.lock().unwrap_or_else(PoisonError::into_inner).get(&id) {
            return Ok(model.clone());
        }
        let (version, _) = bus.load::<ModelVersion>(&id.stream())?;
        if !version.exists() {
            return Err(WorkerError::Unusable(format!("model version {id} does not exist")));
        }
        let blob = |hash: &domain::values::BlobHash, what: &str| -> Result<Vec<u8>, WorkerError> {
            self.blobs.get(hash)?.ok_or_else(|| WorkerError::Unusable(format!("the {what} blob {hash} of model version {id} is not in the blob store")))
        };
        let model = match (&version.weights, version.parent, &version.adapter) {
            (Some(weights), _, _) => BaseModel::load_with_metadata(&blob(weights, "weights")?, &self.backend)?,
            (None, Some(parent), Some(adapter)) => {
                let parent_model = self.load(bus, parent)?;
                if parent_model.adapter().is_some() {
                    return Err(WorkerError::Unusable(format!(
                        "model version {id} derives from {parent}, itself fine-tuned: stacked adapters are not supported"
                    )));
                }
                parent_model.with_adapter(&adapter_from_safetensors(&blob(adapter, "adapter")?)?)?
            }
            _ => return Err(WorkerError::Unusable(format!("model version {id} has neither weights nor a parent with an adapter"))),
        };
        let model = Arc::new(model);
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

/// Runs (or resumes) generation job `generation_id` as `worker`: samples every item not yet
/// recorded, stores each image as a PNG blob, records it, and completes the job; on an error,
/// fails the job with the reason and returns the error. `progress(images, total)` after each
/// batch.
pub fn run_generation(
    bus: &CommandBus,
    models: &Models,
    blobs: &dyn BlobStore,
    generation_id: GenerationId,
    worker: &str,
    progress: &mut dyn FnMut(u32, u32),
) -> Result<GenerationRun, WorkerError> {
    let stream = generation_id.stream();
    let context = CommandContext::new(Actor::new(worker, Role::System));
    bus.execute::<Generation>(&stream, None, &context, GenerationCommand::Start { worker: worker.to_string() })?;
    let (job, _) = bus.load::<Generation>(&stream)?;
    let total = job.items.len() as u32;
    let already_done = job.images.len() as u32;
    let result = (|| -> Result<GenerationRun, WorkerError> {
        let model_id = job.model_version.ok_or_else(|| WorkerError::Unusable(format!("generation {generation_id} names no model version")))?;
        let model = models.load(bus, model_id)?;
        let settings = SampleSettings {
            steps: job.sampler.steps as usize,
            guidance_scale: job.sampler.guidance_scale,
            eta: job.sampler.eta,
            negative_prompt: None,
        };
        let remaining: Vec<u32> = job.remaining().collect();
        let mut done = total - remaining.len() as u32;
        progress(done, total);
        for batch in remaining.chunks(BATCH) {
            let items: Vec<SampleItem> = batch
                .iter()
                .map(|index| {
                    let item = &job.items[*index as usize];
                    SampleItem { prompt: item.prompt.clone(), negative_prompt: item.negative_prompt.clone(), seed: item.seed }
                })
                .collect();
            let images = model.sample_items(&items, &settings, &mut |_, _| Flow::Continue)?;
            for (index, image) in batch.iter().zip(images) {
                let blob = blobs.put(&image.to_png(1))?.hash;
                let command = GenerationCommand::RecordImage { index: *index, image_id: ImageId(Uuid::now_v7()), blob };
                bus.execute::<Generation>(&stream, None, &context, command)?;
                done += 1;
            }
            progress(done, total);
        }
        bus.execute::<Generation>(&stream, None, &context, GenerationCommand::Complete)?;
        Ok(GenerationRun { images: done, already_done })
    })();
    if let Err(error) = &result {
        // The job must not stay "running" behind a worker that gave up on it. If even this
        // append fails, the job stays running and a restart resumes it.
        let fail = GenerationCommand::Fail { reason: error.to_string() };
        if let Err(append) = bus.execute::<Generation>(&stream, None, &context, fail) {
            tracing::error!(%generation_id, error = %append, "could not record the generation's failure");
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use domain::generation::{GenerationItem, GenerationPurpose, SamplerSettings};
    use domain::model_version::ModelVersionCommand;
    use domain::generation::JobStatus;
    use scenes::base::{BaseConfig, TrainedBase};

    use super::*;
    use crate::blobs::MemoryBlobStore;
    use crate::store::sqlite::SqliteStore;

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
        let weights = gpu::model::HostWeights::init(&config.model.dit_config(), 5);
        let bytes = TrainedBase { config, weights, final_loss: 0.0, loss_curve: Vec::new(), elapsed: Default::default(), backend: String::new() }
            .safetensors()
            .unwrap();
        let hash = blobs.put(&bytes).unwrap().hash;
        let model = ModelVersionId(Uuid::now_v7());
        let operator = CommandContext::new(Actor::new("operator", Role::Operator));
        let register = ModelVersionCommand::RegisterBase { model_version_id: model, name: "tiny".into(), weights: hash, config: serde_json::json!({}) };
        bus.execute::<ModelVersion>(&model.stream(), None, &operator, register).unwrap();
        let models = Models::new(blobs.clone(), Backend::Cpu);
        Setup { _dir: dir, bus, blobs, models, model }
    }

    fn request(setup: &Setup, prompts: &[&str]) -> GenerationId {
        let id = GenerationId(Uuid::now_v7());
        let items = prompts
            .iter()
            .enumerate()
            .map(|(i, prompt)| GenerationItem { prompt: prompt.to_string(), negative_prompt: (i % 2 == 1).then(|| "hippopotamus".into()), seed: 100 + i as u64, prompt_id: None, association_id: None })
            .collect();
        let command = GenerationCommand::Request { generation_id: id, model_version: setup.model, purpose: GenerationPurpose::Baseline, items, sampler: SamplerSettings { steps: 3, guidance_scale: 2.0, eta: 0.0 }, campaign_id: None };
        let curator = CommandContext::new(Actor::new("curator", Role::Curator));
        setup.bus.execute::<Generation>(&id.stream(), None, &curator, command).unwrap();
        id
    }

    #[test]
    fn a_job_makes_every_image_as_a_png_blob_and_completes() {
        let setup = setup();
        let prompts: Vec<&str> = ["a woman at the beach", "a man with a dog", "a child in a park"].into_iter().cycle().take(35).collect();
        let id = request(&setup, &prompts);
        let mut reports = Vec::new();
        let run = run_generation(&setup.bus, &setup.models, setup.blobs.as_ref(), id, "worker-1", &mut |done, total| reports.push((done, total))).unwrap();
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
        run_generation(&setup.bus, &setup.models, setup.blobs.as_ref(), again, "worker-2", &mut |_, _| {}).unwrap();
        let (second, _) = setup.bus.load::<Generation>(&again.stream()).unwrap();
        assert_eq!(second.images[&0].1, job.images[&0].1, "same prompt and seed, same blob");
        assert_eq!(second.images[&1].1, job.images[&1].1);
    }

    #[test]
    fn an_interrupted_job_resumes_where_it_stopped() {
        let setup = setup();
        let id = request(&setup, &["a woman at the beach", "a child in a park", "a man", "an elderly person"]);
        // A worker recorded two images, then died.
        let context = CommandContext::new(Actor::new("worker-1", Role::System));
        setup.bus.execute::<Generation>(&id.stream(), None, &context, GenerationCommand::Start { worker: "worker-1".into() }).unwrap();
        let uninterrupted = request(&setup, &["a woman at the beach", "a child in a park", "a man", "an elderly person"]);
        run_generation(&setup.bus, &setup.models, setup.blobs.as_ref(), uninterrupted, "worker-0", &mut |_, _| {}).unwrap();
        let (reference, _) = setup.bus.load::<Generation>(&uninterrupted.stream()).unwrap();
        for index in [0u32, 1] {
            let blob = reference.images[&index].1.clone();
            setup.bus.execute::<Generation>(&id.stream(), None, &context, GenerationCommand::RecordImage { index, image_id: ImageId(Uuid::now_v7()), blob }).unwrap();
        }
        let run = run_generation(&setup.bus, &setup.models, setup.blobs.as_ref(), id, "worker-2", &mut |_, _| {}).unwrap();
        assert_eq!(run, GenerationRun { images: 4, already_done: 2 });
        let (job, _) = setup.bus.load::<Generation>(&id.stream()).unwrap();
        assert_eq!(job.status, JobStatus::Completed);
        let blobs = |job: &Generation| job.images.values().map(|(_, blob)| blob.clone()).collect::<Vec<_>>();
        assert_eq!(blobs(&job), blobs(&reference), "the resumed job made the pictures an uninterrupted one made");
    }

    #[test]
    fn a_job_that_cannot_run_fails_with_its_reason() {
        let setup = setup();
        let id = request(&setup, &["a woman riding a giraffe"]);
        let error = run_generation(&setup.bus, &setup.models, setup.blobs.as_ref(), id, "worker-1", &mut |_, _| {}).unwrap_err();
        assert!(error.to_string().contains("giraffe"), "{error}");
        let (job, _) = setup.bus.load::<Generation>(&id.stream()).unwrap();
        assert_eq!(job.status, JobStatus::Failed);
        // A model version whose weights are missing from the blob store.
        let other = Setup { blobs: Arc::new(MemoryBlobStore::default()), ..setup };
        let models = Models::new(other.blobs.clone(), Backend::Cpu);
        let id = request(&other, &["a woman"]);
        let error = run_generation(&other.bus, &models, other.blobs.as_ref(), id, "worker-1", &mut |_, _| {}).unwrap_err();
        assert!(error.to_string().contains("not in the blob store"), "{error}");
        assert_eq!(other.bus.load::<Generation>(&id.stream()).unwrap().0.status, JobStatus::Failed);
    }
}
