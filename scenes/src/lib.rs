//! thitl's reference world: 32×32 rendered scenes of a person (whose look marks the group), an
//! optional object (the concept) and a setting; captions from a grammar; a tokenizer; and a biased
//! corpus with planted associations; a rater model (shipped weights) and the base DiT's training
//! pipeline (its weights are not shipped yet: see the README).
//!
//! Map of the modules:
//! - `world`: [`Group`], [`Concept`], [`Setting`] (ids, names, synonyms) and [`Scene`].
//! - `render` (private; [`render`] re-exported): draws a scene from a seed — backgrounds,
//!   people and objects, each group and concept distinct by silhouette and colour family.
//! - [`image`]: [`Image`] (32×32 RGB), the model's `[3, 32, 32]` layout in `[-1, 1]`, PNG and
//!   image grids.
//! - [`corrupt`](mod@corrupt): [`corrupt()`] damage that grows with a severity, and mild
//!   [`augment`]ation for training the rater.
//! - [`caption`](mod@caption): the caption grammar ([`caption()`]) and [`parse_prompt`].
//! - [`tokenizer`]: the fixed vocabulary and [`encode`] into 16 token ids.
//! - [`corpus`]: [`CorpusConfig`] (defaults in `corpus.json`) and the deterministic [`Corpus`]
//!   stream of [`Sample`]s.
//! - [`base`]: the base DiT trained on the corpus — [`BaseConfig`] (the shipped recipe),
//!   [`train_base`] and [`BaseModel`] to sample from a prompt.
//! - [`rater`]: the [`Rater`] (group, concepts and quality of a picture, and features), its
//!   shipped weights, [`train_rater`] and held-out [`evaluate`](rater::evaluate)ion.
//! - [`frechet`]: [`frechet_distance`] between sets of feature vectors.
//!
//! A key design decision: everything here is a pure function of its inputs and a `u64` seed,
//! through the workspace's SplitMix64 generator (`gpu::rng`, wrapped by the private `rng`
//! module), so a render, a caption or a whole corpus can be reproduced from what an event
//! recorded.
//!
//! Architecture invariant: this is the only crate that knows what a "hippopotamus" looks like.
//! It does no IO beyond embedding its own shipped files at compile time.

pub mod base;
pub mod caption;
pub mod corpus;
pub mod corrupt;
pub mod finetune;
pub mod frechet;
pub mod image;
pub mod rater;
mod render;
mod rng;
pub mod tokenizer;
pub mod world;

pub use base::{BaseConfig, BaseError, BaseModel, Flow, SampleItem, SampleSettings, TrainedBase, train_base};
pub use caption::{CaptionSpec, PromptMeaning, caption, negative_in_context, parse_prompt};
pub use corpus::{Corpus, CorpusConfig, CorpusError, PlantedAssociation, Sample};
pub use corrupt::{augment, corrupt, malform};
pub use finetune::{Example, FineTuneSettings, FineTuned, fine_tune};
pub use frechet::{FeatureStatistics, frechet_distance};
pub use image::{Image, ImageError, grid_png};
pub use rater::{Rater, RaterError, RaterTraining, Rating, train_rater};
pub use render::render;
pub use tokenizer::{MAX_TOKENS, Tokenized, encode};
pub use world::{Concept, Group, Scene, Setting};
