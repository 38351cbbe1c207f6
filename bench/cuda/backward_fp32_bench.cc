// backward_fp32_bench: speed of the float32 backward (kernels/cuda/flash_bwd_fp32.h, through
// RunAttentionBackward) on the backward grid of backward_bench (--tokens per launch split into
// sequences of each --seqlens, model_dim / head_dim heads, causal and not), with the bfloat16
// backward of the same shape timed in the same process as the reference point (when the build
// compiled bfloat16): float32 default dQ mode, float32 deterministic, bfloat16 default.
//
// Median of --repeats launches after one warm-up, CUDA events around RunAttentionBackward alone.
// TFLOP/s counts FlashAttention's convention: the backward is 2.5x the forward's 4 B H S^2 d,
// halved for causal. Inputs are random in [-1, 1], lse = log(seqlen) + 1 for every row (the
// kernels' work does not depend on the values).
//
// With --variants (a build with -DATTN_BENCH_BWD_FP32_VARIANTS=ON), instead: each alternative
// configuration of backward_fp32_variants.cu beside its bucket's default on the same problems
// (default dQ mode, causal and not, every --seqlens), with the largest difference of its dq, dk
// and dv from the default's over max |default| (WRONG above 1e-5).
//
// Usage: backward_fp32_bench [--hdim 64,128] [--seqlens 512,1024,2048,4096] [--tokens 16384]
//                            [--model_dim 2048] [--repeats 10] [--variants]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/block_info.h"
#include "kernels/cuda/flash_bwd_dispatch.h"
#include "kernels/cuda/flash_bwd_fp32.h"
#include "kernels/dtype.h"

#ifdef ATTN_BENCH_BWD_FP32_VARIANTS
#include "bench/cuda/backward_fp32_variants.h"
#endif

namespace attention::cuda {
namespace {

struct Options {
  std::vector<int> hdims = {64, 128};
  std::vector<int> seqlens = {512, 1024, 2048, 4096};
  int64_t tokens = 16384;
  int model_dim = 2048;
  int repeats = 10;
  bool variants = false;
};

std::vector<int> ParseList(const std::string& s) {
  std::vector<int> out;
  size_t pos = 0;
  while (pos <= s.size()) {
    const size_t comma = s.find(',', pos);
    const std::string item = s.substr(pos, comma == std::string::npos ? comma : comma - pos);
    if (!item.empty()) out.push_back(std::atoi(item.c_str()));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

bool ParseOptions(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--hdim" && has_value) {
      o.hdims = ParseList(argv[++i]);
    } else if (a == "--seqlens" && has_value) {
      o.seqlens = ParseList(argv[++i]);
    } else if (a == "--tokens" && has_value) {
      o.tokens = std::atoll(argv[++i]);
    } else if (a == "--model_dim" && has_value) {
      o.model_dim = std::atoi(argv[++i]);
    } else if (a == "--repeats" && has_value) {
      o.repeats = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--variants") {
      o.variants = true;
    } else {
      std::fprintf(stderr, "backward_fp32_bench: unknown or incomplete argument %s\n", a.c_str());
      return false;
    }
  }
  return true;
}

// Device buffers of one problem, freed on destruction.
struct Problem {
  AttentionBackwardParams p;
  void* workspace = nullptr;
  std::vector<void*> owned;
  ~Problem() {
    for (void* x : owned) cudaFree(x);
  }
  Problem() = default;
  Problem(const Problem&) = delete;
  Problem& operator=(const Problem&) = delete;

  void* Alloc(int64_t bytes) {
    void* d = nullptr;
    if (cudaMalloc(&d, static_cast<size_t>(std::max<int64_t>(bytes, 256))) != cudaSuccess) {
      return nullptr;
    }
    owned.push_back(d);
    return d;
  }
  // n random elements of `dtype` in [-1, 1].
  void* Random(int64_t n, std::mt19937& rng, DType dtype) {
    std::uniform_real_distribution<float> dist(-1.f, 1.f);
    const int64_t bytes = n * (dtype == DType::kFloat32 ? 4 : 2);
    std::vector<unsigned char> host(static_cast<size_t>(bytes));
    for (int64_t e = 0; e < n; ++e) {
      const float x = dist(rng);
      if (dtype == DType::kFloat32) {
        std::memcpy(host.data() + 4 * e, &x, 4);
      } else {
        const uint16_t h = FloatToBFloat16(x);
        std::memcpy(host.data() + 2 * e, &h, 2);
      }
    }
    void* d = Alloc(bytes);
    if (d != nullptr) cudaMemcpy(d, host.data(), host.size(), cudaMemcpyHostToDevice);
    return d;
  }
};

bool Build(Problem& pr, DType dtype, int batch, int seqlen, int heads, int head_dim, bool causal,
           bool deterministic) {
  std::mt19937 rng(7);
  AttentionBackwardParams& p = pr.p;
  p.kind = WorkKind::kBackward;
  p.dtype = dtype;
  p.head_dim = head_dim;
  p.q_heads = p.kv_heads = heads;
  p.softmax_scale = 1.f / std::sqrt(static_cast<float>(head_dim));
  p.causal = causal;
  p.deterministic = deterministic;
  Normalize(p);
  p.batch = batch;
  p.seqlen_q = p.seqlen_k = seqlen;
  SetContiguousStrides(p);
  const int64_t n = int64_t{batch} * seqlen * heads * head_dim;
  const int64_t bytes = n * (dtype == DType::kFloat32 ? 4 : 2);
  p.q = pr.Random(n, rng, dtype);
  p.k = pr.Random(n, rng, dtype);
  p.v = pr.Random(n, rng, dtype);
  p.o = pr.Random(n, rng, dtype);
  p.do_ = pr.Random(n, rng, dtype);
  p.dq = pr.Alloc(bytes);
  p.dk = pr.Alloc(bytes);
  p.dv = pr.Alloc(bytes);
  const int64_t rows = int64_t{batch} * heads * seqlen;
  std::vector<float> lse(static_cast<size_t>(rows), static_cast<float>(std::log(seqlen)) + 1.f);
  p.lse = static_cast<float*>(pr.Alloc(rows * 4));
  if (p.lse != nullptr) cudaMemcpy(p.lse, lse.data(), rows * 4, cudaMemcpyHostToDevice);
  pr.workspace = pr.Alloc(static_cast<int64_t>(BackwardWorkspaceBytes(p)));
  return p.q && p.k && p.v && p.o && p.do_ && p.dq && p.dk && p.dv && p.lse && pr.workspace;
}

// Median milliseconds of `launch` (one backward pass on the default stream), or -1 on an error
// (printed).
double TimeLaunch(const std::function<absl::Status()>& launch, int repeats) {
  const absl::Status warm = launch();
  if (!warm.ok() || cudaDeviceSynchronize() != cudaSuccess) {
    std::fprintf(stderr, "backward failed: %s %s\n", std::string(warm.message()).c_str(),
                 cudaGetErrorString(cudaGetLastError()));
    return -1;
  }
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<float> times(static_cast<size_t>(repeats));
  for (float& t : times) {
    cudaEventRecord(start);
    (void)launch();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    cudaEventElapsedTime(&t, start, stop);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// Median milliseconds of RunAttentionBackward on `pr`; -1 when the build has no kernel for it or
// a launch failed (printed).
double TimeBackward(const Problem& pr, int repeats) {
  if (!CheckBackwardLaunch(pr.p).ok()) return -1;
  return TimeLaunch([&pr] { return RunAttentionBackward(pr.p, pr.workspace, nullptr); }, repeats);
}

#ifdef ATTN_BENCH_BWD_FP32_VARIANTS
// dq, dk and dv of a float32 problem, concatenated.
std::vector<float> Gradients(const Problem& pr) {
  const int64_t n = int64_t{pr.p.batch} * pr.p.seqlen_q * pr.p.q_heads * pr.p.head_dim;
  std::vector<float> out(static_cast<size_t>(3 * n));
  cudaMemcpy(out.data(), pr.p.dq, n * 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(out.data() + n, pr.p.dk, n * 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(out.data() + 2 * n, pr.p.dv, n * 4, cudaMemcpyDeviceToHost);
  return out;
}

// max |got - want| / max |want|; infinity if got has a non-finite element.
double RelativeDifference(const std::vector<float>& got, const std::vector<float>& want) {
  double max_want = 0.0, max_diff = 0.0;
  for (size_t e = 0; e < want.size(); ++e) {
    if (!std::isfinite(got[e])) return INFINITY;
    max_want = std::max(max_want, std::abs(double{want[e]}));
    max_diff = std::max(max_diff, std::abs(double{got[e]} - want[e]));
  }
  return max_want > 0 ? max_diff / max_want : max_diff;
}

// backward_fp32_bench --variants: every configuration of BwdFp32Variants() on its bucket's
// problems, the default first, as DispatchFlashBwdFp32 launches them (the preprocess, then the
// configuration's kernels).
int RunVariants(const Options& o) {
  const std::vector<BwdFp32Variant> variants = BwdFp32Variants();
  std::printf("| d | seqlen | causal | configuration | ms | TFLOP/s | vs default | max diff |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  for (const BwdFp32Variant& def : variants) {
    if (!def.is_default) continue;
    const int d = def.head_dim;
    for (int n : o.seqlens) {
      for (bool causal : {false, true}) {
        const int batch = static_cast<int>(std::max<int64_t>(1, o.tokens / n));
        const int heads = std::max(1, o.model_dim / d);
        const double flop =
            2.5 * 4.0 * batch * heads * static_cast<double>(n) * n * d * (causal ? 0.5 : 1.0);
        Problem pr;
        if (!Build(pr, DType::kFloat32, batch, n, heads, d, causal, false)) continue;
        AttentionBackwardParams lp = pr.p;
        Normalize(lp);
        ClampWindow(lp.seqlen_q, lp.seqlen_k, lp.window_left, lp.window_right);
        lp.deterministic = true;  // the float32 layout: no dq_accum
        BwdParams bp = BindBackwardWorkspace(lp, pr.workspace);
        bp.deterministic = false;
        bp.dq_accum = nullptr;
        double default_ms = -1;
        std::vector<float> want;
        for (const BwdFp32Variant& v : variants) {
          if (v.head_dim != d || (&v != &def && v.is_default)) continue;
          if (&v != &def && want.empty()) continue;  // the default failed
          const auto launch = [&bp, &v]() -> absl::Status {
            cudaError_t err = RunBwdFp32Preprocess(bp, nullptr);
            if (err == cudaSuccess) err = v.run(bp, nullptr);
            if (err == cudaSuccess) return absl::OkStatus();
            return absl::InternalError(cudaGetErrorString(err));
          };
          // The default first (the variants are listed after it).
          if (&v == &def) {
            default_ms = TimeLaunch(launch, o.repeats);
            if (default_ms > 0) want = Gradients(pr);
            std::printf("| %d | %d | %s | %s (default) | %.3f | %.1f | 1.00 | 0 |\n", d, n,
                        causal ? "yes" : "no", v.name, default_ms,
                        default_ms > 0 ? flop / (default_ms * 1e-3) / 1e12 : 0.0);
            continue;
          }
          for (void* x : {bp.dq, bp.dk, bp.dv}) cudaMemset(x, 0xff, want.size() / 3 * 4);
          const double ms = TimeLaunch(launch, o.repeats);
          const double diff = ms > 0 ? RelativeDifference(Gradients(pr), want) : INFINITY;
          std::printf("| %d | %d | %s | %s | %.3f | %.1f | %.2f | %.1e%s |\n", d, n,
                      causal ? "yes" : "no", v.name, ms, ms > 0 ? flop / (ms * 1e-3) / 1e12 : 0.0,
                      ms > 0 ? default_ms / ms : 0.0, diff, diff > 1e-5 ? " WRONG" : "");
        }
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
#endif

int Run(const Options& o) {
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    std::fprintf(stderr, "backward_fp32_bench: no CUDA device\n");
    return 1;
  }
  std::printf("# backward_fp32_bench on %s, %lld tokens per launch, model dim %d\n\n", prop.name,
              static_cast<long long>(o.tokens), o.model_dim);
  if (o.variants) {
#ifdef ATTN_BENCH_BWD_FP32_VARIANTS
    return RunVariants(o);
#else
    std::fprintf(
        stderr, "--variants: not compiled in (configure with -DATTN_BENCH_BWD_FP32_VARIANTS=ON)\n");
    return 2;
#endif
  }
  std::printf(
      "| d | seqlen | causal | fp32 ms | fp32 TFLOP/s | fp32 det ms | fp32 det TFLOP/s "
      "| bf16 ms | bf16 TFLOP/s | fp32 / bf16 time |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  for (int d : o.hdims) {
    for (int n : o.seqlens) {
      for (bool causal : {false, true}) {
        const int batch = static_cast<int>(std::max<int64_t>(1, o.tokens / n));
        const int heads = std::max(1, o.model_dim / d);
        const double flop =
            2.5 * 4.0 * batch * heads * static_cast<double>(n) * n * d * (causal ? 0.5 : 1.0);
        double ms[3] = {-1, -1, -1};
        const DType dtypes[3] = {DType::kFloat32, DType::kFloat32, DType::kBFloat16};
        for (int c = 0; c < 3; ++c) {
          Problem pr;
          if (!Build(pr, dtypes[c], batch, n, heads, d, causal, c == 1)) {
            std::fprintf(stderr, "allocation failed (d %d, seqlen %d)\n", d, n);
            continue;
          }
          ms[c] = TimeBackward(pr, o.repeats);
        }
        const auto tflops = [&](double t) { return t > 0 ? flop / (t * 1e-3) / 1e12 : 0.0; };
        std::printf("| %d | %d | %s | %.3f | %.1f | %.3f | %.1f | %.3f | %.1f | %.2f |\n", d, n,
                    causal ? "yes" : "no", ms[0], tflops(ms[0]), ms[1], tflops(ms[1]), ms[2],
                    tflops(ms[2]), ms[0] > 0 && ms[2] > 0 ? ms[0] / ms[2] : 0.0);
        std::fflush(stdout);
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace attention::cuda

int main(int argc, char** argv) {
  attention::cuda::Options o;
  if (!attention::cuda::ParseOptions(argc, argv, o)) return 2;
  return attention::cuda::Run(o);
}
