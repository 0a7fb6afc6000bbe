//! A Stable Diffusion pipeline on a device: loading its components from a diffusers folder and
//! sampling as `StableDiffusionPipeline` does (prompt and negative prompt through the text
//! encoder, classifier-free guidance as `uncond + g·(text − uncond)` on the batch `[negative,
//! positive]`, the scheduler's input scaling and update, the latents before the VAE).

use std::path::{Path, PathBuf};

use crate::device::ImageOps;
use crate::kernels::noise::NoiseStream;

use super::clip::ClipTextModel;
use super::config::{ClipConfig, ConfigError, UnetConfig, VaeConfig};
use super::lora::{LoraAdapter, Target};
use super::pipeline::{PipelineError, PipelineFolder};
use super::scheduler::{Scheduler, SchedulerConfig, SchedulerKind};
use super::tokenizer::ClipTokenizer;
use super::unet::Unet;
use super::vae::Vae;
use super::weights::{ComponentWeights, WeightsError};

/// Why a pipeline cannot be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum SdError {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{0}")]
    Invalid(String),
    #[error("device: {0}")]
    Device(#[from] crate::context::GpuError),
}

/// What to sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleOptions {
    /// The prompt.
    pub prompt: String,
    /// The negative prompt (`""` when `None`, as diffusers does).
    pub negative_prompt: Option<String>,
    /// Inference steps.
    pub steps: usize,
    /// Guidance scale; ≤ 1 turns classifier-free guidance off.
    pub guidance: f32,
    /// The sampler (`None`: the one in `scheduler_config.json`).
    pub scheduler: Option<SchedulerKind>,
    /// DDIM's η.
    pub eta: f32,
    /// Seed of the initial noise (and DDIM's noise with η > 0).
    pub seed: u64,
    /// Images.
    pub batch: usize,
    /// Image height in pixels (a multiple of the VAE's factor × the UNet's).
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Initial latents (`batch × latent_channels × h × w`) instead of seeded noise; they are
    /// multiplied by the scheduler's initial σ, as diffusers does.
    pub latents: Option<Vec<f32>>,
}

/// Latents with their shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Latents {
    /// `[batch, channels, height, width]`.
    pub shape: [usize; 4],
    /// The values.
    pub values: Vec<f32>,
}

/// A loaded pipeline.
pub struct StableDiffusion<D: ImageOps> {
    /// The tokenizer.
    pub tokenizer: ClipTokenizer,
    /// The text encoder.
    pub text_encoder: ClipTextModel<D>,
    /// The UNet.
    pub unet: Unet<D>,
    /// The VAE.
    pub vae: Vae<D>,
    /// The scheduler config.
    pub scheduler: SchedulerConfig,
}

/// Every file loading a pipeline reads, relative to its folder (sorted): `model_index.json`, the
/// tokenizer's files, each component's config and its weights files (the shards' index
/// included), and the scheduler's config. What `thitl model import` stores.
pub fn pipeline_files(folder: &PipelineFolder, variant: Option<&str>) -> Result<Vec<PathBuf>, SdError> {
    let root = folder.root();
    let mut files = vec![root.join("model_index.json")];
    let tokenizer = folder.component_dir("tokenizer")?;
    for name in ["vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"] {
        let path = tokenizer.join(name);
        if path.is_file() {
            files.push(path);
        }
    }
    for (component, stem) in
        [("text_encoder", "model"), ("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model")]
    {
        let dir = folder.component_dir(component)?;
        files.push(dir.join("config.json"));
        let (index, weights) = super::weights::resolve(&dir, stem, variant)?;
        files.extend(index);
        files.extend(weights);
    }
    files.push(folder.component_dir("scheduler")?.join("scheduler_config.json"));
    let mut relative = Vec::new();
    for file in files {
        if !file.is_file() {
            return Err(SdError::Invalid(format!("{} is missing", file.display())));
        }
        relative.push(file.strip_prefix(root).map(Path::to_path_buf).unwrap_or(file));
    }
    relative.sort();
    Ok(relative)
}

impl<D: ImageOps> StableDiffusion<D> {
    /// Loads a diffusers pipeline folder onto `device`.
    pub fn load(device: &D, folder: &PipelineFolder, variant: Option<&str>) -> Result<Self, SdError> {
        Self::load_with_lora(device, folder, variant, None)
    }

    /// [`StableDiffusion::load`] with a LoRA adapter merged into the UNet and text encoder
    /// weights at `multiplier` (1: the adapter as trained).
    pub fn load_with_lora(
        device: &D,
        folder: &PipelineFolder,
        variant: Option<&str>,
        lora: Option<(&LoraAdapter, f32)>,
    ) -> Result<Self, SdError> {
        let tokenizer = folder.tokenizer()?;
        let text_dir = folder.component_dir("text_encoder")?;
        let unet_dir = folder.component_dir("unet")?;
        let vae_dir = folder.component_dir("vae")?;
        let scheduler_dir = folder.component_dir("scheduler")?;
        let clip = ClipConfig::read(&text_dir.join("config.json"))?;
        let unet = UnetConfig::read(&unet_dir.join("config.json"))?;
        let vae = VaeConfig::read(&vae_dir.join("config.json"))?;
        let scheduler = SchedulerConfig::read(&scheduler_dir.join("scheduler_config.json"))?;
        if tokenizer.model_max_length() > clip.max_positions {
            return Err(SdError::Invalid(format!(
                "the tokenizer pads to {} tokens but the text encoder has {} positions",
                tokenizer.model_max_length(),
                clip.max_positions
            )));
        }
        if clip.hidden_size != unet.cross_attention_dim {
            return Err(SdError::Invalid(format!(
                "the text encoder's width {} differs from the UNet's cross_attention_dim {}",
                clip.hidden_size, unet.cross_attention_dim
            )));
        }
        let mut text_weights = ComponentWeights::load(&text_dir, "model", variant)?;
        let mut unet_weights = ComponentWeights::load(&unet_dir, "diffusion_pytorch_model", variant)?;
        if let Some((adapter, multiplier)) = lora {
            text_weights.merge_lora(adapter.modules(Target::TextEncoder), multiplier, "lora_te_", &adapter.source)?;
            unet_weights.merge_lora(adapter.modules(Target::Unet), multiplier, "lora_unet_", &adapter.source)?;
        }
        let text_encoder = ClipTextModel::load(device, &clip, text_weights)?;
        let unet_model = Unet::load(device, &unet, unet_weights)?;
        let vae_model = Vae::load(device, &vae, ComponentWeights::load(&vae_dir, "diffusion_pytorch_model", variant)?)?;
        Ok(StableDiffusion { tokenizer, text_encoder, unet: unet_model, vae: vae_model, scheduler })
    }

    /// Text states of `prompts` (`prompts.len() × max_length × hidden`).
    pub fn encode_prompts(&self, device: &D, prompts: &[&str]) -> Result<D::Buffer, SdError> {
        let length = self.tokenizer.model_max_length();
        let mut ids = Vec::with_capacity(prompts.len() * length);
        for prompt in prompts {
            ids.extend(self.tokenizer.encode_padded(prompt).map_err(|e| SdError::Invalid(e.to_string()))?);
        }
        self.text_encoder.forward(device, &ids, length).map_err(SdError::Invalid)
    }

    /// The latent size for an image size, checked.
    pub fn latent_size(&self, height: usize, width: usize) -> Result<(usize, usize), SdError> {
        let factor = self.vae.config().scale_factor() << self.unet.config().downsamplings();
        if height == 0 || width == 0 || !height.is_multiple_of(factor) || !width.is_multiple_of(factor) {
            return Err(SdError::Invalid(format!(
                "height and width must be positive multiples of {factor}, got {height}×{width}"
            )));
        }
        let vae = self.vae.config().scale_factor();
        Ok((height / vae, width / vae))
    }

    /// Runs the sampler; `progress(step, steps)` after each step. Returns the final latents
    /// (before the VAE).
    pub fn sample(
        &self,
        device: &D,
        options: &SampleOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Latents, SdError> {
        let (h, w) = self.latent_size(options.height, options.width)?;
        let batch = options.batch.max(1);
        let channels = self.unet.config().in_channels;
        let per_image = channels * h * w;
        let mut scheduler =
            Scheduler::new(&self.scheduler, options.scheduler, options.steps, options.eta).map_err(SdError::Invalid)?;
        let guided = options.guidance > 1.0;
        let negative = options.negative_prompt.as_deref().unwrap_or("");
        let mut prompts: Vec<&str> = Vec::new();
        if guided {
            prompts.extend(std::iter::repeat_n(negative, batch));
        }
        prompts.extend(std::iter::repeat_n(options.prompt.as_str(), batch));
        let context = self.encode_prompts(device, &prompts)?;
        let context_len = self.tokenizer.model_max_length();

        let mut latents = match &options.latents {
            Some(values) => {
                if values.len() != batch * per_image {
                    return Err(SdError::Invalid(format!(
                        "the initial latents hold {} values; expected {batch}×{channels}×{h}×{w} = {}",
                        values.len(),
                        batch * per_image
                    )));
                }
                values.clone()
            }
            None => {
                let mut noise = vec![0f32; batch * per_image];
                NoiseStream::new(options.seed).fill(0, 1.0, &mut noise);
                noise
            }
        };
        let sigma = scheduler.init_noise_sigma();
        latents.iter_mut().for_each(|v| *v *= sigma);

        let timesteps = scheduler.timesteps().to_vec();
        let evaluations = if guided { 2 * batch } else { batch };
        for (index, &t) in timesteps.iter().enumerate() {
            let scale = scheduler.input_scale(index);
            let mut input = Vec::with_capacity(evaluations * per_image);
            if guided {
                input.extend(latents.iter().map(|v| v * scale));
            }
            input.extend(latents.iter().map(|v| v * scale));
            let input = device.upload(&input);
            let output = self
                .unet
                .forward(device, &input, evaluations, h, w, &vec![t as f32; evaluations], &context, context_len)
                .map_err(SdError::Invalid)?;
            let output = device.download(&output, evaluations * per_image)?;
            let prediction: Vec<f32> = if guided {
                let (unconditional, conditional) = output.split_at(batch * per_image);
                unconditional.iter().zip(conditional).map(|(&u, &c)| u + options.guidance * (c - u)).collect()
            } else {
                output
            };
            let noise = (options.eta > 0.0).then(|| {
                let mut noise = vec![0f32; latents.len()];
                let offset = ((index + 1) * latents.len()) as u32;
                NoiseStream::new(options.seed).fill(offset, 1.0, &mut noise);
                noise
            });
            scheduler.step(index, &prediction, &mut latents, noise.as_deref()).map_err(SdError::Invalid)?;
            progress(index + 1, timesteps.len());
        }
        Ok(Latents { shape: [batch, channels, h, w], values: latents })
    }

    /// Decodes latents to images with values in [0, 1] (`batch × 3 × H × W`), as the pipeline's
    /// `output_type="pt"`.
    pub fn decode(&self, device: &D, latents: &Latents) -> Result<Vec<f32>, SdError> {
        let [batch, _, h, w] = latents.shape;
        let raw = self.vae.decode(device, &latents.values, batch, h, w);
        let factor = self.vae.config().scale_factor();
        let len = batch * self.vae.config().out_channels * h * factor * w * factor;
        let raw = device.download(&raw, len)?;
        Ok(raw.iter().map(|v| (v / 2.0 + 0.5).clamp(0.0, 1.0)).collect())
    }
}

impl Latents {
    /// The name of the tensor in a latents file.
    pub const TENSOR: &'static str = "latents";

    /// A safetensors file with one f32 tensor `latents` of shape `[batch, channels, h, w]`.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, SdError> {
        crate::tensor::f32_safetensors([(Self::TENSOR, &self.shape[..], &self.values[..])], None)
            .map_err(SdError::Invalid)
    }

    /// Reads a latents file written by [`Latents::to_safetensors`] (or by PyTorch's
    /// `safetensors.torch.save_file({"latents": x})`; f16/bf16 are converted).
    pub fn from_safetensors(path: &Path, bytes: &[u8]) -> Result<Self, SdError> {
        let mut found = None;
        super::weights::read_safetensors(path, bytes, &mut |name, tensor| {
            if name == Self::TENSOR {
                found = Some(tensor);
            }
        })?;
        let tensor =
            found.ok_or_else(|| SdError::Invalid(format!("{} has no tensor \"{}\"", path.display(), Self::TENSOR)))?;
        let shape: [usize; 4] = tensor.shape.clone().try_into().map_err(|_| {
            SdError::Invalid(format!(
                "{}: \"latents\" has shape {:?}; expected [batch, channels, height, width]",
                path.display(),
                tensor.shape
            ))
        })?;
        Ok(Latents { shape, values: tensor.data })
    }
}
