//! Workers: the jobs the event log asks for, run on the reference world's DiT in this process.
//!
//! ```text
//! GenerationRequested ──run_generation──> Start ─> (sample 32 items ─> PNG blobs ─> RecordImage…)* ─> Complete
//!                                                  any error ─────────────────────────────────────> Fail
//! FineTuneRequested ──run_fine_tune──> Start ─> (LoRA steps ─> RecordProgress every N)* ─> adapter blob ─> Complete
//!                                                  any error ───────────────────────────────────────────> Fail
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
//! - **A negative prompt is the concept to steer away from** (the neutral prompt transformation
//!   sets it to the bare concept). The reference-world DiT reads it in its prompt's context
//!   ([`scenes::negative_in_context`]): "hippopotamus" beside "a woman at the beach" becomes a
//!   caption of a woman at the beach with a hippopotamus, which the model understands; the bare
//!   word would steer its samples towards noise.
//! - Models are loaded from blobs once per process and shared; a fine-tuned version is its parent
//!   plus the adapter blob its fine-tune recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use domain::fine_tune::{FineTuneCommand, TrainingExample};
use domain::generation::GenerationCommand;
use domain::values::BlobHash;
use domain::{Actor, Aggregate, FineTune, FineTuneId, Generation, GenerationId, ImageId, ModelVersion, ModelVersionId, Role};
use gpu::Backend;
use scenes::base::{BaseModel, Flow, SampleItem, SampleSettings};
use scenes::finetune::{FineTuneSettings, adapter_from_safetensors, adapter_to_safetensors, fine_tune};
use scenes::{Example, Image};
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
                    let negative_prompt = item.negative_prompt.as_deref().map(|negative| scenes::negative_in_context(&item.prompt, negative));
                    SampleItem { prompt: item.prompt.clone(), negative_prompt, seed: item.seed }
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

/// What a fine-tune run did.
#[derive(Debug, Clone, PartialEq)]
pub struct FineTuneRun {
    /// The adapter's blob (PEFT-named safetensors).
    pub adapter: BlobHash,
    pub final_loss: f32,
    pub examples: usize,
    pub prior: usize,
}

/// The `scenes` settings of a requested fine-tune.
pub fn fine_tune_settings(config: &domain::fine_tune::LoraConfig, progress_every: u32) -> FineTuneSettings {
    use domain::fine_tune::LoraTarget as Target;
    use gpu::model::LoraTarget;
    let targets = config
        .targets
        .iter()
        .map(|target| match target {
            Target::Qkv => LoraTarget::Qkv,
            Target::AttnOut => LoraTarget::Proj,
            Target::MlpIn => LoraTarget::Fc1,
            Target::MlpOut => LoraTarget::Fc2,
        })
        .collect();
    FineTuneSettings {
        lora: gpu::model::LoraConfig { rank: config.rank as usize, alpha: config.alpha, targets },
        steps: config.steps as usize,
        batch_size: config.batch_size as usize,
        learning_rate: config.learning_rate,
        weight_decay: config.weight_decay,
        seed: config.seed,
        prior_weight: config.prior_weight,
        min_snr_gamma: FineTuneSettings::default().min_snr_gamma,
        progress_every: progress_every.max(1) as usize,
    }
}

/// Runs fine-tune job `fine_tune_id` as `worker`: decodes its examples and prior-preservation
/// images from the blob store, trains a LoRA adapter on the job's base model, records the loss
/// every `progress_every` steps, stores the adapter as a blob and completes the job; on an error,
/// fails the job with the reason. A job started again after a crash trains from step 0 (the
/// domain resets its progress on `Start`): the result depends only on the request.
/// `progress(step, steps, loss)` after each report.
pub fn run_fine_tune(
    bus: &CommandBus,
    models: &Models,
    blobs: &dyn BlobStore,
    fine_tune_id: FineTuneId,
    worker: &str,
    progress: &mut dyn FnMut(u32, u32, f32),
) -> Result<FineTuneRun, WorkerError> {
    let stream = fine_tune_id.stream();
    let context = CommandContext::new(Actor::new(worker, Role::System));
    bus.execute::<FineTune>(&stream, None, &context, FineTuneCommand::Start { worker: worker.to_string() })?;
    let (job, _) = bus.load::<FineTune>(&stream)?;
    let result = (|| -> Result<FineTuneRun, WorkerError> {
        let base_id = job.base_model.ok_or_else(|| WorkerError::Unusable(format!("fine-tune {fine_tune_id} names no base model")))?;
        let config = job.config.clone().ok_or_else(|| WorkerError::Unusable(format!("fine-tune {fine_tune_id} has no configuration")))?;
        let base = models.load(bus, base_id)?;
        if base.adapter().is_some() {
            return Err(WorkerError::Unusable(format!("model version {base_id} is itself fine-tuned: stacked adapters are not supported")));
        }
        let decode = |set: &[TrainingExample]| -> Result<Vec<Example>, WorkerError> {
            set.iter()
                .map(|example| {
                    let bytes = blobs.get(&example.blob)?.ok_or_else(|| WorkerError::Unusable(format!("the image blob {} of fine-tune {fine_tune_id} is not in the blob store", example.blob)))?;
                    let image = Image::from_png(&bytes).map_err(|e| WorkerError::Unusable(format!("image {}: {e}", example.image_id)))?;
                    Ok(Example { prompt: example.prompt.clone(), image })
                })
                .collect()
        };
        let (examples, prior) = (decode(&job.examples)?, decode(&job.prior_preservation)?);
        let settings = fine_tune_settings(&config, job.progress_every);
        let mut recording: Option<CommandError> = None;
        let tuned = fine_tune(&base, &examples, &prior, &settings, |report| {
            let command = FineTuneCommand::RecordProgress { step: report.step as u32, loss: report.loss };
            match bus.execute::<FineTune>(&stream, None, &context, command) {
                Ok(_) => {
                    progress(report.step as u32, report.steps as u32, report.loss);
                    Flow::Continue
                }
                Err(error) => {
                    recording = Some(error);
                    Flow::Stop
                }
            }
        });
        if let Some(error) = recording {
            return Err(error.into());
        }
        let tuned = tuned?;
        let adapter = blobs.put(&adapter_to_safetensors(&tuned.adapter)?)?.hash;
        bus.execute::<FineTune>(&stream, None, &context, FineTuneCommand::Complete { adapter: adapter.clone(), final_loss: tuned.final_loss })?;
        Ok(FineTuneRun { adapter, final_loss: tuned.final_loss, examples: examples.len(), prior: prior.len() })
    })();
    if let Err(error) = &result {
        let fail = FineTuneCommand::Fail { reason: error.to_string() };
        if let Err(append) = bus.execute::<FineTune>(&stream, None, &context, fail) {
            tracing::error!(%fine_tune_id, error = %append, "could not record the fine-tune's failure");
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
        let mut weights = gpu::model::HostWeights::init(&config.model.dit_config(), 5);
        // Off adaLN-Zero's zero gates, so that every layer (and an adapter on it) matters.
        for (_, values) in weights.tensors.values_mut() {
            for (i, value) in values.iter_mut().enumerate() {
                *value += 0.05 * (i as f32 * 0.7).sin();
            }
        }
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

    #[test]
    fn a_fine_tune_trains_an_adapter_blob_that_a_derived_version_loads() {
        use domain::fine_tune::{Arm, FineTuneCommand, LoraConfig, TrainingExample};
        use domain::generation::JobStatus;
        use domain::model_version::{ModelVersionCommand, SourceFineTune};
        let setup = setup();
        let id = request(&setup, &["a woman at the beach", "a man in a park", "a child", "a woman"]);
        run_generation(&setup.bus, &setup.models, setup.blobs.as_ref(), id, "worker-1", &mut |_, _| {}).unwrap();
        let (job, _) = setup.bus.load::<Generation>(&id.stream()).unwrap();
        let examples: Vec<TrainingExample> = job.images.iter().map(|(index, (image_id, blob))| TrainingExample { image_id: *image_id, blob: blob.clone(), prompt: job.items[*index as usize].prompt.clone(), prompt_id: None }).collect();
        let ask = |examples: Vec<TrainingExample>| {
            let fine_tune_id = FineTuneId(Uuid::now_v7());
            let config = LoraConfig { steps: 6, batch_size: 4, rank: 2, alpha: 2.0, ..LoraConfig::default() };
            let command = FineTuneCommand::Request { fine_tune_id, base_model: setup.model, arm: Arm::Traditional, source_round: None, examples: examples[..3].to_vec(), prior_preservation: examples[3..].to_vec(), config, progress_every: 2, campaign_id: None };
            setup.bus.execute::<FineTune>(&fine_tune_id.stream(), None, &CommandContext::system(), command).unwrap();
            fine_tune_id
        };
        let fine_tune_id = ask(examples.clone());
        let mut reports = Vec::new();
        let run = run_fine_tune(&setup.bus, &setup.models, setup.blobs.as_ref(), fine_tune_id, "trainer", &mut |step, steps, _| reports.push((step, steps))).unwrap();
        assert_eq!(reports, vec![(2, 6), (4, 6), (6, 6)]);
        assert_eq!((run.examples, run.prior), (3, 1));
        let (tuned, _) = setup.bus.load::<FineTune>(&fine_tune_id.stream()).unwrap();
        assert_eq!(tuned.status, JobStatus::Completed);
        assert_eq!(tuned.losses.iter().map(|(step, _)| *step).collect::<Vec<_>>(), vec![2, 4, 6]);
        assert_eq!(tuned.adapter.as_ref(), Some(&run.adapter));

        // The blob is the trained adapter (its B matrices moved off their zero start), and a
        // version derived from the fine-tune loads the base with it attached.
        let adapter = adapter_from_safetensors(&setup.blobs.get(&run.adapter).unwrap().unwrap()).unwrap();
        assert_eq!(adapter.config.rank, 2);
        let trained_b = adapter.weights.tensors.iter().filter(|(name, _)| name.contains("lora_B")).any(|(_, (_, values))| values.iter().any(|v| *v != 0.0));
        assert!(trained_b, "the adapter's B matrices are still zero");
        let derived = ModelVersionId(Uuid::now_v7());
        let source = SourceFineTune { fine_tune_id, status: tuned.status, base_model: tuned.base_model, arm: tuned.arm, adapter: tuned.adapter.clone() };
        let derive = ModelVersionCommand::DeriveFromFineTune { model_version_id: derived, name: "tuned".into(), fine_tune: source };
        setup.bus.execute::<ModelVersion>(&derived.stream(), None, &CommandContext::system(), derive).unwrap();
        let model = setup.models.load(&setup.bus, derived).unwrap();
        assert_eq!(model.adapter().map(|a| &a.weights), Some(&adapter.weights));

        // An example whose blob is missing fails the job with its reason.
        let mut broken = examples;
        broken[0].blob = crate::blobs::blob_hash(b"never stored");
        let failing = ask(broken);
        let error = run_fine_tune(&setup.bus, &setup.models, setup.blobs.as_ref(), failing, "trainer", &mut |_, _, _| {}).unwrap_err();
        assert!(error.to_string().contains("not in the blob store"), "{error}");
        assert_eq!(setup.bus.load::<FineTune>(&failing.stream()).unwrap().0.status, JobStatus::Failed);
    }

}
