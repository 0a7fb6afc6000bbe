//! CPU references of the gradients of [`super::image`]'s operations with respect to their
//! inputs (the weights, γ and β of a frozen network get none): what LoRA training of Stable
//! Diffusion's UNet back-propagates through. Plain loops in f32 with f64 arithmetic (and f64
//! accumulation wherever a sum is long); every one is checked against central finite
//! differences of its forward reference, and the WGSL kernels against these.
//!
//! Every function overwrites its output.

use super::image::{Conv2d, GroupNorm, Unary, erf};

/// ∂L/∂x of [`super::image::conv2d`] given `dy` (`spec.output_len()` values): the transposed
/// convolution with the same weight, stride and padding, written to `dx` (`spec.input_len()`
/// values). Direct loops: every output gradient is scattered through every kernel tap into an
/// f64 accumulator per input plane.
pub fn conv2d_input_grad(spec: &Conv2d, dy: &[f32], weight: &[f32], dx: &mut [f32]) {
    let (h, w, k) = (spec.height as isize, spec.width as isize, spec.kernel);
    let (oh, ow) = (spec.out_height(), spec.out_width());
    let (plane_in, plane_out) = (spec.height * spec.width, oh * ow);
    for (index, out) in dx[..spec.input_len()].chunks_mut(plane_in).enumerate() {
        let (image, c) = (index / spec.in_channels, index % spec.in_channels);
        let mut acc = vec![0f64; plane_in];
        for o in 0..spec.out_channels {
            let grad = &dy[(image * spec.out_channels + o) * plane_out..][..plane_out];
            for ky in 0..k {
                for kx in 0..k {
                    let wv = weight[((o * spec.in_channels + c) * k + ky) * k + kx] as f64;
                    for oy in 0..oh {
                        let iy = (oy * spec.stride + ky) as isize - spec.pad_before as isize;
                        if iy < 0 || iy >= h {
                            continue;
                        }
                        for ox in 0..ow {
                            let ix = (ox * spec.stride + kx) as isize - spec.pad_before as isize;
                            if ix < 0 || ix >= w {
                                continue;
                            }
                            acc[(iy * w + ix) as usize] += wv * grad[oy * ow + ox] as f64;
                        }
                    }
                }
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            *o = a as f32;
        }
    }
}

/// The inverse of unfolding ([`super::image::im2col_row`]) for one input plane: `out` (height ×
/// width) gets, at each input position, the sum of the entries of `cols` (`patch_len ×
/// positions`, one image's unfolded matrix of gradients, `Wᵀ · dy`) that read it: rows
/// `channel·k² + ky·k + kx`, columns of the output positions whose tap (ky, kx) lands there.
/// With `cols = Wᵀ · dy` this is [`conv2d_input_grad`] of one (image, channel).
pub fn col2im_plane(spec: &Conv2d, cols: &[f32], channel: usize, out: &mut [f32]) {
    let k = spec.kernel;
    let (oh, ow) = (spec.out_height(), spec.out_width());
    let positions = oh * ow;
    for (iy, out_row) in out[..spec.height * spec.width].chunks_mut(spec.width).enumerate() {
        for (ix, value) in out_row.iter_mut().enumerate() {
            let mut sum = 0f64;
            for ky in 0..k {
                // Output row oy reads input row oy·stride + ky − pad_before.
                let Some(oy) = tap_source(iy, ky, spec.pad_before, spec.stride, oh) else {
                    continue;
                };
                for kx in 0..k {
                    let Some(ox) = tap_source(ix, kx, spec.pad_before, spec.stride, ow) else {
                        continue;
                    };
                    sum += cols[((channel * k + ky) * k + kx) * positions + oy * ow + ox] as f64;
                }
            }
            *value = sum as f32;
        }
    }
}

/// The output index `o < outputs` with `o·stride + tap − pad = input`, if there is one.
fn tap_source(input: usize, tap: usize, pad: usize, stride: usize, outputs: usize) -> Option<usize> {
    let shifted = (input + pad).checked_sub(tap)?;
    (shifted.is_multiple_of(stride) && shifted / stride < outputs).then_some(shifted / stride)
}

/// σ(x) in f64.
fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// d/dz [z · σ(z)] = σ(z) · (1 + z · (1 − σ(z))).
fn silu_derivative(z: f64) -> f64 {
    let s = sigmoid(z);
    s * (1.0 + z * (1.0 - s))
}

/// d/dx [x · Φ(x)] = Φ(x) + x · φ(x) (exact GELU).
fn gelu_erf_derivative(x: f64) -> f64 {
    let cdf = 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
    let density = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    cdf + x * density
}

impl Unary {
    /// The activation's derivative at one value.
    pub fn derivative(self, x: f32) -> f32 {
        let v = x as f64;
        let d = match self {
            Unary::GeluErf => gelu_erf_derivative(v),
            Unary::QuickGelu => {
                let s = sigmoid(1.702 * v);
                s + 1.702 * v * s * (1.0 - s)
            }
            Unary::Silu => silu_derivative(v),
        };
        d as f32
    }
}

/// Backward of one normalised group of `x.len()` values: `dx = rstd · (d − mean(d) − x̂ ·
/// mean(d · x̂))` with `d = γ · dz` and `dz = dy` (or `dy · silu′(z)`, `z = x̂ · γ + β`, when
/// `silu`); `channel(i)` indexes γ and β for value i.
#[allow(clippy::too_many_arguments)]
fn normalized_backward(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    beta: &[f32],
    channel: impl Fn(usize) -> usize,
    eps: f32,
    silu: bool,
    dx: &mut [f32],
) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let rstd = 1.0 / (var + eps as f64).sqrt();
    // (x̂, γ · dz) of value i.
    let terms = |i: usize| {
        let c = channel(i);
        let xhat = (x[i] as f64 - mean) * rstd;
        let g = gamma[c] as f64;
        let mut dz = dy[i] as f64;
        if silu {
            dz *= silu_derivative(xhat * g + beta[c] as f64);
        }
        (xhat, g * dz)
    };
    let (mut sum_d, mut sum_dxhat) = (0f64, 0f64);
    for i in 0..x.len() {
        let (xhat, d) = terms(i);
        sum_d += d;
        sum_dxhat += d * xhat;
    }
    let (mean_d, mean_dxhat) = (sum_d / n, sum_dxhat / n);
    for (i, out) in dx[..x.len()].iter_mut().enumerate() {
        let (xhat, d) = terms(i);
        *out = (rstd * (d - mean_d - xhat * mean_dxhat)) as f32;
    }
}

/// Backward of [`super::image::group_norm`] (its SiLU included when `spec.silu`) w.r.t. `x`:
/// `x`, `dy` and `dx` hold `spec.len()` values, `gamma` and `beta` `spec.channels`; the
/// statistics are recomputed from `x`.
pub fn group_norm_backward(spec: &GroupNorm, x: &[f32], gamma: &[f32], beta: &[f32], dy: &[f32], dx: &mut [f32]) {
    let n = spec.group_len();
    let per_group = spec.channels / spec.groups;
    let count = spec.batch * spec.groups;
    for (g, ((input, grad), out)) in x.chunks(n).zip(dy.chunks(n)).zip(dx.chunks_mut(n)).enumerate().take(count) {
        let first = (g % spec.groups) * per_group;
        normalized_backward(input, grad, gamma, beta, |i| first + i / spec.spatial, spec.eps, spec.silu, out);
    }
}

/// Backward of [`super::image::layer_norm`] w.r.t. `x` over rows of `width` (`x`, `dy`, `dx`
/// of equal length, `gamma` of `width`); the statistics are recomputed from `x`.
pub fn layer_norm_backward(x: &[f32], gamma: &[f32], dy: &[f32], width: usize, eps: f32, dx: &mut [f32]) {
    for ((input, grad), out) in x.chunks(width).zip(dy.chunks(width)).zip(dx.chunks_mut(width)) {
        normalized_backward(input, grad, gamma, &[], |i| i, eps, false, out);
    }
}

/// Backward of [`super::image::upsample_nearest2x`]: `dx` (`planes × height × width`, the
/// input's size) gets the sum of each 2×2 block of `dy` (`planes × 2·height × 2·width`).
pub fn upsample_nearest2x_backward(dy: &[f32], planes: usize, height: usize, width: usize, dx: &mut [f32]) {
    let out_width = 2 * width;
    for (i, out) in dx[..planes * height * width].iter_mut().enumerate() {
        let (row, ix) = (i / width, i % width); // row = plane · height + iy
        let top = 2 * row * out_width + 2 * ix;
        let bottom = top + out_width;
        *out = ((dy[top] as f64 + dy[top + 1] as f64) + (dy[bottom] as f64 + dy[bottom + 1] as f64)) as f32;
    }
}

/// `dx[i] = op′(x[i]) · dy[i]` over `dx.len()` values.
pub fn unary_backward(op: Unary, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    for ((out, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
        *out = (op.derivative(v) as f64 * g as f64) as f32;
    }
}

/// Backward of [`super::image::geglu`]: `x` and `dx` hold rows of `2·inner` (hidden states,
/// then gate), `dy` rows of `inner`. `dh = dy · gelu(gate)`, `dgate = dy · h · gelu′(gate)`.
pub fn geglu_backward(x: &[f32], dy: &[f32], inner: usize, dx: &mut [f32]) {
    for ((input, grad), out) in x.chunks(2 * inner).zip(dy.chunks(inner)).zip(dx.chunks_mut(2 * inner)) {
        for j in 0..inner {
            let (h, gate, g) = (input[j] as f64, input[inner + j] as f64, grad[j] as f64);
            out[j] = (g * Unary::GeluErf.apply(input[inner + j]) as f64) as f32;
            out[inner + j] = (g * h * gelu_erf_derivative(gate)) as f32;
        }
    }
}
