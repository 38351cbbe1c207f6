#include "server/worker_pool.h"

#include <algorithm>
#include <cstring>

namespace attention::server {

WorkerPool::WorkerPool(int threads) {
  for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { Work(); });
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void WorkerPool::Run(size_t n, const std::function<void(size_t)>& task) {
  if (n == 0) return;
  if (n == 1 || workers_.empty()) {
    for (size_t i = 0; i < n; ++i) task(i);
    return;
  }
  std::lock_guard<std::mutex> run_lock(run_mu_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    task_ = &task;
    next_ = 0;
    count_ = n;
    remaining_ = n;
    ++generation_;
  }
  cv_.notify_all();
  RunTasks();
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [this] { return remaining_ == 0; });
  task_ = nullptr;
  count_ = 0;
}

void WorkerPool::Copy(const std::vector<HostCopy>& copies, int64_t piece_bytes) {
  std::vector<HostCopy> pieces;
  for (const HostCopy& c : copies) {
    for (int64_t done = 0; done < c.bytes; done += piece_bytes) {
      pieces.push_back({c.dst + done, c.src + done, std::min(piece_bytes, c.bytes - done)});
    }
  }
  Run(pieces.size(), [&pieces](size_t i) {
    std::memcpy(pieces[i].dst, pieces[i].src, static_cast<size_t>(pieces[i].bytes));
  });
}

void WorkerPool::Work() {
  uint64_t seen = 0;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || (generation_ != seen && next_ < count_); });
      if (stopping_) return;
      seen = generation_;
    }
    RunTasks();
  }
}

void WorkerPool::RunTasks() {
  while (true) {
    size_t index = 0;
    const std::function<void(size_t)>* task = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (task_ == nullptr || next_ >= count_) return;
      index = next_++;
      task = task_;
    }
    (*task)(index);
    std::lock_guard<std::mutex> lock(mu_);
    if (--remaining_ == 0) done_cv_.notify_all();
  }
}

}  // namespace attention::server
