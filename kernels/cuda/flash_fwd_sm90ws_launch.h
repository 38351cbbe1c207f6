// Launch layer of the warp-specialized Hopper forward kernel (flash_fwd_sm90ws_kernel.cuh), as
// seen from host code: the kernel's argument block, its tile table and the launch function
// template, explicitly instantiated per (element type, head-dim bucket, causal) in
// instantiations/flash_fwd_sm90ws_*.cu. Host-compilable and free of absl, so that both the host
// API (flash_fwd_sm90ws.cc) and the instantiation files include it.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_FWD_SM90WS_LAUNCH_H_
#define ATTENTION_KERNELS_CUDA_FLASH_FWD_SM90WS_LAUNCH_H_

// CUtensorMap only (a 128-byte, 64-byte aligned opaque type): nothing here links libcuda, the
// host API reaches cuTensorMapEncodeTiled through cudaGetDriverEntryPointByVersion.
#include <cuda.h>
#include <cuda_runtime_api.h>

#include "kernels/attention_params.h"

namespace attention::cuda {

// Everything one launch reads: the checked, normalized params and the bulk-copy (TMA) maps of q,
// k and v. Each map describes its tensor as 4-D {head_dim, heads, rows, batch} (innermost first;
// strides head, row and batch stride), boxes of {64, 1, block rows, 1}: one 64-column panel of a
// tile, 128-byte rows in the 128-byte swizzle, which is SmemTile's layout (kernel_traits.h) and
// what wgmma's descriptors read. Rows past a sequence and columns past head_dim are zero-filled.
struct FwdSm90WsArgs {
  AttentionParams p;
  CUtensorMap q;
  CUtensorMap k;
  CUtensorMap v;
};

// The head-dim buckets the kernel is compiled for.
constexpr bool HasSm90WsKernel(int head_dim_bucket) {
  return head_dim_bucket == 64 || head_dim_bucket == 128;
}

// One tile configuration: 128 query rows per block (two consumer warpgroups of 64), KV tiles of
// `block_n` keys through `stages` shared-memory buffers each for K and V.
struct Sm90WsTileConfig {
  int block_n;
  int stages;
};

// Shared memory: Q (128 x d) + stages x (K + V) (block_n x d each), 16-bit elements.
//  - d = 64: 128-key tiles, four stages (16 + 4 x 32 = 144 KB): the producer runs up to four
//    tiles ahead, which hides the copy latency of the short per-tile compute at d = 64.
//  - d = 128: 128-key tiles, two stages (32 + 2 x 64 = 160 KB), as FlashAttention-3's first
//    version; three (224 KB) fit too and are measured beside it (bench --ws).
constexpr Sm90WsTileConfig DefaultSm90WsTileConfig(int head_dim_bucket) {
  if (head_dim_bucket <= 64) return {128, 4};
  return {128, 2};
}

// Enqueues the kernel on `stream` for `args` (params checked by CheckFlashFwdSm90Ws, maps built by
// the host API) with p.dtype == kDType and head_dim <= kHeadDim; kCausal iff p.causal. One block of
// 384 threads per (128 query rows, head, sequence). Returns the launch's CUDA error.
template <DType kDType, int kHeadDim, bool kCausal, int kBlockN, int kStages>
cudaError_t LaunchFlashFwdSm90Ws(const FwdSm90WsArgs& args, cudaStream_t stream);

// The same with DefaultSm90WsTileConfig(kHeadDim): the one the host API launches.
template <DType kDType, int kHeadDim, bool kCausal>
cudaError_t LaunchFlashFwdSm90WsDefault(const FwdSm90WsArgs& args, cudaStream_t stream);

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_FWD_SM90WS_LAUNCH_H_
