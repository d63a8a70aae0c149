// W4A16 kernels: int4 weights (kb's layout, see quant.rs: codes packed 8 per u32 along the
// input, column 8c + j in bits 4j..4j + 4; f16 scales and u8 zero points per 128 columns),
// bf16 activations, f32 accumulation. The shared helpers are in kernels_common.cuh.

typedef unsigned short f16_t;
#define Q4_GROUP 128

__device__ __forceinline__ float h2f(f16_t h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// Code j of a word as a float with no int-to-float conversion: 2^23 + q is 0x4B000000 | q, so
// subtracting zoff = 2^23 + zero leaves q - zero exactly.
#define Q4(w, j, zoff) (__uint_as_float(0x4B000000u | (((w) >> (4 * (j))) & 0xFu)) - (zoff))

// sum_j (q_j - zero) * x_j over the 8 codes of w and 8 bf16 activations.
__device__ __forceinline__ float dot8_q4(unsigned int w, uint4 x, float zoff) {
    float a = Q4(w, 0, zoff) * lo(x.x);
    a = fmaf(Q4(w, 1, zoff), hi(x.x), a);
    a = fmaf(Q4(w, 2, zoff), lo(x.y), a);
    a = fmaf(Q4(w, 3, zoff), hi(x.y), a);
    a = fmaf(Q4(w, 4, zoff), lo(x.z), a);
    a = fmaf(Q4(w, 5, zoff), hi(x.z), a);
    a = fmaf(Q4(w, 6, zoff), lo(x.w), a);
    a = fmaf(Q4(w, 7, zoff), hi(x.w), a);
    return a;
}
// The same against 8 f32 activations.
__device__ __forceinline__ float dot8_q4f(unsigned int w, float4 a0, float4 a1, float zoff) {
    float a = Q4(w, 0, zoff) * a0.x;
    a = fmaf(Q4(w, 1, zoff), a0.y, a);
    a = fmaf(Q4(w, 2, zoff), a0.z, a);
    a = fmaf(Q4(w, 3, zoff), a0.w, a);
    a = fmaf(Q4(w, 4, zoff), a1.x, a);
    a = fmaf(Q4(w, 5, zoff), a1.y, a);
    a = fmaf(Q4(w, 6, zoff), a1.z, a);
    a = fmaf(Q4(w, 7, zoff), a1.w, a);
    return a;
}
// 32 codes (one 16-byte load, a quarter of a group) against 32 bf16 activations.
__device__ __forceinline__ float dot32_q4(uint4 w, uint4 x0, uint4 x1, uint4 x2, uint4 x3, float zoff) {
    return dot8_q4(w.x, x0, zoff) + dot8_q4(w.y, x1, zoff) + dot8_q4(w.z, x2, zoff) + dot8_q4(w.w, x3, zoff);
}

// grid (ceil(OUT / (2 * warps))), block 256: y[t][r] = x[t] . W[r] for T <= 8 tokens. Each warp
// takes two output rows and walks them in 16-byte chunks (32 codes), every token at once.
// x (T, IN) bf16, qw (OUT, IN / 32) uint4, sc / zr (OUT, IN / 128), y (T, OUT) bf16.
extern "C" __global__ void q4_linear(const bf16_t* x, const uint4* qw, const f16_t* sc, const unsigned char* zr,
                                     bf16_t* y, int T, int IN, int OUT) {
    const int lane = threadIdx.x & 31;
    const int r0 = 2 * (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5));
    if (r0 >= OUT) return;
    const int r1 = r0 + 1 < OUT ? r0 + 1 : r0;
    const int C = IN / 32, NG = IN / Q4_GROUP;
    const uint4* w0 = qw + (size_t)r0 * C;
    const uint4* w1 = qw + (size_t)r1 * C;
    float a0[8], a1[8];
#pragma unroll
    for (int t = 0; t < 8; t++) a0[t] = a1[t] = 0.f;
    for (int c = lane; c < C; c += 32) {
        const uint4 p = w0[c], q = w1[c];
        const int g = c >> 2;
        const float s0 = h2f(sc[(size_t)r0 * NG + g]), z0 = 8388608.f + (float)zr[(size_t)r0 * NG + g];
        const float s1 = h2f(sc[(size_t)r1 * NG + g]), z1 = 8388608.f + (float)zr[(size_t)r1 * NG + g];
#pragma unroll
        for (int t = 0; t < 8; t++) {
            if (t < T) {
                const uint4* xv = (const uint4*)(x + (size_t)t * IN) + 4 * c;
                const uint4 x0 = xv[0], x1 = xv[1], x2 = xv[2], x3 = xv[3];
                a0[t] = fmaf(s0, dot32_q4(p, x0, x1, x2, x3, z0), a0[t]);
                a1[t] = fmaf(s1, dot32_q4(q, x0, x1, x2, x3, z1), a1[t]);
            }
        }
    }
#pragma unroll
    for (int t = 0; t < 8; t++) {
        if (t < T) {
            const float v0 = warp_sum(a0[t]), v1 = warp_sum(a1[t]);
            if (lane == 0) {
                y[(size_t)t * OUT + r0] = f2bf(v0);
                if (r1 != r0) y[(size_t)t * OUT + r1] = f2bf(v1);
            }
        }
    }
}

// grid (ceil(I / (2 * warps)), T * S): as moe_gate_up (kernels.cu) with int4 experts:
// act[t * S + k][j] = silu(gate_e[j] . x_t) * (up_e[j] . x_t), e the k-th routed expert of token
// t or shared chunk k - K. qw (E_all, 2I, H / 32) uint4, sc / zr (E_all, 2I, H / 128).
extern "C" __global__ void moe_gate_up_q4(const bf16_t* x, const float* route, const uint4* qw, const f16_t* sc,
                                          const unsigned char* zr, float* act, int H, int I, int K, int S, int E) {
    const int pair = blockIdx.y, t = pair / S, k = pair % S;
    const int e = k < K ? (int)route[(size_t)t * 2 * K + k] : E + (k - K);
    const int lane = threadIdx.x & 31;
    const int j0 = 2 * (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5));
    if (j0 >= I) return;
    const int j1 = j0 + 1 < I ? j0 + 1 : j0;
    const int C = H / 32, NG = H / Q4_GROUP;
    const size_t rg0 = (size_t)e * 2 * I + j0, ru0 = rg0 + I, rg1 = (size_t)e * 2 * I + j1, ru1 = rg1 + I;
    const uint4* xv = (const uint4*)(x + (size_t)t * H);
    float ag0 = 0.f, au0 = 0.f, ag1 = 0.f, au1 = 0.f;
    for (int c = lane; c < C; c += 32) {
        const uint4 wg0 = qw[rg0 * C + c], wu0 = qw[ru0 * C + c], wg1 = qw[rg1 * C + c], wu1 = qw[ru1 * C + c];
        const int g = c >> 2;
        const uint4 x0 = xv[4 * c], x1 = xv[4 * c + 1], x2 = xv[4 * c + 2], x3 = xv[4 * c + 3];
        ag0 = fmaf(h2f(sc[rg0 * NG + g]), dot32_q4(wg0, x0, x1, x2, x3, 8388608.f + (float)zr[rg0 * NG + g]), ag0);
        au0 = fmaf(h2f(sc[ru0 * NG + g]), dot32_q4(wu0, x0, x1, x2, x3, 8388608.f + (float)zr[ru0 * NG + g]), au0);
        ag1 = fmaf(h2f(sc[rg1 * NG + g]), dot32_q4(wg1, x0, x1, x2, x3, 8388608.f + (float)zr[rg1 * NG + g]), ag1);
        au1 = fmaf(h2f(sc[ru1 * NG + g]), dot32_q4(wu1, x0, x1, x2, x3, 8388608.f + (float)zr[ru1 * NG + g]), au1);
    }
    ag0 = warp_sum(ag0); au0 = warp_sum(au0); ag1 = warp_sum(ag1); au1 = warp_sum(au1);
    if (lane == 0) {
        act[(size_t)pair * I + j0] = ag0 / (1.f + __expf(-ag0)) * au0;
        if (j1 != j0) act[(size_t)pair * I + j1] = ag1 / (1.f + __expf(-ag1)) * au1;
    }
}

// grid (ceil(H / (warps / 2)), T): as moe_down (kernels.cu) with int4 experts: out[t][r] =
// residual[t][r] + sum_k w_k * (down_e[r] . act[t * S + k]). Two warps per row, striding over
// the row's S * I / 32 chunks. qw (E_all, H, I / 32) uint4, sc / zr (E_all, H, I / 128).
extern "C" __global__ void moe_down_q4(const float* act, const float* route, const uint4* qw, const f16_t* sc,
                                       const unsigned char* zr, const bf16_t* residual, bf16_t* out, int H, int I,
                                       int K, int S, int E) {
    const int t = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int r = blockIdx.x * (blockDim.x >> 6) + (warp >> 1), half = warp & 1;
    __shared__ int se[64];
    __shared__ float sw[64];
    __shared__ float part[32];
    stage_route(route, t, K, S, E, se, sw);
    __syncthreads();
    const int C = I / 32, NG = I / Q4_GROUP;
    float acc = 0.f;
    if (r < H) {
#pragma unroll 2
        for (int idx = half * 32 + lane; idx < S * C; idx += 64) {
            const int k = idx / C, c = idx - k * C;
            const size_t row = (size_t)se[k] * H + r;
            const uint4 p = qw[row * C + c];
            const int g = c >> 2;
            const float zoff = 8388608.f + (float)zr[row * NG + g];
            const float4* a = (const float4*)(act + ((size_t)t * S + k) * I) + 8 * c;
            const float d = dot8_q4f(p.x, a[0], a[1], zoff) + dot8_q4f(p.y, a[2], a[3], zoff)
                          + dot8_q4f(p.z, a[4], a[5], zoff) + dot8_q4f(p.w, a[6], a[7], zoff);
            acc = fmaf(sw[k] * h2f(sc[row * NG + g]), d, acc);
        }
    }
    acc = warp_sum(acc);
    if (lane == 0) part[warp] = acc;
    __syncthreads();
    if (r < H && half == 0 && lane == 0)
        out[(size_t)t * H + r] = f2bf(part[warp] + part[warp + 1] + bf2f(residual[(size_t)t * H + r]));
}

// Grid-stride over the words: out (rows, IN) bf16 = (q - zero) * scale, 8 columns (16 bytes) a
// thread. qw (rows, IN8) u32, sc / zr (rows, IN8 / 16).
extern "C" __global__ void q4_dequant(const unsigned int* qw, const f16_t* sc, const unsigned char* zr, uint4* out,
                                      long long words, int IN8) {
    const int NG = IN8 / (Q4_GROUP / 8);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < words;
         i += (long long)gridDim.x * blockDim.x) {
        const long long row = i / IN8;
        const int c = (int)(i - row * IN8), g = c / (Q4_GROUP / 8);
        const float s = h2f(sc[row * NG + g]), zoff = 8388608.f + (float)zr[row * NG + g];
        const unsigned int w = qw[i];
        unsigned int o[4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const float v0 = Q4(w, 2 * j, zoff) * s, v1 = Q4(w, 2 * j + 1, zoff) * s;
            o[j] = (unsigned int)f2bf(v0) | ((unsigned int)f2bf(v1) << 16);
        }
        out[i] = make_uint4(o[0], o[1], o[2], o[3]);
    }
}

// ---- int4 on tensor cores, for 9 to 64 tokens (a decode batch): the bf16 mma kernels' tiles
// (kernels_common.cuh) with the codes unpacked in registers. A lane loads 16 bytes of a row, 32
// codes: its quarter of one group of 128 columns, so the quad of lanes on a row covers exactly
// one group, and each 16-row tile's sums over a group are scaled once, in f32, by its rows'
// scales (exact (q - zero) values go to the tensor cores). ----

// Codes j and j + 4 of a word (columns 8c + j, 8c + j + 4) as a bf16 pair, minus the zero point:
// 0x4300 | q is the bf16 128 + q, and nz = -(128 + zero) in both halves, so one fma.bf16x2 leaves
// q - zero exactly. Pair j of the result is (col j, col j + 4): tok8 orders the tokens the same.
__device__ __forceinline__ unsigned q4pair(unsigned w, int j, unsigned nz) {
    const unsigned t = ((w >> (4 * j)) & 0x000F000Fu) | 0x43004300u;
    unsigned r;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(t), "r"(0x3F803F80u), "r"(nz));
    return r;
}
__device__ __forceinline__ uint4 deq8(unsigned w, unsigned nz) {
    return make_uint4(q4pair(w, 0, nz), q4pair(w, 1, nz), q4pair(w, 2, nz), q4pair(w, 3, nz));
}
// 8 token values at columns [c, c + 8) as the pairs (c + j, c + j + 4), j = 0..3.
__device__ __forceinline__ uint4 tok8(const bf16_t* p) {
    const uint4 x = *(const uint4*)p;
    return make_uint4(__byte_perm(x.x, x.z, 0x5410), __byte_perm(x.x, x.z, 0x7632), __byte_perm(x.y, x.w, 0x5410),
                      __byte_perm(x.y, x.w, 0x7632));
}
__device__ __forceinline__ uint4 tok8(const float* p) {
    const float4 a = ((const float4*)p)[0], b = ((const float4*)p)[1];
    return make_uint4(bf16x2(a.x, b.x), bf16x2(a.y, b.y), bf16x2(a.z, b.z), bf16x2(a.w, b.w));
}

// c[n] (rows lo, hi of the warp's tile x token tile n, as mma_k32 leaves them) = the rows' int4
// products with tokens xr[n] over `groups` groups of 128 columns. wlo / whi: the rows' codes
// (uint4 per 32 codes) from this lane's quarter; slo / shi, zlo / zhi: the rows' scales and zero
// points per group; xr[n]: token rows from this lane's 32 columns. Groups are loaded MU ahead, their
// scales and zero points with their codes (loaded where they were used, each group waited on a
// round trip of its own: 11.90 against 11.47 ms a batch-32 step, H100).
template <class X>
__device__ __forceinline__ void q4_mma_rows(float (*c)[4], const uint4* wlo, const uint4* whi, const f16_t* slo,
                                            const f16_t* shi, const unsigned char* zlo, const unsigned char* zhi,
                                            const X* const* xr, int tiles, int groups) {
    for (int g0 = 0; g0 < groups; g0 += MU) {
        const int nu = min(MU, groups - g0);
        uint4 a[MU], b[MU];
        unsigned char za[MU], zb[MU];
        f16_t sa[MU], sb[MU];
#pragma unroll
        for (int u = 0; u < MU; u++)
            if (u < nu) {
                a[u] = ldw(wlo + 4 * (g0 + u));
                b[u] = ldw(whi + 4 * (g0 + u));
                za[u] = zlo[g0 + u], zb[u] = zhi[g0 + u], sa[u] = slo[g0 + u], sb[u] = shi[g0 + u];
            }
#pragma unroll
        for (int u = 0; u < MU; u++) {
            if (u >= nu) break;
            const int gr = g0 + u;
            const unsigned nl = (0xC300u | za[u]) * 0x10001u, nh = (0xC300u | zb[u]) * 0x10001u;
            const float sl = h2f(sa[u]), sh = h2f(sb[u]);
            float t[MNT][4];
#pragma unroll
            for (int n = 0; n < MNT; n++) t[n][0] = t[n][1] = t[n][2] = t[n][3] = 0.f;
            const unsigned wa[4] = {a[u].x, a[u].y, a[u].z, a[u].w}, wb[4] = {b[u].x, b[u].y, b[u].z, b[u].w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const uint4 la = deq8(wa[i], nl), ha = deq8(wb[i], nh);
#pragma unroll
                for (int n = 0; n < MNT; n++)
                    if (n < tiles) mma_k32(t[n], la, ha, tok8(xr[n] + 128 * gr + 8 * i));
            }
#pragma unroll
            for (int n = 0; n < MNT; n++) {
                c[n][0] = fmaf(sl, t[n][0], c[n][0]);
                c[n][1] = fmaf(sl, t[n][1], c[n][1]);
                c[n][2] = fmaf(sh, t[n][2], c[n][2]);
                c[n][3] = fmaf(sh, t[n][3], c[n][3]);
            }
        }
    }
}

// The grouped kernels' registers bounded so four blocks of 4 warps fit an SM (a few bytes spill):
// 8.52 against 8.92 ms a batch-32 step unbounded (167-170 registers), H100. -DQ4LB=n for n blocks.
#ifndef Q4LB
#define Q4LB 4
#endif
#define Q4_BOUNDS __launch_bounds__(128, Q4LB)

// grid (ceil(I / (8 * warps)), E_all): moe_gate_up_mma (kernels.cu) with int4 experts, the slots
// grouped by moe_group over routed and shared experts alike. qw (E_all, 2I, H / 32) uint4, sc / zr
// (E_all, 2I, H / 128). Needs H % 128 == 0. act (slots, I) is bf16, not f32 as in the bf16 path:
// with a quarter of the weight bytes, the down kernel's token loads and conversions weighed more
// than its codes (8.92 against 10.70 ms a batch-32 step with f32, H100).
extern "C" __global__ void Q4_BOUNDS moe_gate_up_q4_mma(const bf16_t* x, const int* offsets, const int* slot_token,
                                              const uint4* qw, const f16_t* sc, const unsigned char* zr, bf16_t* act,
                                              int H, int I) {
    const int e = blockIdx.y, beg = offsets[e], end = offsets[e + 1];
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const int j0 = 8 * (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5));
    if (beg == end || j0 >= I) return;
    const int C = H / 32, NG = H / Q4_GROUP;
    const size_t rg = (size_t)e * 2 * I + min(j0 + g, I - 1), ru = rg + I;
    for (int s0 = beg; s0 < end; s0 += 8 * MNT) {
        float c[MNT][4];
        const bf16_t* xr[MNT];
#pragma unroll
        for (int n = 0; n < MNT; n++) {
            c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0.f;
            xr[n] = x + (size_t)slot_token[min(s0 + 8 * n + g, end - 1)] * H + 32 * q;
        }
        q4_mma_rows(c, qw + rg * C + q, qw + ru * C + q, sc + rg * NG, sc + ru * NG, zr + rg * NG, zr + ru * NG, xr,
                    (end - s0 + 7) / 8, NG);
        store_swiglu(act, c, s0, end, j0, I);
    }
}

// grid (ceil(H / (16 * warps)), E_all): moe_down_mma (kernels.cu) with int4 experts. qw (E_all, H,
// I / 32) uint4, sc / zr (E_all, H, I / 128). Needs I % 128 == 0.
extern "C" __global__ void Q4_BOUNDS moe_down_q4_mma(const bf16_t* act, const int* offsets, const uint4* qw, const f16_t* sc,
                                           const unsigned char* zr, float* y, int H, int I) {
    const int e = blockIdx.y, beg = offsets[e], end = offsets[e + 1];
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const int r0 = 16 * (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5));
    if (beg == end || r0 >= H) return;
    const int C = I / 32, NG = I / Q4_GROUP;
    const size_t rl = (size_t)e * H + min(r0 + g, H - 1), rh = (size_t)e * H + min(r0 + g + 8, H - 1);
    for (int s0 = beg; s0 < end; s0 += 8 * MNT) {
        float c[MNT][4];
        const bf16_t* ar[MNT];
#pragma unroll
        for (int n = 0; n < MNT; n++) {
            c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0.f;
            ar[n] = act + (size_t)min(s0 + 8 * n + g, end - 1) * I + 32 * q;
        }
        q4_mma_rows(c, qw + rl * C + q, qw + rh * C + q, sc + rl * NG, sc + rh * NG, zr + rl * NG, zr + rh * NG, ar,
                    (end - s0 + 7) / 8, NG);
        store_tile(y, c, s0, end, r0, H);
    }
}

// grid (ceil(OUT / 16), ceil(T / (8 * MNT))), W warps a block, (W - 1) * MNT * 512 bytes of shared memory: y[t][r] = x[t] . W[r] for a
// batch of tokens, W int4 (OUT, IN): each 16-row tile's codes read once per 8 * MNT tokens. The
// block's warps split the tile's groups and add their sums in shared memory: a dense projection
// has few tiles (2,048 rows: 128), one warp each left the GPU mostly idle. Needs IN % 128 == 0.
extern "C" __global__ void q4_linear_mma(const bf16_t* x, const uint4* qw, const f16_t* sc, const unsigned char* zr,
                                         bf16_t* y, int T, int IN, int OUT) {
    extern __shared__ float part[]; // (W - 1, MNT * 4, 32): the other warps' sums
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3, w = threadIdx.x >> 5, W = blockDim.x >> 5;
    const int r0 = 16 * blockIdx.x, s0 = blockIdx.y * 8 * MNT;
    const int C = IN / 32, NG = IN / Q4_GROUP, gb = NG * w / W, ge = NG * (w + 1) / W;
    const size_t rl = min(r0 + g, OUT - 1), rh = min(r0 + g + 8, OUT - 1);
    float c[MNT][4];
    const bf16_t* xr[MNT];
#pragma unroll
    for (int n = 0; n < MNT; n++) {
        c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0.f;
        xr[n] = x + (size_t)min(s0 + 8 * n + g, T - 1) * IN + 32 * q + Q4_GROUP * gb;
    }
    q4_mma_rows(c, qw + rl * C + q + 4 * gb, qw + rh * C + q + 4 * gb, sc + rl * NG + gb, sc + rh * NG + gb,
                zr + rl * NG + gb, zr + rh * NG + gb, xr, (T - s0 + 7) / 8, ge - gb);
    if (W > 1) {
        if (w > 0)
#pragma unroll
            for (int i = 0; i < MNT * 4; i++) part[((w - 1) * MNT * 4 + i) * 32 + lane] = c[i / 4][i % 4];
        __syncthreads();
        if (w > 0) return;
        for (int v = 1; v < W; v++)
#pragma unroll
            for (int i = 0; i < MNT * 4; i++) c[i / 4][i % 4] += part[((v - 1) * MNT * 4 + i) * 32 + lane];
    }
    store_tile(y, c, s0, T, r0, OUT);
}
