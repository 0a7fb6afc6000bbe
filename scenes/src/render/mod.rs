//! The renderer: [`render`] draws a [`Scene`] as a 32×32 [`Image`], deterministically from a seed.
//!
//! A key design decision: every group and every concept differs from all the others by
//! silhouette *and* colour family (see the tables in `people` and `objects`), with flat colours
//! and bold shapes, so that a small rater can tell them apart at 32×32 and a small diffusion
//! model can learn to draw them. The seed varies position, size, pose, facing and shades, never
//! the cues that mark a group or a concept.
//!
//! Each part of a render draws from its own random stream of the seed, so the same seed gives the
//! same background, person and placement with or without an object: a scene and its "object
//! removed" twin differ only where the object is.

mod canvas;
mod objects;
mod people;
mod settings;

use crate::image::Image;
use crate::rng::Rng;
use crate::world::Scene;
use canvas::Canvas;
use people::{PERSON_HALF_WIDTH, Stance};

/// Random streams of one render's seed.
const BACKGROUND_STREAM: u64 = 1;
const LAYOUT_STREAM: u64 = 2;
const PERSON_STREAM: u64 = 3;
const OBJECT_STREAM: u64 = 4;

/// Draws `scene`. The same `(scene, seed)` always gives the same bytes.
///
/// The person stands on the left and the object, if any, on the right, so that they rarely
/// overlap; whichever stands further back is drawn first.
pub fn render(scene: &Scene, seed: u64) -> Image {
    let mut canvas = Canvas::new();
    settings::draw_setting(&mut canvas, scene.setting, &mut Rng::stream(seed, BACKGROUND_STREAM));

    let mut layout = Rng::stream(seed, LAYOUT_STREAM);
    // The person stands on the left facing right, the object on the right facing left, each
    // at one of a few whole-pixel positions: enough to make no two renders alike, few enough
    // for a small DiT to learn every figure in an hour of CPU training.
    let person_x = layout.int_between(8, 10) as f32 + 0.5;
    let stance = Stance {
        centre_x: person_x.clamp(PERSON_HALF_WIDTH, 32.0 - PERSON_HALF_WIDTH),
        feet_y: layout.int_between(29, 30) as f32 + 0.5,
        facing: 1.0,
    };
    let mut person_rng = Rng::stream(seed, PERSON_STREAM);

    let Some(concept) = scene.concept else {
        people::draw_person(&mut canvas, &mut person_rng, scene.group, stance);
        return canvas.into_image();
    };
    let half_width = objects::object_half_width(concept);
    let object_x = layout.int_between(21, 23) as f32 + 0.5;
    let object_x = object_x.clamp(half_width + 0.3, 31.7 - half_width);
    let object_ground = layout.int_between(29, 30) as f32 + 0.5;
    let object_facing = -1.0;
    let mut object_rng = Rng::stream(seed, OBJECT_STREAM);
    let mut draw_object = |canvas: &mut Canvas| {
        objects::draw_object(canvas, &mut object_rng, concept, object_x, object_ground, object_facing);
    };
    if object_ground < stance.feet_y {
        draw_object(&mut canvas);
        people::draw_person(&mut canvas, &mut person_rng, scene.group, stance);
    } else {
        people::draw_person(&mut canvas, &mut person_rng, scene.group, stance);
        draw_object(&mut canvas);
    }
    canvas.into_image()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{CHANNELS, IMAGE_SIZE};
    use crate::world::{Concept, Group, Setting};
    use std::collections::HashSet;

    #[test]
    fn same_seed_same_bytes() {
        for (index, scene) in Scene::all().iter().enumerate().step_by(7) {
            let seed = index as u64 * 31 + 5;
            assert_eq!(render(scene, seed), render(scene, seed), "{scene:?}");
        }
    }

    #[test]
    fn a_thousand_seeds_give_a_thousand_different_images() {
        let scene = Scene { group: Group::Woman, concept: Some(Concept::Hippopotamus), setting: Setting::Beach };
        let images: HashSet<Image> = (0..1_000).map(|seed| render(&scene, seed)).collect();
        assert_eq!(images.len(), 1_000);
        let scene = Scene { group: Group::Man, concept: None, setting: Setting::Kitchen };
        let images: HashSet<Image> = (0..1_000).map(|seed| render(&scene, seed + 50_000)).collect();
        assert_eq!(images.len(), 1_000);
    }

    #[test]
    fn every_combination_renders_with_its_parts_visible() {
        for (index, scene) in Scene::all().iter().enumerate() {
            for seed in [index as u64, index as u64 + 10_000] {
                let image = render(scene, seed);
                let background = background_only(scene.setting, seed);
                let changed = changed_pixels(&image, &background).len();
                assert!(changed >= 35, "{scene:?} seed {seed}: only {changed} pixels differ from the bare background");
                if scene.concept.is_some() {
                    let without = render(&Scene { concept: None, ..*scene }, seed);
                    let object_pixels = changed_pixels(&image, &without).len();
                    assert!(
                        object_pixels >= 20,
                        "{scene:?} seed {seed}: the object covers only {object_pixels} pixels"
                    );
                    assert!(object_pixels <= 140, "{scene:?} seed {seed}: the object covers {object_pixels} pixels");
                }
            }
        }
    }

    /// How `concept` stands out from what it covers in `setting`, over `seeds` renders and their
    /// object-removed twins: the share of its pixels within `CAMOUFLAGE_DISTANCE` (Euclidean, RGB)
    /// of the pixel they cover, and the distance between its mean colour and the mean colour of
    /// what it covers (what is left of it when the picture is blurred, as a denoiser sees it at
    /// high noise).
    fn camouflage(concept: Concept, setting: Setting, seeds: std::ops::Range<u64>) -> (f64, f64) {
        const CAMOUFLAGE_DISTANCE: f64 = 48.0;
        let distance = |a: [f64; 3], b: [f64; 3]| a.iter().zip(b).map(|(p, q)| (p - q).powi(2)).sum::<f64>().sqrt();
        let (mut hidden, mut total) = (0usize, 0usize);
        let (mut object, mut covered) = ([0.0f64; 3], [0.0f64; 3]);
        for seed in seeds {
            let scene = Scene { group: Group::Man, concept: Some(concept), setting };
            let (with, without) = (render(&scene, seed), render(&Scene { concept: None, ..scene }, seed));
            for (a, b) in changed_pixel_pairs(&with, &without) {
                let (a, b) = (a.map(f64::from), b.map(f64::from));
                total += 1;
                hidden += usize::from(distance(a, b) < CAMOUFLAGE_DISTANCE);
                (0..3).for_each(|c| (object[c], covered[c]) = (object[c] + a[c], covered[c] + b[c]));
            }
        }
        (hidden as f64 / total as f64, distance(object, covered) / total as f64)
    }

    /// The concepts the default corpus plants at a partial rate stand out from every setting's
    /// ground, pixel by pixel and on average. A denoiser decides early, at high noise, what the
    /// picture holds, when little more than each region's mean colour is left: where an object's
    /// mean colour is that of the ground it covers, the model cannot tell early whether it drew
    /// one, and it finishes half-drawn blobs into the concept. Measured on the woman's
    /// hippopotamus (planted at 25%; `scenes/README.md`): a mean-colour distance of 116–127 (beach,
    /// park) drew it in 17–22% of pictures, 73 (street) in 15–23%, the kitchen's white and
    /// lavender-grey tiles (60, and 30% of its pixels within reach of the tile they cover) in 36%,
    /// white and navy tiles (24) in 54%; the kitchen's plain wooden floor (89) in 22%.
    #[test]
    fn partially_planted_concepts_stand_out_from_every_setting() {
        let partial: Vec<Concept> = crate::corpus::CorpusConfig::default()
            .planted()
            .iter()
            .filter(|planted| planted.rate < 1.0)
            .map(|planted| planted.concept)
            .collect();
        assert!(partial.contains(&Concept::Hippopotamus) && partial.contains(&Concept::Vegetable), "{partial:?}");
        for concept in partial {
            for &setting in Setting::ALL {
                let (hidden, mean_distance) = camouflage(concept, setting, 0..64);
                assert!(
                    hidden <= 0.1,
                    "{concept} in the {setting}: {hidden:.3} of its pixels look like what they cover"
                );
                assert!(
                    mean_distance >= 70.0,
                    "{concept} in the {setting}: its mean colour is {mean_distance:.0} from what it covers"
                );
            }
        }
    }

    /// The background a render of `setting` with `seed` is drawn on.
    fn background_only(setting: Setting, seed: u64) -> Image {
        let mut canvas = Canvas::new();
        settings::draw_setting(&mut canvas, setting, &mut Rng::stream(seed, BACKGROUND_STREAM));
        canvas.into_image()
    }

    fn changed_pixels(image: &Image, reference: &Image) -> Vec<[u8; 3]> {
        changed_pixel_pairs(image, reference).into_iter().map(|(pixel, _)| pixel).collect()
    }

    /// Every pixel where `image` differs from `reference`, with the reference's pixel there.
    fn changed_pixel_pairs(image: &Image, reference: &Image) -> Vec<([u8; 3], [u8; 3])> {
        let mut pairs = Vec::new();
        for y in 0..IMAGE_SIZE {
            for x in 0..IMAGE_SIZE {
                if image.pixel(x, y) != reference.pixel(x, y) {
                    pairs.push((image.pixel(x, y), reference.pixel(x, y)));
                }
            }
        }
        pairs
    }

    /// A normalised colour histogram: 8 levels per channel, 512 bins.
    fn histogram(pixels: impl IntoIterator<Item = [u8; 3]>) -> Vec<f32> {
        let mut bins = vec![0.0f32; 512];
        let mut total = 0.0f32;
        for pixel in pixels {
            bins[(pixel[0] as usize / 32) * 64 + (pixel[1] as usize / 32) * 8 + pixel[2] as usize / 32] += 1.0;
            total += 1.0;
        }
        // Square roots (Hellinger distance) keep large shared areas such as skin from drowning
        // out the smaller areas that mark a class.
        bins.iter_mut().for_each(|bin| *bin = (*bin / total.max(1.0)).sqrt());
        bins
    }

    fn whole_image_pixels(image: &Image) -> Vec<[u8; 3]> {
        image.as_rgb().chunks_exact(CHANNELS).map(|p| [p[0], p[1], p[2]]).collect()
    }

    /// Per-class recall of a nearest-centroid classifier trained on `train` (feature vectors per
    /// class) and scored on `test`.
    fn nearest_centroid_recalls(train: &[Vec<Vec<f32>>], test: &[Vec<Vec<f32>>]) -> Vec<f32> {
        let centroids: Vec<Vec<f32>> = train
            .iter()
            .map(|examples| {
                let mut centroid = vec![0.0; examples[0].len()];
                for example in examples {
                    centroid.iter_mut().zip(example).for_each(|(c, v)| *c += v / examples.len() as f32);
                }
                centroid
            })
            .collect();
        let distance =
            |centroid: &[f32], example: &[f32]| centroid.iter().zip(example).map(|(c, v)| (c - v).powi(2)).sum::<f32>();
        test.iter()
            .enumerate()
            .map(|(class, examples)| {
                let right = examples
                    .iter()
                    .filter(|example| {
                        let nearest = (0..centroids.len())
                            .min_by(|&a, &b| {
                                distance(&centroids[a], example).total_cmp(&distance(&centroids[b], example))
                            })
                            .unwrap();
                        nearest == class
                    })
                    .count();
                right as f32 / examples.len() as f32
            })
            .collect()
    }

    /// Fails unless the classifier is right `overall` of the time and, for every class, at least
    /// `per_class` of the time. Two classes drawn alike would each be recalled about half the time.
    fn assert_separable(what: &str, recalls: &[f32], overall: f32, per_class: f32) {
        let mean = recalls.iter().sum::<f32>() / recalls.len() as f32;
        assert!(mean >= overall, "{what}: accuracy {mean} below {overall}; recalls per class {recalls:?}");
        let worst = recalls.iter().copied().fold(1.0, f32::min);
        assert!(worst >= per_class, "{what}: a class is recalled only {worst} of the time; recalls {recalls:?}");
    }

    fn random_scene(seed: u64) -> (Setting, Option<Concept>) {
        let mut rng = Rng::new(seed ^ 0x5EED);
        let setting = *rng.pick(Setting::ALL);
        let concept = rng.chance(0.5).then(|| *rng.pick(Concept::ALL));
        (setting, concept)
    }

    /// Catches two groups drawn alike: the colours of the person alone (what differs from the
    /// bare background) must tell the groups apart almost always, and the colours of the whole
    /// picture nearly as often.
    #[test]
    fn groups_are_told_apart_by_a_simple_colour_classifier() {
        let features = |first_seed: u64, whole_image: bool| -> Vec<Vec<Vec<f32>>> {
            Group::ALL
                .iter()
                .map(|&group| {
                    (first_seed..first_seed + 200)
                        .map(|seed| {
                            let (setting, concept) = random_scene(seed);
                            let concept = if whole_image { concept } else { None };
                            let image = render(&Scene { group, concept, setting }, seed);
                            if whole_image {
                                histogram(whole_image_pixels(&image))
                            } else {
                                histogram(changed_pixels(&image, &background_only(setting, seed)))
                            }
                        })
                        .collect()
                })
                .collect()
        };
        let person_alone = nearest_centroid_recalls(&features(0, false), &features(1_000, false));
        assert_separable("groups, person alone", &person_alone, 0.95, 0.8);
        let whole = nearest_centroid_recalls(&features(0, true), &features(1_000, true));
        assert_separable("groups, whole picture", &whole, 0.9, 0.8);
    }

    /// The same check for objects: what an object adds to a picture must tell the concepts apart.
    #[test]
    fn concepts_are_told_apart_by_a_simple_colour_classifier() {
        let features = |first_seed: u64| -> Vec<Vec<Vec<f32>>> {
            Concept::ALL
                .iter()
                .map(|&concept| {
                    (first_seed..first_seed + 200)
                        .map(|seed| {
                            let (setting, _) = random_scene(seed);
                            let group = Group::ALL[seed as usize % Group::ALL.len()];
                            let scene = Scene { group, concept: Some(concept), setting };
                            let without = render(&Scene { concept: None, ..scene }, seed);
                            histogram(changed_pixels(&render(&scene, seed), &without))
                        })
                        .collect()
                })
                .collect()
        };
        let recalls = nearest_centroid_recalls(&features(0), &features(1_000));
        assert_separable("concepts, object alone", &recalls, 0.95, 0.8);
    }

    #[test]
    fn an_object_changes_only_its_own_part_of_the_picture() {
        // The same seed draws the same background, person and placement with or without an object.
        let mut unchanged_share = 0.0;
        for seed in 0..200 {
            let scene = Scene {
                group: Group::ALL[seed % 6],
                concept: Some(Concept::ALL[seed % 8]),
                setting: Setting::ALL[seed % 4],
            };
            let with = render(&scene, seed as u64);
            let without = render(&Scene { concept: None, ..scene }, seed as u64);
            unchanged_share += 1.0 - changed_pixels(&with, &without).len() as f32 / (IMAGE_SIZE * IMAGE_SIZE) as f32;
        }
        let unchanged_share = unchanged_share / 200.0;
        assert!(unchanged_share > 0.85, "only {unchanged_share} of the picture is kept");
    }
}
