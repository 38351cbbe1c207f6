#include "attention/client/session.h"

#include <algorithm>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention/v1/attention.grpc.pb.h"
#include "client/call_stream.h"
#include "client/internal.h"
#include "grpcpp/grpcpp.h"

namespace attention::client {
namespace {

// The replica part of a session id ("<hex>@<replica>").
absl::StatusOr<std::string> ReplicaOf(std::string_view session_id) {
  const size_t at = session_id.find('@');
  if (at == std::string_view::npos || at + 1 == session_id.size()) {
    return absl::InvalidArgumentError(
        "session_id: must be '<32 hex digits>@<replica>' as CreateSession answered it");
  }
  return std::string(session_id.substr(at + 1));
}

using SessionCallStream = CallStream<v1::SessionService::Stub, v1::SessionRequest,
                                     v1::SessionResponse, v1::SessionRequest>;

// One SessionStream to one replica (client/call_stream.h has how its writes, reads and answers
// go, and the hold that keeps gRPC from ending it while a write may still start).
//
// Ownership: Session::Shared owns every connection it opened until the connection's OnDone has
// run (Wait), and then destroys it on its own thread. A connection never owns itself: its stub
// holds the channel and its context the call, and releasing the last reference to a channel on
// gRPC's callback thread destroys the channel there; with the last channel of the process goes
// gRPC's callback completion queue, whose other thread still polls it ("ref_counted.h: assertion
// failed: prior > 0" in grpc_cq_internal_unref, gRPC 1.51). gRPC touches the reactor no more once
// OnDone returns, and OnDone touches nothing of it after it sets done_.
class SessionStreamConnection final : public SessionCallStream {
 public:
  static std::shared_ptr<SessionStreamConnection> Open(
      const std::shared_ptr<grpc::Channel>& channel, const ClientOptions& options) {
    auto connection =
        std::shared_ptr<SessionStreamConnection>(new SessionStreamConnection(channel));
    for (const auto& [key, value] : options.metadata) {
      connection->context()->AddMetadata(key, value);
    }
    connection->stub()->async()->SessionStream(connection->context(), connection.get());
    connection->StartStream();
    return connection;
  }

 private:
  explicit SessionStreamConnection(const std::shared_ptr<grpc::Channel>& channel)
      : SessionCallStream(v1::SessionService::NewStub(channel),
                          {"session stream", "call",
                           "session stream: the stream ended without answering this call"}) {}

  absl::Status Refusal(bool /*closing*/) const override {
    return absl::UnavailableError("session stream: the stream has ended; call again");
  }
};

}  // namespace

// What the handles of one SessionClient share: the options, the entry client, one stream per
// replica, and the replaced streams until they end. Every stream is owned here, never by itself
// (see SessionStreamConnection): the channels outlive every stream and go with the last handle,
// on the thread that drops it. That thread must not be gRPC's (a callback): the destructor waits
// for every stream's OnDone, which a running callback holds back.
struct Session::Shared {
  SessionClientOptions options;
  Client entry;
  std::mutex mu;
  std::map<std::string, Client> replicas;  // connections by replica name
  std::map<std::string, std::shared_ptr<SessionStreamConnection>> streams;
  // Streams replaced in `streams` (they took no more calls) whose OnDone may not have run yet.
  std::vector<std::shared_ptr<SessionStreamConnection>> retired;

  Shared(SessionClientOptions o, Client e) : options(std::move(o)), entry(std::move(e)) {}

  // Half-closes every stream and waits for each to end; the streams, then the clients and their
  // channels, are destroyed on this thread.
  ~Shared() {
    for (auto& [replica, stream] : streams) stream->Finish();
    for (auto& stream : retired) stream->Finish();
    for (auto& [replica, stream] : streams) stream->Wait().IgnoreError();
    for (auto& stream : retired) stream->Wait().IgnoreError();
  }

  // The replica's stream: the open one, or a new one when it has none or it ended.
  absl::StatusOr<std::shared_ptr<SessionStreamConnection>> StreamTo(const std::string& replica) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = streams.find(replica);
    if (it != streams.end() && it->second->usable()) return it->second;
    retired.erase(std::remove_if(retired.begin(), retired.end(),
                                 [](const std::shared_ptr<SessionStreamConnection>& stream) {
                                   return stream->done();
                                 }),
                  retired.end());
    std::shared_ptr<grpc::Channel> channel;
    if (!options.resolve) {
      channel = entry.channel();
    } else {
      auto client = replicas.find(replica);
      if (client == replicas.end()) {
        absl::StatusOr<std::string> address = options.resolve(replica);
        if (!address.ok()) return address.status();
        absl::StatusOr<Client> created = Client::Create(*address, options.client);
        if (!created.ok()) return created.status();
        client = replicas.emplace(replica, std::move(*created)).first;
      }
      channel = client->second.channel();
    }
    std::shared_ptr<SessionStreamConnection> stream =
        SessionStreamConnection::Open(channel, options.client);
    if (it != streams.end()) {
      retired.push_back(std::move(it->second));
      it->second = stream;
    } else {
      streams.emplace(replica, stream);
    }
    return stream;
  }
};

ReplicaResolver ReplicaAddressPattern(std::string pattern) {
  return [pattern = std::move(pattern)](std::string_view replica) -> absl::StatusOr<std::string> {
    const size_t at = pattern.find("{replica}");
    if (at == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("replica address pattern '", pattern, "' has no {replica}"));
    }
    std::string address = pattern;
    address.replace(at, 9, replica);
    return address;
  };
}

absl::StatusOr<v1::AttendRequest> BuildAttendRequest(std::string_view session_id, int layer,
                                                     const AttendArgs& args) {
  v1::AttendRequest request;
  request.set_session_id(std::string(session_id));
  request.set_layer(layer);
  absl::Status status = SetTensor("q", args.q, request.mutable_q());
  if (status.ok() && args.k_new.has_value() != args.v_new.has_value()) {
    status = absl::InvalidArgumentError("k_new, v_new: give both or neither");
  }
  if (status.ok() && args.k_new) status = SetTensor("k_new", *args.k_new, request.mutable_k_new());
  if (status.ok() && args.v_new) status = SetTensor("v_new", *args.v_new, request.mutable_v_new());
  if (status.ok() && args.alibi_slopes) {
    status = SetTensor("alibi_slopes", *args.alibi_slopes, request.mutable_alibi_slopes());
  }
  if (status.ok() && args.sinks) status = SetTensor("sinks", *args.sinks, request.mutable_sinks());
  if (!status.ok()) return status;
  request.set_causal(args.causal);
  if (args.softmax_scale) request.set_softmax_scale(*args.softmax_scale);
  if (args.window_left != -1 || args.window_right != -1) {
    request.mutable_window()->set_left(args.window_left);
    request.mutable_window()->set_right(args.window_right);
  }
  request.set_softcap(args.softcap);
  request.set_return_lse(args.return_lse);
  request.set_precision(args.precision);
  if (args.key_range) {
    request.mutable_key_range()->set_start(args.key_range->first);
    request.mutable_key_range()->set_end(args.key_range->second);
  }
  return request;
}

void Session::Call(v1::SessionRequest request, SessionCallback done) const {
  if (shared_ == nullptr) {
    done(absl::FailedPreconditionError("session: an empty handle (default-constructed)"));
    return;
  }
  absl::StatusOr<std::shared_ptr<SessionStreamConnection>> stream = shared_->StreamTo(replica_);
  if (!stream.ok()) {
    done(stream.status());
    return;
  }
  (*stream)->Submit(std::move(request), std::move(done));
}

absl::StatusOr<v1::SessionResponse> Session::CallAndWait(v1::SessionRequest request) const {
  std::promise<absl::StatusOr<v1::SessionResponse>> promise;
  std::future<absl::StatusOr<v1::SessionResponse>> answer = promise.get_future();
  Call(std::move(request), [&promise](absl::StatusOr<v1::SessionResponse> result) {
    promise.set_value(std::move(result));
  });
  return answer.get();
}

absl::StatusOr<int64_t> Session::Append(int layer, const TensorView& k, const TensorView& v) const {
  v1::SessionRequest request;
  v1::AppendRequest* append = request.mutable_append();
  append->set_session_id(id_);
  append->set_layer(layer);
  absl::Status built = SetTensor("k", k, append->mutable_k());
  if (built.ok()) built = SetTensor("v", v, append->mutable_v());
  if (!built.ok()) return built;
  absl::StatusOr<v1::SessionResponse> answer = CallAndWait(std::move(request));
  if (!answer.ok()) return answer.status();
  return answer->append().tokens();
}

void Session::AttendAsync(int layer, const AttendArgs& args, AttentionCallback done) const {
  absl::StatusOr<v1::AttendRequest> attend = BuildAttendRequest(id_, layer, args);
  if (!attend.ok()) {
    done(attend.status());
    return;
  }
  v1::SessionRequest request;
  *request.mutable_attend() = std::move(*attend);
  Call(std::move(request), [done = std::move(done)](absl::StatusOr<v1::SessionResponse> answer) {
    if (!answer.ok()) {
      done(answer.status());
      return;
    }
    done(std::move(*answer->mutable_attend()));
  });
}

absl::StatusOr<v1::AttentionResponse> Session::Attend(int layer, const AttendArgs& args) const {
  std::promise<absl::StatusOr<v1::AttentionResponse>> promise;
  std::future<absl::StatusOr<v1::AttentionResponse>> answer = promise.get_future();
  AttendAsync(layer, args, [&promise](absl::StatusOr<v1::AttentionResponse> result) {
    promise.set_value(std::move(result));
  });
  return answer.get();
}

absl::StatusOr<Session> Session::Fork(int64_t prefix_tokens) const {
  v1::SessionRequest request;
  request.mutable_fork()->set_session_id(id_);
  request.mutable_fork()->set_prefix_tokens(prefix_tokens);
  absl::StatusOr<v1::SessionResponse> answer = CallAndWait(std::move(request));
  if (!answer.ok()) return answer.status();
  Session child;
  child.shared_ = shared_;
  child.id_ = answer->fork().session_id();
  child.replica_ = answer->fork().replica();
  child.page_size_ = page_size_;
  return child;
}

absl::Status Session::Truncate(int64_t tokens) const {
  v1::SessionRequest request;
  request.mutable_truncate()->set_session_id(id_);
  request.mutable_truncate()->set_tokens(tokens);
  return CallAndWait(std::move(request)).status();
}

absl::Status Session::Release() const {
  v1::SessionRequest request;
  request.mutable_release()->set_session_id(id_);
  return CallAndWait(std::move(request)).status();
}

absl::StatusOr<v1::GetSessionResponse> Session::Info() const {
  v1::SessionRequest request;
  request.mutable_get()->set_session_id(id_);
  absl::StatusOr<v1::SessionResponse> answer = CallAndWait(std::move(request));
  if (!answer.ok()) return answer.status();
  return std::move(*answer->mutable_get());
}

absl::StatusOr<SessionClient> SessionClient::Create(std::string_view target,
                                                    const SessionClientOptions& options) {
  absl::StatusOr<Client> entry = Client::Create(target, options.client);
  if (!entry.ok()) return entry.status();
  return SessionClient(std::make_shared<Session::Shared>(options, std::move(*entry)));
}

absl::StatusOr<Session> SessionClient::CreateSession(const SessionOptions& options,
                                                     const CallOptions& call) const {
  v1::CreateSessionRequest request;
  request.set_layers(options.layers);
  request.set_kv_heads(options.kv_heads);
  request.set_head_dim(options.head_dim);
  request.set_dtype(options.dtype);
  if (options.max_tokens) request.set_max_tokens(*options.max_tokens);
  if (options.idle_ttl) request.set_idle_ttl_ms(options.idle_ttl->count());
  grpc::ClientContext context;
  if (call.timeout) {
    context.set_deadline(
        std::chrono::system_clock::now() +
        std::chrono::duration_cast<std::chrono::system_clock::duration>(*call.timeout));
  } else if (shared_->options.client.default_timeout.count() > 0) {
    context.set_deadline(std::chrono::system_clock::now() +
                         shared_->options.client.default_timeout);
  }
  context.set_wait_for_ready(call.wait_for_ready);
  for (const auto& [key, value] : shared_->options.client.metadata) {
    context.AddMetadata(key, value);
  }
  v1::CreateSessionResponse response;
  const grpc::Status status = v1::SessionService::NewStub(shared_->entry.channel())
                                  ->CreateSession(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  Session session;
  session.shared_ = shared_;
  session.id_ = response.session_id();
  session.replica_ = response.replica();
  session.page_size_ = response.page_size();
  return session;
}

absl::StatusOr<Session> SessionClient::Attach(std::string_view session_id) const {
  absl::StatusOr<std::string> replica = ReplicaOf(session_id);
  if (!replica.ok()) return replica.status();
  Session session;
  session.shared_ = shared_;
  session.id_ = std::string(session_id);
  session.replica_ = std::move(*replica);
  return session;
}

int64_t SessionClient::in_flight() const {
  std::lock_guard<std::mutex> lock(shared_->mu);
  int64_t total = 0;
  for (const auto& [replica, stream] : shared_->streams) total += stream->in_flight();
  for (const auto& stream : shared_->retired) total += stream->in_flight();
  return total;
}

}  // namespace attention::client
