#include <cstdio>
#include <string>
#include <vector>

#include "bench/cuda/backward_tile_sweep.h"
#include "kernels/cuda/flash_bwd_dispatch.h"
#include "kernels/cuda/flash_bwd_launch_template.cuh"
#ifdef ATTN_KERNEL_SM90
#include "kernels/cuda/flash_bwd_sm90_launch_template.cuh"
#endif
#include "kernels/cuda/flash_bwd_traits.h"

namespace attention::cuda {

// Compiled in the library (instantiations/flash_bwd_bf16_hdim*_dense.cu): not again here.
extern template cudaError_t RunFlashBwdDq<DType::kBFloat16, 64, BwdVariant::kDense>(
    const BwdParams& p, cudaStream_t stream);
extern template cudaError_t RunFlashBwdDq<DType::kBFloat16, 128, BwdVariant::kDense>(
    const BwdParams& p, cudaStream_t stream);

namespace bench {
namespace {

// DispatchFlashBwd's launch sequence (flash_bwd_dispatch.cc) with the dK / dV kernel of Traits.
template <typename Traits>
cudaError_t RunCandidate(const AttentionBackwardParams& params, void* workspace,
                         cudaStream_t stream) {
  constexpr int kHeadDim = Traits::kHeadDim;
  const BwdParams p = BindBackwardWorkspace(params, workspace);
  if (const cudaError_t err = RunBwdPreprocess(p, stream); err != cudaSuccess) return err;
  if (const cudaError_t err =
          RunFlashBwdWithTraits<Traits, DType::kBFloat16, BwdVariant::kDense>(p, stream);
      err != cudaSuccess) {
    return err;
  }
  return p.deterministic ? RunFlashBwdDq<DType::kBFloat16, kHeadDim, BwdVariant::kDense>(p, stream)
                         : RunBwdPostprocess(p, stream);
}

template <int kHeadDim, int kBlockM, int kBlockN, int kWarps, int kSdpWarpsN, int kDkvWarpsN,
          int kDqWarpsM, int kQStages = 1>
BwdTileCandidate Candidate() {
  using Traits = BwdKernelTraits<kHeadDim, kBlockM, kBlockN, kWarps, kSdpWarpsN, kDkvWarpsN,
                                 kDqWarpsM, kQStages>;
  constexpr BwdTileConfig d = DefaultBwdTileConfig(kHeadDim);
  char label[64];
  std::snprintf(label, sizeof(label), "%dx%d %dw %d/%d/%d%s", kBlockM, kBlockN, kWarps, kSdpWarpsN,
                kDkvWarpsN, kDqWarpsM, kQStages == 2 ? " 2q" : "");
  return {label, kHeadDim,
          d.block_m == kBlockM && d.block_n == kBlockN && d.warps == kWarps &&
              d.sdp_warps_n == kSdpWarpsN && d.dkv_warps_n == kDkvWarpsN &&
              d.dq_warps_m == kDqWarpsM && d.q_stages == kQStages,
          &RunCandidate<Traits>};
}

#ifdef ATTN_KERNEL_SM90
// The same with the Hopper dK / dV kernel of Traits (a BwdSm90KernelTraits; default dQ mode).
template <typename Traits>
cudaError_t RunSm90Candidate(const AttentionBackwardParams& params, void* workspace,
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

template <int kHeadDim, int kBlockM, bool kOverlap>
BwdTileCandidate Sm90Candidate() {
  using Traits = BwdSm90KernelTraits<kHeadDim, kBlockM, kOverlap>;
  char label[64];
  std::snprintf(label, sizeof(label), "sm90 %dx%d 2wg%s", kBlockM, Traits::kBlockN,
                kOverlap ? " overlap" : "");
  return {label, kHeadDim, false, &RunSm90Candidate<Traits>, false};
}
#endif  // ATTN_KERNEL_SM90

}  // namespace

// Around DefaultBwdTileConfig (flash_bwd_traits.h), 8 warps each: the previous 64 x 64 tiles
// (every product 4 x 2, one query stage); 128-key tiles with FlashAttention-2's warp grids (S^T
// 4 x 2, dK / dV 4 x 2, dQ 4 x 2 or 2 x 4) with one query-tile stage and with two (" 2q", the
// defaults); every warp on 16 keys of S^T (8 x 1); at 64 FlashAttention-2's 128 x 128 tiles (S^T
// 2 x 4) and 8 x 1 grids for S^T and dK / dV; at 128 also 128 x 64 tiles. With ATTN_KERNEL_SM90,
// the Hopper dK / dV kernel's default tiles with and without its overlap of the element-wise
// work and the products (BwdSm90KernelTraits::kOverlap).
const std::vector<BwdTileCandidate>& BackwardTileSweep() {
  static const std::vector<BwdTileCandidate> sweep = {
      Candidate<64, 64, 64, 8, 4, 4, 4>(),   Candidate<64, 64, 128, 8, 4, 4, 4>(),
      Candidate<64, 64, 128, 8, 4, 4, 2>(),  Candidate<64, 128, 128, 8, 2, 4, 4>(),
      Candidate<64, 64, 128, 8, 8, 8, 4>(),  Candidate<64, 64, 128, 8, 4, 4, 4, 2>(),
      Candidate<128, 64, 64, 8, 4, 4, 4>(),  Candidate<128, 64, 128, 8, 4, 4, 2>(),
      Candidate<128, 64, 128, 8, 4, 4, 4>(), Candidate<128, 64, 128, 8, 8, 4, 2>(),
      Candidate<128, 128, 64, 8, 4, 4, 4>(), Candidate<128, 64, 128, 8, 4, 4, 2, 2>(),
#ifdef ATTN_KERNEL_SM90
      Sm90Candidate<64, 128, true>(),        Sm90Candidate<64, 128, false>(),
      Sm90Candidate<128, 64, true>(),        Sm90Candidate<128, 64, false>(),
#endif
  };
  return sweep;
}

}  // namespace bench
}  // namespace attention::cuda
