//! DeepSeek-V2 (and V2-Lite) mixture-of-experts language model, written for serving.
//!
//! - [`config`]: `config.json`, validated (MLA ranks, YaRN, MoE routing options).
//! - [`loader`]: sharded safetensors (or random weights for benchmarks), shape-checked.
//! - [`mla`]: multi-head latent attention in absorbed form over a latent-only cache ([`cache`]).
//! - [`moe`]: shared + routed experts, tokens grouped per expert.
//! - [`quant`]: int4 weights (W4A16, group 128), quantised at load or read from AWQ checkpoints.
//! - [`decode`]: decode steps with fixed addresses (one sequence, and the scheduler's
//!   batches), replayed as CUDA graphs.
//! - [`tokenizer`]: tokenizer.json + DeepSeek-V2-Chat's chat template.
//! - [`model`]: the batched forward pass — many sequences, each with its own cache and
//!   position, one call for prefill and decode alike — returning logits and final hidden states.

pub mod cache;
pub mod config;
pub mod decode;
#[cfg(feature = "cuda")]
pub mod kernels;
pub mod loader;
pub mod mla;
pub mod model;
pub mod moe;
#[cfg(feature = "cuda")]
pub mod q4_kernels;
pub mod quant;
pub mod rope;
pub mod scheduler;
pub mod tokenizer;

pub use cache::{CachePool, LatentCache};
pub use config::{DeepSeekV2Config, TopkMethod, YarnScaling};
pub use decode::{BatchDecoder, FixedDecoder};
pub use loader::{RandomSource, SafetensorsSource, WeightSource};
pub use model::{DeepSeekV2, ForwardOutput, LogitsMode};
pub use quant::{Int4Weight, Quantize, Weight};
pub use tokenizer::{ChatFormat, DeepSeekTokenizer};

use candle_core::{Device, Result, Tensor};

/// The device DeepSeek runs on: the first CUDA GPU when kb is built with `cuda` and one is
/// present, else the CPU (f32, slow: tests and tiny models).
pub fn best_device() -> Device {
    Device::cuda_if_available(0).unwrap_or(Device::Cpu)
}

/// x W^T for a 2-D (or batched 3-D) x and a (out, in) weight.
pub(crate) fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    match x.rank() {
        2 => x.matmul(&w.t()?),
        _ => x.broadcast_matmul(&w.t()?),
    }
}

/// RMSNorm over the last dimension (fused kernel; statistics in f32).
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    candle_nn::ops::rms_norm(x, w, eps as f32)
}
