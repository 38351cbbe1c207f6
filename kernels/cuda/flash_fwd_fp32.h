// Host dispatch of the float32 forward kernel (flash_fwd_fp32_kernel.cuh): float32 q, k, v and o
// read and written directly, computed at float32 accuracy (Precision::kFull: split-TF32
// tensor-core products) or with one TensorFloat-32 product (Precision::kTF32). The third
// precision, kBF16, is not this kernel: the host API converts to bfloat16 and runs the 16-bit one.
//
// Error against a float64 reference (docs/kernel.md has the measured figures):
//   kFull: max |o - ref| <= 1e-5 * max |ref| (float32 order: ~2^-21 relative per product);
//   kTF32: relative Frobenius error of o ~1e-3 (operands rounded to 11 significant bits).
#ifndef ATTENTION_KERNELS_CUDA_FLASH_FWD_FP32_H_
#define ATTENTION_KERNELS_CUDA_FLASH_FWD_FP32_H_

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/flash_fwd_fp32_traits.h"

namespace attention::cuda {

// The variant `p` needs (see Fp32Variant).
Fp32Variant SelectFp32Variant(const AttentionParams& p);

// Whether the float32 kernel can read and write `p`'s tensors: q, k, v and o 16-byte aligned with
// batch, row and head strides that are multiples of 4 elements (16-byte rows for cp.async and the
// 16-byte stores of o); no paged K/V and no key range (the float32 kernel reads dense or packed
// K/V only). UNIMPLEMENTED naming the field otherwise.
absl::Status CheckFp32Layout(const AttentionParams& p);

// Enqueues the float32 kernel for `p` on `stream`: `p` normalized and checked by the host API
// (attention_cuda.cc) and by CheckFp32Layout, dtype float32, precision kFull or kTF32.
// UNIMPLEMENTED naming the value when this build has no kernel for its head_dim or precision;
// INTERNAL with the CUDA error string when the launch fails.
absl::Status DispatchFlashFwdFp32(const AttentionParams& p, cudaStream_t stream);

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_FWD_FP32_H_
