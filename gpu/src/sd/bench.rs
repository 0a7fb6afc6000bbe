//! Speed of Stable Diffusion 1.5 at full size on a device (`thitl bench sd`): the published
//! architecture (UNet 860M, CLIP ViT-L/14's text tower, the VAE) with synthetic weights (speed
//! does not depend on the values), timed as a pipeline call: the text encoder on the guidance
//! batch, `steps` guided UNet evaluations with DDIM updates, the VAE decode.

use std::path::Path;
use std::time::Instant;

use crate::device::ImageOps;
use crate::rng::SplitMix64;

use super::clip::ClipTextModel;
use super::config::{ClipConfig, ConfigFile, UnetConfig, VaeConfig};
use super::sample::SdError;
use super::scheduler::{Scheduler, SchedulerConfig, SchedulerKind};
use super::single_file::{SD15_SCHEDULER, SD15_TEXT_ENCODER, SD15_UNET, SD15_VAE};
use super::unet::Unet;
use super::vae::Vae;
use super::weights::ComponentWeights;

/// What to time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdBenchOptions {
    /// Image side in pixels (a multiple of 64).
    pub size: usize,
    /// Guided denoising steps.
    pub steps: usize,
    /// Images per call, one measurement each.
    pub batches: Vec<usize>,
}

/// One measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct SdBenchRow {
    /// Images per call.
    pub batch: usize,
    /// Wall time of the whole call.
    pub seconds: f64,
    /// Images per second.
    pub images_per_second: f64,
    /// Median time of one guided UNet evaluation (2 × batch latents).
    pub unet_step_seconds: f64,
    /// Text encoder time.
    pub text_seconds: f64,
    /// VAE decode time.
    pub vae_seconds: f64,
}

fn parse<T>(
    name: &str,
    text: &str,
    read: impl Fn(ConfigFile) -> Result<T, super::config::ConfigError>,
) -> Result<T, SdError> {
    Ok(read(ConfigFile::parse(Path::new(name), text)?)?)
}

/// Builds SD 1.5 with synthetic weights on `device` and times a pipeline call per batch size
/// (after one warm-up UNet evaluation); `progress` hears what is happening.
pub fn run<D: ImageOps>(
    device: &D,
    options: &SdBenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<SdBenchRow>, SdError> {
    if options.size == 0 || !options.size.is_multiple_of(64) {
        return Err(SdError::Invalid(format!(
            "the image size must be a positive multiple of 64, got {}",
            options.size
        )));
    }
    let clip = parse("sd15/text_encoder.json", SD15_TEXT_ENCODER, ClipConfig::from_file)?;
    let unet_config = parse("sd15/unet.json", SD15_UNET, UnetConfig::from_file)?;
    let vae_config = parse("sd15/vae.json", SD15_VAE, VaeConfig::from_file)?;
    let scheduler = parse("sd15/scheduler.json", SD15_SCHEDULER, SchedulerConfig::from_file)?;
    progress("building SD 1.5 (synthetic weights)");
    let text = ClipTextModel::load(device, &clip, ComponentWeights::synthetic(1))?;
    let unet = Unet::load(device, &unet_config, ComponentWeights::synthetic(2))?;
    let vae = Vae::load(device, &vae_config, ComponentWeights::synthetic(3))?;
    device.synchronize()?;
    let side = options.size / 8;
    let per_image = 4 * side * side;
    let mut rng = SplitMix64::new(4);
    let mut values = |len: usize| -> Vec<f32> {
        (0..len).map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0).collect()
    };
    let mut rows = Vec::new();
    for &batch in &options.batches {
        let evaluations = 2 * batch;
        progress(&format!("batch {batch}: warm-up"));
        let ids: Vec<u32> = (0..evaluations * 77).map(|i| (i as u32 * 7919) % clip.vocab_size as u32).collect();
        let context = text.forward(device, &ids, 77).map_err(SdError::Invalid)?;
        let warm = unet
            .forward(
                device,
                &device.upload(&values(evaluations * per_image)),
                evaluations,
                side,
                side,
                &vec![500.0; evaluations],
                &context,
                77,
            )
            .map_err(SdError::Invalid)?;
        device.download(&warm, 1)?;

        let start = Instant::now();
        let context = text.forward(device, &ids, 77).map_err(SdError::Invalid)?;
        device.download(&context, 1)?;
        let text_seconds = start.elapsed().as_secs_f64();
        let mut scheduler =
            Scheduler::new(&scheduler, Some(SchedulerKind::Ddim), options.steps, 0.0).map_err(SdError::Invalid)?;
        let mut latents = values(batch * per_image);
        let mut step_times = Vec::new();
        for (index, &t) in scheduler.timesteps().to_vec().iter().enumerate() {
            let step = Instant::now();
            let mut input = latents.clone();
            input.extend_from_slice(&latents);
            let output = unet
                .forward(
                    device,
                    &device.upload(&input),
                    evaluations,
                    side,
                    side,
                    &vec![t as f32; evaluations],
                    &context,
                    77,
                )
                .map_err(SdError::Invalid)?;
            let output = device.download(&output, evaluations * per_image)?;
            let (unconditional, conditional) = output.split_at(batch * per_image);
            let guided: Vec<f32> = unconditional.iter().zip(conditional).map(|(u, c)| u + 7.5 * (c - u)).collect();
            scheduler.step(index, &guided, &mut latents, None).map_err(SdError::Invalid)?;
            step_times.push(step.elapsed().as_secs_f64());
            progress(&format!("batch {batch}: step {}/{}", index + 1, options.steps));
        }
        let vae_start = Instant::now();
        let image = vae.decode(device, &latents, batch, side, side);
        device.download(&image, 1)?;
        let vae_seconds = vae_start.elapsed().as_secs_f64();
        let seconds = start.elapsed().as_secs_f64();
        step_times.sort_by(f64::total_cmp);
        rows.push(SdBenchRow {
            batch,
            seconds,
            images_per_second: batch as f64 / seconds,
            unet_step_seconds: step_times[step_times.len() / 2],
            text_seconds,
            vae_seconds,
        });
    }
    Ok(rows)
}
