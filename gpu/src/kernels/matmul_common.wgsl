// Shared by every matmul kernel (prepended by matmul.rs before matmul.wgsl or matmul_vec4.wgsl):
// the parameter block, the bias and C bindings, and the epilogue
// C = act(alpha * sum + bias) (or C += that). A and B (bindings 1 and 2) are declared by each
// kernel file, as scalars (matmul.wgsl) or as vec4s (matmul_vec4.wgsl).

struct Params {
    m: u32, n: u32, k: u32, batch_inner: u32,
    a_offset: u32, a_row: u32, a_col: u32, a_outer: u32,
    a_inner: u32, b_offset: u32, b_row: u32, b_col: u32,
    b_outer: u32, b_inner: u32, c_offset: u32, c_row: u32,
    c_outer: u32, c_inner: u32, alpha: f32, activation: u32,
    has_bias: u32, accumulate: u32, bias_offset: u32, pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

// tanh that stays finite for large |x| (exp overflow would give inf/inf).
fn stable_tanh(x: f32) -> f32 {
    let t = exp(-2.0 * abs(x));
    return sign(x) * (1.0 - t) / (1.0 + t);
}

fn activate(x: f32) -> f32 {
    switch p.activation {
        case 1u: { // GELU, tanh approximation
            return 0.5 * x * (1.0 + stable_tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
        }
        case 2u: { // SiLU
            return x / (1.0 + exp(-x));
        }
        default: { return x; }
    }
}

fn store(c_base: u32, row: u32, col: u32, sum: f32) {
    if (row < p.m && col < p.n) {
        var value = p.alpha * sum;
        if (p.has_bias != 0u) { value += bias[p.bias_offset + col]; }
        value = activate(value);
        let index = c_base + row * p.c_row + col;
        if (p.accumulate != 0u) { value += c[index]; }
        c[index] = value;
    }
}
