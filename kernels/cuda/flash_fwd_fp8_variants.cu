// The FP8 kernel's candidate tile configurations (flash_fwd_fp8_variants.h), compiled only with
// -DATTN_BENCH_FP8_VARIANTS=ON. Shared memory per block (bytes of e4m3 tiles, bfloat16 O):
// Q 64 c d + O 128 c d + stages (K + V^T) 2 n d, at most 227 KB. Left out at d 128: 128 x 256
// (two consumers) and 192 x 128 (three), where ptxas serializes the wgmmas for want of registers
// (C7512). Dropped after device call 2 of 2026-12-06 (H100, bench/cuda/fp8_notes.md): d 128's
// persistent / per-tile grids and 2 stages (within the run-to-run noise of +-5 % of the
// default), /e1 and /e2 (exponentials on the FMA pipe: 0.77-0.95x). After device call 2 of
// session 7 (H200, interleaved): /r, /m, /l and their combinations alone within 0.97-1.03x of the
// plain softmax, 192x64/3c 0.82-0.98x, 128x192/3s/r/l 0.88-1.05x; /s 1.02-1.16x, /s2 0.99-1.13x.
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "kernels/cuda/flash_fwd_fp8_launch.cuh"
#include "kernels/cuda/flash_fwd_fp8_variants.h"

namespace attention::cuda {
namespace {

template <int kHeadDim, int kBlockN, int kStages, int kConsumers, int kFmaExp = 0,
          bool kTree = false, bool kSumMma = false, bool kLazy = false, int kSpec = 0,
          bool kNoTurns = false, bool kLseF32 = false>
Fp8Variant Make(Fp8Grid grid = Fp8Grid::kRule) {
  return {kHeadDim,
          {kBlockN, kStages, kConsumers, kFmaExp, kTree, kSumMma, kLazy, kSpec, kNoTurns, kLseF32},
          grid,
          &LaunchFlashFwdFp8<kHeadDim, false, kBlockN, kStages, kConsumers, kFmaExp, kTree, kSumMma,
                             kLazy, kSpec, kNoTurns, kLseF32>,
          &LaunchFlashFwdFp8<kHeadDim, true, kBlockN, kStages, kConsumers, kFmaExp, kTree, kSumMma,
                             kLazy, kSpec, kNoTurns, kLseF32>};
}

}  // namespace

const std::vector<Fp8Variant>& Fp8Variants() {
  static const std::vector<Fp8Variant> variants = {
      // d 128: the plain softmax (the default), /m/l/s (the LSE from the sums of the rounded P),
      // /m/l/s/x (float32 LSE sums), and the byte check / no-turns forms with /x.
      Make<128, 128, 4, 2>(),
      Make<128, 128, 4, 2, 0, false, true, true, 1>(),
      Make<128, 128, 4, 2, 0, false, true, true, 1, false, true>(),
      Make<128, 128, 4, 2, 0, false, true, true, 2, false, true>(),
      Make<128, 128, 4, 2, 0, false, true, true, 2, true, true>(),
      Make<128, 128, 4, 2, 0, false, true, true, 1, true, true>(),
      // /e1, /e2 with /s: one or two of every 4 n8 tiles' exponentials on the FMA pipe (MUFU's
      // share: at d 128 one consumer's exponentials take MUFU as long as its products take the
      // tensor cores at FP8's peak, 512 clocks per 64 x 128 tile).
      Make<128, 128, 4, 2, 1, false, true, true, 1, false, true>(),
      Make<128, 128, 4, 2, 2, false, true, true, 1, false, true>(),
      // d 64 (default: the plain softmax): d 128's new default.
      Make<64, 128, 4, 2, 0, false, true, true, 1, false, true>(),
  };
  return variants;
}

}  // namespace attention::cuda
