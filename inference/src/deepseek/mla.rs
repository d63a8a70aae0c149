//! Multi-head latent attention, in its absorbed form for every step.
//!
//! Keys and values are never expanded: W_UK (the key half of kv_b_proj) is folded into the
//! query and W_UV (the value half) into the output, so attention runs directly over the cached
//! (kv_lora_rank + rope) latent, shared by all heads like one MQA key/value head of 576 values.
//! scores_h = [q_nope_h W_UK_h, rope(q_pe_h)] . [c_kv, rope(k_pe)];  out_h = (p_h . c_kv) W_UV_h^T.

use super::cache::LatentCache;
use super::config::DeepSeekV2Config;
use super::loader::{get_weight, WeightSource};
use super::quant::{Quantize, Weight};
use super::rms_norm;
use super::rope::Rope;
use crate::ModelError;
use candle_core::{DType, Device, Result, Tensor};

/// The token's query projection (rows reordered at load, see `load`) and kv_a_proj_with_mqa
/// ((kv_lora_rank + rope, hidden)).
#[derive(Debug, Clone)]
enum Projections {
    /// A direct q_proj's rows then kv_a's, one weight: one GEMM for both instead of two.
    Merged(Weight),
    Direct {
        q: Weight,
        kv_a: Weight,
    },
    /// q_a_proj, its norm and q_b_proj (DeepSeek-V2), then kv_a.
    LowRank {
        a: Weight,
        norm: Tensor,
        b: Weight,
        kv_a: Weight,
    },
}

#[derive(Debug, Clone)]
pub struct Mla {
    proj: Projections,
    kv_a_norm: Tensor,
    /// (heads, nope, kv_lora_rank): key half of kv_b_proj, folded into the query.
    w_uk: Tensor,
    /// (heads, kv_lora_rank, v_head): value half of kv_b_proj, transposed for the output.
    w_uv_t: Tensor,
    /// (hidden, heads * v_head)
    o: Weight,
    heads: usize,
    nope: usize,
    rope: usize,
    rank: usize,
    v_head: usize,
    scale: f64,
    eps: f64,
}

/// One sequence's slice of a flattened batch: its tokens are rows `start..start + len`.
#[derive(Debug, Clone, Copy)]
pub struct SeqSpan {
    pub start: usize,
    pub len: usize,
}

impl Mla {
    pub fn load(
        cfg: &DeepSeekV2Config,
        src: &dyn WeightSource,
        prefix: &str,
        dtype: DType,
        device: &Device,
        quantize: Quantize,
    ) -> std::result::Result<Self, ModelError> {
        let (h, hd) = (cfg.num_attention_heads, cfg.hidden_size);
        let (nope, rope, rank, v) = (cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.kv_lora_rank, cfg.v_head_dim);
        let qk = nope + rope;
        let get = |n: &str, s: &[usize]| src.get(&format!("{prefix}.{n}"), s, dtype, device);
        let proj = |n: &str, out: usize, inp: usize| {
            get_weight(src, &format!("{prefix}.{n}"), out, inp, dtype, device, quantize)
        };
        // Reorder the query rows from per-head [nope | rope] to [all heads' nope | all heads'
        // rope]: each part is then one dense block, and at decode (one token) the per-head
        // views need no copy.
        // Rows only, so the same surgery applies to an int4 weight's codes, scales and zeros.
        let split_heads = |w: Weight| -> std::result::Result<Weight, ModelError> {
            Ok(w.map(|w| {
                let cols = w.dim(1)?;
                let w = w.reshape((h, qk, cols))?;
                let nope_rows = w.narrow(1, 0, nope)?.reshape((h * nope, cols))?;
                let rope_rows = w.narrow(1, nope, rope)?.reshape((h * rope, cols))?;
                Tensor::cat(&[&nope_rows, &rope_rows], 0)
            })?)
        };
        let kv_a = || proj("kv_a_proj_with_mqa", rank + rope, hd);
        let projections = match cfg.q_lora_rank {
            None => {
                let q = split_heads(proj("q_proj", h * qk, hd)?)?;
                if merge_q_kv_a() {
                    Projections::Merged(Weight::cat(&[q, kv_a()?], 0, dtype)?)
                } else {
                    Projections::Direct { q, kv_a: kv_a()? }
                }
            }
            Some(r) => Projections::LowRank {
                a: proj("q_a_proj", r, hd)?,
                norm: get("q_a_layernorm.weight", &[r])?,
                b: split_heads(proj("q_b_proj", h * qk, r)?)?,
                kv_a: kv_a()?,
            },
        };
        let kv_a_norm = get("kv_a_layernorm.weight", &[rank])?;
        // kv_b_proj rows are, per head, nope key rows then value rows. It is absorbed into
        // the query and the output as batched products, so it stays dense (dequantised when
        // the checkpoint is AWQ).
        let kv_b =
            get_weight(src, &format!("{prefix}.kv_b_proj"), h * (nope + v), rank, dtype, device, Quantize::None)?
                .dense(dtype)?
                .reshape((h, nope + v, rank))?;
        let w_uk = kv_b.narrow(1, 0, nope)?.contiguous()?;
        let w_uv_t = kv_b.narrow(1, nope, v)?.transpose(1, 2)?.contiguous()?;
        let o = proj("o_proj", hd, h * v)?;
        Ok(Self {
            proj: projections,
            kv_a_norm,
            w_uk,
            w_uv_t,
            o,
            heads: h,
            nope,
            rope,
            rank,
            v_head: v,
            scale: cfg.softmax_scale(),
            eps: cfg.rms_norm_eps,
        })
    }

    /// Bytes of the weights on the device.
    pub fn weight_bytes(&self) -> usize {
        let t = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let proj = match &self.proj {
            Projections::Merged(w) => w.bytes(),
            Projections::Direct { q, kv_a } => q.bytes() + kv_a.bytes(),
            Projections::LowRank { a, norm, b, kv_a } => a.bytes() + t(norm) + b.bytes() + kv_a.bytes(),
        };
        proj + t(&self.kv_a_norm) + t(&self.w_uk) + t(&self.w_uv_t) + self.o.bytes()
    }

    /// Attention for the flattened tokens `x` (N, hidden) of several sequences. Each sequence's
    /// new latents are written to its cache (not yet advanced); cos/sin are the rows of each
    /// token's position.
    // Each argument is a distinct tensor or view of the batch; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        spans: &[SeqSpan],
        caches: &[&mut LatentCache],
        layer: usize,
        masks: &MaskCache,
    ) -> Result<Tensor> {
        let n = x.dim(0)?;
        let (h, rope) = (self.heads, self.rope);
        let (q_full, latent) = self.project(x, cos, sin)?;

        let mut outs = Vec::with_capacity(spans.len());
        for (span, cache) in spans.iter().zip(caches.iter()) {
            let prefix = cache.len();
            let kv_all = cache.write(layer, &latent.narrow(0, span.start, span.len)?)?; // (L, rank + rope)
            let total = kv_all.dim(0)?;
            let q_s =
                q_full.narrow(1, span.start, span.len)?.contiguous()?.reshape((h * span.len, self.rank + rope))?;
            #[cfg(feature = "cuda")]
            if span.len > 1 && q_s.device().is_cuda() && q_s.dtype() == DType::BF16 && super::kernels::prefill_kernels()
            {
                // Scale the (smaller) query instead of the scores; mask and softmax in one kernel.
                let scores = (q_s * self.scale)?.matmul(&kv_all.t()?)?; // (h * n_s, L)
                let probs = super::kernels::causal_softmax(&scores, span.len, prefix)?;
                let o_lat = probs.matmul(&kv_all)?.narrow(1, 0, self.rank)?.reshape((h, span.len, self.rank))?;
                outs.push(o_lat);
                continue;
            }
            let scores = (q_s.matmul(&kv_all.t()?)? * self.scale)?; // (h * n_s, L)
            let scores = if span.len > 1 {
                let mask = match masks.get(&(span.len, prefix)) {
                    Some(m) => m.clone(),
                    None => causal_mask(span.len, prefix, total, scores.dtype(), scores.device())?,
                };
                scores.reshape((h, span.len, total))?.broadcast_add(&mask)?.reshape((h * span.len, total))?
            } else {
                scores
            };
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            // Multiply by the whole cached row (cuBLAS needs a dense matrix, and c_kv is a
            // strided slice of it) and drop the rope columns of the result: 12% more work
            // on a small matmul instead of copying the cache.
            let o_lat = probs.matmul(&kv_all)?.narrow(1, 0, self.rank)?.reshape((h, span.len, self.rank))?;
            outs.push(o_lat);
        }
        let o_lat = if outs.len() == 1 { outs.pop().expect("one span") } else { Tensor::cat(&outs, 1)? };
        // Absorb W_UV: (h, N, rank) x (h, rank, v) -> (h, N, v) -> (N, h * v).
        let o = o_lat.matmul(&self.w_uv_t)?.transpose(0, 1)?.reshape((n, h * self.v_head))?;
        self.o.forward(&o)
    }

    /// The raw query (N, heads * (nope + rope)) and kv_a's product (N, rank + rope): column
    /// ranges of one product when the weights are merged.
    fn q_and_kv_a(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok(match &self.proj {
            Projections::Merged(w) => {
                let both = w.forward(x)?;
                let qn = self.heads * (self.nope + self.rope);
                (both.narrow(1, 0, qn)?, both.narrow(1, qn, self.rank + self.rope)?)
            }
            Projections::Direct { q, kv_a } => (q.forward(x)?, kv_a.forward(x)?),
            Projections::LowRank { a, norm, b, kv_a } => {
                (b.forward(&rms_norm(&a.forward(x)?, norm, self.eps)?)?, kv_a.forward(x)?)
            }
        })
    }

    /// The absorbed query (heads, N, rank + rope) and the latent the cache keeps (N, rank + rope).
    fn project(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = x.dim(0)?;
        let (h, nope, rope) = (self.heads, self.nope, self.rope);
        let (q, kv) = self.q_and_kv_a(x)?;
        // (heads, N, nope) and (1, heads, N, rope): rows were reordered at load.
        let q_nope = q.narrow(1, 0, h * nope)?.reshape((n, h, nope))?.transpose(0, 1)?.contiguous()?;
        let q_pe =
            q.narrow(1, h * nope, h * rope)?.reshape((n, h, rope))?.transpose(0, 1)?.contiguous()?.unsqueeze(0)?;
        let q_pe = Rope::apply(&q_pe, cos, sin)?.squeeze(0)?;
        // Absorb W_UK: (h, N, nope) x (h, nope, rank) -> (h, N, rank).
        let q_lat = q_nope.matmul(&self.w_uk)?;
        let q_full = Tensor::cat(&[&q_lat, &q_pe], 2)?; // (h, N, rank + rope)

        let c_kv = rms_norm(&kv.narrow(1, 0, self.rank)?.contiguous()?, &self.kv_a_norm, self.eps)?;
        let k_pe = kv.narrow(1, self.rank, rope)?.contiguous()?.reshape((1, 1, n, rope))?;
        let k_pe = Rope::apply(&k_pe, cos, sin)?.reshape((n, rope))?;
        let latent = Tensor::cat(&[&c_kv, &k_pe], 1)?; // what the cache keeps
        Ok((q_full, latent))
    }

    /// Whether [`Self::forward_decode_batch`] takes this input (CUDA, bf16, V2's 512 + 64 latent).
    #[cfg(feature = "cuda")]
    pub(crate) fn fused_ok(&self, x: &Tensor) -> bool {
        super::kernels::mla_supported(x, self.rank, self.rope)
    }

    /// One decode token for each of n sequences whose caches are row ranges of `buf` (this
    /// layer's pool buffer, or one sequence's own cache buffer with base 0), with two fused
    /// kernels (CUDA, bf16): one writes each latent (norm + rope) at its row, one attends each
    /// (head, sequence) over its rows with an online softmax. `meta` holds the n positions then
    /// the n base rows (u32, on the device, so a CUDA graph can replay the step). Returns (n, hidden).
    #[cfg(feature = "cuda")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_decode_batch(
        &self,
        x: &Tensor,
        cos_t: &Tensor,
        sin_t: &Tensor,
        meta: &Tensor,
        buf: &Tensor,
    ) -> Result<Tensor> {
        let n = x.dim(0)?;
        let (h, nope) = (self.heads, self.nope);
        // Views of one product when merged: the kernels take rows at any stride.
        let (q, kv) = self.q_and_kv_a(x)?;
        super::kernels::mla_latent_write(
            &kv,
            &self.kv_a_norm,
            cos_t,
            sin_t,
            meta,
            buf,
            self.rank,
            self.rope,
            self.eps,
        )?;
        // (n, h * nope) -> (h, n, nope) -> absorbed (h, n, rank).
        let q_lat =
            q.narrow(1, 0, h * nope)?.reshape((n, h, nope))?.transpose(0, 1)?.contiguous()?.matmul(&self.w_uk)?;
        let o_lat = super::kernels::mla_decode_attn(&q, &q_lat, cos_t, sin_t, meta, buf, h, nope, self.scale)?;
        let o = o_lat.matmul(&self.w_uv_t)?.transpose(0, 1)?.reshape((n, h * self.v_head))?; // (n, h * v)
        self.o.forward(&o)
    }

    /// One token of one sequence with every address and shape fixed, so the step can be
    /// captured once and replayed as a CUDA graph: the latent is written at the device-held
    /// position (`write_idx`, (1, latent) u32, every entry the position), and attention runs
    /// over the first `window` rows of the cache buffer under `mask` ((1, window): 0 up to the
    /// position, -inf after).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_fixed(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache_buf: &Tensor,
        write_idx: &Tensor,
        mask: &Tensor,
        window: usize,
    ) -> Result<Tensor> {
        let h = self.heads;
        let (q_full, latent) = self.project(x, cos, sin)?;
        cache_buf.scatter_set(write_idx, &latent, 0)?;
        let kv_all = cache_buf.narrow(0, 0, window)?;
        let q = q_full.reshape((h, self.rank + self.rope))?;
        let scores = (q.matmul(&kv_all.t()?)? * self.scale)?.broadcast_add(mask)?; // (h, window)
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let o_lat = probs.matmul(&kv_all)?.narrow(1, 0, self.rank)?.reshape((h, 1, self.rank))?;
        let o = o_lat.matmul(&self.w_uv_t)?.reshape((1, h * self.v_head))?;
        self.o.forward(&o)
    }
}

/// Whether a direct q_proj and kv_a_proj are stored as one weight (the default);
/// `KB_DEEPSEEK_MERGED_QKV=0` keeps them apart, to measure the difference.
fn merge_q_kv_a() -> bool {
    std::env::var("KB_DEEPSEEK_MERGED_QKV").map_or(true, |v| v != "0")
}

/// Causal masks by (new tokens, cached prefix), built once per forward and shared by layers.
pub type MaskCache = std::collections::HashMap<(usize, usize), Tensor>;

/// (n, total) additive mask: new token i (at position prefix + i) sees cache rows 0..=prefix + i.
pub fn causal_mask(n: usize, prefix: usize, total: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> =
        (0..n).flat_map(|i| (0..total).map(move |j| if j <= prefix + i { 0.0 } else { f32::NEG_INFINITY })).collect();
    Tensor::from_vec(mask, (n, total), device)?.to_dtype(dtype)
}
