//! The matmul kernels against the CPU reference, and the CPU products against their definition,
//! on awkward shapes.

mod common;

use common::{Rng, assert_close, context};
use gpu::kernels::matmul::{Activation, Layout, Matmul, MatmulKernel};

const KERNELS: [MatmulKernel; 4] = [
    MatmulKernel::Direct,
    MatmulKernel::Tiled { bk: 8 },
    MatmulKernel::Tiled { bk: 16 },
    MatmulKernel::Tiled { bk: 32 },
];

/// Every vec4 variant (they run only on vec4-aligned layouts; others fall back to `Tiled`).
const VEC4_KERNELS: [MatmulKernel; 5] = [
    MatmulKernel::Vec4 { bm: 128, bn: 128, bk: 8 },
    MatmulKernel::Vec4 { bm: 128, bn: 128, bk: 16 },
    MatmulKernel::Vec4 { bm: 128, bn: 64, bk: 16 },
    MatmulKernel::Vec4 { bm: 64, bn: 64, bk: 16 },
    MatmulKernel::Vec4 { bm: 64, bn: 64, bk: 32 },
];

/// Runs `spec` on the GPU with `kernel` and on the CPU, from the same random inputs, and compares.
fn check(spec: Matmul, kernel: MatmulKernel, a_len: usize, b_len: usize, c_len: usize, seed: u64) {
    let context = context();
    let mut rng = Rng::new(seed);
    let a = rng.vec(a_len);
    let b = rng.vec(b_len);
    let bias = rng.vec(spec.n + spec.bias.unwrap_or(0));
    let c0 = rng.vec(c_len);
    let mut expected = c0.clone();
    spec.run_cpu(&a, &b, spec.bias.map(|_| bias.as_slice()), &mut expected);

    let a_buffer = context.storage_buffer_with(&a);
    let b_buffer = context.storage_buffer_with(&b);
    let bias_buffer = context.storage_buffer_with(&bias);
    let c_buffer = context.storage_buffer_with(&c0);
    let mut recorder = context.recorder();
    spec.record(&mut recorder, kernel, &a_buffer, &b_buffer, spec.bias.map(|_| &bias_buffer), &c_buffer);
    recorder.submit();
    let actual: Vec<f32> = context.read_words(&c_buffer, c_len).unwrap();
    // Sums of at most a few hundred products: f32 reassociation stays far below 1e-4.
    assert_close(&actual, &expected, 1e-4, &format!("{spec:?} with {kernel:?}"));
}

#[test]
fn plain_and_transposed_operands_on_awkward_shapes() {
    let shapes = [(1, 1, 1), (3, 5, 7), (33, 17, 65), (130, 129, 47), (5, 140, 260)];
    let mut seed = 1;
    for &(m, n, k) in &shapes {
        for transpose_a in [false, true] {
            for transpose_b in [false, true] {
                for kernel in KERNELS {
                    let spec = Matmul::new(m, n, k, transpose_a, transpose_b);
                    check(spec, kernel, m * k, k * n, m * n, seed);
                    seed += 1;
                }
            }
        }
    }
}

#[test]
fn vec4_kernels_on_aligned_awkward_shapes() {
    // Contiguous dimensions are multiples of 4 (the vec4 kernels' condition) but no dimension is
    // a multiple of a tile or of a K slice; K = 4 is shorter than every slice.
    let shapes = [(4, 4, 4), (36, 20, 12), (132, 136, 44), (68, 8, 100)];
    let mut seed = 1000;
    for &(m, n, k) in &shapes {
        for transpose_a in [false, true] {
            for transpose_b in [false, true] {
                let spec = Matmul::new(m, n, k, transpose_a, transpose_b);
                assert!(spec.vec4_aligned(), "{m}x{n}x{k} is vec4-aligned");
                for kernel in VEC4_KERNELS {
                    check(spec, kernel, m * k, k * n, m * n, seed);
                    seed += 1;
                }
            }
        }
    }
    // Odd row strides (a view of every other column block) are not aligned: Vec4 falls back.
    let mut spec = Matmul::new(9, 12, 8, false, false);
    spec.a.row_stride = 9;
    assert!(!spec.vec4_aligned());
    for kernel in [VEC4_KERNELS[0], VEC4_KERNELS[3]] {
        check(spec, kernel, 9 * 9, 8 * 12, 9 * 12, seed);
        seed += 1;
    }
}

#[test]
fn vec4_alignment_rules() {
    let plain = Matmul::new(64, 64, 64, false, false);
    assert!(plain.vec4_aligned());
    // The contiguous dimension must be a multiple of 4 ...
    assert!(!Matmul::new(64, 64, 62, false, true).vec4_aligned()); // k for A and Bᵀ
    assert!(!Matmul::new(62, 64, 64, true, false).vec4_aligned()); // m for Aᵀ
    assert!(!Matmul::new(64, 62, 64, false, false).vec4_aligned()); // n for B
    // ... but the others need not be.
    assert!(Matmul::new(61, 63, 64, false, true).vec4_aligned());
    assert!(Matmul::new(64, 64, 61, true, false).vec4_aligned());
    // Offsets and batch strides in use must be multiples of 4.
    let mut shifted = plain;
    shifted.b.offset = 2;
    assert!(!shifted.vec4_aligned());
    let mut batched = plain;
    batched.batch_inner = 2;
    batched.a.inner_stride = 4098;
    assert!(!batched.vec4_aligned());
    batched.a.inner_stride = 4096;
    assert!(batched.vec4_aligned());
    // A matrix with neither stride 1 (a strided view) is never vec4-aligned.
    let mut strided = plain;
    strided.a.col_stride = 2;
    assert!(!strided.vec4_aligned());
}

#[test]
fn auto_chooses_by_adapter_shape_and_layout() {
    let vec4_128 = MatmulKernel::Vec4 { bm: 128, bn: 128, bk: 8 };
    let vec4_tall = MatmulKernel::Vec4 { bm: 128, bn: 64, bk: 16 };
    let vec4_64 = MatmulKernel::Vec4 { bm: 64, bn: 64, bk: 16 };
    let choose = |m, n, k, transpose_b| Matmul::new(m, n, k, false, transpose_b).choose_kernel_for(true, true);
    // Software adapters always run the register-only kernel.
    let big = Matmul::new(4096, 4096, 4096, false, false);
    assert_eq!(big.choose_kernel_for(false, true), MatmulKernel::Direct);
    // Large outputs: 128×128 tiles; mid-sized ones (fewer than 256 such tiles): 64×64.
    assert_eq!(choose(4096, 4096, 4096, false), vec4_128);
    assert_eq!(choose(2048, 2048, 2048, false), vec4_128);
    assert_eq!(choose(16384, 1536, 384, true), vec4_128);
    assert_eq!(choose(16384, 384, 1536, true), vec4_128);
    assert_eq!(choose(1024, 1024, 1024, false), vec4_64);
    assert_eq!(choose(2048, 1024, 1024, false), vec4_tall);
    // 128-wide tiles that would be half padding (n = 64: attention values per head) are not.
    assert_eq!(choose(65536, 64, 256, false), vec4_tall);
    assert_eq!(choose(16384, 320, 384, true), vec4_tall);
    assert_eq!(choose(512, 512, 512, true), vec4_64);
    // Small outputs or short K: register-only.
    assert_eq!(choose(256, 256, 4096, false), MatmulKernel::Direct);
    assert_eq!(choose(4096, 4096, 16, false), MatmulKernel::Direct);
    // Layouts the vec4 kernels cannot read: the scalar tiled kernel (BK 8 unless
    // THITL_MATMUL_BK says otherwise), or register-only when even 128×128 tiles are few.
    assert!(matches!(choose(4096, 4096, 4095, true), MatmulKernel::Tiled { .. }));
    assert_eq!(choose(510, 510, 510, true), MatmulKernel::Direct);
    // THITL_MATMUL_VEC4=0 (the `false` here) keeps Auto on the scalar kernels.
    assert!(matches!(big.choose_kernel_for(true, false), MatmulKernel::Tiled { .. }));
}

#[test]
fn epilogue_bias_activations_alpha_and_accumulate() {
    let (m, n, k) = (37, 70, 29);
    let mut seed = 100;
    for kernel in KERNELS {
        for activation in [Activation::None, Activation::Gelu, Activation::Silu] {
            for accumulate in [false, true] {
                let mut spec = Matmul::new(m, n, k, false, true).with_epilogue(true, activation);
                spec.alpha = 0.37;
                spec.accumulate = accumulate;
                spec.bias = Some(3);
                check(spec, kernel, m * k, k * n, m * n, seed);
                seed += 1;
            }
        }
    }
    // The vec4 kernels share the epilogue; on an aligned shape.
    let (m, n, k) = (37, 68, 28);
    for kernel in [VEC4_KERNELS[0], VEC4_KERNELS[2], VEC4_KERNELS[3]] {
        for activation in [Activation::Gelu, Activation::Silu] {
            let mut spec = Matmul::new(m, n, k, false, true).with_epilogue(true, activation);
            spec.alpha = 0.37;
            spec.accumulate = activation == Activation::Silu;
            spec.bias = Some(3);
            assert!(spec.vec4_aligned());
            check(spec, kernel, m * k, k * n, m * n, seed);
            seed += 1;
        }
    }
}

#[test]
fn batched_views_like_attention_heads() {
    // q and k are column blocks of a packed [batch*tokens, 3*width] buffer; scores are
    // [batch, heads, tokens, tokens]: S = q · kᵀ per (batch, head), without copying.
    let (batch, heads, tokens, head_dim) = (2, 3, 19, 8);
    let width = heads * head_dim;
    let spec = Matmul {
        m: tokens,
        n: tokens,
        k: head_dim,
        batch_outer: batch,
        batch_inner: heads,
        a: Layout::row_major(3 * width).batched(tokens * 3 * width, head_dim),
        b: Layout::transposed(3 * width).at(width).batched(tokens * 3 * width, head_dim),
        c: Layout::row_major(tokens).batched(heads * tokens * tokens, tokens * tokens),
        alpha: 1.0 / (head_dim as f32).sqrt(),
        bias: None,
        activation: Activation::None,
        accumulate: false,
    };
    let packed = batch * tokens * 3 * width;
    // Head dims of 8 and offsets of whole heads: aligned, so the vec4 kernels run it too.
    assert!(spec.vec4_aligned());
    for (seed, kernel) in KERNELS.into_iter().chain(VEC4_KERNELS).enumerate() {
        check(spec, kernel, packed, packed, batch * heads * tokens * tokens, 200 + seed as u64);
    }
}

#[test]
fn cpu_reference_agrees_with_a_triple_loop_in_f64() {
    // The CPU reference itself is checked against the definition.
    let (m, n, k) = (9, 11, 13);
    let mut rng = Rng::new(7);
    let a = rng.vec(k * m); // stored transposed
    let b = rng.vec(k * n);
    let mut c = vec![0.0; m * n];
    Matmul::new(m, n, k, true, false).run_cpu(&a, &b, None, &mut c);
    for i in 0..m {
        for j in 0..n {
            let exact: f64 = (0..k).map(|p| a[p * m + i] as f64 * b[p * n + j] as f64).sum();
            assert!((c[i * n + j] as f64 - exact).abs() < 1e-5, "({i},{j})");
        }
    }
}

/// The definition of a batched matmul, in f64, written into `c` (which keeps every value the
/// product does not write).
fn triple_loop(spec: &Matmul, a: &[f32], b: &[f32], c: &mut [f32]) {
    let at = |l: &Layout, o: usize, i: usize, r: usize, col: usize| {
        l.offset + o * l.outer_stride + i * l.inner_stride + r * l.row_stride + col * l.col_stride
    };
    for o in 0..spec.batch_outer {
        for i in 0..spec.batch_inner {
            for r in 0..spec.m {
                for col in 0..spec.n {
                    let dot: f64 = (0..spec.k)
                        .map(|p| a[at(&spec.a, o, i, r, p)] as f64 * b[at(&spec.b, o, i, p, col)] as f64)
                        .sum();
                    let value = spec.activation.apply(spec.alpha * dot as f32);
                    let index = at(&spec.c, o, i, r, col);
                    c[index] = if spec.accumulate { c[index] + value } else { value };
                }
            }
        }
    }
}

#[test]
fn cpu_backend_runs_attention_batches_on_threads_like_the_definition() {
    // Attention-sized batches (64×64 by 32 per sample and head) are small enough for the CPU
    // backend to split the samples over threads. Each product below writes into part of a
    // packed or interleaved buffer; the values it does not own must stay as they were.
    let (batch, heads, tokens, head_dim) = (16, 4, 64, 32);
    let width = heads * head_dim;
    let packed = |offset| Layout::row_major(3 * width).at(offset).batched(tokens * 3 * width, head_dim);
    let packed_t = |offset| Layout::transposed(3 * width).at(offset).batched(tokens * 3 * width, head_dim);
    let scores = Layout::row_major(tokens).batched(heads * tokens * tokens, tokens * tokens);
    let scores_t = Layout::transposed(tokens).batched(heads * tokens * tokens, tokens * tokens);
    let base = Matmul {
        m: tokens,
        n: tokens,
        k: head_dim,
        batch_outer: batch,
        batch_inner: heads,
        a: packed(0),
        b: packed_t(width),
        c: scores,
        alpha: 0.25,
        bias: None,
        activation: Activation::None,
        accumulate: false,
    };
    let specs = [
        // S = α Q Kᵀ into [batch, heads, t, t]
        base,
        // dK = α dSᵀ Q into the K columns of the packed buffer (offset, interleaved heads)
        Matmul { n: head_dim, k: tokens, a: scores_t, b: packed(0), c: packed(width), ..base },
        // the same accumulated through an activation (the product goes through a scratch)
        Matmul {
            n: head_dim,
            k: tokens,
            a: scores_t,
            b: packed(0),
            c: packed(2 * width),
            accumulate: true,
            activation: Activation::Gelu,
            ..base
        },
    ];
    let mut rng = Rng::new(11);
    let qkv = rng.vec(batch * tokens * 3 * width);
    let probabilities = rng.vec(batch * heads * tokens * tokens);
    for (index, spec) in specs.iter().enumerate() {
        let (a, b) = if index == 0 { (&qkv, &qkv) } else { (&probabilities, &qkv) };
        let before =
            if index == 0 { rng.vec(batch * heads * tokens * tokens) } else { rng.vec(batch * tokens * 3 * width) };
        let mut expected = before.clone();
        triple_loop(spec, a, b, &mut expected);
        let mut c = before.clone();
        spec.run_cpu(a, b, None, &mut c);
        assert_close(&c, &expected, 1e-5, &format!("product {index}"));
    }
}

#[test]
fn split_k_for_long_k_and_small_outputs() {
    use gpu::device::{Device, WgpuDevice};
    let mut device = WgpuDevice::new(context());
    device.split_k = true;
    let mut rng = Rng::new(300);
    for (m, n, k, transpose_a) in [(13, 9, 4096, true), (40, 3, 6144, false)] {
        let mut spec = Matmul::new(m, n, k, transpose_a, false);
        spec.alpha = 0.5;
        spec.accumulate = true;
        let (splits, _, _) = device.split_k(&spec).expect("this shape is split");
        assert!(splits > 1);
        let a = rng.vec(m * k);
        let b = rng.vec(k * n);
        let c0 = rng.vec(m * n);
        let mut expected = c0.clone();
        spec.run_cpu(&a, &b, None, &mut expected);
        let (a_buffer, b_buffer, c_buffer) = (device.upload(&a), device.upload(&b), device.upload(&c0));
        device.matmul(&spec, &a_buffer, &b_buffer, None, &c_buffer);
        let actual = device.download(&c_buffer, m * n).unwrap();
        // Sums of 4096-6144 products in another order: f32 error ~√k·eps, still below 1e-4.
        assert_close(&actual, &expected, 1e-4, &format!("split-K {m}x{n}x{k} in {splits} slices"));
    }
}

#[test]
fn cpu_backend_sums_rows_for_one_row_products_like_the_definition() {
    // One-row products (a bias gradient 1ᵀ·dY) skip matrixmultiply: B's rows are added up with
    // the columns split over threads. Large enough to split, with a strided A row (a column of
    // a matrix), α, an offset C, and accumulation; the values of C around the row must stay.
    let (k, n) = (3000, 515);
    let mut rng = Rng::new(23);
    let a = rng.vec(k * 3);
    let b = rng.vec(k * n + 7);
    for accumulate in [false, true] {
        let spec = Matmul {
            a: Layout::transposed(3).at(1),
            b: Layout::row_major(n).at(7),
            c: Layout::row_major(n).at(5),
            alpha: 0.5,
            accumulate,
            ..Matmul::new(1, n, k, false, false)
        };
        let before = rng.vec(n + 9);
        let mut expected = before.clone();
        triple_loop(&spec, &a, &b, &mut expected);
        let mut c = before.clone();
        spec.run_cpu(&a, &b, None, &mut c);
        assert_close(&c, &expected, 1e-4, &format!("accumulate {accumulate}"));
        assert_eq!(c[..5], before[..5], "values before the row");
        assert_eq!(c[5 + n..], before[5 + n..], "values after the row");
    }
}

#[test]
fn cpu_gemm_agrees_with_the_definition_on_awkward_shapes() {
    // The CPU backend's f32 product on every kernel this processor runs (its own blocked kernels:
    // 6×16 tiles on AVX2 + FMA, 12×32 on AVX-512; matrixmultiply everywhere): edge tiles in m and
    // n, K across several packed blocks, every operand layout, a padded C, alpha, beta 0 over
    // garbage (NaN must not leak) and beta 1, with and without a bias per column; the larger
    // shapes are split over threads by rows and by columns, the small ones read their operands in
    // place; odd and even numbers of 16-column panels (the wide tile pairs them). The two blocked
    // kernels must give the same bits.
    use gpu::gemm::Kernel;
    let kernels = Kernel::choices();
    eprintln!("kernels here: {kernels:?}");
    let mut rng = Rng::new(29);
    for (m, k, n) in [
        (1, 1, 1),
        (7, 3, 17),
        (13, 300, 33),
        (300, 513, 70),
        (40, 4096, 100),
        (130, 257, 16),
        (50, 600, 96),
        // Small products read A (and a B with contiguous rows of whole tiles) in place.
        (64, 32, 64),
        (11, 40, 48),
    ] {
        for (transpose_a, transpose_b) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = rng.vec(m * k);
            let b = rng.vec(k * n);
            let (rsa, csa) = if transpose_a { (1, m) } else { (k, 1) };
            let (rsb, csb) = if transpose_b { (1, k) } else { (n, 1) };
            let rsc = n + 3;
            let bias = rng.vec(n);
            for (beta, with_bias) in [(0.0f32, false), (1.0, false), (0.0, true), (1.0, true)] {
                let before: Vec<f32> = if beta == 0.0 { vec![f32::NAN; m * rsc] } else { rng.vec(m * rsc) };
                let mut blocked: Vec<(Kernel, Vec<f32>)> = Vec::new();
                for &kernel in &kernels {
                    let mut c = before.clone();
                    // SAFETY: the strides address only the vectors' elements; bias has n values;
                    // the kernel is available.
                    let added = unsafe {
                        gpu::gemm::sgemm_bias_on(
                            kernel,
                            m,
                            k,
                            n,
                            0.7,
                            a.as_ptr(),
                            rsa as isize,
                            csa as isize,
                            b.as_ptr(),
                            rsb as isize,
                            csb as isize,
                            beta,
                            c.as_mut_ptr(),
                            rsc as isize,
                            1,
                            with_bias.then_some(&bias[..]),
                        )
                    };
                    // Where the bias was not added while writing C (matrixmultiply), add it here.
                    if with_bias && !added {
                        for i in 0..m {
                            for j in 0..n {
                                c[i * rsc + j] += bias[j];
                            }
                        }
                    }
                    let case = format!("{kernel:?} {m}×{k}×{n} ta {transpose_a} tb {transpose_b} beta {beta}");
                    for i in 0..m {
                        for j in 0..n {
                            let (mut exact, mut scale) = (0.0f64, 0.0f64);
                            for p in 0..k {
                                let term = a[i * rsa + p * csa] as f64 * b[p * rsb + j * csb] as f64;
                                exact += term;
                                scale += term.abs();
                            }
                            let mut want = 0.7 * exact;
                            if beta != 0.0 {
                                want += before[i * rsc + j] as f64;
                            }
                            if with_bias {
                                want += bias[j] as f64;
                            }
                            let got = c[i * rsc + j] as f64;
                            assert!((got - want).abs() <= 1e-5 * scale + 1e-6, "{case} at ({i},{j}): {got} vs {want}");
                        }
                        // The padding of each row of C stays as it was.
                        for j in n..rsc {
                            let (got, was) = (c[i * rsc + j], before[i * rsc + j]);
                            assert!(got.to_bits() == was.to_bits(), "{case}: padding changed at ({i},{j})");
                        }
                    }
                    if let Some(kernel) = kernel {
                        blocked.push((kernel, c));
                    }
                }
                if let [(wide, first), (narrow, second)] = &blocked[..] {
                    let differ = first.iter().zip(second).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
                    assert_eq!(differ, 0, "{wide:?} and {narrow:?} differ in {differ} values ({m}×{k}×{n})");
                }
            }
        }
    }
}
