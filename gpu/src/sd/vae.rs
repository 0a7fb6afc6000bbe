//! diffusers' `AutoencoderKL` as Stable Diffusion uses it: the decoder turns latents into images
//! (`post_quant_conv`, `conv_in`, mid block with one single-head self-attention, up blocks,
//! norm, SiLU, `conv_out`); the encoder gives the mean and standard deviation of the latent
//! distribution of an image (part of fine-tuning).

use crate::device::ImageOps;

use super::config::VaeConfig;
use super::nn::{Attention, Conv, Norm, ResnetBlock, add};
use super::weights::{ComponentWeights, WeightsError};

const EPS: f32 = 1e-6;

/// The mid block: ResNet, group-normed self-attention over the pixels (one head), ResNet.
struct MidBlock<D: ImageOps> {
    first: ResnetBlock<D>,
    attention: Option<(Norm<D>, Attention<D>)>,
    second: ResnetBlock<D>,
    channels: usize,
    groups: usize,
}

impl<D: ImageOps> MidBlock<D> {
    fn load(
        device: &D,
        w: &mut ComponentWeights,
        prefix: &str,
        channels: usize,
        groups: usize,
        attention: bool,
    ) -> Result<Self, WeightsError> {
        // Checkpoints converted by older diffusers name the projections query/key/value/proj_attn.
        let a = format!("{prefix}.attentions.0");
        if w.contains(&format!("{a}.query.weight")) {
            let old = a.clone();
            w.rename(|name| {
                let rest = name.strip_prefix(&old)?;
                let renamed = match rest {
                    r if r.starts_with(".query.") => r.replacen(".query.", ".to_q.", 1),
                    r if r.starts_with(".key.") => r.replacen(".key.", ".to_k.", 1),
                    r if r.starts_with(".value.") => r.replacen(".value.", ".to_v.", 1),
                    r if r.starts_with(".proj_attn.") => r.replacen(".proj_attn.", ".to_out.0.", 1),
                    _ => return None,
                };
                Some(format!("{old}{renamed}"))
            });
        }
        Ok(MidBlock {
            first: ResnetBlock::load(device, w, &format!("{prefix}.resnets.0"), channels, channels, None, groups, EPS)?,
            attention: attention
                .then(|| -> Result<_, WeightsError> {
                    Ok((
                        Norm::load(device, w, &format!("{a}.group_norm"), channels)?,
                        Attention::load(
                            device,
                            w,
                            &a,
                            ["to_q", "to_k", "to_v", "to_out.0"],
                            channels,
                            channels,
                            1,
                            channels,
                        )?,
                    ))
                })
                .transpose()?,
            second: ResnetBlock::load(
                device,
                w,
                &format!("{prefix}.resnets.1"),
                channels,
                channels,
                None,
                groups,
                EPS,
            )?,
            channels,
            groups,
        })
    }

    fn forward(&self, device: &D, x: &D::Buffer, batch: usize, h: usize, w: usize) -> D::Buffer {
        let x = self.first.forward(device, x, batch, h, w, None);
        let x = match &self.attention {
            Some((norm, attention)) => {
                let (c, hw) = (self.channels, h * w);
                let normed = norm.group(device, &x, batch, hw, self.groups, EPS, false);
                let tokens = device.output(batch * c * hw);
                device.transpose(&normed, &tokens, batch, c, hw);
                let attended = attention.forward(device, &tokens, batch, hw, None, false);
                let image = device.output(batch * c * hw);
                device.transpose(&attended, &image, batch, hw, c);
                add(device, &image, &x, batch * c * hw)
            }
            None => x,
        };
        self.second.forward(device, &x, batch, h, w, None)
    }
}

/// A block of ResNets and its optional resampling convolution.
type Stage<D> = (Vec<ResnetBlock<D>>, Option<Conv<D>>);

struct Decoder<D: ImageOps> {
    conv_in: Conv<D>,
    mid: MidBlock<D>,
    up: Vec<Stage<D>>,
    norm_out: Norm<D>,
    conv_out: Conv<D>,
}

struct Encoder<D: ImageOps> {
    conv_in: Conv<D>,
    down: Vec<Stage<D>>,
    mid: MidBlock<D>,
    norm_out: Norm<D>,
    conv_out: Conv<D>,
}

/// The VAE on a device: decoder, and the encoder when the weights have it.
pub struct Vae<D: ImageOps> {
    config: VaeConfig,
    post_quant: Option<Conv<D>>,
    quant: Option<Conv<D>>,
    decoder: Decoder<D>,
    encoder: Option<Encoder<D>>,
}

/// A latent distribution: per-value mean and standard deviation.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentDistribution {
    /// Mean (`batch × latent_channels × h × w`), not yet scaled by the scaling factor.
    pub mean: Vec<f32>,
    /// Standard deviation, `exp(0.5 · clamp(logvar, −30, 20))`.
    pub std: Vec<f32>,
}

impl<D: ImageOps> Vae<D> {
    /// Builds the VAE from its config and weights (the encoder is loaded when present).
    pub fn load(device: &D, config: &VaeConfig, mut weights: ComponentWeights) -> Result<Self, WeightsError> {
        let c = config;
        let w = &mut weights;
        let g = c.norm_groups;
        let latent = c.latent_channels;
        let blocks = &c.block_out_channels;
        let top = *blocks.last().expect("checked non-empty");
        let post_quant = (c.use_quant_conv && c.use_post_quant_conv)
            .then(|| Conv::same(device, w, "post_quant_conv", latent, latent, 1))
            .transpose()?;
        let mut up = Vec::new();
        let reversed: Vec<usize> = blocks.iter().rev().copied().collect();
        let mut output = reversed[0];
        for (i, &channels) in reversed.iter().enumerate() {
            let input = output;
            output = channels;
            let resnets = (0..=c.layers_per_block)
                .map(|j| {
                    let inputs = if j == 0 { input } else { output };
                    ResnetBlock::load(
                        device,
                        w,
                        &format!("decoder.up_blocks.{i}.resnets.{j}"),
                        inputs,
                        output,
                        None,
                        g,
                        EPS,
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            let upsample = (i + 1 < reversed.len())
                .then(|| Conv::same(device, w, &format!("decoder.up_blocks.{i}.upsamplers.0.conv"), output, output, 3))
                .transpose()?;
            up.push((resnets, upsample));
        }
        let decoder = Decoder {
            conv_in: Conv::same(device, w, "decoder.conv_in", latent, top, 3)?,
            mid: MidBlock::load(device, w, "decoder.mid_block", top, g, c.mid_attention)?,
            up,
            norm_out: Norm::load(device, w, "decoder.conv_norm_out", blocks[0])?,
            conv_out: Conv::same(device, w, "decoder.conv_out", blocks[0], c.out_channels, 3)?,
        };
        let encoder = if w.contains("encoder.conv_in.weight") {
            let mut down = Vec::new();
            let mut output = blocks[0];
            for (i, &channels) in blocks.iter().enumerate() {
                let input = output;
                output = channels;
                let resnets = (0..c.layers_per_block)
                    .map(|j| {
                        let inputs = if j == 0 { input } else { output };
                        ResnetBlock::load(
                            device,
                            w,
                            &format!("encoder.down_blocks.{i}.resnets.{j}"),
                            inputs,
                            output,
                            None,
                            g,
                            EPS,
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                // diffusers pads the strided convolution by one row and column below and right.
                let downsample = (i + 1 < blocks.len())
                    .then(|| {
                        Conv::load(
                            device,
                            w,
                            &format!("encoder.down_blocks.{i}.downsamplers.0.conv"),
                            output,
                            output,
                            3,
                            2,
                            (0, 1),
                        )
                    })
                    .transpose()?;
                down.push((resnets, downsample));
            }
            Some(Encoder {
                conv_in: Conv::same(device, w, "encoder.conv_in", c.in_channels, blocks[0], 3)?,
                down,
                mid: MidBlock::load(device, w, "encoder.mid_block", top, g, c.mid_attention)?,
                norm_out: Norm::load(device, w, "encoder.conv_norm_out", top)?,
                conv_out: Conv::same(device, w, "encoder.conv_out", top, 2 * latent, 3)?,
            })
        } else {
            None
        };
        let quant = (c.use_quant_conv && encoder.is_some())
            .then(|| Conv::same(device, w, "quant_conv", 2 * latent, 2 * latent, 1))
            .transpose()?;
        Ok(Vae { config: config.clone(), post_quant, quant, decoder, encoder })
    }

    /// The config.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// Decodes `latents` as the pipeline holds them (it divides by the scaling factor first):
    /// raw images in about [−1, 1], `batch × out_channels × 8h × 8w` (for SD's 4 blocks).
    pub fn decode(&self, device: &D, latents: &[f32], batch: usize, height: usize, width: usize) -> D::Buffer {
        let c = &self.config;
        let scaled: Vec<f32> = latents.iter().map(|v| v / c.scaling_factor + c.shift_factor).collect();
        let x = device.upload(&scaled);
        let x = match &self.post_quant {
            Some(conv) => conv.forward(device, &x, batch, height, width).0,
            None => x,
        };
        let d = &self.decoder;
        let (mut x, mut h, mut w) = d.conv_in.forward(device, &x, batch, height, width);
        x = d.mid.forward(device, &x, batch, h, w);
        for (resnets, upsample) in &d.up {
            for resnet in resnets {
                x = resnet.forward(device, &x, batch, h, w, None);
            }
            if let Some(conv) = upsample {
                let channels = conv.inputs;
                let doubled = device.output(batch * channels * 4 * h * w);
                device.upsample_nearest2x(&x, &doubled, batch * channels, h, w);
                (h, w) = (2 * h, 2 * w);
                x = conv.forward(device, &doubled, batch, h, w).0;
            }
        }
        let x = d.norm_out.group(device, &x, batch, h * w, c.norm_groups, EPS, true);
        d.conv_out.forward(device, &x, batch, h, w).0
    }

    /// The latent distribution of `images` (`batch × in_channels × height × width`, values in
    /// [−1, 1]); `None` when the weights have no encoder.
    pub fn encode(
        &self,
        device: &D,
        images: &[f32],
        batch: usize,
        height: usize,
        width: usize,
    ) -> Result<LatentDistribution, String> {
        let c = &self.config;
        let e = self.encoder.as_ref().ok_or("the VAE weights have no encoder")?;
        let factor = c.scale_factor();
        if !height.is_multiple_of(factor) || !width.is_multiple_of(factor) {
            return Err(format!("images of {height}×{width} are not multiples of the VAE's factor {factor}"));
        }
        let x = device.upload(images);
        let (mut x, mut h, mut w) = e.conv_in.forward(device, &x, batch, height, width);
        for (resnets, downsample) in &e.down {
            for resnet in resnets {
                x = resnet.forward(device, &x, batch, h, w, None);
            }
            if let Some(conv) = downsample {
                (x, h, w) = conv.forward(device, &x, batch, h, w);
            }
        }
        x = e.mid.forward(device, &x, batch, h, w);
        let x = e.norm_out.group(device, &x, batch, h * w, c.norm_groups, EPS, true);
        let (mut x, _, _) = e.conv_out.forward(device, &x, batch, h, w);
        if let Some(conv) = &self.quant {
            x = conv.forward(device, &x, batch, h, w).0;
        }
        let moments = device.download(&x, batch * 2 * c.latent_channels * h * w).map_err(|e| e.to_string())?;
        let per = c.latent_channels * h * w;
        let (mut mean, mut std) = (Vec::with_capacity(batch * per), Vec::with_capacity(batch * per));
        for image in moments.chunks(2 * per) {
            mean.extend_from_slice(&image[..per]);
            std.extend(image[per..].iter().map(|logvar| (0.5 * logvar.clamp(-30.0, 20.0)).exp()));
        }
        Ok(LatentDistribution { mean, std })
    }
}
