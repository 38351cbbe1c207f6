#include "server/cpu_executor.h"

#include <utility>

#include "server/metrics/metrics.h"
#include "server/plan.h"
#include "server/thread_name.h"

namespace attention::server {
namespace {

// Whether every caller of `batch` has gone: each job cancelled or past its deadline (gRPC cancels
// a call at its deadline). Monotone: once true it stays true. Cheap in the common case (the first
// job's caller is still there: one load and at most one clock read).
bool AllCallersGone(const Batch& batch) {
  Clock::time_point now{};
  for (const auto& job : batch.jobs) {
    if (job->is_cancelled()) continue;
    if (job->deadline == Clock::time_point::max()) return false;
    if (now == Clock::time_point{}) now = Clock::now();
    if (job->deadline > now) return false;
  }
  return true;
}

// The status of a batch the backend stopped (its o and lse are incomplete): what made it stop.
absl::Status StoppedStatus(const Batch& batch, bool abandoned) {
  if (abandoned) {
    return absl::UnavailableError(
        "server drained before the request finished (--drain_timeout_s passed while it ran): "
        "send it to another replica");
  }
  // gRPC cancels a call at its deadline too, so the deadlines tell the two apart.
  const Clock::time_point now = Clock::now();
  bool all_expired = true;
  for (const auto& job : batch.jobs) all_expired = all_expired && job->deadline <= now;
  if (all_expired) {
    return absl::DeadlineExceededError(
        "deadline passed while the request ran: its batch was stopped between tiles");
  }
  return absl::CancelledError(
      "every caller of the batch cancelled or passed its deadline while it ran: stopped between "
      "tiles");
}

}  // namespace

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
  // A forward job alone runs in place (no staging) and a backward job alone is staged in a buffer
  // sized for it, so every validated request fits; the backend says whether it computes the
  // configuration.
  return cpu::CheckSupported(job.spec);
}

void CpuExecutor::Submit(std::unique_ptr<Batch> batch) {
  std::lock_guard<std::mutex> lock(mu_);
  queue_.push_back(std::move(batch));
  cv_.notify_one();
}

void CpuExecutor::AbandonRunning() { abandon_.store(true, std::memory_order_relaxed); }

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
  batch.precision = cpu::ComputedPrecision(batch.config);
  batch.timings.started = Clock::now();
  const auto should_stop = [this, &batch] {
    return abandon_.load(std::memory_order_relaxed) || AllCallersGone(batch);
  };
  const auto finish_status = [this, &batch](absl::Status status) {
    if (absl::IsCancelled(status)) {
      return StoppedStatus(batch, abandon_.load(std::memory_order_relaxed));
    }
    return status;
  };
  AllocateOutputs(batch);
  if (batch.jobs.size() == 1 && batch.config.kind == WorkKind::kForward) {
    // A lone job runs in place: the kernel reads its request and writes its outputs. (A paged
    // job's page table is the batch's: it is always staged, a few hundred bytes.)
    const AttentionParams p = InPlaceParams(batch, &gathered_);
    const Clock::time_point start = Clock::now();
    batch.timings.staged = start;
    absl::Status status = finish_status(backend_.Run(p, should_stop));
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
  absl::Status status;
  if (batch.config.kind == WorkKind::kBackward) {
    AttentionBackwardParams backward;
    static_cast<AttentionParams&>(backward) = p;
    const BackwardBuffers buffers = BindBackward(batch.plan, inputs, outputs);
    backward.do_ = buffers.grad_o;
    backward.dq = buffers.dq;
    backward.dk = buffers.dk;
    backward.dv = buffers.dv;
    status = finish_status(backend_.RunBackward(backward, should_stop));
  } else {
    status = finish_status(backend_.Run(p, should_stop));
  }
  batch.timings.kernel_ns = NanosSince(start);
  batch.timings.device_done = Clock::now();
  if (status.ok()) {
    copies_.clear();
    AppendOutputCopies(batch, outputs, &copies_);
    RunCopies(copies_);
  }
  batch.timings.scattered = Clock::now();
  // A lone backward job is staged whatever its size (the batcher bounds packed batches by
  // max_batch_bytes_, not a lone job): a buffer grown past the bound for it is not kept.
  if (static_cast<int64_t>(staging_.size()) > max_batch_bytes_) {
    std::vector<char>().swap(staging_);
    if (metrics_ != nullptr) metrics_->SetDeviceMemory(0, 0, max_batch_bytes_, 0, 0, 0);
  }
  return status;
}

}  // namespace attention::server
