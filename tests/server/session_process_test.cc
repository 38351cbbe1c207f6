// The session service in the real attention_server binary ($ATTN_SERVER_BINARY, CPU backend):
// two replicas on loopback with the client routing each session to its replica (and a call to
// the wrong replica answered FAILED_PRECONDITION naming the owner), a client that vanishes (its
// session's idle TTL frees its pages, seen in /metrics), and SIGTERM with sessions open and
// Attend calls in flight (every call answered, exit 0).
#include <signal.h>

#include <atomic>
#include <chrono>
#include <future>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention/client/session.h"
#include "attention/v1/attention.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/server_process.h"
#include "tests/server/session_test_harness.h"

namespace attention::testing {
namespace {

using ::testing::HasSubstr;

constexpr int kKvHeads = 2, kHeadDim = 32;

client::SessionOptions Shape() {
  client::SessionOptions o;
  o.layers = 2;
  o.kv_heads = kKvHeads;
  o.head_dim = kHeadDim;
  o.dtype = v1::BFLOAT16;
  return o;
}

// One decode step with k_new / v_new on `layer`, checked against the model.
std::string DecodeStep(const client::Session& session, SessionModel& model, int layer,
                       std::mt19937& rng) {
  v1::AttendRequest a;
  a.set_session_id(session.id());
  a.set_layer(layer);
  *a.mutable_q() = RandomTensor(v1::BFLOAT16, {1, 4, kHeadDim}, rng);
  *a.mutable_k_new() = RandomTensor(v1::BFLOAT16, {1, kKvHeads, kHeadDim}, rng);
  *a.mutable_v_new() = RandomTensor(v1::BFLOAT16, {1, kKvHeads, kHeadDim}, rng);
  a.set_causal(true);
  a.set_return_lse(true);
  v1::SessionRequest request;
  *request.mutable_attend() = a;
  std::promise<absl::StatusOr<v1::SessionResponse>> promise;
  auto answer = promise.get_future();
  session.Call(std::move(request), [&promise](absl::StatusOr<v1::SessionResponse> r) {
    promise.set_value(std::move(r));
  });
  absl::StatusOr<v1::SessionResponse> r = answer.get();
  if (!r.ok()) return r.status().ToString();
  model.Append(layer, a.k_new().data(), a.v_new().data());
  return CheckAttend(model, a, r->attend());
}

void Prefill(const client::Session& session, SessionModel& model, int64_t n, std::mt19937& rng) {
  for (int layer = 0; layer < model.layers; ++layer) {
    const std::string k = RandomValues(v1::BFLOAT16, n * kKvHeads * kHeadDim, rng);
    const std::string v = RandomValues(v1::BFLOAT16, n * kKvHeads * kHeadDim, rng);
    const std::vector<int64_t> shape = {n, kKvHeads, kHeadDim};
    absl::StatusOr<int64_t> tokens =
        session.Append(layer, {v1::BFLOAT16, k.data(), shape}, {v1::BFLOAT16, v.data(), shape});
    ASSERT_TRUE(tokens.ok()) << tokens.status();
    model.Append(layer, k, v);
  }
}

TEST(SessionProcessTest, TwoReplicasOnLoopbackRouteEachSessionToItsOwner) {
  ServerProcess alpha, beta;
  ASSERT_EQ(alpha.Start({"--replica_name=alpha"}), "");
  ASSERT_EQ(beta.Start({"--replica_name=beta"}), "");
  const std::map<std::string, std::string> addresses = {{"alpha", alpha.address()},
                                                        {"beta", beta.address()}};
  client::SessionClientOptions options;
  options.resolve = [&addresses](std::string_view replica) -> absl::StatusOr<std::string> {
    auto it = addresses.find(std::string(replica));
    if (it == addresses.end()) return absl::NotFoundError("no such replica");
    return it->second;
  };
  // CreateSession spreads over both (round robin over the address list); every later call goes
  // to the session's own replica.
  absl::StatusOr<client::SessionClient> client =
      client::SessionClient::Create(absl::StrCat(alpha.address(), ",", beta.address()), options);
  ASSERT_TRUE(client.ok()) << client.status();
  std::mt19937 rng(7);
  std::vector<client::Session> sessions;
  std::vector<SessionModel> models;
  std::map<std::string, int> per_replica;
  for (int i = 0; i < 6; ++i) {
    absl::StatusOr<client::Session> s = client->CreateSession(Shape());
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_THAT(s->id(), ::testing::EndsWith("@" + s->replica()));
    ++per_replica[s->replica()];
    sessions.push_back(*s);
    models.emplace_back(v1::BFLOAT16, 2, kKvHeads, kHeadDim);
    Prefill(sessions.back(), models.back(), 20 + i, rng);
  }
  EXPECT_EQ(per_replica.size(), 2u) << "every session was created on one replica";
  for (int step = 0; step < 3; ++step) {
    for (size_t i = 0; i < sessions.size(); ++i) {
      for (int layer = 0; layer < 2; ++layer) {
        EXPECT_EQ(DecodeStep(sessions[i], models[i], layer, rng), "") << sessions[i].replica();
      }
    }
  }
  // A call sent to the other replica is refused, naming the owner.
  const client::Session& session = sessions[0];
  const std::string owner = session.replica();
  const std::string other = owner == "alpha" ? beta.address() : alpha.address();
  auto stub =
      v1::SessionService::NewStub(grpc::CreateChannel(other, grpc::InsecureChannelCredentials()));
  v1::GetSessionRequest get;
  get.set_session_id(session.id());
  v1::GetSessionResponse info;
  grpc::ClientContext context;
  const grpc::Status wrong = stub->GetSession(&context, get, &info);
  EXPECT_EQ(wrong.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(wrong.error_message(), HasSubstr("is held by replica " + owner));
}

TEST(SessionProcessTest, AClientThatVanishesHasItsPagesFreedByTheTtl) {
  ServerProcess server;
  ASSERT_EQ(server.Start({"--metrics_address=127.0.0.1:0", "--replica_name=r0"}), "");
  std::string id;
  {
    absl::StatusOr<client::SessionClient> client = client::SessionClient::Create(server.address());
    ASSERT_TRUE(client.ok());
    client::SessionOptions shape = Shape();
    shape.idle_ttl = std::chrono::milliseconds(300);
    absl::StatusOr<client::Session> s = client->CreateSession(shape);
    ASSERT_TRUE(s.ok()) << s.status();
    id = s->id();
    SessionModel model(v1::BFLOAT16, 2, kKvHeads, kHeadDim);
    std::mt19937 rng(11);
    Prefill(*s, model, 500, rng);
    EXPECT_EQ(DecodeStep(*s, model, 0, rng), "");
    // The client goes away without releasing its session.
  }
  auto used_pages = [&server] {
    return SumMetric(ParseMetrics(HttpGet(server.metrics_port(), "/metrics")),
                     "attention_session_pages", {"state=\"used\""});
  };
  // The metrics are refreshed every second, the sweeper runs every second, the TTL is 0.3 s.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  double expired = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    const auto metrics = ParseMetrics(HttpGet(server.metrics_port(), "/metrics"));
    expired = SumMetric(metrics, "attention_sessions_ended_total", {"reason=\"expired\""});
    if (expired == 1 && used_pages() == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_EQ(expired, 1);
  EXPECT_EQ(used_pages(), 0);
  absl::StatusOr<client::SessionClient> again = client::SessionClient::Create(server.address());
  ASSERT_TRUE(again.ok());
  absl::StatusOr<client::Session> handle = again->Attach(id);
  ASSERT_TRUE(handle.ok());
  absl::StatusOr<v1::GetSessionResponse> info = handle->Info();
  EXPECT_EQ(info.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(info.status().message(), HasSubstr("expired after 300ms idle"));
}

TEST(SessionProcessTest, SigtermWithSessionsOpenAnswersEveryCallAndExitsZero) {
  ServerProcess server;
  ASSERT_EQ(server.Start({"--replica_name=r0", "--drain_timeout_s=20"}), "");
  absl::StatusOr<client::SessionClient> client = client::SessionClient::Create(server.address());
  ASSERT_TRUE(client.ok());
  std::mt19937 rng(13);
  std::vector<client::Session> sessions;
  for (int i = 0; i < 8; ++i) {
    absl::StatusOr<client::Session> s = client->CreateSession(Shape());
    ASSERT_TRUE(s.ok()) << s.status();
    SessionModel model(v1::BFLOAT16, 2, kKvHeads, kHeadDim);
    Prefill(*s, model, 300, rng);
    sessions.push_back(*s);
  }
  // Every session keeps an Attend in flight until the stream ends.
  std::atomic<int> ok{0}, unavailable{0}, other{0};
  std::atomic<int> outstanding{0};
  std::atomic<bool> stop{false};
  std::function<void(size_t)> next = [&](size_t i) {
    if (stop.load()) return;
    v1::SessionRequest r;
    v1::AttendRequest* a = r.mutable_attend();
    a->set_session_id(sessions[i].id());
    *a->mutable_q() = RandomTensor(v1::BFLOAT16, {8, 4, kHeadDim}, rng);
    a->set_causal(true);
    ++outstanding;
    sessions[i].Call(std::move(r), [&](absl::StatusOr<v1::SessionResponse> answer) {
      if (answer.ok()) {
        ++ok;
      } else if (answer.status().code() == absl::StatusCode::kUnavailable) {
        ++unavailable;
        stop = true;
      } else {
        ++other;
        ADD_FAILURE() << answer.status();
      }
      --outstanding;
    });
  };
  for (int round = 0; round < 5; ++round) {
    for (size_t i = 0; i < sessions.size(); ++i) next(i);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  server.Signal(SIGTERM);
  for (int round = 0; round < 5 && !stop.load(); ++round) {
    for (size_t i = 0; i < sessions.size(); ++i) next(i);
  }
  EXPECT_EQ(server.Wait(std::chrono::seconds(30)), 0) << server.Output();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (outstanding.load() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(outstanding.load(), 0);
  EXPECT_GT(ok.load(), 0);
  EXPECT_EQ(other.load(), 0);
  EXPECT_THAT(server.Output(), HasSubstr("exit_code=0"));
}

}  // namespace
}  // namespace attention::testing
