// attention.v1.SessionService on gRPC's callback API: the RPCs of attention.proto's "Sessions"
// over a session::SessionStore (server/session/), with Attend queued on the same Batcher as the
// forward calls (server/README.md, "Request path", has an Attend's way through it).
//
// Every call, unary or on a SessionStream, becomes one SessionCall: a SessionRequest (a unary
// call's message is parsed into the matching field of one) answered once with a SessionResponse.
// Reactions never block:
//   CreateSession  validate -> SessionStore::CreateSession -> answer, on the reacting thread;
//   GetSession     validate -> SessionStore::GetSession -> answer (read as it is: not ordered
//                  after the session's calls in flight, and not counted as a use);
//   every other    validate the id -> SessionStore::RunInTurn(id, step): the step runs when the
//                  session's earlier calls are done (at once, or on the thread that ended the last
//                  one's turn), in the order RunInTurn was called, so one stream's calls apply in
//                  arrival order. Append, Fork, Truncate and Release run in their step and answer.
//                  Attend's step takes the layer's view (after reserving k_new / v_new's rows),
//                  makes a Job of kind kPagedDecode that owns the view, the turn and the rows to
//                  write (PagedContext, PendingRows) and queues it; the executor writes the rows
//                  right before its kernel; the session's next call starts when that job is
//                  answered.
// An Attend refused after its k_new / v_new were appended (the queue full, draining) has them
// removed again before its turn ends (SessionStore::UndoAppend), so a refused Attend leaves the
// session as it was. A queued one whose rows come back unwritten (dropped before launch, its batch
// failed first) has them written by SessionCall::Complete: a queued Attend's rows stay appended.
//
// A SessionStream runs by the rules and mechanics of the attention stream (server/stream_state.h,
// server/stream_reactor.h): flow control at max_stream_in_flight calls read and not yet
// answered, one write outstanding, OK once the client half-closed and every answer was written,
// UNAVAILABLE while draining, CANCELLED on a cancel, INVALID_ARGUMENT for a message that is not a
// SessionRequest.
//
// Replica routing: session ids carry the name of the replica that holds them
// (server/session_validation.h); a call with another replica's id is answered
// FAILED_PRECONDITION naming the owner. Authentication is the server's, on every call's headers
// before it reaches a service (server/auth.h).
#ifndef ATTENTION_SERVER_SESSION_SERVICE_H_
#define ATTENTION_SERVER_SESSION_SERVICE_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "attention/v1/attention.grpc.pb.h"
#include "kernels/kernel_config.h"
#include "server/answer_budget.h"
#include "server/batcher.h"
#include "server/metrics/session_metrics.h"
#include "server/open_calls.h"
#include "server/session/session_store.h"
#include "server/validation.h"

namespace attention::server {

class SessionStreamCall;

// One session call in flight, unary or a stream's (or a test's): its request (a unary call's
// message parsed into the matching field of a SessionRequest), its response, and how it is
// answered. SessionServiceImpl::Run answers it exactly once through Done.
class SessionCall : public JobCompletion {
 public:
  // Gives back the answer's reservation in the answer budget: the call is destroyed once its
  // answer was handed to the transport (or dropped).
  ~SessionCall() override {
    if (answer_budget != nullptr) answer_budget->Release(reserved_answer_bytes);
  }

  // Answers the call: on OK, `response` holds the result of the request's kind. From any thread,
  // with no lock held that the answer path takes; the call may be deleted before Done returns.
  virtual void Done(const absl::Status& status) = 0;

  // An Attend's job comes back: drops its view (the kernel has read it), writes the answer,
  // answers, and only then ends the session's turn, whose end may start the session's next call
  // on this thread.
  void Complete(std::unique_ptr<Job> job, const absl::Status& status) override;

  // CANCELLED or DEADLINE_EXCEEDED when the caller is gone or out of time: a call waiting for its
  // turn is then answered without being applied.
  absl::Status Abandoned() const;

  v1::SessionRequest request;
  v1::SessionResponse response;
  Clock::time_point accepted;
  Clock::time_point deadline = Clock::time_point::max();
  const std::atomic<bool>* cancelled = nullptr;  // null: cannot be cancelled
  int64_t request_bytes = 0;
  // An Attend's answer reserved in the answer budget (SessionServiceImpl::ReserveAnswer).
  bool answer_checked = false;
  AnswerBudget* answer_budget = nullptr;
  int64_t reserved_answer_bytes = 0;
  // The store of an Attend that left its k_new / v_new to the executor (PendingRows): Complete
  // undoes that append there if the rows cannot be written at all. Null otherwise.
  session::SessionStore* store = nullptr;
};

struct SessionServiceOptions {
  // This replica's name (--replica_name): CreateSession answers it, session ids carry it.
  std::string replica;
  // The per-request limits of the attention service (rows, heads, work, answer size).
  ValidationLimits limits;
  // Calls of one SessionStream read and not yet answered before the stream stops reading.
  int max_stream_in_flight = 1024;
  // Whether this server's backend runs Attend for a session's shape: asked with a paged-decode
  // KernelConfig of the session's dtype, head_dim and kv_heads (the backend's CheckSupported).
  // CreateSession answers a refusal (UNIMPLEMENTED naming why: the backend has no sessions, or
  // this build has no kernel for the dtype or head_dim), so that no session is created that could
  // never attend. Null: every shape that passes validation.
  std::function<absl::Status(const KernelConfig&)> check_kernel;
  // The answer budget shared with the attention service (--max_pending_answer_bytes; not owned),
  // or null for none.
  AnswerBudget* answer_budget = nullptr;
  // An Attend's k_new / v_new are only reserved in the store by the service and written by the
  // executor, right before its kernel (PendingRows, server/executor.h): on a GPU, uploaded with q
  // and scattered by the append kernel on the batch's own stream. false: the service writes them
  // itself before queueing the attention (on a GPU: four CUDA calls on a staging lane and a
  // cross-stream wait). The environment's ATTN_APPEND_IN_STREAM=0 forces false (one binary
  // measures both; docs/operations.md).
  bool append_in_stream = true;
};

// Every method raw (grpc::ByteBuffer in and out), as the attention service's: the service parses
// each message itself, so that bytes that are not the method's message are answered
// INVALID_ARGUMENT with a message (gRPC 1.51's typed callback handlers answer UNIMPLEMENTED
// without one, or end a stream as if the client had half-closed).
using SessionServiceBase = v1::SessionService::WithRawCallbackMethod_CreateSession<
    v1::SessionService::WithRawCallbackMethod_Append<
        v1::SessionService::WithRawCallbackMethod_Attend<
            v1::SessionService::WithRawCallbackMethod_Fork<
                v1::SessionService::WithRawCallbackMethod_Truncate<
                    v1::SessionService::WithRawCallbackMethod_ReleaseSession<
                        v1::SessionService::WithRawCallbackMethod_GetSession<
                            v1::SessionService::WithRawCallbackMethod_SessionStream<
                                v1::SessionService::Service>>>>>>>>;

class SessionServiceImpl final : public SessionServiceBase, public ServiceCalls<SessionStreamCall> {
 public:
  // `store` and `batcher` outlive the service and the gRPC server it is registered on (and the
  // store outlives the batcher: queued Attend jobs hold views and turns of it); `metrics` may be
  // null.
  SessionServiceImpl(const SessionServiceOptions& options, session::SessionStore* store,
                     Batcher* batcher, SessionMetrics* metrics);
  ~SessionServiceImpl() override;

  grpc::ServerUnaryReactor* CreateSession(grpc::CallbackServerContext* context,
                                          const grpc::ByteBuffer* request,
                                          grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Append(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Attend(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Fork(grpc::CallbackServerContext* context,
                                 const grpc::ByteBuffer* request,
                                 grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Truncate(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ReleaseSession(grpc::CallbackServerContext* context,
                                           const grpc::ByteBuffer* request,
                                           grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* SessionStream(
      grpc::CallbackServerContext* context) override;

  // Draining: new calls are refused with UNAVAILABLE, and every open stream ends with
  // UNAVAILABLE once its outstanding answers are written. WaitForCalls, open_streams, draining
  // and the call objects' CallStarted, CallDone, Register, Unregister: ServiceCalls.
  void StartDrain();

  // Shared by the call objects (session_service.cc).
  const SessionServiceOptions& options() const { return options_; }
  // options().append_in_stream, unless ATTN_APPEND_IN_STREAM=0.
  bool append_in_stream() const { return append_in_stream_; }
  session::SessionStore* store() const { return store_; }
  Batcher* batcher() const { return batcher_; }
  SessionMetrics* metrics() const { return metrics_; }
  // Starts `call` (its request parsed): answers it through SessionCall::Done exactly once, from
  // this thread or a later one.
  void Run(SessionCall* call);
  // An Attend reserves its answer (o, and lse when asked) in the answer budget before it runs;
  // the call holds the bytes until it is destroyed. OK (also for other calls, and when already
  // reserved), or RESOURCE_EXHAUSTED naming --max_pending_answer_bytes; Run checks it too.
  absl::Status ReserveAnswer(SessionCall& call);

 private:
  void RunCreate(SessionCall* call);
  void RunGet(SessionCall* call);
  // Append, Attend, Fork, Truncate, Release: in the session's turn.
  void RunInTurn(SessionCall* call);

  const SessionServiceOptions options_;
  const bool append_in_stream_;
  session::SessionStore* const store_;
  Batcher* const batcher_;
  SessionMetrics* const metrics_;
};

}  // namespace attention::server

#endif  // ATTENTION_SERVER_SESSION_SERVICE_H_
