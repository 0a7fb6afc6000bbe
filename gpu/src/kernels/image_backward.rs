//! Backward kernels of Stable Diffusion's operations w.r.t. their inputs (CPU references in
//! [`crate::cpu::image_backward`]): col2im for a convolution's input gradient
//! (`image_backward_col2im.wgsl`; the product Wᵀ·dy before it is a [`super::matmul::Matmul`]),
//! group and layer norm backward (`image_backward_norm.wgsl`), and the point-wise ones
//! (`image_backward.wgsl`: the activations, GEGLU, nearest 2× upsampling).
//!
//! As in [`super::image`], every launcher checks the sizes its kernel touches and spreads its
//! workgroups over a 2-D grid, and every one overwrites its output.

use super::image::{Im2colRange, indexable};
use super::{R, W, launch_1d, require, word};
use crate::context::{Recorder, grid_1d};
use crate::cpu::image::{Conv2d, GroupNorm, Unary};

const ACTIVATION: &str = include_str!("image_activation.wgsl");
const POINTWISE: &str = concat!(include_str!("image_backward.wgsl"), include_str!("image_activation.wgsl"));
const NORM: &str = include_str!("image_backward_norm.wgsl");
const COL2IM: &str = include_str!("image_backward_col2im.wgsl");

/// The input rows `first..first + rows` that the output positions of `range` read (through any
/// kernel tap): those a [`col2im`] of that part can add to.
pub fn col2im_rows(spec: &Conv2d, range: Im2colRange) -> (usize, usize) {
    let ow = spec.out_width();
    if range.columns == 0 || ow == 0 {
        return (0, 0);
    }
    let (first_oy, last_oy) = (range.first_column / ow, (range.first_column + range.columns - 1) / ow);
    let first = (first_oy * spec.stride).saturating_sub(spec.pad_before).min(spec.height);
    let end = (last_oy * spec.stride + spec.kernel).saturating_sub(spec.pad_before).min(spec.height);
    (first, end.saturating_sub(first))
}

/// Folds the part `range` of a convolution's unfolded gradient (`cols`: `range.images` blocks
/// of `patch_len × range.columns`, as [`super::image::im2col`] lays them out) back into the
/// input rows `first_row..first_row + rows` of every channel of its images in `dx` (NCHW of
/// `spec`): each value is the sum over kernel taps of the columns that read it, written, or
/// added to `dx` when `accumulate`. With `cols = Wᵀ · dy` over every part this is
/// [`crate::cpu::image_backward::conv2d_input_grad`].
#[allow(clippy::too_many_arguments)]
pub fn col2im(
    recorder: &mut Recorder<'_>,
    spec: &Conv2d,
    range: Im2colRange,
    first_row: usize,
    rows: usize,
    accumulate: bool,
    cols: &wgpu::Buffer,
    dx: &wgpu::Buffer,
) {
    spec.validate().unwrap_or_else(|error| panic!("col2im: {error}"));
    let positions = spec.out_height() * spec.out_width();
    assert!(
        range.first_image + range.images <= spec.batch
            && range.first_column + range.columns <= positions
            && first_row + rows <= spec.height,
        "col2im: {range:?} (input rows {first_row}..{}) lies outside {spec:?}",
        first_row + rows
    );
    let len = range.images * spec.in_channels * rows * spec.width;
    require(cols, range.len(spec), "col2im columns");
    require(dx, spec.input_len(), "col2im output");
    indexable(spec.input_len(), "col2im output");
    let params = [
        word(len),
        word(spec.in_channels),
        word(spec.height),
        word(spec.width),
        word(spec.kernel),
        word(spec.stride),
        word(spec.pad_before),
        word(spec.out_height()),
        word(spec.out_width()),
        word(range.first_image),
        word(range.first_column),
        word(range.columns),
        word(spec.patch_len()),
        word(first_row),
        word(rows),
        u32::from(accumulate),
    ];
    launch_1d(recorder, "image_backward_col2im", COL2IM, "col2im", &[R, W], &params, &[cols, dx], len);
}

/// Records the normalisation backward over `count` groups of `group_len` values (see
/// `image_backward_norm.wgsl`).
#[allow(clippy::too_many_arguments)]
fn normalize_backward(
    recorder: &mut Recorder<'_>,
    count: usize,
    groups: usize,
    group_len: usize,
    spatial: usize,
    per_group: usize,
    eps: f32,
    silu: bool,
    buffers: [&wgpu::Buffer; 5],
) {
    let [x, gamma, beta, dy, dx] = buffers;
    let channels = groups * per_group;
    require(x, count * group_len, "norm backward input");
    require(gamma, channels, "norm backward scale");
    if silu {
        require(beta, channels, "norm backward shift");
    }
    require(dy, count * group_len, "norm backward output gradient");
    require(dx, count * group_len, "norm backward input gradient");
    if count == 0 || group_len == 0 {
        return;
    }
    indexable(count * group_len, "norm backward");
    let context = recorder.context();
    let pipeline =
        context.pipeline("image_backward_norm.normalize_backward", "normalize_backward", &[R, R, R, R, W], || {
            format!("{}{}{NORM}{ACTIVATION}", super::REDUCE_SUM, super::NORM_STATS)
        });
    let params =
        [word(count), word(groups), word(group_len), word(spatial), word(per_group), u32::from(silu), eps.to_bits(), 0];
    recorder.dispatch(&pipeline, &params, &buffers, grid_1d(context, count));
}

/// Backward of group norm (its SiLU included when `spec.silu`) w.r.t. `x`, see
/// [`crate::cpu::image_backward::group_norm_backward`]: `buffers` are `[x, gamma, beta, dy, dx]`;
/// one workgroup per (image, group).
pub fn group_norm_backward(recorder: &mut Recorder<'_>, spec: &GroupNorm, buffers: [&wgpu::Buffer; 5]) {
    assert!(
        spec.groups > 0 && spec.channels.is_multiple_of(spec.groups),
        "group norm backward: {} groups do not divide {} channels",
        spec.groups,
        spec.channels
    );
    let per_group = spec.channels / spec.groups;
    normalize_backward(
        recorder,
        spec.batch * spec.groups,
        spec.groups,
        spec.group_len(),
        spec.spatial,
        per_group,
        spec.eps,
        spec.silu,
        buffers,
    );
}

/// Backward of the affine layer norm over `rows` of `width` w.r.t. `x`, see
/// [`crate::cpu::image_backward::layer_norm_backward`]: one workgroup per row.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(
    recorder: &mut Recorder<'_>,
    x: &wgpu::Buffer,
    gamma: &wgpu::Buffer,
    dy: &wgpu::Buffer,
    dx: &wgpu::Buffer,
    rows: usize,
    width: usize,
    eps: f32,
) {
    // A row is a group of `width` channels of one value each; no SiLU, so no β.
    let unused = recorder.context().unused_read();
    normalize_backward(recorder, rows, 1, width, 1, width, eps, false, [x, gamma, unused, dy, dx]);
}

/// Records a point-wise entry of `image_backward.wgsl` over `len` invocations.
#[allow(clippy::too_many_arguments)]
fn pointwise(
    recorder: &mut Recorder<'_>,
    entry: &str,
    op: u32,
    a: usize,
    b: usize,
    buffers: [&wgpu::Buffer; 3],
    len: usize,
) {
    let params = [word(len), op, word(a), word(b)];
    launch_1d(recorder, "image_backward", POINTWISE, entry, &[R, R, W], &params, &buffers, len);
}

/// Backward of nearest 2× upsampling: `dx` (`planes × height × width`) gets the sum of each 2×2
/// block of `dy`, see [`crate::cpu::image_backward::upsample_nearest2x_backward`].
pub fn upsample_nearest2x_backward(
    recorder: &mut Recorder<'_>,
    dy: &wgpu::Buffer,
    dx: &wgpu::Buffer,
    planes: usize,
    height: usize,
    width: usize,
) {
    let len = planes * height * width;
    require(dy, 4 * len, "upsample backward output gradient");
    require(dx, len, "upsample backward input gradient");
    indexable(4 * len, "upsample backward");
    let unused = recorder.context().unused_read();
    pointwise(recorder, "upsample_nearest2x_backward", 0, height, width, [unused, dy, dx], len);
}

/// `dx = op′(x) · dy` over `len` values, see [`crate::cpu::image_backward::unary_backward`].
pub fn unary_backward(
    recorder: &mut Recorder<'_>,
    op: Unary,
    x: &wgpu::Buffer,
    dy: &wgpu::Buffer,
    dx: &wgpu::Buffer,
    len: usize,
) {
    require(x, len, "unary backward input");
    require(dy, len, "unary backward output gradient");
    require(dx, len, "unary backward input gradient");
    let code = match op {
        Unary::GeluErf => 0,
        Unary::QuickGelu => 1,
        Unary::Silu => 2,
    };
    pointwise(recorder, "unary_backward", code, 0, 0, [x, dy, dx], len);
}

/// Backward of GEGLU, see [`crate::cpu::image_backward::geglu_backward`]: `x` and `dx` hold
/// `rows × 2·inner`, `dy` `rows × inner`.
pub fn geglu_backward(
    recorder: &mut Recorder<'_>,
    x: &wgpu::Buffer,
    dy: &wgpu::Buffer,
    dx: &wgpu::Buffer,
    rows: usize,
    inner: usize,
) {
    require(x, rows * 2 * inner, "geglu backward input");
    require(dy, rows * inner, "geglu backward output gradient");
    require(dx, rows * 2 * inner, "geglu backward input gradient");
    indexable(rows * 2 * inner, "geglu backward");
    pointwise(recorder, "geglu_backward", 0, inner, 0, [x, dy, dx], rows * inner);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::image::conv_chunks;

    /// The rows a part reaches hold every input row that one of its output positions reads.
    #[test]
    fn col2im_rows_cover_what_each_part_reads() {
        let strided = Conv2d { stride: 2, pad_before: 0, pad_after: 1, ..Conv2d::same(1, 3, 4, 13, 11, 3) };
        for spec in [strided, Conv2d::same(2, 3, 4, 9, 7, 3), Conv2d { stride: 2, ..Conv2d::same(1, 2, 2, 9, 8, 1) }] {
            let ow = spec.out_width();
            for limit in [spec.patch_len(), spec.patch_len() * 5, spec.patch_len() * 64, 1 << 20] {
                for range in conv_chunks(&spec, limit).unwrap() {
                    let (first, rows) = col2im_rows(&spec, range);
                    for position in range.first_column..range.first_column + range.columns {
                        for ky in 0..spec.kernel {
                            let iy = ((position / ow) * spec.stride + ky) as isize - spec.pad_before as isize;
                            if (0..spec.height as isize).contains(&iy) {
                                let iy = iy as usize;
                                assert!(first <= iy && iy < first + rows, "{spec:?} {range:?}: row {iy}");
                            }
                        }
                    }
                }
            }
        }
    }
}
