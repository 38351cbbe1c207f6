// A persistent pool of worker threads for data-parallel loops. Several threads may call
// ParallelFor at once: their loops share the workers (first come, first served) and each caller
// works on its own loop too, so a call never waits for a free worker to make progress.
#ifndef ATTENTION_KERNELS_CPU_THREAD_POOL_H_
#define ATTENTION_KERNELS_CPU_THREAD_POOL_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"

namespace attention::cpu {

class ThreadPool {
 public:
  // Starts num_threads - 1 workers (the caller of ParallelFor is the last thread). num_threads
  // must be >= 1.
  explicit ThreadPool(int num_threads);
  // Joins the workers; no ParallelFor may be running.
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(i) exactly once for every i in [0, n), in increasing order of claim (workers take
  // the next index as they become free), and returns when every call has returned.
  void ParallelFor(int64_t n, absl::FunctionRef<void(int64_t)> fn);

  // The same, but a call that returns false stops the loop: no index is claimed after it (calls
  // already running finish), so a stop costs at most one call per thread, however many indices
  // are left. Returns true when every index ran, false when the loop stopped.
  bool ParallelForUntil(int64_t n, absl::FunctionRef<bool(int64_t)> fn);

 private:
  struct Loop;
  void WorkerMain();
  static void RunItems(Loop& loop);

  std::mutex mu_;
  std::condition_variable work_cv_;  // a loop was queued, or shutdown
  std::condition_variable idle_cv_;  // a worker left a loop
  std::deque<Loop*> loops_;          // loops with unclaimed items, oldest first
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace attention::cpu

#endif  // ATTENTION_KERNELS_CPU_THREAD_POOL_H_
