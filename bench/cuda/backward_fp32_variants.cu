// The float32 backward's alternative configurations (backward_fp32_variants.h): two blocks per SM
// at d 64 (128 registers per thread; ptxas: 60 bytes of spills in the dK / dV kernel) against the
// default one, and at d 256 the 32 x 32 tiles the first version used against the default 64 x 32.
#include "bench/cuda/backward_fp32_variants.h"
#include "kernels/cuda/flash_bwd_fp32_launch.cuh"
#include "kernels/cuda/flash_bwd_fp32_traits.h"

namespace attention::cuda {

std::vector<BwdFp32Variant> BwdFp32Variants() {
  return {
      {"64 x 64, 1 block/SM", 64, true, &RunFlashBwdFp32Tiles<BwdFp32Traits<64, 64, 64, 1>>},
      {"64 x 64, 2 blocks/SM", 64, false, &RunFlashBwdFp32Tiles<BwdFp32Traits<64, 64, 64, 2>>},
      {"64 x 32", 256, true, &RunFlashBwdFp32Tiles<BwdFp32Traits<256, 64, 32>>},
      {"32 x 32", 256, false, &RunFlashBwdFp32Tiles<BwdFp32Traits<256, 32, 32>>},
  };
}

}  // namespace attention::cuda
