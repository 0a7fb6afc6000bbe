//! LoRA training of a Stable Diffusion UNet on thitl's kernels, as diffusers'
//! `train_text_to_image_lora.py` does it with PEFT: the UNet frozen, low-rank updates on the
//! attention projections (`y += alpha/r · (x Aᵀ) Bᵀ`), the clean latents noised at random
//! timesteps with the checkpoint's schedule, the loss the mean squared error against the noise
//! (`epsilon`) or the velocity (`v_prediction`), gradients clipped to a global norm, AdamW. Micro
//! batches accumulate gradients before a step, so an SD-size batch fits.
//!
//! The adapter is kept as PEFT names it (`unet.<module>.lora_A.weight` `[r, in]`,
//! `….lora_B.weight` `[out, r]`) and written in the formats other tools load ([`export`]).

use std::collections::HashMap;

use crate::cpu::AdamW;
use crate::device::ImageBackward;
use crate::kernels::elementwise::Elementwise;

use super::lora::LoraAdapter;
use super::nn::LoraParams;
use super::scheduler::{Prediction, SchedulerConfig};
use super::unet::Unet;

pub mod export;
pub use export::{AdapterTensor, AdapterTensors};

/// The projections diffusers' LoRA training script adapts.
pub const DEFAULT_TARGETS: [&str; 4] = ["to_q", "to_k", "to_v", "to_out.0"];

/// Shape of the adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSettings {
    /// Rank r.
    pub rank: usize,
    /// Alpha (the update is scaled by `alpha / r`).
    pub alpha: f32,
    /// Projection names adapted in every attention layer (`to_q`, `to_k`, `to_v`, `to_out.0`).
    pub targets: Vec<String>,
}

impl Default for LoraSettings {
    fn default() -> Self {
        LoraSettings { rank: 4, alpha: 4.0, targets: DEFAULT_TARGETS.iter().map(|t| t.to_string()).collect() }
    }
}

/// Where the adapter's first values come from.
pub enum LoraInit<'a> {
    /// PEFT's default: A uniform in ±1/√in (Kaiming with a = √5), B zero, from this seed.
    Seeded(u64),
    /// An existing adapter (PEFT, diffusers or kohya names) continues training.
    Adapter(&'a LoraAdapter),
}

/// One trained tensor (A or B of one module) with its gradient and AdamW moments.
pub struct LoraTensor<D: ImageBackward> {
    /// PEFT/diffusers key, e.g. `unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight`.
    pub key: String,
    /// `[r, in]` (A) or `[out, r]` (B).
    pub shape: [usize; 2],
    value: D::Buffer,
    grad: D::Buffer,
    m: D::Buffer,
    v: D::Buffer,
}

impl<D: ImageBackward> LoraTensor<D> {
    fn len(&self) -> usize {
        self.shape[0] * self.shape[1]
    }
}

/// One micro-batch: clean latents (already scaled by the VAE's scaling factor), the noise, the
/// integer timesteps and the text conditioning.
pub struct TrainBatch<'a> {
    /// `batch × 4 × height × width`.
    pub latents: &'a [f32],
    /// Same shape as `latents`.
    pub noise: &'a [f32],
    /// One per image, in `0..train_steps`.
    pub timesteps: &'a [u32],
    /// `batch × context_len × cross_attention_dim` (the text encoder's last hidden state).
    pub context: &'a [f32],
    /// Tokens per prompt.
    pub context_len: usize,
    /// Images.
    pub batch: usize,
    /// Latent height.
    pub height: usize,
    /// Latent width.
    pub width: usize,
}

/// Errors of a training step.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Inputs that do not fit together.
    #[error("{0}")]
    Invalid(String),
    /// The device failed.
    #[error(transparent)]
    Gpu(#[from] crate::GpuError),
}

/// A UNet with a LoRA adapter being trained.
pub struct LoraTrainer<D: ImageBackward> {
    unet: Unet<D>,
    settings: LoraSettings,
    tensors: Vec<LoraTensor<D>>,
    hyper: AdamW,
    step: u32,
    alphas_cumprod: Vec<f32>,
    prediction: Prediction,
    sum_of_squares: D::Buffer,
}

impl<D: ImageBackward> LoraTrainer<D> {
    /// Attaches an adapter to every attention projection named in `settings.targets`.
    pub fn new(
        device: &D,
        mut unet: Unet<D>,
        scheduler: &SchedulerConfig,
        settings: LoraSettings,
        init: LoraInit<'_>,
        hyper: AdamW,
    ) -> Result<Self, TrainError> {
        if settings.rank == 0 || !(settings.alpha.is_finite() && settings.alpha > 0.0) {
            return Err(TrainError::Invalid(format!(
                "LoRA rank {} and alpha {}: both must be positive",
                settings.rank, settings.alpha
            )));
        }
        let from_adapter: Option<HashMap<String, &super::lora::LoraModule>> = match &init {
            LoraInit::Adapter(adapter) => Some(
                adapter
                    .modules(super::lora::Target::Unet)
                    .iter()
                    .map(|m| {
                        let name = m
                            .module
                            .strip_prefix("lora_unet_")
                            .map(str::to_string)
                            .unwrap_or(m.module.replace('.', "_"));
                        (name, m)
                    })
                    .collect(),
            ),
            LoraInit::Seeded(_) => None,
        };
        let mut rng = crate::rng::SplitMix64::new(match init {
            LoraInit::Seeded(seed) => seed,
            LoraInit::Adapter(_) => 0,
        });
        let (rank, scale) = (settings.rank, settings.alpha / settings.rank as f32);
        let mut tensors = Vec::new();
        let mut used = 0;
        for (prefix, attention) in unet.attentions_mut() {
            for (name, linear) in attention.projections_mut() {
                if !settings.targets.iter().any(|t| t == name) {
                    continue;
                }
                let module = format!("{prefix}.{name}");
                let (inputs, outputs) = (linear.inputs, linear.outputs);
                let (a, b, module_scale) = match &from_adapter {
                    Some(modules) => {
                        let found = modules.get(&module.replace('.', "_")).ok_or_else(|| {
                            TrainError::Invalid(format!("the adapter to continue from has no {module}"))
                        })?;
                        if found.down.shape != [rank, inputs] || found.up.shape != [outputs, rank] {
                            return Err(TrainError::Invalid(format!(
                                "{module}: the adapter's A {:?} and B {:?} do not fit rank {rank} and the layer's {inputs} → {outputs}",
                                found.down.shape, found.up.shape
                            )));
                        }
                        used += 1;
                        (found.down.data.clone(), found.up.data.clone(), found.scale)
                    }
                    None => {
                        let bound = 1.0 / (inputs as f64).sqrt();
                        let uniform =
                            |rng: &mut crate::rng::SplitMix64| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                        let a = (0..rank * inputs).map(|_| ((uniform(&mut rng) * 2.0 - 1.0) * bound) as f32).collect();
                        (a, vec![0.0; outputs * rank], scale)
                    }
                };
                if (module_scale - scale).abs() > 1e-6 * scale {
                    return Err(TrainError::Invalid(format!(
                        "{module}: the adapter's alpha/r is {module_scale}, the settings' {scale}"
                    )));
                }
                let tensor = |key: String, shape: [usize; 2], values: &[f32]| LoraTensor::<D> {
                    key,
                    shape,
                    value: device.upload(values),
                    grad: device.zeros(values.len()),
                    m: device.zeros(values.len()),
                    v: device.zeros(values.len()),
                };
                let ta = tensor(format!("unet.{module}.lora_A.weight"), [rank, inputs], &a);
                let tb = tensor(format!("unet.{module}.lora_B.weight"), [outputs, rank], &b);
                linear.lora = Some(LoraParams {
                    a: ta.value.clone(),
                    b: tb.value.clone(),
                    grad_a: ta.grad.clone(),
                    grad_b: tb.grad.clone(),
                    rank,
                    scale,
                });
                tensors.push(ta);
                tensors.push(tb);
            }
        }
        if tensors.is_empty() {
            return Err(TrainError::Invalid(format!(
                "no attention projection of this UNet is named {:?}",
                settings.targets
            )));
        }
        if let Some(modules) = &from_adapter
            && used != modules.len()
        {
            return Err(TrainError::Invalid(format!(
                "the adapter to continue from has {} UNet modules; {used} of them are attention projections named {:?}",
                modules.len(),
                settings.targets
            )));
        }
        Ok(LoraTrainer {
            unet,
            settings,
            tensors,
            hyper,
            step: 0,
            alphas_cumprod: scheduler.alphas_cumprod(),
            prediction: scheduler.prediction,
            sum_of_squares: device.zeros(1),
        })
    }

    /// The adapter's settings.
    pub fn settings(&self) -> &LoraSettings {
        &self.settings
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u32 {
        self.step
    }

    /// The UNet with the adapter attached (its forward pass applies it).
    pub fn unet(&self) -> &Unet<D> {
        &self.unet
    }

    /// The noised latents and the regression target of a batch, as diffusers computes them in
    /// f32: `x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε`; target ε, or `v = √ᾱ_t·ε − √(1−ᾱ_t)·x₀`.
    pub fn noised(&self, batch: &TrainBatch<'_>) -> Result<(Vec<f32>, Vec<f32>), TrainError> {
        let per_image = 4 * batch.height * batch.width;
        let len = batch.batch * per_image;
        if batch.latents.len() != len || batch.noise.len() != len || batch.timesteps.len() != batch.batch {
            return Err(TrainError::Invalid(format!(
                "a batch of {} latents of 4×{}×{} needs {len} latent and noise values and {} timesteps; got {}, {} and {}",
                batch.batch,
                batch.height,
                batch.width,
                batch.batch,
                batch.latents.len(),
                batch.noise.len(),
                batch.timesteps.len()
            )));
        }
        let (mut noisy, mut target) = (vec![0f32; len], vec![0f32; len]);
        for (i, &t) in batch.timesteps.iter().enumerate() {
            let ac = *self.alphas_cumprod.get(t as usize).ok_or_else(|| {
                TrainError::Invalid(format!(
                    "timestep {t} is outside the schedule's {} steps",
                    self.alphas_cumprod.len()
                ))
            })?;
            let (a, s) = (ac.sqrt(), (1.0 - ac).sqrt());
            let range = i * per_image..(i + 1) * per_image;
            for j in range {
                let (x0, e) = (batch.latents[j], batch.noise[j]);
                noisy[j] = a * x0 + s * e;
                target[j] = match self.prediction {
                    Prediction::Epsilon => e,
                    Prediction::V => a * e - s * x0,
                };
            }
        }
        Ok((noisy, target))
    }

    /// Forward and backward on one micro-batch: adds `weight ·` its gradients to the
    /// accumulated ones (weight `1/n` for n micro-batches per step) and returns its loss (the
    /// mean squared error over all its values).
    pub fn accumulate(&self, device: &D, batch: &TrainBatch<'_>, weight: f32) -> Result<f32, TrainError> {
        let (noisy, target) = self.noised(batch)?;
        let dim = self.unet.config().cross_attention_dim;
        if batch.context.len() != batch.batch * batch.context_len * dim {
            return Err(TrainError::Invalid(format!(
                "the text conditioning holds {} values; {} prompts of {} tokens × {dim} need {}",
                batch.context.len(),
                batch.batch,
                batch.context_len,
                batch.batch * batch.context_len * dim
            )));
        }
        let timesteps: Vec<f32> = batch.timesteps.iter().map(|&t| t as f32).collect();
        let latents = device.upload(&noisy);
        let context = device.upload(batch.context);
        let (prediction, cache) = self
            .unet
            .forward_cached(
                device,
                &latents,
                batch.batch,
                batch.height,
                batch.width,
                &timesteps,
                &context,
                batch.context_len,
            )
            .map_err(TrainError::Invalid)?;
        let len = noisy.len();
        let target = device.upload(&target);
        let loss = device.zeros(1);
        device.sum_of_squares(&prediction, Some(&target), len, 1.0 / len as f32, &loss, 0, false);
        // ∂(weight · mean (p − t)²)/∂p = 2·weight/len · (p − t)
        let k = 2.0 * weight / len as f32;
        let d_prediction = device.output(len);
        device.elementwise(
            Elementwise::Combine { s0: k, s1: -k },
            Some(&prediction),
            Some(&target),
            None,
            &d_prediction,
            len,
        );
        self.unet.backward(device, &cache, &d_prediction);
        Ok(device.download(&loss, 1)?[0])
    }

    /// The global L2 norm of the accumulated gradients.
    pub fn grad_norm(&self, device: &D) -> Result<f32, TrainError> {
        self.sum_grad_squares(device);
        Ok(device.download(&self.sum_of_squares, 1)?[0].sqrt())
    }

    fn sum_grad_squares(&self, device: &D) {
        for (i, tensor) in self.tensors.iter().enumerate() {
            device.sum_of_squares(&tensor.grad, None, tensor.len(), 1.0, &self.sum_of_squares, 0, i > 0);
        }
    }

    /// One AdamW step on the accumulated gradients (clipped to the global norm), then clears
    /// them.
    pub fn step(&mut self, device: &D) {
        self.step += 1;
        self.sum_grad_squares(device);
        for tensor in &self.tensors {
            device.adamw(
                &self.hyper,
                self.step,
                &tensor.grad,
                &self.sum_of_squares,
                &tensor.value,
                &tensor.m,
                &tensor.v,
                tensor.len(),
            );
            device.clear(&tensor.grad, tensor.len());
        }
    }

    /// The accumulated gradients, by key (for tests and diagnostics).
    pub fn gradients(&self, device: &D) -> Result<Vec<(String, Vec<f32>)>, TrainError> {
        self.tensors.iter().map(|t| Ok((t.key.clone(), device.download(&t.grad, t.len())?))).collect()
    }

    /// The adapter's current values: (PEFT key, shape, values).
    pub fn adapter(&self, device: &D) -> Result<Vec<AdapterTensor>, TrainError> {
        self.tensors.iter().map(|t| Ok((t.key.clone(), t.shape, device.download(&t.value, t.len())?))).collect()
    }
}
