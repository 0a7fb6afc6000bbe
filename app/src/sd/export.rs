//! A fine-tuned version of an imported Stable Diffusion pipeline, exported in the formats other
//! tools load (see [`gpu::sd::train::export`]): its adapter as diffusers/PEFT
//! (`pytorch_lora_weights.safetensors`) or kohya (`lora_kohya.safetensors`), or the base UNet with
//! the adapter merged (`unet/diffusion_pytorch_model.safetensors` + `unet/config.json`, f32).

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use domain::{Aggregate, ModelVersion, ModelVersionId};
use gpu::sd::lora::{LoraAdapter, Target};
use gpu::sd::train::LoraSettings;
use gpu::sd::train::export::{AdapterTensor, kohya_file, merged_unet_file};
use gpu::sd::weights::{ComponentWeights, HostTensor, read_safetensors};

use super::{FAMILY, Manifest};
use crate::blobs::BlobStore;
use crate::commands::{CommandBus, CommandError};

/// The formats a version exports to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// diffusers/PEFT adapter file.
    Peft,
    /// kohya adapter file.
    Kohya,
    /// The base UNet with the adapter merged.
    Merged,
}

impl FromStr for ExportFormat {
    type Err = ExportError;

    fn from_str(value: &str) -> Result<Self, ExportError> {
        match value {
            "peft" => Ok(ExportFormat::Peft),
            "kohya" => Ok(ExportFormat::Kohya),
            "merged" => Ok(ExportFormat::Merged),
            other => Err(ExportError::Invalid(format!("unknown format {other:?}: choose peft, kohya or merged"))),
        }
    }
}

/// Why a version cannot be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// No such version.
    #[error("no model version has id {0}")]
    NotFound(ModelVersionId),
    /// The version or the request does not allow it (said in full).
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A blob is missing or unreadable.
    #[error("{0}")]
    Blob(String),
}

/// One exported file: its path relative to the export's folder, and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedFile {
    /// `pytorch_lora_weights.safetensors`, `lora_kohya.safetensors`, `unet/…`.
    pub path: String,
    /// Its contents.
    pub bytes: Vec<u8>,
}

/// The files of `id`'s export in `format`.
pub fn export_version(
    bus: &CommandBus,
    blobs: &dyn BlobStore,
    id: ModelVersionId,
    format: ExportFormat,
) -> Result<Vec<ExportedFile>, ExportError> {
    let (version, _) = bus.load::<ModelVersion>(&id.stream())?;
    if !version.exists() {
        return Err(ExportError::NotFound(id));
    }
    let (Some(adapter_hash), Some(parent)) = (&version.adapter, version.parent) else {
        return Err(ExportError::Invalid(format!(
            "model version {id} is a base model: only a fine-tuned version has an adapter to export"
        )));
    };
    let (base, _) = bus.load::<ModelVersion>(&parent.stream())?;
    if base.family.as_deref() != Some(FAMILY) {
        return Err(ExportError::Invalid(format!(
            "model version {id} is a fine-tune of the reference world's model; exports are for imported Stable Diffusion pipelines"
        )));
    }
    let get = |hash: &domain::values::BlobHash, what: &str| -> Result<Vec<u8>, ExportError> {
        blobs
            .get(hash)
            .map_err(|e| ExportError::Blob(e.to_string()))?
            .ok_or_else(|| ExportError::Blob(format!("{what} (blob {hash}) is not in the blob store")))
    };
    let adapter_bytes = get(adapter_hash, "the version's adapter")?;
    if format == ExportFormat::Peft {
        return Ok(vec![ExportedFile { path: "pytorch_lora_weights.safetensors".into(), bytes: adapter_bytes }]);
    }
    let adapter = LoraAdapter::from_bytes(&adapter_bytes, Path::new("the version's adapter"), None)
        .map_err(|e| ExportError::Blob(e.to_string()))?;
    let modules = adapter.modules(Target::Unet);
    let first =
        modules.first().ok_or_else(|| ExportError::Blob("the version's adapter adapts no UNet layer".into()))?;
    let rank = first.down.shape[0];
    let settings = LoraSettings { rank, alpha: first.scale * rank as f32, targets: Vec::new() };
    let mut tensors: Vec<AdapterTensor> = Vec::new();
    for module in modules {
        if module.down.shape.len() != 2 || module.down.shape[0] != rank || module.scale != first.scale {
            return Err(ExportError::Blob(format!("{}: not a rank-{rank} linear LoRA at one scale", module.module)));
        }
        let shape = |t: &HostTensor| [t.shape[0], t.shape[1]];
        tensors.push((format!("unet.{}.lora_A.weight", module.module), shape(&module.down), module.down.data.clone()));
        tensors.push((format!("unet.{}.lora_B.weight", module.module), shape(&module.up), module.up.data.clone()));
    }
    if format == ExportFormat::Kohya {
        let bytes = kohya_file(&tensors, &settings).map_err(ExportError::Blob)?;
        return Ok(vec![ExportedFile { path: "lora_kohya.safetensors".into(), bytes }]);
    }
    let weights = base.weights.as_ref().ok_or_else(|| ExportError::Blob("the base model has no weights".into()))?;
    let manifest =
        Manifest::parse(&get(weights, "the base model's manifest")?).map_err(|e| ExportError::Blob(e.to_string()))?;
    let mut unet = HashMap::new();
    let mut config = None;
    for (path, hash) in &manifest.files {
        let Some(name) = path.strip_prefix("unet/") else { continue };
        let hash = domain::values::BlobHash::parse(hash).map_err(|e| ExportError::Blob(e.to_string()))?;
        if name == "config.json" {
            config = Some(get(&hash, path)?);
        } else if name.ends_with(".safetensors") {
            let bytes = get(&hash, path)?;
            read_safetensors(Path::new(path), &bytes, &mut |tensor, values| {
                unet.insert(tensor.to_string(), values);
            })
            .map_err(|e| ExportError::Blob(e.to_string()))?;
        }
    }
    let config = config.ok_or_else(|| ExportError::Blob("the base model's manifest has no unet/config.json".into()))?;
    let weights = ComponentWeights::from_tensors(vec!["unet".into()], unet);
    let bytes = merged_unet_file(weights, &tensors, &settings).map_err(ExportError::Blob)?;
    Ok(vec![
        ExportedFile { path: "unet/diffusion_pytorch_model.safetensors".into(), bytes },
        ExportedFile { path: "unet/config.json".into(), bytes: config },
    ])
}
