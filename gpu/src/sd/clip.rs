//! CLIP's text transformer (transformers' `CLIPTextModel`), as Stable Diffusion uses it: token
//! and position embeddings, pre-norm layers with causal self-attention and a quick-GELU (SD 1.x)
//! or GELU (SD 2.x) MLP, and the final layer norm; the pipeline conditions on the last hidden
//! states.
//!
//! The token embedding table (49,408 × 768 values in SD 1.x, ~150 MB in f32, larger than many
//! adapters' storage-binding limit) stays on the host: the rows a prompt needs are gathered there
//! and uploaded with the position embeddings added.

use crate::device::{ImageOps, Unary};

use super::config::ClipConfig;
use super::nn::{Attention, Linear, Norm, add, unary};
use super::weights::{ComponentWeights, HostTensor, WeightsError};

struct Layer<D: ImageOps> {
    norm1: Norm<D>,
    attention: Attention<D>,
    norm2: Norm<D>,
    fc1: Linear<D>,
    fc2: Linear<D>,
}

/// The text encoder on a device.
pub struct ClipTextModel<D: ImageOps> {
    config: ClipConfig,
    token_embedding: HostTensor,
    position_embedding: HostTensor,
    layers: Vec<Layer<D>>,
    final_norm: Norm<D>,
}

impl<D: ImageOps> ClipTextModel<D> {
    /// Builds the model from `weights` (transformers' names, with or without the `text_model.`
    /// prefix older exports carry).
    pub fn load(device: &D, config: &ClipConfig, mut weights: ComponentWeights) -> Result<Self, WeightsError> {
        weights.rename(|name| name.strip_prefix("text_model.").map(str::to_string));
        let c = config;
        let d = c.hidden_size;
        let token_embedding = weights.take("embeddings.token_embedding.weight", &[c.vocab_size, d])?;
        let position_embedding = weights.take("embeddings.position_embedding.weight", &[c.max_positions, d])?;
        let layers = (0..c.layers)
            .map(|i| {
                let p = |n: &str| format!("encoder.layers.{i}.{n}");
                Ok(Layer {
                    norm1: Norm::load(device, &mut weights, &p("layer_norm1"), d)?,
                    attention: Attention::load(
                        device,
                        &mut weights,
                        &p("self_attn"),
                        ["q_proj", "k_proj", "v_proj", "out_proj"],
                        d,
                        d,
                        c.heads,
                        d / c.heads,
                    )?,
                    norm2: Norm::load(device, &mut weights, &p("layer_norm2"), d)?,
                    fc1: Linear::load(device, &mut weights, &p("mlp.fc1"), d, c.intermediate_size)?,
                    fc2: Linear::load(device, &mut weights, &p("mlp.fc2"), c.intermediate_size, d)?,
                })
            })
            .collect::<Result<Vec<_>, WeightsError>>()?;
        let final_norm = Norm::load(device, &mut weights, "final_layer_norm", d)?;
        Ok(ClipTextModel { config: config.clone(), token_embedding, position_embedding, layers, final_norm })
    }

    /// The config.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// The last hidden states (after the final layer norm) of `ids` (`batch × length` token
    /// ids, each sequence padded to the same length): `batch × length × hidden`.
    pub fn forward(&self, device: &D, ids: &[u32], length: usize) -> Result<D::Buffer, String> {
        let d = self.config.hidden_size;
        if length == 0 || !ids.len().is_multiple_of(length) {
            return Err(format!("{} token ids do not make sequences of {length}", ids.len()));
        }
        if length > self.config.max_positions {
            return Err(format!("{length} tokens exceed the text encoder's {} positions", self.config.max_positions));
        }
        let batch = ids.len() / length;
        let mut embedded = vec![0f32; ids.len() * d];
        for (row, (&id, out)) in ids.iter().zip(embedded.chunks_mut(d)).enumerate() {
            let id = id as usize;
            if id >= self.config.vocab_size {
                return Err(format!("token id {id} is outside the vocabulary of {}", self.config.vocab_size));
            }
            let token = &self.token_embedding.data[id * d..][..d];
            let position = &self.position_embedding.data[(row % length) * d..][..d];
            for ((o, &t), &p) in out.iter_mut().zip(token).zip(position) {
                *o = t + p;
            }
        }
        let rows = batch * length;
        let eps = self.config.layer_norm_eps;
        let activation = if self.config.quick_gelu { Unary::QuickGelu } else { Unary::GeluErf };
        let mut x = device.upload(&embedded);
        for layer in &self.layers {
            let h = layer.norm1.layer(device, &x, rows, eps);
            let h = layer.attention.forward(device, &h, batch, length, None, true);
            x = add(device, &x, &h, rows * d);
            let h = layer.norm2.layer(device, &x, rows, eps);
            let h = layer.fc1.forward(device, &h, rows);
            let h = unary(device, activation, &h, rows * self.config.intermediate_size);
            let h = layer.fc2.forward(device, &h, rows);
            x = add(device, &x, &h, rows * d);
        }
        Ok(self.final_norm.layer(device, &x, rows, eps))
    }
}
