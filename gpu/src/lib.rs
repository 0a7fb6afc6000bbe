//! thitl's compute crate: a wgpu context, tensors, WGSL kernels, the DiT denoiser, DDIM sampling,
//! LoRA training, and a CPU reference backend that every kernel is tested against.
//!
//! Architecture invariant: `gpu` knows nothing of events, HTTP or the reference world.
