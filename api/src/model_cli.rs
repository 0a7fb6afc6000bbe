//! `thitl model …`: Stable Diffusion pipelines as users bring them (diffusers folders): the ids
//! the tokenizer gives a prompt, and sampling on thitl's own kernels.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Subcommand;
use gpu::device::{CpuDevice, ImageBackward, ImageOps, WgpuDevice};
use gpu::sd::scheduler::SchedulerKind;
use gpu::sd::{Latents, PipelineFolder, SampleOptions, StableDiffusion};
use gpu::{Backend, DeviceChoice};

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Print the token ids a diffusers StableDiffusionPipeline feeds its text encoder for TEXT
    /// (start token, the prompt's tokens, end token, padding; cut to the tokenizer's
    /// model_max_length), as one JSON line: {"input_ids": [...]}.
    Tokenize {
        /// A diffusers pipeline folder: model_index.json naming StableDiffusionPipeline, and tokenizer/.
        path: PathBuf,
        /// The prompt.
        text: String,
    },
    /// Sample a Stable Diffusion 1.x/2.x pipeline on thitl's kernels, as diffusers'
    /// StableDiffusionPipeline does (same latents in, same latents out). Prints a JSON summary.
    Sample(Box<SampleArgs>),
    /// Train a LoRA adapter on a pipeline's UNet from an image folder, as diffusers'
    /// train_text_to_image_lora.py does (attention projections adapted, the checkpoint's
    /// prediction type, AdamW, gradient clipping at 1), on thitl's kernels. DIR follows the
    /// convention diffusers' training scripts read: metadata.jsonl lines {"file_name": "a.png",
    /// "text": "a caption"} beside PNG or JPEG images of one size (the model's resolution). Writes the
    /// adapter into --out (peft: pytorch_lora_weights.safetensors, which diffusers'
    /// load_lora_weights reads; kohya: lora_kohya.safetensors for ComfyUI/A1111; merged:
    /// unet/ with the adapter added to the weights) and prints a JSON summary.
    TrainLora(Box<TrainLoraArgs>),
    /// Export a fine-tuned version of an imported pipeline (a campaign's T-HITL or traditional
    /// version) in the formats other tools load: peft (pytorch_lora_weights.safetensors, for
    /// diffusers' load_lora_weights), kohya (lora_kohya.safetensors, for ComfyUI/A1111) or merged
    /// (unet/ with the adapter added to the base UNet's weights, in f32, for from_pretrained).
    Export {
        /// The model version's id.
        version: String,
        /// The data directory.
        #[arg(long)]
        data: PathBuf,
        /// peft, kohya or merged.
        #[arg(long, default_value = "peft")]
        format: String,
        /// The folder to write into (created if needed).
        #[arg(long)]
        out: PathBuf,
    },
    /// Import a Stable Diffusion pipeline as a base model version: the folder is checked whole
    /// (configs, tokenizer, every weight's shape) before anything is written; then every file
    /// it needs becomes a blob, a manifest naming them becomes the version's weights, and the
    /// version's config records the family and the components' configs. Generation jobs (and so
    /// campaigns' probe and candidate images) then run on it.
    Import {
        /// A diffusers pipeline folder, or a single-file SD 1.x checkpoint (see --config, --tokenizer).
        path: PathBuf,
        /// The data directory (created if needed).
        #[arg(long)]
        data: PathBuf,
        /// The version's name (default: the folder's name).
        #[arg(long)]
        name: Option<String>,
        /// Weights variant to import (e.g. fp16) where the folder has several.
        #[arg(long)]
        variant: Option<String>,
        /// Print one JSON object instead of a sentence.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        single_file: SingleFileArgs,
    },
}

#[derive(clap::Args)]
pub struct SampleArgs {
    /// A diffusers pipeline folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/,
    /// scheduler/), or a single-file SD 1.x checkpoint (.safetensors with the original key names;
    /// see --config and --tokenizer).
    path: PathBuf,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// What to steer away from (classifier-free guidance's unconditional prompt; "" when absent).
    #[arg(long)]
    negative_prompt: Option<String>,
    /// Denoising steps.
    #[arg(long, default_value_t = 25)]
    steps: usize,
    /// Classifier-free guidance scale (1 or less: no guidance).
    #[arg(long, default_value_t = 7.5)]
    guidance: f32,
    /// The sampler: ddim, pndm, euler, or model (the one in scheduler/scheduler_config.json).
    #[arg(long, default_value = "model")]
    scheduler: String,
    /// DDIM's eta (0: deterministic).
    #[arg(long, default_value_t = 0.0)]
    eta: f32,
    /// Seed of the initial noise (thitl's own generator: the same seed gives the same image on
    /// every backend, not the image PyTorch would give).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image height in pixels (default: the UNet's sample_size × the VAE's factor).
    #[arg(long)]
    height: Option<usize>,
    /// Image width in pixels.
    #[arg(long)]
    width: Option<usize>,
    /// Images to sample at once.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Initial noise: a safetensors file with one f32 tensor "latents" of shape [batch, 4, h, w]
    /// (then height, width and batch follow from it).
    #[arg(long)]
    latents: Option<PathBuf>,
    /// Write the final latents (before the VAE) here, in the same layout.
    #[arg(long)]
    out_latents: Option<PathBuf>,
    /// Write the image here as PNG (with --batch above 1: NAME-0.png, NAME-1.png, …).
    #[arg(long)]
    out: Option<PathBuf>,
    /// auto (a hardware GPU, else the CPU), cpu, or wgpu (any adapter, software ones included).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Weights variant to prefer (e.g. fp16: diffusion_pytorch_model.fp16.safetensors); f16 and
    /// bf16 weights are converted to f32.
    #[arg(long)]
    variant: Option<String>,
    #[command(flatten)]
    single_file: SingleFileArgs,
    /// A LoRA adapter to apply: a diffusers/PEFT file or folder (pytorch_lora_weights.safetensors,
    /// adapter_model.safetensors) or a kohya file; merged into the weights as it loads.
    #[arg(long)]
    lora: Option<PathBuf>,
    /// The adapter's strength (diffusers' adapter weight; 1 = as trained).
    #[arg(long, default_value_t = 1.0)]
    lora_scale: f32,
}

#[derive(clap::Args)]
pub struct TrainLoraArgs {
    /// A diffusers pipeline folder, or a single-file SD 1.x checkpoint (see --config, --tokenizer).
    path: PathBuf,
    /// The image folder (metadata.jsonl + PNG or JPEG images).
    #[arg(long)]
    images: PathBuf,
    /// Where to write the adapter (created if needed; existing files of the same name are replaced).
    #[arg(long)]
    out: PathBuf,
    /// LoRA rank.
    #[arg(long, default_value_t = 4)]
    rank: usize,
    /// LoRA alpha: the update is scaled by alpha / rank (default: the rank, i.e. scale 1).
    #[arg(long)]
    alpha: Option<f32>,
    /// Optimizer steps.
    #[arg(long, default_value_t = 100)]
    steps: u32,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 1e-4)]
    lr: f32,
    /// Images per optimizer step.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Images per forward/backward pass (the batch's gradients are accumulated over
    /// batch / micro-batch passes; default: the whole batch at once).
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Seed of the adapter's initial values, the image order, noise and timesteps.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// peft (diffusers' pytorch_lora_weights.safetensors), kohya, or merged (a UNet folder).
    #[arg(long, default_value = "peft")]
    format: String,
    /// Which projections of every attention layer to adapt (comma-separated).
    #[arg(long, default_value = "to_q,to_k,to_v,to_out.0")]
    targets: String,
    /// auto (a hardware GPU, else the CPU), cpu, or wgpu.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Weights variant to prefer (e.g. fp16; converted to f32).
    #[arg(long)]
    variant: Option<String>,
    #[command(flatten)]
    single_file: SingleFileArgs,
}

/// What a single-file checkpoint (PATH a .safetensors file with the original key names) needs.
#[derive(clap::Args)]
pub struct SingleFileArgs {
    /// For a single-file checkpoint: a diffusers folder of the same architecture whose configs
    /// (and tokenizer) to use; without it, SD 1.5's configs are used.
    #[arg(long)]
    config: Option<PathBuf>,
    /// For a single-file checkpoint: a CLIP tokenizer folder (vocab.json, merges.txt), e.g. any
    /// SD 1.x pipeline's tokenizer/ (default: the --config folder's).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

pub fn run(command: ModelCommand) -> anyhow::Result<ExitCode> {
    match command {
        ModelCommand::Tokenize { path, text } => {
            let tokenizer = PipelineFolder::open(&path)?.tokenizer()?;
            let input_ids = tokenizer.encode_padded(&text)?;
            println!("{}", serde_json::json!({ "input_ids": input_ids }));
            Ok(ExitCode::SUCCESS)
        }
        ModelCommand::Import { path, data, name, variant, json, single_file } => {
            import(&path, &data, name, variant.as_deref(), json, &single_file)
        }
        ModelCommand::Export { version, data, format, out } => {
            let format: app::sd::export::ExportFormat = format.parse()?;
            let id: domain::ModelVersionId =
                version.parse().map_err(|_| anyhow::anyhow!("{version:?} is not a model version id (a UUID)"))?;
            let dir = app::data::DataDir::open_existing(&data)?;
            let blobs = dir.blobs()?;
            let bus = app::commands::CommandBus::new(dir.store.clone());
            let files = app::sd::export::export_version(&bus, &blobs, id, format)?;
            let mut written = Vec::new();
            for file in &files {
                let path = out.join(&file.path);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
                }
                write_file(&path, &file.bytes)?;
                written.push(path.display().to_string());
            }
            println!("{}", serde_json::json!({ "model_version": id.to_string(), "files": written }));
            Ok(ExitCode::SUCCESS)
        }
        ModelCommand::TrainLora(args) => {
            let choice: DeviceChoice = args.device.parse()?;
            match Backend::choose(choice)? {
                Backend::Cpu => train_lora(&CpuDevice::<f32>::new(), "cpu", &args),
                Backend::Wgpu(context) => {
                    let description = format!("wgpu: {}", context.describe());
                    train_lora(&WgpuDevice::new(context), &description, &args)
                }
            }
        }
        ModelCommand::Sample(args) => {
            let choice: DeviceChoice = args.device.parse()?;
            match Backend::choose(choice)? {
                Backend::Cpu => sample(&CpuDevice::<f32>::new(), "cpu", &args),
                Backend::Wgpu(context) => {
                    let description = format!("wgpu: {}", context.describe());
                    sample(&WgpuDevice::new(context), &description, &args)
                }
            }
        }
    }
}

fn sample<D: ImageOps>(device: &D, description: &str, args: &SampleArgs) -> anyhow::Result<ExitCode> {
    let scheduler = match args.scheduler.as_str() {
        "model" => None,
        name => Some(
            SchedulerKind::from_name(name)
                .with_context(|| format!("unknown scheduler {name:?}: choose ddim, pndm, euler or model"))?,
        ),
    };
    // Check what can be checked before loading weights.
    let latents = match &args.latents {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            Some(Latents::from_safetensors(path, &bytes)?)
        }
        None => None,
    };
    for path in [&args.out_latents, &args.out].into_iter().flatten() {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.is_dir()
        {
            anyhow::bail!("cannot write {}: the folder {} does not exist", path.display(), parent.display());
        }
    }
    let (folder, _converted) = open_pipeline(&args.path, &args.single_file)?;
    let started = Instant::now();
    eprintln!("loading {} on {description}", args.path.display());
    let adapter = args.lora.as_deref().map(gpu::sd::lora::LoraAdapter::read).transpose()?;
    if let Some(adapter) = &adapter {
        eprintln!("applying the LoRA adapter {} at {}", adapter.source.display(), args.lora_scale);
    }
    let lora = adapter.as_ref().map(|adapter| (adapter, args.lora_scale));
    let pipeline = StableDiffusion::load_with_lora(device, &folder, args.variant.as_deref(), lora)?;
    let loaded = started.elapsed().as_secs_f64();
    let vae_factor = pipeline.vae.config().scale_factor();
    let (batch, height, width) = match &latents {
        Some(latents) => {
            let [batch, channels, h, w] = latents.shape;
            let expected = pipeline.unet.config().in_channels;
            if channels != expected {
                anyhow::bail!("the initial latents have {channels} channels; this UNet takes {expected}");
            }
            (batch, h * vae_factor, w * vae_factor)
        }
        None => {
            let side = pipeline.unet.config().sample_size * vae_factor;
            (args.batch, args.height.unwrap_or(side), args.width.unwrap_or(side))
        }
    };
    if batch == 0 {
        anyhow::bail!("--batch must be at least 1");
    }
    let options = SampleOptions {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        steps: args.steps,
        guidance: args.guidance,
        scheduler,
        eta: args.eta,
        seed: args.seed,
        batch,
        height,
        width,
        latents: latents.map(|l| l.values),
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("sampling [{bar:40}] {pos}/{len} steps ({elapsed}, {eta} left)")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let terminal = std::io::stderr().is_terminal();
    let sampling = Instant::now();
    let result = pipeline.sample(device, &options, &mut |step, steps| {
        bar.set_length(steps as u64);
        bar.set_position(step as u64);
        if !terminal {
            eprintln!("step {step}/{steps}: {:.1} s", sampling.elapsed().as_secs_f64());
        }
    })?;
    bar.finish_and_clear();
    let sampled = sampling.elapsed().as_secs_f64();
    if let Some(path) = &args.out_latents {
        write_file(path, &result.to_safetensors()?)?;
    }
    let mut images = Vec::new();
    if let Some(path) = &args.out {
        let pixels = pipeline.decode(device, &result)?;
        let [_, _, h, w] = result.shape;
        let (height, width) = (h * vae_factor, w * vae_factor);
        let per_image = 3 * height * width;
        for (index, image) in pixels.chunks(per_image).enumerate() {
            let target = if batch == 1 { path.clone() } else { numbered(path, index) };
            write_file(&target, &app::sd::png_from_unit_rgb(image, height, width))?;
            images.push(target.display().to_string());
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "device": description,
            "latents_shape": result.shape,
            "steps": args.steps,
            "scheduler": format!("{:?}", scheduler.unwrap_or(pipeline.scheduler.kind)).to_lowercase(),
            "images": images,
            "out_latents": args.out_latents.as_ref().map(|p| p.display().to_string()),
            "load_seconds": loaded,
            "sample_seconds": sampled,
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// The adapter formats `train-lora` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AdapterFormat {
    Peft,
    Kohya,
    Merged,
}

fn train_lora<D: ImageBackward>(device: &D, description: &str, args: &TrainLoraArgs) -> anyhow::Result<ExitCode> {
    use gpu::sd::train::{LoraSettings, export};
    let format = match args.format.as_str() {
        "peft" => AdapterFormat::Peft,
        "kohya" => AdapterFormat::Kohya,
        "merged" => AdapterFormat::Merged,
        other => anyhow::bail!("unknown --format {other:?}: choose peft, kohya or merged"),
    };
    let targets: Vec<String> =
        args.targets.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect();
    let known = gpu::sd::train::DEFAULT_TARGETS;
    if let Some(unknown) = targets.iter().find(|t| !known.contains(&t.as_str())) {
        anyhow::bail!("--targets: {unknown:?} is not an attention projection; choose among {}", known.join(","));
    }
    let alpha = args.alpha.unwrap_or(args.rank as f32);
    let micro_batch = args.micro_batch.unwrap_or(args.batch);
    let options = app::sd::train::TrainOptions {
        lora: LoraSettings { rank: args.rank, alpha, targets },
        steps: args.steps,
        batch: args.batch,
        micro_batch,
        optimizer: gpu::cpu::AdamW { lr: args.lr, weight_decay: 1e-2, ..gpu::cpu::AdamW::default() },
        seed: args.seed,
        prior_weight: 0.0,
    };
    if !(args.lr.is_finite() && args.lr > 0.0) {
        anyhow::bail!("--lr must be a positive number");
    }
    if args.rank == 0 || !(alpha.is_finite() && alpha > 0.0) {
        anyhow::bail!("--rank and --alpha must be positive");
    }
    // Everything that can be checked before loading weights: the images and the output folder.
    let examples = app::sd::train::read_image_folder(&args.images)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let (folder, _converted) = open_pipeline(&args.path, &args.single_file)?;
    eprintln!("loading {} on {description}", args.path.display());
    let pipeline = StableDiffusion::load(device, &folder, args.variant.as_deref())?;
    eprintln!(
        "training a rank-{} LoRA on {} images ({}×{}) for {} steps of {} (micro-batches of {micro_batch})",
        args.rank,
        examples.len(),
        examples[0].width,
        examples[0].height,
        args.steps,
        args.batch
    );
    let bar = indicatif::ProgressBar::new(args.steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "training [{bar:40}] {pos}/{len} steps, loss {msg} ({elapsed}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let terminal = std::io::stderr().is_terminal();
    let started = Instant::now();
    let trained = app::sd::train::train_lora(device, pipeline, &examples, &[], &options, &mut |step, steps, loss| {
        bar.set_position(step as u64);
        bar.set_message(format!("{loss:.4}"));
        if !terminal {
            eprintln!("step {step}/{steps}: loss {loss:.5} ({:.1} s)", started.elapsed().as_secs_f64());
        }
        true
    })?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let mut files = Vec::new();
    match format {
        AdapterFormat::Peft => {
            let path = args.out.join("pytorch_lora_weights.safetensors");
            write_file(&path, &export::peft_file(trained.tensors(), &trained.settings).map_err(anyhow::Error::msg)?)?;
            files.push(path);
        }
        AdapterFormat::Kohya => {
            let path = args.out.join("lora_kohya.safetensors");
            write_file(&path, &export::kohya_file(trained.tensors(), &trained.settings).map_err(anyhow::Error::msg)?)?;
            files.push(path);
        }
        AdapterFormat::Merged => {
            let unet_dir = folder.component_dir("unet")?;
            let weights = gpu::sd::weights::ComponentWeights::load(
                &unet_dir,
                "diffusion_pytorch_model",
                args.variant.as_deref(),
            )?;
            let bytes =
                export::merged_unet_file(weights, trained.tensors(), &trained.settings).map_err(anyhow::Error::msg)?;
            let out = args.out.join("unet");
            std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
            let path = out.join("diffusion_pytorch_model.safetensors");
            write_file(&path, &bytes)?;
            let config = out.join("config.json");
            std::fs::copy(unet_dir.join("config.json"), &config)
                .with_context(|| format!("cannot write {}", config.display()))?;
            files.extend([path, config]);
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "device": description,
            "format": args.format,
            "files": files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "images": examples.len(),
            "steps": args.steps,
            "rank": args.rank,
            "alpha": alpha,
            "first_loss": trained.losses.first(),
            "last_loss": trained.losses.last(),
            "losses": trained.losses,
            "train_seconds": seconds,
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// The pipeline folder at `path`, or a single-file checkpoint there converted into a temporary
/// folder (removed when the returned checkpoint is dropped: keep it while the folder is used).
fn open_pipeline(
    path: &Path,
    single_file: &SingleFileArgs,
) -> anyhow::Result<(PipelineFolder, Option<app::sd::ConvertedCheckpoint>)> {
    let converted = match path.is_file() {
        true => {
            eprintln!("converting the single-file checkpoint {}", path.display());
            Some(app::sd::ConvertedCheckpoint::convert(
                path,
                single_file.config.as_deref(),
                single_file.tokenizer.as_deref(),
            )?)
        }
        false => None,
    };
    let folder = PipelineFolder::open(converted.as_ref().map_or(path, |c| c.path()))?;
    Ok((folder, converted))
}

/// `NAME-index.EXT`.
fn numbered(path: &Path, index: usize) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let extension = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    path.with_file_name(format!("{stem}-{index}{extension}"))
}

/// Writes through a temporary file and a rename, so a failure never leaves half a file.
fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let temporary = path.with_extension("partial");
    std::fs::write(&temporary, bytes).with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn import(
    path: &Path,
    data: &Path,
    name: Option<String>,
    variant: Option<&str>,
    json: bool,
    single_file: &SingleFileArgs,
) -> anyhow::Result<ExitCode> {
    use domain::{ModelVersion, ModelVersionCommand, ModelVersionId};

    let name = match name {
        Some(name) => name,
        None => {
            let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
            let base = if path.is_file() { canonical.file_stem() } else { canonical.file_name() };
            base.map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "imported".into())
        }
    };
    domain::values::Name::parse("name", &name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    eprintln!("checking {}", path.display());
    // Everything is checked before the data directory is touched.
    let prepared = match path.is_file() {
        true => {
            app::sd::prepare_import_single_file(path, single_file.config.as_deref(), single_file.tokenizer.as_deref())?
        }
        false => app::sd::prepare_import(path, variant)?,
    };
    let dir = app::data::DataDir::open_or_create(data)?;
    let blobs = dir.blobs()?;
    let mut bytes = 0usize;
    for (file, contents) in &prepared.files {
        let stored = app::blobs::BlobStore::put(&blobs, contents)?;
        anyhow::ensure!(
            prepared.manifest.files.get(file) == Some(&stored.hash.as_str().to_string()),
            "{file} changed while it was being imported"
        );
        bytes += contents.len();
    }
    let manifest = serde_json::to_vec_pretty(&prepared.manifest)?;
    let weights = app::blobs::BlobStore::put(&blobs, &manifest)?.hash;
    let id = ModelVersionId(uuid::Uuid::now_v7());
    let bus = app::commands::CommandBus::new(dir.store.clone());
    let context = app::commands::CommandContext::new(domain::Actor::new("thitl-cli", domain::Role::Operator));
    bus.execute::<ModelVersion>(
        &id.stream(),
        None,
        &context,
        ModelVersionCommand::RegisterBase {
            model_version_id: id,
            name: name.clone(),
            weights: weights.clone(),
            config: prepared.config.clone(),
        },
    )?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "model_version": id.to_string(),
                "name": name,
                "family": app::sd::FAMILY,
                "weights": weights.as_str(),
                "files": prepared.manifest.files,
                "bytes": bytes,
            })
        );
    } else {
        println!(
            "imported {} as model version {id} ({name}): {} files, {:.1} MB, manifest blob {}",
            path.display(),
            prepared.files.len(),
            bytes as f64 / 1e6,
            weights.as_str()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `thitl bench sd`.
pub fn bench_sd(size: usize, steps: usize, batches: Vec<usize>, device: &str) -> anyhow::Result<ExitCode> {
    let options = gpu::sd::bench::SdBenchOptions { size, steps, batches };
    let backend = Backend::choose(device.parse()?)?;
    let description = backend.describe();
    eprintln!(
        "thitl bench sd: SD 1.5 at {size}x{size}, {steps} guided DDIM steps, batches {:?}, on {description}",
        options.batches
    );
    let mut say = |line: &str| eprintln!("  {line}");
    let rows = match backend {
        Backend::Cpu => gpu::sd::bench::run(&CpuDevice::<f32>::new(), &options, &mut say)?,
        Backend::Wgpu(context) => gpu::sd::bench::run(&WgpuDevice::new(context), &options, &mut say)?,
    };
    println!("| batch | images/s | s per call | UNet eval (2×batch) s | text s | VAE s |");
    println!("|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {:.4} | {:.2} | {:.3} | {:.3} | {:.3} |",
            row.batch, row.images_per_second, row.seconds, row.unet_step_seconds, row.text_seconds, row.vae_seconds
        );
    }
    println!("device: {description}");
    Ok(ExitCode::SUCCESS)
}
