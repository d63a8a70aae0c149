//! Self-attention of one encoder layer as one CPU op, straight from the fused Q/K/V
//! projection (tokens, 3 × hidden) to the context (tokens, hidden).
//!
//! Written as tensor ops it is a permute copy of Q/K/V, a (batch, heads, seq, seq) score
//! tensor scaled, masked and soft-maxed in three more passes, and a transpose copy back:
//! at ingest shapes (32 passages of 200 tokens) those passes over 15 M scores a layer cost
//! more than the layer's matrix products. Here each (sequence, head) task multiplies
//! straight out of the projection through strided GEMMs, soft-maxes its own
//! (len × len) scores while they are in cache, and writes its slice of the output. On the CPU
//! the encoder packs a batch's real tokens end to end (no padding rows at all), so each
//! sequence is a run of rows given by its start and length.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use gemm::Parallelism;
use rayon::prelude::*;

use super::simd;

pub struct Attention {
    pub heads: usize,
    /// The first row of each sequence.
    pub starts: Vec<usize>,
    /// The rows of each sequence.
    pub lens: Vec<usize>,
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("fused-attention: f32 only");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("fused-attention: contiguous input only");
        };
        let (n, three_h) = layout.shape().dims2()?;
        let (b, heads) = (self.lens.len(), self.heads);
        let fits = self.starts.len() == b && self.starts.iter().zip(&self.lens).all(|(s, l)| s + l <= n);
        if !fits || three_h % 3 != 0 || (three_h / 3) % heads != 0 {
            candle_core::bail!("fused-attention: shape ({n}, {three_h}) does not fit its {b} sequences");
        }
        let qkv = &data[start..end];
        let h = three_h / 3;
        let d = h / heads;
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = vec![0f32; n * h];
        let out_ptr = simd::SendPtr(out.as_mut_ptr());
        (0..b * heads).into_par_iter().for_each_init(Vec::<f32>::new, |scores, task| {
            let (seq, head) = (task / heads, task % heads);
            let (first, len) = (self.starts[seq], self.lens[seq]);
            if len == 0 {
                return;
            }
            let out_ptr = &out_ptr;
            scores.resize(len * len, 0.0);
            let base = first * three_h;
            let (q, k, v) = (base + head * d, base + h + head * d, base + 2 * h + head * d);
            let row = three_h as isize;
            // SAFETY: every read stays inside `qkv` — rows first .. first+len (≤ n, checked above) of 3h columns,
            // columns head*d .. head*d+d of each third — and `scores` holds len × len.
            unsafe {
                // scores (len × len) = scale · Q (len × d) · Kᵀ (d × len)
                gemm::gemm(
                    len,
                    len,
                    d,
                    scores.as_mut_ptr(),
                    1,
                    len as isize,
                    false,
                    qkv.as_ptr().add(q),
                    1,
                    row,
                    qkv.as_ptr().add(k),
                    row,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            for r in scores.chunks_exact_mut(len) {
                simd::softmax(r);
            }
            // SAFETY: reads as above; the write covers rows first .. first+len, columns
            // head*d .. head*d+d of the (n, h) output, which no other task writes (sequences'
            // rows do not overlap).
            unsafe {
                // context (len × d) = P (len × len) · V (len × d)
                gemm::gemm(
                    len,
                    d,
                    len,
                    out_ptr.0.add(first * h + head * d),
                    1,
                    h as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    len as isize,
                    qkv.as_ptr().add(v),
                    1,
                    row,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, h))))
    }
}
