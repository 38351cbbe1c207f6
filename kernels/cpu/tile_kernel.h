// Internal interface between the CPU backend's scheduler (attention_cpu.cc) and its tile kernel
// (tile_kernel_impl.h, compiled once per instruction set into tile_kernel_<isa>.cc).
//
// One call processes one work item: `rows` query rows of one (sequence, query head) against
// every key tile the mask options allow, keeping the running max, running sum and output
// accumulator of those rows in the caller's scratch. Nothing is allocated.
#ifndef ATTENTION_KERNELS_CPU_TILE_KERNEL_H_
#define ATTENTION_KERNELS_CPU_TILE_KERNEL_H_

#include <cstdint>

#include "kernels/attention_params.h"

namespace attention::cpu {

// Tile shape. block_q is a multiple of kTileColumnAlign (every variant's query-column block
// divides it) and at most kTileMaxBlockQ; block_k >= 1. copy_float32_kv: copy float32 K/V tiles
// into contiguous scratch (16-bit ones are always converted into it) instead of reading them in
// place.
struct TileConfig {
  int block_q = 128;
  int block_k = 64;
  bool copy_float32_kv = true;
};
inline constexpr int kTileColumnAlign = 32;
inline constexpr int kTileMaxBlockQ = 512;

// One work item: rows [row_begin, row_begin + rows) of sequence `batch`, query head `head`.
struct QueryTile {
  int batch = 0;
  int head = 0;
  int kv_head = 0;
  int64_t q_row0 = 0;  // row_offset(batch) for q, o, lse (cu_seqlens_q[batch] or 0)
  int64_t k_row0 = 0;  // row_offset(batch) for k, v
  int len_q = 0;       // this sequence's lengths
  int len_k = 0;
  int row_begin = 0;
  int rows = 0;  // 1 .. block_q
};

// Per-thread scratch, float32, sized by TileScratchFloats(); each buffer 64-byte aligned.
struct TileScratch {
  float* q_t;       // [head_dim][block_q]: scaled Q tile, transposed (query rows along lanes)
  float* o_t;       // [head_dim][block_q]: unnormalized output accumulator, transposed
  float* s_t;       // [block_k][block_q]: scores, then probabilities, transposed
  float* k_tile;    // [block_k][head_dim]: K tile converted to float (16-bit inputs)
  float* v_tile;    // [block_k][head_dim]: V tile converted to float (16-bit inputs)
  float* row_max;   // [block_q]
  float* row_sum;   // [block_q]
  float* alpha;     // [block_q]: rescale factor of the current key tile
  float* tile_max;  // [block_q]: running max including the current key tile
  float* out;       // [block_q][head_dim]: normalized output rows, for the caller to store
  float* lse;       // [block_q]: log-sum-exp of the rows (-inf for a row with no allowed key)
};

// Sizes of the TileScratch buffers in floats, each rounded up to 16 (64 bytes).
struct TileScratchLayout {
  int64_t q_t, o_t, s_t, k_tile, v_tile, vec, out;
  int64_t total() const { return q_t + o_t + s_t + k_tile + v_tile + 5 * vec + out; }
};
TileScratchLayout TileScratchFloats(const TileConfig& config, int head_dim);

// Computes scratch.out[0 .. rows) and scratch.lse[0 .. rows) for `tile`. `p` is normalized
// (Normalize()) and passed CheckParams.
using TileKernelFn = void (*)(const AttentionParams& p, const QueryTile& tile,
                              const TileConfig& config, const TileScratch& scratch);

// The two tile products alone, for the benchmark that compares them with a BLAS sgemm per
// tile: s_t[nk][br] = K q_t, then o_t[d][br] = o_t * alpha + V^T s_t (all br columns).
using TileProductsFn = void (*)(const float* k, int64_t ks, const float* v, int64_t vs, int nk,
                                int d, const float* q_t, int br, const float* alpha, float* s_t,
                                float* o_t);

// The backward's tile products (attention_backward_cpu.cc), on float32 tiles in the caller's
// scratch: for i < m and n < ncols,
//   c[i * ldc + n] = sum_{e < k} a[i * a_rs + e * a_cs] * b[e * ldb + n]
// (a_cs = 1: A row-major; a_rs = 1: A read transposed). ncols is a multiple of
// kTileColumnAlign; b's rows hold ncols readable floats. Every term is one fused multiply-add in
// ascending e, so c depends on the inputs and the instruction set only (never on threads).
using TileMatMulFn = void (*)(int m, int ncols, int k, const float* a, int64_t a_rs, int64_t a_cs,
                              const float* b, int64_t ldb, float* c, int64_t ldc);

// The backward's softmax gradient of one tile pair without a mask, in place: for query row
// i < nq and key column j < ncols, s[i][j] = q.k (unscaled) and dp[i][j] = dO.v become
//   x = scale * s;  with softcap c > 0: x = c tanh(x / c);  x -= slope * |pos0 + i - j|
//   P = exp(x - lse[i]) for j in [lo[i], hi[i]), else 0;  dS = P * (dp - delta[i]) * x'
// where x' = 1 - tanh^2 with softcap, else 1; slope 0 means no ALiBi (pos0 + i - j is query row
// i's position minus key j's). Row stride ld. A row with lse = -inf gets P = dS = 0. exp and tanh
// have relative and absolute errors below 3e-7.
using TileSoftmaxGradFn = void (*)(int nq, int ncols, float scale, float softcap, float slope,
                                   int64_t pos0, const float* lse, const float* delta,
                                   const int32_t* lo, const int32_t* hi, float* s, float* dp,
                                   int64_t ld);

// The backward's float64 sums across tile pairs: sum[r][e] += part[r][e] for r < rows, e < n
// (row strides ldp and lds), each term converted to double exactly.
using TileAccumulateFn = void (*)(int rows, int n, const float* part, int64_t ldp, double* sum,
                                  int64_t lds);

#define ATTN_CPU_DECLARE_TILE_KERNEL(ns)                                                           \
  namespace ns {                                                                                   \
  void ProcessQueryTile(const AttentionParams& p, const QueryTile& tile, const TileConfig& config, \
                        const TileScratch& scratch);                                               \
  void TileProducts(const float* k, int64_t ks, const float* v, int64_t vs, int nk, int d,         \
                    const float* q_t, int br, const float* alpha, float* s_t, float* o_t);         \
  void TileMatMul(int m, int ncols, int k, const float* a, int64_t a_rs, int64_t a_cs,             \
                  const float* b, int64_t ldb, float* c, int64_t ldc);                             \
  void TileSoftmaxGrad(int nq, int ncols, float scale, float softcap, float slope, int64_t pos0,   \
                       const float* lse, const float* delta, const int32_t* lo, const int32_t* hi, \
                       float* s, float* dp, int64_t ld);                                           \
  void TileAccumulate(int rows, int n, const float* part, int64_t ldp, double* sum, int64_t lds);  \
  }
ATTN_CPU_DECLARE_TILE_KERNEL(generic)
#if defined(ATTN_CPU_X86_VARIANTS)
ATTN_CPU_DECLARE_TILE_KERNEL(avx2)
ATTN_CPU_DECLARE_TILE_KERNEL(avx512)
#endif
#undef ATTN_CPU_DECLARE_TILE_KERNEL

}  // namespace attention::cpu

#endif  // ATTENTION_KERNELS_CPU_TILE_KERNEL_H_
