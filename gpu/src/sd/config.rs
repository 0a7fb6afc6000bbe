//! The component configs a pipeline ships (`config.json`, `scheduler_config.json`), read into
//! the fields thitl's networks are built from. Unknown keys are ignored; a known key with an
//! unsupported value is an error that names the file and the key.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Why a config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// A parsed JSON object with the file it came from, for messages.
pub struct ConfigFile {
    path: PathBuf,
    map: Map<String, Value>,
}

impl ConfigFile {
    /// Reads a JSON object.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(path, &text)
    }

    /// Parses `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        match serde_json::from_str(text) {
            Ok(Value::Object(map)) => Ok(ConfigFile { path: path.into(), map }),
            Ok(_) => Err(ConfigError::Invalid { path: path.into(), message: "expected a JSON object".into() }),
            Err(e) => Err(ConfigError::Invalid { path: path.into(), message: format!("not JSON: {e}") }),
        }
    }

    fn invalid(&self, message: String) -> ConfigError {
        ConfigError::Invalid { path: self.path.clone(), message }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// An unsigned integer, or `default` when absent.
    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| self.invalid(format!("\"{key}\" must be a non-negative integer, found {v}"))),
        }
    }

    /// A required unsigned integer.
    pub fn usize(&self, key: &str) -> Result<usize, ConfigError> {
        self.get(key).ok_or_else(|| self.invalid(format!("missing \"{key}\"")))?;
        self.usize_or(key, 0)
    }

    /// A number, or `default` when absent.
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.invalid(format!("\"{key}\" must be a number, found {v}"))),
        }
    }

    /// A boolean, or `default` when absent.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.invalid(format!("\"{key}\" must be true or false, found {v}"))),
        }
    }

    /// A string, or `default` when absent.
    pub fn str_or(&self, key: &str, default: &str) -> Result<String, ConfigError> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(v) => v
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| self.invalid(format!("\"{key}\" must be a string, found {v}"))),
        }
    }

    /// A list of strings.
    pub fn strings(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        let value = self.get(key).ok_or_else(|| self.invalid(format!("missing \"{key}\"")))?;
        value
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_string)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| self.invalid(format!("\"{key}\" must be a list of strings, found {value}")))
    }

    /// A list of unsigned integers, or one integer repeated `len` times.
    pub fn usizes(&self, key: &str, len: usize) -> Result<Option<Vec<usize>>, ConfigError> {
        let Some(value) = self.get(key) else { return Ok(None) };
        if let Some(v) = value.as_u64() {
            return Ok(Some(vec![v as usize; len]));
        }
        let list = value
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_u64().map(|v| v as usize)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| {
                self.invalid(format!("\"{key}\" must be an integer or a list of integers, found {value}"))
            })?;
        if list.len() != len {
            return Err(self.invalid(format!("\"{key}\" lists {} values, expected {len} (one per block)", list.len())));
        }
        Ok(Some(list))
    }

    /// A required, non-empty list of unsigned integers.
    pub fn usize_list(&self, key: &str) -> Result<Vec<usize>, ConfigError> {
        let value = self.get(key).ok_or_else(|| self.invalid(format!("missing \"{key}\"")))?;
        value
            .as_array()
            .filter(|a| !a.is_empty())
            .and_then(|a| a.iter().map(|v| v.as_u64().map(|v| v as usize)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| self.invalid(format!("\"{key}\" must be a non-empty list of integers, found {value}")))
    }

    /// Fails unless `key` is absent or one of `allowed` (a feature thitl does not implement).
    pub fn require_one_of(&self, key: &str, allowed: &[Value]) -> Result<(), ConfigError> {
        match self.get(key) {
            None => Ok(()),
            Some(v) if allowed.contains(v) => Ok(()),
            Some(v) => Err(self.invalid(format!(
                "\"{key}\" is {v}; thitl supports {}",
                allowed.iter().map(Value::to_string).collect::<Vec<_>>().join(" or ")
            ))),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The CLIP text encoder (`text_encoder/config.json`, transformers' `CLIPTextConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Layers.
    pub layers: usize,
    /// Heads.
    pub heads: usize,
    /// Positions.
    pub max_positions: usize,
    /// Layer norm epsilon.
    pub layer_norm_eps: f32,
    /// `quick_gelu` (SD 1.x) or `gelu` (SD 2.x).
    pub quick_gelu: bool,
}

impl ClipConfig {
    /// Reads and checks the config.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        Self::from_file(ConfigFile::read(path)?)
    }

    /// Checks an already parsed config (`file.path()` names it in messages).
    pub fn from_file(file: ConfigFile) -> Result<Self, ConfigError> {
        let activation = file.str_or("hidden_act", "quick_gelu")?;
        let quick_gelu = match activation.as_str() {
            "quick_gelu" => true,
            "gelu" => false,
            other => {
                return Err(file.invalid(format!("\"hidden_act\" is {other:?}; thitl supports quick_gelu or gelu")));
            }
        };
        let config = ClipConfig {
            vocab_size: file.usize("vocab_size")?,
            hidden_size: file.usize("hidden_size")?,
            intermediate_size: file.usize("intermediate_size")?,
            layers: file.usize("num_hidden_layers")?,
            heads: file.usize("num_attention_heads")?,
            max_positions: file.usize("max_position_embeddings")?,
            layer_norm_eps: file.f64_or("layer_norm_eps", 1e-5)? as f32,
            quick_gelu,
        };
        if config.heads == 0 || !config.hidden_size.is_multiple_of(config.heads) {
            return Err(
                file.invalid(format!("{} heads do not divide hidden_size {}", config.heads, config.hidden_size))
            );
        }
        Ok(config)
    }
}

/// The UNet (`unet/config.json`, diffusers' `UNet2DConditionModel`).
#[derive(Debug, Clone, PartialEq)]
pub struct UnetConfig {
    /// Latent channels in.
    pub in_channels: usize,
    /// Latent channels out.
    pub out_channels: usize,
    /// Channels per down block.
    pub block_out_channels: Vec<usize>,
    /// Whether each down block has cross-attention (`CrossAttnDownBlock2D`).
    pub down_attention: Vec<bool>,
    /// Whether each up block has cross-attention (`CrossAttnUpBlock2D`).
    pub up_attention: Vec<bool>,
    /// Whether there is a mid block (`UNetMidBlock2DCrossAttn`; distilled UNets may have none).
    pub mid_block: bool,
    /// ResNets per down block (up blocks have one more).
    pub layers_per_block: Vec<usize>,
    /// Transformer layers per down block (up blocks use the reversed list).
    pub transformer_layers: Vec<usize>,
    /// Attention heads per down block (diffusers reads `attention_head_dim` as the head count).
    pub heads: Vec<usize>,
    /// Text states' width.
    pub cross_attention_dim: usize,
    /// GroupNorm groups.
    pub norm_groups: usize,
    /// ResNet GroupNorm epsilon.
    pub norm_eps: f32,
    /// Linear (SD 2.x) rather than 1×1-convolution projections around the transformers.
    pub use_linear_projection: bool,
    /// Timestep embedding puts cos before sin.
    pub flip_sin_to_cos: bool,
    /// Timestep frequency shift.
    pub freq_shift: f64,
    /// Padding of the down-sampling convolutions.
    pub downsample_padding: usize,
    /// Kernel of conv_in.
    pub conv_in_kernel: usize,
    /// Kernel of conv_out.
    pub conv_out_kernel: usize,
    /// Native latent side (`sample_size`).
    pub sample_size: usize,
}

impl UnetConfig {
    /// Reads and checks the config: SD 1.x/2.x and distilled variants with fewer blocks.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        Self::from_file(ConfigFile::read(path)?)
    }

    /// Checks an already parsed config (`file.path()` names it in messages).
    pub fn from_file(file: ConfigFile) -> Result<Self, ConfigError> {
        let string = |v: &str| Value::String(v.into());
        file.require_one_of("time_embedding_type", &[string("positional")])?;
        file.require_one_of("resnet_time_scale_shift", &[string("default")])?;
        file.require_one_of("class_embed_type", &[])?;
        file.require_one_of("addition_embed_type", &[])?;
        file.require_one_of("encoder_hid_dim_type", &[])?;
        file.require_one_of("time_cond_proj_dim", &[])?;
        file.require_one_of("num_class_embeds", &[])?;
        file.require_one_of("only_cross_attention", &[Value::Bool(false)])?;
        file.require_one_of("dual_cross_attention", &[Value::Bool(false)])?;
        file.require_one_of("center_input_sample", &[Value::Bool(false)])?;
        file.require_one_of("act_fn", &[string("silu")])?;
        file.require_one_of("attention_type", &[string("default")])?;
        let block_out_channels = file.usize_list("block_out_channels")?;
        let blocks = block_out_channels.len();
        let down = file.strings("down_block_types")?;
        let up = file.strings("up_block_types")?;
        if down.len() != blocks || up.len() != blocks {
            return Err(file.invalid(format!(
                "{} down and {} up block types for {blocks} block_out_channels",
                down.len(),
                up.len()
            )));
        }
        let kind = |name: &str, cross: &str, plain: &str| -> Result<bool, ConfigError> {
            match name {
                n if n == cross => Ok(true),
                n if n == plain => Ok(false),
                other => {
                    Err(file.invalid(format!("block type {other:?} is not supported; expected {cross} or {plain}")))
                }
            }
        };
        let down_attention =
            down.iter().map(|n| kind(n, "CrossAttnDownBlock2D", "DownBlock2D")).collect::<Result<Vec<_>, _>>()?;
        let up_attention =
            up.iter().map(|n| kind(n, "CrossAttnUpBlock2D", "UpBlock2D")).collect::<Result<Vec<_>, _>>()?;
        // BK-SDM-Small/Tiny drop the mid block: `"mid_block_type": null`.
        let mid_block = match file.map.get("mid_block_type") {
            Some(Value::Null) => false,
            _ => match file.str_or("mid_block_type", "UNetMidBlock2DCrossAttn")?.as_str() {
                "UNetMidBlock2DCrossAttn" => true,
                other => return Err(file.invalid(format!("mid_block_type {other:?} is not supported"))),
            },
        };
        let heads = match file.usizes("num_attention_heads", blocks)? {
            Some(heads) => heads,
            None => file.usizes("attention_head_dim", blocks)?.unwrap_or(vec![8; blocks]),
        };
        let config = UnetConfig {
            in_channels: file.usize_or("in_channels", 4)?,
            out_channels: file.usize_or("out_channels", 4)?,
            down_attention,
            up_attention,
            mid_block,
            layers_per_block: file.usizes("layers_per_block", blocks)?.unwrap_or(vec![2; blocks]),
            transformer_layers: file.usizes("transformer_layers_per_block", blocks)?.unwrap_or(vec![1; blocks]),
            heads,
            cross_attention_dim: file.usizes("cross_attention_dim", 1)?.map(|v| v[0]).unwrap_or(1280),
            norm_groups: file.usize_or("norm_num_groups", 32)?,
            norm_eps: file.f64_or("norm_eps", 1e-5)? as f32,
            use_linear_projection: file.bool_or("use_linear_projection", false)?,
            flip_sin_to_cos: file.bool_or("flip_sin_to_cos", true)?,
            freq_shift: file.f64_or("freq_shift", 0.0)?,
            downsample_padding: file.usize_or("downsample_padding", 1)?,
            conv_in_kernel: file.usize_or("conv_in_kernel", 3)?,
            conv_out_kernel: file.usize_or("conv_out_kernel", 3)?,
            sample_size: file.usize_or("sample_size", 64)?,
            block_out_channels,
        };
        if file.f64_or("mid_block_scale_factor", 1.0)? != 1.0 || file.f64_or("resnet_out_scale_factor", 1.0)? != 1.0 {
            return Err(file.invalid("scale factors other than 1 are not supported".into()));
        }
        for (i, (&channels, &heads)) in config.block_out_channels.iter().zip(&config.heads).enumerate() {
            if heads == 0 || !channels.is_multiple_of(heads) {
                return Err(file.invalid(format!("block {i}: {heads} heads do not divide {channels} channels")));
            }
            if !channels.is_multiple_of(config.norm_groups) {
                return Err(
                    file.invalid(format!("block {i}: {} groups do not divide {channels} channels", config.norm_groups))
                );
            }
        }
        Ok(config)
    }

    /// How many times the latents are halved.
    pub fn downsamplings(&self) -> usize {
        self.block_out_channels.len() - 1
    }
}

/// The VAE (`vae/config.json`, diffusers' `AutoencoderKL`).
#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    /// Image channels.
    pub in_channels: usize,
    /// Image channels out.
    pub out_channels: usize,
    /// Latent channels.
    pub latent_channels: usize,
    /// Channels per block.
    pub block_out_channels: Vec<usize>,
    /// ResNets per encoder block (decoder blocks have one more).
    pub layers_per_block: usize,
    /// GroupNorm groups.
    pub norm_groups: usize,
    /// Latents are divided by this before decoding (multiplied after encoding).
    pub scaling_factor: f32,
    /// Latents are shifted by this (SD3-style VAEs; 0 for SD).
    pub shift_factor: f32,
    /// Has `quant_conv` / `post_quant_conv`.
    pub use_quant_conv: bool,
    /// Has `post_quant_conv`.
    pub use_post_quant_conv: bool,
    /// The mid blocks have attention.
    pub mid_attention: bool,
}

impl VaeConfig {
    /// Reads and checks the config.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        Self::from_file(ConfigFile::read(path)?)
    }

    /// Checks an already parsed config (`file.path()` names it in messages).
    pub fn from_file(file: ConfigFile) -> Result<Self, ConfigError> {
        let block_out_channels = file.usize_list("block_out_channels")?;
        if block_out_channels.is_empty() {
            return Err(file.invalid("\"block_out_channels\" is empty".into()));
        }
        for name in file.strings("down_block_types").unwrap_or_default() {
            if name != "DownEncoderBlock2D" {
                return Err(file.invalid(format!("down block type {name:?} is not supported")));
            }
        }
        for name in file.strings("up_block_types").unwrap_or_default() {
            if name != "UpDecoderBlock2D" {
                return Err(file.invalid(format!("up block type {name:?} is not supported")));
            }
        }
        file.require_one_of("act_fn", &[Value::String("silu".into())])?;
        let norm_groups = file.usize_or("norm_num_groups", 32)?;
        for &channels in &block_out_channels {
            if norm_groups == 0 || !channels.is_multiple_of(norm_groups) {
                return Err(file.invalid(format!("{norm_groups} groups do not divide {channels} channels")));
            }
        }
        Ok(VaeConfig {
            in_channels: file.usize_or("in_channels", 3)?,
            out_channels: file.usize_or("out_channels", 3)?,
            latent_channels: file.usize_or("latent_channels", 4)?,
            layers_per_block: file.usize_or("layers_per_block", 2)?,
            norm_groups,
            scaling_factor: file.f64_or("scaling_factor", 0.18215)? as f32,
            shift_factor: file.f64_or("shift_factor", 0.0)? as f32,
            use_quant_conv: file.bool_or("use_quant_conv", true)?,
            use_post_quant_conv: file.bool_or("use_post_quant_conv", true)?,
            mid_attention: file.bool_or("mid_block_add_attention", true)?,
            block_out_channels,
        })
    }

    /// Image pixels per latent along each side.
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}
