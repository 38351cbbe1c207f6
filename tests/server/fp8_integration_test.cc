// FLOAT8_E4M3 requests (issue 23) through the public RPC of the real attention_server binary
// ($ATTN_SERVER_BINARY): per-tensor and per-head descales, GQA, causal, window, softcap, ALiBi,
// sinks, masks, lse, head dims 8 to 256, ragged packed batches, and concurrent requests with
// different descales packed into shared launches, each against the float64 reference on the
// dequantized inputs (e4m3 x descale). o comes back BFLOAT16: at BFLOAT16's tolerance on any
// backend, and on the CPU backend as the exact bfloat16 rounding of the reference (away from
// rounding midpoints). Hostile requests (descale shapes, values, dtypes, FP8 backward, mixed
// dtypes, e4m3 NaN codes) get INVALID_ARGUMENT naming the field and the rule, and the server stays
// up. server_fp8_integration_test_gpu runs the same against a GPU server (ATTN_TEST_BACKEND=cuda):
// there every request must match too, those the FP8 kernel takes and those it lacks (ALiBi,
// masks, windows other than causal, head-dim buckets this build left out), which the backend
// computes with its 16-bit kernel on bfloat16 copies of the dequantized inputs; a request the
// backend's CheckSupported refuses (a head dim with no 16-bit kernel in this build) must come
// back UNIMPLEMENTED naming FLOAT8_E4M3, and each test must have run some. The shared launches,
// stream and hostile tests use head_dim 128, which every FP8 build compiles.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <future>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "attention/v1/attention.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kernels/dtype.h"
#include "tests/server/server_test_util.h"
#include "tests/server/shared_server_test.h"
#ifdef ATTENTION_HAVE_CUDA
#include "kernels/cuda/attention_cuda.h"
#endif

namespace attention::server {
namespace {

using testing::CompareWithReference;
using ::testing::HasSubstr;
using testing::MakeRequest;
using testing::OutputValue;
using testing::ReferenceOutput;
using testing::RequestOptions;
using namespace std::chrono_literals;

class Fp8Test : public testing::SharedServerTest<Fp8Test> {
 public:
  static std::vector<std::string> ServerFlags() { return {}; }

 protected:
  // Sends a request of `options`. Where the backend does not serve it (Served), the answer must be
  // UNIMPLEMENTED naming FLOAT8_E4M3 and this returns 0; else a BFLOAT16 o matching the reference
  // (exactly rounded on the CPU), and this returns 1.
  int CallAndCheck(const RequestOptions& options, uint64_t id);

  // 16 concurrent head_dim-128 requests with different descales (with ALiBi or not), each checked.
  void CallConcurrently(bool alibi);

  std::mt19937 rng_{23};
};

bool OnGpu() { return testing::ServerBackendUnderTest() == "cuda"; }

// Why the backend under test does not serve FLOAT8_E4M3, or "" when it does (the CPU always; a
// GPU with its FP8 kernel or, without it, on bfloat16 copies).
std::string Fp8NotServed() {
  if (!OnGpu()) return "";
#ifdef ATTENTION_HAVE_CUDA
  return "";
#else
  return "ATTN_TEST_BACKEND=cuda: this build has no CUDA backend";
#endif
}

// Whether the backend under test computes requests of `o` (the CPU: all of them); on the GPU,
// the CUDA backend's CheckSupported of their configuration as the server forms it (head_dim padded
// to a multiple of 16, server/plan.h), which the server answers UNIMPLEMENTED when it refuses.
bool Served(const RequestOptions& o) {
  if (!OnGpu()) return true;
#ifdef ATTENTION_HAVE_CUDA
  KernelConfig c;
  c.kind = WorkKind::kForward;
  c.dtype = DType::kFloat8E4M3;
  c.head_dim = (o.head_dim + 15) / 16 * 16;
  c.q_heads = o.q_heads;
  c.kv_heads = o.kv_heads;
  c.softmax_scale = o.softmax_scale ? *o.softmax_scale : 1.f / std::sqrt(float(o.head_dim));
  c.softcap = o.softcap;
  c.causal = o.causal;
  c.window_left = o.window_left;
  c.window_right = o.window_right;
  c.alibi = o.alibi != 0;
  c.sinks = o.sinks;
  c.mask_kind = o.mask_shape.empty()       ? MaskKind::kNone
                : o.mask_dtype == v1::BOOL ? MaskKind::kBool
                                           : MaskKind::kAdditive;
  Normalize(c);
  return cuda::CheckSupported(c).ok();
#else
  static_cast<void>(o);
  return false;  // ATTN_TEST_BACKEND=cuda in a build without CUDA: Fp8NotServed says so
#endif
}

RequestOptions Fp8(int descale) {
  RequestOptions o;
  o.dtype = v1::FLOAT8_E4M3;
  o.descale = descale;
  return o;
}

// On the CPU backend o must be the bfloat16 rounding of the float64 reference (the backend
// computes FP8 at float32 accuracy) except within 2e-5 x max|o| of a rounding midpoint; returns
// the first element that is not, or "".
std::string ExpectExactRounding(const v1::AttentionRequest& request,
                                const v1::AttentionResponse& response) {
  if (testing::ServerBackendUnderTest() != "cpu") return "";
  const std::vector<double> ref = ReferenceOutput(request);
  double largest = 0.0;
  for (double x : ref) largest = std::max(largest, std::abs(x));
  for (size_t i = 0; i < ref.size(); ++i) {
    const double got = OutputValue(response.o(), static_cast<int64_t>(i));
    const double rounded = BFloat16ToFloat(FloatToBFloat16(static_cast<float>(ref[i])));
    const double midpoint =
        BitsFloat((FloatBits(static_cast<float>(ref[i])) & 0xffff0000u) | 0x8000u);
    if (got != rounded && std::abs(ref[i] - midpoint) > 2e-5 * largest) {
      return "o[" + std::to_string(i) + "] = " + std::to_string(got) +
             ", not the bfloat16 rounding of the reference " + std::to_string(ref[i]);
    }
  }
  return "";
}

int Fp8Test::CallAndCheck(const RequestOptions& options, uint64_t id) {
  const v1::AttentionRequest request = MakeRequest(options, id, rng_);
  v1::AttentionResponse response;
  const grpc::Status status = Call(request, &response);
  if (!Served(options)) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED) << "request " << id;
    EXPECT_THAT(status.error_message(), HasSubstr("FLOAT8_E4M3")) << "request " << id;
    return 0;
  }
  EXPECT_TRUE(status.ok()) << "request " << id << ": " << status.error_message();
  if (!status.ok()) return 0;
  EXPECT_EQ(response.o().dtype(), v1::BFLOAT16);
  EXPECT_EQ(response.precision(), v1::PRECISION_FULL);
  EXPECT_EQ(CompareWithReference(request, response), "") << "request " << id;
  EXPECT_EQ(ExpectExactRounding(request, response), "") << "request " << id;
  return 1;
}

// An FP8 request shape: dense [batch, seqlen_q / seqlen_k, heads, head_dim].
RequestOptions Fp8Dense(int descale, int batch, int seqlen_q, int seqlen_k, int q_heads,
                        int kv_heads, int head_dim) {
  RequestOptions o = Fp8(descale);
  o.batch = batch;
  o.seqlen_q = seqlen_q;
  o.seqlen_k = seqlen_k;
  o.q_heads = q_heads;
  o.kv_heads = kv_heads;
  o.head_dim = head_dim;
  return o;
}

std::vector<RequestOptions> VariedFp8Requests() {
  std::vector<RequestOptions> list;
  RequestOptions o = Fp8Dense(2, 2, 33, 47, 8, 2, 64);
  o.causal = true;
  o.return_lse = true;
  list.push_back(o);
  o = Fp8Dense(1, 1, 0, 0, 4, 1, 128);  // packed, with an empty sequence
  o.seqlens_q = {5, 19, 1, 0};
  o.seqlens_k = {9, 19, 30, 4};
  o.return_lse = true;
  list.push_back(o);
  o = Fp8Dense(0, 1, 17, 23, 2, 2, 256);  // no factors: the codes are the values
  o.softcap = 20.f;
  o.window_left = 8;
  o.window_right = 2;
  list.push_back(o);
  o = Fp8Dense(2, 3, 1, 40, 4, 4, 8);
  o.mask_dtype = v1::BFLOAT16;
  o.mask_shape = {4, 1, 40};
  o.alibi = 2;
  o.softmax_scale = 0.5f;
  list.push_back(o);
  o = Fp8Dense(2, 1, 21, 45, 6, 2, 40);  // a GPU server pads FP8 rows to 48 (PlanHeadDim)
  o.sinks = true;
  o.mask_dtype = v1::BOOL;
  o.mask_shape = {21, 45};
  o.return_lse = true;
  list.push_back(o);
  o = Fp8Dense(2, 1, 0, 0, 6, 3, 96);  // packed, per-head factors, a window and ALiBi
  o.seqlens_q = {7, 0, 33};
  o.seqlens_k = {50, 9, 33};
  o.window_left = 16;
  o.window_right = 4;
  o.alibi = 2;
  o.return_lse = true;
  list.push_back(o);
  o = Fp8Dense(1, 1, 0, 0, 2, 1, 200);
  o.seqlens_q = {64, 3};
  o.seqlens_k = {64, 130};
  o.causal = true;
  o.alibi = 1;
  list.push_back(o);
  return list;
}

TEST_F(Fp8Test, UnaryMatchesReference) {
  ASSERT_EQ(Fp8NotServed(), "");
  uint64_t id = 1;
  int served = 0;
  for (const RequestOptions& options : VariedFp8Requests()) served += CallAndCheck(options, id++);
  EXPECT_GT(served, 0);
}

// Every head_dim from 8 to 256 in steps of 8, per-head descales, ragged packed sequences.
TEST_F(Fp8Test, EveryHeadDim) {
  ASSERT_EQ(Fp8NotServed(), "");
  int served = 0;
  for (int d = 8; d <= 256; d += 8) {
    RequestOptions o = Fp8Dense(d % 16 == 0 ? 2 : 1, 1, 0, 0, 4, 2, d);
    o.seqlens_q = {1, 9 + d % 13};
    o.seqlens_k = {17, 5 + d % 29};
    o.causal = d % 24 == 0;
    o.return_lse = true;
    served += CallAndCheck(o, 100 + d);
  }
  // The CPU serves all 32; a GPU build every dim of its compiled 16-bit buckets (FP8 rows padded
  // to a multiple of 16: the FP8 kernel, or the 16-bit one on bfloat16 copies).
  EXPECT_GE(served, OnGpu() ? 1 : 32);
}

// Concurrent FP8 requests of one configuration but different descales (per tensor and per head)
// share launches; each answer uses its own factors. Without ALiBi a GPU runs them on its FP8
// kernel, with it on bfloat16 copies (each packed row dequantized with its own sequence's
// factors).
TEST_F(Fp8Test, RequestsWithDifferentDescalesShareLaunches) {
  for (const bool alibi : {false, true}) {
    SCOPED_TRACE(alibi ? "ALiBi" : "no ALiBi");
    CallConcurrently(alibi);
  }
}

void Fp8Test::CallConcurrently(bool alibi) {
  ASSERT_EQ(Fp8NotServed(), "");
  constexpr int kCalls = 16;
  std::vector<v1::AttentionRequest> requests;
  std::vector<v1::AttentionResponse> responses(kCalls);
  std::vector<grpc::ClientContext> contexts(kCalls);
  std::vector<std::promise<grpc::Status>> done(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    const int seqlen = 96 + 16 * (i % 5);
    RequestOptions o = Fp8Dense(i % 3, 1, seqlen, seqlen, 4, 2, 128);
    o.alibi = alibi ? 1 : 0;
    ASSERT_TRUE(Served(o));
    requests.push_back(MakeRequest(o, 1000 + i, rng_));
  }
  for (int i = 0; i < kCalls; ++i) {
    stub_->async()->Attention(&contexts[i], &requests[i], &responses[i],
                              [&done, i](grpc::Status s) { done[i].set_value(s); });
  }
  int most_requests = 0;
  for (int i = 0; i < kCalls; ++i) {
    const grpc::Status status = done[i].get_future().get();
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(CompareWithReference(requests[i], responses[i]), "") << "request " << i;
    EXPECT_EQ(ExpectExactRounding(requests[i], responses[i]), "") << "request " << i;
    most_requests = std::max(most_requests, responses[i].batch().requests());
  }
  // One launch at a time on the CPU executor: requests arriving meanwhile share the next one (a
  // GPU executor, pipelined, may launch each alone).
  if (!OnGpu()) {
    EXPECT_GT(most_requests, 1);
  }
}

// FP8 and BFLOAT16 requests interleaved on one stream: separate buckets, each answered right.
TEST_F(Fp8Test, StreamMixesFp8AndBFloat16) {
  ASSERT_EQ(Fp8NotServed(), "");
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + 60s);
  auto stream = stub_->AttentionStream(&context);
  std::vector<v1::AttentionRequest> sent;
  for (uint64_t id = 0; id < 12; ++id) {
    RequestOptions o = id % 2 == 0 ? Fp8(2) : RequestOptions{};
    o.seqlen_q = 20 + static_cast<int>(id);
    o.seqlen_k = 30;
    o.head_dim = 128;
    sent.push_back(MakeRequest(o, id, rng_));
    ASSERT_TRUE(stream->Write(sent.back()));
  }
  stream->WritesDone();
  v1::AttentionResponse response;
  int answered = 0;
  while (stream->Read(&response)) {
    ASSERT_LT(response.request_id(), sent.size());
    EXPECT_FALSE(response.has_error()) << response.error().message();
    EXPECT_EQ(CompareWithReference(sent[response.request_id()], response), "")
        << "request " << response.request_id();
    ++answered;
  }
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(answered, 12);
}

struct Hostile {
  std::string name;
  std::function<void(v1::AttentionRequest&)> mutate;
  std::string message;  // field and rule
};

void SetFactors(v1::Tensor* t, const std::vector<float>& values) {
  t->set_dtype(v1::FLOAT32);
  t->clear_shape();
  t->add_shape(static_cast<int64_t>(values.size()));
  t->set_data(std::string(reinterpret_cast<const char*>(values.data()), values.size() * 4));
}

TEST_F(Fp8Test, HostileRequestsGetInvalidArgumentAndTheServerStaysUp) {
  ASSERT_EQ(Fp8NotServed(), "");
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<Hostile> hostile = {
      {"descale shape",
       [](auto& r) {
         SetFactors(r.mutable_k_descale(), {1.f, 1.f, 1.f});
       },
       "k_descale.shape: must be [1] (per tensor) or [kv_heads] = [2] (per head), got [3]"},
      {"zero descale", [](auto& r) { SetFactors(r.mutable_q_descale(), {0.f}); },
       "q_descale[0]: a descale factor must be finite and > 0, got 0"},
      {"negative descale",
       [](auto& r) {
         SetFactors(r.mutable_v_descale(), {1.f, -0.5f});
       },
       "v_descale[1]: a descale factor must be finite and > 0, got -0.5"},
      {"NaN descale", [nan](auto& r) { SetFactors(r.mutable_q_descale(), {nan}); },
       "q_descale[0]: a descale factor must be finite and > 0, got nan"},
      {"descale dtype", [](auto& r) { r.mutable_v_descale()->set_dtype(v1::BFLOAT16); },
       "v_descale.dtype: must be FLOAT32, got BFLOAT16"},
      {"mixed dtypes", [](auto& r) { r.mutable_v()->set_dtype(v1::FLOAT16); },
       "v.dtype: must equal q.dtype (FLOAT8_E4M3), got FLOAT16"},
      {"FP8 data length", [](auto& r) { r.mutable_k()->mutable_data()->pop_back(); },
       "k.data: length must be product(shape) x 1"},
      {"descale on bfloat16",
       [](auto& r) {
         r.mutable_q()->set_dtype(v1::BFLOAT16);
         r.mutable_k()->set_dtype(v1::BFLOAT16);
         r.mutable_v()->set_dtype(v1::BFLOAT16);
       },
       "q_descale: is for FLOAT8_E4M3 inputs only (q.dtype is BFLOAT16)"},
      {"FP8 backward on the stream's flag", [](auto& r) { r.set_backward(true); },
       "q.dtype: FLOAT8_E4M3 inputs are forward only"},
      // An e4m3 NaN code is not looked for on the way in: the result is NaN and not answered.
      {"NaN code", [](auto& r) { (*r.mutable_k()->mutable_data())[5] = '\x7f'; },
       "o: the result is not finite"},
  };
  const RequestOptions o = Fp8Dense(2, 1, 16, 16, 4, 2, 128);
  ASSERT_TRUE(Served(o));
  for (const Hostile& h : hostile) {
    v1::AttentionRequest request = MakeRequest(o, 7, rng_);
    if (h.name == "descale on bfloat16") {
      // BFLOAT16 data of the same shape (2 bytes per element).
      for (v1::Tensor* t : {request.mutable_q(), request.mutable_k(), request.mutable_v()}) {
        t->mutable_data()->append(t->data());
      }
    }
    h.mutate(request);
    v1::AttentionResponse response;
    grpc::Status status;
    if (request.backward()) {
      grpc::ClientContext context;
      status = stub_->AttentionBackward(&context, request, &response);
    } else {
      status = Call(request, &response);
    }
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << h.name;
    EXPECT_THAT(status.error_message(), HasSubstr(h.message)) << h.name;
  }
  // The AttentionBackward RPC treats every request as a backward one.
  {
    const v1::AttentionRequest request = MakeRequest(o, 8, rng_);
    grpc::ClientContext context;
    v1::AttentionResponse response;
    const grpc::Status status = stub_->AttentionBackward(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("q.dtype: FLOAT8_E4M3 inputs are forward only"));
  }
  // Still serving.
  const v1::AttentionRequest request = MakeRequest(o, 9, rng_);
  v1::AttentionResponse response;
  const grpc::Status status = Call(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(CompareWithReference(request, response), "");
}

}  // namespace
}  // namespace attention::server
