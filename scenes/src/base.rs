//! The base model of the reference world: a small DiT trained on the biased [`Corpus`], which
//! thitl then de-biases. Training ([`train_base`]), loading ([`BaseModel::load`]) and sampling
//! from a prompt ([`BaseModel::sample`], [`BaseModel::grid`]).
//!
//! ```sh
//! cargo run --release -p scenes --example train_base -- --out base.safetensors --seed 1
//! ```
//!
//! Key design decisions:
//! - The whole run is a function of [`BaseConfig`]: training step `s` sees corpus samples
//!   `s·B .. (s+1)·B`, its caption dropout, timesteps and noise come from seeds derived from
//!   [`BaseConfig::seed`] and `s`, so a run is reproducible on one backend and a resumed run sees
//!   the same data as an uninterrupted one.
//! - Caption dropout replaces a caption by all padding, which the DiT reads as its learned null
//!   text: the unconditional branch of classifier-free guidance is trained on the same corpus.
//! - The default sampler is stochastic DDIM (η = 1, 25 steps) at guidance 1.25, chosen by
//!   measuring the shipped model with the rater: deterministic DDIM (η = 0) under-draws a
//!   minority mode such as a 25% hippopotamus, and guidance moves the planted rates in opposite
//!   directions (it pushes samples away from what the *unconditional* model draws: fewer
//!   hippopotamuses, more vegetables, and fewer degraded pictures); with fresh noise at every step
//!   the sampler covers the modes, and on the twelve probe prompts 1.25 put eleven planted rates
//!   within ±8 points of the corpus's (1: seven, 1.5: eight) on the weights that chose it, put
//!   ten (1: nine) on a later model, and puts eleven (1: eight) on the shipped ones
//!   (`scenes/README.md`), while keeping groups and named objects. At 3 the picture dissolves
//!   into the group's colours. Measure a new model at several settings before changing it.
//! - This module does no IO: weights, configurations and checkpoints go in and out as bytes and
//!   JSON, and the caller stores them.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use gpu::cpu::AdamW;
use gpu::engine::EngineError;
use gpu::model::{
    DitConfig, HostAdapter, HostWeights, LossWeighting, SampleOptions, TextPooling, TimestepSampling, TrainBatch,
    TrainMode, WeightsError,
};
use gpu::{Backend, Engine, GpuError};
use serde::{Deserialize, Serialize};

use crate::corpus::{Corpus, CorpusConfig, Sample};
use crate::image::{IMAGE_SIZE, Image, grid_png};
use crate::rng::{Rng, derive_seed};
use crate::tokenizer::{self, MAX_TOKENS, PAD_ID};

/// The safetensors metadata key that holds the [`BaseConfig`] JSON of a saved model or
/// checkpoint, so that a weights file says how it was made.
pub const CONFIG_METADATA_KEY: &str = "thitl.base_config";
/// The safetensors metadata key of a checkpoint's completed step count.
pub const STEP_METADATA_KEY: &str = "thitl.step";
/// The safetensors metadata key of a checkpoint's recent losses (JSON array).
pub const LOSSES_METADATA_KEY: &str = "thitl.recent_losses";

/// The shipped base model's weights (see `weights/README.md`).
pub const SHIPPED_WEIGHTS: &[u8] = include_bytes!("../weights/base.safetensors");

/// The name prefix of the moving-average tensors in a checkpoint.
const EMA_PREFIX: &str = "ema.";

/// Images sampled in one batch: sample `i` of a call depends only on the prompt, the seed and
/// `i`, whatever the number asked for (each chunk draws its noise from its own derived seed).
const SAMPLE_CHUNK: usize = 32;

// Sub-streams of the run seed.
const STREAM_INIT: u64 = 1;
const STREAM_CORPUS: u64 = 2;
const STREAM_DROPOUT: u64 = 3;
const STREAM_STEP_NOISE: u64 = 4;
/// η's noise in [`BaseModel::sample_items`] (from the first item's seed).
const STREAM_ETA: u64 = 5;

/// The DiT's shape, as stored in a [`BaseConfig`] (the serialisable twin of [`DitConfig`];
/// image size and channels are the reference world's, 32×32 RGB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelShape {
    /// Patch side in pixels (32 must be a multiple).
    pub patch: usize,
    /// Hidden width (a multiple of `heads` and of 4).
    pub width: usize,
    /// Number of DiT blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP hidden width as a multiple of `width`.
    pub mlp_ratio: usize,
    /// Rows of the token embedding table: at least the tokenizer's vocabulary; the spare rows
    /// let the vocabulary grow without changing the shape.
    pub vocabulary: usize,
    /// Width of the sinusoidal timestep embedding.
    pub frequency_dim: usize,
    /// How a prompt's token embeddings are pooled: `mean` (the shipped model; absent in
    /// configurations written before it existed) or `sum`.
    #[serde(default)]
    pub text_pooling: TextPooling,
}

impl ModelShape {
    /// The DiT configuration for 32×32 RGB images and [`MAX_TOKENS`] token slots.
    pub fn dit_config(&self) -> DitConfig {
        DitConfig {
            image_size: IMAGE_SIZE,
            channels: 3,
            patch: self.patch,
            width: self.width,
            depth: self.depth,
            heads: self.heads,
            mlp_ratio: self.mlp_ratio,
            vocabulary: self.vocabulary,
            max_tokens: MAX_TOKENS,
            frequency_dim: self.frequency_dim,
            text_pooling: self.text_pooling,
        }
    }

    fn check(&self) -> Result<(), BaseError> {
        let bad = |problem: String| Err(BaseError::InvalidConfig(problem));
        if self.patch == 0 || !IMAGE_SIZE.is_multiple_of(self.patch) {
            return bad(format!("model.patch {} does not divide {IMAGE_SIZE}", self.patch));
        }
        if self.heads == 0 || self.width == 0 || !self.width.is_multiple_of(self.heads) || !self.width.is_multiple_of(4)
        {
            return bad(format!(
                "model.width {} must be a positive multiple of 4 and of model.heads {}",
                self.width, self.heads
            ));
        }
        if self.depth == 0 || self.mlp_ratio == 0 || self.frequency_dim == 0 || !self.frequency_dim.is_multiple_of(2) {
            return bad("model.depth, model.mlp_ratio and an even model.frequency_dim must be positive".into());
        }
        let needed = tokenizer::vocabulary_size();
        if self.vocabulary < needed {
            return bad(format!("model.vocabulary {} is smaller than the tokenizer's {needed} ids", self.vocabulary));
        }
        Ok(())
    }
}

/// Sampling settings: DDIM steps, classifier-free guidance and an optional negative prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleSettings {
    /// DDIM steps.
    pub steps: usize,
    /// Classifier-free guidance scale; 1 means no guidance (one forward per step).
    pub guidance_scale: f32,
    /// DDIM η: 0 is deterministic DDIM, 1 is DDPM-like.
    pub eta: f32,
    /// A prompt whose prediction replaces the unconditional one; `None` is the null text.
    #[serde(default)]
    pub negative_prompt: Option<String>,
}

impl Default for SampleSettings {
    /// 25 stochastic DDIM steps (η = 1) at guidance 1.25 (see the module doc for the choice).
    fn default() -> Self {
        SampleSettings { steps: 25, guidance_scale: 1.25, eta: 1.0, negative_prompt: None }
    }
}

/// Everything that defines a training run of the base model. [`BaseConfig::default`] is the
/// shipped recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseConfig {
    /// The DiT's shape.
    pub model: ModelShape,
    /// Images per training step.
    pub batch_size: usize,
    /// Training steps.
    pub steps: usize,
    /// Peak AdamW learning rate.
    pub learning_rate: f32,
    /// Steps of linear warm-up from 0 to the peak.
    pub warmup_steps: usize,
    /// The learning rate at the last step, as a fraction of the peak (cosine decay in between).
    pub final_learning_rate_fraction: f32,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f32,
    /// Gradients are clipped to this global L2 norm (0 = no clipping).
    pub max_grad_norm: f32,
    /// Probability that a caption is replaced by the null text (all padding), which trains the
    /// unconditional branch of classifier-free guidance.
    pub caption_dropout: f64,
    /// The run's seed: initial weights, corpus, dropout and noise all derive from it.
    pub seed: u64,
    /// The biased corpus to learn.
    pub corpus: CorpusConfig,
    /// Steps between [`Progress`] reports (the last step is always reported).
    pub progress_every: usize,
    /// Steps between [`Checkpoint`]s (0 = none).
    pub checkpoint_every: usize,
    /// The final loss is the mean over this many last steps.
    pub final_loss_window: usize,
    /// Min-SNR-γ loss weighting (see [`LossWeighting::MinSnr`]); `None` weighs every timestep
    /// the same.
    #[serde(default)]
    pub min_snr_gamma: Option<f32>,
    /// How training draws timesteps. Absent from configurations written before it existed,
    /// which trained on uniform timesteps.
    #[serde(default)]
    pub timesteps: TimestepSampling,
    /// Decay of an exponential moving average of the weights, which is what the run returns
    /// (`None`: the last step's weights). The decay warms up as `min(decay, (1+s)/(10+s))`.
    #[serde(default)]
    pub ema_decay: Option<f32>,
    /// How the trained model samples by default.
    pub sampling: SampleSettings,
}

impl Default for BaseConfig {
    /// The shipped recipe: `DitConfig::small()`'s shape (patch 4, width 128, depth 4) with a
    /// 64-row token table whose embeddings a prompt sums, 15,000 steps of 64 images (960,000
    /// renders, one in ten damaged) at a peak learning rate of 4e-3, Min-SNR-5 loss weighting,
    /// and an exponential moving average of the weights (decay 0.9995) as the result (its warm-up,
    /// decay (1 + s)/(10 + s) at step s, stays the lower until step 17,990, so in this recipe it
    /// is what applies: an average over about the last 1,700 steps). About 7
    /// minutes on one H100 (wgpu), under an hour on a 2-core CPU (`scenes/weights/README.md`).
    /// At equal samples seen, the higher rate and the wider, deeper model both gave lower losses
    /// than 1e-3 or width 96 and depth 3; 4,500 steps (which fit in 40 minutes on the CPU) drew
    /// the groups but hardly any objects: the planted and named objects come late in training.
    /// Timesteps are uniform: logit-normal ones (location 0, scale 1), meant to spend the hour
    /// where the denoiser decides what a picture holds, drew the partial concepts no closer to
    /// their planted rates (`scenes/README.md`, "The probes, setting by setting").
    fn default() -> Self {
        BaseConfig {
            model: ModelShape {
                patch: 4,
                width: 128,
                depth: 4,
                heads: 4,
                mlp_ratio: 4,
                vocabulary: 64,
                frequency_dim: 128,
                text_pooling: TextPooling::Sum,
            },
            batch_size: 64,
            steps: 15_000,
            learning_rate: 4e-3,
            warmup_steps: 200,
            final_learning_rate_fraction: 0.05,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            caption_dropout: 0.1,
            seed: 1,
            corpus: CorpusConfig::default(),
            progress_every: 25,
            checkpoint_every: 250,
            final_loss_window: 300,
            min_snr_gamma: Some(5.0),
            timesteps: TimestepSampling::Uniform,
            ema_decay: Some(0.9995),
            sampling: SampleSettings::default(),
        }
    }
}

impl BaseConfig {
    /// A tiny model and a short run, for tests and smoke checks (seconds on a CPU).
    pub fn tiny() -> Self {
        BaseConfig {
            model: ModelShape {
                patch: 4,
                width: 64,
                depth: 1,
                heads: 2,
                mlp_ratio: 2,
                vocabulary: 64,
                frequency_dim: 32,
                text_pooling: TextPooling::Mean,
            },
            batch_size: 8,
            steps: 50,
            learning_rate: 5e-3,
            warmup_steps: 5,
            progress_every: 10,
            checkpoint_every: 0,
            final_loss_window: 10,
            sampling: SampleSettings { steps: 4, ..SampleSettings::default() },
            ..BaseConfig::default()
        }
    }

    /// Parses and validates a configuration written by [`BaseConfig::to_json`].
    pub fn from_json(text: &str) -> Result<BaseConfig, BaseError> {
        let config: BaseConfig =
            serde_json::from_str(text).map_err(|error| BaseError::InvalidConfig(error.to_string()))?;
        config.check()?;
        Ok(config)
    }

    /// The configuration as pretty JSON, to store beside the weights.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a config of plain values serialises")
    }

    /// Checks every field that training or sampling relies on.
    pub fn check(&self) -> Result<(), BaseError> {
        self.model.check()?;
        let bad = |problem: &str| Err(BaseError::InvalidConfig(problem.to_string()));
        if self.batch_size == 0 || self.steps == 0 {
            return bad("batch_size and steps must be positive");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad("learning_rate must be positive");
        }
        if !(0.0..=1.0).contains(&self.final_learning_rate_fraction) {
            return bad("final_learning_rate_fraction must lie in [0, 1]");
        }
        if !(self.weight_decay >= 0.0 && self.max_grad_norm >= 0.0) {
            return bad("weight_decay and max_grad_norm must not be negative");
        }
        if !(0.0..1.0).contains(&self.caption_dropout) {
            return bad("caption_dropout must lie in [0, 1)");
        }
        if self.min_snr_gamma.is_some_and(|gamma| !(gamma.is_finite() && gamma > 0.0)) {
            return bad("min_snr_gamma must be positive");
        }
        if let TimestepSampling::LogitNormal { location, scale } = self.timesteps
            && !(location.is_finite() && scale.is_finite() && scale > 0.0)
        {
            return bad("logit-normal timesteps need a finite location and a positive, finite scale");
        }
        if self.ema_decay.is_some_and(|decay| !(0.0..1.0).contains(&decay)) {
            return bad("ema_decay must lie in [0, 1)");
        }
        if self.sampling.steps == 0 || !self.sampling.guidance_scale.is_finite() || self.sampling.eta < 0.0 {
            return bad("sampling needs positive steps, a finite guidance scale and η ≥ 0");
        }
        Ok(())
    }

    /// The learning rate of step `step` (counting from 0): linear warm-up, then cosine decay to
    /// `final_learning_rate_fraction` of the peak at the last step.
    pub fn learning_rate_at(&self, step: usize) -> f32 {
        let peak = self.learning_rate;
        if step < self.warmup_steps {
            return peak * (step + 1) as f32 / self.warmup_steps as f32;
        }
        let decay_steps = self.steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f32 / decay_steps as f32).min(1.0);
        let floor = peak * self.final_learning_rate_fraction;
        floor + (peak - floor) * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos())
    }

    /// The corpus stream training reads.
    pub fn corpus_stream(&self) -> Corpus {
        Corpus::new(self.corpus.clone(), derive_seed(self.seed, STREAM_CORPUS))
    }

    /// Whether corpus sample `index` has its caption replaced by the null text.
    pub fn caption_dropped(&self, index: u64) -> bool {
        Rng::stream(derive_seed(self.seed, STREAM_DROPOUT), index).chance(self.caption_dropout)
    }

    /// The batch of training step `step` (counting from 0): corpus samples `step·B .. (step+1)·B`,
    /// rendered to `[B, 3, 32, 32]` in `[-1, 1]`, with captions as [`MAX_TOKENS`] ids each, all
    /// padding where the caption is dropped.
    pub fn batch(&self, corpus: &Corpus, step: usize) -> TrainBatch {
        let first = (step * self.batch_size) as u64;
        let mut images = Vec::with_capacity(self.batch_size * 3 * IMAGE_SIZE * IMAGE_SIZE);
        let mut ids = Vec::with_capacity(self.batch_size * MAX_TOKENS);
        for index in first..first + self.batch_size as u64 {
            let sample = corpus.sample(index);
            images.extend(sample.render().to_chw_f32());
            if self.caption_dropped(index) {
                ids.extend(std::iter::repeat_n(PAD_ID, MAX_TOKENS));
            } else {
                ids.extend(caption_ids(&sample));
            }
        }
        TrainBatch { images, ids }
    }
}

/// A caption's ids: every caption of the grammar fits [`MAX_TOKENS`] known words (tested in
/// the tokenizer), so nothing is reported here.
fn caption_ids(sample: &Sample) -> Vec<u32> {
    tokenizer::encode(&sample.caption, MAX_TOKENS).ids
}

/// Errors of training, loading and sampling the base model.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    /// The configuration is not usable.
    #[error("invalid base model configuration: {0}")]
    InvalidConfig(String),
    /// The compute backend failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Weights or a checkpoint do not fit the configuration or are malformed.
    #[error("base model weights: {0}")]
    Weights(#[from] WeightsError),
    /// A checkpoint cannot be resumed by this configuration.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A prompt has words outside the vocabulary (the model would read them all as one
    /// "unknown" token).
    #[error("the prompt {prompt:?} has words outside the vocabulary: {}", words.join(", "))]
    UnknownWords {
        /// The prompt.
        prompt: String,
        /// The words the tokenizer does not know, in order.
        words: Vec<String>,
    },
    /// A prompt has more words than the model reads.
    #[error("the prompt {prompt:?} has more than {MAX_TOKENS} words")]
    PromptTooLong {
        /// The prompt.
        prompt: String,
    },
    /// The caller stopped the work.
    #[error("cancelled after {completed} of {total}")]
    Cancelled {
        /// Steps or images completed.
        completed: usize,
        /// Steps or images asked for.
        total: usize,
    },
}

impl From<GpuError> for BaseError {
    fn from(error: GpuError) -> Self {
        BaseError::Engine(EngineError::Gpu(error))
    }
}

/// Where a training run stands, reported every [`BaseConfig::progress_every`] steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Steps completed.
    pub step: usize,
    /// Steps in the run.
    pub steps: usize,
    /// Mean loss over the steps since the previous report.
    pub loss: f32,
    /// The learning rate of the last step.
    pub learning_rate: f32,
    /// Training throughput since this process started (or resumed) the run.
    pub samples_per_second: f64,
    /// Time since this process started (or resumed) the run.
    pub elapsed: Duration,
    /// Estimated time to the last step at the current throughput.
    pub eta: Duration,
}

/// What [`train_base`] tells its caller while it runs.
#[derive(Debug)]
pub enum TrainEvent<'a> {
    /// Every [`BaseConfig::progress_every`] steps and at the last step.
    Progress(&'a Progress),
    /// Every [`BaseConfig::checkpoint_every`] steps (not at the last step: the result is
    /// returned then). Storing it lets a crashed run resume.
    Checkpoint(&'a Checkpoint),
}

/// What the caller answers to a [`TrainEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on training.
    Continue,
    /// Stop now: [`train_base`] returns [`BaseError::Cancelled`].
    Stop,
}

/// The state a training run can resume from: the weights after `step` steps. The optimiser's
/// moments are not kept (the `gpu` crate does not expose them), so a resumed run warms its
/// learning rate up again over [`BaseConfig::warmup_steps`] while fresh moments settle; it sees
/// the same batches as an uninterrupted run but is not bit-identical to one.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Steps completed.
    pub step: usize,
    /// The configuration of the run.
    pub config: BaseConfig,
    /// The weights after `step` steps.
    pub weights: HostWeights,
    /// Their moving average, when the run keeps one ([`BaseConfig::ema_decay`]).
    pub ema: Option<HostWeights>,
    /// The losses of the last steps (for the final loss).
    pub recent_losses: Vec<f32>,
}

impl Checkpoint {
    /// The checkpoint as safetensors, its step, configuration and recent losses in the metadata.
    pub fn to_bytes(&self) -> Result<Vec<u8>, BaseError> {
        let metadata = HashMap::from([
            (CONFIG_METADATA_KEY.to_string(), self.config.to_json()),
            (STEP_METADATA_KEY.to_string(), self.step.to_string()),
            (LOSSES_METADATA_KEY.to_string(), serde_json::to_string(&self.recent_losses).expect("floats serialise")),
        ]);
        let mut tensors = self.weights.clone();
        if let Some(ema) = &self.ema {
            for (name, tensor) in &ema.tensors {
                tensors.tensors.insert(format!("{EMA_PREFIX}{name}"), tensor.clone());
            }
        }
        Ok(tensors.to_safetensors(Some(metadata))?)
    }

    /// Reads a checkpoint written by [`Checkpoint::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Checkpoint, BaseError> {
        let metadata = safetensors_metadata(bytes)?;
        let field = |key: &str| {
            metadata.get(key).ok_or_else(|| BaseError::Checkpoint(format!("no `{key}` in the safetensors metadata")))
        };
        let config = BaseConfig::from_json(field(CONFIG_METADATA_KEY)?)?;
        let step = field(STEP_METADATA_KEY)?
            .parse()
            .map_err(|_| BaseError::Checkpoint(format!("`{STEP_METADATA_KEY}` is not a step count")))?;
        let recent_losses = serde_json::from_str(field(LOSSES_METADATA_KEY)?)
            .map_err(|error| BaseError::Checkpoint(format!("`{LOSSES_METADATA_KEY}`: {error}")))?;
        let all = HostWeights::from_safetensors(bytes)?;
        let (mut weights, mut ema) = (HostWeights::default(), HostWeights::default());
        for (name, tensor) in all.tensors {
            match name.strip_prefix(EMA_PREFIX) {
                Some(base) => ema.tensors.insert(base.to_string(), tensor),
                None => weights.tensors.insert(name, tensor),
            };
        }
        let dit = config.model.dit_config();
        weights.check(&dit)?;
        let ema = match (config.ema_decay, ema.tensors.is_empty()) {
            (None, _) => None,
            (Some(_), true) => {
                return Err(BaseError::Checkpoint(
                    "the run keeps a moving average of the weights but the checkpoint has none".to_string(),
                ));
            }
            (Some(_), false) => {
                ema.check(&dit)?;
                Some(ema)
            }
        };
        Ok(Checkpoint { step, config, weights, ema, recent_losses })
    }
}

/// The string metadata of a safetensors file: an 8-byte little-endian header length, then a JSON
/// header whose `__metadata__` object holds strings.
pub(crate) fn safetensors_metadata(bytes: &[u8]) -> Result<HashMap<String, String>, BaseError> {
    let malformed = || BaseError::Weights(WeightsError::Format("malformed header".to_string()));
    let length = bytes.get(..8).ok_or_else(malformed)?;
    let length = u64::from_le_bytes(length.try_into().expect("8 bytes")) as usize;
    let header = bytes.get(8..8usize.checked_add(length).ok_or_else(malformed)?).ok_or_else(malformed)?;
    #[derive(Deserialize)]
    struct Header {
        #[serde(rename = "__metadata__", default)]
        metadata: HashMap<String, String>,
    }
    let header: Header = serde_json::from_slice(header).map_err(|_| malformed())?;
    Ok(header.metadata)
}

/// A finished training run.
#[derive(Debug, Clone)]
pub struct TrainedBase {
    /// The configuration it was trained with.
    pub config: BaseConfig,
    /// The trained weights.
    pub weights: HostWeights,
    /// Mean loss over the last [`BaseConfig::final_loss_window`] steps.
    pub final_loss: f32,
    /// Mean loss of every [`BaseConfig::progress_every`] steps, in order (the loss curve).
    pub loss_curve: Vec<f32>,
    /// Wall-clock time of the training in this process.
    pub elapsed: Duration,
    /// The backend it ran on.
    pub backend: String,
}

impl TrainedBase {
    /// The weights as safetensors (PyTorch-style names), the configuration in the metadata.
    pub fn safetensors(&self) -> Result<Vec<u8>, BaseError> {
        let metadata = HashMap::from([(CONFIG_METADATA_KEY.to_string(), self.config.to_json())]);
        Ok(self.weights.to_safetensors(Some(metadata))?)
    }

    /// The configuration JSON to store beside the weights ([`BaseConfig::from_json`] reads it).
    pub fn config_json(&self) -> String {
        self.config.to_json()
    }
}

/// `average ← decay·average + (1 − decay)·current`, tensor by tensor.
fn update_average(average: &mut HostWeights, current: &HostWeights, decay: f32) {
    for (name, (_, values)) in average.tensors.iter_mut() {
        let (_, now) = &current.tensors[name];
        for (kept, now) in values.iter_mut().zip(now) {
            *kept = decay * *kept + (1.0 - decay) * now;
        }
    }
}

/// Trains the base model from `config` on `backend`, from scratch or from `resume`, telling
/// `observe` about progress and checkpoints. Deterministic for a configuration on one backend
/// (when not resumed).
pub fn train_base(
    config: &BaseConfig,
    backend: &Backend,
    resume: Option<&Checkpoint>,
    mut observe: impl FnMut(TrainEvent<'_>) -> Flow,
) -> Result<TrainedBase, BaseError> {
    config.check()?;
    let dit = config.model.dit_config();
    let (start, weights, ema, mut recent) = match resume {
        None => {
            let weights = HostWeights::init(&dit, derive_seed(config.seed, STREAM_INIT));
            let ema = config.ema_decay.map(|_| weights.clone());
            (0, weights, ema, VecDeque::new())
        }
        Some(checkpoint) => {
            if checkpoint.config != *config {
                return Err(BaseError::Checkpoint("the checkpoint was made with another configuration".to_string()));
            }
            if checkpoint.step >= config.steps {
                return Err(BaseError::Checkpoint(format!(
                    "the checkpoint is at step {}, the run has {} steps",
                    checkpoint.step, config.steps
                )));
            }
            (
                checkpoint.step,
                checkpoint.weights.clone(),
                checkpoint.ema.clone(),
                checkpoint.recent_losses.iter().copied().collect(),
            )
        }
    };
    let mut ema = ema;
    let mut engine = Engine::new(backend, dit, &weights, None)?;
    engine.set_trainable(TrainMode::Full);
    if let Some(gamma) = config.min_snr_gamma {
        engine.set_loss_weighting(LossWeighting::MinSnr { gamma });
    }
    engine.set_timestep_sampling(config.timesteps);
    let corpus = config.corpus_stream();
    let step_noise = derive_seed(config.seed, STREAM_STEP_NOISE);
    let window = config.final_loss_window.max(1);
    let every = config.progress_every.max(1);
    let mut loss_curve = Vec::new();
    let (mut interval_sum, mut interval_count) = (0.0f64, 0usize);
    let started = Instant::now();
    for step in start..config.steps {
        let batch = config.batch(&corpus, step);
        // After a resume the moments start from zero: warm up again rather than take full-size
        // steps on a one-batch estimate of the gradient's scale.
        let rewarm = if start > 0 && config.warmup_steps > 0 {
            ((step - start + 1) as f32 / config.warmup_steps as f32).min(1.0)
        } else {
            1.0
        };
        let hyper = AdamW {
            lr: config.learning_rate_at(step) * rewarm,
            weight_decay: config.weight_decay,
            max_grad_norm: config.max_grad_norm,
            ..AdamW::default()
        };
        let loss = engine.train_step(&batch, TrainMode::Full, &hyper, derive_seed(step_noise, step as u64))?;
        if !loss.is_finite() {
            return Err(BaseError::InvalidConfig(format!(
                "the loss diverged ({loss}) at step {}; lower the learning rate",
                step + 1
            )));
        }
        if let (Some(average), Some(decay)) = (ema.as_mut(), config.ema_decay) {
            let decay = decay.min((1 + step) as f32 / (10 + step) as f32);
            update_average(average, &engine.base_weights()?, decay);
        }
        recent.push_back(loss);
        if recent.len() > window {
            recent.pop_front();
        }
        interval_sum += f64::from(loss);
        interval_count += 1;
        let done = step + 1;
        if done % every == 0 || done == config.steps {
            let elapsed = started.elapsed();
            let trained = (done - start) as f64;
            let rate = trained / elapsed.as_secs_f64().max(1e-9);
            let mean = (interval_sum / interval_count as f64) as f32;
            loss_curve.push(mean);
            (interval_sum, interval_count) = (0.0, 0);
            let progress = Progress {
                step: done,
                steps: config.steps,
                loss: mean,
                learning_rate: hyper.lr,
                samples_per_second: rate * config.batch_size as f64,
                elapsed,
                eta: Duration::from_secs_f64((config.steps - done) as f64 / rate),
            };
            if observe(TrainEvent::Progress(&progress)) == Flow::Stop {
                return Err(BaseError::Cancelled { completed: done, total: config.steps });
            }
        }
        if config.checkpoint_every > 0 && done % config.checkpoint_every == 0 && done < config.steps {
            let checkpoint = Checkpoint {
                step: done,
                config: config.clone(),
                weights: engine.base_weights()?,
                ema: ema.clone(),
                recent_losses: recent.iter().copied().collect(),
            };
            if observe(TrainEvent::Checkpoint(&checkpoint)) == Flow::Stop {
                return Err(BaseError::Cancelled { completed: done, total: config.steps });
            }
        }
    }
    let final_loss = recent.iter().sum::<f32>() / recent.len().max(1) as f32;
    let weights = match ema {
        Some(average) => average,
        None => engine.base_weights()?,
    };
    Ok(TrainedBase {
        config: config.clone(),
        weights,
        final_loss,
        loss_curve,
        elapsed: started.elapsed(),
        backend: backend.describe(),
    })
}

/// A trained base model on a backend, ready to sample.
pub struct BaseModel {
    config: BaseConfig,
    engine: Engine,
    backend: Backend,
    adapter: Option<HostAdapter>,
}

impl std::fmt::Debug for BaseModel {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("BaseModel").field("model", &self.config.model).finish_non_exhaustive()
    }
}

impl BaseModel {
    /// Loads safetensors `weights` of the model `config` describes onto `backend`.
    pub fn load(weights: &[u8], config: &BaseConfig, backend: &Backend) -> Result<BaseModel, BaseError> {
        Self::from_weights(&HostWeights::from_safetensors(weights)?, config, backend)
    }

    /// The base model shipped with thitl (`weights/base.safetensors`, embedded in the build; its
    /// recipe is in the file's metadata and `weights/README.md` says how it was made).
    pub fn shipped(backend: &Backend) -> Result<BaseModel, BaseError> {
        Self::load_with_metadata(SHIPPED_WEIGHTS, backend)
    }

    /// Loads weights whose safetensors metadata holds their [`BaseConfig`] (what
    /// `train-base` writes).
    pub fn load_with_metadata(weights: &[u8], backend: &Backend) -> Result<BaseModel, BaseError> {
        let metadata = safetensors_metadata(weights)?;
        let config = metadata.get(CONFIG_METADATA_KEY).ok_or_else(|| {
            BaseError::InvalidConfig(format!(
                "the weights carry no `{CONFIG_METADATA_KEY}` metadata; give the configuration"
            ))
        })?;
        Self::load(weights, &BaseConfig::from_json(config)?, backend)
    }

    /// Uploads host weights (e.g. [`TrainedBase::weights`]) to `backend`.
    pub fn from_weights(weights: &HostWeights, config: &BaseConfig, backend: &Backend) -> Result<BaseModel, BaseError> {
        config.check()?;
        let engine = Engine::new(backend, config.model.dit_config(), weights, None)?;
        Ok(BaseModel { config: config.clone(), engine, backend: backend.clone(), adapter: None })
    }

    /// This model with a LoRA `adapter` attached (replacing any it had): a fine-tuned version
    /// that samples like the base plus the adapter's low-rank updates.
    pub fn with_adapter(&self, adapter: &HostAdapter) -> Result<BaseModel, BaseError> {
        let engine = Engine::new(&self.backend, self.config.model.dit_config(), &self.weights()?, Some(adapter))?;
        Ok(BaseModel {
            config: self.config.clone(),
            engine,
            backend: self.backend.clone(),
            adapter: Some(adapter.clone()),
        })
    }

    /// The base weights (without any adapter).
    pub fn weights(&self) -> Result<HostWeights, BaseError> {
        Ok(self.engine.base_weights()?)
    }

    /// The attached adapter, if any.
    pub fn adapter(&self) -> Option<&HostAdapter> {
        self.adapter.as_ref()
    }

    /// The backend the model runs on.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The configuration the model was trained with.
    pub fn config(&self) -> &BaseConfig {
        &self.config
    }

    /// The model's default sampling settings (the recipe's).
    pub fn default_settings(&self) -> &SampleSettings {
        &self.config.sampling
    }

    /// `count` images for `prompt`, deterministic in `seed`; image `i` does not depend on
    /// `count`. Prompts with unknown words or more than [`MAX_TOKENS`] words are refused.
    pub fn sample(
        &self,
        prompt: &str,
        count: usize,
        seed: u64,
        settings: &SampleSettings,
    ) -> Result<Vec<Image>, BaseError> {
        self.sample_with_progress(prompt, count, seed, settings, &mut |_, _| Flow::Continue)
    }

    /// [`BaseModel::sample`], calling `progress(images done, count)` after each batch.
    pub fn sample_with_progress(
        &self,
        prompt: &str,
        count: usize,
        seed: u64,
        settings: &SampleSettings,
        progress: &mut dyn FnMut(usize, usize) -> Flow,
    ) -> Result<Vec<Image>, BaseError> {
        let ids = prompt_ids(prompt)?;
        let negative = settings.negative_prompt.as_deref().map(prompt_ids).transpose()?;
        let mut images = Vec::with_capacity(count);
        for (chunk, first) in (0..count).step_by(SAMPLE_CHUNK).enumerate() {
            let batch = SAMPLE_CHUNK.min(count - first);
            let options = SampleOptions {
                steps: settings.steps,
                eta: settings.eta,
                guidance_scale: settings.guidance_scale,
                seed: derive_seed(seed, chunk as u64),
            };
            let prompts = ids.repeat(batch);
            let negatives = negative.as_ref().map(|negative| negative.repeat(batch));
            let values = self.engine.sample(&options, &prompts, negatives.as_deref())?;
            for image in values.chunks_exact(3 * IMAGE_SIZE * IMAGE_SIZE) {
                images.push(Image::from_chw_f32(image).expect("the model's image shape is the world's"));
            }
            if progress(images.len(), count) == Flow::Stop {
                return Err(BaseError::Cancelled { completed: images.len(), total: count });
            }
        }
        Ok(images)
    }

    /// One image per item, each from its own prompt, negative prompt and seed: an image depends
    /// only on its item and `settings` (steps, guidance, η; `settings.negative_prompt` is not
    /// used), whatever else is asked for with it. Items are batched [`SAMPLE_CHUNK`] at a time;
    /// `progress(images done, total)` after each batch.
    pub fn sample_items(
        &self,
        items: &[SampleItem],
        settings: &SampleSettings,
        progress: &mut dyn FnMut(usize, usize) -> Flow,
    ) -> Result<Vec<Image>, BaseError> {
        let mut encoded = Vec::with_capacity(items.len());
        for item in items {
            let negative = item.negative_prompt.as_deref().map(prompt_ids).transpose()?;
            encoded.push((prompt_ids(&item.prompt)?, negative));
        }
        let mut images = Vec::with_capacity(items.len());
        for (chunk, batch) in items.chunks(SAMPLE_CHUNK).zip(encoded.chunks(SAMPLE_CHUNK)) {
            let ids: Vec<u32> = batch.iter().flat_map(|(ids, _)| ids.iter().copied()).collect();
            let any_negative = batch.iter().any(|(_, negative)| negative.is_some());
            let negative: Option<Vec<u32>> = any_negative.then(|| {
                batch
                    .iter()
                    .flat_map(|(_, negative)| match negative {
                        Some(ids) => ids.clone(),
                        None => vec![PAD_ID; MAX_TOKENS],
                    })
                    .collect()
            });
            let seeds: Vec<u64> = chunk.iter().map(|item| item.seed).collect();
            let options = SampleOptions {
                steps: settings.steps,
                eta: settings.eta,
                guidance_scale: settings.guidance_scale,
                seed: derive_seed(seeds[0], STREAM_ETA),
            };
            let values = self.engine.sample_seeded(&options, &ids, negative.as_deref(), &seeds, &mut |_, _| true)?;
            for image in values.chunks_exact(3 * IMAGE_SIZE * IMAGE_SIZE) {
                images.push(Image::from_chw_f32(image).expect("the model's image shape is the world's"));
            }
            if progress(images.len(), items.len()) == Flow::Stop {
                return Err(BaseError::Cancelled { completed: images.len(), total: items.len() });
            }
        }
        Ok(images)
    }

    /// A PNG grid (8 columns, each pixel drawn 4×4) of `count` samples of `prompt` with the
    /// default settings.
    pub fn grid(&self, prompt: &str, count: usize, seed: u64) -> Result<Vec<u8>, BaseError> {
        let images = self.sample(prompt, count, seed, &self.config.sampling)?;
        Ok(grid_png(&images, 8, 4))
    }
}

/// One image [`BaseModel::sample_items`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleItem {
    /// The prompt.
    pub prompt: String,
    /// A prompt whose prediction replaces the unconditional one (`None`: the null text).
    pub negative_prompt: Option<String>,
    /// The seed of the image's starting noise.
    pub seed: u64,
}

/// A prompt's ids, refusing unknown words and truncation.
pub(crate) fn prompt_ids(prompt: &str) -> Result<Vec<u32>, BaseError> {
    let tokenized = tokenizer::encode(prompt, MAX_TOKENS);
    if !tokenized.unknown.is_empty() {
        return Err(BaseError::UnknownWords { prompt: prompt.to_string(), words: tokenized.unknown });
    }
    if tokenized.truncated {
        return Err(BaseError::PromptTooLong { prompt: prompt.to_string() });
    }
    Ok(tokenized.ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu() -> Backend {
        Backend::Cpu
    }

    #[test]
    fn batches_match_the_corpus() {
        let config = BaseConfig { batch_size: 5, ..BaseConfig::tiny() };
        let corpus = config.corpus_stream();
        let batch = config.batch(&corpus, 3);
        assert_eq!(batch.images.len(), 5 * 3 * 32 * 32);
        assert_eq!(batch.ids.len(), 5 * MAX_TOKENS);
        assert_eq!(batch.samples(&config.model.dit_config()).expect("shape"), 5);
        for (offset, (image, ids)) in
            batch.images.chunks_exact(3 * 32 * 32).zip(batch.ids.chunks_exact(MAX_TOKENS)).enumerate()
        {
            let index = 15 + offset as u64;
            let sample = corpus.sample(index);
            assert_eq!(image, &sample.render().to_chw_f32()[..], "image of sample {index}");
            if config.caption_dropped(index) {
                assert!(ids.iter().all(|id| *id == PAD_ID));
            } else {
                assert_eq!(ids, &tokenizer::encode(&sample.caption, MAX_TOKENS).ids[..]);
                assert!(ids[0] != PAD_ID);
            }
        }
    }

    #[test]
    fn caption_dropout_follows_its_rate() {
        for rate in [0.0, 0.1, 0.3] {
            let config = BaseConfig { caption_dropout: rate, ..BaseConfig::tiny() };
            let draws = 20_000;
            let dropped = (0..draws).filter(|index| config.caption_dropped(*index)).count();
            let observed = dropped as f64 / draws as f64;
            // Four standard errors.
            let tolerance = 4.0 * (rate * (1.0 - rate) / draws as f64).sqrt() + 1e-9;
            assert!((observed - rate).abs() <= tolerance, "rate {rate}: observed {observed}");
        }
        // Dropped captions are all padding in a batch, kept ones are not.
        let config = BaseConfig { caption_dropout: 0.5, batch_size: 64, ..BaseConfig::tiny() };
        let batch = config.batch(&config.corpus_stream(), 0);
        let empty = batch.ids.chunks_exact(MAX_TOKENS).filter(|ids| ids.iter().all(|id| *id == PAD_ID)).count();
        let expected = (0..64).filter(|index| config.caption_dropped(*index)).count();
        assert_eq!(empty, expected);
        assert!((16..=48).contains(&empty), "{empty} of 64 dropped at rate 0.5");
    }

    #[test]
    fn learning_rate_warms_up_then_decays() {
        let config = BaseConfig { steps: 1000, warmup_steps: 100, learning_rate: 1e-3, ..BaseConfig::tiny() };
        assert!((config.learning_rate_at(0) - 1e-5).abs() < 1e-9);
        assert!((config.learning_rate_at(99) - 1e-3).abs() < 1e-9);
        assert!(config.learning_rate_at(500) < 1e-3 && config.learning_rate_at(500) > 1e-4);
        let last = config.learning_rate_at(999);
        assert!((last - 1e-3 * config.final_learning_rate_fraction).abs() < 1e-5, "{last}");
        for step in 100..999 {
            assert!(config.learning_rate_at(step + 1) <= config.learning_rate_at(step));
        }
    }

    #[test]
    fn the_shipped_weights_were_made_by_the_default_recipe() {
        let metadata = safetensors_metadata(SHIPPED_WEIGHTS).expect("metadata");
        let mut shipped = BaseConfig::from_json(&metadata[CONFIG_METADATA_KEY]).expect("a configuration");
        // How often a run writes checkpoints does not change its weights.
        shipped.checkpoint_every = BaseConfig::default().checkpoint_every;
        assert_eq!(shipped, BaseConfig::default());
    }

    #[test]
    fn configurations_round_trip_and_bad_ones_are_refused() {
        let config = BaseConfig::default();
        assert_eq!(BaseConfig::from_json(&config.to_json()).expect("valid"), config);
        let mut small_table = BaseConfig::default();
        small_table.model.vocabulary = 10;
        let error = BaseConfig::from_json(&small_table.to_json()).expect_err("too few rows");
        assert!(error.to_string().contains("vocabulary"), "{error}");
        let mut odd_patch = BaseConfig::default();
        odd_patch.model.patch = 5;
        assert!(matches!(odd_patch.check(), Err(BaseError::InvalidConfig(_))));
        let error = BaseConfig::from_json(r#"{"model": 1}"#).expect_err("not a config");
        assert!(matches!(error, BaseError::InvalidConfig(_)));
        for scale in [0.0, -1.0, f32::NAN] {
            let bad = BaseConfig {
                timesteps: TimestepSampling::LogitNormal { location: 0.0, scale },
                ..BaseConfig::default()
            };
            let error = bad.check().expect_err("no spread");
            assert!(error.to_string().contains("logit-normal"), "{error}");
        }
    }

    #[test]
    fn timestep_sampling_is_read_written_and_defaults_to_uniform() {
        // Weights made before the field existed carry no `timesteps`: they trained on uniform ones.
        let mut json: serde_json::Value = serde_json::from_str(&BaseConfig::default().to_json()).unwrap();
        assert_eq!(json["timesteps"], serde_json::json!({"kind": "uniform"}));
        json.as_object_mut().unwrap().remove("timesteps");
        let older = BaseConfig::from_json(&json.to_string()).expect("an older configuration");
        assert_eq!(older.timesteps, TimestepSampling::Uniform);
        // The logit-normal recipe as a configuration file gives it.
        json["timesteps"] = serde_json::json!({"kind": "logit_normal", "location": 0.0, "scale": 1.0});
        let logit_normal = BaseConfig::from_json(&json.to_string()).expect("a logit-normal configuration");
        assert_eq!(logit_normal.timesteps, TimestepSampling::LogitNormal { location: 0.0, scale: 1.0 });
        json["timesteps"] = serde_json::json!({"kind": "logit_normal", "location": 0.0});
        assert!(BaseConfig::from_json(&json.to_string()).is_err(), "a missing scale is refused");
    }

    fn train(config: &BaseConfig) -> (TrainedBase, Vec<Progress>) {
        let mut reports = Vec::new();
        let trained = train_base(config, &cpu(), None, |event| {
            if let TrainEvent::Progress(progress) = event {
                reports.push(progress.clone());
            }
            Flow::Continue
        })
        .expect("training runs");
        (trained, reports)
    }

    #[test]
    fn a_tiny_model_learns() {
        let config = BaseConfig::tiny();
        let (trained, reports) = train(&config);
        assert_eq!(reports.iter().map(|p| p.step).collect::<Vec<_>>(), vec![10, 20, 30, 40, 50]);
        assert!(reports.iter().all(|p| p.samples_per_second > 0.0 && p.loss.is_finite()));
        let (start, end) = (trained.loss_curve[0], trained.final_loss);
        // The first steps predict noise from nothing (loss near 1); a model that learns anything
        // about flat-coloured scenes does far better within 50 steps.
        assert!(start > 0.5, "first loss {start}");
        assert!(end < 0.4 * start, "loss went from {start} to {end}: {:?}", trained.loss_curve);
    }

    #[test]
    fn training_is_deterministic_for_a_seed() {
        let config = BaseConfig { steps: 4, ..BaseConfig::tiny() };
        let (first, _) = train(&config);
        let (second, _) = train(&config);
        assert_eq!(first.weights, second.weights, "same seed, same weights");
        assert_eq!(first.final_loss, second.final_loss);
        let (other, _) = train(&BaseConfig { seed: 2, ..config });
        assert_ne!(first.weights, other.weights, "another seed, other weights");
    }

    #[test]
    fn the_moving_average_by_hand() {
        let tensor =
            |values: Vec<f32>| HostWeights { tensors: [("w".to_string(), (vec![values.len()], values))].into() };
        let mut average = tensor(vec![1.0, -2.0]);
        update_average(&mut average, &tensor(vec![3.0, 2.0]), 0.75);
        assert_eq!(average, tensor(vec![1.5, -1.0]));
        // The run returns the average, not the last weights.
        let config = BaseConfig { steps: 6, ..BaseConfig::tiny() };
        let (averaged, _) = train(&config);
        let (last, _) = train(&BaseConfig { ema_decay: None, ..config });
        assert_ne!(averaged.weights, last.weights);
    }

    #[test]
    fn checkpoints_resume_and_stopping_cancels() {
        let config = BaseConfig { steps: 12, checkpoint_every: 5, progress_every: 4, ..BaseConfig::tiny() };
        let mut checkpoints = Vec::new();
        let result = train_base(&config, &cpu(), None, |event| match event {
            TrainEvent::Checkpoint(checkpoint) => {
                checkpoints.push(checkpoint.to_bytes().expect("serialises"));
                Flow::Continue
            }
            TrainEvent::Progress(progress) if progress.step >= 8 => Flow::Stop,
            TrainEvent::Progress(_) => Flow::Continue,
        });
        assert!(matches!(result, Err(BaseError::Cancelled { completed: 8, total: 12 })), "{result:?}");
        assert_eq!(checkpoints.len(), 1);
        let checkpoint = Checkpoint::from_bytes(&checkpoints[0]).expect("reads back");
        assert_eq!((checkpoint.step, checkpoint.recent_losses.len()), (5, 5));
        assert_eq!(checkpoint.config, config);
        let ema = checkpoint.ema.as_ref().expect("the run keeps an average");
        assert_eq!(ema.tensors.keys().collect::<Vec<_>>(), checkpoint.weights.tensors.keys().collect::<Vec<_>>());
        assert_ne!(ema, &checkpoint.weights, "the average lags the weights");
        let mut without_average = checkpoint.clone();
        without_average.ema = None;
        let bytes = without_average.to_bytes().expect("serialises");
        assert!(
            matches!(Checkpoint::from_bytes(&bytes), Err(BaseError::Checkpoint(_))),
            "a run with an average cannot resume without one"
        );
        let resumed = train_base(&config, &cpu(), Some(&checkpoint), |_| Flow::Continue).expect("resumes");
        assert!(resumed.final_loss.is_finite());
        let other = BaseConfig { seed: 9, ..config };
        let refused = train_base(&other, &cpu(), Some(&checkpoint), |_| Flow::Continue);
        assert!(matches!(refused, Err(BaseError::Checkpoint(_))), "{refused:?}");
    }

    fn tiny_model() -> BaseModel {
        let config = BaseConfig::tiny();
        let weights = HostWeights::init(&config.model.dit_config(), 3);
        let bytes = TrainedBase {
            config: config.clone(),
            weights,
            final_loss: 0.0,
            loss_curve: Vec::new(),
            elapsed: Duration::ZERO,
            backend: String::new(),
        }
        .safetensors()
        .expect("serialises");
        BaseModel::load(&bytes, &config, &cpu()).expect("loads")
    }

    #[test]
    fn sampling_is_deterministic_and_returns_what_was_asked() {
        let model = tiny_model();
        let settings = model.default_settings().clone();
        let first = model.sample("a photo of a woman at the beach", 3, 7, &settings).expect("samples");
        assert_eq!(first.len(), 3);
        let again = model.sample("a photo of a woman at the beach", 3, 7, &settings).expect("samples");
        assert_eq!(first, again);
        let other_seed = model.sample("a photo of a woman at the beach", 3, 8, &settings).expect("samples");
        assert_ne!(first, other_seed);
        assert_ne!(first[0], first[1], "every image has its own noise");
        // Image i does not depend on how many were asked for.
        let more = model.sample("a photo of a woman at the beach", SAMPLE_CHUNK + 2, 7, &settings).expect("samples");
        assert_eq!(more.len(), SAMPLE_CHUNK + 2);
        assert_eq!(&more[..3], &first[..]);
        let negative = SampleSettings { negative_prompt: Some("a hippo".into()), ..settings.clone() };
        assert_eq!(model.sample("a woman", 2, 7, &negative).expect("samples").len(), 2);
        let png = model.grid("a man", 4, 1).expect("grid");
        assert_eq!(&png[1..4], b"PNG");
    }

    #[test]
    fn sampled_items_depend_only_on_their_own_prompt_and_seed() {
        let model = tiny_model();
        let settings = model.default_settings().clone();
        let item = |prompt: &str, negative: Option<&str>, seed| SampleItem {
            prompt: prompt.into(),
            negative_prompt: negative.map(Into::into),
            seed,
        };
        let items = vec![
            item("a woman at the beach", Some("hippopotamus"), 1),
            item("a man in a park", None, 2),
            item("a child", None, 3),
        ];
        let mut reports = Vec::new();
        let together = model
            .sample_items(&items, &settings, &mut |done, total| {
                reports.push((done, total));
                Flow::Continue
            })
            .expect("samples");
        assert_eq!(reports, vec![(3, 3)]);
        for (index, single) in items.iter().enumerate() {
            let alone = model
                .sample_items(std::slice::from_ref(single), &settings, &mut |_, _| Flow::Continue)
                .expect("samples");
            // Batched products may round differently in the last bit: allow one level.
            let difference = together[index].mean_abs_diff(&alone[0]);
            assert!(difference < 0.05, "item {index}: {difference}");
        }
        let reseeded = model
            .sample_items(&[item("a man in a park", None, 9)], &settings, &mut |_, _| Flow::Continue)
            .expect("samples");
        assert_ne!(reseeded[0], together[1]);
        assert!(matches!(
            model.sample_items(&[item("a woman riding a giraffe", None, 1)], &settings, &mut |_, _| Flow::Continue),
            Err(BaseError::UnknownWords { .. })
        ));
    }

    #[test]
    fn unknown_words_and_long_prompts_are_refused() {
        let model = tiny_model();
        let settings = model.default_settings().clone();
        let error = model.sample("a woman riding a giraffe", 1, 1, &settings).expect_err("unknown words");
        assert!(matches!(&error, BaseError::UnknownWords { words, .. } if words == &["riding", "giraffe"]), "{error}");
        assert!(error.to_string().contains("riding, giraffe"), "{error}");
        let negative = SampleSettings { negative_prompt: Some("zebra".into()), ..settings.clone() };
        assert!(matches!(model.sample("a woman", 1, 1, &negative), Err(BaseError::UnknownWords { .. })));
        let long = "a woman ".repeat(9);
        assert!(matches!(model.sample(&long, 1, 1, &settings), Err(BaseError::PromptTooLong { .. })));
    }

    #[test]
    fn weights_of_another_shape_are_refused() {
        let config = BaseConfig::tiny();
        let mut other = BaseConfig::tiny();
        other.model.width = 96;
        let bytes = HostWeights::init(&other.model.dit_config(), 1).to_safetensors(None).expect("serialises");
        let error = BaseModel::load(&bytes, &config, &cpu()).expect_err("wrong shape");
        assert!(matches!(error, BaseError::Engine(EngineError::Weights(_))), "{error}");
    }
}
