//! Row-wise kernels (see `rows.wgsl`): layer norm and softmax, forward and backward.

use super::{R, W, word};
use crate::context::{Recorder, grid_1d};

const SOURCE: &str = include_str!("rows.wgsl");

#[allow(clippy::too_many_arguments)]
fn launch(
    recorder: &mut Recorder<'_>,
    entry: &str,
    rows: usize,
    width: usize,
    scale: f32,
    inputs: [&wgpu::Buffer; 3],
    outputs: [&wgpu::Buffer; 2],
) {
    let context = recorder.context();
    let len = rows * width;
    // Row-sized bindings per entry point: (inputs, index of a one-per-row input, whether the
    // second output holds one value per row).
    let (row_inputs, per_row_input, out_per_row) = match entry {
        "layernorm" => (1, None, true),
        "layernorm_backward" => (3, Some(1), false),
        "softmax" => (1, None, false),
        _ => (2, None, false),
    };
    for (index, input) in inputs.iter().enumerate().take(row_inputs) {
        let words = if per_row_input == Some(index) { rows } else { len };
        super::require(input, words, entry);
    }
    super::require(outputs[0], len, entry);
    if out_per_row {
        super::require(outputs[1], rows, entry);
    }
    let pipeline = context
        .pipeline(&format!("rows.{entry}"), entry, &[R, R, R, W, W], || format!("{}{SOURCE}", super::REDUCE_SUM));
    let params = [word(rows), word(width), scale.to_bits(), 0];
    let buffers = [inputs[0], inputs[1], inputs[2], outputs[0], outputs[1]];
    recorder.dispatch(&pipeline, &params, &buffers, grid_1d(context, rows));
}

/// Layer norm (no affine, eps 1e-6) of `rows × width`: `normalized = x̂`, `rstd = 1/σ` per row.
pub fn layernorm(
    recorder: &mut Recorder<'_>,
    x: &wgpu::Buffer,
    normalized: &wgpu::Buffer,
    rstd: &wgpu::Buffer,
    rows: usize,
    width: usize,
) {
    let unused = recorder.context().unused_read();
    launch(recorder, "layernorm", rows, width, 1.0, [x, unused, unused], [normalized, rstd]);
}

/// Backward of [`layernorm`].
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    recorder: &mut Recorder<'_>,
    normalized: &wgpu::Buffer,
    rstd: &wgpu::Buffer,
    dy: &wgpu::Buffer,
    dx: &wgpu::Buffer,
    rows: usize,
    width: usize,
) {
    let unused = recorder.context().unused_write();
    launch(recorder, "layernorm_backward", rows, width, 1.0, [normalized, rstd, dy], [dx, unused]);
}

/// Softmax of `scale · x` over rows.
pub fn softmax(recorder: &mut Recorder<'_>, x: &wgpu::Buffer, y: &wgpu::Buffer, rows: usize, width: usize, scale: f32) {
    let context = recorder.context();
    let (unused_read, unused_write) = (context.unused_read(), context.unused_write());
    launch(recorder, "softmax", rows, width, scale, [x, unused_read, unused_read], [y, unused_write]);
}

/// Backward of [`softmax`] from its output `y`.
#[allow(clippy::too_many_arguments)]
pub fn softmax_backward(
    recorder: &mut Recorder<'_>,
    y: &wgpu::Buffer,
    dy: &wgpu::Buffer,
    dx: &wgpu::Buffer,
    rows: usize,
    width: usize,
    scale: f32,
) {
    let context = recorder.context();
    let (unused_read, unused_write) = (context.unused_read(), context.unused_write());
    launch(recorder, "softmax_backward", rows, width, scale, [y, dy, unused_read], [dx, unused_write]);
}
