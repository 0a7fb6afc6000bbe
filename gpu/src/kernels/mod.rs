//! WGSL kernels, one `.wgsl` file per family next to its launcher. Every launcher records into a
//! [`crate::context::Recorder`]; every kernel has a CPU reference in [`crate::cpu`].

pub mod adaln;
pub mod adamw;
pub mod elementwise;
pub mod embed;
pub mod image;
pub mod image_backward;
pub mod matmul;
pub mod noise;
pub mod patchify;
pub mod reduce;
pub mod rows;

use crate::context::{Access, Recorder, grid_1d};

/// `scratch` and `reduce_sum`, prepended to the kernels that sum over a workgroup.
const REDUCE_SUM: &str = include_str!("reduce_sum.wgsl");
/// `group_stats`, prepended (after [`REDUCE_SUM`]) to the group/layer norm kernels and their
/// backward.
const NORM_STATS: &str = include_str!("norm_stats.wgsl");

const R: Access = Access::Read;
const W: Access = Access::ReadWrite;

/// Records `entry` of a family's `source`, one invocation per element of `len` (256 per workgroup).
#[allow(clippy::too_many_arguments)]
fn launch_1d(
    recorder: &mut Recorder<'_>,
    family: &str,
    source: &'static str,
    entry: &str,
    accesses: &[Access],
    params: &[u32],
    buffers: &[&wgpu::Buffer],
    len: usize,
) {
    let context = recorder.context();
    let pipeline = context.pipeline(&format!("{family}.{entry}"), entry, accesses, || source.to_string());
    recorder.dispatch(&pipeline, params, buffers, grid_1d(context, len.div_ceil(256)));
}

/// Panics unless `buffer` holds at least `words` values: the shaders are compiled without
/// runtime bounds checks, so every launcher checks the sizes its kernel will touch.
#[track_caller]
fn require(buffer: &wgpu::Buffer, words: usize, what: &str) {
    assert!(
        buffer.size() >= (words * 4) as u64,
        "{what}: the kernel touches {words} values, the buffer holds {}",
        buffer.size() / 4
    );
}

fn word(value: usize) -> u32 {
    u32::try_from(value).expect("size exceeds u32")
}
