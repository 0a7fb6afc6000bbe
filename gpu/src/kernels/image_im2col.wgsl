// im2col for a range of images and output positions (see gpu::cpu::image::im2col): one
// invocation per value of `cols`, which holds `images` blocks of `patch_len × columns`
// (row-major): cols[(image·patch_len + (c·k + ky)·k + kx)·columns + j] is the zero-padded input
// of image `first_image + image`, channel c, at the input position that output position
// `first_column + j` reads through kernel tap (ky, kx).

struct Params {
    len: u32, channels: u32, height: u32, width: u32,
    kernel: u32, stride: u32, pad_before: u32, out_width: u32,
    first_image: u32, first_column: u32, columns: u32, patch_len: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> cols: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn im2col(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * 256u;
    if (i >= p.len) { return; }
    let j = i % p.columns;
    let block_row = i / p.columns;
    let row = block_row % p.patch_len;
    let image = p.first_image + block_row / p.patch_len;
    let position = p.first_column + j;
    let oy = position / p.out_width;
    let ox = position % p.out_width;
    let taps = p.kernel * p.kernel;
    let channel = row / taps;
    let ky = (row / p.kernel) % p.kernel;
    let kx = row % p.kernel;
    // Signed: the padding makes the first rows and columns negative.
    let iy = i32(oy * p.stride + ky) - i32(p.pad_before);
    let ix = i32(ox * p.stride + kx) - i32(p.pad_before);
    var value = 0.0;
    if (iy >= 0 && iy < i32(p.height) && ix >= 0 && ix < i32(p.width)) {
        value = x[((image * p.channels + channel) * p.height + u32(iy)) * p.width + u32(ix)];
    }
    cols[i] = value;
}
