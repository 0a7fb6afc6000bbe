//! LoRA training of the tiny SD UNets against PEFT (`reference/sd_lora_train_fixtures.py`, files
//! in `tests/fixtures/sd/<variant>/train/`): from the same initial adapter and batch, thitl's
//! noised latents, target, prediction, loss and every LoRA gradient, the gradient norm, the
//! adapter after one clipped AdamW step and the loss after it — on the CPU backend and on wgpu,
//! for an epsilon (sd1) and a v-prediction (sd2) pipeline. Plus: repeated steps on one batch
//! lower the loss, and gradient accumulation over two half batches equals one whole batch.

mod common;

use common::{assert_relative, sd_fixture as fixture};

use gpu::cpu::AdamW;
use gpu::device::{CpuDevice, ImageBackward};
use gpu::sd::config::UnetConfig;
use gpu::sd::lora::LoraAdapter;
use gpu::sd::scheduler::SchedulerConfig;
use gpu::sd::train::{LoraInit, LoraSettings, LoraTrainer, TrainBatch};
use gpu::sd::unet::Unet;
use gpu::sd::weights::ComponentWeights;
use serde_json::Value;

struct Reference {
    tensors: ComponentWeights,
    json: Value,
}

impl Reference {
    fn load(variant: &str) -> Self {
        let dir = fixture(variant).join("train");
        let tensors = ComponentWeights::from_files(vec![dir.join("reference.safetensors")]).expect("reference tensors");
        let json = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
        Reference { tensors, json }
    }

    fn tensor(&mut self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let shape = self.json["tensors"][name]
            .as_array()
            .unwrap_or_else(|| panic!("reference.json describes no tensor {name}"))
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect::<Vec<_>>();
        let tensor = self.tensors.take(name, &shape).unwrap();
        (tensor.shape, tensor.data)
    }

    fn value(&self, name: &str) -> f32 {
        self.json["values"][name].as_f64().unwrap_or_else(|| panic!("reference.json has no value {name}")) as f32
    }
}

fn hyper(reference: &Reference) -> AdamW {
    let optimizer = &reference.json["optimizer"];
    let get = |key: &str| optimizer[key].as_f64().unwrap_or_else(|| panic!("optimizer.{key}")) as f32;
    AdamW {
        lr: get("lr"),
        beta1: optimizer["betas"][0].as_f64().unwrap() as f32,
        beta2: optimizer["betas"][1].as_f64().unwrap() as f32,
        eps: get("eps"),
        weight_decay: get("weight_decay"),
        max_grad_norm: reference.json["clip_grad_norm"]["max_norm"].as_f64().unwrap() as f32,
    }
}

struct Setup<D: ImageBackward> {
    trainer: LoraTrainer<D>,
    reference: Reference,
    latents: Vec<f32>,
    noise: Vec<f32>,
    timesteps: Vec<u32>,
    context: Vec<f32>,
    shape: Vec<usize>,
    context_len: usize,
}

impl<D: ImageBackward> Setup<D> {
    fn batch(&self) -> TrainBatch<'_> {
        TrainBatch {
            latents: &self.latents,
            noise: &self.noise,
            timesteps: &self.timesteps,
            context: &self.context,
            context_len: self.context_len,
            batch: self.shape[0],
            height: self.shape[2],
            width: self.shape[3],
        }
    }
}

fn setup<D: ImageBackward>(device: &D, variant: &str, init: Option<u64>) -> Setup<D> {
    let pipeline = fixture(variant).join("pipeline");
    let mut reference = Reference::load(variant);
    let config = UnetConfig::read(&pipeline.join("unet/config.json")).unwrap();
    let unet = Unet::load(
        device,
        &config,
        ComponentWeights::load(&pipeline.join("unet"), "diffusion_pytorch_model", None).unwrap(),
    )
    .unwrap();
    let scheduler = SchedulerConfig::read(&pipeline.join("scheduler/scheduler_config.json")).unwrap();
    let lora = &reference.json["lora"];
    let settings = LoraSettings {
        rank: lora["rank"].as_u64().unwrap() as usize,
        alpha: lora["alpha"].as_f64().unwrap() as f32,
        targets: lora["target_modules"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect(),
    };
    let adapter = LoraAdapter::read(&fixture(variant).join("train/initial")).unwrap();
    let init = match init {
        Some(seed) => LoraInit::Seeded(seed),
        None => LoraInit::Adapter(&adapter),
    };
    let trainer = LoraTrainer::new(device, unet, &scheduler, settings, init, hyper(&reference)).unwrap();
    let (shape, latents) = reference.tensor("latents");
    let (_, noise) = reference.tensor("noise");
    let (_, timesteps) = reference.tensor("timesteps");
    let (context_shape, context) = reference.tensor("encoder_hidden_states");
    Setup {
        trainer,
        reference,
        latents,
        noise,
        timesteps: timesteps.iter().map(|&t| t as u32).collect(),
        context,
        shape,
        context_len: context_shape[1],
    }
}

fn one_step_matches_peft<D: ImageBackward>(device: &D, variant: &str) {
    let mut s = setup(device, variant, None);
    // Inputs: the noised latents and target as diffusers computes them (f32, same formula).
    let (noisy, target) = s.trainer.noised(&s.batch()).unwrap();
    assert_relative(&noisy, &s.reference.tensor("noisy_latents").1, 1e-6, "noisy latents");
    assert_relative(&target, &s.reference.tensor("target").1, 1e-6, "target");

    let loss = s.trainer.accumulate(device, &s.batch(), 1.0).unwrap();
    let expected = s.reference.value("loss");
    assert!((loss - expected).abs() <= 1e-4 * expected, "{variant}: loss {loss} vs PEFT {expected}");
    let gradients = s.trainer.gradients(device).unwrap();
    assert_eq!(gradients.len(), s.reference.json["adapter_keys"].as_array().unwrap().len());
    for (key, grad) in &gradients {
        let (_, expected) = s.reference.tensor(&format!("grad.{key}"));
        assert!(expected.iter().any(|&g| g != 0.0), "{key}: the reference gradient is zero");
        assert_relative(grad, &expected, 1e-4, &format!("{variant}: ∂{key}"));
    }
    let norm = s.trainer.grad_norm(device).unwrap();
    let expected = s.reference.value("grad_norm");
    assert!((norm - expected).abs() <= 1e-4 * expected, "{variant}: gradient norm {norm} vs PEFT {expected}");

    s.trainer.step(device);
    let after = LoraAdapter::read(&fixture(variant).join("train/after_step")).unwrap();
    let expected: std::collections::HashMap<String, Vec<f32>> = after.modules[&gpu::sd::lora::Target::Unet]
        .iter()
        .flat_map(|m| {
            [
                (format!("unet.{}.lora_A.weight", m.module), m.down.data.clone()),
                (format!("unet.{}.lora_B.weight", m.module), m.up.data.clone()),
            ]
        })
        .collect();
    let initial = LoraAdapter::read(&fixture(variant).join("train/initial")).unwrap();
    let before: std::collections::HashMap<String, Vec<f32>> = initial.modules[&gpu::sd::lora::Target::Unet]
        .iter()
        .flat_map(|m| {
            [
                (format!("unet.{}.lora_A.weight", m.module), m.down.data.clone()),
                (format!("unet.{}.lora_B.weight", m.module), m.up.data.clone()),
            ]
        })
        .collect();
    for (key, _, values) in s.trainer.adapter(device).unwrap() {
        // The step moves each weight by ≈ lr; compare the moves, which is where an error shows.
        let moved: Vec<f32> = values.iter().zip(&before[&key]).map(|(a, b)| a - b).collect();
        let expected_move: Vec<f32> = expected[&key].iter().zip(&before[&key]).map(|(a, b)| a - b).collect();
        assert_relative(&moved, &expected_move, 1e-3, &format!("{variant}: AdamW step of {key}"));
    }
    // The PEFT export: diffusers' own key set, shapes and header metadata.
    let adapter = s.trainer.adapter(device).unwrap();
    let exported = gpu::sd::train::export::peft_file(&adapter, s.trainer.settings()).unwrap();
    let theirs = std::fs::read(fixture(variant).join("train/after_step/pytorch_lora_weights.safetensors")).unwrap();
    let (ours, theirs) = (
        safetensors::SafeTensors::deserialize(&exported).unwrap(),
        safetensors::SafeTensors::deserialize(&theirs).unwrap(),
    );
    let shapes = |file: &safetensors::SafeTensors| -> std::collections::BTreeMap<String, Vec<usize>> {
        file.tensors().into_iter().map(|(name, view)| (name, view.shape().to_vec())).collect()
    };
    assert_eq!(shapes(&ours), shapes(&theirs), "{variant}: PEFT export keys and shapes");
    let (_, header) = safetensors::SafeTensors::read_metadata(&exported).unwrap();
    let metadata: Value = serde_json::from_str(&header.metadata().as_ref().unwrap()["lora_adapter_metadata"]).unwrap();
    assert_eq!(metadata["unet.r"], s.reference.json["lora"]["rank"]);
    assert_eq!(metadata["unet.lora_alpha"].as_f64(), s.reference.json["lora"]["alpha"].as_f64());

    let loss_after = s.trainer.accumulate(device, &s.batch(), 1.0).unwrap();
    let expected = s.reference.value("loss_after_step");
    assert!(
        (loss_after - expected).abs() <= 1e-4 * expected,
        "{variant}: loss after the step {loss_after} vs PEFT {expected}"
    );
}

#[test]
fn sd1_lora_step_matches_peft_on_cpu() {
    one_step_matches_peft(&CpuDevice::<f32>::new(), "sd1");
}

#[test]
fn sd2_lora_step_matches_peft_on_cpu() {
    one_step_matches_peft(&CpuDevice::<f32>::new(), "sd2");
}

#[test]
fn sd1_lora_step_matches_peft_on_wgpu() {
    one_step_matches_peft(&gpu::device::WgpuDevice::new(common::context()), "sd1");
}

#[test]
fn sd2_lora_step_matches_peft_on_wgpu() {
    one_step_matches_peft(&gpu::device::WgpuDevice::new(common::context()), "sd2");
}

/// From PEFT's default initialisation (B = 0: the adapter starts as the identity), a few steps
/// on one batch lower its loss; two half batches accumulated with weight ½ give the gradient of
/// the whole batch.
#[test]
fn training_lowers_the_loss_and_accumulation_equals_the_whole_batch() {
    let device = CpuDevice::<f32>::new();
    let mut s = setup(&device, "sd1", Some(7));
    let first = s.trainer.accumulate(&device, &s.batch(), 1.0).unwrap();
    let whole = s.trainer.gradients(&device).unwrap();
    // With B = 0 only the B matrices get a gradient at first.
    for (key, grad) in &whole {
        let nonzero = grad.iter().any(|&v| v != 0.0);
        assert_eq!(nonzero, key.ends_with("lora_B.weight"), "{key}: gradient at PEFT's initialisation");
    }
    s.trainer.step(&device);

    // Accumulation: a fresh trainer, the two images as separate micro-batches.
    let h = setup(&device, "sd1", Some(7));
    let per_image = h.latents.len() / 2;
    let per_prompt = h.context.len() / 2;
    for i in 0..2 {
        let batch = TrainBatch {
            latents: &h.latents[i * per_image..][..per_image],
            noise: &h.noise[i * per_image..][..per_image],
            timesteps: &h.timesteps[i..i + 1],
            context: &h.context[i * per_prompt..][..per_prompt],
            context_len: h.context_len,
            batch: 1,
            height: h.shape[2],
            width: h.shape[3],
        };
        h.trainer.accumulate(&device, &batch, 0.5).unwrap();
    }
    for ((key, accumulated), (_, expected)) in h.trainer.gradients(&device).unwrap().iter().zip(&whole) {
        if expected.iter().all(|&g| g == 0.0) {
            assert!(accumulated.iter().all(|&g| g == 0.0), "{key}: accumulated a gradient the whole batch lacks");
            continue;
        }
        assert_relative(accumulated, expected, 1e-4, &format!("accumulated ∂{key}"));
    }

    let mut last = first;
    for _ in 0..5 {
        last = s.trainer.accumulate(&device, &s.batch(), 1.0).unwrap();
        s.trainer.step(&device);
    }
    assert!(last < first, "six AdamW steps on one batch left the loss at {last} (from {first})");
}
