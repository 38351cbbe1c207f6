// Sends a known mix of requests to a running attention server, so that a test can compare the
// server's metrics with what was sent: `unary` valid unary calls, `invalid` unary calls with no
// dtype (INVALID_ARGUMENT), and `stream` valid requests on one AttentionStream.
//
// Usage: attention_metrics_load --target=127.0.0.1:PORT [--unary=N] [--invalid=N] [--stream=N]
// Prints one line of JSON with the counts by outcome; exits 1 when any call ended otherwise than
// intended (a valid one failed, an invalid one was not INVALID_ARGUMENT).
#include <chrono>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <memory>
#include <random>
#include <string>

#include "attention/v1/attention.grpc.pb.h"
#include "attention/v1/attention.pb.h"
#include "grpcpp/grpcpp.h"

namespace {

using attention::v1::AttentionRequest;
using attention::v1::AttentionResponse;
using attention::v1::AttentionService;

// A float32 tensor [dims...] of uniform random values in [-1, 1).
void FillTensor(attention::v1::Tensor* tensor, std::initializer_list<int64_t> dims,
                std::mt19937& rng) {
  tensor->set_dtype(attention::v1::FLOAT32);
  int64_t elements = 1;
  for (int64_t d : dims) {
    tensor->add_shape(d);
    elements *= d;
  }
  std::string data(static_cast<size_t>(elements) * sizeof(float), '\0');
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (int64_t i = 0; i < elements; ++i) {
    const float value = uniform(rng);
    std::memcpy(&data[static_cast<size_t>(i) * sizeof(float)], &value, sizeof(float));
  }
  tensor->set_data(std::move(data));
}

// q [1, seqlen_q, 2, 16], k and v [1, seqlen_k, 2, 16], ragged lengths per request.
AttentionRequest ValidRequest(uint64_t id, std::mt19937& rng) {
  AttentionRequest request;
  request.set_request_id(id);
  const int64_t seqlen_q = 1 + static_cast<int64_t>(rng() % 17);
  const int64_t seqlen_k = 1 + static_cast<int64_t>(rng() % 33);
  FillTensor(request.mutable_q(), {1, seqlen_q, 2, 16}, rng);
  FillTensor(request.mutable_k(), {1, seqlen_k, 2, 16}, rng);
  FillTensor(request.mutable_v(), {1, seqlen_k, 2, 16}, rng);
  request.set_causal(id % 2 == 0);
  return request;
}

bool ParseFlag(const std::string& arg, const std::string& name, std::string* value) {
  const std::string prefix = "--" + name + "=";
  if (arg.rfind(prefix, 0) != 0) return false;
  *value = arg.substr(prefix.size());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::string target, value;
  int unary = 10, invalid = 3, stream = 10;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (ParseFlag(arg, "target", &value)) {
      target = value;
    } else if (ParseFlag(arg, "unary", &value)) {
      unary = std::stoi(value);
    } else if (ParseFlag(arg, "invalid", &value)) {
      invalid = std::stoi(value);
    } else if (ParseFlag(arg, "stream", &value)) {
      stream = std::stoi(value);
    } else {
      std::cerr << "unknown argument " << arg << "\n";
      return 2;
    }
  }
  if (target.empty()) {
    std::cerr << "usage: " << argv[0]
              << " --target=HOST:PORT [--unary=N] [--invalid=N] [--stream=N]\n";
    return 2;
  }

  auto stub =
      AttentionService::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  const auto deadline = [] { return std::chrono::system_clock::now() + std::chrono::seconds(30); };
  std::mt19937 rng(2024);
  int unary_ok = 0, invalid_rejected = 0, stream_ok = 0, unexpected = 0;

  for (int i = 0; i < unary; ++i) {
    grpc::ClientContext context;
    context.set_deadline(deadline());
    AttentionResponse response;
    const AttentionRequest request = ValidRequest(static_cast<uint64_t>(i), rng);
    const grpc::Status status = stub->Attention(&context, request, &response);
    if (status.ok() && response.o().shape_size() == request.q().shape_size()) {
      ++unary_ok;
    } else {
      ++unexpected;
      std::cerr << "unary " << i << ": " << status.error_code() << " " << status.error_message()
                << "\n";
    }
  }
  for (int i = 0; i < invalid; ++i) {
    grpc::ClientContext context;
    context.set_deadline(deadline());
    AttentionResponse response;
    AttentionRequest request = ValidRequest(static_cast<uint64_t>(1000 + i), rng);
    request.mutable_q()->set_dtype(attention::v1::DTYPE_UNSPECIFIED);
    const grpc::Status status = stub->Attention(&context, request, &response);
    if (status.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
      ++invalid_rejected;
    } else {
      ++unexpected;
      std::cerr << "invalid " << i << ": got " << status.error_code() << "\n";
    }
  }
  if (stream > 0) {
    grpc::ClientContext context;
    context.set_deadline(deadline());
    auto call = stub->AttentionStream(&context);
    for (int i = 0; i < stream; ++i) {
      if (!call->Write(ValidRequest(static_cast<uint64_t>(2000 + i), rng))) break;
    }
    call->WritesDone();
    AttentionResponse response;
    while (call->Read(&response)) {
      if (response.has_error()) {
        ++unexpected;
        std::cerr << "stream " << response.request_id() << ": " << response.error().code() << " "
                  << response.error().message() << "\n";
      } else {
        ++stream_ok;
      }
    }
    const grpc::Status status = call->Finish();
    if (!status.ok()) {
      ++unexpected;
      std::cerr << "stream: " << status.error_code() << " " << status.error_message() << "\n";
    }
    if (stream_ok != stream) ++unexpected;
  }

  std::cout << "{\"unary_ok\": " << unary_ok << ", \"invalid_rejected\": " << invalid_rejected
            << ", \"stream_ok\": " << stream_ok << ", \"unexpected\": " << unexpected << "}"
            << std::endl;
  return unexpected == 0 ? 0 : 1;
}
