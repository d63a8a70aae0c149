//! Rotary embedding of the decoupled rope part of MLA, with DeepSeek's YaRN scaling.
//!
//! DeepSeek rotates interleaved pairs (`x[2i]`, `x[2i+1]`) — its reference permutes the rope
//! features into halves and uses `rotate_half`, transformers multiplies complex pairs; both are
//! `rope_i`. Query and key get the same rotation, so either order gives the same scores.

use super::config::{yarn_get_mscale, DeepSeekV2Config};
use candle_core::{DType, Device, Result, Tensor};

/// Positions beyond this are refused rather than allocating a table for the model's full
/// (160k-token) window up front.
pub const DEFAULT_MAX_POSITIONS: usize = 32_768;

#[derive(Debug, Clone)]
pub struct Rope {
    /// (max_positions, rope_dim / 2), in the compute dtype, already scaled by YaRN's mscale.
    cos: Tensor,
    sin: Tensor,
    max_positions: usize,
}

/// Inverse frequencies (rope_dim / 2 of them) and the cos/sin multiplier.
pub fn inv_freq(cfg: &DeepSeekV2Config) -> (Vec<f64>, f64) {
    let dim = cfg.qk_rope_head_dim;
    let base = cfg.rope_theta;
    let extra: Vec<f64> = (0..dim / 2).map(|i| 1.0 / base.powf((2 * i) as f64 / dim as f64)).collect();
    let Some(y) = &cfg.yarn else { return (extra, 1.0) };
    let orig = y.original_max_position_embeddings as f64;
    let correction_dim = |rot: f64| (dim as f64 * (orig / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln());
    let low = correction_dim(y.beta_fast).floor().max(0.0);
    let mut high = correction_dim(y.beta_slow).ceil().min(dim as f64 - 1.0);
    if low == high {
        high += 0.001;
    }
    let freqs = extra
        .iter()
        .enumerate()
        .map(|(i, &f_extra)| {
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            let keep = 1.0 - ramp; // 1: extrapolate (high frequency), 0: interpolate
            let f_inter = f_extra / y.factor;
            f_inter * (1.0 - keep) + f_extra * keep
        })
        .collect();
    let mscale = yarn_get_mscale(y.factor, y.mscale) / yarn_get_mscale(y.factor, y.mscale_all_dim);
    (freqs, mscale)
}

impl Rope {
    pub fn new(cfg: &DeepSeekV2Config, max_positions: usize, dtype: DType, device: &Device) -> Result<Self> {
        let max_positions = max_positions.min(cfg.max_position_embeddings.max(1));
        let (freqs, mscale) = inv_freq(cfg);
        let half = freqs.len();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for &f in &freqs {
                // f32 like the reference's angle computation, so long positions round alike.
                let angle = (p as f32) * (f as f32);
                cos.push(angle.cos() * mscale as f32);
                sin.push(angle.sin() * mscale as f32);
            }
        }
        let cos = Tensor::from_vec(cos, (max_positions, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (max_positions, half), device)?.to_dtype(dtype)?;
        Ok(Self { cos, sin, max_positions })
    }

    /// The whole (max_positions, rope_dim / 2) cos and sin tables.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// cos and sin rows for `positions` (a u32 tensor of n positions): two (n, rope_dim/2) tensors.
    pub fn gather(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((self.cos.index_select(positions, 0)?, self.sin.index_select(positions, 0)?))
    }

    /// Rotates `x` of shape (1, heads, n, rope_dim), contiguous, token t by row t of cos/sin.
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        candle_nn::rotary_emb::rope_i(x, cos, sin)
    }
}
