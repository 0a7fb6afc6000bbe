//! Every backward of the CPU reference against central finite differences, in f64 on tiny
//! shapes. The loss is Σ w ⊙ output with random w, so the output gradient is w.
//! Tolerance: |numeric − analytic| ≤ 1e-6 · (1 + |analytic|); with h = 1e-5 the central
//! difference's own error is O(h²·f''') + O(ε/h) ≈ 1e-10.

mod common;

use common::Rng;
use gpu::cpu::{self, Chunk};
use gpu::kernels::matmul::{Activation, Matmul};

fn random(rng: &mut Rng, len: usize) -> Vec<f64> {
    rng.vec(len).into_iter().map(f64::from).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn check(name: &str, x: &[f64], analytic: &[f64], loss: impl Fn(&[f64]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{name}: gradient length");
    let h = 1e-5;
    let mut probe = x.to_vec();
    for i in 0..x.len() {
        probe[i] = x[i] + h;
        let up = loss(&probe);
        probe[i] = x[i] - h;
        let down = loss(&probe);
        probe[i] = x[i];
        let numeric = (up - down) / (2.0 * h);
        assert!(
            (numeric - analytic[i]).abs() <= 1e-6 * (1.0 + analytic[i].abs()),
            "{name}: d/dx[{i}] numeric {numeric} vs analytic {}",
            analytic[i]
        );
    }
}

#[test]
fn activations() {
    let mut rng = Rng::new(1);
    let x: Vec<f64> = random(&mut rng, 9).iter().map(|v| 4.0 * v).collect();
    let w = random(&mut rng, 9);
    let analytic: Vec<f64> = x.iter().zip(&w).map(|(x, w)| w * cpu::gelu_derivative(*x)).collect();
    check("gelu", &x, &analytic, |x| dot(&x.iter().map(|v| cpu::gelu(*v)).collect::<Vec<_>>(), &w));
    let analytic: Vec<f64> = x.iter().zip(&w).map(|(x, w)| w * cpu::silu_derivative(*x)).collect();
    check("silu", &x, &analytic, |x| dot(&x.iter().map(|v| cpu::silu(*v)).collect::<Vec<_>>(), &w));
}

#[test]
fn layernorm_and_softmax() {
    let mut rng = Rng::new(2);
    let (rows, width) = (3, 5);
    let x = random(&mut rng, rows * width);
    let w = random(&mut rng, rows * width);
    let layernorm = |x: &[f64]| {
        let (mut out, mut rstd) = (vec![0.0; x.len()], vec![0.0; rows]);
        cpu::layernorm(x, width, &mut out, &mut rstd);
        (out, rstd)
    };
    let (normalized, rstd) = layernorm(&x);
    let mut dx = vec![0.0; x.len()];
    cpu::layernorm_backward(&normalized, &rstd, &w, width, &mut dx);
    check("layernorm", &x, &dx, |x| dot(&layernorm(x).0, &w));

    let scale = 0.8;
    let softmax = |x: &[f64]| {
        let mut out = vec![0.0; x.len()];
        cpu::softmax(x, width, scale, &mut out);
        out
    };
    let mut dx = vec![0.0; x.len()];
    cpu::softmax_backward(&softmax(&x), &w, width, scale, &mut dx);
    check("softmax", &x, &dx, |x| dot(&softmax(x), &w));
}

#[test]
fn adaln_modulate_and_gated_residual() {
    let mut rng = Rng::new(3);
    let (batch, tokens, width) = (2, 3, 4);
    let len = batch * tokens * width;
    let stride = 3 * width;
    let (shift, scale, gate) =
        (Chunk { offset: 0, stride }, Chunk { offset: width, stride }, Chunk { offset: 2 * width, stride });
    let x = random(&mut rng, len);
    let y = random(&mut rng, len);
    let modulation = random(&mut rng, batch * stride);
    let w = random(&mut rng, len);

    let modulate = |x: &[f64], m: &[f64]| {
        let mut out = vec![0.0; len];
        cpu::modulate(x, m, shift, scale, tokens, width, &mut out);
        out
    };
    let mut dx = vec![0.0; len];
    let mut dmod = vec![0.0; batch * stride];
    cpu::modulate_backward(&x, &modulation, shift, scale, tokens, width, &w, &mut dx, &mut dmod);
    check("modulate dx", &x, &dx, |x| dot(&modulate(x, &modulation), &w));
    check("modulate dmodulation", &modulation, &dmod, |m| dot(&modulate(&x, m), &w));

    let gated = |x: &[f64], y: &[f64], m: &[f64]| {
        let mut out = x.to_vec();
        cpu::gated_residual(&mut out, y, m, gate, tokens, width);
        out
    };
    let mut dy = vec![0.0; len];
    let mut dmod = vec![0.0; batch * stride];
    cpu::gated_residual_backward(&y, &modulation, gate, tokens, width, &w, &mut dy, &mut dmod);
    check("gated residual dx (identity)", &x, &w, |x| dot(&gated(x, &y, &modulation), &w));
    check("gated residual dy", &y, &dy, |y| dot(&gated(&x, y, &modulation), &w));
    check("gated residual dmodulation", &modulation, &dmod, |m| dot(&gated(&x, &y, m), &w));
}

#[test]
fn text_pooling_and_mse() {
    let mut rng = Rng::new(4);
    let (batch, max_tokens, width, vocabulary) = (3, 4, 3, 6);
    let ids: Vec<u32> = vec![1, 2, 0, 2, 0, 0, 0, 0, 5, 5, 3, 0];
    let table = random(&mut rng, vocabulary * width);
    let w = random(&mut rng, batch * width);
    for pooling in [cpu::TextPooling::Mean, cpu::TextPooling::Sum] {
        let pool = |table: &[f64]| {
            let mut out = vec![0.0; batch * width];
            cpu::embed_pool(&ids, max_tokens, table, width, pooling, &mut out);
            out
        };
        let mut dtable = vec![0.0; vocabulary * width];
        cpu::embed_pool_backward(&ids, max_tokens, &w, width, pooling, &mut dtable);
        check(&format!("embed {pooling:?}"), &table, &dtable, |t| dot(&pool(t), &w));
    }

    let prediction = random(&mut rng, 7);
    let target = random(&mut rng, 7);
    let mut dprediction = vec![0.0; 7];
    cpu::mse_backward(&prediction, &target, &mut dprediction);
    check("mse", &prediction, &dprediction, |p| cpu::mse(p, &target));
}

/// The matmul backward the model uses, written as matmuls with transposed operands:
/// Z = α·A·B + bias, C = act(Z): dZ = dC ⊙ act'(Z), dA = α·dZ·Bᵀ, dB = α·Aᵀ·dZ, dbias = 1ᵀ·dZ.
#[test]
fn matmul_with_epilogue() {
    let mut rng = Rng::new(5);
    let (m, n, k) = (3, 4, 5);
    let alpha = 0.7;
    for activation in [Activation::None, Activation::Gelu, Activation::Silu] {
        let a = random(&mut rng, m * k);
        let b = random(&mut rng, k * n);
        let bias = random(&mut rng, n);
        let w = random(&mut rng, m * n);
        let mut forward = Matmul::new(m, n, k, false, false).with_epilogue(true, activation);
        forward.alpha = alpha as f32;
        let run = |a: &[f64], b: &[f64], bias: &[f64]| {
            let mut c = vec![0.0; m * n];
            forward.run_cpu(a, b, Some(bias), &mut c);
            c
        };
        let mut pre = vec![0.0; m * n];
        Matmul { activation: Activation::None, ..forward }.run_cpu(&a, &b, Some(&bias), &mut pre);
        let dz: Vec<f64> = pre
            .iter()
            .zip(&w)
            .map(|(z, w)| match activation {
                Activation::None => *w,
                Activation::Gelu => w * cpu::gelu_derivative(*z),
                Activation::Silu => w * cpu::silu_derivative(*z),
            })
            .collect();
        let mut da = vec![0.0; m * k];
        Matmul { alpha: alpha as f32, ..Matmul::new(m, k, n, false, true) }.run_cpu(&dz, &b, None, &mut da);
        let mut db = vec![0.0; k * n];
        Matmul { alpha: alpha as f32, ..Matmul::new(k, n, m, true, false) }.run_cpu(&a, &dz, None, &mut db);
        let mut dbias = vec![0.0; n];
        Matmul::new(1, n, m, false, false).run_cpu(&vec![1.0; m], &dz, None, &mut dbias);
        let name = format!("{activation:?}");
        check(&format!("matmul dA {name}"), &a, &da, |a| dot(&run(a, &b, &bias), &w));
        check(&format!("matmul dB {name}"), &b, &db, |b| dot(&run(&a, b, &bias), &w));
        check(&format!("matmul dbias {name}"), &bias, &dbias, |bias| dot(&run(&a, &b, bias), &w));
    }
}
