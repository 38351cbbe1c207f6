// The service's Prometheus metrics: one object owning every metric family, created once at
// start-up. Every metric object the hot path touches is created in the constructor and cached,
// so a request pays only increments and observations (no label lookups, no allocation).
//
// Names follow Prometheus conventions under the prefix `attention_`: base units (seconds,
// bytes), `_total` on counters, low-cardinality labels only (method, code, stage, device).
#ifndef ATTENTION_SERVER_METRICS_METRICS_H_
#define ATTENTION_SERVER_METRICS_METRICS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "grpcpp/support/status_code_enum.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace attention::server {

// Constant facts about this process, exported once as attention_build_info{...} 1.
struct BuildInfo {
  std::string version;
  std::string git_commit;
  std::string cuda_version;  // empty on a CPU-only build
  std::string backend;       // "cuda" or "cpu"
  std::string device_name;   // e.g. "NVIDIA H100 80GB HBM3" or the CPU model
};

// RPC methods, as the `method` label.
enum class Method { kAttention, kAttentionStream };

// Stages of a request, each with its own latency histogram.
enum class Stage { kQueueWait, kHostToDevice, kKernel, kDeviceToHost };

class Metrics {
 public:
  // Registers every family on `registry` (kept alive by the caller, e.g. the exposer) for
  // `num_devices` devices (device label "cpu" for the CPU backend, else "cuda:0".."cuda:N-1").
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

  // Per-device memory: bytes the service holds from its pool right now, the pool's capacity and
  // high-water mark, and the device's total and free memory (0 for the CPU backend's device).
  void SetDeviceMemory(int device, int64_t used_bytes, int64_t pool_capacity_bytes,
                       int64_t pool_high_water_bytes, int64_t device_total_bytes,
                       int64_t device_free_bytes);

  // Pinned host staging pool: capacity and bytes in use.
  void SetPinnedHostMemory(int64_t capacity_bytes, int64_t used_bytes);

  // Requests refused before they were queued, by reason ("queue_full", "too_large",
  // "draining", "invalid").
  void RequestRejected(std::string_view reason);

 private:
  struct Families;
  std::unique_ptr<Families> families_;
};

}  // namespace attention::server

#endif  // ATTENTION_SERVER_METRICS_METRICS_H_
