// Benchmark of the decode kernel (kernels/cuda/flash_decode.h): K+V bytes read per second on
// issue 21's grid (q_len 1, GQA 32/8, head_dim 128, bf16; batch x kv_len 128x2k, 32x8k, 8x32k,
// 2x128k, 1x8k, 1x32k, 1x128k) with dense K/V (one page per sequence, the stateless call's
// layout [batch, kv_len, kv_heads, d]), with pages of 64 keys in random order, and with dense K/V
// in the peers' head-major layout [batch, kv_heads, kv_len, d] ("dense_hm", what sdpa_peer.py
// hands cuDNN and FA2); pages of 16 .. 256 keys at 32 x 8k; and the device's copy bandwidth (a
// device-to-device cudaMemcpy of 1 GiB, counting bytes read and written), the ceiling the bars
// are stated against.
//
// Timing follows triton.testing.do_bench, which shared/peers/sdpa_peer.py --decode uses for
// cuDNN and FA2: before every timed call a 256 MB buffer is overwritten (so K/V never sit in L2
// from the previous call), each call is timed alone with CUDA events, and the median of the
// repeats is reported. K/V hold random bf16 values (never zeros).
//
// Kernel variants (kDecodeVariants in kernels/cuda/decode_heuristics.h, compiled into a bf16
// head-dim-128 file of their own with -DATTN_BENCH_DECODE_VARIANTS=ON) and split counts are
// compared side by side: each row's K/V are filled once, and every repeat times each (variant,
// split count) configuration in turn after its own flush, so that clock or thermal drift over the
// run moves every configuration alike. The table gives each configuration's ratio to the row's
// first one. The fourth session's candidates (bench/cuda/decode_notes.md, v3): --variants
// base,prev,pcache,pcache_1slot,fused,fused_pcache,fused_pcache_1slot,rotate,fused_pcache_rotate
// (prev: the production kernel of device call 4, the same as base until base's flags change).
//
//   decode_bench [--reps N] [--json FILE] [--splits N] [--deterministic]
//                [--variants all|NAME,NAME,...] [--splits-list N,N,...] [--rows BxLEN,...]
//                [--grid BxLEN,...] [--page-sizes N,...]
//
// --variants: the variants to time (by name; `all` = every compiled one; default: base only).
// --splits-list: split counts to time for each variant (0 = the heuristic; default: --splits).
// --rows: only these rows of the grid, e.g. 1x8k,1x32k (every layout of them).
// --grid BxLEN,...: these batch x kv_len rows instead of issue 21's grid (LEN in k = 1024
// keys), each as dense, dense_hm and paged with every size of --page-sizes (default 64).
// Example, the batch-1 split sweep: --grid 1x2k,1x4k,1x8k --page-sizes 16,64 --splits-list 0,8,16
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/flash_decode.h"
#include "kernels/dtype.h"

namespace attention::cuda::bench {
namespace {

constexpr int kQHeads = 32;
constexpr int kKvHeads = 8;
constexpr int kHeadDim = 128;

bool Check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return true;
  std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(err));
  return false;
}

struct Options {
  int reps = 50;
  const char* json = nullptr;
  DecodeOptions decode;
  std::vector<int> variants = {0};        // indices of kDecodeVariants
  std::vector<int> splits = {-1};         // -1: decode.num_splits
  std::vector<std::string> rows;          // "1x8k" filters; empty = all
  std::vector<std::pair<int, int>> grid;  // --grid: (batch, kv_len) rows; empty = issue 21's
  std::vector<int> page_sizes = {64};     // --page-sizes: the paged layouts of every grid row
};

// One timed configuration of a row.
struct Config {
  int variant = 0;
  DecodeOptions decode;
};

std::vector<Config> Configs(const Options& opt) {
  std::vector<Config> configs;
  for (int v : opt.variants) {
    for (int s : opt.splits) {
      Config c;
      c.variant = v;
      c.decode = opt.decode;
      c.decode.variant = v;
      if (s >= 0) c.decode.num_splits = s;
      configs.push_back(c);
    }
  }
  return configs;
}

std::vector<std::string> SplitList(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

// Fills `bytes` of device memory with random bf16 N(0, 1) values: one 64 MB host block, copied
// over and over (K and V need no more entropy than that to stay away from the zero fast paths).
bool FillRandom(void* dst, size_t bytes) {
  static std::vector<uint16_t> block = [] {
    std::vector<uint16_t> b(32u << 20);
    std::mt19937_64 rng(12345);
    std::normal_distribution<float> normal(0.f, 1.f);
    for (uint16_t& x : b) x = FloatToBFloat16(normal(rng));
    return b;
  }();
  const size_t block_bytes = block.size() * sizeof(uint16_t);
  for (size_t off = 0; off < bytes; off += block_bytes) {
    const size_t n = std::min(block_bytes, bytes - off);
    if (!Check(cudaMemcpy(static_cast<char*>(dst) + off, block.data(), n, cudaMemcpyHostToDevice),
               "cudaMemcpy")) {
      return false;
    }
  }
  return true;
}

// Median milliseconds of `reps` calls of each of `n` functions (run(i) calls function i), the
// functions taking turns within each repeat, every call after overwriting `flush`.
template <typename Run>
std::vector<double> MedianMsInterleaved(int n, int reps, void* flush, size_t flush_bytes,
                                        Run&& run) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int i = 0; i < n; ++i) {
    for (int w = 0; w < 3; ++w) run(i);  // warm-up
  }
  std::vector<std::vector<float>> ms(n, std::vector<float>(reps));
  for (int r = 0; r < reps; ++r) {
    for (int i = 0; i < n; ++i) {
      cudaMemsetAsync(flush, (r * n + i) & 0xff, flush_bytes);
      cudaEventRecord(start);
      run(i);
      cudaEventRecord(stop);
      cudaEventSynchronize(stop);
      cudaEventElapsedTime(&ms[i][r], start, stop);
    }
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::vector<double> median(n);
  for (int i = 0; i < n; ++i) {
    std::sort(ms[i].begin(), ms[i].end());
    median[i] = ms[i][reps / 2];
  }
  return median;
}

template <typename Run>
double MedianMs(int reps, void* flush, size_t flush_bytes, Run&& run) {
  return MedianMsInterleaved(1, reps, flush, flush_bytes, [&](int) { run(); })[0];
}

struct Row {
  std::string layout;  // "dense", "dense_hm" or "paged<size>"
  int batch;
  int kv_len;
  int page_size;            // 0 = dense
  bool head_major = false;  // dense K/V as [batch, kv_heads, kv_len, d]
};

struct Result {
  double ms = 0;
  double tbps = 0;
  int splits = 0;
  bool ok = false;
  std::string error;
};

// Times every configuration of `configs` on `row`; a result per configuration.
std::vector<Result> RunRow(const Row& row, const std::vector<Config>& configs, int reps,
                           void* flush, size_t flush_bytes) {
  std::vector<Result> results(configs.size());
  const int64_t row_elems = int64_t{kKvHeads} * kHeadDim;
  const int64_t kv_rows = int64_t{row.batch} * row.kv_len;
  const size_t kv_bytes = static_cast<size_t>(kv_rows * row_elems * 2);
  void *q = nullptr, *o = nullptr, *k = nullptr, *v = nullptr, *ws = nullptr;
  void *table = nullptr, *seqlens = nullptr;
  const size_t q_bytes = size_t{2} * row.batch * kQHeads * kHeadDim;
  if (!Check(cudaMalloc(&q, q_bytes), "cudaMalloc q") ||
      !Check(cudaMalloc(&o, q_bytes), "cudaMalloc o") ||
      !Check(cudaMalloc(&k, kv_bytes), "cudaMalloc k") ||
      !Check(cudaMalloc(&v, kv_bytes), "cudaMalloc v") || !FillRandom(q, q_bytes) ||
      !FillRandom(k, kv_bytes) || !FillRandom(v, kv_bytes)) {
    return results;
  }

  AttentionParams p;
  p.kind = row.page_size > 0 ? WorkKind::kPagedDecode : WorkKind::kForward;
  p.dtype = DType::kBFloat16;
  p.batch = row.batch;
  p.seqlen_q = 1;
  p.seqlen_k = row.kv_len;
  p.q_heads = kQHeads;
  p.kv_heads = kKvHeads;
  p.head_dim = kHeadDim;
  p.softmax_scale = 0.08838834764831845f;  // 1 / sqrt(128)
  SetContiguousStrides(p);
  if (row.head_major) {
    // sdpa_peer.py's layout for cuDNN and FA2 (k = [b, 8, kv_len, 128]): each head's keys are
    // contiguous, where the contract's [b, kv_len, 8, 128] interleaves the heads' 256-byte rows.
    p.k_row_stride = p.v_row_stride = kHeadDim;
    p.k_head_stride = p.v_head_stride = int64_t{row.kv_len} * kHeadDim;
  }
  p.q = q;
  p.o = o;
  p.k = k;
  p.v = v;
  if (row.page_size > 0) {
    // Pages of `page_size` keys, in a random order over the whole pool.
    const int pages_per_seq = (row.kv_len + row.page_size - 1) / row.page_size;
    std::vector<int32_t> order(int64_t{row.batch} * pages_per_seq);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), std::mt19937_64(row.page_size));
    std::vector<int32_t> lens(row.batch, row.kv_len);
    if (!Check(cudaMalloc(&table, order.size() * 4), "cudaMalloc table") ||
        !Check(cudaMalloc(&seqlens, lens.size() * 4), "cudaMalloc seqlens") ||
        !Check(cudaMemcpy(table, order.data(), order.size() * 4, cudaMemcpyHostToDevice),
               "cudaMemcpy table") ||
        !Check(cudaMemcpy(seqlens, lens.data(), lens.size() * 4, cudaMemcpyHostToDevice),
               "cudaMemcpy seqlens")) {
      return results;
    }
    p.page_table = static_cast<const int32_t*>(table);
    p.page_table_stride = pages_per_seq;
    p.page_size = row.page_size;
    p.seqlens_k = static_cast<const int32_t*>(seqlens);
    p.k_batch_stride = p.v_batch_stride = int64_t{row.page_size} * row_elems;
  }
  size_t ws_bytes = 0;
  for (const Config& c : configs) ws_bytes = std::max(ws_bytes, DecodeWorkspaceBytes(p, c.decode));
  if (ws_bytes > 0 && !Check(cudaMalloc(&ws, ws_bytes), "cudaMalloc workspace")) return results;
  // A configuration this build or shape cannot run is reported and left out of the timing.
  std::vector<int> runnable;
  for (size_t i = 0; i < configs.size(); ++i) {
    results[i].splits = DecodeNumSplits(p, configs[i].decode);
    const absl::Status s = RunFlashDecode(p, configs[i].decode, ws, nullptr);
    if (s.ok()) {
      runnable.push_back(static_cast<int>(i));
    } else {
      results[i].error = s.ToString();
    }
  }
  std::vector<absl::Status> status(configs.size());
  const std::vector<double> ms =
      MedianMsInterleaved(static_cast<int>(runnable.size()), reps, flush, flush_bytes, [&](int j) {
        const int i = runnable[j];
        if (status[i].ok()) status[i] = RunFlashDecode(p, configs[i].decode, ws, nullptr);
      });
  const bool synced = Check(cudaDeviceSynchronize(), "decode");
  for (size_t j = 0; j < runnable.size(); ++j) {
    Result& r = results[runnable[j]];
    r.ms = ms[j];
    r.ok = synced && status[runnable[j]].ok();
    if (!status[runnable[j]].ok()) r.error = status[runnable[j]].ToString();
    r.tbps = 2.0 * kv_bytes / (r.ms * 1e-3) / 1e12;
  }
  for (void* ptr : {q, o, k, v, ws, table, seqlens}) {
    cudaFree(ptr);
  }
  return results;
}

std::string RowName(const Row& row) {
  return std::to_string(row.batch) + "x" + std::to_string(row.kv_len / 1024) + "k";
}

// Device-to-device copy bandwidth (bytes read + bytes written per second), 1 GiB, median of 20.
double CopyTBps(void* flush, size_t flush_bytes) {
  const size_t bytes = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  if (!Check(cudaMalloc(&a, bytes), "cudaMalloc") || !Check(cudaMalloc(&b, bytes), "cudaMalloc") ||
      !FillRandom(a, bytes)) {
    return 0;
  }
  const double ms = MedianMs(20, flush, flush_bytes,
                             [&] { cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice); });
  cudaFree(a);
  cudaFree(b);
  return 2.0 * bytes / (ms * 1e-3) / 1e12;
}

int Main(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--reps" && i + 1 < argc) {
      opt.reps = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--json" && i + 1 < argc) {
      opt.json = argv[++i];
    } else if (arg == "--splits" && i + 1 < argc) {
      opt.decode.num_splits = std::atoi(argv[++i]);
    } else if (arg == "--deterministic") {
      opt.decode.deterministic = true;
    } else if (arg == "--variants" && i + 1 < argc) {
      opt.variants.clear();
      const std::string list = argv[++i];
      for (const std::string& name : SplitList(list)) {
        for (int v = 0; v < kDecodeNumVariants; ++v) {
          if (name == "all" || name == kDecodeVariants[v].name) opt.variants.push_back(v);
        }
        if (name != "all" &&
            (opt.variants.empty() || kDecodeVariants[opt.variants.back()].name != name)) {
          std::fprintf(stderr, "decode_bench: unknown variant %s; known:", name.c_str());
          for (const DecodeVariant& v : kDecodeVariants) std::fprintf(stderr, " %s", v.name);
          std::fprintf(stderr, "\n");
          return 2;
        }
      }
      if (!DecodeVariantsCompiled() &&
          std::any_of(opt.variants.begin(), opt.variants.end(), [](int v) { return v > 0; })) {
        std::fprintf(stderr,
                     "decode_bench: the candidate kernels are not in this build (configure with "
                     "-DATTN_BENCH_DECODE_VARIANTS=ON)\n");
        return 2;
      }
    } else if (arg == "--splits-list" && i + 1 < argc) {
      opt.splits.clear();
      for (const std::string& n : SplitList(argv[++i])) opt.splits.push_back(std::atoi(n.c_str()));
    } else if (arg == "--rows" && i + 1 < argc) {
      opt.rows = SplitList(argv[++i]);
    } else if (arg == "--grid" && i + 1 < argc) {
      for (const std::string& item : SplitList(argv[++i])) {
        const size_t x = item.find('x');
        const int batch = x == std::string::npos ? 0 : std::atoi(item.c_str());
        const int len = x == std::string::npos ? 0 : std::atoi(item.c_str() + x + 1) * 1024;
        if (batch <= 0 || len <= 0) {
          std::fprintf(stderr, "decode_bench: --grid wants BxLEN items (LEN in k), got %s\n",
                       item.c_str());
          return 2;
        }
        opt.grid.emplace_back(batch, len);
      }
    } else if (arg == "--page-sizes" && i + 1 < argc) {
      opt.page_sizes.clear();
      for (const std::string& n : SplitList(argv[++i])) {
        opt.page_sizes.push_back(std::atoi(n.c_str()));
      }
    } else {
      std::fprintf(stderr,
                   "usage: decode_bench [--reps N] [--json FILE] [--splits N] [--deterministic]\n"
                   "                    [--variants all|NAME,...] [--splits-list N,...] "
                   "[--rows BxLEN,...]\n"
                   "                    [--grid BxLEN,...] [--page-sizes N,...]\n");
      return 2;
    }
  }
  if (opt.variants.empty() || opt.splits.empty()) {
    std::fprintf(stderr, "decode_bench: --variants and --splits-list must name something\n");
    return 2;
  }
  const std::vector<Config> configs = Configs(opt);
  int device = 0;
  cudaDeviceProp prop;
  if (!Check(cudaGetDevice(&device), "cudaGetDevice") ||
      !Check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties")) {
    return 1;
  }
  std::printf("# device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount,
              prop.l2CacheSize >> 20);
  const size_t flush_bytes = size_t{256} << 20;
  void* flush = nullptr;
  if (!Check(cudaMalloc(&flush, flush_bytes), "cudaMalloc flush")) return 1;
  const double copy = CopyTBps(flush, flush_bytes);
  std::printf("# copy bandwidth (read + write): %.3f TB/s\n", copy);

  std::vector<Row> rows;
  const bool issue_grid = opt.grid.empty();
  const std::vector<std::pair<int, int>> grid =
      issue_grid
          ? std::vector<std::pair<int, int>>{{128, 2048}, {32, 8192}, {8, 32768}, {2, 131072},
                                             {1, 8192},   {1, 32768}, {1, 131072}}
          : opt.grid;
  for (const auto& [batch, len] : grid) {
    rows.push_back({"dense", batch, len, 0});
    for (int ps : opt.page_sizes) rows.push_back({"paged" + std::to_string(ps), batch, len, ps});
    rows.push_back({"dense_hm", batch, len, 0, true});
  }
  if (issue_grid) {
    for (int ps : {16, 32, 128, 256}) {
      rows.push_back({"paged" + std::to_string(ps), 32, 8192, ps});
    }
  }
  if (!opt.rows.empty()) {
    std::vector<Row> kept;
    for (const Row& row : rows) {
      if (std::find(opt.rows.begin(), opt.rows.end(), RowName(row)) != opt.rows.end()) {
        kept.push_back(row);
      }
    }
    rows = kept;
  }

  FILE* json = opt.json != nullptr ? std::fopen(opt.json, "a") : nullptr;
  std::printf(
      "\n| layout | batch x kv_len | variant | splits | time (us) | K+V TB/s | of copy bw | "
      "/ first |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  int failures = 0;
  for (const Row& row : rows) {
    const std::vector<Result> results = RunRow(row, configs, opt.reps, flush, flush_bytes);
    for (size_t i = 0; i < configs.size(); ++i) {
      const Result& r = results[i];
      const char* variant = kDecodeVariants[configs[i].variant].name;
      if (!r.ok) {
        ++failures;
        std::printf("| %s | %d x %dk | %s | failed: %s | | | | |\n", row.layout.c_str(), row.batch,
                    row.kv_len / 1024, variant, r.error.c_str());
        continue;
      }
      const double first = results[0].ok ? results[0].tbps : 0.0;
      std::printf("| %s | %d x %dk | %s | %d | %.1f | %.3f | %.0f%% | %.3f |\n", row.layout.c_str(),
                  row.batch, row.kv_len / 1024, variant, r.splits, r.ms * 1e3, r.tbps,
                  100.0 * r.tbps / copy, first > 0 ? r.tbps / first : 0.0);
      std::fflush(stdout);
      if (json != nullptr) {
        std::fprintf(json,
                     "{\"kind\": \"decode\", \"layout\": \"%s\", \"page_size\": %d, "
                     "\"batch\": %d, \"kv_len\": %d, \"q_heads\": %d, \"kv_heads\": %d, "
                     "\"d\": %d, \"variant\": \"%s\", \"forced_splits\": %d, \"splits\": %d, "
                     "\"us\": %.2f, \"ours_TBps\": %.4f, \"copy_TBps\": %.4f}\n",
                     row.layout.c_str(), row.page_size, row.batch, row.kv_len, kQHeads, kKvHeads,
                     kHeadDim, variant, configs[i].decode.num_splits, r.splits, r.ms * 1e3, r.tbps,
                     copy);
      }
    }
  }
  if (json != nullptr) std::fclose(json);
  cudaFree(flush);
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace attention::cuda::bench

int main(int argc, char** argv) { return attention::cuda::bench::Main(argc, argv); }
