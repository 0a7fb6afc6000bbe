// col2im, the inverse of image_im2col.wgsl, for the input gradient of a convolution (see
// gpu::cpu::image_backward::col2im_plane): `cols` holds a part of the unfolded gradient Wᵀ·dy,
// `images` blocks of `patch_len × columns` (row-major) for output positions
// `first_column .. first_column + columns` of the images `first_image ..`. One invocation per
// value of dx in input rows `first_row .. first_row + rows` of every channel of those images:
// the sum over kernel taps (ky, kx) of the column of the output position that reads the value
// through that tap, where that position lies in the part. Written to dx, or added when
// `accumulate` (a part of one image's columns adds to the rows its neighbours also reach).

struct Params {
    len: u32, channels: u32, height: u32, width: u32,
    kernel: u32, stride: u32, pad_before: u32, out_height: u32,
    out_width: u32, first_image: u32, first_column: u32, columns: u32,
    patch_len: u32, first_row: u32, rows: u32, accumulate: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> cols: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;

// The output index o < outputs with o·stride + tap − pad_before = input, or -1.
fn source(input: u32, tap: u32, outputs: u32) -> i32 {
    let shifted = i32(input + p.pad_before) - i32(tap);
    if (shifted < 0 || u32(shifted) % p.stride != 0u) { return -1; }
    let o = u32(shifted) / p.stride;
    return select(-1, i32(o), o < outputs);
}

@compute @workgroup_size(256, 1, 1)
fn col2im(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * 256u;
    if (i >= p.len) { return; }
    let ix = i % p.width;
    let plane_row = i / p.width; // (image · channels + channel) · rows + row
    let iy = p.first_row + plane_row % p.rows;
    let plane = plane_row / p.rows; // image · channels + channel, image within the part
    let channel = plane % p.channels;
    let image = plane / p.channels;
    var sum = 0.0;
    for (var ky = 0u; ky < p.kernel; ky++) {
        let oy = source(iy, ky, p.out_height);
        if (oy < 0) { continue; }
        for (var kx = 0u; kx < p.kernel; kx++) {
            let ox = source(ix, kx, p.out_width);
            if (ox < 0) { continue; }
            let position = u32(oy) * p.out_width + u32(ox);
            if (position < p.first_column || position >= p.first_column + p.columns) { continue; }
            let row = (channel * p.kernel + ky) * p.kernel + kx;
            sum += cols[(image * p.patch_len + row) * p.columns + position - p.first_column];
        }
    }
    let at = (((p.first_image + image) * p.channels + channel) * p.height + iy) * p.width + ix;
    if (p.accumulate != 0u) { dx[at] += sum; } else { dx[at] = sum; }
}
