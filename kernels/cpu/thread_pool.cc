#include "kernels/cpu/thread_pool.h"

#include <algorithm>
#include <atomic>

namespace attention::cpu {

struct ThreadPool::Loop {
  Loop(int64_t n, absl::FunctionRef<bool(int64_t)> fn) : n(n), fn(fn) {}
  const int64_t n;
  const absl::FunctionRef<bool(int64_t)> fn;
  std::atomic<int64_t> next{0};
  std::atomic<bool> stopped{false};
  int workers_inside = 0;  // guarded by ThreadPool::mu_
};

ThreadPool::ThreadPool(int num_threads) {
  const int workers = std::max(num_threads, 1) - 1;
  workers_.reserve(workers);
  for (int i = 0; i < workers; ++i) workers_.emplace_back([this] { WorkerMain(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::RunItems(Loop& loop) {
  for (int64_t i = loop.next.fetch_add(1, std::memory_order_relaxed); i < loop.n;
       i = loop.next.fetch_add(1, std::memory_order_relaxed)) {
    if (!loop.fn(i)) {
      // Every later claim sees an index >= n. Indices claimed before this store still run: their
      // calls decide for themselves (a stop condition stays true).
      loop.stopped.store(true, std::memory_order_relaxed);
      loop.next.store(loop.n, std::memory_order_relaxed);
      return;
    }
  }
}

void ThreadPool::WorkerMain() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    work_cv_.wait(lock, [this] { return stop_ || !loops_.empty(); });
    if (stop_) return;
    Loop* loop = loops_.front();
    ++loop->workers_inside;
    lock.unlock();
    RunItems(*loop);
    lock.lock();
    // Every item of `loop` is claimed: no one else needs to find it in the queue.
    if (!loops_.empty() && loops_.front() == loop) loops_.pop_front();
    if (--loop->workers_inside == 0) idle_cv_.notify_all();
  }
}

void ThreadPool::ParallelFor(int64_t n, absl::FunctionRef<void(int64_t)> fn) {
  ParallelForUntil(n, [fn](int64_t i) {
    fn(i);
    return true;
  });
}

bool ThreadPool::ParallelForUntil(int64_t n, absl::FunctionRef<bool(int64_t)> fn) {
  if (n <= 0) return true;
  if (n == 1 || workers_.empty()) {
    for (int64_t i = 0; i < n; ++i) {
      if (!fn(i)) return false;
    }
    return true;
  }
  Loop loop(n, fn);
  {
    std::lock_guard<std::mutex> lock(mu_);
    loops_.push_back(&loop);
  }
  if (n == 2) {
    work_cv_.notify_one();
  } else {
    work_cv_.notify_all();
  }
  RunItems(loop);
  // All items are claimed; wait until the workers that claimed some have finished them.
  std::unique_lock<std::mutex> lock(mu_);
  auto it = std::find(loops_.begin(), loops_.end(), &loop);
  if (it != loops_.end()) loops_.erase(it);
  idle_cv_.wait(lock, [&loop] { return loop.workers_inside == 0; });
  return !loop.stopped.load(std::memory_order_relaxed);
}

}  // namespace attention::cpu
