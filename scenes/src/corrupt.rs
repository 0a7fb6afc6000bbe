//! Damage and augmentation for images: [`corrupt`] for testing that the rater still recognises a
//! damaged image (and for building "poor quality" examples), [`malform`] for the failures a
//! generator makes (smooth damage a denoiser learns to draw), [`augment`] for training the rater
//! on varied copies of a render without changing what it depicts.

use crate::image::{CHANNELS, IMAGE_SIZE, IMAGE_VALUES, Image};
use crate::rng::{Rng, derive_seed};

/// Largest effects, reached at severity 1.
const MAX_BRIGHTNESS_SHIFT: f32 = 50.0;
const MAX_CONTRAST_CHANGE: f32 = 0.5;
const MAX_CHANNEL_SHIFT: f32 = 30.0;
const MAX_NOISE_SIGMA: f32 = 40.0;
const MAX_BLOCK_SIDE: f32 = 14.0;

/// Largest effects of [`malform`], reached at severity 1.
const MAX_WASH_OUT: f32 = 0.9;
const MAX_CAST: f32 = 90.0;
const SMEAR_PASSES: usize = 3;
const MAX_MISSING_SIDE: f32 = 18.0;

/// Random streams of the caller's seed, so that `corrupt`, `malform` and `augment` with one seed
/// differ.
const CORRUPT_STREAM: u64 = 1;
const AUGMENT_STREAM: u64 = 2;
const MALFORM_STREAM: u64 = 3;

/// Damages `image` by an amount that grows with `severity` (clamped to `[0, 1]`; NaN counts as 0):
/// colour jitter (brightness, contrast, per-channel shift), a 3×3 box blur blended in by
/// `severity`, Gaussian noise with σ up to 40 levels, and a square block of up to 14×14 pixels
/// that is scrambled or blanked. At severity 0 the image is returned unchanged.
///
/// The random choices depend only on `seed`, and every effect scales with `severity`, so for one
/// seed a higher severity damages the same way, only more.
pub fn corrupt(image: &Image, severity: f32, seed: u64) -> Image {
    let severity = if severity.is_nan() { 0.0 } else { severity.clamp(0.0, 1.0) };
    if severity == 0.0 {
        return image.clone();
    }
    let mut rng = Rng::new(derive_seed(seed, CORRUPT_STREAM));
    // Draw every random choice before scaling, so the draws do not depend on severity.
    let brightness = rng.sign() * rng.range(0.5, 1.0) * MAX_BRIGHTNESS_SHIFT;
    let contrast = rng.sign() * rng.range(0.5, 1.0) * MAX_CONTRAST_CHANGE;
    let channel_shift: [f32; 3] = std::array::from_fn(|_| rng.range(-1.0, 1.0) * MAX_CHANNEL_SHIFT);
    let noise: Vec<f32> = (0..IMAGE_VALUES).map(|_| rng.normal() * MAX_NOISE_SIGMA).collect();
    let block_left = rng.below(IMAGE_SIZE);
    let block_top = rng.below(IMAGE_SIZE);
    let scramble = rng.chance(0.5);
    let blank_colour = [rng.range(0.0, 255.0), rng.range(0.0, 255.0), rng.range(0.0, 255.0)];
    let scramble_values: Vec<f32> = (0..IMAGE_VALUES).map(|_| rng.range(0.0, 255.0)).collect();

    let mut values: Vec<f32> = image.as_rgb().iter().map(|&byte| f32::from(byte)).collect();
    let mean = values.iter().sum::<f32>() / IMAGE_VALUES as f32;
    for (index, value) in values.iter_mut().enumerate() {
        let gain = 1.0 + severity * contrast;
        *value = mean + (*value - mean) * gain + severity * (brightness + channel_shift[index % CHANNELS]);
    }
    blend_box_blur(&mut values, severity);
    for (value, noise) in values.iter_mut().zip(&noise) {
        *value += noise * severity;
    }
    for start in square(block_left, block_top, (severity * MAX_BLOCK_SIDE).round() as usize) {
        let pixel = &mut values[start..start + CHANNELS];
        if scramble {
            pixel.copy_from_slice(&scramble_values[start..start + CHANNELS]);
        } else {
            pixel.copy_from_slice(&blank_colour);
        }
    }
    quantise(&values)
}

/// Damages `image` the way an image generator fails, by an amount that grows with `severity`
/// (clamped to `[0, 1]`; NaN counts as 0): washed-out contrast (up to 90% of the way to the
/// mean), a colour cast (up to ±90 levels per channel), a smear (three 3×3 box blurs, blended in
/// by `severity`) and a missing part (a square of up to 18×18 pixels in one flat colour). At
/// severity 0 the image is returned unchanged.
///
/// Unlike [`corrupt`] it adds no pixel noise and scrambles nothing: every effect is smooth, the
/// kind of flaw a denoiser trained on such pictures reproduces rather than denoises away. The
/// random choices depend only on `seed`, so for one seed a higher severity damages the same way,
/// only more.
pub fn malform(image: &Image, severity: f32, seed: u64) -> Image {
    let severity = if severity.is_nan() { 0.0 } else { severity.clamp(0.0, 1.0) };
    if severity == 0.0 {
        return image.clone();
    }
    let mut rng = Rng::new(derive_seed(seed, MALFORM_STREAM));
    let wash_out = rng.range(0.6, 1.0) * MAX_WASH_OUT;
    let cast: [f32; 3] = std::array::from_fn(|_| rng.range(-1.0, 1.0) * MAX_CAST);
    let missing_left = rng.below(IMAGE_SIZE);
    let missing_top = rng.below(IMAGE_SIZE);
    let missing_colour = [rng.range(0.0, 255.0), rng.range(0.0, 255.0), rng.range(0.0, 255.0)];

    let mut values: Vec<f32> = image.as_rgb().iter().map(|&byte| f32::from(byte)).collect();
    let mean = values.iter().sum::<f32>() / IMAGE_VALUES as f32;
    for (index, value) in values.iter_mut().enumerate() {
        *value = mean + (*value - mean) * (1.0 - severity * wash_out) + severity * cast[index % CHANNELS];
    }
    for _ in 0..SMEAR_PASSES {
        blend_box_blur(&mut values, severity);
    }
    for start in square(missing_left, missing_top, (severity * MAX_MISSING_SIDE).round() as usize) {
        values[start..start + CHANNELS].copy_from_slice(&missing_colour);
    }
    quantise(&values)
}

/// A mildly varied copy of `image` that depicts the same thing: mirrored half of the time, with a
/// small brightness and per-channel shift (at most ±10 and ±6 levels) and faint noise (σ = 3).
pub fn augment(image: &Image, seed: u64) -> Image {
    let mut rng = Rng::new(derive_seed(seed, AUGMENT_STREAM));
    let mirror = rng.chance(0.5);
    let brightness = rng.range(-10.0, 10.0);
    let channel_shift: [f32; 3] = std::array::from_fn(|_| rng.range(-6.0, 6.0));
    let mut values = vec![0.0; IMAGE_VALUES];
    for y in 0..IMAGE_SIZE {
        for x in 0..IMAGE_SIZE {
            let source_x = if mirror { IMAGE_SIZE - 1 - x } else { x };
            let pixel = image.pixel(source_x, y);
            for channel in 0..CHANNELS {
                values[(y * IMAGE_SIZE + x) * CHANNELS + channel] =
                    f32::from(pixel[channel]) + brightness + channel_shift[channel] + rng.normal() * 3.0;
            }
        }
    }
    quantise(&values)
}

/// Moves every value `amount` of the way to its [`box_blur`].
fn blend_box_blur(values: &mut [f32], amount: f32) {
    let blurred = box_blur(values);
    for (value, blurred) in values.iter_mut().zip(&blurred) {
        *value += (blurred - *value) * amount;
    }
}

/// The offsets of the first value of each pixel of the `side`×`side` square whose top-left
/// pixel is (`left`, `top`), clipped at the image's right and bottom edges.
fn square(left: usize, top: usize, side: usize) -> impl Iterator<Item = usize> {
    (top..(top + side).min(IMAGE_SIZE))
        .flat_map(move |y| (left..(left + side).min(IMAGE_SIZE)).map(move |x| (y * IMAGE_SIZE + x) * CHANNELS))
}

/// Mean of each pixel's 3×3 neighbourhood (clipped at the borders), per channel.
fn box_blur(values: &[f32]) -> Vec<f32> {
    let size = IMAGE_SIZE as isize;
    let mut blurred = vec![0.0; IMAGE_VALUES];
    for y in 0..size {
        for x in 0..size {
            for channel in 0..CHANNELS {
                let (mut sum, mut count) = (0.0, 0.0);
                for neighbour_y in (y - 1).max(0)..=(y + 1).min(size - 1) {
                    for neighbour_x in (x - 1).max(0)..=(x + 1).min(size - 1) {
                        sum += values[(neighbour_y * size + neighbour_x) as usize * CHANNELS + channel];
                        count += 1.0;
                    }
                }
                blurred[(y * size + x) as usize * CHANNELS + channel] = sum / count;
            }
        }
    }
    blurred
}

fn quantise(values: &[f32]) -> Image {
    let mut rgb = [0u8; IMAGE_VALUES];
    for (byte, value) in rgb.iter_mut().zip(values) {
        *byte = value.round().clamp(0.0, 255.0) as u8;
    }
    Image::from_array(rgb)
}

/// Sum of absolute differences between horizontally neighbouring values: how much pixel-level
/// texture (noise) an image has.
#[cfg(test)]
pub(crate) fn roughness(image: &Image) -> f32 {
    let mut total = 0.0;
    for y in 0..IMAGE_SIZE {
        for x in 1..IMAGE_SIZE {
            let (left, right) = (image.pixel(x - 1, y), image.pixel(x, y));
            total += (0..CHANNELS).map(|c| (f32::from(left[c]) - f32::from(right[c])).abs()).sum::<f32>();
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::render;
    use crate::world::{Concept, Group, Scene, Setting};

    fn sample_image(seed: u64) -> Image {
        let group = Group::ALL[seed as usize % Group::ALL.len()];
        let concept = Some(Concept::ALL[seed as usize % Concept::ALL.len()]);
        let setting = Setting::ALL[seed as usize % Setting::ALL.len()];
        render(&Scene { group, concept, setting }, seed)
    }

    #[test]
    fn severity_zero_is_the_identity() {
        for seed in 0..20 {
            let image = sample_image(seed);
            assert_eq!(corrupt(&image, 0.0, seed), image);
            assert_eq!(corrupt(&image, -1.0, seed), image, "negative severities clamp to 0");
            assert_eq!(corrupt(&image, f32::NAN, seed), image);
        }
    }

    #[test]
    fn damage_grows_with_severity() {
        let severities = [0.0, 0.25, 0.5, 0.75, 1.0];
        let mut means = Vec::new();
        for &severity in &severities {
            let distances: Vec<f32> = (0..40)
                .map(|seed| sample_image(seed).mean_abs_diff(&corrupt(&sample_image(seed), severity, seed + 1)))
                .collect();
            means.push(distances.iter().sum::<f32>() / distances.len() as f32);
        }
        assert_eq!(means[0], 0.0);
        for pair in means.windows(2) {
            assert!(pair[1] > pair[0] + 2.0, "mean damage must grow clearly with severity: {means:?}");
        }
        assert!(means[4] > 25.0, "severity 1 must be heavy damage: {means:?}");
    }

    #[test]
    fn malformation_is_the_identity_at_zero_and_grows_with_severity() {
        for seed in 0..20 {
            let image = sample_image(seed);
            assert_eq!(malform(&image, 0.0, seed), image);
            assert_eq!(malform(&image, f32::NAN, seed), image);
            assert_eq!(malform(&image, 3.0, seed), malform(&image, 1.0, seed), "severities above 1 clamp to 1");
            assert_ne!(malform(&image, 0.8, seed), malform(&image, 0.8, seed + 1), "the seed matters");
        }
        let means: Vec<f32> = [0.25, 0.5, 0.75, 1.0]
            .iter()
            .map(|&severity| {
                (0..40)
                    .map(|seed| sample_image(seed).mean_abs_diff(&malform(&sample_image(seed), severity, seed)))
                    .sum::<f32>()
                    / 40.0
            })
            .collect();
        for pair in means.windows(2) {
            assert!(pair[1] > pair[0] + 2.0, "mean damage must grow clearly with severity: {means:?}");
        }
        assert!(means[3] > 25.0, "severity 1 must be heavy damage: {means:?}");
    }

    /// What makes a malformation drawable: it is smooth. Neighbouring pixels differ less than in
    /// the render itself, where [`corrupt`]'s noise makes them differ more.
    #[test]
    fn malformation_is_smooth_where_corruption_is_noisy() {
        for seed in 0..20 {
            let image = sample_image(seed);
            let (clean, malformed, corrupted) =
                (roughness(&image), roughness(&malform(&image, 0.9, seed)), roughness(&corrupt(&image, 0.9, seed)));
            assert!(malformed < clean && clean < corrupted, "{malformed} / {clean} / {corrupted}");
        }
    }

    #[test]
    fn corruption_is_deterministic_and_depends_on_the_seed() {
        let image = sample_image(3);
        assert_eq!(corrupt(&image, 0.6, 9), corrupt(&image, 0.6, 9));
        assert_ne!(corrupt(&image, 0.6, 9), corrupt(&image, 0.6, 10));
        assert_eq!(corrupt(&image, 7.0, 9), corrupt(&image, 1.0, 9), "severities above 1 clamp to 1");
    }

    #[test]
    fn augmentation_is_mild_and_varied() {
        for seed in 0..30 {
            let image = sample_image(seed);
            let augmented = augment(&image, seed);
            assert_eq!(augment(&image, seed), augmented);
            // Compare with the mirror image when the augmentation mirrored.
            let mut mirrored = [0u8; IMAGE_VALUES];
            for y in 0..IMAGE_SIZE {
                for x in 0..IMAGE_SIZE {
                    let pixel = image.pixel(IMAGE_SIZE - 1 - x, y);
                    mirrored[(y * IMAGE_SIZE + x) * CHANNELS..][..CHANNELS].copy_from_slice(&pixel);
                }
            }
            let distance = image.mean_abs_diff(&augmented).min(Image::from_array(mirrored).mean_abs_diff(&augmented));
            assert!(distance < 16.0, "augmentation moved values by {distance} on average");
            assert!(distance > 0.5, "augmentation must change something");
            assert!(distance < image.mean_abs_diff(&corrupt(&image, 1.0, seed)));
        }
    }
}
