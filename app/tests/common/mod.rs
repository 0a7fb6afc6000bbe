//! A whole campaign in well under a second, for tests of the event store and the read models:
//! the real [`CampaignRunner`] and the real workers, on a placeholder model family (its "images"
//! are a few bytes naming what they would show, its "adapter" a digest of the training set) and
//! with scripted annotators who answer at random. It writes the histories the real runner writes.

#![allow(dead_code)] // each test binary uses part of it

use std::sync::Arc;

use chrono::Utc;
use domain::campaign::{CampaignRoundControls, CampaignSettings, Stage, WaitingFor};
use domain::fine_tune::LoraConfig;
use domain::generation::SamplerSettings;
use domain::round::{Answer, Gold, ItemContent, RoundKind, Side};
use domain::values::Quality;
use domain::*;
use gpu::rng::SplitMix64;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use app::blobs::{BlobStore, MemoryBlobStore};
use app::campaigns::{CampaignRunner, Step};
use app::commands::{CommandBus, CommandContext};
use app::defaults::register_default_associations;
use app::ports::{
    Flow, GoldPicture, Model, ModelError, ModelFamily, SampleRequest, TrainedAdapter, TrainingImage, TrainingProgress,
};
use app::prompts::{PlainTemplates, TemplateGenerator};
use app::workers::{Models, Worker, run_fine_tune, run_generation};

/// A model family that renders nothing: an image is the bytes of a line naming its prompt,
/// negative prompt, seed and whether the model was tuned, so equal requests give equal blobs.
pub struct PlaceholderFamily;

impl ModelFamily for PlaceholderFamily {
    fn load(&self, _weights: &[u8]) -> Result<Arc<dyn Model>, ModelError> {
        Ok(Arc::new(PlaceholderModel { adapter: None }))
    }

    fn prior_prompts(&self, _targeted: &[String], count: u32, seeds: &mut dyn FnMut() -> u64) -> Vec<String> {
        (0..count).map(|i| format!("a photo of a person, prior {i} ({:x})", seeds() % 1000)).collect()
    }

    fn alternative_objects(&self) -> Vec<String> {
        vec!["kite".into(), "ball".into()]
    }

    /// Lines naming a gold picture's truth, every other one with the concept.
    fn gold_pictures(
        &self,
        group: &str,
        concept: &str,
        count: u32,
        seeds: &mut dyn FnMut() -> u64,
    ) -> Vec<GoldPicture> {
        (0..count)
            .map(|i| {
                let with = i % 2 == 0;
                GoldPicture {
                    png: format!("gold {group} {concept} {with} {:x}", seeds()).into_bytes(),
                    prompt: format!("a photo of a {group}"),
                    gold: Gold { concept_present: Some(with), group_depicted: Some(true) },
                }
            })
            .collect()
    }
}

struct PlaceholderModel {
    adapter: Option<Vec<u8>>,
}

impl Model for PlaceholderModel {
    fn with_adapter(&self, adapter: &[u8]) -> Result<Arc<dyn Model>, ModelError> {
        Ok(Arc::new(PlaceholderModel { adapter: Some(adapter.to_vec()) }))
    }

    fn is_tuned(&self) -> bool {
        self.adapter.is_some()
    }

    fn sample(&self, requests: &[SampleRequest], _sampler: &SamplerSettings) -> Result<Vec<Vec<u8>>, ModelError> {
        let tuned = self.adapter.as_deref().map(hex::encode).unwrap_or_default();
        Ok(requests
            .iter()
            .map(|r| format!("placeholder image: {} | {:?} | {} | {tuned}", r.prompt, r.negative_prompt, r.seed))
            .map(String::into_bytes)
            .collect())
    }

    fn fine_tune(
        &self,
        examples: &[TrainingImage],
        prior: &[TrainingImage],
        config: &LoraConfig,
        progress_every: u32,
        report: &mut dyn FnMut(TrainingProgress) -> Flow,
    ) -> Result<TrainedAdapter, ModelError> {
        let mut digest = Sha256::new();
        for image in examples.iter().chain(prior) {
            digest.update(image.prompt.as_bytes());
            digest.update(&image.png);
        }
        let every = progress_every.max(1);
        for step in (every..=config.steps).step_by(every as usize) {
            let loss = 1.0 / step as f32;
            if report(TrainingProgress { step, steps: config.steps, loss }) == Flow::Stop {
                return Err(ModelError::new("stopped"));
            }
        }
        Ok(TrainedAdapter { adapter: digest.finalize().to_vec(), final_loss: 1.0 / config.steps.max(1) as f32 })
    }
}

/// How big the scripted campaign is.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub probe_images: u32,
    pub prompts: u32,
    pub candidates_per_prompt: u32,
    pub annotators: u32,
    pub raters_per_item: u32,
    /// How the campaign's rounds check their raters.
    pub round_controls: Option<CampaignRoundControls>,
    /// One annotator (by index) who answers every gold item wrong.
    pub careless: Option<usize>,
}

impl Scale {
    pub const QUICK: Scale = Scale {
        probe_images: 8,
        prompts: 4,
        candidates_per_prompt: 2,
        annotators: 4,
        raters_per_item: 3,
        round_controls: None,
        careless: None,
    };
}

/// What a scripted campaign did.
#[derive(Debug, Clone)]
pub struct ScriptedReport {
    pub campaign_id: CampaignId,
    /// Every stage entered, in order, and `completed` or `failed` at the end.
    pub stages: Vec<String>,
    pub images: u64,
    pub annotations: u64,
}

/// Registers the default associations and a placeholder base model, and runs one auto-accepting
/// campaign over them to its end: the runner asks, the workers run the jobs on the placeholder
/// family, the annotators answer at random (repeatably from `seed`).
pub fn scripted_campaign(bus: &CommandBus, scale: Scale, seed: u64) -> ScriptedReport {
    let blobs: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::default());
    let family: Arc<dyn ModelFamily> = Arc::new(PlaceholderFamily);
    let models = Models::new(family.clone());
    let worker = Worker { name: "scripted-worker".into(), lease_seconds: 60 };
    let curator = CommandContext::new(Actor::new("curator", Role::Curator));
    let operator = CommandContext::new(Actor::new("operator", Role::Operator));

    let weights = blobs.put(b"placeholder base weights").unwrap().hash;
    let base = ModelVersionId(Uuid::now_v7());
    let register = ModelVersionCommand::RegisterBase {
        model_version_id: base,
        name: "placeholder-base".into(),
        weights,
        config: serde_json::json!({"note": "placeholder: this campaign renders and trains nothing"}),
    };
    bus.execute::<ModelVersion>(&base.stream(), None, &operator, register).unwrap();
    let associations = register_default_associations(bus, &curator).unwrap();

    let campaign_id = CampaignId(Uuid::now_v7());
    let settings = CampaignSettings {
        probe_images_per_association: scale.probe_images,
        training_prompts_per_association: scale.prompts,
        candidates_per_prompt: scale.candidates_per_prompt,
        prior_preservation_images: scale.prompts,
        pairs_per_association: scale.probe_images / 2,
        raters_per_item: scale.raters_per_item,
        auto_accept: true,
        traditional_arm: true,
        lora: LoraConfig { steps: 20, ..LoraConfig::default() },
        round_controls: scale.round_controls.map(Box::new),
        ..CampaignSettings::default()
    };
    let start = CampaignCommand::Start {
        campaign_id,
        name: "scripted campaign".into(),
        associations: associations.keys().copied().collect(),
        base_model: base,
        settings,
    };
    bus.execute::<Campaign>(&campaign_id.stream(), None, &curator, start).unwrap();

    let generator = Box::new(TemplateGenerator::new(PlainTemplates));
    let mut runner = CampaignRunner::new(bus.clone(), blobs.clone(), generator, family, None, seed, Box::new(|_| {}));
    let mut rng = SplitMix64::new(seed);
    let annotators: Vec<String> = (1..=scale.annotators).map(|i| format!("annotator-{i}")).collect();
    let mut report = ScriptedReport { campaign_id, stages: vec![], images: 0, annotations: 0 };
    loop {
        let mut entered = Vec::new();
        let step = runner.step(campaign_id, &mut |stage| entered.push(format!("{stage:?}").to_lowercase())).unwrap();
        report.stages.extend(entered);
        match step {
            Step::Finished => break,
            Step::Waiting(WaitingFor::Generation(id)) => {
                let run = run_generation(bus, &models, blobs.as_ref(), id, &worker, &mut |_, _| {}).unwrap();
                report.images += u64::from(run.images);
            }
            Step::Waiting(WaitingFor::FineTune(id)) => {
                run_fine_tune(bus, &models, blobs.as_ref(), id, &worker, &mut |_, _, _| {}).unwrap();
            }
            Step::Waiting(WaitingFor::Annotations(id)) => {
                let careless = scale.careless.map(|i| annotators[i].clone());
                report.annotations += annotate(bus, id, &annotators, careless.as_deref(), &mut rng);
            }
            Step::Waiting(other) => panic!("an auto-accepting campaign waits for {other:?}"),
        }
    }
    let stage = bus.read::<Campaign, _>(&campaign_id.stream(), |c, _| c.stage).unwrap();
    report.stages.push(if stage == Some(Stage::Completed) { "completed" } else { "failed" }.into());
    report
}

/// The annotators take tasks in turn and answer at random until none is left (gold items right,
/// but the `careless` one wrong); the count of answers. An excluded annotator gets no more tasks.
fn annotate(bus: &CommandBus, id: RoundId, annotators: &[String], careless: Option<&str>, rng: &mut SplitMix64) -> u64 {
    let stream = id.stream();
    let mut answers = 0;
    loop {
        let mut progressed = false;
        for annotator in annotators {
            let context = CommandContext::new(Actor::new(annotator.clone(), Role::Annotator));
            let assign = RoundCommand::AssignNext { annotator: annotator.clone(), now: Utc::now() };
            if bus.execute::<AnnotationRound>(&stream, None, &context, assign).is_err() {
                continue;
            }
            let (round, _) = bus.load::<AnnotationRound>(&stream).unwrap();
            let Some(item_id) = round.current_task(annotator, Utc::now()) else { continue };
            let pair = matches!(round.item(item_id).map(|i| &i.content), Some(ItemContent::Pair { .. }));
            let kind = round.kind.expect("an open round has a kind");
            let answer = match round.controls.gold.get(&item_id) {
                Some(gold) => gold_answer(kind, gold, careless == Some(annotator.as_str())),
                None => random_answer(kind, pair, rng),
            };
            let submit = RoundCommand::Submit { annotator: annotator.clone(), item_id, answer };
            bus.execute::<AnnotationRound>(&stream, None, &context, submit).unwrap();
            answers += 1;
            progressed = true;
        }
        if !progressed {
            return answers;
        }
    }
}

/// A gold item's answer: right, or every known question wrong.
fn gold_answer(kind: RoundKind, gold: &Gold, wrong: bool) -> Answer {
    let concept = gold.concept_present.unwrap_or(false) != wrong;
    let group = gold.group_depicted.unwrap_or(true) != wrong;
    let quality = Quality::new(4).expect("4 is a rating");
    match kind {
        RoundKind::Baseline => Answer::Baseline { concept_present: concept },
        RoundKind::Screen => Answer::Screen { quality, group_depicted: group, concept_present: concept },
        RoundKind::Check => Answer::Check { concept_present: concept, quality },
    }
}

fn random_answer(kind: RoundKind, pair: bool, rng: &mut SplitMix64) -> Answer {
    let mut chance = |p: f64| ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p;
    let quality = Quality::new(2 + (chance(0.5) as u8) + 2 * (chance(0.5) as u8)).expect("2..=5");
    match kind {
        RoundKind::Baseline => Answer::Baseline { concept_present: chance(0.5) },
        RoundKind::Screen => Answer::Screen { quality, group_depicted: chance(0.9), concept_present: chance(0.1) },
        RoundKind::Check if pair => Answer::Compare { preferred: if chance(0.5) { Side::Left } else { Side::Right } },
        RoundKind::Check => Answer::Check { concept_present: chance(0.3), quality },
    }
}
