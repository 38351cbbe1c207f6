// C++ client of attention.v1.AttentionService: a channel to one or several servers with TLS,
// message-size limits, keepalive, a default deadline and transparent retries of UNAVAILABLE;
// synchronous and asynchronous unary calls, and streaming sessions (stream_session.h).
//
//   absl::StatusOr<attention::client::Client> client =
//       attention::client::Client::Create("127.0.0.1:50051");
//   attention::client::AttentionArgs args;
//   args.q = {attention::v1::BFLOAT16, q_ptr, {batch, seqlen, heads, head_dim}};
//   args.k = ...; args.v = ...; args.causal = true;
//   absl::StatusOr<attention::v1::AttentionResponse> r = client->Attention(args);
//   // r->o() has q's dtype and shape: ViewTensor(r->o()) or CopyTensor(r->o(), dst).
//   // The backward pass: client->AttentionBackward({args, o, lse, grad_o}) -> dq, dk, dv.
//
// Errors come back as absl::Status with the gRPC code (the codes are the same numbers) and the
// server's message.
#ifndef ATTENTION_CLIENT_CLIENT_H_
#define ATTENTION_CLIENT_CLIENT_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "attention/client/tensor.h"
#include "attention/v1/attention.grpc.pb.h"
#include "attention/v1/attention.pb.h"

namespace grpc {
class ByteBuffer;
class Channel;
class ClientContext;
}  // namespace grpc

namespace attention::client {

class StreamSession;

// Server authentication (and optionally client authentication) with TLS.
struct TlsOptions {
  // PEM roots that sign the server's certificate; empty: the system's roots.
  std::string root_certs_pem;
  // Mutual TLS: the client's certificate chain and private key, both or neither.
  std::string client_cert_pem;
  std::string client_key_pem;
  // Name to check the server's certificate against instead of the target's host (tests, and
  // targets given as IP addresses).
  std::string server_name_override;
};

// Transparent retries of calls that fail with UNAVAILABLE (server draining, connection refused),
// done by gRPC from the service config. gRPC retries a call only until the server has started to
// answer it, so a request is never executed twice for one answer.
struct RetryPolicy {
  // Attempts including the first; 1 turns retries off. gRPC caps this at 5.
  int max_attempts = 4;
  std::chrono::milliseconds initial_backoff{100};
  std::chrono::milliseconds max_backoff{2000};
  double backoff_multiplier = 2.0;
  // gRPC keeps a serialized copy of each request it may have to resend, up to this many bytes per
  // call; a bigger request is sent once and not retried.
  int64_t buffer_bytes = int64_t{64} << 20;
};

struct ClientOptions {
  // Absent: plaintext.
  std::optional<TlsOptions> tls;
  // Largest message sent or received (the server's --max_message_bytes defaults to 1 GiB too).
  int max_message_bytes = 1 << 30;
  // HTTP/2 keepalive pings every keepalive_time (0: none), also on idle connections; the
  // connection is dropped when a ping is not answered within keepalive_timeout. The server must
  // permit pings this frequent (gRPC servers default to one per 5 minutes without calls).
  std::chrono::milliseconds keepalive_time{0};
  std::chrono::milliseconds keepalive_timeout{20000};
  // Deadline of a unary call that sets no CallOptions::timeout; 0: none.
  std::chrono::milliseconds default_timeout{0};
  RetryPolicy retry;
  // Spread calls over every address the target resolves to (round_robin); false: use the first
  // address that connects (pick_first).
  bool round_robin = true;
  // Open this client's own connections instead of sharing them with other clients of the same
  // target in this process (several clients then spread load over several TCP connections).
  bool private_connection = false;
  // Sent with every call, e.g. {"authorization", "Bearer <token>"}. Keys are lower case.
  std::vector<std::pair<std::string, std::string>> metadata;
};

struct CallOptions {
  // Deadline, counted from the start of the call. Absent: ClientOptions::default_timeout for a
  // unary call, none for a stream.
  std::optional<std::chrono::nanoseconds> timeout;
  // Queue the call while the channel is connecting instead of failing it with UNAVAILABLE.
  bool wait_for_ready = false;
};

// Inputs and options of one attention problem; see attention.proto for the layouts and the
// semantics. Tensor views point at the caller's memory and are copied once, into the request.
struct AttentionArgs {
  // Dense: q [batch, seqlen_q, q_heads, head_dim], k and v [batch, seqlen_k, kv_heads, head_dim].
  // Packed (cu_seqlens set): q [total_q, q_heads, head_dim], k and v [total_k, kv_heads, head_dim].
  TensorView q, k, v;
  // Packed variable-length batch: batch + 1 offsets each, both or neither.
  absl::Span<const int32_t> cu_seqlens_q, cu_seqlens_k;
  bool causal = false;
  // Absent: 1 / sqrt(head_dim).
  std::optional<float> softmax_scale;
  // Sliding window, -1 = unbounded on that side.
  int window_left = -1, window_right = -1;
  // 0 = off.
  float softcap = 0.f;
  // FLOAT32 [q_heads] or [batch, q_heads].
  std::optional<TensorView> alibi_slopes;
  // BOOL or additive, broadcastable to [batch, q_heads, seqlen_q, seqlen_k].
  std::optional<TensorView> mask;
  // Attention sinks: FLOAT32 [q_heads], one extra logit per head in each row's denominator.
  std::optional<TensorView> sinks;
  // FLOAT8_E4M3 q, k and v only: their dequantization factors, FLOAT32 [1] (per tensor) or
  // [q_heads] / [kv_heads] (per head); absent = 1.0. E4M3Tensor::descale_view() (tensor.h) gives
  // them for a tensor QuantizeTensorE4M3 made. The answer's o is BFLOAT16.
  std::optional<TensorView> q_descale, k_descale, v_descale;
  bool return_lse = false;
  // How FLOAT32 inputs are computed (PRECISION_FULL: float32 accuracy; TF32 / BF16 opt into
  // reduced precision for speed). The response's precision says what ran.
  ::attention::v1::Precision precision = ::attention::v1::PRECISION_FULL;
};

// Builds the request message for `args` (request_id 0). Checks what only the client knows: each
// view is well formed (INVALID_ARGUMENT naming the tensor); the server validates the rest.
absl::StatusOr<::attention::v1::AttentionRequest> BuildRequest(const AttentionArgs& args);

// Inputs of one backward pass (attention.proto, AttentionRequest.backward): the forward's inputs
// and options as it ran, its o and lse, and dLoss/do. The answer holds dq (q's dtype and shape),
// dk and dv (k's shape) in q's dtype.
struct AttentionBackwardArgs {
  // q, k, v and every option of the forward call that produced o and lse (return_lse ignored).
  AttentionArgs forward;
  // o: q's dtype and shape. lse: FLOAT32, dense [batch, q_heads, seqlen_q], packed
  // [q_heads, total_q] (the forward's answer with return_lse). grad_o: q's dtype and shape.
  TensorView o, lse, grad_o;
  // Bit-identical gradients run to run (AttentionRequest.deterministic; costs a second pass over
  // the keys on a GPU).
  bool deterministic = false;
};

// Builds the backward request message for `args` (request_id 0, backward = true), checking each
// view as BuildRequest does.
absl::StatusOr<::attention::v1::AttentionRequest> BuildBackwardRequest(
    const AttentionBackwardArgs& args);

// Maps a server's per-request error (AttentionResponse.error on a stream) to a status; OK when
// the response carries none.
absl::Status ResponseStatus(const ::attention::v1::AttentionResponse& response);

// The gRPC channel target for `target`: a comma-separated list of IP literals with ports
// ("10.0.0.1:50051,10.0.0.2:50051" or "[::1]:50051,[::1]:50052") becomes one ipv4: / ipv6:
// target that round_robin spreads calls over; anything else ("host:port", "dns:///name:port",
// "unix:/path") is passed through. INVALID_ARGUMENT for a list that mixes families or names
// hosts (a name resolving to several addresses is given as "dns:///name:port").
absl::StatusOr<std::string> ChannelTarget(std::string_view target);

// The service config JSON (load balancing and the retry policy) the client installs.
std::string ServiceConfigJson(const ClientOptions& options);

using AttentionCallback = std::function<void(absl::StatusOr<::attention::v1::AttentionResponse>)>;

// A request serialized once, for callers that send the same request many times (load generators,
// replays of a recorded request). Each call shares the serialized bytes, where a call with an
// AttentionRequest serializes it again: one copy of every tensor byte per call, which was a fifth
// of a load generator's CPU time with 768 KiB requests. Immutable; cheap to copy (copies share
// the bytes); usable from several threads at once.
class SerializedRequest {
 public:
  explicit SerializedRequest(const ::attention::v1::AttentionRequest& request);

  // The serialized size: what one call puts on the wire, before gRPC's framing.
  int64_t bytes() const { return bytes_; }

 private:
  friend class Client;

  std::shared_ptr<const grpc::ByteBuffer> buffer_;
  int64_t bytes_ = 0;
};

// Thread-safe; cheap to copy (copies share the channel).
class Client {
 public:
  // Creates the channel; connecting happens in the background at the first call.
  static absl::StatusOr<Client> Create(std::string_view target, const ClientOptions& options = {});

  // Blocks until the answer or an error.
  absl::StatusOr<::attention::v1::AttentionResponse> Attention(
      const ::attention::v1::AttentionRequest& request, const CallOptions& call = {}) const;
  absl::StatusOr<::attention::v1::AttentionResponse> Attention(const AttentionArgs& args,
                                                               const CallOptions& call = {}) const;

  // The backward pass (AttentionBackward RPC): dq, dk and dv. Blocks until the answer or an
  // error. A request built without BuildBackwardRequest is sent as a backward one all the same.
  absl::StatusOr<::attention::v1::AttentionResponse> AttentionBackward(
      const ::attention::v1::AttentionRequest& request, const CallOptions& call = {}) const;
  absl::StatusOr<::attention::v1::AttentionResponse> AttentionBackward(
      const AttentionBackwardArgs& args, const CallOptions& call = {}) const;

  // Starts the call and returns; `done` runs once, on a gRPC thread (it must not block), with the
  // answer or the error. The request is shared, not copied: several calls may send the same one.
  void AttentionAsync(std::shared_ptr<const ::attention::v1::AttentionRequest> request,
                      AttentionCallback done, const CallOptions& call = {}) const;
  // As above, sending bytes serialized once (SerializedRequest); the answer is parsed as usual.
  void AttentionAsync(const SerializedRequest& request, AttentionCallback done,
                      const CallOptions& call = {}) const;
  // As AttentionAsync, with a future instead of a callback.
  std::future<absl::StatusOr<::attention::v1::AttentionResponse>> AttentionFuture(
      std::shared_ptr<const ::attention::v1::AttentionRequest> request,
      const CallOptions& call = {}) const;

  // Opens one bidirectional stream that carries many requests in flight.
  std::unique_ptr<StreamSession> OpenStream(const CallOptions& call = {}) const;

  // Waits until the channel is connected (true) or `timeout` passes (false).
  bool WaitForConnected(std::chrono::nanoseconds timeout) const;

  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

 private:
  friend class StreamSession;

  Client(std::shared_ptr<grpc::Channel> channel, std::shared_ptr<const ClientOptions> options);

  // Prepares `context` for a call: deadline, wait_for_ready, metadata. `unary` selects whether
  // ClientOptions::default_timeout applies.
  void ConfigureContext(const CallOptions& call, bool unary, grpc::ClientContext* context) const;

  std::shared_ptr<grpc::Channel> channel_;
  std::shared_ptr<::attention::v1::AttentionService::Stub> stub_;
  std::shared_ptr<const ClientOptions> options_;
};

}  // namespace attention::client

#endif  // ATTENTION_CLIENT_CLIENT_H_
