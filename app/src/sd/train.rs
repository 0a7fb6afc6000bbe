//! LoRA training of a Stable Diffusion pipeline on a set of captioned images, as diffusers'
//! `train_text_to_image_lora.py` does it (see [`gpu::sd::train`]): the images VAE-encoded (a
//! fresh draw from the latent distribution each time an image is used, times the VAE's scaling
//! factor), the captions through the frozen text encoder, random timesteps and noise from the
//! run's seed, micro-batches accumulated into each optimizer step.
//!
//! Image folders follow the convention diffusers' training scripts read: `metadata.jsonl` lines
//! `{"file_name": "a.png", "text": "a caption"}` beside the images (PNG or JPEG).

use std::path::{Path, PathBuf};

use gpu::cpu::AdamW;
use gpu::device::ImageBackward;
use gpu::kernels::noise::NoiseStream;
use gpu::sd::StableDiffusion;
use gpu::sd::train::{AdapterTensor, AdapterTensors, LoraInit, LoraSettings, LoraTrainer, TrainBatch};

/// A captioned image, decoded.
#[derive(Debug, Clone)]
pub struct Example {
    /// Where it came from (for messages).
    pub source: String,
    /// Its caption.
    pub caption: String,
    /// `3 × height × width`, values in [−1, 1].
    pub pixels: Vec<f32>,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
}

/// Problems with the training data or settings: each names the file or the setting.
#[derive(Debug, thiserror::Error)]
pub enum TrainDataError {
    /// A file that cannot be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// Anything else, said in full.
    #[error("{0}")]
    Invalid(String),
}

/// Largest side of a training image.
const MAX_SIDE: usize = 4096;

/// Decodes a training image, PNG or JPEG (told apart by their signatures), into `3 × h × w`
/// values in [−1, 1].
pub fn decode_image(bytes: &[u8], source: &str) -> Result<Example, TrainDataError> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) { decode_jpeg(bytes, source) } else { decode_png(bytes, source) }
}

/// Decodes a baseline or progressive JPEG (grey, RGB or YCbCr; CMYK refused) into `3 × h × w`
/// values in [−1, 1].
pub fn decode_jpeg(bytes: &[u8], source: &str) -> Result<Example, TrainDataError> {
    use zune_jpeg::zune_core::bytestream::ZCursor;
    use zune_jpeg::zune_core::colorspace::ColorSpace;
    use zune_jpeg::zune_core::options::DecoderOptions;
    let bad = |problem: String| TrainDataError::Invalid(format!("{source}: {problem}"));
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(MAX_SIDE)
        .set_max_height(MAX_SIDE);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let rgb = decoder.decode().map_err(|e| bad(format!("not a readable JPEG ({e:?})")))?;
    let info = decoder.info().ok_or_else(|| bad("not a readable JPEG (no header)".into()))?;
    let (width, height) = (info.width as usize, info.height as usize);
    let plane = width * height;
    if rgb.len() != 3 * plane {
        return Err(bad(format!("{} decoded bytes for a {width}×{height} RGB image", rgb.len())));
    }
    let mut pixels = vec![0f32; 3 * plane];
    for (i, pixel) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            pixels[c * plane + i] = pixel[c] as f32 / 127.5 - 1.0;
        }
    }
    Ok(Example { source: source.to_string(), caption: String::new(), pixels, height, width })
}

/// Decodes an 8-bit PNG (grey, grey + alpha, RGB or RGBA; alpha dropped) into `3 × h × w`
/// values in [−1, 1].
pub fn decode_png(bytes: &[u8], source: &str) -> Result<Example, TrainDataError> {
    let bad = |problem: String| TrainDataError::Invalid(format!("{source}: {problem}"));
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| bad(format!("not a readable PNG ({e})")))?;
    let size = reader.output_buffer_size().ok_or_else(|| bad("its size overflows".into()))?;
    if size > MAX_SIDE * MAX_SIDE * 4 {
        return Err(bad(format!("{size} bytes of pixels is more than a {MAX_SIDE}×{MAX_SIDE} image")));
    }
    let mut buffer = vec![0; size];
    let info = reader.next_frame(&mut buffer).map_err(|e| bad(format!("not a readable PNG ({e})")))?;
    buffer.truncate(info.buffer_size());
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err(bad("an indexed PNG that did not expand".into())),
    };
    let (width, height) = (info.width as usize, info.height as usize);
    let plane = width * height;
    let mut pixels = vec![0f32; 3 * plane];
    for (i, pixel) in buffer.chunks_exact(channels).enumerate().take(plane) {
        for c in 0..3 {
            let value = if channels < 3 { pixel[0] } else { pixel[c] };
            pixels[c * plane + i] = value as f32 / 127.5 - 1.0;
        }
    }
    Ok(Example { source: source.to_string(), caption: String::new(), pixels, height, width })
}

/// Reads an image folder with its `metadata.jsonl`.
pub fn read_image_folder(dir: &Path) -> Result<Vec<Example>, TrainDataError> {
    let metadata = dir.join("metadata.jsonl");
    let text =
        std::fs::read_to_string(&metadata).map_err(|error| TrainDataError::Read { path: metadata.clone(), error })?;
    let mut examples = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {}", metadata.display(), number + 1);
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| TrainDataError::Invalid(format!("{}: not JSON ({e})", at())))?;
        let field = |name: &str| {
            value.get(name).and_then(|v| v.as_str()).map(str::to_string).ok_or_else(|| {
                TrainDataError::Invalid(format!(
                    "{}: needs a string {name:?} (diffusers' image folder convention)",
                    at()
                ))
            })
        };
        let (file, caption) = (field("file_name")?, field("text")?);
        let relative = Path::new(&file);
        if relative.is_absolute() || relative.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(TrainDataError::Invalid(format!("{}: {file:?} is not a path inside the folder", at())));
        }
        let path = dir.join(relative);
        let lower = file.to_ascii_lowercase();
        if ![".png", ".jpg", ".jpeg"].iter().any(|extension| lower.ends_with(extension)) {
            return Err(TrainDataError::Invalid(format!(
                "{}: {file} is neither PNG nor JPEG; thitl reads those (convert others first, e.g. with ImageMagick's `mogrify -format png`)",
                at()
            )));
        }
        let bytes = std::fs::read(&path).map_err(|error| TrainDataError::Read { path: path.clone(), error })?;
        let mut example = decode_image(&bytes, &path.display().to_string())?;
        example.caption = caption;
        examples.push(example);
    }
    if examples.is_empty() {
        return Err(TrainDataError::Invalid(format!("{} lists no images", metadata.display())));
    }
    same_size(&examples)?;
    Ok(examples)
}

/// The one size all `examples` share.
fn same_size<'a>(examples: impl IntoIterator<Item = &'a Example>) -> Result<(usize, usize), TrainDataError> {
    let mut examples = examples.into_iter();
    let first = examples.next().ok_or_else(|| TrainDataError::Invalid("no training images".into()))?;
    let (height, width) = (first.height, first.width);
    if let Some(other) = examples.find(|e| (e.height, e.width) != (height, width)) {
        return Err(TrainDataError::Invalid(format!(
            "{} is {}×{} but {} is {height}×{width}: training images must share one size (the model's resolution)",
            other.source, other.height, other.width, first.source
        )));
    }
    Ok((height, width))
}

/// The training run's settings.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Adapter shape.
    pub lora: LoraSettings,
    /// Optimizer steps.
    pub steps: u32,
    /// Images per optimizer step.
    pub batch: usize,
    /// Images per forward/backward pass (gradients of `batch / micro_batch` passes are summed).
    pub micro_batch: usize,
    /// AdamW's settings (learning rate, weight decay, gradient clipping).
    pub optimizer: AdamW,
    /// Seed of the initial adapter, the image order, the latent draws, noise and timesteps.
    pub seed: u64,
    /// Weight of the prior-preservation images' loss.
    pub prior_weight: f32,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            lora: LoraSettings::default(),
            steps: 100,
            batch: 1,
            micro_batch: 1,
            optimizer: AdamW { lr: 1e-4, weight_decay: 1e-2, ..AdamW::default() },
            seed: 0,
            prior_weight: 1.0,
        }
    }
}

/// What a run produced.
pub struct Trained {
    /// The adapter's tensors (PEFT keys).
    pub adapter: Vec<AdapterTensor>,
    /// Its shape.
    pub settings: LoraSettings,
    /// The mean loss of each optimizer step.
    pub losses: Vec<f32>,
}

impl Trained {
    /// The tensors.
    pub fn tensors(&self) -> &AdapterTensors {
        &self.adapter
    }
}

/// Trains a LoRA adapter on `pipeline`'s UNet from `examples`, with `prior` (the model's own
/// pictures of other subjects, may be empty) as prior preservation: each step's loss is the
/// examples' mean plus `prior_weight ×` the prior images' mean, as DreamBooth's. `progress(step,
/// steps, loss)` after each optimizer step; `false` from it stops training with an error.
pub fn train_lora<D: ImageBackward>(
    device: &D,
    pipeline: StableDiffusion<D>,
    examples: &[Example],
    prior: &[Example],
    options: &TrainOptions,
    progress: &mut dyn FnMut(u32, u32, f32) -> bool,
) -> Result<Trained, TrainDataError> {
    let invalid = |message: String| TrainDataError::Invalid(message);
    if options.batch == 0 || options.micro_batch == 0 || !options.batch.is_multiple_of(options.micro_batch) {
        return Err(invalid(format!(
            "a batch of {} in micro-batches of {}: both must be positive, the batch a multiple of the micro-batch",
            options.batch, options.micro_batch
        )));
    }
    if options.steps == 0 {
        return Err(invalid("--steps must be at least 1".into()));
    }
    let (height, width) = same_size(examples.iter().chain(prior))?;
    let StableDiffusion { tokenizer, text_encoder, unet, vae, scheduler } = pipeline;
    let vae_factor = vae.config().scale_factor();
    let factor = vae_factor << unet.config().downsamplings();
    if !height.is_multiple_of(factor) || !width.is_multiple_of(factor) {
        return Err(invalid(format!(
            "images of {height}×{width}: this pipeline needs sides that are multiples of {factor}"
        )));
    }
    let scaling = vae.config().scaling_factor;
    let length = tokenizer.model_max_length();
    // Latent distributions and text conditioning, once per image.
    let encode = |set: &[Example]| -> Result<Vec<Encoded>, TrainDataError> {
        set.iter()
            .map(|example| {
                let distribution = vae.encode(device, &example.pixels, 1, height, width).map_err(invalid)?;
                let ids = tokenizer
                    .encode_padded(&example.caption)
                    .map_err(|e| invalid(format!("{}: {e}", example.source)))?;
                let hidden = text_encoder.forward(device, &ids, length).map_err(invalid)?;
                let values = length * text_encoder.config().hidden_size;
                let context = device.download(&hidden, values).map_err(|e| invalid(e.to_string()))?;
                Ok(Encoded { distribution, context })
            })
            .collect()
    };
    let sets = [(encode(examples)?, 1.0f32), (encode(prior)?, options.prior_weight)];
    drop(vae);
    drop(text_encoder);
    let (latent_h, latent_w) = (height / vae_factor, width / vae_factor);
    let mut trainer = LoraTrainer::new(
        device,
        unet,
        &scheduler,
        options.lora.clone(),
        LoraInit::Seeded(options.seed),
        options.optimizer,
    )
    .map_err(|e| invalid(e.to_string()))?;
    let mut rng = gpu::rng::SplitMix64::new(gpu::rng::splitmix(options.seed ^ 0x7472_6169_6e00));
    let noise = NoiseStream::new(options.seed.wrapping_add(1));
    let mut draws: u32 = 0;
    let mut gaussian = |out: &mut [f32]| {
        noise.fill(draws, 1.0, out);
        draws = draws.wrapping_add(out.len() as u32);
    };
    let train_steps = scheduler.train_steps as u64;
    let per_image = 4 * latent_h * latent_w;
    let mut orders: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
    let mut losses = Vec::with_capacity(options.steps as usize);
    for step in 1..=options.steps {
        let mut loss_sum = 0.0;
        for ((set, set_weight), order) in sets.iter().zip(&mut orders) {
            if set.is_empty() || *set_weight == 0.0 {
                continue;
            }
            for _ in 0..options.batch / options.micro_batch {
                let m = options.micro_batch;
                let (mut latents, mut noise_values) = (vec![0f32; m * per_image], vec![0f32; m * per_image]);
                let mut context = Vec::new();
                let mut timesteps = Vec::with_capacity(m);
                for i in 0..m {
                    if order.is_empty() {
                        // A new epoch: the images in a fresh random order.
                        *order = (0..set.len()).collect();
                        for j in (1..order.len()).rev() {
                            order.swap(j, (rng.next_u64() % (j as u64 + 1)) as usize);
                        }
                    }
                    let encoded = &set[order.pop().expect("refilled")];
                    let x0 = &mut latents[i * per_image..][..per_image];
                    gaussian(x0);
                    let distribution = &encoded.distribution;
                    for ((x, &mean), &std) in x0.iter_mut().zip(&distribution.mean).zip(&distribution.std) {
                        *x = (mean + std * *x) * scaling;
                    }
                    gaussian(&mut noise_values[i * per_image..][..per_image]);
                    context.extend_from_slice(&encoded.context);
                    timesteps.push((rng.next_u64() % train_steps) as u32);
                }
                let batch = TrainBatch {
                    latents: &latents,
                    noise: &noise_values,
                    timesteps: &timesteps,
                    context: &context,
                    context_len: length,
                    batch: m,
                    height: latent_h,
                    width: latent_w,
                };
                let weight = set_weight * m as f32 / options.batch as f32;
                loss_sum += weight * trainer.accumulate(device, &batch, weight).map_err(|e| invalid(e.to_string()))?;
            }
        }
        trainer.step(device);
        losses.push(loss_sum);
        if !progress(step, options.steps, loss_sum) {
            return Err(invalid(format!("training stopped at step {step} of {}", options.steps)));
        }
    }
    let adapter = trainer.adapter(device).map_err(|e| invalid(e.to_string()))?;
    Ok(Trained { adapter, settings: trainer.settings().clone(), losses })
}

/// An image's latent distribution and its caption's text conditioning.
struct Encoded {
    distribution: gpu::sd::vae::LatentDistribution,
    context: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gpu/tests/fixtures/sd/images").join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// JPEG images (4:2:0 and 4:4:4 progressive colour, grey) decode as Pillow decodes them
    /// (`reference/sd_image_fixtures.py`), within the few levels two conforming decoders may differ
    /// by (inverse DCT and chroma upsampling are not bit-exact across libraries).
    #[test]
    fn jpegs_decode_as_pillow_decodes_them() {
        for case in ["rgb420", "rgb444_progressive", "grey"] {
            let jpeg = decode_image(&fixture(&format!("{case}.jpg")), case).unwrap();
            let reference = decode_image(&fixture(&format!("{case}.decoded.png")), case).unwrap();
            assert_eq!((jpeg.height, jpeg.width), (16, 24), "{case}");
            assert_eq!((reference.height, reference.width), (16, 24), "{case}");
            let levels =
                jpeg.pixels.iter().zip(&reference.pixels).map(|(a, b)| ((a - b) * 127.5).abs()).fold(0f32, f32::max);
            let mean = jpeg.pixels.iter().zip(&reference.pixels).map(|(a, b)| ((a - b) * 127.5).abs()).sum::<f32>()
                / jpeg.pixels.len() as f32;
            assert!(levels <= 8.0 && mean <= 1.5, "{case}: up to {levels} levels from Pillow's decoding (mean {mean})");
        }
        let grey = decode_image(&fixture("grey.jpg"), "grey").unwrap();
        let plane = 16 * 24;
        assert_eq!(grey.pixels[..plane], grey.pixels[plane..2 * plane], "a grey JPEG gives three equal channels");
    }

    #[test]
    fn broken_images_are_clear_errors() {
        let jpeg = fixture("rgb420.jpg");
        let error = decode_image(&jpeg[..jpeg.len() / 3], "cut.jpg").unwrap_err().to_string();
        assert!(error.starts_with("cut.jpg: "), "{error}");
        let error = decode_image(b"GIF89a....", "a.gif").unwrap_err().to_string();
        assert!(error.contains("a.gif") && error.contains("PNG"), "{error}");
    }
}
