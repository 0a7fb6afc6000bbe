// Element-wise kernels, one entry point with an op code: activations and their backward,
// broadcast add, linear combinations (guidance), the DDIM update, forward diffusion, and the
// MSE gradient, and a per-sample masked add of a vector (the learned null text). y is read-write; a, b, c are read-only inputs an op may ignore.

struct Params {
    len: u32, op: u32, period: u32, per_sample: u32,
    s0: f32, s1: f32, s2: f32, pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> c: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const GELU_C: f32 = 0.7978845608028654;

fn stable_tanh(x: f32) -> f32 {
    let t = exp(-2.0 * abs(x));
    return sign(x) * (1.0 - t) / (1.0 + t);
}

fn gelu(x: f32) -> f32 {
    return 0.5 * x * (1.0 + stable_tanh(GELU_C * (x + 0.044715 * x * x * x)));
}

fn gelu_derivative(x: f32) -> f32 {
    let t = stable_tanh(GELU_C * (x + 0.044715 * x * x * x));
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * 0.044715 * x * x);
}

fn silu(x: f32) -> f32 { return x / (1.0 + exp(-x)); }

fn silu_derivative(x: f32) -> f32 {
    let s = 1.0 / (1.0 + exp(-x));
    return s * (1.0 + x * (1.0 - s));
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * 256u;
    if (i >= p.len) { return; }
    switch p.op {
        case 0u: { y[i] = gelu(a[i]); }
        case 1u: { y[i] = silu(a[i]); }
        case 2u: { y[i] = b[i] * gelu_derivative(a[i]); }
        case 3u: { y[i] = b[i] * silu_derivative(a[i]); }
        case 4u: { y[i] += a[i % p.period]; }
        case 5u: { y[i] = p.s0 * a[i] + p.s1 * b[i]; }
        case 6u: { y[i] = p.s0 * y[i] + p.s1 * a[i] + p.s2 * b[i]; }
        case 7u: {
            let alpha_bar = c[i / p.per_sample];
            y[i] = sqrt(alpha_bar) * a[i] + sqrt(1.0 - alpha_bar) * b[i];
        }
        case 8u: { y[i] = p.s0 * (a[i] - b[i]); }
        case 9u: { y[i] += a[i / p.per_sample] * b[i % p.period]; }
        case 10u: { y[i] = a[i + p.len] + p.s0 * (a[i] - a[i + p.len]); }
        case 11u: { y[i] = p.s0 * c[i / p.per_sample] * (a[i] - b[i]); }
        default: {}
    }
}
