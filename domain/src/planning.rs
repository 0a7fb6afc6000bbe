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
}
