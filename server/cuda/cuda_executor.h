// The GPU executor: one per visible CUDA device, behind the same Executor interface as the CPU
// backend (server/executor.h).
//
// Memory: everything is allocated once, at start-up. The device pool (--device_memory_bytes) and
// the pinned host staging pool (--pinned_host_bytes) are each cut into pipeline_depth equal
// slots; a batch occupies one slot of each from staging to its last download, so no request ever
// allocates device or pinned memory.
//
// Pipeline: every slot has its own stream. A stager thread (there are two) takes a submitted batch,
// waits for a free slot, copies each job's q/k/v bytes from the gRPC slices they arrived in into
// the slot's pinned block (the one host copy of an input byte; a large batch's copies are split
// across a few staging threads), then enqueues upload -> kernel -> download on the slot's stream,
// bracketed by events. With three slots, batch i+1's upload runs on the copy engine while batch i's
// kernel runs on the SMs and batch i-1's download drains. While the device works, the stager sizes
// each job's response (allocating and touching its o / lse memory). A completer thread waits for
// each batch's last event in launch order and passes the batch on to one of a few finisher threads,
// which copies o / lse from pinned memory into the responses, frees the slot and hands the answers
// back, both split across a small completion pool, so that neither a large output nor a batch of
// many answers is copied and serialized by one thread, and one batch's answers do not hold up the
// next. gRPC and batcher threads never wait for the GPU. A small batch submitted to an idle
// executor (every slot free, nothing waiting) is staged and launched by Submit itself: that saves a
// thread wake-up between a lone request's arrival and its kernel launch. Under load Submit only
// queues, so that the batcher thread (or the gRPC thread of the batcher's fast path) never stages a
// batch while others are in flight.
//
// The lone-request fast path (ATTN_LONE_FAST_PATH, on unless "0"): such an inline launch of a
// batch with small outputs is a lone one. It records two events instead of four (the kernel's: its
// copies are not timed), wakes the completer as soon as its kernels are launched, so that the
// wake-up (~5-20 us on a GPU host) overlaps the rest of its staging and its kernel instead of
// following them, and the completer, awake, waits for the slot and then for its stream. The
// gRPC thread never waits for the device itself: a reaction that blocked would hold back the
// next message of its stream (gRPC runs the next read's reaction on the same thread, after the
// current one returns), and with it every step behind a lone one. A lone session step that the
// decode kernel runs also writes o and lse straight into the slot's pinned block (host memory the
// device reaches through unified addressing): no download follows it (ATTN_LONE_ZERO_COPY=0 turns
// that off).
//
// Row appends: a session Attend's k_new / v_new come as the job's pending rows (PendingRows,
// server/executor.h; the service only reserved their slots). Launch stages them, with their int32
// slots, in a row-append block right after the batch's inputs block in the slot's pinned memory,
// so that the batch's one upload carries them with q, and launches the append kernel
// (kernels/cuda/paged_append.h) for all of them on the slot's stream right before the attention:
// a step is one upload, append + attention launches, one download, with no other stream or
// synchronization involved. A batch whose rows would not fit its slot beside its buffers (a
// very large prefill chunk) has them written through the pool's staging lanes instead
// (DevicePageStorage::WriteRows), ordered before the attention as every lane write is. With
// ATTN_APPEND_BY_COPY=1 (off: no gain measured) a batch whose rows lie in a few runs of one page
// each (a decode step's) writes them with the upload, in one batched copy straight from the pinned
// block into their pages, instead of the append kernel.
#ifndef ATTENTION_SERVER_CUDA_CUDA_EXECUTOR_H_
#define ATTENTION_SERVER_CUDA_CUDA_EXECUTOR_H_

#include <cuda_runtime_api.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/attention_cuda.h"
#include "server/executor.h"
#include "server/packing.h"

namespace attention::server {

class DevicePageStorage;
class WorkerPool;

// What main() reports in build info and metrics before it starts executors.
struct CudaDeviceInfo {
  int count = 0;             // visible devices (0 when the driver or a device is missing)
  std::string name;          // device 0's name
  std::string cuda_version;  // runtime version, e.g. "13.0"
};
CudaDeviceInfo QueryCudaDevices();

// Called once, from an executor thread, when a device hits a sticky error (the CUDA context is
// unusable until the process restarts, e.g. an illegal address). The server sets health to
// NOT_SERVING and exits non-zero so that the orchestrator restarts it. Set before executors start.
void SetCudaFatalErrorHandler(std::function<void(const absl::Status&)> handler);

class CudaExecutor final : public Executor {
 public:
  // Allocates the pools on `device` and starts the executor's threads.
  static absl::StatusOr<std::unique_ptr<CudaExecutor>> Create(int device,
                                                              const ExecutorOptions& options,
                                                              Metrics* metrics);
  ~CudaExecutor() override;

  const std::string& device() const override { return name_; }
  int device_index() const { return device_index_; }

  // The session page pool in this device's memory, if sessions are served: its row writes are
  // ordered before every paged batch this executor launches (DevicePageStorage::OrderReads).
  // Set once, before the first batch is submitted.
  void set_page_storage(DevicePageStorage* storage) { page_storage_ = storage; }
  // Session Attends' pending K/V rows (PendingRows) go with the batch: see "Row appends" above.
  bool writes_pending_rows() const override { return true; }
  int pipeline_depth() const override { return static_cast<int>(slots_.size()); }
  int64_t max_batch_bytes() const override { return max_batch_bytes_; }
  absl::Status Admit(const Job& job) const override;
  bool serving() const override { return !broken_.load(std::memory_order_relaxed); }
  void Submit(std::unique_ptr<Batch> batch) override;
  void Shutdown() override;

 private:
  // Decode ticket counters per slot: one per (sequence, KV head, query tile) of a split launch,
  // enough for 256 sequences of 64 KV heads; a larger launch zeroes counters in its workspace.
  static constexpr int64_t kSlotCounters = 16384;
  // One pipeline stage's worth of memory and ordering.
  struct Slot {
    char* pinned = nullptr;  // host staging: inputs block, then outputs block
    char* device = nullptr;  // device block: inputs, outputs, kernel workspace
    // `pinned` as the device addresses it (cudaHostGetDevicePointer; the same address under
    // unified addressing), or null when it cannot: then no batch of the slot writes its outputs
    // there (ATTN_LONE_ZERO_COPY) or pulls its inputs from there (ATTN_LONE_PULL).
    char* pinned_mapped = nullptr;
    // What the slot's launches keep across launches, in its stream's order: kSlotCounters zeroed
    // ticket counters of the split decode kernel, behind the slots' device blocks.
    cuda::StreamScratch scratch;
    cudaStream_t stream = nullptr;
    cudaEvent_t start = nullptr, uploaded = nullptr, computed = nullptr, downloaded = nullptr;
    std::unique_ptr<Batch> batch;
    // A lone batch (the fast path): only `uploaded` and `computed` are recorded, and the completer
    // waits for the stream. Set by Submit before Launch, cleared by the completer.
    bool lone = false;
    // A lone batch that the thread launching it waits for and finishes (ATTN_LONE_WAIT_INLINE):
    // it never reaches in_flight_ and the completer is not woken for it. Set by Submit.
    bool wait_inline = false;
    // Whether its `uploaded` and `computed` events are recorded (all but a lone batch under
    // ATTN_LONE_EVENTS=0). Set by Launch.
    bool events = true;
    // Where the batch's outputs block starts in `pinned` and `device`: after its inputs block and
    // its row-append block (Row appends).
    int64_t outputs_offset = 0;
    int64_t device_bytes_used = 0;
    std::vector<HostCopy> copies;  // the batch's input copies bound to `pinned` (reused)
    // ATTN_APPEND_BY_COPY's batched upload (cuda_executor.cc), reused.
    std::vector<void*> copy_dsts;
    std::vector<const void*> copy_srcs;
    std::vector<size_t> copy_sizes;
  };

  CudaExecutor(int device, Metrics* metrics);
  absl::Status Init(const ExecutorOptions& options);
  void StageLoop();
  // Launch(slot); then the slot is in flight, or its batch failed and the slot is free again.
  void LaunchSlot(Slot* slot);
  // The completer: waits for each launched batch's last event, in launch order, and passes it on.
  void CompleteLoop();
  // Waits for `slot`'s batch on the device and fills its device timings: OK, or why it failed.
  absl::Status WaitForSlot(Slot* slot);
  // A launched wait_inline batch: waits for it on this thread and finishes it (FinishSlot).
  void FinishInline(Slot* slot);
  // A finisher: finishes each done batch (FinishSlot).
  void FinishLoop();
  struct DoneSlot;
  // Runs a done batch's output copies into its jobs' outputs, frees its slot, and finishes the
  // batch. `output_copies` is scratch, reused from batch to batch.
  void FinishSlot(DoneSlot done, std::vector<HostCopy>& output_copies);
  // Frees `slot` and wakes who waits for one (under mu_).
  void FreeSlotLocked(Slot* slot);
  // Stopping, and no batch is left anywhere in the pipeline (under mu_).
  bool Drained() const;
  // Stages `slot.batch` and enqueues its copies and kernel; an error fails only that batch.
  absl::Status Launch(Slot& slot);
  // Records a CUDA error: a sticky one stops the executor (and calls the fatal handler).
  absl::Status CheckCuda(cudaError_t error, const char* what);
  void ReportMemory(int64_t delta_used);

  const int device_index_;
  DevicePageStorage* page_storage_ = nullptr;
  const std::string name_;
  Metrics* const metrics_;

  char* device_pool_ = nullptr;
  char* pinned_pool_ = nullptr;
  int64_t device_pool_bytes_ = 0, pinned_pool_bytes_ = 0;
  int64_t device_slot_bytes_ = 0, pinned_slot_bytes_ = 0;
  int64_t max_batch_bytes_ = 0;
  std::vector<Slot> slots_;

  std::mutex mu_;
  // One condition per waiting role, so that a notification wakes only threads that can act on it
  // (a lone request's path crosses three of them; waking every thread at each step costs latency):
  // stagers wait for a submitted batch and a free slot, the completer for an in-flight batch,
  // finishers for a done one. Stopping and freed slots (Drained) concern all of them.
  std::condition_variable stage_cv_, complete_cv_, finish_cv_;
  std::deque<std::unique_ptr<Batch>> submitted_;  // waiting for a slot
  std::deque<Slot*> free_slots_;
  std::deque<Slot*> in_flight_;  // launched, in submission order
  struct DoneSlot {
    Slot* slot = nullptr;
    absl::Status status;  // the batch's device work: OK, or why it failed
  };
  std::deque<DoneSlot> done_;  // seen done by the completer, waiting for a finisher
  // Lone batches being launched (Submit took the slot, LaunchSlot has not handed it on), and
  // whether the completer was woken for one before its slot reached in_flight_ (Launch).
  int lone_launching_ = 0;
  bool lone_wake_ = false;
  // Moves (under mu_) whenever the completer has something new to look at (in_flight_, lone_wake_,
  // Drained): a spinning completer (ATTN_COMPLETER_SPIN_US) watches it without the lock.
  std::atomic<uint64_t> completer_work_{0};
  bool stopping_ = false;
  // A sticky CUDA error: every later batch fails fast. Set under mu_, read without it by serving().
  std::atomic<bool> broken_{false};
  int64_t memory_used_ = 0, memory_high_water_ = 0;

  std::unique_ptr<WorkerPool> staging_pool_;     // splits large batches' input copies
  std::unique_ptr<WorkerPool> completion_pool_;  // output scatter and answers of a batch

  std::vector<std::thread> stagers_;
  std::thread completer_;
  std::vector<std::thread> finishers_;
};

// One executor per visible device; a device whose pools cannot be allocated is logged and left
// out (an empty result means no GPU can serve).
std::vector<std::unique_ptr<Executor>> MakeCudaExecutors(const ExecutorOptions& options,
                                                         Metrics* metrics);

}  // namespace attention::server

#endif  // ATTENTION_SERVER_CUDA_CUDA_EXECUTOR_H_
