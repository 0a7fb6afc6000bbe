// Group norm with a per-channel affine and an optional SiLU (layer norm is the case of one
// channel per value: groups = 1, spatial = 1). One workgroup of 256 invocations per (image,
// group), looping over groups larger than a workgroup: the group's statistics (norm_stats.wgsl),
// then the normalisation.
// A group is `group_len` consecutive values; value i of group g has channel
// (g % groups) · per_group + i / spatial.

struct Params {
    count: u32, groups: u32, group_len: u32, spatial: u32,
    per_group: u32, silu: u32, eps: f32, pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const WG: u32 = 256u;
// `scratch` and `reduce_sum` come from reduce_sum.wgsl, `group_stats` from norm_stats.wgsl,
// prepended.

@compute @workgroup_size(256, 1, 1)
fn normalize(@builtin(workgroup_id) workgroup: vec3<u32>, @builtin(num_workgroups) workgroups: vec3<u32>,
             @builtin(local_invocation_index) lane: u32) {
    let group = workgroup.x + workgroup.y * workgroups.x;
    if (group >= p.count) { return; }
    let base = group * p.group_len;
    let s = group_stats(base, lane);
    let first_channel = (group % p.groups) * p.per_group;
    for (var i = lane; i < p.group_len; i += WG) {
        let channel = first_channel + i / p.spatial;
        var value = ((x[base + i] - s.shift) - s.mean) * s.rstd * gamma[channel] + beta[channel];
        if (p.silu != 0u) {
            // x · σ(x) from exp(−|x|): never inf/inf.
            let e = exp(-abs(value));
            let s = 1.0 / (1.0 + e);
            value = value * select(e * s, s, value >= 0.0);
        }
        y[base + i] = value;
    }
}
