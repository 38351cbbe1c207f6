#include "server/session/page_pool.h"

#include <utility>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"

namespace attention::session {

absl::StatusOr<std::unique_ptr<PagePool>> PagePool::Create(std::unique_ptr<PageStorage> storage) {
  if (storage == nullptr) return absl::InvalidArgumentError("page pool: storage is null");
  PoolOptions geometry;
  geometry.page_bytes = storage->page_bytes();
  geometry.num_pages = storage->num_pages();
  if (absl::Status valid = ValidatePoolOptions(geometry); !valid.ok()) return valid;
  return std::unique_ptr<PagePool>(new PagePool(std::move(storage)));
}

PagePool::PagePool(std::unique_ptr<PageStorage> storage)
    : storage_(std::move(storage)),
      page_bytes_(storage_->page_bytes()),
      num_pages_(storage_->num_pages()),
      refcounts_(new std::atomic<int32_t>[static_cast<size_t>(num_pages_)]),
      free_count_(num_pages_) {
  free_.reserve(static_cast<size_t>(num_pages_));
  // Pages are handed out from the low end first: a lightly used pool touches few host pages.
  for (int32_t page = num_pages_ - 1; page >= 0; --page) {
    refcounts_[page].store(0, std::memory_order_relaxed);
    free_.push_back(page);
  }
}

bool PagePool::Allocate(int64_t n, std::vector<int32_t>& pages) {
  if (n <= 0) return n == 0;
  std::lock_guard<std::mutex> lock(mu_);
  if (static_cast<int64_t>(free_.size()) < n) return false;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t page = free_.back();
    free_.pop_back();
    refcounts_[page].store(1, std::memory_order_relaxed);
    pages.push_back(page);
  }
  free_count_.store(static_cast<int32_t>(free_.size()), std::memory_order_relaxed);
  return true;
}

void PagePool::Unref(absl::Span<const int32_t> pages) {
  // Collected first so that the lock is taken once, and only if a page is freed. acq_rel: the
  // last holder's writes to a page happen before the page is handed to its next owner.
  absl::InlinedVector<int32_t, 16> freed;
  for (int32_t page : pages) {
    if (refcounts_[page].fetch_sub(1, std::memory_order_acq_rel) == 1) freed.push_back(page);
  }
  if (freed.empty()) return;
  std::lock_guard<std::mutex> lock(mu_);
  free_.insert(free_.end(), freed.begin(), freed.end());
  free_count_.store(static_cast<int32_t>(free_.size()), std::memory_order_relaxed);
}

}  // namespace attention::session
