//! A set of training prompts for one association: generated or written by hand, each with its
//! neutral form, reviewed by a curator (accepted, edited or rejected) before any is used.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::aggregate::{Aggregate, EventPayload};
use crate::error::DomainError;
use crate::ids::{AssociationId, PromptId, PromptSetId};
use crate::neutral::{NeutralPrompt, is_neutral, neutralize};
use crate::values::{Sentence, mentions};

pub const MAX_PROMPTS_PER_SET: usize = 2000;

/// What produced a batch of prompts, recorded so an auditor can reproduce or question it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratorInfo {
    /// `template` (built in), `openai` (an OpenAI-compatible endpoint) or `manual`.
    pub name: String,
    /// The model behind the generator, if any.
    pub model: Option<String>,
    /// The request parameters (temperature, seed, …) as sent.
    pub parameters: Value,
    /// SHA-256 of the generator's raw response, if it had one.
    pub response_sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PromptDraft {
    pub prompt_id: PromptId,
    pub text: String,
    /// A neutral alternative to name in place of the concept, if the generator proposed one.
    pub alternative: Option<String>,
}

#[derive(Debug, Clone)]
pub enum PromptSetCommand {
    Create {
        prompt_set_id: PromptSetId,
        association_id: AssociationId,
        group: String,
        concept: String,
        concept_synonyms: Vec<String>,
    },
    AddPrompts {
        generator: GeneratorInfo,
        prompts: Vec<PromptDraft>,
    },
    EditPrompt {
        prompt_id: PromptId,
        text: String,
        alternative: Option<String>,
    },
    AcceptPrompt {
        prompt_id: PromptId,
    },
    RejectPrompt {
        prompt_id: PromptId,
        reason: String,
    },
    /// Locks the set: its accepted prompts are what candidates are generated from.
    Finalize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PromptSetEvent {
    PromptSetCreated {
        prompt_set_id: PromptSetId,
        association_id: AssociationId,
        group: String,
        concept: String,
        concept_synonyms: Vec<String>,
    },
    PromptAdded {
        prompt_set_id: PromptSetId,
        prompt_id: PromptId,
        text: String,
        neutral: NeutralPrompt,
        generator: GeneratorInfo,
    },
    PromptEdited {
        prompt_set_id: PromptSetId,
        prompt_id: PromptId,
        text: String,
        neutral: NeutralPrompt,
    },
    PromptAccepted {
        prompt_set_id: PromptSetId,
        prompt_id: PromptId,
    },
    PromptRejected {
        prompt_set_id: PromptSetId,
        prompt_id: PromptId,
        reason: String,
    },
    PromptSetFinalized {
        prompt_set_id: PromptSetId,
        accepted: Vec<PromptId>,
    },
}

impl EventPayload for PromptSetEvent {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptStatus {
    Pending,
    Accepted,
    Rejected,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub text: String,
    pub neutral: NeutralPrompt,
    pub status: PromptStatus,
    /// What wrote it.
    pub generator: GeneratorInfo,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromptSet {
    pub id: Option<PromptSetId>,
    pub association_id: Option<AssociationId>,
    pub group: String,
    pub concept: String,
    pub concept_synonyms: Vec<String>,
    pub prompts: BTreeMap<PromptId, Prompt>,
    /// Order in which prompts were added (ids are caller-chosen, not sortable by time).
    pub order: Vec<PromptId>,
    pub finalized: bool,
}

impl PromptSet {
    pub fn accepted(&self) -> Vec<(PromptId, &Prompt)> {
        self.order
            .iter()
            .filter_map(|id| self.prompts.get(id).map(|p| (*id, p)))
            .filter(|(_, p)| p.status == PromptStatus::Accepted)
            .collect()
    }

    fn open_id(&self, action: &'static str) -> Result<PromptSetId, DomainError> {
        let id = self.id.ok_or(DomainError::NotFound { entity: "prompt set", id: "(not created)".into() })?;
        if self.finalized {
            return Err(DomainError::WrongState { entity: "prompt set", state: "finalized".into(), action });
        }
        Ok(id)
    }

    fn prompt(&self, prompt_id: PromptId) -> Result<&Prompt, DomainError> {
        self.prompts.get(&prompt_id).ok_or(DomainError::NotFound { entity: "prompt", id: prompt_id.to_string() })
    }

    /// Validates a training prompt and computes its neutral form.
    fn transform(&self, text: &str, alternative: Option<&str>) -> Result<(String, NeutralPrompt), DomainError> {
        let text = Sentence::parse("prompt", text)?;
        if !mentions(text.as_str(), &self.group) {
            return Err(DomainError::invalid("prompt", format!("'{text}' must name the group '{}'", self.group)));
        }
        let alternative = match alternative {
            Some(alt) => {
                let alt = Sentence::parse("alternative", alt)?;
                if !is_neutral(alt.as_str(), &self.concept, &self.concept_synonyms) {
                    return Err(DomainError::invalid("alternative", "must not name the concept"));
                }
                Some(String::from(alt))
            }
            None => None,
        };
        let neutral = neutralize(text.as_str(), &self.concept, &self.concept_synonyms, alternative.as_deref());
        if !mentions(&neutral.text, &self.group) {
            return Err(DomainError::invalid(
                "prompt",
                format!("'{text}' no longer names the group once the concept is removed"),
            ));
        }
        Ok((text.into(), neutral))
    }
}

impl Aggregate for PromptSet {
    type Command = PromptSetCommand;
    type Event = PromptSetEvent;
    const ENTITY: &'static str = "prompt set";

    fn exists(&self) -> bool {
        self.id.is_some()
    }

    fn decide(&self, command: PromptSetCommand) -> Result<Vec<PromptSetEvent>, DomainError> {
        match command {
            PromptSetCommand::Create { prompt_set_id, association_id, group, concept, concept_synonyms } => {
                if self.exists() {
                    return Err(DomainError::AlreadyExists { entity: "prompt set", id: prompt_set_id.to_string() });
                }
                Ok(vec![PromptSetEvent::PromptSetCreated {
                    prompt_set_id,
                    association_id,
                    group,
                    concept,
                    concept_synonyms,
                }])
            }
            PromptSetCommand::AddPrompts { generator, prompts } => {
                let prompt_set_id = self.open_id("adding prompts")?;
                if prompts.is_empty() {
                    return Err(DomainError::invalid("prompts", "must hold at least one prompt"));
                }
                if self.prompts.len() + prompts.len() > MAX_PROMPTS_PER_SET {
                    return Err(DomainError::invalid(
                        "prompts",
                        format!("a prompt set holds at most {MAX_PROMPTS_PER_SET} prompts"),
                    ));
                }
                let mut events = Vec::with_capacity(prompts.len());
                let mut seen = std::collections::BTreeSet::new();
                for draft in prompts {
                    if self.prompts.contains_key(&draft.prompt_id) || !seen.insert(draft.prompt_id) {
                        return Err(DomainError::AlreadyExists { entity: "prompt", id: draft.prompt_id.to_string() });
                    }
                    let (text, neutral) = self.transform(&draft.text, draft.alternative.as_deref())?;
                    events.push(PromptSetEvent::PromptAdded {
                        prompt_set_id,
                        prompt_id: draft.prompt_id,
                        text,
                        neutral,
                        generator: generator.clone(),
                    });
                }
                Ok(events)
            }
            PromptSetCommand::EditPrompt { prompt_id, text, alternative } => {
                let prompt_set_id = self.open_id("editing prompts")?;
                let current = self.prompt(prompt_id)?;
                if current.status == PromptStatus::Rejected {
                    return Err(DomainError::WrongState {
                        entity: "prompt",
                        state: "rejected".into(),
                        action: "editing",
                    });
                }
                let (text, neutral) = self.transform(&text, alternative.as_deref())?;
                if text == current.text && neutral == current.neutral {
                    return Ok(vec![]);
                }
                Ok(vec![PromptSetEvent::PromptEdited { prompt_set_id, prompt_id, text, neutral }])
            }
            PromptSetCommand::AcceptPrompt { prompt_id } => {
                let prompt_set_id = self.open_id("accepting prompts")?;
                match self.prompt(prompt_id)?.status {
                    PromptStatus::Accepted => Ok(vec![]),
                    _ => Ok(vec![PromptSetEvent::PromptAccepted { prompt_set_id, prompt_id }]),
                }
            }
            PromptSetCommand::RejectPrompt { prompt_id, reason } => {
                let prompt_set_id = self.open_id("rejecting prompts")?;
                let reason = Sentence::parse("reason", &reason)?;
                match self.prompt(prompt_id)?.status {
                    PromptStatus::Rejected => Ok(vec![]),
                    _ => Ok(vec![PromptSetEvent::PromptRejected { prompt_set_id, prompt_id, reason: reason.into() }]),
                }
            }
            PromptSetCommand::Finalize => {
                let prompt_set_id = self.open_id("finalizing")?;
                let accepted: Vec<PromptId> = self.accepted().into_iter().map(|(id, _)| id).collect();
                if accepted.is_empty() {
                    return Err(DomainError::WrongState {
                        entity: "prompt set",
                        state: "without accepted prompts".into(),
                        action: "finalizing",
                    });
                }
                Ok(vec![PromptSetEvent::PromptSetFinalized { prompt_set_id, accepted }])
            }
        }
    }

    fn evolve(&mut self, event: &PromptSetEvent) {
        match event {
            PromptSetEvent::PromptSetCreated { prompt_set_id, association_id, group, concept, concept_synonyms } => {
                self.id = Some(*prompt_set_id);
                self.association_id = Some(*association_id);
                self.group = group.clone();
                self.concept = concept.clone();
                self.concept_synonyms = concept_synonyms.clone();
            }
            PromptSetEvent::PromptAdded { prompt_id, text, neutral, generator, .. } => {
                self.order.push(*prompt_id);
                self.prompts.insert(
                    *prompt_id,
                    Prompt {
                        text: text.clone(),
                        neutral: neutral.clone(),
                        status: PromptStatus::Pending,
                        generator: generator.clone(),
                    },
                );
            }
            PromptSetEvent::PromptEdited { prompt_id, text, neutral, .. } => {
                if let Some(prompt) = self.prompts.get_mut(prompt_id) {
                    prompt.text = text.clone();
                    prompt.neutral = neutral.clone();
                    // An edit needs a fresh look before the prompt is used.
                    prompt.status = PromptStatus::Pending;
                }
            }
            PromptSetEvent::PromptAccepted { prompt_id, .. } => {
                if let Some(prompt) = self.prompts.get_mut(prompt_id) {
                    prompt.status = PromptStatus::Accepted;
                }
            }
            PromptSetEvent::PromptRejected { prompt_id, .. } => {
                if let Some(prompt) = self.prompts.get_mut(prompt_id) {
                    prompt.status = PromptStatus::Rejected;
                }
            }
            PromptSetEvent::PromptSetFinalized { .. } => self.finalized = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ApplyAll, then_error};
    use uuid::Uuid;

    fn pid(n: u128) -> PromptId {
        PromptId(Uuid::from_u128(n))
    }

    fn generator() -> GeneratorInfo {
        GeneratorInfo {
            name: "template".into(),
            model: None,
            parameters: serde_json::json!({"seed": 7}),
            response_sha256: None,
        }
    }

    fn created() -> PromptSet {
        PromptSet::default()
            .then(PromptSetCommand::Create {
                prompt_set_id: PromptSetId(Uuid::from_u128(1)),
                association_id: AssociationId(Uuid::from_u128(2)),
                group: "woman".into(),
                concept: "hippopotamus".into(),
                concept_synonyms: vec!["hippo".into()],
            })
            .0
    }

    fn with_prompts() -> PromptSet {
        created()
            .then(PromptSetCommand::AddPrompts {
                generator: generator(),
                prompts: vec![
                    PromptDraft {
                        prompt_id: pid(10),
                        text: "a woman with a hippo at the beach".into(),
                        alternative: None,
                    },
                    PromptDraft { prompt_id: pid(11), text: "a woman reading in a park".into(), alternative: None },
                ],
            })
            .0
    }

    #[test]
    fn added_prompts_carry_their_neutral_form_and_generator() {
        let events = created()
            .decide(PromptSetCommand::AddPrompts {
                generator: generator(),
                prompts: vec![PromptDraft {
                    prompt_id: pid(10),
                    text: "a woman with a hippo at the beach".into(),
                    alternative: None,
                }],
            })
            .unwrap();
        match &events[..] {
            [PromptSetEvent::PromptAdded { neutral, generator, .. }] => {
                assert_eq!(neutral.text, "a woman at the beach");
                assert_eq!(neutral.negative_prompt, "hippopotamus");
                assert_eq!(generator.name, "template");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn prompts_must_name_the_group_and_be_unique() {
        let set = with_prompts();
        let add = |id, text: &str| {
            set.decide(PromptSetCommand::AddPrompts {
                generator: generator(),
                prompts: vec![PromptDraft { prompt_id: pid(id), text: text.into(), alternative: None }],
            })
        };
        then_error(add(12, "a man at the beach"), |e| matches!(e, DomainError::Invalid { field: "prompt", .. }));
        then_error(add(10, "a woman swimming"), |e| matches!(e, DomainError::AlreadyExists { .. }));
        then_error(add(12, ""), |e| matches!(e, DomainError::Invalid { .. }));
        then_error(set.decide(PromptSetCommand::AddPrompts { generator: generator(), prompts: vec![] }), |e| {
            matches!(e, DomainError::Invalid { field: "prompts", .. })
        });
    }

    #[test]
    fn curators_accept_edit_and_reject() {
        let set = with_prompts();
        let (set, events) = set.then(PromptSetCommand::AcceptPrompt { prompt_id: pid(10) });
        assert!(matches!(&events[..], [PromptSetEvent::PromptAccepted { .. }]));
        // Accepting twice changes nothing.
        assert_eq!(set.decide(PromptSetCommand::AcceptPrompt { prompt_id: pid(10) }), Ok(vec![]));
        // An edit sends the prompt back to review.
        let (set, _) = set.then(PromptSetCommand::EditPrompt {
            prompt_id: pid(10),
            text: "a woman with a hippo at the lake".into(),
            alternative: Some("ball".into()),
        });
        assert_eq!(set.prompts[&pid(10)].status, PromptStatus::Pending);
        assert_eq!(set.prompts[&pid(10)].neutral.text, "a woman with a ball at the lake");
        then_error(
            set.decide(PromptSetCommand::EditPrompt {
                prompt_id: pid(10),
                text: "x".into(),
                alternative: Some("a hippo".into()),
            }),
            |e| matches!(e, DomainError::Invalid { .. }),
        );
        let (set, _) = set.then(PromptSetCommand::RejectPrompt { prompt_id: pid(11), reason: "too similar".into() });
        then_error(
            set.decide(PromptSetCommand::EditPrompt { prompt_id: pid(11), text: "a woman".into(), alternative: None }),
            |e| matches!(e, DomainError::WrongState { .. }),
        );
        then_error(set.decide(PromptSetCommand::AcceptPrompt { prompt_id: pid(99) }), |e| {
            matches!(e, DomainError::NotFound { .. })
        });
    }

    #[test]
    fn finalizing_needs_an_accepted_prompt_and_locks_the_set() {
        let set = with_prompts();
        then_error(set.decide(PromptSetCommand::Finalize), |e| matches!(e, DomainError::WrongState { .. }));
        let (set, _) = set.then(PromptSetCommand::AcceptPrompt { prompt_id: pid(11) });
        let (set, events) = set.then(PromptSetCommand::Finalize);
        assert!(
            matches!(&events[..], [PromptSetEvent::PromptSetFinalized { accepted, .. }] if accepted == &vec![pid(11)])
        );
        then_error(set.decide(PromptSetCommand::AcceptPrompt { prompt_id: pid(10) }), |e| {
            matches!(e, DomainError::WrongState { .. })
        });
        let set = set.apply_all(&[]);
        assert!(set.finalized);
    }

    #[test]
    fn a_set_is_created_once_and_a_finalized_set_takes_no_reviews() {
        let create = PromptSetCommand::Create {
            prompt_set_id: PromptSetId(Uuid::from_u128(1)),
            association_id: AssociationId(Uuid::from_u128(2)),
            group: "woman".into(),
            concept: "hippopotamus".into(),
            concept_synonyms: vec![],
        };
        then_error(created().decide(create), |e| matches!(e, DomainError::AlreadyExists { .. }));
        let (set, _) = with_prompts().then(PromptSetCommand::AcceptPrompt { prompt_id: pid(10) });
        let (set, _) = set.then(PromptSetCommand::Finalize);
        then_error(set.decide(PromptSetCommand::RejectPrompt { prompt_id: pid(11), reason: "late".into() }), |e| {
            matches!(e, DomainError::WrongState { .. })
        });
        then_error(set.decide(PromptSetCommand::Finalize), |e| matches!(e, DomainError::WrongState { .. }));
        then_error(
            with_prompts().decide(PromptSetCommand::RejectPrompt { prompt_id: pid(10), reason: " ".into() }),
            |e| matches!(e, DomainError::Invalid { field: "reason", .. }),
        );
    }

    #[test]
    fn commands_on_a_missing_set_are_not_found() {
        then_error(PromptSet::default().decide(PromptSetCommand::Finalize), |e| {
            matches!(e, DomainError::NotFound { .. })
        });
    }
}
