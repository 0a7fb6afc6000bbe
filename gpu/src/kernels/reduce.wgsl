// Deterministic two-pass reductions (fixed order for a given length, no atomics).
// partial: 256 invocations per workgroup, a grid-stride loop over the input, then a tree in
//          workgroup memory; partials[offset + workgroup] = Σ (a − b)² (or Σ a² when has_b = 0).
// finish:  one workgroup sums count partials: out[out_index] = scale · Σ (+ out[...] if
//          accumulate).
// Bindings: a, b read; partials read-write; out read-write.

struct Params {
    len: u32, has_b: u32, offset: u32, count: u32,
    out_index: u32, accumulate: u32, scale: f32, pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> partials: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
var<workgroup> scratch: array<f32, WG>;

fn tree(value: f32, lane: u32) -> f32 {
    scratch[lane] = value;
    workgroupBarrier();
    for (var step = WG / 2u; step > 0u; step >>= 1u) {
        if (lane < step) { scratch[lane] += scratch[lane + step]; }
        workgroupBarrier();
    }
    return scratch[0];
}

@compute @workgroup_size(256, 1, 1)
fn partial(@builtin(workgroup_id) workgroup: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
           @builtin(local_invocation_index) lane: u32) {
    var sum = 0.0;
    for (var i = workgroup.x * WG + lane; i < p.len; i += groups.x * WG) {
        var d = a[i];
        if (p.has_b != 0u) { d -= b[i]; }
        sum += d * d;
    }
    let total = tree(sum, lane);
    if (lane == 0u) { partials[p.offset + workgroup.x] = total; }
}

@compute @workgroup_size(256, 1, 1)
fn finish(@builtin(local_invocation_index) lane: u32) {
    var sum = 0.0;
    for (var i = lane; i < p.count; i += WG) { sum += partials[p.offset + i]; }
    let total = tree(sum, lane) * p.scale;
    if (lane == 0u) {
        if (p.accumulate != 0u) { out[p.out_index] += total; } else { out[p.out_index] = total; }
    }
}
