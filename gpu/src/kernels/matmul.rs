//! Matrix multiplication with strided (hence transposable, batched) operands and a fused
//! bias + activation epilogue: `C = act(alpha * op(A) op(B) + bias)`, or `C += …`.

use crate::context::{Access, GpuContext, Recorder};
use crate::cpu::Real;

const COMMON: &str = include_str!("matmul_common.wgsl");
const SCALAR: &str = include_str!("matmul.wgsl");
const VEC4: &str = include_str!("matmul_vec4.wgsl");

/// The activation applied in an epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Identity.
    None,
    /// GELU, tanh approximation.
    Gelu,
    /// SiLU (x · sigmoid(x)).
    Silu,
}

impl Activation {
    fn code(self) -> u32 {
        match self {
            Activation::None => 0,
            Activation::Gelu => 1,
            Activation::Silu => 2,
        }
    }

    /// Applies the activation to one value (the CPU reference).
    pub fn apply<T: Real>(self, x: T) -> T {
        match self {
            Activation::None => x,
            Activation::Gelu => crate::cpu::gelu(x),
            Activation::Silu => crate::cpu::silu(x),
        }
    }
}

/// Where the elements of a matrix operand live in its buffer: element (row, col) of batch
/// (outer, inner) is at `offset + outer*outer_stride + inner*inner_stride + row*row_stride +
/// col*col_stride`. A transposed operand is a layout with the strides swapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// First element.
    pub offset: usize,
    /// Step between rows.
    pub row_stride: usize,
    /// Step between columns.
    pub col_stride: usize,
    /// Step between outer batches.
    pub outer_stride: usize,
    /// Step between inner batches.
    pub inner_stride: usize,
}

impl Layout {
    /// A `rows × cols` matrix stored row-major.
    pub fn row_major(cols: usize) -> Self {
        Layout { offset: 0, row_stride: cols, col_stride: 1, outer_stride: 0, inner_stride: 0 }
    }

    /// The transpose of a row-major matrix with `stored_cols` columns: the operand is viewed as
    /// `stored_cols × stored_rows`.
    pub fn transposed(stored_cols: usize) -> Self {
        Layout { offset: 0, row_stride: 1, col_stride: stored_cols, outer_stride: 0, inner_stride: 0 }
    }

    /// Same layout with batch strides.
    pub fn batched(self, outer_stride: usize, inner_stride: usize) -> Self {
        Layout { outer_stride, inner_stride, ..self }
    }

    /// Same layout starting at `offset`.
    pub fn at(self, offset: usize) -> Self {
        Layout { offset, ..self }
    }

    fn index(&self, outer: usize, inner: usize, row: usize, col: usize) -> usize {
        self.offset
            + outer * self.outer_stride
            + inner * self.inner_stride
            + row * self.row_stride
            + col * self.col_stride
    }
}

/// Which WGSL kernel runs a matmul.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulKernel {
    /// Chosen by shape, layout and adapter: see [`Matmul::choose_kernel`].
    Auto,
    /// Workgroup-memory tiled kernel with scalar loads, 128×128 per workgroup, K slices of `bk`
    /// (8, 16 or 32): any layout.
    Tiled {
        /// Depth of a staged K slice.
        bk: u32,
    },
    /// Workgroup-memory tiled kernel with vec4 loads and double-buffered slices (one barrier per
    /// slice), a `bm`×`bn` output tile per workgroup of 256 invocations: 128×128 (8×8 per
    /// invocation) with `bk` 8 or 16, 128×64 (8×4) with `bk` 16, or 64×64 (4×4) with `bk` 16
    /// or 32. Only for layouts that [`Matmul::vec4_aligned`] accepts; others run
    /// `Tiled { bk: 8 }` instead.
    Vec4 {
        /// Rows of the output tile of a workgroup.
        bm: u32,
        /// Columns of the output tile of a workgroup.
        bn: u32,
        /// Depth of a staged K slice.
        bk: u32,
    },
    /// Register-only kernel, 32×32 per workgroup.
    Direct,
}

impl MatmulKernel {
    /// A short name for tables, e.g. `vec4 128 bk8`.
    pub fn name(&self) -> String {
        match self {
            MatmulKernel::Auto => "auto".to_string(),
            MatmulKernel::Tiled { bk } => format!("tiled bk{bk}"),
            MatmulKernel::Vec4 { bm, bn, bk } => format!("vec4 {bm}x{bn} bk{bk}"),
            MatmulKernel::Direct => "direct".to_string(),
        }
    }
}

/// The K-slice depth `Auto` uses for the scalar tiled kernel: 8 (the fastest measured on an
/// H100), or `THITL_MATMUL_BK=16|32` (read once).
fn auto_bk() -> u32 {
    static BK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *BK.get_or_init(|| match std::env::var("THITL_MATMUL_BK").as_deref() {
        Ok("16") => 16,
        Ok("32") => 32,
        _ => 8,
    })
}

/// Whether `Auto` may pick the vec4 kernels: yes, unless `THITL_MATMUL_VEC4=0` (read once).
fn auto_vec4() -> bool {
    static VEC4: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VEC4.get_or_init(|| std::env::var("THITL_MATMUL_VEC4").map_or(true, |value| value != "0"))
}

/// `Auto` uses the largest vec4 tile (128×128, then 128×64) of which the output has at least
/// this many (about two workgroups per multiprocessor on a 132-SM H100), else 64×64 tiles.
const LARGE_TILES: usize = 256;
/// `Auto` uses a workgroup-memory kernel only when the output has at least this many 64×64
/// tiles; smaller products run the register-only kernel.
const SMALL_TILES: usize = 32;

/// A batched matmul `C[b] = act(alpha * A[b] B[b] + bias)` (or `+=`), `A[b]` being `m × k`,
/// `B[b]` `k × n`, `C[b]` `m × n` with unit column stride, `b` ranging over
/// `batch_outer × batch_inner`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Matmul {
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Columns of A, rows of B.
    pub k: usize,
    /// Number of outer batches.
    pub batch_outer: usize,
    /// Number of inner batches.
    pub batch_inner: usize,
    /// Layout of A (`m × k`).
    pub a: Layout,
    /// Layout of B (`k × n`).
    pub b: Layout,
    /// Layout of C (`m × n`; `col_stride` must be 1).
    pub c: Layout,
    /// Scale of the product.
    pub alpha: f32,
    /// Offset of the bias (one value per column of C) in its buffer, if there is a bias.
    pub bias: Option<usize>,
    /// Epilogue activation.
    pub activation: Activation,
    /// Add the result to C instead of overwriting it.
    pub accumulate: bool,
}

impl Matmul {
    /// `C = A · B` for row-major `A (m×k)`, `B (k×n)`; `transpose_a` reads A stored as `k×m`,
    /// `transpose_b` reads B stored as `n×k` (a PyTorch `Linear` weight).
    pub fn new(m: usize, n: usize, k: usize, transpose_a: bool, transpose_b: bool) -> Self {
        Matmul {
            m,
            n,
            k,
            batch_outer: 1,
            batch_inner: 1,
            a: if transpose_a { Layout::transposed(m) } else { Layout::row_major(k) },
            b: if transpose_b { Layout::transposed(k) } else { Layout::row_major(n) },
            c: Layout::row_major(n),
            alpha: 1.0,
            bias: None,
            activation: Activation::None,
            accumulate: false,
        }
    }

    /// With a bias (at offset 0 of the bias buffer) and an activation.
    pub fn with_epilogue(self, bias: bool, activation: Activation) -> Self {
        Matmul { bias: bias.then_some(0), activation, ..self }
    }

    /// Number of outputs written.
    pub fn batches(&self) -> usize {
        self.batch_outer * self.batch_inner
    }

    /// Floating-point operations (2·m·n·k per batch).
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64 * self.batches() as f64
    }

    fn params(&self) -> Vec<u32> {
        let word = |value: usize| u32::try_from(value).expect("matmul index exceeds u32");
        vec![
            word(self.m),
            word(self.n),
            word(self.k),
            word(self.batch_inner.max(1)),
            word(self.a.offset),
            word(self.a.row_stride),
            word(self.a.col_stride),
            word(self.a.outer_stride),
            word(self.a.inner_stride),
            word(self.b.offset),
            word(self.b.row_stride),
            word(self.b.col_stride),
            word(self.b.outer_stride),
            word(self.b.inner_stride),
            word(self.c.offset),
            word(self.c.row_stride),
            word(self.c.outer_stride),
            word(self.c.inner_stride),
            self.alpha.to_bits(),
            self.activation.code(),
            u32::from(self.bias.is_some()),
            u32::from(self.accumulate),
            word(self.bias.unwrap_or(0)),
            0,
        ]
    }

    /// The CPU reference (also the CPU backend): a gemm per batch ([`crate::gemm::sgemm_bias`] in
    /// f32, `matrixmultiply` in f64), then the epilogue.
    pub fn run_cpu<T: Real>(&self, a: &[T], b: &[T], bias: Option<&[T]>, c: &mut [T]) {
        assert_eq!(self.c.col_stride, 1, "C must have unit column stride");
        if self.m == 0 || self.n == 0 || self.batches() == 0 {
            return;
        }
        if self.run_cpu_row(a, b, c) {
            return;
        }
        if !self.cpu_splits_outer_batches() {
            self.run_cpu_outer(a, b, bias, c, 0, 0..self.batch_outer);
            return;
        }
        // Outer batches in parts, one per thread: C is cut at multiples of the outer stride, and
        // `cpu_splits_outer_batches` checked that every outer batch writes only inside its own
        // stride, so a part holds whole batches. Each batch is the same gemm call as on one
        // thread: same results.
        let stride = self.c.outer_stride;
        crate::cpu::in_parts(c, stride, |first, part| {
            let end = (first + part.len().div_ceil(stride)).min(self.batch_outer);
            if first < end {
                self.run_cpu_outer(a, b, bias, part, first * stride, first..end);
            }
        });
    }

    /// A one-row product without epilogue (m = 1, one batch, B with unit column stride: a bias
    /// gradient `1ᵀ·dY`), computed here instead of by `matrixmultiply`, which packs all of B to
    /// make one row: B's rows are added up in order, the columns split over threads. Returns
    /// false (and does nothing) for any other product.
    fn run_cpu_row<T: Real>(&self, a: &[T], b: &[T], c: &mut [T]) -> bool {
        if self.m != 1
            || self.batches() != 1
            || self.k == 0
            || self.b.col_stride != 1
            || self.bias.is_some()
            || self.activation != Activation::None
        {
            return false;
        }
        let (k, n) = (self.k, self.n);
        let (a_start, b_start, c_start) =
            (self.a.index(0, 0, 0, 0), self.b.index(0, 0, 0, 0), self.c.index(0, 0, 0, 0));
        assert!(
            self.a.index(0, 0, 0, k - 1) < a.len() && self.b.index(0, 0, k - 1, n - 1) < b.len(),
            "operand out of bounds"
        );
        let alpha = T::of(self.alpha as f64);
        let accumulate = self.accumulate;
        let columns = |first: usize, out: &mut [T]| {
            let mut sums = vec![T::default(); out.len()];
            for row in 0..k {
                let weight = a[a_start + row * self.a.col_stride];
                let values = &b[b_start + row * self.b.row_stride + first..][..out.len()];
                for (sum, &value) in sums.iter_mut().zip(values) {
                    *sum += weight * value;
                }
            }
            for (out, sum) in out.iter_mut().zip(sums) {
                *out = if accumulate { *out + alpha * sum } else { alpha * sum };
            }
        };
        let out = &mut c[c_start..c_start + n];
        let parts = crate::cpu::parallelism().min(n / 64).max(1);
        if parts == 1 || k * n < 1 << 16 {
            columns(0, out);
            return true;
        }
        let per = n.div_ceil(parts);
        let out = crate::cpu::SendPtr(out.as_mut_ptr());
        crate::pool::run_parts(n.div_ceil(per), &|index| {
            let first = index * per;
            // SAFETY: the parts' columns are disjoint and inside `out`.
            columns(first, unsafe { out.slice(first..(first + per).min(n)) });
        });
        true
    }

    /// Whether the CPU backend runs this product's outer batches on threads: only when there
    /// are several small batches (each too small for gemm's own threads, e.g. attention's per
    /// sample and head) and every outer batch writes only inside its own outer stride of C.
    fn cpu_splits_outer_batches(&self) -> bool {
        let per_batch = self.m * self.n * self.k.max(1);
        let own_stride = self.batch_outer > 1
            && self.c.offset < self.c.outer_stride
            && self.c.index(0, self.batch_inner - 1, self.m - 1, self.n - 1) < self.c.outer_stride;
        own_stride && per_batch <= 1 << 21 && per_batch * self.batches() >= 1 << 18
    }

    /// [`Matmul::run_cpu`] for the outer batches `outers`, `c` holding the values of C from
    /// index `c_base` on.
    fn run_cpu_outer<T: Real>(
        &self,
        a: &[T],
        b: &[T],
        bias: Option<&[T]>,
        c: &mut [T],
        c_base: usize,
        outers: std::ops::Range<usize>,
    ) {
        let bias = self.bias.zip(bias);
        // The product goes straight into C (gemm's β = 1 accumulates) unless an activation must
        // apply to the product alone before it is added to C.
        let direct = self.k > 0 && (!self.accumulate || self.activation == Activation::None);
        let mut product = if direct { Vec::new() } else { vec![T::default(); self.m * self.n] };
        for outer in outers {
            for inner in 0..self.batch_inner {
                let c_start = self.c.index(outer, inner, 0, 0) - c_base;
                let c_last = self.c.index(outer, inner, self.m - 1, self.n - 1) - c_base;
                assert!(c_last < c.len(), "result out of bounds");
                let mut bias_added = false;
                if self.k > 0 {
                    let a_start = self.a.index(outer, inner, 0, 0);
                    let b_start = self.b.index(outer, inner, 0, 0);
                    let a_last = self.a.index(outer, inner, self.m - 1, self.k - 1);
                    let b_last = self.b.index(outer, inner, self.k - 1, self.n - 1);
                    assert!(a_last < a.len() && b_last < b.len(), "operand out of bounds");
                    let (target, row_stride, beta) = if direct {
                        let beta = if self.accumulate { 1.0 } else { 0.0 };
                        // SAFETY: C's last element is in bounds (checked above).
                        (unsafe { c.as_mut_ptr().add(c_start) }, self.c.row_stride, beta)
                    } else {
                        (product.as_mut_ptr(), self.n, 0.0)
                    };
                    // SAFETY: the strides address only elements inside the slices, which is
                    // checked by the last-element indices above.
                    let gemm_bias = bias.filter(|_| direct).map(|(offset, bias)| &bias[offset..offset + self.n]);
                    bias_added = unsafe {
                        T::gemm(
                            self.m,
                            self.k,
                            self.n,
                            T::of(self.alpha as f64),
                            a.as_ptr().add(a_start),
                            self.a.row_stride as isize,
                            self.a.col_stride as isize,
                            b.as_ptr().add(b_start),
                            self.b.row_stride as isize,
                            self.b.col_stride as isize,
                            T::of(beta),
                            target,
                            row_stride as isize,
                            1,
                            gemm_bias,
                        ) && gemm_bias.is_some()
                    };
                }
                if direct {
                    // C holds α·AB (+ C when accumulating): add the bias (unless the gemm added
                    // it as it wrote C), then the activation (only when not accumulating, see
                    // `direct`).
                    let bias = bias.filter(|_| !bias_added);
                    if bias.is_none() && self.activation == Activation::None {
                        continue;
                    }
                    let epilogue = |row: &mut [T]| {
                        for (col, value) in row.iter_mut().enumerate() {
                            if let Some((offset, bias)) = bias {
                                *value += bias[offset + col];
                            }
                            *value = self.activation.apply(*value);
                        }
                    };
                    if self.c.row_stride == self.n {
                        // Contiguous rows: split them over threads.
                        let rows = &mut c[c_start..c_start + self.m * self.n];
                        crate::cpu::in_parts(rows, self.n, |_, part| {
                            part.chunks_mut(self.n).for_each(epilogue);
                        });
                    } else {
                        for row in 0..self.m {
                            let start = c_start + row * self.c.row_stride;
                            epilogue(&mut c[start..start + self.n]);
                        }
                    }
                    continue;
                }
                for row in 0..self.m {
                    for col in 0..self.n {
                        let mut value = product[row * self.n + col];
                        if let Some((offset, bias)) = bias {
                            value += bias[offset + col];
                        }
                        value = self.activation.apply(value);
                        let index = self.c.index(outer, inner, row, col) - c_base;
                        if self.accumulate {
                            c[index] += value;
                        } else {
                            c[index] = value;
                        }
                    }
                }
            }
        }
    }

    /// True when the vec4 kernels can read A and B: each operand is contiguous along one of its
    /// dimensions (unit stride), that dimension's size, the other stride, the offset and the
    /// batch strides in use are multiples of 4 (so every vec4 lies inside one row or column of
    /// the operand, aligned).
    pub fn vec4_aligned(&self) -> bool {
        let four = |value: usize| value.is_multiple_of(4);
        let batch_ok = |layout: &Layout| {
            four(layout.offset)
                && (self.batch_outer <= 1 || four(layout.outer_stride))
                && (self.batch_inner <= 1 || four(layout.inner_stride))
        };
        // The kernel's view: A is k-contiguous when its column stride is 1 and its row stride is
        // not, else it is taken as m-contiguous; B is n-contiguous when its column stride is 1,
        // else it is taken as k-contiguous.
        let a_ok = if self.a.col_stride == 1 && self.a.row_stride != 1 {
            four(self.k) && four(self.a.row_stride)
        } else {
            self.a.row_stride == 1 && four(self.m) && four(self.a.col_stride)
        };
        let b_ok = if self.b.col_stride == 1 {
            four(self.n) && four(self.b.row_stride)
        } else {
            self.b.row_stride == 1 && four(self.k) && four(self.b.col_stride)
        };
        // K > 0 also guarantees each operand holds at least one vec4 (bound as an array of them).
        self.k > 0 && a_ok && b_ok && batch_ok(&self.a) && batch_ok(&self.b)
    }

    /// Which kernel `Auto` means on this context. Software adapters and products with K < 32
    /// or fewer than 32 64×64 output tiles run `Direct` (barriers cost more than they save
    /// there). Otherwise vec4-aligned layouts run a `Vec4` kernel: 128×128 tiles (bk 8) when
    /// the output has at least 256 of them (about two workgroups per multiprocessor on an H100)
    /// and they waste little more padding than 64×64 tiles would, else 128×64 tiles (bk 16) on
    /// the same conditions, else 64×64 tiles (bk 16). Other layouts run `Tiled { bk: 8 }`
    /// (`THITL_MATMUL_BK` changes its bk), or `Direct` when the output has fewer than 32
    /// 128×128 tiles. `THITL_MATMUL_VEC4=0` keeps `Auto` off the vec4 kernels.
    pub fn choose_kernel(&self, context: &GpuContext) -> MatmulKernel {
        self.choose_kernel_for(context.is_hardware(), auto_vec4())
    }

    /// [`Matmul::choose_kernel`] for an adapter that is (`hardware`) or is not a GPU, with or
    /// without the vec4 kernels.
    pub fn choose_kernel_for(&self, hardware: bool, vec4: bool) -> MatmulKernel {
        let tiles = |bm: usize, bn: usize| self.m.div_ceil(bm) * self.n.div_ceil(bn) * self.batches();
        // Outputs computed, padding included, relative to 64×64 tiles.
        let padded = |bm: usize, bn: usize| {
            (self.m.div_ceil(bm) * bm * self.n.div_ceil(bn) * bn) as f64
                / (self.m.div_ceil(64) * 64 * self.n.div_ceil(64) * 64) as f64
        };
        let fits = |bm: usize, bn: usize| tiles(bm, bn) >= LARGE_TILES && padded(bm, bn) <= 1.125;
        if !hardware || self.k < 32 || tiles(64, 64) < SMALL_TILES {
            MatmulKernel::Direct
        } else if vec4 && self.vec4_aligned() {
            if fits(128, 128) {
                MatmulKernel::Vec4 { bm: 128, bn: 128, bk: 8 }
            } else if fits(128, 64) {
                MatmulKernel::Vec4 { bm: 128, bn: 64, bk: 16 }
            } else {
                MatmulKernel::Vec4 { bm: 64, bn: 64, bk: 16 }
            }
        } else if tiles(128, 128) >= 32 {
            MatmulKernel::Tiled { bk: auto_bk() }
        } else {
            MatmulKernel::Direct
        }
    }

    /// The kernel that actually runs for `kernel`: `Auto` resolved, and `Vec4` replaced by
    /// `Tiled { bk: 8 }` where the layout is not vec4-aligned.
    pub fn resolve_kernel(&self, context: &GpuContext, kernel: MatmulKernel) -> MatmulKernel {
        match kernel {
            MatmulKernel::Auto => self.choose_kernel(context),
            MatmulKernel::Vec4 { .. } if !self.vec4_aligned() => MatmulKernel::Tiled { bk: 8 },
            other => other,
        }
    }

    /// Records the matmul. `bias` must be given when `self.bias` is set.
    pub fn record(
        &self,
        recorder: &mut Recorder<'_>,
        kernel: MatmulKernel,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        bias: Option<&wgpu::Buffer>,
        c: &wgpu::Buffer,
    ) {
        assert_eq!(self.c.col_stride, 1, "C must have unit column stride");
        if self.m > 0 && self.n > 0 && self.batches() > 0 {
            let (last_outer, last_inner) = (self.batch_outer - 1, self.batch_inner - 1);
            if self.k > 0 {
                let a_last = self.a.index(last_outer, last_inner, self.m - 1, self.k - 1);
                let b_last = self.b.index(last_outer, last_inner, self.k - 1, self.n - 1);
                super::require(a, a_last + 1, "matmul A");
                super::require(b, b_last + 1, "matmul B");
            }
            super::require(c, self.c.index(last_outer, last_inner, self.m - 1, self.n - 1) + 1, "matmul C");
            if let (Some(offset), Some(bias)) = (self.bias, bias) {
                super::require(bias, offset + self.n, "matmul bias");
            }
        }
        assert_eq!(self.bias.is_some(), bias.is_some(), "bias buffer iff bias offset");
        let context = recorder.context();
        let kernel = self.resolve_kernel(context, kernel);
        let a_k_contiguous = self.a.col_stride == 1 && self.a.row_stride != 1;
        let b_n_contiguous = self.b.col_stride == 1;
        let (entry, bm, bn, bk) = match kernel {
            MatmulKernel::Tiled { bk } => {
                assert!(matches!(bk, 8 | 16 | 32), "tiled bk must be 8, 16 or 32");
                ("tiled", 128, 128, bk)
            }
            MatmulKernel::Vec4 { bm, bn, bk } => {
                let entry = match (bm, bn, bk) {
                    (128, 128, 8 | 16) => "wide",
                    (128, 64, 16) => "wide_tall",
                    (64, 64, 16 | 32) => "wide_small",
                    _ => panic!(
                        "vec4 tiles are 128x128 (bk 8, 16), 128x64 (bk 16) or 64x64 (bk 16, 32), \
                         not {bm}x{bn} bk {bk}"
                    ),
                };
                (entry, bm, bn, bk)
            }
            MatmulKernel::Direct | MatmulKernel::Auto => ("direct", 32, 32, 8),
        };
        let key = format!("matmul.{entry}.{bm}x{bn}.bk{bk}.a{}.b{}", a_k_contiguous as u8, b_n_contiguous as u8);
        let pipeline =
            context.pipeline(&key, entry, &[Access::Read, Access::Read, Access::Read, Access::ReadWrite], || {
                let body = if entry.starts_with("wide") { VEC4 } else { SCALAR };
                format!(
                    "const BM: u32 = {bm}u;\nconst BN: u32 = {bn}u;\nconst BK: u32 = {bk}u;\n\
                     const A_K_CONTIGUOUS: bool = {a_k_contiguous};\n\
                     const B_N_CONTIGUOUS: bool = {b_n_contiguous};\n{COMMON}\n{body}"
                )
            });
        let batches = u32::try_from(self.batches()).expect("too many batches");
        let workgroups = [self.n.div_ceil(bn as usize) as u32, self.m.div_ceil(bm as usize) as u32, batches];
        recorder.dispatch(&pipeline, &self.params(), &[a, b, bias.unwrap_or(a), c], workgroups);
    }
}
