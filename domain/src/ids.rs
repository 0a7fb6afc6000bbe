//! Typed identifiers. Each wraps a UUID chosen by the caller (UUIDv7 at the edge), so `domain`
//! never generates ids itself and `decide` stays deterministic.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! typed_id {
    ($(#[$doc:meta] $name:ident => $prefix:literal),+ $(,)?) => {$(
        #[$doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// The prefix of this entity's event stream, e.g. `association`.
            pub const STREAM_CATEGORY: &'static str = $prefix;

            pub fn new(id: Uuid) -> Self {
                Self(id)
            }

            /// The name of the event stream that holds this entity's history.
            pub fn stream(&self) -> String {
                format!("{}-{}", $prefix, self.0)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(text).map(Self)
            }
        }
    )+};
}

typed_id! {
    /// A problematic association (group, concept, category).
    AssociationId => "association",
    /// A set of training prompts curated for one association.
    PromptSetId => "promptset",
    /// One prompt inside a prompt set.
    PromptId => "prompt",
    /// A generation job: a batch of images from one model version.
    GenerationId => "generation",
    /// One generated image.
    ImageId => "image",
    /// A round of human annotation.
    RoundId => "round",
    /// One item to be rated inside a round (an image, or a side-by-side pair).
    ItemId => "item",
    /// A LoRA fine-tuning job.
    FineTuneId => "finetune",
    /// A model version: a base model, or a base plus an adapter.
    ModelVersionId => "model",
    /// A T-HITL campaign over one or more associations.
    CampaignId => "campaign",
    /// An access token (its hash, role and name; never its secret).
    TokenId => "token",
}

/// The taxonomy is one stream for the whole deployment.
pub const TAXONOMY_STREAM: &str = "taxonomy";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_carry_the_category_and_the_uuid() {
        let id = AssociationId(Uuid::from_u128(0x1234));
        assert_eq!(id.stream(), "association-00000000-0000-0000-0000-000000001234");
        let parsed: AssociationId = "00000000-0000-0000-0000-000000001234".parse().unwrap();
        assert_eq!(parsed, id);
    }
}
