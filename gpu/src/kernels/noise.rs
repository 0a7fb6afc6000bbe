//! Counter-based Gaussian noise: the same seed gives the same noise, bit for bit, on the CPU and
//! on every GPU (see `noise.wgsl` for the method).

use std::sync::OnceLock;

use crate::context::{Access, GpuContext, Recorder, grid_1d};

const SOURCE: &str = include_str!("noise.wgsl");
const CELLS: usize = 256;
const OCTAVES: usize = 24;

/// The noise stream of one seed: element `i` depends only on `(seed, i)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoiseStream {
    key0: u32,
    key1: u32,
}

fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// A 32-bit hash of `(index, seed)`, a bijection of `index` for a fixed seed.
pub fn hash_u32(index: u32, seed: u32) -> u32 {
    NoiseStream::new(seed as u64).bits(index)
}

/// Φ⁻¹(p) for p in (0.5, 1): Acklam's rational approximation refined by one Halley step on
/// erfc, accurate to ~1e-15, far below the Q16 table's resolution.
fn inverse_normal_upper(p: f64) -> f64 {
    let q = 1.0 - p;
    let x = if q > 0.02425 {
        let r = (p - 0.5) * (p - 0.5);
        let a = [
            -3.969683028665376e1,
            2.209460984245205e2,
            -2.759285104469687e2,
            1.383_577_518_672_69e2,
            -3.066479806614716e1,
            2.506628277459239,
        ];
        let b = [
            -5.447609879822406e1,
            1.615858368580409e2,
            -1.556989798598866e2,
            6.680131188771972e1,
            -1.328068155288572e1,
        ];
        (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * (p - 0.5)
            / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)
    } else {
        let c = [
            -7.784894002430293e-3,
            -3.223964580411365e-1,
            -2.400758277161838,
            -2.549732539343734,
            4.374664141464968,
            2.938163982698783,
        ];
        let d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
        let t = (-2.0 * q.ln()).sqrt();
        -(((((c[0] * t + c[1]) * t + c[2]) * t + c[3]) * t + c[4]) * t + c[5])
            / ((((d[0] * t + d[1]) * t + d[2]) * t + d[3]) * t + 1.0)
    };
    // One Halley step on the upper tail probability Q(x) = erfc(x/√2)/2 = q.
    let e = 0.5 * erfc(x / std::f64::consts::SQRT_2) - q;
    let u = -e * (2.0 * std::f64::consts::PI).sqrt() * (x * x / 2.0).exp();
    x - u / (1.0 + x * u / 2.0)
}

/// erfc for x ≥ 0 (W. J. Cody's rational approximations via the continued fraction of Numerical
/// Recipes' erfcc is too coarse; this uses the series/continued fraction split at 2).
pub(crate) fn erfc(x: f64) -> f64 {
    if x < 2.0 {
        // erf by its Taylor series: converges fast for x < 2.
        let mut term = x;
        let mut sum = x;
        let x2 = x * x;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -x2 / n;
            sum += term / (2.0 * n + 1.0);
        }
        1.0 - 2.0 / std::f64::consts::PI.sqrt() * sum
    } else {
        // Continued fraction (Lentz) for erfc.
        let mut f = x;
        let mut c = x;
        let mut d = 0.0;
        for k in 1..200 {
            let a = k as f64 / 2.0;
            d = x + a * d;
            d = 1.0 / d;
            c = x + a / c;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (-x * x).exp() / (f * std::f64::consts::PI.sqrt())
    }
}

/// The Q16 inverse-CDF table: for octave `o` and cell `j` (0..=256), Φ⁻¹(1 − 2^-(o+2)(1 + j/256)).
pub fn table() -> &'static [i32] {
    static TABLE: OnceLock<Vec<i32>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = Vec::with_capacity(OCTAVES * (CELLS + 1));
        for octave in 0..OCTAVES {
            for cell in 0..=CELLS {
                let tail = 0.5f64.powi(octave as i32 + 2) * (1.0 + cell as f64 / CELLS as f64);
                let value = if tail >= 0.5 { 0.0 } else { inverse_normal_upper(1.0 - tail) };
                table.push((value * 65536.0).round() as i32);
            }
        }
        table
    })
}

fn gaussian(bits: u32, table: &[i32]) -> f32 {
    let negative = bits >> 31 != 0;
    let complement = !(bits << 1);
    let octave = complement.leading_zeros().min(OCTAVES as u32 - 1);
    let rest = complement << (octave + 1);
    let cell = rest >> 24;
    let fraction = ((rest >> 16) & 255) as i32;
    let base = (octave as usize) * (CELLS + 1) + cell as usize;
    let low = table[base];
    let high = table[base + 1];
    let fixed = low + (((high - low) * fraction) >> 8);
    let magnitude = fixed as f32 * (1.0 / 65536.0);
    if negative { -magnitude } else { magnitude }
}

impl NoiseStream {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Self {
        NoiseStream { key0: lowbias32(seed as u32 ^ 0x9e37_79b9), key1: lowbias32((seed >> 32) as u32 ^ 0x85eb_ca6b) }
    }

    /// The 32 random bits of element `index`.
    pub fn bits(&self, index: u32) -> u32 {
        let mut h = lowbias32(index ^ self.key0);
        h = lowbias32(h.wrapping_add(self.key1));
        lowbias32(h ^ 0x5bd1_e995)
    }

    /// The standard normal of element `index` (what [`NoiseStream::fill`] writes there at scale 1).
    pub fn normal(&self, index: u32) -> f32 {
        gaussian(self.bits(index), table())
    }

    /// `scale ·` standard normals for elements `offset .. offset + out.len()` (CPU reference).
    pub fn fill(&self, offset: u32, scale: f32, out: &mut [f32]) {
        let table = table();
        for (i, value) in out.iter_mut().enumerate() {
            *value = scale * gaussian(self.bits(offset.wrapping_add(i as u32)), table);
        }
    }

    /// Records filling `len` values of `out` with the same numbers as [`NoiseStream::fill`].
    pub fn record(
        &self,
        recorder: &mut Recorder<'_>,
        table: &wgpu::Buffer,
        offset: u32,
        scale: f32,
        out: &wgpu::Buffer,
        len: usize,
    ) {
        super::require(table, self::table().len(), "noise table");
        super::require(out, len, "noise output");
        let context = recorder.context();
        let pipeline = context.pipeline("noise", "main", &[Access::Read, Access::ReadWrite], || SOURCE.to_string());
        let params = [len as u32, self.key0, self.key1, offset, scale.to_bits(), 0, 0, 0];
        recorder.dispatch(&pipeline, &params, &[table, out], grid_1d(context, len.div_ceil(256)));
    }
}

/// Uploads the inverse-CDF table (do it once per context).
pub fn upload_table(context: &GpuContext) -> wgpu::Buffer {
    context.storage_buffer_with(table())
}
