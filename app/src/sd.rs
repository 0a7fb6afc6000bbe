//! Stable Diffusion pipelines imported from users' diffusers folders: the import (every file a
//! blob, a manifest naming them, a base model version whose config holds the components'
//! configs), the [`ModelFamily`] that loads such a version from its blobs and samples it on
//! thitl's kernels, and images as PNG.
//!
//! A version's weights blob is its manifest: JSON mapping each file's path in the folder to its
//! blob. Loading unpacks the files into the data directory's model cache (each checked against
//! its hash) and opens the folder there, so the pipeline that samples is byte for byte the one
//! imported.

pub mod export;
pub mod train;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use domain::fine_tune::LoraConfig;
use domain::generation::SamplerSettings;
use domain::values::BlobHash;
use gpu::device::{CpuDevice, ImageOps, WgpuDevice};
use gpu::sd::{PipelineFolder, SampleOptions, SdError, StableDiffusion};
use serde::{Deserialize, Serialize};

use crate::blobs::BlobStore;
use crate::ports::{
    Flow, Model, ModelError, ModelFamily, SampleRequest, TrainedAdapter, TrainingImage, TrainingProgress,
};

/// The family name a version's config carries (`"family"`).
pub const FAMILY: &str = "stable-diffusion";

/// The manifest format.
pub const MANIFEST_FORMAT: &str = "thitl.diffusers-pipeline.v1";

/// The files of an imported pipeline: its weights blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: String,
    /// [`FAMILY`].
    pub family: String,
    /// The pipeline class (`StableDiffusionPipeline`).
    pub pipeline: String,
    /// The weights variant imported (`fp16`), if one was asked for.
    pub variant: Option<String>,
    /// Each file's path in the folder (with `/`) and its blob's SHA-256.
    pub files: BTreeMap<String, String>,
}

impl Manifest {
    /// Parses and checks a manifest: known format, relative paths without `..`, SHA-256 names.
    pub fn parse(bytes: &[u8]) -> Result<Self, ModelError> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| {
            ModelError::new(format!("the weights blob is not a Stable Diffusion pipeline manifest: {e}"))
        })?;
        if manifest.format != MANIFEST_FORMAT || manifest.family != FAMILY {
            return Err(ModelError::new(format!(
                "the manifest is {} of family {}; expected {MANIFEST_FORMAT} of {FAMILY}",
                manifest.format, manifest.family
            )));
        }
        for (path, hash) in &manifest.files {
            let safe = !path.is_empty()
                && !path.starts_with('/')
                && path.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
                && !path.contains('\\');
            if !safe {
                return Err(ModelError::new(format!("the manifest names the file {path:?}, not a relative path")));
            }
            BlobHash::parse(hash).map_err(|e| ModelError::new(format!("the manifest's hash for {path}: {e}")))?;
        }
        Ok(manifest)
    }
}

/// A pipeline folder checked for import: every file it needs, read.
pub struct PreparedImport {
    /// The manifest, hashes filled in.
    pub manifest: Manifest,
    /// The files (path in the folder, bytes).
    pub files: Vec<(String, Vec<u8>)>,
    /// The config a base version records: family, pipeline class, components' configs.
    pub config: serde_json::Value,
}

/// Reads and fully checks a pipeline folder before anything is written: the configs, the
/// tokenizer, and every weight with the shape its config implies (the pipeline is built on the
/// CPU backend once). Errors name the file.
pub fn prepare_import(path: &Path, variant: Option<&str>) -> Result<PreparedImport, SdError> {
    let folder = PipelineFolder::open(path)?;
    let relative = gpu::sd::sample::pipeline_files(&folder, variant)?;
    // Everything must load, as it will when a job samples it.
    let device = CpuDevice::<f32>::new();
    let pipeline = StableDiffusion::load(&device, &folder, variant)?;
    drop(pipeline);
    let mut files = Vec::new();
    let mut hashes = BTreeMap::new();
    let mut components = serde_json::Map::new();
    for file in relative {
        let full = path.join(&file);
        let bytes =
            std::fs::read(&full).map_err(|e| SdError::Invalid(format!("cannot read {}: {e}", full.display())))?;
        let name = file.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
        hashes.insert(name.clone(), crate::blobs::blob_hash(&bytes).as_str().to_string());
        if name.ends_with("config.json") && !name.starts_with("tokenizer/") {
            let component = name.split('/').next().unwrap_or_default().to_string();
            let value: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| SdError::Invalid(format!("{} is not JSON: {e}", full.display())))?;
            components.insert(component, value);
        }
        files.push((name, bytes));
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        family: FAMILY.into(),
        pipeline: folder.class().to_string(),
        variant: variant.map(str::to_string),
        files: hashes,
    };
    let config = serde_json::json!({
        "family": FAMILY,
        "pipeline": folder.class(),
        "variant": variant,
        "components": components,
    });
    Ok(PreparedImport { manifest, files, config })
}

/// The named families `thitl serve` and `thitl worker` run besides the reference world: imported
/// Stable Diffusion pipelines, on `backend`, unpacked under the data directory at `root`.
pub fn named_families(
    blobs: Arc<dyn BlobStore>,
    backend: gpu::Backend,
    root: &Path,
) -> Vec<(String, Arc<dyn ModelFamily>)> {
    let cache = crate::data::DataDir::models_cache_path(root);
    vec![(FAMILY.to_string(), Arc::new(StableDiffusionFamily::new(blobs, backend, cache)))]
}

/// A single-file checkpoint converted to a diffusers folder in a temporary directory (removed
/// when dropped).
pub struct ConvertedCheckpoint {
    dir: PathBuf,
}

impl ConvertedCheckpoint {
    /// Converts `checkpoint` (see [`gpu::sd::single_file::convert`]: configs from `config`, a
    /// diffusers folder, else SD 1.5's; the tokenizer from `tokenizer`, else `config`'s).
    pub fn convert(checkpoint: &Path, config: Option<&Path>, tokenizer: Option<&Path>) -> Result<Self, SdError> {
        let files = gpu::sd::single_file::convert(checkpoint, config, tokenizer)?;
        let dir = std::env::temp_dir().join(format!("thitl-checkpoint-{}", uuid::Uuid::now_v7()));
        let converted = ConvertedCheckpoint { dir };
        for (name, bytes) in files {
            let path = converted.dir.join(&name);
            let written =
                path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(&path, bytes));
            written.map_err(|e| SdError::Invalid(format!("cannot write {}: {e}", path.display())))?;
        }
        Ok(converted)
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ConvertedCheckpoint {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// [`prepare_import`] of a single-file checkpoint: converted first; the version's config also
/// names the file and its SHA-256 (`"converted_from"`).
pub fn prepare_import_single_file(
    checkpoint: &Path,
    config: Option<&Path>,
    tokenizer: Option<&Path>,
) -> Result<PreparedImport, SdError> {
    let bytes = std::fs::read(checkpoint)
        .map_err(|e| SdError::Invalid(format!("cannot read {}: {e}", checkpoint.display())))?;
    let hash = crate::blobs::blob_hash(&bytes);
    drop(bytes);
    let converted = ConvertedCheckpoint::convert(checkpoint, config, tokenizer)?;
    let mut prepared = prepare_import(converted.path(), None)?;
    prepared.config["converted_from"] = serde_json::json!({
        "file": checkpoint.file_name().map(|n| n.to_string_lossy().into_owned()),
        "sha256": hash.as_str(),
        "configs": if config.is_some() { "the --config folder" } else { "thitl's SD 1.5 configs" },
    });
    Ok(prepared)
}

/// Runs imported Stable Diffusion versions on one backend.
pub struct StableDiffusionFamily {
    blobs: Arc<dyn BlobStore>,
    backend: gpu::Backend,
    cache: PathBuf,
}

impl StableDiffusionFamily {
    /// Versions' files are unpacked under `cache` (the data directory's
    /// [`crate::data::DataDir::models_cache_path`]).
    pub fn new(blobs: Arc<dyn BlobStore>, backend: gpu::Backend, cache: PathBuf) -> Self {
        StableDiffusionFamily { blobs, backend, cache }
    }

    /// Unpacks the manifest's files into the cache (rewriting any that differ from their blob)
    /// and returns the folder.
    fn unpack(&self, manifest_bytes: &[u8], manifest: &Manifest) -> Result<PathBuf, ModelError> {
        let folder = self.cache.join(crate::blobs::blob_hash(manifest_bytes).as_str());
        for (path, hash) in &manifest.files {
            let hash = BlobHash::parse(hash).map_err(|e| ModelError::new(e.to_string()))?;
            let target = folder.join(path);
            if std::fs::read(&target).is_ok_and(|bytes| crate::blobs::blob_hash(&bytes) == hash) {
                continue;
            }
            let bytes = self.blobs.get(&hash).map_err(|e| ModelError::new(e.to_string()))?.ok_or_else(|| {
                ModelError::new(format!("the pipeline file {path} (blob {hash}) is not in the blob store"))
            })?;
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| ModelError::new(format!("cannot create {}: {e}", parent.display())))?;
            }
            let partial = target.with_extension("partial");
            std::fs::write(&partial, &bytes)
                .and_then(|()| std::fs::rename(&partial, &target))
                .map_err(|e| ModelError::new(format!("cannot write {}: {e}", target.display())))?;
        }
        Ok(folder)
    }
}

impl ModelFamily for StableDiffusionFamily {
    fn load(&self, weights: &[u8]) -> Result<Arc<dyn Model>, ModelError> {
        let manifest = Manifest::parse(weights)?;
        let folder = self.unpack(weights, &manifest)?;
        let source = Source { folder, variant: manifest.variant.clone(), backend: self.backend.clone() };
        let loaded = source.load(None)?;
        Ok(Arc::new(StableDiffusionModel { source, loaded: Mutex::new(loaded), tuned: false }))
    }

    fn prior_prompts(&self, _targeted_groups: &[String], count: u32, seeds: &mut dyn FnMut() -> u64) -> Vec<String> {
        // Everyday subjects none of the groups is: the model's own pictures of them keep what it
        // draws elsewhere while the adapter learns.
        const SUBJECTS: [&str; 8] = [
            "a photo of a dog in a park",
            "a photo of a bowl of fruit on a table",
            "a photo of a city street at dusk",
            "a photo of a mountain lake",
            "a photo of a bicycle leaning on a wall",
            "a photo of a cup of coffee",
            "a photo of a garden with flowers",
            "a photo of a bookshelf",
        ];
        (0..count).map(|_| SUBJECTS[(seeds() % SUBJECTS.len() as u64) as usize].to_string()).collect()
    }

    fn alternative_objects(&self) -> Vec<String> {
        Vec::new()
    }
}

enum Loaded {
    Cpu(CpuDevice<f32>, StableDiffusion<CpuDevice<f32>>),
    Wgpu(WgpuDevice, StableDiffusion<WgpuDevice>),
}

/// Where a version's pipeline comes from: its unpacked folder, weights variant and backend.
#[derive(Clone)]
struct Source {
    folder: PathBuf,
    variant: Option<String>,
    backend: gpu::Backend,
}

impl Source {
    /// The pipeline, with an adapter merged into its weights.
    fn load(&self, adapter: Option<&gpu::sd::lora::LoraAdapter>) -> Result<Loaded, ModelError> {
        let pipeline = PipelineFolder::open(&self.folder).map_err(|e| ModelError::new(e.to_string()))?;
        let variant = self.variant.as_deref();
        let lora = adapter.map(|adapter| (adapter, 1.0));
        let error = |e: SdError| ModelError::new(e.to_string());
        Ok(match &self.backend {
            gpu::Backend::Cpu => {
                let device = CpuDevice::<f32>::new();
                let model = StableDiffusion::load_with_lora(&device, &pipeline, variant, lora).map_err(error)?;
                Loaded::Cpu(device, model)
            }
            gpu::Backend::Wgpu(context) => {
                let device = WgpuDevice::new(context.clone());
                let model = StableDiffusion::load_with_lora(&device, &pipeline, variant, lora).map_err(error)?;
                Loaded::Wgpu(device, model)
            }
        })
    }
}

/// An imported pipeline, loaded.
struct StableDiffusionModel {
    source: Source,
    /// One sampling at a time on the device.
    loaded: Mutex<Loaded>,
    tuned: bool,
}

/// The [`train::TrainOptions`] of a campaign's LoRA settings: its attention targets (`qkv` →
/// `to_q`, `to_k`, `to_v`; `attn_out` → `to_out.0`; the DiT's MLP targets have no counterpart
/// in the trained projections of the UNet and are left out), the batch in micro-batches of one.
pub fn train_options(config: &LoraConfig) -> Result<train::TrainOptions, ModelError> {
    use domain::fine_tune::LoraTarget;
    let mut targets = Vec::new();
    for target in &config.targets {
        match target {
            LoraTarget::Qkv => targets.extend(["to_q", "to_k", "to_v"].map(String::from)),
            LoraTarget::AttnOut => targets.push("to_out.0".to_string()),
            LoraTarget::MlpIn | LoraTarget::MlpOut => {}
        }
    }
    if targets.is_empty() {
        return Err(ModelError::new(
            "a Stable Diffusion LoRA adapts the attention projections: the settings' targets need qkv or attn_out",
        ));
    }
    Ok(train::TrainOptions {
        lora: gpu::sd::train::LoraSettings { rank: config.rank as usize, alpha: config.alpha, targets },
        steps: config.steps,
        batch: config.batch_size.max(1) as usize,
        micro_batch: 1,
        optimizer: gpu::cpu::AdamW {
            lr: config.learning_rate,
            weight_decay: config.weight_decay,
            ..gpu::cpu::AdamW::default()
        },
        seed: config.seed,
        prior_weight: config.prior_weight,
    })
}

fn fine_tune_on<D: gpu::device::ImageBackward>(
    device: &D,
    source: &Source,
    examples: &[train::Example],
    prior: &[train::Example],
    options: &train::TrainOptions,
    progress_every: u32,
    report: &mut dyn FnMut(TrainingProgress) -> Flow,
) -> Result<TrainedAdapter, ModelError> {
    let pipeline = PipelineFolder::open(&source.folder).map_err(|e| ModelError::new(e.to_string()))?;
    let pipeline = StableDiffusion::load(device, &pipeline, source.variant.as_deref())
        .map_err(|e| ModelError::new(e.to_string()))?;
    let every = progress_every.max(1);
    let trained = train::train_lora(device, pipeline, examples, prior, options, &mut |step, steps, loss| {
        if step % every != 0 && step != steps {
            return true;
        }
        report(TrainingProgress { step, steps, loss }) == Flow::Continue
    })
    .map_err(|e| ModelError::new(e.to_string()))?;
    let adapter = gpu::sd::train::export::peft_file(trained.tensors(), &trained.settings).map_err(ModelError::new)?;
    Ok(TrainedAdapter { adapter, final_loss: trained.losses.last().copied().unwrap_or(f32::NAN) })
}

fn sample_one<D: ImageOps>(
    device: &D,
    pipeline: &StableDiffusion<D>,
    request: &SampleRequest,
    sampler: &SamplerSettings,
) -> Result<Vec<u8>, SdError> {
    let side = pipeline.unet.config().sample_size * pipeline.vae.config().scale_factor();
    let options = SampleOptions {
        prompt: request.prompt.clone(),
        negative_prompt: request.negative_prompt.clone(),
        steps: sampler.steps as usize,
        guidance: sampler.guidance_scale,
        scheduler: None,
        eta: sampler.eta,
        seed: request.seed,
        batch: 1,
        height: side,
        width: side,
        latents: None,
    };
    let latents = pipeline.sample(device, &options, &mut |_, _| {})?;
    let pixels = pipeline.decode(device, &latents)?;
    Ok(png_from_unit_rgb(&pixels, side, side))
}

impl Model for StableDiffusionModel {
    fn with_adapter(&self, adapter: &[u8]) -> Result<Arc<dyn Model>, ModelError> {
        let adapter = gpu::sd::lora::LoraAdapter::from_bytes(adapter, Path::new("the fine-tune's adapter"), None)
            .map_err(|e| ModelError::new(e.to_string()))?;
        let loaded = self.source.load(Some(&adapter))?;
        Ok(Arc::new(StableDiffusionModel { source: self.source.clone(), loaded: Mutex::new(loaded), tuned: true }))
    }

    fn is_tuned(&self) -> bool {
        self.tuned
    }

    fn sample(&self, requests: &[SampleRequest], sampler: &SamplerSettings) -> Result<Vec<Vec<u8>>, ModelError> {
        let loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        requests
            .iter()
            .map(|request| {
                match &*loaded {
                    Loaded::Cpu(device, pipeline) => sample_one(device, pipeline, request, sampler),
                    Loaded::Wgpu(device, pipeline) => sample_one(device, pipeline, request, sampler),
                }
                .map_err(|e| ModelError::new(e.to_string()))
            })
            .collect()
    }

    fn fine_tune(
        &self,
        examples: &[TrainingImage],
        prior: &[TrainingImage],
        config: &LoraConfig,
        progress_every: u32,
        report: &mut dyn FnMut(TrainingProgress) -> Flow,
    ) -> Result<TrainedAdapter, ModelError> {
        if self.tuned {
            return Err(ModelError::new("adapters do not stack: fine-tune the base version"));
        }
        let decode = |set: &[TrainingImage]| -> Result<Vec<train::Example>, ModelError> {
            set.iter()
                .map(|image| {
                    let mut example = train::decode_image(&image.png, &format!("image {}", image.name))
                        .map_err(|e| ModelError::new(e.to_string()))?;
                    example.caption = image.prompt.clone();
                    Ok(example)
                })
                .collect()
        };
        let (examples, prior) = (decode(examples)?, decode(prior)?);
        let options = train_options(config)?;
        // Training holds the device: no sampling meanwhile.
        let loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        match &*loaded {
            Loaded::Cpu(device, _) => {
                fine_tune_on(device, &self.source, &examples, &prior, &options, progress_every, report)
            }
            Loaded::Wgpu(device, _) => {
                fine_tune_on(device, &self.source, &examples, &prior, &options, progress_every, report)
            }
        }
    }
}

/// An RGB image with values in [0, 1] (`3 × height × width`, planar, as the pipeline's
/// `output_type="pt"`) as an 8-bit PNG, each value rounded as diffusers' `numpy_to_pil` does
/// (`round(255·v)`).
pub fn png_from_unit_rgb(values: &[f32], height: usize, width: usize) -> Vec<u8> {
    let plane = height * width;
    assert_eq!(values.len(), 3 * plane, "an RGB image of {height}×{width} has {} values", 3 * plane);
    let mut rgb = Vec::with_capacity(3 * plane);
    for pixel in 0..plane {
        for channel in 0..3 {
            let v = values[channel * plane + pixel];
            let v = if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
            rgb.push((v * 255.0).round() as u8);
        }
    }
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width as u32, height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // Writing a well-formed RGB8 buffer into a Vec cannot fail.
    let mut writer = encoder.write_header().expect("PNG header for an RGB8 image");
    writer.write_image_data(&rgb).expect("PNG data matching the header's size");
    writer.finish().expect("PNG end into a Vec");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trips_planar_unit_values() {
        let (h, w) = (3, 5);
        let values: Vec<f32> = (0..3 * h * w).map(|i| (i % 11) as f32 / 10.0).collect();
        let png = png_from_unit_rgb(&values, h, w);
        let mut reader = png::Decoder::new(std::io::Cursor::new(png)).read_info().unwrap();
        let mut buffer = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buffer).unwrap();
        assert_eq!((info.width, info.height), (w as u32, h as u32));
        for pixel in 0..h * w {
            for channel in 0..3 {
                let expected = (values[channel * h * w + pixel].clamp(0.0, 1.0) * 255.0).round() as u8;
                assert_eq!(buffer[pixel * 3 + channel], expected, "pixel {pixel} channel {channel}");
            }
        }
    }

    #[test]
    fn manifests_with_unsafe_paths_or_bad_hashes_are_refused() {
        let hash = "ab".repeat(32);
        let manifest = |path: &str, hash: &str| {
            serde_json::to_vec(&serde_json::json!({
                "format": MANIFEST_FORMAT, "family": FAMILY, "pipeline": "StableDiffusionPipeline",
                "variant": null, "files": {path: hash}
            }))
            .unwrap()
        };
        assert!(Manifest::parse(&manifest("unet/config.json", &hash)).is_ok());
        for path in ["../etc/passwd", "/etc/passwd", "unet/../../x", "unet//config.json", "a\\b", ""] {
            let error = Manifest::parse(&manifest(path, &hash)).unwrap_err();
            assert!(error.0.contains("not a relative path"), "{path}: {error}");
        }
        assert!(Manifest::parse(&manifest("unet/config.json", "xyz")).is_err());
        assert!(Manifest::parse(b"\x00\x01safetensors").is_err());
    }
}
