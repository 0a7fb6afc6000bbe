//! CPU references of the image and transformer operations Stable Diffusion needs (convolution,
//! group norm, affine layer norm, nearest upsampling, transposes, exact and quick GELU, GEGLU,
//! broadcast adds, the causal mask). Plain loops in f32 (f64 accumulation where a sum is long):
//! they are the oracle the WGSL kernels are tested against, and the CPU backend runs them.

/// A 2-D convolution over NCHW images with PyTorch's semantics (one group, zero padding):
/// weight `[out_channels, in_channels, kernel, kernel]`, optional bias `[out_channels]`. Padding
/// is `pad_before` rows/columns above and left, `pad_after` below and right (diffusers' VAE
/// encoder pads its strided convolutions by (0, 1)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2d {
    /// Images.
    pub batch: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Kernel side.
    pub kernel: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Zero rows/columns added above and to the left.
    pub pad_before: usize,
    /// Zero rows/columns added below and to the right.
    pub pad_after: usize,
}

impl Conv2d {
    /// A `kernel`×`kernel` convolution with stride 1 and "same" padding (`kernel / 2`).
    pub fn same(
        batch: usize,
        in_channels: usize,
        out_channels: usize,
        height: usize,
        width: usize,
        kernel: usize,
    ) -> Self {
        Conv2d {
            batch,
            in_channels,
            out_channels,
            height,
            width,
            kernel,
            stride: 1,
            pad_before: kernel / 2,
            pad_after: kernel / 2,
        }
    }

    /// Output height.
    pub fn out_height(&self) -> usize {
        (self.height + self.pad_before + self.pad_after - self.kernel) / self.stride + 1
    }

    /// Output width.
    pub fn out_width(&self) -> usize {
        (self.width + self.pad_before + self.pad_after - self.kernel) / self.stride + 1
    }

    /// Values in the input.
    pub fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.height * self.width
    }

    /// Values in the output.
    pub fn output_len(&self) -> usize {
        self.batch * self.out_channels * self.out_height() * self.out_width()
    }

    /// Values in the weight.
    pub fn weight_len(&self) -> usize {
        self.out_channels * self.in_channels * self.kernel * self.kernel
    }

    /// Rows of the unfolded input (im2col): one per (input channel, kernel row, kernel column).
    pub fn patch_len(&self) -> usize {
        self.in_channels * self.kernel * self.kernel
    }

    /// Checks that the kernel fits the padded input.
    pub fn validate(&self) -> Result<(), String> {
        if self.kernel == 0 || self.stride == 0 {
            return Err(format!("{self:?}: kernel and stride must be positive"));
        }
        if self.height + self.pad_before + self.pad_after < self.kernel
            || self.width + self.pad_before + self.pad_after < self.kernel
        {
            return Err(format!("{self:?}: the kernel is larger than the padded input"));
        }
        Ok(())
    }
}

/// Direct convolution (no unfolding), the reference for the im2col + matmul kernels.
pub fn conv2d(spec: &Conv2d, x: &[f32], weight: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let (oh, ow) = (spec.out_height(), spec.out_width());
    let planes = y.len() / (oh * ow);
    conv2d_planes(spec, x, weight, bias, 0, &mut y[..planes * oh * ow]);
}

/// [`conv2d`] for the output planes `first..` (a plane is one (image, output channel)) that fit
/// in `y`: lets a caller split the work.
pub fn conv2d_planes(spec: &Conv2d, x: &[f32], weight: &[f32], bias: Option<&[f32]>, first: usize, y: &mut [f32]) {
    let (h, w, k) = (spec.height as isize, spec.width as isize, spec.kernel);
    let (oh, ow) = (spec.out_height(), spec.out_width());
    let plane_in = spec.height * spec.width;
    for (index, out) in y.chunks_mut(oh * ow).enumerate() {
        let plane = first + index;
        let (image, channel) = (plane / spec.out_channels, plane % spec.out_channels);
        let mut acc = vec![0f64; oh * ow];
        for c in 0..spec.in_channels {
            let input = &x[(image * spec.in_channels + c) * plane_in..][..plane_in];
            for ky in 0..k {
                for kx in 0..k {
                    let wv = weight[((channel * spec.in_channels + c) * k + ky) * k + kx] as f64;
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
                            acc[oy * ow + ox] += wv * input[(iy * w + ix) as usize] as f64;
                        }
                    }
                }
            }
        }
        let b = bias.map_or(0.0, |b| b[channel] as f64);
        for (o, a) in out.iter_mut().zip(acc) {
            *o = (a + b) as f32;
        }
    }
}

/// Row `row` of the unfolded input of one image for a convolution (im2col): `out[oy·ow + ox]` is
/// the padded input at channel `row / k²`, row `oy·stride + ky − pad_before`, column `ox·stride +
/// kx − pad_before` (zero outside), with `(ky, kx)` = `row % k²`. The rows stacked are a
/// `patch_len × positions` matrix, and `weight (out × patch_len) ·` it is the output.
pub fn im2col_row(spec: &Conv2d, image: &[f32], row: usize, out: &mut [f32]) {
    let (h, w, k) = (spec.height as isize, spec.width as isize, spec.kernel);
    let ow = spec.out_width();
    let (c, ky, kx) = (row / (k * k), (row / k) % k, row % k);
    let plane = &image[c * spec.height * spec.width..][..spec.height * spec.width];
    for (oy, out_row) in out.chunks_mut(ow).enumerate() {
        let iy = (oy * spec.stride + ky) as isize - spec.pad_before as isize;
        for (ox, value) in out_row.iter_mut().enumerate() {
            let ix = (ox * spec.stride + kx) as isize - spec.pad_before as isize;
            *value = if iy < 0 || iy >= h || ix < 0 || ix >= w { 0.0 } else { plane[(iy * w + ix) as usize] };
        }
    }
}

/// Group normalisation over NCHW activations, with per-channel scale and shift and an optional
/// SiLU after it (diffusers' ResNet blocks always follow their norms by SiLU).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupNorm {
    /// Images.
    pub batch: usize,
    /// Channels.
    pub channels: usize,
    /// Values per channel (height × width, or tokens).
    pub spatial: usize,
    /// Groups (must divide `channels`).
    pub groups: usize,
    /// Added to the variance.
    pub eps: f32,
    /// Apply SiLU to the result.
    pub silu: bool,
}

impl GroupNorm {
    /// Values in the input (and the output).
    pub fn len(&self) -> usize {
        self.batch * self.channels * self.spatial
    }

    /// True when there is nothing to normalise.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values per group.
    pub fn group_len(&self) -> usize {
        self.channels / self.groups * self.spatial
    }
}

/// [`GroupNorm`]: `y = (x − μ_g)/√(σ²_g + eps) · γ_c + β_c` (then SiLU), μ and σ² (biased) per
/// (image, group).
pub fn group_norm(spec: &GroupNorm, x: &[f32], gamma: &[f32], beta: &[f32], y: &mut [f32]) {
    let n = spec.group_len();
    let per_group = spec.channels / spec.groups;
    for (g, (input, output)) in x.chunks(n).zip(y.chunks_mut(n)).enumerate().take(spec.batch * spec.groups) {
        let mean = input.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = input.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        let rstd = 1.0 / (var + spec.eps as f64).sqrt();
        for (i, (o, &v)) in output.iter_mut().zip(input).enumerate() {
            let c = (g % spec.groups) * per_group + i / spec.spatial;
            let value = ((v as f64 - mean) * rstd * gamma[c] as f64 + beta[c] as f64) as f32;
            *o = if spec.silu { silu(value) } else { value };
        }
    }
}

/// Layer norm with scale and shift over rows of `width`: `y = (x − μ)/√(σ² + eps) · γ + β`.
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], width: usize, eps: f32, y: &mut [f32]) {
    for (input, output) in x.chunks(width).zip(y.chunks_mut(width)) {
        let mean = input.iter().map(|&v| v as f64).sum::<f64>() / width as f64;
        let var = input.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / width as f64;
        let rstd = 1.0 / (var + eps as f64).sqrt();
        for ((o, &v), (&g, &b)) in output.iter_mut().zip(input).zip(gamma.iter().zip(beta)) {
            *o = ((v as f64 - mean) * rstd * g as f64 + b as f64) as f32;
        }
    }
}

/// Nearest-neighbour 2× upsampling of `planes` planes of `height × width`.
pub fn upsample_nearest2x(x: &[f32], planes: usize, height: usize, width: usize, y: &mut [f32]) {
    for p in 0..planes {
        for oy in 0..2 * height {
            for ox in 0..2 * width {
                y[(p * 2 * height + oy) * 2 * width + ox] = x[(p * height + oy / 2) * width + ox / 2];
            }
        }
    }
}

/// Transposes `batch` row-major `rows × cols` matrices (NCHW ↔ tokens).
pub fn transpose(x: &[f32], batch: usize, rows: usize, cols: usize, y: &mut [f32]) {
    for b in 0..batch {
        for r in 0..rows {
            for c in 0..cols {
                y[(b * cols + c) * rows + r] = x[(b * rows + r) * cols + c];
            }
        }
    }
}

/// Element-wise activations of the text encoder and the UNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unary {
    /// `x · Φ(x)` with the exact normal CDF (PyTorch's default GELU).
    GeluErf,
    /// `x · σ(1.702 x)` (CLIP's `quick_gelu`).
    QuickGelu,
    /// `x · σ(x)`.
    Silu,
}

/// erf(x), accurate to double precision (the reference for the kernels' f32 approximation).
pub fn erf(x: f64) -> f64 {
    let e = 1.0 - crate::kernels::noise::erfc(x.abs());
    if x < 0.0 { -e } else { e }
}

/// x · σ(x).
pub fn silu(x: f32) -> f32 {
    let x = x as f64;
    (x / (1.0 + (-x).exp())) as f32
}

impl Unary {
    /// The activation of one value.
    pub fn apply(self, x: f32) -> f32 {
        let v = x as f64;
        match self {
            Unary::GeluErf => (0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2))) as f32,
            Unary::QuickGelu => (v / (1.0 + (-1.702 * v).exp())) as f32,
            Unary::Silu => silu(x),
        }
    }
}

/// GEGLU on rows of `2·inner` (a projection's output): `y[r][j] = x[r][j] · gelu(x[r][inner + j])`,
/// the exact GELU, as in diffusers' `GEGLU` (hidden states first, gate second).
pub fn geglu(x: &[f32], inner: usize, y: &mut [f32]) {
    for (input, output) in x.chunks(2 * inner).zip(y.chunks_mut(inner)) {
        for j in 0..inner {
            output[j] = input[j] * Unary::GeluErf.apply(input[inner + j]);
        }
    }
}

/// `y[i] += a[(i / inner) % period]`: a per-channel bias (inner = spatial size, period =
/// channels) or a per-(image, channel) vector such as the projected timestep embedding (period =
/// batch × channels).
pub fn add_repeated(a: &[f32], inner: usize, period: usize, y: &mut [f32]) {
    for (i, v) in y.iter_mut().enumerate() {
        *v += a[(i / inner) % period];
    }
}

/// The value the causal mask writes above the diagonal: its exponential underflows to zero after
/// the softmax subtracts a row's (finite) maximum.
pub const MASKED: f32 = -1.0e30;

/// Causal mask over `matrices` stacked `size × size` score matrices: every score of a key after
/// its query becomes [`MASKED`].
pub fn causal_mask(y: &mut [f32], size: usize) {
    for (i, v) in y.iter_mut().enumerate() {
        let (row, col) = ((i / size) % size, i % size);
        if col > row {
            *v = MASKED;
        }
    }
}
