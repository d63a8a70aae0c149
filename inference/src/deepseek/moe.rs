//! The feed-forward blocks: the dense SwiGLU MLP and the DeepSeek mixture of experts
//! (shared experts that always run plus top-k routed experts).
//!
//! Routed experts run as serving engines run them: the router's choices are grouped by expert
//! and each active expert does one matmul over all of its tokens. On CUDA, small batches
//! (decode) instead go through a fused kernel that reads the chosen experts' weights by id on
//! the device, which needs no host round trip (see `kernels`).

use super::config::{DeepSeekV2Config, TopkMethod};
use super::linear;
use super::loader::{get_weight, WeightSource};
use super::quant::{Quantize, Weight, GROUP};
use crate::ModelError;
use candle_core::{DType, Device, Result, Tensor, D};

/// SwiGLU MLP with gate and up fused into one (2 * inter, hidden) matrix.
#[derive(Debug, Clone)]
pub struct Mlp {
    gate_up: Weight,
    down: Weight,
    inter: usize,
}

impl Mlp {
    pub fn load(
        src: &dyn WeightSource,
        prefix: &str,
        hidden: usize,
        inter: usize,
        dtype: DType,
        device: &Device,
        quantize: Quantize,
    ) -> std::result::Result<Self, ModelError> {
        let proj = |n: &str, out: usize, inp: usize| {
            get_weight(src, &format!("{prefix}.{n}"), out, inp, dtype, device, quantize)
        };
        let gate = proj("gate_proj", inter, hidden)?;
        let up = proj("up_proj", inter, hidden)?;
        let down = proj("down_proj", hidden, inter)?;
        Ok(Self { gate_up: Weight::cat(&[gate, up], 0, dtype)?, down, inter })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        swiglu_down(x, &self.gate_up, &self.down, self.inter)
    }

    /// Bytes of the weights on the device.
    pub fn weight_bytes(&self) -> usize {
        self.gate_up.bytes() + self.down.bytes()
    }
}

/// down(silu(x gate^T) * (x up^T)) with gate and up stacked in `gate_up`.
fn swiglu_down(x: &Tensor, gate_up: &Weight, down: &Weight, inter: usize) -> Result<Tensor> {
    let gu = gate_up.forward(x)?;
    let act = (candle_nn::ops::silu(&gu.narrow(D::Minus1, 0, inter)?)? * gu.narrow(D::Minus1, inter, inter)?)?;
    down.forward(&act)
}

/// Which experts each token goes to, and with what weight.
#[derive(Debug, Clone)]
pub struct Routing {
    /// (N, k) u32 expert ids.
    pub ids: Tensor,
    /// (N, k) f32 weights (already normalised or scaled as the config says).
    pub weights: Tensor,
}

/// Largest token count grouped by expert on the device (a decode batch); past it the host
/// groups the routing (prefill), whose per-expert matmuls are then large enough to pay.
#[cfg(feature = "cuda")]
const DEVICE_GROUPED_MAX_TOKENS: usize = 64;

#[derive(Debug, Clone)]
pub struct Moe {
    /// Router (n_experts, hidden), kept in f32 like the reference (routing is precision-sensitive).
    gate: Tensor,
    /// (E + S, 2 * inter, hidden): every routed expert's gate and up rows, then the shared
    /// experts cut into S chunks of `inter` (a SwiGLU MLP is the sum of its chunks).
    gate_up: Weight,
    /// (E + S, hidden, inter)
    down: Weight,
    dtype: DType,
    /// S: shared chunks, n_shared_experts of them.
    shared: usize,
    inter: usize,
    n_experts: usize,
    top_k: usize,
    method: TopkMethod,
    norm_topk_prob: bool,
    scaling: f64,
}

impl Moe {
    pub fn load(
        cfg: &DeepSeekV2Config,
        src: &dyn WeightSource,
        prefix: &str,
        dtype: DType,
        device: &Device,
        quantize: Quantize,
    ) -> std::result::Result<Self, ModelError> {
        let (hd, inter, e) = (cfg.hidden_size, cfg.moe_intermediate_size, cfg.n_routed_experts);
        let gate = src.get(&format!("{prefix}.gate.weight"), &[e, hd], DType::F32, device)?;
        // Parts are loaded as the checkpoint has them (AWQ packed, else dense) and quantised
        // once stacked; an AWQ checkpoint is never re-quantised.
        let awq = src.contains(&format!("{prefix}.experts.0.gate_proj.qweight"));
        let proj = |n: &str, out: usize, inp: usize| {
            get_weight(src, &format!("{prefix}.{n}"), out, inp, dtype, device, Quantize::None)
        };
        // Two layouts: the hub's one tensor per expert, or transformers 5's fused 3-D tensors.
        let fused = format!("{prefix}.experts.gate_up_proj");
        let (mut gate_up, mut down) = if src.contains(&fused) {
            let gate_up = src.get(&fused, &[e, 2 * inter, hd], dtype, device)?;
            let down = src.get(&format!("{prefix}.experts.down_proj"), &[e, hd, inter], dtype, device)?;
            (vec![Weight::Dense(gate_up)], vec![Weight::Dense(down)])
        } else {
            let mut gu = Vec::with_capacity(e);
            let mut dn = Vec::with_capacity(e);
            for i in 0..e {
                let g = proj(&format!("experts.{i}.gate_proj"), inter, hd)?;
                let u = proj(&format!("experts.{i}.up_proj"), inter, hd)?;
                gu.push(Weight::cat(&[g, u], 0, dtype)?.map(|t| t.unsqueeze(0))?);
                dn.push(proj(&format!("experts.{i}.down_proj"), hd, inter)?.map(|t| t.unsqueeze(0))?);
            }
            (gu, dn)
        };
        let shared = cfg.n_shared_experts;
        if shared > 0 {
            let si = inter * shared;
            let g = proj("shared_experts.gate_proj", si, hd)?;
            let u = proj("shared_experts.up_proj", si, hd)?;
            let chunks = |w: &Weight| w.map(|t| t.reshape((shared, inter, t.dim(1)?)));
            gate_up.push(Weight::cat(&[chunks(&g)?, chunks(&u)?], 1, dtype)?);
            // (hd, S * inter) -> S chunks of (hd, inter): a column split, on group boundaries
            // for int4 (else made dense first).
            let mut d = proj("shared_experts.down_proj", hd, si)?;
            if matches!(d, Weight::Int4(_)) && !inter.is_multiple_of(GROUP) {
                d = Weight::Dense(d.dense(dtype)?);
            }
            let parts = (0..shared)
                .map(|c| d.narrow_in(c * inter, inter)?.map(|t| t.contiguous()?.unsqueeze(0)))
                .collect::<Result<Vec<_>>>()?;
            down.push(Weight::cat(&parts, 0, dtype)?);
        }
        let finish = if awq { Quantize::None } else { quantize };
        Ok(Self {
            gate,
            gate_up: Weight::cat(&gate_up, 0, dtype)?.finish(finish, dtype)?,
            down: Weight::cat(&down, 0, dtype)?.finish(finish, dtype)?,
            dtype,
            shared,
            inter,
            n_experts: e,
            top_k: cfg.num_experts_per_tok,
            method: cfg.topk_method,
            norm_topk_prob: cfg.norm_topk_prob,
            scaling: cfg.routed_scaling_factor,
        })
    }

    /// Bytes of the weights on the device (router, experts).
    pub fn weight_bytes(&self) -> usize {
        self.gate.elem_count() * 4 + self.gate_up.bytes() + self.down.bytes()
    }

    /// Whether the experts are kept as int4.
    pub fn is_int4(&self) -> bool {
        self.gate_up.as_int4().is_some()
    }

    pub fn top_k(&self) -> usize {
        self.top_k
    }

    pub fn has_shared_experts(&self) -> bool {
        self.shared > 0
    }

    /// The router's softmax over all experts, (N, E) f32.
    pub fn router_probs(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::softmax_last_dim(&linear(&x.to_dtype(DType::F32)?, &self.gate)?)
    }

    /// The shared experts' output alone (they see every token).
    pub fn shared_forward(&self, x: &Tensor) -> Result<Option<Tensor>> {
        if self.shared == 0 {
            return Ok(None);
        }
        let mut acc: Option<Tensor> = None;
        for c in 0..self.shared {
            let y = self.expert_forward(self.n_experts + c, x)?;
            acc = Some(match acc {
                Some(a) => (a + y)?,
                None => y,
            });
        }
        Ok(acc)
    }

    /// The shared experts over every row of `x` as two matmuls: their gate/up chunks are one
    /// contiguous (S * 2I, H) slab, their down chunks one batched product summed over chunks.
    #[cfg(feature = "cuda")]
    fn shared_dense(&self, x: &Tensor, gate_up: &Tensor, down: &Tensor) -> Result<Option<Tensor>> {
        if self.shared == 0 {
            return Ok(None);
        }
        let (n, h) = x.dims2()?;
        let (s, i) = (self.shared, self.inter);
        let w = gate_up.narrow(0, self.n_experts, s)?.reshape((s * 2 * i, h))?;
        let gu = linear(x, &w)?.reshape((n, s, 2 * i))?;
        let act = (candle_nn::ops::silu(&gu.narrow(2, 0, i)?)? * gu.narrow(2, i, i)?)?; // (n, S, I)
        let down = down.narrow(0, self.n_experts, s)?; // (S, H, I)
        let y = act.transpose(0, 1)?.contiguous()?.matmul(&down.transpose(1, 2)?)?; // (S, n, H)
        Ok(Some(y.sum(0)?))
    }

    /// Expert `e` (routed, or shared chunk e - E) applied to every row of `x`, unweighted.
    pub fn expert_forward(&self, e: usize, x: &Tensor) -> Result<Tensor> {
        swiglu_down(x, &self.gate_up.map(|t| t.get(e))?, &self.down.map(|t| t.get(e))?, self.inter)
    }
    /// Softmax gating and top-k (group-limited when configured), all on the device.
    pub fn route(&self, x: &Tensor) -> Result<Routing> {
        let probs = self.router_probs(x)?; // (N, E)
        let candidates = match self.method {
            TopkMethod::Greedy => probs.clone(),
            TopkMethod::GroupLimitedGreedy { n_group, topk_group } => {
                // Keep the topk_group groups whose best expert scores highest; zero the rest.
                let n = probs.dim(0)?;
                let grouped = probs.reshape((n, n_group, self.n_experts / n_group))?;
                let group_best = grouped.max_keepdim(2)?; // (N, G, 1)
                let order = group_best.squeeze(2)?.arg_sort_last_dim(false)?;
                let kth = group_best.squeeze(2)?.gather(&order.narrow(1, topk_group - 1, 1)?.contiguous()?, 1)?;
                let keep = group_best.broadcast_ge(&kth.unsqueeze(2)?)?.to_dtype(DType::F32)?;
                grouped.broadcast_mul(&keep)?.reshape((n, self.n_experts))?
            }
        };
        let ids = candidates.arg_sort_last_dim(false)?.narrow(1, 0, self.top_k)?.contiguous()?;
        let mut weights = probs.gather(&ids, 1)?;
        // DeepSeek-V2: normalise the k weights when asked, else scale them.
        if self.top_k > 1 && self.norm_topk_prob {
            weights = weights.broadcast_div(&(weights.sum_keepdim(1)? + 1e-20)?)?;
        } else {
            weights = (weights * self.scaling)?;
        }
        Ok(Routing { ids, weights })
    }

    /// shared(x) + sum_k w_k expert_k(x) for the (N, hidden) tokens `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let routing = self.route(x)?;
        let routed = self.experts_grouped(x, &routing)?;
        match self.shared_forward(x)? {
            Some(s) => s + routed,
            None => Ok(routed),
        }
    }

    /// residual + forward(x): on CUDA at decode sizes one fused pass with no host round trip.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        {
            let (n, hd) = x.dims2()?;
            let prefill = n > DEVICE_GROUPED_MAX_TOKENS
                && matches!(self.method, TopkMethod::Greedy)
                && super::kernels::prefill_kernels();
            if (n <= DEVICE_GROUPED_MAX_TOKENS || prefill)
                && self.top_k + self.shared <= 64
                && super::kernels::supported(x, hd, self.inter, self.n_experts, self.top_k + self.shared)
            {
                let route = match self.method {
                    TopkMethod::Greedy => {
                        super::kernels::route(x, &self.gate, self.top_k, self.norm_topk_prob, self.scaling)?
                    }
                    TopkMethod::GroupLimitedGreedy { .. } => {
                        let r = self.route(x)?;
                        Tensor::cat(&[&r.ids.to_dtype(DType::F32)?, &r.weights], 1)?
                    }
                };
                if let (Weight::Int4(gu), Weight::Int4(dn), false) = (&self.gate_up, &self.down, prefill) {
                    // int4 decode batches: the int4 kernels read the active experts' codes, never
                    // a dequantised copy (per token up to `kernels::per_token_max` tokens, past
                    // that grouped by expert on tensor cores).
                    return super::q4_kernels::experts_q4(x, &route, gu, dn, residual, self.top_k, self.shared);
                }
                // Prefill with int4 experts: dequantised into a bf16 scratch copy (the whole
                // layer's, freed after it) for the grouped GEMMs.
                let gate_up = self.gate_up.dense(self.dtype)?;
                let down = self.down.dense(self.dtype)?;
                let (gate_up, down) = (&gate_up, &down);
                if n <= super::kernels::per_token_max() {
                    return super::kernels::experts(x, &route, gate_up, down, residual, self.top_k, self.shared);
                }
                // The shared experts see every token: dense GEMMs into the residual.
                let residual = match self.shared_dense(x, gate_up, down)? {
                    Some(shared) => (residual + shared)?,
                    None => residual.clone(),
                };
                return if prefill {
                    super::kernels::experts_prefill(x, &route, gate_up, down, &residual, self.top_k, self.n_experts)
                } else {
                    super::kernels::experts_grouped(x, &route, gate_up, down, &residual, self.top_k, self.n_experts)
                };
            }
        }
        residual + self.forward(x)?
    }

    /// Routed experts, grouped: one host read of the routing, one upload of the regrouped
    /// token lists, then per active expert one gather of its tokens, the gate_up and down
    /// matmuls, and one scatter-add.
    pub fn experts_grouped(&self, x: &Tensor, routing: &Routing) -> Result<Tensor> {
        let (n, hd) = x.dims2()?;
        let ids = routing.ids.to_vec2::<u32>()?;
        let ws = routing.weights.to_vec2::<f32>()?;
        let mut counts = vec![0usize; self.n_experts];
        for row in &ids {
            for &e in row {
                counts[e as usize] += 1;
            }
        }
        let mut offsets = vec![0usize; self.n_experts + 1];
        for e in 0..self.n_experts {
            offsets[e + 1] = offsets[e] + counts[e];
        }
        let mut fill = offsets.clone();
        let mut tokens = vec![0u32; offsets[self.n_experts]];
        let mut weights = vec![0f32; offsets[self.n_experts]];
        for (t, (row_ids, row_ws)) in ids.iter().zip(ws.iter()).enumerate() {
            for (&e, &w) in row_ids.iter().zip(row_ws.iter()) {
                let slot = &mut fill[e as usize];
                tokens[*slot] = t as u32;
                weights[*slot] = w;
                *slot += 1;
            }
        }
        let total = tokens.len();
        let tokens = Tensor::from_vec(tokens, total, x.device())?;
        let weights = Tensor::from_vec(weights, (total, 1), x.device())?;
        let mut out = Tensor::zeros((n, hd), DType::F32, x.device())?;
        // int4 experts: one dequantised copy for the whole call (not one per active expert).
        let (gate_up, down) = match (&self.gate_up, &self.down) {
            (Weight::Int4(_), _) | (_, Weight::Int4(_)) => {
                (Weight::Dense(self.gate_up.dense(self.dtype)?), Weight::Dense(self.down.dense(self.dtype)?))
            }
            _ => (self.gate_up.clone(), self.down.clone()),
        };
        for e in 0..self.n_experts {
            let (start, len) = (offsets[e], counts[e]);
            if len == 0 {
                continue;
            }
            let idx = tokens.narrow(0, start, len)?;
            let xs = if n == 1 { x.clone() } else { x.index_select(&idx, 0)? };
            let y = swiglu_down(&xs, &gate_up.map(|t| t.get(e))?, &down.map(|t| t.get(e))?, self.inter)?;
            let y = y.to_dtype(DType::F32)?.broadcast_mul(&weights.narrow(0, start, len)?)?;
            out = out.index_add(&idx, &y, 0)?;
        }
        out.to_dtype(x.dtype())
    }
}
