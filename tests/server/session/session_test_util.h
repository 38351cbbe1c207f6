// Helpers of the session store tests: a clock the test advances, a store over host pools, and
// rows that carry a tag so that a layer read back through its view (page table, layout, base, as
// a kernel reads it) can be compared with the tags appended.
#ifndef ATTENTION_TESTS_SERVER_SESSION_SESSION_TEST_UTIL_H_
#define ATTENTION_TESTS_SERVER_SESSION_SESSION_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/session/clock.h"
#include "server/session/page_storage.h"
#include "server/session/session_store.h"

namespace attention::session::testing {

class FakeClock final : public Clock {
 public:
  absl::Time Now() const override { return absl::FromUnixNanos(nanos_.load()); }
  void Advance(absl::Duration d) { nanos_.fetch_add(absl::ToInt64Nanoseconds(d)); }

 private:
  std::atomic<int64_t> nanos_{absl::ToUnixNanos(absl::FromUnixSeconds(1'800'000'000))};
};

// A store over `pools` host pools of `num_pages` pages of `page_bytes` each, with no sweeper
// thread unless the options ask for one.
inline std::unique_ptr<SessionStore> MakeStore(int64_t page_bytes, int64_t num_pages,
                                               const Clock* clock, StoreOptions options = {},
                                               int pools = 1) {
  PoolOptions pool_options;
  pool_options.page_bytes = page_bytes;
  pool_options.num_pages = num_pages;
  std::vector<std::unique_ptr<PageStorage>> storages;
  for (int i = 0; i < pools; ++i) {
    absl::StatusOr<std::unique_ptr<HostPageStorage>> storage =
        HostPageStorage::Create(pool_options);
    EXPECT_TRUE(storage.ok()) << storage.status();
    if (!storage.ok()) return nullptr;
    storages.push_back(*std::move(storage));
  }
  absl::StatusOr<std::unique_ptr<SessionStore>> store =
      SessionStore::Create(options, std::move(storages), clock);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? *std::move(store) : nullptr;
}

// The tests' shape: float32, 1 KV head x head_dim 4 = 16-byte rows; 256-byte pages hold 8 tokens.
inline SessionSpec TagSpec(int layers = 1) {
  SessionSpec spec;
  spec.layers = layers;
  spec.kv_heads = 1;
  spec.head_dim = 4;
  spec.dtype = DType::kFloat32;
  return spec;
}
constexpr int64_t kTagPageBytes = 256;
constexpr int kTagPageSize = 8;

// K row of tag t: {t, t + 0.25, t + 0.5, t + 0.75}; V row: the negation.
inline void TagRows(const std::vector<float>& tags, std::vector<float>& k, std::vector<float>& v) {
  k.clear();
  v.clear();
  for (float t : tags) {
    for (int e = 0; e < 4; ++e) {
      k.push_back(t + 0.25f * static_cast<float>(e));
      v.push_back(-(t + 0.25f * static_cast<float>(e)));
    }
  }
}

inline absl::StatusOr<AppendResult> AppendTags(SessionStore& store, const SessionId& id, int layer,
                                               const std::vector<float>& tags) {
  std::vector<float> k, v;
  TagRows(tags, k, v);
  return store.AppendRows(id, layer, static_cast<int64_t>(tags.size()), k.data(), v.data());
}

// The tags of the rows a view covers, read as a kernel reads them; a row whose K and V do not
// both carry the same tag reads as NaN.
inline std::vector<float> ReadTags(const ReadView& view) {
  std::vector<float> tags;
  const PageLayout& layout = view.layout();
  const auto* base = static_cast<const std::byte*>(view.base());
  for (int64_t j = 0; j < view.tokens(); ++j) {
    const int64_t page = view.page_table()[static_cast<size_t>(j / layout.page_size)];
    const int64_t row = j % layout.page_size;
    float k[4], v[4];
    std::memcpy(k, base + layout.k_row_offset(page, row), sizeof(k));
    std::memcpy(v, base + layout.v_row_offset(page, row), sizeof(v));
    bool consistent = true;
    for (int e = 0; e < 4; ++e) {
      consistent = consistent && k[e] == k[0] + 0.25f * static_cast<float>(e) && v[e] == -k[e];
    }
    tags.push_back(consistent ? k[0] : std::nanf(""));
  }
  return tags;
}

inline std::vector<float> Tags(float first, int n) {
  std::vector<float> tags;
  for (int i = 0; i < n; ++i) tags.push_back(first + static_cast<float>(i));
  return tags;
}

inline std::vector<float> Concat(std::vector<float> a, const std::vector<float>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace attention::session::testing

#endif  // ATTENTION_TESTS_SERVER_SESSION_SESSION_TEST_UTIL_H_
