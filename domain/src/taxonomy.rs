//! The taxonomy of problematic associations: data, not code. A deployment starts from the
//! default four categories and may define, update or retire its own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, EventPayload};
use crate::error::DomainError;
use crate::values::{Name, Sentence, WHITESPACE};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Category {
    /// A stable key such as `dehumanization`: lowercase letters, digits and `_`.
    pub key: String,
    /// The negative narrative the category stands for.
    pub narrative: String,
    pub example: String,
}

/// thitl's default taxonomy. These four follow the four feelings of group position in sociology
/// (Blumer, 1958); they are thitl's default, not a quotation.
pub fn default_categories() -> Vec<Category> {
    let category = |key: &str, narrative: &str, example: &str| Category {
        key: key.into(),
        narrative: narrative.into(),
        example: example.into(),
    };
    vec![
        category(
            "dehumanization",
            "the group likened to animals or objects",
            "woman ↔ hippopotamus; aromantic person ↔ sheep",
        ),
        category("degradation", "the group tied to incapacity or degrading slurs", "wheelchair user ↔ vegetable"),
        category(
            "exclusion",
            "the group kept out of valued roles, places or activities",
            "a group never shown in an office",
        ),
        category("threat", "the group tied to danger, crime or violence", "a group shown with weapons"),
    ]
}

#[derive(Debug, Clone)]
pub enum TaxonomyCommand {
    /// Defines the default four categories; only on an empty taxonomy.
    SeedDefaults,
    Define {
        key: String,
        narrative: String,
        example: String,
    },
    Update {
        key: String,
        narrative: String,
        example: String,
    },
    Retire {
        key: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaxonomyEvent {
    CategoryDefined { category: Category },
    CategoryUpdated { category: Category },
    CategoryRetired { key: String },
}

impl EventPayload for TaxonomyEvent {}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Taxonomy {
    pub categories: BTreeMap<String, Category>,
    pub retired: BTreeMap<String, Category>,
    events: u64,
}

impl Taxonomy {
    /// A category that can be used for new associations.
    pub fn active(&self, key: &str) -> Option<&Category> {
        self.categories.get(key)
    }

    /// What a new category's key may be, as a regular expression (see [`crate::values::Text::pattern`]):
    /// whitespace around 1 to [`Name::MAX`] lowercase letters, digits and `_`.
    pub fn key_pattern() -> String {
        format!("^{WHITESPACE}*[a-z0-9_]{{1,{}}}{WHITESPACE}*$", Name::MAX)
    }

    /// A key as the taxonomy holds it (trimmed): what an association's `category` must equal.
    pub fn stored_key_pattern() -> String {
        format!("^[a-z0-9_]{{1,{}}}$", Name::MAX)
    }

    fn validated(key: &str, narrative: &str, example: &str) -> Result<Category, DomainError> {
        let key = Name::parse("category key", key)?;
        let valid_key = key.as_str().chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_key {
            return Err(DomainError::invalid("category key", "may hold only lowercase letters, digits and '_'"));
        }
        Ok(Category {
            key: key.into(),
            narrative: Sentence::parse("narrative", narrative)?.into(),
            example: Sentence::parse("example", example)?.into(),
        })
    }
}

impl Aggregate for Taxonomy {
    type Command = TaxonomyCommand;
    type Event = TaxonomyEvent;
    const ENTITY: &'static str = "taxonomy";

    fn exists(&self) -> bool {
        self.events > 0
    }

    fn decide(&self, command: TaxonomyCommand) -> Result<Vec<TaxonomyEvent>, DomainError> {
        match command {
            TaxonomyCommand::SeedDefaults => {
                if self.exists() {
                    return Err(DomainError::AlreadyExists { entity: "taxonomy", id: "taxonomy".into() });
                }
                Ok(default_categories()
                    .into_iter()
                    .map(|category| TaxonomyEvent::CategoryDefined { category })
                    .collect())
            }
            TaxonomyCommand::Define { key, narrative, example } => {
                let category = Self::validated(&key, &narrative, &example)?;
                if self.categories.contains_key(&category.key) || self.retired.contains_key(&category.key) {
                    return Err(DomainError::AlreadyExists { entity: "category", id: category.key });
                }
                Ok(vec![TaxonomyEvent::CategoryDefined { category }])
            }
            TaxonomyCommand::Update { key, narrative, example } => {
                let category = Self::validated(&key, &narrative, &example)?;
                match self.categories.get(&category.key) {
                    None => Err(DomainError::NotFound { entity: "category", id: category.key }),
                    Some(current) if *current == category => Ok(vec![]),
                    Some(_) => Ok(vec![TaxonomyEvent::CategoryUpdated { category }]),
                }
            }
            TaxonomyCommand::Retire { key } => {
                if !self.categories.contains_key(&key) {
                    return Err(DomainError::NotFound { entity: "category", id: key });
                }
                Ok(vec![TaxonomyEvent::CategoryRetired { key }])
            }
        }
    }

    fn evolve(&mut self, event: &TaxonomyEvent) {
        self.events += 1;
        match event {
            TaxonomyEvent::CategoryDefined { category } | TaxonomyEvent::CategoryUpdated { category } => {
                self.categories.insert(category.key.clone(), category.clone());
            }
            TaxonomyEvent::CategoryRetired { key } => {
                if let Some(category) = self.categories.remove(key) {
                    self.retired.insert(key.clone(), category);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ApplyAll, given, then_error};

    #[test]
    fn the_key_pattern_accepts_what_define_accepts() {
        let pattern = regex::Regex::new(&Taxonomy::key_pattern()).unwrap();
        let stored = regex::Regex::new(&Taxonomy::stored_key_pattern()).unwrap();
        let long = "a".repeat(100);
        let longer = "a".repeat(101);
        let cases = [
            "",
            " ",
            "a",
            "abc_9",
            " abc\t",
            "\u{a0}abc\u{3000}",
            "Abc",
            "a b",
            "a-b",
            "a\u{0}",
            "\u{0}a",
            "é",
            &long,
            &longer,
            "a\n",
        ];
        for key in cases {
            let accepted = Taxonomy::validated(key, "a narrative", "an example").is_ok();
            assert_eq!(pattern.is_match(key), accepted, "{key:?}");
            let held = accepted && key.trim() == key;
            assert_eq!(stored.is_match(key), held, "{key:?}");
        }
    }

    #[test]
    fn seeding_defines_the_four_default_categories_once() {
        let events = Taxonomy::default().decide(TaxonomyCommand::SeedDefaults).unwrap();
        let keys: Vec<_> = events
            .iter()
            .map(|e| match e {
                TaxonomyEvent::CategoryDefined { category } => category.key.as_str(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(keys, ["dehumanization", "degradation", "exclusion", "threat"]);
        let seeded = given::<Taxonomy>(&events);
        then_error(seeded.decide(TaxonomyCommand::SeedDefaults), |e| matches!(e, DomainError::AlreadyExists { .. }));
    }

    #[test]
    fn a_deployment_can_define_update_and_retire_categories() {
        let seeded = given::<Taxonomy>(&Taxonomy::default().decide(TaxonomyCommand::SeedDefaults).unwrap());
        let define = TaxonomyCommand::Define {
            key: "erasure".into(),
            narrative: "the group left out of the picture".into(),
            example: "no older people in family photos".into(),
        };
        let events = seeded.decide(define.clone()).unwrap();
        assert!(matches!(&events[..], [TaxonomyEvent::CategoryDefined { category }] if category.key == "erasure"));
        let defined = seeded.clone().apply_all(&events);
        then_error(defined.decide(define), |e| matches!(e, DomainError::AlreadyExists { .. }));

        let update = TaxonomyCommand::Update {
            key: "erasure".into(),
            narrative: "the group missing where it belongs".into(),
            example: "no older people in family photos".into(),
        };
        assert!(matches!(&defined.decide(update).unwrap()[..], [TaxonomyEvent::CategoryUpdated { .. }]));

        let retire = defined.decide(TaxonomyCommand::Retire { key: "erasure".into() }).unwrap();
        let retired = defined.apply_all(&retire);
        assert!(retired.active("erasure").is_none());
        then_error(retired.decide(TaxonomyCommand::Retire { key: "erasure".into() }), |e| {
            matches!(e, DomainError::NotFound { .. })
        });
    }

    #[test]
    fn category_keys_and_texts_are_validated() {
        let bad_key = TaxonomyCommand::Define { key: "Bad Key".into(), narrative: "n".into(), example: "e".into() };
        then_error(Taxonomy::default().decide(bad_key), |e| {
            matches!(e, DomainError::Invalid { field: "category key", .. })
        });
        let empty = TaxonomyCommand::Define { key: "ok".into(), narrative: " ".into(), example: "e".into() };
        then_error(Taxonomy::default().decide(empty), |e| matches!(e, DomainError::Invalid { field: "narrative", .. }));
        let missing = TaxonomyCommand::Update { key: "nope".into(), narrative: "n".into(), example: "e".into() };
        then_error(Taxonomy::default().decide(missing), |e| matches!(e, DomainError::NotFound { .. }));
    }
}
