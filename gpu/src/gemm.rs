//! The CPU backend's f32 matrix product on x86-64 processors with AVX2 and FMA: blocked and
//! packed like the BLIS family (a 6×16 register tile, A and B copied into panels that stay in
//! cache), split over threads by rows or columns of C. Elsewhere `matrixmultiply` runs the
//! product.
//!
//! Where the processor also has AVX-512, a 12×32 register tile of 512-bit vectors reads two
//! neighbouring 16-column panels of B at once (the same packing of B; A in panels of 12 rows).
//! Every value of C is the same chain of fused multiply-adds in the same order as on the 6×16
//! tile, so the two kernels give the same bits (tested); the wide one does twice the arithmetic
//! per instruction.
//!
//! Why not `matrixmultiply` everywhere: on the training products of the base model (C of
//! 4096×128 to 4096×512, or weight gradients with K = 4096) its 8×8 kernel and its packing
//! reached about 110 GFLOP/s on two Zen 3 cores, against a peak near 205; see BENCHMARKS.md.

/// Rows of the register tile.
const MR: usize = 6;
/// Rows of the AVX-512 register tile (12×32: 24 of the 32 vector registers accumulate).
const WIDE_MR: usize = 12;
/// Columns of the register tile (two AVX vectors).
const NR: usize = 16;
/// Depth of a packed block (A's panel of MR×KC and B's of KC×NR stay in L1/L2 cache; 512 ran
/// the training products about 8% faster than 256 or 1024 on Zen 3).
const KC: usize = 512;
/// Rows of A packed at once (MC×KC floats: 240 KiB, in L2).
const MC: usize = 120;
/// Products whose A has at most this many values (and K ≤ KC) read A in place (it stays in L1).
const IN_PLACE_MAX: usize = 8192;
/// Products smaller than this (m·n·k) run on one thread.
const PARALLEL_MIN_WORK: usize = 1 << 20;

/// The register tiles of the blocked product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// 6×16, 256-bit vectors (AVX2 and FMA).
    Avx2,
    /// 12×32, 512-bit vectors (AVX-512F); the same bits as [`Kernel::Avx2`].
    Avx512,
}

impl Kernel {
    /// Whether this processor can run the kernel.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && (self == Kernel::Avx2 || std::arch::is_x86_feature_detected!("avx512f"));
        #[cfg(not(target_arch = "x86_64"))]
        return false;
    }

    /// The widest kernel this processor runs, if any (none: `matrixmultiply` runs products).
    pub fn best() -> Option<Kernel> {
        [Kernel::Avx512, Kernel::Avx2].into_iter().find(|kernel| kernel.available())
    }

    /// Every product this processor runs, for [`sgemm_bias_on`]: the available kernels, widest
    /// first, then `None` (`matrixmultiply`, everywhere).
    pub fn choices() -> Vec<Option<Kernel>> {
        [Some(Kernel::Avx512), Some(Kernel::Avx2), None]
            .into_iter()
            .filter(|k| k.is_none_or(Kernel::available))
            .collect()
    }

    /// How descriptions name it: `AVX2 + FMA` or `AVX-512`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx2 => "AVX2 + FMA",
            Kernel::Avx512 => "AVX-512",
        }
    }
}

/// `c = alpha·A·B + beta·c` with the arguments of `matrixmultiply::sgemm` (element strides;
/// with beta 0, c is only written), then `+ bias[j]` on column j of C (the same values as adding
/// it afterwards) when it can add it while writing C: returns whether it did. Runs the blocked
/// product on [`Kernel::best`] when there is one and C's columns are contiguous (it adds the
/// bias), else `matrixmultiply` (which leaves the bias to the caller).
///
/// # Safety
/// The strides must address only elements inside the pointed-to buffers, C must not overlap A
/// or B, and `bias` holds at least n values.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_bias(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
    bias: Option<&[f32]>,
) -> bool {
    // SAFETY: forwarded from the caller.
    unsafe { sgemm_bias_on(*BEST, m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc, bias) }
}

/// [`Kernel::best`], detected once.
static BEST: std::sync::LazyLock<Option<Kernel>> = std::sync::LazyLock::new(Kernel::best);

/// [`sgemm_bias`] on a chosen kernel (`None`: `matrixmultiply`), to compare kernels.
///
/// # Safety
/// As [`sgemm_bias`]; a kernel given is [`Kernel::available`] (checked, panics otherwise).
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_bias_on(
    kernel: Option<Kernel>,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
    bias: Option<&[f32]>,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let Some(kernel) = kernel.filter(|_| csc == 1 && k > 0) {
        assert!(kernel.available(), "the {} kernel does not run on this processor", kernel.name());
        let bias = bias.map(|bias| {
            assert!(bias.len() >= n, "bias shorter than the columns");
            bias.as_ptr() as usize
        });
        let product = Product {
            a: Strided::new(a, rsa, csa),
            b: Strided::new(b, rsb, csb),
            c: c as usize,
            rsc,
            alpha,
            beta,
            bias,
            wide: kernel == Kernel::Avx512,
        };
        // SAFETY: forwarded from the caller; the processor runs the kernel.
        unsafe { product.run(m, k, n) };
        return true;
    }
    // SAFETY: forwarded from the caller.
    unsafe { matrixmultiply::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) };
    bias.is_none()
}

/// A strided matrix operand (the pointer kept as an address so that parts can go to threads).
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Strided {
    at: usize,
    row: isize,
    col: isize,
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl Strided {
    fn new(at: *const f32, row: isize, col: isize) -> Self {
        Strided { at: at as usize, row, col }
    }
    /// The operand from row `r` and column `c` on.
    fn offset(self, r: usize, c: usize) -> Self {
        let bytes = (r as isize * self.row + c as isize * self.col) * 4;
        Strided { at: (self.at as isize + bytes) as usize, ..self }
    }
    /// The same elements with rows and columns swapped.
    fn transposed(self) -> Self {
        Strided { row: self.col, col: self.row, ..self }
    }
    /// Element (r, c).
    ///
    /// # Safety
    /// In bounds of the caller's buffer.
    #[inline(always)]
    unsafe fn get(self, r: usize, c: usize) -> f32 {
        // SAFETY: in bounds (the caller's contract).
        unsafe { *(self.at as *const f32).offset(r as isize * self.row + c as isize * self.col) }
    }
}

#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Product {
    a: Strided,
    b: Strided,
    /// C's address; C's columns are contiguous.
    c: usize,
    rsc: isize,
    alpha: f32,
    beta: f32,
    /// The address of a bias per column of C, added after the last block of K.
    bias: Option<usize>,
    /// Whether tiles are 12×32 on AVX-512 (else 6×16 on AVX2).
    wide: bool,
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl Product {
    /// The part of the product from row `r` and column `col` of C on.
    fn offset(self, r: usize, col: usize) -> Self {
        Product {
            a: self.a.offset(r, 0),
            b: self.b.offset(0, col),
            c: (self.c as isize + (r as isize * self.rsc + col as isize) * 4) as usize,
            bias: self.bias.map(|bias| bias + col * 4),
            ..self
        }
    }

    /// Splits the product over threads (by rows of C when there are enough, else by columns),
    /// each part running the whole blocked product on its own (on [`crate::pool`]'s threads).
    ///
    /// # Safety
    /// See [`sgemm_bias`]; the processor has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    unsafe fn run(self, m: usize, k: usize, n: usize) {
        let threads = crate::cpu::parallelism();
        let parts = if m * n * k < PARALLEL_MIN_WORK { 1 } else { threads };
        // Rows when each part still gets several tiles of them, else columns.
        let by_rows = m >= parts * 8 * MR || n < parts * 2 * NR;
        let (length, unit) = if by_rows { (m, if self.wide { WIDE_MR } else { MR }) } else { (n, NR) };
        let parts = parts.min(length.div_ceil(unit)).max(1);
        if parts == 1 {
            // SAFETY: forwarded.
            unsafe { self.blocked(m, k, n) };
            return;
        }
        let per = length.div_ceil(parts).div_ceil(unit) * unit;
        crate::pool::run_parts(length.div_ceil(per), &|index| {
            let (first, size) = (index * per, per.min(length - index * per));
            let (part, pm, pn) =
                if by_rows { (self.offset(first, 0), size, n) } else { (self.offset(0, first), m, size) };
            // SAFETY: the parts write disjoint rows (or columns) of C.
            unsafe { part.blocked(pm, k, pn) };
        });
    }

    /// The blocked product on this thread: B is packed KC rows at a time, A MC rows at a time.
    ///
    /// # Safety
    /// As [`Product::run`].
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn blocked(self, m: usize, k: usize, n: usize) {
        let panels_n = n.div_ceil(NR);
        // Packing buffers kept per thread (attention runs thousands of small products a step);
        // packing writes every value a tile then reads.
        thread_local! {
            static PACKED: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
                const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
        }
        PACKED.with_borrow_mut(|(packed_a, packed_b)| {
            let (a_len, b_len) = (MC.div_ceil(WIDE_MR) * WIDE_MR * KC.min(k), panels_n * NR * KC.min(k));
            if packed_a.len() < a_len {
                packed_a.resize(a_len, 0.0);
            }
            if packed_b.len() < b_len {
                packed_b.resize(b_len, 0.0);
            }
            // SAFETY: forwarded.
            unsafe { self.blocked_with(m, k, n, &mut packed_a[..a_len], &mut packed_b[..b_len]) }
        })
    }

    /// [`Product::blocked`] with its packing buffers.
    ///
    /// # Safety
    /// As [`Product::run`].
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn blocked_with(self, m: usize, k: usize, n: usize, packed_a: &mut [f32], packed_b: &mut [f32]) {
        let panels_n = n.div_ceil(NR);
        // Small products (attention's per sample and head) read A in place, and B too when its
        // rows are contiguous: copying them cost more than the product.
        let in_place_a = k <= KC && m * k <= IN_PLACE_MAX;
        let in_place_b = in_place_a && self.b.col == 1 && n.is_multiple_of(NR);
        for depth in (0..k).step_by(KC) {
            let kc = KC.min(k - depth);
            if !in_place_b {
                // SAFETY: rows depth..depth + kc of B are in bounds.
                unsafe { pack(self.b.offset(depth, 0).transposed(), NR, n, kc, packed_b) };
            }
            // The first block applies beta; the later ones add to what it wrote; the last adds
            // the bias.
            let beta = if depth == 0 { self.beta } else { 1.0 };
            let bias = self.bias.filter(|_| depth + kc == k);
            let scale = (self.alpha, beta);
            // A's rows per panel: the wide tile's when it runs.
            let mr = if self.wide { WIDE_MR } else { MR };
            for row in (0..m).step_by(MC) {
                let mc = MC.min(m - row);
                if !in_place_a {
                    // SAFETY: rows row..row + mc, columns depth..depth + kc of A are in bounds.
                    unsafe { pack(self.a.offset(row, depth), mr, mc, kc, packed_a) };
                }
                // A from row `first` of this block on (inside one panel of mr rows).
                let a_panel = |first: usize| {
                    if in_place_a {
                        Panel::of(self.a.offset(row + first, depth))
                    } else {
                        let at = (first / mr) * mr * kc + first % mr;
                        Panel { at: packed_a[at..].as_ptr(), across: 1, along: mr as isize }
                    }
                };
                let b_panel = |panel_n: usize| {
                    if in_place_b {
                        Panel::of(self.b.offset(depth, panel_n * NR).transposed())
                    } else {
                        Panel::packed(&packed_b[panel_n * NR * kc..][..NR * kc], NR)
                    }
                };
                // C from row `first` of this block and column `col` on, with its bias.
                let c_at = |first: usize, col: usize| {
                    let c = (self.c as *mut f32).wrapping_offset((row + first) as isize * self.rsc + col as isize);
                    (c, bias.map(|bias| (bias as *const f32).wrapping_add(col)))
                };
                if !self.wide {
                    for panel_n in 0..panels_n {
                        let (col, b) = (panel_n * NR, b_panel(panel_n));
                        for first in (0..mc).step_by(MR) {
                            let (c, bias) = c_at(first, col);
                            let (rows, cols) = (MR.min(mc - first), NR.min(n - col));
                            // SAFETY: the tile rows × cols at c is inside C, bias has cols
                            // values, the panels hold kc steps of `rows` and NR values.
                            unsafe { tile(kc, a_panel(first), b, c, self.rsc, rows, cols, scale, bias) };
                        }
                    }
                    continue;
                }
                // The wide tile: an A panel stays in L1 while B's panels pass two at a time
                // (the last alone, on 6×16 tiles, when their number is odd).
                for first in (0..mc).step_by(WIDE_MR) {
                    let rows = WIDE_MR.min(mc - first);
                    for panel_n in (0..panels_n).step_by(2) {
                        let (col, b) = (panel_n * NR, b_panel(panel_n));
                        if panel_n + 1 < panels_n {
                            let (c, bias) = c_at(first, col);
                            let cols = (2 * NR).min(n - col);
                            // SAFETY: as for `tile`, with 2·NR values per step over the two
                            // panels; the processor has AVX-512F (`wide` is only set then).
                            unsafe {
                                wide_tile(
                                    kc,
                                    a_panel(first),
                                    b,
                                    b_panel(panel_n + 1).at,
                                    c,
                                    self.rsc,
                                    rows,
                                    cols,
                                    scale,
                                    bias,
                                )
                            };
                            continue;
                        }
                        for half in (first..first + rows).step_by(MR) {
                            let (c, bias) = c_at(half, col);
                            let (rows, cols) = (MR.min(first + rows - half), NR.min(n - col));
                            // SAFETY: as above.
                            unsafe { tile(kc, a_panel(half), b, c, self.rsc, rows, cols, scale, bias) };
                        }
                    }
                }
            }
        }
    }
}

/// Where a tile reads an operand's panel: value i of step p (i < MR for A, NR for B; p < kc) at
/// `at + i·across + p·along` floats. B's panels have `across` 1 (NR neighbours are loaded
/// together).
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Panel {
    at: *const f32,
    across: isize,
    along: isize,
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl Panel {
    /// A packed panel of `width` values per step.
    fn packed(values: &[f32], width: usize) -> Self {
        Panel { at: values.as_ptr(), across: 1, along: width as isize }
    }
    /// A view read in place: i along its rows, p along its columns.
    fn of(view: Strided) -> Self {
        Panel { at: view.at as *const f32, across: view.row, along: view.col }
    }
}

/// Copies a `len × kc` view (element (i, p): panel dimension i, depth p) into panels of
/// `width` along i (`[panel][p][width]`), zero beyond i = len. A packs as it is (width MR), B
/// through [`Strided::transposed`] (width NR).
///
/// # Safety
/// The `len × kc` elements of the view are in bounds.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn pack(view: Strided, width: usize, len: usize, kc: usize, out: &mut [f32]) {
    for (panel, chunk) in out.chunks_exact_mut(width * kc).take(len.div_ceil(width)).enumerate() {
        let first = panel * width;
        let count = width.min(len - first);
        if view.row == 1 && count == width {
            // Contiguous along the panel: each p copies `width` neighbours.
            for (p, slot) in chunk.chunks_exact_mut(width).enumerate() {
                // SAFETY: in bounds (the caller's contract).
                let source = unsafe {
                    std::slice::from_raw_parts(
                        (view.at as *const f32).offset(first as isize + p as isize * view.col),
                        width,
                    )
                };
                slot.copy_from_slice(source);
            }
            continue;
        }
        // Contiguous along the depth (a row-major A, a B whose columns are contiguous): four
        // rows at a time, turned in 4×4 blocks; the rest one i at a time below.
        let mut turned = 0;
        if view.col == 1 {
            turned = count / 4 * 4;
            // SAFETY: rows first..first + turned, depths 0..kc are in bounds (the caller's
            // contract); the stores land in the chunk (i0 + 3 < width, p + 3 < kc).
            unsafe { pack_turned(view, first, turned, kc, width, chunk) };
        }
        // Otherwise along the depth, one i at a time (contiguous reads when the depth is).
        for i in turned..width {
            for p in 0..kc {
                // SAFETY: in bounds for i < count.
                chunk[p * width + i] = if i < count { unsafe { view.get(first + i, p) } } else { 0.0 };
            }
        }
    }
}

/// [`pack`]'s rows `first..first + rows` (a multiple of 4) of a view contiguous along the depth
/// into `chunk` (`[p][width]`, row i0 at column i0 − first): 4×4 blocks loaded by row and stored
/// by column, the last `kc % 4` depths one by one.
///
/// # Safety
/// As [`pack`]; `rows` ≤ width and the view's column stride is 1.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn pack_turned(view: Strided, first: usize, rows: usize, kc: usize, width: usize, chunk: &mut [f32]) {
    use std::arch::x86_64::*;
    debug_assert!(view.col == 1 && rows <= width && rows.is_multiple_of(4) && chunk.len() >= width * kc);
    let whole = kc / 4 * 4;
    let out = chunk.as_mut_ptr();
    for i0 in (0..rows).step_by(4) {
        let source: [*const f32; 4] =
            std::array::from_fn(|r| (view.at as *const f32).wrapping_offset((first + i0 + r) as isize * view.row));
        for p in (0..whole).step_by(4) {
            // SAFETY: depths p..p + 4 of the four rows are in the view; (p + q)·width + i0 + 3
            // is inside the chunk.
            unsafe {
                let [r0, r1, r2, r3] = source.map(|row| _mm_loadu_ps(row.add(p)));
                let (t0, t1) = (_mm_unpacklo_ps(r0, r1), _mm_unpackhi_ps(r0, r1));
                let (t2, t3) = (_mm_unpacklo_ps(r2, r3), _mm_unpackhi_ps(r2, r3));
                let columns =
                    [_mm_movelh_ps(t0, t2), _mm_movehl_ps(t2, t0), _mm_movelh_ps(t1, t3), _mm_movehl_ps(t3, t1)];
                for (q, column) in columns.into_iter().enumerate() {
                    _mm_storeu_ps(out.add((p + q) * width + i0), column);
                }
            }
        }
        for p in whole..kc {
            for (r, row) in source.iter().enumerate() {
                // SAFETY: as above.
                unsafe { *out.add(p * width + i0 + r) = *row.add(p) };
            }
        }
    }
}

/// One MR×NR tile of C: `c = alpha·(a·b) + beta·c` (then `+ bias[j]`) over the `rows × cols`
/// corner that is in C, over the `kc` steps of panels a (MR rows, of which the first `rows` are
/// read) and b (NR values per step). With beta 0, C is not read.
///
/// # Safety
/// The processor has AVX2 and FMA; the `rows × cols` values at c (row stride `rsc`) are in C;
/// a's first `rows` rows and b's NR values per step are readable for kc steps; a bias has
/// `cols` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    kc: usize,
    a: Panel,
    b: Panel,
    c: *mut f32,
    rsc: isize,
    rows: usize,
    cols: usize,
    (alpha, beta): (f32, f32),
    bias: Option<*const f32>,
) {
    use std::arch::x86_64::*;
    debug_assert!(b.across == 1 && rows >= 1);
    // Rows past the edge of C repeat its last row (their sums are not stored), so an A read in
    // place is never read outside its rows.
    let a_rows: [*const f32; MR] = std::array::from_fn(|i| a.at.wrapping_offset(i.min(rows - 1) as isize * a.across));
    let mut sums = [[_mm256_setzero_ps(); 2]; MR];
    for p in 0..kc as isize {
        // SAFETY: p < kc, inside the panels (the caller's contract).
        unsafe {
            let b_row = b.at.offset(p * b.along);
            let (b0, b1) = (_mm256_loadu_ps(b_row), _mm256_loadu_ps(b_row.add(8)));
            for (sum, a_row) in sums.iter_mut().zip(a_rows) {
                let value = _mm256_broadcast_ss(&*a_row.offset(p * a.along));
                sum[0] = _mm256_fmadd_ps(value, b0, sum[0]);
                sum[1] = _mm256_fmadd_ps(value, b1, sum[1]);
            }
        }
    }
    let alpha_v = _mm256_set1_ps(alpha);
    let beta_v = _mm256_set1_ps(beta);
    if rows == MR && cols == NR {
        // SAFETY: a bias has NR values here.
        let bias_v = bias.map(|bias| unsafe { [_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.add(8))] });
        for (i, sum) in sums.iter().enumerate() {
            // SAFETY: the full tile is inside C.
            unsafe {
                let out = c.offset(i as isize * rsc);
                for (half, &value) in sum.iter().enumerate() {
                    let at = out.add(8 * half);
                    let mut result = _mm256_mul_ps(alpha_v, value);
                    if beta != 0.0 {
                        result = _mm256_fmadd_ps(beta_v, _mm256_loadu_ps(at), result);
                    }
                    if let Some(bias) = bias_v {
                        result = _mm256_add_ps(result, bias[half]);
                    }
                    _mm256_storeu_ps(at, result);
                }
            }
        }
        return;
    }
    // An edge tile: through a full-size buffer, then only the corner inside C.
    let mut buffer = [[0.0f32; NR]; MR];
    for (row, sum) in buffer.iter_mut().zip(&sums) {
        // SAFETY: the buffer row holds NR values.
        unsafe {
            _mm256_storeu_ps(row.as_mut_ptr(), _mm256_mul_ps(alpha_v, sum[0]));
            _mm256_storeu_ps(row.as_mut_ptr().add(8), _mm256_mul_ps(alpha_v, sum[1]));
        }
    }
    // SAFETY: the corner is inside C, a bias has `cols` values (the caller's contract).
    unsafe { write_corner(&buffer, c, rsc, rows, cols, beta, bias) };
}

/// [`tile`] on a 12×32 tile of 512-bit vectors (a's first `rows` ≤ 12 rows): B's 32 values of
/// step p are the 16 of panel `b` and the 16 at `b_next` (the next panel, read with b's stride
/// along p). Each value of C is the same chain of fused multiply-adds as [`tile`] computes, then
/// the same scaling, so the results are bit-identical to [`tile`]'s.
///
/// # Safety
/// As [`tile`] with `rows` ≤ WIDE_MR, `cols` ≤ 2·NR, both panels readable for kc steps, and
/// AVX-512F present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn wide_tile(
    kc: usize,
    a: Panel,
    b: Panel,
    b_next: *const f32,
    c: *mut f32,
    rsc: isize,
    rows: usize,
    cols: usize,
    (alpha, beta): (f32, f32),
    bias: Option<*const f32>,
) {
    use std::arch::x86_64::*;
    debug_assert!(b.across == 1 && rows >= 1);
    let a_rows: [*const f32; WIDE_MR] =
        std::array::from_fn(|i| a.at.wrapping_offset(i.min(rows - 1) as isize * a.across));
    let mut sums = [[_mm512_setzero_ps(); 2]; WIDE_MR];
    for p in 0..kc as isize {
        // SAFETY: p < kc, inside the panels (the caller's contract).
        unsafe {
            let (b0, b1) = (_mm512_loadu_ps(b.at.offset(p * b.along)), _mm512_loadu_ps(b_next.offset(p * b.along)));
            for (sum, a_row) in sums.iter_mut().zip(a_rows) {
                let value = _mm512_set1_ps(*a_row.offset(p * a.along));
                sum[0] = _mm512_fmadd_ps(value, b0, sum[0]);
                sum[1] = _mm512_fmadd_ps(value, b1, sum[1]);
            }
        }
    }
    let alpha_v = _mm512_set1_ps(alpha);
    let beta_v = _mm512_set1_ps(beta);
    if rows == WIDE_MR && cols == 2 * NR {
        // SAFETY: a bias has 2·NR values here.
        let bias_v = bias.map(|bias| unsafe { [_mm512_loadu_ps(bias), _mm512_loadu_ps(bias.add(NR))] });
        for (i, sum) in sums.iter().enumerate() {
            // SAFETY: the full tile is inside C.
            unsafe {
                let out = c.offset(i as isize * rsc);
                for (half, &value) in sum.iter().enumerate() {
                    let at = out.add(NR * half);
                    let mut result = _mm512_mul_ps(alpha_v, value);
                    if beta != 0.0 {
                        result = _mm512_fmadd_ps(beta_v, _mm512_loadu_ps(at), result);
                    }
                    if let Some(bias) = bias_v {
                        result = _mm512_add_ps(result, bias[half]);
                    }
                    _mm512_storeu_ps(at, result);
                }
            }
        }
        return;
    }
    // An edge tile: through a full-size buffer, then only the corner inside C.
    let mut buffer = [[0.0f32; 2 * NR]; WIDE_MR];
    for (row, sum) in buffer.iter_mut().zip(&sums) {
        // SAFETY: the buffer row holds 2·NR values.
        unsafe {
            _mm512_storeu_ps(row.as_mut_ptr(), _mm512_mul_ps(alpha_v, sum[0]));
            _mm512_storeu_ps(row.as_mut_ptr().add(NR), _mm512_mul_ps(alpha_v, sum[1]));
        }
    }
    // SAFETY: the corner is inside C, a bias has `cols` values (the caller's contract).
    unsafe { write_corner(&buffer, c, rsc, rows, cols, beta, bias) };
}

/// An edge tile's last step, shared by both kernels so that they give the same bits: the
/// `rows × cols` corner of `buffer` (alpha·A·B) into C as `beta·c + value` (fused), then
/// `+ bias[j]`; with beta 0, C is not read.
///
/// # Safety
/// The `rows × cols` values at c (row stride `rsc`) are in C; a bias has `cols` values.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn write_corner<const W: usize>(
    buffer: &[[f32; W]],
    c: *mut f32,
    rsc: isize,
    rows: usize,
    cols: usize,
    beta: f32,
    bias: Option<*const f32>,
) {
    for (i, row) in buffer.iter().enumerate().take(rows) {
        for (j, &value) in row.iter().enumerate().take(cols) {
            // SAFETY: (i, j) is inside C.
            unsafe {
                let at = c.offset(i as isize * rsc).add(j);
                let mut result = if beta != 0.0 { beta.mul_add(*at, value) } else { value };
                if let Some(bias) = bias {
                    result += *bias.add(j);
                }
                *at = result;
            }
        }
    }
}
