//! diffusers' `UNet2DConditionModel` for Stable Diffusion 1.x/2.x and its distilled variants,
//! built from its config: sinusoidal timestep embedding and its MLP, `conv_in`, down blocks
//! (ResNets, optional cross-attention transformers, a strided convolution), the mid block, up
//! blocks (skip concatenation, ResNets, transformers, nearest upsampling + convolution), then
//! group norm, SiLU and `conv_out`. Block counts, ResNets and transformer layers per block, heads
//! and the mid block (absent in BK-SDM-Small/Tiny) all come from the config.

use crate::device::{ImageBackward, ImageOps, Unary};

use super::config::UnetConfig;
use super::nn::{
    Attention, Conv, Linear, Norm, ResnetBlock, ResnetCache, SpatialTransformer, SpatialTransformerCache, add, unary,
};
use super::weights::{ComponentWeights, WeightsError};

type Layer<D> = (ResnetBlock<D>, Option<SpatialTransformer<D>>);

struct DownBlock<D: ImageOps> {
    layers: Vec<Layer<D>>,
    downsample: Option<Conv<D>>,
}

struct UpBlock<D: ImageOps> {
    layers: Vec<Layer<D>>,
    upsample: Option<Conv<D>>,
}

/// The UNet on a device.
pub struct Unet<D: ImageOps> {
    config: UnetConfig,
    time1: Linear<D>,
    time2: Linear<D>,
    conv_in: Conv<D>,
    down: Vec<DownBlock<D>>,
    mid_first: Option<ResnetBlock<D>>,
    mid: Vec<(SpatialTransformer<D>, ResnetBlock<D>)>,
    up: Vec<UpBlock<D>>,
    norm_out: Norm<D>,
    conv_out: Conv<D>,
}

/// Sinusoidal timestep features as diffusers computes them in f32 (`get_timestep_embedding`):
/// `[sin, cos]` of `t · 10000^(−i/(half − shift))`, or `[cos, sin]` with `flip_sin_to_cos`.
pub fn timestep_features(timesteps: &[f32], dim: usize, flip_sin_to_cos: bool, shift: f64) -> Vec<f32> {
    let half = dim / 2;
    let log = -(10000f64.ln() as f32);
    let frequencies: Vec<f32> = (0..half)
        .map(|i| {
            let exponent = (log * i as f32) / (half as f64 - shift) as f32;
            (exponent as f64).exp() as f32
        })
        .collect();
    let mut out = vec![0f32; timesteps.len() * dim];
    for (row, &t) in out.chunks_mut(dim).zip(timesteps) {
        for (i, &f) in frequencies.iter().enumerate() {
            let angle = (t * f) as f64;
            let (sin, cos) = (angle.sin() as f32, angle.cos() as f32);
            let (first, second) = if flip_sin_to_cos { (cos, sin) } else { (sin, cos) };
            row[i] = first;
            row[half + i] = second;
        }
    }
    out
}

impl<D: ImageOps> Unet<D> {
    /// Builds the UNet from its config and diffusers-named weights.
    pub fn load(device: &D, config: &UnetConfig, mut weights: ComponentWeights) -> Result<Self, WeightsError> {
        let c = config;
        let w = &mut weights;
        let blocks = c.block_out_channels.len();
        let base = c.block_out_channels[0];
        let time_dim = 4 * base;
        let groups = c.norm_groups;
        let eps = c.norm_eps;
        let time1 = Linear::load(device, w, "time_embedding.linear_1", base, time_dim)?;
        let time2 = Linear::load(device, w, "time_embedding.linear_2", time_dim, time_dim)?;
        let conv_in = Conv::same(device, w, "conv_in", c.in_channels, base, c.conv_in_kernel)?;
        let transformer = |w: &mut ComponentWeights, prefix: String, channels: usize, heads: usize, layers: usize| {
            SpatialTransformer::load(
                device,
                w,
                &prefix,
                channels,
                heads,
                layers,
                c.cross_attention_dim,
                groups,
                c.use_linear_projection,
            )
        };
        // ResNet `j` of a block and, in a cross-attention block, its transformer; heads and
        // transformer layers are those of down block `block` (up blocks use their mirror's).
        let layer = |w: &mut ComponentWeights,
                     prefix: String,
                     j: usize,
                     inputs: usize,
                     output: usize,
                     attention: bool,
                     block: usize|
         -> Result<Layer<D>, WeightsError> {
            let resnet = ResnetBlock::load(
                device,
                w,
                &format!("{prefix}.resnets.{j}"),
                inputs,
                output,
                Some(time_dim),
                groups,
                eps,
            )?;
            let attention = attention
                .then(|| {
                    transformer(
                        w,
                        format!("{prefix}.attentions.{j}"),
                        output,
                        c.heads[block],
                        c.transformer_layers[block],
                    )
                })
                .transpose()?;
            Ok((resnet, attention))
        };
        let mut down = Vec::new();
        let mut output = base;
        for i in 0..blocks {
            let input = output;
            output = c.block_out_channels[i];
            let mut layers = Vec::new();
            for j in 0..c.layers_per_block[i] {
                let inputs = if j == 0 { input } else { output };
                layers.push(layer(w, format!("down_blocks.{i}"), j, inputs, output, c.down_attention[i], i)?);
            }
            let pad = c.downsample_padding;
            let downsample = (i + 1 < blocks)
                .then(|| {
                    Conv::load(
                        device,
                        w,
                        &format!("down_blocks.{i}.downsamplers.0.conv"),
                        output,
                        output,
                        3,
                        2,
                        (pad, pad),
                    )
                })
                .transpose()?;
            down.push(DownBlock { layers, downsample });
        }
        let top = c.block_out_channels[blocks - 1];
        let mid_heads = c.heads[blocks - 1];
        let (mid_first, mid) = if c.mid_block {
            let first = ResnetBlock::load(device, w, "mid_block.resnets.0", top, top, Some(time_dim), groups, eps)?;
            let rest = vec![(
                transformer(w, "mid_block.attentions.0".into(), top, mid_heads, c.transformer_layers[blocks - 1])?,
                ResnetBlock::load(device, w, "mid_block.resnets.1", top, top, Some(time_dim), groups, eps)?,
            )];
            (Some(first), rest)
        } else {
            (None, Vec::new())
        };
        let reversed: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let mut up = Vec::new();
        let mut output = reversed[0];
        for i in 0..blocks {
            let previous = output;
            output = reversed[i];
            let input = reversed[(i + 1).min(blocks - 1)];
            let down_index = blocks - 1 - i;
            let count = c.layers_per_block[down_index] + 1;
            let mut layers = Vec::new();
            for j in 0..count {
                let skip = if j + 1 == count { input } else { output };
                let inputs = if j == 0 { previous } else { output } + skip;
                layers.push(layer(w, format!("up_blocks.{i}"), j, inputs, output, c.up_attention[i], down_index)?);
            }
            let upsample = (i + 1 < blocks)
                .then(|| Conv::same(device, w, &format!("up_blocks.{i}.upsamplers.0.conv"), output, output, 3))
                .transpose()?;
            up.push(UpBlock { layers, upsample });
        }
        let norm_out = Norm::load(device, w, "conv_norm_out", base)?;
        let conv_out = Conv::same(device, w, "conv_out", base, c.out_channels, c.conv_out_kernel)?;
        let unused = weights.names();
        if !unused.is_empty() {
            return Err(WeightsError::Absent {
                source_files: weights.source(),
                name: unused.join(", "),
                expected: "these tensors are not part of the UNet the config describes (wrong config?)".into(),
            });
        }
        Ok(Unet { config: config.clone(), time1, time2, conv_in, down, mid_first, mid, up, norm_out, conv_out })
    }

    /// The config.
    pub fn config(&self) -> &UnetConfig {
        &self.config
    }

    /// The model output (noise or v) for `latents` (`batch × in_channels × height × width`) at
    /// `timesteps` (one per image) conditioned on `context` (`batch × context_len ×
    /// cross_attention_dim`).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        device: &D,
        latents: &D::Buffer,
        batch: usize,
        height: usize,
        width: usize,
        timesteps: &[f32],
        context: &D::Buffer,
        context_len: usize,
    ) -> Result<D::Buffer, String> {
        Ok(self.run(device, latents, batch, height, width, timesteps, context, context_len, false)?.0)
    }

    /// [`Unet::forward`] keeping what the backward pass needs ([`Unet::backward`]).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_cached(
        &self,
        device: &D,
        latents: &D::Buffer,
        batch: usize,
        height: usize,
        width: usize,
        timesteps: &[f32],
        context: &D::Buffer,
        context_len: usize,
    ) -> Result<(D::Buffer, UnetCache<D>), String> {
        let (y, cache) = self.run(device, latents, batch, height, width, timesteps, context, context_len, true)?;
        Ok((y, cache.expect("recorded")))
    }

    /// Every attention layer with its diffusers module path (`down_blocks.0.attentions.0.
    /// transformer_blocks.0.attn1`, …), in the order of the forward pass.
    pub fn attentions_mut(&mut self) -> Vec<(String, &mut Attention<D>)> {
        let mut transformers: Vec<(String, &mut SpatialTransformer<D>)> = Vec::new();
        for (i, block) in self.down.iter_mut().enumerate() {
            for (j, (_, attention)) in block.layers.iter_mut().enumerate() {
                if let Some(attention) = attention {
                    transformers.push((format!("down_blocks.{i}.attentions.{j}"), attention));
                }
            }
        }
        for (j, (attention, _)) in self.mid.iter_mut().enumerate() {
            transformers.push((format!("mid_block.attentions.{j}"), attention));
        }
        for (i, block) in self.up.iter_mut().enumerate() {
            for (j, (_, attention)) in block.layers.iter_mut().enumerate() {
                if let Some(attention) = attention {
                    transformers.push((format!("up_blocks.{i}.attentions.{j}"), attention));
                }
            }
        }
        let mut found = Vec::new();
        for (prefix, transformer) in transformers {
            for (i, block) in transformer.blocks_mut().iter_mut().enumerate() {
                for (name, attention) in block.attentions_mut() {
                    found.push((format!("{prefix}.transformer_blocks.{i}.{name}"), attention));
                }
            }
        }
        found
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        device: &D,
        latents: &D::Buffer,
        batch: usize,
        height: usize,
        width: usize,
        timesteps: &[f32],
        context: &D::Buffer,
        context_len: usize,
        record: bool,
    ) -> Result<(D::Buffer, Option<UnetCache<D>>), String> {
        let c = &self.config;
        let factor = 1 << c.downsamplings();
        if !height.is_multiple_of(factor) || !width.is_multiple_of(factor) {
            return Err(format!(
                "latents of {height}×{width} cannot be halved {} times; use a multiple of {factor} (images: of {})",
                c.downsamplings(),
                factor * 8
            ));
        }
        if timesteps.len() != batch {
            return Err(format!("{} timesteps for {batch} latents", timesteps.len()));
        }
        let base = c.block_out_channels[0];
        let features = timestep_features(timesteps, base, c.flip_sin_to_cos, c.freq_shift);
        let features = device.upload(&features);
        let t = self.time1.forward(device, &features, batch);
        let t = unary(device, Unary::Silu, &t, batch * 4 * base);
        let t = self.time2.forward(device, &t, batch);
        let time = unary(device, Unary::Silu, &t, batch * 4 * base);
        let context = (context, context_len);
        let mut cache = UnetCache { batch, height, width, layers: Vec::new(), mid: Vec::new(), pre_out: None };
        // One layer (ResNet, optional transformer), cached when recording.
        let mut layer = |resnet: &ResnetBlock<D>,
                         attention: Option<&SpatialTransformer<D>>,
                         x: &D::Buffer,
                         h: usize,
                         w: usize,
                         skip: Option<(usize, usize)>| {
            if !record {
                let x = resnet.forward(device, x, batch, h, w, Some(&time));
                return attention.map_or(x.clone(), |a| a.forward(device, &x, batch, h, w, context));
            }
            let (x, resnet_cache) = resnet.forward_cached(device, x, batch, h, w, Some(&time));
            let (x, attention_cache) = match attention {
                Some(a) => {
                    let (y, cache) = a.forward_cached(device, &x, batch, h, w, context);
                    (y, Some(cache))
                }
                None => (x, None),
            };
            cache.layers.push(LayerCache { resnet: resnet_cache, attention: attention_cache, skip });
            x
        };

        let (mut x, mut h, mut w) = self.conv_in.forward(device, latents, batch, height, width);
        let mut channels = base;
        let mut skips = vec![(x.clone(), channels)];
        for block in &self.down {
            for (resnet, attention) in &block.layers {
                x = layer(resnet, attention.as_ref(), &x, h, w, None);
                channels = resnet.outputs;
                skips.push((x.clone(), channels));
            }
            if let Some(downsample) = &block.downsample {
                (x, h, w) = downsample.forward(device, &x, batch, h, w);
                skips.push((x.clone(), channels));
            }
        }
        if let Some(first) = &self.mid_first {
            x = layer(first, None, &x, h, w, None);
        }
        for (attention, resnet) in &self.mid {
            // The mid block runs its transformer before its second ResNet: two cached layers.
            if record {
                let (y, attention_cache) = attention.forward_cached(device, &x, batch, h, w, context);
                let (y, resnet_cache) = resnet.forward_cached(device, &y, batch, h, w, Some(&time));
                cache.mid.push((attention_cache, resnet_cache));
                x = y;
            } else {
                x = attention.forward(device, &x, batch, h, w, context);
                x = resnet.forward(device, &x, batch, h, w, Some(&time));
            }
        }
        for block in &self.up {
            for (resnet, attention) in &block.layers {
                let (skip, skip_channels) = skips.pop().ok_or("the UNet's skip connections ran out")?;
                let joined = concat_channels(device, &x, channels, &skip, skip_channels, batch, h * w);
                x = layer(resnet, attention.as_ref(), &joined, h, w, Some((channels, skip_channels)));
                channels = resnet.outputs;
            }
            if let Some(upsample) = &block.upsample {
                let doubled = device.output(batch * channels * 4 * h * w);
                device.upsample_nearest2x(&x, &doubled, batch * channels, h, w);
                (h, w) = (2 * h, 2 * w);
                x = upsample.forward(device, &doubled, batch, h, w).0;
            }
        }
        let normed = self.norm_out.group(device, &x, batch, h * w, c.norm_groups, c.norm_eps, true);
        let y = self.conv_out.forward(device, &normed, batch, h, w).0;
        if record {
            cache.pre_out = Some(x);
            Ok((y, Some(cache)))
        } else {
            Ok((y, None))
        }
    }
}

/// One cached UNet layer: a ResNet, its transformer, and for an up block's layer the channels of
/// its two concatenated inputs (the path, then the skip connection).
struct LayerCache<D: ImageOps> {
    resnet: ResnetCache<D>,
    attention: Option<SpatialTransformerCache<D>>,
    skip: Option<(usize, usize)>,
}

/// What [`Unet::backward`] needs from [`Unet::forward_cached`].
pub struct UnetCache<D: ImageOps> {
    batch: usize,
    height: usize,
    width: usize,
    layers: Vec<LayerCache<D>>,
    mid: Vec<(SpatialTransformerCache<D>, ResnetCache<D>)>,
    pre_out: Option<D::Buffer>,
}

impl<D: ImageBackward> Unet<D> {
    /// The backward pass from ∂L/∂output: accumulates the gradients of every [`LoraParams`]
    /// attached to the attention projections (see [`Unet::attentions_mut`]). The gradient goes
    /// back only as far as the first adapted layer; the timestep embedding and the text
    /// conditioning are frozen.
    ///
    /// [`LoraParams`]: super::nn::LoraParams
    pub fn backward(&self, device: &D, cache: &UnetCache<D>, dy: &D::Buffer) {
        let c = &self.config;
        let batch = cache.batch;
        let blocks = c.block_out_channels.len();
        // The latent size at each block (down block i works at sizes[i]).
        let sizes: Vec<(usize, usize)> = (0..blocks).map(|i| (cache.height >> i, cache.width >> i)).collect();
        let (mut h, mut w) = sizes[0];
        let base = c.block_out_channels[0];
        let pre_out = cache.pre_out.as_ref().expect("a recorded forward pass");
        let d = self.conv_out.input_grad(device, dy, batch, h, w);
        let mut d = self.norm_out.group_backward(device, pre_out, &d, batch, h * w, c.norm_groups, c.norm_eps, true);
        let mut channels = base;
        let mut layers = cache.layers.iter().rev();
        // Gradients of the skip connections, by position in the forward pass's skip stack.
        let mut skip_grads: Vec<D::Buffer> = Vec::new();
        for block in self.up.iter().rev() {
            if let Some(upsample) = &block.upsample {
                let doubled = upsample.input_grad(device, &d, batch, h, w);
                (h, w) = (h / 2, w / 2);
                d = device.output(batch * channels * h * w);
                device.upsample_nearest2x_backward(&doubled, &d, batch * channels, h, w);
            }
            for (resnet, attention) in block.layers.iter().rev() {
                let layer = layers.next().expect("one cached layer per layer");
                if let (Some(attention), Some(attention_cache)) = (attention, &layer.attention) {
                    d = attention.backward(device, attention_cache, &d);
                }
                let joined = resnet.backward(device, &layer.resnet, &d);
                let (path, skip) = layer.skip.expect("an up block's layer records its inputs");
                let spatial = h * w;
                let (dx, ds) = split_channels(device, &joined, path, skip, batch, spatial);
                skip_grads.push(ds);
                d = dx;
                channels = path;
            }
        }
        for ((attention, resnet), (attention_cache, resnet_cache)) in self.mid.iter().zip(&cache.mid).rev() {
            d = resnet.backward(device, resnet_cache, &d);
            d = attention.backward(device, attention_cache, &d);
        }
        if let Some(first) = &self.mid_first {
            let layer = layers.next().expect("the mid block's first ResNet");
            d = first.backward(device, &layer.resnet, &d);
        }
        // Down blocks: each output there was also a skip connection, whose gradient is added.
        // Stop once no adapted layer is left before the current point.
        // What is left of `layers` are the down blocks' layers, last first.
        let down_layers: Vec<&LayerCache<D>> = layers.collect();
        let mut left = down_layers.iter().filter(|layer| layer.attention.is_some()).count();
        let mut down_layers = down_layers.into_iter();
        let mut skip_grads = skip_grads.into_iter().rev();
        for (i, block) in self.down.iter().enumerate().rev() {
            if left == 0 {
                break;
            }
            let len = |channels: usize, (h, w): (usize, usize)| batch * channels * h * w;
            let out_channels = c.block_out_channels[i];
            if let Some(downsample) = &block.downsample {
                let ds = skip_grads.next().expect("a skip gradient per skip");
                d = add(device, &d, &ds, len(out_channels, sizes[i + 1]));
                let (bh, bw) = sizes[i];
                d = downsample.input_grad(device, &d, batch, bh, bw);
            }
            for (resnet, attention) in block.layers.iter().rev() {
                let layer = down_layers.next().expect("one cached layer per down layer");
                let ds = skip_grads.next().expect("a skip gradient per skip");
                d = add(device, &d, &ds, len(out_channels, sizes[i]));
                if let (Some(attention), Some(attention_cache)) = (attention, &layer.attention) {
                    d = attention.backward(device, attention_cache, &d);
                    left -= 1;
                }
                if left == 0 {
                    break;
                }
                d = resnet.backward(device, &layer.resnet, &d);
            }
        }
    }
}

/// The two parts of ∂L/∂[a, b] for [`concat_channels`]: (∂a, ∂b).
fn split_channels<D: ImageOps>(
    device: &D,
    joined: &D::Buffer,
    a_channels: usize,
    b_channels: usize,
    batch: usize,
    spatial: usize,
) -> (D::Buffer, D::Buffer) {
    let channels = a_channels + b_channels;
    let (a, b) = (device.output(batch * a_channels * spatial), device.output(batch * b_channels * spatial));
    for image in 0..batch {
        device.copy_at(joined, image * channels * spatial, &a, image * a_channels * spatial, a_channels * spatial);
        let from = (image * channels + a_channels) * spatial;
        device.copy_at(joined, from, &b, image * b_channels * spatial, b_channels * spatial);
    }
    (a, b)
}

/// `[a, b]` along channels of NCHW activations.
pub fn concat_channels<D: ImageOps>(
    device: &D,
    a: &D::Buffer,
    a_channels: usize,
    b: &D::Buffer,
    b_channels: usize,
    batch: usize,
    spatial: usize,
) -> D::Buffer {
    let channels = a_channels + b_channels;
    let y = device.output(batch * channels * spatial);
    for image in 0..batch {
        device.copy_at(a, image * a_channels * spatial, &y, image * channels * spatial, a_channels * spatial);
        device.copy_at(
            b,
            image * b_channels * spatial,
            &y,
            (image * channels + a_channels) * spatial,
            b_channels * spatial,
        );
    }
    y
}
