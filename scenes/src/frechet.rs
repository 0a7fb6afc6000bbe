//! The Fréchet distance between two sets of feature vectors (as in FID, with the rater's
//! features in place of Inception's): the 2-Wasserstein distance between the Gaussians fitted to
//! each set,
//!
//! ```text
//! d² = ‖μ_a − μ_b‖² + tr(Σ_a) + tr(Σ_b) − 2·tr( (√Σ_a · Σ_b · √Σ_a)^½ )
//! ```
//!
//! Everything is computed in f64. The matrix square roots come from a symmetric eigen-
//! decomposition (cyclic Jacobi), which is exact for the symmetric positive semi-definite
//! matrices involved; eigenvalues that rounding makes slightly negative are clamped to zero.

/// Mean and covariance of a set of feature vectors, to compare one set against many.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStatistics {
    /// The number of vectors.
    pub count: usize,
    /// The mean vector.
    pub mean: Vec<f64>,
    /// The covariance (unbiased, divided by n − 1), row-major `width × width`.
    pub covariance: Vec<f64>,
}

impl FeatureStatistics {
    /// The statistics of `vectors`.
    ///
    /// # Panics
    /// With fewer than two vectors, or vectors of different widths.
    pub fn of(vectors: &[Vec<f32>]) -> FeatureStatistics {
        assert!(vectors.len() >= 2, "a covariance needs at least two vectors");
        let width = vectors[0].len();
        assert!(vectors.iter().all(|v| v.len() == width), "every feature vector must have the same width");
        let count = vectors.len();
        let mut mean = vec![0.0; width];
        for vector in vectors {
            for (m, v) in mean.iter_mut().zip(vector) {
                *m += f64::from(*v);
            }
        }
        mean.iter_mut().for_each(|m| *m /= count as f64);
        let mut covariance = vec![0.0; width * width];
        let mut centred = vec![0.0; width];
        for vector in vectors {
            for ((c, v), m) in centred.iter_mut().zip(vector).zip(&mean) {
                *c = f64::from(*v) - m;
            }
            for i in 0..width {
                let row = &mut covariance[i * width..(i + 1) * width];
                for j in i..width {
                    row[j] += centred[i] * centred[j];
                }
            }
        }
        for i in 0..width {
            for j in i..width {
                let value = covariance[i * width + j] / (count - 1) as f64;
                covariance[i * width + j] = value;
                covariance[j * width + i] = value;
            }
        }
        FeatureStatistics { count, mean, covariance }
    }

    /// The width of the vectors.
    pub fn width(&self) -> usize {
        self.mean.len()
    }

    /// The Fréchet distance to `other` (see the module doc).
    ///
    /// # Panics
    /// If the widths differ.
    pub fn distance(&self, other: &FeatureStatistics) -> f64 {
        let width = self.width();
        assert_eq!(width, other.width(), "feature widths differ");
        let mean_term: f64 = self.mean.iter().zip(&other.mean).map(|(a, b)| (a - b).powi(2)).sum();
        let trace = |m: &[f64]| (0..width).map(|i| m[i * width + i]).sum::<f64>();
        let root_a = symmetric_square_root(&self.covariance, width);
        let product = multiply(&multiply(&root_a, &other.covariance, width), &root_a, width);
        let (eigenvalues, _) = symmetric_eigen(&symmetrised(&product, width), width);
        let cross: f64 = eigenvalues.iter().map(|l| l.max(0.0).sqrt()).sum();
        // Rounding can leave a tiny negative where the sets are identical.
        (mean_term + trace(&self.covariance) + trace(&other.covariance) - 2.0 * cross).max(0.0)
    }
}

/// The Fréchet distance between the Gaussians fitted to two sets of feature vectors: 0 for
/// identical sets, ‖shift‖² for a set and a shifted copy of it.
///
/// # Panics
/// If either set has fewer than two vectors or the vectors' widths differ.
pub fn frechet_distance(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    FeatureStatistics::of(a).distance(&FeatureStatistics::of(b))
}

/// `a · b` for `n × n` row-major matrices.
fn multiply(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let a_ik = a[i * n + k];
            if a_ik == 0.0 {
                continue;
            }
            let (row, b_row) = (&mut out[i * n..(i + 1) * n], &b[k * n..(k + 1) * n]);
            for (o, b) in row.iter_mut().zip(b_row) {
                *o += a_ik * b;
            }
        }
    }
    out
}

/// (M + Mᵀ)/2: removes the asymmetry rounding leaves in a product that is symmetric in exact
/// arithmetic.
fn symmetrised(m: &[f64], n: usize) -> Vec<f64> {
    let mut out = m.to_vec();
    for i in 0..n {
        for j in 0..i {
            let mean = 0.5 * (m[i * n + j] + m[j * n + i]);
            out[i * n + j] = mean;
            out[j * n + i] = mean;
        }
    }
    out
}

/// The principal square root of a symmetric positive semi-definite matrix: V·diag(√λ)·Vᵀ with
/// negative eigenvalues (rounding) clamped to zero.
fn symmetric_square_root(m: &[f64], n: usize) -> Vec<f64> {
    let (eigenvalues, vectors) = symmetric_eigen(m, n);
    let roots: Vec<f64> = eigenvalues.iter().map(|l| l.max(0.0).sqrt()).collect();
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = (0..n).map(|k| vectors[i * n + k] * roots[k] * vectors[j * n + k]).sum();
        }
    }
    out
}

/// Eigenvalues and eigenvectors of a symmetric `n × n` matrix by the cyclic Jacobi method:
/// plane rotations zero each off-diagonal element in turn until the off-diagonal mass is
/// negligible. Returns the eigenvalues (unsorted) and V (row-major; column k is the unit
/// eigenvector of eigenvalue k), so that M = V·diag(λ)·Vᵀ.
fn symmetric_eigen(m: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = m.to_vec();
    let mut v = vec![0.0; n * n];
    (0..n).for_each(|i| v[i * n + i] = 1.0);
    let total: f64 = a.iter().map(|x| x * x).sum();
    for _sweep in 0..100 {
        let off_diagonal: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |j| *j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum();
        if off_diagonal <= 1e-30 * total || off_diagonal == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                // The rotation angle that zeroes a[p][q] (Numerical Recipes' stable form).
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// `count` vectors of `width` correlated Gaussian values (each mixes its neighbours).
    fn gaussian_set(count: usize, width: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = Rng::new(seed);
        (0..count)
            .map(|_| {
                let raw: Vec<f32> = (0..width + 1).map(|_| rng.normal()).collect();
                (0..width).map(|i| raw[i] + 0.5 * raw[i + 1] + 0.1 * i as f32).collect()
            })
            .collect()
    }

    #[test]
    fn jacobi_reconstructs_a_symmetric_matrix_with_orthonormal_vectors() {
        let n = 7;
        let mut rng = Rng::new(1);
        let raw: Vec<f64> = (0..n * n).map(|_| f64::from(rng.normal())).collect();
        let m = symmetrised(&raw, n);
        let (values, vectors) = symmetric_eigen(&m, n);
        for i in 0..n {
            for j in 0..n {
                let rebuilt: f64 = (0..n).map(|k| vectors[i * n + k] * values[k] * vectors[j * n + k]).sum();
                assert!((rebuilt - m[i * n + j]).abs() < 1e-12, "M[{i}][{j}]");
                let dot: f64 = (0..n).map(|k| vectors[k * n + i] * vectors[k * n + j]).sum();
                assert!((dot - (i == j) as u8 as f64).abs() < 1e-12, "VᵀV[{i}][{j}]");
            }
        }
        let root = symmetric_square_root(&multiply(&m, &m, n), n);
        // √(M²) = |M|: same eigenvectors, absolute eigenvalues; its square is M².
        let squared = multiply(&root, &root, n);
        let m2 = multiply(&m, &m, n);
        assert!(squared.iter().zip(&m2).all(|(a, b)| (a - b).abs() < 1e-10));
    }

    #[test]
    fn identical_sets_are_at_distance_zero() {
        let set = gaussian_set(300, 12, 2);
        let distance = frechet_distance(&set, &set);
        assert!(distance.abs() < 1e-9, "{distance}");
    }

    #[test]
    fn a_shifted_set_is_at_the_squared_shift() {
        let set = gaussian_set(300, 12, 3);
        let shift: Vec<f32> = (0..12).map(|i| 0.3 * i as f32 - 1.0).collect();
        let shifted: Vec<Vec<f32>> = set.iter().map(|v| v.iter().zip(&shift).map(|(a, s)| a + s).collect()).collect();
        let expected: f64 = shift.iter().map(|s| f64::from(*s).powi(2)).sum();
        let distance = frechet_distance(&set, &shifted);
        assert!((distance - expected).abs() < 1e-6 * expected, "{distance} vs {expected}");
    }

    #[test]
    fn diagonal_covariances_match_the_closed_form() {
        // Diagonal Σ: d² = ‖μa − μb‖² + Σ (√σa − √σb)². Sets built with exact statistics:
        // every coordinate takes ±s around its mean in a balanced pattern.
        let build = |means: [f32; 3], spreads: [f32; 3]| -> Vec<Vec<f32>> {
            (0..8)
                .map(|k| (0..3).map(|i| means[i] + if (k >> i) & 1 == 1 { spreads[i] } else { -spreads[i] }).collect())
                .collect()
        };
        let a = build([0.0, 1.0, 2.0], [1.0, 2.0, 0.5]);
        let b = build([1.0, 1.0, 0.0], [3.0, 1.0, 0.5]);
        // With 8 vectors and n − 1 = 7: variance = 8·s²/7.
        let variance = |s: f64| 8.0 * s * s / 7.0;
        let mut expected = 1.0 + 0.0 + 4.0;
        for (sa, sb) in [(1.0, 3.0), (2.0, 1.0), (0.5, 0.5)] {
            expected += (variance(sa).sqrt() - variance(sb).sqrt()).powi(2);
        }
        let distance = frechet_distance(&a, &b);
        assert!((distance - expected).abs() < 1e-9, "{distance} vs {expected}");
    }

    #[test]
    fn the_distance_is_symmetric_and_grows_with_the_difference() {
        let a = gaussian_set(200, 10, 4);
        let b = gaussian_set(200, 10, 5);
        let scaled: Vec<Vec<f32>> = b.iter().map(|v| v.iter().map(|x| 2.0 * x).collect()).collect();
        let (ab, ba) = (frechet_distance(&a, &b), frechet_distance(&b, &a));
        assert!((ab - ba).abs() < 1e-9 * (1.0 + ab), "{ab} vs {ba}");
        assert!(frechet_distance(&a, &scaled) > 5.0 * ab, "two samples of one law are closer than a rescaled one");
        let statistics = FeatureStatistics::of(&a);
        assert_eq!(statistics.distance(&FeatureStatistics::of(&b)), ab);
    }
}
