//! CLIP's tokenizer against diffusers: every prompt of the fixtures' `reference.json` (218 per
//! pipeline: whitespace, case, punctuation, accents, NFC, scripts, emoji, literal special tokens,
//! prompts past the limit) must give exactly the ids `StableDiffusionPipeline` fed its text
//! encoder; broken tokenizer folders and pipeline folders are refused naming the file.

use std::path::{Path, PathBuf};

use gpu::sd::{ClipTokenizer, PipelineError, PipelineFolder, TokenizerError};
use serde_json::Value;

fn fixture(variant: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd").join(variant)
}

struct Case {
    prompt: String,
    input_ids: Vec<u32>,
}

fn reference_cases(variant: &str) -> Vec<Case> {
    let text = std::fs::read_to_string(fixture(variant).join("reference.json")).expect("reference.json");
    let reference: Value = serde_json::from_str(&text).expect("reference.json is JSON");
    let cases = reference["tokenizer"]["cases"].as_array().expect("tokenizer.cases");
    cases
        .iter()
        .map(|case| Case {
            prompt: case["prompt"].as_str().expect("prompt").to_string(),
            input_ids: case["input_ids"]
                .as_array()
                .expect("input_ids")
                .iter()
                .map(|id| u32::try_from(id.as_u64().expect("an id")).expect("a u32 id"))
                .collect(),
        })
        .collect()
}

fn assert_matches_reference(variant: &str) {
    let tokenizer = ClipTokenizer::from_dir(&fixture(variant).join("pipeline/tokenizer")).expect("tokenizer loads");
    let cases = reference_cases(variant);
    assert_eq!(cases.len(), 218, "{variant}: the fixture's number of cases");
    let mismatches: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            let got = tokenizer.encode_padded(&case.prompt).expect("encodes");
            (got != case.input_ids)
                .then(|| format!("prompt {:?}\n  expected {:?}\n  got      {:?}", case.prompt, case.input_ids, got))
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{variant}: {} of {} prompts differ from diffusers; the first:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
    );
    assert!(cases.iter().all(|case| case.input_ids.len() == tokenizer.model_max_length()));
}

#[test]
fn sd1_tokenizer_gives_the_pipelines_ids_for_every_reference_prompt() {
    assert_matches_reference("sd1");
}

#[test]
fn sd2_tokenizer_gives_the_pipelines_ids_for_every_reference_prompt() {
    assert_matches_reference("sd2");
}

/// A copy of sd1's tokenizer folder for a test to break.
fn tokenizer_copy() -> tempfile::TempDir {
    let copy = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(fixture("sd1").join("pipeline/tokenizer")).expect("tokenizer folder") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), copy.path().join(entry.file_name())).expect("copy");
    }
    copy
}

#[test]
fn a_tokenizer_folder_without_vocab_json_is_refused_naming_the_file() {
    let dir = tokenizer_copy();
    std::fs::remove_file(dir.path().join("vocab.json")).expect("remove");
    let error = ClipTokenizer::from_dir(dir.path()).expect_err("no vocab.json");
    match &error {
        TokenizerError::Read { path, source } => {
            assert_eq!(path, &dir.path().join("vocab.json"));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected a read error for vocab.json, got {other:?}"),
    }
    assert!(error.to_string().contains("vocab.json"), "{error}");
}

#[test]
fn a_malformed_merges_txt_is_refused_naming_the_file_and_the_line() {
    let dir = tokenizer_copy();
    let merges = dir.path().join("merges.txt");
    let text = std::fs::read_to_string(&merges).expect("merges.txt");
    // Line 3 (the second merge) loses its separating space.
    let broken: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, line)| if i == 2 { line.replace(' ', "") } else { line.to_string() })
        .collect();
    std::fs::write(&merges, broken.join("\n")).expect("write");
    let error = ClipTokenizer::from_dir(dir.path()).expect_err("malformed merges.txt");
    match &error {
        TokenizerError::Malformed { path, expected } => {
            assert_eq!(path, &merges);
            assert!(expected.contains("line 3"), "{expected}");
        }
        other => panic!("expected merges.txt to be refused as malformed, got {other:?}"),
    }
    assert!(error.to_string().contains("merges.txt"), "{error}");
}

#[test]
fn a_merge_of_tokens_outside_the_vocabulary_is_refused() {
    let dir = tokenizer_copy();
    let merges = dir.path().join("merges.txt");
    let text = std::fs::read_to_string(&merges).expect("merges.txt");
    std::fs::write(&merges, format!("{text}zq\u{1F600} xy\n")).expect("write");
    let error = ClipTokenizer::from_dir(dir.path()).expect_err("unknown merge tokens");
    assert!(
        matches!(&error, TokenizerError::Malformed { path, expected } if path == &merges && expected.contains("not there")),
        "{error:?}"
    );
}

/// A copy of sd1's pipeline folder (index and tokenizer only) for a test to break.
fn pipeline_copy() -> tempfile::TempDir {
    let copy = tempfile::tempdir().expect("tempdir");
    let source = fixture("sd1").join("pipeline");
    std::fs::copy(source.join("model_index.json"), copy.path().join("model_index.json")).expect("copy index");
    std::fs::create_dir(copy.path().join("tokenizer")).expect("mkdir");
    for entry in std::fs::read_dir(source.join("tokenizer")).expect("tokenizer folder") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), copy.path().join("tokenizer").join(entry.file_name())).expect("copy");
    }
    copy
}

#[test]
fn a_pipeline_folder_gives_its_tokenizer() {
    let pipeline = PipelineFolder::open(&fixture("sd2").join("pipeline")).expect("sd2 opens");
    let tokenizer = pipeline.tokenizer().expect("its tokenizer");
    assert_eq!(tokenizer.model_max_length(), 24);
}

#[test]
fn pipeline_folders_thitl_cannot_read_are_refused_naming_the_file() {
    let empty = tempfile::tempdir().expect("tempdir");
    let error = PipelineFolder::open(empty.path()).expect_err("no model_index.json");
    assert!(
        matches!(&error, PipelineError::ReadIndex { path, .. } if path == &empty.path().join("model_index.json")),
        "{error:?}"
    );

    let other_class = pipeline_copy();
    let index_path = other_class.path().join("model_index.json");
    let index = std::fs::read_to_string(&index_path).expect("index");
    std::fs::write(&index_path, index.replace("\"StableDiffusionPipeline\"", "\"FluxPipeline\"")).expect("write");
    let error = PipelineFolder::open(other_class.path()).expect_err("unsupported class");
    assert!(
        matches!(&error, PipelineError::UnsupportedClass { path, class } if path == &index_path && class == "FluxPipeline"),
        "{error:?}"
    );

    let no_tokenizer = pipeline_copy();
    std::fs::remove_dir_all(no_tokenizer.path().join("tokenizer")).expect("remove tokenizer");
    let error =
        PipelineFolder::open(no_tokenizer.path()).expect("the index is fine").tokenizer().expect_err("no tokenizer/");
    assert!(
        matches!(&error, PipelineError::MissingComponent { component, folder, .. }
            if component == "tokenizer" && folder == &no_tokenizer.path().join("tokenizer")),
        "{error:?}"
    );
}

/// Newer SD repos also list their added tokens in `tokenizer_config.json`'s
/// `added_tokens_decoder`; a named special token takes that entry's flags. Here sd1's
/// `<|endoftext|>` is declared `normalized: true`, so an upper-case `<|ENDOFTEXT|>` becomes the
/// end token. The ids are transformers 5.25's for this folder
/// (`CLIPTokenizer.from_pretrained(dir)("<|ENDOFTEXT|> upper", padding="max_length",
/// max_length=16, truncation=True)`).
#[test]
fn added_tokens_decoder_flags_apply_to_the_named_special_tokens() {
    let dir = tokenizer_copy();
    let config_path = dir.path().join("tokenizer_config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).expect("config")).expect("JSON");
    let token = |content: &str| {
        serde_json::json!({"content": content, "lstrip": false, "normalized": true, "rstrip": false,
                           "single_word": false, "special": true})
    };
    config["added_tokens_decoder"] =
        serde_json::json!({"812": token("<|startoftext|>"), "813": token("<|endoftext|>")});
    std::fs::write(&config_path, config.to_string()).expect("write");
    let tokenizer = ClipTokenizer::from_dir(dir.path()).expect("loads");
    assert_eq!(
        tokenizer.encode_padded("<|ENDOFTEXT|> upper").expect("encodes"),
        [812, 813, 84, 79, 79, 521, 813, 813, 813, 813, 813, 813, 813, 813, 813, 813]
    );
    // Without the entry the pad token's plain string wins: the same text is BPE'd.
    let plain = ClipTokenizer::from_dir(&fixture("sd1").join("pipeline/tokenizer")).expect("loads");
    assert_ne!(plain.encode_padded("<|ENDOFTEXT|> upper").expect("encodes")[1], 813);
}
