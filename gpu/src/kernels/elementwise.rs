//! Element-wise kernels (see `elementwise.wgsl`); references in [`crate::cpu`].

use super::{R, W, launch_1d, word};
use crate::context::Recorder;

const SOURCE: &str = include_str!("elementwise.wgsl");

/// An element-wise operation on `len` values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Elementwise {
    /// `y = gelu(a)`.
    Gelu,
    /// `y = silu(a)`.
    Silu,
    /// `y = b · gelu'(a)` (a = forward input, b = output gradient).
    GeluBackward,
    /// `y = b · silu'(a)`.
    SiluBackward,
    /// `y[i] += a[i mod period]`.
    AddBroadcast {
        /// Length of the repeated vector.
        period: usize,
    },
    /// `y = s0·a + s1·b` (guidance: s0 = 1 − g, s1 = g with a = unconditional, b = conditional).
    Combine {
        /// Weight of a.
        s0: f32,
        /// Weight of b.
        s1: f32,
    },
    /// DDIM in place: `y = cx·y + ce·a + cn·b` (a = ε, b = noise), see [`crate::cpu::DdimStep`].
    Ddim {
        /// `[cx, ce, cn]`.
        coefficients: [f32; 3],
    },
    /// `y = √ᾱ·a + √(1−ᾱ)·b` with `ᾱ = c[i / per_sample]` (forward diffusion).
    AddNoise {
        /// Values per sample.
        per_sample: usize,
    },
    /// `y = scale · (a − b)` (MSE gradient with scale 2/n).
    ScaledDifference {
        /// The factor.
        scale: f32,
    },
    /// `y = scale · c[i / per_sample] · (a − b)`: a per-sample weighted MSE gradient.
    WeightedDifference {
        /// Values per sample.
        per_sample: usize,
        /// The common factor.
        scale: f32,
    },
    /// `y[i] += a[i / period] · b[i mod period]`: adds the vector b (length `period`) to the rows
    /// whose weight in a is non-zero (the learned null text into empty prompts).
    MaskedRowAdd {
        /// Row length.
        period: usize,
    },
    /// Classifier-free guidance on a doubled batch `a = [conditional; unconditional]` (2·len
    /// values): `y = u + scale · (c − u)`.
    GuidanceHalves {
        /// The guidance scale.
        scale: f32,
    },
}

impl Elementwise {
    /// The CPU reference of the operation (same arguments as [`Elementwise::record`]).
    pub fn run_cpu<T: crate::cpu::Real>(&self, a: &[T], b: &[T], c: &[T], y: &mut [T]) {
        let len = y.len();
        self.run_cpu_part(a, b, c, y, 0, len);
    }

    /// [`Elementwise::run_cpu`] on the output values `start .. start + y.len()` of an operation
    /// over `len` values (inputs are whole), so that parts can run on separate threads.
    pub fn run_cpu_part<T: crate::cpu::Real>(&self, a: &[T], b: &[T], c: &[T], y: &mut [T], start: usize, len: usize) {
        use crate::cpu;
        let of = |v: f32| T::of(v as f64);
        // A generic helper (not a `&dyn Fn`), so that each operation's loop is compiled on its
        // own, with the closure inlined: a call per value cost about a tenth of a training step.
        fn each<T: Copy>(y: &mut [T], start: usize, f: impl Fn(usize, T) -> T) {
            for (k, out) in y.iter_mut().enumerate() {
                *out = f(start + k, *out);
            }
        }
        // `y = f(a, b)` value by value, for the activations: a loop without indexing, which
        // the compiler vectorises (with `cpu::exp_f32`), run as AVX2 code where there is AVX2.
        #[inline(always)]
        fn zipped<T: Copy>(y: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T) -> T) {
            for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
                *y = f(a, b);
            }
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn zipped_avx2<T: Copy>(y: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T) -> T) {
            zipped(y, a, b, f)
        }
        fn map<T: Copy>(y: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T) -> T) {
            #[cfg(target_arch = "x86_64")]
            if cpu::has_avx2() {
                // SAFETY: the processor has AVX2.
                return unsafe { zipped_avx2(y, a, b, f) };
            }
            zipped(y, a, b, f)
        }
        let end = start + y.len();
        match *self {
            Elementwise::Gelu => map(y, &a[start..end], &a[start..end], |a, _| cpu::gelu(a)),
            Elementwise::Silu => map(y, &a[start..end], &a[start..end], |a, _| cpu::silu(a)),
            Elementwise::GeluBackward => map(y, &a[start..end], &b[start..end], |a, b| b * cpu::gelu_derivative(a)),
            Elementwise::SiluBackward => map(y, &a[start..end], &b[start..end], |a, b| b * cpu::silu_derivative(a)),
            Elementwise::AddBroadcast { period } => {
                // In runs along the period, without a division per value.
                let (mut index, mut rest) = (start, y);
                while !rest.is_empty() {
                    let phase = index % period;
                    let run = (period - phase).min(rest.len());
                    let (head, tail) = rest.split_at_mut(run);
                    for (y, &a) in head.iter_mut().zip(&a[phase..phase + run]) {
                        *y += a;
                    }
                    (index, rest) = (index + run, tail);
                }
            }
            Elementwise::Combine { s0, s1 } => {
                let (a, b, s0, s1) = (&a[start..end], &b[start..end], of(s0), of(s1));
                each(y, 0, |i, _| s0 * a[i] + s1 * b[i])
            }
            Elementwise::Ddim { coefficients: [cx, ce, cn] } => {
                let (a, b) = (&a[start..end], &b[start..end]);
                let (cx, ce, cn) = (of(cx), of(ce), of(cn));
                each(y, 0, |i, y| cx * y + ce * a[i] + cn * b[i])
            }
            Elementwise::AddNoise { per_sample } => each(y, start, |i, _| {
                let alpha_bar = c[i / per_sample];
                alpha_bar.sqrt() * a[i] + (T::of(1.0) - alpha_bar).sqrt() * b[i]
            }),
            Elementwise::ScaledDifference { scale } => {
                let (a, b, scale) = (&a[start..end], &b[start..end], of(scale));
                each(y, 0, |i, _| scale * (a[i] - b[i]))
            }
            Elementwise::WeightedDifference { per_sample, scale } => {
                let scale = of(scale);
                each(y, start, |i, _| scale * c[i / per_sample] * (a[i] - b[i]))
            }
            Elementwise::MaskedRowAdd { period } => each(y, start, |i, y| y + a[i / period] * b[i % period]),
            Elementwise::GuidanceHalves { scale } => {
                let scale = of(scale);
                each(y, start, |i, _| a[i + len] + scale * (a[i] - a[i + len]))
            }
        }
    }

    /// Records the operation; unused inputs may be any buffer (e.g. `context.unused_read()`).
    pub fn record(
        &self,
        recorder: &mut Recorder<'_>,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        c: &wgpu::Buffer,
        y: &wgpu::Buffer,
        len: usize,
    ) {
        let (op, period, per_sample, s) = match *self {
            Elementwise::Gelu => (0, 1, 1, [0.0; 3]),
            Elementwise::Silu => (1, 1, 1, [0.0; 3]),
            Elementwise::GeluBackward => (2, 1, 1, [0.0; 3]),
            Elementwise::SiluBackward => (3, 1, 1, [0.0; 3]),
            Elementwise::AddBroadcast { period } => (4, period, 1, [0.0; 3]),
            Elementwise::Combine { s0, s1 } => (5, 1, 1, [s0, s1, 0.0]),
            Elementwise::Ddim { coefficients } => (6, 1, 1, coefficients),
            Elementwise::AddNoise { per_sample } => (7, 1, per_sample, [0.0; 3]),
            Elementwise::ScaledDifference { scale } => (8, 1, 1, [scale, 0.0, 0.0]),
            Elementwise::MaskedRowAdd { period } => (9, period, period, [0.0; 3]),
            Elementwise::GuidanceHalves { scale } => (10, 1, 1, [scale, 0.0, 0.0]),
            Elementwise::WeightedDifference { per_sample, scale } => (11, 1, per_sample, [scale, 0.0, 0.0]),
        };
        let (a_len, b_len, c_len) = match *self {
            Elementwise::Gelu | Elementwise::Silu => (len, 0, 0),
            Elementwise::GeluBackward | Elementwise::SiluBackward => (len, len, 0),
            Elementwise::AddBroadcast { period } => (period.min(len), 0, 0),
            Elementwise::Combine { .. } | Elementwise::Ddim { .. } | Elementwise::ScaledDifference { .. } => {
                (len, len, 0)
            }
            Elementwise::AddNoise { per_sample } | Elementwise::WeightedDifference { per_sample, .. } => {
                (len, len, len.div_ceil(per_sample.max(1)))
            }
            Elementwise::MaskedRowAdd { period } => (len.div_ceil(period.max(1)), period.min(len), 0),
            Elementwise::GuidanceHalves { .. } => (2 * len, 0, 0),
        };
        super::require(a, a_len, "element-wise a");
        super::require(b, b_len, "element-wise b");
        super::require(c, c_len, "element-wise c");
        super::require(y, len, "element-wise y");
        let params = [
            word(len),
            op,
            word(period.max(1)),
            word(per_sample.max(1)),
            s[0].to_bits(),
            s[1].to_bits(),
            s[2].to_bits(),
            0,
        ];
        launch_1d(recorder, "elementwise", SOURCE, "main", &[R, R, R, W], &params, &[a, b, c, y], len);
    }
}
