//! A diffusers pipeline folder: `model_index.json` names the pipeline class and, for each
//! component, its library and class; each component lives in the folder of its name.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::tokenizer::{ClipTokenizer, TokenizerError};

/// The pipeline classes thitl reads.
const SUPPORTED_CLASSES: [&str; 1] = ["StableDiffusionPipeline"];

/// Why a folder is not a pipeline thitl can read. Every variant names the file or folder.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{} is not a diffusers pipeline folder: cannot read {}", path.parent().unwrap_or(path).display(), path.display())]
    ReadIndex { path: PathBuf, source: std::io::Error },
    #[error("{} is not a diffusers model index: expected {expected}", path.display())]
    MalformedIndex { path: PathBuf, expected: String },
    #[error("{} names the pipeline class {class:?}; expected one of {}", path.display(), SUPPORTED_CLASSES.join(", "))]
    UnsupportedClass { path: PathBuf, class: String },
    #[error("{} is missing: {} lists the {component} component, expected its folder there", folder.display(), index.display())]
    MissingComponent { component: String, folder: PathBuf, index: PathBuf },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// A Stable Diffusion pipeline folder whose `model_index.json` has been checked.
#[derive(Debug, Clone)]
pub struct PipelineFolder {
    root: PathBuf,
    index: serde_json::Map<String, Value>,
}

impl PipelineFolder {
    /// Reads `root/model_index.json` and checks that it names a supported pipeline class.
    pub fn open(root: &Path) -> Result<Self, PipelineError> {
        let path = root.join("model_index.json");
        let text =
            std::fs::read_to_string(&path).map_err(|source| PipelineError::ReadIndex { path: path.clone(), source })?;
        let index = match serde_json::from_str(&text) {
            Ok(Value::Object(index)) => index,
            Ok(_) => return Err(PipelineError::MalformedIndex { path, expected: "a JSON object".into() }),
            Err(error) => {
                return Err(PipelineError::MalformedIndex { path, expected: format!("a JSON object ({error})") });
            }
        };
        let Some(class) = index.get("_class_name").and_then(Value::as_str) else {
            return Err(PipelineError::MalformedIndex { path, expected: "a string \"_class_name\"".into() });
        };
        if !SUPPORTED_CLASSES.contains(&class) {
            return Err(PipelineError::UnsupportedClass { class: class.to_string(), path });
        }
        Ok(Self { root: root.to_path_buf(), index })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The pipeline class `model_index.json` names.
    pub fn class(&self) -> &str {
        self.index.get("_class_name").and_then(Value::as_str).unwrap_or_default()
    }

    /// The folder of a component the index lists (`tokenizer`, `unet`, …).
    pub fn component_dir(&self, component: &str) -> Result<PathBuf, PipelineError> {
        let index_path = self.root.join("model_index.json");
        let listed =
            self.index.get(component).and_then(Value::as_array).is_some_and(|entry| entry.iter().all(|v| !v.is_null()));
        if !listed {
            return Err(PipelineError::MalformedIndex {
                path: index_path,
                expected: format!("a \"{component}\" entry naming its library and class"),
            });
        }
        let folder = self.root.join(component);
        if !folder.is_dir() {
            return Err(PipelineError::MissingComponent {
                component: component.to_string(),
                folder,
                index: index_path,
            });
        }
        Ok(folder)
    }

    /// The pipeline's CLIP tokenizer (`tokenizer/`).
    pub fn tokenizer(&self) -> Result<ClipTokenizer, PipelineError> {
        Ok(ClipTokenizer::from_dir(&self.component_dir("tokenizer")?)?)
    }
}
