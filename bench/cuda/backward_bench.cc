// backward_bench: TFLOP/s of the CUDA backward pass (RunAttentionBackward: preprocess, dK / dV
// kernel, dQ postprocess or the deterministic dQ kernel) on the standard grid, the shapes of the
// peer script shared/peers/sdpa_peer.py --backward: bf16 (--dtype fp16 too), head_dim 64 / 128 /
// 256, causal 0 / 1, seqlen 512 .. 16k at 16k tokens per launch (batch = tokens / seqlen) and a
// 2048 model dim (heads = 2048 / head_dim, as many KV heads). FLOPs: FlashAttention's convention,
// 2.5 x the forward's 4 * batch * heads * seqlen^2 * head_dim, halved when causal. Time: median
// of --repeats launches after one warm-up, CUDA events around RunAttentionBackward alone.
//
// Prints a markdown table (default dQ by atomics and the deterministic mode side by side) and,
// with --json FILE, one JSON line per cell in the peer's keys ({"kind": "bwd", "dtype", "d",
// "causal", "seqlen", "batch", "heads", "ours_tflops", "ours_det_tflops"}), which
// backward_compare.py joins with the peer's lines. Last, the peak device memory of one 64k-token
// sequence (bf16, d = 128, 16 heads, causal): inputs, outputs and workspace, no seqlen^2 term.
//
// Usage: backward_bench [--dtype bf16|fp16] [--hdim 64,128,256] [--seqlens 512,...]
//                       [--tokens 16384] [--model_dim 2048] [--repeats 20] [--json out.jsonl]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/attention_cuda.h"
#include "kernels/dtype.h"

namespace attention::cuda::bench {
namespace {

struct Options {
  DType dtype = DType::kBFloat16;
  std::vector<int> hdims = {64, 128, 256};
  std::vector<int> seqlens = {512, 1024, 2048, 4096, 8192, 16384};
  int64_t tokens = 16384;
  int model_dim = 2048;
  int repeats = 20;
  std::string json;
};

std::vector<int> Ints(const char* text) {
  std::vector<int> out;
  for (const char* p = text; *p != '\0';) {
    out.push_back(std::atoi(p));
    const char* comma = std::strchr(p, ',');
    if (comma == nullptr) break;
    p = comma + 1;
  }
  return out;
}

bool Parse(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--dtype" && has_value) {
      const std::string v = argv[++i];
      o.dtype = v == "fp16" ? DType::kFloat16 : DType::kBFloat16;
    } else if (a == "--hdim" && has_value) {
      o.hdims = Ints(argv[++i]);
    } else if (a == "--seqlens" && has_value) {
      o.seqlens = Ints(argv[++i]);
    } else if (a == "--tokens" && has_value) {
      o.tokens = std::atoll(argv[++i]);
    } else if (a == "--model_dim" && has_value) {
      o.model_dim = std::atoi(argv[++i]);
    } else if (a == "--repeats" && has_value) {
      o.repeats = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--json" && has_value) {
      o.json = argv[++i];
    } else {
      std::fprintf(stderr, "unknown or incomplete argument %s\n", a.c_str());
      return false;
    }
  }
  return true;
}

// Device buffers of one backward launch, filled with random 16-bit values (lse: plausible values,
// the kernels' time does not depend on them).
struct Problem {
  AttentionBackwardParams p;
  std::vector<void*> owned;
  void* workspace = nullptr;
  size_t bytes = 0;  // everything allocated

  ~Problem() {
    for (void* x : owned) cudaFree(x);
  }
  void* Alloc(size_t n) {
    void* d = nullptr;
    if (cudaMalloc(&d, n) != cudaSuccess) return nullptr;
    owned.push_back(d);
    bytes += n;
    return d;
  }
  void* Random16(int64_t n, std::mt19937& rng, DType dtype) {
    std::vector<uint16_t> host(static_cast<size_t>(n));
    std::uniform_real_distribution<float> dist(-1.f, 1.f);
    for (uint16_t& h : host) {
      h = dtype == DType::kFloat16 ? FloatToHalf(dist(rng)) : FloatToBFloat16(dist(rng));
    }
    void* d = Alloc(static_cast<size_t>(n) * 2);
    if (d != nullptr) cudaMemcpy(d, host.data(), host.size() * 2, cudaMemcpyHostToDevice);
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
  p.q = pr.Random16(n, rng, dtype);
  p.k = pr.Random16(n, rng, dtype);
  p.v = pr.Random16(n, rng, dtype);
  p.o = pr.Random16(n, rng, dtype);
  p.do_ = pr.Random16(n, rng, dtype);
  p.dq = pr.Alloc(n * 2);
  p.dk = pr.Alloc(n * 2);
  p.dv = pr.Alloc(n * 2);
  const int64_t rows = int64_t{batch} * heads * seqlen;
  std::vector<float> lse(static_cast<size_t>(rows), static_cast<float>(std::log(seqlen)) + 1.f);
  p.lse = static_cast<float*>(pr.Alloc(rows * 4));
  if (p.lse != nullptr) cudaMemcpy(p.lse, lse.data(), rows * 4, cudaMemcpyHostToDevice);
  pr.workspace = pr.Alloc(std::max<size_t>(BackwardWorkspaceBytes(p), 256));
  return p.q && p.k && p.v && p.o && p.do_ && p.dq && p.dk && p.dv && p.lse && pr.workspace;
}

// Median milliseconds of one backward launch, or -1 on an error (printed).
double TimeBackward(const Problem& pr, int repeats) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  const absl::Status warm = RunAttentionBackward(pr.p, pr.workspace, nullptr);
  if (!warm.ok() || cudaDeviceSynchronize() != cudaSuccess) {
    std::fprintf(stderr, "backward failed: %s %s\n", std::string(warm.message()).c_str(),
                 cudaGetErrorString(cudaGetLastError()));
    return -1;
  }
  std::vector<float> times(static_cast<size_t>(repeats));
  for (float& t : times) {
    cudaEventRecord(start);
    (void)RunAttentionBackward(pr.p, pr.workspace, nullptr);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    cudaEventElapsedTime(&t, start, stop);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

int Main(int argc, char** argv) {
  Options o;
  if (!Parse(argc, argv, o)) return 2;
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("backward_bench: no CUDA device\n");
    return 77;
  }
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  const char* dtype_name = o.dtype == DType::kFloat16 ? "fp16" : "bf16";
  std::printf("# backward_bench on %s, %s, %lld tokens per launch, model dim %d\n\n", prop.name,
              dtype_name, static_cast<long long>(o.tokens), o.model_dim);
  std::printf("| d | causal | seqlen | batch | heads | ms | TFLOP/s | det ms | det TFLOP/s |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  FILE* json = o.json.empty() ? nullptr : std::fopen(o.json.c_str(), "w");
  for (int d : o.hdims) {
    for (bool causal : {false, true}) {
      for (int n : o.seqlens) {
        const int batch = static_cast<int>(std::max<int64_t>(1, o.tokens / n));
        const int heads = o.model_dim / d;
        const double flops = 2.5 * 4.0 * batch * heads * double(n) * n * d / (causal ? 2 : 1);
        double ms[2] = {-1, -1};
        for (int det = 0; det < 2; ++det) {
          Problem pr;
          if (!Build(pr, o.dtype, batch, n, heads, d, causal, det == 1)) {
            std::fprintf(stderr, "allocation failed (d %d, seqlen %d)\n", d, n);
            continue;
          }
          ms[det] = TimeBackward(pr, o.repeats);
        }
        const auto tflops = [&](double t) { return t > 0 ? flops / t / 1e9 : 0.0; };
        std::printf("| %d | %d | %d | %d | %d | %.3f | %.1f | %.3f | %.1f |\n", d, causal ? 1 : 0,
                    n, batch, heads, ms[0], tflops(ms[0]), ms[1], tflops(ms[1]));
        std::fflush(stdout);
        if (json != nullptr) {
          std::fprintf(json,
                       "{\"kind\": \"bwd\", \"dtype\": \"%s\", \"d\": %d, \"causal\": %s, "
                       "\"seqlen\": %d, \"batch\": %d, \"heads\": %d, \"ours_tflops\": %.1f, "
                       "\"ours_det_tflops\": %.1f, \"ours_ms\": %.4f, \"ours_det_ms\": %.4f}\n",
                       dtype_name, d, causal ? "true" : "false", n, batch, heads, tflops(ms[0]),
                       tflops(ms[1]), ms[0], ms[1]);
        }
      }
    }
  }
  if (json != nullptr) std::fclose(json);

  // Peak device memory of one 64k-token causal sequence: what the launch allocates (inputs,
  // outputs, workspace) and the device's own peak measured around it.
  {
    constexpr int kSeq = 65536;
    constexpr int kHeads = 16;
    constexpr int kDim = 128;
    size_t free0 = 0, total = 0;
    cudaMemGetInfo(&free0, &total);
    Problem pr;
    if (Build(pr, o.dtype, 1, kSeq, kHeads, kDim, true, false)) {
      const double ms = TimeBackward(pr, 3);
      size_t free1 = 0;
      cudaMemGetInfo(&free1, &total);
      const double flops = 2.5 * 4.0 * kHeads * double(kSeq) * kSeq * kDim / 2;
      std::printf(
          "\n64k-token sequence (%s, d %d, %d heads, causal): %.1f ms, %.1f TFLOP/s; "
          "allocated %.1f MiB (of which workspace %.1f MiB), device memory in use "
          "%.1f MiB more than before\n",
          dtype_name, kDim, kHeads, ms, ms > 0 ? flops / ms / 1e9 : 0.0, pr.bytes / 1048576.0,
          BackwardWorkspaceBytes(pr.p) / 1048576.0, (double(free0) - double(free1)) / 1048576.0);
    }
  }
  return 0;
}

}  // namespace
}  // namespace attention::cuda::bench

int main(int argc, char** argv) { return attention::cuda::bench::Main(argc, argv); }
