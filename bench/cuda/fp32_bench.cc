// Benchmark of float32 attention at each precision level: FULL (the float32 kernel, split-TF32
// products), TF32 (the float32 kernel, one TF32 product) and BF16 (through the host API,
// kernels/cuda/attention_cuda.h: conversion to bfloat16, the 16-bit kernel, conversion back, what
// every float32 request ran before issue 24).
//
// Default: the standard grid of /work/shared/peers/sdpa_peer.py (run it with --dtype fp32 in the
// same command for PyTorch's float32 SDPA): head_dim in {64, 128, 256}, causal off / on, seqlen
// 512 .. 16384 with batch * seqlen = 16384 tokens and heads * head_dim = 2048. TFLOP/s use the
// FlashAttention convention 4 * batch * heads * seqlen^2 * head_dim, halved when causal. Time:
// median of repeated launches, each timed with CUDA events, after warm-up.
//
//   fp32_bench [--precision full,tf32,bf16] [--hdim 64,128,256] [--causal 0,1]
//              [--seqlens 512,...] [--tokens 16384] [--model-dim 2048] [--json FILE] [--tiles]
//              [--variants [--check-only]] [--no-grid]
//   --tiles   also times the float32 kernel's alternative tile configurations
//             (bench/cuda/fp32_tile_sweep.cu; configure with -DATTN_BENCH_FP32_TILE_SWEEP=ON) at
//             precision FULL, causal off / on, on the seqlens of --seqlens. The sweep launches
//             its kernels directly, so it also times head-dim buckets this build's dispatch
//             leaves out (e.g. the d 256 default, 128 x 32 with 8 warps).
//   --variants  also times the kernel's code-shape variants (Fp32KernelOption,
//             bench/cuda/fp32_bench_variants.cu; configure with -DATTN_BENCH_FP32_VARIANTS=ON) at
//             precision FULL beside the dispatch's default (or, for a head dim whose bucket this
//             build leaves out, beside its first variant), at the head dims of --hdim that have
//             variants, on the causal settings and seqlens of --causal / --seqlens, and checks
//             each variant's o against the reference's: the options change no arithmetic, so with
//             the default's tiles o must be bitwise the same, and with other tiles within
//             2e-5 x max |o| (a cell that misses counts as a failure, exit status 1). With
//             --check-only nothing is timed: each kernel runs once (for compute-sanitizer; the
//             default grid is skipped too).
//   --no-grid   skips the default grid (e.g. --variants at head dims this build does not route).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#ifdef ATTN_BENCH_FP32_VARIANTS
#include "bench/cuda/fp32_bench_variants.h"
#endif
#ifdef ATTN_BENCH_FP32_TILE_SWEEP
#include "bench/cuda/fp32_tile_sweep.h"
#endif
#include "kernels/attention_params.h"
#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/block_info.h"
#include "kernels/cuda/flash_fwd_dispatch.h"
#include "kernels/cuda/flash_fwd_fp32.h"
#include "kernels/cuda/flash_fwd_fp32_traits.h"

namespace attention::cuda::bench {
namespace {

bool Check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return true;
  std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(err));
  return false;
}

std::vector<std::string> Words(const std::string& text) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t comma = text.find(',', pos);
    out.push_back(text.substr(pos, comma - pos));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

std::vector<int> Ints(const std::string& text) {
  std::vector<int> out;
  for (const std::string& w : Words(text)) out.push_back(std::atoi(w.c_str()));
  return out;
}

struct Options {
  std::vector<std::string> precisions = {"full", "tf32", "bf16"};
  std::vector<int> hdims = {64, 128, 256};
  std::vector<int> causal = {0, 1};
  std::vector<int> seqlens = {512, 1024, 2048, 4096, 8192, 16384};
  int64_t tokens = 16384;
  int model_dim = 2048;
  std::string json;
  bool tiles = false;
  bool variants = false;
  bool check_only = false;
  bool no_grid = false;
};

bool ParsePrecision(const std::string& name, Precision& out) {
  if (name == "full") {
    out = Precision::kFull;
  } else if (name == "tf32") {
    out = Precision::kTF32;
  } else if (name == "bf16") {
    out = Precision::kBF16;
  } else {
    return false;
  }
  return true;
}

// Uniform values with variance 1 (never zeros: zeros can run faster than real data).
bool FillRandom(float* device, int64_t count, uint64_t seed) {
  std::vector<float> host(count);
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int64_t i = 0; i < count; ++i) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    const float u = static_cast<float>(state >> 40) / static_cast<float>(1ull << 24);
    host[i] = (2.f * u - 1.f) * 1.7320508f;
  }
  return Check(cudaMemcpy(device, host.data(), count * sizeof(float), cudaMemcpyHostToDevice),
               "cudaMemcpy");
}

// Median milliseconds of `launch` over enough repetitions for ~100 ms of work (at least 3).
template <typename Launch>
double MedianMs(const Launch& launch) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int i = 0; i < 2; ++i) launch();
  cudaEventRecord(start);
  launch();
  cudaEventRecord(stop);
  cudaEventSynchronize(stop);
  float first = 0.f;
  cudaEventElapsedTime(&first, start, stop);
  const int reps = std::clamp(static_cast<int>(100.f / std::max(first, 1e-3f)), 3, 100);
  std::vector<float> times(reps);
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(start);
    launch();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    cudaEventElapsedTime(&times[i], start, stop);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(times.begin(), times.end());
  return times[reps / 2];
}

struct Buffers {
  float *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr, *lse = nullptr;
  void* workspace = nullptr;
};

AttentionParams MakeParams(Precision precision, int batch, int seqlen, int heads, int head_dim,
                           bool causal, const Buffers& buf) {
  AttentionParams p;
  p.dtype = DType::kFloat32;
  p.precision = precision;
  p.batch = batch;
  p.seqlen_q = p.seqlen_k = seqlen;
  p.q_heads = p.kv_heads = heads;
  p.head_dim = head_dim;
  p.causal = causal;
  p.softmax_scale = 1.f / std::sqrt(static_cast<float>(head_dim));
  p.q = buf.q;
  p.k = buf.k;
  p.v = buf.v;
  p.o = buf.o;
  p.lse = buf.lse;
  SetContiguousStrides(p);
  return p;
}

// One launch at `p.precision`: FULL and TF32 on the float32 kernel itself (with the normalization
// RunAttention applies; RunAttention routes float32 requests to it only once kRouteFloat32Kernel
// is on), BF16 through RunAttention (conversion, 16-bit kernel, conversion back).
absl::Status Launch(const AttentionParams& p, void* workspace) {
  if (p.precision == Precision::kBF16) return RunAttention(p, workspace, nullptr);
  AttentionParams n = p;
  Normalize(n);
  ClampWindow(n.seqlen_q, n.seqlen_k, n.window_left, n.window_right);
  return DispatchFlashFwdFp32(n, nullptr);
}

double Tflops(int batch, int heads, int seqlen, int head_dim, bool causal, double ms) {
  const double flops = 4.0 * batch * heads * double(seqlen) * seqlen * head_dim / (causal ? 2 : 1);
  return flops / (ms * 1e-3) / 1e12;
}

#ifdef ATTN_BENCH_FP32_VARIANTS
// Copies `count` floats of o back to the host.
bool CopyOut(const float* device, int64_t count, std::vector<float>& host) {
  host.resize(count);
  return Check(cudaMemcpy(host.data(), device, count * sizeof(float), cudaMemcpyDeviceToHost),
               "cudaMemcpy");
}

// The code-shape variants beside the default (see --variants in the file comment), at each head
// dim of --hdim that has variants. Per cell: the reference (the default through the dispatch; where
// this build's dispatch lacks the bucket, the head dim's first variant), then every other variant
// of the head dim, each row with its ratio to the reference and how its o compares with the
// reference's (bitwise equal elements out of all, and the largest |difference| relative to
// max |o|).
int RunVariants(const Options& opt, const Buffers& buf, FILE* json) {
  int failures = 0;
  std::printf(
      "\n| kernel (FULL, plain) | d | causal | seqlen | ms | TFLOP/s | / reference | o |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  std::vector<float> ref;
  std::vector<float> out;
  for (int d : opt.hdims) {
    std::vector<const Fp32KernelVariant*> variants;
    for (const Fp32KernelVariant& v : Fp32KernelVariants()) {
      if (v.head_dim == d) variants.push_back(&v);
    }
    if (variants.empty()) continue;
    for (int c : opt.causal) {
      for (int n : opt.seqlens) {
        const int batch = static_cast<int>(std::max<int64_t>(1, opt.tokens / n));
        const int heads = opt.model_dim / d;
        const int64_t count = int64_t{batch} * n * heads * d;
        AttentionParams p = MakeParams(Precision::kFull, batch, n, heads, d, c != 0, buf);
        AttentionParams normalized = p;
        Normalize(normalized);
        ClampWindow(normalized.seqlen_q, normalized.seqlen_k, normalized.window_left,
                    normalized.window_right);
        // The reference: the dispatch's default (the same normalization as the variants), or
        // the first variant where the bucket is not compiled.
        // The dispatch runs head_dim d in the smallest compiled bucket >= d, which is the
        // variants' bucket only where the build compiles it.
        const bool dispatch = CompiledHeadDimBucket(d) == d;
        const Fp32KernelVariant* ref_variant = dispatch ? nullptr : variants.front();
        absl::Status status;
        cudaError_t err = cudaSuccess;
        const auto run_ref = [&] {
          if (dispatch) {
            status = Launch(p, nullptr);
          } else {
            err = ref_variant->run(normalized, nullptr);
          }
        };
        double base_ms = 0.0;
        if (opt.check_only) {
          run_ref();
        } else {
          base_ms = MedianMs(run_ref);
        }
        if (!status.ok() || !Check(err, "reference launch") ||
            !Check(cudaDeviceSynchronize(), "reference") || !CopyOut(buf.o, count, ref)) {
          std::fprintf(stderr, "reference d=%d causal=%d seqlen=%d: %s\n", d, c, n,
                       status.ToString().c_str());
          ++failures;
          continue;
        }
        float max_ref = 0.f;
        for (float x : ref) max_ref = std::max(max_ref, std::fabs(x));
        const double base_tf = opt.check_only ? 0.0 : Tflops(batch, heads, n, d, c != 0, base_ms);
        const std::string ref_label = dispatch ? "default" : ref_variant->label;
        std::printf("| %s | %d | %d | %d | %.3f | %.1f | 1.000 | reference |\n", ref_label.c_str(),
                    d, c, n, base_ms, base_tf);
        if (json != nullptr && !opt.check_only && !dispatch) {
          std::fprintf(json,
                       "{\"kind\": \"fp32_variants\", \"variant\": \"%s\", \"d\": %d, "
                       "\"causal\": %s, \"seqlen\": %d, \"ms\": %.4f, \"ours_tflops\": %.1f, "
                       "\"default_ms\": %.4f, \"default_tflops\": %.1f, \"o_ok\": true}\n",
                       ref_label.c_str(), d, c ? "true" : "false", n, base_ms, base_tf, base_ms,
                       base_tf);
        }
        for (const Fp32KernelVariant* v : variants) {
          if (v == ref_variant) continue;
          // Poison o so that a variant that skips a tile cannot pass on the reference's values.
          if (!Check(cudaMemset(buf.o, 0xff, count * sizeof(float)), "cudaMemset")) {
            return failures + 1;
          }
          const auto run = [&] { err = v->run(normalized, nullptr); };
          double ms = 0.0;
          if (opt.check_only) {
            run();
          } else {
            ms = MedianMs(run);
          }
          if (!Check(err, "variant launch") || !Check(cudaDeviceSynchronize(), "variant") ||
              !CopyOut(buf.o, count, out)) {
            ++failures;
            continue;
          }
          int64_t equal = 0;
          float max_diff = 0.f;
          for (int64_t i = 0; i < count; ++i) {
            const float diff = std::fabs(out[i] - ref[i]);
            if (std::memcmp(&out[i], &ref[i], sizeof(float)) == 0) {
              ++equal;
            } else {
              // NaN (an element never written) compares as the largest difference.
              max_diff = std::isnan(diff) ? INFINITY : std::max(max_diff, diff);
            }
          }
          // Both on the default's tiles: bitwise. Other tiles: both within FULL's
          // 1e-5 x max |o| of float64.
          const bool bitwise = v->same_tiles && (dispatch || ref_variant->same_tiles);
          const bool ok = bitwise ? equal == count : max_diff <= 2e-5f * max_ref;
          if (!ok) ++failures;
          const double tf = opt.check_only ? 0.0 : Tflops(batch, heads, n, d, c != 0, ms);
          std::printf("| %s | %d | %d | %d | %.3f | %.1f | %.3f | %s %lld/%lld, max diff %.2g |\n",
                      v->label.c_str(), d, c, n, ms, tf, opt.check_only ? 0.0 : base_ms / ms,
                      equal == count ? "identical" : (ok ? "close" : "DIFFERS"),
                      static_cast<long long>(equal), static_cast<long long>(count),
                      max_ref > 0.f ? max_diff / max_ref : max_diff);
          if (json != nullptr && !opt.check_only) {
            std::fprintf(json,
                         "{\"kind\": \"fp32_variants\", \"variant\": \"%s\", \"d\": %d, "
                         "\"causal\": %s, \"seqlen\": %d, \"ms\": %.4f, \"ours_tflops\": %.1f, "
                         "\"default_ms\": %.4f, \"default_tflops\": %.1f, \"o_ok\": %s}\n",
                         v->label.c_str(), d, c ? "true" : "false", n, ms, tf, base_ms, base_tf,
                         ok ? "true" : "false");
          }
          std::fflush(stdout);
        }
      }
    }
  }
  return failures;
}
#endif

#ifdef ATTN_BENCH_FP32_TILE_SWEEP
int RunTileSweep(const Options& opt, const Buffers& buf, FILE* json) {
  int failures = 0;
  std::printf("\n| tiles (FULL, plain) | d | causal | seqlen | ms | TFLOP/s |\n");
  std::printf("|---|---|---|---|---|---|\n");
  for (const Fp32TileVariant& tv : Fp32TileSweep()) {
    for (int c : {0, 1}) {
      for (int n : opt.seqlens) {
        const int batch = static_cast<int>(std::max<int64_t>(1, opt.tokens / n));
        const int heads = opt.model_dim / tv.head_dim;
        AttentionParams p = MakeParams(Precision::kFull, batch, n, heads, tv.head_dim, c != 0, buf);
        Normalize(p);
        ClampWindow(p.seqlen_q, p.seqlen_k, p.window_left, p.window_right);
        cudaError_t err = cudaSuccess;
        const double ms = MedianMs([&] { err = tv.run(p, nullptr); });
        if (!Check(err, "tile sweep launch") || !Check(cudaDeviceSynchronize(), "tile sweep")) {
          ++failures;
          continue;
        }
        const double tf = Tflops(batch, heads, n, tv.head_dim, c != 0, ms);
        std::printf("| %s | %d | %d | %d | %.3f | %.1f |\n", tv.label.c_str(), tv.head_dim, c, n,
                    ms, tf);
        if (json != nullptr) {
          std::fprintf(json,
                       "{\"kind\": \"fp32_tiles\", \"tiles\": \"%s\", \"d\": %d, \"causal\": %s, "
                       "\"seqlen\": %d, \"ms\": %.4f, \"ours_tflops\": %.1f}\n",
                       tv.label.c_str(), tv.head_dim, c ? "true" : "false", n, ms, tf);
        }
        std::fflush(stdout);
      }
    }
  }
  return failures;
}
#endif

int Run(const Options& opt, FILE* json) {
  const int64_t elems = opt.tokens * opt.model_dim;
  Buffers buf;
  for (float** ptr : {&buf.q, &buf.k, &buf.v, &buf.o}) {
    if (!Check(cudaMalloc(reinterpret_cast<void**>(ptr), elems * sizeof(float)), "cudaMalloc")) {
      return 1;
    }
  }
  const int max_heads = opt.model_dim / 8;
  if (!Check(cudaMalloc(reinterpret_cast<void**>(&buf.lse), opt.tokens * max_heads * sizeof(float)),
             "cudaMalloc")) {
    return 1;
  }
  // The BF16 level's workspace: bfloat16 copies of q, k, v and o, the same for every shape of the
  // grid (batch * seqlen and heads * head_dim are fixed).
  const size_t ws_bytes = WorkspaceBytes(MakeParams(
      Precision::kBF16, 1, static_cast<int>(opt.tokens), opt.model_dim / 64, 64, false, buf));
  if (!Check(cudaMalloc(&buf.workspace, ws_bytes), "cudaMalloc")) return 1;
  if (!FillRandom(buf.q, elems, 1) || !FillRandom(buf.k, elems, 2) ||
      !FillRandom(buf.v, elems, 3)) {
    return 1;
  }
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  std::printf("# device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  if (!opt.check_only) {
    // Half a second of work first: the GPU idles at a low clock and the first cells would
    // otherwise be timed while it ramps up. At the first head dim asked for, which this build
    // compiles (a pruned build may lack the others, and a failed launch would end the warm-up).
    const int d = opt.hdims.empty() ? 128 : opt.hdims.front();
    const int n = static_cast<int>(std::min<int64_t>(4096, opt.tokens));
    const AttentionParams p = MakeParams(Precision::kFull, static_cast<int>(opt.tokens / n), n,
                                         opt.model_dim / d, d, false, buf);
    const auto start = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - start < std::chrono::milliseconds(500)) {
      if (!Launch(p, nullptr).ok()) break;
      cudaDeviceSynchronize();
    }
  }
  std::printf(
      "| precision | d | causal | seqlen | batch | heads | ms | TFLOP/s | tiles (FULL/TF32) |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  int failures = 0;
  const bool grid = !opt.check_only && !opt.no_grid;
  for (const std::string& name : grid ? opt.precisions : std::vector<std::string>{}) {
    Precision precision;
    if (!ParsePrecision(name, precision)) {
      std::fprintf(stderr, "--precision: %s is not full, tf32 or bf16\n", name.c_str());
      return 2;
    }
    for (int d : opt.hdims) {
      const int bucket = d <= 32 ? 32 : (d + 31) / 32 * 32;
      const Fp32TileConfig t = DefaultFp32TileConfig(bucket);
      for (int c : opt.causal) {
        for (int n : opt.seqlens) {
          const int batch = static_cast<int>(std::max<int64_t>(1, opt.tokens / n));
          const int heads = opt.model_dim / d;
          const AttentionParams p = MakeParams(precision, batch, n, heads, d, c != 0, buf);
          absl::Status status;
          const double ms = MedianMs([&] { status = Launch(p, buf.workspace); });
          if (!status.ok() || !Check(cudaDeviceSynchronize(), "kernel")) {
            std::fprintf(stderr, "%s d=%d causal=%d seqlen=%d: %s\n", name.c_str(), d, c, n,
                         status.ToString().c_str());
            ++failures;
            continue;
          }
          const double tf = Tflops(batch, heads, n, d, c != 0, ms);
          std::printf("| %s | %d | %d | %d | %d | %d | %.3f | %.1f | %dx%d %dw %ds |\n",
                      name.c_str(), d, c, n, batch, heads, ms, tf, t.block_m, t.block_n, t.warps,
                      t.stages);
          if (json != nullptr) {
            std::fprintf(json,
                         "{\"kind\": \"fp32\", \"precision\": \"%s\", \"d\": %d, \"causal\": %s, "
                         "\"seqlen\": %d, \"batch\": %d, \"heads\": %d, \"ms\": %.4f, "
                         "\"ours_tflops\": %.1f}\n",
                         name.c_str(), d, c ? "true" : "false", n, batch, heads, ms, tf);
          }
          std::fflush(stdout);
        }
      }
    }
  }
#ifdef ATTN_BENCH_FP32_VARIANTS
  if (opt.variants) failures += RunVariants(opt, buf, json);
#else
  if (opt.variants) {
    std::fprintf(stderr, "--variants: configure with -DATTN_BENCH_FP32_VARIANTS=ON\n");
    ++failures;
  }
#endif
#ifdef ATTN_BENCH_FP32_TILE_SWEEP
  if (opt.tiles) failures += RunTileSweep(opt, buf, json);
#else
  if (opt.tiles) {
    std::fprintf(stderr, "--tiles: configure with -DATTN_BENCH_FP32_TILE_SWEEP=ON\n");
    ++failures;
  }
#endif
  for (float* ptr : {buf.q, buf.k, buf.v, buf.o, buf.lse}) cudaFree(ptr);
  cudaFree(buf.workspace);
  return failures == 0 ? 0 : 1;
}

int Main(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (arg == "--precision") {
      opt.precisions = Words(value());
    } else if (arg == "--hdim") {
      opt.hdims = Ints(value());
    } else if (arg == "--causal") {
      opt.causal = Ints(value());
    } else if (arg == "--seqlens") {
      opt.seqlens = Ints(value());
    } else if (arg == "--tokens") {
      opt.tokens = std::atoll(value().c_str());
    } else if (arg == "--model-dim") {
      opt.model_dim = std::atoi(value().c_str());
    } else if (arg == "--json") {
      opt.json = value();
    } else if (arg == "--tiles") {
      opt.tiles = true;
    } else if (arg == "--variants") {
      opt.variants = true;
    } else if (arg == "--check-only") {
      opt.check_only = true;
    } else if (arg == "--no-grid") {
      opt.no_grid = true;
    } else {
      std::fprintf(stderr, "unknown argument %s (see the header of fp32_bench.cc)\n", arg.c_str());
      return 2;
    }
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "fp32_bench: no CUDA device\n");
    return 77;
  }
  FILE* json = opt.json.empty() ? nullptr : std::fopen(opt.json.c_str(), "a");
  const int rc = Run(opt, json);
  if (json != nullptr) std::fclose(json);
  return rc;
}

}  // namespace
}  // namespace attention::cuda::bench

int main(int argc, char** argv) { return attention::cuda::bench::Main(argc, argv); }
