// A few persistent threads that run the pieces of one job together with the calling thread:
// an executor's staging copies, output scatter and answer serialization, which on a many-core
// host run at several times one thread's memory bandwidth.
#ifndef ATTENTION_SERVER_WORKER_POOL_H_
#define ATTENTION_SERVER_WORKER_POOL_H_

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "server/packing.h"

namespace attention::server {

class WorkerPool {
 public:
  // `threads` workers besides the caller (0: Run and Copy run on the caller alone), each named
  // `name` (NameThisThread).
  explicit WorkerPool(int threads, const char* name = "attn-worker");
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Calls task(i) for every i in [0, n), spread over the workers and the calling thread; returns
  // when all have returned. Calls from different threads take turns (one Run at a time).
  void Run(size_t n, const std::function<void(size_t)>& task);

  // Runs the copies in pieces of at most `piece_bytes` bytes, in parallel.
  void Copy(const std::vector<HostCopy>& copies, int64_t piece_bytes = int64_t{2} << 20);

  int threads() const { return static_cast<int>(workers_.size()); }

 private:
  void Work();
  // Takes tasks of the current Run until none is left; the last one done wakes Run.
  void RunTasks();

  std::mutex run_mu_;  // one Run at a time
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(size_t)>* task_ = nullptr;
  size_t next_ = 0, count_ = 0, remaining_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace attention::server

#endif  // ATTENTION_SERVER_WORKER_POOL_H_
