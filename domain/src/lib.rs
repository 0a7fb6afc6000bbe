//! thitl's domain model: the T-HITL method as aggregates with commands, events and invariants.
//!
//! | aggregate | stream | what it holds |
//! |---|---|---|
//! | [`Taxonomy`] | `taxonomy` | the categories of problematic associations (data, editable) |
//! | [`Association`] | `association-<id>` | group, concept, category, probe prompts |
//! | [`PromptSet`] | `promptset-<id>` | training prompts, their neutral forms and reviews |
//! | [`Generation`] | `generation-<id>` | an image-generation job and its images |
//! | [`AnnotationRound`] | `round-<id>` | baseline, round 1 or round 2: items, assignments, answers, outcome |
//! | [`FineTune`] | `finetune-<id>` | a LoRA job: dataset, config, progress, adapter |
//! | [`ModelVersion`] | `model-<id>` | a base model or base + adapter; promotion and rollback |
//! | [`Campaign`] | `campaign-<id>` | the T-HITL process: stages and linked work; [`campaign::next`] drives it |
//! | [`Token`] | `token-<id>` | an access token's role and the hash of its secret |
//!
//! Architecture invariant: `domain` is pure. It does no IO, reads no clock, draws no random
//! numbers and knows nothing of actix, SQL or wgpu. Time and ids arrive inside commands, so
//! `decide` gives the same events for the same state and command, always.

pub mod aggregate;
pub mod aggregation;
pub mod association;
pub mod campaign;
pub mod error;
pub mod fine_tune;
pub mod generation;
pub mod ids;
pub mod lease;
pub mod metadata;
pub mod model_version;
pub mod neutral;
pub mod planning;
pub mod prompt_set;
pub mod round;
pub mod taxonomy;
#[cfg(test)]
mod testing;
pub mod token;
pub mod values;

pub use aggregate::{Aggregate, DecodeError, Encoded, EventPayload, decode, encode};
pub use association::{Association, AssociationCommand, AssociationEvent};
pub use campaign::{Campaign, CampaignCommand, CampaignEvent};
pub use error::{DomainError, ErrorKind};
pub use fine_tune::{FineTune, FineTuneCommand, FineTuneEvent};
pub use generation::{Generation, GenerationCommand, GenerationEvent};
pub use ids::*;
pub use metadata::{Actor, EventMetadata, Role};
pub use model_version::{ModelVersion, ModelVersionCommand, ModelVersionEvent};
pub use prompt_set::{PromptSet, PromptSetCommand, PromptSetEvent};
pub use round::{AnnotationRound, RoundCommand, RoundEvent};
pub use taxonomy::{Taxonomy, TaxonomyCommand, TaxonomyEvent};
pub use token::{Token, TokenCommand, TokenEvent};

use serde::{Deserialize, Serialize};

/// Any event of any aggregate: what projections fold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DomainEvent {
    Taxonomy(TaxonomyEvent),
    Association(AssociationEvent),
    PromptSet(PromptSetEvent),
    Generation(GenerationEvent),
    Round(RoundEvent),
    FineTune(FineTuneEvent),
    ModelVersion(ModelVersionEvent),
    Campaign(CampaignEvent),
    Token(TokenEvent),
}

impl DomainEvent {
    /// Decodes a stored event; the stream's category (the part before the first `-`) names
    /// the aggregate, the type and schema version the variant and its shape.
    pub fn decode(
        stream: &str,
        event_type: &str,
        schema_version: u32,
        payload: serde_json::Value,
    ) -> Result<DomainEvent, DecodeError> {
        let category = stream_category(stream);
        Ok(match category {
            ids::TAXONOMY_STREAM => DomainEvent::Taxonomy(decode(event_type, schema_version, payload)?),
            AssociationId::STREAM_CATEGORY => DomainEvent::Association(decode(event_type, schema_version, payload)?),
            PromptSetId::STREAM_CATEGORY => DomainEvent::PromptSet(decode(event_type, schema_version, payload)?),
            GenerationId::STREAM_CATEGORY => DomainEvent::Generation(decode(event_type, schema_version, payload)?),
            RoundId::STREAM_CATEGORY => DomainEvent::Round(decode(event_type, schema_version, payload)?),
            FineTuneId::STREAM_CATEGORY => DomainEvent::FineTune(decode(event_type, schema_version, payload)?),
            ModelVersionId::STREAM_CATEGORY => DomainEvent::ModelVersion(decode(event_type, schema_version, payload)?),
            CampaignId::STREAM_CATEGORY => DomainEvent::Campaign(decode(event_type, schema_version, payload)?),
            TokenId::STREAM_CATEGORY => DomainEvent::Token(decode(event_type, schema_version, payload)?),
            other => {
                return Err(DecodeError {
                    event_type: event_type.to_string(),
                    schema_version,
                    message: format!("stream category '{other}' belongs to no aggregate"),
                });
            }
        })
    }

    /// Decodes from the payload's JSON text without building an intermediate tree when the
    /// stored schema is current (the common case, and the one replay speed depends on).
    pub fn decode_str(
        stream: &str,
        event_type: &str,
        schema_version: u32,
        payload: &str,
    ) -> Result<DomainEvent, DecodeError> {
        let fail = |message: String| DecodeError { event_type: event_type.to_string(), schema_version, message };
        let current = match stream_category(stream) {
            ids::TAXONOMY_STREAM => TaxonomyEvent::schema_version(event_type),
            AssociationId::STREAM_CATEGORY => AssociationEvent::schema_version(event_type),
            PromptSetId::STREAM_CATEGORY => PromptSetEvent::schema_version(event_type),
            GenerationId::STREAM_CATEGORY => GenerationEvent::schema_version(event_type),
            RoundId::STREAM_CATEGORY => RoundEvent::schema_version(event_type),
            FineTuneId::STREAM_CATEGORY => FineTuneEvent::schema_version(event_type),
            ModelVersionId::STREAM_CATEGORY => ModelVersionEvent::schema_version(event_type),
            CampaignId::STREAM_CATEGORY => CampaignEvent::schema_version(event_type),
            TokenId::STREAM_CATEGORY => TokenEvent::schema_version(event_type),
            _ => 0,
        };
        let plain_type = event_type.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if current == schema_version && plain_type {
            let tagged = format!("{{\"{event_type}\":{payload}}}");
            let category = stream_category(stream);
            let parsed = match category {
                ids::TAXONOMY_STREAM => serde_json::from_str(&tagged).map(DomainEvent::Taxonomy),
                AssociationId::STREAM_CATEGORY => serde_json::from_str(&tagged).map(DomainEvent::Association),
                PromptSetId::STREAM_CATEGORY => serde_json::from_str(&tagged).map(DomainEvent::PromptSet),
                GenerationId::STREAM_CATEGORY => serde_json::from_str(&tagged).map(DomainEvent::Generation),
                RoundId::STREAM_CATEGORY => serde_json::from_str(&tagged).map(DomainEvent::Round),
                FineTuneId::STREAM_CATEGORY => serde_json::from_str(&tagged).map(DomainEvent::FineTune),
                ModelVersionId::STREAM_CATEGORY => serde_json::from_str(&tagged).map(DomainEvent::ModelVersion),
                CampaignId::STREAM_CATEGORY => serde_json::from_str(&tagged).map(DomainEvent::Campaign),
                _ => serde_json::from_str(&tagged).map(DomainEvent::Token),
            };
            return parsed.map_err(|e| fail(e.to_string()));
        }
        let value = serde_json::from_str(payload).map_err(|e| fail(e.to_string()))?;
        DomainEvent::decode(stream, event_type, schema_version, value)
    }

    pub fn encode(&self) -> Encoded {
        match self {
            DomainEvent::Taxonomy(e) => encode(e),
            DomainEvent::Association(e) => encode(e),
            DomainEvent::PromptSet(e) => encode(e),
            DomainEvent::Generation(e) => encode(e),
            DomainEvent::Round(e) => encode(e),
            DomainEvent::FineTune(e) => encode(e),
            DomainEvent::ModelVersion(e) => encode(e),
            DomainEvent::Campaign(e) => encode(e),
            DomainEvent::Token(e) => encode(e),
        }
    }
}

/// `association` for `association-0190…`; the whole name for a stream without a `-`.
pub fn stream_category(stream: &str) -> &str {
    stream.split_once('-').map_or(stream, |(category, _)| category)
}

/// An event as projections see it: decoded, with where and when it was recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub position: u64,
    pub stream: String,
    pub version: u64,
    /// The stored type name (the variant's name), e.g. `AnnotationSubmitted`.
    pub event_type: String,
    pub metadata: EventMetadata,
    pub event: DomainEvent,
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn events_round_trip_through_type_and_payload() {
        let event = AssociationEvent::AssociationRetired {
            association_id: AssociationId(Uuid::from_u128(1)),
            reason: "done".into(),
        };
        let encoded = encode(&event);
        assert_eq!(encoded.event_type, "AssociationRetired");
        assert_eq!(encoded.schema_version, 1);
        assert_eq!(encoded.payload["reason"], "done");
        let stream = AssociationId(Uuid::from_u128(1)).stream();
        let decoded = DomainEvent::decode(&stream, &encoded.event_type, 1, encoded.payload).unwrap();
        assert_eq!(decoded, DomainEvent::Association(event));
    }

    #[test]
    fn unknown_types_newer_schemas_and_foreign_streams_are_decode_errors() {
        let payload = serde_json::json!({});
        let stream = AssociationId(Uuid::from_u128(1)).stream();
        assert!(DomainEvent::decode(&stream, "NoSuchEvent", 1, payload.clone()).is_err());
        let newer = DomainEvent::decode(&stream, "AssociationRetired", 9, payload.clone()).unwrap_err();
        assert!(newer.message.contains("newer"), "{newer}");
        assert!(DomainEvent::decode("elsewhere-1", "AssociationRetired", 1, payload).is_err());
        assert!(DomainEvent::decode_str("elsewhere-1", "AssociationRetired", 1, "{}").is_err());
        assert!(DomainEvent::decode_str(&stream, "AssociationRetired", 1, "{not json").is_err());
    }

    #[test]
    fn the_fast_decoder_agrees_with_the_general_one() {
        let event = AssociationEvent::AssociationRetired {
            association_id: AssociationId(Uuid::from_u128(1)),
            reason: "a \"quoted\" reason".into(),
        };
        let encoded = encode(&event);
        let stream = AssociationId(Uuid::from_u128(1)).stream();
        let text = serde_json::to_string(&encoded.payload).unwrap();
        let fast = DomainEvent::decode_str(&stream, &encoded.event_type, 1, &text).unwrap();
        let general = DomainEvent::decode(&stream, &encoded.event_type, 1, encoded.payload).unwrap();
        assert_eq!(fast, general);
        // A type name that is not a plain identifier takes the general path (and fails cleanly).
        assert!(DomainEvent::decode_str(&stream, "Bad\"Type", 1, "{}").is_err());
    }
}
