// The Hopper dK / dV kernel's alternative configurations timed by backward_bench --sm90-variants
// (backward_sm90_variants.h). Bucket 256's split kernel (BwdSm90SplitKernelTraits): dQ's two
// passes overlapped with the atomics or one after the other, two- or four-float reductions.
#include "bench/cuda/backward_sm90_variants.h"

#include <type_traits>

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

template <bool kDqOverlap, bool kDqVec4>
BwdSm90Variant SplitVariant(const char* name) {
  using Traits = BwdSm90SplitKernelTraits<256, kDqOverlap, kDqVec4>;
  return {name, 256, std::is_same_v<Traits, DefaultBwdSm90KernelTraits<256>::type>,
          &RunVariant<Traits>};
}

}  // namespace

const std::vector<BwdSm90Variant>& BwdSm90Variants() {
  static const std::vector<BwdSm90Variant> variants = {
      SplitVariant<true, false>("split dq overlap v2"),
      SplitVariant<true, true>("split dq overlap v4"),
      SplitVariant<false, false>("split dq serial v2"),
      SplitVariant<false, true>("split dq serial v4"),
  };
  return variants;
}

}  // namespace attention::cuda
