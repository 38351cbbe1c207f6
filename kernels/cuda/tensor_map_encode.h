// cuTensorMapEncodeTiled (CUDA 12.0 driver API), the host call that builds the tensor maps of the
// Hopper kernels' bulk tensor copies and reductions (flash_fwd_sm90ws.cc, flash_bwd_bulk.cuh). It
// is reached through the runtime (cudaGetDriverEntryPointByVersion), so that nothing links
// libcuda. Host code; needs only the CUDA headers.
#ifndef ATTENTION_KERNELS_CUDA_TENSOR_MAP_ENCODE_H_
#define ATTENTION_KERNELS_CUDA_TENSOR_MAP_ENCODE_H_

#include <cuda.h>
#include <cuda_runtime_api.h>

namespace attention::cuda {

using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                   const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                   const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// The driver's cuTensorMapEncodeTiled, looked up once; null when the driver does not provide it.
inline EncodeTiledFn EncodeTiled() {
  static const EncodeTiledFn encode = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      return static_cast<EncodeTiledFn>(nullptr);
    }
    return reinterpret_cast<EncodeTiledFn>(f);
  }();
  return encode;
}

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_TENSOR_MAP_ENCODE_H_
