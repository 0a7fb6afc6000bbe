//! Kernels of Stable Diffusion's networks beyond the DiT's (CPU references in
//! [`crate::cpu::image`]): im2col for convolutions (`image_im2col.wgsl`; the product itself is a
//! [`super::matmul::Matmul`]), group and layer norm (`image_norm.wgsl`), a tiled batched transpose
//! (`image_transpose.wgsl`), and the point-wise ops (`image.wgsl`: exact and quick GELU, SiLU,
//! GEGLU, the repeated add, the causal mask, nearest 2× upsampling; the activations' shared
//! functions in `image_activation.wgsl`). Their backward kernels are in [`super::image_backward`].
//!
//! Every launcher checks the sizes its kernel touches and spreads its workgroups over a 2-D grid
//! ([`grid_1d`]), so any length that fits in u32 indices can be dispatched.

use super::{R, W, launch_1d, require, word};
use crate::context::{Recorder, grid_1d};
use crate::cpu::image::{Conv2d, GroupNorm, Unary};

const POINTWISE: &str = concat!(include_str!("image.wgsl"), include_str!("image_activation.wgsl"));
const IM2COL: &str = include_str!("image_im2col.wgsl");
const NORM: &str = include_str!("image_norm.wgsl");
const TRANSPOSE: &str = include_str!("image_transpose.wgsl");

/// A part of a convolution's unfolded input ([`im2col`]): output positions
/// `first_column..first_column + columns` of the images `first_image..first_image + images`.
/// The part is stored as `images` blocks of `patch_len × columns`, row-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Im2colRange {
    /// First image.
    pub first_image: usize,
    /// Images (more than one only when `columns` is every output position).
    pub images: usize,
    /// First output position (`oy · out_width + ox`).
    pub first_column: usize,
    /// Output positions.
    pub columns: usize,
}

impl Im2colRange {
    /// Values of the unfolded part.
    pub fn len(&self, spec: &Conv2d) -> usize {
        self.images * spec.patch_len() * self.columns
    }
}

/// Cuts a convolution's unfolded input into parts of at most `max_values` values, in order:
/// several whole images per part when an image fits, else one image's output positions in
/// column ranges (multiples of 64, or of 4, columns where the limit allows, so the matmul reading
/// a part can use its vec4 kernels). Errs when not even one column (`patch_len` values) fits.
pub fn conv_chunks(spec: &Conv2d, max_values: usize) -> Result<Vec<Im2colRange>, String> {
    let positions = spec.out_height() * spec.out_width();
    let patch = spec.patch_len();
    if patch > max_values {
        return Err(format!(
            "{spec:?}: one column of the unfolded input holds {patch} values, more than the scratch limit \
             of {max_values}"
        ));
    }
    let per_image = patch * positions;
    if per_image <= max_values {
        let images = (max_values / per_image.max(1)).clamp(1, spec.batch.max(1));
        return Ok((0..spec.batch)
            .step_by(images)
            .map(|first_image| Im2colRange {
                first_image,
                images: images.min(spec.batch - first_image),
                first_column: 0,
                columns: positions,
            })
            .collect());
    }
    let fitting = max_values / patch;
    let columns = match fitting {
        64.. => fitting / 64 * 64,
        4.. => fitting / 4 * 4,
        _ => fitting,
    };
    Ok((0..spec.batch)
        .flat_map(|image| {
            (0..positions).step_by(columns).map(move |first_column| Im2colRange {
                first_image: image,
                images: 1,
                first_column,
                columns: columns.min(positions - first_column),
            })
        })
        .collect())
}

/// Unfolds `range` of the NCHW input `x` into `cols` (see [`Im2colRange`] and
/// [`crate::cpu::image::im2col_row`]): then `weight (out × patch_len) · cols` is that part of the
/// output.
pub fn im2col(recorder: &mut Recorder<'_>, spec: &Conv2d, range: Im2colRange, x: &wgpu::Buffer, cols: &wgpu::Buffer) {
    spec.validate().unwrap_or_else(|error| panic!("im2col: {error}"));
    let positions = spec.out_height() * spec.out_width();
    assert!(
        range.first_image + range.images <= spec.batch && range.first_column + range.columns <= positions,
        "im2col: {range:?} lies outside {spec:?}"
    );
    let len = range.len(spec);
    let plane = spec.height * spec.width;
    require(x, (range.first_image + range.images) * spec.in_channels * plane, "im2col input");
    require(cols, len, "im2col columns");
    let params = [
        word(len),
        word(spec.in_channels),
        word(spec.height),
        word(spec.width),
        word(spec.kernel),
        word(spec.stride),
        word(spec.pad_before),
        word(spec.out_width()),
        word(range.first_image),
        word(range.first_column),
        word(range.columns),
        word(spec.patch_len()),
    ];
    indexable(spec.batch * spec.in_channels * plane, "im2col input");
    launch_1d(recorder, "image_im2col", IM2COL, "im2col", &[R, W], &params, &[x, cols], len);
}

/// Panics unless the indices below `values` fit the kernels' u32 arithmetic.
#[track_caller]
pub(super) fn indexable(values: usize, what: &str) {
    assert!(u32::try_from(values).is_ok(), "{what}: {values} values exceed u32 indices");
}

/// Records the normalisation kernel over `count` groups of `group_len` values (see
/// `image_norm.wgsl`).
#[allow(clippy::too_many_arguments)]
fn normalize(
    recorder: &mut Recorder<'_>,
    count: usize,
    groups: usize,
    group_len: usize,
    spatial: usize,
    per_group: usize,
    eps: f32,
    silu: bool,
    buffers: [&wgpu::Buffer; 4],
) {
    let [x, gamma, beta, y] = buffers;
    let channels = groups * per_group;
    require(x, count * group_len, "norm input");
    require(gamma, channels, "norm scale");
    require(beta, channels, "norm shift");
    require(y, count * group_len, "norm output");
    if count == 0 || group_len == 0 {
        return;
    }
    let context = recorder.context();
    let pipeline = context.pipeline("image_norm.normalize", "normalize", &[R, R, R, W], || {
        format!("{}{}{NORM}", super::REDUCE_SUM, super::NORM_STATS)
    });
    let params =
        [word(count), word(groups), word(group_len), word(spatial), word(per_group), u32::from(silu), eps.to_bits(), 0];
    indexable(count * group_len, "norm");
    recorder.dispatch(&pipeline, &params, &buffers, grid_1d(context, count));
}

/// Group norm with a per-channel affine and an optional SiLU (see [`GroupNorm`] and
/// [`crate::cpu::image::group_norm`]): one workgroup per (image, group).
pub fn group_norm(
    recorder: &mut Recorder<'_>,
    spec: &GroupNorm,
    x: &wgpu::Buffer,
    gamma: &wgpu::Buffer,
    beta: &wgpu::Buffer,
    y: &wgpu::Buffer,
) {
    assert!(
        spec.groups > 0 && spec.channels.is_multiple_of(spec.groups),
        "group norm: {} groups do not divide {} channels",
        spec.groups,
        spec.channels
    );
    let per_group = spec.channels / spec.groups;
    normalize(
        recorder,
        spec.batch * spec.groups,
        spec.groups,
        spec.group_len(),
        spec.spatial,
        per_group,
        spec.eps,
        spec.silu,
        [x, gamma, beta, y],
    );
}

/// Layer norm with scale and shift over `rows` of `width` (see
/// [`crate::cpu::image::layer_norm`]): one workgroup per row.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    recorder: &mut Recorder<'_>,
    x: &wgpu::Buffer,
    gamma: &wgpu::Buffer,
    beta: &wgpu::Buffer,
    y: &wgpu::Buffer,
    rows: usize,
    width: usize,
    eps: f32,
) {
    // A row is a group of `width` channels of one value each.
    normalize(recorder, rows, 1, width, 1, width, eps, false, [x, gamma, beta, y]);
}

/// Records a point-wise entry of `image.wgsl` over `len` outputs.
#[allow(clippy::too_many_arguments)]
fn pointwise(
    recorder: &mut Recorder<'_>,
    entry: &str,
    op: u32,
    a: usize,
    b: usize,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    len: usize,
) {
    let params = [word(len), op, word(a), word(b)];
    launch_1d(recorder, "image", POINTWISE, entry, &[R, W], &params, &[x, y], len);
}

/// Nearest-neighbour 2× upsampling of `planes` planes of `height × width` (see
/// [`crate::cpu::image::upsample_nearest2x`]).
pub fn upsample_nearest2x(
    recorder: &mut Recorder<'_>,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    planes: usize,
    height: usize,
    width: usize,
) {
    let len = planes * 4 * height * width;
    require(x, planes * height * width, "upsample input");
    require(y, len, "upsample output");
    pointwise(recorder, "upsample_nearest2x", 0, height, width, x, y, len);
}

/// Transposes `batch` row-major `rows × cols` matrices (see [`crate::cpu::image::transpose`]),
/// 16×16 tiles through workgroup memory.
pub fn transpose(
    recorder: &mut Recorder<'_>,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    batch: usize,
    rows: usize,
    cols: usize,
) {
    let len = batch * rows * cols;
    require(x, len, "transpose input");
    require(y, len, "transpose output");
    let (tile_rows, tile_cols) = (rows.div_ceil(16), cols.div_ceil(16));
    let tiles = batch * tile_rows * tile_cols;
    if tiles == 0 {
        return;
    }
    indexable(len, "transpose");
    let context = recorder.context();
    let pipeline = context.pipeline("image_transpose.transpose", "transpose", &[R, W], || TRANSPOSE.to_string());
    let params = [word(tiles), word(rows), word(cols), word(tile_rows), word(tile_cols), 0, 0, 0];
    recorder.dispatch(&pipeline, &params, &[x, y], grid_1d(context, tiles));
}

/// `y = op(x)` over `len` values (see [`Unary`]). The exact GELU uses an erfc approximation with
/// relative error below 1.2e-7; every activation is finite for finite inputs of any size.
pub fn unary(recorder: &mut Recorder<'_>, op: Unary, x: &wgpu::Buffer, y: &wgpu::Buffer, len: usize) {
    require(x, len, "unary input");
    require(y, len, "unary output");
    let code = match op {
        Unary::GeluErf => 0,
        Unary::QuickGelu => 1,
        Unary::Silu => 2,
    };
    pointwise(recorder, "unary", code, 0, 0, x, y, len);
}

/// GEGLU (see [`crate::cpu::image::geglu`]): `x` holds `rows × 2·inner`, `y` `rows × inner`.
pub fn geglu(recorder: &mut Recorder<'_>, x: &wgpu::Buffer, y: &wgpu::Buffer, rows: usize, inner: usize) {
    require(x, rows * 2 * inner, "geglu input");
    require(y, rows * inner, "geglu output");
    indexable(rows * 2 * inner, "geglu input");
    pointwise(recorder, "geglu", 0, inner, 0, x, y, rows * inner);
}

/// `y[i] += a[(i / inner) % period]` over `len` values (see
/// [`crate::cpu::image::add_repeated`]).
pub fn add_repeated(
    recorder: &mut Recorder<'_>,
    a: &wgpu::Buffer,
    y: &wgpu::Buffer,
    len: usize,
    inner: usize,
    period: usize,
) {
    if len == 0 {
        return;
    }
    assert!(inner > 0 && period > 0, "add_repeated: inner and period must be positive");
    require(a, period.min((len - 1) / inner + 1), "add_repeated vector");
    require(y, len, "add_repeated output");
    pointwise(recorder, "add_repeated", 0, inner, period, a, y, len);
}

/// Writes [`crate::cpu::image::MASKED`] above the diagonal of `matrices` stacked `size × size`
/// matrices (see [`crate::cpu::image::causal_mask`]).
pub fn causal_mask(recorder: &mut Recorder<'_>, y: &wgpu::Buffer, matrices: usize, size: usize) {
    let len = matrices * size * size;
    require(y, len, "causal mask");
    let unused = recorder.context().unused_read();
    pointwise(recorder, "causal_mask", 0, size, 0, unused, y, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(batch: usize, height: usize, width: usize) -> Conv2d {
        Conv2d { stride: 2, pad_before: 0, pad_after: 1, ..Conv2d::same(batch, 3, 4, height, width, 3) }
    }

    /// Every (image, output position) is covered once, in order, within the limit.
    fn check_cover(spec: &Conv2d, limit: usize, chunks: &[Im2colRange]) {
        let positions = spec.out_height() * spec.out_width();
        let mut next = (0, 0);
        for chunk in chunks {
            assert!(chunk.len(spec) <= limit, "{chunk:?} exceeds {limit}");
            assert!(chunk.images == 1 || chunk.columns == positions, "{chunk:?}");
            assert_eq!((chunk.first_image, chunk.first_column), next, "{chunk:?}");
            let end = chunk.first_column + chunk.columns;
            next = if end == positions { (chunk.first_image + chunk.images, 0) } else { (chunk.first_image, end) };
        }
        assert_eq!(next, (spec.batch, 0));
    }

    #[test]
    fn chunks_cover_every_image_and_position_within_the_limit() {
        let spec = spec(3, 13, 13); // 6 × 6 outputs, patch 27: 972 values per image.
        for (limit, parts) in [(1 << 20, 1), (2 * 972 + 5, 2), (972, 3), (971, 6), (27 * 5, 27), (27, 108)] {
            let chunks = conv_chunks(&spec, limit).unwrap();
            check_cover(&spec, limit, &chunks);
            assert_eq!(chunks.len(), parts, "limit {limit}: {chunks:?}");
        }
        // Column ranges are rounded to multiples of 4 (here 32 of the 35 that fit).
        let chunks = conv_chunks(&spec, 27 * 35).unwrap();
        assert_eq!(chunks[0].columns, 32);
        assert!(conv_chunks(&spec, 26).unwrap_err().contains("scratch limit"));
    }
}
