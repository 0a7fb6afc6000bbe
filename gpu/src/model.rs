//! The pixel-space DiT (Peebles & Xie 2023) with adaLN-Zero blocks and text conditioning, its
//! backward pass, LoRA, and the host-side weights (safetensors with PyTorch-style names).
//!
//! Parameter names follow the reference PyTorch module in `gpu/reference/dit.py`:
//! `x_embedder.proj.{weight,bias}` (a conv weight `[D, C, p, p]`), `t_embedder.mlp.{0,2}.*`,
//! `y_embedder.embedding.weight` (`[V, D]`, row 0 = padding), `y_embedder.null_text` (`[D]`),
//! `y_embedder.mlp.{0,2}.*`, `blocks.{i}.attn.{qkv,proj}.*`, `blocks.{i}.mlp.{fc1,fc2}.*`,
//! `blocks.{i}.adaLN_modulation.1.*`, `final_layer.adaLN_modulation.1.*`, `final_layer.linear.*`.
//! Linear weights are `[out, in]` as in `torch.nn.Linear`.

use std::collections::BTreeMap;

use crate::context::GpuError;
use crate::cpu::{Chunk, Patches};
use crate::device::Device;
use crate::kernels::adaln::AdaLn;
use crate::kernels::elementwise::Elementwise;
use crate::kernels::embed::TextEmbedding;
use crate::kernels::matmul::{Activation, Layout, Matmul};
use crate::kernels::noise::NoiseStream;

/// The shape of a DiT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DitConfig {
    /// Image side in pixels.
    pub image_size: usize,
    /// Image channels.
    pub channels: usize,
    /// Patch side.
    pub patch: usize,
    /// Hidden width D.
    pub width: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads (D must be a multiple).
    pub heads: usize,
    /// MLP hidden = D · mlp_ratio.
    pub mlp_ratio: usize,
    /// Token vocabulary (id 0 is padding).
    pub vocabulary: usize,
    /// Token slots per prompt.
    pub max_tokens: usize,
    /// Width of the sinusoidal timestep embedding.
    pub frequency_dim: usize,
}

impl DitConfig {
    /// A tiny configuration for tests.
    pub fn tiny() -> Self {
        DitConfig {
            image_size: 8,
            channels: 3,
            patch: 2,
            width: 16,
            depth: 2,
            heads: 2,
            mlp_ratio: 2,
            vocabulary: 12,
            max_tokens: 4,
            frequency_dim: 16,
        }
    }

    /// A small configuration (32×32 RGB, patch 4, width 128, depth 4), the size of the model the
    /// CPU backend can train on a laptop.
    pub fn small() -> Self {
        DitConfig {
            image_size: 32,
            channels: 3,
            patch: 4,
            width: 128,
            depth: 4,
            heads: 4,
            mlp_ratio: 4,
            vocabulary: 512,
            max_tokens: 16,
            frequency_dim: 256,
        }
    }

    /// The DiT-S-sized configuration used by the benchmarks (32×32 RGB, patch 2).
    pub fn dit_s() -> Self {
        DitConfig {
            image_size: 32,
            channels: 3,
            patch: 2,
            width: 384,
            depth: 12,
            heads: 6,
            mlp_ratio: 4,
            vocabulary: 512,
            max_tokens: 16,
            frequency_dim: 256,
        }
    }

    /// Tokens per image.
    pub fn tokens(&self) -> usize {
        (self.image_size / self.patch).pow(2)
    }
    /// Values per patch.
    pub fn patch_len(&self) -> usize {
        self.channels * self.patch * self.patch
    }
    /// Values per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.image_size * self.image_size
    }
    /// MLP hidden width.
    pub fn hidden(&self) -> usize {
        self.width * self.mlp_ratio
    }
    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.width / self.heads
    }
    fn geometry(&self, batch: usize) -> Patches {
        Patches { batch, channels: self.channels, size: self.image_size, patch: self.patch }
    }

    /// Every parameter's name and shape, in a fixed order.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, f, h, p) = (self.width, self.frequency_dim, self.hidden(), self.patch);
        let mut shapes = vec![
            ("x_embedder.proj.weight".to_string(), vec![d, self.channels, p, p]),
            ("x_embedder.proj.bias".to_string(), vec![d]),
            ("t_embedder.mlp.0.weight".to_string(), vec![d, f]),
            ("t_embedder.mlp.0.bias".to_string(), vec![d]),
            ("t_embedder.mlp.2.weight".to_string(), vec![d, d]),
            ("t_embedder.mlp.2.bias".to_string(), vec![d]),
            ("y_embedder.embedding.weight".to_string(), vec![self.vocabulary, d]),
            ("y_embedder.null_text".to_string(), vec![d]),
            ("y_embedder.mlp.0.weight".to_string(), vec![d, d]),
            ("y_embedder.mlp.0.bias".to_string(), vec![d]),
            ("y_embedder.mlp.2.weight".to_string(), vec![d, d]),
            ("y_embedder.mlp.2.bias".to_string(), vec![d]),
        ];
        for block in 0..self.depth {
            let prefix = format!("blocks.{block}");
            for (name, out, inp) in [
                ("attn.qkv", 3 * d, d),
                ("attn.proj", d, d),
                ("mlp.fc1", h, d),
                ("mlp.fc2", d, h),
                ("adaLN_modulation.1", 6 * d, d),
            ] {
                shapes.push((format!("{prefix}.{name}.weight"), vec![out, inp]));
                shapes.push((format!("{prefix}.{name}.bias"), vec![out]));
            }
        }
        shapes.push(("final_layer.adaLN_modulation.1.weight".to_string(), vec![2 * d, d]));
        shapes.push(("final_layer.adaLN_modulation.1.bias".to_string(), vec![2 * d]));
        shapes.push(("final_layer.linear.weight".to_string(), vec![self.patch_len(), d]));
        shapes.push(("final_layer.linear.bias".to_string(), vec![self.patch_len()]));
        shapes
    }
}

/// Where LoRA adapters go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoraTarget {
    /// `attn.qkv`
    Qkv,
    /// `attn.proj`
    Proj,
    /// `mlp.fc1`
    Fc1,
    /// `mlp.fc2`
    Fc2,
}

impl LoraTarget {
    /// Every module an adapter can target, in block order.
    pub const ALL: [LoraTarget; 4] = [LoraTarget::Qkv, LoraTarget::Proj, LoraTarget::Fc1, LoraTarget::Fc2];

    /// The module name inside a block.
    pub fn module(self) -> &'static str {
        match self {
            LoraTarget::Qkv => "attn.qkv",
            LoraTarget::Proj => "attn.proj",
            LoraTarget::Fc1 => "mlp.fc1",
            LoraTarget::Fc2 => "mlp.fc2",
        }
    }
}

/// A LoRA configuration: `W x + (alpha / rank) · B A x`, B = 0 at init.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Rank r.
    pub rank: usize,
    /// Alpha.
    pub alpha: f32,
    /// Adapted modules.
    pub targets: Vec<LoraTarget>,
}

impl LoraConfig {
    /// alpha / rank.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }
}

/// Weights on the host: name → (shape, values).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostWeights {
    /// The tensors.
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

/// Errors reading or writing weights.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The safetensors bytes are malformed.
    #[error("safetensors: {0}")]
    Format(String),
    /// A tensor is missing or has the wrong shape or dtype.
    #[error("tensor {name}: {problem}")]
    Tensor {
        /// The tensor's name.
        name: String,
        /// What is wrong.
        problem: String,
    },
}

impl HostWeights {
    /// Serialises to safetensors (f32, little-endian).
    pub fn to_safetensors(
        &self,
        metadata: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Vec<u8>, WeightsError> {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(name, (shape, values))| {
                (name.clone(), shape.clone(), values.iter().flat_map(|v| v.to_le_bytes()).collect())
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(name, shape, data)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .map(|view| (name.clone(), view))
                    .map_err(|error| WeightsError::Format(error.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        safetensors::serialize(views, metadata).map_err(|error| WeightsError::Format(error.to_string()))
    }

    /// Parses safetensors holding f32 tensors.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self, WeightsError> {
        let parsed =
            safetensors::SafeTensors::deserialize(bytes).map_err(|error| WeightsError::Format(error.to_string()))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in parsed.tensors() {
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(WeightsError::Tensor { name, problem: format!("dtype {:?}, expected F32", view.dtype()) });
            }
            let values = view
                .data()
                .chunks_exact(4)
                .map(|bytes| f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
                .collect();
            tensors.insert(name, (view.shape().to_vec(), values));
        }
        Ok(HostWeights { tensors })
    }

    /// Checks that every parameter of `config` is present with its shape.
    pub fn check(&self, config: &DitConfig) -> Result<(), WeightsError> {
        for (name, shape) in config.parameter_shapes() {
            match self.tensors.get(&name) {
                None => {
                    return Err(WeightsError::Tensor { name, problem: "missing".to_string() });
                }
                Some((found, _)) if *found != shape => {
                    return Err(WeightsError::Tensor { name, problem: format!("shape {found:?}, expected {shape:?}") });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// DiT's initialisation, deterministic in `seed`: Xavier-uniform linears with zero biases,
    /// N(0, 0.02) for the timestep MLP, token table and null text, and zeros for every adaLN
    /// modulation and the final linear (adaLN-Zero: each block starts as the identity).
    pub fn init(config: &DitConfig, seed: u64) -> Self {
        let stream = NoiseStream::new(seed);
        let mut offset = 0u32;
        let mut draw = |len: usize, scale: f32| {
            let mut values = vec![0.0; len];
            stream.fill(offset, scale, &mut values);
            offset = offset.wrapping_add(len as u32);
            values
        };
        let mut tensors = BTreeMap::new();
        for (name, shape) in config.parameter_shapes() {
            let len: usize = shape.iter().product();
            let values = if name.ends_with(".bias")
                || name.contains("adaLN_modulation")
                || name.starts_with("final_layer.linear")
            {
                vec![0.0; len]
            } else if name.starts_with("t_embedder")
                || name.starts_with("y_embedder.embedding")
                || name == "y_embedder.null_text"
            {
                draw(len, 0.02)
            } else {
                // Xavier uniform has variance 2/(fan_in+fan_out); a normal of that variance is
                // used (the counter-based generator gives normals).
                let fan_out = shape[0];
                let fan_in: usize = shape[1..].iter().product();
                draw(len, (2.0 / (fan_in + fan_out) as f32).sqrt())
            };
            tensors.insert(name, (shape, values));
        }
        HostWeights { tensors }
    }

    /// Every tensor replaced by N(0, scale²) values (tests: no zero-initialised block).
    pub fn randomized(config: &DitConfig, seed: u64, scale: f32) -> Self {
        let stream = NoiseStream::new(seed);
        let mut offset = 0u32;
        let mut tensors = BTreeMap::new();
        for (name, shape) in config.parameter_shapes() {
            let len: usize = shape.iter().product();
            let mut values = vec![0.0; len];
            stream.fill(offset, scale, &mut values);
            offset = offset.wrapping_add(len as u32);
            tensors.insert(name, (shape, values));
        }
        HostWeights { tensors }
    }
}

/// A LoRA adapter on the host, PEFT-compatible names:
/// `base_model.model.blocks.{i}.{module}.lora_{A,B}.weight`.
#[derive(Debug, Clone, PartialEq)]
pub struct HostAdapter {
    /// Its configuration.
    pub config: LoraConfig,
    /// The A and B matrices by PEFT name.
    pub weights: HostWeights,
}

impl HostAdapter {
    /// PEFT name of a LoRA matrix.
    pub fn name(block: usize, target: LoraTarget, matrix: char) -> String {
        format!("base_model.model.blocks.{block}.{}.lora_{matrix}.weight", target.module())
    }

    /// A fresh adapter: A ~ N(0, 1/in), B = 0.
    pub fn init(model: &DitConfig, config: &LoraConfig, seed: u64) -> Self {
        let stream = NoiseStream::new(seed);
        let mut offset = 0u32;
        let mut tensors = BTreeMap::new();
        for block in 0..model.depth {
            for &target in &config.targets {
                let (out, inp) = lora_shape(model, target);
                let mut a = vec![0.0; config.rank * inp];
                stream.fill(offset, 1.0 / (inp as f32).sqrt(), &mut a);
                offset = offset.wrapping_add(a.len() as u32);
                tensors.insert(Self::name(block, target, 'A'), (vec![config.rank, inp], a));
                tensors.insert(Self::name(block, target, 'B'), (vec![out, config.rank], vec![0.0; out * config.rank]));
            }
        }
        HostAdapter { config: config.clone(), weights: HostWeights { tensors } }
    }

    /// PEFT's `adapter_config.json`.
    pub fn adapter_config_json(&self) -> String {
        let modules: Vec<&str> = self.config.targets.iter().map(|t| t.module()).collect();
        let pattern = format!(r"blocks\.\d+\.({})", modules.join("|").replace('.', r"\."));
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": null,
            "r": self.config.rank,
            "lora_alpha": self.config.alpha,
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": false,
            "init_lora_weights": true,
            "target_modules": pattern,
            "base_model_name_or_path": null,
            "inference_mode": true,
        })
        .to_string()
    }

    /// Reads an adapter saved in PEFT's layout: `adapter_config.json` and
    /// `adapter_model.safetensors`.
    pub fn from_peft(adapter_config_json: &str, safetensors: &[u8]) -> Result<Self, WeightsError> {
        Ok(HostAdapter {
            config: Self::parse_config(adapter_config_json)?,
            weights: HostWeights::from_safetensors(safetensors)?,
        })
    }

    /// Reads `adapter_config.json` (rank, alpha, targets).
    pub fn parse_config(json: &str) -> Result<LoraConfig, WeightsError> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|error| WeightsError::Format(error.to_string()))?;
        let bad = |problem: &str| WeightsError::Tensor {
            name: "adapter_config.json".to_string(),
            problem: problem.to_string(),
        };
        let rank = value["r"].as_u64().ok_or_else(|| bad("no r"))? as usize;
        let alpha = value["lora_alpha"].as_f64().ok_or_else(|| bad("no lora_alpha"))? as f32;
        let modules = match &value["target_modules"] {
            serde_json::Value::String(pattern) => pattern.clone(),
            serde_json::Value::Array(list) => list.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join("|"),
            _ => return Err(bad("no target_modules")),
        };
        let targets: Vec<LoraTarget> = [LoraTarget::Qkv, LoraTarget::Proj, LoraTarget::Fc1, LoraTarget::Fc2]
            .into_iter()
            .filter(|t| modules.contains(&t.module().replace('.', r"\.")) || modules.contains(t.module()))
            .collect();
        if rank == 0 || targets.is_empty() {
            return Err(bad("rank 0 or no known target"));
        }
        Ok(LoraConfig { rank, alpha, targets })
    }

    /// The base weights with `W += (alpha/r) · B A` for every adapted module.
    pub fn merge_into(&self, model: &DitConfig, base: &HostWeights) -> Result<HostWeights, WeightsError> {
        let mut merged = base.clone();
        let find = |weights: &HostWeights, name: String, shape: [usize; 2]| match weights.tensors.get(&name) {
            Some((found, _)) if found[..] == shape[..] => Ok(()),
            Some((found, _)) => {
                Err(WeightsError::Tensor { name, problem: format!("shape {found:?}, expected {shape:?}") })
            }
            None => Err(WeightsError::Tensor { name, problem: "missing".to_string() }),
        };
        for block in 0..model.depth {
            for &target in &self.config.targets {
                let (out, inp) = lora_shape(model, target);
                let rank = self.config.rank;
                find(&self.weights, Self::name(block, target, 'A'), [rank, inp])?;
                find(&self.weights, Self::name(block, target, 'B'), [out, rank])?;
                find(base, format!("blocks.{block}.{}.weight", target.module()), [out, inp])?;
            }
        }
        let scale = self.config.scale();
        for block in 0..model.depth {
            for &target in &self.config.targets {
                let (out, inp) = lora_shape(model, target);
                let a = &self.weights.tensors[&Self::name(block, target, 'A')].1;
                let b = &self.weights.tensors[&Self::name(block, target, 'B')].1;
                let weight = &mut merged
                    .tensors
                    .get_mut(&format!("blocks.{block}.{}.weight", target.module()))
                    .expect("checked above")
                    .1;
                let mut spec = Matmul::new(out, inp, self.config.rank, false, false);
                spec.alpha = scale;
                spec.accumulate = true;
                spec.run_cpu(b, a, None, weight);
            }
        }
        Ok(merged)
    }
}

fn lora_shape(model: &DitConfig, target: LoraTarget) -> (usize, usize) {
    let (d, h) = (model.width, model.hidden());
    match target {
        LoraTarget::Qkv => (3 * d, d),
        LoraTarget::Proj => (d, d),
        LoraTarget::Fc1 => (h, d),
        LoraTarget::Fc2 => (d, h),
    }
}

/// A parameter on a device, with its gradient and AdamW moments when it is trained.
pub struct Parameter<D: Device> {
    /// PyTorch-style (or PEFT) name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Values.
    pub value: D::Buffer,
    /// Gradient, first and second moments (trained parameters only).
    pub training: Option<[D::Buffer; 3]>,
}

impl<D: Device> Parameter<D> {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// True for an empty tensor.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

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

/// What a training step updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainMode {
    /// Every base parameter.
    Full,
    /// Only the LoRA matrices (the base is frozen).
    Lora,
}

/// A DiT on a device.
pub struct Dit<D: Device> {
    /// The shape.
    pub config: DitConfig,
    /// The LoRA configuration, if an adapter is attached.
    pub lora: Option<LoraConfig>,
    /// Every parameter (base first, then LoRA matrices).
    pub parameters: Vec<Parameter<D>>,
    index: BTreeMap<String, usize>,
    x_embedder: Linear,
    t_mlp: [Linear; 2],
    y_mlp: [Linear; 2],
    embedding: usize,
    null_text: usize,
    blocks: Vec<Block>,
    final_ada: Linear,
    final_linear: Linear,
    pos_embed: D::Buffer,
    step: u32,
    /// How training weighs each sample's ε-error (see [`LossWeighting`]).
    pub loss_weighting: LossWeighting,
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

/// The fixed 2-D sin-cos position embedding of DiT, `[tokens, width]`: for token (row i,
/// column j) the first half embeds j and the second half i, each as
/// `[sin(pos·ω_k), cos(pos·ω_k)]`, `ω_k = 10000^(−k/(D/4))`.
pub fn position_embedding(config: &DitConfig) -> Vec<f32> {
    let (grid, d) = (config.image_size / config.patch, config.width);
    let quarter = d / 4;
    let mut out = vec![0.0f32; grid * grid * d];
    for i in 0..grid {
        for j in 0..grid {
            let row = &mut out[(i * grid + j) * d..][..d];
            for (half, pos) in [(0, j), (1, i)] {
                for k in 0..quarter {
                    let omega = 1.0 / 10000f64.powf(k as f64 / quarter as f64);
                    let angle = pos as f64 * omega;
                    row[half * d / 2 + k] = angle.sin() as f32;
                    row[half * d / 2 + quarter + k] = angle.cos() as f32;
                }
            }
        }
    }
    out
}

/// The DDPM noise schedule: linear β from 1e-4 to 0.02 over 1000 steps; ᾱ_t = Π (1 − β).
pub fn alpha_bars() -> Vec<f64> {
    let steps = 1000;
    let mut product = 1.0;
    (0..steps)
        .map(|t| {
            let beta = 1e-4 + (0.02 - 1e-4) * t as f64 / (steps - 1) as f64;
            product *= 1.0 - beta;
            product
        })
        .collect()
}

/// Activations a backward pass needs, for one batch.
struct Cache<D: Device> {
    batch: usize,
    tokens: D::Buffer,
    c: D::Buffer,
    silu_c: D::Buffer,
    null_mask: D::Buffer,
    ids: D::Ids,
    t_hidden: D::Buffer,
    t_freq: D::Buffer,
    pooled: D::Buffer,
    y_hidden: D::Buffer,
    blocks: Vec<BlockCache<D>>,
    final_mod: D::Buffer,
    final_normalized: D::Buffer,
    final_rstd: D::Buffer,
    final_modulated: D::Buffer,
}

struct BlockCache<D: Device> {
    modulation: D::Buffer,
    normalized1: D::Buffer,
    rstd1: D::Buffer,
    modulated1: D::Buffer,
    qkv: D::Buffer,
    probabilities: D::Buffer,
    attention: D::Buffer,
    projected: D::Buffer,
    normalized2: D::Buffer,
    rstd2: D::Buffer,
    modulated2: D::Buffer,
    pre_gelu: D::Buffer,
    hidden: D::Buffer,
    mlp_out: D::Buffer,
    lora_inner: BTreeMap<LoraTarget, D::Buffer>,
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
    /// Uploads `weights` (checked against `config`) and, if given, a LoRA adapter.
    pub fn new(
        device: &D,
        config: DitConfig,
        weights: &HostWeights,
        adapter: Option<&HostAdapter>,
    ) -> Result<Self, WeightsError> {
        weights.check(&config)?;
        let mut parameters = Vec::new();
        let mut index = BTreeMap::new();
        let mut add = |name: &str, shape: &[usize], values: &[f32]| {
            index.insert(name.to_string(), parameters.len());
            parameters.push(Parameter {
                name: name.to_string(),
                shape: shape.to_vec(),
                value: device.upload(values),
                training: None,
            });
            parameters.len() - 1
        };
        for (name, shape) in config.parameter_shapes() {
            add(&name, &shape, &weights.tensors[&name].1);
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
                        ids[slot] = add(&name, &shape, values);
                    }
                    lora_ids.insert((block, target), (ids[0], ids[1]));
                }
            }
        }
        let linear = |name: &str, lora: Option<(usize, usize)>| {
            let weight = index[&format!("{name}.weight")];
            let shape = &parameters[weight].shape;
            Linear {
                weight,
                bias: index[&format!("{name}.bias")],
                out: shape[0],
                inp: shape[1..].iter().product(),
                lora,
            }
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
            embedding: index["y_embedder.embedding.weight"],
            null_text: index["y_embedder.null_text"],
            blocks,
            final_ada: linear("final_layer.adaLN_modulation.1", None),
            final_linear: linear("final_layer.linear", None),
            pos_embed: device.upload(&position_embedding(&config)),
            parameters,
            index,
            step: 0,
            loss_weighting: LossWeighting::Uniform,
        })
    }

    /// The base weights back on the host (without the adapter).
    pub fn base_weights(&self, device: &D) -> Result<HostWeights, GpuError> {
        let mut tensors = BTreeMap::new();
        for (name, shape) in self.config.parameter_shapes() {
            let parameter = &self.parameters[self.index[&name]];
            tensors.insert(name, (shape, device.download(&parameter.value, parameter.len())?));
        }
        Ok(HostWeights { tensors })
    }

    /// The adapter back on the host.
    pub fn adapter(&self, device: &D) -> Result<Option<HostAdapter>, GpuError> {
        let Some(config) = &self.lora else {
            return Ok(None);
        };
        let mut tensors = BTreeMap::new();
        for parameter in self.parameters.iter().filter(|p| p.name.starts_with("base_model.")) {
            tensors.insert(
                parameter.name.clone(),
                (parameter.shape.clone(), device.download(&parameter.value, parameter.len())?),
            );
        }
        Ok(Some(HostAdapter { config: config.clone(), weights: HostWeights { tensors } }))
    }

    fn value(&self, id: usize) -> &D::Buffer {
        &self.parameters[id].value
    }

    fn grad(&self, id: usize) -> Option<&D::Buffer> {
        self.parameters[id].training.as_ref().map(|t| &t[0])
    }

    /// y = x Wᵀ + b (+ LoRA), then `activation`; `lora_inner` receives x Aᵀ when there is LoRA.
    #[allow(clippy::too_many_arguments)]
    fn linear_forward(
        &self,
        device: &D,
        layer: Linear,
        rows: usize,
        x: &D::Buffer,
        y: &D::Buffer,
        activation: Activation,
        lora_inner: Option<&D::Buffer>,
    ) {
        let base = Matmul::new(rows, layer.out, layer.inp, false, true);
        match (layer.lora, &self.lora) {
            (Some((a, b)), Some(config)) => {
                device.matmul(
                    &base.with_epilogue(true, Activation::None),
                    x,
                    self.value(layer.weight),
                    Some(self.value(layer.bias)),
                    y,
                );
                let scratch;
                let inner = match lora_inner {
                    Some(buffer) => buffer,
                    None => {
                        scratch = device.zeros(rows * config.rank);
                        &scratch
                    }
                };
                device.matmul(&Matmul::new(rows, config.rank, layer.inp, false, true), x, self.value(a), None, inner);
                let mut up = Matmul::new(rows, layer.out, config.rank, false, true);
                up.alpha = config.scale();
                up.accumulate = true;
                device.matmul(&up, inner, self.value(b), None, y);
                match activation {
                    Activation::None => {}
                    Activation::Gelu | Activation::Silu => {
                        let copy = device.zeros(rows * layer.out);
                        device.copy(y, &copy, rows * layer.out);
                        let op = if activation == Activation::Gelu { Elementwise::Gelu } else { Elementwise::Silu };
                        device.elementwise(op, Some(&copy), None, None, y, rows * layer.out);
                    }
                }
            }
            _ => device.matmul(
                &base.with_epilogue(true, activation),
                x,
                self.value(layer.weight),
                Some(self.value(layer.bias)),
                y,
            ),
        }
    }

    /// Backward of a linear layer without activation: writes `dx` (if given) and the gradients
    /// of the trained parameters. `ones` holds at least `rows` ones.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        device: &D,
        layer: Linear,
        rows: usize,
        x: &D::Buffer,
        dy: &D::Buffer,
        dx: Option<&D::Buffer>,
        lora_inner: Option<&D::Buffer>,
        ones: &D::Buffer,
    ) {
        if let Some(dx) = dx {
            device.matmul(
                &Matmul::new(rows, layer.inp, layer.out, false, false),
                dy,
                self.value(layer.weight),
                None,
                dx,
            );
        }
        if let Some(dw) = self.grad(layer.weight) {
            device.matmul(&Matmul::new(layer.out, layer.inp, rows, true, false), dy, x, None, dw);
        }
        if let Some(db) = self.grad(layer.bias) {
            device.matmul(&Matmul::new(1, layer.out, rows, false, false), ones, dy, None, db);
        }
        if let (Some((a, b)), Some(config), Some(inner)) = (layer.lora, &self.lora, lora_inner) {
            let (rank, scale) = (config.rank, config.scale());
            let g = device.zeros(rows * rank);
            device.matmul(&Matmul::new(rows, rank, layer.out, false, false), dy, self.value(b), None, &g);
            if let Some(db) = self.grad(b) {
                device.matmul(
                    &Matmul { alpha: scale, ..Matmul::new(layer.out, rank, rows, true, false) },
                    dy,
                    inner,
                    None,
                    db,
                );
            }
            if let Some(da) = self.grad(a) {
                device.matmul(
                    &Matmul { alpha: scale, ..Matmul::new(rank, layer.inp, rows, true, false) },
                    &g,
                    x,
                    None,
                    da,
                );
            }
            if let Some(dx) = dx {
                let spec =
                    Matmul { alpha: scale, accumulate: true, ..Matmul::new(rows, layer.inp, rank, false, false) };
                device.matmul(&spec, &g, self.value(a), None, dx);
            }
        }
    }

    fn attention_specs(&self, batch: usize) -> [Matmul; 6] {
        let (t, d, heads, dh) = (self.config.tokens(), self.config.width, self.config.heads, self.config.head_dim());
        let packed = |offset| Layout::row_major(3 * d).at(offset).batched(t * 3 * d, dh);
        let packed_t = |offset| Layout::transposed(3 * d).at(offset).batched(t * 3 * d, dh);
        let scores = Layout::row_major(t).batched(heads * t * t, t * t);
        let scores_t = Layout::transposed(t).batched(heads * t * t, t * t);
        let heads_out = Layout::row_major(d).batched(t * d, dh);
        let alpha = 1.0 / (dh as f32).sqrt();
        let base = Matmul {
            m: t,
            n: t,
            k: dh,
            batch_outer: batch,
            batch_inner: heads,
            a: packed(0),
            b: packed_t(d),
            c: scores,
            alpha,
            bias: None,
            activation: Activation::None,
            accumulate: false,
        };
        [
            // S = α Q Kᵀ
            base,
            // O = P V
            Matmul { n: dh, k: t, a: scores, b: packed(2 * d), c: heads_out, alpha: 1.0, ..base },
            // dP = dO Vᵀ
            Matmul { n: t, k: dh, a: heads_out, b: packed_t(2 * d), c: scores, alpha: 1.0, ..base },
            // dV = Pᵀ dO
            Matmul { n: dh, k: t, a: scores_t, b: heads_out, c: packed(2 * d), alpha: 1.0, ..base },
            // dQ = α dS K
            Matmul { n: dh, k: t, a: scores, b: packed(d), c: packed(0), ..base },
            // dK = α dSᵀ Q
            Matmul { n: dh, k: t, a: scores_t, b: packed(0), c: packed(d), ..base },
        ]
    }

    /// The conditioning vector c = t_embed(t) + y_embed(ids) for `batch` samples; fills the
    /// cache's conditioning fields.
    fn forward_internal(
        &self,
        device: &D,
        x: &D::Buffer,
        timesteps: &[f32],
        ids: &[u32],
        keep: bool,
    ) -> (D::Buffer, Option<Cache<D>>) {
        let config = &self.config;
        let batch = timesteps.len();
        let (t, d, h) = (config.tokens(), config.width, config.hidden());
        let rows = batch * t;
        let geometry = config.geometry(batch);
        // Patch embedding + position embedding.
        let patches = device.zeros(rows * config.patch_len());
        device.patchify(geometry, x, &patches);
        let tokens = device.zeros(rows * d);
        self.linear_forward(device, self.x_embedder, rows, &patches, &tokens, Activation::None, None);
        device.elementwise(
            Elementwise::AddBroadcast { period: t * d },
            Some(&self.pos_embed),
            None,
            None,
            &tokens,
            rows * d,
        );
        // Timestep embedding → MLP.
        let steps = device.upload(timesteps);
        let t_freq = device.zeros(batch * config.frequency_dim);
        device.timestep_embedding(&steps, &t_freq, batch, config.frequency_dim);
        let t_hidden = device.zeros(batch * d);
        self.linear_forward(device, self.t_mlp[0], batch, &t_freq, &t_hidden, Activation::Silu, None);
        let c = device.zeros(batch * d);
        self.linear_forward(device, self.t_mlp[1], batch, &t_hidden, &c, Activation::None, None);
        // Text: mean of token embeddings, or the learned null text for an empty prompt → MLP.
        let shape = TextEmbedding { batch, max_tokens: config.max_tokens, width: d, vocabulary: config.vocabulary };
        let device_ids = device.upload_ids(ids);
        let pooled = device.zeros(batch * d);
        device.embed_mean(shape, &device_ids, self.value(self.embedding), &pooled);
        let mask: Vec<f32> =
            ids.chunks(config.max_tokens).map(|s| if s.iter().all(|id| *id == 0) { 1.0 } else { 0.0 }).collect();
        let null_mask = device.upload(&mask);
        device.elementwise(
            Elementwise::MaskedRowAdd { period: d },
            Some(&null_mask),
            Some(self.value(self.null_text)),
            None,
            &pooled,
            batch * d,
        );
        let y_hidden = device.zeros(batch * d);
        self.linear_forward(device, self.y_mlp[0], batch, &pooled, &y_hidden, Activation::Silu, None);
        let y_embed = device.zeros(batch * d);
        self.linear_forward(device, self.y_mlp[1], batch, &y_hidden, &y_embed, Activation::None, None);
        device.elementwise(Elementwise::AddBroadcast { period: batch * d }, Some(&y_embed), None, None, &c, batch * d);
        let silu_c = device.zeros(batch * d);
        device.elementwise(Elementwise::Silu, Some(&c), None, None, &silu_c, batch * d);

        let specs = self.attention_specs(batch);
        let shape = AdaLn { batch, tokens: t, width: d };
        let chunk = |i: usize| Chunk { offset: i * d, stride: 6 * d };
        let mut caches = Vec::new();
        let hidden_state = tokens.clone();
        for block in &self.blocks {
            let modulation = device.zeros(batch * 6 * d);
            self.linear_forward(device, block.ada, batch, &silu_c, &modulation, Activation::None, None);
            let (normalized1, rstd1, modulated1) =
                (device.output(rows * d), device.output(rows), device.output(rows * d));
            device.layernorm(&hidden_state, &normalized1, &rstd1, rows, d);
            device.modulate(shape, &normalized1, &modulation, chunk(0), chunk(1), &modulated1);
            let mut lora_inner = BTreeMap::new();
            let mut inner = |target: LoraTarget, layer: Linear| {
                layer.lora.zip(self.lora.as_ref()).map(|_| {
                    let buffer = device.zeros(rows * self.lora.as_ref().map_or(0, |c| c.rank));
                    lora_inner.insert(target, buffer.clone());
                    buffer
                })
            };
            let qkv = device.output(rows * 3 * d);
            let qkv_inner = inner(LoraTarget::Qkv, block.qkv);
            self.linear_forward(device, block.qkv, rows, &modulated1, &qkv, Activation::None, qkv_inner.as_ref());
            let scores = device.output(batch * config.heads * t * t);
            device.matmul(&specs[0], &qkv, &qkv, None, &scores);
            let probabilities = device.output(batch * config.heads * t * t);
            device.softmax(&scores, &probabilities, batch * config.heads * t, t, 1.0);
            let attention = device.output(rows * d);
            device.matmul(&specs[1], &probabilities, &qkv, None, &attention);
            let projected = device.output(rows * d);
            let proj_inner = inner(LoraTarget::Proj, block.proj);
            self.linear_forward(
                device,
                block.proj,
                rows,
                &attention,
                &projected,
                Activation::None,
                proj_inner.as_ref(),
            );
            device.gated_residual(shape, &hidden_state, &projected, &modulation, chunk(2));

            let (normalized2, rstd2, modulated2) =
                (device.output(rows * d), device.output(rows), device.output(rows * d));
            device.layernorm(&hidden_state, &normalized2, &rstd2, rows, d);
            device.modulate(shape, &normalized2, &modulation, chunk(3), chunk(4), &modulated2);
            let pre_gelu = device.output(rows * h);
            let hidden = device.output(rows * h);
            let fc1_inner = inner(LoraTarget::Fc1, block.fc1);
            if keep {
                self.linear_forward(
                    device,
                    block.fc1,
                    rows,
                    &modulated2,
                    &pre_gelu,
                    Activation::None,
                    fc1_inner.as_ref(),
                );
                device.elementwise(Elementwise::Gelu, Some(&pre_gelu), None, None, &hidden, rows * h);
            } else {
                self.linear_forward(
                    device,
                    block.fc1,
                    rows,
                    &modulated2,
                    &hidden,
                    Activation::Gelu,
                    fc1_inner.as_ref(),
                );
            }
            let mlp_out = device.output(rows * d);
            let fc2_inner = inner(LoraTarget::Fc2, block.fc2);
            self.linear_forward(device, block.fc2, rows, &hidden, &mlp_out, Activation::None, fc2_inner.as_ref());
            device.gated_residual(shape, &hidden_state, &mlp_out, &modulation, chunk(5));
            if keep {
                caches.push(BlockCache {
                    modulation,
                    normalized1,
                    rstd1,
                    modulated1,
                    qkv,
                    probabilities,
                    attention,
                    projected,
                    normalized2,
                    rstd2,
                    modulated2,
                    pre_gelu,
                    hidden,
                    mlp_out,
                    lora_inner,
                });
            }
        }
        let final_mod = device.zeros(batch * 2 * d);
        self.linear_forward(device, self.final_ada, batch, &silu_c, &final_mod, Activation::None, None);
        let (final_normalized, final_rstd, final_modulated) =
            (device.output(rows * d), device.output(rows), device.output(rows * d));
        device.layernorm(&hidden_state, &final_normalized, &final_rstd, rows, d);
        let final_chunk = |i: usize| Chunk { offset: i * d, stride: 2 * d };
        device.modulate(shape, &final_normalized, &final_mod, final_chunk(0), final_chunk(1), &final_modulated);
        let out_tokens = device.output(rows * config.patch_len());
        self.linear_forward(device, self.final_linear, rows, &final_modulated, &out_tokens, Activation::None, None);
        let epsilon = device.output(batch * config.image_len());
        device.unpatchify(geometry, &out_tokens, &epsilon);
        let cache = keep.then(|| Cache {
            batch,
            tokens: patches,
            c,
            silu_c,
            null_mask,
            ids: device_ids,
            t_hidden,
            t_freq,
            pooled,
            y_hidden,
            blocks: caches,
            final_mod,
            final_normalized,
            final_rstd,
            final_modulated,
        });
        (epsilon, cache)
    }

    /// ε prediction for images `x` (`[B, C, H, W]`) at `timesteps` with prompts `ids`
    /// (`[B, max_tokens]`).
    pub fn forward(&self, device: &D, x: &D::Buffer, timesteps: &[f32], ids: &[u32]) -> Result<D::Buffer, GpuError> {
        let batch = TrainBatch { images: vec![0.0; timesteps.len() * self.config.image_len()], ids: ids.to_vec() };
        if batch.samples(&self.config)? != timesteps.len() {
            return Err(GpuError::Shape(format!(
                "{} timesteps for {} prompts",
                timesteps.len(),
                ids.len() / self.config.max_tokens
            )));
        }
        Ok(self.forward_internal(device, x, timesteps, ids, false).0)
    }

    /// Gradients of the trained parameters from `depsilon`, the loss gradient w.r.t. the output.
    fn backward(&self, device: &D, cache: &Cache<D>, depsilon: &D::Buffer, mode: TrainMode) {
        let config = &self.config;
        let batch = cache.batch;
        let (t, d, h) = (config.tokens(), config.width, config.hidden());
        let rows = batch * t;
        let geometry = config.geometry(batch);
        let ones = device.upload(&vec![1.0; rows.max(batch)]);
        let full = mode == TrainMode::Full;
        // Final layer.
        let dout = device.output(rows * config.patch_len());
        device.unpatchify_backward(geometry, depsilon, &dout);
        let dmodulated = device.output(rows * d);
        self.linear_backward(
            device,
            self.final_linear,
            rows,
            &cache.final_modulated,
            &dout,
            Some(&dmodulated),
            None,
            &ones,
        );
        let shape = AdaLn { batch, tokens: t, width: d };
        let final_chunk = |i: usize| Chunk { offset: i * d, stride: 2 * d };
        let dnormalized = device.output(rows * d);
        let dfinal_mod = device.zeros(batch * 2 * d);
        device.modulate_backward(
            shape,
            &cache.final_normalized,
            &cache.final_mod,
            final_chunk(0),
            final_chunk(1),
            &dmodulated,
            &dnormalized,
            &dfinal_mod,
        );
        let dh = device.output(rows * d);
        device.layernorm_backward(&cache.final_normalized, &cache.final_rstd, &dnormalized, &dh, rows, d);
        let dsilu_c = device.zeros(batch * d);
        self.linear_backward(device, self.final_ada, batch, &cache.silu_c, &dfinal_mod, Some(&dsilu_c), None, &ones);

        let specs = self.attention_specs(batch);
        let chunk = |i: usize| Chunk { offset: i * d, stride: 6 * d };
        let scratch = device.output(rows * d);
        let scores_len = batch * config.heads * t * t;
        for (block, saved) in self.blocks.iter().zip(&cache.blocks).rev() {
            let dmodulation = device.zeros(batch * 6 * d);
            // MLP branch: h += gate · fc2(gelu(fc1(modulate(LN(h))))).
            let dmlp = device.output(rows * d);
            device.gated_residual_backward(
                shape,
                &saved.mlp_out,
                &saved.modulation,
                chunk(5),
                &dh,
                &dmlp,
                &dmodulation,
            );
            let dhidden = device.output(rows * h);
            self.linear_backward(
                device,
                block.fc2,
                rows,
                &saved.hidden,
                &dmlp,
                Some(&dhidden),
                saved.lora_inner.get(&LoraTarget::Fc2),
                &ones,
            );
            let dpre = device.output(rows * h);
            device.elementwise(Elementwise::GeluBackward, Some(&saved.pre_gelu), Some(&dhidden), None, &dpre, rows * h);
            let dmodulated2 = device.output(rows * d);
            self.linear_backward(
                device,
                block.fc1,
                rows,
                &saved.modulated2,
                &dpre,
                Some(&dmodulated2),
                saved.lora_inner.get(&LoraTarget::Fc1),
                &ones,
            );
            let dnormalized2 = device.output(rows * d);
            device.modulate_backward(
                shape,
                &saved.normalized2,
                &saved.modulation,
                chunk(3),
                chunk(4),
                &dmodulated2,
                &dnormalized2,
                &dmodulation,
            );
            device.layernorm_backward(&saved.normalized2, &saved.rstd2, &dnormalized2, &scratch, rows, d);
            device.elementwise(
                Elementwise::AddBroadcast { period: rows * d },
                Some(&scratch),
                None,
                None,
                &dh,
                rows * d,
            );
            // Attention branch.
            let dprojected = device.output(rows * d);
            device.gated_residual_backward(
                shape,
                &saved.projected,
                &saved.modulation,
                chunk(2),
                &dh,
                &dprojected,
                &dmodulation,
            );
            let dattention = device.output(rows * d);
            self.linear_backward(
                device,
                block.proj,
                rows,
                &saved.attention,
                &dprojected,
                Some(&dattention),
                saved.lora_inner.get(&LoraTarget::Proj),
                &ones,
            );
            let dprobabilities = device.output(scores_len);
            device.matmul(&specs[2], &dattention, &saved.qkv, None, &dprobabilities);
            let dqkv = device.output(rows * 3 * d);
            device.matmul(&specs[3], &saved.probabilities, &dattention, None, &dqkv);
            let dscores = device.output(scores_len);
            device.softmax_backward(&saved.probabilities, &dprobabilities, &dscores, batch * config.heads * t, t, 1.0);
            device.matmul(&specs[4], &dscores, &saved.qkv, None, &dqkv);
            device.matmul(&specs[5], &dscores, &saved.qkv, None, &dqkv);
            let dmodulated1 = device.output(rows * d);
            self.linear_backward(
                device,
                block.qkv,
                rows,
                &saved.modulated1,
                &dqkv,
                Some(&dmodulated1),
                saved.lora_inner.get(&LoraTarget::Qkv),
                &ones,
            );
            let dnormalized1 = device.output(rows * d);
            device.modulate_backward(
                shape,
                &saved.normalized1,
                &saved.modulation,
                chunk(0),
                chunk(1),
                &dmodulated1,
                &dnormalized1,
                &dmodulation,
            );
            device.layernorm_backward(&saved.normalized1, &saved.rstd1, &dnormalized1, &scratch, rows, d);
            device.elementwise(
                Elementwise::AddBroadcast { period: rows * d },
                Some(&scratch),
                None,
                None,
                &dh,
                rows * d,
            );
            // adaLN: modulation = silu(c) W + b; dsilu_c accumulates over blocks.
            if full {
                let dsilu_block = device.zeros(batch * d);
                self.linear_backward(
                    device,
                    block.ada,
                    batch,
                    &cache.silu_c,
                    &dmodulation,
                    Some(&dsilu_block),
                    None,
                    &ones,
                );
                device.elementwise(
                    Elementwise::AddBroadcast { period: batch * d },
                    Some(&dsilu_block),
                    None,
                    None,
                    &dsilu_c,
                    batch * d,
                );
            }
        }
        if !full {
            return;
        }
        // Conditioning: c = t_mlp(freq) + y_mlp(pooled), silu_c = silu(c).
        let dc = device.zeros(batch * d);
        device.elementwise(Elementwise::SiluBackward, Some(&cache.c), Some(&dsilu_c), None, &dc, batch * d);
        let dt_hidden_post = device.zeros(batch * d);
        self.linear_backward(device, self.t_mlp[1], batch, &cache.t_hidden, &dc, Some(&dt_hidden_post), None, &ones);
        let t_pre = self.pre_activation(device, self.t_mlp[0], batch, &cache.t_freq);
        let dt_pre = device.zeros(batch * d);
        device.elementwise(Elementwise::SiluBackward, Some(&t_pre), Some(&dt_hidden_post), None, &dt_pre, batch * d);
        self.linear_backward(device, self.t_mlp[0], batch, &cache.t_freq, &dt_pre, None, None, &ones);
        let dy_hidden_post = device.zeros(batch * d);
        self.linear_backward(device, self.y_mlp[1], batch, &cache.y_hidden, &dc, Some(&dy_hidden_post), None, &ones);
        let y_pre = self.pre_activation(device, self.y_mlp[0], batch, &cache.pooled);
        let dy_pre = device.zeros(batch * d);
        device.elementwise(Elementwise::SiluBackward, Some(&y_pre), Some(&dy_hidden_post), None, &dy_pre, batch * d);
        let dpooled = device.zeros(batch * d);
        self.linear_backward(device, self.y_mlp[0], batch, &cache.pooled, &dy_pre, Some(&dpooled), None, &ones);
        if let Some(dtable) = self.grad(self.embedding) {
            let shape = TextEmbedding { batch, max_tokens: config.max_tokens, width: d, vocabulary: config.vocabulary };
            device.clear(dtable, config.vocabulary * d);
            device.embed_mean_backward(shape, &cache.ids, &dpooled, dtable);
        }
        if let Some(dnull) = self.grad(self.null_text) {
            device.matmul(&Matmul::new(1, d, batch, false, false), &cache.null_mask, &dpooled, None, dnull);
        }
        // Patch embedding (position embedding is fixed).
        self.linear_backward(device, self.x_embedder, rows, &cache.tokens, &dh, None, None, &ones);
    }

    fn pre_activation(&self, device: &D, layer: Linear, rows: usize, x: &D::Buffer) -> D::Buffer {
        let out = device.zeros(rows * layer.out);
        self.linear_forward(device, layer, rows, x, &out, Activation::None, None);
        out
    }

    /// Makes `mode`'s parameters trainable (allocating gradients and moments) and the others
    /// frozen.
    pub fn set_trainable(&mut self, device: &D, mode: TrainMode) {
        for parameter in &mut self.parameters {
            let is_lora = parameter.name.starts_with("base_model.");
            let trained = match mode {
                TrainMode::Full => !is_lora,
                TrainMode::Lora => is_lora,
            };
            let len = parameter.shape.iter().product();
            parameter.training = trained.then(|| [device.zeros(len), device.zeros(len), device.zeros(len)]);
        }
        self.step = 0;
    }

    /// The DDPM loss (ε-prediction, MSE) of `batch` and the gradients of the trained parameters
    /// (left in each parameter's gradient buffer); each sample's squared error is weighted by
    /// [`Dit::loss_weighting`]. Timesteps and noise come from `seed`. Returns
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
        let timesteps: Vec<f32> = (0..count).map(|i| (stream.bits(u32::MAX - i as u32) % 1000) as f32).collect();
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
        // Global gradient norm, then AdamW on every trained tensor.
        let norm = device.zeros(1);
        for parameter in self.parameters.iter().filter(|p| p.training.is_some()) {
            let grad = &parameter.training.as_ref().expect("trained")[0];
            device.sum_of_squares(grad, None, parameter.len(), 1.0, &norm, 0, true);
        }
        self.step += 1;
        for parameter in self.parameters.iter().filter(|p| p.training.is_some()) {
            let [grad, m, v] = parameter.training.as_ref().expect("trained");
            device.adamw(hyper, self.step, grad, &norm, &parameter.value, m, v, parameter.len());
        }
        Ok(device.download(&loss, 1)?[0])
    }

    /// The gradient of a trained parameter (after a [`Dit::train_step`]).
    pub fn gradient(&self, device: &D, name: &str) -> Result<Option<Vec<f32>>, GpuError> {
        let parameter = &self.parameters[self.index[name]];
        match &parameter.training {
            Some([grad, _, _]) => Ok(Some(device.download(grad, parameter.len())?)),
            None => Ok(None),
        }
    }

    /// DDIM sampling with classifier-free guidance: `ids` are the prompts (`[B, max_tokens]`),
    /// `negative` the prompts whose prediction replaces the unconditional one (all padding = the
    /// null text). Deterministic in `seed`. Returns images `[B, C, H, W]`.
    pub fn sample(
        &self,
        device: &D,
        options: &SampleOptions,
        ids: &[u32],
        negative: Option<&[u32]>,
    ) -> Result<Vec<f32>, GpuError> {
        self.sample_with_progress(device, options, ids, negative, &mut |_, _| true)
    }

    /// [`Dit::sample`], calling `progress(done, total)` after each step; returning `false` from
    /// it stops the sampling with [`GpuError::Cancelled`].
    pub fn sample_with_progress(
        &self,
        device: &D,
        options: &SampleOptions,
        ids: &[u32],
        negative: Option<&[u32]>,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Vec<f32>, GpuError> {
        let len = self.check_prompts(ids, negative)? * self.config.image_len();
        let x = device.zeros(len);
        device.noise(NoiseStream::new(options.seed), 0, &x, len);
        self.denoise(device, options, x, ids, negative, None, progress)
    }

    /// [`Dit::sample_with_progress`] with each image's noise — its starting noise and, with η > 0,
    /// every step's — drawn from its own seed (`seeds[b]` for image `b`), so an image depends
    /// only on its prompt and seed, whatever else is in the batch. `options.seed` is not used.
    pub fn sample_seeded(
        &self,
        device: &D,
        options: &SampleOptions,
        ids: &[u32],
        negative: Option<&[u32]>,
        seeds: &[u64],
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Vec<f32>, GpuError> {
        let config = &self.config;
        let batch = self.check_prompts(ids, negative)?;
        if seeds.len() != batch {
            return Err(GpuError::Shape(format!("{} seeds for a batch of {batch} prompts", seeds.len())));
        }
        let per_image = config.image_len();
        let mut start = vec![0.0f32; batch * per_image];
        for (image, seed) in start.chunks_exact_mut(per_image).zip(seeds) {
            NoiseStream::new(*seed).fill(0, 1.0, image);
        }
        let x = device.upload(&start);
        self.denoise(device, options, x, ids, negative, Some(seeds), progress)
    }

    /// The batch size of `ids`, after checking them and the negative prompts (same count,
    /// ids inside the vocabulary).
    fn check_prompts(&self, ids: &[u32], negative: Option<&[u32]>) -> Result<usize, GpuError> {
        let config = &self.config;
        let batch = ids.len() / config.max_tokens.max(1);
        let images = vec![0.0; batch * config.image_len()];
        for prompts in std::iter::once(ids).chain(negative) {
            TrainBatch { images: images.clone(), ids: prompts.to_vec() }.samples(config)?;
        }
        Ok(batch)
    }

    /// DDIM with guidance from the starting noise `x` (checked prompts; `x` is consumed). With
    /// η > 0, step `k`'s noise for image `b` is element `b·len(image)…` of the stream
    /// [`eta_stream`]`(options.seed, k)`, or with `image_seeds` the start of
    /// [`eta_stream`]`(image_seeds[b], k)`: either way it does not depend on the batch size.
    #[allow(clippy::too_many_arguments)]
    fn denoise(
        &self,
        device: &D,
        options: &SampleOptions,
        x: D::Buffer,
        ids: &[u32],
        negative: Option<&[u32]>,
        image_seeds: Option<&[u64]>,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Vec<f32>, GpuError> {
        let config = &self.config;
        let batch = ids.len() / config.max_tokens;
        let per_image = config.image_len();
        let len = batch * per_image;
        let guided = options.guidance_scale != 1.0;
        let mut all_ids = ids.to_vec();
        if guided {
            match negative {
                Some(negative) => all_ids.extend_from_slice(negative),
                None => all_ids.extend(std::iter::repeat_n(0, ids.len())),
            }
        }
        let bars = alpha_bars();
        let steps = options.steps.max(1);
        let stride = 1000 / steps;
        let sequence: Vec<usize> = (0..steps).map(|i| (i * stride).min(999)).collect();
        let mut noise = device.zeros(len);
        for (k, i) in (0..steps).rev().enumerate() {
            let t = sequence[i];
            let alpha_bar = bars[t] as f32;
            let alpha_bar_prev = if i == 0 { 1.0 } else { bars[sequence[i - 1]] as f32 };
            let epsilon = if guided {
                // One forward on the doubled batch [x; x] with [prompts; negative or null].
                let doubled = device.zeros(2 * len);
                device.elementwise(Elementwise::AddBroadcast { period: len }, Some(&x), None, None, &doubled, 2 * len);
                let both = self.forward_internal(device, &doubled, &vec![t as f32; 2 * batch], &all_ids, false).0;
                let guided_epsilon = device.zeros(len);
                device.elementwise(
                    Elementwise::GuidanceHalves { scale: options.guidance_scale },
                    Some(&both),
                    None,
                    None,
                    &guided_epsilon,
                    len,
                );
                guided_epsilon
            } else {
                self.forward_internal(device, &x, &vec![t as f32; batch], ids, false).0
            };
            let step = crate::cpu::DdimStep { alpha_bar, alpha_bar_prev, eta: options.eta };
            if options.eta > 0.0 {
                match image_seeds {
                    Some(seeds) => {
                        let mut host = vec![0.0f32; len];
                        for (image, seed) in host.chunks_exact_mut(per_image).zip(seeds) {
                            eta_stream(*seed, k).fill(0, 1.0, image);
                        }
                        noise = device.upload(&host);
                    }
                    None => device.noise(eta_stream(options.seed, k), 0, &noise, len),
                }
            }
            device.elementwise(
                Elementwise::Ddim { coefficients: step.coefficients() },
                Some(&epsilon),
                Some(&noise),
                None,
                &x,
                len,
            );
            // One step's buffers are freed before the next is recorded.
            device.synchronize()?;
            if !progress(k + 1, steps) {
                return Err(GpuError::Cancelled);
            }
        }
        device.download(&x, len)
    }
}

/// The stream of DDIM step `k`'s η noise for `seed` (a stream per step, so that an image's noise
/// sits at the same offset whatever the batch size; distinct from `NoiseStream::new(seed)`, the
/// starting noise).
pub fn eta_stream(seed: u64, k: usize) -> NoiseStream {
    // SplitMix64 of the seed and the step.
    let mut z = seed ^ (k as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    NoiseStream::new(z ^ (z >> 31))
}

/// Options of [`Dit::sample`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleOptions {
    /// DDIM steps.
    pub steps: usize,
    /// 0 = deterministic DDIM.
    pub eta: f32,
    /// Classifier-free guidance scale (1 = no guidance, one forward per step).
    pub guidance_scale: f32,
    /// Seed of the initial noise (and of η noise).
    pub seed: u64,
}
