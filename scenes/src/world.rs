//! The vocabulary of the reference world: who is in a scene ([`Group`]), which object is
//! ([`Concept`]), and where ([`Setting`]).
//!
//! Each value has a stable snake_case id (what configs, events and files store), a canonical name
//! (what captions say, e.g. "wheelchair user") and synonyms that captions and prompts may use
//! instead. Ids never change once shipped; names and synonyms may grow.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// "a" or "an" before `phrase`, by its first letter (enough for this world's words:
/// "an elderly person", "an umbrella", "a hippo").
pub fn with_article(phrase: &str) -> String {
    let starts_with_vowel =
        phrase.chars().next().is_some_and(|first| matches!(first.to_ascii_lowercase(), 'a' | 'e' | 'i' | 'o' | 'u'));
    if starts_with_vowel { format!("an {phrase}") } else { format!("a {phrase}") }
}

/// Normalises free text for name lookup: lowercase, words joined by single spaces, `_` and `-`
/// treated as spaces (so ids and names both match).
fn normalise_name(text: &str) -> String {
    text.split(|c: char| c.is_whitespace() || c == '_' || c == '-')
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

macro_rules! named_values {
    (
        $(#[$meta:meta])*
        $kind:literal, $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident => $id:literal, $canonical:literal, [$($synonym:literal),*]; )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order (the order of [`Self::index`]).
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )+ ];

            /// The stable snake_case id stored in configs and events.
            pub const fn id(self) -> &'static str {
                match self { $( $name::$variant => $id, )+ }
            }

            /// The canonical name captions use.
            pub const fn name(self) -> &'static str {
                match self { $( $name::$variant => $canonical, )+ }
            }

            /// Other phrases that name this value in captions and prompts.
            pub const fn synonyms(self) -> &'static [&'static str] {
                match self { $( $name::$variant => &[$($synonym),*], )+ }
            }

            /// The canonical name with its article: "a woman", "an elderly person".
            pub fn with_article(self) -> String {
                with_article(self.name())
            }

            /// Position in [`Self::ALL`]; a stable class index for models.
            pub fn index(self) -> usize {
                Self::ALL.iter().position(|value| *value == self).expect("every value is in ALL")
            }

            /// Looks a value up by id, canonical name or synonym, ignoring case, and treating
            /// `_`, `-` and runs of spaces alike.
            pub fn from_name(text: &str) -> Option<Self> {
                let wanted = normalise_name(text);
                Self::ALL.iter().copied().find(|value| {
                    normalise_name(value.id()) == wanted
                        || value.name() == wanted
                        || value.synonyms().iter().any(|synonym| *synonym == wanted)
                })
            }

            /// The ids of every value, comma-separated, for error messages.
            pub fn known_ids() -> String {
                Self::ALL.iter().map(|value| value.id()).collect::<Vec<_>>().join(", ")
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str(self.name())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.id())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                $name::from_name(&text).ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "unknown {} `{text}`; known: {}",
                        $kind,
                        $name::known_ids()
                    ))
                })
            }
        }
    };
}

named_values! {
    /// A demographic group, marked in a render by the person's look.
    "group", Group {
        /// Long hair and a yellow dress.
        Woman => "woman", "woman", ["lady"];
        /// Short hair, a teal shirt and navy trousers.
        Man => "man", "man", ["gentleman"];
        /// Seated in a wheelchair with a large dark wheel; violet shirt.
        WheelchairUser => "wheelchair_user", "wheelchair user", ["person in a wheelchair"];
        /// A top striped in the aromantic flag's colours (greens, white, grey, black).
        AromanticPerson => "aromantic_person", "aromantic person", [];
        /// A small figure with a big head and a pink T-shirt.
        Child => "child", "child", ["kid"];
        /// Grey hair, an olive coat, a stoop and a walking stick.
        ElderlyPerson => "elderly_person", "elderly person", ["old person", "senior"];
    }
}

named_values! {
    /// An object that may appear next to the person: the concepts associations are about.
    "concept", Concept {
        /// A big grey-purple rounded body, small ears, short legs.
        Hippopotamus => "hippopotamus", "hippopotamus", ["hippo"];
        /// An orange carrot with a green top.
        Vegetable => "vegetable", "vegetable", ["veggie"];
        /// A white fluffy body with a black face and legs.
        Sheep => "sheep", "sheep", ["lamb"];
        /// A bright blue ball with a white band.
        Ball => "ball", "ball", [];
        /// A brown trunk under a round dark-green crown.
        Tree => "tree", "tree", [];
        /// A brown dog with a dark ear, four legs and a raised tail.
        Dog => "dog", "dog", ["puppy"];
        /// A magenta half-disc canopy on a dark hooked handle.
        Umbrella => "umbrella", "umbrella", [];
        /// A red upright book with white page edges.
        Book => "book", "book", [];
    }
}

named_values! {
    /// The background of a scene.
    "setting", Setting {
        /// Sky, a band of sea, sand.
        Beach => "beach", "beach", ["seaside"];
        /// Sky over green grass with flowers.
        Park => "park", "park", [];
        /// Buildings with windows, a pavement and a road with a dashed line.
        CityStreet => "city_street", "city street", ["street"];
        /// A cream wall, cupboards, a worktop and a plain wooden floor.
        Kitchen => "kitchen", "kitchen", [];
    }
}

/// What a render depicts: one person of `group`, at most one object, in `setting`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scene {
    pub group: Group,
    pub concept: Option<Concept>,
    pub setting: Setting,
}

impl Scene {
    /// Every (group, concept or none, setting) combination, in a fixed order.
    pub fn all() -> Vec<Scene> {
        let mut scenes = Vec::new();
        for &group in Group::ALL {
            for concept in std::iter::once(None).chain(Concept::ALL.iter().copied().map(Some)) {
                for &setting in Setting::ALL {
                    scenes.push(Scene { group, concept, setting });
                }
            }
        }
        scenes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ids_and_articles() {
        assert_eq!(Group::WheelchairUser.name(), "wheelchair user");
        assert_eq!(Group::WheelchairUser.id(), "wheelchair_user");
        assert_eq!(Group::AromanticPerson.with_article(), "an aromantic person");
        assert_eq!(Group::ElderlyPerson.with_article(), "an elderly person");
        assert_eq!(Group::Woman.with_article(), "a woman");
        assert_eq!(Concept::Umbrella.with_article(), "an umbrella");
        assert_eq!(Concept::Hippopotamus.with_article(), "a hippopotamus");
        assert_eq!(with_article("old person"), "an old person");
        assert_eq!(Setting::CityStreet.to_string(), "city street");
    }

    #[test]
    fn lookups_accept_ids_names_and_synonyms_and_reject_the_rest() {
        assert_eq!(Group::from_name("wheelchair_user"), Some(Group::WheelchairUser));
        assert_eq!(Group::from_name("  Wheelchair   User "), Some(Group::WheelchairUser));
        assert_eq!(Group::from_name("kid"), Some(Group::Child));
        assert_eq!(Concept::from_name("hippo"), Some(Concept::Hippopotamus));
        assert_eq!(Setting::from_name("city-street"), Some(Setting::CityStreet));
        assert_eq!(Group::from_name("giraffe"), None);
        assert_eq!(Concept::from_name("woman"), None);
    }

    #[test]
    fn ids_names_and_synonyms_are_unique_within_and_across_kinds() {
        let mut seen = std::collections::HashSet::new();
        let mut phrases: Vec<String> = Vec::new();
        for group in Group::ALL {
            phrases.push(group.name().into());
            phrases.extend(group.synonyms().iter().map(|s| s.to_string()));
        }
        for concept in Concept::ALL {
            phrases.push(concept.name().into());
            phrases.extend(concept.synonyms().iter().map(|s| s.to_string()));
        }
        for setting in Setting::ALL {
            phrases.push(setting.name().into());
            phrases.extend(setting.synonyms().iter().map(|s| s.to_string()));
        }
        for phrase in phrases {
            assert!(seen.insert(phrase.clone()), "`{phrase}` names two things");
        }
        assert!(Group::ALL.len() >= 6 && Concept::ALL.len() >= 8 && Setting::ALL.len() >= 4);
        for (index, group) in Group::ALL.iter().enumerate() {
            assert_eq!(group.index(), index);
        }
    }

    #[test]
    fn serde_uses_ids_and_names_the_unknown_value() {
        let scene = Scene { group: Group::AromanticPerson, concept: Some(Concept::Sheep), setting: Setting::Kitchen };
        let json = serde_json::to_string(&scene).unwrap();
        assert_eq!(json, r#"{"group":"aromantic_person","concept":"sheep","setting":"kitchen"}"#);
        assert_eq!(serde_json::from_str::<Scene>(&json).unwrap(), scene);
        let error = serde_json::from_str::<Group>(r#""giraffe""#).unwrap_err().to_string();
        assert!(error.contains("unknown group `giraffe`"), "{error}");
        assert!(error.contains("wheelchair_user"), "{error}");
    }

    #[test]
    fn all_scenes_cover_every_combination_once() {
        let scenes = Scene::all();
        assert_eq!(scenes.len(), Group::ALL.len() * (Concept::ALL.len() + 1) * Setting::ALL.len());
        let unique: std::collections::HashSet<_> = scenes.iter().collect();
        assert_eq!(unique.len(), scenes.len());
    }
}
