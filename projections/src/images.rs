//! Images by id: what the log says about each image (the job and index that made it, prompt,
//! seed, model version, blob hash, the rounds it was put in), folded from `ImageGenerated` and
//! `RoundOpened` events. Served by `GET /v1/images/{id}`; the application follows the store with
//! it (`app::images`), so an answer reflects the log's head when it was asked.

use std::collections::HashMap;

use domain::generation::{GenerationEvent, GenerationPurpose};
use domain::round::{ItemContent, RoundEvent};
use domain::values::BlobHash;
use domain::{AssociationId, DomainEvent, GenerationId, ImageId, ModelVersionId, PromptId, RoundId};
use serde::{Deserialize, Serialize};

/// What is known about one image, from the events that recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageRecord {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = "uuid"))]
    pub image_id: ImageId,
    /// SHA-256 of its bytes: fetch them from `/v1/blobs/{blob}`.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub blob: BlobHash,
    /// The generation job that made it (none for an image a curator put in a round by hand).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = "uuid"))]
    pub generation_id: Option<GenerationId>,
    /// Its index within that job.
    pub index: Option<u32>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub purpose: Option<GenerationPurpose>,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub seed: u64,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = "uuid"))]
    pub model_version: Option<ModelVersionId>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = "uuid"))]
    pub association_id: Option<AssociationId>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = "uuid"))]
    pub prompt_id: Option<PromptId>,
    /// The annotation rounds it was put in, in order.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub rounds: Vec<RoundId>,
}

/// Images by id, folded from the event log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageCatalog {
    /// The position of the last event offered (0: none).
    pub position: u64,
    images: HashMap<ImageId, ImageRecord>,
}

impl ImageCatalog {
    /// Whether events of this type change the catalog (the others need not be decoded).
    pub fn wants(event_type: &str) -> bool {
        matches!(event_type, "ImageGenerated" | "RoundOpened")
    }

    /// Folds the event recorded at `position`.
    pub fn apply(&mut self, position: u64, event: DomainEvent) {
        Self::fold(&mut self.images, event);
        self.position = position;
    }

    /// Moves the position past an event that does not change the catalog.
    pub fn skip(&mut self, position: u64) {
        self.position = position;
    }

    pub fn get(&self, image_id: ImageId) -> Option<&ImageRecord> {
        self.images.get(&image_id)
    }

    /// Folds one event (only `ImageGenerated` and `RoundOpened` matter).
    fn fold(images: &mut HashMap<ImageId, ImageRecord>, event: DomainEvent) {
        match event {
            DomainEvent::Generation(GenerationEvent::ImageGenerated {
                generation_id,
                index,
                image_id,
                blob,
                model_version,
                purpose,
                item,
            }) => {
                let rounds = images.remove(&image_id).map(|old| old.rounds).unwrap_or_default();
                images.insert(
                    image_id,
                    ImageRecord {
                        image_id,
                        blob,
                        generation_id: Some(generation_id),
                        index: Some(index),
                        purpose: Some(purpose),
                        prompt: item.prompt,
                        negative_prompt: item.negative_prompt,
                        seed: item.seed,
                        model_version: Some(model_version),
                        association_id: item.association_id,
                        prompt_id: item.prompt_id,
                        rounds,
                    },
                );
            }
            DomainEvent::Round(RoundEvent::RoundOpened { round_id, items, .. }) => {
                for item in items {
                    let refs = match item.content {
                        ItemContent::Image(image) => vec![image],
                        ItemContent::Pair { left, right } => vec![left, right],
                    };
                    for (side, image) in refs.into_iter().enumerate() {
                        let record = images.entry(image.image_id).or_insert_with(|| ImageRecord {
                            image_id: image.image_id,
                            blob: image.blob,
                            generation_id: None,
                            index: None,
                            purpose: None,
                            prompt: item.label.prompt.clone(),
                            negative_prompt: None,
                            seed: item.label.seed,
                            model_version: item.label.models.get(side).copied(),
                            association_id: item.label.association_id,
                            prompt_id: item.label.prompt_id,
                            rounds: vec![],
                        });
                        if record.rounds.last() != Some(&round_id) {
                            record.rounds.push(round_id);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}
