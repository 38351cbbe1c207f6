// The FP8 kernel's candidate tile configurations (flash_fwd_fp8_variants.h), compiled only with
// -DATTN_BENCH_FP8_VARIANTS=ON. Shared memory per block (bytes of e4m3 tiles, bfloat16 O):
// Q 64 c d + O 128 c d + stages (K + V^T) 2 n d, at most 227 KB. Left out at d 128: 128 x 256
// (two consumers) and 192 x 128 (three), where ptxas serializes the wgmmas for want of registers
// (C7512). Dropped after device call 2 of 2026-12-06 (H100, bench/cuda/fp8_notes.md): d 128's
// persistent / per-tile grids and 2 stages (within the run-to-run noise of +-5 % of the
// default), /e1 and /e2 (exponentials on the FMA pipe: 0.77-0.95x). The list holds d 128's
// softmax candidates only (issue 23's bar is at d 128; each kernel costs compile time).
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "kernels/cuda/flash_fwd_fp8_launch.cuh"
#include "kernels/cuda/flash_fwd_fp8_variants.h"

namespace attention::cuda {
namespace {

template <int kHeadDim, int kBlockN, int kStages, int kConsumers, int kFmaExp = 0,
          bool kTree = false, bool kSumMma = false, bool kLazy = false, int kSpec = 0,
          bool kNoTurns = false>
Fp8Variant Make(Fp8Grid grid = Fp8Grid::kRule) {
  return {kHeadDim,
          {kBlockN, kStages, kConsumers, kFmaExp, kTree, kSumMma, kLazy, kSpec, kNoTurns},
          grid,
          &LaunchFlashFwdFp8<kHeadDim, false, kBlockN, kStages, kConsumers, kFmaExp, kTree, kSumMma,
                             kLazy, kSpec, kNoTurns>,
          &LaunchFlashFwdFp8<kHeadDim, true, kBlockN, kStages, kConsumers, kFmaExp, kTree, kSumMma,
                             kLazy, kSpec, kNoTurns>};
}

}  // namespace

const std::vector<Fp8Variant>& Fp8Variants() {
  static const std::vector<Fp8Variant> variants = {
      // d 128, 128 x 128, 4 stages (the default's tiles): /r tree reductions, /m row sums on the
      // tensor cores, /l lazy rescaling, and their combinations.
      Make<128, 128, 4, 2, 0, true>(),
      Make<128, 128, 4, 2, 0, false, true>(),
      Make<128, 128, 4, 2, 0, false, false, true>(),
      Make<128, 128, 4, 2, 0, true, false, true>(),
      Make<128, 128, 4, 2, 0, false, true, true>(),
      Make<128, 128, 4, 2, 0, true, true, true>(),
      // /s: exponentials against the running max beside the row max's reduction (with /l, /m).
      Make<128, 128, 4, 2, 0, false, true, true, 1>(),
      Make<128, 128, 4, 2, 0, true, true, true, 1>(),
      // /s2: no row max, P's e4m3 bytes checked against 2^8 instead.
      Make<128, 128, 4, 2, 0, true, true, true, 2>(),
      // /f: without the consumers' turns (the default's and /s's).
      Make<128, 128, 4, 2, 0, false, false, false, 0, true>(),
      Make<128, 128, 4, 2, 0, true, true, true, 1, true>(),
      Make<128, 128, 4, 2, 0, true, true, true, 2, true>(),
      // d 128, three consumers of 64 rows on 64-key tiles (160 registers each), and 128 x 192.
      Make<128, 64, 4, 3>(),
      Make<128, 64, 4, 3, 0, true, false, true>(),
      Make<128, 192, 3, 2, 0, true, false, true>(),
  };
  return variants;
}

}  // namespace attention::cuda
