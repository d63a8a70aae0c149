//! Fused CUDA kernels for the MoE block at small batch (decode), compiled once with NVRTC.
//!
//! Why: at batch 1 a step is bound by reading the active weights, and candle's grouped path
//! needs the router's choices on the host (a device sync per layer) plus ~8 launches per
//! expert. Here the expert ids stay on the device: one kernel routes (softmax + top-k), one
//! computes silu(gate) * up for every (token, expert) pair, one computes the weighted down
//! projections, sums them and adds the residual. Shared experts are extra experts of weight 1
//! (their SwiGLU splits exactly into chunks of moe_intermediate_size).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use candle_core::cuda_backend::CudaStorage;
use candle_core::{CustomOp1, DType, Layout, Result, Shape, Storage, Tensor};
use half::bf16;
use std::sync::OnceLock;

const MODULE: &str = "kb_deepseek_moe";
/// Warps per block in the matrix-vector kernels: one output row per warp.
const ROWS: u32 = 8;

const SRC: &str = r#"
typedef unsigned short bf16_t;
__device__ __forceinline__ float bf2f(bf16_t v) { return __uint_as_float(((unsigned int)v) << 16); }
__device__ __forceinline__ bf16_t f2bf(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7f800000u) == 0x7f800000u) return (bf16_t)((u >> 16) | ((u & 0xffffu) ? 0x40u : 0u));
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}
__device__ __forceinline__ float lo(unsigned int w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float hi(unsigned int w) { return __uint_as_float(w & 0xffff0000u); }
__device__ __forceinline__ float dot8(uint4 a, uint4 b) {
    return lo(a.x) * lo(b.x) + hi(a.x) * hi(b.x) + lo(a.y) * lo(b.y) + hi(a.y) * hi(b.y)
         + lo(a.z) * lo(b.z) + hi(a.z) * hi(b.z) + lo(a.w) * lo(b.w) + hi(a.w) * hi(b.w);
}
__device__ __forceinline__ float dot8f(uint4 a, float4 b0, float4 b1) {
    return lo(a.x) * b0.x + hi(a.x) * b0.y + lo(a.y) * b0.z + hi(a.y) * b0.w
         + lo(a.z) * b1.x + hi(a.z) * b1.y + lo(a.w) * b1.z + hi(a.w) * b1.w;
}
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// One block per token: router logits (f32 weights), softmax, greedy top-k.
// route[t] = K expert ids (as floats) then K weights.
extern "C" __global__ void moe_route(const bf16_t* x, const float* gate, float* route,
                                     int E, int H, int K, int norm, float scaling) {
    extern __shared__ float p[];
    const int t = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const bf16_t* xt = x + (size_t)t * H;
    for (int e = warp; e < E; e += nw) {
        const float* g = gate + (size_t)e * H;
        float acc = 0.f;
        for (int i = lane; i < H; i += 32) acc += bf2f(xt[i]) * g[i];
        acc = warp_sum(acc);
        if (lane == 0) p[e] = acc;
    }
    __syncthreads();
    if (threadIdx.x != 0) return;
    float m = -3.0e38f;
    for (int e = 0; e < E; e++) m = fmaxf(m, p[e]);
    float s = 0.f;
    for (int e = 0; e < E; e++) { p[e] = __expf(p[e] - m); s += p[e]; }
    float* o = route + (size_t)t * 2 * K;
    float wsum = 0.f;
    for (int k = 0; k < K; k++) {
        int best = 0; float bv = -1.f;
        for (int e = 0; e < E; e++) if (p[e] > bv) { bv = p[e]; best = e; }
        o[k] = (float)best; o[K + k] = bv / s; wsum += bv / s;
        p[best] = -2.f;
    }
    for (int k = 0; k < K; k++)
        o[K + k] = (norm && K > 1) ? o[K + k] / (wsum + 1e-20f) : o[K + k] * scaling;
}

// grid (ceil(I / warps), T * S): act[t * S + k][j] = silu(gate_e[j] . x_t) * (up_e[j] . x_t),
// e the k-th routed expert of token t, or shared chunk k - K for k >= K.
extern "C" __global__ void moe_gate_up(const bf16_t* x, const float* route, const bf16_t* w,
                                       float* act, int H, int I, int K, int S, int E) {
    const int pair = blockIdx.y, t = pair / S, k = pair % S;
    const int e = k < K ? (int)route[(size_t)t * 2 * K + k] : E + (k - K);
    const int lane = threadIdx.x & 31;
    const int j = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (j >= I) return;
    const uint4* g = (const uint4*)(w + ((size_t)e * 2 * I + j) * H);
    const uint4* u = (const uint4*)(w + ((size_t)e * 2 * I + I + j) * H);
    const uint4* xv = (const uint4*)(x + (size_t)t * H);
    float ag = 0.f, au = 0.f;
    for (int c = lane; c < H / 8; c += 32) {
        const uint4 xx = xv[c];
        ag += dot8(g[c], xx);
        au += dot8(u[c], xx);
    }
    ag = warp_sum(ag);
    au = warp_sum(au);
    if (lane == 0) act[(size_t)pair * I + j] = ag / (1.f + __expf(-ag)) * au;
}

// grid (ceil(H / warps), T): out[t][r] = residual[t][r] + sum_k w_k * (down_e[r] . act[t * S + k]).
extern "C" __global__ void moe_down(const float* act, const float* route, const bf16_t* w,
                                    const bf16_t* residual, bf16_t* out, int H, int I, int K, int S, int E) {
    const int t = blockIdx.y, lane = threadIdx.x & 31;
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= H) return;
    float acc = 0.f;
    for (int k = 0; k < S; k++) {
        int e; float wt;
        if (k < K) { e = (int)route[(size_t)t * 2 * K + k]; wt = route[(size_t)t * 2 * K + K + k]; }
        else { e = E + (k - K); wt = 1.f; }
        const uint4* wr = (const uint4*)(w + ((size_t)e * H + r) * I);
        const float4* a = (const float4*)(act + ((size_t)t * S + k) * I);
        float s = 0.f;
        for (int c = lane; c < I / 8; c += 32) s += dot8f(wr[c], a[2 * c], a[2 * c + 1]);
        acc += wt * s;
    }
    acc = warp_sum(acc);
    if (lane == 0) out[(size_t)t * H + r] = f2bf(acc + bf2f(residual[(size_t)t * H + r]));
}
"#;

fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    let r = PTX.get_or_init(|| {
        let opts = CompileOptions { arch: Some("compute_80"), ..Default::default() };
        compile_ptx_with_opts(SRC, opts).map(|p| p.to_src()).map_err(|e| format!("nvrtc: {e:?}"))
    });
    r.as_deref().map_err(|e| candle_core::Error::Msg(e.clone()))
}

fn cuda_of(t: &Tensor) -> Result<(candle_core::StorageRef<'_>, Layout)> {
    let (s, l) = t.storage_and_layout();
    if !matches!(&*s, Storage::Cuda(_)) {
        candle_core::bail!("moe kernel: tensor not on CUDA")
    }
    if !l.is_contiguous() || l.start_offset() % 8 != 0 {
        candle_core::bail!("moe kernel: tensor must be contiguous and 16-byte aligned")
    }
    Ok((s, l.clone()))
}

macro_rules! slice_of {
    ($guard:expr, $layout:expr, $t:ty) => {
        match &*$guard {
            Storage::Cuda(c) => c.as_cuda_slice::<$t>()?.slice($layout.start_offset()..),
            _ => unreachable!("checked by cuda_of"),
        }
    };
}


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
        let out = unsafe { dev.alloc::<f32>(t * 2 * self.k)? };
        let f = dev.get_or_load_custom_func("moe_route", MODULE, ptx()?)?;
        let cfg = LaunchConfig { grid_dim: (t as u32, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: (e * 4) as u32 };
        let (e, h, k, norm) = (e as i32, h as i32, self.k as i32, self.norm as i32);
        let mut b = f.builder();
        b.arg(&x).arg(&gate).arg(&out).arg(&e).arg(&h).arg(&k).arg(&norm).arg(&self.scaling);
        unsafe { b.launch(cfg) }.map_err(|e| candle_core::Error::Cuda(Box::new(e)))?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((t, 2 * self.k))))
    }
}

/// Experts: residual + sum over the routed and shared experts, from x (T, H) bf16.
struct Experts<'a> {
    route: &'a Tensor,
    gate_up: &'a Tensor,
    down: &'a Tensor,
    residual: &'a Tensor,
    k: usize,
    shared: usize,
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
        let s = self.k + self.shared;
        let e_routed = e_all - self.shared;
        let (rg, rl) = cuda_of(self.route)?;
        let (gg, gl) = cuda_of(self.gate_up)?;
        let (dg, dl) = cuda_of(self.down)?;
        let (resg, resl) = cuda_of(self.residual)?;
        let x = x.as_cuda_slice::<bf16>()?.slice(xl.start_offset()..);
        let route = slice_of!(rg, rl, f32);
        let gate_up = slice_of!(gg, gl, bf16);
        let down = slice_of!(dg, dl, bf16);
        let residual = slice_of!(resg, resl, bf16);
        let act = unsafe { dev.alloc::<f32>(t * s * inter)? };
        let out = unsafe { dev.alloc::<bf16>(t * h)? };
        let (hi, ii, ki, si, ei) = (h as i32, inter as i32, self.k as i32, s as i32, e_routed as i32);
        let block = (32 * ROWS, 1, 1);
        let f = dev.get_or_load_custom_func("moe_gate_up", MODULE, ptx()?)?;
        let cfg = LaunchConfig {
            grid_dim: ((inter as u32).div_ceil(ROWS), (t * s) as u32, 1),
            block_dim: block,
            shared_mem_bytes: 0,
        };
        let mut b = f.builder();
        b.arg(&x).arg(&route).arg(&gate_up).arg(&act).arg(&hi).arg(&ii).arg(&ki).arg(&si).arg(&ei);
        unsafe { b.launch(cfg) }.map_err(|e| candle_core::Error::Cuda(Box::new(e)))?;
        let f = dev.get_or_load_custom_func("moe_down", MODULE, ptx()?)?;
        let cfg = LaunchConfig { grid_dim: ((h as u32).div_ceil(ROWS), t as u32, 1), block_dim: block, shared_mem_bytes: 0 };
        let mut b = f.builder();
        b.arg(&act).arg(&route).arg(&down).arg(&residual).arg(&out).arg(&hi).arg(&ii).arg(&ki).arg(&si).arg(&ei);
        unsafe { b.launch(cfg) }.map_err(|e| candle_core::Error::Cuda(Box::new(e)))?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((t, h))))
    }
}

/// Whether the fused path can take this block: CUDA, bf16, 16-byte rows.
pub fn supported(x: &Tensor, hidden: usize, inter: usize, n_experts: usize) -> bool {
    x.device().is_cuda() && x.dtype() == DType::BF16 && hidden % 8 == 0 && inter % 8 == 0 && n_experts <= 4096
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
    x.contiguous()?.apply_op1_no_bwd(&Experts { route, gate_up, down, residual: &residual, k, shared })
}
