// Tile configurations of the FP8 kernel beside its default (DefaultFp8TileConfig), for the
// benchmark (attention_kernel_bench --fp8-variants) and the test (ATTN_FP8_VARIANT=LABEL), so
// that one device command checks and times them all. Compiled only with
// -DATTN_BENCH_FP8_VARIANTS=ON (kernels/cuda/flash_fwd_fp8_variants.cu); without it the list is
// empty.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_FWD_FP8_VARIANTS_H_
#define ATTENTION_KERNELS_CUDA_FLASH_FWD_FP8_VARIANTS_H_

#include <cuda_runtime_api.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/flash_fwd_fp8_launch.h"

namespace attention::cuda {

// How a variant's grid is chosen: by Fp8PersistentFor, always persistent, or one block per
// query tile.
enum class Fp8Grid { kRule, kPersistent, kPerTile };

struct Fp8Variant {
  int head_dim;  // the bucket: 64, 128 or 256
  Fp8TileConfig config;
  Fp8Grid grid;
  cudaError_t (*dense)(const FwdFp8Args&, cudaStream_t);
  cudaError_t (*causal)(const FwdFp8Args&, cudaStream_t);
  // The V^T pre-pass alone (dense and causal launch nothing): its time beside the kernels'.
  bool prepass_only = false;

  // "d128 128x192/2c/3s" (query rows x KV rows / consumers / stages), "/e1" one of every 4 n8
  // tiles' exponentials on the FMA pipe, "/r" the softmax's row max and sum as four partial
  // results, "+p" persistent, "+t" one block per tile, "/vt-only" the pre-pass alone.
  std::string Label() const;
};

// The compiled variants (empty without ATTN_BENCH_FP8_VARIANTS).
const std::vector<Fp8Variant>& Fp8Variants();

// Throughput of the FP8 softmax's special-function and conversion work on the current device,
// one line: pairs of values per SM per nanosecond for two ex2.approx each, the same with their
// cvt.rn.satfinite.e4m3x2.f32, two FADDs with the cvt, and two ex2 with the pair through f16x2.
// If the cvt issued to MUFU's pipe at MUFU's rate, the second rate would be two thirds of the
// first. Without ATTN_BENCH_FP8_VARIANTS it says that it is not built.
std::string Fp8PipeProbe();

// RunFlashFwdFp8 on `variant`'s configuration: UNIMPLEMENTED when p's head-dim bucket is not the
// variant's, else RunFlashFwdFp8's checks and errors.
absl::Status RunFlashFwdFp8Variant(const AttentionParams& p, const Fp8Variant& variant,
                                   void* workspace, cudaStream_t stream);

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_FWD_FP8_VARIANTS_H_
