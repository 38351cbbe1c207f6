#include "server/metrics/exposer.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <charconv>
#include <exception>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"
#include "server/metrics/process_collector.h"

namespace attention::server {
namespace {

// Checks "IPv4:port" with a numeric port in [0, 65535]. The HTTP server (civetweb, as Debian
// builds it) has no IPv6 support and resolves no host names, so anything else would only fail
// later with a vaguer message.
absl::Status ValidateAddress(std::string_view address) {
  const auto invalid = [&](std::string_view rule) {
    return absl::InvalidArgumentError("metrics_address \"" + std::string(address) +
                                      "\": " + std::string(rule));
  };
  const size_t colon = address.rfind(':');
  if (colon == std::string_view::npos) return invalid("must be IPv4:port, e.g. 0.0.0.0:9464");
  const std::string host(address.substr(0, colon));
  in_addr ipv4{};
  if (inet_pton(AF_INET, host.c_str(), &ipv4) != 1) {
    return invalid(
        "host must be a numeric IPv4 address (e.g. 0.0.0.0 or 127.0.0.1); IPv6 and "
        "host names are not supported by the metrics HTTP server");
  }
  const std::string_view port = address.substr(colon + 1);
  int value = -1;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || value < 0 ||
      value > 65535) {
    return invalid("port must be a number in [0, 65535]");
  }
  return absl::OkStatus();
}

}  // namespace

MetricsExposer::~MetricsExposer() = default;

absl::StatusOr<std::unique_ptr<MetricsExposer>> StartMetricsExposer(
    const std::string& address, std::shared_ptr<prometheus::Registry> registry) {
  if (registry == nullptr) return absl::InvalidArgumentError("metrics registry is null");
  if (absl::Status status = ValidateAddress(address); !status.ok()) return status;

  std::unique_ptr<MetricsExposer> exposer(new MetricsExposer());
  exposer->registry_ = std::move(registry);
  exposer->process_collector_ = std::make_shared<ProcessCollector>();
  try {
    // Two threads: scrapes are rare (every few seconds) and each is cheap.
    exposer->exposer_ = std::make_unique<prometheus::Exposer>(address, 2);
  } catch (const std::exception& e) {
    return absl::UnavailableError("cannot serve metrics on " + address + ": " + e.what());
  }
  exposer->exposer_->RegisterCollectable(exposer->registry_);
  exposer->exposer_->RegisterCollectable(exposer->process_collector_);
  const std::vector<int> ports = exposer->exposer_->GetListeningPorts();
  if (ports.empty()) {
    return absl::UnavailableError("cannot serve metrics on " + address + ": no listening port");
  }
  exposer->port_ = ports.front();
  return exposer;
}

}  // namespace attention::server
