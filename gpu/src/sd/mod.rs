//! Stable Diffusion 1.x/2.x pipelines as diffusers saves them, on thitl's own kernels: the
//! folder ([`pipeline`]), component configs ([`config`]) and weights ([`weights`]: safetensors in
//! f32/f16/bf16, sharded or not; pickles refused), CLIP's tokenizer ([`tokenizer`]) and text
//! encoder ([`clip`]), the UNet ([`unet`]), the VAE ([`vae`]), the samplers ([`scheduler`]) and
//! the pipeline that ties them ([`sample`]); single-file SD 1.x checkpoints convert to a folder's
//! files ([`single_file`]). The networks are written once over
//! [`crate::device::ImageOps`] from the layers in [`nn`], so the CPU backend and the wgpu kernels
//! run the same code.
//!
//! This is the one place in the crate that reads files: a pipeline folder is what users bring.

pub mod bench;
pub mod clip;
pub mod config;
pub mod lora;
pub mod nn;
pub mod pipeline;
pub mod sample;
pub mod scheduler;
pub mod single_file;
pub mod tokenizer;
pub mod train;
pub mod unet;
pub mod vae;
pub mod weights;

pub use pipeline::{PipelineError, PipelineFolder};
pub use sample::{Latents, SampleOptions, SdError, StableDiffusion};
pub use tokenizer::{ClipTokenizer, TokenizerError};
