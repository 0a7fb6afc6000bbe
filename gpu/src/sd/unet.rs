//! diffusers' `UNet2DConditionModel` for Stable Diffusion 1.x/2.x and its distilled variants,
//! built from its config: sinusoidal timestep embedding and its MLP, `conv_in`, down blocks
//! (ResNets, optional cross-attention transformers, a strided convolution), the mid block, up
//! blocks (skip concatenation, ResNets, transformers, nearest upsampling + convolution), then
//! group norm, SiLU and `conv_out`. Block counts, ResNets and transformer layers per block, heads
//! and the mid block (absent in BK-SDM-Small/Tiny) all come from the config.

use crate::device::{ImageOps, Unary};

use super::config::UnetConfig;
use super::nn::{Conv, Linear, Norm, ResnetBlock, SpatialTransformer, unary};
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

        let (mut x, mut h, mut w) = self.conv_in.forward(device, latents, batch, height, width);
        let mut channels = base;
        let mut skips = vec![(x.clone(), channels)];
        for block in &self.down {
            for (resnet, attention) in &block.layers {
                x = resnet.forward(device, &x, batch, h, w, Some(&time));
                channels = resnet.outputs;
                if let Some(attention) = attention {
                    x = attention.forward(device, &x, batch, h, w, context);
                }
                skips.push((x.clone(), channels));
            }
            if let Some(downsample) = &block.downsample {
                (x, h, w) = downsample.forward(device, &x, batch, h, w);
                skips.push((x.clone(), channels));
            }
        }
        if let Some(first) = &self.mid_first {
            x = first.forward(device, &x, batch, h, w, Some(&time));
        }
        for (attention, resnet) in &self.mid {
            x = attention.forward(device, &x, batch, h, w, context);
            x = resnet.forward(device, &x, batch, h, w, Some(&time));
        }
        for block in &self.up {
            for (resnet, attention) in &block.layers {
                let (skip, skip_channels) = skips.pop().ok_or("the UNet's skip connections ran out")?;
                let joined = concat_channels(device, &x, channels, &skip, skip_channels, batch, h * w);
                x = resnet.forward(device, &joined, batch, h, w, Some(&time));
                channels = resnet.outputs;
                if let Some(attention) = attention {
                    x = attention.forward(device, &x, batch, h, w, context);
                }
            }
            if let Some(upsample) = &block.upsample {
                let doubled = device.output(batch * channels * 4 * h * w);
                device.upsample_nearest2x(&x, &doubled, batch * channels, h, w);
                (h, w) = (2 * h, 2 * w);
                x = upsample.forward(device, &doubled, batch, h, w).0;
            }
        }
        let x = self.norm_out.group(device, &x, batch, h * w, c.norm_groups, c.norm_eps, true);
        Ok(self.conv_out.forward(device, &x, batch, h, w).0)
    }
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
