//! Text-token pooling and the timestep embedding (see `embed.wgsl`).

use super::{R, W, launch_1d, word};
use crate::context::Recorder;
pub use crate::cpu::TextPooling;

const SOURCE: &str = include_str!("embed.wgsl");

/// Shapes of the text embedding: `ids` is `[batch, max_tokens]` (u32, 0 = padding), the table
/// `[vocabulary, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextEmbedding {
    /// Samples.
    pub batch: usize,
    /// Token slots per sample.
    pub max_tokens: usize,
    /// Embedding width.
    pub width: usize,
    /// Rows of the table.
    pub vocabulary: usize,
    /// Mean or sum of the real tokens' embeddings.
    pub pooling: TextPooling,
}

impl TextEmbedding {
    fn check(&self, ids: &wgpu::Buffer, table: &wgpu::Buffer, per_sample: &wgpu::Buffer, len: usize) {
        super::require(ids, self.batch * self.max_tokens, "token ids");
        super::require(table, self.vocabulary * self.width, "embedding table");
        super::require(per_sample, len, "pooled embeddings");
    }

    fn params(&self) -> [u32; 8] {
        let pooling = match self.pooling {
            TextPooling::Mean => 0,
            TextPooling::Sum => 1,
        };
        [word(self.batch), word(self.max_tokens), word(self.width), word(self.vocabulary), pooling, 0, 0, 0]
    }

    /// `pooled[b] = mean (or sum) of table[id] over the real ids of sample b` (zeros if none).
    pub fn pool(&self, recorder: &mut Recorder<'_>, ids: &wgpu::Buffer, table: &wgpu::Buffer, pooled: &wgpu::Buffer) {
        self.check(ids, table, pooled, self.batch * self.width);
        launch_1d(
            recorder,
            "embed",
            SOURCE,
            "embed_pool",
            &[R, R, W],
            &self.params(),
            &[ids, table, pooled],
            self.batch * self.width,
        );
    }

    /// Backward of [`TextEmbedding::pool`]: adds into `dtable`.
    pub fn pool_backward(
        &self,
        recorder: &mut Recorder<'_>,
        ids: &wgpu::Buffer,
        dpooled: &wgpu::Buffer,
        dtable: &wgpu::Buffer,
    ) {
        self.check(ids, dtable, dpooled, self.batch * self.width);
        launch_1d(
            recorder,
            "embed",
            SOURCE,
            "embed_pool_backward",
            &[R, R, W],
            &self.params(),
            &[ids, dpooled, dtable],
            self.vocabulary * self.width,
        );
    }
}

/// Sinusoidal embedding of `batch` timesteps (f32) into `[batch, width]` (width even).
pub fn timestep_embedding(
    recorder: &mut Recorder<'_>,
    timesteps: &wgpu::Buffer,
    out: &wgpu::Buffer,
    batch: usize,
    width: usize,
) {
    super::require(timesteps, batch, "timesteps");
    super::require(out, batch * width, "timestep embedding");
    let unused = recorder.context().unused_read();
    launch_1d(
        recorder,
        "embed",
        SOURCE,
        "timestep",
        &[R, R, W],
        &[word(batch), 0, word(width), 0],
        &[timesteps, unused, out],
        batch * (width / 2),
    );
}
