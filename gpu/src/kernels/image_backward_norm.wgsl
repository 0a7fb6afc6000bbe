// Backward of group norm with a per-channel affine and an optional SiLU w.r.t. its input (layer
// norm is the case of one channel per value: groups = 1, spatial = 1), the statistics recomputed
// from x as image_norm.wgsl computes them. One workgroup of 256 invocations per (image, group),
// looping over groups larger than a workgroup:
//   x̂ = (x − μ)·rstd, d = γ·dy (times silu′(x̂·γ + β) with the SiLU),
//   dx = rstd · (d − mean(d) − x̂ · mean(d·x̂)).
// A group is `group_len` consecutive values; value i of group g has channel
// (g % groups) · per_group + i / spatial. `beta` is read only with the SiLU.

struct Params {
    count: u32, groups: u32, group_len: u32, spatial: u32,
    per_group: u32, silu: u32, eps: f32, pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;

const WG: u32 = 256u;
// `scratch` and `reduce_sum` come from reduce_sum.wgsl, `group_stats` from norm_stats.wgsl,
// prepended; `silu_derivative`
// from image_activation.wgsl, appended.

// γ · dy (· silu′(z)) for value i of the group at `base` with normalised value `xhat`.
fn scaled_gradient(base: u32, i: u32, first_channel: u32, xhat: f32) -> f32 {
    let channel = first_channel + i / p.spatial;
    let g = gamma[channel];
    var dz = dy[base + i];
    if (p.silu != 0u) {
        dz *= silu_derivative(xhat * g + beta[channel]);
    }
    return g * dz;
}

@compute @workgroup_size(256, 1, 1)
fn normalize_backward(@builtin(workgroup_id) workgroup: vec3<u32>, @builtin(num_workgroups) workgroups: vec3<u32>,
                      @builtin(local_invocation_index) lane: u32) {
    let group = workgroup.x + workgroup.y * workgroups.x;
    if (group >= p.count) { return; }
    let base = group * p.group_len;
    let n = f32(p.group_len);
    // The statistics as the forward computes them.
    let s = group_stats(base, lane);
    let first_channel = (group % p.groups) * p.per_group;
    var sum_d = 0.0;
    var sum_d_xhat = 0.0;
    for (var i = lane; i < p.group_len; i += WG) {
        let xhat = ((x[base + i] - s.shift) - s.mean) * s.rstd;
        let d = scaled_gradient(base, i, first_channel, xhat);
        sum_d += d;
        sum_d_xhat += d * xhat;
    }
    let mean_d = reduce_sum(sum_d, lane) / n;
    let mean_d_xhat = reduce_sum(sum_d_xhat, lane) / n;
    for (var i = lane; i < p.group_len; i += WG) {
        let xhat = ((x[base + i] - s.shift) - s.mean) * s.rstd;
        let d = scaled_gradient(base, i, first_channel, xhat);
        dx[base + i] = s.rstd * (d - mean_d - xhat * mean_d_xhat);
    }
}
