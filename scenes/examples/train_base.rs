//! Trains the base model of the reference world and writes its weights and configuration.
//!
//! ```sh
//! cargo run --release -p scenes --example train_base -- --out base.safetensors --seed 1
//! ```
//!
//! `thitl scenes train-base` runs the same training. The shipped recipe takes minutes on a GPU
//! and about an hour on two CPU cores (`--device cpu`; measured rates in `BENCHMARKS.md`).
//!
//! Options:
//! - `--out PATH` (required): the weights (safetensors); the configuration goes to
//!   `PATH` with the extension `.json`, checkpoints to `PATH` with `.checkpoint.safetensors`.
//! - `--seed S`, `--steps N`, `--batch B`, `--lr X`: override the shipped recipe.
//! - `--config FILE`: start from a configuration JSON instead of the shipped recipe.
//! - `--device cpu|wgpu|auto`: the backend (default: `THITL_DEVICE`, else auto).
//! - `--resume`: continue from the checkpoint beside `--out` when there is one.
//! - `--grid PROMPT` (repeatable): after training, also write a PNG grid of 32 samples of each
//!   prompt beside the weights (`base.grid-0.png`, … for `--out base.safetensors`).
//!
//! Progress goes to stderr. Ctrl-C loses at most `checkpoint_every` steps with `--resume`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use gpu::{Backend, DeviceChoice};
use scenes::base::{BaseConfig, BaseModel, Checkpoint, Flow, TrainEvent, train_base};

struct Arguments {
    out: PathBuf,
    config: BaseConfig,
    device: DeviceChoice,
    resume: bool,
    grids: Vec<String>,
}

const USAGE: &str = "usage: train_base --out PATH [--seed S] [--steps N] [--batch B] [--lr X] \
[--config FILE] [--device cpu|wgpu|auto] [--resume] [--grid PROMPT]...";

fn parse(mut args: impl Iterator<Item = String>) -> Result<Arguments, String> {
    let mut out = None;
    let mut config = BaseConfig::default();
    let mut overrides: Vec<(String, String)> = Vec::new();
    let mut device = DeviceChoice::from_env().map_err(|error| error.to_string())?;
    let mut resume = false;
    let mut grids = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--out" => out = Some(PathBuf::from(value()?)),
            "--config" => {
                let path = value()?;
                let text = std::fs::read_to_string(&path).map_err(|error| format!("{path}: {error}"))?;
                config = BaseConfig::from_json(&text).map_err(|error| format!("{path}: {error}"))?;
            }
            "--seed" | "--steps" | "--batch" | "--lr" => overrides.push((arg.clone(), value()?)),
            "--device" => device = value()?.parse().map_err(|error: gpu::GpuError| error.to_string())?,
            "--resume" => resume = true,
            "--grid" => grids.push(value()?),
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    // Overrides apply after --config, wherever they were given.
    for (flag, text) in overrides {
        let bad = || format!("bad value {text:?} for {flag}");
        match flag.as_str() {
            "--seed" => config.seed = text.parse().map_err(|_| bad())?,
            "--steps" => config.steps = text.parse().map_err(|_| bad())?,
            "--batch" => config.batch_size = text.parse().map_err(|_| bad())?,
            "--lr" => config.learning_rate = text.parse().map_err(|_| bad())?,
            _ => unreachable!("only the flags above are collected"),
        }
    }
    config.warmup_steps = config.warmup_steps.min(config.steps / 2);
    config.check().map_err(|error| error.to_string())?;
    let out = out.ok_or_else(|| format!("--out is required\n{USAGE}"))?;
    Ok(Arguments { out, config, device, resume, grids })
}

fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_stem().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    // Write then rename, so an interrupted write never leaves half a file under the real name.
    let partial = beside(path, ".partial");
    std::fs::write(&partial, bytes).map_err(|error| format!("{}: {error}", partial.display()))?;
    std::fs::rename(&partial, path).map_err(|error| format!("{}: {error}", path.display()))
}

fn run(arguments: Arguments) -> Result<(), String> {
    let Arguments { out, config, device, resume, grids } = arguments;
    let checkpoint_path = beside(&out, ".checkpoint.safetensors");
    let backend = Backend::choose(device).map_err(|error| error.to_string())?;
    let resume_from = if resume && checkpoint_path.exists() {
        let bytes = std::fs::read(&checkpoint_path).map_err(|error| error.to_string())?;
        let checkpoint = Checkpoint::from_bytes(&bytes).map_err(|error| error.to_string())?;
        eprintln!("resuming from {} at step {}", checkpoint_path.display(), checkpoint.step);
        Some(checkpoint)
    } else {
        None
    };
    let dit = config.model.dit_config();
    eprintln!(
        "training the base model on {}: width {}, depth {}, patch {}, {} steps of {} images, seed {}",
        backend.describe(),
        dit.width,
        dit.depth,
        dit.patch,
        config.steps,
        config.batch_size,
        config.seed
    );
    let mut failure = None;
    let trained = train_base(&config, &backend, resume_from.as_ref(), |event| {
        match event {
            TrainEvent::Progress(progress) => eprintln!(
                "step {:>6}/{}  loss {:.4}  lr {:.2e}  {:.0} samples/s  elapsed {:.0}s  eta {:.0}s",
                progress.step,
                progress.steps,
                progress.loss,
                progress.learning_rate,
                progress.samples_per_second,
                progress.elapsed.as_secs_f64(),
                progress.eta.as_secs_f64()
            ),
            TrainEvent::Checkpoint(checkpoint) => {
                if let Err(error) =
                    checkpoint.to_bytes().map_err(|e| e.to_string()).and_then(|bytes| write(&checkpoint_path, &bytes))
                {
                    failure = Some(error);
                    return Flow::Stop;
                }
            }
        }
        Flow::Continue
    });
    if let Some(error) = failure {
        return Err(format!("could not write a checkpoint: {error}"));
    }
    let trained = trained.map_err(|error| error.to_string())?;
    let config_path = out.with_extension("json");
    write(&out, &trained.safetensors().map_err(|error| error.to_string())?)?;
    write(&config_path, trained.config_json().as_bytes())?;
    let _ = std::fs::remove_file(&checkpoint_path);
    eprintln!(
        "final loss {:.4} (mean of the last {} steps) after {:.0}s; wrote {} and {}",
        trained.final_loss,
        config.final_loss_window.min(config.steps),
        trained.elapsed.as_secs_f64(),
        out.display(),
        config_path.display()
    );
    if !grids.is_empty() {
        let model = BaseModel::from_weights(&trained.weights, &config, &backend).map_err(|error| error.to_string())?;
        for (number, prompt) in grids.iter().enumerate() {
            let path = beside(&out, &format!(".grid-{number}.png"));
            write(&path, &model.grid(prompt, 32, 1).map_err(|error| error.to_string())?)?;
            eprintln!("{prompt:?}: {}", path.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match parse(std::env::args().skip(1)).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}
