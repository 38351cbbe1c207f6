// CPU backend benchmark. Prints JSON lines and a markdown table.
//
//   attention_cpu_bench [--threads=N] [--isa=generic|avx2|avx512] [--block_q=B] [--block_k=B]
//                       [--hdim=64,128] [--seqlens=1024,4096] [--causal=0,1] [--repeats=7]
//       grid: batch 1, 16 heads, fp32, GFLOP/s = 4 * B * H * S^2 * d (/ 2 when causal) over the
//       median time of `repeats` runs after one warm-up, as /work/shared/peers/sdpa_peer.py
//       --device cpu measures PyTorch, so the two tables compare cell by cell.
//   attention_cpu_bench --mode=tiles [--isa=...] [--block_k=B]
//       one thread: the two tile products of one (query tile, key tile) step
//       (S = Q K^T and O += P V, Br = 64) by the backend's micro-kernels and by OpenBLAS sgemm
//       (runtime-dispatched, single-threaded), GFLOP/s for head_dim 64 and 128.
//   attention_cpu_bench --mode=memory [--seqlen=65536] [--heads=1] [--hdim=64]
//       one causal request of `seqlen` tokens: wall time and peak RSS growth during Run().
//   attention_cpu_bench --mode=backward [--threads=N] [--isa=...] [--hdim=64,128]
//                       [--seqlens=512,1024] [--causal=0,1] [--repeats=3] [--heads=16]
//                       [--softcap=0]
//       the backward pass (RunBackward: dq, dk, dv from the forward's o and lse) on the grid of
//       `grid` (batch 1, fp32, default 16 heads), next to the forward of the same shape:
//       backward GFLOP/s counts 2.5x the forward's FLOPs (five tile products against two), as
//       FlashAttention's benchmarks do. Results: bench/cpu/backward_cpu.md.
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "kernels/attention_params.h"
#include "kernels/cpu/attention_cpu.h"
#include "kernels/cpu/tile_kernel.h"

namespace attention::cpu {
namespace {

struct Flags {
  std::string mode = "grid";
  int threads = 0;
  std::string isa = "";
  int block_q = 0, block_k = 0;
  bool copy_kv = true;
  std::vector<int> hdim = {64, 128};
  std::vector<int> seqlens = {1024, 4096};
  std::vector<int> causal = {0, 1};
  int repeats = 7;
  int seqlen = 65536;
  int heads = 0;        // 0: the mode's default (memory 1, backward 16)
  float softcap = 0.f;  // backward mode: the forward's and backward's softcap (0: none)
  // "wall" (default) or "cpu": process CPU time, for tuning with --threads=1 on a machine that
  // other jobs share (time spent descheduled does not count).
  std::string clock = "wall";
};

std::vector<int> Ints(const std::string& s) {
  std::vector<int> v;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t end = s.find(',', start);
    v.push_back(std::atoi(s.substr(start, end - start).c_str()));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return v;
}

bool ParseFlags(int argc, char** argv, Flags& f) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const size_t eq = a.find('=');
    if (a.rfind("--", 0) != 0 || eq == std::string::npos) {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return false;
    }
    const std::string key = a.substr(2, eq - 2), val = a.substr(eq + 1);
    if (key == "mode") {
      f.mode = val;
    } else if (key == "threads") {
      f.threads = std::atoi(val.c_str());
    } else if (key == "isa") {
      f.isa = val;
    } else if (key == "block_q") {
      f.block_q = std::atoi(val.c_str());
    } else if (key == "copy_kv") {
      f.copy_kv = val == "1";
    } else if (key == "block_k") {
      f.block_k = std::atoi(val.c_str());
    } else if (key == "hdim") {
      f.hdim = Ints(val);
    } else if (key == "seqlens") {
      f.seqlens = Ints(val);
    } else if (key == "causal") {
      f.causal = Ints(val);
    } else if (key == "repeats") {
      f.repeats = std::max(1, std::atoi(val.c_str()));
    } else if (key == "seqlen") {
      f.seqlen = std::atoi(val.c_str());
    } else if (key == "clock") {
      f.clock = val;
    } else if (key == "softcap") {
      f.softcap = std::strtof(val.c_str(), nullptr);
    } else if (key == "heads") {
      f.heads = std::atoi(val.c_str());
    } else {
      std::fprintf(stderr, "unknown flag --%s\n", key.c_str());
      return false;
    }
  }
  return true;
}

CpuIsa IsaFromFlag(const std::string& name) {
  if (name == "generic") return CpuIsa::kGeneric;
  if (name == "avx2") return CpuIsa::kAvx2;
  return CpuIsa::kAvx512;
}

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

double ProcessCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

// Seconds `fn` takes, by the clock --clock names.
template <typename Fn>
double Time(const Flags& f, Fn&& fn) {
  if (f.clock == "cpu") {
    const double t0 = ProcessCpuSeconds();
    fn();
    return ProcessCpuSeconds() - t0;
  }
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  return Seconds(std::chrono::steady_clock::now() - t0);
}

std::vector<float> RandomFloats(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

struct DenseProblem {
  AttentionParams p;
  std::vector<float> q, k, v, o, lse;
};

void MakeDense(int heads, int seqlen, int d, bool causal, bool with_lse, DenseProblem& pr) {
  AttentionParams& p = pr.p;
  p = AttentionParams();
  p.dtype = DType::kFloat32;
  p.batch = 1;
  p.seqlen_q = p.seqlen_k = seqlen;
  p.q_heads = p.kv_heads = heads;
  p.head_dim = d;
  p.causal = causal;
  p.softmax_scale = 1.0f / std::sqrt(static_cast<float>(d));
  SetContiguousStrides(p);
  const int64_t n = int64_t{seqlen} * heads * d;
  pr.q = RandomFloats(n, 1);
  pr.k = RandomFloats(n, 2);
  pr.v = RandomFloats(n, 3);
  pr.o.assign(n, std::nanf(""));
  p.q = pr.q.data();
  p.k = pr.k.data();
  p.v = pr.v.data();
  p.o = pr.o.data();
  if (with_lse) {
    pr.lse.assign(int64_t{heads} * seqlen, 0.f);
    p.lse = pr.lse.data();
  }
}

CpuBackendOptions Options(const Flags& f) {
  CpuBackendOptions o;
  o.num_threads = f.threads;
  o.max_isa = f.isa.empty() ? CpuIsa::kAvx512 : IsaFromFlag(f.isa);
  o.block_q = f.block_q;
  o.block_k = f.block_k;
  o.copy_float32_kv = f.copy_kv;
  return o;
}

int Grid(const Flags& f) {
  CpuBackend backend(Options(f));
  const std::string block_q =
      backend.block_q() > 0 ? std::to_string(backend.block_q()) : std::string("auto");
  std::printf("# device: cpu, %d threads, isa %s, tile %sx%d, copy_kv %d\n", backend.num_threads(),
              CpuIsaName(backend.isa()), block_q.c_str(), backend.block_k(), f.copy_kv ? 1 : 0);
  struct Row {
    int d, causal, seqlen;
    double gflops, ms, best_gflops;
  };
  std::vector<Row> rows;
  for (int d : f.hdim) {
    for (int causal : f.causal) {
      for (int n : f.seqlens) {
        DenseProblem pr;
        MakeDense(16, n, d, causal != 0, false, pr);
        if (!backend.Run(pr.p).ok()) return 1;  // warm-up
        std::vector<double> times;
        bool ok = true;
        for (int r = 0; r < f.repeats; ++r) {
          times.push_back(Time(f, [&] { ok = ok && backend.Run(pr.p).ok(); }));
        }
        if (!ok) return 1;
        std::sort(times.begin(), times.end());
        const double median = times[times.size() / 2];
        const double flops = 4.0 * 16 * double(n) * n * d / (causal ? 2 : 1);
        rows.push_back({d, causal, n, flops / median / 1e9, median * 1e3, flops / times[0] / 1e9});
        std::printf(
            "{\"kind\": \"cpu\", \"dtype\": \"fp32\", \"threads\": %d, \"isa\": \"%s\", \"d\": %d, "
            "\"causal\": %s, \"seqlen\": %d, \"batch\": 1, \"heads\": 16, \"ms\": %.3f, "
            "\"gflops\": %.1f, \"best_gflops\": %.1f}\n",
            backend.num_threads(), CpuIsaName(backend.isa()), d, causal ? "true" : "false", n,
            median * 1e3, flops / median / 1e9, flops / times[0] / 1e9);
        std::fflush(stdout);
      }
    }
  }
  std::printf(
      "\n| d | causal | seqlen | median ms | GFLOP/s (median) | GFLOP/s (best) |\n"
      "|---|---|---|---|---|---|\n");
  for (const Row& r : rows) {
    std::printf("| %d | %d | %d | %.2f | %.1f | %.1f |\n", r.d, r.causal, r.seqlen, r.ms, r.gflops,
                r.best_gflops);
  }
  return 0;
}

TileProductsFn ProductsFor(CpuIsa isa) {
  switch (isa) {
#if defined(ATTN_CPU_X86_VARIANTS)
    case CpuIsa::kAvx512:
      return &avx512::TileProducts;
    case CpuIsa::kAvx2:
      return &avx2::TileProducts;
#endif
    default:
      return &generic::TileProducts;
  }
}

// One thread, data in cache: the backend's tile products against two cblas_sgemm calls on the
// row-major tiles (S[Br][Bc] = Q K^T; O[Br][d] += P V), the way a BLAS-based kernel (PyTorch's
// CPU flash attention) computes them.
int Tiles(const Flags& f) {
  openblas_set_num_threads(1);
  const CpuIsa isa = std::min(BestCpuIsa(), f.isa.empty() ? CpuIsa::kAvx512 : IsaFromFlag(f.isa));
  const TileProductsFn products = ProductsFor(isa);
  const int br = 64;
  std::printf("# tile products, 1 thread, Br = %d; openblas core: %s\n", br,
              openblas_get_corename());
  std::printf(
      "\n| d | Bc | micro-kernel (%s) GFLOP/s | OpenBLAS sgemm GFLOP/s | ratio |\n"
      "|---|---|---|---|---|\n",
      CpuIsaName(isa));
  const std::vector<int> bcs =
      f.block_k > 0 ? std::vector<int>{f.block_k} : std::vector<int>{32, 64, 128, 256};
  for (int d : f.hdim) {
    for (int bc : bcs) {
      const std::vector<float> k = RandomFloats(int64_t{bc} * d, 4);
      const std::vector<float> v = RandomFloats(int64_t{bc} * d, 5);
      const std::vector<float> q = RandomFloats(int64_t{br} * d, 6);
      std::vector<float> s(int64_t{br} * bc), o(int64_t{br} * d, 0.f), alpha(br, 1.0f);
      const double flops = 4.0 * br * bc * d;
      const int iters = std::max(100, static_cast<int>(2e9 / flops));
      auto time = [&](auto&& body) {
        body();
        double best = 0;
        for (int rep = 0; rep < 3; ++rep) {
          const double secs = Time(f, [&] {
            for (int i = 0; i < iters; ++i) body();
          });
          best = std::max(best, flops * iters / secs / 1e9);
        }
        return best;
      };
      const double mine = time([&] {
        products(k.data(), d, v.data(), d, bc, d, q.data(), br, alpha.data(), s.data(), o.data());
      });
      const double blas = time([&] {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, br, bc, d, 1.0f, q.data(), d, k.data(),
                    d, 0.0f, s.data(), bc);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, br, d, bc, 1.0f, s.data(), bc,
                    v.data(), d, 1.0f, o.data(), d);
      });
      std::printf("| %d | %d | %.1f | %.1f | %.2f |\n", d, bc, mine, blas, mine / blas);
      std::fflush(stdout);
    }
  }
  return 0;
}

int64_t ProcStatusKb(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) return std::atoll(line.c_str() + std::strlen(key));
  }
  return -1;
}

int Memory(const Flags& f) {
  const int d = f.hdim.front();
  CpuBackend backend(Options(f));
  DenseProblem pr;
  const int heads = f.heads > 0 ? f.heads : 1;
  MakeDense(heads, f.seqlen, d, true, true, pr);
  const int64_t rss_before = ProcStatusKb("VmRSS:");
  // Resets the peak (VmHWM) to the current RSS (Linux >= 4.0).
  std::ofstream("/proc/self/clear_refs") << "5";
  const auto t0 = std::chrono::steady_clock::now();
  if (!backend.Run(pr.p).ok()) return 1;
  const double secs = Seconds(std::chrono::steady_clock::now() - t0);
  const int64_t peak = ProcStatusKb("VmHWM:");
  const double score_bytes = 4.0 * heads * double(f.seqlen) * f.seqlen;
  std::printf(
      "causal request: %d tokens, %d heads, head_dim %d, fp32, %d threads (%s): %.2f s, "
      "%.1f GFLOP/s\n"
      "inputs+outputs: %.1f MiB; RSS before Run %.1f MiB, peak during Run %.1f MiB: growth "
      "%.2f MiB (a seqlen_q x seqlen_k float32 score buffer would be %.1f GiB)\n",
      f.seqlen, heads, d, backend.num_threads(), CpuIsaName(backend.isa()), secs,
      2.0 * heads * double(f.seqlen) * f.seqlen * d / secs / 1e9, 4.0 * 4 * pr.q.size() / (1 << 20),
      rss_before / 1024.0, peak / 1024.0, (peak - rss_before) / 1024.0, score_bytes / (1 << 30));
  return 0;
}

// Median seconds of `repeats` calls of `fn` after one warm-up; false if a call failed.
template <typename Fn>
bool MedianSeconds(const Flags& f, int repeats, Fn&& fn, double& median) {
  if (!fn()) return false;
  std::vector<double> times;
  bool ok = true;
  for (int r = 0; r < repeats; ++r) times.push_back(Time(f, [&] { ok = fn() && ok; }));
  std::sort(times.begin(), times.end());
  median = times[times.size() / 2];
  return ok;
}

int Backward(const Flags& f, const std::vector<int>& seqlens, int repeats) {
  CpuBackend backend(Options(f));
  const int heads = f.heads > 0 ? f.heads : 16;
  std::printf("# device: cpu, %d threads, isa %s; batch 1, %d heads, fp32, softcap %g\n",
              backend.num_threads(), CpuIsaName(backend.isa()), heads, f.softcap);
  struct Row {
    int seqlen, d, causal;
    double ms, gflops, forward_gflops;
  };
  std::vector<Row> rows;
  for (int d : f.hdim) {
    for (int causal : f.causal) {
      for (int n : seqlens) {
        DenseProblem pr;
        MakeDense(heads, n, d, causal != 0, true, pr);
        pr.p.softcap = f.softcap;
        double forward_s = 0;
        if (!MedianSeconds(
                f, repeats, [&] { return backend.Run(pr.p).ok(); }, forward_s)) {
          return 1;
        }
        AttentionBackwardParams b;
        static_cast<AttentionParams&>(b) = pr.p;
        b.kind = WorkKind::kBackward;
        const std::vector<float> dout = RandomFloats(int64_t{n} * heads * d, 7);
        std::vector<float> dq(dout.size()), dk(dout.size()), dv(dout.size());
        b.do_ = dout.data();
        b.dq = dq.data();
        b.dk = dk.data();
        b.dv = dv.data();
        double backward_s = 0;
        const auto never = [] { return false; };
        if (!MedianSeconds(
                f, repeats, [&] { return backend.RunBackward(b, never).ok(); }, backward_s)) {
          return 1;
        }
        const double flops = 4.0 * heads * double(n) * n * d / (causal ? 2 : 1);
        rows.push_back({n, d, causal, backward_s * 1e3, 2.5 * flops / backward_s / 1e9,
                        flops / forward_s / 1e9});
        std::printf(
            "{\"kind\": \"cpu_backward\", \"dtype\": \"fp32\", \"threads\": %d, \"isa\": \"%s\", "
            "\"d\": %d, \"causal\": %s, \"seqlen\": %d, \"batch\": 1, \"heads\": %d, "
            "\"ms\": %.3f, \"gflops\": %.1f, \"forward_ms\": %.3f, \"forward_gflops\": %.1f}\n",
            backend.num_threads(), CpuIsaName(backend.isa()), d, causal ? "true" : "false", n,
            heads, backward_s * 1e3, rows.back().gflops, forward_s * 1e3,
            rows.back().forward_gflops);
        std::fflush(stdout);
      }
    }
  }
  std::printf(
      "\n| seqlen | head_dim | causal | backward ms | backward GFLOP/s | forward GFLOP/s | "
      "forward / backward |\n|---|---|---|---|---|---|---|\n");
  for (const Row& r : rows) {
    std::printf("| %d | %d | %d | %.1f | %.1f | %.1f | %.1f |\n", r.seqlen, r.d, r.causal, r.ms,
                r.gflops, r.forward_gflops, r.forward_gflops / r.gflops);
  }
  return 0;
}

}  // namespace
}  // namespace attention::cpu

int main(int argc, char** argv) {
  attention::cpu::Flags flags;
  if (!attention::cpu::ParseFlags(argc, argv, flags)) return 2;
  if (flags.mode == "grid") return attention::cpu::Grid(flags);
  if (flags.mode == "tiles") return attention::cpu::Tiles(flags);
  if (flags.mode == "memory") return attention::cpu::Memory(flags);
  if (flags.mode == "backward") {
    // Defaults of their own: the grid's 4k sequences take minutes per backward on a laptop.
    const bool grid_seqlens = flags.seqlens == attention::cpu::Flags().seqlens;
    return attention::cpu::Backward(
        flags, grid_seqlens ? std::vector<int>{512, 1024} : flags.seqlens,
        flags.repeats == attention::cpu::Flags().repeats ? 3 : flags.repeats);
  }
  std::fprintf(stderr, "unknown --mode=%s (grid, tiles, memory, backward)\n", flags.mode.c_str());
  return 2;
}
