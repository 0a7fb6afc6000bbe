// The vec4 matmul: the same product as matmul.wgsl's `tiled`, for operands whose contiguous
// direction can be read as whole vec4s (the launcher checks: unit stride along that direction,
// every other stride, the offset and that dimension's size multiples of 4). It differs from
// `tiled` in three ways:
//   - global loads are vec4s (one or two per operand and thread per K slice), so a slice costs a
//     quarter of the load instructions and index computations;
//   - the staged slices are double-buffered in workgroup memory: the next slice is loaded into
//     registers while the current one is multiplied, then stored into the other buffer, so each
//     slice needs one barrier instead of two;
//   - no private arrays: the prefetch registers are named variables, so no compiler can move them
//     to local memory.
// Both operands are staged k-major (row kk of a slice holds BM values of m, or of n), padded by
// one vec4 per row: the inner loop reads each thread's rows and columns as vec4s, and the
// transposing scalar stores of a k-contiguous operand land in distinct banks.
//
// The launcher (matmul.rs) prepends before matmul_common.wgsl and this file:
//   const BM: u32; const BN: u32;  the output tile of a workgroup (see the entry points)
//   const BK: u32;                 K slice depth; BM * BK / 4 and BN * BK / 4 must be 256 or 512
//   const A_K_CONTIGUOUS: bool;    A is contiguous along k (else along m)
//   const B_N_CONTIGUOUS: bool;    B is contiguous along n (else along k)
//
// Entry points (256 invocations, 16x16):
//   wide:       128x128 tile, 8x8 outputs per invocation (rows ty*4+{0..3} and 64+ty*4+{0..3},
//               the same split for columns), for large outputs.
//   wide_tall:  128x64 tile, 8x4 outputs per invocation: half the accumulators (fewer
//               registers, more workgroups per multiprocessor), twice the workgroups.
//   wide_small: 64x64 tile, 4x4 outputs per invocation, for outputs with too few larger tiles
//               to fill the GPU.

@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;

const THREADS: u32 = 256u;
// vec4s per staged row of a slice (one of padding), and per slice of one operand.
const STRIDE_A: u32 = BM / 4u + 1u;
const STRIDE_B: u32 = BN / 4u + 1u;
const SLAB_A: u32 = BK * STRIDE_A;
const SLAB_B: u32 = BK * STRIDE_B;
// vec4 loads per invocation, per operand and slice: 1 or 2.
const LOADS_A: u32 = BM * BK / 4u / THREADS;
const LOADS_B: u32 = BN * BK / 4u / THREADS;
// vec4s along k in one slice row of a k-contiguous operand.
const KQ: u32 = BK / 4u;
// vec4s along m (or n) in one slice row of an m- (or n-) contiguous operand.
const TQ_A: u32 = BM / 4u;
const TQ_B: u32 = BN / 4u;

var<workgroup> wa: array<vec4<f32>, 2u * SLAB_A>;
var<workgroup> wb: array<vec4<f32>, 2u * SLAB_B>;

// vec4 number e (0 .. BM*BK/4) of A's slice starting at column k0, zero outside A.
fn load_a(base: u32, m0: u32, k0: u32, e: u32) -> vec4<f32> {
    if (A_K_CONTIGUOUS) {
        let row = m0 + e / KQ;
        let col = k0 + (e % KQ) * 4u;
        if (row < p.m && col < p.k) { return a4[(base + row * p.a_row + col) >> 2u]; }
    } else {
        let row = m0 + (e % TQ_A) * 4u;
        let col = k0 + e / TQ_A;
        if (row < p.m && col < p.k) { return a4[(base + row + col * p.a_col) >> 2u]; }
    }
    return vec4<f32>(0.0);
}

// vec4 number e of B's slice starting at row k0, zero outside B.
fn load_b(base: u32, k0: u32, n0: u32, e: u32) -> vec4<f32> {
    if (B_N_CONTIGUOUS) {
        let row = k0 + e / TQ_B;
        let col = n0 + (e % TQ_B) * 4u;
        if (row < p.k && col < p.n) { return b4[(base + row * p.b_row + col) >> 2u]; }
    } else {
        let row = k0 + (e % KQ) * 4u;
        let col = n0 + e / KQ;
        if (row < p.k && col < p.n) { return b4[(base + row + col * p.b_col) >> 2u]; }
    }
    return vec4<f32>(0.0);
}

// Stores vec4 number e of A's slice into the buffer starting at `slab`, k-major.
fn stage_a(slab: u32, e: u32, v: vec4<f32>) {
    if (A_K_CONTIGUOUS) {
        // Four consecutive k of one row m: one scalar per staged row.
        let mm = e / KQ;
        let at = slab + (e % KQ) * 4u * STRIDE_A + mm / 4u;
        let lane = mm % 4u;
        wa[at][lane] = v.x;
        wa[at + STRIDE_A][lane] = v.y;
        wa[at + 2u * STRIDE_A][lane] = v.z;
        wa[at + 3u * STRIDE_A][lane] = v.w;
    } else {
        wa[slab + (e / TQ_A) * STRIDE_A + e % TQ_A] = v;
    }
}

fn stage_b(slab: u32, e: u32, v: vec4<f32>) {
    if (B_N_CONTIGUOUS) {
        wb[slab + (e / TQ_B) * STRIDE_B + e % TQ_B] = v;
    } else {
        let nn = e / KQ;
        let at = slab + (e % KQ) * 4u * STRIDE_B + nn / 4u;
        let lane = nn % 4u;
        wb[at][lane] = v.x;
        wb[at + STRIDE_B][lane] = v.y;
        wb[at + 2u * STRIDE_B][lane] = v.z;
        wb[at + 3u * STRIDE_B][lane] = v.w;
    }
}

// The prefetch registers of one invocation: its vec4s of the next slice of A and B.
struct Staged {
    a0: vec4<f32>, a1: vec4<f32>, b0: vec4<f32>, b1: vec4<f32>,
}

// Loads this invocation's vec4s (number `flat`, and `flat + THREADS` where an operand needs two)
// of the slices starting at k0.
fn fetch(a_base: u32, b_base: u32, m0: u32, n0: u32, k0: u32, flat: u32) -> Staged {
    var v = Staged(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    v.a0 = load_a(a_base, m0, k0, flat);
    v.b0 = load_b(b_base, k0, n0, flat);
    if (LOADS_A > 1u) { v.a1 = load_a(a_base, m0, k0, flat + THREADS); }
    if (LOADS_B > 1u) { v.b1 = load_b(b_base, k0, n0, flat + THREADS); }
    return v;
}

// Stores them into buffer `buffer` (0 or 1) of the workgroup's slices.
fn stage(buffer: u32, flat: u32, v: Staged) {
    stage_a(buffer * SLAB_A, flat, v.a0);
    stage_b(buffer * SLAB_B, flat, v.b0);
    if (LOADS_A > 1u) { stage_a(buffer * SLAB_A, flat + THREADS, v.a1); }
    if (LOADS_B > 1u) { stage_b(buffer * SLAB_B, flat + THREADS, v.b1); }
}

fn store_vec4(c_base: u32, row: u32, col: u32, v: vec4<f32>) {
    store(c_base, row, col, v.x);
    store(c_base, row, col + 1u, v.y);
    store(c_base, row, col + 2u, v.z);
    store(c_base, row, col + 3u, v.w);
}

@compute @workgroup_size(16, 16, 1)
fn wide(
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

    stage(0u, flat, fetch(a_base, b_base, m0, n0, 0u, flat));
    workgroupBarrier();
    let slices = (p.k + BK - 1u) / BK;
    for (var s = 0u; s < slices; s++) {
        let buffer = s & 1u;
        let more = s + 1u < slices;
        var next = Staged(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
        if (more) { next = fetch(a_base, b_base, m0, n0, (s + 1u) * BK, flat); }
        for (var kk = 0u; kk < BK; kk++) {
            let at = buffer * SLAB_A + kk * STRIDE_A;
            let bt = buffer * SLAB_B + kk * STRIDE_B;
            let a0 = wa[at + ty];
            let a1 = wa[at + 16u + ty];
            let b0 = wb[bt + tx];
            let b1 = wb[bt + 16u + tx];
            acc00 = fma(vec4<f32>(a0.x), b0, acc00); acc01 = fma(vec4<f32>(a0.x), b1, acc01);
            acc10 = fma(vec4<f32>(a0.y), b0, acc10); acc11 = fma(vec4<f32>(a0.y), b1, acc11);
            acc20 = fma(vec4<f32>(a0.z), b0, acc20); acc21 = fma(vec4<f32>(a0.z), b1, acc21);
            acc30 = fma(vec4<f32>(a0.w), b0, acc30); acc31 = fma(vec4<f32>(a0.w), b1, acc31);
            acc40 = fma(vec4<f32>(a1.x), b0, acc40); acc41 = fma(vec4<f32>(a1.x), b1, acc41);
            acc50 = fma(vec4<f32>(a1.y), b0, acc50); acc51 = fma(vec4<f32>(a1.y), b1, acc51);
            acc60 = fma(vec4<f32>(a1.z), b0, acc60); acc61 = fma(vec4<f32>(a1.z), b1, acc61);
            acc70 = fma(vec4<f32>(a1.w), b0, acc70); acc71 = fma(vec4<f32>(a1.w), b1, acc71);
        }
        // The other buffer: every invocation finished reading it before the previous barrier.
        if (more) { stage(1u - buffer, flat, next); }
        workgroupBarrier();
    }

    let row0 = m0 + ty * 4u;
    let row1 = m0 + 64u + ty * 4u;
    let col0 = n0 + tx * 4u;
    let col1 = n0 + 64u + tx * 4u;
    store_vec4(c_base, row0, col0, acc00); store_vec4(c_base, row0, col1, acc01);
    store_vec4(c_base, row0 + 1u, col0, acc10); store_vec4(c_base, row0 + 1u, col1, acc11);
    store_vec4(c_base, row0 + 2u, col0, acc20); store_vec4(c_base, row0 + 2u, col1, acc21);
    store_vec4(c_base, row0 + 3u, col0, acc30); store_vec4(c_base, row0 + 3u, col1, acc31);
    store_vec4(c_base, row1, col0, acc40); store_vec4(c_base, row1, col1, acc41);
    store_vec4(c_base, row1 + 1u, col0, acc50); store_vec4(c_base, row1 + 1u, col1, acc51);
    store_vec4(c_base, row1 + 2u, col0, acc60); store_vec4(c_base, row1 + 2u, col1, acc61);
    store_vec4(c_base, row1 + 3u, col0, acc70); store_vec4(c_base, row1 + 3u, col1, acc71);
}

@compute @workgroup_size(16, 16, 1)
fn wide_tall(
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
    var acc0 = vec4<f32>(0.0); var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0); var acc3 = vec4<f32>(0.0);
    var acc4 = vec4<f32>(0.0); var acc5 = vec4<f32>(0.0);
    var acc6 = vec4<f32>(0.0); var acc7 = vec4<f32>(0.0);

    stage(0u, flat, fetch(a_base, b_base, m0, n0, 0u, flat));
    workgroupBarrier();
    let slices = (p.k + BK - 1u) / BK;
    for (var s = 0u; s < slices; s++) {
        let buffer = s & 1u;
        let more = s + 1u < slices;
        var next = Staged(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
        if (more) { next = fetch(a_base, b_base, m0, n0, (s + 1u) * BK, flat); }
        for (var kk = 0u; kk < BK; kk++) {
            let at = buffer * SLAB_A + kk * STRIDE_A;
            let bt = buffer * SLAB_B + kk * STRIDE_B;
            let a0 = wa[at + ty];
            let a1 = wa[at + 16u + ty];
            let bv = wb[bt + tx];
            acc0 = fma(vec4<f32>(a0.x), bv, acc0);
            acc1 = fma(vec4<f32>(a0.y), bv, acc1);
            acc2 = fma(vec4<f32>(a0.z), bv, acc2);
            acc3 = fma(vec4<f32>(a0.w), bv, acc3);
            acc4 = fma(vec4<f32>(a1.x), bv, acc4);
            acc5 = fma(vec4<f32>(a1.y), bv, acc5);
            acc6 = fma(vec4<f32>(a1.z), bv, acc6);
            acc7 = fma(vec4<f32>(a1.w), bv, acc7);
        }
        // The other buffer: every invocation finished reading it before the previous barrier.
        if (more) { stage(1u - buffer, flat, next); }
        workgroupBarrier();
    }

    let row0 = m0 + ty * 4u;
    let row1 = m0 + 64u + ty * 4u;
    let col = n0 + tx * 4u;
    store_vec4(c_base, row0, col, acc0);
    store_vec4(c_base, row0 + 1u, col, acc1);
    store_vec4(c_base, row0 + 2u, col, acc2);
    store_vec4(c_base, row0 + 3u, col, acc3);
    store_vec4(c_base, row1, col, acc4);
    store_vec4(c_base, row1 + 1u, col, acc5);
    store_vec4(c_base, row1 + 2u, col, acc6);
    store_vec4(c_base, row1 + 3u, col, acc7);
}

@compute @workgroup_size(16, 16, 1)
fn wide_small(
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
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    stage(0u, flat, fetch(a_base, b_base, m0, n0, 0u, flat));
    workgroupBarrier();
    let slices = (p.k + BK - 1u) / BK;
    for (var s = 0u; s < slices; s++) {
        let buffer = s & 1u;
        let more = s + 1u < slices;
        var next = Staged(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
        if (more) { next = fetch(a_base, b_base, m0, n0, (s + 1u) * BK, flat); }
        for (var kk = 0u; kk < BK; kk++) {
            let at = buffer * SLAB_A + kk * STRIDE_A;
            let bt = buffer * SLAB_B + kk * STRIDE_B;
            let av = wa[at + ty];
            let bv = wb[bt + tx];
            acc0 = fma(vec4<f32>(av.x), bv, acc0);
            acc1 = fma(vec4<f32>(av.y), bv, acc1);
            acc2 = fma(vec4<f32>(av.z), bv, acc2);
            acc3 = fma(vec4<f32>(av.w), bv, acc3);
        }
        // The other buffer: every invocation finished reading it before the previous barrier.
        if (more) { stage(1u - buffer, flat, next); }
        workgroupBarrier();
    }

    let row = m0 + ty * 4u;
    let col = n0 + tx * 4u;
    store_vec4(c_base, row, col, acc0);
    store_vec4(c_base, row + 1u, col, acc1);
    store_vec4(c_base, row + 2u, col, acc2);
    store_vec4(c_base, row + 3u, col, acc3);
}
