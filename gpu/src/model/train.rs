//! Training: batches, the ε-prediction loss and its weighting, and AdamW steps on the full model
//! or its LoRA matrices.

use super::Dit;
use super::config::{DitConfig, alpha_bars};
use super::weights::is_adapter_name;
use crate::context::GpuError;
use crate::device::Device;
use crate::kernels::elementwise::Elementwise;
use crate::kernels::noise::NoiseStream;

/// What a training step updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainMode {
    /// Every base parameter.
    Full,
    /// Only the LoRA matrices (the base is frozen).
    Lora,
}

/// How [`Dit::loss_and_gradients`] weighs each sample's squared ε-error: the loss is the
/// weighted mean, and its gradient is what training follows.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum LossWeighting {
    /// Every timestep counts the same (the DDPM "simple" loss).
    #[default]
    Uniform,
    /// Min-SNR-γ (Hang et al., 2023): a sample at signal-to-noise ratio `snr = ᾱ/(1−ᾱ)` weighs
    /// `min(snr, γ)/snr`, so nearly clean timesteps, whose ε is hardest to guess and matters least
    /// for the picture's layout, stop dominating the gradient.
    MinSnr {
        /// The clamp γ (5 in the paper).
        gamma: f32,
    },
}

impl LossWeighting {
    /// The weight of a sample whose noise level is `alpha_bar`.
    pub fn weight(&self, alpha_bar: f64) -> f32 {
        match *self {
            LossWeighting::Uniform => 1.0,
            LossWeighting::MinSnr { gamma } => {
                let snr = alpha_bar / (1.0 - alpha_bar).max(1e-12);
                (snr.min(f64::from(gamma)) / snr) as f32
            }
        }
    }
}

/// How [`Dit::loss_and_gradients`] draws each sample's timestep `t` in `0..1000`. Serialised
/// as `{"kind": "uniform"}` or `{"kind": "logit_normal", "location": …, "scale": …}`.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TimestepSampling {
    /// Every timestep equally often.
    #[default]
    Uniform,
    /// Logit-normal (as in Esser et al., 2024): `t = ⌊1000·σ(location + scale·z)⌋` with `z`
    /// standard normal, so training concentrates on the middle of the schedule, where the
    /// denoiser decides what the picture holds, and spends little on the nearly pure-noise and
    /// nearly clean ends. `location` 0 puts the median at `t = 500`.
    LogitNormal {
        /// The mean of the normal before the logistic (negative: towards clean timesteps).
        location: f32,
        /// Its standard deviation (larger: closer to uniform in the middle, more at the ends).
        scale: f32,
    },
}

impl TimestepSampling {
    /// The timestep of sample `sample`, drawn from `stream` (a function of both only).
    pub fn timestep(&self, stream: &NoiseStream, sample: u32) -> usize {
        let index = u32::MAX - sample;
        match *self {
            TimestepSampling::Uniform => (stream.bits(index) % 1000) as usize,
            TimestepSampling::LogitNormal { location, scale } => {
                let x = f64::from(location) + f64::from(scale) * f64::from(stream.normal(index));
                let fraction = 1.0 / (1.0 + (-x).exp());
                ((fraction * 1000.0).floor() as usize).min(999)
            }
        }
    }
}

/// One training batch on the host.
#[derive(Debug, Clone)]
pub struct TrainBatch {
    /// Images `[B, C, H, W]` in [-1, 1].
    pub images: Vec<f32>,
    /// Token ids `[B, max_tokens]` (0 = padding; all padding = the null text).
    pub ids: Vec<u32>,
}

impl TrainBatch {
    /// The number of samples, after checking that images and ids agree with `config`.
    pub fn samples(&self, config: &DitConfig) -> Result<usize, GpuError> {
        let count = self.ids.len() / config.max_tokens.max(1);
        if count == 0 || self.ids.len() != count * config.max_tokens || self.images.len() != count * config.image_len()
        {
            return Err(GpuError::Shape(format!(
                "a batch needs [B, {}] ids and [B, {}, {}, {}] images; got {} ids and {} values",
                config.max_tokens,
                config.channels,
                config.image_size,
                config.image_size,
                self.ids.len(),
                self.images.len()
            )));
        }
        if let Some(id) = self.ids.iter().find(|id| **id as usize >= config.vocabulary) {
            return Err(GpuError::Shape(format!("token id {id} is outside the vocabulary of {}", config.vocabulary)));
        }
        Ok(count)
    }
}

impl<D: Device> Dit<D> {
    /// Makes `mode`'s parameters trainable (allocating gradients and moments) and the others
    /// frozen.
    pub fn set_trainable(&mut self, device: &D, mode: TrainMode) {
        self.parameters.set_trainable(device, |parameter| {
            let is_lora = is_adapter_name(&parameter.name);
            match mode {
                TrainMode::Full => !is_lora,
                TrainMode::Lora => is_lora,
            }
        });
    }

    /// The DDPM loss (ε-prediction, MSE) of `batch` and the gradients of the trained parameters
    /// (left in each parameter's gradient buffer); each sample's squared error is weighted by
    /// [`Dit::loss_weighting`]. Timesteps (drawn as [`Dit::timestep_sampling`] says) and noise
    /// come from `seed`. Returns
    /// the one-value loss buffer.
    pub fn loss_and_gradients(
        &self,
        device: &D,
        batch: &TrainBatch,
        mode: TrainMode,
        seed: u64,
    ) -> Result<D::Buffer, GpuError> {
        let config = self.config;
        let count = batch.samples(&config)?;
        let len = count * config.image_len();
        let stream = NoiseStream::new(seed);
        let bars = alpha_bars();
        let timesteps: Vec<f32> =
            (0..count).map(|i| self.timestep_sampling.timestep(&stream, i as u32) as f32).collect();
        let alpha_bar: Vec<f32> = timesteps.iter().map(|t| bars[*t as usize] as f32).collect();
        let x0 = device.upload(&batch.images);
        let noise = device.output(len);
        device.noise(stream, 0, &noise, len);
        let xt = device.output(len);
        let alpha_bar_buffer = device.upload(&alpha_bar);
        device.elementwise(
            Elementwise::AddNoise { per_sample: config.image_len() },
            Some(&x0),
            Some(&noise),
            Some(&alpha_bar_buffer),
            &xt,
            len,
        );
        let (epsilon, cache) = self.forward_internal(device, &xt, &timesteps, &batch.ids, true);
        let cache = cache.expect("cache kept");
        let loss = device.zeros(1);
        let depsilon = device.output(len);
        match self.loss_weighting {
            LossWeighting::Uniform => {
                device.sum_of_squares(&epsilon, Some(&noise), len, 1.0 / len as f32, &loss, 0, false);
                device.elementwise(
                    Elementwise::ScaledDifference { scale: 2.0 / len as f32 },
                    Some(&epsilon),
                    Some(&noise),
                    None,
                    &depsilon,
                    len,
                );
            }
            weighting => {
                // r = √w·(ε̂ − ε); loss = Σ r²/n; gradient = 2/n · √w · r = 2/n · w · (ε̂ − ε).
                let root_weights: Vec<f32> =
                    timesteps.iter().map(|t| weighting.weight(bars[*t as usize]).sqrt()).collect();
                let root_weights = device.upload(&root_weights);
                let per_sample = config.image_len();
                let residual = device.output(len);
                device.elementwise(
                    Elementwise::WeightedDifference { per_sample, scale: 1.0 },
                    Some(&epsilon),
                    Some(&noise),
                    Some(&root_weights),
                    &residual,
                    len,
                );
                device.sum_of_squares(&residual, None, len, 1.0 / len as f32, &loss, 0, false);
                device.elementwise(
                    Elementwise::WeightedDifference { per_sample, scale: 2.0 / len as f32 },
                    Some(&residual),
                    Some(&device.zeros(len)),
                    Some(&root_weights),
                    &depsilon,
                    len,
                );
            }
        }
        self.backward(device, &cache, &depsilon, mode);
        Ok(loss)
    }

    /// One training step: [`Dit::loss_and_gradients`], global-norm clipping and AdamW on the
    /// trained parameters (call [`Dit::set_trainable`] first). Returns the loss before the update.
    pub fn train_step(
        &mut self,
        device: &D,
        batch: &TrainBatch,
        mode: TrainMode,
        hyper: &crate::cpu::AdamW,
        seed: u64,
    ) -> Result<f32, GpuError> {
        let loss = self.loss_and_gradients(device, batch, mode, seed)?;
        self.parameters.adamw_step(device, hyper);
        Ok(device.download(&loss, 1)?[0])
    }

    /// The gradient of a trained parameter (after a [`Dit::train_step`]), `None` for a frozen
    /// one; a name the model does not have is [`GpuError::UnknownParameter`].
    pub fn gradient(&self, device: &D, name: &str) -> Result<Option<Vec<f32>>, GpuError> {
        self.parameters.gradient(device, name)
    }
}
