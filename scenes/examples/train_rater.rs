//! Trains the rater of the reference world, writes its weights and scores it on held-out renders.
//!
//! ```sh
//! THITL_DEVICE=cpu cargo run --release -p scenes --example train_rater -- --out scenes/weights/rater.safetensors --seed 1
//! ```
//!
//! Options:
//! - `--out PATH`: where the weights go (safetensors; the training options are in its metadata).
//! - `--seed S`, `--steps N`, `--batch B`, `--lr X`, `--width W`, `--hidden H`: override the
//!   shipped recipe (`RaterTraining::default()`).
//! - `--device cpu|wgpu|auto`: the training backend (default: `THITL_DEVICE`, else auto).
//! - `--eval N`: held-out images per condition for the final scores (default 3000).
//! - `--evaluate PATH`: only score existing weights (no training).
//!
//! Progress goes to stderr; the held-out scores go to stdout. Interrupting the run (Ctrl-C)
//! leaves any existing weights file as it was: the new one is written only at the end.

use std::path::PathBuf;
use std::process::ExitCode;

use gpu::{Backend, DeviceChoice};
use scenes::Concept;
use scenes::rater::{Condition, Rater, RaterTraining, evaluate, train_rater};

const USAGE: &str = "usage: train_rater (--out PATH [--seed S] [--steps N] [--batch B] [--lr X] \
[--width W] [--hidden H] [--device cpu|wgpu|auto] | --evaluate PATH) [--eval N]";

/// Seed of the held-out evaluation (its renders use seeds training never renders anyway).
const EVALUATION_SEED: u64 = 20_240_601;

enum Task {
    Train(PathBuf),
    Evaluate(PathBuf),
}

struct Arguments {
    task: Task,
    training: RaterTraining,
    device: DeviceChoice,
    evaluation_images: usize,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Arguments, String> {
    let mut task = None;
    let mut training = RaterTraining::default();
    let mut device = DeviceChoice::from_env().map_err(|error| error.to_string())?;
    let mut evaluation_images = 3000;
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value\n{USAGE}"));
        let number = |text: String| text.parse::<f64>().map_err(|_| format!("{arg} needs a number, not {text:?}"));
        match arg.as_str() {
            "--out" => task = Some(Task::Train(PathBuf::from(value()?))),
            "--evaluate" => task = Some(Task::Evaluate(PathBuf::from(value()?))),
            "--seed" => training.seed = number(value()?)? as u64,
            "--steps" => training.steps = number(value()?)? as usize,
            "--batch" => training.batch = number(value()?)? as usize,
            "--lr" => training.learning_rate = number(value()?)? as f32,
            "--width" => training.width = number(value()?)? as usize,
            "--hidden" => training.hidden = number(value()?)? as usize,
            "--eval" => evaluation_images = number(value()?)? as usize,
            "--device" => device = value()?.parse().map_err(|error: gpu::GpuError| error.to_string())?,
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let task = task.ok_or_else(|| format!("--out or --evaluate is required\n{USAGE}"))?;
    training.check().map_err(|error| error.to_string())?;
    Ok(Arguments { task, training, device, evaluation_images })
}

fn minutes(duration: std::time::Duration) -> String {
    let seconds = duration.as_secs();
    format!("{}m{:02}s", seconds / 60, seconds % 60)
}

fn run(arguments: Arguments) -> Result<(), String> {
    let rater = match &arguments.task {
        Task::Evaluate(path) => {
            let bytes = std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()))?;
            Rater::from_safetensors(&bytes).map_err(|error| format!("{}: {error}", path.display()))?
        }
        Task::Train(path) => {
            let backend = Backend::choose(arguments.device).map_err(|error| error.to_string())?;
            let training = &arguments.training;
            eprintln!("training a rater on {}", backend.describe());
            eprintln!("options: {}", training.to_json());
            eprintln!("{} parameters", training.classifier_config().parameter_count());
            let trained = train_rater(training, &backend, 100, &mut |progress| {
                eprintln!(
                    "step {:>5}/{}  loss {:.4}  lr {:.2e}  {:.0} img/s  elapsed {}  eta {}",
                    progress.step,
                    progress.steps,
                    progress.loss,
                    progress.learning_rate,
                    progress.images_per_second,
                    minutes(progress.elapsed),
                    minutes(progress.eta),
                );
                true
            })
            .map_err(|error| error.to_string())?;
            // Write beside the target, then rename: an interrupted write leaves the old file.
            let partial = path.with_extension("partial");
            std::fs::write(&partial, &trained.weights)
                .and_then(|()| std::fs::rename(&partial, path))
                .map_err(|error| format!("{}: {error}", path.display()))?;
            println!(
                "trained {} steps × {} images in {} on {}; final loss (mean of the last 50 steps) {:.4}",
                training.steps,
                training.batch,
                minutes(trained.elapsed),
                trained.backend,
                trained.final_loss
            );
            println!("wrote {} ({} bytes)", path.display(), trained.weights.len());
            trained.rater().map_err(|error| error.to_string())?
        }
    };
    let count = arguments.evaluation_images;
    println!("held-out renders, {count} per condition (evaluation seed {EVALUATION_SEED}):");
    println!("| condition | group | concept set | worst concept | quality Spearman |");
    println!("|---|---|---|---|---|");
    let accuracies: Vec<_> = [
        Condition::Clean,
        Condition::Augmented,
        Condition::Corrupted { max_severity: 0.5 },
        Condition::Corrupted { max_severity: 1.0 },
        Condition::Malformed { max_severity: 0.5 },
        Condition::Malformed { max_severity: 1.0 },
    ]
    .into_iter()
    .map(|condition| evaluate(&rater, condition, count, EVALUATION_SEED))
    .collect();
    for accuracy in &accuracies {
        let (worst, worst_accuracy) = accuracy.worst_concept();
        let spearman = if accuracy.quality_spearman.is_nan() {
            "–".to_string()
        } else {
            format!("{:.3}", accuracy.quality_spearman)
        };
        println!(
            "| {} | {:.2}% | {:.2}% | {} {:.2}% | {spearman} |",
            accuracy.condition,
            100.0 * accuracy.group,
            100.0 * accuracy.concepts,
            worst.id(),
            100.0 * worst_accuracy,
        );
    }
    println!();
    println!("per-concept presence accuracy:");
    let names: Vec<&str> = Concept::ALL.iter().map(|concept| concept.id()).collect();
    println!("| condition | {} |", names.join(" | "));
    println!("|---|{}", "---|".repeat(names.len()));
    for accuracy in &accuracies {
        let cells: Vec<String> = accuracy.per_concept.iter().map(|share| format!("{:.2}%", 100.0 * share)).collect();
        println!("| {} | {} |", accuracy.condition, cells.join(" | "));
    }
    Ok(())
}

fn main() -> ExitCode {
    let arguments = match parse(std::env::args().skip(1)) {
        Ok(arguments) => arguments,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(arguments) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
