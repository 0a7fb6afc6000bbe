//! `gpu-bench`: medians (after a warm-up) of the compute kernels and the DiT on the wgpu adapter
//! at hand and on the CPU backend. Run it `--release`.
//!
//! ```text
//! gpu-bench [--sizes 1024,4096] [--linear 16384x1536x384,16384x384x1536] [--cpu-sizes 1024]
//!           [--repeats 10] [--check-size 1000]
//!           [--models small,dit-s] [--cpu-models small] [--batch 64] [--steps 25]
//!           [--model-repeats 3] [--no-gpu] [--no-cpu] [--dump DIR]
//! ```
//! Every matmul kernel variant (and what `Auto` picks) is timed on each square size (`A · B`) and
//! each linear shape `MxNxK` (`x · Wᵀ`, `W` stored `N × K`, as the DiT's layers; `none` for
//! none). `--dump DIR` writes a comparison case for `gpu/reference/dit.py --check DIR` (weights, a LoRA
//! adapter in PEFT's format, inputs, and this crate's outputs) instead of benchmarking.

use std::path::Path;
use std::sync::Arc;

use gpu::bench::{BenchOptions, run_with_progress};
use gpu::device::{CpuDevice, Device, WgpuDevice};
use gpu::model::{Dit, DitConfig, HostAdapter, HostWeights, LoraConfig, LoraTarget, SampleOptions};
use gpu::{Backend, GpuContext};

fn parse_sizes(text: &str) -> Result<Vec<usize>, String> {
    text.split(',')
        .filter(|part| !part.is_empty())
        .map(|part| part.trim().parse().map_err(|_| format!("not a size: {part:?}")))
        .collect()
}

fn parse_shapes(text: &str) -> Result<Vec<(usize, usize, usize)>, String> {
    text.split(',')
        .filter(|part| !part.is_empty() && *part != "none")
        .map(|part| {
            let dims = parse_sizes(&part.replace('x', ","))?;
            match dims[..] {
                [m, n, k] => Ok((m, n, k)),
                _ => Err(format!("not a shape MxNxK: {part:?}")),
            }
        })
        .collect()
}

fn parse_models(text: &str) -> Result<Vec<(String, DitConfig)>, String> {
    text.split(',')
        .filter(|part| !part.is_empty() && *part != "none")
        .map(|part| match part {
            "tiny" => Ok((part.to_string(), DitConfig::tiny())),
            "small" => Ok((part.to_string(), DitConfig::small())),
            "dit-s" => Ok((part.to_string(), DitConfig::dit_s())),
            other => Err(format!("unknown model {other:?} (tiny, small, dit-s, none)")),
        })
        .collect()
}

const USAGE: &str = "usage: gpu-bench [--sizes 1024,4096] \
[--linear 16384x1536x384,16384x384x1536] [--cpu-sizes 1024] [--repeats 10] \
[--check-size 1000] [--models small,dit-s] [--cpu-models small] [--batch 64] [--steps 25] \
[--model-repeats 3] [--no-gpu] [--no-cpu] [--dump DIR]";

fn parse(args: &[String]) -> Result<(BenchOptions, Option<String>), String> {
    let mut options = BenchOptions::default();
    let mut dump = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = || iter.next().cloned().ok_or(format!("{arg} needs a value"));
        let number = |text: String| text.parse::<usize>().map_err(|_| format!("bad number for {arg}"));
        match arg.as_str() {
            "--sizes" => options.gpu_sizes = parse_sizes(&value()?)?,
            "--linear" => options.gpu_linear_shapes = parse_shapes(&value()?)?,
            "--cpu-sizes" => options.cpu_sizes = parse_sizes(&value()?)?,
            "--repeats" => options.repeats = number(value()?)?,
            "--check-size" => options.check_size = number(value()?)?,
            "--models" => options.gpu_models = parse_models(&value()?)?,
            "--cpu-models" => options.cpu_models = parse_models(&value()?)?,
            "--batch" => options.model_batch = number(value()?)?,
            "--steps" => options.sample_steps = number(value()?)?,
            "--model-repeats" => options.model_repeats = number(value()?)?,
            "--no-gpu" => options.gpu = false,
            "--no-cpu" => options.cpu = false,
            "--dump" => dump = Some(value()?),
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok((options, dump))
}

/// Writes the comparison case: config.json, weights.safetensors, adapter/ (PEFT), case.safetensors.
fn dump_case<D: Device>(device: &D, directory: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let config = DitConfig::small();
    let batch = 2;
    let weights = HostWeights::randomized(&config, 5, 0.05);
    let lora = LoraConfig { rank: 4, alpha: 8.0, targets: LoraTarget::ALL.to_vec() };
    let mut adapter = HostAdapter::init(&config, &lora, 6);
    for (name, (_, values)) in adapter.weights.tensors.iter_mut() {
        if name.contains("lora_B") {
            values.iter_mut().enumerate().for_each(|(i, v)| *v = 0.02 * (((i * 37) % 19) as f32 - 9.0) / 9.0);
        }
    }
    let x: Vec<f32> = (0..batch * config.image_len()).map(|i| ((i * 13 % 101) as f32 / 50.0) - 1.0).collect();
    let timesteps = vec![37.0f32, 801.0];
    let mut ids = vec![0u32; batch * config.max_tokens];
    ids[..4].copy_from_slice(&[5, 17, 17, 300]); // the second prompt is empty: the null text
    let negative: Vec<u32> =
        (0..batch * config.max_tokens).map(|i| if i % config.max_tokens == 0 { 9 } else { 0 }).collect();
    let options = SampleOptions { steps: 5, eta: 0.0, guidance_scale: 3.0, seed: 7 };

    let base = Dit::new(device, config, &weights, None)?;
    let input = device.upload(&x);
    let epsilon = device.download(&base.forward(device, &input, &timesteps, &ids)?, x.len())?;
    let sample = base.sample(device, &options, &ids, Some(&negative))?;
    let with_lora = Dit::new(device, config, &weights, Some(&adapter))?;
    let epsilon_lora = device.download(&with_lora.forward(device, &input, &timesteps, &ids)?, x.len())?;
    let mut initial = vec![0.0; x.len()];
    gpu::kernels::noise::NoiseStream::new(options.seed).fill(0, 1.0, &mut initial);

    std::fs::create_dir_all(directory.join("adapter"))?;
    let json = serde_json::json!({
        "image_size": config.image_size, "channels": config.channels, "patch": config.patch,
        "width": config.width, "depth": config.depth, "heads": config.heads,
        "mlp_ratio": config.mlp_ratio, "vocabulary": config.vocabulary,
        "max_tokens": config.max_tokens, "frequency_dim": config.frequency_dim,
        "sample": { "steps": options.steps, "eta": options.eta, "guidance_scale": options.guidance_scale },
    });
    std::fs::write(directory.join("config.json"), json.to_string())?;
    std::fs::write(directory.join("weights.safetensors"), weights.to_safetensors(None)?)?;
    std::fs::write(directory.join("adapter/adapter_model.safetensors"), adapter.weights.to_safetensors(None)?)?;
    std::fs::write(directory.join("adapter/adapter_config.json"), adapter.adapter_config_json())?;
    let shape = vec![batch, config.channels, config.image_size, config.image_size];
    let ids_shape = vec![batch, config.max_tokens];
    let mut case = HostWeights::default();
    for (name, shape, values) in [
        ("x", shape.clone(), x.clone()),
        ("t", vec![batch], timesteps.clone()),
        ("ids", ids_shape.clone(), ids.iter().map(|v| *v as f32).collect()),
        ("negative_ids", ids_shape, negative.iter().map(|v| *v as f32).collect()),
        ("epsilon", shape.clone(), epsilon),
        ("epsilon_lora", shape.clone(), epsilon_lora),
        ("initial_noise", shape.clone(), initial),
        ("sample", shape, sample),
    ] {
        case.tensors.insert(name.to_string(), (shape, values));
    }
    std::fs::write(directory.join("case.safetensors"), case.to_safetensors(None)?)?;
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (options, dump) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    if let Some(directory) = dump {
        let result = if options.gpu {
            GpuContext::new()
                .map_err(|error| error.into())
                .and_then(|context| dump_case(&WgpuDevice::new(Arc::new(context)), Path::new(&directory)))
        } else {
            dump_case(&CpuDevice::<f32>::new(), Path::new(&directory))
        };
        if let Err(error) = result {
            eprintln!("gpu-bench --dump: {error}");
            std::process::exit(1);
        }
        println!("wrote the comparison case to {directory}");
        return;
    }
    if let Ok(backend) = Backend::from_env() {
        eprintln!("THITL_DEVICE chooses {}", backend.describe());
    }
    // Lines are printed as they are measured, so a run cut short still reports; the table last.
    let mut progress = |line: &str| {
        println!("{line}");
        use std::io::Write;
        std::io::stdout().flush().ok();
    };
    match run_with_progress(&options, &mut progress) {
        Ok(report) => print!("{}", report.render()),
        Err(error) => {
            eprintln!("gpu-bench: {error}");
            std::process::exit(1);
        }
    }
}
