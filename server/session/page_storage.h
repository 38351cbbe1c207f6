// Where a K/V page pool's bytes live, and how one session shape's rows are laid out in a page.
//
// A pool is `num_pages` pages of `page_bytes` bytes each, in one allocation (host memory here,
// device memory in a GPU executor's implementation), so that a kernel addresses every page of a
// launch from one base pointer. Page p starts at base + p * page_bytes and is two halves: K in
// the first page_bytes / 2 bytes, V in the second. A half holds the page's rows for ONE layer of
// one session, each row one token's [kv_heads, head_dim] of the session's dtype:
//
//   K row r of page p: base + p * page_bytes + r * row_bytes
//   V row r of page p: base + p * page_bytes + page_bytes / 2 + r * row_bytes
//   row_bytes = kv_heads * head_dim * DTypeSize(dtype),  page_size = (page_bytes / 2) / row_bytes
//
// Pages are sized in bytes, not tokens: sessions of different (kv_heads, head_dim, dtype) share
// one pool, and a shape's page_size (tokens per page) follows from the page's bytes. One pool per
// shape class would have to split the device's memory between shapes before their sessions
// arrive. The cost: a half that row_bytes does not divide wastes its remainder (none for the
// power-of-two shapes of common models; 64 KiB pages of 8 x 80 x bf16 rows hold 25 tokens per
// half and waste 768 of each half's 32768 bytes).
#ifndef ATTENTION_SERVER_SESSION_PAGE_STORAGE_H_
#define ATTENTION_SERVER_SESSION_PAGE_STORAGE_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/attention_params.h"
#include "kernels/kernel_config.h"

namespace attention::session {

// The size of one pool, fixed at start-up (the server's flags fill it).
struct PoolOptions {
  // Bytes per page, K and V halves together; a multiple of kPageAlignment. 64 KiB holds 16 tokens
  // of the shape (8 KV heads x head_dim 128 x bf16: 2 KiB of K and 2 KiB of V per token),
  // so a decode step allocates a page every 16 steps per layer and a session wastes at most 15
  // tokens' rows per layer.
  int64_t page_bytes = 64 * 1024;
  // Pages in the pool: 4096 x 64 KiB = 256 MiB.
  int64_t num_pages = 4096;

  // Both halves of every page start on a 128-byte boundary (vector loads, TMA, cache lines).
  static constexpr int64_t kPageAlignment = 256;
  // Far above any useful page (a page is a few tokens of one layer); keeps page_size well inside
  // an int.
  static constexpr int64_t kMaxPageBytes = int64_t{1} << 30;
  // Page ids are int32 in kernel page tables (AttentionParams::page_table).
  static constexpr int64_t kMaxPages = INT32_MAX;
};

// OK, or INVALID_ARGUMENT naming the field and the rule.
absl::Status ValidatePoolOptions(const PoolOptions& options);

// How the rows of one session shape sit in a pool's pages (see the file comment).
struct PageLayout {
  int kv_heads = 0;
  int head_dim = 0;
  DType dtype = DType::kBFloat16;
  int64_t page_bytes = 0;  // the pool's
  int64_t row_bytes = 0;   // kv_heads * head_dim * DTypeSize(dtype)
  int page_size = 0;       // tokens per page: (page_bytes / 2) / row_bytes, at least 1

  // The layout of (kv_heads, head_dim, dtype) in pages of `page_bytes`; INVALID_ARGUMENT naming
  // the field when a dimension is < 1, head_dim exceeds kMaxHeadDim, or one row does not fit
  // half a page.
  static absl::StatusOr<PageLayout> For(int kv_heads, int head_dim, DType dtype,
                                        int64_t page_bytes);

  int64_t v_offset() const { return page_bytes / 2; }
  // Byte offsets from the pool's base of K row `row` and V row `row` of page `page`.
  int64_t k_row_offset(int64_t page, int64_t row) const {
    return page * page_bytes + row * row_bytes;
  }
  int64_t v_row_offset(int64_t page, int64_t row) const {
    return k_row_offset(page, row) + v_offset();
  }
  // Pages needed for `tokens` rows.
  int64_t PagesFor(int64_t tokens) const { return (tokens + page_size - 1) / page_size; }

  friend bool operator==(const PageLayout& a, const PageLayout& b) {
    return a.kv_heads == b.kv_heads && a.head_dim == b.head_dim && a.dtype == b.dtype &&
           a.page_bytes == b.page_bytes;
  }
};

// Points `p`'s K/V at a pool of `layout` whose page 0 is at `pool_base` (host or device, as the
// backend reads): k, v, their page, row and head strides, and page_size. The batch's page_table,
// page_table_stride, seqlens_k and seqlen_k are the caller's (one row per sequence, from its
// ReadView). Requires p.dtype == layout.dtype.
void SetPagedKV(const PageLayout& layout, const void* pool_base, AttentionParams& p);

// The memory behind one pool. The store calls it from many threads at once, each call touching
// pages that no other call touches at the same time; implementations need no lock of their own
// for that.
class PageStorage {
 public:
  virtual ~PageStorage() = default;

  // The geometry, fixed for the storage's life.
  virtual int64_t page_bytes() const = 0;
  virtual int32_t num_pages() const = 0;

  // Page 0's address in the memory the attention kernels read: host memory (host_resident) for
  // the CPU backend, which reads pages in place; device memory for a GPU executor's storage.
  virtual void* base() const = 0;
  virtual bool host_resident() const = 0;

  // Copies the first `half_bytes` bytes of page `src`'s K half and of its V half into page `dst`
  // (copy-on-write of a shared partial page: half_bytes = rows * row_bytes). Its effect is
  // visible to every write and read issued after it returns (a device implementation copies
  // synchronously or orders the copy before later work on the stream that reads the pool).
  virtual absl::Status CopyPage(int32_t src, int32_t dst, int64_t half_bytes) = 0;

  // Writes row i of k and of v ([slots.size(), kv_heads, head_dim] of layout.dtype, contiguous, in
  // host memory) into slot slots[i] = page * layout.page_size + row. A device implementation
  // uploads the rows and scatters them (the append kernel, kernels/cuda/paged_append.h, takes
  // the same int32 slots); an executor that already holds the rows on the device scatters them
  // itself with the same slots instead.
  virtual absl::Status WriteRows(const PageLayout& layout, absl::Span<const int32_t> slots,
                                 const void* k, const void* v) = 0;
};

// The argument checks every implementation makes before touching memory: OUT_OF_RANGE for a page,
// slot or length outside the pool, INVALID_ARGUMENT for a layout of another page size.
absl::Status CheckCopyPage(const PageStorage& storage, int32_t src, int32_t dst,
                           int64_t half_bytes);
absl::Status CheckWriteRows(const PageStorage& storage, const PageLayout& layout,
                            absl::Span<const int32_t> slots);

// Pages in host memory, page-aligned and untouched until first written (the kernel supplies
// zero pages on demand, so an idle pool costs address space, not memory).
class HostPageStorage final : public PageStorage {
 public:
  // RESOURCE_EXHAUSTED when the allocation fails; INVALID_ARGUMENT for options that
  // ValidatePoolOptions rejects.
  static absl::StatusOr<std::unique_ptr<HostPageStorage>> Create(const PoolOptions& options);
  ~HostPageStorage() override;

  int64_t page_bytes() const override { return page_bytes_; }
  int32_t num_pages() const override { return num_pages_; }
  void* base() const override { return base_; }
  bool host_resident() const override { return true; }
  absl::Status CopyPage(int32_t src, int32_t dst, int64_t half_bytes) override;
  absl::Status WriteRows(const PageLayout& layout, absl::Span<const int32_t> slots, const void* k,
                         const void* v) override;

 private:
  HostPageStorage(std::byte* base, int64_t page_bytes, int32_t num_pages)
      : base_(base), page_bytes_(page_bytes), num_pages_(num_pages) {}

  std::byte* const base_;
  const int64_t page_bytes_;
  const int32_t num_pages_;
};

}  // namespace attention::session

#endif  // ATTENTION_SERVER_SESSION_PAGE_STORAGE_H_
