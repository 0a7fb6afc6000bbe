//! The operations the model is written against, with two implementations: [`CpuDevice`] (the
//! reference, generic over f32/f64) and [`WgpuDevice`] (records the WGSL kernels into one command
//! encoder and submits when a result is read back).
//!
//! A key design decision: the DiT forward, backward, training step and sampler are written once,
//! generically over [`Device`], so the wgpu path and the CPU oracle cannot drift apart in
//! structure; only the kernels differ, and each kernel is tested against its reference.
//!
//! `cpu.rs` holds the CPU backend, `wgpu.rs` the wgpu backend.

mod cpu;
mod wgpu;

pub use self::cpu::{CpuBuffer, CpuDevice};
pub use self::wgpu::{PooledBuffer, WgpuDevice};
pub use crate::cpu::image::{Conv2d, GroupNorm, Unary};

use crate::context::GpuError;
use crate::cpu::{AdamW, Chunk, Patches};
use crate::kernels::adaln::AdaLn;
use crate::kernels::elementwise::Elementwise;
use crate::kernels::embed::TextEmbedding;
use crate::kernels::matmul::Matmul;
use crate::kernels::noise::NoiseStream;

/// A compute backend. Buffers are handles (cheap to clone); an operation's output buffer must
/// not be one of its inputs.
pub trait Device {
    /// A buffer of values.
    type Buffer: Clone;
    /// A buffer of token ids.
    type Ids;

    /// `len` zeros.
    fn zeros(&self, len: usize) -> Self::Buffer;
    /// A buffer of `len` values for an operation that overwrites every one of them (an output,
    /// not an accumulator): its contents are unspecified until then. By default
    /// [`Device::zeros`]; the CPU backend skips the clearing (and in debug builds fills it with
    /// NaN, so that a value read before it is written shows in the tests).
    fn output(&self, len: usize) -> Self::Buffer {
        self.zeros(len)
    }
    /// A buffer holding `data`.
    fn upload(&self, data: &[f32]) -> Self::Buffer;
    /// Token ids.
    fn upload_ids(&self, ids: &[u32]) -> Self::Ids;
    /// Overwrites the start of `buffer`.
    fn write(&self, buffer: &Self::Buffer, data: &[f32]);
    /// The first `len` values (waits for pending work).
    fn download(&self, buffer: &Self::Buffer, len: usize) -> Result<Vec<f32>, GpuError>;
    /// Copies `len` values.
    fn copy(&self, from: &Self::Buffer, to: &Self::Buffer, len: usize);
    /// Sets `len` values to zero.
    fn clear(&self, buffer: &Self::Buffer, len: usize);
    /// See [`Matmul`].
    fn matmul(&self, spec: &Matmul, a: &Self::Buffer, b: &Self::Buffer, bias: Option<&Self::Buffer>, c: &Self::Buffer);
    /// See [`Elementwise`]; `None` inputs are unused by the op.
    fn elementwise(
        &self,
        op: Elementwise,
        a: Option<&Self::Buffer>,
        b: Option<&Self::Buffer>,
        c: Option<&Self::Buffer>,
        y: &Self::Buffer,
        len: usize,
    );
    /// See [`crate::cpu::layernorm`].
    fn layernorm(&self, x: &Self::Buffer, normalized: &Self::Buffer, rstd: &Self::Buffer, rows: usize, width: usize);
    /// See [`crate::cpu::layernorm_backward`].
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(
        &self,
        normalized: &Self::Buffer,
        rstd: &Self::Buffer,
        dy: &Self::Buffer,
        dx: &Self::Buffer,
        rows: usize,
        width: usize,
    );
    /// See [`crate::cpu::softmax`].
    fn softmax(&self, x: &Self::Buffer, y: &Self::Buffer, rows: usize, width: usize, scale: f32);
    /// See [`crate::cpu::softmax_backward`].
    fn softmax_backward(
        &self,
        y: &Self::Buffer,
        dy: &Self::Buffer,
        dx: &Self::Buffer,
        rows: usize,
        width: usize,
        scale: f32,
    );
    /// See [`crate::cpu::modulate`].
    fn modulate(
        &self,
        shape: AdaLn,
        x: &Self::Buffer,
        modulation: &Self::Buffer,
        shift: Chunk,
        scale: Chunk,
        y: &Self::Buffer,
    );
    /// See [`crate::cpu::modulate_backward`].
    #[allow(clippy::too_many_arguments)]
    fn modulate_backward(
        &self,
        shape: AdaLn,
        x: &Self::Buffer,
        modulation: &Self::Buffer,
        shift: Chunk,
        scale: Chunk,
        dy: &Self::Buffer,
        dx: &Self::Buffer,
        dmodulation: &Self::Buffer,
    );
    /// See [`crate::cpu::gated_residual`].
    fn gated_residual(&self, shape: AdaLn, x: &Self::Buffer, y: &Self::Buffer, modulation: &Self::Buffer, gate: Chunk);
    /// See [`crate::cpu::gated_residual_backward`].
    #[allow(clippy::too_many_arguments)]
    fn gated_residual_backward(
        &self,
        shape: AdaLn,
        y: &Self::Buffer,
        modulation: &Self::Buffer,
        gate: Chunk,
        dx: &Self::Buffer,
        dy: &Self::Buffer,
        dmodulation: &Self::Buffer,
    );
    /// See [`crate::cpu::embed_pool`].
    fn embed_pool(&self, shape: TextEmbedding, ids: &Self::Ids, table: &Self::Buffer, pooled: &Self::Buffer);
    /// See [`crate::cpu::embed_pool_backward`].
    fn embed_pool_backward(&self, shape: TextEmbedding, ids: &Self::Ids, dpooled: &Self::Buffer, dtable: &Self::Buffer);
    /// See [`crate::cpu::timestep_embedding`].
    fn timestep_embedding(&self, timesteps: &Self::Buffer, out: &Self::Buffer, batch: usize, width: usize);
    /// See [`crate::cpu::patchify`].
    fn patchify(&self, geometry: Patches, images: &Self::Buffer, tokens: &Self::Buffer);
    /// Backward of [`Device::patchify`].
    fn patchify_backward(&self, geometry: Patches, dtokens: &Self::Buffer, dimages: &Self::Buffer);
    /// See [`crate::cpu::unpatchify`].
    fn unpatchify(&self, geometry: Patches, tokens: &Self::Buffer, images: &Self::Buffer);
    /// Backward of [`Device::unpatchify`].
    fn unpatchify_backward(&self, geometry: Patches, dimages: &Self::Buffer, dtokens: &Self::Buffer);
    /// `out[index] (+)= scale · Σ (a − b)²` (or `Σ a²`).
    #[allow(clippy::too_many_arguments)]
    fn sum_of_squares(
        &self,
        a: &Self::Buffer,
        b: Option<&Self::Buffer>,
        len: usize,
        scale: f32,
        out: &Self::Buffer,
        index: usize,
        accumulate: bool,
    );
    /// One AdamW step; `sum_of_squares[0]` is Σ g² over all trained tensors.
    #[allow(clippy::too_many_arguments)]
    fn adamw(
        &self,
        hyper: &AdamW,
        step: u32,
        grad: &Self::Buffer,
        sum_of_squares: &Self::Buffer,
        param: &Self::Buffer,
        m: &Self::Buffer,
        v: &Self::Buffer,
        len: usize,
    );
    /// Gaussian noise, bit-identical across devices.
    fn noise(&self, stream: NoiseStream, offset: u32, out: &Self::Buffer, len: usize);
    /// Waits until everything recorded so far has run (bounds the memory held by work in
    /// flight; a no-op on the CPU).
    fn synchronize(&self) -> Result<(), GpuError>;
}

/// The operations of Stable Diffusion's networks (CLIP text encoder, UNet, VAE) beyond
/// [`Device`]'s: each has its CPU reference in [`crate::cpu::image`]. As with [`Device`], an
/// operation's output must not be one of its inputs.
pub trait ImageOps: Device {
    /// See [`Conv2d`] and [`crate::cpu::image::conv2d`]: NCHW in, NCHW out.
    fn conv2d(
        &self,
        spec: &Conv2d,
        x: &Self::Buffer,
        weight: &Self::Buffer,
        bias: Option<&Self::Buffer>,
        y: &Self::Buffer,
    );
    /// See [`GroupNorm`] and [`crate::cpu::image::group_norm`].
    fn group_norm(
        &self,
        spec: &GroupNorm,
        x: &Self::Buffer,
        gamma: &Self::Buffer,
        beta: &Self::Buffer,
        y: &Self::Buffer,
    );
    /// See [`crate::cpu::image::layer_norm`].
    #[allow(clippy::too_many_arguments)]
    fn layer_norm(
        &self,
        x: &Self::Buffer,
        gamma: &Self::Buffer,
        beta: &Self::Buffer,
        y: &Self::Buffer,
        rows: usize,
        width: usize,
        eps: f32,
    );
    /// See [`crate::cpu::image::upsample_nearest2x`].
    fn upsample_nearest2x(&self, x: &Self::Buffer, y: &Self::Buffer, planes: usize, height: usize, width: usize);
    /// See [`crate::cpu::image::transpose`].
    fn transpose(&self, x: &Self::Buffer, y: &Self::Buffer, batch: usize, rows: usize, cols: usize);
    /// `y = op(x)` over `len` values, see [`Unary`].
    fn unary(&self, op: Unary, x: &Self::Buffer, y: &Self::Buffer, len: usize);
    /// See [`crate::cpu::image::geglu`]: `x` holds `rows × 2·inner`, `y` `rows × inner`.
    fn geglu(&self, x: &Self::Buffer, y: &Self::Buffer, rows: usize, inner: usize);
    /// See [`crate::cpu::image::add_repeated`] (`y` is updated in place over `len` values).
    fn add_repeated(&self, a: &Self::Buffer, y: &Self::Buffer, len: usize, inner: usize, period: usize);
    /// See [`crate::cpu::image::causal_mask`], in place over `matrices` matrices of `size × size`.
    fn causal_mask(&self, y: &Self::Buffer, matrices: usize, size: usize);
    /// Copies `len` values from `from[from_offset..]` to `to[to_offset..]` (`from` ≠ `to`).
    fn copy_at(&self, from: &Self::Buffer, from_offset: usize, to: &Self::Buffer, to_offset: usize, len: usize);
}

/// Gradients through [`ImageOps`]' operations w.r.t. their inputs (weights, γ and β are frozen):
/// what LoRA training of a frozen network back-propagates through. Each has its CPU reference in
/// [`crate::cpu::image_backward`]. Every operation OVERWRITES its output `dx` (it is not an
/// accumulator), and as elsewhere an output is never one of the inputs.
pub trait ImageBackward: ImageOps {
    /// `dx` (`spec.input_len()` values, NCHW) = ∂L/∂x of [`ImageOps::conv2d`] given `dy`
    /// (`spec.output_len()` values, NCHW): the transposed convolution with the same weight
    /// (`spec.weight_len()` values), stride and padding. See
    /// [`crate::cpu::image_backward::conv2d_input_grad`].
    fn conv2d_input_grad(&self, spec: &Conv2d, dy: &Self::Buffer, weight: &Self::Buffer, dx: &Self::Buffer);
    /// Backward of [`ImageOps::group_norm`] (including its SiLU when `spec.silu`): `x`, `dy` and
    /// `dx` hold `spec.len()` values, `gamma` and `beta` `spec.channels`; the statistics are
    /// recomputed from `x`, and `gamma`/`beta` give the SiLU's pre-activation. See
    /// [`crate::cpu::image_backward::group_norm_backward`].
    #[allow(clippy::too_many_arguments)]
    fn group_norm_backward(
        &self,
        spec: &GroupNorm,
        x: &Self::Buffer,
        gamma: &Self::Buffer,
        beta: &Self::Buffer,
        dy: &Self::Buffer,
        dx: &Self::Buffer,
    );
    /// Backward of [`ImageOps::layer_norm`] (affine) over `rows × width` values (`x`, `dy`,
    /// `dx`; `gamma` holds `width`): statistics recomputed from `x`. See
    /// [`crate::cpu::image_backward::layer_norm_backward`].
    #[allow(clippy::too_many_arguments)]
    fn layer_norm_backward(
        &self,
        x: &Self::Buffer,
        gamma: &Self::Buffer,
        dy: &Self::Buffer,
        dx: &Self::Buffer,
        rows: usize,
        width: usize,
        eps: f32,
    );
    /// Backward of [`ImageOps::upsample_nearest2x`]: `dx` (`planes × height × width`, the
    /// INPUT's size) is the sum of each 2×2 block of `dy` (`planes × 2·height × 2·width`).
    fn upsample_nearest2x_backward(
        &self,
        dy: &Self::Buffer,
        dx: &Self::Buffer,
        planes: usize,
        height: usize,
        width: usize,
    );
    /// `dx = op′(x) · dy` over `len` values.
    fn unary_backward(&self, op: Unary, x: &Self::Buffer, dy: &Self::Buffer, dx: &Self::Buffer, len: usize);
    /// Backward of [`ImageOps::geglu`]: `x` and `dx` hold `rows × 2·inner` (hidden states, then
    /// gate, per row), `dy` `rows × inner`.
    fn geglu_backward(&self, x: &Self::Buffer, dy: &Self::Buffer, dx: &Self::Buffer, rows: usize, inner: usize);
}
