// The head-dim buckets this build compiled, for the host dispatches (forward, float32, decode):
// ATTN_KERNEL_HEAD_DIMS, which kernels/cuda/CMakeLists.txt defines from head_dim_buckets.txt and
// the ATTN_KERNEL_HEAD_DIMS option, is the only list they read.
#ifndef ATTENTION_KERNELS_CUDA_COMPILED_HEAD_DIMS_H_
#define ATTENTION_KERNELS_CUDA_COMPILED_HEAD_DIMS_H_

#include <cstddef>
#include <type_traits>
#include <utility>

#ifndef ATTN_KERNEL_HEAD_DIMS
#error "ATTN_KERNEL_HEAD_DIMS must list the compiled head-dim buckets (kernels/cuda/CMakeLists.txt)"
#endif

namespace attention::cuda {

inline constexpr int kCompiledHeadDims[] = {ATTN_KERNEL_HEAD_DIMS};
inline constexpr size_t kNumCompiledHeadDims = sizeof(kCompiledHeadDims) / sizeof(int);

// The smallest compiled bucket >= head_dim, or 0 when none is.
constexpr int SmallestCompiledBucket(int head_dim) {
  for (int bucket : kCompiledHeadDims) {
    if (head_dim <= bucket) return bucket;
  }
  return 0;
}

// Calls fn(std::integral_constant<int, bucket>{}) for `bucket` when it is a compiled bucket and
// returns what fn returns; returns `missing` otherwise. Only compiled buckets are instantiated,
// so a pruned build references no kernel it did not compile.
template <typename Result, typename Fn, size_t I = 0>
Result VisitCompiledHeadDim(int bucket, Fn&& fn, Result missing) {
  if constexpr (I == kNumCompiledHeadDims) {
    return missing;
  } else {
    constexpr int kHeadDim = kCompiledHeadDims[I];
    if (bucket == kHeadDim) return fn(std::integral_constant<int, kHeadDim>{});
    return VisitCompiledHeadDim<Result, Fn, I + 1>(bucket, std::forward<Fn>(fn),
                                                   std::move(missing));
  }
}

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_COMPILED_HEAD_DIMS_H_
