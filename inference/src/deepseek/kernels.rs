//! Fused CUDA kernels for the MoE block at small batch (decode), compiled once with NVRTC.
//!
//! Why: at batch 1 a step is bound by reading the active weights, and candle's grouped path
//! needs the router's choices on the host (a device sync per layer) plus ~8 launches per
//! expert. Here the expert ids stay on the device: one kernel routes (softmax + top-k), one
//! computes silu(gate) * up for every (token, expert) pair, one computes the weighted down
//! projections, sums them and adds the residual. Shared experts are extra experts of weight 1
//! (their SwiGLU splits exactly into chunks of moe_intermediate_size).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{CustomOp1, DType, Layout, Result, Shape, Storage, Tensor};
use half::bf16;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

const MODULE: &str = "kb_deepseek_moe";
/// Warps per block in the matrix-vector kernels: one output row per warp.
const ROWS: u32 = 8;

/// The kernels' CUDA C, compiled at first use with NVRTC.
/// The module with the shared helpers in front (one NVRTC program per module).
const SRC: &str = concat!(include_str!("kernels_common.cuh"), include_str!("kernels.cu"));

/// KB_DEEPSEEK_NVRTC_OPTIONS (e.g. "-DMU=8", "-DWNC=0", "-DQ4LB=3") overrides the kernels' tile
/// constants and load hints, for tuning on a new GPU without a rebuild (both modules; MNT is
/// also a constant on the host side).
pub(super) fn nvrtc_options() -> Vec<String> {
    std::env::var("KB_DEEPSEEK_NVRTC_OPTIONS")
        .map(|o| o.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Largest token count the per-token expert kernels take (bf16 and int4): they re-read each
/// chosen expert per token, so past a few tokens grouping by expert on tensor cores reads less.
/// `KB_DEEPSEEK_PER_TOKEN_MAX` (1 to the int4 per-token kernels' limit, 8) moves the crossover,
/// to measure it on a new GPU.
pub fn per_token_max() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| {
        std::env::var("KB_DEEPSEEK_PER_TOKEN_MAX")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(PER_TOKEN_MAX, |n: usize| n.clamp(1, super::q4_kernels::MAX_TOKENS))
    })
}

/// The default of [`per_token_max`]. (At one token the grouped path is slower: 5.04 against
/// 4.26 ms a batch-1 step at 1,024 tokens, H100, 2026-12-07.)
const PER_TOKEN_MAX: usize = 8;

/// Whether the prefill kernels (grouped expert GEMMs, causal softmax) are on:
/// `KB_DEEPSEEK_PREFILL_KERNELS=0` turns them off (the generic candle paths, for comparison).
pub fn prefill_kernels() -> bool {
    match PREFILL_KERNELS.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var("KB_DEEPSEEK_PREFILL_KERNELS").map_or(true, |v| v != "0");
            PREFILL_KERNELS.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
        v => v == 2,
    }
}

/// Turns the prefill kernels on or off for the whole process (benchmarks compare both).
pub fn set_prefill_kernels(on: bool) {
    PREFILL_KERNELS.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// 0: not read from the environment yet, 1: off, 2: on.
static PREFILL_KERNELS: AtomicU8 = AtomicU8::new(0);

/// Warps per block of the tensor-core expert kernels (`moe_gate_up_mma`, `moe_down_mma`).
const MMA_WARPS: u32 = 4;

fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    compiled(&PTX, SRC, nvrtc_options())
}

/// `src` compiled by NVRTC for sm_80 and later, once per `cell` (kb's kernel modules).
pub(super) fn compiled(
    cell: &'static OnceLock<std::result::Result<String, String>>,
    src: &str,
    options: Vec<String>,
) -> Result<&'static str> {
    let r = cell.get_or_init(|| {
        let opts = CompileOptions { arch: Some("compute_80"), options, ..Default::default() };
        compile_ptx_with_opts(src, opts).map(|p| p.to_src()).map_err(|e| format!("nvrtc: {e:?}"))
    });
    r.as_deref().map_err(|e| candle_core::Error::Msg(e.clone()))
}

/// A contiguous CUDA tensor's storage and layout.
pub(super) fn cuda_contiguous(t: &Tensor) -> Result<(candle_core::StorageRef<'_>, Layout)> {
    let (s, l) = t.storage_and_layout();
    if !matches!(&*s, Storage::Cuda(_)) || !l.is_contiguous() {
        candle_core::bail!("kb kernel: input must be a contiguous CUDA tensor")
    }
    Ok((s, l.clone()))
}

/// `t` (2-D) itself when its rows are dense at any row stride (a column range of a wider
/// product), else a contiguous copy; and its row stride.
fn dense_rows(t: &Tensor) -> Result<(Tensor, usize)> {
    let (_, cols) = t.dims2()?;
    let st = t.stride();
    if st[1] == 1 && st[0] >= cols {
        return Ok((t.clone(), st[0]));
    }
    Ok((t.contiguous()?, cols))
}

/// [`cuda_contiguous`], starting on a 16-byte boundary (the kernels' vector loads).
fn cuda_of(t: &Tensor) -> Result<(candle_core::StorageRef<'_>, Layout)> {
    let (s, l) = cuda_contiguous(t)?;
    if l.start_offset() % 8 != 0 {
        candle_core::bail!("moe kernel: tensor must start 16-byte aligned")
    }
    Ok((s, l))
}

/// The typed device slice of a tensor checked by [`cuda_contiguous`], from its offset.
macro_rules! slice_of {
    ($guard:expr, $layout:expr, $t:ty) => {
        match &*$guard {
            Storage::Cuda(c) => c.as_cuda_slice::<$t>()?.slice($layout.start_offset()..),
            _ => unreachable!("checked by cuda_contiguous"),
        }
    };
}
pub(super) use slice_of;

/// Router: x (T, H) bf16 -> (T, 2K) f32 of K expert ids then K weights.
struct Route<'a> {
    gate: &'a Tensor,
    k: usize,
    norm: bool,
    scaling: f32,
}

impl CustomOp1 for Route<'_> {
    fn name(&self) -> &'static str {
        "deepseek-moe-route"
    }
    fn cpu_fwd(&self, _: &candle_core::CpuStorage, _: &Layout) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("moe kernels are CUDA-only")
    }
    fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let (t, h) = xl.shape().dims2()?;
        let (e, _) = self.gate.dims2()?;
        let (g, gl) = cuda_of(self.gate)?;
        let x = x.as_cuda_slice::<bf16>()?.slice(xl.start_offset()..);
        let gate = slice_of!(g, gl, f32);
        // SAFETY: uninitialised device memory, written by the kernels below before it is read.
        let logits = unsafe { dev.alloc::<f32>(t * e)? };
        // SAFETY: uninitialised device memory, written by the kernels below before it is read.
        let out = unsafe { dev.alloc::<f32>(t * 2 * self.k)? };
        let f = dev.get_or_load_custom_func("moe_router_logits", MODULE, ptx()?)?;
        let cfg = LaunchConfig {
            grid_dim: ((e as u32).div_ceil(ROWS), t as u32, 1),
            block_dim: (32 * ROWS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (ei, hi) = (e as i32, h as i32);
        let mut b = f.builder();
        b.arg(&x).arg(&gate).arg(&logits).arg(&ei).arg(&hi);
        // SAFETY: x (t, h) bf16, gate (e, h) f32 and logits (t, e) match moe_router_logits's (x, gate, logits, E, H) in kernels.cu; the grid covers e rows (ROWS per block) by t tokens, each thread indexing within those sizes.
        unsafe { b.launch(cfg) }.map_err(launch_err)?;
        let f = dev.get_or_load_custom_func("moe_topk", MODULE, ptx()?)?;
        let cfg = LaunchConfig { grid_dim: (t as u32, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: (e * 4) as u32 };
        let (k, norm) = (self.k as i32, self.norm as i32);
        let mut b = f.builder();
        b.arg(&logits).arg(&out).arg(&ei).arg(&k).arg(&norm).arg(&self.scaling);
        // SAFETY: logits (t, e) and out (t, 2k) match moe_topk's (logits, route, E, K, norm, scaling); one block per token, e floats of shared memory for its logits.
        unsafe { b.launch(cfg) }.map_err(launch_err)?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((t, 2 * self.k))))
    }
}

/// How [`Experts`] reads the expert weights.
enum Pass {
    /// Every (token, expert) pair reads its expert (a few tokens, decode); `shared` chunks
    /// follow the routed experts in the weights and count as extra experts of weight 1.
    PerPair { shared: usize },
    /// Tokens grouped by expert on the device, each expert's weights read once for all its
    /// tokens (a decode batch): the `routed` experts only (the caller runs the shared ones).
    Grouped { routed: usize },
}

/// residual + the experts' weighted outputs, from x (T, H) bf16 and the routing (T, 2K).
struct Experts<'a> {
    route: &'a Tensor,
    gate_up: &'a Tensor,
    down: &'a Tensor,
    residual: &'a Tensor,
    k: usize,
    pass: Pass,
}

impl CustomOp1 for Experts<'_> {
    fn name(&self) -> &'static str {
        "deepseek-moe-experts"
    }
    fn cpu_fwd(&self, _: &candle_core::CpuStorage, _: &Layout) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("moe kernels are CUDA-only")
    }
    fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let (t, h) = xl.shape().dims2()?;
        let (e_all, two_i, _) = self.gate_up.dims3()?;
        let inter = two_i / 2;
        let (rg, rl) = cuda_of(self.route)?;
        let (gg, gl) = cuda_of(self.gate_up)?;
        let (dg, dl) = cuda_of(self.down)?;
        let (resg, resl) = cuda_of(self.residual)?;
        let x = x.as_cuda_slice::<bf16>()?.slice(xl.start_offset()..);
        let route = slice_of!(rg, rl, f32);
        let gate_up = slice_of!(gg, gl, bf16);
        let down = slice_of!(dg, dl, bf16);
        let residual = slice_of!(resg, resl, bf16);
        // SAFETY: uninitialised device memory, written by the kernels below before it is read.
        let out = unsafe { dev.alloc::<bf16>(t * h)? };
        let (hi, ii, ki) = (h as i32, inter as i32, self.k as i32);
        let block = (32 * ROWS, 1, 1);
        match self.pass {
            Pass::PerPair { shared } => {
                let s = self.k + shared;
                let (si, ei) = (s as i32, (e_all - shared) as i32);
                // SAFETY: uninitialised device memory, written by the kernels below before it is read.
                let act = unsafe { dev.alloc::<f32>(t * s * inter)? };
                let f = dev.get_or_load_custom_func("moe_gate_up", MODULE, ptx()?)?;
                let cfg = LaunchConfig {
                    grid_dim: ((inter as u32).div_ceil(2 * ROWS), (t * s) as u32, 1),
                    block_dim: block,
                    shared_mem_bytes: 0,
                };
                let mut b = f.builder();
                b.arg(&x).arg(&route).arg(&gate_up).arg(&act).arg(&hi).arg(&ii).arg(&ki).arg(&si).arg(&ei);
                // SAFETY: x (t, h), route (t, 2k), gate_up (e_all, 2 * inter, h) and act (t * s, inter) match moe_gate_up's (x, route, w, act, H, I, K, S, E); the grid covers inter / (2 * ROWS) blocks by t * s pairs.
                unsafe { b.launch(cfg) }.map_err(launch_err)?;
                let f = dev.get_or_load_custom_func("moe_down", MODULE, ptx()?)?;
                let cfg = LaunchConfig {
                    grid_dim: ((h as u32).div_ceil(ROWS / 2), t as u32, 1),
                    block_dim: block,
                    shared_mem_bytes: 0,
                };
                let mut b = f.builder();
                b.arg(&act)
                    .arg(&route)
                    .arg(&down)
                    .arg(&residual)
                    .arg(&out)
                    .arg(&hi)
                    .arg(&ii)
                    .arg(&ki)
                    .arg(&si)
                    .arg(&ei);
                // SAFETY: act (t * s, inter), route, down (e_all, h, inter), residual and out (t, h) match moe_down's (act, route, w, residual, out, H, I, K, S, E); the grid covers h rows (ROWS / 2 per block) by t tokens.
                unsafe { b.launch(cfg) }.map_err(launch_err)?;
            }
            Pass::Grouped { routed } => {
                let groups = group_by_expert(&dev, &route, t, self.k, 0, routed)?;
                let (offsets, slot_token) = (&groups.offsets, &groups.slot_token);
                let (per_token, experts) = (self.k, routed as u32);
                // SAFETY: uninitialised device memory, written by the kernels below before it is read.
                let act = unsafe { dev.alloc::<f32>(t * per_token * inter)? };
                // SAFETY: uninitialised device memory, written by the kernels below before it is read.
                let y = unsafe { dev.alloc::<f32>(t * per_token * h)? };
                let f = dev.get_or_load_custom_func("moe_gate_up_mma", MODULE, ptx()?)?;
                let cfg = LaunchConfig {
                    grid_dim: ((inter as u32).div_ceil(8 * MMA_WARPS), experts, 1),
                    block_dim: (32 * MMA_WARPS, 1, 1),
                    shared_mem_bytes: 0,
                };
                let mut b = f.builder();
                b.arg(&x).arg(offsets).arg(slot_token).arg(&gate_up).arg(&act).arg(&hi).arg(&ii);
                // SAFETY: x, offsets, slot_token (written by moe_group above, on the same stream), gate_up and act (slots, inter) match moe_gate_up_mma's (x, offsets, slot_token, w, act, H, I); one grid row per expert, 8 rows j a warp; h % 32 == 0 (`supported`).
                unsafe { b.launch(cfg) }.map_err(launch_err)?;
                let f = dev.get_or_load_custom_func("moe_down_mma", MODULE, ptx()?)?;
                let cfg = LaunchConfig {
                    grid_dim: ((h as u32).div_ceil(16 * MMA_WARPS), experts, 1),
                    block_dim: (32 * MMA_WARPS, 1, 1),
                    shared_mem_bytes: 0,
                };
                let mut b = f.builder();
                b.arg(&act).arg(offsets).arg(&down).arg(&y).arg(&hi).arg(&ii);
                // SAFETY: act, offsets, down and y (slots, h) match moe_down_mma's (act, offsets, w, y, H, I); 16 rows a warp; inter % 32 == 0 (`supported`).
                unsafe { b.launch(cfg) }.map_err(launch_err)?;
                combine(&dev, &y, &groups, &residual, &out, t, h, per_token)?;
            }
        }
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((t, h))))
    }
}

/// A decode batch's (token, slot) pairs grouped by expert on the device (`moe_group`).
pub(super) struct Groups {
    /// Per expert, where its slots start (experts + 1).
    pub offsets: CudaSlice<i32>,
    /// Per slot, its token.
    pub slot_token: CudaSlice<i32>,
    /// Per slot, its routing weight (1 for shared chunks).
    pub slot_weight: CudaSlice<f32>,
    /// Per (token, k) pair, its slot.
    pub pair_slot: CudaSlice<i32>,
}

/// Groups the t * (k + shared) pairs of `route` (t, 2k): each token's k routed experts (of
/// `routed`), then the `shared` chunks that follow them in the weights, which every token goes
/// to with weight 1.
pub(super) fn group_by_expert(
    dev: &CudaDevice,
    route: &CudaView<'_, f32>,
    t: usize,
    k: usize,
    shared: usize,
    routed: usize,
) -> Result<Groups> {
    let (slots, experts) = (t * (k + shared), routed + shared);
    // SAFETY: uninitialised device memory, every element written by moe_group below.
    let offsets = unsafe { dev.alloc::<i32>(experts + 1)? };
    // SAFETY: as offsets.
    let slot_token = unsafe { dev.alloc::<i32>(slots)? };
    // SAFETY: as offsets.
    let slot_weight = unsafe { dev.alloc::<f32>(slots)? };
    // SAFETY: as offsets.
    let pair_slot = unsafe { dev.alloc::<i32>(slots)? };
    let f = dev.get_or_load_custom_func("moe_group", MODULE, ptx()?)?;
    let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: (experts * 4) as u32 };
    let (ti, ki, si, ei) = (t as i32, k as i32, shared as i32, routed as i32);
    let mut b = f.builder();
    b.arg(route).arg(&offsets).arg(&slot_token).arg(&slot_weight).arg(&pair_slot).arg(&ti).arg(&ki).arg(&si).arg(&ei);
    // SAFETY: route (t, 2k) and the four slot arrays (experts + 1 offsets, t * (k + shared) slots each) match moe_group's (route, offsets, slot_token, slot_weight, pair_slot, T, K, S, E); one warp, with an int of shared memory per expert.
    unsafe { b.launch(cfg) }.map_err(launch_err)?;
    Ok(Groups { offsets, slot_token, slot_weight, pair_slot })
}

/// out (t, h) = residual + each token's `per_token` slot outputs y (slots, h), weighted (`moe_combine`).
#[allow(clippy::too_many_arguments)]
pub(super) fn combine(
    dev: &CudaDevice,
    y: &CudaSlice<f32>,
    groups: &Groups,
    residual: &CudaView<'_, bf16>,
    out: &CudaSlice<bf16>,
    t: usize,
    h: usize,
    per_token: usize,
) -> Result<()> {
    let f = dev.get_or_load_custom_func("moe_combine", MODULE, ptx()?)?;
    let cfg =
        LaunchConfig { grid_dim: ((h as u32).div_ceil(256), t as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let (hi, ki) = (h as i32, per_token as i32);
    let mut b = f.builder();
    b.arg(y).arg(&groups.pair_slot).arg(&groups.slot_weight).arg(residual).arg(out).arg(&hi).arg(&ki);
    // SAFETY: y (t * per_token slots, h), the groups' pair_slot and slot_weight, residual and out (t, h) match moe_combine's (y, pair_slot, slot_weight, residual, out, H, K); the grid covers h columns (256 per block) by t tokens.
    unsafe { b.launch(cfg) }.map_err(launch_err)?;
    Ok(())
}

pub(super) fn launch_err(e: impl std::error::Error + Send + Sync + 'static) -> candle_core::Error {
    candle_core::Error::Cuda(Box::new(e))
}

/// Whether the fused path can take this block: CUDA, bf16, rows in whole 32-value steps (the
/// tensor-core kernels' k step; every DeepSeek-V2 shape). `slots`: routed top-k plus shared
/// chunks (at most 64).
pub fn supported(x: &Tensor, hidden: usize, inter: usize, n_experts: usize, slots: usize) -> bool {
    x.device().is_cuda()
        && x.dtype() == DType::BF16
        && hidden.is_multiple_of(32)
        && inter.is_multiple_of(32)
        && n_experts <= 4096
        && slots <= 64
}

/// Greedy routing on the device: (T, 2K) f32, ids then weights.
pub fn route(x: &Tensor, gate: &Tensor, k: usize, norm: bool, scaling: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&Route { gate, k, norm, scaling: scaling as f32 })
}

/// residual + MoE(x) with the experts read by id on the device.
pub fn experts(
    x: &Tensor,
    route: &Tensor,
    gate_up: &Tensor,
    down: &Tensor,
    residual: &Tensor,
    k: usize,
    shared: usize,
) -> Result<Tensor> {
    let residual = residual.contiguous()?;
    x.contiguous()?.apply_op1_no_bwd(&Experts {
        route,
        gate_up,
        down,
        residual: &residual,
        k,
        pass: Pass::PerPair { shared },
    })
}

fn cuda_dev(t: &Tensor) -> Result<candle_core::CudaDevice> {
    match t.device() {
        candle_core::Device::Cuda(d) => Ok(d.clone()),
        _ => candle_core::bail!("mla kernel: tensor not on CUDA"),
    }
}

/// Whether the fused MLA decode kernels take this shape: CUDA, bf16, kv_lora_rank 512 and
/// rope 64 (DeepSeek-V2 and V2-Lite).
pub fn mla_supported(x: &Tensor, rank: usize, rope: usize) -> bool {
    x.device().is_cuda() && x.dtype() == DType::BF16 && rank == 512 && rope == 64
}

/// residual + the `experts` routed experts of x for a decode batch, tokens grouped by expert on
/// the device (the shared experts are the caller's: cuBLAS GEMMs took 13.2 ms a batch-32 step
/// where the same grouped launches with them as experts every token goes to took 14.2, H100).
pub fn experts_grouped(
    x: &Tensor,
    route: &Tensor,
    gate_up: &Tensor,
    down: &Tensor,
    residual: &Tensor,
    k: usize,
    experts: usize,
) -> Result<Tensor> {
    let residual = residual.contiguous()?;
    x.contiguous()?.apply_op1_no_bwd(&Experts {
        route,
        gate_up,
        down,
        residual: &residual,
        k,
        pass: Pass::Grouped { routed: experts },
    })
}

/// Writes each sequence's new latent into the pool at row `base_b + pos_b` (`meta` = positions
/// then bases, u32): RMSNorm(kv[..512]) * w, then the rotated rope key. `kv` is (n, 576).
#[allow(clippy::too_many_arguments)]
pub fn mla_latent_write(
    kv: &Tensor,
    norm_w: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    meta: &Tensor,
    pool: &Tensor,
    rank: usize,
    rope: usize,
    eps: f64,
) -> Result<()> {
    let dev = cuda_dev(kv)?;
    let (kv, kvs) = dense_rows(kv)?;
    let n = kv.dim(0)?;
    let (kg, kl) = kv.storage_and_layout();
    let (wg, wl) = cuda_of(norm_w)?;
    let (cg, cl) = cuda_of(cos)?;
    let (sg, sl) = cuda_of(sin)?;
    let (mg, ml) = cuda_contiguous(meta)?;
    let (pg, pl) = cuda_of(pool)?;
    let kv_s = slice_of!(kg, kl, bf16);
    let w_s = slice_of!(wg, wl, bf16);
    let c_s = slice_of!(cg, cl, bf16);
    let s_s = slice_of!(sg, sl, bf16);
    let m_s = slice_of!(mg, ml, u32);
    // Written in place: the pool is owned by the scheduler thread, the only one using it.
    let p_s = slice_of!(pg, pl, bf16);
    let f = dev.get_or_load_custom_func("mla_latent_write", MODULE, ptx()?)?;
    let cfg = LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let (r, p, e, ni, si) = (rank as i32, rope as i32, eps as f32, n as i32, kvs as i32);
    let mut b = f.builder();
    b.arg(&kv_s).arg(&w_s).arg(&c_s).arg(&s_s).arg(&m_s).arg(&p_s).arg(&r).arg(&p).arg(&e).arg(&ni).arg(&si);
    // SAFETY: kv (n, 576) with rows kvs apart (dense_rows), norm_w, cos, sin, meta (2n u32) and pool match mla_latent_write's (kv, w, cos_t, sin_t, meta, pool, R, P, eps, n, KVS); rows base + pos lie inside the pool the scheduler sized, and no other thread touches the pool meanwhile.
    unsafe { b.launch(cfg) }.map_err(launch_err)?;
    Ok(())
}

/// Heads one attention block takes (`ATT_HEADS` in kernels.cu): each cache row it stages is
/// read once for all of them.
const ATT_HEADS: usize = 16;

/// Slices each sequence's rows are split into (flash-decoding): enough blocks to fill the GPU
/// when the batch is small (batch 1: 16 slices), one slice when the batch fills it alone. A
/// function of the batch shape only, so a captured CUDA graph keeps its grid; each block finds
/// its rows from the device-held position at run time.
fn attn_splits(heads: usize, n: usize) -> usize {
    const TARGET_BLOCKS: usize = 256;
    (TARGET_BLOCKS / (heads.div_ceil(ATT_HEADS) * n).max(1)).clamp(1, 32)
}

/// Attention of every head of every sequence over its pool rows up to its position: q is the
/// raw (n, heads * (nope + rope)) projection, q_lat (heads, n, 512). Returns (heads, n, 512).
#[allow(clippy::too_many_arguments)]
pub fn mla_decode_attn(
    q: &Tensor,
    q_lat: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    meta: &Tensor,
    pool: &Tensor,
    heads: usize,
    nope: usize,
    scale: f64,
) -> Result<Tensor> {
    let q_lat = q_lat.contiguous()?;
    dense_rows(q)?.0.apply_op1_no_bwd(&Attn { q_lat: &q_lat, cos, sin, meta, pool, heads, nope, scale: scale as f32 })
}

struct Attn<'a> {
    q_lat: &'a Tensor,
    cos: &'a Tensor,
    sin: &'a Tensor,
    meta: &'a Tensor,
    pool: &'a Tensor,
    heads: usize,
    nope: usize,
    scale: f32,
}

impl CustomOp1 for Attn<'_> {
    fn name(&self) -> &'static str {
        "deepseek-mla-batch-decode-attn"
    }
    fn cpu_fwd(&self, _: &candle_core::CpuStorage, _: &Layout) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("mla kernels are CUDA-only")
    }
    fn cuda_fwd(&self, q: &CudaStorage, ql: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = q.device().clone();
        let n = ql.shape().dims2()?.0;
        let qs = ql.stride()[0] as i32; // dense_rows: rows of unit stride, qs apart
        let q_s = q.as_cuda_slice::<bf16>()?.slice(ql.start_offset()..);
        let (lg, ll) = cuda_of(self.q_lat)?;
        let (cg, cl) = cuda_of(self.cos)?;
        let (sg, sl) = cuda_of(self.sin)?;
        let (mg, ml) = cuda_contiguous(self.meta)?;
        let (pg, pl) = cuda_of(self.pool)?;
        let l_s = slice_of!(lg, ll, bf16);
        let c_s = slice_of!(cg, cl, bf16);
        let s_s = slice_of!(sg, sl, bf16);
        let m_s = slice_of!(mg, ml, u32);
        let p_s = slice_of!(pg, pl, bf16);
        let splits = attn_splits(self.heads, n);
        // SAFETY: uninitialised device memory, written by the kernels below before it is read
        // (every (head, sequence, slice) partial by mla_decode_attn, every output by the combine).
        let part = unsafe { dev.alloc::<f32>(self.heads * n * splits * 514)? };
        // SAFETY: as part.
        let out = unsafe { dev.alloc::<bf16>(self.heads * n * 512)? };
        let f = dev.get_or_load_custom_func("mla_decode_attn", MODULE, ptx()?)?;
        let groups = self.heads.div_ceil(ATT_HEADS) as u32;
        let cfg =
            LaunchConfig { grid_dim: (groups, n as u32, splits as u32), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let (h, nn, ni) = (self.heads as i32, self.nope as i32, n as i32);
        let mut b = f.builder();
        b.arg(&q_s)
            .arg(&l_s)
            .arg(&c_s)
            .arg(&s_s)
            .arg(&m_s)
            .arg(&p_s)
            .arg(&part)
            .arg(&h)
            .arg(&nn)
            .arg(&self.scale)
            .arg(&ni)
            .arg(&qs);
        // SAFETY: q (n rows qs apart), q_lat (heads, n, 512), cos, sin, meta, pool and part (heads, n, splits, 514) match mla_decode_attn's (q, q_lat, cos_t, sin_t, meta, pool, part, H, N, scale, n, QS); the grid is (head groups of 16, n, splits).
        unsafe { b.launch(cfg) }.map_err(launch_err)?;
        let f = dev.get_or_load_custom_func("mla_decode_combine", MODULE, ptx()?)?;
        let cfg =
            LaunchConfig { grid_dim: (self.heads as u32, n as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        let si = splits as i32;
        let mut b = f.builder();
        b.arg(&part).arg(&out).arg(&ni).arg(&si);
        // SAFETY: part (heads, n, splits, 514) written above and out (heads, n, 512) match mla_decode_combine's (part, out, n, S); the grid is heads by n.
        unsafe { b.launch(cfg) }.map_err(launch_err)?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((self.heads, n, 512))))
    }
}

/// Tokens sorted by routed expert, grouped on the host from one read of the routing. Rows of
/// the sorted buffers: either packed (expert e owns rows `offsets[e]..offsets[e + 1]`) or
/// padded (expert e owns rows `e * cap..(e + 1) * cap`, the unused ones zero), which lets one
/// strided-batched GEMM cover every expert.
struct Grouping {
    /// Routed experts (the strided-batched GEMMs' batch).
    routed: usize,
    rows: usize,
    layout: RowLayout,
    /// Per row its token (u32; u32::MAX for a padding row).
    row_token: Tensor,
    /// Per row its routing weight (0 for padding).
    row_weight: Tensor,
    /// Per (token, k) its row.
    pair_row: Tensor,
}

enum RowLayout {
    Packed { offsets: Vec<usize> },
    Padded { cap: usize },
}

/// Padding may at most double the rows (and so the GEMM work); past that, with routing
/// skewed onto a few experts, the experts are multiplied one by one over packed rows.
const MAX_PADDING_FACTOR: usize = 2;

fn group_on_host(route: &Tensor, k: usize, routed: usize) -> Result<Grouping> {
    let r = route.to_vec2::<f32>()?; // (T, 2K): ids then weights
    let t = r.len();
    let mut counts = vec![0usize; routed];
    for row in &r {
        for &e in &row[..k] {
            let e = e as usize;
            if e >= routed {
                candle_core::bail!("moe prefill: expert id {e} out of range");
            }
            counts[e] += 1;
        }
    }
    let cap = counts.iter().copied().max().unwrap_or(0).next_multiple_of(8);
    let padded = routed * cap <= MAX_PADDING_FACTOR * t * k;
    let mut offsets = vec![0usize; routed + 1];
    for e in 0..routed {
        offsets[e + 1] = if padded { (e + 1) * cap } else { offsets[e] + counts[e] };
    }
    let rows = offsets[routed];
    let mut fill = offsets.clone();
    // u32 on the host (candle has no i32); the kernels read them as int.
    let (mut row_token, mut row_weight, mut pair_row) = (vec![u32::MAX; rows], vec![0f32; rows], vec![0u32; t * k]);
    // Token order within each expert: the same sums in the same order on every run.
    for (tok, route_row) in r.iter().enumerate() {
        for j in 0..k {
            let e = route_row[j] as usize;
            let row = fill[e];
            fill[e] += 1;
            row_token[row] = tok as u32;
            row_weight[row] = route_row[k + j];
            pair_row[tok * k + j] = row as u32;
        }
    }
    let dev = route.device();
    Ok(Grouping {
        routed,
        rows,
        layout: if padded { RowLayout::Padded { cap } } else { RowLayout::Packed { offsets } },
        row_token: Tensor::from_vec(row_token, rows, dev)?,
        row_weight: Tensor::from_vec(row_weight, rows, dev)?,
        pair_row: Tensor::from_vec(pair_row, t * k, dev)?,
    })
}

/// residual + the routed experts of x (T, H) bf16 for many tokens (prefill): the routing read
/// once, tokens gathered in expert order (one kernel), the gate/up and down products on tensor
/// cores through cuBLAS (one strided-batched GEMM each over every expert's padded rows, or, for
/// skewed routing, one GEMM per active expert over packed rows), SwiGLU over all rows at once,
/// and one combine kernel for the weighted sum plus residual. The generic grouped path made ~10
/// launches per expert, and its per-expert GEMMs of a few dozen rows filled a third of the SMs.
pub fn experts_prefill(
    x: &Tensor,
    route: &Tensor,
    gate_up: &Tensor,
    down: &Tensor,
    residual: &Tensor,
    k: usize,
    routed: usize,
) -> Result<Tensor> {
    let grouping = group_on_host(route, k, routed)?;
    let residual = residual.contiguous()?;
    x.contiguous()?.apply_op1_no_bwd(&PrefillExperts { grouping: &grouping, gate_up, down, residual: &residual, k })
}

struct PrefillExperts<'a> {
    grouping: &'a Grouping,
    gate_up: &'a Tensor,
    down: &'a Tensor,
    residual: &'a Tensor,
    k: usize,
}

impl CustomOp1 for PrefillExperts<'_> {
    fn name(&self) -> &'static str {
        "deepseek-moe-prefill-experts"
    }
    fn cpu_fwd(&self, _: &candle_core::CpuStorage, _: &Layout) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("moe kernels are CUDA-only")
    }
    fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::cublas::{
            sys::cublasOperation_t, Gemm, GemmConfig, StridedBatchedConfig,
        };
        let dev = x.device().clone();
        let (t, h) = xl.shape().dims2()?;
        // gate_up / down hold the routed experts, then the shared chunks (not used here).
        let (_, two_i, _) = self.gate_up.dims3()?;
        let inter = two_i / 2;
        let g = self.grouping;
        let n_experts = g.routed;
        let rows = g.rows;
        let (gg, gl) = cuda_of(self.gate_up)?;
        let (dg, dl) = cuda_of(self.down)?;
        let (resg, resl) = cuda_of(self.residual)?;
        let (tg, tl) = cuda_contiguous(&g.row_token)?;
        let (wg, wl) = cuda_contiguous(&g.row_weight)?;
        let (pg, pl) = cuda_contiguous(&g.pair_row)?;
        let x = x.as_cuda_slice::<bf16>()?.slice(xl.start_offset()..);
        let gate_up = slice_of!(gg, gl, bf16);
        let down = slice_of!(dg, dl, bf16);
        let residual = slice_of!(resg, resl, bf16);
        let row_token = slice_of!(tg, tl, u32);
        let row_weight = slice_of!(wg, wl, f32);
        let pair_row = slice_of!(pg, pl, u32);
        // SAFETY: uninitialised device memory; this and the four allocations below are each
        // written in full (xs by the gather, gu and y by the GEMMs over every row, act by the
        // SwiGLU kernel, out by the combine) before they are read.
        let mut xs = unsafe { dev.alloc::<bf16>(rows * h)? };
        // SAFETY: as above.
        let mut gu = unsafe { dev.alloc::<bf16>(rows * two_i)? };
        // SAFETY: as above.
        let mut act = unsafe { dev.alloc::<bf16>(rows * inter)? };
        // SAFETY: as above.
        let mut y = unsafe { dev.alloc::<bf16>(rows * h)? };
        // SAFETY: as above.
        let out = unsafe { dev.alloc::<bf16>(t * h)? };
        let (hi, ii, ki, h8) = (h as i32, inter as i32, self.k as i32, (h / 8) as i32);

        let f = dev.get_or_load_custom_func("moe_gather_rows", MODULE, ptx()?)?;
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, (h as u32 / 8).div_ceil(128), 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = f.builder();
        b.arg(&x).arg(&row_token).arg(&mut xs).arg(&h8);
        // SAFETY: x (t, h) and xs (rows, h) bf16 read as 16-byte words (h % 8 == 0, checked by `supported`), row_token (rows) holds tokens < t or -1 (a zero row); the grid covers rows by h / 8 words.
        unsafe { b.launch(cfg) }.map_err(launch_err)?;

        let blas = dev.cublas_handle();
        let (one, zero) = (bf16::ONE, bf16::ZERO);
        // Row-major C (n, M) = A (n, K) · W^T with W (M, K) row-major: in cuBLAS's column-major
        // terms C^T = op(W) · A^T, op = transpose (lda = K), A^T as stored (ldb = K), ldc = M.
        let gemm_cfg = |m: usize, n: usize, k: usize| GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: m as i32,
            n: n as i32,
            k: k as i32,
            alpha: one,
            lda: k as i32,
            ldb: k as i32,
            beta: zero,
            ldc: m as i32,
        };
        // gate/up: (rows of e, 2I) = xs (rows of e, H) · gate_up[e]^T
        match &g.layout {
            RowLayout::Padded { cap } => {
                let cfg = StridedBatchedConfig {
                    gemm: gemm_cfg(two_i, *cap, h),
                    batch_size: n_experts as i32,
                    stride_a: (two_i * h) as i64,
                    stride_b: (cap * h) as i64,
                    stride_c: (cap * two_i) as i64,
                };
                // SAFETY: gate_up holds n_experts (2I, H) matrices, xs and gu n_experts * cap rows of H and 2I.
                unsafe { blas.gemm_strided_batched(cfg, &gate_up, &xs, &mut gu) }.map_err(launch_err)?;
            }
            RowLayout::Packed { offsets } => {
                for e in 0..offsets.len() - 1 {
                    let (start, count) = (offsets[e], offsets[e + 1] - offsets[e]);
                    if count == 0 {
                        continue;
                    }
                    let w = gate_up.slice(e * two_i * h..(e + 1) * two_i * h);
                    let a = xs.slice(start * h..(start + count) * h);
                    let mut c = gu.slice_mut(start * two_i..(start + count) * two_i);
                    // SAFETY: the views hold exactly the (2I, H), (count, H) and (count, 2I) matrices the config describes.
                    unsafe { blas.gemm(gemm_cfg(two_i, count, h), &w, &a, &mut c) }.map_err(launch_err)?;
                }
            }
        }

        let f = dev.get_or_load_custom_func("moe_silu_mul", MODULE, ptx()?)?;
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, (inter as u32).div_ceil(256), 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = f.builder();
        b.arg(&gu).arg(&mut act).arg(&ii);
        // SAFETY: gu (rows, 2I) and act (rows, I) bf16 match moe_silu_mul's (gu, act, I); the grid covers rows by I columns.
        unsafe { b.launch(cfg) }.map_err(launch_err)?;

        // down: (rows of e, H) = act (rows of e, I) · down[e]^T
        match &g.layout {
            RowLayout::Padded { cap } => {
                let cfg = StridedBatchedConfig {
                    gemm: gemm_cfg(h, *cap, inter),
                    batch_size: n_experts as i32,
                    stride_a: (h * inter) as i64,
                    stride_b: (cap * inter) as i64,
                    stride_c: (cap * h) as i64,
                };
                // SAFETY: down holds n_experts (H, I) matrices, act and y n_experts * cap rows of I and H.
                unsafe { blas.gemm_strided_batched(cfg, &down, &act, &mut y) }.map_err(launch_err)?;
            }
            RowLayout::Packed { offsets } => {
                for e in 0..offsets.len() - 1 {
                    let (start, count) = (offsets[e], offsets[e + 1] - offsets[e]);
                    if count == 0 {
                        continue;
                    }
                    let w = down.slice(e * h * inter..(e + 1) * h * inter);
                    let a = act.slice(start * inter..(start + count) * inter);
                    let mut c = y.slice_mut(start * h..(start + count) * h);
                    // SAFETY: the views hold exactly the (H, I), (count, I) and (count, H) matrices the config describes.
                    unsafe { blas.gemm(gemm_cfg(h, count, inter), &w, &a, &mut c) }.map_err(launch_err)?;
                }
            }
        }

        let f = dev.get_or_load_custom_func("moe_combine_bf16", MODULE, ptx()?)?;
        let cfg = LaunchConfig {
            grid_dim: (t as u32, (h as u32).div_ceil(256), 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = f.builder();
        b.arg(&y).arg(&pair_row).arg(&row_weight).arg(&residual).arg(&out).arg(&hi).arg(&ki);
        // SAFETY: y (rows, h), pair_row (t * k), row_weight (rows), residual and out (t, h) match moe_combine_bf16's (y, pair_slot, slot_weight, residual, out, H, K); the grid covers t tokens by h columns.
        unsafe { b.launch(cfg) }.map_err(launch_err)?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((t, h))))
    }
}

/// Causal softmax of scaled attention scores (h * n, L) bf16, row r = token r % n of a head,
/// token i seeing columns 0 ..= prefix + i: the mask applied inside one kernel.
pub fn causal_softmax(scores: &Tensor, n: usize, prefix: usize) -> Result<Tensor> {
    scores.contiguous()?.apply_op1_no_bwd(&CausalSoftmax { n, prefix })
}

struct CausalSoftmax {
    n: usize,
    prefix: usize,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "deepseek-causal-softmax"
    }
    fn cpu_fwd(&self, _: &candle_core::CpuStorage, _: &Layout) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("causal softmax kernel is CUDA-only")
    }
    fn cuda_fwd(&self, s: &CudaStorage, sl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = s.device().clone();
        let (rows, l) = sl.shape().dims2()?;
        let scores = s.as_cuda_slice::<bf16>()?.slice(sl.start_offset()..);
        // SAFETY: uninitialised device memory, every element written by the kernel below.
        let p = unsafe { dev.alloc::<bf16>(rows * l)? };
        let f = dev.get_or_load_custom_func("causal_softmax", MODULE, ptx()?)?;
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let (n, prefix, li) = (self.n as i32, self.prefix as i32, l as i32);
        let mut b = f.builder();
        b.arg(&scores).arg(&p).arg(&n).arg(&prefix).arg(&li);
        // SAFETY: scores and p (rows, L) bf16 match causal_softmax's (scores, p, n, prefix, L); one block per row.
        unsafe { b.launch(cfg) }.map_err(launch_err)?;
        Ok((CudaStorage::wrap_cuda_slice(p, dev), Shape::from((rows, l))))
    }
}
