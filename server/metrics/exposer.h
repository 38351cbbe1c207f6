// Serves the metrics over HTTP (GET /metrics, Prometheus text format 0.0.4) on its own port, apart
// from the gRPC port: the registry's families plus the standard process_* metrics.
#ifndef ATTENTION_SERVER_METRICS_EXPOSER_H_
#define ATTENTION_SERVER_METRICS_EXPOSER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace prometheus {
class Exposer;
class Registry;
}  // namespace prometheus

namespace attention::server {

class ProcessCollector;

// A running HTTP endpoint. Destroying it stops the server (in-flight scrapes finish first).
class MetricsExposer {
 public:
  ~MetricsExposer();
  MetricsExposer(const MetricsExposer&) = delete;
  MetricsExposer& operator=(const MetricsExposer&) = delete;

  // The bound port: the requested one, or the one the kernel chose for port 0.
  int port() const { return port_; }

 private:
  friend absl::StatusOr<std::unique_ptr<MetricsExposer>> StartMetricsExposer(
      const std::string& address, std::shared_ptr<prometheus::Registry> registry);
  MetricsExposer() = default;

  // The exposer holds weak references; these keep what it serves alive as long as it runs.
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<ProcessCollector> process_collector_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

// Starts serving `registry` and the process metrics at http://<address>/metrics.
// `address` is "IPv4:port", numeric (0.0.0.0 for every interface; port 0 picks a free one), as
// the server's --metrics_address flag: the HTTP server (civetweb as Debian builds it) has no IPv6.
// INVALID_ARGUMENT when the address is malformed, UNAVAILABLE when it cannot be bound (in use,
// not a local address). Stopping takes up to ~2 s (civetweb's poll interval).
absl::StatusOr<std::unique_ptr<MetricsExposer>> StartMetricsExposer(
    const std::string& address, std::shared_ptr<prometheus::Registry> registry);

}  // namespace attention::server

#endif  // ATTENTION_SERVER_METRICS_EXPOSER_H_
