// Device code of the backward kernels (FlashAttention-2's backward on mma.sync m16n8k16, float32
// accumulation). Per (sequence, query head) the gradients of sum(o * do) are, with P recomputed
// from the forward's lse (no seqlen_q x seqlen_k buffer anywhere):
//   D = rowsum(dO * O)                           (preprocess, flash_bwd_prepost.cu)
//   P = exp(logit(Q K^T) - lse), 0 where a key is not allowed or lse = -inf
//   dV += P^T dO,  dP = dO V^T,  dS = P * (dP - D) * softcap'
//   dK += scale dS^T Q,  dQ += scale dS K
//
// FlashBwdKernel: one block per (key tile of kBlockN keys, KV head, sequence). K and V are
// loaded once; the block loops over the query heads of the KV head's group and, for each, over
// the query tiles that can see the key tile (block_info.h's tile range with the roles of queries
// and keys swapped), so dK and dV of the KV head are summed in registers with no atomics. Per
// query tile:
//   A. S^T = K Q^T and dP^T = V dO^T in registers, warps as kSdpWarpsN x kSdpWarpsM over
//      [keys, queries]; P^T and dS^T computed element-wise and stored as 16-bit tiles in shared
//      memory;
//   B. dV += P^T dO and dK += dS^T Q, warps as kDkvWarpsN x kDkvWarpsD over [keys, head_dim]
//      (dO and Q read with ldmatrix.trans);
//   C. (unless deterministic) dQ_partial = dS K, warps as kDqWarpsM x kDqWarpsD over [queries,
//      head_dim] (dS read transposed from the dS^T tile), added into the float32 dq_accum with
//      atomics; the next query tile's Q, dO, lse and D copies fly meanwhile.
// Each product has its own warp grid (flash_bwd_traits.h), a warp owning one or more m16 tiles
// of rows in each.
// FlashBwdDqKernel (deterministic mode): one block per (query tile, query head, sequence), the
// forward's layout: S = Q K^T and dP = dO V^T per key tile, dS in registers becomes the A operand
// of dQ += dS K directly; dq is written once, so it is bit-identical run to run.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_BWD_KERNEL_CUH_
#define ATTENTION_KERNELS_CUDA_FLASH_BWD_KERNEL_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/attention_params.h"
#include "kernels/cuda/block_info.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/flash_bwd_launch.h"
#include "kernels/cuda/flash_bwd_traits.h"
#include "kernels/cuda/flash_fwd_common.cuh"

namespace attention::cuda::bwd {

using fwd::CpAsync16;
using fwd::CpAsyncCommit;
using fwd::CpAsyncWait;
using fwd::Exp2;
using fwd::kLog2e;
using fwd::LdsmX4;
using fwd::LdsmX4Trans;
using fwd::LoadShared128;
using fwd::LoadTile;
using fwd::MmaOps;
using fwd::SmemAddress;
using fwd::StoreShared32;
using fwd::Tanh;

// One sequence of the launch: its row offsets and lengths (dense: b * seqlen, seqlen_q / _k;
// packed: cu_seqlens).
struct SeqBounds {
  int64_t q_start, k_start;  // rows of q / k before the sequence (0 for dense: batch strides)
  int64_t ws_start;          // its first workspace row (flash_bwd_launch.h)
  int len_q, len_k;
};

__device__ __forceinline__ SeqBounds LocateSequence(const BwdParams& p, int b) {
  SeqBounds s;
  if (p.cu_seqlens_q != nullptr) {
    s.q_start = p.cu_seqlens_q[b];
    s.k_start = p.cu_seqlens_k[b];
    s.len_q = p.cu_seqlens_q[b + 1] - static_cast<int>(s.q_start);
    s.len_k = p.cu_seqlens_k[b + 1] - static_cast<int>(s.k_start);
    s.ws_start = s.q_start;
  } else {
    s.q_start = 0;
    s.k_start = 0;
    s.len_q = p.seqlen_q;
    s.len_k = p.seqlen_k;
    s.ws_start = int64_t{b} * p.seqlen_q;
  }
  return s;
}

// The score -> P and dS rule of one (sequence, query head), element by element: raw score s
// (q . k, unscaled) and dp (dO . v) of query row i and key j (local to the sequence) into
// p = exp(logit - lse) and ds = p * (dp - D) * softcap'. `lse_log2` is the workspace's (+inf
// for a row without any allowed key). kGeneral: softcap, ALiBi and masks as the forward's
// ScoresToLogits (flash_fwd_common.cuh); otherwise the logit is scale * s with scale > 0.
// kExactTanh: softcap through tanhf instead of the fast Tanh, whose ~1e-7 absolute error would be
// 3e-6 of a softcap-30 logit (the float32 backward's).
template <bool kGeneral, bool kExactTanh = false>
struct ScoreRule {
  float scale;       // softmax_scale
  float scale_log2;  // softmax_scale * log2(e)
  float softcap, cap_scale;
  float slope;
  const void* mask;
  MaskKind mask_kind;
  int64_t mask_base, mask_row_stride, mask_col_stride;
  int len_q, len_k, shift, left, right;

  __device__ __forceinline__ void Init(const BwdParams& p, const SeqBounds& s, int b, int head) {
    scale = p.softmax_scale;
    scale_log2 = p.softmax_scale * kLog2e;
    softcap = p.softcap;
    cap_scale = p.softcap > 0.f ? p.softmax_scale / p.softcap : 0.f;
    slope = p.alibi_slopes != nullptr ? p.alibi_slopes[b * p.alibi_batch_stride + head] : 0.f;
    mask = p.mask;
    mask_kind = p.mask_kind;
    mask_base = b * p.mask_batch_stride + head * p.mask_head_stride;
    mask_row_stride = p.mask_row_stride;
    mask_col_stride = p.mask_col_stride;
    len_q = s.len_q;
    len_k = s.len_k;
    shift = s.len_k - s.len_q;
    left = p.window_left;
    right = p.window_right;
  }

  // Whether key j is allowed for query row i: inside both sequences and the window (the mask is
  // Grad's). Window sides are clamped by the host (ClampWindow), so nothing overflows an int.
  __device__ __forceinline__ bool InBounds(int i, int j) const {
    const int pos = i + shift;
    return i < len_q && j < len_k && (left < 0 || j >= pos - left) &&
           (right < 0 || j <= pos + right);
  }

  // The dense rule's p alone (kGeneral false): exp2(s scale log2(e) - lse_log2), 0 for a key
  // outside the bounds when check_bounds; ds is then p * (dp - D).
  __device__ __forceinline__ float Prob(float s, float lse_log2, int i, int j,
                                        bool check_bounds) const {
    static_assert(!kGeneral, "the general rule's ds needs the raw score (softcap)");
    const float p = Exp2(fmaf(s, scale_log2, -lse_log2));
    return check_bounds && !InBounds(i, j) ? 0.f : p;
  }

  template <bool kCheckBounds>
  __device__ __forceinline__ void Grad(float s, float dp, float lse_log2, float d, int i, int j,
                                       float& p_out, float& ds_out) const {
    if constexpr (!kGeneral) {
      float p = Exp2(fmaf(s, scale_log2, -lse_log2));
      if (kCheckBounds && !InBounds(i, j)) p = 0.f;
      p_out = p;
      ds_out = p * (dp - d);
    } else {
      bool allowed = !kCheckBounds || InBounds(i, j);
      float logit;
      float dcap = 1.f;
      if (softcap > 0.f) {
        const float th = kExactTanh ? tanhf(s * cap_scale) : Tanh(s * cap_scale);
        logit = softcap * th;
        dcap = 1.f - th * th;
      } else {
        logit = s * scale;
      }
      logit -= slope * fabsf(static_cast<float>(i + shift - j));
      if (mask_kind != MaskKind::kNone && allowed) {
        const int64_t idx = mask_base + i * mask_row_stride + j * mask_col_stride;
        if (mask_kind == MaskKind::kBool) {
          allowed = static_cast<const uint8_t*>(mask)[idx] != 0;
        } else {
          logit += static_cast<const float*>(mask)[idx];
        }
      }
      const float p = allowed ? Exp2(fmaf(logit, kLog2e, -lse_log2)) : 0.f;
      p_out = p;
      ds_out = p * (dp - d) * dcap;
    }
  }
};

// dst[0] += x, dst[1] += y atomically (dst 8-byte aligned): one vector reduction on sm_90
// (red.global.add.v2.f32), two scalar ones before it.
__device__ __forceinline__ void AtomicAdd2(float* dst, float x, float y) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(dst), make_float2(x, y));
#else
  atomicAdd(dst, x);
  atomicAdd(dst + 1, y);
#endif
}

// Entry `slot` of a query tile's workspace row array (lse_log2 or D) of `rows` valid rows, 0 past
// them. A plain load: the dK / dV kernel holds it in a register while product C runs and stores
// it to shared memory afterwards.
__device__ __forceinline__ float RowFloat(const float* src, int rows, int slot) {
  return slot < rows ? src[slot] : 0.f;
}

// `lane` moved by `offset` bytes (a multiple of 128: the swizzle, address bits 4-6, is
// unchanged), e.g. to another stage of the same tile.
// Issues the cp.async copies of the Q and dO rows [q0, q0 + kBlockM) of query head `head` into
// `smem_q` / `smem_do` (`rows` = the rows left in the sequence from q0; LoadTile zero-fills the
// rest).
template <typename Traits, int kBlockM, typename Element>
__device__ __forceinline__ void LoadQueryGradTiles(const BwdParams& p, int b, const SeqBounds& seq,
                                                   int head, int q0, int rows, uint32_t smem_q,
                                                   uint32_t smem_do, int valid_chunks, int tid) {
  const int64_t q_row = seq.q_start + q0;
  LoadTile<Traits, kBlockM>(smem_q,
                            static_cast<const Element*>(p.q) + b * p.q_batch_stride +
                                q_row * p.q_row_stride + head * p.q_head_stride,
                            p.q_row_stride, rows, valid_chunks, tid);
  LoadTile<Traits, kBlockM>(smem_do,
                            static_cast<const Element*>(p.do_) + b * p.o_batch_stride +
                                q_row * p.o_row_stride + head * p.o_head_stride,
                            p.o_row_stride, rows, valid_chunks, tid);
}

// The dK / dV kernels' query-tile step (this file's and the Hopper ones): issues the copies of
// the Q and dO rows [q0, q0 + kBlockM) of `head` into their stage buffers, and returns this
// thread's entry of lse_log2 (threads [0, kBlockM)) or D (threads [kBlockM, 2 kBlockM)), 0 for
// the others, which StoreRowEntry puts in shared memory once the stage's previous readers are
// done.
template <typename Traits, int kBlockM, typename Element>
__device__ __forceinline__ float LoadQueryTile(const BwdParams& p, int b, const SeqBounds& seq,
                                               int head, int q0, uint32_t smem_q_stage,
                                               uint32_t smem_do_stage, int valid_chunks, int tid) {
  const int rows = seq.len_q - q0;
  LoadQueryGradTiles<Traits, kBlockM, Element>(p, b, seq, head, q0, rows, smem_q_stage,
                                               smem_do_stage, valid_chunks, tid);
  const int64_t ws = head * p.q_rows + seq.ws_start + q0;
  if (tid < kBlockM) return RowFloat(p.lse_log2 + ws, rows, tid);
  if (tid < 2 * kBlockM) return RowFloat(p.dsum + ws, rows, tid - kBlockM);
  return 0.f;
}

// Thread tid < kBlockM stores lse_log2 entry tid, thread kBlockM + i D entry i, of the stage at
// `offset` floats.
template <int kBlockM>
__device__ __forceinline__ void StoreRowEntry(float* lse_tile0, float* d_tile0, int offset, float x,
                                              int tid) {
  if (tid < kBlockM) {
    lse_tile0[offset + tid] = x;
  } else if (tid < 2 * kBlockM) {
    d_tile0[offset + tid - kBlockM] = x;
  }
}

template <typename LaneBase>
__device__ __forceinline__ LaneBase Shifted(LaneBase lane, uint32_t offset) {
  lane.full += offset;
  lane.half += offset;
  return lane;
}

// acc += A B^T over 16 kKSteps columns, for a warp's kMTiles m16 tiles of A rows x 8 kNTiles B
// rows: A and B are shared tiles (K or V, and Q or dO, over head_dim), read with ldmatrix from the
// lane bases of the warp's first rows (a_lane: A operand lanes, b_lane: B operand lanes).
template <typename ATile, typename BTile, typename Element, int kKSteps, int kMTiles, int kNTiles>
__device__ __forceinline__ void MmaABt(float (&acc)[kMTiles][kNTiles][4],
                                       const typename ATile::LaneBase& a_lane,
                                       const typename BTile::LaneBase& b_lane) {
  using Ops = MmaOps<Element>;
#pragma unroll
  for (int ks = 0; ks < kKSteps; ++ks) {
    uint32_t a_frag[kMTiles][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
      LdsmX4(a_frag[mt], ATile::LdsmAddress(a_lane, 16 * mt, 2 * ks));
    }
#pragma unroll
    for (int np = 0; np < kNTiles / 2; ++np) {
      uint32_t b_frag[4];
      LdsmX4(b_frag, BTile::LdsmAddress(b_lane, 16 * np, 2 * ks));
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        Ops::Mma(acc[mt][2 * np], a_frag[mt], b_frag[0], b_frag[1]);
        Ops::Mma(acc[mt][2 * np + 1], a_frag[mt], b_frag[2], b_frag[3]);
      }
    }
  }
}

// Writes a warp's m16 x 8 kNTiles float32 accumulator tile (the m16n8 layout: `acc[dt][e]` of
// rows row0 + [0, 16) and columns col0 + [0, 8 * kNTiles)) times `factor` into the 16-bit shared
// tile `stage`.
template <typename Tile, int kNTiles, typename Element>
__device__ __forceinline__ void StageAccumulator(const float (&acc)[kNTiles][4], float factor,
                                                 uint32_t stage, int row0, int col0, int lane) {
  using Ops = MmaOps<Element>;
  const int g = lane / 4;
  const int t = lane % 4;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int r = row0 + g + 8 * hf;
#pragma unroll
    for (int dt = 0; dt < kNTiles; ++dt) {
      StoreShared32(stage + Tile::Offset(r, col0 / 8 + dt) + 4 * t,
                    Ops::Pack(acc[dt][2 * hf] * factor, acc[dt][2 * hf + 1] * factor));
    }
  }
}

// Copies the staged shared tile `stage` to global memory with 16-byte stores of rows < rows and
// chunks < valid_chunks, between two barriers (the staging writes before it, the next use of
// the tile after it).
template <typename Tile, int kChunks, int kNThreads, typename Element>
__device__ __forceinline__ void CopyStagedTile(uint32_t stage, Element* dst, int64_t row_stride,
                                               int rows, int valid_chunks, int tid) {
  __syncthreads();
  constexpr int kTileRows = Tile::kBytes / (2 * 8 * kChunks);
  for (int idx = tid; idx < kTileRows * kChunks; idx += kNThreads) {
    const int r = idx / kChunks;
    const int ch = idx % kChunks;
    if (r < rows && ch < valid_chunks) {
      *reinterpret_cast<uint4*>(dst + r * row_stride + ch * 8) =
          LoadShared128(stage + Tile::Offset(r, ch));
    }
  }
  __syncthreads();
}

// Writes a [kRows, kHeadDim] float32 accumulator tile, held by the warps in the m16n8 layout
// (each warp one m16 tile: rows warp_row0 + [0, 16), columns col0 + [0, 8 * kNTiles)), to global
// memory in the element type through the shared tile `stage`. Ends with the block synchronized.
template <typename Tile, int kChunks, int kNThreads, int kNTiles, typename Element>
__device__ __forceinline__ void StoreTile(const float (&acc)[kNTiles][4], float factor,
                                          uint32_t stage, int warp_row0, int col0, Element* dst,
                                          int64_t row_stride, int rows, int valid_chunks, int tid) {
  StageAccumulator<Tile, kNTiles, Element>(acc, factor, stage, warp_row0, col0, tid % 32);
  CopyStagedTile<Tile, kChunks, kNThreads>(stage, dst, row_stride, rows, valid_chunks, tid);
}

// Grid: (ceil(seqlen_k / kBlockN), kv_heads, batch); kNThreads threads; Traits::kSmemBytes of
// dynamic shared memory.
template <typename Traits, typename Element, bool kGeneral>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    FlashBwdKernel(const __grid_constant__ BwdParams p) {
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kSdpMTiles = Traits::kSdpMTiles;
  constexpr int kNTilesSW = Traits::kNTilesSW;
  constexpr int kDkvMTiles = Traits::kDkvMTiles;
  constexpr int kNTilesD = Traits::kNTilesD;
  constexpr int kDqMTiles = Traits::kDqMTiles;
  constexpr int kDqChunkCols = Traits::kDqChunkCols;
  using QTile = typename Traits::QTile;
  using KVTile = typename Traits::KVTile;
  using PTile = typename Traits::PTile;
  using Ops = MmaOps<Element>;

  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t smem_k = SmemAddress(smem) + Traits::kSmemKOffset;
  const uint32_t smem_v = SmemAddress(smem) + Traits::kSmemVOffset;
  const uint32_t smem_q = SmemAddress(smem) + Traits::kSmemQOffset;
  const uint32_t smem_do = SmemAddress(smem) + Traits::kSmemDoOffset;
  const uint32_t smem_p = SmemAddress(smem) + Traits::kSmemPOffset;
  const uint32_t smem_ds = SmemAddress(smem) + Traits::kSmemDsOffset;
  constexpr int kQStages = Traits::kQStages;
  // The query tile of iteration `it` lives in stage it % kQStages: its Q / dO bytes at
  // q_stage_offset(it) past smem_q / smem_do, its lse and D at row_stage(it) past the first ones.
  const auto q_stage_offset = [](int it) -> uint32_t {
    return kQStages == 1 ? 0u : static_cast<uint32_t>(it % 2) * Traits::kQStageBytes;
  };
  const auto row_stage = [](int it) { return kQStages == 1 ? 0 : it % 2 * 2 * kBlockM; };
  float* const lse_tile0 = reinterpret_cast<float*>(smem + Traits::kSmemLseOffset);
  float* const d_tile0 = reinterpret_cast<float*>(smem + Traits::kSmemDOffset);

  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int g = lane / 4;
  const int t = lane % 4;

  const int b = blockIdx.z;
  const int kv_head = blockIdx.y;
  const SeqBounds seq = LocateSequence(p, b);
  const int key0 = blockIdx.x * kBlockN;
  if (key0 >= seq.len_k) return;
  const int keys = min(kBlockN, seq.len_k - key0);
  const int valid_chunks = p.head_dim / 8;
  const int group = p.q_heads / p.kv_heads;

  // Query tiles that see a key of this tile: KvTiles with queries and keys swapped (key j sees
  // query i iff j - shift - right <= i <= j - shift + left).
  const KvTileRange qtiles =
      KvTiles(key0, keys, seq.len_k, seq.len_q, kBlockM, p.window_right, p.window_left);
  const int n_qtiles = max(qtiles.end - qtiles.begin, 0);
  const int iters = group * n_qtiles;

  const Element* k = static_cast<const Element*>(p.k) + b * p.k_batch_stride +
                     (seq.k_start + key0) * p.k_row_stride + kv_head * p.k_head_stride;
  const Element* v = static_cast<const Element*>(p.v) + b * p.v_batch_stride +
                     (seq.k_start + key0) * p.v_row_stride + kv_head * p.v_head_stride;

  // Warp roles, one grid per product (flash_bwd_traits.h). A: keys sdp_row0 + [0, 16
  // kSdpMTiles) x queries sdp_col0 + [0, kSdpWarpCols). B: keys dkv_row0 + [0, 16 kDkvMTiles) x
  // head_dim chunks dkv_chunk0 + [0, kWarpD / 8). C: queries dq_row0 + [0, 16 kDqMTiles) x
  // head_dim chunks dq_chunk0 + [0, kWarpQD / 8).
  const int sdp_row0 = 16 * kSdpMTiles * (warp % Traits::kSdpWarpsN);
  const int sdp_col0 = Traits::kSdpWarpCols * (warp / Traits::kSdpWarpsN);
  const int dkv_row0 = 16 * kDkvMTiles * (warp % Traits::kDkvWarpsN);
  const int dkv_chunk0 = Traits::kWarpD / 8 * (warp / Traits::kDkvWarpsN);
  const int dq_row0 = 16 * kDqMTiles * (warp % Traits::kDqWarpsM);
  const int dq_chunk0 = Traits::kWarpQD / 8 * (warp / Traits::kDqWarpsM);
  const uint32_t a_row = lane % 8 + 8 * ((lane / 8) % 2);
  const uint32_t a_chunk = lane / 16;
  const uint32_t b_row = lane % 8 + 8 * (lane / 16);
  const uint32_t b_chunk = (lane / 8) % 2;
  // ldmatrix lane bases, the warp's first row folded in where it is fixed (a multiple of 16
  // keeps the swizzle): A operands K, V (rows = the warp's keys) and B operands Q, dO (rows = its
  // queries) of A; A operands P^T, dS^T (its keys) and transposed B operands dO, Q of B; dS^T
  // read transposed as dS and transposed K of C.
  const typename KVTile::LaneBase k_lane_a =
      KVTile::MakeLaneBase(smem_k, sdp_row0 + a_row, a_chunk);
  const typename KVTile::LaneBase v_lane_a =
      KVTile::MakeLaneBase(smem_v, sdp_row0 + a_row, a_chunk);
  const typename QTile::LaneBase q_lane_b = QTile::MakeLaneBase(smem_q, sdp_col0 + b_row, b_chunk);
  const typename QTile::LaneBase do_lane_b =
      QTile::MakeLaneBase(smem_do, sdp_col0 + b_row, b_chunk);
  const typename PTile::LaneBase p_lane = PTile::MakeLaneBase(smem_p, dkv_row0 + a_row, a_chunk);
  const typename PTile::LaneBase ds_lane = PTile::MakeLaneBase(smem_ds, dkv_row0 + a_row, a_chunk);
  const typename QTile::LaneBase q_lane_t = QTile::MakeLaneBase(smem_q, a_row, a_chunk);
  const typename QTile::LaneBase do_lane_t = QTile::MakeLaneBase(smem_do, a_row, a_chunk);
  const typename PTile::LaneBase ds_lane_t = PTile::MakeLaneBase(smem_ds, b_row, b_chunk);
  const typename KVTile::LaneBase k_lane_t = KVTile::MakeLaneBase(smem_k, a_row, a_chunk);

  // Copies of iteration `it`'s query tile (head, tile) into its stage: Q and dO by cp.async; this
  // thread's entry of lse_log2 (threads [0, kBlockM)) or D (threads [kBlockM, 2 kBlockM))
  // returned, for store_row_entry once the stage's previous readers are done.
  const auto load_query_tile = [&](int it) -> float {
    return LoadQueryTile<Traits, kBlockM, Element>(
        p, b, seq, kv_head * group + it / n_qtiles, (qtiles.begin + it % n_qtiles) * kBlockM,
        smem_q + q_stage_offset(it), smem_do + q_stage_offset(it), valid_chunks, tid);
  };
  const auto store_row_entry = [&](float x, int it) {
    StoreRowEntry<kBlockM>(lse_tile0, d_tile0, row_stage(it), x, tid);
  };

  LoadTile<Traits, kBlockN>(smem_k, k, p.k_row_stride, keys, valid_chunks, tid);
  LoadTile<Traits, kBlockN>(smem_v, v, p.v_row_stride, keys, valid_chunks, tid);
  CpAsyncCommit();
  if (iters > 0) store_row_entry(load_query_tile(0), 0);
  CpAsyncCommit();

  float acc_dk[kDkvMTiles][kNTilesD][4];
  float acc_dv[kDkvMTiles][kNTilesD][4];
#pragma unroll
  for (int mt = 0; mt < kDkvMTiles; ++mt) {
#pragma unroll
    for (int dt = 0; dt < kNTilesD; ++dt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        acc_dk[mt][dt][e] = 0.f;
        acc_dv[mt][dt][e] = 0.f;
      }
    }
  }

  for (int it = 0; it < iters; ++it) {
    const int head = kv_head * group + it / n_qtiles;
    const int m = qtiles.begin + it % n_qtiles;
    const int q0 = m * kBlockM;
    ScoreRule<kGeneral> rule;
    rule.Init(p, seq, b, head);
    // Element-wise bounds only where the tile pair crosses a sequence end or the window's edge.
    const bool needs_mask =
        kGeneral || keys < kBlockN ||
        TileNeedsMask(m, key0, keys, seq.len_k, seq.len_q, kBlockM, p.window_right, p.window_left);

    CpAsyncWait<0>();
    __syncthreads();
    // With two stages the next query tile's copies fly during all three products (its lse and D
    // entries in a register, stored after them): its stage was last read in iteration it - 1.
    float next_row_entry = 0.f;
    if constexpr (kQStages == 2) {
      if (it + 1 < iters) next_row_entry = load_query_tile(it + 1);
      CpAsyncCommit();
    }
    const uint32_t q_off = q_stage_offset(it);
    const float* lse_tile = lse_tile0 + row_stage(it);
    const float* d_tile = d_tile0 + row_stage(it);

    // A. S^T = K Q^T and dP^T = V dO^T for this warp's 16 kSdpMTiles keys x kSdpWarpCols queries.
    float acc_s[kSdpMTiles][kNTilesSW][4];
    float acc_dp[kSdpMTiles][kNTilesSW][4];
#pragma unroll
    for (int mt = 0; mt < kSdpMTiles; ++mt) {
#pragma unroll
      for (int nt = 0; nt < kNTilesSW; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          acc_s[mt][nt][e] = 0.f;
          acc_dp[mt][nt][e] = 0.f;
        }
      }
    }
    // S^T first, then dP^T: one product's fragments live at a time.
    MmaABt<KVTile, QTile, Element, kHeadDim / 16>(acc_s, k_lane_a, Shifted(q_lane_b, q_off));
    MmaABt<KVTile, QTile, Element, kHeadDim / 16>(acc_dp, v_lane_a, Shifted(do_lane_b, q_off));
    // P^T and dS^T, element by element, stored as 16-bit tiles.
#pragma unroll
    for (int mt = 0; mt < kSdpMTiles; ++mt) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int r = sdp_row0 + 16 * mt + g + 8 * hf;
        const int j = key0 + r;
#pragma unroll
        for (int nt = 0; nt < kNTilesSW; ++nt) {
          const int c = sdp_col0 + 8 * nt + 2 * t;
          float pv[2];
          float dsv[2];
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int i = q0 + c + e;
            const float s = acc_s[mt][nt][2 * hf + e];
            const float dp = acc_dp[mt][nt][2 * hf + e];
            if (needs_mask) {
              rule.template Grad<true>(s, dp, lse_tile[c + e], d_tile[c + e], i, j, pv[e], dsv[e]);
            } else {
              rule.template Grad<false>(s, dp, lse_tile[c + e], d_tile[c + e], i, j, pv[e], dsv[e]);
            }
          }
          StoreShared32(smem_p + PTile::Offset(r, c / 8) + 4 * t, Ops::Pack(pv[0], pv[1]));
          StoreShared32(smem_ds + PTile::Offset(r, c / 8) + 4 * t, Ops::Pack(dsv[0], dsv[1]));
        }
      }
    }
    __syncthreads();

    // B. dV += P^T dO and dK += dS^T Q for this warp's 16 kDkvMTiles keys x kWarpD columns.
#pragma unroll
    for (int ks = 0; ks < kBlockM / 16; ++ks) {
      uint32_t p_frag[kDkvMTiles][4];
      uint32_t ds_frag[kDkvMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kDkvMTiles; ++mt) {
        LdsmX4(p_frag[mt], PTile::LdsmAddress(p_lane, 16 * mt, 2 * ks));
        LdsmX4(ds_frag[mt], PTile::LdsmAddress(ds_lane, 16 * mt, 2 * ks));
      }
#pragma unroll
      for (int dp = 0; dp < kNTilesD / 2; ++dp) {
        uint32_t do_frag[4];
        uint32_t q_frag[4];
        LdsmX4Trans(do_frag, QTile::LdsmAddress(do_lane_t, 16 * ks, dkv_chunk0 + 2 * dp) + q_off);
        LdsmX4Trans(q_frag, QTile::LdsmAddress(q_lane_t, 16 * ks, dkv_chunk0 + 2 * dp) + q_off);
#pragma unroll
        for (int mt = 0; mt < kDkvMTiles; ++mt) {
          Ops::Mma(acc_dv[mt][2 * dp], p_frag[mt], do_frag[0], do_frag[1]);
          Ops::Mma(acc_dv[mt][2 * dp + 1], p_frag[mt], do_frag[2], do_frag[3]);
          Ops::Mma(acc_dk[mt][2 * dp], ds_frag[mt], q_frag[0], q_frag[1]);
          Ops::Mma(acc_dk[mt][2 * dp + 1], ds_frag[mt], q_frag[2], q_frag[3]);
        }
      }
    }
    if constexpr (kQStages == 1) {
      // Q, dO, lse and D are free once every warp is done with product B: the next query tile's
      // copies fly during product C (its lse and D entries in a register, stored after it).
      __syncthreads();
      if (it + 1 < iters) next_row_entry = load_query_tile(it + 1);
      CpAsyncCommit();
    }

    // C. dq_accum += dS K for this warp's 16 kDqMTiles queries x kWarpQD columns, kDqChunkCols
    // columns at a time.
    if (!p.deterministic) {
      const int rows = seq.len_q - q0;
      float* accum = p.dq_accum + ((seq.ws_start + q0) * p.q_heads + head) * int64_t{p.head_dim};
      const int64_t accum_row_stride = int64_t{p.q_heads} * p.head_dim;
      constexpr int kKSteps = kBlockN / 16;
      // dS's A fragments of k16 step ks and m16 tile mt (ldmatrix.trans of the dS^T tile).
      const auto load_ds = [&](uint32_t(&frag)[4], int ks, int mt) {
        LdsmX4Trans(frag, PTile::LdsmAddress(ds_lane_t, 16 * ks, dq_row0 / 8 + 2 * mt));
      };
      uint32_t ds_held[Traits::kDqHoldDs ? kKSteps : 1][kDqMTiles][4];
      if constexpr (Traits::kDqHoldDs) {
#pragma unroll
        for (int ks = 0; ks < kKSteps; ++ks) {
#pragma unroll
          for (int mt = 0; mt < kDqMTiles; ++mt) load_ds(ds_held[ks][mt], ks, mt);
        }
      }
#pragma unroll
      for (int cc = 0; cc < Traits::kWarpQD / kDqChunkCols; ++cc) {
        const int chunk0 = dq_chunk0 + cc * kDqChunkCols / 8;
        float acc[kDqMTiles][kDqChunkCols / 8][4] = {};
#pragma unroll
        for (int ks = 0; ks < kKSteps; ++ks) {
          uint32_t ds_read[kDqMTiles][4];
          if constexpr (!Traits::kDqHoldDs) {
#pragma unroll
            for (int mt = 0; mt < kDqMTiles; ++mt) load_ds(ds_read[mt], ks, mt);
          }
          const uint32_t(&ds_a)[kDqMTiles][4] = Traits::kDqHoldDs ? ds_held[ks] : ds_read;
#pragma unroll
          for (int dp = 0; dp < kDqChunkCols / 16; ++dp) {
            uint32_t k_frag[4];
            LdsmX4Trans(k_frag, KVTile::LdsmAddress(k_lane_t, 16 * ks, chunk0 + 2 * dp));
#pragma unroll
            for (int mt = 0; mt < kDqMTiles; ++mt) {
              Ops::Mma(acc[mt][2 * dp], ds_a[mt], k_frag[0], k_frag[1]);
              Ops::Mma(acc[mt][2 * dp + 1], ds_a[mt], k_frag[2], k_frag[3]);
            }
          }
        }
#pragma unroll
        for (int mt = 0; mt < kDqMTiles; ++mt) {
#pragma unroll
          for (int n8 = 0; n8 < kDqChunkCols / 8; ++n8) {
            const int col = 8 * (chunk0 + n8) + 2 * t;
            if (col < p.head_dim) {
#pragma unroll
              for (int hf = 0; hf < 2; ++hf) {
                const int r = dq_row0 + 16 * mt + g + 8 * hf;
                if (r < rows) {
                  AtomicAdd2(accum + r * accum_row_stride + col, acc[mt][n8][2 * hf],
                             acc[mt][n8][2 * hf + 1]);
                }
              }
            }
          }
        }
      }
    }
    if (it + 1 < iters) store_row_entry(next_row_entry, it + 1);
  }

  // Epilogue: dK (times the softmax scale) staged in the K tile, dV in the V tile, one m16 tile
  // of keys per warp at a time, once every warp is done reading them (and every copy has landed).
  CpAsyncWait<0>();
  __syncthreads();
  Element* dk = static_cast<Element*>(p.dk) + b * p.k_batch_stride +
                (seq.k_start + key0) * p.k_row_stride + kv_head * p.k_head_stride;
  Element* dv = static_cast<Element*>(p.dv) + b * p.v_batch_stride +
                (seq.k_start + key0) * p.v_row_stride + kv_head * p.v_head_stride;
#pragma unroll
  for (int mt = 0; mt < kDkvMTiles; ++mt) {
    StageAccumulator<KVTile, kNTilesD, Element>(acc_dk[mt], p.softmax_scale, smem_k,
                                                dkv_row0 + 16 * mt, 8 * dkv_chunk0, lane);
    StageAccumulator<KVTile, kNTilesD, Element>(acc_dv[mt], 1.f, smem_v, dkv_row0 + 16 * mt,
                                                8 * dkv_chunk0, lane);
  }
  CopyStagedTile<KVTile, Traits::kChunks, Traits::kNThreads>(smem_k, dk, p.k_row_stride, keys,
                                                             valid_chunks, tid);
  CopyStagedTile<KVTile, Traits::kChunks, Traits::kNThreads>(smem_v, dv, p.v_row_stride, keys,
                                                             valid_chunks, tid);
}

// Grid: (ceil(seqlen_q / kBlockM), q_heads, batch); kNThreads threads; Traits::kSmemBytes of
// dynamic shared memory. Writes dq (times the softmax scale) for its query tile.
template <typename Traits, typename Element, bool kGeneral>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    FlashBwdDqKernel(const __grid_constant__ BwdParams p) {
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kNTilesS = Traits::kNTilesS;
  constexpr int kNTilesO = Traits::kNTilesO;
  using QTile = typename Traits::QTile;
  using KVTile = typename Traits::KVTile;
  using Ops = MmaOps<Element>;

  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t smem_q = SmemAddress(smem) + Traits::kSmemQOffset;
  const uint32_t smem_do = SmemAddress(smem) + Traits::kSmemDoOffset;
  const uint32_t smem_k = SmemAddress(smem) + Traits::kSmemKOffset;
  const uint32_t smem_v = SmemAddress(smem) + Traits::kSmemVOffset;
  float* lse_tile = reinterpret_cast<float*>(smem + Traits::kSmemLseOffset);
  float* d_tile = reinterpret_cast<float*>(smem + Traits::kSmemDOffset);

  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int g = lane / 4;
  const int t = lane % 4;

  const int b = blockIdx.z;
  const int head = blockIdx.y;
  const SeqBounds seq = LocateSequence(p, b);
  const int q0 = blockIdx.x * kBlockM;
  if (q0 >= seq.len_q) return;
  const int rows = min(kBlockM, seq.len_q - q0);
  const int valid_chunks = p.head_dim / 8;
  const int kv_head = head / (p.q_heads / p.kv_heads);
  const KvTileRange ktiles =
      KvTiles(q0, rows, seq.len_q, seq.len_k, kBlockN, p.window_left, p.window_right);
  ScoreRule<kGeneral> rule;
  rule.Init(p, seq, b, head);

  const int64_t q_row = seq.q_start + q0;
  const Element* k = static_cast<const Element*>(p.k) + b * p.k_batch_stride +
                     seq.k_start * p.k_row_stride + kv_head * p.k_head_stride;
  const Element* v = static_cast<const Element*>(p.v) + b * p.v_batch_stride +
                     seq.k_start * p.v_row_stride + kv_head * p.v_head_stride;
  LoadQueryGradTiles<Traits, kBlockM, Element>(p, b, seq, head, q0, rows, smem_q, smem_do,
                                               valid_chunks, tid);
  const int64_t ws = head * p.q_rows + seq.ws_start + q0;
  for (int slot = tid; slot < kBlockM; slot += Traits::kNThreads) {
    lse_tile[slot] = RowFloat(p.lse_log2 + ws, rows, slot);
    d_tile[slot] = RowFloat(p.dsum + ws, rows, slot);
  }
  CpAsyncCommit();

  const int warp_row0 = 16 * warp;
  const uint32_t a_row = lane % 8 + 8 * ((lane / 8) % 2);
  const uint32_t a_chunk = lane / 16;
  const uint32_t b_row = lane % 8 + 8 * (lane / 16);
  const uint32_t b_chunk = (lane / 8) % 2;
  const typename QTile::LaneBase q_lane = QTile::MakeLaneBase(smem_q, warp_row0 + a_row, a_chunk);
  const typename QTile::LaneBase do_lane = QTile::MakeLaneBase(smem_do, warp_row0 + a_row, a_chunk);
  const typename KVTile::LaneBase k_lane = KVTile::MakeLaneBase(smem_k, b_row, b_chunk);
  const typename KVTile::LaneBase v_lane = KVTile::MakeLaneBase(smem_v, b_row, b_chunk);
  const typename KVTile::LaneBase k_lane_t = KVTile::MakeLaneBase(smem_k, a_row, a_chunk);

  float acc_dq[kNTilesO][4];
#pragma unroll
  for (int dt = 0; dt < kNTilesO; ++dt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_dq[dt][e] = 0.f;
  }

  for (int n = ktiles.begin; n < ktiles.end; ++n) {
    const int key0 = n * kBlockN;
    if (n > ktiles.begin) __syncthreads();  // every warp is done with the previous K and V
    LoadTile<Traits, kBlockN>(smem_k, k + int64_t{key0} * p.k_row_stride, p.k_row_stride,
                              seq.len_k - key0, valid_chunks, tid);
    LoadTile<Traits, kBlockN>(smem_v, v + int64_t{key0} * p.v_row_stride, p.v_row_stride,
                              seq.len_k - key0, valid_chunks, tid);
    CpAsyncCommit();
    CpAsyncWait<0>();
    __syncthreads();
    const bool needs_mask = kGeneral || TileNeedsMask(n, q0, rows, seq.len_q, seq.len_k, kBlockN,
                                                      p.window_left, p.window_right);

    float acc_s[kNTilesS][4];
    float acc_dp[kNTilesS][4];
#pragma unroll
    for (int nt = 0; nt < kNTilesS; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        acc_s[nt][e] = 0.f;
        acc_dp[nt][e] = 0.f;
      }
    }
#pragma unroll
    for (int ks = 0; ks < kHeadDim / 16; ++ks) {
      uint32_t q_frag[4];
      uint32_t do_frag[4];
      LdsmX4(q_frag, QTile::LdsmAddress(q_lane, 0, 2 * ks));
      LdsmX4(do_frag, QTile::LdsmAddress(do_lane, 0, 2 * ks));
#pragma unroll
      for (int np = 0; np < kNTilesS / 2; ++np) {
        uint32_t k_frag[4];
        uint32_t v_frag[4];
        LdsmX4(k_frag, KVTile::LdsmAddress(k_lane, 16 * np, 2 * ks));
        LdsmX4(v_frag, KVTile::LdsmAddress(v_lane, 16 * np, 2 * ks));
        Ops::Mma(acc_s[2 * np], q_frag, k_frag[0], k_frag[1]);
        Ops::Mma(acc_s[2 * np + 1], q_frag, k_frag[2], k_frag[3]);
        Ops::Mma(acc_dp[2 * np], do_frag, v_frag[0], v_frag[1]);
        Ops::Mma(acc_dp[2 * np + 1], do_frag, v_frag[2], v_frag[3]);
      }
    }
    // dS in place of S (the forward's layout: row = query).
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int r = warp_row0 + g + 8 * hf;
      const int i = q0 + r;
      const float lse_log2 = lse_tile[r];
      const float d = d_tile[r];
#pragma unroll
      for (int nt = 0; nt < kNTilesS; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int j = key0 + 8 * nt + 2 * t + e;
          float pe;
          float dse;
          if (needs_mask) {
            rule.template Grad<true>(acc_s[nt][2 * hf + e], acc_dp[nt][2 * hf + e], lse_log2, d, i,
                                     j, pe, dse);
          } else {
            rule.template Grad<false>(acc_s[nt][2 * hf + e], acc_dp[nt][2 * hf + e], lse_log2, d, i,
                                      j, pe, dse);
          }
          acc_s[nt][2 * hf + e] = dse;
        }
      }
    }
    // dQ += dS K: dS's A fragment for keys [16 kk, 16 kk + 16) is two n8 tiles of it.
#pragma unroll
    for (int kk = 0; kk < kNTilesS / 2; ++kk) {
      uint32_t ds_frag[4];
      ds_frag[0] = Ops::Pack(acc_s[2 * kk][0], acc_s[2 * kk][1]);
      ds_frag[1] = Ops::Pack(acc_s[2 * kk][2], acc_s[2 * kk][3]);
      ds_frag[2] = Ops::Pack(acc_s[2 * kk + 1][0], acc_s[2 * kk + 1][1]);
      ds_frag[3] = Ops::Pack(acc_s[2 * kk + 1][2], acc_s[2 * kk + 1][3]);
#pragma unroll
      for (int dp = 0; dp < kNTilesO / 2; ++dp) {
        uint32_t k_frag[4];
        LdsmX4Trans(k_frag, KVTile::LdsmAddress(k_lane_t, 16 * kk, 2 * dp));
        Ops::Mma(acc_dq[2 * dp], ds_frag, k_frag[0], k_frag[1]);
        Ops::Mma(acc_dq[2 * dp + 1], ds_frag, k_frag[2], k_frag[3]);
      }
    }
  }

  // dq = scale * dQ, staged in the warp's own rows of the Q tile (every read of Q is done: the
  // last tile's products read only this warp's rows, and no copy is in flight).
  CpAsyncWait<0>();
  __syncthreads();
  Element* dq = static_cast<Element*>(p.dq) + b * p.q_batch_stride + q_row * p.q_row_stride +
                head * p.q_head_stride;
  StoreTile<QTile, Traits::kChunks, Traits::kNThreads>(
      acc_dq, p.softmax_scale, smem_q, warp_row0, 0, dq, p.q_row_stride, rows, valid_chunks, tid);
}

}  // namespace attention::cuda::bwd

#endif  // ATTENTION_KERNELS_CUDA_FLASH_BWD_KERNEL_CUH_
