//! W4A16 CUDA kernels (`q4_kernels.cu`, compiled once with NVRTC): the int4 GEMV for the dense
//! projections and the fused int4 expert kernels at decode sizes (per token up to 8 tokens, on
//! tensor cores up to 64), and the dequantisation into a bf16 scratch copy that prefill
//! multiplies with cuBLAS.
//!
//! Why: decode at batch 1 is bound by reading weights, and int4 codes are a quarter of bf16's
//! bytes; the codes are unpacked in registers (no int-to-float conversions, see the .cu).

use super::kernels::{combine, compiled, cuda_contiguous, group_by_expert, launch_err, nvrtc_options, slice_of};
use super::quant::{Int4Weight, GROUP};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::CudaStorage;
use candle_core::{CustomOp1, DType, Layout, Result, Shape, Storage, Tensor};
use half::{bf16, f16};
use std::sync::OnceLock;

const MODULE: &str = "kb_deepseek_q4";
const SRC: &str = concat!(include_str!("kernels_common.cuh"), include_str!("q4_kernels.cu"));
/// Warps per block (256 threads).
const WARPS: u32 = 8;
/// Most tokens the per-token GEMV and fused expert kernels take (the GEMV keeps 8 sums per row).
pub const MAX_TOKENS: usize = 8;
/// Most tokens the tensor-core kernels take (a decode batch; `q4_linear_mma` reads a weight once
/// per 32 of them): past it, prefill multiplies a dequantised copy with cuBLAS.
pub const BATCH_TOKENS: usize = 64;
/// Warps per block of the grouped tensor-core expert kernels (128 threads, as their
/// `__launch_bounds__` in q4_kernels.cu assume), and tokens per pass over a tile's codes (MNT = 4
/// in kernels_common.cuh: 4 tiles of 8).
const MMA_WARPS: u32 = 4;
const MMA_TOKENS: usize = 32;

fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    compiled(&PTX, SRC, nvrtc_options())
}

/// The packed parts, contiguous, codes on 16-byte boundaries.
fn parts(q: &Int4Weight) -> Result<(Tensor, Tensor, Tensor)> {
    let qw = q.qweight.contiguous()?;
    if qw.layout().start_offset() % 4 != 0 {
        return Ok((qw.copy()?, q.scales.contiguous()?, q.zeros.contiguous()?));
    }
    Ok((qw, q.scales.contiguous()?, q.zeros.contiguous()?))
}

/// Warps that split one 16-row tile's groups in `q4_linear_mma`: a dense projection has few tiles
/// (2,048 rows: 128), one warp each left most of the GPU idle (batch-32 step, H100: 9.61 ms with
/// 1, 8.92 with 4, 8.97 with 8).
const LINEAR_SPLIT: u32 = 4;

/// Whether [`q4_gemv`] takes x (N, in) against this weight: CUDA, bf16, N <= 64, a 2-D weight.
pub fn q4_gemv_supported(x: &Tensor, q: &Int4Weight) -> bool {
    x.device().is_cuda()
        && x.dtype() == DType::BF16
        && x.rank() == 2
        && x.dim(0).is_ok_and(|n| (1..=BATCH_TOKENS).contains(&n))
        && q.qweight.rank() == 2
        && q.in_dim().is_ok_and(|i| i.is_multiple_of(GROUP) && x.dim(1).is_ok_and(|xi| xi == i))
}

/// x Wᵀ (N, out) bf16 with W int4, read packed: N <= 8 by the per-token kernel, up to 64 on
/// tensor cores.
pub fn q4_gemv(x: &Tensor, q: &Int4Weight) -> Result<Tensor> {
    let (qw, sc, zr) = parts(q)?;
    x.contiguous()?.apply_op1_no_bwd(&Q4Linear { qw: &qw, sc: &sc, zr: &zr })
}

struct Q4Linear<'a> {
    qw: &'a Tensor,
    sc: &'a Tensor,
    zr: &'a Tensor,
}

impl CustomOp1 for Q4Linear<'_> {
    fn name(&self) -> &'static str {
        "deepseek-q4-linear"
    }
    fn cpu_fwd(&self, _: &candle_core::CpuStorage, _: &Layout) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("q4 kernels are CUDA-only")
    }
    fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let (t, inp) = xl.shape().dims2()?;
        let (out, _) = self.qw.dims2()?;
        let (qg, ql) = cuda_contiguous(self.qw)?;
        let (sg, sl) = cuda_contiguous(self.sc)?;
        let (zg, zl) = cuda_contiguous(self.zr)?;
        let x = x.as_cuda_slice::<bf16>()?.slice(xl.start_offset()..);
        let qw = slice_of!(qg, ql, u32);
        let sc = slice_of!(sg, sl, f16);
        let zr = slice_of!(zg, zl, u8);
        // SAFETY: uninitialised device memory, every element written by the kernel below.
        let y = unsafe { dev.alloc::<bf16>(t * out)? };
        let (ti, ii, oi) = (t as i32, inp as i32, out as i32);
        let (name, cfg) = if t <= MAX_TOKENS {
            let grid = ((out as u32).div_ceil(2 * WARPS), 1, 1);
            ("q4_linear", LaunchConfig { grid_dim: grid, block_dim: (32 * WARPS, 1, 1), shared_mem_bytes: 0 })
        } else {
            let w = LINEAR_SPLIT;
            let grid = ((out as u32).div_ceil(16), t.div_ceil(MMA_TOKENS) as u32, 1);
            // Each other warp's MNT * 4 sums a lane, f32.
            let shared = (w - 1) * (MMA_TOKENS as u32 / 8 * 4) * 32 * 4;
            ("q4_linear_mma", LaunchConfig { grid_dim: grid, block_dim: (32 * w, 1, 1), shared_mem_bytes: shared })
        };
        let f = dev.get_or_load_custom_func(name, MODULE, ptx()?)?;
        let mut b = f.builder();
        b.arg(&x).arg(&qw).arg(&sc).arg(&zr).arg(&y).arg(&ti).arg(&ii).arg(&oi);
        // SAFETY: x (t, in) bf16, qw (out, in / 8) u32 at a 16-byte aligned start (checked by `parts`), sc / zr (out, in / 128) and y (t, out) match q4_linear's and q4_linear_mma's (x, qw, sc, zr, y, T, IN, OUT); in % 128 == 0 (q4_gemv_supported); q4_linear takes t <= 8 with two rows a warp, q4_linear_mma a 16-row tile a block (its warps splitting the groups, their sums in the shared memory given) by 32 tokens a grid row.
        unsafe { b.launch(cfg) }.map_err(launch_err)?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev), Shape::from((t, out))))
    }
}

/// The bf16 dense copy of an int4 weight (…, out, in), one kernel.
pub fn q4_dequantize(q: &Int4Weight) -> Result<Tensor> {
    let (qw, sc, zr) = parts(q)?;
    let mut shape = qw.dims().to_vec();
    let last = shape.len() - 1;
    shape[last] *= 8;
    let flat = qw.flatten_all()?;
    let out = flat.apply_op1_no_bwd(&Q4Dequant { sc: &sc, zr: &zr, in8: qw.dim(last)? })?;
    out.reshape(shape)
}

struct Q4Dequant<'a> {
    sc: &'a Tensor,
    zr: &'a Tensor,
    in8: usize,
}

impl CustomOp1 for Q4Dequant<'_> {
    fn name(&self) -> &'static str {
        "deepseek-q4-dequant"
    }
    fn cpu_fwd(&self, _: &candle_core::CpuStorage, _: &Layout) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("q4 kernels are CUDA-only")
    }
    fn cuda_fwd(&self, qw: &CudaStorage, ql: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = qw.device().clone();
        let words = ql.shape().elem_count();
        let (sg, sl) = cuda_contiguous(self.sc)?;
        let (zg, zl) = cuda_contiguous(self.zr)?;
        let qw = qw.as_cuda_slice::<u32>()?.slice(ql.start_offset()..);
        let sc = slice_of!(sg, sl, f16);
        let zr = slice_of!(zg, zl, u8);
        // SAFETY: uninitialised device memory, every element written by the kernel below.
        let out = unsafe { dev.alloc::<bf16>(words * 8)? };
        let f = dev.get_or_load_custom_func("q4_dequant", MODULE, ptx()?)?;
        let blocks = words.div_ceil(256).min(1 << 20) as u32;
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let (n, in8) = (words as i64, self.in8 as i32);
        let mut b = f.builder();
        b.arg(&qw).arg(&sc).arg(&zr).arg(&out).arg(&n).arg(&in8);
        // SAFETY: qw (words) u32, sc / zr (words / in8 rows, in8 / 16) and out (words * 8) bf16 written as 16-byte words match q4_dequant's (qw, sc, zr, out, words, IN8); a grid-stride loop covers every word.
        unsafe { b.launch(cfg) }.map_err(launch_err)?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(words * 8)))
    }
}

/// residual + MoE(x) at decode sizes (T <= 64) with int4 experts: route (T, 2K) as
/// `kernels::route` gives it, gate_up (E + S, 2I, H) and down (E + S, H, I) int4. Up to
/// `kernels::per_token_max` tokens every (token, expert) pair reads its expert; past that the
/// pairs are grouped by expert on the device (shared chunks as experts every token goes to) and
/// each expert's codes are read once for all its tokens, on tensor cores.
pub fn experts_q4(
    x: &Tensor,
    route: &Tensor,
    gate_up: &Int4Weight,
    down: &Int4Weight,
    residual: &Tensor,
    k: usize,
    shared: usize,
) -> Result<Tensor> {
    let (t, h) = x.dims2()?;
    let (_, two_i, h8) = gate_up.qweight.dims3()?;
    let inter = two_i / 2;
    if t > BATCH_TOKENS || h8 * 8 != h || !h.is_multiple_of(GROUP) || !inter.is_multiple_of(GROUP) || k + shared > 64 {
        candle_core::bail!(
            "experts_q4: unsupported shape (tokens {t}, hidden {h}, inter {inter}, slots {})",
            k + shared
        )
    }
    let (gw, gs, gz) = parts(gate_up)?;
    let (dw, ds, dz) = parts(down)?;
    let residual = residual.contiguous()?;
    let route = route.contiguous()?;
    x.contiguous()?.apply_op1_no_bwd(&ExpertsQ4 {
        route: &route,
        gate_up: [&gw, &gs, &gz],
        down: [&dw, &ds, &dz],
        residual: &residual,
        k,
        shared,
    })
}

struct ExpertsQ4<'a> {
    route: &'a Tensor,
    gate_up: [&'a Tensor; 3],
    down: [&'a Tensor; 3],
    residual: &'a Tensor,
    k: usize,
    shared: usize,
}

impl CustomOp1 for ExpertsQ4<'_> {
    fn name(&self) -> &'static str {
        "deepseek-moe-experts-q4"
    }
    fn cpu_fwd(&self, _: &candle_core::CpuStorage, _: &Layout) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("q4 kernels are CUDA-only")
    }
    fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let (t, h) = xl.shape().dims2()?;
        let (e_all, two_i, _) = self.gate_up[0].dims3()?;
        let inter = two_i / 2;
        let (rg, rl) = cuda_contiguous(self.route)?;
        let (g0, l0) = cuda_contiguous(self.gate_up[0])?;
        let (g1, l1) = cuda_contiguous(self.gate_up[1])?;
        let (g2, l2) = cuda_contiguous(self.gate_up[2])?;
        let (d0, m0) = cuda_contiguous(self.down[0])?;
        let (d1, m1) = cuda_contiguous(self.down[1])?;
        let (d2, m2) = cuda_contiguous(self.down[2])?;
        let (resg, resl) = cuda_contiguous(self.residual)?;
        let x = x.as_cuda_slice::<bf16>()?.slice(xl.start_offset()..);
        let route = slice_of!(rg, rl, f32);
        let (gw, gs, gz) = (slice_of!(g0, l0, u32), slice_of!(g1, l1, f16), slice_of!(g2, l2, u8));
        let (dw, ds, dz) = (slice_of!(d0, m0, u32), slice_of!(d1, m1, f16), slice_of!(d2, m2, u8));
        let residual = slice_of!(resg, resl, bf16);
        let s = self.k + self.shared;
        let (hi, ii, ki, si, ei) = (h as i32, inter as i32, self.k as i32, s as i32, (e_all - self.shared) as i32);
        if t > super::kernels::per_token_max() {
            let groups = group_by_expert(&dev, &route, t, self.k, self.shared, e_all - self.shared)?;
            // SAFETY: uninitialised device memory, every element written by the kernels below.
            let act = unsafe { dev.alloc::<bf16>(t * s * inter)? };
            // SAFETY: as act.
            let y = unsafe { dev.alloc::<f32>(t * s * h)? };
            // SAFETY: as act.
            let out = unsafe { dev.alloc::<bf16>(t * h)? };
            let block = (32 * MMA_WARPS, 1, 1);
            let f = dev.get_or_load_custom_func("moe_gate_up_q4_mma", MODULE, ptx()?)?;
            let grid = ((inter as u32).div_ceil(8 * MMA_WARPS), e_all as u32, 1);
            let cfg = LaunchConfig { grid_dim: grid, block_dim: block, shared_mem_bytes: 0 };
            let mut b = f.builder();
            b.arg(&x)
                .arg(&groups.offsets)
                .arg(&groups.slot_token)
                .arg(&gw)
                .arg(&gs)
                .arg(&gz)
                .arg(&act)
                .arg(&hi)
                .arg(&ii);
            // SAFETY: x (t, h) bf16, the groups (written by moe_group on this stream), the int4 gate_up (e_all, 2I, h / 8) u32 with (e_all, 2I, h / 128) scales and zeros, act (t * s slots, I) bf16 match moe_gate_up_q4_mma's (x, offsets, slot_token, qw, sc, zr, act, H, I); h and I are multiples of 128 (checked by experts_q4); one grid row per expert, 8 rows j a warp.
            unsafe { b.launch(cfg) }.map_err(launch_err)?;
            let f = dev.get_or_load_custom_func("moe_down_q4_mma", MODULE, ptx()?)?;
            let grid = ((h as u32).div_ceil(16 * MMA_WARPS), e_all as u32, 1);
            let cfg = LaunchConfig { grid_dim: grid, block_dim: block, shared_mem_bytes: 0 };
            let mut b = f.builder();
            b.arg(&act).arg(&groups.offsets).arg(&dw).arg(&ds).arg(&dz).arg(&y).arg(&hi).arg(&ii);
            // SAFETY: act, the groups' offsets, the int4 down (e_all, h, I / 8) u32 with (e_all, h, I / 128) scales and zeros, y (t * s slots, h) match moe_down_q4_mma's (act, offsets, qw, sc, zr, y, H, I); 16 rows a warp.
            unsafe { b.launch(cfg) }.map_err(launch_err)?;
            combine(&dev, &y, &groups, &residual, &out, t, h, s)?;
            return Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((t, h))));
        }
        // SAFETY: uninitialised device memory, every element written by moe_gate_up_q4 below.
        let act = unsafe { dev.alloc::<f32>(t * s * inter)? };
        // SAFETY: uninitialised device memory, every element written by moe_down_q4 below.
        let out = unsafe { dev.alloc::<bf16>(t * h)? };
        let block = (32 * WARPS, 1, 1);
        let f = dev.get_or_load_custom_func("moe_gate_up_q4", MODULE, ptx()?)?;
        let cfg = LaunchConfig {
            grid_dim: ((inter as u32).div_ceil(2 * WARPS), (t * s) as u32, 1),
            block_dim: block,
            shared_mem_bytes: 0,
        };
        let mut b = f.builder();
        b.arg(&x).arg(&route).arg(&gw).arg(&gs).arg(&gz).arg(&act).arg(&hi).arg(&ii).arg(&ki).arg(&si).arg(&ei);
        // SAFETY: x (t, h) bf16, route (t, 2k) f32, the int4 gate_up (e_all, 2I, h / 8) u32 with (e_all, 2I, h / 128) scales and zeros, act (t * s, I) match moe_gate_up_q4's arguments; h and I are multiples of 128 (checked by experts_q4); the grid covers I / 16 blocks by t * s pairs.
        unsafe { b.launch(cfg) }.map_err(launch_err)?;
        let f = dev.get_or_load_custom_func("moe_down_q4", MODULE, ptx()?)?;
        let cfg = LaunchConfig {
            grid_dim: ((h as u32).div_ceil(WARPS / 2), t as u32, 1),
            block_dim: block,
            shared_mem_bytes: 0,
        };
        let mut b = f.builder();
        b.arg(&act)
            .arg(&route)
            .arg(&dw)
            .arg(&ds)
            .arg(&dz)
            .arg(&residual)
            .arg(&out)
            .arg(&hi)
            .arg(&ii)
            .arg(&ki)
            .arg(&si)
            .arg(&ei);
        // SAFETY: act (t * s, I) f32, route, the int4 down (e_all, h, I / 8) u32 with (e_all, h, I / 128) scales and zeros, residual and out (t, h) bf16 match moe_down_q4's arguments; s <= 64 (checked by experts_q4); the grid covers h rows (WARPS / 2 per block) by t tokens.
        unsafe { b.launch(cfg) }.map_err(launch_err)?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((t, h))))
    }
}
