#include "server/output_pool.h"

#include <utility>

namespace attention::server {

OutputPool& OutputPool::Process() {
  static OutputPool* pool = new OutputPool;  // never destroyed: gRPC may release answers late
  return *pool;
}

void OutputPool::SetCapacity(int64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  capacity_bytes_ = bytes;
  TrimLocked();
}

std::string OutputPool::Take(size_t bytes) {
  std::string buffer;
  if (bytes >= kMinKeptBytes) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = kept_.lower_bound(bytes);
    if (it != kept_.end() && it->first / 2 <= bytes) {
      kept_bytes_ -= static_cast<int64_t>(it->first);
      ++reused_;
      buffer = std::move(it->second);
      kept_.erase(it);
    }
  }
  // A kept buffer keeps its length: shrinking writes one terminator, growing zeroes the
  // difference only.
  buffer.resize(bytes);
  return buffer;
}

void OutputPool::Give(std::string buffer) {
  const size_t capacity = buffer.capacity();
  if (capacity < kMinKeptBytes) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (kept_bytes_ + static_cast<int64_t>(capacity) > capacity_bytes_) return;  // freed on return
  kept_bytes_ += static_cast<int64_t>(capacity);
  kept_.emplace(capacity, std::move(buffer));
}

int64_t OutputPool::kept_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return kept_bytes_;
}

int64_t OutputPool::reused() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reused_;
}

void OutputPool::TrimLocked() {
  // The largest go first: they hold the most memory for the fewest answers.
  while (kept_bytes_ > capacity_bytes_ && !kept_.empty()) {
    auto last = std::prev(kept_.end());
    kept_bytes_ -= static_cast<int64_t>(last->first);
    kept_.erase(last);
  }
}

}  // namespace attention::server
