// Point-wise kernels of Stable Diffusion's networks, one invocation per output value: the
// activations (exact GELU, quick GELU, SiLU), GEGLU, a repeated (broadcast) add, the causal mask
// and nearest 2× upsampling. `x` is read-only (unused by the causal mask); `y` is the output.
// Params: `len` outputs; `op` the activation (0 exact GELU, 1 quick GELU, 2 SiLU); `a` and `b`
// sizes whose meaning each entry states.

struct Params { len: u32, op: u32, a: u32, b: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

const FRAC_1_SQRT_2: f32 = 0.7071067811865476;
// gpu::cpu::image::MASKED.
const MASKED: f32 = -1.0e30;

fn flat(id: vec3<u32>, groups: vec3<u32>) -> u32 { return id.x + id.y * groups.x * 256u; }

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

fn activation(op: u32, v: f32) -> f32 {
    switch op {
        case 0u: { return gelu_erf(v); }
        case 1u: { return v * sigmoid(1.702 * v); }
        default: { return v * sigmoid(v); }
    }
}

// y[i] = op(x[i]).
@compute @workgroup_size(256, 1, 1)
fn unary(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(id, groups);
    if (i >= p.len) { return; }
    y[i] = activation(p.op, x[i]);
}

// a = inner: x holds rows of 2·inner (hidden states, then gate), y rows of inner.
@compute @workgroup_size(256, 1, 1)
fn geglu(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(id, groups);
    if (i >= p.len) { return; }
    let base = (i / p.a) * 2u * p.a + i % p.a;
    y[i] = x[base] * gelu_erf(x[base + p.a]);
}

// a = inner, b = period: y[i] += x[(i / inner) % period].
@compute @workgroup_size(256, 1, 1)
fn add_repeated(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(id, groups);
    if (i >= p.len) { return; }
    y[i] += x[(i / p.a) % p.b];
}

// a = size of the square matrices: entries above the diagonal become MASKED.
@compute @workgroup_size(256, 1, 1)
fn causal_mask(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(id, groups);
    if (i >= p.len) { return; }
    if (i % p.a > (i / p.a) % p.a) { y[i] = MASKED; }
}

// a = input height, b = input width: y holds planes of 2a × 2b.
@compute @workgroup_size(256, 1, 1)
fn upsample_nearest2x(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(id, groups);
    if (i >= p.len) { return; }
    let out_width = 2u * p.b;
    let ox = i % out_width;
    let row = i / out_width; // plane · 2a + oy
    let plane = row / (2u * p.a);
    let oy = row % (2u * p.a);
    y[i] = x[(plane * p.a + oy / 2u) * p.b + ox / 2u];
}
