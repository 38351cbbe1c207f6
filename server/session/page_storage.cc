#include "server/session/page_storage.h"

#include <cstring>
#include <new>

#include "absl/strings/str_cat.h"

namespace attention::session {
namespace {

// Host pages start on an OS page boundary, so that a pool page never shares a memory page with
// another allocation.
constexpr std::align_val_t kHostAlignment{4096};

absl::Status CheckPage(int32_t page, int32_t num_pages, const char* what) {
  if (page < 0 || page >= num_pages) {
    return absl::OutOfRangeError(
        absl::StrCat(what, ": page ", page, " is not in the pool's [0, ", num_pages, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidatePoolOptions(const PoolOptions& options) {
  if (options.page_bytes < PoolOptions::kPageAlignment ||
      options.page_bytes > PoolOptions::kMaxPageBytes ||
      options.page_bytes % PoolOptions::kPageAlignment != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_bytes: must be a multiple of ", PoolOptions::kPageAlignment, " in [",
                     PoolOptions::kPageAlignment, ", ", PoolOptions::kMaxPageBytes, "], got ",
                     options.page_bytes));
  }
  if (options.num_pages < 1 || options.num_pages > PoolOptions::kMaxPages) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_pages: must be in [1, ", PoolOptions::kMaxPages, "], got ", options.num_pages));
  }
  if (options.num_pages > INT64_MAX / options.page_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("num_pages x page_bytes: ", options.num_pages,
                                                   " x ", options.page_bytes,
                                                   " overflows 64 bits"));
  }
  return absl::OkStatus();
}

absl::StatusOr<PageLayout> PageLayout::For(int kv_heads, int head_dim, DType dtype,
                                           int64_t page_bytes) {
  if (kv_heads < 1) {
    return absl::InvalidArgumentError(absl::StrCat("kv_heads: must be >= 1, got ", kv_heads));
  }
  if (head_dim < 1 || head_dim > kMaxHeadDim) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_dim: must be in [1, ", kMaxHeadDim, "], got ", head_dim));
  }
  PageLayout layout;
  layout.kv_heads = kv_heads;
  layout.head_dim = head_dim;
  layout.dtype = dtype;
  layout.page_bytes = page_bytes;
  layout.row_bytes = int64_t{kv_heads} * head_dim * DTypeSize(dtype);
  const int64_t rows = (page_bytes / 2) / layout.row_bytes;
  if (rows < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_heads x head_dim: one token's K (", kv_heads, " x ", head_dim, " x ",
                     DTypeSize(dtype), " bytes = ", layout.row_bytes,
                     ") does not fit half a page (page_bytes / 2 = ", page_bytes / 2, ")"));
  }
  layout.page_size = static_cast<int>(rows);  // <= kMaxPageBytes / 4
  return layout;
}

void SetPagedKV(const PageLayout& layout, const void* pool_base, AttentionParams& p) {
  const auto* base = static_cast<const std::byte*>(pool_base);
  p.k = base;
  p.v = base + layout.v_offset();
  // Strides are in elements; page_bytes is a multiple of 256, so of every element size.
  const int64_t page_elements = layout.page_bytes / DTypeSize(layout.dtype);
  p.k_batch_stride = p.v_batch_stride = page_elements;
  p.k_row_stride = p.v_row_stride = int64_t{layout.kv_heads} * layout.head_dim;
  p.k_head_stride = p.v_head_stride = layout.head_dim;
  p.page_size = layout.page_size;
}

absl::StatusOr<std::unique_ptr<HostPageStorage>> HostPageStorage::Create(
    const PoolOptions& options) {
  if (absl::Status valid = ValidatePoolOptions(options); !valid.ok()) return valid;
  const int64_t bytes = options.num_pages * options.page_bytes;
  void* base = ::operator new(static_cast<size_t>(bytes), kHostAlignment, std::nothrow);
  if (base == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("K/V page pool: cannot allocate ", bytes, " bytes of host memory (num_pages ",
                     options.num_pages, " x page_bytes ", options.page_bytes, ")"));
  }
  return std::unique_ptr<HostPageStorage>(new HostPageStorage(
      static_cast<std::byte*>(base), options.page_bytes, static_cast<int32_t>(options.num_pages)));
}

HostPageStorage::~HostPageStorage() { ::operator delete(base_, kHostAlignment); }

absl::Status CheckCopyPage(const PageStorage& storage, int32_t src, int32_t dst,
                           int64_t half_bytes) {
  if (absl::Status s = CheckPage(src, storage.num_pages(), "CopyPage src"); !s.ok()) return s;
  if (absl::Status s = CheckPage(dst, storage.num_pages(), "CopyPage dst"); !s.ok()) return s;
  if (half_bytes < 0 || half_bytes > storage.page_bytes() / 2) {
    return absl::OutOfRangeError(absl::StrCat("CopyPage half_bytes: must be in [0, ",
                                              storage.page_bytes() / 2, "], got ", half_bytes));
  }
  return absl::OkStatus();
}

absl::Status CheckWriteRows(const PageStorage& storage, const PageLayout& layout,
                            absl::Span<const int32_t> slots) {
  if (layout.page_bytes != storage.page_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("WriteRows layout: page_bytes ",
                                                   layout.page_bytes, " is not the pool's ",
                                                   storage.page_bytes()));
  }
  const int64_t limit = int64_t{storage.num_pages()} * layout.page_size;
  for (size_t i = 0; i < slots.size(); ++i) {
    if (slots[i] < 0 || slots[i] >= limit) {
      return absl::OutOfRangeError(absl::StrCat("WriteRows slots[", i, "]: ", slots[i],
                                                " is not in the pool's [0, ", limit, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status HostPageStorage::CopyPage(int32_t src, int32_t dst, int64_t half_bytes) {
  if (absl::Status s = CheckCopyPage(*this, src, dst, half_bytes); !s.ok()) return s;
  if (src == dst || half_bytes == 0) return absl::OkStatus();
  std::byte* from = base_ + int64_t{src} * page_bytes_;
  std::byte* to = base_ + int64_t{dst} * page_bytes_;
  std::memcpy(to, from, static_cast<size_t>(half_bytes));
  std::memcpy(to + page_bytes_ / 2, from + page_bytes_ / 2, static_cast<size_t>(half_bytes));
  return absl::OkStatus();
}

absl::Status HostPageStorage::WriteRows(const PageLayout& layout, absl::Span<const int32_t> slots,
                                        const void* k, const void* v) {
  // Every slot is checked before any row is written.
  if (absl::Status s = CheckWriteRows(*this, layout, slots); !s.ok()) return s;
  const auto* k_rows = static_cast<const std::byte*>(k);
  const auto* v_rows = static_cast<const std::byte*>(v);
  size_t i = 0;
  while (i < slots.size()) {
    // Consecutive slots of one page are consecutive rows: one copy per run.
    const int64_t page = slots[i] / layout.page_size;
    const int64_t row = slots[i] % layout.page_size;
    size_t run = 1;
    while (i + run < slots.size() &&
           int64_t{slots[i + run]} == slots[i] + static_cast<int64_t>(run) &&
           row + static_cast<int64_t>(run) < layout.page_size) {
      ++run;
    }
    const size_t bytes = run * static_cast<size_t>(layout.row_bytes);
    const size_t from = i * static_cast<size_t>(layout.row_bytes);
    std::memcpy(base_ + layout.k_row_offset(page, row), k_rows + from, bytes);
    std::memcpy(base_ + layout.v_row_offset(page, row), v_rows + from, bytes);
    i += run;
  }
  return absl::OkStatus();
}

}  // namespace attention::session
