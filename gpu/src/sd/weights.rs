//! A component's weights as diffusers and transformers save them: one `*.safetensors` file, its
//! `.fp16`/`.bf16` variant, or shards listed by a `*.safetensors.index.json`. Values are
//! converted to f32 on load (f16/bf16 through the `half` crate). Pickle files are never opened.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

/// Extensions of PyTorch pickle files: refused, never loaded (unpickling runs arbitrary code).
pub const PICKLE_EXTENSIONS: [&str; 4] = ["bin", "ckpt", "pt", "pth"];

/// Why a component's weights cannot be read. Every variant names the file or folder.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error(
        "{} is a PyTorch pickle file; thitl never loads pickles (unpickling can run arbitrary code). \
         Convert it to safetensors first, e.g. with diffusers: `save_pretrained(folder, safe_serialization=True)`",
        path.display()
    )]
    Pickle { path: PathBuf },
    #[error("{} holds no weights: expected {expected}", dir.display())]
    Missing { dir: PathBuf, expected: String },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} is not a valid safetensors file (truncated or corrupt?): {message}", path.display())]
    Malformed { path: PathBuf, message: String },
    #[error("{} stores {name} as {dtype}; expected F32, F16, BF16 or F64", path.display())]
    Dtype { path: PathBuf, name: String, dtype: String },
    #[error("{} has no tensor {name}: {expected}", source_files)]
    Absent { source_files: String, name: String, expected: String },
    #[error("{} stores {name} with shape {actual:?}; the config expects {expected:?}", source_files)]
    Shape { source_files: String, name: String, actual: Vec<usize>, expected: Vec<usize> },
    #[error("{}: {message}", path.display())]
    Index { path: PathBuf, message: String },
}

/// A host tensor in f32.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub data: Vec<f32>,
}

/// The tensors of one component (unet, vae, text encoder), by name.
#[derive(Debug)]
pub struct ComponentWeights {
    files: Vec<PathBuf>,
    tensors: HashMap<String, HostTensor>,
    /// Random weights made on demand (benchmarks of full-size architectures).
    synthetic: Option<crate::rng::SplitMix64>,
}

impl ComponentWeights {
    /// Loads the weights of the component in `dir` whose files are named `stem` (`model` for
    /// transformers, `diffusion_pytorch_model` for diffusers), preferring `variant` (`fp16`)
    /// when given and present, then the plain file, then a sharded index, then any variant.
    pub fn load(dir: &Path, stem: &str, variant: Option<&str>) -> Result<Self, WeightsError> {
        let (_, files) = resolve(dir, stem, variant)?;
        Self::from_files(files)
    }

    /// Loads every tensor of the given safetensors files (a single file or shards).
    pub fn from_files(files: Vec<PathBuf>) -> Result<Self, WeightsError> {
        let mut tensors = HashMap::new();
        for path in &files {
            if is_pickle(path) {
                return Err(WeightsError::Pickle { path: path.clone() });
            }
            let bytes = std::fs::read(path).map_err(|source| WeightsError::Read { path: path.clone(), source })?;
            read_safetensors(path, &bytes, &mut |name, tensor| {
                tensors.insert(name.to_string(), tensor);
            })?;
        }
        Ok(ComponentWeights { files, tensors, synthetic: None })
    }

    /// Weights from tensors already in memory (a single-file checkpoint split by component).
    pub fn from_tensors(files: Vec<PathBuf>, tensors: HashMap<String, HostTensor>) -> Self {
        ComponentWeights { files, tensors, synthetic: None }
    }

    /// Weights that do not come from a file: every tensor asked for is made up with the shape
    /// asked (norm scales 1, biases 0, matrices and kernels uniform with variance 1/fan-in).
    /// For speed measurements of full-size architectures: speed does not depend on the values.
    pub fn synthetic(seed: u64) -> Self {
        ComponentWeights {
            files: vec![PathBuf::from("(synthetic weights)")],
            tensors: HashMap::new(),
            synthetic: Some(crate::rng::SplitMix64::new(seed)),
        }
    }

    /// The files read, for messages.
    pub fn source(&self) -> String {
        self.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
    }

    /// Whether a tensor is present (always, for synthetic weights).
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.synthetic.is_some()
    }

    /// The names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Removes and returns the tensor `name`, which must have `shape`.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor, WeightsError> {
        if let Some(rng) = &mut self.synthetic
            && !self.tensors.contains_key(name)
        {
            let len: usize = shape.iter().product();
            let data = if shape.len() == 1 {
                vec![if name.ends_with("weight") { 1.0 } else { 0.0 }; len]
            } else {
                let fan_in: usize = shape[1..].iter().product();
                let bound = (3.0 / fan_in.max(1) as f64).sqrt();
                (0..len)
                    .map(|_| (((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * bound) as f32)
                    .collect()
            };
            return Ok(HostTensor { shape: shape.to_vec(), data });
        }
        let tensor = self.tensors.remove(name).ok_or_else(|| WeightsError::Absent {
            source_files: self.source(),
            name: name.to_string(),
            expected: format!("the config implies a tensor of shape {shape:?}"),
        })?;
        // A 1×1 convolution may be stored as [out, in] (a linear layer) or [out, in, 1, 1].
        let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
        if tensor.shape != shape && squeeze(&tensor.shape) != squeeze(shape) {
            return Err(WeightsError::Shape {
                source_files: self.source(),
                name: name.to_string(),
                actual: tensor.shape,
                expected: shape.to_vec(),
            });
        }
        Ok(tensor)
    }

    /// Puts a tensor (back) under `name`.
    pub fn insert(&mut self, name: String, tensor: HostTensor) {
        self.tensors.insert(name, tensor);
    }

    /// Removes and returns `name` whatever its shape.
    pub fn remove(&mut self, name: &str) -> Option<HostTensor> {
        self.tensors.remove(name)
    }

    /// Removes and returns `name` if present (with `shape`).
    pub fn take_optional(&mut self, name: &str, shape: &[usize]) -> Result<Option<HostTensor>, WeightsError> {
        if self.contains(name) { self.take(name, shape).map(Some) } else { Ok(None) }
    }

    /// Renames tensors: `rename(old)` gives the new name or `None` to keep it.
    pub fn rename(&mut self, rename: impl Fn(&str) -> Option<String>) {
        let tensors = std::mem::take(&mut self.tensors);
        self.tensors = tensors.into_iter().map(|(name, tensor)| (rename(&name).unwrap_or(name), tensor)).collect();
    }
}

/// The files [`ComponentWeights::load`] reads for the component in `dir`: the sharded index
/// (if the weights are sharded) and the safetensors files.
pub fn resolve(dir: &Path, stem: &str, variant: Option<&str>) -> Result<(Option<PathBuf>, Vec<PathBuf>), WeightsError> {
    let mut candidates = Vec::new();
    if let Some(variant) = variant {
        candidates.push(format!("{stem}.{variant}.safetensors"));
        candidates.push(format!("{stem}.safetensors.index.{variant}.json"));
    }
    candidates.push(format!("{stem}.safetensors"));
    candidates.push(format!("{stem}.safetensors.index.json"));
    for variant in ["fp16", "bf16"] {
        candidates.push(format!("{stem}.{variant}.safetensors"));
        candidates.push(format!("{stem}.safetensors.index.{variant}.json"));
    }
    for name in &candidates {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        return Ok(if name.ends_with(".json") { (Some(path.clone()), shards(&path)?) } else { (None, vec![path]) });
    }
    if let Some(pickle) = pickle_in(dir) {
        return Err(WeightsError::Pickle { path: pickle });
    }
    Err(WeightsError::Missing {
        dir: dir.to_path_buf(),
        expected: format!("{stem}.safetensors (or a .fp16/.bf16 variant, or {stem}.safetensors.index.json)"),
    })
}

/// Whether a path names a pickle file.
pub fn is_pickle(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| PICKLE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn pickle_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> =
        std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| is_pickle(p)).collect();
    found.sort();
    found.into_iter().next()
}

/// The shard files of a `*.safetensors.index.json` (its `weight_map` values), in order.
fn shards(index: &Path) -> Result<Vec<PathBuf>, WeightsError> {
    let text = std::fs::read_to_string(index).map_err(|source| WeightsError::Read { path: index.into(), source })?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| WeightsError::Index { path: index.into(), message: format!("not JSON: {e}") })?;
    let Some(map) = value.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(WeightsError::Index { path: index.into(), message: "expected an object \"weight_map\"".into() });
    };
    let mut files: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
    files.sort_unstable();
    files.dedup();
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut paths = Vec::new();
    for file in files {
        if file.contains('/') || file.contains('\\') || file.contains("..") {
            return Err(WeightsError::Index {
                path: index.into(),
                message: format!("shard {file:?} is not a file name"),
            });
        }
        let path = dir.join(file);
        if !path.is_file() {
            return Err(WeightsError::Index {
                path: index.into(),
                message: format!("lists the shard {file}, which is missing from {}", dir.display()),
            });
        }
        paths.push(path);
    }
    Ok(paths)
}

/// Parses a safetensors file in memory and converts every tensor to f32.
pub fn read_safetensors(path: &Path, bytes: &[u8], sink: &mut dyn FnMut(&str, HostTensor)) -> Result<(), WeightsError> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| WeightsError::Malformed { path: path.to_path_buf(), message: e.to_string() })?;
    for (name, view) in file.tensors() {
        // transformers' text encoders (and original checkpoints) carry an integer buffer of
        // position ids: not a weight.
        if name.ends_with("position_ids") && !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
        {
            continue;
        }
        let data = to_f32(view.dtype(), view.data()).ok_or_else(|| WeightsError::Dtype {
            path: path.to_path_buf(),
            name: name.clone(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        sink(&name, HostTensor { shape: view.shape().to_vec(), data });
    }
    Ok(())
}

fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        _ => return None,
    })
}
