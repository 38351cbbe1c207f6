#include "tests/client/fake_attention_service.h"

#include <algorithm>
#include <thread>
#include <vector>

#include "attention/client/tensor.h"

namespace attention::testing {
namespace {

// Sleeps for `delay` in small steps; false when the call ended meanwhile.
bool Delay(grpc::ServerContext* context, std::chrono::milliseconds delay) {
  const auto until = std::chrono::steady_clock::now() + delay;
  while (std::chrono::steady_clock::now() < until) {
    if (context->IsCancelled()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

}  // namespace

grpc::Status FakeAnswer(const v1::AttentionRequest& request, v1::AttentionResponse* response) {
  const v1::Tensor& q = request.q();
  const int64_t size = client::DTypeSize(q.dtype());
  if (size == 0 || q.dtype() == v1::BOOL) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "q.dtype: must be FLOAT32, FLOAT16 or BFLOAT16");
  }
  const int64_t elements = client::NumElements({q.shape().begin(), q.shape().end()});
  if (elements < 0 || static_cast<uint64_t>(elements * size) != q.data().size()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "q.data: length must equal product(q.shape) * sizeof(q.dtype)");
  }
  response->set_request_id(request.request_id());
  *response->mutable_o() = q;
  if (request.return_lse() && q.shape_size() == 4) {
    v1::Tensor* lse = response->mutable_lse();
    lse->set_dtype(v1::FLOAT32);
    for (const int axis : {0, 2, 1}) lse->add_shape(q.shape(axis));
    lse->mutable_data()->assign(static_cast<size_t>(elements / q.shape(3) * 4), '\0');
  }
  v1::Timings* timings = response->mutable_timings();
  timings->set_queue_ns(1000);
  timings->set_kernel_ns(2000);
  timings->set_total_ns(4000);
  response->mutable_batch()->set_requests(1);
  response->mutable_batch()->set_device("fake");
  return grpc::Status::OK;
}

void FakeAttentionService::set_behavior(const FakeBehavior& behavior) {
  std::lock_guard<std::mutex> lock(mu_);
  behavior_ = behavior;
}

FakeBehavior FakeAttentionService::behavior() const {
  std::lock_guard<std::mutex> lock(mu_);
  return behavior_;
}

int FakeAttentionService::unary_calls() const {
  std::lock_guard<std::mutex> lock(mu_);
  return unary_calls_;
}

std::string FakeAttentionService::last_authorization() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_authorization_;
}

grpc::Status FakeAttentionService::Attention(grpc::ServerContext* context,
                                             const v1::AttentionRequest* request,
                                             v1::AttentionResponse* response) {
  int call;
  FakeBehavior behavior;
  {
    std::lock_guard<std::mutex> lock(mu_);
    call = ++unary_calls_;
    behavior = behavior_;
    const auto it = context->client_metadata().find("authorization");
    last_authorization_ = it == context->client_metadata().end()
                              ? std::string()
                              : std::string(it->second.data(), it->second.size());
  }
  if (call <= behavior.unavailable_times) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "fake: draining");
  }
  if (!Delay(context, behavior.delay)) {
    return grpc::Status(grpc::StatusCode::CANCELLED, "fake: call ended while waiting");
  }
  if (!behavior.fail.ok()) return behavior.fail;
  return FakeAnswer(*request, response);
}

grpc::Status FakeAttentionService::AttentionStream(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::AttentionResponse, v1::AttentionRequest>* stream) {
  const FakeBehavior behavior = this->behavior();
  const int group = std::max(1, behavior.stream_reverse_group);
  std::vector<v1::AttentionRequest> held;
  int read = 0;
  const auto flush = [&]() {
    for (auto it = held.rbegin(); it != held.rend(); ++it) {
      if (!Delay(context, behavior.delay)) return false;
      v1::AttentionResponse response;
      const grpc::Status status = FakeAnswer(*it, &response);
      if (!status.ok()) {
        response.set_request_id(it->request_id());
        response.mutable_error()->set_code(status.error_code());
        response.mutable_error()->set_message(status.error_message());
      }
      if (!stream->Write(response)) return false;
    }
    held.clear();
    return true;
  };
  v1::AttentionRequest request;
  while (stream->Read(&request)) {
    ++read;
    if (behavior.stream_fail_after > 0 && read >= behavior.stream_fail_after) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "fake: stream dropped");
    }
    held.push_back(std::move(request));
    if (static_cast<int>(held.size()) == group && !flush()) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "fake: stream ended while answering");
    }
  }
  if (!flush()) return grpc::Status(grpc::StatusCode::CANCELLED, "fake: stream ended");
  return grpc::Status::OK;
}

FakeServer::FakeServer(FakeAttentionService* service, const std::string& address,
                       std::shared_ptr<grpc::ServerCredentials> credentials) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(address, std::move(credentials), &port);
  builder.SetMaxReceiveMessageSize(INT32_MAX);
  builder.SetMaxSendMessageSize(INT32_MAX);
  builder.RegisterService(service);
  server_ = builder.BuildAndStart();
  server_->GetHealthCheckService()->SetServingStatus("attention.v1.AttentionService", true);
  address_ = address.substr(0, address.rfind(':') + 1) + std::to_string(port);
}

FakeServer::~FakeServer() {
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
}

}  // namespace attention::testing
