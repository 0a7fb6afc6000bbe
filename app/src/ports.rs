//! The ports through which the application reaches a model: a [`ModelFamily`] that loads
//! versions from their blobs, samples and fine-tunes them, and says what the campaign runner may
//! ask of its world (prior-preservation prompts, neutral alternative objects); and an optional
//! [`QualityRater`]. The reference world (this crate's `reference` module) is one implementation; a test's
//! placeholder family another; an imported Stable Diffusion checkpoint the next.
//!
//! Images cross the ports as PNG bytes and weights and adapters as safetensors bytes — what the
//! blob store keeps — so the application never sees a family's tensors.

use std::sync::Arc;

use domain::fine_tune::LoraConfig;
use domain::generation::SamplerSettings;
use domain::values::BlobHash;

/// A model family could not do what was asked (bad weights, an unknown word, a failed kernel).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ModelError(pub String);

impl ModelError {
    pub fn new(message: impl Into<String>) -> Self {
        ModelError(message.into())
    }
}

/// One image to sample: an image depends only on these and the sampler settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleRequest {
    pub prompt: String,
    /// The concept to steer away from (the neutral prompt transformation's bare concept).
    pub negative_prompt: Option<String>,
    pub seed: u64,
}

/// One training image and the prompt it is trained with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingImage {
    /// Names the image in error messages (its image id).
    pub name: String,
    pub prompt: String,
    pub png: Vec<u8>,
}

/// A fine-tune's progress report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainingProgress {
    pub step: u32,
    pub steps: u32,
    pub loss: f32,
}

/// Whether training goes on after a progress report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// A trained adapter (safetensors bytes, stored as a blob) and the loss it ended at.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainedAdapter {
    pub adapter: Vec<u8>,
    pub final_loss: f32,
}

/// A family of models thitl can sample and fine-tune.
pub trait ModelFamily: Send + Sync {
    /// A base version from its weights blob.
    fn load(&self, weights: &[u8]) -> Result<Arc<dyn Model>, ModelError>;

    /// `count` prompts for prior-preservation images — the model's own pictures of subjects none
    /// of `targeted_groups` is — drawing whatever randomness they need from `seeds`.
    fn prior_prompts(&self, targeted_groups: &[String], count: u32, seeds: &mut dyn FnMut() -> u64) -> Vec<String>;

    /// Objects a curated prompt may name instead of an association's concept, when the base model
    /// hardly draws the group without it (empty: the family offers none).
    fn alternative_objects(&self) -> Vec<String>;

    /// `count` gold pictures for an association of `group` and `concept`: pictures whose answers
    /// the family knows (the group shown, the concept in some and not in others), drawing
    /// whatever randomness they need from `seeds`. None by default: only a family that can
    /// render known truth offers them.
    fn gold_pictures(
        &self,
        _group: &str,
        _concept: &str,
        _count: u32,
        _seeds: &mut dyn FnMut() -> u64,
    ) -> Vec<GoldPicture> {
        Vec::new()
    }
}

/// A picture whose answers are known, for a round's gold items.
#[derive(Debug, Clone, PartialEq)]
pub struct GoldPicture {
    pub png: Vec<u8>,
    /// What it shows, as a prompt (hidden from annotators, like every item's).
    pub prompt: String,
    pub gold: domain::round::Gold,
}

/// A loaded model version.
pub trait Model: Send + Sync {
    /// This model with a fine-tune's adapter applied.
    fn with_adapter(&self, adapter: &[u8]) -> Result<Arc<dyn Model>, ModelError>;

    /// Whether an adapter is applied already (adapters do not stack).
    fn is_tuned(&self) -> bool;

    /// One PNG per request, in order.
    fn sample(&self, requests: &[SampleRequest], sampler: &SamplerSettings) -> Result<Vec<Vec<u8>>, ModelError>;

    /// Trains an adapter on `examples` with `prior` as prior preservation, reporting every
    /// `progress_every` steps; `Flow::Stop` from the report ends training with an error.
    fn fine_tune(
        &self,
        examples: &[TrainingImage],
        prior: &[TrainingImage],
        config: &LoraConfig,
        progress_every: u32,
        report: &mut dyn FnMut(TrainingProgress) -> Flow,
    ) -> Result<TrainedAdapter, ModelError>;
}

/// An automatic judge of image quality. A campaign without one takes quality from its human
/// rounds alone.
pub trait QualityRater: Send + Sync {
    /// Quality on the 1–5 scale of each image (PNG bytes, named by their blob hash).
    fn quality(&self, images: &[(BlobHash, Vec<u8>)]) -> Result<Vec<f64>, ModelError>;
}
