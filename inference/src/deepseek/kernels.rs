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

// grid (ceil(E / warps), T): router logits, one warp per expert: logits[t][e] = x_t . gate_e (f32 weights).
extern "C" __global__ void moe_router_logits(const bf16_t* x, const float* gate, float* logits, int E, int H) {
    const int t = blockIdx.y, lane = threadIdx.x & 31;
    const int e = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (e >= E) return;
    const uint4* xv = (const uint4*)(x + (size_t)t * H);
    const float4* g = (const float4*)(gate + (size_t)e * H);
    float acc = 0.f;
#pragma unroll 4
    for (int c = lane; c < H / 8; c += 32) acc += dot8f(xv[c], g[2 * c], g[2 * c + 1]);
    acc = warp_sum(acc);
    if (lane == 0) logits[(size_t)t * E + e] = acc;
}

// One warp per token: softmax and greedy top-k over the logits, staged in shared memory
// (E floats). route[t] = K expert ids (as floats) then K weights. Ties go to the lower id.
extern "C" __global__ void moe_topk(const float* logits, float* route, int E, int K, int norm, float scaling) {
    extern __shared__ float sl[];
    const int t = blockIdx.x, lane = threadIdx.x;
    const float* l = logits + (size_t)t * E;
    float m = -3.0e38f;
    for (int e = lane; e < E; e += 32) { sl[e] = l[e]; m = fmaxf(m, sl[e]); }
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float s = 0.f;
    for (int e = lane; e < E; e += 32) s += __expf(sl[e] - m);
    s = warp_sum(s);
    __syncwarp();
    float* o = route + (size_t)t * 2 * K;
    float wsum = 0.f;
    for (int k = 0; k < K; k++) {
        float bv = __int_as_float(0xff800000); int best = 0x7fffffff;
        for (int e = lane; e < E; e += 32) if (sl[e] > bv) { bv = sl[e]; best = e; }
        for (int off = 16; off > 0; off >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, off);
            const int oi = __shfl_xor_sync(0xffffffffu, best, off);
            if (ov > bv || (ov == bv && oi < best)) { bv = ov; best = oi; }
        }
        const float p = __expf(bv - m) / s;
        wsum += p;
        if (lane == 0) { o[k] = (float)best; o[K + k] = p; sl[best] = __int_as_float(0xff800000); }
        __syncwarp();
    }
    if (lane == 0)
        for (int k = 0; k < K; k++)
            o[K + k] = (norm && K > 1) ? o[K + k] / (wsum + 1e-20f) : o[K + k] * scaling;
}

// grid (ceil(I / (2 * warps)), T * S): act[t * S + k][j] = silu(gate_e[j] . x_t) * (up_e[j] . x_t),
// e the k-th routed expert of token t, or shared chunk k - K for k >= K. Two rows per warp, so
// the grid fits the GPU in one wave (the H100 otherwise runs a second, mostly idle one).
extern "C" __global__ void moe_gate_up(const bf16_t* x, const float* route, const bf16_t* w,
                                       float* act, int H, int I, int K, int S, int E) {
    const int pair = blockIdx.y, t = pair / S, k = pair % S;
    const int e = k < K ? (int)route[(size_t)t * 2 * K + k] : E + (k - K);
    const int lane = threadIdx.x & 31;
    const int j0 = 2 * (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5));
    if (j0 >= I) return;
    const int j1 = j0 + 1 < I ? j0 + 1 : j0;
    const uint4* g0 = (const uint4*)(w + ((size_t)e * 2 * I + j0) * H);
    const uint4* u0 = (const uint4*)(w + ((size_t)e * 2 * I + I + j0) * H);
    const uint4* g1 = (const uint4*)(w + ((size_t)e * 2 * I + j1) * H);
    const uint4* u1 = (const uint4*)(w + ((size_t)e * 2 * I + I + j1) * H);
    const uint4* xv = (const uint4*)(x + (size_t)t * H);
    float ag0 = 0.f, au0 = 0.f, ag1 = 0.f, au1 = 0.f;
#pragma unroll 4
    for (int c = lane; c < H / 8; c += 32) {
        const uint4 xx = xv[c];
        ag0 += dot8(g0[c], xx);
        au0 += dot8(u0[c], xx);
        ag1 += dot8(g1[c], xx);
        au1 += dot8(u1[c], xx);
    }
    ag0 = warp_sum(ag0); au0 = warp_sum(au0); ag1 = warp_sum(ag1); au1 = warp_sum(au1);
    if (lane == 0) {
        act[(size_t)pair * I + j0] = ag0 / (1.f + __expf(-ag0)) * au0;
        if (j1 != j0) act[(size_t)pair * I + j1] = ag1 / (1.f + __expf(-ag1)) * au1;
    }
}

// grid (ceil(H / (warps / 2)), T): out[t][r] = residual[t][r] + sum_k w_k * (down_e[r] . act[t * S + k]).
// Two warps per row, each striding over half of the row's S * I / 8 chunks (more loads in flight).
extern "C" __global__ void moe_down(const float* act, const float* route, const bf16_t* w,
                                    const bf16_t* residual, bf16_t* out, int H, int I, int K, int S, int E) {
    const int t = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int r = blockIdx.x * (blockDim.x >> 6) + (warp >> 1), half = warp & 1;
    __shared__ int se[64];
    __shared__ float sw[64];
    __shared__ float part[32];
    if (threadIdx.x < S && threadIdx.x < 64) {
        const int k = threadIdx.x;
        if (k < K) { se[k] = (int)route[(size_t)t * 2 * K + k]; sw[k] = route[(size_t)t * 2 * K + K + k]; }
        else { se[k] = E + (k - K); sw[k] = 1.f; }
    }
    __syncthreads();
    const int C = I / 8;
    float acc = 0.f;
    if (r < H) {
#pragma unroll 4
        for (int idx = half * 32 + lane; idx < S * C; idx += 64) {
            const int k = idx / C, c = idx - k * C;
            const uint4* wr = (const uint4*)(w + ((size_t)se[k] * H + r) * I);
            const float4* a = (const float4*)(act + ((size_t)t * S + k) * I);
            acc += sw[k] * dot8f(wr[c], a[2 * c], a[2 * c + 1]);
        }
    }
    acc = warp_sum(acc);
    if (lane == 0) part[warp] = acc;
    __syncthreads();
    if (r < H && half == 0 && lane == 0)
        out[(size_t)t * H + r] = f2bf(part[warp] + part[warp + 1] + bf2f(residual[(size_t)t * H + r]));
}

// ---- MLA decode: one token per sequence, each sequence's rows at a base row of a buffer (a
// pool of many sequences, or one sequence's own cache with base 0 under CUDA graphs). ----

__device__ __forceinline__ float block_sum(float v, float* red) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = 0.f;
    for (int w = 0; w < nw; w++) t += red[w];
    __syncthreads();
    return t;
}

// One block: row = [rmsnorm(kv[:R]) * w, rope(kv[R:R+P]) at pos].
__device__ void latent_write(const bf16_t* kv, const bf16_t* w, const bf16_t* cos_t, const bf16_t* sin_t,
                             int pos, bf16_t* row, int R, int P, float eps) {
    __shared__ float red[32];
    const int half = P / 2;
    float ss = 0.f;
    for (int i = threadIdx.x; i < R; i += blockDim.x) { float v = bf2f(kv[i]); ss += v * v; }
    const float r = rsqrtf(block_sum(ss, red) / (float)R + eps);
    for (int i = threadIdx.x; i < R; i += blockDim.x) row[i] = f2bf(bf2f(kv[i]) * r * bf2f(w[i]));
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const float c = bf2f(cos_t[(size_t)pos * half + i]), s = bf2f(sin_t[(size_t)pos * half + i]);
        const float x0 = bf2f(kv[R + 2 * i]), x1 = bf2f(kv[R + 2 * i + 1]);
        row[R + 2 * i] = f2bf(x0 * c - x1 * s);
        row[R + 2 * i + 1] = f2bf(x0 * s + x1 * c);
    }
}

#define ATT_WARPS 8
// One block (ATT_WARPS warps), one head: out = softmax(scale * query . rows) . rows[:, :512] over
// cache rows 0..=pos, the query = [q_lat (512), rope(q_pe) (64)] built from `ql` and `qpe` (raw,
// rotated here). Online softmax per warp (rows strided by warp), then the warps are merged.
__device__ void attend_rows(const bf16_t* ql, const bf16_t* qpe, const bf16_t* cos_t, const bf16_t* sin_t,
                            int pos, const bf16_t* cache, bf16_t* out, float scale) {
    const int R = 512, P = 64, D = 576;
    __shared__ float qf[576];
    __shared__ float wm[ATT_WARPS], wl[ATT_WARPS];
    __shared__ float wacc[ATT_WARPS][512];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int i = threadIdx.x; i < R; i += blockDim.x) qf[i] = bf2f(ql[i]);
    for (int i = threadIdx.x; i < P / 2; i += blockDim.x) {
        const float c = bf2f(cos_t[(size_t)pos * (P / 2) + i]), s = bf2f(sin_t[(size_t)pos * (P / 2) + i]);
        const float x0 = bf2f(qpe[2 * i]), x1 = bf2f(qpe[2 * i + 1]);
        qf[R + 2 * i] = x0 * c - x1 * s;
        qf[R + 2 * i + 1] = x0 * s + x1 * c;
    }
    __syncthreads();
    float m = -1e30f, l = 0.f, acc[16];
    for (int k = 0; k < 16; k++) acc[k] = 0.f;
    const float4* q4 = (const float4*)qf;
    for (int j = warp; j <= pos; j += ATT_WARPS) {
        const uint4* kr = (const uint4*)(cache + (size_t)j * D);
        const uint4 a = kr[lane], b = kr[lane + 32];
        float s = dot8f(a, q4[2 * lane], q4[2 * lane + 1]) + dot8f(b, q4[2 * (lane + 32)], q4[2 * (lane + 32) + 1]);
        if (lane < 8) s += dot8f(kr[lane + 64], q4[2 * (lane + 64)], q4[2 * (lane + 64) + 1]);
        s = warp_sum(s) * scale;
        const float mn = fmaxf(m, s), corr = __expf(m - mn), p = __expf(s - mn);
        l = l * corr + p;
        acc[0] = acc[0] * corr + p * lo(a.x); acc[1] = acc[1] * corr + p * hi(a.x);
        acc[2] = acc[2] * corr + p * lo(a.y); acc[3] = acc[3] * corr + p * hi(a.y);
        acc[4] = acc[4] * corr + p * lo(a.z); acc[5] = acc[5] * corr + p * hi(a.z);
        acc[6] = acc[6] * corr + p * lo(a.w); acc[7] = acc[7] * corr + p * hi(a.w);
        acc[8] = acc[8] * corr + p * lo(b.x); acc[9] = acc[9] * corr + p * hi(b.x);
        acc[10] = acc[10] * corr + p * lo(b.y); acc[11] = acc[11] * corr + p * hi(b.y);
        acc[12] = acc[12] * corr + p * lo(b.z); acc[13] = acc[13] * corr + p * hi(b.z);
        acc[14] = acc[14] * corr + p * lo(b.w); acc[15] = acc[15] * corr + p * hi(b.w);
        m = mn;
    }
    if (lane == 0) { wm[warp] = m; wl[warp] = l; }
    for (int k = 0; k < 8; k++) { wacc[warp][lane * 8 + k] = acc[k]; wacc[warp][(lane + 32) * 8 + k] = acc[8 + k]; }
    __syncthreads();
    float M = -1e30f;
    for (int w = 0; w < ATT_WARPS; w++) M = fmaxf(M, wm[w]);
    float L = 0.f;
    for (int w = 0; w < ATT_WARPS; w++) L += wl[w] * __expf(wm[w] - M);
    for (int i = threadIdx.x; i < R; i += blockDim.x) {
        float o = 0.f;
        for (int w = 0; w < ATT_WARPS; w++) o += wacc[w][i] * __expf(wm[w] - M);
        out[i] = f2bf(o / L);
    }
}

// ---- MoE for a decode batch (9..64 tokens): tokens grouped by expert on the device, so each
// expert's weights are read once for all of its tokens. ----

// One block: per expert (routed e < E, shared chunk E + j), its slots in token order:
// offsets[EA + 1], slot_token / slot_weight per slot, and pair_slot[t * S + k] = slot of (t, k).
// One block: per routed expert, its (token, k) slots in token order: offsets[E + 1], slot_token /
// slot_weight per slot, and pair_slot[t * K + k] = slot of (t, k). (Shared experts see every
// token: the caller runs them as dense GEMMs.)
extern "C" __global__ void moe_group(const float* route, int* offsets, int* slot_token, float* slot_weight,
                                     int* pair_slot, int T, int K, int E) {
    extern __shared__ int sm[];
    int* start = sm;            // E
    int* ids = sm + E;          // T * K expert ids
    for (int i = threadIdx.x; i < T * K; i += blockDim.x) ids[i] = (int)route[(size_t)(i / K) * 2 * K + (i % K)];
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int c = 0;
        for (int i = 0; i < T * K; i++) c += (ids[i] == e);
        start[e] = c;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int acc = 0;
        for (int e = 0; e < E; e++) { const int c = start[e]; start[e] = acc; offsets[e] = acc; acc += c; }
        offsets[E] = acc;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int o = start[e];
        for (int i = 0; i < T * K; i++) {
            if (ids[i] == e) {
                slot_token[o] = i / K; slot_weight[o] = route[(size_t)(i / K) * 2 * K + K + (i % K)]; pair_slot[i] = o; o++;
            }
        }
    }
}

// Tokens per pass of the gate/up kernel: each warp keeps TBG x 4 sums in registers (8 keeps
// two blocks resident per SM).
#ifndef TBG
#define TBG 8
#endif
// Weight chunks each warp loads ahead (memory-level parallelism for the streamed experts).
#ifndef UNR
#define UNR 1
#endif
constexpr int kUnroll = UNR;
// grid (ceil(I / (2 * warps)), E): for every slot of expert e, act[slot][j] = silu(gate_e[j] . x_t) * (up_e[j] . x_t).
// Each warp holds two rows' weight chunks while it walks up to TB of the expert's tokens.
extern "C" __global__ void __launch_bounds__(256, 2) moe_gate_up_grouped(const bf16_t* x, const int* offsets, const int* slot_token,
                                               const bf16_t* w, float* act, int H, int I) {
    const int e = blockIdx.y, beg = offsets[e], end = offsets[e + 1];
    if (beg == end) return;
    const int lane = threadIdx.x & 31;
    const int j0 = 2 * (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5));
    if (j0 >= I) return;
    const int j1 = j0 + 1 < I ? j0 + 1 : j0;
    const uint4* g0 = (const uint4*)(w + ((size_t)e * 2 * I + j0) * H);
    const uint4* u0 = (const uint4*)(w + ((size_t)e * 2 * I + I + j0) * H);
    const uint4* g1 = (const uint4*)(w + ((size_t)e * 2 * I + j1) * H);
    const uint4* u1 = (const uint4*)(w + ((size_t)e * 2 * I + I + j1) * H);
    for (int s0 = beg; s0 < end; s0 += TBG) {
        const int nb = min(TBG, end - s0);
        float ag0[TBG], au0[TBG], ag1[TBG], au1[TBG];
        const uint4* xs[TBG];
#pragma unroll
        for (int b = 0; b < TBG; b++) {
            ag0[b] = au0[b] = ag1[b] = au1[b] = 0.f;
            xs[b] = (const uint4*)(x + (size_t)slot_token[s0 + (b < nb ? b : 0)] * H);
        }
#pragma unroll kUnroll
        for (int c = lane; c < H / 8; c += 32) {
            const uint4 wg0 = g0[c], wu0 = u0[c], wg1 = g1[c], wu1 = u1[c];
#pragma unroll
            for (int b = 0; b < TBG; b++) {
                if (b < nb) {
                    const uint4 xx = xs[b][c];
                    ag0[b] += dot8(wg0, xx); au0[b] += dot8(wu0, xx);
                    ag1[b] += dot8(wg1, xx); au1[b] += dot8(wu1, xx);
                }
            }
        }
#pragma unroll
        for (int b = 0; b < TBG; b++) {
            if (b < nb) {
                const float a = warp_sum(ag0[b]), u = warp_sum(au0[b]);
                const float a1 = warp_sum(ag1[b]), v1 = warp_sum(au1[b]);
                if (lane == 0) {
                    act[(size_t)(s0 + b) * I + j0] = a / (1.f + __expf(-a)) * u;
                    if (j1 != j0) act[(size_t)(s0 + b) * I + j1] = a1 / (1.f + __expf(-a1)) * v1;
                }
            }
        }
    }
}

// Rows per warp in the down kernel (the launch's grid assumes 4), and the most activation
// rows one pass stages.
#define DR 4
#ifndef TBD
#define TBD 8
#endif
// grid (ceil(H / (warps * DR)), E), dynamic shared memory tb * I floats: y[slot][r] =
// down_e[r] . act[slot]. Each pass stages up to tb (<= TBD) of the expert's activation rows in
// shared memory, read once per block (re-reading them per row from L2 was the bottleneck).
extern "C" __global__ void __launch_bounds__(256, 2) moe_down_grouped(const float* act, const int* offsets, const bf16_t* w,
                                                                       float* y, int H, int I, int tb) {
    extern __shared__ float sa[];
    const int e = blockIdx.y, beg = offsets[e], end = offsets[e + 1];
    if (beg == end) return;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int r0 = (blockIdx.x * (blockDim.x >> 5) + warp) * DR;
    const uint4* wr[DR];
#pragma unroll
    for (int d = 0; d < DR; d++) wr[d] = (const uint4*)(w + ((size_t)e * H + min(r0 + d, H - 1)) * I);
    const float4* sa4 = (const float4*)sa;
    for (int s0 = beg; s0 < end; s0 += tb) {
        const int nb = min(tb, end - s0);
        __syncthreads();
        const float4* src = (const float4*)(act + (size_t)s0 * I);
        for (int i = threadIdx.x; i < nb * I / 4; i += blockDim.x) ((float4*)sa)[i] = src[i];
        __syncthreads();
        float acc[DR][TBD];
#pragma unroll
        for (int d = 0; d < DR; d++)
#pragma unroll
            for (int b = 0; b < TBD; b++) acc[d][b] = 0.f;
        for (int c = lane; c < I / 8; c += 32) {
            uint4 ww[DR];
#pragma unroll
            for (int d = 0; d < DR; d++) ww[d] = wr[d][c];
#pragma unroll
            for (int b = 0; b < TBD; b++) {
                if (b < nb) {
                    const float4 a0 = sa4[(b * I) / 4 + 2 * c], a1 = sa4[(b * I) / 4 + 2 * c + 1];
#pragma unroll
                    for (int d = 0; d < DR; d++) acc[d][b] += dot8f(ww[d], a0, a1);
                }
            }
        }
#pragma unroll
        for (int d = 0; d < DR; d++)
#pragma unroll
            for (int b = 0; b < TBD; b++) {
                if (b < nb) {
                    const float v = warp_sum(acc[d][b]);
                    if (lane == 0 && r0 + d < H) y[(size_t)(s0 + b) * H + r0 + d] = v;
                }
            }
    }
}

// grid (ceil(H / 256), T): out[t][r] = residual[t][r] + sum_k weight(slot) * y[slot][r], k in order.
extern "C" __global__ void moe_combine(const float* y, const int* pair_slot, const float* slot_weight,
                                       const bf16_t* residual, bf16_t* out, int H, int K) {
    const int t = blockIdx.y, r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= H) return;
    float acc = 0.f;
    for (int k = 0; k < K; k++) {
        const int slot = pair_slot[t * K + k];
        acc += slot_weight[slot] * y[(size_t)slot * H + r];
    }
    out[(size_t)t * H + r] = f2bf(acc + bf2f(residual[(size_t)t * H + r]));
}

// ---- MLA decode for a batch: meta = [pos_0 .. pos_{n-1}, base_0 .. base_{n-1}], sequence b's rows
// are pool rows base_b .. base_b + pos_b. ----

// grid (n): sequence b's new latent (kv row b) goes to pool row base_b + pos_b.
extern "C" __global__ void mla_latent_write(const bf16_t* kv, const bf16_t* w, const bf16_t* cos_t,
                                                  const bf16_t* sin_t, const unsigned int* meta,
                                                  bf16_t* pool, int R, int P, float eps, int n) {
    const int b = blockIdx.x, pos = (int)meta[b], base = (int)meta[n + b];
    latent_write(kv + (size_t)b * (R + P), w, cos_t, sin_t, pos, pool + ((size_t)base + pos) * (R + P), R, P, eps);
}

// grid (heads, n): head h of sequence b. q (n, H * (N + P)) raw, q_lat (H, n, 512), out (H, n, 512).
extern "C" __global__ void mla_decode_attn(const bf16_t* q, const bf16_t* q_lat, const bf16_t* cos_t,
                                                 const bf16_t* sin_t, const unsigned int* meta,
                                                 const bf16_t* pool, bf16_t* out, int H, int N, float scale, int n) {
    const int h = blockIdx.x, b = blockIdx.y, pos = (int)meta[b], base = (int)meta[n + b];
    const bf16_t* qb = q + (size_t)b * H * (N + 64);
    attend_rows(q_lat + ((size_t)h * n + b) * 512, qb + (size_t)H * N + h * 64, cos_t, sin_t, pos,
                pool + (size_t)base * 576, out + ((size_t)h * n + b) * 512, scale);
}
"#;

/// KB_DEEPSEEK_NVRTC_OPTIONS (e.g. "-DTBG=4 -DUNR=2") overrides the kernels' tile
/// constants, for tuning on a new GPU without a rebuild.
fn nvrtc_options() -> Vec<String> {
    std::env::var("KB_DEEPSEEK_NVRTC_OPTIONS")
        .map(|o| o.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    let r = PTX.get_or_init(|| {
        let options = nvrtc_options();
        let opts = CompileOptions { arch: Some("compute_80"), options, ..Default::default() };
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
        let logits = unsafe { dev.alloc::<f32>(t * e)? };
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
        unsafe { b.launch(cfg) }.map_err(launch_err)?;
        let f = dev.get_or_load_custom_func("moe_topk", MODULE, ptx()?)?;
        let cfg = LaunchConfig { grid_dim: (t as u32, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: (e * 4) as u32 };
        let (k, norm) = (self.k as i32, self.norm as i32);
        let mut b = f.builder();
        b.arg(&logits).arg(&out).arg(&ei).arg(&k).arg(&norm).arg(&self.scaling);
        unsafe { b.launch(cfg) }.map_err(launch_err)?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((t, 2 * self.k))))
    }
}

/// How [`Experts`] reads the expert weights.
enum Pass {
    /// Every (token, expert) pair reads its expert (a few tokens, decode); `shared` chunks
    /// follow the routed experts in the weights and count as extra experts of weight 1.
    PerPair { shared: usize },
    /// Tokens grouped by expert on the device, each routed expert's weights read once for all
    /// its tokens (a decode batch); the first `routed` experts only, shared ones are the caller's.
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
        let out = unsafe { dev.alloc::<bf16>(t * h)? };
        let (ti, hi, ii, ki) = (t as i32, h as i32, inter as i32, self.k as i32);
        let block = (32 * ROWS, 1, 1);
        match self.pass {
            Pass::PerPair { shared } => {
                let s = self.k + shared;
                let (si, ei) = (s as i32, (e_all - shared) as i32);
                let act = unsafe { dev.alloc::<f32>(t * s * inter)? };
                let f = dev.get_or_load_custom_func("moe_gate_up", MODULE, ptx()?)?;
                let cfg = LaunchConfig {
                    grid_dim: ((inter as u32).div_ceil(2 * ROWS), (t * s) as u32, 1),
                    block_dim: block,
                    shared_mem_bytes: 0,
                };
                let mut b = f.builder();
                b.arg(&x).arg(&route).arg(&gate_up).arg(&act).arg(&hi).arg(&ii).arg(&ki).arg(&si).arg(&ei);
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
                unsafe { b.launch(cfg) }.map_err(launch_err)?;
            }
            Pass::Grouped { routed } => {
                let slots = t * self.k;
                let ei = routed as i32;
                let offsets = unsafe { dev.alloc::<i32>(routed + 1)? };
                let slot_token = unsafe { dev.alloc::<i32>(slots)? };
                let slot_weight = unsafe { dev.alloc::<f32>(slots)? };
                let pair_slot = unsafe { dev.alloc::<i32>(slots)? };
                let act = unsafe { dev.alloc::<f32>(slots * inter)? };
                let y = unsafe { dev.alloc::<f32>(slots * h)? };
                let f = dev.get_or_load_custom_func("moe_group", MODULE, ptx()?)?;
                let cfg = LaunchConfig {
                    grid_dim: (1, 1, 1),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: ((routed + slots) * 4) as u32,
                };
                let mut b = f.builder();
                b.arg(&route)
                    .arg(&offsets)
                    .arg(&slot_token)
                    .arg(&slot_weight)
                    .arg(&pair_slot)
                    .arg(&ti)
                    .arg(&ki)
                    .arg(&ei);
                unsafe { b.launch(cfg) }.map_err(launch_err)?;
                let f = dev.get_or_load_custom_func("moe_gate_up_grouped", MODULE, ptx()?)?;
                let cfg = LaunchConfig {
                    grid_dim: ((inter as u32).div_ceil(2 * ROWS), routed as u32, 1),
                    block_dim: block,
                    shared_mem_bytes: 0,
                };
                let mut b = f.builder();
                b.arg(&x).arg(&offsets).arg(&slot_token).arg(&gate_up).arg(&act).arg(&hi).arg(&ii);
                unsafe { b.launch(cfg) }.map_err(launch_err)?;
                // As many activation rows per pass as fit the default 48 KiB of shared memory
                // (and the kernel's TBD = 8 accumulators); DR = 4 output rows per warp.
                let tb = (48 * 1024 / (inter * 4)).clamp(1, 8);
                let tbi = tb as i32;
                let f = dev.get_or_load_custom_func("moe_down_grouped", MODULE, ptx()?)?;
                let cfg = LaunchConfig {
                    grid_dim: ((h as u32).div_ceil(ROWS * 4), routed as u32, 1),
                    block_dim: block,
                    shared_mem_bytes: (tb * inter * 4) as u32,
                };
                let mut b = f.builder();
                b.arg(&act).arg(&offsets).arg(&down).arg(&y).arg(&hi).arg(&ii).arg(&tbi);
                unsafe { b.launch(cfg) }.map_err(launch_err)?;
                let f = dev.get_or_load_custom_func("moe_combine", MODULE, ptx()?)?;
                let cfg = LaunchConfig {
                    grid_dim: ((h as u32).div_ceil(256), t as u32, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                let mut b = f.builder();
                b.arg(&y).arg(&pair_slot).arg(&slot_weight).arg(&residual).arg(&out).arg(&hi).arg(&ki);
                unsafe { b.launch(cfg) }.map_err(launch_err)?;
            }
        }
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((t, h))))
    }
}

fn launch_err(e: impl std::error::Error + Send + Sync + 'static) -> candle_core::Error {
    candle_core::Error::Cuda(Box::new(e))
}

/// Whether the fused path can take this block: CUDA, bf16, 16-byte rows.
/// `slots`: routed top-k plus shared chunks (at most 64).
pub fn supported(x: &Tensor, hidden: usize, inter: usize, n_experts: usize, slots: usize) -> bool {
    x.device().is_cuda()
        && x.dtype() == DType::BF16
        && hidden % 8 == 0
        && inter % 8 == 0
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

fn cuda_of_u32(t: &Tensor) -> Result<(candle_core::StorageRef<'_>, Layout)> {
    let (s, l) = t.storage_and_layout();
    if !matches!(&*s, Storage::Cuda(_)) || !l.is_contiguous() {
        candle_core::bail!("mla kernel: input must be a contiguous CUDA tensor")
    }
    Ok((s, l.clone()))
}

/// residual + the routed experts of x for a decode batch, tokens grouped by expert on the
/// device (`experts`: the routed count; the shared ones are the caller's).
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
    let kv = kv.contiguous()?;
    let n = kv.dim(0)?;
    let (kg, kl) = cuda_of(&kv)?;
    let (wg, wl) = cuda_of(norm_w)?;
    let (cg, cl) = cuda_of(cos)?;
    let (sg, sl) = cuda_of(sin)?;
    let (mg, ml) = cuda_of_u32(meta)?;
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
    let (r, p, e, ni) = (rank as i32, rope as i32, eps as f32, n as i32);
    let mut b = f.builder();
    b.arg(&kv_s).arg(&w_s).arg(&c_s).arg(&s_s).arg(&m_s).arg(&p_s).arg(&r).arg(&p).arg(&e).arg(&ni);
    unsafe { b.launch(cfg) }.map_err(launch_err)?;
    Ok(())
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
    q.contiguous()?.apply_op1_no_bwd(&Attn { q_lat: &q_lat, cos, sin, meta, pool, heads, nope, scale: scale as f32 })
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
        let q_s = q.as_cuda_slice::<bf16>()?.slice(ql.start_offset()..);
        let (lg, ll) = cuda_of(self.q_lat)?;
        let (cg, cl) = cuda_of(self.cos)?;
        let (sg, sl) = cuda_of(self.sin)?;
        let (mg, ml) = cuda_of_u32(self.meta)?;
        let (pg, pl) = cuda_of(self.pool)?;
        let l_s = slice_of!(lg, ll, bf16);
        let c_s = slice_of!(cg, cl, bf16);
        let s_s = slice_of!(sg, sl, bf16);
        let m_s = slice_of!(mg, ml, u32);
        let p_s = slice_of!(pg, pl, bf16);
        let out = unsafe { dev.alloc::<bf16>(self.heads * n * 512)? };
        let f = dev.get_or_load_custom_func("mla_decode_attn", MODULE, ptx()?)?;
        let cfg =
            LaunchConfig { grid_dim: (self.heads as u32, n as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let (h, nn, ni) = (self.heads as i32, self.nope as i32, n as i32);
        let mut b = f.builder();
        b.arg(&q_s)
            .arg(&l_s)
            .arg(&c_s)
            .arg(&s_s)
            .arg(&m_s)
            .arg(&p_s)
            .arg(&out)
            .arg(&h)
            .arg(&nn)
            .arg(&self.scale)
            .arg(&ni);
        unsafe { b.launch(cfg) }.map_err(launch_err)?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((self.heads, n, 512))))
    }
}
