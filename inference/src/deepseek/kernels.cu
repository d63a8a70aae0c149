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

// An expert weight chunk: streamed once a step, so it is loaded past L1 (no allocate), leaving
// L1 to the token rows every warp of the block re-reads (H100, batch 32: 17.7 instead of 18.9 ms
// a step). -DWNC=0 turns the hint off.
#ifndef WNC
#define WNC 1
#endif
__device__ __forceinline__ uint4 ldw(const uint4* p) {
#if WNC
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
#else
    return *p;
#endif
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
            const uint4 wg0 = ldw(g0 + c), wu0 = ldw(u0 + c), wg1 = ldw(g1 + c), wu1 = ldw(u1 + c);
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
            for (int d = 0; d < DR; d++) ww[d] = ldw(wr[d] + c);
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

// Split attention (flash-decoding): block (g, b, s) takes heads 16g .. 16g + 15 of sequence b over
// the s-th of S equal slices of its rows 0 ..= pos, so each cache row is read once for 16 heads
// (not once per head) and a short batch still fills the GPU. Rows are staged ATT_TILE at a time in
// shared memory; warp w owns two heads. Each block writes, per head, its running max m, sum l and
// unnormalised 512-wide output to part[((h * n + b) * S + s) * 514 ..]; mla_decode_combine merges.
// q (n, H * (N + 64)) raw, q_lat (H, n, 512).
#define ATT_TILE 32
#define ATT_HEADS 16
extern "C" __global__ void __launch_bounds__(256) mla_decode_attn(
    const bf16_t* q, const bf16_t* q_lat, const bf16_t* cos_t, const bf16_t* sin_t, const unsigned int* meta,
    const bf16_t* pool, float* part, int H, int N, float scale, int n) {
    const int R = 512, P = 64, D = 576, D16 = D / 8;
    const int b = blockIdx.y, s = blockIdx.z, S = gridDim.z;
    const int pos = (int)meta[b], base = (int)meta[n + b];
    const int rows = pos + 1;
    const int chunk = ((rows + S - 1) / S + ATT_TILE - 1) / ATT_TILE * ATT_TILE;
    const int lo_row = s * chunk, hi_row = min(rows, lo_row + chunk);
    __shared__ uint4 tile[ATT_TILE * D16];
    __shared__ float sc[ATT_HEADS][ATT_TILE];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    // This lane's part of each of its two heads' query: dims lane*8.. and (lane+32)*8.. of the
    // latent, and rope dims lane*8.. (lanes 0-7), rotated at pos.
    float qv[2][24];
    float m[2], l[2], acc[2][16];
    bool valid[2];
    for (int k = 0; k < 2; k++) {
        const int h = blockIdx.x * ATT_HEADS + 2 * warp + k;
        valid[k] = h < H;
        m[k] = -1e30f; l[k] = 0.f;
        for (int i = 0; i < 16; i++) acc[k][i] = 0.f;
        for (int i = 0; i < 24; i++) qv[k][i] = 0.f;
        if (!valid[k]) continue;
        const bf16_t* ql = q_lat + ((size_t)h * n + b) * R;
        for (int i = 0; i < 8; i++) { qv[k][i] = bf2f(ql[lane * 8 + i]); qv[k][8 + i] = bf2f(ql[(lane + 32) * 8 + i]); }
        if (lane < 8) {
            const bf16_t* qpe = q + (size_t)b * H * (N + P) + (size_t)H * N + h * P;
            for (int i = 0; i < 4; i++) {
                const int pr = lane * 4 + i;
                const float c = bf2f(cos_t[(size_t)pos * (P / 2) + pr]), sn = bf2f(sin_t[(size_t)pos * (P / 2) + pr]);
                const float x0 = bf2f(qpe[2 * pr]), x1 = bf2f(qpe[2 * pr + 1]);
                qv[k][16 + 2 * i] = x0 * c - x1 * sn;
                qv[k][16 + 2 * i + 1] = x0 * sn + x1 * c;
            }
        }
    }
    const uint4* rows_base = (const uint4*)(pool + ((size_t)base) * D);
    for (int t = lo_row; t < hi_row; t += ATT_TILE) {
        const int nr = min(ATT_TILE, hi_row - t);
        for (int i = threadIdx.x; i < nr * D16; i += blockDim.x) tile[i] = rows_base[(size_t)t * D16 + i];
        __syncthreads();
        // Scores of the tile's rows for this warp's two heads.
#pragma unroll 4
        for (int r = 0; r < nr; r++) {
            const uint4 a = tile[r * D16 + lane], c = tile[r * D16 + lane + 32];
            const uint4 e = lane < 8 ? tile[r * D16 + lane + 64] : make_uint4(0, 0, 0, 0);
            float s0 = 0.f, s1 = 0.f;
            const unsigned int av[4] = {a.x, a.y, a.z, a.w}, cv[4] = {c.x, c.y, c.z, c.w}, ev[4] = {e.x, e.y, e.z, e.w};
            for (int i = 0; i < 4; i++) {
                s0 += lo(av[i]) * qv[0][2 * i] + hi(av[i]) * qv[0][2 * i + 1] + lo(cv[i]) * qv[0][8 + 2 * i]
                    + hi(cv[i]) * qv[0][9 + 2 * i] + lo(ev[i]) * qv[0][16 + 2 * i] + hi(ev[i]) * qv[0][17 + 2 * i];
                s1 += lo(av[i]) * qv[1][2 * i] + hi(av[i]) * qv[1][2 * i + 1] + lo(cv[i]) * qv[1][8 + 2 * i]
                    + hi(cv[i]) * qv[1][9 + 2 * i] + lo(ev[i]) * qv[1][16 + 2 * i] + hi(ev[i]) * qv[1][17 + 2 * i];
            }
            s0 = warp_sum(s0) * scale;
            s1 = warp_sum(s1) * scale;
            if (lane == 0) { sc[2 * warp][r] = s0; sc[2 * warp + 1][r] = s1; }
        }
        __syncwarp();
        // Online softmax once per tile: lane r holds row r's score.
        for (int k = 0; k < 2; k++) {
            const float x = lane < nr ? sc[2 * warp + k][lane] : -1e30f;
            float tm = x;
            for (int o = 16; o > 0; o >>= 1) tm = fmaxf(tm, __shfl_xor_sync(0xffffffffu, tm, o));
            const float mn = fmaxf(m[k], tm), corr = __expf(m[k] - mn);
            const float p = lane < nr ? __expf(x - mn) : 0.f;
            l[k] = l[k] * corr + warp_sum(p);
            m[k] = mn;
            for (int i = 0; i < 16; i++) acc[k][i] *= corr;
            __syncwarp();
            sc[2 * warp + k][lane] = p;
        }
        __syncwarp();
        for (int r = 0; r < nr; r++) {
            const uint4 a = tile[r * D16 + lane], c = tile[r * D16 + lane + 32];
            const float p0 = sc[2 * warp][r], p1 = sc[2 * warp + 1][r];
            const unsigned int av[4] = {a.x, a.y, a.z, a.w}, cv[4] = {c.x, c.y, c.z, c.w};
            for (int i = 0; i < 4; i++) {
                acc[0][2 * i] += p0 * lo(av[i]); acc[0][2 * i + 1] += p0 * hi(av[i]);
                acc[0][8 + 2 * i] += p0 * lo(cv[i]); acc[0][9 + 2 * i] += p0 * hi(cv[i]);
                acc[1][2 * i] += p1 * lo(av[i]); acc[1][2 * i + 1] += p1 * hi(av[i]);
                acc[1][8 + 2 * i] += p1 * lo(cv[i]); acc[1][9 + 2 * i] += p1 * hi(cv[i]);
            }
        }
        __syncthreads();
    }
    for (int k = 0; k < 2; k++) {
        if (!valid[k]) continue;
        const int h = blockIdx.x * ATT_HEADS + 2 * warp + k;
        float* o = part + (((size_t)h * n + b) * S + s) * (R + 2);
        if (lane == 0) { o[0] = m[k]; o[1] = l[k]; }
        for (int i = 0; i < 8; i++) { o[2 + lane * 8 + i] = acc[k][i]; o[2 + (lane + 32) * 8 + i] = acc[k][8 + i]; }
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
