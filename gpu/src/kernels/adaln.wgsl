// adaLN-Zero pieces: modulate x·(1+scale)+shift and the gated residual x += gate·y, with their
// backward. x, y are [batch, tokens, width]; shift, scale, gate are chunks of the per-sample
// modulation vectors: modulation[b * stride + offset + d].
// Bindings: in0, in1, in2 read-only; out0, out1 read-write.

struct Params {
    len: u32, tokens: u32, width: u32, stride: u32,
    offset0: u32, offset1: u32, pad0: u32, pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> in0: array<f32>;
@group(0) @binding(2) var<storage, read> in1: array<f32>;
@group(0) @binding(3) var<storage, read> in2: array<f32>;
@group(0) @binding(4) var<storage, read_write> out0: array<f32>;
@group(0) @binding(5) var<storage, read_write> out1: array<f32>;

fn flat(id: vec3<u32>, groups: vec3<u32>) -> u32 { return id.x + id.y * groups.x * 256u; }

// in0 = x, in1 = modulation (offset0 = shift, offset1 = scale); out0 = y.
@compute @workgroup_size(256, 1, 1)
fn modulate(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(id, groups);
    if (i >= p.len) { return; }
    let b = i / (p.tokens * p.width);
    let d = i % p.width;
    let row = b * p.stride + d;
    out0[i] = in0[i] * (1.0 + in1[row + p.offset1]) + in1[row + p.offset0];
}

// One invocation per (b, d). in0 = x, in1 = modulation, in2 = dy; out0 = dx,
// out1 = dmodulation (+= Σ_t).
@compute @workgroup_size(256, 1, 1)
fn modulate_backward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(id, groups);
    let batch = p.len / (p.tokens * p.width);
    if (i >= batch * p.width) { return; }
    let b = i / p.width;
    let d = i % p.width;
    let row = b * p.stride + d;
    let scale = in1[row + p.offset1];
    var dshift = 0.0;
    var dscale = 0.0;
    for (var t = 0u; t < p.tokens; t++) {
        let index = (b * p.tokens + t) * p.width + d;
        let g = in2[index];
        dshift += g;
        dscale += g * in0[index];
        out0[index] = g * (1.0 + scale);
    }
    out1[row + p.offset0] += dshift;
    out1[row + p.offset1] += dscale;
}

// in0 = y, in1 = modulation (offset0 = gate); out0 = x (+=).
@compute @workgroup_size(256, 1, 1)
fn gated_residual(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(id, groups);
    if (i >= p.len) { return; }
    let b = i / (p.tokens * p.width);
    let d = i % p.width;
    out0[i] += in1[b * p.stride + p.offset0 + d] * in0[i];
}

// One invocation per (b, d). in0 = y, in1 = modulation, in2 = dx; out0 = dy,
// out1 = dmodulation (+= Σ_t dx·y at the gate).
@compute @workgroup_size(256, 1, 1)
fn gated_residual_backward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(id, groups);
    let batch = p.len / (p.tokens * p.width);
    if (i >= batch * p.width) { return; }
    let b = i / p.width;
    let d = i % p.width;
    let at = b * p.stride + p.offset0 + d;
    let gate = in1[at];
    var dgate = 0.0;
    for (var t = 0u; t < p.tokens; t++) {
        let index = (b * p.tokens + t) * p.width + d;
        dgate += in2[index] * in0[index];
        out0[index] = gate * in2[index];
    }
    out1[at] += dgate;
}
