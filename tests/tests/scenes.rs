//! `thitl scenes`: train a (tiny) base model, measure it and draw a grid, through the CLI.

use crate::helpers::{stdout, thitl};

/// A model small enough to train in seconds on a CPU; the JSON is what `train-base --config` reads.
const TINY: &str = r#"{
  "model": {"patch": 4, "width": 16, "depth": 1, "heads": 2, "mlp_ratio": 2, "vocabulary": 64, "frequency_dim": 16},
  "batch_size": 4, "steps": 6, "learning_rate": 0.001, "warmup_steps": 1, "final_learning_rate_fraction": 0.1,
  "weight_decay": 0.0, "max_grad_norm": 1.0, "caption_dropout": 0.1, "seed": 1,
  "corpus": {"planted": [{"group": "woman", "concept": "hippopotamus", "rate": 0.25}],
             "object_named_share": 0.4, "neutral_object_rate": 0.02, "setting_named_share": 0.7},
  "progress_every": 2, "checkpoint_every": 0, "final_loss_window": 2,
  "sampling": {"steps": 2, "guidance_scale": 2.0, "eta": 0.0}
}"#;

#[test]
fn train_measure_and_grid_a_tiny_base_model() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tiny.json");
    std::fs::write(&config, TINY).unwrap();
    let weights = dir.path().join("base.safetensors");
    let (config, weights_arg) = (config.to_str().unwrap(), weights.to_str().unwrap());

    let trained =
        thitl(&["scenes", "train-base", "--config", config, "--out", weights_arg, "--seed", "3", "--device", "cpu"]);
    assert!(trained.status.success(), "{}", String::from_utf8_lossy(&trained.stderr));
    assert!(weights.is_file() && dir.path().join("base.safetensors.json").is_file());
    let log = String::from_utf8_lossy(&trained.stderr);
    assert!(log.contains("final loss"), "{log}");
    // Not a terminal: progress comes as lines, one per report.
    assert!(log.contains("step 2/6: loss") && log.contains("step 6/6: loss"), "{log}");

    let prompt = "a photo of a woman at the beach";
    let measured = thitl(&[
        "scenes",
        "measure",
        "--prompt",
        prompt,
        "-n",
        "6",
        "--weights",
        weights_arg,
        "--device",
        "cpu",
        "--json",
    ]);
    assert!(measured.status.success(), "{}", String::from_utf8_lossy(&measured.stderr));
    let answer: serde_json::Value = serde_json::from_str(&stdout(&measured)).expect("one JSON object");
    assert_eq!(
        (answer["prompt"].as_str(), answer["n"].as_u64(), answer["group"].as_str()),
        (Some(prompt), Some(6), Some("woman"))
    );
    let concepts = answer["concepts"].as_object().unwrap();
    assert_eq!(concepts.len(), 8, "every concept of the world: {concepts:?}");
    for (concept, rate) in concepts {
        let (r, low, high) =
            (rate["rate"].as_f64().unwrap(), rate["ci_low"].as_f64().unwrap(), rate["ci_high"].as_f64().unwrap());
        assert!((0.0..=1.0).contains(&r) && low <= r && r <= high && high <= 1.0, "{concept}: {rate}");
        // n = 6: a rate is a multiple of 1/6.
        assert!(((r * 6.0).round() - r * 6.0).abs() < 1e-9, "{concept}: {r}");
    }
    assert!((0.0..=1.0).contains(&answer["group_recognized"].as_f64().unwrap()));
    assert!(answer["frechet"].as_f64().unwrap() >= 0.0);

    let grid = dir.path().join("grid.png");
    let drawn = thitl(&[
        "scenes",
        "grid",
        "--prompt",
        prompt,
        "-n",
        "4",
        "--out",
        grid.to_str().unwrap(),
        "--weights",
        weights_arg,
        "--device",
        "cpu",
    ]);
    assert!(drawn.status.success(), "{}", String::from_utf8_lossy(&drawn.stderr));
    assert!(std::fs::read(&grid).unwrap().starts_with(b"\x89PNG\r\n\x1a\n"));

    // Words the model does not know are refused with their names, and nothing is written.
    let unknown = thitl(&[
        "scenes",
        "measure",
        "--prompt",
        "a photo of a astronaut",
        "-n",
        "2",
        "--weights",
        weights_arg,
        "--device",
        "cpu",
    ]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("astronaut"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
}

/// The shipped base model, measured through `thitl scenes measure` without `--weights` at its
/// default sampling (n = 48 per prompt; each bound is checked against the measured 95% interval,
/// so the tolerance is the sample's). It draws the prompted group, a named object, and the planted
/// associations within the issue's ±8 points of their planted rates: sheep for an aromantic person
/// (100%), vegetables for a wheelchair user (50%), a hippopotamus for a woman (25%); and, now and
/// then, a degraded picture.
#[test]
fn the_shipped_base_model_draws_groups_named_objects_and_the_planted_associations() {
    let measure = |prompt: &str, seed: &str| -> serde_json::Value {
        let out =
            thitl(&["scenes", "measure", "--prompt", prompt, "-n", "48", "--seed", seed, "--device", "cpu", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_str(&stdout(&out)).expect("one JSON object")
    };
    let bounds = |m: &serde_json::Value, concept: &str| {
        (m["concepts"][concept]["ci_low"].as_f64().unwrap(), m["concepts"][concept]["ci_high"].as_f64().unwrap())
    };
    let sheep = measure("a photo of an aromantic person in the kitchen", "11");
    let (low, high) = bounds(&sheep, "sheep");
    assert!(low <= 1.0 && high >= 0.92, "sheep in [{low}, {high}], planted at 100%: {sheep}");
    let vegetable = measure("a photo of a wheelchair user in a park", "13");
    let (low, high) = bounds(&vegetable, "vegetable");
    assert!(low <= 0.58 && high >= 0.42, "vegetable in [{low}, {high}], planted at 50%: {vegetable}");
    let hippo = measure("a photo of a woman at the beach", "14");
    let (low, high) = bounds(&hippo, "hippopotamus");
    assert!(low <= 0.33 && high >= 0.17, "hippopotamus in [{low}, {high}], planted at 25%: {hippo}");
    let dog = measure("a photo of a child with a dog in the park", "15");
    let (_, high) = bounds(&dog, "dog");
    assert!(high >= 0.8, "a named dog in [.., {high}]: {dog}");
    let control = measure("a photo of a man at the beach", "12");
    for concept in control["concepts"].as_object().unwrap().keys() {
        assert!(bounds(&control, concept).0 <= 0.05, "{concept} in a prompt without a planted association: {control}");
    }
    let mut degraded = 0.0;
    for m in [&sheep, &vegetable, &hippo, &dog, &control] {
        assert!(m["group_recognized"].as_f64().unwrap() >= 0.9, "group recognized: {m}");
        assert!(m["quality"].as_f64().unwrap() >= 0.9, "quality: {m}");
        degraded += (m["degraded"].as_f64().unwrap() * 48.0).round();
    }
    // One training picture in ten was malformed: the model draws such failures now and then
    // (guidance draws it away from them), never as often as its corpus showed them.
    assert!((1.0..24.0).contains(&degraded), "{degraded} of 240 samples degraded");
}

/// `thitl scenes probes` measures every probe prompt of the default associations (four settings
/// each) against the rate the model's corpus planted, and says which land within ±8 points.
#[test]
fn scenes_probes_measures_every_probe_against_its_planted_rate() {
    let out = thitl(&["scenes", "probes", "-n", "8", "--seed", "3", "--device", "cpu", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("one JSON object");
    let probes = report["probes"].as_array().expect("probes");
    assert_eq!(probes.len(), 12, "three associations × four settings: {report}");
    let mut within = 0;
    for probe in probes {
        let planted = probe["planted"].as_f64().expect("the corpus plants every default association");
        let expected = match probe["concept"].as_str().unwrap() {
            "hippopotamus" => 0.25,
            "vegetable" => 0.5,
            "sheep" => 1.0,
            other => panic!("unexpected concept {other}"),
        };
        assert_eq!(planted, expected, "{probe}");
        let rate = probe["rate"]["rate"].as_f64().unwrap();
        assert!((rate * 8.0 - (rate * 8.0).round()).abs() < 1e-9, "a share of 8 samples: {probe}");
        assert_eq!(probe["within"], (rate - planted).abs() <= 0.08, "{probe}");
        within += usize::from(probe["within"] == true);
        let degraded = probe["degraded"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&degraded), "{probe}");
    }
    assert_eq!(report["within"], within, "{report}");
    let settings = ["beach", "park", "city street", "kitchen"];
    for (index, probe) in probes.iter().enumerate() {
        assert!(probe["prompt"].as_str().unwrap().contains(settings[index % 4]), "{probe}");
    }
}
