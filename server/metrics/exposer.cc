#include "server/metrics/exposer.h"

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

// Checks "host:port" with a numeric port in [0, 65535] and a non-empty host ("[...]" for IPv6).
absl::Status ValidateAddress(std::string_view address) {
  const size_t colon = address.rfind(':');
  const auto invalid = [&](std::string_view rule) {
    return absl::InvalidArgumentError("metrics_address \"" + std::string(address) +
                                      "\": " + std::string(rule));
  };
  if (colon == std::string_view::npos || colon == 0) {
    return invalid("must be host:port, e.g. 0.0.0.0:9464 or [::]:9464");
  }
  const std::string_view host = address.substr(0, colon);
  if (host.find(':') != std::string_view::npos &&
      (host.front() != '[' || host.back() != ']' || host.size() < 3)) {
    return invalid("an IPv6 host must be in brackets, e.g. [::1]:9464");
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
