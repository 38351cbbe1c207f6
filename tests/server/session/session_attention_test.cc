// Sessions built by the store (appends, a fork then divergence, truncate then re-append, a
// one-row session), attended by the CPU backend straight from the store's pages through their
// views (SetPagedKV, one page table row per session, one launch for all of them), against the
// float64 reference over each session's whole history kept densely by the test. Shapes cover
// GQA and MQA, every dtype, and page sizes of 1, 3, 8, 17 and 64 tokens.
//
// Tolerances, per element, |got - ref| <= atol + rtol * |ref| (o) and kLseAtol + 1e-5 |ref| (lse),
// as tests/kernels/cpu/attention_cpu_test.cc states them for the same backend:
//   float32 2e-5 / 2e-5, float16 1e-3 / 2e-3, bfloat16 8e-3 / 8e-3; lse 1e-4.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "kernels/attention_params.h"
#include "kernels/cpu/attention_cpu.h"
#include "kernels/dtype.h"
#include "server/session/session_store.h"
#include "tests/reference/reference_attention.h"
#include "tests/server/session/session_test_util.h"

namespace attention::session {
namespace {

using ::attention::session::testing::FakeClock;
using ::attention::session::testing::MakeStore;
using ::attention::testing::LoadElement;
using ::attention::testing::ReferenceAttention;

struct Tolerance {
  double atol, rtol;
};

Tolerance ToleranceFor(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return {2e-5, 2e-5};
    case DType::kFloat16:
      return {1e-3, 2e-3};
    case DType::kBFloat16:
      return {8e-3, 8e-3};
    case DType::kFloat8E4M3:  // sessions refuse FP8: not run here
      break;
  }
  return {0, 0};
}
constexpr double kLseAtol = 1e-4;
constexpr int kLayers = 2;
constexpr int kAttendedLayer = 1;  // layer 0 holds other rows: a mix-up of layers shows

struct Shape {
  DType dtype;
  int q_heads, kv_heads, head_dim;
  int64_t page_bytes;
  int page_size;  // what the layout must give: (page_bytes / 2) / row_bytes
};

std::string Name(const Shape& s) {
  const char* dtype = s.dtype == DType::kFloat32   ? "fp32"
                      : s.dtype == DType::kFloat16 ? "fp16"
                                                   : "bf16";
  return std::string(dtype) + " h" + std::to_string(s.q_heads) + "/" + std::to_string(s.kv_heads) +
         " d" + std::to_string(s.head_dim) + " page_size " + std::to_string(s.page_size);
}

void PrintTo(const Shape& s, std::ostream* os) { *os << Name(s); }

// `n` random rows of `elements` each, normal(0, 1), in `dtype`.
std::vector<uint8_t> RandomRows(DType dtype, int64_t n, int64_t elements, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.f, 1.f);
  const int64_t count = n * elements;
  std::vector<uint8_t> out(static_cast<size_t>(count * DTypeSize(dtype)));
  for (int64_t i = 0; i < count; ++i) {
    const float x = dist(rng);
    if (dtype == DType::kFloat32) {
      std::memcpy(out.data() + 4 * i, &x, 4);
    } else {
      const uint16_t h = dtype == DType::kFloat16 ? FloatToHalf(x) : FloatToBFloat16(x);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}

// What the test knows of a session: every layer's K and V rows, densely, in order.
struct History {
  SessionId id;
  std::vector<std::vector<uint8_t>> k = std::vector<std::vector<uint8_t>>(kLayers);
  std::vector<std::vector<uint8_t>> v = std::vector<std::vector<uint8_t>>(kLayers);
};

class SessionAttentionTest : public ::testing::TestWithParam<Shape> {
 protected:
  void SetUp() override {
    const Shape& s = GetParam();
    row_bytes_ = int64_t{s.kv_heads} * s.head_dim * DTypeSize(s.dtype);
    StoreOptions options;
    options.sweep_interval = absl::ZeroDuration();
    store_ = MakeStore(s.page_bytes, 512, &clock_, options);
    ASSERT_NE(store_, nullptr);
    // Every byte no session has written reads as NaN in every dtype: a read of one poisons o.
    std::memset(store_->pool(0).storage().base(), 0xff,
                static_cast<size_t>(s.page_bytes * store_->pool(0).num_pages()));
  }

  History Create() {
    const Shape& s = GetParam();
    SessionSpec spec;
    spec.layers = kLayers;
    spec.kv_heads = s.kv_heads;
    spec.head_dim = s.head_dim;
    spec.dtype = s.dtype;
    absl::StatusOr<SessionId> id = store_->CreateSession(spec);
    EXPECT_TRUE(id.ok()) << id.status();
    History h;
    if (id.ok()) h.id = *id;
    return h;
  }

  // Appends `n` random rows to every layer of `h`, in the store and in the history.
  void Append(History& h, int64_t n) {
    const Shape& s = GetParam();
    for (int layer = 0; layer < kLayers; ++layer) {
      const int64_t elements = int64_t{s.kv_heads} * s.head_dim;
      const std::vector<uint8_t> k = RandomRows(s.dtype, n, elements, rng_);
      const std::vector<uint8_t> v = RandomRows(s.dtype, n, elements, rng_);
      absl::StatusOr<AppendResult> result = store_->AppendRows(h.id, layer, n, k.data(), v.data());
      ASSERT_TRUE(result.ok()) << result.status();
      ASSERT_EQ(result->view.layout().page_size, s.page_size);
      h.k[layer].insert(h.k[layer].end(), k.begin(), k.end());
      h.v[layer].insert(h.v[layer].end(), v.begin(), v.end());
    }
  }

  History Fork(const History& from, int64_t prefix) {
    absl::StatusOr<SessionId> id = store_->Fork(from.id, prefix);
    EXPECT_TRUE(id.ok()) << id.status();
    History h = from;
    if (id.ok()) h.id = *id;
    for (int layer = 0; layer < kLayers; ++layer) {
      const size_t bytes = static_cast<size_t>(
          std::min<int64_t>(prefix * row_bytes_, static_cast<int64_t>(h.k[layer].size())));
      h.k[layer].resize(bytes);
      h.v[layer].resize(bytes);
    }
    return h;
  }

  void Truncate(History& h, int64_t tokens) {
    ASSERT_TRUE(store_->Truncate(h.id, tokens).ok());
    for (int layer = 0; layer < kLayers; ++layer) {
      const size_t bytes = static_cast<size_t>(
          std::min<int64_t>(tokens * row_bytes_, static_cast<int64_t>(h.k[layer].size())));
      h.k[layer].resize(bytes);
      h.v[layer].resize(bytes);
    }
  }

  struct Options {
    int n_new = 1;
    bool causal = false;
    int window_left = -1;
    float softcap = 0.f;
    bool key_range = false;
  };

  // One launch over every session's attended layer, checked session by session against the
  // reference over its history.
  void AttendAndCheck(const std::vector<History>& sessions, const Options& options) {
    const Shape& s = GetParam();
    const int batch = static_cast<int>(sessions.size());
    std::vector<ReadView> views;
    int64_t longest = 0, widest = 1;
    for (const History& h : sessions) {
      absl::StatusOr<ReadView> view = store_->View(h.id, kAttendedLayer);
      ASSERT_TRUE(view.ok()) << view.status();
      ASSERT_EQ(view->tokens() * row_bytes_, static_cast<int64_t>(h.k[kAttendedLayer].size()));
      longest = std::max(longest, view->tokens());
      widest = std::max(widest, static_cast<int64_t>(view->page_table().size()));
      views.push_back(*std::move(view));
    }
    std::vector<int32_t> page_table(static_cast<size_t>(batch * widest), 0);
    std::vector<int32_t> seqlens_k, key_range;
    for (int b = 0; b < batch; ++b) {
      std::copy(views[b].page_table().begin(), views[b].page_table().end(),
                page_table.begin() + b * widest);
      seqlens_k.push_back(static_cast<int32_t>(views[b].tokens()));
      std::uniform_int_distribution<int> at(0, static_cast<int>(views[b].tokens()));
      int lo = at(rng_), hi = at(rng_);
      if (lo > hi) std::swap(lo, hi);
      key_range.push_back(lo);
      key_range.push_back(hi);
    }

    AttentionParams p;
    p.kind = WorkKind::kPagedDecode;
    p.dtype = s.dtype;
    p.head_dim = s.head_dim;
    p.q_heads = s.q_heads;
    p.kv_heads = s.kv_heads;
    p.softmax_scale = 1.f / std::sqrt(static_cast<float>(s.head_dim));
    p.softcap = options.softcap;
    p.causal = options.causal;
    p.window_left = options.window_left;
    Normalize(p);
    p.batch = batch;
    p.seqlen_q = options.n_new;
    p.seqlen_k = static_cast<int>(longest);
    SetContiguousStrides(p);
    SetPagedKV(views[0].layout(), views[0].base(), p);
    p.page_table = page_table.data();
    p.page_table_stride = widest;
    p.seqlens_k = seqlens_k.data();
    if (options.key_range) p.key_range = key_range.data();
    const int64_t q_elements = int64_t{options.n_new} * s.q_heads * s.head_dim;
    const std::vector<uint8_t> q = RandomRows(s.dtype, batch, q_elements, rng_);
    std::vector<uint8_t> o(q.size(), 0xff);
    std::vector<float> lse(static_cast<size_t>(batch * s.q_heads * options.n_new), NAN);
    p.q = q.data();
    p.o = o.data();
    p.lse = lse.data();
    const absl::Status ran = backend_.Run(p);
    ASSERT_TRUE(ran.ok()) << ran;

    const Tolerance tol = ToleranceFor(s.dtype);
    for (int b = 0; b < batch; ++b) {
      // The reference reads the history as one dense page: page_size = its length.
      const History& h = sessions[b];
      const int64_t tokens = views[b].tokens();
      AttentionParams r = p;
      r.batch = 1;
      r.seqlen_k = static_cast<int>(tokens);
      SetContiguousStrides(r);
      r.q = q.data() + b * q_elements * DTypeSize(s.dtype);
      r.k = h.k[kAttendedLayer].data();
      r.v = h.v[kAttendedLayer].data();
      r.k_batch_stride = r.v_batch_stride = std::max<int64_t>(tokens, 1) * s.kv_heads * s.head_dim;
      const int32_t one_page = 0;
      const int32_t length = static_cast<int32_t>(tokens);
      r.page_table = &one_page;
      r.page_table_stride = 1;
      r.page_size = static_cast<int>(std::max<int64_t>(tokens, 1));
      r.seqlens_k = &length;
      r.key_range = options.key_range ? key_range.data() + 2 * b : nullptr;
      std::vector<double> o_ref(static_cast<size_t>(q_elements));
      std::vector<double> lse_ref(static_cast<size_t>(s.q_heads * options.n_new));
      ReferenceAttention(r, o_ref.data(), lse_ref.data());
      int failures = 0;
      for (int64_t i = 0; i < q_elements; ++i) {
        const double got = LoadElement(s.dtype, o.data(), b * q_elements + i);
        const double want = o_ref[static_cast<size_t>(i)];
        if (!(std::abs(got - want) <= tol.atol + tol.rtol * std::abs(want)) && ++failures <= 5) {
          ADD_FAILURE() << Name(s) << " session " << b << " (" << tokens << " tokens) o[" << i
                        << "] = " << got << ", reference " << want;
        }
      }
      for (int i = 0; i < s.q_heads * options.n_new; ++i) {
        const double got = lse[static_cast<size_t>(b * s.q_heads * options.n_new + i)];
        const double want = lse_ref[static_cast<size_t>(i)];
        const bool both_empty = std::isinf(want) && want < 0 && std::isinf(got) && got < 0;
        if (!both_empty && !(std::abs(got - want) <= kLseAtol + 1e-5 * std::abs(want)) &&
            ++failures <= 5) {
          ADD_FAILURE() << Name(s) << " session " << b << " lse[" << i << "] = " << got
                        << ", reference " << want;
        }
      }
      checked_ += 1;
    }
  }

  int64_t row_bytes_ = 0;
  FakeClock clock_;
  std::unique_ptr<SessionStore> store_;
  cpu::CpuBackend backend_{2};
  std::mt19937 rng_{7};
  int checked_ = 0;
};

TEST_P(SessionAttentionTest, SessionsMatchTheReferenceOverTheirWholeHistory) {
  History a = Create();
  Append(a, 37);
  History b = Fork(a, 20);  // shares the prefix, then diverges
  Append(b, 9);
  Append(a, 5);
  History c = Fork(a, 42);
  Truncate(c, 30);  // rolled back, then re-appended over the stale rows
  Append(c, 11);
  History d = Create();
  Append(d, 1);  // a single partial page
  const std::vector<History> sessions = {a, b, c, d};

  Options decode;
  decode.causal = true;
  AttendAndCheck(sessions, decode);
  Options verify;  // speculative verify / chunked prefill: several new rows, bottom-right causal
  verify.n_new = 4;
  verify.causal = true;
  AttendAndCheck(sessions, verify);
  Options window;
  window.causal = true;
  window.window_left = 7;
  window.key_range = true;
  AttendAndCheck(sessions, window);
  Options full;
  full.n_new = 3;
  full.softcap = 30.f;
  AttendAndCheck(sessions, full);

  // A decode step appends, then attends over the longer context.
  for (History* h : {&a, &b, &c, &d}) Append(*h, 1);
  AttendAndCheck({a, b, c, d}, decode);
  EXPECT_EQ(checked_, 20);
  // The forks' shared partial pages were copied when written (1-token pages are never partial).
  if (GetParam().page_size > 1) {
    EXPECT_GT(store_->counters().cow_copies, 0);
  }
}

// Row bytes and page bytes give page sizes of 1, 3, 8, 17 and 64 tokens.
INSTANTIATE_TEST_SUITE_P(
    Shapes, SessionAttentionTest,
    ::testing::Values(Shape{DType::kFloat32, 4, 2, 64, 1024, 1},     // 512-byte rows
                      Shape{DType::kFloat32, 4, 2, 64, 3072, 3},     // a page size of 3
                      Shape{DType::kBFloat16, 8, 1, 128, 4096, 8},   // MQA
                      Shape{DType::kFloat16, 6, 3, 80, 16384, 17},   // 480-byte rows
                      Shape{DType::kBFloat16, 8, 2, 128, 65536, 64}  // every session in 1 page
                      ),
    [](const ::testing::TestParamInfo<Shape>& info) {
      std::string name = Name(info.param);
      for (char& ch : name) {
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      }
      return name;
    });

}  // namespace
}  // namespace attention::session
