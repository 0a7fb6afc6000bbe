//! Lineage: where a model version came from, as one document an auditor can follow.
//!
//! ```text
//! model version ──derived from──> fine-tune (arm, config, adapter, final loss)
//!      │                              ├─ examples: image, blob, prompt ──> round 1 item: every rating, by whom, and the verdict
//!      │                              ├─ prior-preservation images
//!      │                              └─ source round (kind, raters per item, threshold)
//!      └─ parent (the base: its weights blob; for an imported pipeline, every file by hash)
//!                                                     prompts ──> prompt set ──> generator (name, model, parameters, response hash)
//! ```
//!
//! Built from the aggregates themselves (not a read model), so it is exactly what the event log
//! says at the moment it is asked.

use std::collections::{BTreeMap, BTreeSet};

use domain::round::ItemContent;
use domain::{Aggregate, AnnotationRound, FineTune, ModelVersion, ModelVersionId, PromptId, PromptSet, PromptSetId};
use serde_json::{Value, json};

use crate::blobs::BlobStore;
use crate::commands::{CommandBus, CommandError};

#[derive(Debug, thiserror::Error)]
pub enum LineageError {
    #[error("no model version has id {0}")]
    NotFound(ModelVersionId),
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// The lineage of model version `id`; `blobs` lists the files of an imported pipeline by hash
/// (its weights blob is a manifest of them).
pub fn lineage(bus: &CommandBus, blobs: &dyn BlobStore, id: ModelVersionId) -> Result<Value, LineageError> {
    let (version, _) = bus.load::<ModelVersion>(&id.stream())?;
    if !version.exists() {
        return Err(LineageError::NotFound(id));
    }
    let describe = |v: &ModelVersion, id: ModelVersionId| {
        let mut described = json!({"id": id, "name": v.name, "status": v.status, "weights": v.weights, "adapter": v.adapter, "parent": v.parent, "family": v.family});
        if v.family.as_deref() == Some(crate::sd::FAMILY)
            && let Some(weights) = &v.weights
            && let Ok(Some(bytes)) = blobs.get(weights)
            && let Ok(manifest) = crate::sd::Manifest::parse(&bytes)
        {
            described["files"] = json!(manifest.files);
        }
        described
    };
    let parent = match version.parent {
        Some(parent) => Some(describe(&bus.load::<ModelVersion>(&parent.stream())?.0, parent)),
        None => None,
    };
    let Some(fine_tune_id) = version.fine_tune_id else {
        return Ok(json!({"model_version": describe(&version, id), "parent": parent, "fine_tune": null}));
    };
    let (job, _) = bus.load::<FineTune>(&fine_tune_id.stream())?;

    // The round the examples were screened in: every rating of each example's item.
    let round = match job.source_round {
        Some(round_id) => Some((round_id, bus.load::<AnnotationRound>(&round_id.stream())?.0)),
        None => None,
    };
    let mut by_image = BTreeMap::new();
    if let Some((_, round)) = &round {
        for item in &round.items {
            if let ItemContent::Image(image) = &item.content {
                by_image.insert(image.image_id, item);
            }
        }
    }
    let mut annotators = BTreeSet::new();
    let mut prompt_ids = BTreeSet::new();
    let examples: Vec<Value> = job
        .examples
        .iter()
        .map(|example| {
            prompt_ids.extend(example.prompt_id);
            let screened = round.as_ref().and_then(|(_, round)| {
                let item = by_image.get(&example.image_id)?;
                let ratings: Vec<Value> = round
                    .submissions
                    .get(&item.item_id)
                    .map(|answers| {
                        answers
                            .iter()
                            .map(|(annotator, answer)| {
                                annotators.insert(annotator.clone());
                                json!({"annotator": annotator, "answer": answer})
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let verdict = round.outcomes.iter().find(|o| o.item_id == item.item_id).map(|o| &o.verdict);
                Some(json!({"item_id": item.item_id, "ratings": ratings, "verdict": verdict}))
            });
            json!({"image_id": example.image_id, "blob": example.blob, "prompt": example.prompt, "prompt_id": example.prompt_id, "round_1": screened})
        })
        .collect();

    // The prompts the examples answer, with the set and the generator that wrote them.
    let mut prompts = Vec::new();
    if !prompt_ids.is_empty() {
        for (stream, _) in bus.store().list_streams().map_err(CommandError::from)? {
            let Some(set_id) = stream.as_str().strip_prefix("promptset-").and_then(|id| id.parse::<PromptSetId>().ok())
            else {
                continue;
            };
            let (set, _) = bus.load::<PromptSet>(stream.as_str())?;
            for (prompt_id, prompt) in &set.prompts {
                if prompt_ids.contains(prompt_id) {
                    prompts.push(json!({
                        "prompt_id": prompt_id, "prompt_set_id": set_id, "association_id": set.association_id,
                        "text": prompt.text, "neutral": prompt.neutral, "status": prompt.status, "generator": prompt.generator,
                    }));
                }
            }
        }
    }
    let found: BTreeSet<PromptId> =
        prompts.iter().filter_map(|p| serde_json::from_value(p["prompt_id"].clone()).ok()).collect();
    let missing: Vec<&PromptId> = prompt_ids.difference(&found).collect();
    Ok(json!({
        "model_version": describe(&version, id),
        "parent": parent,
        "fine_tune": {
            "id": fine_tune_id, "arm": job.arm, "status": job.status, "config": job.config, "adapter": job.adapter,
            "final_loss": job.final_loss, "losses": job.losses, "base_model": job.base_model,
        },
        "source_round": round.as_ref().map(|(round_id, round)| json!({"id": round_id, "kind": round.kind, "raters_per_item": round.raters_per_item, "quality_threshold": round.quality_threshold, "items": round.items.len()})),
        "examples": examples,
        "prior_preservation": job.prior_preservation,
        "prompts": prompts,
        "prompts_not_found": missing,
        "annotators": annotators,
    }))
}
