//! A round of human annotation. Round 1 screens candidate images for quality; round 2 checks
//! that the association is gone (and compares base and fine-tuned images side by side); a
//! baseline round measures the association before anything is changed.
//!
//! Each item is rated by `raters_per_item` annotators. Annotators ask for their next task and
//! are given the item that most needs a rating (balanced assignment); they see only the image,
//! never the model or arm that made it (the label stays in the event log for auditors).
//!
//! A round may also control its raters' quality ([`RoundControls`]):
//! - **gold items**, whose correct answers are known: served to each annotator among the other
//!   items (same task shape), scored per annotator, never part of a campaign's data;
//! - an **exclusion rule**: an annotator whose gold accuracy's upper 95% bound falls below the
//!   rule's after enough gold answers is excluded (an event with the evidence); their answers
//!   leave the verdicts (kept aside, in the log), their open tasks return to the pool, they get no
//!   more tasks; a curator may reinstate them (an event with the reason);
//! - **adaptive overlap**: each item starts with `raters_per_item`; an item whose answers split
//!   (margin below the setting) gets one more rater at a time up to `max_raters` (an event each);
//!   an item still split then waits for a curator's **adjudication** (an event with the decision
//!   and the reason), and the round closes only when none waits (or the curator leaves them out,
//!   recorded in the closing event).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, EventPayload};
use crate::error::DomainError;
use crate::ids::{AssociationId, CampaignId, ImageId, ItemId, ModelVersionId, PromptId, RoundId};
use crate::planning::Z95;
use crate::values::{BlobHash, Name, Quality, Sentence};

pub const MAX_ITEMS_PER_ROUND: usize = 100_000;
pub const MAX_RATERS_PER_ITEM: u32 = 15;
pub const DEFAULT_RATERS_PER_ITEM: u32 = 3;
pub const DEFAULT_QUALITY_THRESHOLD: u8 = 3;

/// At most this many other answers between two of an annotator's gold items (while they have
/// gold items left to see): a careless annotator meets enough gold to be excluded early, before
/// many of their answers have to be set aside and asked again.
pub const MAX_GOLD_PERIOD: u32 = 5;
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

/// The known answers of a gold item: each question the round asks that has a known answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gold {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concept_present: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_depicted: Option<bool>,
}

impl Gold {
    /// Whether `answer` gets every known question right; `None` when the answer asks none of
    /// the known questions.
    pub fn scores(&self, answer: &Answer) -> Option<bool> {
        let (concept, group) = match answer {
            Answer::Baseline { concept_present } | Answer::Check { concept_present, .. } => {
                (Some(*concept_present), None)
            }
            Answer::Screen { group_depicted, concept_present, .. } => (Some(*concept_present), Some(*group_depicted)),
            Answer::Compare { .. } => (None, None),
        };
        let checks: Vec<bool> = [(self.concept_present, concept), (self.group_depicted, group)]
            .into_iter()
            .filter_map(|(known, given)| Some(known? == given?))
            .collect();
        (!checks.is_empty()).then(|| checks.iter().all(|ok| *ok))
    }
}

/// Exclude an annotator once they have answered at least `min_gold_answers` gold items and the
/// upper end of the Wilson 95% interval of their gold accuracy is below `min_accuracy`: even
/// the most generous reading of their record says they answer worse than that.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExclusionRule {
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub min_gold_answers: u32,
    #[cfg_attr(feature = "openapi", schema(exclusive_minimum = 0.0, maximum = 1.0))]
    pub min_accuracy: f64,
}

/// More raters for split items: an item whose answers' margin (see [`AnnotationRound::margin`])
/// is below `margin` once it has its raters gets one more, up to `max_raters`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveOverlap {
    /// At most this many raters per item (from the round's `raters_per_item` to 15).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 15))]
    pub max_raters: u32,
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub margin: u32,
}

/// How a round turns its items' yes/no answers into verdicts.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Each item's majority (today's rule; a tie counts as no).
    #[default]
    Majority,
    /// Dawid–Skene: each annotator's sensitivity and specificity estimated by EM over the whole
    /// round, each item's answer the more probable one given who said what
    /// ([`crate::aggregation::dawid_skene`]). Quality stays the median (round 1) or mean
    /// (round 2) of the ratings; pairs stay majorities.
    DawidSkene,
}

impl Aggregation {
    fn is_majority(&self) -> bool {
        *self == Aggregation::Majority
    }
}

/// How a round controls its raters' quality; all off by default (every item gets
/// `raters_per_item` answers and a majority decides).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RoundControls {
    /// Gold items (by id, among the round's items) and their known answers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gold: BTreeMap<ItemId, Gold>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusion: Option<ExclusionRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<AdaptiveOverlap>,
    #[serde(default, skip_serializing_if = "Aggregation::is_majority")]
    pub aggregation: Aggregation,
}

impl RoundControls {
    fn is_empty(&self) -> bool {
        self == &RoundControls::default()
    }
}

/// What an exclusion rule saw when it fired.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GoldEvidence {
    pub gold_answers: u32,
    pub gold_correct: u32,
    /// Upper end of the Wilson 95% interval of `gold_correct / gold_answers`.
    pub accuracy_upper_bound: f64,
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
        controls: RoundControls,
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
        /// Close although items wait for adjudication: they are left out (no verdict).
        leave_out_unadjudicated: bool,
    },
    /// A curator settles a split item with the answer that decides it, and why.
    Adjudicate {
        item_id: ItemId,
        answer: Answer,
        reason: String,
    },
    /// A curator lets an excluded annotator back in: their answers count again.
    Reinstate {
        annotator: String,
        reason: String,
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
        #[serde(default, skip_serializing_if = "RoundControls::is_empty")]
        controls: RoundControls,
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
    /// An item's answers split: it needs `raters` answers now.
    RaterAdded {
        round_id: RoundId,
        item_id: ItemId,
        raters: u32,
        margin: u32,
    },
    /// The round's exclusion rule fired on `annotator`'s gold record.
    AnnotatorExcluded {
        round_id: RoundId,
        annotator: String,
        rule: ExclusionRule,
        evidence: GoldEvidence,
    },
    AnnotatorReinstated {
        round_id: RoundId,
        annotator: String,
        reason: String,
    },
    /// A split item decided by a curator's answer.
    ItemAdjudicated {
        round_id: RoundId,
        item_id: ItemId,
        answer: Answer,
        reason: String,
    },
    RoundClosed {
        round_id: RoundId,
        kind: RoundKind,
        outcomes: Vec<ItemOutcome>,
        /// Items still split at the most raters, closed without a verdict by a curator's decision.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        left_out: Vec<ItemId>,
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
    /// Decided by a curator's answer (the annotators' split).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adjudicated: bool,
    /// How the yes/no answers were aggregated (absent: majority).
    #[serde(default, skip_serializing_if = "Aggregation::is_majority")]
    pub aggregation: Aggregation,
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
    pub controls: RoundControls,
    /// item → the answers it needs now, where adaptive overlap raised it above `raters_per_item`.
    pub raised: BTreeMap<ItemId, u32>,
    /// Excluded annotators, with the evidence.
    pub excluded: BTreeMap<String, GoldEvidence>,
    /// The answers of excluded annotators, out of the verdicts: item → annotator → answer.
    pub set_aside: BTreeMap<ItemId, BTreeMap<String, Answer>>,
    /// Curators' decisions on split items.
    pub adjudications: BTreeMap<ItemId, Answer>,
    /// The answers each position needs (0 for gold items, which are served apart).
    need: Vec<u32>,
    /// annotator → answers on items that are not gold (for serving gold among them).
    regular_done: BTreeMap<String, u32>,
    /// Derived from the fields above by `evolve` (never stored), so that assigning and
    /// submitting cost the same in a round of ten items or of a hundred thousand.
    load: Vec<u32>,
    /// annotator → item position → lease end, of assignments not yet rated (lapsed ones too).
    open: BTreeMap<String, BTreeMap<usize, DateTime<Utc>>>,
    /// The same assignments ordered by when their lease ends.
    expiries: BTreeSet<(DateTime<Utc>, usize, String)>,
    /// Annotations submitted (and not withdrawn).
    done: u64,
    /// For each load, the positions of the items with that load below their need: the
    /// candidates for assignment in the order the rule prefers them.
    by_load: Vec<BTreeSet<usize>>,
    /// Answers the items need in all (gold items apart).
    total_need: u64,
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

    /// Annotations submitted on items that are not gold, and annotations those items need in all.
    pub fn progress(&self) -> (u64, u64) {
        (self.done, self.total_need)
    }

    /// The answers item `item_id` needs now: `raters_per_item`, or more where its answers split.
    pub fn needed(&self, item_id: ItemId) -> u32 {
        self.raised.get(&item_id).copied().unwrap_or(self.raters_per_item)
    }

    pub fn is_gold(&self, item_id: ItemId) -> bool {
        self.controls.gold.contains_key(&item_id)
    }

    /// `annotator`'s gold record: gold items answered (and scored), and answered right.
    pub fn gold_record(&self, annotator: &str) -> (u32, u32) {
        let (mut answered, mut correct) = (0, 0);
        for (item_id, gold) in &self.controls.gold {
            let answer = self
                .submissions
                .get(item_id)
                .and_then(|s| s.get(annotator))
                .or_else(|| self.set_aside.get(item_id).and_then(|s| s.get(annotator)));
            if let Some(right) = answer.and_then(|a| gold.scores(a)) {
                answered += 1;
                correct += u32::from(right);
            }
        }
        (answered, correct)
    }

    /// How decided an item's answers are: the smallest gap between the two sides of any yes/no
    /// question the verdict rests on (for round 1 also quality at or above the threshold against
    /// below it; for pairs left against right). Unanimous answers of n raters have margin n.
    pub fn margin(&self, item: &RoundItem, answers: &[&Answer]) -> u32 {
        let n = answers.len() as u32;
        let count = |pred: &dyn Fn(&Answer) -> bool| answers.iter().filter(|a| pred(a)).count() as u32;
        let gap = |yes: u32| yes.abs_diff(n - yes);
        let threshold = self.quality_threshold.map_or(DEFAULT_QUALITY_THRESHOLD, Quality::get);
        match (self.kind, &item.content) {
            (_, ItemContent::Pair { .. }) => {
                let left = count(&|a| matches!(a, Answer::Compare { preferred: Side::Left }));
                left.abs_diff(count(&|a| matches!(a, Answer::Compare { preferred: Side::Right })))
            }
            (Some(RoundKind::Screen), _) => {
                let group = gap(count(&|a| matches!(a, Answer::Screen { group_depicted: true, .. })));
                let concept = gap(count(&|a| matches!(a, Answer::Screen { concept_present: true, .. })));
                let good = gap(count(&|a| matches!(a, Answer::Screen { quality, .. } if quality.get() >= threshold)));
                group.min(concept).min(good)
            }
            _ => gap(count(&|a| {
                matches!(a, Answer::Baseline { concept_present: true } | Answer::Check { concept_present: true, .. })
            })),
        }
    }

    fn answers(&self, item_id: ItemId) -> Vec<&Answer> {
        self.submissions.get(&item_id).map(|s| s.values().collect()).unwrap_or_default()
    }

    /// Whether `item` has all its answers and they still split at the most raters adaptive
    /// overlap allows (never without adaptive overlap, or once adjudicated).
    fn awaits_adjudication(&self, item: &RoundItem) -> bool {
        let Some(overlap) = self.controls.overlap else { return false };
        let answers = self.answers(item.item_id);
        !self.is_gold(item.item_id)
            && !self.adjudications.contains_key(&item.item_id)
            && answers.len() as u32 >= self.needed(item.item_id).max(overlap.max_raters)
            && self.margin(item, &answers) < overlap.margin
    }

    /// The items waiting for a curator's adjudication, in round order.
    pub fn adjudication_queue(&self) -> Vec<ItemId> {
        self.items.iter().filter(|item| self.awaits_adjudication(item)).map(|item| item.item_id).collect()
    }

    /// The gold item `annotator` should see next, if it is their turn for one: gold items are
    /// spread through each annotator's tasks, one per `period` other answers (the first halfway
    /// into the first period), each at most once per annotator. `period` is the round's
    /// proportion of other items to gold, but at most [`MAX_GOLD_PERIOD`]: an annotator rates
    /// only a share of a large round's items, and spread at the round's proportion they would
    /// meet too few gold items for the exclusion rule to judge them before the round ends.
    fn next_gold(&self, annotator: &str) -> Option<usize> {
        let gold = self.controls.gold.len() as u32;
        if gold == 0 {
            return None;
        }
        let regular = self.items.len() as u32 - gold;
        let period = (regular / gold).clamp(1, MAX_GOLD_PERIOD);
        let seen = self
            .controls
            .gold
            .keys()
            .filter(|item_id| {
                self.has_submitted(**item_id, annotator)
                    || self.assignments.contains_key(&(**item_id, annotator.to_string()))
            })
            .count() as u32;
        let done = self.regular_done.get(annotator).copied().unwrap_or(0);
        if seen >= gold || done < seen * period + period / 2 {
            return None;
        }
        self.controls
            .gold
            .keys()
            .find(|item_id| {
                !self.has_submitted(**item_id, annotator)
                    && !self.assignments.contains_key(&(**item_id, annotator.to_string()))
            })
            .and_then(|item_id| self.index.get(item_id).copied())
    }

    /// The item `annotator` should rate next: their gold item if it is its turn; else among
    /// items they have not rated that still need raters, the one with the fewest ratings plus
    /// live assignments, the earliest on a tie.
    fn next_item(&self, annotator: &str, now: DateTime<Utc>) -> Option<usize> {
        if let Some(position) = self.next_gold(annotator) {
            return Some(position);
        }
        // `load` counts every open assignment; lapsed ones no longer hold their item.
        let mut lapsed: BTreeMap<usize, u32> = BTreeMap::new();
        for (_, position, _) in self.expiries.iter().take_while(|(expires, _, _)| *expires <= now) {
            *lapsed.entry(*position).or_default() += 1;
        }
        let eligible = |position: usize| !self.has_submitted(self.items[position].item_id, annotator);
        let mut best: Option<(u32, usize)> = None;
        for (&position, &count) in &lapsed {
            let taken = self.load[position] - count;
            if taken < self.need[position] && best.is_none_or(|b| (taken, position) < b) && eligible(position) {
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
            if !self.is_gold(item_id) {
                self.done -= 1;
                if let Some(done) = self.regular_done.get_mut(annotator) {
                    *done -= 1;
                }
            }
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
        if load < self.need[position] {
            if self.by_load.len() <= load as usize {
                self.by_load.resize_with(load as usize + 1, BTreeSet::new);
            }
            self.by_load[load as usize].insert(position);
        }
    }

    fn index_pair_at(&mut self, position: usize, item_id: ItemId, annotator: &str) {
        if self.has_submitted(item_id, annotator) {
            self.set_load(position, self.load[position] + 1);
            if !self.is_gold(item_id) {
                self.done += 1;
                *self.regular_done.entry(annotator.to_string()).or_default() += 1;
            }
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

    /// `item`'s outcome when the round closes; `labels` are Dawid–Skene's answers to the yes/no
    /// questions, by item, where the round aggregates that way.
    fn outcome(&self, item: &RoundItem, labels: Option<&Labels>) -> ItemOutcome {
        let answers = self.answers(item.item_id);
        let n = answers.len() as u32;
        let decided = |verdict, adjudicated, aggregation| ItemOutcome {
            item_id: item.item_id,
            n,
            verdict,
            adjudicated,
            aggregation,
        };
        if let Some(decision) = self.adjudications.get(&item.item_id) {
            return decided(self.verdict(item, &[decision], None), true, Aggregation::Majority);
        }
        match labels.and_then(|labels| labels.get(&item.item_id)) {
            Some(label) if !answers.is_empty() => {
                decided(self.verdict(item, &answers, Some(*label)), false, Aggregation::DawidSkene)
            }
            _ => decided(self.verdict(item, &answers, None), false, Aggregation::Majority),
        }
    }

    /// Dawid–Skene's answers to the round's yes/no questions (the concept; for round 1 also the
    /// group), estimated over every single-image item's counted answers.
    fn dawid_skene_labels(&self) -> Labels {
        let annotators: Vec<&String> =
            self.submissions.values().flat_map(|answers| answers.keys()).collect::<BTreeSet<_>>().into_iter().collect();
        let images: Vec<&RoundItem> =
            self.items.iter().filter(|item| matches!(item.content, ItemContent::Image(_))).collect();
        let question = |pick: fn(&Answer) -> Option<bool>| -> Vec<bool> {
            let mut observations = Vec::new();
            for (index, item) in images.iter().enumerate() {
                for (who, answer) in self.submissions.get(&item.item_id).into_iter().flatten() {
                    if let (Some(value), Ok(annotator)) = (pick(answer), annotators.binary_search(&who)) {
                        observations.push(crate::aggregation::Observation { item: index, annotator, answer: value });
                    }
                }
            }
            let options = crate::aggregation::DawidSkeneOptions::default();
            match crate::aggregation::dawid_skene(images.len(), annotators.len(), &observations, &options) {
                Ok(estimate) => estimate.labels,
                Err(_) => vec![false; images.len()],
            }
        };
        let concept = question(|answer| match answer {
            Answer::Baseline { concept_present }
            | Answer::Check { concept_present, .. }
            | Answer::Screen { concept_present, .. } => Some(*concept_present),
            Answer::Compare { .. } => None,
        });
        let group = question(|answer| match answer {
            Answer::Screen { group_depicted, .. } => Some(*group_depicted),
            _ => None,
        });
        images
            .iter()
            .enumerate()
            .map(|(i, item)| (item.item_id, Label { concept: concept[i], group: group[i] }))
            .collect()
    }

    /// The verdict `answers` give `item`: majorities (or Dawid–Skene's `label`), the median
    /// quality for round 1, the mean for round 2.
    fn verdict(&self, item: &RoundItem, answers: &[&Answer], label: Option<Label>) -> Verdict {
        let n = answers.len() as u32;
        let count = |pred: &dyn Fn(&Answer) -> bool| answers.iter().filter(|a| pred(a)).count() as u32;
        let majority = |votes: u32| 2 * votes > n;
        if n == 0 {
            Verdict::Undecided
        } else {
            match (self.kind, &item.content) {
                (Some(RoundKind::Baseline), _) => {
                    let votes = count(&|a| matches!(a, Answer::Baseline { concept_present: true }));
                    let concept_present = label.map_or(majority(votes), |l| l.concept);
                    Verdict::Baseline { concept_present_votes: votes, concept_present }
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
                    let (group_depicted, concept_absent) = match label {
                        Some(label) => (label.group, !label.concept),
                        None => (majority(group), !majority(concept) && 2 * concept != n),
                    };
                    Verdict::Screen {
                        median_quality,
                        group_depicted_votes: group,
                        concept_present_votes: concept,
                        accepted: median_quality >= threshold && group_depicted && concept_absent,
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
                        concept_present: label.map_or(majority(concept), |l| l.concept),
                        mean_quality: f64::from(total) / f64::from(n),
                    }
                }
            }
        }
    }
}

/// Dawid–Skene's answers to an item's yes/no questions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Label {
    concept: bool,
    group: bool,
}

type Labels = BTreeMap<ItemId, Label>;

/// One annotator's record in a round: what `GET /v1/rounds/{id}/annotators` shows a curator.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnnotatorRecord {
    pub annotator: String,
    /// Answers on items that are not gold (counted or, once excluded, set aside).
    pub submitted: u32,
    pub gold_answers: u32,
    pub gold_correct: u32,
    /// `gold_correct / gold_answers` with its Wilson 95% interval; absent without gold answers.
    pub gold_accuracy: Option<f64>,
    pub gold_accuracy_ci: Option<(f64, f64)>,
    /// Share of their answers on the concept (or, for pairs, the preferred side) that agree
    /// with the item's current majority; items tied without them are skipped.
    pub agreement: Option<f64>,
    /// Why they are excluded, if they are.
    pub excluded: Option<GoldEvidence>,
}

impl AnnotationRound {
    /// Every annotator who answered or holds a task, by name.
    pub fn annotator_records(&self) -> Vec<AnnotatorRecord> {
        let key = |answer: &Answer| match answer {
            Answer::Baseline { concept_present }
            | Answer::Check { concept_present, .. }
            | Answer::Screen { concept_present, .. } => *concept_present,
            Answer::Compare { preferred } => *preferred == Side::Right,
        };
        let mut names: BTreeSet<&str> = self.assignments.keys().map(|(_, who)| who.as_str()).collect();
        for answers in self.submissions.values().chain(self.set_aside.values()) {
            names.extend(answers.keys().map(String::as_str));
        }
        names
            .into_iter()
            .map(|annotator| {
                let (gold_answers, gold_correct) = self.gold_record(annotator);
                let (mut submitted, mut agreeing, mut compared) = (0u32, 0u32, 0u32);
                for item in self.items.iter().filter(|item| !self.is_gold(item.item_id)) {
                    let counted = self.submissions.get(&item.item_id);
                    let own = counted
                        .and_then(|s| s.get(annotator))
                        .or_else(|| self.set_aside.get(&item.item_id).and_then(|s| s.get(annotator)));
                    let Some(own) = own else { continue };
                    submitted += 1;
                    let votes: Vec<bool> = counted.map(|s| s.values().map(key).collect()).unwrap_or_default();
                    let yes = votes.iter().filter(|v| **v).count();
                    if votes.is_empty() || 2 * yes == votes.len() {
                        continue;
                    }
                    compared += 1;
                    agreeing += u32::from(key(own) == (2 * yes > votes.len()));
                }
                let ci = (gold_answers > 0)
                    .then(|| crate::planning::wilson_interval(u64::from(gold_correct), u64::from(gold_answers), Z95));
                AnnotatorRecord {
                    annotator: annotator.to_string(),
                    submitted,
                    gold_answers,
                    gold_correct,
                    gold_accuracy: (gold_answers > 0).then(|| f64::from(gold_correct) / f64::from(gold_answers)),
                    gold_accuracy_ci: ci,
                    agreement: (compared > 0).then(|| f64::from(agreeing) / f64::from(compared)),
                    excluded: self.excluded.get(annotator).copied(),
                }
            })
            .collect()
    }

    fn not_excluded(&self, annotator: &str) -> Result<(), DomainError> {
        match self.excluded.get(annotator) {
            Some(evidence) => Err(DomainError::Forbidden {
                message: format!(
                    "{annotator} is excluded from this round: {} of {} gold answers right (accuracy at most {:.2})",
                    evidence.gold_correct, evidence.gold_answers, evidence.accuracy_upper_bound
                ),
            }),
            None => Ok(()),
        }
    }

    /// What follows `annotator`'s `answer` on `item` (not yet applied): one more rater for the
    /// item if its answers now split, and the annotator's exclusion if a gold answer makes the
    /// rule fire.
    fn after_submission(
        &self,
        round_id: RoundId,
        item: &RoundItem,
        annotator: &str,
        answer: &Answer,
    ) -> Vec<RoundEvent> {
        let mut events = Vec::new();
        if let Some(gold) = self.controls.gold.get(&item.item_id) {
            if let (Some(rule), Some(right)) = (self.controls.exclusion, gold.scores(answer)) {
                let (answered, correct) = self.gold_record(annotator);
                let (answered, correct) = (answered + 1, correct + u32::from(right));
                let (_, upper) = crate::planning::wilson_interval(u64::from(correct), u64::from(answered), Z95);
                if answered >= rule.min_gold_answers && upper < rule.min_accuracy {
                    events.push(RoundEvent::AnnotatorExcluded {
                        round_id,
                        annotator: annotator.to_string(),
                        rule,
                        evidence: GoldEvidence {
                            gold_answers: answered,
                            gold_correct: correct,
                            accuracy_upper_bound: upper,
                        },
                    });
                }
            }
            return events;
        }
        if let Some(overlap) = self.controls.overlap {
            let needed = self.needed(item.item_id);
            let mut answers = self.answers(item.item_id);
            answers.push(answer);
            let margin = self.margin(item, &answers);
            if answers.len() as u32 == needed && needed < overlap.max_raters && margin < overlap.margin {
                events.push(RoundEvent::RaterAdded { round_id, item_id: item.item_id, raters: needed + 1, margin });
            }
        }
        events
    }
}

/// A round's controls, checked against its items and settings.
fn check_controls(
    kind: RoundKind,
    items: &[RoundItem],
    raters_per_item: u32,
    controls: &RoundControls,
) -> Result<(), DomainError> {
    for (item_id, gold) in &controls.gold {
        let Some(item) = items.iter().find(|item| item.item_id == *item_id) else {
            return Err(DomainError::invalid("gold", format!("names item {item_id}, which the round does not hold")));
        };
        if matches!(item.content, ItemContent::Pair { .. }) {
            return Err(DomainError::invalid(
                "gold",
                format!("item {item_id} is a pair: gold items are single images"),
            ));
        }
        let asks = match kind {
            RoundKind::Screen => gold.concept_present.is_some() || gold.group_depicted.is_some(),
            RoundKind::Baseline | RoundKind::Check => gold.concept_present.is_some(),
        };
        if !asks {
            return Err(DomainError::invalid(
                "gold",
                format!("item {item_id} knows no answer to a question this round asks"),
            ));
        }
    }
    if !controls.gold.is_empty() && controls.gold.len() >= items.len() {
        return Err(DomainError::invalid("gold", "a round needs items besides its gold items"));
    }
    if let Some(rule) = controls.exclusion {
        if controls.gold.is_empty() {
            return Err(DomainError::invalid("exclusion", "needs gold items to score annotators on"));
        }
        if rule.min_gold_answers == 0 || !(rule.min_accuracy > 0.0 && rule.min_accuracy <= 1.0) {
            return Err(DomainError::invalid(
                "exclusion",
                "needs at least 1 gold answer and a minimum accuracy in (0, 1]",
            ));
        }
    }
    if let Some(overlap) = controls.overlap
        && (!(raters_per_item..=MAX_RATERS_PER_ITEM).contains(&overlap.max_raters) || overlap.margin == 0)
    {
        return Err(DomainError::invalid(
            "overlap",
            format!(
                "needs max_raters from raters_per_item ({raters_per_item}) to {MAX_RATERS_PER_ITEM} and a margin of at least 1"
            ),
        ));
    }
    Ok(())
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
                controls,
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
                    // A team's own picture, screened for training in round 1, and a gold picture
                    // came from no model.
                    let unmodelled = item.label.models.is_empty()
                        && (kind == RoundKind::Screen || controls.gold.contains_key(&item.item_id));
                    if item.label.models.len() != images && !unmodelled {
                        return Err(DomainError::invalid(
                            "items",
                            format!("item {} must name the model of each of its {images} image(s)", item.item_id),
                        ));
                    }
                }
                check_controls(kind, &items, raters_per_item, &controls)?;
                Ok(vec![RoundEvent::RoundOpened {
                    round_id,
                    kind,
                    items,
                    raters_per_item,
                    quality_threshold,
                    assignment_lease_seconds,
                    campaign_id,
                    controls,
                }])
            }
            RoundCommand::AssignNext { annotator, now } => {
                let round_id = self.open_id()?;
                let annotator = String::from(Name::parse("annotator", &annotator)?);
                self.not_excluded(&annotator)?;
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
                self.not_excluded(&annotator)?;
                let item =
                    self.item(item_id).ok_or(DomainError::NotFound { entity: "item", id: item_id.to_string() })?;
                if self.has_submitted(item_id, &annotator) {
                    return Err(DomainError::AlreadyAnnotated { annotator, item: item_id.to_string() });
                }
                if !self.assignments.contains_key(&(item_id, annotator.clone())) {
                    return Err(DomainError::NotAssigned { annotator, item: item_id.to_string() });
                }
                let needed = self.needed(item_id);
                if !self.is_gold(item_id) && self.submitted(item_id) >= needed as usize {
                    return Err(DomainError::ItemComplete { item: item_id.to_string(), needed });
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
                let mut events =
                    vec![RoundEvent::AnnotationSubmitted { round_id, item_id, annotator: annotator.clone(), answer }];
                events.extend(self.after_submission(round_id, item, &annotator, &answer));
                Ok(events)
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
            RoundCommand::Close { allow_incomplete, leave_out_unadjudicated } => {
                let round_id = self.open_id()?;
                let regular = self.items.iter().filter(|item| !self.is_gold(item.item_id));
                let short =
                    regular.filter(|item| self.submitted(item.item_id) < self.needed(item.item_id) as usize).count();
                if short > 0 && !allow_incomplete {
                    return Err(DomainError::WrongState {
                        entity: "round",
                        state: format!("missing annotations on {short} of {} items", self.items.len()),
                        action: "closing without allow_incomplete",
                    });
                }
                let left_out = self.adjudication_queue();
                let labels = (self.controls.aggregation == Aggregation::DawidSkene).then(|| self.dawid_skene_labels());
                if !left_out.is_empty() && !leave_out_unadjudicated {
                    return Err(DomainError::WrongState {
                        entity: "round",
                        state: format!("waiting for the adjudication of {} split items", left_out.len()),
                        action: "closing without adjudicating them or leaving them out",
                    });
                }
                let outcomes = self
                    .items
                    .iter()
                    .map(|item| match left_out.contains(&item.item_id) {
                        true => ItemOutcome {
                            item_id: item.item_id,
                            n: self.submitted(item.item_id) as u32,
                            verdict: Verdict::Undecided,
                            adjudicated: false,
                            aggregation: Aggregation::Majority,
                        },
                        false => self.outcome(item, labels.as_ref()),
                    })
                    .collect();
                Ok(vec![RoundEvent::RoundClosed {
                    round_id,
                    kind: self.kind.unwrap_or(RoundKind::Screen),
                    outcomes,
                    left_out,
                }])
            }
            RoundCommand::Adjudicate { item_id, answer, reason } => {
                let round_id = self.open_id()?;
                let item =
                    self.item(item_id).ok_or(DomainError::NotFound { entity: "item", id: item_id.to_string() })?;
                if !self.awaits_adjudication(item) {
                    return Err(DomainError::WrongState {
                        entity: "item",
                        state: "not waiting for adjudication (only items still split at the most raters do)".into(),
                        action: "adjudicating it",
                    });
                }
                if !self.answer_fits(item, &answer) {
                    return Err(DomainError::invalid("answer", "does not fit the round and item"));
                }
                let reason = String::from(Sentence::parse("reason", &reason)?);
                Ok(vec![RoundEvent::ItemAdjudicated { round_id, item_id, answer, reason }])
            }
            RoundCommand::Reinstate { annotator, reason } => {
                let round_id = self.open_id()?;
                if !self.excluded.contains_key(&annotator) {
                    return Err(DomainError::NotFound { entity: "exclusion", id: format!("of {annotator}") });
                }
                let reason = String::from(Sentence::parse("reason", &reason)?);
                Ok(vec![RoundEvent::AnnotatorReinstated { round_id, annotator, reason }])
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
                controls,
            } => {
                self.id = Some(*round_id);
                self.status = RoundStatus::Open;
                self.kind = Some(*kind);
                self.index = items.iter().enumerate().map(|(i, item)| (item.item_id, i)).collect();
                self.items = items.clone();
                self.load = vec![0; items.len()];
                self.need = items
                    .iter()
                    .map(|item| if controls.gold.contains_key(&item.item_id) { 0 } else { *raters_per_item })
                    .collect();
                self.total_need = self.need.iter().map(|n| u64::from(*n)).sum();
                self.by_load = (0..*raters_per_item).map(|_| BTreeSet::new()).collect();
                if let Some(unrated) = self.by_load.first_mut() {
                    unrated.extend((0..items.len()).filter(|position| self.need[*position] > 0));
                }
                self.controls = controls.clone();
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
            RoundEvent::RaterAdded { item_id, raters, .. } => {
                if let Some(&position) = self.index.get(item_id) {
                    self.total_need = self.total_need - u64::from(self.need[position]) + u64::from(*raters);
                    self.need[position] = *raters;
                    self.raised.insert(*item_id, *raters);
                    self.set_load(position, self.load[position]);
                }
            }
            RoundEvent::AnnotatorExcluded { annotator, evidence, .. } => {
                let held: Vec<ItemId> = self
                    .assignments
                    .keys()
                    .filter(|(_, who)| who == annotator)
                    .map(|(item_id, _)| *item_id)
                    .chain(self.submissions.iter().filter(|(_, s)| s.contains_key(annotator)).map(|(id, _)| *id))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                for item_id in held {
                    self.unindex_pair(item_id, annotator);
                    self.assignments.remove(&(item_id, annotator.clone()));
                    if let Some(answer) = self.submissions.get_mut(&item_id).and_then(|s| s.remove(annotator)) {
                        self.set_aside.entry(item_id).or_default().insert(annotator.clone(), answer);
                    }
                }
                self.excluded.insert(annotator.clone(), *evidence);
            }
            RoundEvent::AnnotatorReinstated { annotator, .. } => {
                self.excluded.remove(annotator);
                let back: Vec<(ItemId, Answer)> = self
                    .set_aside
                    .iter_mut()
                    .filter_map(|(item_id, answers)| answers.remove(annotator).map(|answer| (*item_id, answer)))
                    .collect();
                self.set_aside.retain(|_, answers| !answers.is_empty());
                for (item_id, answer) in back {
                    self.submissions.entry(item_id).or_default().insert(annotator.clone(), answer);
                    self.index_pair(item_id, annotator);
                }
            }
            RoundEvent::ItemAdjudicated { item_id, answer, .. } => {
                self.adjudications.insert(*item_id, *answer);
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
        open_with(kind, items, k, RoundControls::default())
    }

    fn open_with(kind: RoundKind, items: Vec<RoundItem>, k: u32, controls: RoundControls) -> AnnotationRound {
        AnnotationRound::default()
            .then(RoundCommand::Open {
                round_id: RoundId(Uuid::from_u128(1)),
                kind,
                items,
                raters_per_item: k,
                quality_threshold: Quality::new(3).unwrap(),
                assignment_lease_seconds: 600,
                campaign_id: None,
                controls,
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
            .filter(|(taken, _, item_id)| *taken < round.needed(*item_id) as usize && !round.is_gold(*item_id))
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
            // Half the histories let split items call for more raters.
            let controls = RoundControls {
                overlap: (next(2) == 0).then_some(AdaptiveOverlap { max_raters: k + 2, margin: 2 }),
                ..RoundControls::default()
            };
            let mut round = open_with(RoundKind::Screen, items, k, controls);
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
                        Some(item_id) => RoundCommand::Submit {
                            annotator: who.into(),
                            item_id,
                            answer: screen(2 + next(3) as u8, next(4) > 0, next(4) == 0),
                        },
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
        let (round, _) = round.then(RoundCommand::Close { allow_incomplete: false, leave_out_unadjudicated: false });
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
        then_error(round.decide(RoundCommand::Close { allow_incomplete: true, leave_out_unadjudicated: false }), |e| {
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
        then_error(
            round.decide(RoundCommand::Close { allow_incomplete: false, leave_out_unadjudicated: false }),
            |e| matches!(e, DomainError::WrongState { .. }),
        );
        let (_, events) = round.then(RoundCommand::Close { allow_incomplete: true, leave_out_unadjudicated: false });
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
        let (_, events) = round.then(RoundCommand::Close { allow_incomplete: false, leave_out_unadjudicated: false });
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
        let (_, events) = round.then(RoundCommand::Close { allow_incomplete: false, leave_out_unadjudicated: false });
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
                controls: RoundControls::default(),
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
                controls: RoundControls::default(),
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

    fn check(concept: bool) -> Answer {
        Answer::Check { concept_present: concept, quality: Quality::new(4).unwrap() }
    }

    /// Every event of `round`'s history applied again, from nothing: the state a replay sees.
    fn replayed(events: &[RoundEvent]) -> AnnotationRound {
        AnnotationRound::default().apply_all(events)
    }

    /// In a large round an annotator meets gold at most `MAX_GOLD_PERIOD` answers apart, not at
    /// the round's proportion (here one gold item per 100 others), so the rule can judge them early.
    #[test]
    fn gold_items_come_at_most_max_gold_period_answers_apart_in_a_large_round() {
        let gold = Gold { concept_present: Some(false), group_depicted: None };
        let items: Vec<RoundItem> = (1..=400).chain(1001..=1004).map(image_item).collect();
        let controls = RoundControls {
            gold: (1001..=1004).map(|n| (image_item(n).item_id, gold)).collect(),
            ..RoundControls::default()
        };
        let mut round = open_with(RoundKind::Check, items, 3, controls);
        let mut gold_at = Vec::new();
        for answer in 0..40 {
            let (next, _) = round.then(RoundCommand::AssignNext { annotator: "a".into(), now: t(answer) });
            let item_id = next.current_task("a", t(answer)).expect("a task");
            if next.is_gold(item_id) {
                gold_at.push(answer);
            }
            round = next.then(RoundCommand::Submit { annotator: "a".into(), item_id, answer: check(false) }).0;
        }
        // The first halfway into the first period, then one after every MAX_GOLD_PERIOD others.
        let period = MAX_GOLD_PERIOD as i64;
        let expected: Vec<i64> = (0..4).map(|k| period / 2 + k * (period + 1)).collect();
        assert_eq!(gold_at, expected);
        assert_eq!(round.gold_record("a"), (4, 4));
    }

    #[test]
    fn a_careless_annotator_is_excluded_by_the_rule_and_their_answers_leave_the_verdicts() {
        let gold = Gold { concept_present: Some(false), group_depicted: Some(true) };
        let regular: Vec<RoundItem> = (1..=8).map(image_item).collect();
        let golden: Vec<RoundItem> = (101..=104).map(image_item).collect();
        let controls = RoundControls {
            gold: golden.iter().map(|item| (item.item_id, gold)).collect(),
            exclusion: Some(ExclusionRule { min_gold_answers: 4, min_accuracy: 0.8 }),
            ..RoundControls::default()
        };
        let items: Vec<RoundItem> = regular.iter().chain(&golden).cloned().collect();
        let (mut round, mut history) = AnnotationRound::default().then(RoundCommand::Open {
            round_id: RoundId(Uuid::from_u128(1)),
            kind: RoundKind::Screen,
            items,
            raters_per_item: 2,
            quality_threshold: Quality::new(3).unwrap(),
            assignment_lease_seconds: 600,
            campaign_id: None,
            controls,
        });
        let mut served: BTreeMap<&str, Vec<ItemId>> = BTreeMap::new();
        let mut minute = 0;
        'work: loop {
            let mut worked = false;
            for who in ["good", "bad"] {
                minute += 1;
                let Ok(events) = round.decide(RoundCommand::AssignNext { annotator: who.into(), now: t(minute) })
                else {
                    continue;
                };
                history.extend(events.clone());
                round = round.apply_all(&events);
                let Some(item_id) = round.current_task(who, t(minute)) else { continue };
                served.entry(who).or_default().push(item_id);
                let answer = match (round.is_gold(item_id), who) {
                    (true, "bad") => screen(4, false, true),
                    _ => screen(4, true, false),
                };
                let events = round.decide(RoundCommand::Submit { annotator: who.into(), item_id, answer }).unwrap();
                history.extend(events.clone());
                round = round.apply_all(&events);
                worked = true;
                if round.excluded.contains_key("bad") && served["bad"].len() > 20 {
                    break 'work;
                }
            }
            if !worked {
                break;
            }
        }
        // Gold items come among the others, one per two other items, never first.
        let good = &served["good"];
        assert!(!round.is_gold(good[0]), "{good:?}");
        assert_eq!(good.iter().filter(|i| round.is_gold(**i)).count(), 4, "{good:?}");
        assert_eq!(round.gold_record("good"), (4, 4));
        // The rule fired on the fourth wrong gold answer, with the evidence.
        let exclusion = history.iter().find_map(|e| match e {
            RoundEvent::AnnotatorExcluded { annotator, rule, evidence, .. } => {
                Some((annotator.clone(), *rule, *evidence))
            }
            _ => None,
        });
        let (annotator, rule, evidence) = exclusion.expect("the careless annotator is excluded");
        assert_eq!((annotator.as_str(), rule.min_gold_answers), ("bad", 4));
        assert_eq!((evidence.gold_answers, evidence.gold_correct), (4, 0));
        // Wilson's upper bound of 0 of 4: z²/(4 + z²).
        let z2 = Z95 * Z95;
        assert!((evidence.accuracy_upper_bound - z2 / (4.0 + z2)).abs() < 1e-12, "{evidence:?}");
        // Their answers left the verdicts (kept aside), so their items went back to the good
        // annotator... who rated every item once already: the items lack their second answer.
        assert!(round.submissions.values().all(|answers| !answers.contains_key("bad")));
        let aside: usize = round.set_aside.values().filter(|a| a.contains_key("bad")).count();
        assert!(aside >= 4, "{:?}", round.set_aside);
        assert_eq!(round.progress(), (8, 16), "only the good annotator's 8 answers count");
        // No more tasks, no more answers.
        let refused = |e: &DomainError| matches!(e, DomainError::Forbidden { message } if message.contains("excluded"));
        then_error(round.decide(RoundCommand::AssignNext { annotator: "bad".into(), now: t(minute) }), refused);
        then_error(
            round.decide(RoundCommand::Submit {
                annotator: "bad".into(),
                item_id: item(1),
                answer: screen(4, true, false),
            }),
            refused,
        );
        // What a curator sees per annotator.
        let records = round.annotator_records();
        let record = |name: &str| records.iter().find(|r| r.annotator == name).unwrap().clone();
        let (good, bad) = (record("good"), record("bad"));
        assert_eq!((good.gold_answers, good.gold_correct, good.gold_accuracy), (4, 4, Some(1.0)));
        assert_eq!((good.submitted, good.excluded, good.agreement), (8, None, Some(1.0)));
        assert_eq!((bad.gold_answers, bad.gold_correct, bad.gold_accuracy), (4, 0, Some(0.0)));
        assert_eq!((bad.submitted, bad.excluded), (aside as u32 - 4, Some(evidence)));
        let (low, high) = bad.gold_accuracy_ci.unwrap();
        assert!(low == 0.0 && (high - evidence.accuracy_upper_bound).abs() < 1e-12);
        // A replay of the log sees the same round.
        assert_eq!(replayed(&history), round);
        // A curator reinstates: the answers count again.
        let events = round
            .decide(RoundCommand::Reinstate {
                annotator: "bad".into(),
                reason: "the gold answers were mislabelled".into(),
            })
            .unwrap();
        history.extend(events.clone());
        round = round.apply_all(&events);
        assert!(round.excluded.is_empty() && round.set_aside.is_empty());
        assert_eq!(round.progress().0, 8 + (aside as u64 - 4), "the careless annotator's other answers are back");
        assert_eq!(replayed(&history), round);
        then_error(
            round.decide(RoundCommand::Reinstate { annotator: "good".into(), reason: "never excluded".into() }),
            |e| matches!(e, DomainError::NotFound { .. }),
        );
    }

    /// One image of round 2, rated by as many annotators as it asks for, answering `votes` in turn.
    fn rate_one(votes: &[bool], overlap: AdaptiveOverlap) -> (AnnotationRound, Vec<RoundEvent>) {
        let controls = RoundControls { overlap: Some(overlap), ..RoundControls::default() };
        let (mut round, mut history) = AnnotationRound::default().then(RoundCommand::Open {
            round_id: RoundId(Uuid::from_u128(1)),
            kind: RoundKind::Check,
            items: vec![image_item(1)],
            raters_per_item: 3,
            quality_threshold: Quality::new(3).unwrap(),
            assignment_lease_seconds: 600,
            campaign_id: None,
            controls,
        });
        for (i, vote) in votes.iter().enumerate() {
            let who = format!("annotator-{i}");
            let events = round.decide(RoundCommand::AssignNext { annotator: who.clone(), now: t(0) }).unwrap();
            round = round.apply_all(&events);
            history.extend(events);
            let Some(item_id) = round.current_task(&who, t(0)) else { break };
            let events = round.decide(RoundCommand::Submit { annotator: who, item_id, answer: check(*vote) }).unwrap();
            round = round.apply_all(&events);
            history.extend(events);
        }
        (round, history)
    }

    #[test]
    fn adaptive_overlap_gives_a_split_item_more_raters_and_a_clear_one_none() {
        let overlap = AdaptiveOverlap { max_raters: 5, margin: 2 };
        let added = |history: &[RoundEvent]| {
            history
                .iter()
                .filter_map(|e| if let RoundEvent::RaterAdded { raters, .. } = e { Some(*raters) } else { None })
                .collect::<Vec<_>>()
        };
        // Unanimous: three raters, no more; a fourth annotator gets nothing.
        let (clear, history) = rate_one(&[true, true, true, true], overlap);
        assert_eq!(added(&history), Vec::<u32>::new());
        assert_eq!(clear.submitted(item(1)), 3);
        assert!(clear.adjudication_queue().is_empty());
        // 2–1 splits: a fourth rater; 3–1 is decided.
        let (decided, history) = rate_one(&[true, false, true, true, true], overlap);
        assert_eq!(added(&history), vec![4]);
        assert_eq!((decided.submitted(item(1)), decided.progress()), (4, (4, 4)));
        // Split to the end: raters up to five, then the curator's queue.
        let (split, mut history) = rate_one(&[true, false, true, false, true, false], overlap);
        assert_eq!(added(&history), vec![4, 5]);
        assert_eq!(split.submitted(item(1)), 5);
        assert_eq!(split.adjudication_queue(), vec![item(1)]);
        then_error(
            split.decide(RoundCommand::Close { allow_incomplete: false, leave_out_unadjudicated: false }),
            |e| matches!(e, DomainError::WrongState { .. }),
        );
        // Left out by a curator's decision: no verdict, and the closing event says which.
        let (_, events) =
            split.clone().then(RoundCommand::Close { allow_incomplete: false, leave_out_unadjudicated: true });
        let [RoundEvent::RoundClosed { left_out, outcomes, .. }] = &events[..] else { panic!("{events:?}") };
        assert_eq!((left_out.clone(), outcomes[0].verdict.clone()), (vec![item(1)], Verdict::Undecided));
        // Adjudicated: the curator's answer decides, and the round closes.
        then_error(
            split.decide(RoundCommand::Adjudicate {
                item_id: item(1),
                answer: screen(4, true, false),
                reason: "x".into(),
            }),
            |e| matches!(e, DomainError::Invalid { field: "answer", .. }),
        );
        let events = split
            .decide(RoundCommand::Adjudicate {
                item_id: item(1),
                answer: check(true),
                reason: "a hippo behind the tree".into(),
            })
            .unwrap();
        history.extend(events.clone());
        let split = split.apply_all(&events);
        assert!(split.adjudication_queue().is_empty());
        then_error(
            split.decide(RoundCommand::Adjudicate { item_id: item(1), answer: check(false), reason: "again".into() }),
            |e| matches!(e, DomainError::WrongState { .. }),
        );
        let (closed, events) =
            split.then(RoundCommand::Close { allow_incomplete: false, leave_out_unadjudicated: false });
        history.extend(events);
        assert_eq!(
            closed.outcomes[0],
            ItemOutcome {
                item_id: item(1),
                n: 5,
                verdict: Verdict::Check { concept_present_votes: 1, concept_present: true, mean_quality: 4.0 },
                adjudicated: true,
                aggregation: Aggregation::Majority,
            }
        );
        assert_eq!(replayed(&history), closed);
        // A clear item cannot be adjudicated.
        then_error(
            clear.decide(RoundCommand::Adjudicate { item_id: item(1), answer: check(true), reason: "x".into() }),
            |e| matches!(e, DomainError::WrongState { .. }),
        );
    }

    #[test]
    fn controls_are_checked_against_the_rounds_items() {
        let opened = |kind, items: Vec<RoundItem>, controls| {
            AnnotationRound::default().decide(RoundCommand::Open {
                round_id: RoundId(Uuid::from_u128(1)),
                kind,
                items,
                raters_per_item: 3,
                quality_threshold: Quality::new(3).unwrap(),
                assignment_lease_seconds: 600,
                campaign_id: None,
                controls,
            })
        };
        let gold = |pairs: &[(u128, Gold)]| RoundControls {
            gold: pairs.iter().map(|(n, g)| (item(*n), *g)).collect(),
            ..RoundControls::default()
        };
        let concept = Gold { concept_present: Some(false), group_depicted: None };
        let group = Gold { concept_present: None, group_depicted: Some(true) };
        let two = || vec![image_item(1), image_item(2)];
        let invalid = |field: &'static str| move |e: &DomainError| matches!(e, DomainError::Invalid { field: f, .. } if *f == field);
        then_error(opened(RoundKind::Screen, two(), gold(&[(9, concept)])), invalid("gold"));
        then_error(opened(RoundKind::Screen, two(), gold(&[(1, concept), (2, concept)])), invalid("gold"));
        then_error(opened(RoundKind::Check, two(), gold(&[(1, group)])), invalid("gold"));
        assert!(opened(RoundKind::Screen, two(), gold(&[(1, group)])).is_ok());
        let rule = Some(ExclusionRule { min_gold_answers: 10, min_accuracy: 0.8 });
        then_error(
            opened(RoundKind::Screen, two(), RoundControls { exclusion: rule, ..RoundControls::default() }),
            invalid("exclusion"),
        );
        let zero = Some(ExclusionRule { min_gold_answers: 0, min_accuracy: 0.8 });
        then_error(
            opened(RoundKind::Screen, two(), RoundControls { exclusion: zero, ..gold(&[(1, concept)]) }),
            invalid("exclusion"),
        );
        for overlap in [
            AdaptiveOverlap { max_raters: 2, margin: 1 },
            AdaptiveOverlap { max_raters: 5, margin: 0 },
            AdaptiveOverlap { max_raters: 16, margin: 1 },
        ] {
            then_error(
                opened(RoundKind::Screen, two(), RoundControls { overlap: Some(overlap), ..RoundControls::default() }),
                invalid("overlap"),
            );
        }
        // Rounds without controls record none (their events read as before).
        let events = opened(RoundKind::Screen, two(), RoundControls::default()).unwrap();
        let json = serde_json::to_value(&events[0]).unwrap();
        assert!(json["RoundOpened"].get("controls").is_none(), "{json}");
    }

    #[test]
    fn gold_scores_only_the_questions_it_knows() {
        let gold = Gold { concept_present: Some(false), group_depicted: Some(true) };
        assert_eq!(gold.scores(&screen(1, true, false)), Some(true));
        assert_eq!(gold.scores(&screen(5, false, false)), Some(false));
        assert_eq!(gold.scores(&check(false)), Some(true));
        assert_eq!(gold.scores(&Answer::Compare { preferred: Side::Left }), None);
        assert_eq!(Gold::default().scores(&check(true)), None);
    }

    /// A round aggregated by Dawid–Skene: annotators of planted accuracies (two near chance)
    /// answer 300 pictures, three each; its verdicts are right clearly more often than each
    /// item's majority of the same answers (277 against 252 with this seed), and each outcome
    /// says how it was reached.
    #[test]
    fn dawid_skene_verdicts_beat_the_majority_when_some_raters_guess() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut uniform = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        let items: Vec<RoundItem> = (1..=300).map(image_item).collect();
        let truth: BTreeMap<ItemId, bool> = items.iter().map(|item| (item.item_id, uniform() < 0.3)).collect();
        let controls = RoundControls { aggregation: Aggregation::DawidSkene, ..RoundControls::default() };
        let mut round = open_with(RoundKind::Check, items, 3, controls);
        let annotators = [("a", 0.95), ("b", 0.92), ("c", 0.9), ("d", 0.88), ("e", 0.55), ("f", 0.5)];
        loop {
            let mut worked = false;
            for (who, accuracy) in annotators {
                let events = round.decide(RoundCommand::AssignNext { annotator: who.into(), now: t(0) }).unwrap();
                round = round.apply_all(&events);
                let Some(item_id) = round.current_task(who, t(0)) else { continue };
                let right = uniform() < accuracy;
                let answer = check(truth[&item_id] == right);
                let events = round.decide(RoundCommand::Submit { annotator: who.into(), item_id, answer }).unwrap();
                round = round.apply_all(&events);
                worked = true;
            }
            if !worked {
                break;
            }
        }
        let majority_right = round
            .submissions
            .iter()
            .filter(|(item_id, answers)| {
                let yes = answers.values().filter(|a| matches!(a, Answer::Check { concept_present: true, .. })).count();
                (2 * yes > answers.len()) == truth[*item_id]
            })
            .count();
        let (closed, _) = round.then(RoundCommand::Close { allow_incomplete: false, leave_out_unadjudicated: false });
        let ds_right = closed
            .outcomes
            .iter()
            .filter(
                |o| matches!(o.verdict, Verdict::Check { concept_present, .. } if concept_present == truth[&o.item_id]),
            )
            .count();
        assert!(closed.outcomes.iter().all(|o| o.aggregation == Aggregation::DawidSkene));
        assert!(
            ds_right >= majority_right + 15 && ds_right >= 270,
            "Dawid–Skene right on {ds_right} of 300, the majority on {majority_right}"
        );
        let json = serde_json::to_value(&closed.outcomes[0]).unwrap();
        assert_eq!(json["aggregation"], "dawid_skene", "{json}");
    }
}
