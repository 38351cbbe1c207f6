// Device code of the fused forward attention kernel (FlashAttention-2 algorithm on mma.sync).
//
// One thread block computes O and LSE for one tile of kBlockM query rows of one (sequence, head):
//   - the Q tile is copied once to shared memory (cp.async, zero-filled past seqlen / head_dim);
//   - K and V tiles of kBlockN keys stream through shared memory (cp.async, kKVStages buffers),
//     from the last tile the block needs down to the first, so that the tiles that need masking
//     (sequence tail, causal diagonal) come first and the rest run unmasked;
//   - S = Q K^T and O += P V run on the tensor cores (mma.sync m16n8k16, fragments by ldmatrix,
//     V through ldmatrix.trans), each warp owning 16 or 32 query rows; P never leaves registers:
//     the S accumulators of two adjacent n8 tiles are exactly the A fragment of one k16 step;
//   - the softmax is online, in float32 registers: running row max and row sum, exp2 with the
//     softmax scale folded into one FFMA, max reductions by shuffles within the quad of lanes
//     that share a row, sums reduced across the quad only once at the end;
//   - O is normalized, staged through shared memory and written once with 16-byte stores; LSE
//     (natural log) is written once per row.
// No seqlen_q x seqlen_k buffer exists anywhere: S and P live in registers for one KV tile.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_FWD_KERNEL_CUH_
#define ATTENTION_KERNELS_CUDA_FLASH_FWD_KERNEL_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/attention_params.h"
#include "kernels/cuda/block_info.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/kernel_traits.h"

namespace attention::cuda::fwd {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Copies rows [0, valid_rows) x 16-byte chunks [0, valid_chunks) of a [kRows, kHeadDim] global
// tile (row stride `row_stride` elements) into the swizzled shared tile at `smem_tile`; the rest
// of the shared tile is zero-filled, so padded rows and columns contribute nothing to S or O.
template <typename Traits, int kRows, typename Element>
__device__ __forceinline__ void LoadTile(uint32_t smem_tile, const Element* gmem,
                                         int64_t row_stride, int valid_rows, int valid_chunks,
                                         int tid) {
  using Tile = SmemTile<kRows, Traits::kHeadDim>;
  constexpr int kChunks = Traits::kChunks;
  constexpr int kThreads = Traits::kNThreads;
  constexpr int kTotal = kRows * kChunks;
  constexpr int kIters = (kTotal + kThreads - 1) / kThreads;
  if constexpr (kThreads % kChunks == 0) {
    // Every thread copies the same chunk column of rows tid / kChunks + it * kRowsPerIter. The
    // source pointer advances by one stride per iteration rather than being recomputed, which
    // keeps per-iteration 64-bit offsets from being hoisted into registers.
    constexpr int kRowsPerIter = kThreads / kChunks;
    const int row0 = tid / kChunks;
    const int chunk = tid % kChunks;
    const int64_t step = kRowsPerIter * row_stride;
    const Element* src = gmem + row0 * row_stride + chunk * 8;
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int row = row0 + it * kRowsPerIter;
      if (kTotal % kThreads == 0 || row < kRows) {
        const bool pred = row < valid_rows && chunk < valid_chunks;
        // Predicated-off copies read nothing, so their address needs no clamping; the
        // one-stage kernels clamp it anyway because ptxas then allocates their registers without
        // spills (bench/cuda/NOTES.md, run 3: -11% for d = 256 with the spills).
        CpAsync16(smem_tile + Tile::Offset(row, chunk),
                  Traits::kKVStages == 1 && !pred ? gmem : src, pred);
      }
      src += step;
    }
  } else {
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int idx = tid + it * kThreads;
      const int row = idx / kChunks;
      const int chunk = idx % kChunks;
      if (kTotal % kThreads == 0 || row < kRows) {
        const bool pred = row < valid_rows && chunk < valid_chunks;
        CpAsync16(smem_tile + Tile::Offset(row, chunk), gmem + row * row_stride + chunk * 8, pred);
      }
    }
  }
}

// A block whose rows have no allowed key at all: o = 0 and lse = -inf for its valid rows.
template <typename Traits, typename Element>
__device__ __forceinline__ void StoreEmptyRows(Element* o, int64_t o_row_stride, float* lse,
                                               int rows, int valid_chunks, int tid) {
  constexpr int kChunks = Traits::kChunks;
  for (int idx = tid; idx < rows * kChunks; idx += Traits::kNThreads) {
    const int r = idx / kChunks;
    const int c = idx % kChunks;
    if (c < valid_chunks) {
      *reinterpret_cast<uint4*>(o + r * o_row_stride + c * 8) = make_uint4(0u, 0u, 0u, 0u);
    }
  }
  if (lse != nullptr) {
    for (int r = tid; r < rows; r += Traits::kNThreads) lse[r] = -INFINITY;
  }
}

// Grid: (ceil(seqlen_q / kBlockM), q_heads, batch); kNThreads threads; Traits::kSmemBytes of
// dynamic shared memory. `p` is normalized (causal folded into window_right) and checked by the
// host API; pointers are device pointers.
template <typename Traits, typename Element, FwdVariant kVariant>
__global__ void __launch_bounds__(Traits::kNThreads, Traits::kMinBlocksPerSm)
    FlashFwdKernel(const __grid_constant__ AttentionParams p) {
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kMTiles = Traits::kMTiles;
  constexpr int kNTilesS = Traits::kNTilesS;
  constexpr int kNTilesO = Traits::kNTilesO;
  constexpr int kChunks = Traits::kChunks;
  constexpr int kStages = Traits::kKVStages;
  constexpr bool kHasWindow = kVariant != FwdVariant::kDense;
  constexpr bool kGeneral = kVariant == FwdVariant::kGeneral;
  using QTile = typename Traits::QTile;
  using KVTile = typename Traits::KVTile;
  using Ops = MmaOps<Element>;

  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t smem_q = SmemAddress(smem) + Traits::kSmemQOffset;
  const uint32_t smem_k = SmemAddress(smem) + Traits::kSmemKOffset;
  const uint32_t smem_v = SmemAddress(smem) + Traits::kSmemVOffset;

  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int head = blockIdx.y;
  const int batch = blockIdx.z;

  const int left = kHasWindow ? p.window_left : -1;
  const int right = kHasWindow ? p.window_right : -1;
  // With a right limit (causal), a block's cost grows with its row index: run the most expensive
  // blocks first so that the cheap ones fill the tail of the grid.
  const int m_block =
      right >= 0 ? static_cast<int>(gridDim.x - 1 - blockIdx.x) : static_cast<int>(blockIdx.x);

  // Sequence bounds: dense batches use seqlen_q / seqlen_k, packed ones cu_seqlens.
  int64_t q_start = 0;
  int64_t k_start = 0;
  int len_q = p.seqlen_q;
  int len_k = p.seqlen_k;
  if (p.cu_seqlens_q != nullptr) {
    q_start = p.cu_seqlens_q[batch];
    len_q = p.cu_seqlens_q[batch + 1] - static_cast<int>(q_start);
    k_start = p.cu_seqlens_k[batch];
    len_k = p.cu_seqlens_k[batch + 1] - static_cast<int>(k_start);
  }
  const int row0 = m_block * kBlockM;
  if (row0 >= len_q) return;
  const int rows = min(kBlockM, len_q - row0);
  const int kv_head = head / (p.q_heads / p.kv_heads);
  const int valid_chunks = p.head_dim / 8;

  // Addressing rule of attention_params.h; q/o/lse point at row0 of this block.
  const Element* q_ptr = static_cast<const Element*>(p.q) + batch * p.q_batch_stride +
                         (q_start + row0) * p.q_row_stride + head * p.q_head_stride;
  const Element* k_ptr = static_cast<const Element*>(p.k) + batch * p.k_batch_stride +
                         k_start * p.k_row_stride + kv_head * p.k_head_stride;
  const Element* v_ptr = static_cast<const Element*>(p.v) + batch * p.v_batch_stride +
                         k_start * p.v_row_stride + kv_head * p.v_head_stride;
  Element* o_ptr = static_cast<Element*>(p.o) + batch * p.o_batch_stride +
                   (q_start + row0) * p.o_row_stride + head * p.o_head_stride;
  float* lse_ptr = p.lse == nullptr ? nullptr
                                    : p.lse + batch * p.lse_batch_stride +
                                          head * p.lse_head_stride + q_start + row0;

  const KvTileRange tiles = KvTiles(row0, rows, len_q, len_k, kBlockN, left, right);
  if (tiles.end <= tiles.begin) {
    StoreEmptyRows<Traits>(o_ptr, p.o_row_stride, lse_ptr, rows, valid_chunks, tid);
    return;
  }

  // Lane roles. Accumulator entry e of an m16n8 tile sits at row g + 8 * (e / 2) and column
  // 2 * t + e % 2. ldmatrix lanes: A operand (Q) and transposed B operand (V) read row
  // lane % 8 + 8 * ((lane / 8) % 2) at chunk lane / 16; B operand (K) reads row
  // lane % 8 + 8 * (lane / 16) at chunk (lane / 8) % 2.
  const int g = lane / 4;
  const int t = lane % 4;
  const int warp_row0 = warp * 16 * kMTiles;
  const uint32_t a_row = lane % 8 + 8 * ((lane / 8) % 2);
  const uint32_t a_chunk = lane / 16;
  const uint32_t b_row = lane % 8 + 8 * (lane / 16);
  const uint32_t b_chunk = (lane / 8) % 2;
  const typename QTile::LaneBase q_lane = QTile::MakeLaneBase(smem_q, warp_row0 + a_row, a_chunk);

  // Scores enter the softmax as s * scale_log2 (base-2 logits). The dense and window variants
  // keep raw q.k scores and fold the softmax scale into that factor; the general variant turns
  // scores into logits first (softcap, ALiBi and masks act on logits) and uses log2(e).
  const float scale_log2 = kGeneral ? kLog2e : p.softmax_scale * kLog2e;
  const int shift = len_k - len_q;  // p(i) = i + shift

  float acc_o[kMTiles][kNTilesO][4];
  float row_max[kMTiles][2];
  float row_sum[kMTiles][2];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int dt = 0; dt < kNTilesO; ++dt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[mt][dt][e] = 0.f;
    }
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      row_max[mt][hf] = -INFINITY;
      row_sum[mt][hf] = 0.f;
    }
  }

  // Prologue: Q and the first K tile in one copy group, then the first V tile in a second one,
  // so that V's latency hides behind the first QK^T (with one stage too: its V buffer is free).
  const int n_first = tiles.end - 1;
  LoadTile<Traits, kBlockM>(smem_q, q_ptr, p.q_row_stride, rows, valid_chunks, tid);
  LoadTile<Traits, kBlockN>(smem_k, k_ptr + int64_t{n_first} * kBlockN * p.k_row_stride,
                            p.k_row_stride, len_k - n_first * kBlockN, valid_chunks, tid);
  CpAsyncCommit();
  LoadTile<Traits, kBlockN>(smem_v, v_ptr + int64_t{n_first} * kBlockN * p.v_row_stride,
                            p.v_row_stride, len_k - n_first * kBlockN, valid_chunks, tid);
  CpAsyncCommit();

  // One KV tile: S = Q K^T, masks, online softmax, O += P V, with the copies of the next tiles
  // issued in between. kMask (a std::bool_constant) says whether the tile needs the element-wise
  // bounds mask; masked and unmasked tiles run in separate loops so that the unmasked loop
  // carries none of the mask's state.
  int stage = 0;
  const auto step = [&](const int n, auto mask_tag) {
    constexpr bool kMask = decltype(mask_tag)::value;
    const int key0 = n * kBlockN;
    const typename KVTile::LaneBase k_lane =
        KVTile::MakeLaneBase(smem_k + stage * KVTile::kBytes, b_row, b_chunk);
    const typename KVTile::LaneBase v_lane =
        KVTile::MakeLaneBase(smem_v + stage * KVTile::kBytes, a_row, a_chunk);

    // Two stages: K[n] and V[n] (issued one iteration ago) have landed, and every warp is past
    // the previous iteration, so both stage ^ 1 buffers are free: prefetch K[n-1] and V[n-1].
    // One barrier per tile, which lets the warps of a block drift apart within an iteration
    // (one warp's softmax overlaps another's MMAs).
    // One stage: K[n] has landed and the V buffer is free: fetch V[n] behind QK^T (the first V
    // came with the prologue and may still be in flight).
    if (kStages == 1 && n == n_first) {
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();
    if constexpr (kStages == 2) {
      if (n > tiles.begin) {
        LoadTile<Traits, kBlockN>(smem_k + (stage ^ 1) * KVTile::kBytes,
                                  k_ptr + int64_t{key0 - kBlockN} * p.k_row_stride, p.k_row_stride,
                                  kBlockN, valid_chunks, tid);
        LoadTile<Traits, kBlockN>(smem_v + (stage ^ 1) * KVTile::kBytes,
                                  v_ptr + int64_t{key0 - kBlockN} * p.v_row_stride, p.v_row_stride,
                                  kBlockN, valid_chunks, tid);
      }
    } else if (n != n_first) {
      LoadTile<Traits, kBlockN>(smem_v, v_ptr + int64_t{key0} * p.v_row_stride, p.v_row_stride,
                                len_k - key0, valid_chunks, tid);
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
    if constexpr (Traits::kPrefetchFragments) {
      // Fragments of k-step ks + 1 are loaded before the MMAs of step ks (two register buffers,
      // the index is a compile-time constant after unrolling).
      uint32_t q_frag[2][kMTiles][4];
      uint32_t k_frag[2][kNTilesS / 2][4];
      const auto load = [&](const int ks, const int buf) {
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          LdsmX4(q_frag[buf][mt], QTile::LdsmAddress(q_lane, mt * 16, 2 * ks));
        }
#pragma unroll
        for (int np = 0; np < kNTilesS / 2; ++np) {
          LdsmX4(k_frag[buf][np], KVTile::LdsmAddress(k_lane, np * 16, 2 * ks));
        }
      };
      load(0, 0);
#pragma unroll
      for (int ks = 0; ks < kHeadDim / 16; ++ks) {
        if (ks + 1 < kHeadDim / 16) load(ks + 1, (ks + 1) % 2);
#pragma unroll
        for (int np = 0; np < kNTilesS / 2; ++np) {
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) {
            Ops::Mma(acc_s[mt][2 * np], q_frag[ks % 2][mt], k_frag[ks % 2][np][0],
                     k_frag[ks % 2][np][1]);
            Ops::Mma(acc_s[mt][2 * np + 1], q_frag[ks % 2][mt], k_frag[ks % 2][np][2],
                     k_frag[ks % 2][np][3]);
          }
        }
      }
    } else {
#pragma unroll
      for (int ks = 0; ks < kHeadDim / 16; ++ks) {
        uint32_t q_frag[kMTiles][4];
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          LdsmX4(q_frag[mt], QTile::LdsmAddress(q_lane, mt * 16, 2 * ks));
        }
#pragma unroll
        for (int np = 0; np < kNTilesS / 2; ++np) {
          uint32_t k_frag[4];
          LdsmX4(k_frag, KVTile::LdsmAddress(k_lane, np * 16, 2 * ks));
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) {
            Ops::Mma(acc_s[mt][2 * np], q_frag[mt], k_frag[0], k_frag[1]);
            Ops::Mma(acc_s[mt][2 * np + 1], q_frag[mt], k_frag[2], k_frag[3]);
          }
        }
      }
    }

    if constexpr (kGeneral) {
      // Scores -> logits in the order of the contract: scale, softcap, ALiBi, additive mask;
      // a false bool mask entry drops the key.
      const float softcap = p.softcap;
      const float cap_scale = softcap > 0.f ? p.softmax_scale / softcap : 0.f;
      const float slope =
          p.alibi_slopes != nullptr ? p.alibi_slopes[batch * p.alibi_batch_stride + head] : 0.f;
      const int64_t mask_base = batch * p.mask_batch_stride + head * p.mask_head_stride;
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
        for (int nt = 0; nt < kNTilesS; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int i = row0 + warp_row0 + mt * 16 + g + 8 * (e / 2);
            const int j = key0 + nt * 8 + 2 * t + e % 2;
            float s = acc_s[mt][nt][e];
            s = softcap > 0.f ? softcap * Tanh(s * cap_scale) : s * p.softmax_scale;
            s -= slope * fabsf(static_cast<float>(i + shift - j));
            if (p.mask_kind != MaskKind::kNone && i < len_q && j < len_k) {
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

    // Element-wise bounds on the tiles that need them: keys past len_k and, with a window, keys
    // outside [p(i) - left, p(i) + right].
    if constexpr (kMask) {
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          // Allowed keys of this row, relative to key0: [key_lo, key_hi). The host API clamps
          // window sides to the sequence lengths, so none of this overflows an int.
          const int pos = row0 + warp_row0 + mt * 16 + g + 8 * hf + shift;
          const int key_lo = (left >= 0 ? max(pos - left, 0) : 0) - key0;
          const int key_hi = (right >= 0 ? min(pos + right + 1, len_k) : len_k) - key0;
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

    // Online softmax: new row max, rescale of the running sum and of O, P = exp2(s - max).
    float alpha[kMTiles][2];
    bool max_moved = false;
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        float mx = row_max[mt][hf];
#pragma unroll
        for (int nt = 0; nt < kNTilesS; ++nt) {
          mx = fmaxf(mx, fmaxf(acc_s[mt][nt][2 * hf], acc_s[mt][nt][2 * hf + 1]));
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        // A row with no allowed key so far keeps max -inf; subtracting 0 keeps its P at 0.
        const float max_scaled = mx == -INFINITY ? 0.f : mx * scale_log2;
        alpha[mt][hf] = Exp2(row_max[mt][hf] * scale_log2 - max_scaled);
        max_moved |= mx != row_max[mt][hf];
        row_max[mt][hf] = mx;
#pragma unroll
        for (int nt = 0; nt < kNTilesS; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float pe = Exp2(fmaf(acc_s[mt][nt][2 * hf + e], scale_log2, -max_scaled));
            acc_s[mt][nt][2 * hf + e] = pe;
          }
        }
      }
    }
    // Once the running maxima settle (most tiles of a long row), alpha is 1 for every row of the
    // warp and the rescale of O is skipped: a warp-uniform branch instead of 4 * kMTiles *
    // kNTilesO multiplications per tile.
    if (__any_sync(0xffffffffu, max_moved)) {
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          row_sum[mt][hf] *= alpha[mt][hf];
#pragma unroll
          for (int dt = 0; dt < kNTilesO; ++dt) {
            acc_o[mt][dt][2 * hf] *= alpha[mt][hf];
            acc_o[mt][dt][2 * hf + 1] *= alpha[mt][hf];
          }
        }
      }
    }
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
#pragma unroll
        for (int nt = 0; nt < kNTilesS; ++nt) {
          row_sum[mt][hf] += acc_s[mt][nt][2 * hf] + acc_s[mt][nt][2 * hf + 1];
        }
      }
    }

    if constexpr (kStages == 1) {
      // V[n] has landed and every warp is done with K[n]: fetch K[n-1] into its buffer.
      CpAsyncWait<0>();
      __syncthreads();
      if (n > tiles.begin) {
        LoadTile<Traits, kBlockN>(smem_k, k_ptr + int64_t{key0 - kBlockN} * p.k_row_stride,
                                  p.k_row_stride, kBlockN, valid_chunks, tid);
      }
      CpAsyncCommit();
    }

    // O += P V. P's A fragment for keys [16 kk, 16 kk + 16) is the S accumulators of n8 tiles
    // 2 kk and 2 kk + 1, rounded to 16 bits.
    [[maybe_unused]] uint32_t v_next[4];
    if constexpr (Traits::kPrefetchFragments) {
      LdsmX4Trans(v_next, KVTile::LdsmAddress(v_lane, 0, 0));
    }
#pragma unroll
    for (int kk = 0; kk < kNTilesS / 2; ++kk) {
      uint32_t p_frag[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        p_frag[mt][0] = Ops::Pack(acc_s[mt][2 * kk][0], acc_s[mt][2 * kk][1]);
        p_frag[mt][1] = Ops::Pack(acc_s[mt][2 * kk][2], acc_s[mt][2 * kk][3]);
        p_frag[mt][2] = Ops::Pack(acc_s[mt][2 * kk + 1][0], acc_s[mt][2 * kk + 1][1]);
        p_frag[mt][3] = Ops::Pack(acc_s[mt][2 * kk + 1][2], acc_s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < kNTilesO / 2; ++dp) {
        uint32_t v_frag[4];
        if constexpr (Traits::kPrefetchFragments) {
          // v_next holds this step's fragment, loaded one (kk, dp) step earlier.
          const int step = kk * (kNTilesO / 2) + dp;
#pragma unroll
          for (int e = 0; e < 4; ++e) v_frag[e] = v_next[e];
          if (step + 1 < (kNTilesS / 2) * (kNTilesO / 2)) {
            const int kk1 = (step + 1) / (kNTilesO / 2);
            const int dp1 = (step + 1) % (kNTilesO / 2);
            LdsmX4Trans(v_next, KVTile::LdsmAddress(v_lane, kk1 * 16, 2 * dp1));
          }
        } else {
          LdsmX4Trans(v_frag, KVTile::LdsmAddress(v_lane, kk * 16, 2 * dp));
        }
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          Ops::Mma(acc_o[mt][2 * dp], p_frag[mt], v_frag[0], v_frag[1]);
          Ops::Mma(acc_o[mt][2 * dp + 1], p_frag[mt], v_frag[2], v_frag[3]);
        }
      }
    }
    if constexpr (kStages == 2) stage ^= 1;
  };

  // Descending tile order: tiles [top, end) need the mask (sequence tail, right side of the
  // window), then [bottom, top) run unmasked, then [begin, bottom) need it again (left side of
  // the window). The general variant masks every tile.
  int top = tiles.end;
  int bottom = tiles.begin;
  if constexpr (kGeneral) {
    top = bottom;
  } else {
    while (top > tiles.begin &&
           TileNeedsMask(top - 1, row0, rows, len_q, len_k, kBlockN, left, right)) {
      --top;
    }
    if constexpr (kHasWindow) {
      while (bottom < top &&
             TileNeedsMask(bottom, row0, rows, len_q, len_k, kBlockN, left, right)) {
        ++bottom;
      }
    }
  }
  int n = tiles.end - 1;
  for (; n >= top; --n) step(n, std::true_type{});
  for (; n >= bottom; --n) step(n, std::false_type{});
  if constexpr (kHasWindow) {
    for (; n >= tiles.begin; --n) step(n, std::true_type{});
  }

  // Epilogue: O /= rowsum, LSE = ln(sum) + max (natural log). A row without any allowed key has
  // sum 0: o = 0 and lse = -inf.
  float lse[kMTiles][2];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float sum = row_sum[mt][hf];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const float inv = sum == 0.f ? 0.f : 1.f / sum;
      lse[mt][hf] = sum == 0.f ? -INFINITY : (row_max[mt][hf] * scale_log2 + log2f(sum)) * kLn2;
#pragma unroll
      for (int dt = 0; dt < kNTilesO; ++dt) {
        acc_o[mt][dt][2 * hf] *= inv;
        acc_o[mt][dt][2 * hf + 1] *= inv;
      }
    }
  }

  // Stage this warp's O rows in its own rows of the Q tile (no other warp reads them, and all
  // copies into shared memory have completed), then write 16-byte chunks to global memory. The
  // __syncwarp orders this warp's last ldmatrix reads of those rows before the writes.
  __syncwarp();
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int r = warp_row0 + mt * 16 + g + 8 * hf;
#pragma unroll
      for (int dt = 0; dt < kNTilesO; ++dt) {
        StoreShared32(smem_q + QTile::Offset(r, dt) + 4 * t,
                      Ops::Pack(acc_o[mt][dt][2 * hf], acc_o[mt][dt][2 * hf + 1]));
      }
    }
  }
  __syncwarp();
  constexpr int kWarpChunks = 16 * kMTiles * kChunks;
  static_assert(kWarpChunks % 32 == 0, "whole rounds of 32 lanes");
#pragma unroll
  for (int it = 0; it < kWarpChunks / 32; ++it) {
    const int idx = lane + 32 * it;
    const int r = warp_row0 + idx / kChunks;
    const int c = idx % kChunks;
    if (r < rows && c < valid_chunks) {
      *reinterpret_cast<uint4*>(o_ptr + r * p.o_row_stride + c * 8) =
          LoadShared128(smem_q + QTile::Offset(r, c));
    }
  }
  if (lse_ptr != nullptr && t == 0) {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int r = warp_row0 + mt * 16 + g + 8 * hf;
        if (r < rows) lse_ptr[r] = lse[mt][hf];
      }
    }
  }
}

}  // namespace attention::cuda::fwd

#endif  // ATTENTION_KERNELS_CUDA_FLASH_FWD_KERNEL_CUH_
