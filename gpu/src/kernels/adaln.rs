//! adaLN modulate and gated residual, forward and backward (see `adaln.wgsl`).

use super::{R, W, launch_1d, word};
use crate::context::Recorder;
use crate::cpu::Chunk;

const SOURCE: &str = include_str!("adaln.wgsl");

/// Shapes shared by the adaLN kernels: x is `[batch, tokens, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaLn {
    /// Samples.
    pub batch: usize,
    /// Tokens per sample.
    pub tokens: usize,
    /// Channels per token.
    pub width: usize,
}

impl AdaLn {
    fn params(&self, first: Chunk, second: Chunk) -> [u32; 8] {
        assert_eq!(first.stride, second.stride, "chunks of one modulation tensor");
        [
            word(self.batch * self.tokens * self.width),
            word(self.tokens),
            word(self.width),
            word(first.stride),
            word(first.offset),
            word(second.offset),
            0,
            0,
        ]
    }

    fn check(&self, tensors: &[&wgpu::Buffer], modulations: &[&wgpu::Buffer], first: Chunk, second: Chunk) {
        for tensor in tensors {
            super::require(tensor, self.len(), "adaLN activations");
        }
        let end = first.offset.max(second.offset) + self.width;
        for modulation in modulations {
            super::require(modulation, self.batch.saturating_sub(1) * first.stride + end, "adaLN modulation");
        }
    }

    fn len(&self) -> usize {
        self.batch * self.tokens * self.width
    }

    /// `y = x · (1 + scale) + shift`.
    pub fn modulate(
        &self,
        recorder: &mut Recorder<'_>,
        x: &wgpu::Buffer,
        modulation: &wgpu::Buffer,
        shift: Chunk,
        scale: Chunk,
        y: &wgpu::Buffer,
    ) {
        let context = recorder.context();
        let (unused_read, unused_write) = (context.unused_read(), context.unused_write());
        self.check(&[x, y], &[modulation], shift, scale);
        launch_1d(
            recorder,
            "adaln",
            SOURCE,
            "modulate",
            &[R, R, R, W, W],
            &self.params(shift, scale),
            &[x, modulation, unused_read, y, unused_write],
            self.len(),
        );
    }

    /// Backward of [`AdaLn::modulate`]: writes `dx`, adds into `dmodulation`.
    #[allow(clippy::too_many_arguments)]
    pub fn modulate_backward(
        &self,
        recorder: &mut Recorder<'_>,
        x: &wgpu::Buffer,
        modulation: &wgpu::Buffer,
        shift: Chunk,
        scale: Chunk,
        dy: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        dmodulation: &wgpu::Buffer,
    ) {
        self.check(&[x, dy, dx], &[modulation, dmodulation], shift, scale);
        launch_1d(
            recorder,
            "adaln",
            SOURCE,
            "modulate_backward",
            &[R, R, R, W, W],
            &self.params(shift, scale),
            &[x, modulation, dy, dx, dmodulation],
            self.batch * self.width,
        );
    }

    /// `x += gate · y`.
    pub fn gated_residual(
        &self,
        recorder: &mut Recorder<'_>,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        modulation: &wgpu::Buffer,
        gate: Chunk,
    ) {
        let context = recorder.context();
        let (unused_read, unused_write) = (context.unused_read(), context.unused_write());
        self.check(&[x, y], &[modulation], gate, gate);
        launch_1d(
            recorder,
            "adaln",
            SOURCE,
            "gated_residual",
            &[R, R, R, W, W],
            &self.params(gate, gate),
            &[y, modulation, unused_read, x, unused_write],
            self.len(),
        );
    }

    /// Backward of [`AdaLn::gated_residual`]: writes `dy = gate · dx`, adds `Σ_t dx·y` into the
    /// gate's chunk of `dmodulation`.
    #[allow(clippy::too_many_arguments)]
    pub fn gated_residual_backward(
        &self,
        recorder: &mut Recorder<'_>,
        y: &wgpu::Buffer,
        modulation: &wgpu::Buffer,
        gate: Chunk,
        dx: &wgpu::Buffer,
        dy: &wgpu::Buffer,
        dmodulation: &wgpu::Buffer,
    ) {
        self.check(&[y, dx, dy], &[modulation, dmodulation], gate, gate);
        launch_1d(
            recorder,
            "adaln",
            SOURCE,
            "gated_residual_backward",
            &[R, R, R, W, W],
            &self.params(gate, gate),
            &[y, modulation, dx, dy, dmodulation],
            self.batch * self.width,
        );
    }
}
