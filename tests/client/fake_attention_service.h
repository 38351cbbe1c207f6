// A scriptable stand-in for the attention server, for the client's tests: it echoes q as o,
// and can delay, fail with a given status, fail with UNAVAILABLE the first N times, reorder its
// stream answers, or end a stream early. Requests it finds malformed (q without a dtype, or data
// that does not match the shape) get INVALID_ARGUMENT naming q, as the real server would.
#ifndef ATTENTION_TESTS_CLIENT_FAKE_ATTENTION_SERVICE_H_
#define ATTENTION_TESTS_CLIENT_FAKE_ATTENTION_SERVICE_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "attention/v1/attention.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace attention::testing {

struct FakeBehavior {
  // Sleep before answering each request (unary and stream), ending early when the call is
  // cancelled or its deadline passes.
  std::chrono::milliseconds delay{0};
  // Unary calls fail with this status when it is not OK.
  grpc::Status fail = grpc::Status::OK;
  // The first `unavailable_times` unary calls fail with UNAVAILABLE.
  int unavailable_times = 0;
  // Stream answers go out in reverse order, in groups of this many requests (the last group when
  // the client half-closes).
  int stream_reverse_group = 1;
  // A stream ends with UNAVAILABLE, unanswered, once it has read this many requests (0: never).
  int stream_fail_after = 0;
};

class FakeAttentionService final : public ::attention::v1::AttentionService::Service {
 public:
  void set_behavior(const FakeBehavior& behavior);
  // Unary calls received, retries included.
  int unary_calls() const;
  // The value of metadata key "authorization" on the last unary call.
  std::string last_authorization() const;

  grpc::Status Attention(grpc::ServerContext* context,
                         const ::attention::v1::AttentionRequest* request,
                         ::attention::v1::AttentionResponse* response) override;
  grpc::Status AttentionStream(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<::attention::v1::AttentionResponse,
                               ::attention::v1::AttentionRequest>* stream) override;

 private:
  FakeBehavior behavior() const;

  mutable std::mutex mu_;
  FakeBehavior behavior_;
  int unary_calls_ = 0;
  std::string last_authorization_;
};

// The echo answer for `request`: o = q, lse zeros [q.shape[0], q.shape[2], q.shape[1]] when asked
// (dense layout), fixed timings. Returns INVALID_ARGUMENT for a malformed q.
grpc::Status FakeAnswer(const ::attention::v1::AttentionRequest& request,
                        ::attention::v1::AttentionResponse* response);

// The fake service on a loopback port chosen by the system, with the standard health service.
class FakeServer {
 public:
  explicit FakeServer(
      FakeAttentionService* service, const std::string& address = "127.0.0.1:0",
      std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials());
  ~FakeServer();
  // "127.0.0.1:PORT".
  const std::string& address() const { return address_; }
  grpc::Server* server() { return server_.get(); }

 private:
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

}  // namespace attention::testing

#endif  // ATTENTION_TESTS_CLIENT_FAKE_ATTENTION_SERVICE_H_
