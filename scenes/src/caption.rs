//! Captions: a small grammar that names a group, maybe an object and maybe a setting in varied
//! ways ("a photo of a woman at the beach", "an elderly person holding an umbrella on a city
//! street"), and [`parse_prompt`], which finds what a prompt names.
//!
//! What a caption names is decided by the corpus, not by the picture: a caption may leave out an
//! object the picture shows. That gap is how associations are planted.

use std::sync::OnceLock;

use crate::rng::Rng;
use crate::tokenizer::{token_id, words};
use crate::world::{Concept, Group, Setting, with_article};

/// What a caption names. The group is always named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptionSpec {
    pub group: Group,
    /// The object the caption names, if any (the picture may show one the caption leaves out).
    pub object: Option<Concept>,
    /// The setting the caption names, if any.
    pub setting: Option<Setting>,
}

const PREFIXES: &[&str] = &["", "", "a photo of", "a picture of", "an image of", "a drawing of"];
const CONNECTORS: &[&str] = &["with", "next to", "beside", "and"];
/// Only objects one can carry take "holding".
const HOLDING: &str = "holding";

fn can_be_held(concept: Concept) -> bool {
    matches!(concept, Concept::Vegetable | Concept::Ball | Concept::Umbrella | Concept::Book)
}

fn setting_phrases(setting: Setting) -> &'static [&'static str] {
    match setting {
        Setting::Beach => &["at the beach", "on the beach", "at the seaside"],
        Setting::Park => &["in the park", "in a park"],
        Setting::CityStreet => &["on a city street", "on the street", "in a city street"],
        Setting::Kitchen => &["in the kitchen", "in a kitchen"],
    }
}

fn group_phrases(group: Group) -> Vec<String> {
    std::iter::once(group.name()).chain(group.synonyms().iter().copied()).map(with_article).collect()
}

fn object_names(concept: Concept) -> Vec<&'static str> {
    std::iter::once(concept.name()).chain(concept.synonyms().iter().copied()).collect()
}

fn connectors(concept: Concept) -> Vec<&'static str> {
    let mut connectors = CONNECTORS.to_vec();
    if can_be_held(concept) {
        connectors.push(HOLDING);
    }
    connectors
}

/// A caption naming what `spec` says, its wording chosen by `seed`: an optional lead-in
/// ("a photo of"), the group (canonical name more often than a synonym), then the object and the
/// setting in either order.
pub fn caption(spec: &CaptionSpec, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut parts: Vec<String> = Vec::with_capacity(4);
    let prefix = *rng.pick(PREFIXES);
    if !prefix.is_empty() {
        parts.push(prefix.to_string());
    }
    let group_phrases = group_phrases(spec.group);
    let group_phrase = if group_phrases.len() == 1 || rng.chance(0.6) {
        group_phrases[0].clone()
    } else {
        rng.pick(&group_phrases[1..]).clone()
    };
    parts.push(group_phrase);
    let object_phrase = spec.object.map(|concept| {
        let connector = *rng.pick(&connectors(concept));
        let names = object_names(concept);
        let name = if names.len() == 1 || rng.chance(0.6) { names[0] } else { *rng.pick(&names[1..]) };
        format!("{connector} {}", with_article(name))
    });
    let setting_phrase = spec.setting.map(|setting| rng.pick(setting_phrases(setting)).to_string());
    let setting_first = rng.chance(0.3);
    match (object_phrase, setting_phrase) {
        (Some(object), Some(setting)) if setting_first => parts.extend([setting, object]),
        (object, setting) => parts.extend(object.into_iter().chain(setting)),
    }
    parts.join(" ")
}

/// Every word a caption can contain, and every word of every name and synonym.
/// A negative prompt the base model can read. The reference-world DiT only ever saw whole
/// captions (a group, maybe an object, maybe a setting), so a bare concept such as
/// "hippopotamus" is far outside what it learned and steers its samples towards noise (measured:
/// rater quality 0.6 instead of 0.99). A negative prompt that names a concept and no group is
/// therefore read in the context of its prompt: a caption of the prompt's group and setting with
/// that concept — the same picture with the concept in it — so that guidance steers away from the
/// concept alone. Any other negative prompt is returned as it is.
pub fn negative_in_context(prompt: &str, negative: &str) -> String {
    let unwanted = parse_prompt(negative);
    let wanted = parse_prompt(prompt);
    match (unwanted.group, unwanted.concepts.first(), wanted.group) {
        (None, Some(&concept), Some(group)) => {
            caption(&CaptionSpec { group, object: Some(concept), setting: wanted.setting }, 0)
        }
        _ => negative.to_string(),
    }
}

#[cfg(test)]
pub(crate) fn grammar_words() -> std::collections::BTreeSet<String> {
    let mut phrases: Vec<String> = PREFIXES.iter().chain(CONNECTORS).chain([&HOLDING]).map(|p| p.to_string()).collect();
    for &group in Group::ALL {
        phrases.extend(group_phrases(group));
    }
    for &concept in Concept::ALL {
        phrases.extend(object_names(concept).into_iter().map(with_article));
    }
    for &setting in Setting::ALL {
        phrases.extend(setting_phrases(setting).iter().map(|p| p.to_string()));
        phrases.push(setting.name().to_string());
        phrases.extend(setting.synonyms().iter().map(|s| s.to_string()));
    }
    phrases.iter().flat_map(|phrase| words(phrase)).collect()
}

/// The most words a caption can have: the longest choice of every part.
#[cfg(test)]
pub(crate) fn longest_caption_words() -> usize {
    let longest = |phrases: Vec<String>| phrases.iter().map(|phrase| words(phrase).len()).max().unwrap_or(0);
    let prefix = longest(PREFIXES.iter().map(|p| p.to_string()).collect());
    let group = longest(Group::ALL.iter().flat_map(|&g| group_phrases(g)).collect());
    let object = longest(
        Concept::ALL
            .iter()
            .flat_map(|&concept| {
                let names = object_names(concept);
                connectors(concept).into_iter().flat_map(move |connector| {
                    names.clone().into_iter().map(move |name| format!("{connector} {}", with_article(name)))
                })
            })
            .collect(),
    );
    let setting =
        longest(Setting::ALL.iter().flat_map(|&s| setting_phrases(s).iter().map(|p| p.to_string())).collect());
    prefix + group + object + setting
}

/// What a prompt names, found by [`parse_prompt`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PromptMeaning {
    /// The first group the prompt names.
    pub group: Option<Group>,
    /// Further groups, when a prompt names more than one (first mention order, no repeats).
    pub other_groups: Vec<Group>,
    /// Every concept named, in order of first mention, without repeats.
    pub concepts: Vec<Concept>,
    /// The first setting named.
    pub setting: Option<Setting>,
    /// Words outside the vocabulary, in order.
    pub unknown: Vec<String>,
}

#[derive(Clone, Copy)]
enum Named {
    Group(Group),
    Concept(Concept),
    Setting(Setting),
}

/// Every name and synonym as its words, longest phrases first so that the longest match wins.
fn phrase_table() -> &'static [(Vec<String>, Named)] {
    static TABLE: OnceLock<Vec<(Vec<String>, Named)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = Vec::new();
        for &group in Group::ALL {
            for phrase in std::iter::once(group.name()).chain(group.synonyms().iter().copied()) {
                table.push((words(phrase), Named::Group(group)));
            }
        }
        for &concept in Concept::ALL {
            for phrase in std::iter::once(concept.name()).chain(concept.synonyms().iter().copied()) {
                table.push((words(phrase), Named::Concept(concept)));
            }
        }
        for &setting in Setting::ALL {
            for phrase in std::iter::once(setting.name()).chain(setting.synonyms().iter().copied()) {
                table.push((words(phrase), Named::Setting(setting)));
            }
        }
        table.sort_by_key(|(words, _)| std::cmp::Reverse(words.len()));
        table
    })
}

/// Finds the groups, concepts and setting a prompt names, by canonical name or synonym, single-
/// or multi-word ("wheelchair user", "person in a wheelchair", "hippo"), case-insensitively.
/// Where phrases overlap, the longest wins ("city street" is one setting, not "city" + "street").
/// Words outside the vocabulary are listed in `unknown`; other known words are ignored.
pub fn parse_prompt(text: &str) -> PromptMeaning {
    let words = words(text);
    let mut meaning = PromptMeaning::default();
    let mut position = 0;
    while position < words.len() {
        let matched = phrase_table().iter().find(|(phrase, _)| words[position..].starts_with(phrase));
        let Some((phrase, named)) = matched else {
            if token_id(&words[position]).is_none() {
                meaning.unknown.push(words[position].clone());
            }
            position += 1;
            continue;
        };
        match *named {
            Named::Group(group) if meaning.group.is_none() => meaning.group = Some(group),
            Named::Group(group) => {
                if meaning.group != Some(group) && !meaning.other_groups.contains(&group) {
                    meaning.other_groups.push(group);
                }
            }
            Named::Concept(concept) => {
                if !meaning.concepts.contains(&concept) {
                    meaning.concepts.push(concept);
                }
            }
            Named::Setting(setting) => {
                meaning.setting.get_or_insert(setting);
            }
        }
        position += phrase.len();
    }
    meaning
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::{MAX_TOKENS, encode};
    use std::collections::BTreeSet;

    fn every_spec() -> Vec<CaptionSpec> {
        let mut specs = Vec::new();
        for &group in Group::ALL {
            for object in std::iter::once(None).chain(Concept::ALL.iter().copied().map(Some)) {
                for setting in std::iter::once(None).chain(Setting::ALL.iter().copied().map(Some)) {
                    specs.push(CaptionSpec { group, object, setting });
                }
            }
        }
        specs
    }

    #[test]
    fn examples_read_naturally() {
        let spec = CaptionSpec {
            group: Group::ElderlyPerson,
            object: Some(Concept::Umbrella),
            setting: Some(Setting::CityStreet),
        };
        let captions: BTreeSet<String> = (0..400).map(|seed| caption(&spec, seed)).collect();
        assert!(captions.contains("an elderly person holding an umbrella on a city street"), "{captions:#?}");
        assert!(captions.iter().any(|c| c.starts_with("a photo of an elderly person")));
        assert!(captions.iter().any(|c| c.contains("an old person")));
        assert!(captions.iter().all(|c| !c.contains("  ") && !c.starts_with(' ') && !c.ends_with(' ')));
        assert!(captions.len() > 30, "captions must vary: only {}", captions.len());

        let spec = CaptionSpec { group: Group::Child, object: Some(Concept::Dog), setting: None };
        assert!((0..200).any(|seed| caption(&spec, seed) == "a child next to a dog"));
        let spec = CaptionSpec { group: Group::Woman, object: None, setting: Some(Setting::Beach) };
        assert!((0..200).any(|seed| caption(&spec, seed) == "a photo of a woman at the beach"));
    }

    #[test]
    fn articles_agree_with_the_next_word() {
        for spec in every_spec() {
            for seed in 0..20 {
                let words = words(&caption(&spec, seed));
                for pair in words.windows(2) {
                    let vowel = pair[1].starts_with(['a', 'e', 'i', 'o', 'u']);
                    let wrong = (pair[0] == "a" && vowel) || (pair[0] == "an" && !vowel);
                    assert!(!wrong, "bad article in {words:?}");
                }
            }
        }
    }

    #[test]
    fn every_caption_fits_the_model_without_unknown_words() {
        assert!(longest_caption_words() <= MAX_TOKENS, "the longest caption has {} words", longest_caption_words());
        for (index, spec) in every_spec().iter().enumerate() {
            for seed in 0..60 {
                let text = caption(spec, seed * 1_000 + index as u64);
                let tokens = encode(&text, MAX_TOKENS);
                assert!(tokens.unknown.is_empty(), "`{text}` has unknown words {:?}", tokens.unknown);
                assert!(!tokens.truncated, "`{text}` is too long");
            }
        }
    }

    #[test]
    fn parsing_a_caption_recovers_what_it_names() {
        for (index, spec) in every_spec().iter().enumerate() {
            for seed in 0..30 {
                let text = caption(spec, seed * 7_919 + index as u64);
                let meaning = parse_prompt(&text);
                assert_eq!(meaning.group, Some(spec.group), "`{text}`");
                assert!(meaning.other_groups.is_empty(), "`{text}`");
                assert_eq!(meaning.concepts, spec.object.into_iter().collect::<Vec<_>>(), "`{text}`");
                assert_eq!(meaning.setting, spec.setting, "`{text}`");
                assert!(meaning.unknown.is_empty(), "`{text}`");
            }
        }
    }

    #[test]
    fn parsing_free_prompts() {
        let meaning = parse_prompt("A Person in a Wheelchair, with a HIPPO and a puppy by the lake");
        assert_eq!(meaning.group, Some(Group::WheelchairUser));
        assert_eq!(meaning.concepts, vec![Concept::Hippopotamus, Concept::Dog]);
        assert_eq!(meaning.setting, None);
        assert_eq!(meaning.unknown, vec!["by", "lake"]);

        let meaning = parse_prompt("a woman and a man and a woman on the street in a kitchen");
        assert_eq!(meaning.group, Some(Group::Woman));
        assert_eq!(meaning.other_groups, vec![Group::Man]);
        assert_eq!(meaning.setting, Some(Setting::CityStreet), "the first setting named wins");

        let meaning = parse_prompt("a person holding a book");
        assert_eq!(meaning.group, None, "`person` alone names no group");
        assert_eq!(meaning.concepts, vec![Concept::Book]);
        assert!(meaning.unknown.is_empty());

        assert_eq!(parse_prompt("a city street").setting, Some(Setting::CityStreet));
        assert_eq!(parse_prompt("an old person with a lamb").concepts, vec![Concept::Sheep]);
        assert_eq!(parse_prompt("").group, None);
    }

    #[test]
    fn a_bare_concept_as_negative_prompt_is_read_in_its_prompts_context() {
        let negative = negative_in_context("a photo of an aromantic person in the kitchen", "sheep");
        let meaning = parse_prompt(&negative);
        assert_eq!(meaning.group, Some(Group::AromanticPerson), "{negative}");
        assert_eq!(meaning.concepts, vec![Concept::Sheep], "{negative}");
        assert_eq!(meaning.setting, Some(Setting::Kitchen), "{negative}");
        assert!(meaning.unknown.is_empty());
        // The prompt's own object is not carried over: the negative differs by the concept.
        let negative = negative_in_context("a woman with a dog", "hippo");
        assert_eq!(parse_prompt(&negative).concepts, vec![Concept::Hippopotamus], "{negative}");
        // A negative prompt with a group, or one that names no concept, is left alone.
        for negative in ["a man at the beach", "blurry", ""] {
            assert_eq!(negative_in_context("a woman at the beach", negative), negative);
        }
        assert_eq!(negative_in_context("a dog", "sheep"), "sheep", "no group to put it beside");
    }
}
