// The dynamic batcher: one thread that turns queued jobs into packed batches and hands them to
// the least loaded executor.
//
// Work bound to a device (KernelConfig::device: a session's Attend, whose K/V live in that
// device's page pool) goes only to that device's executor; its bucket waits while that executor
// is busy. Other work goes to whichever executor is least loaded.
//
// Buckets: jobs are grouped by KernelConfig (kernel configuration), not by shape, so requests of
// different sequence lengths in one bucket become one variable-length launch. A job with a mask
// always runs alone (masks are per request and the kernels take one mask per launch); ALiBi slopes
// are expanded per packed sequence, so they pack.
//
// When a bucket is launched (checked whenever something changes, and at the next delay expiry):
//   - the least loaded executor has no batch at all (an idle server launches at once; a job
//     arriving at an empty queue with an idle executor is submitted by Enqueue itself, without a
//     hand-off to the batcher thread), or
//   - the bucket is full: max_batch_requests jobs, max_batch_tokens query tokens, max_batch_work
//     of work, or the executor's max_batch_bytes, or
//   - its oldest job has waited max_queue_delay, or
//   - the server is draining, or batching is off (every job is its own launch),
// and only while some executor holds fewer than its pipeline_depth() batches: while every
// executor is busy, jobs wait and batches grow. Among launchable buckets the one whose oldest job
// is oldest goes first. A launch takes jobs in arrival order until the next would exceed a limit
// (a single job above max_batch_tokens or max_batch_work still runs, alone).
//
// Work: each job carries its estimated work (RequestSpec::work, floating-point operations). The
// queue holds at most max_queue_work of it, so a request waits behind at most that much work
// (plus the batches running), whoever queued it; a launch holds at most max_batch_work, so one
// batch runs no longer than the largest request may (the drain and a cancel wait for at most
// that).
//
// Every job is answered exactly once: by its batch (FinishBatch), or here with CANCELLED (its
// caller cancelled), DEADLINE_EXCEEDED (its deadline passed before launch) or UNAVAILABLE (still
// queued at shutdown). Jobs are dropped when their batch is formed and whenever
// NotifyCancelled() asks for a sweep.
#ifndef ATTENTION_SERVER_BATCHER_H_
#define ATTENTION_SERVER_BATCHER_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <limits>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "server/executor.h"

namespace attention::server {

class Metrics;

struct BatcherOptions {
  // false: every job is its own launch (the benchmark's baseline).
  bool batching = true;
  // Query tokens of one launch (--max_batch_tokens).
  int64_t max_batch_tokens = 16384;
  // Requests in one launch (--max_batch_requests).
  int max_batch_requests = 64;
  // How long a job may wait for its batch to fill while executors are busy
  // (--max_queue_delay_us).
  std::chrono::microseconds max_queue_delay{200};
  // Queue bounds: requests, and bytes of queued requests (RequestSpec::queued_bytes), accepted
  // and not yet launched. Beyond either, Enqueue answers RESOURCE_EXHAUSTED.
  int64_t max_queue_requests = 4096;
  int64_t max_queue_bytes = int64_t{4} << 30;
  // Work (RequestSpec::work) of requests accepted and not yet launched (--max_queue_gflop x 1e9);
  // beyond it RESOURCE_EXHAUSTED. Unlimited unless set (the server sets its backend's default).
  double max_queue_work = std::numeric_limits<double>::infinity();
  // Work of one launch (the per-request limit, --max_request_gflop x 1e9).
  double max_batch_work = std::numeric_limits<double>::infinity();
};

class Batcher {
 public:
  // `executors` (at least one, not owned) outlive the batcher; `metrics` may be null.
  Batcher(const BatcherOptions& options, std::vector<Executor*> executors, Metrics* metrics);
  // Shutdown().
  ~Batcher();
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Queues `job` and takes ownership of it only on OK; otherwise `job` is left with the caller,
  // who answers it with the returned status: UNAVAILABLE while draining or stopped;
  // RESOURCE_EXHAUSTED when the queue is full or the job can never fit an executor; the
  // executor's own refusal (Executor::Admit). Thread-safe, never blocks on a device. On OK the
  // job may already have been submitted (and even answered) before Enqueue returns.
  absl::Status Enqueue(std::unique_ptr<Job>& job);

  // Some queued job's cancelled flag was set: drop it soon. Thread-safe, cheap.
  void NotifyCancelled();

  // Stops accepting (UNAVAILABLE from the next Enqueue on) and launches everything queued
  // without waiting for batches to fill. Returns at once; idempotent.
  void StopAccepting();

  // StopAccepting(), then waits until every accepted job was answered or `deadline` passed.
  // True if drained.
  bool Drain(Clock::time_point deadline);

  // Stops accepting, answers every job still queued with UNAVAILABLE, waits for the batches
  // executors hold to finish, and joins the batcher thread. Idempotent.
  void Shutdown() { Shutdown(Clock::time_point::max()); }
  // The same, but waits for the executors' batches only until `deadline`: false if some are still
  // running then (a device that never completes). The batcher thread is then left running and
  // the batches still point into their calls: the caller cannot tear the server down and should
  // end the process.
  bool Shutdown(Clock::time_point deadline);

  // Accepted jobs not yet launched, and batches submitted and not yet finished.
  int64_t queued_requests() const;
  int batches_in_flight() const;

 private:
  struct Bucket {
    std::deque<std::unique_ptr<Job>> jobs;
    int64_t tokens_q = 0;  // query tokens queued
    int64_t bytes = 0;     // queued_bytes of its jobs
    double work = 0;       // RequestSpec::work of its jobs
  };
  struct ExecutorState {
    Executor* executor;
    int batches = 0;     // submitted, not finished
    int64_t tokens = 0;  // query tokens of those batches
  };
  struct Dropped {
    std::unique_ptr<Job> job;
    absl::Status status;
  };

  void Run();
  // The executors that may take a batch now (below their pipeline depth), least loaded first
  // (fewest batches, then fewest tokens). One that no longer serves fails a batch at once: it
  // comes only when none of the others serves, or (`bound_only` true) for the work bound to it
  // (KernelConfig::device), which no other executor can run.
  struct Candidate {
    int executor;
    bool bound_only;
  };
  // No heap allocation for up to 8 executors: the Enqueue fast path calls it per request.
  absl::InlinedVector<Candidate, 8> Candidates() const;
  // Executor `e` if it may take `config`'s work now, else -1: for the Enqueue fast path.
  int ExecutorFor(const KernelConfig& config) const;
  // Bucket to launch now on candidate `c`, or end(); lowers *wake to the next time a bucket
  // becomes due by delay. Only buckets that `c` may run: unbound ones, and those bound to it.
  absl::flat_hash_map<KernelConfig, Bucket>::iterator PickBucket(const Candidate& c,
                                                                 Clock::time_point now,
                                                                 Clock::time_point* wake);
  // Pops jobs of `bucket` into a batch for executor `e`; dropped jobs go to *dropped.
  std::unique_ptr<Batch> FormBatch(Bucket& bucket, int e, Clock::time_point now,
                                   std::vector<Dropped>* dropped);
  // Hands `batch` to `target`, first writing its jobs' pending K/V rows when the executor does not
  // (Executor::writes_pending_rows); a failed write fails the batch. Without mu_ held.
  static void SubmitTo(Executor* target, std::unique_ptr<Batch> batch);
  // Answers each dropped job with its status and stops counting it as outstanding. Call without
  // mu_ held (a completion may re-enter Enqueue or NotifyCancelled); clears *dropped.
  void AnswerDropped(std::vector<Dropped>* dropped);
  // Moves cancelled and expired jobs out of every bucket into *dropped.
  void Sweep(Clock::time_point now, std::vector<Dropped>* dropped);
  void RemoveFromQueue(const Job& job, Bucket& bucket);
  void OnBatchFinished(int executor, int64_t tokens, int64_t jobs);
  void PublishQueueDepth();

  const BatcherOptions options_;
  Metrics* const metrics_;

  mutable std::mutex mu_;
  std::condition_variable work_cv_;  // batcher thread: something to do
  std::condition_variable idle_cv_;  // Drain / Shutdown: queue and executors empty
  absl::flat_hash_map<KernelConfig, Bucket> buckets_;
  std::vector<ExecutorState> executors_;
  int64_t queued_requests_ = 0;
  int64_t queued_bytes_ = 0;
  double queued_work_ = 0;
  int64_t outstanding_ = 0;  // accepted, not yet answered
  int batches_in_flight_ = 0;
  uint64_t next_batch_id_ = 1;
  bool sweep_requested_ = false;
  bool draining_ = false;  // no new jobs; launch without waiting
  bool stopping_ = false;  // thread exits once no batch is in flight

  std::thread thread_;
};

}  // namespace attention::server

#endif  // ATTENTION_SERVER_BATCHER_H_
