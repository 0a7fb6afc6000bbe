//! The CPU reference backend: plain-Rust versions of every kernel. It is the test oracle and the
//! fallback where no GPU adapter exists. The functions that have a backward are generic over
//! [`Real`] so that finite-difference tests can run them in f64.

pub mod image;
pub mod image_backward;

use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub};

/// f32 or f64.
pub trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + Default
    + std::fmt::Debug
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + MulAssign
    + DivAssign
    + std::iter::Sum
{
    /// The constant `value` in this type.
    fn of(value: f64) -> Self;
    /// eˣ (in f32 [`exp_f32`]).
    fn exp(self) -> Self;
    /// The values as f32 when `Self` is f32 (then an operation can work on them in place).
    fn as_f32_mut(values: &mut [Self]) -> Option<&mut [f32]>;
    /// √x.
    fn sqrt(self) -> Self;
    /// |x|.
    fn abs(self) -> Self;
    /// ±1.
    fn signum(self) -> Self;
    /// Larger of two.
    fn max(self, other: Self) -> Self;
    /// As f64.
    fn to_f64(self) -> f64;
    /// `c = alpha·op(A)·op(B) + beta·c` (strided; f32 through [`crate::gemm::sgemm_bias`], f64
    /// through matrixmultiply; with beta 0, c is only written), then `+ bias[j]` on column j
    /// when the gemm can add it as it writes C: returns whether it did (else the caller adds
    /// it).
    ///
    /// # Safety
    /// The strides must address only elements inside the pointed-to buffers.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
        bias: Option<&[Self]>,
    ) -> bool;
}

macro_rules! real {
    ($t:ty, $gemm:path, $exp:path, $as_f32:expr) => {
        impl Real for $t {
            fn of(value: f64) -> Self {
                value as $t
            }
            #[inline]
            fn exp(self) -> Self {
                $exp(self)
            }
            fn as_f32_mut(values: &mut [Self]) -> Option<&mut [f32]> {
                $as_f32(values)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            fn signum(self) -> Self {
                <$t>::signum(self)
            }
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            unsafe fn gemm(
                m: usize,
                k: usize,
                n: usize,
                alpha: Self,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                beta: Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
                bias: Option<&[Self]>,
            ) -> bool {
                // SAFETY: forwarded from the caller.
                unsafe { $gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc, bias) }
            }
        }
    };
}
real!(f32, crate::gemm::sgemm_bias, exp_f32, Some);
real!(f64, dgemm, f64::exp, |_| None);

/// `matrixmultiply::dgemm` with [`Real::gemm`]'s bias argument (which it leaves to the caller).
#[allow(clippy::too_many_arguments)]
unsafe fn dgemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f64,
    a: *const f64,
    rsa: isize,
    csa: isize,
    b: *const f64,
    rsb: isize,
    csb: isize,
    beta: f64,
    c: *mut f64,
    rsc: isize,
    csc: isize,
    bias: Option<&[f64]>,
) -> bool {
    // SAFETY: forwarded from the caller.
    unsafe { matrixmultiply::dgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) };
    bias.is_none()
}

/// eˣ in f32 written so that loops over many values (GELU, SiLU, softmax) vectorise, which the
/// library call prevents: x = n·ln 2 + r with |r| ≤ ln 2 / 2, eʳ by its degree-7 Taylor
/// polynomial (truncation below 2⁻²⁶ relative), 2ⁿ built in the exponent bits. Within a few ulp
/// of the exact value (checked in the tests). x is clamped to [−87.3, 88.3], so it returns
/// neither 0 nor a subnormal below (but e^−87.3 ≈ 1.2·10⁻³⁸) nor infinity above (but
/// e^88.3 ≈ 2.2·10³⁸). NaN stays NaN.
#[inline]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts; the high part has trailing zero bits, so n·LN2_HI is exact.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5·2²³ rounds to an integer n and leaves n in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    // 2ⁿ: n ∈ [−126, 127], biased exponent n + 127.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    p * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// Outputs shorter than this are computed on the calling thread.
const PARALLEL_MIN_LEN: usize = 1 << 15;

/// How many threads the CPU backend splits an operation over: `MATMUL_NUM_THREADS` when it is
/// set to a positive number (the variable `matrixmultiply` reads too), else the machine's
/// parallelism, at most 8.
pub(crate) fn parallelism() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        std::env::var("MATMUL_NUM_THREADS")
            .ok()
            .and_then(|value| value.trim().parse::<usize>().ok())
            .filter(|&threads| threads > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(8))
    })
}

/// Runs `work(first_unit, part_a, part_b)` on disjoint parts of `a` and `b`, cut at the same
/// unit boundaries (`a_unit` values of `a` and `b_unit` of `b` per unit), one part per thread
/// (on [`crate::pool`]'s kept threads). Small outputs run inline. The parts cover everything
/// once, so the result is the same as one call over the whole.
pub(crate) fn in_parts2<T: Send, U: Send>(
    a: &mut [T],
    a_unit: usize,
    b: &mut [U],
    b_unit: usize,
    work: impl Fn(usize, &mut [T], &mut [U]) + Sync,
) {
    let units = a.len() / a_unit.max(1);
    let parts = parallelism().min(units).max(1);
    if parts == 1 || a.len() < PARALLEL_MIN_LEN {
        work(0, a, b);
        return;
    }
    let per = units.div_ceil(parts);
    let (a_len, b_len) = (a.len(), b.len());
    let (a_at, b_at) = (SendPtr(a.as_mut_ptr()), SendPtr(b.as_mut_ptr()));
    let count = units.div_ceil(per);
    crate::pool::run_parts(count, &|part| {
        // The last part also takes what is left after the whole units.
        let first = part * per;
        let end = |len: usize, unit: usize| match part + 1 == count {
            true => len,
            false => ((first + per) * unit).min(len),
        };
        let a_range = (first * a_unit).min(a_len)..end(a_len, a_unit);
        let b_range = (first * b_unit).min(b_len)..end(b_len, b_unit);
        // SAFETY: the parts' ranges are disjoint and inside `a` and `b`, which stay borrowed
        // mutably until every part has run.
        let (head_a, head_b) = unsafe { (a_at.slice(a_range), b_at.slice(b_range)) };
        work(first, head_a, head_b);
    });
}

/// A mutable slice's start, shared with the threads that write disjoint parts of it.
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// SAFETY: only used to hand disjoint parts of a slice of `Send` values to other threads.
unsafe impl<T: Send> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    /// The values in `range`.
    ///
    /// # Safety
    /// `range` lies inside the slice, and no other live reference covers it.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice<'a>(&self, range: std::ops::Range<usize>) -> &'a mut [T] {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(range.start), range.len()) }
    }
}

/// The length below which operations stay on one thread (for tests that must exceed it).
#[cfg(test)]
pub(crate) fn tests_parallel_min_len() -> usize {
    PARALLEL_MIN_LEN
}

/// [`in_parts2`] for one output.
pub(crate) fn in_parts<T: Send>(out: &mut [T], unit: usize, work: impl Fn(usize, &mut [T]) + Sync) {
    in_parts2(out, unit, &mut [] as &mut [u8], 0, |first, part, _| work(first, part));
}

/// Whether to run the AVX2 copies of the vectorised loops (element-wise activations, softmax):
/// the compiler vectorises them 8 values at a time instead of 4. The arithmetic is the same in
/// both copies (Rust never fuses a multiply and an add on its own), so are the results.
#[inline]
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// tanh that stays finite for large |x|, written like the WGSL one.
#[inline]
pub fn stable_tanh<T: Real>(x: T) -> T {
    let t = (T::of(-2.0) * x.abs()).exp();
    x.signum() * (T::of(1.0) - t) / (T::of(1.0) + t)
}

const GELU_C: f64 = 0.797_884_560_802_865_4;

/// GELU, tanh approximation.
#[inline]
pub fn gelu<T: Real>(x: T) -> T {
    T::of(0.5) * x * (T::of(1.0) + stable_tanh(T::of(GELU_C) * (x + T::of(0.044715) * x * x * x)))
}

/// SiLU: x · sigmoid(x).
#[inline]
pub fn silu<T: Real>(x: T) -> T {
    x / (T::of(1.0) + (-x).exp())
}

/// d gelu(x) / dx for the tanh approximation.
#[inline]
pub fn gelu_derivative<T: Real>(x: T) -> T {
    let c = T::of(GELU_C);
    let t = stable_tanh(c * (x + T::of(0.044715) * x * x * x));
    T::of(0.5) * (T::of(1.0) + t)
        + T::of(0.5) * x * (T::of(1.0) - t * t) * c * (T::of(1.0) + T::of(3.0 * 0.044715) * x * x)
}

/// d silu(x) / dx.
#[inline]
pub fn silu_derivative<T: Real>(x: T) -> T {
    let s = T::of(1.0) / (T::of(1.0) + (-x).exp());
    s * (T::of(1.0) + x * (T::of(1.0) - s))
}

/// Layer norm without affine parameters (eps 1e-6) over rows of `width`: writes the normalised
/// rows to `out` and each row's 1/σ to `rstd`.
pub fn layernorm<T: Real>(x: &[T], width: usize, out: &mut [T], rstd: &mut [T]) {
    for (row, (input, output)) in x.chunks(width).zip(out.chunks_mut(width)).enumerate() {
        let n = T::of(width as f64);
        let mean = input.iter().copied().sum::<T>() / n;
        let var = input.iter().map(|&v| (v - mean) * (v - mean)).sum::<T>() / n;
        let r = T::of(1.0) / (var + T::of(1e-6)).sqrt();
        rstd[row] = r;
        for (o, &v) in output.iter_mut().zip(input) {
            *o = (v - mean) * r;
        }
    }
}

/// Backward of [`layernorm`]: `dx = rstd · (dy − mean(dy) − x̂ · mean(dy · x̂))`.
pub fn layernorm_backward<T: Real>(normalized: &[T], rstd: &[T], dy: &[T], width: usize, dx: &mut [T]) {
    for (row, ((xhat, grad), out)) in
        normalized.chunks(width).zip(dy.chunks(width)).zip(dx.chunks_mut(width)).enumerate()
    {
        let n = T::of(width as f64);
        let mean_dy = grad.iter().copied().sum::<T>() / n;
        let mean_dy_xhat = grad.iter().zip(xhat).map(|(&g, &h)| g * h).sum::<T>() / n;
        for ((o, &g), &h) in out.iter_mut().zip(grad).zip(xhat) {
            *o = rstd[row] * (g - mean_dy - h * mean_dy_xhat);
        }
    }
}

/// Softmax of `scale · x` over rows of `width`.
pub fn softmax<T: Real>(x: &[T], width: usize, scale: T, out: &mut [T]) {
    #[inline(always)]
    fn rows<T: Real>(x: &[T], width: usize, scale: T, out: &mut [T]) {
        for (input, output) in x.chunks(width).zip(out.chunks_mut(width)) {
            let max = input.iter().fold(T::of(f64::NEG_INFINITY), |m, &v| m.max(scale * v));
            // The exponentials in a loop of their own (it vectorises), then their sum in order.
            for (o, &v) in output.iter_mut().zip(input) {
                *o = (scale * v - max).exp();
            }
            let sum = output.iter().fold(T::of(0.0), |sum, &o| sum + o);
            for o in output.iter_mut() {
                *o /= sum;
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn rows_avx2<T: Real>(x: &[T], width: usize, scale: T, out: &mut [T]) {
        rows(x, width, scale, out)
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the processor has AVX2.
        return unsafe { rows_avx2(x, width, scale, out) };
    }
    rows(x, width, scale, out)
}

/// Backward of [`softmax`] given its output `y`: `dx = scale · y · (dy − Σ dy·y)`.
pub fn softmax_backward<T: Real>(y: &[T], dy: &[T], width: usize, scale: T, dx: &mut [T]) {
    for ((prob, grad), out) in y.chunks(width).zip(dy.chunks(width)).zip(dx.chunks_mut(width)) {
        let dot: T = prob.iter().zip(grad).map(|(&p, &g)| p * g).sum();
        for ((o, &p), &g) in out.iter_mut().zip(prob).zip(grad) {
            *o = scale * p * (g - dot);
        }
    }
}

/// Where the per-sample adaLN vectors live: `values[b * stride + offset + d]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of the chunk inside a sample's row.
    pub offset: usize,
    /// Length of a sample's row.
    pub stride: usize,
}

/// adaLN modulate: `y[b,t,d] = x[b,t,d] · (1 + scale[b,d]) + shift[b,d]`, x being
/// `[batch, tokens, width]`, shift and scale chunks of `modulation`.
pub fn modulate<T: Real>(
    x: &[T],
    modulation: &[T],
    shift: Chunk,
    scale: Chunk,
    tokens: usize,
    width: usize,
    y: &mut [T],
) {
    for (b, (out, input)) in y.chunks_mut(tokens * width).zip(x.chunks(tokens * width)).enumerate() {
        let scale = &modulation[b * scale.stride + scale.offset..][..width];
        let shift = &modulation[b * shift.stride + shift.offset..][..width];
        for (out, input) in out.chunks_mut(width).zip(input.chunks(width)) {
            for d in 0..width {
                out[d] = input[d] * (T::of(1.0) + scale[d]) + shift[d];
            }
        }
    }
}

/// Backward of [`modulate`]: writes `dx` and adds Σ_t of the shift and scale gradients into
/// `dmodulation` (same layout as `modulation`).
#[allow(clippy::too_many_arguments)]
pub fn modulate_backward<T: Real>(
    x: &[T],
    modulation: &[T],
    shift: Chunk,
    scale: Chunk,
    tokens: usize,
    width: usize,
    dy: &[T],
    dx: &mut [T],
    dmodulation: &mut [T],
) {
    // Token rows outer, features inner (contiguous), with one running sum per feature: each
    // sum still adds the tokens in order, so the result is the same as a loop over tokens per
    // feature, without the strided reads.
    let batch = x.len() / (tokens * width);
    let (mut dshift, mut dscale) = (vec![T::of(0.0); width], vec![T::of(0.0); width]);
    for b in 0..batch {
        dshift.fill(T::of(0.0));
        dscale.fill(T::of(0.0));
        let s = &modulation[b * scale.stride + scale.offset..][..width];
        for t in 0..tokens {
            let row = (b * tokens + t) * width;
            let (x, dy, dx) = (&x[row..][..width], &dy[row..][..width], &mut dx[row..][..width]);
            for d in 0..width {
                dshift[d] += dy[d];
                dscale[d] += dy[d] * x[d];
                dx[d] = dy[d] * (T::of(1.0) + s[d]);
            }
        }
        let at = |chunk: Chunk| b * chunk.stride + chunk.offset;
        for (total, &sum) in dmodulation[at(shift)..][..width].iter_mut().zip(&dshift) {
            *total += sum;
        }
        for (total, &sum) in dmodulation[at(scale)..][..width].iter_mut().zip(&dscale) {
            *total += sum;
        }
    }
}

/// Gated residual: `x[b,t,d] += gate[b,d] · y[b,t,d]`.
pub fn gated_residual<T: Real>(x: &mut [T], y: &[T], modulation: &[T], gate: Chunk, tokens: usize, width: usize) {
    for (b, (out, input)) in x.chunks_mut(tokens * width).zip(y.chunks(tokens * width)).enumerate() {
        let gate = &modulation[b * gate.stride + gate.offset..][..width];
        for (out, input) in out.chunks_mut(width).zip(input.chunks(width)) {
            for d in 0..width {
                out[d] += gate[d] * input[d];
            }
        }
    }
}

/// Backward of [`gated_residual`] (the residual's own gradient passes through unchanged): writes
/// `dy = gate · dx` and adds `Σ_t dx · y` into the gate's chunk of `dmodulation`.
#[allow(clippy::too_many_arguments)]
pub fn gated_residual_backward<T: Real>(
    y: &[T],
    modulation: &[T],
    gate: Chunk,
    tokens: usize,
    width: usize,
    dx: &[T],
    dy: &mut [T],
    dmodulation: &mut [T],
) {
    // Loop order as in [`modulate_backward`] (same sums, contiguous reads).
    let batch = y.len() / (tokens * width);
    let mut dgate = vec![T::of(0.0); width];
    for b in 0..batch {
        dgate.fill(T::of(0.0));
        let g = &modulation[b * gate.stride + gate.offset..][..width];
        for t in 0..tokens {
            let row = (b * tokens + t) * width;
            let (y, dx, dy) = (&y[row..][..width], &dx[row..][..width], &mut dy[row..][..width]);
            for d in 0..width {
                dgate[d] += dx[d] * y[d];
                dy[d] = g[d] * dx[d];
            }
        }
        for (total, &sum) in dmodulation[b * gate.stride + gate.offset..][..width].iter_mut().zip(&dgate) {
            *total += sum;
        }
    }
}

/// Token id 0 is padding; pooling combines the embeddings of the other ids.
pub const PAD_TOKEN: u32 = 0;

/// How a prompt's token embeddings become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextPooling {
    /// Their mean: every extra word dilutes the others' share (what the first models used).
    #[default]
    Mean,
    /// Their sum: a word whose embedding the model learns to be zero changes nothing, so words
    /// that carry no meaning ("a photo of") need not shift what the others say.
    Sum,
}

/// Pools the real (non-padding) tokens of each sample's embeddings by `pooling`: `ids` is
/// `[batch, max_tokens]`, `table` `[vocabulary, width]`, `out` `[batch, width]`. A sample with no
/// real token gets zeros.
pub fn embed_pool<T: Real>(
    ids: &[u32],
    max_tokens: usize,
    table: &[T],
    width: usize,
    pooling: TextPooling,
    out: &mut [T],
) {
    for (sample, pooled) in ids.chunks(max_tokens).zip(out.chunks_mut(width)) {
        pooled.fill(T::of(0.0));
        let real = sample.iter().filter(|id| **id != PAD_TOKEN).count();
        for &id in sample.iter().filter(|id| **id != PAD_TOKEN) {
            for (p, &e) in pooled.iter_mut().zip(&table[id as usize * width..][..width]) {
                *p += e;
            }
        }
        if real > 0 && pooling == TextPooling::Mean {
            for p in pooled.iter_mut() {
                *p /= T::of(real as f64);
            }
        }
    }
}

/// Backward of [`embed_pool`]: adds each sample's gradient (divided by its count of real tokens
/// for [`TextPooling::Mean`]) into the rows of its ids.
pub fn embed_pool_backward<T: Real>(
    ids: &[u32],
    max_tokens: usize,
    dpooled: &[T],
    width: usize,
    pooling: TextPooling,
    dtable: &mut [T],
) {
    for (sample, grad) in ids.chunks(max_tokens).zip(dpooled.chunks(width)) {
        let real = sample.iter().filter(|id| **id != PAD_TOKEN).count();
        let divisor = if pooling == TextPooling::Mean { real as f64 } else { 1.0 };
        for &id in sample.iter().filter(|id| **id != PAD_TOKEN) {
            for (t, &g) in dtable[id as usize * width..][..width].iter_mut().zip(grad) {
                *t += g / T::of(divisor);
            }
        }
    }
}

/// Image geometry for patchify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patches {
    /// Images per batch.
    pub batch: usize,
    /// Channels.
    pub channels: usize,
    /// Height and width (square images).
    pub size: usize,
    /// Patch side.
    pub patch: usize,
}

impl Patches {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.size / self.patch
    }
    /// Tokens per image.
    pub fn tokens(&self) -> usize {
        self.grid() * self.grid()
    }
    /// Values per patch.
    pub fn patch_len(&self) -> usize {
        self.channels * self.patch * self.patch
    }
    /// Values per batch of images.
    pub fn len(&self) -> usize {
        self.batch * self.channels * self.size * self.size
    }
    /// True for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Image index (NCHW) of element `e` of token `t` of image `b`, with the value order of a
    /// flattened PyTorch conv weight: (c, i, j) for patchify ...
    pub fn patchify_source(&self, b: usize, t: usize, e: usize) -> usize {
        let (p, grid) = (self.patch, self.grid());
        let (c, i, j) = (e / (p * p), (e / p) % p, e % p);
        let (row, col) = ((t / grid) * p + i, (t % grid) * p + j);
        ((b * self.channels + c) * self.size + row) * self.size + col
    }
    /// ... and (i, j, c) for unpatchify, as DiT's final layer orders them.
    pub fn unpatchify_source(&self, b: usize, t: usize, e: usize) -> usize {
        let (p, grid, channels) = (self.patch, self.grid(), self.channels);
        let (i, j, c) = (e / (p * channels), (e / channels) % p, e % channels);
        let (row, col) = ((t / grid) * p + i, (t % grid) * p + j);
        ((b * channels + c) * self.size + row) * self.size + col
    }
    /// Calls `f(token_index, image_index)` for every value of the batch in token order, with
    /// the image indices of [`Patches::patchify_source`] (`unpatchify` false) or
    /// [`Patches::unpatchify_source`] (true), without a division per value.
    pub fn for_each_source(&self, unpatchify: bool, mut f: impl FnMut(usize, usize)) {
        let (p, grid, channels, size) = (self.patch, self.grid(), self.channels, self.size);
        let plane = size * size;
        let mut index = 0;
        for b in 0..self.batch {
            for t in 0..grid * grid {
                let corner = b * channels * plane + (t / grid) * p * size + (t % grid) * p;
                if unpatchify {
                    for i in 0..p {
                        for j in 0..p {
                            for c in 0..channels {
                                f(index, corner + c * plane + i * size + j);
                                index += 1;
                            }
                        }
                    }
                } else {
                    for c in 0..channels {
                        for i in 0..p {
                            for j in 0..p {
                                f(index, corner + c * plane + i * size + j);
                                index += 1;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Images `[B, C, H, W]` → tokens `[B, T, C·p·p]`.
pub fn patchify(geometry: Patches, images: &[f32], tokens: &mut [f32]) {
    let (t_count, len) = (geometry.tokens(), geometry.patch_len());
    for (index, out) in tokens.iter_mut().enumerate() {
        let (b, t, e) = (index / (t_count * len), (index / len) % t_count, index % len);
        *out = images[geometry.patchify_source(b, t, e)];
    }
}

/// Tokens `[B, T, p·p·C]` → images `[B, C, H, W]`.
pub fn unpatchify(geometry: Patches, tokens: &[f32], images: &mut [f32]) {
    let (t_count, len) = (geometry.tokens(), geometry.patch_len());
    for (index, value) in tokens.iter().enumerate() {
        let (b, t, e) = (index / (t_count * len), (index / len) % t_count, index % len);
        images[geometry.unpatchify_source(b, t, e)] = *value;
    }
}

/// Sinusoidal timestep embedding as in DiT: `[cos(t·f_i), sin(t·f_i)]`,
/// `f_i = exp(−ln(10000)·i/half)`.
pub fn timestep_embedding(timesteps: &[f32], dim: usize, out: &mut [f32]) {
    let half = dim / 2;
    for (t, row) in timesteps.iter().zip(out.chunks_mut(dim)) {
        row.fill(0.0);
        for i in 0..half {
            let freq = (-(10000f32.ln()) * i as f32 / half as f32).exp();
            row[i] = (t * freq).cos();
            row[half + i] = (t * freq).sin();
        }
    }
}

/// Mean squared error.
pub fn mse<T: Real>(prediction: &[T], target: &[T]) -> T {
    let sum: f64 = prediction.iter().zip(target).map(|(&p, &t)| (p - t).to_f64().powi(2)).sum();
    T::of(sum / prediction.len().max(1) as f64)
}

/// d mse / d prediction = 2 (p − t) / n.
pub fn mse_backward<T: Real>(prediction: &[T], target: &[T], dprediction: &mut [T]) {
    let n = T::of(prediction.len().max(1) as f64);
    for ((d, &p), &t) in dprediction.iter_mut().zip(prediction).zip(target) {
        *d = T::of(2.0) * (p - t) / n;
    }
}

/// Σ x².
pub fn sum_of_squares(x: &[f32]) -> f32 {
    x.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() as f32
}

/// Classifier-free guidance: `u + g (c − u)`.
pub fn guidance(unconditional: &[f32], conditional: &[f32], scale: f32, out: &mut [f32]) {
    for ((o, u), c) in out.iter_mut().zip(unconditional).zip(conditional) {
        *o = u + scale * (c - u);
    }
}

/// The coefficients of one DDIM step from ᾱ_t to ᾱ_prev with stochasticity `eta`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DdimStep {
    /// ᾱ at the current step.
    pub alpha_bar: f32,
    /// ᾱ at the next (less noisy) step.
    pub alpha_bar_prev: f32,
    /// 0 = deterministic DDIM, 1 = DDPM-like.
    pub eta: f32,
}

impl DdimStep {
    /// σ_t = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev).
    pub fn sigma(&self) -> f32 {
        let (a, ap) = (self.alpha_bar as f64, self.alpha_bar_prev as f64);
        (self.eta as f64 * ((1.0 - ap) / (1.0 - a)).sqrt() * (1.0 - a / ap).max(0.0).sqrt()) as f32
    }

    /// (coefficient of x, coefficient of ε, coefficient of noise) so that
    /// `x_prev = cx·x + ce·ε + cn·z`, from x̂₀ = (x − √(1−ᾱ) ε)/√ᾱ and
    /// `x_prev = √ᾱ_prev x̂₀ + √(1−ᾱ_prev−σ²) ε + σ z`.
    pub fn coefficients(&self) -> [f32; 3] {
        let (a, ap) = (self.alpha_bar as f64, self.alpha_bar_prev as f64);
        let sigma = self.sigma() as f64;
        let cx = (ap / a).sqrt();
        let direction = (1.0 - ap - sigma * sigma).max(0.0).sqrt();
        let ce = direction - cx * (1.0 - a).sqrt();
        [cx as f32, ce as f32, sigma as f32]
    }
}

/// One DDIM update in place: `x ← cx·x + ce·ε + cn·z`.
pub fn ddim_update(step: DdimStep, x: &mut [f32], epsilon: &[f32], noise: &[f32]) {
    let [cx, ce, cn] = step.coefficients();
    for ((v, e), z) in x.iter_mut().zip(epsilon).zip(noise) {
        *v = cx * *v + ce * e + cn * z;
    }
}

/// Forward diffusion for training: `x_t = √ᾱ_b x₀ + √(1−ᾱ_b) ε` with one ᾱ per sample.
pub fn add_noise(x0: &[f32], noise: &[f32], alpha_bar: &[f32], out: &mut [f32]) {
    let per_sample = x0.len() / alpha_bar.len().max(1);
    for (index, ((o, x), e)) in out.iter_mut().zip(x0).zip(noise).enumerate() {
        let a = alpha_bar[index / per_sample];
        *o = a.sqrt() * x + (1.0 - a).sqrt() * e;
    }
}

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator epsilon.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Clip gradients to this global L2 norm (0 = no clipping).
    pub max_grad_norm: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, max_grad_norm: 1.0 }
    }
}

impl AdamW {
    /// The factor gradients are multiplied by for a global gradient norm `norm`.
    pub fn clip_factor(&self, norm: f32) -> f32 {
        if self.max_grad_norm > 0.0 && norm > self.max_grad_norm { self.max_grad_norm / (norm + 1e-6) } else { 1.0 }
    }

    /// One step (`step` counts from 1) on one parameter tensor.
    pub fn update(&self, step: u32, clip: f32, param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32]) {
        let correction1 = 1.0 - self.beta1.powi(step as i32);
        let correction2 = 1.0 - self.beta2.powi(step as i32);
        for (((p, g), m), v) in param.iter_mut().zip(grad).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = g * clip;
            *m = self.beta1 * *m + (1.0 - self.beta1) * g;
            *v = self.beta2 * *v + (1.0 - self.beta2) * g * g;
            let m_hat = *m / correction1;
            let v_hat = *v / correction2;
            *p -= self.lr * (m_hat / (v_hat.sqrt() + self.eps) + self.weight_decay * *p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `exp_f32` against e^x computed in f64, over the whole range it serves and at its edges.
    #[test]
    fn exp_f32_is_within_a_few_ulp_of_the_exact_value() {
        let mut worst_ulp = 0.0f64;
        let mut x = -87.3f32;
        while x < 88.3 {
            let exact = (x as f64).exp();
            let ulp = (exact as f32).to_bits();
            let ulp = f32::from_bits(ulp + 1) as f64 - f32::from_bits(ulp) as f64;
            worst_ulp = worst_ulp.max((exp_f32(x) as f64 - exact).abs() / ulp);
            x += 0.000_731;
        }
        assert!(worst_ulp <= 3.0, "worst error {worst_ulp} ulp");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::INFINITY), exp_f32(88.3));
        assert!(exp_f32(88.3).is_finite() && exp_f32(88.3) > 2.1e38);
        assert_eq!(exp_f32(f32::NEG_INFINITY), exp_f32(-87.3));
        assert!(exp_f32(-1000.0) > 0.0 && exp_f32(-1000.0).is_normal());
        assert!(exp_f32(f32::NAN).is_nan());
        // GELU and its derivative through it stay within f32 rounding of the f64 formulas (the
        // derivative cancels to 0 in f32 where the f64 value is about −1·10⁻⁶, near x = −5).
        for i in -4000..4000 {
            let x = i as f32 * 0.003;
            let (g, d) = (gelu(x) as f64, gelu_derivative(x) as f64);
            assert!((g - gelu(x as f64)).abs() < 1e-6, "gelu({x})");
            assert!((d - gelu_derivative(x as f64)).abs() < 2e-6, "gelu'({x})");
        }
    }
}
