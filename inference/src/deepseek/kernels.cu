// MoE, MLA and prefill kernels (kernels.rs); the shared helpers are in kernels_common.cuh.

__device__ __forceinline__ float dot8(uint4 a, uint4 b) {
    return lo(a.x) * lo(b.x) + hi(a.x) * hi(b.x) + lo(a.y) * lo(b.y) + hi(a.y) * hi(b.y)
         + lo(a.z) * lo(b.z) + hi(a.z) * hi(b.z) + lo(a.w) * lo(b.w) + hi(a.w) * hi(b.w);
}
__device__ __forceinline__ float dot8f(uint4 a, float4 b0, float4 b1) {
    return lo(a.x) * b0.x + hi(a.x) * b0.y + lo(a.y) * b0.z + hi(a.y) * b0.w
         + lo(a.z) * b1.x + hi(a.z) * b1.y + lo(a.w) * b1.z + hi(a.w) * b1.w;
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
    stage_route(route, t, K, S, E, se, sw);
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

// ---- MoE for a decode batch (9..64 tokens): tokens grouped by expert on the device, so each
// expert's weights are read once for all of its tokens. ----

// The expert of pair i = t * KS + k: routed expert route[t][k] for k < K, else shared chunk E + k - K.
__device__ __forceinline__ int slot_expert(const float* route, int i, int K, int KS, int E) {
    const int t = i / KS, k = i % KS;
    return k < K ? (int)route[(size_t)t * 2 * K + k] : E + (k - K);
}

// One warp: per expert, its (token, k) slots in token order: offsets[E + S + 1], slot_token /
// slot_weight per slot, and pair_slot[t * (K + S) + k] = slot of (t, k). Slot k < K of a token is
// its k-th routed expert; k >= K is shared chunk E + (k - K), weight 1, which sees every token (S = 0
// when the caller runs the shared experts as dense GEMMs). Pairs are ranked 32 at a time, lanes
// that hold the same expert found by __match_any_sync, so no thread walks every pair per expert
// (a block that did took 22 us a layer at batch 32, H100).
extern "C" __global__ void moe_group(const float* route, int* offsets, int* slot_token, float* slot_weight,
                                     int* pair_slot, int T, int K, int S, int E) {
    extern __shared__ int cnt[];  // E + S
    const int lane = threadIdx.x, KS = K + S, TK = T * KS, EA = E + S;
    for (int e = lane; e < EA; e += 32) cnt[e] = 0;
    __syncwarp();
    for (int i0 = 0; i0 < TK; i0 += 32) {
        const int i = i0 + lane;
        const int e = i < TK ? slot_expert(route, i, K, KS, E) : -1;
        const unsigned m = __match_any_sync(0xffffffffu, e);
        if (e >= 0 && lane == __ffs(m) - 1) cnt[e] += __popc(m);
        __syncwarp();
    }
    // Exclusive prefix over the experts, a run of ceil(E / 32) per lane.
    const int per = (EA + 31) / 32, lo = min(EA, lane * per), hi = min(EA, lo + per);
    int sum = 0;
    for (int e = lo; e < hi; e++) sum += cnt[e];
    int incl = sum;
    for (int o = 1; o < 32; o <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += v;
    }
    int at = incl - sum;
    for (int e = lo; e < hi; e++) { const int c = cnt[e]; cnt[e] = at; offsets[e] = at; at += c; }
    if (lane == 31) offsets[EA] = incl;
    __syncwarp();
    for (int i0 = 0; i0 < TK; i0 += 32) {
        const int i = i0 + lane;
        const int e = i < TK ? slot_expert(route, i, K, KS, E) : -1;
        const unsigned m = __match_any_sync(0xffffffffu, e);
        if (e >= 0) {
            const int o = cnt[e] + __popc(m & ((1u << lane) - 1u));
            const int t = i / KS, k = i % KS;
            slot_token[o] = t;
            slot_weight[o] = k < K ? route[(size_t)t * 2 * K + K + k] : 1.f;
            pair_slot[i] = o;
        }
        __syncwarp();
        if (e >= 0 && lane == __ffs(m) - 1) cnt[e] += __popc(m);
        __syncwarp();
    }
}

// grid (ceil(I / (8 * warps)), E): act[slot][j] = silu(gate_e[j] . x_t) * (up_e[j] . x_t). A warp
// takes 8 rows j: tile rows 0-7 are their gate rows, 8-15 their up rows, so a lane ends with both
// halves of its outputs. Needs H % 32 == 0.
extern "C" __global__ void moe_gate_up_mma(const bf16_t* x, const int* offsets, const int* slot_token, const bf16_t* w,
                                           float* act, int H, int I) {
    const int e = blockIdx.y, beg = offsets[e], end = offsets[e + 1];
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const int j0 = 8 * (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5));
    if (beg == end || j0 >= I) return;
    const int j = min(j0 + g, I - 1);
    const uint4* gr = (const uint4*)(w + ((size_t)e * 2 * I + j) * H) + q;
    const uint4* ur = (const uint4*)(w + ((size_t)e * 2 * I + I + j) * H) + q;
    const int steps = H / 32;
    for (int s0 = beg; s0 < end; s0 += 8 * MNT) {
        float c[MNT][4];
        const uint4* xr[MNT];
#pragma unroll
        for (int n = 0; n < MNT; n++) {
            c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0.f;
            xr[n] = (const uint4*)(x + (size_t)slot_token[min(s0 + 8 * n + g, end - 1)] * H) + q;
        }
        for (int k = 0; k < steps; k += MU) {
            const int nu = min(MU, steps - k);
            uint4 a[MU], b[MU];
#pragma unroll
            for (int u = 0; u < MU; u++)
                if (u < nu) { a[u] = ldw(gr + 4 * (k + u)); b[u] = ldw(ur + 4 * (k + u)); }
#pragma unroll
            for (int n = 0; n < MNT; n++)
                if (s0 + 8 * n < end)
#pragma unroll
                    for (int u = 0; u < MU; u++)
                        if (u < nu) mma_k32(c[n], a[u], b[u], xr[n][4 * (k + u)]);
        }
        store_swiglu(act, c, s0, end, j0, I);
    }
}

// grid (ceil(H / (16 * warps)), E): y[slot][r] = down_e[r] . act[slot], a warp taking 16 rows r;
// the activations are rounded to bf16 as they are loaded. Needs I % 32 == 0.
extern "C" __global__ void moe_down_mma(const float* act, const int* offsets, const bf16_t* w, float* y, int H, int I) {
    const int e = blockIdx.y, beg = offsets[e], end = offsets[e + 1];
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const int r0 = 16 * (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5));
    if (beg == end || r0 >= H) return;
    const uint4* lo = (const uint4*)(w + ((size_t)e * H + min(r0 + g, H - 1)) * I) + q;
    const uint4* hi = (const uint4*)(w + ((size_t)e * H + min(r0 + g + 8, H - 1)) * I) + q;
    const int steps = I / 32;
    for (int s0 = beg; s0 < end; s0 += 8 * MNT) {
        float c[MNT][4];
        const float4* ar[MNT];
#pragma unroll
        for (int n = 0; n < MNT; n++) {
            c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0.f;
            ar[n] = (const float4*)(act + (size_t)min(s0 + 8 * n + g, end - 1) * I) + 2 * q;
        }
        for (int k = 0; k < steps; k += MU) {
            const int nu = min(MU, steps - k);
            uint4 a[MU], b[MU];
#pragma unroll
            for (int u = 0; u < MU; u++)
                if (u < nu) { a[u] = ldw(lo + 4 * (k + u)); b[u] = ldw(hi + 4 * (k + u)); }
#pragma unroll
            for (int n = 0; n < MNT; n++)
                if (s0 + 8 * n < end)
#pragma unroll
                    for (int u = 0; u < MU; u++)
                        if (u < nu) {
                            const float4 p = ar[n][8 * (k + u)], r = ar[n][8 * (k + u) + 1];
                            const uint4 xb = make_uint4(bf16x2(p.x, p.y), bf16x2(p.z, p.w), bf16x2(r.x, r.y), bf16x2(r.z, r.w));
                            mma_k32(c[n], a[u], b[u], xb);
                        }
        }
        store_tile(y, c, s0, end, r0, H);
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

// grid (n): sequence b's new latent (kv row b, rows KVS apart) goes to pool row base_b + pos_b.
extern "C" __global__ void mla_latent_write(const bf16_t* kv, const bf16_t* w, const bf16_t* cos_t,
                                                  const bf16_t* sin_t, const unsigned int* meta,
                                                  bf16_t* pool, int R, int P, float eps, int n, int KVS) {
    const int b = blockIdx.x, pos = (int)meta[b], base = (int)meta[n + b];
    latent_write(kv + (size_t)b * KVS, w, cos_t, sin_t, pos, pool + ((size_t)base + pos) * (R + P), R, P, eps);
}

// Split attention (flash-decoding) on tensor cores: block (g, b, s) takes heads 16g .. 16g + 15
// of sequence b over the s-th of S slices of its rows 0 ..= pos (slices rounded to ATT_TILE rows),
// so each cache row is read once for 16 heads and a short batch still fills the GPU. The 16 heads
// share the latent, so a tile of rows is a (16 x 576) . (576 x rows) product for the scores and a
// (16 x rows) . (rows x 512) one for the output, both mma.sync m16n8k16 (bf16 in, f32 sums) fed by
// ldmatrix from shared memory (a CUDA-core version, FMAs and warp shuffles, took 113 instead of
// 33 us a layer at 32 x 1,024, H100). A tile is MT = 16 rows: warp w computes the scores of rows
// 8(w & 1) .. over a quarter of the 576 dims (partial sums added in shared memory), all 256
// threads take the online softmax (one per head and row), then warp w multiplies the tile's
// probabilities into output dims 64w .. 64w + 63. Tiles are double-buffered with cp.async (the
// next one's copy runs under this one's math; copying each tile only after the last was used
// left the loads exposed: 52 us a layer at 32 x 1,024 on an H100). Each block writes, per head,
// its running max m, sum l and unnormalised 512-wide output to part[((h * n + b) * S + s) * 514
// ..]; mla_decode_combine merges. q (n, H * (N + 64)) raw, rows QS apart; q_lat (H, n, 512).
#define ATT_TILE 32
#define ATT_HEADS 16
#define MT 16
#define MS 584  // row stride in shared memory (576 + 8: ldmatrix rows fall in different banks)
__device__ __forceinline__ unsigned smem_addr(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void ldsm_x4(unsigned* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x2(unsigned* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_t(unsigned* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}
// Copies rows t .. t + MT of a sequence's cache rows (16 bytes a thread at a time, cp.async, one
// commit group) into a tile; rows past hi_row read as zeros (a zero-byte source fills them), so
// no stale value meets a zero probability.
__device__ __forceinline__ void attn_tile_async(bf16_t* dst, const uint4* rows_base, int t, int hi_row) {
    const int D16 = 576 / 8, nr = min(MT, hi_row - t);
    for (int i = threadIdx.x; i < MT * D16; i += blockDim.x) {
        const int r = i / D16, c = i % D16;
        const uint4* src = rows_base + (size_t)(t + min(r, nr - 1)) * D16 + c;
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                     :: "r"(smem_addr(dst + r * MS + c * 8)), "l"(src), "r"(r < nr ? 16 : 0));
    }
    asm volatile("cp.async.commit_group;\n" ::);
}
extern "C" __global__ void __launch_bounds__(256) mla_decode_attn(
    const bf16_t* q, const bf16_t* q_lat, const bf16_t* cos_t, const bf16_t* sin_t, const unsigned int* meta,
    const bf16_t* pool, float* part, int H, int N, float scale, int n, int QS) {
    const int R = 512, P = 64, D = 576;
    const int b = blockIdx.y, s = blockIdx.z, S = gridDim.z;
    const int pos = (int)meta[b], base = (int)meta[n + b];
    const int rows = pos + 1;
    const int chunk = ((rows + S - 1) / S + ATT_TILE - 1) / ATT_TILE * ATT_TILE;
    const int lo_row = s * chunk, hi_row = min(rows, lo_row + chunk);
    // Two tiles of rows, double-buffered: the next tile's copy is in flight while this one is
    // multiplied. tiles[0] holds the 16 queries first (they then live in registers), while the
    // first tile of rows goes to tiles[1].
    __shared__ __align__(16) bf16_t tiles[2][MT * MS];
    bf16_t* sq = tiles[0];
    __shared__ __align__(16) bf16_t sp[ATT_HEADS * 24];
    __shared__ float ss[4][ATT_HEADS][MT];
    __shared__ float sm[ATT_HEADS], sl[ATT_HEADS], scorr[ATT_HEADS];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, qd = lane & 3;
    const int h0 = blockIdx.x * ATT_HEADS;
    const uint4* rows_base = (const uint4*)(pool + ((size_t)base) * D);
    if (lo_row < hi_row) attn_tile_async(tiles[1], rows_base, lo_row, hi_row);
    // The block's 16 absorbed queries: latent part, then the rope part rotated at pos.
    for (int i = tid; i < ATT_HEADS * (R / 8); i += blockDim.x) {
        const int hh = i / (R / 8), c = i % (R / 8), h = h0 + hh;
        const uint4 v = h < H ? ((const uint4*)(q_lat + ((size_t)h * n + b) * R))[c] : make_uint4(0, 0, 0, 0);
        *(uint4*)(sq + hh * MS + c * 8) = v;
    }
    for (int i = tid; i < ATT_HEADS * (P / 2); i += blockDim.x) {
        const int hh = i / (P / 2), pr = i % (P / 2), h = h0 + hh;
        float r0 = 0.f, r1 = 0.f;
        if (h < H) {
            const bf16_t* qpe = q + (size_t)b * QS + (size_t)H * N + h * P;
            const float c = bf2f(cos_t[(size_t)pos * (P / 2) + pr]), sn = bf2f(sin_t[(size_t)pos * (P / 2) + pr]);
            const float x0 = bf2f(qpe[2 * pr]), x1 = bf2f(qpe[2 * pr + 1]);
            r0 = x0 * c - x1 * sn;
            r1 = x0 * sn + x1 * c;
        }
        sq[hh * MS + R + 2 * pr] = f2bf(r0);
        sq[hh * MS + R + 2 * pr + 1] = f2bf(r1);
    }
    if (tid < ATT_HEADS) { sm[tid] = -1e30f; sl[tid] = 0.f; }
    __syncthreads();
    // This warp's score operands: rows nt * 8 .. of a tile, dims kg * 144 .. (9 k16 steps).
    const int nt = warp & 1, kg = warp >> 1;
    unsigned qa[9][4];
#pragma unroll
    for (int k = 0; k < 9; k++) ldsm_x4(qa[k], sq + (lane & 15) * MS + kg * 144 + k * 16 + (lane >> 4) * 8);
    float acc[8][4];
#pragma unroll
    for (int j = 0; j < 8; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
    __syncthreads();
    int cur = 1;
    for (int t = lo_row; t < hi_row; t += MT, cur ^= 1) {
        const int nr = min(MT, hi_row - t);
        const bf16_t* skv = tiles[cur];
        if (t + MT < hi_row) {
            attn_tile_async(tiles[cur ^ 1], rows_base, t + MT, hi_row);
            asm volatile("cp.async.wait_group 1;\n" ::);
        } else {
            asm volatile("cp.async.wait_group 0;\n" ::);
        }
        __syncthreads();
        {
            float c4[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int k = 0; k < 9; k++) {
                unsigned kb[2];
                ldsm_x2(kb, skv + (nt * 8 + (lane & 7)) * MS + kg * 144 + k * 16 + ((lane >> 3) & 1) * 8);
                mma16816(c4, qa[k][0], qa[k][1], qa[k][2], qa[k][3], kb[0], kb[1]);
            }
            ss[kg][g][nt * 8 + 2 * qd] = c4[0];
            ss[kg][g][nt * 8 + 2 * qd + 1] = c4[1];
            ss[kg][g + 8][nt * 8 + 2 * qd] = c4[2];
            ss[kg][g + 8][nt * 8 + 2 * qd + 1] = c4[3];
        }
        __syncthreads();
        {
            // One thread per (head, row): lanes 0-15 of a warp are one head, 16-31 the next.
            const int hh = tid >> 4, r = tid & 15;
            const float x = r < nr ? (ss[0][hh][r] + ss[1][hh][r] + ss[2][hh][r] + ss[3][hh][r]) * scale : -1e30f;
            float tm = x;
            for (int o = 8; o > 0; o >>= 1) tm = fmaxf(tm, __shfl_xor_sync(0xffffffffu, tm, o));
            const float mo = sm[hh], mn = fmaxf(mo, tm);
            const float p = r < nr ? __expf(x - mn) : 0.f;
            float ps = p;
            for (int o = 8; o > 0; o >>= 1) ps += __shfl_xor_sync(0xffffffffu, ps, o);
            sp[hh * 24 + r] = f2bf(p);
            if (r == 0) {
                const float corr = __expf(mo - mn);
                sm[hh] = mn;
                sl[hh] = sl[hh] * corr + ps;
                scorr[hh] = corr;
            }
        }
        __syncthreads();
        {
            const float c0 = scorr[g], c1 = scorr[g + 8];
            unsigned pa[4];
            ldsm_x4(pa, sp + (lane & 15) * 24 + (lane >> 4) * 8);
#pragma unroll
            for (int j = 0; j < 8; j += 2) {
                acc[j][0] *= c0; acc[j][1] *= c0; acc[j][2] *= c1; acc[j][3] *= c1;
                acc[j + 1][0] *= c0; acc[j + 1][1] *= c0; acc[j + 1][2] *= c1; acc[j + 1][3] *= c1;
                unsigned vb[4];
                ldsm_x4_t(vb, skv + (lane & 15) * MS + warp * 64 + j * 8 + (lane >> 4) * 8);
                mma16816(acc[j], pa[0], pa[1], pa[2], pa[3], vb[0], vb[1]);
                mma16816(acc[j + 1], pa[0], pa[1], pa[2], pa[3], vb[2], vb[3]);
            }
        }
        __syncthreads();
    }
    // Partials: acc[j] = heads (g, g + 8) x dims 64w + 8j + 2qd, + 1.
#pragma unroll
    for (int hk = 0; hk < 2; hk++) {
        const int hh = g + 8 * hk, h = h0 + hh;
        if (h >= H) continue;
        float* o = part + (((size_t)h * n + b) * S + s) * (R + 2);
        if (warp == 0 && qd == 0) { o[0] = sm[hh]; o[1] = sl[hh]; }
#pragma unroll
        for (int j = 0; j < 8; j++) {
            o[2 + warp * 64 + j * 8 + 2 * qd] = acc[j][2 * hk];
            o[2 + warp * 64 + j * 8 + 2 * qd + 1] = acc[j][2 * hk + 1];
        }
    }
}

// grid (H, n), 128 threads: out (H, n, 512) = the S slices' partial outputs of (h, b), merged.
extern "C" __global__ void mla_decode_combine(const float* part, bf16_t* out, int n, int S) {
    const int h = blockIdx.x, b = blockIdx.y, R = 512;
    const float* p = part + ((size_t)h * n + b) * S * (R + 2);
    float M = -1e30f;
    for (int s = 0; s < S; s++) M = fmaxf(M, p[(size_t)s * (R + 2)]);
    float L = 0.f;
    for (int s = 0; s < S; s++) L += p[(size_t)s * (R + 2) + 1] * __expf(p[(size_t)s * (R + 2)] - M);
    for (int i = threadIdx.x; i < R; i += blockDim.x) {
        float o = 0.f;
        for (int s = 0; s < S; s++) o += p[(size_t)s * (R + 2) + 2 + i] * __expf(p[(size_t)s * (R + 2)] - M);
        out[((size_t)h * n + b) * R + i] = f2bf(o / L);
    }
}

// ---- Prefill (many tokens): the routed experts as per-expert cuBLAS GEMMs over tokens sorted by
// expert; these kernels gather the sorted rows, apply the SwiGLU and combine the weighted outputs. ----

// grid (rows, ceil(H8 / 128)): xs[r] = x[row_token[r]], or zeros for a padding row (token -1),
// in 16-byte words (H8 = H / 8). Rows on grid x: more than 65,535 of them in a long prompt.
extern "C" __global__ void moe_gather_rows(const uint4* x, const int* row_token, uint4* xs, int H8) {
    const int r = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= H8) return;
    const int tok = row_token[r];
    xs[(size_t)r * H8 + c] = tok < 0 ? make_uint4(0u, 0u, 0u, 0u) : x[(size_t)tok * H8 + c];
}

// grid (rows, ceil(I / 256)): act[s][j] = silu(gu[s][j]) * gu[s][I + j], in f32, stored bf16.
extern "C" __global__ void moe_silu_mul(const bf16_t* gu, bf16_t* act, int I) {
    const int s = blockIdx.x, j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= I) return;
    const float g = bf2f(gu[(size_t)s * 2 * I + j]), u = bf2f(gu[(size_t)s * 2 * I + I + j]);
    act[(size_t)s * I + j] = f2bf(g / (1.f + __expf(-g)) * u);
}

// grid (T, ceil(H / 256)): out[t][r] = residual[t][r] + sum_k weight(slot) * y[slot][r] (y bf16), k in order.
extern "C" __global__ void moe_combine_bf16(const bf16_t* y, const int* pair_slot, const float* slot_weight,
                                            const bf16_t* residual, bf16_t* out, int H, int K) {
    const int t = blockIdx.x, r = blockIdx.y * blockDim.x + threadIdx.x;
    if (r >= H) return;
    float acc = 0.f;
    for (int k = 0; k < K; k++) {
        const int slot = pair_slot[t * K + k];
        acc += slot_weight[slot] * bf2f(y[(size_t)slot * H + r]);
    }
    out[(size_t)t * H + r] = f2bf(acc + bf2f(residual[(size_t)t * H + r]));
}

// ---- Prefill attention: causal softmax over already-scaled scores, the mask applied in the
// kernel (no mask tensor, one read and one write of the scores). ----

__device__ __forceinline__ float block_reduce(float v, float* sh, bool is_max) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) {
        const float other = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, other) : v + other;
    }
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = sh[0];
    for (int i = 1; i < nw; i++) v = is_max ? fmaxf(v, sh[i]) : v + sh[i];
    return v;
}

// grid (rows): scores (rows, L) bf16, row r is token r % n of some head; token i sees columns
// 0 ..= prefix + i. p[r][j] = softmax over the visible columns, 0 beyond.
extern "C" __global__ void causal_softmax(const bf16_t* scores, bf16_t* p, int n, int prefix, int L) {
    __shared__ float sh[32];
    const int r = blockIdx.x;
    const int visible = min(L, prefix + (r % n) + 1);
    const bf16_t* s = scores + (size_t)r * L;
    bf16_t* o = p + (size_t)r * L;
    float m = -3.0e38f;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) m = fmaxf(m, bf2f(s[j]));
    m = block_reduce(m, sh, true);
    float sum = 0.f;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) sum += __expf(bf2f(s[j]) - m);
    sum = block_reduce(sum, sh, false);
    const float inv = 1.f / sum;
    for (int j = threadIdx.x; j < L; j += blockDim.x) o[j] = j < visible ? f2bf(__expf(bf2f(s[j]) - m) * inv) : (bf16_t)0;
}
