// Pool geometry and page layouts, host storage (rows land where the layout and the kernels'
// addressing rule say; copies touch only what they are asked to), and the reference counts and
// free list of PagePool.
#include "server/session/page_pool.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "server/session/page_storage.h"

namespace attention::session {
namespace {

std::unique_ptr<HostPageStorage> MakeStorage(int64_t page_bytes, int64_t num_pages) {
  PoolOptions options;
  options.page_bytes = page_bytes;
  options.num_pages = num_pages;
  absl::StatusOr<std::unique_ptr<HostPageStorage>> storage = HostPageStorage::Create(options);
  EXPECT_TRUE(storage.ok()) << storage.status();
  return storage.ok() ? *std::move(storage) : nullptr;
}

TEST(PoolOptionsTest, RejectsBadGeometryNamingTheField) {
  struct Case {
    int64_t page_bytes, num_pages;
    const char* message;
  };
  const Case cases[] = {
      {0, 16, "page_bytes: must be a multiple of 256 in [256, 1073741824], got 0"},
      {300, 16, "page_bytes: must be a multiple of 256"},
      {int64_t{1} << 31, 16, "page_bytes: must be a multiple of 256"},
      {4096, 0, "num_pages: must be in [1, 2147483647], got 0"},
      {4096, int64_t{1} << 31, "num_pages: must be in [1, 2147483647]"},
  };
  for (const Case& c : cases) {
    PoolOptions options;
    options.page_bytes = c.page_bytes;
    options.num_pages = c.num_pages;
    absl::Status status = ValidatePoolOptions(options);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_NE(status.message().find(c.message), std::string::npos) << status;
    EXPECT_EQ(HostPageStorage::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(ValidatePoolOptions(PoolOptions{}).ok());
}

TEST(PageLayoutTest, TokensPerPageFollowFromTheShape) {
  // The shape: 8 KV heads x 128 x bf16 = 2 KiB per row; 32 KiB halves hold 16 rows.
  absl::StatusOr<PageLayout> gqa = PageLayout::For(8, 128, DType::kBFloat16, 64 * 1024);
  ASSERT_TRUE(gqa.ok()) << gqa.status();
  EXPECT_EQ(gqa->row_bytes, 2048);
  EXPECT_EQ(gqa->page_size, 16);
  EXPECT_EQ(gqa->v_offset(), 32 * 1024);
  // A shape that does not divide the half: 8 x 80 x 2 = 1280 bytes, 25 rows, 768 bytes spare.
  absl::StatusOr<PageLayout> odd = PageLayout::For(8, 80, DType::kFloat16, 64 * 1024);
  ASSERT_TRUE(odd.ok());
  EXPECT_EQ(odd->page_size, 25);
  // float32 rows are twice as large.
  absl::StatusOr<PageLayout> f32 = PageLayout::For(8, 128, DType::kFloat32, 64 * 1024);
  ASSERT_TRUE(f32.ok());
  EXPECT_EQ(f32->page_size, 8);
  EXPECT_EQ(f32->PagesFor(0), 0);
  EXPECT_EQ(f32->PagesFor(1), 1);
  EXPECT_EQ(f32->PagesFor(8), 1);
  EXPECT_EQ(f32->PagesFor(9), 2);
  EXPECT_EQ(f32->k_row_offset(3, 2), 3 * 64 * 1024 + 2 * 4096);
  EXPECT_EQ(f32->v_row_offset(3, 2), 3 * 64 * 1024 + 32 * 1024 + 2 * 4096);
}

TEST(PageLayoutTest, RejectsShapesNamingTheField) {
  auto message = [](int kv_heads, int head_dim) {
    return std::string(
        PageLayout::For(kv_heads, head_dim, DType::kBFloat16, 65536).status().message());
  };
  EXPECT_NE(message(0, 128).find("kv_heads: must be >= 1, got 0"), std::string::npos);
  EXPECT_NE(message(8, 0).find("head_dim: must be in [1, 256], got 0"), std::string::npos);
  EXPECT_NE(message(8, 512).find("head_dim: must be in [1, 256], got 512"), std::string::npos);
  // 32 x 256 x 4 = 32 KiB of K per token: does not fit half of a 32 KiB page.
  absl::Status too_wide = PageLayout::For(32, 256, DType::kFloat32, 32 * 1024).status();
  EXPECT_EQ(too_wide.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_wide.message().find("kv_heads x head_dim: one token's K (32 x 256 x 4 bytes = "
                                    "32768) does not fit half a page (page_bytes / 2 = 16384)"),
            std::string::npos)
      << too_wide;
}

TEST(PageLayoutTest, SetPagedKVFollowsTheKernelsAddressingRule) {
  absl::StatusOr<PageLayout> layout = PageLayout::For(4, 64, DType::kBFloat16, 8192);
  ASSERT_TRUE(layout.ok());
  ASSERT_EQ(layout->page_size, 8);  // 4096-byte halves of 512-byte rows
  alignas(64) static std::byte pool[4 * 8192];
  AttentionParams p;
  p.dtype = DType::kBFloat16;
  SetPagedKV(*layout, pool, p);
  EXPECT_EQ(p.page_size, 8);
  EXPECT_EQ(p.k_batch_stride, 4096);  // elements between pages
  EXPECT_EQ(p.v_batch_stride, 4096);
  EXPECT_EQ(p.k_row_stride, 256);
  EXPECT_EQ(p.k_head_stride, 64);
  EXPECT_EQ(p.v_row_stride, 256);
  EXPECT_EQ(p.v_head_stride, 64);
  // Element (row 5, head 3, dim 7) of page 2, by the params' rule and by the layout's offsets.
  const auto* k = static_cast<const uint16_t*>(p.k);
  const auto* v = static_cast<const uint16_t*>(p.v);
  const uint16_t* k_elem = k + 2 * p.k_batch_stride + 5 * p.k_row_stride + 3 * p.k_head_stride + 7;
  const uint16_t* v_elem = v + 2 * p.v_batch_stride + 5 * p.v_row_stride + 3 * p.v_head_stride + 7;
  EXPECT_EQ(reinterpret_cast<const std::byte*>(k_elem),
            pool + layout->k_row_offset(2, 5) + (3 * 64 + 7) * 2);
  EXPECT_EQ(reinterpret_cast<const std::byte*>(v_elem),
            pool + layout->v_row_offset(2, 5) + (3 * 64 + 7) * 2);
}

TEST(HostPageStorageTest, WriteRowsPutsEachRowInItsSlotAcrossPages) {
  std::unique_ptr<HostPageStorage> storage = MakeStorage(512, 8);
  ASSERT_NE(storage, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(storage->base()) % 4096, 0u);
  EXPECT_TRUE(storage->host_resident());
  // float32, 1 KV head x 4: 16-byte rows, 16 rows per 256-byte half.
  absl::StatusOr<PageLayout> layout = PageLayout::For(1, 4, DType::kFloat32, 512);
  ASSERT_TRUE(layout.ok());
  ASSERT_EQ(layout->page_size, 16);
  auto* base = static_cast<std::byte*>(storage->base());
  std::memset(base, 0xff, 512 * 8);
  // Rows 14, 15 of page 5 then 0..2 of page 2 (a run broken by the page end), then row 9 of page 0.
  const std::vector<int32_t> slots = {5 * 16 + 14, 5 * 16 + 15, 2 * 16, 2 * 16 + 1, 2 * 16 + 2, 9};
  std::vector<float> k(slots.size() * 4), v(slots.size() * 4);
  std::iota(k.begin(), k.end(), 1.f);
  std::iota(v.begin(), v.end(), 1000.f);
  ASSERT_TRUE(storage->WriteRows(*layout, slots, k.data(), v.data()).ok());
  for (size_t i = 0; i < slots.size(); ++i) {
    const int64_t page = slots[i] / 16, row = slots[i] % 16;
    float got_k[4], got_v[4];
    std::memcpy(got_k, base + layout->k_row_offset(page, row), 16);
    std::memcpy(got_v, base + layout->v_row_offset(page, row), 16);
    for (int e = 0; e < 4; ++e) {
      EXPECT_EQ(got_k[e], k[i * 4 + e]) << "row " << i;
      EXPECT_EQ(got_v[e], v[i * 4 + e]) << "row " << i;
    }
  }
  // Nothing else was written: row 13 of page 5 and row 3 of page 2 keep the fill.
  for (int64_t offset : {layout->k_row_offset(5, 13), layout->k_row_offset(2, 3),
                         layout->v_row_offset(5, 13), layout->v_row_offset(2, 3)}) {
    EXPECT_EQ(static_cast<unsigned char>(base[offset]), 0xffu);
  }
}

TEST(HostPageStorageTest, WriteRowsChecksEverySlotBeforeWritingAny) {
  std::unique_ptr<HostPageStorage> storage = MakeStorage(512, 2);
  ASSERT_NE(storage, nullptr);
  absl::StatusOr<PageLayout> layout = PageLayout::For(1, 4, DType::kFloat32, 512);
  ASSERT_TRUE(layout.ok());
  auto* base = static_cast<std::byte*>(storage->base());
  std::memset(base, 0, 1024);
  const std::vector<int32_t> slots = {0, 32};  // 32 = page 2, past the pool
  std::vector<float> rows(8, 1.f);
  absl::Status status = storage->WriteRows(*layout, slots, rows.data(), rows.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(status.message().find("slots[1]: 32 is not in the pool's [0, 32)"), std::string::npos)
      << status;
  EXPECT_EQ(static_cast<unsigned char>(base[0]), 0u);
  absl::StatusOr<PageLayout> other = PageLayout::For(1, 4, DType::kFloat32, 1024);
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(storage->WriteRows(*other, {}, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(HostPageStorageTest, CopyPageCopiesThePrefixOfBothHalvesOnly) {
  std::unique_ptr<HostPageStorage> storage = MakeStorage(1024, 4);
  ASSERT_NE(storage, nullptr);
  auto* base = static_cast<unsigned char*>(storage->base());
  for (int i = 0; i < 1024; ++i) base[1024 + i] = static_cast<unsigned char>(i % 251);
  std::memset(base + 3 * 1024, 0xee, 1024);
  ASSERT_TRUE(storage->CopyPage(1, 3, 100).ok());
  for (int i = 0; i < 512; ++i) {
    const unsigned char k_expected = i < 100 ? static_cast<unsigned char>(i % 251) : 0xee;
    const unsigned char v_expected = i < 100 ? static_cast<unsigned char>((512 + i) % 251) : 0xee;
    ASSERT_EQ(base[3 * 1024 + i], k_expected) << i;
    ASSERT_EQ(base[3 * 1024 + 512 + i], v_expected) << i;
  }
  EXPECT_EQ(storage->CopyPage(4, 0, 10).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(storage->CopyPage(0, -1, 10).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(storage->CopyPage(0, 1, 513).code(), absl::StatusCode::kOutOfRange);
}

TEST(PagePoolTest, AllocateIsAllOrNothingAndReferencesFreePages) {
  absl::StatusOr<std::unique_ptr<PagePool>> created = PagePool::Create(MakeStorage(256, 5));
  ASSERT_TRUE(created.ok()) << created.status();
  PagePool& pool = **created;
  EXPECT_EQ(pool.num_pages(), 5);
  EXPECT_EQ(pool.free_pages(), 5);

  std::vector<int32_t> pages;
  ASSERT_TRUE(pool.Allocate(3, pages));
  EXPECT_EQ(pages, (std::vector<int32_t>{0, 1, 2}));  // low pages first
  for (int32_t page : pages) EXPECT_EQ(pool.refcount(page), 1);
  EXPECT_EQ(pool.used_pages(), 3);
  EXPECT_FALSE(pool.Allocate(3, pages));  // 2 free: nothing taken
  EXPECT_EQ(pages.size(), 3u);
  EXPECT_EQ(pool.free_pages(), 2);
  EXPECT_TRUE(pool.Allocate(0, pages));

  pool.Ref(1);
  pool.Ref(1);
  EXPECT_EQ(pool.refcount(1), 3);
  pool.Unref({0, 1});
  EXPECT_EQ(pool.refcount(0), 0);
  EXPECT_EQ(pool.refcount(1), 2);
  EXPECT_EQ(pool.free_pages(), 3);
  pool.Unref({1, 1, 2});
  EXPECT_EQ(pool.free_pages(), 5);

  // The last pages freed are reused first.
  std::vector<int32_t> again;
  ASSERT_TRUE(pool.Allocate(2, again));
  EXPECT_EQ(again, (std::vector<int32_t>{2, 1}));
}

TEST(PagePoolTest, CreateRejectsNullStorage) {
  EXPECT_EQ(PagePool::Create(nullptr).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace attention::session
