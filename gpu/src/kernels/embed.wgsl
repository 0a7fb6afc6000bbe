// Embeddings: text tokens pooled by a mean or a sum over real tokens (id 0 is padding) and its
// backward, and the sinusoidal timestep embedding.
// Bindings: ids (u32, read), in1 (read), out0 (read-write).

struct Params {
    batch: u32, max_tokens: u32, width: u32, vocabulary: u32,
    // 0: mean, 1: sum.
    pooling: u32, pad0: u32, pad1: u32, pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> in1: array<f32>;
@group(0) @binding(3) var<storage, read_write> out0: array<f32>;

fn flat(id: vec3<u32>, groups: vec3<u32>) -> u32 { return id.x + id.y * groups.x * 256u; }

fn real_tokens(b: u32) -> u32 {
    var count = 0u;
    for (var l = 0u; l < p.max_tokens; l++) {
        if (ids[b * p.max_tokens + l] != 0u) { count++; }
    }
    return count;
}

// What a sample's sum is divided by: its real tokens for a mean, 1 for a sum.
fn divisor(b: u32) -> f32 {
    return select(f32(real_tokens(b)), 1.0, p.pooling == 1u);
}

// One invocation per (b, d). in1 = table [vocabulary, width]; out0 = pooled [batch, width].
@compute @workgroup_size(256, 1, 1)
fn embed_pool(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(id, groups);
    if (i >= p.batch * p.width) { return; }
    let b = i / p.width;
    let d = i % p.width;
    var sum = 0.0;
    for (var l = 0u; l < p.max_tokens; l++) {
        let token = ids[b * p.max_tokens + l];
        if (token != 0u && token < p.vocabulary) { sum += in1[token * p.width + d]; }
    }
    let count = real_tokens(b);
    out0[i] = select(0.0, sum / divisor(b), count > 0u);
}

// One invocation per (v, d) so that no two invocations add into the same value. in1 = dpooled;
// out0 = dtable (+=).
@compute @workgroup_size(256, 1, 1)
fn embed_pool_backward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(id, groups);
    if (i >= p.vocabulary * p.width) { return; }
    let v = i / p.width;
    let d = i % p.width;
    if (v == 0u) { return; }
    var sum = 0.0;
    for (var b = 0u; b < p.batch; b++) {
        var hits = 0u;
        for (var l = 0u; l < p.max_tokens; l++) {
            if (ids[b * p.max_tokens + l] == v) { hits++; }
        }
        if (hits > 0u) {
            sum += f32(hits) * in1[b * p.width + d] / divisor(b);
        }
    }
    out0[i] += sum;
}

// sin/cos of a reduced argument: GPUs only promise accuracy on [-pi, pi].
const TWO_PI_HI: f32 = 6.28125;
const TWO_PI_LO: f32 = 0.0019353071795864769;

fn reduce_angle(x: f32) -> f32 {
    let turns = round(x * 0.15915494309189535);
    return (x - turns * TWO_PI_HI) - turns * TWO_PI_LO;
}

// One invocation per (b, i < width/2). ids holds the timesteps as f32 bits; out0 = [batch, width]:
// cos(t f_i) then sin(t f_i), f_i = exp(-ln(10000) i / half).
@compute @workgroup_size(256, 1, 1)
fn timestep(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let half = p.width / 2u;
    let i = flat(id, groups);
    if (i >= p.batch * half) { return; }
    let b = i / half;
    let k = i % half;
    let frequency = exp(-9.210340371976184 * f32(k) / f32(half));
    let angle = reduce_angle(bitcast<f32>(ids[b]) * frequency);
    out0[b * p.width + k] = cos(angle);
    out0[b * p.width + half + k] = sin(angle);
}
