// The executor interface: what the batcher hands a device (a packed Batch of Jobs) and how every
// job comes back (FinishBatch / JobCompletion). One Executor per device: the CPU backend
// (server/cpu_executor.h) and one per visible GPU (server/cuda/cuda_executor.h) implement it.
//
// Life of a request:
//   service: decode + ValidateRequest -> Job (owns nothing but its RequestSpec; points at the
//            call's request and response messages) -> Batcher::Enqueue
//   batcher: buckets jobs by BucketKey, forms a Batch (packing.h: AddJob + SealBatch), picks the
//            least loaded executor, Executor::Submit(batch)
//   executor: stages inputs, runs the kernel, writes outputs into each job's response
//            (ScatterOutputs), then FinishBatch(batch, status)
//   FinishBatch: fills each response's timings and batch info, hands each job back to its
//            JobCompletion (the service's reactor, which calls Finish / Write), then tells the
//            batcher the batch is done.
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
#include "kernels/attention_params.h"
#include "server/request_spec.h"

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

// One accepted request on its way through the batcher and an executor.
//
// Ownership: created by the service, owned by the batcher once Enqueue returned OK, then by the
// Batch it was packed into, and handed back to `completion` by FinishBatch (or by the batcher
// when it drops the job). `request` and `response` belong to the RPC and stay valid until the job
// was handed back.
struct Job {
  const v1::AttentionRequest* request = nullptr;
  v1::AttentionResponse* response = nullptr;
  RequestSpec spec;  // validated from *request
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

// Kernel configuration of a job: jobs with equal keys can run in one packed launch whatever their
// sequence lengths. The window is the normalized one (causal folded in); the scale is part of the
// key because one launch has one scale.
struct BucketKey {
  DType dtype = DType::kBFloat16;
  int head_dim = 0;
  int q_heads = 0;
  int kv_heads = 0;
  bool causal = false;
  int window_left = -1, window_right = -1;
  float softcap = 0.f;
  float softmax_scale = 0.f;
  bool alibi = false;
  MaskKind mask_kind = MaskKind::kNone;

  friend bool operator==(const BucketKey& a, const BucketKey& b) {
    return a.dtype == b.dtype && a.head_dim == b.head_dim && a.q_heads == b.q_heads &&
           a.kv_heads == b.kv_heads && a.causal == b.causal && a.window_left == b.window_left &&
           a.window_right == b.window_right && a.softcap == b.softcap &&
           a.softmax_scale == b.softmax_scale && a.alibi == b.alibi && a.mask_kind == b.mask_kind;
  }
  template <typename H>
  friend H AbslHashValue(H h, const BucketKey& k) {
    return H::combine(std::move(h), k.dtype, k.head_dim, k.q_heads, k.kv_heads, k.causal,
                      k.window_left, k.window_right, k.softcap, k.softmax_scale, k.alibi,
                      k.mask_kind);
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

// Byte offsets of one batch's buffers, every one 256-byte aligned, in two blocks:
//   inputs  = q | k | v | cu_seqlens_q | cu_seqlens_k | alibi slopes | mask
//   outputs = o | lse
// so that a GPU executor uploads one block and downloads one block. Absent buffers have size 0.
struct BatchLayout {
  static constexpr int64_t kAlignment = 256;
  int64_t q = 0, k = 0, v = 0, cu_seqlens_q = 0, cu_seqlens_k = 0, alibi = 0, mask = 0;
  int64_t input_bytes = 0;
  int64_t o = 0, lse = 0;
  int64_t output_bytes = 0;
  int64_t total_bytes() const { return input_bytes + output_bytes; }
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

// A packed launch: jobs of one BucketKey laid out as one variable-length batch (every job, dense
// or packed, becomes spec.batch sequences). Built by the batcher with AddJob + SealBatch
// (server/packing.h); the packed tensors themselves are never materialized here: an executor
// copies each job's bytes straight from its request into its staging buffer (StageInputs).
struct Batch {
  uint64_t id = 0;
  BucketKey key;
  std::vector<std::unique_ptr<Job>> jobs;
  std::vector<JobSlice> slices;  // parallel to jobs

  int sequences = 0;
  int64_t total_q = 0, total_k = 0;
  int max_seqlen_q = 0, max_seqlen_k = 0;
  bool want_lse = false;  // some job asked for lse: computed for the whole batch
  double flops = 0;       // FlashAttention convention, summed over jobs

  // Host metadata of the packed batch: [sequences + 1] offsets, and (when key.alibi) the slopes
  // expanded to [sequences, q_heads].
  std::vector<int32_t> cu_seqlens_q, cu_seqlens_k;
  std::vector<float> alibi_slopes;
  // A batch with a mask holds exactly one job (masks are per request); its mask is that job's
  // spec.mask() with the job's strides.

  BatchLayout layout;  // filled by SealBatch
  Clock::time_point formed;

  // Filled by the executor before FinishBatch.
  std::string device;  // "cpu" or "cuda:N"
  BatchTimings timings;

  // Set by the batcher: called by FinishBatch after every job was handed back. May be empty.
  std::function<void(const Batch&)> on_finished;
  Metrics* metrics = nullptr;  // may be null (tests)

  int64_t queued_bytes() const;  // sum of the jobs' RequestSpec::queued_bytes()
};

// Completes a batch: with OK, fills each job's response timings (queue = accepted .. started,
// transfer = host_to_device + device_to_host, kernel) and batch info, observes the stage metrics;
// with an error, answers every job with that status. Then hands each job to its completion and
// calls batch->on_finished. Every executor calls this exactly once per submitted batch, from any
// thread of its own, never while holding a lock the completions could need. With a `pool`, the
// jobs of a batch are handed back in parallel on its threads (each completion serializes its
// answer, so a batch of many answers is not written out by one thread).
void FinishBatch(std::unique_ptr<Batch> batch, const absl::Status& status,
                 WorkerPool* pool = nullptr);

// Sizes of the device and host pools of an executor, fixed at start-up.
struct ExecutorOptions {
  // Device memory pool per GPU; 0 = most of the device's free memory at start-up.
  int64_t device_memory_bytes = 0;
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
//     threads (or inside Submit for an immediate failure). Before that the executor writes the
//     results into each job's response (ScatterOutputs, or directly for single-job batches) and
//     fills batch->device and batch->timings.
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
