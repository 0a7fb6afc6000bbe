//! The backward pass: gradients of the trained parameters (full or LoRA) from the loss gradient
//! w.r.t. the predicted noise, in the reverse order of the forward pass.

use super::config::LoraTarget;
use super::forward::Cache;
use super::train::TrainMode;
use super::{Dit, Linear};
use crate::cpu::Chunk;
use crate::device::Device;
use crate::kernels::adaln::AdaLn;
use crate::kernels::elementwise::Elementwise;
use crate::kernels::matmul::{Activation, Matmul};

impl<D: Device> Dit<D> {
    /// Backward of a linear layer without activation: writes `dx` (if given) and the gradients
    /// of the trained parameters. `ones` holds at least `rows` ones.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        device: &D,
        layer: Linear,
        rows: usize,
        x: &D::Buffer,
        dy: &D::Buffer,
        dx: Option<&D::Buffer>,
        lora_inner: Option<&D::Buffer>,
        ones: &D::Buffer,
    ) {
        if let Some(dx) = dx {
            device.matmul(
                &Matmul::new(rows, layer.inp, layer.out, false, false),
                dy,
                self.value(layer.weight),
                None,
                dx,
            );
        }
        if let Some(dw) = self.grad(layer.weight) {
            device.matmul(&Matmul::new(layer.out, layer.inp, rows, true, false), dy, x, None, dw);
        }
        if let Some(db) = self.grad(layer.bias) {
            device.matmul(&Matmul::new(1, layer.out, rows, false, false), ones, dy, None, db);
        }
        if let (Some((a, b)), Some(config), Some(inner)) = (layer.lora, &self.lora, lora_inner) {
            let (rank, scale) = (config.rank, config.scale());
            let g = device.zeros(rows * rank);
            device.matmul(&Matmul::new(rows, rank, layer.out, false, false), dy, self.value(b), None, &g);
            if let Some(db) = self.grad(b) {
                device.matmul(
                    &Matmul { alpha: scale, ..Matmul::new(layer.out, rank, rows, true, false) },
                    dy,
                    inner,
                    None,
                    db,
                );
            }
            if let Some(da) = self.grad(a) {
                device.matmul(
                    &Matmul { alpha: scale, ..Matmul::new(rank, layer.inp, rows, true, false) },
                    &g,
                    x,
                    None,
                    da,
                );
            }
            if let Some(dx) = dx {
                let spec =
                    Matmul { alpha: scale, accumulate: true, ..Matmul::new(rows, layer.inp, rank, false, false) };
                device.matmul(&spec, &g, self.value(a), None, dx);
            }
        }
    }

    /// Gradients of the trained parameters from `depsilon`, the loss gradient w.r.t. the output.
    pub(super) fn backward(&self, device: &D, cache: &Cache<D>, depsilon: &D::Buffer, mode: TrainMode) {
        let config = &self.config;
        let batch = cache.batch;
        let (t, d, h) = (config.tokens(), config.width, config.hidden());
        let rows = batch * t;
        let geometry = config.geometry(batch);
        let ones = device.upload(&vec![1.0; rows.max(batch)]);
        let full = mode == TrainMode::Full;
        // Final layer.
        let dout = device.output(rows * config.patch_len());
        device.unpatchify_backward(geometry, depsilon, &dout);
        let dmodulated = device.output(rows * d);
        self.linear_backward(
            device,
            self.final_linear,
            rows,
            &cache.final_modulated,
            &dout,
            Some(&dmodulated),
            None,
            &ones,
        );
        let shape = AdaLn { batch, tokens: t, width: d };
        let final_chunk = |i: usize| Chunk { offset: i * d, stride: 2 * d };
        let dnormalized = device.output(rows * d);
        let dfinal_mod = device.zeros(batch * 2 * d);
        device.modulate_backward(
            shape,
            &cache.final_normalized,
            &cache.final_mod,
            final_chunk(0),
            final_chunk(1),
            &dmodulated,
            &dnormalized,
            &dfinal_mod,
        );
        let dh = device.output(rows * d);
        device.layernorm_backward(&cache.final_normalized, &cache.final_rstd, &dnormalized, &dh, rows, d);
        let dsilu_c = device.zeros(batch * d);
        self.linear_backward(device, self.final_ada, batch, &cache.silu_c, &dfinal_mod, Some(&dsilu_c), None, &ones);

        let specs = self.attention_specs(batch);
        let chunk = |i: usize| Chunk { offset: i * d, stride: 6 * d };
        let scratch = device.output(rows * d);
        let scores_len = batch * config.heads * t * t;
        for (block, saved) in self.blocks.iter().zip(&cache.blocks).rev() {
            let dmodulation = device.zeros(batch * 6 * d);
            // MLP branch: h += gate · fc2(gelu(fc1(modulate(LN(h))))).
            let dmlp = device.output(rows * d);
            device.gated_residual_backward(
                shape,
                &saved.mlp_out,
                &saved.modulation,
                chunk(5),
                &dh,
                &dmlp,
                &dmodulation,
            );
            let dhidden = device.output(rows * h);
            self.linear_backward(
                device,
                block.fc2,
                rows,
                &saved.hidden,
                &dmlp,
                Some(&dhidden),
                saved.lora_inner.get(&LoraTarget::Fc2),
                &ones,
            );
            let dpre = device.output(rows * h);
            device.elementwise(Elementwise::GeluBackward, Some(&saved.pre_gelu), Some(&dhidden), None, &dpre, rows * h);
            let dmodulated2 = device.output(rows * d);
            self.linear_backward(
                device,
                block.fc1,
                rows,
                &saved.modulated2,
                &dpre,
                Some(&dmodulated2),
                saved.lora_inner.get(&LoraTarget::Fc1),
                &ones,
            );
            let dnormalized2 = device.output(rows * d);
            device.modulate_backward(
                shape,
                &saved.normalized2,
                &saved.modulation,
                chunk(3),
                chunk(4),
                &dmodulated2,
                &dnormalized2,
                &dmodulation,
            );
            device.layernorm_backward(&saved.normalized2, &saved.rstd2, &dnormalized2, &scratch, rows, d);
            device.elementwise(
                Elementwise::AddBroadcast { period: rows * d },
                Some(&scratch),
                None,
                None,
                &dh,
                rows * d,
            );
            // Attention branch.
            let dprojected = device.output(rows * d);
            device.gated_residual_backward(
                shape,
                &saved.projected,
                &saved.modulation,
                chunk(2),
                &dh,
                &dprojected,
                &dmodulation,
            );
            let dattention = device.output(rows * d);
            self.linear_backward(
                device,
                block.proj,
                rows,
                &saved.attention,
                &dprojected,
                Some(&dattention),
                saved.lora_inner.get(&LoraTarget::Proj),
                &ones,
            );
            let dprobabilities = device.output(scores_len);
            device.matmul(&specs[2], &dattention, &saved.qkv, None, &dprobabilities);
            let dqkv = device.output(rows * 3 * d);
            device.matmul(&specs[3], &saved.probabilities, &dattention, None, &dqkv);
            let dscores = device.output(scores_len);
            device.softmax_backward(&saved.probabilities, &dprobabilities, &dscores, batch * config.heads * t, t, 1.0);
            device.matmul(&specs[4], &dscores, &saved.qkv, None, &dqkv);
            device.matmul(&specs[5], &dscores, &saved.qkv, None, &dqkv);
            let dmodulated1 = device.output(rows * d);
            self.linear_backward(
                device,
                block.qkv,
                rows,
                &saved.modulated1,
                &dqkv,
                Some(&dmodulated1),
                saved.lora_inner.get(&LoraTarget::Qkv),
                &ones,
            );
            let dnormalized1 = device.output(rows * d);
            device.modulate_backward(
                shape,
                &saved.normalized1,
                &saved.modulation,
                chunk(0),
                chunk(1),
                &dmodulated1,
                &dnormalized1,
                &dmodulation,
            );
            device.layernorm_backward(&saved.normalized1, &saved.rstd1, &dnormalized1, &scratch, rows, d);
            device.elementwise(
                Elementwise::AddBroadcast { period: rows * d },
                Some(&scratch),
                None,
                None,
                &dh,
                rows * d,
            );
            // adaLN: modulation = silu(c) W + b; dsilu_c accumulates over blocks.
            if full {
                let dsilu_block = device.zeros(batch * d);
                self.linear_backward(
                    device,
                    block.ada,
                    batch,
                    &cache.silu_c,
                    &dmodulation,
                    Some(&dsilu_block),
                    None,
                    &ones,
                );
                device.elementwise(
                    Elementwise::AddBroadcast { period: batch * d },
                    Some(&dsilu_block),
                    None,
                    None,
                    &dsilu_c,
                    batch * d,
                );
            }
        }
        if !full {
            return;
        }
        // Conditioning: c = t_mlp(freq) + y_mlp(pooled), silu_c = silu(c).
        let dc = device.zeros(batch * d);
        device.elementwise(Elementwise::SiluBackward, Some(&cache.c), Some(&dsilu_c), None, &dc, batch * d);
        let dt_hidden_post = device.zeros(batch * d);
        self.linear_backward(device, self.t_mlp[1], batch, &cache.t_hidden, &dc, Some(&dt_hidden_post), None, &ones);
        let t_pre = self.pre_activation(device, self.t_mlp[0], batch, &cache.t_freq);
        let dt_pre = device.zeros(batch * d);
        device.elementwise(Elementwise::SiluBackward, Some(&t_pre), Some(&dt_hidden_post), None, &dt_pre, batch * d);
        self.linear_backward(device, self.t_mlp[0], batch, &cache.t_freq, &dt_pre, None, None, &ones);
        let dy_hidden_post = device.zeros(batch * d);
        self.linear_backward(device, self.y_mlp[1], batch, &cache.y_hidden, &dc, Some(&dy_hidden_post), None, &ones);
        let y_pre = self.pre_activation(device, self.y_mlp[0], batch, &cache.pooled);
        let dy_pre = device.zeros(batch * d);
        device.elementwise(Elementwise::SiluBackward, Some(&y_pre), Some(&dy_hidden_post), None, &dy_pre, batch * d);
        let dpooled = device.zeros(batch * d);
        self.linear_backward(device, self.y_mlp[0], batch, &cache.pooled, &dy_pre, Some(&dpooled), None, &ones);
        if let Some(dtable) = self.grad(self.embedding) {
            let shape = config.text_embedding(batch);
            device.clear(dtable, config.vocabulary * d);
            device.embed_pool_backward(shape, &cache.ids, &dpooled, dtable);
        }
        if let Some(dnull) = self.grad(self.null_text) {
            device.matmul(&Matmul::new(1, d, batch, false, false), &cache.null_mask, &dpooled, None, dnull);
        }
        // Patch embedding (position embedding is fixed).
        self.linear_backward(device, self.x_embedder, rows, &cache.tokens, &dh, None, None, &ones);
    }

    fn pre_activation(&self, device: &D, layer: Linear, rows: usize, x: &D::Buffer) -> D::Buffer {
        let out = device.zeros(rows * layer.out);
        self.linear_forward(device, layer, rows, x, &out, Activation::None, None);
        out
    }
}
