#include "server/cpu_executor.h"

#include <utility>

#include "server/metrics/metrics.h"
#include "server/plan.h"
#include "server/thread_name.h"

namespace attention::server {
CpuExecutor::CpuExecutor(const ExecutorOptions& options, Metrics* metrics)
    : max_batch_bytes_(options.pinned_host_bytes),
      metrics_(metrics),
      backend_(options.cpu_threads) {
  if (metrics_ != nullptr) metrics_->SetDeviceMemory(0, 0, max_batch_bytes_, 0, 0, 0);
  thread_ = std::thread([this] {
    NameThisThread("attn-cpu-exec");
    Run();
  });
}

CpuExecutor::~CpuExecutor() { Shutdown(); }

absl::Status CpuExecutor::Admit(const Job& job) const {
  // A job alone runs in place (no staging), so every validated request fits; the backend says
  // whether it computes the configuration.
  return cpu::CheckSupported(job.spec);
}

void CpuExecutor::Submit(std::unique_ptr<Batch> batch) {
  std::lock_guard<std::mutex> lock(mu_);
  queue_.push_back(std::move(batch));
  cv_.notify_one();
}

void CpuExecutor::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    cv_.notify_one();
  }
  thread_.join();
}

void CpuExecutor::Run() {
  while (true) {
    std::unique_ptr<Batch> batch;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and every submitted batch finished
      batch = std::move(queue_.front());
      queue_.pop_front();
    }
    const absl::Status status = Execute(*batch);
    FinishBatch(std::move(batch), status);
  }
}

absl::Status CpuExecutor::Execute(Batch& batch) {
  batch.device = device_;
  batch.timings.started = Clock::now();
  AllocateOutputs(batch);
  if (batch.jobs.size() == 1 && batch.config.kind == WorkKind::kForward) {
    // A lone job runs in place: the kernel reads its request and writes its outputs. (A paged
    // job's page table is the batch's: it is always staged, a few hundred bytes.)
    const AttentionParams p = InPlaceParams(batch, &gathered_);
    const Clock::time_point start = Clock::now();
    batch.timings.staged = start;
    absl::Status status = backend_.Run(p);
    batch.timings.kernel_ns = NanosSince(start);
    // Nothing to deliver: the outputs are already the job's.
    batch.timings.device_done = batch.timings.scattered = Clock::now();
    // A buffer grown for one large request is not kept (packed batches are bounded by
    // max_batch_bytes_, a lone request is not).
    if (static_cast<int64_t>(gathered_.capacity()) > max_batch_bytes_) {
      std::vector<char>().swap(gathered_);
    }
    return status;
  }
  const BatchLayout& layout = batch.plan.layout;
  if (static_cast<int64_t>(staging_.size()) < layout.total_bytes()) {
    staging_.resize(static_cast<size_t>(layout.total_bytes()));
    if (metrics_ != nullptr) {
      metrics_->SetDeviceMemory(0, 0, max_batch_bytes_, static_cast<int64_t>(staging_.size()), 0,
                                0);
    }
  }
  char* inputs = staging_.data();
  char* outputs = inputs + layout.input_bytes;
  copies_.clear();
  AppendInputCopies(batch, inputs, &copies_);
  RunCopies(copies_);
  const AttentionParams p = BindParams(batch.plan, inputs, outputs);
  const Clock::time_point start = Clock::now();
  batch.timings.staged = start;
  absl::Status status = backend_.Run(p);
  batch.timings.kernel_ns = NanosSince(start);
  batch.timings.device_done = Clock::now();
  if (status.ok()) {
    copies_.clear();
    AppendOutputCopies(batch, outputs, &copies_);
    RunCopies(copies_);
  }
  batch.timings.scattered = Clock::now();
  return status;
}

}  // namespace attention::server
