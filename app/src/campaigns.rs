//! The campaign process manager's runner: turns what [`campaign::next`](domain::campaign::next)
//! asks for into commands, and reports what the campaign waits for.
//!
//! ```text
//! step(campaign) ─ loop: facts(linked work) → next(campaign, facts)
//!   Ask(request)  → fulfil: build items / prompts / examples, request the job or open the round, link it
//!   Advance(stage) → Advance command        Fail(reason) → Fail command
//!   Wait(what)    → return Waiting(what): a generation or fine-tune job for a worker, a round for
//!                   annotators, a prompt review or a promotion for a curator
//!   Finished      → return Finished
//! ```
//!
//! Key design decisions:
//! - **The runner keeps no state that matters**: everything it decides from is in the log (the
//!   campaign and its linked work), so a runner started after a crash carries on where the last
//!   one stopped. Its caches (associations, the rater's readings of images) are rebuilt on demand.
//! - **Gates are the domain's**: with auto-accept, `next` asks the runner to accept prompts and
//!   to conclude by [`promotion_rule`](domain::campaign::promotion_rule), and the runner does so
//!   as the principal `auto-accept`, so the audit log says that no person looked. Without it the
//!   runner stops at `Waiting(PromptReview | Promotion)` until a curator acts through the API.
//! - **The same runner drives `thitl demo` and `thitl serve`**: the demo works the waits itself
//!   (its workers and simulated annotators); the server's background driver leaves rounds and
//!   gates to people and runs the jobs.
//! - **The model is reached through ports** ([`crate::ports`]): the family says what
//!   prior-preservation prompts and alternative objects its world has; the runner never names a
//!   group, object or setting itself.
//! - **Evaluation**: rates and win rates are round 2's majority verdicts (people); quality is the
//!   automatic rater's score of the same images where the campaign has one (the reference world's
//!   shipped rater), else round 2's human quality ratings.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use domain::campaign::{
    AssociationEvaluation, Facts, MedianEstimate, Next, RateEstimate, Request, WaitingFor, Work, next,
};
use domain::fine_tune::{Arm, TrainingExample};
use domain::generation::{GenerationItem, GenerationPurpose};
use domain::model_version::ModelStatus;
use domain::prompt_set::PromptDraft;
use domain::round::{Answer, ImageRef, ItemContent, ItemLabel, RoundItem, RoundKind, Verdict};
use domain::values::BlobHash;
use domain::*;
use gpu::rng::SplitMix64;
use projections::stats::{Z95, krippendorff_alpha_nominal, wilson_interval};
use uuid::Uuid;

use crate::blobs::BlobStore;
use crate::commands::{CommandBus, CommandContext, CommandError};
use crate::jobs::{self, FineTuneRequest, GenerationRequest};
use crate::ports::{ModelFamily, QualityRater};
use crate::prompts::{PromptGenerator, PromptRequest};
use crate::workers::WorkerError;

/// Why a campaign step (or the demo around it) stopped.
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Job(#[from] crate::jobs::JobError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error(transparent)]
    Blob(#[from] crate::blobs::BlobError),
    #[error("{0}")]
    Other(String),
}

/// Where a campaign stands after a [`CampaignRunner::step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Waiting(WaitingFor),
    /// Completed or failed (the campaign's stage says which).
    Finished,
}

/// Seeds and choices that repeat from a campaign's seed (the workspace's SplitMix64).
#[derive(Clone)]
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(SplitMix64::new(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// A standard normal draw (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-12);
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.uniform()).cos()
    }
}

/// A campaign's model family and its automatic quality judge (if any).
type World = (Arc<dyn ModelFamily>, Option<Arc<dyn QualityRater>>);

pub struct CampaignRunner<'a> {
    bus: CommandBus,
    blobs: Arc<dyn BlobStore>,
    generator: Box<dyn PromptGenerator>,
    /// The family of the campaign's models: what prior-preservation prompts and alternative
    /// objects its world offers.
    family: Arc<dyn ModelFamily>,
    /// Judges image quality for the evaluation; without one, quality is round 2's human ratings.
    rater: Option<Arc<dyn QualityRater>>,
    /// The rater's quality of every image rated so far.
    quality: HashMap<BlobHash, f64>,
    /// Other families by name (imported pipelines): a campaign whose base model names one runs
    /// in that family's world, without the rater (quality then comes from round 2's people).
    named_families: Vec<(String, Arc<dyn ModelFamily>)>,
    /// The family and rater of the campaign being stepped.
    world: Option<World>,
    rng: Rng,
    system: CommandContext,
    /// The principal of the gates an auto-accepting campaign waives.
    auto_accept: CommandContext,
    associations: BTreeMap<AssociationId, Association>,
    narrate: Box<dyn Fn(&str) + Send + Sync + 'a>,
}

impl<'a> CampaignRunner<'a> {
    /// A runner over `bus`'s store; `generator` curates training prompts, `family` is the
    /// campaigns' model family and `rater` their automatic quality judge (if any), `seed` drives
    /// the candidates' seeds and the pairs' sides, `narrate` hears one line per notable step.
    pub fn new(
        bus: CommandBus,
        blobs: Arc<dyn BlobStore>,
        generator: Box<dyn PromptGenerator>,
        family: Arc<dyn ModelFamily>,
        rater: Option<Arc<dyn QualityRater>>,
        seed: u64,
        narrate: Box<dyn Fn(&str) + Send + Sync + 'a>,
    ) -> Self {
        CampaignRunner {
            bus,
            blobs,
            generator,
            family,
            rater,
            quality: HashMap::new(),
            named_families: Vec::new(),
            world: None,
            rng: Rng::new(seed),
            system: CommandContext::system(),
            auto_accept: CommandContext::new(Actor::new("auto-accept", Role::Curator)),
            associations: BTreeMap::new(),
            narrate,
        }
    }

    /// Adds the families a base model's config may name (see [`Self::named_families`]).
    pub fn with_families(mut self, families: Vec<(String, Arc<dyn ModelFamily>)>) -> Self {
        self.named_families = families;
        self
    }

    fn narrate(&self, line: &str) {
        (self.narrate)(line);
    }

    /// The family (and rater) of `campaign`'s base model: the runner's own unless the version's
    /// config names another family.
    fn enter_world(&mut self, campaign: &Campaign) -> Result<(), CampaignError> {
        let family = match campaign.base_model {
            Some(base) => self.bus.load::<ModelVersion>(&base.stream())?.0.family,
            None => None,
        };
        self.world = Some(match family {
            None => (self.family.clone(), self.rater.clone()),
            Some(name) => {
                let family =
                    self.named_families.iter().find(|(n, _)| *n == name).map(|(_, f)| f.clone()).ok_or_else(|| {
                        CampaignError::Other(format!("the base model's family {name:?} is not served here"))
                    })?;
                (family, None)
            }
        });
        Ok(())
    }

    fn family(&self) -> Arc<dyn ModelFamily> {
        self.world.as_ref().map_or_else(|| self.family.clone(), |(family, _)| family.clone())
    }

    fn rater(&self) -> Option<Arc<dyn QualityRater>> {
        self.world.as_ref().map_or_else(|| self.rater.clone(), |(_, rater)| rater.clone())
    }

    /// The associations of the campaigns stepped so far.
    pub fn associations(&self) -> &BTreeMap<AssociationId, Association> {
        &self.associations
    }

    /// Does what campaign `campaign_id` asks for — requests and links work, advances its stage,
    /// records its evaluation, fails it when a job failed — until it waits for someone or is
    /// finished. Each stage entered is told to `on_stage`.
    pub fn step(
        &mut self,
        campaign_id: CampaignId,
        on_stage: &mut dyn FnMut(domain::campaign::Stage),
    ) -> Result<Step, CampaignError> {
        let stream = campaign_id.stream();
        loop {
            let (campaign, _) = self.bus.load::<Campaign>(&stream)?;
            if campaign.id.is_none() {
                return Err(CampaignError::Other(format!("no campaign has id {campaign_id}")));
            }
            for association_id in &campaign.associations {
                if !self.associations.contains_key(association_id) {
                    let (state, _) = self.bus.load::<Association>(&association_id.stream())?;
                    self.associations.insert(*association_id, state);
                }
            }
            self.enter_world(&campaign)?;
            let facts = self.facts(&campaign)?;
            match next(&campaign, &facts) {
                Next::Ask(request) => self.fulfil(&campaign, request)?,
                Next::Advance(stage) => {
                    self.bus.execute::<Campaign>(&stream, None, &self.system, CampaignCommand::Advance { facts })?;
                    on_stage(stage);
                }
                Next::Fail(reason) => {
                    self.bus.execute::<Campaign>(
                        &stream,
                        None,
                        &self.system,
                        CampaignCommand::Fail { reason: reason.clone() },
                    )?;
                    self.narrate(&format!("campaign {campaign_id} failed: {reason}"));
                    return Ok(Step::Finished);
                }
                Next::Wait(WaitingFor::Annotations(round_id)) => {
                    // Every item has all its ratings: the round closes by itself (its verdicts
                    // are then fixed); until then the people it waits for are working.
                    let (done, needed, split) =
                        self.bus.read::<AnnotationRound, _>(&round_id.stream(), |round, _| {
                            let (done, needed) = round.progress();
                            (done, needed, round.adjudication_queue().len())
                        })?;
                    if needed == 0 || done < needed {
                        return Ok(Step::Waiting(WaitingFor::Annotations(round_id)));
                    }
                    // Items still split wait for a curator; auto-accept's curator leaves them out
                    // (recorded in the closing event).
                    let auto = campaign.settings.auto_accept;
                    if split > 0 && !auto {
                        return Ok(Step::Waiting(WaitingFor::Annotations(round_id)));
                    }
                    let context = if split > 0 { &self.auto_accept } else { &self.system };
                    self.bus.execute::<AnnotationRound>(
                        &round_id.stream(),
                        None,
                        context,
                        RoundCommand::Close { allow_incomplete: false, leave_out_unadjudicated: auto },
                    )?;
                }
                Next::Wait(what) => return Ok(Step::Waiting(what)),
                Next::Finished => return Ok(Step::Finished),
            }
        }
    }

    fn facts(&self, campaign: &Campaign) -> Result<Facts, CommandError> {
        facts(&self.bus, campaign)
    }

    fn link(&self, campaign: &Campaign, work: Work) -> Result<(), CommandError> {
        let stream = campaign.id.map(|id| id.stream()).unwrap_or_default();
        self.bus.execute::<Campaign>(&stream, None, &self.system, CampaignCommand::Link { work })?;
        Ok(())
    }

    fn fulfil(&mut self, campaign: &Campaign, request: Request) -> Result<(), CampaignError> {
        let base =
            campaign.base_model.ok_or_else(|| CampaignError::Other("the campaign names no base model".into()))?;
        match request {
            Request::BaselineGeneration => {
                let items = self.probe_items(campaign, 0);
                let id = self.generate(campaign, base, GenerationPurpose::Baseline, items)?;
                self.link(campaign, Work::BaselineGeneration { generation_id: id })?;
            }
            Request::BaselineRound => {
                let jobs = generations(campaign, |w| matches!(w, Work::BaselineGeneration { .. }));
                let items = self.single_items(&jobs)?;
                let id = self.open_round(campaign, RoundKind::Baseline, items)?;
                self.link(campaign, Work::BaselineRound { round_id: id })?;
            }
            Request::CuratePrompts { association_id } => {
                let id = self.curate(campaign, association_id)?;
                self.link(campaign, Work::PromptSet { association_id, prompt_set_id: id })?;
            }
            Request::CandidateGeneration => {
                let mut items = Vec::new();
                for work in &campaign.work {
                    if let Work::PromptSet { association_id, prompt_set_id } = work {
                        let (set, _) = self.bus.load::<PromptSet>(&prompt_set_id.stream())?;
                        for (prompt_id, prompt) in set.accepted() {
                            for _ in 0..campaign.settings.candidates_per_prompt {
                                items.push(GenerationItem {
                                    prompt: prompt.neutral.text.clone(),
                                    negative_prompt: Some(prompt.neutral.negative_prompt.clone()),
                                    seed: 10_000_000 + self.rng.next_u64() % 1_000_000_000,
                                    prompt_id: Some(prompt_id),
                                    association_id: Some(*association_id),
                                });
                            }
                        }
                    }
                }
                let id = self.generate(campaign, base, GenerationPurpose::Candidates, items)?;
                self.link(campaign, Work::CandidateGeneration { generation_id: id })?;
            }
            Request::PriorPreservationGeneration => {
                let items = self.prior_items(campaign);
                let id = self.generate(campaign, base, GenerationPurpose::PriorPreservation, items)?;
                self.link(campaign, Work::PriorPreservationGeneration { generation_id: id })?;
            }
            Request::Round1 => {
                let jobs = generations(campaign, |w| matches!(w, Work::CandidateGeneration { .. }));
                let mut items = self.single_items(&jobs)?;
                items.extend(team_items(campaign));
                let id = self.open_round(campaign, RoundKind::Screen, items)?;
                self.link(campaign, Work::Round1 { round_id: id })?;
            }
            Request::FineTune { arm } => {
                let id = self.fine_tune(campaign, arm)?;
                self.link(campaign, Work::FineTune { arm, fine_tune_id: id })?;
            }
            Request::DeriveModel { arm, fine_tune_id } => {
                let (job, _) = self.bus.load::<FineTune>(&fine_tune_id.stream())?;
                let id = ModelVersionId(Uuid::now_v7());
                self.bus.execute::<ModelVersion>(
                    &id.stream(),
                    None,
                    &self.system,
                    ModelVersionCommand::DeriveFromFineTune {
                        model_version_id: id,
                        name: format!("{} fine-tune", arm_name(arm)),
                        fine_tune: domain::model_version::SourceFineTune {
                            fine_tune_id,
                            status: job.status,
                            base_model: job.base_model,
                            arm: job.arm,
                            adapter: job.adapter,
                        },
                    },
                )?;
                self.link(campaign, Work::ModelVersion { arm, model_version_id: id })?;
            }
            Request::EvaluationGeneration { arm } => {
                let model = match arm {
                    None => base,
                    Some(arm) => campaign
                        .model_of(arm)
                        .ok_or_else(|| CampaignError::Other(format!("no {} model to evaluate", arm_name(arm))))?,
                };
                // Held-out seeds: none of the baseline's.
                let items = self.probe_items(campaign, 1_000_000);
                let id = self.generate(campaign, model, GenerationPurpose::Evaluation, items)?;
                self.link(campaign, Work::EvaluationGeneration { arm, generation_id: id })?;
            }
            Request::Round2 => {
                let jobs = generations(campaign, |w| matches!(w, Work::EvaluationGeneration { .. }));
                let mut items = self.single_items(&jobs)?;
                items.extend(self.pair_items(campaign)?);
                let id = self.open_round(campaign, RoundKind::Check, items)?;
                self.link(campaign, Work::Round2 { round_id: id })?;
            }
            Request::RecordEvaluation => {
                let evaluations = self.evaluate(campaign)?;
                let stream = campaign.id.map(|id| id.stream()).unwrap_or_default();
                self.bus.execute::<Campaign>(
                    &stream,
                    None,
                    &self.system,
                    CampaignCommand::RecordEvaluation { evaluations },
                )?;
            }
            Request::AcceptPrompts { prompt_set_id } => self.accept_prompts(prompt_set_id)?,
            Request::Conclude { promoted } => {
                let reason = match promoted {
                    Some(_) => {
                        "auto-accept: every association's rate fell with non-overlapping 95% intervals and quality stayed within 5%"
                    }
                    None => {
                        "auto-accept: the evaluation does not show a clear improvement for every association; not promoted"
                    }
                };
                let campaign_id = campaign.id.ok_or_else(|| CampaignError::Other("a campaign without an id".into()))?;
                conclude(&self.bus, &self.auto_accept, campaign_id, promoted, reason)?;
                self.narrate(match promoted {
                    Some(_) => "promoted the T-HITL model version (auto-accept)",
                    None => "not promoted: the evaluation does not show a clear improvement for every association",
                });
            }
        }
        Ok(())
    }

    /// `probe_images` items per association, cycling through its probe prompts, seeds from
    /// `seed_offset`.
    fn probe_items(&self, campaign: &Campaign, seed_offset: u64) -> Vec<GenerationItem> {
        let mut items = Vec::new();
        for association_id in &campaign.associations {
            let Some(association) = self.associations.get(association_id) else { continue };
            for i in 0..campaign.settings.probe_images_per_association {
                let prompt = &association.probe_prompts[i as usize % association.probe_prompts.len()];
                items.push(GenerationItem {
                    prompt: prompt.clone(),
                    negative_prompt: None,
                    seed: seed_offset + u64::from(i),
                    prompt_id: None,
                    association_id: Some(*association_id),
                });
            }
        }
        items
    }

    /// Prior preservation: the base model's own pictures of the groups no association is about.
    fn prior_items(&mut self, campaign: &Campaign) -> Vec<GenerationItem> {
        let targeted: Vec<String> = self.associations.values().map(|a| a.group.clone()).collect();
        let family = self.family();
        let rng = &mut self.rng;
        let prompts =
            family.prior_prompts(&targeted, campaign.settings.prior_preservation_images, &mut || rng.next_u64());
        prompts
            .into_iter()
            .enumerate()
            .map(|(i, prompt)| GenerationItem {
                prompt,
                negative_prompt: None,
                seed: 20_000_000 + i as u64,
                prompt_id: None,
                association_id: None,
            })
            .collect()
    }

    /// Requests a generation job (run when the campaign waits for it).
    fn generate(
        &mut self,
        campaign: &Campaign,
        model: ModelVersionId,
        purpose: GenerationPurpose,
        items: Vec<GenerationItem>,
    ) -> Result<GenerationId, CampaignError> {
        let request = GenerationRequest {
            model_version: model,
            purpose,
            items,
            sampler: campaign.settings.sampler.clone(),
            campaign_id: campaign.id,
        };
        Ok(jobs::request_generation(&self.bus, &self.system, None, request)?.0)
    }

    fn single_items(&mut self, jobs: &[GenerationId]) -> Result<Vec<RoundItem>, CommandError> {
        let mut items = Vec::new();
        for job_id in jobs {
            let (job, _) = self.bus.load::<Generation>(&job_id.stream())?;
            for (index, (image_id, blob)) in &job.images {
                let item = &job.items[*index as usize];
                items.push(RoundItem {
                    item_id: ItemId(Uuid::now_v7()),
                    content: ItemContent::Image(ImageRef { image_id: *image_id, blob: blob.clone() }),
                    label: ItemLabel {
                        association_id: item.association_id,
                        prompt_id: item.prompt_id,
                        prompt: item.prompt.clone(),
                        seed: item.seed,
                        models: job.model_version.into_iter().collect(),
                    },
                });
            }
        }
        Ok(items)
    }

    /// Side-by-side pairs: the base model's and the T-HITL model's image of the same prompt and
    /// seed, left and right at random.
    fn pair_items(&mut self, campaign: &Campaign) -> Result<Vec<RoundItem>, CommandError> {
        let job_of = |arm: Option<Arm>| {
            campaign.work.iter().find_map(|w| match w {
                Work::EvaluationGeneration { arm: a, generation_id } if *a == arm => Some(*generation_id),
                _ => None,
            })
        };
        let (Some(base_job), Some(tuned_job)) = (job_of(None), job_of(Some(Arm::Thitl))) else { return Ok(vec![]) };
        let (base, _) = self.bus.load::<Generation>(&base_job.stream())?;
        let (tuned, _) = self.bus.load::<Generation>(&tuned_job.stream())?;
        let mut items = Vec::new();
        let per_association = campaign.settings.probe_images_per_association as usize;
        for (number, _) in campaign.associations.iter().enumerate() {
            for offset in 0..(campaign.settings.pairs_per_association as usize).min(per_association) {
                let index = (number * per_association + offset) as u32;
                let (Some((b_id, b_blob)), Some((t_id, t_blob))) = (base.images.get(&index), tuned.images.get(&index))
                else {
                    continue;
                };
                let base_ref = (ImageRef { image_id: *b_id, blob: b_blob.clone() }, base.model_version);
                let tuned_ref = (ImageRef { image_id: *t_id, blob: t_blob.clone() }, tuned.model_version);
                let (left, right) = if self.rng.chance(0.5) { (base_ref, tuned_ref) } else { (tuned_ref, base_ref) };
                let item = &base.items[index as usize];
                items.push(RoundItem {
                    item_id: ItemId(Uuid::now_v7()),
                    content: ItemContent::Pair { left: left.0, right: right.0 },
                    label: ItemLabel {
                        association_id: item.association_id,
                        prompt_id: None,
                        prompt: item.prompt.clone(),
                        seed: item.seed,
                        models: [left.1, right.1].into_iter().flatten().collect(),
                    },
                });
            }
        }
        Ok(items)
    }

    /// The automatic rater's quality of every image of `items` not judged yet (none without a
    /// rater).
    pub fn rate(&mut self, items: &[RoundItem]) -> Result<(), CampaignError> {
        let Some(rater) = self.rater() else { return Ok(()) };
        let mut missing: Vec<BlobHash> = Vec::new();
        for item in items {
            let blobs = match &item.content {
                ItemContent::Image(image) => vec![&image.blob],
                ItemContent::Pair { left, right } => vec![&left.blob, &right.blob],
            };
            for blob in blobs {
                if !self.quality.contains_key(blob) && !missing.contains(blob) {
                    missing.push(blob.clone());
                }
            }
        }
        for chunk in missing.chunks(256) {
            let mut images = Vec::with_capacity(chunk.len());
            for blob in chunk {
                let bytes = self
                    .blobs
                    .get(blob)?
                    .ok_or_else(|| CampaignError::Other(format!("image blob {blob} is missing")))?;
                images.push((blob.clone(), bytes));
            }
            let quality = rater.quality(&images).map_err(|e| CampaignError::Other(format!("quality rater: {e}")))?;
            for (blob, quality) in chunk.iter().zip(quality) {
                self.quality.insert(blob.clone(), quality);
            }
        }
        Ok(())
    }

    /// Opens a round over `items` (worked through when the campaign waits for it).
    fn open_round(
        &mut self,
        campaign: &Campaign,
        kind: RoundKind,
        mut items: Vec<RoundItem>,
    ) -> Result<RoundId, CampaignError> {
        let id = RoundId(Uuid::now_v7());
        // Every round the campaign opens (the baseline round, rounds 1 and 2) checks its raters
        // as the campaign's settings say.
        let controls = match campaign.settings.round_controls.as_deref().copied() {
            Some(wanted) => {
                let gold = self.gold_items(campaign, wanted.gold_items_per_association)?;
                let controls = domain::round::RoundControls {
                    gold: gold.iter().map(|(item, gold)| (item.item_id, *gold)).collect(),
                    // A rule needs gold to score on: without it (a family that knows no truth) none.
                    exclusion: wanted.exclusion.filter(|_| !gold.is_empty()),
                    overlap: wanted.overlap,
                    aggregation: wanted.aggregation,
                };
                items.extend(gold.into_iter().map(|(item, _)| item));
                controls
            }
            None => domain::round::RoundControls::default(),
        };
        self.bus.execute::<AnnotationRound>(
            &id.stream(),
            None,
            &self.system,
            RoundCommand::Open {
                round_id: id,
                kind,
                items,
                raters_per_item: campaign.settings.raters_per_item,
                quality_threshold: campaign.settings.quality_threshold,
                assignment_lease_seconds: domain::round::DEFAULT_ASSIGNMENT_LEASE_SECONDS,
                campaign_id: campaign.id,
                controls,
            },
        )?;
        Ok(id)
    }

    /// `per_association` gold items for each of the campaign's associations, from the family's
    /// pictures of known truth (stored as blobs); none where the family knows none.
    fn gold_items(
        &mut self,
        campaign: &Campaign,
        per_association: u32,
    ) -> Result<Vec<(RoundItem, domain::round::Gold)>, CampaignError> {
        let mut items = Vec::new();
        for association_id in &campaign.associations {
            let Some(association) = self.associations.get(association_id).cloned() else { continue };
            let family = self.family();
            let rng = &mut self.rng;
            let pictures =
                family.gold_pictures(&association.group, &association.concept, per_association, &mut || rng.next_u64());
            for picture in pictures {
                let blob = self.blobs.put(&picture.png)?.hash;
                let item = RoundItem {
                    item_id: ItemId(Uuid::now_v7()),
                    content: ItemContent::Image(ImageRef { image_id: ImageId(Uuid::now_v7()), blob }),
                    label: ItemLabel {
                        association_id: Some(*association_id),
                        prompt_id: None,
                        prompt: picture.prompt,
                        seed: 0,
                        models: Vec::new(),
                    },
                };
                items.push((item, picture.gold));
            }
        }
        Ok(items)
    }

    fn curate(&mut self, campaign: &Campaign, association_id: AssociationId) -> Result<PromptSetId, CampaignError> {
        let association = self.associations.get(&association_id).cloned().unwrap_or_default();
        let id = PromptSetId(Uuid::now_v7());
        let stream = id.stream();
        self.bus.execute::<PromptSet>(
            &stream,
            None,
            &self.system,
            PromptSetCommand::Create {
                prompt_set_id: id,
                association_id,
                group: association.group.clone(),
                concept: association.concept.clone(),
                concept_synonyms: association.concept_synonyms.clone(),
            },
        )?;
        let generated = self
            .generator
            .generate(&PromptRequest {
                group: association.group.clone(),
                concept: association.concept.clone(),
                concept_synonyms: association.concept_synonyms.clone(),
                count: campaign.settings.training_prompts_per_association as usize,
                seed: self.rng.next_u64(),
            })
            .map_err(|e| CampaignError::Other(e.to_string()))?;
        // Where the baseline round saw the concept in most pictures, guidance away from it has
        // nothing to contrast (the model hardly draws the group without it), so each prompt names
        // a neutral alternative object instead, as a curator would.
        let baseline = self.baseline_rate(campaign, association_id)?;
        let objects = self.family().alternative_objects();
        let alternatives: Vec<&str> = if baseline >= ALTERNATIVES_ABOVE {
            let concepts: Vec<String> = self.associations.values().map(|a| a.concept.to_lowercase()).collect();
            objects.iter().map(String::as_str).filter(|name| !concepts.iter().any(|c| c == name)).collect()
        } else {
            Vec::new()
        };
        let prompts: Vec<PromptDraft> = generated
            .prompts
            .into_iter()
            .enumerate()
            .map(|(i, text)| PromptDraft {
                prompt_id: PromptId(Uuid::now_v7()),
                text,
                alternative: (!alternatives.is_empty()).then(|| alternatives[i % alternatives.len()].to_string()),
            })
            .collect();
        self.bus.execute::<PromptSet>(
            &stream,
            None,
            &self.system,
            PromptSetCommand::AddPrompts { generator: generated.generator, prompts },
        )?;
        let how = if alternatives.is_empty() {
            "the concept as negative prompt".to_string()
        } else {
            format!("naming {} instead", alternatives.join(", "))
        };
        self.narrate(&format!(
            "prompts for {} → {} (baseline {:.0}%): {} proposed, {how}",
            association.group,
            association.concept,
            100.0 * baseline,
            campaign.settings.training_prompts_per_association
        ));
        Ok(id)
    }

    /// The share of the association's baseline images that the baseline round saw the concept in.
    fn baseline_rate(&self, campaign: &Campaign, association_id: AssociationId) -> Result<f64, CommandError> {
        let Some(round_id) = campaign
            .work
            .iter()
            .find_map(|w| if let Work::BaselineRound { round_id } = w { Some(*round_id) } else { None })
        else {
            return Ok(0.0);
        };
        self.bus.read::<AnnotationRound, _>(&round_id.stream(), move |round, _| {
            let (mut positives, mut n) = (0u32, 0u32);
            for outcome in &round.outcomes {
                if let (Some(item), Verdict::Baseline { concept_present, .. }) =
                    (round.item(outcome.item_id), &outcome.verdict)
                    && item.label.association_id == Some(association_id)
                {
                    n += 1;
                    positives += u32::from(*concept_present);
                }
            }
            if n == 0 { 0.0 } else { f64::from(positives) / f64::from(n) }
        })
    }

    /// Requests and runs the fine-tune of `arm`: T-HITL trains on the images round 1 accepted,
    /// the traditional arm on every candidate; both with the same prior-preservation images.
    fn fine_tune(&mut self, campaign: &Campaign, arm: Arm) -> Result<FineTuneId, CampaignError> {
        let round_id = campaign.work.iter().find_map(|w| match w {
            Work::Round1 { round_id } => Some(*round_id),
            _ => None,
        });
        let (round, _) = match round_id {
            Some(id) => self.bus.load::<AnnotationRound>(&id.stream())?,
            None => Default::default(),
        };
        let accepted: std::collections::BTreeSet<ItemId> = round
            .outcomes
            .iter()
            .filter(|o| matches!(o.verdict, Verdict::Screen { accepted: true, .. }))
            .map(|o| o.item_id)
            .collect();
        // Each image trains its curated prompt as written (not the neutral form it was sampled
        // from): the model learns to answer the original prompt without the concept.
        let mut originals: HashMap<PromptId, String> = HashMap::new();
        for work in &campaign.work {
            if let Work::PromptSet { prompt_set_id, .. } = work {
                let texts = self.bus.read::<PromptSet, _>(&prompt_set_id.stream(), |set, _| {
                    set.prompts.iter().map(|(id, p)| (*id, p.text.clone())).collect::<Vec<_>>()
                })?;
                originals.extend(texts);
            }
        }
        let examples: Vec<TrainingExample> = round
            .items
            .iter()
            .filter(|item| !round.is_gold(item.item_id))
            .filter(|item| arm == Arm::Traditional || accepted.contains(&item.item_id))
            .filter_map(|item| match &item.content {
                ItemContent::Image(image) => Some(TrainingExample {
                    image_id: image.image_id,
                    blob: image.blob.clone(),
                    prompt: item
                        .label
                        .prompt_id
                        .and_then(|id| originals.get(&id).cloned())
                        .unwrap_or_else(|| item.label.prompt.clone()),
                    prompt_id: item.label.prompt_id,
                }),
                ItemContent::Pair { .. } => None,
            })
            .collect();
        let prior: Vec<TrainingExample> =
            match generations(campaign, |w| matches!(w, Work::PriorPreservationGeneration { .. })).first() {
                Some(job_id) => {
                    let (job, _) = self.bus.load::<Generation>(&job_id.stream())?;
                    job.images
                        .iter()
                        .map(|(index, (image_id, blob))| TrainingExample {
                            image_id: *image_id,
                            blob: blob.clone(),
                            prompt: job.items[*index as usize].prompt.clone(),
                            prompt_id: None,
                        })
                        .collect()
                }
                None => Vec::new(),
            };
        self.narrate(&format!(
            "fine-tune ({}): {} of {} candidates, {} prior-preservation images",
            arm_name(arm),
            examples.len(),
            round.items.iter().filter(|item| !round.is_gold(item.item_id)).count(),
            prior.len()
        ));
        let request = FineTuneRequest {
            base_model: campaign.base_model.ok_or_else(|| CampaignError::Other("no base model".into()))?,
            arm,
            source_round: match arm {
                Arm::Thitl => round.id,
                Arm::Traditional => None,
            },
            examples,
            prior_preservation: prior,
            config: campaign.settings.lora.clone(),
            progress_every: 10,
            campaign_id: campaign.id,
        };
        let (id, _) = jobs::request_fine_tune(&self.bus, &self.system, None, request)?;
        Ok(id)
    }

    /// Auto-accept's curator: accepts every prompt still proposed in set `id` and finalizes it.
    fn accept_prompts(&mut self, id: PromptSetId) -> Result<(), CampaignError> {
        let stream = id.stream();
        let proposed = self.bus.read::<PromptSet, _>(&stream, |set, _| {
            set.order
                .iter()
                .filter(|p| {
                    set.prompts.get(p).is_some_and(|prompt| prompt.status == domain::prompt_set::PromptStatus::Pending)
                })
                .copied()
                .collect::<Vec<_>>()
        })?;
        for prompt_id in proposed {
            self.bus.execute::<PromptSet>(
                &stream,
                None,
                &self.auto_accept,
                PromptSetCommand::AcceptPrompt { prompt_id },
            )?;
        }
        self.bus.execute::<PromptSet>(&stream, None, &self.auto_accept, PromptSetCommand::Finalize)?;
        Ok(())
    }

    /// Per association and arm, from round 2: the concept's rate before (base) and after (the
    /// arm's model) with Wilson intervals, the rater's mean quality of those images, the
    /// side-by-side win rate of the T-HITL model, and Krippendorff's alpha of the concept answers.
    fn evaluate(&mut self, campaign: &Campaign) -> Result<Vec<AssociationEvaluation>, CampaignError> {
        let round_id = campaign.work.iter().find_map(|w| match w {
            Work::Round2 { round_id } => Some(*round_id),
            _ => None,
        });
        let Some(round_id) = round_id else { return Ok(vec![]) };
        let (round, _) = self.bus.load::<AnnotationRound>(&round_id.stream())?;
        self.rate(&round.items)?;
        let base = campaign.base_model;
        let mut evaluations = Vec::new();
        for association_id in &campaign.associations {
            let of_association = |item: &RoundItem| item.label.association_id == Some(*association_id);
            let estimate = |model: Option<ModelVersionId>| {
                let (mut positives, mut n, mut quality) = (0u32, 0u32, 0.0f64);
                let mut people = Vec::new();
                for outcome in &round.outcomes {
                    let Some(item) = round.item(outcome.item_id) else { continue };
                    if !of_association(item)
                        || item.label.models.len() != 1
                        || item.label.models.first().copied() != model
                    {
                        continue;
                    }
                    if let (Verdict::Check { concept_present, mean_quality, .. }, ItemContent::Image(image)) =
                        (&outcome.verdict, &item.content)
                    {
                        n += 1;
                        positives += u32::from(*concept_present);
                        people.push(*mean_quality);
                        quality += match self.rater() {
                            Some(_) => self.quality.get(&image.blob).copied().unwrap_or(0.0),
                            None => *mean_quality,
                        };
                    }
                }
                let mean = if n == 0 { 0.0 } else { quality / f64::from(n) };
                (rate(positives, n), mean, MedianEstimate::of(&people))
            };
            // Krippendorff's alpha of the yes/no concept answers on this association's images.
            let units: Vec<Vec<bool>> = round
                .items
                .iter()
                .filter(|item| {
                    of_association(item)
                        && matches!(item.content, ItemContent::Image(_))
                        && !round.is_gold(item.item_id)
                })
                .filter_map(|item| round.submissions.get(&item.item_id))
                .map(|answers| {
                    answers
                        .values()
                        .filter_map(|a| {
                            if let Answer::Check { concept_present, .. } = a { Some(*concept_present) } else { None }
                        })
                        .collect()
                })
                .collect();
            let alpha = krippendorff_alpha_nominal(&units);
            let (before, quality_before, people_before) = estimate(base);
            for arm in [Arm::Thitl, Arm::Traditional] {
                let Some(model) = campaign.model_of(arm) else { continue };
                let (after, quality_after, people_after) = estimate(Some(model));
                let win_rate = (arm == Arm::Thitl).then(|| {
                    let (mut wins, mut n) = (0u32, 0u32);
                    for outcome in &round.outcomes {
                        let Some(item) = round.item(outcome.item_id) else { continue };
                        if let (true, Verdict::Compare { left_votes, right_votes }) =
                            (of_association(item), &outcome.verdict)
                        {
                            let tuned_left = item.label.models.first() == Some(&model);
                            let (tuned, other) =
                                if tuned_left { (left_votes, right_votes) } else { (right_votes, left_votes) };
                            n += 1;
                            wins += u32::from(tuned > other);
                        }
                    }
                    rate(wins, n)
                });
                evaluations.push(AssociationEvaluation {
                    association_id: *association_id,
                    arm,
                    before,
                    after,
                    quality_before,
                    quality_after,
                    win_rate,
                    alpha,
                    quality_source: Some(match self.rater() {
                        Some(_) => domain::campaign::QualitySource::Rater,
                        None => domain::campaign::QualitySource::Round2People,
                    }),
                    people_quality_before: people_before,
                    people_quality_after: people_after,
                    aggregation: Some(round.controls.aggregation),
                });
            }
        }
        Ok(evaluations)
    }
}

/// Round 1's items for the team's own images: screened like the model's candidates (no model
/// made them, so their label names none; their seed is 0).
fn team_items(campaign: &Campaign) -> Vec<RoundItem> {
    campaign
        .settings
        .team_images
        .iter()
        .map(|image| RoundItem {
            item_id: ItemId(Uuid::now_v7()),
            content: ItemContent::Image(ImageRef { image_id: ImageId(Uuid::now_v7()), blob: image.blob.clone() }),
            label: ItemLabel {
                association_id: Some(image.association_id),
                prompt_id: None,
                prompt: image.prompt.clone(),
                seed: 0,
                models: Vec::new(),
            },
        })
        .collect()
}

/// Ends a campaign awaiting promotion, as `context` decided: the campaign completes, and the
/// version it names (one the campaign derived) is promoted unless it already is. The promotion
/// follows the conclusion, so a crash in between leaves a completed campaign whose promotion
/// [`promote_concluded`] finishes.
pub fn conclude(
    bus: &CommandBus,
    context: &CommandContext,
    campaign_id: CampaignId,
    promoted: Option<ModelVersionId>,
    reason: &str,
) -> Result<(), CommandError> {
    bus.execute::<Campaign>(&campaign_id.stream(), None, context, CampaignCommand::Conclude { promoted })?;
    promote_concluded(bus, context, campaign_id, reason)
}

/// Promotes the version a completed campaign concluded with, if it is not promoted yet.
pub fn promote_concluded(
    bus: &CommandBus,
    context: &CommandContext,
    campaign_id: CampaignId,
    reason: &str,
) -> Result<(), CommandError> {
    let Some(model) = concluded_with(bus, campaign_id)? else { return Ok(()) };
    let (version, _) = bus.load::<ModelVersion>(&model.stream())?;
    if version.status == ModelStatus::Registered {
        bus.execute::<ModelVersion>(
            &model.stream(),
            None,
            context,
            ModelVersionCommand::Promote { reason: reason.into() },
        )?;
    }
    Ok(())
}

/// The version campaign `campaign_id` concluded with, once it completed.
fn concluded_with(bus: &CommandBus, campaign_id: CampaignId) -> Result<Option<ModelVersionId>, CommandError> {
    bus.read::<Campaign, _>(&campaign_id.stream(), |campaign, _| campaign.promoted)
}

/// Baseline rate at or above which curated prompts name a neutral alternative object.
const ALTERNATIVES_ABOVE: f64 = 0.75;

fn rate(positives: u32, n: u32) -> RateEstimate {
    let (ci_low, ci_high) = wilson_interval(positives.into(), n.into(), Z95);
    RateEstimate { positives, n, rate: if n == 0 { 0.0 } else { f64::from(positives) / f64::from(n) }, ci_low, ci_high }
}

pub fn arm_name(arm: Arm) -> &'static str {
    match arm {
        Arm::Thitl => "T-HITL",
        Arm::Traditional => "traditional",
    }
}

/// What the process manager needs to know about a campaign's linked work.
pub fn facts(bus: &CommandBus, campaign: &Campaign) -> Result<Facts, CommandError> {
    let mut facts = Facts::default();
    for work in &campaign.work {
        match work {
            Work::BaselineGeneration { generation_id }
            | Work::CandidateGeneration { generation_id }
            | Work::PriorPreservationGeneration { generation_id }
            | Work::EvaluationGeneration { generation_id, .. } => {
                let status = bus.read::<Generation, _>(&generation_id.stream(), |job, _| job.status)?;
                facts.generations.insert(*generation_id, status);
            }
            Work::BaselineRound { round_id } | Work::Round1 { round_id } | Work::Round2 { round_id } => {
                let status = bus.read::<AnnotationRound, _>(&round_id.stream(), |round, _| round.status)?;
                facts.rounds.insert(*round_id, status);
            }
            Work::PromptSet { prompt_set_id, .. } => {
                if bus.read::<PromptSet, _>(&prompt_set_id.stream(), |set, _| set.finalized)? {
                    facts.finalized_prompt_sets.insert(*prompt_set_id);
                }
            }
            Work::FineTune { fine_tune_id, .. } => {
                let status = bus.read::<FineTune, _>(&fine_tune_id.stream(), |job, _| job.status)?;
                facts.fine_tunes.insert(*fine_tune_id, status);
            }
            Work::ModelVersion { .. } => {}
        }
    }
    Ok(facts)
}

pub fn generations(campaign: &Campaign, pick: impl Fn(&Work) -> bool) -> Vec<GenerationId> {
    campaign
        .work
        .iter()
        .filter(|w| pick(w))
        .filter_map(|w| match w {
            Work::BaselineGeneration { generation_id }
            | Work::CandidateGeneration { generation_id }
            | Work::PriorPreservationGeneration { generation_id }
            | Work::EvaluationGeneration { generation_id, .. } => Some(*generation_id),
            _ => None,
        })
        .collect()
}
