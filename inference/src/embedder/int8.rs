//! Linear layers in int8: `x · W + b` with `W` quantised per output column once at load
//! (symmetric, [-127, 127]) and `x` per row (token) on every call, products summed exactly in
//! i32, then scaled back to f32. An encoder's linear layers are nine tenths of its work; int8
//! reads a quarter of f32's bytes and the CPU multiplies four int8 pairs per lane where it
//! multiplies one f32 pair.
//!
//! Three kernels compute the same integers: AVX-512 VNNI (`vpdpbusd`, u8 × i8 in quads),
//! AVX2 (`vpmaddwd` on values widened to i16, in pairs — exact, unlike `vpmaddubsw`, which
//! saturates) and portable Rust. The one the CPU supports is chosen at load; results are
//! identical on every machine, so an index built on one serves queries embedded on another.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::simd;

/// Rows (tokens) per parallel task.
const ROW_PANEL: usize = 64;
/// Output columns per parallel task (a multiple of every kernel's column block).
const COL_PANEL: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Isa {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var_os("KB_INT8_PORTABLE").is_none() {
                if is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
                {
                    return Self::Avx512Vnni;
                }
                if is_x86_feature_detected!("avx2") {
                    return Self::Avx2;
                }
            }
        }
        Self::Portable
    }

    /// (rows, columns) of one kernel call, and how many `k` values one lane step consumes.
    fn shape(self) -> (usize, usize, usize) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni => (8, 32, 4),
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => (6, 16, 2),
            Self::Portable => (4, 16, 1),
        }
    }
}

/// Weights laid out for one kernel: column blocks of `nr`, within each the `k` steps, within
/// each step the block's columns with their `kstep` consecutive `k` values side by side.
enum Packed {
    /// VNNI: i8, steps of 4.
    I8(Vec<i8>),
    /// AVX2: i16, steps of 2.
    I16(Vec<i16>),
}

/// A linear layer `x · W + b` with int8 weights.
pub struct Int8Linear {
    k: usize,
    n: usize,
    /// `k` rounded up to the kernel's step, `n` to its column block.
    k_pad: usize,
    n_pad: usize,
    isa: Isa,
    packed: Packed,
    col_scale: Vec<f32>,
    /// 128 · Σ_k W[k][n] for VNNI, which multiplies unsigned activations (x + 128): what the
    /// offset added to each column's sum. Zero for the other kernels.
    col_corr: Vec<i32>,
    bias: Vec<f32>,
}

impl Int8Linear {
    /// From `weight` (out, in) and `bias` (out), as checkpoints store them.
    pub fn new(weight: &Tensor, bias: &Tensor) -> candle_core::Result<Self> {
        let (n, k) = weight.dims2()?;
        let w: Vec<Vec<f32>> = weight.to_dtype(candle_core::DType::F32)?.to_vec2()?;
        let bias: Vec<f32> = bias.to_dtype(candle_core::DType::F32)?.to_vec1()?;
        Ok(Self::from_rows(&w, bias, k, n, Isa::detect()))
    }

    fn from_rows(w: &[Vec<f32>], bias: Vec<f32>, k: usize, n: usize, isa: Isa) -> Self {
        let (_, nr, kstep) = isa.shape();
        let k_pad = k.div_ceil(kstep) * kstep;
        let n_pad = n.div_ceil(nr) * nr;
        let mut q = vec![0i8; n_pad * k_pad]; // q[col][k]
        let mut col_scale = vec![1f32; n];
        let mut col_sum = vec![0i32; n_pad];
        for (col, row) in w.iter().enumerate() {
            let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = if amax > 0.0 { amax / 127.0 } else { 1.0 };
            col_scale[col] = scale;
            for (kk, v) in row.iter().enumerate() {
                let qv = (v / scale).round().clamp(-127.0, 127.0) as i8;
                q[col * k_pad + kk] = qv;
                col_sum[col] += qv as i32;
            }
        }
        let steps = k_pad / kstep;
        let at = |block: usize, step: usize, c: usize, t: usize| ((block * steps + step) * nr + c) * kstep + t;
        let packed = match kstep {
            2 => {
                let mut p = vec![0i16; n_pad * k_pad];
                for col in 0..n_pad {
                    for kk in 0..k_pad {
                        p[at(col / nr, kk / kstep, col % nr, kk % kstep)] = q[col * k_pad + kk] as i16;
                    }
                }
                Packed::I16(p)
            }
            _ => {
                let mut p = vec![0i8; n_pad * k_pad];
                for col in 0..n_pad {
                    for kk in 0..k_pad {
                        p[at(col / nr, kk / kstep, col % nr, kk % kstep)] = q[col * k_pad + kk];
                    }
                }
                Packed::I8(p)
            }
        };
        #[cfg(target_arch = "x86_64")]
        let offset = isa == Isa::Avx512Vnni;
        #[cfg(not(target_arch = "x86_64"))]
        let offset = false;
        let col_corr = col_sum.iter().map(|&s| if offset { 128 * s } else { 0 }).collect();
        Self { k, n, k_pad, n_pad, isa, packed, col_scale, col_corr, bias }
    }

    /// `x` (m, k) row-major → (m, n) row-major.
    pub fn forward_slice(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (k, k_pad) = (self.k, self.k_pad);
        // Per-row symmetric quantisation of the activations.
        let mut a_scale = vec![0f32; m];
        let mut a = vec![0i8; m * k_pad];
        a.par_chunks_mut(k_pad)
            .zip(a_scale.par_chunks_mut(1))
            .enumerate()
            .with_min_len(16)
            .for_each(|(row, (qa, scale))| simd::quantize(&x[row * k..(row + 1) * k], &mut qa[..k], scale));
        let mut out = vec![0f32; m * self.n];
        let row_panels = m.div_ceil(ROW_PANEL);
        let col_panels = self.n_pad.div_ceil(COL_PANEL);
        let out_ptr = simd::SendPtr(out.as_mut_ptr());
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                let a: Vec<u8> = a.iter().map(|&v| (v as i16 + 128) as u8).collect();
                (0..row_panels * col_panels).into_par_iter().for_each(|t| {
                    let ptr = &out_ptr;
                    self.panel(t / col_panels, t % col_panels, m, &a_scale, ptr, |rows, r0, c0, tile| {
                        let Packed::I8(b) = &self.packed else { unreachable!("VNNI packs i8") };
                        // SAFETY: the CPU has AVX-512 F/BW/VNNI (checked at load); `a` holds
                        // rows r0..r0+rows of k_pad bytes, `b` the column block at c0 for all
                        // k_pad/4 steps — the kernel reads only inside both.
                        unsafe { x86::vnni(rows, a.as_ptr().add(r0 * k_pad), k_pad, b.as_ptr().add(c0 * k_pad), tile) }
                    })
                });
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                let a: Vec<i16> = a.iter().map(|&v| v as i16).collect();
                (0..row_panels * col_panels).into_par_iter().for_each(|t| {
                    let ptr = &out_ptr;
                    self.panel(t / col_panels, t % col_panels, m, &a_scale, ptr, |rows, r0, c0, tile| {
                        let Packed::I16(b) = &self.packed else { unreachable!("AVX2 packs i16") };
                        // SAFETY: the CPU has AVX2 (checked at load); `a` holds rows
                        // r0..r0+rows of k_pad values, `b` the column block at c0 for all
                        // k_pad/2 steps — the kernel reads only inside both.
                        unsafe { x86::avx2(rows, a.as_ptr().add(r0 * k_pad), k_pad, b.as_ptr().add(c0 * k_pad), tile) }
                    })
                });
            }
            Isa::Portable => {
                (0..row_panels * col_panels).into_par_iter().for_each(|t| {
                    let ptr = &out_ptr;
                    self.panel(t / col_panels, t % col_panels, m, &a_scale, ptr, |rows, r0, c0, tile| {
                        let Packed::I8(b) = &self.packed else { unreachable!("portable packs i8") };
                        portable(rows, &a[r0 * k_pad..], k_pad, &b[c0 * k_pad..], tile)
                    })
                });
            }
        }
        out
    }

    /// Computes one (row panel, column panel) of the output through `kernel`, which fills a
    /// tile of up to (MR, NR) i32 sums for `rows` rows from `r0` and the block at `c0`.
    fn panel(
        &self,
        rp: usize,
        cp: usize,
        m: usize,
        a_scale: &[f32],
        out: &simd::SendPtr,
        kernel: impl Fn(usize, usize, usize, &mut [[i32; 32]; 8]),
    ) {
        let (mr, nr, _) = self.isa.shape();
        let (r_end, c_end) = (((rp + 1) * ROW_PANEL).min(m), ((cp + 1) * COL_PANEL).min(self.n_pad));
        let mut tile = [[0i32; 32]; 8];
        let mut c0 = cp * COL_PANEL;
        while c0 < c_end {
            let cols = nr.min(self.n.saturating_sub(c0));
            if cols == 0 {
                break;
            }
            let (corr, scale, bias) =
                (&self.col_corr[c0..c0 + cols], &self.col_scale[c0..c0 + cols], &self.bias[c0..c0 + cols]);
            let mut r0 = rp * ROW_PANEL;
            while r0 < r_end {
                let rows = mr.min(r_end - r0);
                kernel(rows, r0, c0, &mut tile);
                for (r, sums) in tile.iter().enumerate().take(rows) {
                    let row = r0 + r;
                    // SAFETY: columns c0..c0+cols of `row` lie inside the (m, n) output, and
                    // each task writes only its own panel's cells.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out.0.add(row * self.n + c0), cols) };
                    simd::dequantize(dst, &sums[..cols], corr, scale, bias, &a_scale[row..row + 1]);
                }
                r0 += rows;
            }
            c0 += nr;
        }
    }
}

/// The reference kernel: `b` packed in steps of 1 (16 columns per step).
fn portable(rows: usize, a: &[i8], k_pad: usize, b: &[i8], tile: &mut [[i32; 32]; 8]) {
    for (r, sums) in tile.iter_mut().enumerate().take(rows) {
        let ar = &a[r * k_pad..(r + 1) * k_pad];
        sums[..16].fill(0);
        for (kk, &av) in ar.iter().enumerate() {
            let bs = &b[kk * 16..kk * 16 + 16];
            for (s, &bv) in sums.iter_mut().zip(bs) {
                *s += av as i32 * bv as i32;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Up to 8 rows × 32 columns. `a`: rows of `k_pad` unsigned bytes (activation + 128);
    /// `b`: `k_pad / 4` steps of 32 columns × 4 signed bytes.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/BW/VNNI; `a` must hold `rows` rows of `k_pad` bytes and `b`
    /// `k_pad * 32` bytes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn vnni(rows: usize, a: *const u8, k_pad: usize, b: *const i8, tile: &mut [[i32; 32]; 8]) {
        // SAFETY: the caller's contract, passed on unchanged.
        unsafe {
            match rows {
                8 => vnni_rows::<8>(a, k_pad, b, tile),
                7 => vnni_rows::<7>(a, k_pad, b, tile),
                6 => vnni_rows::<6>(a, k_pad, b, tile),
                5 => vnni_rows::<5>(a, k_pad, b, tile),
                4 => vnni_rows::<4>(a, k_pad, b, tile),
                3 => vnni_rows::<3>(a, k_pad, b, tile),
                2 => vnni_rows::<2>(a, k_pad, b, tile),
                _ => vnni_rows::<1>(a, k_pad, b, tile),
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn vnni_rows<const R: usize>(a: *const u8, k_pad: usize, b: *const i8, tile: &mut [[i32; 32]; 8]) {
        // SAFETY: the CPU features are enabled on this function and its caller checked them;
        // reads stay in `a` (R rows of k_pad bytes) and `b` (k_pad/4 steps of 128 bytes) as
        // `vnni` requires, writes in `tile`.
        unsafe {
            let mut acc = [[_mm512_setzero_si512(); 2]; R];
            for step in 0..k_pad / 4 {
                let b0 = _mm512_loadu_si512(b.add(step * 128) as *const _);
                let b1 = _mm512_loadu_si512(b.add(step * 128 + 64) as *const _);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_epi32((a.add(r * k_pad + step * 4) as *const i32).read_unaligned());
                    acc[0] = _mm512_dpbusd_epi32(acc[0], av, b0);
                    acc[1] = _mm512_dpbusd_epi32(acc[1], av, b1);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                _mm512_storeu_si512(tile[r].as_mut_ptr() as *mut _, acc[0]);
                _mm512_storeu_si512(tile[r].as_mut_ptr().add(16) as *mut _, acc[1]);
            }
        }
    }

    /// Up to 6 rows × 16 columns. `a`: rows of `k_pad` i16; `b`: `k_pad / 2` steps of 16
    /// columns × 2 i16.
    ///
    /// # Safety
    /// The CPU must have AVX2; `a` must hold `rows` rows of `k_pad` values and `b` `k_pad * 16`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn avx2(rows: usize, a: *const i16, k_pad: usize, b: *const i16, tile: &mut [[i32; 32]; 8]) {
        // SAFETY: the caller's contract, passed on unchanged.
        unsafe {
            match rows {
                6 => avx2_rows::<6>(a, k_pad, b, tile),
                5 => avx2_rows::<5>(a, k_pad, b, tile),
                4 => avx2_rows::<4>(a, k_pad, b, tile),
                3 => avx2_rows::<3>(a, k_pad, b, tile),
                2 => avx2_rows::<2>(a, k_pad, b, tile),
                _ => avx2_rows::<1>(a, k_pad, b, tile),
            }
        }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn avx2_rows<const R: usize>(a: *const i16, k_pad: usize, b: *const i16, tile: &mut [[i32; 32]; 8]) {
        // SAFETY: as for `vnni_rows`, with k_pad/2 steps of 16 columns × 2 i16 in `b`.
        unsafe {
            let mut acc = [[_mm256_setzero_si256(); 2]; R];
            for step in 0..k_pad / 2 {
                let b0 = _mm256_loadu_si256(b.add(step * 32) as *const __m256i);
                let b1 = _mm256_loadu_si256(b.add(step * 32 + 16) as *const __m256i);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_set1_epi32((a.add(r * k_pad + step * 2) as *const i32).read_unaligned());
                    acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(av, b0));
                    acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(av, b1));
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                _mm256_storeu_si256(tile[r].as_mut_ptr() as *mut __m256i, acc[0]);
                _mm256_storeu_si256(tile[r].as_mut_ptr().add(8) as *mut __m256i, acc[1]);
            }
        }
    }
}

impl CustomOp1 for Int8Linear {
    fn name(&self) -> &'static str {
        "int8-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("int8-linear: f32 input only");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("int8-linear: contiguous input only");
        };
        let (m, k) = layout.shape().dims2()?;
        if k != self.k {
            candle_core::bail!("int8-linear: input has {k} features, the layer takes {}", self.k);
        }
        let out = self.forward_slice(&data[start..end], m);
        Ok((CpuStorage::F32(out), Shape::from((m, self.n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random matrix with a few large values, as real activations have.
    fn matrix(rows: usize, cols: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut s = seed;
        (0..rows)
            .map(|_| {
                (0..cols)
                    .map(|_| {
                        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        let u = ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0;
                        if (s >> 20).is_multiple_of(97) {
                            u * 8.0
                        } else {
                            u
                        }
                    })
                    .collect()
            })
            .collect()
    }

    fn isas() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") {
                v.push(Isa::Avx2);
            }
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
            {
                v.push(Isa::Avx512Vnni);
            }
        }
        v
    }

    #[test]
    fn every_kernel_gives_the_same_numbers_close_to_f32() {
        // Odd sizes: row, column and k remainders in every kernel.
        for &(m, k, n) in &[(1, 384, 384), (13, 30, 50), (70, 384, 1152), (9, 1536, 40)] {
            let w = matrix(n, k, 7);
            let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
            let x = matrix(m, k, 11);
            let flat: Vec<f32> = x.iter().flatten().copied().collect();
            let outs: Vec<Vec<f32>> = isas()
                .into_iter()
                .map(|isa| Int8Linear::from_rows(&w, bias.clone(), k, n, isa).forward_slice(&flat, m))
                .collect();
            for o in &outs[1..] {
                assert_eq!(o, &outs[0], "kernels disagree at ({m}, {k}, {n})");
            }
            // Against f32, within the rounding bound: each of x and w is off by at most half
            // its step (max|·|/127 / 2), so |x·w - q(x)·q(w)| <= Σ (|x| e_w + |w| e_x + e_x e_w).
            for i in 0..m {
                let e_x = x[i].iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0 / 2.0;
                for j in 0..n {
                    let e_w = w[j].iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0 / 2.0;
                    let exact: f32 = (0..k).map(|kk| x[i][kk] * w[j][kk]).sum::<f32>() + bias[j];
                    let bound: f32 = (0..k).map(|kk| x[i][kk].abs() * e_w + w[j][kk].abs() * e_x + e_x * e_w).sum();
                    let err = (outs[0][i * n + j] - exact).abs();
                    assert!(
                        err <= bound * 1.001 + 1e-4,
                        "({i}, {j}) of ({m}, {k}, {n}): error {err} over bound {bound}"
                    );
                }
            }
        }
    }

    #[test]
    fn zero_rows_and_columns_are_harmless() {
        let w = vec![vec![0f32; 8]; 4];
        let layer = Int8Linear::from_rows(&w, vec![1.0; 4], 8, 4, Isa::detect());
        assert_eq!(layer.forward_slice(&[0f32; 16], 2), vec![1.0; 8]);
    }
}
