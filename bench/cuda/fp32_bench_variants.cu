#include <string>
#include <vector>

#include "bench/cuda/fp32_bench_variants.h"
#include "kernels/cuda/flash_fwd_fp32_launch.cuh"
#include "kernels/cuda/flash_fwd_fp32_traits.h"

namespace attention::cuda::bench {
namespace {

std::string OptionsLabel(int options) {
  std::string label;
  const auto add = [&](int bit, const char* name) {
    if ((options & bit) == 0) return;
    if (!label.empty()) label += "+";
    label += name;
  };
  add(kFp32OneBody, "one-body");
  add(kFp32RolledQk, "rolled-qk");
  add(kFp32Persistent, "persistent");
  return label.empty() ? "none" : label;
}

// The default's tiles of bucket kHeadDim with options `kOptions`.
template <int kOptions, int kHeadDim = 256>
Fp32KernelVariant Variant() {
  constexpr Fp32TileConfig t = DefaultFp32TileConfig(kHeadDim);
  return {OptionsLabel(kOptions), kHeadDim, kOptions, true,
          &RunFlashFwdFp32Tiles<kHeadDim, Fp32Variant::kPlain, Precision::kFull, t.block_m,
                                t.block_n, t.warps, t.stages, t.blocks_per_sm, kOptions>};
}

// Other tiles with options `kOptions`.
template <int kBlockM, int kBlockN, int kNWarps, int kStages, int kBlocksPerSm, int kOptions>
Fp32KernelVariant TileVariant() {
  return {std::to_string(kBlockM) + "x" + std::to_string(kBlockN) + " " + std::to_string(kNWarps) +
              "w " + std::to_string(kBlocksPerSm) + "b/SM " + OptionsLabel(kOptions),
          256, kOptions, false,
          &RunFlashFwdFp32Tiles<256, Fp32Variant::kPlain, Precision::kFull, kBlockM, kBlockN,
                                kNWarps, kStages, kBlocksPerSm, kOptions>};
}

}  // namespace

// The library's default (DefaultFp32TileConfig(256): one body) is timed through the dispatch
// beside these; "none" is the two-copy kernel it replaced, "one-body" the default launched
// directly (the two differ by the run-to-run spread only). Persistent blocks come only with one
// body: with the masked and unmasked copies of the step, ptxas spilled 3.9 KB (ptxas -v, sm_90a:
// 343 KB of SASS against 258 KB with no option, 105 KB with one body, 72 KB with one body and the
// rolled Q K^T loop). bench/cuda/fp32_notes.md has the measurements.
const std::vector<Fp32KernelVariant>& Fp32KernelVariants() {
  static const std::vector<Fp32KernelVariant> variants = {
      Variant<0>(),
      Variant<kFp32OneBody>(),
      Variant<kFp32OneBody | kFp32RolledQk>(),
      Variant<kFp32OneBody | kFp32Persistent>(),
      Variant<kFp32OneBody | kFp32RolledQk | kFp32Persistent>(),
      // Smaller diagonal tiles: 16-key tiles in 128-row blocks (the tile sweep's best at causal
      // 512 with two bodies and two stages, 0.94x the peer), and 64-row blocks of 4 warps, two
      // per SM (96 KB each), whose diagonal is a quarter of the 128-row one's.
      TileVariant<128, 16, 8, 1, 1, kFp32OneBody>(),
      TileVariant<64, 16, 4, 1, 2, kFp32OneBody>(),
      // Buckets 64 and 128 (two copies of the step routed): the routed shape first (the
      // reference where the build leaves the bucket out), then one body.
      Variant<0, 64>(),
      Variant<kFp32OneBody, 64>(),
      Variant<0, 128>(),
      Variant<kFp32OneBody, 128>(),
  };
  return variants;
}

}  // namespace attention::cuda::bench
