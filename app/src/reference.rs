//! The reference world behind the ports: the `scenes` base DiT as a [`ModelFamily`] and the
//! shipped rater as a [`QualityRater`]. The only module of the application that knows the
//! reference world's groups, objects and settings.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use domain::fine_tune::LoraConfig;
use domain::generation::SamplerSettings;
use domain::values::BlobHash;
use gpu::Backend;
use scenes::base::{BaseModel, SampleItem, SampleSettings};
use scenes::finetune::{FineTuneSettings, adapter_from_safetensors, adapter_to_safetensors, fine_tune};
use scenes::{CaptionSpec, Concept, Example, Group, Image, Rater, Rating, Setting};

use crate::ports::{
    Flow, GoldPicture, Model, ModelError, ModelFamily, QualityRater, SampleRequest, TrainedAdapter, TrainingImage,
    TrainingProgress,
};

fn model_error(error: scenes::BaseError) -> ModelError {
    ModelError(error.to_string())
}

/// The reference world's DiT family, on one compute backend.
pub struct ReferenceWorld {
    backend: Backend,
}

impl ReferenceWorld {
    pub fn new(backend: Backend) -> Self {
        ReferenceWorld { backend }
    }
}

impl ModelFamily for ReferenceWorld {
    fn load(&self, weights: &[u8]) -> Result<Arc<dyn Model>, ModelError> {
        Ok(Arc::new(ReferenceModel(BaseModel::load_with_metadata(weights, &self.backend).map_err(model_error)?)))
    }

    /// Captions of the groups no association targets, cycling through the settings.
    fn prior_prompts(&self, targeted_groups: &[String], count: u32, seeds: &mut dyn FnMut() -> u64) -> Vec<String> {
        let targeted: Vec<Group> = targeted_groups.iter().filter_map(|name| Group::from_name(name)).collect();
        let others: Vec<Group> = Group::ALL.iter().copied().filter(|g| !targeted.contains(g)).collect();
        if others.is_empty() {
            return Vec::new();
        }
        (0..count as usize)
            .map(|i| {
                let spec = CaptionSpec {
                    group: others[i % others.len()],
                    object: None,
                    setting: Some(Setting::ALL[(i / others.len()) % Setting::ALL.len()]),
                };
                scenes::caption(&spec, seeds())
            })
            .collect()
    }

    fn alternative_objects(&self) -> Vec<String> {
        Concept::ALL.iter().map(|c| c.name().to_string()).collect()
    }

    /// The renderer's own pictures of the group, every other one with the concept, across the
    /// settings: their truth is what was rendered.
    fn gold_pictures(
        &self,
        group: &str,
        concept: &str,
        count: u32,
        seeds: &mut dyn FnMut() -> u64,
    ) -> Vec<GoldPicture> {
        let (Some(group), Some(concept)) = (Group::from_name(group), Concept::from_name(concept)) else {
            return Vec::new();
        };
        (0..count as usize)
            .map(|i| {
                let with = i % 2 == 0;
                let setting = Setting::ALL[(i / 2) % Setting::ALL.len()];
                let scene = scenes::Scene { group, concept: with.then_some(concept), setting };
                let spec = CaptionSpec { group, object: None, setting: Some(setting) };
                GoldPicture {
                    png: scenes::render(&scene, seeds()).to_png(1),
                    prompt: scenes::caption(&spec, seeds()),
                    gold: domain::round::Gold { concept_present: Some(with), group_depicted: Some(true) },
                }
            })
            .collect()
    }
}

/// A loaded reference-world model version.
struct ReferenceModel(BaseModel);

impl Model for ReferenceModel {
    fn with_adapter(&self, adapter: &[u8]) -> Result<Arc<dyn Model>, ModelError> {
        let adapter = adapter_from_safetensors(adapter).map_err(model_error)?;
        Ok(Arc::new(ReferenceModel(self.0.with_adapter(&adapter).map_err(model_error)?)))
    }

    fn is_tuned(&self) -> bool {
        self.0.adapter().is_some()
    }

    /// The reference-world DiT reads a negative prompt in its prompt's context
    /// ([`scenes::negative_in_context`]): "hippopotamus" beside "a woman at the beach" becomes a
    /// caption of a woman at the beach with a hippopotamus, which the model understands; the bare
    /// word would steer its samples towards noise.
    fn sample(&self, requests: &[SampleRequest], sampler: &SamplerSettings) -> Result<Vec<Vec<u8>>, ModelError> {
        let settings = SampleSettings {
            steps: sampler.steps as usize,
            guidance_scale: sampler.guidance_scale,
            eta: sampler.eta,
            negative_prompt: None,
        };
        let items: Vec<SampleItem> = requests
            .iter()
            .map(|request| SampleItem {
                prompt: request.prompt.clone(),
                negative_prompt: request
                    .negative_prompt
                    .as_deref()
                    .map(|negative| scenes::negative_in_context(&request.prompt, negative)),
                seed: request.seed,
            })
            .collect();
        let images =
            self.0.sample_items(&items, &settings, &mut |_, _| scenes::base::Flow::Continue).map_err(model_error)?;
        Ok(images.iter().map(|image| image.to_png(1)).collect())
    }

    fn fine_tune(
        &self,
        examples: &[TrainingImage],
        prior: &[TrainingImage],
        config: &LoraConfig,
        progress_every: u32,
        report: &mut dyn FnMut(TrainingProgress) -> Flow,
    ) -> Result<TrainedAdapter, ModelError> {
        let decode = |set: &[TrainingImage]| -> Result<Vec<Example>, ModelError> {
            set.iter()
                .map(|example| {
                    let image = Image::from_png(&example.png)
                        .map_err(|e| ModelError(format!("image {}: {e}", example.name)))?;
                    Ok(Example { prompt: example.prompt.clone(), image })
                })
                .collect()
        };
        let (examples, prior) = (decode(examples)?, decode(prior)?);
        let settings = fine_tune_settings(config, progress_every);
        let tuned = fine_tune(&self.0, &examples, &prior, &settings, |progress| {
            let flow = report(TrainingProgress {
                step: progress.step as u32,
                steps: progress.steps as u32,
                loss: progress.loss,
            });
            match flow {
                Flow::Continue => scenes::base::Flow::Continue,
                Flow::Stop => scenes::base::Flow::Stop,
            }
        })
        .map_err(model_error)?;
        let adapter = adapter_to_safetensors(&tuned.adapter).map_err(model_error)?;
        Ok(TrainedAdapter { adapter, final_loss: tuned.final_loss })
    }
}

/// The `scenes` settings of a requested fine-tune.
pub fn fine_tune_settings(config: &LoraConfig, progress_every: u32) -> FineTuneSettings {
    use domain::fine_tune::LoraTarget as Target;
    use gpu::model::LoraTarget;
    let targets = config
        .targets
        .iter()
        .map(|target| match target {
            Target::Qkv => LoraTarget::Qkv,
            Target::AttnOut => LoraTarget::Proj,
            Target::MlpIn => LoraTarget::Fc1,
            Target::MlpOut => LoraTarget::Fc2,
        })
        .collect();
    FineTuneSettings {
        lora: gpu::model::LoraConfig { rank: config.rank as usize, alpha: config.alpha, targets },
        steps: config.steps as usize,
        batch_size: config.batch_size as usize,
        learning_rate: config.learning_rate,
        weight_decay: config.weight_decay,
        seed: config.seed,
        prior_weight: config.prior_weight,
        min_snr_gamma: FineTuneSettings::default().min_snr_gamma,
        progress_every: progress_every.max(1) as usize,
    }
}

/// The shipped rater, remembering its reading of every image it has seen (the demo's simulated
/// annotators read the same ratings).
pub struct ReferenceRater {
    rater: Rater,
    ratings: Mutex<HashMap<BlobHash, Rating>>,
}

impl Default for ReferenceRater {
    fn default() -> Self {
        ReferenceRater { rater: Rater::shipped(), ratings: Mutex::new(HashMap::new()) }
    }
}

impl ReferenceRater {
    /// Rates every image not rated yet (in batches of 256).
    pub fn rate(&self, images: &[(BlobHash, Vec<u8>)]) -> Result<(), ModelError> {
        let mut ratings = self.ratings.lock().unwrap_or_else(PoisonError::into_inner);
        let mut missing: Vec<&(BlobHash, Vec<u8>)> = Vec::new();
        for image in images {
            if !ratings.contains_key(&image.0) && !missing.iter().any(|m| m.0 == image.0) {
                missing.push(image);
            }
        }
        for chunk in missing.chunks(256) {
            let decoded = chunk
                .iter()
                .map(|(blob, png)| Image::from_png(png).map_err(|e| ModelError(format!("image blob {blob}: {e}"))))
                .collect::<Result<Vec<Image>, ModelError>>()?;
            for ((blob, _), rating) in chunk.iter().zip(self.rater.rate(&decoded)) {
                ratings.insert(blob.clone(), rating);
            }
        }
        Ok(())
    }

    /// The reading of an image rated before.
    pub fn rating(&self, blob: &BlobHash) -> Option<Rating> {
        self.ratings.lock().unwrap_or_else(PoisonError::into_inner).get(blob).cloned()
    }
}

impl QualityRater for ReferenceRater {
    fn quality(&self, images: &[(BlobHash, Vec<u8>)]) -> Result<Vec<f64>, ModelError> {
        self.rate(images)?;
        let ratings = self.ratings.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(images.iter().map(|(blob, _)| ratings.get(blob).map_or(0.0, |r| f64::from(r.quality))).collect())
    }
}
