// Starts the real attention_server binary (path in $ATTN_SERVER_BINARY) on a free loopback port
// and calls it through gRPC: unary and stream results against the float64 reference, invalid
// requests (INVALID_ARGUMENT, the server stays up), configured limits, messages above gRPC's
// 4 MiB default, health and reflection, client cancellation, and a SIGTERM drain that answers
// every accepted request and exits 0.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <future>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "attention/v1/attention.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/server/server_process.h"
#include "tests/server/server_test_util.h"
#include "tests/server/shared_server_test.h"

namespace attention::server {
namespace {

using testing::CompareWithReference;
using testing::Connect;
using testing::FromBuffer;
using ::testing::HasSubstr;
using testing::HealthStatus;
using testing::LogField;
using testing::MakeRequest;
using testing::RequestOptions;
using testing::ServerProcess;
using testing::ToBuffer;
using namespace std::chrono_literals;

// Lists services through grpc.reflection.v1alpha (ServerReflectionRequest.list_services = "");
// returns the raw response bytes, which hold the service names.
std::string ReflectionListServices(const std::shared_ptr<grpc::Channel>& channel) {
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + 10s);
  auto call = stub.PrepareCall(
      &context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  auto step = [&cq](int expected) {
    void* tag = nullptr;
    bool ok = false;
    return cq.Next(&tag, &ok) && ok && tag == reinterpret_cast<void*>(expected);
  };
  call->StartCall(reinterpret_cast<void*>(1));
  if (!step(1)) return "";
  const grpc::ByteBuffer request = ToBuffer(std::string{0x3a, 0x00});  // list_services = ""
  call->Write(request, reinterpret_cast<void*>(2));
  if (!step(2)) return "";
  call->WritesDone(reinterpret_cast<void*>(3));
  if (!step(3)) return "";
  grpc::ByteBuffer response;
  call->Read(&response, reinterpret_cast<void*>(4));
  if (!step(4)) return "";
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  step(5);
  return FromBuffer(response);
}

class ServiceTest : public testing::SharedServerTest<ServiceTest> {
 public:
  static std::vector<std::string> ServerFlags() { return {}; }

 protected:
  std::mt19937 rng_{21};
};

std::vector<RequestOptions> VariedRequests() {
  std::vector<RequestOptions> list;
  RequestOptions o;
  o.dtype = v1::BFLOAT16;
  o.batch = 2;
  o.seqlen_q = 33;
  o.seqlen_k = 47;
  o.q_heads = 8;
  o.kv_heads = 2;
  o.head_dim = 64;
  o.causal = true;
  list.push_back(o);
  RequestOptions p;
  p.dtype = v1::FLOAT16;
  p.seqlens_q = {5, 19, 1};
  p.seqlens_k = {9, 19, 30};
  p.q_heads = 4;
  p.kv_heads = 4;
  p.head_dim = 32;
  p.alibi = 1;
  p.return_lse = true;
  list.push_back(p);
  RequestOptions f;
  f.dtype = v1::FLOAT32;
  f.batch = 1;
  f.seqlen_q = 17;
  f.seqlen_k = 23;
  f.q_heads = 2;
  f.kv_heads = 1;
  f.head_dim = 128;
  f.softcap = 20.f;
  f.window_left = 8;
  f.window_right = 2;
  f.mask_dtype = v1::BOOL;
  f.mask_shape = {1, 1, 17, 23};
  f.return_lse = true;
  list.push_back(f);
  RequestOptions a;
  a.dtype = v1::BFLOAT16;
  a.batch = 3;
  a.seqlen_q = 1;
  a.seqlen_k = 40;
  a.q_heads = 4;
  a.kv_heads = 4;
  a.head_dim = 16;
  a.mask_dtype = v1::BFLOAT16;
  a.mask_shape = {4, 1, 40};
  a.alibi = 2;
  a.softmax_scale = 0.5f;
  list.push_back(a);
  // head_dims that are not multiples of 8: a GPU server pads their rows (PlanHeadDim).
  RequestOptions odd;
  odd.dtype = v1::BFLOAT16;
  odd.batch = 2;
  odd.seqlen_q = 21;
  odd.seqlen_k = 45;
  odd.q_heads = 6;
  odd.kv_heads = 2;
  odd.head_dim = 36;
  odd.causal = true;
  odd.return_lse = true;
  list.push_back(odd);
  RequestOptions tiny;
  tiny.dtype = v1::FLOAT32;
  tiny.seqlens_q = {3, 12};
  tiny.seqlens_k = {7, 12};
  tiny.q_heads = 3;
  tiny.kv_heads = 1;
  tiny.head_dim = 5;
  tiny.window_left = 4;
  tiny.window_right = 1;
  list.push_back(tiny);
  return list;
}

TEST_F(ServiceTest, UnaryMatchesReference) {
  uint64_t id = 1;
  for (const RequestOptions& options : VariedRequests()) {
    const v1::AttentionRequest request = MakeRequest(options, id++, rng_);
    v1::AttentionResponse response;
    const grpc::Status status = Call(request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(CompareWithReference(request, response), "");
    EXPECT_EQ(response.request_id(), request.request_id());
    EXPECT_GT(response.timings().total_ns(), 0);
    EXPECT_GE(response.timings().total_ns(), response.timings().kernel_ns());
    // "cpu", or "cuda:N" when the suite runs against the GPU executor.
    EXPECT_EQ(response.batch().device().rfind(attention::testing::ServerBackendUnderTest(), 0), 0u)
        << response.batch().device();
    EXPECT_GE(response.batch().requests(), 1);
  }
}

// A random request the way an outside client probes the service: any dtype, dense or ragged
// packed batches (empty sequences included), GQA / MQA, head dims 1 to 256, causal, windows,
// softcap, scale, ALiBi, masks (dense batches; every mask dtype and broadcast shape), sinks, LSE
// and FP8 descales, small enough for the float64 reference.
RequestOptions RandomOptions(std::mt19937& g) {
  const auto pick = [&g](int n) { return std::uniform_int_distribution<int>(0, n - 1)(g); };
  const auto coin = [&g](double p) { return std::bernoulli_distribution(p)(g); };
  RequestOptions o;
  constexpr v1::DType kDTypes[] = {v1::BFLOAT16, v1::FLOAT16, v1::FLOAT32, v1::FLOAT8_E4M3};
  o.dtype = kDTypes[pick(4)];
  constexpr int kGroups[] = {1, 1, 2, 4, 8};
  o.kv_heads = 1 + pick(3);
  o.q_heads = o.kv_heads * kGroups[pick(5)];
  constexpr int kDims[] = {8, 16, 32, 40, 64, 72, 80, 96, 112, 128, 160, 192, 200, 224, 256};
  o.head_dim = coin(0.5) ? kDims[pick(15)] : 1 + pick(256);
  const bool packed = coin(0.4);
  if (packed) {
    const int n = 1 + pick(4);
    for (int i = 0; i < n; ++i) {
      o.seqlens_q.push_back(pick(4) == 0 ? 0 : 1 + pick(40));
      o.seqlens_k.push_back(pick(6) == 0 ? 0 : 1 + pick(60));
    }
    if (std::all_of(o.seqlens_q.begin(), o.seqlens_q.end(), [](int n) { return n == 0; })) {
      o.seqlens_q[0] = 1;  // a request holds at least one query row (INVALID_ARGUMENT otherwise)
    }
    if (std::all_of(o.seqlens_k.begin(), o.seqlens_k.end(), [](int n) { return n == 0; })) {
      o.seqlens_k[0] = 1;  // and at least one key row
    }
  } else {
    o.batch = 1 + pick(3);
    o.seqlen_q = coin(0.25) ? 1 : 1 + pick(48);
    o.seqlen_k = 1 + pick(64);
  }
  o.causal = coin(0.4);
  if (coin(0.25)) {
    o.window_left = pick(3) == 0 ? -1 : pick(20);
    o.window_right = pick(3) == 0 ? -1 : pick(10);
    if (o.window_left < 0 && o.window_right < 0) o.window_left = 8;
  }
  if (coin(0.2)) o.softcap = 5.f + static_cast<float>(pick(40));
  if (coin(0.2)) o.softmax_scale = 0.02f + 0.01f * static_cast<float>(pick(40));
  if (coin(0.25)) o.alibi = 1 + pick(2);
  if (!packed && coin(0.2)) {
    constexpr v1::DType kMaskDTypes[] = {v1::BOOL, v1::FLOAT32, v1::FLOAT16, v1::BFLOAT16};
    o.mask_dtype = kMaskDTypes[pick(4)];
    switch (pick(3)) {
      case 0:
        o.mask_shape = {o.seqlen_q, o.seqlen_k};
        break;
      case 1:
        o.mask_shape = {1, o.q_heads, o.seqlen_q, o.seqlen_k};
        break;
      default:
        o.mask_shape = {o.batch, 1, o.seqlen_q, o.seqlen_k};
    }
  }
  o.sinks = coin(0.15);
  o.return_lse = coin(0.5);
  if (o.dtype == v1::FLOAT8_E4M3) o.descale = pick(3);
  return o;
}

std::string Describe(const RequestOptions& o) {
  std::string s = "dtype " + v1::DType_Name(o.dtype) + " heads " + std::to_string(o.q_heads) + "/" +
                  std::to_string(o.kv_heads) + " d " + std::to_string(o.head_dim);
  if (o.seqlens_q.empty()) {
    s += " dense " + std::to_string(o.batch) + "x" + std::to_string(o.seqlen_q) + "/" +
         std::to_string(o.seqlen_k);
  } else {
    s += " packed";
    for (size_t i = 0; i < o.seqlens_q.size(); ++i) {
      s += " " + std::to_string(o.seqlens_q[i]) + "/" + std::to_string(o.seqlens_k[i]);
    }
  }
  if (o.causal) s += " causal";
  if (o.window_left >= 0 || o.window_right >= 0) {
    s += " window " + std::to_string(o.window_left) + "," + std::to_string(o.window_right);
  }
  if (o.softcap > 0.f) s += " softcap " + std::to_string(o.softcap);
  if (o.softmax_scale) s += " scale " + std::to_string(*o.softmax_scale);
  if (o.alibi > 0) s += " alibi " + std::to_string(o.alibi);
  if (!o.mask_shape.empty()) s += " mask " + v1::DType_Name(o.mask_dtype);
  if (o.sinks) s += " sinks";
  if (o.return_lse) s += " lse";
  if (o.dtype == v1::FLOAT8_E4M3) s += " descale " + std::to_string(o.descale);
  return s;
}

int EnvInt(const char* name, int fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? std::atoi(value) : fallback;
}

// $ATTN_RANDOM_REQUESTS random option mixes (default 200, 1.6 s on the CPU backend of a 2-core VM;
// the GPU check runs more), seeded by $ATTN_RANDOM_SEED (default 20261206): each answered OK and
// within its dtype's tolerance of the float64 reference, whichever backend and kernel serve it. A
// failure names the seed, the index and the options.
TEST_F(ServiceTest, RandomOptionMixesMatchReference) {
  const int count = EnvInt("ATTN_RANDOM_REQUESTS", 200);
  const int seed = EnvInt("ATTN_RANDOM_SEED", 20261206);
  std::mt19937 options_rng(static_cast<uint32_t>(seed));
  for (int i = 0; i < count; ++i) {
    const RequestOptions options = RandomOptions(options_rng);
    SCOPED_TRACE("seed " + std::to_string(seed) + " request " + std::to_string(i) + ": " +
                 Describe(options));
    const v1::AttentionRequest request = MakeRequest(options, 5000 + i, rng_);
    v1::AttentionResponse response;
    const grpc::Status status = Call(request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(CompareWithReference(request, response), "");
  }
}

TEST_F(ServiceTest, ConcurrentUnaryCallsArePackedIntoSharedLaunches) {
  constexpr int kCalls = 24;
  std::vector<v1::AttentionRequest> requests;
  std::vector<v1::AttentionResponse> responses(kCalls);
  std::vector<grpc::ClientContext> contexts(kCalls);
  std::vector<std::promise<grpc::Status>> done(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    RequestOptions o;
    o.seqlen_q = o.seqlen_k = 96 + 16 * (i % 5);  // different lengths, one kernel configuration
    o.q_heads = 4;
    o.kv_heads = 4;
    o.head_dim = 64;
    requests.push_back(MakeRequest(o, 1000 + i, rng_));
  }
  for (int i = 0; i < kCalls; ++i) {
    stub_->async()->Attention(&contexts[i], &requests[i], &responses[i],
                              [&done, i](grpc::Status s) { done[i].set_value(s); });
  }
  int max_requests_per_launch = 0;
  for (int i = 0; i < kCalls; ++i) {
    const grpc::Status status = done[i].get_future().get();
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(CompareWithReference(requests[i], responses[i]), "");
    max_requests_per_launch = std::max(max_requests_per_launch, responses[i].batch().requests());
  }
  // The CPU executor runs one launch at a time; requests arriving meanwhile share the next one.
  EXPECT_GT(max_requests_per_launch, 1);
}

TEST_F(ServiceTest, StreamManyInFlightWithPerRequestErrors) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + 60s);
  auto stream = stub_->AttentionStream(&context);
  std::map<uint64_t, v1::AttentionRequest> sent;
  const std::vector<RequestOptions> varied = VariedRequests();
  for (uint64_t id = 100; id < 120; ++id) {
    v1::AttentionRequest request = MakeRequest(varied[id % varied.size()], id, rng_);
    if (id == 105) request.mutable_q()->set_dtype(v1::BOOL);
    if (id == 111) request.add_cu_seqlens_q(0);
    ASSERT_TRUE(stream->Write(request));
    sent[id] = std::move(request);
  }
  stream->WritesDone();
  v1::AttentionResponse response;
  std::map<uint64_t, v1::AttentionResponse> received;
  while (stream->Read(&response)) {
    EXPECT_EQ(received.count(response.request_id()), 0u) << "answered twice";
    received[response.request_id()] = response;
  }
  const grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(received.size(), sent.size());
  for (const auto& [id, request] : sent) {
    const v1::AttentionResponse& r = received[id];
    if (id == 105) {
      EXPECT_EQ(r.error().code(), grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_THAT(r.error().message(), HasSubstr("q.dtype"));
      EXPECT_FALSE(r.has_o());
    } else if (id == 111) {
      EXPECT_EQ(r.error().code(), grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_THAT(r.error().message(), HasSubstr("cu_seqlens"));
    } else {
      EXPECT_FALSE(r.has_error()) << r.error().message();
      EXPECT_EQ(CompareWithReference(request, r), "") << "request " << id;
    }
  }
}

TEST_F(ServiceTest, InvalidRequestsGetInvalidArgumentAndTheServerStaysUp) {
  RequestOptions o;
  v1::AttentionRequest request = MakeRequest(o, 1, rng_);
  struct Case {
    std::function<void(v1::AttentionRequest&)> breakit;
    std::string field;
  };
  const std::vector<Case> cases = {
      {[](auto& r) { r.mutable_q()->clear_shape(); }, "q.shape: rank must be 4"},
      {[](auto& r) { r.mutable_k()->mutable_data()->resize(3); }, "k.data: length must be"},
      {[](auto& r) { r.mutable_v()->set_shape(2, 3); }, "v.shape: must equal k.shape"},
      {[](auto& r) { r.set_softcap(-2); }, "softcap: must be 0 (off) or within"},
      {[](auto& r) { r.mutable_window()->set_left(-7); }, "window.left: must be >= -1"},
      {[](auto& r) { r.add_cu_seqlens_q(0); }, "cu_seqlens_k: must be given together"},
  };
  for (const Case& c : cases) {
    v1::AttentionRequest bad = request;
    c.breakit(bad);
    v1::AttentionResponse response;
    const grpc::Status status = Call(bad, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr(c.field));
  }
  v1::AttentionResponse response;
  const grpc::Status status = Call(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(CompareWithReference(request, response), "");
  EXPECT_EQ(HealthStatus(channel_, ""), "SERVING");
}

TEST_F(ServiceTest, MessagesAboveFourMebibytes) {
  RequestOptions o;
  o.dtype = v1::FLOAT32;
  o.seqlen_q = 8192;  // q and o: 8192 * 4 * 64 * 4 bytes = 8 MiB each way
  o.seqlen_k = 16;
  o.q_heads = 4;
  o.kv_heads = 4;
  o.head_dim = 64;
  const v1::AttentionRequest request = MakeRequest(o, 7, rng_);
  v1::AttentionResponse response;
  const grpc::Status status = Call(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.o().data().size(), 8u << 20);
  EXPECT_EQ(CompareWithReference(request, response), "");
}

TEST_F(ServiceTest, HealthAndReflection) {
  EXPECT_EQ(HealthStatus(channel_, ""), "SERVING");
  EXPECT_EQ(HealthStatus(channel_, "attention.v1.AttentionService"), "SERVING");
  const std::string services = ReflectionListServices(channel_);
  EXPECT_THAT(services, HasSubstr("attention.v1.AttentionService"));
  EXPECT_THAT(services, HasSubstr("grpc.health.v1.Health"));
}

TEST_F(ServiceTest, ClientCancelsStreamAndTheServerStaysUp) {
  for (int round = 0; round < 3; ++round) {
    grpc::ClientContext context;
    auto stream = stub_->AttentionStream(&context);
    RequestOptions o;
    o.seqlen_q = o.seqlen_k = 256;
    o.head_dim = 64;
    for (uint64_t id = 0; id < 8; ++id) {
      if (!stream->Write(MakeRequest(o, id, rng_))) break;
    }
    if (round > 0) {
      v1::AttentionResponse first;
      stream->Read(&first);
    }
    context.TryCancel();
    const grpc::Status status = stream->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  }
  RequestOptions o;
  const v1::AttentionRequest request = MakeRequest(o, 9, rng_);
  v1::AttentionResponse response;
  const grpc::Status status = Call(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(CompareWithReference(request, response), "");
}

// A stream cancelled while the server is still reading a request, with nothing in flight, ends
// at once; the request read after that end must not be started: its job would outlive the stream
// (ASan found the batcher reading the deleted stream's cancellation flag). Timing-dependent, so
// many rounds; without the fix 10 runs of this test out of 10 failed under ASan.
TEST_F(ServiceTest, StreamCancelledWhileItsRequestIsBeingRead) {
  RequestOptions o;
  o.seqlen_q = o.seqlen_k = 1024;
  o.head_dim = 64;
  const v1::AttentionRequest request = MakeRequest(o, 1, rng_);
  for (int round = 0; round < 40; ++round) {
    grpc::ClientContext context;
    auto stream = stub_->AttentionStream(&context);
    for (int i = 0; i <= round % 2; ++i) stream->Write(request);
    context.TryCancel();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  v1::AttentionResponse response;
  const grpc::Status status = Call(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(CompareWithReference(request, response), "");
}

// A cancelled stream's answers come back on two threads at once: the executor finishing the
// job it runs and the batcher dropping the ones still queued (each head_dim is its own bucket, so
// they do not pack into one launch). Whichever answer is last finishes the stream, and gRPC
// deletes it: the other must not touch it after that (UBSan caught ItemDone calling MaybeFinish
// on the deleted stream once in CI, in ClientCancelsStreamAndTheServerStaysUp). The window is a
// few microseconds wide, so this does not reproduce it on demand (800 rounds on the unfixed code
// here, none failed); it runs the cancel points around it: queued, running and written answers.
TEST_F(ServiceTest, StreamCancelledWhileAnswersCompleteOnTwoThreads) {
  std::vector<v1::AttentionRequest> requests;
  for (int i = 0; i < 6; ++i) {
    RequestOptions o;
    o.seqlen_q = o.seqlen_k = 384;
    o.head_dim = 16 * (1 + i % 4);
    o.q_heads = o.kv_heads = 2;
    requests.push_back(MakeRequest(o, static_cast<uint64_t>(i), rng_));
  }
  std::uniform_int_distribution<int> pause_us(0, 3000);
  for (int round = 0; round < 60; ++round) {
    grpc::ClientContext context;
    auto stream = stub_->AttentionStream(&context);
    for (const v1::AttentionRequest& request : requests) stream->Write(request);
    if (round % 2 != 0) {
      v1::AttentionResponse first;
      stream->Read(&first);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(pause_us(rng_)));
    context.TryCancel();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  v1::AttentionResponse response;
  const grpc::Status status = Call(requests[0], &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(CompareWithReference(requests[0], response), "");
}

TEST(ServiceLimitsTest, ConfiguredLimitsGiveResourceExhausted) {
  ServerProcess server;
  ASSERT_EQ(server.Start({"--max_request_tokens=64", "--max_heads=4"}), "");
  auto stub = v1::AttentionService::NewStub(Connect(server.address()));
  std::mt19937 rng(3);
  RequestOptions o;
  o.seqlen_q = 65;
  v1::AttentionResponse response;
  {
    grpc::ClientContext context;
    const grpc::Status status = stub->Attention(&context, MakeRequest(o, 1, rng), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_THAT(status.error_message(), HasSubstr("--max_request_tokens"));
  }
  o.seqlen_q = 16;
  o.q_heads = o.kv_heads = 8;
  {
    grpc::ClientContext context;
    const grpc::Status status = stub->Attention(&context, MakeRequest(o, 2, rng), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_THAT(status.error_message(), HasSubstr("--max_heads"));
  }
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(30s), 0);
}

TEST(ServiceDrainTest, SigtermAnswersEveryAcceptedRequestThenExitsZero) {
  ServerProcess server;
  // One launch at a time of one request each: the queue drains slowly enough to observe.
  ASSERT_EQ(server.Start({"--batching=false", "--cpu_threads=1", "--drain_timeout_s=60"}), "");
  auto channel = Connect(server.address());
  auto stub = v1::AttentionService::NewStub(channel);
  std::mt19937 rng(4);
  RequestOptions o;
  o.dtype = v1::FLOAT32;
  o.seqlen_q = o.seqlen_k = 768;
  o.q_heads = o.kv_heads = 4;
  o.head_dim = 64;
  // The same problem many times (so one reference check covers every answer): the CPU backend is
  // deterministic, so every answer must equal the first, bit for bit.
  const v1::AttentionRequest problem = MakeRequest(o, 0, rng);
  auto with_id = [&problem](uint64_t id) {
    v1::AttentionRequest r = problem;
    r.set_request_id(id);
    return r;
  };

  // A stream with many requests in flight, and unary calls in flight.
  grpc::ClientContext stream_context;
  auto stream = stub->AttentionStream(&stream_context);
  constexpr int kStreamed = 30, kUnary = 4;
  for (int i = 0; i < kStreamed; ++i) ASSERT_TRUE(stream->Write(with_id(i)));
  std::vector<v1::AttentionRequest> unary_requests;
  std::vector<v1::AttentionResponse> unary_responses(kUnary);
  std::vector<grpc::ClientContext> unary_contexts(kUnary);
  std::vector<std::promise<grpc::Status>> unary_done(kUnary);
  for (int i = 0; i < kUnary; ++i) unary_requests.push_back(with_id(100 + i));
  for (int i = 0; i < kUnary; ++i) {
    stub->async()->Attention(&unary_contexts[i], &unary_requests[i], &unary_responses[i],
                             [&unary_done, i](grpc::Status s) { unary_done[i].set_value(s); });
  }
  std::vector<v1::AttentionResponse> answers(1);
  ASSERT_TRUE(stream->Read(&answers[0]));
  server.Signal(SIGTERM);
  const std::string draining = server.Line("event=draining", 30s);
  ASSERT_NE(draining, "");

  // Draining: NOT_SERVING, and new work is refused. The server cannot have finished yet: the
  // stream's remaining answers (megabytes) wait for this client to read them.
  EXPECT_EQ(HealthStatus(channel, ""), "NOT_SERVING");
  {
    grpc::ClientContext context;
    v1::AttentionResponse late;
    const grpc::Status status = stub->Attention(&context, with_id(999), &late);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr("draining"));
  }
  v1::AttentionResponse response;
  while (stream->Read(&response)) answers.push_back(response);
  // The client never half-closed: the drained stream ends UNAVAILABLE once its answers are out.
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
  for (int i = 0; i < kUnary; ++i) {
    const grpc::Status status = unary_done[i].get_future().get();
    if (status.ok()) {
      answers.push_back(unary_responses[i]);
    } else {
      // Sent, but reached the server only after the drain began: refused, not lost.
      EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
      EXPECT_THAT(status.error_message(), HasSubstr("draining"));
    }
  }
  EXPECT_EQ(server.Wait(60s), 0);
  EXPECT_NE(server.Line("event=stopped").find("drained=true"), std::string::npos);

  // Work was queued or running when the signal came (one request per launch), and every accepted
  // request was answered, correctly.
  const int64_t pending = LogField(draining, "queued") + LogField(draining, "batches_in_flight");
  // On a GPU these launches take microseconds, so the queue may already be empty when the signal
  // lands (the stream's unread answers still are in flight); the CPU backend is slow enough to
  // always leave work queued.
  if (attention::testing::ServerBackendUnderTest() == "cpu") {
    EXPECT_GT(pending, 0) << draining;
  }
  // A batch counts as in flight until its answers are handed out (on_finished runs after the
  // completions), so the one in flight at the signal may be the batch that answered answers[0]
  // (seen once in 53 runs under ASan: 33 queued + 1 in flight, 34 answers).
  EXPECT_GE(static_cast<int64_t>(answers.size()), std::max<int64_t>(1, pending));
  EXPECT_EQ(CompareWithReference(problem, answers[0]), "");
  std::set<uint64_t> ids;
  for (const v1::AttentionResponse& a : answers) {
    EXPECT_FALSE(a.has_error()) << a.error().message();
    EXPECT_EQ(a.o().data(), answers[0].o().data()) << "request " << a.request_id();
    ids.insert(a.request_id());
  }
  EXPECT_EQ(ids.size(), answers.size());
}

}  // namespace
}  // namespace attention::server
