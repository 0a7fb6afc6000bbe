//! The forward pass: patch, timestep and text embeddings, the adaLN-Zero blocks and the final
//! layer, keeping the activations the backward pass needs when asked to.

use std::collections::BTreeMap;

use super::config::{DitConfig, LoraTarget};
use super::train::TrainBatch;
use super::{Dit, Linear};
use crate::context::GpuError;
use crate::cpu::Chunk;
use crate::device::Device;
use crate::kernels::adaln::AdaLn;
use crate::kernels::elementwise::Elementwise;
use crate::kernels::matmul::{Activation, Layout, Matmul};

/// The fixed 2-D sin-cos position embedding of DiT, `[tokens, width]`: for token (row i,
/// column j) the first half embeds j and the second half i, each as
/// `[sin(pos·ω_k), cos(pos·ω_k)]`, `ω_k = 10000^(−k/(D/4))`.
pub fn position_embedding(config: &DitConfig) -> Vec<f32> {
    let (grid, d) = (config.image_size / config.patch, config.width);
    let quarter = d / 4;
    let mut out = vec![0.0f32; grid * grid * d];
    for i in 0..grid {
        for j in 0..grid {
            let row = &mut out[(i * grid + j) * d..][..d];
            for (half, pos) in [(0, j), (1, i)] {
                for k in 0..quarter {
                    let omega = 1.0 / 10000f64.powf(k as f64 / quarter as f64);
                    let angle = pos as f64 * omega;
                    row[half * d / 2 + k] = angle.sin() as f32;
                    row[half * d / 2 + quarter + k] = angle.cos() as f32;
                }
            }
        }
    }
    out
}

/// Activations a backward pass needs, for one batch.
pub(super) struct Cache<D: Device> {
    pub(super) batch: usize,
    pub(super) tokens: D::Buffer,
    pub(super) c: D::Buffer,
    pub(super) silu_c: D::Buffer,
    pub(super) null_mask: D::Buffer,
    pub(super) ids: D::Ids,
    pub(super) t_hidden: D::Buffer,
    pub(super) t_freq: D::Buffer,
    pub(super) pooled: D::Buffer,
    pub(super) y_hidden: D::Buffer,
    pub(super) blocks: Vec<BlockCache<D>>,
    pub(super) final_mod: D::Buffer,
    pub(super) final_normalized: D::Buffer,
    pub(super) final_rstd: D::Buffer,
    pub(super) final_modulated: D::Buffer,
}

pub(super) struct BlockCache<D: Device> {
    pub(super) modulation: D::Buffer,
    pub(super) normalized1: D::Buffer,
    pub(super) rstd1: D::Buffer,
    pub(super) modulated1: D::Buffer,
    pub(super) qkv: D::Buffer,
    pub(super) probabilities: D::Buffer,
    pub(super) attention: D::Buffer,
    pub(super) projected: D::Buffer,
    pub(super) normalized2: D::Buffer,
    pub(super) rstd2: D::Buffer,
    pub(super) modulated2: D::Buffer,
    pub(super) pre_gelu: D::Buffer,
    pub(super) hidden: D::Buffer,
    pub(super) mlp_out: D::Buffer,
    pub(super) lora_inner: BTreeMap<LoraTarget, D::Buffer>,
}

impl<D: Device> Dit<D> {
    /// y = x Wᵀ + b (+ LoRA), then `activation`; `lora_inner` receives x Aᵀ when there is LoRA.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn linear_forward(
        &self,
        device: &D,
        layer: Linear,
        rows: usize,
        x: &D::Buffer,
        y: &D::Buffer,
        activation: Activation,
        lora_inner: Option<&D::Buffer>,
    ) {
        let base = Matmul::new(rows, layer.out, layer.inp, false, true);
        match (layer.lora, &self.lora) {
            (Some((a, b)), Some(config)) => {
                device.matmul(
                    &base.with_epilogue(true, Activation::None),
                    x,
                    self.value(layer.weight),
                    Some(self.value(layer.bias)),
                    y,
                );
                let scratch;
                let inner = match lora_inner {
                    Some(buffer) => buffer,
                    None => {
                        scratch = device.zeros(rows * config.rank);
                        &scratch
                    }
                };
                device.matmul(&Matmul::new(rows, config.rank, layer.inp, false, true), x, self.value(a), None, inner);
                let mut up = Matmul::new(rows, layer.out, config.rank, false, true);
                up.alpha = config.scale();
                up.accumulate = true;
                device.matmul(&up, inner, self.value(b), None, y);
                match activation {
                    Activation::None => {}
                    Activation::Gelu | Activation::Silu => {
                        let copy = device.zeros(rows * layer.out);
                        device.copy(y, &copy, rows * layer.out);
                        let op = if activation == Activation::Gelu { Elementwise::Gelu } else { Elementwise::Silu };
                        device.elementwise(op, Some(&copy), None, None, y, rows * layer.out);
                    }
                }
            }
            _ => device.matmul(
                &base.with_epilogue(true, activation),
                x,
                self.value(layer.weight),
                Some(self.value(layer.bias)),
                y,
            ),
        }
    }

    pub(super) fn attention_specs(&self, batch: usize) -> [Matmul; 6] {
        let (t, d, heads, dh) = (self.config.tokens(), self.config.width, self.config.heads, self.config.head_dim());
        let packed = |offset| Layout::row_major(3 * d).at(offset).batched(t * 3 * d, dh);
        let packed_t = |offset| Layout::transposed(3 * d).at(offset).batched(t * 3 * d, dh);
        let scores = Layout::row_major(t).batched(heads * t * t, t * t);
        let scores_t = Layout::transposed(t).batched(heads * t * t, t * t);
        let heads_out = Layout::row_major(d).batched(t * d, dh);
        let alpha = 1.0 / (dh as f32).sqrt();
        let base = Matmul {
            m: t,
            n: t,
            k: dh,
            batch_outer: batch,
            batch_inner: heads,
            a: packed(0),
            b: packed_t(d),
            c: scores,
            alpha,
            bias: None,
            activation: Activation::None,
            accumulate: false,
        };
        [
            // S = α Q Kᵀ
            base,
            // O = P V
            Matmul { n: dh, k: t, a: scores, b: packed(2 * d), c: heads_out, alpha: 1.0, ..base },
            // dP = dO Vᵀ
            Matmul { n: t, k: dh, a: heads_out, b: packed_t(2 * d), c: scores, alpha: 1.0, ..base },
            // dV = Pᵀ dO
            Matmul { n: dh, k: t, a: scores_t, b: heads_out, c: packed(2 * d), alpha: 1.0, ..base },
            // dQ = α dS K
            Matmul { n: dh, k: t, a: scores, b: packed(d), c: packed(0), ..base },
            // dK = α dSᵀ Q
            Matmul { n: dh, k: t, a: scores_t, b: packed(0), c: packed(d), ..base },
        ]
    }

    /// The conditioning vector c = t_embed(t) + y_embed(ids) for `batch` samples; fills the
    /// cache's conditioning fields.
    pub(super) fn forward_internal(
        &self,
        device: &D,
        x: &D::Buffer,
        timesteps: &[f32],
        ids: &[u32],
        keep: bool,
    ) -> (D::Buffer, Option<Cache<D>>) {
        let config = &self.config;
        let batch = timesteps.len();
        let (t, d, h) = (config.tokens(), config.width, config.hidden());
        let rows = batch * t;
        let geometry = config.geometry(batch);
        // Patch embedding + position embedding.
        let patches = device.zeros(rows * config.patch_len());
        device.patchify(geometry, x, &patches);
        let tokens = device.zeros(rows * d);
        self.linear_forward(device, self.x_embedder, rows, &patches, &tokens, Activation::None, None);
        device.elementwise(
            Elementwise::AddBroadcast { period: t * d },
            Some(&self.pos_embed),
            None,
            None,
            &tokens,
            rows * d,
        );
        // Timestep embedding → MLP.
        let steps = device.upload(timesteps);
        let t_freq = device.zeros(batch * config.frequency_dim);
        device.timestep_embedding(&steps, &t_freq, batch, config.frequency_dim);
        let t_hidden = device.zeros(batch * d);
        self.linear_forward(device, self.t_mlp[0], batch, &t_freq, &t_hidden, Activation::Silu, None);
        let c = device.zeros(batch * d);
        self.linear_forward(device, self.t_mlp[1], batch, &t_hidden, &c, Activation::None, None);
        // Text: mean (or sum) of token embeddings, or the learned null text for an empty prompt → MLP.
        let shape = config.text_embedding(batch);
        let device_ids = device.upload_ids(ids);
        let pooled = device.zeros(batch * d);
        device.embed_pool(shape, &device_ids, self.value(self.embedding), &pooled);
        let mask: Vec<f32> =
            ids.chunks(config.max_tokens).map(|s| if s.iter().all(|id| *id == 0) { 1.0 } else { 0.0 }).collect();
        let null_mask = device.upload(&mask);
        device.elementwise(
            Elementwise::MaskedRowAdd { period: d },
            Some(&null_mask),
            Some(self.value(self.null_text)),
            None,
            &pooled,
            batch * d,
        );
        let y_hidden = device.zeros(batch * d);
        self.linear_forward(device, self.y_mlp[0], batch, &pooled, &y_hidden, Activation::Silu, None);
        let y_embed = device.zeros(batch * d);
        self.linear_forward(device, self.y_mlp[1], batch, &y_hidden, &y_embed, Activation::None, None);
        device.elementwise(Elementwise::AddBroadcast { period: batch * d }, Some(&y_embed), None, None, &c, batch * d);
        let silu_c = device.zeros(batch * d);
        device.elementwise(Elementwise::Silu, Some(&c), None, None, &silu_c, batch * d);

        let specs = self.attention_specs(batch);
        let shape = AdaLn { batch, tokens: t, width: d };
        let chunk = |i: usize| Chunk { offset: i * d, stride: 6 * d };
        let mut caches = Vec::new();
        let hidden_state = tokens.clone();
        for block in &self.blocks {
            let modulation = device.zeros(batch * 6 * d);
            self.linear_forward(device, block.ada, batch, &silu_c, &modulation, Activation::None, None);
            let (normalized1, rstd1, modulated1) =
                (device.output(rows * d), device.output(rows), device.output(rows * d));
            device.layernorm(&hidden_state, &normalized1, &rstd1, rows, d);
            device.modulate(shape, &normalized1, &modulation, chunk(0), chunk(1), &modulated1);
            let mut lora_inner = BTreeMap::new();
            let mut inner = |target: LoraTarget, layer: Linear| {
                layer.lora.zip(self.lora.as_ref()).map(|_| {
                    let buffer = device.zeros(rows * self.lora.as_ref().map_or(0, |c| c.rank));
                    lora_inner.insert(target, buffer.clone());
                    buffer
                })
            };
            let qkv = device.output(rows * 3 * d);
            let qkv_inner = inner(LoraTarget::Qkv, block.qkv);
            self.linear_forward(device, block.qkv, rows, &modulated1, &qkv, Activation::None, qkv_inner.as_ref());
            let scores = device.output(batch * config.heads * t * t);
            device.matmul(&specs[0], &qkv, &qkv, None, &scores);
            let probabilities = device.output(batch * config.heads * t * t);
            device.softmax(&scores, &probabilities, batch * config.heads * t, t, 1.0);
            let attention = device.output(rows * d);
            device.matmul(&specs[1], &probabilities, &qkv, None, &attention);
            let projected = device.output(rows * d);
            let proj_inner = inner(LoraTarget::Proj, block.proj);
            self.linear_forward(
                device,
                block.proj,
                rows,
                &attention,
                &projected,
                Activation::None,
                proj_inner.as_ref(),
            );
            device.gated_residual(shape, &hidden_state, &projected, &modulation, chunk(2));

            let (normalized2, rstd2, modulated2) =
                (device.output(rows * d), device.output(rows), device.output(rows * d));
            device.layernorm(&hidden_state, &normalized2, &rstd2, rows, d);
            device.modulate(shape, &normalized2, &modulation, chunk(3), chunk(4), &modulated2);
            let pre_gelu = device.output(rows * h);
            let hidden = device.output(rows * h);
            let fc1_inner = inner(LoraTarget::Fc1, block.fc1);
            if keep {
                self.linear_forward(
                    device,
                    block.fc1,
                    rows,
                    &modulated2,
                    &pre_gelu,
                    Activation::None,
                    fc1_inner.as_ref(),
                );
                device.elementwise(Elementwise::Gelu, Some(&pre_gelu), None, None, &hidden, rows * h);
            } else {
                self.linear_forward(
                    device,
                    block.fc1,
                    rows,
                    &modulated2,
                    &hidden,
                    Activation::Gelu,
                    fc1_inner.as_ref(),
                );
            }
            let mlp_out = device.output(rows * d);
            let fc2_inner = inner(LoraTarget::Fc2, block.fc2);
            self.linear_forward(device, block.fc2, rows, &hidden, &mlp_out, Activation::None, fc2_inner.as_ref());
            device.gated_residual(shape, &hidden_state, &mlp_out, &modulation, chunk(5));
            if keep {
                caches.push(BlockCache {
                    modulation,
                    normalized1,
                    rstd1,
                    modulated1,
                    qkv,
                    probabilities,
                    attention,
                    projected,
                    normalized2,
                    rstd2,
                    modulated2,
                    pre_gelu,
                    hidden,
                    mlp_out,
                    lora_inner,
                });
            }
        }
        let final_mod = device.zeros(batch * 2 * d);
        self.linear_forward(device, self.final_ada, batch, &silu_c, &final_mod, Activation::None, None);
        let (final_normalized, final_rstd, final_modulated) =
            (device.output(rows * d), device.output(rows), device.output(rows * d));
        device.layernorm(&hidden_state, &final_normalized, &final_rstd, rows, d);
        let final_chunk = |i: usize| Chunk { offset: i * d, stride: 2 * d };
        device.modulate(shape, &final_normalized, &final_mod, final_chunk(0), final_chunk(1), &final_modulated);
        let out_tokens = device.output(rows * config.patch_len());
        self.linear_forward(device, self.final_linear, rows, &final_modulated, &out_tokens, Activation::None, None);
        let epsilon = device.output(batch * config.image_len());
        device.unpatchify(geometry, &out_tokens, &epsilon);
        let cache = keep.then(|| Cache {
            batch,
            tokens: patches,
            c,
            silu_c,
            null_mask,
            ids: device_ids,
            t_hidden,
            t_freq,
            pooled,
            y_hidden,
            blocks: caches,
            final_mod,
            final_normalized,
            final_rstd,
            final_modulated,
        });
        (epsilon, cache)
    }

    /// ε prediction for images `x` (`[B, C, H, W]`) at `timesteps` with prompts `ids`
    /// (`[B, max_tokens]`).
    pub fn forward(&self, device: &D, x: &D::Buffer, timesteps: &[f32], ids: &[u32]) -> Result<D::Buffer, GpuError> {
        let batch = TrainBatch { images: vec![0.0; timesteps.len() * self.config.image_len()], ids: ids.to_vec() };
        if batch.samples(&self.config)? != timesteps.len() {
            return Err(GpuError::Shape(format!(
                "{} timesteps for {} prompts",
                timesteps.len(),
                ids.len() / self.config.max_tokens
            )));
        }
        Ok(self.forward_internal(device, x, timesteps, ids, false).0)
    }
}
