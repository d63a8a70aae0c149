//! 4-bit weights (W4A16): group-wise asymmetric int4 with f16 scales and u8 zero points,
//! quantised at load from a bf16/f32 checkpoint or read as they are from an AWQ checkpoint.
//!
//! One layout serves both: for a weight (…, out, in), `qweight` (…, out, in / 8) u32 holds
//! eight consecutive input columns per word, column `8c + j` in bits `4j..4j + 4` (natural
//! order, so a GEMV reads a row contiguously); `scales` (…, out, in / group) f16 and `zeros`
//! (…, out, in / group) u8 give w = (q - zero) · scale. AWQ's GEMM packing (the one vLLM reads:
//! `qweight` (in, out / 8) i32 packed along the output in the interleaved nibble order
//! [0, 2, 4, 6, 1, 3, 5, 7], `qzeros` (in / group, out / 8) packed the same way, `scales`
//! (in / group, out) f16) is the same arithmetic, repacked once at load.
//!
//! On CPU the weights are dequantised at load to the compute dtype (so CPU tests check the
//! quantisation and its effect on logits); on CUDA they stay packed, read by the W4A16 GEMV
//! kernels at decode and dequantised into a bf16 scratch for prefill GEMMs.

use crate::ModelError;
use candle_core::{DType, Device, Result, Tensor, D};

/// Input columns per scale and zero point.
pub const GROUP: usize = 128;

/// What precision the large projections are kept in after load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quantize {
    /// The checkpoint's weights in the compute dtype (bf16 on CUDA, f32 on CPU).
    #[default]
    None,
    /// Group-wise int4 (group 128) for the experts and the dense projections.
    Int4,
}

impl std::str::FromStr for Quantize {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "int4" => Ok(Self::Int4),
            other => Err(format!("unknown quantisation {other:?} (none or int4)")),
        }
    }
}

/// A packed int4 weight (see the module comment for the layout).
#[derive(Debug, Clone)]
pub struct Int4Weight {
    /// (…, out, in / 8) u32.
    pub qweight: Tensor,
    /// (…, out, in / GROUP) f16.
    pub scales: Tensor,
    /// (…, out, in / GROUP) u8, each 0..=15.
    pub zeros: Tensor,
}

/// Whether a weight with `in_dim` input columns can be stored as int4 groups.
pub fn quantizable(in_dim: usize) -> bool {
    in_dim.is_multiple_of(GROUP)
}

impl Int4Weight {
    /// Round-to-nearest asymmetric quantisation of `w` (…, out, in) per group of [`GROUP`]
    /// input columns, with the group's range widened to include 0 (so the zero point is an
    /// integer in 0..=15). The scale is rounded (up) to f16 before the codes are computed, so
    /// every dequantised weight is within scale / 2 of the original (the bound the tests check).
    /// Candle ops only: the same code on CPU and CUDA.
    pub fn quantize(w: &Tensor) -> Result<Self> {
        let dims = w.dims().to_vec();
        let in_dim = *dims.last().expect("a weight has dimensions");
        if !quantizable(in_dim) {
            candle_core::bail!("int4: {in_dim} input columns is not a multiple of the group {GROUP}");
        }
        let lead = &dims[..dims.len() - 1];
        let mut gshape = lead.to_vec();
        gshape.extend([in_dim / GROUP, GROUP]);
        let wg = w.to_dtype(DType::F32)?.reshape(gshape.as_slice())?;
        let max = wg.max_keepdim(D::Minus1)?.maximum(0f64)?;
        let min = wg.min_keepdim(D::Minus1)?.minimum(0f64)?;
        // Widened by 2^-10 before rounding to f16 (relative error <= 2^-11), so the stored scale
        // is never below range / 15 and the codes need no clamping beyond half a step.
        let scale = ((max - &min)? * ((1.0 + 1.0 / 1024.0) / 15.0))?.maximum(1e-5)?.to_dtype(DType::F16)?;
        let s32 = scale.to_dtype(DType::F32)?;
        let zero = min.broadcast_div(&s32)?.neg()?.round()?.clamp(0f64, 15f64)?;
        let q = wg.broadcast_div(&s32)?.round()?.broadcast_add(&zero)?.clamp(0f64, 15f64)?;
        let mut pshape = lead.to_vec();
        pshape.extend([in_dim / 8, 8]);
        let q = q.to_dtype(DType::U32)?.reshape(pshape.as_slice())?;
        let shifts = Tensor::new(&[1u32, 1 << 4, 1 << 8, 1 << 12, 1 << 16, 1 << 20, 1 << 24, 1 << 28], w.device())?;
        let qweight = q.broadcast_mul(&shifts)?.sum(D::Minus1)?;
        Ok(Self { qweight, scales: scale.squeeze(D::Minus1)?, zeros: zero.squeeze(D::Minus1)?.to_dtype(DType::U8)? })
    }

    /// Input columns.
    pub fn in_dim(&self) -> Result<usize> {
        Ok(self.qweight.dim(D::Minus1)? * 8)
    }

    /// (q - zero) · scale as `dtype`, (…, out, in). On CUDA (bf16) one kernel; elsewhere candle ops.
    pub fn dequantize(&self, dtype: DType) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if self.qweight.device().is_cuda() && dtype == DType::BF16 {
            return super::q4_kernels::q4_dequantize(self);
        }
        self.dequantize_generic(dtype)
    }

    /// [`Self::dequantize`] with candle ops (any device).
    pub fn dequantize_generic(&self, dtype: DType) -> Result<Tensor> {
        let dims = self.qweight.dims().to_vec();
        let lead = &dims[..dims.len() - 1];
        let in_dim = dims[dims.len() - 1] * 8;
        let dev = self.qweight.device();
        let shifts = Tensor::new(&[1u32, 1 << 4, 1 << 8, 1 << 12, 1 << 16, 1 << 20, 1 << 24, 1 << 28], dev)?;
        let sixteen = Tensor::new(&[16u32], dev)?;
        let shifted = self.qweight.unsqueeze(D::Minus1)?.broadcast_div(&shifts)?;
        let nib = (&shifted - shifted.broadcast_div(&sixteen)?.broadcast_mul(&sixteen)?)?;
        let mut gshape = lead.to_vec();
        gshape.extend([in_dim / GROUP, GROUP]);
        let q = nib.to_dtype(DType::F32)?.reshape(gshape.as_slice())?;
        let z = self.zeros.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
        let s = self.scales.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
        let mut shape = lead.to_vec();
        shape.push(in_dim);
        q.broadcast_sub(&z)?.broadcast_mul(&s)?.reshape(shape.as_slice())?.to_dtype(dtype)
    }

    /// Each part through `f`, which must act on the leading (row) dimensions only.
    pub fn map(&self, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        Ok(Self { qweight: f(&self.qweight)?, scales: f(&self.scales)?, zeros: f(&self.zeros)? })
    }

    /// Input columns `start..start + len`, both multiples of [`GROUP`].
    pub fn narrow_in(&self, start: usize, len: usize) -> Result<Self> {
        if !start.is_multiple_of(GROUP) || !len.is_multiple_of(GROUP) {
            candle_core::bail!("int4: column range {start}+{len} does not fall on group boundaries");
        }
        Ok(Self {
            qweight: self.qweight.narrow(D::Minus1, start / 8, len / 8)?,
            scales: self.scales.narrow(D::Minus1, start / GROUP, len / GROUP)?,
            zeros: self.zeros.narrow(D::Minus1, start / GROUP, len / GROUP)?,
        })
    }

    /// Bytes held on the device.
    pub fn bytes(&self) -> usize {
        [&self.qweight, &self.scales, &self.zeros].iter().map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum()
    }

    /// Repacks AWQ's GEMM tensors (see the module comment) of a (out, in) linear into kb's
    /// layout, on the host. `qweight` (in, out / 8) and `qzeros` (in / group, out / 8) as the
    /// i32 (or u32) words of the checkpoint, `scales` (in / group, out) any float dtype.
    pub fn from_awq(qweight: &Tensor, qzeros: &Tensor, scales: &Tensor, device: &Device) -> Result<Self> {
        let (in_dim, out8) = qweight.dims2()?;
        let out = out8 * 8;
        let (groups, zo8) = qzeros.dims2()?;
        if zo8 != out8 || groups * GROUP != in_dim || scales.dims2()? != (groups, out) {
            candle_core::bail!(
                "awq: qweight {:?}, qzeros {:?} and scales {:?} are not one group-{GROUP} linear",
                qweight.dims(),
                qzeros.dims(),
                scales.dims()
            )
        }
        let words = |t: &Tensor| -> Result<Vec<u32>> {
            let t = t.to_device(&Device::Cpu)?.flatten_all()?;
            Ok(match t.dtype() {
                DType::I32 => t.to_vec1::<i32>()?.into_iter().map(|v| v as u32).collect(),
                DType::U32 => t.to_vec1::<u32>()?,
                other => candle_core::bail!("awq: packed tensor of dtype {other:?}, expected i32"),
            })
        };
        let (qw, qz) = (words(qweight)?, words(qzeros)?);
        let mut packed = vec![0u32; out * in_dim / 8];
        for i in 0..in_dim {
            for c in 0..out8 {
                let word = qw[i * out8 + c];
                for (j, &nibble) in AWQ_NIBBLE_OF_COLUMN.iter().enumerate() {
                    let q = (word >> (4 * nibble)) & 0xF;
                    let o = 8 * c + j;
                    packed[o * (in_dim / 8) + i / 8] |= q << (4 * (i % 8));
                }
            }
        }
        let mut zeros = vec![0u8; out * groups];
        for g in 0..groups {
            for c in 0..out8 {
                let word = qz[g * out8 + c];
                for (j, &nibble) in AWQ_NIBBLE_OF_COLUMN.iter().enumerate() {
                    zeros[(8 * c + j) * groups + g] = ((word >> (4 * nibble)) & 0xF) as u8;
                }
            }
        }
        Ok(Self {
            qweight: Tensor::from_vec(packed, (out, in_dim / 8), device)?,
            scales: scales.to_dtype(DType::F16)?.t()?.contiguous()?.to_device(device)?,
            zeros: Tensor::from_vec(zeros, (out, groups), device)?,
        })
    }
}

/// AWQ packs output columns 8c..8c + 8 into one word with column 8c + j in nibble
/// `AWQ_NIBBLE_OF_COLUMN[j]` (its pack order [0, 2, 4, 6, 1, 3, 5, 7], inverted).
pub const AWQ_NIBBLE_OF_COLUMN: [u32; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

/// A projection's weight (out, in) — or a stack of them (…, out, in) — dense or int4.
#[derive(Debug, Clone)]
pub enum Weight {
    Dense(Tensor),
    Int4(Int4Weight),
}

impl Weight {
    /// x Wᵀ for x (N, in): on CUDA at decode sizes the W4A16 GEMV kernel reads the packed
    /// weight; otherwise the weight is dequantised (a scratch copy) and multiplied.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Weight::Dense(w) => super::linear(x, w),
            Weight::Int4(q) => {
                #[cfg(feature = "cuda")]
                if super::q4_kernels::q4_gemv_supported(x, q) {
                    return super::q4_kernels::q4_gemv(x, q);
                }
                super::linear(x, &q.dequantize(x.dtype())?)
            }
        }
    }

    /// The weight as a dense tensor of `dtype` (a dequantised copy for int4).
    pub fn dense(&self, dtype: DType) -> Result<Tensor> {
        match self {
            Weight::Dense(w) => w.to_dtype(dtype),
            Weight::Int4(q) => q.dequantize(dtype),
        }
    }

    pub fn as_int4(&self) -> Option<&Int4Weight> {
        match self {
            Weight::Int4(q) => Some(q),
            Weight::Dense(_) => None,
        }
    }

    /// Row (leading-dimension) surgery, the same on every part.
    pub fn map(&self, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        Ok(match self {
            Weight::Dense(w) => Weight::Dense(f(w)?),
            Weight::Int4(q) => Weight::Int4(q.map(f)?),
        })
    }

    /// Input columns `start..start + len`.
    pub fn narrow_in(&self, start: usize, len: usize) -> Result<Self> {
        Ok(match self {
            Weight::Dense(w) => Weight::Dense(w.narrow(D::Minus1, start, len)?),
            Weight::Int4(q) => Weight::Int4(q.narrow_in(start, len)?),
        })
    }

    /// Concatenation along a leading dimension; a mix of dense and int4 parts is made dense.
    pub fn cat(parts: &[Weight], dim: usize, dtype: DType) -> Result<Self> {
        if let Some(qs) = parts.iter().map(Weight::as_int4).collect::<Option<Vec<_>>>() {
            let cat = |f: fn(&Int4Weight) -> &Tensor| Tensor::cat(&qs.iter().map(|q| f(q)).collect::<Vec<_>>(), dim);
            return Ok(Weight::Int4(Int4Weight {
                qweight: cat(|q| &q.qweight)?,
                scales: cat(|q| &q.scales)?,
                zeros: cat(|q| &q.zeros)?,
            }));
        }
        let dense = parts.iter().map(|p| p.dense(dtype)).collect::<Result<Vec<_>>>()?;
        Ok(Weight::Dense(Tensor::cat(&dense, dim)?))
    }

    /// What load makes of a weight: int4 when asked and the columns allow it, and on CPU
    /// always dense in `dtype` (dequantised: the CPU has no int4 kernels).
    pub fn finish(self, quantize: Quantize, dtype: DType) -> std::result::Result<Self, ModelError> {
        let w = match self {
            Weight::Dense(w) if quantize == Quantize::Int4 && quantizable(w.dim(D::Minus1)?) => {
                Weight::Int4(Int4Weight::quantize(&w)?)
            }
            other => other,
        };
        Ok(match w {
            Weight::Int4(q) if !q.qweight.device().is_cuda() || dtype != DType::BF16 => {
                Weight::Dense(q.dequantize(dtype)?)
            }
            other => other,
        })
    }

    /// Bytes held on the device.
    pub fn bytes(&self) -> usize {
        match self {
            Weight::Dense(w) => w.elem_count() * w.dtype().size_in_bytes(),
            Weight::Int4(q) => q.bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                let h = i.wrapping_mul(2654435761).wrapping_add(seed.wrapping_mul(40503)) ^ (i >> 3);
                ((h % 20001) as f32 / 10000.0 - 1.0) * 0.05
            })
            .collect()
    }

    #[test]
    fn quantize_round_trip_is_within_half_a_step() {
        let (out, inp) = (12, 3 * GROUP);
        let w = Tensor::from_vec(pseudo_random(out * inp, 3), (out, inp), &Device::Cpu).unwrap();
        let q = Int4Weight::quantize(&w).unwrap();
        assert_eq!(q.qweight.dims(), &[out, inp / 8]);
        assert_eq!(q.scales.dims(), &[out, inp / GROUP]);
        let deq = q.dequantize(DType::F32).unwrap().to_vec2::<f32>().unwrap();
        let s = q.scales.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
        let w = w.to_vec2::<f32>().unwrap();
        for r in 0..out {
            for c in 0..inp {
                let bound = s[r][c / GROUP] / 2.0;
                let err = (w[r][c] - deq[r][c]).abs();
                // f32 rounding of (q - z) · s adds at most an ulp of the value.
                assert!(err <= bound * (1.0 + 1e-5) + 1e-7, "({r}, {c}): error {err} over s/2 = {bound}");
            }
        }
    }

    #[test]
    fn awq_repacking_matches_the_packed_values() {
        let (inp, out) = (GROUP, 16);
        // q[i][o] = (i + 3 o) % 16, zeros[o] = o % 16, scales[o] = 0.01 (o + 1).
        let mut qweight = vec![0i32; inp * out / 8];
        for i in 0..inp {
            for c in 0..out / 8 {
                let mut word = 0u32;
                for (nibble, &col) in [0usize, 2, 4, 6, 1, 3, 5, 7].iter().enumerate() {
                    word |= (((i + 3 * (8 * c + col)) % 16) as u32) << (4 * nibble);
                }
                qweight[i * out / 8 + c] = word as i32;
            }
        }
        let qzeros: Vec<i32> = (0..out / 8)
            .map(|c| {
                let mut word = 0u32;
                for (nibble, &col) in [0usize, 2, 4, 6, 1, 3, 5, 7].iter().enumerate() {
                    word |= (((8 * c + col) % 16) as u32) << (4 * nibble);
                }
                word as i32
            })
            .collect();
        let scales: Vec<f32> = (0..out).map(|o| 0.01 * (o + 1) as f32).collect();
        let dev = Device::Cpu;
        let w = Int4Weight::from_awq(
            &Tensor::from_vec(qweight, (inp, out / 8), &dev).unwrap(),
            &Tensor::from_vec(qzeros, (1, out / 8), &dev).unwrap(),
            &Tensor::from_vec(scales.clone(), (1, out), &dev).unwrap().to_dtype(DType::F16).unwrap(),
            &dev,
        )
        .unwrap();
        let deq = w.dequantize(DType::F32).unwrap().to_vec2::<f32>().unwrap(); // (out, in)
        for (o, row) in deq.iter().enumerate() {
            let s = Tensor::new(scales[o], &dev).unwrap().to_dtype(DType::F16).unwrap().to_dtype(DType::F32).unwrap();
            let s = s.to_scalar::<f32>().unwrap();
            for (i, &got) in row.iter().enumerate() {
                let want = (((i + 3 * o) % 16) as f32 - (o % 16) as f32) * s;
                assert_eq!(got, want, "({o}, {i})");
            }
        }
    }
}
