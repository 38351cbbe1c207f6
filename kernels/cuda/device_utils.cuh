// Thin wrappers over the sm_80+ instructions the forward kernel is built from: asynchronous
// global->shared copies (cp.async), shared->register matrix loads (ldmatrix), the m16n8k16
// tensor-core product (mma.sync) and the fast exp2 / tanh of the special-function unit.
// Device code only.
#ifndef ATTENTION_KERNELS_CUDA_DEVICE_UTILS_CUH_
#define ATTENTION_KERNELS_CUDA_DEVICE_UTILS_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace attention::cuda::fwd {

// 32-bit shared-memory address of a generic pointer into shared memory.
__device__ __forceinline__ uint32_t SmemAddress(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

// Copies 16 bytes from global to shared memory asynchronously; when `pred` is false nothing is
// read (the address is not dereferenced and may point past the tensor) and the 16 destination
// bytes are zero-filled (cp.async's src-size operand set to 0).
__device__ __forceinline__ void CpAsync16(uint32_t smem_addr, const void* gmem, bool pred) {
  const int src_bytes = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr), "l"(gmem),
               "r"(src_bytes));
}

__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most `kPending` of this thread's committed copy groups are still in flight.
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// Four 8x8 16-bit matrices from shared memory: lanes 8i..8i+7 give the row addresses of matrix
// i, and r[i] receives this lane's share of matrix i (row lane/4, columns 2*(lane%4) + {0,1}).
__device__ __forceinline__ void LdsmX4(uint32_t (&r)[4], uint32_t smem_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr));
}

// As LdsmX4 but each matrix transposed: r[i] holds (rows 2*(lane%4) + {0,1}, column lane/4).
__device__ __forceinline__ void LdsmX4Trans(uint32_t (&r)[4], uint32_t smem_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr));
}

__device__ __forceinline__ void StoreShared32(uint32_t smem_addr, uint32_t value) {
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(smem_addr), "r"(value));
}

__device__ __forceinline__ uint4 LoadShared128(uint32_t smem_addr) {
  uint4 v;
  asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(smem_addr));
  return v;
}

// 2^x on the special-function unit (ex2.approx.ftz: relative error ~2^-22, -inf -> 0).
__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// tanh(x) = 1 - 2 / (e^{2x} + 1) from the fast exp2 and a fast division: the absolute error
// stays ~1e-7 everywhere (cancellation near 0 costs relative, not absolute, accuracy), which is
// what a softcapped logit c * tanh(s / c) needs; tanh.approx's 2^-11 relative error would be
// 0.015 absolute at c = 30. Saturates to +-1 (e^{2x} overflowing to inf gives 1).
__device__ __forceinline__ float Tanh(float x) {
  const float e = Exp2(x * 2.8853900817779268f);  // 2 * log2(e)
  return 1.f - __fdividef(2.f, e + 1.f);
}

// Per-element-type tensor-core operations: D += A * B on an m16n8k16 tile with float32
// accumulation, and packing two floats into one 32-bit register of two 16-bit values
// (`lo` in the low half, the element with the smaller column index).
template <typename Element>
struct MmaOps;

template <>
struct MmaOps<__nv_bfloat16> {
  static __device__ __forceinline__ void Mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t Pack(float lo, float hi) {
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
  }
};

template <>
struct MmaOps<__half> {
  static __device__ __forceinline__ void Mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t Pack(float lo, float hi) {
    uint32_t r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
  }
};

}  // namespace attention::cuda::fwd

#endif  // ATTENTION_KERNELS_CUDA_DEVICE_UTILS_CUH_
