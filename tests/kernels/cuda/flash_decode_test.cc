// GPU tests of the decode kernel (flash_decode.h) and the paged append (paged_append.h) against
// the float64 reference: every page size, partial last pages, random page orders, pages shared by
// two sequences (a fork), GQA 1/4/8/16 and MQA, 1..16 query rows, causal, windows, softcap, ALiBi,
// sinks, key ranges (and partials merged back into the full result), empty contexts, dense K/V
// (one page per sequence, also packed), forced and heuristic splits, the deterministic mode, and
// the stateless RunAttention path for decode shapes; decode_bench's kernel variants
// (kDecodeVariants) on every case they take, and those that must not change the arithmetic (page
// cache, fused combine) bit for bit against the production kernel. Inputs are drawn fresh for
// every run (seed printed, ATTN_TEST_SEED to replay); outputs, LSE and workspace are poisoned
// with NaN before each launch; pool rows that hold no key of any sequence are NaN, so reading
// one shows.
//
// Exits 77 (ctest SKIP) when no CUDA device is present, so it never passes vacuously.
#include "kernels/cuda/flash_decode.h"

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "kernels/attention_params.h"
#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/flash_fwd_dispatch.h"
#include "kernels/cuda/paged_append.h"
#include "kernels/dtype.h"
#include "tests/reference/reference_attention.h"

namespace attention::cuda {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Tolerances, stated once. rel_fro: ||o - ref|| / ||ref|| over the whole output; every row must
// also meet row_factor * rel_fro against its own norm (plus abs_floor). lse_abs: absolute LSE
// error (natural log). 16-bit outputs carry one rounding of o and of P (bf16: 2^-9 relative);
// float32 is computed in float32 throughout: the bound is float32 accuracy.
struct Tolerance {
  double rel_fro;
  double row_factor;
  double abs_floor;
  double lse_abs;
};

Tolerance ToleranceFor(DType dtype) {
  switch (dtype) {
    case DType::kFloat16:
      return {5e-3, 5.0, 1e-3, 2e-3};
    case DType::kBFloat16:
      return {1e-2, 5.0, 1e-3, 2e-3};
    case DType::kFloat32:
      return {1e-5, 5.0, 1e-6, 2e-5};
    case DType::kFloat8E4M3:  // sessions refuse FP8: not run here
      break;
  }
  return {0, 0, 0, 0};
}

const char* DTypeName(DType d) {
  return d == DType::kFloat32 ? "fp32" : d == DType::kFloat16 ? "fp16" : "bf16";
}

uint64_t Seed() {
  static const uint64_t seed = [] {
    const char* env = std::getenv("ATTN_TEST_SEED");
    const uint64_t s =
        env != nullptr
            ? std::strtoull(env, nullptr, 10)
            : static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    std::printf("flash_decode_test: ATTN_TEST_SEED=%llu\n", static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

#define CUDA_OK(expr)                                                          \
  do {                                                                         \
    const cudaError_t err_ = (expr);                                           \
    ASSERT_EQ(err_, cudaSuccess) << #expr << ": " << cudaGetErrorString(err_); \
  } while (0)

// Host values of `dtype` in raw bytes.
void StoreElement(DType dtype, std::vector<uint8_t>& buf, int64_t index, double x) {
  const float f = static_cast<float>(x);
  if (dtype == DType::kFloat32) {
    std::memcpy(buf.data() + 4 * index, &f, 4);
  } else {
    const uint16_t h = dtype == DType::kFloat16 ? FloatToHalf(f) : FloatToBFloat16(f);
    std::memcpy(buf.data() + 2 * index, &h, 2);
  }
}

double Element(DType dtype, const std::vector<uint8_t>& buf, int64_t index) {
  return testing::LoadElement(dtype, buf.data(), index);
}

// Device allocations of one case, freed together.
class DeviceArena {
 public:
  DeviceArena() = default;
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;
  ~DeviceArena() {
    for (void* p : ptrs_) cudaFree(p);
  }
  // `bytes` (at least 16) of device memory filled with `fill`.
  void* Alloc(size_t bytes, int fill) {
    void* p = nullptr;
    if (cudaMalloc(&p, std::max<size_t>(bytes, 16)) != cudaSuccess) return nullptr;
    ptrs_.push_back(p);
    cudaMemset(p, fill, std::max<size_t>(bytes, 16));
    // cudaMemset may return before it is done, on the legacy default stream, which the
    // non-blocking streams the cases launch on do not wait for: a late fill overwrote partials
    // and outputs with 0xff (NaN) when other processes loaded the GPU (H100, 2026-12-06).
    cudaDeviceSynchronize();
    return p;
  }
  template <typename T>
  T* Copy(const std::vector<T>& host) {
    void* p = Alloc(host.size() * sizeof(T), 0);
    if (p != nullptr && !host.empty()) {
      cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
    }
    return static_cast<T*>(p);
  }

 private:
  std::vector<void*> ptrs_;
};

// How K/V are laid out in a case.
enum class KvLayout {
  kPaged,        // page pools and a page table (random page order)
  kDense,        // [batch, max_len, kv_heads, d] with seqlens_k, no page table
  kDensePacked,  // [total_k, kv_heads, d] with cu_seqlens_k (the stateless call's layout)
};

struct Case {
  std::string name;
  std::vector<int> lens_k;  // context length per sequence
  std::vector<int> lens_q;  // query rows per sequence: packed q when set, else q_rows for all
  int q_rows = 1;
  int q_heads = 32, kv_heads = 8, head_dim = 128;
  KvLayout layout = KvLayout::kPaged;
  int page_size = 64;
  bool fork = false;  // sequence 1 shares sequence 0's first full pages (and their keys)
  bool causal = false;
  int window_left = -1, window_right = -1;
  float softcap = 0.f;
  float scale = 0.f;  // 0: 1 / sqrt(head_dim)
  bool alibi = false;
  bool sinks = false;
  bool key_range = false;  // a random [begin, end) per sequence
  bool lse = true;
  // Split tickets in zeroed counters the launch must leave zero (DecodeOptions::zeroed_counters,
  // as the GPU executor hands them): run twice, then the counters checked.
  bool self_reset = false;
  DecodeOptions options;
  std::vector<DType> dtypes = {DType::kBFloat16, DType::kFloat16, DType::kFloat32};

  explicit Case(std::string n) : name(std::move(n)) {}
  Case& K(std::vector<int> k) {
    lens_k = std::move(k);
    return *this;
  }
  Case& Q(int rows) {
    q_rows = rows;
    return *this;
  }
  Case& PackedQ(std::vector<int> q) {
    lens_q = std::move(q);
    return *this;
  }
  Case& Heads(int q, int kv) {
    q_heads = q;
    kv_heads = kv;
    return *this;
  }
  Case& Dim(int d) {
    head_dim = d;
    return *this;
  }
  Case& Page(int size) {
    layout = KvLayout::kPaged;
    page_size = size;
    return *this;
  }
  Case& Dense(bool packed) {
    layout = packed ? KvLayout::kDensePacked : KvLayout::kDense;
    return *this;
  }
  Case& Fork() {
    fork = true;
    return *this;
  }
  Case& Causal() {
    causal = true;
    return *this;
  }
  Case& Window(int left, int right) {
    window_left = left;
    window_right = right;
    return *this;
  }
  Case& Softcap(float c) {
    softcap = c;
    return *this;
  }
  Case& Scale(float s) {
    scale = s;
    return *this;
  }
  Case& Alibi() {
    alibi = true;
    return *this;
  }
  Case& Sinks() {
    sinks = true;
    return *this;
  }
  Case& KeyRange() {
    key_range = true;
    return *this;
  }
  Case& NoLse() {
    lse = false;
    return *this;
  }
  Case& SelfReset() {
    self_reset = true;
    return *this;
  }
  Case& Splits(int n) {
    options.num_splits = n;
    return *this;
  }
  Case& Deterministic(int split_tokens) {
    options.deterministic = true;
    options.split_tokens = split_tokens;
    return *this;
  }
  Case& DTypes(std::vector<DType> d) {
    dtypes = std::move(d);
    return *this;
  }
};

// Everything one case needs on the host: per-sequence K/V rows, q, options' data, and the
// packed dense copies the reference reads.
struct HostCase {
  int batch = 0;
  int max_q = 0, max_k = 0;
  int64_t total_q = 0, total_k = 0;
  std::vector<int32_t> cu_q, cu_k;
  std::vector<uint8_t> q;                   // packed [total_q, q_heads, d]
  std::vector<uint8_t> k_packed, v_packed;  // [total_k, kv_heads, d]
  std::vector<float> slopes;                // [batch, q_heads]
  std::vector<float> sinks;                 // [q_heads] (shared by every sequence)
  std::vector<int32_t> ranges;              // [batch, 2]
};

HostCase MakeHostCase(const Case& c, DType dtype, std::mt19937_64& rng) {
  HostCase h;
  h.batch = static_cast<int>(c.lens_k.size());
  const int d = c.head_dim;
  std::vector<int> lens_q = c.lens_q;
  if (lens_q.empty()) lens_q.assign(h.batch, c.q_rows);
  h.cu_q = {0};
  h.cu_k = {0};
  for (int b = 0; b < h.batch; ++b) {
    h.cu_q.push_back(h.cu_q.back() + lens_q[b]);
    h.cu_k.push_back(h.cu_k.back() + c.lens_k[b]);
    h.max_q = std::max(h.max_q, lens_q[b]);
    h.max_k = std::max(h.max_k, c.lens_k[b]);
  }
  h.total_q = h.cu_q.back();
  h.total_k = h.cu_k.back();
  std::normal_distribution<double> normal(0.0, 1.0);
  const int64_t es = DTypeSize(dtype);
  h.q.resize(h.total_q * c.q_heads * d * es);
  for (int64_t i = 0; i < h.total_q * c.q_heads * d; ++i) StoreElement(dtype, h.q, i, normal(rng));
  h.k_packed.resize(h.total_k * c.kv_heads * d * es);
  h.v_packed.resize(h.total_k * c.kv_heads * d * es);
  for (int64_t i = 0; i < h.total_k * c.kv_heads * d; ++i) {
    StoreElement(dtype, h.k_packed, i, normal(rng));
    StoreElement(dtype, h.v_packed, i, normal(rng));
  }
  if (c.fork && h.batch >= 2) {
    // Sequence 1's first full pages are sequence 0's: the same keys and values.
    const int shared = std::min(c.lens_k[0], c.lens_k[1]) / c.page_size * c.page_size;
    const int64_t row_bytes = int64_t{c.kv_heads} * d * es;
    std::memcpy(h.k_packed.data() + h.cu_k[1] * row_bytes, h.k_packed.data(), shared * row_bytes);
    std::memcpy(h.v_packed.data() + h.cu_k[1] * row_bytes, h.v_packed.data(), shared * row_bytes);
  }
  if (c.alibi) {
    std::uniform_real_distribution<float> u(0.01f, 0.5f);
    h.slopes.resize(int64_t{h.batch} * c.q_heads);
    for (float& s : h.slopes) s = u(rng);
  }
  if (c.sinks) {
    std::uniform_real_distribution<float> u(-2.f, 6.f);
    h.sinks.resize(c.q_heads);
    for (float& s : h.sinks) s = u(rng);
  }
  if (c.key_range) {
    h.ranges.resize(2 * h.batch);
    for (int b = 0; b < h.batch; ++b) {
      std::uniform_int_distribution<int> u(0, c.lens_k[b]);
      int x = u(rng), y = u(rng);
      if (x > y) std::swap(x, y);
      h.ranges[2 * b] = x;
      h.ranges[2 * b + 1] = y;
    }
  }
  return h;
}

// The float64 reference over the packed dense copies, one task per (sequence, KV head) on all
// host threads. o: [total_q, q_heads, d]; lse: [q_heads, total_q]. Key ranges enter as a bool key
// mask; sinks are folded in afterwards (lse' = log(e^lse + e^sink), o' = o e^(lse - lse')).
void Reference(const Case& c, DType dtype, const HostCase& h, const std::vector<int32_t>& ranges,
               std::vector<double>& o, std::vector<double>& lse) {
  const int d = c.head_dim;
  const int group = c.q_heads / c.kv_heads;
  const int64_t es = DTypeSize(dtype);
  o.assign(h.total_q * c.q_heads * d, 0.0);
  lse.assign(h.total_q * c.q_heads, kNegInf);
  std::vector<uint8_t> mask;
  const int mask_cols = std::max(h.max_k, 1);
  if (!ranges.empty()) {
    mask.assign(int64_t{h.batch} * mask_cols, 0);
    for (int b = 0; b < h.batch; ++b) {
      for (int j = std::max(ranges[2 * b], 0); j < std::min(ranges[2 * b + 1], c.lens_k[b]); ++j) {
        mask[int64_t{b} * mask_cols + j] = 1;
      }
    }
  }
  std::atomic<int> next{0};
  const int tasks = h.batch * c.kv_heads;
  const auto worker = [&] {
    for (int t = next++; t < tasks; t = next++) {
      const int b = t / c.kv_heads;
      const int g = t % c.kv_heads;
      AttentionParams s;
      s.dtype = dtype;
      s.batch = 1;
      s.q_heads = group;
      s.kv_heads = 1;
      s.head_dim = d;
      s.softmax_scale = c.scale > 0.f ? c.scale : 1.f / std::sqrt(static_cast<float>(d));
      s.softcap = c.softcap;
      s.causal = c.causal;
      s.window_left = c.window_left;
      s.window_right = c.window_right;
      const int32_t cu_q[2] = {0, h.cu_q[b + 1] - h.cu_q[b]};
      const int32_t cu_k[2] = {0, h.cu_k[b + 1] - h.cu_k[b]};
      s.cu_seqlens_q = cu_q;
      s.cu_seqlens_k = cu_k;
      s.seqlen_q = cu_q[1];
      s.seqlen_k = cu_k[1];
      s.total_q = cu_q[1];
      s.total_k = cu_k[1];
      s.q = h.q.data() + (int64_t{h.cu_q[b]} * c.q_heads + g * group) * d * es;
      s.k = h.k_packed.data() + (int64_t{h.cu_k[b]} * c.kv_heads + g) * d * es;
      s.v = h.v_packed.data() + (int64_t{h.cu_k[b]} * c.kv_heads + g) * d * es;
      s.q_row_stride = s.o_row_stride = int64_t{c.q_heads} * d;
      s.q_head_stride = s.o_head_stride = d;
      s.k_row_stride = s.v_row_stride = int64_t{c.kv_heads} * d;
      s.k_head_stride = s.v_head_stride = d;
      s.lse_head_stride = h.total_q;
      if (c.alibi) {
        s.alibi = true;
        s.alibi_slopes = h.slopes.data() + int64_t{b} * c.q_heads + g * group;
      }
      if (!mask.empty()) {
        s.mask_kind = MaskKind::kBool;
        s.mask = mask.data() + int64_t{b} * mask_cols;
        s.mask_col_stride = 1;
      }
      testing::ReferenceAttention(s, o.data() + (int64_t{h.cu_q[b]} * c.q_heads + g * group) * d,
                                  lse.data() + int64_t{g} * group * h.total_q + h.cu_q[b]);
    }
  };
  const unsigned n = std::max(1u, std::min<unsigned>(std::thread::hardware_concurrency(), 64));
  std::vector<std::thread> threads;
  for (unsigned i = 0; i < n; ++i) threads.emplace_back(worker);
  for (std::thread& th : threads) th.join();
  if (!h.sinks.empty()) {
    for (int64_t row = 0; row < h.total_q; ++row) {
      for (int head = 0; head < c.q_heads; ++head) {
        double& l = lse[int64_t{head} * h.total_q + row];
        const double sink = h.sinks[head];
        const double m = std::max(l, sink);
        const double merged = m + std::log(std::exp(l - m) + std::exp(sink - m));
        const double factor = l == kNegInf ? 0.0 : std::exp(l - merged);
        for (int j = 0; j < d; ++j) o[(row * c.q_heads + head) * d + j] *= factor;
        l = merged;
      }
    }
  }
}

// One decode launch's results on the host: o as [total_q, q_heads, d] doubles, lse as
// [q_heads, total_q].
struct DecodeResult {
  std::vector<double> o;
  std::vector<double> lse;
  std::vector<uint8_t> raw_o;  // the output bytes, for bitwise comparisons
  std::vector<float> raw_lse;
};

// Builds the device layout of `c` (pools, page table or dense K/V, q), launches RunFlashDecode
// (or RunAttention when `stateless`) and reads the results back. `ranges` overrides the case's
// key ranges when not empty.
void RunDecode(const Case& c, DType dtype, const HostCase& h, const std::vector<int32_t>& ranges,
               std::mt19937_64& rng, bool stateless, DecodeResult& out) {
  const int d = c.head_dim;
  const int64_t es = DTypeSize(dtype);
  const int64_t row_elems = int64_t{c.kv_heads} * d;
  const bool packed_q = !c.lens_q.empty();
  DeviceArena arena;

  AttentionParams p;
  p.kind = stateless || c.layout != KvLayout::kPaged ? WorkKind::kForward : WorkKind::kPagedDecode;
  p.dtype = dtype;
  p.batch = h.batch;
  p.q_heads = c.q_heads;
  p.kv_heads = c.kv_heads;
  p.head_dim = d;
  p.softmax_scale = c.scale > 0.f ? c.scale : 1.f / std::sqrt(static_cast<float>(d));
  p.softcap = c.softcap;
  p.causal = c.causal;
  p.window_left = c.window_left;
  p.window_right = c.window_right;
  p.seqlen_q = h.max_q;
  p.seqlen_k = h.max_k;

  // q and o: packed [total_q, q_heads, d] or dense [batch, q_rows, q_heads, d] (the same rows).
  p.q = arena.Copy(h.q);
  const int64_t o_bytes = h.total_q * c.q_heads * d * es;
  void* d_o = arena.Alloc(o_bytes + 16, 0xff);
  p.o = d_o;
  p.q_head_stride = p.o_head_stride = d;
  p.q_row_stride = p.o_row_stride = int64_t{c.q_heads} * d;
  if (packed_q) {
    p.cu_seqlens_q = arena.Copy(h.cu_q);
    p.total_q = h.total_q;
  } else {
    p.q_batch_stride = p.o_batch_stride = p.q_row_stride * h.max_q;
  }
  float* d_lse = nullptr;
  const int64_t lse_count = h.total_q * c.q_heads;
  if (c.lse) {
    d_lse = static_cast<float*>(arena.Alloc((lse_count + 4) * sizeof(float), 0xff));
    p.lse = d_lse;
    if (packed_q) {
      p.lse_head_stride = h.total_q;
    } else {
      p.lse_batch_stride = int64_t{c.q_heads} * h.max_q;
      p.lse_head_stride = h.max_q;
    }
  }

  // K and V. Pool rows that hold no key are NaN: a kernel that reads one shows it.
  std::vector<int32_t> seqlens(c.lens_k.begin(), c.lens_k.end());
  if (c.layout == KvLayout::kPaged) {
    const int ps = c.page_size;
    std::vector<int> pages_of(h.batch);
    int total_pages = 0;
    const int shared = c.fork && h.batch >= 2 ? std::min(c.lens_k[0], c.lens_k[1]) / ps : 0;
    for (int b = 0; b < h.batch; ++b) {
      pages_of[b] = (c.lens_k[b] + ps - 1) / ps;
      total_pages += pages_of[b] - (b == 1 ? shared : 0);
    }
    total_pages += 3;  // spare pages nobody uses
    std::vector<int32_t> order(total_pages);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    const int max_pages = std::max(1, (h.max_k + ps - 1) / ps);
    std::vector<int32_t> table(int64_t{h.batch} * max_pages, -1);
    int next = 0;
    for (int b = 0; b < h.batch; ++b) {
      for (int i = 0; i < pages_of[b]; ++i) {
        table[int64_t{b} * max_pages + i] = b == 1 && i < shared ? table[i] : order[next++];
      }
    }
    std::vector<uint8_t> k_pool(int64_t{total_pages} * ps * row_elems * es, 0xff);
    std::vector<uint8_t> v_pool(k_pool.size(), 0xff);
    for (int b = 0; b < h.batch; ++b) {
      for (int j = 0; j < c.lens_k[b]; ++j) {
        const int64_t page = table[int64_t{b} * max_pages + j / ps];
        const int64_t dst = (page * ps + j % ps) * row_elems * es;
        const int64_t src = (h.cu_k[b] + j) * row_elems * es;
        std::memcpy(k_pool.data() + dst, h.k_packed.data() + src, row_elems * es);
        std::memcpy(v_pool.data() + dst, h.v_packed.data() + src, row_elems * es);
      }
    }
    p.k = arena.Copy(k_pool);
    p.v = arena.Copy(v_pool);
    p.page_table = arena.Copy(table);
    p.page_table_stride = max_pages;
    p.page_size = ps;
    p.seqlens_k = arena.Copy(seqlens);
    p.k_batch_stride = p.v_batch_stride = int64_t{ps} * row_elems;
  } else if (c.layout == KvLayout::kDense) {
    const int cap = std::max(h.max_k, 1);
    std::vector<uint8_t> k(int64_t{h.batch} * cap * row_elems * es, 0xff);
    std::vector<uint8_t> v(k.size(), 0xff);
    for (int b = 0; b < h.batch; ++b) {
      const int64_t n = int64_t{c.lens_k[b]} * row_elems * es;
      std::memcpy(k.data() + int64_t{b} * cap * row_elems * es,
                  h.k_packed.data() + h.cu_k[b] * row_elems * es, n);
      std::memcpy(v.data() + int64_t{b} * cap * row_elems * es,
                  h.v_packed.data() + h.cu_k[b] * row_elems * es, n);
    }
    p.k = arena.Copy(k);
    p.v = arena.Copy(v);
    // The stateless call has no per-sequence lengths (its cases use equal ones).
    if (!stateless) p.seqlens_k = arena.Copy(seqlens);
    p.k_batch_stride = p.v_batch_stride = int64_t{cap} * row_elems;
  } else {
    p.k = arena.Copy(h.k_packed);
    p.v = arena.Copy(h.v_packed);
    p.cu_seqlens_k = arena.Copy(h.cu_k);
    p.total_k = h.total_k;
  }
  p.k_row_stride = p.v_row_stride = row_elems;
  p.k_head_stride = p.v_head_stride = d;
  if (c.alibi) {
    p.alibi = true;
    p.alibi_slopes = arena.Copy(h.slopes);
    p.alibi_batch_stride = c.q_heads;
  }
  if (c.sinks) {
    p.KernelConfig::sinks = true;
    p.sink_logits = arena.Copy(h.sinks);
  }
  if (!ranges.empty()) p.key_range = arena.Copy(ranges);

  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  absl::Status status;
  if (stateless) {
    ASSERT_TRUE(DecodeExpectedToWin(p)) << "a decode shape must take the decode kernel";
    const size_t ws_bytes = WorkspaceBytes(p);
    EXPECT_EQ(ws_bytes, DecodeWorkspaceBytes(p, DecodeOptions{}));
    void* ws = ws_bytes > 0 ? arena.Alloc(ws_bytes, 0xff) : nullptr;
    status = RunAttention(p, ws, stream);
  } else {
    const size_t ws_bytes = DecodeWorkspaceBytes(p, c.options);
    const int splits = DecodeNumSplits(p, c.options);
    EXPECT_EQ(ws_bytes > 0, splits > 1);
    void* ws = ws_bytes > 0 ? arena.Alloc(ws_bytes, 0xff) : nullptr;
    constexpr int64_t kCounters = 4096;
    DecodeOptions opt = c.options;
    if (c.self_reset) {
      ASSERT_GT(splits, 1) << "a self-reset case must split";
      opt.zeroed_counters = static_cast<unsigned int*>(arena.Alloc(kCounters * 4, 0));
      opt.zeroed_counter_count = kCounters;
      // The first launch's results are overwritten by the second's, which needs zero counters.
      status = RunFlashDecode(p, opt, ws, stream);
      ASSERT_TRUE(status.ok()) << status;
    }
    status = RunFlashDecode(p, opt, ws, stream);
    if (c.self_reset && status.ok()) {
      std::vector<unsigned int> counters(kCounters, 1u);
      CUDA_OK(cudaMemcpyAsync(counters.data(), opt.zeroed_counters, kCounters * 4,
                              cudaMemcpyDeviceToHost, stream));
      CUDA_OK(cudaStreamSynchronize(stream));
      EXPECT_EQ(std::count(counters.begin(), counters.end(), 0u), kCounters)
          << "the launches left counters non-zero";
    }
  }
  ASSERT_TRUE(status.ok()) << status;
  CUDA_OK(cudaStreamSynchronize(stream));
  CUDA_OK(cudaGetLastError());
  CUDA_OK(cudaStreamDestroy(stream));

  out.raw_o.resize(o_bytes + 16);
  CUDA_OK(cudaMemcpy(out.raw_o.data(), d_o, out.raw_o.size(), cudaMemcpyDeviceToHost));
  for (int64_t i = o_bytes; i < o_bytes + 16; ++i) {
    ASSERT_EQ(out.raw_o[i], 0xff) << "write past the end of o";
  }
  out.raw_o.resize(o_bytes);
  out.o.resize(h.total_q * c.q_heads * d);
  for (int64_t i = 0; i < static_cast<int64_t>(out.o.size()); ++i) {
    out.o[i] = Element(dtype, out.raw_o, i);
  }
  out.lse.clear();
  if (c.lse) {
    out.raw_lse.resize(lse_count + 4);
    CUDA_OK(cudaMemcpy(out.raw_lse.data(), d_lse, out.raw_lse.size() * sizeof(float),
                       cudaMemcpyDeviceToHost));
    for (int64_t i = lse_count; i < lse_count + 4; ++i) {
      ASSERT_TRUE(std::isnan(out.raw_lse[i])) << "write past the end of lse";
    }
    out.raw_lse.resize(lse_count);
    // To [q_heads, total_q] whatever the launch's layout.
    out.lse.resize(lse_count);
    for (int b = 0; b < h.batch; ++b) {
      for (int i = 0; i < h.cu_q[b + 1] - h.cu_q[b]; ++i) {
        for (int head = 0; head < c.q_heads; ++head) {
          const int64_t src = packed_q ? int64_t{head} * h.total_q + h.cu_q[b] + i
                                       : (int64_t{b} * c.q_heads + head) * h.max_q + i;
          out.lse[int64_t{head} * h.total_q + h.cu_q[b] + i] = out.raw_lse[src];
        }
      }
    }
  }
}

void ExpectClose(const Case& c, DType dtype, const HostCase& h, const std::vector<double>& ref_o,
                 const std::vector<double>& ref_lse, const std::vector<double>& o,
                 const std::vector<double>& lse, const Tolerance& tol) {
  const int d = c.head_dim;
  double err2 = 0.0, ref2 = 0.0;
  int64_t bad_rows = 0;
  std::string first_bad;
  for (int64_t row = 0; row < h.total_q * c.q_heads; ++row) {
    double row_err2 = 0.0, row_ref2 = 0.0;
    bool finite = true;
    for (int j = 0; j < d; ++j) {
      const double x = o[row * d + j];
      const double r = ref_o[row * d + j];
      finite &= std::isfinite(x);
      row_err2 += (x - r) * (x - r);
      row_ref2 += r * r;
    }
    err2 += row_err2;
    ref2 += row_ref2;
    const double bound = tol.row_factor * tol.rel_fro * std::sqrt(row_ref2) + tol.abs_floor;
    if (!finite || std::sqrt(row_err2) > bound) {
      if (bad_rows++ == 0) {
        first_bad = "q row " + std::to_string(row / c.q_heads) + " head " +
                    std::to_string(row % c.q_heads) + ": |err| " +
                    std::to_string(std::sqrt(row_err2)) + " |ref| " +
                    std::to_string(std::sqrt(row_ref2)) + (finite ? "" : " (non-finite output)");
      }
    }
  }
  const double rel = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  EXPECT_EQ(bad_rows, 0) << bad_rows << " rows off; first: " << first_bad;
  EXPECT_LT(rel, tol.rel_fro) << "relative Frobenius error of o";
  std::printf("  %-34s %s  rel_err %.2e\n", c.name.c_str(), DTypeName(dtype), rel);
  if (lse.empty()) return;
  int64_t bad_lse = 0;
  std::string first;
  for (size_t i = 0; i < lse.size(); ++i) {
    const double r = ref_lse[i];
    const double x = lse[i];
    const bool ok = std::isinf(r) ? (std::isinf(x) && x < 0) : std::abs(x - r) <= tol.lse_abs;
    if (!ok && bad_lse++ == 0) {
      first = "index " + std::to_string(i) + ": " + std::to_string(x) + " vs " + std::to_string(r);
    }
  }
  EXPECT_EQ(bad_lse, 0) << bad_lse << " lse values off; first " << first;
}

// Whether this build has a kernel for `c` in `dtype`; the tests run every case some build holds
// and check that the rest are refused with UNIMPLEMENTED.
bool Supported(const Case& c, DType dtype) {
  KernelConfig config;
  config.kind = WorkKind::kPagedDecode;
  config.dtype = dtype;
  config.head_dim = c.head_dim;
  config.q_heads = c.q_heads;
  config.kv_heads = c.kv_heads;
  config.softmax_scale = 1.f;
  const absl::Status s = CheckDecodeSupported(config);
  if (!s.ok()) {
    EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
    std::printf("  %-34s %s  not in this build: %s\n", c.name.c_str(), DTypeName(dtype),
                std::string(s.message()).c_str());
  }
  return s.ok();
}

std::mt19937_64 CaseRng(const Case& c, DType dtype, uint64_t salt = 0) {
  return std::mt19937_64(Seed() ^ std::hash<std::string>()(c.name) ^
                         (static_cast<uint64_t>(dtype) << 40) ^ salt);
}

void RunCase(const Case& c, DType dtype) {
  SCOPED_TRACE(c.name + " " + DTypeName(dtype));
  std::mt19937_64 rng = CaseRng(c, dtype);
  const HostCase h = MakeHostCase(c, dtype, rng);
  std::vector<double> ref_o, ref_lse;
  Reference(c, dtype, h, h.ranges, ref_o, ref_lse);
  DecodeResult r;
  RunDecode(c, dtype, h, h.ranges, rng, /*stateless=*/false, r);
  if (::testing::Test::HasFatalFailure()) return;
  ExpectClose(c, dtype, h, ref_o, ref_lse, r.o, r.lse, ToleranceFor(dtype));
}

std::vector<Case> Cases() {
  std::vector<Case> c;
  // Every page size, partial last pages, random page order (GQA 32/8, d = 128, one query row).
  for (int ps : {16, 32, 64, 128, 256}) {
    c.push_back(Case("small_page" + std::to_string(ps)).K({1000, 37, 513, 256, 1}).Page(ps));
  }
  c.push_back(Case("page_size_odd").K({300, 77}).Page(48));
  // Tickets in counters kept zero between launches (the executor's), paged and dense, several
  // query tiles.
  c.push_back(Case("self_reset_page16").K({1000, 37, 513, 256, 1}).Page(16).Splits(4).SelfReset());
  c.push_back(
      Case("self_reset_dense").K({3000, 1, 700}).Dense(false).Q(3).Causal().Splits(5).SelfReset());
  // Dense K/V: one page per sequence, per-sequence lengths; packed with cu_seqlens_k.
  c.push_back(Case("small_dense").K({300, 1, 700}).Dense(false));
  c.push_back(Case("dense_packed").K({129, 1000, 64}).Dense(true).Q(3).Causal());
  // Forks: two sequences whose tables point at the same pages.
  c.push_back(Case("small_fork").K({700, 900, 300}).Page(64).Fork());
  c.push_back(Case("fork_page16_partial").K({130, 129}).Page(16).Fork().Q(4).Causal());
  // GQA 1 / 4 / 8 / 16 and MQA.
  c.push_back(Case("gqa1").K({500, 333}).Heads(8, 8));
  c.push_back(Case("small_gqa8").K({500, 64}).Heads(16, 2));
  c.push_back(Case("gqa16").K({257, 1200}).Heads(32, 2));
  c.push_back(Case("small_mqa").K({600, 10}).Heads(8, 1));
  c.push_back(Case("mqa32").K({800}).Heads(32, 1).Dim(64));
  // 1..16 query rows: one m16 tile, the 64-row layout, several query tiles.
  for (int rows : {2, 3, 5, 8, 13, 16}) {
    c.push_back(Case("q" + std::to_string(rows) + "_causal").K({400, 1000, 16}).Q(rows).Causal());
  }
  c.push_back(Case("small_q16_gqa16_causal").K({300, 40}).Heads(32, 2).Q(16).Causal());
  c.push_back(Case("q7_mqa32").K({350}).Heads(32, 1).Q(7).Dim(64));
  c.push_back(Case("q_not_causal").K({200, 300}).Q(9));
  c.push_back(Case("small_packed_q").K({300, 500, 20, 7}).PackedQ({1, 16, 3, 0}).Causal());
  // Causal rows whose window starts before the first key.
  c.push_back(Case("causal_q_gt_k").K({5, 12, 0}).Q(16).Causal());
  // Windows, softcap, ALiBi, sinks, alone and together.
  c.push_back(Case("small_window").K({1000, 50}).Q(4).Causal().Window(100, -1));
  c.push_back(Case("window_both").K({900, 300}).Q(3).Window(64, 16));
  c.push_back(Case("window_right_only").K({500}).Q(5).Window(-1, 2));
  c.push_back(Case("small_softcap").K({600, 200}).Softcap(30.f));
  c.push_back(Case("softcap_tight").K({400}).Softcap(5.f).Scale(1.f));
  c.push_back(Case("small_alibi").K({700, 100}).Q(2).Causal().Alibi());
  c.push_back(Case("small_sinks").K({500, 3}).Sinks());
  c.push_back(Case("everything")
                  .K({1500, 300, 64, 0})
                  .Q(6)
                  .Causal()
                  .Window(500, -1)
                  .Softcap(20.f)
                  .Alibi()
                  .Sinks()
                  .Page(32));
  c.push_back(Case("negative_scale").K({300}).Scale(-0.1f));
  // Key ranges (absolute positions: window and ALiBi unchanged).
  c.push_back(Case("small_key_range").K({1000, 300, 64}).KeyRange());
  c.push_back(Case("key_range_window_alibi")
                  .K({800, 900})
                  .Q(4)
                  .Causal()
                  .Window(300, -1)
                  .Alibi()
                  .KeyRange()
                  .Page(16));
  // Empty contexts: o = 0, lse = -inf, or the sink.
  c.push_back(Case("small_empty").K({0, 100, 0}));
  c.push_back(Case("empty_sinks").K({0, 0}).Sinks());
  c.push_back(Case("empty_all_split").K({0, 0}).Splits(4));
  // Splits: forced (more than the tiles too), the heuristic on a long context, deterministic.
  c.push_back(Case("small_splits3").K({1000, 200}).Splits(3).Sinks());
  c.push_back(Case("splits17").K({3000, 70}).Q(2).Causal().Splits(17));
  c.push_back(Case("splits_past_tiles").K({100}).Splits(200));
  c.push_back(Case("heuristic_long").K({16384}).Heads(8, 2));
  c.push_back(Case("heuristic_long_q4").K({9000, 4000}).Q(4).Causal().Sinks().Page(128));
  c.push_back(Case("deterministic").K({5000, 300}).Deterministic(512).Sinks());
  // Head dims: compiled buckets, and odd ones padded up to a bucket.
  for (int d : {8, 40, 64, 72, 96, 120, 128, 160, 200, 256}) {
    c.push_back(Case("hdim" + std::to_string(d)).K({300, 65}).Q(2).Heads(8, 2).Dim(d).Causal());
  }
  c.push_back(Case("no_lse").K({300}).NoLse());
  // Float32 against pages with more than 16 rows per sequence (a float32 session's chunked
  // prefill: no other CUDA kernel reads float32 pages, so the decode kernel takes every row).
  c.push_back(Case("fp32_paged_q70_causal_window_alibi")
                  .K({900, 75, 300})
                  .Q(70)
                  .Causal()
                  .Window(200, -1)
                  .Alibi()
                  .Sinks()
                  .Page(32)
                  .DTypes({DType::kFloat32}));
  c.push_back(Case("fp32_paged_packed_q200_key_range")
                  .K({1200, 250, 64})
                  .PackedQ({200, 17, 0})
                  .Heads(8, 2)
                  .KeyRange()
                  .Softcap(20.f)
                  .Page(16)
                  .DTypes({DType::kFloat32}));
  return c;
}

class FlashDecodeTest : public ::testing::TestWithParam<Case> {};

TEST_P(FlashDecodeTest, MatchesFloat64Reference) {
  int ran = 0;
  for (DType dtype : GetParam().dtypes) {
    if (!Supported(GetParam(), dtype)) continue;
    RunCase(GetParam(), dtype);
    ++ran;
    if (HasFatalFailure()) return;
  }
  if (ran == 0) GTEST_SKIP() << "no dtype of this case is compiled into this build";
}

INSTANTIATE_TEST_SUITE_P(Cases, FlashDecodeTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

// decode_bench's kernel variants (DecodeOptions::variant, kDecodeVariants): each against the
// float64 reference on every case of Cases() it takes (bf16, head-dim bucket 128, at most 16 packed
// rows per KV head), plus page sizes that are not powers of two or smaller than a copy's row
// group, with forced splits. A variant must pass here before it may replace the default.
std::vector<Case> VariantCases() {
  std::vector<Case> out;
  for (const Case& c : Cases()) {
    const int rows_q =
        c.lens_q.empty() ? c.q_rows : *std::max_element(c.lens_q.begin(), c.lens_q.end());
    const bool bf16 =
        std::find(c.dtypes.begin(), c.dtypes.end(), DType::kBFloat16) != c.dtypes.end();
    if (bf16 && rows_q * (c.q_heads / c.kv_heads) <= 16 && c.head_dim > 96 && c.head_dim <= 128) {
      out.push_back(c);
    }
  }
  out.push_back(Case("variant_page48_splits5").K({3000, 130, 49}).Page(48).Splits(5).Sinks());
  out.push_back(Case("variant_page8_q2_causal").K({700, 9}).Page(8).Q(2).Causal());
  out.push_back(Case("variant_page192_window").K({2000, 191}).Page(192).Window(700, -1).Q(3));
  out.push_back(Case("variant_dense_long").K({20000}).Dense(false).Splits(7));
  // Splits that end on page boundaries (64 tiles of 64 in 8 splits), 16 packed rows (4 query rows
  // x GQA 4) over 6 splits, a page cache holding a split's 256 pages of 16 exactly, and splits of
  // more pages than the cache holds (568 pages of 8: global lookups).
  out.push_back(Case("variant_page64_split_at_pages").K({4096, 4096}).Page(64).Splits(8).Sinks());
  out.push_back(Case("variant_q4_rows16_splits6").K({2000, 777}).Page(64).Q(4).Causal().Splits(6));
  out.push_back(Case("variant_page16_cache_full").K({8192}).Page(16).Splits(2));
  out.push_back(Case("variant_page8_past_cache").K({9000, 300}).Page(8).Splits(2));
  return out;
}

class FlashDecodeVariantTest : public ::testing::TestWithParam<int> {};

TEST_P(FlashDecodeVariantTest, MatchesFloat64Reference) {
  if (!DecodeVariantsCompiled()) {
    GTEST_SKIP() << "decode_bench's candidate kernels need ATTN_BENCH_DECODE_VARIANTS=ON";
  }
  if (!Supported(Case("variant_probe"), DType::kBFloat16)) {
    GTEST_SKIP() << "bf16 at head_dim 128 is not compiled into this build";
  }
  int ran = 0;
  for (Case c : VariantCases()) {
    // A block over several KV heads needs whole groups of them (MQA has one head).
    if (c.kv_heads % kDecodeVariants[GetParam()].heads != 0) continue;
    c.options.variant = GetParam();
    RunCase(c, DType::kBFloat16);
    ++ran;
    if (HasFatalFailure()) return;
  }
  // Cases() holds 37 such cases (plus the 4 above, 2026-12-06; one is MQA); a filter that let
  // few through would test little.
  EXPECT_GE(ran, 30);
}

INSTANTIATE_TEST_SUITE_P(Variants, FlashDecodeVariantTest, ::testing::Range(1, kDecodeNumVariants),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::string(kDecodeVariants[info.param].name);
                         });

// The page cache, the entries loaded early (pages_early), the fused combine, the split count's
// paged rule, how far the loops unroll (compact) and the copies' L2 hints change where page
// entries are read, which kernel merges the splits, how many splits there are, the code's size and
// how L2 keeps lines, not the arithmetic: a variant that differs from the production
// kernel (kDecodeVariants[0]) in those flags only gives its o and lse bit for bit (pages of 64, 32
// and 16, dense, sinks, a key range, empty and short contexts next to long ones, 4 query rows x GQA
// 4; forced splits, and the heuristic's where both count the same slots). Instantiated with the
// variants' prefix, so that it runs in their process (run_decode_on_gpu.sh).
class FlashDecodeVariantBitwiseTest : public ::testing::TestWithParam<int> {};

TEST_P(FlashDecodeVariantBitwiseTest, MatchesTheProductionKernel) {
  if (!DecodeVariantsCompiled()) {
    GTEST_SKIP() << "decode_bench's candidate kernels need ATTN_BENCH_DECODE_VARIANTS=ON";
  }
  const DecodeVariant& var = kDecodeVariants[GetParam()];
  const DecodeVariant& base_var = kDecodeVariants[0];
  if (var.stages != base_var.stages || var.pages_ahead != base_var.pages_ahead ||
      var.heads != base_var.heads || var.rotate != base_var.rotate) {
    GTEST_SKIP() << var.name << " differs from " << base_var.name
                 << " in more than the page cache, the page entries' timing, the fused combine, "
                    "the paged split rule, the unrolling and the L2 hints";
  }
  std::vector<Case> cases;
  cases.push_back(Case("bitwise_page64").K({5000, 0, 300, 64}).Page(64).Splits(7).Sinks());
  cases.push_back(Case("bitwise_page16_q4").K({3000, 1500}).Page(16).Q(4).Causal().Splits(5));
  cases.push_back(Case("bitwise_dense").K({7000, 20}).Dense(false).Splits(9));
  cases.push_back(Case("bitwise_key_range").K({4000, 900}).Page(32).KeyRange().Splits(4));
  cases.push_back(Case("bitwise_heuristic").K({32768}).Page(64));
  int compared = 0;
  for (const Case& c : cases) {
    // The variants are compiled into the bf16 file of bucket 128 only.
    if (!Supported(c, DType::kBFloat16) || CompiledHeadDimBucket(c.head_dim) != 128) {
      GTEST_SKIP() << "bf16 at head-dim bucket 128 is not compiled into this build";
    }
    // Pages at the dense split count split the heuristic's launches differently.
    if (var.paged_one_slot != base_var.paged_one_slot && c.options.num_splits == 0) continue;
    SCOPED_TRACE(c.name);
    std::mt19937_64 rng = CaseRng(c, DType::kBFloat16);
    const HostCase h = MakeHostCase(c, DType::kBFloat16, rng);
    DecodeResult base, r;
    RunDecode(c, DType::kBFloat16, h, h.ranges, rng, false, base);
    Case cv = c;
    cv.options.variant = GetParam();
    RunDecode(cv, DType::kBFloat16, h, h.ranges, rng, false, r);
    if (HasFatalFailure()) return;
    EXPECT_EQ(r.raw_o, base.raw_o) << "o";
    ASSERT_EQ(r.raw_lse.size(), base.raw_lse.size());
    for (size_t i = 0; i < r.raw_lse.size(); ++i) {
      // -inf == -inf; any NaN fails.
      EXPECT_TRUE(r.raw_lse[i] == base.raw_lse[i]) << "lse " << i;
    }
    ++compared;
  }
  EXPECT_GE(compared, 4);
}

INSTANTIATE_TEST_SUITE_P(Variants, FlashDecodeVariantBitwiseTest,
                         ::testing::Range(1, kDecodeNumVariants),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::string(kDecodeVariants[info.param].name);
                         });

// The partial results of disjoint key ranges, merged with the contract's rule, give the full
// result: lse = log(e^lse_a + e^lse_b), o = e^(lse_a - lse) o_a + e^(lse_b - lse) o_b.
TEST(FlashDecodeKeyRangeTest, SmallPartialsMergeToTheFullResult) {
  for (DType dtype : {DType::kBFloat16, DType::kFloat32}) {
    Case c("small_merge_ranges");
    c.K({2000, 700, 1}).Q(3).Causal().Window(900, -1).Alibi().Page(32);
    if (!Supported(c, dtype)) continue;
    SCOPED_TRACE(DTypeName(dtype));
    std::mt19937_64 rng = CaseRng(c, dtype);
    const HostCase h = MakeHostCase(c, dtype, rng);
    std::vector<double> ref_o, ref_lse;
    Reference(c, dtype, h, {}, ref_o, ref_lse);
    std::vector<int32_t> first(2 * h.batch), second(2 * h.batch);
    for (int b = 0; b < h.batch; ++b) {
      const int cut = std::uniform_int_distribution<int>(0, c.lens_k[b])(rng);
      first[2 * b] = 0;
      first[2 * b + 1] = cut;
      second[2 * b] = cut;
      second[2 * b + 1] = c.lens_k[b];
    }
    DecodeResult a, b;
    RunDecode(c, dtype, h, first, rng, false, a);
    RunDecode(c, dtype, h, second, rng, false, b);
    if (HasFatalFailure()) return;
    std::vector<double> o(a.o.size()), lse(a.lse.size());
    const int d = c.head_dim;
    for (int64_t row = 0; row < h.total_q; ++row) {
      for (int head = 0; head < c.q_heads; ++head) {
        const int64_t li = int64_t{head} * h.total_q + row;
        const double la = a.lse[li], lb = b.lse[li];
        const double m = std::max(la, lb);
        const double l = m == kNegInf ? kNegInf : m + std::log(std::exp(la - m) + std::exp(lb - m));
        lse[li] = l;
        const double wa = la == kNegInf ? 0.0 : std::exp(la - l);
        const double wb = lb == kNegInf ? 0.0 : std::exp(lb - l);
        for (int j = 0; j < d; ++j) {
          const int64_t oi = (row * c.q_heads + head) * d + j;
          o[oi] = wa * a.o[oi] + wb * b.o[oi];
        }
      }
    }
    Tolerance tol = ToleranceFor(dtype);
    if (dtype != DType::kFloat32) tol.rel_fro *= 1.5;  // two output roundings instead of one
    ExpectClose(c, dtype, h, ref_o, ref_lse, o, lse, tol);
  }
}

// Deterministic mode: a sequence's o and lse are bitwise the same alone and next to a longer
// sequence (which changes the launch's split count: 3000 keys alone take 6 splits of 512, 300
// keys alone take one split and no combine pass, and the batch takes 18), and from run to run.
TEST(FlashDecodeDeterministicTest, SmallBatchInvariant) {
  for (DType dtype : {DType::kBFloat16, DType::kFloat32}) {
    for (int len : {3000, 300}) {
      Case alone("small_det_alone_" + std::to_string(len));
      alone.K({len}).Q(2).Causal().Sinks().Deterministic(512);
      if (!Supported(alone, dtype)) continue;
      SCOPED_TRACE(alone.name + " " + DTypeName(dtype));
      Case batch = alone;
      batch.name = "small_det_batch";
      batch.K({len, 9000, 100});
      std::mt19937_64 rng = CaseRng(alone, dtype);
      const HostCase ha = MakeHostCase(alone, dtype, rng);
      HostCase hb = MakeHostCase(batch, dtype, rng);
      // Sequence 0 of the batch is the lone sequence: the same q, k, v and sinks.
      std::memcpy(hb.q.data(), ha.q.data(), ha.q.size());
      std::memcpy(hb.k_packed.data(), ha.k_packed.data(), ha.k_packed.size());
      std::memcpy(hb.v_packed.data(), ha.v_packed.data(), ha.v_packed.size());
      hb.sinks = ha.sinks;
      DecodeResult r1, r2, rb;
      RunDecode(alone, dtype, ha, {}, rng, false, r1);
      RunDecode(alone, dtype, ha, {}, rng, false, r2);
      RunDecode(batch, dtype, hb, {}, rng, false, rb);
      if (HasFatalFailure()) return;
      EXPECT_EQ(r1.raw_o, r2.raw_o) << "run to run";
      ASSERT_GE(rb.raw_o.size(), r1.raw_o.size());
      EXPECT_TRUE(std::equal(r1.raw_o.begin(), r1.raw_o.end(), rb.raw_o.begin()))
          << "alone vs in a batch";
      // LSE as [heads, rows]: alone 2 rows per head, in the batch sequence 0's 2 rows lead each
      // head's 6.
      for (int head = 0; head < alone.q_heads; ++head) {
        for (int i = 0; i < 2; ++i) {
          EXPECT_EQ(r1.lse[head * 2 + i], rb.lse[head * 6 + i]) << "head " << head << " row " << i;
        }
      }
      std::vector<double> ref_o, ref_lse;
      Reference(alone, dtype, ha, {}, ref_o, ref_lse);
      ExpectClose(alone, dtype, ha, ref_o, ref_lse, r1.o, r1.lse, ToleranceFor(dtype));
    }
  }
}

// The stateless Attention call with decode shapes (dense K/V, packed or not, bf16 and float32)
// routes to the decode kernel, sizes its workspace through WorkspaceBytes and matches the
// reference (float32 at float32 accuracy).
TEST(FlashDecodeStatelessTest, SmallRunAttentionTakesTheDecodeKernel) {
  std::vector<Case> cases;
  cases.push_back(Case("small_stateless_packed").K({4000, 17, 900}).Dense(true).PackedQ({1, 1, 1}));
  cases.push_back(Case("small_stateless_dense").K({3000, 3000}).Dense(false).Q(4).Causal());
  cases.back().Window(600, -1).Softcap(25.f);
  for (const Case& c : cases) {
    for (DType dtype : {DType::kBFloat16, DType::kFloat32}) {
      if (!Supported(c, dtype)) continue;
      SCOPED_TRACE(c.name + " " + DTypeName(dtype));
      std::mt19937_64 rng = CaseRng(c, dtype);
      const HostCase h = MakeHostCase(c, dtype, rng);
      std::vector<double> ref_o, ref_lse;
      Reference(c, dtype, h, {}, ref_o, ref_lse);
      DecodeResult r;
      RunDecode(c, dtype, h, {}, rng, /*stateless=*/true, r);
      if (HasFatalFailure()) return;
      ExpectClose(c, dtype, h, ref_o, ref_lse, r.o, r.lse, ToleranceFor(dtype));
    }
  }
}

// Requests the decode kernel refuses, each with the code and the field it names.
TEST(FlashDecodeErrorsTest, RefusesWhatItCannotRun) {
  AttentionParams p;
  p.dtype = DType::kBFloat16;
  p.batch = 1;
  p.seqlen_q = 1;
  p.seqlen_k = 1000;
  p.q_heads = 4;
  p.kv_heads = 1;
  p.head_dim = 64;
  p.softmax_scale = 0.125f;
  SetContiguousStrides(p);
  alignas(16) static uint8_t dummy[64];
  p.q = p.k = p.v = dummy;
  p.o = dummy;
  if (!Supported(Case("errors").Heads(4, 1).Dim(64), DType::kBFloat16)) GTEST_SKIP();
  EXPECT_TRUE(CheckDecodeParams(p).ok()) << CheckDecodeParams(p);

  AttentionParams q = p;
  q.seqlen_q = 17;
  EXPECT_EQ(CheckDecodeParams(q).code(), absl::StatusCode::kUnimplemented);
  EXPECT_FALSE(DecodeExpectedToWin(q));
  q = p;
  q.mask_kind = MaskKind::kBool;
  q.mask = dummy;
  EXPECT_EQ(CheckDecodeParams(q).code(), absl::StatusCode::kUnimplemented);
  EXPECT_FALSE(DecodeExpectedToWin(q));
  q = p;
  q.head_dim = 20;
  EXPECT_EQ(CheckDecodeParams(q).code(), absl::StatusCode::kUnimplemented);
  q = p;
  q.q_heads = 6;
  q.kv_heads = 4;
  EXPECT_EQ(CheckDecodeParams(q).code(), absl::StatusCode::kInvalidArgument);
  q = p;
  q.k = dummy + 2;
  EXPECT_EQ(CheckDecodeParams(q).code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(CheckDecodeParams(q).message().find("k must be 16-byte aligned"), std::string::npos);
  q = p;
  q.k_row_stride = 68;
  EXPECT_NE(CheckDecodeParams(q).message().find("k_row_stride"), std::string::npos);
  q = p;
  q.page_table = reinterpret_cast<const int32_t*>(dummy);
  q.page_size = 0;
  EXPECT_EQ(CheckDecodeParams(q).code(), absl::StatusCode::kInvalidArgument);
  q = p;
  q.kind = WorkKind::kBackward;
  EXPECT_EQ(CheckDecodeParams(q).code(), absl::StatusCode::kUnimplemented);

  // A split launch without its workspace.
  DecodeOptions opt;
  opt.num_splits = 4;
  EXPECT_EQ(DecodeNumSplits(p, opt), 4);
  EXPECT_GT(DecodeWorkspaceBytes(p, opt), 0u);
  EXPECT_EQ(RunFlashDecode(p, opt, nullptr, nullptr).code(), absl::StatusCode::kInvalidArgument);
  opt.num_splits = -1;
  EXPECT_EQ(RunFlashDecode(p, opt, nullptr, nullptr).code(), absl::StatusCode::kInvalidArgument);
  opt = DecodeOptions{};
  opt.deterministic = true;
  opt.split_tokens = 0;
  EXPECT_EQ(RunFlashDecode(p, opt, nullptr, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// The paged append.

struct AppendCase {
  std::string name;
  DType dtype;
  int tokens, kv_heads, head_dim, page_size, pages;
  int64_t new_row_pad = 0;  // extra elements per new row (a non-16-byte stride: element copies)
  // > 0: the launch also pulls this many bytes from pinned host memory into device memory, and
  // reads its rows there too (PagedAppendParams::pull_src; the GPU executor's ATTN_LONE_PULL).
  // It runs twice over the same host buffer with new contents: the second launch must see them.
  int64_t pull_bytes = 0;
};

// Pinned host memory that the device reaches (mapped), freed at scope exit.
class MappedHost {
 public:
  explicit MappedHost(size_t bytes) {
    if (cudaHostAlloc(&host_, bytes, cudaHostAllocMapped) != cudaSuccess) host_ = nullptr;
    if (host_ != nullptr && cudaHostGetDevicePointer(&device_, host_, 0) != cudaSuccess) {
      device_ = nullptr;
    }
  }
  ~MappedHost() {
    if (host_ != nullptr) cudaFreeHost(host_);
  }
  MappedHost(const MappedHost&) = delete;
  MappedHost& operator=(const MappedHost&) = delete;
  char* host() const { return static_cast<char*>(host_); }
  char* device() const { return static_cast<char*>(device_); }

 private:
  void* host_ = nullptr;
  void* device_ = nullptr;
};

void RunAppend(const AppendCase& c) {
  SCOPED_TRACE(c.name);
  std::mt19937_64 rng(Seed() ^ std::hash<std::string>()(c.name));
  const int64_t es = DTypeSize(c.dtype);
  const int64_t row_elems = int64_t{c.kv_heads} * c.head_dim;
  const int64_t new_row_stride = row_elems + c.new_row_pad;
  const int64_t pool_elems = int64_t{c.pages} * c.page_size * row_elems;
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<uint8_t> k_new(c.tokens * new_row_stride * es), v_new(k_new.size());
  for (int64_t i = 0; i < c.tokens * new_row_stride; ++i) {
    StoreElement(c.dtype, k_new, i, normal(rng));
    StoreElement(c.dtype, v_new, i, normal(rng));
  }
  std::vector<uint8_t> k_pool(pool_elems * es), v_pool(pool_elems * es);
  for (int64_t i = 0; i < pool_elems; ++i) {
    StoreElement(c.dtype, k_pool, i, normal(rng));
    StoreElement(c.dtype, v_pool, i, normal(rng));
  }
  // Distinct random slots; every fifth token is padding (-1).
  std::vector<int32_t> all(int64_t{c.pages} * c.page_size);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  std::vector<int32_t> slots(c.tokens);
  for (int t = 0; t < c.tokens; ++t) slots[t] = t % 5 == 4 ? -1 : all[t];

  DeviceArena arena;
  // The pull: [pull bytes | k_new | v_new | slots] in mapped pinned memory, 256-byte aligned parts.
  const auto align = [](int64_t b) { return (b + 255) / 256 * 256; };
  const int64_t k_off = align(c.pull_bytes), v_off = k_off + align(k_new.size());
  const int64_t slots_off = v_off + align(v_new.size());
  MappedHost mapped(c.pull_bytes > 0 ? slots_off + slots.size() * 4 : 16);
  ASSERT_NE(mapped.device(), nullptr) << "mapped pinned memory";
  std::vector<uint8_t> pulled(c.pull_bytes);
  char* d_pull_dst = c.pull_bytes > 0 ? static_cast<char*>(arena.Alloc(c.pull_bytes, 0)) : nullptr;
  const auto fill_host = [&] {
    for (uint8_t& b : pulled) b = static_cast<uint8_t>(rng());
    std::memcpy(mapped.host(), pulled.data(), pulled.size());
    std::memcpy(mapped.host() + k_off, k_new.data(), k_new.size());
    std::memcpy(mapped.host() + v_off, v_new.data(), v_new.size());
    std::memcpy(mapped.host() + slots_off, slots.data(), slots.size() * 4);
  };
  PagedAppendParams p;
  p.dtype = c.dtype;
  p.num_tokens = c.tokens;
  p.kv_heads = c.kv_heads;
  p.head_dim = c.head_dim;
  p.k_new = arena.Copy(k_new);
  p.v_new = arena.Copy(v_new);
  p.new_row_stride = new_row_stride;
  p.new_head_stride = c.head_dim;
  void* d_k_pool = arena.Copy(k_pool);
  void* d_v_pool = arena.Copy(v_pool);
  p.k_pool = d_k_pool;
  p.v_pool = d_v_pool;
  p.pool_page_stride = int64_t{c.page_size} * row_elems;
  p.pool_row_stride = row_elems;
  p.pool_head_stride = c.head_dim;
  p.page_size = c.page_size;
  p.slots = arena.Copy(slots);
  if (c.pull_bytes > 0) {
    fill_host();
    p.k_new = mapped.device() + k_off;
    p.v_new = mapped.device() + v_off;
    p.slots = reinterpret_cast<const int32_t*>(mapped.device() + slots_off);
    p.pull_src = mapped.device();
    p.pull_dst = d_pull_dst;
    p.pull_bytes = c.pull_bytes;
    ASSERT_TRUE(RunPagedAppend(p, nullptr).ok());
    CUDA_OK(cudaDeviceSynchronize());
    // New rows and new pull bytes in the same host buffer (the executor reuses its staging).
    for (int64_t i = 0; i < c.tokens * new_row_stride; ++i) {
      StoreElement(c.dtype, k_new, i, normal(rng));
      StoreElement(c.dtype, v_new, i, normal(rng));
    }
    fill_host();
  }
  const absl::Status s = RunPagedAppend(p, nullptr);
  ASSERT_TRUE(s.ok()) << s;
  CUDA_OK(cudaDeviceSynchronize());
  if (c.pull_bytes > 0) {
    std::vector<uint8_t> pull_out(c.pull_bytes);
    CUDA_OK(cudaMemcpy(pull_out.data(), d_pull_dst, pull_out.size(), cudaMemcpyDeviceToHost));
    EXPECT_TRUE(pull_out == pulled) << "the pulled bytes differ from the host buffer's";
  }
  std::vector<uint8_t> k_out(k_pool.size()), v_out(v_pool.size());
  CUDA_OK(cudaMemcpy(k_out.data(), d_k_pool, k_out.size(), cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(v_out.data(), d_v_pool, v_out.size(), cudaMemcpyDeviceToHost));

  // Expected pools: the old ones with the new rows at their slots.
  for (int t = 0; t < c.tokens; ++t) {
    if (slots[t] < 0) continue;
    const int64_t dst = int64_t{slots[t]} * row_elems * es;
    std::memcpy(k_pool.data() + dst, k_new.data() + t * new_row_stride * es, row_elems * es);
    std::memcpy(v_pool.data() + dst, v_new.data() + t * new_row_stride * es, row_elems * es);
  }
  EXPECT_TRUE(k_out == k_pool) << "k pool differs";
  EXPECT_TRUE(v_out == v_pool) << "v pool differs";
}

TEST(PagedAppendTest, SmallWritesEveryTokenToItsSlot) {
  RunAppend({"bf16_vector", DType::kBFloat16, 300, 8, 128, 16, 40});
  RunAppend({"fp16_vector_page256", DType::kFloat16, 77, 2, 64, 256, 3});
  RunAppend({"fp32_vector", DType::kFloat32, 50, 4, 72, 32, 10});
  RunAppend({"bf16_elements", DType::kBFloat16, 33, 3, 40, 64, 2, 2});
  RunAppend({"fp32_elements", DType::kFloat32, 21, 1, 8, 16, 4, 1});
  RunAppend({"one_token", DType::kBFloat16, 1, 8, 128, 64, 1});
  // With the inputs block pulled from mapped pinned memory in the same launch.
  RunAppend({"one_token_pull", DType::kBFloat16, 1, 8, 128, 16, 4, 0, 12304});
  RunAppend({"fp16_pull", DType::kFloat16, 9, 2, 64, 16, 3, 0, 16});
  RunAppend({"bf16_elements_pull", DType::kBFloat16, 5, 3, 40, 64, 1, 2, 4096});
}

TEST(PagedAppendTest, RefusesBadParams) {
  PagedAppendParams p;
  p.num_tokens = 1;
  p.kv_heads = 1;
  p.head_dim = 8;
  p.page_size = 0;
  EXPECT_EQ(RunPagedAppend(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p.page_size = 16;
  EXPECT_EQ(RunPagedAppend(p, nullptr).code(), absl::StatusCode::kInvalidArgument);  // nulls
  p.num_tokens = 0;
  EXPECT_TRUE(RunPagedAppend(p, nullptr).ok());
  p.pull_bytes = 24;  // not a multiple of 16
  EXPECT_EQ(RunPagedAppend(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p.pull_bytes = 32;  // no pointers
  EXPECT_EQ(RunPagedAppend(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p.pull_bytes = 0;
}

// A session's step: append the new token's k / v into the pages, then decode against them.
TEST(PagedAppendTest, SmallAppendThenDecode) {
  const DType dtype = DType::kBFloat16;
  Case c("small_append_then_decode");
  c.K({200, 65}).Q(1).Page(16);
  if (!Supported(c, dtype)) GTEST_SKIP();
  std::mt19937_64 rng = CaseRng(c, dtype);
  const HostCase h = MakeHostCase(c, dtype, rng);
  const int d = c.head_dim;
  const int64_t es = DTypeSize(dtype);
  const int64_t row_elems = int64_t{c.kv_heads} * d;
  const int ps = c.page_size;
  // Pages in order per sequence, the last key of each sequence written by the append kernel.
  const int max_pages = (h.max_k + ps - 1) / ps;
  std::vector<int32_t> table(h.batch * max_pages);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  std::vector<uint8_t> k_pool(table.size() * ps * row_elems * es, 0xff),
      v_pool(k_pool.size(), 0xff);
  std::vector<int32_t> slots;
  std::vector<uint8_t> k_new, v_new;
  for (int b = 0; b < h.batch; ++b) {
    for (int j = 0; j < c.lens_k[b]; ++j) {
      const int64_t slot = int64_t{table[b * max_pages + j / ps]} * ps + j % ps;
      const uint8_t* ksrc = h.k_packed.data() + (h.cu_k[b] + j) * row_elems * es;
      const uint8_t* vsrc = h.v_packed.data() + (h.cu_k[b] + j) * row_elems * es;
      if (j + 1 == c.lens_k[b]) {
        slots.push_back(static_cast<int32_t>(slot));
        k_new.insert(k_new.end(), ksrc, ksrc + row_elems * es);
        v_new.insert(v_new.end(), vsrc, vsrc + row_elems * es);
      } else {
        std::memcpy(k_pool.data() + slot * row_elems * es, ksrc, row_elems * es);
        std::memcpy(v_pool.data() + slot * row_elems * es, vsrc, row_elems * es);
      }
    }
  }
  DeviceArena arena;
  PagedAppendParams ap;
  ap.dtype = dtype;
  ap.num_tokens = static_cast<int>(slots.size());
  ap.kv_heads = c.kv_heads;
  ap.head_dim = d;
  ap.k_new = arena.Copy(k_new);
  ap.v_new = arena.Copy(v_new);
  ap.new_row_stride = row_elems;
  ap.new_head_stride = d;
  ap.k_pool = arena.Copy(k_pool);
  ap.v_pool = arena.Copy(v_pool);
  ap.pool_page_stride = int64_t{ps} * row_elems;
  ap.pool_row_stride = row_elems;
  ap.pool_head_stride = d;
  ap.page_size = ps;
  ap.slots = arena.Copy(slots);
  ASSERT_TRUE(RunPagedAppend(ap, nullptr).ok());

  AttentionParams p;
  p.kind = WorkKind::kPagedDecode;
  p.dtype = dtype;
  p.batch = h.batch;
  p.q_heads = c.q_heads;
  p.kv_heads = c.kv_heads;
  p.head_dim = d;
  p.softmax_scale = 1.f / std::sqrt(static_cast<float>(d));
  p.seqlen_q = 1;
  p.seqlen_k = h.max_k;
  p.q = arena.Copy(h.q);
  void* d_o = arena.Alloc(h.total_q * c.q_heads * d * es, 0xff);
  p.o = d_o;
  p.q_head_stride = p.o_head_stride = d;
  p.q_row_stride = p.o_row_stride = int64_t{c.q_heads} * d;
  p.q_batch_stride = p.o_batch_stride = p.q_row_stride;
  p.k = ap.k_pool;
  p.v = ap.v_pool;
  p.k_batch_stride = p.v_batch_stride = ap.pool_page_stride;
  p.k_row_stride = p.v_row_stride = row_elems;
  p.k_head_stride = p.v_head_stride = d;
  p.page_table = arena.Copy(table);
  p.page_table_stride = max_pages;
  p.page_size = ps;
  p.seqlens_k = arena.Copy(std::vector<int32_t>(c.lens_k.begin(), c.lens_k.end()));
  const DecodeOptions opt;
  void* ws =
      DecodeWorkspaceBytes(p, opt) > 0 ? arena.Alloc(DecodeWorkspaceBytes(p, opt), 0xff) : nullptr;
  ASSERT_TRUE(RunFlashDecode(p, opt, ws, nullptr).ok());
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<uint8_t> raw(h.total_q * c.q_heads * d * es);
  CUDA_OK(cudaMemcpy(raw.data(), d_o, raw.size(), cudaMemcpyDeviceToHost));
  std::vector<double> o(raw.size() / es);
  for (size_t i = 0; i < o.size(); ++i) o[i] = Element(dtype, raw, i);
  std::vector<double> ref_o, ref_lse;
  Reference(c, dtype, h, {}, ref_o, ref_lse);
  ExpectClose(c, dtype, h, ref_o, ref_lse, o, {}, ToleranceFor(dtype));
}

}  // namespace
}  // namespace attention::cuda

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("flash_decode_test: no CUDA device, skipping\n");
    return 77;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
