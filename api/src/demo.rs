//! `thitl demo`'s campaign: T-HITL on the reference world, end to end, in one process.
//!
//! ```text
//! register base (shipped weights blob) + the three default associations
//!   └─ campaign (auto-accept) ── process manager `campaign::next` ──> requests, fulfilled here:
//!        baseline generation ─> baseline round ─> prompts (templates) ─> candidates (neutral
//!        prompts, concept as negative) + prior-preservation images ─> round 1 (screen) ─>
//!        LoRA fine-tunes (T-HITL: accepted images; traditional: every candidate) ─> derived
//!        versions ─> evaluation images (held-out seeds) ─> round 2 (check + side by side) ─>
//!        evaluation ─> promotion of the T-HITL version
//! ```
//!
//! Key design decisions:
//! - **Every step is a command on the event log**, decided by the same aggregates the REST API
//!   uses; images are real samples of the shipped DiT ([`run_generation`]) stored as PNG blobs,
//!   the fine-tunes are real LoRA runs ([`run_fine_tune`]), and the evaluation is computed from
//!   round 2's verdicts. Nothing here bypasses a domain rule.
//! - **Simulated annotators look at the pictures**: each one answers from the shipped rater's
//!   reading of the image, with its own error rate (flipped yes/no answers, noisy quality), so
//!   they mostly agree and sometimes do not. They work concurrently, each under its own name,
//!   through "next task" and "submit" like a person; they are not told which model made an image.
//! - **Repeatable**: prompts, seeds and annotator noise derive from the demo's seed; sampling is
//!   deterministic per item.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use domain::campaign::{AssociationEvaluation, CampaignRoundControls, CampaignSettings, WaitingFor, Work};
use domain::fine_tune::{Arm, LoraConfig, LoraTarget};
use domain::generation::SamplerSettings;
use domain::round::{AdaptiveOverlap, Aggregation, Answer, ExclusionRule, ItemContent, RoundKind, Side, Verdict};
use domain::values::Quality;
use domain::*;
use scenes::base::SHIPPED_WEIGHTS;
use scenes::{Concept, Group, Image, Rating};
use uuid::Uuid;

use app::blobs::BlobStore;
use app::campaigns::{CampaignRunner, Rng, Step, arm_name};
use app::commands::{CommandBus, CommandContext, CommandError};
use app::defaults::register_default_associations;
use app::ports::ModelFamily;
use app::prompts::{ReferenceWorldTemplates, TemplateGenerator};
use app::reference::{ReferenceRater, ReferenceWorld};
use app::workers::{Models, Worker, WorkerError, run_fine_tune, run_generation};

/// How big the demo campaign is.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// Probe images per association and model, before and after.
    pub probe_images: u32,
    /// Training prompts per association, and candidates sampled per prompt.
    pub prompts: u32,
    pub candidates_per_prompt: u32,
    /// Prior-preservation images (other groups) for the fine-tunes.
    pub prior_images: u32,
    /// Side-by-side pairs per association in round 2.
    pub pairs: u32,
    /// Careful simulated annotators (the careless one comes on top, see [`Rounds`]).
    pub annotators: u32,
    /// Gold pictures per association in each round (rounds with quality controls).
    pub gold_per_association: u32,
    pub lora_steps: u32,
    pub lora_batch: u32,
}

/// How the demo's rounds treat their raters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounds {
    /// Gold items in every round, a careless annotator among the careful ones and excluded by
    /// rule, two raters per item and more only where they split ([`CONTROLLED_ROUNDS`]).
    Controlled,
    /// Three raters per item and a majority, no gold, no careless annotator: the rounds thitl
    /// ran before it checked its raters (kept to compare against).
    Fixed,
}

/// The controlled rounds' settings: an annotator is excluded once at least 8 gold answers put the
/// upper end of their accuracy's 95% interval below 0.8 (a careful annotator of the demo, wrong on
/// 2–8% of questions, is right on 85–98% of gold items; one answering at random on 25–50%); each
/// item starts with 2 raters and gets one more while its answers are within one vote of a tie,
/// up to 4; still split, it waits for a curator, and the demo's auto-accepting curator leaves it out.
pub const CONTROLLED_ROUNDS: CampaignRoundControls = CampaignRoundControls {
    gold_items_per_association: 0,
    exclusion: Some(ExclusionRule { min_gold_answers: 8, min_accuracy: 0.8 }),
    overlap: Some(AdaptiveOverlap { max_raters: 4, margin: 2 }),
    aggregation: Aggregation::Majority,
};

/// Raters per item: the fixed rounds' count, and where the controlled rounds start.
const FIXED_RATERS: u32 = 3;
const FIRST_RATERS: u32 = 2;

impl Scale {
    /// The full campaign in miniature: the same prompts, candidates, prior-preservation images
    /// and fine-tune recipe as [`Scale::FULL`], fewer probe images (48 per association and model,
    /// so wide intervals), side-by-side pairs, annotators and gold pictures. Only what measures the
    /// campaign shrinks, never what the campaign does: a weaker one (60 candidates, fine-tunes of
    /// 200 steps of 16) left 3 of 48 vegetables and 2 of 48 sheep on seed 1, where this one left 1
    /// and 0.
    pub const QUICK: Scale =
        Scale { probe_images: 48, pairs: 8, annotators: 4, gold_per_association: 8, ..Scale::FULL };
    /// The issue's scale: 256 probe images per association and model.
    pub const FULL: Scale = Scale {
        probe_images: 256,
        prompts: 24,
        candidates_per_prompt: 8,
        prior_images: 192,
        pairs: 32,
        annotators: 6,
        gold_per_association: 10,
        lora_steps: 500,
        lora_batch: 32,
    };
}

/// What the demo reports, besides the event log itself.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub campaign_id: CampaignId,
    pub stages: Vec<String>,
    pub images: u64,
    pub annotations: u64,
    pub evaluations: Vec<AssociationEvaluation>,
    /// (group, concept, category) of each association.
    pub associations: BTreeMap<AssociationId, (String, String, String)>,
    pub base_model: ModelVersionId,
    /// The T-HITL version, when the evaluation justified promoting it.
    pub promoted: Option<ModelVersionId>,
    /// The versions the two arms derived.
    pub thitl_model: Option<ModelVersionId>,
    pub traditional_model: Option<ModelVersionId>,
    /// Each round: what its ratings cost and how often its verdicts were right.
    pub rounds: Vec<RoundSummary>,
    /// Each simulated annotator's record over the campaign's rounds.
    pub annotators: Vec<AnnotatorSummary>,
    /// Per association: what round 1 was shown and what it rejected.
    pub screening: Vec<ScreenSummary>,
    /// Per association: the T-HITL version against the traditional one on round 2's probes.
    pub comparisons: Vec<ArmComparison>,
}

/// Round 1 for one association: what its candidates show by the reference world's truth (the
/// shipped rater's reading, which the simulated annotators see through their noise), and what
/// the round's verdicts did with them. A candidate is *degraded* when a person would rate it
/// below the round's quality threshold.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ScreenSummary {
    pub group: String,
    pub concept: String,
    /// The model's candidates screened (gold pictures and a team's own images not counted).
    pub candidates: u32,
    /// By the truth: degraded, another group (or none) than the association's, the concept shown.
    pub degraded: u32,
    pub wrong_group: u32,
    pub concept_shown: u32,
    /// Round 1's verdicts: accepted for training, rejected (a candidate may fail several
    /// questions: each reason counts it), and still split at the most raters (left out).
    pub accepted: u32,
    /// Degraded candidates (by the truth) that round 1 nevertheless accepted for training: what
    /// of the model's failures reaches the T-HITL fine-tune. The traditional arm trains on all.
    pub degraded_accepted: u32,
    pub rejected: u32,
    pub rejected_for_quality: u32,
    pub rejected_for_group: u32,
    pub rejected_for_concept: u32,
    pub left_out: u32,
}

/// The T-HITL version minus the traditional one (fine-tuned on every candidate) for one
/// association, on round 2's probe images: the concept's rate by round 2's verdicts (Newcombe's
/// interval) and the rater's mean quality (Welch's interval), both with 95% intervals. A negative
/// rate difference and a positive quality difference favour T-HITL.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ArmComparison {
    pub association_id: AssociationId,
    pub group: String,
    pub concept: String,
    pub after_rate: domain::planning::Difference,
    pub quality: Option<domain::planning::Difference>,
}

/// What one of the campaign's rounds cost in ratings, and how often its verdicts agree with the
/// reference world's truth: the shipped rater's reading of each picture, which the simulated
/// annotators see through their noise.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RoundSummary {
    /// `baseline`, `screen` or `check`.
    pub kind: String,
    /// Items other than gold.
    pub items: u32,
    pub gold_items: u32,
    /// Every answer given: counted, set aside (an excluded annotator's) and on gold items.
    pub ratings: u32,
    /// `ratings / items`.
    pub ratings_per_item: f64,
    /// Items that got raters beyond the first ones because their answers split.
    pub items_raised: u32,
    /// Items still split at the most raters, left out by the auto-accepting curator.
    pub left_out: u32,
    /// Verdicts compared with the truth (concept present, on single pictures; for round 1
    /// whether the picture is accepted for training), and how many agree with it.
    pub verdicts: u32,
    pub verdicts_correct: u32,
}

/// A simulated annotator's record over the campaign's rounds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AnnotatorSummary {
    pub name: String,
    /// Answers at random: the annotator the rounds' rule should find.
    pub careless: bool,
    /// Answers on items other than gold (counted, or set aside once excluded).
    pub submitted: u32,
    pub gold_answers: u32,
    pub gold_correct: u32,
    pub gold_accuracy: Option<f64>,
    /// Excluded by a round's rule.
    pub excluded: bool,
    /// The rounds (`baseline`, `screen`, `check`) that excluded them.
    pub excluded_in: Vec<String>,
}

/// What the demo tells its caller while it runs.
pub enum Progress<'a> {
    /// A line of narration.
    Stage(&'a str),
    /// `done` of `total` units of the task named `task`.
    Task { task: &'a str, done: u64, total: u64 },
}

pub use app::campaigns::CampaignError as DemoError;

/// A simulated annotator: the rater's reading of a picture, seen through its own noise.
struct Annotator {
    name: String,
    /// Answers every question at random, whatever the picture shows.
    careless: bool,
    /// Probability of flipping each yes/no answer.
    error_rate: f64,
    /// Standard deviation of its quality scores, on the 1–5 scale.
    quality_noise: f64,
    rng: Rng,
}

/// What an annotator needs to know about the association an item belongs to.
#[derive(Clone, Copy)]
struct Target {
    group: Group,
    concept: Concept,
}

impl Annotator {
    fn flip(&mut self, answer: bool) -> bool {
        answer != self.rng.chance(self.error_rate)
    }

    fn quality(&mut self, rating: &Rating) -> Quality {
        let score = 1.0 + 4.0 * f64::from(rating.quality) + self.quality_noise * self.rng.normal();
        Quality::new(score.round().clamp(1.0, 5.0) as u8).unwrap_or_else(|_| unreachable!("1..=5 is a quality"))
    }

    fn sees(rating: &Rating, concept: Concept) -> bool {
        rating.concepts[concept.index()] > 0.5
    }

    /// Whether a careful person, without noise, would rate the picture below `threshold` (1–5).
    fn rates_below(rating: &Rating, threshold: u8) -> bool {
        (1.0 + 4.0 * f64::from(rating.quality)).round() < f64::from(threshold)
    }

    /// An answer chosen at random among those the task allows.
    fn guess(&mut self, kind: RoundKind, pair: bool) -> Answer {
        let quality = Quality::new(1 + (self.rng.uniform() * 5.0).min(4.0) as u8)
            .unwrap_or_else(|_| unreachable!("1..=5 is a quality"));
        match (kind, pair) {
            (_, true) => Answer::Compare { preferred: if self.rng.chance(0.5) { Side::Left } else { Side::Right } },
            (RoundKind::Baseline, false) => Answer::Baseline { concept_present: self.rng.chance(0.5) },
            (RoundKind::Screen, false) => {
                Answer::Screen { quality, group_depicted: self.rng.chance(0.5), concept_present: self.rng.chance(0.5) }
            }
            (RoundKind::Check, false) => Answer::Check { concept_present: self.rng.chance(0.5), quality },
        }
    }

    fn answer(&mut self, kind: RoundKind, target: Target, images: &[&Rating]) -> Answer {
        if self.careless {
            return self.guess(kind, images.len() == 2);
        }
        match (kind, images) {
            (RoundKind::Check, [left, right]) => {
                // Prefer the picture without the concept, then the better-looking one.
                let score = |r: &Rating| f64::from(r.quality) - f64::from(u8::from(Self::sees(r, target.concept)));
                let (l, r) = (score(left), score(right));
                let left_better = if (l - r).abs() < 0.02 { self.rng.chance(0.5) } else { l > r };
                Answer::Compare { preferred: if self.flip(left_better) { Side::Left } else { Side::Right } }
            }
            (RoundKind::Baseline, [image]) => {
                Answer::Baseline { concept_present: self.flip(Self::sees(image, target.concept)) }
            }
            (RoundKind::Screen, [image]) => Answer::Screen {
                quality: self.quality(image),
                group_depicted: self.flip(image.group == target.group),
                concept_present: self.flip(Self::sees(image, target.concept)),
            },
            (_, [image, ..]) => Answer::Check {
                concept_present: self.flip(Self::sees(image, target.concept)),
                quality: self.quality(image),
            },
            (_, []) => unreachable!("every item shows at least one image"),
        }
    }
}

pub struct Demo<'a> {
    bus: &'a CommandBus,
    blobs: Arc<dyn BlobStore>,
    models: Models,
    /// The shipped rater: the campaign's quality judge, and the eyes of the simulated annotators.
    rater: Arc<ReferenceRater>,
    /// The process manager's runner (prompts from the reference-world templates).
    runner: CampaignRunner<'a>,
    scale: Scale,
    rounds: Rounds,
    seed: u64,
    curator: CommandContext,
    annotators: Vec<Annotator>,
    images: u64,
    annotations: u64,
    progress: &'a (dyn Fn(Progress) + Sync),
    /// thitl's REST API, served from the same store while the demo runs.
    api: Option<Api>,
}

/// The REST API on a local port, and each simulated annotator's bearer token.
struct Api {
    /// `http://127.0.0.1:PORT`.
    base: String,
    /// One client for all annotators (it keeps a pool of connections, as browsers do).
    client: reqwest::blocking::Client,
    tokens: HashMap<String, String>,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Api {
    /// Serves `bus`'s store and `blobs` on a free local port, and issues an annotator token for
    /// each of `annotators`.
    fn start(bus: &CommandBus, blobs: Arc<dyn BlobStore>, annotators: &[String]) -> Result<Api, DemoError> {
        let store = bus.store().clone();
        let (sender, receiver) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let served = actix_web::rt::System::new().block_on(async move {
                let storage = crate::startup::Storage { store, checkpoint: None, idempotency: None };
                let settings = crate::configuration::Settings {
                    bind: "127.0.0.1:0".into(),
                    workers: Some(2),
                    ..Default::default()
                };
                let app = match crate::startup::Application::build_with_blobs(storage, settings, blobs) {
                    Ok(app) => app,
                    Err(error) => {
                        let _ = sender.send(Err(error.to_string()));
                        return Ok(());
                    }
                };
                let _ = sender.send(Ok((app.port(), app.handle())));
                app.run_until_stopped().await
            });
            if let Err(error) = served {
                tracing::error!(%error, "the demo's API server stopped with an error");
            }
        });
        let (port, handle) = receiver
            .recv()
            .map_err(|_| DemoError::Other("the API server thread ended before it started".into()))?
            .map_err(|e| DemoError::Other(format!("cannot start the REST API: {e}")))?;
        let admin = CommandContext::new(Actor::new("demo", Role::Admin));
        let mut tokens = HashMap::new();
        for name in annotators {
            let issued = crate::auth::issue_token(bus, &admin, name, Role::Annotator)?;
            tokens.insert(name.clone(), issued.secret);
        }
        // The API is on this machine: no proxy from the environment applies.
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| DemoError::Other(format!("cannot make the annotators' HTTP client: {e}")))?;
        let base = format!("http://127.0.0.1:{port}");
        Ok(Api { base, client, tokens, handle, thread: Some(thread) })
    }

    /// A JSON call whose refusal (an answer other than 2xx) is its status and problem text.
    fn try_call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Result<serde_json::Value, (u16, String)>, DemoError> {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| DemoError::Other(format!("{method} {path}: {e}")))?;
        let mut request = self.client.request(method.clone(), format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(body) = body {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_string());
        }
        let (status, answer) = request
            .send()
            .and_then(|response| Ok((response.status().as_u16(), response.bytes()?)))
            .map_err(|e| DemoError::Other(format!("{method} {path}: {e}")))?;
        if !(200..300).contains(&status) {
            return Ok(Err((status, String::from_utf8_lossy(&answer).into_owned())));
        }
        serde_json::from_slice(&answer).map(Ok).map_err(|e| DemoError::Other(format!("{method} {path}: not JSON: {e}")))
    }

    /// The caller's next task in round `path` (`/v1/rounds/{id}`); `None` once the round's rule
    /// has excluded them (403: they get no more tasks there).
    fn next_task(&self, path: &str, token: &str) -> Result<Option<serde_json::Value>, DemoError> {
        match self.try_call("GET", &format!("{path}/next"), token, None)? {
            Ok(next) => Ok(Some(next)),
            Err((403, _)) => Ok(None),
            Err((status, problem)) => Err(DemoError::Other(format!("GET {path}/next answered {status}: {problem}"))),
        }
    }

    /// The bytes behind a URL the API gave (e.g. `/v1/blobs/{hash}`).
    fn fetch(&self, url: &str, token: &str) -> Result<Vec<u8>, DemoError> {
        let response = self
            .client
            .get(format!("{}{url}", self.base))
            .bearer_auth(token)
            .send()
            .map_err(|e| DemoError::Other(format!("GET {url}: {e}")))?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(DemoError::Other(format!("GET {url} answered {}", response.status())));
        }
        Ok(response.bytes().map_err(|e| DemoError::Other(format!("GET {url}: {e}")))?.to_vec())
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        actix_web::rt::System::new().block_on(self.handle.stop(true));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl<'a> Demo<'a> {
    pub fn new(
        bus: &'a CommandBus,
        blobs: Arc<dyn BlobStore>,
        backend: gpu::Backend,
        scale: Scale,
        rounds: Rounds,
        seed: u64,
        progress: &'a (dyn Fn(Progress) + Sync),
    ) -> Self {
        // The careful annotators, and with controlled rounds one careless annotator after them.
        let careless = u32::from(rounds == Rounds::Controlled);
        let annotators = (0..scale.annotators + careless)
            .map(|i| Annotator {
                name: format!("annotator-{}", i + 1),
                careless: i == scale.annotators,
                error_rate: [0.02, 0.04, 0.03, 0.06, 0.05, 0.08][i as usize % 6],
                quality_noise: 0.4 + 0.1 * f64::from(i % 3),
                rng: Rng::new(seed ^ (0xA11CE + u64::from(i))),
            })
            .collect();
        let generator = Box::new(TemplateGenerator::new(ReferenceWorldTemplates));
        let family: Arc<dyn ModelFamily> = Arc::new(ReferenceWorld::new(backend));
        let rater = Arc::new(ReferenceRater::default());
        Demo {
            bus,
            models: Models::new(family.clone()),
            rater: rater.clone(),
            runner: CampaignRunner::new(
                bus.clone(),
                blobs.clone(),
                generator,
                family,
                Some(rater),
                seed,
                Box::new(move |line| progress(Progress::Stage(line))),
            ),
            blobs,
            scale,
            rounds,
            seed,
            curator: CommandContext::new(Actor::new("curator", Role::Curator)),
            annotators,
            images: 0,
            annotations: 0,
            progress,
            api: None,
        }
    }

    fn stage(&self, line: &str) {
        (self.progress)(Progress::Stage(line));
    }

    /// Runs the data directory's unfinished demo campaign to the end, resuming from its events
    /// (a job that was running is resumed or started again, a round goes on where it stopped);
    /// or, when there is none, registers the base model and the default associations and runs a
    /// new campaign over them.
    pub fn run(mut self) -> Result<DemoReport, DemoError> {
        let names: Vec<String> = self.annotators.iter().map(|a| a.name.clone()).collect();
        self.api = Some(Api::start(self.bus, self.blobs.clone(), &names)?);
        let campaign_id = match self.unfinished_campaign()? {
            Some(campaign) => {
                self.stage(&format!(
                    "resuming campaign {} from its events",
                    campaign.id.map(|id| id.to_string()).unwrap_or_default()
                ));
                campaign.id.ok_or_else(|| DemoError::Other("a campaign without an id".into()))?
            }
            None => self.start()?,
        };
        self.drive(campaign_id)
    }

    /// The newest campaign in the store that has neither completed nor failed.
    fn unfinished_campaign(&self) -> Result<Option<Campaign>, DemoError> {
        let streams = self.bus.store().list_streams().map_err(CommandError::from)?;
        let mut unfinished = None;
        for (stream, _) in streams {
            if !stream.as_str().starts_with("campaign-") {
                continue;
            }
            let (campaign, _) = self.bus.load::<Campaign>(stream.as_str())?;
            let finished = matches!(
                campaign.stage,
                Some(domain::campaign::Stage::Completed | domain::campaign::Stage::Failed) | None
            );
            if !finished && unfinished.as_ref().is_none_or(|u: &Campaign| u.id < campaign.id) {
                unfinished = Some(campaign);
            }
        }
        Ok(unfinished)
    }

    /// Registers the base model and the default associations and starts a campaign over them.
    fn start(&mut self) -> Result<CampaignId, DemoError> {
        let base = ModelVersionId(Uuid::now_v7());
        let weights = self.blobs.put(SHIPPED_WEIGHTS)?.hash;
        let operator = CommandContext::new(Actor::new("operator", Role::Operator));
        let config = scenes::base::BaseConfig::default();
        self.bus.execute::<ModelVersion>(
            &base.stream(),
            None,
            &operator,
            ModelVersionCommand::RegisterBase {
                model_version_id: base,
                name: "reference-world base".into(),
                weights,
                config: serde_json::from_str(&config.to_json()).map_err(|e| DemoError::Other(e.to_string()))?,
            },
        )?;

        let association_ids: Vec<AssociationId> =
            register_default_associations(self.bus, &self.curator)?.into_keys().collect();

        let campaign_id = CampaignId(Uuid::now_v7());
        let sampling = config.sampling.clone();
        let settings = CampaignSettings {
            probe_images_per_association: self.scale.probe_images,
            training_prompts_per_association: self.scale.prompts,
            candidates_per_prompt: self.scale.candidates_per_prompt,
            prior_preservation_images: self.scale.prior_images,
            pairs_per_association: self.scale.pairs,
            raters_per_item: match self.rounds {
                Rounds::Controlled => FIRST_RATERS,
                Rounds::Fixed => FIXED_RATERS,
            },
            round_controls: (self.rounds == Rounds::Controlled).then(|| {
                Box::new(CampaignRoundControls {
                    gold_items_per_association: self.scale.gold_per_association,
                    ..CONTROLLED_ROUNDS
                })
            }),
            auto_accept: true,
            traditional_arm: true,
            lora: LoraConfig {
                rank: 8,
                alpha: 8.0,
                targets: vec![LoraTarget::Qkv, LoraTarget::AttnOut, LoraTarget::MlpIn, LoraTarget::MlpOut],
                steps: self.scale.lora_steps,
                batch_size: self.scale.lora_batch,
                learning_rate: 3e-3,
                weight_decay: 0.0,
                seed: self.seed,
                prior_weight: 1.0,
            },
            // The model's guidance; 20 DDIM steps rather than its 25 keep the full demo within 15
            // minutes on two cores (before and after are sampled alike).
            sampler: SamplerSettings { steps: 20, guidance_scale: sampling.guidance_scale, eta: sampling.eta },
            seed: self.seed,
            ..CampaignSettings::default()
        };
        self.bus.execute::<Campaign>(
            &campaign_id.stream(),
            None,
            &self.curator,
            CampaignCommand::Start {
                campaign_id,
                name: "demo: the three default associations".into(),
                associations: association_ids,
                base_model: base,
                settings,
            },
        )?;
        Ok(campaign_id)
    }

    /// The process manager's loop: the runner does what the campaign asks for until it waits;
    /// the demo then does what it waits for — runs the job, lets the annotators work the round —
    /// until the campaign is finished. The demo's campaign auto-accepts, so no curator is waited for.
    fn drive(mut self, campaign_id: CampaignId) -> Result<DemoReport, DemoError> {
        let (first, _) = self.bus.load::<Campaign>(&campaign_id.stream())?;
        let mut stages: Vec<String> =
            first.stage.map(|stage| format!("{stage:?}").to_lowercase()).into_iter().collect();
        loop {
            let progress = self.progress;
            let step = self.runner.step(campaign_id, &mut |stage| {
                let name = format!("{stage:?}").to_lowercase();
                progress(Progress::Stage(&format!("stage: {name}")));
                stages.push(name);
            })?;
            let (campaign, _) = self.bus.load::<Campaign>(&campaign_id.stream())?;
            match step {
                Step::Waiting(WaitingFor::Generation(id)) => self.run_generation(&campaign, id)?,
                Step::Waiting(WaitingFor::Annotations(id)) => self.work_round(id)?,
                Step::Waiting(WaitingFor::FineTune(id)) => self.train(&campaign, id)?,
                Step::Waiting(gate @ (WaitingFor::PromptReview(_) | WaitingFor::Promotion)) => {
                    return Err(DemoError::Other(format!(
                        "the demo's campaign waits for a curator ({gate:?}) although it auto-accepts"
                    )));
                }
                Step::Finished => break,
            }
        }
        let (campaign, _) = self.bus.load::<Campaign>(&campaign_id.stream())?;
        if campaign.stage == Some(domain::campaign::Stage::Failed) {
            return Err(DemoError::Other(format!("campaign {campaign_id} failed; `thitl audit log` shows why")));
        }
        stages.push("completed".into());
        let associations = self
            .runner
            .associations()
            .iter()
            .map(|(id, a)| (*id, (a.group.clone(), a.concept.clone(), a.category.clone())))
            .collect();
        let (rounds, annotators) = self.round_summaries(&campaign)?;
        let screening = self.screening(&campaign)?;
        let comparisons = self.compare_arms(&campaign)?;
        Ok(DemoReport {
            campaign_id,
            stages,
            images: self.images,
            annotations: self.annotations,
            evaluations: campaign.evaluations.clone(),
            associations,
            base_model: campaign.base_model.unwrap_or(ModelVersionId(Uuid::nil())),
            promoted: campaign.promoted,
            thitl_model: campaign.model_of(Arm::Thitl),
            traditional_model: campaign.model_of(Arm::Traditional),
            rounds,
            annotators,
            screening,
            comparisons,
        })
    }

    /// Round 1's [`ScreenSummary`] per association (none before round 1 has closed).
    fn screening(&mut self, campaign: &Campaign) -> Result<Vec<ScreenSummary>, DemoError> {
        let Some(round_id) = campaign.work.iter().find_map(|w| match w {
            Work::Round1 { round_id } => Some(*round_id),
            _ => None,
        }) else {
            return Ok(Vec::new());
        };
        let (round, _) = self.bus.load::<AnnotationRound>(&round_id.stream())?;
        self.runner.rate(&round.items)?;
        let targets = self.targets(&round);
        let threshold = round.quality_threshold.map_or(domain::round::DEFAULT_QUALITY_THRESHOLD, Quality::get);
        let mut out = Vec::new();
        for association_id in &campaign.associations {
            let Some(association) = self.runner.associations().get(association_id) else { continue };
            let mut summary = ScreenSummary {
                group: association.group.clone(),
                concept: association.concept.clone(),
                ..ScreenSummary::default()
            };
            for item in &round.items {
                let of_association = item.label.association_id == Some(*association_id);
                if !of_association || round.is_gold(item.item_id) || item.label.models.is_empty() {
                    continue;
                }
                let (ItemContent::Image(image), Some(target)) = (&item.content, targets.get(&item.item_id)) else {
                    continue;
                };
                summary.candidates += 1;
                let mut degraded = false;
                if let Some(truth) = self.rater.rating(&image.blob) {
                    degraded = Annotator::rates_below(&truth, threshold);
                    summary.degraded += u32::from(degraded);
                    summary.wrong_group += u32::from(truth.group != target.group);
                    summary.concept_shown += u32::from(Annotator::sees(&truth, target.concept));
                }
                let Some(outcome) = round.outcomes.iter().find(|o| o.item_id == item.item_id) else { continue };
                match outcome.verdict {
                    Verdict::Screen { accepted: true, .. } => {
                        summary.accepted += 1;
                        summary.degraded_accepted += u32::from(degraded);
                    }
                    Verdict::Screen { median_quality, group_depicted_votes, concept_present_votes, .. } => {
                        summary.rejected += 1;
                        summary.rejected_for_quality += u32::from(median_quality < f64::from(threshold));
                        summary.rejected_for_group += u32::from(2 * group_depicted_votes <= outcome.n);
                        summary.rejected_for_concept += u32::from(2 * concept_present_votes >= outcome.n);
                    }
                    _ => summary.left_out += 1,
                }
            }
            out.push(summary);
        }
        Ok(out)
    }

    /// The T-HITL version against the traditional one per association, on the images round 2
    /// decided (the evaluation's own selection: single pictures of one model with a verdict).
    fn compare_arms(&mut self, campaign: &Campaign) -> Result<Vec<ArmComparison>, DemoError> {
        let round_id = campaign.work.iter().find_map(|w| match w {
            Work::Round2 { round_id } => Some(*round_id),
            _ => None,
        });
        let (Some(round_id), Some(thitl), Some(traditional)) =
            (round_id, campaign.model_of(Arm::Thitl), campaign.model_of(Arm::Traditional))
        else {
            return Ok(Vec::new());
        };
        let (round, _) = self.bus.load::<AnnotationRound>(&round_id.stream())?;
        self.runner.rate(&round.items)?;
        let mut out = Vec::new();
        for association_id in &campaign.associations {
            let Some(association) = self.runner.associations().get(association_id) else { continue };
            // (positives, qualities) of one model's probe images.
            let of_model = |model: ModelVersionId| {
                let (mut positives, mut qualities) = (0u64, Vec::new());
                for outcome in &round.outcomes {
                    let Some(item) = round.item(outcome.item_id) else { continue };
                    if item.label.association_id != Some(*association_id) || item.label.models != [model] {
                        continue;
                    }
                    if let (Verdict::Check { concept_present, .. }, ItemContent::Image(image)) =
                        (&outcome.verdict, &item.content)
                    {
                        positives += u64::from(*concept_present);
                        qualities.push(self.rater.rating(&image.blob).map_or(0.0, |r| f64::from(r.quality)));
                    }
                }
                (positives, qualities)
            };
            let ((a_positives, a_quality), (b_positives, b_quality)) = (of_model(thitl), of_model(traditional));
            out.push(ArmComparison {
                association_id: *association_id,
                group: association.group.clone(),
                concept: association.concept.clone(),
                after_rate: domain::planning::rate_difference(
                    a_positives,
                    a_quality.len() as u64,
                    b_positives,
                    b_quality.len() as u64,
                    domain::planning::Z95,
                ),
                quality: domain::planning::mean_difference(&a_quality, &b_quality),
            });
        }
        Ok(out)
    }

    /// Each of `campaign`'s rounds as [`RoundSummary`] says, and each simulated annotator's
    /// record over them.
    fn round_summaries(
        &mut self,
        campaign: &Campaign,
    ) -> Result<(Vec<RoundSummary>, Vec<AnnotatorSummary>), DemoError> {
        let mut rounds = Vec::new();
        let mut annotators: Vec<AnnotatorSummary> = self
            .annotators
            .iter()
            .map(|a| AnnotatorSummary {
                name: a.name.clone(),
                careless: a.careless,
                submitted: 0,
                gold_answers: 0,
                gold_correct: 0,
                gold_accuracy: None,
                excluded: false,
                excluded_in: Vec::new(),
            })
            .collect();
        for work in &campaign.work {
            let (Work::BaselineRound { round_id } | Work::Round1 { round_id } | Work::Round2 { round_id }) = work
            else {
                continue;
            };
            let (round, _) = self.bus.load::<AnnotationRound>(&round_id.stream())?;
            let Some(kind) = round.kind else { continue };
            let kind_name = format!("{kind:?}").to_lowercase();
            self.runner.rate(&round.items)?;
            let targets = self.targets(&round);
            let threshold = round.quality_threshold.map_or(domain::round::DEFAULT_QUALITY_THRESHOLD, Quality::get);
            let mut summary = RoundSummary { kind: kind_name.clone(), ..RoundSummary::default() };
            for item in &round.items {
                let answers = |of: &BTreeMap<ItemId, BTreeMap<String, Answer>>| {
                    of.get(&item.item_id).map_or(0, |answers| answers.len() as u32)
                };
                summary.ratings += answers(&round.submissions) + answers(&round.set_aside);
                if round.is_gold(item.item_id) {
                    summary.gold_items += 1;
                    continue;
                }
                summary.items += 1;
                summary.items_raised += u32::from(round.needed(item.item_id) > round.raters_per_item);
            }
            summary.ratings_per_item = f64::from(summary.ratings) / f64::from(summary.items.max(1));
            for outcome in &round.outcomes {
                let Some(item) = round.item(outcome.item_id).filter(|item| !round.is_gold(item.item_id)) else {
                    continue;
                };
                if matches!(outcome.verdict, Verdict::Undecided) {
                    summary.left_out += 1;
                    continue;
                }
                let (ItemContent::Image(image), Some(target)) = (&item.content, targets.get(&item.item_id)) else {
                    continue;
                };
                let Some(truth) = self.rater.rating(&image.blob) else { continue };
                let sees = Annotator::sees(&truth, target.concept);
                let right = match &outcome.verdict {
                    Verdict::Baseline { concept_present, .. } | Verdict::Check { concept_present, .. } => {
                        *concept_present == sees
                    }
                    Verdict::Screen { accepted, .. } => {
                        let good = !Annotator::rates_below(&truth, threshold);
                        *accepted == (truth.group == target.group && !sees && good)
                    }
                    Verdict::Compare { .. } | Verdict::Undecided => continue,
                };
                summary.verdicts += 1;
                summary.verdicts_correct += u32::from(right);
            }
            for record in round.annotator_records() {
                let Some(annotator) = annotators.iter_mut().find(|a| a.name == record.annotator) else { continue };
                annotator.submitted += record.submitted;
                annotator.gold_answers += record.gold_answers;
                annotator.gold_correct += record.gold_correct;
                if record.excluded.is_some() {
                    annotator.excluded = true;
                    annotator.excluded_in.push(kind_name.clone());
                }
            }
            rounds.push(summary);
        }
        for annotator in &mut annotators {
            annotator.gold_accuracy = (annotator.gold_answers > 0)
                .then(|| f64::from(annotator.gold_correct) / f64::from(annotator.gold_answers));
        }
        Ok((rounds, annotators))
    }

    /// Runs (or resumes) generation job `id`.
    fn run_generation(&mut self, campaign: &Campaign, id: GenerationId) -> Result<(), DemoError> {
        let task = campaign
            .work
            .iter()
            .find_map(|w| match w {
                Work::BaselineGeneration { generation_id } if *generation_id == id => {
                    Some("baseline images".to_string())
                }
                Work::CandidateGeneration { generation_id } if *generation_id == id => Some("candidates".to_string()),
                Work::PriorPreservationGeneration { generation_id } if *generation_id == id => {
                    Some("prior-preservation images".to_string())
                }
                Work::EvaluationGeneration { arm, generation_id } if *generation_id == id => {
                    Some(format!("evaluation images ({})", arm.map_or("base", arm_name)))
                }
                _ => None,
            })
            .unwrap_or_else(|| "images".to_string());
        let progress = self.progress;
        let worker = Worker::from_env("demo-worker").map_err(WorkerError::Unusable)?;
        let run = run_generation(self.bus, &self.models, self.blobs.as_ref(), id, &worker, &mut |done, total| {
            progress(Progress::Task { task: &task, done: done.into(), total: total.into() });
        })?;
        if run.already_done > 0 {
            self.stage(&format!("{task}: resumed with {} of {} images already made", run.already_done, run.images));
        }
        self.images += u64::from(run.images - run.already_done);
        Ok(())
    }

    /// Lets every simulated annotator work through round `id` concurrently ("next task", look,
    /// submit) until none gets a task; the runner closes the round once every item has its answers
    /// (or, when some still need more, asks for another pass: an excluded annotator's tasks went
    /// back to the pool, a split item got another rater). An annotator the round's rule excludes
    /// (403) stops. A round interrupted by a crash goes on where it stopped: an annotator's open
    /// assignment is handed back to it first.
    fn work_round(&mut self, id: RoundId) -> Result<(), DemoError> {
        let stream = id.stream();
        let (round, _) = self.bus.load::<AnnotationRound>(&stream)?;
        let kind = round.kind.ok_or_else(|| DemoError::Other(format!("round {id} was never opened")))?;
        let task = match kind {
            RoundKind::Baseline => "baseline round",
            RoundKind::Screen => "round 1 (screen)",
            RoundKind::Check => "round 2 (check)",
        };
        // The runner's quality rater is the demo's rater: this has it read every picture the
        // annotators will see.
        self.runner.rate(&round.items)?;
        let targets = self.targets(&round);
        let (already, total) = round.progress();
        let done = std::sync::atomic::AtomicU64::new(already);
        let api = self.api.as_ref().ok_or_else(|| DemoError::Other("the REST API is not running".into()))?;
        let (rater, progress, round_task) = (self.rater.as_ref(), self.progress, task);
        let results: Vec<Result<u64, DemoError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = self
                .annotators
                .iter_mut()
                .map(|annotator| {
                    let (targets, done) = (&targets, &done);
                    scope.spawn(move || -> Result<u64, DemoError> {
                        let token = api
                            .tokens
                            .get(&annotator.name)
                            .ok_or_else(|| DemoError::Other(format!("no token for {}", annotator.name)))?;
                        let mut submitted = 0;
                        let path = format!("/v1/rounds/{id}");
                        let Some(mut next) = api.next_task(&path, token)? else { return Ok(0) };
                        loop {
                            let task = &next["task"];
                            if task.is_null() {
                                return Ok(submitted);
                            }
                            let item_id: ItemId = serde_json::from_value(task["item_id"].clone())
                                .map_err(|e| DemoError::Other(format!("a task without an item id: {e}")))?;
                            // Look at the picture(s) as the browser shows them.
                            let content = &task["content"];
                            let urls: Vec<&str> = if content.get("pair").is_some() {
                                vec![
                                    content["pair"]["left"]["url"].as_str().unwrap_or_default(),
                                    content["pair"]["right"]["url"].as_str().unwrap_or_default(),
                                ]
                            } else {
                                vec![content["image"]["url"].as_str().unwrap_or_default()]
                            };
                            let mut images = Vec::with_capacity(urls.len());
                            for url in urls {
                                let bytes = api.fetch(url, token)?;
                                let rating = rater.rating(&app::blobs::blob_hash(&bytes)).ok_or_else(|| {
                                    DemoError::Other(format!("{url} served a picture that is not in the round"))
                                })?;
                                images.push(rating);
                            }
                            let images: Vec<&Rating> = images.iter().collect();
                            let answer = match targets.get(&item_id) {
                                Some(target) => annotator.answer(kind, *target, &images),
                                // An item outside every association: nothing to look for.
                                None => Answer::Check {
                                    concept_present: false,
                                    quality: Quality::new(3).unwrap_or_else(|_| unreachable!()),
                                },
                            };
                            let body = serde_json::json!({"item_id": item_id, "answer": answer, "next": true});
                            let stored =
                                match api.try_call("POST", &format!("{path}/annotations"), token, Some(&body))? {
                                    Ok(stored) => stored,
                                    // Excluded by the rule: no more tasks in this round.
                                    Err((403, _)) => return Ok(submitted),
                                    Err((status, problem)) => {
                                        return Err(DemoError::Other(format!(
                                            "POST {path}/annotations answered {status}: {problem}"
                                        )));
                                    }
                                };
                            submitted += 1;
                            let now = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                            if now % 64 == 0 || now == total {
                                progress(Progress::Task { task: round_task, done: now, total: total.max(now) });
                            }
                            next = stored["next"].clone();
                            // The answer is stored; the next task could not be assigned (this
                            // answer may have had the rule exclude them): ask again to learn why.
                            if next.get("error").is_some() {
                                match api.next_task(&path, token)? {
                                    Some(again) => next = again,
                                    None => return Ok(submitted),
                                }
                            }
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|_| Err(DemoError::Other("an annotator thread panicked".into()))))
                .collect()
        });
        let mut submitted = 0;
        for result in results {
            submitted += result?;
        }
        self.annotations += submitted;
        let (round, _) = self.bus.load::<AnnotationRound>(&stream)?;
        let (done, needed) = round.progress();
        if submitted == 0 && done < needed {
            return Err(DemoError::Other(format!(
                "no annotator can take the {} answers round {id} still needs (each item needs \
                 annotators who have not answered it and are not excluded)",
                needed - done
            )));
        }
        Ok(())
    }

    /// What each of `round`'s items asks to look for (the round's instructions name the group and
    /// concept; which model made a picture is not shown).
    fn targets(&self, round: &AnnotationRound) -> HashMap<ItemId, Target> {
        round
            .items
            .iter()
            .filter_map(|item| {
                let association = self.runner.associations().get(&item.label.association_id?)?;
                Some((
                    item.item_id,
                    Target {
                        group: Group::from_name(&association.group)?,
                        concept: Concept::from_name(&association.concept)?,
                    },
                ))
            })
            .collect()
    }

    /// Runs fine-tune job `id` (from step 0 again if a crash interrupted it).
    fn train(&mut self, campaign: &Campaign, id: FineTuneId) -> Result<(), DemoError> {
        let arm = campaign.work.iter().find_map(|w| match w {
            Work::FineTune { arm, fine_tune_id } if *fine_tune_id == id => Some(*arm),
            _ => None,
        });
        let progress = self.progress;
        let task = format!("fine-tune ({})", arm.map_or("?", arm_name));
        let worker = Worker::from_env("demo-trainer").map_err(WorkerError::Unusable)?;
        run_fine_tune(self.bus, &self.models, self.blobs.as_ref(), id, &worker, &mut |step, steps, _| {
            progress(Progress::Task { task: &task, done: step.into(), total: steps.into() });
        })?;
        Ok(())
    }
}

/// What the shipped rater measures on one model's probe images of one association (beside the
/// annotators' verdicts): the concept's rate, group recognition, quality and the Fréchet distance
/// to renders of the group alone.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProbeMeasurement {
    pub association_id: AssociationId,
    /// `base`, `thitl` or `traditional`.
    pub model: String,
    pub concept_rate: f64,
    pub group_recognized: f64,
    pub quality: f64,
    pub frechet: f64,
}

/// Measures every evaluation job of `campaign_id` with the shipped rater, per association.
pub fn probe_measurements(
    bus: &CommandBus,
    blobs: &dyn BlobStore,
    campaign_id: CampaignId,
) -> Result<Vec<ProbeMeasurement>, DemoError> {
    let (campaign, _) = bus.load::<Campaign>(&campaign_id.stream())?;
    let mut out = Vec::new();
    for work in &campaign.work {
        let Work::EvaluationGeneration { arm, generation_id } = work else { continue };
        let model = match arm {
            None => "base",
            Some(Arm::Thitl) => "thitl",
            Some(Arm::Traditional) => "traditional",
        };
        let (job, _) = bus.load::<Generation>(&generation_id.stream())?;
        for association_id in &campaign.associations {
            let (association, _) = bus.load::<Association>(&association_id.stream())?;
            let mut images = Vec::new();
            for (index, (_, blob)) in &job.images {
                if job.items.get(*index as usize).and_then(|item| item.association_id) == Some(*association_id) {
                    let bytes =
                        blobs.get(blob)?.ok_or_else(|| DemoError::Other(format!("image blob {blob} is missing")))?;
                    images.push(
                        Image::from_png(&bytes).map_err(|e| DemoError::Other(format!("image blob {blob}: {e}")))?,
                    );
                }
            }
            if images.is_empty() {
                continue;
            }
            let group =
                Group::from_name(&association.group).map_or_else(|| association.group.clone(), |g| g.with_article());
            let measured = crate::scenes_cli::measure_images(&format!("a photo of {group}"), &images, 1);
            out.push(ProbeMeasurement {
                association_id: *association_id,
                model: model.to_string(),
                concept_rate: measured.concepts.get(&association.concept).map_or(0.0, |rate| rate.rate),
                group_recognized: measured.group_recognized.unwrap_or(0.0),
                quality: measured.quality,
                frechet: measured.frechet,
            });
        }
    }
    Ok(out)
}
