//! The layers Stable Diffusion's networks share, written once over [`ImageOps`]: linear and
//! convolution layers, norms, ResNet blocks, attention (chunked over queries, so the score
//! matrix of a 64×64 latent is never whole) and diffusers' transformer blocks.

use crate::device::{Conv2d, GroupNorm, ImageOps, Unary};
use crate::kernels::elementwise::Elementwise;
use crate::kernels::matmul::{Layout, Matmul};

use super::weights::{ComponentWeights, WeightsError};

mod backward;
pub use backward::attention_backward;

/// Most attention scores held at once (values): a chunk of queries is sized to stay below it.
pub const ATTENTION_SCORE_BUDGET: usize = 1 << 24;

/// `a + b` into a new buffer.
pub fn add<D: ImageOps>(device: &D, a: &D::Buffer, b: &D::Buffer, len: usize) -> D::Buffer {
    let y = device.output(len);
    device.elementwise(Elementwise::Combine { s0: 1.0, s1: 1.0 }, Some(a), Some(b), None, &y, len);
    y
}

/// A trainable low-rank update of a [`Linear`] layer, kept apart from its frozen weight:
/// `y += scale · (x Aᵀ) Bᵀ` (PEFT's `lora_A` = A `[rank, in]`, `lora_B` = B `[out, rank]`,
/// `scale = alpha / rank`), with the gradients of A and B accumulated by the backward pass.
pub struct LoraParams<D: ImageOps> {
    /// A, `[rank, in]`.
    pub a: D::Buffer,
    /// B, `[out, rank]`.
    pub b: D::Buffer,
    /// ∂L/∂A (accumulated; cleared by the trainer).
    pub grad_a: D::Buffer,
    /// ∂L/∂B (accumulated).
    pub grad_b: D::Buffer,
    /// The rank r.
    pub rank: usize,
    /// `alpha / r`.
    pub scale: f32,
}

impl<D: ImageOps> Clone for LoraParams<D> {
    fn clone(&self) -> Self {
        LoraParams {
            a: self.a.clone(),
            b: self.b.clone(),
            grad_a: self.grad_a.clone(),
            grad_b: self.grad_b.clone(),
            rank: self.rank,
            scale: self.scale,
        }
    }
}

/// A PyTorch `Linear`: weight `[out, in]`, optional bias, optional trainable [`LoraParams`].
pub struct Linear<D: ImageOps> {
    weight: D::Buffer,
    bias: Option<D::Buffer>,
    /// Input width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
    /// A LoRA update being trained (sampling merges adapters into `weight` instead).
    pub lora: Option<LoraParams<D>>,
}

impl<D: ImageOps> Linear<D> {
    /// Loads `{prefix}.weight` and, if present, `{prefix}.bias`.
    pub fn load(
        device: &D,
        weights: &mut ComponentWeights,
        prefix: &str,
        inputs: usize,
        outputs: usize,
    ) -> Result<Self, WeightsError> {
        let weight = weights.take(&format!("{prefix}.weight"), &[outputs, inputs])?;
        let bias = weights.take_optional(&format!("{prefix}.bias"), &[outputs])?;
        Ok(Linear {
            weight: device.upload(&weight.data),
            bias: bias.map(|b| device.upload(&b.data)),
            inputs,
            outputs,
            lora: None,
        })
    }

    /// The frozen weight, `[out, in]`.
    pub fn weight(&self) -> &D::Buffer {
        &self.weight
    }

    /// `y = x Wᵀ + b (+ scale · (x Aᵀ) Bᵀ)` over `rows` rows.
    pub fn forward(&self, device: &D, x: &D::Buffer, rows: usize) -> D::Buffer {
        self.forward_with_inner(device, x, rows).0
    }

    /// [`Linear::forward`] and, with a LoRA update, its inner activations `x Aᵀ` (`rows ×
    /// rank`), which the backward pass needs.
    pub fn forward_with_inner(&self, device: &D, x: &D::Buffer, rows: usize) -> (D::Buffer, Option<D::Buffer>) {
        let y = device.output(rows * self.outputs);
        let spec = Matmul::new(rows, self.outputs, self.inputs, false, true)
            .with_epilogue(self.bias.is_some(), crate::kernels::matmul::Activation::None);
        device.matmul(&spec, x, &self.weight, self.bias.as_ref(), &y);
        let inner = self.lora.as_ref().map(|lora| {
            let inner = device.output(rows * lora.rank);
            device.matmul(&Matmul::new(rows, lora.rank, self.inputs, false, true), x, &lora.a, None, &inner);
            let up = Matmul {
                alpha: lora.scale,
                accumulate: true,
                ..Matmul::new(rows, self.outputs, lora.rank, false, true)
            };
            device.matmul(&up, &inner, &lora.b, None, &y);
            inner
        });
        (y, inner)
    }
}

/// A PyTorch `Conv2d` (one group).
pub struct Conv<D: ImageOps> {
    weight: D::Buffer,
    bias: Option<D::Buffer>,
    /// Input channels.
    pub inputs: usize,
    /// Output channels.
    pub outputs: usize,
    kernel: usize,
    stride: usize,
    pad: (usize, usize),
}

impl<D: ImageOps> Conv<D> {
    /// Loads `{prefix}.weight` (`[out, in, k, k]`) and, if present, `{prefix}.bias`.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        device: &D,
        weights: &mut ComponentWeights,
        prefix: &str,
        inputs: usize,
        outputs: usize,
        kernel: usize,
        stride: usize,
        pad: (usize, usize),
    ) -> Result<Self, WeightsError> {
        let weight = weights.take(&format!("{prefix}.weight"), &[outputs, inputs, kernel, kernel])?;
        let bias = weights.take_optional(&format!("{prefix}.bias"), &[outputs])?;
        Ok(Conv {
            weight: device.upload(&weight.data),
            bias: bias.map(|b| device.upload(&b.data)),
            inputs,
            outputs,
            kernel,
            stride,
            pad,
        })
    }

    /// A stride-1 "same" convolution.
    pub fn same(
        device: &D,
        weights: &mut ComponentWeights,
        prefix: &str,
        inputs: usize,
        outputs: usize,
        kernel: usize,
    ) -> Result<Self, WeightsError> {
        Self::load(device, weights, prefix, inputs, outputs, kernel, 1, (kernel / 2, kernel / 2))
    }

    /// The convolution's shape on `batch` images of `height × width`.
    pub fn spec(&self, batch: usize, height: usize, width: usize) -> Conv2d {
        Conv2d {
            batch,
            in_channels: self.inputs,
            out_channels: self.outputs,
            height,
            width,
            kernel: self.kernel,
            stride: self.stride,
            pad_before: self.pad.0,
            pad_after: self.pad.1,
        }
    }

    /// The convolution of `batch` images of `height × width`: the output and its size.
    pub fn forward(
        &self,
        device: &D,
        x: &D::Buffer,
        batch: usize,
        height: usize,
        width: usize,
    ) -> (D::Buffer, usize, usize) {
        let spec = self.spec(batch, height, width);
        let y = device.output(spec.output_len());
        device.conv2d(&spec, x, &self.weight, self.bias.as_ref(), &y);
        (y, spec.out_height(), spec.out_width())
    }
}

/// Scale and shift of a norm layer.
pub struct Norm<D: ImageOps> {
    gamma: D::Buffer,
    beta: D::Buffer,
    /// Channels (group norm) or width (layer norm).
    pub channels: usize,
}

impl<D: ImageOps> Norm<D> {
    /// Loads `{prefix}.weight` and `{prefix}.bias`.
    pub fn load(
        device: &D,
        weights: &mut ComponentWeights,
        prefix: &str,
        channels: usize,
    ) -> Result<Self, WeightsError> {
        let gamma = weights.take(&format!("{prefix}.weight"), &[channels])?;
        let beta = weights.take(&format!("{prefix}.bias"), &[channels])?;
        Ok(Norm { gamma: device.upload(&gamma.data), beta: device.upload(&beta.data), channels })
    }

    /// Group norm of `batch × channels × spatial` (then SiLU).
    #[allow(clippy::too_many_arguments)]
    pub fn group(
        &self,
        device: &D,
        x: &D::Buffer,
        batch: usize,
        spatial: usize,
        groups: usize,
        eps: f32,
        silu: bool,
    ) -> D::Buffer {
        let spec = GroupNorm { batch, channels: self.channels, spatial, groups, eps, silu };
        let y = device.output(spec.len());
        device.group_norm(&spec, x, &self.gamma, &self.beta, &y);
        y
    }

    /// Layer norm over rows.
    pub fn layer(&self, device: &D, x: &D::Buffer, rows: usize, eps: f32) -> D::Buffer {
        let y = device.output(rows * self.channels);
        device.layer_norm(x, &self.gamma, &self.beta, &y, rows, self.channels, eps);
        y
    }
}

/// diffusers' `ResnetBlock2D` (norm, SiLU, conv, + projected time embedding, norm, SiLU, conv,
/// + shortcut).
pub struct ResnetBlock<D: ImageOps> {
    norm1: Norm<D>,
    conv1: Conv<D>,
    time: Option<Linear<D>>,
    norm2: Norm<D>,
    conv2: Conv<D>,
    shortcut: Option<Conv<D>>,
    groups: usize,
    eps: f32,
    /// Output channels.
    pub outputs: usize,
}

impl<D: ImageOps> ResnetBlock<D> {
    /// Loads `{prefix}.{norm1,conv1,time_emb_proj,norm2,conv2,conv_shortcut}`.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        device: &D,
        weights: &mut ComponentWeights,
        prefix: &str,
        inputs: usize,
        outputs: usize,
        time_channels: Option<usize>,
        groups: usize,
        eps: f32,
    ) -> Result<Self, WeightsError> {
        Ok(ResnetBlock {
            norm1: Norm::load(device, weights, &format!("{prefix}.norm1"), inputs)?,
            conv1: Conv::same(device, weights, &format!("{prefix}.conv1"), inputs, outputs, 3)?,
            time: time_channels
                .map(|t| Linear::load(device, weights, &format!("{prefix}.time_emb_proj"), t, outputs))
                .transpose()?,
            norm2: Norm::load(device, weights, &format!("{prefix}.norm2"), outputs)?,
            conv2: Conv::same(device, weights, &format!("{prefix}.conv2"), outputs, outputs, 3)?,
            shortcut: (inputs != outputs)
                .then(|| Conv::same(device, weights, &format!("{prefix}.conv_shortcut"), inputs, outputs, 1))
                .transpose()?,
            groups,
            eps,
            outputs,
        })
    }

    /// The block on `batch × inputs × height × width`; `time` is SiLU of the time embedding
    /// (`batch × time_channels`) when the block has a time projection.
    pub fn forward(
        &self,
        device: &D,
        x: &D::Buffer,
        batch: usize,
        height: usize,
        width: usize,
        time: Option<&D::Buffer>,
    ) -> D::Buffer {
        self.forward_cached(device, x, batch, height, width, time).0
    }

    /// [`ResnetBlock::forward`] and what its backward pass needs.
    pub fn forward_cached(
        &self,
        device: &D,
        x: &D::Buffer,
        batch: usize,
        height: usize,
        width: usize,
        time: Option<&D::Buffer>,
    ) -> (D::Buffer, ResnetCache<D>) {
        let spatial = height * width;
        let h = self.norm1.group(device, x, batch, spatial, self.groups, self.eps, true);
        let (h, _, _) = self.conv1.forward(device, &h, batch, height, width);
        let len = batch * self.outputs * spatial;
        if let (Some(projection), Some(time)) = (&self.time, time) {
            let t = projection.forward(device, time, batch);
            device.add_repeated(&t, &h, len, spatial, batch * self.outputs);
        }
        let middle = h;
        let h = self.norm2.group(device, &middle, batch, spatial, self.groups, self.eps, true);
        let (h, _, _) = self.conv2.forward(device, &h, batch, height, width);
        let y = match &self.shortcut {
            Some(shortcut) => {
                let (s, _, _) = shortcut.forward(device, x, batch, height, width);
                add(device, &s, &h, len)
            }
            None => add(device, x, &h, len),
        };
        (y, ResnetCache { x: x.clone(), middle, batch, height, width })
    }
}

/// What [`ResnetBlock`]'s backward pass needs: its input and the input of its second norm.
pub struct ResnetCache<D: ImageOps> {
    x: D::Buffer,
    middle: D::Buffer,
    batch: usize,
    height: usize,
    width: usize,
}

/// Multi-head attention over packed `[rows, heads·head_dim]` projections: `out = softmax(q kᵀ ·
/// scale) v` per head, computed for chunks of queries so that at most
/// [`ATTENTION_SCORE_BUDGET`] scores exist at once. `causal` masks keys after their query (the
/// text encoder; then queries and keys are the same sequence and are not chunked).
#[allow(clippy::too_many_arguments)]
pub fn attention<D: ImageOps>(
    device: &D,
    q: &D::Buffer,
    k: &D::Buffer,
    v: &D::Buffer,
    batch: usize,
    queries: usize,
    keys: usize,
    heads: usize,
    head_dim: usize,
    causal: bool,
) -> D::Buffer {
    let width = heads * head_dim;
    let out = device.output(batch * queries * width);
    let chunk = if causal { queries } else { (ATTENTION_SCORE_BUDGET / (heads * keys).max(1)).clamp(1, queries) };
    let scale = 1.0 / (head_dim as f32).sqrt();
    let scores = device.output(heads * chunk * keys);
    let probabilities = device.output(heads * chunk * keys);
    for b in 0..batch {
        let mut start = 0;
        while start < queries {
            let rows = chunk.min(queries - start);
            let head_view = |offset: usize| Layout {
                offset,
                row_stride: width,
                col_stride: 1,
                outer_stride: head_dim,
                inner_stride: 0,
            };
            let per_head = Layout::row_major(keys).batched(rows * keys, 0);
            // scores[h] = q[h] · k[h]ᵀ
            let qk = Matmul {
                batch_outer: heads,
                a: head_view((b * queries + start) * width),
                b: Layout {
                    offset: b * keys * width,
                    row_stride: 1,
                    col_stride: width,
                    outer_stride: head_dim,
                    inner_stride: 0,
                },
                c: per_head,
                ..Matmul::new(rows, keys, head_dim, false, false)
            };
            device.matmul(&qk, q, k, None, &scores);
            if causal {
                device.causal_mask(&scores, heads, keys);
            }
            device.softmax(&scores, &probabilities, heads * rows, keys, scale);
            // out[h] = p[h] · v[h]
            let pv = Matmul {
                batch_outer: heads,
                a: per_head,
                b: head_view(b * keys * width),
                c: head_view((b * queries + start) * width),
                ..Matmul::new(rows, head_dim, keys, false, false)
            };
            device.matmul(&pv, &probabilities, v, None, &out);
            start += rows;
        }
    }
    out
}

/// diffusers' `Attention` / CLIP's self-attention: projections, [`attention`], output
/// projection.
pub struct Attention<D: ImageOps> {
    q: Linear<D>,
    k: Linear<D>,
    v: Linear<D>,
    out: Linear<D>,
    heads: usize,
    head_dim: usize,
}

impl<D: ImageOps> Attention<D> {
    /// Loads `{prefix}.{q}`, `{k}`, `{v}`, `{out}` (names given, as the libraries differ).
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        device: &D,
        weights: &mut ComponentWeights,
        prefix: &str,
        names: [&str; 4],
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self, WeightsError> {
        let inner = heads * head_dim;
        let name = |n: &str| format!("{prefix}.{n}");
        Ok(Attention {
            q: Linear::load(device, weights, &name(names[0]), query_dim, inner)?,
            k: Linear::load(device, weights, &name(names[1]), context_dim, inner)?,
            v: Linear::load(device, weights, &name(names[2]), context_dim, inner)?,
            out: Linear::load(device, weights, &name(names[3]), inner, query_dim)?,
            heads,
            head_dim,
        })
    }

    /// Attention of `batch × queries` rows of `x` to `context` (`batch × keys` rows; `None` =
    /// self-attention).
    pub fn forward(
        &self,
        device: &D,
        x: &D::Buffer,
        batch: usize,
        queries: usize,
        context: Option<(&D::Buffer, usize)>,
        causal: bool,
    ) -> D::Buffer {
        self.forward_cached(device, x, batch, queries, context, causal).0
    }

    /// [`Attention::forward`] and what its backward pass needs.
    pub fn forward_cached(
        &self,
        device: &D,
        x: &D::Buffer,
        batch: usize,
        queries: usize,
        context: Option<(&D::Buffer, usize)>,
        causal: bool,
    ) -> (D::Buffer, AttentionCache<D>) {
        let cross = context.is_some();
        let (context, keys) = context.unwrap_or((x, queries));
        let (q, q_inner) = self.q.forward_with_inner(device, x, batch * queries);
        let (k, k_inner) = self.k.forward_with_inner(device, context, batch * keys);
        let (v, v_inner) = self.v.forward_with_inner(device, context, batch * keys);
        let o = attention(device, &q, &k, &v, batch, queries, keys, self.heads, self.head_dim, causal);
        let (y, out_inner) = self.out.forward_with_inner(device, &o, batch * queries);
        let cache = AttentionCache {
            x: x.clone(),
            context: context.clone(),
            q,
            k,
            v,
            o,
            inner: [q_inner, k_inner, v_inner, out_inner],
            batch,
            queries,
            keys,
            cross,
            causal,
        };
        (y, cache)
    }

    /// The projections by their diffusers names (`to_q`, `to_k`, `to_v`, `to_out.0`).
    pub fn projections_mut(&mut self) -> [(&'static str, &mut Linear<D>); 4] {
        [
            (ATTENTION_NAMES[0], &mut self.q),
            (ATTENTION_NAMES[1], &mut self.k),
            (ATTENTION_NAMES[2], &mut self.v),
            (ATTENTION_NAMES[3], &mut self.out),
        ]
    }
}

/// What [`Attention`]'s backward pass needs: the inputs, the projections and the attention's
/// output (scores are recomputed, never kept), the LoRA inner activations.
pub struct AttentionCache<D: ImageOps> {
    x: D::Buffer,
    context: D::Buffer,
    q: D::Buffer,
    k: D::Buffer,
    v: D::Buffer,
    o: D::Buffer,
    inner: [Option<D::Buffer>; 4],
    batch: usize,
    queries: usize,
    keys: usize,
    cross: bool,
    causal: bool,
}

/// diffusers' `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward, each
/// after a layer norm and added back.
pub struct TransformerBlock<D: ImageOps> {
    norm1: Norm<D>,
    attn1: Attention<D>,
    norm2: Norm<D>,
    attn2: Attention<D>,
    norm3: Norm<D>,
    ff_in: Linear<D>,
    ff_out: Linear<D>,
    dim: usize,
}

const ATTENTION_NAMES: [&str; 4] = ["to_q", "to_k", "to_v", "to_out.0"];

impl<D: ImageOps> TransformerBlock<D> {
    /// Loads `{prefix}.{norm1,attn1,norm2,attn2,norm3,ff.net.0.proj,ff.net.2}`.
    pub fn load(
        device: &D,
        weights: &mut ComponentWeights,
        prefix: &str,
        dim: usize,
        heads: usize,
        context_dim: usize,
    ) -> Result<Self, WeightsError> {
        let p = |n: &str| format!("{prefix}.{n}");
        let head_dim = dim / heads;
        let inner = 4 * dim;
        Ok(TransformerBlock {
            norm1: Norm::load(device, weights, &p("norm1"), dim)?,
            attn1: Attention::load(device, weights, &p("attn1"), ATTENTION_NAMES, dim, dim, heads, head_dim)?,
            norm2: Norm::load(device, weights, &p("norm2"), dim)?,
            attn2: Attention::load(device, weights, &p("attn2"), ATTENTION_NAMES, dim, context_dim, heads, head_dim)?,
            norm3: Norm::load(device, weights, &p("norm3"), dim)?,
            ff_in: Linear::load(device, weights, &p("ff.net.0.proj"), dim, 2 * inner)?,
            ff_out: Linear::load(device, weights, &p("ff.net.2"), inner, dim)?,
            dim,
        })
    }

    /// The block on `batch × tokens` rows.
    pub fn forward(
        &self,
        device: &D,
        x: &D::Buffer,
        batch: usize,
        tokens: usize,
        context: (&D::Buffer, usize),
    ) -> D::Buffer {
        self.forward_cached(device, x, batch, tokens, context).0
    }

    /// [`TransformerBlock::forward`] and what its backward pass needs.
    pub fn forward_cached(
        &self,
        device: &D,
        x0: &D::Buffer,
        batch: usize,
        tokens: usize,
        context: (&D::Buffer, usize),
    ) -> (D::Buffer, TransformerBlockCache<D>) {
        let rows = batch * tokens;
        let len = rows * self.dim;
        let h = self.norm1.layer(device, x0, rows, 1e-5);
        let (h, attn1) = self.attn1.forward_cached(device, &h, batch, tokens, None, false);
        let x1 = add(device, x0, &h, len);
        let h = self.norm2.layer(device, &x1, rows, 1e-5);
        let (h, attn2) = self.attn2.forward_cached(device, &h, batch, tokens, Some(context), false);
        let x2 = add(device, &x1, &h, len);
        let normed = self.norm3.layer(device, &x2, rows, 1e-5);
        let projected = self.ff_in.forward(device, &normed, rows);
        let inner = self.ff_out.inputs;
        let gated = device.output(rows * inner);
        device.geglu(&projected, &gated, rows, inner);
        let h = self.ff_out.forward(device, &gated, rows);
        let y = add(device, &x2, &h, len);
        let cache = TransformerBlockCache { x0: x0.clone(), x1, x2, attn1, attn2, normed, projected, gated, rows };
        (y, cache)
    }

    /// The self- and cross-attention layers (`attn1`, `attn2`).
    pub fn attentions_mut(&mut self) -> [(&'static str, &mut Attention<D>); 2] {
        [("attn1", &mut self.attn1), ("attn2", &mut self.attn2)]
    }
}

/// What [`TransformerBlock`]'s backward pass needs.
pub struct TransformerBlockCache<D: ImageOps> {
    x0: D::Buffer,
    x1: D::Buffer,
    x2: D::Buffer,
    attn1: AttentionCache<D>,
    attn2: AttentionCache<D>,
    normed: D::Buffer,
    projected: D::Buffer,
    gated: D::Buffer,
    rows: usize,
}

/// A projection around the transformer blocks: a 1×1 convolution on NCHW (SD 1.x) or a linear
/// layer on tokens (SD 2.x).
enum Projection<D: ImageOps> {
    Conv(Conv<D>),
    Linear(Linear<D>),
}

/// diffusers' `Transformer2DModel` on continuous inputs: group norm, projection in, transformer
/// blocks over the pixels as tokens, projection out, plus the input.
pub struct SpatialTransformer<D: ImageOps> {
    norm: Norm<D>,
    proj_in: Projection<D>,
    blocks: Vec<TransformerBlock<D>>,
    proj_out: Projection<D>,
    groups: usize,
    channels: usize,
}

impl<D: ImageOps> SpatialTransformer<D> {
    /// Loads `{prefix}.{norm,proj_in,transformer_blocks.N,proj_out}`.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        device: &D,
        weights: &mut ComponentWeights,
        prefix: &str,
        channels: usize,
        heads: usize,
        layers: usize,
        context_dim: usize,
        groups: usize,
        linear: bool,
    ) -> Result<Self, WeightsError> {
        let projection = |weights: &mut ComponentWeights, name: &str| -> Result<Projection<D>, WeightsError> {
            let prefix = format!("{prefix}.{name}");
            Ok(if linear {
                Projection::Linear(Linear::load(device, weights, &prefix, channels, channels)?)
            } else {
                Projection::Conv(Conv::same(device, weights, &prefix, channels, channels, 1)?)
            })
        };
        let norm = Norm::load(device, weights, &format!("{prefix}.norm"), channels)?;
        let proj_in = projection(weights, "proj_in")?;
        let blocks = (0..layers)
            .map(|i| {
                TransformerBlock::load(
                    device,
                    weights,
                    &format!("{prefix}.transformer_blocks.{i}"),
                    channels,
                    heads,
                    context_dim,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let proj_out = projection(weights, "proj_out")?;
        Ok(SpatialTransformer { norm, proj_in, blocks, proj_out, groups, channels })
    }

    /// The transformer on `batch × channels × height × width`, attending to `context`.
    pub fn forward(
        &self,
        device: &D,
        x: &D::Buffer,
        batch: usize,
        height: usize,
        width: usize,
        context: (&D::Buffer, usize),
    ) -> D::Buffer {
        self.forward_cached(device, x, batch, height, width, context).0
    }

    /// The transformer blocks.
    pub fn blocks_mut(&mut self) -> &mut [TransformerBlock<D>] {
        &mut self.blocks
    }

    /// [`SpatialTransformer::forward`] and what its backward pass needs.
    pub fn forward_cached(
        &self,
        device: &D,
        x: &D::Buffer,
        batch: usize,
        height: usize,
        width: usize,
        context: (&D::Buffer, usize),
    ) -> (D::Buffer, SpatialTransformerCache<D>) {
        let (c, hw) = (self.channels, height * width);
        let len = batch * c * hw;
        let normed = self.norm.group(device, x, batch, hw, self.groups, 1e-6, false);
        let tokens = device.output(len);
        match &self.proj_in {
            Projection::Conv(conv) => {
                let (projected, _, _) = conv.forward(device, &normed, batch, height, width);
                device.transpose(&projected, &tokens, batch, c, hw);
            }
            Projection::Linear(_) => device.transpose(&normed, &tokens, batch, c, hw),
        }
        let tokens_in = tokens;
        let mut tokens = match &self.proj_in {
            Projection::Linear(linear) => linear.forward(device, &tokens_in, batch * hw),
            Projection::Conv(_) => tokens_in.clone(),
        };
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let (y, cache) = block.forward_cached(device, &tokens, batch, hw, context);
            blocks.push(cache);
            tokens = y;
        }
        let image = device.output(len);
        let out = match &self.proj_out {
            Projection::Linear(linear) => {
                let projected = linear.forward(device, &tokens, batch * hw);
                device.transpose(&projected, &image, batch, hw, c);
                image
            }
            Projection::Conv(conv) => {
                device.transpose(&tokens, &image, batch, hw, c);
                conv.forward(device, &image, batch, height, width).0
            }
        };
        let cache =
            SpatialTransformerCache { x: x.clone(), tokens_in, blocks, tokens_out: tokens, batch, height, width };
        (add(device, &out, x, len), cache)
    }
}

/// What [`SpatialTransformer`]'s backward pass needs.
pub struct SpatialTransformerCache<D: ImageOps> {
    x: D::Buffer,
    tokens_in: D::Buffer,
    blocks: Vec<TransformerBlockCache<D>>,
    tokens_out: D::Buffer,
    batch: usize,
    height: usize,
    width: usize,
}

/// Applies `op` to a new buffer.
pub fn unary<D: ImageOps>(device: &D, op: Unary, x: &D::Buffer, len: usize) -> D::Buffer {
    let y = device.output(len);
    device.unary(op, x, &y, len);
    y
}
