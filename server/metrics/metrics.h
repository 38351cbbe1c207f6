// The service's Prometheus metrics: one object owning every metric family, created once at
// start-up. Every metric object the hot path touches is created in the constructor and cached,
// so a request pays only increments and observations (no label lookups, no allocation).
//
// Names follow Prometheus conventions under the prefix `attention_`: base units (seconds,
// bytes), `_total` on counters, low-cardinality labels only (method, code, stage, device,
// reason). docs/metrics.md lists every metric with its type, labels, unit and example queries.
//
// Every method is thread-safe and may be called from any thread (reactors, the batcher, the
// executors, a memory poller).
#ifndef ATTENTION_SERVER_METRICS_METRICS_H_
#define ATTENTION_SERVER_METRICS_METRICS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "grpcpp/support/status_code_enum.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace attention::server {

// Constant facts about this process, exported once as attention_build_info{...} 1.
struct BuildInfo {
  std::string version;       // empty: ServiceVersion()
  std::string git_commit;    // empty: ServiceGitCommit()
  std::string cuda_version;  // empty on a CPU-only build (exported as "none")
  std::string backend;       // "cuda" or "cpu"
  std::string device_name;   // e.g. "NVIDIA H100 80GB HBM3" or the CPU model (CpuModelName())
};

// The CPU's model name from /proc/cpuinfo (e.g. "AMD EPYC 7763 64-Core Processor"), or "cpu"
// when it cannot be read: the device_name of the CPU backend.
std::string CpuModelName();

// The project version (CMake's PROJECT_VERSION) and the short git commit of the source tree,
// both fixed when the build was configured ("unknown" outside a git checkout).
std::string_view ServiceVersion();
std::string_view ServiceGitCommit();

// RPC methods, as the `method` label.
enum class Method { kAttention, kAttentionStream, kAttentionBackward };

// Stages of a request, each with its own latency histogram. queue_wait is per request, the others
// per batch: host_to_device, kernel and device_to_host are timed on the device; staging, device,
// scatter and answer by the host clock, one after the other from the batch's start to its answers
// being handed to gRPC (staging: inputs copied into the staging buffer and the work enqueued;
// device: until the executor sees the device done, which includes waiting behind earlier
// batches; scatter: outputs copied into the answers; answer: answers serialized and finished).
enum class Stage {
  kQueueWait,
  kHostToDevice,
  kKernel,
  kDeviceToHost,
  kStaging,
  kDevice,
  kScatter,
  kAnswer
};

// Label values, as exported: "Attention" / "AttentionStream"; "queue_wait" / "host_to_device" /
// "kernel" / "device_to_host" / "staging" / "device" / "scatter" / "answer"; the canonical gRPC
// code name ("OK", "INVALID_ARGUMENT", ..., "UNKNOWN" for a value outside the enum).
std::string_view MethodLabel(Method method);
std::string_view StageLabel(Stage stage);
std::string_view StatusCodeLabel(grpc::StatusCode code);

// Histogram bucket upper bounds, in the metric's unit. 1-2-5 steps per decade keep the `le`
// labels round and give 2-2.5x resolution:
//   request latency (end to end, server side): 50 us .. 60 s;
//   stage latency (queue wait, transfers, kernel): 10 us .. 30 s, for sub-millisecond kernels;
//   batch requests per launch: 1 .. 1024, powers of 2;
//   batch query tokens per launch: 16 .. 1Mi, powers of 2.
const std::vector<double>& RequestLatencyBuckets();
const std::vector<double>& StageLatencyBuckets();
const std::vector<double>& BatchRequestsBuckets();
const std::vector<double>& BatchTokensBuckets();

class Metrics {
 public:
  // Registers every family on `registry` (kept alive by the caller, e.g. the exposer) for
  // `num_devices` devices (device label "cpu" for the CPU backend, else "cuda:0".."cuda:N-1").
  // Every labelled series (each method x code, each stage, each device, each rejection reason)
  // is created here, at zero, so rate() works from the first scrape.
  Metrics(std::shared_ptr<prometheus::Registry> registry, const BuildInfo& build_info,
          int num_devices, bool cpu_backend);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // One answered request (result or error): counts it by method and gRPC code, observes its
  // end-to-end server latency, and adds its request and response sizes.
  void RequestDone(Method method, grpc::StatusCode code, double seconds, int64_t request_bytes,
                   int64_t response_bytes);

  // Time one request (or one batch, for the transfer and kernel stages) spent in a stage.
  void ObserveStage(Stage stage, double seconds);

  // One kernel launch: requests and query tokens packed into it, and its floating-point
  // operations (FlashAttention convention: 4 * Sq * Sk * d per head, halved when causal).
  void BatchLaunched(int requests, int64_t tokens, double flops);

  // Requests and bytes accepted but not yet launched; requests accepted but not yet answered.
  void SetQueueDepth(int64_t requests, int64_t bytes);
  void AddInFlight(int64_t delta);

  // The configured queue limits (--max_queue_requests, --max_queue_bytes; 0 = unlimited), set
  // once at start-up so that dashboards and alerts can express queue depth as a fraction.
  void SetQueueLimits(int64_t max_requests, int64_t max_bytes);

  // Per-device memory: bytes the service holds from its pool right now, the pool's capacity and
  // high-water mark, and the device's total and free memory (0 for the CPU backend's device).
  // A device index outside [0, num_devices) is ignored.
  void SetDeviceMemory(int device, int64_t used_bytes, int64_t pool_capacity_bytes,
                       int64_t pool_high_water_bytes, int64_t device_total_bytes,
                       int64_t device_free_bytes);

  // Pinned host staging pool: capacity and bytes in use.
  void SetPinnedHostMemory(int64_t capacity_bytes, int64_t used_bytes);

  // Requests refused before they were queued, by reason ("queue_full", "too_large" (over a
  // per-request limit), "answer_budget" (answers waiting to be sent at their bound), "draining",
  // "invalid"); any other string counts as "other".
  void RequestRejected(std::string_view reason);

  // The number of devices and their `device` label values, in index order.
  int num_devices() const;
  const std::vector<std::string>& device_labels() const;

 private:
  struct Families;
  std::unique_ptr<Families> families_;
};

}  // namespace attention::server

#endif  // ATTENTION_SERVER_METRICS_METRICS_H_
