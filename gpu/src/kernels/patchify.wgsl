// Patchify / unpatchify as one index map: token element (b, t, e) <-> image element (NCHW).
// order 0 (patchify, a flattened conv weight's order): e = (c, i, j);
// order 1 (unpatchify, DiT's final layer order): e = (i, j, c).
// gather: tokens[k] = images[source(k)]; scatter: images[source(k)] = tokens[k] (a bijection, so
// the scatter has no conflicts). Patchify's backward is a scatter and unpatchify's a gather.

struct Params {
    len: u32, channels: u32, size: u32, side: u32,
    order: u32, pad0: u32, pad1: u32, pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

fn flat(id: vec3<u32>, groups: vec3<u32>) -> u32 { return id.x + id.y * groups.x * 256u; }

fn source(k: u32) -> u32 {
    let grid = p.size / p.side;
    let tokens = grid * grid;
    let patch_len = p.channels * p.side * p.side;
    let b = k / (tokens * patch_len);
    let t = (k / patch_len) % tokens;
    let e = k % patch_len;
    var c: u32; var i: u32; var j: u32;
    if (p.order == 0u) {
        c = e / (p.side * p.side); i = (e / p.side) % p.side; j = e % p.side;
    } else {
        i = e / (p.side * p.channels); j = (e / p.channels) % p.side; c = e % p.channels;
    }
    let row = (t / grid) * p.side + i;
    let col = (t % grid) * p.side + j;
    return ((b * p.channels + c) * p.size + row) * p.size + col;
}

@compute @workgroup_size(256, 1, 1)
fn gather(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let k = flat(id, groups);
    if (k < p.len) { dst[k] = src[source(k)]; }
}

@compute @workgroup_size(256, 1, 1)
fn scatter(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let k = flat(id, groups);
    if (k < p.len) { dst[source(k)] = src[k]; }
}
