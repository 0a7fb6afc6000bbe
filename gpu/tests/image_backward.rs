//! The input gradients of Stable Diffusion's operations ([`ImageBackward`]).
//!
//! First, every CPU reference of `gpu::cpu::image_backward` against central finite differences of
//! the corresponding FORWARD reference of `gpu::cpu::image`: the loss is L = Σ r·y with random r
//! (so ∂L/∂y = r), computed in f64 from the forward's f32 output. The derivative uses the
//! fourth-order stencil (8·(L(x+h) − L(x−h)) − (L(x+2h) − L(x−2h))) / 12h, and the inputs are
//! multiples of 2⁻¹² so that every probe x ± h, x ± 2h is exact in f32. What is left is the
//! rounding of the forward's outputs to f32 (about 6e-8 relative each, divided by h) and, for the
//! nonlinear operations, the stencil's O(h⁴) truncation. Linear operations (convolution,
//! upsampling) have no truncation error and use a large step. Each assertion states its
//! tolerance as |numeric − analytic| ≤ atol + rtol·|analytic|.
//!
//! Then the backends against those references: the CPU backend (its convolution runs the gemm and
//! a col2im) and the wgpu backend's WGSL kernels on awkward shapes (odd sizes, strides 1 and 2,
//! asymmetric padding, groups longer than a workgroup, offsets far from zero, the convolution in
//! several parts of its scratch buffer, more workgroups than one grid dimension holds), with the
//! tolerance of `common::assert_close` given at each call.

mod common;

use common::{Rng, assert_close, context};
use gpu::cpu::image::{self, Conv2d, GroupNorm, Unary};
use gpu::cpu::image_backward as backward;
use gpu::device::{CpuDevice, Device, ImageBackward, WgpuDevice};

/// `len` random values in [-scale, scale) + offset, rounded to multiples of 2⁻¹².
fn inputs(rng: &mut Rng, len: usize, scale: f32, offset: f32) -> Vec<f32> {
    rng.vec(len).into_iter().map(|v| ((v * scale + offset) * 4096.0).round() / 4096.0).collect()
}

fn dot(r: &[f32], y: &[f32]) -> f64 {
    r.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// ∂L/∂x by the fourth-order central stencil with step `h` (a power of two).
fn numeric_gradient(x: &[f32], h: f32, loss: impl Fn(&[f32]) -> f64) -> Vec<f64> {
    let mut probe = x.to_vec();
    (0..x.len())
        .map(|i| {
            let mut at = |step: f32| {
                probe[i] = x[i] + step;
                let value = loss(&probe);
                probe[i] = x[i];
                value
            };
            let (near, far) = (at(h) - at(-h), at(2.0 * h) - at(-2.0 * h));
            (8.0 * near - far) / (12.0 * h as f64)
        })
        .collect()
}

/// Asserts |numeric − analytic| ≤ atol + rtol·|analytic| for every value.
fn check(name: &str, analytic: &[f32], numeric: &[f64], atol: f64, rtol: f64) {
    assert_eq!(analytic.len(), numeric.len(), "{name}: gradient length");
    assert!(analytic.iter().any(|&v| v != 0.0), "{name}: an all-zero gradient checks nothing");
    let mut worst = 0f64;
    for (i, (&a, &n)) in analytic.iter().zip(numeric).enumerate() {
        let error = (n - a as f64).abs();
        worst = worst.max(error / (atol + rtol * (a as f64).abs()));
        assert!(
            error <= atol + rtol * (a as f64).abs(),
            "{name}: d/dx[{i}] numeric {n} vs analytic {a} (tolerance {atol} + {rtol}·|analytic|)"
        );
    }
    eprintln!("{name}: worst error {worst:.3} of the tolerance");
}

fn conv_cases() -> Vec<Conv2d> {
    let strided = |batch, channels, out, height, width| Conv2d {
        stride: 2,
        pad_before: 0,
        pad_after: 1,
        ..Conv2d::same(batch, channels, out, height, width, 3)
    };
    vec![
        // 3×3 "same", batch 2, odd sides.
        Conv2d::same(2, 3, 4, 7, 9, 3),
        // The VAE encoder's downsampling: stride 2, padding (0, 1), odd and even sides.
        strided(1, 3, 5, 9, 8),
        strided(2, 2, 3, 6, 7),
        // 1×1 stride 1 (the direct product) and 1×1 stride 2 (every other input unread: zero).
        Conv2d::same(2, 4, 3, 5, 7, 1),
        Conv2d { stride: 2, ..Conv2d::same(1, 3, 2, 7, 6, 1) },
        // 3×3 stride 2 with symmetric padding, and without padding.
        Conv2d { stride: 2, ..Conv2d::same(1, 2, 3, 9, 7, 3) },
        Conv2d { pad_before: 0, pad_after: 0, ..Conv2d::same(1, 3, 2, 6, 8, 3) },
    ]
}

#[test]
fn conv2d_input_grad_matches_finite_differences() {
    let mut rng = Rng::new(1);
    for spec in conv_cases() {
        spec.validate().unwrap();
        let x = inputs(&mut rng, spec.input_len(), 2.0, 0.0);
        let weight = rng.vec(spec.weight_len());
        let r = rng.vec(spec.output_len());
        let mut dx = vec![f32::NAN; spec.input_len()];
        backward::conv2d_input_grad(&spec, &r, &weight, &mut dx);
        let numeric = numeric_gradient(&x, 0.5, |x| {
            let mut y = vec![0.0; spec.output_len()];
            image::conv2d(&spec, x, &weight, None, &mut y);
            dot(&r, &y)
        });
        // Linear in x: the stencil is exact, and only the f32 rounding of the few outputs a probe
        // changes (≲ 9 taps · 4 channels · 6e-8 · |y| ≈ 1e-5, over h) remains.
        check(&format!("conv2d {spec:?}"), &dx, &numeric, 1e-5, 1e-5);
    }
}

#[test]
fn group_norm_backward_matches_finite_differences() {
    let mut rng = Rng::new(2);
    let spec = |batch, channels, spatial, groups, silu| GroupNorm { batch, channels, spatial, groups, eps: 1e-5, silu };
    let cases = [
        spec(2, 6, 5, 3, false),
        spec(2, 6, 5, 3, true),
        // One group of everything, and one channel per group.
        spec(1, 4, 7, 1, true),
        spec(2, 3, 9, 3, false),
        spec(1, 8, 3, 2, true),
    ];
    for spec in cases {
        // Off-centre inputs (negative and positive), γ of both signs.
        let x = inputs(&mut rng, spec.len(), 2.0, 0.5);
        let gamma = rng.vec(spec.channels).iter().map(|v| 1.5 * v).collect::<Vec<_>>();
        let beta = rng.vec(spec.channels);
        let r = rng.vec(spec.len());
        let mut dx = vec![f32::NAN; spec.len()];
        backward::group_norm_backward(&spec, &x, &gamma, &beta, &r, &mut dx);
        let numeric = numeric_gradient(&x, 1.0 / 128.0, |x| {
            let mut y = vec![0.0; spec.len()];
            image::group_norm(&spec, x, &gamma, &beta, &mut y);
            dot(&r, &y)
        });
        // A probe changes its whole group (≤ 27 values): rounding ≈ √27 · 6e-8 / h ≈ 4e-5 at
        // worst; truncation h⁴ · L⁽⁵⁾ / 30 ≈ 1e-9 · L⁽⁵⁾.
        check(&format!("group norm {spec:?}"), &dx, &numeric, 2e-4, 1e-3);
    }
}

#[test]
fn layer_norm_backward_matches_finite_differences() {
    let mut rng = Rng::new(3);
    for (rows, width, eps) in [(3, 7, 1e-5), (2, 16, 1e-6), (4, 1, 1e-5)] {
        let x = inputs(&mut rng, rows * width, 3.0, -0.5);
        let gamma = rng.vec(width).iter().map(|v| 1.5 * v).collect::<Vec<_>>();
        let beta = rng.vec(width);
        let r = rng.vec(rows * width);
        let mut dx = vec![f32::NAN; rows * width];
        backward::layer_norm_backward(&x, &gamma, &r, width, eps, &mut dx);
        let numeric = numeric_gradient(&x, 1.0 / 128.0, |x| {
            let mut y = vec![0.0; rows * width];
            image::layer_norm(x, &gamma, &beta, width, eps, &mut y);
            dot(&r, &y)
        });
        // As for the group norm: a probe changes one row of ≤ 16 values.
        let name = format!("layer norm {rows}×{width}");
        if width == 1 {
            // A row of one value normalises to 0 whatever x is: the gradient is exactly zero.
            assert!(dx.iter().all(|&v| v == 0.0) && numeric.iter().all(|&v| v == 0.0), "{name}");
        } else {
            check(&name, &dx, &numeric, 2e-4, 1e-3);
        }
    }
}

#[test]
fn upsample_backward_matches_finite_differences() {
    let mut rng = Rng::new(4);
    for (planes, height, width) in [(3, 5, 3), (1, 1, 1), (2, 4, 7)] {
        let x = inputs(&mut rng, planes * height * width, 2.0, 0.0);
        let r = rng.vec(planes * 4 * height * width);
        let mut dx = vec![f32::NAN; x.len()];
        backward::upsample_nearest2x_backward(&r, planes, height, width, &mut dx);
        let numeric = numeric_gradient(&x, 0.5, |x| {
            let mut y = vec![0.0; 4 * x.len()];
            image::upsample_nearest2x(x, planes, height, width, &mut y);
            dot(&r, &y)
        });
        // Linear, and the forward copies values exactly: only the rounding of the analytic sum
        // of four values to f32 (half an ulp, 6e-8 relative) remains.
        check(&format!("upsample {planes}×{height}×{width}"), &dx, &numeric, 1e-7, 1e-7);
    }
}

#[test]
fn unary_backward_matches_finite_differences() {
    let mut rng = Rng::new(5);
    for op in [Unary::GeluErf, Unary::QuickGelu, Unary::Silu] {
        // Both tails and the curved middle: [-6, 6).
        let mut x = inputs(&mut rng, 61, 6.0, 0.0);
        x.extend([0.0, -0.5, 0.5, -3.0, 3.0]);
        let r = rng.vec(x.len());
        let mut dx = vec![f32::NAN; x.len()];
        backward::unary_backward(op, &x, &r, &mut dx);
        let numeric = numeric_gradient(&x, 1.0 / 128.0, |x| {
            let y: Vec<f32> = x.iter().map(|&v| op.apply(v)).collect();
            dot(&r, &y)
        });
        // One output per probe: rounding ≈ 6e-8 · 6 / h ≈ 5e-5 at |x| = 6.
        check(&format!("{op:?}"), &dx, &numeric, 1e-4, 1e-4);
    }
}

#[test]
fn geglu_backward_matches_finite_differences() {
    let mut rng = Rng::new(6);
    for (rows, inner) in [(3, 5), (1, 1), (2, 8)] {
        let x = inputs(&mut rng, rows * 2 * inner, 3.0, 0.0);
        let r = rng.vec(rows * inner);
        let mut dx = vec![f32::NAN; x.len()];
        backward::geglu_backward(&x, &r, inner, &mut dx);
        let numeric = numeric_gradient(&x, 1.0 / 128.0, |x| {
            let mut y = vec![0.0; rows * inner];
            image::geglu(x, inner, &mut y);
            dot(&r, &y)
        });
        // One output per probe, as for the activations.
        check(&format!("geglu {rows}×{inner}"), &dx, &numeric, 1e-4, 1e-4);
    }
}

/// Runs every [`ImageBackward`] operation of `device` on random inputs and compares with the
/// references (outputs pre-filled with NaN: a value not written shows).
fn check_device<D: ImageBackward>(device: &D, rng: &mut Rng, convs: &[Conv2d], tolerance: f32, what: &str) {
    let nan = |len: usize| device.upload(&vec![f32::NAN; len]);
    let run = |len: usize, op: &dyn Fn(&D::Buffer)| {
        let out = nan(len);
        op(&out);
        device.download(&out, len).unwrap()
    };
    for spec in convs {
        let dy = rng.vec(spec.output_len());
        let weight = rng.vec(spec.weight_len());
        let mut expected = vec![0.0; spec.input_len()];
        backward::conv2d_input_grad(spec, &dy, &weight, &mut expected);
        let (dy_buffer, weight_buffer) = (device.upload(&dy), device.upload(&weight));
        let actual = run(spec.input_len(), &|dx| device.conv2d_input_grad(spec, &dy_buffer, &weight_buffer, dx));
        assert_close(&actual, &expected, tolerance, &format!("{what}: conv2d input grad {spec:?}"));
    }
    for spec in [
        GroupNorm { batch: 2, channels: 6, spatial: 37, groups: 3, eps: 1e-5, silu: true },
        GroupNorm { batch: 1, channels: 64, spatial: 100, groups: 32, eps: 1e-6, silu: false },
        GroupNorm { batch: 1, channels: 4, spatial: 700, groups: 2, eps: 1e-5, silu: true },
    ] {
        let x = inputs(rng, spec.len(), 2.0, 0.5);
        let (gamma, beta, dy) = (rng.vec(spec.channels), rng.vec(spec.channels), rng.vec(spec.len()));
        let mut expected = vec![0.0; spec.len()];
        backward::group_norm_backward(&spec, &x, &gamma, &beta, &dy, &mut expected);
        let buffers = [&x, &gamma, &beta, &dy].map(|values| device.upload(values));
        let actual = run(spec.len(), &|dx| {
            device.group_norm_backward(&spec, &buffers[0], &buffers[1], &buffers[2], &buffers[3], dx)
        });
        assert_close(&actual, &expected, tolerance, &format!("{what}: group norm backward {spec:?}"));
    }
    for (rows, width) in [(5, 77), (3, 320), (2, 1000)] {
        let x = inputs(rng, rows * width, 3.0, -0.5);
        let (gamma, dy) = (rng.vec(width), rng.vec(rows * width));
        let mut expected = vec![0.0; rows * width];
        backward::layer_norm_backward(&x, &gamma, &dy, width, 1e-5, &mut expected);
        let buffers = [&x, &gamma, &dy].map(|values| device.upload(values));
        let actual = run(rows * width, &|dx| {
            device.layer_norm_backward(&buffers[0], &buffers[1], &buffers[2], dx, rows, width, 1e-5)
        });
        assert_close(&actual, &expected, tolerance, &format!("{what}: layer norm backward {rows}×{width}"));
    }
    for (planes, height, width) in [(3, 5, 7), (2, 33, 17)] {
        let len = planes * height * width;
        let dy = rng.vec(4 * len);
        let mut expected = vec![0.0; len];
        backward::upsample_nearest2x_backward(&dy, planes, height, width, &mut expected);
        let dy_buffer = device.upload(&dy);
        let actual = run(len, &|dx| device.upsample_nearest2x_backward(&dy_buffer, dx, planes, height, width));
        assert_close(&actual, &expected, tolerance, &format!("{what}: upsample backward {planes}×{height}×{width}"));
    }
    for op in [Unary::GeluErf, Unary::QuickGelu, Unary::Silu] {
        let len = 1000;
        let (x, dy) = (inputs(rng, len, 8.0, 0.0), rng.vec(len));
        let mut expected = vec![0.0; len];
        backward::unary_backward(op, &x, &dy, &mut expected);
        let (x_buffer, dy_buffer) = (device.upload(&x), device.upload(&dy));
        let actual = run(len, &|dx| device.unary_backward(op, &x_buffer, &dy_buffer, dx, len));
        assert_close(&actual, &expected, tolerance, &format!("{what}: {op:?} backward"));
    }
    for (rows, inner) in [(3, 5), (7, 300)] {
        let (x, dy) = (inputs(rng, rows * 2 * inner, 3.0, 0.0), rng.vec(rows * inner));
        let mut expected = vec![0.0; x.len()];
        backward::geglu_backward(&x, &dy, inner, &mut expected);
        let (x_buffer, dy_buffer) = (device.upload(&x), device.upload(&dy));
        let actual = run(x.len(), &|dx| device.geglu_backward(&x_buffer, &dy_buffer, dx, rows, inner));
        assert_close(&actual, &expected, tolerance, &format!("{what}: geglu backward {rows}×{inner}"));
    }
}

#[test]
fn the_cpu_backend_matches_the_references() {
    // Its convolution goes through the gemm and a col2im, the rest through the references in
    // parts; 1e-5 relative covers the gemm's f32 accumulation.
    let mut rng = Rng::new(7);
    let mut convs = conv_cases();
    convs.push(Conv2d::same(2, 16, 20, 24, 40, 3));
    check_device(&CpuDevice::<f32>::new(), &mut rng, &convs, 1e-5, "cpu");
}

#[test]
fn wgpu_matches_the_references() {
    // f32 sums in a different order (the matmul's, the workgroup tree's): 1e-4 relative, as the
    // forward kernels' tests.
    let mut rng = Rng::new(8);
    let mut convs = conv_cases();
    // Larger planes: unfolded gradients of 144 × 960 values, batch 2 in one part.
    convs.push(Conv2d::same(2, 16, 20, 24, 40, 3));
    convs.push(Conv2d { stride: 2, pad_before: 0, pad_after: 1, ..Conv2d::same(1, 8, 12, 33, 31, 3) });
    check_device(&WgpuDevice::new(context()), &mut rng, &convs, 1e-4, "wgpu");
}

#[test]
fn wgpu_conv2d_input_grad_in_small_parts() {
    let mut device = WgpuDevice::new(context());
    let mut rng = Rng::new(9);
    let spec = Conv2d::same(3, 3, 5, 13, 11, 3); // 27 × 143 unfolded values per image.
    let strided = Conv2d { stride: 2, pad_before: 0, pad_after: 1, ..Conv2d::same(2, 4, 3, 12, 9, 3) };
    let per_image = spec.patch_len() * spec.out_height() * spec.out_width();
    // Column ranges of one image (36 columns, the last 35; single columns), two images then one,
    // one image at a time; the strided convolution in parts of 4 columns (its rows overlap).
    for (spec, limit) in [
        (spec, 27 * 37),
        (spec, 2 * per_image + 5),
        (spec, per_image),
        (spec, 27),
        (strided, strided.patch_len() * 7),
        (strided, strided.patch_len()),
    ] {
        device.image_scratch_limit = Some(limit);
        assert!(device.image_scratch_values() <= limit);
        let dy = rng.vec(spec.output_len());
        let weight = rng.vec(spec.weight_len());
        let mut expected = vec![0.0; spec.input_len()];
        backward::conv2d_input_grad(&spec, &dy, &weight, &mut expected);
        // NaN first: a value no part writes (or adds to a NaN) shows.
        let dx = device.upload(&vec![f32::NAN; spec.input_len()]);
        device.conv2d_input_grad(&spec, &device.upload(&dy), &device.upload(&weight), &dx);
        let actual = device.download(&dx, spec.input_len()).unwrap();
        assert_close(&actual, &expected, 1e-4, &format!("conv2d input grad with scratch limit {limit}: {spec:?}"));
    }
}

#[test]
fn wgpu_norm_backward_with_offsets_long_groups_and_many_workgroups() {
    let device = WgpuDevice::new(context());
    let mut rng = Rng::new(10);
    // (batch, channels, spatial, groups): groups longer than a workgroup (3 × 1000, 5 × 257),
    // one channel per group, one value per channel, and 66,000 groups (more workgroups than one
    // grid dimension holds).
    let shapes = [(2, 12, 1000, 4), (1, 15, 257, 3), (4, 32, 9, 32), (3, 5, 1, 5), (33_000, 4, 3, 2)];
    for (batch, channels, spatial, groups) in shapes {
        // Offsets larger than the spread: the statistics are taken around x[base], as in the
        // forward, so a common offset costs no precision (lavapipe runs the many groups slowly:
        // one case for them).
        let cases: &[(bool, f32)] =
            if batch * groups > 65_535 { &[(true, 4.0)] } else { &[(false, 4.0), (true, 4.0), (true, 100.0)] };
        for &(silu, offset) in cases {
            let spec = GroupNorm { batch, channels, spatial, groups, eps: 1e-5, silu };
            let x: Vec<f32> = rng.vec(spec.len()).iter().map(|v| offset + 2.0 * v).collect();
            let gamma: Vec<f32> = rng.vec(channels).iter().map(|v| 1.0 + v).collect();
            let (beta, dy) = (rng.vec(channels), rng.vec(spec.len()));
            let mut expected = vec![0.0; spec.len()];
            backward::group_norm_backward(&spec, &x, &gamma, &beta, &dy, &mut expected);
            let dx = device.upload(&vec![f32::NAN; spec.len()]);
            let [x, gamma, beta, dy] = [&x, &gamma, &beta, &dy].map(|values| device.upload(values));
            device.group_norm_backward(&spec, &x, &gamma, &beta, &dy, &dx);
            let actual = device.download(&dx, spec.len()).unwrap();
            assert_close(&actual, &expected, 1e-4, &format!("{spec:?} offset {offset}"));
        }
    }
    // 70,000 rows: more workgroups than one grid dimension holds; a row of one value has a zero
    // gradient.
    for (rows, width) in [(7, 1), (3, 300), (2, 769), (70_000, 3)] {
        let x = inputs(&mut rng, rows * width, 3.0, -1.0);
        let (gamma, dy) = (rng.vec(width), rng.vec(rows * width));
        let mut expected = vec![0.0; rows * width];
        backward::layer_norm_backward(&x, &gamma, &dy, width, 1e-5, &mut expected);
        let dx = device.upload(&vec![f32::NAN; rows * width]);
        let [x, gamma, dy] = [&x, &gamma, &dy].map(|values| device.upload(values));
        device.layer_norm_backward(&x, &gamma, &dy, &dx, rows, width, 1e-5);
        let actual = device.download(&dx, rows * width).unwrap();
        assert_close(&actual, &expected, 1e-4, &format!("layer norm backward {rows} × {width}"));
    }
}

#[test]
fn wgpu_activation_derivatives_stay_finite_at_extremes() {
    let device = WgpuDevice::new(context());
    let x = [0.0, -0.0, 1e-30, -1e-30, 30.0, -30.0, 88.0, -88.0, 100.0, -100.0, 1e4, -1e4, 1e30, -1e30, 3e38, -3e38];
    let dy = vec![1.0f32; x.len()];
    let (x_buffer, dy_buffer) = (device.upload(&x), device.upload(&dy));
    for op in [Unary::GeluErf, Unary::QuickGelu, Unary::Silu] {
        let mut expected = vec![0.0; x.len()];
        backward::unary_backward(op, &x, &dy, &mut expected);
        let dx = device.upload(&vec![f32::NAN; x.len()]);
        device.unary_backward(op, &x_buffer, &dy_buffer, &dx, x.len());
        for ((input, output), wanted) in x.iter().zip(device.download(&dx, x.len()).unwrap()).zip(expected) {
            // The derivatives are 0 or 1 out there (or 1/2 at 0); tails below 1e-30 may be
            // flushed to zero on a GPU.
            assert!(
                output.is_finite() && (output - wanted).abs() <= 1e-4 * wanted.abs() + 1e-30,
                "{op:?}′({input}) = {output}, expected {wanted}"
            );
        }
    }
}
