//! Aggregating yes/no answers from several annotators into one label per item, weighing each
//! annotator by how reliable their answers turn out to be: the Dawid–Skene model (Dawid &
//! Skene, 1979, "Maximum likelihood estimation of observer error-rates using the EM algorithm"),
//! restricted to binary questions such as "is the concept present?".
//!
//! The model: every item has a hidden true answer, `true` with prior probability π. Annotator
//! `j` answers "yes" to a true item with probability sensitivity_j and "no" to a false item with
//! probability specificity_j, independently of the other annotators. Expectation–maximisation
//! alternates between the posterior P(true) of every item given the current annotator
//! parameters (E-step) and the parameters given those posteriors (M-step).
//!
//! Reliability is learnt from annotators agreeing and disagreeing on shared items. Where there
//! is nobody to compare with (a round with a single annotator, or annotators whose items nobody
//! else answered) any reliability explains the answers equally well: the smoothed estimate
//! drifts to chance (accuracy ½) and those items' posteriors to about ½, so their labels say
//! nothing; use the answers themselves ([`majority_vote`]) there.
//!
//! Pure and deterministic: no randomness; items, annotators and observations are visited in
//! index and input order, so the same input always gives the same output, bit for bit.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// One answer: annotator `annotator` said `answer` (yes = `true`) about item `item`. Indices
/// are dense, `0..items` and `0..annotators`. An annotator answering the same item twice counts
/// as two independent answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    pub item: usize,
    pub annotator: usize,
    pub answer: bool,
}

/// How EM runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DawidSkeneOptions {
    /// The most EM iterations (each one an M-step followed by an E-step); at least 1.
    pub max_iterations: usize,
    /// EM stops once an iteration raises the (smoothed) log-likelihood by less than this.
    pub tolerance: f64,
    /// Pseudo-count added to each cell of every estimated proportion: to the "yes" and the "no"
    /// of each annotator's true-item and false-item answers, and to the true and false items of
    /// the prior π. Equivalent to a symmetric Beta(1 + s, 1 + s) prior on each probability, with
    /// the estimates its maximum a posteriori. Must be positive, so that no annotator, however
    /// few or perfect their answers, gets a probability of exactly 0 or 1.
    pub smoothing: f64,
}

impl Default for DawidSkeneOptions {
    /// 100 iterations, tolerance 1e-9, one pseudo-count per cell.
    fn default() -> Self {
        DawidSkeneOptions { max_iterations: 100, tolerance: 1e-9, smoothing: 1.0 }
    }
}

/// An annotator's estimated reliability.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AnnotatorQuality {
    /// P(answers yes | the item is truly yes).
    pub sensitivity: f64,
    /// P(answers no | the item is truly no).
    pub specificity: f64,
    /// P(answer is right) on an item drawn from the prior: π·sensitivity + (1 − π)·specificity.
    pub accuracy: f64,
    /// How many answers the estimate rests on. With none it is the smoothed default, 0.5.
    pub answers: usize,
}

/// What Dawid–Skene concluded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DawidSkene {
    /// P(true) of each item given all answers. An item nobody answered has the prior π.
    pub posteriors: Vec<f64>,
    /// `posterior > 0.5`; an exact tie of 0.5 is `false`.
    pub labels: Vec<bool>,
    /// Per annotator, by index.
    pub annotators: Vec<AnnotatorQuality>,
    /// π, the estimated share of items that are truly yes.
    pub prior: f64,
    /// EM iterations run.
    pub iterations: usize,
    /// Log-likelihood of the answers under the final parameters (natural log, items nobody
    /// answered contribute nothing), plus the log-density of the smoothing prior on those
    /// parameters (up to a constant). This is the quantity EM maximises and never lowers.
    pub log_likelihood: f64,
    /// [`DawidSkene::log_likelihood`] after each iteration, in order; the last is the final one.
    pub log_likelihood_trace: Vec<f64>,
    /// Whether the last iteration improved the log-likelihood by less than the tolerance (false
    /// when EM stopped at `max_iterations` first).
    pub converged: bool,
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum AggregationError {
    #[error("observation {index} names item {item}, but there are only {items} items")]
    ItemOutOfRange { index: usize, item: usize, items: usize },
    #[error("observation {index} names annotator {annotator}, but there are only {annotators} annotators")]
    AnnotatorOutOfRange { index: usize, annotator: usize, annotators: usize },
    #[error("invalid options: {0}")]
    InvalidOptions(&'static str),
}

/// The plain majority vote of each item: yes when more than half its answers are yes (a tie
/// and an item nobody answered are `false`). Out-of-range observations are an error.
pub fn majority_vote(
    items: usize,
    annotators: usize,
    observations: &[Observation],
) -> Result<Vec<bool>, AggregationError> {
    check_indices(items, annotators, observations)?;
    let (yes, total) = tally(items, observations);
    Ok(yes.iter().zip(&total).map(|(&y, &t)| 2 * y > t).collect())
}

/// Runs Dawid–Skene EM on binary answers about `items` items from `annotators` annotators.
///
/// Starts from the soft majority vote (each item's share of yes answers as its P(true)), then
/// alternates M- and E-steps until an iteration improves the smoothed log-likelihood by less
/// than `options.tolerance`, or `options.max_iterations` have run. Estimates are smoothed by
/// `options.smoothing` pseudo-counts per cell (see [`DawidSkeneOptions::smoothing`]); products
/// of probabilities are summed as logarithms.
pub fn dawid_skene(
    items: usize,
    annotators: usize,
    observations: &[Observation],
    options: &DawidSkeneOptions,
) -> Result<DawidSkene, AggregationError> {
    if options.max_iterations == 0 {
        return Err(AggregationError::InvalidOptions("max_iterations must be at least 1"));
    }
    if !(options.tolerance >= 0.0 && options.tolerance.is_finite()) {
        return Err(AggregationError::InvalidOptions("tolerance must be finite and not negative"));
    }
    if !(options.smoothing > 0.0 && options.smoothing.is_finite()) {
        return Err(AggregationError::InvalidOptions("smoothing must be finite and positive"));
    }
    check_indices(items, annotators, observations)?;

    let s = options.smoothing;
    let (yes, total) = tally(items, observations);
    let rated: Vec<bool> = total.iter().map(|&t| t > 0).collect();
    // Soft majority vote; unrated items are left out of every M-step, so their value is unused.
    let mut posteriors: Vec<f64> =
        yes.iter().zip(&total).map(|(&y, &t)| if t > 0 { y as f64 / t as f64 } else { 0.5 }).collect();

    let mut params = Params { prior: 0.5, sensitivity: vec![0.5; annotators], specificity: vec![0.5; annotators] };
    let mut trace: Vec<f64> = Vec::new();
    let mut converged = false;
    while trace.len() < options.max_iterations {
        params = m_step(&posteriors, &rated, annotators, observations, s);
        let data_log_likelihood = e_step(&params, &rated, observations, &mut posteriors);
        let objective = data_log_likelihood + params.log_prior_density(s);
        let improvement = trace.last().map(|&previous| objective - previous);
        trace.push(objective);
        if improvement.is_some_and(|gain| gain < options.tolerance) {
            converged = true;
            break;
        }
    }

    for (posterior, &was_rated) in posteriors.iter_mut().zip(&rated) {
        if !was_rated {
            *posterior = params.prior;
        }
    }
    let mut answers = vec![0usize; annotators];
    for observation in observations {
        answers[observation.annotator] += 1;
    }
    let pi = params.prior;
    let annotator_quality = (0..annotators)
        .map(|j| {
            let (sensitivity, specificity) = (params.sensitivity[j], params.specificity[j]);
            AnnotatorQuality {
                sensitivity,
                specificity,
                accuracy: pi * sensitivity + (1.0 - pi) * specificity,
                answers: answers[j],
            }
        })
        .collect();
    Ok(DawidSkene {
        labels: posteriors.iter().map(|&p| p > 0.5).collect(),
        posteriors,
        annotators: annotator_quality,
        prior: pi,
        iterations: trace.len(),
        log_likelihood: *trace.last().expect("at least one iteration runs"),
        log_likelihood_trace: trace,
        converged,
    })
}

struct Params {
    prior: f64,
    sensitivity: Vec<f64>,
    specificity: Vec<f64>,
}

impl Params {
    /// log of the Beta(1 + s, 1 + s) densities of every parameter, without their constant.
    fn log_prior_density(&self, s: f64) -> f64 {
        let beta = |p: f64| s * (p.ln() + (1.0 - p).ln());
        beta(self.prior) + self.sensitivity.iter().chain(&self.specificity).map(|&p| beta(p)).sum::<f64>()
    }
}

fn check_indices(items: usize, annotators: usize, observations: &[Observation]) -> Result<(), AggregationError> {
    for (index, o) in observations.iter().enumerate() {
        if o.item >= items {
            return Err(AggregationError::ItemOutOfRange { index, item: o.item, items });
        }
        if o.annotator >= annotators {
            return Err(AggregationError::AnnotatorOutOfRange { index, annotator: o.annotator, annotators });
        }
    }
    Ok(())
}

/// Yes answers and all answers per item.
fn tally(items: usize, observations: &[Observation]) -> (Vec<usize>, Vec<usize>) {
    let mut yes = vec![0usize; items];
    let mut total = vec![0usize; items];
    for o in observations {
        total[o.item] += 1;
        yes[o.item] += usize::from(o.answer);
    }
    (yes, total)
}

/// Smoothed maximum a posteriori parameters given each item's P(true).
fn m_step(posteriors: &[f64], rated: &[bool], annotators: usize, observations: &[Observation], s: f64) -> Params {
    let (mut true_mass, mut rated_items) = (0.0, 0.0);
    for (&q, &was_rated) in posteriors.iter().zip(rated) {
        if was_rated {
            true_mass += q;
            rated_items += 1.0;
        }
    }
    // Per annotator: expected true items seen, yes answers to them; false items, no answers.
    let mut seen_true = vec![0.0; annotators];
    let mut yes_true = vec![0.0; annotators];
    let mut seen_false = vec![0.0; annotators];
    let mut no_false = vec![0.0; annotators];
    for o in observations {
        let q = posteriors[o.item];
        seen_true[o.annotator] += q;
        seen_false[o.annotator] += 1.0 - q;
        if o.answer {
            yes_true[o.annotator] += q;
        } else {
            no_false[o.annotator] += 1.0 - q;
        }
    }
    let smoothed = |hits: f64, seen: f64| (hits + s) / (seen + 2.0 * s);
    Params {
        prior: smoothed(true_mass, rated_items),
        sensitivity: (0..annotators).map(|j| smoothed(yes_true[j], seen_true[j])).collect(),
        specificity: (0..annotators).map(|j| smoothed(no_false[j], seen_false[j])).collect(),
    }
}

/// Sets each rated item's P(true) given the parameters; returns the log-likelihood of the answers.
fn e_step(params: &Params, rated: &[bool], observations: &[Observation], posteriors: &mut [f64]) -> f64 {
    // log P(true, answers) and log P(false, answers) per item.
    let mut log_true = vec![params.prior.ln(); posteriors.len()];
    let mut log_false = vec![(1.0 - params.prior).ln(); posteriors.len()];
    for o in observations {
        let (sensitivity, specificity) = (params.sensitivity[o.annotator], params.specificity[o.annotator]);
        if o.answer {
            log_true[o.item] += sensitivity.ln();
            log_false[o.item] += (1.0 - specificity).ln();
        } else {
            log_true[o.item] += (1.0 - sensitivity).ln();
            log_false[o.item] += specificity.ln();
        }
    }
    let mut log_likelihood = 0.0;
    for i in 0..posteriors.len() {
        if !rated[i] {
            continue;
        }
        let (a, b) = (log_true[i], log_false[i]);
        let high = a.max(b);
        log_likelihood += high + ((a - high).exp() + (b - high).exp()).ln();
        posteriors[i] = 1.0 / (1.0 + (b - a).exp());
    }
    log_likelihood
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(item: usize, annotator: usize, answer: bool) -> Observation {
        Observation { item, annotator, answer }
    }

    /// SplitMix64: a small deterministic generator for the synthetic histories.
    struct SplitMix64(u64);

    impl SplitMix64 {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        /// Uniform in [0, 1) from the top 53 bits.
        fn unit(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }
    }

    const PLANTED: [f64; 6] = [0.95, 0.9, 0.85, 0.8, 0.7, 0.5];
    const CARELESS: usize = 5;

    /// `items` items, about 30 % truly yes, each answered by 3 or 4 distinct random annotators who
    /// are right with their planted accuracy (the careless one flips a fair coin): ~3.5 answers an item.
    fn synthetic_history(seed: u64, items: usize) -> (Vec<bool>, Vec<Observation>) {
        let mut rng = SplitMix64(seed);
        let truth: Vec<bool> = (0..items).map(|_| rng.unit() < 0.3).collect();
        let mut observations = Vec::new();
        for (item, &is_true) in truth.iter().enumerate() {
            let raters = 3 + rng.below(2);
            let mut chosen: Vec<usize> = Vec::new();
            while chosen.len() < raters {
                let annotator = rng.below(PLANTED.len());
                if !chosen.contains(&annotator) {
                    chosen.push(annotator);
                }
            }
            for annotator in chosen {
                let right = rng.unit() < PLANTED[annotator];
                observations.push(obs(item, annotator, if right { is_true } else { !is_true }));
            }
        }
        (truth, observations)
    }

    fn agreement(labels: &[bool], truth: &[bool]) -> f64 {
        labels.iter().zip(truth).filter(|(a, b)| a == b).count() as f64 / truth.len() as f64
    }

    struct Recovery {
        result: DawidSkene,
        /// How often each annotator was in fact right in the sample: planted accuracy plus noise.
        realised: Vec<f64>,
        /// Share of items labelled right by Dawid–Skene and by the majority vote.
        ds: f64,
        majority: f64,
        true_share: f64,
        report: String,
    }

    fn recovery(seed: u64, items: usize) -> Recovery {
        let (truth, observations) = synthetic_history(seed, items);
        let result = dawid_skene(truth.len(), PLANTED.len(), &observations, &DawidSkeneOptions::default()).unwrap();
        assert!(result.converged, "no convergence in {} iterations", result.iterations);
        let mut right = [0usize; PLANTED.len()];
        for o in &observations {
            right[o.annotator] += usize::from(o.answer == truth[o.item]);
        }
        let realised: Vec<f64> =
            right.iter().zip(&result.annotators).map(|(&r, quality)| r as f64 / quality.answers as f64).collect();
        let mut report = format!("{items} items, {} answers\n", observations.len());
        for (j, (quality, planted)) in result.annotators.iter().zip(PLANTED).enumerate() {
            report += &format!(
                "annotator {j}: planted {planted:.2}, realised {:.4}, estimated {:.4} (sens {:.4}, spec {:.4}, {} answers)\n",
                realised[j], quality.accuracy, quality.sensitivity, quality.specificity, quality.answers
            );
        }
        let ds = agreement(&result.labels, &truth);
        let majority = agreement(&majority_vote(truth.len(), PLANTED.len(), &observations).unwrap(), &truth);
        let true_share = truth.iter().filter(|&&t| t).count() as f64 / truth.len() as f64;
        report += &format!(
            "labels right: Dawid–Skene {ds:.4}, majority {majority:.4}; prior {:.4} vs true share {true_share:.4}; {} iterations",
            result.prior, result.iterations
        );
        println!("{report}");
        Recovery { result, realised, ds, majority, true_share, report }
    }

    fn careless_is_lowest(result: &DawidSkene) -> bool {
        let lowest = (0..PLANTED.len())
            .min_by(|&a, &b| result.annotators[a].accuracy.total_cmp(&result.annotators[b].accuracy))
            .unwrap();
        lowest == CARELESS
    }

    /// Tolerances: 0.05 of the planted accuracy, 0.04 of the realised one, 0.04 for π. With ~1,170
    /// answers per annotator the sampling noise alone has a standard deviation of at most
    /// √(¼/1170) ≈ 0.015, so 0.05 leaves room for it plus the estimation error (the smoothing pulls
    /// towards ½: the best annotator comes out about 0.005 below their realised accuracy on
    /// average). Over seeds 0–199 of this generator the largest deviations were 0.045 (planted),
    /// 0.032 (realised) and 0.031 (π). At 400 items (~250 answers per annotator, noise SD ≈ 0.03)
    /// 0.05 of the planted accuracy fails for about half the seeds, so the round-sized test below
    /// allows 0.1 and relies on the ordering and the labels.
    #[test]
    fn recovers_planted_annotator_accuracies_and_beats_the_majority_vote() {
        let Recovery { result, realised, ds, majority, true_share, report } = recovery(20_240_611, 2_000);
        for (j, quality) in result.annotators.iter().enumerate() {
            assert!(
                (quality.accuracy - PLANTED[j]).abs() <= 0.05,
                "annotator {j}: more than 0.05 from planted\n{report}"
            );
            assert!(
                (quality.accuracy - realised[j]).abs() <= 0.04,
                "annotator {j}: more than 0.04 from realised\n{report}"
            );
        }
        assert!(careless_is_lowest(&result), "the careless annotator is not the lowest\n{report}");
        assert!(ds >= majority, "Dawid–Skene {ds} is below the majority vote {majority}\n{report}");
        assert!((result.prior - true_share).abs() <= 0.04, "prior more than 0.04 from the true share\n{report}");
    }

    #[test]
    fn on_a_round_sized_history_the_careless_annotator_is_found_and_labels_beat_the_majority() {
        let Recovery { result, ds, majority, report, .. } = recovery(20_240_611, 400);
        assert!(careless_is_lowest(&result), "the careless annotator is not the lowest\n{report}");
        assert!(ds >= majority, "Dawid–Skene {ds} is below the majority vote {majority}\n{report}");
        for (j, quality) in result.annotators.iter().enumerate() {
            assert!(
                (quality.accuracy - PLANTED[j]).abs() <= 0.1,
                "annotator {j}: more than 0.1 from planted\n{report}"
            );
        }
    }

    #[test]
    fn the_same_history_gives_the_same_result() {
        let (truth, observations) = synthetic_history(7, 400);
        let options = DawidSkeneOptions::default();
        let first = dawid_skene(truth.len(), PLANTED.len(), &observations, &options).unwrap();
        let second = dawid_skene(truth.len(), PLANTED.len(), &observations, &options).unwrap();
        assert_eq!(first, second);
    }

    #[test]
    fn one_step_from_the_majority_vote_matches_the_hand_computation() {
        // One annotator: yes to item 0, no to item 1. Majority start q = (1, 0); the M-step with one
        // pseudo-count per cell gives π = (1 + 1)/(2 + 2) = 1/2, sensitivity = (1 + 1)/(1 + 2) = 2/3,
        // specificity = 2/3; the E-step gives item 0 P(true) = (½·⅔)/(½·⅔ + ½·⅓) = 2/3, item 1 1/3.
        // Log-likelihood: ln(½·⅔ + ½·⅓) twice = 2 ln ½; prior density: 1·(ln ½ + ln ½) + 2·(ln ⅔ + ln ⅓).
        let observations = [obs(0, 0, true), obs(1, 0, false)];
        let options = DawidSkeneOptions { max_iterations: 1, ..DawidSkeneOptions::default() };
        let result = dawid_skene(2, 1, &observations, &options).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(result.prior, 0.5));
        assert!(close(result.annotators[0].sensitivity, 2.0 / 3.0));
        assert!(close(result.annotators[0].specificity, 2.0 / 3.0));
        assert!(close(result.annotators[0].accuracy, 2.0 / 3.0));
        assert!(
            close(result.posteriors[0], 2.0 / 3.0) && close(result.posteriors[1], 1.0 / 3.0),
            "{:?}",
            result.posteriors
        );
        assert_eq!(result.labels, [true, false]);
        let half: f64 = 0.5;
        let expected = 2.0 * half.ln() + 2.0 * half.ln() + 2.0 * ((2.0f64 / 3.0).ln() + (1.0f64 / 3.0).ln());
        assert!(close(result.log_likelihood, expected), "{} vs {expected}", result.log_likelihood);
        assert_eq!((result.iterations, result.converged), (1, false));
    }

    #[test]
    fn unanimous_answers_land_on_their_side_and_perfect_annotators_are_followed() {
        // Three annotators who always agree, on ten items: yes, no, no, yes, no, …
        let answers: Vec<bool> = (0..10).map(|i| i % 3 == 0).collect();
        let observations: Vec<Observation> =
            (0..10).flat_map(|i| (0..3).map(move |j| (i, j))).map(|(i, j)| obs(i, j, answers[i])).collect();
        let result = dawid_skene(10, 3, &observations, &DawidSkeneOptions::default()).unwrap();
        assert_eq!(result.labels, answers);
        for (posterior, &answer) in result.posteriors.iter().zip(&answers) {
            if answer {
                assert!(*posterior > 0.9, "{posterior}");
            } else {
                assert!(*posterior < 0.1, "{posterior}");
            }
        }
        for quality in &result.annotators {
            // Smoothed: high, but never exactly 1.
            assert!(quality.sensitivity > 0.75 && quality.sensitivity < 1.0, "{quality:?}");
            assert!(quality.specificity > 0.75 && quality.specificity < 1.0, "{quality:?}");
        }
        assert!(result.converged);
    }

    #[test]
    fn a_reliable_minority_outvotes_an_unreliable_majority_once_known() {
        // Annotators 0 and 1 are right on every item; 2, 3 and 4 answer "yes" to everything. On the
        // items where the reliable pair says no, the majority says yes and Dawid–Skene says no.
        let truth: Vec<bool> = (0..40).map(|i| i % 2 == 0).collect();
        let mut observations = Vec::new();
        for (i, &t) in truth.iter().enumerate() {
            observations.push(obs(i, 0, t));
            observations.push(obs(i, 1, t));
            for j in 2..5 {
                observations.push(obs(i, j, true));
            }
        }
        let result = dawid_skene(truth.len(), 5, &observations, &DawidSkeneOptions::default()).unwrap();
        assert_eq!(result.labels, truth);
        assert!(majority_vote(truth.len(), 5, &observations).unwrap().iter().all(|&label| label));
        assert!(result.annotators[2].specificity < 0.1, "{:?}", result.annotators[2]);
    }

    #[test]
    fn no_observations_keep_the_prior_and_the_defaults() {
        let result = dawid_skene(3, 2, &[], &DawidSkeneOptions::default()).unwrap();
        assert_eq!(result.posteriors, [0.5; 3]);
        assert_eq!(result.labels, [false; 3], "a 0.5 tie is false");
        assert_eq!(result.prior, 0.5);
        for quality in &result.annotators {
            assert_eq!(
                (quality.sensitivity, quality.specificity, quality.accuracy, quality.answers),
                (0.5, 0.5, 0.5, 0)
            );
        }
        assert!(result.converged && result.log_likelihood.is_finite());

        let empty = dawid_skene(0, 0, &[], &DawidSkeneOptions::default()).unwrap();
        assert!(empty.posteriors.is_empty() && empty.annotators.is_empty() && empty.converged);
    }

    #[test]
    fn a_single_annotator_cannot_be_assessed_and_falls_to_chance() {
        // With nobody to agree or disagree with, a lone annotator's answers are explained equally
        // well by any reliability: the smoothing pulls the estimate to chance and every posterior
        // to about ½, with the yes-answered items never below the no-answered ones.
        let answers = [true, false, false, true, true];
        let observations: Vec<Observation> = answers.iter().enumerate().map(|(i, &a)| obs(i, 0, a)).collect();
        let result = dawid_skene(answers.len(), 1, &observations, &DawidSkeneOptions::default()).unwrap();
        assert!(result.converged && result.log_likelihood.is_finite());
        let quality = result.annotators[0];
        assert_eq!(quality.answers, 5);
        assert!((quality.accuracy - 0.5).abs() < 0.01, "{quality:?}");
        assert!(quality.sensitivity + quality.specificity >= 1.0, "{quality:?}");
        for (i, &yes) in answers.iter().enumerate() {
            assert!((result.posteriors[i] - 0.5).abs() < 0.01, "{:?}", result.posteriors);
            for (k, &other) in answers.iter().enumerate() {
                if yes && !other {
                    assert!(result.posteriors[i] >= result.posteriors[k], "{:?}", result.posteriors);
                }
            }
        }
        // What to use instead: the answers themselves.
        assert_eq!(majority_vote(answers.len(), 1, &observations).unwrap(), answers);
    }

    #[test]
    fn an_item_nobody_rated_keeps_the_prior_and_an_idle_annotator_the_default() {
        // Items 0–3 rated by annotators 0 and 1; item 4 by nobody; annotator 2 answers nothing.
        let observations = [
            obs(0, 0, true),
            obs(0, 1, true),
            obs(1, 0, true),
            obs(1, 1, true),
            obs(2, 0, true),
            obs(2, 1, true),
            obs(3, 0, false),
            obs(3, 1, false),
        ];
        let result = dawid_skene(5, 3, &observations, &DawidSkeneOptions::default()).unwrap();
        assert_eq!(result.posteriors[4], result.prior);
        assert!(result.prior > 0.5 && result.prior < 1.0, "three of four rated items are yes: {}", result.prior);
        assert!(result.labels[4], "the prior leans yes");
        assert_eq!(&result.labels[..4], [true, true, true, false]);
        let idle = result.annotators[2];
        assert_eq!((idle.sensitivity, idle.specificity, idle.answers), (0.5, 0.5, 0));
    }

    #[test]
    fn out_of_range_indices_and_bad_options_are_errors() {
        let options = DawidSkeneOptions::default();
        assert_eq!(
            dawid_skene(2, 2, &[obs(0, 0, true), obs(2, 0, true)], &options),
            Err(AggregationError::ItemOutOfRange { index: 1, item: 2, items: 2 })
        );
        assert_eq!(
            dawid_skene(2, 2, &[obs(0, 2, true)], &options),
            Err(AggregationError::AnnotatorOutOfRange { index: 0, annotator: 2, annotators: 2 })
        );
        for bad in [
            DawidSkeneOptions { max_iterations: 0, ..options },
            DawidSkeneOptions { smoothing: 0.0, ..options },
            DawidSkeneOptions { smoothing: f64::NAN, ..options },
            DawidSkeneOptions { tolerance: -1.0, ..options },
        ] {
            assert!(matches!(dawid_skene(1, 1, &[], &bad), Err(AggregationError::InvalidOptions(_))), "{bad:?}");
        }
    }

    #[test]
    fn the_log_likelihood_never_decreases() {
        for seed in [1, 2, 3, 20_240_611] {
            let (truth, observations) = synthetic_history(seed, 400);
            let options = DawidSkeneOptions { max_iterations: 200, tolerance: 0.0, smoothing: 1.0 };
            let result = dawid_skene(truth.len(), PLANTED.len(), &observations, &options).unwrap();
            let trace = &result.log_likelihood_trace;
            assert!(trace.len() >= 3, "seed {seed}: {trace:?}");
            assert_eq!(trace.len(), result.iterations);
            for (step, pair) in trace.windows(2).enumerate() {
                assert!(
                    pair[1] >= pair[0] - 1e-9,
                    "seed {seed}: fell at iteration {}: {} → {}",
                    step + 2,
                    pair[0],
                    pair[1]
                );
            }
            assert!(trace[trace.len() - 1] > trace[0], "seed {seed}: EM did not improve on the majority start");
            // A run capped early reproduces the first values of the trace exactly.
            let capped = DawidSkeneOptions { max_iterations: 3, ..options };
            let short = dawid_skene(truth.len(), PLANTED.len(), &observations, &capped).unwrap();
            assert_eq!(short.log_likelihood_trace[..], trace[..3]);
        }
    }
}
