//! `thitl model tokenize`: the ids diffusers' StableDiffusionPipeline feeds its text encoder, for
//! the committed tiny SD1 and SD2 pipelines, through the CLI.

use std::path::PathBuf;

use crate::helpers::{stdout, thitl};

pub(crate) fn fixture(variant: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../gpu/tests/fixtures/sd").join(variant)
}

/// Prompts of `reference.json` covering the quirks: empty, plain, past the limit (cut, keeping the
/// end token), Cyrillic and CJK, SD2's `!` pad token, an upper-case literal special token.
const PROMPTS: [&str; 7] = [
    "",
    "a photo of a cat",
    "an astronaut riding a horse across the surface of the moon",
    "Москва — красивый город",
    "一只猫在树下睡觉",
    "wow! a word then an exclamation mark! (SD2's pad token is \"!\")",
    "<|ENDOFTEXT|> upper-case special token",
];

fn reference_ids(variant: &str, prompt: &str) -> (Vec<u64>, u64) {
    let text = std::fs::read_to_string(fixture(variant).join("reference.json")).expect("reference.json");
    let reference: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let case = reference["tokenizer"]["cases"]
        .as_array()
        .expect("tokenizer.cases")
        .iter()
        .find(|case| case["prompt"] == prompt)
        .unwrap_or_else(|| panic!("{variant}: {prompt:?} is not a reference prompt"));
    let ids = case["input_ids"].as_array().expect("ids").iter().map(|id| id.as_u64().expect("id")).collect();
    (ids, case["untruncated_length"].as_u64().expect("untruncated_length"))
}

#[test]
fn tokenize_prints_the_pipelines_ids_for_sd1_and_sd2() {
    for variant in ["sd1", "sd2"] {
        let pipeline = fixture(variant).join("pipeline");
        let mut truncated = 0;
        for prompt in PROMPTS {
            let (expected, untruncated_length) = reference_ids(variant, prompt);
            truncated += usize::from(untruncated_length > expected.len() as u64);
            let output = thitl(&["model", "tokenize", pipeline.to_str().unwrap(), prompt]);
            assert!(output.status.success(), "{variant} {prompt:?}: {}", String::from_utf8_lossy(&output.stderr));
            let printed = stdout(&output);
            assert_eq!(printed.lines().count(), 1, "one JSON line: {printed}");
            let json: serde_json::Value = serde_json::from_str(&printed).expect("JSON");
            assert_eq!(json, serde_json::json!({ "input_ids": expected }), "{variant} {prompt:?}");
        }
        assert!(truncated > 0, "{variant}: some prompt runs past model_max_length");
    }
}

#[test]
fn tokenize_refuses_a_folder_without_model_index_json() {
    let dir = tempfile::tempdir().unwrap();
    let output = thitl(&["model", "tokenize", dir.path().to_str().unwrap(), "a cat"]);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains(dir.path().join("model_index.json").to_str().unwrap()), "{message}");
    assert!(message.contains("not a diffusers pipeline folder"), "{message}");
}

/// A reference tensor of a fixture.
fn reference_tensor(variant: &str, name: &str) -> gpu::sd::Latents {
    tensor_in(&fixture(variant).join("reference.safetensors"), name)
}

/// A 4-d tensor of a safetensors file, as latents.
pub(crate) fn tensor_in(path: &std::path::Path, name: &str) -> gpu::sd::Latents {
    let bytes = std::fs::read(path).unwrap();
    let mut found = None;
    gpu::sd::weights::read_safetensors(path, &bytes, &mut |n, tensor| {
        if n == name {
            found = Some(tensor);
        }
    })
    .unwrap();
    let tensor = found.unwrap_or_else(|| panic!("{} has no tensor {name}", path.display()));
    gpu::sd::Latents { shape: tensor.shape.try_into().expect("4-d"), values: tensor.data }
}

pub(crate) fn max_relative_difference(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len());
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    actual.iter().zip(expected).fold(0f32, |m, (a, e)| m.max((a - e).abs())) / scale
}

/// `thitl model sample` with diffusers' initial latents: the final latents diffusers gave
/// (`output_type="latent"`), for SD1 and SD2, on the CPU backend and on wgpu (lavapipe in CI).
#[test]
fn sample_gives_diffusers_latents_on_cpu_and_wgpu() {
    let dir = tempfile::tempdir().unwrap();
    for variant in ["sd1", "sd2"] {
        let reference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture(variant).join("reference.json")).unwrap()).unwrap();
        let settings = &reference["sample"];
        let init = dir.path().join(format!("{variant}-init.safetensors"));
        std::fs::write(&init, reference_tensor(variant, "sample_init_latents").to_safetensors().unwrap()).unwrap();
        let expected = reference_tensor(variant, "sample_latents");
        for device in ["cpu", "wgpu"] {
            let out = dir.path().join(format!("{variant}-{device}.safetensors"));
            let image = dir.path().join(format!("{variant}-{device}.png"));
            let pipeline = fixture(variant).join("pipeline");
            let output = thitl(&[
                "model",
                "sample",
                pipeline.to_str().unwrap(),
                "--prompt",
                settings["prompt"].as_str().unwrap(),
                "--negative-prompt",
                settings["negative_prompt"].as_str().unwrap(),
                "--steps",
                "5",
                "--guidance",
                "7.5",
                "--scheduler",
                "ddim",
                "--eta",
                "0",
                "--latents",
                init.to_str().unwrap(),
                "--out-latents",
                out.to_str().unwrap(),
                "--out",
                image.to_str().unwrap(),
                "--device",
                device,
            ]);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "{variant} on {device}: {stderr}");
            assert!(stderr.contains("step 5/5"), "progress on stderr: {stderr}");
            let summary: serde_json::Value = serde_json::from_str(stdout(&output).trim()).expect("JSON summary");
            assert!(summary["device"].as_str().unwrap().starts_with(device), "{summary}");
            let bytes = std::fs::read(&out).unwrap();
            let latents = gpu::sd::Latents::from_safetensors(&out, &bytes).unwrap();
            assert_eq!(latents.shape, expected.shape);
            let error = max_relative_difference(&latents.values, &expected.values);
            assert!(error <= 1e-3, "{variant} on {device}: final latents differ by {error:.2e} (max abs / max |ref|)");
            let png = std::fs::read(&image).unwrap();
            assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{variant} on {device}: a PNG");
        }
    }
}

/// A folder that is not a whole safetensors pipeline is refused by `sample` and `import`, naming
/// the file, before anything is written.
#[test]
fn sample_and_import_refuse_pickles_missing_components_and_truncated_weights() {
    let source = fixture("sd1").join("pipeline");
    let copy = |name: &str| {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join(name);
        copy_dir(&source, &target);
        (root, target)
    };
    let sample = |path: &std::path::Path, out: &std::path::Path| {
        thitl(&[
            "model",
            "sample",
            path.to_str().unwrap(),
            "--prompt",
            "a cat",
            "--steps",
            "2",
            "--device",
            "cpu",
            "--out-latents",
            out.to_str().unwrap(),
        ])
    };
    let refused = |path: &std::path::Path, root: &std::path::Path, expected: &[&str]| {
        let out = root.join("latents.safetensors");
        let output = sample(path, &out);
        let message = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "refused: {message}");
        for part in expected {
            assert!(message.contains(part), "message names {part:?}: {message}");
        }
        assert!(!out.exists(), "nothing written");
        // Import refuses it the same way, before the data directory exists.
        let data = root.join("data");
        let output = thitl(&["model", "import", path.to_str().unwrap(), "--data", data.to_str().unwrap()]);
        let message = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "import refused: {message}");
        for part in expected {
            assert!(message.contains(part), "import's message names {part:?}: {message}");
        }
        assert!(!data.exists(), "import wrote nothing into the data directory");
    };

    // Pickle weights only: refused, never loaded.
    let (root, pipeline) = copy("pickle");
    let unet = pipeline.join("unet");
    std::fs::remove_file(unet.join("diffusion_pytorch_model.safetensors")).unwrap();
    std::fs::remove_file(unet.join("diffusion_pytorch_model.fp16.safetensors")).unwrap();
    std::fs::write(unet.join("diffusion_pytorch_model.bin"), b"\x80\x02}q\x00.").unwrap();
    refused(&pipeline, root.path(), &["diffusion_pytorch_model.bin", "pickle"]);

    // A missing component folder.
    let (root, pipeline) = copy("missing");
    std::fs::remove_dir_all(pipeline.join("vae")).unwrap();
    refused(&pipeline, root.path(), &["vae", "missing"]);

    // A truncated safetensors file.
    let (root, pipeline) = copy("truncated");
    let file = pipeline.join("text_encoder/model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    refused(&pipeline, root.path(), &["model.safetensors", "not a valid safetensors file"]);
}

pub(crate) fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `thitl model import` of the tiny SD1 pipeline into `data` as `tiny-sd1`: the printed JSON.
pub(crate) fn import_fixture(data: &std::path::Path) -> serde_json::Value {
    let pipeline = fixture("sd1").join("pipeline");
    let output = thitl(&[
        "model",
        "import",
        pipeline.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--name",
        "tiny-sd1",
        "--json",
    ]);
    assert!(output.status.success(), "import: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(stdout(&output).trim()).unwrap()
}

/// `thitl model import` of a fixture, then a generation job on the imported version (what a
/// campaign's probe and candidate images are) served by `thitl serve`: PNG images whose blobs
/// and prompts are on the audit log, and `thitl audit verify` passes.
#[test]
fn an_imported_pipeline_serves_generation_jobs_on_the_audit_log() {
    use crate::helpers::{Server, TestApp, create_token};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let imported = import_fixture(&data);
    let version = imported["model_version"].as_str().unwrap().to_string();
    let files = imported["files"].as_object().unwrap();
    assert!(
        files.contains_key("unet/diffusion_pytorch_model.safetensors") && files.contains_key("tokenizer/vocab.json")
    );
    assert!(!files.contains_key("unet/diffusion_pytorch_model.fp16.safetensors"), "only the files loading reads");

    let admin = create_token(&data, "admin", "root");
    let server = Server::start_with(&data, &[("THITL_DEVICE", "cpu")]);
    let app = TestApp { address: server.address.clone(), dir, admin };
    let operator = app.token("operator", "otto");
    let version_view = app.get(&format!("/v1/model-versions/{version}"), &operator).expect(200).json();
    assert_eq!(version_view["name"], "tiny-sd1", "{version_view}");

    let prompts = ["a photo of a nurse at work", "a photo of a wheelchair user in a park"];
    let items: Vec<serde_json::Value> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| serde_json::json!({"prompt": p, "negative_prompt": "blurry", "seed": 40 + i}))
        .collect();
    let body = serde_json::json!({"model_version": version, "purpose": "baseline", "items": items,
        "sampler": {"steps": 3, "guidance_scale": 7.5, "eta": 0.0}});
    let job = app.post("/v1/generations", &operator, body).expect(201).json()["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(300);
    let view = loop {
        let view = app.get(&format!("/v1/generations/{job}"), &operator).expect(200).json();
        match view["status"].as_str().unwrap() {
            "completed" => break view,
            "failed" => panic!("the job failed: {view}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "the job did not complete: {view}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let images = view["images"].as_array().unwrap();
    assert_eq!(images.len(), prompts.len(), "{view}");
    let log =
        app.get(&format!("/v1/audit/streams/generation-{job}?limit=100"), &app.admin).expect(200).json().to_string();
    for prompt in prompts {
        assert!(log.contains(prompt), "the prompt {prompt:?} is on the audit log");
    }
    let mut blobs = std::collections::BTreeSet::new();
    for image in images {
        let blob = image["blob"].as_str().unwrap_or_else(|| panic!("an image's blob: {image}"));
        assert!(log.contains(blob), "the image blob {blob} is on the audit log");
        let png = app.request("GET", &format!("/v1/blobs/{blob}"), Some(&operator), &[], None);
        png.expect(200);
        assert_eq!(png.header("content-type"), Some("image/png"), "blob {blob}");
        assert!(png.body.contains("PNG") && png.body.contains("IHDR"), "blob {blob} is a PNG");
        blobs.insert(blob.to_string());
    }
    assert_eq!(blobs.len(), prompts.len(), "different prompts and seeds give different images");
    drop(server);
    let verify = thitl(&["audit", "verify", "--data", app.dir.path().to_str().unwrap()]);
    assert!(verify.status.success(), "audit verify: {}{}", stdout(&verify), String::from_utf8_lossy(&verify.stderr));
}

/// A single-file checkpoint with the original key names (written from the SD1 fixture; diffusers'
/// `from_single_file` reads it back exactly) samples like its folder and imports.
#[test]
fn a_single_file_checkpoint_samples_like_its_folder_and_imports() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = fixture("sd1").join("single_file.safetensors");
    let config = fixture("sd1").join("pipeline");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("sd1").join("reference.json")).unwrap()).unwrap();
    let init = dir.path().join("init.safetensors");
    std::fs::write(&init, reference_tensor("sd1", "sample_init_latents").to_safetensors().unwrap()).unwrap();
    let out = dir.path().join("out.safetensors");
    let output = thitl(&[
        "model",
        "sample",
        checkpoint.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--prompt",
        reference["sample"]["prompt"].as_str().unwrap(),
        "--negative-prompt",
        reference["sample"]["negative_prompt"].as_str().unwrap(),
        "--steps",
        "5",
        "--scheduler",
        "ddim",
        "--latents",
        init.to_str().unwrap(),
        "--out-latents",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let latents = gpu::sd::Latents::from_safetensors(&out, &std::fs::read(&out).unwrap()).unwrap();
    let error = max_relative_difference(&latents.values, &reference_tensor("sd1", "sample_latents").values);
    assert!(error <= 1e-3, "final latents differ by {error:.2e}");

    let data = dir.path().join("data");
    let output = thitl(&[
        "model",
        "import",
        checkpoint.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let imported: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(imported["name"], "single_file");
    assert!(imported["files"]["unet/diffusion_pytorch_model.safetensors"].is_string(), "{imported}");
    // Without a tokenizer it is refused before anything is written.
    let other = dir.path().join("other");
    let output = thitl(&["model", "import", checkpoint.to_str().unwrap(), "--data", other.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--tokenizer"));
    assert!(!other.exists());
}

/// `thitl model sample --lora` applies a diffusers-saved adapter as diffusers'
/// `load_lora_weights` does (the fixture's reference latents).
#[test]
fn sample_with_a_lora_adapter_gives_diffusers_latents() {
    let lora = fixture("sd1").join("lora");
    let as_latents = |name: &str| tensor_in(&lora.join("reference.safetensors"), name);
    let adapter = lora.join("diffusers");
    let extra = ["--lora", adapter.to_str().unwrap(), "--lora-scale", "0.5"];
    let latents = sample_lighthouse(&as_latents("init_latents"), &fixture("sd1").join("pipeline"), &extra);
    let error = max_relative_difference(&latents.values, &as_latents("half_latents").values);
    assert!(error <= 1e-3, "latents with the adapter at 0.5 differ from diffusers' by {error:.2e}");
}

/// Without a desktop session (no XDG_RUNTIME_DIR), looking for a GPU prints no `error:` line when
/// nothing is wrong.
#[test]
fn no_error_lines_without_a_desktop_session() {
    let pipeline = fixture("sd1").join("pipeline");
    let output = std::process::Command::new(crate::helpers::thitl_bin())
        .args(["model", "sample", pipeline.to_str().unwrap(), "--prompt", "a cat", "--steps", "1", "--device", "auto"])
        .env_remove("XDG_RUNTIME_DIR")
        .env("THITL_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.to_lowercase().contains("error"), "no error line: {stderr}");
}

/// Samples the SD1 pipeline with the lighthouse prompts from `init` through `--lora` (a folder or
/// file), returning the final latents.
pub(crate) fn sample_with_lora(init: &gpu::sd::Latents, lora: &std::path::Path) -> gpu::sd::Latents {
    sample_lighthouse(init, &fixture("sd1").join("pipeline"), &["--lora", lora.to_str().unwrap()])
}

/// Samples `pipeline` (an SD1-shaped folder) with the lighthouse prompts from `init`.
pub(crate) fn sample_pipeline(init: &gpu::sd::Latents, pipeline: &std::path::Path) -> gpu::sd::Latents {
    sample_lighthouse(init, pipeline, &[])
}

/// Samples `pipeline` with the lighthouse prompts of the fixtures' references from `init`, with
/// `extra` arguments (`--lora …`).
fn sample_lighthouse(init: &gpu::sd::Latents, pipeline: &std::path::Path, extra: &[&str]) -> gpu::sd::Latents {
    let dir = tempfile::tempdir().unwrap();
    let (init_path, out) = (dir.path().join("init.safetensors"), dir.path().join("out.safetensors"));
    std::fs::write(&init_path, init.to_safetensors().unwrap()).unwrap();
    let mut args = vec![
        "model",
        "sample",
        pipeline.to_str().unwrap(),
        "--prompt",
        "A lighthouse standing on a rocky cliff while waves crash below, oil painting",
        "--negative-prompt",
        "blurry, low quality, watermark",
        "--steps",
        "5",
        "--latents",
        init_path.to_str().unwrap(),
        "--out-latents",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    let output = thitl(&args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    gpu::sd::Latents::from_safetensors(&out, &std::fs::read(&out).unwrap()).unwrap()
}

/// thitl's own exports (`train/thitl_export`, see the fixtures' README): diffusers'
/// `load_lora_weights` of the PEFT export samples as `thitl model sample --lora` does, through the
/// PEFT folder and through the kohya file.
#[test]
fn thitls_lora_exports_sample_as_diffusers_samples_them() {
    let export = fixture("sd1").join("train/thitl_export");
    let reference = export.join("reference.safetensors");
    let init = tensor_in(&reference, "init_latents");
    let expected = tensor_in(&reference, "latents");
    for lora in [export.clone(), export.join("lora_kohya.safetensors")] {
        let latents = sample_with_lora(&init, &lora);
        let error = max_relative_difference(&latents.values, &expected.values);
        assert!(error <= 1e-3, "{}: latents differ from diffusers' by {error:.2e}", lora.display());
    }
}

/// `thitl model train-lora` on an image folder in diffusers' convention: the adapter it writes in
/// each format reads back (`sample --lora`) and changes the sample, the PEFT and kohya exports of
/// one seed are the same adapter, the merged UNet is the base plus the update, and bad input is
/// refused before anything is written.
#[test]
fn train_lora_writes_adapters_that_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let mut lines = String::new();
    for i in 0..3 {
        // 16×24 pictures: smooth colour ramps, a different one each.
        let (height, width) = (16, 24);
        let mut values = vec![0f32; 3 * height * width];
        for (index, v) in values.iter_mut().enumerate() {
            let (c, y, x) = (index / (height * width), (index / width) % height, index % width);
            *v = ((x as f32 / width as f32) * (c + i + 1) as f32 + y as f32 / height as f32).fract();
        }
        std::fs::write(images.join(format!("{i}.png")), app::sd::png_from_unit_rgb(&values, height, width)).unwrap();
        lines += &format!("{{\"file_name\": \"{i}.png\", \"text\": \"a striped picture number {i}\"}}\n");
    }
    std::fs::write(images.join("metadata.jsonl"), lines).unwrap();
    let pipeline = fixture("sd1").join("pipeline");
    let train = |format: &str, out: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "model",
            "train-lora",
            pipeline.to_str().unwrap(),
            "--images",
            images.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "6",
            "--lr",
            "1e-2",
            "--batch",
            "2",
            "--micro-batch",
            "1",
            "--alpha",
            "8",
            "--device",
            "cpu",
            "--format",
            format,
        ];
        args.extend_from_slice(extra);
        thitl(&args)
    };
    let mut losses = Vec::new();
    for format in ["peft", "kohya", "merged"] {
        let output = train(format, &dir.path().join(format), &[]);
        assert!(output.status.success(), "{format}: {}", String::from_utf8_lossy(&output.stderr));
        let summary: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
        assert_eq!(summary["steps"], 6);
        let step_losses = summary["losses"].as_array().unwrap().clone();
        assert_eq!(step_losses.len(), 6);
        assert!(step_losses.iter().all(|l| l.as_f64().unwrap().is_finite()));
        losses.push(step_losses);
    }
    assert!(losses.windows(2).all(|w| w[0] == w[1]), "one seed, one training run whatever the format");

    let init = tensor_in(&fixture("sd1").join("train/thitl_export/reference.safetensors"), "init_latents");
    let peft = sample_with_lora(&init, &dir.path().join("peft"));
    let kohya = sample_with_lora(&init, &dir.path().join("kohya/lora_kohya.safetensors"));
    assert!(max_relative_difference(&kohya.values, &peft.values) <= 1e-5, "kohya and PEFT exports differ");
    // The merged UNet: a pipeline folder with it in place of the base UNet samples as the adapter does.
    let merged = dir.path().join("merged_pipeline");
    copy_dir(&pipeline, &merged);
    for file in ["diffusion_pytorch_model.safetensors", "config.json"] {
        std::fs::copy(dir.path().join("merged/unet").join(file), merged.join("unet").join(file)).unwrap();
    }
    std::fs::remove_file(merged.join("unet/diffusion_pytorch_model.fp16.safetensors")).unwrap();
    let merged_latents = sample_pipeline(&init, &merged);
    assert!(max_relative_difference(&merged_latents.values, &peft.values) <= 1e-4, "merged UNet vs adapter");

    // Bad input: a format nobody reads, a layer it does not adapt, rank 0, an image of another
    // size; nothing written.
    for (extra, expected) in [
        (vec!["--format", "onnx"], "choose peft, kohya or merged"),
        (vec!["--targets", "to_q,ff.net.2"], "is not an attention projection"),
        (vec!["--rank", "0"], "must be positive"),
    ] {
        let out = dir.path().join("refused");
        let mut args = vec!["model", "train-lora", pipeline.to_str().unwrap(), "--images", images.to_str().unwrap()];
        args.extend(["--out", out.to_str().unwrap(), "--device", "cpu"]);
        args.extend(extra);
        let output = thitl(&args);
        assert!(!output.status.success());
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(expected),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!out.exists(), "a refused run created {}", out.display());
    }
    std::fs::write(images.join("3.png"), app::sd::png_from_unit_rgb(&vec![0.5; 3 * 8 * 8], 8, 8)).unwrap();
    std::fs::write(
        images.join("metadata.jsonl"),
        std::fs::read_to_string(images.join("metadata.jsonl")).unwrap()
            + "{\"file_name\": \"3.png\", \"text\": \"small\"}\n",
    )
    .unwrap();
    let out = dir.path().join("refused");
    let output = train("peft", &out, &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("3.png is 8×8") && stderr.contains("one size"), "{stderr}");
    assert!(!out.exists(), "a refused run created {}", out.display());
}
