// Benchmark of the CUDA forward kernel through its host API (kernels/cuda/attention_cuda.h).
//
// Default: the standard grid, the same shapes as /work/shared/peers/sdpa_peer.py: for each dtype,
// head_dim in {64, 128, 256}, causal off / on, seqlen 512 .. 16384 with batch * seqlen = 16384
// tokens and heads * head_dim = 2048. Prints a table and writes JSON lines (--json). TFLOP/s use
// the FlashAttention convention 4 * batch * heads * seqlen_q * seqlen_k * head_dim, halved when
// causal. Time: median of repeated launches, each timed with CUDA events, after warm-up.
//
//   attention_kernel_bench [--dtype bf16,fp16] [--hdim 64,128,256] [--causal 0,1]
//                          [--seqlens 512,...] [--tokens 16384] [--model-dim 2048]
//                          [--json FILE] [--tiles] [--memory] [--paged PAGE_SIZE] [--ws]
//                          [--ws-variants] [--ws-only LABEL,...] [--varlen]
//   --dtype fp8  the FP8 (E4M3) kernel (flash_fwd_fp8.h, V^T pre-pass included) on the same
//             shapes; after bf16 in the same list its rows also give fp8 / bf16 speed
//   --fp8-variants  with fp8, also every compiled FP8 tile configuration of the cell's bucket
//             (kernels/cuda/flash_fwd_fp8_variants.h; configure -DATTN_BENCH_FP8_VARIANTS=ON),
//             timed interleaved with the default and the routed bf16 launch, each launch
//             from a cold L2 ("fp8il" rows, TimeFp8Variants)
//   --tiles   also times every tile configuration of bench/cuda/tile_sweep.cu (bf16)
//   --memory  one 128k-token sequence (16 heads, head_dim 128, bf16): peak device memory and
//             time, causal off / on
//   --paged   every cell of the grid four times, back to back: the routed kernel on dense K/V,
//             then the same K/V read through a page table (pages of PAGE_SIZE keys in random
//             order, q dense) by the mma.sync / wgmma kernels' paged variant ("old"), by the
//             warp-specialized kernel's (flash_fwd_sm90ws.h, "ws") and as the dispatch routes it
//             ("routed"), the last two checked against the first; speeds relative to the routed
//             dense kernel and their geometric means (kind "paged" in the JSON)
//   --ws      every cell of the grid twice, back to back: the routed kernel, then the
//             warp-specialized Hopper kernel (kernels/cuda/flash_fwd_sm90ws.h) on the same
//             inputs, with the largest difference between their outputs (kind "ws"); run without
//             ATTN_CUDA_KERNELS=sm90ws (or kRouteSm90Ws), which makes the routed kernel the same
//   --ws-variants  --ws, and every configuration of bench/cuda/ws_variants.cu (bf16; configure
//             with -DATTN_BENCH_WS_VARIANTS=ON) persistent and not, on the same inputs, timed
//             interleaved with the routed launch and the default ("il" rows, kind "ws_il"): each
//             alone on an idle GPU (host work inside) and queued as sdpa_peer.py's do_bench
//             (L2 flushed before each launch, host work hidden)
//   --ws-only  with --ws-variants, only the configurations of these labels (as printed, e.g.
//             128x128/2c/2s/q2): a device command leaves out those its tests failed
//   --varlen  every cell launched as a packed batch (cu_seqlens_q / k of its batch sequences of
//             seqlen rows, batch strides 0), as the server launches every batch; with --ws both
//             kernels take the packed batch ("varlen": true in the JSON)
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#ifdef ATTN_BENCH_TILE_SWEEP
#include "bench/cuda/tile_sweep.h"
#endif
#include "kernels/attention_params.h"
#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/block_info.h"
#include "kernels/cuda/flash_fwd_dispatch.h"
#include "kernels/cuda/flash_fwd_fp8.h"
#include "kernels/cuda/flash_fwd_fp8_variants.h"
#include "kernels/cuda/flash_fwd_sm90ws.h"
#ifdef ATTN_BENCH_WS_VARIANTS
#include "bench/cuda/ws_variants.h"
#endif
#include "kernels/dtype.h"

namespace attention::cuda::bench {
namespace {

bool Check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return true;
  std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(err));
  return false;
}

std::vector<int> Ints(const std::string& text) {
  std::vector<int> out;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t comma = text.find(',', pos);
    out.push_back(std::atoi(text.substr(pos, comma - pos).c_str()));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
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

struct Options {
  std::vector<std::string> dtypes = {"bf16", "fp16"};
  std::vector<int> hdims = {64, 128, 256};
  std::vector<int> causal = {0, 1};
  std::vector<int> seqlens = {512, 1024, 2048, 4096, 8192, 16384};
  int64_t tokens = 16384;
  int model_dim = 2048;
  std::string json;
  bool tiles = false;
  bool memory = false;
  int page_size = 0;  // --paged
  bool ws = false;
  bool ws_variants = false;  // --ws-variants (implies --ws)
  std::string ws_only;       // --ws-only: comma-separated labels, empty for all
  bool varlen = false;       // --varlen
  // --fp8-variants
  bool fp8_variants = false;
};

// The state of a xorshift stream for `seed`.
uint64_t SeedState(uint64_t seed) { return seed * 0x9E3779B97F4A7C15ull + 1; }

// The stream's next value: uniform in (-sqrt(3), sqrt(3)), variance 1.
float NextUniform(uint64_t& state) {
  state ^= state << 13;
  state ^= state >> 7;
  state ^= state << 17;
  const float u = static_cast<float>(state >> 40) / static_cast<float>(1ull << 24);
  return (2.f * u - 1.f) * 1.7320508f;
}

// Uniform values with variance 1 (never zeros: zeros can run faster than real data), written as
// 16-bit elements on the host and copied once.
bool FillRandom(void* device, int64_t count, DType dtype, uint64_t seed) {
  std::vector<uint16_t> host(count);
  uint64_t state = SeedState(seed);
  for (int64_t i = 0; i < count; ++i) {
    const float x = NextUniform(state);
    host[i] = dtype == DType::kFloat16 ? FloatToHalf(x) : FloatToBFloat16(x);
  }
  return Check(cudaMemcpy(device, host.data(), count * 2, cudaMemcpyHostToDevice), "cudaMemcpy");
}

// --dtype fp8: uniform values with variance 1 rounded to e4m3, copied once.
bool FillRandomFp8(void* device, int64_t count, uint64_t seed) {
  std::vector<uint8_t> host(count);
  uint64_t state = SeedState(seed);
  for (int64_t i = 0; i < count; ++i) host[i] = FloatToE4M3(NextUniform(state));
  return Check(cudaMemcpy(device, host.data(), count, cudaMemcpyHostToDevice), "cudaMemcpy");
}

// The FP8 kernel with a workspace kept across calls (grown outside the timed launches' steady
// state: the first of MedianMs's warm-up launches allocates it).
absl::Status RunFp8(const AttentionParams& p, const Fp8Variant* variant = nullptr) {
  static void* workspace = nullptr;
  static size_t bytes = 0;
  const size_t need = Fp8WorkspaceBytes(p);
  if (need > bytes) {
    if (workspace != nullptr) cudaFree(workspace);
    workspace = nullptr;
    bytes = 0;
    if (cudaMalloc(&workspace, need) != cudaSuccess) {
      return absl::ResourceExhaustedError("cudaMalloc of the FP8 workspace failed");
    }
    bytes = need;
  }
  return variant != nullptr ? RunFlashFwdFp8Variant(p, *variant, workspace, nullptr)
                            : RunFlashFwdFp8(p, workspace, nullptr);
}

// Median milliseconds of `launch` over enough repetitions for ~200 ms of work (at least 5).
template <typename Launch>
double MedianMs(const Launch& launch) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int i = 0; i < 3; ++i) launch();
  cudaEventRecord(start);
  launch();
  cudaEventRecord(stop);
  cudaEventSynchronize(stop);
  float first = 0.f;
  cudaEventElapsedTime(&first, start, stop);
  const int reps = std::clamp(static_cast<int>(200.f / std::max(first, 1e-3f)), 5, 200);
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
  void *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr;
  float* lse = nullptr;
};

AttentionParams MakeParams(DType dtype, int batch, int seqlen, int heads, int head_dim, bool causal,
                           const Buffers& buf) {
  AttentionParams p;
  p.dtype = dtype;
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

double Tflops(int batch, int heads, int seqlen, int head_dim, bool causal, double ms) {
  const double flops = 4.0 * batch * heads * double(seqlen) * seqlen * head_dim / (causal ? 2 : 1);
  return flops / (ms * 1e-3) / 1e12;
}

// Launches paged K/V the way RunAttention launches 16-bit work (RunAttention does not take paged
// K/V yet): the host checks of the paged fields, then the mma.sync / wgmma kernels' paged variant
// (DispatchFlashFwdWithoutSm90Ws), whatever the routing says.
absl::Status RunPagedOld(AttentionParams p) {
  if (absl::Status s = CheckPagedForward(p); !s.ok()) return s;
  Normalize(p);
  ClampWindow(p.seqlen_q, p.seqlen_k, p.window_left, p.window_right);
  return DispatchFlashFwdWithoutSm90Ws(p, nullptr);
}

// The same launch on the warp-specialized kernel's paged variant.
absl::Status RunPagedWs(const AttentionParams& p) {
  if (absl::Status s = CheckPagedForward(p); !s.ok()) return s;
  return RunFlashFwdSm90Ws(p, nullptr);
}

// Largest |a - b| over `count` 16-bit values of `dtype`; +inf when one is not finite.
double MaxAbsDiff(DType dtype, const std::vector<uint16_t>& a, const std::vector<uint16_t>& b) {
  const auto value = [&](uint16_t x) {
    return dtype == DType::kFloat16 ? HalfToFloat(x) : BFloat16ToFloat(x);
  };
  double max_diff = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double diff = std::fabs(double{value(a[i])} - value(b[i]));
    max_diff = std::isfinite(diff) ? std::max(max_diff, diff) : INFINITY;
  }
  return max_diff;
}

// The same launch as the forward dispatch routes it (RoutesToFlashFwdSm90Ws: the warp-specialized
// kernel's paged variant where kRouteSm90WsPaged and Sm90WsFasterFor say so, else the old one).
absl::Status RunPagedRouted(AttentionParams p) {
  if (absl::Status s = CheckPagedForward(p); !s.ok()) return s;
  Normalize(p);
  ClampWindow(p.seqlen_q, p.seqlen_k, p.window_left, p.window_right);
  return DispatchFlashFwd(p, nullptr);
}

// --paged: one cell's paged launches (`pp`) beside the routed dense kernel's `ms` (`dense_kernel`
// its family, as KernelFamilyName names it). The paged keys are the dense ones in another order
// (MakePaged), so the dense o is no reference: the old paged variant's o is (it has its own
// suite), and the warp-specialized kernel's and the routed launch's o are checked against it on
// the same inputs. Appends ms_dense / ms_paged per kernel to `speeds` for the geometric means;
// false on failure.
struct PagedSpeeds {
  std::vector<double> old_over_dense;
  std::vector<double> ws_over_dense;
  std::vector<double> routed_over_dense;
};

bool TimePaged(const std::string& dt, const AttentionParams& pp, double ms,
               const char* dense_kernel, int page_size, PagedSpeeds& speeds, FILE* json) {
  const int64_t count = int64_t{pp.batch} * pp.seqlen_q * pp.q_heads * pp.head_dim;
  std::vector<uint16_t> reference(count), paged(count);
  struct Result {
    double ms = 0.0;
    double diff = 0.0;
    std::string error;
  };
  // Runs `launch` once, copies its o (into the reference for the first kernel, else compares it
  // with the reference), then times it.
  const auto run = [&](const auto& launch, bool is_reference) {
    Result r;
    absl::Status status = launch();
    std::vector<uint16_t>& out = is_reference ? reference : paged;
    if (status.ok() && Check(cudaDeviceSynchronize(), "paged kernel") &&
        Check(cudaMemcpy(out.data(), pp.o, count * 2, cudaMemcpyDeviceToHost), "copy o")) {
      r.diff = is_reference ? 0.0 : MaxAbsDiff(pp.dtype, reference, paged);
      r.ms = MedianMs([&] { status = launch(); });
      if (status.ok() && Check(cudaDeviceSynchronize(), "paged kernel")) return r;
    }
    r.error = status.ok() ? "CUDA error" : std::string(status.message());
    return r;
  };
  const Result old = run([&] { return RunPagedOld(pp); }, true);
  if (!old.error.empty()) {
    std::fprintf(stderr, "paged old %s d=%d causal=%d seqlen=%d: %s\n", dt.c_str(), pp.head_dim,
                 pp.causal ? 1 : 0, pp.seqlen_q, old.error.c_str());
    return false;
  }
  const Result ws = run([&] { return RunPagedWs(pp); }, false);
  const Result routed = run([&] { return RunPagedRouted(pp); }, false);
  const char* routed_kernel = KernelFamilyName(SelectKernelFamily(pp));
  const double tf = Tflops(pp.batch, pp.q_heads, pp.seqlen_q, pp.head_dim, pp.causal, 1.0);
  const auto cell = [&](const Result& r) {
    char text[96];
    if (!r.error.empty()) {
      std::snprintf(text, sizeof(text), "- | failed");
    } else {
      std::snprintf(text, sizeof(text), "%.3f | %.3f", r.ms, ms / r.ms);
    }
    return std::string(text);
  };
  std::printf(
      "| %s | %d | %d | %d | %d | %d | %.3f | %.1f | %s | %s | %.1f | %s | %s | %.1e | %.1e |\n",
      dt.c_str(), pp.head_dim, pp.causal ? 1 : 0, pp.seqlen_q, pp.batch, pp.q_heads, ms, tf / ms,
      cell(old).c_str(), cell(ws).c_str(), ws.error.empty() ? tf / ws.ms : 0.0,
      cell(routed).c_str(), routed_kernel, ws.diff, routed.diff);
  for (const auto& [name, r] : {std::pair{"ws", &ws}, std::pair{"routed", &routed}}) {
    if (!r->error.empty()) {
      std::fprintf(stderr, "paged %s %s d=%d causal=%d seqlen=%d: %s\n", name, dt.c_str(),
                   pp.head_dim, pp.causal ? 1 : 0, pp.seqlen_q, r->error.c_str());
    }
  }
  if (json != nullptr) {
    std::fprintf(json,
                 "{\"kind\": \"paged\", \"dtype\": \"%s\", \"d\": %d, \"causal\": %s, "
                 "\"seqlen\": %d, \"batch\": %d, \"heads\": %d, \"page_size\": %d, "
                 "\"ms_dense\": %.4f, \"ms_paged_old\": %.4f, \"ms_paged_ws\": %.4f, "
                 "\"ms_paged_routed\": %.4f, \"old_over_dense\": %.4f, \"ws_over_dense\": %.4f, "
                 "\"routed_over_dense\": %.4f, \"max_abs_diff_ws_vs_old\": %.3e, "
                 "\"max_abs_diff_routed_vs_old\": %.3e, \"dense_kernel\": \"%s\", "
                 "\"paged_routed_to\": \"%s\"}\n",
                 dt.c_str(), pp.head_dim, pp.causal ? "true" : "false", pp.seqlen_q, pp.batch,
                 pp.q_heads, page_size, ms, old.ms, ws.ms, routed.ms, ms / old.ms,
                 ws.error.empty() ? ms / ws.ms : 0.0, routed.error.empty() ? ms / routed.ms : 0.0,
                 ws.diff, routed.diff, dense_kernel, routed_kernel);
  }
  std::fflush(stdout);
  // The same inputs and arithmetic up to the order of the KV tiles and the rounding of P: a
  // difference beyond a few bfloat16 ulps of |o| <= ~2 is a wrong result.
  constexpr double kMaxDiff = 0.03;
  bool ok = true;
  for (const Result* r : {&ws, &routed}) {
    if (!r->error.empty() || !(r->diff <= kMaxDiff)) ok = false;
  }
  speeds.old_over_dense.push_back(ms / old.ms);
  if (ws.error.empty()) speeds.ws_over_dense.push_back(ms / ws.ms);
  if (routed.error.empty()) speeds.routed_over_dense.push_back(ms / routed.ms);
  return ok;
}

// The dense K/V of `dense` read as pools of pages of `page_size` keys: the contiguous tensors
// [batch, seqlen, heads, d] are batch * seqlen / page_size pages, and the page table (device
// memory at `table`, room for them all) hands them to the sequences in random order.
bool MakePaged(const AttentionParams& dense, int page_size, int32_t* table, int32_t* seqlens,
               AttentionParams& paged) {
  const int per_seq = dense.seqlen_k / page_size;
  std::vector<int32_t> ids(static_cast<size_t>(dense.batch) * per_seq);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
  uint64_t state = 0x2545F4914F6CDD1Dull;
  for (size_t i = ids.size(); i > 1; --i) {  // Fisher-Yates with xorshift
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    std::swap(ids[i - 1], ids[state % i]);
  }
  const std::vector<int32_t> lens(dense.batch, dense.seqlen_k);
  if (!Check(cudaMemcpy(table, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice), "table") ||
      !Check(cudaMemcpy(seqlens, lens.data(), lens.size() * 4, cudaMemcpyHostToDevice),
             "seqlens")) {
    return false;
  }
  paged = dense;
  paged.page_table = table;
  paged.page_table_stride = per_seq;
  paged.page_size = page_size;
  paged.seqlens_k = seqlens;
  paged.k_batch_stride = int64_t{page_size} * dense.k_row_stride;
  paged.v_batch_stride = int64_t{page_size} * dense.v_row_stride;
  return true;
}

// --fp8-variants: the routed bf16 launch (on bf16 copies of the same shapes), the default FP8
// configuration and every compiled variant of p's bucket timed interleaved in this process (the
// default timed alone differed by up to 8 % between two timings of one run, 2026-12-06):
// kFp8Rounds rounds, each launching every entry kFp8Launches times, starting one entry further
// each round. Every launch (the FP8 ones with their V^T pre-pass) is timed alone from a cold L2:
// a memset of kFp8FlushBytes before it, its start event queued behind that, so the host's work
// hides behind the memset. A row per entry: its median over the rounds, default / entry and
// bf16 / entry (medians), and the range of the rounds' own bf16 / entry ratios. Every entry is
// launched and checked once first. Returns false if a launch failed.
bool TimeFp8Variants(const AttentionParams& p, int batch, int heads, FILE* json) {
  constexpr int kFp8Rounds = 9;
  constexpr int kFp8Launches = 4;
  constexpr size_t kFp8FlushBytes = size_t{256} << 20;
  const int d = p.head_dim;
  const int bucket = d <= 64 ? 64 : d <= 128 ? 128 : 256;
  // Entry 0 is bf16, entry 1 the FP8 default (variant null), then the variants.
  std::vector<const Fp8Variant*> entries = {nullptr, nullptr};
  for (const Fp8Variant& v : Fp8Variants()) {
    if (v.head_dim == bucket) entries.push_back(&v);
  }
  if (entries.size() == 2) return true;
  static void* flush = nullptr;
  static void* bf16_qkv = nullptr;
  static int64_t bf16_elems = 0;
  const int64_t elems = int64_t{p.batch} * p.seqlen_q * p.q_heads * p.head_dim;
  if (flush == nullptr && !Check(cudaMalloc(&flush, kFp8FlushBytes), "cudaMalloc flush")) {
    return false;
  }
  if (elems > bf16_elems) {
    if (bf16_qkv != nullptr) cudaFree(bf16_qkv);
    bf16_qkv = nullptr;
    bf16_elems = 0;
    if (!Check(cudaMalloc(&bf16_qkv, 3 * elems * 2), "cudaMalloc bf16 q, k, v")) return false;
    char* base = static_cast<char*>(bf16_qkv);
    for (int t = 0; t < 3; ++t) {
      if (!FillRandom(base + t * elems * 2, elems, DType::kBFloat16, t + 1)) return false;
    }
    bf16_elems = elems;
  }
  AttentionParams bf16 = p;
  bf16.dtype = DType::kBFloat16;
  bf16.q = bf16_qkv;
  bf16.k = static_cast<char*>(bf16_qkv) + elems * 2;
  bf16.v = static_cast<char*>(bf16_qkv) + 2 * elems * 2;
  bf16.q_descale = bf16.k_descale = bf16.v_descale = nullptr;
  const auto label = [](size_t e, const Fp8Variant* v) {
    return e == 0 ? std::string("bf16") : v == nullptr ? std::string("default") : v->Label();
  };
  const auto launch = [&](size_t e) {
    return e == 0 ? RunAttention(bf16, nullptr, nullptr) : RunFp8(p, entries[e]);
  };
  const size_t n = entries.size();
  for (size_t e = 0; e < n; ++e) {
    const absl::Status s = launch(e);
    if (!s.ok() || !Check(cudaDeviceSynchronize(), "fp8 variant")) {
      std::fprintf(stderr, "fp8 variant %s: %s\n", label(e, entries[e]).c_str(),
                   s.ToString().c_str());
      return false;
    }
  }
  std::vector<std::vector<double>> ms(n);
  std::vector<cudaEvent_t> start(kFp8Launches), stop(kFp8Launches);
  for (int l = 0; l < kFp8Launches; ++l) {
    cudaEventCreate(&start[l]);
    cudaEventCreate(&stop[l]);
  }
  bool ok = true;
  for (int round = 0; round < kFp8Rounds && ok; ++round) {
    for (size_t j = 0; j < n && ok; ++j) {
      const size_t e = (j + round) % n;
      ok = Check(cudaDeviceSynchronize(), "sync");
      for (int l = 0; l < kFp8Launches && ok; ++l) {
        cudaMemsetAsync(flush, 0, kFp8FlushBytes);
        cudaEventRecord(start[l]);
        ok = launch(e).ok();
        cudaEventRecord(stop[l]);
      }
      ok = ok && Check(cudaDeviceSynchronize(), "fp8 variant");
      double sum = 0;
      for (int l = 0; l < kFp8Launches && ok; ++l) {
        float elapsed = 0.f;
        cudaEventElapsedTime(&elapsed, start[l], stop[l]);
        sum += elapsed;
      }
      ms[e].push_back(sum / kFp8Launches);
    }
  }
  for (int l = 0; l < kFp8Launches; ++l) {
    cudaEventDestroy(start[l]);
    cudaEventDestroy(stop[l]);
  }
  if (!ok) {
    std::fprintf(stderr, "fp8 variants: a launch failed\n");
    return false;
  }
  const auto median = [](std::vector<double> x) {
    std::sort(x.begin(), x.end());
    return x[x.size() / 2];
  };
  const double base = median(ms[0]);
  const double def = median(ms[1]);
  static bool header = false;
  if (!header) {
    header = true;
    std::printf("# fp8 pipe probe: %s\n", Fp8PipeProbe().c_str());
    std::printf(
        "# fp8il rows (--fp8-variants): %d rounds of %d launches each, interleaved, each launch "
        "from a cold L2; ms and TFLOP/s the median over the rounds, then default / entry and "
        "bf16 / entry (medians) and the range of the rounds' bf16 / entry\n"
        "| fp8il | d | causal | seqlen | config | ms | TFLOP/s | x default | x bf16 | per round "
        "|\n",
        kFp8Rounds, kFp8Launches);
  }
  for (size_t e = 0; e < n; ++e) {
    std::vector<double> ratio;
    for (int r = 0; r < kFp8Rounds; ++r) ratio.push_back(ms[0][r] / ms[e][r]);
    std::sort(ratio.begin(), ratio.end());
    const double m = median(ms[e]);
    const std::string name = label(e, entries[e]);
    std::printf("| fp8il | %d | %d | %d | %s | %.3f | %.1f | %.3f | %.3f | %.3f-%.3f |\n", d,
                p.causal ? 1 : 0, p.seqlen_q, name.c_str(), m,
                Tflops(batch, heads, p.seqlen_q, d, p.causal, m), def / m, base / m, ratio.front(),
                ratio.back());
    if (json != nullptr) {
      std::fprintf(json,
                   "{\"kind\": \"fp8_variant\", \"variant\": \"%s\", \"d\": %d, "
                   "\"causal\": %s, \"seqlen\": %d, \"ms\": %.4f, \"default_ms\": %.4f, "
                   "\"bf16_ms\": %.4f, \"bf16_ratio_min\": %.4f, \"bf16_ratio_max\": %.4f}\n",
                   name.c_str(), d, p.causal ? "true" : "false", p.seqlen_q, m, def, base,
                   ratio.front(), ratio.back());
    }
  }
  std::fflush(stdout);
  return true;
}

// --ws: the routed kernel's o (left in buf.o by the timing before) against the warp-specialized
// kernel's, then the latter timed; one table row and JSON line. Returns false on failure.
// With `variants`, also every configuration of bench/cuda/ws_variants.cu for the cell's bucket.
bool TimeWs(const std::string& dt, const AttentionParams& p, double ms, double tflops,
            bool variants, const std::string& only, FILE* json);

// --varlen: `p` as a packed batch of its batch sequences of seqlen rows, cu_seqlens (both) in
// device memory at `cu` (room for batch + 1 offsets).
bool MakePacked(AttentionParams& p, int32_t* cu) {
  std::vector<int32_t> offsets(p.batch + 1);
  for (int b = 0; b <= p.batch; ++b) offsets[b] = b * p.seqlen_q;
  if (!Check(cudaMemcpy(cu, offsets.data(), offsets.size() * 4, cudaMemcpyHostToDevice),
             "cu_seqlens")) {
    return false;
  }
  p.cu_seqlens_q = p.cu_seqlens_k = cu;
  p.total_q = p.total_k = int64_t{p.batch} * p.seqlen_q;
  SetContiguousStrides(p);
  return true;
}

int RunGrid(const Options& opt, FILE* json) {
  const int64_t elems = opt.tokens * opt.model_dim;
  Buffers buf;
  for (void** ptr : {&buf.q, &buf.k, &buf.v, &buf.o}) {
    if (!Check(cudaMalloc(ptr, elems * 2), "cudaMalloc")) return 1;
  }
  const int max_heads = opt.model_dim / 32;
  if (!Check(cudaMalloc(reinterpret_cast<void**>(&buf.lse), opt.tokens * max_heads * sizeof(float)),
             "cudaMalloc")) {
    return 1;
  }
  int32_t* table = nullptr;
  int32_t* seqlens = nullptr;
  if (opt.page_size > 0 &&
      (!Check(cudaMalloc(reinterpret_cast<void**>(&table), opt.tokens / opt.page_size * 4 + 16),
              "cudaMalloc") ||
       !Check(cudaMalloc(reinterpret_cast<void**>(&seqlens), opt.tokens * 4), "cudaMalloc"))) {
    return 1;
  }
  int32_t* cu_seqlens = nullptr;
  if (opt.varlen && !Check(cudaMalloc(reinterpret_cast<void**>(&cu_seqlens), (opt.tokens + 2) * 4),
                           "cudaMalloc")) {
    return 1;
  }
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  std::printf("# device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  if (opt.ws) {
    std::printf("# ws: the warp-specialized Hopper kernel beside the routed one, same inputs\n");
    std::printf(
        "| dtype | d | causal | seqlen | batch | heads | ms routed | TFLOP/s routed | ms ws | "
        "TFLOP/s ws | ws / routed speed | max abs diff | ws config |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    if (opt.ws_variants) {
      std::printf(
          "# il rows (--ws-variants): the routed launch, the default, the variants and the "
          "default again timed interleaved (TimeInterleaved): sync = each launch alone on an idle "
          "GPU (host work inside), queued = as the peer's do_bench (L2 flushed, host work "
          "hidden); speed = default ms / ms in the same rounds; host us = the launch call\n"
          "| il | dtype | d | causal | seqlen | config | ms sync | TFLOP/s sync | ms queued | "
          "TFLOP/s queued | speed queued | speed sync | host us | max abs diff |\n");
    }
  } else if (opt.page_size > 0) {
    std::printf(
        "# paged: pages of %d keys in random order; the routed kernel on dense K/V, then the "
        "same keys through the page table on the paged variants of the mma.sync / wgmma "
        "kernels (old), of the warp-specialized kernel (ws) and as the dispatch routes them "
        "(routed); speed = ms dense / ms paged; diff = max |o - o_old| on the same paged inputs\n",
        opt.page_size);
    std::printf(
        "| dtype | d | causal | seqlen | batch | heads | ms dense | TFLOP/s dense | ms old | "
        "old / dense | ms ws | ws / dense | TFLOP/s ws | ms routed | routed / dense | routed to | "
        "diff ws | diff routed |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  } else {
    std::printf("| dtype | d | causal | seqlen | batch | heads | ms | TFLOP/s | kernel |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|\n");
  }
  int failures = 0;
  PagedSpeeds paged_speeds;
  {
    // Half a second of work first: the GPU idles at a low clock and the first cells would
    // otherwise be timed while it ramps up.
    if (!FillRandom(buf.q, elems, DType::kBFloat16, 1)) return 1;
    const AttentionParams p =
        MakeParams(DType::kBFloat16, static_cast<int>(std::max<int64_t>(1, opt.tokens / 4096)),
                   4096, opt.model_dim / 128, 128, false, Buffers{buf.q, buf.q, buf.q, buf.o});
    const auto start = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - start < std::chrono::milliseconds(500)) {
      if (!RunAttention(p, nullptr, nullptr).ok()) break;
      cudaDeviceSynchronize();
    }
  }
  // --dtype fp8: bf16 milliseconds per (d, causal, seqlen) measured earlier in the run.
  std::map<std::tuple<int, int, int>, double> bf16_ms;
  for (const std::string& dt : opt.dtypes) {
    const bool fp8 = dt == "fp8";
    const DType dtype = fp8            ? DType::kFloat8E4M3
                        : dt == "fp16" ? DType::kFloat16
                                       : DType::kBFloat16;
    if (fp8 ? (!FillRandomFp8(buf.q, elems, 1) || !FillRandomFp8(buf.k, elems, 2) ||
               !FillRandomFp8(buf.v, elems, 3))
            : (!FillRandom(buf.q, elems, dtype, 1) || !FillRandom(buf.k, elems, dtype, 2) ||
               !FillRandom(buf.v, elems, dtype, 3))) {
      return 1;
    }
    for (int d : opt.hdims) {
      for (int c : opt.causal) {
        for (int n : opt.seqlens) {
          const int batch = static_cast<int>(std::max<int64_t>(1, opt.tokens / n));
          const int heads = opt.model_dim / d;
          AttentionParams p = MakeParams(dtype, batch, n, heads, d, c != 0, buf);
          if (opt.varlen && !MakePacked(p, cu_seqlens)) return 1;
          absl::Status status;
          const double ms =
              MedianMs([&] { status = fp8 ? RunFp8(p) : RunAttention(p, nullptr, nullptr); });
          if (opt.ws && status.ok()) {
            if (!TimeWs(dt, p, ms, Tflops(batch, heads, n, d, c != 0, ms), opt.ws_variants,
                        opt.ws_only, json)) {
              ++failures;
            }
            continue;
          }
          if (opt.page_size > 0 && status.ok()) {
            AttentionParams pp;
            if (!MakePaged(p, opt.page_size, table, seqlens, pp)) return 1;
            if (!TimePaged(dt, pp, ms, KernelFamilyName(SelectKernelFamily(p)), opt.page_size,
                           paged_speeds, json)) {
              ++failures;
            }
            continue;
          }
          if (!status.ok() || !Check(cudaDeviceSynchronize(), "kernel")) {
            std::fprintf(stderr, "%s d=%d causal=%d seqlen=%d: %s\n", dt.c_str(), d, c, n,
                         status.ToString().c_str());
            ++failures;
            continue;
          }
          const double tf = Tflops(batch, heads, n, d, c != 0, ms);
          std::string kernel = KernelFamilyName(SelectKernelFamily(p));
          if (dt == "bf16") bf16_ms[{d, c, n}] = ms;
          if (fp8) {
            const auto bf16 = bf16_ms.find({d, c, n});
            kernel = bf16 == bf16_ms.end()
                         ? std::string("fp8 (e4m3 wgmma)")
                         : "fp8 (e4m3 wgmma), " + std::to_string(bf16->second / ms) + "x bf16";
          }
          std::printf("| %s | %d | %d | %d | %d | %d | %.3f | %.1f | %s |\n", dt.c_str(), d, c, n,
                      batch, heads, ms, tf, kernel.c_str());
          if (fp8 && opt.fp8_variants && !TimeFp8Variants(p, batch, heads, json)) ++failures;
          if (json != nullptr) {
            std::fprintf(json,
                         "{\"kind\": \"fwd\", \"dtype\": \"%s\", \"d\": %d, \"causal\": %s, "
                         "\"seqlen\": %d, \"batch\": %d, \"heads\": %d, \"ms\": %.4f, "
                         "\"ours_tflops\": %.1f, \"kernel\": \"%s\"}\n",
                         dt.c_str(), d, c ? "true" : "false", n, batch, heads, ms, tf,
                         kernel.c_str());
          }
          std::fflush(stdout);
        }
      }
    }
  }
#ifdef ATTN_BENCH_TILE_SWEEP
  if (opt.tiles) {
    // Tile sweep (bf16): every compiled configuration on a subset of the grid.
    if (!FillRandom(buf.q, elems, DType::kBFloat16, 1) ||
        !FillRandom(buf.k, elems, DType::kBFloat16, 2) ||
        !FillRandom(buf.v, elems, DType::kBFloat16, 3)) {
      return 1;
    }
    std::printf("\n| tiles | d | causal | seqlen | ms | TFLOP/s |\n|---|---|---|---|---|---|\n");
    for (const TileVariant& tv : TileSweep()) {
      for (int c : {0, 1}) {
        for (int n : {512, 1024, 4096, 16384}) {
          const int batch = static_cast<int>(std::max<int64_t>(1, opt.tokens / n));
          const int heads = opt.model_dim / tv.head_dim;
          AttentionParams p =
              MakeParams(DType::kBFloat16, batch, n, heads, tv.head_dim, c != 0, buf);
          Normalize(p);
          const auto fn = c ? tv.window : tv.dense;
          cudaError_t err = cudaSuccess;
          const double ms = MedianMs([&] { err = fn(p, nullptr); });
          if (!Check(err, "tile sweep launch") || !Check(cudaDeviceSynchronize(), "tile sweep")) {
            ++failures;
            continue;
          }
          const double tf = Tflops(batch, heads, n, tv.head_dim, c != 0, ms);
          std::printf("| %s | %d | %d | %d | %.3f | %.1f |\n", tv.Label().c_str(), tv.head_dim, c,
                      n, ms, tf);
          if (json != nullptr) {
            std::fprintf(json,
                         "{\"kind\": \"tiles\", \"dtype\": \"bf16\", \"tiles\": \"%s\", "
                         "\"d\": %d, \"causal\": %s, \"seqlen\": %d, \"ms\": %.4f, "
                         "\"ours_tflops\": %.1f}\n",
                         tv.Label().c_str(), tv.head_dim, c ? "true" : "false", n, ms, tf);
          }
          std::fflush(stdout);
        }
      }
    }
  }
#else
  if (opt.tiles) {
    std::fprintf(stderr, "--tiles: configure with -DATTN_BENCH_TILE_SWEEP=ON\n");
    ++failures;
  }
#endif
  if (opt.page_size > 0) {
    const auto geomean = [](const std::vector<double>& x) {
      double log_sum = 0.0;
      for (double v : x) log_sum += std::log(v);
      return x.empty() ? 0.0 : std::exp(log_sum / static_cast<double>(x.size()));
    };
    const auto minimum = [](const std::vector<double>& x) {
      return x.empty() ? 0.0 : *std::min_element(x.begin(), x.end());
    };
    std::printf(
        "# paged / dense speed, geometric mean (min) over the cells: old %.3f (%.3f) over %zu, "
        "ws %.3f (%.3f) over %zu, routed %.3f (%.3f) over %zu\n",
        geomean(paged_speeds.old_over_dense), minimum(paged_speeds.old_over_dense),
        paged_speeds.old_over_dense.size(), geomean(paged_speeds.ws_over_dense),
        minimum(paged_speeds.ws_over_dense), paged_speeds.ws_over_dense.size(),
        geomean(paged_speeds.routed_over_dense), minimum(paged_speeds.routed_over_dense),
        paged_speeds.routed_over_dense.size());
  }
  for (void* ptr : {buf.q, buf.k, buf.v, buf.o}) cudaFree(ptr);
  cudaFree(buf.lse);
  cudaFree(table);
  cudaFree(seqlens);
  cudaFree(cu_seqlens);
  return failures == 0 ? 0 : 1;
}

// One launch of --ws-variants' interleaved timing: its label, its launch, and per round its
// times (ms, "sync" and "queued", see TimeInterleaved), the host's microseconds inside the launch
// call, and the largest difference of its o from the routed kernel's.
struct WsEntry {
  WsEntry(std::string label, std::function<absl::Status()> launch)
      : label(std::move(label)), launch(std::move(launch)) {}
  std::string label;
  std::function<absl::Status()> launch;
  std::vector<float> sync, queued, host_us;
  double diff = 0.0;
};

// Rounds of `entries` (each launched and checked once before): every round launches each entry
// once, starting one entry further each round, timed two ways. "sync" as MedianMs times: the GPU
// idle when the start event is recorded, so the host's work inside the launch call (params
// checked, tensor maps encoded, the launch itself) is inside the time, as it is for a lone launch
// on an idle GPU. "queued" as sdpa_peer.py's triton.testing.do_bench times its peers: a 256 MiB
// memset (the L2 flushed) before each launch, the start event queued behind it and nothing
// synchronized until the round's end, so the host enqueues the launch while the GPU runs the
// memset and the time is the GPU's alone, from a cold L2. Returns false if a launch failed.
// (Only --ws-variants builds, ATTN_BENCH_WS_VARIANTS, call it.)
[[maybe_unused]] bool TimeInterleaved(std::vector<WsEntry>& entries) {
  constexpr int kRounds = 15;
  constexpr size_t kFlushBytes = size_t{256} << 20;
  static void* flush = nullptr;
  if (flush == nullptr && !Check(cudaMalloc(&flush, kFlushBytes), "cudaMalloc flush")) return false;
  const size_t n = entries.size();
  std::vector<cudaEvent_t> start(n), stop(n);
  for (size_t e = 0; e < n; ++e) {
    cudaEventCreate(&start[e]);
    cudaEventCreate(&stop[e]);
  }
  bool ok = true;
  for (int round = 0; round < kRounds && ok; ++round) {
    for (size_t j = 0; j < n && ok; ++j) {
      WsEntry& e = entries[(j + round) % n];
      ok = Check(cudaDeviceSynchronize(), "sync");
      cudaEventRecord(start[0]);
      const auto t0 = std::chrono::steady_clock::now();
      ok = ok && e.launch().ok();
      const auto t1 = std::chrono::steady_clock::now();
      cudaEventRecord(stop[0]);
      ok = ok && Check(cudaEventSynchronize(stop[0]), "sync");
      float t = 0.f;
      cudaEventElapsedTime(&t, start[0], stop[0]);
      e.sync.push_back(t);
      e.host_us.push_back(std::chrono::duration<float, std::micro>(t1 - t0).count());
    }
    for (size_t j = 0; j < n && ok; ++j) {
      const size_t at = (j + round) % n;
      cudaMemsetAsync(flush, 0, kFlushBytes);
      cudaEventRecord(start[at]);
      ok = entries[at].launch().ok();
      cudaEventRecord(stop[at]);
    }
    ok = ok && Check(cudaDeviceSynchronize(), "queued round");
    for (size_t e = 0; e < n && ok; ++e) {
      float t = 0.f;
      cudaEventElapsedTime(&t, start[e], stop[e]);
      entries[e].queued.push_back(t);
    }
  }
  for (size_t e = 0; e < n; ++e) {
    cudaEventDestroy(start[e]);
    cudaEventDestroy(stop[e]);
  }
  return ok;
}

bool TimeWs(const std::string& dt, const AttentionParams& p, double ms, double tflops,
            bool variants, const std::string& only, FILE* json) {
  const int64_t count = int64_t{p.batch} * p.seqlen_q * p.q_heads * p.head_dim;
  std::vector<uint16_t> routed(count), ws(count);
  if (!Check(cudaDeviceSynchronize(), "routed kernel") ||
      !Check(cudaMemcpy(routed.data(), p.o, count * 2, cudaMemcpyDeviceToHost), "copy o")) {
    return false;
  }
  const auto value = [&](uint16_t x) {
    return p.dtype == DType::kFloat16 ? HalfToFloat(x) : BFloat16ToFloat(x);
  };
  // One configuration: run once and compare with the routed kernel's o, then time it.
  const auto time_one = [&](const std::string& label, const auto& launch) {
    absl::Status status = launch();
    if (absl::IsUnimplemented(status)) {  // a cell the kernel does not cover (e.g. d = 256)
      std::printf("| %s | %d | %d | %d | %d | %d | %.3f | %.1f | - | - | - | - | %s: %s |\n",
                  dt.c_str(), p.head_dim, p.causal ? 1 : 0, p.seqlen_q, p.batch, p.q_heads, ms,
                  tflops, label.c_str(), std::string(status.message()).c_str());
      return true;
    }
    if (status.ok() && Check(cudaDeviceSynchronize(), "ws kernel") &&
        Check(cudaMemcpy(ws.data(), p.o, count * 2, cudaMemcpyDeviceToHost), "copy o")) {
      const double ms_ws = MedianMs([&] { status = launch(); });
      if (status.ok() && Check(cudaDeviceSynchronize(), "ws kernel")) {
        double max_diff = 0.0;
        for (int64_t i = 0; i < count; ++i) {
          const double diff = std::fabs(double{value(ws[i])} - value(routed[i]));
          max_diff = std::isnan(diff) ? INFINITY : std::max(max_diff, diff);
        }
        std::printf(
            "| %s | %d | %d | %d | %d | %d | %.3f | %.1f | %.3f | %.1f | %.3f | %.2e | %s |\n",
            dt.c_str(), p.head_dim, p.causal ? 1 : 0, p.seqlen_q, p.batch, p.q_heads, ms, tflops,
            ms_ws, tflops * ms / ms_ws, ms / ms_ws, max_diff, label.c_str());
        if (json != nullptr) {
          std::fprintf(json,
                       "{\"kind\": \"ws\", \"config\": \"%s\", \"dtype\": \"%s\", \"d\": %d, "
                       "\"causal\": %s, \"seqlen\": %d, \"batch\": %d, \"heads\": %d, "
                       "\"ms_routed\": %.4f, \"ms_ws\": %.4f, \"ws_over_routed\": %.4f, "
                       "\"max_abs_diff\": %.3e, \"varlen\": %s}\n",
                       label.c_str(), dt.c_str(), p.head_dim, p.causal ? "true" : "false",
                       p.seqlen_q, p.batch, p.q_heads, ms, ms_ws, ms / ms_ws, max_diff,
                       p.is_varlen() ? "true" : "false");
        }
        std::fflush(stdout);
        return true;
      }
    }
    std::fprintf(stderr, "ws %s %s d=%d causal=%d seqlen=%d: %s\n", label.c_str(), dt.c_str(),
                 p.head_dim, p.causal ? 1 : 0, p.seqlen_q, status.ToString().c_str());
    return false;
  };
  bool ok = time_one("default", [&] { return RunFlashFwdSm90Ws(p, nullptr); });
#ifdef ATTN_BENCH_WS_VARIANTS
  if (!variants || p.dtype != DType::kBFloat16) return ok;
  // Every compiled configuration of this bucket (bf16), persistent and one block per tile, each
  // launched as RunFlashFwdSm90Ws launches the default (schedule and maps built per launch),
  // timed interleaved with the routed launch, the default and the default once more (the drift
  // between two timings of one configuration bounds what a variant's difference can tell).
  const int bucket = p.head_dim <= 64 ? 64 : p.head_dim <= 128 ? 128 : 256;
  std::vector<WsEntry> entries;
  entries.push_back({"routed", [&] { return RunAttention(p, nullptr, nullptr); }});
  entries.push_back({"default", [&] { return RunFlashFwdSm90Ws(p, nullptr); }});
  for (const WsVariant& v : WsVariants()) {
    if (v.head_dim != bucket) continue;
    if (!only.empty() && ("," + only + ",").find("," + v.Label() + ",") == std::string::npos) {
      continue;
    }
    for (const bool persistent : {true, false}) {
      // Two Q buffers, the prefetch, the overlap and the snake / fold schedules act only between
      // the query tiles of a persistent block: with one block per tile they would time the same
      // work again.
      if (!persistent &&
          (v.config.q_buffers == 2 || v.config.prefetch_next || v.config.overlap_next_s ||
           v.config.snake || v.config.fold || v.config.pair_major)) {
        continue;
      }
      entries.push_back({v.Label() + (persistent ? " persistent" : " grid"), [&p, &v, persistent] {
                           AttentionParams q = p;
                           Normalize(q);
                           ClampWindow(q.seqlen_q, q.seqlen_k, q.window_left, q.window_right);
                           if (absl::Status s = CheckFlashFwdSm90Ws(q); !s.ok()) return s;
                           FwdSm90WsArgs args;
                           if (absl::Status s = MakeFwdSm90WsArgs(q, v.config, persistent, args);
                               !s.ok()) {
                             return s;
                           }
                           const cudaError_t err = (q.causal ? v.causal : v.dense)(args, nullptr);
                           return err == cudaSuccess ? absl::OkStatus()
                                                     : absl::InternalError(cudaGetErrorString(err));
                         }});
    }
  }
  entries.push_back({"default again", [&] { return RunFlashFwdSm90Ws(p, nullptr); }});
  // Each launched once and checked against the routed kernel's o.
  std::vector<WsEntry> timed;
  for (WsEntry& e : entries) {
    const absl::Status status = e.launch();
    if (absl::IsUnimplemented(status)) continue;
    if (!status.ok() || !Check(cudaDeviceSynchronize(), "ws kernel") ||
        !Check(cudaMemcpy(ws.data(), p.o, count * 2, cudaMemcpyDeviceToHost), "copy o")) {
      std::fprintf(stderr, "ws %s %s d=%d causal=%d seqlen=%d: %s\n", e.label.c_str(), dt.c_str(),
                   p.head_dim, p.causal ? 1 : 0, p.seqlen_q, status.ToString().c_str());
      ok = false;
      continue;
    }
    for (int64_t i = 0; i < count; ++i) {
      const double diff = std::fabs(double{value(ws[i])} - value(routed[i]));
      e.diff = std::isnan(diff) ? INFINITY : std::max(e.diff, diff);
    }
    timed.push_back(std::move(e));
  }
  if (!TimeInterleaved(timed)) {
    std::fprintf(stderr, "ws interleaved %s d=%d causal=%d seqlen=%d: a launch failed\n",
                 dt.c_str(), p.head_dim, p.causal ? 1 : 0, p.seqlen_q);
    return false;
  }
  const auto median = [](std::vector<float> t) {
    std::sort(t.begin(), t.end());
    return double{t[t.size() / 2]};
  };
  double default_sync = 0.0, default_queued = 0.0;
  for (const WsEntry& e : timed) {
    if (e.label == "default") {
      default_sync = median(e.sync);
      default_queued = median(e.queued);
    }
  }
  const double flop_ms = tflops * ms;  // TFLOP/s x ms of the cell's work
  for (const WsEntry& e : timed) {
    const double sync = median(e.sync), queued = median(e.queued), host = median(e.host_us);
    std::printf(
        "| il | %s | %d | %d | %d | %s | %.4f | %.1f | %.4f | %.1f | %.3f | %.3f | %.1f | %.2e |\n",
        dt.c_str(), p.head_dim, p.causal ? 1 : 0, p.seqlen_q, e.label.c_str(), sync, flop_ms / sync,
        queued, flop_ms / queued, default_queued / queued, default_sync / sync, host, e.diff);
    if (json != nullptr) {
      std::fprintf(json,
                   "{\"kind\": \"ws_il\", \"config\": \"%s\", \"dtype\": \"%s\", \"d\": %d, "
                   "\"causal\": %s, \"seqlen\": %d, \"batch\": %d, \"heads\": %d, "
                   "\"ms_sync\": %.5f, \"ms_queued\": %.5f, \"tflops_sync\": %.2f, "
                   "\"tflops_queued\": %.2f, \"speed_queued\": %.4f, \"speed_sync\": %.4f, "
                   "\"host_us\": %.2f, \"rounds\": %zu, \"max_abs_diff\": %.3e, \"varlen\": %s}\n",
                   e.label.c_str(), dt.c_str(), p.head_dim, p.causal ? "true" : "false", p.seqlen_q,
                   p.batch, p.q_heads, sync, queued, flop_ms / sync, flop_ms / queued,
                   default_queued / queued, default_sync / sync, host, e.sync.size(), e.diff,
                   p.is_varlen() ? "true" : "false");
    }
  }
  std::fflush(stdout);
#else
  static_cast<void>(only);
  if (variants) {
    std::fprintf(stderr, "--ws-variants: configure with -DATTN_BENCH_WS_VARIANTS=ON\n");
    ok = false;
  }
#endif
  return ok;
}

// Peak device memory of one 131072-token sequence, 16 heads, head_dim 128, bf16, with LSE: the
// device memory in use after the runs minus before the allocations, against inputs + outputs +
// LSE. The difference is the fixed workspace (the kernel allocates nothing; what remains is the
// runtime's per-launch reservations, e.g. local memory).
int RunMemory(FILE* json) {
  const int seqlen = 131072, heads = 16, d = 128;
  if (!Check(cudaFree(nullptr), "context")) return 1;
  size_t free_before = 0, total = 0;
  cudaMemGetInfo(&free_before, &total);
  const int64_t tensor_bytes = int64_t{seqlen} * heads * d * 2;
  const int64_t lse_bytes = int64_t{seqlen} * heads * 4;
  Buffers buf;
  for (void** ptr : {&buf.q, &buf.k, &buf.v, &buf.o}) {
    if (!Check(cudaMalloc(ptr, tensor_bytes), "cudaMalloc")) return 1;
  }
  if (!Check(cudaMalloc(reinterpret_cast<void**>(&buf.lse), lse_bytes), "cudaMalloc")) return 1;
  for (int i = 0; i < 3; ++i) {
    if (!FillRandom(i == 0   ? buf.q
                    : i == 1 ? buf.k
                             : buf.v,
                    tensor_bytes / 2, DType::kBFloat16, 10 + i)) {
      return 1;
    }
  }
  int failures = 0;
  std::printf("\n# one sequence of %d tokens, %d heads, head_dim %d, bf16, with LSE\n", seqlen,
              heads, d);
  double ms[2] = {0, 0};
  for (int c : {0, 1}) {
    const AttentionParams p = MakeParams(DType::kBFloat16, 1, seqlen, heads, d, c != 0, buf);
    absl::Status status;
    ms[c] = MedianMs([&] { status = RunAttention(p, nullptr, nullptr); });
    if (!status.ok() || !Check(cudaDeviceSynchronize(), "kernel")) {
      std::fprintf(stderr, "128k run failed: %s\n", status.ToString().c_str());
      ++failures;
    }
    std::printf("causal=%d: %.2f ms, %.1f TFLOP/s\n", c, ms[c],
                Tflops(1, heads, seqlen, d, c != 0, ms[c]));
  }
  size_t free_after = 0;
  cudaMemGetInfo(&free_after, &total);
  const int64_t used = static_cast<int64_t>(free_before) - static_cast<int64_t>(free_after);
  const int64_t io = 4 * tensor_bytes + lse_bytes;
  std::printf(
      "inputs q,k,v %.1f MiB + output o %.1f MiB + lse %.1f MiB = %.1f MiB; device "
      "memory in use %.1f MiB; fixed workspace %.1f MiB; workspace from "
      "WorkspaceBytes %zu\n",
      3 * tensor_bytes / 1048576.0, tensor_bytes / 1048576.0, lse_bytes / 1048576.0, io / 1048576.0,
      used / 1048576.0, (used - io) / 1048576.0,
      WorkspaceBytes(MakeParams(DType::kBFloat16, 1, seqlen, heads, d, false, buf)));
  if (json != nullptr) {
    std::fprintf(json,
                 "{\"kind\": \"memory\", \"seqlen\": %d, \"heads\": %d, \"d\": %d, "
                 "\"io_bytes\": %lld, \"used_bytes\": %lld, \"ms_dense\": %.3f, "
                 "\"ms_causal\": %.3f}\n",
                 seqlen, heads, d, static_cast<long long>(io), static_cast<long long>(used), ms[0],
                 ms[1]);
  }
  for (void* ptr : {buf.q, buf.k, buf.v, buf.o}) cudaFree(ptr);
  cudaFree(buf.lse);
  return failures == 0 ? 0 : 1;
}

int Main(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (arg == "--dtype") {
      opt.dtypes = Words(value());
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
    } else if (arg == "--memory") {
      opt.memory = true;
    } else if (arg == "--ws") {
      opt.ws = true;
    } else if (arg == "--ws-variants") {
      opt.ws = opt.ws_variants = true;
    } else if (arg == "--ws-only") {
      opt.ws_only = value();
    } else if (arg == "--fp8-variants") {
      opt.fp8_variants = true;
    } else if (arg == "--varlen") {
      opt.varlen = true;
    } else if (arg == "--paged") {
      opt.page_size = std::atoi(value().c_str());
    } else {
      std::fprintf(stderr, "unknown argument %s (see the header of attention_kernel_bench.cc)\n",
                   arg.c_str());
      return 2;
    }
  }
  if (opt.varlen && opt.page_size > 0) {
    std::fprintf(stderr,
                 "--varlen and --paged exclude each other (paged K/V has no cu_seqlens_k)\n");
    return 2;
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "attention_kernel_bench: no CUDA device\n");
    return 77;
  }
  FILE* json = opt.json.empty() ? nullptr : std::fopen(opt.json.c_str(), "a");
  int rc = RunGrid(opt, json);
  if (opt.memory) rc |= RunMemory(json);
  if (json != nullptr) std::fclose(json);
  return rc;
}

}  // namespace
}  // namespace attention::cuda::bench

int main(int argc, char** argv) { return attention::cuda::bench::Main(argc, argv); }
