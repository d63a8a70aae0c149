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
