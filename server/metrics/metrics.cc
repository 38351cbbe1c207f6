#include "server/metrics/metrics.h"

#include <array>
#include <cstddef>
#include <fstream>
#include <utility>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

#ifndef ATTN_SERVICE_VERSION
#error "ATTN_SERVICE_VERSION must be defined by server/metrics/CMakeLists.txt"
#endif
#ifndef ATTN_SERVICE_GIT_COMMIT
#error "ATTN_SERVICE_GIT_COMMIT must be defined by server/metrics/CMakeLists.txt"
#endif

namespace attention::server {
namespace {

constexpr int kNumMethods = 3;
constexpr int kNumStages = 8;
// grpc::StatusCode runs from OK (0) to UNAUTHENTICATED (16).
constexpr int kNumCodes = 17;

constexpr std::array<std::string_view, kNumCodes> kCodeNames = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

// Rejection reasons the server reports; the last one catches anything else.
constexpr std::array<std::string_view, 6> kRejectReasons = {
    "queue_full", "too_large", "answer_budget", "draining", "invalid", "other"};

int CodeIndex(grpc::StatusCode code) {
  const int index = static_cast<int>(code);
  if (index < 0 || index >= kNumCodes) return static_cast<int>(grpc::StatusCode::UNKNOWN);
  return index;
}

std::string Str(std::string_view s) { return std::string(s); }

}  // namespace

std::string_view ServiceVersion() { return ATTN_SERVICE_VERSION; }
std::string_view ServiceGitCommit() { return ATTN_SERVICE_GIT_COMMIT; }

std::string CpuModelName() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    // "model name\t: AMD EPYC 7763 64-Core Processor"
    if (line.rfind("model name", 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) break;
    const size_t begin = line.find_first_not_of(" \t", colon + 1);
    const size_t end = line.find_last_not_of(" \t\r");
    if (begin == std::string::npos || end < begin) break;
    return line.substr(begin, end - begin + 1);
  }
  return "cpu";
}

std::string_view MethodLabel(Method method) {
  switch (method) {
    case Method::kAttention:
      return "Attention";
    case Method::kAttentionStream:
      return "AttentionStream";
    case Method::kAttentionBackward:
      return "AttentionBackward";
  }
  return "unknown";
}

std::string_view StageLabel(Stage stage) {
  switch (stage) {
    case Stage::kQueueWait:
      return "queue_wait";
    case Stage::kHostToDevice:
      return "host_to_device";
    case Stage::kKernel:
      return "kernel";
    case Stage::kDeviceToHost:
      return "device_to_host";
    case Stage::kStaging:
      return "staging";
    case Stage::kDevice:
      return "device";
    case Stage::kScatter:
      return "scatter";
    case Stage::kAnswer:
      return "answer";
  }
  return "unknown";
}

std::string_view StatusCodeLabel(grpc::StatusCode code) { return kCodeNames[CodeIndex(code)]; }

const std::vector<double>& RequestLatencyBuckets() {
  static const std::vector<double> kBuckets = {50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3,
                                               10e-3, 20e-3,  50e-3,  0.1,    0.2,  0.5,  1,
                                               2,     5,      10,     20,     30,   60};
  return kBuckets;
}

const std::vector<double>& StageLatencyBuckets() {
  static const std::vector<double> kBuckets = {10e-6, 20e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3,
                                               2e-3,  5e-3,  10e-3, 20e-3,  50e-3,  0.1,    0.2,
                                               0.5,   1,     2,     5,      10,     30};
  return kBuckets;
}

const std::vector<double>& BatchRequestsBuckets() {
  static const std::vector<double> kBuckets = [] {
    std::vector<double> b;
    for (double v = 1; v <= 1024; v *= 2) b.push_back(v);
    return b;
  }();
  return kBuckets;
}

const std::vector<double>& BatchTokensBuckets() {
  static const std::vector<double> kBuckets = [] {
    std::vector<double> b;
    for (double v = 16; v <= 1024 * 1024; v *= 2) b.push_back(v);
    return b;
  }();
  return kBuckets;
}

// Pointers into families the registry owns; the registry outlives them through `registry`.
struct Metrics::Families {
  struct Device {
    prometheus::Gauge* used_bytes;
    prometheus::Gauge* pool_capacity_bytes;
    prometheus::Gauge* pool_high_water_bytes;
    prometheus::Gauge* total_bytes;
    prometheus::Gauge* free_bytes;
  };

  std::shared_ptr<prometheus::Registry> registry;
  std::array<std::array<prometheus::Counter*, kNumCodes>, kNumMethods> requests{};
  std::array<prometheus::Histogram*, kNumMethods> request_latency{};
  std::array<prometheus::Counter*, kNumMethods> request_bytes{};
  std::array<prometheus::Counter*, kNumMethods> response_bytes{};
  std::array<prometheus::Histogram*, kNumStages> stage_latency{};
  std::array<prometheus::Counter*, kRejectReasons.size()> rejected{};
  prometheus::Histogram* batch_requests = nullptr;
  prometheus::Histogram* batch_tokens = nullptr;
  prometheus::Counter* flops = nullptr;
  prometheus::Gauge* queue_requests = nullptr;
  prometheus::Gauge* queue_bytes = nullptr;
  prometheus::Gauge* in_flight = nullptr;
  prometheus::Gauge* queue_limit_requests = nullptr;
  prometheus::Gauge* queue_limit_bytes = nullptr;
  prometheus::Gauge* pinned_capacity = nullptr;
  prometheus::Gauge* pinned_used = nullptr;
  std::vector<std::string> device_labels;
  std::vector<Device> devices;
};

Metrics::Metrics(std::shared_ptr<prometheus::Registry> registry, const BuildInfo& build_info,
                 int num_devices, bool cpu_backend)
    : families_(std::make_unique<Families>()) {
  Families& f = *families_;
  f.registry = std::move(registry);
  prometheus::Registry& r = *f.registry;

  auto& requests = prometheus::BuildCounter()
                       .Name("attention_requests_total")
                       .Help(
                           "Answered Attention requests (unary calls and stream messages), by "
                           "method and gRPC status code.")
                       .Register(r);
  auto& latency = prometheus::BuildHistogram()
                      .Name("attention_request_duration_seconds")
                      .Help(
                          "Server-side latency of answered requests, from acceptance to the "
                          "answer handed to gRPC.")
                      .Register(r);
  auto& request_bytes = prometheus::BuildCounter()
                            .Name("attention_request_bytes_total")
                            .Help("Serialized size of answered requests.")
                            .Register(r);
  auto& response_bytes = prometheus::BuildCounter()
                             .Name("attention_response_bytes_total")
                             .Help("Serialized size of responses sent.")
                             .Register(r);
  for (int m = 0; m < kNumMethods; ++m) {
    const std::string method = Str(MethodLabel(static_cast<Method>(m)));
    for (int c = 0; c < kNumCodes; ++c) {
      f.requests[m][c] = &requests.Add({{"method", method}, {"code", Str(kCodeNames[c])}});
    }
    f.request_latency[m] = &latency.Add({{"method", method}}, RequestLatencyBuckets());
    f.request_bytes[m] = &request_bytes.Add({{"method", method}});
    f.response_bytes[m] = &response_bytes.Add({{"method", method}});
  }

  auto& stages = prometheus::BuildHistogram()
                     .Name("attention_stage_duration_seconds")
                     .Help(
                         "Time spent in one stage: queue_wait per request; host_to_device, "
                         "kernel and device_to_host per batch on the device; staging, device, "
                         "scatter and answer per batch on the host clock.")
                     .Register(r);
  for (int s = 0; s < kNumStages; ++s) {
    f.stage_latency[s] =
        &stages.Add({{"stage", Str(StageLabel(static_cast<Stage>(s)))}}, StageLatencyBuckets());
  }

  auto& rejected = prometheus::BuildCounter()
                       .Name("attention_requests_rejected_total")
                       .Help("Requests refused before they were queued, by reason.")
                       .Register(r);
  for (size_t i = 0; i < kRejectReasons.size(); ++i) {
    f.rejected[i] = &rejected.Add({{"reason", Str(kRejectReasons[i])}});
  }

  f.batch_requests = &prometheus::BuildHistogram()
                          .Name("attention_batch_size_requests")
                          .Help("Requests packed into one kernel launch.")
                          .Register(r)
                          .Add({}, BatchRequestsBuckets());
  f.batch_tokens = &prometheus::BuildHistogram()
                        .Name("attention_batch_size_tokens")
                        .Help("Query tokens packed into one kernel launch.")
                        .Register(r)
                        .Add({}, BatchTokensBuckets());
  f.flops = &prometheus::BuildCounter()
                 .Name("attention_floating_point_operations_total")
                 .Help(
                     "Floating-point operations of launched attention kernels (4 * Sq * Sk * "
                     "head_dim per head, halved when causal).")
                 .Register(r)
                 .Add({});

  f.queue_requests = &prometheus::BuildGauge()
                          .Name("attention_queue_requests")
                          .Help("Requests accepted and waiting to be launched.")
                          .Register(r)
                          .Add({});
  f.queue_bytes = &prometheus::BuildGauge()
                       .Name("attention_queue_bytes")
                       .Help("Payload bytes of the requests waiting to be launched.")
                       .Register(r)
                       .Add({});
  f.in_flight = &prometheus::BuildGauge()
                     .Name("attention_in_flight_requests")
                     .Help("Requests accepted and not yet answered (queued or running).")
                     .Register(r)
                     .Add({});

  f.queue_limit_requests = &prometheus::BuildGauge()
                                .Name("attention_queue_limit_requests")
                                .Help(
                                    "Configured most requests waiting to be launched (0 = "
                                    "unlimited).")
                                .Register(r)
                                .Add({});
  f.queue_limit_bytes = &prometheus::BuildGauge()
                             .Name("attention_queue_limit_bytes")
                             .Help(
                                 "Configured most payload bytes waiting to be launched (0 = "
                                 "unlimited).")
                             .Register(r)
                             .Add({});

  auto& used = prometheus::BuildGauge()
                   .Name("attention_device_memory_used_bytes")
                   .Help("Device memory the service holds from its pool right now.")
                   .Register(r);
  auto& pool_capacity = prometheus::BuildGauge()
                            .Name("attention_device_pool_capacity_bytes")
                            .Help("Capacity of the service's device memory pool.")
                            .Register(r);
  auto& pool_high_water = prometheus::BuildGauge()
                              .Name("attention_device_pool_high_water_bytes")
                              .Help("Most device pool memory held at once since start.")
                              .Register(r);
  auto& device_total = prometheus::BuildGauge()
                           .Name("attention_device_memory_total_bytes")
                           .Help("Total memory of the device (0 for the CPU backend).")
                           .Register(r);
  auto& device_free = prometheus::BuildGauge()
                          .Name("attention_device_memory_free_bytes")
                          .Help(
                              "Free memory of the device, as the driver reports it (0 for the "
                              "CPU backend).")
                          .Register(r);
  if (num_devices < 0) num_devices = 0;
  for (int d = 0; d < num_devices; ++d) {
    std::string label = cpu_backend ? (d == 0 ? std::string("cpu") : "cpu:" + std::to_string(d))
                                    : "cuda:" + std::to_string(d);
    const prometheus::Labels labels = {{"device", label}};
    f.devices.push_back(Families::Device{&used.Add(labels), &pool_capacity.Add(labels),
                                         &pool_high_water.Add(labels), &device_total.Add(labels),
                                         &device_free.Add(labels)});
    f.device_labels.push_back(std::move(label));
  }

  f.pinned_capacity = &prometheus::BuildGauge()
                           .Name("attention_pinned_host_pool_capacity_bytes")
                           .Help("Capacity of the pinned host staging pool.")
                           .Register(r)
                           .Add({});
  f.pinned_used = &prometheus::BuildGauge()
                       .Name("attention_pinned_host_pool_used_bytes")
                       .Help("Pinned host staging memory in use.")
                       .Register(r)
                       .Add({});

  prometheus::BuildGauge()
      .Name("attention_build_info")
      .Help("Constant 1, labelled with the build and the compute device.")
      .Register(r)
      .Add({{"version", build_info.version.empty() ? Str(ServiceVersion()) : build_info.version},
            {"git_commit",
             build_info.git_commit.empty() ? Str(ServiceGitCommit()) : build_info.git_commit},
            {"cuda_version", build_info.cuda_version.empty() ? "none" : build_info.cuda_version},
            {"backend", build_info.backend},
            {"device_name", build_info.device_name}})
      .Set(1);
}

Metrics::~Metrics() = default;

void Metrics::RequestDone(Method method, grpc::StatusCode code, double seconds,
                          int64_t request_bytes, int64_t response_bytes) {
  const int m = static_cast<int>(method);
  if (m < 0 || m >= kNumMethods) return;
  Families& f = *families_;
  f.requests[m][CodeIndex(code)]->Increment();
  f.request_latency[m]->Observe(seconds);
  if (request_bytes > 0) f.request_bytes[m]->Increment(static_cast<double>(request_bytes));
  if (response_bytes > 0) f.response_bytes[m]->Increment(static_cast<double>(response_bytes));
}

void Metrics::ObserveStage(Stage stage, double seconds) {
  const int s = static_cast<int>(stage);
  if (s < 0 || s >= kNumStages) return;
  families_->stage_latency[s]->Observe(seconds);
}

void Metrics::BatchLaunched(int requests, int64_t tokens, double flops) {
  Families& f = *families_;
  f.batch_requests->Observe(requests);
  f.batch_tokens->Observe(static_cast<double>(tokens));
  if (flops > 0) f.flops->Increment(flops);
}

void Metrics::SetQueueDepth(int64_t requests, int64_t bytes) {
  families_->queue_requests->Set(static_cast<double>(requests));
  families_->queue_bytes->Set(static_cast<double>(bytes));
}

void Metrics::SetQueueLimits(int64_t max_requests, int64_t max_bytes) {
  families_->queue_limit_requests->Set(static_cast<double>(max_requests));
  families_->queue_limit_bytes->Set(static_cast<double>(max_bytes));
}

void Metrics::AddInFlight(int64_t delta) {
  families_->in_flight->Increment(static_cast<double>(delta));
}

void Metrics::SetDeviceMemory(int device, int64_t used_bytes, int64_t pool_capacity_bytes,
                              int64_t pool_high_water_bytes, int64_t device_total_bytes,
                              int64_t device_free_bytes) {
  if (device < 0 || device >= static_cast<int>(families_->devices.size())) return;
  const Families::Device& d = families_->devices[device];
  d.used_bytes->Set(static_cast<double>(used_bytes));
  d.pool_capacity_bytes->Set(static_cast<double>(pool_capacity_bytes));
  d.pool_high_water_bytes->Set(static_cast<double>(pool_high_water_bytes));
  d.total_bytes->Set(static_cast<double>(device_total_bytes));
  d.free_bytes->Set(static_cast<double>(device_free_bytes));
}

void Metrics::SetPinnedHostMemory(int64_t capacity_bytes, int64_t used_bytes) {
  families_->pinned_capacity->Set(static_cast<double>(capacity_bytes));
  families_->pinned_used->Set(static_cast<double>(used_bytes));
}

void Metrics::RequestRejected(std::string_view reason) {
  size_t i = 0;
  while (i + 1 < kRejectReasons.size() && kRejectReasons[i] != reason) ++i;
  families_->rejected[i]->Increment();
}

int Metrics::num_devices() const { return static_cast<int>(families_->devices.size()); }

const std::vector<std::string>& Metrics::device_labels() const { return families_->device_labels; }

}  // namespace attention::server
