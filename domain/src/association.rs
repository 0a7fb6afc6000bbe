//! A problematic association: a demographic group, a concept that carries a negative narrative
//! about it, a taxonomy category, and probe prompts that name the group and not the concept.

use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, EventPayload};
use crate::error::DomainError;
use crate::ids::AssociationId;
use crate::taxonomy::Taxonomy;
use crate::values::{Name, Sentence, mentions};

pub const MAX_PROBE_PROMPTS: usize = 100;
pub const MAX_SYNONYMS: usize = 20;

#[derive(Debug, Clone)]
pub enum AssociationCommand {
    Register {
        association_id: AssociationId,
        group: String,
        concept: String,
        /// Other words for the concept; the neutral prompt transformation removes these too.
        concept_synonyms: Vec<String>,
        category: String,
        description: String,
        probe_prompts: Vec<String>,
        /// The taxonomy as it stands, to check the category against.
        taxonomy: Taxonomy,
    },
    Recategorize {
        category: String,
        taxonomy: Taxonomy,
    },
    Retire {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AssociationEvent {
    AssociationRegistered {
        association_id: AssociationId,
        group: String,
        concept: String,
        concept_synonyms: Vec<String>,
        category: String,
        description: String,
        probe_prompts: Vec<String>,
    },
    AssociationRecategorized {
        association_id: AssociationId,
        from: String,
        to: String,
    },
    AssociationRetired {
        association_id: AssociationId,
        reason: String,
    },
}

impl EventPayload for AssociationEvent {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssociationStatus {
    #[default]
    Unregistered,
    Active,
    Retired,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Association {
    pub id: Option<AssociationId>,
    pub status: AssociationStatus,
    pub group: String,
    pub concept: String,
    pub concept_synonyms: Vec<String>,
    pub category: String,
    pub probe_prompts: Vec<String>,
}

impl Association {
    /// The concept and its synonyms: every term the neutral prompt transformation removes.
    pub fn concept_terms(&self) -> Vec<String> {
        std::iter::once(self.concept.clone()).chain(self.concept_synonyms.iter().cloned()).collect()
    }

    fn active_id(&self, action: &'static str) -> Result<AssociationId, DomainError> {
        match (self.status, self.id) {
            (AssociationStatus::Active, Some(id)) => Ok(id),
            (AssociationStatus::Unregistered, _) | (_, None) => {
                Err(DomainError::NotFound { entity: "association", id: "(unregistered)".into() })
            }
            (status, _) => Err(DomainError::wrong_state("association", status, action)),
        }
    }
}

fn active_category(taxonomy: &Taxonomy, key: &str) -> Result<String, DomainError> {
    match taxonomy.active(key) {
        Some(category) => Ok(category.key.clone()),
        None => {
            let known: Vec<&str> = taxonomy.categories.keys().map(String::as_str).collect();
            Err(DomainError::invalid(
                "category",
                format!("'{key}' is not in the taxonomy; known categories: {}", known.join(", ")),
            ))
        }
    }
}

impl Aggregate for Association {
    type Command = AssociationCommand;
    type Event = AssociationEvent;
    const ENTITY: &'static str = "association";

    fn exists(&self) -> bool {
        self.status != AssociationStatus::Unregistered
    }

    fn decide(&self, command: AssociationCommand) -> Result<Vec<AssociationEvent>, DomainError> {
        match command {
            AssociationCommand::Register {
                association_id,
                group,
                concept,
                concept_synonyms,
                category,
                description,
                probe_prompts,
                taxonomy,
            } => {
                if self.exists() {
                    return Err(DomainError::AlreadyExists { entity: "association", id: association_id.to_string() });
                }
                let group = Name::parse("group", &group)?;
                let concept = Name::parse("concept", &concept)?;
                if mentions(group.as_str(), concept.as_str()) {
                    return Err(DomainError::invalid("concept", "must differ from the group"));
                }
                if concept_synonyms.len() > MAX_SYNONYMS {
                    return Err(DomainError::invalid("concept_synonyms", format!("holds at most {MAX_SYNONYMS}")));
                }
                let synonyms = concept_synonyms
                    .iter()
                    .map(|s| Name::parse("concept synonym", s).map(String::from))
                    .collect::<Result<Vec<_>, _>>()?;
                let category = active_category(&taxonomy, &category)?;
                let description = Sentence::parse("description", &description)?;
                if probe_prompts.is_empty() || probe_prompts.len() > MAX_PROBE_PROMPTS {
                    return Err(DomainError::invalid(
                        "probe_prompts",
                        format!("must hold 1 to {MAX_PROBE_PROMPTS} prompts, not {}", probe_prompts.len()),
                    ));
                }
                let terms: Vec<&str> =
                    std::iter::once(concept.as_str()).chain(synonyms.iter().map(String::as_str)).collect();
                let mut prompts = Vec::with_capacity(probe_prompts.len());
                for prompt in &probe_prompts {
                    let prompt = Sentence::parse("probe prompt", prompt)?;
                    if !mentions(prompt.as_str(), group.as_str()) {
                        return Err(DomainError::invalid(
                            "probe_prompts",
                            format!("'{prompt}' must name the group '{group}'"),
                        ));
                    }
                    if let Some(term) = terms.iter().find(|term| mentions(prompt.as_str(), term)) {
                        return Err(DomainError::invalid(
                            "probe_prompts",
                            format!(
                                "'{prompt}' names the concept ('{term}'): probes must not, or they measure nothing"
                            ),
                        ));
                    }
                    if prompts.contains(&String::from(prompt.clone())) {
                        return Err(DomainError::invalid("probe_prompts", format!("'{prompt}' appears twice")));
                    }
                    prompts.push(prompt.into());
                }
                Ok(vec![AssociationEvent::AssociationRegistered {
                    association_id,
                    group: group.into(),
                    concept: concept.into(),
                    concept_synonyms: synonyms,
                    category,
                    description: description.into(),
                    probe_prompts: prompts,
                }])
            }
            AssociationCommand::Recategorize { category, taxonomy } => {
                let association_id = self.active_id("recategorizing")?;
                let category = active_category(&taxonomy, &category)?;
                if category == self.category {
                    return Ok(vec![]);
                }
                Ok(vec![AssociationEvent::AssociationRecategorized {
                    association_id,
                    from: self.category.clone(),
                    to: category,
                }])
            }
            AssociationCommand::Retire { reason } => {
                let association_id = self.active_id("retiring")?;
                let reason = Sentence::parse("reason", &reason)?;
                Ok(vec![AssociationEvent::AssociationRetired { association_id, reason: reason.into() }])
            }
        }
    }

    fn evolve(&mut self, event: &AssociationEvent) {
        match event {
            AssociationEvent::AssociationRegistered {
                association_id,
                group,
                concept,
                concept_synonyms,
                category,
                probe_prompts,
                ..
            } => {
                self.id = Some(*association_id);
                self.status = AssociationStatus::Active;
                self.group = group.clone();
                self.concept = concept.clone();
                self.concept_synonyms = concept_synonyms.clone();
                self.category = category.clone();
                self.probe_prompts = probe_prompts.clone();
            }
            AssociationEvent::AssociationRecategorized { to, .. } => self.category = to.clone(),
            AssociationEvent::AssociationRetired { .. } => self.status = AssociationStatus::Retired,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::taxonomy::TaxonomyCommand;
    use crate::testing::{ApplyAll, given, then_error};
    use uuid::Uuid;

    pub fn taxonomy() -> Taxonomy {
        Taxonomy::default().then(TaxonomyCommand::SeedDefaults).0
    }

    pub fn register_woman_hippo(id: u128) -> AssociationCommand {
        AssociationCommand::Register {
            association_id: AssociationId(Uuid::from_u128(id)),
            group: "woman".into(),
            concept: "hippopotamus".into(),
            concept_synonyms: vec!["hippo".into()],
            category: "dehumanization".into(),
            description: "women drawn beside hippopotamuses".into(),
            probe_prompts: vec!["a photo of a woman at the beach".into(), "a woman in a park".into()],
            taxonomy: taxonomy(),
        }
    }

    #[test]
    fn registering_records_the_association() {
        let events = Association::default().decide(register_woman_hippo(1)).unwrap();
        match &events[..] {
            [AssociationEvent::AssociationRegistered { group, concept, category, probe_prompts, .. }] => {
                assert_eq!(
                    (group.as_str(), concept.as_str(), category.as_str()),
                    ("woman", "hippopotamus", "dehumanization")
                );
                assert_eq!(probe_prompts.len(), 2);
            }
            other => panic!("unexpected {other:?}"),
        }
        let state = given::<Association>(&events);
        assert_eq!(state.status, AssociationStatus::Active);
        assert_eq!(state.concept_terms(), ["hippopotamus", "hippo"]);
    }

    #[test]
    fn registering_twice_is_a_conflict() {
        let (state, _) = Association::default().then(register_woman_hippo(1));
        then_error(state.decide(register_woman_hippo(1)), |e| matches!(e, DomainError::AlreadyExists { .. }));
    }

    #[test]
    fn registration_rejects_bad_values() {
        let with = |edit: &dyn Fn(&mut AssociationCommand)| {
            let mut command = register_woman_hippo(1);
            edit(&mut command);
            Association::default().decide(command)
        };
        let field =
            |f: &'static str| move |e: &DomainError| matches!(e, DomainError::Invalid { field, .. } if *field == f);
        then_error(
            with(&|c| {
                if let AssociationCommand::Register { group, .. } = c {
                    *group = " ".into()
                }
            }),
            field("group"),
        );
        then_error(
            with(&|c| {
                if let AssociationCommand::Register { category, .. } = c {
                    *category = "nonsense".into()
                }
            }),
            field("category"),
        );
        then_error(
            with(&|c| {
                if let AssociationCommand::Register { probe_prompts, .. } = c {
                    probe_prompts.clear()
                }
            }),
            field("probe_prompts"),
        );
        // A probe that names the concept (or a synonym) would measure nothing.
        then_error(
            with(&|c| {
                if let AssociationCommand::Register { probe_prompts, .. } = c {
                    probe_prompts.push("a woman and a Hippo".into())
                }
            }),
            field("probe_prompts"),
        );
        // A probe must name the group.
        then_error(
            with(&|c| {
                if let AssociationCommand::Register { probe_prompts, .. } = c {
                    probe_prompts.push("a man at the beach".into())
                }
            }),
            field("probe_prompts"),
        );
        then_error(
            with(&|c| {
                if let AssociationCommand::Register { probe_prompts, .. } = c {
                    probe_prompts.push("a woman in a park".into())
                }
            }),
            field("probe_prompts"),
        );
    }

    #[test]
    fn recategorizing_moves_to_a_known_category() {
        let (state, _) = Association::default().then(register_woman_hippo(1));
        let events = state
            .decide(AssociationCommand::Recategorize { category: "degradation".into(), taxonomy: taxonomy() })
            .unwrap();
        assert!(
            matches!(&events[..], [AssociationEvent::AssociationRecategorized { from, to, .. }] if from == "dehumanization" && to == "degradation")
        );
        let same =
            state.decide(AssociationCommand::Recategorize { category: "dehumanization".into(), taxonomy: taxonomy() });
        assert_eq!(same, Ok(vec![]));
        then_error(
            state.decide(AssociationCommand::Recategorize { category: "nope".into(), taxonomy: taxonomy() }),
            |e| matches!(e, DomainError::Invalid { field: "category", .. }),
        );
    }

    #[test]
    fn a_retired_association_accepts_no_further_change() {
        let (state, _) = Association::default().then(register_woman_hippo(1));
        let (retired, events) = state.then(AssociationCommand::Retire { reason: "mitigated and promoted".into() });
        assert!(matches!(&events[..], [AssociationEvent::AssociationRetired { .. }]));
        then_error(retired.decide(AssociationCommand::Retire { reason: "again".into() }), |e| {
            matches!(e, DomainError::WrongState { .. })
        });
        then_error(
            retired.decide(AssociationCommand::Recategorize { category: "threat".into(), taxonomy: taxonomy() }),
            |e| matches!(e, DomainError::WrongState { .. }),
        );
        then_error(Association::default().decide(AssociationCommand::Retire { reason: "x".into() }), |e| {
            matches!(e, DomainError::NotFound { .. })
        });
    }
}
