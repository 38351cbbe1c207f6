#include "tests/reliability/reliability_util.h"

#include <thread>
#include <vector>

#include "attention/v1/attention.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"

namespace attention::reliability {

using ::attention::testing::CompareWithReference;
using ::attention::testing::Connect;
using ::attention::testing::HealthStatus;
using ::attention::testing::MakeRequest;
using ::attention::testing::RequestOptions;
using ::attention::testing::ServerProcess;
using namespace std::chrono_literals;

Metrics Scrape(ServerProcess& server) {
  return testing::ParseMetrics(testing::HttpGet(server.metrics_port(), "/metrics"));
}

double Answered(const Metrics& m, const std::string& code) {
  return testing::SumMetric(m, "attention_requests_total",
                            code.empty() ? std::vector<std::string>{}
                                         : std::vector<std::string>{"code=\"" + code + "\""});
}
double InFlight(const Metrics& m) { return testing::SumMetric(m, "attention_in_flight_requests"); }
double Queued(const Metrics& m) { return testing::SumMetric(m, "attention_queue_requests"); }
double Launches(const Metrics& m) {
  return testing::SumMetric(m, "attention_batch_size_requests_count");
}

bool WaitForMetrics(ServerProcess& server, const std::function<bool(const Metrics&)>& done,
                    std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (done(Scrape(server))) return true;
    std::this_thread::sleep_for(5ms);
  }
  return false;
}

void ExpectBalanced(ServerProcess& server, const Metrics& before, double received) {
  Metrics now;
  EXPECT_TRUE(WaitForMetrics(server,
                             [&](const Metrics& m) {
                               now = m;
                               return InFlight(m) == 0 &&
                                      Answered(m) - Answered(before) >= received;
                             }))
      << "in flight " << InFlight(now) << ", answered " << Answered(now) - Answered(before)
      << " of " << received;
  // Settled: nothing answered twice, nothing extra.
  std::this_thread::sleep_for(50ms);
  now = Scrape(server);
  EXPECT_EQ(InFlight(now), 0);
  EXPECT_EQ(Answered(now) - Answered(before), received);
}

void ExpectServing(ServerProcess& server, std::mt19937& rng) {
  auto channel = Connect(server.address());
  EXPECT_EQ(HealthStatus(channel, ""), "SERVING");
  auto stub = v1::AttentionService::NewStub(channel);
  RequestOptions o;
  const v1::AttentionRequest request = MakeRequest(o, 424242, rng);
  v1::AttentionResponse response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + 30s);
  const grpc::Status status = stub->Attention(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(CompareWithReference(request, response), "");
}

}  // namespace attention::reliability
