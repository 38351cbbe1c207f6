// The executor interface: what the batcher hands a device (a packed Batch of Jobs) and how every
// job comes back (FinishBatch / JobCompletion). One Executor per device: the CPU backend
// (server/cpu_executor.h) and one per visible GPU (server/cuda/cuda_executor.h) implement it.
//
// Life of a request:
//   service: decode + ValidateRequest -> Job (owns nothing but its RequestSpec; points at the
//            call's request and response messages) -> Batcher::Enqueue
//   batcher: buckets jobs by KernelConfig, forms a Batch (packing.h: AddJob + SealBatch, which
//            makes the batch's Plan), picks the least loaded executor, Executor::Submit(batch)
//   executor: runs the plan (input copies, kernel, output copies into each job's outputs), then
//            FinishBatch(batch, status)
//   FinishBatch: fills each job's result (timings, batch info), hands each job back to its
//            JobCompletion (the service's reactor, which writes the answer and calls Finish /
//            Write), then tells the batcher the batch is done.
#ifndef ATTENTION_SERVER_EXECUTOR_H_
#define ATTENTION_SERVER_EXECUTOR_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "attention/v1/attention.pb.h"
#include "kernels/kernel_config.h"
#include "server/plan.h"
#include "server/request_spec.h"
#include "server/session/session_store.h"

namespace attention::server {

class Metrics;
class WorkerPool;
struct Job;

using Clock = std::chrono::steady_clock;

// Nanoseconds from `start` to now.
inline int64_t NanosSince(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
}

// Receives a job back, exactly once, when it has been answered: OK (the response's o, lse,
// timings and batch hold the result) or the status that says why not. Called from whichever
// thread finished the job (batcher or executor); must not block. Takes the job back, so the
// request and response it points at may be released from here on.
class JobCompletion {
 public:
  virtual ~JobCompletion() = default;
  virtual void Complete(std::unique_ptr<Job> job, const absl::Status& status) = 0;
};

// A job's results, in the bytes the answer will carry: o (spec.o_bytes(), q's layout in
// OutputDType of q's dtype: q's own dtype, bfloat16 for FLOAT8_E4M3) and,
// when the request asked, lse (spec.lse_bytes of float32: dense [batch, q_heads, seqlen_q],
// packed [q_heads, total_q]). Sized by the plan (AllocateOutputs) from the output pool; the
// service moves them into the response, so o is written once and never copied again.
// A backward job (kind kBackward) has dq (spec.q_bytes, q's dtype and layout), dk and dv
// (spec.kv_bytes each, k's layout) instead.
struct JobOutputs {
  std::string o;
  std::string lse;
  std::string dq, dk, dv;

  std::string& tensor(OutputTensor which) {
    switch (which) {
      case OutputTensor::kO:
        return o;
      case OutputTensor::kLse:
        return lse;
      case OutputTensor::kDq:
        return dq;
      case OutputTensor::kDk:
        return dk;
      case OutputTensor::kDv:
        break;
    }
    return dv;
  }
};

// What the answer reports about the batch a job ran in (timings in nanoseconds), filled by
// FinishBatch.
struct JobResult {
  int64_t queue_ns = 0;     // accepted until its batch started
  int64_t transfer_ns = 0;  // host-to-device plus device-to-host copies of its batch
  int64_t kernel_ns = 0;
  uint64_t batch_id = 0;
  int requests = 0, sequences = 0;
  int64_t tokens_q = 0, tokens_k = 0;
  std::string device;
  // The precision the backend computed the batch at (the answer reports it).
  Precision precision = Precision::kFull;
};

// An Attend's k_new / v_new rows that the store has reserved (SessionStore::Append: `slots`, and
// the view already counts them) but that nobody has written yet. The executor that runs the job
// writes them before its kernel reads the layer and sets `written`: the GPU executor with the
// append kernel on the batch's own stream, its rows uploaded with q (cuda_executor.h); any other
// executor gets them written through the pool's PageStorage::WriteRows before its Submit
// (WritePendingRows, called by the batcher). A job that comes back with them unwritten (dropped
// before launch, or its batch failed first) has them written by the service before the session's
// turn ends: once an Attend is queued its rows stay appended (attention.proto, AttendRequest).
struct PendingRows {
  // [slots.size(), kv_heads, head_dim] of the session's dtype each, contiguous, in the request
  // (which outlives the job).
  const char* k = nullptr;
  const char* v = nullptr;
  std::vector<int32_t> slots;  // where row i goes (AppendResult::slots); empty: nothing pending
  int64_t first_token = 0;     // AppendResult::first_token (to undo the append if it cannot be
                               // written at all)
  bool written = false;

  bool pending() const { return !slots.empty() && !written; }
};

// A session's Attend (WorkKind::kPagedDecode), owned by its job: the layer's K/V as the kernel
// reads it, pinned until the job is destroyed (after its answer was written), and the session's
// turn, which orders its calls and ends with the job. The job's spec.cu_seqlens_q points at
// cu_seqlens_q (one sequence of spec.total_q rows).
struct PagedContext {
  session::ReadView view;
  session::Turn turn;
  // The step's k_new / v_new when the service left them to the executor (view already counts
  // them); empty slots when the service wrote them itself or the step appends nothing.
  PendingRows rows;
  int32_t cu_seqlens_q[2] = {0, 0};
  // Keys [begin, end) the request allows (its key range, clamped to the context), when it gave
  // one.
  bool has_key_range = false;
  int32_t key_range[2] = {0, 0};
};

// One accepted request on its way through the batcher and an executor.
//
// Ownership: created by the service, owned by the batcher once Enqueue returned OK, then by the
// Batch it was packed into, and handed back to `completion` by FinishBatch (or by the batcher
// when it drops the job). `request` belongs to the RPC and stays valid until the job was handed
// back. Nothing downstream of the service writes the RPC's response: executors fill `outputs`,
// FinishBatch fills `result`, and the service writes the answer from them.
struct Job {
  // The forward request (null for other kinds of work), and q's header in the request, whose
  // dtype and shape the answer's o takes.
  const v1::AttentionRequest* request = nullptr;
  const v1::Tensor* q_header = nullptr;
  RequestSpec spec;  // validated from the request
  // Set for kind kPagedDecode.
  std::unique_ptr<PagedContext> paged;
  JobOutputs outputs;
  JobResult result;
  JobCompletion* completion = nullptr;

  Clock::time_point accepted;                             // when the service accepted the request
  Clock::time_point deadline = Clock::time_point::max();  // the call's deadline, if any
  // Set (by the service, from any thread) when the caller cancelled; the batcher drops a job so
  // marked before launch with CANCELLED. Null: cannot be cancelled. Outlives the job.
  const std::atomic<bool>* cancelled = nullptr;

  bool is_cancelled() const {
    return cancelled != nullptr && cancelled->load(std::memory_order_relaxed);
  }
};

// Where a job's rows sit in the packed batch: sequences [first_sequence, first_sequence +
// spec.batch) and rows [row_q, row_q + spec.total_q) of q / o, [row_k, row_k + spec.total_k) of
// k / v.
struct JobSlice {
  int first_sequence = 0;
  int64_t row_q = 0;
  int64_t row_k = 0;
};

// Per-batch timings an executor records, in nanoseconds (0 where a stage does not exist, e.g. the
// copies of the CPU backend).
struct BatchTimings {
  Clock::time_point started;  // the executor began this batch (staging its inputs)
  // The batch's host-side milestones after `started`, each left unset (epoch) by an executor that
  // has no such step: its inputs staged and its work handed to the device (or the CPU kernel
  // about to run); the executor saw the device finish it (outputs downloaded, or the CPU kernel
  // returned); its outputs copied into the answers. FinishBatch turns them into the staging,
  // device, scatter and answer stages.
  Clock::time_point staged, device_done, scattered;
  int64_t host_to_device_ns = 0;
  int64_t kernel_ns = 0;
  int64_t device_to_host_ns = 0;
};

// A packed launch: jobs of one KernelConfig laid out as one variable-length batch (every job,
// dense or packed, becomes spec.batch sequences). Built by the batcher with AddJob + SealBatch
// (server/packing.h), which makes its Plan (server/plan.h); the packed tensors themselves are
// never materialized here: an executor runs the plan's copies straight from each request into
// its staging buffer.
struct Batch {
  uint64_t id = 0;
  KernelConfig config;  // every job's spec has this configuration
  std::vector<std::unique_ptr<Job>> jobs;
  std::vector<JobSlice> slices;  // parallel to jobs

  int sequences = 0;
  int64_t total_q = 0, total_k = 0;
  int max_seqlen_q = 0, max_seqlen_k = 0;
  bool want_lse = false;  // some job asked for lse: computed for the whole batch
  double flops = 0;       // FlashAttention convention, summed over jobs

  // Host metadata of the packed batch: [sequences + 1] offsets, and (when config.alibi /
  // config.sinks) the slopes and sink logits expanded to [sequences, q_heads].
  std::vector<int32_t> cu_seqlens_q, cu_seqlens_k;
  std::vector<float> alibi_slopes;
  std::vector<float> sink_logits;
  // FP8 batches (config.dtype kFloat8E4M3), filled by AddJob: every sequence's descale factors
  // expanded to [sequences, q_heads] (q) and [sequences, kv_heads] (k, v), 1.0 where a request
  // gave none, so that requests with different factors share one launch.
  std::vector<float> q_descale, k_descale, v_descale;
  // Paged batches (kind kPagedDecode), filled by SealBatch: [sequences, max_pages] page table,
  // each sequence's context length, and [sequences, 2] key ranges (when some job gave one).
  std::vector<int32_t> page_table, seqlens_k, key_range;
  int max_pages = 0;
  // A batch with a mask holds exactly one job (masks are per request); its mask is that job's
  // spec.mask() with the job's strides.

  Plan plan;  // made by SealBatch
  Clock::time_point formed;

  // Filled by the executor before FinishBatch.
  std::string device;  // "cpu" or "cuda:N"
  // The precision the backend computed at: the configuration's, or a coarser one where the
  // backend has no kernel for it (the answer says which).
  Precision precision = Precision::kFull;
  BatchTimings timings;

  // Set by the batcher: called by FinishBatch after every job was handed back. May be empty.
  std::function<void(const Batch&)> on_finished;
  Metrics* metrics = nullptr;  // may be null (tests)

  int64_t queued_bytes() const;  // sum of the jobs' RequestSpec::queued_bytes()
};

// Completes a batch: with OK, fills each job's result (queue = accepted .. started, transfer =
// host_to_device + device_to_host, kernel, and the batch), observes the stage metrics;
// with an error, answers every job with that status. Then hands each job to its completion and
// calls batch->on_finished. Every executor calls this exactly once per submitted batch, from any
// thread of its own, never while holding a lock the completions could need. With a `pool`, the
// jobs of a batch are handed back in parallel on its threads (each completion serializes its
// answer, so a batch of many answers is not written out by one thread).
void FinishBatch(std::unique_ptr<Batch> batch, const absl::Status& status,
                 WorkerPool* pool = nullptr);

// Writes `job`'s pending rows (PagedContext::rows, when pending()) through its view's pool
// (PageStorage::WriteRows) and marks them written. OK when there is nothing to write. A device
// pool's write is enqueued, not waited for: its readers order after it (DevicePageStorage).
absl::Status WritePendingRows(Job& job);
// The same for every job of `batch`; the first error, after trying every job.
absl::Status WritePendingRows(Batch& batch);

// Sizes of the device and host pools of an executor, fixed at start-up.
struct ExecutorOptions {
  // Device memory pool per GPU; 0 = most of the device's free memory at start-up, less
  // reserved_device_bytes.
  int64_t device_memory_bytes = 0;
  // Device memory per GPU that is allocated after the executors and must be left free by the
  // automatic size: the session page pool (--session_pages x --session_page_bytes).
  int64_t reserved_device_bytes = 0;
  // Pinned host staging per executor (uploads and downloads).
  int64_t pinned_host_bytes = int64_t{1} << 30;
  // Batches an executor holds at once (staging, running, downloading, answering): 3 lets batch
  // i+1's upload overlap batch i's kernel and batch i-1's download; more keep the GPU fed while
  // answers are still being copied and serialized on the host (bench/results/serving_*.md: 6
  // against 3 raised small-request throughput and large-request goodput on an H100 host). Each
  // slot gets pinned_host_bytes / pipeline_depth of staging, which bounds one batch.
  int pipeline_depth = 6;
  // CPU backend worker threads; 0 = one per hardware thread.
  int cpu_threads = 0;
};

// One device. Threading contract:
//   - Admit, max_batch_bytes, pipeline_depth and device are called from gRPC threads and the
//     batcher thread concurrently; they must be cheap, thread-safe and never block.
//   - Submit is called by the batcher thread without any batcher lock held; it takes ownership
//     and returns at once (queue the batch for the executor's own threads: gRPC and batcher
//     threads never wait for a device). The batcher never has more than pipeline_depth() batches
//     submitted and not yet finished on one executor.
//   - Every submitted batch is finished exactly once with FinishBatch, from the executor's own
//     threads (or inside Submit for an immediate failure). Before that the executor runs the
//     batch's plan (server/plan.h: input copies, kernel, output copies into each job's outputs)
//     and fills batch->device and batch->timings.
//   - A failure that concerns the batch, not the requests (e.g. cudaErrorMemoryAllocation) fails
//     that batch's jobs with RESOURCE_EXHAUSTED and the executor keeps serving.
class Executor {
 public:
  virtual ~Executor() = default;

  // "cpu" or "cuda:N" (the BatchInfo.device and metrics label).
  virtual const std::string& device() const = 0;

  // Batches this executor can hold at once (see ExecutorOptions::pipeline_depth).
  virtual int pipeline_depth() const = 0;

  // Largest BatchLayout::total_bytes() of a batch it can run: the batcher packs no more.

  virtual int64_t max_batch_bytes() const = 0;

  // Whether `job` alone can ever run here: RESOURCE_EXHAUSTED if it is too large for the device
  // memory or staging pools; the backend's INVALID_ARGUMENT / UNIMPLEMENTED for a configuration
  // it has no kernel for. Called once per request before it is queued.
  virtual absl::Status Admit(const Job& job) const = 0;

  virtual void Submit(std::unique_ptr<Batch> batch) = 0;

  // Whether Submit writes its jobs' pending K/V rows (PendingRows) itself before its kernel reads
  // them. If not, the batcher writes them (WritePendingRows) before it submits the batch.
  virtual bool writes_pending_rows() const { return false; }

  // False once the executor can run nothing more (a CUDA device after a sticky error: every
  // batch submitted to it fails at once). The batcher sends batches to executors that serve
  // while there is one. Thread-safe and cheap (called with the batcher's lock held).
  virtual bool serving() const { return true; }

  // Finishes every batch already submitted, then stops the executor's threads. Called once, after
  // the batcher submits nothing more.
  virtual void Shutdown() = 0;
};

}  // namespace attention::server

#endif  // ATTENTION_SERVER_EXECUTOR_H_
