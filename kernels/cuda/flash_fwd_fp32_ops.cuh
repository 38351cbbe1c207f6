// The two TensorFloat-32 instructions the float32 kernel (flash_fwd_fp32_kernel.cuh) is built
// from, beside the shared wrappers of device_utils.cuh: rounding a float32 to a TF32 operand and
// the m16n8k8 TF32 tensor-core product. Device code only (the CPU emulation test substitutes its
// own definitions: tests/kernels/cuda/emulation/).
#ifndef ATTENTION_KERNELS_CUDA_FLASH_FWD_FP32_OPS_CUH_
#define ATTENTION_KERNELS_CUDA_FLASH_FWD_FP32_OPS_CUH_

#include <cstdint>

namespace attention::cuda::fp32 {

// x as a TF32 operand (round to nearest, ties away from zero).
__device__ __forceinline__ uint32_t ToTf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

// D += A * B on an m16n8k8 tile, TF32 operands, float32 accumulation. A: a0 (row g, k t), a1
// (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4); B: b0 (k t, column g), b1 (k t + 4, column g);
// D: d0, d1 (row g, columns 2t, 2t + 1), d2, d3 (row g + 8, same columns).
// Volatile, as the 16-bit kernel's MMAs and the fragment loads: the front end keeps their
// program order and ptxas schedules from there.
__device__ __forceinline__ void MmaTf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

}  // namespace attention::cuda::fp32

#endif  // ATTENTION_KERNELS_CUDA_FLASH_FWD_FP32_OPS_CUH_
