//! Patchify / unpatchify and their backward (see `patchify.wgsl`).

use super::{R, W, launch_1d, word};
use crate::context::Recorder;
use crate::cpu::Patches;

const SOURCE: &str = include_str!("patchify.wgsl");

fn launch(
    recorder: &mut Recorder<'_>,
    geometry: Patches,
    order: u32,
    entry: &str,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
) {
    super::require(src, geometry.len(), "patchify source");
    super::require(dst, geometry.len(), "patchify destination");
    let params =
        [word(geometry.len()), word(geometry.channels), word(geometry.size), word(geometry.patch), order, 0, 0, 0];
    launch_1d(recorder, "patchify", SOURCE, entry, &[R, W], &params, &[src, dst], geometry.len());
}

/// Images `[B, C, H, W]` → tokens `[B, T, C·p·p]`.
pub fn patchify(recorder: &mut Recorder<'_>, geometry: Patches, images: &wgpu::Buffer, tokens: &wgpu::Buffer) {
    launch(recorder, geometry, 0, "gather", images, tokens);
}

/// Backward of [`patchify`]: token gradients → image gradients.
pub fn patchify_backward(
    recorder: &mut Recorder<'_>,
    geometry: Patches,
    dtokens: &wgpu::Buffer,
    dimages: &wgpu::Buffer,
) {
    launch(recorder, geometry, 0, "scatter", dtokens, dimages);
}

/// Tokens `[B, T, p·p·C]` → images `[B, C, H, W]`.
pub fn unpatchify(recorder: &mut Recorder<'_>, geometry: Patches, tokens: &wgpu::Buffer, images: &wgpu::Buffer) {
    launch(recorder, geometry, 1, "scatter", tokens, images);
}

/// Backward of [`unpatchify`]: image gradients → token gradients.
pub fn unpatchify_backward(
    recorder: &mut Recorder<'_>,
    geometry: Patches,
    dimages: &wgpu::Buffer,
    dtokens: &wgpu::Buffer,
) {
    launch(recorder, geometry, 1, "gather", dimages, dtokens);
}
