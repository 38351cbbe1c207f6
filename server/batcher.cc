#include "server/batcher.h"

#include <algorithm>
#include <limits>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/metrics/metrics.h"
#include "server/packing.h"
#include "server/thread_name.h"

namespace attention::server {
namespace {

// Largest cu_seqlens offset of a launch (int32).
constexpr int64_t kMaxLaunchRows = std::numeric_limits<int32_t>::max();

// Device bytes a job adds to a batch, roughly (inputs and outputs, no alignment): what decides
// that a bucket holds a full batch by bytes.
int64_t Footprint(const RequestSpec& s) { return s.queued_bytes() + s.o_bytes() + s.lse_bytes; }

// Why a queued job must not be launched (its deadline passed, its caller cancelled), or OK. The
// deadline is asked first: gRPC cancels a call when its deadline passes, so an expired job is
// usually marked cancelled too, and its caller saw DEADLINE_EXCEEDED.
absl::Status DropStatus(const Job& job, Clock::time_point now) {
  if (job.deadline <= now) {
    const auto waited = std::chrono::duration_cast<std::chrono::microseconds>(now - job.accepted);
    return absl::DeadlineExceededError(
        absl::StrCat("deadline passed after ", waited.count(), " us in the queue, before launch"));
  }
  if (job.is_cancelled()) {
    return absl::CancelledError("request cancelled by the caller before launch");
  }
  return absl::OkStatus();
}

}  // namespace

Batcher::Batcher(const BatcherOptions& options, std::vector<Executor*> executors, Metrics* metrics)
    : options_(options), metrics_(metrics) {
  executors_.reserve(executors.size());
  for (Executor* e : executors) executors_.push_back(ExecutorState{e});
  thread_ = std::thread([this] {
    NameThisThread("attn-batcher");
    Run();
  });
}

Batcher::~Batcher() { Shutdown(); }

absl::Status Batcher::Enqueue(std::unique_ptr<Job>& job) {
  const RequestSpec& spec = job->spec;
  // Its caller is already gone (the cancel's sweep ran before the job got here): it would wait
  // in its bucket until the bucket launches.
  if (job->is_cancelled()) return DropStatus(*job, Clock::now());
  // Executors are alike (one kind per server), so the first one speaks for all, unless the job
  // is bound to one (its K/V live in that device's session pool).
  if (spec.device >= static_cast<int>(executors_.size())) {
    return absl::InternalError(absl::StrCat("device ", spec.device, " has no executor (",
                                            executors_.size(), " executors)"));
  }
  const int admitting = spec.device >= 0 ? spec.device : 0;
  if (absl::Status admit = executors_[admitting].executor->Admit(*job); !admit.ok()) {
    if (metrics_ != nullptr) {
      metrics_->RequestRejected(absl::IsResourceExhausted(admit) ? "too_large" : "invalid");
    }
    return admit;
  }
  const int64_t bytes = spec.queued_bytes();
  std::unique_lock<std::mutex> lock(mu_);
  if (draining_) {
    if (metrics_ != nullptr) metrics_->RequestRejected("draining");
    return absl::UnavailableError("server is draining: send the request to another replica");
  }
  if (bytes > options_.max_queue_bytes) {
    if (metrics_ != nullptr) metrics_->RequestRejected("too_large");
    return absl::ResourceExhaustedError(
        absl::StrCat("request holds ", bytes, " bytes of tensors, more than the queue's bound of ",
                     options_.max_queue_bytes, " bytes (--max_queue_bytes)"));
  }
  if (spec.work > options_.max_queue_work) {
    if (metrics_ != nullptr) metrics_->RequestRejected("too_large");
    return absl::ResourceExhaustedError(absl::StrCat(
        "request holds ", absl::SixDigits(spec.work * 1e-9),
        " GFLOP of work, more than the queue's bound of ",
        absl::SixDigits(options_.max_queue_work * 1e-9), " GFLOP (--max_queue_gflop)"));
  }
  if (queued_requests_ + 1 > options_.max_queue_requests ||
      queued_bytes_ + bytes > options_.max_queue_bytes ||
      queued_work_ + spec.work > options_.max_queue_work) {
    if (metrics_ != nullptr) metrics_->RequestRejected("queue_full");
    return absl::ResourceExhaustedError(absl::StrCat(
        "queue full: ", queued_requests_, " requests, ", queued_bytes_, " bytes and ",
        absl::SixDigits(queued_work_ * 1e-9), " GFLOP of work queued (bounds --max_queue_requests=",
        options_.max_queue_requests, ", --max_queue_bytes=", options_.max_queue_bytes,
        ", --max_queue_gflop=", absl::SixDigits(options_.max_queue_work * 1e-9), "); retry later"));
  }
  const Clock::time_point now = Clock::now();
  const bool launch_here = queued_requests_ == 0 && DropStatus(*job, now).ok();
  auto it = buckets_.try_emplace(static_cast<const KernelConfig&>(spec)).first;
  Bucket& bucket = it->second;
  bucket.tokens_q += spec.total_q;
  bucket.bytes += Footprint(spec);
  bucket.work += spec.work;
  bucket.jobs.push_back(std::move(job));
  ++queued_requests_;
  queued_bytes_ += bytes;
  queued_work_ += spec.work;
  ++outstanding_;
  // Fast path: nothing else queued and an executor idle. The batcher thread would launch this job
  // alone at once; doing it here saves the hand-off to that thread (a wake-up) on an idle server.
  const int e = launch_here ? ExecutorFor(it->first) : -1;
  if (e < 0 || executors_[e].batches > 0) {
    PublishQueueDepth();
    work_cv_.notify_one();
    return absl::OkStatus();
  }
  // The job may have been cancelled since launch_here was decided (the flag is set by another
  // thread without mu_): then FormBatch drops it and forms no batch, and it is answered here.
  std::vector<Dropped> dropped;
  std::unique_ptr<Batch> batch = FormBatch(bucket, e, now, &dropped);
  buckets_.erase(it);
  PublishQueueDepth();
  Executor* target = executors_[e].executor;
  lock.unlock();
  AnswerDropped(&dropped);
  if (batch != nullptr) SubmitTo(target, std::move(batch));
  return absl::OkStatus();
}

void Batcher::SubmitTo(Executor* target, std::unique_ptr<Batch> batch) {
  if (!target->writes_pending_rows()) {
    // Session Attends whose k_new / v_new the service left to the executor (PendingRows): this
    // executor has no way of its own, so they are written here, before anything reads them.
    if (absl::Status written = WritePendingRows(*batch); !written.ok()) {
      batch->device = target->device();
      FinishBatch(std::move(batch), written);
      return;
    }
  }
  target->Submit(std::move(batch));
}

void Batcher::AnswerDropped(std::vector<Dropped>* dropped) {
  if (dropped->empty()) return;
  for (Dropped& d : *dropped) {
    JobCompletion* completion = d.job->completion;
    completion->Complete(std::move(d.job), d.status);
  }
  const int64_t answered = static_cast<int64_t>(dropped->size());
  dropped->clear();
  std::lock_guard<std::mutex> lock(mu_);
  outstanding_ -= answered;
  if (outstanding_ == 0) idle_cv_.notify_all();
}

void Batcher::NotifyCancelled() {
  std::lock_guard<std::mutex> lock(mu_);
  sweep_requested_ = true;
  work_cv_.notify_one();
}

void Batcher::StopAccepting() {
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
  work_cv_.notify_one();
}

bool Batcher::Drain(Clock::time_point deadline) {
  StopAccepting();
  std::unique_lock<std::mutex> lock(mu_);
  return idle_cv_.wait_until(lock, deadline, [this] { return outstanding_ == 0; });
}

bool Batcher::Shutdown(Clock::time_point deadline) {
  std::vector<std::unique_ptr<Job>> abandoned;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!thread_.joinable()) return true;
    draining_ = true;
    stopping_ = true;
    for (auto& [key, bucket] : buckets_) {
      for (auto& job : bucket.jobs) abandoned.push_back(std::move(job));
    }
    buckets_.clear();
    queued_requests_ = 0;
    queued_bytes_ = 0;
    queued_work_ = 0;
    PublishQueueDepth();
    work_cv_.notify_one();
  }
  for (auto& job : abandoned) {
    JobCompletion* completion = job->completion;
    completion->Complete(std::move(job),
                         absl::UnavailableError("server shut down before the request was run"));
  }
  {
    std::unique_lock<std::mutex> lock(mu_);
    outstanding_ -= static_cast<int64_t>(abandoned.size());
    if (outstanding_ == 0) idle_cv_.notify_all();
    // Nothing is queued any more: what is outstanding is in the executors' batches.
    if (!idle_cv_.wait_until(lock, deadline, [this] { return outstanding_ == 0; })) return false;
  }
  thread_.join();
  return true;
}

int64_t Batcher::queued_requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queued_requests_;
}

int Batcher::batches_in_flight() const {
  std::lock_guard<std::mutex> lock(mu_);
  return batches_in_flight_;
}

void Batcher::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  std::vector<Dropped> dropped;
  while (true) {
    const Clock::time_point now = Clock::now();
    if (sweep_requested_) {
      sweep_requested_ = false;
      Sweep(now, &dropped);
    }
    Clock::time_point wake = Clock::time_point::max();
    std::unique_ptr<Batch> batch;
    Executor* target = nullptr;
    if (queued_requests_ > 0) {
      for (const Candidate& c : Candidates()) {
        auto it = PickBucket(c, now, &wake);
        if (it == buckets_.end()) continue;
        batch = FormBatch(it->second, c.executor, now, &dropped);
        if (it->second.jobs.empty()) buckets_.erase(it);
        target = executors_[c.executor].executor;
        break;
      }
    }
    if (batch != nullptr || !dropped.empty()) {
      PublishQueueDepth();
      lock.unlock();
      AnswerDropped(&dropped);
      if (batch != nullptr) SubmitTo(target, std::move(batch));
      lock.lock();
      continue;
    }
    if (stopping_ && batches_in_flight_ == 0) break;
    if (wake == Clock::time_point::max()) {
      work_cv_.wait(lock);
    } else {
      work_cv_.wait_until(lock, wake);
    }
  }
}

absl::InlinedVector<Batcher::Candidate, 8> Batcher::Candidates() const {
  bool any_serving = false;
  for (const ExecutorState& s : executors_) any_serving = any_serving || s.executor->serving();
  absl::InlinedVector<Candidate, 8> candidates;
  for (int i = 0; i < static_cast<int>(executors_.size()); ++i) {
    const ExecutorState& s = executors_[i];
    if (s.batches >= s.executor->pipeline_depth()) continue;
    candidates.push_back({i, any_serving && !s.executor->serving()});
  }
  std::stable_sort(candidates.begin(), candidates.end(),
                   [this](const Candidate& a, const Candidate& b) {
                     const ExecutorState& x = executors_[a.executor];
                     const ExecutorState& y = executors_[b.executor];
                     return std::make_tuple(a.bound_only, x.batches, x.tokens) <
                            std::make_tuple(b.bound_only, y.batches, y.tokens);
                   });
  return candidates;
}

int Batcher::ExecutorFor(const KernelConfig& config) const {
  for (const Candidate& c : Candidates()) {
    if (config.device >= 0 ? c.executor == config.device : !c.bound_only) return c.executor;
  }
  return -1;
}

absl::flat_hash_map<KernelConfig, Batcher::Bucket>::iterator Batcher::PickBucket(
    const Candidate& c, Clock::time_point now, Clock::time_point* wake) {
  const int e = c.executor;
  const bool executor_idle = executors_[e].batches == 0;
  const int64_t max_bytes = executors_[e].executor->max_batch_bytes();
  auto best = buckets_.end();
  for (auto it = buckets_.begin(); it != buckets_.end(); ++it) {
    const Bucket& bucket = it->second;
    if (bucket.jobs.empty()) continue;
    const int device = it->first.device;
    if (device >= 0 ? device != e : c.bound_only) continue;
    const Clock::time_point oldest = bucket.jobs.front()->accepted;
    const Clock::time_point due = oldest + options_.max_queue_delay;
    const bool full = !options_.batching || it->first.mask_kind != MaskKind::kNone ||
                      static_cast<int64_t>(bucket.jobs.size()) >= options_.max_batch_requests ||
                      bucket.tokens_q >= options_.max_batch_tokens || bucket.bytes >= max_bytes ||
                      bucket.work >= options_.max_batch_work;
    if (executor_idle || draining_ || full || now >= due) {
      if (best == buckets_.end() || oldest < best->second.jobs.front()->accepted) best = it;
    } else {
      *wake = std::min(*wake, due);
    }
  }
  return best;
}

std::unique_ptr<Batch> Batcher::FormBatch(Bucket& bucket, int e, Clock::time_point now,
                                          std::vector<Dropped>* dropped) {
  auto batch = std::make_unique<Batch>();
  // A masked job runs alone (one mask per launch), as does every job with batching off.
  const size_t max_jobs =
      !options_.batching || bucket.jobs.front()->spec.mask_kind != MaskKind::kNone
          ? 1
          : static_cast<size_t>(options_.max_batch_requests);
  const int64_t max_bytes = executors_[e].executor->max_batch_bytes();
  double work = 0;
  while (!bucket.jobs.empty() && batch->jobs.size() < max_jobs) {
    Job& job = *bucket.jobs.front();
    const RequestSpec& s = job.spec;
    if (absl::Status drop = DropStatus(job, now); !drop.ok()) {
      RemoveFromQueue(job, bucket);
      dropped->push_back({std::move(bucket.jobs.front()), std::move(drop)});
      bucket.jobs.pop_front();
      continue;
    }
    if (!batch->jobs.empty() &&
        (batch->total_q + s.total_q > options_.max_batch_tokens ||
         batch->total_k + s.total_k > kMaxLaunchRows || work + s.work > options_.max_batch_work ||
         BatchBytesWith(batch->config, batch->sequences, batch->total_q, batch->total_k,
                        batch->want_lse, s) > max_bytes)) {
      break;
    }
    RemoveFromQueue(job, bucket);
    work += s.work;
    AddJob(*batch, std::move(bucket.jobs.front()));
    bucket.jobs.pop_front();
  }
  if (batch->jobs.empty()) return nullptr;

  SealBatch(*batch);
  batch->id = next_batch_id_++;
  batch->formed = now;
  batch->metrics = metrics_;
  const int64_t tokens = batch->total_q;
  const int64_t jobs = static_cast<int64_t>(batch->jobs.size());
  batch->on_finished = [this, e, tokens, jobs](const Batch&) { OnBatchFinished(e, tokens, jobs); };
  ExecutorState& state = executors_[e];
  ++state.batches;
  state.tokens += tokens;
  ++batches_in_flight_;
  if (metrics_ != nullptr) {
    metrics_->BatchLaunched(static_cast<int>(jobs), batch->total_q, batch->flops);
  }
  return batch;
}

void Batcher::Sweep(Clock::time_point now, std::vector<Dropped>* dropped) {
  for (auto it = buckets_.begin(); it != buckets_.end();) {
    Bucket& bucket = it->second;
    std::deque<std::unique_ptr<Job>> kept;
    for (auto& job : bucket.jobs) {
      if (absl::Status drop = DropStatus(*job, now); !drop.ok()) {
        RemoveFromQueue(*job, bucket);
        dropped->push_back({std::move(job), std::move(drop)});
      } else {
        kept.push_back(std::move(job));
      }
    }
    bucket.jobs = std::move(kept);
    if (bucket.jobs.empty()) {
      buckets_.erase(it++);
    } else {
      ++it;
    }
  }
}

void Batcher::RemoveFromQueue(const Job& job, Bucket& bucket) {
  const RequestSpec& s = job.spec;
  bucket.tokens_q -= s.total_q;
  bucket.bytes -= Footprint(s);
  bucket.work -= s.work;
  --queued_requests_;
  queued_bytes_ -= s.queued_bytes();
  queued_work_ -= s.work;
  // Sums of doubles drift: an empty queue holds no work.
  if (queued_requests_ == 0) queued_work_ = 0;
}

void Batcher::OnBatchFinished(int executor, int64_t tokens, int64_t jobs) {
  std::lock_guard<std::mutex> lock(mu_);
  ExecutorState& state = executors_[executor];
  --state.batches;
  state.tokens -= tokens;
  --batches_in_flight_;
  outstanding_ -= jobs;
  if (outstanding_ == 0) idle_cv_.notify_all();
  work_cv_.notify_one();
}

void Batcher::PublishQueueDepth() {
  if (metrics_ != nullptr) metrics_->SetQueueDepth(queued_requests_, queued_bytes_);
}

}  // namespace attention::server
