//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use gpu::GpuContext;
use gpu::rng::SplitMix64;

/// The wgpu context every GPU test uses. Fails (never skips) without an adapter.
pub fn context() -> Arc<GpuContext> {
    static CONTEXT: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CONTEXT
        .get_or_init(|| match GpuContext::new() {
            Ok(context) => {
                eprintln!("wgpu adapter: {}", context.describe());
                Arc::new(context)
            }
            Err(error) => panic!(
                "these tests need a wgpu adapter and found none: {error}\n\
                 install Mesa's software Vulkan driver: apt-get install mesa-vulkan-drivers"
            ),
        })
        .clone()
}

/// Test inputs from the workspace's SplitMix64 ([`gpu::rng`]).
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(SplitMix64::new(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    pub fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.uniform()).collect()
    }

    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }
}

/// Asserts |actual − expected| ≤ rel · (|expected| + mean|expected|) elementwise: a relative error
/// measured against the value itself or, where cancellation makes it tiny, against the typical
/// magnitude of the output.
pub fn assert_close(actual: &[f32], expected: &[f32], rel: f32, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    let mean = expected.iter().map(|v| v.abs() as f64).sum::<f64>() / expected.len().max(1) as f64;
    let mean = mean as f32;
    for (index, (a, e)) in actual.iter().zip(expected).enumerate() {
        let bound = rel * (e.abs() + mean) + f32::MIN_POSITIVE;
        assert!(
            a.is_finite() == e.is_finite() && ((a - e).abs() <= bound || a == e),
            "{what}: element {index}: got {a}, expected {e} (bound {bound})"
        );
    }
}

/// A tiny SD pipeline's fixture folder (`tests/fixtures/sd/<variant>`).
pub fn sd_fixture(variant: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd").join(variant)
}

/// max |actual − expected| / max |expected| (relative to the reference's largest value: single
/// elements can be too small for an element-wise relative bound in f32).
pub fn relative_error(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len(), "lengths differ");
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = actual.iter().zip(expected).fold(0f32, |m, (a, e)| m.max((a - e).abs()));
    diff / scale.max(f32::MIN_POSITIVE)
}

/// Asserts finite values within `bound` of `expected` by [`relative_error`], printing the error.
#[track_caller]
pub fn assert_relative(actual: &[f32], expected: &[f32], bound: f32, what: &str) {
    assert!(actual.iter().all(|v| v.is_finite()), "{what}: non-finite output");
    let error = relative_error(actual, expected);
    eprintln!("{what}: relative error {error:.2e}");
    assert!(error <= bound, "{what}: relative error {error:.3e} exceeds {bound:.0e}");
}
