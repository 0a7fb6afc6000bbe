//! A DiT on whichever backend [`Backend`] chose, behind one non-generic type, for callers that
//! do not want to be generic over [`Device`](crate::device::Device).

use crate::context::{Backend, GpuError};
use crate::cpu::AdamW;
use crate::device::{CpuDevice, WgpuDevice};
use crate::model::{
    Dit, DitConfig, HostAdapter, HostWeights, LossWeighting, SampleOptions, TimestepSampling, TrainBatch, TrainMode,
    WeightsError,
};

/// A model and the device it lives on.
pub enum Engine {
    /// On the CPU backend.
    Cpu(CpuDevice<f32>, Box<Dit<CpuDevice<f32>>>),
    /// On wgpu.
    Wgpu(WgpuDevice, Box<Dit<WgpuDevice>>),
}

/// Errors of an [`Engine`].
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The device failed.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// The weights do not fit the configuration.
    #[error(transparent)]
    Weights(#[from] WeightsError),
}

macro_rules! on_device {
    ($engine:expr, |$device:ident, $model:ident| $body:expr) => {
        match $engine {
            Engine::Cpu($device, $model) => $body,
            Engine::Wgpu($device, $model) => $body,
        }
    };
}

impl Engine {
    /// Uploads `weights` (and an adapter) to `backend`.
    pub fn new(
        backend: &Backend,
        config: DitConfig,
        weights: &HostWeights,
        adapter: Option<&HostAdapter>,
    ) -> Result<Self, EngineError> {
        Ok(match backend {
            Backend::Cpu => {
                let device = CpuDevice::new();
                let model = Dit::new(&device, config, weights, adapter)?;
                Engine::Cpu(device, Box::new(model))
            }
            Backend::Wgpu(context) => {
                let device = WgpuDevice::new(context.clone());
                let model = Dit::new(&device, config, weights, adapter)?;
                Engine::Wgpu(device, Box::new(model))
            }
        })
    }

    /// See [`Dit::sample`].
    pub fn sample(
        &self,
        options: &SampleOptions,
        ids: &[u32],
        negative: Option<&[u32]>,
    ) -> Result<Vec<f32>, EngineError> {
        Ok(on_device!(self, |device, model| model.sample(device, options, ids, negative))?)
    }

    /// See [`Dit::sample_with_progress`].
    pub fn sample_with_progress(
        &self,
        options: &SampleOptions,
        ids: &[u32],
        negative: Option<&[u32]>,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Vec<f32>, EngineError> {
        Ok(on_device!(self, |device, model| model.sample_with_progress(device, options, ids, negative, progress))?)
    }

    /// See [`Dit::sample_seeded`].
    pub fn sample_seeded(
        &self,
        options: &SampleOptions,
        ids: &[u32],
        negative: Option<&[u32]>,
        seeds: &[u64],
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Vec<f32>, EngineError> {
        Ok(on_device!(self, |device, model| model.sample_seeded(device, options, ids, negative, seeds, progress))?)
    }

    /// See [`Dit::set_trainable`].
    pub fn set_trainable(&mut self, mode: TrainMode) {
        on_device!(self, |device, model| model.set_trainable(device, mode))
    }

    /// Sets [`Dit::loss_weighting`] for the following training steps.
    pub fn set_loss_weighting(&mut self, weighting: LossWeighting) {
        on_device!(self, |_device, model| model.loss_weighting = weighting)
    }

    /// Sets [`Dit::timestep_sampling`] for the following training steps.
    pub fn set_timestep_sampling(&mut self, sampling: TimestepSampling) {
        on_device!(self, |_device, model| model.timestep_sampling = sampling)
    }

    /// See [`Dit::train_step`].
    pub fn train_step(
        &mut self,
        batch: &TrainBatch,
        mode: TrainMode,
        hyper: &AdamW,
        seed: u64,
    ) -> Result<f32, EngineError> {
        Ok(on_device!(self, |device, model| model.train_step(device, batch, mode, hyper, seed))?)
    }

    /// See [`Dit::base_weights`].
    pub fn base_weights(&self) -> Result<HostWeights, EngineError> {
        Ok(on_device!(self, |device, model| model.base_weights(device))?)
    }

    /// See [`Dit::adapter`].
    pub fn adapter(&self) -> Result<Option<HostAdapter>, EngineError> {
        Ok(on_device!(self, |device, model| model.adapter(device))?)
    }

    /// The model's configuration.
    pub fn config(&self) -> DitConfig {
        on_device!(self, |_device, model| model.config)
    }
}

// Workers move engines across threads.
const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<Engine>();
};
