//! The rater: a small classifier that looks at one 32×32 picture of the reference world and says
//! which group the person belongs to, which objects are in it and how damaged it is, and yields a
//! feature vector for Fréchet distances. It stands in for a person's eye: the demo's simulated
//! annotators answer through it, and thitl measures with it what a model draws.
//!
//! ```sh
//! cargo run --release -p scenes --example train_rater -- --out scenes/weights/rater.safetensors --seed 1
//! ```
//!
//! The shipped weights (`weights/rater.safetensors`, see `weights/README.md` for how they were
//! made and what they score) are embedded in the build: [`Rater::shipped`].
//!
//! Key design decisions:
//! - The model is [`gpu::classifier`] with three heads: the group (6-way softmax), each concept's
//!   presence (8 independent sigmoids: a head per concept, though a scene holds at most one
//!   object) and the quality (a regression on `1 − severity` of [`corrupt`]).
//! - Training renders fresh scenes at every step (every group, concept and setting uniformly, a
//!   third without an object), each [`augment`]ed and half of them [`corrupt`]ed at a uniform
//!   severity, so the rater never sees a render twice. Training render seeds are below 2⁶³ and
//!   held-out evaluations ([`held_out_examples`]) render at or above 2⁶³: the two never meet.
//! - Rating runs on the CPU backend whatever `THITL_DEVICE` says: a forward pass is about one
//!   MFLOP per image, and CPU results do not depend on the machine's GPU, so a simulated
//!   annotator answers the same everywhere. Training can use either backend.
//! - This module does no IO: weights go in and out as bytes.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gpu::classifier::{Classifier, ClassifierConfig, ClassifierError, Head, Loss, activate};
use gpu::cpu::AdamW;
use gpu::device::{CpuDevice, Device, WgpuDevice};
use gpu::model::WeightsError;
use gpu::{Backend, GpuError};
use serde::{Deserialize, Serialize};

use crate::corrupt::{augment, corrupt, malform};
use crate::image::{CHANNELS, IMAGE_SIZE, IMAGE_VALUES, Image};
use crate::render::render;
use crate::rng::{Rng, derive_seed};
use crate::world::{Concept, Group, Scene, Setting};

/// Number of groups (the width of the group head).
pub const GROUPS: usize = Group::ALL.len();
/// Number of concepts (the width of the concept head).
pub const CONCEPTS: usize = Concept::ALL.len();
const OUTPUTS: usize = GROUPS + CONCEPTS + 1;
const QUALITY_OUTPUT: usize = GROUPS + CONCEPTS;

/// The safetensors metadata key holding the [`RaterTraining`] JSON a weights file was made with.
pub const TRAINING_METADATA_KEY: &str = "thitl.rater_training";
/// The safetensors metadata key holding the final training loss.
pub const FINAL_LOSS_METADATA_KEY: &str = "thitl.final_loss";

/// The shipped weights.
static SHIPPED_WEIGHTS: &[u8] = include_bytes!("../weights/rater.safetensors");

/// Render seeds at or above this are held out: training never renders them.
const HELD_OUT_SEEDS: u64 = 1 << 63;

/// Images per forward pass when rating.
const RATING_CHUNK: usize = 256;

// Sub-streams of a training or evaluation seed.
const STREAM_INIT: u64 = 1;
const STREAM_EXAMPLES: u64 = 2;
const STREAM_HELD_OUT: u64 = 3;

/// What the rater sees in one picture.
#[derive(Debug, Clone, PartialEq)]
pub struct Rating {
    /// The most probable group.
    pub group: Group,
    /// The probability of each group, in [`Group::ALL`] order (they sum to 1).
    pub group_probabilities: [f32; GROUPS],
    /// The probability that each concept is in the picture, in [`Concept::ALL`] order
    /// (independent: they need not sum to 1).
    pub concepts: [f32; CONCEPTS],
    /// The concepts whose probability is above one half.
    pub present: Vec<Concept>,
    /// 1 for an undamaged picture, falling towards 0 as [`corrupt`]'s severity grows to 1
    /// (clamped to `[0, 1]`).
    pub quality: f32,
}

/// Why a rater could not be loaded or trained.
#[derive(Debug, thiserror::Error)]
pub enum RaterError {
    /// The device failed.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// The weights are malformed or do not fit their configuration.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The weights are a classifier, but not a rater of this world.
    #[error("not a rater: {0}")]
    NotARater(String),
    /// The training options are unusable.
    #[error("invalid rater training options: {0}")]
    InvalidTraining(String),
    /// The progress callback asked to stop.
    #[error("training cancelled after {completed} of {total} steps")]
    Cancelled {
        /// Steps completed.
        completed: usize,
        /// Steps asked for.
        total: usize,
    },
}

impl From<ClassifierError> for RaterError {
    fn from(error: ClassifierError) -> Self {
        match error {
            ClassifierError::Gpu(error) => RaterError::Gpu(error),
            ClassifierError::Weights(error) => RaterError::Weights(error),
        }
    }
}

/// The heads every rater has, in logit order.
fn rater_heads(quality_weight: f32) -> Vec<Head> {
    vec![
        Head::new("group", Loss::SoftmaxCrossEntropy, GROUPS),
        Head::new("concepts", Loss::BinaryCrossEntropy, CONCEPTS),
        Head::new("quality", Loss::SquaredError, 1).weighted(quality_weight),
    ]
}

/// A trained rater, on the CPU backend.
pub struct Rater {
    device: CpuDevice<f32>,
    model: Classifier<CpuDevice<f32>>,
}

impl std::fmt::Debug for Rater {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "Rater({})", self.model.config.to_json())
    }
}

impl Rater {
    /// The rater shipped with thitl (`weights/rater.safetensors`, embedded in the build).
    pub fn shipped() -> Rater {
        // The embedded file is checked by this module's tests; it cannot change at run time.
        Rater::from_safetensors(SHIPPED_WEIGHTS).expect("the shipped rater weights load")
    }

    /// A rater from safetensors written by [`train_rater`] (or any [`Classifier`] with the
    /// rater's image geometry and heads).
    pub fn from_safetensors(bytes: &[u8]) -> Result<Rater, RaterError> {
        let device = CpuDevice::new();
        let model = Classifier::from_safetensors(&device, bytes)?;
        let config = &model.config;
        if (config.image_size, config.channels) != (IMAGE_SIZE, CHANNELS) {
            return Err(RaterError::NotARater(format!(
                "it reads {}×{} images with {} channels, not 32×32 RGB",
                config.image_size, config.image_size, config.channels
            )));
        }
        let expected = rater_heads(1.0);
        let heads_fit = config.heads.len() == expected.len()
            && config
                .heads
                .iter()
                .zip(&expected)
                .all(|(found, wanted)| found.loss == wanted.loss && found.outputs == wanted.outputs);
        if !heads_fit {
            return Err(RaterError::NotARater(format!(
                "its heads are {:?}; a rater has a {GROUPS}-way softmax (group), \
                 {CONCEPTS} sigmoids (concepts) and one regression (quality)",
                config.heads
            )));
        }
        Ok(Rater { device, model })
    }

    /// The classifier's configuration.
    pub fn config(&self) -> &ClassifierConfig {
        &self.model.config
    }

    /// The width of [`Rater::features`]' vectors.
    pub fn feature_width(&self) -> usize {
        self.model.config.hidden
    }

    /// The weights as safetensors (the same bytes [`Rater::from_safetensors`] reads).
    pub fn to_safetensors(&self) -> Result<Vec<u8>, RaterError> {
        Ok(self.model.to_safetensors(&self.device, &[])?)
    }

    /// Activated outputs and features of `images`, in chunks.
    fn run(&self, images: &[Image]) -> (Vec<f32>, Vec<f32>) {
        let (mut predictions, mut features) = (Vec::new(), Vec::new());
        for chunk in images.chunks(RATING_CHUNK) {
            let values: Vec<f32> = chunk.iter().flat_map(Image::to_chw_f32).collect();
            // Shapes are right by construction (32×32 RGB, checked at load), and the CPU
            // backend does no IO: it cannot fail.
            let output = self.model.forward(&self.device, &values).expect("a CPU forward pass of checked shapes");
            predictions.extend(activate(&self.model.config.heads, &output.logits));
            features.extend(output.features);
        }
        (predictions, features)
    }

    /// Rates each image.
    pub fn rate(&self, images: &[Image]) -> Vec<Rating> {
        let (predictions, _) = self.run(images);
        predictions
            .chunks(OUTPUTS)
            .map(|row| {
                let group_probabilities: [f32; GROUPS] = row[..GROUPS].try_into().expect("GROUPS values");
                let concepts: [f32; CONCEPTS] = row[GROUPS..QUALITY_OUTPUT].try_into().expect("CONCEPTS values");
                let group = (0..GROUPS)
                    .max_by(|a, b| group_probabilities[*a].total_cmp(&group_probabilities[*b]))
                    .map(|index| Group::ALL[index])
                    .expect("at least one group");
                let present = Concept::ALL
                    .iter()
                    .zip(&concepts)
                    .filter(|(_, p)| **p > 0.5)
                    .map(|(concept, _)| *concept)
                    .collect();
                let quality = row[QUALITY_OUTPUT];
                Rating {
                    group,
                    group_probabilities,
                    concepts,
                    present,
                    quality: if quality.is_nan() { 0.0 } else { quality.clamp(0.0, 1.0) },
                }
            })
            .collect()
    }

    /// The feature vector of each image ([`Rater::feature_width`] values: the hidden layer),
    /// for [`crate::frechet_distance`].
    pub fn features(&self, images: &[Image]) -> Vec<Vec<f32>> {
        let (_, features) = self.run(images);
        features.chunks(self.feature_width()).map(<[f32]>::to_vec).collect()
    }
}

// The API's workers share one rater across threads.
const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<Rater>();
};

/// How a rater is trained: the classifier's shape, the data and the optimiser. The whole run is
/// a function of these values (on one backend).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaterTraining {
    /// Seed of the initial weights and of every training example.
    pub seed: u64,
    /// Optimiser steps.
    pub steps: usize,
    /// Images per step.
    pub batch: usize,
    /// Peak AdamW learning rate.
    pub learning_rate: f32,
    /// Steps of linear warm-up before a cosine decay to zero.
    pub warmup_steps: usize,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f32,
    /// Gradient clipping to this global norm (0: none).
    pub max_grad_norm: f32,
    /// Patch side in pixels.
    pub patch: usize,
    /// Per-patch feature width.
    pub width: usize,
    /// Per-patch layers.
    pub patch_depth: usize,
    /// Hidden width (the feature vector's width).
    pub hidden: usize,
    /// Share of training scenes without an object.
    pub no_object_share: f64,
    /// Share of training images that are damaged (at a severity uniform in `[0, 1]`).
    pub corrupted_share: f64,
    /// Share of the damaged images that are [`malform`]ed (a generator's smooth failures) rather
    /// than [`corrupt`]ed (noise, blur, scrambled blocks). Absent in options written before it
    /// existed, whose raters saw only [`corrupt`].
    #[serde(default)]
    pub malformed_share: f64,
    /// Weight of the quality head's squared error in the loss.
    pub quality_weight: f32,
}

impl Default for RaterTraining {
    /// The recipe of the shipped weights.
    fn default() -> Self {
        RaterTraining {
            seed: 1,
            steps: 5000,
            batch: 128,
            learning_rate: 2e-3,
            warmup_steps: 100,
            weight_decay: 1e-4,
            max_grad_norm: 0.0,
            patch: 4,
            width: 48,
            patch_depth: 2,
            hidden: 128,
            no_object_share: 1.0 / 3.0,
            corrupted_share: 0.5,
            malformed_share: 0.5,
            quality_weight: 4.0,
        }
    }
}

/// One training or held-out example: what was rendered and how it was damaged.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The scene.
    pub scene: Scene,
    /// The render seed.
    pub render_seed: u64,
    /// The damage's severity (0: not damaged).
    pub severity: f32,
    /// Whether the damage is [`malform`]'s (otherwise [`corrupt`]'s, if any).
    pub malformed: bool,
    /// The picture the rater sees.
    pub image: Image,
}

impl Example {
    /// The targets of the rater's heads: one-hot group, concept presence, quality.
    fn targets(&self) -> [f32; OUTPUTS] {
        let mut targets = [0.0; OUTPUTS];
        targets[self.scene.group.index()] = 1.0;
        if let Some(concept) = self.scene.concept {
            targets[GROUPS + concept.index()] = 1.0;
        }
        targets[QUALITY_OUTPUT] = 1.0 - self.severity;
        targets
    }
}

impl RaterTraining {
    /// Parses options saved by [`RaterTraining::to_json`].
    pub fn from_json(text: &str) -> Result<RaterTraining, RaterError> {
        serde_json::from_str(text).map_err(|error| RaterError::InvalidTraining(error.to_string()))
    }

    /// The options as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain data serialises")
    }

    /// The classifier these options train.
    pub fn classifier_config(&self) -> ClassifierConfig {
        ClassifierConfig {
            image_size: IMAGE_SIZE,
            channels: CHANNELS,
            patch: self.patch,
            width: self.width,
            patch_depth: self.patch_depth,
            hidden: self.hidden,
            heads: rater_heads(self.quality_weight),
        }
    }

    /// Says what is wrong with the options, if anything.
    pub fn check(&self) -> Result<(), RaterError> {
        let share = |value: f64| (0.0..=1.0).contains(&value);
        if self.steps == 0 || self.batch == 0 {
            return Err(RaterError::InvalidTraining("steps and batch must be positive".into()));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(RaterError::InvalidTraining("the learning rate must be positive".into()));
        }
        if !share(self.no_object_share) || !share(self.corrupted_share) || !share(self.malformed_share) {
            return Err(RaterError::InvalidTraining("shares must lie in [0, 1]".into()));
        }
        self.classifier_config().validate().map_err(|error| RaterError::InvalidTraining(error.to_string()))
    }

    /// The learning rate at `step` (from 0): linear warm-up, then cosine decay to zero.
    pub fn learning_rate_at(&self, step: usize) -> f32 {
        if step < self.warmup_steps {
            return self.learning_rate * (step + 1) as f32 / self.warmup_steps as f32;
        }
        let decay_steps = (self.steps - self.warmup_steps.min(self.steps)).max(1);
        let progress = (step - self.warmup_steps) as f32 / decay_steps as f32;
        self.learning_rate * 0.5 * (1.0 + (std::f32::consts::PI * progress.min(1.0)).cos())
    }

    /// Training example `index` (deterministic in the seed and the index): a uniform group,
    /// concept (none with [`RaterTraining::no_object_share`]) and setting, rendered at a seed
    /// below 2⁶³, augmented, and damaged at a uniform severity with
    /// [`RaterTraining::corrupted_share`] ([`malform`]ed with [`RaterTraining::malformed_share`],
    /// otherwise [`corrupt`]ed).
    pub fn example(&self, index: u64) -> Example {
        let mut rng = Rng::new(derive_seed(derive_seed(self.seed, STREAM_EXAMPLES), index));
        let group = *rng.pick(Group::ALL);
        let concept = if rng.chance(self.no_object_share) { None } else { Some(*rng.pick(Concept::ALL)) };
        let setting = *rng.pick(Setting::ALL);
        let scene = Scene { group, concept, setting };
        let render_seed = rng.next_u64() % HELD_OUT_SEEDS;
        let mut image = augment(&render(&scene, render_seed), rng.next_u64());
        let (mut severity, mut malformed) = (0.0, false);
        if rng.chance(self.corrupted_share) {
            severity = rng.unit();
            malformed = rng.chance(self.malformed_share);
            let damage = if malformed { malform } else { corrupt };
            image = damage(&image, severity, rng.next_u64());
        }
        Example { scene, render_seed, severity, malformed, image }
    }

    /// The images (`[B, 3, 32, 32]`) and targets of training step `step`.
    pub fn batch(&self, step: usize) -> (Vec<f32>, Vec<f32>) {
        let mut images = Vec::with_capacity(self.batch * IMAGE_VALUES);
        let mut targets = Vec::with_capacity(self.batch * OUTPUTS);
        for i in 0..self.batch {
            let example = self.example((step * self.batch + i) as u64);
            images.extend(example.image.to_chw_f32());
            targets.extend(example.targets());
        }
        (images, targets)
    }
}

/// Where a training run stands.
#[derive(Debug, Clone, PartialEq)]
pub struct RaterProgress {
    /// Steps completed.
    pub step: usize,
    /// Steps in the run.
    pub steps: usize,
    /// Mean loss over the steps since the previous report.
    pub loss: f32,
    /// The learning rate of the last step.
    pub learning_rate: f32,
    /// Training images per second so far.
    pub images_per_second: f64,
    /// Time since the run started.
    pub elapsed: Duration,
    /// Estimated time to the last step.
    pub eta: Duration,
}

/// The result of [`train_rater`].
#[derive(Debug, Clone, PartialEq)]
pub struct TrainedRater {
    /// The options it was trained with.
    pub training: RaterTraining,
    /// The weights as safetensors (the options and final loss in the metadata).
    pub weights: Vec<u8>,
    /// Mean loss over the last 50 steps.
    pub final_loss: f32,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// The backend it ran on.
    pub backend: String,
}

impl TrainedRater {
    /// The trained rater.
    pub fn rater(&self) -> Result<Rater, RaterError> {
        Rater::from_safetensors(&self.weights)
    }
}

/// Trains a rater on `backend` as `training` says, calling `progress` every `report_every` steps
/// and at the last one; `progress` returning `false` stops the run with
/// [`RaterError::Cancelled`]. Examples are rendered on a second thread while the model trains.
pub fn train_rater(
    training: &RaterTraining,
    backend: &Backend,
    report_every: usize,
    progress: &mut dyn FnMut(&RaterProgress) -> bool,
) -> Result<TrainedRater, RaterError> {
    training.check()?;
    match backend {
        Backend::Cpu => train_on(&CpuDevice::<f32>::new(), training, backend, report_every, progress),
        Backend::Wgpu(context) => {
            train_on(&WgpuDevice::new(context.clone()), training, backend, report_every, progress)
        }
    }
}

fn train_on<D: Device>(
    device: &D,
    training: &RaterTraining,
    backend: &Backend,
    report_every: usize,
    progress: &mut dyn FnMut(&RaterProgress) -> bool,
) -> Result<TrainedRater, RaterError> {
    const FINAL_LOSS_WINDOW: usize = 50;
    let config = training.classifier_config();
    let initial = config.init_weights(derive_seed(training.seed, STREAM_INIT));
    let mut model = Classifier::new(device, config, &initial)?;
    model.set_trainable(device);
    let every = report_every.max(1);
    let started = Instant::now();
    let mut recent = VecDeque::new();
    let (mut interval_sum, mut interval_count) = (0.0f64, 0usize);
    std::thread::scope(|scope| {
        // Rendering a batch takes about as long as a training step: a second thread renders the
        // next batches meanwhile. It stops when the receiver goes away.
        let (sender, receiver) = mpsc::sync_channel(2);
        scope.spawn(move || {
            for step in 0..training.steps {
                if sender.send(training.batch(step)).is_err() {
                    return;
                }
            }
        });
        for step in 0..training.steps {
            let (images, targets) = receiver.recv().expect("the renderer thread sends every batch");
            let hyper = AdamW {
                lr: training.learning_rate_at(step),
                weight_decay: training.weight_decay,
                max_grad_norm: training.max_grad_norm,
                ..AdamW::default()
            };
            let loss = model.train_step(device, &images, &targets, &hyper)?;
            if !loss.is_finite() {
                return Err(RaterError::InvalidTraining(format!(
                    "the loss diverged ({loss}) at step {}; lower the learning rate",
                    step + 1
                )));
            }
            recent.push_back(loss);
            if recent.len() > FINAL_LOSS_WINDOW {
                recent.pop_front();
            }
            interval_sum += f64::from(loss);
            interval_count += 1;
            let done = step + 1;
            if done % every == 0 || done == training.steps {
                let elapsed = started.elapsed();
                let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
                let report = RaterProgress {
                    step: done,
                    steps: training.steps,
                    loss: (interval_sum / interval_count as f64) as f32,
                    learning_rate: hyper.lr,
                    images_per_second: rate * training.batch as f64,
                    elapsed,
                    eta: Duration::from_secs_f64((training.steps - done) as f64 / rate),
                };
                (interval_sum, interval_count) = (0.0, 0);
                if !progress(&report) {
                    return Err(RaterError::Cancelled { completed: done, total: training.steps });
                }
            }
        }
        Ok(())
    })?;
    let final_loss = recent.iter().sum::<f32>() / recent.len().max(1) as f32;
    let weights = model.to_safetensors(
        device,
        &[(TRAINING_METADATA_KEY, training.to_json()), (FINAL_LOSS_METADATA_KEY, final_loss.to_string())],
    )?;
    Ok(TrainedRater {
        training: training.clone(),
        weights,
        final_loss,
        elapsed: started.elapsed(),
        backend: backend.describe(),
    })
}

/// What held-out pictures look like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    /// Plain renders.
    Clean,
    /// Renders passed through [`augment`].
    Augmented,
    /// Renders passed through [`corrupt`] at a severity uniform in `[0, max_severity]`.
    Corrupted {
        /// The largest severity.
        max_severity: f32,
    },
    /// Renders passed through [`malform`] at a severity uniform in `[0, max_severity]`.
    Malformed {
        /// The largest severity.
        max_severity: f32,
    },
}

impl std::fmt::Display for Condition {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Condition::Clean => formatter.write_str("clean"),
            Condition::Augmented => formatter.write_str("augmented"),
            Condition::Corrupted { max_severity } => {
                write!(formatter, "corrupted (severity ≤ {max_severity})")
            }
            Condition::Malformed { max_severity } => {
                write!(formatter, "malformed (severity ≤ {max_severity})")
            }
        }
    }
}

/// `count` held-out examples under `condition`, deterministic in `seed`, rendered at seeds
/// training never uses. Stratified: groups cycle, and of every 12 consecutive examples of a
/// group 4 have no object and 8 show each concept once (the training mix); settings are drawn
/// uniformly.
pub fn held_out_examples(condition: Condition, count: usize, seed: u64) -> Vec<Example> {
    let base = derive_seed(seed, STREAM_HELD_OUT);
    (0..count)
        .map(|index| {
            let mut rng = Rng::new(derive_seed(base, index as u64));
            let group = Group::ALL[index % GROUPS];
            let slot = (index / GROUPS) % (CONCEPTS + 4);
            let concept = slot.checked_sub(4).map(|i| Concept::ALL[i]);
            let scene = Scene { group, concept, setting: *rng.pick(Setting::ALL) };
            let render_seed = HELD_OUT_SEEDS | rng.next_u64();
            let rendered = render(&scene, render_seed);
            let malformed = matches!(condition, Condition::Malformed { .. });
            let (image, severity) = match condition {
                Condition::Clean => (rendered, 0.0),
                Condition::Augmented => (augment(&rendered, rng.next_u64()), 0.0),
                Condition::Corrupted { max_severity } => {
                    let severity = rng.unit() * max_severity.clamp(0.0, 1.0);
                    (corrupt(&rendered, severity, rng.next_u64()), severity)
                }
                Condition::Malformed { max_severity } => {
                    let severity = rng.unit() * max_severity.clamp(0.0, 1.0);
                    (malform(&rendered, severity, rng.next_u64()), severity)
                }
            };
            Example { scene, render_seed, severity, malformed: malformed && severity > 0.0, image }
        })
        .collect()
}

/// How well a rater recognises held-out pictures.
#[derive(Debug, Clone, PartialEq)]
pub struct Accuracy {
    /// The pictures' condition.
    pub condition: Condition,
    /// How many were rated.
    pub images: usize,
    /// Share whose most probable group is the true one.
    pub group: f64,
    /// Share whose predicted set of present concepts equals the true set exactly.
    pub concepts: f64,
    /// Per concept, the share of pictures where its presence is predicted right.
    pub per_concept: [f64; CONCEPTS],
    /// Spearman correlation between predicted quality and −severity (NaN when every severity
    /// is equal, e.g. for clean pictures).
    pub quality_spearman: f64,
}

impl Accuracy {
    /// The concept with the lowest per-concept accuracy, and that accuracy.
    pub fn worst_concept(&self) -> (Concept, f64) {
        let index = (0..CONCEPTS)
            .min_by(|a, b| self.per_concept[*a].total_cmp(&self.per_concept[*b]))
            .expect("at least one concept");
        (Concept::ALL[index], self.per_concept[index])
    }
}

/// Rates `count` held-out examples (see [`held_out_examples`]) and scores the ratings.
pub fn evaluate(rater: &Rater, condition: Condition, count: usize, seed: u64) -> Accuracy {
    let examples = held_out_examples(condition, count, seed);
    let images: Vec<Image> = examples.iter().map(|e| e.image.clone()).collect();
    let ratings = rater.rate(&images);
    let (mut group_right, mut sets_right) = (0usize, 0usize);
    let mut concept_right = [0usize; CONCEPTS];
    for (example, rating) in examples.iter().zip(&ratings) {
        group_right += usize::from(rating.group == example.scene.group);
        let truth: Vec<Concept> = example.scene.concept.into_iter().collect();
        sets_right += usize::from(rating.present == truth);
        for (index, concept) in Concept::ALL.iter().enumerate() {
            concept_right[index] += usize::from(rating.present.contains(concept) == truth.contains(concept));
        }
    }
    let share = |right: usize| right as f64 / count.max(1) as f64;
    let quality: Vec<f64> = ratings.iter().map(|r| f64::from(r.quality)).collect();
    let damage: Vec<f64> = examples.iter().map(|e| -f64::from(e.severity)).collect();
    Accuracy {
        condition,
        images: count,
        group: share(group_right),
        concepts: share(sets_right),
        per_concept: concept_right.map(share),
        quality_spearman: spearman(&quality, &damage),
    }
}

/// Spearman's rank correlation of two equally long samples (ties get their mean rank); NaN when
/// either sample is constant or shorter than two.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "spearman needs paired samples");
    let (ra, rb) = (ranks(a), ranks(b));
    pearson(&ra, &rb)
}

fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|i, j| values[*i].total_cmp(&values[*j]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let mean_rank = (start + end - 1) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = mean_rank;
        }
        start = end;
    }
    ranks
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (mean_a, mean_b) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut covariance, mut var_a, mut var_b) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        covariance += (x - mean_a) * (y - mean_b);
        var_a += (x - mean_a).powi(2);
        var_b += (y - mean_b).powi(2);
    }
    if a.len() < 2 || var_a == 0.0 || var_b == 0.0 {
        return f64::NAN;
    }
    covariance / (var_a * var_b).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corrupt::roughness;
    use crate::frechet::frechet_distance;

    /// The lower end of the 95% Wilson score interval of a share.
    fn wilson_lower_bound(share: f64, count: usize) -> f64 {
        let (n, z) = (count as f64, 1.96);
        let centre = share + z * z / (2.0 * n);
        let spread = z * (share * (1.0 - share) / n + z * z / (4.0 * n * n)).sqrt();
        (centre - spread) / (1.0 + z * z / n)
    }

    /// 600 held-out images per condition: the claim "≥ 98%" is tested as "the 95% lower
    /// confidence bound is ≥ 98%", which at n = 600 allows at most 5 mistakes.
    #[test]
    fn the_shipped_rater_recognises_held_out_renders() {
        let rater = Rater::shipped();
        for condition in [Condition::Clean, Condition::Augmented] {
            let accuracy = evaluate(&rater, condition, 600, 11);
            let (worst, worst_share) = accuracy.worst_concept();
            for (what, share) in
                [("group", accuracy.group), ("concept set", accuracy.concepts), ("worst concept", worst_share)]
            {
                let bound = wilson_lower_bound(share, accuracy.images);
                assert!(
                    bound >= 0.98,
                    "{condition}: {what} accuracy {share:.4} on {} images has a 95% lower \
                     bound of {bound:.4} < 0.98 (worst concept: {worst})",
                    accuracy.images
                );
            }
        }
        // Mild damage: the rater still sees through it (a weaker claim, tested as stated).
        let damaged = evaluate(&rater, Condition::Corrupted { max_severity: 0.5 }, 600, 12);
        assert!(damaged.group >= 0.95 && damaged.concepts >= 0.95, "{damaged:?}");
    }

    #[test]
    fn the_shipped_rater_ranks_quality_by_severity() {
        let rater = Rater::shipped();
        for condition in [Condition::Corrupted { max_severity: 1.0 }, Condition::Malformed { max_severity: 1.0 }] {
            let accuracy = evaluate(&rater, condition, 400, 13);
            let spearman = accuracy.quality_spearman;
            assert!(spearman >= 0.9, "{condition}: Spearman(quality, −severity) = {spearman:.3}");
        }
        let clean = held_out_examples(Condition::Clean, 120, 14);
        let images: Vec<Image> = clean.iter().map(|e| e.image.clone()).collect();
        let ratings = rater.rate(&images);
        let mean = ratings.iter().map(|r| r.quality).sum::<f32>() / ratings.len() as f32;
        assert!(mean > 0.9, "clean renders rate a mean quality of {mean}");
        for rating in &ratings {
            let total: f32 = rating.group_probabilities.iter().sum();
            assert!((total - 1.0).abs() < 1e-5, "group probabilities sum to {total}");
            assert!((0.0..=1.0).contains(&rating.quality));
            assert_eq!(rating.group, Group::ALL[rating.group.index()]);
        }
    }

    #[test]
    fn features_are_deterministic_and_independent_of_batching() {
        let rater = Rater::shipped();
        let images: Vec<Image> = held_out_examples(Condition::Augmented, 40, 15).into_iter().map(|e| e.image).collect();
        let features = rater.features(&images);
        assert_eq!(features.len(), 40);
        assert!(features.iter().all(|f| f.len() == rater.feature_width()));
        assert_eq!(rater.features(&images), features, "the same images give the same bits");
        let alone = rater.features(&images[7..8]);
        for (a, b) in alone[0].iter().zip(&features[7]) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
        assert!(rater.features(&[]).is_empty() && rater.rate(&[]).is_empty());
    }

    #[test]
    fn frechet_distance_tells_renders_from_noise() {
        let rater = Rater::shipped();
        let renders = |seed| -> Vec<Image> {
            held_out_examples(Condition::Clean, 300, seed).into_iter().map(|e| e.image).collect()
        };
        let (first, second) = (rater.features(&renders(16)), rater.features(&renders(17)));
        let mut rng = Rng::new(18);
        let noise: Vec<Image> = (0..300)
            .map(|_| {
                let bytes: Vec<u8> = (0..IMAGE_VALUES).map(|_| rng.below(256) as u8).collect();
                Image::from_rgb(&bytes).expect("32×32×3 bytes")
            })
            .collect();
        let noise = rater.features(&noise);
        let same_world = frechet_distance(&first, &second);
        let against_noise = frechet_distance(&first, &noise);
        assert!(
            same_world * 20.0 < against_noise,
            "renders vs renders {same_world:.3}, renders vs noise {against_noise:.3}"
        );
    }

    #[test]
    fn weights_that_are_not_a_rater_are_refused_with_a_reason() {
        let error = Rater::from_safetensors(b"not safetensors").unwrap_err();
        assert!(matches!(error, RaterError::Weights(_)), "{error}");
        let config = ClassifierConfig {
            heads: vec![Head::new("group", Loss::SoftmaxCrossEntropy, 5)],
            ..RaterTraining::default().classifier_config()
        };
        let device = CpuDevice::<f32>::new();
        let model = Classifier::new(&device, config.clone(), &config.init_weights(1)).unwrap();
        let bytes = model.to_safetensors(&device, &[]).unwrap();
        let error = Rater::from_safetensors(&bytes).unwrap_err();
        assert!(matches!(error, RaterError::NotARater(_)), "{error}");
        // The shipped weights say how they were made.
        let shipped = Rater::shipped().to_safetensors().unwrap();
        assert_eq!(Rater::from_safetensors(&shipped).unwrap().config(), Rater::shipped().config());
    }

    #[test]
    fn training_is_reproducible_reports_progress_and_can_be_stopped() {
        let training = RaterTraining {
            steps: 12,
            batch: 8,
            width: 8,
            patch_depth: 1,
            hidden: 16,
            warmup_steps: 3,
            ..RaterTraining::default()
        };
        let run = |stop_at: Option<usize>| {
            let mut reports = Vec::new();
            let result = train_rater(&training, &Backend::Cpu, 5, &mut |progress| {
                reports.push((progress.step, progress.loss));
                Some(progress.step) != stop_at
            });
            (result, reports)
        };
        let (first, reports) = run(None);
        let first = first.unwrap();
        assert_eq!(reports.iter().map(|r| r.0).collect::<Vec<_>>(), [5, 10, 12]);
        assert!(reports.iter().all(|r| r.1.is_finite()) && first.final_loss.is_finite());
        let (second, _) = run(None);
        // The safetensors header's metadata order may differ; the tensors must not.
        let tensors = |bytes: &[u8]| gpu::model::HostWeights::from_safetensors(bytes).unwrap();
        assert!(tensors(&second.unwrap().weights) == tensors(&first.weights), "same options, same weights");
        let rater = first.rater().unwrap();
        assert_eq!(rater.feature_width(), 16);
        let (stopped, _) = run(Some(5));
        assert!(matches!(stopped, Err(RaterError::Cancelled { completed: 5, total: 12 })));
        let bad = RaterTraining { no_object_share: 1.5, ..training.clone() };
        assert!(matches!(train_rater(&bad, &Backend::Cpu, 1, &mut |_| true), Err(RaterError::InvalidTraining(_))));
        assert_eq!(RaterTraining::from_json(&training.to_json()).unwrap(), training);
    }

    #[test]
    fn training_and_held_out_renders_never_share_a_seed_and_follow_the_stated_mix() {
        let training = RaterTraining::default();
        let examples: Vec<Example> = (0..600).map(|i| training.example(i)).collect();
        assert!(examples.iter().all(|e| e.render_seed < HELD_OUT_SEEDS));
        assert!(held_out_examples(Condition::Clean, 50, 1).iter().all(|e| e.render_seed >= HELD_OUT_SEEDS));
        let share = |test: &dyn Fn(&Example) -> bool| {
            examples.iter().filter(|e| test(e)).count() as f64 / examples.len() as f64
        };
        // Four standard errors at n = 600: about 0.077 for 1/3, 0.082 for 1/2.
        let empty = share(&|e| e.scene.concept.is_none());
        let corrupted = share(&|e| e.severity > 0.0);
        assert!((empty - 1.0 / 3.0).abs() < 0.077, "no-object share {empty}");
        assert!((corrupted - 0.5).abs() < 0.082, "corrupted share {corrupted}");
        // Half the damaged ones are malformed, and they are the smooth ones.
        let damaged: Vec<&Example> = examples.iter().filter(|e| e.severity > 0.0).collect();
        let (malformed, corrupted): (Vec<&Example>, Vec<&Example>) = damaged.iter().partition(|e| e.malformed);
        let malformed_share = malformed.len() as f64 / damaged.len() as f64;
        assert!((malformed_share - 0.5).abs() < 0.12, "malformed share of the damaged {malformed_share}");
        assert!(corrupted.iter().all(|e| !e.malformed) && examples.iter().all(|e| e.severity > 0.0 || !e.malformed));
        let mean_roughness = |set: &[&Example]| set.iter().map(|e| roughness(&e.image)).sum::<f32>() / set.len() as f32;
        assert!(mean_roughness(&malformed) * 2.0 < mean_roughness(&corrupted));
        let (images, targets) = training.batch(3);
        assert_eq!(images.len(), training.batch * IMAGE_VALUES);
        assert_eq!(targets.len(), training.batch * OUTPUTS);
        let example = training.example(3 * training.batch as u64);
        assert_eq!(&targets[..OUTPUTS], &example.targets()[..]);
        assert_eq!(&images[..IMAGE_VALUES], &example.image.to_chw_f32()[..]);
    }

    #[test]
    fn spearman_ranks_with_ties() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert!((spearman(&a, &[10.0, 20.0, 30.0, 40.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&a, &[9.0, 4.0, 1.0, 0.0]) + 1.0).abs() < 1e-12);
        // Ranks of [1, 1, 2, 3] are [0.5, 0.5, 2, 3]; of a, [0, 1, 2, 3].
        let expected = {
            let (x, y) = ([0.5, 0.5, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]);
            let (mx, my) = (1.5, 1.5);
            let c: f64 = x.iter().zip(&y).map(|(a, b)| (a - mx) * (b - my)).sum();
            let vx: f64 = x.iter().map(|a| (a - mx) * (a - mx)).sum();
            let vy: f64 = y.iter().map(|b| (b - my) * (b - my)).sum();
            c / (vx * vy).sqrt()
        };
        assert!((spearman(&[1.0, 1.0, 2.0, 3.0], &a) - expected).abs() < 1e-12);
        assert!(spearman(&[1.0, 1.0], &[1.0, 2.0]).is_nan());
    }
}
