//! AdamW with global-norm gradient clipping on the GPU (see `adamw.wgsl`); the CPU reference is
//! [`crate::cpu::AdamW::update`].

use super::{R, W, launch_1d, word};
use crate::context::Recorder;
use crate::cpu::AdamW;

const SOURCE: &str = include_str!("adamw.wgsl");

/// Records one AdamW step (`step` from 1) of one tensor; `sum_of_squares[0]` holds Σ g² over
/// every trained tensor (for clipping).
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    recorder: &mut Recorder<'_>,
    hyper: &AdamW,
    step: u32,
    grad: &wgpu::Buffer,
    sum_of_squares: &wgpu::Buffer,
    param: &wgpu::Buffer,
    m: &wgpu::Buffer,
    v: &wgpu::Buffer,
    len: usize,
) {
    for (buffer, what) in [(grad, "gradient"), (param, "parameter"), (m, "first moment"), (v, "second moment")] {
        super::require(buffer, len, what);
    }
    super::require(sum_of_squares, 1, "sum of squares");
    let params = [
        word(len),
        0,
        0,
        0,
        hyper.lr.to_bits(),
        hyper.beta1.to_bits(),
        hyper.beta2.to_bits(),
        hyper.eps.to_bits(),
        hyper.weight_decay.to_bits(),
        hyper.max_grad_norm.to_bits(),
        (1.0 - hyper.beta1.powi(step as i32)).to_bits(),
        (1.0 - hyper.beta2.powi(step as i32)).to_bits(),
    ];
    launch_1d(recorder, "adamw", SOURCE, "main", &[R, R, W, W, W], &params, &[grad, sum_of_squares, param, m, v], len);
}
