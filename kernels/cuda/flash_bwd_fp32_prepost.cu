// Launcher of the float32 backward's preprocess (bwd_fp32::Fp32BwdPreprocessKernel).
#include <cuda_runtime.h>

#include "kernels/cuda/flash_bwd_fp32.h"
#include "kernels/cuda/flash_bwd_fp32_kernel.cuh"
#include "kernels/cuda/flash_bwd_launch.h"

namespace attention::cuda {

cudaError_t RunBwdFp32Preprocess(const BwdParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.seqlen_q == 0) return cudaSuccess;
  constexpr int kRows = bwd_fp32::kFp32PrepRows;
  const dim3 grid((p.seqlen_q + kRows - 1) / kRows, p.q_heads, p.batch);
  bwd_fp32::Fp32BwdPreprocessKernel<kRows><<<grid, 32 * kRows, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace attention::cuda
