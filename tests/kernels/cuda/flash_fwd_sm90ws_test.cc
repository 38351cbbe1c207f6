// GPU test of the warp-specialized Hopper forward kernel (kernels/cuda/flash_fwd_sm90ws.h)
// against the float64 reference: random inputs drawn fresh for every run (seed printed,
// ATTN_TEST_SEED to replay), o and lse poisoned with NaN before the launch and guarded past
// their ends, ragged sequence tails (a last query tile and a last KV tile that are partly
// outside the sequence), causal with seqlen_q above and below seqlen_k (rows without keys), GQA
// and MQA, head dims below their bucket, attention sinks, softcap, a custom scale, strided
// (packed-QKV) inputs, sequences long enough that the K / V stage rings wrap many times, and
// packed (varlen) batches: ragged lengths, empty sequences (no query rows, or query rows without
// keys), seqlen_q != seqlen_k per sequence (bottom-right causal), GQA, softcap and sinks, and
// more query tiles than SMs so that the persistent blocks skip the ranks short sequences lack;
// and paged K/V (issue 21): every page size 16..256, partial last pages, empty contexts, forks
// sharing pages, GQA 1 / 4 / 8 / 16 and MQA, causal, sinks, softcap, key ranges (clamped, empty,
// inverted), q packed or dense, NaN in every pool row the output must not see and page-table
// entries outside the ranges pointing far past the pool.
//
// In a build with the benchmark's variants (ATTN_BENCH_WS_VARIANTS), --ws-variant=LABEL (a label
// of bench/cuda/ws_variants.cu, e.g. 128x128/2c/2s/q2) runs every case on that configuration
// instead of the host API's default, on a persistent grid; cases of another dtype or head-dim
// bucket are reported as skipped.
//
// Exits 77 (ctest SKIP) without a CUDA device, on a device other than compute capability 9.0
// and in a build without the kernel, so it never passes vacuously; a case whose dtype or bucket
// this build did not compile is reported as skipped, never as passed.
#include "kernels/cuda/flash_fwd_sm90ws.h"

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/block_info.h"
#include "kernels/dtype.h"
#include "tests/reference/reference_attention.h"
#ifdef ATTN_BENCH_WS_VARIANTS
#include "bench/cuda/ws_variants.h"
#endif

namespace attention::cuda {
namespace {

// Tolerances, stated once (those of attention_cuda_test.cc): rel_fro bounds ||o - ref|| /
// ||ref|| over the whole output; every query row must also meet row_factor * rel_fro against
// its own norm (plus 1e-3 absolute), which catches one wrong row the global norm would average
// away; lse_abs bounds the absolute LSE error (natural log).
struct Tolerance {
  double rel_fro;
  double row_factor;
  double lse_abs;
};

Tolerance ToleranceFor(DType dtype) {
  return dtype == DType::kFloat16 ? Tolerance{5e-3, 5.0, 2e-3} : Tolerance{1e-2, 5.0, 2e-3};
}

const char* DTypeName(DType d) { return d == DType::kFloat16 ? "fp16" : "bf16"; }

#ifdef ATTN_BENCH_WS_VARIANTS
// The configuration --ws-variant names; null: the host API's default.
const bench::WsVariant* g_variant = nullptr;

// The kernel's head-dim bucket of `head_dim` (at most 256).
int Bucket(int head_dim) {
  if (head_dim <= 64) return 64;
  return head_dim <= 128 ? 128 : 256;
}
#endif

// Launches `p` as the host API would (RunFlashFwdSm90Ws), or on --ws-variant's configuration
// with a persistent grid. Unimplemented for a case that configuration does not cover.
absl::Status LaunchUnderTest(const AttentionParams& params) {
#ifdef ATTN_BENCH_WS_VARIANTS
  if (g_variant != nullptr) {
    AttentionParams p = params;
    Normalize(p);
    ClampWindow(p.seqlen_q, p.seqlen_k, p.window_left, p.window_right);
    if (p.dtype != DType::kBFloat16 || Bucket(p.head_dim) != g_variant->head_dim) {
      return absl::UnimplementedError("not the dtype (bf16) or bucket of --ws-variant");
    }
    // The variants are dense kernels (kPaged false): a paged case would read its page pools as
    // dense K / V (device call 2 of session 7: an illegal address at paged_ps16_d64_causal).
    if (p.is_paged()) return absl::UnimplementedError("--ws-variant compiles no paged kernel");
    if (absl::Status s = CheckFlashFwdSm90Ws(p); !s.ok()) return s;
    if (p.batch == 0 || p.seqlen_q == 0 || (p.is_varlen() && p.total_q == 0)) {
      return absl::OkStatus();
    }
    FwdSm90WsArgs args;
    if (absl::Status s = MakeFwdSm90WsArgs(p, g_variant->config, true, args); !s.ok()) return s;
    const cudaError_t err = (p.causal ? g_variant->causal : g_variant->dense)(args, nullptr);
    return err == cudaSuccess ? absl::OkStatus() : absl::InternalError(cudaGetErrorString(err));
  }
#endif
  return RunFlashFwdSm90Ws(params, nullptr);
}

uint64_t Seed() {
  static const uint64_t seed = [] {
    const char* env = std::getenv("ATTN_TEST_SEED");
    const uint64_t s =
        env != nullptr
            ? std::strtoull(env, nullptr, 10)
            : static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    std::printf("flash_fwd_sm90ws_test: ATTN_TEST_SEED=%llu\n", static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

#define CUDA_OK(expr)                                                          \
  do {                                                                         \
    const cudaError_t err_ = (expr);                                           \
    ASSERT_EQ(err_, cudaSuccess) << #expr << ": " << cudaGetErrorString(err_); \
  } while (0)

struct Case {
  std::string name;
  int batch = 1;
  int seqlen_q = 128;
  int seqlen_k = 128;
  int q_heads = 2;
  int kv_heads = 2;
  int head_dim = 128;
  bool causal = false;
  float scale = 0.f;  // 0: 1 / sqrt(head_dim)
  float softcap = 0.f;
  bool lse = true;
  // Sink logits drawn from N(0, 2^2): one per head, or per sequence and head.
  bool sinks = false;
  bool sinks_per_batch = false;
  bool packed_qkv = false;  // q, k, v interleaved in one [B, S, 3, H, d] buffer (seqlen_q == k)
  // Packed (varlen) batch when not empty: sequence b has lens_q[b] query and lens_k[b] key rows,
  // q / o [total_q, H, d], k / v [total_k, H_kv, d], lse [H, total_q]; batch, seqlen_q and
  // seqlen_k become the count and the longest lengths.
  std::vector<int> lens_q;
  std::vector<int> lens_k;
  // Varlen: the K and V rows of every sequence without query rows set to +inf. No row attends to
  // them, but the last KV tile of the sequence before reaches into them: its output must not
  // turn NaN (0 * inf) nor change.
  bool inf_in_unread_rows = false;
  // Paged K/V (page_size > 0): contexts of lens_k keys (Varlen's second list) in a pool of pages
  // in random order, q packed by lens_q (or dense, dense_q, every sequence seqlen_q rows). Rows of
  // a last page past its context, spare pages and the rows of a key range's edge pages outside
  // the range hold NaN; page-table entries of pages outside the range or past the context point
  // far outside the pool.
  int page_size = 0;
  bool dense_q = false;
  // Sequence b's key range {begin, end} (empty: none).
  std::vector<std::pair<int, int>> key_ranges;
  // Every odd sequence shares its first fork_pages pages with the sequence before (a fork).
  int fork_pages = 0;

  explicit Case(std::string n) : name(std::move(n)) {}
  Case& Batch(int b) {
    batch = b;
    return *this;
  }
  Case& Seq(int q, int k) {
    seqlen_q = q;
    seqlen_k = k;
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
  Case& Causal() {
    causal = true;
    return *this;
  }
  Case& Scale(float s) {
    scale = s;
    return *this;
  }
  Case& Softcap(float cap) {
    softcap = cap;
    return *this;
  }
  Case& NoLse() {
    lse = false;
    return *this;
  }
  Case& Sinks(bool per_batch) {
    sinks = true;
    sinks_per_batch = per_batch;
    return *this;
  }
  Case& PackedQkv() {
    packed_qkv = true;
    return *this;
  }
  Case& Varlen(std::vector<int> q, std::vector<int> k) {
    lens_q = std::move(q);
    lens_k = std::move(k);
    batch = static_cast<int>(lens_q.size());
    seqlen_q = seqlen_k = 0;
    for (int len : lens_q) seqlen_q = std::max(seqlen_q, len);
    for (int len : lens_k) seqlen_k = std::max(seqlen_k, len);
    return *this;
  }
  Case& InfInUnreadRows() {
    inf_in_unread_rows = true;
    return *this;
  }
  Case& Paged(int size) {
    page_size = size;
    return *this;
  }
  // Paged with q dense: batch sequences of q rows against contexts `contexts`.
  // (The query lengths are built before `contexts` moves: as two arguments of one call their
  // order of evaluation is unspecified, and GCC moved `contexts` first, leaving no sequence.)
  Case& PagedDenseQ(int size, int q, std::vector<int> contexts) {
    std::vector<int> lens(contexts.size(), q);
    Varlen(std::move(lens), std::move(contexts));
    dense_q = true;
    return Paged(size);
  }
  Case& KeyRanges(std::vector<std::pair<int, int>> ranges) {
    key_ranges = std::move(ranges);
    return *this;
  }
  Case& Fork(int pages) {
    fork_pages = pages;
    return *this;
  }
  bool paged() const { return page_size > 0; }
  // q packed by cu_seqlens_q.
  bool varlen() const { return !lens_q.empty() && !dense_q; }
};

// A page-table entry the kernel must never read: a page far past the pool (a bulk copy from it
// faults).
constexpr int32_t kPoisonPage = 1 << 28;

// The paged K/V of a case, on the host: pools [pages, page_size, kv_heads, d] (k and v, page
// stride page_stride elements), the page table [batch, per_seq], contexts and key ranges.
struct PagedPools {
  std::vector<uint16_t> k, v;
  int64_t page_stride = 0;
  int per_seq = 0;
  std::vector<int32_t> table, seqlens, ranges;
};

PagedPools MakePagedPools(const Case& c, DType dtype, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.f, 1.f);
  const auto to16 = [&](float x) {
    return dtype == DType::kFloat16 ? FloatToHalf(x) : FloatToBFloat16(x);
  };
  const uint16_t nan = dtype == DType::kFloat16 ? 0x7e00u : 0x7fc0u;
  const int ps = c.page_size;
  const int batch = static_cast<int>(c.lens_k.size());
  PagedPools pools;
  const int64_t row = int64_t{c.kv_heads} * c.head_dim;
  // Padding between pages: the page stride is not the rows' extent.
  pools.page_stride = ps * row + 64;
  int needed = 0;
  for (int len : c.lens_k) pools.per_seq = std::max(pools.per_seq, (len + ps - 1) / ps);
  pools.per_seq += 1;  // a slot past every context, poisoned
  for (int len : c.lens_k) needed += (len + ps - 1) / ps;
  const int spare = 3;
  const int pages = needed + spare;
  std::vector<int32_t> ids(pages);
  for (int i = 0; i < pages; ++i) ids[i] = i;
  std::shuffle(ids.begin(), ids.end(), rng);
  pools.table.assign(static_cast<size_t>(batch) * pools.per_seq, kPoisonPage);
  int next = 0;
  for (int b = 0; b < batch; ++b) {
    for (int e = 0; e < (c.lens_k[b] + ps - 1) / ps; ++e) {
      const bool shared = c.fork_pages > 0 && b % 2 == 1 && e < c.fork_pages;
      pools.table[b * pools.per_seq + e] =
          shared ? pools.table[(b - 1) * pools.per_seq + e] : ids[next++];
    }
  }
  pools.k.resize(pages * pools.page_stride);
  pools.v.resize(pages * pools.page_stride);
  for (auto* pool : {&pools.k, &pools.v}) {
    for (uint16_t& x : *pool) x = to16(normal(rng));
  }
  const auto poison_rows = [&](int32_t page, int first, int last) {
    for (auto* pool : {&pools.k, &pools.v}) {
      for (int64_t i = page * pools.page_stride + first * row;
           i < page * pools.page_stride + last * row; ++i) {
        (*pool)[i] = nan;
      }
    }
  };
  for (int i = needed; i < pages; ++i) poison_rows(ids[i], 0, ps);
  pools.seqlens = c.lens_k;
  for (int b = 0; b < batch; ++b) {
    const int len = c.lens_k[b];
    if (len % ps != 0) poison_rows(pools.table[b * pools.per_seq + len / ps], len % ps, ps);
    int begin = 0, end = len;
    if (!c.key_ranges.empty()) {
      pools.ranges.push_back(c.key_ranges[b].first);
      pools.ranges.push_back(c.key_ranges[b].second);
      begin = std::min(std::max(c.key_ranges[b].first, 0), len);
      end = std::max(std::min(c.key_ranges[b].second, len), begin);
    }
    // Entries of pages without a key of [begin, end) are never read; the rows of the range's
    // edge pages outside it are copied, and must not reach the output.
    for (int e = 0; e < pools.per_seq; ++e) {
      const bool in_range = end > begin && e >= begin / ps && e < (end + ps - 1) / ps;
      if (!in_range) pools.table[b * pools.per_seq + e] = kPoisonPage;
    }
    if (!c.key_ranges.empty() && end > begin) {
      poison_rows(pools.table[b * pools.per_seq + begin / ps], 0, begin % ps);
      const int last_rows = std::min(ps, len - (end - 1) / ps * ps);
      poison_rows(pools.table[b * pools.per_seq + (end - 1) / ps], (end - 1) % ps + 1, last_rows);
    }
  }
  return pools;
}

// Forty sequences of 0 .. 299 rows (lengths i * 37 mod 300: an empty one first), the same for q
// and k: more query tiles than an H100 has SMs once heads are counted.
std::vector<int> ManyLengths() {
  std::vector<int> lens;
  for (int i = 0; i < 40; ++i) lens.push_back(i * 37 % 300);
  return lens;
}

std::vector<Case> Cases() {
  std::vector<Case> c;
  // Whole tiles, then ragged tails in both the query and the key direction.
  c.push_back(Case("d128_s1024").Batch(2).Seq(1024, 1024).Heads(4, 4));
  c.push_back(Case("d128_s1024_causal").Batch(2).Seq(1024, 1024).Heads(4, 4).Causal());
  c.push_back(Case("d64_s512").Batch(2).Seq(512, 512).Heads(4, 4).Dim(64));
  c.push_back(Case("d64_s512_causal").Batch(2).Seq(512, 512).Heads(4, 4).Dim(64).Causal());
  c.push_back(Case("d128_s1000").Seq(1000, 1000).Heads(3, 3));
  c.push_back(Case("d128_s1000_causal").Seq(1000, 1000).Heads(3, 3).Causal());
  c.push_back(Case("d64_s77").Batch(3).Seq(77, 77).Dim(64));
  c.push_back(Case("d64_s77_causal").Batch(3).Seq(77, 77).Dim(64).Causal());
  c.push_back(Case("d128_s1").Batch(2).Seq(1, 1));
  c.push_back(Case("d128_q1_k3000").Batch(2).Seq(1, 3000));
  c.push_back(Case("d64_q1000_k17").Seq(1000, 17).Dim(64));
  c.push_back(Case("d64_q17_k1000").Seq(17, 1000).Dim(64));
  // Causal, bottom-right aligned: more queries than keys leaves the first rows without a key
  // (o = 0, lse = -inf), fewer makes every row see a long prefix.
  c.push_back(Case("d128_q1000_k300_causal").Seq(1000, 300).Causal());
  c.push_back(Case("d128_q300_k1000_causal").Seq(300, 1000).Causal());
  c.push_back(Case("d64_q513_k129_causal").Batch(2).Seq(513, 129).Dim(64).Causal());
  // GQA and MQA.
  c.push_back(Case("d128_gqa_8_2").Seq(700, 700).Heads(8, 2));
  c.push_back(Case("d128_gqa_8_2_causal").Seq(700, 700).Heads(8, 2).Causal());
  c.push_back(Case("d64_mqa_4_1_causal").Batch(2).Seq(333, 333).Heads(4, 1).Dim(64).Causal());
  // Head dims below their bucket: zero-filled columns in the copies, predicated stores.
  c.push_back(Case("d40_s300").Seq(300, 300).Dim(40));
  c.push_back(Case("d96_s300_causal").Seq(300, 300).Dim(96).Causal());
  c.push_back(Case("d120_s257").Batch(2).Seq(257, 257).Dim(120));
  c.push_back(Case("d8_s200").Seq(200, 200).Dim(8));
  c.push_back(Case("d192_s300_causal").Seq(300, 300).Dim(192).Causal());
  // Bucket 256 (64-key tiles, O staged in Q).
  c.push_back(Case("d256_s1000").Seq(1000, 1000).Heads(2, 2).Dim(256));
  c.push_back(Case("d256_s1000_causal").Seq(1000, 1000).Heads(2, 2).Dim(256).Causal());
  c.push_back(Case("d256_gqa_4_2_causal_sinks")
                  .Batch(2)
                  .Seq(257, 513)
                  .Heads(4, 2)
                  .Dim(256)
                  .Causal()
                  .Sinks(false));
  // Options of the dense variant.
  c.push_back(Case("d128_scale").Seq(600, 600).Scale(0.3f));
  c.push_back(Case("d128_nolse_causal").Seq(600, 600).Causal().NoLse());
  // Softcap small enough to bend the scores of unit-variance inputs (|s scale| reaches ~4).
  c.push_back(Case("d128_softcap").Batch(2).Seq(500, 500).Softcap(2.f));
  c.push_back(Case("d64_softcap_causal").Seq(700, 900).Dim(64).Causal().Softcap(1.5f));
  c.push_back(Case("d256_softcap_scale_sinks")
                  .Seq(300, 300)
                  .Dim(256)
                  .Scale(0.2f)
                  .Softcap(3.f)
                  .Sinks(false));
  c.push_back(Case("d128_sinks").Batch(2).Seq(400, 400).Sinks(false));
  c.push_back(
      Case("d64_sinks_per_batch_causal").Batch(2).Seq(300, 500).Dim(64).Causal().Sinks(true));
  c.push_back(Case("d128_sinks_causal_empty_rows").Seq(400, 100).Causal().Sinks(false));
  // Strided inputs: q, k and v rows 3 * heads * d apart.
  c.push_back(Case("d128_packed_qkv").Batch(2).Seq(300, 300).Heads(2, 2).PackedQkv());
  c.push_back(Case("d64_packed_qkv_causal").Seq(500, 500).Heads(4, 4).Dim(64).PackedQkv().Causal());
  // Long sequences: the stage rings wrap many times, the causal tile order runs long.
  c.push_back(Case("d128_s4096_causal").Seq(4096, 4096).Heads(1, 1).Causal());
  c.push_back(Case("d64_s3000").Seq(3000, 3000).Heads(1, 1).Dim(64));
  // Packed (varlen) batches. A sequence's last query tile and last KV tile reach into the next
  // sequence's rows (masked keys, unstored query rows); empty sequences; Sq != Sk per sequence.
  c.push_back(Case("varlen_d128_ragged")
                  .Varlen({300, 1, 0, 1000, 129, 77}, {300, 1, 0, 1000, 129, 77})
                  .Heads(4, 4));
  c.push_back(Case("varlen_d128_ragged_causal")
                  .Varlen({300, 1, 0, 1000, 129, 77}, {300, 1, 0, 1000, 129, 77})
                  .Heads(4, 4)
                  .Causal());
  // Sq > Sk (causal rows without keys), Sq < Sk, query rows against an empty context (o = 0,
  // lse = -inf), keys without query rows.
  c.push_back(Case("varlen_d64_q_ne_k_causal")
                  .Varlen({100, 0, 513, 7, 256, 40}, {300, 50, 129, 0, 256, 1000})
                  .Heads(2, 2)
                  .Dim(64)
                  .Causal());
  c.push_back(Case("varlen_d64_q_ne_k")
                  .Varlen({100, 0, 513, 7, 256, 40}, {300, 50, 129, 0, 256, 1000})
                  .Heads(2, 2)
                  .Dim(64));
  c.push_back(Case("varlen_d128_gqa_causal_softcap_sinks")
                  .Varlen({700, 333, 1024}, {700, 333, 1024})
                  .Heads(8, 2)
                  .Causal()
                  .Softcap(2.f)
                  .Sinks(true));
  c.push_back(Case("varlen_d64_mqa_sinks")
                  .Varlen({1, 2000, 17}, {3000, 2000, 17})
                  .Heads(4, 1)
                  .Dim(64)
                  .Sinks(false));
  c.push_back(
      Case("varlen_d128_many_causal").Varlen(ManyLengths(), ManyLengths()).Heads(4, 2).Causal());
  c.push_back(Case("varlen_d40_many").Varlen(ManyLengths(), ManyLengths()).Heads(4, 4).Dim(40));
  // The same without a mask at d 128: several tiles per persistent block of a 128-row bucket
  // without causal (the Q buffers and the next tile's first S across tiles).
  c.push_back(Case("varlen_d128_many").Varlen(ManyLengths(), ManyLengths()).Heads(4, 4));
  c.push_back(Case("varlen_d256_causal_sinks")
                  .Varlen({257, 64, 0, 500}, {513, 64, 10, 500})
                  .Heads(2, 2)
                  .Dim(256)
                  .Causal()
                  .Sinks(true));
  c.push_back(Case("varlen_d128_one_sequence_causal").Varlen({1000}, {1000}).Heads(2, 2).Causal());
  // Non-finite keys and values in rows only a neighbour's last KV tile copies.
  c.push_back(Case("varlen_d128_inf_neighbour")
                  .Varlen({300, 0, 200, 0}, {300, 77, 129, 64})
                  .Heads(2, 2)
                  .InfInUnreadRows());
  c.push_back(Case("varlen_d64_inf_neighbour_causal")
                  .Varlen({300, 0, 200, 0}, {300, 77, 129, 64})
                  .Heads(2, 1)
                  .Dim(64)
                  .Causal()
                  .InfInUnreadRows());
  c.push_back(Case("varlen_d256_inf_neighbour_causal")
                  .Varlen({100, 0, 65, 0}, {100, 50, 65, 200})
                  .Heads(2, 2)
                  .Dim(256)
                  .Causal()
                  .InfInUnreadRows());
  // Paged K/V (chunked prefill: each sequence's query rows are the last of its context, causal
  // bottom-right): every page size, partial last pages, an empty context, a context of one key.
  for (int ps : {16, 32, 64, 128, 256}) {
    c.push_back(Case("paged_ps" + std::to_string(ps) + "_gqa_causal")
                    .Varlen({300, 77, 5, 1, 129, 64}, {300, 1000, 0, 1, 129, 700})
                    .Heads(8, 2)
                    .Causal()
                    .Paged(ps));
    c.push_back(Case("paged_ps" + std::to_string(ps) + "_d64_causal")
                    .Varlen({200, 1, 513, 40}, {1000, 17, 513, 3000})
                    .Heads(4, 4)
                    .Dim(64)
                    .Causal()
                    .Paged(ps));
    c.push_back(Case("paged_ps" + std::to_string(ps) + "_d64")
                    .Varlen({200, 1, 513, 40}, {1000, 17, 513, 3000})
                    .Heads(4, 2)
                    .Dim(64)
                    .Paged(ps));
    c.push_back(Case("paged_ps" + std::to_string(ps) + "_d256_causal_sinks")
                    .Varlen({100, 65, 7}, {300, 65, 500})
                    .Heads(2, 1)
                    .Dim(256)
                    .Causal()
                    .Sinks(true)
                    .Paged(ps));
  }
  // GQA 1 / 4 / 8 / 16 (16 query heads on one KV head: MQA too) and MQA with 4 query heads.
  for (const auto& [q_heads, kv_heads] :
       std::vector<std::pair<int, int>>{{4, 4}, {8, 2}, {16, 2}, {16, 1}, {4, 1}}) {
    c.push_back(Case("paged_ps64_heads_" + std::to_string(q_heads) + "_" +
                     std::to_string(kv_heads) + "_causal")
                    .Varlen({257, 64, 1}, {1200, 64, 333})
                    .Heads(q_heads, kv_heads)
                    .Causal()
                    .Paged(64));
  }
  // q dense (every sequence the same number of rows) against contexts of their own lengths, with
  // softcap and the LSE; head dims below their bucket.
  c.push_back(Case("paged_dense_q_ps32_softcap")
                  .PagedDenseQ(32, 200, {500, 200, 1111})
                  .Heads(4, 2)
                  .Softcap(2.f));
  c.push_back(
      Case("paged_dense_q_ps128_d96_causal").PagedDenseQ(128, 300, {300, 999}).Dim(96).Causal());
  c.push_back(Case("paged_ps16_d40").Varlen({100, 33}, {250, 1000}).Dim(40).Paged(16));
  // Forks: odd sequences share their first pages with the sequence before.
  c.push_back(Case("paged_fork_ps32_causal")
                  .Varlen({100, 300, 64, 1}, {700, 900, 400, 500})
                  .Heads(4, 2)
                  .Causal()
                  .Fork(10)
                  .Paged(32));
  c.push_back(
      Case("paged_fork_ps128_d64").Varlen({100, 300}, {700, 900}).Dim(64).Fork(3).Paged(128));
  // Key ranges (sessions' Attend partials): ranges inside pages and across them, a range past the
  // context (clamped), an empty range and an inverted one (o = 0, lse = -inf or the sink).
  for (int ps : {16, 64, 256}) {
    c.push_back(Case("paged_key_range_ps" + std::to_string(ps) + "_causal")
                    .Varlen({300, 77, 50, 10, 128}, {1000, 1000, 600, 500, 128})
                    .Heads(4, 1)
                    .Causal()
                    .KeyRanges({{37, 900}, {0, 129}, {513, 5000}, {200, 200}, {100, 50}})
                    .Paged(ps));
    c.push_back(Case("paged_key_range_ps" + std::to_string(ps) + "_d64_sinks")
                    .Varlen({300, 77, 50}, {1000, 1000, 600})
                    .Heads(4, 4)
                    .Dim(64)
                    .Sinks(false)
                    .KeyRanges({{5, 21}, {300, 1000}, {1, 599}})
                    .Paged(ps));
    c.push_back(Case("paged_key_range_ps" + std::to_string(ps) + "_d256")
                    .Varlen({64, 100}, {1000, 333})
                    .Heads(2, 2)
                    .Dim(256)
                    .KeyRanges({{65, 700}, {0, 300}})
                    .Paged(ps));
  }
  // Long contexts: the stage rings wrap many times through random pages.
  c.push_back(Case("paged_ps64_long_causal")
                  .Varlen({2048, 512}, {4096, 3000})
                  .Heads(2, 1)
                  .Causal()
                  .Paged(64));
  return c;
}

class FlashFwdSm90WsTest : public ::testing::TestWithParam<Case> {};

double OutputValue(DType dtype, const std::vector<uint16_t>& out, int64_t i) {
  return dtype == DType::kFloat16 ? HalfToFloat(out[i]) : BFloat16ToFloat(out[i]);
}

void RunCase(const Case& c, DType dtype, bool& ran) {
  ran = false;
  const int d = c.head_dim;
#ifdef ATTN_BENCH_WS_VARIANTS
  // Before the reference, which dominates the run time: a case --ws-variant does not cover.
  if (g_variant != nullptr && (dtype != DType::kBFloat16 || Bucket(d) != g_variant->head_dim)) {
    std::printf("  %-36s %s  skipped: not the dtype (bf16) or bucket of --ws-variant\n",
                c.name.c_str(), DTypeName(dtype));
    return;
  }
#endif
  const int64_t es = 2;
  std::mt19937_64 rng(Seed() ^ std::hash<std::string>{}(c.name) ^ static_cast<uint64_t>(dtype));
  std::normal_distribution<float> normal(0.f, 1.f);
  const auto to16 = [&](float x) {
    return dtype == DType::kFloat16 ? FloatToHalf(x) : FloatToBFloat16(x);
  };

  AttentionParams p;
  p.dtype = dtype;
  p.batch = c.batch;
  p.seqlen_q = c.seqlen_q;
  p.seqlen_k = c.seqlen_k;
  p.q_heads = c.q_heads;
  p.kv_heads = c.kv_heads;
  p.head_dim = d;
  p.causal = c.causal;
  p.softmax_scale = c.scale > 0.f ? c.scale : 1.f / std::sqrt(static_cast<float>(d));
  p.softcap = c.softcap;
  p.sinks = c.sinks;
  // Packed batch: cu_seqlens on the host here (the reference reads them), on the device below.
  std::vector<int32_t> h_cu_q, h_cu_k;
  if (c.varlen()) {
    ASSERT_FALSE(c.packed_qkv) << "a case is packed QKV or varlen, not both";
    ASSERT_EQ(c.lens_q.size(), c.lens_k.size());
    h_cu_q = {0};
    h_cu_k = {0};
    for (size_t b = 0; b < c.lens_q.size(); ++b) {
      h_cu_q.push_back(h_cu_q.back() + c.lens_q[b]);
      h_cu_k.push_back(h_cu_k.back() + c.lens_k[b]);
    }
    p.cu_seqlens_q = h_cu_q.data();
    p.total_q = h_cu_q.back();
    if (!c.paged()) {
      p.cu_seqlens_k = h_cu_k.data();
      p.total_k = h_cu_k.back();
    }
  }
  SetContiguousStrides(p);
  PagedPools pools;
  if (c.paged()) {
    ASSERT_FALSE(c.packed_qkv || c.inf_in_unread_rows);
    ASSERT_FALSE(c.fork_pages > 0 && !c.key_ranges.empty()) << "forks or key ranges, not both";
    ASSERT_TRUE(c.key_ranges.empty() || c.key_ranges.size() == c.lens_k.size());
    pools = MakePagedPools(c, dtype, rng);
    p.page_table = pools.table.data();
    p.page_table_stride = pools.per_seq;
    p.page_size = c.page_size;
    p.seqlens_k = pools.seqlens.data();
    p.key_range = c.key_ranges.empty() ? nullptr : pools.ranges.data();
    p.k_batch_stride = p.v_batch_stride = pools.page_stride;
  }

  // Inputs on the host, 16-bit. Packed QKV: one [B, S, 3, H, d] buffer, q at head slot 0.
  const int64_t q_rows = c.varlen() ? p.total_q : int64_t{c.batch} * c.seqlen_q;
  const int64_t k_rows = c.paged() ? 0 : c.varlen() ? p.total_k : int64_t{c.batch} * c.seqlen_k;
  const int64_t q_count = q_rows * c.q_heads * d;
  const int64_t kv_count = k_rows * c.kv_heads * d;
  std::vector<uint16_t> h_q, h_k, h_v, h_qkv;
  if (c.packed_qkv) {
    h_qkv.resize(int64_t{c.batch} * c.seqlen_q * 3 * c.q_heads * d);
    for (uint16_t& x : h_qkv) x = to16(normal(rng));
    const int64_t row = 3 * int64_t{c.q_heads} * d;
    p.q_row_stride = p.k_row_stride = p.v_row_stride = row;
    p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = row * c.seqlen_q;
  } else {
    h_q.resize(q_count);
    h_k.resize(kv_count);
    h_v.resize(kv_count);
    for (auto* buf : {&h_q, &h_k, &h_v}) {
      for (uint16_t& x : *buf) x = to16(normal(rng));
    }
  }
  if (c.inf_in_unread_rows) {
    const uint16_t inf = dtype == DType::kFloat16 ? 0x7c00u : 0x7f80u;
    const int64_t row = int64_t{c.kv_heads} * d;
    for (size_t b = 0; b < c.lens_q.size(); ++b) {
      if (c.lens_q[b] != 0) continue;
      for (int64_t i = h_cu_k[b] * row; i < h_cu_k[b + 1] * row; ++i) h_k[i] = h_v[i] = inf;
    }
  }
  std::vector<float> h_sinks;
  if (c.sinks) {
    h_sinks.resize(static_cast<size_t>(c.sinks_per_batch ? c.batch : 1) * c.q_heads);
    for (float& x : h_sinks) x = 2.f * normal(rng);
    p.sink_batch_stride = c.sinks_per_batch ? c.q_heads : 0;
  }

  // Before the reference, which dominates the run time: a case this build does not cover (its
  // dtype, bucket or the paged variant not compiled; the pointers are not set yet, and the
  // check reads no memory).
  if (const absl::Status early = CheckFlashFwdSm90Ws(p); absl::IsUnimplemented(early)) {
    std::printf("  %-36s %s  skipped: %s\n", c.name.c_str(), DTypeName(dtype),
                std::string(early.message()).c_str());
    return;
  }

  // The reference on host pointers.
  AttentionParams hp = p;
  if (c.packed_qkv) {
    hp.q = h_qkv.data();
    hp.k = h_qkv.data() + int64_t{c.q_heads} * d;
    hp.v = h_qkv.data() + 2 * int64_t{c.q_heads} * d;
  } else {
    hp.q = h_q.data();
    hp.k = c.paged() ? pools.k.data() : h_k.data();
    hp.v = c.paged() ? pools.v.data() : h_v.data();
  }
  hp.sink_logits = c.sinks ? h_sinks.data() : nullptr;
  const int64_t lse_count = q_rows * c.q_heads;
  std::vector<double> ref_o(q_count), ref_lse(lse_count);
  testing::ReferenceAttention(hp, ref_o.data(), ref_lse.data());

  // Device buffers; o and lse poisoned (all-ones bits: NaN in every dtype) with a guard past
  // their ends.
  std::vector<void*> allocations;
  const auto alloc = [&](size_t bytes) {
    void* ptr = nullptr;
    if (cudaMalloc(&ptr, bytes) != cudaSuccess) return static_cast<void*>(nullptr);
    allocations.push_back(ptr);
    return ptr;
  };
  const auto upload = [&](const void* host, size_t bytes) {
    void* dev = alloc(bytes);
    if (dev != nullptr) cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice);
    return dev;
  };
  AttentionParams dp = p;
  if (c.packed_qkv) {
    auto* qkv = static_cast<uint16_t*>(upload(h_qkv.data(), h_qkv.size() * es));
    ASSERT_NE(qkv, nullptr);
    dp.q = qkv;
    dp.k = qkv + int64_t{c.q_heads} * d;
    dp.v = qkv + 2 * int64_t{c.q_heads} * d;
  } else {
    dp.q = upload(h_q.data(), q_count * es);
    if (c.paged()) {
      dp.k = upload(pools.k.data(), pools.k.size() * es);
      dp.v = upload(pools.v.data(), pools.v.size() * es);
    } else {
      dp.k = upload(h_k.data(), kv_count * es);
      dp.v = upload(h_v.data(), kv_count * es);
    }
    ASSERT_TRUE(dp.q != nullptr && dp.k != nullptr && dp.v != nullptr);
  }
  if (c.paged()) {
    dp.page_table = static_cast<const int32_t*>(
        upload(pools.table.data(), pools.table.size() * sizeof(int32_t)));
    dp.seqlens_k = static_cast<const int32_t*>(
        upload(pools.seqlens.data(), pools.seqlens.size() * sizeof(int32_t)));
    ASSERT_TRUE(dp.page_table != nullptr && dp.seqlens_k != nullptr);
    if (!c.key_ranges.empty()) {
      dp.key_range = static_cast<const int32_t*>(
          upload(pools.ranges.data(), pools.ranges.size() * sizeof(int32_t)));
      ASSERT_NE(dp.key_range, nullptr);
    }
  }
  constexpr int64_t kGuardBytes = 64;
  dp.o = alloc(q_count * es + kGuardBytes);
  ASSERT_NE(dp.o, nullptr);
  CUDA_OK(cudaMemset(dp.o, 0xff, q_count * es + kGuardBytes));
  dp.lse = nullptr;
  if (c.lse) {
    dp.lse = static_cast<float*>(alloc((lse_count + 4) * sizeof(float)));
    ASSERT_NE(dp.lse, nullptr);
    CUDA_OK(cudaMemset(dp.lse, 0xff, (lse_count + 4) * sizeof(float)));
  }
  if (c.varlen()) {
    dp.cu_seqlens_q =
        static_cast<const int32_t*>(upload(h_cu_q.data(), h_cu_q.size() * sizeof(int32_t)));
    ASSERT_NE(dp.cu_seqlens_q, nullptr);
    if (!c.paged()) {
      dp.cu_seqlens_k =
          static_cast<const int32_t*>(upload(h_cu_k.data(), h_cu_k.size() * sizeof(int32_t)));
      ASSERT_NE(dp.cu_seqlens_k, nullptr);
    }
  }
  dp.sink_logits = nullptr;
  if (c.sinks) {
    dp.sink_logits =
        static_cast<const float*>(upload(h_sinks.data(), h_sinks.size() * sizeof(float)));
  }
  CUDA_OK(cudaDeviceSynchronize());

  const absl::Status check = CheckFlashFwdSm90Ws(dp);
  if (absl::IsUnimplemented(check)) {
    for (void* ptr : allocations) cudaFree(ptr);
    std::printf("  %-36s %s  skipped: %s\n", c.name.c_str(), DTypeName(dtype),
                std::string(check.message()).c_str());
    return;
  }
  const absl::Status status = LaunchUnderTest(dp);
  if (absl::IsUnimplemented(status)) {
    for (void* ptr : allocations) cudaFree(ptr);
    std::printf("  %-36s %s  skipped: %s\n", c.name.c_str(), DTypeName(dtype),
                std::string(status.message()).c_str());
    return;
  }
  ASSERT_TRUE(status.ok()) << status;
  CUDA_OK(cudaDeviceSynchronize());
  ran = true;

  std::vector<uint16_t> out(q_count + kGuardBytes / es);
  std::vector<float> out_lse(c.lse ? lse_count + 4 : 0);
  CUDA_OK(cudaMemcpy(out.data(), dp.o, out.size() * es, cudaMemcpyDeviceToHost));
  if (c.lse) {
    CUDA_OK(
        cudaMemcpy(out_lse.data(), dp.lse, out_lse.size() * sizeof(float), cudaMemcpyDeviceToHost));
  }
  for (void* ptr : allocations) cudaFree(ptr);

  for (int64_t i = q_count; i < static_cast<int64_t>(out.size()); ++i) {
    ASSERT_EQ(out[i], 0xffffu) << "write past the end of o";
  }
  for (int64_t i = lse_count; i < static_cast<int64_t>(out_lse.size()); ++i) {
    ASSERT_TRUE(std::isnan(out_lse[i])) << "write past the end of lse";
  }

  const Tolerance tol = ToleranceFor(dtype);
  double err2 = 0.0, ref2 = 0.0;
  int64_t bad_rows = 0;
  std::string first_bad;
  for (int64_t row = 0; row < q_count / d; ++row) {
    double row_err2 = 0.0, row_ref2 = 0.0;
    bool nan = false;
    for (int64_t j = 0; j < d; ++j) {
      const double x = OutputValue(dtype, out, row * d + j);
      const double r = ref_o[row * d + j];
      nan |= !std::isfinite(x);
      row_err2 += (x - r) * (x - r);
      row_ref2 += r * r;
    }
    err2 += row_err2;
    ref2 += row_ref2;
    const double bound = tol.row_factor * tol.rel_fro * std::sqrt(row_ref2) + 1e-3;
    if (nan || std::sqrt(row_err2) > bound) {
      if (bad_rows++ == 0) {
        first_bad = "token row " + std::to_string(row / c.q_heads) + " head " +
                    std::to_string(row % c.q_heads) + ": |err| " +
                    std::to_string(std::sqrt(row_err2)) + " |ref| " +
                    std::to_string(std::sqrt(row_ref2)) + (nan ? " (non-finite output)" : "");
      }
    }
  }
  const double rel = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  EXPECT_EQ(bad_rows, 0) << bad_rows << " rows off; first: " << first_bad;
  EXPECT_LT(rel, tol.rel_fro) << "relative Frobenius error of o";
  std::printf("  %-36s %s  rel_err %.2e\n", c.name.c_str(), DTypeName(dtype), rel);

  if (c.lse) {
    int64_t bad_lse = 0;
    std::string first;
    for (int64_t i = 0; i < lse_count; ++i) {
      const double r = ref_lse[i];
      const double x = out_lse[i];
      const bool ok = std::isinf(r) ? (std::isinf(x) && x < 0) : std::abs(x - r) <= tol.lse_abs;
      if (!ok && bad_lse++ == 0) {
        first =
            "index " + std::to_string(i) + ": " + std::to_string(x) + " vs " + std::to_string(r);
      }
    }
    EXPECT_EQ(bad_lse, 0) << bad_lse << " lse values off; first " << first;
  }
}

TEST_P(FlashFwdSm90WsTest, MatchesReference) {
  const Case& c = GetParam();
  int ran = 0;
  for (DType dtype : {DType::kBFloat16, DType::kFloat16}) {
    bool dtype_ran = false;
    RunCase(c, dtype, dtype_ran);
    if (HasFatalFailure()) return;
    ran += dtype_ran ? 1 : 0;
  }
  if (ran == 0) GTEST_SKIP() << "no kernel for this case in this build";
}

INSTANTIATE_TEST_SUITE_P(Cases, FlashFwdSm90WsTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

// What the kernel does not cover is refused with UNIMPLEMENTED naming it, never run wrongly.
TEST(FlashFwdSm90WsCheckTest, RefusesWhatItDoesNotCover) {
  AttentionParams p;
  p.dtype = DType::kBFloat16;
  p.batch = 1;
  p.seqlen_q = p.seqlen_k = 128;
  p.q_heads = p.kv_heads = 1;
  p.head_dim = 128;
  p.softmax_scale = 0.125f;
  SetContiguousStrides(p);
  alignas(16) static uint16_t buffer[8];
  p.q = p.k = p.v = buffer;
  p.o = buffer;
  AttentionParams w = p;
  w.window_left = 16;
  EXPECT_TRUE(absl::IsUnimplemented(CheckFlashFwdSm90Ws(w))) << CheckFlashFwdSm90Ws(w);
  AttentionParams s = p;
  s.alibi = true;
  s.alibi_slopes = reinterpret_cast<const float*>(buffer);
  EXPECT_TRUE(absl::IsUnimplemented(CheckFlashFwdSm90Ws(s)));
  AttentionParams m = p;
  m.mask_kind = MaskKind::kBool;
  m.mask = buffer;
  EXPECT_TRUE(absl::IsUnimplemented(CheckFlashFwdSm90Ws(m)));
  // Packed batches are covered exactly when the same dense batch is, given both cu_seqlens;
  // paged ones are not.
  const absl::Status dense = CheckFlashFwdSm90Ws(p);
  AttentionParams v = p;
  v.cu_seqlens_q = v.cu_seqlens_k = reinterpret_cast<const int32_t*>(buffer);
  v.total_q = v.total_k = 128;
  SetContiguousStrides(v);
  EXPECT_EQ(CheckFlashFwdSm90Ws(v).code(), dense.code()) << CheckFlashFwdSm90Ws(v);
  if (dense.ok()) {
    AttentionParams half = v;
    half.cu_seqlens_k = nullptr;
    EXPECT_TRUE(absl::IsInvalidArgument(CheckFlashFwdSm90Ws(half))) << CheckFlashFwdSm90Ws(half);
    AttentionParams huge = v;
    huge.total_q = int64_t{1} << 31;
    EXPECT_TRUE(absl::IsInvalidArgument(CheckFlashFwdSm90Ws(huge))) << CheckFlashFwdSm90Ws(huge);
  }
  // Paged K/V: covered exactly when the dense batch is, in a build with the paged variants;
  // the paged fields' rules are INVALID_ARGUMENT naming the field; seqlens_k or a key range
  // without a page table are not covered.
  AttentionParams pg = p;
  pg.page_table = reinterpret_cast<const int32_t*>(buffer);
  pg.seqlens_k = reinterpret_cast<const int32_t*>(buffer);
  pg.page_size = 64;
  // (A build without the paged variants names the option; the test does not link the forward
  // dispatch, which would bring every other kernel into its binary, to ask it.)
  const absl::Status paged = CheckFlashFwdSm90Ws(pg);
  if (absl::IsUnimplemented(paged) &&
      paged.message().find("ATTN_KERNEL_PAGED") != std::string_view::npos) {
    EXPECT_TRUE(dense.ok() || absl::IsUnimplemented(dense)) << dense;
  } else {
    EXPECT_EQ(CheckFlashFwdSm90Ws(pg).code(), dense.code()) << CheckFlashFwdSm90Ws(pg);
    if (dense.ok()) {
      AttentionParams bad = pg;
      bad.page_size = 48;
      EXPECT_TRUE(absl::IsInvalidArgument(CheckFlashFwdSm90Ws(bad))) << CheckFlashFwdSm90Ws(bad);
      EXPECT_NE(CheckFlashFwdSm90Ws(bad).message().find("page_size"), std::string_view::npos);
      bad.page_size = 512;
      EXPECT_TRUE(absl::IsInvalidArgument(CheckFlashFwdSm90Ws(bad))) << CheckFlashFwdSm90Ws(bad);
      AttentionParams no_lens = pg;
      no_lens.seqlens_k = nullptr;
      EXPECT_TRUE(absl::IsInvalidArgument(CheckFlashFwdSm90Ws(no_lens)));
      AttentionParams with_cu_k = pg;
      with_cu_k.cu_seqlens_q = with_cu_k.cu_seqlens_k = reinterpret_cast<const int32_t*>(buffer);
      with_cu_k.total_q = 128;
      EXPECT_TRUE(absl::IsInvalidArgument(CheckFlashFwdSm90Ws(with_cu_k)));
      AttentionParams packed_q = pg;
      packed_q.cu_seqlens_q = reinterpret_cast<const int32_t*>(buffer);
      packed_q.total_q = 128;
      SetContiguousStrides(packed_q);
      packed_q.k_batch_stride = packed_q.v_batch_stride = 64 * 128;
      EXPECT_TRUE(CheckFlashFwdSm90Ws(packed_q).ok()) << CheckFlashFwdSm90Ws(packed_q);
      AttentionParams two = pg;
      two.batch = 2;
      two.page_table_stride = 0;
      EXPECT_TRUE(absl::IsInvalidArgument(CheckFlashFwdSm90Ws(two)));
    }
  }
  AttentionParams lens_only = p;
  lens_only.seqlens_k = reinterpret_cast<const int32_t*>(buffer);
  EXPECT_TRUE(absl::IsUnimplemented(CheckFlashFwdSm90Ws(lens_only)));
  AttentionParams range_only = p;
  range_only.key_range = reinterpret_cast<const int32_t*>(buffer);
  EXPECT_TRUE(absl::IsUnimplemented(CheckFlashFwdSm90Ws(range_only)));
  AttentionParams d = p;
  d.head_dim = 264;
  EXPECT_TRUE(absl::IsUnimplemented(CheckFlashFwdSm90Ws(d)));
  AttentionParams f = p;
  f.dtype = DType::kFloat32;
  EXPECT_TRUE(absl::IsUnimplemented(CheckFlashFwdSm90Ws(f)));
  AttentionParams a = p;
  a.q = reinterpret_cast<const char*>(buffer) + 2;
  const absl::Status misaligned = CheckFlashFwdSm90Ws(a);
  EXPECT_TRUE(absl::IsInvalidArgument(misaligned) || absl::IsUnimplemented(misaligned))
      << misaligned;
}

}  // namespace
}  // namespace attention::cuda

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const std::string flag = "--ws-variant=";
    if (arg.rfind(flag, 0) != 0) {
      std::printf("flash_fwd_sm90ws_test: unknown argument %s\n", arg.c_str());
      return 2;
    }
#ifdef ATTN_BENCH_WS_VARIANTS
    for (const attention::cuda::bench::WsVariant& v : attention::cuda::bench::WsVariants()) {
      if (v.Label() == arg.substr(flag.size())) attention::cuda::g_variant = &v;
    }
    if (attention::cuda::g_variant == nullptr) {
      std::printf("flash_fwd_sm90ws_test: no variant %s in bench/cuda/ws_variants.cu\n",
                  arg.c_str() + flag.size());
      return 2;
    }
    std::printf("flash_fwd_sm90ws_test: every case on variant %s (persistent grid)\n",
                arg.c_str() + flag.size());
#else
    std::printf("flash_fwd_sm90ws_test: --ws-variant needs a build with ATTN_BENCH_WS_VARIANTS\n");
    return 2;
#endif
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("flash_fwd_sm90ws_test: no CUDA device, skipping\n");
    return 77;
  }
  // The kernel's refusal of this build or device, or a build without any of its (dtype, bucket)
  // pairs, skips the whole test: every case would be skipped.
  int compiled = 0;
  for (const attention::DType dtype : {attention::DType::kBFloat16, attention::DType::kFloat16}) {
    for (const int head_dim : {64, 128, 256}) {
      attention::AttentionParams probe;
      probe.dtype = dtype;
      probe.batch = probe.seqlen_q = probe.seqlen_k = 1;
      probe.q_heads = probe.kv_heads = 1;
      probe.head_dim = head_dim;
      probe.softmax_scale = 0.125f;
      attention::SetContiguousStrides(probe);
      const absl::Status status = attention::cuda::CheckFlashFwdSm90Ws(probe);
      if (status.ok()) {
        ++compiled;
      } else if (status.message().find("compute capability") != std::string::npos ||
                 status.message().find("not in this build") != std::string::npos) {
        std::printf("flash_fwd_sm90ws_test: %s, skipping\n", std::string(status.message()).c_str());
        return 77;
      }
    }
  }
  if (compiled == 0) {
    std::printf("flash_fwd_sm90ws_test: no dtype / head-dim bucket of the kernel in this build\n");
    return 77;
  }
  return RUN_ALL_TESTS();
}
