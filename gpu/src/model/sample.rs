//! DDIM sampling with classifier-free guidance and negative prompts (DDPM ancestral sampling is
//! DDIM with η = 1).

use super::Dit;
use super::config::alpha_bars;
use super::train::TrainBatch;
use crate::context::GpuError;
use crate::device::Device;
use crate::kernels::elementwise::Elementwise;
use crate::kernels::noise::NoiseStream;
use crate::rng;

impl<D: Device> Dit<D> {
    /// DDIM sampling with classifier-free guidance: `ids` are the prompts (`[B, max_tokens]`),
    /// `negative` the prompts whose prediction replaces the unconditional one (all padding = the
    /// null text). Deterministic in `seed`. Returns images `[B, C, H, W]`.
    pub fn sample(
        &self,
        device: &D,
        options: &SampleOptions,
        ids: &[u32],
        negative: Option<&[u32]>,
    ) -> Result<Vec<f32>, GpuError> {
        self.sample_with_progress(device, options, ids, negative, &mut |_, _| true)
    }

    /// [`Dit::sample`], calling `progress(done, total)` after each step; returning `false` from
    /// it stops the sampling with [`GpuError::Cancelled`].
    pub fn sample_with_progress(
        &self,
        device: &D,
        options: &SampleOptions,
        ids: &[u32],
        negative: Option<&[u32]>,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Vec<f32>, GpuError> {
        let len = self.check_prompts(ids, negative)? * self.config.image_len();
        let x = device.zeros(len);
        device.noise(NoiseStream::new(options.seed), 0, &x, len);
        self.denoise(device, options, x, ids, negative, None, progress)
    }

    /// [`Dit::sample_with_progress`] with each image's noise — its starting noise and, with η > 0,
    /// every step's — drawn from its own seed (`seeds[b]` for image `b`), so an image depends
    /// only on its prompt and seed, whatever else is in the batch. `options.seed` is not used.
    pub fn sample_seeded(
        &self,
        device: &D,
        options: &SampleOptions,
        ids: &[u32],
        negative: Option<&[u32]>,
        seeds: &[u64],
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Vec<f32>, GpuError> {
        let config = &self.config;
        let batch = self.check_prompts(ids, negative)?;
        if seeds.len() != batch {
            return Err(GpuError::Shape(format!("{} seeds for a batch of {batch} prompts", seeds.len())));
        }
        let per_image = config.image_len();
        let mut start = vec![0.0f32; batch * per_image];
        for (image, seed) in start.chunks_exact_mut(per_image).zip(seeds) {
            NoiseStream::new(*seed).fill(0, 1.0, image);
        }
        let x = device.upload(&start);
        self.denoise(device, options, x, ids, negative, Some(seeds), progress)
    }

    /// The batch size of `ids`, after checking them and the negative prompts (same count,
    /// ids inside the vocabulary).
    fn check_prompts(&self, ids: &[u32], negative: Option<&[u32]>) -> Result<usize, GpuError> {
        let config = &self.config;
        let batch = ids.len() / config.max_tokens.max(1);
        let images = vec![0.0; batch * config.image_len()];
        for prompts in std::iter::once(ids).chain(negative) {
            TrainBatch { images: images.clone(), ids: prompts.to_vec() }.samples(config)?;
        }
        Ok(batch)
    }

    /// DDIM with guidance from the starting noise `x` (checked prompts; `x` is consumed). With
    /// η > 0, step `k`'s noise for image `b` is element `b·len(image)…` of the stream
    /// [`eta_stream`]`(options.seed, k)`, or with `image_seeds` the start of
    /// [`eta_stream`]`(image_seeds[b], k)`: either way it does not depend on the batch size.
    #[allow(clippy::too_many_arguments)]
    fn denoise(
        &self,
        device: &D,
        options: &SampleOptions,
        x: D::Buffer,
        ids: &[u32],
        negative: Option<&[u32]>,
        image_seeds: Option<&[u64]>,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Vec<f32>, GpuError> {
        let config = &self.config;
        let batch = ids.len() / config.max_tokens;
        let per_image = config.image_len();
        let len = batch * per_image;
        let guided = options.guidance_scale != 1.0;
        let mut all_ids = ids.to_vec();
        if guided {
            match negative {
                Some(negative) => all_ids.extend_from_slice(negative),
                None => all_ids.extend(std::iter::repeat_n(0, ids.len())),
            }
        }
        let bars = alpha_bars();
        let steps = options.steps.max(1);
        let stride = 1000 / steps;
        let sequence: Vec<usize> = (0..steps).map(|i| (i * stride).min(999)).collect();
        let mut noise = device.zeros(len);
        for (k, i) in (0..steps).rev().enumerate() {
            let t = sequence[i];
            let alpha_bar = bars[t] as f32;
            let alpha_bar_prev = if i == 0 { 1.0 } else { bars[sequence[i - 1]] as f32 };
            let epsilon = if guided {
                // One forward on the doubled batch [x; x] with [prompts; negative or null].
                let doubled = device.zeros(2 * len);
                device.elementwise(Elementwise::AddBroadcast { period: len }, Some(&x), None, None, &doubled, 2 * len);
                let both = self.forward_internal(device, &doubled, &vec![t as f32; 2 * batch], &all_ids, false).0;
                let guided_epsilon = device.zeros(len);
                device.elementwise(
                    Elementwise::GuidanceHalves { scale: options.guidance_scale },
                    Some(&both),
                    None,
                    None,
                    &guided_epsilon,
                    len,
                );
                guided_epsilon
            } else {
                self.forward_internal(device, &x, &vec![t as f32; batch], ids, false).0
            };
            let step = crate::cpu::DdimStep { alpha_bar, alpha_bar_prev, eta: options.eta };
            if options.eta > 0.0 {
                match image_seeds {
                    Some(seeds) => {
                        let mut host = vec![0.0f32; len];
                        for (image, seed) in host.chunks_exact_mut(per_image).zip(seeds) {
                            eta_stream(*seed, k).fill(0, 1.0, image);
                        }
                        noise = device.upload(&host);
                    }
                    None => device.noise(eta_stream(options.seed, k), 0, &noise, len),
                }
            }
            device.elementwise(
                Elementwise::Ddim { coefficients: step.coefficients() },
                Some(&epsilon),
                Some(&noise),
                None,
                &x,
                len,
            );
            // One step's buffers are freed before the next is recorded.
            device.synchronize()?;
            if !progress(k + 1, steps) {
                return Err(GpuError::Cancelled);
            }
        }
        device.download(&x, len)
    }
}

/// The stream of DDIM step `k`'s η noise for `seed` (a stream per step, so that an image's noise
/// sits at the same offset whatever the batch size; distinct from `NoiseStream::new(seed)`, the
/// starting noise).
pub fn eta_stream(seed: u64, k: usize) -> NoiseStream {
    // SplitMix64's mixing of the seed and the step.
    NoiseStream::new(rng::mix(seed ^ (k as u64 + 1).wrapping_mul(rng::GOLDEN_GAMMA)))
}

/// Options of [`Dit::sample`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleOptions {
    /// DDIM steps.
    pub steps: usize,
    /// 0 = deterministic DDIM.
    pub eta: f32,
    /// Classifier-free guidance scale (1 = no guidance, one forward per step).
    pub guidance_scale: f32,
    /// Seed of the initial noise (and of η noise).
    pub seed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The step streams are pinned: a seed recorded with a sampled image must redraw the same
    /// η noise (values from SplitMix64's mixing of `seed ^ (k + 1)·γ`, computed independently).
    #[test]
    fn eta_streams_keep_their_seeds() {
        assert_eq!(eta_stream(0, 0), NoiseStream::new(0xE220_A839_7B1D_CDAF));
        assert_eq!(eta_stream(7, 3), NoiseStream::new(0x6D1D_B36C_CBA9_82D2));
        assert_eq!(eta_stream(u64::MAX, 24), NoiseStream::new(0x34E7_0465_F29F_3088));
    }
}
