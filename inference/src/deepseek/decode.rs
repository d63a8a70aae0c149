//! Batch-1 decode with fixed device addresses, replayed as CUDA graphs.
//!
//! A decode step is hundreds of small kernels; issued one by one from the host, launch
//! overhead, not memory bandwidth, sets its time. [`FixedDecoder`] owns one sequence's cache,
//! preallocated (it never grows, so its buffers never move), a (2,) u32 input buffer
//! [token, position] and a (1, vocab) f32 output buffer. The step reads the token and position
//! from the device and writes the new latents at that position. On CUDA/bf16 with V2's latent
//! shape, two fused kernels write the latent and attend over the cache rows up to the position
//! (no shape depends on it); otherwise (CPU, f32, other shapes) the step attends over a fixed
//! window of the cache (the position rounded up to [`WINDOW`]) under a mask built on the device.
//! Either way, for each window size every kernel, shape and address is the same from step to
//! step: on CUDA the first step of a window runs eagerly and is then captured once as a graph,
//! and the following steps upload 8 bytes and replay it. On CPU the same fixed step runs
//! eagerly (tests check it against the ordinary forward).

use super::cache::{CachePool, LatentCache};
use super::model::{DeepSeekV2, LogitsMode};
use crate::ModelError;
use candle_core::{DType, Tensor};
use std::collections::HashMap;

/// Attention window granularity: the step attends over `ceil((pos + 1) / WINDOW) * WINDOW`
/// cache rows (masked past the position); one graph per window size.
pub const WINDOW: usize = 256;

/// Per-window constants of the device-built mask.
struct WindowConsts {
    arange: Tensor,
    zero: Tensor,
    neg_inf: Tensor,
}

#[cfg(feature = "cuda")]
struct Graph(candle_core::cuda_backend::cudarc::driver::CudaGraph);
// SAFETY: the graph is only launched from `&mut FixedDecoder`, one thread at a time.
#[cfg(feature = "cuda")]
unsafe impl Send for Graph {}

/// One sequence's decoder with a preallocated cache; see the module documentation.
pub struct FixedDecoder {
    model: DeepSeekV2,
    cache: LatentCache,
    input: Tensor,
    logits: Tensor,
    windows: HashMap<usize, WindowConsts>,
    #[cfg(feature = "cuda")]
    graphs: HashMap<usize, Graph>,
    /// The thread the graphs were captured on: candle's stream is the per-thread default
    /// stream and its upload cache is thread-local, so graphs are replayed only there (another
    /// thread recaptures).
    #[cfg(feature = "cuda")]
    graph_thread: Option<std::thread::ThreadId>,
    use_graphs: bool,
}

impl FixedDecoder {
    /// A decoder for sequences of up to `capacity` tokens (prompt and answer), rounded up to a
    /// multiple of [`WINDOW`] and capped at the model's position table. CUDA graphs are used on
    /// a CUDA device unless `KB_DEEPSEEK_CUDA_GRAPHS=0`.
    pub fn new(model: &DeepSeekV2, capacity: usize) -> Result<Self, ModelError> {
        let capacity = capacity.max(1).div_ceil(WINDOW) * WINDOW;
        let capacity = capacity.min(model.max_positions());
        let dev = model.device().clone();
        let use_graphs = dev.is_cuda() && std::env::var("KB_DEEPSEEK_CUDA_GRAPHS").map(|v| v != "0").unwrap_or(true);
        Ok(Self {
            model: model.clone(),
            cache: model.new_cache(capacity)?,
            input: Tensor::zeros(2, DType::U32, &dev)?,
            logits: Tensor::zeros((1, model.config().vocab_size), DType::F32, &dev)?,
            windows: HashMap::new(),
            #[cfg(feature = "cuda")]
            graphs: HashMap::new(),
            #[cfg(feature = "cuda")]
            graph_thread: None,
            use_graphs,
        })
    }

    /// Turns graph capture off (or back on, on CUDA) — for comparisons.
    pub fn set_use_graphs(&mut self, on: bool) {
        self.use_graphs = on && self.model.device().is_cuda();
    }

    /// Tokens held: the position of the next token.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Most tokens a sequence may have.
    pub fn capacity(&self) -> usize {
        self.cache.capacity()
    }

    pub fn model(&self) -> &DeepSeekV2 {
        &self.model
    }

    /// Forgets the sequence (the buffers and captured graphs stay).
    pub fn reset(&mut self) {
        self.cache.clear();
    }

    fn room(&self, extra: usize) -> Result<(), ModelError> {
        if self.cache.len() + extra > self.cache.capacity() {
            return Err(ModelError::InvalidInput(format!(
                "sequence of {} tokens exceeds the decoder's capacity of {}",
                self.cache.len() + extra,
                self.cache.capacity()
            )));
        }
        Ok(())
    }

    /// Appends `tokens` (the prompt, or any chunk) with the ordinary batched forward and
    /// returns the last token's f32 logits (1, vocab).
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<Tensor, ModelError> {
        self.room(tokens.len())?;
        let out = self.model.forward(&[tokens], &mut [&mut self.cache], LogitsMode::Last)?;
        Ok(out.logits.expect("logits requested"))
    }

    /// Appends one token and returns its f32 logits (1, vocab) (a fresh tensor).
    pub fn step(&mut self, token: u32) -> Result<Tensor, ModelError> {
        let vocab = self.model.config().vocab_size;
        if token as usize >= vocab {
            return Err(ModelError::InvalidInput(format!("token id {token} beyond vocabulary {vocab}")));
        }
        self.room(1)?;
        let pos = self.cache.len();
        let window = ((pos + 1).div_ceil(WINDOW) * WINDOW).min(self.cache.capacity());
        let dev = self.model.device().clone();
        self.input.slice_set(&Tensor::new(&[token, pos as u32], &dev)?, 0, 0)?;
        if !self.windows.contains_key(&window) {
            let dtype = self.model.dtype();
            let consts = WindowConsts {
                arange: Tensor::arange(0u32, window as u32, &dev)?.reshape((1, window))?,
                zero: Tensor::zeros((1, window), dtype, &dev)?,
                neg_inf: Tensor::full(f32::NEG_INFINITY, (1, window), &dev)?.to_dtype(dtype)?,
            };
            self.windows.insert(window, consts);
        }
        self.run(window)?;
        self.cache.advance(1);
        Ok(self.logits.copy()?)
    }

    /// The fixed step, eagerly, its logits copied into the output buffer.
    fn eager(&self, window: usize) -> candle_core::Result<()> {
        let c = &self.windows[&window];
        let logits = self.model.forward_fixed(&self.input, &self.cache, window, &c.arange, &c.zero, &c.neg_inf)?;
        self.logits.slice_set(&logits, 0, 0)
    }

    #[cfg(not(feature = "cuda"))]
    fn run(&mut self, window: usize) -> Result<(), ModelError> {
        Ok(self.eager(window)?)
    }

    #[cfg(feature = "cuda")]
    fn run(&mut self, window: usize) -> Result<(), ModelError> {
        if !self.use_graphs {
            return Ok(self.eager(window)?);
        }
        let me = std::thread::current().id();
        if self.graph_thread.replace(me) != Some(me) {
            self.graphs.clear();
        }
        if let Some(g) = self.graphs.get(&window) {
            g.0.launch().map_err(|e| candle_core::Error::Cuda(Box::new(e)))?;
            return Ok(());
        }
        let graph = capture(self.model.device(), || Ok(self.eager(window)?))??;
        tracing::debug!(window, "captured DeepSeek decode graph");
        self.graphs.insert(window, graph);
        Ok(())
    }
}

/// Runs `step` for real (it also warms every kernel and fills candle's upload cache), then
/// captures the same step as a graph without running it. `Err`: the step failed; `Ok(Err)`:
/// it ran (its results are written) but could not be captured.
#[cfg(feature = "cuda")]
fn capture(
    device: &candle_core::Device,
    step: impl Fn() -> Result<(), ModelError>,
) -> Result<Result<Graph, ModelError>, ModelError> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let candle_core::Device::Cuda(cuda) = device else { unreachable!("graphs only on CUDA") };
    // Small host->device uploads candle makes inside ops (shapes, strides) are cached on the
    // device while this guard lives, so the captured graph reads them from there.
    let _cache = cuda.enable_cuda_graph_htod_cache();
    step()?;
    let stream = cuda.cuda_stream();
    let err = |e| ModelError::from(candle_core::Error::Cuda(Box::new(e)));
    Ok((|| {
        stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).map_err(err)?;
        let captured = step();
        let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0)).map_err(err);
        captured?;
        let graph = graph?.ok_or_else(|| ModelError::InvalidInput("CUDA graph capture produced no graph".into()))?;
        graph.upload().map_err(err)?;
        Ok(Graph(graph))
    })())
}

/// The scheduler's batched decode step ([`DeepSeekV2::forward_decode`]) with fixed device
/// addresses, replayed as CUDA graphs, one per batch size.
///
/// Issued one by one, a batch-32 step's kernels keep the host busy for ~15 of its ~21 ms; a
/// graph issues them in one call (on an H100: 21.05 -> 19.22 ms a step). The step's inputs go to preallocated buffers
/// (token ids; positions then first pool rows) and its logits come back in one (max, vocab)
/// buffer, so every address a graph holds stays valid: the model's weights, the pool's layers
/// and these buffers. A batch size is captured the second
/// time it is stepped (sizes seen once, while sequences come and go, are not worth a capture).
/// Graphs belong to one pool and one thread (candle's stream is per thread); another pool or
/// thread recaptures. Without CUDA, or with `KB_DEEPSEEK_CUDA_GRAPHS=0`, steps run eagerly.
pub struct BatchDecoder {
    ids: Tensor,
    meta: Tensor,
    logits: Tensor,
    max: usize,
    /// Steps taken at each batch size before its capture.
    #[cfg(feature = "cuda")]
    seen: HashMap<usize, u32>,
    #[cfg(feature = "cuda")]
    graphs: HashMap<usize, Graph>,
    /// The pool and thread the graphs were captured for.
    #[cfg(feature = "cuda")]
    owner: Option<(usize, std::thread::ThreadId)>,
    use_graphs: bool,
}

impl BatchDecoder {
    /// Buffers for batches of up to `max` sequences on the model's device.
    pub fn new(model: &DeepSeekV2, max: usize) -> Result<Self, ModelError> {
        let max = max.max(1);
        let dev = model.device();
        let use_graphs = dev.is_cuda() && std::env::var("KB_DEEPSEEK_CUDA_GRAPHS").map(|v| v != "0").unwrap_or(true);
        Ok(Self {
            ids: Tensor::zeros(max, DType::U32, dev)?,
            meta: Tensor::zeros(2 * max, DType::U32, dev)?,
            logits: Tensor::zeros((max, model.config().vocab_size), DType::F32, dev)?,
            max,
            #[cfg(feature = "cuda")]
            seen: HashMap::new(),
            #[cfg(feature = "cuda")]
            graphs: HashMap::new(),
            #[cfg(feature = "cuda")]
            owner: None,
            use_graphs,
        })
    }

    /// Turns graphs off (or back on, on CUDA) — for comparisons.
    pub fn set_use_graphs(&mut self, on: bool) {
        self.use_graphs = on && self.logits.device().is_cuda();
    }

    /// Graphs captured so far.
    pub fn graphs(&self) -> usize {
        #[cfg(feature = "cuda")]
        return self.graphs.len();
        #[cfg(not(feature = "cuda"))]
        0
    }

    /// [`DeepSeekV2::forward_decode`]: `tokens[s]` at position `caches[s].len()`, caches in
    /// `pool`. Returns the f32 logits (n, vocab) as a view of the output buffer, valid until
    /// the next step, and advances the caches.
    pub fn step(
        &mut self,
        model: &DeepSeekV2,
        tokens: &[u32],
        caches: &mut [&mut LatentCache],
        pool: &CachePool,
    ) -> Result<Tensor, ModelError> {
        let n = tokens.len();
        if n > self.max {
            return model.forward_decode(tokens, caches, pool);
        }
        let meta = model.decode_meta(tokens, caches, pool)?;
        let dev = model.device();
        self.ids.slice_set(&Tensor::new(tokens, dev)?, 0, 0)?;
        self.meta.slice_set(&Tensor::from_vec(meta, 2 * n, dev)?, 0, 0)?;
        self.run(model, n, pool)?;
        for cache in caches.iter_mut() {
            cache.advance(1);
        }
        Ok(self.logits.narrow(0, 0, n)?)
    }

    fn eager(&self, model: &DeepSeekV2, n: usize, pool: &CachePool) -> Result<(), ModelError> {
        let logits = model.decode_layers(&self.ids.narrow(0, 0, n)?, &self.meta.narrow(0, 0, 2 * n)?, pool)?;
        Ok(self.logits.slice_set(&logits, 0, 0)?)
    }

    #[cfg(not(feature = "cuda"))]
    fn run(&mut self, model: &DeepSeekV2, n: usize, pool: &CachePool) -> Result<(), ModelError> {
        self.eager(model, n, pool)
    }

    #[cfg(feature = "cuda")]
    fn run(&mut self, model: &DeepSeekV2, n: usize, pool: &CachePool) -> Result<(), ModelError> {
        let owner = (pool.id(), std::thread::current().id());
        if self.owner.replace(owner) != Some(owner) {
            self.graphs.clear();
            self.seen.clear();
        }
        if let Some(g) = self.graphs.get(&n).filter(|_| self.use_graphs) {
            g.0.launch().map_err(|e| candle_core::Error::Cuda(Box::new(e)))?;
            return Ok(());
        }
        let seen = self.seen.entry(n).or_insert(0);
        *seen += 1;
        if !self.use_graphs || *seen < 2 {
            return self.eager(model, n, pool);
        }
        match capture(model.device(), || self.eager(model, n, pool))? {
            Ok(graph) => {
                tracing::debug!(batch = n, "captured DeepSeek batched decode graph");
                self.graphs.insert(n, graph);
                Ok(())
            }
            // The step ran: its logits are in the buffer. One that cannot be captured (a host
            // read somewhere in it) keeps running eagerly.
            Err(e) => {
                tracing::warn!(batch = n, error = %e, "batched decode graph capture failed; decoding eagerly");
                self.use_graphs = false;
                Ok(())
            }
        }
    }
}
