//! The read models.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use domain::campaign::AssociationEvaluation;
use domain::round::{RoundKind, Verdict};
use domain::{
    AssociationEvent, AssociationId, CampaignEvent, CampaignId, DomainEvent, ItemId, Recorded, RoundEvent, RoundId,
};
use serde::{Deserialize, Serialize};

use crate::Projection;

/// Adds one to `key`'s count without allocating when the key is already there.
fn bump(counts: &mut BTreeMap<String, u64>, key: &str) {
    match counts.get_mut(key) {
        Some(count) => *count += 1,
        None => {
            counts.insert(key.to_string(), 1);
        }
    }
}

/// Counts for the audit page: how much happened, of what kind, by whom.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditSummary {
    pub events: u64,
    pub streams: u64,
    pub by_type: BTreeMap<String, u64>,
    /// principal → role → events.
    pub by_actor: BTreeMap<String, BTreeMap<domain::Role, u64>>,
    pub first_recorded_at: Option<DateTime<Utc>>,
    pub last_recorded_at: Option<DateTime<Utc>>,
}

impl Projection for AuditSummary {
    const NAME: &'static str = "audit_summary";

    fn apply(&mut self, event: &Recorded) {
        self.events += 1;
        if event.version == 1 {
            self.streams += 1;
        }
        bump(&mut self.by_type, &event.event_type);
        let actor = &event.metadata.actor;
        match self.by_actor.get_mut(&actor.principal) {
            Some(roles) => *roles.entry(actor.role).or_default() += 1,
            None => {
                self.by_actor.insert(actor.principal.clone(), BTreeMap::from([(actor.role, 1)]));
            }
        }
        self.first_recorded_at.get_or_insert(event.metadata.recorded_at);
        self.last_recorded_at = Some(event.metadata.recorded_at);
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntitySummary {
    pub stream: String,
    pub category: String,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_event_type: String,
    /// Global positions of the entity's events, in order: its history, to read from the store.
    pub positions: Vec<u64>,
}

/// Every entity (stream) and where its history lies in the global log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EntityHistory {
    pub entities: BTreeMap<String, EntitySummary>,
}

impl Projection for EntityHistory {
    const NAME: &'static str = "entity_history";

    fn apply(&mut self, event: &Recorded) {
        if let Some(summary) = self.entities.get_mut(&event.stream) {
            summary.version = event.version;
            summary.updated_at = event.metadata.recorded_at;
            if summary.last_event_type != event.event_type {
                summary.last_event_type.clone_from(&event.event_type);
            }
            summary.positions.push(event.position);
            return;
        }
        let event_type = event.event_type.clone();
        let summary = self.entities.entry(event.stream.clone()).or_insert_with(|| EntitySummary {
            stream: event.stream.clone(),
            category: domain::stream_category(&event.stream).to_string(),
            version: 0,
            created_at: event.metadata.recorded_at,
            updated_at: event.metadata.recorded_at,
            last_event_type: String::new(),
            positions: Vec::new(),
        });
        summary.version = event.version;
        summary.updated_at = event.metadata.recorded_at;
        summary.last_event_type = event_type;
        summary.positions.push(event.position);
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssociationView {
    pub id: AssociationId,
    pub group: String,
    pub concept: String,
    pub concept_synonyms: Vec<String>,
    pub category: String,
    pub description: String,
    pub probe_prompts: Vec<String>,
    /// `active` or `retired`.
    pub status: String,
    pub registered_at: DateTime<Utc>,
    pub registered_by: String,
    pub campaigns: Vec<CampaignId>,
    /// The latest recorded evaluation per arm.
    pub evaluations: Vec<AssociationEvaluation>,
}

/// The associations, with their category, status and latest evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AssociationList {
    pub associations: BTreeMap<AssociationId, AssociationView>,
}

impl Projection for AssociationList {
    const NAME: &'static str = "association_list";

    fn apply(&mut self, event: &Recorded) {
        match &event.event {
            DomainEvent::Association(AssociationEvent::AssociationRegistered {
                association_id,
                group,
                concept,
                concept_synonyms,
                category,
                description,
                probe_prompts,
            }) => {
                self.associations.insert(
                    *association_id,
                    AssociationView {
                        id: *association_id,
                        group: group.clone(),
                        concept: concept.clone(),
                        concept_synonyms: concept_synonyms.clone(),
                        category: category.clone(),
                        description: description.clone(),
                        probe_prompts: probe_prompts.clone(),
                        status: "active".into(),
                        registered_at: event.metadata.recorded_at,
                        registered_by: event.metadata.actor.principal.clone(),
                        campaigns: Vec::new(),
                        evaluations: Vec::new(),
                    },
                );
            }
            DomainEvent::Association(AssociationEvent::AssociationRecategorized { association_id, to, .. }) => {
                if let Some(view) = self.associations.get_mut(association_id) {
                    view.category = to.clone();
                }
            }
            DomainEvent::Association(AssociationEvent::AssociationRetired { association_id, .. }) => {
                if let Some(view) = self.associations.get_mut(association_id) {
                    view.status = "retired".into();
                }
            }
            DomainEvent::Campaign(CampaignEvent::CampaignStarted { campaign_id, associations, .. }) => {
                for id in associations {
                    if let Some(view) = self.associations.get_mut(id) {
                        view.campaigns.push(*campaign_id);
                    }
                }
            }
            DomainEvent::Campaign(CampaignEvent::EvaluationRecorded { evaluations, .. }) => {
                for evaluation in evaluations {
                    if let Some(view) = self.associations.get_mut(&evaluation.association_id) {
                        view.evaluations.retain(|e| e.arm != evaluation.arm);
                        view.evaluations.push(evaluation.clone());
                    }
                }
            }
            _ => {}
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundView {
    pub id: RoundId,
    pub kind: RoundKind,
    pub campaign_id: Option<CampaignId>,
    pub items: u64,
    pub raters_per_item: u32,
    /// Annotations submitted on items that are not gold, by annotators not excluded (withdrawn
    /// ones no longer count).
    pub submitted: u64,
    /// Annotations the round needs in all: items that are not gold × raters per item, plus the
    /// raters adaptive overlap added to split items.
    pub needed: u64,
    /// Gold items (scored per annotator, not counted in `submitted` or `needed`).
    #[serde(default)]
    pub gold_items: u64,
    /// Annotators excluded by the round's rule (and not reinstated), with the evidence.
    #[serde(default)]
    pub excluded: BTreeMap<String, domain::round::GoldEvidence>,
    /// Raters added to split items.
    #[serde(default)]
    pub raters_added: u64,
    /// Split items a curator decided.
    #[serde(default)]
    pub adjudicated: u64,
    /// Split items closed without a verdict by a curator's decision.
    #[serde(default)]
    pub left_out: u64,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    gold: BTreeSet<ItemId>,
    /// item → the answers it needs, where raised above `raters_per_item`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    raised: BTreeMap<ItemId, u32>,
    /// annotator → their answers on items that are not gold.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    regular: BTreeMap<String, u64>,
    /// `open` or `closed`.
    pub status: String,
    pub annotators: BTreeMap<String, u64>,
    pub opened_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    /// Round 1: how many candidates were accepted.
    pub accepted: Option<u64>,
}

/// Each annotation round's progress and outcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundProgress {
    pub rounds: BTreeMap<RoundId, RoundView>,
}

impl Projection for RoundProgress {
    const NAME: &'static str = "round_progress";

    fn apply(&mut self, event: &Recorded) {
        let DomainEvent::Round(round_event) = &event.event else { return };
        match round_event {
            RoundEvent::RoundOpened { round_id, kind, items, raters_per_item, campaign_id, controls, .. } => {
                let gold: BTreeSet<ItemId> = controls.gold.keys().copied().collect();
                let regular = items.iter().filter(|item| !gold.contains(&item.item_id)).count() as u64;
                self.rounds.insert(
                    *round_id,
                    RoundView {
                        id: *round_id,
                        kind: *kind,
                        campaign_id: *campaign_id,
                        items: items.len() as u64,
                        raters_per_item: *raters_per_item,
                        submitted: 0,
                        needed: regular * u64::from(*raters_per_item),
                        gold_items: gold.len() as u64,
                        excluded: BTreeMap::new(),
                        raters_added: 0,
                        adjudicated: 0,
                        left_out: 0,
                        gold,
                        raised: BTreeMap::new(),
                        regular: BTreeMap::new(),
                        status: "open".into(),
                        annotators: BTreeMap::new(),
                        opened_at: event.metadata.recorded_at,
                        closed_at: None,
                        accepted: None,
                    },
                );
            }
            RoundEvent::TaskAssigned { .. } => {}
            RoundEvent::AnnotationSubmitted { round_id, annotator, item_id, .. } => {
                if let Some(view) = self.rounds.get_mut(round_id) {
                    bump(&mut view.annotators, annotator);
                    if !view.gold.contains(item_id) {
                        view.submitted += 1;
                        bump(&mut view.regular, annotator);
                    }
                }
            }
            RoundEvent::AnnotationWithdrawn { round_id, annotator, item_id } => {
                if let Some(view) = self.rounds.get_mut(round_id) {
                    if let Some(count) = view.annotators.get_mut(annotator) {
                        *count = count.saturating_sub(1);
                    }
                    if !view.gold.contains(item_id) {
                        view.submitted = view.submitted.saturating_sub(1);
                        if let Some(count) = view.regular.get_mut(annotator) {
                            *count = count.saturating_sub(1);
                        }
                    }
                }
            }
            RoundEvent::RaterAdded { round_id, item_id, raters, .. } => {
                if let Some(view) = self.rounds.get_mut(round_id) {
                    let before = view.raised.insert(*item_id, *raters).unwrap_or(view.raters_per_item);
                    view.needed = view.needed + u64::from(*raters) - u64::from(before);
                    view.raters_added += 1;
                }
            }
            RoundEvent::AnnotatorExcluded { round_id, annotator, evidence, .. } => {
                if let Some(view) = self.rounds.get_mut(round_id) {
                    view.submitted = view.submitted.saturating_sub(view.regular.get(annotator).copied().unwrap_or(0));
                    view.excluded.insert(annotator.clone(), *evidence);
                }
            }
            RoundEvent::AnnotatorReinstated { round_id, annotator, .. } => {
                if let Some(view) = self.rounds.get_mut(round_id) {
                    view.submitted += view.regular.get(annotator).copied().unwrap_or(0);
                    view.excluded.remove(annotator);
                }
            }
            RoundEvent::ItemAdjudicated { round_id, .. } => {
                if let Some(view) = self.rounds.get_mut(round_id) {
                    view.adjudicated += 1;
                }
            }
            RoundEvent::RoundClosed { round_id, outcomes, left_out, .. } => {
                if let Some(view) = self.rounds.get_mut(round_id) {
                    view.status = "closed".into();
                    view.left_out = left_out.len() as u64;
                    view.closed_at = Some(event.metadata.recorded_at);
                    if view.kind == RoundKind::Screen {
                        let accepted = outcomes
                            .iter()
                            .filter(|o| matches!(o.verdict, Verdict::Screen { accepted: true, .. }))
                            .count();
                        view.accepted = Some(accepted as u64);
                    }
                }
            }
        }
    }
}
