//! How many probe images an association needs, planned before generating them.
//!
//! Round 2 measures how often the concept shows up in an association's probe images, before and
//! after fine-tuning, as a rate with a Wilson 95 % interval: the range of true rates the images
//! are consistent with. Few images give wide intervals; these functions say how many images
//! make the interval narrow enough for a given claim.

/// The z value of a two-sided 95 % interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// The Wilson score interval of a rate: `successes` of `n` images showed the concept; `z` sets
/// the confidence (use [`Z95`] for 95 %). Returns `(low, high)`, within `[0, 1]`; with no images
/// at all nothing is known, `(0, 1)`. More successes than images count as `n`.
pub fn wilson_interval(successes: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let images = n as f64;
    let rate = successes.min(n) as f64 / images;
    let z2 = z * z;
    let shrink = 1.0 + z2 / images;
    let centre = (rate + z2 / (2.0 * images)) / shrink;
    let half_width = z * (rate * (1.0 - rate) / images + z2 / (4.0 * images * images)).sqrt() / shrink;
    ((centre - half_width).max(0.0), (centre + half_width).min(1.0))
}

/// Beyond this many images the counts stop being exact integers in an `f64`.
const EXACT_LIMIT: u64 = 1 << 53;

/// "How many images, none of them showing the concept, does it take to say the concept's rate
/// is at most `target` (with 95 % confidence)?"
///
/// The smallest n such that, when 0 of n images show the concept, the upper end of the Wilson
/// 95 % interval is at most `target`. That upper end is z²/(n + z²), so n is the first whole
/// number at or above z²·(1 − target)/target: 189 images for 2 %, 381 for 1 %. If even one image
/// shows the concept, more are needed. None when `target` is not strictly between 0 and 1 (or so
/// small that the answer is beyond 2⁵³ images).
pub fn images_for_upper_bound(target: f64) -> Option<u64> {
    if !(target > 0.0 && target < 1.0) {
        return None;
    }
    let upper = |n: u64| wilson_interval(0, n, Z95).1;
    let estimate = (Z95 * Z95 * (1.0 - target) / target).ceil();
    if estimate >= EXACT_LIMIT as f64 {
        return None;
    }
    // The closed form, corrected for rounding in either direction by the interval itself.
    let mut n = (estimate as u64).max(1);
    while n > 1 && upper(n - 1) <= target {
        n -= 1;
    }
    while upper(n) > target {
        n += 1;
    }
    Some(n)
}

/// The most images [`images_for_separation`] considers.
pub const MAX_SEPARATION_IMAGES: u64 = 1_000_000;

/// The Wilson 95 % intervals of `a` and `b` successes of `n` images do not overlap: one ends
/// strictly below where the other begins.
pub fn intervals_separate(a: u64, b: u64, n: u64) -> bool {
    let (a_low, a_high) = wilson_interval(a, n, Z95);
    let (b_low, b_high) = wilson_interval(b, n, Z95);
    a_high < b_low || b_high < a_low
}

/// "If the concept shows up in `baseline_rate` of the images before fine-tuning and in
/// `after_rate` after, how many images (the same number before and after) does it take for the
/// two 95 % intervals not to overlap, so that the change is clear from the measurement?"
///
/// The smallest n such that the Wilson 95 % intervals of round(baseline_rate·n) of n and
/// round(after_rate·n) of n images do not overlap (halves round away from zero; touching ends
/// count as overlapping). Because counts are whole images, an n a little above the answer can
/// occasionally fall back to overlapping; the answer is the least number that can show the
/// change, and a margin on top is wise. The closer the two rates, the more images it takes.
/// None when the rates are equal, either is outside [0, 1] (or not a number), or no n up to
/// [`MAX_SEPARATION_IMAGES`] separates them.
pub fn images_for_separation(baseline_rate: f64, after_rate: f64) -> Option<u64> {
    let valid = |rate: f64| (0.0..=1.0).contains(&rate);
    if !valid(baseline_rate) || !valid(after_rate) || baseline_rate == after_rate {
        return None;
    }
    let count = |rate: f64, n: u64| (rate * n as f64).round() as u64;
    (1..=MAX_SEPARATION_IMAGES).find(|&n| intervals_separate(count(baseline_rate, n), count(after_rate, n), n))
}

/// A difference between two estimates with its 95 % interval: `estimate` is the first minus the
/// second.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Difference {
    pub estimate: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// The difference of two independent rates, `a_successes / a_n − b_successes / b_n`, with
/// Newcombe's hybrid score interval (his method 10, 1998): each rate's Wilson interval at `z`,
/// combined as `d − √((p₁ − l₁)² + (u₂ − p₂)²)` to `d + √((u₁ − p₁)² + (p₂ − l₂)²)`. It keeps to
/// [−1, 1], stays sensible at 0 or n successes (where the textbook Wald interval collapses to a
/// point) and, like the Wilson interval it is made of, holds its coverage at small n. With no
/// images on a side nothing is known of that rate: its Wilson interval is (0, 1).
pub fn rate_difference(a_successes: u64, a_n: u64, b_successes: u64, b_n: u64, z: f64) -> Difference {
    let rate = |successes: u64, n: u64| if n == 0 { 0.0 } else { successes.min(n) as f64 / n as f64 };
    let (p1, p2) = (rate(a_successes, a_n), rate(b_successes, b_n));
    let ((l1, u1), (l2, u2)) = (wilson_interval(a_successes, a_n, z), wilson_interval(b_successes, b_n, z));
    let estimate = p1 - p2;
    Difference {
        estimate,
        ci_low: (estimate - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt()).max(-1.0),
        ci_high: (estimate + ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt()).min(1.0),
    }
}

/// The two-sided 97.5 % quantile of Student's t with `df` degrees of freedom (what a 95 %
/// interval uses), by the Cornish–Fisher expansion around the normal quantile to the fourth
/// order in 1/df: within 1e-5 of the exact value from 10 degrees of freedom on, 3e-4 at 5 and
/// 4e-3 at 3; the normal quantile for infinite df.
pub fn student_t_975(df: f64) -> f64 {
    let z = Z95;
    if !df.is_finite() {
        return z;
    }
    let g1 = (z.powi(3) + z) / 4.0;
    let g2 = (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / 96.0;
    let g3 = (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z) / 384.0;
    let g4 = (79.0 * z.powi(9) + 776.0 * z.powi(7) + 1482.0 * z.powi(5) - 1920.0 * z.powi(3) - 945.0 * z) / 92160.0;
    z + g1 / df + g2 / df.powi(2) + g3 / df.powi(3) + g4 / df.powi(4)
}

/// The difference of the means of two independent samples, `mean(a) − mean(b)`, with Welch's
/// 95 % interval (unequal variances, Welch–Satterthwaite degrees of freedom). `None` unless each
/// sample has at least two values. Two samples without any spread give the point itself.
pub fn mean_difference(a: &[f64], b: &[f64]) -> Option<Difference> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let moments = |values: &[f64]| {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (n, mean, variance / n)
    };
    let ((na, mean_a, va), (nb, mean_b, vb)) = (moments(a), moments(b));
    let estimate = mean_a - mean_b;
    let se2 = va + vb;
    if se2 == 0.0 {
        return Some(Difference { estimate, ci_low: estimate, ci_high: estimate });
    }
    let df = se2 * se2 / (va * va / (na - 1.0) + vb * vb / (nb - 1.0));
    let half = student_t_975(df) * se2.sqrt();
    Some(Difference { estimate, ci_low: estimate - half, ci_high: estimate + half })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The interval in its other textbook form, (k + z²/2 ± z·√(k(n − k)/n + z²/4)) / (n + z²),
    /// written independently of the implementation.
    fn textbook(k: f64, n: f64) -> (f64, f64) {
        let z = 1.959963984540054_f64;
        let z2 = z * z;
        let centre = k + z2 / 2.0;
        let spread = z * (k * (n - k) / n + z2 / 4.0).sqrt();
        (((centre - spread) / (n + z2)).max(0.0), ((centre + spread) / (n + z2)).min(1.0))
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn wilson_matches_the_textbook_form() {
        for (k, n) in [(0u64, 10u64), (5, 10), (10, 10), (1, 100), (25, 100), (0, 189), (3, 7)] {
            let (low, high) = wilson_interval(k, n, Z95);
            let (expected_low, expected_high) = textbook(k as f64, n as f64);
            assert!(
                close(low, expected_low) && close(high, expected_high),
                "{k}/{n}: ({low}, {high}) vs ({expected_low}, {expected_high})"
            );
        }
        // Hand-checked digits: 0 of 10 → high z²/(10 + z²) = 3.841459/13.841459 = 0.277533;
        // 5 of 10 → 0.5 ± 0.5·√(10·z² + z⁴)/(10 + z²)… = (0.236593, 0.763407).
        let (low, high) = wilson_interval(0, 10, Z95);
        assert!(low == 0.0 && (high - 0.277533).abs() < 1e-6, "{high}");
        let (low, high) = wilson_interval(5, 10, Z95);
        assert!((low - 0.236593).abs() < 1e-6 && (high - 0.763407).abs() < 1e-6, "({low}, {high})");
        assert_eq!(wilson_interval(0, 0, Z95), (0.0, 1.0));
        assert_eq!(wilson_interval(12, 10, Z95), wilson_interval(10, 10, Z95));
    }

    #[test]
    fn upper_bound_images_straddle_the_target() {
        for target in [0.5, 0.1, 0.05, 0.02, 0.01, 0.001] {
            let n = images_for_upper_bound(target).unwrap();
            assert!(wilson_interval(0, n, Z95).1 <= target, "{target}: {n}");
            assert!(n == 1 || wilson_interval(0, n - 1, Z95).1 > target, "{target}: {n}");
        }
        // z²·49 = 188.23…, so 189 images for 2 %.
        assert_eq!(images_for_upper_bound(0.02), Some(189));
        assert_eq!(images_for_upper_bound(0.01), Some(381));
        assert_eq!(images_for_upper_bound(0.9999), Some(1));
        for bad in [0.0, 1.0, -0.1, 1.5, f64::NAN, 1e-300] {
            assert_eq!(images_for_upper_bound(bad), None, "{bad}");
        }
    }

    #[test]
    fn separation_images_are_the_first_that_separate() {
        let counts = |rate: f64, n: u64| (rate * n as f64).round() as u64;
        for (baseline, after) in [(0.5, 0.02), (0.5, 0.3), (0.2, 0.1), (0.0, 1.0), (0.02, 0.5), (0.9, 0.6)] {
            let n = images_for_separation(baseline, after).unwrap();
            assert!(intervals_separate(counts(baseline, n), counts(after, n), n), "{baseline} → {after}: {n}");
            assert!(
                n == 1 || !intervals_separate(counts(baseline, n - 1), counts(after, n - 1), n - 1),
                "{baseline} → {after}: {} already separates",
                n - 1
            );
            assert_eq!(images_for_separation(after, baseline), Some(n), "symmetric");
        }
        // 0 of 4 reaches up to z²/(4 + z²) = 0.49, 4 of 4 down to 0.51; 3 images still overlap.
        assert_eq!(images_for_separation(0.0, 1.0), Some(4));
    }

    #[test]
    fn a_bigger_change_needs_fewer_images() {
        let needed: Vec<u64> =
            [0.45, 0.4, 0.3, 0.2, 0.1, 0.02].iter().map(|&after| images_for_separation(0.5, after).unwrap()).collect();
        assert!(needed.windows(2).all(|pair| pair[0] > pair[1]), "{needed:?}");
        println!("0.5 → 0.45, 0.4, 0.3, 0.2, 0.1, 0.02: {needed:?} images");
    }

    #[test]
    fn separation_rejects_equal_and_invalid_rates() {
        assert_eq!(images_for_separation(0.3, 0.3), None);
        assert_eq!(images_for_separation(-0.1, 0.3), None);
        assert_eq!(images_for_separation(0.3, 1.1), None);
        assert_eq!(images_for_separation(f64::NAN, 0.3), None);
        // Too close to tell apart within a million images.
        assert_eq!(images_for_separation(0.5, 0.5001), None);
    }

    #[test]
    fn rate_differences_match_newcombes_published_intervals() {
        // Newcombe (1998), Table II, method 10, to the four decimals printed there.
        for ((a, an, b, bn), (low, high)) in [
            ((56, 70, 48, 80), (0.0524, 0.3339)),
            ((9, 10, 3, 10), (0.1705, 0.8090)),
            ((6, 7, 2, 7), (0.0582, 0.8062)),
            ((5, 56, 0, 29), (-0.0381, 0.1926)),
        ] {
            let d = rate_difference(a, an, b, bn, Z95);
            assert!((d.estimate - (a as f64 / an as f64 - b as f64 / bn as f64)).abs() < 1e-12);
            assert!((d.ci_low - low).abs() < 5e-5 && (d.ci_high - high).abs() < 5e-5, "{a}/{an} − {b}/{bn}: {d:?}");
        }
        // Zero against zero still has width; all against none stays within [−1, 1].
        let none = rate_difference(0, 48, 0, 48, Z95);
        assert!(none.estimate == 0.0 && none.ci_low < -0.05 && none.ci_high > 0.05, "{none:?}");
        let all = rate_difference(20, 20, 0, 20, Z95);
        assert!(all.ci_high == 1.0 && all.ci_low > 0.7, "{all:?}");
        // Swapping the sides mirrors the interval.
        let (ab, ba) = (rate_difference(7, 48, 2, 50, Z95), rate_difference(2, 50, 7, 48, Z95));
        assert!((ab.ci_low + ba.ci_high).abs() < 1e-12 && (ab.ci_high + ba.ci_low).abs() < 1e-12);
    }

    #[test]
    fn t_quantiles_match_the_tables() {
        // Two-sided 95 % critical values of Student's t, from the standard tables.
        for (df, exact, tolerance) in
            [(5.0, 2.570582, 3e-4), (10.0, 2.228139, 1e-5), (30.0, 2.042272, 1e-5), (100.0, 1.983972, 1e-5)]
        {
            let t = student_t_975(df);
            assert!((t - exact).abs() < tolerance, "df {df}: {t} vs {exact}");
        }
        assert_eq!(student_t_975(f64::INFINITY), Z95);
    }

    #[test]
    fn mean_differences_follow_welchs_interval() {
        // Hand-computed: a = 1..=5 (mean 3, variance 2.5), b = 2, 4, 6, 8 (mean 5, variance 20/3).
        // se² = 2.5/5 + (20/3)/4 = 2.1667; df = se⁴ / ((0.5)²/4 + (1.6667)²/3) = 4.6944/0.9884 = 4.7497.
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        let b = [2.0, 4.0, 6.0, 8.0];
        let d = mean_difference(&a, &b).unwrap();
        let se = (2.5f64 / 5.0 + 20.0 / 3.0 / 4.0).sqrt();
        let df = se.powi(4) / (0.5f64.powi(2) / 4.0 + (20.0f64 / 12.0).powi(2) / 3.0);
        assert!((df - 4.7497).abs() < 1e-3, "{df}");
        let half = student_t_975(df) * se;
        assert!((d.estimate + 2.0).abs() < 1e-12);
        assert!((d.ci_low - (-2.0 - half)).abs() < 1e-12 && (d.ci_high - (-2.0 + half)).abs() < 1e-12, "{d:?}");
        // t(4.75) ≈ 2.60, so the half-width is about 3.83.
        assert!((half - 3.83).abs() < 0.02, "{half}");
        // Symmetric under swapping, a point without spread, nothing from one value.
        let swapped = mean_difference(&b, &a).unwrap();
        assert!((swapped.ci_low + d.ci_high).abs() < 1e-12);
        assert_eq!(
            mean_difference(&[0.9, 0.9], &[0.5, 0.5, 0.5]),
            Some(Difference { estimate: 0.9 - 0.5, ci_low: 0.9 - 0.5, ci_high: 0.9 - 0.5 })
        );
        assert_eq!(mean_difference(&[1.0], &b), None);
    }
}
