//! thitl's reference world: 32×32 rendered scenes of a person (whose look marks the group), an
//! optional object (the concept) and a setting; captions from a grammar; a biased corpus with
//! planted associations; a rater model; and the shipped base weights.
//!
//! Architecture invariant: this is the only crate that knows what a "hippopotamus" looks like.
//! It depends on `gpu` for training and sampling, and on nothing that does IO beyond reading its
//! own shipped files.
