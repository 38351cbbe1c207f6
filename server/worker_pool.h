// A few persistent threads that run the pieces of one job together with the calling thread:
// an executor's staging copies, output scatter and answer serialization, which on a many-core
// host run at several times one thread's memory bandwidth.
#ifndef ATTENTION_SERVER_WORKER_POOL_H_
#define ATTENTION_SERVER_WORKER_POOL_H_

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "server/plan.h"

namespace attention::server {

class WorkerPool {
 public:
  // `threads` workers besides the caller (0: ParallelFor and Copy run on the caller alone), each named
  // `name` (NameThisThread).
  explicit WorkerPool(int threads, const char* name = "attn-worker");
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Calls task(i) for every i in [0, n), spread over the workers and the calling thread; returns
  // when all have returned. Calls from different threads run at the same time: each caller works
  // on its own call's tasks, and a free worker takes the next task of the oldest call that has
  // tasks left, so one caller's long call never holds another caller up.
  void ParallelFor(size_t n, const std::function<void(size_t)>& task);

  // Runs the copies in pieces of at most `piece_bytes` bytes, in parallel.
  void Copy(const std::vector<HostCopy>& copies, int64_t piece_bytes = int64_t{2} << 20);

  int threads() const { return static_cast<int>(workers_.size()); }

 private:
  // One ParallelFor in progress, on its caller's stack: tasks [next, count) are still to be taken;
  // `remaining` counts the ones not finished.
  struct Call {
    const std::function<void(size_t)>* task;
    size_t count, next, remaining;
  };
  void Work();
  // Takes the next task of `call` (under mu_); the call leaves calls_ with its last task.
  size_t TakeTask(Call* call);

  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::deque<Call*> calls_;  // calls with tasks left to take, oldest first
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace attention::server

#endif  // ATTENTION_SERVER_WORKER_POOL_H_
