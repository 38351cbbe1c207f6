#include "attention/client/stream_session.h"

#include <memory>
#include <utility>

#include "client/call_stream.h"

namespace attention::client {

using AttentionCallStream =
    CallStream<v1::AttentionService::Stub, v1::AttentionRequest, v1::AttentionResponse,
               std::shared_ptr<v1::AttentionRequest>>;

// One AttentionStream (client/call_stream.h has how its writes, reads and answers go).
class StreamSession::Reactor final : public AttentionCallStream {
 public:
  explicit Reactor(const std::shared_ptr<v1::AttentionService::Stub>& stub)
      : AttentionCallStream(stub, {"stream session", "request",
                                   "stream session: the stream ended without an answer to this "
                                   "request"}) {}

  void Start() {
    stub()->async()->AttentionStream(context(), this);
    StartStream();
  }

 private:
  absl::Status Refusal(bool closing) const override {
    return closing
               ? absl::FailedPreconditionError("stream session: Submit after Finish or Cancel")
               : absl::UnavailableError("stream session: the stream has ended; open a new session");
  }
};

StreamSession::StreamSession(const Client& client, const CallOptions& call)
    : reactor_(std::make_unique<Reactor>(client.stub_)) {
  client.ConfigureContext(call, /*unary=*/false, reactor_->context());
  reactor_->Start();
}

StreamSession::~StreamSession() {
  if (!reactor_->done()) Cancel();
  reactor_->Wait().IgnoreError();
}

uint64_t StreamSession::Submit(std::shared_ptr<v1::AttentionRequest> request,
                               AttentionCallback done) {
  return reactor_->Submit(std::move(request), std::move(done));
}

uint64_t StreamSession::Submit(v1::AttentionRequest request, AttentionCallback done) {
  return Submit(std::make_shared<v1::AttentionRequest>(std::move(request)), std::move(done));
}

std::future<absl::StatusOr<v1::AttentionResponse>> StreamSession::Submit(
    v1::AttentionRequest request) {
  auto promise = std::make_shared<std::promise<absl::StatusOr<v1::AttentionResponse>>>();
  std::future<absl::StatusOr<v1::AttentionResponse>> future = promise->get_future();
  Submit(std::move(request), [promise](absl::StatusOr<v1::AttentionResponse> result) {
    promise->set_value(std::move(result));
  });
  return future;
}

absl::Status StreamSession::Finish() {
  reactor_->Finish();
  return reactor_->Wait();
}

void StreamSession::Cancel() {
  reactor_->Finish();
  reactor_->Cancel();
}

int64_t StreamSession::in_flight() const { return reactor_->in_flight(); }

}  // namespace attention::client
