// Point-wise kernels of Stable Diffusion's networks, one invocation per output value: the
// activations (exact GELU, quick GELU, SiLU), GEGLU, a repeated (broadcast) add, the causal mask
// and nearest 2× upsampling. `x` is read-only (unused by the causal mask); `y` is the output.
// Params: `len` outputs; `op` the activation (0 exact GELU, 1 quick GELU, 2 SiLU); `a` and `b`
// sizes whose meaning each entry states. `erfc_nonnegative`, `gelu_erf` and `sigmoid` come from
// image_activation.wgsl, appended.

struct Params { len: u32, op: u32, a: u32, b: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

// gpu::cpu::image::MASKED.
const MASKED: f32 = -1.0e30;

fn flat(id: vec3<u32>, groups: vec3<u32>) -> u32 { return id.x + id.y * groups.x * 256u; }

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
