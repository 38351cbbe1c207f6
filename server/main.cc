// attention_server: the attention gRPC service (callback API) with health checking, reflection
// and Prometheus metrics. SIGTERM / SIGINT drain: health turns NOT_SERVING, new requests get
// UNAVAILABLE, everything accepted is answered (up to --drain_timeout_s), then exit 0. A fatal
// device error drains the same way and exits 1.
#include <malloc.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/debugging/failure_signal_handler.h"
#include "absl/debugging/symbolize.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "grpc/support/log.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "prometheus/registry.h"
#include "server/auth.h"
#include "server/batcher.h"
#include "server/cpu_executor.h"
#include "server/drain.h"
#include "server/executor.h"
#include "server/log.h"
#include "server/metrics/exposer.h"
#include "server/metrics/metrics.h"
#include "server/output_pool.h"
#include "server/service.h"
#include "server/session_flags.h"
#include "server/tls.h"
#include "server/validation.h"
#ifdef ATTENTION_HAVE_CUDA_EXECUTOR
#include "kernels/cuda/attention_cuda.h"
#include "server/cuda/cuda_executor.h"
#include "server/cuda/device_page_storage.h"
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
ABSL_FLAG(double, max_request_gflop, 0,
          "Estimated work of one request, in GFLOP (4 x head_dim + 32 flops per score a window or "
          "causal mask allows, x heads); beyond it RESOURCE_EXHAUSTED. Also bounds one batch. 0 = "
          "the backend's default: CPU 100 per --cpu_threads thread (about 1 s of every core), "
          "CUDA 50000 (docs/operations.md)");
ABSL_FLAG(double, max_queue_gflop, 0,
          "Estimated work of the requests accepted and not yet launched, in GFLOP; beyond it "
          "RESOURCE_EXHAUSTED. 0 = 10 x the per-request limit");
ABSL_FLAG(int64_t, max_pending_answer_bytes, 0,
          "Bytes of o and lse of accepted requests whose answers have not yet been handed to the "
          "transport (slow or absent readers included); beyond it RESOURCE_EXHAUSTED and such "
          "streams stop being read. 0 = --max_message_bytes");
ABSL_FLAG(bool, reflection, true,
          "Serve gRPC server reflection (the public schema, without a token); false closes it");
ABSL_FLAG(int32_t, max_stream_in_flight, 1024,
          "Requests of one stream accepted and not yet answered before the stream stops reading");
ABSL_FLAG(int64_t, device_memory_bytes, 0, "Device memory pool per GPU in bytes (0 = auto)");
ABSL_FLAG(int64_t, pinned_host_bytes, int64_t{1} << 30,
          "Pinned host staging per GPU executor (CPU backend: its packing buffer bound), bytes");
ABSL_FLAG(int32_t, output_pool_mb, 256,
          "Answers' output buffers kept for later answers once gRPC has sent them, in MiB (0: "
          "each answer allocates its own, faulting its pages in; bench/results/"
          "serving_2026-12-03_h200.md)");
ABSL_FLAG(int32_t, pipeline_depth, 6,
          "Batches a GPU executor holds at once (upload / kernel / download overlap)");
ABSL_FLAG(int32_t, drain_timeout_s, 30,
          "On SIGTERM / SIGINT, how long to wait for accepted requests before exiting");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error");
ABSL_FLAG(int32_t, malloc_arena_max, 2,
          "glibc malloc arenas (M_ARENA_MAX); 0 keeps glibc's default (8 per core), under which "
          "resident memory kept growing in the soak test (docs/reliability.md)");
ABSL_FLAG(int32_t, malloc_keep_mb, 0,
          "Freed heap memory glibc keeps for reuse instead of returning it to the system "
          "(M_TRIM_THRESHOLD, with the mmap threshold fixed at 32 MiB); 0 keeps glibc's dynamic "
          "thresholds. 256 cut a lone small request's latency by a quarter on a CPU host where "
          "page faults are expensive, but resident memory grew 9.3% in the 10-minute soak test "
          "against 4.3% with 0 (bench/results/serving_2026-11-22_cpu_malloc.md)");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain of the gRPC port (with --tls_key: TLS; empty: plaintext)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: clients must present a certificate it signed (mutual TLS)");
ABSL_FLAG(std::string, auth_token_file, "",
          "File of accepted bearer tokens, one per line: calls to the attention service must "
          "send 'authorization: Bearer <token>' (health and reflection stay open)");
ABSL_FLAG(std::string, health_address, "",
          "Extra plaintext listening address (host:port) for health checks, for Kubernetes gRPC "
          "probes, which cannot speak TLS; with --tls_cert the attention service refuses calls "
          "on it. Empty: none");
ABSL_FLAG(int32_t, credentials_reload_interval_s, 60,
          "How often the TLS files and the token file are re-read (rotation without restart)");
ABSL_FLAG(int32_t, max_concurrent_streams, 256,
          "Calls open at once on one connection; clients queue the rest (HTTP/2 setting)");
ABSL_FLAG(int32_t, keepalive_time_s, 60,
          "The server pings a connection after this long without activity");
ABSL_FLAG(int32_t, keepalive_timeout_s, 20,
          "A connection whose ping is not answered within this long is closed");
ABSL_FLAG(int32_t, keepalive_min_client_interval_s, 10,
          "Shortest keepalive interval allowed to clients; pinging more often is answered with "
          "GOAWAY too_many_pings");
ABSL_FLAG(bool, keepalive_permit_without_calls, true,
          "Allow client keepalive pings on connections without calls");
ABSL_FLAG(int32_t, max_connection_age_s, 1800,
          "After this long (+-10% jitter) a connection is asked to reconnect (GOAWAY), so clients "
          "re-resolve and spread over new replicas; 0 = no limit");
ABSL_FLAG(int32_t, max_connection_age_grace_s, 0,
          "How long calls still open on an aged connection may run before it is closed; 0 = no "
          "limit (streams run to their end)");

namespace attention::server {
namespace {

constexpr char kServiceName[] = "attention.v1.AttentionService";
// Raised by the CUDA executor's fatal-error handler (a sticky device error): the server drains
// what it can with health NOT_SERVING and exits 1 so that the orchestrator restarts it.
constexpr int kFatalSignal = SIGUSR1;

// How long after the drain deadline a batch still on a device may take to finish before the
// server gives up on it and exits (the Kubernetes manifests leave 10 s between the drain and
// SIGKILL).
constexpr std::chrono::seconds kStuckBatchGrace{5};

// Default work limits (--max_request_gflop=0, --max_queue_gflop=0), in GFLOP of RequestWork.
// CPU: 100 per thread, about one second of every core: the CPU backend ran 110 GFLOP/s per core
// of that estimate on the 2-core AVX-512 VM (server/validation.h), so a request at the limit
// takes ~1 s there (~1.3 s on AVX2 cores at 70% of that), a cancel or a deadline frees the cores
// within one work item, and the drain never waits long for a running batch. CUDA: 50000, which
// the kernels' slowest measured 16-bit cell (178 TFLOP/s, causal d = 64 at seqlen 512, H200,
// bench/results/kernel_2026-12-03_h200_sm90.md) runs in about 0.28 s and their fastest (520
// TFLOP/s) in 0.1 s: six batches in flight (--pipeline_depth) finish within the drain's 5 s
// grace. The queue holds 10 requests' worth: a request waits behind at most ~10 s of work on the
// CPU and ~3 s on a GPU.
constexpr double kCpuGflopPerThread = 100;
constexpr double kCudaRequestGflop = 50000;
constexpr double kQueueRequestsOfWork = 10;

// gRPC's own log lines (handshake failures, transport errors) in the server's key=value format.
// gRPC reports its peers' faults (a client that does not speak TLS, a bad certificate) as
// errors; they are warnings here, the server's own failures being errors.
void GrpcLog(gpr_log_func_args* args) {
  const LogLevel level = args->severity == GPR_LOG_SEVERITY_ERROR  ? LogLevel::kWarning
                         : args->severity == GPR_LOG_SEVERITY_INFO ? LogLevel::kInfo
                                                                   : LogLevel::kDebug;
  LogLine(level, "grpc_log")
      .Kv("source", absl::StrCat(args->file != nullptr ? args->file : "?", ":", args->line))
      .Kv("message", args->message != nullptr ? args->message : "");
}

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
           {"pipeline_depth", absl::GetFlag(FLAGS_pipeline_depth)},
           {"credentials_reload_interval_s", absl::GetFlag(FLAGS_credentials_reload_interval_s)},
           {"max_concurrent_streams", absl::GetFlag(FLAGS_max_concurrent_streams)},
           {"keepalive_time_s", absl::GetFlag(FLAGS_keepalive_time_s)},
           {"keepalive_timeout_s", absl::GetFlag(FLAGS_keepalive_timeout_s)},
           {"keepalive_min_client_interval_s",
            absl::GetFlag(FLAGS_keepalive_min_client_interval_s)}}) {
    if (absl::Status s = positive(name, value); !s.ok()) return s;
  }
  if (absl::GetFlag(FLAGS_output_pool_mb) < 0) {
    return absl::InvalidArgumentError("--output_pool_mb must be >= 0");
  }
  if (!(absl::GetFlag(FLAGS_max_request_gflop) >= 0) ||
      !(absl::GetFlag(FLAGS_max_queue_gflop) >= 0) ||
      absl::GetFlag(FLAGS_max_pending_answer_bytes) < 0) {
    return absl::InvalidArgumentError(
        "--max_request_gflop, --max_queue_gflop and --max_pending_answer_bytes must be >= 0 (0: "
        "the default)");
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
      absl::GetFlag(FLAGS_device_memory_bytes) < 0 || absl::GetFlag(FLAGS_malloc_arena_max) < 0 ||
      absl::GetFlag(FLAGS_max_connection_age_s) < 0 ||
      absl::GetFlag(FLAGS_max_connection_age_grace_s) < 0) {
    return absl::InvalidArgumentError(
        "--max_queue_delay_us, --drain_timeout_s, --device_memory_bytes, --malloc_arena_max, "
        "--max_connection_age_s and --max_connection_age_grace_s must be >= 0");
  }
  // gRPC takes these in milliseconds, as int.
  for (auto [name, value] : std::initializer_list<std::pair<const char*, int64_t>>{
           {"keepalive_time_s", absl::GetFlag(FLAGS_keepalive_time_s)},
           {"keepalive_timeout_s", absl::GetFlag(FLAGS_keepalive_timeout_s)},
           {"keepalive_min_client_interval_s",
            absl::GetFlag(FLAGS_keepalive_min_client_interval_s)},
           {"max_connection_age_s", absl::GetFlag(FLAGS_max_connection_age_s)},
           {"max_connection_age_grace_s", absl::GetFlag(FLAGS_max_connection_age_grace_s)}}) {
    if (value > INT_MAX / 1000) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, " must be at most ", INT_MAX / 1000));
    }
  }
  if (absl::GetFlag(FLAGS_tls_cert).empty() != absl::GetFlag(FLAGS_tls_key).empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key must be given together");
  }
  if (!absl::GetFlag(FLAGS_tls_client_ca).empty() && absl::GetFlag(FLAGS_tls_cert).empty()) {
    return absl::InvalidArgumentError("--tls_client_ca needs --tls_cert and --tls_key");
  }
  const std::string backend = absl::GetFlag(FLAGS_backend);
  if (backend != "auto" && backend != "cuda" && backend != "cpu") {
    return absl::InvalidArgumentError(
        absl::StrCat("--backend must be auto, cuda or cpu, got ", backend));
  }
  return absl::OkStatus();
}

// The gRPC port's TLS credentials from the --tls_* flags, or null (plaintext) when none is set.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeCredentials() {
  TlsFiles files;
  files.cert = absl::GetFlag(FLAGS_tls_cert);
  files.key = absl::GetFlag(FLAGS_tls_key);
  files.client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  if (files.cert.empty()) return std::shared_ptr<grpc::ServerCredentials>();
  if (absl::Status s = CheckTlsFiles(files); !s.ok()) return s;
  return MakeTlsServerCredentials(
      files, std::chrono::seconds(absl::GetFlag(FLAGS_credentials_reload_interval_s)));
}

// Transport limits and keepalive policy (flags above), as channel arguments of the server.
void AddTransportArguments(grpc::ServerBuilder& builder) {
  constexpr int kMillis = 1000;
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             absl::GetFlag(FLAGS_max_concurrent_streams));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS,
                             absl::GetFlag(FLAGS_keepalive_time_s) * kMillis);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                             absl::GetFlag(FLAGS_keepalive_timeout_s) * kMillis);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS,
                             absl::GetFlag(FLAGS_keepalive_permit_without_calls) ? 1 : 0);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             absl::GetFlag(FLAGS_keepalive_min_client_interval_s) * kMillis);
  // The server's own keepalive pings on a connection without calls are not limited in number.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  if (const int age = absl::GetFlag(FLAGS_max_connection_age_s); age > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS, age * kMillis);
  }
  if (const int grace = absl::GetFlag(FLAGS_max_connection_age_grace_s); grace > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS, grace * kMillis);
  }
}

// "host" of "host:port" ("[::1]:0" -> "[::1]").
std::string HostOf(const std::string& address) {
  const size_t colon = address.rfind(':');
  return colon == std::string::npos ? address : address.substr(0, colon);
}

// Everything the flags decide, as the options of each part (flags to options).
struct ServerConfig {
  std::string address, metrics_address, health_address, backend;
  int max_message_bytes = 0;
  int64_t output_pool_bytes = 0;
  int drain_timeout_s = 0;
  bool reflection = true;
  // --max_request_gflop / --max_queue_gflop (0: the backend's default, set by ResolveWorkLimits).
  double max_request_gflop = 0, max_queue_gflop = 0;
  ExecutorOptions executor;
  BatcherOptions batcher;
  ServiceOptions service;
};

absl::StatusOr<ServerConfig> ConfigFromFlags() {
  if (absl::Status s = CheckFlags(); !s.ok()) return s;
  ServerConfig c;
  c.address = absl::GetFlag(FLAGS_address);
  c.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  c.health_address = absl::GetFlag(FLAGS_health_address);
  c.backend = absl::GetFlag(FLAGS_backend);
  c.max_message_bytes = static_cast<int>(absl::GetFlag(FLAGS_max_message_bytes));
  c.output_pool_bytes = int64_t{absl::GetFlag(FLAGS_output_pool_mb)} << 20;
  c.drain_timeout_s = absl::GetFlag(FLAGS_drain_timeout_s);
  c.reflection = absl::GetFlag(FLAGS_reflection);
  c.max_request_gflop = absl::GetFlag(FLAGS_max_request_gflop);
  c.max_queue_gflop = absl::GetFlag(FLAGS_max_queue_gflop);
  c.executor.device_memory_bytes = absl::GetFlag(FLAGS_device_memory_bytes);
#ifdef ATTENTION_HAVE_CUDA_EXECUTOR
  // The device pools exist only where sessions are served on the GPU (SessionPoolsFor).
  if (cuda::PagedKernelsRouted().ok())
    c.executor.reserved_device_bytes = SessionPoolBytesFromFlags();
#endif
  c.executor.pinned_host_bytes = absl::GetFlag(FLAGS_pinned_host_bytes);
  c.executor.pipeline_depth = absl::GetFlag(FLAGS_pipeline_depth);
  c.executor.cpu_threads = absl::GetFlag(FLAGS_cpu_threads);
  c.batcher.batching = absl::GetFlag(FLAGS_batching);
  c.batcher.max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens);
  c.batcher.max_batch_requests = absl::GetFlag(FLAGS_max_batch_requests);
  c.batcher.max_queue_delay = std::chrono::microseconds(absl::GetFlag(FLAGS_max_queue_delay_us));
  c.batcher.max_queue_requests = absl::GetFlag(FLAGS_max_queue_requests);
  c.batcher.max_queue_bytes = absl::GetFlag(FLAGS_max_queue_bytes);
  c.service.limits.max_request_tokens = absl::GetFlag(FLAGS_max_request_tokens);
  c.service.limits.max_request_sequences = absl::GetFlag(FLAGS_max_request_sequences);
  c.service.limits.max_heads = absl::GetFlag(FLAGS_max_heads);
  c.service.max_stream_in_flight = absl::GetFlag(FLAGS_max_stream_in_flight);
  c.service.limits.max_answer_bytes = c.max_message_bytes;
  c.service.max_pending_answer_bytes = absl::GetFlag(FLAGS_max_pending_answer_bytes) > 0
                                           ? absl::GetFlag(FLAGS_max_pending_answer_bytes)
                                           : int64_t{c.max_message_bytes};
  return c;
}

// The bearer-token authenticator of --auth_token_file, or null when the flag is empty.
absl::StatusOr<std::unique_ptr<TokenAuthenticator>> MakeAuthenticator() {
  const std::string path = absl::GetFlag(FLAGS_auth_token_file);
  if (path.empty()) return nullptr;
  absl::StatusOr<std::unique_ptr<TokenAuthenticator>> created = TokenAuthenticator::Create(
      path, std::chrono::seconds(absl::GetFlag(FLAGS_credentials_reload_interval_s)));
  if (created.ok() && absl::GetFlag(FLAGS_tls_cert).empty()) {
    LogLine(LogLevel::kWarning, "plaintext_tokens")
        .Kv("warning", "--auth_token_file without --tls_cert: tokens travel in clear text");
  }
  return created;
}

// Backend choice: cuda when the build has the CUDA executor, a GPU is visible and --backend is
// not cpu; else cpu. --backend=cuda without a GPU fails.
absl::StatusOr<BuildInfo> ChooseBackend(const std::string& backend_flag, int* num_devices) {
  BuildInfo info;
  info.backend = "cpu";
  info.device_name = CpuModelName();
  *num_devices = 1;
#ifdef ATTENTION_HAVE_CUDA_EXECUTOR
  const CudaDeviceInfo cuda = QueryCudaDevices();
  if (backend_flag != "cpu" && cuda.count > 0) {
    info.backend = "cuda";
    info.device_name = cuda.name;
    info.cuda_version = cuda.cuda_version;
    *num_devices = cuda.count;
  }
#endif
  if (backend_flag == "cuda" && info.backend != "cuda") {
    return absl::FailedPreconditionError(
        "--backend=cuda but this build has no CUDA executor or no GPU is visible");
  }
  return info;
}

// The executors: one per visible GPU (the CUDA backend), or the CPU executor (also kept as
// `cpu`, for its thread count and the drain's AbandonRunning).
struct Executors {
  std::vector<std::unique_ptr<Executor>> all;
  CpuExecutor* cpu = nullptr;
  std::vector<int> cuda_devices;  // the CUDA device of each of `all`, in order (CUDA backend)
};
Executors MakeExecutors(const BuildInfo& info, const ExecutorOptions& options, Metrics* metrics) {
  Executors executors;
#ifdef ATTENTION_HAVE_CUDA_EXECUTOR
  if (info.backend == "cuda") {
    SetCudaFatalErrorHandler([](const absl::Status& error) {
      LogLine(LogLevel::kError, "device_fatal").Kv("error", error.message());
      kill(getpid(), kFatalSignal);
    });
    executors.all = MakeCudaExecutors(options, metrics);
    for (const auto& e : executors.all) {
      executors.cuda_devices.push_back(static_cast<const CudaExecutor&>(*e).device_index());
    }
  }
#endif
  if (info.backend == "cpu") {
    auto cpu = std::make_unique<CpuExecutor>(options, metrics);
    executors.cpu = cpu.get();
    executors.all.push_back(std::move(cpu));
  }
  return executors;
}

// The session pools: on the CUDA backend one in each executor's device memory (pool i is
// executor i's), else one in host memory.
MakeSessionPools SessionPoolsFor(const Executors& executors) {
#ifdef ATTENTION_HAVE_CUDA_EXECUTOR
  // Without paged kernels a GPU server serves no session (CreateSession is refused): its pools
  // stay in host memory, untouched, instead of taking device memory.
  if (!executors.cuda_devices.empty() && cuda::PagedKernelsRouted().ok()) {
    std::vector<CudaExecutor*> cuda_executors;
    for (const auto& e : executors.all)
      cuda_executors.push_back(static_cast<CudaExecutor*>(e.get()));
    return [cuda_executors](const session::PoolOptions& options) -> absl::StatusOr<SessionPools> {
      SessionPools pools;
      for (CudaExecutor* executor : cuda_executors) {
        const int device = executor->device_index();
        absl::StatusOr<std::unique_ptr<DevicePageStorage>> storage =
            DevicePageStorage::Create(device, options);
        if (!storage.ok()) return storage.status();
        executor->set_page_storage(storage->get());
        pools.storages.push_back(std::move(*storage));
        pools.labels.push_back(absl::StrCat("cuda:", device));
      }
      return pools;
    };
  }
#endif
  (void)executors;
  return HostSessionPools;
}

// The work limits (--max_request_gflop, --max_queue_gflop), 0 replaced by the backend's default
// (kCpuGflopPerThread, kCudaRequestGflop, kQueueRequestsOfWork), into the validation and batcher
// options.
void ResolveWorkLimits(const Executors& executors, ServerConfig& config) {
  double request_gflop = config.max_request_gflop;
  if (request_gflop == 0) {
    request_gflop = executors.cpu != nullptr ? kCpuGflopPerThread * executors.cpu->num_threads()
                                             : kCudaRequestGflop;
  }
  const double queue_gflop =
      config.max_queue_gflop > 0 ? config.max_queue_gflop : kQueueRequestsOfWork * request_gflop;
  config.max_request_gflop = request_gflop;
  config.max_queue_gflop = queue_gflop;
  config.service.limits.max_request_work = request_gflop * 1e9;
  config.batcher.max_batch_work = request_gflop * 1e9;
  config.batcher.max_queue_work = queue_gflop * 1e9;
}

// The credentials of each port, with the gate that checks every call's headers before its
// messages are read (server/auth.h): on --address, the bearer tokens; on the plaintext
// --health_address of a TLS server, a refusal of everything but health and reflection (without
// TLS it serves what --address does). `tls` is null for plaintext. Without tokens and without a
// refusal a port needs no gate.
struct PortCredentials {
  std::shared_ptr<grpc::ServerCredentials> service, health;
};
PortCredentials GatePorts(std::shared_ptr<grpc::ServerCredentials> tls,
                          const TokenAuthenticator* auth, Metrics* metrics) {
  PortCredentials ports;
  const bool over_tls = tls != nullptr;
  if (auth != nullptr) {
    ports.service = GatedCredentials(tls, std::make_shared<CallGate>(auth, "", metrics));
  } else {
    ports.service = over_tls ? tls : grpc::InsecureServerCredentials();
  }
  if (over_tls) {
    ports.health = GatedCredentials(
        nullptr,
        std::make_shared<CallGate>(
            nullptr, "this port serves health checks only: call the attention service over TLS",
            metrics));
  } else if (auth != nullptr) {
    ports.health = GatedCredentials(nullptr, std::make_shared<CallGate>(auth, "", metrics));
  } else {
    ports.health = grpc::InsecureServerCredentials();
  }
  return ports;
}

// The gRPC server, built and started: the service on --address (with `credentials`), health on
// --health_address too when set, reflection, message limits and transport arguments.
struct StartedServer {
  std::unique_ptr<grpc::Server> server;
  int port = 0, health_port = 0;
};
absl::StatusOr<StartedServer> BuildServer(const ServerConfig& config, const PortCredentials& ports,
                                          AttentionServiceImpl* service,
                                          SessionServiceImpl* sessions) {
  grpc::EnableDefaultHealthCheckService(true);
  if (config.reflection) grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  StartedServer started;
  builder.AddListeningPort(config.address, ports.service, &started.port);
  if (!config.health_address.empty()) {
    builder.AddListeningPort(config.health_address, ports.health, &started.health_port);
  }
  builder.RegisterService(service);
  builder.RegisterService(sessions);
  builder.SetMaxReceiveMessageSize(config.max_message_bytes);
  builder.SetMaxSendMessageSize(config.max_message_bytes);
  AddTransportArguments(builder);
  started.server = builder.BuildAndStart();
  if (started.server == nullptr || started.port == 0 ||
      (!config.health_address.empty() && started.health_port == 0)) {
    return absl::UnavailableError(absl::StrCat("cannot bind --address=", config.address,
                                               " / --health_address=", config.health_address));
  }
  return started;
}

// The drain's target: this process's health service, service, batcher, server and executors.
class ServerDrainTarget final : public DrainTarget {
 public:
  ServerDrainTarget(grpc::Server* server, AttentionServiceImpl* service,
                    SessionServiceImpl* sessions, Batcher* batcher, Executors* executors)
      : server_(server),
        service_(service),
        sessions_(sessions),
        batcher_(batcher),
        executors_(executors) {}
  void SetNotServing() override { server_->GetHealthCheckService()->SetServingStatus(false); }
  void StopAcceptingCalls() override {
    service_->StartDrain();
    sessions_->StartDrain();
  }
  void StopAcceptingJobs() override { batcher_->StopAccepting(); }
  int64_t QueuedRequests() override { return batcher_->queued_requests(); }
  int64_t BatchesInFlight() override { return batcher_->batches_in_flight(); }
  bool DrainQueue(Clock::time_point deadline) override { return batcher_->Drain(deadline); }
  // Called once the queue drained or the drain deadline passed: CPU work still running then is
  // stopped between work items (answered UNAVAILABLE), so that only a device that cannot be
  // stopped can hold the process past the deadline (drain_stuck).
  bool ShutdownBatcher(Clock::time_point deadline) override {
    if (executors_->cpu != nullptr) executors_->cpu->AbandonRunning();
    return batcher_->Shutdown(deadline);
  }
  bool WaitForCalls(Clock::time_point deadline) override {
    return service_->WaitForCalls(deadline) && sessions_->WaitForCalls(deadline);
  }
  Clock::time_point LastAnswer() override {
    return std::max(service_->LastCallDone(), sessions_->LastCallDone());
  }
  void Linger(Clock::time_point until) override { std::this_thread::sleep_until(until); }
  void ShutdownServer() override {
    server_->Shutdown(std::chrono::system_clock::now());
    server_->Wait();
  }
  void ShutdownExecutors() override {
    for (auto& e : executors_->all) e->Shutdown();
  }

 private:
  grpc::Server* const server_;
  AttentionServiceImpl* const service_;
  SessionServiceImpl* const sessions_;
  Batcher* const batcher_;
  Executors* const executors_;
};

void LogListening(const ServerConfig& config, const StartedServer& started,
                  const MetricsExposer* exposer, const BuildInfo& info, size_t devices, bool auth) {
  const std::string bound = absl::StrCat(HostOf(config.address), ":", started.port);
  LogLine(LogLevel::kInfo, "listening")
      .Kv("address", bound)
      .Kv("metrics_address",
          exposer != nullptr ? absl::StrCat(HostOf(config.metrics_address), ":", exposer->port())
                             : std::string("off"))
      .Kv("backend", info.backend)
      .Kv("devices", devices)
      .Kv("batching", config.batcher.batching)
      .Kv("max_batch_tokens", config.batcher.max_batch_tokens)
      .Kv("max_batch_requests", config.batcher.max_batch_requests)
      .Kv("max_queue_delay_us", config.batcher.max_queue_delay.count())
      .Kv("max_request_gflop", config.max_request_gflop)
      .Kv("max_queue_gflop", config.max_queue_gflop)
      .Kv("max_pending_answer_bytes", config.service.max_pending_answer_bytes)
      .Kv("max_message_bytes", config.max_message_bytes)
      .Kv("tls", absl::GetFlag(FLAGS_tls_cert).empty()        ? "off"
                 : absl::GetFlag(FLAGS_tls_client_ca).empty() ? "on"
                                                              : "mutual")
      .Kv("auth", auth ? "bearer" : "off")
      .Kv("health_address",
          config.health_address.empty()
              ? std::string("off")
              : absl::StrCat(HostOf(config.health_address), ":", started.health_port))
      .Kv("max_concurrent_streams", absl::GetFlag(FLAGS_max_concurrent_streams));
  std::printf("listening address=%s\n", bound.c_str());
  std::fflush(stdout);
}

// Serve(): block the drain signals -> flags to options -> credentials and authenticator ->
// backend choice -> metrics -> executors -> work limits -> batcher, service -> ports' gates and
// server build -> wait for a signal -> drain (server/drain.h). Exit codes: 0 after a drain, 1 after
// a fatal device error or a failure to start, 2 for bad flags.
int Serve() {
  // SIGTERM and SIGINT are taken by sigwait below; blocked before any thread exists (gRPC's
  // credentials and the token reloader start threads) so that every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, kFatalSignal);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<ServerConfig> config = ConfigFromFlags();
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      config.ok() ? MakeCredentials() : config.status();
  absl::StatusOr<std::unique_ptr<TokenAuthenticator>> auth =
      credentials.ok() ? MakeAuthenticator() : credentials.status();
  if (!auth.ok()) {
    LogLine(LogLevel::kError, "bad_flags").Kv("error", auth.status().message());
    return 2;
  }
  OutputPool::Process().SetCapacity(config->output_pool_bytes);

  int num_devices = 1;
  absl::StatusOr<BuildInfo> build_info = ChooseBackend(config->backend, &num_devices);
  if (!build_info.ok()) {
    LogLine(LogLevel::kError, "no_cuda_device").Kv("error", build_info.status().message());
    return 1;
  }
  auto registry = std::make_shared<prometheus::Registry>();
  Metrics metrics(registry, *build_info, num_devices, build_info->backend == "cpu");
  std::unique_ptr<MetricsExposer> exposer;
  if (!config->metrics_address.empty()) {
    absl::StatusOr<std::unique_ptr<MetricsExposer>> started =
        StartMetricsExposer(config->metrics_address, registry);
    if (!started.ok()) {
      LogLine(LogLevel::kError, "metrics_bind_failed")
          .Kv("metrics_address", config->metrics_address)
          .Kv("error", started.status().message());
      return 1;
    }
    exposer = std::move(*started);
  }

  Executors executors = MakeExecutors(*build_info, config->executor, &metrics);
  if (executors.all.empty()) {
    LogLine(LogLevel::kError, "no_executor").Kv("backend", build_info->backend);
    return 1;
  }
  ResolveWorkLimits(executors, *config);
  std::vector<Executor*> executor_ptrs;
  for (const auto& e : executors.all) executor_ptrs.push_back(e.get());
  metrics.SetQueueLimits(config->batcher.max_queue_requests, config->batcher.max_queue_bytes);
  // The session store outlives the batcher: queued Attend jobs hold its views and turns.
  absl::StatusOr<SessionStoreParts> sessions =
      MakeSessionStore(build_info->backend, SessionPoolsFor(executors), registry);
  if (!sessions.ok()) {
    LogLine(LogLevel::kError, "bad_flags").Kv("error", sessions.status().message());
    return 2;
  }
  Batcher batcher(config->batcher, executor_ptrs, &metrics);
  // One answer budget for both services: unread answers are memory whichever call holds them.
  AnswerBudget answer_budget(config->service.max_pending_answer_bytes);
  AttentionServiceImpl service(config->service, &batcher, &metrics, &answer_budget);
  SessionServiceOptions session_options = SessionServiceOptionsFor(
      *sessions, config->service.limits, config->service.max_stream_in_flight);
  session_options.answer_budget = &answer_budget;
#ifdef ATTENTION_HAVE_CUDA_EXECUTOR
  if (!executors.cuda_devices.empty()) session_options.check_kernel = cuda::CheckSupported;
#endif
  SessionServiceImpl session_service(session_options, sessions->store.get(), &batcher,
                                     sessions->metrics.get());

  absl::StatusOr<StartedServer> started = BuildServer(
      *config, GatePorts(*credentials, auth->get(), &metrics), &service, &session_service);
  if (!started.ok()) {
    LogLine(LogLevel::kError, "bind_failed")
        .Kv("address", config->address)
        .Kv("health_address", config->health_address);
    return 1;
  }
  grpc::HealthCheckServiceInterface* health = started->server->GetHealthCheckService();
  health->SetServingStatus(false);
  // Executors, batcher and service are up: ready.
  health->SetServingStatus("", true);
  health->SetServingStatus(kServiceName, true);
  health->SetServingStatus(kSessionServiceName, true);
  LogListening(*config, *started, exposer.get(), *build_info, executors.all.size(),
               *auth != nullptr);

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  const bool fatal = signal_number == kFatalSignal;
  ServerDrainTarget target(started->server.get(), &service, &session_service, &batcher, &executors);
  const auto drain_start = Clock::now();
  const auto deadline = drain_start + std::chrono::seconds(config->drain_timeout_s);
  const DrainResult r =
      RunDrain(target, deadline, kStuckBatchGrace, [&](const DrainResult& at_start) {
        LogLine(fatal ? LogLevel::kError : LogLevel::kInfo, "draining")
            .Kv("signal", fatal                      ? "device_fatal"
                          : signal_number == SIGTERM ? "SIGTERM"
                                                     : "SIGINT")
            .Kv("queued", at_start.queued_at_start)
            .Kv("batches_in_flight", at_start.batches_at_start)
            .Kv("drain_timeout_s", config->drain_timeout_s);
      });
  if (r.stuck) {
    // A batch still on a device points into its calls: nothing can be torn down safely, so the
    // process ends at once, non-zero, as --drain_timeout_s promises.
    LogLine(LogLevel::kError, "drain_stuck")
        .Kv("batches_in_flight", batcher.batches_in_flight())
        .Kv("grace_s", std::chrono::duration_cast<std::chrono::seconds>(kStuckBatchGrace).count());
    std::fflush(stdout);
    std::fflush(stderr);
    std::_Exit(1);
  }
  LogLine(fatal ? LogLevel::kError : LogLevel::kInfo, "stopped")
      .Kv("exit_code", fatal ? 1 : 0)
      .Kv("drained", r.drained)
      .Kv("abandoned", r.abandoned)
      .Kv("calls_done", r.calls_done)
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
  // A crash (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT) prints the signal and a symbolized stack
  // trace to stderr before the process dies, so that a pod's previous log says where it died.
  // SIGTERM goes back to its default action: Serve() takes it with sigwait to drain.
  absl::InitializeSymbolizer(argv[0]);
  absl::InstallFailureSignalHandler(absl::FailureSignalHandlerOptions());
  signal(SIGTERM, SIG_DFL);
  attention::server::LogLevel level;
  if (!attention::server::ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    attention::server::LogLine(attention::server::LogLevel::kError, "bad_flags")
        .Kv("error", "--log_level must be debug, info, warning or error");
    return 2;
  }
  // Before any thread allocates (arenas are created on first use). Tensors of a few hundred KB
  // are allocated on gRPC threads and freed on others; once glibc's dynamic mmap threshold has
  // risen past them they come from the arenas, and with one arena per thread each arena keeps its
  // own high-water mark: resident memory grew 14% in the 10-minute soak (tests/reliability/
  // soak.sh). Two arenas: half the memory, flat, 3% fewer requests/s on 2 cores; a fixed mmap
  // threshold instead: flat too, but 25% fewer requests/s (page faults). docs/reliability.md.
  if (const int arenas = absl::GetFlag(FLAGS_malloc_arena_max); arenas > 0) {
    mallopt(M_ARENA_MAX, arenas);
  }
  // With dynamic thresholds glibc returns the top of a heap to the system once more than twice
  // the mmap threshold is free there (512 KB after 256 KB tensors), so a lone request's three
  // freed tensors were handed back and the next request's were faulted in again, page by page,
  // inside its arrival-to-launch time. Keeping up to --malloc_keep_mb per arena makes the heap
  // settle at the working set; tensors up to 32 MiB come from it, larger ones are mapped.
  if (const int keep_mb = absl::GetFlag(FLAGS_malloc_keep_mb); keep_mb > 0) {
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, std::min(keep_mb, 1024) << 20);
  }
  attention::server::SetLogLevel(level);
  gpr_set_log_function(attention::server::GrpcLog);
  return attention::server::Serve();
}
