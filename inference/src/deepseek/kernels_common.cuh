// Shared by kb's CUDA modules (kernels.cu, q4_kernels.cu): NVRTC compiles each module with this
// prepended (kernels.rs / q4_kernels.rs), so the helpers are written once.

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
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// The experts of token t's S slots, from the router's (T, 2K) output [K ids | K weights]: slot
// k < K is routed expert route[k] with its weight, slot k >= K shared chunk E + (k - K) with
// weight 1. Staged in shared memory by the block's first S threads (S <= 64); the caller syncs.
__device__ __forceinline__ void stage_route(const float* route, int t, int K, int S, int E, int* se, float* sw) {
    if (threadIdx.x < S && threadIdx.x < 64) {
        const int k = threadIdx.x;
        if (k < K) { se[k] = (int)route[(size_t)t * 2 * K + k]; sw[k] = route[(size_t)t * 2 * K + K + k]; }
        else { se[k] = E + (k - K); sw[k] = 1.f; }
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

// ---- The grouped expert products on tensor cores (mma.sync m16n8k16: bf16 in, f32 sums). An
// expert sees a few tokens of a decode batch, so both are weight streams; the tensor cores take
// the multiply-adds off the path of the loads (CUDA-core versions, which spent more issue slots on
// unpacking and FMAs than on loads, took 17.75 instead of 16.18 ms a step at batch 32, H100).
// The order of a dot product's terms is free, so each lane loads 8 consecutive values of a row
// (one 16-byte load) as its share of two k16 steps, and the token fragments use the same order. ----

__device__ __forceinline__ void mma16816(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0,
                                         unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
// Rows g (lo) and g + 8 (hi) of a 16-row tile against token column g, over 32 values of k.
__device__ __forceinline__ void mma_k32(float* c, uint4 lo, uint4 hi, uint4 x) {
    mma16816(c, lo.x, hi.x, lo.y, hi.y, x.x, x.y);
    mma16816(c, lo.z, hi.z, lo.w, hi.w, x.z, x.w);
}
__device__ __forceinline__ unsigned bf16x2(float a, float b) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(b), "f"(a));
    return r;
}
// Token tiles of 8 per pass over an expert's weights, and k steps (32 values) loaded ahead.
#ifndef MNT
#define MNT 4
#endif
#ifndef MU
#define MU 4
#endif

// The epilogues of a warp's 16-row tile against MNT token tiles (c[n] as mma_k32 leaves it:
// rows g and g + 8 of the tile x token columns 2q and 2q + 1 of tile n, s = s0 + 8n + 2q).
// One output value, as f32 or bf16.
__device__ __forceinline__ void put(float* out, size_t i, float v) { out[i] = v; }
__device__ __forceinline__ void put(bf16_t* out, size_t i, float v) { out[i] = f2bf(v); }
// f(s, lo, hi) for each of this lane's tokens s < end: its sums of rows g (lo) and g + 8 (hi).
template <class F>
__device__ __forceinline__ void each_token(const float (*c)[4], int s0, int end, F f) {
    const int q = threadIdx.x & 3;
#pragma unroll
    for (int n = 0; n < MNT; n++)
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int s = s0 + 8 * n + 2 * q + i;
            if (s < end) f(s, c[n][i], c[n][2 + i]);
        }
}
// A gate/up tile (rows 0-7 gate, 8-15 up, rows j0 + g): act[s][j0 + g] = silu(gate) * up.
template <class Y>
__device__ __forceinline__ void store_swiglu(Y* act, const float (*c)[4], int s0, int end, int j0, int I) {
    const int j = j0 + ((threadIdx.x & 31) >> 2);
    each_token(c, s0, end, [&](int s, float gate, float up) {
        if (j < I) put(act, (size_t)s * I + j, gate / (1.f + __expf(-gate)) * up);
    });
}
// A plain tile (rows r0 + g, r0 + g + 8 of R): out[s][r].
template <class Y>
__device__ __forceinline__ void store_tile(Y* out, const float (*c)[4], int s0, int end, int r0, int R) {
    const int r = r0 + ((threadIdx.x & 31) >> 2);
    each_token(c, s0, end, [&](int s, float lo, float hi) {
        if (r < R) put(out, (size_t)s * R + r, lo);
        if (r + 8 < R) put(out, (size_t)s * R + r + 8, hi);
    });
}
