// The transport limits of attention_server against the real binary: the keepalive policy (a
// client pinging as often as --keepalive_min_client_interval_s allows keeps its connection; one
// pinging more often is told too_many_pings), --max_connection_age_s with its grace (calls move
// to a new connection without an error; a stream longer than age + grace is ended, and answered
// for), and --max_concurrent_streams (the client queues what is over the limit).
#include <signal.h>

#include <chrono>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "attention/v1/attention.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/reliability/reliability_util.h"
#include "tests/server/server_process.h"
#include "tests/server/server_test_util.h"

namespace attention::reliability {
namespace {

using ::attention::testing::CompareWithReference;
using ::attention::testing::Connect;
using ::attention::testing::MakeRequest;
using ::attention::testing::RequestOptions;
using ::attention::testing::ServerProcess;
using namespace std::chrono_literals;

v1::AttentionRequest Small(std::mt19937& rng, uint64_t id) {
  RequestOptions o;
  o.seqlen_q = o.seqlen_k = 16;
  o.head_dim = 16;
  return MakeRequest(o, id, rng);
}

// A channel of its own (no subchannel shared with other channels of this process) that pings
// every second, even without calls.
std::shared_ptr<grpc::Channel> PingingChannel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 1000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  args.SetInt(GRPC_ARG_HTTP2_MIN_SENT_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

// Connects `channel` with one call, then reports whether its connection stayed READY, idle,
// for `idle` (false: the server closed it).
bool StaysConnected(const std::shared_ptr<grpc::Channel>& channel, std::chrono::milliseconds idle,
                    std::mt19937& rng) {
  auto stub = v1::AttentionService::NewStub(channel);
  v1::AttentionResponse response;
  grpc::ClientContext context;
  if (!stub->Attention(&context, Small(rng, 1), &response).ok()) return false;
  if (channel->GetState(false) != GRPC_CHANNEL_READY) return false;
  return !channel->WaitForStateChange(GRPC_CHANNEL_READY, std::chrono::system_clock::now() + idle);
}

TEST(TransportLimitsTest, KeepalivePolicy) {
  // Four pings without data break gRPC's default policy (a ping every 5 minutes without calls,
  // two strikes allowed) by the fourth second; with --keepalive_min_client_interval_s=1 they are
  // within it. Both servers are watched at once.
  ServerProcess lenient, strict;
  ASSERT_EQ(lenient.Start({"--keepalive_min_client_interval_s=1"}), "");
  ASSERT_EQ(strict.Start({"--keepalive_min_client_interval_s=300"}), "");
  std::mt19937 rng_a(1), rng_b(2);
  auto strict_result = std::async(std::launch::async, [&] {
    return StaysConnected(PingingChannel(strict.address()), 6s, rng_b);
  });
  EXPECT_TRUE(StaysConnected(PingingChannel(lenient.address()), 5s, rng_a))
      << "a client within the keepalive policy was disconnected";
  EXPECT_FALSE(strict_result.get()) << "the stricter policy did not apply (the test cannot fail)";
  lenient.Signal(SIGTERM);
  strict.Signal(SIGTERM);
  EXPECT_EQ(lenient.Wait(30s), 0);
  EXPECT_EQ(strict.Wait(30s), 0);
}

TEST(TransportLimitsTest, MaxConnectionAgeMovesCallsAndEndsLongStreamsAfterGrace) {
  ServerProcess server;
  ASSERT_EQ(server.Start({"--max_connection_age_s=1", "--max_connection_age_grace_s=1",
                          "--metrics_address=127.0.0.1:0"}),
            "");
  const Metrics before = Scrape(server);
  auto channel = Connect(server.address());
  auto stub = v1::AttentionService::NewStub(channel);
  std::mt19937 rng(3);

  // A stream opened on the first connection, used throughout.
  grpc::ClientContext stream_context;
  auto stream = stub->AttentionStream(&stream_context);
  int stream_sent = 0, stream_answered = 0;
  const auto start = Clock::now();
  // Unary calls every 50 ms for 3.5 s: each connection is asked to go away after about a second
  // and closed a second later; calls move to the next connection without failing.
  int unary = 0;
  bool stream_open = true;
  auto stream_end = Clock::time_point::max();
  while (Clock::now() - start < 3500ms) {
    const v1::AttentionRequest request = Small(rng, 100 + unary);
    v1::AttentionResponse response;
    grpc::ClientContext context;
    context.set_wait_for_ready(true);
    context.set_deadline(std::chrono::system_clock::now() + 10s);
    const grpc::Status status = stub->Attention(&context, request, &response);
    ASSERT_TRUE(status.ok())
        << "call " << unary << " after "
        << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count()
        << " ms: " << status.error_message();
    EXPECT_EQ(CompareWithReference(request, response), "");
    ++unary;
    if (stream_open) {
      if (stream->Write(Small(rng, 1000 + stream_sent))) {
        ++stream_sent;
        v1::AttentionResponse answer;
        if (stream->Read(&answer)) {
          ++stream_answered;
        } else {
          stream_open = false;
        }
      } else {
        stream_open = false;
      }
      if (!stream_open) stream_end = Clock::now();
    }
    std::this_thread::sleep_for(50ms);
  }
  // The stream outlived age + grace (1 s + 1 s, +-10% jitter): it was ended, not left open.
  EXPECT_FALSE(stream_open);
  const grpc::Status stream_status = stream->Finish();
  EXPECT_EQ(stream_status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << stream_status.error_message();
  EXPECT_GT(stream_end - start, 1500ms);
  EXPECT_GT(stream_answered, 5);
  // Every request the server read was answered exactly once: the unary calls, and the stream's
  // (the last one written may not have reached the server before the connection closed).
  Metrics settled;
  ASSERT_TRUE(WaitForMetrics(server, [&](const Metrics& m) {
    settled = m;
    return InFlight(m) == 0;
  }));
  const double answered = Answered(settled) - Answered(before);
  EXPECT_GE(answered, unary + stream_answered);
  EXPECT_LE(answered, unary + stream_sent);
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(30s), 0);
}

TEST(TransportLimitsTest, MaxConcurrentStreamsQueuesTheRestOnTheClient) {
  ServerProcess server;
  ASSERT_EQ(server.Start({"--max_concurrent_streams=2"}), "");
  auto channel = Connect(server.address());
  auto stub = v1::AttentionService::NewStub(channel);
  std::mt19937 rng(4);
  // Two streams open and answering: the connection's limit.
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<
      std::unique_ptr<grpc::ClientReaderWriter<v1::AttentionRequest, v1::AttentionResponse>>>
      streams;
  for (int i = 0; i < 2; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    streams.push_back(stub->AttentionStream(contexts.back().get()));
    ASSERT_TRUE(streams.back()->Write(Small(rng, i)));
    v1::AttentionResponse answer;
    ASSERT_TRUE(streams.back()->Read(&answer));
  }
  // A third call waits on the client for a free stream...
  v1::AttentionRequest third_request = Small(rng, 3);
  v1::AttentionResponse third_response;
  grpc::ClientContext third_context;
  third_context.set_deadline(std::chrono::system_clock::now() + 20s);
  std::promise<grpc::Status> third_done;
  stub->async()->Attention(&third_context, &third_request, &third_response,
                           [&](grpc::Status s) { third_done.set_value(s); });
  auto third = third_done.get_future();
  EXPECT_EQ(third.wait_for(500ms), std::future_status::timeout)
      << "a third stream ran beside two open ones";
  // ... and runs once one of the two ends.
  streams[0]->WritesDone();
  EXPECT_TRUE(streams[0]->Finish().ok());
  ASSERT_EQ(third.wait_for(10s), std::future_status::ready);
  const grpc::Status status = third.get();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(CompareWithReference(third_request, third_response), "");
  streams[1]->WritesDone();
  EXPECT_TRUE(streams[1]->Finish().ok());
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(30s), 0);
}

}  // namespace
}  // namespace attention::reliability
