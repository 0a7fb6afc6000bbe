//! The wgpu backend: the WGSL kernels recorded into one command encoder, with dropped buffers
//! kept for reuse.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Conv2d, Device, GroupNorm, ImageBackward, ImageOps, Unary};
use crate::context::{GpuContext, GpuError, Recorder};
use crate::cpu::{AdamW, Chunk, Patches};
use crate::kernels::adaln::AdaLn;
use crate::kernels::elementwise::Elementwise;
use crate::kernels::embed::{self, TextEmbedding};
use crate::kernels::matmul::{Layout, Matmul, MatmulKernel};
use crate::kernels::noise::{self, NoiseStream};
use crate::kernels::{adamw, patchify, reduce, rows};
use crate::kernels::{image, image_backward};

/// The wgpu backend: operations are recorded into one command encoder, submitted when a result is
/// read back (or on [`WgpuDevice::flush`]).
pub struct WgpuDevice {
    context: Arc<GpuContext>,
    encoder: Mutex<(Option<wgpu::CommandEncoder>, usize)>,
    noise_table: wgpu::Buffer,
    ones: wgpu::Buffer,
    /// Which matmul kernel to use (`Auto` by default).
    pub matmul_kernel: MatmulKernel,
    pool: Pool,
    /// Whether long-K matmuls with a small output are split along K (see
    /// [`WgpuDevice::split_k`]); on by default on hardware adapters.
    pub split_k: bool,
    /// Most values of the scratch buffer that holds a convolution's unfolded input
    /// ([`ImageOps::conv2d`]): `Some(WgpuDevice::DEFAULT_IMAGE_SCRATCH)` by default, `None` for
    /// as much as the adapter binds. The adapter's `max_storage_buffer_binding_size` and
    /// `max_buffer_size` always bound it; a smaller value makes convolutions run in more, smaller
    /// parts (see [`WgpuDevice::image_scratch_values`]).
    pub image_scratch_limit: Option<usize>,
}

/// Operations recorded into one command buffer before it is submitted.
const SUBMIT_EVERY: usize = 48;

/// Most K slices a split-K matmul uses.
const MAX_SPLITS: usize = 64;

impl WgpuDevice {
    /// The default [`WgpuDevice::image_scratch_limit`]: 2²⁶ values (256 MiB), enough for every
    /// convolution of Stable Diffusion's UNet at 512×512 in one part per image, while the VAE's
    /// full-resolution convolutions run in column ranges instead of holding gigabytes of scratch.
    pub const DEFAULT_IMAGE_SCRATCH: usize = 1 << 26;

    /// A device on `context`.
    pub fn new(context: Arc<GpuContext>) -> Self {
        let noise_table = noise::upload_table(&context);
        let ones = context.storage_buffer_with(&[1.0f32; MAX_SPLITS]);
        let split_k = context.is_hardware();
        WgpuDevice {
            context,
            encoder: Mutex::new((None, 0)),
            noise_table,
            ones,
            matmul_kernel: MatmulKernel::Auto,
            split_k,
            image_scratch_limit: Some(Self::DEFAULT_IMAGE_SCRATCH),
            pool: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A split-K plan for a matmul whose output is too small to fill the GPU while its K is long
    /// (weight gradients: K = batch·tokens): K is cut into `splits` equal slices computed as a
    /// batch into a scratch buffer, then summed by a second matmul with a row of ones, which also
    /// applies alpha and `accumulate`. Only for a contiguous, unbatched C without bias or
    /// activation.
    pub fn split_k(&self, spec: &Matmul) -> Option<(usize, Matmul, Matmul)> {
        if !self.split_k
            || self.matmul_kernel != MatmulKernel::Auto
            || spec.batches() != 1
            || spec.bias.is_some()
            || spec.activation != crate::kernels::matmul::Activation::None
            || spec.c.row_stride != spec.n
            || spec.c.offset != 0
            || spec.k < 2048
        {
            return None;
        }
        let tiles = spec.m.div_ceil(32) * spec.n.div_ceil(32);
        let wanted = (1024 / tiles.max(1)).clamp(1, (spec.k / 512).min(MAX_SPLITS));
        let splits = (2..=wanted).rev().find(|s| spec.k.is_multiple_of(*s))?;
        let chunk = spec.k / splits;
        let partial = Matmul {
            k: chunk,
            batch_outer: splits,
            batch_inner: 1,
            a: spec.a.batched(chunk * spec.a.col_stride, 0),
            b: spec.b.batched(chunk * spec.b.row_stride, 0),
            c: crate::kernels::matmul::Layout::row_major(spec.n).batched(spec.m * spec.n, 0),
            alpha: 1.0,
            accumulate: false,
            ..*spec
        };
        let reduce = Matmul {
            alpha: spec.alpha,
            accumulate: spec.accumulate,
            ..Matmul::new(1, spec.m * spec.n, splits, false, false)
        };
        Some((splits, partial, reduce))
    }

    /// The context.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.context
    }

    fn record(&self, body: impl FnOnce(&mut Recorder<'_>)) {
        self.record_commands(|encoder| {
            let mut recorder = Recorder::from_encoder(&self.context, encoder);
            body(&mut recorder);
            recorder.into_encoder()
        });
    }

    /// Records into the device's command encoder directly (commands the [`Recorder`] does not
    /// offer, such as copies at offsets), in order with everything else.
    fn record_commands(&self, body: impl FnOnce(wgpu::CommandEncoder) -> wgpu::CommandEncoder) {
        let mut slot = self.encoder.lock().expect("encoder poisoned");
        let encoder = slot.0.take().unwrap_or_else(|| {
            self.context.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
        });
        let encoder = body(encoder);
        slot.1 += 1;
        if slot.1 >= SUBMIT_EVERY {
            // Submitting in batches lets the GPU start while the rest is being recorded.
            self.context.queue.submit([encoder.finish()]);
            slot.1 = 0;
        } else {
            slot.0 = Some(encoder);
        }
    }

    /// Most values a convolution's unfolded input may take at once: the adapter's binding and
    /// buffer limits, and [`WgpuDevice::image_scratch_limit`].
    pub fn image_scratch_values(&self) -> usize {
        let limits = &self.context.limits;
        let bytes = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        let device = usize::try_from(bytes / 4).unwrap_or(usize::MAX);
        device.min(self.image_scratch_limit.unwrap_or(usize::MAX))
    }

    /// Submits everything recorded so far.
    pub fn flush(&self) {
        let mut slot = self.encoder.lock().expect("encoder poisoned");
        slot.1 = 0;
        if let Some(encoder) = slot.0.take() {
            self.context.queue.submit([encoder.finish()]);
        }
    }
}

type Pool = Arc<Mutex<HashMap<usize, Vec<wgpu::Buffer>>>>;

/// A storage buffer of the wgpu backend. When its last handle is dropped the buffer returns to
/// its device's pool and a later allocation of the same length reuses it (zeroed on the GPU), so
/// a model that allocates the same activations every step stops allocating after the first.
/// Reuse is safe because the queue runs commands in order: work recorded earlier on the buffer
/// finishes before work recorded later.
#[derive(Clone)]
pub struct PooledBuffer(Arc<PooledInner>);

struct PooledInner {
    buffer: Option<wgpu::Buffer>,
    len: usize,
    pool: Pool,
}

impl Drop for PooledInner {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take()
            && let Ok(mut pool) = self.pool.lock()
        {
            pool.entry(self.len).or_default().push(buffer);
        }
    }
}

impl std::ops::Deref for PooledBuffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        self.0.buffer.as_ref().expect("a live pooled buffer has its buffer")
    }
}

impl WgpuDevice {
    fn wrap(&self, buffer: wgpu::Buffer, len: usize) -> PooledBuffer {
        PooledBuffer(Arc::new(PooledInner { buffer: Some(buffer), len, pool: self.pool.clone() }))
    }

    fn reuse(&self, len: usize) -> Option<wgpu::Buffer> {
        self.pool.lock().expect("pool poisoned").get_mut(&len).and_then(Vec::pop)
    }

    /// Frees the buffers kept for reuse.
    pub fn trim(&self) {
        self.pool.lock().expect("pool poisoned").clear();
    }
}

impl Device for WgpuDevice {
    type Buffer = PooledBuffer;
    type Ids = wgpu::Buffer;

    fn zeros(&self, len: usize) -> Self::Buffer {
        match self.reuse(len) {
            Some(buffer) => {
                self.record(|recorder| recorder.clear(&buffer, len));
                self.wrap(buffer, len)
            }
            None => self.wrap(self.context.storage_buffer(len), len),
        }
    }
    fn upload(&self, data: &[f32]) -> Self::Buffer {
        match self.reuse(data.len()) {
            Some(buffer) => {
                // Earlier recorded work on this buffer must be submitted before the write.
                self.flush();
                if !data.is_empty() {
                    self.context.queue.write_buffer(&buffer, 0, bytemuck::cast_slice(data));
                }
                self.wrap(buffer, data.len())
            }
            None => self.wrap(self.context.storage_buffer_with(data), data.len()),
        }
    }
    fn upload_ids(&self, ids: &[u32]) -> Self::Ids {
        self.context.storage_buffer_with(ids)
    }
    fn write(&self, buffer: &Self::Buffer, data: &[f32]) {
        // Queue writes happen before the next submit: flush first so earlier recorded work that
        // reads this buffer sees the old values.
        self.flush();
        if !data.is_empty() {
            self.context.queue.write_buffer(buffer, 0, bytemuck::cast_slice(data));
        }
    }
    fn download(&self, buffer: &Self::Buffer, len: usize) -> Result<Vec<f32>, GpuError> {
        self.flush();
        self.context.read_words(buffer, len)
    }
    fn copy(&self, from: &Self::Buffer, to: &Self::Buffer, len: usize) {
        self.record(|recorder| recorder.copy(from, to, len));
    }
    fn clear(&self, buffer: &Self::Buffer, len: usize) {
        self.record(|recorder| recorder.clear(buffer, len));
    }
    fn matmul(&self, spec: &Matmul, a: &Self::Buffer, b: &Self::Buffer, bias: Option<&Self::Buffer>, c: &Self::Buffer) {
        if let Some((splits, partial, reduce)) = self.split_k(spec) {
            let scratch = self.zeros(splits * spec.m * spec.n);
            self.record(|recorder| {
                partial.record(recorder, MatmulKernel::Auto, a, b, None, &scratch);
                reduce.record(recorder, MatmulKernel::Auto, &self.ones, &scratch, None, c);
            });
            return;
        }
        let bias = bias.map(|b| &**b);
        self.record(|recorder| spec.record(recorder, self.matmul_kernel, a, b, bias, c));
    }
    fn elementwise(
        &self,
        op: Elementwise,
        a: Option<&Self::Buffer>,
        b: Option<&Self::Buffer>,
        c: Option<&Self::Buffer>,
        y: &Self::Buffer,
        len: usize,
    ) {
        let unused = self.context.unused_read();
        self.record(|recorder| {
            op.record(
                recorder,
                a.map_or(unused, |x| &**x),
                b.map_or(unused, |x| &**x),
                c.map_or(unused, |x| &**x),
                y,
                len,
            )
        });
    }
    fn layernorm(&self, x: &Self::Buffer, normalized: &Self::Buffer, rstd: &Self::Buffer, rows: usize, width: usize) {
        self.record(|recorder| rows::layernorm(recorder, x, normalized, rstd, rows, width));
    }
    fn layernorm_backward(
        &self,
        normalized: &Self::Buffer,
        rstd: &Self::Buffer,
        dy: &Self::Buffer,
        dx: &Self::Buffer,
        rows: usize,
        width: usize,
    ) {
        self.record(|recorder| rows::layernorm_backward(recorder, normalized, rstd, dy, dx, rows, width));
    }
    fn softmax(&self, x: &Self::Buffer, y: &Self::Buffer, rows: usize, width: usize, scale: f32) {
        self.record(|recorder| rows::softmax(recorder, x, y, rows, width, scale));
    }
    fn softmax_backward(
        &self,
        y: &Self::Buffer,
        dy: &Self::Buffer,
        dx: &Self::Buffer,
        rows: usize,
        width: usize,
        scale: f32,
    ) {
        self.record(|recorder| rows::softmax_backward(recorder, y, dy, dx, rows, width, scale));
    }
    fn modulate(
        &self,
        shape: AdaLn,
        x: &Self::Buffer,
        modulation: &Self::Buffer,
        shift: Chunk,
        scale: Chunk,
        y: &Self::Buffer,
    ) {
        self.record(|recorder| shape.modulate(recorder, x, modulation, shift, scale, y));
    }
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
    ) {
        self.record(|recorder| shape.modulate_backward(recorder, x, modulation, shift, scale, dy, dx, dmodulation));
    }
    fn gated_residual(&self, shape: AdaLn, x: &Self::Buffer, y: &Self::Buffer, modulation: &Self::Buffer, gate: Chunk) {
        self.record(|recorder| shape.gated_residual(recorder, x, y, modulation, gate));
    }
    fn gated_residual_backward(
        &self,
        shape: AdaLn,
        y: &Self::Buffer,
        modulation: &Self::Buffer,
        gate: Chunk,
        dx: &Self::Buffer,
        dy: &Self::Buffer,
        dmodulation: &Self::Buffer,
    ) {
        self.record(|recorder| shape.gated_residual_backward(recorder, y, modulation, gate, dx, dy, dmodulation));
    }
    fn embed_pool(&self, shape: TextEmbedding, ids: &Self::Ids, table: &Self::Buffer, pooled: &Self::Buffer) {
        self.record(|recorder| shape.pool(recorder, ids, table, pooled));
    }
    fn embed_pool_backward(
        &self,
        shape: TextEmbedding,
        ids: &Self::Ids,
        dpooled: &Self::Buffer,
        dtable: &Self::Buffer,
    ) {
        self.record(|recorder| shape.pool_backward(recorder, ids, dpooled, dtable));
    }
    fn timestep_embedding(&self, timesteps: &Self::Buffer, out: &Self::Buffer, batch: usize, width: usize) {
        self.record(|recorder| embed::timestep_embedding(recorder, timesteps, out, batch, width));
    }
    fn patchify(&self, geometry: Patches, images: &Self::Buffer, tokens: &Self::Buffer) {
        self.record(|recorder| patchify::patchify(recorder, geometry, images, tokens));
    }
    fn patchify_backward(&self, geometry: Patches, dtokens: &Self::Buffer, dimages: &Self::Buffer) {
        self.record(|recorder| patchify::patchify_backward(recorder, geometry, dtokens, dimages));
    }
    fn unpatchify(&self, geometry: Patches, tokens: &Self::Buffer, images: &Self::Buffer) {
        self.record(|recorder| patchify::unpatchify(recorder, geometry, tokens, images));
    }
    fn unpatchify_backward(&self, geometry: Patches, dimages: &Self::Buffer, dtokens: &Self::Buffer) {
        self.record(|recorder| patchify::unpatchify_backward(recorder, geometry, dimages, dtokens));
    }
    fn sum_of_squares(
        &self,
        a: &Self::Buffer,
        b: Option<&Self::Buffer>,
        len: usize,
        scale: f32,
        out: &Self::Buffer,
        index: usize,
        accumulate: bool,
    ) {
        let partials = self.zeros(reduce::MAX_PARTIALS);
        self.record(|recorder| {
            reduce::sum_of_squares(recorder, a, b.map(|x| &**x), len, scale, &partials, out, index, accumulate)
        });
    }
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
    ) {
        self.record(|recorder| adamw::adamw_step(recorder, hyper, step, grad, sum_of_squares, param, m, v, len));
    }
    fn noise(&self, stream: NoiseStream, offset: u32, out: &Self::Buffer, len: usize) {
        self.record(|recorder| stream.record(recorder, &self.noise_table, offset, 1.0, out, len));
    }
    fn synchronize(&self) -> Result<(), GpuError> {
        self.flush();
        self.context.wait()
    }
}

impl ImageOps for WgpuDevice {
    /// im2col + matmul: a 1×1 convolution with stride 1 and no padding is one batched matmul
    /// reading the images themselves; any other is unfolded into a scratch buffer in parts of at
    /// most [`WgpuDevice::image_scratch_values`] values ([`image::conv_chunks`]: several images
    /// per part, or column ranges of one image), each part followed by the matmul that writes its
    /// columns of the output. The bias is added to the whole output at the end.
    fn conv2d(
        &self,
        spec: &Conv2d,
        x: &Self::Buffer,
        weight: &Self::Buffer,
        bias: Option<&Self::Buffer>,
        y: &Self::Buffer,
    ) {
        spec.validate().unwrap_or_else(|error| panic!("conv2d: {error}"));
        let positions = spec.out_height() * spec.out_width();
        let (patch, out_channels) = (spec.patch_len(), spec.out_channels);
        let output_stride = out_channels * positions;
        if spec.output_len() == 0 {
            return;
        }
        // C[out, positions] = W[out, patch] · B[patch, positions] per image.
        let product = |columns: usize| Matmul::new(out_channels, columns, patch, false, false);
        if patch == 0 {
            self.clear(y, spec.output_len());
        } else if spec.kernel == 1 && spec.stride == 1 && spec.pad_before == 0 && spec.pad_after == 0 {
            let plane = spec.height * spec.width;
            let images = Matmul {
                batch_outer: spec.batch,
                b: Layout::row_major(plane).batched(spec.in_channels * plane, 0),
                c: Layout::row_major(plane).batched(output_stride, 0),
                ..product(plane)
            };
            self.matmul(&images, weight, x, None, y);
        } else {
            let chunks =
                image::conv_chunks(spec, self.image_scratch_values()).unwrap_or_else(|error| panic!("conv2d: {error}"));
            let scratch_len = chunks.iter().map(|chunk| chunk.len(spec)).max().unwrap_or(0);
            let scratch = self.output(scratch_len);
            for chunk in chunks {
                self.record(|recorder| image::im2col(recorder, spec, chunk, x, &scratch));
                let part = Matmul {
                    batch_outer: chunk.images,
                    b: Layout::row_major(chunk.columns).batched(patch * chunk.columns, 0),
                    c: Layout {
                        offset: chunk.first_image * output_stride + chunk.first_column,
                        row_stride: positions,
                        col_stride: 1,
                        outer_stride: output_stride,
                        inner_stride: 0,
                    },
                    ..product(chunk.columns)
                };
                self.matmul(&part, weight, &scratch, None, y);
            }
        }
        if let Some(bias) = bias {
            self.add_repeated(bias, y, spec.output_len(), positions, out_channels);
        }
    }
    fn group_norm(
        &self,
        spec: &GroupNorm,
        x: &Self::Buffer,
        gamma: &Self::Buffer,
        beta: &Self::Buffer,
        y: &Self::Buffer,
    ) {
        self.record(|recorder| image::group_norm(recorder, spec, x, gamma, beta, y));
    }
    fn layer_norm(
        &self,
        x: &Self::Buffer,
        gamma: &Self::Buffer,
        beta: &Self::Buffer,
        y: &Self::Buffer,
        rows: usize,
        width: usize,
        eps: f32,
    ) {
        self.record(|recorder| image::layer_norm(recorder, x, gamma, beta, y, rows, width, eps));
    }
    fn upsample_nearest2x(&self, x: &Self::Buffer, y: &Self::Buffer, planes: usize, height: usize, width: usize) {
        self.record(|recorder| image::upsample_nearest2x(recorder, x, y, planes, height, width));
    }
    fn transpose(&self, x: &Self::Buffer, y: &Self::Buffer, batch: usize, rows: usize, cols: usize) {
        self.record(|recorder| image::transpose(recorder, x, y, batch, rows, cols));
    }
    fn unary(&self, op: Unary, x: &Self::Buffer, y: &Self::Buffer, len: usize) {
        self.record(|recorder| image::unary(recorder, op, x, y, len));
    }
    fn geglu(&self, x: &Self::Buffer, y: &Self::Buffer, rows: usize, inner: usize) {
        self.record(|recorder| image::geglu(recorder, x, y, rows, inner));
    }
    fn add_repeated(&self, a: &Self::Buffer, y: &Self::Buffer, len: usize, inner: usize, period: usize) {
        self.record(|recorder| image::add_repeated(recorder, a, y, len, inner, period));
    }
    fn causal_mask(&self, y: &Self::Buffer, matrices: usize, size: usize) {
        self.record(|recorder| image::causal_mask(recorder, y, matrices, size));
    }
    fn copy_at(&self, from: &Self::Buffer, from_offset: usize, to: &Self::Buffer, to_offset: usize, len: usize) {
        if len == 0 {
            return;
        }
        assert!(!Arc::ptr_eq(&from.0, &to.0), "copy_at: the source and the destination are one buffer");
        let end_bytes = |offset: usize| ((offset + len) * 4) as u64;
        assert!(
            from.size() >= end_bytes(from_offset) && to.size() >= end_bytes(to_offset),
            "copy_at: {len} values from {from_offset} of {} to {to_offset} of {}",
            from.size() / 4,
            to.size() / 4
        );
        self.record_commands(|mut encoder| {
            encoder.copy_buffer_to_buffer(from, (from_offset * 4) as u64, to, (to_offset * 4) as u64, (len * 4) as u64);
            encoder
        });
    }
}

impl ImageBackward for WgpuDevice {
    /// Matmul + col2im, cut as [`ImageOps::conv2d`] cuts its unfolding: a 1×1 convolution with
    /// stride 1 and no padding is one batched matmul `Wᵀ · dy` per image straight into `dx`; any
    /// other computes the unfolded gradient `Wᵀ · dy` (patch_len × positions) of each part
    /// ([`image::conv_chunks`] within [`WgpuDevice::image_scratch_values`]) into a scratch buffer
    /// and folds it back into the image ([`image_backward::col2im`]). Parts of whole images write
    /// their images; column ranges of one image add to the input rows they reach, after `dx`
    /// is cleared.
    fn conv2d_input_grad(&self, spec: &Conv2d, dy: &Self::Buffer, weight: &Self::Buffer, dx: &Self::Buffer) {
        spec.validate().unwrap_or_else(|error| panic!("conv2d input grad: {error}"));
        if spec.input_len() == 0 {
            return;
        }
        if spec.out_channels == 0 {
            self.clear(dx, spec.input_len());
            return;
        }
        let positions = spec.out_height() * spec.out_width();
        let (patch, out_channels) = (spec.patch_len(), spec.out_channels);
        let grad_stride = out_channels * positions;
        if spec.kernel == 1 && spec.stride == 1 && spec.pad_before == 0 && spec.pad_after == 0 {
            // dx[in, plane] = Wᵀ[in, out] · dy[out, plane] per image.
            let plane = spec.height * spec.width;
            let images = Matmul {
                batch_outer: spec.batch,
                b: Layout::row_major(plane).batched(grad_stride, 0),
                c: Layout::row_major(plane).batched(spec.in_channels * plane, 0),
                ..Matmul::new(spec.in_channels, plane, out_channels, true, false)
            };
            self.matmul(&images, weight, dy, None, dx);
            return;
        }
        let chunks = image::conv_chunks(spec, self.image_scratch_values())
            .unwrap_or_else(|error| panic!("conv2d input grad: {error}"));
        let partial = chunks.iter().any(|chunk| chunk.columns != positions);
        if partial {
            self.clear(dx, spec.input_len());
        }
        let scratch_len = chunks.iter().map(|chunk| chunk.len(spec)).max().unwrap_or(0);
        let scratch = self.output(scratch_len);
        for chunk in chunks {
            // cols[patch, columns] = Wᵀ[patch, out] · dy[out, the part's columns] per image.
            let part = Matmul {
                batch_outer: chunk.images,
                b: Layout {
                    offset: chunk.first_image * grad_stride + chunk.first_column,
                    row_stride: positions,
                    col_stride: 1,
                    outer_stride: grad_stride,
                    inner_stride: 0,
                },
                c: Layout::row_major(chunk.columns).batched(patch * chunk.columns, 0),
                ..Matmul::new(patch, chunk.columns, out_channels, true, false)
            };
            self.matmul(&part, weight, dy, None, &scratch);
            let (first_row, rows) = if partial { image_backward::col2im_rows(spec, chunk) } else { (0, spec.height) };
            self.record(|recorder| {
                image_backward::col2im(recorder, spec, chunk, first_row, rows, partial, &scratch, dx)
            });
        }
    }
    fn group_norm_backward(
        &self,
        spec: &GroupNorm,
        x: &Self::Buffer,
        gamma: &Self::Buffer,
        beta: &Self::Buffer,
        dy: &Self::Buffer,
        dx: &Self::Buffer,
    ) {
        self.record(|recorder| image_backward::group_norm_backward(recorder, spec, [x, gamma, beta, dy, dx]));
    }
    fn layer_norm_backward(
        &self,
        x: &Self::Buffer,
        gamma: &Self::Buffer,
        dy: &Self::Buffer,
        dx: &Self::Buffer,
        rows: usize,
        width: usize,
        eps: f32,
    ) {
        self.record(|recorder| image_backward::layer_norm_backward(recorder, x, gamma, dy, dx, rows, width, eps));
    }
    fn upsample_nearest2x_backward(
        &self,
        dy: &Self::Buffer,
        dx: &Self::Buffer,
        planes: usize,
        height: usize,
        width: usize,
    ) {
        self.record(|recorder| image_backward::upsample_nearest2x_backward(recorder, dy, dx, planes, height, width));
    }
    fn unary_backward(&self, op: Unary, x: &Self::Buffer, dy: &Self::Buffer, dx: &Self::Buffer, len: usize) {
        self.record(|recorder| image_backward::unary_backward(recorder, op, x, dy, dx, len));
    }
    fn geglu_backward(&self, x: &Self::Buffer, dy: &Self::Buffer, dx: &Self::Buffer, rows: usize, inner: usize) {
        self.record(|recorder| image_backward::geglu_backward(recorder, x, dy, dx, rows, inner));
    }
}
