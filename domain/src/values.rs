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

    /// The longest text, in characters.
    pub const MAX: usize = MAX;

    /// A regular expression (ECMA-262, as OpenAPI reads it; Python's `re` and Rust's `regex`
    /// read it the same) that matches exactly the strings [`Text::parse`] accepts: any
    /// [`WHITESPACE`] around 1 to `MAX` characters that begin and end with neither whitespace nor
    /// a control character and hold no control character.
    pub fn pattern() -> String {
        debug_assert!(MAX >= 2, "the pattern spells the first and last character apart");
        format!("^{WHITESPACE}*{EDGE}(?:{INNER}{{0,{}}}{EDGE})?{WHITESPACE}*$", MAX - 2)
    }
}

/// Every character `str::trim` removes (`char::is_whitespace`: Unicode's White_Space), as a
/// character class, spelled out: `\s` means a different set in each regular-expression dialect.
pub const WHITESPACE: &str = r"[\u0009-\u000d\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";
/// Any character but a control character (`char::is_control`: Unicode's Cc).
const INNER: &str = r"[^\u0000-\u001f\u007f-\u009f]";
/// Any character but whitespace and control characters: the first and last of a trimmed text.
const EDGE: &str = r"[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";

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
    /// What [`BlobHash::parse`] accepts, as a regular expression.
    pub const PATTERN: &str = "^[0-9a-f]{64}$";

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

/// The OpenAPI schemas of the value types: what a request must hold for them to parse.
#[cfg(feature = "openapi")]
mod openapi {
    use std::borrow::Cow;

    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
    use utoipa::{PartialSchema, ToSchema};

    use super::{BlobHash, Quality, Text};

    impl<const MAX: usize> PartialSchema for Text<MAX> {
        fn schema() -> RefOr<Schema> {
            let description = format!(
                "Text of 1 to {MAX} characters once trimmed of whitespace (as Rust's `str::trim`), \
                 with no control character (Unicode Cc) inside."
            );
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(Self::pattern()))
                .description(Some(description))
                .into()
        }
    }

    impl<const MAX: usize> ToSchema for Text<MAX> {
        fn name() -> Cow<'static, str> {
            match MAX {
                100 => "Name".into(),
                1000 => "Sentence".into(),
                _ => format!("Text{MAX}").into(),
            }
        }
    }

    impl PartialSchema for Quality {
        fn schema() -> RefOr<Schema> {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(5))
                .description(Some("A visual-quality rating, 1 (unusable) to 5 (excellent)."))
                .into()
        }
    }

    impl ToSchema for Quality {}

    impl PartialSchema for BlobHash {
        fn schema() -> RefOr<Schema> {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(BlobHash::PATTERN))
                .description(Some("A SHA-256 content hash in the blob store: 64 lowercase hexadecimal digits."))
                .into()
        }
    }

    impl ToSchema for BlobHash {}
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

    /// Strings at every edge of `Text::parse`: whitespace of each kind around and inside,
    /// control characters at the ends (trimmed) and inside (refused), and the length bound.
    fn tricky<const MAX: usize>() -> Vec<String> {
        let mut cases: Vec<String> = [
            "",
            " ",
            "\t",
            "\u{a0}",
            "\u{3000}\u{2029}",
            "a",
            " a ",
            "\ta\t",
            "\u{a0}a\u{a0}",
            "\u{85}a\u{85}",
            "\u{2000}a b\u{200a}",
            "\na\r\n",
            "\u{b}a\u{c}",
            "a\u{0}b",
            "a\tb",
            "a\u{7f}b",
            "a\u{9f}b",
            "a\u{85}b",
            "\u{0}a",
            "a\u{1f}",
            "\u{80}a",
            "a\u{a0}b",
            "a\u{3000}b",
            "a\u{200b}",
            "\u{200b}",
            "\u{feff}a",
            "\u{1f600}",
            "\u{1680}\u{1f600}\u{1680}",
            "ä ö",
            "a\n",
            "\u{2028}",
        ]
        .map(String::from)
        .to_vec();
        for n in [MAX - 1, MAX, MAX + 1] {
            cases.push("x".repeat(n));
            cases.push(format!(" \t{}\u{a0}", "é".repeat(n)));
            cases.push(format!("a{}b", " ".repeat(n.saturating_sub(2))));
            cases.push(format!("a{}b", "\u{1f600}".repeat(n.saturating_sub(2))));
        }
        cases
    }

    fn pattern_matches_parse<const MAX: usize>() {
        let pattern = regex::Regex::new(&Text::<MAX>::pattern()).unwrap();
        for case in tricky::<MAX>() {
            let parsed = Text::<MAX>::parse("text", &case).is_ok();
            assert_eq!(pattern.is_match(&case), parsed, "{MAX}: {case:?} (parse accepts it: {parsed})");
        }
    }

    #[test]
    fn the_text_patterns_accept_what_parse_accepts() {
        pattern_matches_parse::<100>();
        pattern_matches_parse::<1000>();
        pattern_matches_parse::<5>();
    }

    #[test]
    fn the_whitespace_class_is_what_trim_removes() {
        let class = regex::Regex::new(&format!("^{WHITESPACE}$")).unwrap();
        let edge = regex::Regex::new(&format!("^{EDGE}$")).unwrap();
        let inner = regex::Regex::new(&format!("^{INNER}$")).unwrap();
        for c in (0..=u32::from(char::MAX)).filter_map(char::from_u32) {
            let text = c.to_string();
            assert_eq!(class.is_match(&text), c.is_whitespace(), "{c:?}");
            assert_eq!(text.trim().is_empty(), c.is_whitespace(), "{c:?}");
            assert_eq!(edge.is_match(&text), !c.is_whitespace() && !c.is_control(), "{c:?}");
            assert_eq!(inner.is_match(&text), !c.is_control(), "{c:?}");
        }
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
