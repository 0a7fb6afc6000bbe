//! Stable Diffusion components and sampling against diffusers' outputs on the committed tiny
//! pipelines (`tests/fixtures/sd/`, made by `reference/sd_fixtures.py`): the CLIP text encoder,
//! one UNet call (f32 and f16 weights), VAE decode and encode, the scheduler's ᾱ table and
//! 5-step guided DDIM, PNDM and Euler samples, on the CPU backend and on wgpu.

mod common;

use common::{assert_relative, relative_error, sd_fixture as fixture};

use std::path::PathBuf;

use gpu::device::{CpuDevice, ImageOps};
use gpu::sd::config::{ClipConfig, UnetConfig, VaeConfig};
use gpu::sd::scheduler::{SchedulerConfig, SchedulerKind};
use gpu::sd::weights::ComponentWeights;
use gpu::sd::{PipelineFolder, SampleOptions, StableDiffusion};
use serde_json::Value;

struct Reference {
    tensors: ComponentWeights,
    json: Value,
}

impl Reference {
    fn load(variant: &str) -> Self {
        let dir = fixture(variant);
        let tensors = ComponentWeights::from_files(vec![dir.join("reference.safetensors")]).expect("reference tensors");
        let json = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
        Reference { tensors, json }
    }

    fn tensor(&mut self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let shape = self.json["tensors"][name]["shape"]
            .as_array()
            .unwrap_or_else(|| panic!("reference.json describes no tensor {name}"))
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect::<Vec<_>>();
        let tensor = self.tensors.take(name, &shape).unwrap();
        (tensor.shape, tensor.data)
    }

    fn ids(&self, pointer: &str) -> Vec<u32> {
        let value = self.json.pointer(pointer).unwrap_or_else(|| panic!("reference.json has no {pointer}"));
        let mut ids = Vec::new();
        let rows = if value[0].is_array() { value.as_array().unwrap().clone() } else { vec![value.clone()] };
        for row in rows {
            ids.extend(row.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32));
        }
        ids
    }
}

fn components<D: ImageOps>(device: &D, variant: &str) {
    let dir = fixture(variant).join("pipeline");
    let mut reference = Reference::load(variant);

    // Text encoder.
    let clip = ClipConfig::read(&dir.join("text_encoder/config.json")).unwrap();
    let weights = ComponentWeights::load(&dir.join("text_encoder"), "model", None).unwrap();
    let text = gpu::sd::clip::ClipTextModel::load(device, &clip, weights).unwrap();
    let ids = reference.ids("/text_encoder/input_ids");
    let (shape, expected) = reference.tensor("text_hidden");
    let hidden = text.forward(device, &ids, shape[1]).unwrap();
    let hidden = device.download(&hidden, expected.len()).unwrap();
    assert_relative(&hidden, &expected, 1e-4, &format!("{variant} text encoder"));

    // UNet, per-item timesteps and a scalar one.
    let config = UnetConfig::read(&dir.join("unet/config.json")).unwrap();
    let weights = ComponentWeights::load(&dir.join("unet"), "diffusion_pytorch_model", None).unwrap();
    let unet = gpu::sd::unet::Unet::load(device, &config, weights).unwrap();
    let (shape, latents) = reference.tensor("unet_latents");
    let (_, timesteps) = reference.tensor("unet_timesteps");
    let (context_shape, context) = reference.tensor("unet_encoder_hidden_states");
    let (_, expected) = reference.tensor("unet_noise_pred");
    let (b, h, w) = (shape[0], shape[2], shape[3]);
    let run = |unet: &gpu::sd::unet::Unet<D>, latents: &[f32], batch: usize, timesteps: &[f32], context: &[f32]| {
        let out = unet
            .forward(device, &device.upload(latents), batch, h, w, timesteps, &device.upload(context), context_shape[1])
            .unwrap();
        device.download(&out, latents.len()).unwrap()
    };
    let out = run(&unet, &latents, b, &timesteps, &context);
    assert_relative(&out, &expected, 1e-4, &format!("{variant} unet"));
    let (_, scalar_latents) = reference.tensor("unet_scalar_t_latents");
    let (_, scalar_expected) = reference.tensor("unet_scalar_t_noise_pred");
    let scalar_t = reference.json["unet"]["scalar_timestep"].as_f64().unwrap() as f32;
    let per = context.len() / b;
    let out = run(&unet, &scalar_latents, 1, &[scalar_t], &hidden[per..2 * per]);
    assert_relative(&out, &scalar_expected, 1e-4, &format!("{variant} unet, scalar timestep"));
    if variant == "sd1" {
        let weights = ComponentWeights::load(&dir.join("unet"), "diffusion_pytorch_model", Some("fp16")).unwrap();
        let half = gpu::sd::unet::Unet::load(device, &config, weights).unwrap();
        let (_, expected) = reference.tensor("unet_fp16_weights_noise_pred");
        let out = run(&half, &latents, b, &timesteps, &context);
        assert_relative(&out, &expected, 1e-4, &format!("{variant} unet, f16 weights"));
    }

    // VAE.
    let config = VaeConfig::read(&dir.join("vae/config.json")).unwrap();
    let weights = ComponentWeights::load(&dir.join("vae"), "diffusion_pytorch_model", None).unwrap();
    let vae = gpu::sd::vae::Vae::load(device, &config, weights).unwrap();
    let (shape, latents) = reference.tensor("vae_decode_latents");
    let (_, expected) = reference.tensor("vae_decode_image");
    let image = vae.decode(device, &latents, shape[0], shape[2], shape[3]);
    let image = device.download(&image, expected.len()).unwrap();
    assert_relative(&image, &expected, 1e-4, &format!("{variant} vae decode"));
    let (shape, image) = reference.tensor("vae_encode_image");
    let (_, mean) = reference.tensor("vae_encode_mean");
    let (_, std) = reference.tensor("vae_encode_std");
    let distribution = vae.encode(device, &image, shape[0], shape[2], shape[3]).unwrap();
    assert_relative(&distribution.mean, &mean, 1e-4, &format!("{variant} vae encode mean"));
    assert_relative(&distribution.std, &std, 1e-4, &format!("{variant} vae encode std"));
}

fn sampling<D: ImageOps>(device: &D, variant: &str) {
    let folder = PipelineFolder::open(&fixture(variant).join("pipeline")).unwrap();
    let pipeline = StableDiffusion::load(device, &folder, None).unwrap();
    let mut reference = Reference::load(variant);
    let settings = reference.json["sample"].clone();
    let (shape, init) = reference.tensor("sample_init_latents");
    let mut options = SampleOptions {
        prompt: settings["prompt"].as_str().unwrap().into(),
        negative_prompt: settings["negative_prompt"].as_str().map(str::to_string),
        steps: settings["num_inference_steps"].as_u64().unwrap() as usize,
        guidance: settings["guidance_scale"].as_f64().unwrap() as f32,
        scheduler: Some(SchedulerKind::Ddim),
        eta: 0.0,
        seed: 0,
        batch: shape[0],
        height: settings["height"].as_u64().unwrap() as usize,
        width: settings["width"].as_u64().unwrap() as usize,
        latents: Some(init.clone()),
    };
    let mut steps = Vec::new();
    let latents = pipeline.sample(device, &options, &mut |step, total| steps.push((step, total))).unwrap();
    assert_eq!(steps.last(), Some(&(5, 5)), "progress reports every step");
    assert_eq!(latents.shape.to_vec(), shape);
    let (_, expected) = reference.tensor("sample_latents");
    assert_relative(&latents.values, &expected, 1e-3, &format!("{variant} 5-step guided DDIM sample"));

    let (_, expected_image) = reference.tensor("sample_image");
    let image = pipeline.decode(device, &latents).unwrap();
    assert_relative(&image, &expected_image, 1e-3, &format!("{variant} decoded sample"));

    // The other samplers SD checkpoints ship with, from the same config.
    for (kind, name) in [(SchedulerKind::Pndm, "pndm"), (SchedulerKind::Euler, "euler")] {
        let expected_timesteps: Vec<f64> = settings["other_schedulers"]["timesteps"][name]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_f64().unwrap())
            .collect();
        let scheduler =
            gpu::sd::scheduler::Scheduler::new(&pipeline.scheduler, Some(kind), options.steps, 0.0).unwrap();
        assert_eq!(scheduler.timesteps(), expected_timesteps, "{variant} {name} timesteps");
        let latents =
            pipeline.sample(device, &SampleOptions { scheduler: Some(kind), ..options.clone() }, &mut |_, _| {});
        let (_, expected) = reference.tensor(&format!("sample_{name}_latents"));
        assert_relative(&latents.unwrap().values, &expected, 1e-3, &format!("{variant} 5-step guided {name} sample"));
    }

    options.negative_prompt = None;
    options.guidance = settings["noneg_guidance_scale"].as_f64().unwrap() as f32;
    let latents = pipeline.sample(device, &options, &mut |_, _| {}).unwrap();
    let (_, expected) = reference.tensor("sample_noneg_latents");
    assert_relative(&latents.values, &expected, 1e-3, &format!("{variant} sample without a negative prompt"));
}

#[test]
fn scheduler_alphas_match_diffusers() {
    for variant in ["sd1", "sd2"] {
        let config = SchedulerConfig::read(&fixture(variant).join("pipeline/scheduler/scheduler_config.json")).unwrap();
        let mut reference = Reference::load(variant);
        let (_, expected) = reference.tensor("scheduler_alphas_cumprod");
        assert_relative(&config.alphas_cumprod(), &expected, 1e-6, &format!("{variant} alphas_cumprod"));
        let timesteps = gpu::sd::scheduler::timesteps(&config, 5);
        let expected: Vec<f64> =
            reference.json["sample"]["timesteps"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(timesteps, expected, "{variant} DDIM timesteps");
    }
}

#[test]
fn sd1_components_match_diffusers_on_cpu() {
    components(&CpuDevice::<f32>::new(), "sd1");
}

#[test]
fn sd2_components_match_diffusers_on_cpu() {
    components(&CpuDevice::<f32>::new(), "sd2");
}

#[test]
fn sd1_sample_matches_diffusers_on_cpu() {
    sampling(&CpuDevice::<f32>::new(), "sd1");
}

#[test]
fn sd2_sample_matches_diffusers_on_cpu() {
    sampling(&CpuDevice::<f32>::new(), "sd2");
}

fn wgpu() -> gpu::device::WgpuDevice {
    gpu::device::WgpuDevice::new(common::context())
}

#[test]
fn sd1_components_match_diffusers_on_wgpu() {
    components(&wgpu(), "sd1");
}

#[test]
fn sd2_components_match_diffusers_on_wgpu() {
    components(&wgpu(), "sd2");
}

#[test]
fn sd1_sample_matches_diffusers_on_wgpu() {
    sampling(&wgpu(), "sd1");
}

#[test]
fn sd2_sample_matches_diffusers_on_wgpu() {
    sampling(&wgpu(), "sd2");
}

/// The single-file checkpoint `reference/sd_single_file.py` wrote from the SD1 fixture (diffusers'
/// `from_single_file` gives back every tensor of it) converts to exactly the fixture's weights,
/// and the converted folder samples as the original does.
#[test]
fn a_single_file_checkpoint_converts_to_the_pipelines_own_weights() {
    let checkpoint = fixture("sd1").join("single_file.safetensors");
    let pipeline = fixture("sd1").join("pipeline");
    let files = gpu::sd::single_file::convert(&checkpoint, Some(&pipeline), None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in &files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    for (component, stem) in
        [("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model")]
    {
        let mut original = ComponentWeights::load(&pipeline.join(component), stem, None).unwrap();
        let mut converted = ComponentWeights::load(&dir.path().join(component), stem, None).unwrap();
        // The text encoder keeps the checkpoint's `text_model.` prefix (transformers 4's names).
        converted.rename(|name| name.strip_prefix("text_model.").map(str::to_string));
        let names: Vec<String> = original.names().into_iter().map(str::to_string).collect();
        let converted_names: Vec<String> = converted.names().into_iter().map(str::to_string).collect();
        assert_eq!(converted_names, names, "{component}: the same tensor names");
        for name in names {
            let a = original.remove(&name).unwrap();
            let b = converted.remove(&name).unwrap();
            assert_eq!(a.data, b.data, "{component} {name}: the same values");
        }
    }
    // The converted folder loads and samples like the original.
    let device = CpuDevice::<f32>::new();
    let original = StableDiffusion::load(&device, &PipelineFolder::open(&pipeline).unwrap(), None).unwrap();
    let converted = StableDiffusion::load(&device, &PipelineFolder::open(dir.path()).unwrap(), None).unwrap();
    let options = SampleOptions {
        prompt: "a photo of a cat".into(),
        negative_prompt: None,
        steps: 2,
        guidance: 7.5,
        scheduler: Some(SchedulerKind::Ddim),
        eta: 0.0,
        seed: 3,
        batch: 1,
        height: 16,
        width: 16,
        latents: None,
    };
    let a = original.sample(&device, &options, &mut |_, _| {}).unwrap();
    let b = converted.sample(&device, &options, &mut |_, _| {}).unwrap();
    assert_eq!(a, b);
}

#[test]
fn a_single_file_checkpoint_without_a_tokenizer_or_of_another_architecture_is_refused() {
    let checkpoint = fixture("sd1").join("single_file.safetensors");
    let error = gpu::sd::single_file::convert(&checkpoint, None, None).unwrap_err().to_string();
    assert!(error.contains("carries no tokenizer") && error.contains("--tokenizer"), "{error}");
    // SD 1.5's shipped configs do not fit the tiny checkpoint: refused, naming the file.
    let tokenizer = fixture("sd1").join("pipeline/tokenizer");
    let error = gpu::sd::single_file::convert(&checkpoint, None, Some(&tokenizer)).unwrap_err().to_string();
    assert!(error.contains("single_file.safetensors") && error.contains("not an SD 1.x checkpoint"), "{error}");
    // A pickle is never opened.
    let error = gpu::sd::single_file::convert(std::path::Path::new("model.ckpt"), None, Some(&tokenizer)).unwrap_err();
    assert!(error.to_string().contains("pickle"), "{error}");
}

/// A UNet shaped like the distilled variants (three blocks, 1/2/1 ResNets and transformer layers,
/// per-block heads, no mid block) needs no code of its own: it matches diffusers.
fn distilled<D: ImageOps>(device: &D, backend: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd/distilled");
    let config = UnetConfig::read(&dir.join("unet/config.json")).unwrap();
    assert!(!config.mid_block && config.layers_per_block == [1, 2, 1] && config.heads == [2, 4, 2]);
    let mut reference = ComponentWeights::from_files(vec![dir.join("reference.safetensors")]).unwrap();
    let mut take = |name: &str| reference.remove(name).unwrap();
    let (latents, timesteps, context, expected) =
        (take("latents"), take("timesteps"), take("context"), take("noise_pred"));
    let weights = ComponentWeights::load(&dir.join("unet"), "diffusion_pytorch_model", None).unwrap();
    let unet = gpu::sd::unet::Unet::load(device, &config, weights).unwrap();
    let [batch, _, h, w] = latents.shape[..] else { panic!("4-d latents") };
    let out = unet
        .forward(
            device,
            &device.upload(&latents.data),
            batch,
            h,
            w,
            &timesteps.data,
            &device.upload(&context.data),
            context.shape[1],
        )
        .unwrap();
    let output = device.download(&out, latents.data.len()).unwrap();
    assert_relative(&output, &expected.data, 1e-4, &format!("distilled unet on {backend}"));
}

#[test]
fn a_distilled_unet_without_a_mid_block_matches_diffusers() {
    distilled(&CpuDevice::<f32>::new(), "cpu");
    distilled(&wgpu(), "wgpu");
}

/// Shards listed by a `*.safetensors.index.json` load as the single file does; a shard the index
/// names but the folder lacks is refused, naming the index.
#[test]
fn sharded_weights_load_like_the_single_file() {
    let unet = fixture("sd1").join("pipeline/unet");
    let mut original = ComponentWeights::load(&unet, "diffusion_pytorch_model", None).unwrap();
    let names: Vec<String> = original.names().into_iter().map(str::to_string).collect();
    let tensors: Vec<(String, gpu::sd::weights::HostTensor)> =
        names.iter().map(|n| (n.clone(), original.remove(n).unwrap())).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut weight_map = serde_json::Map::new();
    for (part, chunk) in tensors.chunks(tensors.len().div_ceil(3)).enumerate() {
        let file = format!("diffusion_pytorch_model-0000{}-of-00003.safetensors", part + 1);
        let bytes =
            gpu::tensor::f32_safetensors(chunk.iter().map(|(n, t)| (n.as_str(), &t.shape[..], &t.data[..])), None)
                .unwrap();
        std::fs::write(dir.path().join(&file), bytes).unwrap();
        for (name, _) in chunk {
            weight_map.insert(name.clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    let index_path = dir.path().join("diffusion_pytorch_model.safetensors.index.json");
    std::fs::write(&index_path, index.to_string()).unwrap();
    let mut sharded = ComponentWeights::load(dir.path(), "diffusion_pytorch_model", None).unwrap();
    assert_eq!(sharded.names().len(), tensors.len());
    for (name, tensor) in &tensors {
        assert_eq!(&sharded.remove(name).unwrap(), tensor, "{name}");
    }
    std::fs::remove_file(dir.path().join("diffusion_pytorch_model-00002-of-00003.safetensors")).unwrap();
    let error = ComponentWeights::load(dir.path(), "diffusion_pytorch_model", None).unwrap_err().to_string();
    assert!(error.contains("index.json") && error.contains("00002-of-00003"), "{error}");
}

/// bf16 and f16 tensors are widened exactly (hand-made bit patterns).
#[test]
fn half_precision_tensors_convert_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("half.safetensors");
    // bf16: 1.0 = 0x3F80, -2.5 = 0xC020; f16: 1.0 = 0x3C00, -2.5 = 0xC100, 65504 = 0x7BFF.
    let bf16: Vec<u8> = [0x3F80u16, 0xC020].iter().flat_map(|v| v.to_le_bytes()).collect();
    let f16: Vec<u8> = [0x3C00u16, 0xC100, 0x7BFF].iter().flat_map(|v| v.to_le_bytes()).collect();
    let views = [
        ("b", safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, vec![2], &bf16).unwrap()),
        ("h", safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![3], &f16).unwrap()),
    ];
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let mut weights = ComponentWeights::from_files(vec![path]).unwrap();
    assert_eq!(weights.take("b", &[2]).unwrap().data, [1.0, -2.5]);
    assert_eq!(weights.take("h", &[3]).unwrap().data, [1.0, -2.5, 65504.0]);
}

/// A LoRA adapter saved by diffusers (`save_lora_weights`: rank and alpha in the header) and the
/// same adapter in kohya's names (diffusers' kohya loader reads it to the same sample) give
/// diffusers' latents with `load_lora_weights`, at full strength and at 0.5.
fn lora<D: ImageOps>(device: &D, backend: &str) {
    let dir = fixture("sd1").join("lora");
    let folder = PipelineFolder::open(&fixture("sd1").join("pipeline")).unwrap();
    let mut reference = ComponentWeights::from_files(vec![dir.join("reference.safetensors")]).unwrap();
    let mut take = |name: &str| reference.remove(name).unwrap();
    let (init, full, half, without) =
        (take("init_latents"), take("latents"), take("half_latents"), take("no_lora_latents"));
    let options = SampleOptions {
        prompt: "A lighthouse standing on a rocky cliff while waves crash below, oil painting".into(),
        negative_prompt: Some("blurry, low quality, watermark".into()),
        steps: 5,
        guidance: 7.5,
        scheduler: None,
        eta: 0.0,
        seed: 0,
        batch: 1,
        height: 16,
        width: 24,
        latents: Some(init.data.clone()),
    };
    for file in [dir.join("diffusers"), dir.join("kohya.safetensors")] {
        let adapter = gpu::sd::lora::LoraAdapter::read(&file).unwrap();
        assert_eq!(adapter.modules(gpu::sd::lora::Target::Unet).len(), 40, "{}", file.display());
        for (multiplier, expected) in [(1.0, &full), (0.5, &half)] {
            let pipeline =
                StableDiffusion::load_with_lora(device, &folder, None, Some((&adapter, multiplier))).unwrap();
            let latents = pipeline.sample(device, &options, &mut |_, _| {}).unwrap();
            let what = format!("{backend}: {} at {multiplier}", file.file_name().unwrap().to_string_lossy());
            assert_relative(&latents.values, &expected.data, 1e-3, &what);
        }
    }
    // The adapter matters: without it the sample is diffusers' plain one.
    let plain = StableDiffusion::load(device, &folder, None).unwrap().sample(device, &options, &mut |_, _| {}).unwrap();
    assert_relative(&plain.values, &without.data, 1e-3, &format!("{backend}: without the adapter"));
    assert!(relative_error(&plain.values, &full.data) > 0.1, "the adapter changes the sample");
}

#[test]
fn lora_adapters_in_diffusers_and_kohya_formats_match_diffusers() {
    lora(&CpuDevice::<f32>::new(), "cpu");
    lora(&wgpu(), "wgpu");
}

/// An adapter for modules the UNet does not have, or with mismatched ranks, is refused naming them.
#[test]
fn lora_adapters_that_do_not_fit_are_refused() {
    let folder = PipelineFolder::open(&fixture("sd1").join("pipeline")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, tensors: &[(&str, Vec<usize>)]| {
        let data: Vec<(String, Vec<usize>, Vec<f32>)> =
            tensors.iter().map(|(n, s)| (n.to_string(), s.clone(), vec![0.5; s.iter().product()])).collect();
        let bytes =
            gpu::tensor::f32_safetensors(data.iter().map(|(n, s, d)| (n.as_str(), &s[..], &d[..])), None).unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let device = CpuDevice::<f32>::new();
    let elsewhere = write(
        "elsewhere.safetensors",
        &[
            ("unet.down_blocks.7.attentions.0.to_q.lora_A.weight", vec![2, 16]),
            ("unet.down_blocks.7.attentions.0.to_q.lora_B.weight", vec![16, 2]),
        ],
    );
    let adapter = gpu::sd::lora::LoraAdapter::read(&elsewhere).unwrap();
    let error =
        StableDiffusion::load_with_lora(&device, &folder, None, Some((&adapter, 1.0))).err().unwrap().to_string();
    assert!(error.contains("down_blocks.7.attentions.0.to_q") && error.contains("elsewhere.safetensors"), "{error}");
    let module = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
    let wrong = write(
        "wrong.safetensors",
        &[(&format!("{module}.lora_A.weight"), vec![2, 16]), (&format!("{module}.lora_B.weight"), vec![16, 3])],
    );
    let error = gpu::sd::lora::LoraAdapter::read(&wrong).unwrap_err().to_string();
    assert!(error.contains("rank"), "{error}");
    let lonely = write("lonely.safetensors", &[(&format!("{module}.lora_A.weight"), vec![2, 16])]);
    let error = gpu::sd::lora::LoraAdapter::read(&lonely).unwrap_err().to_string();
    assert!(error.contains("lora_B"), "{error}");
}
