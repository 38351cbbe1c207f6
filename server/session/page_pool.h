// PagePool: the reference-counted pages of one device's K/V storage.
//
// A page holds one reference per page list that lists it: a session layer's list (which that
// layer's views share), and an older list of the layer that a view still reads. Fork gives the
// child a list of the prefix's pages instead of copying them; a page whose count falls to 0
// returns to the free list. A page with more than one reference is never written: the store
// copies it first (copy-on-write), so a shared page's rows never change while anyone can read
// them.
//
// Thread-safe. Ref and Unref of pages that stay in use are single atomic operations; the free
// list (Allocate, and an Unref that frees) takes the pool's one mutex, held for the list
// operation only.
#ifndef ATTENTION_SERVER_SESSION_PAGE_POOL_H_
#define ATTENTION_SERVER_SESSION_PAGE_POOL_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "server/session/page_storage.h"

namespace attention::session {

class PagePool {
 public:
  // A pool over every page of `storage`, all free.
  static absl::StatusOr<std::unique_ptr<PagePool>> Create(std::unique_ptr<PageStorage> storage);

  PagePool(const PagePool&) = delete;
  PagePool& operator=(const PagePool&) = delete;

  PageStorage& storage() const { return *storage_; }
  int64_t page_bytes() const { return page_bytes_; }
  int32_t num_pages() const { return num_pages_; }

  // Takes `n` free pages, each with one reference, and appends their ids to `pages`. All or
  // nothing: false, and nothing taken, when fewer than n are free.
  bool Allocate(int64_t n, std::vector<int32_t>& pages);

  // Adds a reference to a page the caller holds a reference on (so it cannot be freed meanwhile).
  void Ref(int32_t page) { refcounts_[page].fetch_add(1, std::memory_order_relaxed); }

  // Drops one reference from each page (a page may appear once per reference held); the pages
  // left with none return to the free list, under one lock for the call.
  void Unref(absl::Span<const int32_t> pages);

  // References on `page` now; 0 for a free page.
  int32_t refcount(int32_t page) const { return refcounts_[page].load(std::memory_order_acquire); }

  int32_t free_pages() const { return free_count_.load(std::memory_order_relaxed); }
  int32_t used_pages() const { return num_pages_ - free_pages(); }

  // Held by the one thread evicting sessions of this pool at a time (SessionStore), so that two
  // appends short of pages do not both evict for the same shortfall.
  std::mutex& eviction_mutex() { return eviction_mu_; }

 private:
  explicit PagePool(std::unique_ptr<PageStorage> storage);

  const std::unique_ptr<PageStorage> storage_;
  const int64_t page_bytes_;
  const int32_t num_pages_;
  const std::unique_ptr<std::atomic<int32_t>[]> refcounts_;  // [num_pages]

  std::mutex mu_;
  std::vector<int32_t> free_;        // guarded by mu_; a stack, the last page freed is reused first
  std::atomic<int32_t> free_count_;  // free_.size(), readable without mu_

  std::mutex eviction_mu_;
};

}  // namespace attention::session

#endif  // ATTENTION_SERVER_SESSION_PAGE_POOL_H_
