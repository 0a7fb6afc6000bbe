// Point-wise backward kernels of Stable Diffusion's networks (gpu::cpu::image_backward), one
// invocation per value (per `dy` value for GEGLU, per `dx` value otherwise). `x` is the forward's
// input (unused by the upsampling), `dy` the output's gradient, `dx` the input's (overwritten).
// Params: `len` invocations; `op` the activation (0 exact GELU, 1 quick GELU, 2 SiLU); `a` and
// `b` sizes whose meaning each entry states. `erfc_nonnegative`, `gelu_erf` and `silu_derivative`
// come from image_activation.wgsl, appended.

struct Params { len: u32, op: u32, a: u32, b: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

// 1/√(2π).
const FRAC_1_SQRT_2PI: f32 = 0.3989422804014327;

fn flat(id: vec3<u32>, groups: vec3<u32>) -> u32 { return id.x + id.y * groups.x * 256u; }

// d/dv [v · Φ(v)] = Φ(v) + v · φ(v); Φ from the same erfc as the forward.
fn gelu_erf_derivative(v: f32) -> f32 {
    let lower_tail = 0.5 * erfc_nonnegative(abs(v) * FRAC_1_SQRT_2);
    let cdf = select(lower_tail, 1.0 - lower_tail, v >= 0.0);
    return cdf + v * FRAC_1_SQRT_2PI * exp(-0.5 * v * v);
}

fn derivative(op: u32, v: f32) -> f32 {
    switch op {
        case 0u: { return gelu_erf_derivative(v); }
        // d/dv [v · σ(1.702·v)] = silu′(1.702·v).
        case 1u: { return silu_derivative(1.702 * v); }
        default: { return silu_derivative(v); }
    }
}

// dx[i] = op′(x[i]) · dy[i].
@compute @workgroup_size(256, 1, 1)
fn unary_backward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(id, groups);
    if (i >= p.len) { return; }
    dx[i] = derivative(p.op, x[i]) * dy[i];
}

// a = inner; one invocation per dy value: x and dx hold rows of 2·inner (hidden states h, then
// gate g), dy rows of inner. dh = dy · gelu(g), dg = dy · h · gelu′(g).
@compute @workgroup_size(256, 1, 1)
fn geglu_backward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(id, groups);
    if (i >= p.len) { return; }
    let base = (i / p.a) * 2u * p.a + i % p.a;
    let gate = x[base + p.a];
    dx[base] = dy[i] * gelu_erf(gate);
    dx[base + p.a] = dy[i] * x[base] * gelu_erf_derivative(gate);
}

// a = input height, b = input width; one invocation per dx value: the sum of the 2×2 block of dy
// (planes of 2a × 2b) that the value was copied to.
@compute @workgroup_size(256, 1, 1)
fn upsample_nearest2x_backward(@builtin(global_invocation_id) id: vec3<u32>,
                               @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(id, groups);
    if (i >= p.len) { return; }
    let out_width = 2u * p.b;
    let row = i / p.b; // plane · a + iy
    let top = 2u * row * out_width + 2u * (i % p.b);
    dx[i] = (dy[top] + dy[top + 1u]) + (dy[top + out_width] + dy[top + out_width + 1u]);
}
