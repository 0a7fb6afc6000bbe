//! Weights on the host: safetensors with PyTorch-style names, DiT initialisation, and LoRA
//! adapters in PEFT's layout (read, written and merged into base weights).

use std::collections::BTreeMap;

use super::config::{DitConfig, LoraConfig, LoraTarget};
use crate::kernels::matmul::Matmul;
use crate::kernels::noise::NoiseStream;

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
        let tensors =
            self.tensors.iter().map(|(name, (shape, values))| (name.as_str(), shape.as_slice(), values.as_slice()));
        crate::tensor::f32_safetensors(tensors, metadata).map_err(WeightsError::Format)
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

/// The prefix of every adapter matrix's PEFT name (see [`HostAdapter::name`]).
const ADAPTER_PREFIX: &str = "base_model.";

/// True for the PEFT name of an adapter matrix, false for a base parameter.
pub(super) fn is_adapter_name(name: &str) -> bool {
    name.starts_with(ADAPTER_PREFIX)
}

impl HostAdapter {
    /// PEFT name of a LoRA matrix.
    pub fn name(block: usize, target: LoraTarget, matrix: char) -> String {
        format!("{ADAPTER_PREFIX}model.blocks.{block}.{}.lora_{matrix}.weight", target.module())
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

/// `[out, in]` of the module `target` adapts.
pub(super) fn lora_shape(model: &DitConfig, target: LoraTarget) -> (usize, usize) {
    let (d, h) = (model.width, model.hidden());
    match target {
        LoraTarget::Qkv => (3 * d, d),
        LoraTarget::Proj => (d, d),
        LoraTarget::Fc1 => (h, d),
        LoraTarget::Fc2 => (d, h),
    }
}
