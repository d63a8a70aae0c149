//! The per-sequence MLA cache: for each layer, the compressed latent c_kv (kv_lora_rank values,
//! after its RMSNorm) and the rotated shared rope key (qk_rope_head_dim values) of every token —
//! 576 values per token per layer for V2/V2-Lite, instead of heads x (192 + 128) expanded.

use candle_core::{DType, Device, Result, Tensor};

#[derive(Debug, Clone)]
pub struct LatentCache {
    /// One (capacity, latent_dim) buffer per layer; rows `0..len` are valid.
    layers: Vec<Tensor>,
    len: usize,
    capacity: usize,
    latent_dim: usize,
    /// Where the rows sit when the buffers are views of a [`CachePool`]: the pool's id and
    /// the first row (batched decode kernels address every sequence through the pool).
    slot: Option<(usize, usize)>,
}

/// One device buffer per layer holding many sequences' caches as row ranges: allocated once,
/// so admitting a sequence costs no device allocation, and a batched kernel reaches every
/// sequence's rows from one base address.
#[derive(Debug)]
pub struct CachePool {
    id: usize,
    layers: Vec<Tensor>,
    rows: usize,
    latent_dim: usize,
    /// Free row ranges (start, len), sorted by start, never adjacent.
    free: Vec<(usize, usize)>,
}

impl CachePool {
    pub fn new(num_layers: usize, latent_dim: usize, rows: usize, dtype: DType, device: &Device) -> Result<Self> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
        let rows = rows.max(1);
        let layers =
            (0..num_layers).map(|_| Tensor::zeros((rows, latent_dim), dtype, device)).collect::<Result<Vec<_>>>()?;
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Self { id, layers, rows, latent_dim, free: vec![(0, rows)] })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Rows not held by any sequence.
    pub fn free_rows(&self) -> usize {
        self.free.iter().map(|r| r.1).sum()
    }

    /// A cache of exactly `n` rows (first fit), or None when no free range is long enough.
    pub fn alloc(&mut self, n: usize) -> Result<Option<LatentCache>> {
        let n = n.max(1);
        let Some(i) = self.free.iter().position(|&(_, len)| len >= n) else { return Ok(None) };
        let (start, len) = self.free[i];
        if len == n {
            self.free.remove(i);
        } else {
            self.free[i] = (start + n, len - n);
        }
        let layers = self.layers.iter().map(|t| t.narrow(0, start, n)).collect::<Result<Vec<_>>>()?;
        Ok(Some(LatentCache { layers, len: 0, capacity: n, latent_dim: self.latent_dim, slot: Some((self.id, start)) }))
    }

    /// Returns a cache's rows to the pool.
    pub fn release(&mut self, cache: &LatentCache) {
        let Some((id, start)) = cache.slot else { return };
        if id != self.id {
            return;
        }
        let at = self.free.partition_point(|&(s, _)| s < start);
        self.free.insert(at, (start, cache.capacity));
        // Merge with the neighbours.
        if at + 1 < self.free.len() && self.free[at].0 + self.free[at].1 == self.free[at + 1].0 {
            self.free[at].1 += self.free[at + 1].1;
            self.free.remove(at + 1);
        }
        if at > 0 && self.free[at - 1].0 + self.free[at - 1].1 == self.free[at].0 {
            self.free[at - 1].1 += self.free[at].1;
            self.free.remove(at);
        }
    }

    /// The whole buffer of `layer` (the batched decode kernels address it; CUDA only).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn layer(&self, layer: usize) -> &Tensor {
        &self.layers[layer]
    }

    /// Tells pools apart (graphs captured over one pool's buffers are not replayed on another).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn id(&self) -> usize {
        self.id
    }

    /// The first row of `cache` in this pool, if it is one of this pool's caches.
    pub(crate) fn base_of(&self, cache: &LatentCache) -> Option<usize> {
        cache.slot.filter(|s| s.0 == self.id).map(|s| s.1)
    }
}

impl LatentCache {
    pub fn new(num_layers: usize, latent_dim: usize, capacity: usize, dtype: DType, device: &Device) -> Result<Self> {
        let capacity = capacity.max(1);
        let layers = (0..num_layers)
            .map(|_| Tensor::zeros((capacity, latent_dim), dtype, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, len: 0, capacity, latent_dim, slot: None })
    }

    /// Tokens cached so far: the position of the next token.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets the tokens from position `len` on (their rows are rewritten by the next ones).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Forgets every token, keeping the buffers (reuse for a new sequence).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Bytes held on the device.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum()
    }

    /// Makes room for `extra` more tokens, doubling the buffers when full.
    pub(crate) fn reserve(&mut self, extra: usize) -> Result<()> {
        let need = self.len + extra;
        if need <= self.capacity {
            return Ok(());
        }
        if self.slot.is_some() {
            // A pooled cache has exactly the rows reserved for its sequence.
            candle_core::bail!("sequence needs {need} cache rows; {} were reserved", self.capacity)
        }
        let capacity = need.max(self.capacity * 2);
        for layer in self.layers.iter_mut() {
            let grown = Tensor::zeros((capacity, self.latent_dim), layer.dtype(), layer.device())?;
            if self.len > 0 {
                grown.slice_set(&layer.narrow(0, 0, self.len)?, 0, 0)?;
            }
            *layer = grown;
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Writes `rows` (n, latent_dim) at positions len..len+n of `layer` (not yet counted in len)
    /// and returns the view of all valid rows including them: (len + n, latent_dim).
    pub(crate) fn write(&self, layer: usize, rows: &Tensor) -> Result<Tensor> {
        let n = rows.dim(0)?;
        let buf = &self.layers[layer];
        buf.slice_set(&rows.contiguous()?, 0, self.len)?;
        buf.narrow(0, 0, self.len + n)
    }

    /// Counts `n` written tokens; call once after every layer has written them.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// The whole buffer of `layer` (graph-captured decode reads past `len` under a mask).
    pub(crate) fn buffer(&self, layer: usize) -> &Tensor {
        &self.layers[layer]
    }
}
