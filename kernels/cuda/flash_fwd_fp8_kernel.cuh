// Device code of the FP8 (E4M3) Hopper forward kernel (sm_90a): the warp-specialized kernel's
// structure (flash_fwd_sm90ws_kernel.cuh: a TMA producer warpgroup, consumer warpgroups of 64
// query rows in ping-pong, a persistent or one-tile-per-block grid over FwdSm90WsSchedule) with
// e4m3 operands on the tensor cores:
//   - S = Q K^T is wgmma m64nNk32 e4m3 x e4m3 -> float32 on Q and K as stored (K-major).
//   - O += P V needs V K-major too (FP8 wgmma has no transpose): the kernel reads V^T from the
//     workspace the pre-pass TransposeVFp8 wrote (flash_fwd_fp8_launch.h), whose keys are
//     permuted within groups of 16 so that P's A fragments are the S accumulators rounded to e4m3
//     in place (PackP8). P is in [0, 1] relative to the running row max; the row sums use the
//     float32 P, so the only rounding beyond float32 accumulation is P's in the numerator.
//   - The descales: q_descale k_descale softmax_scale joins the base-2 softmax factor (and the
//     softcap's), so S stays raw e4m3 products; O is multiplied by v_descale before the epilogue.
//   - O is bfloat16, staged in a shared tile of its own and stored with the common epilogue
//     (StoreOutput: 1 / rowsum, sinks, LSE).
// Shared tiles of e4m3 are panels of kRowBytes-byte rows (128, or 64 where the tile's K extent is
// 64 bytes) in the swizzle of the same width, which the bulk copies write and the descriptors
// read; a k32 step is 32 bytes along a row.
// Compiled to an empty kernel for architectures other than sm_90a; the host API launches it only
// on compute capability 9.0 devices when the build includes sm_90a.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_FWD_FP8_KERNEL_CUH_
#define ATTENTION_KERNELS_CUDA_FLASH_FWD_FP8_KERNEL_CUH_

#include <cuda.h>
#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/attention_params.h"
#include "kernels/cuda/block_info.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/flash_fwd_common.cuh"
#include "kernels/cuda/flash_fwd_fp8_launch.h"
#include "kernels/cuda/flash_fwd_fp8_wgmma.cuh"
#include "kernels/cuda/kernel_traits.h"
#include "kernels/cuda/tma_utils.cuh"
#include "kernels/cuda/wgmma_ops.cuh"

namespace attention::cuda::fwd {

// The constants the kernel is written against, checked once here.
template <int kHeadDim_, int kBlockN_, int kStages_, int kConsumers_, int kFmaExp_ = 0,
          bool kTree_ = false, bool kSumMma_ = false, bool kLazy_ = false, int kSpec_ = 0,
          bool kNoTurns_ = false, bool kLseF32_ = false>
struct Fp8Traits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  static constexpr int kConsumers = kConsumers_;
  // Of every 4 n8 tiles of S, how many take their exponentials on the FMA pipe (Exp2Fma) rather
  // than the MUFU unit: at d = 128 an e4m3 tile's products take about as long on the tensor cores
  // as its 64 x kBlockN exponentials on MUFU (16 per clock per SM), so moving a share of them to
  // the FMA pipe (128 lanes per clock, about 9 operations each) can shorten the softmax.
  static constexpr int kFmaExp = kFmaExp_;
  static_assert(kFmaExp >= 0 && kFmaExp <= 4, "a share of every 4 n8 tiles");
  // The softmax's row max and row sum over a tile as four independent partial results combined at
  // the end, instead of one chain of kBlockN / 4 dependent operations per row: the max is on the
  // critical path from S to the exponentials (and so to the warpgroup's next products).
  static constexpr bool kTree = kTree_;
  // The row sums of P on the tensor cores: V^T gets kHeadDim + 8 rows, the last 8 e4m3 ones
  // (written once into every stage: the copies fill the first kHeadDim rows only), so that O's
  // extra n8 tile accumulates sum_j P_j (of the e4m3 P, rescaled with O) and the softmax drops
  // its kBlockN / 2 FADDs per thread and tile. O and the LSE then divide by the sum of the
  // rounded P. Needs N = kHeadDim + 8 <= 256 and 128-key V^T panels.
  static constexpr bool kSumMma = kSumMma_;
  static_assert(!kSumMma || (kHeadDim <= 128 && kBlockN % 128 == 0),
                "wgmma's N <= 256 and V^T panels of 128 keys (1024-byte stages)");
  // Lazy rescaling: a row's running max (the reference of its P) moves only when the tile's max
  // exceeds it by more than 2^kLazyLog2 in P (Fp8SoftmaxStep), so O and the sums are rescaled in
  // the rare tiles where some row of the warp moves that far, not in every tile where a max grows.
  // P then lies in [0, 2^8], within e4m3's range (448) at the same relative precision.
  static constexpr bool kLazy = kLazy_;
  // Speculative exponentials: P taken against the running max at once (Fp8ExpAgainstRunningMax)
  // instead of after the tile's row max; the rare tile where the max moves the running one
  // (kLazy's rule) recomputes P from S by the lazy step. 1: the row max reduced beside the
  // exponentials (Fp8SpeculativeStep); 2: no row max at all: P's e4m3 bytes are checked against
  // 2^8 once joined into fragments (AnyP8Above256), and the lazy step runs after P V(i-1) where
  // some value exceeds it. P goes to e4m3 pairs in registers of its own (PackP8Pairs), joined into
  // the fragments once the in-flight P V has finished (writing the fragments during the softmax
  // makes ptxas serialize the wgmmas, C7513), so S is kept for the recomputation and the row sums
  // must come from the tensor cores (kSumMma).
  static constexpr int kSpec = kSpec_;
  static_assert(kSpec >= 0 && kSpec <= 2, "speculation: none, beside the max, or byte check");
  static_assert(kSpec == 0 || (kLazy && kSumMma), "speculation needs /l and /m");
  // Consumers issue their products whenever ready instead of taking turns (the ping-pong's named
  // barriers): at d 128 one consumer's softmax takes several times the other's products, so the
  // turns may hold a ready consumer back rather than keep the tensor cores busy.
  static constexpr bool kNoTurns = kNoTurns_;
  // With kSumMma: the softmax also keeps float32 row sums of the unrounded P (as without kSumMma),
  // from which the LSE is taken, while O is still divided by the tensor cores' sums of the rounded
  // P (StoreOutput gets O scaled by their ratio): the LSE as accurate as without kSumMma (a row's
  // sum of e4m3-rounded P is off by up to 2^-4 relative, and with kLazy its largest P is not 1).
  static constexpr bool kLseF32 = kLseF32_;
  static_assert(!kLseF32 || kSumMma, "float32 sums for the LSE beside the tensor cores' sums");
  static constexpr int kBlockM = 64 * kConsumers;
  static constexpr int kNThreads = 128 * (1 + kConsumers);
  static constexpr int kConsumerThreads = 128 * kConsumers;
  static constexpr int kConsumerWarps = 4 * kConsumers;
  static constexpr int kNTilesS = kBlockN / 8;
  static constexpr int kNTilesO = kHeadDim / 8;
  static constexpr int kVtRows = kHeadDim + (kSumMma ? 8 : 0);  // rows of a V^T stage
  static constexpr int kNTilesOAcc = kVtRows / 8;               // O's n8 tiles, the sums' too
  static constexpr int kChunksO = kHeadDim / 8;  // 16-byte chunks of a bfloat16 O row
  // The warp-specialized kernel's register split (Sm90WsTraits).
  static constexpr int kProducerRegisters = kConsumers == 2 ? 24 : 32;
  static constexpr int kConsumerRegisters = kConsumers == 2 ? 240 : 160;
  static_assert(kConsumers == 2 || kConsumers == 3, "two or three consumer warpgroups");
  static_assert(128 * kProducerRegisters + kConsumerThreads * kConsumerRegisters <= 65536,
                "the register file of one SM");
  static_assert(kHeadDim == 64 || kHeadDim == 128 || kHeadDim == 256, "the FP8 buckets");
  static_assert(kBlockN % 64 == 0 && kBlockN <= 256, "whole V^T panels, wgmma's N");
  static_assert(kStages >= 2, "the producer runs at least one tile ahead");

  // Q and K: rows of head_dim bytes in panels of kDRowBytes; V^T: head_dim rows of kBlockN keys
  // in panels of kNRowBytes (128, or 64 when kBlockN is an odd multiple of 64: 64, 192).
  static constexpr int kDRowBytes = kHeadDim < 128 ? kHeadDim : 128;
  static constexpr int kDPanels = kHeadDim / kDRowBytes;
  static constexpr int kNRowBytes = kBlockN % 128 == 0 ? 128 : 64;
  static constexpr int kNPanels = kBlockN / kNRowBytes;
  static constexpr int kQBytes = kBlockM * kHeadDim;
  static constexpr int kKBytes = kBlockN * kHeadDim;
  static constexpr int kVtBytes = kVtRows * kBlockN;
  static constexpr int kVtCopyBytes = kHeadDim * kBlockN;  // what the copies write per stage
  using OTile = SmemTile<kBlockM, kHeadDim>;               // bfloat16, 64-column panels
  static_assert(kQBytes % 1024 == 0 && kKBytes % 1024 == 0 && OTile::kBytes % 1024 == 0,
                "every tile starts on a 1024-byte boundary (the period of the 128-byte swizzle)");
  static constexpr int kSmemQOffset = 0;
  static constexpr int kSmemOOffset = kQBytes;
  static constexpr int kSmemKOffset = kSmemOOffset + OTile::kBytes;
  static constexpr int kSmemVOffset = kSmemKOffset + kStages * kKBytes;
  // mbarriers: Q full, Q empty, then per stage K full, V full, K empty, V empty.
  static constexpr int kSmemBarrierOffset = kSmemVOffset + kStages * kVtBytes;
  static constexpr int kBarriers = 2 + 4 * kStages;
  static constexpr int kSmemBytes = kSmemBarrierOffset + 8 * kBarriers;
  static constexpr int kSmemLaunchBytes = kSmemBytes + 1024;  // slack to align the tiles
  static_assert(kSmemLaunchBytes <= 227 * 1024, "shared memory per block on sm_90");

  static constexpr int kTurnBarrier0 = 1;  // named barriers of the consumers' turns
  static constexpr int kInitBarrier = kTurnBarrier0 + kConsumers;  // kSumMma's ones written

  // StoreEmptyRows's view of the consumers.
  struct ConsumerThreads {
    static constexpr int kChunks = Fp8Traits::kChunksO;
    static constexpr int kNThreads = Fp8Traits::kConsumerThreads;
  };
};

// K-major descriptor of an e4m3 tile of kRowBytes-byte rows: the 128-byte swizzle (8-row groups
// 1024 bytes apart) or the 64-byte one (512 apart). The leading byte offset is unused by swizzled
// K-major layouts.
template <int kRowBytes>
__device__ __forceinline__ uint64_t Fp8Descriptor(uint32_t smem_addr) {
  static_assert(kRowBytes == 64 || kRowBytes == 128, "the two swizzles of the FP8 tiles");
  if constexpr (kRowBytes == 128) {
    return SmemDescriptor(smem_addr, 16, 1024);
  } else {
    return SmemDescriptorSwizzle64(smem_addr, 16, 512);
  }
}

// Four floats rounded to e4m3 (round to nearest even, saturating to +-448), `a` in the lowest
// byte.
__device__ __forceinline__ uint32_t PackE4m3x4(float a, float b, float c, float d) {
#ifdef ATTN_HAVE_WGMMA
  uint16_t lo;
  uint16_t hi;
  // cvt's first source lands in the upper byte.
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(lo) : "f"(b), "f"(a));
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(hi) : "f"(d), "f"(c));
  return static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16;
#else
  return 0u;
#endif
}

// P's k32 A fragment for keys [32 kk, 32 kk + 32) from the S accumulators of n8 tiles 4 kk ..
// 4 kk + 3, in place: register 0 holds this lane's row-g values of tiles 4 kk, 4 kk + 1 (keys
// 2 t, 2 t + 1, 8 + 2 t, 9 + 2 t), register 2 those of tiles 4 kk + 2, + 3; registers 1 and 3 the
// row-(g + 8) values. The A layout reads them as columns 4 t .. 4 t + 3 (and 16 + ...): V^T's
// permuted keys (Fp8VtKeyAt) match.
template <int kNTilesS>
__device__ __forceinline__ void PackP8(uint32_t (&frag)[4], const float (&acc_s)[1][kNTilesS][4],
                                       int kk) {
  const float(&s)[kNTilesS][4] = acc_s[0];
  frag[0] = PackE4m3x4(s[4 * kk][0], s[4 * kk][1], s[4 * kk + 1][0], s[4 * kk + 1][1]);
  frag[1] = PackE4m3x4(s[4 * kk][2], s[4 * kk][3], s[4 * kk + 1][2], s[4 * kk + 1][3]);
  frag[2] = PackE4m3x4(s[4 * kk + 2][0], s[4 * kk + 2][1], s[4 * kk + 3][0], s[4 * kk + 3][1]);
  frag[3] = PackE4m3x4(s[4 * kk + 2][2], s[4 * kk + 2][3], s[4 * kk + 3][2], s[4 * kk + 3][3]);
}

// 2^x for x <= 0 on the FMA pipe: x = j + r with j the nearest integer (the 1.5 x 2^23 rounding
// trick) and r in [-0.5, 0.5], 2^r by the cubic through the Chebyshev nodes (relative error below
// 1e-4, against e4m3's 2^-4 for P), and j added to the exponent bits: t's bits are 0x4B400000 + j,
// and 0x4B400000 << 23 is 0 modulo 2^32, so (bits of t) << 23 is j << 23 (one shift-and-add with
// p's bits). Below -126 (masked keys' -inf included, whose r is NaN) it is 0, as Exp2 gives there.
__device__ __forceinline__ float Exp2Fma(float x) {
  const float t = x + 12582912.f;
  const float r = x - (t - 12582912.f);
  const float p =
      fmaf(fmaf(fmaf(0.0558382829f, r, 0.2426394785f), r, 0.6931367339f), r, 0.9999245570f);
  const float e = __int_as_float(__float_as_int(p) + (__float_as_int(t) << 23));
  return x < -126.f ? 0.f : e;
}

// How far (log2 of P) a row's tile max may exceed its running max before a lazy step
// (Fp8Traits::kLazy) moves it: P <= 2^8 = 256 < 448, e4m3's largest value.
inline constexpr float kFp8LazyLog2 = 8.f;

// SoftmaxStep (flash_fwd_common.cuh) with kFmaExp of every 4 n8 tiles' exponentials computed by
// Exp2Fma, with kTree the row max and sum as four partial results, with kNoSum no row sums (the
// tensor cores take them, Fp8Traits::kSumMma), and with kLazy a running max that moves only by
// more than kFp8LazyLog2 (else P is taken against the old max, up to 2^kFp8LazyLog2); the same
// with none of them. Returns whether some row of the warp moved its max (alpha != 1).
template <int kFmaExp, bool kTree, bool kNoSum, bool kLazy, int kNTilesS>
__device__ __forceinline__ bool Fp8SoftmaxStep(float (&acc_s)[1][kNTilesS][4], RowStats<1>& stats,
                                               float scale_log2, float (&alpha)[1][2]) {
  if constexpr (kFmaExp == 0 && !kTree && !kNoSum && !kLazy) {
    return SoftmaxStep(acc_s, stats, scale_log2, alpha);
  } else {
    static_assert(!kTree || kNTilesS % 4 == 0, "four partial results of whole n8 tiles");
    constexpr int kParts = kTree ? 4 : 1;
    bool max_moved = false;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float part[kParts];
#pragma unroll
      for (int i = 0; i < kParts; ++i) part[i] = i == 0 ? stats.max[0][hf] : -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kNTilesS; ++nt) {
        part[nt % kParts] =
            fmaxf(part[nt % kParts], fmaxf(acc_s[0][nt][2 * hf], acc_s[0][nt][2 * hf + 1]));
      }
      float mx = part[0];
#pragma unroll
      for (int i = 1; i < kParts; ++i) mx = fmaxf(mx, part[i]);
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float old = stats.max[0][hf];
      // mx >= old (the reduction starts from it). Lazy: a first finite max always moves (inf > 8);
      // a row still without keys (both -inf: NaN) keeps -inf.
      const bool move = kLazy ? (mx - old) * scale_log2 > kFp8LazyLog2 : mx != old;
      if constexpr (kLazy) mx = move ? mx : old;
      // A row with no allowed key so far keeps max -inf; subtracting 0 keeps its P at 0.
      const float max_scaled = mx == -INFINITY ? 0.f : mx * scale_log2;
      alpha[0][hf] = Exp2(old * scale_log2 - max_scaled);
      max_moved |= move;
      stats.max[0][hf] = mx;
#pragma unroll
      for (int nt = 0; nt < kNTilesS; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float x = fmaf(acc_s[0][nt][2 * hf + e], scale_log2, -max_scaled);
          acc_s[0][nt][2 * hf + e] = nt % 4 < kFmaExp ? Exp2Fma(x) : Exp2(x);
        }
      }
    }
    const bool any_moved = __any_sync(0xffffffffu, max_moved);
    if constexpr (!kNoSum) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        if (any_moved) stats.sum[0][hf] *= alpha[0][hf];
        float part[kParts];
#pragma unroll
        for (int i = 0; i < kParts; ++i) part[i] = 0.f;
#pragma unroll
        for (int nt = 0; nt < kNTilesS; ++nt) {
          part[nt % kParts] += acc_s[0][nt][2 * hf] + acc_s[0][nt][2 * hf + 1];
        }
#pragma unroll
        for (int i = 0; i < kParts; ++i) stats.sum[0][hf] += part[i];
      }
    }
    return any_moved;
  }
}

// Two floats rounded to e4m3 (as PackE4m3x4), `a` in the lower byte of the low 16 bits.
__device__ __forceinline__ uint32_t PackE4m3x2(float a, float b) {
#ifdef ATTN_HAVE_WGMMA
  uint16_t pair;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(pair) : "f"(b), "f"(a));
  return pair;
#else
  return 0u;
#endif
}

// P's e4m3 pairs in `p_next` from value(nt, e) (element e of S's n8 tile nt): p_next[kk][r][h]
// holds half h of PackP8's register r of fragment kk (n8 tile 4 kk + 2 (r / 2) + h, elements
// 2 (r % 2), + 1), to be joined into the fragments once the in-flight P V no longer reads them.
template <int kNTilesS, typename Value>
__device__ __forceinline__ void PackP8Pairs(uint32_t (&p_next)[kNTilesS / 4][4][2],
                                            const Value& value) {
#pragma unroll
  for (int kk = 0; kk < kNTilesS / 4; ++kk) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int nt = 4 * kk + 2 * (r / 2) + h;
        p_next[kk][r][h] = PackE4m3x2(value(nt, 2 * (r % 2)), value(nt, 2 * (r % 2) + 1));
      }
    }
  }
}

// Whether some row of the warp has no finite running max yet (its first keys); if none has, P of
// S against the running maxima into `p_next` (PackP8Pairs), without the tile's row max: P may
// exceed 2^kFp8LazyLog2 (saturating at 448), which the caller checks.
// With kSum, `sum` gets this lane's float32 sums of the unrounded P per row half (0 and 1: rows
// g and g + 8), with kTree each as four partial sums (of n8 tiles nt % 4) added at the end instead
// of one chain of kNTilesS * 2 dependent FADDs; kFmaExp of every 4 n8 tiles take their
// exponentials on the FMA pipe (Exp2Fma).
template <bool kSum, int kFmaExp, bool kTree, int kNTilesS>
__device__ __forceinline__ bool Fp8ExpAgainstRunningMax(const float (&acc_s)[1][kNTilesS][4],
                                                        const RowStats<1>& stats, float scale_log2,
                                                        uint32_t (&p_next)[kNTilesS / 4][4][2],
                                                        float (&sum)[2]) {
  const bool fresh = stats.max[0][0] == -INFINITY || stats.max[0][1] == -INFINITY;
  if (__any_sync(0xffffffffu, fresh)) return true;
  const float base0 = stats.max[0][0] * scale_log2;
  const float base1 = stats.max[0][1] * scale_log2;
  if constexpr (kTree) {
    float part[2][4];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
#pragma unroll
      for (int i = 0; i < 4; ++i) part[hf][i] = 0.f;
    }
    PackP8Pairs<kNTilesS>(p_next, [&](int nt, int e) {
      const float x = fmaf(acc_s[0][nt][e], scale_log2, e < 2 ? -base0 : -base1);
      const float pe = nt % 4 < kFmaExp ? Exp2Fma(x) : Exp2(x);
      if constexpr (kSum) part[e / 2][nt % 4] += pe;
      return pe;
    });
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      sum[hf] = (part[hf][0] + part[hf][1]) + (part[hf][2] + part[hf][3]);
    }
  } else {
    sum[0] = sum[1] = 0.f;
    PackP8Pairs<kNTilesS>(p_next, [&](int nt, int e) {
      const float x = fmaf(acc_s[0][nt][e], scale_log2, e < 2 ? -base0 : -base1);
      const float pe = nt % 4 < kFmaExp ? Exp2Fma(x) : Exp2(x);
      if constexpr (kSum) sum[e / 2] += pe;
      return pe;
    });
  }
  return false;
}

// Fp8Traits::kSpec == 1's softmax step: P into `p_next` (PackP8Pairs), alpha and the return value
// as Fp8SoftmaxStep's, with kSum the float32 row sums too (Fp8Traits::kLseF32). Where every row of
// the warp has a finite running max, the exponentials are taken against it
// (Fp8ExpAgainstRunningMax) while the tile's row max is reduced beside them; if that max exceeds
// some row's running max by more than kFp8LazyLog2, or some row has no finite max yet, P is
// recomputed from S by the lazy step. Either way P is what the lazy step (kLazy, kNoSum) gives.
template <bool kTree, bool kSum, int kFmaExp, int kNTilesS>
__device__ __forceinline__ bool Fp8SpeculativeStep(float (&acc_s)[1][kNTilesS][4],
                                                   RowStats<1>& stats, float scale_log2,
                                                   float (&alpha)[1][2],
                                                   uint32_t (&p_next)[kNTilesS / 4][4][2]) {
  float sum[2];
  if (!Fp8ExpAgainstRunningMax<kSum, kFmaExp, kTree>(acc_s, stats, scale_log2, p_next, sum)) {
    constexpr int kParts = kTree ? 4 : 1;
    bool far = false;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float part[kParts];
#pragma unroll
      for (int i = 0; i < kParts; ++i) part[i] = i == 0 ? stats.max[0][hf] : -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kNTilesS; ++nt) {
        part[nt % kParts] =
            fmaxf(part[nt % kParts], fmaxf(acc_s[0][nt][2 * hf], acc_s[0][nt][2 * hf + 1]));
      }
      float mx = part[0];
#pragma unroll
      for (int i = 1; i < kParts; ++i) mx = fmaxf(mx, part[i]);
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      far |= (mx - stats.max[0][hf]) * scale_log2 > kFp8LazyLog2;
    }
    if (!__any_sync(0xffffffffu, far)) {
      alpha[0][0] = alpha[0][1] = 1.f;
      if constexpr (kSum) {
        stats.sum[0][0] += sum[0];
        stats.sum[0][1] += sum[1];
      }
      return false;
    }
  }
  const bool moved = Fp8SoftmaxStep<0, kTree, !kSum, true>(acc_s, stats, scale_log2, alpha);
  PackP8Pairs<kNTilesS>(p_next, [&](int nt, int e) { return acc_s[0][nt][e]; });
  return moved;
}

// Whether some e4m3 value of P's fragments exceeds 2^kFp8LazyLog2 = 256 (byte 0x78; P >= 0, at
// most 448 = 0x7e): adding 7 to each byte sets its top bit exactly then, without carries.
template <int kFrags>
__device__ __forceinline__ bool AnyP8Above256(const uint32_t (&frag)[kFrags][4]) {
  uint32_t over = 0;
#pragma unroll
  for (int kk = 0; kk < kFrags; ++kk) {
#pragma unroll
    for (int r = 0; r < 4; ++r) over |= frag[kk][r] + 0x07070707u;
  }
  return (over & 0x80808080u) != 0u;
}

// Where a query tile's copies read: the row of its first query row in q's map, of its sequence's
// first key in k's, the batch coordinate (0 for a packed batch), its sequence's first column in
// V^T, and its KV head.
struct Fp8TileRows {
  int q_row;
  int k_row;
  int batch;
  int vt_col;
  int kv_head;
};

// Query tile `tile` of the schedule (plain order): its coordinates (`c.o`, `c.lse` bfloat16 /
// float32 pointers; c.q, c.k, c.v unused, null), copy coordinates and KV tiles. False when its
// sequence has no query block of the tile's rank.
template <int kBlockM, int kBlockN, bool kCausal>
__device__ __forceinline__ bool LocateFp8Tile(const AttentionParams& p,
                                              const FwdSm90WsSchedule& sched, int tile,
                                              BlockCoords<__nv_bfloat16>& c, Fp8TileRows& rows,
                                              KvTileRange& tiles) {
  const RankedTile at = PlainTileRankAt(sched, tile);
  c.head = at.pair % p.q_heads;
  c.batch = at.pair / p.q_heads;
  c.left = kCausal ? p.window_left : -1;
  c.right = kCausal ? p.window_right : -1;
  int q_start = 0;
  int k_start = c.batch * p.seqlen_k;  // V^T's column arithmetic counts dense rows too
  c.len_q = p.seqlen_q;
  c.len_k = p.seqlen_k;
  const bool packed = p.cu_seqlens_q != nullptr;
  if (packed) {
    q_start = p.cu_seqlens_q[c.batch];
    c.len_q = p.cu_seqlens_q[c.batch + 1] - q_start;
    k_start = p.cu_seqlens_k[c.batch];
    c.len_k = p.cu_seqlens_k[c.batch + 1] - k_start;
  }
  const int m_block = TileMBlock(at, (c.len_q + kBlockM - 1) / kBlockM, kCausal);
  if (m_block < 0) return false;
  c.row0 = m_block * kBlockM;
  c.rows = min(kBlockM, c.len_q - c.row0);
  c.key_begin = 0;
  c.key_end = c.len_k;
  c.q = nullptr;
  c.k = nullptr;
  c.v = nullptr;
  c.o = static_cast<__nv_bfloat16*>(p.o) + c.batch * p.o_batch_stride +
        (int64_t{q_start} + c.row0) * p.o_row_stride + c.head * p.o_head_stride;
  c.lse = p.lse == nullptr ? nullptr
                           : p.lse + c.batch * p.lse_batch_stride + c.head * p.lse_head_stride +
                                 q_start + c.row0;
  c.pages = nullptr;
  c.page_shift = 0;
  rows.q_row = q_start + c.row0;
  rows.k_row = packed ? k_start : 0;
  rows.batch = packed ? 0 : c.batch;
  rows.vt_col = static_cast<int>(Fp8VtColumn(c.batch, k_start));
  rows.kv_head = c.head / (p.q_heads / p.kv_heads);
  tiles = KvTilesInRange(c.row0, c.rows, c.len_q, c.len_k, kBlockN, c.left, c.right, c.key_begin,
                         c.key_end);
  return true;
}

// A descale factor of (sequence b, head h): 1 without factors.
__device__ __forceinline__ float Descale(const float* f, int64_t batch_stride, int64_t head_stride,
                                         int b, int h) {
  return f == nullptr ? 1.f : f[b * batch_stride + h * head_stride];
}

// Grid: args.sched.grid blocks of Traits::kNThreads threads; kSmemLaunchBytes of dynamic shared
// memory. args.p is normalized and checked by the host API (CheckFlashFwdFp8): e4m3 q, k, v,
// bfloat16 o, no window but causal, no ALiBi or mask, positive scale, dense or packed, not
// paged; V^T written by TransposeVFp8 before the launch on the same stream.
template <typename Traits, bool kCausal>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    FlashFwdFp8Kernel(const __grid_constant__ FwdFp8Args args) {
#ifdef ATTN_HAVE_WGMMA
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kStages = Traits::kStages;
  constexpr int kNTilesS = Traits::kNTilesS;
  constexpr int kNTilesO = Traits::kNTilesO;
  constexpr int kNTilesOAcc = Traits::kNTilesOAcc;
  constexpr int kVtRows = Traits::kVtRows;
  constexpr int kConsumers = Traits::kConsumers;
  constexpr int kDRowBytes = Traits::kDRowBytes;
  constexpr int kNRowBytes = Traits::kNRowBytes;
  constexpr FwdVariant kVariant = kCausal ? FwdVariant::kWindow : FwdVariant::kDense;
  using OTile = typename Traits::OTile;
  using MmaS = WgmmaE4m3<kBlockN>;
  using MmaO = WgmmaE4m3<kVtRows>;
  const AttentionParams& p = args.p;
  const FwdSm90WsSchedule& sched = args.sched;

  extern __shared__ __align__(1024) unsigned char smem[];
  const uint32_t smem_base = (SmemAddress(smem) + 1023u) & ~1023u;
  const uint32_t smem_q = smem_base + Traits::kSmemQOffset;
  const uint32_t smem_o = smem_base + Traits::kSmemOOffset;
  const auto k_stage = [&](int s) {
    return smem_base + Traits::kSmemKOffset + s * Traits::kKBytes;
  };
  const auto v_stage = [&](int s) {
    return smem_base + Traits::kSmemVOffset + s * Traits::kVtBytes;
  };
  const uint32_t bars = smem_base + Traits::kSmemBarrierOffset;
  const uint32_t q_full = bars;
  const uint32_t q_empty = bars + 8u;
  const auto k_full = [&](int s) { return bars + 8u * (2 + s); };
  const auto v_full = [&](int s) { return bars + 8u * (2 + kStages + s); };
  const auto k_empty = [&](int s) { return bars + 8u * (2 + 2 * kStages + s); };
  const auto v_empty = [&](int s) { return bars + 8u * (2 + 3 * kStages + s); };

  const int tid = threadIdx.x;
  if (tid == 0) {
    MbarrierInit(q_full, 1);
    MbarrierInit(q_empty, Traits::kConsumerWarps);
    for (int s = 0; s < kStages; ++s) {
      MbarrierInit(k_full(s), 1);
      MbarrierInit(v_full(s), 1);
      MbarrierInit(k_empty(s), Traits::kConsumerWarps);
      MbarrierInit(v_empty(s), Traits::kConsumerWarps);
    }
    FenceMbarrierInit();
  }
  __syncthreads();

  const int warpgroup = tid / 128;
  if (warpgroup == 0) {
    // Producer: one thread issues every copy (Q once the consumers released the previous tile's,
    // then K[n] and V^T[n] for the tile's KV tiles from the last down, stage i % kStages).
    SetMaxRegistersDecrease<Traits::kProducerRegisters>();
    if (tid != 0) return;
    int i = 0;      // KV tiles copied so far
    int round = 0;  // query tiles copied so far
    for (int tile = blockIdx.x; tile < sched.num_tiles; tile += gridDim.x) {
      BlockCoords<__nv_bfloat16> c;
      Fp8TileRows rows;
      KvTileRange tiles;
      if (!LocateFp8Tile<kBlockM, kBlockN, kCausal>(p, sched, tile, c, rows, tiles)) continue;
      if (tiles.end <= tiles.begin) continue;  // rows without keys: nothing to copy
      MbarrierWait(q_empty, (round & 1) ^ 1);
      MbarrierArriveExpectTx(q_full, Traits::kQBytes);
#pragma unroll
      for (int panel = 0; panel < Traits::kDPanels; ++panel) {
        TmaLoad4d(smem_q + panel * (kBlockM * kDRowBytes), &args.q, q_full, panel * kDRowBytes,
                  c.head, rows.q_row, rows.batch);
      }
      ++round;
      for (int n = tiles.end - 1; n >= tiles.begin; --n, ++i) {
        const int s = i % kStages;
        const uint32_t empty_parity = ((i / kStages) & 1) ^ 1;
        MbarrierWait(k_empty(s), empty_parity);
        MbarrierArriveExpectTx(k_full(s), Traits::kKBytes);
#pragma unroll
        for (int panel = 0; panel < Traits::kDPanels; ++panel) {
          TmaLoad4d(k_stage(s) + panel * (kBlockN * kDRowBytes), &args.k, k_full(s),
                    panel * kDRowBytes, rows.kv_head, rows.k_row + n * kBlockN, rows.batch);
        }
        MbarrierWait(v_empty(s), empty_parity);
        MbarrierArriveExpectTx(v_full(s), Traits::kVtCopyBytes);
#pragma unroll
        for (int panel = 0; panel < Traits::kNPanels; ++panel) {
          TmaLoad4d(v_stage(s) + panel * (kVtRows * kNRowBytes), &args.vt, v_full(s),
                    rows.vt_col + n * kBlockN + panel * kNRowBytes, 0, rows.kv_head, 0);
        }
      }
    }
    return;
  }

  // Consumers.
  SetMaxRegistersIncrease<Traits::kConsumerRegisters>();
  if constexpr (Traits::kSumMma) {
    // Rows kHeadDim .. kHeadDim + 7 of every key panel of every V^T stage: e4m3 1.0 (0x38), which
    // no copy overwrites; visible to the tensor cores (async proxy) before any consumer's first
    // P V.
    constexpr int kChunks = kStages * Traits::kNPanels * 8 * kNRowBytes / 16;
    for (int idx = tid - 128; idx < kChunks; idx += Traits::kConsumerThreads) {
      const int chunk = idx % (8 * kNRowBytes / 16);
      const int panel = idx / (8 * kNRowBytes / 16) % Traits::kNPanels;
      const int stage = idx / (8 * kNRowBytes / 16) / Traits::kNPanels;
      const uint32_t at =
          v_stage(stage) + panel * (kVtRows * kNRowBytes) + kHeadDim * kNRowBytes + chunk * 16;
      asm volatile("st.shared.v4.b32 [%0], {%1, %1, %1, %1};\n" ::"r"(at), "r"(0x38383838u)
                   : "memory");
    }
    FenceProxyAsyncShared();
    NamedBarrierSync(Traits::kInitBarrier, Traits::kConsumerThreads);
  }
  const int consumer = warpgroup - 1;
  const int ctid = tid - 128;
  const int lane = tid % 32;
  const int warp_row0 = ctid / 32 * 16;  // the warp's 16 rows within the tile
  const int valid_chunks = p.head_dim / 8;
  const bool softcap = p.softcap > 0.f;
  const int my_turn = Traits::kTurnBarrier0 + consumer;
  const int next_turn = Traits::kTurnBarrier0 + (consumer + 1) % kConsumers;
  constexpr int kTurnThreads = 2 * 128;
  const auto take_turn = [&] {
    if constexpr (!Traits::kNoTurns) NamedBarrierSync(my_turn, kTurnThreads);
  };
  const auto pass_turn = [&] {
    if constexpr (!Traits::kNoTurns) NamedBarrierArrive(next_turn, kTurnThreads);
  };
  const auto release = [&](uint32_t bar) {
    if (lane == 0) MbarrierArrive(bar);
  };

  // The last consumer hands the first its first turn.
  if (!Traits::kNoTurns && consumer == kConsumers - 1) {
    NamedBarrierArrive(Traits::kTurnBarrier0, kTurnThreads);
  }

  int i = 0;      // KV tiles consumed so far, as the producer counts
  int round = 0;  // query tiles with keys consumed so far
  for (int tile = blockIdx.x; tile < sched.num_tiles; tile += gridDim.x) {
    BlockCoords<__nv_bfloat16> c;
    Fp8TileRows rows;
    KvTileRange tiles;
    if (!LocateFp8Tile<kBlockM, kBlockN, kCausal>(p, sched, tile, c, rows, tiles)) continue;
    if (tiles.end <= tiles.begin) {
      StoreEmptyRows<typename Traits::ConsumerThreads>(c.o, p.o_row_stride, c.lse, SinkLogit(p, c),
                                                       c.rows, valid_chunks, ctid);
      continue;
    }
    // The score of raw e4m3 products s is q_descale k_descale s in real units: that factor joins
    // the softmax's (and the softcap's) scale.
    const float qk_scale =
        p.softmax_scale *
        Descale(p.q_descale, p.q_descale_batch_stride, p.q_descale_head_stride, c.batch, c.head) *
        Descale(p.k_descale, p.k_descale_batch_stride, p.k_descale_head_stride, c.batch,
                rows.kv_head);
    const float scale_log2 = qk_scale * kLog2e;
    // Softcap c > 0: each raw score s becomes (c / scale) tanh(s scale / c), which scale_log2
    // turns into the contract's logit c tanh(s scale / c) in base 2.
    const float cap_in = softcap ? qk_scale / p.softcap : 0.f;
    const float cap_out = softcap ? p.softcap / qk_scale : 0.f;

    float acc_o[1][kNTilesOAcc][4];
#pragma unroll
    for (int dt = 0; dt < kNTilesOAcc; ++dt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[0][dt][e] = 0.f;
    }
    RowStats<1> stats;
    stats.Init();
    uint32_t p_frag[kBlockN / 32][4];  // P of the previous step as k32 A fragments
    float acc_s[1][kNTilesS][4];
    const uint64_t q_desc = Fp8Descriptor<kDRowBytes>(smem_q + consumer * 64 * kDRowBytes);
    // S = Q K[stage s]^T: k32 steps of 32 bytes along the rows, the next panel kRows * kDRowBytes
    // further.
    const auto issue_s = [&](int s) {
      const uint64_t k_desc = Fp8Descriptor<kDRowBytes>(k_stage(s));
#pragma unroll
      for (int ks = 0; ks < kHeadDim / 32; ++ks) {
        const uint32_t panel = ks * 32 / kDRowBytes;
        const uint32_t within = ks * 32 % kDRowBytes;
        MmaS::SS(acc_s[0], AdvanceDescriptor(q_desc, panel * (kBlockM * kDRowBytes) + within),
                 AdvanceDescriptor(k_desc, panel * (kBlockN * kDRowBytes) + within), ks > 0);
      }
      WgmmaCommit();
    };
    // O += P V^T[stage s]^T: k32 steps of 32 keys, the next key panel kVtRows * kNRowBytes on.
    const auto issue_pv = [&](int s) {
      const uint64_t v_desc = Fp8Descriptor<kNRowBytes>(v_stage(s));
      FenceAccumulators(acc_o[0]);
      WgmmaFence();
#pragma unroll
      for (int kk = 0; kk < kBlockN / 32; ++kk) {
        const uint32_t panel = kk * 32 / kNRowBytes;
        const uint32_t within = kk * 32 % kNRowBytes;
        MmaO::RS(acc_o[0], p_frag[kk],
                 AdvanceDescriptor(v_desc, panel * (kVtRows * kNRowBytes) + within));
      }
    };

    MbarrierWait(q_full, round & 1);
    const int i_first = i;
    const auto step = [&](const int n, auto mask_tag) {
      constexpr bool kMask = decltype(mask_tag)::value;
      const int s = i % kStages;
      const int s_prev = (i + kStages - 1) % kStages;
      const bool has_pv = i > i_first;
      if (has_pv) MbarrierWait(v_full(s_prev), ((i - 1) / kStages) & 1);
      MbarrierWait(k_full(s), (i / kStages) & 1);
      take_turn();
      FenceAccumulators(acc_o[0]);
      WgmmaFence();
      issue_s(s);
      // (One branch per case, as in the warp-specialized kernel: ptxas must see that S has
      // completed on every path before the softmax reads it.)
      if (has_pv) {
        issue_pv(s_prev);
        WgmmaCommit();
        pass_turn();
        WgmmaWait<1>();  // S done; P V may still run
      } else {
        pass_turn();
        WgmmaWait<0>();
      }
      FenceAccumulators(acc_s[0]);
      release(k_empty(s));
      // The tile's last S: Q is free for the next query tile (O has a tile of its own).
      if (n == tiles.begin) release(q_empty);

      if (softcap) {
#pragma unroll
        for (int nt = 0; nt < kNTilesS; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) acc_s[0][nt][e] = cap_out * Tanh(acc_s[0][nt][e] * cap_in);
        }
      }
      if constexpr (kMask) MaskOutsideWindow(acc_s, c, warp_row0, n * kBlockN, lane);
      float alpha[1][2];
      bool rescale = false;
      [[maybe_unused]] uint32_t p_next[kBlockN / 32][4][2];  // kSpec: P beside P V's fragments
      [[maybe_unused]] bool fresh = false;                   // kSpec 2: P not taken yet
      [[maybe_unused]] float spec_sum[2];                    // kSpec 2, kLseF32: its sums
      if constexpr (Traits::kSpec == 1) {
        rescale = Fp8SpeculativeStep<Traits::kTree, Traits::kLseF32, Traits::kFmaExp>(
            acc_s, stats, scale_log2, alpha, p_next);
      } else if constexpr (Traits::kSpec == 2) {
        fresh = Fp8ExpAgainstRunningMax<Traits::kLseF32, Traits::kFmaExp, Traits::kTree>(
            acc_s, stats, scale_log2, p_next, spec_sum);
      } else {
        constexpr bool kNoSum = Traits::kSumMma && !Traits::kLseF32;
        rescale = Fp8SoftmaxStep<Traits::kFmaExp, Traits::kTree, kNoSum, Traits::kLazy>(
            acc_s, stats, scale_log2, alpha);
      }

      WgmmaWait<0>();  // P[i-1] V[i-1] done: O and p_frag are free, V[i-1]'s buffer too
      FenceAccumulators(acc_o[0]);
      FenceFragments(p_frag);
      if (has_pv) release(v_empty(s_prev));
      if constexpr (Traits::kSpec > 0) {
#pragma unroll
        for (int kk = 0; kk < kBlockN / 32; ++kk) {
#pragma unroll
          for (int r = 0; r < 4; ++r) p_frag[kk][r] = p_next[kk][r][0] | p_next[kk][r][1] << 16;
        }
      }
      if constexpr (Traits::kSpec == 2) {
        if (fresh || __any_sync(0xffffffffu, AnyP8Above256(p_frag))) {
          rescale = Fp8SoftmaxStep<0, Traits::kTree, !Traits::kLseF32, true>(acc_s, stats,
                                                                             scale_log2, alpha);
#pragma unroll
          for (int kk = 0; kk < kBlockN / 32; ++kk) PackP8(p_frag[kk], acc_s, kk);
        } else if constexpr (Traits::kLseF32) {
          stats.sum[0][0] += spec_sum[0];
          stats.sum[0][1] += spec_sum[1];
        }
      }
      if (rescale) RescaleRows(acc_o, alpha);
      if constexpr (Traits::kSpec == 0) {
#pragma unroll
        for (int kk = 0; kk < kBlockN / 32; ++kk) PackP8(p_frag[kk], acc_s, kk);
      }
      ++i;
    };
    ForEachKvTile<kBlockN, kVariant>(tiles, c, step);

    // The last KV tile's P V, in a turn of its own.
    const int s_last = (i - 1) % kStages;
    MbarrierWait(v_full(s_last), ((i - 1) / kStages) & 1);
    take_turn();
    issue_pv(s_last);
    WgmmaCommit();
    pass_turn();
    WgmmaWait<0>();
    FenceAccumulators(acc_o[0]);
    FenceFragments(p_frag);
    release(v_empty(s_last));

    // The epilogue: O v_descale / rowsum (sinks in the denominator), staged in the warp's own
    // rows of the O tile and written as bfloat16, and the LSE (real logits: scale_log2 holds the
    // descales).
    const float v_scale = Descale(p.v_descale, p.v_descale_batch_stride, p.v_descale_head_stride,
                                  c.batch, rows.kv_head);
#pragma unroll
    for (int dt = 0; dt < kNTilesO; ++dt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[0][dt][e] *= v_scale;
    }
    if constexpr (Traits::kLseF32) {
      // O is to be divided by the sum of the rounded P (every column of O's last n8 tile holds
      // it) and the LSE taken from the float32 sums (this lane's share in stats.sum, which
      // StoreOutput adds over the quad): O gets their ratio first.
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        float total = stats.sum[0][hf];
        total += __shfl_xor_sync(0xffffffffu, total, 1);
        total += __shfl_xor_sync(0xffffffffu, total, 2);
        const float rounded = acc_o[0][kNTilesO][2 * hf];
        const float ratio = rounded > 0.f ? total / rounded : 0.f;
#pragma unroll
        for (int dt = 0; dt < kNTilesO; ++dt) {
          acc_o[0][dt][2 * hf] *= ratio;
          acc_o[0][dt][2 * hf + 1] *= ratio;
        }
      }
    } else if constexpr (Traits::kSumMma) {
      // Every column of O's last n8 tile holds the row's sum; StoreOutput adds the quad's
      // partial sums, so one lane of each quad gives it.
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        stats.sum[0][hf] = lane % 4 == 0 ? acc_o[0][kNTilesO][2 * hf] : 0.f;
      }
    }
    auto& o_tiles = reinterpret_cast<float(&)[1][kNTilesO][4]>(acc_o);
    StoreOutput<OTile, Traits::kChunksO>(o_tiles, stats, scale_log2, SinkLogit(p, c) * kLog2e,
                                         smem_o, c, p.o_row_stride, valid_chunks, warp_row0, lane);
    ++round;
  }
  // The turn the last consumer passed after its last GEMMs.
  if (!Traits::kNoTurns && consumer == 0) NamedBarrierSync(my_turn, kTurnThreads);
#endif  // ATTN_HAVE_WGMMA
}

}  // namespace attention::cuda::fwd

#endif  // ATTENTION_KERNELS_CUDA_FLASH_FWD_FP8_KERNEL_CUH_
