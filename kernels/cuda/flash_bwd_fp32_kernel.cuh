// Device code of the float32 backward (flash_bwd_fp32.h): FlashAttention-2's backward, as the
// 16-bit kernels do it (flash_bwd_kernel.cuh), with every product in float32 FMA on the CUDA
// cores (SIMT): each thread accumulates a small micro-tile of a product from operands read as
// 16-byte vectors out of shared memory, so every sum rounds to nearest in float32, with no
// operand rounding and none of the tensor cores' truncation. Per (sequence, query head), with P
// recomputed from the forward's lse:
//   D = rowsum(dO * O)                             (Fp32BwdPreprocessKernel)
//   P = exp(logit(Q K^T) - lse), 0 where a key is not allowed or lse = -inf
//   dV += P^T dO,  dP = dO V^T,  dS = P * (dP - D) * softcap'
//   dK += scale dS^T Q,  dQ += scale dS K
//
// FlashBwdFp32Kernel: one block per (key tile of kBlockN keys, KV head, sequence). K and V stay
// in shared memory; the block loops over the query heads of the KV head's group and, for each,
// over the query tiles that see the key tile (block_info.h's KvTiles with queries and keys
// swapped), so dK and dV are summed in registers. Per query tile:
//   A. S^T = K Q^T and dP^T = V dO^T (keys x queries), then P and dS element by element, stored
//      as [query][key] tiles in shared memory;
//   B. dV += P^T dO and dK += dS^T Q (keys x head_dim), outer products over the query rows;
//   C. (unless deterministic) scale dS K (queries x head_dim), added into dq with atomics (dq is
//      float32: it is its own accumulator, zeroed by the preprocess); the next query tile's Q and
//      dO copies (cp.async) fly meanwhile.
// FlashBwdFp32DqKernel (deterministic mode): one block per (query tile, query head, sequence),
// looping over the key tiles the query tile sees: products A and C with dQ in registers, written
// once, so dq is bit-identical run to run.
//
// The score rule (window, softcap, ALiBi, masks; sinks need nothing here: the forward's lse holds
// them) is Fp32ScoreRule below: the 16-bit kernels' ScoreRule with the exact tanhf instead of the
// fast Tanh, whose ~1e-7 absolute error would be 3e-6 of a softcap-30 logit.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_BWD_FP32_KERNEL_CUH_
#define ATTENTION_KERNELS_CUDA_FLASH_BWD_FP32_KERNEL_CUH_

#include <cmath>
#include <cstdint>

#include "kernels/attention_params.h"
#include "kernels/cuda/block_info.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/flash_bwd_fp32_traits.h"
#include "kernels/cuda/flash_bwd_kernel.cuh"
#include "kernels/cuda/flash_bwd_launch.h"

namespace attention::cuda::bwd_fp32 {

using bwd::LocateSequence;
using bwd::SeqBounds;
using fwd::CpAsync16;
using fwd::CpAsyncCommit;
using fwd::CpAsyncWait;
using fwd::Exp2;
using fwd::SmemAddress;

constexpr float kLog2e = 1.4426950408889634f;

// N consecutive floats (N = 1, 2 or 4, src / dst aligned to 4 N bytes) as one access.
template <int N>
__device__ __forceinline__ void LoadVec(const float* src, float (&dst)[N]) {
  if constexpr (N == 4) {
    const float4 x = *reinterpret_cast<const float4*>(src);
    dst[0] = x.x;
    dst[1] = x.y;
    dst[2] = x.z;
    dst[3] = x.w;
  } else if constexpr (N == 2) {
    const float2 x = *reinterpret_cast<const float2*>(src);
    dst[0] = x.x;
    dst[1] = x.y;
  } else {
    static_assert(N == 1, "vectors of 1, 2 or 4 floats");
    dst[0] = src[0];
  }
}

template <int N>
__device__ __forceinline__ void StoreVec(float* dst, const float (&src)[N]) {
  if constexpr (N == 4) {
    *reinterpret_cast<float4*>(dst) = make_float4(src[0], src[1], src[2], src[3]);
  } else if constexpr (N == 2) {
    *reinterpret_cast<float2*>(dst) = make_float2(src[0], src[1]);
  } else {
    static_assert(N == 1, "vectors of 1, 2 or 4 floats");
    dst[0] = src[0];
  }
}

__device__ __forceinline__ float4 Load4(const float* src) {
  return *reinterpret_cast<const float4*>(src);
}

// acc += a * x, four lanes.
__device__ __forceinline__ void Fma4(float (&acc)[4], float a, const float4& x) {
  acc[0] = fmaf(a, x.x, acc[0]);
  acc[1] = fmaf(a, x.y, acc[1]);
  acc[2] = fmaf(a, x.z, acc[2]);
  acc[3] = fmaf(a, x.w, acc[3]);
}

// dst[0..3] += x[0..3] atomically (dst 16-byte aligned): one vector reduction on sm_90, four
// scalar ones before it (and on the CPU emulator).
__device__ __forceinline__ void AtomicAdd4(float* dst, const float (&x)[4]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float4*>(dst), make_float4(x[0], x[1], x[2], x[3]));
#else
  for (int e = 0; e < 4; ++e) atomicAdd(dst + e, x[e]);
#endif
}

// Copies rows [0, kRows) of a global float32 tile (row r at src + r * row_stride, 16-byte
// aligned) into the shared tile dst ([kRows][Traits::kStride]): 16-byte chunks of rows < rows
// and chunks < valid_chunks, zeros elsewhere (rows past the sequence, columns past head_dim), so
// that the products may run over whole tiles.
template <typename Traits, int kRows>
__device__ __forceinline__ void LoadTile(float* dst, const float* src, int64_t row_stride, int rows,
                                         int valid_chunks, int tid) {
  constexpr int kChunks = Traits::kChunks;
  for (int idx = tid; idx < kRows * kChunks; idx += Traits::kNThreads) {
    const int r = idx / kChunks;
    const int ch = idx % kChunks;
    float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
    if (r < rows && ch < valid_chunks) x = Load4(src + r * row_stride + 4 * ch);
    *reinterpret_cast<float4*>(dst + r * Traits::kStride + 4 * ch) = x;
  }
}

// As LoadTile, by cp.async (zero-filled chunks read nothing): the copies land at the
// CpAsyncWait that covers the group they are committed in.
template <typename Traits, int kRows>
__device__ __forceinline__ void LoadTileAsync(float* dst, const float* src, int64_t row_stride,
                                              int rows, int valid_chunks, int tid) {
  constexpr int kChunks = Traits::kChunks;
  for (int idx = tid; idx < kRows * kChunks; idx += Traits::kNThreads) {
    const int r = idx / kChunks;
    const int ch = idx % kChunks;
    const bool pred = r < rows && ch < valid_chunks;
    CpAsync16(SmemAddress(dst + r * Traits::kStride + 4 * ch),
              pred ? src + r * row_stride + 4 * ch : src, pred);
  }
}

// The score -> P and dS rule of one (sequence, query head): the 16-bit kernels' general rule
// (every option at run time) with the exact tanhf for softcap.
using Fp32ScoreRule = bwd::ScoreRule<true, true>;

// Product A of one (key tile, query tile) pair: S^T = K Q^T and dP^T = V dO^T for this thread's
// keys kRowsA * (tid / 16) + [0, kRowsA) and queries tid % 16 + 16 c, turned into P and dS by
// `rule` and stored as [query][key] tiles (P only when smem_p is set). key0 / q0: the tiles'
// first key and query row in the sequence; lse_tile / d_tile: the query tile's lse_log2 and D.
template <typename Traits>
__device__ __forceinline__ void ScoresToGrads(const float* smem_k, const float* smem_v,
                                              const float* smem_q, const float* smem_do,
                                              const float* lse_tile, const float* d_tile,
                                              float* smem_p, float* smem_ds,
                                              const Fp32ScoreRule& rule, int key0, int q0,
                                              int tid) {
  constexpr int kRows = Traits::kRowsA;
  constexpr int kCols = Traits::kColsA;
  constexpr int kStride = Traits::kStride;
  const int r0 = kRows * (tid / 16);
  const int c0 = tid % 16;
  float acc_s[kRows][kCols];
  float acc_dp[kRows][kCols];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      acc_s[r][c] = 0.f;
      acc_dp[r][c] = 0.f;
    }
  }
#pragma unroll 4
  for (int k = 0; k < Traits::kHeadDim; k += 4) {
    float4 kr[kRows], vr[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      kr[r] = Load4(smem_k + (r0 + r) * kStride + k);
      vr[r] = Load4(smem_v + (r0 + r) * kStride + k);
    }
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const float4 qc = Load4(smem_q + (c0 + 16 * c) * kStride + k);
      const float4 dc = Load4(smem_do + (c0 + 16 * c) * kStride + k);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        float s = acc_s[r][c];
        s = fmaf(kr[r].x, qc.x, s);
        s = fmaf(kr[r].y, qc.y, s);
        s = fmaf(kr[r].z, qc.z, s);
        acc_s[r][c] = fmaf(kr[r].w, qc.w, s);
        float dp = acc_dp[r][c];
        dp = fmaf(vr[r].x, dc.x, dp);
        dp = fmaf(vr[r].y, dc.y, dp);
        dp = fmaf(vr[r].z, dc.z, dp);
        acc_dp[r][c] = fmaf(vr[r].w, dc.w, dp);
      }
    }
  }
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
    const int row = c0 + 16 * c;
    const float lse_log2 = lse_tile[row];
    const float d = d_tile[row];
    float pv[kRows];
    float dsv[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      rule.Grad<true>(acc_s[r][c], acc_dp[r][c], lse_log2, d, q0 + row, key0 + r0 + r, pv[r],
                      dsv[r]);
    }
    if (smem_p != nullptr) StoreVec(smem_p + row * Traits::kPStride + r0, pv);
    StoreVec(smem_ds + row * Traits::kPStride + r0, dsv);
  }
}

// Product C: acc[r][c] += dS[row(r)] K over the key tile for this thread's query rows
// row(r) = tid / kThreadsBD + kThreadsCM r and head_dim chunks tid % kThreadsBD + kThreadsBD c.
template <typename Traits>
__device__ __forceinline__ void AccumulateDsK(float (&acc)[Traits::kRowsC][Traits::kChunksB][4],
                                              const float* smem_ds, const float* smem_k, int tid) {
  constexpr int kRows = Traits::kRowsC;
  constexpr int kChunks = Traits::kChunksB;
  const int row0 = tid / Traits::kThreadsBD;
  const int chunk0 = tid % Traits::kThreadsBD;
#pragma unroll 2
  for (int j = 0; j < Traits::kBlockN; j += 4) {
    float ds[kRows][4];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      LoadVec(smem_ds + (row0 + Traits::kThreadsCM * r) * Traits::kPStride + j, ds[r]);
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) {
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        const float4 kv =
            Load4(smem_k + (j + u) * Traits::kStride + 4 * (chunk0 + Traits::kThreadsBD * c));
#pragma unroll
        for (int r = 0; r < kRows; ++r) Fma4(acc[r][c], ds[r][u], kv);
      }
    }
  }
}

// The query tile's lse_log2 and D into shared memory: +inf and 0 for rows past the sequence, so
// their P is 0. Threads [0, kBlockM) and [kBlockM, 2 kBlockM).
template <typename Traits>
__device__ __forceinline__ void LoadRowStats(float* lse_tile, float* d_tile, const BwdParams& p,
                                             int64_t ws, int rows, int tid) {
  constexpr int kBlockM = Traits::kBlockM;
  if (tid < kBlockM) {
    lse_tile[tid] = tid < rows ? p.lse_log2[ws + tid] : INFINITY;
  } else if (tid < 2 * kBlockM) {
    d_tile[tid - kBlockM] = tid - kBlockM < rows ? p.dsum[ws + tid - kBlockM] : 0.f;
  }
}

// Grid: (ceil(seqlen_k / kBlockN), kv_heads, batch); kNThreads threads; Traits::kSmemBytes of
// dynamic shared memory.
template <typename Traits>
__global__ void __launch_bounds__(Traits::kNThreads, Traits::kMinBlocksPerSm)
    FlashBwdFp32Kernel(const __grid_constant__ BwdParams p) {
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kRowsB = Traits::kRowsB;
  constexpr int kChunksB = Traits::kChunksB;
  constexpr int kThreadsBD = Traits::kThreadsBD;

  extern __shared__ __align__(128) unsigned char smem[];
  float* const smem_f = reinterpret_cast<float*>(smem);
  float* const smem_k = smem_f + Traits::kKOffset;
  float* const smem_v = smem_f + Traits::kVOffset;
  float* const smem_q = smem_f + Traits::kQOffset;
  float* const smem_do = smem_f + Traits::kDoOffset;
  float* const smem_p = smem_f + Traits::kPOffset;
  float* const smem_ds = smem_f + Traits::kDsOffset;
  float* const lse_tile = smem_f + Traits::kLseOffset;
  float* const d_tile = smem_f + Traits::kDOffset;

  const int tid = threadIdx.x;
  const int b = blockIdx.z;
  const int kv_head = blockIdx.y;
  const SeqBounds seq = LocateSequence(p, b);
  const int key0 = blockIdx.x * kBlockN;
  if (key0 >= seq.len_k) return;
  const int keys = min(kBlockN, seq.len_k - key0);
  const int valid_chunks = p.head_dim / 4;
  const int group = p.q_heads / p.kv_heads;

  // Query tiles that see a key of this tile: KvTiles with queries and keys swapped (key j sees
  // query i iff j - shift - right <= i <= j - shift + left).
  const KvTileRange qtiles =
      KvTiles(key0, keys, seq.len_k, seq.len_q, kBlockM, p.window_right, p.window_left);
  const int n_qtiles = max(qtiles.end - qtiles.begin, 0);
  const int iters = group * n_qtiles;

  const float* k = static_cast<const float*>(p.k) + b * p.k_batch_stride +
                   (seq.k_start + key0) * p.k_row_stride + kv_head * p.k_head_stride;
  const float* v = static_cast<const float*>(p.v) + b * p.v_batch_stride +
                   (seq.k_start + key0) * p.v_row_stride + kv_head * p.v_head_stride;
  // Copies of iteration `it`'s query tile (head, tile) Q and dO, by cp.async.
  const auto load_query_tile = [&](int it) {
    const int head = kv_head * group + it / n_qtiles;
    const int q0 = (qtiles.begin + it % n_qtiles) * kBlockM;
    const int rows = min(kBlockM, seq.len_q - q0);
    const int64_t q_row = seq.q_start + q0;
    LoadTileAsync<Traits, kBlockM>(smem_q,
                                   static_cast<const float*>(p.q) + b * p.q_batch_stride +
                                       q_row * p.q_row_stride + head * p.q_head_stride,
                                   p.q_row_stride, rows, valid_chunks, tid);
    LoadTileAsync<Traits, kBlockM>(smem_do,
                                   static_cast<const float*>(p.do_) + b * p.o_batch_stride +
                                       q_row * p.o_row_stride + head * p.o_head_stride,
                                   p.o_row_stride, rows, valid_chunks, tid);
  };
  // A key tile no query sees copies nothing: its dK and dV are 0.
  if (iters > 0) {
    LoadTileAsync<Traits, kBlockN>(smem_k, k, p.k_row_stride, keys, valid_chunks, tid);
    LoadTileAsync<Traits, kBlockN>(smem_v, v, p.v_row_stride, keys, valid_chunks, tid);
    load_query_tile(0);
  }
  CpAsyncCommit();

  // Product B's thread: keys kb0 + [0, kRowsB), chunks chunk0 + kThreadsBD c.
  const int kb0 = kRowsB * (tid / kThreadsBD);
  const int chunk0 = tid % kThreadsBD;
  float acc_dk[kRowsB][kChunksB][4];
  float acc_dv[kRowsB][kChunksB][4];
#pragma unroll
  for (int r = 0; r < kRowsB; ++r) {
#pragma unroll
    for (int c = 0; c < kChunksB; ++c) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        acc_dk[r][c][e] = 0.f;
        acc_dv[r][c][e] = 0.f;
      }
    }
  }

  for (int it = 0; it < iters; ++it) {
    const int head = kv_head * group + it / n_qtiles;
    const int q0 = (qtiles.begin + it % n_qtiles) * kBlockM;
    const int rows = min(kBlockM, seq.len_q - q0);
    const int64_t q_row = seq.q_start + q0;
    Fp32ScoreRule rule;
    rule.Init(p, seq, b, head);

    // The row statistics' last readers (product A of the previous tile) passed two barriers
    // since; Q and dO of this tile were issued before the previous tile's product C.
    LoadRowStats<Traits>(lse_tile, d_tile, p, head * p.q_rows + seq.ws_start + q0, rows, tid);
    CpAsyncWait<0>();
    __syncthreads();

    // A. P and dS of the pair.
    ScoresToGrads<Traits>(smem_k, smem_v, smem_q, smem_do, lse_tile, d_tile, smem_p, smem_ds, rule,
                          key0, q0, tid);
    __syncthreads();

    // B. dV += P^T dO, dK += dS^T Q: outer products over the tile's query rows.
#pragma unroll 2
    for (int i = 0; i < kBlockM; ++i) {
      float pv[kRowsB];
      float dsv[kRowsB];
      LoadVec(smem_p + i * Traits::kPStride + kb0, pv);
      LoadVec(smem_ds + i * Traits::kPStride + kb0, dsv);
#pragma unroll
      for (int c = 0; c < kChunksB; ++c) {
        const int col = 4 * (chunk0 + kThreadsBD * c);
        const float4 dov = Load4(smem_do + i * Traits::kStride + col);
        const float4 qv = Load4(smem_q + i * Traits::kStride + col);
#pragma unroll
        for (int r = 0; r < kRowsB; ++r) {
          Fma4(acc_dv[r][c], pv[r], dov);
          Fma4(acc_dk[r][c], dsv[r], qv);
        }
      }
    }
    // Q and dO are free: the next query tile's copies fly during product C.
    __syncthreads();
    if (it + 1 < iters) load_query_tile(it + 1);
    CpAsyncCommit();

    // C. dq += scale dS K, atomically: other key tiles' blocks add into the same rows.
    if (!p.deterministic) {
      float acc_dq[Traits::kRowsC][kChunksB][4];
#pragma unroll
      for (int r = 0; r < Traits::kRowsC; ++r) {
#pragma unroll
        for (int c = 0; c < kChunksB; ++c) {
#pragma unroll
          for (int e = 0; e < 4; ++e) acc_dq[r][c][e] = 0.f;
        }
      }
      AccumulateDsK<Traits>(acc_dq, smem_ds, smem_k, tid);
      const int qrow0 = tid / kThreadsBD;
      float* const dq = static_cast<float*>(p.dq) + b * p.q_batch_stride + q_row * p.q_row_stride +
                        head * p.q_head_stride;
#pragma unroll
      for (int r = 0; r < Traits::kRowsC; ++r) {
        const int i = qrow0 + Traits::kThreadsCM * r;
        if (i >= rows) continue;
#pragma unroll
        for (int c = 0; c < kChunksB; ++c) {
          const int chunk = chunk0 + kThreadsBD * c;
          if (chunk >= valid_chunks) continue;
          float x[4];
#pragma unroll
          for (int e = 0; e < 4; ++e) x[e] = acc_dq[r][c][e] * p.softmax_scale;
          AtomicAdd4(dq + i * p.q_row_stride + 4 * chunk, x);
        }
      }
    }
  }

  // dK = scale sum dS^T Q and dV, every key row of the tile (zeros for keys no query sees).
  float* const dk = static_cast<float*>(p.dk) + b * p.k_batch_stride +
                    (seq.k_start + key0) * p.k_row_stride + kv_head * p.k_head_stride;
  float* const dv = static_cast<float*>(p.dv) + b * p.v_batch_stride +
                    (seq.k_start + key0) * p.v_row_stride + kv_head * p.v_head_stride;
#pragma unroll
  for (int r = 0; r < kRowsB; ++r) {
    const int j = kb0 + r;
    if (j >= keys) continue;
#pragma unroll
    for (int c = 0; c < kChunksB; ++c) {
      const int chunk = chunk0 + kThreadsBD * c;
      if (chunk >= valid_chunks) continue;
      const float(&a)[4] = acc_dk[r][c];
      *reinterpret_cast<float4*>(dk + j * p.k_row_stride + 4 * chunk) =
          make_float4(a[0] * p.softmax_scale, a[1] * p.softmax_scale, a[2] * p.softmax_scale,
                      a[3] * p.softmax_scale);
      const float(&w)[4] = acc_dv[r][c];
      *reinterpret_cast<float4*>(dv + j * p.v_row_stride + 4 * chunk) =
          make_float4(w[0], w[1], w[2], w[3]);
    }
  }
}

// Deterministic dQ. Grid: (ceil(seqlen_q / kBlockM), q_heads, batch); kNThreads threads;
// Traits::kSmemBytes of dynamic shared memory (the P tile unused).
template <typename Traits>
__global__ void __launch_bounds__(Traits::kNThreads, Traits::kMinBlocksPerSm)
    FlashBwdFp32DqKernel(const __grid_constant__ BwdParams p) {
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kChunksB = Traits::kChunksB;
  constexpr int kThreadsBD = Traits::kThreadsBD;

  extern __shared__ __align__(128) unsigned char smem[];
  float* const smem_f = reinterpret_cast<float*>(smem);
  float* const smem_k = smem_f + Traits::kKOffset;
  float* const smem_v = smem_f + Traits::kVOffset;
  float* const smem_q = smem_f + Traits::kQOffset;
  float* const smem_do = smem_f + Traits::kDoOffset;
  float* const smem_ds = smem_f + Traits::kDsOffset;
  float* const lse_tile = smem_f + Traits::kLseOffset;
  float* const d_tile = smem_f + Traits::kDOffset;

  const int tid = threadIdx.x;
  const int b = blockIdx.z;
  const int head = blockIdx.y;
  const SeqBounds seq = LocateSequence(p, b);
  const int q0 = blockIdx.x * kBlockM;
  if (q0 >= seq.len_q) return;
  const int rows = min(kBlockM, seq.len_q - q0);
  const int valid_chunks = p.head_dim / 4;
  const int kv_head = head / (p.q_heads / p.kv_heads);
  const int64_t q_row = seq.q_start + q0;

  LoadTile<Traits, kBlockM>(smem_q,
                            static_cast<const float*>(p.q) + b * p.q_batch_stride +
                                q_row * p.q_row_stride + head * p.q_head_stride,
                            p.q_row_stride, rows, valid_chunks, tid);
  LoadTile<Traits, kBlockM>(smem_do,
                            static_cast<const float*>(p.do_) + b * p.o_batch_stride +
                                q_row * p.o_row_stride + head * p.o_head_stride,
                            p.o_row_stride, rows, valid_chunks, tid);
  LoadRowStats<Traits>(lse_tile, d_tile, p, head * p.q_rows + seq.ws_start + q0, rows, tid);
  Fp32ScoreRule rule;
  rule.Init(p, seq, b, head);

  const KvTileRange ktiles =
      KvTiles(q0, rows, seq.len_q, seq.len_k, kBlockN, p.window_left, p.window_right);
  float acc[Traits::kRowsC][kChunksB][4];
#pragma unroll
  for (int r = 0; r < Traits::kRowsC; ++r) {
#pragma unroll
    for (int c = 0; c < kChunksB; ++c) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[r][c][e] = 0.f;
    }
  }
  for (int n = ktiles.begin; n < ktiles.end; ++n) {
    const int key0 = n * kBlockN;
    const int keys = min(kBlockN, seq.len_k - key0);
    // The previous key tile's readers (product C) are done with K and dS.
    __syncthreads();
    LoadTile<Traits, kBlockN>(smem_k,
                              static_cast<const float*>(p.k) + b * p.k_batch_stride +
                                  (seq.k_start + key0) * p.k_row_stride + kv_head * p.k_head_stride,
                              p.k_row_stride, keys, valid_chunks, tid);
    LoadTile<Traits, kBlockN>(smem_v,
                              static_cast<const float*>(p.v) + b * p.v_batch_stride +
                                  (seq.k_start + key0) * p.v_row_stride + kv_head * p.v_head_stride,
                              p.v_row_stride, keys, valid_chunks, tid);
    __syncthreads();
    ScoresToGrads<Traits>(smem_k, smem_v, smem_q, smem_do, lse_tile, d_tile, nullptr, smem_ds, rule,
                          key0, q0, tid);
    __syncthreads();
    AccumulateDsK<Traits>(acc, smem_ds, smem_k, tid);
  }

  // dq = scale sum dS K, every row of the tile (zeros for rows without an allowed key).
  float* const dq = static_cast<float*>(p.dq) + b * p.q_batch_stride + q_row * p.q_row_stride +
                    head * p.q_head_stride;
  const int qrow0 = tid / kThreadsBD;
  const int chunk0 = tid % kThreadsBD;
#pragma unroll
  for (int r = 0; r < Traits::kRowsC; ++r) {
    const int i = qrow0 + Traits::kThreadsCM * r;
    if (i >= rows) continue;
#pragma unroll
    for (int c = 0; c < kChunksB; ++c) {
      const int chunk = chunk0 + kThreadsBD * c;
      if (chunk >= valid_chunks) continue;
      const float(&a)[4] = acc[r][c];
      *reinterpret_cast<float4*>(dq + i * p.q_row_stride + 4 * chunk) =
          make_float4(a[0] * p.softmax_scale, a[1] * p.softmax_scale, a[2] * p.softmax_scale,
                      a[3] * p.softmax_scale);
    }
  }
}

// Preprocess, one warp per (query row, head): D = rowsum(dO * O) in float32, lse_log2 (lse *
// log2(e), +inf for lse = -inf) and, unless deterministic, the row of dq zeroed for the dK / dV
// kernel's atomics. Lane l reads 16-byte chunks l and l + 32 (head_dim <= 256).
// Grid: (ceil(seqlen_q / kRows), q_heads, batch), 32 kRows threads (kFp32PrepRows; a template,
// so that every file including this header may instantiate it).
inline constexpr int kFp32PrepRows = 4;

template <int kRows>
__global__ void __launch_bounds__(32 * kRows)
    Fp32BwdPreprocessKernel(const __grid_constant__ BwdParams p) {
  const int b = blockIdx.z;
  const int head = blockIdx.y;
  const int i = blockIdx.x * kRows + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const SeqBounds seq = LocateSequence(p, b);
  if (i >= seq.len_q) return;
  const int64_t q_row = seq.q_start + i;
  const int chunks = p.head_dim / 4;
  const float* o = static_cast<const float*>(p.o) + b * p.o_batch_stride + q_row * p.o_row_stride +
                   head * p.o_head_stride;
  const float* d_o = static_cast<const float*>(p.do_) + b * p.o_batch_stride +
                     q_row * p.o_row_stride + head * p.o_head_stride;
  float sum = 0.f;
  for (int ch = lane; ch < chunks; ch += 32) {
    const float4 x = Load4(o + 4 * ch);
    const float4 y = Load4(d_o + 4 * ch);
    sum = fmaf(x.x, y.x, sum);
    sum = fmaf(x.y, y.y, sum);
    sum = fmaf(x.z, y.z, sum);
    sum = fmaf(x.w, y.w, sum);
  }
#pragma unroll
  for (int s = 16; s >= 1; s /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, s);
  const int64_t ws = head * p.q_rows + seq.ws_start + i;
  if (lane == 0) {
    p.dsum[ws] = sum;
    const float lse = p.lse[b * p.lse_batch_stride + head * p.lse_head_stride + q_row];
    p.lse_log2[ws] = lse == -INFINITY ? INFINITY : lse * kLog2e;
  }
  if (!p.deterministic) {
    float* dq = static_cast<float*>(p.dq) + b * p.q_batch_stride + q_row * p.q_row_stride +
                head * p.q_head_stride;
    for (int ch = lane; ch < chunks; ch += 32) {
      *reinterpret_cast<float4*>(dq + 4 * ch) = make_float4(0.f, 0.f, 0.f, 0.f);
    }
  }
}

}  // namespace attention::cuda::bwd_fp32

#endif  // ATTENTION_KERNELS_CUDA_FLASH_BWD_FP32_KERNEL_CUH_
