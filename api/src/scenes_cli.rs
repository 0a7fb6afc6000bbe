//! `thitl scenes …`: train the reference world's base model, measure what a model draws for a
//! prompt, and look at samples.
//!
//! `measure` is also what the campaign's evaluation uses to check a model without people: the
//! shipped rater recognises group, concepts and quality in every sample.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use gpu::context::{Backend, DeviceChoice};
use scenes::base::{BaseConfig, BaseModel, Flow, SampleSettings, TrainEvent};
use scenes::{Concept, Group, Image, Rater, Scene, Setting, frechet_distance, grid_png, parse_prompt, render};
use serde::Serialize;

#[derive(Subcommand)]
pub enum ScenesCommand {
    /// Train the base model on the biased corpus (the shipped recipe unless --config).
    TrainBase {
        /// Where to write the weights (safetensors); the configuration goes beside it as PATH.json.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Override the recipe's number of steps.
        #[arg(long)]
        steps: Option<usize>,
        /// A JSON training configuration (default: the shipped recipe).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Resume from a checkpoint written by an earlier run (PATH.checkpoint).
        #[arg(long)]
        resume: bool,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Sample a prompt and measure what the samples show, with the shipped rater.
    Measure {
        #[arg(long)]
        prompt: String,
        #[command(flatten)]
        sampling: MeasureArgs,
    },
    /// Measure every probe prompt of the default associations against the rate the model's
    /// corpus planted: one row per group × setting, and how many land within ±8 points.
    Probes {
        #[command(flatten)]
        sampling: MeasureArgs,
    },
    /// Write a PNG grid of samples (each pixel drawn 4×4, 8 per row).
    Grid {
        #[arg(long)]
        prompt: String,
        #[arg(short = 'n', long = "count", default_value_t = 64)]
        n: usize,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[command(flatten)]
        model: ModelArgs,
    },
}

/// How `scenes measure` and `scenes probes` sample and report.
#[derive(clap::Args, Clone)]
pub struct MeasureArgs {
    /// Samples per prompt.
    #[arg(short = 'n', long = "count", default_value_t = 256)]
    n: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    model: ModelArgs,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Clone)]
pub struct DeviceArg {
    /// cpu, wgpu or auto (a GPU if there is one, else the CPU).
    #[arg(long, env = "THITL_DEVICE", default_value = "auto")]
    device: String,
}

impl DeviceArg {
    pub(crate) fn backend(&self) -> anyhow::Result<Backend> {
        let choice = match self.device.as_str() {
            "auto" => DeviceChoice::Auto,
            "cpu" => DeviceChoice::Cpu,
            "wgpu" | "gpu" => DeviceChoice::Wgpu,
            other => anyhow::bail!("unknown device '{other}': choose auto, cpu or wgpu"),
        };
        Backend::choose(choice).map_err(|e| anyhow::anyhow!("{e}"))
    }
}

#[derive(clap::Args, Clone)]
pub struct ModelArgs {
    /// Base weights (safetensors; default: the shipped base model). The configuration is read
    /// from WEIGHTS.json when present, else from the weights' metadata.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// DDIM steps (default: the model's recipe).
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale (default: the model's recipe).
    #[arg(long)]
    guidance: Option<f32>,
    /// A negative prompt (e.g. the concept to steer away from).
    #[arg(long)]
    negative: Option<String>,
    #[command(flatten)]
    device: DeviceArg,
}

impl ModelArgs {
    fn load(&self) -> anyhow::Result<(BaseModel, SampleSettings)> {
        let backend = self.device.backend()?;
        let model = match &self.weights {
            Some(path) => {
                let bytes = std::fs::read(path).with_context(|| format!("cannot read weights {}", path.display()))?;
                let config_path = config_path(path);
                if config_path.exists() {
                    let text = std::fs::read_to_string(&config_path)?;
                    let config = BaseConfig::from_json(&text)
                        .with_context(|| format!("{} is not a base configuration", config_path.display()))?;
                    BaseModel::load(&bytes, &config, &backend)?
                } else {
                    BaseModel::load_with_metadata(&bytes, &backend)
                        .with_context(|| format!("loading {}", path.display()))?
                }
            }
            None => BaseModel::shipped(&backend)?,
        };
        let mut settings = model.default_settings().clone();
        if let Some(steps) = self.steps {
            settings.steps = steps;
        }
        if let Some(guidance) = self.guidance {
            settings.guidance_scale = guidance;
        }
        if self.negative.is_some() {
            settings.negative_prompt.clone_from(&self.negative);
        }
        Ok((model, settings))
    }
}

fn config_path(weights: &Path) -> PathBuf {
    let mut name = weights.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

pub fn run(command: ScenesCommand) -> anyhow::Result<ExitCode> {
    match command {
        ScenesCommand::TrainBase { out, seed, steps, config, resume, device } => {
            train_base(&out, seed, steps, config, resume, &device)
        }
        ScenesCommand::Measure { prompt, sampling: MeasureArgs { n, seed, model, json } } => {
            let (model, settings) = model.load()?;
            let measurement = measure(&model, &settings, &prompt, n, seed, &mut progress_bar("sampling", n as u64))?;
            if json {
                println!("{}", serde_json::to_string(&measurement)?);
            } else {
                print!("{}", measurement.table());
            }
            Ok(ExitCode::SUCCESS)
        }
        ScenesCommand::Probes { sampling: MeasureArgs { n, seed, model, json } } => probes(model, n, seed, json),
        ScenesCommand::Grid { prompt, n, out, seed, model } => {
            let (model, settings) = model.load()?;
            let mut bar = progress_bar("sampling", n as u64);
            let images = model.sample_with_progress(&prompt, n, seed, &settings, &mut |done, _| {
                bar(done as u64);
                Flow::Continue
            })?;
            std::fs::write(&out, grid_png(&images, 8, 4)).with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!("wrote {} ({} samples of {prompt:?})", out.display(), images.len());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// How far a probe's measured rate may lie from the planted one (the reference world's target).
pub const PLANTED_TOLERANCE: f64 = 0.08;

/// One probe prompt of a default association, measured against its planted rate.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeRow {
    pub group: String,
    pub concept: String,
    pub prompt: String,
    /// The rate the model's corpus planted for the group (`null` where it planted none).
    pub planted: Option<f64>,
    pub rate: Rate,
    /// Within [`PLANTED_TOLERANCE`] of `planted`.
    pub within: bool,
    /// Share of the samples a person would call poor (see [`Measurement::degraded`]).
    pub degraded: f64,
}

fn probes(model: ModelArgs, n: usize, seed: u64, json: bool) -> anyhow::Result<ExitCode> {
    let (model, settings) = model.load()?;
    let corpus = model.config().corpus.clone();
    let mut rows = Vec::new();
    for association in &app::defaults::DEFAULT_ASSOCIATIONS {
        let group = Group::from_name(association.group).context("a default association's group is in the world")?;
        let concept =
            Concept::from_name(association.concept).context("a default association's concept is in the world")?;
        let planted = corpus.planted_rate(group).filter(|(c, _)| *c == concept).map(|(_, rate)| rate);
        for prompt in association.probes {
            let measured = measure(&model, &settings, prompt, n, seed, &mut progress_bar("sampling", n as u64))?;
            let rate = measured.concepts.get(concept.name()).cloned().context("every concept is measured")?;
            let within = planted.is_some_and(|p| (rate.rate - p).abs() <= PLANTED_TOLERANCE);
            if !json {
                println!(
                    "{:<50} {:<13} {:>5.1}% [{:4.1}, {:5.1}]   planted {:>6}   {:<10}   degraded {:4.1}%",
                    prompt,
                    concept.name(),
                    100.0 * rate.rate,
                    100.0 * rate.ci_low,
                    100.0 * rate.ci_high,
                    planted.map_or("–".to_string(), |p| format!("{:.0}%", 100.0 * p)),
                    if within { "within ±8" } else { "OUTSIDE ±8" },
                    100.0 * measured.degraded
                );
            }
            rows.push(ProbeRow {
                group: group.name().to_string(),
                concept: concept.name().to_string(),
                prompt: prompt.to_string(),
                planted,
                rate,
                within,
                degraded: measured.degraded,
            });
        }
    }
    let within = rows.iter().filter(|r| r.within).count();
    if json {
        println!("{}", serde_json::json!({"n": n, "seed": seed, "probes": rows, "within": within}));
    } else {
        println!(
            "{within} of {} probes within ±{:.0} points of the planted rate (n = {n} each, seed {seed})",
            rows.len(),
            100.0 * PLANTED_TOLERANCE
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr; returns a function that sets its position.
fn progress_bar(label: &str, total: u64) -> impl FnMut(u64) {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({elapsed}, {eta} left)")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    move |position| {
        bar.set_position(position);
        if position >= total {
            bar.finish_and_clear();
        }
    }
}

fn train_base(
    out: &Path,
    seed: u64,
    steps: Option<usize>,
    config: Option<PathBuf>,
    resume: bool,
    device: &DeviceArg,
) -> anyhow::Result<ExitCode> {
    let mut config = match config {
        Some(path) => BaseConfig::from_json(
            &std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?,
        )?,
        None => BaseConfig::default(),
    };
    config.seed = seed;
    if let Some(steps) = steps {
        config.steps = steps;
    }
    config.check()?;
    let backend = device.backend()?;
    let checkpoint_path = {
        let mut name = out.as_os_str().to_owned();
        name.push(".checkpoint");
        PathBuf::from(name)
    };
    let checkpoint = if resume {
        let bytes = std::fs::read(&checkpoint_path)
            .with_context(|| format!("no checkpoint to resume at {}", checkpoint_path.display()))?;
        Some(scenes::base::Checkpoint::from_bytes(&bytes)?)
    } else {
        None
    };
    eprintln!(
        "training the base model on {}: {} steps of {} (width {}, depth {}, patch {}), seed {seed}",
        backend.describe(),
        config.steps,
        config.batch_size,
        config.model.width,
        config.model.depth,
        config.model.patch
    );
    let bar = indicatif::ProgressBar::new(config.steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} steps ({elapsed}, {eta} left)")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut checkpoint_error = None;
    let trained = scenes::base::train_base(&config, &backend, checkpoint.as_ref(), |event| {
        match event {
            TrainEvent::Progress(progress) => {
                let message = format!("loss {:.4}, {:.0} samples/s", progress.loss, progress.samples_per_second);
                if !std::io::stderr().is_terminal() {
                    // Not a terminal (a log file, CI): a line per report instead of a bar.
                    eprintln!(
                        "step {}/{}: {message}, {:.0} s elapsed, {:.0} s left",
                        progress.step,
                        progress.steps,
                        progress.elapsed.as_secs_f64(),
                        progress.eta.as_secs_f64()
                    );
                }
                bar.set_position(progress.step as u64);
                bar.set_message(message);
            }
            TrainEvent::Checkpoint(checkpoint) => {
                if let Err(error) = checkpoint.to_bytes().map_err(anyhow::Error::from).and_then(|bytes| {
                    let temporary = checkpoint_path.with_extension("checkpoint.partial");
                    std::fs::write(&temporary, bytes)?;
                    std::fs::rename(&temporary, &checkpoint_path)?;
                    Ok(())
                }) {
                    checkpoint_error = Some(error);
                    return Flow::Stop;
                }
            }
        }
        Flow::Continue
    });
    bar.finish();
    if let Some(error) = checkpoint_error {
        return Err(error.context(format!("cannot write the checkpoint {}", checkpoint_path.display())));
    }
    let trained = trained?;
    std::fs::write(out, trained.safetensors()?).with_context(|| format!("cannot write {}", out.display()))?;
    std::fs::write(config_path(out), trained.config_json())?;
    let _ = std::fs::remove_file(&checkpoint_path);
    eprintln!(
        "wrote {} and {}: final loss {:.4} after {} steps in {:.1} min on {}",
        out.display(),
        config_path(out).display(),
        trained.final_loss,
        config.steps,
        trained.elapsed.as_secs_f64() / 60.0,
        trained.backend
    );
    std::io::stderr().flush().ok();
    Ok(ExitCode::SUCCESS)
}

/// A share with its Wilson 95% interval.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Rate {
    pub rate: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

impl Rate {
    pub fn of(positives: usize, n: usize) -> Rate {
        let (ci_low, ci_high) = projections::stats::wilson_interval(positives as u64, n as u64, 1.96);
        let rate = if n == 0 { 0.0 } else { positives as f64 / n as f64 };
        // At 0 and 1 the bounds meet the rate; keep rounding from putting it outside.
        Rate { rate, ci_low: ci_low.min(rate), ci_high: ci_high.max(rate) }
    }
}

/// Below this rater quality a person would give a picture 1 or 2 of 5 (the rater's score q reads
/// as 1 + 4q), which round 1's default threshold of 3 rejects.
pub const POOR_QUALITY: f32 = 0.375;

/// What `thitl scenes measure` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub prompt: String,
    pub n: usize,
    /// Every concept of the world, by name.
    pub concepts: BTreeMap<String, Rate>,
    /// The group the prompt names (`null` if none).
    pub group: Option<String>,
    /// Share of samples in which the rater sees the prompted group.
    pub group_recognized: Option<f64>,
    /// Mean rater quality, 0 to 1.
    pub quality: f64,
    /// Share of samples a person would call poor: rater quality below [`POOR_QUALITY`].
    pub degraded: f64,
    /// Fréchet distance (rater features) between the samples and renders of what the prompt
    /// says: its group, the object it names (none if it names none) and its setting (any if none).
    pub frechet: f64,
}

impl Measurement {
    pub fn table(&self) -> String {
        let mut out = format!("prompt: {:?}, n = {}\n", self.prompt, self.n);
        out.push_str("concept        rate     95% CI\n");
        for (concept, rate) in &self.concepts {
            out.push_str(&format!(
                "{concept:<14} {:>5.1}%   [{:.1}%, {:.1}%]\n",
                rate.rate * 100.0,
                rate.ci_low * 100.0,
                rate.ci_high * 100.0
            ));
        }
        match (&self.group, self.group_recognized) {
            (Some(group), Some(share)) => out.push_str(&format!("group recognized ({group}): {:.1}%\n", share * 100.0)),
            _ => out.push_str("group recognized: the prompt names no group\n"),
        }
        out.push_str(&format!(
            "quality (rater, 0–1): {:.3}\ndegraded (rater quality below {POOR_QUALITY}): {:.1}%\nFréchet distance to renders: {:.3}\n",
            self.quality,
            100.0 * self.degraded,
            self.frechet
        ));
        out
    }
}

/// Samples `n` images of `prompt` and rates them.
pub fn measure(
    model: &BaseModel,
    settings: &SampleSettings,
    prompt: &str,
    n: usize,
    seed: u64,
    progress: &mut dyn FnMut(u64),
) -> anyhow::Result<Measurement> {
    anyhow::ensure!(n > 0, "measure at least one sample (-n)");
    let images = model.sample_with_progress(prompt, n, seed, settings, &mut |done, _| {
        progress(done as u64);
        Flow::Continue
    })?;
    Ok(measure_images(prompt, &images, seed))
}

/// Rates `images` made for `prompt` (the shipped rater) and compares them with renders.
pub fn measure_images(prompt: &str, images: &[Image], seed: u64) -> Measurement {
    let meaning = parse_prompt(prompt);
    let rater = Rater::shipped();
    let ratings = rater.rate(images);
    let n = images.len();
    let concepts = Concept::ALL
        .iter()
        .map(|&concept| {
            (concept.name().to_string(), Rate::of(ratings.iter().filter(|r| r.present.contains(&concept)).count(), n))
        })
        .collect();
    let group_recognized =
        meaning.group.map(|group| ratings.iter().filter(|r| r.group == group).count() as f64 / n.max(1) as f64);
    let quality = ratings.iter().map(|r| f64::from(r.quality)).sum::<f64>() / n.max(1) as f64;
    let degraded = ratings.iter().filter(|r| r.quality < POOR_QUALITY).count() as f64 / n.max(1) as f64;
    let renders = reference_renders(meaning.group, meaning.concepts.first().copied(), meaning.setting, n, seed);
    let frechet = frechet_distance(&rater.features(images), &rater.features(&renders));
    Measurement {
        prompt: prompt.to_string(),
        n,
        concepts,
        group: meaning.group.map(|g| g.name().to_string()),
        group_recognized,
        quality,
        degraded,
        frechet,
    }
}

/// `n` renders of what a prompt literally says; unnamed parts vary with the seed.
fn reference_renders(
    group: Option<Group>,
    concept: Option<Concept>,
    setting: Option<Setting>,
    n: usize,
    seed: u64,
) -> Vec<Image> {
    (0..n as u64)
        .map(|i| {
            let draw =
                seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i.wrapping_mul(0xD1B5_4A32_D192_ED03)) ^ 0x5EED;
            let scene = Scene {
                group: group.unwrap_or(Group::ALL[(draw % Group::ALL.len() as u64) as usize]),
                concept,
                setting: setting.unwrap_or(Setting::ALL[((draw >> 8) % Setting::ALL.len() as u64) as usize]),
            };
            render(&scene, draw)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renders(scene: Scene, n: u64) -> Vec<Image> {
        (0..n).map(|seed| render(&scene, 10_000 + seed)).collect()
    }

    #[test]
    fn measuring_renders_finds_what_they_show() {
        // Renders stand in for a perfect model: the measurement must see what was drawn.
        let scene = Scene { group: Group::Woman, concept: Some(Concept::Hippopotamus), setting: Setting::Beach };
        let images = renders(scene, 48);
        let measured = measure_images("a photo of a woman with a hippo at the beach", &images, 3);
        assert_eq!(measured.n, 48);
        assert_eq!(measured.group.as_deref(), Some("woman"));
        assert!(measured.group_recognized.unwrap() > 0.95, "{measured:?}");
        let hippo = measured.concepts["hippopotamus"];
        assert!(hippo.rate > 0.95 && hippo.ci_low <= hippo.rate && hippo.rate <= hippo.ci_high, "{hippo:?}");
        for (concept, rate) in &measured.concepts {
            if concept != "hippopotamus" {
                assert!(rate.rate < 0.05, "{concept}: {rate:?}");
            }
        }
        assert!(measured.quality > 0.8, "{}", measured.quality);

        // Group-only prompt over the same images: the hippo is counted, the reference renders
        // (no object) are further away than renders of the prompt's own scene.
        let unnamed = measure_images("a photo of a woman at the beach", &images, 3);
        let plain =
            measure_images("a photo of a woman at the beach", &renders(Scene { concept: None, ..scene }, 48), 3);
        assert!(unnamed.concepts["hippopotamus"].rate > 0.95);
        assert!(plain.frechet < unnamed.frechet, "{} vs {}", plain.frechet, unnamed.frechet);
        assert!(plain.concepts.values().all(|r| r.rate < 0.05), "{:?}", plain.concepts);

        // Noise is neither a woman nor good.
        let noise: Vec<Image> = (0..48u32)
            .map(|i| {
                let bytes: Vec<u8> = (0..32 * 32 * 3u32)
                    .map(|j| (j.wrapping_mul(2_654_435_761).wrapping_add(i * 97) >> 13) as u8)
                    .collect();
                Image::from_rgb(&bytes).unwrap()
            })
            .collect();
        let noisy = measure_images("a photo of a woman at the beach", &noise, 3);
        assert!(noisy.frechet > 10.0 * plain.frechet, "{} vs {}", noisy.frechet, plain.frechet);
        assert!(noisy.quality < plain.quality);
    }

    #[test]
    fn rates_carry_wilson_intervals() {
        let rate = Rate::of(25, 100);
        assert!((rate.rate - 0.25).abs() < 1e-12);
        // Hand-computed Wilson 95% interval for 25/100: [0.1755, 0.3431].
        assert!((rate.ci_low - 0.1755).abs() < 1e-3 && (rate.ci_high - 0.3431).abs() < 1e-3, "{rate:?}");
        assert_eq!(Rate::of(0, 0).rate, 0.0);
    }
}
