//! A rehearsal of T-HITL's core loop on one association, without the event store or people:
//! measure the base model, generate candidates from neutral prompts with the concept as negative
//! prompt, screen them with the rater (standing in for round 1), fine-tune a LoRA adapter on the
//! accepted ones under their original prompts (plus a prior-preservation set), and measure again.
//! It is how the campaign's defaults were chosen; `thitl demo` runs the real thing.
//!
//! ```sh
//! cargo run --release -p scenes --example mitigate -- --group woman --concept hippopotamus
//! ```
//!
//! Options: `--weights PATH` (default: the shipped base model), `-n N` probe images before and
//! after (128), `--candidates N` (160), `--prior N` (96), `--steps N` (300), `--lr X` (2e-3),
//! `--rank R` (8), `--prior-weight λ` (1), `--no-screen` (the traditional arm: train on every
//! candidate).

use std::time::Instant;

use gpu::Backend;
use scenes::caption::CaptionSpec;
use scenes::{BaseModel, Concept, Example, FineTuneSettings, Flow, Group, Image, Rater, Setting, caption, fine_tune};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let number = |name: &str, default: f64| value(name).map_or(default, |v| v.parse().expect("a number"));
    let group = Group::from_name(&value("--group").unwrap_or("woman".into())).expect("a group");
    let concept = Concept::from_name(&value("--concept").unwrap_or("hippopotamus".into())).expect("a concept");
    let n = number("-n", 128.0) as usize;
    let backend = Backend::Cpu;
    let path = value("--weights").expect("--weights PATH: base weights made by `thitl scenes train-base`");
    let base =
        BaseModel::load_with_metadata(&std::fs::read(path).expect("weights"), &backend).expect("the base model loads");
    let rater = Rater::shipped();
    let sampling = base.default_settings().clone();
    let started = Instant::now();

    let probes: Vec<String> = Setting::ALL
        .iter()
        .map(|setting| caption(&CaptionSpec { group, object: None, setting: Some(*setting) }, 7))
        .collect();
    let measure = |model: &BaseModel, label: &str| {
        let mut images = Vec::new();
        for (i, prompt) in probes.iter().enumerate() {
            let count = n / probes.len() + usize::from(i < n % probes.len());
            images.extend(model.sample(prompt, count, 1000 + i as u64, &sampling).expect("samples"));
        }
        let ratings = rater.rate(&images);
        let with = ratings.iter().filter(|r| r.present.contains(&concept)).count();
        let recognized = ratings.iter().filter(|r| r.group == group).count();
        let quality = ratings.iter().map(|r| r.quality).sum::<f32>() / ratings.len() as f32;
        println!(
            "{label}: {concept} in {with}/{} ({:.1}%), group recognized {:.1}%, quality {quality:.3} [{:.0} s]",
            images.len(),
            100.0 * with as f64 / images.len() as f64,
            100.0 * recognized as f64 / images.len() as f64,
            started.elapsed().as_secs_f64()
        );
        images
    };
    measure(&base, "before");

    // Candidates: training prompts that name the group and not the concept, sampled with the
    // concept as negative prompt.
    let candidates_wanted = number("--candidates", 160.0) as usize;
    let negative = scenes::SampleSettings { negative_prompt: Some(concept.name().to_string()), ..sampling.clone() };
    // `count` examples, 8 per caption; caption `i` from `spec(i)` with caption seed
    // `caption_seed + i` and sample seed `sample_seed + i`.
    let examples = |count: usize,
                    spec: &dyn Fn(usize) -> CaptionSpec,
                    (caption_seed, sample_seed): (u64, u64),
                    settings: &scenes::SampleSettings| {
        let mut out = Vec::new();
        for i in 0..count.div_ceil(8) {
            let prompt = caption(&spec(i), caption_seed + i as u64);
            let images = base.sample(&prompt, 8, sample_seed + i as u64, settings).expect("samples");
            out.extend(images.into_iter().map(|image| Example { prompt: prompt.clone(), image }));
        }
        out.truncate(count);
        out
    };
    let candidates = examples(
        candidates_wanted,
        &|i| CaptionSpec { group, object: None, setting: Some(Setting::ALL[i % Setting::ALL.len()]) },
        (50, 2000),
        &negative,
    );
    let ratings = rater.rate(&candidates.iter().map(|c| c.image.clone()).collect::<Vec<Image>>());
    let screened = !args.iter().any(|a| a == "--no-screen");
    let accepted: Vec<Example> = candidates
        .iter()
        .zip(&ratings)
        .filter(|(_, r)| !screened || (r.group == group && !r.present.contains(&concept) && r.quality >= 0.6))
        .map(|(c, _)| c.clone())
        .collect();
    let still = ratings.iter().filter(|r| r.present.contains(&concept)).count();
    println!(
        "candidates: {} ({} still show {concept}); {} accepted{} [{:.0} s]",
        candidates.len(),
        still,
        accepted.len(),
        if screened { "" } else { " (no screening: traditional arm)" },
        started.elapsed().as_secs_f64()
    );

    // Prior preservation: the base model's own pictures of other groups.
    let prior_wanted = number("--prior", 96.0) as usize;
    let others: Vec<Group> = Group::ALL.iter().copied().filter(|g| *g != group).collect();
    let prior = examples(
        prior_wanted,
        &|i| CaptionSpec {
            group: others[i % others.len()],
            object: None,
            setting: Some(Setting::ALL[(i / others.len()) % Setting::ALL.len()]),
        },
        (90, 3000),
        &sampling,
    );

    let defaults = FineTuneSettings::default();
    let settings = FineTuneSettings {
        steps: number("--steps", defaults.steps as f64) as usize,
        learning_rate: number("--lr", f64::from(defaults.learning_rate)) as f32,
        prior_weight: number("--prior-weight", f64::from(defaults.prior_weight)) as f32,
        lora: gpu::model::LoraConfig {
            rank: number("--rank", defaults.lora.rank as f64) as usize,
            alpha: number("--rank", defaults.lora.rank as f64) as f32,
            ..defaults.lora.clone()
        },
        progress_every: 50,
        ..defaults
    };
    let tuned = fine_tune(&base, &accepted, &prior, &settings, |p| {
        eprintln!("  step {}/{}: loss {:.4}", p.step, p.steps, p.loss);
        Flow::Continue
    })
    .expect("fine-tunes");
    println!(
        "fine-tuned: {} steps, final loss {:.4} [{:.0} s]",
        settings.steps,
        tuned.final_loss,
        started.elapsed().as_secs_f64()
    );
    let model = base.with_adapter(&tuned.adapter).expect("attaches");
    let after = measure(&model, "after");
    if let Some(path) = value("--grid") {
        std::fs::write(&path, scenes::grid_png(&after[..after.len().min(64)], 8, 4)).expect("grid");
        println!("wrote {path}");
    }
}
