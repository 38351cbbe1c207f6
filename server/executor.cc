#include "server/executor.h"

#include <utility>

#include "server/log.h"
#include "server/metrics/metrics.h"
#include "server/worker_pool.h"

namespace attention::server {
namespace {

int64_t Nanos(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
}

double Seconds(int64_t ns) { return static_cast<double>(ns) * 1e-9; }

// Observes `to - from` as `stage` when the executor recorded both ends.
void ObserveInterval(Metrics& metrics, Stage stage, Clock::time_point from, Clock::time_point to) {
  if (from == Clock::time_point{} || to == Clock::time_point{} || to < from) return;
  metrics.ObserveStage(stage, Seconds(Nanos(to - from)));
}

}  // namespace

int64_t Batch::queued_bytes() const {
  int64_t bytes = 0;
  for (const auto& job : jobs) bytes += job->spec.queued_bytes();
  return bytes;
}

void FinishBatch(std::unique_ptr<Batch> batch, const absl::Status& status, WorkerPool* pool) {
  const BatchTimings& t = batch->timings;
  if (status.ok()) {
    for (const auto& job : batch->jobs) {
      JobResult& r = job->result;
      r.queue_ns = Nanos(t.started - job->accepted);
      r.transfer_ns = t.host_to_device_ns + t.device_to_host_ns;
      r.kernel_ns = t.kernel_ns;
      r.batch_id = batch->id;
      r.requests = static_cast<int>(batch->jobs.size());
      r.sequences = batch->sequences;
      r.tokens_q = batch->total_q;
      r.tokens_k = batch->total_k;
      r.device = batch->device;
      r.precision = batch->precision;
      if (batch->metrics != nullptr) {
        batch->metrics->ObserveStage(Stage::kQueueWait, Seconds(r.queue_ns));
      }
    }
    if (batch->metrics != nullptr) {
      if (t.host_to_device_ns > 0) {
        batch->metrics->ObserveStage(Stage::kHostToDevice, Seconds(t.host_to_device_ns));
      }
      // 0: not measured (a lone GPU batch without events, ATTN_LONE_EVENTS=0).
      if (t.kernel_ns > 0) batch->metrics->ObserveStage(Stage::kKernel, Seconds(t.kernel_ns));
      if (t.device_to_host_ns > 0) {
        batch->metrics->ObserveStage(Stage::kDeviceToHost, Seconds(t.device_to_host_ns));
      }
      ObserveInterval(*batch->metrics, Stage::kStaging, t.started, t.staged);
      ObserveInterval(*batch->metrics, Stage::kDevice, t.staged, t.device_done);
      ObserveInterval(*batch->metrics, Stage::kScatter, t.device_done, t.scattered);
    }
  }
  if (!status.ok()) {
    LogLine(LogLevel::kWarning, "batch_failed")
        .Kv("batch_id", batch->id)
        .Kv("device", batch->device)
        .Kv("requests", batch->jobs.size())
        .Kv("code", absl::StatusCodeToString(status.code()))
        .Kv("error", status.message());
  }
  std::vector<std::unique_ptr<Job>>& jobs = batch->jobs;
  const auto complete = [&jobs, &status](size_t i) {
    JobCompletion* completion = jobs[i]->completion;
    completion->Complete(std::move(jobs[i]), status);
  };
  const Clock::time_point answering = Clock::now();
  if (pool != nullptr) {
    pool->ParallelFor(jobs.size(), complete);
  } else {
    for (size_t i = 0; i < jobs.size(); ++i) complete(i);
  }
  if (status.ok() && batch->metrics != nullptr) {
    ObserveInterval(*batch->metrics, Stage::kAnswer, answering, Clock::now());
  }
  if (batch->on_finished) batch->on_finished(*batch);
}

absl::Status WritePendingRows(Job& job) {
  if (job.paged == nullptr || !job.paged->rows.pending()) return absl::OkStatus();
  PagedContext& paged = *job.paged;
  const session::ReadView& view = paged.view;
  if (view.empty()) {
    return absl::InternalError("pending K/V rows of an Attend whose view is already dropped");
  }
  absl::Status written =
      view.storage().WriteRows(view.layout(), paged.rows.slots, paged.rows.k, paged.rows.v);
  if (written.ok()) paged.rows.written = true;
  return written;
}

absl::Status WritePendingRows(Batch& batch) {
  absl::Status first;
  for (const auto& job : batch.jobs) first.Update(WritePendingRows(*job));
  return first;
}

}  // namespace attention::server
