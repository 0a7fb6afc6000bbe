//! The CPU backend: the plain-Rust reference of every kernel (generic over f32/f64), with
//! recycled buffers and large operations split over the kept worker threads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use super::{Device, ImageBackward, ImageOps};
use crate::context::GpuError;
use crate::cpu::image::{self, Conv2d, GroupNorm, Unary};
use crate::cpu::image_backward;
use crate::cpu::{self, AdamW, Chunk, Patches, Real};
use crate::kernels::adaln::AdaLn;
use crate::kernels::elementwise::Elementwise;
use crate::kernels::embed::TextEmbedding;
use crate::kernels::matmul::Matmul;
use crate::kernels::noise::NoiseStream;

/// The CPU reference backend in `T` (f32 for use, f64 for gradient checks).
///
/// Large buffers are recycled: a training step allocates the same few dozen activation buffers
/// every time, and fresh multi-megabyte allocations cost page faults that took about a third of
/// a step. A dropped buffer goes back to its device's pool, keyed by length, and the next
/// [`Device::zeros`] of that length reuses it (cleared).
#[derive(Debug, Clone, Default)]
pub struct CpuDevice<T = f32> {
    pool: Arc<CpuPool<T>>,
}

/// Recycled vectors by length.
#[derive(Debug)]
struct CpuPool<T> {
    free: Mutex<HashMap<usize, Vec<Vec<T>>>>,
}

impl<T> Default for CpuPool<T> {
    fn default() -> Self {
        CpuPool { free: Mutex::new(HashMap::new()) }
    }
}

/// Buffers shorter than this are allocated afresh (small allocations are cheap).
const POOLED_MIN_LEN: usize = 4096;
/// At most this many free buffers of one length are kept.
const POOLED_PER_LEN: usize = 256;

/// A CPU buffer: a shared handle (cloned like a GPU buffer) to values behind a lock.
#[derive(Debug)]
pub struct CpuBuffer<T>(Arc<CpuStorage<T>>);

impl<T> Clone for CpuBuffer<T> {
    fn clone(&self) -> Self {
        CpuBuffer(self.0.clone())
    }
}

impl<T> std::ops::Deref for CpuBuffer<T> {
    type Target = RwLock<Vec<T>>;
    fn deref(&self) -> &Self::Target {
        &self.0.values
    }
}

#[derive(Debug)]
struct CpuStorage<T> {
    values: RwLock<Vec<T>>,
    pool: Option<std::sync::Weak<CpuPool<T>>>,
}

impl<T> Drop for CpuStorage<T> {
    fn drop(&mut self) {
        let Some(pool) = self.pool.as_ref().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        let values = std::mem::take(self.values.get_mut().unwrap_or_else(|e| e.into_inner()));
        let mut free = pool.free.lock().unwrap_or_else(|e| e.into_inner());
        let list = free.entry(values.len()).or_default();
        if list.len() < POOLED_PER_LEN {
            list.push(values);
        }
    }
}

impl<T: Real> CpuDevice<T> {
    /// A CPU device.
    pub fn new() -> Self {
        CpuDevice { pool: Arc::new(CpuPool::default()) }
    }

    /// A buffer of `len` values, from the pool when one is free: `fill` gets either an empty
    /// vector or a recycled one of length `len` with stale contents, and leaves `len` values.
    fn take(&self, len: usize, fill: impl FnOnce(&mut Vec<T>)) -> CpuBuffer<T> {
        if len < POOLED_MIN_LEN {
            let mut values = Vec::with_capacity(len);
            fill(&mut values);
            return CpuBuffer(Arc::new(CpuStorage { values: RwLock::new(values), pool: None }));
        }
        let recycled = self.pool.free.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&len).and_then(Vec::pop);
        let mut values = recycled.unwrap_or_default();
        fill(&mut values);
        debug_assert_eq!(values.len(), len);
        CpuBuffer(Arc::new(CpuStorage { values: RwLock::new(values), pool: Some(Arc::downgrade(&self.pool)) }))
    }
}

fn read<T>(buffer: &CpuBuffer<T>) -> std::sync::RwLockReadGuard<'_, Vec<T>> {
    buffer.read().expect("cpu buffer poisoned")
}

fn write<T>(buffer: &CpuBuffer<T>) -> std::sync::RwLockWriteGuard<'_, Vec<T>> {
    // An output that is also an input of the same operation would deadlock: fail loudly instead.
    buffer.try_write().expect("an operation's output buffer is also one of its inputs")
}

/// The values behind an optional read guard (empty when there is none).
fn guarded_slice<'a, T>(guard: &'a Option<std::sync::RwLockReadGuard<'_, Vec<T>>>) -> &'a [T] {
    guard.as_deref().map(Vec::as_slice).unwrap_or(&[])
}

fn to_f32<T: Real>(values: &[T]) -> Vec<f32> {
    values.iter().map(|v| v.to_f64() as f32).collect()
}

fn from_f32<T: Real>(values: &[f32]) -> Vec<T> {
    values.iter().map(|v| T::of(*v as f64)).collect()
}

impl<T: Real + Send + Sync> Device for CpuDevice<T> {
    type Buffer = CpuBuffer<T>;
    type Ids = Vec<u32>;

    fn zeros(&self, len: usize) -> Self::Buffer {
        self.take(len, |values| {
            if values.len() == len {
                // A recycled buffer: cleared on both cores (clearing is a tenth of a step).
                cpu::in_parts(values, 1, |_, part| part.fill(T::default()));
            } else {
                *values = vec![T::default(); len];
            }
        })
    }
    fn output(&self, len: usize) -> Self::Buffer {
        self.take(len, |values| {
            if cfg!(debug_assertions) {
                values.clear();
                values.resize(len, T::of(f64::NAN));
            } else if values.len() != len {
                *values = vec![T::default(); len];
            }
        })
    }
    fn upload(&self, data: &[f32]) -> Self::Buffer {
        self.take(data.len(), |values| {
            values.clear();
            values.extend(data.iter().map(|v| T::of(f64::from(*v))));
        })
    }
    fn upload_ids(&self, ids: &[u32]) -> Self::Ids {
        ids.to_vec()
    }
    fn write(&self, buffer: &Self::Buffer, data: &[f32]) {
        write(buffer)[..data.len()].copy_from_slice(&from_f32(data));
    }
    fn download(&self, buffer: &Self::Buffer, len: usize) -> Result<Vec<f32>, GpuError> {
        Ok(to_f32(&read(buffer)[..len]))
    }
    fn copy(&self, from: &Self::Buffer, to: &Self::Buffer, len: usize) {
        let source = read(from)[..len].to_vec();
        write(to)[..len].copy_from_slice(&source);
    }
    fn clear(&self, buffer: &Self::Buffer, len: usize) {
        write(buffer)[..len].fill(T::default());
    }
    fn matmul(&self, spec: &Matmul, a: &Self::Buffer, b: &Self::Buffer, bias: Option<&Self::Buffer>, c: &Self::Buffer) {
        let bias = bias.map(read);
        spec.run_cpu(&read(a), &read(b), bias.as_deref().map(|v| v.as_slice()), &mut write(c));
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
        // Inputs are read in place unless one of them is the output (then it is copied first).
        let aliased = [a, b, c].iter().any(|input| input.is_some_and(|input| Arc::ptr_eq(&input.0, &y.0)));
        if aliased {
            let host = |buffer: Option<&Self::Buffer>| buffer.map(|b| read(b).clone()).unwrap_or_default();
            let (a, b, c) = (host(a), host(b), host(c));
            op.run_cpu(&a, &b, &c, &mut write(y)[..len]);
            return;
        }
        let (a, b, c) = (a.map(read), b.map(read), c.map(read));
        let (a, b, c) = (guarded_slice(&a), guarded_slice(&b), guarded_slice(&c));
        cpu::in_parts(&mut write(y)[..len], 1, |start, part| {
            op.run_cpu_part(a, b, c, part, start, len);
        });
    }
    fn layernorm(&self, x: &Self::Buffer, normalized: &Self::Buffer, rstd: &Self::Buffer, rows: usize, width: usize) {
        let x = read(x);
        cpu::in_parts2(
            &mut write(normalized)[..rows * width],
            width,
            &mut write(rstd)[..rows],
            1,
            |first, normalized, rstd| {
                let x = &x[first * width..][..normalized.len()];
                cpu::layernorm(x, width, normalized, rstd);
            },
        );
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
        let (normalized, rstd, dy) = (read(normalized), read(rstd), read(dy));
        cpu::in_parts(&mut write(dx)[..rows * width], width, |first, dx| {
            let part = first * width..first * width + dx.len();
            cpu::layernorm_backward(&normalized[part.clone()], &rstd[first..], &dy[part], width, dx);
        });
    }
    fn softmax(&self, x: &Self::Buffer, y: &Self::Buffer, rows: usize, width: usize, scale: f32) {
        let x = read(x);
        cpu::in_parts(&mut write(y)[..rows * width], width, |first, y| {
            cpu::softmax(&x[first * width..][..y.len()], width, T::of(scale as f64), y);
        });
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
        let (y, dy) = (read(y), read(dy));
        cpu::in_parts(&mut write(dx)[..rows * width], width, |first, dx| {
            let part = first * width..first * width + dx.len();
            cpu::softmax_backward(&y[part.clone()], &dy[part], width, T::of(scale as f64), dx);
        });
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
        let sample = shape.tokens * shape.width;
        let (x, modulation) = (read(x), read(modulation));
        debug_assert_eq!(shift.stride, scale.stride, "one modulation row per sample");
        cpu::in_parts(&mut write(y)[..shape.batch * sample], sample, |first, y| {
            cpu::modulate(
                &x[first * sample..][..y.len()],
                &modulation[first * shift.stride..],
                shift,
                scale,
                shape.tokens,
                shape.width,
                y,
            );
        });
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
        // In parts by sample: each writes its own samples' rows of dx and of dmodulation.
        let sample = shape.tokens * shape.width;
        let stride = shift.stride;
        debug_assert_eq!(stride, scale.stride, "one modulation row per sample");
        let (x, modulation, dy) = (read(x), read(modulation), read(dy));
        cpu::in_parts2(
            &mut write(dx)[..shape.batch * sample],
            sample,
            &mut write(dmodulation)[..shape.batch * stride],
            stride,
            |first, dx, dmodulation| {
                let part = first * sample..first * sample + dx.len();
                cpu::modulate_backward(
                    &x[part.clone()],
                    &modulation[first * stride..],
                    shift,
                    scale,
                    shape.tokens,
                    shape.width,
                    &dy[part],
                    dx,
                    dmodulation,
                );
            },
        );
    }
    fn gated_residual(&self, shape: AdaLn, x: &Self::Buffer, y: &Self::Buffer, modulation: &Self::Buffer, gate: Chunk) {
        let sample = shape.tokens * shape.width;
        let (y, modulation) = (read(y), read(modulation));
        cpu::in_parts(&mut write(x)[..shape.batch * sample], sample, |first, x| {
            cpu::gated_residual(
                x,
                &y[first * sample..][..x.len()],
                &modulation[first * gate.stride..],
                gate,
                shape.tokens,
                shape.width,
            );
        });
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
        // In parts by sample, as `modulate_backward`.
        let (sample, stride) = (shape.tokens * shape.width, gate.stride);
        let (y, modulation, dx) = (read(y), read(modulation), read(dx));
        cpu::in_parts2(
            &mut write(dy)[..shape.batch * sample],
            sample,
            &mut write(dmodulation)[..shape.batch * stride],
            stride,
            |first, dy, dmodulation| {
                let part = first * sample..first * sample + dy.len();
                cpu::gated_residual_backward(
                    &y[part.clone()],
                    &modulation[first * stride..],
                    gate,
                    shape.tokens,
                    shape.width,
                    &dx[part],
                    dy,
                    dmodulation,
                );
            },
        );
    }
    fn embed_pool(&self, shape: TextEmbedding, ids: &Self::Ids, table: &Self::Buffer, pooled: &Self::Buffer) {
        cpu::embed_pool(
            ids,
            shape.max_tokens,
            &read(table),
            shape.width,
            shape.pooling,
            &mut write(pooled)[..shape.batch * shape.width],
        );
    }
    fn embed_pool_backward(
        &self,
        shape: TextEmbedding,
        ids: &Self::Ids,
        dpooled: &Self::Buffer,
        dtable: &Self::Buffer,
    ) {
        cpu::embed_pool_backward(ids, shape.max_tokens, &read(dpooled), shape.width, shape.pooling, &mut write(dtable));
    }
    fn timestep_embedding(&self, timesteps: &Self::Buffer, out: &Self::Buffer, batch: usize, width: usize) {
        let steps = to_f32(&read(timesteps)[..batch]);
        let mut host = vec![0.0f32; batch * width];
        cpu::timestep_embedding(&steps, width, &mut host);
        write(out)[..batch * width].copy_from_slice(&from_f32(&host));
    }
    fn patchify(&self, geometry: Patches, images: &Self::Buffer, tokens: &Self::Buffer) {
        let (images, mut tokens) = (read(images), write(tokens));
        geometry.for_each_source(false, |token, image| tokens[token] = images[image]);
    }
    fn patchify_backward(&self, geometry: Patches, dtokens: &Self::Buffer, dimages: &Self::Buffer) {
        let (dtokens, mut dimages) = (read(dtokens), write(dimages));
        geometry.for_each_source(false, |token, image| dimages[image] = dtokens[token]);
    }
    fn unpatchify(&self, geometry: Patches, tokens: &Self::Buffer, images: &Self::Buffer) {
        let (tokens, mut images) = (read(tokens), write(images));
        geometry.for_each_source(true, |token, image| images[image] = tokens[token]);
    }
    fn unpatchify_backward(&self, geometry: Patches, dimages: &Self::Buffer, dtokens: &Self::Buffer) {
        let (dimages, mut dtokens) = (read(dimages), write(dtokens));
        geometry.for_each_source(true, |token, image| dtokens[token] = dimages[image]);
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
        let a = read(a);
        let b = b.map(read);
        let mut sum = T::default();
        for i in 0..len {
            let d = match &b {
                Some(b) => a[i] - b[i],
                None => a[i],
            };
            sum += d * d;
        }
        let total = T::of(scale as f64) * sum;
        let mut out = write(out);
        if accumulate {
            out[index] += total;
        } else {
            out[index] = total;
        }
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
        let norm = read(sum_of_squares)[0].to_f64().sqrt() as f32;
        let clip = hyper.clip_factor(norm);
        let grad = to_f32(&read(grad)[..len]);
        let (mut param, mut m, mut v) = (write(param), write(m), write(v));
        let (param, m, v) = (&mut param[..len], &mut m[..len], &mut v[..len]);
        match (T::as_f32_mut(param), T::as_f32_mut(m), T::as_f32_mut(v)) {
            // f32: in place.
            (Some(param), Some(m), Some(v)) => hyper.update(step, clip, param, &grad, m, v),
            _ => {
                let (mut p, mut m_host, mut v_host) = (to_f32(param), to_f32(m), to_f32(v));
                hyper.update(step, clip, &mut p, &grad, &mut m_host, &mut v_host);
                param.copy_from_slice(&from_f32(&p));
                m.copy_from_slice(&from_f32(&m_host));
                v.copy_from_slice(&from_f32(&v_host));
            }
        }
    }
    fn noise(&self, stream: NoiseStream, offset: u32, out: &Self::Buffer, len: usize) {
        let mut out = write(out);
        match T::as_f32_mut(&mut out[..len]) {
            // Each value depends only on its index: filled in parts over the cores.
            Some(values) => {
                cpu::in_parts(values, 1, |first, part| stream.fill(offset.wrapping_add(first as u32), 1.0, part))
            }
            None => {
                let mut host = vec![0.0f32; len];
                stream.fill(offset, 1.0, &mut host);
                out[..len].copy_from_slice(&from_f32(&host));
            }
        }
    }
    fn synchronize(&self) -> Result<(), GpuError> {
        Ok(())
    }
}

impl ImageOps for CpuDevice<f32> {
    fn conv2d(
        &self,
        spec: &Conv2d,
        x: &Self::Buffer,
        weight: &Self::Buffer,
        bias: Option<&Self::Buffer>,
        y: &Self::Buffer,
    ) {
        // The input unfolded per image (a 1×1 stride-1 convolution reads the image itself) and
        // multiplied by the weight with the backend's gemm, then the bias; the direct loops of
        // `image::conv2d` are the reference this is tested against.
        let (x, weight, bias) = (read(x), read(weight), bias.map(read));
        let mut y = write(y);
        let positions = spec.out_height() * spec.out_width();
        let (patch, plane) = (spec.patch_len(), spec.height * spec.width);
        let product = crate::kernels::matmul::Matmul::new(spec.out_channels, positions, patch, false, false);
        let direct = spec.kernel == 1 && spec.stride == 1 && spec.pad_before == 0 && spec.pad_after == 0;
        let mut cols = if direct { Vec::new() } else { vec![0f32; patch * positions] };
        for image in 0..spec.batch {
            let input = &x[image * spec.in_channels * plane..][..spec.in_channels * plane];
            let out = &mut y[image * spec.out_channels * positions..][..spec.out_channels * positions];
            if direct {
                product.run_cpu(&weight, input, None, out);
            } else {
                // A part holds whole rows of the unfolded matrix.
                cpu::in_parts(&mut cols, positions, |first, part| {
                    for (row, values) in part.chunks_mut(positions).enumerate() {
                        image::im2col_row(spec, input, first + row, values);
                    }
                });
                product.run_cpu(&weight, &cols, None, out);
            }
            if let Some(bias) = bias.as_deref() {
                for (channel, values) in out.chunks_mut(positions).enumerate() {
                    values.iter_mut().for_each(|v| *v += bias[channel]);
                }
            }
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
        let (x, gamma, beta) = (read(x), read(gamma), read(beta));
        let n = spec.group_len();
        cpu::in_parts(&mut write(y)[..spec.len()], n, |first, part| {
            // A part holds whole groups; the group index decides the channels.
            let groups = part.len() / n;
            for g in 0..groups {
                let group = first + g;
                let single = GroupNorm { batch: 1, groups: 1, channels: spec.channels / spec.groups, ..*spec };
                let channel0 = (group % spec.groups) * single.channels;
                image::group_norm(
                    &single,
                    &x[group * n..][..n],
                    &gamma[channel0..][..single.channels],
                    &beta[channel0..][..single.channels],
                    &mut part[g * n..][..n],
                );
            }
        });
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
        let (x, gamma, beta) = (read(x), read(gamma), read(beta));
        cpu::in_parts(&mut write(y)[..rows * width], width, |first, part| {
            image::layer_norm(&x[first * width..][..part.len()], &gamma, &beta, width, eps, part);
        });
    }
    fn upsample_nearest2x(&self, x: &Self::Buffer, y: &Self::Buffer, planes: usize, height: usize, width: usize) {
        let x = read(x);
        image::upsample_nearest2x(&x, planes, height, width, &mut write(y)[..planes * 4 * height * width]);
    }
    fn transpose(&self, x: &Self::Buffer, y: &Self::Buffer, batch: usize, rows: usize, cols: usize) {
        let x = read(x);
        image::transpose(&x, batch, rows, cols, &mut write(y)[..batch * rows * cols]);
    }
    fn unary(&self, op: Unary, x: &Self::Buffer, y: &Self::Buffer, len: usize) {
        let x = read(x);
        cpu::in_parts(&mut write(y)[..len], 1, |first, part| {
            for (o, &v) in part.iter_mut().zip(&x[first..]) {
                *o = op.apply(v);
            }
        });
    }
    fn geglu(&self, x: &Self::Buffer, y: &Self::Buffer, rows: usize, inner: usize) {
        let x = read(x);
        cpu::in_parts(&mut write(y)[..rows * inner], inner, |first, part| {
            image::geglu(&x[first * 2 * inner..][..2 * part.len()], inner, part);
        });
    }
    fn add_repeated(&self, a: &Self::Buffer, y: &Self::Buffer, len: usize, inner: usize, period: usize) {
        let a = read(a);
        image::add_repeated(&a, inner, period, &mut write(y)[..len]);
    }
    fn causal_mask(&self, y: &Self::Buffer, matrices: usize, size: usize) {
        image::causal_mask(&mut write(y)[..matrices * size * size], size);
    }
    fn copy_at(&self, from: &Self::Buffer, from_offset: usize, to: &Self::Buffer, to_offset: usize, len: usize) {
        let source = read(from);
        write(to)[to_offset..][..len].copy_from_slice(&source[from_offset..][..len]);
    }
}

impl ImageBackward for CpuDevice<f32> {
    fn conv2d_input_grad(&self, spec: &Conv2d, dy: &Self::Buffer, weight: &Self::Buffer, dx: &Self::Buffer) {
        // Per image: the unfolded gradient Wᵀ · dy (patch_len × positions) with the backend's
        // gemm, folded back into the image (a 1×1 stride-1 convolution's product is the image
        // gradient itself); the direct loops of `image_backward::conv2d_input_grad` are the
        // reference this is tested against.
        let (dy, weight) = (read(dy), read(weight));
        let mut dx = write(dx);
        let positions = spec.out_height() * spec.out_width();
        let (patch, plane) = (spec.patch_len(), spec.height * spec.width);
        let product = crate::kernels::matmul::Matmul::new(patch, positions, spec.out_channels, true, false);
        let direct = spec.kernel == 1 && spec.stride == 1 && spec.pad_before == 0 && spec.pad_after == 0;
        let mut cols = if direct { Vec::new() } else { vec![0f32; patch * positions] };
        for image in 0..spec.batch {
            let grad = &dy[image * spec.out_channels * positions..][..spec.out_channels * positions];
            let out = &mut dx[image * spec.in_channels * plane..][..spec.in_channels * plane];
            if spec.out_channels == 0 {
                out.fill(0.0);
            } else if direct {
                product.run_cpu(&weight, grad, None, out);
            } else {
                product.run_cpu(&weight, grad, None, &mut cols);
                cpu::in_parts(out, plane, |first, part| {
                    for (index, values) in part.chunks_mut(plane).enumerate() {
                        image_backward::col2im_plane(spec, &cols, first + index, values);
                    }
                });
            }
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
        let (x, gamma, beta, dy) = (read(x), read(gamma), read(beta), read(dy));
        let n = spec.group_len();
        if n == 0 {
            return;
        }
        cpu::in_parts(&mut write(dx)[..spec.len()], n, |first, part| {
            // A part holds whole groups; the group index decides the channels.
            for (g, out) in part.chunks_mut(n).enumerate() {
                let group = first + g;
                let single = GroupNorm { batch: 1, groups: 1, channels: spec.channels / spec.groups, ..*spec };
                let channel0 = (group % spec.groups) * single.channels;
                image_backward::group_norm_backward(
                    &single,
                    &x[group * n..][..n],
                    &gamma[channel0..][..single.channels],
                    &beta[channel0..][..single.channels],
                    &dy[group * n..][..n],
                    out,
                );
            }
        });
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
        let (x, gamma, dy) = (read(x), read(gamma), read(dy));
        if width == 0 {
            return;
        }
        cpu::in_parts(&mut write(dx)[..rows * width], width, |first, part| {
            let values = first * width..first * width + part.len();
            image_backward::layer_norm_backward(&x[values.clone()], &gamma, &dy[values], width, eps, part);
        });
    }
    fn upsample_nearest2x_backward(
        &self,
        dy: &Self::Buffer,
        dx: &Self::Buffer,
        planes: usize,
        height: usize,
        width: usize,
    ) {
        let dy = read(dy);
        image_backward::upsample_nearest2x_backward(
            &dy,
            planes,
            height,
            width,
            &mut write(dx)[..planes * height * width],
        );
    }
    fn unary_backward(&self, op: Unary, x: &Self::Buffer, dy: &Self::Buffer, dx: &Self::Buffer, len: usize) {
        let (x, dy) = (read(x), read(dy));
        cpu::in_parts(&mut write(dx)[..len], 1, |first, part| {
            image_backward::unary_backward(op, &x[first..], &dy[first..], part);
        });
    }
    fn geglu_backward(&self, x: &Self::Buffer, dy: &Self::Buffer, dx: &Self::Buffer, rows: usize, inner: usize) {
        let (x, dy) = (read(x), read(dy));
        if inner == 0 {
            return;
        }
        cpu::in_parts(&mut write(dx)[..rows * 2 * inner], 2 * inner, |first, part| {
            let rows_here = part.len() / (2 * inner);
            image_backward::geglu_backward(
                &x[first * 2 * inner..][..part.len()],
                &dy[first * inner..][..rows_here * inner],
                inner,
                part,
            );
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut out = vec![0.0; len];
        NoiseStream::new(seed).fill(0, 0.5, &mut out);
        out
    }

    /// The CPU device's patch permutations (walked without a division per value) equal the
    /// per-index definitions of `cpu::patchify` / `cpu::unpatchify`, and each backward is the
    /// inverse permutation.
    #[test]
    fn patch_permutations_equal_the_per_index_definition() {
        for geometry in
            [Patches { batch: 2, channels: 3, size: 8, patch: 4 }, Patches { batch: 3, channels: 2, size: 9, patch: 3 }]
        {
            let device = CpuDevice::<f32>::new();
            let len = geometry.len();
            let (images, tokens) = (values(len, 4), values(len, 5));
            let (mut patches, mut unpatched) = (vec![0.0; len], vec![0.0; len]);
            cpu::patchify(geometry, &images, &mut patches);
            cpu::unpatchify(geometry, &tokens, &mut unpatched);
            let (image_buffer, token_buffer) = (device.upload(&images), device.upload(&tokens));
            let outs: Vec<_> = (0..4).map(|_| device.zeros(len)).collect();
            device.patchify(geometry, &image_buffer, &outs[0]);
            device.unpatchify(geometry, &token_buffer, &outs[1]);
            device.patchify_backward(geometry, &outs[0], &outs[2]);
            device.unpatchify_backward(geometry, &outs[1], &outs[3]);
            let download = |b: &CpuBuffer<f32>| device.download(b, len).expect("cpu");
            assert_eq!(download(&outs[0]), patches, "patchify {geometry:?}");
            assert_eq!(download(&outs[1]), unpatched, "unpatchify {geometry:?}");
            assert_eq!(download(&outs[2]), images, "patchify backward {geometry:?}");
            assert_eq!(download(&outs[3]), tokens, "unpatchify backward {geometry:?}");
        }
    }

    /// AdamW and the noise write f32 buffers in place; the f64 device goes through f32 copies.
    /// Both must give the host reference's values.
    #[test]
    fn adamw_and_noise_in_place_equal_the_host_reference() {
        let len = 5000;
        let (param, grad, m) = (values(len, 6), values(len, 7), values(len, 8));
        let v: Vec<f32> = values(len, 9).iter().map(|x| x * x + 0.01).collect();
        // No clipping: the clip factor comes from a sum over all values, whose order differs
        // between an f64 device and this f32 reference.
        let hyper = AdamW { lr: 1e-2, weight_decay: 0.1, max_grad_norm: 0.0, ..AdamW::default() };
        let (mut p_ref, mut m_ref, mut v_ref) = (param.clone(), m.clone(), v.clone());
        hyper.update(3, 1.0, &mut p_ref, &grad, &mut m_ref, &mut v_ref);
        let mut noise_ref = vec![0.0; len];
        NoiseStream::new(10).fill(17, 1.0, &mut noise_ref);

        fn run<D: Device>(device: &D, hyper: &AdamW, [param, grad, m, v]: [&[f32]; 4]) -> [Vec<f32>; 4] {
            let len = param.len();
            let (pb, gb, mb, vb) = (device.upload(param), device.upload(grad), device.upload(m), device.upload(v));
            let norm = device.zeros(1);
            device.sum_of_squares(&gb, None, len, 1.0, &norm, 0, false);
            device.adamw(hyper, 3, &gb, &norm, &pb, &mb, &vb, len);
            let noise = device.zeros(len);
            device.noise(NoiseStream::new(10), 17, &noise, len);
            [&pb, &mb, &vb, &noise].map(|b| device.download(b, len).expect("cpu"))
        }
        let inputs = [&param[..], &grad[..], &m[..], &v[..]];
        for (name, [p, m, v, noise]) in [
            ("f32", run(&CpuDevice::<f32>::new(), &hyper, inputs)),
            ("f64", run(&CpuDevice::<f64>::new(), &hyper, inputs)),
        ] {
            // The same f32 update everywhere; only the bias corrections' powers may be
            // evaluated differently (folded at compile time or not) in the last bit.
            let tolerance = 1e-6;
            for (label, got, want) in [("param", &p, &p_ref), ("m", &m, &m_ref), ("v", &v, &v_ref)] {
                let worst =
                    got.iter().zip(want.iter()).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0.0f32, f32::max);
                assert!(worst <= tolerance, "{name} {label}: off by {worst}");
            }
            assert_eq!(noise, noise_ref, "{name} noise");
            assert_ne!(p, param, "{name}: the update changed the parameters");
        }
    }

    /// The CPU device splits large operations over threads; each must equal the serial
    /// reference on an output large enough to be split (and with a ragged last part).
    #[test]
    fn operations_split_over_threads_equal_the_serial_reference() {
        let device = CpuDevice::<f32>::new();
        let (batch, tokens, width) = (13, 61, 96);
        let len = batch * tokens * width;
        assert!(len >= 2 * cpu::tests_parallel_min_len());
        let (x, y) = (values(len, 1), values(len, 2));
        let modulation = values(batch * 6 * width, 3);
        let shape = AdaLn { batch, tokens, width };
        let (shift, scale) = (Chunk { offset: 0, stride: 6 * width }, Chunk { offset: width, stride: 6 * width });
        let upload = |v: &[f32]| device.upload(v);
        let (xb, yb, mb) = (upload(&x), upload(&y), upload(&modulation));

        let out = device.zeros(len);
        device.modulate(shape, &xb, &mb, shift, scale, &out);
        let mut expected = vec![0.0; len];
        cpu::modulate(&x, &modulation, shift, scale, tokens, width, &mut expected);
        assert_eq!(device.download(&out, len).unwrap(), expected, "modulate");

        let residual = upload(&x);
        device.gated_residual(shape, &residual, &yb, &mb, scale);
        let mut expected = x.clone();
        cpu::gated_residual(&mut expected, &y, &modulation, scale, tokens, width);
        assert_eq!(device.download(&residual, len).unwrap(), expected, "gated residual");

        let rows = batch * tokens;
        let (normalized, rstd) = (device.zeros(len), device.zeros(rows));
        device.layernorm(&xb, &normalized, &rstd, rows, width);
        let (mut expected, mut expected_rstd) = (vec![0.0; len], vec![0.0; rows]);
        cpu::layernorm(&x, width, &mut expected, &mut expected_rstd);
        assert_eq!(device.download(&normalized, len).unwrap(), expected, "layernorm");
        assert_eq!(device.download(&rstd, rows).unwrap(), expected_rstd, "layernorm rstd");

        device.softmax(&xb, &out, rows, width, 0.7);
        let mut expected = vec![0.0; len];
        cpu::softmax(&x, width, 0.7, &mut expected);
        assert_eq!(device.download(&out, len).unwrap(), expected, "softmax");

        // Backwards: dx (or dy) by parts, and the per-sample sums into dmodulation, which
        // starts non-zero because they add to it.
        let dy = values(len, 4);
        let dyb = upload(&dy);
        let (dx, dmodulation) = (device.zeros(len), upload(&modulation));
        device.modulate_backward(shape, &xb, &mb, shift, scale, &dyb, &dx, &dmodulation);
        let (mut expected, mut expected_dmodulation) = (vec![0.0; len], modulation.clone());
        cpu::modulate_backward(
            &x,
            &modulation,
            shift,
            scale,
            tokens,
            width,
            &dy,
            &mut expected,
            &mut expected_dmodulation,
        );
        assert_eq!(device.download(&dx, len).unwrap(), expected, "modulate backward dx");
        assert_eq!(
            device.download(&dmodulation, modulation.len()).unwrap(),
            expected_dmodulation,
            "modulate backward dmodulation"
        );

        let dmodulation = upload(&modulation);
        device.gated_residual_backward(shape, &yb, &mb, scale, &dyb, &dx, &dmodulation);
        let (mut expected, mut expected_dmodulation) = (vec![0.0; len], modulation.clone());
        cpu::gated_residual_backward(
            &y,
            &modulation,
            scale,
            tokens,
            width,
            &dy,
            &mut expected,
            &mut expected_dmodulation,
        );
        assert_eq!(device.download(&dx, len).unwrap(), expected, "gated residual backward dy");
        assert_eq!(
            device.download(&dmodulation, modulation.len()).unwrap(),
            expected_dmodulation,
            "gated residual backward dmodulation"
        );

        device.layernorm_backward(&normalized, &rstd, &dyb, &dx, rows, width);
        let mut expected = vec![0.0; len];
        let (normalized_host, rstd_host) =
            (device.download(&normalized, len).unwrap(), device.download(&rstd, rows).unwrap());
        cpu::layernorm_backward(&normalized_host, &rstd_host, &dy, width, &mut expected);
        assert_eq!(device.download(&dx, len).unwrap(), expected, "layernorm backward");

        device.softmax_backward(&out, &dyb, &dx, rows, width, 0.7);
        let mut expected = vec![0.0; len];
        cpu::softmax_backward(&device.download(&out, len).unwrap(), &dy, width, 0.7, &mut expected);
        assert_eq!(device.download(&dx, len).unwrap(), expected, "softmax backward");

        for op in [
            Elementwise::Gelu,
            Elementwise::Silu,
            Elementwise::GeluBackward,
            Elementwise::SiluBackward,
            Elementwise::AddBroadcast { period: 37 },
            Elementwise::Combine { s0: 0.3, s1: -1.2 },
            Elementwise::ScaledDifference { scale: 0.25 },
            Elementwise::MaskedRowAdd { period: 37 },
            Elementwise::Ddim { coefficients: [0.9, -0.3, 0.1] },
        ] {
            let target = upload(&y);
            device.elementwise(op, Some(&xb), Some(&yb), None, &target, len);
            let mut expected = y.clone();
            op.run_cpu(&x, &y, &[], &mut expected);
            assert_eq!(device.download(&target, len).unwrap(), expected, "{op:?}");
        }
        // Two of those loops against their definitions, value by value: the broadcast add walks
        // runs along the period, and the activations run as AVX2 code where there is AVX2 (the
        // same bits as this test's own plain code).
        let target = upload(&y);
        let add = Elementwise::AddBroadcast { period: 37 };
        device.elementwise(add, Some(&xb), None, None, &target, len);
        let expected: Vec<f32> = (0..len).map(|i| y[i] + x[i % 37]).collect();
        assert_eq!(device.download(&target, len).unwrap(), expected, "{add:?}");
        let target = device.zeros(len);
        device.elementwise(Elementwise::GeluBackward, Some(&xb), Some(&yb), None, &target, len);
        let expected: Vec<f32> = (0..len).map(|i| y[i] * cpu::gelu_derivative(x[i])).collect();
        assert_eq!(device.download(&target, len).unwrap(), expected, "gelu backward");
        let doubled: Vec<f32> = x.iter().chain(&y).copied().collect();
        let target = device.zeros(len);
        device.elementwise(
            Elementwise::GuidanceHalves { scale: 2.5 },
            Some(&upload(&doubled)),
            None,
            None,
            &target,
            len,
        );
        let expected: Vec<f32> = (0..len).map(|i| y[i] + 2.5 * (x[i] - y[i])).collect();
        assert_eq!(device.download(&target, len).unwrap(), expected, "guidance halves");
    }
}
