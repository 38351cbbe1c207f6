// Launch layer of the decode kernels: dynamic shared-memory limit (raised once per kernel and
// device), one-dimensional grid, launch and error check; the combine pass with programmatic
// dependent launch. Included only by the generated instantiation files and
// flash_decode_combine.cu.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_DECODE_LAUNCH_TEMPLATE_CUH_
#define ATTENTION_KERNELS_CUDA_FLASH_DECODE_LAUNCH_TEMPLATE_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "kernels/attention_params.h"
#include "kernels/cuda/decode_heuristics.h"
#include "kernels/cuda/flash_decode_kernel.cuh"
#include "kernels/cuda/flash_decode_launch.h"

namespace attention::cuda {

template <DType kDType>
using DecodeElementOf =
    std::conditional_t<kDType == DType::kBFloat16, __nv_bfloat16,
                       std::conditional_t<kDType == DType::kFloat16, __half, float>>;

// Above 48 KB a kernel must opt in to the larger dynamic shared-memory limit, once per device
// (the attribute belongs to the device's context): kKernel's limit is raised to kSmemBytes the
// first time it launches on a device, not at every launch (cudaFuncSetAttribute is a driver call
// on the path of every decode step, batch 1 included). Threads that race on a device's first
// launch both set the same value.
template <auto kKernel, int kSmemBytes>
cudaError_t RaiseSmemLimitOnce() {
  if constexpr (kSmemBytes <= 48 * 1024) {
    return cudaSuccess;
  } else {
    constexpr int kMaxDevices = 64;
    static std::atomic<bool> raised[kMaxDevices];
    int device = 0;
    if (const cudaError_t err = cudaGetDevice(&device); err != cudaSuccess) return err;
    const bool tracked = device >= 0 && device < kMaxDevices;
    if (tracked && raised[device].load(std::memory_order_acquire)) return cudaSuccess;
    const cudaError_t err =
        cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
    if (err == cudaSuccess && tracked) raised[device].store(true, std::memory_order_release);
    return err;
  }
}

// One block per (sequence, split, query tile, KV head); the host checked that the count fits the
// grid's x dimension.
template <auto kKernel, int kSmemBytes>
cudaError_t LaunchDecode(const AttentionParams& p, const DecodeLaunch& l, cudaStream_t stream) {
  if (const cudaError_t err = RaiseSmemLimitOnce<kKernel, kSmemBytes>(); err != cudaSuccess) {
    return err;
  }
  const int64_t blocks =
      int64_t{p.batch} * l.num_splits * l.query_tiles * (p.kv_heads / l.heads_per_block);
  kKernel<<<static_cast<unsigned>(blocks), kDecodeThreads, kSmemBytes, stream>>>(p, l);
  return cudaGetLastError();
}

// The 16-bit kernel of kDecodeVariants[kVariant] with row layout kRows (its page cache where
// DecodePageCacheEntries gives one, the fused launch where it merges its own splits).
template <DType kDType, int kHeadDim, DecodeRows kRows, int kVariant>
cudaError_t LaunchDecode16(const AttentionParams& p, const DecodeLaunch& l, cudaStream_t stream);

template <DType kDType, int kHeadDim>
cudaError_t RunDecodeKernel(const AttentionParams& p, const DecodeLaunch& l, cudaStream_t stream) {
  if constexpr (kDType == DType::kFloat32) {
    using Traits = decode::Decode32Traits<kHeadDim>;
    return LaunchDecode<&decode::FlashDecodeKernel32<Traits>, Traits::kSmem.total>(p, l, stream);
  } else {
    if (l.rows == DecodeRows::kRows16) {
      return LaunchDecode16<kDType, kHeadDim, DecodeRows::kRows16, 0>(p, l, stream);
    }
    return LaunchDecode16<kDType, kHeadDim, DecodeRows::kRows64, 0>(p, l, stream);
  }
}

// The fused variants' launch (l.counters set): the counters' zeroing kernel, then the decode
// kernel behind it with programmatic stream serialization (when l.dependent_launch), so that the
// decode blocks start while the counters are zeroed and wait for that only at their ticket. With
// l.counters_self_reset, the decode kernel alone, in plain stream order.
template <auto kKernel, int kSmemBytes>
cudaError_t LaunchDecodeFused(const AttentionParams& p, const DecodeLaunch& l,
                              cudaStream_t stream) {
  if (const cudaError_t err = RaiseSmemLimitOnce<kKernel, kSmemBytes>(); err != cudaSuccess) {
    return err;
  }
  if (!l.counters_self_reset) {
    // One counter per thread; a few blocks are enough for any grid the decode kernel can take.
    const int64_t zero_blocks = (l.num_counters + kDecodeThreads - 1) / kDecodeThreads;
    decode::FlashDecodeZeroCounters<unsigned int>
        <<<static_cast<unsigned>(zero_blocks < 64 ? zero_blocks : 64), kDecodeThreads, 0, stream>>>(
            l.counters, l.num_counters);
    if (const cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  }
  const int64_t blocks =
      int64_t{p.batch} * l.num_splits * l.query_tiles * (p.kv_heads / l.heads_per_block);
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(blocks));
  config.blockDim = dim3(kDecodeThreads);
  config.dynamicSmemBytes = static_cast<size_t>(kSmemBytes);
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  // Programmatic only behind the zeroing kernel: a self-resetting launch follows whatever wrote
  // its K/V (the row append), which it must see whole.
  config.numAttrs = l.dependent_launch && !l.counters_self_reset ? 1 : 0;
  const cudaError_t err = cudaLaunchKernelEx(&config, kKernel, p, l);
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
}

// kKernel with the fused launch when its variant merges its own splits (kFusedCombine) and the
// launch splits (l.counters set), else the plain one.
template <auto kKernel, int kSmemBytes, bool kFusedCombine>
cudaError_t LaunchDecodeOrFused(const AttentionParams& p, const DecodeLaunch& l,
                                cudaStream_t stream) {
  if (kFusedCombine && l.counters != nullptr) {
    return LaunchDecodeFused<kKernel, kSmemBytes>(p, l, stream);
  }
  return LaunchDecode<kKernel, kSmemBytes>(p, l, stream);
}

template <DType kDType, int kHeadDim, DecodeRows kRows, int kVariant>
cudaError_t LaunchDecode16(const AttentionParams& p, const DecodeLaunch& l, cudaStream_t stream) {
  static_assert(kDType != DType::kFloat32, "the 16-bit kernel");
  constexpr DecodeVariant kV = kDecodeVariants[kVariant];
  using Traits = decode::Decode16Traits<kHeadDim, kRows, kV.stages, kV.heads,
                                        DecodePageCacheEntries(kV, kHeadDim, kRows)>;
  using Element = DecodeElementOf<kDType>;
  constexpr int kSmem = Traits::kSmem.total;
  if constexpr (kVariant == 0) {
    // The production kernel: one instantiation per K/V layout (decode::DecodeKv).
    if (p.page_table != nullptr) {
      return LaunchDecodeOrFused<
          &decode::FlashDecodeKernel16<Traits, Element, 0, true, decode::DecodeKv::kPaged>, kSmem,
          kV.fused_combine>(p, l, stream);
    }
    return LaunchDecodeOrFused<
        &decode::FlashDecodeKernel16<Traits, Element, 0, true, decode::DecodeKv::kDense>, kSmem,
        kV.fused_combine>(p, l, stream);
  } else {
    if constexpr (kV.specialize_logits) {
      if (p.softcap == 0.f && p.alibi_slopes == nullptr) {
        return LaunchDecodeOrFused<&decode::FlashDecodeKernel16<Traits, Element, kVariant, false>,
                                   kSmem, kV.fused_combine>(p, l, stream);
      }
    }
    return LaunchDecodeOrFused<&decode::FlashDecodeKernel16<Traits, Element, kVariant>, kSmem,
                               kV.fused_combine>(p, l, stream);
  }
}

// Variant kVariant of kDecodeVariants: the 16-bit kernel with 16-row blocks.
template <DType kDType, int kHeadDim, int kVariant>
cudaError_t RunDecodeVariantOf(const AttentionParams& p, const DecodeLaunch& l,
                               cudaStream_t stream) {
  static_assert(kVariant > 0 && kVariant < kDecodeNumVariants, "an entry of kDecodeVariants");
  return LaunchDecode16<kDType, kHeadDim, DecodeRows::kRows16, kVariant>(p, l, stream);
}

template <DType kDType, int kHeadDim, int... kVariants>
cudaError_t RunDecodeVariantIn(const AttentionParams& p, const DecodeLaunch& l, int variant,
                               cudaStream_t stream, std::integer_sequence<int, kVariants...>) {
  cudaError_t err = cudaErrorInvalidValue;
  // Variant 0 is the production kernel (RunDecodeKernel): the variants counted from 1.
  (void)((variant == kVariants + 1
              ? (err = RunDecodeVariantOf<kDType, kHeadDim, kVariants + 1>(p, l, stream), true)
              : false) ||
         ...);
  return err;
}

template <DType kDType, int kHeadDim>
cudaError_t RunDecodeVariant(const AttentionParams& p, const DecodeLaunch& l, int variant,
                             cudaStream_t stream) {
  return RunDecodeVariantIn<kDType, kHeadDim>(
      p, l, variant, stream, std::make_integer_sequence<int, kDecodeNumVariants - 1>{});
}

// Four rows (one per warp) per block.
template <DType kDType>
cudaError_t RunDecodeCombine(const AttentionParams& p, const DecodeLaunch& l, cudaStream_t stream) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>((l.partial_rows + kDecodeWarps - 1) / kDecodeWarps));
  config.blockDim = dim3(kDecodeThreads);
  config.dynamicSmemBytes = 0;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = l.dependent_launch ? 1 : 0;
  const cudaError_t err =
      l.compact_combine
          ? cudaLaunchKernelEx(&config,
                               &decode::FlashDecodeCombineKernel<DecodeElementOf<kDType>, 4>, p, l)
          : cudaLaunchKernelEx(&config, &decode::FlashDecodeCombineKernel<DecodeElementOf<kDType>>,
                               p, l);
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
}

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_DECODE_LAUNCH_TEMPLATE_CUH_
