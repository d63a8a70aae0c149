//! The BERT encoder forward pass, on candle tensors, arranged for CPU speed.
//!
//! candle-transformers' `BertModel` computes the same function; measured on the 2-core CI
//! machine it spends about half its time in two places this version avoids: matmuls against
//! transposed (strided) weights, which run at half the speed of contiguous ones, and the
//! scalar `erf` of its GELU. Here each weight is stored transposed once at load, Q/K/V are one
//! matmul, the linear layers see all tokens of a batch as one 2-D matrix, and GELU uses a
//! branch-free erf the compiler vectorises. The test `tests/bert.rs` checks it against
//! candle-transformers' model on the real weights.
//!
//! On a GPU (`--features cuda`, weights loaded on a CUDA device, in f32 or bf16) the same
//! forward runs through candle's own kernels: the CPU-only fused ops (attention, residual +
//! layer norm, GELU) are replaced by their tensor-op equivalents, which candle runs on the
//! device (cuBLAS matmuls, fused softmax and layer-norm kernels).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Module, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config, HiddenAct};
use rayon::prelude::*;

use super::attention::Attention;
use super::int8::Int8Linear;

/// Arithmetic of the encoder's linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// int8 weights and per-token int8 activations ([`Int8Linear`]); CPU only. On a GPU it
    /// stands for the GPU's default, bf16 (see [`Precision::on_gpu`]).
    Int8,
    /// bf16 weights and activations (f32 accumulation); GPU only.
    Bf16,
}

impl Precision {
    /// The arithmetic a GPU runs for this setting: f32 or bf16. The int8 kernels are CPU-only,
    /// so int8, the default, becomes bf16 there: on SciFact (H200, 2026-12-02) its nDCG@10 is
    /// within 0.002 of the CPU's int8 and of f32 in every mode, and its ingest is faster.
    pub fn on_gpu(self) -> Self {
        match self {
            Self::F32 => Self::F32,
            Self::Bf16 | Self::Int8 => Self::Bf16,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "int8" => Ok(Self::Int8),
            "bf16" => Ok(Self::Bf16),
            _ => Err(format!("unknown precision {s:?}: expected f32, int8 or bf16")),
        }
    }
}

/// `x · W + b`: f32 with `W` kept as (in, out), contiguous, or int8.
enum Dense {
    F32 { weight_t: Tensor, bias: Tensor },
    Int8(Int8Linear),
}

impl Dense {
    fn load(vbs: &[VarBuilder], input: usize, output: usize, precision: Precision) -> candle_core::Result<Self> {
        // Several layers of the same input are concatenated along the output: one matmul.
        let mut ws = Vec::with_capacity(vbs.len());
        let mut bs = Vec::with_capacity(vbs.len());
        for vb in vbs {
            ws.push(vb.get((output, input), "weight")?);
            bs.push(vb.get(output, "bias")?);
        }
        let (weight, bias) = (Tensor::cat(&ws, 0)?, Tensor::cat(&bs, 0)?);
        Ok(match precision {
            // bf16: the weights come in that dtype from the var builder.
            Precision::F32 | Precision::Bf16 => Self::F32 { weight_t: weight.t()?.contiguous()?, bias },
            Precision::Int8 => Self::Int8(Int8Linear::new(&weight, &bias)?),
        })
    }

    /// `x`: (tokens, in).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::F32 { weight_t, bias } => x.matmul(weight_t)?.broadcast_add(bias),
            Self::Int8(q) => x.contiguous()?.apply_op1_no_bwd(q),
        }
    }
}

struct Norm {
    gamma: Tensor,
    beta: Tensor,
    eps: f32,
    /// The same, as plain vectors for the fused residual op.
    fused: AddNorm,
}

impl Norm {
    fn load(vb: VarBuilder, size: usize, eps: f64) -> candle_core::Result<Self> {
        // Old checkpoints name them gamma/beta.
        let gamma = vb.get(size, "weight").or_else(|_| vb.get(size, "gamma"))?;
        let beta = vb.get(size, "bias").or_else(|_| vb.get(size, "beta"))?;
        let host = |t: &Tensor| t.to_dtype(DType::F32)?.to_vec1::<f32>();
        let fused = AddNorm { gamma: host(&gamma)?, beta: host(&beta)?, eps: eps as f32 };
        Ok(Self { gamma, beta, eps: eps as f32, fused })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.gamma, &self.beta, self.eps)
    }

    /// `layer_norm(x + residual)`: in one pass over the rows on the CPU; two device kernels
    /// on a GPU.
    fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        if x.device().is_cpu() {
            x.contiguous()?.apply_op2_no_bwd(&residual.contiguous()?, &self.fused)
        } else {
            self.forward(&(x + residual)?)
        }
    }
}

/// Residual add and layer norm fused: one read of each input and one write per row, on the
/// caller's thread pool (two tensor ops would make three passes and a temporary).
struct AddNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl CustomOp2 for AddNorm {
    fn name(&self) -> &'static str {
        "add-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2) else {
            candle_core::bail!("add-layer-norm: f32 only");
        };
        let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("add-layer-norm: contiguous inputs only");
        };
        let h = self.gamma.len();
        if l1.shape() != l2.shape() || l1.shape().dims().last() != Some(&h) {
            candle_core::bail!("add-layer-norm: shapes {:?} and {:?} for width {h}", l1.shape(), l2.shape());
        }
        let (a, b) = (&a[a0..a1], &b[b0..b1]);
        let mut out = vec![0f32; a.len()];
        out.par_chunks_mut(h).zip(a.par_chunks(h).zip(b.par_chunks(h))).with_min_len(8).for_each(|(o, (x, r))| {
            super::simd::add_layer_norm(o, x, r, &self.gamma, &self.beta, &[self.eps]);
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

struct Layer {
    qkv: Dense,
    attn_out: Dense,
    attn_norm: Norm,
    up: Dense,
    down: Dense,
    out_norm: Norm,
}

pub struct Encoder {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embed_norm: Norm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
    act: HiddenAct,
}

impl Encoder {
    pub fn load(vb: VarBuilder, c: &Config, precision: Precision) -> candle_core::Result<Self> {
        // Checkpoints with and without the `bert.` prefix.
        let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") { vb } else { vb.pp("bert") };
        let h = c.hidden_size;
        let e = vb.pp("embeddings");
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention");
            let s = a.pp("self");
            layers.push(Layer {
                qkv: Dense::load(&[s.pp("query"), s.pp("key"), s.pp("value")], h, h, precision)?,
                attn_out: Dense::load(&[a.pp("output.dense")], h, h, precision)?,
                attn_norm: Norm::load(a.pp("output.LayerNorm"), h, c.layer_norm_eps)?,
                up: Dense::load(&[l.pp("intermediate.dense")], h, c.intermediate_size, precision)?,
                down: Dense::load(&[l.pp("output.dense")], c.intermediate_size, h, precision)?,
                out_norm: Norm::load(l.pp("output.LayerNorm"), h, c.layer_norm_eps)?,
            });
        }
        Ok(Self {
            word: e.get((c.vocab_size, h), "word_embeddings.weight")?,
            position: e.get((c.max_position_embeddings, h), "position_embeddings.weight")?,
            token_type: e.get((c.type_vocab_size, h), "token_type_embeddings.weight")?,
            embed_norm: Norm::load(e.pp("LayerNorm"), h, c.layer_norm_eps)?,
            layers,
            heads: c.num_attention_heads,
            hidden: h,
            act: c.hidden_act,
        })
    }

    /// Final hidden states, (batch, seq, hidden), for ids/type ids/mask of shape (batch, seq).
    /// Padded rows are zero on the CPU.
    pub fn forward(&self, ids: &Tensor, type_ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        if ids.device().is_cpu() {
            self.forward_packed(ids, type_ids, mask)
        } else {
            self.forward_padded(ids, type_ids, mask)
        }
    }

    /// The CPU path: the batch's real tokens packed end to end, so every matrix product,
    /// GELU and norm runs over real tokens only (a micro-batch of queries pads to its longest
    /// one, often twice the mean), then scattered back to the padded shape.
    fn forward_packed(&self, ids: &Tensor, type_ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let h = self.hidden;
        let (ids, types) =
            (ids.to_dtype(DType::U32)?.to_vec2::<u32>()?, type_ids.to_dtype(DType::U32)?.to_vec2::<u32>()?);
        let mask = mask.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        // Batches are right-padded: each sequence's real length is its count of mask ones.
        let lens: Vec<usize> = mask.iter().map(|r| r.iter().filter(|&&m| m != 0).count().min(s)).collect();
        let mut starts = Vec::with_capacity(b);
        let (mut packed_ids, mut packed_types, mut positions) = (Vec::new(), Vec::new(), Vec::new());
        // Row of the packed output for each padded slot; padding reads the zero row at the end.
        let total: usize = lens.iter().sum();
        let mut gather = vec![total as u32; b * s];
        for (i, &len) in lens.iter().enumerate() {
            starts.push(packed_ids.len());
            for j in 0..len {
                gather[i * s + j] = packed_ids.len() as u32;
                packed_ids.push(ids[i][j]);
                packed_types.push(types[i][j]);
                positions.push(j as u32);
            }
        }
        let dev = Device::Cpu;
        let x = self
            .word
            .embedding(&Tensor::new(packed_ids, &dev)?)?
            .add(&self.token_type.embedding(&Tensor::new(packed_types, &dev)?)?)?
            .add(&self.position.embedding(&Tensor::new(positions, &dev)?)?)?;
        let attention = Attention { heads: self.heads, starts, lens };
        let x = self.layers_forward(self.embed_norm.forward(&x)?, |qkv| qkv.apply_op1_no_bwd(&attention))?;
        let x = Tensor::cat(&[x.to_dtype(DType::F32)?, Tensor::zeros((1, h), DType::F32, &dev)?], 0)?;
        x.index_select(&Tensor::new(gather, &dev)?, 0)?.reshape((b, s, h))
    }

    /// The device path: padded (b·s) rows and a key mask.
    fn forward_padded(&self, ids: &Tensor, type_ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let (h, heads) = (self.hidden, self.heads);
        let n = b * s;
        let positions = Tensor::arange(0u32, s as u32, ids.device())?;
        let x = self
            .word
            .embedding(&ids.flatten_all()?)?
            .add(&self.token_type.embedding(&type_ids.flatten_all()?)?)?
            .reshape((b, s, h))?
            .broadcast_add(&self.position.embedding(&positions)?)?
            .reshape((n, h))?;
        let x = self.embed_norm.forward(&x)?;
        // An additive key mask, (b, 1, 1, s), 0 for real keys and -1e9 for padding.
        let keep = mask.to_dtype(DType::F32)?;
        let key_bias = ((keep - 1.0)? * 1e9)?.to_dtype(x.dtype())?.reshape((b, 1, 1, s))?;
        let x = self.layers_forward(x, |qkv| device_attention(qkv, &key_bias, b, s, heads))?;
        // Pooling and normalisation run in f32 whatever the encoder's dtype.
        x.reshape((b, s, h))?.to_dtype(DType::F32)
    }

    /// The layers over token rows `x` (tokens, hidden), with `attention` from the fused Q/K/V
    /// projection to the context.
    fn layers_forward(
        &self,
        mut x: Tensor,
        attention: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let cpu = x.device().is_cpu();
        for l in &self.layers {
            let ctx = attention(&l.qkv.forward(&x)?)?;
            x = l.attn_norm.forward_residual(&l.attn_out.forward(&ctx)?, &x)?;
            let up = l.up.forward(&x)?;
            let up = match self.act {
                HiddenAct::Gelu if cpu => up.apply_op1_no_bwd(&GeluErf)?,
                HiddenAct::Gelu => up.gelu_erf()?,
                HiddenAct::GeluApproximate => up.gelu()?,
                HiddenAct::Relu => up.relu()?,
            };
            x = l.out_norm.forward_residual(&l.down.forward(&up)?, &x)?;
        }
        Ok(x)
    }
}

/// Self-attention from the fused projection `qkv` (b·s, 3h) to the context (b·s, h) with
/// tensor ops (the GPU path): batched matmuls over (b, heads), the key mask added, candle's
/// fused last-dim softmax. Padded query rows come out as some mix of real values; pooling
/// ignores them.
fn device_attention(qkv: &Tensor, key_bias: &Tensor, b: usize, s: usize, heads: usize) -> candle_core::Result<Tensor> {
    let h = qkv.dim(1)? / 3;
    let d = h / heads;
    // (b, s, 3, heads, d) -> three (b, heads, s, d)
    let qkv = qkv.reshape((b, s, 3, heads, d))?.permute((2, 0, 3, 1, 4))?;
    let q = qkv.get(0)?.contiguous()?;
    let k = qkv.get(1)?.contiguous()?;
    let v = qkv.get(2)?.contiguous()?;
    let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?.broadcast_add(key_bias)?;
    let p = candle_nn::ops::softmax_last_dim(&scores)?;
    p.matmul(&v)?.transpose(1, 2)?.reshape((b * s, h))
}

impl Module for Encoder {
    fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let types = ids.zeros_like()?;
        let mask = ids.ones_like()?;
        Encoder::forward(self, ids, &types, &mask)
    }
}

/// Exact (erf) GELU over f32, in parallel, with a vectorisable erf.
struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf-fast"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("gelu-erf-fast: f32 only");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("gelu-erf-fast: contiguous input only");
        };
        let mut out = data[start..end].to_vec();
        out.par_chunks_mut(16 * 1024).for_each(super::simd::gelu);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7, under f32's resolution
/// near 1), with `exp` from [`exp_neg`]: no branches, no library calls.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_72) * t + 0.254_829_6) * t;
    (1.0 - poly * exp_neg(a * a)).copysign(x)
}

/// `e^-y` for `y >= 0`: 2^n · p(r) with a degree-6 polynomial on |r| <= ln2/2 (relative
/// error about 1e-7); values below e^-87 flush to 0.
#[inline(always)]
pub(crate) fn exp_neg(y: f32) -> f32 {
    let x = (-y).max(-87.0);
    // Round to nearest by the 1.5·2^23 trick: plain float adds, which vectorise.
    let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_gelu_matches_the_exact_one() {
        let mut worst = 0f32;
        for i in -20_000..=20_000 {
            let x = i as f32 / 2_000.0;
            let exact = 0.5 * x as f64 * (1.0 + libm_erf(x as f64 / std::f64::consts::SQRT_2));
            worst = worst.max((gelu(x) as f64 - exact).abs() as f32);
        }
        assert!(worst < 2e-6, "max |error| {worst}");
        assert_eq!(gelu(0.0), 0.0);
        assert!((exp_neg(0.0) - 1.0).abs() < 1e-7);
        assert!(exp_neg(200.0) < 1e-37);
    }

    /// erf in f64 by its Taylor series (|x| <= 3) or continued fraction: a reference only.
    fn libm_erf(x: f64) -> f64 {
        let a = x.abs();
        let v = if a < 3.0 {
            let (mut term, mut sum, mut k) = (a, a, 0.0);
            while term.abs() > 1e-17 {
                k += 1.0;
                term *= -a * a / k;
                sum += term / (2.0 * k + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = k as f64 / 2.0 / (a + f);
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f)
        };
        v.copysign(x)
    }
}
