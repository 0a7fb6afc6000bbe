//! A round of human annotation. Round 1 screens candidate images for quality; round 2 checks
//! that the association is gone (and compares base and fine-tuned images side by side); a
//! baseline round measures the association before anything is changed.
//!
//! Each item is rated by `raters_per_item` annotators. Annotators ask for their next task and
//! are given the item that most needs a rating (balanced assignment); they see only the image,
//! never the model or arm that made it (the label stays in the event log for auditors).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, EventPayload};
use crate::error::DomainError;
use crate::ids::{AssociationId, CampaignId, ImageId, ItemId, ModelVersionId, PromptId, RoundId};
use crate::values::{BlobHash, Name, Quality};

pub const MAX_ITEMS_PER_ROUND: usize = 100_000;
pub const MAX_RATERS_PER_ITEM: u32 = 15;
pub const DEFAULT_RATERS_PER_ITEM: u32 = 3;
pub const DEFAULT_QUALITY_THRESHOLD: u8 = 3;
pub const DEFAULT_ASSIGNMENT_LEASE_SECONDS: i64 = 15 * 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundKind {
    /// Is the concept present? (the association before mitigation)
    Baseline,
    /// Round 1: quality 1–5, is the group depicted, is the concept present.
    Screen,
    /// Round 2: concept present and quality per image; the better image of each pair.
    Check,
}

impl RoundKind {
    /// The round's number in the method (round 1 or 2); the baseline round is 0.
    pub fn number(self) -> u8 {
        match self {
            RoundKind::Baseline => 0,
            RoundKind::Screen => 1,
            RoundKind::Check => 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    pub image_id: ImageId,
    pub blob: BlobHash,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemContent {
    Image(ImageRef),
    /// Two images of the same prompt and seed, already in random left/right order.
    Pair {
        left: ImageRef,
        right: ImageRef,
    },
}

/// What the item is, hidden from annotators: which model made each image, for which prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemLabel {
    pub association_id: Option<AssociationId>,
    pub prompt_id: Option<PromptId>,
    pub prompt: String,
    pub seed: u64,
    /// One per image, in order (left, right for pairs); none for a team's own picture that
    /// round 1 screens for training.
    pub models: Vec<ModelVersionId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundItem {
    pub item_id: ItemId,
    pub content: ItemContent,
    pub label: ItemLabel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Left,
    Right,
}

/// One annotator's answers for one item; which form is allowed depends on the round and item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Baseline { concept_present: bool },
    Screen { quality: Quality, group_depicted: bool, concept_present: bool },
    Check { concept_present: bool, quality: Quality },
    Compare { preferred: Side },
}

#[derive(Debug, Clone)]
pub enum RoundCommand {
    Open {
        round_id: RoundId,
        kind: RoundKind,
        items: Vec<RoundItem>,
        raters_per_item: u32,
        quality_threshold: Quality,
        assignment_lease_seconds: i64,
        campaign_id: Option<CampaignId>,
    },
    /// Gives `annotator` the item that most needs a rating, unless they hold one already.
    AssignNext {
        annotator: String,
        now: DateTime<Utc>,
    },
    Submit {
        annotator: String,
        item_id: ItemId,
        answer: Answer,
    },
    /// Undoes the annotator's own submission while the round is open.
    Withdraw {
        annotator: String,
        item_id: ItemId,
    },
    Close {
        allow_incomplete: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RoundEvent {
    RoundOpened {
        round_id: RoundId,
        kind: RoundKind,
        items: Vec<RoundItem>,
        raters_per_item: u32,
        quality_threshold: Quality,
        assignment_lease_seconds: i64,
        campaign_id: Option<CampaignId>,
    },
    TaskAssigned {
        round_id: RoundId,
        item_id: ItemId,
        annotator: String,
        expires_at: DateTime<Utc>,
    },
    AnnotationSubmitted {
        round_id: RoundId,
        item_id: ItemId,
        annotator: String,
        answer: Answer,
    },
    AnnotationWithdrawn {
        round_id: RoundId,
        item_id: ItemId,
        annotator: String,
    },
    RoundClosed {
        round_id: RoundId,
        kind: RoundKind,
        outcomes: Vec<ItemOutcome>,
    },
}

impl EventPayload for RoundEvent {}

/// The aggregate of an item's annotations, fixed when the round closes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemOutcome {
    pub item_id: ItemId,
    /// How many annotations it had.
    pub n: u32,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No annotations (a round closed early).
    Undecided,
    Baseline {
        concept_present_votes: u32,
        concept_present: bool,
    },
    /// Accepted = median quality ≥ threshold, group depicted and concept absent, both by majority.
    Screen {
        median_quality: f64,
        group_depicted_votes: u32,
        concept_present_votes: u32,
        accepted: bool,
    },
    Check {
        concept_present_votes: u32,
        concept_present: bool,
        mean_quality: f64,
    },
    Compare {
        left_votes: u32,
        right_votes: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundStatus {
    #[default]
    NotOpened,
    Open,
    Closed,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AnnotationRound {
    pub id: Option<RoundId>,
    pub status: RoundStatus,
    pub kind: Option<RoundKind>,
    pub items: Vec<RoundItem>,
    index: BTreeMap<ItemId, usize>,
    pub raters_per_item: u32,
    pub quality_threshold: Option<Quality>,
    pub lease: Duration,
    pub campaign_id: Option<CampaignId>,
    /// (item, annotator) → when the assignment lapses.
    pub assignments: BTreeMap<(ItemId, String), DateTime<Utc>>,
    /// item → annotator → answer.
    pub submissions: BTreeMap<ItemId, BTreeMap<String, Answer>>,
    pub outcomes: Vec<ItemOutcome>,
    /// Derived from the fields above by `evolve` (never stored), so that assigning and
    /// submitting cost the same in a round of ten items or of a hundred thousand.
    load: Vec<u32>,
    /// annotator → item position → lease end, of assignments not yet rated (lapsed ones too).
    open: BTreeMap<String, BTreeMap<usize, DateTime<Utc>>>,
    /// The same assignments ordered by when their lease ends.
    expiries: BTreeSet<(DateTime<Utc>, usize, String)>,
    /// Annotations submitted (and not withdrawn).
    done: u64,
    /// For each load below `raters_per_item`, the positions of the items with that load: the
    /// candidates for assignment in the order the rule prefers them.
    by_load: Vec<BTreeSet<usize>>,
}

impl AnnotationRound {
    fn id_or_not_found(&self) -> Result<RoundId, DomainError> {
        self.id.ok_or(DomainError::NotFound { entity: "round", id: "(not opened)".into() })
    }

    fn open_id(&self) -> Result<RoundId, DomainError> {
        let id = self.id_or_not_found()?;
        if self.status == RoundStatus::Closed {
            return Err(DomainError::RoundClosed { round: id.to_string() });
        }
        Ok(id)
    }

    pub fn item(&self, item_id: ItemId) -> Option<&RoundItem> {
        self.index.get(&item_id).map(|&i| &self.items[i])
    }

    fn submitted(&self, item_id: ItemId) -> usize {
        self.submissions.get(&item_id).map_or(0, BTreeMap::len)
    }

    fn has_submitted(&self, item_id: ItemId, annotator: &str) -> bool {
        self.submissions.get(&item_id).is_some_and(|s| s.contains_key(annotator))
    }

    /// The item assigned to `annotator` and not yet rated, if its lease still runs (the first in
    /// the round's order when there are several).
    pub fn current_task(&self, annotator: &str, now: DateTime<Utc>) -> Option<ItemId> {
        let open = self.open.get(annotator)?;
        open.iter().find(|(_, expires)| **expires > now).map(|(&position, _)| self.items[position].item_id)
    }

    /// Annotations submitted, and annotations the round needs in all.
    pub fn progress(&self) -> (u64, u64) {
        (self.done, self.items.len() as u64 * u64::from(self.raters_per_item))
    }

    /// The item `annotator` should rate next: among items they have not rated that still need
    /// raters, the one with the fewest ratings plus live assignments, the earliest on a tie.
    fn next_item(&self, annotator: &str, now: DateTime<Utc>) -> Option<usize> {
        let needed = self.raters_per_item;
        // `load` counts every open assignment; lapsed ones no longer hold their item.
        let mut lapsed: BTreeMap<usize, u32> = BTreeMap::new();
        for (_, position, _) in self.expiries.iter().take_while(|(expires, _, _)| *expires <= now) {
            *lapsed.entry(*position).or_default() += 1;
        }
        let eligible = |position: usize| !self.has_submitted(self.items[position].item_id, annotator);
        let mut best: Option<(u32, usize)> = None;
        for (&position, &count) in &lapsed {
            let taken = self.load[position] - count;
            if taken < needed && best.is_none_or(|b| (taken, position) < b) && eligible(position) {
                best = Some((taken, position));
            }
        }
        'levels: for (taken, positions) in self.by_load.iter().enumerate() {
            let taken = taken as u32;
            for &position in positions {
                if best.is_some_and(|b| (taken, position) >= b) {
                    break 'levels;
                }
                if !lapsed.contains_key(&position) && eligible(position) {
                    best = Some((taken, position));
                    break 'levels;
                }
            }
        }
        best.map(|(_, position)| position)
    }

    /// Removes what the (item, annotator) pair adds to the indexes; `index_pair` adds it back.
    fn unindex_pair(&mut self, item_id: ItemId, annotator: &str) {
        let Some(&position) = self.index.get(&item_id) else { return };
        if self.has_submitted(item_id, annotator) {
            self.set_load(position, self.load[position] - 1);
            self.done -= 1;
        } else if let Some(&expires) = self.assignments.get(&(item_id, annotator.to_string())) {
            self.set_load(position, self.load[position] - 1);
            if let Some(open) = self.open.get_mut(annotator) {
                open.remove(&position);
                if open.is_empty() {
                    self.open.remove(annotator);
                }
            }
            self.expiries.remove(&(expires, position, annotator.to_string()));
        }
    }

    fn index_pair(&mut self, item_id: ItemId, annotator: &str) {
        let Some(&position) = self.index.get(&item_id) else { return };
        self.index_pair_at(position, item_id, annotator);
    }

    fn set_load(&mut self, position: usize, load: u32) {
        let old = std::mem::replace(&mut self.load[position], load);
        if let Some(bucket) = self.by_load.get_mut(old as usize) {
            bucket.remove(&position);
        }
        if let Some(bucket) = self.by_load.get_mut(load as usize) {
            bucket.insert(position);
        }
    }

    fn index_pair_at(&mut self, position: usize, item_id: ItemId, annotator: &str) {
        if self.has_submitted(item_id, annotator) {
            self.set_load(position, self.load[position] + 1);
            self.done += 1;
        } else if let Some(&expires) = self.assignments.get(&(item_id, annotator.to_string())) {
            self.set_load(position, self.load[position] + 1);
            self.open.entry(annotator.to_string()).or_default().insert(position, expires);
            self.expiries.insert((expires, position, annotator.to_string()));
        }
    }

    fn answer_fits(&self, item: &RoundItem, answer: &Answer) -> bool {
        matches!(
            (self.kind, &item.content, answer),
            (Some(RoundKind::Baseline), ItemContent::Image(_), Answer::Baseline { .. })
                | (Some(RoundKind::Screen), ItemContent::Image(_), Answer::Screen { .. })
                | (Some(RoundKind::Check), ItemContent::Image(_), Answer::Check { .. })
                | (Some(RoundKind::Check), ItemContent::Pair { .. }, Answer::Compare { .. })
        )
    }

    fn outcome(&self, item: &RoundItem) -> ItemOutcome {
        let answers: Vec<&Answer> =
            self.submissions.get(&item.item_id).map(|s| s.values().collect()).unwrap_or_default();
        let n = answers.len() as u32;
        let count = |pred: &dyn Fn(&Answer) -> bool| answers.iter().filter(|a| pred(a)).count() as u32;
        let majority = |votes: u32| 2 * votes > n;
        let verdict = if n == 0 {
            Verdict::Undecided
        } else {
            match (self.kind, &item.content) {
                (Some(RoundKind::Baseline), _) => {
                    let votes = count(&|a| matches!(a, Answer::Baseline { concept_present: true }));
                    Verdict::Baseline { concept_present_votes: votes, concept_present: majority(votes) }
                }
                (Some(RoundKind::Screen), _) => {
                    let mut qualities: Vec<u8> = answers
                        .iter()
                        .filter_map(|a| match a {
                            Answer::Screen { quality, .. } => Some(quality.get()),
                            _ => None,
                        })
                        .collect();
                    let median_quality = median(&mut qualities);
                    let group = count(&|a| matches!(a, Answer::Screen { group_depicted: true, .. }));
                    let concept = count(&|a| matches!(a, Answer::Screen { concept_present: true, .. }));
                    let threshold = f64::from(self.quality_threshold.map_or(DEFAULT_QUALITY_THRESHOLD, Quality::get));
                    Verdict::Screen {
                        median_quality,
                        group_depicted_votes: group,
                        concept_present_votes: concept,
                        accepted: median_quality >= threshold
                            && majority(group)
                            && !majority(concept)
                            && 2 * concept != n,
                    }
                }
                (_, ItemContent::Pair { .. }) => Verdict::Compare {
                    left_votes: count(&|a| matches!(a, Answer::Compare { preferred: Side::Left })),
                    right_votes: count(&|a| matches!(a, Answer::Compare { preferred: Side::Right })),
                },
                _ => {
                    let concept = count(&|a| matches!(a, Answer::Check { concept_present: true, .. }));
                    let total: u32 = answers
                        .iter()
                        .map(|a| match a {
                            Answer::Check { quality, .. } => u32::from(quality.get()),
                            _ => 0,
                        })
                        .sum();
                    Verdict::Check {
                        concept_present_votes: concept,
                        concept_present: majority(concept),
                        mean_quality: f64::from(total) / f64::from(n),
                    }
                }
            }
        };
        ItemOutcome { item_id: item.item_id, n, verdict }
    }
}

/// The median of whole-number ratings (the mean of the middle two for an even count).
pub fn median(values: &mut [u8]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_unstable();
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        f64::from(values[mid])
    } else {
        (f64::from(values[mid - 1]) + f64::from(values[mid])) / 2.0
    }
}

impl Aggregate for AnnotationRound {
    type Command = RoundCommand;
    type Event = RoundEvent;
    const ENTITY: &'static str = "round";

    fn exists(&self) -> bool {
        self.id.is_some()
    }

    fn decide(&self, command: RoundCommand) -> Result<Vec<RoundEvent>, DomainError> {
        match command {
            RoundCommand::Open {
                round_id,
                kind,
                items,
                raters_per_item,
                quality_threshold,
                assignment_lease_seconds,
                campaign_id,
            } => {
                if self.exists() {
                    return Err(DomainError::AlreadyExists { entity: "round", id: round_id.to_string() });
                }
                if items.is_empty() || items.len() > MAX_ITEMS_PER_ROUND {
                    return Err(DomainError::invalid(
                        "items",
                        format!("must hold 1 to {MAX_ITEMS_PER_ROUND} items, not {}", items.len()),
                    ));
                }
                if !(1..=MAX_RATERS_PER_ITEM).contains(&raters_per_item) {
                    return Err(DomainError::invalid(
                        "raters_per_item",
                        format!("must be between 1 and {MAX_RATERS_PER_ITEM}"),
                    ));
                }
                if !(60..=7 * 24 * 3600).contains(&assignment_lease_seconds) {
                    return Err(DomainError::invalid("assignment_lease_seconds", "must be between 60 s and 7 days"));
                }
                let mut seen = std::collections::BTreeSet::new();
                for item in &items {
                    if !seen.insert(item.item_id) {
                        return Err(DomainError::invalid("items", format!("item {} appears twice", item.item_id)));
                    }
                    let pair = matches!(item.content, ItemContent::Pair { .. });
                    if pair && kind != RoundKind::Check {
                        return Err(DomainError::invalid("items", "side-by-side pairs belong only in round 2"));
                    }
                    let images = if pair { 2 } else { 1 };
                    // A team's own picture, screened for training in round 1, came from no model.
                    let unmodelled = kind == RoundKind::Screen && item.label.models.is_empty();
                    if item.label.models.len() != images && !unmodelled {
                        return Err(DomainError::invalid(
                            "items",
                            format!("item {} must name the model of each of its {images} image(s)", item.item_id),
                        ));
                    }
                }
                Ok(vec![RoundEvent::RoundOpened {
                    round_id,
                    kind,
                    items,
                    raters_per_item,
                    quality_threshold,
                    assignment_lease_seconds,
                    campaign_id,
                }])
            }
            RoundCommand::AssignNext { annotator, now } => {
                let round_id = self.open_id()?;
                let annotator = String::from(Name::parse("annotator", &annotator)?);
                if self.current_task(&annotator, now).is_some() {
                    return Ok(vec![]);
                }
                let next = self.next_item(&annotator, now).map(|position| self.items[position].item_id);
                Ok(next
                    .map(|item_id| RoundEvent::TaskAssigned {
                        round_id,
                        item_id,
                        annotator,
                        expires_at: now + self.lease,
                    })
                    .into_iter()
                    .collect())
            }
            RoundCommand::Submit { annotator, item_id, answer } => {
                let round_id = self.open_id()?;
                let item =
                    self.item(item_id).ok_or(DomainError::NotFound { entity: "item", id: item_id.to_string() })?;
                if self.has_submitted(item_id, &annotator) {
                    return Err(DomainError::AlreadyAnnotated { annotator, item: item_id.to_string() });
                }
                if !self.assignments.contains_key(&(item_id, annotator.clone())) {
                    return Err(DomainError::NotAssigned { annotator, item: item_id.to_string() });
                }
                if self.submitted(item_id) >= self.raters_per_item as usize {
                    return Err(DomainError::ItemComplete { item: item_id.to_string(), needed: self.raters_per_item });
                }
                if !self.answer_fits(item, &answer) {
                    return Err(DomainError::invalid(
                        "answer",
                        match (self.kind, &item.content) {
                            (Some(RoundKind::Baseline), _) => "the baseline round asks only: is the concept present?",
                            (Some(RoundKind::Screen), _) => {
                                "round 1 asks for quality, group depicted and concept present"
                            }
                            (_, ItemContent::Pair { .. }) => {
                                "this item is a pair: choose the better image (left or right)"
                            }
                            _ => "round 2 asks for concept present and quality of this image",
                        },
                    ));
                }
                Ok(vec![RoundEvent::AnnotationSubmitted { round_id, item_id, annotator, answer }])
            }
            RoundCommand::Withdraw { annotator, item_id } => {
                let round_id = self.open_id()?;
                if self.item(item_id).is_none() {
                    return Err(DomainError::NotFound { entity: "item", id: item_id.to_string() });
                }
                if !self.has_submitted(item_id, &annotator) {
                    return Err(DomainError::NotFound {
                        entity: "annotation",
                        id: format!("by {annotator} on item {item_id}"),
                    });
                }
                Ok(vec![RoundEvent::AnnotationWithdrawn { round_id, item_id, annotator }])
            }
            RoundCommand::Close { allow_incomplete } => {
                let round_id = self.open_id()?;
                let needed = self.raters_per_item as usize;
                let short = self.items.iter().filter(|item| self.submitted(item.item_id) < needed).count();
                if short > 0 && !allow_incomplete {
                    return Err(DomainError::WrongState {
                        entity: "round",
                        state: format!("missing annotations on {short} of {} items", self.items.len()),
                        action: "closing without allow_incomplete",
                    });
                }
                let outcomes = self.items.iter().map(|item| self.outcome(item)).collect();
                Ok(vec![RoundEvent::RoundClosed { round_id, kind: self.kind.unwrap_or(RoundKind::Screen), outcomes }])
            }
        }
    }

    fn evolve(&mut self, event: &RoundEvent) {
        match event {
            RoundEvent::RoundOpened {
                round_id,
                kind,
                items,
                raters_per_item,
                quality_threshold,
                assignment_lease_seconds,
                campaign_id,
            } => {
                self.id = Some(*round_id);
                self.status = RoundStatus::Open;
                self.kind = Some(*kind);
                self.index = items.iter().enumerate().map(|(i, item)| (item.item_id, i)).collect();
                self.items = items.clone();
                self.load = vec![0; items.len()];
                self.by_load = (0..*raters_per_item).map(|_| BTreeSet::new()).collect();
                if let Some(unrated) = self.by_load.first_mut() {
                    unrated.extend(0..items.len());
                }
                self.raters_per_item = *raters_per_item;
                self.quality_threshold = Some(*quality_threshold);
                self.lease = Duration::seconds(*assignment_lease_seconds);
                self.campaign_id = *campaign_id;
            }
            RoundEvent::TaskAssigned { item_id, annotator, expires_at, .. } => {
                self.unindex_pair(*item_id, annotator);
                self.assignments.insert((*item_id, annotator.clone()), *expires_at);
                self.index_pair(*item_id, annotator);
            }
            RoundEvent::AnnotationSubmitted { item_id, annotator, answer, .. } => {
                self.unindex_pair(*item_id, annotator);
                self.submissions.entry(*item_id).or_default().insert(annotator.clone(), *answer);
                self.index_pair(*item_id, annotator);
            }
            RoundEvent::AnnotationWithdrawn { item_id, annotator, .. } => {
                self.unindex_pair(*item_id, annotator);
                if let Some(answers) = self.submissions.get_mut(item_id) {
                    answers.remove(annotator);
                }
                self.index_pair(*item_id, annotator);
            }
            RoundEvent::RoundClosed { outcomes, .. } => {
                self.status = RoundStatus::Closed;
                self.outcomes = outcomes.clone();
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::{ApplyAll, then_error};
    use uuid::Uuid;

    pub fn image_item(n: u128) -> RoundItem {
        RoundItem {
            item_id: ItemId(Uuid::from_u128(n)),
            content: ItemContent::Image(ImageRef {
                image_id: ImageId(Uuid::from_u128(1000 + n)),
                blob: BlobHash::parse(&format!("{:064x}", n)).unwrap(),
            }),
            label: ItemLabel {
                association_id: None,
                prompt_id: None,
                prompt: "a woman at the beach".into(),
                seed: n as u64,
                models: vec![ModelVersionId(Uuid::from_u128(7))],
            },
        }
    }

    fn item(n: u128) -> ItemId {
        ItemId(Uuid::from_u128(n))
    }

    fn t(minutes: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap() + Duration::minutes(minutes)
    }

    pub fn open(kind: RoundKind, items: Vec<RoundItem>, k: u32) -> AnnotationRound {
        AnnotationRound::default()
            .then(RoundCommand::Open {
                round_id: RoundId(Uuid::from_u128(1)),
                kind,
                items,
                raters_per_item: k,
                quality_threshold: Quality::new(3).unwrap(),
                assignment_lease_seconds: 600,
                campaign_id: None,
            })
            .0
    }

    fn screen(quality: u8, group: bool, concept: bool) -> Answer {
        Answer::Screen { quality: Quality::new(quality).unwrap(), group_depicted: group, concept_present: concept }
    }

    /// Assigns and submits for `annotator`, returning the new state.
    fn rate(round: AnnotationRound, annotator: &str, now: i64, answer: Answer) -> AnnotationRound {
        let (round, _) = round.then(RoundCommand::AssignNext { annotator: annotator.into(), now: t(now) });
        let item_id = round.current_task(annotator, t(now)).expect("a task");
        round.then(RoundCommand::Submit { annotator: annotator.into(), item_id, answer }).0
    }

    /// The assignment rule written plainly over the round's public fields: the reference the
    /// indexed implementation must agree with.
    fn reference_next(round: &AnnotationRound, annotator: &str, now: DateTime<Utc>) -> Option<ItemId> {
        let rated = |item: ItemId, who: &str| round.submissions.get(&item).is_some_and(|s| s.contains_key(who));
        round
            .items
            .iter()
            .enumerate()
            .filter(|(_, item)| !rated(item.item_id, annotator))
            .map(|(position, item)| {
                let submitted = round.submissions.get(&item.item_id).map_or(0, BTreeMap::len);
                let live = round
                    .assignments
                    .iter()
                    .filter(|((i, who), expires)| *i == item.item_id && **expires > now && !rated(*i, who))
                    .count();
                (submitted + live, position, item.item_id)
            })
            .filter(|(taken, _, _)| *taken < round.raters_per_item as usize)
            .min()
            .map(|(_, _, item_id)| item_id)
    }

    fn reference_current(round: &AnnotationRound, annotator: &str, now: DateTime<Utc>) -> Option<ItemId> {
        let rated = |item: ItemId| round.submissions.get(&item).is_some_and(|s| s.contains_key(annotator));
        round
            .assignments
            .iter()
            .filter(|((item, who), expires)| who == annotator && **expires > now && !rated(*item))
            .map(|((item, _), _)| *item)
            .min_by_key(|item| round.items.iter().position(|i| i.item_id == *item))
    }

    #[test]
    fn indexed_assignment_agrees_with_the_plain_rule_over_random_histories() {
        // A small LCG: many interleavings of assignments, submissions, withdrawals and lapsed
        // leases (10-minute leases, clock moving 0–7 minutes per step).
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |n: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let annotators = ["ann", "bob", "cat", "dan", "eve"];
        for _history in 0..40 {
            let items: Vec<RoundItem> = (1..=7).map(image_item).collect();
            let k = 1 + next(3) as u32;
            let mut round = open(RoundKind::Screen, items, k);
            let mut clock = 0i64;
            for _step in 0..120 {
                clock += next(8) as i64;
                let now = t(clock);
                let who = annotators[next(annotators.len() as u64) as usize];
                assert_eq!(round.current_task(who, now), reference_current(&round, who, now));
                let command = match next(10) {
                    0..=4 => RoundCommand::AssignNext { annotator: who.into(), now },
                    5..=8 => match round.current_task(who, now).or_else(|| {
                        // Sometimes submit on a lapsed assignment (still allowed) or an unassigned item.
                        let item = item(1 + u128::from(next(7)));
                        Some(item)
                    }) {
                        Some(item_id) => {
                            RoundCommand::Submit { annotator: who.into(), item_id, answer: screen(4, true, false) }
                        }
                        None => continue,
                    },
                    _ => RoundCommand::Withdraw { annotator: who.into(), item_id: item(1 + u128::from(next(7))) },
                };
                let expected_next = reference_next(&round, who, now);
                let held = reference_current(&round, who, now);
                if let Ok(events) = round.decide(command.clone()) {
                    if let RoundCommand::AssignNext { .. } = command {
                        let assigned = events.iter().find_map(|e| match e {
                            RoundEvent::TaskAssigned { item_id, .. } => Some(*item_id),
                            _ => None,
                        });
                        assert_eq!(
                            assigned,
                            if held.is_some() { None } else { expected_next },
                            "history {_history} step {_step}"
                        );
                    }
                    round = round.apply_all(&events);
                }
                let submitted: usize = round.submissions.values().map(BTreeMap::len).sum();
                assert_eq!(round.progress().0, submitted as u64);
            }
        }
    }

    #[test]
    fn assignment_gives_each_item_k_distinct_raters_and_balances_them() {
        let mut round = open(RoundKind::Screen, vec![image_item(1), image_item(2)], 2);
        let mut seen: BTreeMap<ItemId, Vec<String>> = BTreeMap::new();
        for annotator in ["ann", "bob", "cat", "dan"] {
            let (next, events) = round.then(RoundCommand::AssignNext { annotator: annotator.into(), now: t(0) });
            let [RoundEvent::TaskAssigned { item_id, expires_at, .. }] = &events[..] else { panic!("{events:?}") };
            assert_eq!(*expires_at, t(10));
            seen.entry(*item_id).or_default().push(annotator.into());
            round = next;
        }
        // Two raters per item, spread over both items before any item gets a third.
        assert_eq!(seen[&item(1)], ["ann", "cat"]);
        assert_eq!(seen[&item(2)], ["bob", "dan"]);
        // Nothing is left for a fifth annotator while the leases run.
        assert_eq!(round.decide(RoundCommand::AssignNext { annotator: "eve".into(), now: t(1) }), Ok(vec![]));
        assert_eq!(round.current_task("eve", t(1)), None);
        // Asking again returns the task already held, without a new event.
        assert_eq!(round.decide(RoundCommand::AssignNext { annotator: "ann".into(), now: t(1) }), Ok(vec![]));
        assert_eq!(round.current_task("ann", t(1)), Some(item(1)));
        // Once a lease lapses, the item goes to someone else.
        let events = round.decide(RoundCommand::AssignNext { annotator: "eve".into(), now: t(11) }).unwrap();
        assert!(matches!(&events[..], [RoundEvent::TaskAssigned { annotator, .. }] if annotator == "eve"));
    }

    #[test]
    fn an_annotator_rates_an_item_once() {
        let round = open(RoundKind::Screen, vec![image_item(1), image_item(2)], 3);
        let round = rate(round, "ann", 0, screen(4, true, false));
        then_error(
            round.decide(RoundCommand::Submit {
                annotator: "ann".into(),
                item_id: item(1),
                answer: screen(5, true, false),
            }),
            |e| matches!(e, DomainError::AlreadyAnnotated { .. }),
        );
        // The next assignment skips what ann already rated.
        let (round, _) = round.then(RoundCommand::AssignNext { annotator: "ann".into(), now: t(1) });
        assert_eq!(round.current_task("ann", t(1)), Some(item(2)));
    }

    #[test]
    fn submissions_need_an_assignment_and_a_fitting_answer() {
        let round = open(RoundKind::Screen, vec![image_item(1)], 3);
        then_error(
            round.decide(RoundCommand::Submit {
                annotator: "ann".into(),
                item_id: item(1),
                answer: screen(3, true, false),
            }),
            |e| matches!(e, DomainError::NotAssigned { .. }),
        );
        let (round, _) = round.then(RoundCommand::AssignNext { annotator: "ann".into(), now: t(0) });
        then_error(
            round.decide(RoundCommand::Submit {
                annotator: "ann".into(),
                item_id: item(1),
                answer: Answer::Compare { preferred: Side::Left },
            }),
            |e| matches!(e, DomainError::Invalid { field: "answer", .. }),
        );
        then_error(
            round.decide(RoundCommand::Submit {
                annotator: "ann".into(),
                item_id: item(9),
                answer: screen(3, true, false),
            }),
            |e| matches!(e, DomainError::NotFound { .. }),
        );
    }

    #[test]
    fn ratings_outside_one_to_five_cannot_be_expressed() {
        assert_eq!(Quality::new(0), Err(DomainError::RatingOutOfRange { value: 0 }));
        let answer: Result<Answer, _> =
            serde_json::from_str(r#"{"screen":{"quality":7,"group_depicted":true,"concept_present":false}}"#);
        assert!(answer.is_err());
    }

    #[test]
    fn annotating_a_closed_round_is_rejected() {
        let round = open(RoundKind::Baseline, vec![image_item(1)], 1);
        let round = rate(round, "ann", 0, Answer::Baseline { concept_present: true });
        let (round, _) = round.then(RoundCommand::Close { allow_incomplete: false });
        then_error(
            round.decide(RoundCommand::Submit {
                annotator: "bob".into(),
                item_id: item(1),
                answer: Answer::Baseline { concept_present: false },
            }),
            |e| matches!(e, DomainError::RoundClosed { .. }),
        );
        then_error(round.decide(RoundCommand::AssignNext { annotator: "bob".into(), now: t(0) }), |e| {
            matches!(e, DomainError::RoundClosed { .. })
        });
        then_error(round.decide(RoundCommand::Close { allow_incomplete: true }), |e| {
            matches!(e, DomainError::RoundClosed { .. })
        });
    }

    #[test]
    fn an_item_takes_at_most_k_annotations() {
        let round = open(RoundKind::Baseline, vec![image_item(1)], 1);
        let (round, _) = round.then(RoundCommand::AssignNext { annotator: "ann".into(), now: t(0) });
        // ann's lease lapses; bob takes the item and rates it.
        let round = rate(round, "bob", 11, Answer::Baseline { concept_present: false });
        then_error(
            round.decide(RoundCommand::Submit {
                annotator: "ann".into(),
                item_id: item(1),
                answer: Answer::Baseline { concept_present: true },
            }),
            |e| matches!(e, DomainError::ItemComplete { needed: 1, .. }),
        );
    }

    #[test]
    fn withdrawing_undoes_only_ones_own_submission() {
        let round = open(RoundKind::Baseline, vec![image_item(1)], 2);
        let round = rate(round, "ann", 0, Answer::Baseline { concept_present: true });
        then_error(round.decide(RoundCommand::Withdraw { annotator: "bob".into(), item_id: item(1) }), |e| {
            matches!(e, DomainError::NotFound { .. })
        });
        let (round, events) = round.then(RoundCommand::Withdraw { annotator: "ann".into(), item_id: item(1) });
        assert!(matches!(&events[..], [RoundEvent::AnnotationWithdrawn { .. }]));
        assert_eq!(round.progress(), (0, 2));
        // ann may now answer again.
        let round = round
            .then(RoundCommand::Submit {
                annotator: "ann".into(),
                item_id: item(1),
                answer: Answer::Baseline { concept_present: false },
            })
            .0;
        assert_eq!(round.progress(), (1, 2));
    }

    #[test]
    fn closing_needs_every_item_rated_unless_allowed_incomplete() {
        let round = open(RoundKind::Screen, vec![image_item(1), image_item(2)], 1);
        let round = rate(round, "ann", 0, screen(4, true, false));
        then_error(round.decide(RoundCommand::Close { allow_incomplete: false }), |e| {
            matches!(e, DomainError::WrongState { .. })
        });
        let (_, events) = round.then(RoundCommand::Close { allow_incomplete: true });
        let [RoundEvent::RoundClosed { outcomes, .. }] = &events[..] else { panic!("{events:?}") };
        assert_eq!(outcomes[1].verdict, Verdict::Undecided);
        assert!(matches!(outcomes[0].verdict, Verdict::Screen { accepted: true, .. }));
    }

    #[test]
    fn round_one_accepts_by_median_quality_group_and_concept_majorities() {
        // item 1: qualities 2,4,5 → median 4, group 3/3, concept 1/3 → accepted
        // item 2: qualities 1,2,5 → median 2 → rejected on quality
        // item 3: concept present for 2/3 → rejected
        // item 4: group depicted only 1/3 → rejected
        let answers = [
            [screen(2, true, false), screen(4, true, true), screen(5, true, false)],
            [screen(1, true, false), screen(2, true, false), screen(5, true, false)],
            [screen(5, true, true), screen(5, true, true), screen(5, true, false)],
            [screen(5, true, false), screen(5, false, false), screen(5, false, false)],
        ];
        let mut round = open(RoundKind::Screen, (1..=4).map(image_item).collect(), 3);
        for (i, annotator) in ["ann", "bob", "cat"].iter().enumerate() {
            for item_answers in &answers {
                round = rate(round, annotator, 0, item_answers[i]);
            }
        }
        let (_, events) = round.then(RoundCommand::Close { allow_incomplete: false });
        let [RoundEvent::RoundClosed { outcomes, .. }] = &events[..] else { panic!("{events:?}") };
        let accepted: Vec<bool> = outcomes
            .iter()
            .map(|o| match o.verdict {
                Verdict::Screen { accepted, .. } => accepted,
                _ => panic!("{o:?}"),
            })
            .collect();
        assert_eq!(accepted, [true, false, false, false]);
        assert!(matches!(outcomes[0].verdict, Verdict::Screen { median_quality, .. } if median_quality == 4.0));
        assert!(outcomes.iter().all(|o| o.n == 3));
    }

    #[test]
    fn round_two_counts_concept_votes_quality_and_pair_preferences() {
        let pair = RoundItem {
            item_id: item(5),
            content: ItemContent::Pair {
                left: ImageRef {
                    image_id: ImageId(Uuid::from_u128(51)),
                    blob: BlobHash::parse(&"1".repeat(64)).unwrap(),
                },
                right: ImageRef {
                    image_id: ImageId(Uuid::from_u128(52)),
                    blob: BlobHash::parse(&"2".repeat(64)).unwrap(),
                },
            },
            label: ItemLabel {
                association_id: None,
                prompt_id: None,
                prompt: "a woman".into(),
                seed: 5,
                models: vec![ModelVersionId(Uuid::from_u128(7)), ModelVersionId(Uuid::from_u128(8))],
            },
        };
        let mut round = open(RoundKind::Check, vec![image_item(1), pair], 2);
        let check = |concept, q| Answer::Check { concept_present: concept, quality: Quality::new(q).unwrap() };
        round = rate(round, "ann", 0, check(false, 4));
        round = rate(round, "ann", 0, Answer::Compare { preferred: Side::Right });
        round = rate(round, "bob", 0, check(true, 3));
        // bob's answer to the pair must be a preference.
        let (next, _) = round.clone().then(RoundCommand::AssignNext { annotator: "bob".into(), now: t(0) });
        then_error(
            next.decide(RoundCommand::Submit { annotator: "bob".into(), item_id: item(5), answer: check(false, 3) }),
            |e| matches!(e, DomainError::Invalid { field: "answer", .. }),
        );
        round = rate(round, "bob", 0, Answer::Compare { preferred: Side::Right });
        let (_, events) = round.then(RoundCommand::Close { allow_incomplete: false });
        let [RoundEvent::RoundClosed { outcomes, .. }] = &events[..] else { panic!("{events:?}") };
        assert_eq!(
            outcomes[0].verdict,
            Verdict::Check { concept_present_votes: 1, concept_present: false, mean_quality: 3.5 }
        );
        assert_eq!(outcomes[1].verdict, Verdict::Compare { left_votes: 0, right_votes: 2 });
    }

    #[test]
    fn opening_validates_items_and_settings() {
        let opened = |kind, items, k| {
            AnnotationRound::default().decide(RoundCommand::Open {
                round_id: RoundId(Uuid::from_u128(1)),
                kind,
                items,
                raters_per_item: k,
                quality_threshold: Quality::new(3).unwrap(),
                assignment_lease_seconds: 600,
                campaign_id: None,
            })
        };
        then_error(opened(RoundKind::Screen, vec![], 3), |e| matches!(e, DomainError::Invalid { field: "items", .. }));
        then_error(opened(RoundKind::Screen, vec![image_item(1)], 0), |e| {
            matches!(e, DomainError::Invalid { field: "raters_per_item", .. })
        });
        then_error(opened(RoundKind::Screen, vec![image_item(1), image_item(1)], 3), |e| {
            matches!(e, DomainError::Invalid { field: "items", .. })
        });
        // A team's own picture names no model: round 1 screens it; the other rounds compare
        // models, so each of their images must name one.
        let mut team = image_item(3);
        team.label.models.clear();
        assert!(opened(RoundKind::Screen, vec![image_item(1), team.clone()], 3).is_ok());
        for kind in [RoundKind::Baseline, RoundKind::Check] {
            then_error(opened(kind, vec![team.clone()], 3), |e| {
                matches!(e, DomainError::Invalid { field: "items", .. })
            });
        }
        let round = open(RoundKind::Screen, vec![image_item(1)], 3).apply_all(&[]);
        then_error(
            round.decide(RoundCommand::Open {
                round_id: RoundId(Uuid::from_u128(1)),
                kind: RoundKind::Screen,
                items: vec![image_item(2)],
                raters_per_item: 3,
                quality_threshold: Quality::new(3).unwrap(),
                assignment_lease_seconds: 600,
                campaign_id: None,
            }),
            |e| matches!(e, DomainError::AlreadyExists { .. }),
        );
    }

    #[test]
    fn median_of_even_counts_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&mut [1, 5, 3]), 3.0);
        assert_eq!(median(&mut [4, 1, 3, 5]), 3.5);
        assert_eq!(median(&mut []), 0.0);
    }
}
