// Emulated stand-in for kernels/cuda/flash_fwd_fp32_ops.cuh (warp_emulator.h): cvt.rna.tf32.f32
// in integer arithmetic and the m16n8k8 TF32 MMA as a warp collective.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_FWD_FP32_OPS_CUH_
#define ATTENTION_KERNELS_CUDA_FLASH_FWD_FP32_OPS_CUH_

#include <cmath>
#include <cstdint>

#include "warp_emulator.h"

namespace attention::cuda::fp32 {

// Round to nearest, ties away from zero, to 10 explicit mantissa bits; NaN and inf unchanged.
inline uint32_t ToTf32(float x) {
  const uint32_t bits = __float_as_uint(x);
  if (!std::isfinite(x)) return bits;
  return (bits + 0x1000u) & 0xffffe000u;
}

inline void MmaTf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  auto& self = ::attention::cuda::emu::Self();
  for (int i = 0; i < 4; ++i) self.mma_a[i] = a[i];
  self.mma_b[0] = b0;
  self.mma_b[1] = b1;
  self.mma_d = d;
  ::attention::cuda::emu::Wait(::attention::cuda::emu::Op::kMmaTf32);
}

}  // namespace attention::cuda::fp32

#endif  // ATTENTION_KERNELS_CUDA_FLASH_FWD_FP32_OPS_CUH_
