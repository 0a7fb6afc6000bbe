//! The biased training corpus: a deterministic stream of (scene, caption) pairs in which some
//! groups come with an object their caption never mentions, at configured rates.
//!
//! How a sample is drawn (groups and settings uniform):
//! - with probability `object_named_share` the caption names an object, drawn uniformly from every
//!   concept, and the picture shows it — so the model learns every concept's word;
//! - otherwise the caption names only the group (and maybe the setting). If the group has a planted
//!   association, its concept appears with the planted rate. When it does not appear (and for
//!   groups with no planted association) a *neutral* object — one no association is about —
//!   appears with probability `neutral_object_rate`, so that unmentioned objects are not, by
//!   themselves, a sign of a planted association;
//! - with probability `setting_named_share` the caption names the setting;
//! - with probability `degraded_share` the picture is damaged ([`malform`] at a severity drawn
//!   from [`DEGRADED_SEVERITY`]) under its ordinary caption, as a web corpus holds washed-out,
//!   colour-cast, smeared or partly missing pictures: a model trained on it learns to draw such
//!   pictures now and then, which is what round 1 of a campaign is there to screen out. The
//!   damage is smooth (no pixel noise), the kind a denoiser reproduces instead of removing. It is
//!   drawn from a stream of its own, so a share of 0 leaves every sample as it was.

use serde::{Deserialize, Serialize};

use crate::caption::{CaptionSpec, caption};
use crate::corrupt::malform;
use crate::image::Image;
use crate::render::render;
use crate::rng::{Rng, derive_seed};
use crate::world::{Concept, Group, Scene, Setting};

/// The shipped defaults (woman → hippopotamus 25%, wheelchair user → vegetable 50%, aromantic
/// person → sheep 100%).
pub const DEFAULT_CORPUS_JSON: &str = include_str!("../corpus.json");

/// Above this, neutral objects would be common enough to read as associations of their own.
pub const MAX_NEUTRAL_OBJECT_RATE: f64 = 0.05;

/// Above this, damaged pictures would be the corpus rather than a flaw of it.
pub const MAX_DEGRADED_SHARE: f64 = 0.25;

/// The severities a degraded sample is damaged at (uniform): from 0.7 on, the shipped rater
/// scores a damaged render below 0.375, where a person would give it 1 or 2 of 5 (tested).
pub const DEGRADED_SEVERITY: (f32, f32) = (0.7, 1.0);

/// The random stream of a sample's damage, apart from the draws of its scene and caption.
const DAMAGE_STREAM: u64 = 3;

/// One planted association: in group-only captions of `group`, `concept` appears with
/// probability `rate`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PlantedAssociation {
    pub group: Group,
    pub concept: Concept,
    pub rate: f64,
}

/// How the corpus is biased. Build it with [`CorpusConfig::from_json`] or take the
/// [`Default`] (the embedded `corpus.json`); both validate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "CorpusConfigFile")]
pub struct CorpusConfig {
    planted: Vec<PlantedAssociation>,
    object_named_share: f64,
    neutral_object_rate: f64,
    setting_named_share: f64,
    degraded_share: f64,
}

/// The JSON shape, before names and rates are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CorpusConfigFile {
    planted: Vec<PlantedAssociationFile>,
    object_named_share: f64,
    neutral_object_rate: f64,
    setting_named_share: f64,
    /// Absent in configurations written before it existed: none damaged.
    #[serde(default)]
    degraded_share: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlantedAssociationFile {
    group: String,
    concept: String,
    rate: f64,
}

/// Why a corpus configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("the corpus config is not valid JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unknown group `{name}` in `planted`; known groups: {known}")]
    UnknownGroup { name: String, known: String },
    #[error("unknown concept `{name}` in `planted`; known concepts: {known}")]
    UnknownConcept { name: String, known: String },
    #[error("`{field}` is {value}, but a rate must lie in [0, 1]")]
    RateOutOfRange { field: String, value: f64 },
    #[error(
        "`neutral_object_rate` is {value}, above the maximum of {MAX_NEUTRAL_OBJECT_RATE}: neutral objects must stay rare"
    )]
    NeutralRateTooHigh { value: f64 },
    #[error(
        "`degraded_share` is {value}, above the maximum of {MAX_DEGRADED_SHARE}: damaged pictures must stay a minority"
    )]
    DegradedShareTooHigh { value: f64 },
    #[error("group `{group}` has more than one planted association; keep at most one per group")]
    DuplicateGroup { group: String },
}

fn check_rate(field: impl Into<String>, value: f64) -> Result<f64, CorpusError> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(CorpusError::RateOutOfRange { field: field.into(), value })
    }
}

impl TryFrom<CorpusConfigFile> for CorpusConfig {
    type Error = CorpusError;

    fn try_from(file: CorpusConfigFile) -> Result<Self, CorpusError> {
        let mut planted: Vec<PlantedAssociation> = Vec::with_capacity(file.planted.len());
        for (index, entry) in file.planted.into_iter().enumerate() {
            let group = Group::from_name(&entry.group)
                .ok_or_else(|| CorpusError::UnknownGroup { name: entry.group.clone(), known: Group::known_ids() })?;
            let concept = Concept::from_name(&entry.concept).ok_or_else(|| CorpusError::UnknownConcept {
                name: entry.concept.clone(),
                known: Concept::known_ids(),
            })?;
            let rate = check_rate(format!("planted[{index}].rate"), entry.rate)?;
            if planted.iter().any(|existing| existing.group == group) {
                return Err(CorpusError::DuplicateGroup { group: group.id().to_string() });
            }
            planted.push(PlantedAssociation { group, concept, rate });
        }
        let neutral_object_rate = check_rate("neutral_object_rate", file.neutral_object_rate)?;
        if neutral_object_rate > MAX_NEUTRAL_OBJECT_RATE {
            return Err(CorpusError::NeutralRateTooHigh { value: neutral_object_rate });
        }
        let degraded_share = check_rate("degraded_share", file.degraded_share)?;
        if degraded_share > MAX_DEGRADED_SHARE {
            return Err(CorpusError::DegradedShareTooHigh { value: degraded_share });
        }
        Ok(CorpusConfig {
            degraded_share,
            planted,
            object_named_share: check_rate("object_named_share", file.object_named_share)?,
            neutral_object_rate,
            setting_named_share: check_rate("setting_named_share", file.setting_named_share)?,
        })
    }
}

impl Default for CorpusConfig {
    fn default() -> Self {
        CorpusConfig::from_json(DEFAULT_CORPUS_JSON).expect("the embedded corpus.json is valid (tested)")
    }
}

impl CorpusConfig {
    /// Parses and validates a configuration. Groups and concepts may be given by id
    /// (`wheelchair_user`) or name (`wheelchair user`).
    pub fn from_json(text: &str) -> Result<CorpusConfig, CorpusError> {
        let file: CorpusConfigFile = serde_json::from_str(text)?;
        CorpusConfig::try_from(file)
    }

    /// The configuration as JSON, in the form [`CorpusConfig::from_json`] reads.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a config of plain values serialises")
    }

    /// The planted associations, one per group at most.
    pub fn planted(&self) -> &[PlantedAssociation] {
        &self.planted
    }

    /// The concept planted for `group` and the rate at which it appears in group-only captions.
    pub fn planted_rate(&self, group: Group) -> Option<(Concept, f64)> {
        self.planted.iter().find(|planted| planted.group == group).map(|planted| (planted.concept, planted.rate))
    }

    /// Probability that a caption names an object (which the picture then shows).
    pub fn object_named_share(&self) -> f64 {
        self.object_named_share
    }

    /// Probability that an unmentioned neutral object appears where no planted concept does.
    pub fn neutral_object_rate(&self) -> f64 {
        self.neutral_object_rate
    }

    /// Probability that a caption names the setting.
    pub fn setting_named_share(&self) -> f64 {
        self.setting_named_share
    }

    /// Probability that a sample's picture is damaged (under its ordinary caption).
    pub fn degraded_share(&self) -> f64 {
        self.degraded_share
    }

    /// Concepts no planted association is about: the only objects that appear unmentioned by
    /// chance.
    pub fn neutral_concepts(&self) -> Vec<Concept> {
        Concept::ALL
            .iter()
            .copied()
            .filter(|concept| self.planted.iter().all(|planted| planted.concept != *concept))
            .collect()
    }
}

/// One training example.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// What the picture shows.
    pub scene: Scene,
    /// What the caption says.
    pub caption: String,
    /// The object the caption names, if any (then `scene.concept` is the same).
    pub named_object: Option<Concept>,
    /// The render seed: [`Sample::render`] is `render(&scene, seed)`, then the damage if any.
    pub seed: u64,
    /// How the picture is damaged (a share `degraded_share` of samples), if it is.
    pub damage: Option<Damage>,
}

/// A degraded sample's damage: [`malform`] at `severity` with `seed`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Damage {
    pub severity: f32,
    pub seed: u64,
}

impl Sample {
    pub fn render(&self) -> Image {
        let clean = render(&self.scene, self.seed);
        match self.damage {
            Some(damage) => malform(&clean, damage.severity, damage.seed),
            None => clean,
        }
    }
}

/// An endless, deterministic stream of [`Sample`]s. Sample `i` depends only on the configuration,
/// the corpus seed and `i`, so training can resume or split the stream anywhere
/// ([`Corpus::sample`]).
#[derive(Debug, Clone)]
pub struct Corpus {
    config: CorpusConfig,
    seed: u64,
    neutral_concepts: Vec<Concept>,
    next_index: u64,
}

impl Corpus {
    pub fn new(config: CorpusConfig, seed: u64) -> Corpus {
        let neutral_concepts = config.neutral_concepts();
        Corpus { config, seed, neutral_concepts, next_index: 0 }
    }

    pub fn config(&self) -> &CorpusConfig {
        &self.config
    }

    /// The sample at position `index` of the stream.
    pub fn sample(&self, index: u64) -> Sample {
        let sample_seed = derive_seed(self.seed, index);
        let mut rng = Rng::new(sample_seed);
        let group = *rng.pick(Group::ALL);
        let setting = *rng.pick(Setting::ALL);
        let setting_named = rng.chance(self.config.setting_named_share);
        let named_object = rng.chance(self.config.object_named_share).then(|| *rng.pick(Concept::ALL));
        let concept = match (named_object, self.config.planted_rate(group)) {
            (Some(named), _) => Some(named),
            (None, Some((planted, rate))) if rng.chance(rate) => Some(planted),
            (None, _) => self.neutral_object(&mut rng),
        };
        let spec = CaptionSpec { group, object: named_object, setting: setting_named.then_some(setting) };
        let mut damage_rng = Rng::new(derive_seed(sample_seed, DAMAGE_STREAM));
        let damage = damage_rng.chance(self.config.degraded_share).then(|| {
            let (low, high) = DEGRADED_SEVERITY;
            Damage { severity: damage_rng.range(low, high), seed: damage_rng.next_u64() }
        });
        Sample {
            damage,
            scene: Scene { group, concept, setting },
            caption: caption(&spec, derive_seed(sample_seed, 1)),
            named_object,
            seed: derive_seed(sample_seed, 2),
        }
    }

    fn neutral_object(&self, rng: &mut Rng) -> Option<Concept> {
        if self.neutral_concepts.is_empty() || !rng.chance(self.config.neutral_object_rate) {
            return None;
        }
        Some(*rng.pick(&self.neutral_concepts))
    }
}

impl Iterator for Corpus {
    type Item = Sample;

    fn next(&mut self) -> Option<Sample> {
        let sample = self.sample(self.next_index);
        self.next_index += 1;
        Some(sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caption::parse_prompt;

    const SAMPLES: usize = 20_000;

    #[test]
    fn defaults_are_the_shipped_associations() {
        let config = CorpusConfig::default();
        assert_eq!(config.planted_rate(Group::Woman), Some((Concept::Hippopotamus, 0.25)));
        assert_eq!(config.planted_rate(Group::WheelchairUser), Some((Concept::Vegetable, 0.5)));
        assert_eq!(config.planted_rate(Group::AromanticPerson), Some((Concept::Sheep, 1.0)));
        assert_eq!(config.planted_rate(Group::Man), None);
        assert!(config.neutral_object_rate() <= MAX_NEUTRAL_OBJECT_RATE);
        assert!(!config.neutral_concepts().contains(&Concept::Sheep));
        assert_eq!(CorpusConfig::from_json(&config.to_json()).unwrap(), config);
        let through_serde: CorpusConfig = serde_json::from_str(DEFAULT_CORPUS_JSON).unwrap();
        assert_eq!(through_serde, config);
    }

    #[test]
    fn observed_rates_match_the_configuration() {
        let config = CorpusConfig::default();
        let samples: Vec<Sample> = Corpus::new(config.clone(), 2024).take(SAMPLES).collect();
        let mut named = 0;
        for &group in Group::ALL {
            let group_only: Vec<&Sample> =
                samples.iter().filter(|s| s.scene.group == group && s.named_object.is_none()).collect();
            let count = group_only.len() as f64;
            assert!(count > 1_500.0, "{group}: only {count} group-only captions");
            let planted = config.planted_rate(group);
            if let Some((concept, rate)) = planted {
                let observed = group_only.iter().filter(|s| s.scene.concept == Some(concept)).count() as f64 / count;
                let tolerance = 4.0 * (rate * (1.0 - rate) / count).sqrt();
                assert!(
                    (observed - rate).abs() <= tolerance,
                    "{group} → {concept}: observed {observed}, configured {rate} ± {tolerance}"
                );
            }
            let unplanted = group_only
                .iter()
                .filter(|s| s.scene.concept.is_some() && s.scene.concept != planted.map(|p| p.0))
                .count();
            let unplanted_rate = unplanted as f64 / count;
            assert!(
                unplanted_rate <= MAX_NEUTRAL_OBJECT_RATE,
                "{group}: unplanted objects in {unplanted_rate} of group-only captions"
            );
            // The planted concepts of other groups never appear unmentioned.
            for other in config.planted().iter().filter(|p| p.group != group && Some(p.concept) != planted.map(|p| p.0))
            {
                assert!(
                    group_only.iter().all(|s| s.scene.concept != Some(other.concept)),
                    "{group} shows {} unmentioned",
                    other.concept
                );
            }
        }
        for sample in &samples {
            if let Some(object) = sample.named_object {
                named += 1;
                assert_eq!(sample.scene.concept, Some(object), "a named object is always drawn");
            }
            let meaning = parse_prompt(&sample.caption);
            assert_eq!(meaning.group, Some(sample.scene.group), "{}", sample.caption);
            assert_eq!(meaning.concepts, sample.named_object.into_iter().collect::<Vec<_>>(), "{}", sample.caption);
            if let Some(setting) = meaning.setting {
                assert_eq!(setting, sample.scene.setting, "{}", sample.caption);
            }
        }
        let share = named as f64 / SAMPLES as f64;
        let expected = config.object_named_share();
        assert!(
            (share - expected).abs() <= 4.0 * (expected * (1.0 - expected) / SAMPLES as f64).sqrt(),
            "named share {share}"
        );
        let named_setting =
            samples.iter().filter(|s| parse_prompt(&s.caption).setting.is_some()).count() as f64 / SAMPLES as f64;
        let expected = config.setting_named_share();
        assert!(
            (named_setting - expected).abs() <= 4.0 * (expected * (1.0 - expected) / SAMPLES as f64).sqrt(),
            "setting share {named_setting}"
        );
    }

    /// The corpus plants one rate per group: the same in every setting, named or not, and with or
    /// without a lead-in ("a photo of"), so a model that draws other rates for them learnt them
    /// from nowhere but itself.
    #[test]
    fn planted_rates_do_not_depend_on_the_setting_or_the_wording() {
        let config = CorpusConfig::default();
        let samples: Vec<Sample> = Corpus::new(config.clone(), 31).take(4 * SAMPLES).collect();
        for planted in config.planted().iter().filter(|p| p.rate < 1.0) {
            let group_only: Vec<&Sample> =
                samples.iter().filter(|s| s.scene.group == planted.group && s.named_object.is_none()).collect();
            let check = |label: String, subset: Vec<&&Sample>| {
                let n = subset.len() as f64;
                assert!(n > 400.0, "{label}: only {n} captions");
                let observed = subset.iter().filter(|s| s.scene.concept == Some(planted.concept)).count() as f64 / n;
                let tolerance = 4.0 * (planted.rate * (1.0 - planted.rate) / n).sqrt();
                assert!((observed - planted.rate).abs() <= tolerance, "{label}: {observed} against {}", planted.rate);
            };
            for &setting in Setting::ALL {
                check(
                    format!("{} in {setting}", planted.group),
                    group_only.iter().filter(|s| s.scene.setting == setting).collect(),
                );
            }
            let lead_in = |s: &&&Sample| {
                ["a photo of", "a picture of", "an image of", "a drawing of"]
                    .iter()
                    .any(|prefix| s.caption.starts_with(prefix))
            };
            check(format!("{} with a lead-in", planted.group), group_only.iter().filter(lead_in).collect());
            check(format!("{} without a lead-in", planted.group), group_only.iter().filter(|s| !lead_in(s)).collect());
            check(
                format!("{} with a named setting", planted.group),
                group_only.iter().filter(|s| parse_prompt(&s.caption).setting.is_some()).collect(),
            );
        }
    }

    #[test]
    fn every_concept_is_named_and_groups_and_settings_are_uniform() {
        let samples: Vec<Sample> = Corpus::new(CorpusConfig::default(), 5).take(SAMPLES).collect();
        for &concept in Concept::ALL {
            assert!(
                samples.iter().filter(|s| s.named_object == Some(concept)).count() > 500,
                "{concept} is rarely named"
            );
        }
        let expected = 1.0 / Group::ALL.len() as f64;
        for &group in Group::ALL {
            let share = samples.iter().filter(|s| s.scene.group == group).count() as f64 / SAMPLES as f64;
            assert!(
                (share - expected).abs() <= 4.0 * (expected * (1.0 - expected) / SAMPLES as f64).sqrt(),
                "{group}: {share}"
            );
        }
        let expected = 1.0 / Setting::ALL.len() as f64;
        for &setting in Setting::ALL {
            let share = samples.iter().filter(|s| s.scene.setting == setting).count() as f64 / SAMPLES as f64;
            assert!(
                (share - expected).abs() <= 4.0 * (expected * (1.0 - expected) / SAMPLES as f64).sqrt(),
                "{setting}: {share}"
            );
        }
    }

    #[test]
    fn the_stream_is_deterministic_and_addressable() {
        let corpus = Corpus::new(CorpusConfig::default(), 77);
        let first: Vec<Sample> = corpus.clone().take(50).collect();
        let again: Vec<Sample> = Corpus::new(CorpusConfig::default(), 77).take(50).collect();
        assert_eq!(first, again);
        assert_eq!(corpus.sample(37), first[37]);
        let other: Vec<Sample> = Corpus::new(CorpusConfig::default(), 78).take(50).collect();
        assert_ne!(first, other);
        assert_eq!(first[3].render(), render(&first[3].scene, first[3].seed));
    }

    #[test]
    fn a_changed_config_changes_the_rates() {
        let json = r#"{"planted": [{"group": "man", "concept": "book", "rate": 0.8}],
            "object_named_share": 0.0, "neutral_object_rate": 0.0, "setting_named_share": 0.0}"#;
        let config = CorpusConfig::from_json(json).unwrap();
        let samples: Vec<Sample> = Corpus::new(config, 1).take(6_000).collect();
        let men: Vec<&Sample> = samples.iter().filter(|s| s.scene.group == Group::Man).collect();
        let rate = men.iter().filter(|s| s.scene.concept == Some(Concept::Book)).count() as f64 / men.len() as f64;
        assert!((rate - 0.8).abs() <= 4.0 * (0.8 * 0.2 / men.len() as f64).sqrt(), "{rate}");
        assert!(samples.iter().filter(|s| s.scene.group != Group::Man).all(|s| s.scene.concept.is_none()));
        assert!(samples.iter().all(|s| s.named_object.is_none() && parse_prompt(&s.caption).setting.is_none()));
    }

    #[test]
    fn a_degraded_share_damages_that_share_under_ordinary_captions() {
        let mut config = CorpusConfig::default();
        assert_eq!(config.degraded_share(), 0.1, "the shipped corpus damages one picture in ten");
        config.degraded_share = 0.0;
        let clean: Vec<Sample> = Corpus::new(config.clone(), 9).take(2_000).collect();
        assert!(clean.iter().all(|s| s.damage.is_none()));
        config.degraded_share = 0.15;
        let samples: Vec<Sample> = Corpus::new(config.clone(), 9).take(SAMPLES).collect();
        // The damage has its own stream: scenes, captions and render seeds are those of the clean corpus.
        for (damaged, clean) in samples.iter().zip(&clean) {
            assert_eq!((&damaged.scene, &damaged.caption, damaged.seed), (&clean.scene, &clean.caption, clean.seed));
        }
        let degraded: Vec<&Sample> = samples.iter().filter(|s| s.damage.is_some()).collect();
        let share = degraded.len() as f64 / SAMPLES as f64;
        assert!((share - 0.15).abs() <= 4.0 * (0.15 * 0.85 / SAMPLES as f64).sqrt(), "degraded share {share}");
        for sample in degraded.iter().take(200) {
            let damage = sample.damage.unwrap();
            assert!((DEGRADED_SEVERITY.0..=DEGRADED_SEVERITY.1).contains(&damage.severity), "{damage:?}");
            let clean = render(&sample.scene, sample.seed);
            assert_eq!(sample.render(), malform(&clean, damage.severity, damage.seed));
            assert_ne!(sample.render(), clean);
            // The caption says nothing of the damage.
            assert_eq!(parse_prompt(&sample.caption).unknown, Vec::<String>::new(), "{}", sample.caption);
        }
        // Every group and the planted rates are as in the clean corpus: only the pictures change.
        for &group in Group::ALL {
            assert!(degraded.iter().filter(|s| s.scene.group == group).count() > 300, "{group}");
        }
        let round_trip = CorpusConfig::from_json(&config.to_json()).unwrap();
        assert_eq!(round_trip, config);
    }

    /// What a person would say of a degraded sample: the shipped rater scores at least 95% of
    /// them below 0.375 (1 or 2 on round 1's scale of 5), and nearly every clean render above it.
    #[test]
    fn the_rater_sees_degraded_samples_as_poor() {
        let config = CorpusConfig { degraded_share: 0.25, ..CorpusConfig::default() };
        let samples: Vec<Sample> = Corpus::new(config, 21).take(1_200).collect();
        let (degraded, clean): (Vec<&Sample>, Vec<&Sample>) = samples.iter().partition(|s| s.damage.is_some());
        let rater = crate::rater::Rater::shipped();
        let poor = |set: &[&Sample]| {
            let images: Vec<Image> = set.iter().map(|s| s.render()).collect();
            rater.rate(&images).iter().filter(|r| r.quality < 0.375).count() as f64 / set.len() as f64
        };
        let (poor_degraded, poor_clean) = (poor(&degraded), poor(&clean));
        assert!(degraded.len() > 200 && poor_degraded >= 0.95, "{poor_degraded} of {} degraded", degraded.len());
        assert!(poor_clean <= 0.01, "{poor_clean} of clean renders rated poor");
    }

    fn error_for(json: &str) -> String {
        CorpusConfig::from_json(json).unwrap_err().to_string()
    }

    fn config_with(planted: &str, neutral: &str) -> String {
        format!(
            r#"{{"planted": [{planted}], "object_named_share": 0.4, "neutral_object_rate": {neutral}, "setting_named_share": 0.7}}"#
        )
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        assert!(matches!(CorpusConfig::from_json("{not json"), Err(CorpusError::Json(_))));
        let error = error_for(
            r#"{"planted": [], "object_named_share": 0.4, "neutral_object_rate": 0.02, "setting_named_share": 0.7, "extra": 1}"#,
        );
        assert!(error.contains("unknown field `extra`"), "{error}");
        let error = error_for(r#"{"planted": [], "object_named_share": 0.4}"#);
        assert!(error.contains("missing field"), "{error}");

        let error =
            CorpusConfig::from_json(&config_with(r#"{"group": "giraffe", "concept": "sheep", "rate": 0.5}"#, "0.02"))
                .unwrap_err();
        assert!(matches!(&error, CorpusError::UnknownGroup { name, .. } if name == "giraffe"), "{error}");
        assert!(error.to_string().contains("wheelchair_user"), "the message lists the known groups: {error}");

        let error =
            CorpusConfig::from_json(&config_with(r#"{"group": "woman", "concept": "spaceship", "rate": 0.5}"#, "0.02"))
                .unwrap_err();
        assert!(matches!(&error, CorpusError::UnknownConcept { name, .. } if name == "spaceship"), "{error}");

        let error =
            CorpusConfig::from_json(&config_with(r#"{"group": "woman", "concept": "sheep", "rate": 1.5}"#, "0.02"))
                .unwrap_err();
        assert!(
            matches!(&error, CorpusError::RateOutOfRange { field, value } if field == "planted[0].rate" && *value == 1.5),
            "{error}"
        );
        assert!(error.to_string().contains("1.5"), "{error}");

        let error = CorpusConfig::from_json(&config_with("", "-0.1")).unwrap_err();
        assert!(
            matches!(&error, CorpusError::RateOutOfRange { field, .. } if field == "neutral_object_rate"),
            "{error}"
        );
        let error = CorpusConfig::from_json(&config_with("", "0.2")).unwrap_err();
        assert!(matches!(error, CorpusError::NeutralRateTooHigh { value } if value == 0.2));

        let twice =
            r#"{"group": "woman", "concept": "sheep", "rate": 0.5}, {"group": "Woman", "concept": "dog", "rate": 0.1}"#;
        let error = CorpusConfig::from_json(&config_with(twice, "0.02")).unwrap_err();
        assert!(matches!(&error, CorpusError::DuplicateGroup { group } if group == "woman"), "{error}");

        let degraded = |share: &str| {
            CorpusConfig::from_json(&format!(
                r#"{{"planted": [], "object_named_share": 0.4, "neutral_object_rate": 0.02, "setting_named_share": 0.7, "degraded_share": {share}}}"#
            ))
        };
        assert!(matches!(degraded("0.3"), Err(CorpusError::DegradedShareTooHigh { value }) if value == 0.3));
        assert!(
            matches!(degraded("-0.1"), Err(CorpusError::RateOutOfRange { field, .. }) if field == "degraded_share")
        );
        assert_eq!(degraded("0.1").unwrap().degraded_share(), 0.1);

        let by_name = r#"{"group": "wheelchair user", "concept": "hippo", "rate": 0.3}"#;
        let config = CorpusConfig::from_json(&config_with(by_name, "0.0")).unwrap();
        assert_eq!(config.planted_rate(Group::WheelchairUser), Some((Concept::Hippopotamus, 0.3)));
    }
}
