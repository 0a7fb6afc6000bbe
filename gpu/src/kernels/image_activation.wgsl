// The activations' building blocks shared by image.wgsl and image_backward.wgsl (appended to
// both): erfc, the exact GELU, a sigmoid that never overflows and SiLU's derivative.

const FRAC_1_SQRT_2: f32 = 0.7071067811865476;

// erfc(z) for z ≥ 0 (Numerical Recipes' erfcc, a Chebyshev fit with fractional error below
// 1.2e-7 everywhere): relative accuracy in the tail, and exp(−z²) underflows to 0 for large z,
// never inf/inf.
fn erfc_nonnegative(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806
        + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    return t * exp(poly - z * z);
}

// x · Φ(x) with Φ(−|x|) = erfc(|x|/√2)/2 computed directly (no cancellation for x < 0).
fn gelu_erf(v: f32) -> f32 {
    let lower_tail = 0.5 * erfc_nonnegative(abs(v) * FRAC_1_SQRT_2);
    return select(v * lower_tail, v * (1.0 - lower_tail), v >= 0.0);
}

// σ(z) from exp(−|z|) ≤ 1: never overflows.
fn sigmoid(z: f32) -> f32 {
    let e = exp(-abs(z));
    let s = 1.0 / (1.0 + e);
    return select(e * s, s, z >= 0.0);
}

// d/dz [z · σ(z)] = σ(z) + z · σ(z) · σ(−z) (1 − σ(z) as σ(−z): no cancellation). Beyond |z| =
// 100 the second term is below 1e-41 (and z · σ(−z) would be inf · 0 for |z| = inf): dropped.
fn silu_derivative(z: f32) -> f32 {
    let s = sigmoid(z);
    return s + select(z * s * sigmoid(-z), 0.0, abs(z) > 100.0);
}
