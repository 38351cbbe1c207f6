// Device code of the Hopper dK / dV kernel (sm_90a): FlashBwdKernel's algorithm
// (flash_bwd_kernel.cuh) with its products on warpgroup MMAs (wgmma).
//
// One block of two warpgroups per (128-key tile, KV head, sequence), looping over the query heads
// of the KV head's group and the query tiles that see the key tile (block_info.h's KvTiles with
// queries and keys swapped), so that dK and dV are summed in registers with no atomics.
// Warpgroup w owns keys [64 w, 64 w + 64) of the tile. Per query tile (kBlockM query rows):
//   A. S^T = K Q^T and dP^T = V dO^T: wgmma m64nNk16 (N = kBlockM), K and V the K-major A
//      operand, Q and dO the K-major B operand, all from shared memory (the 128-byte swizzled
//      SmemTile layout the forward sm90 kernel uses);
//   B. P^T and dS^T element by element in registers (ScoreRule: masks, ALiBi, softcap's chain
//      rule); dS^T is also stored to shared memory (16-bit) for product D;
//   C. dV += P^T dO and dK += dS^T Q: wgmma m64nNk16 (N = head_dim) with P^T / dS^T straight from
//      registers as the A operand (the m64nN accumulator layout rounded to 16 bits is the A
//      fragment layout), dO and Q the N-major B operand from shared memory;
//   D. dQ += dS K: each warpgroup one m64n64 share (Traits::kDqWarpgroupsM), A = the dS^T tile
//      read M-major (wgmma's transpose flag), B = K read N-major; float32 result added into
//      dq_accum with red.global.add.v2.f32 (AtomicAdd2).
// Dense variant (BwdSm90KernelTraits::kOverlap): B is split around C, P^T computed while dP^T is
// still on the tensor cores and dS^T while dV's product runs.
// Q, dO, lse and D come in two stages: the next query tile's copies (cp.async) fly during all the
// products of this one. Barriers: one per query tile before its products (its copies landed and
// are visible to the async proxy; every warpgroup is done with the previous tile's dS^T and
// stage), one between B and D (both warpgroups' dS^T rows written).
// Only the non-deterministic mode: the host dispatch runs the mma.sync kernels for the
// deterministic one (FlashBwdDqKernel writes dq itself).
// Compiled to an empty kernel for architectures other than sm_90a; the host dispatch launches it
// only on compute capability 9.0 devices when the build includes sm_90a.
// Head-dim bucket 256 runs the split form (FlashBwdSm90SplitBody, below) instead: 64-key tiles
// whose dK and dV are split along head_dim between the two warpgroups; by default as
// FlashBwdSm90SplitBulkKernel (dQ by bulk tensor reductions, Q / dO by TMA), else as
// FlashBwdSm90SplitKernel (atomics and cp.async, the fallback where no tensor map is built).
#ifndef ATTENTION_KERNELS_CUDA_FLASH_BWD_SM90_KERNEL_CUH_
#define ATTENTION_KERNELS_CUDA_FLASH_BWD_SM90_KERNEL_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/attention_params.h"
#include "kernels/cuda/block_info.h"
#include "kernels/cuda/flash_bwd_bulk.cuh"
#include "kernels/cuda/flash_bwd_kernel.cuh"
#include "kernels/cuda/flash_bwd_launch.h"
#include "kernels/cuda/flash_bwd_traits.h"
#include "kernels/cuda/flash_fwd_common.cuh"
#include "kernels/cuda/tma_utils.cuh"
#include "kernels/cuda/wgmma_ops.cuh"

namespace attention::cuda::bwd {

using fwd::AdvanceDescriptor;
using fwd::FenceAccumulators;
using fwd::FenceFragments;
using fwd::FenceMbarrierInit;
using fwd::FenceProxyAsyncShared;
using fwd::MbarrierArriveExpectTx;
using fwd::MbarrierInit;
using fwd::MbarrierWait;
using fwd::SmemDescriptor;
using fwd::StoreSharedZero128;
using fwd::TmaLoad4d;
using fwd::Wgmma;
using fwd::WgmmaCommit;
using fwd::WgmmaFence;
using fwd::WgmmaWait;

// The A fragments (m64nNk16, 16-bit) of k16 step kk of an m64nN float32 accumulator tile: columns
// [16 kk, 16 kk + 16) of the warp's 16 rows, which is the layout wgmma's register A operand takes.
template <typename Element, int kNTiles>
__device__ __forceinline__ void PackFragment(uint32_t (&frag)[4], const float (&acc)[kNTiles][4],
                                             int kk) {
  using Ops = MmaOps<Element>;
  frag[0] = Ops::Pack(acc[2 * kk][0], acc[2 * kk][1]);
  frag[1] = Ops::Pack(acc[2 * kk][2], acc[2 * kk][3]);
  frag[2] = Ops::Pack(acc[2 * kk + 1][0], acc[2 * kk + 1][1]);
  frag[3] = Ops::Pack(acc[2 * kk + 1][2], acc[2 * kk + 1][3]);
}

// Grid: (ceil(seqlen_k / kBlockN), kv_heads, batch); kNThreads threads; Traits::kSmemLaunchBytes
// of dynamic shared memory. `p` normalized and checked by the host API, p.deterministic false.
template <typename Traits, typename Element, bool kGeneral>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    FlashBwdSm90Kernel(const __grid_constant__ BwdParams p) {
#ifdef ATTN_HAVE_WGMMA
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kNTilesS = Traits::kNTilesS;
  constexpr int kNTilesD = Traits::kNTilesD;
  constexpr int kQStages = Traits::kQStages;
  using QTile = typename Traits::QTile;
  using KVTile = typename Traits::KVTile;
  using DsTile = typename Traits::DsTile;
  using Ops = MmaOps<Element>;
  using MmaS = Wgmma<Element, kBlockM>;    // S^T, dP^T: N = query rows
  using MmaKV = Wgmma<Element, kHeadDim>;  // dV, dK: N = head_dim
  using MmaQ = Wgmma<Element, 64>;         // dQ: one 64-column share per warpgroup
  static_assert(kQStages == 2, "the next query tile's copies fly during this one's products");
  // The dense variant splits the element-wise step around dV's product (Traits::kOverlap); the
  // general one (softcap's factor needs the raw score after P) computes P^T and dS^T together.
  constexpr bool kOverlap = Traits::kOverlap && !kGeneral;

  extern __shared__ __align__(1024) unsigned char smem[];
  const uint32_t smem_base = (SmemAddress(smem) + 1023u) & ~1023u;
  unsigned char* const smem_aligned = smem + (smem_base - SmemAddress(smem));
  const uint32_t smem_k = smem_base + Traits::kSmemKOffset;
  const uint32_t smem_v = smem_base + Traits::kSmemVOffset;
  const uint32_t smem_q = smem_base + Traits::kSmemQOffset;
  const uint32_t smem_do = smem_base + Traits::kSmemDoOffset;
  const uint32_t smem_ds = smem_base + Traits::kSmemDsOffset;
  // The query tile of iteration `it` lives in stage it % 2: its Q / dO bytes at q_stage_offset(it)
  // past smem_q / smem_do, its lse and D at row_stage(it) past the first ones.
  const auto q_stage_offset = [](int it) -> uint32_t {
    return static_cast<uint32_t>(it % 2) * Traits::kQStageBytes;
  };
  const auto row_stage = [](int it) { return it % 2 * 2 * kBlockM; };
  float* const lse_tile0 = reinterpret_cast<float*>(smem_aligned + Traits::kSmemLseOffset);
  float* const d_tile0 = reinterpret_cast<float*>(smem_aligned + Traits::kSmemDOffset);

  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int warpgroup = warp / 4;
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

  // The warp's 16 key rows of S^T, dK and dV (the m64nN layout: 16 rows per warp of its
  // warpgroup's 64), and its share of dQ: query rows dq_row0 + [0, 16), head_dim columns
  // dq_col0 + [0, 64).
  const int warp_key0 = 64 * warpgroup + 16 * (warp % 4);
  const int dq_wg_row0 = 64 * (warpgroup % Traits::kDqWarpgroupsM);
  const int dq_row0 = dq_wg_row0 + 16 * (warp % 4);
  const int dq_panel = warpgroup / Traits::kDqWarpgroupsM;
  const int dq_col0 = 64 * dq_panel;

  // Copies of iteration `it`'s query tile (head, tile) into its stage: Q and dO by cp.async; this
  // thread's entry of lse_log2 (threads [0, kBlockM)) or D (threads [kBlockM, 2 kBlockM))
  // returned, for store_row_entry once the stage's previous readers are done.
  const auto load_query_tile = [&](int it) -> float {
    return LoadQueryTile<Traits, kBlockM, Element>(
        p, b, seq, kv_head * group + it / n_qtiles, (qtiles.begin + it % n_qtiles) * kBlockM,
        smem_q + q_stage_offset(it), smem_do + q_stage_offset(it), valid_chunks, tid);
  };
  // Thread tid < kBlockM stores lse_log2 entry tid, thread kBlockM + i D entry i.
  const auto store_row_entry = [&](float x, int it) {
    StoreRowEntry<kBlockM>(lse_tile0, d_tile0, row_stage(it), x, tid);
  };

  LoadTile<Traits, kBlockN>(smem_k, k, p.k_row_stride, keys, valid_chunks, tid);
  LoadTile<Traits, kBlockN>(smem_v, v, p.v_row_stride, keys, valid_chunks, tid);
  CpAsyncCommit();
  if (iters > 0) store_row_entry(load_query_tile(0), 0);
  CpAsyncCommit();

  float acc_dk[kNTilesD][4];
  float acc_dv[kNTilesD][4];
#pragma unroll
  for (int dt = 0; dt < kNTilesD; ++dt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      acc_dk[dt][e] = 0.f;
      acc_dv[dt][e] = 0.f;
    }
  }

  // Descriptors (128-byte swizzle; rows of a 64-column panel 128 bytes apart, 8-row groups 1024
  // apart). K-major operands (K, V as A of product A; Q, dO as its B): a k16 step of head_dim is
  // 32 bytes within a panel, the next panel kRows * 128 bytes further. N-major operands (dO, Q
  // as B of product C, K as B of D) and the M-major dS^T (A of D): the leading byte offset is the
  // panel stride, a k16 step is 16 rows = 2048 bytes.
  const uint64_t k_desc_a = SmemDescriptor(smem_k + warpgroup * 64 * 128, 16, 1024);
  const uint64_t v_desc_a = SmemDescriptor(smem_v + warpgroup * 64 * 128, 16, 1024);
  const uint64_t ds_desc_a =
      SmemDescriptor(smem_ds + (dq_wg_row0 / 64) * (kBlockN * 128), kBlockN * 128, 1024);
  const uint64_t k_desc_b =
      SmemDescriptor(smem_k + dq_panel * (kBlockN * 128), kBlockN * 128, 1024);

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

    // This tile's copies landed and are visible to the tensor cores; every warpgroup is done with
    // the previous tile (its products completed), so the other stage and dS^T are free.
    CpAsyncWait<0>();
    FenceProxyAsyncShared();
    __syncthreads();
    float next_row_entry = 0.f;
    if (it + 1 < iters) next_row_entry = load_query_tile(it + 1);
    CpAsyncCommit();
    const uint32_t q_off = q_stage_offset(it);
    const float* lse_tile = lse_tile0 + row_stage(it);
    const float* d_tile = d_tile0 + row_stage(it);

    // A. S^T = K Q^T and dP^T = V dO^T for the warpgroup's 64 keys x kBlockM queries, one
    // commit group each.
    float acc_s[kNTilesS][4];
    float acc_dp[kNTilesS][4];
    {
      const uint64_t q_desc = SmemDescriptor(smem_q + q_off, 16, 1024);
      const uint64_t do_desc = SmemDescriptor(smem_do + q_off, 16, 1024);
      WgmmaFence();
#pragma unroll
      for (int ks = 0; ks < kHeadDim / 16; ++ks) {
        const uint32_t a_off = (ks / 4) * (kBlockN * 128) + (ks % 4) * 32;
        const uint32_t b_off = (ks / 4) * (kBlockM * 128) + (ks % 4) * 32;
        MmaS::SS(acc_s, AdvanceDescriptor(k_desc_a, a_off), AdvanceDescriptor(q_desc, b_off),
                 ks > 0);
      }
      WgmmaCommit();
#pragma unroll
      for (int ks = 0; ks < kHeadDim / 16; ++ks) {
        const uint32_t a_off = (ks / 4) * (kBlockN * 128) + (ks % 4) * 32;
        const uint32_t b_off = (ks / 4) * (kBlockM * 128) + (ks % 4) * 32;
        MmaS::SS(acc_dp, AdvanceDescriptor(v_desc_a, a_off), AdvanceDescriptor(do_desc, b_off),
                 ks > 0);
      }
      WgmmaCommit();
    }
    const uint64_t do_desc_n = SmemDescriptor(smem_do + q_off, kBlockM * 128, 1024);
    const uint64_t q_desc_n = SmemDescriptor(smem_q + q_off, kBlockM * 128, 1024);
    uint32_t p_frag[kBlockM / 16][4];
    uint32_t ds_frag[kBlockM / 16][4];
    if constexpr (kOverlap) {
      // Visits the warp's elements of the [64 keys, kBlockM queries] tile: f(nt, hf, e, r, c)
      // for accumulator entry [nt][2 hf + e], key row r of the tile and query column c + e.
      const auto for_each_element = [&](auto&& f) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
#pragma unroll
          for (int nt = 0; nt < kNTilesS; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) f(nt, hf, e, warp_key0 + g + 8 * hf, 8 * nt + 2 * t);
          }
        }
      };
      const auto store_ds = [&] {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
#pragma unroll
          for (int nt = 0; nt < kNTilesS; ++nt) {
            StoreShared32(smem_ds + DsTile::Offset(warp_key0 + g + 8 * hf, nt) + 4 * t,
                          Ops::Pack(acc_dp[nt][2 * hf], acc_dp[nt][2 * hf + 1]));
          }
        }
      };
      // C. dV += P^T dO or dK += dS^T Q, A from registers (one commit group).
      const auto issue_rs = [&](float(&acc)[kNTilesD][4], const uint32_t(&frag)[kBlockM / 16][4],
                                uint64_t desc) {
        WgmmaFence();
#pragma unroll
        for (int kk = 0; kk < kBlockM / 16; ++kk) {
          MmaKV::RS(acc, frag[kk], AdvanceDescriptor(desc, kk * 16 * 128));
        }
        WgmmaCommit();
      };
      // B1 while dP^T runs: P^T = exp2(s scale log2(e) - lse_log2) into acc_s, then dV's
      // product on the tensor cores while B2 runs.
      WgmmaWait<1>();
      FenceAccumulators(acc_s);
      for_each_element([&](int nt, int hf, int e, int r, int c) {
        float& s = acc_s[nt][2 * hf + e];
        s = rule.Prob(s, lse_tile[c + e], q0 + c + e, key0 + r, needs_mask);
      });
#pragma unroll
      for (int kk = 0; kk < kBlockM / 16; ++kk) PackFragment<Element>(p_frag[kk], acc_s, kk);
      issue_rs(acc_dv, p_frag, do_desc_n);
      // B2: dS^T = P^T (dP^T - D) into acc_dp and shared memory.
      WgmmaWait<1>();
      FenceAccumulators(acc_dp);
      for_each_element([&](int nt, int hf, int e, int, int c) {
        float& dp = acc_dp[nt][2 * hf + e];
        dp = acc_s[nt][2 * hf + e] * (dp - d_tile[c + e]);
      });
      store_ds();
#pragma unroll
      for (int kk = 0; kk < kBlockM / 16; ++kk) PackFragment<Element>(ds_frag[kk], acc_dp, kk);
      issue_rs(acc_dk, ds_frag, q_desc_n);
    } else {
      // B: P^T into acc_s and dS^T into acc_dp (and shared memory) once both products are done;
      // C: dV and dK's products in one commit group.
      WgmmaWait<0>();
      FenceAccumulators(acc_s);
      FenceAccumulators(acc_dp);
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int r = warp_key0 + g + 8 * hf;
        const int j = key0 + r;
#pragma unroll
        for (int nt = 0; nt < kNTilesS; ++nt) {
          const int c = 8 * nt + 2 * t;
          float pv[2];
          float dsv[2];
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int i = q0 + c + e;
            const float s = acc_s[nt][2 * hf + e];
            const float dp = acc_dp[nt][2 * hf + e];
            if (needs_mask) {
              rule.template Grad<true>(s, dp, lse_tile[c + e], d_tile[c + e], i, j, pv[e], dsv[e]);
            } else {
              rule.template Grad<false>(s, dp, lse_tile[c + e], d_tile[c + e], i, j, pv[e], dsv[e]);
            }
            acc_s[nt][2 * hf + e] = pv[e];
            acc_dp[nt][2 * hf + e] = dsv[e];
          }
          StoreShared32(smem_ds + DsTile::Offset(r, nt) + 4 * t, Ops::Pack(dsv[0], dsv[1]));
        }
      }
#pragma unroll
      for (int kk = 0; kk < kBlockM / 16; ++kk) {
        PackFragment<Element>(p_frag[kk], acc_s, kk);
        PackFragment<Element>(ds_frag[kk], acc_dp, kk);
      }
      WgmmaFence();
#pragma unroll
      for (int kk = 0; kk < kBlockM / 16; ++kk) {
        MmaKV::RS(acc_dv, p_frag[kk], AdvanceDescriptor(do_desc_n, kk * 16 * 128));
      }
#pragma unroll
      for (int kk = 0; kk < kBlockM / 16; ++kk) {
        MmaKV::RS(acc_dk, ds_frag[kk], AdvanceDescriptor(q_desc_n, kk * 16 * 128));
      }
      WgmmaCommit();
    }

    // D. dq_accum += dS K for the warpgroup's 64 queries x 64 columns, once both warpgroups'
    // dS^T rows are in shared memory (and visible to the async proxy).
    FenceProxyAsyncShared();
    __syncthreads();
    float acc_dq[8][4];
    WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      MmaQ::SSMN(acc_dq, AdvanceDescriptor(ds_desc_a, kk * 16 * 128),
                 AdvanceDescriptor(k_desc_b, kk * 16 * 128), kk > 0);
    }
    WgmmaCommit();
    WgmmaWait<0>();
    FenceAccumulators(acc_dq);
    FenceAccumulators(acc_dv);
    FenceAccumulators(acc_dk);
    FenceFragments(p_frag);
    FenceFragments(ds_frag);
    {
      const int rows = seq.len_q - q0;
      float* accum = p.dq_accum + ((seq.ws_start + q0) * p.q_heads + head) * int64_t{p.head_dim};
      const int64_t accum_row_stride = int64_t{p.q_heads} * p.head_dim;
#pragma unroll
      for (int n8 = 0; n8 < 8; ++n8) {
        const int col = dq_col0 + 8 * n8 + 2 * t;
        if (col < p.head_dim) {
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            const int r = dq_row0 + g + 8 * hf;
            if (r < rows) {
              AtomicAdd2(accum + r * accum_row_stride + col, acc_dq[n8][2 * hf],
                         acc_dq[n8][2 * hf + 1]);
            }
          }
        }
      }
    }
    if (it + 1 < iters) store_row_entry(next_row_entry, it + 1);
  }

  // Epilogue: dK (times the softmax scale) staged in the K tile, dV in the V tile, the warp's own
  // 16 key rows, once every product has completed (and every copy has landed).
  CpAsyncWait<0>();
  __syncthreads();
  Element* dk = static_cast<Element*>(p.dk) + b * p.k_batch_stride +
                (seq.k_start + key0) * p.k_row_stride + kv_head * p.k_head_stride;
  Element* dv = static_cast<Element*>(p.dv) + b * p.v_batch_stride +
                (seq.k_start + key0) * p.v_row_stride + kv_head * p.v_head_stride;
  StageAccumulator<KVTile, kNTilesD, Element>(acc_dk, p.softmax_scale, smem_k, warp_key0, 0, lane);
  StageAccumulator<KVTile, kNTilesD, Element>(acc_dv, 1.f, smem_v, warp_key0, 0, lane);
  CopyStagedTile<KVTile, Traits::kChunks, Traits::kNThreads>(smem_k, dk, p.k_row_stride, keys,
                                                             valid_chunks, tid);
  CopyStagedTile<KVTile, Traits::kChunks, Traits::kNThreads>(smem_v, dv, p.v_row_stride, keys,
                                                             valid_chunks, tid);
#endif  // ATTN_HAVE_WGMMA
}

// `desc` unchanged, but opaque to the compiler: a descriptor advanced step by step through it is
// computed right before its wgmma, not hoisted with all the others of the loop (16 k16 steps of
// two operands at head_dim 256 would hold 32 64-bit descriptors in registers at once).
__device__ __forceinline__ uint64_t OpaqueDescriptor(uint64_t desc) {
  asm volatile("mov.b64 %0, %0;\n" : "+l"(desc));
  return desc;
}

// dst[0..3] += x, y, z, w atomically (dst 16-byte aligned): one vector reduction
// (red.global.add.v4.f32, sm_90).
__device__ __forceinline__ void AtomicAdd4(float* dst, float x, float y, float z, float w) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float4*>(dst), make_float4(x, y, z, w));
#else
  atomicAdd(dst, x);
  atomicAdd(dst + 1, y);
  atomicAdd(dst + 2, z);
  atomicAdd(dst + 3, w);
#endif
}

// Two consecutive floats of shared memory (8-byte aligned).
__device__ __forceinline__ float2 LoadShared64f(uint32_t smem_addr) {
  float2 v;
  asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];\n" : "=f"(v.x), "=f"(v.y) : "r"(smem_addr));
  return v;
}

// Makes the compiler finish computing `frag` here: the shared-memory loads (volatile) after this
// point are not hoisted above it, so that the element-wise step of FlashBwdSm90SplitKernel takes
// its inputs one k16 step at a time instead of loading every step's first (which does not fit
// in registers next to dK and dV).
__device__ __forceinline__ void Settle(uint32_t (&frag)[4]) {
  asm volatile("" : "+r"(frag[0]), "+r"(frag[1]), "+r"(frag[2]), "+r"(frag[3]));
}

__device__ __forceinline__ void StoreShared64f(uint32_t smem_addr, float x, float y) {
  asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(smem_addr), "f"(x), "f"(y));
}

__device__ __forceinline__ void StoreShared128(uint32_t smem_addr, uint32_t x, uint32_t y,
                                               uint32_t z, uint32_t w) {
  asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(smem_addr), "r"(x), "r"(y),
               "r"(z), "r"(w));
}

// The head-dim split form of the Hopper dK / dV kernel (BwdSm90SplitKernelTraits, bucket 256).
// One block of two warpgroups per (64-key tile, KV head, sequence), the same loop over query
// heads and query tiles as FlashBwdSm90Kernel. Per 64-row query tile:
//   A. warpgroup 0: S^T = K Q^T, warpgroup 1: dP^T = V dO^T, each the whole [64 keys, 64
//      queries] tile (wgmma m64n64k16, SS, both K-major, 16 k16 steps over head_dim);
//   B. warpgroup w computes P^T and dS^T (ScoreRule::Grad) of query columns [32 w, 32 w + 32),
//      taking the other product's half from the partner through a float32 scratch (exchange 1,
//      one block barrier); it stores its dS^T half into the 16-bit DsTile (the A operand of D)
//      and hands its packed P^T / dS^T fragments to the partner through the scratch (exchange 2,
//      one block barrier), so that both hold all four k16 steps of both;
//   C. dV[:, half w] += P^T dO[:, half w] and C'. dK[:, half w] += dS^T Q[:, half w]: wgmma
//      m64n128k16 RS, the fragments from registers, dO and Q N-major;
//   D. dQ[:, half w] += dS K[:, half w]: two m64n64 SSMN products (A = the DsTile read M-major,
//      B = K read N-major), each added into dq_accum with red.global.add.v2.f32 (.v4 with
//      Traits::kDqVec4); with Traits::kDqOverlap the first pass's atomics run while the second
//      is on the tensor cores.
// Q, dO, lse and D in two stages as FlashBwdSm90Kernel. Barriers per query tile: before A (the
// tile's copies landed; the previous tile's readers of the scratch, the DsTile and the other
// stage are done), after exchange 1, after exchange 2.
// With Traits::kDqBulk (FlashBwdSm90SplitBulkKernel) D's passes are staged in shared memory and
// added by bulk tensor reductions through maps->dq (flash_bwd_bulk.cuh), and the next tile's
// copies are issued after exchange 1 (BwdSm90SplitKernelTraits says why); with Traits::kTmaQ
// as bulk tensor copies through maps->q and maps->do_, awaited on an mbarrier per stage, and
// the barrier at the top of each tile goes. `maps` is null without kDqBulk.
// Grid: (ceil(seqlen_k / kBlockN), kv_heads, batch); kNThreads threads; Traits::kSmemLaunchBytes
// of dynamic shared memory. `p` normalized and checked by the host API, p.deterministic false.
template <typename Traits, typename Element, bool kGeneral>
__device__ __forceinline__ void FlashBwdSm90SplitBody(const BwdParams& p,
                                                      const BwdSplitMaps* maps) {
  static_cast<void>(maps);  // read only with Traits::kDqBulk
#ifdef ATTN_HAVE_WGMMA
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kHalfDim = Traits::kHalfDim;
  constexpr int kNTilesS = Traits::kNTilesS;
  constexpr int kNTilesD = Traits::kNTilesD;
  constexpr int kDqPasses = Traits::kDqPasses;
  constexpr int kKSteps = kBlockM / 16;  // k16 steps of products C and C' (queries)
  using KVTile = typename Traits::KVTile;
  using DsTile = typename Traits::DsTile;
  using Ops = MmaOps<Element>;
  using MmaS = Wgmma<Element, kBlockM>;    // S^T, dP^T: N = query rows
  using MmaKV = Wgmma<Element, kHalfDim>;  // dV, dK: N = the warpgroup's head_dim columns
  using MmaQ = Wgmma<Element, 64>;         // dQ: one 64-column panel per pass
  static_assert(Traits::kQStages == 2, "the next query tile's copies fly during this one's");
  static_assert(Traits::kWarpgroups == 2, "one warpgroup per kind of product A");
  static_assert(kNTilesS == 8 && kBlockN == 64, "S^T and dP^T: one m64n64 accumulator each");
  static_assert(kDqPasses == 2, "dQ: two m64n64 passes per warpgroup");

  extern __shared__ __align__(1024) unsigned char smem[];
  const uint32_t smem_base = (SmemAddress(smem) + 1023u) & ~1023u;
  unsigned char* const smem_aligned = smem + (smem_base - SmemAddress(smem));
  const uint32_t smem_k = smem_base + Traits::kSmemKOffset;
  const uint32_t smem_v = smem_base + Traits::kSmemVOffset;
  const uint32_t smem_q = smem_base + Traits::kSmemQOffset;
  const uint32_t smem_do = smem_base + Traits::kSmemDoOffset;
  const uint32_t smem_ds = smem_base + Traits::kSmemDsOffset;
  const auto q_stage_offset = [](int it) -> uint32_t {
    return static_cast<uint32_t>(it % 2) * Traits::kQStageBytes;
  };
  const auto row_stage = [](int it) { return it % 2 * 2 * kBlockM; };
  float* const lse_tile0 = reinterpret_cast<float*>(smem_aligned + Traits::kSmemLseOffset);
  float* const d_tile0 = reinterpret_cast<float*>(smem_aligned + Traits::kSmemDOffset);

  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int warpgroup = warp / 4;
  const int g = lane / 4;
  const int t = lane % 4;
  // This thread's scratch slot i: 16 bytes at scratch + 16 (128 i + warpgroup thread).
  const uint32_t scratch = smem_base + Traits::kSmemScratchOffset + 16 * (tid % 128);

  const int b = blockIdx.z;
  const int kv_head = blockIdx.y;
  const SeqBounds seq = LocateSequence(p, b);
  const int key0 = blockIdx.x * kBlockN;
  if (key0 >= seq.len_k) return;
  const int keys = min(kBlockN, seq.len_k - key0);
  const int valid_chunks = p.head_dim / 8;
  const int group = p.q_heads / p.kv_heads;

  const KvTileRange qtiles =
      KvTiles(key0, keys, seq.len_k, seq.len_q, kBlockM, p.window_right, p.window_left);
  const int n_qtiles = max(qtiles.end - qtiles.begin, 0);
  const int iters = group * n_qtiles;
  // Iteration it: query head kv_head * group + it / n_qtiles, query tile qtile_of(it). With
  // Traits::kStaggerQ each block starts its walk over the query tiles at tile blockIdx.x (mod
  // n_qtiles), so that the blocks running at once (consecutive key tiles of one head) add into
  // different rows of dq_accum and read different Q / dO tiles instead of the same ones.
  const int q_rotation =
      Traits::kStaggerQ && n_qtiles > 0 ? static_cast<int>(blockIdx.x % n_qtiles) : 0;
  const auto qtile_of = [&](int it) {
    const int r = it % n_qtiles + q_rotation;
    return qtiles.begin + (r >= n_qtiles ? r - n_qtiles : r);
  };

  const Element* k = static_cast<const Element*>(p.k) + b * p.k_batch_stride +
                     (seq.k_start + key0) * p.k_row_stride + kv_head * p.k_head_stride;
  const Element* v = static_cast<const Element*>(p.v) + b * p.v_batch_stride +
                     (seq.k_start + key0) * p.v_row_stride + kv_head * p.v_head_stride;

  // The warp's 16 key rows of S^T / dP^T, dK and dV, and its 16 query rows of dQ (the m64nN
  // layout: 16 rows per warp of the warpgroup's 64); the warpgroup's head_dim columns.
  const int warp_row0 = 16 * (warp % 4);
  const int col0 = kHalfDim * warpgroup;

  // As FlashBwdSm90Kernel's: Q and dO of iteration `it` into its stage by cp.async; the lse_log2
  // (threads [0, kBlockM)) or D (threads [kBlockM, 2 kBlockM)) entry returned for
  // store_row_entry.
  // Traits::kTmaQ: thread 0 issues the tile's eight boxes (four 64-column panels of Q and of dO)
  // on the stage's mbarrier, which completes once their 64 KB have landed; rows past the
  // sequence get lse_log2 = +inf (P = 0 there whatever lands in them: the tail zeroing below
  // keeps what does finite).
  const uint32_t smem_bar = smem_base + Traits::kSmemBarOffset;
  const auto load_query_tile = [&](int it) -> float {
    const int head = kv_head * group + it / n_qtiles;
    const int q0 = qtile_of(it) * kBlockM;
    if constexpr (Traits::kTmaQ) {
      static_assert(kBlockM == kQueryBoxRows && kHeadDim % kQueryBoxCols == 0, "whole boxes");
      constexpr int kPanels = kHeadDim / kQueryBoxCols;
      if (tid == 0) {
        const uint32_t bar = smem_bar + 8 * (it % 2);
        const int c2 = static_cast<int>(seq.q_start) + q0;
        const int c3 = p.cu_seqlens_q != nullptr ? 0 : b;
        MbarrierArriveExpectTx(bar, 2 * kPanels * kBlockM * 128);
#pragma unroll
        for (int panel = 0; panel < kPanels; ++panel) {
          const uint32_t off = q_stage_offset(it) + panel * (kBlockM * 128);
          TmaLoad4d(smem_q + off, &maps->q, bar, panel * kQueryBoxCols, head, c2, c3);
          TmaLoad4d(smem_do + off, &maps->do_, bar, panel * kQueryBoxCols, head, c2, c3);
        }
      }
      const int rows = seq.len_q - q0;
      const int64_t ws = head * p.q_rows + seq.ws_start + q0;
      if (tid < kBlockM) return tid < rows ? p.lse_log2[ws + tid] : INFINITY;
      if (tid < 2 * kBlockM) return RowFloat(p.dsum + ws, rows, tid - kBlockM);
      return 0.f;
    } else {
      return LoadQueryTile<Traits, kBlockM, Element>(
          p, b, seq, head, q0, smem_q + q_stage_offset(it), smem_do + q_stage_offset(it),
          valid_chunks, tid);
    }
  };
  const auto store_row_entry = [&](float x, int it) {
    StoreRowEntry<kBlockM>(lse_tile0, d_tile0, row_stage(it), x, tid);
  };

  if constexpr (Traits::kTmaQ) {
    if (tid == 0) {
      MbarrierInit(smem_bar, 1);
      MbarrierInit(smem_bar + 8, 1);
      FenceMbarrierInit();
    }
    __syncthreads();
  }
  LoadTile<Traits, kBlockN>(smem_k, k, p.k_row_stride, keys, valid_chunks, tid);
  LoadTile<Traits, kBlockN>(smem_v, v, p.v_row_stride, keys, valid_chunks, tid);
  CpAsyncCommit();
  if (iters > 0) store_row_entry(load_query_tile(0), 0);
  CpAsyncCommit();

  float acc_dk[kNTilesD][4];
  float acc_dv[kNTilesD][4];
#pragma unroll
  for (int dt = 0; dt < kNTilesD; ++dt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      acc_dk[dt][e] = 0.f;
      acc_dv[dt][e] = 0.f;
    }
  }

  // Descriptors as FlashBwdSm90Kernel's (128-byte swizzle). Product A: K (warpgroup 0) or V
  // (warpgroup 1) K-major as A, Q or dO K-major as B (a k16 step 32 bytes within a 64-column
  // panel, the next panel kRows * 128 bytes further). D: the DsTile M-major as A, K's panels
  // col0 / 64 + pass N-major as B (a k16 step of keys 16 rows = 2048 bytes).
  const uint64_t a_desc = SmemDescriptor(warpgroup == 0 ? smem_k : smem_v, 16, 1024);
  const uint32_t smem_b = warpgroup == 0 ? smem_q : smem_do;
  const uint64_t ds_desc_a = SmemDescriptor(smem_ds, kBlockN * 128, 1024);
  const uint64_t k_desc_b =
      SmemDescriptor(smem_k + (col0 / 64) * (kBlockN * 128), kBlockN * 128, 1024);

  // Tile it + 1's copies into the other stage, once every reader of it is done; returns its
  // lse_log2 / D entry for store_row_entry.
  const auto load_next_tile = [&](int it) -> float {
    float next_row_entry = 0.f;
    if (it + 1 < iters) next_row_entry = load_query_tile(it + 1);
    CpAsyncCommit();
    return next_row_entry;
  };
  // The barrier before query tile it's products: its copies landed and are visible to the
  // tensor cores, every reader of the other stage (products C / C' of tile it - 1, in both
  // warpgroups) is done; then tile it + 1's copies are issued into that stage (with
  // Traits::kDqBulk after exchange 1 instead: tile it - 1's bulk reductions still read that
  // stage). Returns tile it + 1's lse_log2 / D entry for store_row_entry (0 with kDqBulk).
  const auto tile_barrier = [&](int it) -> float {
    CpAsyncWait<0>();
    FenceProxyAsyncShared();
    __syncthreads();
    if constexpr (Traits::kDqBulk) return 0.f;
    return load_next_tile(it);
  };
  // A. S^T (warpgroup 0) or dP^T (warpgroup 1) of tile it, [64 keys, 64 queries], into acc:
  // issued as one commit group, not waited for.
  float acc[kNTilesS][4];
  const auto issue_a = [&](int it) {
    // k16 step ks: 32 bytes further within a 64-column panel, the next panel's start after
    // every fourth (kRows * 128 bytes per panel).
    uint64_t a_step = OpaqueDescriptor(a_desc);
    uint64_t b_step = OpaqueDescriptor(SmemDescriptor(smem_b + q_stage_offset(it), 16, 1024));
    WgmmaFence();
#pragma unroll
    for (int ks = 0; ks < kHeadDim / 16; ++ks) {
      MmaS::SS(acc, a_step, b_step, ks > 0);
      if (ks + 1 < kHeadDim / 16) {
        const bool next_panel = (ks + 1) % 4 == 0;
        a_step =
            OpaqueDescriptor(AdvanceDescriptor(a_step, next_panel ? kBlockN * 128 - 3 * 32 : 32));
        b_step =
            OpaqueDescriptor(AdvanceDescriptor(b_step, next_panel ? kBlockM * 128 - 3 * 32 : 32));
      }
    }
    WgmmaCommit();
  };
  // Traits::kPrefetchA: tile it + 1's barrier and product A come at the end of tile it, before
  // the atomics of its last dQ pass (which then run while A is on the tensor cores).
  float next_row_entry = 0.f;
  if constexpr (Traits::kPrefetchA) {
    if (iters > 0) {
      next_row_entry = tile_barrier(0);
      issue_a(0);
    }
  }

  for (int it = 0; it < iters; ++it) {
    const int head = kv_head * group + it / n_qtiles;
    const int m = qtile_of(it);
    const int q0 = m * kBlockM;
    ScoreRule<kGeneral> rule;
    rule.Init(p, seq, b, head);
    const bool needs_mask =
        kGeneral || keys < kBlockN ||
        TileNeedsMask(m, key0, keys, seq.len_k, seq.len_q, kBlockM, p.window_right, p.window_left);

    if constexpr (Traits::kTmaQ) {
      // The first tile's barrier publishes K, V (cp.async) and the first lse / D entries; later
      // tiles need none: exchange 1's barrier of the previous tile ordered every reuse (this
      // tile's boxes were issued after it, its lse / D entries stored after it and read after
      // this tile's own), and a warpgroup running ahead into this tile's exchange 1 writes only
      // the scratch region its partner no longer reads.
      if (it == 0) tile_barrier(0);
      MbarrierWait(smem_bar + 8 * (it % 2), (it / 2) & 1);
      if (seq.len_q - q0 < kBlockM) {
        // Rows past the sequence: zeros instead of whatever landed (the next packed sequence's
        // rows), so that P = 0 there gives exact zeros in dV and dK; then visible to the tensor
        // cores.
        const int rows = seq.len_q - q0;
        const int chunks = (kBlockM - rows) * (kHeadDim / 8);  // 16-byte chunks per tensor
        for (int x = tid; x < 2 * chunks; x += Traits::kNThreads) {
          const int y = x % chunks;
          const int r = rows + y / (kHeadDim / 8);
          const int c = y % (kHeadDim / 8);  // chunk of the row: panel c / 8, chunk c % 8
          StoreSharedZero128((x < chunks ? smem_q : smem_do) + q_stage_offset(it) +
                             (c / 8) * (kBlockM * 128) + r * 128 + (c % 8) * 16);
        }
        FenceProxyAsyncShared();
        __syncthreads();
      }
      issue_a(it);
    } else if constexpr (!Traits::kPrefetchA) {
      next_row_entry = tile_barrier(it);
      issue_a(it);
    }
    const uint32_t q_off = q_stage_offset(it);
    // lse_log2 and D of the tile's query columns, read two at a time.
    const uint32_t lse_addr = smem_base + Traits::kSmemLseOffset + 4 * row_stage(it) + 8 * t;
    const uint32_t d_addr = smem_base + Traits::kSmemDOffset + 4 * row_stage(it) + 8 * t;
    // Product A of this tile (and, with kPrefetchA, the previous tile's last dQ pass) complete.
    WgmmaWait<0>();
    FenceAccumulators(acc);

    // B. Warpgroup w computes P^T and dS^T of query columns [32 w, 32 w + 32): accumulator tiles
    // nt = 4 w + i (i < 4), the k16 steps 2 w and 2 w + 1 of products C / C'. It has S^T
    // (w = 0) or dP^T (w = 1) of them and takes the other from the partner warpgroup through
    // the scratch. Scratch region r (slots 4 r .. 4 r + 3 of each warpgroup thread x, 2 KB
    // apart): exchange 1, warpgroup w writes into region w the partner's half of its tile
    // (tiles 4 (1 - w) + i); exchange 2, warpgroup w writes its packed P^T and dS^T fragments
    // into region 1 - w (which only it has read since exchange 1). Entry [x] of a tile is key row
    // warp_row0 + g + 8 (x / 2), query column 8 nt + 2 t + x % 2.
    const bool holds_s = warpgroup == 0;
    const auto grad = [&](float s, float dp, int nt, int x, const float2& lse, const float2& d,
                          float& p_out, float& ds_out) {
      const int e = x % 2;
      const int i = q0 + 8 * nt + 2 * t + e;
      const int j = key0 + warp_row0 + g + 8 * (x / 2);
      const float l = e == 0 ? lse.x : lse.y;
      const float dd = e == 0 ? d.x : d.y;
      if (needs_mask) {
        rule.template Grad<true>(s, dp, l, dd, i, j, p_out, ds_out);
      } else {
        rule.template Grad<false>(s, dp, l, dd, i, j, p_out, ds_out);
      }
    };
    const auto slot = [&](int region, int i) -> uint32_t {
      return scratch + static_cast<uint32_t>(4 * region + i) * (128 * 16);
    };
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float v[4];
#pragma unroll
      for (int x = 0; x < 4; ++x) v[x] = holds_s ? acc[4 + i][x] : acc[i][x];
      StoreShared128(slot(warpgroup, i), __float_as_uint(v[0]), __float_as_uint(v[1]),
                     __float_as_uint(v[2]), __float_as_uint(v[3]));
    }
    if constexpr (Traits::kDqBulk) {
      // Tile it - 1's reductions have read their boxes (the other stage) before the barrier,
      // and tile it + 1's copies overwrite that stage after it.
      if (lane == 0) BulkWaitRead<0>();
      __syncthreads();
      next_row_entry = load_next_tile(it);
    } else {
      __syncthreads();
    }
    // own_p[h], own_ds[h]: fragments of k16 step 2 w + h.
    uint32_t own_p[2][4];
    uint32_t own_ds[2][4];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float prob[2][4];
      float dsv[2][4];
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int i = 2 * h + hh;
        const int nt = 4 * warpgroup + i;
        const uint4 o4 = LoadShared128(slot(1 - warpgroup, i));
        const float2 lse = LoadShared64f(lse_addr + 32 * nt);
        const float2 d = LoadShared64f(d_addr + 32 * nt);
        const float other[4] = {__uint_as_float(o4.x), __uint_as_float(o4.y), __uint_as_float(o4.z),
                                __uint_as_float(o4.w)};
#pragma unroll
        for (int x = 0; x < 4; ++x) {
          const float mine = holds_s ? acc[i][x] : acc[4 + i][x];
          grad(holds_s ? mine : other[x], holds_s ? other[x] : mine, nt, x, lse, d, prob[hh][x],
               dsv[hh][x]);
        }
      }
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        own_p[h][2 * hh] = Ops::Pack(prob[hh][0], prob[hh][1]);
        own_p[h][2 * hh + 1] = Ops::Pack(prob[hh][2], prob[hh][3]);
        own_ds[h][2 * hh] = Ops::Pack(dsv[hh][0], dsv[hh][1]);
        own_ds[h][2 * hh + 1] = Ops::Pack(dsv[hh][2], dsv[hh][3]);
      }
      Settle(own_p[h]);
      Settle(own_ds[h]);
    }
    // dS^T into the DsTile (own_ds[h][2 hh + hf]: tile 4 w + 2 h + hh, row g + 8 hf) and the
    // fragments to the partner.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        StoreShared32(
            smem_ds + DsTile::Offset(warp_row0 + g + 8 * (x % 2), 4 * warpgroup + 2 * h + x / 2) +
                4 * t,
            own_ds[h][x]);
      }
      StoreShared128(slot(1 - warpgroup, h), own_p[h][0], own_p[h][1], own_p[h][2], own_p[h][3]);
      StoreShared128(slot(1 - warpgroup, 2 + h), own_ds[h][0], own_ds[h][1], own_ds[h][2],
                     own_ds[h][3]);
    }
    // The DsTile and the fragments written; the DsTile visible to the tensor cores.
    FenceProxyAsyncShared();
    __syncthreads();
    uint32_t p_frag[kKSteps][4];
    uint32_t ds_frag[kKSteps][4];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const uint4 po = LoadShared128(slot(warpgroup, h));
      const uint4 dso = LoadShared128(slot(warpgroup, 2 + h));
      const uint32_t other_p[4] = {po.x, po.y, po.z, po.w};
      const uint32_t other_ds[4] = {dso.x, dso.y, dso.z, dso.w};
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        // k16 step h is warpgroup 0's, step 2 + h warpgroup 1's.
        p_frag[h][x] = holds_s ? own_p[h][x] : other_p[x];
        p_frag[2 + h][x] = holds_s ? other_p[x] : own_p[h][x];
        ds_frag[h][x] = holds_s ? own_ds[h][x] : other_ds[x];
        ds_frag[2 + h][x] = holds_s ? other_ds[x] : own_ds[h][x];
      }
    }

    // C. dV[:, half w] += P^T dO[:, half w] and C'. dK[:, half w] += dS^T Q[:, half w]: RS, the
    // fragments from registers, one commit group each.
    const auto issue_rs = [&](float(&acc_d)[kNTilesD][4], const uint32_t(&frag)[kKSteps][4],
                              uint64_t desc) {
      WgmmaFence();
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) {
        MmaKV::RS(acc_d, frag[kk], AdvanceDescriptor(desc, kk * 16 * 128));
      }
      WgmmaCommit();
    };
    // D. dQ[:, half w] += dS K[:, half w]: pass `pass` is columns col0 + 64 pass + [0, 64) of
    // the tile's 64 queries (one commit group), added into dq_accum.
    const auto issue_dq = [&](float(&acc_dq)[8][4], int pass) {
      const uint64_t a_desc_dq = OpaqueDescriptor(ds_desc_a);
      const uint64_t b_desc_dq = OpaqueDescriptor(k_desc_b);
      WgmmaFence();
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        MmaQ::SSMN(acc_dq, AdvanceDescriptor(a_desc_dq, kk * 16 * 128),
                   AdvanceDescriptor(b_desc_dq, pass * (kBlockN * 128) + kk * 16 * 128), kk > 0);
      }
      WgmmaCommit();
    };
    // Commit groups C, C' (and with kDqEarly the first dQ pass between them: it reads the
    // DsTile and K only, so it needs no wait).
    float acc_dq0[8][4];
    issue_rs(acc_dv, p_frag,
             SmemDescriptor(smem_do + q_off + (col0 / 64) * (kBlockM * 128), kBlockM * 128, 1024));
    if constexpr (Traits::kDqEarly) issue_dq(acc_dq0, 0);
    issue_rs(acc_dk, ds_frag,
             SmemDescriptor(smem_q + q_off + (col0 / 64) * (kBlockM * 128), kBlockM * 128, 1024));
    // dq_accum rows of the thread's atomics, at its first column; every entry it adds is one of
    // them plus a compile-time offset, so that the atomics of both passes need at most two 64-bit
    // addresses. Two-float reductions (kDqVec4 false): rows warp_row0 + g + 8 hf, column
    // col0 + 2 t. Four-float reductions (kDqVec4): lanes t and t ^ 1 swap half of their entries
    // of each n8 tile (one shuffle of two floats), so that even t adds row warp_row0 + g and odd
    // t row warp_row0 + g + 8, columns col0 + 2 (t & ~1) + [0, 4): half the reduction
    // instructions for the same bytes.
    constexpr bool kVec4 = Traits::kDqVec4;
    constexpr int kDqRows = kVec4 ? 1 : 2;
    const int dq_col = col0 + 2 * (kVec4 ? (t & ~1) : t);
    float* dq_row[kDqRows];
    bool dq_row_valid[kDqRows];
#pragma unroll
    for (int k = 0; k < kDqRows; ++k) {
      const int r = warp_row0 + g + 8 * (kVec4 ? (t & 1) : k);
      dq_row[k] =
          p.dq_accum + ((seq.ws_start + q0 + r) * p.q_heads + head) * int64_t{p.head_dim} + dq_col;
      dq_row_valid[k] = r < seq.len_q - q0;
    }
    // Valid columns from the first one (head_dim is a multiple of 8, so a group of four columns
    // starting at a multiple of 4 is valid whole or not at all).
    const int dq_cols = p.head_dim - dq_col;
    const auto add_dq = [&](const float(&acc_dq)[8][4], int pass) {
#pragma unroll
      for (int n8 = 0; n8 < 8; ++n8) {
        const int col = 64 * pass + 8 * n8;
        if constexpr (kVec4) {
          // Lane t sends the pair of the row its partner adds: odd t its row g pair, even t its
          // row g + 8 pair.
          const bool odd = (t & 1) != 0;
          const float send0 = odd ? acc_dq[n8][0] : acc_dq[n8][2];
          const float send1 = odd ? acc_dq[n8][1] : acc_dq[n8][3];
          const float recv0 = __shfl_xor_sync(0xffffffffu, send0, 1);
          const float recv1 = __shfl_xor_sync(0xffffffffu, send1, 1);
          if (col < dq_cols && dq_row_valid[0]) {
            if (odd) {
              AtomicAdd4(dq_row[0] + col, recv0, recv1, acc_dq[n8][2], acc_dq[n8][3]);
            } else {
              AtomicAdd4(dq_row[0] + col, acc_dq[n8][0], acc_dq[n8][1], recv0, recv1);
            }
          }
        } else if (col < dq_cols) {
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            if (dq_row_valid[hf]) {
              AtomicAdd2(dq_row[hf] + col, acc_dq[n8][2 * hf], acc_dq[n8][2 * hf + 1]);
            }
          }
        }
      }
    };
    // Traits::kDqBulk: pass `pass` of the warp's 16 rows into two 16 x 32 boxes (DqBoxOffset's
    // layout) in the warpgroup's two panels of dO (pass 0, free once C has completed) or Q (pass
    // 1, once C' has), then one bulk group of the two boxes' reductions, issued by lane 0. Rows
    // past the end of the query sequence are staged as zeros: their boxes' rows add +0 into the
    // next sequence's rows of dq_accum (which leaves every value as it is) or fall past q_rows
    // (dropped); a warp with no row in the sequence adds nothing. The warpgroup barrier first:
    // a warp's wgmma.wait_group covers its own share of C / C', but every warp's share reads all
    // 64 rows of the panels the boxes overwrite.
    const auto write_dq = [&](const float(&acc_dq)[8][4], int pass) {
      if constexpr (Traits::kDqBulk) {
        WarpgroupBarrier(1 + warpgroup);
        const int warp_rows = seq.len_q - q0 - warp_row0;
        if (warp_rows <= 0) return;
        const bool row_valid[2] = {g < warp_rows, g + 8 < warp_rows};
        const uint32_t box0 = (pass == 0 ? smem_do : smem_q) + q_off +
                              (col0 / 64) * (kBlockM * 128) + warp_row0 * 128;
#pragma unroll
        for (int n8 = 0; n8 < 8; ++n8) {
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            StoreShared64f(
                box0 + (n8 / 4) * (kBlockM * 128) + DqBoxOffset(g + 8 * hf, 8 * (n8 % 4) + 2 * t),
                row_valid[hf] ? acc_dq[n8][2 * hf] : 0.f,
                row_valid[hf] ? acc_dq[n8][2 * hf + 1] : 0.f);
          }
        }
        FenceProxyAsyncShared();
        __syncwarp();
        if (lane == 0) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int col = col0 + 64 * pass + kDqBoxCols * h;
            if (col < p.head_dim) {
              BulkReduceAdd3d(&maps->dq, box0 + h * (kBlockM * 128), col, head,
                              static_cast<int>(seq.ws_start + q0 + warp_row0));
            }
          }
          BulkCommit();
        }
      } else {
        add_dq(acc_dq, pass);
      }
    };
    // Commit groups in order: C, C', then D. Each wait frees what the next issue needs: C done
    // before D's first accumulator is taken (P^T's fragments free), C' done before the second
    // (dS^T's fragments free), so that dK, dV and at most 64 more floats are live.
    // kDqOverlap: the two passes in two accumulators, pass 0's atomics while pass 1 is on the
    // tensor cores; otherwise one accumulator, each pass's atomics after it completes.
    // kPrefetchA: once both warpgroups are past product C' of this tile (the waits above), the
    // next tile's barrier and product A, its own commit group after the last dQ pass's; wait
    // for that pass only. Else every product of this tile completes here.
    const auto finish_last_pass = [&]() {
      if (it + 1 < iters) {
        store_row_entry(next_row_entry, it + 1);
        if constexpr (Traits::kPrefetchA) {
          next_row_entry = tile_barrier(it + 1);
          issue_a(it + 1);
          WgmmaWait<1>();
          return;
        }
      }
      WgmmaWait<0>();
    };
    if constexpr (Traits::kDqEarly) {
      // C and the first pass done (C' running): its atomics while C' is on the tensor cores;
      // then the second pass in the same accumulator.
      WgmmaWait<1>();
      FenceAccumulators(acc_dv);
      FenceFragments(p_frag);
      FenceAccumulators(acc_dq0);
      write_dq(acc_dq0, 0);
      WgmmaWait<0>();
      FenceAccumulators(acc_dk);
      FenceFragments(ds_frag);
      issue_dq(acc_dq0, 1);
      finish_last_pass();
      FenceAccumulators(acc_dq0);
      write_dq(acc_dq0, 1);
      continue;
    }
    WgmmaWait<1>();
    FenceAccumulators(acc_dv);
    FenceFragments(p_frag);
    issue_dq(acc_dq0, 0);
    if constexpr (Traits::kDqOverlap) {
      float acc_dq1[8][4];
      WgmmaWait<1>();
      FenceAccumulators(acc_dk);
      FenceFragments(ds_frag);
      issue_dq(acc_dq1, 1);
      WgmmaWait<1>();
      FenceAccumulators(acc_dq0);
      add_dq(acc_dq0, 0);
      finish_last_pass();
      FenceAccumulators(acc_dq1);
      add_dq(acc_dq1, 1);
    } else {
      WgmmaWait<0>();
      FenceAccumulators(acc_dk);
      FenceFragments(ds_frag);
      FenceAccumulators(acc_dq0);
      write_dq(acc_dq0, 0);
      issue_dq(acc_dq0, 1);
      finish_last_pass();
      FenceAccumulators(acc_dq0);
      write_dq(acc_dq0, 1);
    }
  }

  if constexpr (Traits::kDqBulk) {
    // The last tiles' reductions complete before the block's shared memory goes.
    if (lane == 0) BulkWait<0>();
  }

  if constexpr (Traits::kPrefetchA) {
    // Already complete (the last tile issues no product A): says so to ptxas, which otherwise
    // injects this wait itself before dK's staging (C7517), unable to tie the loop's exit to
    // the last tile's wait.
    WgmmaWait<0>();
  }

  // Epilogue: dK (times the softmax scale) staged in the K tile, dV in the V tile (the warp's 16
  // key rows, the warpgroup's columns), once every product has completed and every copy landed.
  CpAsyncWait<0>();
  __syncthreads();
  Element* dk = static_cast<Element*>(p.dk) + b * p.k_batch_stride +
                (seq.k_start + key0) * p.k_row_stride + kv_head * p.k_head_stride;
  Element* dv = static_cast<Element*>(p.dv) + b * p.v_batch_stride +
                (seq.k_start + key0) * p.v_row_stride + kv_head * p.v_head_stride;
  StageAccumulator<KVTile, kNTilesD, Element>(acc_dk, p.softmax_scale, smem_k, warp_row0, col0,
                                              lane);
  StageAccumulator<KVTile, kNTilesD, Element>(acc_dv, 1.f, smem_v, warp_row0, col0, lane);
  CopyStagedTile<KVTile, Traits::kChunks, Traits::kNThreads>(smem_k, dk, p.k_row_stride, keys,
                                                             valid_chunks, tid);
  CopyStagedTile<KVTile, Traits::kChunks, Traits::kNThreads>(smem_v, dv, p.v_row_stride, keys,
                                                             valid_chunks, tid);
#endif  // ATTN_HAVE_WGMMA
}

// The split kernel with dQ added by atomics (Traits::kDqBulk false). Launch: FlashBwdSm90SplitBody.
template <typename Traits, typename Element, bool kGeneral>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    FlashBwdSm90SplitKernel(const __grid_constant__ BwdParams p) {
  static_assert(!Traits::kDqBulk, "the bulk reductions need maps: FlashBwdSm90SplitBulkKernel");
  FlashBwdSm90SplitBody<Traits, Element, kGeneral>(p, nullptr);
}

// The split kernel with dQ added by bulk tensor reductions (Traits::kDqBulk) and, with
// Traits::kTmaQ, Q and dO loaded by bulk tensor copies, through `maps` (EncodeBwdSplitMaps).
// Launch: FlashBwdSm90SplitBody.
template <typename Traits, typename Element, bool kGeneral>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    FlashBwdSm90SplitBulkKernel(const __grid_constant__ BwdParams p,
                                const __grid_constant__ BwdSplitMaps maps) {
  static_assert(Traits::kDqBulk, "FlashBwdSm90SplitKernel adds dQ with atomics");
  FlashBwdSm90SplitBody<Traits, Element, kGeneral>(p, &maps);
}

}  // namespace attention::cuda::bwd

#endif  // ATTENTION_KERNELS_CUDA_FLASH_BWD_SM90_KERNEL_CUH_
