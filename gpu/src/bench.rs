//! Benchmarks (`thitl bench gpu`, `gpu-bench`): medians after a warm-up, for the wgpu adapter at
//! hand and for the CPU backend.

use std::time::Instant;

use std::sync::Arc;

use crate::context::{GpuContext, GpuError};
use crate::cpu::AdamW;
use crate::device::{CpuDevice, Device, WgpuDevice};
use crate::gemm::Kernel;
use crate::kernels::matmul::{Matmul, MatmulKernel};
use crate::model::{
    Dit, DitConfig, HostAdapter, HostWeights, LoraConfig, LoraTarget, SampleOptions, TrainBatch, TrainMode,
};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Square matmul sizes on the wgpu adapter (`A · B`, both row-major).
    pub gpu_sizes: Vec<usize>,
    /// Linear-layer matmul shapes `(m, n, k)` on the wgpu adapter: `x · Wᵀ` with `W` stored
    /// `n × k`, as the DiT's layers run them.
    pub gpu_linear_shapes: Vec<(usize, usize, usize)>,
    /// Square matmul sizes on the CPU backend.
    pub cpu_sizes: Vec<usize>,
    /// Timed repetitions per measurement (after one warm-up run).
    pub repeats: usize,
    /// Measure the wgpu adapter (fails without one).
    pub gpu: bool,
    /// Measure the CPU backend.
    pub cpu: bool,
    /// Check every GPU kernel against the CPU reference at this size first (0 = no check).
    pub check_size: usize,
    /// DiT configurations to time on the wgpu adapter (sampling and LoRA training).
    pub gpu_models: Vec<(String, DitConfig)>,
    /// DiT configurations to time on the CPU backend.
    pub cpu_models: Vec<(String, DitConfig)>,
    /// Images per sampling batch and per training batch.
    pub model_batch: usize,
    /// DDIM steps per sampled batch.
    pub sample_steps: usize,
    /// Timed repetitions of the model benchmarks.
    pub model_repeats: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            gpu_sizes: vec![1024, 4096],
            // DiT-S at batch 64 (16384 tokens of width 384): fc1 and fc2.
            gpu_linear_shapes: vec![(16384, 1536, 384), (16384, 384, 1536)],
            cpu_sizes: vec![1024],
            repeats: 10,
            gpu: true,
            cpu: true,
            check_size: 1000,
            gpu_models: vec![("small".to_string(), DitConfig::small()), ("dit-s".to_string(), DitConfig::dit_s())],
            cpu_models: vec![("small".to_string(), DitConfig::small())],
            model_batch: 64,
            sample_steps: 25,
            model_repeats: 3,
        }
    }
}

/// One measured figure.
#[derive(Debug, Clone)]
pub struct BenchRow {
    /// Backend and kernel, e.g. "wgpu tiled bk16".
    pub backend: String,
    /// What was measured, e.g. "matmul f32 4096^3".
    pub what: String,
    /// The median.
    pub median: f64,
    /// Its unit, e.g. "TFLOP/s".
    pub unit: &'static str,
    /// How it was timed ("gpu timestamps", "wall clock submit+wait", "wall clock").
    pub timing: &'static str,
}

/// Everything a run measured.
#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    /// The adapter's description, when one was measured.
    pub adapter: Option<String>,
    /// Correctness checks: (kernel, max relative error vs the CPU reference).
    pub checks: Vec<(String, f64)>,
    /// The figures.
    pub rows: Vec<BenchRow>,
}

impl BenchReport {
    /// A fixed-width table (the `RESULT` lines are [`BenchRow::result_line`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(adapter) = &self.adapter {
            out.push_str(&format!("adapter: {adapter}\n"));
        }
        for (kernel, error) in &self.checks {
            out.push_str(&format!("check {kernel}: max error vs CPU reference {error:.2e}\n"));
        }
        out.push_str(&format!("{:<26} {:<26} {:>12} {:<8} {}\n", "backend", "what", "median", "unit", "timing"));
        for row in &self.rows {
            out.push_str(&format!(
                "{:<26} {:<26} {:>12.4} {:<8} {}\n",
                row.backend, row.what, row.median, row.unit, row.timing
            ));
        }
        out
    }
}

/// The median of some samples (sorted copy).
pub fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.is_empty() {
        f64::NAN
    } else if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        0.5 * (sorted[middle - 1] + sorted[middle])
    }
}

/// Runs the benchmarks in `options`.
pub fn run(options: &BenchOptions) -> Result<BenchReport, GpuError> {
    run_with_progress(options, &mut |_| {})
}

/// [`run`], calling `progress` with each line (adapter, checks, `RESULT` rows) as soon as it is
/// known, so that a run cut short still reports what it measured.
pub fn run_with_progress(options: &BenchOptions, progress: &mut dyn FnMut(&str)) -> Result<BenchReport, GpuError> {
    let mut report = Reporter { report: BenchReport::default(), progress };
    let report = &mut report;
    if options.gpu {
        let context = GpuContext::new()?;
        (report.progress)(&format!("adapter: {}", context.describe()));
        report.report.adapter = Some(context.describe());
        let kernels = [
            MatmulKernel::Auto,
            MatmulKernel::Vec4 { bm: 128, bn: 128, bk: 8 },
            MatmulKernel::Vec4 { bm: 128, bn: 128, bk: 16 },
            MatmulKernel::Vec4 { bm: 128, bn: 64, bk: 16 },
            MatmulKernel::Vec4 { bm: 64, bn: 64, bk: 16 },
            MatmulKernel::Tiled { bk: 8 },
            MatmulKernel::Tiled { bk: 16 },
            MatmulKernel::Tiled { bk: 32 },
            MatmulKernel::Direct,
        ];
        let context = Arc::new(context);
        if options.check_size > 0 {
            for (layout, error) in check_matmuls(&context, &kernels, options.check_size)? {
                report.check(&layout, error);
            }
            report.check("split-k 384x8x16384", check_split_k(&context)?);
        }
        let shapes = options
            .gpu_sizes
            .iter()
            .map(|&size| (format!("matmul f32 {size}^3"), Matmul::new(size, size, size, false, false)))
            .chain(
                options
                    .gpu_linear_shapes
                    .iter()
                    .map(|&(m, n, k)| (format!("linear f32 {m}x{n}x{k}"), Matmul::new(m, n, k, false, true))),
            );
        for (what, spec) in shapes {
            // One set of operands per shape, shared by every kernel.
            let a = context.storage_buffer_with(&pseudo_random(spec.m * spec.k, 3));
            let b = context.storage_buffer_with(&pseudo_random(spec.k * spec.n, 4));
            let c = context.storage_buffer(spec.m * spec.n);
            let operands = [&a, &b, &c];
            for kernel in kernels {
                let (seconds, timing) = time_gpu_matmul(&context, kernel, &spec, operands, options.repeats)?;
                let name = match kernel {
                    MatmulKernel::Auto => {
                        format!("auto={}", spec.resolve_kernel(&context, kernel).name())
                    }
                    other => other.name(),
                };
                report.push(BenchRow {
                    backend: format!("wgpu {name}"),
                    what: what.clone(),
                    median: spec.flops() / seconds / 1e12,
                    unit: "TFLOP/s",
                    timing,
                });
            }
        }
        let device = WgpuDevice::new(context.clone());
        for (name, config) in &options.gpu_models {
            bench_model(&device, "wgpu", name, config, options, report)?;
        }
        context.save_pipeline_cache().ok();
    }
    if options.cpu {
        // Every product this processor runs, timed in turn (side by side in one run).
        let kernels = Kernel::choices();
        for &size in &options.cpu_sizes {
            let seconds = time_cpu_matmuls(size, options.repeats.min(5), &kernels);
            for (kernel, seconds) in kernels.iter().zip(seconds) {
                let flops = 2.0 * (size as f64).powi(3);
                report.push(BenchRow {
                    backend: match kernel {
                        Some(Kernel::Avx512) => "cpu avx-512",
                        Some(Kernel::Avx2) => "cpu avx2",
                        None => "cpu matrixmultiply",
                    }
                    .to_string(),
                    what: format!("matmul f32 {size}^3"),
                    median: flops / seconds / 1e9,
                    unit: "GFLOP/s",
                    timing: "wall clock",
                });
            }
        }
    }
    if options.cpu {
        let device = CpuDevice::<f32>::new();
        for (name, config) in &options.cpu_models {
            bench_model(&device, "cpu", name, config, options, report)?;
        }
    }
    Ok(std::mem::take(&mut report.report))
}

struct Reporter<'a> {
    report: BenchReport,
    progress: &'a mut dyn FnMut(&str),
}

impl Reporter<'_> {
    fn push(&mut self, row: BenchRow) {
        (self.progress)(&row.result_line());
        self.report.rows.push(row);
    }

    fn check(&mut self, kernel: &str, error: f64) {
        (self.progress)(&format!("check {kernel}: max error vs CPU reference {error:.2e}"));
        self.report.checks.push((kernel.to_string(), error));
    }
}

impl BenchRow {
    /// `RESULT<TAB>backend<TAB>what<TAB>median<TAB>unit`, for scripts.
    pub fn result_line(&self) -> String {
        format!("RESULT\t{}\t{}\t{}\t{}", self.backend, self.what, self.median, self.unit)
    }
}

/// Sampling images/s (DDIM, guidance 4 with a negative prompt) and LoRA training steps/s
/// (rank 8 on qkv/proj/fc1/fc2, AdamW) for one configuration, medians after a warm-up.
fn bench_model<D: Device>(
    device: &D,
    backend: &str,
    name: &str,
    config: &DitConfig,
    options: &BenchOptions,
    report: &mut Reporter<'_>,
) -> Result<(), GpuError> {
    let batch = options.model_batch;
    let weights = HostWeights::randomized(config, 1, 0.02);
    let lora = LoraConfig { rank: 8, alpha: 8.0, targets: LoraTarget::ALL.to_vec() };
    let adapter = HostAdapter::init(config, &lora, 2);
    let mut model =
        Dit::new(device, *config, &weights, Some(&adapter)).map_err(|error| GpuError::Shape(error.to_string()))?;
    let ids: Vec<u32> = (0..batch * config.max_tokens)
        .map(|i| if i % config.max_tokens < 5 { 1 + (i as u32 * 7) % (config.vocabulary as u32 - 1) } else { 0 })
        .collect();
    let negative: Vec<u32> = ids.iter().map(|id| if *id == 0 { 0 } else { 1 + (id % 3) }).collect();
    let sample = |model: &Dit<D>, steps: usize| {
        let options = SampleOptions { steps, eta: 0.0, guidance_scale: 4.0, seed: 3 };
        model.sample(device, &options, &ids, Some(&negative))
    };
    sample(&model, 2)?;
    let mut samples = Vec::new();
    for _ in 0..options.model_repeats.max(1) {
        let start = Instant::now();
        sample(&model, options.sample_steps)?;
        samples.push(start.elapsed().as_secs_f64());
    }
    report.push(BenchRow {
        backend: format!("{backend} dit"),
        what: format!("{name} sample b{batch} {}st", options.sample_steps),
        median: batch as f64 / median(&samples),
        unit: "img/s",
        timing: "wall clock",
    });

    model.set_trainable(device, TrainMode::Lora);
    let data = TrainBatch {
        images: (0..batch * config.image_len()).map(|i| ((i % 97) as f32 / 48.0) - 1.0).collect(),
        ids: ids.clone(),
    };
    let hyper = AdamW { lr: 1e-4, ..AdamW::default() };
    model.train_step(device, &data, TrainMode::Lora, &hyper, 0)?;
    let mut steps = Vec::new();
    for step in 0..(options.model_repeats.max(1) + 2) {
        let start = Instant::now();
        model.train_step(device, &data, TrainMode::Lora, &hyper, 1 + step as u64)?;
        steps.push(start.elapsed().as_secs_f64());
    }
    report.push(BenchRow {
        backend: format!("{backend} dit"),
        what: format!("{name} lora train b{batch}"),
        median: 1.0 / median(&steps),
        unit: "steps/s",
        timing: "wall clock",
    });
    Ok(())
}

fn pseudo_random(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|index| {
            let bits = crate::kernels::noise::hash_u32(index as u32, seed);
            (bits >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

/// Max over outputs of |gpu − cpu| / (|cpu| + mean|cpu|), for every kernel, on two shapes near
/// `size` that are not multiples of any tile: `A · Bᵀ` (a linear layer) and `Aᵀ · B` (a weight
/// gradient), both vec4-aligned so the vec4 kernels run rather than fall back.
fn check_matmuls(context: &GpuContext, kernels: &[MatmulKernel], size: usize) -> Result<Vec<(String, f64)>, GpuError> {
    let four = size.div_ceil(4) * 4;
    let shapes = [
        ("x.wT", Matmul::new(size + 1, size + 3, four + 4, false, true)),
        ("aT.b", Matmul::new(four + 4, four + 8, size + 1, true, false)),
    ];
    let mut errors = Vec::new();
    for (label, spec) in shapes {
        let a = pseudo_random(spec.m * spec.k, 1);
        let b = pseudo_random(spec.k * spec.n, 2);
        let mut expected = vec![0.0; spec.m * spec.n];
        spec.run_cpu(&a, &b, None, &mut expected);
        let mean = expected.iter().map(|v| v.abs() as f64).sum::<f64>() / expected.len() as f64;
        let a_buffer = context.storage_buffer_with(&a);
        let b_buffer = context.storage_buffer_with(&b);
        let c_buffer = context.storage_buffer(spec.m * spec.n);
        for &kernel in kernels {
            let mut recorder = context.recorder();
            recorder.clear(&c_buffer, spec.m * spec.n);
            spec.record(&mut recorder, kernel, &a_buffer, &b_buffer, None, &c_buffer);
            recorder.submit();
            let actual: Vec<f32> = context.read_words(&c_buffer, spec.m * spec.n)?;
            let error = actual
                .iter()
                .zip(&expected)
                .map(|(a, e)| (*a as f64 - *e as f64).abs() / (e.abs() as f64 + mean))
                .fold(0.0, f64::max);
            let ran = spec.resolve_kernel(context, kernel);
            let name = if ran == kernel { kernel.name() } else { format!("{}={}", kernel.name(), ran.name()) };
            errors.push((format!("{name} {label} {}x{}x{}", spec.m, spec.n, spec.k), error));
        }
    }
    Ok(errors)
}

/// Max relative error of a split-K product (a LoRA weight-gradient shape) vs the CPU reference.
fn check_split_k(context: &Arc<GpuContext>) -> Result<f64, GpuError> {
    let mut device = WgpuDevice::new(context.clone());
    device.split_k = true;
    let spec = Matmul::new(384, 8, 16384, true, false);
    let a = pseudo_random(spec.m * spec.k, 5);
    let b = pseudo_random(spec.k * spec.n, 6);
    let mut expected = vec![0.0; spec.m * spec.n];
    spec.run_cpu(&a, &b, None, &mut expected);
    let (a_buffer, b_buffer, c_buffer) = (device.upload(&a), device.upload(&b), device.zeros(spec.m * spec.n));
    device.matmul(&spec, &a_buffer, &b_buffer, None, &c_buffer);
    let actual = device.download(&c_buffer, spec.m * spec.n)?;
    let mean = expected.iter().map(|v| v.abs() as f64).sum::<f64>() / expected.len() as f64;
    Ok(actual
        .iter()
        .zip(&expected)
        .map(|(a, e)| (*a as f64 - *e as f64).abs() / (e.abs() as f64 + mean))
        .fold(0.0, f64::max))
}

/// Median seconds of one `spec` matmul on `[a, b, c]`. Before timing, the kernel runs for about 0.1 s so that
/// the GPU's clocks are up (a short burst after idling measures a slower clock), and at least
/// about 0.05 s of work is timed.
fn time_gpu_matmul(
    context: &GpuContext,
    kernel: MatmulKernel,
    spec: &Matmul,
    [a, b, c]: [&wgpu::Buffer; 3],
    repeats: usize,
) -> Result<(f64, &'static str), GpuError> {
    let run = |count: usize| -> Result<f64, GpuError> {
        let start = Instant::now();
        let mut recorder = context.recorder();
        for _ in 0..count {
            spec.record(&mut recorder, kernel, a, b, None, c);
        }
        recorder.submit();
        context.wait()?;
        Ok(start.elapsed().as_secs_f64())
    };
    // Compiles the pipeline and touches the memory, then estimates one run and warms up.
    run(1)?;
    let once = run(1)?.max(1e-6);
    run(((0.1 / once).ceil() as usize).clamp(1, 200))?;
    let repeats = ((0.05 / once).ceil() as usize).clamp(repeats.max(1), 200);
    if context.has_timestamps() {
        let count = (2 * repeats) as u32;
        let query_set = context.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("bench timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let resolved = context.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("resolved timestamps"),
            size: count as u64 * 8,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let mut recorder = context.recorder();
        for repeat in 0..repeats {
            recorder.time_next_dispatch(&query_set, (2 * repeat) as u32);
            spec.record(&mut recorder, kernel, a, b, None, c);
        }
        recorder.resolve_timestamps(&query_set, count, &resolved);
        recorder.submit();
        let ticks: Vec<u64> = context.read_words(&resolved, count as usize)?;
        let period_ns = context.queue.get_timestamp_period() as f64;
        let samples: Vec<f64> =
            ticks.chunks(2).map(|pair| pair[1].saturating_sub(pair[0]) as f64 * period_ns * 1e-9).collect();
        if samples.iter().all(|seconds| *seconds > 0.0) {
            return Ok((median(&samples), "gpu timestamps"));
        }
    }
    let mut samples = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let start = Instant::now();
        let mut recorder = context.recorder();
        spec.record(&mut recorder, kernel, a, b, None, c);
        recorder.submit();
        context.wait()?;
        samples.push(start.elapsed().as_secs_f64());
    }
    Ok((median(&samples), "wall clock submit+wait"))
}

/// Median seconds of a `size`³ product on each kernel (`None`: `matrixmultiply`), the kernels
/// taking turns so that they share the machine's moments alike.
fn time_cpu_matmuls(size: usize, repeats: usize, kernels: &[Option<Kernel>]) -> Vec<f64> {
    let a = pseudo_random(size * size, 3);
    let b = pseudo_random(size * size, 4);
    let mut c = vec![0.0f32; size * size];
    let s = size as isize;
    let mut product = |kernel: Option<Kernel>| {
        let start = Instant::now();
        // SAFETY: row-major size × size operands, all three distinct vectors; the kernels were
        // filtered on availability.
        unsafe {
            crate::gemm::sgemm_bias_on(
                kernel,
                size,
                size,
                size,
                1.0,
                a.as_ptr(),
                s,
                1,
                b.as_ptr(),
                s,
                1,
                0.0,
                c.as_mut_ptr(),
                s,
                1,
                None,
            )
        };
        start.elapsed().as_secs_f64()
    };
    let mut samples = vec![Vec::new(); kernels.len()];
    for round in 0..=repeats.max(1) {
        for (kernel, times) in kernels.iter().zip(&mut samples) {
            let seconds = product(*kernel);
            // The first round warms up.
            if round > 0 {
                times.push(seconds);
            }
        }
    }
    samples.iter().map(|times| median(times)).collect()
}
