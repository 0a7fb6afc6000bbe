//! The pixel-space DiT (Peebles & Xie 2023) with adaLN-Zero blocks and text conditioning, written
//! once over [`Device`]. One file per job: `config` (shapes, LoRA configuration, noise schedule),
//! `weights` (host weights, safetensors, PEFT adapters), `forward`, `backward`, `train` (loss and
//! AdamW steps) and `sample` (DDIM). Parameter names and design notes: `gpu/README.md`.

mod backward;
mod config;
mod forward;
mod sample;
mod train;
mod weights;

use std::collections::BTreeMap;

pub use config::{DitConfig, LoraConfig, LoraTarget, TextPooling, alpha_bars};
pub use forward::position_embedding;
pub use sample::{SampleOptions, eta_stream};
pub use train::{LossWeighting, TimestepSampling, TrainBatch, TrainMode};
pub use weights::{HostAdapter, HostWeights, WeightsError};
use weights::{is_adapter_name, lora_shape};

use crate::context::GpuError;
use crate::device::Device;
pub use crate::optim::Parameter;
use crate::optim::ParameterSet;

#[derive(Debug, Clone, Copy)]
struct Linear {
    weight: usize,
    bias: usize,
    out: usize,
    inp: usize,
    lora: Option<(usize, usize)>,
}

#[derive(Debug, Clone, Copy)]
struct Block {
    qkv: Linear,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
    ada: Linear,
}

/// A DiT on a device.
pub struct Dit<D: Device> {
    /// The shape.
    pub config: DitConfig,
    /// The LoRA configuration, if an adapter is attached.
    pub lora: Option<LoraConfig>,
    /// Every parameter (base first, then LoRA matrices), with the AdamW state of the trained ones.
    pub parameters: ParameterSet<D>,
    x_embedder: Linear,
    t_mlp: [Linear; 2],
    y_mlp: [Linear; 2],
    embedding: usize,
    null_text: usize,
    blocks: Vec<Block>,
    final_ada: Linear,
    final_linear: Linear,
    pos_embed: D::Buffer,
    /// How training weighs each sample's ε-error (see [`LossWeighting`]).
    pub loss_weighting: LossWeighting,
    /// How training draws timesteps (see [`TimestepSampling`]).
    pub timestep_sampling: TimestepSampling,
}

impl<D: Device> Dit<D> {
    /// Uploads `weights` (checked against `config`) and, if given, a LoRA adapter.
    pub fn new(
        device: &D,
        config: DitConfig,
        weights: &HostWeights,
        adapter: Option<&HostAdapter>,
    ) -> Result<Self, WeightsError> {
        weights.check(&config)?;
        let mut parameters = ParameterSet::new();
        for (name, shape) in config.parameter_shapes() {
            parameters.add(&name, &shape, device.upload(&weights.tensors[&name].1));
        }
        let mut lora_ids = BTreeMap::new();
        if let Some(adapter) = adapter {
            for block in 0..config.depth {
                for &target in &adapter.config.targets {
                    let (out, inp) = lora_shape(&config, target);
                    let mut ids = [0; 2];
                    for (slot, (matrix, shape)) in
                        [('A', [adapter.config.rank, inp]), ('B', [out, adapter.config.rank])].into_iter().enumerate()
                    {
                        let name = HostAdapter::name(block, target, matrix);
                        let (found, values) = adapter.weights.tensors.get(&name).ok_or_else(|| {
                            WeightsError::Tensor { name: name.clone(), problem: "missing".to_string() }
                        })?;
                        if found[..] != shape[..] {
                            return Err(WeightsError::Tensor {
                                name,
                                problem: format!("shape {found:?}, expected {shape:?}"),
                            });
                        }
                        ids[slot] = parameters.add(&name, &shape, device.upload(values));
                    }
                    lora_ids.insert((block, target), (ids[0], ids[1]));
                }
            }
        }
        // Every base name is there: `weights.check` passed and they were all added above.
        let id = |name: &str| parameters.id(name).expect("a parameter of `parameter_shapes`");
        let linear = |name: &str, lora: Option<(usize, usize)>| {
            let weight = id(&format!("{name}.weight"));
            let shape = &parameters[weight].shape;
            Linear { weight, bias: id(&format!("{name}.bias")), out: shape[0], inp: shape[1..].iter().product(), lora }
        };
        let blocks = (0..config.depth)
            .map(|block| {
                let lora = |target| lora_ids.get(&(block, target)).copied();
                Block {
                    qkv: linear(&format!("blocks.{block}.attn.qkv"), lora(LoraTarget::Qkv)),
                    proj: linear(&format!("blocks.{block}.attn.proj"), lora(LoraTarget::Proj)),
                    fc1: linear(&format!("blocks.{block}.mlp.fc1"), lora(LoraTarget::Fc1)),
                    fc2: linear(&format!("blocks.{block}.mlp.fc2"), lora(LoraTarget::Fc2)),
                    ada: linear(&format!("blocks.{block}.adaLN_modulation.1"), None),
                }
            })
            .collect();
        Ok(Dit {
            config,
            lora: adapter.map(|a| a.config.clone()),
            x_embedder: linear("x_embedder.proj", None),
            t_mlp: [linear("t_embedder.mlp.0", None), linear("t_embedder.mlp.2", None)],
            y_mlp: [linear("y_embedder.mlp.0", None), linear("y_embedder.mlp.2", None)],
            embedding: id("y_embedder.embedding.weight"),
            null_text: id("y_embedder.null_text"),
            blocks,
            final_ada: linear("final_layer.adaLN_modulation.1", None),
            final_linear: linear("final_layer.linear", None),
            pos_embed: device.upload(&position_embedding(&config)),
            parameters,
            loss_weighting: LossWeighting::Uniform,
            timestep_sampling: TimestepSampling::Uniform,
        })
    }

    /// The base weights back on the host (without the adapter).
    pub fn base_weights(&self, device: &D) -> Result<HostWeights, GpuError> {
        self.parameters.to_host(device, |parameter| !is_adapter_name(&parameter.name))
    }

    /// The adapter back on the host.
    pub fn adapter(&self, device: &D) -> Result<Option<HostAdapter>, GpuError> {
        let Some(config) = &self.lora else {
            return Ok(None);
        };
        let weights = self.parameters.to_host(device, |parameter| is_adapter_name(&parameter.name))?;
        Ok(Some(HostAdapter { config: config.clone(), weights }))
    }

    fn value(&self, id: usize) -> &D::Buffer {
        &self.parameters[id].value
    }

    fn grad(&self, id: usize) -> Option<&D::Buffer> {
        self.parameters[id].gradient()
    }
}
