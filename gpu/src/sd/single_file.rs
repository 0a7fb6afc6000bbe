//! Single-file Stable Diffusion 1.x checkpoints (the A1111/civitai format: one safetensors file
//! with the original CompVis key names, `model.diffusion_model.…`, `first_stage_model.…`,
//! `cond_stage_model.transformer.…`), converted to a diffusers folder's files in memory.
//!
//! The configs come from a diffusers folder the user names, or are the SD 1.5 configs shipped
//! here (`sd15/`); the key map is derived from the UNet and VAE configs, so distilled variants
//! with fewer blocks map too. A single file carries no tokenizer: its folder is named by the user
//! (any SD 1.x pipeline's `tokenizer/`). `reference/sd_single_file.py` writes a test checkpoint
//! and checks it with diffusers' own `from_single_file`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::config::{ConfigError, ConfigFile, UnetConfig, VaeConfig};
use super::pipeline::PipelineFolder;
use super::sample::SdError;
use super::weights::{HostTensor, WeightsError, is_pickle, read_safetensors};

/// SD 1.5's UNet config.
pub const SD15_UNET: &str = include_str!("sd15/unet.json");
/// SD 1.5's VAE config.
pub const SD15_VAE: &str = include_str!("sd15/vae.json");
/// SD 1.5's text encoder config (CLIP ViT-L/14's text tower).
pub const SD15_TEXT_ENCODER: &str = include_str!("sd15/text_encoder.json");
/// SD 1.5's scheduler config (PNDM, as it ships).
pub const SD15_SCHEDULER: &str = include_str!("sd15/scheduler.json");

/// A key only SD 1.x UNets have (the last up block's skip projection, 640 → 320 channels).
pub const SD1_MARKER: &str = "model.diffusion_model.output_blocks.11.0.skip_connection.weight";

const UNET_PREFIX: &str = "model.diffusion_model.";
const VAE_PREFIX: &str = "first_stage_model.";
const TEXT_PREFIX: &str = "cond_stage_model.transformer.";

/// The configs the conversion uses, as (file name in a diffusers folder, text).
struct Configs {
    unet: (PathBuf, String),
    vae: (PathBuf, String),
    text_encoder: (PathBuf, String),
    scheduler: (PathBuf, String),
    tokenizer: PathBuf,
    shipped: bool,
}

fn read_text(path: &Path) -> Result<String, SdError> {
    std::fs::read_to_string(path)
        .map_err(|source| SdError::Config(ConfigError::Read { path: path.to_path_buf(), source }))
}

impl Configs {
    fn choose(config: Option<&Path>, tokenizer: Option<&Path>) -> Result<Self, SdError> {
        match config {
            Some(dir) => {
                let folder = PipelineFolder::open(dir)?;
                let file = |component: &str, name: &str| -> Result<(PathBuf, String), SdError> {
                    let path = folder.component_dir(component)?.join(name);
                    Ok((path.clone(), read_text(&path)?))
                };
                Ok(Configs {
                    unet: file("unet", "config.json")?,
                    vae: file("vae", "config.json")?,
                    text_encoder: file("text_encoder", "config.json")?,
                    scheduler: file("scheduler", "scheduler_config.json")?,
                    tokenizer: match tokenizer {
                        Some(dir) => dir.to_path_buf(),
                        None => folder.component_dir("tokenizer")?,
                    },
                    shipped: false,
                })
            }
            None => {
                let tokenizer = tokenizer.ok_or_else(|| {
                    SdError::Invalid(
                        "a single-file checkpoint carries no tokenizer: pass --tokenizer with a CLIP tokenizer folder \
                         (any SD 1.x pipeline's tokenizer/: vocab.json and merges.txt), or --config with a diffusers \
                         folder whose configs and tokenizer fit the checkpoint"
                            .into(),
                    )
                })?;
                let shipped =
                    |name: &str, text: &str| (PathBuf::from(format!("(thitl's SD 1.5 {name})")), text.to_string());
                Ok(Configs {
                    unet: shipped("unet/config.json", SD15_UNET),
                    vae: shipped("vae/config.json", SD15_VAE),
                    text_encoder: shipped("text_encoder/config.json", SD15_TEXT_ENCODER),
                    scheduler: shipped("scheduler/scheduler_config.json", SD15_SCHEDULER),
                    tokenizer: tokenizer.to_path_buf(),
                    shipped: true,
                })
            }
        }
    }
}

/// The diffusers name of a UNet key under `model.diffusion_model.`.
struct UnetKeys {
    /// (original prefix, diffusers prefix, is a ResNet), longest original prefix first.
    prefixes: Vec<(String, String, bool)>,
}

impl UnetKeys {
    fn new(config: &UnetConfig) -> Self {
        let blocks = config.block_out_channels.len();
        let mut p: Vec<(String, String, bool)> = [
            ("time_embed.0", "time_embedding.linear_1", false),
            ("time_embed.2", "time_embedding.linear_2", false),
            ("input_blocks.0.0", "conv_in", false),
            ("out.0", "conv_norm_out", false),
            ("out.2", "conv_out", false),
            ("middle_block.0", "mid_block.resnets.0", true),
            ("middle_block.1", "mid_block.attentions.0", false),
            ("middle_block.2", "mid_block.resnets.1", true),
        ]
        .into_iter()
        .map(|(a, b, r)| (a.to_string(), b.to_string(), r))
        .collect();
        let mut n = 1;
        for i in 0..blocks {
            for j in 0..config.layers_per_block[i] {
                p.push((format!("input_blocks.{n}.0"), format!("down_blocks.{i}.resnets.{j}"), true));
                if config.down_attention[i] {
                    p.push((format!("input_blocks.{n}.1"), format!("down_blocks.{i}.attentions.{j}"), false));
                }
                n += 1;
            }
            if i + 1 < blocks {
                p.push((format!("input_blocks.{n}.0.op"), format!("down_blocks.{i}.downsamplers.0.conv"), false));
                n += 1;
            }
        }
        let mut n = 0;
        for i in 0..blocks {
            let count = config.layers_per_block[blocks - 1 - i] + 1;
            for j in 0..count {
                p.push((format!("output_blocks.{n}.0"), format!("up_blocks.{i}.resnets.{j}"), true));
                if config.up_attention[i] {
                    p.push((format!("output_blocks.{n}.1"), format!("up_blocks.{i}.attentions.{j}"), false));
                }
                if j + 1 == count && i + 1 < blocks {
                    let slot = if config.up_attention[i] { 2 } else { 1 };
                    p.push((
                        format!("output_blocks.{n}.{slot}.conv"),
                        format!("up_blocks.{i}.upsamplers.0.conv"),
                        false,
                    ));
                }
                n += 1;
            }
        }
        p.sort_by_key(|(original, _, _)| std::cmp::Reverse(original.len()));
        UnetKeys { prefixes: p }
    }

    fn rename(&self, key: &str) -> Option<String> {
        const RESNET: [(&str, &str); 6] = [
            ("in_layers.0", "norm1"),
            ("in_layers.2", "conv1"),
            ("emb_layers.1", "time_emb_proj"),
            ("out_layers.0", "norm2"),
            ("out_layers.3", "conv2"),
            ("skip_connection", "conv_shortcut"),
        ];
        for (original, diffusers, resnet) in &self.prefixes {
            let Some(rest) = key.strip_prefix(original.as_str()).and_then(|r| r.strip_prefix('.')) else { continue };
            if !resnet {
                return Some(format!("{diffusers}.{rest}"));
            }
            return RESNET.iter().find_map(|(old, new)| {
                rest.strip_prefix(old).and_then(|r| r.strip_prefix('.')).map(|tail| format!("{diffusers}.{new}.{tail}"))
            });
        }
        None
    }
}

/// The diffusers name of a VAE key under `first_stage_model.` (and whether the tensor is an
/// attention projection stored as a 1×1 convolution, to be seen as a linear layer).
fn vae_rename(key: &str, blocks: usize) -> Option<(String, bool)> {
    let parts: Vec<&str> = key.split('.').collect();
    let side = *parts.first()?;
    if side != "encoder" && side != "decoder" {
        return (key.starts_with("quant_conv.") || key.starts_with("post_quant_conv."))
            .then(|| (key.to_string(), false));
    }
    let rest = &parts[1..];
    let shortcut = |name: &str| if name == "nin_shortcut" { "conv_shortcut".to_string() } else { name.to_string() };
    let joined = |head: String, tail: &[&str]| {
        let mut all = vec![head];
        all.extend(tail.iter().enumerate().map(|(i, t)| if i == 0 { shortcut(t) } else { t.to_string() }));
        all.join(".")
    };
    let renamed = match rest {
        ["mid", "block_1", tail @ ..] => (joined(format!("{side}.mid_block.resnets.0"), tail), false),
        ["mid", "block_2", tail @ ..] => (joined(format!("{side}.mid_block.resnets.1"), tail), false),
        ["mid", "attn_1", layer, tail @ ..] => {
            let (name, projection) = match *layer {
                "norm" => ("group_norm", false),
                "q" => ("to_q", true),
                "k" => ("to_k", true),
                "v" => ("to_v", true),
                "proj_out" => ("to_out.0", true),
                _ => return None,
            };
            (format!("{side}.mid_block.attentions.0.{name}.{}", tail.join(".")), projection)
        }
        ["norm_out", tail @ ..] => (format!("{side}.conv_norm_out.{}", tail.join(".")), false),
        ["conv_in" | "conv_out", ..] => (key.to_string(), false),
        ["down", i, "block", j, tail @ ..] if side == "encoder" => {
            (joined(format!("encoder.down_blocks.{i}.resnets.{j}"), tail), false)
        }
        ["down", i, "downsample", "conv", tail @ ..] if side == "encoder" => {
            (format!("encoder.down_blocks.{i}.downsamplers.0.conv.{}", tail.join(".")), false)
        }
        ["up", i, "block", j, tail @ ..] if side == "decoder" => {
            let i = blocks.checked_sub(1 + i.parse::<usize>().ok()?)?;
            (joined(format!("decoder.up_blocks.{i}.resnets.{j}"), tail), false)
        }
        ["up", i, "upsample", "conv", tail @ ..] if side == "decoder" => {
            let i = blocks.checked_sub(1 + i.parse::<usize>().ok()?)?;
            (format!("decoder.up_blocks.{i}.upsamplers.0.conv.{}", tail.join(".")), false)
        }
        _ => return None,
    };
    Some(renamed)
}

fn serialize(tensors: &HashMap<String, HostTensor>) -> Result<Vec<u8>, SdError> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let views =
        names.into_iter().map(|name| (name.as_str(), tensors[name].shape.as_slice(), tensors[name].data.as_slice()));
    crate::tensor::f32_safetensors(views, None).map_err(SdError::Invalid)
}

/// Converts a single-file checkpoint into the files of a diffusers pipeline folder (path in the
/// folder, bytes): `model_index.json`, the configs (`config`'s, else SD 1.5's), the tokenizer
/// (`tokenizer`, else `config`'s), and each component's weights in f32 under diffusers' names.
/// Every tensor of the UNet, VAE and text encoder must map; other entries of the file (the noise
/// schedule, EMA copies) are ignored.
pub fn convert(
    checkpoint: &Path,
    config: Option<&Path>,
    tokenizer: Option<&Path>,
) -> Result<Vec<(String, Vec<u8>)>, SdError> {
    if is_pickle(checkpoint) {
        return Err(WeightsError::Pickle { path: checkpoint.to_path_buf() }.into());
    }
    let configs = Configs::choose(config, tokenizer)?;
    let unet_config = UnetConfig::from_file(ConfigFile::parse(&configs.unet.0, &configs.unet.1)?)?;
    let vae_config = VaeConfig::from_file(ConfigFile::parse(&configs.vae.0, &configs.vae.1)?)?;
    let bytes =
        std::fs::read(checkpoint).map_err(|source| WeightsError::Read { path: checkpoint.to_path_buf(), source })?;
    let unet_keys = UnetKeys::new(&unet_config);
    let blocks = vae_config.block_out_channels.len();
    let (mut unet, mut vae, mut text) = (HashMap::new(), HashMap::new(), HashMap::new());
    let mut unmapped = Vec::new();
    let mut has_marker = false;
    read_safetensors(checkpoint, &bytes, &mut |name, mut tensor| {
        has_marker |= name == SD1_MARKER;
        if let Some(rest) = name.strip_prefix(UNET_PREFIX) {
            match unet_keys.rename(rest) {
                Some(renamed) => {
                    unet.insert(renamed, tensor);
                }
                None => unmapped.push(name.to_string()),
            }
        } else if let Some(rest) = name.strip_prefix(VAE_PREFIX) {
            match vae_rename(rest, blocks) {
                Some((renamed, projection)) => {
                    if projection && tensor.shape.len() == 4 {
                        tensor.shape.truncate(2);
                    }
                    vae.insert(renamed, tensor);
                }
                None => unmapped.push(name.to_string()),
            }
        } else if let Some(rest) = name.strip_prefix(TEXT_PREFIX) {
            text.insert(rest.to_string(), tensor);
        }
    })?;
    drop(bytes);
    let source = checkpoint.display().to_string();
    if unet.is_empty() || vae.is_empty() || text.is_empty() {
        return Err(SdError::Invalid(format!(
            "{source} is not a Stable Diffusion 1.x checkpoint: expected tensors under {UNET_PREFIX}, {VAE_PREFIX} and {TEXT_PREFIX}"
        )));
    }
    if configs.shipped && !has_marker {
        return Err(SdError::Invalid(format!(
            "{source} is not an SD 1.x checkpoint (it has no {SD1_MARKER}); for SD 2.x or other \
             architectures pass --config with a diffusers folder of the same model"
        )));
    }
    if !unmapped.is_empty() {
        unmapped.sort();
        return Err(SdError::Invalid(format!(
            "{source}: {} tensors do not fit the UNet/VAE config ({}), e.g. {}",
            unmapped.len(),
            configs.unet.0.display(),
            unmapped.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let mut files = vec![(
        "model_index.json".to_string(),
        serde_json::to_vec_pretty(&serde_json::json!({
            "_class_name": "StableDiffusionPipeline",
            "_converted_from": checkpoint.file_name().map(|n| n.to_string_lossy().into_owned()),
            "scheduler": ["diffusers", "PNDMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }))
        .expect("JSON"),
    )];
    files.push(("unet/config.json".into(), configs.unet.1.into_bytes()));
    files.push(("vae/config.json".into(), configs.vae.1.into_bytes()));
    files.push(("text_encoder/config.json".into(), configs.text_encoder.1.into_bytes()));
    files.push(("scheduler/scheduler_config.json".into(), configs.scheduler.1.into_bytes()));
    for name in ["vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"] {
        let path = configs.tokenizer.join(name);
        if path.is_file() {
            files.push((
                format!("tokenizer/{name}"),
                std::fs::read(&path).map_err(|source| WeightsError::Read { path, source })?,
            ));
        } else if name == "vocab.json" || name == "merges.txt" {
            return Err(SdError::Invalid(format!(
                "{} is missing: the tokenizer folder needs vocab.json and merges.txt",
                path.display()
            )));
        }
    }
    if !files.iter().any(|(n, _)| n == "tokenizer/tokenizer_config.json") {
        // CLIP's defaults: 77 tokens, padded with the end token.
        files.push(("tokenizer/tokenizer_config.json".into(), br#"{"model_max_length": 77}"#.to_vec()));
    }
    files.push(("unet/diffusion_pytorch_model.safetensors".into(), serialize(&unet)?));
    files.push(("vae/diffusion_pytorch_model.safetensors".into(), serialize(&vae)?));
    files.push(("text_encoder/model.safetensors".into(), serialize(&text)?));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Landmarks of SD 1.5's original layout (as diffusers' conversion maps them).
    #[test]
    fn sd15_original_names_map_to_diffusers_names() {
        let config = UnetConfig::from_file(ConfigFile::parse(Path::new("sd15/unet.json"), SD15_UNET).unwrap()).unwrap();
        let keys = UnetKeys::new(&config);
        let cases = [
            ("input_blocks.0.0.weight", "conv_in.weight"),
            ("input_blocks.1.0.in_layers.0.weight", "down_blocks.0.resnets.0.norm1.weight"),
            ("input_blocks.1.1.proj_in.weight", "down_blocks.0.attentions.0.proj_in.weight"),
            ("input_blocks.3.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight"),
            ("input_blocks.4.0.skip_connection.bias", "down_blocks.1.resnets.0.conv_shortcut.bias"),
            ("input_blocks.9.0.op.bias", "down_blocks.2.downsamplers.0.conv.bias"),
            ("input_blocks.11.0.emb_layers.1.weight", "down_blocks.3.resnets.1.time_emb_proj.weight"),
            (
                "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
                "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
            ),
            ("middle_block.2.out_layers.3.weight", "mid_block.resnets.1.conv2.weight"),
            ("output_blocks.2.1.conv.weight", "up_blocks.0.upsamplers.0.conv.weight"),
            ("output_blocks.3.1.norm.weight", "up_blocks.1.attentions.0.norm.weight"),
            ("output_blocks.5.2.conv.weight", "up_blocks.1.upsamplers.0.conv.weight"),
            ("output_blocks.8.2.conv.bias", "up_blocks.2.upsamplers.0.conv.bias"),
            ("output_blocks.11.0.skip_connection.weight", "up_blocks.3.resnets.2.conv_shortcut.weight"),
            ("output_blocks.11.1.proj_out.bias", "up_blocks.3.attentions.2.proj_out.bias"),
            ("time_embed.2.bias", "time_embedding.linear_2.bias"),
            ("out.0.weight", "conv_norm_out.weight"),
            ("out.2.bias", "conv_out.bias"),
        ];
        for (original, diffusers) in cases {
            assert_eq!(keys.rename(original).as_deref(), Some(diffusers), "{original}");
        }
        assert_eq!(keys.rename("output_blocks.12.0.in_layers.0.weight"), None, "SD 1.5 has 12 output blocks");
        let vae = [
            ("decoder.up.3.block.0.conv1.weight", "decoder.up_blocks.0.resnets.0.conv1.weight"),
            ("decoder.up.0.block.2.nin_shortcut.bias", "decoder.up_blocks.3.resnets.2.conv_shortcut.bias"),
            ("decoder.up.1.upsample.conv.weight", "decoder.up_blocks.2.upsamplers.0.conv.weight"),
            ("encoder.down.3.block.1.norm2.weight", "encoder.down_blocks.3.resnets.1.norm2.weight"),
            ("encoder.down.0.downsample.conv.weight", "encoder.down_blocks.0.downsamplers.0.conv.weight"),
            ("encoder.mid.attn_1.proj_out.weight", "encoder.mid_block.attentions.0.to_out.0.weight"),
            ("decoder.mid.block_2.conv2.bias", "decoder.mid_block.resnets.1.conv2.bias"),
            ("decoder.norm_out.weight", "decoder.conv_norm_out.weight"),
            ("post_quant_conv.weight", "post_quant_conv.weight"),
        ];
        for (original, diffusers) in vae {
            assert_eq!(vae_rename(original, 4).map(|(n, _)| n).as_deref(), Some(diffusers), "{original}");
        }
        assert_eq!(
            vae_rename("encoder.mid.attn_1.q.weight", 4),
            Some(("encoder.mid_block.attentions.0.to_q.weight".into(), true))
        );
        assert_eq!(vae_rename("decoder.up.4.block.0.conv1.weight", 4), None);
    }
}
