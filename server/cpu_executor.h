// The CPU backend behind the Executor interface: one executor thread runs each submitted batch
// with attention::cpu::CpuBackend (which spreads the work over its own worker threads), so gRPC
// and batcher threads never wait for a computation.
#ifndef ATTENTION_SERVER_CPU_EXECUTOR_H_
#define ATTENTION_SERVER_CPU_EXECUTOR_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cpu/attention_cpu.h"
#include "server/executor.h"

namespace attention::server {

// Runs each batch's plan (server/plan.h). A batch of one job runs in place: q, k, v read from the
// request (gathered into one reused buffer first when they are still in the pieces they were
// received in), o and lse written straight into the job's outputs. A packed batch of several jobs
// is staged into one host buffer (grown up to max_batch_bytes() =
// ExecutorOptions::pinned_host_bytes and then reused), run, and delivered back by the plan's
// output copies. A backward batch (kind kBackward: o, lse and grad_o in, dq, dk and dv out) is
// always staged, and runs CpuBackend::RunBackward. pipeline_depth() is 1: the CPU is busy with one
// batch at a time, and the next batch keeps filling in the batcher meanwhile.
//
// Work nobody waits for stops: the backend asks between work items (attention::cpu::CpuBackend's
// cooperative stop) whether every caller of the batch has gone (cancelled, or past its deadline);
// then the batch is abandoned, its jobs answered CANCELLED or DEADLINE_EXCEEDED, and the cores are
// free within one work item (block_q query rows of one head against their keys; for a backward
// batch, one key tile against every query row that sees it, or one query tile against its keys).
// AbandonRunning() stops the running and every later batch the same way (UNAVAILABLE), for the
// drain's deadline.
class CpuExecutor final : public Executor {
 public:
  CpuExecutor(const ExecutorOptions& options, Metrics* metrics);
  ~CpuExecutor() override;

  const std::string& device() const override { return device_; }
  int pipeline_depth() const override { return 1; }
  int64_t max_batch_bytes() const override { return max_batch_bytes_; }
  absl::Status Admit(const Job& job) const override;
  void Submit(std::unique_ptr<Batch> batch) override;
  void Shutdown() override;

  // From now on the running batch and every later one stop between work items and are answered
  // UNAVAILABLE: the drain calls it at its deadline, so that CPU work never holds the process
  // past it (drain_stuck is left to devices that cannot be stopped). Thread-safe; idempotent.
  void AbandonRunning();

  int num_threads() const { return backend_.num_threads(); }

 private:
  void Run();
  absl::Status Execute(Batch& batch);

  const std::string device_ = "cpu";
  const int64_t max_batch_bytes_;
  Metrics* const metrics_;
  cpu::CpuBackend backend_;
  std::vector<char> staging_;     // executor thread only
  std::vector<char> gathered_;    // a lone job's q, k, v gathered from pieces; executor thread only
  std::vector<HostCopy> copies_;  // the plan's copies, bound to staging_; executor thread only
  std::atomic<bool> abandon_{false};

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Batch>> queue_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace attention::server

#endif  // ATTENTION_SERVER_CPU_EXECUTOR_H_
