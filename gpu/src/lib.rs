//! thitl's compute crate: a wgpu context, tensors, WGSL kernels, the DiT denoiser, DDIM sampling,
//! LoRA training, and a CPU reference backend that every kernel is tested against.
//!
//! Architecture invariant: `gpu` knows nothing of events, HTTP or the reference world. It takes
//! weights, token ids, images and seeds, and returns images, losses and weights; its only IO is
//! the optional on-disk Vulkan pipeline cache (`THITL_PIPELINE_CACHE_DIR`) and reading the diffusers
//! pipeline folders users bring ([`sd`]).
//!
//! Map:
//! - [`context`]: device choice (`THITL_DEVICE=auto|wgpu|cpu`, `WGPU_ADAPTER_NAME`), the
//!   [`GpuContext`] (device, queue, adapter limits, pipelines and bind-group layouts built once,
//!   the driver's pipeline cache) and the [`context::Recorder`] that records many dispatches into
//!   one command encoder.
//! - [`tensor`]: a small f32 tensor over a storage buffer.
//! - [`kernels`]: one `.wgsl` file per family next to its launcher (matmul, element-wise, rows,
//!   adaLN, embeddings, patchify, reductions, AdamW, noise, and `image`: im2col convolution,
//!   group/layer norm, transposes, upsampling, GELU/GEGLU, the causal mask).
//! - [`cpu`]: the plain-Rust reference of every kernel (generic over f32/f64 where a backward
//!   exists, so gradients can be checked by finite differences in f64).
//! - [`device`]: the [`device::Device`] trait the model is written against (`device/mod.rs`),
//!   implemented by [`device::CpuDevice`] (`device/cpu.rs`) and [`device::WgpuDevice`]
//!   (`device/wgpu.rs`); [`device::ImageOps`] adds Stable Diffusion's operations (CPU references
//!   in `cpu/image.rs`).
//! - [`model`]: the DiT, one file per job under `model/`: configuration, host weights and PEFT
//!   adapters, forward, backward, training steps, the DDIM sampler.
//! - [`optim`]: named parameters on a device and AdamW with global-norm clipping, shared by the
//!   DiT and the classifier.
//! - [`rng`]: the workspace's one SplitMix64 (seed mixing, test inputs; not the model's noise).
//! - [`classifier`]: a small multi-head image classifier (per-patch MLP, flattened and
//!   mean-pooled branches, a hidden layer that doubles as a feature vector) with its backward,
//!   AdamW training and self-describing safetensors weights; the loss is computed on the host.
//! - [`sd`]: Stable Diffusion 1.x/2.x pipelines as diffusers saves them: configs, safetensors
//!   weights (f32/f16/bf16, sharded), CLIP's tokenizer and text encoder, the UNet, the VAE and the
//!   DDIM/PNDM/Euler samplers, matching diffusers to ~1e-6 on the test pipelines.
//! - [`engine`]: a model on whichever backend `THITL_DEVICE` chose, without generics.
//! - [`mod@bench`]: `thitl bench gpu` / `gpu-bench`.
//!
//! Key design decisions in this crate:
//! - The model is written once, generically over [`device::Device`]; the wgpu and CPU paths differ
//!   only in their kernels, and each kernel has a test against its reference. The CPU backend is
//!   the oracle and also the fallback where no GPU exists (f32 matmuls through [`gemm`], a
//!   blocked kernel on AVX-512 or AVX2 + FMA, where the processor has them, else through
//!   `matrixmultiply`;
//!   both with threads; the backend's split operations run on worker threads kept for the
//!   process).
//! - One matmul kernel family serves every product: operands are (offset, row stride, column
//!   stride, two batch strides) views, so transposes, per-head attention views into a packed
//!   qkv buffer and weight gradients need no copies. Where every operand is 4-aligned, a vec4
//!   kernel with two workgroup-memory slabs (tiles 128×128, 128×64 or 64×64, chosen from the
//!   output size) runs on GPUs; other layouts use a scalar 128×128 tiled kernel (8×8 per
//!   invocation, BK 8); a register-only 32×32 kernel runs tiny shapes and software adapters;
//!   long-K products with small outputs are split along K. `THITL_MATMUL_VEC4=0` and
//!   `THITL_MATMUL_BK` override the choice without a rebuild.
//! - Noise is counter-based and integer-only up to one exact conversion, so a seed gives the
//!   same bits on the CPU and on every GPU: sampling is reproducible across backends.
//! - The wgpu backend records into one command encoder, submits in batches, and keeps dropped
//!   buffers in a pool keyed by length (zeroed on the GPU when reused), so a training or
//!   sampling loop stops allocating after its first step.
//! - Kernels check their own bounds, so shaders are compiled without naga's runtime checks
//!   (`THITL_SHADER_CHECKS=1` turns them back on).

pub mod bench;
pub mod classifier;
pub mod context;
pub mod cpu;
pub mod device;
pub mod engine;
pub mod gemm;
pub mod kernels;
pub mod model;
pub mod optim;
mod pool;
pub mod rng;
pub mod sd;
pub mod tensor;

pub use context::{Backend, DeviceChoice, GpuContext, GpuError};
pub use engine::Engine;
pub use tensor::Tensor;
