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
}

impl LatentCache {
    pub fn new(
        num_layers: usize,
        latent_dim: usize,
        capacity: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let capacity = capacity.max(1);
        let layers = (0..num_layers)
            .map(|_| Tensor::zeros((capacity, latent_dim), dtype, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, len: 0, capacity, latent_dim })
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
