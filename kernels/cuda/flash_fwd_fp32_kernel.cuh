// Device code of the float32 forward attention kernel: the FlashAttention-2 algorithm on
// TensorFloat-32 tensor-core products, at float32 accuracy (Precision::kFull) or at TF32
// (Precision::kTF32).
//
// Split precision (kFull): every operand x of both products is split as x = big + small, where
// big is x rounded to TF32 (11 significant bits, exact in float32 so that small = x - big is
// exact) and small is the remainder rounded to TF32; then a * b = big_a big_b + big_a small_b +
// small_a big_b + small_a small_b, and the last term (below 2^-22 |a b|) is dropped: three
// m16n8k8 TF32 MMAs per product with float32 accumulation (the "3xTF32" of CUTLASS's
// OpMultiplyAddFastF32, which PyTorch's float32 memory-efficient attention runs). The result
// carries ~2^-21 relative error per product, float32's order. kTF32 keeps the one big * big MMA.
//
// One thread block computes O and LSE for one tile of kBlockM query rows of one (sequence, head):
//   - Q (float32) is copied once to shared memory, K and V tiles of kBlockN keys stream through
//     it (cp.async, zero-filled past seqlen / head_dim), last tile first so that the tiles that
//     need masking come first;
//   - S = Q K^T: Q (A) and K (B) fragments by ldmatrix (an 8x8 16-bit matrix is an 8x4 float32
//     one: lane l gets row l / 4, column l % 4, which is the m16n8k8 TF32 fragment layout), split
//     in registers;
//   - O += P V: P is the S accumulator itself. The m16n8k8 A fragment wants (row, k) = (g, t) and
//     (g, t + 4) where the accumulator holds (g, 2t) and (g, 2t + 1) (g = lane / 4, t = lane % 4),
//     so the 8 keys of an n8 tile enter the product in the order 0, 2, 4, 6, 1, 3, 5, 7: the V
//     (B) fragment then wants keys 2t and 2t + 1 at column g, read as two 16-byte loads of V rows
//     2t and 2t + 1 at columns 4g .. 4g + 3, each of whose 4 values serves one of 4 "virtual" n8
//     tiles (virtual column g of tile i = column 4g + i). The O accumulators are thus column-
//     permuted: lane (g, t) holds columns 8t .. 8t + 7 of every 32-column group, stored as two
//     16-byte writes;
//   - the online softmax runs in float32 registers (exp2 with the scale folded in, row max by quad
//     shuffles, sums reduced once at the end); sinks join the denominator in the epilogue.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_FWD_FP32_KERNEL_CUH_
#define ATTENTION_KERNELS_CUDA_FLASH_FWD_FP32_KERNEL_CUH_

#include <cstdint>
#include <type_traits>

#include "kernels/attention_params.h"
#include "kernels/cuda/block_info.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/flash_fwd_fp32_ops.cuh"
#include "kernels/cuda/flash_fwd_fp32_traits.h"

namespace attention::cuda::fp32 {

using fwd::CpAsync16;
using fwd::CpAsyncCommit;
using fwd::CpAsyncWait;
using fwd::Exp2;
using fwd::LdsmX4;
using fwd::LoadShared128;
using fwd::SmemAddress;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ---------------------------------------------------------------------------------------------
// Split-precision operands.

// x rounded to TF32 (10 explicit mantissa bits), half-ulp ties away from zero, as float32 bits
// whose 13 low bits are zero, so that x - big is exact in float32. Integer arithmetic: adding half
// an ulp of the 10-bit mantissa carries into the exponent as rounding should; infinities stay
// infinite and NaNs NaN.
__device__ __forceinline__ uint32_t RoundToTf32Bits(float x) {
  return (__float_as_uint(x) + 0x1000u) & 0xffffe000u;
}

// N values as TF32 MMA operands: `big` always; `small` (the remainder) only at kFull.
template <int N>
struct SplitOperand {
  uint32_t big[N];
  uint32_t small[N];
};

template <Precision kPrecision, int N>
__device__ __forceinline__ void Split(const float (&x)[N], SplitOperand<N>& op) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
    if constexpr (kPrecision == Precision::kFull) {
      op.big[i] = RoundToTf32Bits(x[i]);
      op.small[i] = ToTf32(x[i] - __uint_as_float(op.big[i]));
    } else {
      op.big[i] = ToTf32(x[i]);
    }
  }
}

template <Precision kPrecision, int N>
__device__ __forceinline__ void SplitBits(const uint32_t (&bits)[N], SplitOperand<N>& op) {
  float x[N];
#pragma unroll
  for (int i = 0; i < N; ++i) x[i] = __uint_as_float(bits[i]);
  Split<kPrecision>(x, op);
}

// D += A * B at the precision's number of products: the two small cross terms first (they are
// 2^-11 of the big product, so the accumulator's rounding of them is what float32 would give),
// then big * big.
template <Precision kPrecision>
__device__ __forceinline__ void MmaSplit(float (&d)[4], const SplitOperand<4>& a,
                                         const uint32_t (&b_big)[2], const uint32_t (&b_small)[2]) {
  if constexpr (kPrecision == Precision::kFull) {
    uint32_t a_small[4] = {a.small[0], a.small[1], a.small[2], a.small[3]};
    MmaTf32(d, a_small, b_big[0], b_big[1]);
    uint32_t a_big[4] = {a.big[0], a.big[1], a.big[2], a.big[3]};
    MmaTf32(d, a_big, b_small[0], b_small[1]);
  }
  uint32_t a_big[4] = {a.big[0], a.big[1], a.big[2], a.big[3]};
  MmaTf32(d, a_big, b_big[0], b_big[1]);
}

// ---------------------------------------------------------------------------------------------
// Where one block works.

// The block's (sequence, head), its query rows [row0, row0 + rows), the window sides (-1 =
// unbounded) and the pointers of attention_params.h's addressing rule (q, o and lse at row0; k
// and v at key 0).
struct BlockCoords {
  int batch, head;
  int row0, rows;
  int len_q, len_k;
  int left, right;
  const float* q;
  const float* k;
  const float* v;
  float* o;
  float* lse;
};

// Fills `c` for query tile `m_block` of head `head` of sequence `batch`; false when the tile
// starts past its sequence (packed batches size the grid by the longest one).
template <int kBlockM>
__device__ __forceinline__ bool LocateTile(const AttentionParams& p, int m_block, int head,
                                           int batch, BlockCoords& c) {
  c.left = p.window_left;
  c.right = p.window_right;
  c.head = head;
  c.batch = batch;
  int64_t q_start = 0;
  int64_t k_start = 0;
  c.len_q = p.seqlen_q;
  c.len_k = p.seqlen_k;
  if (p.cu_seqlens_q != nullptr) {
    q_start = p.cu_seqlens_q[c.batch];
    c.len_q = p.cu_seqlens_q[c.batch + 1] - static_cast<int>(q_start);
    k_start = p.cu_seqlens_k[c.batch];
    c.len_k = p.cu_seqlens_k[c.batch + 1] - static_cast<int>(k_start);
  }
  c.row0 = m_block * kBlockM;
  if (c.row0 >= c.len_q) return false;
  c.rows = min(kBlockM, c.len_q - c.row0);
  const int kv_head = c.head / (p.q_heads / p.kv_heads);
  c.q = static_cast<const float*>(p.q) + c.batch * p.q_batch_stride +
        (q_start + c.row0) * p.q_row_stride + c.head * p.q_head_stride;
  c.k = static_cast<const float*>(p.k) + c.batch * p.k_batch_stride + k_start * p.k_row_stride +
        kv_head * p.k_head_stride;
  c.v = static_cast<const float*>(p.v) + c.batch * p.v_batch_stride + k_start * p.v_row_stride +
        kv_head * p.v_head_stride;
  c.o = static_cast<float*>(p.o) + c.batch * p.o_batch_stride +
        (q_start + c.row0) * p.o_row_stride + c.head * p.o_head_stride;
  c.lse = p.lse == nullptr ? nullptr
                           : p.lse + c.batch * p.lse_batch_stride + c.head * p.lse_head_stride +
                                 q_start + c.row0;
  return true;
}

// The (query tile, head, sequence) of rank `rank` in the order of work, `m_blocks` query tiles
// per (head, sequence). Without a right limit every tile costs the same, and rank r is query tile
// r % m_blocks of head (r / m_blocks) % q_heads of sequence r / (m_blocks * q_heads): the tiles
// of one head run together and share its K / V in L2. With a right limit (causal) a tile's cost
// grows with its row index, and the ranks walk query tiles from the last to the first, each over
// every (head, sequence): all the most expensive tiles go first and the cheapest fill the tail.
// Ordering only within a head leaves the last wave holding late heads' longest tiles next to
// idle SMs, which matters where a head has few tiles (short causal sequences;
// bench/cuda/fp32_notes.md has the measurement).
__device__ __forceinline__ void TileAtRank(const AttentionParams& p, int m_blocks, int rank,
                                           int& m_block, int& head, int& batch) {
  if (p.window_right >= 0) {
    const int heads_x_batch = p.q_heads * p.batch;
    const int rest = rank % heads_x_batch;
    m_block = m_blocks - 1 - rank / heads_x_batch;
    head = rest % p.q_heads;
    batch = rest / p.q_heads;
  } else {
    m_block = rank % m_blocks;
    const int rest = rank / m_blocks;
    head = rest % p.q_heads;
    batch = rest / p.q_heads;
  }
}

// Fills `c` for one block of the non-persistent grid (query tiles x q_heads x batch), whose
// launch order (x fastest) is the rank of TileAtRank; false as LocateTile.
template <int kBlockM>
__device__ __forceinline__ bool LocateBlock(const AttentionParams& p, BlockCoords& c) {
  int m_block;
  int head;
  int batch;
  if (p.window_right >= 0) {
    const int rank =
        static_cast<int>(blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z));
    TileAtRank(p, static_cast<int>(gridDim.x), rank, m_block, head, batch);
  } else {
    m_block = static_cast<int>(blockIdx.x);
    head = static_cast<int>(blockIdx.y);
    batch = static_cast<int>(blockIdx.z);
  }
  return LocateTile<kBlockM>(p, m_block, head, batch, c);
}

// Copies rows [0, valid_rows) x 16-byte chunks [0, valid_chunks) of a [kRows, kHeadDim] float32
// global tile (row stride `row_stride` elements) into the swizzled shared tile `smem_tile`; the
// rest is zero-filled, so padded rows and columns contribute nothing to S or O.
//
// Requires a 128-byte aligned `smem_tile` (the swizzle touches address bits 4-6 only).
// The copy loops are not unrolled: unrolled, ptxas computes every iteration's 64-bit source
// address ahead of the copies, and those registers pushed the kernel into spills (e.g. d = 128,
// 128 x 32 tiles: 380 bytes of spill stores unrolled, 36 rolled; 16 KB per tile needs 8
// iterations, a handful of instructions each, against thousands of MMA-side instructions).
template <typename Tile, int kRows, int kThreads>
__device__ __forceinline__ void LoadTile(uint32_t smem_tile, const float* gmem, int64_t row_stride,
                                         int valid_rows, int valid_chunks, int tid) {
  constexpr int kChunks = Tile::kChunks;
  constexpr int kTotal = kRows * kChunks;
  constexpr int kIters = (kTotal + kThreads - 1) / kThreads;
  constexpr int kRowsPerIter = kThreads / kChunks;
  if constexpr (kThreads % kChunks == 0 && (kRowsPerIter & (kRowsPerIter - 1)) == 0) {
    // Every thread copies one chunk column of rows row0 + it * kRowsPerIter (a power of two, and
    // row0 < kRowsPerIter, so the row's swizzle bits are row0's XOR those of it * kRowsPerIter).
    const int row0 = tid / kChunks;
    const int chunk = tid % kChunks;
    const uint32_t smem0 = smem_tile + Tile::Offset(row0, chunk);
    const int64_t step = kRowsPerIter * row_stride;
    const float* src = gmem + row0 * row_stride + chunk * 4;
#pragma unroll 1
    for (int it = 0; it < kIters; ++it) {
      const int row = row0 + it * kRowsPerIter;
      if (kTotal % kThreads == 0 || row < kRows) {
        const bool pred = row < valid_rows && chunk < valid_chunks;
        const uint32_t dst = Tile::OffsetAfterRows(smem0, static_cast<uint32_t>(it * kRowsPerIter));
        // A predicated-off copy reads nothing; its address is the tile's first element.
        CpAsync16(dst, pred ? src : gmem, pred);
      }
      src += step;
    }
  } else {
#pragma unroll 1
    for (int it = 0; it < kIters; ++it) {
      const int idx = tid + it * kThreads;
      if (kTotal % kThreads == 0 || idx < kTotal) {
        const int row = idx / kChunks;
        const int chunk = idx % kChunks;
        const bool pred = row < valid_rows && chunk < valid_chunks;
        CpAsync16(smem_tile + Tile::Offset(row, chunk),
                  pred ? gmem + row * row_stride + chunk * 4 : gmem, pred);
      }
    }
  }
}

// A block none of whose rows has an allowed key: o = 0 and lse = `empty_lse` (the sink, or -inf).
template <int kThreads>
__device__ __forceinline__ void StoreEmptyRows(const BlockCoords& c, int64_t o_row_stride,
                                               int head_dim, float empty_lse, int tid) {
  const int chunks = head_dim / 4;
  for (int idx = tid; idx < c.rows * chunks; idx += kThreads) {
    const int r = idx / chunks;
    const int ch = idx % chunks;
    *reinterpret_cast<float4*>(c.o + r * o_row_stride + ch * 4) = make_float4(0.f, 0.f, 0.f, 0.f);
  }
  if (c.lse != nullptr) {
    for (int r = tid; r < c.rows; r += kThreads) c.lse[r] = empty_lse;
  }
}

// ---------------------------------------------------------------------------------------------
// Scores, masks and the online softmax. A warp's S accumulator acc_s[mt][nt][e] of lane (g, t)
// is row 16 mt + g + 8 (e / 2) of the warp's rows, key 8 nt + 2t + e % 2 of the tile.

// kGeneral: scores -> logits in the contract's order (scale, softcap, ALiBi, additive mask); a
// false bool mask entry drops the key. tanhf (not the fast exp2-based tanh) keeps a softcapped
// logit within float32 accuracy.
template <int kMTiles, int kNTilesS>
__device__ __forceinline__ void ScoresToLogits(float (&acc_s)[kMTiles][kNTilesS][4],
                                               const AttentionParams& p, const BlockCoords& c,
                                               int warp_row0, int key0, int lane) {
  const int g = lane / 4;
  const int t = lane % 4;
  const int shift = c.len_k - c.len_q;
  const float softcap = p.softcap;
  const float cap_scale = softcap > 0.f ? p.softmax_scale / softcap : 0.f;
  const float slope =
      p.alibi_slopes != nullptr ? p.alibi_slopes[c.batch * p.alibi_batch_stride + c.head] : 0.f;
  const int64_t mask_base = c.batch * p.mask_batch_stride + c.head * p.mask_head_stride;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int nt = 0; nt < kNTilesS; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = c.row0 + warp_row0 + mt * 16 + g + 8 * (e / 2);
        const int j = key0 + nt * 8 + 2 * t + e % 2;
        float s = acc_s[mt][nt][e];
        s = softcap > 0.f ? softcap * tanhf(s * cap_scale) : s * p.softmax_scale;
        s -= slope * fabsf(static_cast<float>(i + shift - j));
        if (p.mask_kind != MaskKind::kNone && i < c.len_q && j < c.len_k) {
          const int64_t idx = mask_base + i * p.mask_row_stride + j * p.mask_col_stride;
          if (p.mask_kind == MaskKind::kBool) {
            if (static_cast<const uint8_t*>(p.mask)[idx] == 0) s = -INFINITY;
          } else {
            s += static_cast<const float*>(p.mask)[idx];
          }
        }
        acc_s[mt][nt][e] = s;
      }
    }
  }
}

// Keys past len_k and, with a window, keys outside [p(i) - left, p(i) + right] get -inf.
template <int kMTiles, int kNTilesS>
__device__ __forceinline__ void MaskOutsideWindow(float (&acc_s)[kMTiles][kNTilesS][4],
                                                  const BlockCoords& c, int warp_row0, int key0,
                                                  int lane) {
  const int g = lane / 4;
  const int t = lane % 4;
  const int shift = c.len_k - c.len_q;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      // Allowed keys of this row relative to key0: [key_lo, key_hi). The host API clamps window
      // sides to the sequence lengths, so none of this overflows an int.
      const int pos = c.row0 + warp_row0 + mt * 16 + g + 8 * hf + shift;
      const int key_lo = (c.left >= 0 ? max(pos - c.left, 0) : 0) - key0;
      const int key_hi = (c.right >= 0 ? min(pos + c.right + 1, c.len_k) : c.len_k) - key0;
#pragma unroll
      for (int nt = 0; nt < kNTilesS; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int j = nt * 8 + 2 * t + e;
          if (j < key_lo || j >= key_hi) acc_s[mt][nt][2 * hf + e] = -INFINITY;
        }
      }
    }
  }
}

// Running softmax state of the two rows per m16 tile a thread holds.
template <int kMTiles>
struct RowStats {
  float max[kMTiles][2];  // of the scores as they enter the softmax (raw or logits)
  float sum[kMTiles][2];  // this thread's partial sums; reduced across the quad at the end
};

// One KV tile of the online softmax: new row maxima, P = exp2(s * scale_log2 - max * scale_log2)
// in place of S, the running sums rescaled and increased by P's row sums, O rescaled when a row
// maximum moved (warp-uniform test: once the maxima settle, no rescale at all).
template <int kMTiles, int kNTilesS, int kNTilesO>
__device__ __forceinline__ void OnlineSoftmax(float (&acc_s)[kMTiles][kNTilesS][4],
                                              float (&acc_o)[kMTiles][kNTilesO][4],
                                              RowStats<kMTiles>& stats, float scale_log2) {
  float alpha[kMTiles][2];
  bool moved = false;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float mx = stats.max[mt][hf];
#pragma unroll
      for (int nt = 0; nt < kNTilesS; ++nt) {
        mx = fmaxf(mx, fmaxf(acc_s[mt][nt][2 * hf], acc_s[mt][nt][2 * hf + 1]));
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      // A row with no allowed key so far keeps max -inf; subtracting 0 keeps its P at 0.
      const float max_scaled = mx == -INFINITY ? 0.f : mx * scale_log2;
      alpha[mt][hf] = Exp2(stats.max[mt][hf] * scale_log2 - max_scaled);
      moved |= mx != stats.max[mt][hf];
      stats.max[mt][hf] = mx;
#pragma unroll
      for (int nt = 0; nt < kNTilesS; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          acc_s[mt][nt][2 * hf + e] =
              Exp2(fmaf(acc_s[mt][nt][2 * hf + e], scale_log2, -max_scaled));
        }
      }
    }
  }
  const bool any_moved = __any_sync(0xffffffffu, moved);
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      if (any_moved) {
        stats.sum[mt][hf] *= alpha[mt][hf];
#pragma unroll
        for (int dt = 0; dt < kNTilesO; ++dt) {
          acc_o[mt][dt][2 * hf] *= alpha[mt][hf];
          acc_o[mt][dt][2 * hf + 1] *= alpha[mt][hf];
        }
      }
#pragma unroll
      for (int nt = 0; nt < kNTilesS; ++nt) {
        stats.sum[mt][hf] += acc_s[mt][nt][2 * hf] + acc_s[mt][nt][2 * hf + 1];
      }
    }
  }
}

// Epilogue of one warp: O /= the row's denominator (with the sink's term when `has_sink`), LSE =
// natural log of the denominator plus the max, written straight from registers: lane (g, t) holds
// columns 32 q + 8 t .. + 7 of its rows (the permutation of the P V product), two 16-byte stores.
// A row with no allowed key: o = 0, lse = the sink (or -inf). `sink` is a raw logit.
template <int kMTiles, int kNTilesO>
__device__ __forceinline__ void StoreOutput(float (&acc_o)[kMTiles][kNTilesO][4],
                                            const RowStats<kMTiles>& stats, float scale_log2,
                                            bool has_sink, float sink, const BlockCoords& c,
                                            int64_t o_row_stride, int head_dim, int warp_row0,
                                            int lane) {
  const int g = lane / 4;
  const int t = lane % 4;
  const float sink_log2 = sink * kLog2e;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float sum = stats.sum[mt][hf];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      float inv = 0.f;
      float lse = has_sink ? sink : -INFINITY;
      if (sum > 0.f) {
        const float max_log2 = stats.max[mt][hf] * scale_log2;
        if (has_sink) {
          // Denominator sum * 2^max + 2^sink, taken relative to the larger exponent so that
          // neither term overflows: total = sum * 2^(max - top) + 2^(sink - top).
          const float top = fmaxf(max_log2, sink_log2);
          const float f = Exp2(max_log2 - top);
          const float total = sum * f + Exp2(sink_log2 - top);
          inv = f / total;
          lse = (top + log2f(total)) * kLn2;
        } else {
          inv = 1.f / sum;
          lse = (max_log2 + log2f(sum)) * kLn2;
        }
      }
      const int r = warp_row0 + mt * 16 + g + 8 * hf;
      if (r < c.rows) {
        float* row = c.o + r * o_row_stride;
#pragma unroll
        for (int qd = 0; qd < kNTilesO / 4; ++qd) {
          const int col = 32 * qd + 8 * t;
          if (col < head_dim) {
            const float4 lo = make_float4(
                acc_o[mt][4 * qd][2 * hf] * inv, acc_o[mt][4 * qd + 1][2 * hf] * inv,
                acc_o[mt][4 * qd + 2][2 * hf] * inv, acc_o[mt][4 * qd + 3][2 * hf] * inv);
            const float4 hi = make_float4(
                acc_o[mt][4 * qd][2 * hf + 1] * inv, acc_o[mt][4 * qd + 1][2 * hf + 1] * inv,
                acc_o[mt][4 * qd + 2][2 * hf + 1] * inv, acc_o[mt][4 * qd + 3][2 * hf + 1] * inv);
            *reinterpret_cast<float4*>(row + col) = lo;
            *reinterpret_cast<float4*>(row + col + 4) = hi;
          }
        }
        if (c.lse != nullptr && t == 0) c.lse[r] = lse;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The kernel.

// The persistent schedule (kFp32Persistent): block b of G takes, in round r = 0, 1, ..., the
// tile of rank r G + b in even rounds and r G + G - 1 - b in odd ones (TileAtRank's order, which
// puts the costliest causal tiles first; the snake evens out what each block gets per pair of
// rounds). Returns the first round >= `round` whose tile has a key to attend to, with `c` and
// `tiles` filled, storing the empty tiles passed on the way (o = 0, lse = the sink or -inf); -1
// when none is left.
template <int kBlockM, int kBlockN, int kThreads>
__device__ __forceinline__ int NextPersistentTile(const AttentionParams& p, int round,
                                                  BlockCoords& c, KvTileRange& tiles, int tid) {
  const int m_blocks = (p.seqlen_q + kBlockM - 1) / kBlockM;
  const int total = m_blocks * p.q_heads * p.batch;
  const int blocks = static_cast<int>(gridDim.x);
  const int b = static_cast<int>(blockIdx.x);
  for (;; ++round) {
    const int rank = round * blocks + ((round & 1) != 0 ? blocks - 1 - b : b);
    if (rank >= total) return -1;
    int m_block;
    int head;
    int batch;
    TileAtRank(p, m_blocks, rank, m_block, head, batch);
    if (!LocateTile<kBlockM>(p, m_block, head, batch, c)) continue;
    tiles = KvTiles(c.row0, c.rows, c.len_q, c.len_k, kBlockN, c.left, c.right);
    if (tiles.end > tiles.begin) return round;
    const float sink = p.sink_logits != nullptr
                           ? p.sink_logits[c.batch * p.sink_batch_stride + c.head]
                           : -INFINITY;
    StoreEmptyRows<kThreads>(c, p.o_row_stride, p.head_dim, sink, tid);
  }
}

// Grid: (ceil(seqlen_q / kBlockM), q_heads, batch), or with kFp32Persistent (G) for any G >= 1
// (the launch takes SMs x blocks per SM); Traits::kNThreads threads; Traits::kSmemBytes of
// dynamic shared memory. `p` is normalized (causal folded into window_right, windows clamped) and
// checked by the host API: float32 q, k, v, o with 16-byte aligned rows (strides multiples of 4
// elements); device pointers.
template <typename Traits, Fp32Variant kVariant, Precision kPrecision>
__global__ void __launch_bounds__(Traits::kNThreads, Traits::kMinBlocksPerSm)
    FlashFwdFp32Kernel(const __grid_constant__ AttentionParams p) {
  static_assert(kPrecision == Precision::kFull || kPrecision == Precision::kTF32,
                "bfloat16 precision runs the 16-bit kernel on converted inputs");
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kMTiles = Traits::kMTiles;
  constexpr int kNTilesS = Traits::kNTilesS;
  constexpr int kNTilesO = Traits::kNTilesO;
  constexpr int kStages = Traits::kStages;
  constexpr int kThreads = Traits::kNThreads;
  constexpr bool kGeneral = kVariant == Fp32Variant::kGeneral;
  constexpr bool kPersistent = Traits::kPersistent;
  // Q K^T's k-loop: fully unrolled, or 4 k-steps per iteration (kFp32RolledQk). Read only by
  // `#pragma unroll`, which the host compiler of the CPU emulation ignores.
  [[maybe_unused]] constexpr int kQkUnroll = Traits::kRolledQk ? 4 : kHeadDim / 8;
  using QTile = typename Traits::QTile;
  using KVTile = typename Traits::KVTile;

  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t smem_q = SmemAddress(smem) + Traits::kSmemQOffset;
  const uint32_t smem_k = SmemAddress(smem) + Traits::kSmemKOffset;
  const uint32_t smem_v = SmemAddress(smem) + Traits::kSmemVOffset;

  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int valid_chunks = p.head_dim / 4;
  const bool has_sink = p.sink_logits != nullptr;

  // Lane roles. ldmatrix: the Q (A) fragment reads row lane % 8 + 8 * ((lane / 8) % 2) at chunk
  // lane / 16; the K (B) fragments of two n8 tiles read row lane % 8 + 8 * (lane / 16) at chunk
  // (lane / 8) % 2. V: lane (g, t) reads rows 2t and 2t + 1 at chunk g of each 32-column group.
  const int g = lane / 4;
  const int t = lane % 4;
  const int warp_row0 = warp * 16 * kMTiles;
  const uint32_t q_lane = QTile::LaneBase(
      smem_q, static_cast<uint32_t>(warp_row0 + lane % 8 + 8 * ((lane / 8) % 2)), lane / 16);
  const uint32_t k_row = lane % 8 + 8 * (lane / 16);
  const uint32_t k_chunk = (lane / 8) % 2;
  // Offset(8 kk + r, 8 qd + g) = Offset(r, g) + 8 kk rows + 128 qd bytes for r, g < 8: the
  // swizzle of a row depends on row % 8 only and permutes chunks within 128-byte groups.
  const uint32_t v_offset[2] = {KVTile::Offset(2 * t, g), KVTile::Offset(2 * t + 1, g)};

  const float scale_log2 = kGeneral ? kLog2e : p.softmax_scale * kLog2e;

  // Q and the tile's first (last-keyed) K tile, one copy group the first step waits for.
  const auto load_q_and_first_k = [&](const BlockCoords& cc, const KvTileRange& tr) {
    const int n_first = tr.end - 1;
    LoadTile<QTile, kBlockM, kThreads>(smem_q, cc.q, p.q_row_stride, cc.rows, valid_chunks, tid);
    LoadTile<KVTile, kBlockN, kThreads>(smem_k, cc.k + int64_t{n_first} * kBlockN * p.k_row_stride,
                                        p.k_row_stride, cc.len_k - n_first * kBlockN, valid_chunks,
                                        tid);
  };

  // One query tile, from its first step to its epilogue. On entry its Q and first K tile are in
  // flight as the newest copy group, and (not persistent) its first V tile as a second one. With
  // kFp32Persistent the last step's mid-point (every warp past Q K^T, so the Q and K buffers are
  // free) calls `prefetch_next`, which issues the next tile's copies into the open group.
  const auto run_tile = [&](const BlockCoords& c, const KvTileRange& tiles, auto&& prefetch_next) {
    const float sink = has_sink ? p.sink_logits[c.batch * p.sink_batch_stride + c.head] : -INFINITY;
    float acc_o[kMTiles][kNTilesO][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int dt = 0; dt < kNTilesO; ++dt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_o[mt][dt][e] = 0.f;
      }
    }
    RowStats<kMTiles> stats;
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        stats.max[mt][hf] = -INFINITY;
        stats.sum[mt][hf] = 0.f;
      }
    }

    const int n_first = tiles.end - 1;
    int stage = 0;
    // One K/V tile. `mask` is std::true_type / std::false_type (a masked and an unmasked copy of
    // the body) or, with kFp32OneBody, a bool tested at run time.
    const auto step = [&](const int n, auto mask) {
      const int key0 = n * kBlockN;
      const uint32_t k_tile = smem_k + stage * KVTile::kBytes;
      const uint32_t v_tile = smem_v + stage * KVTile::kBytes;
      const uint32_t k_lane = KVTile::LaneBase(k_tile, k_row, k_chunk);

      // Two stages: K[n], V[n] (issued one iteration ago) have landed and every warp is past the
      // previous iteration, so the other buffers are free: prefetch K[n-1], V[n-1]. One stage:
      // K[n] has landed and the V buffer is free: fetch V[n] behind Q K^T (except the first
      // tile's of a non-persistent block, which came with the prologue and may be in flight).
      if (kStages == 1 && !kPersistent && n == n_first) {
        CpAsyncWait<1>();
      } else {
        CpAsyncWait<0>();
      }
      __syncthreads();
      if constexpr (kStages == 2) {
        if (n > tiles.begin) {
          LoadTile<KVTile, kBlockN, kThreads>(smem_k + (stage ^ 1) * KVTile::kBytes,
                                              c.k + int64_t{key0 - kBlockN} * p.k_row_stride,
                                              p.k_row_stride, kBlockN, valid_chunks, tid);
          LoadTile<KVTile, kBlockN, kThreads>(smem_v + (stage ^ 1) * KVTile::kBytes,
                                              c.v + int64_t{key0 - kBlockN} * p.v_row_stride,
                                              p.v_row_stride, kBlockN, valid_chunks, tid);
        }
      } else if (kPersistent || n != n_first) {
        LoadTile<KVTile, kBlockN, kThreads>(smem_v, c.v + int64_t{key0} * p.v_row_stride,
                                            p.v_row_stride, c.len_k - key0, valid_chunks, tid);
      }
      CpAsyncCommit();

      // S = Q K^T for this warp's rows: [16 * kMTiles, kBlockN] in float32 registers.
      float acc_s[kMTiles][kNTilesS][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
        for (int nt = 0; nt < kNTilesS; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) acc_s[mt][nt][e] = 0.f;
        }
      }
#pragma unroll kQkUnroll
      for (int ks = 0; ks < kHeadDim / 8; ++ks) {
        SplitOperand<4> qa[kMTiles];
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          uint32_t raw[4];
          LdsmX4(raw, QTile::Address(q_lane, mt * 16, 2 * ks));
          SplitBits<kPrecision>(raw, qa[mt]);
        }
#pragma unroll
        for (int np = 0; np < kNTilesS / 2; ++np) {
          uint32_t raw[4];
          LdsmX4(raw, KVTile::Address(k_lane, np * 16, 2 * ks));
          SplitOperand<4> kb;
          SplitBits<kPrecision>(raw, kb);
          const uint32_t b0_big[2] = {kb.big[0], kb.big[1]};
          const uint32_t b0_small[2] = {kb.small[0], kb.small[1]};
          const uint32_t b1_big[2] = {kb.big[2], kb.big[3]};
          const uint32_t b1_small[2] = {kb.small[2], kb.small[3]};
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) {
            MmaSplit<kPrecision>(acc_s[mt][2 * np], qa[mt], b0_big, b0_small);
            MmaSplit<kPrecision>(acc_s[mt][2 * np + 1], qa[mt], b1_big, b1_small);
          }
        }
      }

      if constexpr (kGeneral) ScoresToLogits(acc_s, p, c, warp_row0, key0, lane);
      if constexpr (std::is_same_v<decltype(mask), bool>) {
        if (mask) MaskOutsideWindow(acc_s, c, warp_row0, key0, lane);
      } else if constexpr (decltype(mask)::value) {
        MaskOutsideWindow(acc_s, c, warp_row0, key0, lane);
      }
      OnlineSoftmax(acc_s, acc_o, stats, scale_log2);

      if constexpr (kStages == 1) {
        // V[n] has landed and every warp is done with K[n] (and Q, on the last step): fetch
        // K[n-1] into its buffer, or (persistent, last step) the next tile's Q and first K.
        CpAsyncWait<0>();
        __syncthreads();
        if (n > tiles.begin) {
          LoadTile<KVTile, kBlockN, kThreads>(smem_k,
                                              c.k + int64_t{key0 - kBlockN} * p.k_row_stride,
                                              p.k_row_stride, kBlockN, valid_chunks, tid);
        } else if constexpr (kPersistent) {
          prefetch_next();
        }
        CpAsyncCommit();
      }

      // O += P V, 32 columns of O at a time, 8 keys (one n8 tile of S) per MMA; see the file
      // comment for the permutation. The tensor cores round each MMA's sum toward zero, so a
      // long chain of MMAs into one accumulator drifts toward zero by up to an ulp per MMA (3e-5
      // relative at 3000 keys): this tile's products go into a fresh accumulator, which then
      // joins O with a float32 add that rounds to nearest. The chain is 3 kBlockN / 8 MMAs long
      // whatever the context. P's split is recomputed per 32 columns rather than held for all of
      // them (registers).
#pragma unroll
      for (int qd = 0; qd < kHeadDim / 32; ++qd) {
        float part[kMTiles][4][4];
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int e = 0; e < 4; ++e) part[mt][i][e] = 0.f;
          }
        }
#pragma unroll
        for (int kk = 0; kk < kNTilesS; ++kk) {
          SplitOperand<4> pa[kMTiles];
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) {
            const float x[4] = {acc_s[mt][kk][0], acc_s[mt][kk][2], acc_s[mt][kk][1],
                                acc_s[mt][kk][3]};
            Split<kPrecision>(x, pa[mt]);
          }
          const uint32_t at =
              v_tile + static_cast<uint32_t>(kk * 8) * KVTile::kRowBytes + 128u * qd;
          const uint4 v0 = LoadShared128(at + v_offset[0]);  // key 2t, columns 32 qd + 4g + i
          const uint4 v1 = LoadShared128(at + v_offset[1]);  // key 2t + 1
          const uint32_t r0[4] = {v0.x, v0.y, v0.z, v0.w};
          const uint32_t r1[4] = {v1.x, v1.y, v1.z, v1.w};
          SplitOperand<4> vb0, vb1;
          SplitBits<kPrecision>(r0, vb0);
          SplitBits<kPrecision>(r1, vb1);
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const uint32_t b_big[2] = {vb0.big[i], vb1.big[i]};
            const uint32_t b_small[2] = {vb0.small[i], vb1.small[i]};
#pragma unroll
            for (int mt = 0; mt < kMTiles; ++mt) {
              MmaSplit<kPrecision>(part[mt][i], pa[mt], b_big, b_small);
            }
          }
        }
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int e = 0; e < 4; ++e) acc_o[mt][4 * qd + i][e] += part[mt][i][e];
          }
        }
      }
      if constexpr (kStages == 2) stage ^= 1;
    };

    // KV tiles in descending order: [top, end) need the element-wise mask (sequence tail, right
    // side of the window), then [bottom, top) run unmasked, then [begin, bottom) masked again
    // (left side of the window). The general variant masks every tile.
    int top = tiles.end;
    int bottom = tiles.begin;
    if constexpr (kGeneral) {
      top = bottom;
    } else {
      while (top > tiles.begin &&
             TileNeedsMask(top - 1, c.row0, c.rows, c.len_q, c.len_k, kBlockN, c.left, c.right)) {
        --top;
      }
      while (bottom < top &&
             TileNeedsMask(bottom, c.row0, c.rows, c.len_q, c.len_k, kBlockN, c.left, c.right)) {
        ++bottom;
      }
    }
    if constexpr (Traits::kOneBody) {
#pragma unroll 1
      for (int n = tiles.end - 1; n >= tiles.begin; --n) step(n, n >= top || n < bottom);
    } else {
      int n = tiles.end - 1;
      for (; n >= top; --n) step(n, std::true_type{});
      for (; n >= bottom; --n) step(n, std::false_type{});
      for (; n >= tiles.begin; --n) step(n, std::true_type{});
    }

    StoreOutput(acc_o, stats, scale_log2, has_sink, sink, c, p.o_row_stride, p.head_dim, warp_row0,
                lane);
  };

  if constexpr (kPersistent) {
    BlockCoords c;
    KvTileRange tiles;
    int round = NextPersistentTile<kBlockM, kBlockN, kThreads>(p, 0, c, tiles, tid);
    if (round < 0) return;
    load_q_and_first_k(c, tiles);
    CpAsyncCommit();
    for (;;) {
      int next = -1;
      run_tile(c, tiles, [&] {
        BlockCoords cn;
        KvTileRange tn;
        next = NextPersistentTile<kBlockM, kBlockN, kThreads>(p, round + 1, cn, tn, tid);
        if (next >= 0) load_q_and_first_k(cn, tn);
      });
      if (next < 0) break;
      // The next tile's coordinates again (cheaper than holding them in registers through the
      // last step's P V): NextPersistentTile found it has keys, so nothing is stored twice.
      round = next;
      NextPersistentTile<kBlockM, kBlockN, kThreads>(p, round, c, tiles, tid);
    }
  } else {
    BlockCoords c;
    if (!LocateBlock<kBlockM>(p, c)) return;
    const KvTileRange tiles = KvTiles(c.row0, c.rows, c.len_q, c.len_k, kBlockN, c.left, c.right);
    if (tiles.end <= tiles.begin) {
      const float sink =
          has_sink ? p.sink_logits[c.batch * p.sink_batch_stride + c.head] : -INFINITY;
      StoreEmptyRows<kThreads>(c, p.o_row_stride, p.head_dim, sink, tid);
      return;
    }
    // Prologue: Q and the first K tile in one copy group, the first V tile in a second one, so
    // that V's latency hides behind the first Q K^T.
    load_q_and_first_k(c, tiles);
    CpAsyncCommit();
    const int n_first = tiles.end - 1;
    LoadTile<KVTile, kBlockN, kThreads>(smem_v, c.v + int64_t{n_first} * kBlockN * p.v_row_stride,
                                        p.v_row_stride, c.len_k - n_first * kBlockN, valid_chunks,
                                        tid);
    CpAsyncCommit();
    run_tile(c, tiles, [] {});
  }
}

}  // namespace attention::cuda::fp32

#endif  // ATTENTION_KERNELS_CUDA_FLASH_FWD_FP32_KERNEL_CUH_
