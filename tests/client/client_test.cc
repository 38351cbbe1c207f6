// The unary client against the fake server on a loopback port: request building, answers as
// typed views, status mapping, deadlines, retries of UNAVAILABLE, metadata, asynchronous calls
// and round-robin over two servers.
#include "attention/client/client.h"

#include <stdlib.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
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

std::vector<float> RandomFloats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<float> values(n);
  for (float& x : values) x = dist(rng);
  return values;
}

// q [2, 5, 3, 8] with GQA k, v [2, 7, 1, 8], random fp32.
struct Problem {
  std::vector<float> q = RandomFloats(2 * 5 * 3 * 8, 1), k = RandomFloats(2 * 7 * 1 * 8, 2),
                     v = RandomFloats(2 * 7 * 1 * 8, 3);
  AttentionArgs args() const {
    AttentionArgs a;
    a.q = {v1::FLOAT32, q.data(), {2, 5, 3, 8}};
    a.k = {v1::FLOAT32, k.data(), {2, 7, 1, 8}};
    a.v = {v1::FLOAT32, v.data(), {2, 7, 1, 8}};
    return a;
  }
};

FakeBehavior Delayed(int ms) {
  FakeBehavior b;
  b.delay = std::chrono::milliseconds(ms);
  return b;
}

FakeBehavior Failing(grpc::StatusCode code, const std::string& message) {
  FakeBehavior b;
  b.fail = grpc::Status(code, message);
  return b;
}

FakeBehavior UnavailableFirst(int times) {
  FakeBehavior b;
  b.unavailable_times = times;
  return b;
}

CallOptions WithTimeout(std::chrono::nanoseconds timeout) {
  CallOptions call;
  call.timeout = timeout;
  return call;
}

class ClientTest : public ::testing::Test {
 protected:
  Client MakeClient(ClientOptions options = {}) {
    absl::StatusOr<Client> client = Client::Create(server_.address(), options);
    EXPECT_TRUE(client.ok()) << client.status();
    return *std::move(client);
  }

  FakeAttentionService service_;
  FakeServer server_{&service_};
  Problem problem_;
};

TEST(BuildRequestTest, CopiesViewsAndOptionsOnce) {
  Problem p;
  AttentionArgs args = p.args();
  args.causal = true;
  args.softmax_scale = 0.25f;
  args.window_left = 3;
  args.softcap = 30.f;
  args.return_lse = true;
  const std::vector<float> slopes = {0.5f, 0.25f, 0.125f};
  args.alibi_slopes = TensorView{v1::FLOAT32, slopes.data(), {3}};
  absl::StatusOr<v1::AttentionRequest> request = BuildRequest(args);
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->q().dtype(), v1::FLOAT32);
  EXPECT_THAT(request->q().shape(), ::testing::ElementsAre(2, 5, 3, 8));
  ASSERT_EQ(request->q().data().size(), p.q.size() * 4);
  EXPECT_EQ(std::memcmp(request->q().data().data(), p.q.data(), p.q.size() * 4), 0);
  EXPECT_EQ(std::memcmp(request->v().data().data(), p.v.data(), p.v.size() * 4), 0);
  EXPECT_TRUE(request->causal());
  EXPECT_FLOAT_EQ(request->softmax_scale(), 0.25f);
  EXPECT_EQ(request->window().left(), 3);
  EXPECT_EQ(request->window().right(), -1);
  EXPECT_FLOAT_EQ(request->softcap(), 30.f);
  EXPECT_TRUE(request->return_lse());
  EXPECT_THAT(request->alibi_slopes().shape(), ::testing::ElementsAre(3));
  EXPECT_FALSE(request->has_mask());

  AttentionArgs plain = p.args();
  absl::StatusOr<v1::AttentionRequest> defaults = BuildRequest(plain);
  ASSERT_TRUE(defaults.ok());
  EXPECT_FALSE(defaults->has_softmax_scale());
  EXPECT_FALSE(defaults->has_window());
}

TEST(BuildRequestTest, PackedLayoutCarriesOffsets) {
  const std::vector<float> q = RandomFloats(9 * 2 * 4, 4), kv = RandomFloats(11 * 2 * 4, 5);
  const std::vector<int32_t> cu_q = {0, 4, 9}, cu_k = {0, 6, 11};
  AttentionArgs args;
  args.q = {v1::FLOAT32, q.data(), {9, 2, 4}};
  args.k = args.v = {v1::FLOAT32, kv.data(), {11, 2, 4}};
  args.cu_seqlens_q = cu_q;
  args.cu_seqlens_k = cu_k;
  absl::StatusOr<v1::AttentionRequest> request = BuildRequest(args);
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_THAT(request->cu_seqlens_q(), ::testing::ElementsAre(0, 4, 9));
  EXPECT_THAT(request->cu_seqlens_k(), ::testing::ElementsAre(0, 6, 11));
}

TEST(BuildRequestTest, RejectsMalformedViewsNamingTheTensor) {
  Problem p;
  AttentionArgs args = p.args();
  args.k.dtype = v1::DTYPE_UNSPECIFIED;
  absl::StatusOr<v1::AttentionRequest> request = BuildRequest(args);
  EXPECT_EQ(request.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(request.status().message()), HasSubstr("k.dtype"));

  args = p.args();
  args.v.shape[1] = -7;
  request = BuildRequest(args);
  EXPECT_EQ(request.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(request.status().message()), HasSubstr("v.shape"));

  args = p.args();
  args.mask = TensorView{v1::BOOL, nullptr, {5, 7}};
  request = BuildRequest(args);
  EXPECT_EQ(request.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(request.status().message()), HasSubstr("mask.data"));
}

TEST(TensorTest, ViewAndCopyCheckDtypeShapeAndLength) {
  const std::vector<uint16_t> bits = {0x3f80, 0x4000, 0xc040, 0x0000, 0x7f80, 0x3f00};
  v1::Tensor tensor;
  ASSERT_TRUE(SetTensor("o", {v1::BFLOAT16, bits.data(), {2, 3}}, &tensor).ok());
  absl::StatusOr<TensorView> view = ViewTensor(tensor);
  ASSERT_TRUE(view.ok());
  EXPECT_EQ(view->dtype, v1::BFLOAT16);
  EXPECT_EQ(view->num_bytes(), 12);
  EXPECT_EQ(view->data_as<uint16_t>()[2], 0xc040);

  std::vector<uint16_t> out(6, 0xffff);
  EXPECT_TRUE(CopyTensor(tensor, {v1::BFLOAT16, out.data(), {2, 3}}).ok());
  EXPECT_EQ(out, bits);
  EXPECT_EQ(CopyTensor(tensor, {v1::FLOAT16, out.data(), {2, 3}}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CopyTensor(tensor, {v1::BFLOAT16, out.data(), {3, 2}}).code(),
            absl::StatusCode::kInvalidArgument);

  tensor.mutable_data()->pop_back();
  EXPECT_EQ(ViewTensor(tensor).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TensorTest, E4M3Conversions) {
  EXPECT_EQ(E4M3ToFloat(0x00), 0.f);
  EXPECT_EQ(E4M3ToFloat(0x01), 0.001953125f);  // smallest subnormal, 2^-9
  EXPECT_EQ(E4M3ToFloat(0x08), 0.015625f);     // smallest normal, 2^-6
  EXPECT_EQ(E4M3ToFloat(0x38), 1.f);
  EXPECT_EQ(E4M3ToFloat(0x7e), 448.f);
  EXPECT_EQ(E4M3ToFloat(0xfe), -448.f);
  EXPECT_TRUE(std::isnan(E4M3ToFloat(0x7f)));
  EXPECT_TRUE(std::isnan(E4M3ToFloat(0xff)));
  // Every code's value converts back to itself (0x80, -0, too).
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7f) == 0x7f) continue;
    EXPECT_EQ(QuantizeE4M3(E4M3ToFloat(static_cast<uint8_t>(code))), code) << code;
  }
  EXPECT_EQ(QuantizeE4M3(1.0625f), 0x38);  // halfway between 1 and 1.125: to even
  EXPECT_EQ(QuantizeE4M3(1.1875f), 0x3a);  // halfway between 1.125 and 1.25: to even
  EXPECT_EQ(QuantizeE4M3(1e6f), 0x7e);     // saturates at 448
  EXPECT_EQ(QuantizeE4M3(-1e6f), 0xfe);
  EXPECT_EQ(QuantizeE4M3(std::nanf("")), 0x7f);
  EXPECT_EQ(QuantizeE4M3(3.f, 0.5f), 0x4c);  // 6 = 1.5 x 2^2: exponent 9, mantissa 4
}

TEST(TensorTest, QuantizesTensorsPerTensorAndPerHead) {
  // [rows 2, heads 2, head_dim 3]; head 1 is ten times head 0.
  const std::vector<float> values = {1, -2, 4, 10, -20, 40, 0.5f, 0, -1, 5, 0, -10};
  absl::StatusOr<E4M3Tensor> per_head = QuantizeTensorE4M3(values, {2, 2, 3}, true);
  ASSERT_TRUE(per_head.ok()) << per_head.status();
  ASSERT_EQ(per_head->descale.size(), 2u);
  EXPECT_FLOAT_EQ(per_head->descale[0], 4.f / 448);
  EXPECT_FLOAT_EQ(per_head->descale[1], 40.f / 448);
  EXPECT_EQ(per_head->codes[2], 0x7e);  // each head's largest value maps to 448
  EXPECT_EQ(per_head->codes[5], 0x7e);
  for (size_t i = 0; i < values.size(); ++i) {
    const float factor = per_head->descale[i / 3 % 2];
    const float back = E4M3ToFloat(per_head->codes[i]) * factor;
    EXPECT_NEAR(back, values[i], std::abs(values[i]) / 16 + 1e-6) << i;  // 3 mantissa bits
  }
  const TensorView view = per_head->view();
  EXPECT_EQ(view.dtype, v1::FLOAT8_E4M3);
  EXPECT_EQ(view.shape, (std::vector<int64_t>{2, 2, 3}));
  EXPECT_EQ(view.num_bytes(), 12);
  EXPECT_EQ(per_head->descale_view().shape, (std::vector<int64_t>{2}));

  absl::StatusOr<E4M3Tensor> per_tensor = QuantizeTensorE4M3(values, {2, 2, 3}, false);
  ASSERT_TRUE(per_tensor.ok());
  ASSERT_EQ(per_tensor->descale.size(), 1u);
  EXPECT_FLOAT_EQ(per_tensor->descale[0], 40.f / 448);
  // All zeros: factor 1.
  EXPECT_EQ(QuantizeTensorE4M3({0, 0}, {1, 2}, false)->descale[0], 1.f);
  EXPECT_EQ(QuantizeTensorE4M3(values, {12}, false).status().code(),
            absl::StatusCode::kInvalidArgument);  // rank 1
  EXPECT_EQ(QuantizeTensorE4M3(values, {2, 2, 2}, false).status().code(),
            absl::StatusCode::kInvalidArgument);  // shape does not hold the values
  EXPECT_EQ(QuantizeTensorE4M3({1, std::nanf("")}, {1, 2}, true).status().code(),
            absl::StatusCode::kInvalidArgument);

  // BuildRequest carries the codes and their factors.
  AttentionArgs args;
  args.q = args.k = args.v = per_head->view();
  args.q_descale = args.k_descale = args.v_descale = per_head->descale_view();
  absl::StatusOr<v1::AttentionRequest> request = BuildRequest(args);
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->q().dtype(), v1::FLOAT8_E4M3);
  EXPECT_EQ(request->k().data().size(), 12u);
  EXPECT_EQ(request->v_descale().dtype(), v1::FLOAT32);
  EXPECT_EQ(request->q_descale().data().size(), 8u);
  EXPECT_FALSE(BuildRequest(AttentionArgs{}).ok());
}

TEST(TensorTest, ParsesDTypeNames) {
  EXPECT_EQ(*ParseDType("bf16"), v1::BFLOAT16);
  EXPECT_EQ(*ParseDType("fp16"), v1::FLOAT16);
  EXPECT_EQ(*ParseDType("float32"), v1::FLOAT32);
  EXPECT_EQ(*ParseDType("fp8"), v1::FLOAT8_E4M3);
  EXPECT_EQ(*ParseDType("float8_e4m3"), v1::FLOAT8_E4M3);
  EXPECT_STREQ(DTypeName(v1::FLOAT8_E4M3), "float8_e4m3");
  EXPECT_EQ(DTypeSize(v1::FLOAT8_E4M3), 1);
  EXPECT_EQ(ParseDType("int8").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(NumElements({}), 1);
  EXPECT_EQ(NumElements({3, 0, 5}), 0);
  EXPECT_EQ(NumElements({int64_t{1} << 40, int64_t{1} << 40}), -1);
}

TEST(ChannelTargetTest, AddressListsBecomeOneResolverTarget) {
  EXPECT_EQ(*ChannelTarget("localhost:50051"), "localhost:50051");
  EXPECT_EQ(*ChannelTarget("dns:///attention.svc:50051"), "dns:///attention.svc:50051");
  EXPECT_EQ(*ChannelTarget("10.0.0.1:1,10.0.0.2:2"), "ipv4:10.0.0.1:1,10.0.0.2:2");
  EXPECT_EQ(*ChannelTarget("[::1]:1,[::1]:2"), "ipv6:[::1]:1,[::1]:2");
  EXPECT_EQ(*ChannelTarget("ipv4:10.0.0.1:1,10.0.0.2:2"), "ipv4:10.0.0.1:1,10.0.0.2:2");
  EXPECT_EQ(ChannelTarget("a.example:1,b.example:1").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ChannelTarget("10.0.0.1:1,[::1]:2").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ChannelTarget("10.0.0.1,10.0.0.2:2").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ServiceConfigTest, RetryPolicyFollowsOptions) {
  ClientOptions options;
  options.retry.max_attempts = 3;
  options.retry.initial_backoff = std::chrono::milliseconds(50);
  options.retry.max_backoff = std::chrono::milliseconds(1500);
  const std::string json = ServiceConfigJson(options);
  EXPECT_THAT(json, HasSubstr(R"("round_robin")"));
  EXPECT_THAT(json, HasSubstr(R"("maxAttempts":3)"));
  EXPECT_THAT(json, HasSubstr(R"("initialBackoff":"0.050s")"));
  EXPECT_THAT(json, HasSubstr(R"("maxBackoff":"1.500s")"));
  EXPECT_THAT(json, HasSubstr(R"("retryableStatusCodes":["UNAVAILABLE"])"));
  options.retry.max_attempts = 1;
  options.round_robin = false;
  EXPECT_EQ(ServiceConfigJson(options), R"({"loadBalancingConfig":[{"pick_first":{}}]})");
}

TEST(ClientCreateTest, RejectsBadOptions) {
  ClientOptions options;
  options.max_message_bytes = 0;
  EXPECT_EQ(Client::Create("127.0.0.1:1", options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = {};
  options.tls = TlsOptions{};
  options.tls->client_cert_pem = "cert";
  EXPECT_EQ(Client::Create("127.0.0.1:1", options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ClientTest, SyncCallReturnsTypedOutput) {
  Client client = MakeClient();
  AttentionArgs args = problem_.args();
  args.return_lse = true;
  absl::StatusOr<v1::AttentionResponse> response = client.Attention(args);
  ASSERT_TRUE(response.ok()) << response.status();
  absl::StatusOr<TensorView> o = ViewTensor(response->o());
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->shape, args.q.shape);
  std::vector<float> out(problem_.q.size(), std::nanf(""));
  ASSERT_TRUE(CopyTensor(response->o(), {v1::FLOAT32, out.data(), args.q.shape}).ok());
  EXPECT_EQ(out, problem_.q);
  EXPECT_THAT(response->lse().shape(), ::testing::ElementsAre(2, 3, 5));
  EXPECT_EQ(response->timings().kernel_ns(), 2000);
}

TEST_F(ClientTest, ServerErrorKeepsCodeAndMessage) {
  Client client = MakeClient();
  service_.set_behavior(Failing(grpc::StatusCode::RESOURCE_EXHAUSTED, "queue full (64 requests)"));
  absl::StatusOr<v1::AttentionResponse> response = client.Attention(problem_.args());
  EXPECT_EQ(response.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(response.status().message(), "queue full (64 requests)");

  service_.set_behavior({});
  v1::AttentionRequest bad = *BuildRequest(problem_.args());
  bad.mutable_q()->mutable_data()->resize(3);
  response = client.Attention(bad);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(response.status().message()), HasSubstr("q.data"));
}

TEST_F(ClientTest, CallTimeoutGivesDeadlineExceeded) {
  Client client = MakeClient();
  service_.set_behavior(Delayed(2000));
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<v1::AttentionResponse> response =
      client.Attention(problem_.args(), WithTimeout(std::chrono::milliseconds(100)));
  EXPECT_EQ(response.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(1500));
}

TEST_F(ClientTest, DefaultTimeoutAppliesWhenTheCallSetsNone) {
  ClientOptions options;
  options.default_timeout = std::chrono::milliseconds(100);
  Client client = MakeClient(options);
  service_.set_behavior(Delayed(2000));
  EXPECT_EQ(client.Attention(problem_.args()).status().code(), absl::StatusCode::kDeadlineExceeded);
  // A per-call timeout overrides the default.
  service_.set_behavior(Delayed(300));
  EXPECT_TRUE(client.Attention(problem_.args(), WithTimeout(std::chrono::seconds(10))).ok());
}

TEST_F(ClientTest, RetriesUnavailableUpToMaxAttempts) {
  ClientOptions options;
  options.retry.max_attempts = 3;
  options.retry.initial_backoff = std::chrono::milliseconds(10);
  Client client = MakeClient(options);
  service_.set_behavior(UnavailableFirst(2));
  absl::StatusOr<v1::AttentionResponse> response = client.Attention(problem_.args());
  EXPECT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(service_.unary_calls(), 3);
}

TEST_F(ClientTest, GivesUpAfterMaxAttempts) {
  ClientOptions options;
  options.retry.max_attempts = 2;
  options.retry.initial_backoff = std::chrono::milliseconds(10);
  Client client = MakeClient(options);
  service_.set_behavior(UnavailableFirst(5));
  absl::StatusOr<v1::AttentionResponse> response = client.Attention(problem_.args());
  EXPECT_EQ(response.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(response.status().message(), "fake: draining");
  EXPECT_EQ(service_.unary_calls(), 2);
}

TEST_F(ClientTest, NoRetriesWhenDisabledOrNotUnavailable) {
  ClientOptions options;
  options.retry.max_attempts = 1;
  Client client = MakeClient(options);
  service_.set_behavior(UnavailableFirst(1));
  EXPECT_EQ(client.Attention(problem_.args()).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(service_.unary_calls(), 1);

  Client retrying = MakeClient();
  service_.set_behavior(
      Failing(grpc::StatusCode::INVALID_ARGUMENT, "q.shape: rank must be 3 or 4"));
  EXPECT_EQ(retrying.Attention(problem_.args()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(service_.unary_calls(), 2);
}

TEST_F(ClientTest, RetriesRequestsBiggerThanGrpcsDefaultBuffer) {
  // 4 MiB of q: above gRPC's default 256 KiB per-call retry buffer, below the client's.
  const std::vector<float> q = RandomFloats(1 << 20, 9);
  AttentionArgs args = problem_.args();
  args.q = {v1::FLOAT32, q.data(), {1, 1024, 16, 64}};
  ClientOptions options;
  options.retry.initial_backoff = std::chrono::milliseconds(10);
  Client client = MakeClient(options);
  service_.set_behavior(UnavailableFirst(1));
  absl::StatusOr<v1::AttentionResponse> response = client.Attention(args);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->o().data().size(), q.size() * 4);
  EXPECT_EQ(service_.unary_calls(), 2);
}

TEST_F(ClientTest, SendsConfiguredMetadata) {
  ClientOptions options;
  options.metadata = {{"authorization", "Bearer s3cret"}};
  Client client = MakeClient(options);
  ASSERT_TRUE(client.Attention(problem_.args()).ok());
  EXPECT_EQ(service_.last_authorization(), "Bearer s3cret");
}

TEST_F(ClientTest, MessageLimitRefusesOversizedRequests) {
  ClientOptions options;
  options.max_message_bytes = 1000;
  Client client = MakeClient(options);
  EXPECT_EQ(client.Attention(problem_.args()).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(service_.unary_calls(), 0);
}

TEST_F(ClientTest, AsyncCallbackAndFuture) {
  Client client = MakeClient();
  auto request = std::make_shared<const v1::AttentionRequest>(*BuildRequest(problem_.args()));
  std::promise<absl::StatusOr<v1::AttentionResponse>> done;
  client.AttentionAsync(
      request, [&done](absl::StatusOr<v1::AttentionResponse> r) { done.set_value(std::move(r)); });
  absl::StatusOr<v1::AttentionResponse> from_callback = done.get_future().get();
  ASSERT_TRUE(from_callback.ok()) << from_callback.status();
  EXPECT_EQ(from_callback->o().data(), request->q().data());

  std::vector<std::future<absl::StatusOr<v1::AttentionResponse>>> futures;
  for (int i = 0; i < 16; ++i) futures.push_back(client.AttentionFuture(request));
  for (auto& f : futures) {
    absl::StatusOr<v1::AttentionResponse> r = f.get();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->o().data(), request->q().data());
  }

  service_.set_behavior(Delayed(2000));
  EXPECT_EQ(client.AttentionFuture(request, WithTimeout(std::chrono::milliseconds(50)))
                .get()
                .status()
                .code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST_F(ClientTest, SerializedRequestGetsTheSameAnswersAndErrors) {
  ClientOptions options;
  options.metadata = {{"authorization", "Bearer s3cret"}};
  options.retry.initial_backoff = std::chrono::milliseconds(10);
  Client client = MakeClient(options);
  const v1::AttentionRequest request = *BuildRequest(problem_.args());
  const SerializedRequest serialized(request);
  EXPECT_EQ(serialized.bytes(), static_cast<int64_t>(request.ByteSizeLong()));
  auto call = [&](const CallOptions& call_options = {}) {
    auto done = std::make_shared<std::promise<absl::StatusOr<v1::AttentionResponse>>>();
    std::future<absl::StatusOr<v1::AttentionResponse>> answer = done->get_future();
    client.AttentionAsync(
        serialized,
        [done](absl::StatusOr<v1::AttentionResponse> r) { done->set_value(std::move(r)); },
        call_options);
    return answer;
  };

  // Many calls in flight share the one serialization; each is answered as the proto call is.
  std::vector<std::future<absl::StatusOr<v1::AttentionResponse>>> answers;
  for (int i = 0; i < 16; ++i) answers.push_back(call());
  for (auto& answer : answers) {
    absl::StatusOr<v1::AttentionResponse> r = answer.get();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->o().data(), request.q().data());
  }
  EXPECT_EQ(service_.unary_calls(), 16);
  EXPECT_EQ(service_.last_authorization(), "Bearer s3cret");

  // The channel's retry policy applies to the serialized call too (the fake counts calls from
  // its start).
  service_.set_behavior(UnavailableFirst(16 + 2));
  absl::StatusOr<v1::AttentionResponse> retried = call().get();
  EXPECT_TRUE(retried.ok()) << retried.status();
  EXPECT_EQ(service_.unary_calls(), 16 + 3);

  service_.set_behavior(
      Failing(grpc::StatusCode::INVALID_ARGUMENT, "q.shape: rank must be 3 or 4"));
  absl::StatusOr<v1::AttentionResponse> refused = call().get();
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(refused.status().message(), "q.shape: rank must be 3 or 4");

  service_.set_behavior(Delayed(2000));
  EXPECT_EQ(call(WithTimeout(std::chrono::milliseconds(50))).get().status().code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST_F(ClientTest, UnreachableServerIsUnavailable) {
  // A port that was just bound and released: nothing listens there.
  int port;
  {
    FakeAttentionService other;
    FakeServer closed(&other);
    port = std::stoi(closed.address().substr(closed.address().rfind(':') + 1));
  }
  ClientOptions options;
  options.retry.max_attempts = 1;
  absl::StatusOr<Client> client = Client::Create("127.0.0.1:" + std::to_string(port), options);
  ASSERT_TRUE(client.ok());
  EXPECT_EQ(client->Attention(problem_.args()).status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(ClientTest, RoundRobinSpreadsCallsOverAnAddressList) {
  FakeAttentionService second_service;
  FakeServer second(&second_service);
  absl::StatusOr<Client> client =
      Client::Create(server_.address() + "," + second.address(), ClientOptions{});
  ASSERT_TRUE(client.ok()) << client.status();
  const v1::AttentionRequest request = *BuildRequest(problem_.args());
  CallOptions wait;
  wait.wait_for_ready = true;
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(client->Attention(request, wait).ok());
  }
  // round_robin alternates once both subchannels are ready; the first calls may all land on the
  // one that connected first.
  EXPECT_GE(service_.unary_calls(), 5);
  EXPECT_GE(second_service.unary_calls(), 5);
  EXPECT_EQ(service_.unary_calls() + second_service.unary_calls(), 20);
}

// A self-signed certificate for "attention.test", made by openssl at test time.
struct TestCertificate {
  std::string cert_pem, key_pem;
};

std::optional<TestCertificate> MakeCertificate() {
  std::string dir = ::testing::TempDir() + "/attention_tls_XXXXXX";
  if (mkdtemp(dir.data()) == nullptr) return std::nullopt;
  const std::string command =
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
      "-subj /CN=attention.test -addext subjectAltName=DNS:attention.test -keyout " +
      dir + "/key.pem -out " + dir + "/cert.pem >/dev/null 2>&1";
  if (std::system(command.c_str()) != 0) return std::nullopt;
  const auto read = [&](const char* name) {
    std::ifstream in(dir + "/" + name);
    std::stringstream contents;
    contents << in.rdbuf();
    return contents.str();
  };
  return TestCertificate{read("cert.pem"), read("key.pem")};
}

TEST(ClientTlsTest, VerifiesTheServerCertificate) {
  const std::optional<TestCertificate> certificate = MakeCertificate();
  if (!certificate) GTEST_SKIP() << "openssl could not make a test certificate";
  grpc::SslServerCredentialsOptions ssl;
  ssl.pem_key_cert_pairs.push_back({certificate->key_pem, certificate->cert_pem});
  FakeAttentionService service;
  FakeServer server(&service, "127.0.0.1:0", grpc::SslServerCredentials(ssl));
  Problem problem;
  ClientOptions options;
  options.retry.max_attempts = 1;
  options.tls = TlsOptions{certificate->cert_pem, "", "", "attention.test"};

  absl::StatusOr<Client> client = Client::Create(server.address(), options);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<v1::AttentionResponse> response = client->Attention(problem.args());
  EXPECT_TRUE(response.ok()) << response.status();

  // The certificate does not name other.test; a plaintext client cannot talk TLS.
  options.tls->server_name_override = "other.test";
  EXPECT_EQ(Client::Create(server.address(), options)->Attention(problem.args()).status().code(),
            absl::StatusCode::kUnavailable);
  options.tls.reset();
  EXPECT_EQ(Client::Create(server.address(), options)->Attention(problem.args()).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(service.unary_calls(), 1);
}

}  // namespace
}  // namespace attention::client
