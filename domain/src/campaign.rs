//! A T-HITL campaign over one or more associations, and its process manager.
//!
//! The campaign is an aggregate that records which stage it is in and which work (generation
//! jobs, rounds, fine-tunes, model versions) belongs to each stage. The process manager is the
//! pure function [`next`]: given the campaign and the facts the caller read about its linked
//! work, it says what the campaign waits for or what it asks next. The runner in `api` turns
//! each [`Request`] into commands with fresh ids, links the new work, and calls `next` again.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, EventPayload};
use crate::error::DomainError;
use crate::fine_tune::{Arm, JobStatus, LoraConfig};
use crate::generation::SamplerSettings;
use crate::ids::{AssociationId, CampaignId, FineTuneId, GenerationId, ModelVersionId, PromptSetId, RoundId};
use crate::round::{DEFAULT_QUALITY_THRESHOLD, DEFAULT_RATERS_PER_ITEM, RoundStatus};
use crate::values::{BlobHash, Name, Quality, Sentence};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Probe images from the base model, rated for the concept: the rate before.
    Baseline,
    /// Training prompts generated, neutralised and reviewed.
    Curation,
    /// Candidate images from the neutral prompts (and a prior-preservation set).
    Candidates,
    /// Round 1: people screen candidates for quality.
    Round1,
    /// LoRA on the accepted candidates (and the traditional arm on all of them).
    FineTune,
    /// Round 2: held-out probes on base and fine-tuned versions, rated blind.
    Round2,
    /// Rates before and after, quality, win rates, agreement.
    Evaluation,
    /// A curator decides whether to promote the new version.
    AwaitingPromotion,
    Completed,
    Failed,
}

impl Stage {
    const ORDER: [Stage; 9] = [
        Stage::Baseline,
        Stage::Curation,
        Stage::Candidates,
        Stage::Round1,
        Stage::FineTune,
        Stage::Round2,
        Stage::Evaluation,
        Stage::AwaitingPromotion,
        Stage::Completed,
    ];

    fn following(self) -> Option<Stage> {
        let i = Self::ORDER.iter().position(|s| *s == self)?;
        Self::ORDER.get(i + 1).copied()
    }
}

/// Every field has the method's default, so a client names only what it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct CampaignSettings {
    /// Probe images per association and per model, before and after.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub probe_images_per_association: u32,
    /// Instead of a count: the rate the after-rate's upper 95% bound must fall under if no probe
    /// image shows the concept (e.g. 0.02). The campaign then takes the fewest probe images that
    /// can show it ([`crate::planning::images_for_upper_bound`]: 189 for 0.02) and records that
    /// count in `probe_images_per_association`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(exclusive_minimum = 0.0, exclusive_maximum = 1.0))]
    pub probe_rate_bound: Option<f64>,
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub training_prompts_per_association: u32,
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub candidates_per_prompt: u32,
    pub prior_preservation_images: u32,
    /// Side-by-side pairs per association in round 2.
    pub pairs_per_association: u32,
    /// Annotators per item, 1 to `MAX_RATERS_PER_ITEM`.
    pub raters_per_item: u32,
    pub quality_threshold: Quality,
    /// Accept generated prompts and complete without waiting for a curator.
    pub auto_accept: bool,
    /// Also run traditional fine-tuning (no round 1) as a comparison arm.
    pub traditional_arm: bool,
    pub lora: LoraConfig,
    pub sampler: SamplerSettings,
    pub seed: u64,
    /// The team's own training images (uploaded with `POST /v1/blobs`), screened in round 1
    /// beside the model's candidates and trained on like them when people accept them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub team_images: Vec<TeamImage>,
    /// How the campaign's rounds (baseline, 1 and 2) check their raters (none by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round_controls: Option<Box<CampaignRoundControls>>,
}

/// The quality controls a campaign gives each round it opens: the baseline round, rounds 1 and 2.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CampaignRoundControls {
    /// Gold items per association in each round: pictures whose answers the model family knows
    /// (the reference world renders them; an imported model's family knows none, so its rounds
    /// get none and no exclusion rule).
    #[serde(default)]
    pub gold_items_per_association: u32,
    #[serde(default)]
    pub exclusion: Option<crate::round::ExclusionRule>,
    #[serde(default)]
    pub overlap: Option<crate::round::AdaptiveOverlap>,
    #[serde(default)]
    pub aggregation: crate::round::Aggregation,
}

/// Most probe images per association a `probe_rate_bound` may call for (a bound of about 0.0002).
pub const MAX_PLANNED_PROBES: u64 = 20_000;

/// Most team images one campaign takes.
pub const MAX_TEAM_IMAGES: usize = 10_000;

/// One of a team's own training images: a PNG or JPEG at the base model's resolution, and the
/// prompt it illustrates for the association it is meant to help.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TeamImage {
    /// One of the campaign's associations.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = "uuid"))]
    pub association_id: AssociationId,
    /// SHA-256 of the image in the blob store.
    pub blob: BlobHash,
    /// What the image shows, as a training prompt (it names the group, not the concept).
    #[cfg_attr(feature = "openapi", schema(value_type = Sentence))]
    pub prompt: String,
}

impl Default for CampaignSettings {
    fn default() -> Self {
        CampaignSettings {
            probe_images_per_association: 256,
            probe_rate_bound: None,
            training_prompts_per_association: 24,
            candidates_per_prompt: 4,
            prior_preservation_images: 64,
            pairs_per_association: 32,
            raters_per_item: DEFAULT_RATERS_PER_ITEM,
            quality_threshold: Quality::new(DEFAULT_QUALITY_THRESHOLD).unwrap_or_else(|_| unreachable!()),
            auto_accept: false,
            traditional_arm: true,
            lora: LoraConfig::default(),
            sampler: SamplerSettings::default(),
            seed: 0,
            team_images: Vec::new(),
            round_controls: None,
        }
    }
}

/// Work a campaign started, linked to the stage it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Work {
    BaselineGeneration {
        generation_id: GenerationId,
    },
    BaselineRound {
        round_id: RoundId,
    },
    PromptSet {
        association_id: AssociationId,
        prompt_set_id: PromptSetId,
    },
    CandidateGeneration {
        generation_id: GenerationId,
    },
    PriorPreservationGeneration {
        generation_id: GenerationId,
    },
    Round1 {
        round_id: RoundId,
    },
    FineTune {
        arm: Arm,
        fine_tune_id: FineTuneId,
    },
    ModelVersion {
        arm: Arm,
        model_version_id: ModelVersionId,
    },
    /// `arm` None: the base model's images.
    EvaluationGeneration {
        arm: Option<Arm>,
        generation_id: GenerationId,
    },
    Round2 {
        round_id: RoundId,
    },
}

impl Work {
    fn stage(&self) -> Stage {
        match self {
            Work::BaselineGeneration { .. } | Work::BaselineRound { .. } => Stage::Baseline,
            Work::PromptSet { .. } => Stage::Curation,
            Work::CandidateGeneration { .. } | Work::PriorPreservationGeneration { .. } => Stage::Candidates,
            Work::Round1 { .. } => Stage::Round1,
            Work::FineTune { .. } | Work::ModelVersion { .. } => Stage::FineTune,
            Work::EvaluationGeneration { .. } | Work::Round2 { .. } => Stage::Round2,
        }
    }
}

/// A rate with its Wilson 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateEstimate {
    pub positives: u32,
    pub n: u32,
    pub rate: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssociationEvaluation {
    pub association_id: AssociationId,
    pub arm: Arm,
    pub before: RateEstimate,
    pub after: RateEstimate,
    pub quality_before: f64,
    pub quality_after: f64,
    /// Share of side-by-side pairs where people preferred the fine-tuned image.
    pub win_rate: Option<RateEstimate>,
    /// Krippendorff's alpha of the concept-presence answers in round 2.
    pub alpha: Option<f64>,
    /// Who judged `quality_before` / `quality_after` (absent in evaluations recorded before the
    /// field existed: those came from the reference world's rater).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_source: Option<QualitySource>,
    /// Round 2's people on the base model's images: the median over images of each image's
    /// mean quality answer (1–5), with a distribution-free 95% interval. Absent in evaluations
    /// recorded before the field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub people_quality_before: Option<MedianEstimate>,
    /// The same for the arm's model's images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub people_quality_after: Option<MedianEstimate>,
    /// How round 2 turned its yes/no answers into the verdicts the rates count (absent in
    /// evaluations recorded before the field existed: those were majorities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation: Option<crate::round::Aggregation>,
}

/// A median with its 95% interval: order statistics chosen by the binomial distribution of the
/// count of values below the true median, so the interval holds whatever the distribution
/// (at least 95% coverage; the two order statistics furthest out when `n` is too small for 95%).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MedianEstimate {
    pub n: u32,
    pub median: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

impl MedianEstimate {
    /// The estimate over `values` (NaN ignored); `None` when none is left.
    pub fn of(values: &[f64]) -> Option<MedianEstimate> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
        // The largest k (1-based) with P(Bin(n, ½) < k) ≤ 2.5%: then [x_(k), x_(n+1−k)] covers
        // the median with probability ≥ 95%.
        let k = order_statistic_rank(n);
        Some(MedianEstimate { n: n as u32, median, ci_low: sorted[k - 1], ci_high: sorted[n - k] })
    }
}

/// A campaign's team images: at most [`MAX_TEAM_IMAGES`], each for one of the campaign's
/// associations, with a prompt, and no image twice.
fn check_team_images(images: &[TeamImage], associations: &[AssociationId]) -> Result<(), DomainError> {
    if images.len() > MAX_TEAM_IMAGES {
        return Err(DomainError::invalid(
            "team_images",
            format!("holds {} images; a campaign takes at most {MAX_TEAM_IMAGES}", images.len()),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, image) in images.iter().enumerate() {
        if !associations.contains(&image.association_id) {
            return Err(DomainError::invalid(
                "team_images",
                format!("image {i} is for association {}, which the campaign does not name", image.association_id),
            ));
        }
        Sentence::parse("team_images.prompt", &image.prompt)?;
        if !seen.insert(&image.blob) {
            return Err(DomainError::invalid("team_images", format!("image {i} ({}) appears twice", image.blob)));
        }
    }
    Ok(())
}

/// The rank k ≥ 1 of the lower end of the median's 95% interval among `n` sorted values:
/// the largest k with P(Bin(n, ½) ≤ k − 1) ≤ 0.025 (1 when no such k exists).
fn order_statistic_rank(n: usize) -> usize {
    // P(Bin(n, ½) = i) computed in logs, so that large n neither overflows nor underflows early.
    let ln_half_n = -(n as f64) * std::f64::consts::LN_2;
    let mut ln_choose = 0.0f64; // ln C(n, 0)
    let mut below = 0.0f64; // P(Bin(n, ½) ≤ i)
    let mut k = 1;
    for i in 0..n {
        below += (ln_choose + ln_half_n).exp();
        if below > 0.025 {
            break;
        }
        k = i + 1;
        ln_choose += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    k.min(n.div_ceil(2))
}

/// Who judged an evaluation's image quality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QualitySource {
    /// The campaign's automatic rater (the reference world's shipped rater), on the 1–5 scale.
    Rater,
    /// The mean of round 2's human quality answers (1–5), where the campaign has no rater (an
    /// imported model).
    Round2People,
}

#[derive(Debug, Clone)]
pub enum CampaignCommand {
    Start {
        campaign_id: CampaignId,
        name: String,
        associations: Vec<AssociationId>,
        base_model: ModelVersionId,
        settings: CampaignSettings,
    },
    Link {
        work: Work,
    },
    /// Moves to the next stage, if [`next`] says the current one is done.
    Advance {
        facts: Facts,
    },
    RecordEvaluation {
        evaluations: Vec<AssociationEvaluation>,
    },
    /// Ends a campaign waiting for promotion: the curator decided (promoted or not).
    Conclude {
        promoted: Option<ModelVersionId>,
    },
    Fail {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CampaignEvent {
    CampaignStarted {
        campaign_id: CampaignId,
        name: String,
        associations: Vec<AssociationId>,
        base_model: ModelVersionId,
        settings: CampaignSettings,
    },
    WorkLinked {
        campaign_id: CampaignId,
        stage: Stage,
        work: Work,
    },
    StageEntered {
        campaign_id: CampaignId,
        stage: Stage,
    },
    EvaluationRecorded {
        campaign_id: CampaignId,
        evaluations: Vec<AssociationEvaluation>,
    },
    CampaignCompleted {
        campaign_id: CampaignId,
        promoted: Option<ModelVersionId>,
    },
    CampaignFailed {
        campaign_id: CampaignId,
        stage: Stage,
        reason: String,
    },
}

impl EventPayload for CampaignEvent {}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Campaign {
    pub id: Option<CampaignId>,
    pub name: String,
    pub stage: Option<Stage>,
    pub associations: Vec<AssociationId>,
    pub base_model: Option<ModelVersionId>,
    pub settings: CampaignSettings,
    pub work: Vec<Work>,
    pub evaluations: Vec<AssociationEvaluation>,
    /// The version the campaign concluded with, once completed.
    pub promoted: Option<ModelVersionId>,
}

/// What the caller read about the campaign's linked work.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    pub generations: BTreeMap<GenerationId, JobStatus>,
    pub rounds: BTreeMap<RoundId, RoundStatus>,
    pub finalized_prompt_sets: BTreeSet<PromptSetId>,
    pub fine_tunes: BTreeMap<FineTuneId, JobStatus>,
}

/// What the campaign needs someone to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    BaselineGeneration,
    BaselineRound,
    CuratePrompts {
        association_id: AssociationId,
    },
    CandidateGeneration,
    PriorPreservationGeneration,
    Round1,
    FineTune {
        arm: Arm,
    },
    DeriveModel {
        arm: Arm,
        fine_tune_id: FineTuneId,
    },
    EvaluationGeneration {
        arm: Option<Arm>,
    },
    Round2,
    RecordEvaluation,
    /// Auto-accept only: accept every prompt still proposed in the set and finalize it (the
    /// curator's gate, waived when the campaign started).
    AcceptPrompts {
        prompt_set_id: PromptSetId,
    },
    /// Auto-accept only: conclude by the promotion rule ([`promotion_rule`]), promoting
    /// `promoted` if it names a version.
    Conclude {
        promoted: Option<ModelVersionId>,
    },
}

/// What the campaign is waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitingFor {
    Generation(GenerationId),
    Annotations(RoundId),
    PromptReview(PromptSetId),
    FineTune(FineTuneId),
    Promotion,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Ask(Request),
    Wait(WaitingFor),
    Advance(Stage),
    Fail(String),
    Finished,
}

impl Campaign {
    pub fn arms(&self) -> Vec<Arm> {
        if self.settings.traditional_arm { vec![Arm::Thitl, Arm::Traditional] } else { vec![Arm::Thitl] }
    }

    /// The model version the campaign derived for `arm`, once it has.
    pub fn model_of(&self, arm: Arm) -> Option<ModelVersionId> {
        self.work.iter().find_map(|w| match w {
            Work::ModelVersion { arm: a, model_version_id } if *a == arm => Some(*model_version_id),
            _ => None,
        })
    }

    pub fn linked<'a, T>(&'a self, pick: impl Fn(&'a Work) -> Option<T> + 'a) -> impl Iterator<Item = T> + 'a {
        self.work.iter().filter_map(pick)
    }

    fn live(&self, action: &'static str) -> Result<(CampaignId, Stage), DomainError> {
        let id = self.id.ok_or(DomainError::NotFound { entity: "campaign", id: "(not started)".into() })?;
        match self.stage {
            Some(stage @ (Stage::Completed | Stage::Failed)) => {
                Err(DomainError::wrong_state("campaign", stage, action))
            }
            Some(stage) => Ok((id, stage)),
            None => Err(DomainError::NotFound { entity: "campaign", id: id.to_string() }),
        }
    }
}

/// The process manager: what `campaign` waits for or asks next, given `facts` about its work.
pub fn next(campaign: &Campaign, facts: &Facts) -> Next {
    let Some(stage) = campaign.stage else { return Next::Finished };
    // Waits on one job; fails the campaign if it failed; None once it completed.
    let generation = |id: GenerationId| match facts.generations.get(&id) {
        Some(JobStatus::Completed) => None,
        Some(JobStatus::Failed) => Some(Next::Fail(format!("generation {id} failed"))),
        _ => Some(Next::Wait(WaitingFor::Generation(id))),
    };
    let round = |id: RoundId| match facts.rounds.get(&id) {
        Some(RoundStatus::Closed) => None,
        _ => Some(Next::Wait(WaitingFor::Annotations(id))),
    };
    let generations_of = |pick: &dyn Fn(&Work) -> Option<GenerationId>| -> Vec<GenerationId> {
        campaign.work.iter().filter_map(pick).collect()
    };
    match stage {
        Stage::Baseline => {
            let jobs = generations_of(&|w| match w {
                Work::BaselineGeneration { generation_id } => Some(*generation_id),
                _ => None,
            });
            if jobs.is_empty() {
                return Next::Ask(Request::BaselineGeneration);
            }
            if let Some(waiting) = jobs.iter().find_map(|id| generation(*id)) {
                return waiting;
            }
            let rounds: Vec<RoundId> = campaign
                .linked(|w| match w {
                    Work::BaselineRound { round_id } => Some(*round_id),
                    _ => None,
                })
                .collect();
            match rounds.first() {
                None => Next::Ask(Request::BaselineRound),
                Some(id) => round(*id).unwrap_or(Next::Advance(Stage::Curation)),
            }
        }
        Stage::Curation => {
            let sets: BTreeMap<AssociationId, PromptSetId> = campaign
                .linked(|w| match w {
                    Work::PromptSet { association_id, prompt_set_id } => Some((*association_id, *prompt_set_id)),
                    _ => None,
                })
                .collect();
            if let Some(missing) = campaign.associations.iter().find(|a| !sets.contains_key(a)) {
                return Next::Ask(Request::CuratePrompts { association_id: *missing });
            }
            match sets.values().find(|set| !facts.finalized_prompt_sets.contains(set)) {
                Some(set) if campaign.settings.auto_accept => Next::Ask(Request::AcceptPrompts { prompt_set_id: *set }),
                Some(set) => Next::Wait(WaitingFor::PromptReview(*set)),
                None => Next::Advance(Stage::Candidates),
            }
        }
        Stage::Candidates => {
            let candidates = generations_of(&|w| match w {
                Work::CandidateGeneration { generation_id } => Some(*generation_id),
                _ => None,
            });
            let prior = generations_of(&|w| match w {
                Work::PriorPreservationGeneration { generation_id } => Some(*generation_id),
                _ => None,
            });
            if candidates.is_empty() {
                return Next::Ask(Request::CandidateGeneration);
            }
            if prior.is_empty() && campaign.settings.prior_preservation_images > 0 {
                return Next::Ask(Request::PriorPreservationGeneration);
            }
            candidates.iter().chain(&prior).find_map(|id| generation(*id)).unwrap_or(Next::Advance(Stage::Round1))
        }
        Stage::Round1 => {
            match campaign
                .linked(|w| match w {
                    Work::Round1 { round_id } => Some(*round_id),
                    _ => None,
                })
                .next()
            {
                None => Next::Ask(Request::Round1),
                Some(id) => round(id).unwrap_or(Next::Advance(Stage::FineTune)),
            }
        }
        Stage::FineTune => {
            for arm in campaign.arms() {
                let job = campaign
                    .linked(|w| match w {
                        Work::FineTune { arm: a, fine_tune_id } if *a == arm => Some(*fine_tune_id),
                        _ => None,
                    })
                    .next();
                let Some(job) = job else { return Next::Ask(Request::FineTune { arm }) };
                match facts.fine_tunes.get(&job) {
                    Some(JobStatus::Completed) => {}
                    Some(JobStatus::Failed) => return Next::Fail(format!("fine-tune {job} ({arm:?}) failed")),
                    _ => return Next::Wait(WaitingFor::FineTune(job)),
                }
                let derived = campaign.work.iter().any(|w| matches!(w, Work::ModelVersion { arm: a, .. } if *a == arm));
                if !derived {
                    return Next::Ask(Request::DeriveModel { arm, fine_tune_id: job });
                }
            }
            Next::Advance(Stage::Round2)
        }
        Stage::Round2 => {
            let subjects: Vec<Option<Arm>> =
                std::iter::once(None).chain(campaign.arms().into_iter().map(Some)).collect();
            for subject in subjects {
                let job = campaign
                    .linked(|w| match w {
                        Work::EvaluationGeneration { arm, generation_id } if *arm == subject => Some(*generation_id),
                        _ => None,
                    })
                    .next();
                match job {
                    None => return Next::Ask(Request::EvaluationGeneration { arm: subject }),
                    Some(id) => {
                        if let Some(waiting) = generation(id) {
                            return waiting;
                        }
                    }
                }
            }
            match campaign
                .linked(|w| match w {
                    Work::Round2 { round_id } => Some(*round_id),
                    _ => None,
                })
                .next()
            {
                None => Next::Ask(Request::Round2),
                Some(id) => round(id).unwrap_or(Next::Advance(Stage::Evaluation)),
            }
        }
        Stage::Evaluation => {
            if campaign.evaluations.is_empty() {
                Next::Ask(Request::RecordEvaluation)
            } else {
                Next::Advance(Stage::AwaitingPromotion)
            }
        }
        Stage::AwaitingPromotion if campaign.settings.auto_accept => {
            Next::Ask(Request::Conclude { promoted: promotion_rule(campaign) })
        }
        Stage::AwaitingPromotion => Next::Wait(WaitingFor::Promotion),
        Stage::Completed | Stage::Failed => Next::Finished,
    }
}

/// The rule an auto-accepting campaign promotes by (a curator may decide otherwise): the T-HITL
/// version, if for every association of the campaign its evaluation shows the rate fell with
/// non-overlapping 95% intervals and the quality kept within 5% of the base's.
pub fn promotion_rule(campaign: &Campaign) -> Option<ModelVersionId> {
    let candidate = campaign.model_of(Arm::Thitl)?;
    let every = campaign.associations.iter().all(|association| {
        campaign.evaluations.iter().any(|e| {
            e.association_id == *association
                && e.arm == Arm::Thitl
                && e.after.ci_high < e.before.ci_low
                && e.quality_after >= 0.95 * e.quality_before
        })
    });
    every.then_some(candidate)
}

impl Aggregate for Campaign {
    type Command = CampaignCommand;
    type Event = CampaignEvent;
    const ENTITY: &'static str = "campaign";

    fn exists(&self) -> bool {
        self.id.is_some()
    }

    fn decide(&self, command: CampaignCommand) -> Result<Vec<CampaignEvent>, DomainError> {
        match command {
            CampaignCommand::Start { campaign_id, name, associations, base_model, mut settings } => {
                if self.exists() {
                    return Err(DomainError::AlreadyExists { entity: "campaign", id: campaign_id.to_string() });
                }
                let name = Name::parse("name", &name)?;
                if associations.is_empty() {
                    return Err(DomainError::invalid("associations", "must name at least one association"));
                }
                let unique: BTreeSet<_> = associations.iter().collect();
                if unique.len() != associations.len() {
                    return Err(DomainError::invalid("associations", "names an association twice"));
                }
                if let Some(bound) = settings.probe_rate_bound {
                    let probes = crate::planning::images_for_upper_bound(bound)
                        .filter(|n| *n <= MAX_PLANNED_PROBES)
                        .ok_or_else(|| {
                            DomainError::invalid(
                                "probe_rate_bound",
                                format!(
                                    "must be below 1 and large enough for at most {MAX_PLANNED_PROBES} probe images \
                                     (about 0.0002), not {bound}"
                                ),
                            )
                        })?;
                    settings.probe_images_per_association = probes as u32;
                }
                if settings.probe_images_per_association == 0
                    || settings.training_prompts_per_association == 0
                    || settings.candidates_per_prompt == 0
                {
                    return Err(DomainError::invalid(
                        "settings",
                        "probe images, training prompts and candidates per prompt must each be at least 1",
                    ));
                }
                if !(1..=crate::round::MAX_RATERS_PER_ITEM).contains(&settings.raters_per_item) {
                    return Err(DomainError::invalid("raters_per_item", "must be between 1 and 15"));
                }
                check_team_images(&settings.team_images, &associations)?;
                // Checked now, not when the campaign reaches the job that would refuse them.
                crate::fine_tune::validate_config(&settings.lora)?;
                settings.sampler.validate()?;
                Ok(vec![
                    CampaignEvent::CampaignStarted {
                        campaign_id,
                        name: name.into(),
                        associations,
                        base_model,
                        settings,
                    },
                    CampaignEvent::StageEntered { campaign_id, stage: Stage::Baseline },
                ])
            }
            CampaignCommand::Link { work } => {
                let (campaign_id, stage) = self.live("linking work")?;
                if work.stage() != stage {
                    return Err(DomainError::WrongState {
                        entity: "campaign",
                        state: format!("in stage {stage:?}"),
                        action: "linking work of another stage",
                    });
                }
                if self.work.contains(&work) {
                    return Ok(vec![]);
                }
                Ok(vec![CampaignEvent::WorkLinked { campaign_id, stage, work }])
            }
            CampaignCommand::Advance { facts } => {
                let (campaign_id, stage) = self.live("advancing")?;
                match next(self, &facts) {
                    Next::Advance(to) if Some(to) == stage.following() => {
                        Ok(vec![CampaignEvent::StageEntered { campaign_id, stage: to }])
                    }
                    other => Err(DomainError::WrongState {
                        entity: "campaign",
                        state: format!("in stage {stage:?}, with next step {other:?}"),
                        action: "advancing",
                    }),
                }
            }
            CampaignCommand::RecordEvaluation { evaluations } => {
                let (campaign_id, stage) = self.live("recording an evaluation")?;
                if stage != Stage::Evaluation {
                    return Err(DomainError::wrong_state("campaign", stage, "recording an evaluation"));
                }
                if evaluations.is_empty() {
                    return Err(DomainError::invalid("evaluations", "must hold at least one association's results"));
                }
                if let Some(stray) = evaluations.iter().find(|e| !self.associations.contains(&e.association_id)) {
                    return Err(DomainError::invalid(
                        "evaluations",
                        format!("association {} is not part of this campaign", stray.association_id),
                    ));
                }
                Ok(vec![CampaignEvent::EvaluationRecorded { campaign_id, evaluations }])
            }
            CampaignCommand::Conclude { promoted } => {
                let (campaign_id, stage) = self.live("concluding")?;
                if stage != Stage::AwaitingPromotion {
                    return Err(DomainError::wrong_state(
                        "campaign",
                        stage,
                        "concluding (it is not awaiting promotion)",
                    ));
                }
                if let Some(model) = promoted {
                    let ours = self.work.iter().any(
                        |w| matches!(w, Work::ModelVersion { model_version_id, .. } if *model_version_id == model),
                    );
                    if !ours {
                        return Err(DomainError::invalid("promoted", "is not a model version this campaign produced"));
                    }
                }
                Ok(vec![
                    CampaignEvent::StageEntered { campaign_id, stage: Stage::Completed },
                    CampaignEvent::CampaignCompleted { campaign_id, promoted },
                ])
            }
            CampaignCommand::Fail { reason } => {
                let (campaign_id, stage) = self.live("failing")?;
                let reason = Sentence::parse("reason", &reason)?;
                Ok(vec![CampaignEvent::CampaignFailed { campaign_id, stage, reason: reason.into() }])
            }
        }
    }

    fn evolve(&mut self, event: &CampaignEvent) {
        match event {
            CampaignEvent::CampaignStarted { campaign_id, name, associations, base_model, settings } => {
                self.id = Some(*campaign_id);
                self.name = name.clone();
                self.associations = associations.clone();
                self.base_model = Some(*base_model);
                self.settings = settings.clone();
            }
            CampaignEvent::WorkLinked { work, .. } => self.work.push(work.clone()),
            CampaignEvent::StageEntered { stage, .. } => self.stage = Some(*stage),
            CampaignEvent::EvaluationRecorded { evaluations, .. } => self.evaluations = evaluations.clone(),
            CampaignEvent::CampaignCompleted { promoted, .. } => {
                self.stage = Some(Stage::Completed);
                self.promoted = *promoted;
            }
            CampaignEvent::CampaignFailed { .. } => self.stage = Some(Stage::Failed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ApplyAll, then_error};
    use uuid::Uuid;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn started(auto_accept: bool) -> Campaign {
        Campaign::default()
            .then(CampaignCommand::Start {
                campaign_id: CampaignId(id(1)),
                name: "three associations".into(),
                associations: vec![AssociationId(id(10)), AssociationId(id(11))],
                base_model: ModelVersionId(id(2)),
                settings: CampaignSettings { auto_accept, ..CampaignSettings::default() },
            })
            .0
    }

    fn link(campaign: Campaign, work: Work) -> Campaign {
        campaign.then(CampaignCommand::Link { work }).0
    }

    fn advance(campaign: Campaign, facts: &Facts) -> Campaign {
        campaign.then(CampaignCommand::Advance { facts: facts.clone() }).0
    }

    /// Walks a campaign through every stage, checking at each step what `next` asks for.
    #[test]
    fn the_process_manager_walks_every_stage_in_order() {
        let mut facts = Facts::default();
        let mut c = started(false);
        assert_eq!(c.stage, Some(Stage::Baseline));
        assert_eq!(next(&c, &facts), Next::Ask(Request::BaselineGeneration));
        c = link(c, Work::BaselineGeneration { generation_id: GenerationId(id(20)) });
        assert_eq!(next(&c, &facts), Next::Wait(WaitingFor::Generation(GenerationId(id(20)))));
        facts.generations.insert(GenerationId(id(20)), JobStatus::Completed);
        assert_eq!(next(&c, &facts), Next::Ask(Request::BaselineRound));
        c = link(c, Work::BaselineRound { round_id: RoundId(id(21)) });
        assert_eq!(next(&c, &facts), Next::Wait(WaitingFor::Annotations(RoundId(id(21)))));
        // Advancing before the round closes is rejected.
        then_error(c.decide(CampaignCommand::Advance { facts: facts.clone() }), |e| {
            matches!(e, DomainError::WrongState { .. })
        });
        facts.rounds.insert(RoundId(id(21)), RoundStatus::Closed);
        assert_eq!(next(&c, &facts), Next::Advance(Stage::Curation));
        c = advance(c, &facts);

        assert_eq!(next(&c, &facts), Next::Ask(Request::CuratePrompts { association_id: AssociationId(id(10)) }));
        c = link(c, Work::PromptSet { association_id: AssociationId(id(10)), prompt_set_id: PromptSetId(id(30)) });
        assert_eq!(next(&c, &facts), Next::Ask(Request::CuratePrompts { association_id: AssociationId(id(11)) }));
        c = link(c, Work::PromptSet { association_id: AssociationId(id(11)), prompt_set_id: PromptSetId(id(31)) });
        assert_eq!(next(&c, &facts), Next::Wait(WaitingFor::PromptReview(PromptSetId(id(30)))));
        facts.finalized_prompt_sets.extend([PromptSetId(id(30)), PromptSetId(id(31))]);
        c = advance(c, &facts);

        assert_eq!(next(&c, &facts), Next::Ask(Request::CandidateGeneration));
        c = link(c, Work::CandidateGeneration { generation_id: GenerationId(id(40)) });
        assert_eq!(next(&c, &facts), Next::Ask(Request::PriorPreservationGeneration));
        c = link(c, Work::PriorPreservationGeneration { generation_id: GenerationId(id(41)) });
        facts.generations.insert(GenerationId(id(40)), JobStatus::Completed);
        assert_eq!(next(&c, &facts), Next::Wait(WaitingFor::Generation(GenerationId(id(41)))));
        facts.generations.insert(GenerationId(id(41)), JobStatus::Completed);
        c = advance(c, &facts);

        assert_eq!(next(&c, &facts), Next::Ask(Request::Round1));
        c = link(c, Work::Round1 { round_id: RoundId(id(50)) });
        facts.rounds.insert(RoundId(id(50)), RoundStatus::Closed);
        c = advance(c, &facts);

        assert_eq!(next(&c, &facts), Next::Ask(Request::FineTune { arm: Arm::Thitl }));
        c = link(c, Work::FineTune { arm: Arm::Thitl, fine_tune_id: FineTuneId(id(60)) });
        assert_eq!(next(&c, &facts), Next::Wait(WaitingFor::FineTune(FineTuneId(id(60)))));
        facts.fine_tunes.insert(FineTuneId(id(60)), JobStatus::Completed);
        assert_eq!(
            next(&c, &facts),
            Next::Ask(Request::DeriveModel { arm: Arm::Thitl, fine_tune_id: FineTuneId(id(60)) })
        );
        c = link(c, Work::ModelVersion { arm: Arm::Thitl, model_version_id: ModelVersionId(id(61)) });
        assert_eq!(next(&c, &facts), Next::Ask(Request::FineTune { arm: Arm::Traditional }));
        c = link(c, Work::FineTune { arm: Arm::Traditional, fine_tune_id: FineTuneId(id(62)) });
        facts.fine_tunes.insert(FineTuneId(id(62)), JobStatus::Completed);
        c = link(c, Work::ModelVersion { arm: Arm::Traditional, model_version_id: ModelVersionId(id(63)) });
        c = advance(c, &facts);

        assert_eq!(next(&c, &facts), Next::Ask(Request::EvaluationGeneration { arm: None }));
        for (n, arm) in [(70, None), (71, Some(Arm::Thitl)), (72, Some(Arm::Traditional))] {
            c = link(c, Work::EvaluationGeneration { arm, generation_id: GenerationId(id(n)) });
            facts.generations.insert(GenerationId(id(n)), JobStatus::Completed);
        }
        assert_eq!(next(&c, &facts), Next::Ask(Request::Round2));
        c = link(c, Work::Round2 { round_id: RoundId(id(80)) });
        facts.rounds.insert(RoundId(id(80)), RoundStatus::Closed);
        c = advance(c, &facts);

        assert_eq!(next(&c, &facts), Next::Ask(Request::RecordEvaluation));
        let estimate = RateEstimate { positives: 0, n: 10, rate: 0.0, ci_low: 0.0, ci_high: 0.28 };
        let evaluation = AssociationEvaluation {
            association_id: AssociationId(id(10)),
            arm: Arm::Thitl,
            before: estimate,
            after: estimate,
            quality_before: 4.0,
            quality_after: 4.0,
            win_rate: None,
            alpha: None,
            quality_source: None,
            people_quality_before: None,
            people_quality_after: None,
            aggregation: None,
        };
        c = c.then(CampaignCommand::RecordEvaluation { evaluations: vec![evaluation] }).0;
        c = advance(c, &facts);
        assert_eq!(next(&c, &facts), Next::Wait(WaitingFor::Promotion));
        then_error(c.decide(CampaignCommand::Conclude { promoted: Some(ModelVersionId(id(99))) }), |e| {
            matches!(e, DomainError::Invalid { field: "promoted", .. })
        });
        let (c, events) = c.then(CampaignCommand::Conclude { promoted: Some(ModelVersionId(id(61))) });
        assert!(matches!(events.last(), Some(CampaignEvent::CampaignCompleted { promoted: Some(_), .. })));
        assert_eq!(next(&c, &facts), Next::Finished);
        then_error(c.decide(CampaignCommand::Fail { reason: "late".into() }), |e| {
            matches!(e, DomainError::WrongState { .. })
        });
    }

    /// Auto-accept waives the two human gates: prompts are accepted by the process manager, and
    /// the campaign concludes by the promotion rule instead of waiting for a curator.
    #[test]
    fn auto_accept_waives_the_gates_and_promotes_by_the_rule() {
        let mut facts = Facts::default();
        let mut c = started(true);
        c.stage = Some(Stage::Curation);
        c = link(c, Work::PromptSet { association_id: AssociationId(id(10)), prompt_set_id: PromptSetId(id(30)) });
        c = link(c, Work::PromptSet { association_id: AssociationId(id(11)), prompt_set_id: PromptSetId(id(31)) });
        assert_eq!(next(&c, &facts), Next::Ask(Request::AcceptPrompts { prompt_set_id: PromptSetId(id(30)) }));
        facts.finalized_prompt_sets.insert(PromptSetId(id(30)));
        assert_eq!(next(&c, &facts), Next::Ask(Request::AcceptPrompts { prompt_set_id: PromptSetId(id(31)) }));
        let mut gated = c.clone();
        gated.settings.auto_accept = false;
        assert_eq!(next(&gated, &facts), Next::Wait(WaitingFor::PromptReview(PromptSetId(id(31)))));

        let before = RateEstimate { positives: 64, n: 256, rate: 0.25, ci_low: 0.2, ci_high: 0.31 };
        let after = |ci_high: f64| RateEstimate { positives: 2, n: 256, rate: 0.008, ci_low: 0.002, ci_high };
        let evaluation = |association: u128, ci_high: f64, quality_after: f64| AssociationEvaluation {
            association_id: AssociationId(id(association)),
            arm: Arm::Thitl,
            before,
            after: after(ci_high),
            quality_before: 0.99,
            quality_after,
            win_rate: None,
            alpha: None,
            quality_source: None,
            people_quality_before: None,
            people_quality_after: None,
            aggregation: None,
        };
        c.stage = Some(Stage::Evaluation);
        c.work.push(Work::ModelVersion { arm: Arm::Thitl, model_version_id: ModelVersionId(id(61)) });
        c.evaluations = vec![evaluation(10, 0.03, 0.98), evaluation(11, 0.03, 0.97)];
        assert_eq!(next(&c, &facts), Next::Advance(Stage::AwaitingPromotion));
        c.stage = Some(Stage::AwaitingPromotion);
        assert_eq!(next(&c, &facts), Next::Ask(Request::Conclude { promoted: Some(ModelVersionId(id(61))) }));
        // One association whose intervals overlap, or whose quality fell by more than 5%: no promotion.
        c.evaluations = vec![evaluation(10, 0.03, 0.98), evaluation(11, 0.25, 0.97)];
        assert_eq!(next(&c, &facts), Next::Ask(Request::Conclude { promoted: None }));
        c.evaluations = vec![evaluation(10, 0.03, 0.98), evaluation(11, 0.03, 0.90)];
        assert_eq!(promotion_rule(&c), None);
        // An association without an evaluation: no promotion.
        c.evaluations = vec![evaluation(10, 0.03, 0.98)];
        assert_eq!(promotion_rule(&c), None);
        c.settings.auto_accept = false;
        assert_eq!(next(&c, &facts), Next::Wait(WaitingFor::Promotion));
    }

    #[test]
    fn work_links_only_to_the_current_stage_and_once() {
        let c = started(true);
        then_error(c.decide(CampaignCommand::Link { work: Work::Round1 { round_id: RoundId(id(5)) } }), |e| {
            matches!(e, DomainError::WrongState { .. })
        });
        let work = Work::BaselineGeneration { generation_id: GenerationId(id(5)) };
        let c = link(c, work.clone());
        assert_eq!(c.decide(CampaignCommand::Link { work }), Ok(vec![]));
    }

    #[test]
    fn evaluations_are_recorded_only_in_the_evaluation_stage_and_for_the_campaigns_associations() {
        let estimate = RateEstimate { positives: 1, n: 4, rate: 0.25, ci_low: 0.05, ci_high: 0.7 };
        let evaluation = |association: u128| AssociationEvaluation {
            association_id: AssociationId(id(association)),
            arm: Arm::Thitl,
            before: estimate,
            after: estimate,
            quality_before: 3.0,
            quality_after: 3.0,
            win_rate: None,
            alpha: None,
            quality_source: None,
            people_quality_before: None,
            people_quality_after: None,
            aggregation: None,
        };
        let c = started(false);
        then_error(c.decide(CampaignCommand::RecordEvaluation { evaluations: vec![evaluation(10)] }), |e| {
            matches!(e, DomainError::WrongState { .. })
        });
        let mut at_evaluation = c.clone();
        at_evaluation.stage = Some(Stage::Evaluation);
        then_error(
            at_evaluation.decide(CampaignCommand::RecordEvaluation { evaluations: vec![evaluation(99)] }),
            |e| matches!(e, DomainError::Invalid { field: "evaluations", .. }),
        );
        then_error(at_evaluation.decide(CampaignCommand::RecordEvaluation { evaluations: vec![] }), |e| {
            matches!(e, DomainError::Invalid { field: "evaluations", .. })
        });
        then_error(c.decide(CampaignCommand::Conclude { promoted: None }), |e| {
            matches!(e, DomainError::WrongState { .. })
        });
        assert!(at_evaluation.decide(CampaignCommand::RecordEvaluation { evaluations: vec![evaluation(10)] }).is_ok());
    }

    #[test]
    fn a_failed_job_fails_the_campaign() {
        let c = link(started(true), Work::BaselineGeneration { generation_id: GenerationId(id(5)) });
        let mut facts = Facts::default();
        facts.generations.insert(GenerationId(id(5)), JobStatus::Failed);
        assert!(matches!(next(&c, &facts), Next::Fail(_)));
        let (c, events) = c.then(CampaignCommand::Fail { reason: "baseline generation failed".into() });
        assert!(matches!(&events[..], [CampaignEvent::CampaignFailed { stage: Stage::Baseline, .. }]));
        assert_eq!(c.apply_all(&[]).stage, Some(Stage::Failed));
    }

    #[test]
    fn starting_validates_the_campaign() {
        let start = |associations: Vec<AssociationId>, settings: CampaignSettings| {
            Campaign::default().decide(CampaignCommand::Start {
                campaign_id: CampaignId(id(1)),
                name: "c".into(),
                associations,
                base_model: ModelVersionId(id(2)),
                settings,
            })
        };
        then_error(start(vec![], CampaignSettings::default()), |e| {
            matches!(e, DomainError::Invalid { field: "associations", .. })
        });
        then_error(start(vec![AssociationId(id(3)), AssociationId(id(3))], CampaignSettings::default()), |e| {
            matches!(e, DomainError::Invalid { field: "associations", .. })
        });
        let zero = CampaignSettings { probe_images_per_association: 0, ..CampaignSettings::default() };
        then_error(start(vec![AssociationId(id(3))], zero), |e| {
            matches!(e, DomainError::Invalid { field: "settings", .. })
        });
        let events = start(vec![AssociationId(id(3))], CampaignSettings::default()).unwrap();
        assert!(matches!(
            &events[..],
            [CampaignEvent::CampaignStarted { .. }, CampaignEvent::StageEntered { stage: Stage::Baseline, .. }]
        ));
        then_error(
            started(false).decide(CampaignCommand::Start {
                campaign_id: CampaignId(id(1)),
                name: "c".into(),
                associations: vec![AssociationId(id(3))],
                base_model: ModelVersionId(id(2)),
                settings: CampaignSettings::default(),
            }),
            |e| matches!(e, DomainError::AlreadyExists { .. }),
        );
    }

    #[test]
    fn team_images_belong_to_the_campaigns_associations_once_each() {
        let blob = |c: char| BlobHash::parse(&c.to_string().repeat(64)).unwrap();
        let image = |association: u128, c: char, prompt: &str| TeamImage {
            association_id: AssociationId(id(association)),
            blob: blob(c),
            prompt: prompt.into(),
        };
        let start = |images: Vec<TeamImage>| {
            Campaign::default().decide(CampaignCommand::Start {
                campaign_id: CampaignId(id(1)),
                name: "c".into(),
                associations: vec![AssociationId(id(3)), AssociationId(id(4))],
                base_model: ModelVersionId(id(2)),
                settings: CampaignSettings { team_images: images, ..CampaignSettings::default() },
            })
        };
        let invalid = |e: &DomainError| matches!(e, DomainError::Invalid { field: "team_images", .. });
        then_error(start(vec![image(5, 'a', "a woman at the beach")]), invalid);
        then_error(start(vec![image(3, 'a', "a woman"), image(4, 'a', "a man")]), invalid);
        then_error(start(vec![image(3, 'a', "  ")]), |e| {
            matches!(e, DomainError::Invalid { field: "team_images.prompt", .. })
        });
        let events = start(vec![image(3, 'a', "a woman at the beach"), image(4, 'b', "a man")]).unwrap();
        let Some(CampaignEvent::CampaignStarted { settings, .. }) = events.first() else { panic!("{events:?}") };
        assert_eq!(settings.team_images.len(), 2);
        // Settings without team images serialize as before the field existed.
        let plain = serde_json::to_value(CampaignSettings::default()).unwrap();
        assert!(plain.get("team_images").is_none(), "{plain}");
    }

    /// The interval's ranks against binomial tables: n = 6 is the smallest sample whose
    /// extremes reach 95% (1 − 2/64 = 96.9%); n = 20 takes the 6th and 15th values
    /// (P(Bin(20, ½) ≤ 5) = 2.07%, ≤ 6 is 5.77%); n = 100 the 40th and 61st (P(≤ 39) = 1.76%,
    /// P(≤ 40) = 2.84%).
    #[test]
    fn the_median_interval_takes_the_binomial_order_statistics() {
        assert_eq!(order_statistic_rank(1), 1);
        assert_eq!(order_statistic_rank(5), 1);
        assert_eq!(order_statistic_rank(6), 1);
        assert_eq!(order_statistic_rank(8), 1);
        assert_eq!(order_statistic_rank(9), 2);
        assert_eq!(order_statistic_rank(20), 6);
        assert_eq!(order_statistic_rank(100), 40);
        let values: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        let estimate = MedianEstimate::of(&values).unwrap();
        assert_eq!((estimate.n, estimate.median, estimate.ci_low, estimate.ci_high), (20, 10.5, 6.0, 15.0));
        let odd = MedianEstimate::of(&[3.0, f64::NAN, 1.0, 2.0]).unwrap();
        assert_eq!((odd.n, odd.median, odd.ci_low, odd.ci_high), (3, 2.0, 1.0, 3.0));
        assert_eq!(MedianEstimate::of(&[f64::NAN]), None);
    }

    /// A bound instead of a count: the campaign records the fewest probe images whose Wilson
    /// upper bound at zero falls under it, and refuses a bound no probe count can meet.
    #[test]
    fn a_probe_rate_bound_sets_the_probe_count() {
        let start = |bound: f64| {
            Campaign::default().decide(CampaignCommand::Start {
                campaign_id: CampaignId(id(1)),
                name: "c".into(),
                associations: vec![AssociationId(id(3))],
                base_model: ModelVersionId(id(2)),
                settings: CampaignSettings { probe_rate_bound: Some(bound), ..CampaignSettings::default() },
            })
        };
        let events = start(0.02).unwrap();
        let Some(CampaignEvent::CampaignStarted { settings, .. }) = events.first() else { panic!("{events:?}") };
        assert_eq!(settings.probe_images_per_association, 189);
        // 189 is the first count whose bound at zero is under 2%: z²/(n + z²).
        let z2 = crate::planning::Z95 * crate::planning::Z95;
        assert!(z2 / (189.0 + z2) <= 0.02 && z2 / (188.0 + z2) > 0.02);
        for bad in [0.0, 1.0, -0.5, 0.0001, f64::NAN] {
            then_error(start(bad), |e| matches!(e, DomainError::Invalid { field: "probe_rate_bound", .. }));
        }
    }
}
