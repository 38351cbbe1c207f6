// Benchmark of the decode kernel (kernels/cuda/flash_decode.h): K+V bytes read per second on
// issue 21's grid (q_len 1, GQA 32/8, head_dim 128, bf16; batch x kv_len 128x2k, 32x8k, 8x32k,
// 2x128k, 1x8k, 1x32k, 1x128k) with dense K/V (one page per sequence, the stateless call's
// layout [batch, kv_len, kv_heads, d]) and with pages of 64 keys in random order; pages of
// 16 .. 256 keys at 32 x 8k; and the device's copy bandwidth (a device-to-device cudaMemcpy of
// 1 GiB, counting bytes read and written), the ceiling the bars are stated against.
//
// Timing follows triton.testing.do_bench, which shared/peers/sdpa_peer.py --decode uses for
// cuDNN and FA2: before every timed call a 256 MB buffer is overwritten (so K/V never sit in L2
// from the previous call), each call is timed alone with CUDA events, and the median of the
// repeats is reported. K/V hold random bf16 values (never zeros).
//
//   decode_bench [--reps N] [--json FILE] [--splits N] [--deterministic]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
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
};

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

// Median milliseconds of `reps` calls of `run`, each after overwriting `flush`.
template <typename Run>
double MedianMs(int reps, void* flush, size_t flush_bytes, Run&& run) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int i = 0; i < 3; ++i) run();  // warm-up
  std::vector<float> ms(reps);
  for (int i = 0; i < reps; ++i) {
    cudaMemsetAsync(flush, i & 0xff, flush_bytes);
    cudaEventRecord(start);
    run();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    cudaEventElapsedTime(&ms[i], start, stop);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return ms[reps / 2];
}

struct Row {
  std::string layout;  // "dense" or "paged<size>"
  int batch;
  int kv_len;
  int page_size;  // 0 = dense
};

struct Result {
  double ms = 0;
  double tbps = 0;
  int splits = 0;
  bool ok = false;
};

Result RunRow(const Row& row, const Options& opt, void* flush, size_t flush_bytes) {
  Result res;
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
    return res;
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
      return res;
    }
    p.page_table = static_cast<const int32_t*>(table);
    p.page_table_stride = pages_per_seq;
    p.page_size = row.page_size;
    p.seqlens_k = static_cast<const int32_t*>(seqlens);
    p.k_batch_stride = p.v_batch_stride = int64_t{row.page_size} * row_elems;
  }
  const size_t ws_bytes = DecodeWorkspaceBytes(p, opt.decode);
  if (ws_bytes > 0 && !Check(cudaMalloc(&ws, ws_bytes), "cudaMalloc workspace")) return res;
  res.splits = DecodeNumSplits(p, opt.decode);
  absl::Status status;
  res.ms = MedianMs(opt.reps, flush, flush_bytes, [&] {
    if (status.ok()) status = RunFlashDecode(p, opt.decode, ws, nullptr);
  });
  res.ok = status.ok() && Check(cudaDeviceSynchronize(), "decode");
  if (!status.ok()) std::fprintf(stderr, "RunFlashDecode: %s\n", status.ToString().c_str());
  res.tbps = 2.0 * kv_bytes / (res.ms * 1e-3) / 1e12;
  for (void* ptr : {q, o, k, v, ws, table, seqlens}) {
    cudaFree(ptr);
  }
  return res;
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
    } else {
      std::fprintf(stderr,
                   "usage: decode_bench [--reps N] [--json FILE] [--splits N] "
                   "[--deterministic]\n");
      return 2;
    }
  }
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
  const std::pair<int, int> grid[] = {{128, 2048}, {32, 8192}, {8, 32768}, {2, 131072},
                                      {1, 8192},   {1, 32768}, {1, 131072}};
  for (const auto& [batch, len] : grid) {
    rows.push_back({"dense", batch, len, 0});
    rows.push_back({"paged64", batch, len, 64});
  }
  for (int ps : {16, 32, 128, 256}) rows.push_back({"paged" + std::to_string(ps), 32, 8192, ps});

  FILE* json = opt.json != nullptr ? std::fopen(opt.json, "a") : nullptr;
  std::printf("\n| layout | batch x kv_len | splits | time (us) | K+V TB/s | of copy bw |\n");
  std::printf("|---|---|---|---|---|---|\n");
  int failures = 0;
  for (const Row& row : rows) {
    const Result r = RunRow(row, opt, flush, flush_bytes);
    if (!r.ok) {
      ++failures;
      std::printf("| %s | %d x %d | failed | | | |\n", row.layout.c_str(), row.batch, row.kv_len);
      continue;
    }
    std::printf("| %s | %d x %dk | %d | %.1f | %.3f | %.0f%% |\n", row.layout.c_str(), row.batch,
                row.kv_len / 1024, r.splits, r.ms * 1e3, r.tbps, 100.0 * r.tbps / copy);
    std::fflush(stdout);
    if (json != nullptr) {
      std::fprintf(json,
                   "{\"kind\": \"decode\", \"layout\": \"%s\", \"page_size\": %d, \"batch\": %d, "
                   "\"kv_len\": %d, \"q_heads\": %d, \"kv_heads\": %d, \"d\": %d, \"splits\": %d, "
                   "\"us\": %.2f, \"ours_TBps\": %.4f, \"copy_TBps\": %.4f}\n",
                   row.layout.c_str(), row.page_size, row.batch, row.kv_len, kQHeads, kKvHeads,
                   kHeadDim, r.splits, r.ms * 1e3, r.tbps, copy);
    }
  }
  if (json != nullptr) std::fclose(json);
  cudaFree(flush);
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace attention::cuda::bench

int main(int argc, char** argv) { return attention::cuda::bench::Main(argc, argv); }
