// Row-wise kernels, one workgroup of 64 invocations per row with a tree reduction in workgroup
// memory: layer norm (no affine, eps 1e-6) and softmax, forward and backward.
// Bindings: in0, in1, in2 read-only; out0, out1 read-write (an entry may ignore some).

struct Params { rows: u32, width: u32, scale: f32, pad0: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> in0: array<f32>;
@group(0) @binding(2) var<storage, read> in1: array<f32>;
@group(0) @binding(3) var<storage, read> in2: array<f32>;
@group(0) @binding(4) var<storage, read_write> out0: array<f32>;
@group(0) @binding(5) var<storage, read_write> out1: array<f32>;

const WG: u32 = 64u;
// `scratch` and `reduce_sum` come from reduce_sum.wgsl, prepended.

fn reduce_max(value: f32, lane: u32) -> f32 {
    scratch[lane] = value;
    workgroupBarrier();
    for (var step = WG / 2u; step > 0u; step >>= 1u) {
        if (lane < step) { scratch[lane] = max(scratch[lane], scratch[lane + step]); }
        workgroupBarrier();
    }
    let total = scratch[0];
    workgroupBarrier();
    return total;
}

fn row_index(workgroup: vec3<u32>, groups: vec3<u32>) -> u32 {
    return workgroup.x + workgroup.y * groups.x;
}

// in0 = x; out0 = x̂, out1 = 1/σ per row.
@compute @workgroup_size(64, 1, 1)
fn layernorm(@builtin(workgroup_id) workgroup: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
             @builtin(local_invocation_index) lane: u32) {
    let row = row_index(workgroup, groups);
    if (row >= p.rows) { return; }
    let base = row * p.width;
    var sum = 0.0;
    for (var i = lane; i < p.width; i += WG) { sum += in0[base + i]; }
    let mean = reduce_sum(sum, lane) / f32(p.width);
    var squares = 0.0;
    for (var i = lane; i < p.width; i += WG) {
        let d = in0[base + i] - mean;
        squares += d * d;
    }
    let rstd = 1.0 / sqrt(reduce_sum(squares, lane) / f32(p.width) + 1e-6);
    for (var i = lane; i < p.width; i += WG) { out0[base + i] = (in0[base + i] - mean) * rstd; }
    if (lane == 0u) { out1[row] = rstd; }
}

// in0 = x̂, in1 = 1/σ, in2 = dy; out0 = dx.
@compute @workgroup_size(64, 1, 1)
fn layernorm_backward(@builtin(workgroup_id) workgroup: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                      @builtin(local_invocation_index) lane: u32) {
    let row = row_index(workgroup, groups);
    if (row >= p.rows) { return; }
    let base = row * p.width;
    var sum_dy = 0.0;
    var sum_dy_xhat = 0.0;
    for (var i = lane; i < p.width; i += WG) {
        sum_dy += in2[base + i];
        sum_dy_xhat += in2[base + i] * in0[base + i];
    }
    let mean_dy = reduce_sum(sum_dy, lane) / f32(p.width);
    let mean_dy_xhat = reduce_sum(sum_dy_xhat, lane) / f32(p.width);
    let rstd = in1[row];
    for (var i = lane; i < p.width; i += WG) {
        out0[base + i] = rstd * (in2[base + i] - mean_dy - in0[base + i] * mean_dy_xhat);
    }
}

// in0 = x; out0 = softmax(scale · x).
@compute @workgroup_size(64, 1, 1)
fn softmax(@builtin(workgroup_id) workgroup: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
           @builtin(local_invocation_index) lane: u32) {
    let row = row_index(workgroup, groups);
    if (row >= p.rows) { return; }
    let base = row * p.width;
    var largest = -3.402823e38;
    for (var i = lane; i < p.width; i += WG) { largest = max(largest, p.scale * in0[base + i]); }
    let top = reduce_max(largest, lane);
    var sum = 0.0;
    for (var i = lane; i < p.width; i += WG) {
        let e = exp(p.scale * in0[base + i] - top);
        out0[base + i] = e;
        sum += e;
    }
    let inverse = 1.0 / reduce_sum(sum, lane);
    for (var i = lane; i < p.width; i += WG) { out0[base + i] *= inverse; }
}

// in0 = y (softmax output), in1 = dy; out0 = dx = scale · y · (dy − Σ dy·y).
@compute @workgroup_size(64, 1, 1)
fn softmax_backward(@builtin(workgroup_id) workgroup: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                    @builtin(local_invocation_index) lane: u32) {
    let row = row_index(workgroup, groups);
    if (row >= p.rows) { return; }
    let base = row * p.width;
    var dot = 0.0;
    for (var i = lane; i < p.width; i += WG) { dot += in0[base + i] * in1[base + i]; }
    let total = reduce_sum(dot, lane);
    for (var i = lane; i < p.width; i += WG) {
        out0[base + i] = p.scale * in0[base + i] * (in1[base + i] - total);
    }
}
