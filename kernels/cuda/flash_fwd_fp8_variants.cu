// The FP8 kernel's candidate tile configurations (flash_fwd_fp8_variants.h), compiled only with
// -DATTN_BENCH_FP8_VARIANTS=ON. Shared memory per block (bytes of e4m3 tiles, bfloat16 O):
// Q 64 c d + O 128 c d + stages (K + V^T) 2 n d, at most 227 KB. Left out at d 128: 128 x 256
// (two consumers) and 192 x 128 (three), where ptxas serializes the wgmmas for want of registers
// (C7512). Dropped after device call 2 of 2026-12-06 (H100, bench/cuda/fp8_notes.md): d 128's
// persistent / per-tile grids and 2 stages (within the run-to-run noise of +-5 % of the
// default), /e1 and /e2 (exponentials on the FMA pipe: 0.77-0.95x). After device call 2 of
// session 7 (H200, interleaved): /r, /m, /l and their combinations alone within 0.97-1.03x of the
// plain softmax, 192x64/3c 0.82-0.98x, 128x192/3s/r/l 0.88-1.05x; /s 1.02-1.16x, /s2 0.99-1.13x.
// After device call B of session 8 (H200, interleaved with bf16, cold L2), against /m/l/s/x:
// /m/l/s2/x, /m/l/s/f/x, /m/l/s2/f/x 0.95-1.01x, /e1/m/l/s/x 0.95-0.98x, /e2/m/l/s/x 0.86-0.94x.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "kernels/cuda/flash_fwd_fp8_launch.cuh"
#include "kernels/cuda/flash_fwd_fp8_variants.h"

namespace attention::cuda {
namespace {

template <int kHeadDim, int kBlockN, int kStages, int kConsumers, int kFmaExp = 0,
          bool kTree = false, bool kSumMma = false, bool kLazy = false, int kSpec = 0,
          bool kNoTurns = false, bool kLseF32 = false>
Fp8Variant Make(Fp8Grid grid = Fp8Grid::kRule) {
  return {kHeadDim,
          {kBlockN, kStages, kConsumers, kFmaExp, kTree, kSumMma, kLazy, kSpec, kNoTurns, kLseF32},
          grid,
          &LaunchFlashFwdFp8<kHeadDim, false, kBlockN, kStages, kConsumers, kFmaExp, kTree, kSumMma,
                             kLazy, kSpec, kNoTurns, kLseF32>,
          &LaunchFlashFwdFp8<kHeadDim, true, kBlockN, kStages, kConsumers, kFmaExp, kTree, kSumMma,
                             kLazy, kSpec, kNoTurns, kLseF32>,
          false};
}

// The launch of Fp8Variant::prepass_only: none.
cudaError_t NoKernel(const FwdFp8Args&, cudaStream_t) { return cudaSuccess; }

}  // namespace

const std::vector<Fp8Variant>& Fp8Variants() {
  static const std::vector<Fp8Variant> variants = {
      // d 128 (default /m/l/s/x since session 8): the plain softmax (the default before), /m/l/s
      // (the LSE from the sums of the rounded P: faster, but off by up to about 0.1), and
      // /r/m/l/s/x (the float32 LSE sums as four partial sums per row half).
      Make<128, 128, 4, 2>(),
      Make<128, 128, 4, 2, 0, false, true, true, 1>(),
      Make<128, 128, 4, 2, 0, true, true, true, 1, false, true>(),
      // The V^T pre-pass alone at d 128: what an in-kernel transpose could save at most.
      {128, DefaultFp8TileConfig(128), Fp8Grid::kRule, &NoKernel, &NoKernel, true},
      // d 64 (default: the plain softmax): d 128's new default.
      Make<64, 128, 4, 2, 0, false, true, true, 1, false, true>(),
  };
  return variants;
}

namespace {

// Fp8PipeProbe's modes: kExp two exponentials per pair, kExpCvt the same and their e4m3 pair
// (the softmax's mix), kAddCvt two FADDs and the e4m3 pair, kExpCvtF16 two exponentials and the
// pair through f16x2 (cvt.rn.f16x2.f32, then cvt.rn.satfinite.e4m3x2.f16x2).
enum ProbeMode { kExp, kExpCvt, kAddCvt, kExpCvtF16 };

constexpr int kProbeChains = 8;
constexpr int kProbeIters = 2048;

template <int kMode>
__global__ void __launch_bounds__(256) Fp8PipeProbeKernel(uint32_t* sink, float seed) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  float a[kProbeChains];
  float b[kProbeChains];
#pragma unroll
  for (int c = 0; c < kProbeChains; ++c) {
    a[c] = seed + 0.01f * c + 1e-6f * threadIdx.x;
    b[c] = seed + 0.02f * c;
  }
  uint32_t acc = 0;
  for (int it = 0; it < kProbeIters; ++it) {
#pragma unroll
    for (int c = 0; c < kProbeChains; ++c) {
      if constexpr (kMode == kAddCvt) {
        a[c] += 1e-7f;
        b[c] += 1e-7f;
      } else {
        // a in [0.5, 1]: 2^-a stays there.
        asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(a[c]) : "f"(-a[c]));
        asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(b[c]) : "f"(-b[c]));
      }
      if constexpr (kMode == kExpCvt || kMode == kAddCvt) {
        uint16_t pair;
        asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(pair) : "f"(b[c]), "f"(a[c]));
        acc ^= pair;
      } else if constexpr (kMode == kExpCvtF16) {
        uint32_t half2;
        uint16_t pair;
        asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(half2) : "f"(b[c]), "f"(a[c]));
        asm("cvt.rn.satfinite.e4m3x2.f16x2 %0, %1;\n" : "=h"(pair) : "r"(half2));
        acc ^= pair;
      }
    }
  }
  float all = 0.f;
#pragma unroll
  for (int c = 0; c < kProbeChains; ++c) all += a[c] + b[c];
  if (all == -1.f || acc == 0x12345u) sink[threadIdx.x] = acc;
#endif
}

// Milliseconds of one launch of mode kMode over `blocks` blocks (median of 5), -1 on error.
template <int kMode>
float TimeProbe(int blocks, uint32_t* sink) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  float best[5];
  Fp8PipeProbeKernel<kMode><<<blocks, 256>>>(sink, 0.7f);
  for (float& t : best) {
    cudaEventRecord(start);
    Fp8PipeProbeKernel<kMode><<<blocks, 256>>>(sink, 0.7f);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    cudaEventElapsedTime(&t, start, stop);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (cudaGetLastError() != cudaSuccess) return -1.f;
  std::sort(best, best + 5);
  return best[2];
}

}  // namespace

std::string Fp8PipeProbe() {
  int device = 0;
  int sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  uint32_t* sink = nullptr;
  if (sms <= 0 || cudaMalloc(&sink, 256 * sizeof(uint32_t)) != cudaSuccess) return "no device";
  const int blocks = 8 * sms;  // 8 blocks of 256 threads per SM: 64 warps, full occupancy
  const float t_exp = TimeProbe<kExp>(blocks, sink);
  const float t_exp_cvt = TimeProbe<kExpCvt>(blocks, sink);
  const float t_add_cvt = TimeProbe<kAddCvt>(blocks, sink);
  const float t_exp_f16 = TimeProbe<kExpCvtF16>(blocks, sink);
  cudaFree(sink);
  // Pairs per SM per nanosecond: every thread does kProbeIters * kProbeChains pairs.
  const double pairs = static_cast<double>(blocks) / sms * 256.0 * kProbeIters * kProbeChains;
  const auto rate = [&](float ms) { return ms > 0.f ? pairs / (ms * 1e6) : -1.0; };
  return absl::StrFormat(
      "pairs per SM per ns: 2 ex2 %.2f, 2 ex2 + e4m3x2 cvt %.2f, 2 FADD + e4m3x2 cvt %.2f, "
      "2 ex2 + f16x2 + e4m3x2.f16x2 %.2f (ms %.3f / %.3f / %.3f / %.3f)",
      rate(t_exp), rate(t_exp_cvt), rate(t_add_cvt), rate(t_exp_f16), t_exp, t_exp_cvt, t_add_cvt,
      t_exp_f16);
}

}  // namespace attention::cuda
