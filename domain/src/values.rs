//! Value types that hold their preconditions, so a value that exists is valid.

use serde::{Deserialize, Serialize};

use crate::error::DomainError;

/// Trimmed, non-empty text of at most `MAX` characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Text<const MAX: usize>(String);

/// A short name: a group, a concept, a category key, a principal.
pub type Name = Text<100>;
/// A prompt or a sentence of description.
pub type Sentence = Text<1000>;

impl<const MAX: usize> Text<MAX> {
    /// Validates `text` for the field called `field` (named in the error).
    pub fn parse(field: &'static str, text: &str) -> Result<Self, DomainError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(DomainError::invalid(field, "must not be empty"));
        }
        let length = trimmed.chars().count();
        if length > MAX {
            return Err(DomainError::invalid(field, format!("is {length} characters long; the limit is {MAX}")));
        }
        if trimmed.chars().any(|c| c.is_control()) {
            return Err(DomainError::invalid(field, "must not contain control characters"));
        }
        Ok(Text(trimmed.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<const MAX: usize> TryFrom<String> for Text<MAX> {
    type Error = DomainError;
    fn try_from(text: String) -> Result<Self, DomainError> {
        Text::parse("text", &text)
    }
}

impl<const MAX: usize> From<Text<MAX>> for String {
    fn from(text: Text<MAX>) -> String {
        text.0
    }
}

impl<const MAX: usize> std::fmt::Display for Text<MAX> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A visual-quality rating, 1 (unusable) to 5 (excellent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Quality(u8);

impl Quality {
    pub fn new(value: u8) -> Result<Self, DomainError> {
        if (1..=5).contains(&value) {
            Ok(Quality(value))
        } else {
            Err(DomainError::RatingOutOfRange { value: value.into() })
        }
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for Quality {
    type Error = DomainError;
    fn try_from(value: u8) -> Result<Self, DomainError> {
        Quality::new(value)
    }
}

impl From<Quality> for u8 {
    fn from(quality: Quality) -> u8 {
        quality.0
    }
}

/// A SHA-256 content hash of a blob (an image or a weights file), as 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BlobHash(String);

impl BlobHash {
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        let valid = text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if valid {
            Ok(BlobHash(text.to_string()))
        } else {
            Err(DomainError::invalid("blob hash", "must be 64 lowercase hexadecimal digits (SHA-256)"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for BlobHash {
    type Error = DomainError;
    fn try_from(text: String) -> Result<Self, DomainError> {
        BlobHash::parse(&text)
    }
}

impl From<BlobHash> for String {
    fn from(hash: BlobHash) -> String {
        hash.0
    }
}

impl std::fmt::Display for BlobHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `text` mentions `term` as whole words, ignoring case ("sheep" is in "two Sheep",
/// "ram" is not in "program").
pub fn mentions(text: &str, term: &str) -> bool {
    let words = |s: &str| -> Vec<String> {
        s.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
    };
    let haystack = words(text);
    let needle = words(term);
    !needle.is_empty() && haystack.windows(needle.len()).any(|window| window == needle.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_trimmed_and_bounded() {
        assert_eq!(Name::parse("group", "  woman ").unwrap().as_str(), "woman");
        assert!(matches!(Name::parse("group", "   "), Err(DomainError::Invalid { field: "group", .. })));
        let long = "x".repeat(101);
        assert!(matches!(Name::parse("group", &long), Err(DomainError::Invalid { .. })));
        assert!(matches!(Name::parse("group", "a\u{0}b"), Err(DomainError::Invalid { .. })));
    }

    #[test]
    fn quality_holds_only_one_to_five() {
        assert_eq!(Quality::new(1).unwrap().get(), 1);
        assert_eq!(Quality::new(5).unwrap().get(), 5);
        assert_eq!(Quality::new(0), Err(DomainError::RatingOutOfRange { value: 0 }));
        assert_eq!(Quality::new(6), Err(DomainError::RatingOutOfRange { value: 6 }));
        let parsed: Result<Quality, _> = serde_json::from_str("9");
        assert!(parsed.is_err());
    }

    #[test]
    fn blob_hash_is_sha256_hex() {
        assert!(BlobHash::parse(&"a".repeat(64)).is_ok());
        assert!(BlobHash::parse(&"A".repeat(64)).is_err());
        assert!(BlobHash::parse("abc").is_err());
    }

    #[test]
    fn mentions_matches_whole_words_case_insensitively() {
        assert!(mentions("a Hippopotamus at the beach", "hippopotamus"));
        assert!(mentions("a wheelchair user, smiling", "wheelchair user"));
        assert!(!mentions("a program", "ram"));
        assert!(!mentions("a wheelchair and a user", "wheelchair user"));
        assert!(!mentions("anything", ""));
    }
}
