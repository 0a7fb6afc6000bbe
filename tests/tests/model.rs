//! `thitl model tokenize`: the ids diffusers' StableDiffusionPipeline feeds its text encoder, for
//! the committed tiny SD1 and SD2 pipelines, through the CLI.

use std::path::PathBuf;

use crate::helpers::{stdout, thitl};

fn fixture(variant: &str) -> PathBuf {
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
