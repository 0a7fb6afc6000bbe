//! CLIP's tokenizer as a diffusers `StableDiffusionPipeline` runs it: the ids its text encoder is
//! fed for a prompt, read from the `tokenizer/` folder SD repos ship (`vocab.json`, `merges.txt`,
//! `special_tokens_map.json`, `tokenizer_config.json`; no `tokenizer.json`).
//!
//! The pipeline is the one transformers 5's `CLIPTokenizer` builds on the `tokenizers` crate, put
//! together here from the same components: NFC, runs of whitespace to one space, lower-case;
//! CLIP's split regex, then the byte-level pre-tokenizer (which also applies GPT-2's regex to each
//! piece); BPE with the `</w>` end-of-word suffix; `<|startoftext|>` … `<|endoftext|>` around the
//! ids; truncation to `model_max_length` keeping the end token; padding with the pad token.
//!
//! A key design decision: the special tokens' flags follow what transformers 5 makes of these
//! files, not what the files literally say (see `special_tokens` below). Whether `<|ENDOFTEXT|>` in a
//! prompt is the end token or BPE pieces depends on it, and SD1 and SD2 differ.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, SplitDelimiterBehavior, Tokenizer,
    TruncationDirection, TruncationParams, TruncationStrategy,
};

/// CLIP's pre-tokenization pattern (openai/CLIP `simple_tokenizer.py`, as transformers writes it).
const CLIP_SPLIT_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
const END_OF_WORD_SUFFIX: &str = "</w>";
/// `CLIPTokenizer`'s defaults for a special token the files leave out.
const DEFAULT_BOS: &str = "<|startoftext|>";
const DEFAULT_EOS: &str = "<|endoftext|>";

/// The named special tokens, in the order transformers 5 adds them (a later one with the same
/// content replaces an earlier one's flags).
const SPECIAL_TOKEN_KEYS: [&str; 7] =
    ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

/// Why a tokenizer folder could not be read (each names the file), or a text not tokenized.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(
        "cannot read {} (a CLIP tokenizer folder holds vocab.json, merges.txt, tokenizer_config.json and \
         usually special_tokens_map.json)",
        path.display()
    )]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} is not what a CLIP tokenizer needs: expected {expected}", path.display())]
    Malformed { path: PathBuf, expected: String },
    #[error("cannot build the tokenizer from {}: {message}", path.display())]
    Build { path: PathBuf, message: String },
    #[error("cannot tokenize {text:?}: {message}")]
    Encode { text: String, message: String },
}

/// A CLIP tokenizer that gives exactly the ids a diffusers pipeline feeds its text encoder.
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    model_max_length: usize,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer").field("model_max_length", &self.model_max_length).finish_non_exhaustive()
    }
}

impl ClipTokenizer {
    /// Reads a pipeline's `tokenizer/` folder. `special_tokens_map.json` may be absent (the
    /// special tokens are then those of `tokenizer_config.json`, or CLIP's defaults).
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let vocab_path = dir.join("vocab.json");
        let merges_path = dir.join("merges.txt");
        let config_path = dir.join("tokenizer_config.json");
        let map_path = dir.join("special_tokens_map.json");

        let vocab = parse_vocab(&vocab_path, &read(&vocab_path)?)?;
        let merges = parse_merges(&merges_path, &read(&merges_path)?, &vocab)?;
        let config = parse_object(&config_path, &read(&config_path)?)?;
        let special_map = if map_path.exists() { Some(parse_object(&map_path, &read(&map_path)?)?) } else { None };

        let model_max_length = model_max_length(&config_path, &config)?;
        let specials = special_tokens(&config_path, &config, &map_path, special_map.as_ref())?;
        let build_error =
            |error: tokenizers::Error| TokenizerError::Build { path: dir.to_path_buf(), message: error.to_string() };

        let unk = specials.content("unk_token").unwrap_or(DEFAULT_EOS).to_string();
        let model = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .unk_token(unk)
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix(END_OF_WORD_SUFFIX.to_string())
            .build()
            .map_err(build_error)?;
        let mut tokenizer = Tokenizer::new(model);
        // The normalizer first: added tokens marked `normalized` are normalized when added.
        let normalizer = NormalizerSequence::new(vec![
            NFC.into(),
            Replace::new(ReplacePattern::Regex(r"\s+".into()), " ").map_err(build_error)?.into(),
            Lowercase.into(),
        ]);
        tokenizer.with_normalizer(Some(normalizer)).map_err(build_error)?;
        let split = Split::new(SplitPattern::Regex(CLIP_SPLIT_PATTERN.into()), SplitDelimiterBehavior::Removed, true)
            .map_err(build_error)?;
        tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        tokenizer.add_tokens(specials.added.iter().cloned()).map_err(build_error)?;

        let id_of = |key: &str, default: &str| {
            let content = specials.content(key).unwrap_or(default);
            tokenizer.token_to_id(content).map(|id| (content.to_string(), id)).ok_or_else(|| {
                TokenizerError::Malformed {
                    path: vocab_path.clone(),
                    expected: format!("the {key} {content:?} among the tokens"),
                }
            })
        };
        let bos = id_of("bos_token", DEFAULT_BOS)?;
        let eos = id_of("eos_token", DEFAULT_EOS)?;
        let (pad_token, pad_id) = id_of("pad_token", DEFAULT_EOS)?;
        tokenizer
            .with_post_processor(Some(RobertaProcessing::new(eos, bos).trim_offsets(false).add_prefix_space(false)));
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: model_max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(build_error)?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(model_max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token,
        }));
        Ok(Self { tokenizer, model_max_length })
    }

    /// The number of ids [`Self::encode_padded`] returns (the text encoder's positions).
    pub fn model_max_length(&self) -> usize {
        self.model_max_length
    }

    /// The ids of `tokenizer(text, padding="max_length", max_length=model_max_length,
    /// truncation=True)`: start token, the prompt's tokens (cut so that the end token fits), end
    /// token, pad tokens up to [`Self::model_max_length`].
    pub fn encode_padded(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|error| TokenizerError::Encode { text: text.to_string(), message: error.to_string() })?;
        Ok(encoding.get_ids().to_vec())
    }
}

fn read(path: &Path) -> Result<String, TokenizerError> {
    std::fs::read_to_string(path).map_err(|source| TokenizerError::Read { path: path.to_path_buf(), source })
}

fn malformed(path: &Path, expected: impl Into<String>) -> TokenizerError {
    TokenizerError::Malformed { path: path.to_path_buf(), expected: expected.into() }
}

fn parse_object(path: &Path, text: &str) -> Result<serde_json::Map<String, Value>, TokenizerError> {
    match serde_json::from_str(text) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(malformed(path, "a JSON object")),
        Err(error) => Err(malformed(path, format!("a JSON object ({error})"))),
    }
}

fn parse_vocab(path: &Path, text: &str) -> Result<tokenizers::models::bpe::Vocab, TokenizerError> {
    let expected = "a JSON object mapping each token to its id (a whole number)";
    parse_object(path, text)
        .map_err(|_| malformed(path, expected))?
        .into_iter()
        .map(|(token, id)| match id.as_u64().and_then(|id| u32::try_from(id).ok()) {
            Some(id) => Ok((token, id)),
            None => Err(malformed(path, format!("{expected}; {token:?} has {id}"))),
        })
        .collect()
}

/// `merges.txt`: an optional `#version` line, then one merge per line, two tokens separated by a
/// space, each (and their concatenation) in the vocabulary.
fn parse_merges(
    path: &Path,
    text: &str,
    vocab: &tokenizers::models::bpe::Vocab,
) -> Result<Vec<(String, String)>, TokenizerError> {
    let mut merges = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.starts_with("#version") {
            continue;
        }
        let line_number = index + 1;
        let Some((left, right)) =
            line.split_once(' ').filter(|(l, r)| !l.is_empty() && !r.is_empty() && !r.contains(' '))
        else {
            return Err(malformed(
                path,
                format!("two tokens separated by one space on line {line_number}, found {line:?}"),
            ));
        };
        for token in [left.to_string(), right.to_string(), format!("{left}{right}")] {
            if !vocab.contains_key(&token) {
                return Err(malformed(
                    path,
                    format!("tokens of vocab.json on line {line_number}; {token:?} is not there"),
                ));
            }
        }
        merges.push((left.to_string(), right.to_string()));
    }
    Ok(merges)
}

fn model_max_length(path: &Path, config: &serde_json::Map<String, Value>) -> Result<usize, TokenizerError> {
    let expected = "model_max_length: the text encoder's positions, a whole number of at least 2";
    config
        .get("model_max_length")
        .and_then(Value::as_u64)
        .and_then(|length| usize::try_from(length).ok())
        .filter(|&length| length >= 2)
        .ok_or_else(|| malformed(path, expected))
}

/// The special tokens to add, with transformers 5's flags, and their contents by key.
struct SpecialTokens {
    added: Vec<AddedToken>,
    named: Vec<(&'static str, String)>,
}

impl SpecialTokens {
    fn content(&self, key: &str) -> Option<&str> {
        self.named.iter().find(|(name, _)| *name == key).map(|(_, content)| content.as_str())
    }
}

/// transformers 5's rules, as `from_pretrained` applies them to these files:
/// - `tokenizer_config.json`'s `added_tokens_decoder` (newer repos) are added first, as written;
/// - a named special token comes from `special_tokens_map.json` where it is there, else from
///   `tokenizer_config.json` (for CLIP, `bos`/`eos`/`unk`/`pad` default to CLIP's own);
/// - one written as an object keeps its flags; one written as a plain string is
///   `normalized: false`; one whose content `added_tokens_decoder` lists takes that entry instead;
/// - they are added bos, eos, unk, sep, pad, cls, mask, then `additional_special_tokens`, and a
///   later token with the same content replaces the earlier one's flags.
///
/// So SD1's files (`eos_token` an object with `normalized: true`, `pad_token` the plain string
/// `"<|endoftext|>"`) end with `<|endoftext|>` not normalized: `<|ENDOFTEXT|>` in a prompt is text.
/// SD2's (`pad_token` `"!"`) keep it normalized, and make `!` a special token that splits prompts.
fn special_tokens(
    config_path: &Path,
    config: &serde_json::Map<String, Value>,
    map_path: &Path,
    special_map: Option<&serde_json::Map<String, Value>>,
) -> Result<SpecialTokens, TokenizerError> {
    let mut declared = Vec::new();
    if let Some(decoder) = config.get("added_tokens_decoder") {
        let entries = decoder
            .as_object()
            .ok_or_else(|| malformed(config_path, "added_tokens_decoder as an object of added tokens"))?;
        for value in entries.values() {
            declared.push(added_token(config_path, "added_tokens_decoder", value, false)?);
        }
    }
    let mut added = declared.clone();
    let mut named = Vec::new();
    for key in SPECIAL_TOKEN_KEYS {
        let from_map = special_map.and_then(|map| map.get(key)).filter(|value| !value.is_null());
        let from_config = config.get(key).filter(|value| !value.is_null());
        let token = match (from_map, from_config, clip_default(key)) {
            (Some(value), _, _) => added_token(map_path, key, value, true)?,
            (None, Some(value), _) => added_token(config_path, key, value, false)?,
            (None, None, Some(default)) => AddedToken::from(default, true).normalized(false),
            (None, None, None) => continue,
        };
        let token = declared.iter().find(|declared| declared.content == token.content).cloned().unwrap_or(token);
        named.push((key, token.content.clone()));
        added.push(token.special(true));
    }
    let (path, extra) = match special_map.and_then(|map| map.get("additional_special_tokens")) {
        Some(extra) => (map_path, Some(extra)),
        None => (config_path, config.get("additional_special_tokens")),
    };
    if let Some(extra) = extra.filter(|value| !value.is_null()) {
        let list = extra.as_array().ok_or_else(|| malformed(path, "additional_special_tokens as a list"))?;
        for value in list {
            added.push(added_token(path, "additional_special_tokens", value, true)?.special(true));
        }
    }
    Ok(SpecialTokens { added, named })
}

fn clip_default(key: &str) -> Option<&'static str> {
    match key {
        "bos_token" => Some(DEFAULT_BOS),
        "eos_token" | "unk_token" | "pad_token" => Some(DEFAULT_EOS),
        _ => None,
    }
}

/// A token written as a string or as `{"content": …, "normalized": …, …}`. `special` is what
/// transformers assumes where the object does not say: special in `special_tokens_map.json`, not
/// in `tokenizer_config.json`; `normalized` then defaults to the opposite.
fn added_token(path: &Path, key: &str, value: &Value, special: bool) -> Result<AddedToken, TokenizerError> {
    let expected = || malformed(path, format!("{key} as a string or an object with a string \"content\""));
    match value {
        Value::String(content) => Ok(AddedToken::from(content.clone(), true).normalized(false)),
        Value::Object(fields) => {
            let content = fields.get("content").and_then(Value::as_str).ok_or_else(expected)?;
            let flag = |name: &str| fields.get(name).and_then(Value::as_bool);
            let special = flag("special").unwrap_or(special);
            Ok(AddedToken::from(content, special)
                .single_word(flag("single_word").unwrap_or(false))
                .lstrip(flag("lstrip").unwrap_or(false))
                .rstrip(flag("rstrip").unwrap_or(false))
                .normalized(flag("normalized").unwrap_or(!special)))
        }
        _ => Err(expected()),
    }
}
