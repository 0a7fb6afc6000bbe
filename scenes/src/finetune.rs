//! LoRA fine-tuning of a [`BaseModel`] on chosen images: the fine-tune stage of T-HITL.
//!
//! ```text
//! examples (prompt, image)  ─┐
//! prior (prompt, image)     ─┼─> fine_tune ──> FineTuned { adapter, losses } ──> BaseModel::with_adapter
//! FineTuneSettings          ─┘
//! ```
//!
//! Key design decisions:
//! - An example pairs an image round 1 accepted with the *original* training prompt (not the
//!   neutral form it was generated from), so the model learns that this prompt gives this
//!   picture: a person without the degrading concept.
//! - Prior preservation by batch share: with weight λ, a share λ/(1+λ) of every batch comes from
//!   the prior set (the base model's own images of unrelated prompts). In expectation that is the
//!   DreamBooth objective `L_examples + λ·L_prior` scaled by 1/(1+λ) — the same gradient
//!   direction, with no second forward pass.
//! - Only the adapter trains (the base weights are frozen), with the base recipe's Min-SNR
//!   weighting; the run is a function of the settings and the inputs (deterministic on one
//!   backend).

use gpu::Engine;
use gpu::cpu::AdamW;
use gpu::model::{HostAdapter, LoraConfig, LoraTarget, LossWeighting, TrainBatch, TrainMode};

use crate::base::{BaseError, BaseModel, Flow, prompt_ids, safetensors_metadata};
use crate::image::{IMAGE_SIZE, Image};
use crate::rng::{Rng, derive_seed};

const STREAM_INIT: u64 = 11;
const STREAM_BATCH: u64 = 12;
const STREAM_NOISE: u64 = 13;

/// An example as the model reads it: prompt ids and the image in `[-1, 1]`.
type Encoded = (Vec<u32>, Vec<f32>);

/// One training pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The prompt the model should answer with this image.
    pub prompt: String,
    /// The image.
    pub image: Image,
}

/// How to fine-tune.
#[derive(Debug, Clone, PartialEq)]
pub struct FineTuneSettings {
    /// The adapter's rank, alpha and target modules.
    pub lora: LoraConfig,
    /// Optimiser steps.
    pub steps: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak AdamW learning rate (linear warm-up over the first tenth, cosine decay to a tenth).
    pub learning_rate: f32,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f32,
    /// Seed of the adapter's initialisation, the batches and the noise.
    pub seed: u64,
    /// λ: the prior set's share of each batch is λ/(1+λ) (0: no prior preservation).
    pub prior_weight: f32,
    /// Min-SNR-γ weighting of the loss (`None`: uniform).
    pub min_snr_gamma: Option<f32>,
    /// Steps between progress reports (the last step is always reported).
    pub progress_every: usize,
}

impl Default for FineTuneSettings {
    /// Rank 8 on every attention and MLP matrix, 300 steps of 32 images at 2·10⁻³, λ = 1.
    fn default() -> Self {
        FineTuneSettings {
            lora: LoraConfig { rank: 8, alpha: 8.0, targets: LoraTarget::ALL.to_vec() },
            steps: 300,
            batch_size: 32,
            learning_rate: 2e-3,
            weight_decay: 0.0,
            seed: 1,
            prior_weight: 1.0,
            min_snr_gamma: Some(5.0),
            progress_every: 10,
        }
    }
}

impl FineTuneSettings {
    fn check(&self) -> Result<(), BaseError> {
        let bad = |problem: &str| Err(BaseError::InvalidConfig(problem.to_string()));
        if self.lora.rank == 0 || self.lora.targets.is_empty() {
            return bad("the adapter needs a positive rank and at least one target module");
        }
        if self.steps == 0 || self.batch_size < 2 {
            return bad("fine-tuning needs at least one step and two images per step");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad("the fine-tune learning rate must be positive");
        }
        if !(self.prior_weight.is_finite() && self.prior_weight >= 0.0) {
            return bad("the prior-preservation weight must not be negative");
        }
        if self.min_snr_gamma.is_some_and(|gamma| !(gamma.is_finite() && gamma > 0.0)) {
            return bad("min_snr_gamma must be positive");
        }
        Ok(())
    }

    /// Prior images per batch: the share λ/(1+λ), rounded, leaving at least one example.
    pub fn prior_per_batch(&self, has_prior: bool) -> usize {
        if !has_prior || self.prior_weight == 0.0 {
            return 0;
        }
        let share = f64::from(self.prior_weight) / (1.0 + f64::from(self.prior_weight));
        ((self.batch_size as f64 * share).round() as usize).clamp(1, self.batch_size - 1)
    }

    /// The learning rate of step `step` (from 0).
    pub fn learning_rate_at(&self, step: usize) -> f32 {
        let warmup = (self.steps / 10).max(1);
        if step < warmup {
            return self.learning_rate * (step + 1) as f32 / warmup as f32;
        }
        let progress = (step - warmup) as f32 / (self.steps - warmup).max(1) as f32;
        let floor = 0.1 * self.learning_rate;
        floor + (self.learning_rate - floor) * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos())
    }
}

/// Where a fine-tune stands.
#[derive(Debug, Clone, PartialEq)]
pub struct FineTuneProgress {
    /// Steps done.
    pub step: usize,
    /// Steps in the run.
    pub steps: usize,
    /// Mean loss since the previous report.
    pub loss: f32,
}

/// A finished fine-tune.
#[derive(Debug, Clone)]
pub struct FineTuned {
    /// The trained adapter (attach it with [`BaseModel::with_adapter`]).
    pub adapter: HostAdapter,
    /// Mean loss over the last tenth of the steps.
    pub final_loss: f32,
    /// The reported losses, in order.
    pub loss_curve: Vec<FineTuneProgress>,
}

/// The safetensors metadata key of a stored adapter's PEFT `adapter_config.json`.
pub const ADAPTER_CONFIG_METADATA_KEY: &str = "thitl.peft_adapter_config";

/// An adapter as one blob: PEFT-named safetensors, its `adapter_config.json` in the metadata.
pub fn adapter_to_safetensors(adapter: &HostAdapter) -> Result<Vec<u8>, BaseError> {
    let metadata =
        std::collections::HashMap::from([(ADAPTER_CONFIG_METADATA_KEY.to_string(), adapter.adapter_config_json())]);
    Ok(adapter.weights.to_safetensors(Some(metadata))?)
}

/// Reads a blob written by [`adapter_to_safetensors`].
pub fn adapter_from_safetensors(bytes: &[u8]) -> Result<HostAdapter, BaseError> {
    let metadata = safetensors_metadata(bytes)?;
    let config = metadata.get(ADAPTER_CONFIG_METADATA_KEY).ok_or_else(|| {
        BaseError::InvalidConfig(format!("the adapter carries no `{ADAPTER_CONFIG_METADATA_KEY}` metadata"))
    })?;
    Ok(HostAdapter::from_peft(config, bytes)?)
}

/// Trains a LoRA adapter on `base` so that each example's prompt gives its image, keeping the
/// prior set's pictures. Prompts with unknown words are refused before any work.
pub fn fine_tune(
    base: &BaseModel,
    examples: &[Example],
    prior: &[Example],
    settings: &FineTuneSettings,
    mut observe: impl FnMut(&FineTuneProgress) -> Flow,
) -> Result<FineTuned, BaseError> {
    settings.check()?;
    if examples.is_empty() {
        return Err(BaseError::InvalidConfig("fine-tuning needs at least one example".to_string()));
    }
    let encode = |set: &[Example]| -> Result<Vec<Encoded>, BaseError> {
        set.iter().map(|example| Ok((prompt_ids(&example.prompt)?, example.image.to_chw_f32()))).collect()
    };
    let (examples, prior) = (encode(examples)?, encode(prior)?);
    let dit = base.config().model.dit_config();
    let adapter = HostAdapter::init(&dit, &settings.lora, derive_seed(settings.seed, STREAM_INIT));
    let mut engine = Engine::new(base.backend(), dit, &base.weights()?, Some(&adapter))?;
    engine.set_trainable(TrainMode::Lora);
    if let Some(gamma) = settings.min_snr_gamma {
        engine.set_loss_weighting(LossWeighting::MinSnr { gamma });
    }
    let prior_count = settings.prior_per_batch(!prior.is_empty());
    let every = settings.progress_every.max(1);
    let (mut curve, mut window, mut tail) = (Vec::new(), Vec::new(), Vec::new());
    let tail_start = settings.steps - (settings.steps / 10).max(1);
    for step in 0..settings.steps {
        let mut draw = Rng::stream(derive_seed(settings.seed, STREAM_BATCH), step as u64);
        let mut images = Vec::with_capacity(settings.batch_size * 3 * IMAGE_SIZE * IMAGE_SIZE);
        let mut ids = Vec::with_capacity(settings.batch_size * crate::MAX_TOKENS);
        for slot in 0..settings.batch_size {
            let set = if slot < prior_count { &prior } else { &examples };
            let (prompt, image) = &set[draw.below(set.len())];
            ids.extend_from_slice(prompt);
            images.extend_from_slice(image);
        }
        let hyper = AdamW {
            lr: settings.learning_rate_at(step),
            weight_decay: settings.weight_decay,
            max_grad_norm: 1.0,
            ..AdamW::default()
        };
        let loss = engine.train_step(
            &TrainBatch { images, ids },
            TrainMode::Lora,
            &hyper,
            derive_seed(derive_seed(settings.seed, STREAM_NOISE), step as u64),
        )?;
        if !loss.is_finite() {
            return Err(BaseError::InvalidConfig(format!(
                "the fine-tune loss diverged ({loss}) at step {}; lower the learning rate",
                step + 1
            )));
        }
        window.push(loss);
        if step >= tail_start {
            tail.push(loss);
        }
        let done = step + 1;
        if done % every == 0 || done == settings.steps {
            let progress = FineTuneProgress {
                step: done,
                steps: settings.steps,
                loss: window.iter().sum::<f32>() / window.len() as f32,
            };
            window.clear();
            let flow = observe(&progress);
            curve.push(progress);
            if flow == Flow::Stop {
                return Err(BaseError::Cancelled { completed: done, total: settings.steps });
            }
        }
    }
    let adapter = engine.adapter()?.expect("the engine was built with an adapter");
    Ok(FineTuned { adapter, final_loss: tail.iter().sum::<f32>() / tail.len().max(1) as f32, loss_curve: curve })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::{BaseConfig, train_base};
    use crate::render;
    use crate::world::{Concept, Group, Scene, Setting};
    use gpu::Backend;

    /// A tiny base model trained for a few steps (seconds).
    fn tiny_base() -> BaseModel {
        let config = BaseConfig { steps: 20, ..BaseConfig::tiny() };
        let trained = train_base(&config, &Backend::Cpu, None, |_| Flow::Continue).expect("trains");
        BaseModel::from_weights(&trained.weights, &config, &Backend::Cpu).expect("loads")
    }

    fn examples(concept: Option<Concept>, count: u64, prompt: &str) -> Vec<Example> {
        (0..count)
            .map(|seed| Example {
                prompt: prompt.to_string(),
                image: render(&Scene { group: Group::Woman, concept, setting: Setting::Beach }, seed),
            })
            .collect()
    }

    fn settings() -> FineTuneSettings {
        FineTuneSettings {
            steps: 30,
            batch_size: 8,
            learning_rate: 1e-2,
            progress_every: 10,
            ..FineTuneSettings::default()
        }
    }

    #[test]
    fn the_adapter_learns_the_examples_and_changes_only_through_lora() {
        let base = tiny_base();
        let prompt = "a photo of a woman at the beach";
        let chosen = examples(None, 16, prompt);
        let prior = examples(Some(Concept::Ball), 16, "a woman with a ball");
        let mut reports = Vec::new();
        let tuned = fine_tune(&base, &chosen, &prior, &settings(), |progress| {
            reports.push(progress.step);
            Flow::Continue
        })
        .expect("fine-tunes");
        assert_eq!(reports, vec![10, 20, 30]);
        let (first, last) = (tuned.loss_curve[0].loss, tuned.final_loss);
        assert!(last < first, "loss {first} → {last}");
        // LoRA B starts at zero: a trained adapter has moved it, and the base weights stay.
        assert!(
            tuned
                .adapter
                .weights
                .tensors
                .iter()
                .filter(|(name, _)| name.contains("lora_B"))
                .any(|(_, (_, values))| values.iter().any(|v| *v != 0.0)),
            "some B matrix moved"
        );
        let tuned_model = base.with_adapter(&tuned.adapter).expect("attaches");
        assert_eq!(tuned_model.weights().expect("weights"), base.weights().expect("weights"));
        let sampling = base.default_settings().clone();
        let before = base.sample(prompt, 2, 5, &sampling).expect("samples");
        let after = tuned_model.sample(prompt, 2, 5, &sampling).expect("samples");
        assert_ne!(before, after, "the adapter changes what the model draws");
        // Stored as one blob and read back, it is the same adapter.
        let bytes = adapter_to_safetensors(&tuned.adapter).expect("serialises");
        let back = adapter_from_safetensors(&bytes).expect("reads back");
        assert_eq!((back.weights, back.config), (tuned.adapter.weights.clone(), tuned.adapter.config.clone()));
        assert!(adapter_from_safetensors(&tuned.adapter.weights.to_safetensors(None).unwrap()).is_err());
        // The same inputs give the same adapter.
        let again = fine_tune(&base, &chosen, &prior, &settings(), |_| Flow::Continue).expect("again");
        assert_eq!(again.adapter.weights, tuned.adapter.weights);
    }

    #[test]
    fn bad_inputs_are_refused_before_any_work() {
        let base = tiny_base();
        let chosen = examples(None, 2, "a woman");
        assert!(matches!(
            fine_tune(&base, &[], &[], &settings(), |_| Flow::Continue),
            Err(BaseError::InvalidConfig(_))
        ));
        let unknown = vec![Example { prompt: "a woman riding a giraffe".into(), ..chosen[0].clone() }];
        assert!(matches!(
            fine_tune(&base, &unknown, &[], &settings(), |_| Flow::Continue),
            Err(BaseError::UnknownWords { .. })
        ));
        let zero_rank = FineTuneSettings { lora: LoraConfig { rank: 0, ..settings().lora }, ..settings() };
        assert!(matches!(
            fine_tune(&base, &chosen, &[], &zero_rank, |_| Flow::Continue),
            Err(BaseError::InvalidConfig(_))
        ));
    }

    #[test]
    fn prior_share_follows_the_weight() {
        let settings = FineTuneSettings { batch_size: 32, ..FineTuneSettings::default() };
        assert_eq!(settings.prior_per_batch(true), 16);
        assert_eq!(settings.prior_per_batch(false), 0);
        let third = FineTuneSettings { prior_weight: 0.5, ..settings.clone() };
        assert_eq!(third.prior_per_batch(true), 11);
        let huge = FineTuneSettings { prior_weight: 1e6, ..settings.clone() };
        assert_eq!(huge.prior_per_batch(true), 31, "at least one example per batch");
        let none = FineTuneSettings { prior_weight: 0.0, ..settings };
        assert_eq!(none.prior_per_batch(true), 0);
    }
}
