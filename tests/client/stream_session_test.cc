// Streaming sessions against the fake server: answers paired by request_id when the server
// answers out of order, per-request errors, the stream ending under pending requests, and many
// submitting threads.
#include "attention/client/stream_session.h"

#include <atomic>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/client/fake_attention_service.h"

namespace attention::client {
namespace {

using ::attention::testing::FakeAttentionService;
using ::attention::testing::FakeBehavior;
using ::attention::testing::FakeServer;
using ::testing::HasSubstr;

// A request whose q is `rows` x 4 float32 values, all equal to `marker`, so an echoed answer
// tells which request it belongs to.
v1::AttentionRequest MarkedRequest(float marker, int rows = 3) {
  std::vector<float> q(static_cast<size_t>(rows) * 4, marker);
  AttentionArgs args;
  args.q = {v1::FLOAT32, q.data(), {1, rows, 1, 4}};
  args.k = args.v = {v1::FLOAT32, q.data(), {1, rows, 1, 4}};
  return *BuildRequest(args);
}

float Marker(const v1::AttentionResponse& response) {
  float value;
  std::memcpy(&value, response.o().data().data(), sizeof(value));
  return value;
}

class StreamSessionTest : public ::testing::Test {
 protected:
  Client MakeClient(const ClientOptions& options = {}) {
    absl::StatusOr<Client> client = Client::Create(server_.address(), options);
    EXPECT_TRUE(client.ok()) << client.status();
    return *std::move(client);
  }

  FakeAttentionService service_;
  FakeServer server_{&service_};
};

TEST_F(StreamSessionTest, PairsOutOfOrderAnswersByRequestId) {
  FakeBehavior behavior;
  behavior.stream_reverse_group = 8;
  service_.set_behavior(behavior);
  Client client = MakeClient();
  std::unique_ptr<StreamSession> session = client.OpenStream();
  std::vector<std::future<absl::StatusOr<v1::AttentionResponse>>> futures;
  for (int i = 0; i < 64; ++i) futures.push_back(session->Submit(MarkedRequest(float(i))));
  for (int i = 0; i < 64; ++i) {
    absl::StatusOr<v1::AttentionResponse> r = futures[i].get();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(Marker(*r), float(i));
  }
  EXPECT_EQ(session->in_flight(), 0);
  EXPECT_TRUE(session->Finish().ok());
}

TEST_F(StreamSessionTest, RequestIdsAreUniqueAndEchoed) {
  Client client = MakeClient();
  std::unique_ptr<StreamSession> session = client.OpenStream();
  std::promise<uint64_t> echoed;
  v1::AttentionRequest request = MarkedRequest(1.f);
  request.set_request_id(12345);  // overwritten by the session
  const uint64_t id =
      session->Submit(std::move(request), [&echoed](absl::StatusOr<v1::AttentionResponse> r) {
        echoed.set_value(r.ok() ? r->request_id() : 0);
      });
  const uint64_t second = session->Submit(MarkedRequest(2.f), [](auto) {});
  EXPECT_NE(id, second);
  EXPECT_EQ(echoed.get_future().get(), id);
  EXPECT_TRUE(session->Finish().ok());
}

TEST_F(StreamSessionTest, PerRequestErrorFailsOnlyThatRequest) {
  FakeBehavior behavior;
  behavior.stream_reverse_group = 3;
  service_.set_behavior(behavior);
  Client client = MakeClient();
  std::unique_ptr<StreamSession> session = client.OpenStream();
  v1::AttentionRequest bad = MarkedRequest(5.f);
  bad.mutable_q()->set_dtype(v1::DTYPE_UNSPECIFIED);
  auto first = session->Submit(MarkedRequest(4.f));
  auto failed = session->Submit(std::move(bad));
  auto last = session->Submit(MarkedRequest(6.f));
  absl::StatusOr<v1::AttentionResponse> error = failed.get();
  EXPECT_EQ(error.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(error.status().message()), HasSubstr("q.dtype"));
  EXPECT_EQ(Marker(*first.get()), 4.f);
  EXPECT_EQ(Marker(*last.get()), 6.f);
  // The stream is still usable (one more group of three).
  std::vector<std::future<absl::StatusOr<v1::AttentionResponse>>> more;
  for (int i = 7; i < 10; ++i) more.push_back(session->Submit(MarkedRequest(float(i))));
  for (int i = 7; i < 10; ++i) EXPECT_EQ(Marker(*more[i - 7].get()), float(i));
  EXPECT_TRUE(session->Finish().ok());
}

TEST_F(StreamSessionTest, StreamFailureFailsEveryWaitingRequest) {
  FakeBehavior behavior;
  behavior.stream_reverse_group = 100;  // holds answers back
  behavior.stream_fail_after = 5;
  service_.set_behavior(behavior);
  // gRPC would replay the whole stream (nothing was answered yet) on UNAVAILABLE; without
  // retries the failure reaches the session at once.
  ClientOptions options;
  options.retry.max_attempts = 1;
  Client client = MakeClient(options);
  std::unique_ptr<StreamSession> session = client.OpenStream();
  std::vector<std::future<absl::StatusOr<v1::AttentionResponse>>> futures;
  for (int i = 0; i < 5; ++i) futures.push_back(session->Submit(MarkedRequest(float(i))));
  for (auto& f : futures) {
    absl::StatusOr<v1::AttentionResponse> r = f.get();
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
    EXPECT_EQ(r.status().message(), "fake: stream dropped");
  }
  const absl::Status status = session->Finish();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  // Refused once the session has finished.
  EXPECT_EQ(session->Submit(MarkedRequest(9.f)).get().status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(StreamSessionTest, StreamDeadlineFailsWaitingRequests) {
  FakeBehavior behavior;
  behavior.delay = std::chrono::milliseconds(2000);
  service_.set_behavior(behavior);
  Client client = MakeClient();
  CallOptions call;
  call.timeout = std::chrono::milliseconds(100);
  std::unique_ptr<StreamSession> session = client.OpenStream(call);
  auto pending = session->Submit(MarkedRequest(1.f));
  EXPECT_EQ(pending.get().status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(session->Finish().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST_F(StreamSessionTest, DestructorCancelsWaitingRequests) {
  FakeBehavior behavior;
  behavior.stream_reverse_group = 100;
  service_.set_behavior(behavior);
  Client client = MakeClient();
  std::future<absl::StatusOr<v1::AttentionResponse>> pending;
  {
    std::unique_ptr<StreamSession> session = client.OpenStream();
    pending = session->Submit(MarkedRequest(1.f));
  }
  EXPECT_EQ(pending.get().status().code(), absl::StatusCode::kCancelled);
}

TEST_F(StreamSessionTest, ManyThreadsManyRequestsInFlight) {
  FakeBehavior behavior;
  behavior.stream_reverse_group = 4;
  service_.set_behavior(behavior);
  Client client = MakeClient();
  std::unique_ptr<StreamSession> session = client.OpenStream();
  constexpr int kThreads = 4, kPerThread = 100;
  std::atomic<int> good{0}, bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const float marker = float(t * kPerThread + i);
        session->Submit(MarkedRequest(marker, 1 + i % 7),
                        [&, marker](absl::StatusOr<v1::AttentionResponse> r) {
                          (r.ok() && Marker(*r) == marker ? good : bad)++;
                        });
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  // The fake answers the last partial group when the client half-closes.
  EXPECT_TRUE(session->Finish().ok());
  EXPECT_EQ(good.load(), kThreads * kPerThread);
  EXPECT_EQ(bad.load(), 0);
}

TEST_F(StreamSessionTest, CallerMayReuseARequestOnceItsCallbackRan) {
  Client client = MakeClient();
  std::unique_ptr<StreamSession> session = client.OpenStream();
  auto request = std::make_shared<v1::AttentionRequest>(MarkedRequest(0.f));
  for (int i = 0; i < 20; ++i) {
    float* q = reinterpret_cast<float*>(request->mutable_q()->mutable_data()->data());
    q[0] = float(i);
    std::promise<float> answer;
    session->Submit(request, [&answer](absl::StatusOr<v1::AttentionResponse> r) {
      answer.set_value(r.ok() ? Marker(*r) : -1.f);
    });
    EXPECT_EQ(answer.get_future().get(), float(i));
  }
  EXPECT_TRUE(session->Finish().ok());
}

}  // namespace
}  // namespace attention::client
