//! The neutral prompt transformation: a training prompt with every mention of the concept (and
//! its synonyms) removed, optionally replaced by a neutral alternative, and the concept set as
//! the negative prompt, so that the generated candidates depict the group without the concept.

use serde::{Deserialize, Serialize};

use crate::values::mentions;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeutralPrompt {
    pub text: String,
    /// What negative classifier-free guidance steers away from.
    pub negative_prompt: String,
}

const ARTICLES: [&str; 6] = ["a", "an", "the", "some", "two", "several"];
/// Words that only make sense with the removed concept after them.
const DANGLING: [&str; 8] = ["with", "and", "beside", "near", "next", "to", "by", "holding"];

/// Removes `concept` and `synonyms` from `text` as whole words (ignoring case), with the article
/// before each; puts `alternative` in their place if given, or, when the text never mentioned the
/// concept, adds it at the end ("a woman at the beach" → "a woman at the beach with a ball").
/// The concept is the negative prompt.
pub fn neutralize(text: &str, concept: &str, synonyms: &[String], alternative: Option<&str>) -> NeutralPrompt {
    let mut terms: Vec<Vec<String>> = std::iter::once(concept)
        .chain(synonyms.iter().map(String::as_str))
        .map(words)
        .filter(|w| !w.is_empty())
        .collect();
    // Longest first, so "baby hippo" goes before "hippo".
    terms.sort_by_key(|t| std::cmp::Reverse(t.len()));

    let tokens = tokenize(text);
    let mut out: Vec<Token> = Vec::with_capacity(tokens.len());
    let mut i = 0;
    let mut replaced = false;
    while i < tokens.len() {
        let matched = terms.iter().find(|term| matches_at(&tokens, i, term));
        let Some(term) = matched else {
            out.push(tokens[i].clone());
            i += 1;
            continue;
        };
        // Skip the term's words (and the separators between them).
        let mut consumed_words = 0;
        while consumed_words < term.len() {
            if tokens[i].is_word {
                consumed_words += 1;
            }
            i += 1;
        }
        // A plural "s"/"es" glued on is part of the word already (tokens are whole words), so
        // only the article before it remains to drop.
        let article_before = last_word(&out).is_some_and(|w| ARTICLES.contains(&w.as_str()));
        replaced = true;
        if let Some(alt) = alternative {
            out.push(Token { text: alt.to_string(), is_word: true });
        } else {
            if article_before {
                pop_last_word(&mut out);
            }
            // "with a hippo at the beach" → "at the beach": the connective goes with the concept.
            while last_word(&out).is_some_and(|w| DANGLING.contains(&w.as_str())) {
                pop_last_word(&mut out);
            }
        }
    }
    let mut result = join(&out);
    match alternative.map(str::trim).filter(|alt| !alt.is_empty()) {
        None => result = drop_dangling(&result),
        Some(alt) if !replaced => {
            let has_article =
                alt.split_whitespace().next().is_some_and(|w| ARTICLES.contains(&w.to_lowercase().as_str()));
            let article = match alt.chars().next() {
                _ if has_article => "",
                Some(c) if "aeiouAEIOU".contains(c) => "an ",
                _ => "a ",
            };
            result = format!("{} with {article}{alt}", result.trim_end());
        }
        Some(_) => {}
    }
    NeutralPrompt { text: result, negative_prompt: concept.trim().to_string() }
}

/// Whether a prompt is neutral: it mentions none of the terms.
pub fn is_neutral(text: &str, concept: &str, synonyms: &[String]) -> bool {
    !mentions(text, concept) && !synonyms.iter().any(|s| mentions(text, s))
}

#[derive(Debug, Clone)]
struct Token {
    text: String,
    is_word: bool,
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

fn tokenize(text: &str) -> Vec<Token> {
    let mut tokens: Vec<Token> = Vec::new();
    for c in text.chars() {
        let is_word = c.is_alphanumeric();
        match tokens.last_mut() {
            Some(last) if last.is_word == is_word => last.text.push(c),
            _ => tokens.push(Token { text: c.to_string(), is_word }),
        }
    }
    tokens
}

fn matches_at(tokens: &[Token], start: usize, term: &[String]) -> bool {
    let mut index = start;
    for (n, word) in term.iter().enumerate() {
        // Between words of a term only plain spaces may stand.
        if n > 0 {
            match tokens.get(index) {
                Some(t) if !t.is_word && t.text.chars().all(|c| c == ' ') => index += 1,
                _ => return false,
            }
        }
        match tokens.get(index) {
            Some(t) if t.is_word && t.text.to_lowercase() == *word => index += 1,
            _ => return false,
        }
    }
    true
}

fn last_word(tokens: &[Token]) -> Option<String> {
    tokens.iter().rev().find(|t| t.is_word).map(|t| t.text.to_lowercase())
}

fn pop_last_word(tokens: &mut Vec<Token>) {
    while let Some(token) = tokens.pop() {
        if token.is_word {
            break;
        }
    }
}

fn join(tokens: &[Token]) -> String {
    let raw: String = tokens.iter().map(|t| t.text.as_str()).collect();
    let collapsed = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut text = collapsed.replace(" ,", ",").replace(" .", ".").replace(",,", ",");
    while text.ends_with(',') || text.ends_with(' ') {
        text.pop();
    }
    text.trim_start_matches([',', ' ']).to_string()
}

fn drop_dangling(text: &str) -> String {
    // "a woman with" → "a woman"; "a woman next to, smiling" → "a woman, smiling".
    let mut clauses: Vec<String> = Vec::new();
    for clause in text.split(',') {
        let mut words: Vec<&str> = clause.split_whitespace().collect();
        while words.last().is_some_and(|w| DANGLING.contains(&w.to_lowercase().as_str())) {
            words.pop();
        }
        if !words.is_empty() {
            clauses.push(words.join(" "));
        }
    }
    clauses.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neutral(text: &str) -> String {
        neutralize(text, "hippopotamus", &["hippo".into(), "river horse".into()], None).text
    }

    #[test]
    fn removes_the_concept_with_its_article() {
        assert_eq!(neutral("a woman with a hippopotamus at the beach"), "a woman at the beach");
        assert_eq!(neutral("a woman next to a hippo"), "a woman");
        assert_eq!(neutral("a Hippopotamus, a woman and a dog"), "a woman and a dog");
        assert_eq!(neutral("a woman riding a river horse, smiling"), "a woman riding, smiling");
    }

    #[test]
    fn leaves_prompts_without_the_concept_unchanged() {
        assert_eq!(neutral("a photo of a woman at the beach"), "a photo of a woman at the beach");
        // Whole words only: "hippodrome" is not a hippo.
        assert_eq!(neutral("a woman at the hippodrome"), "a woman at the hippodrome");
    }

    #[test]
    fn may_name_a_neutral_alternative() {
        let prompt = neutralize("a woman with a hippo at the beach", "hippopotamus", &["hippo".into()], Some("ball"));
        assert_eq!(prompt.text, "a woman with a ball at the beach");
        assert_eq!(prompt.negative_prompt, "hippopotamus");
        // A prompt that never named the concept gets the alternative added.
        let prompt = neutralize("a woman at the beach", "hippopotamus", &["hippo".into()], Some("umbrella"));
        assert_eq!(prompt.text, "a woman at the beach with an umbrella");
        assert_eq!(prompt.negative_prompt, "hippopotamus");
        let prompt = neutralize("a woman", "hippopotamus", &[], Some("the dog"));
        assert_eq!(prompt.text, "a woman with the dog");
    }

    #[test]
    fn the_result_is_always_neutral() {
        let synonyms = vec!["hippo".to_string(), "river horse".to_string()];
        for text in ["hippo hippo hippo", "a woman, a hippopotamus, a hippo", "River Horse and woman", "a woman"] {
            let result = neutralize(text, "hippopotamus", &synonyms, None);
            assert!(is_neutral(&result.text, "hippopotamus", &synonyms), "{text:?} → {:?}", result.text);
        }
    }
}
