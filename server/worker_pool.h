// A few persistent threads that run the pieces of one job together with the calling thread:
// an executor's staging copies, output scatter and answer serialization, which on a many-core
// host run at several times one thread's memory bandwidth. The threads are those of the CPU
// backend's parallel-for pool (kernels/cpu/thread_pool.h); this adds the copy splitting.
#ifndef ATTENTION_SERVER_WORKER_POOL_H_
#define ATTENTION_SERVER_WORKER_POOL_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/functional/function_ref.h"
#include "kernels/cpu/thread_pool.h"
#include "server/packing.h"

namespace attention::server {

class WorkerPool {
 public:
  // `threads` workers besides the caller (0: Run and Copy run on the caller alone).
  explicit WorkerPool(int threads) : pool_(threads + 1) {}

  // Calls task(i) for every i in [0, n), spread over the workers and the calling thread; returns
  // when all have returned. Calls from different threads share the workers.
  void Run(size_t n, absl::FunctionRef<void(size_t)> task) {
    pool_.ParallelFor(static_cast<int64_t>(n), [task](int64_t i) { task(static_cast<size_t>(i)); });
  }

  // Runs the copies in pieces of at most `piece_bytes` bytes, in parallel.
  void Copy(const std::vector<HostCopy>& copies, int64_t piece_bytes = int64_t{2} << 20);

  int threads() const { return pool_.num_threads() - 1; }

 private:
  cpu::ThreadPool pool_;
};

}  // namespace attention::server

#endif  // ATTENTION_SERVER_WORKER_POOL_H_
