// Matrix multiplication C = act(alpha * op(A) op(B) + bias) (or C += that), batched, with
// arbitrary element strides for A and B, so transposes and views into packed tensors (attention
// heads inside a qkv buffer) need no copy.
//
// The launcher (matmul.rs) prepends these constants and matmul_common.wgsl before compiling:
//   const BM: u32; const BN: u32;  the output tile of `tiled`: 128x128
//   const BK: u32;                 depth of a K slice staged in workgroup memory (tiled only)
//   const A_K_CONTIGUOUS: bool;    A's elements are contiguous along k (else along m)
//   const B_N_CONTIGUOUS: bool;    B's elements are contiguous along n (else along k)
// They only choose which global loads are coalesced; the strides themselves are runtime values.
//
// Entry points (the vec4 kernels for aligned layouts are in matmul_vec4.wgsl):
//   tiled:  128x128 output tile per workgroup of 16x16 invocations, 8x8 outputs per invocation
//           (rows ty*4+{0..3} and 64+ty*4+{0..3}, same split for columns, so the inner loop reads
//           whole vec4s from workgroup memory), A and B slices of BK staged in workgroup memory
//           and prefetched into registers one slice ahead.
//   direct: register-only, 4x4 outputs per invocation, 8x8 invocations: for tiny shapes and for
//           software adapters, where workgroup barriers are expensive.

// The parameter block, the bias and C bindings and the epilogue are in matmul_common.wgsl.
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;

// ---------------------------------------------------------------- tiled

// BM and BN (128 here) are prepended by the launcher.
const THREADS: u32 = 256u;
// Rows of the staged slices are padded by one vec4 so that scalar stores along k do not all hit
// the same memory bank.
const AS_STRIDE: u32 = BM / 4u + 1u;
const BS_STRIDE: u32 = BN / 4u + 1u;
const LOADS_A: u32 = BM * BK / THREADS;
const LOADS_B: u32 = BN * BK / THREADS;

var<workgroup> tile_a: array<vec4<f32>, BK * AS_STRIDE>;
var<workgroup> tile_b: array<vec4<f32>, BK * BS_STRIDE>;

// Element e of the BM x BK slice of A: (mm, kk), chosen so consecutive invocations read
// consecutive addresses.
fn a_coord(e: u32) -> vec2<u32> {
    if (A_K_CONTIGUOUS) { return vec2<u32>(e / BK, e % BK); }
    return vec2<u32>(e % BM, e / BM);
}

// Element e of the BK x BN slice of B: (kk, nn).
fn b_coord(e: u32) -> vec2<u32> {
    if (B_N_CONTIGUOUS) { return vec2<u32>(e / BN, e % BN); }
    return vec2<u32>(e % BK, e / BK);
}

fn load_a(base: u32, m0: u32, k0: u32, e: u32) -> f32 {
    let at = a_coord(e);
    let row = m0 + at.x;
    let col = k0 + at.y;
    if (row < p.m && col < p.k) { return a[base + row * p.a_row + col * p.a_col]; }
    return 0.0;
}

fn load_b(base: u32, k0: u32, n0: u32, e: u32) -> f32 {
    let at = b_coord(e);
    let row = k0 + at.x;
    let col = n0 + at.y;
    if (row < p.k && col < p.n) { return b[base + row * p.b_row + col * p.b_col]; }
    return 0.0;
}

fn store_a(e: u32, value: f32) {
    let at = a_coord(e);
    tile_a[at.y * AS_STRIDE + at.x / 4u][at.x % 4u] = value;
}

fn store_b(e: u32, value: f32) {
    let at = b_coord(e);
    tile_b[at.x * BS_STRIDE + at.y / 4u][at.y % 4u] = value;
}

fn store_row(c_base: u32, row: u32, col0: u32, col1: u32, left: vec4<f32>, right: vec4<f32>) {
    store(c_base, row, col0, left.x);
    store(c_base, row, col0 + 1u, left.y);
    store(c_base, row, col0 + 2u, left.z);
    store(c_base, row, col0 + 3u, left.w);
    store(c_base, row, col1, right.x);
    store(c_base, row, col1 + 1u, right.y);
    store(c_base, row, col1 + 2u, right.z);
    store(c_base, row, col1 + 3u, right.w);
}

@compute @workgroup_size(16, 16, 1)
fn tiled(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(local_invocation_index) flat: u32,
) {
    let tx = local.x;
    let ty = local.y;
    let m0 = workgroup.y * BM;
    let n0 = workgroup.x * BN;
    let outer = workgroup.z / p.batch_inner;
    let inner = workgroup.z % p.batch_inner;
    let a_base = p.a_offset + outer * p.a_outer + inner * p.a_inner;
    let b_base = p.b_offset + outer * p.b_outer + inner * p.b_inner;
    let c_base = p.c_offset + outer * p.c_outer + inner * p.c_inner;

    var acc00 = vec4<f32>(0.0); var acc01 = vec4<f32>(0.0);
    var acc10 = vec4<f32>(0.0); var acc11 = vec4<f32>(0.0);
    var acc20 = vec4<f32>(0.0); var acc21 = vec4<f32>(0.0);
    var acc30 = vec4<f32>(0.0); var acc31 = vec4<f32>(0.0);
    var acc40 = vec4<f32>(0.0); var acc41 = vec4<f32>(0.0);
    var acc50 = vec4<f32>(0.0); var acc51 = vec4<f32>(0.0);
    var acc60 = vec4<f32>(0.0); var acc61 = vec4<f32>(0.0);
    var acc70 = vec4<f32>(0.0); var acc71 = vec4<f32>(0.0);

    var next_a: array<f32, LOADS_A>;
    var next_b: array<f32, LOADS_B>;
    for (var i = 0u; i < LOADS_A; i++) { next_a[i] = load_a(a_base, m0, 0u, flat + i * THREADS); }
    for (var i = 0u; i < LOADS_B; i++) { next_b[i] = load_b(b_base, 0u, n0, flat + i * THREADS); }

    let slices = (p.k + BK - 1u) / BK;
    for (var s = 0u; s < slices; s++) {
        for (var i = 0u; i < LOADS_A; i++) { store_a(flat + i * THREADS, next_a[i]); }
        for (var i = 0u; i < LOADS_B; i++) { store_b(flat + i * THREADS, next_b[i]); }
        workgroupBarrier();
        if (s + 1u < slices) {
            let k0 = (s + 1u) * BK;
            for (var i = 0u; i < LOADS_A; i++) { next_a[i] = load_a(a_base, m0, k0, flat + i * THREADS); }
            for (var i = 0u; i < LOADS_B; i++) { next_b[i] = load_b(b_base, k0, n0, flat + i * THREADS); }
        }
        for (var kk = 0u; kk < BK; kk++) {
            let a0 = tile_a[kk * AS_STRIDE + ty];
            let a1 = tile_a[kk * AS_STRIDE + 16u + ty];
            let b0 = tile_b[kk * BS_STRIDE + tx];
            let b1 = tile_b[kk * BS_STRIDE + 16u + tx];
            acc00 = fma(vec4<f32>(a0.x), b0, acc00); acc01 = fma(vec4<f32>(a0.x), b1, acc01);
            acc10 = fma(vec4<f32>(a0.y), b0, acc10); acc11 = fma(vec4<f32>(a0.y), b1, acc11);
            acc20 = fma(vec4<f32>(a0.z), b0, acc20); acc21 = fma(vec4<f32>(a0.z), b1, acc21);
            acc30 = fma(vec4<f32>(a0.w), b0, acc30); acc31 = fma(vec4<f32>(a0.w), b1, acc31);
            acc40 = fma(vec4<f32>(a1.x), b0, acc40); acc41 = fma(vec4<f32>(a1.x), b1, acc41);
            acc50 = fma(vec4<f32>(a1.y), b0, acc50); acc51 = fma(vec4<f32>(a1.y), b1, acc51);
            acc60 = fma(vec4<f32>(a1.z), b0, acc60); acc61 = fma(vec4<f32>(a1.z), b1, acc61);
            acc70 = fma(vec4<f32>(a1.w), b0, acc70); acc71 = fma(vec4<f32>(a1.w), b1, acc71);
        }
        workgroupBarrier();
    }

    let row0 = m0 + ty * 4u;
    let row1 = m0 + 64u + ty * 4u;
    let col0 = n0 + tx * 4u;
    let col1 = n0 + 64u + tx * 4u;
    store_row(c_base, row0, col0, col1, acc00, acc01);
    store_row(c_base, row0 + 1u, col0, col1, acc10, acc11);
    store_row(c_base, row0 + 2u, col0, col1, acc20, acc21);
    store_row(c_base, row0 + 3u, col0, col1, acc30, acc31);
    store_row(c_base, row1, col0, col1, acc40, acc41);
    store_row(c_base, row1 + 1u, col0, col1, acc50, acc51);
    store_row(c_base, row1 + 2u, col0, col1, acc60, acc61);
    store_row(c_base, row1 + 3u, col0, col1, acc70, acc71);
}

// ---------------------------------------------------------------- direct

fn fetch_a(base: u32, row: u32, col: u32) -> f32 {
    if (row < p.m) { return a[base + row * p.a_row + col * p.a_col]; }
    return 0.0;
}

fn fetch_b(base: u32, row: u32, col: u32) -> f32 {
    if (col < p.n) { return b[base + row * p.b_row + col * p.b_col]; }
    return 0.0;
}

fn store4(c_base: u32, row: u32, col: u32, v: vec4<f32>) {
    store(c_base, row, col, v.x);
    store(c_base, row, col + 1u, v.y);
    store(c_base, row, col + 2u, v.z);
    store(c_base, row, col + 3u, v.w);
}

@compute @workgroup_size(8, 8, 1)
fn direct(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
) {
    let row = workgroup.y * 32u + local.y * 4u;
    let col = workgroup.x * 32u + local.x * 4u;
    let outer = workgroup.z / p.batch_inner;
    let inner = workgroup.z % p.batch_inner;
    let a_base = p.a_offset + outer * p.a_outer + inner * p.a_inner;
    let b_base = p.b_offset + outer * p.b_outer + inner * p.b_inner;
    let c_base = p.c_offset + outer * p.c_outer + inner * p.c_inner;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k = 0u; k < p.k; k++) {
        let av = vec4<f32>(
            fetch_a(a_base, row, k), fetch_a(a_base, row + 1u, k),
            fetch_a(a_base, row + 2u, k), fetch_a(a_base, row + 3u, k));
        let bv = vec4<f32>(
            fetch_b(b_base, k, col), fetch_b(b_base, k, col + 1u),
            fetch_b(b_base, k, col + 2u), fetch_b(b_base, k, col + 3u));
        acc0 = fma(vec4<f32>(av.x), bv, acc0);
        acc1 = fma(vec4<f32>(av.y), bv, acc1);
        acc2 = fma(vec4<f32>(av.z), bv, acc2);
        acc3 = fma(vec4<f32>(av.w), bv, acc3);
    }
    store4(c_base, row, col, acc0);
    store4(c_base, row + 1u, col, acc1);
    store4(c_base, row + 2u, col, acc2);
    store4(c_base, row + 3u, col, acc3);
}
