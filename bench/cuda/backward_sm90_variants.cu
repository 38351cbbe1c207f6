// The Hopper dK / dV kernel's alternative configurations timed by backward_bench --sm90-variants
// (backward_sm90_variants.h). Bucket 256's split kernel (BwdSm90SplitKernelTraits): dQ's two
// passes one after the other ("serial") or the first pass's atomics during the second
// ("overlap"); the next tile's product A issued before the last pass's atomics ("prefetch");
// the query tiles walked from the key tile's index ("stagger"); the first dQ pass issued
// between products C and C', its atomics during C' ("early"); dQ staged in shared memory and
// added by bulk tensor reductions instead of atomics ("bulk", FlashBwdSm90SplitBulkKernel); Q and
// dO loaded by bulk tensor copies on mbarriers instead of cp.async ("tma").
// Two-float reductions: the four-float ones lost in every cell of device call 2
// (backward_sm90_notes.md).
#include <type_traits>

#include "bench/cuda/backward_sm90_variants.h"
#include "kernels/cuda/flash_bwd_dispatch.h"
#include "kernels/cuda/flash_bwd_launch.h"
#include "kernels/cuda/flash_bwd_sm90_launch_template.cuh"
#include "kernels/cuda/flash_bwd_traits.h"

namespace attention::cuda {
namespace {

// DispatchFlashBwd's launch sequence (flash_bwd_dispatch.cc) with the Hopper kernel of Traits.
template <typename Traits>
cudaError_t RunVariant(const AttentionBackwardParams& params, void* workspace,
                       cudaStream_t stream) {
  const BwdParams p = BindBackwardWorkspace(params, workspace);
  if (p.deterministic) return cudaErrorNotSupported;
  if (const cudaError_t err = RunBwdPreprocess(p, stream); err != cudaSuccess) return err;
  if (const cudaError_t err =
          RunFlashBwdSm90WithTraits<Traits, DType::kBFloat16, BwdVariant::kDense>(p, stream);
      err != cudaSuccess) {
    return err;
  }
  return RunBwdPostprocess(p, stream);
}

template <bool kDqOverlap, bool kDqVec4, bool kPrefetchA, bool kStaggerQ, bool kDqEarly = false,
          bool kDqBulk = false, bool kTmaQ = false>
BwdSm90Variant SplitVariant(const char* name) {
  using Traits = BwdSm90SplitKernelTraits<256, kDqOverlap, kDqVec4, kPrefetchA, kStaggerQ, kDqEarly,
                                          kDqBulk, kTmaQ>;
  return {name, 256, std::is_same_v<Traits, DefaultBwdSm90KernelTraits<256>::type>,
          &RunVariant<Traits>};
}

}  // namespace

const std::vector<BwdSm90Variant>& BwdSm90Variants() {
  static const std::vector<BwdSm90Variant> variants = {
      SplitVariant<false, false, false, false>("split serial"),
      SplitVariant<true, false, false, false>("split overlap"),
      SplitVariant<false, false, false, true>("split serial stagger"),
      SplitVariant<false, false, true, false>("split serial prefetch"),
      SplitVariant<true, false, true, false>("split overlap prefetch"),
      SplitVariant<false, false, true, true>("split serial prefetch stagger"),
      SplitVariant<true, false, true, true>("split overlap prefetch stagger"),
      SplitVariant<false, false, false, false, true>("split early"),
      SplitVariant<false, false, true, false, true>("split early prefetch"),
      SplitVariant<false, false, false, true, true>("split early stagger"),
      SplitVariant<false, false, false, false, false, true>("split bulk"),
      SplitVariant<false, false, false, false, true, true>("split early bulk"),
      SplitVariant<false, false, false, true, false, true>("split bulk stagger"),
      SplitVariant<false, false, true, false, false, true>("split bulk prefetch"),
      SplitVariant<false, false, false, false, false, true, true>("split bulk tma"),
      SplitVariant<false, false, false, false, true, true, true>("split early bulk tma"),
  };
  return variants;
}

}  // namespace attention::cuda
