//! The wgpu backend's [`ImageOps`] (Stable Diffusion's convolutions, norms and point-wise ops)
//! against the CPU references of `gpu::cpu::image` on random inputs and awkward shapes: odd
//! sizes, not multiples of the workgroups (256), the transpose tiles (16) or the vec4 width,
//! batches, strides 1 and 2, asymmetric padding, and lengths that need several rows of
//! workgroups. Tolerance 1e-4 relative (see `common::assert_close`) unless a comment says why.

mod common;

use common::{Rng, assert_close, context};
use gpu::cpu::image::{self, Conv2d, GroupNorm, MASKED, Unary};
use gpu::device::{Device, ImageOps, WgpuDevice};

fn device() -> WgpuDevice {
    WgpuDevice::new(context())
}

/// Runs `conv2d` on the device and compares with the direct convolution.
fn check_conv<D: ImageOps>(device: &D, spec: Conv2d, with_bias: bool, rng: &mut Rng, what: &str) {
    spec.validate().unwrap();
    let x = rng.vec(spec.input_len());
    let weight = rng.vec(spec.weight_len());
    let bias = rng.vec(spec.out_channels);
    let mut expected = vec![0.0; spec.output_len()];
    image::conv2d(&spec, &x, &weight, with_bias.then_some(&bias[..]), &mut expected);
    let (x_buffer, weight_buffer, bias_buffer) = (device.upload(&x), device.upload(&weight), device.upload(&bias));
    // Stale values in the output show if a position is not written.
    let y = device.upload(&vec![f32::NAN; spec.output_len()]);
    device.conv2d(&spec, &x_buffer, &weight_buffer, with_bias.then_some(&bias_buffer), &y);
    let actual = device.download(&y, spec.output_len()).unwrap();
    assert_close(&actual, &expected, 1e-4, &format!("{what}: {spec:?}"));
}

#[test]
fn conv2d_matches_the_direct_convolution() {
    let device = device();
    let mut rng = Rng::new(1);
    let strided = |batch, channels, out, height, width| Conv2d {
        stride: 2,
        pad_before: 0,
        pad_after: 1,
        ..Conv2d::same(batch, channels, out, height, width, 3)
    };
    let cases = [
        // 3×3 "same", batch 2, odd sizes.
        (Conv2d::same(2, 3, 5, 7, 9, 3), true),
        // The VAE encoder's downsampling: stride 2, padding (0, 1), even and odd sides.
        (strided(1, 4, 6, 11, 13), true),
        (strided(2, 5, 3, 8, 10), false),
        // 1×1, stride 1, no padding: the images are the matmul's B directly (batch 3).
        (Conv2d::same(3, 5, 7, 6, 10, 1), true),
        // 1×1 with stride 2 still unfolds.
        (Conv2d { stride: 2, ..Conv2d::same(2, 3, 4, 9, 7, 1) }, false),
        // 3×3 without padding, stride 2 with symmetric padding.
        (Conv2d { pad_before: 0, pad_after: 0, ..Conv2d::same(2, 2, 3, 10, 6, 3) }, true),
        (Conv2d { stride: 2, ..Conv2d::same(1, 3, 2, 9, 9, 3) }, true),
        // Larger planes: unfolded matrix of 72 × 1023 values (several hundred workgroups).
        (Conv2d::same(1, 8, 17, 33, 31, 3), false),
        (Conv2d::same(2, 16, 20, 24, 40, 3), true),
    ];
    for (spec, with_bias) in cases {
        check_conv(&device, spec, with_bias, &mut rng, "conv2d");
        // The CPU backend unfolds too (and multiplies with its gemm): the same reference.
        check_conv(&gpu::device::CpuDevice::<f32>::new(), spec, with_bias, &mut rng, "conv2d on the CPU backend");
    }
}

#[test]
fn conv2d_in_small_parts_matches_the_direct_convolution() {
    let mut device = device();
    let mut rng = Rng::new(2);
    let spec = Conv2d::same(3, 3, 5, 13, 11, 3); // 27 × 143 unfolded values per image.
    let per_image = spec.patch_len() * spec.out_height() * spec.out_width();
    // Column ranges of one image (36 columns, the last 35), two images then one, and one image
    // at a time.
    for limit in [27 * 37, 2 * per_image + 5, per_image, 27] {
        device.image_scratch_limit = Some(limit);
        assert!(device.image_scratch_values() <= limit);
        check_conv(&device, spec, true, &mut rng, &format!("conv2d with scratch limit {limit}"));
    }
    let strided = Conv2d { stride: 2, pad_before: 0, pad_after: 1, ..Conv2d::same(2, 4, 3, 12, 9, 3) };
    device.image_scratch_limit = Some(strided.patch_len() * 7);
    check_conv(&device, strided, true, &mut rng, "strided conv2d in parts of 4 columns");
}

#[test]
fn group_norm_matches_the_reference() {
    let device = device();
    let mut rng = Rng::new(3);
    // (batch, channels, spatial, groups): odd group sizes, one channel per group, groups longer
    // than a workgroup (3 × 1000 values, 5 × 257), a single value per channel.
    let shapes = [(2, 6, 35, 3), (1, 9, 7, 3), (3, 5, 1, 5), (2, 12, 1000, 4), (1, 15, 257, 3), (4, 32, 9, 32)];
    for (batch, channels, spatial, groups) in shapes {
        // Offsets larger than the spread: a common offset must cost no precision (E[x²] − mean²
        // in f32 would be off by ~1e-3 relative at offset 100).
        for (silu, offset) in [(false, 4.0), (true, 4.0), (true, 100.0)] {
            let spec = GroupNorm { batch, channels, spatial, groups, eps: 1e-5, silu };
            let x: Vec<f32> = rng.vec(spec.len()).iter().map(|v| offset + 2.0 * v).collect();
            let gamma: Vec<f32> = rng.vec(channels).iter().map(|v| 1.0 + v).collect();
            let beta = rng.vec(channels);
            let mut expected = vec![0.0; spec.len()];
            image::group_norm(&spec, &x, &gamma, &beta, &mut expected);
            let y = device.upload(&vec![f32::NAN; spec.len()]);
            device.group_norm(&spec, &device.upload(&x), &device.upload(&gamma), &device.upload(&beta), &y);
            assert_close(&device.download(&y, spec.len()).unwrap(), &expected, 1e-4, &format!("{spec:?}"));
        }
    }
}

#[test]
fn layer_norm_matches_the_reference() {
    let device = device();
    let mut rng = Rng::new(4);
    // 70,000 rows: more workgroups than one grid dimension holds (65,535).
    for (rows, width) in [(7, 1), (5, 3), (3, 300), (2, 769), (70_000, 3)] {
        let x: Vec<f32> = rng.vec(rows * width).iter().map(|v| v * 3.0 - 1.0).collect();
        let gamma = rng.vec(width);
        let beta = rng.vec(width);
        let mut expected = vec![0.0; rows * width];
        image::layer_norm(&x, &gamma, &beta, width, 1e-5, &mut expected);
        let y = device.upload(&vec![f32::NAN; rows * width]);
        let (x, gamma, beta) = (device.upload(&x), device.upload(&gamma), device.upload(&beta));
        device.layer_norm(&x, &gamma, &beta, &y, rows, width, 1e-5);
        let actual = device.download(&y, rows * width).unwrap();
        // Width 1: x − mean is exactly 0, so every output is β.
        assert_close(&actual, &expected, 1e-4, &format!("layer norm {rows} × {width}"));
    }
}

#[test]
fn upsample_nearest2x_matches_the_reference() {
    let device = device();
    let mut rng = Rng::new(5);
    for (planes, height, width) in [(1, 1, 1), (3, 5, 7), (6, 33, 17)] {
        let x = rng.vec(planes * height * width);
        let len = planes * 4 * height * width;
        let mut expected = vec![0.0; len];
        image::upsample_nearest2x(&x, planes, height, width, &mut expected);
        let y = device.upload(&vec![f32::NAN; len]);
        device.upsample_nearest2x(&device.upload(&x), &y, planes, height, width);
        assert_eq!(device.download(&y, len).unwrap(), expected, "upsample {planes} × {height} × {width}");
    }
}

#[test]
fn transpose_matches_the_reference() {
    let device = device();
    let mut rng = Rng::new(6);
    // Tiles of 16: smaller than a tile, partial edge tiles, a row and a column, and 66,000
    // matrices of one tile each (more workgroups than one grid dimension holds).
    for (batch, rows, cols) in [(1, 1, 1), (3, 17, 33), (1, 1, 300), (2, 320, 15), (2, 48, 64), (66_000, 2, 3)] {
        let len = batch * rows * cols;
        let x = rng.vec(len);
        let mut expected = vec![0.0; len];
        image::transpose(&x, batch, rows, cols, &mut expected);
        let y = device.upload(&vec![f32::NAN; len]);
        device.transpose(&device.upload(&x), &y, batch, rows, cols);
        assert_eq!(device.download(&y, len).unwrap(), expected, "transpose {batch} × {rows} × {cols}");
    }
}

#[test]
fn unary_activations_match_the_reference_and_stay_finite() {
    let device = device();
    let mut rng = Rng::new(7);
    // Random values where the activations bend, then extremes compared one by one (in one
    // assert_close they would inflate the mean magnitude its bound uses).
    let random: Vec<f32> = rng.vec(1000).iter().map(|v| v * 6.0).collect();
    let extremes =
        [0.0, -0.0, 1e-30, -1e-30, 30.0, -30.0, 88.0, -88.0, 100.0, -100.0, 1e4, -1e4, 1e30, -1e30, 3e38, -3e38];
    let x: Vec<f32> = random.iter().chain(&extremes).copied().collect();
    let len = x.len();
    let x_buffer = device.upload(&x);
    for op in [Unary::GeluErf, Unary::QuickGelu, Unary::Silu] {
        let expected: Vec<f32> = x.iter().map(|&v| op.apply(v)).collect();
        let y = device.upload(&vec![f32::NAN; len]);
        device.unary(op, &x_buffer, &y, len);
        let actual = device.download(&y, len).unwrap();
        assert_close(&actual[..random.len()], &expected[..random.len()], 1e-4, &format!("{op:?}"));
        for ((input, &output), &wanted) in x.iter().zip(&actual).zip(&expected).skip(random.len()) {
            // Tails below 1e-30 may be flushed to zero on a GPU.
            assert!(
                output.is_finite() && (output - wanted).abs() <= 1e-4 * wanted.abs() + 1e-30,
                "{op:?}({input}) = {output}, expected {wanted}"
            );
        }
    }
    // The exact GELU's erf approximation, value by value: Φ is off by at most ~1e-7 (plus f32
    // rounding), so x·Φ(x) by at most a few 1e-7 · max(1, |x|).
    let probe: Vec<f32> = (0..=1200).map(|i| -6.0 + 0.01 * i as f32).collect();
    let y = device.upload(&vec![f32::NAN; probe.len()]);
    device.unary(Unary::GeluErf, &device.upload(&probe), &y, probe.len());
    for (&v, &gelu) in probe.iter().zip(&device.download(&y, probe.len()).unwrap()) {
        let exact = 0.5 * v as f64 * (1.0 + image::erf(v as f64 / std::f64::consts::SQRT_2));
        assert!((gelu as f64 - exact).abs() <= 1e-6 * (v.abs() as f64).max(1.0), "gelu({v}) = {gelu}, exact {exact}");
    }
}

#[test]
fn geglu_matches_the_reference() {
    let device = device();
    let mut rng = Rng::new(8);
    for (rows, inner) in [(1, 1), (3, 5), (7, 300)] {
        let x: Vec<f32> = rng.vec(rows * 2 * inner).iter().map(|v| v * 4.0).collect();
        let mut expected = vec![0.0; rows * inner];
        image::geglu(&x, inner, &mut expected);
        let y = device.upload(&vec![f32::NAN; rows * inner]);
        device.geglu(&device.upload(&x), &y, rows, inner);
        assert_close(&device.download(&y, rows * inner).unwrap(), &expected, 1e-4, &format!("geglu {rows} × {inner}"));
    }
}

#[test]
fn add_repeated_matches_the_reference() {
    let device = device();
    let mut rng = Rng::new(9);
    // (len, inner, period): a per-channel bias, a per-(image, channel) vector, a period larger
    // than the values reached, a length that ends inside a run, and inner 1.
    for (len, inner, period) in [(2 * 5 * 7, 7, 5), (3 * 4 * 300, 300, 12), (10, 3, 8), (101, 10, 4), (999, 1, 13)] {
        let a = rng.vec(period);
        let y0 = rng.vec(len);
        let mut expected = y0.clone();
        image::add_repeated(&a, inner, period, &mut expected);
        let y = device.upload(&y0);
        device.add_repeated(&device.upload(&a), &y, len, inner, period);
        assert_close(&device.download(&y, len).unwrap(), &expected, 1e-6, &format!("add {len} {inner} {period}"));
    }
}

#[test]
fn causal_mask_matches_the_reference() {
    let device = device();
    let mut rng = Rng::new(10);
    for (matrices, size) in [(1, 1), (3, 5), (2, 77)] {
        let len = matrices * size * size;
        let y0 = rng.vec(len);
        let mut expected = y0.clone();
        image::causal_mask(&mut expected, size);
        assert_eq!(expected.iter().filter(|&&v| v == MASKED).count(), matrices * size * (size - 1) / 2);
        let y = device.upload(&y0);
        device.causal_mask(&y, matrices, size);
        assert_eq!(device.download(&y, len).unwrap(), expected, "causal mask {matrices} × {size}");
    }
}

#[test]
fn copy_at_runs_in_order_with_the_kernels() {
    let device = device();
    let mut rng = Rng::new(11);
    let x = rng.vec(50);
    let target0 = rng.vec(40);
    // Kernel → copy → kernel: the copy must see the first kernel's output and the second kernel
    // the copy's.
    let (source, target, result) = (device.zeros(50), device.upload(&target0), device.zeros(40));
    device.unary(Unary::Silu, &device.upload(&x), &source, 50);
    device.copy_at(&source, 13, &target, 7, 21);
    device.unary(Unary::QuickGelu, &target, &result, 40);
    let mut expected_target = target0.clone();
    for i in 0..21 {
        expected_target[7 + i] = Unary::Silu.apply(x[13 + i]);
    }
    let expected: Vec<f32> = expected_target.iter().map(|&v| Unary::QuickGelu.apply(v)).collect();
    assert_close(&device.download(&target, 40).unwrap(), &expected_target, 1e-5, "copied values");
    assert_close(&device.download(&result, 40).unwrap(), &expected, 1e-5, "after the copy");
}

#[test]
fn image_ops_agree_with_the_cpu_backend() {
    // The trait's two implementations on one small pipeline (conv → group norm + SiLU →
    // conv → upsample), as the VAE decoder chains them.
    use gpu::device::CpuDevice;
    let gpu = device();
    let cpu = CpuDevice::<f32>::new();
    let mut rng = Rng::new(12);
    let first = Conv2d::same(2, 3, 6, 9, 7, 3);
    let norm = GroupNorm { batch: 2, channels: 6, spatial: 63, groups: 3, eps: 1e-6, silu: true };
    let second = Conv2d::same(2, 6, 4, 9, 7, 1);
    let x = rng.vec(first.input_len());
    let (w1, b1) = (rng.vec(first.weight_len()), rng.vec(6));
    let (gamma, beta) = (rng.vec(6), rng.vec(6));
    let (w2, b2) = (rng.vec(second.weight_len()), rng.vec(4));
    fn run<D: ImageOps>(device: &D, inputs: [&[f32]; 7], specs: (Conv2d, GroupNorm, Conv2d)) -> Vec<f32> {
        let [x, w1, b1, gamma, beta, w2, b2] = inputs.map(|values| device.upload(values));
        let (first, norm, second) = specs;
        let (h1, h2, h3) =
            (device.output(first.output_len()), device.output(norm.len()), device.output(second.output_len()));
        device.conv2d(&first, &x, &w1, Some(&b1), &h1);
        device.group_norm(&norm, &h1, &gamma, &beta, &h2);
        device.conv2d(&second, &h2, &w2, Some(&b2), &h3);
        let up = device.output(4 * second.output_len());
        device.upsample_nearest2x(&h3, &up, 2 * 4, 9, 7);
        device.download(&up, 4 * second.output_len()).unwrap()
    }
    let inputs = [&x[..], &w1, &b1, &gamma, &beta, &w2, &b2];
    let expected = run(&cpu, inputs, (first, norm, second));
    let actual = run(&gpu, inputs, (first, norm, second));
    assert_close(&actual, &expected, 1e-4, "conv, group norm, conv, upsample");
}
