#include "attention/client/client.h"

#include <arpa/inet.h>

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "attention/client/stream_session.h"
#include "client/internal.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/support/byte_buffer.h"

namespace attention::client {
namespace {

// Seconds as the service config's Duration JSON form ("0.100s").
std::string JsonDuration(std::chrono::milliseconds d) {
  return absl::StrFormat("%d.%03ds", d.count() / 1000, d.count() % 1000);
}

enum class IpFamily { kNone, kV4, kV6 };

// The family of an "a.b.c.d:port" or "[v6]:port" address with a numeric port.
IpFamily AddressFamily(std::string_view address) {
  std::string host;
  std::string_view port;
  IpFamily family;
  if (!address.empty() && address.front() == '[') {
    const size_t close = address.find("]:");
    if (close == std::string_view::npos) return IpFamily::kNone;
    host = std::string(address.substr(1, close - 1));
    port = address.substr(close + 2);
    family = IpFamily::kV6;
  } else {
    const size_t colon = address.rfind(':');
    if (colon == std::string_view::npos) return IpFamily::kNone;
    host = std::string(address.substr(0, colon));
    port = address.substr(colon + 1);
    family = IpFamily::kV4;
  }
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != port.npos) {
    return IpFamily::kNone;
  }
  unsigned char buf[16];
  const int af = family == IpFamily::kV6 ? AF_INET6 : AF_INET;
  return inet_pton(af, host.c_str(), buf) == 1 ? family : IpFamily::kNone;
}

// Ends an asynchronous call: frees its state (`Call` has `context` and `done`), then hands the
// caller its answer. The order matters: the call's context holds a reference to the channel, and
// a caller that destroys its last Client once the answer is in (a load generator at the end of
// its run) would otherwise leave the channel's destructor to run on gRPC's own callback thread
// (SIGSEGV at exit, seen with 96 MiB requests).
template <typename Call>
void ReleaseAndAnswer(std::unique_ptr<Call> call, absl::StatusOr<v1::AttentionResponse> result) {
  AttentionCallback done = std::move(call->done);
  call.reset();
  done(std::move(result));
}

}  // namespace

absl::StatusOr<v1::AttentionRequest> BuildRequest(const AttentionArgs& args) {
  v1::AttentionRequest request;
  absl::Status status = SetTensor("q", args.q, request.mutable_q());
  if (status.ok()) status = SetTensor("k", args.k, request.mutable_k());
  if (status.ok()) status = SetTensor("v", args.v, request.mutable_v());
  if (status.ok() && args.alibi_slopes) {
    status = SetTensor("alibi_slopes", *args.alibi_slopes, request.mutable_alibi_slopes());
  }
  if (status.ok() && args.mask) status = SetTensor("mask", *args.mask, request.mutable_mask());
  if (status.ok() && args.sinks) status = SetTensor("sinks", *args.sinks, request.mutable_sinks());
  if (status.ok() && args.q_descale) {
    status = SetTensor("q_descale", *args.q_descale, request.mutable_q_descale());
  }
  if (status.ok() && args.k_descale) {
    status = SetTensor("k_descale", *args.k_descale, request.mutable_k_descale());
  }
  if (status.ok() && args.v_descale) {
    status = SetTensor("v_descale", *args.v_descale, request.mutable_v_descale());
  }
  if (!status.ok()) return status;
  request.mutable_cu_seqlens_q()->Add(args.cu_seqlens_q.begin(), args.cu_seqlens_q.end());
  request.mutable_cu_seqlens_k()->Add(args.cu_seqlens_k.begin(), args.cu_seqlens_k.end());
  request.set_causal(args.causal);
  if (args.softmax_scale) request.set_softmax_scale(*args.softmax_scale);
  if (args.window_left != -1 || args.window_right != -1) {
    request.mutable_window()->set_left(args.window_left);
    request.mutable_window()->set_right(args.window_right);
  }
  request.set_softcap(args.softcap);
  request.set_return_lse(args.return_lse);
  request.set_precision(args.precision);
  return request;
}

absl::StatusOr<v1::AttentionRequest> BuildBackwardRequest(const AttentionBackwardArgs& args) {
  absl::StatusOr<v1::AttentionRequest> request = BuildRequest(args.forward);
  if (!request.ok()) return request;
  absl::Status status = SetTensor("o", args.o, request->mutable_o());
  if (status.ok()) status = SetTensor("lse", args.lse, request->mutable_lse());
  if (status.ok()) status = SetTensor("grad_o", args.grad_o, request->mutable_grad_o());
  if (!status.ok()) return status;
  request->set_backward(true);
  request->set_deterministic(args.deterministic);
  request->set_return_lse(false);
  return request;
}

absl::Status ResponseStatus(const v1::AttentionResponse& response) {
  if (!response.has_error() || response.error().code() == 0) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(response.error().code()),
                      response.error().message());
}

absl::StatusOr<std::string> ChannelTarget(std::string_view target) {
  constexpr std::string_view kSchemes[] = {
      "dns:", "ipv4:", "ipv6:", "unix:", "vsock:", "xds:", "unix-abstract:"};
  for (const std::string_view scheme : kSchemes) {
    if (target.substr(0, scheme.size()) == scheme) return std::string(target);
  }
  if (target.find(',') == std::string_view::npos) return std::string(target);
  const std::vector<std::string> addresses = absl::StrSplit(AsAbsl(target), ',');
  const IpFamily family = AddressFamily(addresses.front());
  for (const std::string& address : addresses) {
    const IpFamily f = AddressFamily(address);
    if (f == IpFamily::kNone || f != family) {
      return absl::InvalidArgumentError(absl::StrCat(
          "target: '", address,
          "' in an address list must be an IP literal with a port (10.0.0.1:50051 or "
          "[::1]:50051), all of one family; give a name resolving to several addresses as "
          "dns:///name:port"));
    }
  }
  return absl::StrCat(family == IpFamily::kV4 ? "ipv4:" : "ipv6:", AsAbsl(target));
}

std::string ServiceConfigJson(const ClientOptions& options) {
  std::string json = absl::StrCat(R"({"loadBalancingConfig":[{")",
                                  options.round_robin ? "round_robin" : "pick_first", R"(":{}}])");
  const RetryPolicy& retry = options.retry;
  if (retry.max_attempts > 1) {
    absl::StrAppend(
        &json, R"(,"methodConfig":[{"name":[{"service":"attention.v1.AttentionService"}],)",
        R"("retryPolicy":{"maxAttempts":)", retry.max_attempts, R"(,"initialBackoff":")",
        JsonDuration(retry.initial_backoff), R"(","maxBackoff":")", JsonDuration(retry.max_backoff),
        R"(","backoffMultiplier":)", absl::StrFormat("%g", retry.backoff_multiplier),
        R"(,"retryableStatusCodes":["UNAVAILABLE"]}}])");
  }
  absl::StrAppend(&json, "}");
  return json;
}

absl::StatusOr<Client> Client::Create(std::string_view target, const ClientOptions& options) {
  absl::StatusOr<std::string> channel_target = ChannelTarget(target);
  if (!channel_target.ok()) return channel_target.status();
  if (options.max_message_bytes <= 0) {
    return absl::InvalidArgumentError("max_message_bytes: must be > 0");
  }
  if (options.retry.max_attempts < 1) {
    return absl::InvalidArgumentError("retry.max_attempts: must be >= 1");
  }
  if (options.retry.max_attempts > 1 &&
      (options.retry.initial_backoff.count() <= 0 || options.retry.max_backoff.count() <= 0 ||
       options.retry.backoff_multiplier <= 0)) {
    return absl::InvalidArgumentError(
        "retry: initial_backoff, max_backoff and backoff_multiplier must be > 0");
  }

  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(options.max_message_bytes);
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetServiceConfigJSON(ServiceConfigJson(options));
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, options.retry.max_attempts > 1 ? 1 : 0);
  args.SetInt(GRPC_ARG_PER_RPC_RETRY_BUFFER_SIZE,
              static_cast<int>(std::min<int64_t>(options.retry.buffer_bytes, INT32_MAX)));
  if (options.keepalive_time.count() > 0) {
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(options.keepalive_time.count()));
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, static_cast<int>(options.keepalive_timeout.count()));
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  }
  if (options.private_connection) args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);

  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options.tls) {
    const TlsOptions& tls = *options.tls;
    if (tls.client_cert_pem.empty() != tls.client_key_pem.empty()) {
      return absl::InvalidArgumentError(
          "tls: client_cert_pem and client_key_pem must be given together");
    }
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = tls.root_certs_pem;
    ssl.pem_cert_chain = tls.client_cert_pem;
    ssl.pem_private_key = tls.client_key_pem;
    credentials = grpc::SslCredentials(ssl);
    if (!tls.server_name_override.empty()) args.SetSslTargetNameOverride(tls.server_name_override);
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(*channel_target, credentials, args);
  return Client(std::move(channel), std::make_shared<const ClientOptions>(options));
}

Client::Client(std::shared_ptr<grpc::Channel> channel, std::shared_ptr<const ClientOptions> options)
    : channel_(std::move(channel)),
      stub_(v1::AttentionService::NewStub(channel_)),
      options_(std::move(options)) {}

void Client::ConfigureContext(const CallOptions& call, bool unary,
                              grpc::ClientContext* context) const {
  std::chrono::nanoseconds timeout{0};
  if (call.timeout) {
    timeout = *call.timeout;
  } else if (unary) {
    timeout = options_->default_timeout;
  }
  if (call.timeout || timeout.count() > 0) {
    context->set_deadline(std::chrono::system_clock::now() +
                          std::chrono::duration_cast<std::chrono::system_clock::duration>(timeout));
  }
  context->set_wait_for_ready(call.wait_for_ready);
  for (const auto& [key, value] : options_->metadata) context->AddMetadata(key, value);
}

absl::StatusOr<v1::AttentionResponse> Client::Attention(const v1::AttentionRequest& request,
                                                        const CallOptions& call) const {
  grpc::ClientContext context;
  ConfigureContext(call, /*unary=*/true, &context);
  v1::AttentionResponse response;
  const grpc::Status status = stub_->Attention(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::AttentionResponse> Client::Attention(const AttentionArgs& args,
                                                        const CallOptions& call) const {
  absl::StatusOr<v1::AttentionRequest> request = BuildRequest(args);
  if (!request.ok()) return request.status();
  return Attention(*request, call);
}

absl::StatusOr<v1::AttentionResponse> Client::AttentionBackward(const v1::AttentionRequest& request,
                                                                const CallOptions& call) const {
  grpc::ClientContext context;
  ConfigureContext(call, /*unary=*/true, &context);
  v1::AttentionResponse response;
  const grpc::Status status = stub_->AttentionBackward(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::AttentionResponse> Client::AttentionBackward(const AttentionBackwardArgs& args,
                                                                const CallOptions& call) const {
  absl::StatusOr<v1::AttentionRequest> request = BuildBackwardRequest(args);
  if (!request.ok()) return request.status();
  return AttentionBackward(*request, call);
}

void Client::AttentionAsync(std::shared_ptr<const v1::AttentionRequest> request,
                            AttentionCallback done, const CallOptions& call) const {
  // Owns what gRPC reads and writes until the completion runs.
  struct UnaryCall {
    grpc::ClientContext context;
    std::shared_ptr<const v1::AttentionRequest> request;
    v1::AttentionResponse response;
    AttentionCallback done;
  };
  auto* state = new UnaryCall;
  state->request = std::move(request);
  state->done = std::move(done);
  ConfigureContext(call, /*unary=*/true, &state->context);
  stub_->async()->Attention(
      &state->context, state->request.get(), &state->response, [state](grpc::Status status) {
        std::unique_ptr<UnaryCall> owned(state);
        absl::StatusOr<v1::AttentionResponse> result =
            status.ok() ? absl::StatusOr<v1::AttentionResponse>(std::move(owned->response))
                        : FromGrpcStatus(status);
        ReleaseAndAnswer(std::move(owned), std::move(result));
      });
}

SerializedRequest::SerializedRequest(const v1::AttentionRequest& request) {
  const size_t size = request.ByteSizeLong();
  grpc::Slice slice(size);
  request.SerializeWithCachedSizesToArray(const_cast<uint8_t*>(slice.begin()));
  buffer_ = std::make_shared<const grpc::ByteBuffer>(&slice, 1);
  bytes_ = static_cast<int64_t>(size);
}

void Client::AttentionAsync(const SerializedRequest& request, AttentionCallback done,
                            const CallOptions& call) const {
  static const std::string kMethod =
      absl::StrCat("/", v1::AttentionService::service_full_name(), "/Attention");
  // Owns what gRPC reads and writes until the completion runs. The request's copy shares the
  // serialized slices (a reference, not the bytes).
  struct SerializedCall {
    grpc::ClientContext context;
    grpc::ByteBuffer request;
    grpc::ByteBuffer response;
    AttentionCallback done;
  };
  auto* state = new SerializedCall;
  state->request = *request.buffer_;
  state->done = std::move(done);
  ConfigureContext(call, /*unary=*/true, &state->context);
  grpc::GenericStub(channel_).UnaryCall(
      &state->context, kMethod, grpc::StubOptions(), &state->request, &state->response,
      [state](grpc::Status status) {
        std::unique_ptr<SerializedCall> owned(state);
        v1::AttentionResponse response;
        const grpc::Status parsed =
            status.ok() ? grpc::SerializationTraits<v1::AttentionResponse>::Deserialize(
                              &owned->response, &response)
                        : status;
        absl::StatusOr<v1::AttentionResponse> result =
            parsed.ok() ? absl::StatusOr<v1::AttentionResponse>(std::move(response))
                        : FromGrpcStatus(parsed);
        ReleaseAndAnswer(std::move(owned), std::move(result));
      });
}

std::future<absl::StatusOr<v1::AttentionResponse>> Client::AttentionFuture(
    std::shared_ptr<const v1::AttentionRequest> request, const CallOptions& call) const {
  auto promise = std::make_shared<std::promise<absl::StatusOr<v1::AttentionResponse>>>();
  std::future<absl::StatusOr<v1::AttentionResponse>> future = promise->get_future();
  AttentionAsync(
      std::move(request),
      [promise](absl::StatusOr<v1::AttentionResponse> result) {
        promise->set_value(std::move(result));
      },
      call);
  return future;
}

std::unique_ptr<StreamSession> Client::OpenStream(const CallOptions& call) const {
  return std::unique_ptr<StreamSession>(new StreamSession(*this, call));
}

bool Client::WaitForConnected(std::chrono::nanoseconds timeout) const {
  return channel_->WaitForConnected(
      std::chrono::system_clock::now() +
      std::chrono::duration_cast<std::chrono::system_clock::duration>(timeout));
}

}  // namespace attention::client
