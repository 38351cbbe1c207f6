// Prints one real scrape of the service's metrics: builds a Metrics instance exactly as the server
// does (two CUDA devices, so per-device series appear), records some activity in every family,
// serves it through StartMetricsExposer on a free loopback port and GETs /metrics over HTTP.
// The scrape feeds `promtool check metrics` and the dashboard test, so both follow the code.
//
// Usage: attention_metrics_scrape [--out=FILE]   (default: standard output)
#include <fstream>
#include <iostream>
#include <memory>
#include <string>

#include "prometheus/registry.h"
#include "server/metrics/exposer.h"
#include "server/metrics/metrics.h"
#include "server/metrics/session_metrics.h"
#include "tests/server/metrics/http_get.h"

namespace {

using attention::server::Method;
using attention::server::Metrics;
using attention::server::Stage;

void RecordActivity(Metrics& metrics) {
  metrics.RequestDone(Method::kAttention, grpc::StatusCode::OK, 0.0007, 4096, 2048);
  metrics.RequestDone(Method::kAttention, grpc::StatusCode::INVALID_ARGUMENT, 0.0001, 100, 0);
  metrics.RequestDone(Method::kAttentionStream, grpc::StatusCode::OK, 0.003, 65536, 32768);
  metrics.ObserveStage(Stage::kQueueWait, 0.0002);
  metrics.ObserveStage(Stage::kHostToDevice, 0.00004);
  metrics.ObserveStage(Stage::kKernel, 0.00015);
  metrics.ObserveStage(Stage::kDeviceToHost, 0.00003);
  metrics.BatchLaunched(3, 384, 1.5e9);
  metrics.SetQueueLimits(1024, int64_t{1} << 30);
  metrics.SetQueueDepth(2, 8192);
  metrics.AddInFlight(3);
  metrics.SetDeviceMemory(0, 1 << 20, 1 << 30, 1 << 22, int64_t{80} << 30, int64_t{70} << 30);
  metrics.SetDeviceMemory(1, 0, 1 << 30, 0, int64_t{80} << 30, int64_t{79} << 30);
  metrics.SetPinnedHostMemory(256 << 20, 1 << 20);
  metrics.RequestRejected("queue_full");
}

}  // namespace

int main(int argc, char** argv) {
  std::string out_path;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--out=", 0) == 0) {
      out_path = arg.substr(6);
    } else {
      std::cerr << "usage: " << argv[0] << " [--out=FILE]\n";
      return 2;
    }
  }

  auto registry = std::make_shared<prometheus::Registry>();
  attention::server::BuildInfo build_info{std::string(attention::server::ServiceVersion()),
                                          std::string(attention::server::ServiceGitCommit()),
                                          "13.0", "cuda", "NVIDIA H100 80GB HBM3"};
  Metrics metrics(registry, build_info, /*num_devices=*/2, /*cpu_backend=*/false);
  RecordActivity(metrics);
  // The session metrics, registered on the same registry as in the server.
  attention::server::SessionMetrics sessions(registry, {"cuda:0", "cuda:1"});
  sessions.CallDone(attention::server::SessionOp::kAttend, grpc::StatusCode::OK, 0.0004, 12376,
                    8226);
  attention::session::StoreCounters counters;
  counters.sessions_live = 3;
  counters.created = 3;
  counters.evicted = 1;
  counters.pools.resize(2);
  counters.pools[0] = {4096, 40, 4056, 65536, 40 * 65536};
  counters.pools[1] = {4096, 0, 4096, 65536, 0};
  sessions.Update(counters);

  auto exposer = attention::server::StartMetricsExposer("127.0.0.1:0", registry);
  if (!exposer.ok()) {
    std::cerr << exposer.status() << "\n";
    return 1;
  }
  auto response = attention::testing::HttpGet((*exposer)->port(), "/metrics");
  if (!response.ok()) {
    std::cerr << response.status() << "\n";
    return 1;
  }
  if (response->status != 200) {
    std::cerr << "GET /metrics answered HTTP " << response->status << "\n";
    return 1;
  }
  if (out_path.empty()) {
    std::cout << response->body;
    return std::cout.good() ? 0 : 1;
  }
  std::ofstream out(out_path, std::ios::binary);
  out << response->body;
  return out.good() ? 0 : 1;
}
