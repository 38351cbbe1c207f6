#include "server/cuda/cuda_executor.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/flash_decode.h"
#include "kernels/cuda/paged_append.h"
#include "server/cuda/device_page_storage.h"
#include "server/log.h"
#include "server/metrics/metrics.h"
#include "server/packing.h"
#include "server/plan.h"
#include "server/step_trace.h"
#include "server/thread_name.h"
#include "server/worker_pool.h"

namespace attention::server {
namespace {

constexpr int64_t kAlignment = BatchLayout::kAlignment;

int64_t AlignDown(int64_t bytes) { return bytes / kAlignment * kAlignment; }
int64_t AlignUp(int64_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

// The backward kernels' workspace for one request of `spec` (its rows packed as one batch's).
int64_t BackwardWorkspaceBound(const RequestSpec& spec) {
  AttentionParams p;
  static_cast<KernelConfig&>(p) = spec;
  p.head_dim = PlanHeadDim(spec);
  p.batch = 1;
  p.seqlen_q = static_cast<int>(std::min<int64_t>(spec.total_q, INT32_MAX));
  return static_cast<int64_t>(cuda::BackwardWorkspaceBytes(p));
}

// Errors after which the device's context is unusable: every later call fails the same way.
bool IsSticky(cudaError_t error) {
  switch (error) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorAssert:
    case cudaErrorECCUncorrectable:
    case cudaErrorDevicesUnavailable:
      return true;
    default:
      return false;
  }
}

std::mutex& FatalMutex() {
  static std::mutex mu;
  return mu;
}

std::function<void(const absl::Status&)>& FatalHandler() {
  static auto* handler = new std::function<void(const absl::Status&)>();
  return *handler;
}

// Fault injection for the reliability tests (tests/reliability/fault_test.cc,
// FatalDeviceErrorOnGpu): with ATTN_FAULT_INJECTION=sticky_cuda_error in the environment at
// start-up, the first batch to complete on any device reports cudaErrorIllegalAddress through
// CheckCuda, as a kernel that faulted would, so the sticky-error path runs for real: that
// batch fails, the device is marked broken, the fatal handler drains the server and it exits 1.
// Read once; nothing else reads the variable.
std::atomic<bool>& PendingInjectedStickyError() {
  static std::atomic<bool> pending = [] {
    const char* fault = std::getenv("ATTN_FAULT_INJECTION");
    return fault != nullptr && std::string(fault) == "sticky_cuda_error";
  }();
  return pending;
}

// The environment switches below, each read once by its caller: EnvUnlessZero is on when the
// variable is unset or anything but "0", EnvIsOne only when it is "1".
bool EnvUnlessZero(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr || std::string(value) != "0";
}
bool EnvIsOne(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && std::string(value) == "1";
}

// ATTN_LONE_FAST_PATH (cuda_executor.h, docs/operations.md): unset or anything but "0" is on.
// ATTN_LONE_ZERO_COPY (on unless "0"): a lone session step the decode kernel runs writes o and lse
// into the slot's pinned block. On since device call 3 of 2026-12-06 (H100, GQA 32/8, d 128, bf16,
// 8k context): lone-step p50 0.227 / 0.232 ms against 0.268-0.276 ms with the download, the GPU
// session suite passing with it (and in call A1 of 2026-12-06e). Each read once.
bool LoneFastPath() {
  static const bool on = EnvUnlessZero("ATTN_LONE_FAST_PATH");
  return on;
}
bool LoneZeroCopy() {
  static const bool on = EnvUnlessZero("ATTN_LONE_ZERO_COPY");
  return on;
}

// Set while a thread finishes a batch it waited for (FinishInline): the answers it hands back may
// start the session's next call on that thread, whose batch is then left to the completer instead
// of being waited for inside the first one's finish (no recursion through a stream's queued calls).
thread_local bool finishing_inline = false;

// ATTN_LONE_WAIT_INLINE=1 (off: a candidate until measured): the thread that launches a lone
// batch (Submit's inline launch: the gRPC thread of its request, on the batcher's fast path) waits
// for its stream itself and finishes it (outputs, answer, the gRPC write): no completer wake-up
// and no hand-off between the device's end and the answer. That thread reads nothing else of its
// stream meanwhile (a few tens of us, the decode kernel's time); other streams and batches go on.
// Not for production: in device call 2 of session 7 (H100) steps of many sessions on one stream
// stopped sharing launches with it (ManySessionsSteppingTogetherShareLaunches failed: each ran
// alone); ATTN_COMPLETER_SPIN_US closes the same gap without holding the stream's reads.
bool LoneWaitInline() {
  static const bool on = EnvIsOne("ATTN_LONE_WAIT_INLINE");
  return on;
}
// ATTN_COMPLETER_SPIN_US=N (0, off: a candidate until measured): the completer, out of work, stays
// awake for up to N us (yielding its core) before it sleeps on its condition, so that the next
// lone step's launch finds it awake: no futex wake on the launching thread and no wake-up latency
// between the device's end and the answer (device call 2 of session 7, 2026-12-06, H100: the
// completer began waiting for a lone step 21 us after its kernels were launched, 8 us before the
// device was done; waiting on the launching thread instead, the device was seen done 20 us
// earlier). Read once.
std::chrono::microseconds CompleterSpin() {
  static const std::chrono::microseconds spin = [] {
    const char* value = std::getenv("ATTN_COMPLETER_SPIN_US");
    const long us = value == nullptr ? 0 : std::strtol(value, nullptr, 10);
    return std::chrono::microseconds(std::clamp<long>(us, 0, 1'000'000));
  }();
  return spin;
}

// ATTN_SLOT_WAKE_IF_WAITING=1 (off: a candidate until measured): a freed slot wakes a stager only
// when a submitted batch waits for one (FreeSlotLocked).
bool SlotWakeIfWaiting() {
  static const bool on = EnvIsOne("ATTN_SLOT_WAKE_IF_WAITING");
  return on;
}

// ATTN_LONE_EVENTS=0 (on unless "0"; a candidate until measured): a lone batch records no events
// at all, two API calls fewer between its upload and its kernels; its kernel time is then not
// measured (no kernel stage observed, kernel_ns 0 in the answer's timings).
bool LoneEvents() {
  static const bool on = EnvUnlessZero("ATTN_LONE_EVENTS");
  return on;
}

// ATTN_APPEND_BY_COPY=1: a batch whose pending K/V rows lie in at most kMaxAppendCopies / 2 runs
// of consecutive rows of one page (a decode step's row: one run) writes them with its upload, in
// one cudaMemcpyBatchAsync (the inputs block, and each run's K rows and V rows straight from the
// pinned staging into their page), instead of uploading them and launching the append kernel:
// one API call and no kernel launch between the upload and the attention. Off: device call 3 of
// 2026-12-06 (H100) measured no gain for the lone step (p50 0.268 / 0.276 ms against 0.276 ms
// with the kernel). Read once. A driver that refuses the batched copy turns it off for the process.
bool AppendByCopy() {
  static const bool on = EnvIsOne("ATTN_APPEND_BY_COPY");
  return on;
}
// ATTN_LONE_PULL=1: a lone session step with new K/V rows and at most kPullMaxBytes of inputs
// has the append kernel read its rows from the pinned staging (mapped) and copy the inputs block
// into the device slot in the same launch, instead of a cudaMemcpyAsync before it: one host API
// call less on the step's path (13.7 us of host time on the H200 host of 2026-12-06's call B,
// step trace). A candidate until measured; read once.
bool LonePull() {
  static const bool on = EnvIsOne("ATTN_LONE_PULL");
  return on;
}
constexpr int64_t kPullMaxBytes = 64 << 10;
std::atomic<bool>& AppendByCopyRefused() {
  static std::atomic<bool> refused{false};
  return refused;
}
// Copies one batched upload may carry beside the inputs block (two per run of rows).
constexpr size_t kMaxAppendCopies = 16;

// How long the completer, woken by a lone launch as soon as its kernels were launched, waits awake
// for the slot (the launch's last steps: an event, the download, the outputs' allocation, a few
// microseconds) before it sleeps on its condition again.
constexpr auto kLoneWakeSpin = std::chrono::microseconds(500);

int64_t ElapsedNanos(cudaEvent_t from, cudaEvent_t to) {
  float ms = 0.f;
  if (cudaEventElapsedTime(&ms, from, to) != cudaSuccess) return 0;
  return static_cast<int64_t>(static_cast<double>(ms) * 1e6);
}

// Batches with at most this many input bytes are staged by one thread, and may be launched
// inline by Submit: a copy of a few MiB takes well under a millisecond.
constexpr int64_t kSmallBatchBytes = int64_t{4} << 20;
// Stager threads: each takes the next submitted batch and a free slot, and stages and launches it
// on the slot's own stream, so that small batches (staged by one thread each) are staged side by
// side instead of one after the other.
constexpr int kStagerThreads = 2;
// Larger batches are copied in pieces by the staging pool and the stager together: one thread's
// memcpy into pinned memory runs at a few GB/s, well below what the upload can take. Outputs are
// scattered, and answers serialized, the same way by the completion pool and the completer.
constexpr int kStagingThreads = 4;
constexpr int kCompletionThreads = 4;
// Finisher threads: each takes the next batch the completer saw done, copies its outputs into the
// answers and hands the answers to gRPC, so that one batch's answers (tens to hundreds of us each:
// serialization and gRPC's send) do not hold up the batches done after it. One completer waits
// on the device (a CUDA wait spins on its thread's core); the finishers only ever wait on a lock.
constexpr int kFinisherThreads = 3;
// Below this many output bytes the completer scatters alone (waking the pool costs more).
constexpr int64_t kParallelScatterBytes = int64_t{1} << 20;

}  // namespace

CudaDeviceInfo QueryCudaDevices() {
  CudaDeviceInfo info;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count <= 0) {
    cudaGetLastError();  // clear the "no device" error so later calls start clean
    return info;
  }
  info.count = count;
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) info.name = prop.name;
  int runtime = 0;
  if (cudaRuntimeGetVersion(&runtime) == cudaSuccess) {
    info.cuda_version = absl::StrCat(runtime / 1000, ".", (runtime % 1000) / 10);
  }
  return info;
}

void SetCudaFatalErrorHandler(std::function<void(const absl::Status&)> handler) {
  std::lock_guard<std::mutex> lock(FatalMutex());
  FatalHandler() = std::move(handler);
}

CudaExecutor::CudaExecutor(int device, Metrics* metrics)
    : device_index_(device), name_(absl::StrCat("cuda:", device)), metrics_(metrics) {}

absl::StatusOr<std::unique_ptr<CudaExecutor>> CudaExecutor::Create(int device,
                                                                   const ExecutorOptions& options,
                                                                   Metrics* metrics) {
  std::unique_ptr<CudaExecutor> executor(new CudaExecutor(device, metrics));
  if (absl::Status s = executor->Init(options); !s.ok()) return s;
  executor->staging_pool_ = std::make_unique<WorkerPool>(kStagingThreads, "attn-stage-pool");
  executor->completion_pool_ = std::make_unique<WorkerPool>(kCompletionThreads, "attn-done-pool");
  for (int i = 0; i < kStagerThreads; ++i) {
    executor->stagers_.emplace_back([e = executor.get()] {
      NameThisThread("attn-stager");
      e->StageLoop();
    });
  }
  executor->completer_ = std::thread([e = executor.get()] {
    NameThisThread("attn-completer");
    e->CompleteLoop();
  });
  for (int i = 0; i < kFinisherThreads; ++i) {
    executor->finishers_.emplace_back([e = executor.get()] {
      NameThisThread("attn-finisher");
      e->FinishLoop();
    });
  }
  return executor;
}

absl::Status CudaExecutor::Init(const ExecutorOptions& options) {
  if (absl::Status s = CheckCuda(cudaSetDevice(device_index_), "cudaSetDevice"); !s.ok()) return s;
  size_t free_bytes = 0, total_bytes = 0;
  if (absl::Status s = CheckCuda(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
      !s.ok()) {
    return s;
  }
  const int depth = std::max(1, options.pipeline_depth);
  // Auto: 85% of what is free once the session pool is set aside, leaving room for the CUDA
  // context, the kernels' modules and other processes' small allocations.
  const double available = std::max(
      0.0, static_cast<double>(free_bytes) - static_cast<double>(options.reserved_device_bytes));
  device_pool_bytes_ = options.device_memory_bytes > 0 ? options.device_memory_bytes
                                                       : static_cast<int64_t>(available * 0.85);
  device_slot_bytes_ = AlignDown(device_pool_bytes_ / depth);
  pinned_slot_bytes_ = AlignDown(options.pinned_host_bytes / depth);
  if (device_slot_bytes_ <= 0 || pinned_slot_bytes_ <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("device_memory_bytes (", device_pool_bytes_, ") and pinned_host_bytes (",
                     options.pinned_host_bytes,
                     ") must leave at least 256 bytes per pipeline slot (depth ", depth, ")"));
  }
  device_pool_bytes_ = device_slot_bytes_ * depth;
  pinned_pool_bytes_ = pinned_slot_bytes_ * depth;
  // A float32 batch also needs a 16-bit copy of q, k, v and o: at most half its own bytes, so a
  // batch of up to two thirds of a device slot always fits with its workspace.
  max_batch_bytes_ = std::min(pinned_slot_bytes_, device_slot_bytes_ / 3 * 2);

  // Behind the slots: each slot's block of ticket counters for the split decode kernel, zeroed
  // here once; every launch leaves them zero (cuda::StreamScratch), so no launch needs a zeroing
  // kernel of its own.
  const int64_t counter_bytes = int64_t{depth} * kSlotCounters * 4;
  void* device_pool = nullptr;
  if (absl::Status s = CheckCuda(
          cudaMalloc(&device_pool, static_cast<size_t>(device_pool_bytes_ + counter_bytes)),
          "cudaMalloc(device pool)");
      !s.ok()) {
    return s;
  }
  device_pool_ = static_cast<char*>(device_pool);
  if (absl::Status s = CheckCuda(
          cudaMemset(device_pool_ + device_pool_bytes_, 0, static_cast<size_t>(counter_bytes)),
          "cudaMemset(decode counters)");
      !s.ok()) {
    return s;
  }
  void* pinned_pool = nullptr;
  if (absl::Status s =
          CheckCuda(cudaHostAlloc(&pinned_pool, static_cast<size_t>(pinned_pool_bytes_),
                                  cudaHostAllocDefault),
                    "cudaHostAlloc(pinned staging pool)");
      !s.ok()) {
    return s;
  }
  pinned_pool_ = static_cast<char*>(pinned_pool);
  void* pinned_on_device = nullptr;
  if (cudaHostGetDevicePointer(&pinned_on_device, pinned_pool, 0) != cudaSuccess) {
    pinned_on_device = nullptr;
    cudaGetLastError();  // not mapped: outputs are downloaded, as for every other batch
  }

  slots_.resize(static_cast<size_t>(depth));
  for (int i = 0; i < depth; ++i) {
    Slot& slot = slots_[static_cast<size_t>(i)];
    slot.device = device_pool_ + int64_t{i} * device_slot_bytes_;
    slot.scratch.zeroed_counters =
        reinterpret_cast<unsigned int*>(device_pool_ + device_pool_bytes_) + i * kSlotCounters;
    slot.scratch.zeroed_counter_count = kSlotCounters;
    slot.pinned = pinned_pool_ + int64_t{i} * pinned_slot_bytes_;
    if (pinned_on_device != nullptr) {
      slot.pinned_mapped = static_cast<char*>(pinned_on_device) + int64_t{i} * pinned_slot_bytes_;
    }
    for (absl::Status s : {
             CheckCuda(cudaStreamCreateWithFlags(&slot.stream, cudaStreamNonBlocking),
                       "cudaStreamCreate"),
             CheckCuda(cudaEventCreate(&slot.start), "cudaEventCreate"),
             CheckCuda(cudaEventCreate(&slot.uploaded), "cudaEventCreate"),
             CheckCuda(cudaEventCreate(&slot.computed), "cudaEventCreate"),
             CheckCuda(cudaEventCreate(&slot.downloaded), "cudaEventCreate"),
         }) {
      if (!s.ok()) return s;
    }
    free_slots_.push_back(&slot);
  }
  if (metrics_ != nullptr) {
    metrics_->SetDeviceMemory(device_index_, 0, device_pool_bytes_, 0,
                              static_cast<int64_t>(total_bytes), static_cast<int64_t>(free_bytes));
    metrics_->SetPinnedHostMemory(pinned_pool_bytes_, 0);
  }
  LogLine(LogLevel::kInfo, "cuda_executor_ready")
      .Kv("device", name_)
      .Kv("device_pool_bytes", device_pool_bytes_)
      .Kv("pinned_pool_bytes", pinned_pool_bytes_)
      .Kv("pipeline_depth", depth)
      .Kv("max_batch_bytes", max_batch_bytes_);
  return absl::OkStatus();
}

CudaExecutor::~CudaExecutor() {
  Shutdown();
  cudaSetDevice(device_index_);
  for (Slot& slot : slots_) {
    if (slot.stream != nullptr) cudaStreamDestroy(slot.stream);
    for (cudaEvent_t e : {slot.start, slot.uploaded, slot.computed, slot.downloaded}) {
      if (e != nullptr) cudaEventDestroy(e);
    }
  }
  if (device_pool_ != nullptr) cudaFree(device_pool_);
  if (pinned_pool_ != nullptr) cudaFreeHost(pinned_pool_);
}

absl::Status CudaExecutor::CheckCuda(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();  // clear a non-sticky error so the next batch starts clean
  const std::string message = absl::StrCat(name_, ": ", what, ": ", cudaGetErrorName(error), " (",
                                           cudaGetErrorString(error), ")");
  if (error == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(message);
  if (!IsSticky(error)) return absl::InternalError(message);

  const absl::Status status = absl::UnavailableError(
      absl::StrCat(message, "; the device is unusable until the server restarts"));
  bool first = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    first = !broken_.exchange(true);
  }
  if (first) {
    LogLine(LogLevel::kError, "cuda_sticky_error").Kv("device", name_).Kv("error", message);
    std::function<void(const absl::Status&)> handler;
    {
      std::lock_guard<std::mutex> lock(FatalMutex());
      handler = FatalHandler();
    }
    if (handler) handler(status);
  }
  return status;
}

absl::Status CudaExecutor::Admit(const Job& job) const {
  // A backward job (AttentionBackward) runs the backward kernels (cuda::RunAttentionBackward):
  // CheckSupported refuses what they do not serve, naming the rule. The kernels see the plan's
  // head_dim (PlanHeadDim: rows padded to a multiple of 8 for the stateless kinds).
  KernelConfig kernel_config = job.spec;
  kernel_config.head_dim = PlanHeadDim(job.spec);
  if (absl::Status s = cuda::CheckSupported(kernel_config); !s.ok()) return s;
  if (job.spec.kind == WorkKind::kPagedDecode) {
    if (absl::Status s = cuda::CheckPagedRows(job.spec, job.spec.seqlen_q, job.spec.page_size);
        !s.ok()) {
      return s;
    }
  }
  const int64_t bytes = BatchBytesWith(job.spec, 0, 0, 0, false, job.spec);
  if (job.spec.kind == WorkKind::kBackward &&
      AlignUp(bytes) + BackwardWorkspaceBound(job.spec) > device_slot_bytes_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("backward request needs ", bytes, " bytes of device and staging memory plus ",
                     BackwardWorkspaceBound(job.spec), " bytes of float32 workspace; ", name_,
                     " has device slots of ", device_slot_bytes_,
                     " bytes (raise --device_memory_bytes, or split the request)"));
  }
  if (bytes > max_batch_bytes_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "request needs ", bytes, " bytes of device and staging memory; ", name_,
        " runs batches of at most ", max_batch_bytes_,
        " bytes (raise --device_memory_bytes / --pinned_host_bytes, or split the request)"));
  }
  return absl::OkStatus();
}

void CudaExecutor::Submit(std::unique_ptr<Batch> batch) {
  step_trace::Stamp(step_trace::kSubmit);
  Slot* inline_slot = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!broken_ && !stopping_) {
      // Inline only on an idle device: under load the batcher thread must go back to forming
      // batches, and the stagers stage this one beside the others.
      if (submitted_.empty() && free_slots_.size() == slots_.size() &&
          batch->plan.layout.input_bytes <= kSmallBatchBytes) {
        inline_slot = free_slots_.front();
        free_slots_.pop_front();
        // A large output is scattered by the completion pool, from a finisher: not lone.
        inline_slot->lone =
            LoneFastPath() && batch->plan.layout.output_bytes < kParallelScatterBytes;
        if (inline_slot->lone) ++lone_launching_;
        // Only a decode-kernel step (a short kernel) holds its thread.
        inline_slot->wait_inline =
            inline_slot->lone && LoneWaitInline() && !finishing_inline &&
            batch->config.kind == WorkKind::kPagedDecode &&
            cuda::DecodeTakesPagedRows(batch->config.dtype, batch->max_seqlen_q);
        inline_slot->batch = std::move(batch);
      } else {
        submitted_.push_back(std::move(batch));
        stage_cv_.notify_one();
        return;
      }
    }
  }
  if (inline_slot != nullptr) {
    cudaSetDevice(device_index_);  // the calling thread may have served another device before
    LaunchSlot(inline_slot);
    return;
  }
  batch->device = name_;
  FinishBatch(std::move(batch),
              absl::UnavailableError(absl::StrCat(name_, " is not serving (stopped or failed)")));
}

void CudaExecutor::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    completer_work_.fetch_add(1, std::memory_order_relaxed);
    stage_cv_.notify_all();
    complete_cv_.notify_all();
    finish_cv_.notify_all();
  }
  for (std::thread& stager : stagers_) {
    if (stager.joinable()) stager.join();
  }
  if (completer_.joinable()) completer_.join();
  for (std::thread& finisher : finishers_) {
    if (finisher.joinable()) finisher.join();
  }
}

void CudaExecutor::StageLoop() {
  cudaSetDevice(device_index_);
  while (true) {
    Slot* slot = nullptr;
    {
      std::unique_lock<std::mutex> lock(mu_);
      stage_cv_.wait(lock, [this] {
        return (!submitted_.empty() && !free_slots_.empty()) || (stopping_ && submitted_.empty());
      });
      if (submitted_.empty()) return;  // stopping, and every submitted batch was launched
      slot = free_slots_.front();
      free_slots_.pop_front();
      slot->batch = std::move(submitted_.front());
      submitted_.pop_front();
    }
    LaunchSlot(slot);
  }
}

void CudaExecutor::LaunchSlot(Slot* slot) {
  const absl::Status status = Launch(*slot);
  if (!status.ok()) {
    // Nothing of this batch may still be running when its slot is reused.
    cudaStreamSynchronize(slot->stream);
    cudaGetLastError();
    std::unique_ptr<Batch> batch = std::move(slot->batch);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (slot->lone) --lone_launching_;
      slot->lone = false;
      slot->wait_inline = false;
      FreeSlotLocked(slot);
    }
    batch->device = name_;
    FinishBatch(std::move(batch), status);
    return;
  }
  if (slot->wait_inline) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      --lone_launching_;
    }
    FinishInline(slot);
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (slot->lone) --lone_launching_;
  in_flight_.push_back(slot);
  completer_work_.fetch_add(1, std::memory_order_relaxed);
  complete_cv_.notify_one();
}

void CudaExecutor::FinishInline(Slot* slot) {
  slot->wait_inline = false;
  absl::Status status = WaitForSlot(slot);
  // Scratch of this thread (a gRPC or batcher thread), reused from batch to batch.
  static thread_local std::vector<HostCopy> output_copies;
  finishing_inline = true;
  FinishSlot(DoneSlot{slot, std::move(status)}, output_copies);
  finishing_inline = false;
}

absl::Status CudaExecutor::WaitForSlot(Slot* slot) {
  // A lone batch recorded no `downloaded` event; its stream holds nothing else.
  const bool lone = slot->lone;
  const bool events = slot->events;
  slot->lone = false;
  step_trace::Stamp(step_trace::kWaitBegins);
  cudaError_t completion =
      lone ? cudaStreamSynchronize(slot->stream) : cudaEventSynchronize(slot->downloaded);
  step_trace::Stamp(step_trace::kDeviceDone);
  if (PendingInjectedStickyError().exchange(false)) completion = cudaErrorIllegalAddress;
  absl::Status status = CheckCuda(completion, "batch completion");
  slot->batch->timings.device_done = Clock::now();
  if (status.ok()) {
    BatchTimings& t = slot->batch->timings;
    // A batch without events (ATTN_LONE_EVENTS=0) has no kernel time: kernel_ns stays 0.
    if (events) t.kernel_ns = ElapsedNanos(slot->uploaded, slot->computed);
    // A lone batch's copies were not timed: host_to_device_ns and device_to_host_ns stay 0,
    // which FinishBatch reports as no such stage.
    if (!lone) {
      t.host_to_device_ns = ElapsedNanos(slot->start, slot->uploaded);
      t.device_to_host_ns = ElapsedNanos(slot->computed, slot->downloaded);
    }
  } else {
    cudaStreamSynchronize(slot->stream);
  }
  return status;
}

void CudaExecutor::FreeSlotLocked(Slot* slot) {
  free_slots_.push_back(slot);
  // A stager waits for a submitted batch and a free slot; with none submitted, waking one only
  // costs a futex wake on the path of a lone step's answer (and a stager that sleeps again).
  // ATTN_SLOT_WAKE_IF_WAITING=1 skips that wake; by default a freed slot still wakes one.
  if (!SlotWakeIfWaiting() || !submitted_.empty() || stopping_) stage_cv_.notify_one();
  if (Drained()) {
    completer_work_.fetch_add(1, std::memory_order_relaxed);
    complete_cv_.notify_all();
    finish_cv_.notify_all();
  }
}

namespace {

// The batch's pending K/V rows (PendingRows) as the slot's row-append block holds them: k rows |
// v rows | int32 slots, each part 256-byte aligned, row i of the batch's pending rows at index i
// of each part (jobs in batch order).
struct RowAppend {
  int64_t rows = 0;
  int64_t k = 0, v = 0, slots = 0;  // offsets of the parts from the block's start
  int64_t bytes = 0;                // the block
  // The pool the rows go to, as the first pending job's view has it (the paged jobs of a batch
  // have one shape and one device, so one pool and layout).
  session::PageLayout layout;
  void* pool_base = nullptr;
  // false for a batch whose pending jobs' views disagree on the pool or layout (never one the
  // batcher forms): it writes through the lanes instead.
  bool uniform = true;
};

RowAppend PlanRowAppend(const Batch& batch) {
  RowAppend append;
  if (batch.config.kind != WorkKind::kPagedDecode) return append;
  for (const auto& job : batch.jobs) {
    if (job->paged == nullptr || !job->paged->rows.pending()) continue;
    const session::ReadView& view = job->paged->view;
    if (append.rows == 0) {
      append.layout = view.layout();
      append.pool_base = view.base();
    } else if (!(view.layout() == append.layout) || view.base() != append.pool_base) {
      append.uniform = false;
    }
    append.rows += static_cast<int64_t>(job->paged->rows.slots.size());
  }
  if (append.rows == 0) return append;
  const int64_t part = AlignUp(append.rows * append.layout.row_bytes);
  append.k = 0;
  append.v = part;
  append.slots = 2 * part;
  append.bytes = AlignUp(2 * part + append.rows * static_cast<int64_t>(sizeof(int32_t)));
  return append;
}

// The host copies that fill the row-append block at `block` (pinned) from the jobs' requests.
void AppendRowCopies(const Batch& batch, const RowAppend& append, char* block,
                     std::vector<HostCopy>* copies) {
  const int64_t row_bytes = append.layout.row_bytes;
  int64_t row = 0;
  for (const auto& job : batch.jobs) {
    if (job->paged == nullptr || !job->paged->rows.pending()) continue;
    const PendingRows& pending = job->paged->rows;
    const int64_t n = static_cast<int64_t>(pending.slots.size());
    copies->push_back({block + append.k + row * row_bytes, pending.k, n * row_bytes});
    copies->push_back({block + append.v + row * row_bytes, pending.v, n * row_bytes});
    copies->push_back({block + append.slots + row * static_cast<int64_t>(sizeof(int32_t)),
                       reinterpret_cast<const char*>(pending.slots.data()),
                       n * static_cast<int64_t>(sizeof(int32_t))});
    row += n;
  }
}

// Enqueues the append kernel for the rows of the row-append block at `block` (device memory).
// `pull`: optional, the batch's inputs block copied from pinned (mapped) memory by the same
// launch (PagedAppendParams::pull_src; ATTN_LONE_PULL).
absl::Status RunRowAppend(const RowAppend& append, const char* block, cudaStream_t stream,
                          const void* pull_src = nullptr, void* pull_dst = nullptr,
                          int64_t pull_bytes = 0) {
  const session::PageLayout& layout = append.layout;
  cuda::PagedAppendParams p;
  p.pull_src = pull_src;
  p.pull_dst = pull_dst;
  p.pull_bytes = pull_bytes;
  p.dtype = layout.dtype;
  p.num_tokens = static_cast<int>(append.rows);
  p.kv_heads = layout.kv_heads;
  p.head_dim = layout.head_dim;
  p.k_new = block + append.k;
  p.v_new = block + append.v;
  p.new_row_stride = int64_t{layout.kv_heads} * layout.head_dim;
  p.new_head_stride = layout.head_dim;
  p.k_pool = append.pool_base;
  p.v_pool = static_cast<char*>(append.pool_base) + layout.v_offset();
  p.pool_page_stride = layout.page_bytes / DTypeSize(layout.dtype);
  p.pool_row_stride = p.new_row_stride;
  p.pool_head_stride = layout.head_dim;
  p.page_size = layout.page_size;
  p.slots = reinterpret_cast<const int32_t*>(block + append.slots);
  return cuda::RunPagedAppend(p, stream);
}

// The batched copies of ATTN_APPEND_BY_COPY: the inputs block (`input_bytes` from `pinned` to
// `device`), then, for each run of the pending rows that are consecutive in one page, its K rows
// and its V rows from the pinned row-append block at `block` into the pool. False (copies
// incomplete) when the rows make more than kMaxAppendCopies / 2 runs.
bool PlanAppendCopies(const Batch& batch, const RowAppend& append, const char* block, char* device,
                      const char* pinned, int64_t input_bytes, std::vector<void*>& dsts,
                      std::vector<const void*>& srcs, std::vector<size_t>& sizes) {
  dsts.assign(1, device);
  srcs.assign(1, pinned);
  sizes.assign(1, static_cast<size_t>(input_bytes));
  const session::PageLayout& layout = append.layout;
  char* const pool = static_cast<char*>(append.pool_base);
  int64_t staged = 0;  // index of the run's first row in the block
  const auto add_run = [&](int32_t first_slot, int64_t rows) {
    if (dsts.size() + 2 > kMaxAppendCopies + 1) return false;
    const int64_t page = first_slot / layout.page_size, row = first_slot % layout.page_size;
    const size_t bytes = static_cast<size_t>(rows * layout.row_bytes);
    dsts.push_back(pool + layout.k_row_offset(page, row));
    srcs.push_back(block + append.k + staged * layout.row_bytes);
    sizes.push_back(bytes);
    dsts.push_back(pool + layout.v_row_offset(page, row));
    srcs.push_back(block + append.v + staged * layout.row_bytes);
    sizes.push_back(bytes);
    staged += rows;
    return true;
  };
  for (const auto& job : batch.jobs) {
    if (job->paged == nullptr || !job->paged->rows.pending()) continue;
    const std::vector<int32_t>& slots = job->paged->rows.slots;
    size_t first = 0;
    for (size_t i = 1; i <= slots.size(); ++i) {
      const bool run_ends =
          i == slots.size() || slots[i] != slots[i - 1] + 1 || slots[i] % layout.page_size == 0;
      if (!run_ends) continue;
      if (!add_run(slots[first], static_cast<int64_t>(i - first))) return false;
      first = i;
    }
  }
  return true;
}

void MarkRowsWritten(Batch& batch) {
  for (const auto& job : batch.jobs) {
    if (job->paged != nullptr && job->paged->rows.pending()) job->paged->rows.written = true;
  }
}

}  // namespace

absl::Status CudaExecutor::Launch(Slot& slot) {
  Batch& batch = *slot.batch;
  batch.device = name_;
  batch.precision = cuda::ComputedPrecision(batch.config);
  batch.timings.started = Clock::now();
  step_trace::Stamp(step_trace::kLaunch);
  // Every batch times its kernel but a lone one under ATTN_LONE_EVENTS=0.
  slot.events = !slot.lone || LoneEvents();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (broken_) return absl::UnavailableError(absl::StrCat(name_, " hit a sticky CUDA error"));
  }
  const BatchLayout& layout = batch.plan.layout;
  if (layout.total_bytes() > pinned_slot_bytes_) {
    return absl::ResourceExhaustedError(absl::StrCat("batch of ", layout.total_bytes(),
                                                     " bytes exceeds the staging slot of ",
                                                     pinned_slot_bytes_, " bytes"));
  }
  // Session Attends' pending K/V rows go in the row-append block after the inputs, uploaded with
  // them (Row appends, cuda_executor.h). Without any, the outputs follow the inputs as before.
  RowAppend append = PlanRowAppend(batch);
  const int64_t append_offset = AlignUp(layout.input_bytes);
  const auto outputs_offset_for = [&](const RowAppend& a) {
    return a.rows > 0 ? AlignUp(append_offset + a.bytes) : layout.input_bytes;
  };
  // The device block also holds the kernel's workspace after the outputs: its size does not
  // depend on where the buffers are.
  const bool backward = batch.config.kind == WorkKind::kBackward;
  const int64_t workspace_bytes = [&] {
    const AttentionParams sizes =
        BindParams(batch.plan, slot.device, slot.device + layout.input_bytes);
    return static_cast<int64_t>(backward ? cuda::BackwardWorkspaceBytes(sizes)
                                         : cuda::WorkspaceBytes(sizes));
  }();
  if (append.rows > 0 &&
      (!append.uniform || outputs_offset_for(append) + layout.output_bytes > pinned_slot_bytes_ ||
       AlignUp(outputs_offset_for(append) + layout.output_bytes) + workspace_bytes >
           device_slot_bytes_)) {
    // They do not fit beside the batch's buffers: written through the pool's staging lanes,
    // which the attention orders after (OrderReads below).
    if (absl::Status written = WritePendingRows(batch); !written.ok()) return written;
    append = RowAppend{};
  }
  slot.outputs_offset = outputs_offset_for(append);
  const int64_t upload_bytes = append.rows > 0 ? append_offset + append.bytes : layout.input_bytes;

  slot.copies.clear();
  AppendInputCopies(batch, slot.pinned, &slot.copies);
  if (append.rows > 0) AppendRowCopies(batch, append, slot.pinned + append_offset, &slot.copies);
  if (upload_bytes <= kSmallBatchBytes) {
    RunCopies(slot.copies);
  } else {
    staging_pool_->Copy(slot.copies);
  }
  step_trace::Stamp(step_trace::kStaged);

  char* device_inputs = slot.device;
  // A lone session step may have its decode kernel write o and lse into the slot's pinned
  // outputs block directly (ATTN_LONE_ZERO_COPY): the host reads them there after the stream's
  // end. Only the decode kernel's rows (its plain stores); the forward kernel's paged variant,
  // which more rows take, is left to the download.
  const bool zero_copy = slot.lone && batch.config.kind == WorkKind::kPagedDecode &&
                         cuda::DecodeTakesPagedRows(batch.config.dtype, batch.max_seqlen_q) &&
                         slot.pinned_mapped != nullptr && LoneZeroCopy();
  char* device_outputs =
      zero_copy ? slot.pinned_mapped + slot.outputs_offset : slot.device + slot.outputs_offset;
  const AttentionParams p = BindParams(batch.plan, device_inputs, device_outputs);
  // A backward batch: grad_o among the inputs, dq, dk and dv as the outputs (as the CPU
  // executor binds them), and the backward's float32 workspace (dq accumulator, D, lse).
  AttentionBackwardParams backward_params;
  if (backward) {
    static_cast<AttentionParams&>(backward_params) = p;
    const BackwardBuffers buffers = BindBackward(batch.plan, device_inputs, device_outputs);
    backward_params.do_ = buffers.grad_o;
    backward_params.dq = buffers.dq;
    backward_params.dk = buffers.dk;
    backward_params.dv = buffers.dv;
  }
  const int64_t workspace_offset = AlignUp(slot.outputs_offset + layout.output_bytes);
  if (workspace_offset + workspace_bytes > device_slot_bytes_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "batch of ", layout.total_bytes(), " bytes plus ", workspace_bytes,
        " bytes of kernel workspace exceeds the device slot of ", device_slot_bytes_, " bytes"));
  }
  void* workspace = workspace_bytes > 0 ? slot.device + workspace_offset : nullptr;

  cudaStream_t stream = slot.stream;
  // A lone batch's copies are not timed: two event records fewer on its path (~1-2 us each).
  if (!slot.lone) {
    if (absl::Status s = CheckCuda(cudaEventRecord(slot.start, stream), "cudaEventRecord");
        !s.ok()) {
      return s;
    }
  }
  // Rows the pool's staging lanes still write (an Append's bulk rows, or the rows of the fallback
  // above) land before anything here reads or writes the pool: before the batched upload, which
  // writes pages, else (as before it) after the upload.
  const bool paged_reads = page_storage_ != nullptr && batch.config.kind == WorkKind::kPagedDecode;
  const bool by_copy =
      append.rows > 0 && AppendByCopy() && !AppendByCopyRefused().load() &&
      PlanAppendCopies(batch, append, slot.pinned + append_offset, device_inputs, slot.pinned,
                       layout.input_bytes, slot.copy_dsts, slot.copy_srcs, slot.copy_sizes);
  if (paged_reads && by_copy) {
    if (absl::Status s = page_storage_->OrderReads(stream); !s.ok()) return s;
  }
  // ATTN_LONE_PULL: the append kernel reads the rows from the pinned staging and pulls the inputs
  // block (padded to 16 bytes: still before append_offset) into the device slot.
  static_assert(kAlignment % 16 == 0, "the padded inputs block ends before the row-append block");
  const int64_t pull_bytes = (layout.input_bytes + 15) / 16 * 16;
  const bool pull = !by_copy && slot.lone && append.rows > 0 && slot.pinned_mapped != nullptr &&
                    pull_bytes <= kPullMaxBytes && LonePull();
  bool rows_copied = false;
  if (by_copy) {
    cudaMemcpyAttributes attributes{};
    attributes.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    size_t first_with_attributes = 0;
    const cudaError_t copied = cudaMemcpyBatchAsync(slot.copy_dsts.data(), slot.copy_srcs.data(),
                                                    slot.copy_sizes.data(), slot.copy_sizes.size(),
                                                    &attributes, &first_with_attributes, 1, stream);
    if (copied == cudaSuccess) {
      rows_copied = true;
      MarkRowsWritten(batch);
    } else if (IsSticky(copied)) {
      return CheckCuda(copied, "batched upload");
    } else {
      cudaGetLastError();
      if (!AppendByCopyRefused().exchange(true)) {
        LogLine(LogLevel::kWarning, "append_by_copy_refused")
            .Kv("device", name_)
            .Kv("error", cudaGetErrorString(copied));
      }
    }
  }
  if (!rows_copied && !pull) {
    if (absl::Status s =
            CheckCuda(cudaMemcpyAsync(device_inputs, slot.pinned, static_cast<size_t>(upload_bytes),
                                      cudaMemcpyHostToDevice, stream),
                      "upload");
        !s.ok()) {
      return s;
    }
  }
  if (slot.events) {
    if (absl::Status s = CheckCuda(cudaEventRecord(slot.uploaded, stream), "cudaEventRecord");
        !s.ok()) {
      return s;
    }
  }
  step_trace::Stamp(step_trace::kUploadIssued);
  if (paged_reads && !by_copy) {
    if (absl::Status s = page_storage_->OrderReads(stream); !s.ok()) return s;
  }
  if (append.rows > 0 && !rows_copied) {
    absl::Status s = pull ? RunRowAppend(append, slot.pinned_mapped + append_offset, stream,
                                         slot.pinned_mapped, device_inputs, pull_bytes)
                          : RunRowAppend(append, device_inputs + append_offset, stream);
    if (!s.ok()) {
      if (s.code() == absl::StatusCode::kInternal) {
        // A launch failure may be sticky: let CheckCuda classify the error the device reports.
        const cudaError_t error = cudaPeekAtLastError();
        if (error != cudaSuccess) return CheckCuda(error, "row append kernel launch");
      }
      return s;
    }
    MarkRowsWritten(batch);
    step_trace::Stamp(step_trace::kAppendIssued);
  }
  if (absl::Status s = backward ? cuda::RunAttentionBackward(backward_params, workspace, stream)
                                : cuda::RunAttention(p, workspace, stream, slot.scratch);
      !s.ok()) {
    if (s.code() == absl::StatusCode::kInternal) {
      // A launch failure may be sticky: let CheckCuda classify the error it left behind.
      const cudaError_t error = cudaPeekAtLastError();
      if (error != cudaSuccess) return CheckCuda(error, "attention kernel launch");
    }
    return s;
  }
  if (slot.events) {
    if (absl::Status s = CheckCuda(cudaEventRecord(slot.computed, stream), "cudaEventRecord");
        !s.ok()) {
      return s;
    }
  }
  step_trace::Stamp(step_trace::kKernelsIssued);
  if (slot.lone && !slot.wait_inline) {
    // The kernels run: wake the completer now, so that its wake-up overlaps them.
    {
      std::lock_guard<std::mutex> lock(mu_);
      lone_wake_ = true;
      completer_work_.fetch_add(1, std::memory_order_relaxed);
    }
    complete_cv_.notify_one();
  }
  if (!zero_copy) {
    if (absl::Status s =
            CheckCuda(cudaMemcpyAsync(slot.pinned + slot.outputs_offset, device_outputs,
                                      static_cast<size_t>(layout.output_bytes),
                                      cudaMemcpyDeviceToHost, stream),
                      "download");
        !s.ok()) {
      return s;
    }
  }
  if (!slot.lone) {
    if (absl::Status s = CheckCuda(cudaEventRecord(slot.downloaded, stream), "cudaEventRecord");
        !s.ok()) {
      return s;
    }
  }
  batch.timings.staged = Clock::now();
  slot.device_bytes_used = workspace_offset + workspace_bytes;
  ReportMemory(slot.device_bytes_used);
  // While the device works: allocate and size the jobs' outputs, so that the finisher only
  // copies into memory that is already there.
  AllocateOutputs(batch);
  step_trace::Stamp(step_trace::kLaunched);
  return absl::OkStatus();
}

// Every slot comes back to free_slots_ through FinishLoop, so "every slot free" (with nothing
// submitted) means that no batch is left anywhere in the pipeline.
bool CudaExecutor::Drained() const {
  return stopping_ && submitted_.empty() && free_slots_.size() == slots_.size();
}

void CudaExecutor::CompleteLoop() {
  cudaSetDevice(device_index_);
  std::vector<HostCopy> output_copies;  // reused from batch to batch
  const std::chrono::microseconds spin = CompleterSpin();
  while (true) {
    Slot* slot = nullptr;
    {
      std::unique_lock<std::mutex> lock(mu_);
      const auto ready = [this] { return !in_flight_.empty() || lone_wake_ || Drained(); };
      if (spin.count() > 0 && !ready()) {
        // ATTN_COMPLETER_SPIN_US: awake until work comes (completer_work_ moves) or the spin ends.
        const uint64_t seen = completer_work_.load(std::memory_order_relaxed);
        lock.unlock();
        const Clock::time_point give_up = Clock::now() + spin;
        while (completer_work_.load(std::memory_order_relaxed) == seen && Clock::now() < give_up) {
          std::this_thread::yield();
        }
        lock.lock();
      }
      complete_cv_.wait(lock, ready);
      if (in_flight_.empty() && lone_wake_) {
        // Woken by a lone launch whose kernels run (Launch): its slot follows within
        // microseconds. Wait for it awake, then take it as usual.
        lone_wake_ = false;
        lock.unlock();
        const Clock::time_point give_up = Clock::now() + kLoneWakeSpin;
        while (Clock::now() < give_up) {
          std::this_thread::yield();
          lock.lock();
          const bool ready = !in_flight_.empty() || lone_launching_ == 0;
          lock.unlock();
          if (ready) break;
        }
        continue;
      }
      if (in_flight_.empty()) return;  // stopping, and nothing left to wait for
      lone_wake_ = false;
      slot = in_flight_.front();
      in_flight_.pop_front();
    }
    absl::Status status = WaitForSlot(slot);
    // With nothing else in flight and no backlog of done batches, a small batch is finished
    // here: no batch waits for this thread meanwhile, and its answer skips a hand-off to a
    // finisher (a lone decode step's latency). Otherwise a finisher takes it, and this thread
    // goes back to waiting for the next batch in flight.
    const bool small = slot->batch->plan.layout.output_bytes < kParallelScatterBytes;
    bool inline_finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      inline_finish = small && in_flight_.empty() && done_.empty();
      if (!inline_finish) {
        done_.push_back(DoneSlot{slot, std::move(status)});
        finish_cv_.notify_one();
      }
    }
    if (inline_finish) FinishSlot(DoneSlot{slot, std::move(status)}, output_copies);
  }
}

void CudaExecutor::FinishLoop() {
  std::vector<HostCopy> output_copies;  // reused from batch to batch
  while (true) {
    DoneSlot done;
    {
      std::unique_lock<std::mutex> lock(mu_);
      finish_cv_.wait(lock, [this] { return !done_.empty() || Drained(); });
      if (done_.empty()) return;  // stopping, and nothing left to finish
      done = std::move(done_.front());
      done_.pop_front();
    }
    FinishSlot(std::move(done), output_copies);
  }
}

void CudaExecutor::FinishSlot(DoneSlot done, std::vector<HostCopy>& output_copies) {
  step_trace::Stamp(step_trace::kFinish);
  Slot* slot = done.slot;
  std::unique_ptr<Batch> batch = std::move(slot->batch);
  if (done.status.ok()) {
    const char* outputs = slot->pinned + slot->outputs_offset;
    output_copies.clear();
    AppendOutputCopies(*batch, outputs, &output_copies);
    if (batch->plan.layout.output_bytes >= kParallelScatterBytes) {
      completion_pool_->Copy(output_copies);
    } else {
      RunCopies(output_copies);
    }
    batch->timings.scattered = Clock::now();
  }
  ReportMemory(-slot->device_bytes_used);
  slot->device_bytes_used = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    FreeSlotLocked(slot);
  }
  FinishBatch(std::move(batch), done.status, completion_pool_.get());
}

void CudaExecutor::ReportMemory(int64_t delta_used) {
  int64_t used = 0, high_water = 0, pinned_used = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    memory_used_ += delta_used;
    memory_high_water_ = std::max(memory_high_water_, memory_used_);
    used = memory_used_;
    high_water = memory_high_water_;
    pinned_used = static_cast<int64_t>(slots_.size() - free_slots_.size()) * pinned_slot_bytes_;
  }
  if (metrics_ == nullptr) return;
  // The device's own total / free change only when other processes allocate: sample them at most
  // once a second (cudaMemGetInfo is a driver call, not free).
  static thread_local Clock::time_point last_sample;
  static thread_local size_t free_bytes = 0, total_bytes = 0;
  const Clock::time_point now = Clock::now();
  if (now - last_sample > std::chrono::seconds(1)) {
    if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) cudaGetLastError();
    last_sample = now;
  }
  metrics_->SetDeviceMemory(device_index_, used, device_pool_bytes_, high_water,
                            static_cast<int64_t>(total_bytes), static_cast<int64_t>(free_bytes));
  metrics_->SetPinnedHostMemory(pinned_pool_bytes_, pinned_used);
}

std::vector<std::unique_ptr<Executor>> MakeCudaExecutors(const ExecutorOptions& options,
                                                         Metrics* metrics) {
  if (PendingInjectedStickyError().load()) {
    LogLine(LogLevel::kWarning, "fault_injection")
        .Kv("fault", "sticky_cuda_error")
        .Kv("effect", "the first batch to complete reports cudaErrorIllegalAddress");
  }
  std::vector<std::unique_ptr<Executor>> executors;
  const CudaDeviceInfo info = QueryCudaDevices();
  for (int device = 0; device < info.count; ++device) {
    absl::StatusOr<std::unique_ptr<CudaExecutor>> executor =
        CudaExecutor::Create(device, options, metrics);
    if (!executor.ok()) {
      LogLine(LogLevel::kError, "cuda_executor_failed")
          .Kv("device", device)
          .Kv("error", executor.status().message());
      continue;
    }
    executors.push_back(std::move(*executor));
  }
  return executors;
}

}  // namespace attention::server
