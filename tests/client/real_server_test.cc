// The client library against the real attention_server (CPU backend) at $ATTN_TARGET, started by
// run_with_server.sh: random requests of every dtype, layout and option checked against the
// float64 reference, unary (sync and async) and many in flight on one stream; the server's
// validation errors as statuses; deadlines.
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "attention/client/client.h"
#include "attention/client/stream_session.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"

namespace attention::client {
namespace {

using ::attention::testing::CompareWithReference;
using ::attention::testing::MakeRequest;
using ::attention::testing::RequestOptions;
using ::testing::HasSubstr;

class RealServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* target = std::getenv("ATTN_TARGET");
    ASSERT_NE(target, nullptr) << "ATTN_TARGET is not set (run under run_with_server.sh)";
    absl::StatusOr<Client> client = Client::Create(target);
    ASSERT_TRUE(client.ok()) << client.status();
    client_.emplace(*std::move(client));
  }

  // A mix of dtypes, dense and packed layouts, GQA and options.
  std::vector<v1::AttentionRequest> MixedRequests(int count) {
    std::vector<v1::AttentionRequest> requests;
    for (int i = 0; i < count; ++i) {
      RequestOptions o;
      o.dtype = std::vector<v1::DType>{v1::BFLOAT16, v1::FLOAT16, v1::FLOAT32}[i % 3];
      o.q_heads = 4;
      o.kv_heads = i % 2 == 0 ? 4 : 2;
      o.head_dim = i % 4 == 3 ? 128 : 64;
      if (i % 5 == 4) {
        o.seqlens_q = {3, 17, 1};
        o.seqlens_k = {9, 17, 30};
      } else {
        o.batch = 1 + i % 3;
        o.seqlen_q = 5 + 7 * (i % 4);
        o.seqlen_k = o.seqlen_q + i % 6;
      }
      o.causal = i % 2 == 1;
      if (i % 7 == 2) o.window_left = 4;
      if (i % 6 == 5) o.softcap = 15.f;
      o.return_lse = i % 3 == 0;
      requests.push_back(MakeRequest(o, 0, rng_));
    }
    return requests;
  }

  std::optional<Client> client_;
  std::mt19937 rng_{2024};
};

TEST_F(RealServerTest, UnaryAnswersMatchTheReference) {
  for (const v1::AttentionRequest& request : MixedRequests(12)) {
    absl::StatusOr<v1::AttentionResponse> response = client_->Attention(request);
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(CompareWithReference(request, *response), "");
    EXPECT_GT(response->timings().total_ns(), 0);
    EXPECT_EQ(response->batch().device(), "cpu");
  }
}

TEST_F(RealServerTest, AsyncCallsInFlightTogether) {
  std::vector<std::shared_ptr<const v1::AttentionRequest>> requests;
  std::vector<std::future<absl::StatusOr<v1::AttentionResponse>>> futures;
  for (v1::AttentionRequest& request : MixedRequests(24)) {
    requests.push_back(std::make_shared<const v1::AttentionRequest>(std::move(request)));
    futures.push_back(client_->AttentionFuture(requests.back()));
  }
  for (size_t i = 0; i < futures.size(); ++i) {
    absl::StatusOr<v1::AttentionResponse> response = futures[i].get();
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(CompareWithReference(*requests[i], *response), "") << "request " << i;
  }
}

TEST_F(RealServerTest, StreamPairsEveryAnswerWithItsRequest) {
  const std::vector<v1::AttentionRequest> requests = MixedRequests(40);
  std::unique_ptr<StreamSession> session = client_->OpenStream();
  std::vector<std::future<absl::StatusOr<v1::AttentionResponse>>> futures;
  for (const v1::AttentionRequest& request : requests) futures.push_back(session->Submit(request));
  // One malformed request in the middle fails alone.
  v1::AttentionRequest bad = requests[0];
  bad.mutable_k()->mutable_shape()->Set(0, 99);
  auto failed = session->Submit(std::move(bad));
  for (size_t i = 0; i < futures.size(); ++i) {
    absl::StatusOr<v1::AttentionResponse> response = futures[i].get();
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(CompareWithReference(requests[i], *response), "") << "request " << i;
  }
  EXPECT_EQ(failed.get().status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(session->Finish().ok());
}

TEST_F(RealServerTest, ValidationErrorsNameTheField) {
  v1::AttentionRequest request = MixedRequests(1)[0];
  request.mutable_v()->mutable_data()->resize(10);
  absl::StatusOr<v1::AttentionResponse> response = client_->Attention(request);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(response.status().message()), HasSubstr("v"));
}

TEST_F(RealServerTest, ExpiredDeadlineIsDeadlineExceeded) {
  RequestOptions big;
  big.batch = 4;
  big.seqlen_q = big.seqlen_k = 512;
  big.q_heads = big.kv_heads = 16;
  big.head_dim = 128;
  CallOptions call;
  call.timeout = std::chrono::microseconds(1);
  absl::StatusOr<v1::AttentionResponse> response =
      client_->Attention(MakeRequest(big, 0, rng_), call);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kDeadlineExceeded);
}

}  // namespace
}  // namespace attention::client
