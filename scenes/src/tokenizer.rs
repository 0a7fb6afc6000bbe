//! The text side of the model: words to token ids.
//!
//! Text is lowercased and split on every character that is not a letter or a digit. Each word
//! maps to its id in a fixed vocabulary: every word the caption grammar can produce and every
//! name and synonym of a group, concept or setting. Id 0 pads a prompt to its 16 slots; id 1 stands
//! for any word outside the vocabulary, and [`encode`] reports those words.
//!
//! A key design decision: the vocabulary is an explicit list whose order gives the ids, not a
//! sorted set, because trained weights index their embedding table by id. New words go at the
//! end; no word is ever removed or moved.

use std::collections::HashMap;
use std::sync::OnceLock;

/// Pads unused token slots.
pub const PAD_ID: u32 = 0;
/// Stands for any word outside the vocabulary.
pub const UNKNOWN_ID: u32 = 1;
/// Token slots per prompt: the model's text input length.
pub const MAX_TOKENS: usize = 16;
/// Upper bound on the vocabulary size the model's embedding table is built for.
pub const MAX_VOCABULARY_SIZE: usize = 512;

/// The vocabulary after the two reserved ids; the word at position `i` has id `i + 2`.
/// Append only: ids are baked into trained weights.
const WORDS: &[&str] = &[
    // the caption grammar's other words
    "a",
    "an",
    "the",
    "of",
    "photo",
    "picture",
    "image",
    "drawing",
    "with",
    "holding",
    "next",
    "to",
    "beside",
    "and",
    "at",
    "on",
    "in",
    // groups
    "woman",
    "lady",
    "man",
    "gentleman",
    "wheelchair",
    "user",
    "person",
    "aromantic",
    "child",
    "kid",
    "elderly",
    "old",
    "senior",
    // concepts
    "hippopotamus",
    "hippo",
    "vegetable",
    "veggie",
    "sheep",
    "lamb",
    "ball",
    "tree",
    "dog",
    "puppy",
    "umbrella",
    "book",
    // settings
    "beach",
    "seaside",
    "park",
    "city",
    "street",
    "kitchen",
];

const FIRST_WORD_ID: u32 = 2;

/// Number of ids in use: the reserved padding and unknown ids plus every word.
pub fn vocabulary_size() -> usize {
    WORDS.len() + FIRST_WORD_ID as usize
}

fn ids_by_word() -> &'static HashMap<&'static str, u32> {
    static IDS: OnceLock<HashMap<&'static str, u32>> = OnceLock::new();
    IDS.get_or_init(|| WORDS.iter().enumerate().map(|(index, &word)| (word, index as u32 + FIRST_WORD_ID)).collect())
}

/// The id of a lowercase `word`, if it is in the vocabulary.
pub fn token_id(word: &str) -> Option<u32> {
    ids_by_word().get(word).copied()
}

/// The word behind `id`; `None` for padding, unknown and out-of-range ids.
pub fn token_word(id: u32) -> Option<&'static str> {
    id.checked_sub(FIRST_WORD_ID).and_then(|index| WORDS.get(index as usize)).copied()
}

/// `text` lowercased and split on everything that is not a letter or a digit.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|word| !word.is_empty()).map(str::to_lowercase).collect()
}

/// A prompt as token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    /// One id per word, then [`PAD_ID`] up to `max_tokens`; exactly `max_tokens` long.
    pub ids: Vec<u32>,
    /// Words outside the vocabulary (encoded as [`UNKNOWN_ID`]), in order of appearance, including
    /// any past the cut.
    pub unknown: Vec<String>,
    /// Whether the text had more than `max_tokens` words, so that the rest was cut off.
    pub truncated: bool,
}

/// Encodes `text` into exactly `max_tokens` ids (use [`MAX_TOKENS`] for the model).
pub fn encode(text: &str, max_tokens: usize) -> Tokenized {
    let words = words(text);
    let mut unknown = Vec::new();
    let mut ids: Vec<u32> = words
        .iter()
        .map(|word| {
            token_id(word).unwrap_or_else(|| {
                unknown.push(word.clone());
                UNKNOWN_ID
            })
        })
        .collect();
    let truncated = ids.len() > max_tokens;
    ids.resize(max_tokens, PAD_ID);
    Tokenized { ids, unknown, truncated }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caption::grammar_words;
    use std::collections::BTreeSet;

    #[test]
    fn vocabulary_is_exactly_the_grammar_and_names_without_duplicates() {
        let listed: BTreeSet<String> = WORDS.iter().map(|word| word.to_string()).collect();
        assert_eq!(listed.len(), WORDS.len(), "a word is listed twice");
        let needed = grammar_words();
        let missing: Vec<_> = needed.difference(&listed).collect();
        let unused: Vec<_> = listed.difference(&needed).collect();
        assert!(missing.is_empty(), "words the grammar or a name uses but the vocabulary lacks: {missing:?}");
        assert!(unused.is_empty(), "words nothing produces: {unused:?}");
        assert!(vocabulary_size() <= MAX_VOCABULARY_SIZE);
        for word in WORDS {
            assert_eq!(words(word), vec![word.to_string()], "`{word}` must be one lowercase word");
        }
    }

    #[test]
    fn ids_are_stable_and_reversible() {
        // Ids are baked into trained weights: these must never change.
        assert_eq!(token_id("a"), Some(2));
        assert_eq!(token_id("woman"), Some(19));
        assert_eq!(token_id("hippopotamus"), Some(32));
        assert_eq!(token_id("kitchen"), Some(49));
        assert_eq!(vocabulary_size(), 50);
        for id in FIRST_WORD_ID..vocabulary_size() as u32 {
            assert_eq!(token_id(token_word(id).unwrap()), Some(id));
        }
        assert_eq!(token_word(PAD_ID), None);
        assert_eq!(token_word(UNKNOWN_ID), None);
        assert_eq!(token_word(10_000), None);
    }

    #[test]
    fn encode_lowercases_splits_pads_and_reports_unknown_words() {
        let tokens = encode("A Woman, at the BEACH!", MAX_TOKENS);
        let expected: Vec<u32> = ["a", "woman", "at", "the", "beach"].iter().map(|w| token_id(w).unwrap()).collect();
        assert_eq!(&tokens.ids[..5], expected.as_slice());
        assert!(tokens.ids[5..].iter().all(|&id| id == PAD_ID));
        assert_eq!(tokens.ids.len(), MAX_TOKENS);
        assert!(tokens.unknown.is_empty() && !tokens.truncated);

        let tokens = encode("a giraffe-woman eating spaghetti", MAX_TOKENS);
        assert_eq!(tokens.unknown, vec!["giraffe", "eating", "spaghetti"]);
        assert_eq!(
            &tokens.ids[..5],
            &[token_id("a").unwrap(), UNKNOWN_ID, token_id("woman").unwrap(), UNKNOWN_ID, UNKNOWN_ID]
        );
    }

    #[test]
    fn encode_truncates_long_text_and_says_so() {
        let text = "a woman ".repeat(10); // 20 words
        let tokens = encode(&text, MAX_TOKENS);
        assert!(tokens.truncated);
        assert_eq!(tokens.ids.len(), MAX_TOKENS);
        assert!(tokens.ids.iter().all(|&id| id != PAD_ID));
        let exact = encode(&"a woman ".repeat(8), MAX_TOKENS);
        assert!(!exact.truncated, "16 words fill 16 slots exactly");
        assert_eq!(encode("", 4).ids, vec![PAD_ID; 4]);
    }
}
