#include "server/metrics/exposer.h"

#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "server/metrics/metrics.h"
#include "tests/server/metrics/http_get.h"

namespace attention::server {
namespace {

using ::testing::HasSubstr;

TEST(ExposerTest, ServesTheRegistryAndProcessMetricsOnAFreePort) {
  auto registry = std::make_shared<prometheus::Registry>();
  Metrics metrics(registry, BuildInfo{"1", "c", "", "cpu", "cpu"}, 1, true);
  metrics.RequestDone(Method::kAttention, grpc::StatusCode::OK, 0.003, 10, 20);
  auto exposer = StartMetricsExposer("127.0.0.1:0", registry);
  ASSERT_TRUE(exposer.ok()) << exposer.status();
  const int port = (*exposer)->port();
  EXPECT_GT(port, 0);

  auto response = attention::testing::HttpGet(port, "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_THAT(response->content_type, HasSubstr("text/plain"));
  EXPECT_THAT(response->body,
              HasSubstr("attention_requests_total{code=\"OK\",method=\"Attention\"} 1\n"));
  EXPECT_THAT(response->body,
              HasSubstr("attention_request_duration_seconds_bucket{method=\"Attention\","
                        "le=\"0.005\"} 1\n"));
  EXPECT_THAT(response->body, HasSubstr("# TYPE process_cpu_seconds_total counter\n"));
  EXPECT_THAT(response->body, HasSubstr("# TYPE process_resident_memory_bytes gauge\n"));
  EXPECT_THAT(response->body, HasSubstr("# TYPE process_open_fds gauge\n"));

  // Values are read at scrape time.
  metrics.RequestDone(Method::kAttention, grpc::StatusCode::OK, 0.003, 10, 20);
  response = attention::testing::HttpGet(port, "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_THAT(response->body,
              HasSubstr("attention_requests_total{code=\"OK\",method=\"Attention\"} 2\n"));

  // Stopping it closes the port.
  exposer->reset();
  EXPECT_FALSE(attention::testing::HttpGet(port, "/metrics").ok());
}

TEST(ExposerTest, KeepsTheRegistryAliveWhileServing) {
  auto registry = std::make_shared<prometheus::Registry>();
  auto metrics =
      std::make_unique<Metrics>(registry, BuildInfo{"1", "c", "", "cpu", "cpu"}, 1, true);
  auto exposer = StartMetricsExposer("127.0.0.1:0", registry);
  ASSERT_TRUE(exposer.ok()) << exposer.status();
  metrics->AddInFlight(4);
  metrics.reset();
  registry.reset();
  auto response = attention::testing::HttpGet((*exposer)->port(), "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_THAT(response->body, HasSubstr("attention_in_flight_requests 4\n"));
}

TEST(ExposerTest, PortInUseIsUnavailable) {
  auto registry = std::make_shared<prometheus::Registry>();
  auto first = StartMetricsExposer("127.0.0.1:0", registry);
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string taken = "127.0.0.1:" + std::to_string((*first)->port());
  auto second = StartMetricsExposer(taken, registry);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(second.status().message()), HasSubstr(taken));
}

TEST(ExposerTest, NonLocalAddressIsUnavailable) {
  // 192.0.2.0/24 is reserved for documentation (RFC 5737): never a local address.
  auto exposer = StartMetricsExposer("192.0.2.1:0", std::make_shared<prometheus::Registry>());
  ASSERT_FALSE(exposer.ok());
  EXPECT_EQ(exposer.status().code(), absl::StatusCode::kUnavailable);
}

TEST(ExposerTest, MalformedAddressesAreInvalidArguments) {
  for (const std::string address :
       {"", "9464", ":9464", "127.0.0.1", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:65536",
        "127.0.0.1:-1", "::1:9464", "[]:9464", "[::1]:9464", "[::]:0", "localhost:9464",
        "127.0.0.1:94 64", "127.0.0.256:9464"}) {
    SCOPED_TRACE(address);
    auto exposer = StartMetricsExposer(address, std::make_shared<prometheus::Registry>());
    ASSERT_FALSE(exposer.ok());
    EXPECT_EQ(exposer.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(exposer.status().message()), HasSubstr("metrics_address"));
  }
  auto exposer = StartMetricsExposer("127.0.0.1:0", nullptr);
  ASSERT_FALSE(exposer.ok());
  EXPECT_EQ(exposer.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace attention::server
