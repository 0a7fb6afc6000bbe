//! Stable Diffusion 1.x/2.x pipelines as diffusers saves them. So far: the folder
//! ([`pipeline`]: `model_index.json` and its components) and CLIP's tokenizer ([`tokenizer`]),
//! which gives exactly the ids `StableDiffusionPipeline` feeds its text encoder. The text encoder,
//! UNet, VAE and scheduler are still to come.
//!
//! This is the one place in the crate that reads files: a pipeline folder is what users bring.

pub mod pipeline;
pub mod tokenizer;

pub use pipeline::{PipelineError, PipelineFolder};
pub use tokenizer::{ClipTokenizer, TokenizerError};
