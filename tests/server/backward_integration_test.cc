// The backward pass through the public RPC (issue 22): starts the real attention_server binary
// (path in $ATTN_SERVER_BINARY) on the CPU backend and, as a training step would, runs each
// forward with return_lse through Attention, then sends its o and lse with a random grad_o to
// AttentionBackward (or on AttentionStream with backward = true). dq, dk and dv are checked
// against a float64 reference computed from the backward request alone
// (testing::CompareBackwardWithReference: it recomputes o and lse itself), over every option mix,
// odd head dims, seqlen_q != seqlen_k, empty sequences, fully masked rows and packed varlen, a
// batch of several backward requests packed into one launch, and every malformed input's named
// error.
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <future>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention/client/client.h"
#include "attention/v1/attention.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/server/server_process.h"
#include "tests/server/server_test_util.h"
#include "tests/server/shared_server_test.h"
#ifdef ATTENTION_HAVE_CUDA
#include "kernels/cuda/attention_cuda.h"
#endif

namespace attention::server {
namespace {

using testing::CompareBackwardWithReference;
using testing::Connect;
using ::testing::HasSubstr;
using testing::MakeBackwardRequest;
using testing::MakeRequest;
using testing::RequestOptions;
using testing::ServerProcess;
using namespace std::chrono_literals;

class BackwardServiceTest : public testing::SharedServerTest<BackwardServiceTest> {
 public:
  static std::vector<std::string> ServerFlags() { return {"--backend=cpu"}; }

 protected:
  grpc::Status Forward(const v1::AttentionRequest& request, v1::AttentionResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 60s);
    return stub_->Attention(&context, request, response);
  }
  grpc::Status Backward(const v1::AttentionRequest& request, v1::AttentionResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 60s);
    return stub_->AttentionBackward(&context, request, response);
  }

  // The forward of `options` (with return_lse) through Attention, then its backward request.
  v1::AttentionRequest BackwardRequestFor(RequestOptions options, uint64_t id) {
    options.return_lse = true;
    const v1::AttentionRequest forward = MakeRequest(options, id, rng_);
    v1::AttentionResponse answer;
    const grpc::Status status = Forward(forward, &answer);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return MakeBackwardRequest(forward, answer, id, rng_);
  }

  std::mt19937 rng_{22};
};

struct NamedCase {
  std::string name;
  RequestOptions options;
};

// Every option, alone and mixed, in every dtype, with odd head dims, seqlen_q != seqlen_k (both
// ways), GQA / MQA, dense and packed varlen with empty sequences, and fully masked rows.
std::vector<NamedCase> Cases() {
  std::vector<NamedCase> cases;
  auto add = [&cases](const std::string& name, RequestOptions o) {
    for (v1::DType dtype : {v1::FLOAT32, v1::FLOAT16, v1::BFLOAT16}) {
      o.dtype = dtype;
      cases.push_back({absl::StrCat(name, "_", v1::DType_Name(dtype)), o});
    }
  };
  RequestOptions base;
  base.batch = 2;
  base.seqlen_q = 19;
  base.seqlen_k = 27;
  base.q_heads = 4;
  base.kv_heads = 4;
  base.head_dim = 16;
  add("plain_sq_lt_sk", base);
  {
    RequestOptions o = base;
    o.seqlen_q = 33;
    o.seqlen_k = 12;
    o.causal = true;
    o.head_dim = 5;
    add("causal_sq_gt_sk_odd_head_dim", o);
  }
  {
    RequestOptions o = base;
    o.window_left = 6;
    o.window_right = 3;
    o.kv_heads = 2;  // GQA
    o.head_dim = 33;
    add("window_gqa_head_dim_33", o);
  }
  {
    RequestOptions o = base;
    o.softcap = 2.5f;
    o.softmax_scale = 0.4f;
    o.kv_heads = 1;  // MQA
    add("softcap_scale_mqa", o);
  }
  {
    RequestOptions o = base;
    o.alibi = 2;
    o.causal = true;
    add("alibi_per_sequence_causal", o);
  }
  {
    RequestOptions o = base;
    o.sinks = true;
    o.window_left = 4;
    add("sinks_left_window", o);
  }
  {
    RequestOptions o = base;
    o.mask_dtype = v1::FLOAT32;
    o.mask_shape = {o.batch, o.q_heads, o.seqlen_q, o.seqlen_k};
    add("additive_mask_full", o);
  }
  {
    RequestOptions o = base;
    o.mask_dtype = v1::BOOL;
    o.mask_shape = {o.seqlen_q, o.seqlen_k};
    o.alibi = 1;
    o.softcap = 4.f;
    add("bool_mask_alibi_softcap", o);
  }
  {
    // Every option at once, packed, with an empty query sequence, an empty key sequence (its
    // rows see no key) and sequences of other lengths.
    RequestOptions o = base;
    o.seqlens_q = {7, 0, 12, 5};
    o.seqlens_k = {9, 4, 12, 0};
    o.q_heads = 6;
    o.kv_heads = 2;
    o.head_dim = 24;
    o.causal = true;
    o.window_left = 5;
    o.softcap = 3.f;
    o.alibi = 2;
    o.sinks = true;
    add("varlen_every_option_empty_sequences", o);
  }
  {
    // Window (left 2, right 0) with seqlen_q > seqlen_k: the first 12 rows sit at key positions
    // < 0 and see no key at all (fully masked rows), the rest see one to three keys.
    RequestOptions o = base;
    o.seqlen_q = 20;
    o.seqlen_k = 8;
    o.window_left = 2;
    o.window_right = 0;
    add("fully_masked_rows_window", o);
  }
  return cases;
}

TEST_F(BackwardServiceTest, UnaryGradientsMatchFloat64Reference) {
  uint64_t id = 1;
  for (const NamedCase& c : Cases()) {
    SCOPED_TRACE(c.name);
    const v1::AttentionRequest request = BackwardRequestFor(c.options, id++);
    v1::AttentionResponse response;
    const grpc::Status status = Backward(request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.request_id(), request.request_id());
    EXPECT_FALSE(response.has_o());
    EXPECT_FALSE(response.has_lse());
    EXPECT_EQ(response.batch().device(), "cpu");
    EXPECT_EQ(CompareBackwardWithReference(request, response), "");
  }
}

// A bool mask whose row 3 is all false: that row's dq is exactly 0, and a key no row sees gets
// dk = dv = 0; the other rows still match the reference.
TEST_F(BackwardServiceTest, FullyMaskedRowAndUnseenKeyGetZeroGradients) {
  RequestOptions o;
  o.dtype = v1::FLOAT32;
  o.seqlen_q = 6;
  o.seqlen_k = 5;
  o.q_heads = o.kv_heads = 1;
  o.head_dim = 8;
  o.return_lse = true;
  v1::AttentionRequest forward = MakeRequest(o, 500, rng_);
  v1::Tensor* mask = forward.mutable_mask();
  mask->set_dtype(v1::BOOL);
  mask->add_shape(o.seqlen_q);
  mask->add_shape(o.seqlen_k);
  std::string bits(o.seqlen_q * o.seqlen_k, '\1');
  for (int j = 0; j < o.seqlen_k; ++j) bits[3 * o.seqlen_k + j] = 0;  // row 3 sees nothing
  for (int i = 0; i < o.seqlen_q; ++i) bits[i * o.seqlen_k + 4] = 0;  // nobody sees key 4
  mask->set_data(bits);
  v1::AttentionResponse answer;
  ASSERT_TRUE(Forward(forward, &answer).ok());
  const v1::AttentionRequest request = MakeBackwardRequest(forward, answer, 501, rng_);
  v1::AttentionResponse response;
  const grpc::Status status = Backward(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(CompareBackwardWithReference(request, response), "");
  const float* dq = reinterpret_cast<const float*>(response.dq().data().data());
  const float* dk = reinterpret_cast<const float*>(response.dk().data().data());
  const float* dv = reinterpret_cast<const float*>(response.dv().data().data());
  bool row_nonzero = false;
  for (int e = 0; e < o.head_dim; ++e) {
    EXPECT_EQ(dq[3 * o.head_dim + e], 0.f) << e;
    EXPECT_EQ(dk[4 * o.head_dim + e], 0.f) << e;
    EXPECT_EQ(dv[4 * o.head_dim + e], 0.f) << e;
    row_nonzero = row_nonzero || dq[2 * o.head_dim + e] != 0.f;
  }
  EXPECT_TRUE(row_nonzero);
}

// Backward requests on AttentionStream (backward = true), interleaved with forward ones: each
// answer pairs with its request by id and holds the gradients or o.
TEST_F(BackwardServiceTest, StreamCarriesBackwardAndForwardRequests) {
  std::map<uint64_t, v1::AttentionRequest> sent;
  for (uint64_t id = 100; id < 106; ++id) {
    RequestOptions o;
    o.dtype = id % 2 == 0 ? v1::FLOAT32 : v1::BFLOAT16;
    o.seqlen_q = 10 + static_cast<int>(id % 3);
    o.seqlen_k = 14;
    o.causal = id % 3 == 0;
    o.head_dim = 12;
    sent[id] = id % 3 == 2 ? MakeRequest(o, id, rng_) : BackwardRequestFor(o, id);
  }
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + 60s);
  auto stream = stub_->AttentionStream(&context);
  for (const auto& [id, request] : sent) ASSERT_TRUE(stream->Write(request));
  stream->WritesDone();
  v1::AttentionResponse response;
  int answered = 0;
  while (stream->Read(&response)) {
    ++answered;
    const v1::AttentionRequest& request = sent.at(response.request_id());
    EXPECT_FALSE(response.has_error()) << response.error().message();
    if (request.backward()) {
      EXPECT_EQ(CompareBackwardWithReference(request, response), "") << response.request_id();
    } else {
      EXPECT_EQ(testing::CompareWithReference(request, response), "") << response.request_id();
      EXPECT_FALSE(response.has_dq());
    }
  }
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(answered, static_cast<int>(sent.size()));
}

// Concurrent backward requests of one kernel configuration (different lengths, dense and packed)
// share launches: some answer reports a batch of several requests, and every one is right.
TEST_F(BackwardServiceTest, ConcurrentBackwardRequestsArePackedIntoOneLaunch) {
  constexpr int kCalls = 16;
  std::vector<v1::AttentionRequest> requests;
  for (int i = 0; i < kCalls; ++i) {
    RequestOptions o;
    o.dtype = v1::FLOAT16;
    o.q_heads = 4;
    o.kv_heads = 2;
    o.head_dim = 32;
    o.causal = true;
    o.alibi = 1;
    if (i % 3 == 0) {
      o.seqlens_q = {40 + i, 7};
      o.seqlens_k = {50 + i, 30};
    } else {
      o.seqlen_q = 64 + 8 * (i % 4);
      o.seqlen_k = 80;
    }
    requests.push_back(BackwardRequestFor(o, 2000 + i));
  }
  std::vector<v1::AttentionResponse> responses(kCalls);
  std::vector<grpc::ClientContext> contexts(kCalls);
  std::vector<std::promise<grpc::Status>> done(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    contexts[i].set_deadline(std::chrono::system_clock::now() + 60s);
    stub_->async()->AttentionBackward(&contexts[i], &requests[i], &responses[i],
                                      [&done, i](grpc::Status s) { done[i].set_value(s); });
  }
  int max_requests_per_launch = 0;
  for (int i = 0; i < kCalls; ++i) {
    const grpc::Status status = done[i].get_future().get();
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(CompareBackwardWithReference(requests[i], responses[i]), "") << i;
    max_requests_per_launch = std::max(max_requests_per_launch, responses[i].batch().requests());
  }
  EXPECT_GT(max_requests_per_launch, 1);
}

// The C++ client library: AttentionBackwardArgs (views of the caller's arrays) ->
// BuildBackwardRequest -> Client::AttentionBackward, packed varlen with GQA and sinks.
TEST_F(BackwardServiceTest, CppClientAttentionBackward) {
  RequestOptions o;
  o.dtype = v1::FLOAT32;
  o.seqlens_q = {5, 9};
  o.seqlens_k = {8, 3};
  o.q_heads = 4;
  o.kv_heads = 2;
  o.head_dim = 10;
  o.causal = true;
  o.sinks = true;
  const v1::AttentionRequest built = BackwardRequestFor(o, 4000);
  auto view = [](const v1::Tensor& t) {
    return client::TensorView{t.dtype(), t.data().data(), {t.shape().begin(), t.shape().end()}};
  };
  client::AttentionBackwardArgs args;
  args.forward.q = view(built.q());
  args.forward.k = view(built.k());
  args.forward.v = view(built.v());
  args.forward.cu_seqlens_q = built.cu_seqlens_q();
  args.forward.cu_seqlens_k = built.cu_seqlens_k();
  args.forward.causal = true;
  args.forward.sinks = view(built.sinks());
  args.o = view(built.o());
  args.lse = view(built.lse());
  args.grad_o = view(built.grad_o());
  absl::StatusOr<client::Client> c = client::Client::Create(server_->address());
  ASSERT_TRUE(c.ok()) << c.status();
  absl::StatusOr<v1::AttentionResponse> response = c->AttentionBackward(args);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(CompareBackwardWithReference(built, *response), "");
  // A bad view is refused by the client, naming the tensor.
  args.grad_o.data = nullptr;
  EXPECT_THAT(c->AttentionBackward(args).status().message(), HasSubstr("grad_o"));
}

// Each malformed backward request is answered INVALID_ARGUMENT naming the field and the rule,
// on the unary call and in-band on the stream; the server keeps serving.
TEST_F(BackwardServiceTest, BadInputsAreNamed) {
  RequestOptions o;
  o.dtype = v1::BFLOAT16;
  o.batch = 2;
  o.seqlen_q = 5;
  o.seqlen_k = 7;
  const v1::AttentionRequest good = BackwardRequestFor(o, 3000);
  struct Bad {
    std::string expect;
    std::function<void(v1::AttentionRequest&)> mutate;
  };
  const std::vector<Bad> bad = {
      {"o: a backward request must carry", [](auto& r) { r.clear_o(); }},
      {"lse: a backward request must carry", [](auto& r) { r.clear_lse(); }},
      {"grad_o: a backward request must carry", [](auto& r) { r.clear_grad_o(); }},
      {"o.dtype: must equal q.dtype", [](auto& r) { r.mutable_o()->set_dtype(v1::FLOAT16); }},
      {"grad_o.shape: must equal q.shape", [](auto& r) { r.mutable_grad_o()->set_shape(1, 4); }},
      {"grad_o.data: length must be",
       [](auto& r) { r.mutable_grad_o()->mutable_data()->resize(6); }},
      {"lse.dtype: must be FLOAT32", [](auto& r) { r.mutable_lse()->set_dtype(v1::BFLOAT16); }},
      {"lse.shape: must be [batch, q_heads, seqlen_q] = [2, 4, 5]",
       [](auto& r) { r.mutable_lse()->set_shape(2, 6); }},
      {"lse.data: length must be", [](auto& r) { r.mutable_lse()->mutable_data()->resize(8); }},
      {"lse[3]: must be finite or -inf",
       [](auto& r) {
         const float nan = std::numeric_limits<float>::quiet_NaN();
         r.mutable_lse()->mutable_data()->replace(12, 4, reinterpret_cast<const char*>(&nan), 4);
       }},
      {"v.dtype: must equal q.dtype", [](auto& r) { r.mutable_v()->set_dtype(v1::FLOAT32); }},
  };
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.expect);
    v1::AttentionRequest r = good;
    b.mutate(r);
    v1::AttentionResponse response;
    const grpc::Status status = Backward(r, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr(b.expect));
  }
  // The forward RPC refuses a backward request, and a forward request carrying backward inputs.
  v1::AttentionResponse response;
  grpc::Status status = Forward(good, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("backward: must be false on the Attention RPC"));
  v1::AttentionRequest forward_with_o = good;
  forward_with_o.set_backward(false);
  forward_with_o.clear_lse();
  forward_with_o.clear_grad_o();
  status = Forward(forward_with_o, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("o: is an input of the backward pass only"));
  // In-band on the stream: the bad one fails alone.
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + 60s);
  auto stream = stub_->AttentionStream(&context);
  v1::AttentionRequest missing = good;
  missing.set_request_id(3001);
  missing.clear_grad_o();
  ASSERT_TRUE(stream->Write(missing));
  ASSERT_TRUE(stream->Write(good));
  stream->WritesDone();
  int answered = 0;
  while (stream->Read(&response)) {
    ++answered;
    if (response.request_id() == 3001) {
      EXPECT_EQ(response.error().code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
      EXPECT_THAT(response.error().message(), HasSubstr("grad_o: a backward request must carry"));
    } else {
      EXPECT_EQ(CompareBackwardWithReference(good, response), "");
    }
  }
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(answered, 2);
  // Still serving.
  ASSERT_TRUE(Backward(good, &response).ok());
  EXPECT_EQ(CompareBackwardWithReference(good, response), "");
}

// A backward request larger than the CPU executor's staging bound (--pinned_host_bytes) runs
// alone, staged in a buffer sized for it, and is answered right, twice in a row (the oversized
// buffer is released after each).
TEST(BackwardStagingTest, LoneRequestAboveTheStagingBound) {
  ServerProcess server;
  ASSERT_EQ(server.Start({"--backend=cpu", "--pinned_host_bytes=65536"}), "");
  auto stub = v1::AttentionService::NewStub(Connect(server.address()));
  std::mt19937 rng(24);
  RequestOptions o;
  o.dtype = v1::FLOAT32;
  o.seqlen_q = o.seqlen_k = 96;
  o.q_heads = o.kv_heads = 4;
  o.head_dim = 32;  // q alone is 48 KiB; the batch's buffers about 300 KiB
  o.return_lse = true;
  for (uint64_t id : {1, 2}) {
    const v1::AttentionRequest forward = MakeRequest(o, id, rng);
    v1::AttentionResponse answer;
    {
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + 60s);
      ASSERT_TRUE(stub->Attention(&context, forward, &answer).ok());
    }
    const v1::AttentionRequest request = MakeBackwardRequest(forward, answer, id, rng);
    v1::AttentionResponse response;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 60s);
    const grpc::Status status = stub->AttentionBackward(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(CompareBackwardWithReference(request, response), "");
  }
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(60s), 0);
}

// The server of the backend under test (ATTN_TEST_BACKEND; server_backward_integration_test_gpu
// runs this binary with cuda) answers the backward pass of 16-bit requests (the CUDA backend with
// its backward kernels, kernels/cuda/flash_bwd_kernel.cuh, in both dQ modes), and keeps serving
// forwards. FLOAT32 on the CUDA backend: where its float32 backward kernel is routed
// (cuda::Float32BackwardRouted, kernels/cuda/flash_bwd_fp32.h) the answer matches the float64
// reference at float32 accuracy in both dQ modes; otherwise it is refused with UNIMPLEMENTED
// naming the rule.
TEST(BackwardOnBackendUnderTest, AnswersSixteenBitBackward) {
  if (testing::ServerBackendUnderTest() == "cuda") {
#ifdef ATTENTION_HAVE_CUDA
    // Fails (does not skip) while the backward kernels are switched off: the GPU run then says
    // that this GPU build does not serve the backward.
    const absl::Status routed = cuda::BackwardKernelsRouted();
    ASSERT_TRUE(routed.ok()) << "the backward on the GPU: " << routed.message();
#else
    FAIL() << "ATTN_TEST_BACKEND=cuda: this build has no CUDA backend";
#endif
  }
  ServerProcess server;
  ASSERT_EQ(server.Start({}), "");
  auto stub = v1::AttentionService::NewStub(Connect(server.address()));
  std::mt19937 rng(23);
  const auto forward_of = [&](RequestOptions o, uint64_t id, v1::AttentionRequest* forward,
                              v1::AttentionResponse* answer) {
    o.return_lse = true;
    *forward = MakeRequest(o, id, rng);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 60s);
    const grpc::Status status = stub->Attention(&context, *forward, answer);
    ASSERT_TRUE(status.ok()) << status.error_message();
  };
  RequestOptions o;
  o.dtype = v1::BFLOAT16;
  o.seqlen_q = o.seqlen_k = 32;
  o.head_dim = 64;  // a head dim every CUDA build compiles
  o.causal = true;
  v1::AttentionRequest forward;
  v1::AttentionResponse answer;
  forward_of(o, 1, &forward, &answer);
  for (bool deterministic : {false, true}) {
    v1::AttentionRequest request = MakeBackwardRequest(forward, answer, 2, rng);
    request.set_deterministic(deterministic);
    v1::AttentionResponse response;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 60s);
    const grpc::Status status = stub->AttentionBackward(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(CompareBackwardWithReference(request, response), "");
  }
  if (testing::ServerBackendUnderTest() == "cuda") {
    RequestOptions f = o;
    f.dtype = v1::FLOAT32;
    v1::AttentionRequest forward32;
    v1::AttentionResponse answer32;
    forward_of(f, 3, &forward32, &answer32);
#ifdef ATTENTION_HAVE_CUDA
    const bool routed = cuda::Float32BackwardRouted().ok();
#else
    const bool routed = false;
#endif
    for (bool deterministic : {false, true}) {
      v1::AttentionRequest request = MakeBackwardRequest(forward32, answer32, 4, rng);
      request.set_deterministic(deterministic);
      v1::AttentionResponse response;
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + 60s);
      const grpc::Status status = stub->AttentionBackward(&context, request, &response);
      if (routed) {
        ASSERT_TRUE(status.ok()) << status.error_message();
        EXPECT_EQ(CompareBackwardWithReference(request, response), "");
      } else {
        EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED);
        EXPECT_THAT(status.error_message(), HasSubstr("float32 has no backward kernel"));
      }
    }
  }
  // head_dims that are not multiples of 8 (the plan pads their rows for the GPU kernels), GQA,
  // Sq != Sk, forward and backward; float32 where its backward is served.
  {
    RequestOptions odd;
    odd.dtype = v1::BFLOAT16;
    odd.seqlen_q = 29;
    odd.seqlen_k = 45;
    odd.q_heads = 6;
    odd.kv_heads = 2;
    odd.head_dim = 36;
    odd.causal = true;
    std::vector<RequestOptions> shapes = {odd};
    RequestOptions tiny = odd;
    tiny.dtype = v1::FLOAT32;
    tiny.head_dim = 5;
    tiny.causal = false;
    tiny.window_left = 9;
    tiny.window_right = 2;
    bool float32_served = testing::ServerBackendUnderTest() != "cuda";
#ifdef ATTENTION_HAVE_CUDA
    float32_served = float32_served || cuda::Float32BackwardRouted().ok();
#endif
    if (float32_served) shapes.push_back(tiny);
    uint64_t id = 10;
    for (const RequestOptions& shape : shapes) {
      SCOPED_TRACE(absl::StrCat("head_dim ", shape.head_dim));
      v1::AttentionRequest forward_odd;
      v1::AttentionResponse answer_odd;
      forward_of(shape, id++, &forward_odd, &answer_odd);
      EXPECT_EQ(testing::CompareWithReference(forward_odd, answer_odd), "");
      const v1::AttentionRequest request = MakeBackwardRequest(forward_odd, answer_odd, id++, rng);
      v1::AttentionResponse response;
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + 60s);
      const grpc::Status status = stub->AttentionBackward(&context, request, &response);
      ASSERT_TRUE(status.ok()) << status.error_message();
      EXPECT_EQ(CompareBackwardWithReference(request, response), "");
    }
  }
  grpc::ClientContext again;
  again.set_deadline(std::chrono::system_clock::now() + 60s);
  EXPECT_TRUE(stub->Attention(&again, forward, &answer).ok());
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(60s), 0);
}

}  // namespace
}  // namespace attention::server
