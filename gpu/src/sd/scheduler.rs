//! The samplers SD checkpoints ship with, on the host (latents are small): DDIM (η ≥ 0), PNDM
//! (PLMS steps, as SD configs set `skip_prk_steps`) and Euler discrete, for `epsilon` and
//! `v_prediction` models, with diffusers' noise schedules and timestep spacings.

use std::path::Path;

use super::config::{ConfigError, ConfigFile};

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The noise ε.
    Epsilon,
    /// v = √ᾱ·ε − √(1−ᾱ)·x₀.
    V,
}

/// The sampler families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerKind {
    /// `DDIMScheduler`.
    Ddim,
    /// `PNDMScheduler` (PLMS).
    Pndm,
    /// `EulerDiscreteScheduler`.
    Euler,
}

impl SchedulerKind {
    /// From a diffusers class name.
    pub fn from_class(class: &str) -> Option<Self> {
        match class {
            "DDIMScheduler" => Some(SchedulerKind::Ddim),
            "PNDMScheduler" => Some(SchedulerKind::Pndm),
            "EulerDiscreteScheduler" => Some(SchedulerKind::Euler),
            _ => None,
        }
    }

    /// From a CLI name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ddim" => Some(SchedulerKind::Ddim),
            "pndm" => Some(SchedulerKind::Pndm),
            "euler" => Some(SchedulerKind::Euler),
            _ => None,
        }
    }
}

/// How inference timesteps are spread over the training steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    /// `arange(0, n) · (T / n)` reversed, plus `steps_offset`.
    Leading,
    /// `arange(T, 0, −T/n) − 1`.
    Trailing,
    /// `linspace(0, T − 1, n)` reversed.
    Linspace,
}

/// A scheduler config (`scheduler/scheduler_config.json`): the parts every sampler shares,
/// which diffusers' `from_config` carries from one sampler to another.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// The class the pipeline ships.
    pub kind: SchedulerKind,
    /// Training steps T.
    pub train_steps: usize,
    /// β schedule start.
    pub beta_start: f64,
    /// β schedule end.
    pub beta_end: f64,
    /// `scaled_linear` (true) or `linear`.
    pub scaled_linear: bool,
    /// What the model predicts.
    pub prediction: Prediction,
    /// Timestep spacing.
    pub spacing: Spacing,
    /// Added to leading timesteps.
    pub steps_offset: usize,
    /// ᾱ after the last step is 1 (else ᾱ₀).
    pub set_alpha_to_one: bool,
    /// Clamp predicted x₀ to ±`clip_sample_range` (DDIM).
    pub clip_sample: Option<f32>,
}

impl SchedulerConfig {
    /// Reads and checks `scheduler_config.json`.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        Self::from_file(ConfigFile::read(path)?)
    }

    /// Checks an already parsed config (`file.path()` names it in messages).
    pub fn from_file(file: ConfigFile) -> Result<Self, ConfigError> {
        let path = file.path().to_path_buf();
        let path = path.as_path();
        let invalid = |message: String| ConfigError::Invalid { path: path.to_path_buf(), message };
        let class = file.str_or("_class_name", "")?;
        let kind = SchedulerKind::from_class(&class).ok_or_else(|| {
            invalid(format!("scheduler class {class:?} is not supported; expected DDIMScheduler, PNDMScheduler or EulerDiscreteScheduler"))
        })?;
        let schedule = file.str_or("beta_schedule", "linear")?;
        let scaled_linear = match schedule.as_str() {
            "scaled_linear" => true,
            "linear" => false,
            other => {
                return Err(invalid(format!(
                    "beta_schedule {other:?} is not supported; expected scaled_linear or linear"
                )));
            }
        };
        let prediction = match file.str_or("prediction_type", "epsilon")?.as_str() {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::V,
            other => {
                return Err(invalid(format!(
                    "prediction_type {other:?} is not supported; expected epsilon or v_prediction"
                )));
            }
        };
        let default_spacing = if kind == SchedulerKind::Euler { "linspace" } else { "leading" };
        let spacing = match file.str_or("timestep_spacing", default_spacing)?.as_str() {
            "leading" => Spacing::Leading,
            "trailing" => Spacing::Trailing,
            "linspace" => Spacing::Linspace,
            other => return Err(invalid(format!("timestep_spacing {other:?} is not supported"))),
        };
        if file.bool_or("thresholding", false)? {
            return Err(invalid("dynamic thresholding is not supported".into()));
        }
        if file.bool_or("rescale_betas_zero_snr", false)? {
            return Err(invalid("rescale_betas_zero_snr is not supported".into()));
        }
        if kind == SchedulerKind::Pndm && !file.bool_or("skip_prk_steps", false)? {
            return Err(invalid("PNDM with Runge-Kutta warm-up steps (skip_prk_steps false) is not supported".into()));
        }
        Ok(SchedulerConfig {
            kind,
            train_steps: file.usize_or("num_train_timesteps", 1000)?,
            beta_start: file.f64_or("beta_start", 0.0001)?,
            beta_end: file.f64_or("beta_end", 0.02)?,
            scaled_linear,
            prediction,
            spacing,
            steps_offset: file.usize_or("steps_offset", 0)?,
            set_alpha_to_one: file.bool_or("set_alpha_to_one", kind != SchedulerKind::Pndm)?,
            clip_sample: (kind == SchedulerKind::Ddim && file.bool_or("clip_sample", true)?)
                .then(|| file.f64_or("clip_sample_range", 1.0).map(|v| v as f32))
                .transpose()?,
        })
    }

    /// ᾱ for every training step, as diffusers computes it in f32 (β from a linspace in f32,
    /// squared for `scaled_linear`; the running product in f32).
    pub fn alphas_cumprod(&self) -> Vec<f32> {
        let n = self.train_steps;
        let (start, end) = if self.scaled_linear {
            (self.beta_start.sqrt(), self.beta_end.sqrt())
        } else {
            (self.beta_start, self.beta_end)
        };
        let mut product = 1f32;
        (0..n)
            .map(|i| {
                let t = if n > 1 { i as f64 / (n - 1) as f64 } else { 0.0 };
                let mut beta = (start + (end - start) * t) as f32;
                if self.scaled_linear {
                    beta *= beta;
                }
                product *= 1.0 - beta;
                product
            })
            .collect()
    }
}

/// Inference timesteps for `steps` steps: integers, highest first.
pub fn timesteps(config: &SchedulerConfig, steps: usize) -> Vec<f64> {
    let t = config.train_steps;
    match config.spacing {
        Spacing::Leading => {
            let ratio = t / steps;
            (0..steps).rev().map(|i| (i * ratio + config.steps_offset) as f64).collect()
        }
        Spacing::Trailing => {
            let ratio = t as f64 / steps as f64;
            (0..steps).map(|i| (t as f64 - i as f64 * ratio).round() - 1.0).collect()
        }
        Spacing::Linspace => (0..steps)
            .rev()
            .map(|i| if steps > 1 { (i as f64 * (t - 1) as f64 / (steps - 1) as f64).round() } else { 0.0 })
            .collect(),
    }
}

/// A sampler mid-run: which timesteps to evaluate, how to scale the model input, and the update.
pub struct Scheduler {
    config: SchedulerConfig,
    kind: SchedulerKind,
    alphas_cumprod: Vec<f32>,
    steps: usize,
    timesteps: Vec<f64>,
    /// Euler: σ per evaluation, then 0.
    sigmas: Vec<f64>,
    /// PNDM: past model outputs, the first sample, and the step counter.
    ets: Vec<Vec<f32>>,
    current: Option<Vec<f32>>,
    counter: usize,
    eta: f32,
}

impl Scheduler {
    /// A sampler of `kind` (the config's own when `None`) with `steps` steps and DDIM's η.
    pub fn new(config: &SchedulerConfig, kind: Option<SchedulerKind>, steps: usize, eta: f32) -> Result<Self, String> {
        if steps == 0 || steps > config.train_steps {
            return Err(format!("steps must be between 1 and {}, got {steps}", config.train_steps));
        }
        if !(eta >= 0.0 && eta.is_finite()) {
            return Err(format!("eta must be ≥ 0, got {eta}"));
        }
        let kind = kind.unwrap_or(config.kind);
        if eta > 0.0 && kind != SchedulerKind::Ddim {
            return Err("eta applies to the DDIM scheduler only".into());
        }
        let alphas_cumprod = config.alphas_cumprod();
        let base = timesteps(config, steps);
        let (timesteps, sigmas) = match kind {
            SchedulerKind::Ddim => (base, Vec::new()),
            SchedulerKind::Pndm => {
                // skip_prk_steps: the leading timesteps with the second-to-last repeated.
                let mut ascending: Vec<f64> = base.iter().rev().copied().collect();
                if ascending.len() >= 2 {
                    let repeated = ascending[ascending.len() - 2];
                    ascending.insert(ascending.len() - 1, repeated);
                }
                (ascending.into_iter().rev().collect(), Vec::new())
            }
            SchedulerKind::Euler => {
                let full: Vec<f64> = alphas_cumprod.iter().map(|&a| ((1.0 - a as f64) / a as f64).sqrt()).collect();
                let mut sigmas: Vec<f64> = base.iter().map(|&t| interpolate(&full, t)).collect();
                sigmas.push(0.0);
                (base, sigmas)
            }
        };
        Ok(Scheduler {
            config: config.clone(),
            kind,
            alphas_cumprod,
            steps,
            timesteps,
            sigmas,
            ets: Vec::new(),
            current: None,
            counter: 0,
            eta,
        })
    }

    /// The timesteps the model is evaluated at, in order.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// The sampler family.
    pub fn kind(&self) -> SchedulerKind {
        self.kind
    }

    /// The factor the initial noise is multiplied by.
    pub fn init_noise_sigma(&self) -> f32 {
        match self.kind {
            SchedulerKind::Euler => {
                let max = self.sigmas.iter().copied().fold(0.0, f64::max);
                match self.config.spacing {
                    Spacing::Linspace | Spacing::Trailing => max as f32,
                    Spacing::Leading => (max * max + 1.0).sqrt() as f32,
                }
            }
            _ => 1.0,
        }
    }

    /// The factor the latents are multiplied by before the model sees them at evaluation `index`.
    pub fn input_scale(&self, index: usize) -> f32 {
        match self.kind {
            SchedulerKind::Euler => (1.0 / (self.sigmas[index] * self.sigmas[index] + 1.0).sqrt()) as f32,
            _ => 1.0,
        }
    }

    fn alpha(&self, t: i64) -> f64 {
        if t >= 0 {
            self.alphas_cumprod[t as usize] as f64
        } else if self.config.set_alpha_to_one {
            1.0
        } else {
            self.alphas_cumprod[0] as f64
        }
    }

    /// One update at evaluation `index` from the model output; `noise` is needed for DDIM with
    /// η > 0 (one standard normal value per latent value).
    pub fn step(
        &mut self,
        index: usize,
        output: &[f32],
        sample: &mut [f32],
        noise: Option<&[f32]>,
    ) -> Result<(), String> {
        if output.len() != sample.len() {
            return Err(format!("model output has {} values, the latents {}", output.len(), sample.len()));
        }
        match self.kind {
            SchedulerKind::Ddim => self.ddim(index, output, sample, noise),
            SchedulerKind::Pndm => {
                self.plms(index, output, sample);
                Ok(())
            }
            SchedulerKind::Euler => {
                self.euler(index, output, sample);
                Ok(())
            }
        }
    }

    fn ratio(&self) -> i64 {
        (self.config.train_steps / self.steps) as i64
    }

    fn ddim(&self, index: usize, output: &[f32], sample: &mut [f32], noise: Option<&[f32]>) -> Result<(), String> {
        let t = self.timesteps[index] as i64;
        let previous = t - self.ratio();
        let (a, a_prev) = (self.alpha(t), self.alpha(previous));
        let (b, b_prev) = (1.0 - a, 1.0 - a_prev);
        let variance = (b_prev / b) * (1.0 - a / a_prev);
        let std = self.eta as f64 * variance.sqrt();
        if std > 0.0 && noise.is_none_or(|n| n.len() != sample.len()) {
            return Err("DDIM with eta > 0 needs one noise value per latent".into());
        }
        let direction = (1.0 - a_prev - std * std).max(0.0).sqrt();
        for (i, (x, &m)) in sample.iter_mut().zip(output).enumerate() {
            let (xv, mv) = (*x as f64, m as f64);
            let (mut x0, eps) = match self.config.prediction {
                Prediction::Epsilon => ((xv - b.sqrt() * mv) / a.sqrt(), mv),
                Prediction::V => (a.sqrt() * xv - b.sqrt() * mv, a.sqrt() * mv + b.sqrt() * xv),
            };
            if let Some(range) = self.config.clip_sample {
                x0 = x0.clamp(-range as f64, range as f64);
            }
            let mut next = a_prev.sqrt() * x0 + direction * eps;
            if std > 0.0 {
                next += std * noise.map_or(0.0, |n| n[i] as f64);
            }
            *x = next as f32;
        }
        Ok(())
    }

    fn plms(&mut self, index: usize, output: &[f32], sample: &mut [f32]) {
        let mut t = self.timesteps[index] as i64;
        let mut previous = t - self.ratio();
        let mut output = output.to_vec();
        if self.counter != 1 {
            if self.ets.len() > 3 {
                self.ets.remove(0);
            }
            self.ets.push(output.clone());
        } else {
            previous = t;
            t += self.ratio();
        }
        let e = &self.ets;
        let n = e.len();
        let combine = |weights: &[f64], scale: f64| -> Vec<f32> {
            (0..output.len())
                .map(|i| {
                    (weights.iter().enumerate().map(|(k, w)| w * e[n - 1 - k][i] as f64).sum::<f64>() / scale) as f32
                })
                .collect()
        };
        if n == 1 && self.counter == 0 {
            output = e[0].clone();
            self.current = Some(sample.to_vec());
        } else if n == 1 && self.counter == 1 {
            output = output.iter().zip(&e[0]).map(|(&m, &p)| (m + p) / 2.0).collect();
            if let Some(current) = self.current.take() {
                sample.copy_from_slice(&current);
            }
        } else if n == 2 {
            output = combine(&[3.0, -1.0], 2.0);
        } else if n == 3 {
            output = combine(&[23.0, -16.0, 5.0], 12.0);
        } else {
            output = combine(&[55.0, -59.0, 37.0, -9.0], 24.0);
        }
        let (a, a_prev) = (self.alpha(t), self.alpha(previous));
        let (b, b_prev) = (1.0 - a, 1.0 - a_prev);
        let coefficient = (a_prev / a).sqrt();
        let denominator = a * b_prev.sqrt() + (a * b * a_prev).sqrt();
        for (x, &m) in sample.iter_mut().zip(&output) {
            let (xv, mut mv) = (*x as f64, m as f64);
            if self.config.prediction == Prediction::V {
                mv = a.sqrt() * mv + b.sqrt() * xv;
            }
            *x = (coefficient * xv - (a_prev - a) * mv / denominator) as f32;
        }
        self.counter += 1;
    }

    fn euler(&self, index: usize, output: &[f32], sample: &mut [f32]) {
        let (sigma, next) = (self.sigmas[index], self.sigmas[index + 1]);
        for (x, &m) in sample.iter_mut().zip(output) {
            let (xv, mv) = (*x as f64, m as f64);
            let x0 = match self.config.prediction {
                Prediction::Epsilon => xv - sigma * mv,
                Prediction::V => mv * (-sigma / (sigma * sigma + 1.0).sqrt()) + xv / (sigma * sigma + 1.0),
            };
            let derivative = (xv - x0) / sigma;
            *x = (xv + derivative * (next - sigma)) as f32;
        }
    }
}

/// Linear interpolation of `table` (indexed 0..len) at `t`.
fn interpolate(table: &[f64], t: f64) -> f64 {
    let t = t.clamp(0.0, (table.len() - 1) as f64);
    let low = t.floor() as usize;
    let high = (low + 1).min(table.len() - 1);
    let frac = t - low as f64;
    table[low] * (1.0 - frac) + table[high] * frac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SchedulerConfig {
        SchedulerConfig {
            kind: SchedulerKind::Ddim,
            train_steps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            scaled_linear: true,
            prediction: Prediction::Epsilon,
            spacing: Spacing::Leading,
            steps_offset: 1,
            set_alpha_to_one: false,
            clip_sample: None,
        }
    }

    /// DDIM with η = 1 is DDPM's ancestral step between its two timesteps: the posterior
    /// q(x_prev | x_t, x̂₀) with ᾱ_t/ᾱ_prev as the step's α (its mean and variance written here
    /// from the DDPM paper, not from the DDIM update).
    #[test]
    fn ddim_with_eta_one_takes_the_ddpm_posterior_step() {
        let config = config();
        let mut scheduler = Scheduler::new(&config, None, 5, 1.0).unwrap();
        let alphas = config.alphas_cumprod();
        let (t, previous) = (801usize, 601usize);
        assert_eq!(scheduler.timesteps()[0], t as f64);
        let (a, a_prev) = (alphas[t] as f64, alphas[previous] as f64);
        let (alpha, beta) = (a / a_prev, 1.0 - a / a_prev);
        let x = [0.7f32, -1.3, 2.1, 0.05];
        let epsilon = [0.2f32, 0.9, -0.4, 1.5];
        let z = [1.1f32, -0.3, 0.6, -2.0];
        let mut sample = x;
        scheduler.step(0, &epsilon, &mut sample, Some(&z)).unwrap();
        for i in 0..4 {
            let x0 = (x[i] as f64 - (1.0 - a).sqrt() * epsilon[i] as f64) / a.sqrt();
            let mean = a_prev.sqrt() * beta / (1.0 - a) * x0 + alpha.sqrt() * (1.0 - a_prev) / (1.0 - a) * x[i] as f64;
            let variance = (1.0 - a_prev) / (1.0 - a) * beta;
            let expected = mean + variance.sqrt() * z[i] as f64;
            assert!((sample[i] as f64 - expected).abs() < 1e-5, "{i}: {} vs {expected}", sample[i]);
        }
    }

    #[test]
    fn eta_needs_noise_and_the_ddim_scheduler() {
        let config = config();
        let mut scheduler = Scheduler::new(&config, None, 5, 0.5).unwrap();
        let mut sample = [0.0f32; 2];
        assert!(scheduler.step(0, &[0.1, 0.2], &mut sample, None).is_err());
        assert!(Scheduler::new(&config, Some(SchedulerKind::Euler), 5, 0.5).is_err());
        assert!(Scheduler::new(&config, None, 0, 0.0).is_err());
        assert!(Scheduler::new(&config, None, 5, -1.0).is_err());
    }
}
