//! Deterministic reductions (see `reduce.wgsl`): sums of squares and of squared differences,
//! used for the MSE loss and the global gradient norm.

use super::{R, W, word};
use crate::context::Recorder;

const SOURCE: &str = include_str!("reduce.wgsl");

/// Most workgroups a partial pass uses, hence the partials buffer length it needs.
pub const MAX_PARTIALS: usize = 256;

/// Records `out[out_index] (+)= scale · Σ (a − b)²` (or `Σ a²` when `b` is `None`) over `len`
/// values; `partials` needs [`MAX_PARTIALS`] values.
#[allow(clippy::too_many_arguments)]
pub fn sum_of_squares(
    recorder: &mut Recorder<'_>,
    a: &wgpu::Buffer,
    b: Option<&wgpu::Buffer>,
    len: usize,
    scale: f32,
    partials: &wgpu::Buffer,
    out: &wgpu::Buffer,
    out_index: usize,
    accumulate: bool,
) {
    super::require(a, len, "reduction input");
    if let Some(b) = b {
        super::require(b, len, "reduction input");
    }
    super::require(partials, MAX_PARTIALS, "reduction partials");
    super::require(out, out_index + 1, "reduction output");
    let context = recorder.context();
    let partial = context.pipeline("reduce.partial", "partial", &[R, R, W, W], || SOURCE.to_string());
    let finish = context.pipeline("reduce.finish", "finish", &[R, R, W, W], || SOURCE.to_string());
    let groups = len.div_ceil(256).clamp(1, MAX_PARTIALS);
    let params = [
        word(len),
        u32::from(b.is_some()),
        0,
        word(groups),
        word(out_index),
        u32::from(accumulate),
        scale.to_bits(),
        0,
    ];
    let b = b.unwrap_or(a);
    recorder.dispatch(&partial, &params, &[a, b, partials, out], [groups as u32, 1, 1]);
    recorder.dispatch(&finish, &params, &[a, b, partials, out], [1, 1, 1]);
}
