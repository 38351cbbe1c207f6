// C++ client of attention.v1.SessionService: K/V sessions held by the server, so that a decode
// step sends q and the new token's k and v instead of the whole context (attention.proto,
// "Sessions").
//
//   absl::StatusOr<attention::client::SessionClient> client =
//       attention::client::SessionClient::Create("127.0.0.1:50051");
//   attention::client::SessionOptions shape;
//   shape.layers = 32; shape.kv_heads = 8; shape.head_dim = 128; shape.dtype = v1::BFLOAT16;
//   absl::StatusOr<attention::client::Session> s = client->CreateSession(shape);
//   s->Append(layer, k_prefill, v_prefill);                  // [n, kv_heads, head_dim] each
//   attention::client::AttendArgs step;
//   step.q = q;  step.k_new = k;  step.v_new = v;  step.causal = true;   // one token per step
//   absl::StatusOr<v1::AttentionResponse> r = s->Attend(layer, step);  // r->o(): [1, q_heads, d]
//
// Routing. A session lives on one replica; its id names it (CreateSession answers
// "<32 hex digits>@<replica>"). CreateSession goes to the client's target (any replica, as the
// target's load balancing picks); every later call of the session goes to its replica, at the
// address SessionClientOptions::resolve gives for the replica's name (a StatefulSet's pods behind
// a headless Service: ReplicaAddressPattern("{replica}.attention-sessions:50051")). Without a
// resolver every call goes to the target (one server).
//
// Streams. The client keeps one SessionStream per replica, opened at the first call and shared by
// all sessions there; a session's calls go out on it in the order they are made, so the server
// applies them in that order (answers may come back in any order; each call's completes its own
// callback). A stream that ended (the replica restarted or drained) is replaced by a new one at
// the next call. A replica's restart loses its sessions: calls then fail with NOT_FOUND ("no
// session ... here"), and the caller creates the session again and appends its context.
//
// Thread-safe; SessionClient and Session are cheap to copy (copies share the streams). The last
// copy to go half-closes the streams and waits for them to end: drop it outside a callback.
#ifndef ATTENTION_CLIENT_SESSION_H_
#define ATTENTION_CLIENT_SESSION_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/client/client.h"
#include "attention/client/tensor.h"
#include "attention/v1/attention.pb.h"

namespace attention::client {

// The address ("host:port") of a replica's gRPC port, from its name.
using ReplicaResolver = std::function<absl::StatusOr<std::string>(std::string_view replica)>;

// A resolver that writes the name into `pattern` where it says "{replica}", e.g.
// "{replica}.attention-sessions.default.svc.cluster.local:50051".
ReplicaResolver ReplicaAddressPattern(std::string pattern);

struct SessionClientOptions {
  // Channel options of every connection (TLS, metadata such as a bearer token, keepalive).
  ClientOptions client;
  // Where a replica's calls go; empty: to the client's target.
  ReplicaResolver resolve;
};

// A session's shape and limits (CreateSessionRequest).
struct SessionOptions {
  int layers = 0;
  int kv_heads = 0;
  int head_dim = 0;
  DType dtype = ::attention::v1::BFLOAT16;
  // Absent: the server's defaults (--session_max_tokens, --session_idle_ttl_s).
  std::optional<int64_t> max_tokens;
  std::optional<std::chrono::milliseconds> idle_ttl;
};

// One Attend's inputs and options (AttendRequest); tensor views point at the caller's memory and
// are copied once, into the request.
struct AttendArgs {
  // [n_new, q_heads, head_dim], the session's dtype.
  TensorView q;
  // Appended to the layer first when given (both or neither): [n_new, kv_heads, head_dim].
  std::optional<TensorView> k_new, v_new;
  bool causal = false;
  std::optional<float> softmax_scale;
  int window_left = -1, window_right = -1;
  float softcap = 0.f;
  // FLOAT32 [q_heads] each.
  std::optional<TensorView> alibi_slopes;
  std::optional<TensorView> sinks;
  bool return_lse = false;
  ::attention::v1::Precision precision = ::attention::v1::PRECISION_FULL;
  // Keys [start, end) only: the partial o and lse of that range (merge partials by their lse).
  std::optional<std::pair<int64_t, int64_t>> key_range;
};

// Builds the AttendRequest for `args` (the session id and layer filled in). INVALID_ARGUMENT
// naming the tensor when a view is malformed; the server checks the rest.
absl::StatusOr<::attention::v1::AttendRequest> BuildAttendRequest(std::string_view session_id,
                                                                  int layer,
                                                                  const AttendArgs& args);

// The answer to one call on a session stream: the SessionResponse, or the call's error (the
// response's error, or the stream's end).
using SessionCallback = std::function<void(absl::StatusOr<::attention::v1::SessionResponse>)>;

class SessionClient;

// A handle on one session. Calls block until answered unless named Async; every call of one
// handle (and of its copies) goes out on the replica's stream in the order it is made.
class Session {
 public:
  Session() = default;

  // "<32 hex digits>@<replica>": the session's id, its only credential.
  const std::string& id() const { return id_; }
  const std::string& replica() const { return replica_; }
  // Tokens per page of the session's row shape (CreateSession's answer; 0 for a handle made by
  // Attach, whose Info() says it).
  int page_size() const { return page_size_; }

  // Appends k and v ([n, kv_heads, head_dim] each) to `layer`; the layer's length after it.
  absl::StatusOr<int64_t> Append(int layer, const TensorView& k, const TensorView& v) const;

  // Attention of args.q against `layer` (after appending k_new / v_new when given).
  absl::StatusOr<::attention::v1::AttentionResponse> Attend(int layer,
                                                            const AttendArgs& args) const;
  // The same without blocking: `done` runs once, on a gRPC thread (it must not block), or on the
  // caller's thread when the request cannot be built or sent.
  void AttendAsync(int layer, const AttendArgs& args, AttentionCallback done) const;

  // A new session sharing the first `prefix_tokens` rows of every layer (copy-on-write).
  absl::StatusOr<Session> Fork(int64_t prefix_tokens) const;
  // Rolls every layer back to at most `tokens` rows.
  absl::Status Truncate(int64_t tokens) const;
  // Ends the session.
  absl::Status Release() const;
  // The session as the server sees it (read without waiting for this handle's calls in flight).
  absl::StatusOr<::attention::v1::GetSessionResponse> Info() const;

  // Any call (its session id is the caller's to set), in order with this handle's other calls.
  void Call(::attention::v1::SessionRequest request, SessionCallback done) const;

 private:
  friend class SessionClient;
  struct Shared;

  // Sends `request` and waits for the answer.
  absl::StatusOr<::attention::v1::SessionResponse> CallAndWait(
      ::attention::v1::SessionRequest request) const;

  std::shared_ptr<Shared> shared_;
  std::string id_, replica_;
  int page_size_ = 0;
};

// The entry to the session service. A SessionClient, the Sessions it hands out and their copies
// share its channels and streams; the last of them to go half-closes the streams, waits for their
// ends and releases the channels, so it must not be dropped inside a callback (a gRPC thread).
class SessionClient {
 public:
  static absl::StatusOr<SessionClient> Create(std::string_view target,
                                              const SessionClientOptions& options = {});

  // Creates a session on whichever replica the target's load balancing picks (a unary call).
  absl::StatusOr<Session> CreateSession(const SessionOptions& options,
                                        const CallOptions& call = {}) const;

  // A handle on an existing session, from its id (e.g. handed over by another process).
  // INVALID_ARGUMENT when `session_id` has no replica part.
  absl::StatusOr<Session> Attach(std::string_view session_id) const;

  // Calls made and not yet answered, over every stream.
  int64_t in_flight() const;

 private:
  explicit SessionClient(std::shared_ptr<Session::Shared> shared) : shared_(std::move(shared)) {}

  std::shared_ptr<Session::Shared> shared_;
};

}  // namespace attention::client

#endif  // ATTENTION_CLIENT_SESSION_H_
