//! Every non-matmul kernel against its CPU reference on random inputs and awkward shapes
//! (smaller than a workgroup, not a multiple of it). Tolerance 1e-4 relative (see
//! `common::assert_close`) unless a comment says why a kernel needs more.

mod common;

use common::{Rng, assert_close, context};
use gpu::cpu::{self, AdamW, Chunk, DdimStep, Patches};
use gpu::kernels::adaln::AdaLn;
use gpu::kernels::elementwise::Elementwise;
use gpu::kernels::embed::{TextEmbedding, TextPooling, timestep_embedding};
use gpu::kernels::noise::{NoiseStream, upload_table};
use gpu::kernels::{adamw, patchify, reduce, rows};

fn upload(values: &[f32]) -> wgpu::Buffer {
    context().storage_buffer_with(values)
}

fn download(buffer: &wgpu::Buffer, len: usize) -> Vec<f32> {
    context().read_words(buffer, len).unwrap()
}

#[test]
fn elementwise_ops() {
    let context = context();
    let mut rng = Rng::new(11);
    for len in [1, 255, 257, 1000] {
        let a: Vec<f32> = rng.vec(len).iter().map(|v| v * 6.0).collect();
        let b = rng.vec(len);
        let y0 = rng.vec(len);
        let alpha_bar: Vec<f32> = (0..3).map(|_| 0.5 + 0.4 * rng.uniform()).collect();
        let per_sample = len.div_ceil(3);
        let period = 7.min(len);
        let step = DdimStep { alpha_bar: 0.3, alpha_bar_prev: 0.6, eta: 0.5 };
        let cases: Vec<(Elementwise, Vec<f32>)> = vec![
            (Elementwise::Gelu, a.iter().map(|x| cpu::gelu(*x)).collect()),
            (Elementwise::Silu, a.iter().map(|x| cpu::silu(*x)).collect()),
            (Elementwise::GeluBackward, a.iter().zip(&b).map(|(x, g)| g * cpu::gelu_derivative(*x)).collect()),
            (Elementwise::SiluBackward, a.iter().zip(&b).map(|(x, g)| g * cpu::silu_derivative(*x)).collect()),
            (Elementwise::AddBroadcast { period }, y0.iter().enumerate().map(|(i, y)| y + a[i % period]).collect()),
            (Elementwise::Combine { s0: -0.5, s1: 1.5 }, {
                let mut out = vec![0.0; len];
                cpu::guidance(&a, &b, 1.5, &mut out);
                out
            }),
            (Elementwise::Ddim { coefficients: step.coefficients() }, {
                let mut x = y0.clone();
                cpu::ddim_update(step, &mut x, &a, &b);
                x
            }),
            (Elementwise::AddNoise { per_sample }, {
                let mut out = vec![0.0; len];
                let padded: Vec<f32> = (0..per_sample * 3).map(|i| a.get(i).copied().unwrap_or(0.0)).collect();
                let noise: Vec<f32> = (0..per_sample * 3).map(|i| b.get(i).copied().unwrap_or(0.0)).collect();
                let mut full = vec![0.0; per_sample * 3];
                cpu::add_noise(&padded, &noise, &alpha_bar, &mut full);
                out.copy_from_slice(&full[..len]);
                out
            }),
            (Elementwise::ScaledDifference { scale: 2.0 / len as f32 }, {
                let mut out = vec![0.0; len];
                cpu::mse_backward(&a, &b, &mut out);
                out
            }),
            // c holds one weight per sample of `per_sample` values.
            (
                Elementwise::WeightedDifference { per_sample, scale: 0.75 },
                (0..len).map(|i| 0.75 * alpha_bar[i / per_sample] * (a[i] - b[i])).collect(),
            ),
            // a's first values act as per-row weights, b's first `period` values as the vector.
            (
                Elementwise::MaskedRowAdd { period },
                y0.iter().enumerate().map(|(i, y)| y + a[i / period] * b[i % period]).collect(),
            ),
        ];
        let (a_buffer, b_buffer, c_buffer) = (upload(&a), upload(&b), upload(&alpha_bar));
        for (op, expected) in cases {
            let y = upload(&y0);
            let mut recorder = context.recorder();
            op.record(&mut recorder, &a_buffer, &b_buffer, &c_buffer, &y, len);
            recorder.submit();
            // exp/tanh/sqrt are not correctly rounded on GPUs: a few ulps, far below 1e-4.
            assert_close(&download(&y, len), &expected, 1e-4, &format!("{op:?} len {len}"));
        }
        // Guidance on a doubled batch [conditional; unconditional].
        let both: Vec<f32> = a.iter().chain(&b).copied().collect();
        let expected: Vec<f32> = (0..len).map(|i| b[i] + 2.5 * (a[i] - b[i])).collect();
        let (both_b, y) = (upload(&both), upload(&y0));
        let mut recorder = context.recorder();
        Elementwise::GuidanceHalves { scale: 2.5 }.record(&mut recorder, &both_b, &both_b, &both_b, &y, len);
        recorder.submit();
        assert_close(&download(&y, len), &expected, 1e-4, &format!("guidance halves len {len}"));
    }
}

#[test]
fn layernorm_and_softmax_forward_and_backward() {
    let context = context();
    let mut rng = Rng::new(12);
    for (rows_count, width) in [(1, 1), (3, 5), (7, 64), (5, 131), (2, 300)] {
        let len = rows_count * width;
        let x: Vec<f32> = rng.vec(len).iter().map(|v| 3.0 * v + 0.5).collect();
        let dy = rng.vec(len);
        let mut normalized = vec![0.0; len];
        let mut rstd = vec![0.0; rows_count];
        cpu::layernorm(&x, width, &mut normalized, &mut rstd);
        let mut dx = vec![0.0; len];
        cpu::layernorm_backward(&normalized, &rstd, &dy, width, &mut dx);
        let scale = 0.7;
        let mut probabilities = vec![0.0; len];
        cpu::softmax(&x, width, scale, &mut probabilities);
        let mut dsoft = vec![0.0; len];
        cpu::softmax_backward(&probabilities, &dy, width, scale, &mut dsoft);

        let (x_b, dy_b) = (upload(&x), upload(&dy));
        let (n_b, r_b, dx_b) =
            (context.storage_buffer(len), context.storage_buffer(rows_count), context.storage_buffer(len));
        let (p_b, ds_b) = (context.storage_buffer(len), context.storage_buffer(len));
        let mut recorder = context.recorder();
        rows::layernorm(&mut recorder, &x_b, &n_b, &r_b, rows_count, width);
        rows::layernorm_backward(&mut recorder, &n_b, &r_b, &dy_b, &dx_b, rows_count, width);
        rows::softmax(&mut recorder, &x_b, &p_b, rows_count, width, scale);
        rows::softmax_backward(&mut recorder, &p_b, &dy_b, &ds_b, rows_count, width, scale);
        recorder.submit();
        let what = format!("{rows_count}x{width}");
        // Width 1: x̂ is 0 and only eps keeps 1/σ finite (1000); reassociated sums differ in ulps.
        assert_close(&download(&n_b, len), &normalized, 1e-4, &format!("layernorm {what}"));
        assert_close(&download(&r_b, rows_count), &rstd, 1e-4, &format!("layernorm rstd {what}"));
        assert_close(&download(&dx_b, len), &dx, 1e-4, &format!("layernorm backward {what}"));
        assert_close(&download(&p_b, len), &probabilities, 1e-4, &format!("softmax {what}"));
        assert_close(&download(&ds_b, len), &dsoft, 1e-4, &format!("softmax backward {what}"));
    }
}

#[test]
fn adaln_modulate_and_gated_residual() {
    let context = context();
    let mut rng = Rng::new(13);
    for (batch, tokens, width) in [(1, 1, 1), (2, 3, 5), (3, 17, 40)] {
        let len = batch * tokens * width;
        let stride = 6 * width;
        let (shift, scale, gate) =
            (Chunk { offset: 0, stride }, Chunk { offset: width, stride }, Chunk { offset: 2 * width, stride });
        let x = rng.vec(len);
        let y = rng.vec(len);
        let dy = rng.vec(len);
        let modulation = rng.vec(batch * stride);
        let dmod0 = rng.vec(batch * stride);
        let mut modulated = vec![0.0; len];
        cpu::modulate(&x, &modulation, shift, scale, tokens, width, &mut modulated);
        let mut dx = vec![0.0; len];
        let mut dmod = dmod0.clone();
        cpu::modulate_backward(&x, &modulation, shift, scale, tokens, width, &dy, &mut dx, &mut dmod);
        let mut residual = x.clone();
        cpu::gated_residual(&mut residual, &y, &modulation, gate, tokens, width);
        let mut dgated = vec![0.0; len];
        cpu::gated_residual_backward(&y, &modulation, gate, tokens, width, &dy, &mut dgated, &mut dmod);

        let shapes = AdaLn { batch, tokens, width };
        let (x_b, y_b, dy_b, m_b) = (upload(&x), upload(&y), upload(&dy), upload(&modulation));
        let (out_b, dx_b, dmod_b, res_b, dg_b) = (
            context.storage_buffer(len),
            context.storage_buffer(len),
            upload(&dmod0),
            upload(&x),
            context.storage_buffer(len),
        );
        let mut recorder = context.recorder();
        shapes.modulate(&mut recorder, &x_b, &m_b, shift, scale, &out_b);
        shapes.modulate_backward(&mut recorder, &x_b, &m_b, shift, scale, &dy_b, &dx_b, &dmod_b);
        shapes.gated_residual(&mut recorder, &res_b, &y_b, &m_b, gate);
        shapes.gated_residual_backward(&mut recorder, &y_b, &m_b, gate, &dy_b, &dg_b, &dmod_b);
        recorder.submit();
        let what = format!("{batch}x{tokens}x{width}");
        assert_close(&download(&out_b, len), &modulated, 1e-4, &format!("modulate {what}"));
        assert_close(&download(&dx_b, len), &dx, 1e-4, &format!("modulate dx {what}"));
        assert_close(&download(&res_b, len), &residual, 1e-4, &format!("gated residual {what}"));
        assert_close(&download(&dg_b, len), &dgated, 1e-4, &format!("gated residual dy {what}"));
        assert_close(&download(&dmod_b, batch * stride), &dmod, 1e-4, &format!("dmodulation {what}"));
    }
}

#[test]
fn text_pooling_and_timestep_embedding() {
    let context = context();
    let mut rng = Rng::new(14);
    let (batch, max_tokens, width, vocabulary) = (4, 5, 19, 11);
    let mut ids: Vec<u32> = (0..batch * max_tokens).map(|_| rng.below(vocabulary) as u32).collect();
    ids[max_tokens..2 * max_tokens].fill(0); // a sample with no real token
    ids[2 * max_tokens] = 3;
    ids[2 * max_tokens + 1] = 3; // a repeated token
    let table = rng.vec(vocabulary * width);
    let dpooled = rng.vec(batch * width);
    let dtable0 = rng.vec(vocabulary * width);
    let ids_b = context.storage_buffer_with(&ids);
    for pooling in [TextPooling::Mean, TextPooling::Sum] {
        let mut pooled = vec![0.0; batch * width];
        cpu::embed_pool(&ids, max_tokens, &table, width, pooling, &mut pooled);
        let mut dtable = dtable0.clone();
        cpu::embed_pool_backward(&ids, max_tokens, &dpooled, width, pooling, &mut dtable);
        let shapes = TextEmbedding { batch, max_tokens, width, vocabulary, pooling };
        let (table_b, dp_b, pooled_b, dt_b) =
            (upload(&table), upload(&dpooled), context.storage_buffer(batch * width), upload(&dtable0));
        let mut recorder = context.recorder();
        shapes.pool(&mut recorder, &ids_b, &table_b, &pooled_b);
        shapes.pool_backward(&mut recorder, &ids_b, &dp_b, &dt_b);
        recorder.submit();
        assert_close(&download(&pooled_b, batch * width), &pooled, 1e-4, &format!("embed {pooling:?}"));
        assert_close(&download(&dt_b, vocabulary * width), &dtable, 1e-4, &format!("embed {pooling:?} backward"));
    }
    // The sum of a sample's real embeddings, by hand: sample 2 holds token 3 twice.
    let mut summed = vec![0.0; batch * width];
    cpu::embed_pool(&ids, max_tokens, &table, width, TextPooling::Sum, &mut summed);
    let mut expected: Vec<f32> = vec![0.0; width];
    for &id in ids[2 * max_tokens..3 * max_tokens].iter().filter(|id| **id != 0) {
        for (e, t) in expected.iter_mut().zip(&table[id as usize * width..][..width]) {
            *e += t;
        }
    }
    assert_close(&summed[2 * width..3 * width], &expected, 1e-6, "sum by hand");
    assert!(summed[width..2 * width].iter().all(|v| *v == 0.0), "no real token: zeros");
    let timesteps = [0.0f32, 1.0, 17.5, 999.0, 480.25];
    let t_width = 38;
    let mut embedding = vec![0.0; timesteps.len() * t_width];
    cpu::timestep_embedding(&timesteps, t_width, &mut embedding);
    let (t_b, e_b) = (upload(&timesteps), context.storage_buffer(embedding.len()));
    let mut recorder = context.recorder();
    timestep_embedding(&mut recorder, &t_b, &e_b, timesteps.len(), t_width);
    recorder.submit();
    // cos/sin of arguments up to 999 rad: both sides round t·f to f32 identically, the GPU reduces
    // by 2π in two parts; what remains is the GPU's sin/cos error (≤ 2^-11 absolute allowed by
    // Vulkan, ~1e-6 seen), so this one is compared with an absolute 1e-4.
    for (index, (g, c)) in download(&e_b, embedding.len()).iter().zip(&embedding).enumerate() {
        assert!((g - c).abs() <= 1e-4, "timestep embedding {index}: {g} vs {c}");
    }
}

#[test]
fn patchify_unpatchify_and_their_backward() {
    let context = context();
    let mut rng = Rng::new(15);
    for geometry in [
        Patches { batch: 1, channels: 1, size: 2, patch: 1 },
        Patches { batch: 2, channels: 3, size: 6, patch: 2 },
        Patches { batch: 3, channels: 2, size: 9, patch: 3 },
    ] {
        let len = geometry.len();
        let images = rng.vec(len);
        let tokens = rng.vec(len);
        let mut patches = vec![0.0; len];
        cpu::patchify(geometry, &images, &mut patches);
        let mut unpatched = vec![0.0; len];
        cpu::unpatchify(geometry, &tokens, &mut unpatched);
        // The backward of a permutation is its inverse: checked through the CPU reference too.
        let (img_b, tok_b) = (upload(&images), upload(&tokens));
        let outs: Vec<wgpu::Buffer> = (0..4).map(|_| context.storage_buffer(len)).collect();
        let mut recorder = context.recorder();
        patchify::patchify(&mut recorder, geometry, &img_b, &outs[0]);
        patchify::unpatchify(&mut recorder, geometry, &tok_b, &outs[1]);
        patchify::patchify_backward(&mut recorder, geometry, &outs[0], &outs[2]);
        patchify::unpatchify_backward(&mut recorder, geometry, &outs[1], &outs[3]);
        recorder.submit();
        assert_eq!(download(&outs[0], len), patches, "patchify {geometry:?}");
        assert_eq!(download(&outs[1], len), unpatched, "unpatchify {geometry:?}");
        assert_eq!(download(&outs[2], len), images, "patchify backward {geometry:?}");
        assert_eq!(download(&outs[3], len), tokens, "unpatchify backward {geometry:?}");
        // patchify(c,i,j) vs unpatchify(i,j,c) orders differ only when channels > 1 and p > 1.
        if geometry.channels > 1 && geometry.patch > 1 {
            let mut back = vec![0.0; len];
            cpu::unpatchify(geometry, &patches, &mut back);
            assert_ne!(back, images);
        }
    }
}

#[test]
fn reductions_mse_and_sum_of_squares() {
    let context = context();
    let mut rng = Rng::new(16);
    for len in [1, 200, 256, 257, 70_000] {
        let a = rng.vec(len);
        let b = rng.vec(len);
        let (a_b, b_b) = (upload(&a), upload(&b));
        let partials = context.storage_buffer(reduce::MAX_PARTIALS);
        let out = upload(&[0.5, 0.25]);
        let mut recorder = context.recorder();
        reduce::sum_of_squares(&mut recorder, &a_b, Some(&b_b), len, 1.0 / len as f32, &partials, &out, 0, false);
        reduce::sum_of_squares(&mut recorder, &a_b, None, len, 1.0, &partials, &out, 1, true);
        recorder.submit();
        let got = download(&out, 2);
        // Sums of up to 70 000 terms in a different order than the f64 reference: f32 rounding
        // grows like √n·eps; 1e-4 relative still holds.
        assert_close(&got[..1], &[cpu::mse(&a, &b)], 1e-4, &format!("mse len {len}"));
        assert_close(&got[1..], &[0.25 + cpu::sum_of_squares(&a)], 1e-4, &format!("sum of squares len {len}"));
    }
}

#[test]
fn adamw_with_clipping_matches_the_reference_over_steps() {
    let context = context();
    let mut rng = Rng::new(17);
    let len = 301;
    let hyper = AdamW { lr: 1e-2, weight_decay: 0.1, max_grad_norm: 0.5, ..AdamW::default() };
    let mut param = rng.vec(len);
    let (mut m, mut v) = (vec![0.0; len], vec![0.0; len]);
    let (p_b, m_b, v_b) = (upload(&param), context.storage_buffer(len), context.storage_buffer(len));
    let partials = context.storage_buffer(reduce::MAX_PARTIALS);
    let norm_b = context.storage_buffer(1);
    for step in 1..=3 {
        let grad: Vec<f32> = rng.vec(len).iter().map(|g| g * step as f32).collect();
        let clip = hyper.clip_factor(cpu::sum_of_squares(&grad).sqrt());
        hyper.update(step, clip, &mut param, &grad, &mut m, &mut v);
        let g_b = upload(&grad);
        let mut recorder = context.recorder();
        reduce::sum_of_squares(&mut recorder, &g_b, None, len, 1.0, &partials, &norm_b, 0, false);
        adamw::adamw_step(&mut recorder, &hyper, step, &g_b, &norm_b, &p_b, &m_b, &v_b, len);
        recorder.submit();
    }
    // Adam divides by √v: where v is tiny the update is sensitive to ulps of g; 1e-4 holds here.
    assert_close(&download(&p_b, len), &param, 1e-4, "adamw param");
    assert_close(&download(&m_b, len), &m, 1e-4, "adamw m");
}

#[test]
fn noise_is_bit_identical_on_cpu_and_gpu_and_looks_gaussian() {
    let context = context();
    let table = upload_table(&context);
    let len = 100_003;
    let stream = NoiseStream::new(0xDEAD_BEEF_0042);
    let mut expected = vec![0.0; len];
    stream.fill(5, 1.0, &mut expected);
    let out = context.storage_buffer(len);
    let mut recorder = context.recorder();
    stream.record(&mut recorder, &table, 5, 1.0, &out, len);
    recorder.submit();
    let got = download(&out, len);
    let differing = got.iter().zip(&expected).filter(|(g, e)| g.to_bits() != e.to_bits()).count();
    assert_eq!(differing, 0, "GPU and CPU noise differ in {differing} values");

    let n = len as f64;
    let mean = expected.iter().map(|v| *v as f64).sum::<f64>() / n;
    let var = expected.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n;
    let kurtosis = expected.iter().map(|v| (*v as f64 - mean).powi(4)).sum::<f64>() / n / (var * var);
    let beyond_two = expected.iter().filter(|v| v.abs() > 2.0).count() as f64 / n;
    assert!(mean.abs() < 0.015, "mean {mean}");
    assert!((var - 1.0).abs() < 0.02, "variance {var}");
    assert!((kurtosis - 3.0).abs() < 0.1, "kurtosis {kurtosis}");
    assert!((beyond_two - 0.0455).abs() < 0.003, "P(|z|>2) = {beyond_two}");

    let mut again = vec![0.0; 10];
    stream.fill(5, 1.0, &mut again);
    assert_eq!(&again[..], &expected[..10], "same seed, same noise");
    NoiseStream::new(1).fill(5, 1.0, &mut again);
    assert_ne!(&again[..], &expected[..10], "another seed, other noise");
}
