//! The DeepSeek-V2 decoder stack and its batched forward pass.

use super::cache::{CachePool, LatentCache};
use super::config::DeepSeekV2Config;
use super::loader::{SafetensorsSource, WeightSource};
use super::mla::{causal_mask, MaskCache, Mla, SeqSpan};
use super::moe::{Mlp, Moe};
use super::quant::Quantize;
use super::rope::{Rope, DEFAULT_MAX_POSITIONS};
use super::{linear, rms_norm};
use crate::ModelError;
use candle_core::{DType, Device, Tensor};
use std::path::Path;

#[derive(Debug, Clone)]
enum Ffn {
    Dense(Mlp),
    Moe(Moe),
}

#[derive(Debug, Clone)]
struct Layer {
    input_norm: Tensor,
    attn: Mla,
    post_norm: Tensor,
    ffn: Ffn,
}

/// Which rows get logits (the vocabulary projection is the largest single matmul).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsMode {
    /// Every token (comparisons, scoring).
    All,
    /// The last token of each sequence (generation).
    Last,
    /// None (embedding: hidden states only).
    None,
}

/// What a forward pass returns.
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// f32 logits, (rows, vocab): every token for [`LogitsMode::All`], one row per sequence
    /// for [`LogitsMode::Last`].
    pub logits: Option<Tensor>,
    /// Final hidden states after the last norm, (total tokens, hidden), in the model dtype,
    /// sequences one after another in the order given.
    pub hidden: Tensor,
    /// Each sequence's rows in `hidden` (and in `logits` for `All`).
    pub spans: Vec<SeqSpan>,
}

#[derive(Debug, Clone)]
pub struct DeepSeekV2 {
    cfg: DeepSeekV2Config,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    rope: Rope,
    dtype: DType,
    device: Device,
}

impl DeepSeekV2 {
    /// Loads a Hugging Face checkpoint directory (`config.json` + safetensors shards): bf16 on
    /// CUDA, f32 on CPU.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        Self::load_quantized(dir, device, Quantize::None)
    }

    /// [`Self::load`] with the experts and dense projections quantised as `quantize` says
    /// (an AWQ checkpoint's int4 weights are kept as they are either way).
    pub fn load_quantized(dir: &Path, device: &Device, quantize: Quantize) -> Result<Self, ModelError> {
        let cfg = DeepSeekV2Config::from_file(&dir.join("config.json"))?;
        let src = SafetensorsSource::open(dir)?;
        let dtype = if device.is_cuda() { DType::BF16 } else { DType::F32 };
        Self::from_source_quantized(cfg, &src, dtype, device, quantize)
    }

    /// Random weights (std 0.02) of the shape `dir/config.json` gives: for measuring speed at
    /// real size without the checkpoint.
    pub fn load_random(dir: &Path, device: &Device, seed: u64) -> Result<Self, ModelError> {
        Self::load_random_quantized(dir, device, seed, Quantize::None)
    }

    /// [`Self::load_random`], quantised as `quantize` says.
    pub fn load_random_quantized(
        dir: &Path,
        device: &Device,
        seed: u64,
        quantize: Quantize,
    ) -> Result<Self, ModelError> {
        let cfg = DeepSeekV2Config::from_file(&dir.join("config.json"))?;
        let dtype = if device.is_cuda() { DType::BF16 } else { DType::F32 };
        if device.is_cuda() {
            device.set_seed(seed)?;
        }
        Self::from_source_quantized(cfg, &super::loader::RandomSource::new(0.02, seed), dtype, device, quantize)
    }

    /// [`Self::load`] in a chosen dtype (f32 on CUDA for exact comparisons).
    pub fn load_with_dtype(dir: &Path, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        let cfg = DeepSeekV2Config::from_file(&dir.join("config.json"))?;
        let src = SafetensorsSource::open(dir)?;
        Self::from_source(cfg, &src, dtype, device)
    }

    /// Builds the model from any weight source, validating every tensor's shape.
    pub fn from_source(
        cfg: DeepSeekV2Config,
        src: &dyn WeightSource,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, ModelError> {
        Self::from_source_quantized(cfg, src, dtype, device, Quantize::None)
    }

    /// [`Self::from_source`] with the experts and the dense projections (attention q, kv_a and
    /// o, the dense MLPs) quantised as `quantize` says. Embeddings, norms, the router, kv_b
    /// and the vocabulary projection stay in `dtype`.
    pub fn from_source_quantized(
        cfg: DeepSeekV2Config,
        src: &dyn WeightSource,
        dtype: DType,
        device: &Device,
        quantize: Quantize,
    ) -> Result<Self, ModelError> {
        let hd = cfg.hidden_size;
        let started = std::time::Instant::now();
        let embed = src.get("model.embed_tokens.weight", &[cfg.vocab_size, hd], dtype, device)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let ffn = if cfg.is_moe_layer(i) {
                Ffn::Moe(Moe::load(&cfg, src, &format!("{p}.mlp"), dtype, device, quantize)?)
            } else {
                Ffn::Dense(Mlp::load(src, &format!("{p}.mlp"), hd, cfg.intermediate_size, dtype, device, quantize)?)
            };
            layers.push(Layer {
                input_norm: src.get(&format!("{p}.input_layernorm.weight"), &[hd], dtype, device)?,
                attn: Mla::load(&cfg, src, &format!("{p}.self_attn"), dtype, device, quantize)?,
                post_norm: src.get(&format!("{p}.post_attention_layernorm.weight"), &[hd], dtype, device)?,
                ffn,
            });
            tracing::debug!(layer = i, moe = cfg.is_moe_layer(i), "loaded layer");
        }
        let norm = src.get("model.norm.weight", &[hd], dtype, device)?;
        let lm_head = if cfg.tie_word_embeddings {
            embed.clone()
        } else {
            src.get("lm_head.weight", &[cfg.vocab_size, hd], dtype, device)?
        };
        let rope = Rope::new(&cfg, DEFAULT_MAX_POSITIONS, dtype, device)?;
        // Other threads (the scheduler, the embedding head) read these weights: let every
        // upload or random draw finish before they may.
        device.synchronize()?;
        tracing::info!(
            layers = cfg.num_hidden_layers,
            experts = cfg.n_routed_experts,
            ?dtype,
            ?quantize,
            secs = started.elapsed().as_secs_f32(),
            "loaded DeepSeek-V2"
        );
        Ok(Self { cfg, embed, layers, norm, lm_head, rope, dtype, device: device.clone() })
    }

    /// Bytes of every weight the model holds on its device (int4 parts packed).
    pub fn weight_bytes(&self) -> usize {
        let t = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                t(&l.input_norm)
                    + t(&l.post_norm)
                    + l.attn.weight_bytes()
                    + match &l.ffn {
                        Ffn::Dense(m) => m.weight_bytes(),
                        Ffn::Moe(m) => m.weight_bytes(),
                    }
            })
            .sum();
        let head = if self.cfg.tie_word_embeddings { 0 } else { t(&self.lm_head) };
        t(&self.embed) + layers + t(&self.norm) + head
    }

    pub fn config(&self) -> &DeepSeekV2Config {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Longest sequence (prompt plus answer) the position table covers.
    pub fn max_positions(&self) -> usize {
        self.rope.max_positions()
    }

    /// An empty latent cache for one sequence, with room for `capacity` tokens (it grows).
    pub fn new_cache(&self, capacity: usize) -> Result<LatentCache, ModelError> {
        Ok(LatentCache::new(self.cfg.num_hidden_layers, self.cfg.latent_dim(), capacity, self.dtype, &self.device)?)
    }

    /// The MoE block of layer `i`, if it is one (tests inspect routing through it).
    pub fn moe_layer(&self, i: usize) -> Option<&Moe> {
        match &self.layers.get(i)?.ffn {
            Ffn::Moe(m) => Some(m),
            Ffn::Dense(_) => None,
        }
    }

    /// One forward pass over a batch of sequences: `tokens[s]` are the new tokens of sequence
    /// `s`, appended after what `caches[s]` already holds (prefill: an empty cache and the whole
    /// prompt; decode: one token). Caches are extended in place.
    pub fn forward(
        &self,
        tokens: &[&[u32]],
        caches: &mut [&mut LatentCache],
        mode: LogitsMode,
    ) -> Result<ForwardOutput, ModelError> {
        if tokens.len() != caches.len() {
            return Err(ModelError::InvalidInput(format!("{} token lists for {} caches", tokens.len(), caches.len())));
        }
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut spans = Vec::with_capacity(tokens.len());
        for (toks, cache) in tokens.iter().zip(caches.iter_mut()) {
            if toks.is_empty() {
                return Err(ModelError::InvalidInput("a sequence with no new tokens".into()));
            }
            if let Some(&bad) = toks.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
                return Err(ModelError::InvalidInput(format!(
                    "token id {bad} beyond vocabulary {}",
                    self.cfg.vocab_size
                )));
            }
            let start = cache.len();
            if start + toks.len() > self.rope.max_positions() {
                return Err(ModelError::InvalidInput(format!(
                    "sequence of {} tokens exceeds the {} positions supported",
                    start + toks.len(),
                    self.rope.max_positions()
                )));
            }
            cache.reserve(toks.len())?;
            spans.push(SeqSpan { start: ids.len(), len: toks.len() });
            ids.extend_from_slice(toks);
            positions.extend((start..start + toks.len()).map(|p| p as u32));
        }
        let n = ids.len();
        let ids = Tensor::from_vec(ids, n, &self.device)?;
        let positions = Tensor::from_vec(positions, n, &self.device)?;
        let (cos, sin) = self.rope.gather(&positions)?;

        let mut masks = MaskCache::new();
        // The CUDA bf16 prefill masks inside its softmax kernel: no mask tensors to build.
        #[cfg(feature = "cuda")]
        let in_kernel = self.device.is_cuda() && self.dtype == DType::BF16 && super::kernels::prefill_kernels();
        #[cfg(not(feature = "cuda"))]
        let in_kernel = false;
        for (span, cache) in spans.iter().zip(caches.iter()) {
            let prefix = cache.len();
            if span.len > 1 && !in_kernel && !masks.contains_key(&(span.len, prefix)) {
                let m = causal_mask(span.len, prefix, prefix + span.len, self.dtype, &self.device)?;
                masks.insert((span.len, prefix), m);
            }
        }
        let hidden = self.stack(&ids, |i, attn, h| attn.forward(h, &cos, &sin, &spans, caches, i, &masks))?;
        for (span, cache) in spans.iter().zip(caches.iter_mut()) {
            cache.advance(span.len);
        }
        let logits = match mode {
            LogitsMode::None => None,
            LogitsMode::All => Some(linear(&hidden, &self.lm_head)?.to_dtype(DType::F32)?),
            LogitsMode::Last => {
                let last: Vec<u32> = spans.iter().map(|s| (s.start + s.len - 1) as u32).collect();
                let rows = hidden.index_select(&Tensor::new(last.as_slice(), &self.device)?, 0)?;
                Some(linear(&rows, &self.lm_head)?.to_dtype(DType::F32)?)
            }
        };
        Ok(ForwardOutput { logits, hidden, spans })
    }

    /// The decoder stack over the tokens `ids`, returning the final-normed hidden states. Only
    /// attention differs between the prefill/batch, batched-decode and fixed-address paths:
    /// `attend(layer, attention, normed input)` supplies it.
    fn stack(
        &self,
        ids: &Tensor,
        mut attend: impl FnMut(usize, &Mla, &Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let eps = self.cfg.rms_norm_eps;
        let mut x = self.embed.index_select(ids, 0)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.input_norm, eps)?;
            x = (x + attend(i, &layer.attn, &h)?)?;
            let h = rms_norm(&x, &layer.post_norm, eps)?;
            x = match &layer.ffn {
                Ffn::Dense(m) => (x + m.forward(&h)?)?,
                Ffn::Moe(m) => m.forward_residual(&h, &x)?,
            };
        }
        rms_norm(&x, &self.norm, eps)
    }

    /// Whether [`Self::forward_decode`] runs a batch of `n` decoding sequences: CUDA, bf16,
    /// DeepSeek-V2's MLA shape (the fused kernels), at most 64 sequences.
    pub fn batched_decode_supported(&self, n: usize) -> bool {
        #[cfg(feature = "cuda")]
        {
            (1..=64).contains(&n) && self.layers.first().is_some_and(|l| l.attn.fused_ok(&self.embed))
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = n;
            false
        }
    }

    /// One decode step for sequences whose caches are rows of `pool`: `tokens[s]` goes at
    /// position `caches[s].len()`. Returns f32 logits (n, vocab) and advances the caches. Only
    /// where [`Self::batched_decode_supported`]; [`Self::forward`] computes the same.
    /// [`super::decode::BatchDecoder`] runs the same step as CUDA graphs.
    pub fn forward_decode(
        &self,
        tokens: &[u32],
        caches: &mut [&mut LatentCache],
        pool: &CachePool,
    ) -> Result<Tensor, ModelError> {
        let meta = self.decode_meta(tokens, caches, pool)?;
        let meta = Tensor::from_vec(meta, 2 * tokens.len(), &self.device)?;
        let ids = Tensor::from_vec(tokens.to_vec(), tokens.len(), &self.device)?;
        let logits = self.decode_layers(&ids, &meta, pool)?;
        for cache in caches.iter_mut() {
            cache.advance(1);
        }
        Ok(logits)
    }

    /// Checks a batched decode step and returns what its kernels read: every sequence's
    /// position, then every sequence's first pool row (2n u32). Reserves the new rows.
    pub(crate) fn decode_meta(
        &self,
        tokens: &[u32],
        caches: &mut [&mut LatentCache],
        pool: &CachePool,
    ) -> Result<Vec<u32>, ModelError> {
        let n = tokens.len();
        if n != caches.len() || !self.batched_decode_supported(n) {
            return Err(ModelError::InvalidInput(format!(
                "batched decode of {n} tokens for {} caches is not available here",
                caches.len()
            )));
        }
        let mut meta = Vec::with_capacity(2 * n);
        let mut bases = Vec::with_capacity(n);
        for (&t, cache) in tokens.iter().zip(caches.iter_mut()) {
            if t as usize >= self.cfg.vocab_size {
                return Err(ModelError::InvalidInput(format!(
                    "token id {t} beyond vocabulary {}",
                    self.cfg.vocab_size
                )));
            }
            let base =
                pool.base_of(cache).ok_or_else(|| ModelError::InvalidInput("a cache outside the pool".into()))?;
            cache.reserve(1)?;
            meta.push(cache.len() as u32);
            bases.push(base as u32);
        }
        meta.extend(bases);
        Ok(meta)
    }

    /// The batched decode step's layers on device-held `ids` (n) and `meta` (2n): f32 logits.
    #[cfg(feature = "cuda")]
    pub(crate) fn decode_layers(&self, ids: &Tensor, meta: &Tensor, pool: &CachePool) -> Result<Tensor, ModelError> {
        let (cos_t, sin_t) = self.rope.tables();
        let hidden = self.stack(ids, |i, attn, h| attn.forward_decode_batch(h, cos_t, sin_t, meta, pool.layer(i)))?;
        Ok(linear(&hidden, &self.lm_head)?.to_dtype(DType::F32)?)
    }

    #[cfg(not(feature = "cuda"))]
    pub(crate) fn decode_layers(&self, _: &Tensor, _: &Tensor, _: &CachePool) -> Result<Tensor, ModelError> {
        Err(ModelError::InvalidInput("batched decode needs the cuda feature".into()))
    }

    /// One decode step of one sequence with fixed addresses (see [`super::decode`]): `input`
    /// is a (2,) u32 device tensor [token, position], `cache` holds at least `window` rows,
    /// `arange` is (1, window) u32 0..window, `zero`/`neg_inf` are (1, window) in the model
    /// dtype. Writes the token's latents at the position and returns its f32 logits (1, vocab).
    /// Every shape depends on `window` only, so the step can be captured as a CUDA graph.
    pub(crate) fn forward_fixed(
        &self,
        input: &Tensor,
        cache: &LatentCache,
        window: usize,
        arange: &Tensor,
        zero: &Tensor,
        neg_inf: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let ids = input.narrow(0, 0, 1)?;
        let pos = input.narrow(0, 1, 1)?;
        #[cfg(feature = "cuda")]
        if self.layers.first().is_some_and(|l| l.attn.fused_ok(&self.embed)) {
            return self.forward_fused(input, &ids, cache);
        }
        let (cos, sin) = self.rope.gather(&pos)?;
        let pos2 = pos.reshape((1, 1))?;
        let write_idx = pos2.broadcast_as((1, self.cfg.latent_dim()))?.contiguous()?;
        let mask = arange.broadcast_le(&pos2)?.where_cond(zero, neg_inf)?;
        let hidden = self
            .stack(&ids, |i, attn, h| attn.forward_fixed(h, &cos, &sin, cache.buffer(i), &write_idx, &mask, window))?;
        linear(&hidden, &self.lm_head)?.to_dtype(DType::F32)
    }

    /// [`Self::forward_fixed`] with the fused MLA kernels (CUDA, bf16): the sequence is a batch
    /// of one whose rows start at 0 of its own cache buffers, at the device-held position.
    #[cfg(feature = "cuda")]
    fn forward_fused(&self, input: &Tensor, ids: &Tensor, cache: &LatentCache) -> candle_core::Result<Tensor> {
        let (cos_t, sin_t) = self.rope.tables();
        let pos = input.narrow(0, 1, 1)?;
        let meta = Tensor::cat(&[&pos, &pos.zeros_like()?], 0)?; // [position, base row 0]
        let hidden =
            self.stack(ids, |i, attn, h| attn.forward_decode_batch(h, cos_t, sin_t, &meta, cache.buffer(i)))?;
        linear(&hidden, &self.lm_head)?.to_dtype(DType::F32)
    }
}
