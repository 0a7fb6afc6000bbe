//! LoRA adapters for an SD pipeline's UNet and text encoder, read in the formats people have them
//! and merged into the weights at load time (`W += multiplier · alpha/r · B·A`):
//! - diffusers / PEFT: `unet.<module>.lora_A.weight` / `lora_B.weight` (also without the `unet.`
//!   prefix, or with PEFT's `base_model.model.`), or the older `…lora.down.weight` /
//!   `lora.up.weight`; the rank and alpha from the header's `lora_adapter_metadata` (what
//!   diffusers' `save_lora_weights` records), else an `adapter_config.json` beside the file, else
//!   alpha = rank as diffusers assumes;
//! - kohya: `lora_unet_<module with underscores>.lora_down.weight`, `.lora_up.weight`, `.alpha`
//!   (and `lora_te_…` for the text encoder).
//!
//! Linear layers and convolutions (1×1, and k×k with a k×k down and a 1×1 up) are merged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::weights::{ComponentWeights, HostTensor, WeightsError, is_pickle, read_safetensors};

/// Which network an adapter module belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// The UNet.
    Unet,
    /// The text encoder.
    TextEncoder,
}

/// One adapted module: `delta = scale · up · down`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraModule {
    /// The module's name as the adapter gives it: a diffusers/transformers module path, or a
    /// kohya name (underscores), resolved against the weights when merged.
    pub module: String,
    /// `A` / `lora_down`: `[r, in]` or `[r, in, k, k]`.
    pub down: HostTensor,
    /// `B` / `lora_up`: `[out, r]` or `[out, r, 1, 1]`.
    pub up: HostTensor,
    /// `alpha / r` (or `alpha / √r` for rsLoRA).
    pub scale: f32,
}

/// An adapter read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraAdapter {
    /// The file it came from.
    pub source: PathBuf,
    /// The modules, by network.
    pub modules: HashMap<Target, Vec<LoraModule>>,
}

/// Where the rank and alpha come from when the tensors do not carry them.
#[derive(Debug, Clone, Default)]
struct Alphas {
    default: Option<f64>,
    patterns: Vec<(String, f64)>,
    rslora: bool,
}

impl Alphas {
    fn from_json(value: &serde_json::Value, prefix: &str) -> Self {
        let get = |key: &str| value.get(format!("{prefix}{key}")).or_else(|| value.get(key));
        let patterns = get("alpha_pattern")
            .and_then(|p| p.as_object())
            .map(|p| p.iter().filter_map(|(k, v)| v.as_f64().map(|v| (k.clone(), v))).collect())
            .unwrap_or_default();
        Alphas {
            default: get("lora_alpha").and_then(serde_json::Value::as_f64),
            patterns,
            rslora: get("use_rslora").and_then(serde_json::Value::as_bool).unwrap_or(false),
        }
    }

    fn scale(&self, module: &str, rank: usize) -> f32 {
        let alpha = self
            .patterns
            .iter()
            .find(|(pattern, _)| module == pattern || module.ends_with(&format!(".{pattern}")))
            .map(|(_, alpha)| *alpha)
            .or(self.default)
            .unwrap_or(rank as f64);
        let rank = rank as f64;
        (if self.rslora { alpha / rank.sqrt() } else { alpha / rank }) as f32
    }
}

const PAIRS: [(&str, &str); 3] = [
    (".lora_A.weight", ".lora_B.weight"),
    (".lora.down.weight", ".lora.up.weight"),
    (".lora_down.weight", ".lora_up.weight"),
];

impl LoraAdapter {
    /// Reads an adapter: a `.safetensors` file, or a folder holding `pytorch_lora_weights.safetensors`
    /// (diffusers) or `adapter_model.safetensors` (PEFT, with its `adapter_config.json`).
    pub fn read(path: &Path) -> Result<Self, WeightsError> {
        let file = if path.is_dir() {
            ["pytorch_lora_weights.safetensors", "adapter_model.safetensors"]
                .iter()
                .map(|name| path.join(name))
                .find(|p| p.is_file())
                .ok_or_else(|| WeightsError::Missing {
                    dir: path.to_path_buf(),
                    expected: "pytorch_lora_weights.safetensors (diffusers) or adapter_model.safetensors (PEFT)".into(),
                })?
        } else {
            path.to_path_buf()
        };
        if is_pickle(&file) {
            return Err(WeightsError::Pickle { path: file });
        }
        let bytes = std::fs::read(&file).map_err(|source| WeightsError::Read { path: file.clone(), source })?;
        // PEFT keeps rank and alpha in an adapter_config.json beside the weights.
        let config: Option<serde_json::Value> = file
            .parent()
            .map(|dir| dir.join("adapter_config.json"))
            .filter(|p| p.is_file())
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| serde_json::from_str(&text).ok());
        Self::from_bytes(&bytes, &file, config)
    }

    /// Reads an adapter from safetensors bytes (`source` names it in messages), with PEFT's
    /// `adapter_config.json` contents when there is one.
    pub fn from_bytes(bytes: &[u8], source: &Path, config: Option<serde_json::Value>) -> Result<Self, WeightsError> {
        // Parsed as safetensors only: a pickle's bytes are refused as malformed, never unpickled.
        let file = source.to_path_buf();
        let metadata = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| WeightsError::Malformed { path: file.clone(), message: e.to_string() })?
            .1;
        let metadata = metadata.metadata().clone().unwrap_or_default();
        let mut tensors = HashMap::new();
        read_safetensors(&file, bytes, &mut |name, tensor| {
            tensors.insert(name.to_string(), tensor);
        })?;
        // Rank and alpha: diffusers' header metadata, else PEFT's adapter_config.json.
        let header: Option<serde_json::Value> =
            metadata.get("lora_adapter_metadata").and_then(|text| serde_json::from_str(text).ok());
        let alphas = |target: Target| match (&header, &config) {
            (Some(header), _) => {
                Alphas::from_json(header, if target == Target::Unet { "unet." } else { "text_encoder." })
            }
            (None, Some(config)) => Alphas::from_json(config, ""),
            (None, None) => Alphas::default(),
        };
        let (unet_alphas, text_alphas) = (alphas(Target::Unet), alphas(Target::TextEncoder));

        let mut modules: HashMap<Target, Vec<LoraModule>> = HashMap::new();
        let mut names: Vec<String> = tensors.keys().cloned().collect();
        names.sort();
        let invalid = |message: String| WeightsError::Malformed { path: file.clone(), message };
        for name in &names {
            let Some((down_suffix, up_suffix)) = PAIRS.iter().find(|(down, _)| name.ends_with(down)) else {
                let known = PAIRS.iter().any(|(_, up)| name.ends_with(up)) || name.ends_with(".alpha");
                if known {
                    continue;
                }
                return Err(invalid(format!(
                    "{name} is not a LoRA tensor this reader knows (lora_A/lora_B, lora.down/lora.up, lora_down/lora_up, alpha)"
                )));
            };
            let stem = &name[..name.len() - down_suffix.len()];
            let up_name = format!("{stem}{up_suffix}");
            let down = tensors.get(name).cloned().expect("listed");
            let up = tensors.get(&up_name).cloned().ok_or_else(|| invalid(format!("{name} has no {up_name}")))?;
            let (target, module) = if let Some(rest) = stem.strip_prefix("lora_unet_") {
                (Target::Unet, format!("lora_unet_{rest}"))
            } else if let Some(rest) = stem.strip_prefix("lora_te_").or_else(|| stem.strip_prefix("lora_te1_")) {
                (Target::TextEncoder, format!("lora_te_{rest}"))
            } else if let Some(rest) = stem.strip_prefix("text_encoder.") {
                (Target::TextEncoder, rest.to_string())
            } else {
                let rest =
                    stem.strip_prefix("unet.").or_else(|| stem.strip_prefix("base_model.model.")).unwrap_or(stem);
                (Target::Unet, rest.to_string())
            };
            let rank = down.shape.first().copied().unwrap_or(0);
            if rank == 0 || up.shape.get(1) != Some(&rank) {
                return Err(invalid(format!(
                    "{stem}: down {:?} and up {:?} do not share a rank",
                    down.shape, up.shape
                )));
            }
            let scale = match tensors.get(&format!("{stem}.alpha")) {
                Some(alpha) if alpha.data.len() == 1 => alpha.data[0] / rank as f32,
                _ => if target == Target::Unet { &unet_alphas } else { &text_alphas }.scale(&module, rank),
            };
            modules.entry(target).or_default().push(LoraModule { module, down, up, scale });
        }
        if modules.is_empty() {
            return Err(invalid("holds no LoRA tensors".into()));
        }
        Ok(LoraAdapter { source: file, modules })
    }

    /// The modules for one network.
    pub fn modules(&self, target: Target) -> &[LoraModule] {
        self.modules.get(&target).map(Vec::as_slice).unwrap_or_default()
    }
}

impl ComponentWeights {
    /// Adds `multiplier · scale · up·down` to the weight of every module of `modules`; a module
    /// the weights do not have is an error naming it. `kohya_prefix` (`lora_unet_`, `lora_te_`)
    /// resolves kohya names against the weights' own. Returns how many modules were merged.
    pub fn merge_lora(
        &mut self,
        modules: &[LoraModule],
        multiplier: f32,
        kohya_prefix: &str,
        adapter: &Path,
    ) -> Result<usize, WeightsError> {
        // Kohya names are module paths with underscores; text encoder paths with or without
        // transformers' `text_model.` prefix.
        let kohya: HashMap<String, String> = self
            .names()
            .into_iter()
            .filter_map(|name| name.strip_suffix(".weight"))
            .flat_map(|module| {
                let bare = module.strip_prefix("text_model.").unwrap_or(module).replace('.', "_");
                [
                    (format!("{kohya_prefix}{bare}"), module.to_string()),
                    (format!("{kohya_prefix}text_model_{bare}"), module.to_string()),
                ]
            })
            .collect();
        let source = adapter.display().to_string();
        for lora in modules {
            let module = if lora.module.starts_with(kohya_prefix) {
                kohya.get(&lora.module).cloned()
            } else {
                let bare = lora.module.strip_prefix("text_model.").unwrap_or(&lora.module);
                [lora.module.clone(), format!("text_model.{bare}"), bare.to_string()]
                    .into_iter()
                    .find(|m| self.contains(&format!("{m}.weight")))
            };
            let Some(module) = module else {
                return Err(WeightsError::Absent {
                    source_files: self.source(),
                    name: format!("{}.weight", lora.module),
                    expected: format!("the adapter {source} adapts it (an adapter for another architecture?)"),
                });
            };
            let name = format!("{module}.weight");
            let mut weight = self.remove(&name).expect("checked above");
            let (rank, out) = (lora.down.shape[0], lora.up.shape[0]);
            let inner: usize = lora.down.shape[1..].iter().product();
            let fits = weight.shape.first() == Some(&out)
                && weight.shape[1..].iter().product::<usize>() == inner
                && lora.up.data.len() == out * rank;
            if !fits {
                return Err(WeightsError::Shape {
                    source_files: source.clone(),
                    name: lora.module.clone(),
                    actual: [lora.up.shape.clone(), lora.down.shape.clone()].concat(),
                    expected: weight.shape.clone(),
                });
            }
            let factor = multiplier * lora.scale;
            for o in 0..out {
                let row = &mut weight.data[o * inner..][..inner];
                for r in 0..rank {
                    let u = factor * lora.up.data[o * rank + r];
                    if u == 0.0 {
                        continue;
                    }
                    for (w, d) in row.iter_mut().zip(&lora.down.data[r * inner..][..inner]) {
                        *w += u * d;
                    }
                }
            }
            self.insert(name, weight);
        }
        Ok(modules.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(shape: &[usize], data: &[f32]) -> HostTensor {
        HostTensor { shape: shape.to_vec(), data: data.to_vec() }
    }

    /// `W + m · s · B·A`, computed by hand, for a text encoder weight named with and without
    /// transformers' `text_model.` prefix, reached by a kohya name and by a diffusers name.
    #[test]
    fn merging_adds_the_scaled_product_to_the_named_weight() {
        let base = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // [out 2, in 3]
        let down = tensor(&[1, 3], &[1.0, 0.0, -1.0]); // A: [r 1, in 3]
        let up = tensor(&[2, 1], &[2.0, -3.0]); // B: [out 2, r 1]
        // B·A = [[2, 0, -2], [-3, 0, 3]]; scale 0.5, multiplier 2 → factor 1.
        let expected = [3.0, 2.0, 1.0, 1.0, 5.0, 9.0];
        for stored in ["text_model.encoder.layers.0.self_attn.q_proj", "encoder.layers.0.self_attn.q_proj"] {
            for adapter_name in
                ["lora_te_text_model_encoder_layers_0_self_attn_q_proj", "text_model.encoder.layers.0.self_attn.q_proj"]
            {
                let mut weights = ComponentWeights::from_tensors(
                    vec![PathBuf::from("text_encoder/model.safetensors")],
                    HashMap::from([(format!("{stored}.weight"), tensor(&[2, 3], &base))]),
                );
                let module = LoraModule { module: adapter_name.into(), down: down.clone(), up: up.clone(), scale: 0.5 };
                let merged = weights.merge_lora(&[module], 2.0, "lora_te_", Path::new("adapter.safetensors")).unwrap();
                assert_eq!(merged, 1);
                let weight = weights.remove(&format!("{stored}.weight")).unwrap();
                assert_eq!(weight.data, expected, "{stored} via {adapter_name}");
            }
        }
    }

    #[test]
    fn alpha_comes_from_patterns_then_the_default_then_the_rank() {
        let header = serde_json::json!({"unet.lora_alpha": 8, "unet.alpha_pattern": {"attn2.to_k": 2}});
        let alphas = Alphas::from_json(&header, "unet.");
        assert_eq!(alphas.scale("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 4), 2.0);
        assert_eq!(alphas.scale("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", 4), 0.5);
        assert_eq!(Alphas::default().scale("any", 4), 1.0);
        let rslora = Alphas::from_json(&serde_json::json!({"lora_alpha": 8, "use_rslora": true}), "");
        assert_eq!(rslora.scale("any", 16), 2.0);
    }
}
