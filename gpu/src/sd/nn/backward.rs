//! The backward pass of the layers in [`super`], for LoRA training: gradients flow to the inputs
//! of the frozen layers and into the [`LoraParams`] of the adapted linear layers (accumulated, so
//! that micro-batches add up). Scores of the attention are recomputed chunk by chunk, never kept.

use crate::device::ImageBackward;
use crate::kernels::matmul::{Layout, Matmul};

use super::{
    ATTENTION_SCORE_BUDGET, Attention, AttentionCache, Conv, Linear, Norm, Projection, ResnetBlock, ResnetCache,
    SpatialTransformer, SpatialTransformerCache, TransformerBlock, TransformerBlockCache, add,
};

impl<D: ImageBackward> Linear<D> {
    /// Backward of [`Linear::forward_with_inner`] on `rows` rows of input `x` (with its LoRA
    /// `inner` activations): accumulates the LoRA gradients and returns ∂L/∂x when asked.
    pub fn backward(
        &self,
        device: &D,
        x: &D::Buffer,
        inner: Option<&D::Buffer>,
        dy: &D::Buffer,
        rows: usize,
        input_grad: bool,
    ) -> Option<D::Buffer> {
        let dx = input_grad.then(|| {
            let dx = device.output(rows * self.inputs);
            device.matmul(&Matmul::new(rows, self.inputs, self.outputs, false, false), dy, &self.weight, None, &dx);
            dx
        });
        if let (Some(lora), Some(inner)) = (&self.lora, inner) {
            let (r, scale) = (lora.rank, lora.scale);
            // ∂B += scale · dyᵀ (x Aᵀ)
            let db = Matmul { alpha: scale, accumulate: true, ..Matmul::new(self.outputs, r, rows, true, false) };
            device.matmul(&db, dy, inner, None, &lora.grad_b);
            // g = dy B, then ∂A += scale · gᵀ x and ∂x += scale · g A
            let g = device.output(rows * r);
            device.matmul(&Matmul::new(rows, r, self.outputs, false, false), dy, &lora.b, None, &g);
            let da = Matmul { alpha: scale, accumulate: true, ..Matmul::new(r, self.inputs, rows, true, false) };
            device.matmul(&da, &g, x, None, &lora.grad_a);
            if let Some(dx) = &dx {
                let spec = Matmul { alpha: scale, accumulate: true, ..Matmul::new(rows, self.inputs, r, false, false) };
                device.matmul(&spec, &g, &lora.a, None, dx);
            }
        }
        dx
    }
}

impl<D: ImageBackward> Conv<D> {
    /// ∂L/∂x of [`Conv::forward`] on `batch` images of `height × width` (the input's size).
    pub fn input_grad(&self, device: &D, dy: &D::Buffer, batch: usize, height: usize, width: usize) -> D::Buffer {
        let spec = self.spec(batch, height, width);
        let dx = device.output(spec.input_len());
        device.conv2d_input_grad(&spec, dy, &self.weight, &dx);
        dx
    }
}

impl<D: ImageBackward> Norm<D> {
    /// ∂L/∂x of [`Norm::group`].
    #[allow(clippy::too_many_arguments)]
    pub fn group_backward(
        &self,
        device: &D,
        x: &D::Buffer,
        dy: &D::Buffer,
        batch: usize,
        spatial: usize,
        groups: usize,
        eps: f32,
        silu: bool,
    ) -> D::Buffer {
        let spec = crate::device::GroupNorm { batch, channels: self.channels, spatial, groups, eps, silu };
        let dx = device.output(spec.len());
        device.group_norm_backward(&spec, x, &self.gamma, &self.beta, dy, &dx);
        dx
    }

    /// ∂L/∂x of [`Norm::layer`].
    pub fn layer_backward(&self, device: &D, x: &D::Buffer, dy: &D::Buffer, rows: usize, eps: f32) -> D::Buffer {
        let dx = device.output(rows * self.channels);
        device.layer_norm_backward(x, &self.gamma, dy, &dx, rows, self.channels, eps);
        dx
    }
}

impl<D: ImageBackward> ResnetBlock<D> {
    /// ∂L/∂x of [`ResnetBlock::forward_cached`] (the time embedding is frozen: no gradient).
    pub fn backward(&self, device: &D, cache: &ResnetCache<D>, dy: &D::Buffer) -> D::Buffer {
        let (batch, height, width) = (cache.batch, cache.height, cache.width);
        let spatial = height * width;
        let d = self.conv2.input_grad(device, dy, batch, height, width);
        let d = self.norm2.group_backward(device, &cache.middle, &d, batch, spatial, self.groups, self.eps, true);
        let d = self.conv1.input_grad(device, &d, batch, height, width);
        let d = self.norm1.group_backward(device, &cache.x, &d, batch, spatial, self.groups, self.eps, true);
        let len = batch * self.norm1.channels * spatial;
        match &self.shortcut {
            Some(shortcut) => {
                let skip = shortcut.input_grad(device, dy, batch, height, width);
                add(device, &d, &skip, len)
            }
            None => add(device, &d, dy, len),
        }
    }
}

/// Backward of [`super::attention`] (no causal mask): from the projections `q`, `k`, `v` and
/// ∂L/∂out, returns (∂q, ∂k, ∂v). Probabilities are recomputed for the same chunks of queries as
/// the forward pass, so at most [`ATTENTION_SCORE_BUDGET`] scores exist at once.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<D: ImageBackward>(
    device: &D,
    q: &D::Buffer,
    k: &D::Buffer,
    v: &D::Buffer,
    d_out: &D::Buffer,
    batch: usize,
    queries: usize,
    keys: usize,
    heads: usize,
    head_dim: usize,
) -> (D::Buffer, D::Buffer, D::Buffer) {
    let width = heads * head_dim;
    let dq = device.output(batch * queries * width);
    let dk = device.zeros(batch * keys * width);
    let dv = device.zeros(batch * keys * width);
    let chunk = (ATTENTION_SCORE_BUDGET / (heads * keys).max(1)).clamp(1, queries);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let scores = device.output(heads * chunk * keys);
    let probabilities = device.output(heads * chunk * keys);
    let d_probabilities = device.output(heads * chunk * keys);
    let d_scores = device.output(heads * chunk * keys);
    // A head's `rows × head_dim` block of a packed `[rows, heads·head_dim]` matrix, and its
    // transpose (`head_dim × rows`).
    let head_view =
        |offset: usize| Layout { offset, row_stride: width, col_stride: 1, outer_stride: head_dim, inner_stride: 0 };
    let head_view_t =
        |offset: usize| Layout { offset, row_stride: 1, col_stride: width, outer_stride: head_dim, inner_stride: 0 };
    for b in 0..batch {
        let mut start = 0;
        while start < queries {
            let rows = chunk.min(queries - start);
            let per_head = Layout::row_major(keys).batched(rows * keys, 0);
            let per_head_t = Layout { row_stride: 1, col_stride: keys, ..per_head };
            let (q_at, kv_at) = ((b * queries + start) * width, b * keys * width);
            let product = |m, n, k_dim, a, b_layout, c| Matmul {
                batch_outer: heads,
                a,
                b: b_layout,
                c,
                ..Matmul::new(m, n, k_dim, false, false)
            };
            // P = softmax(scale · q kᵀ), as in the forward pass.
            device.matmul(
                &product(rows, keys, head_dim, head_view(q_at), head_view_t(kv_at), per_head),
                q,
                k,
                None,
                &scores,
            );
            device.softmax(&scores, &probabilities, heads * rows, keys, scale);
            // ∂P = ∂out vᵀ; ∂S = softmax′ (with the scale).
            let d_out_view = head_view(q_at);
            device.matmul(
                &product(rows, keys, head_dim, d_out_view, head_view_t(kv_at), per_head),
                d_out,
                v,
                None,
                &d_probabilities,
            );
            device.softmax_backward(&probabilities, &d_probabilities, &d_scores, heads * rows, keys, scale);
            // ∂q = ∂S k; ∂k += ∂Sᵀ q; ∂v += Pᵀ ∂out.
            device.matmul(
                &product(rows, head_dim, keys, per_head, head_view(kv_at), head_view(q_at)),
                &d_scores,
                k,
                None,
                &dq,
            );
            let accumulate = |spec: Matmul| Matmul { accumulate: true, ..spec };
            device.matmul(
                &accumulate(product(keys, head_dim, rows, per_head_t, head_view(q_at), head_view(kv_at))),
                &d_scores,
                q,
                None,
                &dk,
            );
            device.matmul(
                &accumulate(product(keys, head_dim, rows, per_head_t, head_view(q_at), head_view(kv_at))),
                &probabilities,
                d_out,
                None,
                &dv,
            );
            start += rows;
        }
    }
    (dq, dk, dv)
}

impl<D: ImageBackward> Attention<D> {
    /// Backward of [`Attention::forward_cached`]: accumulates the projections' LoRA gradients
    /// and returns ∂L/∂x (the query input; for self-attention also through the keys and values).
    /// The context of cross-attention gets no gradient (the text encoder is frozen).
    pub fn backward(&self, device: &D, cache: &AttentionCache<D>, dy: &D::Buffer) -> D::Buffer {
        assert!(!cache.causal, "the backward pass of causal attention is not implemented");
        let (batch, queries, keys) = (cache.batch, cache.queries, cache.keys);
        let [q_inner, k_inner, v_inner, out_inner] = &cache.inner;
        let d_o = self
            .out
            .backward(device, &cache.o, out_inner.as_ref(), dy, batch * queries, true)
            .expect("asked for the input gradient");
        let (dq, dk, dv) = attention_backward(
            device,
            &cache.q,
            &cache.k,
            &cache.v,
            &d_o,
            batch,
            queries,
            keys,
            self.heads,
            self.head_dim,
        );
        let self_attention = !cache.cross;
        let dx =
            self.q.backward(device, &cache.x, q_inner.as_ref(), &dq, batch * queries, true).expect("input gradient");
        let dk_in = self.k.backward(device, &cache.context, k_inner.as_ref(), &dk, batch * keys, self_attention);
        let dv_in = self.v.backward(device, &cache.context, v_inner.as_ref(), &dv, batch * keys, self_attention);
        match (dk_in, dv_in) {
            (Some(dk_in), Some(dv_in)) => {
                let len = batch * queries * self.q.inputs;
                let partial = add(device, &dx, &dk_in, len);
                add(device, &partial, &dv_in, len)
            }
            _ => dx,
        }
    }
}

impl<D: ImageBackward> TransformerBlock<D> {
    /// ∂L/∂x of [`TransformerBlock::forward_cached`], accumulating the LoRA gradients.
    pub fn backward(&self, device: &D, cache: &TransformerBlockCache<D>, dy: &D::Buffer) -> D::Buffer {
        let rows = cache.rows;
        let len = rows * self.dim;
        // Feed-forward: y = x2 + ff_out(geglu(ff_in(norm3(x2)))).
        let d_gated = self.ff_out.backward(device, &cache.gated, None, dy, rows, true).expect("input gradient");
        let d_projected = device.output(rows * 2 * self.ff_out.inputs);
        device.geglu_backward(&cache.projected, &d_gated, &d_projected, rows, self.ff_out.inputs);
        let d_normed =
            self.ff_in.backward(device, &cache.normed, None, &d_projected, rows, true).expect("input gradient");
        let d_norm = self.norm3.layer_backward(device, &cache.x2, &d_normed, rows, 1e-5);
        let d_x2 = add(device, dy, &d_norm, len);
        // Cross-attention: x2 = x1 + attn2(norm2(x1)).
        let d_h = self.attn2.backward(device, &cache.attn2, &d_x2);
        let d_norm = self.norm2.layer_backward(device, &cache.x1, &d_h, rows, 1e-5);
        let d_x1 = add(device, &d_x2, &d_norm, len);
        // Self-attention: x1 = x0 + attn1(norm1(x0)).
        let d_h = self.attn1.backward(device, &cache.attn1, &d_x1);
        let d_norm = self.norm1.layer_backward(device, &cache.x0, &d_h, rows, 1e-5);
        add(device, &d_x1, &d_norm, len)
    }
}

impl<D: ImageBackward> SpatialTransformer<D> {
    /// ∂L/∂x of [`SpatialTransformer::forward_cached`], accumulating the LoRA gradients.
    pub fn backward(&self, device: &D, cache: &SpatialTransformerCache<D>, dy: &D::Buffer) -> D::Buffer {
        let (batch, height, width) = (cache.batch, cache.height, cache.width);
        let (c, hw) = (self.channels, height * width);
        let len = batch * c * hw;
        // Out: image = proj_out(tokens) laid back as NCHW, plus x.
        let mut d_tokens = match &self.proj_out {
            Projection::Linear(linear) => {
                let d_projected = device.output(len);
                device.transpose(dy, &d_projected, batch, c, hw);
                linear
                    .backward(device, &cache.tokens_out, None, &d_projected, batch * hw, true)
                    .expect("input gradient")
            }
            Projection::Conv(conv) => {
                let d_image = conv.input_grad(device, dy, batch, height, width);
                let d_tokens = device.output(len);
                device.transpose(&d_image, &d_tokens, batch, c, hw);
                d_tokens
            }
        };
        for (block, block_cache) in self.blocks.iter().zip(&cache.blocks).rev() {
            d_tokens = block.backward(device, block_cache, &d_tokens);
        }
        let d_normed = match &self.proj_in {
            Projection::Linear(linear) => {
                let d_in = linear
                    .backward(device, &cache.tokens_in, None, &d_tokens, batch * hw, true)
                    .expect("input gradient");
                let d_normed = device.output(len);
                device.transpose(&d_in, &d_normed, batch, hw, c);
                d_normed
            }
            Projection::Conv(conv) => {
                let d_projected = device.output(len);
                device.transpose(&d_tokens, &d_projected, batch, hw, c);
                conv.input_grad(device, &d_projected, batch, height, width)
            }
        };
        let d_norm = self.norm.group_backward(device, &cache.x, &d_normed, batch, hw, self.groups, 1e-6, false);
        add(device, dy, &d_norm, len)
    }
}
