//! The whole DiT: wgpu vs the CPU reference, the backward against finite differences (f64),
//! LoRA invariants, training, sampling determinism, and weight files.

mod common;

use common::{Rng, assert_close, context};
use gpu::GpuError;
use gpu::cpu::AdamW;
use gpu::device::{CpuDevice, Device, WgpuDevice};
use gpu::kernels::noise::NoiseStream;
use gpu::model::{
    Dit, DitConfig, HostAdapter, HostWeights, LoraConfig, LoraTarget, LossWeighting, SampleOptions, TextPooling,
    TimestepSampling, TrainBatch, TrainMode,
};

fn wgpu_device() -> WgpuDevice {
    WgpuDevice::new(context())
}

fn batch(config: &DitConfig, count: usize, seed: u64) -> TrainBatch {
    let mut rng = Rng::new(seed);
    let images = rng.vec(count * config.image_len());
    let mut ids: Vec<u32> = (0..count * config.max_tokens).map(|_| rng.below(config.vocabulary) as u32).collect();
    // The first sample has an empty prompt: it uses the learned null text.
    ids[..config.max_tokens].fill(0);
    TrainBatch { images, ids }
}

fn all_targets() -> LoraConfig {
    LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: vec![LoraTarget::Qkv, LoraTarget::Proj, LoraTarget::Fc1, LoraTarget::Fc2],
    }
}

/// An adapter whose B is not zero (as after training).
fn trained_adapter(config: &DitConfig, seed: u64) -> HostAdapter {
    let mut adapter = HostAdapter::init(config, &all_targets(), seed);
    let mut rng = Rng::new(seed + 1);
    for (name, (_, values)) in adapter.weights.tensors.iter_mut() {
        if name.contains("lora_B") {
            values.iter_mut().for_each(|v| *v = 0.3 * rng.uniform());
        }
    }
    adapter
}

fn forward<D: Device>(device: &D, model: &Dit<D>, data: &TrainBatch, timesteps: &[f32]) -> Vec<f32> {
    let x = device.upload(&data.images);
    let out = model.forward(device, &x, timesteps, &data.ids).unwrap();
    device.download(&out, data.images.len()).unwrap()
}

#[test]
fn forward_on_wgpu_matches_cpu_with_and_without_lora() {
    let config = DitConfig::tiny();
    let weights = HostWeights::randomized(&config, 1, 0.3);
    let adapter = trained_adapter(&config, 2);
    let data = batch(&config, 3, 3);
    let timesteps = [0.0, 517.0, 999.0];
    let cpu = CpuDevice::<f32>::new();
    let gpu = wgpu_device();
    for adapter in [None, Some(&adapter)] {
        let expected = forward(&cpu, &Dit::new(&cpu, config, &weights, adapter).unwrap(), &data, &timesteps);
        let actual = forward(&gpu, &Dit::new(&gpu, config, &weights, adapter).unwrap(), &data, &timesteps);
        // Two blocks of reassociated sums, softmax and layer norms in f32: 1e-3 relative to the
        // output's typical magnitude (each kernel alone is within 1e-4).
        assert_close(&actual, &expected, 1e-3, &format!("DiT forward, adapter {}", adapter.is_some()));
        assert!(expected.iter().any(|v| v.abs() > 1e-3), "the output is not trivially zero");
    }
}

#[test]
fn training_step_on_wgpu_matches_cpu() {
    for pooling in [TextPooling::Mean, TextPooling::Sum] {
        training_step_matches_on_both_backends(DitConfig { text_pooling: pooling, ..DitConfig::tiny() });
    }
}

fn training_step_matches_on_both_backends(config: DitConfig) {
    let weights = HostWeights::randomized(&config, 4, 0.3);
    let adapter = trained_adapter(&config, 5);
    let data = batch(&config, 2, 6);
    let hyper = AdamW { lr: 1e-3, weight_decay: 0.01, max_grad_norm: 1.0, ..AdamW::default() };
    for mode in [TrainMode::Full, TrainMode::Lora] {
        let adapter = (mode == TrainMode::Lora).then_some(&adapter);
        let cpu = CpuDevice::<f32>::new();
        let gpu = wgpu_device();
        let mut on_cpu = Dit::new(&cpu, config, &weights, adapter).unwrap();
        let mut on_gpu = Dit::new(&gpu, config, &weights, adapter).unwrap();
        on_cpu.set_trainable(&cpu, mode);
        on_gpu.set_trainable(&gpu, mode);
        let loss_cpu = on_cpu.train_step(&cpu, &data, mode, &hyper, 7).unwrap();
        let loss_gpu = on_gpu.train_step(&gpu, &data, mode, &hyper, 7).unwrap();
        assert_close(&[loss_gpu], &[loss_cpu], 1e-4, &format!("{mode:?} loss"));
        let names: Vec<String> =
            on_cpu.parameters.iter().filter(|p| p.training.is_some()).map(|p| p.name.clone()).collect();
        assert!(!names.is_empty());
        for name in &names {
            let g_cpu = on_cpu.gradient(&cpu, name).unwrap().unwrap();
            let g_gpu = on_gpu.gradient(&gpu, name).unwrap().unwrap();
            // Gradients pass through every block in f32 with different summation orders.
            assert_close(&g_gpu, &g_cpu, 2e-3, &format!("{mode:?} gradient of {name}"));
        }
        let after_cpu = match mode {
            TrainMode::Full => on_cpu.base_weights(&cpu).unwrap(),
            TrainMode::Lora => on_cpu.adapter(&cpu).unwrap().unwrap().weights,
        };
        let after_gpu = match mode {
            TrainMode::Full => on_gpu.base_weights(&gpu).unwrap(),
            TrainMode::Lora => on_gpu.adapter(&gpu).unwrap().unwrap().weights,
        };
        for (name, (_, values)) in &after_cpu.tensors {
            let got = &after_gpu.tensors[name].1;
            let grad = on_cpu.gradient(&cpu, name).unwrap().unwrap();
            let largest = grad.iter().fold(0.0f32, |m, g| m.max(g.abs()));
            for ((g, c), gradient) in got.iter().zip(values).zip(&grad) {
                // Adam's first step moves a value by ≈ lr·g/(|g| + eps): where the gradient is
                // rounding noise (e.g. the key bias, to which softmax is invariant) its sign is
                // arbitrary and the step may differ by up to 2·lr; elsewhere the values agree.
                let noise = gradient.abs() <= 1e-4 * largest;
                let bound = if noise { 2.0 * hyper.lr + 1e-6 } else { 1e-5 + 1e-4 * c.abs() };
                assert!((g - c).abs() <= bound, "{mode:?} updated {name}: {g} vs {c} (gradient {gradient})");
            }
        }
    }
}

/// The whole backward (every parameter kind, LoRA included) against central differences of the
/// loss, in f64 on the CPU reference.
#[test]
fn whole_model_gradients_match_finite_differences_in_f64() {
    for pooling in [TextPooling::Mean, TextPooling::Sum] {
        gradients_match_finite_differences(DitConfig {
            depth: 1,
            image_size: 4,
            width: 8,
            heads: 2,
            frequency_dim: 8,
            text_pooling: pooling,
            ..DitConfig::tiny()
        });
    }
}

fn gradients_match_finite_differences(config: DitConfig) {
    let weights = HostWeights::randomized(&config, 8, 0.4);
    let adapter = trained_adapter(&config, 9);
    let data = batch(&config, 2, 10);
    let device = CpuDevice::<f64>::new();
    for (mode, weighting) in [
        (TrainMode::Full, LossWeighting::Uniform),
        (TrainMode::Lora, LossWeighting::Uniform),
        (TrainMode::Full, LossWeighting::MinSnr { gamma: 0.05 }),
    ] {
        let mut model = Dit::new(&device, config, &weights, Some(&adapter)).unwrap();
        model.set_trainable(&device, mode);
        model.loss_weighting = weighting;
        let loss_of = |model: &Dit<CpuDevice<f64>>| {
            model.loss_and_gradients(&device, &data, mode, 11).unwrap().read().unwrap()[0]
        };
        let weighted = loss_of(&model);
        if weighting != LossWeighting::Uniform {
            // The weighting must bite on this batch, or the check below proves nothing about it.
            model.loss_weighting = LossWeighting::Uniform;
            let plain = loss_of(&model);
            model.loss_weighting = weighting;
            assert!(weighted < plain - 1e-3 * plain, "weighted loss {weighted} vs plain {plain}");
            loss_of(&model);
        }
        let mut rng = Rng::new(12);
        let trained: Vec<usize> =
            (0..model.parameters.len()).filter(|i| model.parameters[*i].training.is_some()).collect();
        for index in trained {
            let parameter = &model.parameters[index];
            let analytic = parameter.training.as_ref().unwrap()[0].read().unwrap().clone();
            let value = parameter.value.clone();
            for _ in 0..3 {
                let element = rng.below(parameter.len());
                let original = value.read().unwrap()[element];
                let h = 1e-6;
                value.write().unwrap()[element] = original + h;
                let up = loss_of(&model);
                value.write().unwrap()[element] = original - h;
                let down = loss_of(&model);
                value.write().unwrap()[element] = original;
                let numeric = (up - down) / (2.0 * h);
                assert!(
                    (numeric - analytic[element]).abs() <= 1e-6 + 1e-5 * analytic[element].abs(),
                    "{mode:?} {weighting:?} {}[{element}]: numeric {numeric} vs analytic {}",
                    parameter.name,
                    analytic[element]
                );
            }
        }
    }
}

#[test]
fn min_snr_weights_by_hand() {
    let weighting = LossWeighting::MinSnr { gamma: 5.0 };
    // ᾱ = 0.5: snr 1 < γ, full weight; ᾱ = 0.9: snr 9, weight 5/9; ᾱ = 0.01: snr ≈ 0.0101.
    assert_eq!(weighting.weight(0.5), 1.0);
    assert!((weighting.weight(0.9) - 5.0 / 9.0).abs() < 1e-6);
    assert_eq!(weighting.weight(0.01), 1.0);
    assert_eq!(LossWeighting::Uniform.weight(0.9), 1.0);
}

/// Φ, the standard normal CDF, through Abramowitz and Stegun 7.1.26 (|error| < 1.5e-7).
fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let erf = 1.0 - poly * (-z * z).exp();
    if x >= 0.0 { 0.5 * (1.0 + erf) } else { 0.5 * (1.0 - erf) }
}

#[test]
fn logit_normal_timesteps_follow_their_distribution() {
    // P(t ≤ k) = P(1000·σ(m + s·z) < k + 1) = Φ((logit((k + 1)/1000) − m)/s).
    let (location, scale) = (0.3, 0.8);
    let sampling = TimestepSampling::LogitNormal { location, scale };
    let draws: Vec<usize> = (0..200u64)
        .flat_map(|seed| {
            let stream = NoiseStream::new(seed);
            (0..100u32).map(move |sample| sampling.timestep(&stream, sample))
        })
        .collect();
    assert!(draws.iter().all(|t| *t < 1000));
    let n = draws.len() as f64;
    for k in [50usize, 200, 400, 500, 574, 700, 900, 980] {
        let empirical = draws.iter().filter(|t| **t <= k).count() as f64 / n;
        let p = (k + 1) as f64 / 1000.0;
        let expected = normal_cdf(((p / (1.0 - p)).ln() - f64::from(location)) / f64::from(scale));
        // Five binomial standard deviations (at most 0.018 for 20,000 draws).
        let tolerance = 5.0 * (expected * (1.0 - expected) / n).sqrt() + 1e-3;
        assert!((empirical - expected).abs() <= tolerance, "P(t ≤ {k}): {empirical} vs {expected} ± {tolerance}");
    }
    // Uniform stays what it was: the stream's bits modulo 1000, and its CDF is linear.
    let stream = NoiseStream::new(7);
    for sample in 0..64 {
        assert_eq!(
            TimestepSampling::Uniform.timestep(&stream, sample),
            (stream.bits(u32::MAX - sample) % 1000) as usize
        );
    }
    let uniform: Vec<usize> =
        (0..20_000u32).map(|sample| TimestepSampling::Uniform.timestep(&stream, sample)).collect();
    let below = uniform.iter().filter(|t| **t < 300).count() as f64 / uniform.len() as f64;
    assert!((below - 0.3).abs() < 0.02, "uniform P(t < 300) = {below}");
}

#[test]
fn timestep_sampling_reaches_the_loss() {
    // Every timestep pinned near t = 999 (pure noise) against near t = 0 (clean): the ε-error of
    // the same random model on the same batch and noise differs, so training reads the setting.
    let config = DitConfig::tiny();
    let weights = HostWeights::randomized(&config, 8, 0.4);
    let data = batch(&config, 4, 10);
    let device = CpuDevice::<f64>::new();
    let mut model = Dit::new(&device, config, &weights, None).unwrap();
    model.set_trainable(&device, TrainMode::Full);
    let mut loss_at = |location: f32| {
        model.timestep_sampling = TimestepSampling::LogitNormal { location, scale: 1e-3 };
        model.loss_and_gradients(&device, &data, TrainMode::Full, 11).unwrap().read().unwrap()[0]
    };
    let (clean, noisy) = (loss_at(-12.0), loss_at(12.0));
    assert!((clean - noisy).abs() > 1e-3 * clean.max(noisy), "clean {clean} vs noisy {noisy}");
}

#[test]
fn lora_with_zero_b_gives_exactly_the_base_output() {
    let config = DitConfig::tiny();
    let weights = HostWeights::randomized(&config, 13, 0.3);
    let adapter = HostAdapter::init(&config, &all_targets(), 14);
    let data = batch(&config, 2, 15);
    let timesteps = [3.0, 700.0];
    let cpu = CpuDevice::<f32>::new();
    let base = forward(&cpu, &Dit::new(&cpu, config, &weights, None).unwrap(), &data, &timesteps);
    let with_lora = forward(&cpu, &Dit::new(&cpu, config, &weights, Some(&adapter)).unwrap(), &data, &timesteps);
    assert_eq!(base, with_lora, "cpu");
    let gpu = wgpu_device();
    let base = forward(&gpu, &Dit::new(&gpu, config, &weights, None).unwrap(), &data, &timesteps);
    let with_lora = forward(&gpu, &Dit::new(&gpu, config, &weights, Some(&adapter)).unwrap(), &data, &timesteps);
    assert_eq!(base, with_lora, "wgpu");
}

#[test]
fn merged_adapter_equals_unmerged() {
    let config = DitConfig::tiny();
    let weights = HostWeights::randomized(&config, 16, 0.3);
    let adapter = trained_adapter(&config, 17);
    let merged = adapter.merge_into(&config, &weights).unwrap();
    let deeper = DitConfig { depth: 3, ..config };
    assert!(adapter.merge_into(&deeper, &weights).is_err(), "an adapter for another shape is refused");
    assert_ne!(merged, weights);
    let data = batch(&config, 2, 18);
    let timesteps = [10.0, 400.0];
    let cpu = CpuDevice::<f32>::new();
    let unmerged_out = forward(&cpu, &Dit::new(&cpu, config, &weights, Some(&adapter)).unwrap(), &data, &timesteps);
    let merged_out = forward(&cpu, &Dit::new(&cpu, config, &merged, None).unwrap(), &data, &timesteps);
    // W x + s B (A x) vs (W + s B A) x: the same sum in another order.
    assert_close(&merged_out, &unmerged_out, 1e-4, "merged vs unmerged");
}

#[test]
fn lora_training_lowers_the_loss_on_a_tiny_fixed_dataset() {
    let config = DitConfig::tiny();
    let weights = HostWeights::randomized(&config, 19, 0.2);
    let adapter = HostAdapter::init(&config, &all_targets(), 20);
    let data = batch(&config, 4, 21);
    let device = CpuDevice::<f32>::new();
    let mut model = Dit::new(&device, config, &weights, Some(&adapter)).unwrap();
    model.set_trainable(&device, TrainMode::Lora);
    let evaluate = |model: &Dit<CpuDevice<f32>>| -> f32 {
        (0..4)
            .map(|seed| {
                device
                    .download(&model.loss_and_gradients(&device, &data, TrainMode::Lora, 1000 + seed).unwrap(), 1)
                    .unwrap()[0]
            })
            .sum()
    };
    let before = evaluate(&model);
    let hyper = AdamW { lr: 1e-2, ..AdamW::default() };
    for step in 0..40 {
        model.train_step(&device, &data, TrainMode::Lora, &hyper, step).unwrap();
    }
    let after = evaluate(&model);
    assert!(after < 0.9 * before, "loss {before} → {after}");
    let base_after = model.base_weights(&device).unwrap();
    assert_eq!(base_after, weights, "LoRA training leaves the base untouched");
}

#[test]
fn a_gradient_of_an_unknown_parameter_is_refused_with_an_error() {
    let config = DitConfig::tiny();
    let device = CpuDevice::<f32>::new();
    let adapter = HostAdapter::init(&config, &all_targets(), 1);
    let mut model = Dit::new(&device, config, &HostWeights::init(&config, 2), Some(&adapter)).unwrap();
    model.set_trainable(&device, TrainMode::Lora);
    let error = model.gradient(&device, "blocks.9.attn.qkv.weight").unwrap_err();
    assert!(matches!(&error, GpuError::UnknownParameter(name) if name == "blocks.9.attn.qkv.weight"), "{error}");
    // A known parameter: frozen (the base, in LoRA training) has none, trained has one.
    assert_eq!(model.gradient(&device, "blocks.0.attn.qkv.weight").unwrap(), None);
    let lora_a = HostAdapter::name(0, LoraTarget::Qkv, 'A');
    assert!(model.gradient(&device, &lora_a).unwrap().is_some());
}

#[test]
fn sampling_is_deterministic_in_the_seed_and_agrees_across_backends() {
    let config = DitConfig::tiny();
    let weights = HostWeights::randomized(&config, 22, 0.2);
    let prompts = batch(&config, 2, 23).ids;
    let negative = batch(&config, 2, 24).ids;
    let options = SampleOptions { steps: 4, eta: 0.5, guidance_scale: 3.0, seed: 25 };
    let cpu = CpuDevice::<f32>::new();
    let gpu = wgpu_device();
    let on_cpu = Dit::new(&cpu, config, &weights, None).unwrap();
    let on_gpu = Dit::new(&gpu, config, &weights, None).unwrap();
    let first = on_gpu.sample(&gpu, &options, &prompts, Some(&negative)).unwrap();
    let second = on_gpu.sample(&gpu, &options, &prompts, Some(&negative)).unwrap();
    assert_eq!(first, second, "same seed, same image (wgpu)");
    let other = on_gpu.sample(&gpu, &SampleOptions { seed: 26, ..options }, &prompts, Some(&negative)).unwrap();
    assert_ne!(first, other, "another seed, another image");
    let without_negative = on_gpu.sample(&gpu, &options, &prompts, None).unwrap();
    assert_ne!(first, without_negative, "the negative prompt changes the image");
    let reference = on_cpu.sample(&cpu, &options, &prompts, Some(&negative)).unwrap();
    assert_eq!(reference, on_cpu.sample(&cpu, &options, &prompts, Some(&negative)).unwrap(), "same seed (cpu)");
    // Four guided steps amplify f32 differences (guidance 3): 1e-3 of the typical magnitude.
    assert_close(&first, &reference, 1e-3, "wgpu vs cpu samples");
}

#[test]
fn weights_and_adapters_round_trip_through_safetensors_and_peft_config() {
    let config = DitConfig::tiny();
    let weights = HostWeights::init(&config, 27);
    let bytes = weights.to_safetensors(None).unwrap();
    let back = HostWeights::from_safetensors(&bytes).unwrap();
    assert_eq!(back, weights);
    back.check(&config).unwrap();
    let wider = DitConfig { width: 32, ..config };
    assert!(back.check(&wider).is_err(), "a shape mismatch is reported");
    assert!(HostWeights::from_safetensors(b"not safetensors").is_err());

    let adapter = trained_adapter(&config, 28);
    let json = adapter.adapter_config_json();
    let parsed = HostAdapter::parse_config(&json).unwrap();
    assert_eq!(parsed, adapter.config);
    let adapter_bytes = adapter.weights.to_safetensors(None).unwrap();
    let names: Vec<String> = HostWeights::from_safetensors(&adapter_bytes).unwrap().tensors.keys().cloned().collect();
    assert!(names.contains(&"base_model.model.blocks.0.attn.qkv.lora_A.weight".to_string()), "{names:?}");
    // DiT's own initialisation is adaLN-Zero: the untrained model predicts exactly zero.
    let device = CpuDevice::<f32>::new();
    let model = Dit::new(&device, config, &weights, None).unwrap();
    let data = batch(&config, 1, 29);
    assert!(forward(&device, &model, &data, &[5.0]).iter().all(|v| *v == 0.0));
}

#[test]
fn the_engine_runs_the_same_model_on_either_backend() {
    use gpu::{Backend, DeviceChoice, Engine};
    let config = DitConfig::tiny();
    let weights = HostWeights::randomized(&config, 30, 0.2);
    let prompts = batch(&config, 2, 31).ids;
    let options = SampleOptions { steps: 2, eta: 0.0, guidance_scale: 2.0, seed: 32 };
    let cpu = Engine::new(&Backend::choose(DeviceChoice::Cpu).unwrap(), config, &weights, None).unwrap();
    let gpu = Engine::new(&Backend::choose(DeviceChoice::Wgpu).unwrap(), config, &weights, None).unwrap();
    assert!(matches!(cpu, Engine::Cpu(..)) && matches!(gpu, Engine::Wgpu(..)));
    let a = cpu.sample(&options, &prompts, None).unwrap();
    let b = gpu.sample(&options, &prompts, None).unwrap();
    assert_close(&b, &a, 1e-3, "engine samples");
    let mut trainer = Engine::new(&Backend::Cpu, config, &weights, None).unwrap();
    trainer.set_trainable(TrainMode::Full);
    let data = batch(&config, 2, 33);
    let loss = trainer.train_step(&data, TrainMode::Full, &AdamW::default(), 1).unwrap();
    assert!(loss.is_finite());
    assert_ne!(trainer.base_weights().unwrap(), weights, "full training changes the base");
    assert!(Engine::new(&Backend::Cpu, DitConfig { width: 32, ..config }, &weights, None).is_err());
    // Bad inputs are errors, not panics.
    assert!(cpu.sample(&options, &prompts[..3], None).is_err(), "ids not a multiple of max_tokens");
    let bad_ids = vec![config.vocabulary as u32; prompts.len()];
    assert!(gpu.sample(&options, &bad_ids, None).is_err(), "id outside the vocabulary");
    let short = TrainBatch { images: vec![0.0; 5], ids: data.ids.clone() };
    assert!(trainer.train_step(&short, TrainMode::Full, &AdamW::default(), 2).is_err());
    // Progress is reported per step, and a `false` stops the sampling.
    let mut seen = Vec::new();
    let result = gpu.sample_with_progress(&options, &prompts, None, &mut |done, total| {
        seen.push((done, total));
        done < 1
    });
    assert!(matches!(result, Err(gpu::engine::EngineError::Gpu(gpu::GpuError::Cancelled))));
    assert_eq!(seen, vec![(1, 2)], "stopped after the first of two steps");
}

/// Several steps on one wgpu device: the second and later steps reuse pooled buffers (zeroed or
/// overwritten); the losses must keep agreeing with the CPU reference.
#[test]
fn repeated_training_steps_reuse_buffers_correctly() {
    let config = DitConfig::tiny();
    let weights = HostWeights::randomized(&config, 34, 0.3);
    let adapter = trained_adapter(&config, 35);
    let data = batch(&config, 2, 36);
    let hyper = AdamW { lr: 1e-3, ..AdamW::default() };
    let cpu = CpuDevice::<f32>::new();
    let gpu = wgpu_device();
    let mut on_cpu = Dit::new(&cpu, config, &weights, Some(&adapter)).unwrap();
    let mut on_gpu = Dit::new(&gpu, config, &weights, Some(&adapter)).unwrap();
    on_cpu.set_trainable(&cpu, TrainMode::Lora);
    on_gpu.set_trainable(&gpu, TrainMode::Lora);
    for step in 0..4 {
        let loss_cpu = on_cpu.train_step(&cpu, &data, TrainMode::Lora, &hyper, 40 + step).unwrap();
        let loss_gpu = on_gpu.train_step(&gpu, &data, TrainMode::Lora, &hyper, 40 + step).unwrap();
        // Adam steps of ±lr where a gradient is rounding noise make the runs drift slowly.
        assert_close(&[loss_gpu], &[loss_cpu], 1e-3, &format!("loss at step {step}"));
    }
    let x = gpu.upload(&data.images);
    let first = gpu.download(&on_gpu.forward(&gpu, &x, &[5.0, 6.0], &data.ids).unwrap(), data.images.len()).unwrap();
    let second = gpu.download(&on_gpu.forward(&gpu, &x, &[5.0, 6.0], &data.ids).unwrap(), data.images.len()).unwrap();
    assert_eq!(first, second, "a forward on reused buffers gives the same bits");
}

/// With per-image seeds an image depends only on its prompt and seed: the batch it shares
/// changes nothing (up to the summation order of batched products), on either backend.
#[test]
fn seeded_sampling_does_not_depend_on_the_batch() {
    let config = DitConfig::tiny();
    let weights = HostWeights::randomized(&config, 40, 0.3);
    let options = SampleOptions { steps: 3, eta: 0.0, guidance_scale: 2.0, seed: 41 };
    let data = batch(&config, 3, 42);
    let image = config.image_len();
    let cpu = CpuDevice::<f32>::new();
    let model = Dit::new(&cpu, config, &weights, None).unwrap();
    let negative = vec![0u32; data.ids.len()];
    let sample = |ids: &[u32], seeds: &[u64]| {
        let negative = &negative[..ids.len()];
        model.sample_seeded(&cpu, &options, ids, Some(negative), seeds, &mut |_, _| true).unwrap()
    };
    let all = sample(&data.ids, &[5, 6, 7]);
    for (b, seed) in [5u64, 6, 7].into_iter().enumerate() {
        let ids = &data.ids[b * config.max_tokens..(b + 1) * config.max_tokens];
        let alone = sample(ids, &[seed]);
        assert_close(&all[b * image..(b + 1) * image], &alone, 1e-5, &format!("image {b}"));
    }
    // Another seed, another picture; the wgpu backend agrees.
    let swapped = sample(&data.ids, &[5, 9, 7]);
    assert_ne!(&swapped[image..2 * image], &all[image..2 * image]);
    assert_close(&swapped[..image], &all[..image], 1e-5, "image 0 kept");
    let gpu = wgpu_device();
    let on_gpu = Dit::new(&gpu, config, &weights, None).unwrap();
    let gpu_all =
        on_gpu.sample_seeded(&gpu, &options, &data.ids, Some(&negative), &[5, 6, 7], &mut |_, _| true).unwrap();
    assert_close(&gpu_all, &all, 1e-3, "wgpu vs cpu");
    assert!(model.sample_seeded(&cpu, &options, &data.ids, None, &[1, 2], &mut |_, _| true).is_err());
}
