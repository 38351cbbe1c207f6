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
// With --sm90, each cell also times the two dK / dV kernels side by side in the default dQ mode,
// whatever the server's route: the mma.sync kernel ("sm80") and the Hopper wgmma kernel ("sm90",
// on a compute capability 9.0 device in a build with sm_90a, head dims 64, 128 and 256; "-"
// where it does not cover the cell), on one problem, with the largest difference of the Hopper
// kernel's dq, dk and dv from the mma.sync kernel's over max |sm80| (above 2e-2 marked WRONG).
// The JSON lines gain "sm80_tflops", "sm90_tflops", "sm80_ms", "sm90_ms" and "sm90_max_rel_diff";
// "ours_tflops" stays the routed kernel's.
//
// With --sweep (a build with -DATTN_BENCH_BWD_TILE_SWEEP=ON), instead: the dK / dV kernel's
// candidate tile configurations (bench/cuda/backward_tile_sweep.cu; bf16, dense variant, head
// dims 64 and 128 of --hdim) on the same shapes, one table per shape (config, ms and TFLOP/s with
// dQ by atomics and deterministic), the default marked *. Each candidate's dq, dk and dv are
// first compared with the default's on the shape (causal, the first seqlen): the largest
// difference over max |default| is printed, and a candidate above 2e-2 is marked WRONG and
// should not be chosen. With --json, one line per (shape, candidate) ({"kind": "bwd_sweep", ...}).
// Candidates of the Hopper dK / dV kernel ("sm90 ...", in a build with sm_90a) run the default
// dQ mode only (det columns -1).
//
// With --sm90-variants (a build with -DATTN_BENCH_BWD_SM90_VARIANTS=ON, sm_90a and bf16),
// instead: the Hopper kernel's alternative configurations (bench/cuda/backward_sm90_variants.cu;
// bf16, dense variant, default dQ mode; bucket 256's split kernel) on the same shapes, each
// beside the mma.sync kernel on the same problem, with its largest difference from the mma.sync
// kernel's gradients (WRONG above 2e-2); the default marked *. With --json, one line per (shape,
// configuration) ({"kind": "bwd_sm90_variant", ...}). --variants times only the configurations
// named (comma-separated, as printed: "split serial,split bulk"), the default always (and once
// more after the others, "again", to show the drift between two timings); --causal
// 0 or 1 only the non-causal or causal shapes (both by default).
//
// Usage: backward_bench [--dtype bf16|fp16] [--hdim 64,128,256] [--seqlens 512,...]
//                       [--tokens 16384] [--model_dim 2048] [--repeats 20] [--json out.jsonl]
//                       [--sm90] [--sweep] [--sm90-variants [--variants a,b] [--causal 0|1]]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
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
#include "kernels/dtype.h"
#ifdef ATTN_BENCH_BWD_TILE_SWEEP
#include "bench/cuda/backward_tile_sweep.h"
#endif
#ifdef ATTN_BENCH_BWD_SM90_VARIANTS
#include "bench/cuda/backward_sm90_variants.h"
#endif

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
  bool sweep = false;
  bool sm90 = false;
  bool sm90_variants = false;
  std::vector<std::string> variants;  // --variants: names to time (all when empty)
  int causal = -1;                    // --causal: 0 or 1 only (-1: both)
};

std::vector<std::string> Names(const char* text) {
  std::vector<std::string> out;
  for (const char* p = text;;) {
    const char* comma = std::strchr(p, ',');
    out.emplace_back(p, comma == nullptr ? std::strlen(p) : static_cast<size_t>(comma - p));
    if (comma == nullptr) break;
    p = comma + 1;
  }
  return out;
}

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
    } else if (a == "--sweep") {
      o.sweep = true;
    } else if (a == "--sm90") {
      o.sm90 = true;
    } else if (a == "--sm90-variants") {
      o.sm90_variants = true;
    } else if (a == "--variants" && has_value) {
      o.variants = Names(argv[++i]);
    } else if (a == "--causal" && has_value) {
      o.causal = std::atoi(argv[++i]) != 0 ? 1 : 0;
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

// Median milliseconds of `launch` (one backward pass on the default stream), or -1 on an error
// (printed).
double TimeLaunch(const std::function<absl::Status()>& launch, int repeats) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  const absl::Status warm = launch();
  if (!warm.ok() || cudaDeviceSynchronize() != cudaSuccess) {
    std::fprintf(stderr, "backward failed: %s %s\n", std::string(warm.message()).c_str(),
                 cudaGetErrorString(cudaGetLastError()));
    return -1;
  }
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

// Median milliseconds of RunAttentionBackward on `pr`, or -1 on an error.
double TimeBackward(const Problem& pr, int repeats) {
  return TimeLaunch([&pr] { return RunAttentionBackward(pr.p, pr.workspace, nullptr); }, repeats);
}

// A kernel whose dq, dk and dv differ from the reference kernel's by more than this over
// max |reference| is marked WRONG (bfloat16 roundings of P and dS stay well below it).
constexpr double kWrong = 2e-2;

// dq, dk and dv of `pr` as float, concatenated.
std::vector<float> Gradients(const Problem& pr) {
  const AttentionBackwardParams& p = pr.p;
  const int64_t n = int64_t{p.batch} * p.seqlen_q * p.q_heads * p.head_dim;
  std::vector<uint16_t> raw(static_cast<size_t>(3 * n));
  cudaMemcpy(raw.data(), p.dq, n * 2, cudaMemcpyDeviceToHost);
  cudaMemcpy(raw.data() + n, p.dk, n * 2, cudaMemcpyDeviceToHost);
  cudaMemcpy(raw.data() + 2 * n, p.dv, n * 2, cudaMemcpyDeviceToHost);
  std::vector<float> out(raw.size());
  for (size_t e = 0; e < raw.size(); ++e) {
    out[e] = p.dtype == DType::kFloat16 ? HalfToFloat(raw[e]) : BFloat16ToFloat(raw[e]);
  }
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

// `pr`'s parameters as RunAttentionBackward hands them to DispatchFlashBwd (normalized, window
// clamped; pr.p is checked by the first RunAttentionBackward of TimeBackward or the caller).
AttentionBackwardParams Dispatched(const Problem& pr) {
  AttentionBackwardParams p = pr.p;
  Normalize(p);
  ClampWindow(p.seqlen_q, p.seqlen_k, p.window_left, p.window_right);
  return p;
}

// The dK / dV kernels side by side on one problem (default dQ mode): median milliseconds of the
// whole pass with each (-1 where the family does not cover the problem or a launch failed) and
// the Hopper kernel's largest difference from the mma.sync kernel's gradients.
struct FamilyTimes {
  double sm80_ms = -1, sm90_ms = -1;
  double sm90_diff = -1;
};

FamilyTimes TimeFamilies(const Problem& pr, int repeats) {
  FamilyTimes out;
  if (!CheckBackwardLaunch(pr.p).ok()) return out;
  const AttentionBackwardParams p = Dispatched(pr);
  const auto run = [&](BwdKernelFamily family) {
    return [&p, &pr, family] { return DispatchFlashBwd(p, pr.workspace, nullptr, family); };
  };
  out.sm80_ms = TimeLaunch(run(BwdKernelFamily::kSm80), repeats);
  if (SelectBackwardKernelFamily(p, BwdKernelFamily::kSm90) != BwdKernelFamily::kSm90) return out;
  const std::vector<float> want = out.sm80_ms > 0 ? Gradients(pr) : std::vector<float>{};
  for (void* x : {p.dq, p.dk, p.dv}) {
    cudaMemset(x, 0xff, want.size() / 3 * 2);  // NaN: unwritten elements show
  }
  out.sm90_ms = TimeLaunch(run(BwdKernelFamily::kSm90), repeats);
  if (out.sm80_ms > 0 && out.sm90_ms > 0) out.sm90_diff = RelativeDifference(Gradients(pr), want);
  return out;
}

#ifdef ATTN_BENCH_BWD_SM90_VARIANTS
// backward_bench --sm90-variants: every configuration of BwdSm90Variants() for the head dims of
// o.hdims on the standard shapes (bf16, dense, default dQ mode), beside the mma.sync kernel on
// the same problem: one row per (shape, configuration) with its time and its largest difference
// from the mma.sync kernel's gradients (WRONG above kWrong).
int RunSm90Variants(const Options& o) {
  FILE* json = o.json.empty() ? nullptr : std::fopen(o.json.c_str(), "w");
  std::printf(
      "| d | causal | seqlen | sm80 TFLOP/s | config | ms | TFLOP/s | / sm80 | max diff |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (int d : o.hdims) {
    std::vector<const BwdSm90Variant*> variants;
    for (const BwdSm90Variant& v : BwdSm90Variants()) {
      const bool named =
          o.variants.empty() || v.is_default ||
          std::find(o.variants.begin(), o.variants.end(), v.name) != o.variants.end();
      if (v.head_dim == d && named) variants.push_back(&v);
    }
    if (variants.empty()) continue;
    for (bool causal : {false, true}) {
      if (o.causal >= 0 && causal != (o.causal == 1)) continue;
      for (int n : o.seqlens) {
        const int batch = static_cast<int>(std::max<int64_t>(1, o.tokens / n));
        const int heads = o.model_dim / d;
        const double flops = 2.5 * 4.0 * batch * heads * double(n) * n * d / (causal ? 2 : 1);
        const auto tflops = [flops](double ms) { return ms > 0 ? flops / (ms * 1e9) : 0.0; };
        Problem pr;
        if (!Build(pr, DType::kBFloat16, batch, n, heads, d, causal, false) ||
            !CheckBackwardLaunch(pr.p).ok()) {
          std::fprintf(stderr, "d %d seqlen %d: problem not built\n", d, n);
          continue;
        }
        const AttentionBackwardParams p = Dispatched(pr);
        if (SelectBackwardKernelFamily(p, BwdKernelFamily::kSm90) != BwdKernelFamily::kSm90) {
          std::fprintf(stderr, "the Hopper kernel does not run on this device / build\n");
          if (json != nullptr) std::fclose(json);
          return 77;
        }
        const double sm80_ms = TimeLaunch(
            [&] { return DispatchFlashBwd(p, pr.workspace, nullptr, BwdKernelFamily::kSm80); },
            o.repeats);
        const std::vector<float> want = Gradients(pr);
        // The default once more after the others ("again"), so that a variant's difference from
        // it reads against the drift between two timings of one configuration.
        std::vector<const BwdSm90Variant*> runs = variants;
        for (const BwdSm90Variant* v : variants) {
          if (v->is_default && variants.size() > 1) runs.push_back(v);
        }
        for (size_t k = 0; k < runs.size(); ++k) {
          const BwdSm90Variant* v = runs[k];
          const char* again = k >= variants.size() ? " again" : "";
          for (void* x : {p.dq, p.dk, p.dv}) {
            cudaMemset(x, 0xff, want.size() / 3 * 2);  // NaN: unwritten elements show
          }
          const double ms = TimeLaunch(
              [&] {
                const cudaError_t err = v->run(p, pr.workspace, nullptr);
                return err == cudaSuccess ? absl::OkStatus()
                                          : absl::InternalError(cudaGetErrorString(err));
              },
              o.repeats);
          const double diff = ms > 0 ? RelativeDifference(Gradients(pr), want) : INFINITY;
          std::printf("| %d | %d | %d | %.1f | %s%s%s | %.3f | %.1f | %.2f | %.1e%s |\n", d,
                      causal ? 1 : 0, n, tflops(sm80_ms), v->name, v->is_default ? " *" : "", again,
                      ms, tflops(ms), ms > 0 ? sm80_ms / ms : 0.0, diff,
                      diff > kWrong ? " WRONG" : "");
          if (json != nullptr) {
            std::fprintf(json,
                         "{\"kind\": \"bwd_sm90_variant\", \"dtype\": \"bf16\", \"d\": %d, "
                         "\"causal\": %d, \"seqlen\": %d, \"batch\": %d, \"heads\": %d, "
                         "\"config\": \"%s%s\", \"default\": %s, \"ms\": %.4f, "
                         "\"tflops\": %.1f, \"sm80_tflops\": %.1f, \"max_rel_diff\": %.3e}\n",
                         d, causal ? 1 : 0, n, batch, heads, v->name, again,
                         v->is_default ? "true" : "false", ms, tflops(ms), tflops(sm80_ms), diff);
          }
        }
        std::fflush(stdout);
      }
    }
  }
  if (json != nullptr) std::fclose(json);
  return 0;
}
#endif  // ATTN_BENCH_BWD_SM90_VARIANTS

#ifdef ATTN_BENCH_BWD_TILE_SWEEP
// backward_bench --sweep: every candidate of BackwardTileSweep() for the head dims of o.hdims on
// the standard shapes, both dQ modes (bfloat16 only: the candidates are compiled for it).
int RunSweep(const Options& o) {
  FILE* json = o.json.empty() ? nullptr : std::fopen(o.json.c_str(), "w");
  const std::vector<BwdTileCandidate>& sweep = BackwardTileSweep();
  for (int d : o.hdims) {
    std::vector<const BwdTileCandidate*> candidates;
    for (const BwdTileCandidate& c : sweep) {
      if (c.head_dim == d) candidates.push_back(&c);
    }
    if (candidates.empty()) {
      std::printf("(no sweep candidates for head_dim %d)\n\n", d);
      continue;
    }
    // Each candidate against the default path (RunAttentionBackward) on the causal shape of
    // the first seqlen, in both modes: the worse of the two.
    std::vector<double> diff(candidates.size(), 0.0);
    {
      const int n = o.seqlens.front();
      const int batch = static_cast<int>(std::max<int64_t>(1, o.tokens / n));
      for (int det = 0; det < 2; ++det) {
        Problem pr;
        if (!Build(pr, DType::kBFloat16, batch, n, o.model_dim / d, d, true, det == 1)) continue;
        if (!RunAttentionBackward(pr.p, pr.workspace, nullptr).ok()) continue;
        const std::vector<float> want = Gradients(pr);
        const AttentionBackwardParams p = Dispatched(pr);
        for (size_t c = 0; c < candidates.size(); ++c) {
          if (det == 1 && !candidates[c]->deterministic) continue;
          for (void* out : {p.dq, p.dk, p.dv}) {
            cudaMemset(out, 0xff, want.size() / 3 * 2);  // NaN: unwritten elements show
          }
          const cudaError_t err = candidates[c]->run(p, pr.workspace, nullptr);
          const double rel = err == cudaSuccess && cudaDeviceSynchronize() == cudaSuccess
                                 ? RelativeDifference(Gradients(pr), want)
                                 : INFINITY;
          diff[c] = std::max(diff[c], rel);
        }
      }
    }
    for (bool causal : {false, true}) {
      for (int n : o.seqlens) {
        const int batch = static_cast<int>(std::max<int64_t>(1, o.tokens / n));
        const int heads = o.model_dim / d;
        const double flops = 2.5 * 4.0 * batch * heads * double(n) * n * d / (causal ? 2 : 1);
        std::printf("## bf16 d %d causal %d seqlen %d batch %d heads %d\n\n", d, causal ? 1 : 0, n,
                    batch, heads);
        std::printf("| config | ms | TFLOP/s | det ms | det TFLOP/s | max diff vs default |\n");
        std::printf("|---|---|---|---|---|---|\n");
        // ms[c][det]: one problem per dQ mode, every candidate on it.
        std::vector<std::array<double, 2>> times(candidates.size(), {-1.0, -1.0});
        for (int det = 0; det < 2; ++det) {
          Problem pr;
          if (!Build(pr, DType::kBFloat16, batch, n, heads, d, causal, det == 1)) {
            std::fprintf(stderr, "allocation failed (d %d, seqlen %d)\n", d, n);
            continue;
          }
          const AttentionBackwardParams p = Dispatched(pr);
          for (size_t c = 0; c < candidates.size(); ++c) {
            const BwdTileCandidate& cand = *candidates[c];
            if (det == 1 && !cand.deterministic) continue;
            times[c][det] = TimeLaunch(
                [&] {
                  const cudaError_t err = cand.run(p, pr.workspace, nullptr);
                  return err == cudaSuccess ? absl::OkStatus()
                                            : absl::InternalError(cudaGetErrorString(err));
                },
                o.repeats);
          }
        }
        for (size_t c = 0; c < candidates.size(); ++c) {
          const double* ms = times[c].data();
          const auto tflops = [&](double t) { return t > 0 ? flops / t / 1e9 : 0.0; };
          std::printf("| %s%s | %.3f | %.1f | %.3f | %.1f | %.1e%s |\n",
                      candidates[c]->label.c_str(), candidates[c]->is_default ? " *" : "", ms[0],
                      tflops(ms[0]), ms[1], tflops(ms[1]), diff[c],
                      diff[c] > kWrong ? " WRONG" : "");
          std::fflush(stdout);
          if (json != nullptr) {
            std::fprintf(json,
                         "{\"kind\": \"bwd_sweep\", \"dtype\": \"bf16\", \"d\": %d, "
                         "\"causal\": %s, \"seqlen\": %d, \"batch\": %d, \"heads\": %d, "
                         "\"config\": \"%s\", \"default\": %s, \"ours_tflops\": %.1f, "
                         "\"ours_det_tflops\": %.1f, \"ours_ms\": %.4f, \"ours_det_ms\": %.4f, "
                         "\"max_rel_diff\": %.3e}\n",
                         d, causal ? "true" : "false", n, batch, heads,
                         candidates[c]->label.c_str(), candidates[c]->is_default ? "true" : "false",
                         tflops(ms[0]), tflops(ms[1]), ms[0], ms[1], diff[c]);
          }
        }
        std::printf("\n");
      }
    }
  }
  if (json != nullptr) std::fclose(json);
  return 0;
}
#endif  // ATTN_BENCH_BWD_TILE_SWEEP

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
  if (o.sweep) {
#ifdef ATTN_BENCH_BWD_TILE_SWEEP
    std::printf("# backward_bench --sweep on %s, bf16, %lld tokens per launch, model dim %d\n\n",
                prop.name, static_cast<long long>(o.tokens), o.model_dim);
    return RunSweep(o);
#else
    std::fprintf(stderr,
                 "--sweep: not compiled in (configure with -DATTN_BENCH_BWD_TILE_SWEEP=ON)\n");
    return 2;
#endif
  }
  if (o.sm90_variants) {
#ifdef ATTN_BENCH_BWD_SM90_VARIANTS
    std::printf(
        "# backward_bench --sm90-variants on %s, bf16, %lld tokens per launch, model dim %d\n\n",
        prop.name, static_cast<long long>(o.tokens), o.model_dim);
    return RunSm90Variants(o);
#else
    std::fprintf(stderr,
                 "--sm90-variants: not compiled in (configure with "
                 "-DATTN_BENCH_BWD_SM90_VARIANTS=ON)\n");
    return 2;
#endif
  }
  std::printf("# backward_bench on %s, %s, %lld tokens per launch, model dim %d\n\n", prop.name,
              dtype_name, static_cast<long long>(o.tokens), o.model_dim);
  if (o.sm90) {
    std::printf(
        "| d | causal | seqlen | batch | heads | sm80 ms | sm80 TFLOP/s | sm90 ms | sm90 TFLOP/s "
        "| sm90 / sm80 | sm90 max diff | det ms | det TFLOP/s |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  } else {
    std::printf("| d | causal | seqlen | batch | heads | ms | TFLOP/s | det ms | det TFLOP/s |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|\n");
  }
  FILE* json = o.json.empty() ? nullptr : std::fopen(o.json.c_str(), "w");
  for (int d : o.hdims) {
    for (bool causal : {false, true}) {
      for (int n : o.seqlens) {
        const int batch = static_cast<int>(std::max<int64_t>(1, o.tokens / n));
        const int heads = o.model_dim / d;
        const double flops = 2.5 * 4.0 * batch * heads * double(n) * n * d / (causal ? 2 : 1);
        double ms[2] = {-1, -1};
        FamilyTimes fam;
        BwdKernelFamily routed = BwdKernelFamily::kSm80;
        for (int det = 0; det < 2; ++det) {
          Problem pr;
          if (!Build(pr, o.dtype, batch, n, heads, d, causal, det == 1)) {
            std::fprintf(stderr, "allocation failed (d %d, seqlen %d)\n", d, n);
            continue;
          }
          if (det == 0 && o.sm90) {
            fam = TimeFamilies(pr, o.repeats);
            routed = SelectBackwardKernelFamily(pr.p);
            ms[0] = routed == BwdKernelFamily::kSm90 ? fam.sm90_ms : fam.sm80_ms;
          } else {
            ms[det] = TimeBackward(pr, o.repeats);
          }
        }
        const auto tflops = [&](double t) { return t > 0 ? flops / t / 1e9 : 0.0; };
        if (o.sm90) {
          char sm90[64] = "- | -";
          char ratio[32] = "-";
          char diff[48] = "-";
          if (fam.sm90_ms > 0) {
            std::snprintf(sm90, sizeof(sm90), "%.3f | %.1f", fam.sm90_ms, tflops(fam.sm90_ms));
            if (fam.sm80_ms > 0) {
              std::snprintf(ratio, sizeof(ratio), "%.2f", fam.sm80_ms / fam.sm90_ms);
            }
          }
          if (fam.sm90_diff >= 0) {
            std::snprintf(diff, sizeof(diff), "%.1e%s", fam.sm90_diff,
                          fam.sm90_diff > kWrong ? " WRONG" : "");
          }
          std::printf("| %d | %d | %d | %d | %d | %.3f | %.1f | %s | %s | %s | %.3f | %.1f |\n", d,
                      causal ? 1 : 0, n, batch, heads, fam.sm80_ms, tflops(fam.sm80_ms), sm90,
                      ratio, diff, ms[1], tflops(ms[1]));
        } else {
          std::printf("| %d | %d | %d | %d | %d | %.3f | %.1f | %.3f | %.1f |\n", d, causal ? 1 : 0,
                      n, batch, heads, ms[0], tflops(ms[0]), ms[1], tflops(ms[1]));
        }
        std::fflush(stdout);
        if (json != nullptr) {
          std::fprintf(json,
                       "{\"kind\": \"bwd\", \"dtype\": \"%s\", \"d\": %d, \"causal\": %s, "
                       "\"seqlen\": %d, \"batch\": %d, \"heads\": %d, \"ours_tflops\": %.1f, "
                       "\"ours_det_tflops\": %.1f, \"ours_ms\": %.4f, \"ours_det_ms\": %.4f",
                       dtype_name, d, causal ? "true" : "false", n, batch, heads, tflops(ms[0]),
                       tflops(ms[1]), ms[0], ms[1]);
          if (o.sm90) {
            std::fprintf(json,
                         ", \"routed\": \"%s\", \"sm80_tflops\": %.1f, \"sm80_ms\": %.4f, "
                         "\"sm90_tflops\": %.1f, \"sm90_ms\": %.4f, \"sm90_max_rel_diff\": %.3e",
                         routed == BwdKernelFamily::kSm90 ? "sm90" : "sm80", tflops(fam.sm80_ms),
                         fam.sm80_ms, tflops(fam.sm90_ms), fam.sm90_ms, fam.sm90_diff);
          }
          std::fprintf(json, "}\n");
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
