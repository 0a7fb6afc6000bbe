//! The shape of a DiT and of a LoRA adapter, and the fixed DDPM noise schedule.

use crate::cpu::Patches;
pub use crate::cpu::TextPooling;

/// The shape of a DiT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DitConfig {
    /// Image side in pixels.
    pub image_size: usize,
    /// Image channels.
    pub channels: usize,
    /// Patch side.
    pub patch: usize,
    /// Hidden width D.
    pub width: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads (D must be a multiple).
    pub heads: usize,
    /// MLP hidden = D · mlp_ratio.
    pub mlp_ratio: usize,
    /// Token vocabulary (id 0 is padding).
    pub vocabulary: usize,
    /// Token slots per prompt.
    pub max_tokens: usize,
    /// Width of the sinusoidal timestep embedding.
    pub frequency_dim: usize,
    /// How the prompt's token embeddings are pooled.
    pub text_pooling: TextPooling,
}

impl DitConfig {
    /// A tiny configuration for tests.
    pub fn tiny() -> Self {
        DitConfig {
            image_size: 8,
            channels: 3,
            patch: 2,
            width: 16,
            depth: 2,
            heads: 2,
            mlp_ratio: 2,
            vocabulary: 12,
            max_tokens: 4,
            frequency_dim: 16,
            text_pooling: TextPooling::Mean,
        }
    }

    /// A small configuration (32×32 RGB, patch 4, width 128, depth 4), the size of the model the
    /// CPU backend can train on a laptop.
    pub fn small() -> Self {
        DitConfig {
            image_size: 32,
            channels: 3,
            patch: 4,
            width: 128,
            depth: 4,
            heads: 4,
            mlp_ratio: 4,
            vocabulary: 512,
            max_tokens: 16,
            frequency_dim: 256,
            text_pooling: TextPooling::Mean,
        }
    }

    /// The DiT-S-sized configuration used by the benchmarks (32×32 RGB, patch 2).
    pub fn dit_s() -> Self {
        DitConfig {
            image_size: 32,
            channels: 3,
            patch: 2,
            width: 384,
            depth: 12,
            heads: 6,
            mlp_ratio: 4,
            vocabulary: 512,
            max_tokens: 16,
            frequency_dim: 256,
            text_pooling: TextPooling::Mean,
        }
    }

    /// Tokens per image.
    pub fn tokens(&self) -> usize {
        (self.image_size / self.patch).pow(2)
    }
    /// Values per patch.
    pub fn patch_len(&self) -> usize {
        self.channels * self.patch * self.patch
    }
    /// Values per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.image_size * self.image_size
    }
    /// MLP hidden width.
    pub fn hidden(&self) -> usize {
        self.width * self.mlp_ratio
    }
    /// The text embedding's shapes for `batch` prompts.
    pub fn text_embedding(&self, batch: usize) -> crate::kernels::embed::TextEmbedding {
        crate::kernels::embed::TextEmbedding {
            batch,
            max_tokens: self.max_tokens,
            width: self.width,
            vocabulary: self.vocabulary,
            pooling: self.text_pooling,
        }
    }
    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.width / self.heads
    }
    pub(super) fn geometry(&self, batch: usize) -> Patches {
        Patches { batch, channels: self.channels, size: self.image_size, patch: self.patch }
    }

    /// Every parameter's name and shape, in a fixed order.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, f, h, p) = (self.width, self.frequency_dim, self.hidden(), self.patch);
        let mut shapes = vec![
            ("x_embedder.proj.weight".to_string(), vec![d, self.channels, p, p]),
            ("x_embedder.proj.bias".to_string(), vec![d]),
            ("t_embedder.mlp.0.weight".to_string(), vec![d, f]),
            ("t_embedder.mlp.0.bias".to_string(), vec![d]),
            ("t_embedder.mlp.2.weight".to_string(), vec![d, d]),
            ("t_embedder.mlp.2.bias".to_string(), vec![d]),
            ("y_embedder.embedding.weight".to_string(), vec![self.vocabulary, d]),
            ("y_embedder.null_text".to_string(), vec![d]),
            ("y_embedder.mlp.0.weight".to_string(), vec![d, d]),
            ("y_embedder.mlp.0.bias".to_string(), vec![d]),
            ("y_embedder.mlp.2.weight".to_string(), vec![d, d]),
            ("y_embedder.mlp.2.bias".to_string(), vec![d]),
        ];
        for block in 0..self.depth {
            let prefix = format!("blocks.{block}");
            for (name, out, inp) in [
                ("attn.qkv", 3 * d, d),
                ("attn.proj", d, d),
                ("mlp.fc1", h, d),
                ("mlp.fc2", d, h),
                ("adaLN_modulation.1", 6 * d, d),
            ] {
                shapes.push((format!("{prefix}.{name}.weight"), vec![out, inp]));
                shapes.push((format!("{prefix}.{name}.bias"), vec![out]));
            }
        }
        shapes.push(("final_layer.adaLN_modulation.1.weight".to_string(), vec![2 * d, d]));
        shapes.push(("final_layer.adaLN_modulation.1.bias".to_string(), vec![2 * d]));
        shapes.push(("final_layer.linear.weight".to_string(), vec![self.patch_len(), d]));
        shapes.push(("final_layer.linear.bias".to_string(), vec![self.patch_len()]));
        shapes
    }
}

/// Where LoRA adapters go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoraTarget {
    /// `attn.qkv`
    Qkv,
    /// `attn.proj`
    Proj,
    /// `mlp.fc1`
    Fc1,
    /// `mlp.fc2`
    Fc2,
}

impl LoraTarget {
    /// Every module an adapter can target, in block order.
    pub const ALL: [LoraTarget; 4] = [LoraTarget::Qkv, LoraTarget::Proj, LoraTarget::Fc1, LoraTarget::Fc2];

    /// The module name inside a block.
    pub fn module(self) -> &'static str {
        match self {
            LoraTarget::Qkv => "attn.qkv",
            LoraTarget::Proj => "attn.proj",
            LoraTarget::Fc1 => "mlp.fc1",
            LoraTarget::Fc2 => "mlp.fc2",
        }
    }
}

/// A LoRA configuration: `W x + (alpha / rank) · B A x`, B = 0 at init.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Rank r.
    pub rank: usize,
    /// Alpha.
    pub alpha: f32,
    /// Adapted modules.
    pub targets: Vec<LoraTarget>,
}

impl LoraConfig {
    /// alpha / rank.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }
}

/// The DDPM noise schedule: linear β from 1e-4 to 0.02 over 1000 steps; ᾱ_t = Π (1 − β).
pub fn alpha_bars() -> Vec<f64> {
    let steps = 1000;
    let mut product = 1.0;
    (0..steps)
        .map(|t| {
            let beta = 1e-4 + (0.02 - 1e-4) * t as f64 / (steps - 1) as f64;
            product *= 1.0 - beta;
            product
        })
        .collect()
}
