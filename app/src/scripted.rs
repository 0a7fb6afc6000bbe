//! A synthetic campaign history for tests of the backbone: every stage of T-HITL driven through
//! the domain's commands and its process manager, against a real event store, in well under a
//! second.
//!
//! It renders no images and trains nothing: images are recorded under placeholder hashes
//! (SHA-256 of a description of the image) and the simulated annotators answer at random. The
//! real campaign — images, fine-tunes, annotators who look — is `thitl demo`; this one exists
//! so that tests of the event store and the read models get a realistic history cheaply.

use std::collections::BTreeMap;

use chrono::Utc;
use domain::campaign::{AssociationEvaluation, CampaignSettings, Facts, Next, RateEstimate, Request, Work, next};
use domain::fine_tune::{Arm, LoraConfig, SourceRound, TrainingExample};
use domain::generation::{GenerationItem, GenerationPurpose, SamplerSettings};
use domain::prompt_set::{GeneratorInfo, PromptDraft};
use domain::round::{Answer, ImageRef, ItemContent, ItemLabel, RoundItem, RoundKind, Side, Verdict};
use domain::values::{BlobHash, Quality};
use domain::*;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::commands::{CommandBus, CommandContext, CommandError};

use crate::campaigns::generations;
use crate::defaults::register_default_associations;

/// How big the scripted campaign is.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub probe_images: u32,
    pub prompts: u32,
    pub candidates_per_prompt: u32,
    pub annotators: u32,
    pub raters_per_item: u32,
}

impl Scale {
    pub const QUICK: Scale =
        Scale { probe_images: 8, prompts: 4, candidates_per_prompt: 2, annotators: 4, raters_per_item: 3 };
    pub const FULL: Scale =
        Scale { probe_images: 64, prompts: 16, candidates_per_prompt: 4, annotators: 6, raters_per_item: 3 };
}

#[derive(Debug, Clone)]
pub struct ScriptedReport {
    pub campaign_id: CampaignId,
    pub stages: Vec<String>,
    pub images: u64,
    pub annotations: u64,
}

/// A small deterministic generator (SplitMix64): the script is repeatable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn placeholder_hash(description: &str) -> BlobHash {
    let digest = Sha256::digest(description.as_bytes());
    // A SHA-256 hex digest is always a valid BlobHash.
    BlobHash::parse(&hex::encode(digest)).unwrap_or_else(|_| unreachable!())
}

pub struct Script<'a> {
    bus: &'a CommandBus,
    scale: Scale,
    rng: Rng,
    curator: CommandContext,
    operator: CommandContext,
    system: CommandContext,
    annotators: Vec<String>,
    associations: BTreeMap<AssociationId, Association>,
    images: u64,
    annotations: u64,
    progress: &'a dyn Fn(&str),
}

impl<'a> Script<'a> {
    pub fn new(bus: &'a CommandBus, scale: Scale, seed: u64, progress: &'a dyn Fn(&str)) -> Self {
        Script {
            bus,
            scale,
            rng: Rng(seed),
            curator: CommandContext::new(Actor::new("curator", Role::Curator)),
            operator: CommandContext::new(Actor::new("operator", Role::Operator)),
            system: CommandContext::system(),
            annotators: (1..=scale.annotators).map(|i| format!("annotator-{i}")).collect(),
            associations: BTreeMap::new(),
            images: 0,
            annotations: 0,
            progress,
        }
    }

    fn id(&mut self) -> Uuid {
        Uuid::now_v7()
    }

    /// Registers the default associations and runs one campaign over them to the end.
    pub fn run(mut self) -> Result<ScriptedReport, CommandError> {
        let base = ModelVersionId(self.id());
        self.bus.execute::<ModelVersion>(
            &base.stream(),
            None,
            &self.operator,
            ModelVersionCommand::RegisterBase {
                model_version_id: base,
                name: "scripted-base".into(),
                weights: placeholder_hash("scripted base weights"),
                config: serde_json::json!({"note": "placeholder: the scripted campaign trains nothing"}),
            },
        )?;

        self.associations = register_default_associations(self.bus, &self.curator)?;
        let association_ids: Vec<AssociationId> = self.associations.keys().copied().collect();

        let campaign_id = CampaignId(self.id());
        let settings = CampaignSettings {
            probe_images_per_association: self.scale.probe_images,
            training_prompts_per_association: self.scale.prompts,
            candidates_per_prompt: self.scale.candidates_per_prompt,
            prior_preservation_images: self.scale.prompts,
            pairs_per_association: self.scale.probe_images / 2,
            raters_per_item: self.scale.raters_per_item,
            auto_accept: true,
            traditional_arm: true,
            lora: LoraConfig { steps: 20, ..LoraConfig::default() },
            ..CampaignSettings::default()
        };
        self.bus.execute::<Campaign>(
            &campaign_id.stream(),
            None,
            &self.curator,
            CampaignCommand::Start {
                campaign_id,
                name: "scripted campaign".into(),
                associations: association_ids,
                base_model: base,
                settings,
            },
        )?;

        let mut stages = vec!["baseline".to_string()];
        loop {
            let (campaign, _) = self.bus.load::<Campaign>(&campaign_id.stream())?;
            let facts = self.facts(&campaign)?;
            match next(&campaign, &facts) {
                Next::Ask(request) => self.fulfil(&campaign, request)?,
                Next::Advance(stage) => {
                    self.bus.execute::<Campaign>(
                        &campaign_id.stream(),
                        None,
                        &self.system,
                        CampaignCommand::Advance { facts },
                    )?;
                    let name = format!("{stage:?}").to_lowercase();
                    (self.progress)(&format!("stage: {name}"));
                    stages.push(name);
                }
                Next::Wait(waiting) => {
                    // Every job in the script finishes synchronously and it auto-accepts, so
                    // waiting means a bug.
                    return Err(CommandError::Domain(DomainError::Forbidden {
                        message: format!("scripted campaign stalled waiting for {waiting:?}"),
                    }));
                }
                Next::Fail(reason) => {
                    self.bus.execute::<Campaign>(
                        &campaign_id.stream(),
                        None,
                        &self.system,
                        CampaignCommand::Fail { reason },
                    )?;
                    stages.push("failed".into());
                    break;
                }
                Next::Finished => break,
            }
        }
        if self.bus.read::<Campaign, _>(&campaign_id.stream(), |c, _| c.stage)?
            == Some(domain::campaign::Stage::Completed)
        {
            stages.push("completed".into());
        }
        Ok(ScriptedReport { campaign_id, stages, images: self.images, annotations: self.annotations })
    }

    fn facts(&self, campaign: &Campaign) -> Result<Facts, CommandError> {
        crate::campaigns::facts(self.bus, campaign)
    }

    fn link(&self, campaign: &Campaign, work: Work) -> Result<(), CommandError> {
        let stream = campaign.id.map(|id| id.stream()).unwrap_or_default();
        self.bus.execute::<Campaign>(&stream, None, &self.system, CampaignCommand::Link { work })?;
        Ok(())
    }

    fn fulfil(&mut self, campaign: &Campaign, request: Request) -> Result<(), CommandError> {
        (self.progress)(&format!("{request:?}"));
        let base = campaign.base_model.unwrap_or(ModelVersionId(Uuid::nil()));
        match request {
            Request::BaselineGeneration => {
                let items = self.probe_items(campaign, 0);
                let id = self.generate(campaign, base, GenerationPurpose::Baseline, items)?;
                self.link(campaign, Work::BaselineGeneration { generation_id: id })
            }
            Request::BaselineRound => {
                let jobs = generations(campaign, |w| matches!(w, Work::BaselineGeneration { .. }));
                let items = self.single_items(&jobs)?;
                let id = self.annotate(campaign, RoundKind::Baseline, items)?;
                self.link(campaign, Work::BaselineRound { round_id: id })
            }
            Request::CuratePrompts { association_id } => {
                let id = self.curate(association_id)?;
                self.link(campaign, Work::PromptSet { association_id, prompt_set_id: id })
            }
            Request::CandidateGeneration => {
                let mut items = Vec::new();
                for work in &campaign.work {
                    if let Work::PromptSet { association_id, prompt_set_id } = work {
                        let (set, _) = self.bus.load::<PromptSet>(&prompt_set_id.stream())?;
                        for (prompt_id, prompt) in set.accepted() {
                            for copy in 0..campaign.settings.candidates_per_prompt {
                                items.push(GenerationItem {
                                    prompt: prompt.neutral.text.clone(),
                                    negative_prompt: Some(prompt.neutral.negative_prompt.clone()),
                                    seed: self.rng.next() % 1_000_000 + u64::from(copy),
                                    prompt_id: Some(prompt_id),
                                    association_id: Some(*association_id),
                                });
                            }
                        }
                    }
                }
                let id = self.generate(campaign, base, GenerationPurpose::Candidates, items)?;
                self.link(campaign, Work::CandidateGeneration { generation_id: id })
            }
            Request::PriorPreservationGeneration => {
                let items = (0..campaign.settings.prior_preservation_images)
                    .map(|i| GenerationItem {
                        prompt: ["a dog in a park", "a tree at the beach", "a ball in a street"][i as usize % 3].into(),
                        negative_prompt: None,
                        seed: u64::from(i),
                        prompt_id: None,
                        association_id: None,
                    })
                    .collect();
                let id = self.generate(campaign, base, GenerationPurpose::PriorPreservation, items)?;
                self.link(campaign, Work::PriorPreservationGeneration { generation_id: id })
            }
            Request::Round1 => {
                let jobs = generations(campaign, |w| matches!(w, Work::CandidateGeneration { .. }));
                let items = self.single_items(&jobs)?;
                let id = self.annotate(campaign, RoundKind::Screen, items)?;
                self.link(campaign, Work::Round1 { round_id: id })
            }
            Request::FineTune { arm } => {
                let id = self.fine_tune(campaign, arm)?;
                self.link(campaign, Work::FineTune { arm, fine_tune_id: id })
            }
            Request::DeriveModel { arm, fine_tune_id } => {
                let (job, _) = self.bus.load::<FineTune>(&fine_tune_id.stream())?;
                let id = ModelVersionId(self.id());
                self.bus.execute::<ModelVersion>(
                    &id.stream(),
                    None,
                    &self.system,
                    ModelVersionCommand::DeriveFromFineTune {
                        model_version_id: id,
                        name: format!("scripted-{arm:?}").to_lowercase(),
                        fine_tune: domain::model_version::SourceFineTune {
                            fine_tune_id,
                            status: job.status,
                            base_model: job.base_model,
                            arm: job.arm,
                            adapter: job.adapter,
                        },
                    },
                )?;
                self.link(campaign, Work::ModelVersion { arm, model_version_id: id })
            }
            Request::EvaluationGeneration { arm } => {
                let model = match arm {
                    None => base,
                    Some(arm) => campaign
                        .work
                        .iter()
                        .find_map(|w| match w {
                            Work::ModelVersion { arm: a, model_version_id } if *a == arm => Some(*model_version_id),
                            _ => None,
                        })
                        .unwrap_or(base),
                };
                // Held-out seeds: far from the baseline's.
                let items = self.probe_items(campaign, 1_000_000);
                let id = self.generate(campaign, model, GenerationPurpose::Evaluation, items)?;
                self.link(campaign, Work::EvaluationGeneration { arm, generation_id: id })
            }
            Request::Round2 => {
                let jobs = generations(campaign, |w| matches!(w, Work::EvaluationGeneration { .. }));
                let mut items = self.single_items(&jobs)?;
                items.extend(self.pair_items(campaign)?);
                let id = self.annotate(campaign, RoundKind::Check, items)?;
                self.link(campaign, Work::Round2 { round_id: id })
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
                Ok(())
            }
            Request::AcceptPrompts { prompt_set_id } => Err(CommandError::Domain(DomainError::Forbidden {
                message: format!("scripted campaign: prompt set {prompt_set_id} was left unfinalized"),
            })),
            // The script promotes its T-HITL version whatever its random answers say.
            Request::Conclude { .. } => {
                let model = campaign.model_of(Arm::Thitl);
                let campaign_id = campaign.id.unwrap_or(CampaignId(Uuid::nil()));
                crate::campaigns::conclude(self.bus, &self.curator, campaign_id, model, "scripted campaign completed")
            }
        }
    }

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

    fn generate(
        &mut self,
        campaign: &Campaign,
        model: ModelVersionId,
        purpose: GenerationPurpose,
        items: Vec<GenerationItem>,
    ) -> Result<GenerationId, CommandError> {
        let id = GenerationId(self.id());
        let stream = id.stream();
        let count = items.len();
        self.bus.execute::<Generation>(
            &stream,
            None,
            &self.system,
            GenerationCommand::Request {
                generation_id: id,
                model_version: model,
                purpose,
                items,
                sampler: SamplerSettings::default(),
                campaign_id: campaign.id,
            },
        )?;
        self.bus.execute::<Generation>(
            &stream,
            None,
            &self.operator,
            GenerationCommand::Start { worker: "scripted-worker".into(), now: Utc::now(), lease_seconds: 60 },
        )?;
        for index in 0..count as u32 {
            let image_id = ImageId(self.id());
            let blob = placeholder_hash(&format!("placeholder image {image_id}"));
            self.bus.execute::<Generation>(
                &stream,
                None,
                &self.operator,
                GenerationCommand::RecordImage { worker: "scripted-worker".into(), index, image_id, blob },
            )?;
            self.images += 1;
        }
        self.bus.execute::<Generation>(
            &stream,
            None,
            &self.operator,
            GenerationCommand::Complete { worker: "scripted-worker".into() },
        )?;
        Ok(id)
    }

    fn single_items(&mut self, jobs: &[GenerationId]) -> Result<Vec<RoundItem>, CommandError> {
        let mut items = Vec::new();
        for job_id in jobs {
            let (job, _) = self.bus.load::<Generation>(&job_id.stream())?;
            for (index, (image_id, blob)) in &job.images {
                let item = &job.items[*index as usize];
                items.push(RoundItem {
                    item_id: ItemId(self.id()),
                    content: ItemContent::Image(ImageRef { image_id: *image_id, blob: blob.clone() }),
                    label: ItemLabel {
                        association_id: item.association_id,
                        prompt_id: item.prompt_id,
                        prompt: item.prompt.clone(),
                        seed: item.seed,
                        models: vec![job.model_version.unwrap_or(ModelVersionId(Uuid::nil()))],
                    },
                });
            }
        }
        Ok(items)
    }

    /// Side-by-side pairs: the base model's and the T-HITL model's image of the same prompt and seed.
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
        let pairs = campaign.settings.pairs_per_association as usize * campaign.associations.len();
        for index in 0..pairs.min(base.items.len()) as u32 {
            let (Some((b_id, b_blob)), Some((t_id, t_blob))) = (base.images.get(&index), tuned.images.get(&index))
            else {
                continue;
            };
            let base_ref = (ImageRef { image_id: *b_id, blob: b_blob.clone() }, base.model_version);
            let tuned_ref = (ImageRef { image_id: *t_id, blob: t_blob.clone() }, tuned.model_version);
            let (left, right) = if self.rng.chance(0.5) { (base_ref, tuned_ref) } else { (tuned_ref, base_ref) };
            let item = &base.items[index as usize];
            items.push(RoundItem {
                item_id: ItemId(self.id()),
                content: ItemContent::Pair { left: left.0, right: right.0 },
                label: ItemLabel {
                    association_id: item.association_id,
                    prompt_id: None,
                    prompt: item.prompt.clone(),
                    seed: item.seed,
                    models: [left.1, right.1].into_iter().map(|m| m.unwrap_or(ModelVersionId(Uuid::nil()))).collect(),
                },
            });
        }
        Ok(items)
    }

    fn annotate(
        &mut self,
        campaign: &Campaign,
        kind: RoundKind,
        items: Vec<RoundItem>,
    ) -> Result<RoundId, CommandError> {
        let id = RoundId(self.id());
        let stream = id.stream();
        self.bus.execute::<AnnotationRound>(
            &stream,
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
            },
        )?;
        let annotators = self.annotators.clone();
        loop {
            let mut progressed = false;
            for annotator in &annotators {
                let context = CommandContext::new(Actor::new(annotator.clone(), Role::Annotator));
                self.bus.execute::<AnnotationRound>(
                    &stream,
                    None,
                    &context,
                    RoundCommand::AssignNext { annotator: annotator.clone(), now: Utc::now() },
                )?;
                let (round, _) = self.bus.load::<AnnotationRound>(&stream)?;
                let Some(item_id) = round.current_task(annotator, Utc::now()) else { continue };
                let pair = matches!(round.item(item_id).map(|i| &i.content), Some(ItemContent::Pair { .. }));
                let answer = self.simulated_answer(kind, pair);
                self.bus.execute::<AnnotationRound>(
                    &stream,
                    None,
                    &context,
                    RoundCommand::Submit { annotator: annotator.clone(), item_id, answer },
                )?;
                self.annotations += 1;
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        self.bus.execute::<AnnotationRound>(
            &stream,
            None,
            &self.system,
            RoundCommand::Close { allow_incomplete: true },
        )?;
        Ok(id)
    }

    /// Random answers: the scripted campaign has no images to look at.
    fn simulated_answer(&mut self, kind: RoundKind, pair: bool) -> Answer {
        let quality = Quality::new(2 + self.rng.below(4) as u8).unwrap_or_else(|_| unreachable!());
        match kind {
            RoundKind::Baseline => Answer::Baseline { concept_present: self.rng.chance(0.5) },
            RoundKind::Screen => {
                Answer::Screen { quality, group_depicted: self.rng.chance(0.9), concept_present: self.rng.chance(0.1) }
            }
            RoundKind::Check if pair => {
                Answer::Compare { preferred: if self.rng.chance(0.5) { Side::Left } else { Side::Right } }
            }
            RoundKind::Check => Answer::Check { concept_present: self.rng.chance(0.3), quality },
        }
    }

    fn curate(&mut self, association_id: AssociationId) -> Result<PromptSetId, CommandError> {
        let association = self.associations.get(&association_id).cloned().unwrap_or_default();
        let id = PromptSetId(self.id());
        let stream = id.stream();
        self.bus.execute::<PromptSet>(
            &stream,
            None,
            &self.curator,
            PromptSetCommand::Create {
                prompt_set_id: id,
                association_id,
                group: association.group.clone(),
                concept: association.concept.clone(),
                concept_synonyms: association.concept_synonyms.clone(),
            },
        )?;
        let activities = ["reading", "smiling", "walking", "cooking", "painting", "laughing", "waiting", "talking"];
        let places = ["at the beach", "in a park", "in a street", "in a kitchen"];
        let prompts: Vec<PromptDraft> = (0..self.scale.prompts)
            .map(|i| PromptDraft {
                prompt_id: PromptId(Uuid::now_v7()),
                text: format!(
                    "a photo of a {} {} {}",
                    association.group,
                    activities[i as usize % activities.len()],
                    places[(i as usize / activities.len()) % places.len()]
                ),
                alternative: None,
            })
            .collect();
        let ids: Vec<PromptId> = prompts.iter().map(|p| p.prompt_id).collect();
        self.bus.execute::<PromptSet>(
            &stream,
            None,
            &self.system,
            PromptSetCommand::AddPrompts {
                generator: GeneratorInfo {
                    name: "scripted".into(),
                    model: None,
                    parameters: serde_json::json!({"prompts": self.scale.prompts}),
                    response_sha256: None,
                },
                prompts,
            },
        )?;
        for prompt_id in ids {
            self.bus.execute::<PromptSet>(
                &stream,
                None,
                &self.curator,
                PromptSetCommand::AcceptPrompt { prompt_id },
            )?;
        }
        self.bus.execute::<PromptSet>(&stream, None, &self.curator, PromptSetCommand::Finalize)?;
        Ok(id)
    }

    fn fine_tune(&mut self, campaign: &Campaign, arm: Arm) -> Result<FineTuneId, CommandError> {
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
        let examples: Vec<TrainingExample> = round
            .items
            .iter()
            .filter(|item| arm == Arm::Traditional || accepted.contains(&item.item_id))
            .filter_map(|item| match &item.content {
                ItemContent::Image(image) => Some(TrainingExample {
                    image_id: image.image_id,
                    blob: image.blob.clone(),
                    prompt: item.label.prompt.clone(),
                    prompt_id: item.label.prompt_id,
                }),
                ItemContent::Pair { .. } => None,
            })
            .collect();
        let id = FineTuneId(self.id());
        let stream = id.stream();
        let steps = campaign.settings.lora.steps;
        self.bus.execute::<FineTune>(
            &stream,
            None,
            &self.system,
            FineTuneCommand::Request {
                fine_tune_id: id,
                base_model: campaign.base_model.unwrap_or(ModelVersionId(Uuid::nil())),
                arm,
                source_round: match arm {
                    Arm::Thitl => {
                        round.id.map(|round_id| SourceRound { round_id, kind: round.kind, status: round.status })
                    }
                    Arm::Traditional => None,
                },
                examples,
                prior_preservation: vec![],
                config: campaign.settings.lora.clone(),
                progress_every: 5,
                campaign_id: campaign.id,
            },
        )?;
        self.bus.execute::<FineTune>(
            &stream,
            None,
            &self.operator,
            FineTuneCommand::Start { worker: "scripted-worker".into(), now: Utc::now(), lease_seconds: 60 },
        )?;
        for step in (5..=steps).step_by(5) {
            let loss = 0.5 / (1.0 + step as f32 / 10.0);
            self.bus.execute::<FineTune>(
                &stream,
                None,
                &self.operator,
                FineTuneCommand::RecordProgress { worker: "scripted-worker".into(), step, loss },
            )?;
        }
        self.bus.execute::<FineTune>(
            &stream,
            None,
            &self.operator,
            FineTuneCommand::Complete {
                worker: "scripted-worker".into(),
                adapter: placeholder_hash(&format!("placeholder adapter {id}")),
                final_loss: 0.1,
            },
        )?;
        Ok(id)
    }

    /// Counts from round 2's outcomes (of the random answers, so meaningless as results).
    fn evaluate(&mut self, campaign: &Campaign) -> Result<Vec<AssociationEvaluation>, CommandError> {
        let round_id = campaign.work.iter().find_map(|w| match w {
            Work::Round2 { round_id } => Some(*round_id),
            _ => None,
        });
        let Some(round_id) = round_id else { return Ok(vec![]) };
        let (round, _) = self.bus.load::<AnnotationRound>(&round_id.stream())?;
        let base = campaign.base_model;
        let tuned = campaign.model_of(Arm::Thitl);
        let mut evaluations = Vec::new();
        for association_id in &campaign.associations {
            let estimate = |model: Option<ModelVersionId>| {
                let (mut positives, mut n) = (0u32, 0u32);
                for outcome in &round.outcomes {
                    let Some(item) = round.item(outcome.item_id) else { continue };
                    if item.label.association_id != Some(*association_id) || item.label.models.first().copied() != model
                    {
                        continue;
                    }
                    if let Verdict::Check { concept_present, .. } = outcome.verdict {
                        n += 1;
                        positives += u32::from(concept_present);
                    }
                }
                let (ci_low, ci_high) =
                    projections::stats::wilson_interval(positives.into(), n.into(), projections::stats::Z95);
                RateEstimate {
                    positives,
                    n,
                    rate: if n == 0 { 0.0 } else { f64::from(positives) / f64::from(n) },
                    ci_low,
                    ci_high,
                }
            };
            evaluations.push(AssociationEvaluation {
                association_id: *association_id,
                arm: Arm::Thitl,
                before: estimate(base),
                after: estimate(tuned),
                quality_before: 0.0,
                quality_after: 0.0,
                win_rate: None,
                alpha: None,
            });
        }
        Ok(evaluations)
    }
}
