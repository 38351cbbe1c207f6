// attention_server: the attention gRPC service (callback API) with health checking, reflection
// and Prometheus metrics. SIGTERM / SIGINT drain: health turns NOT_SERVING, new requests get
// UNAVAILABLE, everything accepted is answered (up to --drain_timeout_s), then exit 0. A fatal
// device error drains the same way and exits 1.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "prometheus/registry.h"
#include "server/batcher.h"
#include "server/cpu_executor.h"
#include "server/executor.h"
#include "server/log.h"
#include "server/metrics/exposer.h"
#include "server/metrics/metrics.h"
#include "server/service.h"
#include "server/validation.h"
#ifdef ATTENTION_HAVE_CUDA_EXECUTOR
#include "server/cuda/cuda_executor.h"
#endif

ABSL_FLAG(std::string, address, "0.0.0.0:50051",
          "gRPC listening address host:port (port 0 picks a free port; the bound one is logged "
          "as 'listening address=HOST:PORT')");
ABSL_FLAG(std::string, metrics_address, "0.0.0.0:9464",
          "Prometheus /metrics HTTP address (numeric IPv4:port); empty disables it");
ABSL_FLAG(std::string, backend, "auto", "auto (cuda when a GPU is visible, else cpu), cuda or cpu");
ABSL_FLAG(int64_t, max_message_bytes, int64_t{1} << 30,
          "Largest gRPC message received or sent, in bytes (at most 2^31 - 1)");
ABSL_FLAG(int32_t, cpu_threads, 0, "CPU backend worker threads (0 = all cores)");
ABSL_FLAG(int64_t, max_batch_tokens, 16384,
          "Query tokens packed into one launch (a larger request runs alone)");
ABSL_FLAG(int32_t, max_batch_requests, 64, "Requests packed into one launch");
ABSL_FLAG(int64_t, max_queue_delay_us, 200,
          "How long a request may wait for its batch to fill while every device is busy");
ABSL_FLAG(bool, batching, true, "Pack requests into shared launches (false: one launch each)");
ABSL_FLAG(int64_t, max_queue_requests, 4096,
          "Requests accepted and not yet launched; beyond it RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_queue_bytes, int64_t{4} << 30,
          "Tensor bytes of requests accepted and not yet launched; beyond it RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_request_tokens, int64_t{1} << 20,
          "Rows of q, and of k, in one request (below 2^31); beyond it RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_request_sequences, 65536,
          "Sequences in one request; beyond it RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_heads, 1024, "Query heads of one request; beyond it RESOURCE_EXHAUSTED");
ABSL_FLAG(int32_t, max_stream_in_flight, 1024,
          "Requests of one stream accepted and not yet answered before the stream stops reading");
ABSL_FLAG(int64_t, device_memory_bytes, 0, "Device memory pool per GPU in bytes (0 = auto)");
ABSL_FLAG(int64_t, pinned_host_bytes, int64_t{1} << 30,
          "Pinned host staging per GPU executor (CPU backend: its packing buffer bound), bytes");
ABSL_FLAG(int32_t, pipeline_depth, 3,
          "Batches a GPU executor holds at once (upload / kernel / download overlap)");
ABSL_FLAG(int32_t, drain_timeout_s, 30,
          "On SIGTERM / SIGINT, how long to wait for accepted requests before exiting");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error");

namespace attention::server {
namespace {

constexpr char kServiceName[] = "attention.v1.AttentionService";
// Raised by the CUDA executor's fatal-error handler (a sticky device error): the server drains
// what it can with health NOT_SERVING and exits 1 so that the orchestrator restarts it.
constexpr int kFatalSignal = SIGUSR1;

// Checks the flags that could otherwise break an invariant; the message names the flag.
absl::Status CheckFlags() {
  auto positive = [](const char* name, int64_t value) {
    return value > 0 ? absl::OkStatus()
                     : absl::InvalidArgumentError(absl::StrCat("--", name, " must be > 0"));
  };
  for (auto [name, value] : std::initializer_list<std::pair<const char*, int64_t>>{
           {"max_message_bytes", absl::GetFlag(FLAGS_max_message_bytes)},
           {"max_batch_tokens", absl::GetFlag(FLAGS_max_batch_tokens)},
           {"max_batch_requests", absl::GetFlag(FLAGS_max_batch_requests)},
           {"max_queue_requests", absl::GetFlag(FLAGS_max_queue_requests)},
           {"max_queue_bytes", absl::GetFlag(FLAGS_max_queue_bytes)},
           {"max_request_tokens", absl::GetFlag(FLAGS_max_request_tokens)},
           {"max_request_sequences", absl::GetFlag(FLAGS_max_request_sequences)},
           {"max_heads", absl::GetFlag(FLAGS_max_heads)},
           {"max_stream_in_flight", absl::GetFlag(FLAGS_max_stream_in_flight)},
           {"pinned_host_bytes", absl::GetFlag(FLAGS_pinned_host_bytes)},
           {"pipeline_depth", absl::GetFlag(FLAGS_pipeline_depth)}}) {
    if (absl::Status s = positive(name, value); !s.ok()) return s;
  }
  if (absl::GetFlag(FLAGS_max_message_bytes) > INT_MAX) {
    return absl::InvalidArgumentError("--max_message_bytes must be at most 2^31 - 1");
  }
  if (absl::GetFlag(FLAGS_max_request_tokens) > INT32_MAX ||
      absl::GetFlag(FLAGS_max_batch_tokens) > INT32_MAX ||
      absl::GetFlag(FLAGS_max_request_sequences) > INT32_MAX ||
      absl::GetFlag(FLAGS_max_heads) > INT32_MAX) {
    return absl::InvalidArgumentError(
        "--max_request_tokens, --max_batch_tokens, --max_request_sequences and --max_heads must "
        "be below 2^31 (int32 kernel parameters)");
  }
  if (absl::GetFlag(FLAGS_max_queue_delay_us) < 0 || absl::GetFlag(FLAGS_drain_timeout_s) < 0 ||
      absl::GetFlag(FLAGS_device_memory_bytes) < 0) {
    return absl::InvalidArgumentError(
        "--max_queue_delay_us, --drain_timeout_s and --device_memory_bytes must be >= 0");
  }
  const std::string backend = absl::GetFlag(FLAGS_backend);
  if (backend != "auto" && backend != "cuda" && backend != "cpu") {
    return absl::InvalidArgumentError(
        absl::StrCat("--backend must be auto, cuda or cpu, got ", backend));
  }
  return absl::OkStatus();
}

// "host" of "host:port" ("[::1]:0" -> "[::1]").
std::string HostOf(const std::string& address) {
  const size_t colon = address.rfind(':');
  return colon == std::string::npos ? address : address.substr(0, colon);
}

int Serve() {
  if (absl::Status s = CheckFlags(); !s.ok()) {
    LogLine(LogLevel::kError, "bad_flags").Kv("error", s.message());
    return 2;
  }
  // SIGTERM and SIGINT are taken by sigwait below; blocked before any thread exists so that every
  // thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, kFatalSignal);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  ExecutorOptions executor_options;
  executor_options.device_memory_bytes = absl::GetFlag(FLAGS_device_memory_bytes);
  executor_options.pinned_host_bytes = absl::GetFlag(FLAGS_pinned_host_bytes);
  executor_options.pipeline_depth = absl::GetFlag(FLAGS_pipeline_depth);
  executor_options.cpu_threads = absl::GetFlag(FLAGS_cpu_threads);

  const std::string backend_flag = absl::GetFlag(FLAGS_backend);
  BuildInfo build_info;
  build_info.backend = "cpu";
  build_info.device_name = CpuModelName();
  int num_devices = 1;
#ifdef ATTENTION_HAVE_CUDA_EXECUTOR
  const CudaDeviceInfo cuda = QueryCudaDevices();
  if (backend_flag != "cpu" && cuda.count > 0) {
    build_info.backend = "cuda";
    build_info.device_name = cuda.name;
    build_info.cuda_version = cuda.cuda_version;
    num_devices = cuda.count;
  }
#endif
  if (backend_flag == "cuda" && build_info.backend != "cuda") {
    LogLine(LogLevel::kError, "no_cuda_device")
        .Kv("error", "--backend=cuda but this build has no CUDA executor or no GPU is visible");
    return 1;
  }
  const bool cpu_backend = build_info.backend == "cpu";

  auto registry = std::make_shared<prometheus::Registry>();
  Metrics metrics(registry, build_info, num_devices, cpu_backend);
  std::unique_ptr<MetricsExposer> exposer;
  if (const std::string address = absl::GetFlag(FLAGS_metrics_address); !address.empty()) {
    absl::StatusOr<std::unique_ptr<MetricsExposer>> started =
        StartMetricsExposer(address, registry);
    if (!started.ok()) {
      LogLine(LogLevel::kError, "metrics_bind_failed")
          .Kv("metrics_address", address)
          .Kv("error", started.status().message());
      return 1;
    }
    exposer = std::move(*started);
  }

  std::vector<std::unique_ptr<Executor>> executors;
#ifdef ATTENTION_HAVE_CUDA_EXECUTOR
  if (!cpu_backend) {
    SetCudaFatalErrorHandler([](const absl::Status& error) {
      LogLine(LogLevel::kError, "device_fatal").Kv("error", error.message());
      kill(getpid(), kFatalSignal);
    });
    executors = MakeCudaExecutors(executor_options, &metrics);
  }
#endif
  if (cpu_backend) executors.push_back(std::make_unique<CpuExecutor>(executor_options, &metrics));
  if (executors.empty()) {
    LogLine(LogLevel::kError, "no_executor").Kv("backend", build_info.backend);
    return 1;
  }
  std::vector<Executor*> executor_ptrs;
  for (const auto& e : executors) executor_ptrs.push_back(e.get());

  BatcherOptions batcher_options;
  batcher_options.batching = absl::GetFlag(FLAGS_batching);
  batcher_options.max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens);
  batcher_options.max_batch_requests = absl::GetFlag(FLAGS_max_batch_requests);
  batcher_options.max_queue_delay =
      std::chrono::microseconds(absl::GetFlag(FLAGS_max_queue_delay_us));
  batcher_options.max_queue_requests = absl::GetFlag(FLAGS_max_queue_requests);
  batcher_options.max_queue_bytes = absl::GetFlag(FLAGS_max_queue_bytes);
  metrics.SetQueueLimits(batcher_options.max_queue_requests, batcher_options.max_queue_bytes);
  Batcher batcher(batcher_options, executor_ptrs, &metrics);

  ServiceOptions service_options;
  service_options.limits.max_request_tokens = absl::GetFlag(FLAGS_max_request_tokens);
  service_options.limits.max_request_sequences = absl::GetFlag(FLAGS_max_request_sequences);
  service_options.limits.max_heads = absl::GetFlag(FLAGS_max_heads);
  service_options.max_stream_in_flight = absl::GetFlag(FLAGS_max_stream_in_flight);
  AttentionServiceImpl service(service_options, &batcher, &metrics);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  const std::string address = absl::GetFlag(FLAGS_address);
  int port = 0;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  const int max_message = static_cast<int>(absl::GetFlag(FLAGS_max_message_bytes));
  builder.SetMaxReceiveMessageSize(max_message);
  builder.SetMaxSendMessageSize(max_message);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    LogLine(LogLevel::kError, "bind_failed").Kv("address", address);
    return 1;
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus(false);
  // Executors, batcher and service are up: ready.
  health->SetServingStatus("", true);
  health->SetServingStatus(kServiceName, true);

  const std::string bound = absl::StrCat(HostOf(address), ":", port);
  LogLine(LogLevel::kInfo, "listening")
      .Kv("address", bound)
      .Kv("metrics_address",
          exposer ? absl::StrCat(HostOf(absl::GetFlag(FLAGS_metrics_address)), ":", exposer->port())
                  : std::string("off"))
      .Kv("backend", build_info.backend)
      .Kv("devices", executors.size())
      .Kv("batching", batcher_options.batching)
      .Kv("max_batch_tokens", batcher_options.max_batch_tokens)
      .Kv("max_batch_requests", batcher_options.max_batch_requests)
      .Kv("max_queue_delay_us", batcher_options.max_queue_delay.count())
      .Kv("max_message_bytes", max_message);
  std::printf("listening address=%s\n", bound.c_str());
  std::fflush(stdout);

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  const bool fatal = signal_number == kFatalSignal;
  const auto drain_start = Clock::now();
  const auto deadline = drain_start + std::chrono::seconds(absl::GetFlag(FLAGS_drain_timeout_s));
  LogLine(fatal ? LogLevel::kError : LogLevel::kInfo, "draining")
      .Kv("signal", fatal                      ? "device_fatal"
                    : signal_number == SIGTERM ? "SIGTERM"
                                               : "SIGINT")
      .Kv("queued", batcher.queued_requests())
      .Kv("batches_in_flight", batcher.batches_in_flight())
      .Kv("drain_timeout_s", absl::GetFlag(FLAGS_drain_timeout_s));
  health->SetServingStatus(false);
  service.StartDrain();
  const bool drained = batcher.Drain(deadline);
  // Answers whatever is still queued (UNAVAILABLE) and waits for the batches on the devices, so
  // that every call can finish before the server shuts down.
  const int64_t abandoned = batcher.queued_requests();
  batcher.Shutdown();
  // Every answer written and every stream ended: shutting the server down cancels nothing (at
  // the drain deadline it cancels whatever is left).
  const bool calls_done = service.WaitForCalls(deadline);
  server->Shutdown(std::chrono::system_clock::now());
  server->Wait();
  for (auto& e : executors) e->Shutdown();
  LogLine(fatal ? LogLevel::kError : LogLevel::kInfo, "stopped")
      .Kv("exit_code", fatal ? 1 : 0)
      .Kv("drained", drained)
      .Kv("abandoned", abandoned)
      .Kv("calls_done", calls_done)
      .Kv("drain_ms",
          std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - drain_start)
              .count());
  return fatal ? 1 : 0;
}

}  // namespace
}  // namespace attention::server

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "attention_server: attention compute over gRPC (attention.v1.AttentionService)");
  absl::ParseCommandLine(argc, argv);
  attention::server::LogLevel level;
  if (!attention::server::ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    attention::server::LogLine(attention::server::LogLevel::kError, "bad_flags")
        .Kv("error", "--log_level must be debug, info, warning or error");
    return 2;
  }
  attention::server::SetLogLevel(level);
  return attention::server::Serve();
}
