#include "server/session_service.h"

#include <chrono>
#include <climits>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "grpcpp/support/proto_buffer_reader.h"
#include "proto/contract_types.h"
#include "server/call_helpers.h"
#include "server/response_wire.h"
#include "server/service.h"
#include "server/session_validation.h"
#include "server/step_trace.h"
#include "server/stream_reactor.h"

namespace attention::server {
namespace {

// Parses `wire` into `message` and releases the buffer. INVALID_ARGUMENT naming the message type
// when the bytes are not one.
absl::Status ParseMessage(grpc::ByteBuffer* wire, google::protobuf::Message* message) {
  bool parsed = false;
  {
    grpc::ProtoBufferReader reader(wire);
    parsed = reader.status().ok() && message->ParseFromZeroCopyStream(&reader);
  }
  wire->Clear();
  if (parsed) return absl::OkStatus();
  message->Clear();
  return absl::InvalidArgumentError(absl::StrCat(
      "request: the message is not a valid ", message->GetTypeName(), " (protobuf wire format)"));
}

void Serialize(const google::protobuf::Message& message, grpc::ByteBuffer* wire) {
  bool own_buffer = false;
  // Serializing a message the server built into memory cannot fail but for sizes over 2 GiB,
  // which the answers' limits (--max_message_bytes) exclude.
  (void)grpc::SerializationTraits<google::protobuf::Message>::Serialize(message, wire, &own_buffer);
}

SessionOp OpOf(v1::SessionRequest::CallCase call) {
  switch (call) {
    case v1::SessionRequest::kCreate:
      return SessionOp::kCreate;
    case v1::SessionRequest::kAppend:
      return SessionOp::kAppend;
    case v1::SessionRequest::kAttend:
      return SessionOp::kAttend;
    case v1::SessionRequest::kFork:
      return SessionOp::kFork;
    case v1::SessionRequest::kTruncate:
      return SessionOp::kTruncate;
    case v1::SessionRequest::kRelease:
      return SessionOp::kRelease;
    case v1::SessionRequest::kGet:
    case v1::SessionRequest::CALL_NOT_SET:
      break;
  }
  return SessionOp::kGet;
}

// The session id a call in a turn names.
const std::string& SessionIdOf(const v1::SessionRequest& r) {
  switch (r.call_case()) {
    case v1::SessionRequest::kAppend:
      return r.append().session_id();
    case v1::SessionRequest::kAttend:
      return r.attend().session_id();
    case v1::SessionRequest::kFork:
      return r.fork().session_id();
    case v1::SessionRequest::kTruncate:
      return r.truncate().session_id();
    case v1::SessionRequest::kRelease:
      return r.release().session_id();
    case v1::SessionRequest::kGet:
      return r.get().session_id();
    default:
      break;
  }
  static const std::string kNone;
  return kNone;
}

int64_t UnixMillis(absl::Time t) { return absl::ToUnixMillis(t); }

// ATTN_APPEND_IN_STREAM=0 (docs/operations.md, Environment): the service writes an Attend's
// k_new / v_new itself, as before the rows went with the executor's launch. Read once.
bool AppendInStreamDisabled() {
  static const bool disabled = [] {
    const char* value = std::getenv("ATTN_APPEND_IN_STREAM");
    return value != nullptr && std::string(value) == "0";
  }();
  return disabled;
}

// ATTN_ANSWER_FIRST=1 (off: a candidate until measured): an Attend's answer is serialized and
// handed to gRPC before its job and its request's tensors are freed (they go after the write
// started: the job right after the answer, the request with the call). Read once.
// The largest request whose tensors AnswerFirst leaves to the item's destruction (a decode step's
// is ~12 KB at GQA 32/8, head_dim 128, bf16).
constexpr int64_t kAnswerFirstMaxRequestBytes = 64 * 1024;

bool AnswerFirst() {
  static const bool on = [] {
    const char* value = std::getenv("ATTN_ANSWER_FIRST");
    return value != nullptr && std::string(value) == "1";
  }();
  return on;
}

absl::Status DrainingStatus() {
  return absl::UnavailableError(
      "server is draining: its sessions end with it; create the session again on another "
      "replica and append its context");
}

}  // namespace

void SessionCall::Complete(std::unique_ptr<Job> job, const absl::Status& status) {
  step_trace::Stamp(step_trace::kComplete);
  const int64_t traced = step_trace::Generation();
  session::Turn turn;
  if (job->paged != nullptr) {
    PagedContext& paged = *job->paged;
    if (paged.rows.pending()) {
      // Dropped before launch, or its batch failed before its rows were written: a queued Attend's
      // rows stay appended (attention.proto), so they are written now, within the turn. If even
      // that fails (a device that failed), the append is taken back instead: the session is as
      // it was before this Attend, never holding rows that were not written.
      if (absl::Status written = WritePendingRows(*job); !written.ok()) {
        const int layer = paged.view.layer();
        const int64_t rows = static_cast<int64_t>(paged.rows.slots.size());
        paged.view.Reset();
        if (store != nullptr)
          store->UndoAppend(paged.turn.id(), layer, paged.rows.first_token, rows);
      }
    }
    paged.view.Reset();
    turn = std::move(paged.turn);
  }
  turn.Unpin();  // before the answer: its reader finds the session idle
  if (status.ok()) WriteAnswer(*job, response.mutable_attend());
  if (AnswerFirst()) {
    // The job no longer refers to anything it reads when destroyed (its view is dropped, its
    // turn taken, its outputs moved into the answer): it may outlive the call that Done ends.
    std::unique_ptr<Job> answered = std::move(job);
    Done(status);
    answered.reset();
  } else {
    job.reset();
    Done(status);
  }
  turn.End();
  step_trace::StampOf(traced, step_trace::kTurnEnded);
}

absl::Status SessionCall::Abandoned() const {
  if (cancelled != nullptr && cancelled->load(std::memory_order_relaxed)) {
    return absl::CancelledError("the call was cancelled before its turn");
  }
  if (Clock::now() > deadline) {
    return absl::DeadlineExceededError("the call's deadline passed before its turn");
  }
  return absl::OkStatus();
}

namespace {

// The field of a SessionRequest a unary method's message is parsed into.
google::protobuf::Message* UnaryRequest(SessionOp op, v1::SessionRequest& request) {
  switch (op) {
    case SessionOp::kCreate:
      return request.mutable_create();
    case SessionOp::kAppend:
      return request.mutable_append();
    case SessionOp::kAttend:
      return request.mutable_attend();
    case SessionOp::kFork:
      return request.mutable_fork();
    case SessionOp::kTruncate:
      return request.mutable_truncate();
    case SessionOp::kRelease:
      return request.mutable_release();
    case SessionOp::kGet:
      break;
  }
  return request.mutable_get();
}

// The result of `op` in `response`, as the unary method answers it.
google::protobuf::Message* UnaryResult(SessionOp op, v1::SessionResponse& response) {
  switch (op) {
    case SessionOp::kCreate:
      return response.mutable_create();
    case SessionOp::kAppend:
      return response.mutable_append();
    case SessionOp::kAttend:
      return response.mutable_attend();
    case SessionOp::kFork:
      return response.mutable_fork();
    case SessionOp::kTruncate:
      return response.mutable_truncate();
    case SessionOp::kRelease:
      return response.mutable_release();
    case SessionOp::kGet:
      break;
  }
  return response.mutable_get();
}

// One unary call. Deletes itself in OnDone, which gRPC calls after Finish, so the request and
// response outlive the job of an Attend.
class UnarySessionCall final : public grpc::ServerUnaryReactor, public SessionCall {
 public:
  UnarySessionCall(SessionServiceImpl* service, grpc::CallbackServerContext* context, SessionOp op,
                   const grpc::ByteBuffer* request_wire, grpc::ByteBuffer* response_wire)
      : service_(service), op_(op), response_wire_(response_wire) {
    service_->CallStarted();
    accepted = Clock::now();
    deadline = SteadyDeadline(context, accepted);
    cancelled = &cancelled_;
    request_bytes = static_cast<int64_t>(request_wire->Length());
    // gRPC allocated the request buffer for this call and only reads it back to destroy it.
    absl::Status parsed =
        ParseMessage(const_cast<grpc::ByteBuffer*>(request_wire), UnaryRequest(op, request));
    // Once started, another thread may answer the call (and this object be deleted): nothing
    // after Run touches `this`.
    if (parsed.ok()) {
      service_->Run(this);
    } else {
      Done(parsed);
    }
  }

  void Done(const absl::Status& status) override {
    int64_t response_bytes = 0;
    if (status.ok()) {
      if (op_ == SessionOp::kAttend) {
        v1::AttentionResponse* answer = response.mutable_attend();
        answer->mutable_timings()->set_total_ns(NanosSince(accepted));
        request.Clear();  // the inputs are no longer needed
        SerializeResponseWithoutCopy(answer, response_wire_);
      } else {
        Serialize(*UnaryResult(op_, response), response_wire_);
      }
      response_bytes = static_cast<int64_t>(response_wire_->Length());
    }
    if (SessionMetrics* metrics = service_->metrics(); metrics != nullptr) {
      metrics->CallDone(op_, static_cast<grpc::StatusCode>(status.code()), SecondsSince(accepted),
                        request_bytes, response_bytes);
    }
    Finish(ToGrpc(status));
  }

  void OnCancel() override {
    cancelled_.store(true, std::memory_order_relaxed);
    service_->batcher()->NotifyCancelled();
  }

  void OnDone() override {
    SessionServiceImpl* service = service_;
    delete this;
    service->CallDone();
  }

 private:
  SessionServiceImpl* const service_;
  const SessionOp op_;
  grpc::ByteBuffer* const response_wire_;
  std::atomic<bool> cancelled_{false};
};

class SessionStreamItem;

}  // namespace

// One SessionStream: StreamReactor's mechanics (server/stream_reactor.h) with an Item per call
// (a SessionCall that owns itself while its call runs). Calls are started in arrival order from
// the reading path, one after the other, which is what orders each session's calls
// (SessionStore::RunInTurn keeps the order it is called in). A call is counted when its answer is
// queued (or dropped), with the answer's serialized size.
class SessionStreamCall final
    : public StreamReactor<SessionStreamCall, SessionServiceImpl, SessionStreamItem> {
 public:
  SessionStreamCall(SessionServiceImpl* service, grpc::CallbackServerContext* context)
      : StreamReactor(service, SteadyDeadline(context, Clock::now())) {
    Open();
  }

 private:
  friend class StreamReactor<SessionStreamCall, SessionServiceImpl, SessionStreamItem>;

  static grpc::Status DrainingStatus() { return ToGrpc(::attention::server::DrainingStatus()); }

  absl::Status Parse(SessionStreamItem& item);

  // A message that is not a SessionRequest is not counted as a call.
  void CountMalformed(const SessionStreamItem& /*item*/) {}

  // A call read after the stream finished, never answered.
  void CountUnanswered(const SessionStreamItem& item, grpc::StatusCode code);

  // An answer the stream will never write counts as what the caller saw: CANCELLED.
  grpc::StatusCode DroppedCode() const { return grpc::StatusCode::CANCELLED; }

  // Runs the call; one refused for the answer budget is answered at once.
  void Start(std::unique_ptr<SessionStreamItem> item);

  // The answer (result or error), serialized into wire_out.
  void BuildAnswer(SessionStreamItem& item, const absl::Status& status);

  // Counts the call, as answered or (dropped) as what the caller saw. Under mu_.
  void AnswerReady(SessionStreamItem& item, bool dropped);

  // Counted already (AnswerReady).
  void WriteEnded(SessionStreamItem& /*item*/, bool /*written*/) {}

  // Serialized already (BuildAnswer).
  void SerializeAnswer(SessionStreamItem& /*item*/) {}

  void Cancelled() {}
};

namespace {

// One call of a SessionStream.
class SessionStreamItem final : public SessionCall {
 public:
  explicit SessionStreamItem(SessionStreamCall* call) : call(call) {}
  void Done(const absl::Status& status) override {
    call->ItemDone(std::unique_ptr<SessionStreamItem>(this), status);
  }
  SessionStreamCall* const call;
  SessionOp op = SessionOp::kGet;
  grpc::ByteBuffer wire_in;   // the message as read, released once parsed
  grpc::ByteBuffer wire_out;  // the answer as written
  // The answer, once BuildAnswer built it: its code, and whether the call is counted.
  grpc::StatusCode code = grpc::StatusCode::OK;
  bool counted = false;
};

}  // namespace

absl::Status SessionStreamCall::Parse(SessionStreamItem& item) {
  item.deadline = deadline();
  item.cancelled = cancelled_flag();
  absl::Status parsed = ParseMessage(&item.wire_in, &item.request);
  if (parsed.ok()) item.op = OpOf(item.request.call_case());
  return parsed;
}

void SessionStreamCall::CountUnanswered(const SessionStreamItem& item, grpc::StatusCode code) {
  if (SessionMetrics* metrics = service_->metrics(); metrics != nullptr) {
    metrics->CallDone(item.op, code, SecondsSince(item.accepted), item.request_bytes, 0);
  }
}

void SessionStreamCall::Start(std::unique_ptr<SessionStreamItem> item) {
  if (absl::Status reserved = service_->ReserveAnswer(*item); !reserved.ok()) {
    // The answers waiting to be sent are at the server's bound: this one is refused, and the
    // stream reads on once one of its answers is written.
    PauseForAnswerBudget();
    ItemDone(std::move(item), reserved);
  } else {
    service_->Run(item.release());  // owned by its call until ItemDone
  }
}

void SessionStreamCall::BuildAnswer(SessionStreamItem& item, const absl::Status& status) {
  v1::SessionResponse& response = item.response;
  if (status.ok()) {
    if (response.has_attend()) {
      response.mutable_attend()->mutable_timings()->set_total_ns(NanosSince(item.accepted));
    }
  } else {
    response.Clear();
    response.mutable_error()->set_code(static_cast<int32_t>(status.code()));
    response.mutable_error()->set_message(std::string(status.message()));
  }
  response.set_request_id(item.request.request_id());
  item.code = static_cast<grpc::StatusCode>(status.code());
  item.counted = item.request.call_case() != v1::SessionRequest::CALL_NOT_SET;
  // The inputs are no longer needed: freed now, or with the item once written (AnswerFirst; only
  // a small request, so that answers queued behind a slow reader never hold bulk appends).
  if (!AnswerFirst() || item.request_bytes > kAnswerFirstMaxRequestBytes) item.request.Clear();
  Serialize(response, &item.wire_out);
  response.Clear();
}

void SessionStreamCall::AnswerReady(SessionStreamItem& item, bool dropped) {
  if (SessionMetrics* metrics = service_->metrics(); metrics != nullptr && item.counted) {
    metrics->CallDone(item.op, dropped ? DroppedCode() : item.code, SecondsSince(item.accepted),
                      item.request_bytes,
                      dropped ? 0 : static_cast<int64_t>(item.wire_out.Length()));
  }
}

SessionServiceImpl::SessionServiceImpl(const SessionServiceOptions& options,
                                       session::SessionStore* store, Batcher* batcher,
                                       SessionMetrics* metrics)
    : options_(options),
      append_in_stream_(options.append_in_stream && !AppendInStreamDisabled()),
      store_(store),
      batcher_(batcher),
      metrics_(metrics) {}

SessionServiceImpl::~SessionServiceImpl() = default;

grpc::ServerUnaryReactor* SessionServiceImpl::CreateSession(grpc::CallbackServerContext* context,
                                                            const grpc::ByteBuffer* request,
                                                            grpc::ByteBuffer* response) {
  return new UnarySessionCall(this, context, SessionOp::kCreate, request, response);
}

grpc::ServerUnaryReactor* SessionServiceImpl::Append(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* request,
                                                     grpc::ByteBuffer* response) {
  return new UnarySessionCall(this, context, SessionOp::kAppend, request, response);
}

grpc::ServerUnaryReactor* SessionServiceImpl::Attend(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* request,
                                                     grpc::ByteBuffer* response) {
  return new UnarySessionCall(this, context, SessionOp::kAttend, request, response);
}

grpc::ServerUnaryReactor* SessionServiceImpl::Fork(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* request,
                                                   grpc::ByteBuffer* response) {
  return new UnarySessionCall(this, context, SessionOp::kFork, request, response);
}

grpc::ServerUnaryReactor* SessionServiceImpl::Truncate(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request,
                                                       grpc::ByteBuffer* response) {
  return new UnarySessionCall(this, context, SessionOp::kTruncate, request, response);
}

grpc::ServerUnaryReactor* SessionServiceImpl::ReleaseSession(grpc::CallbackServerContext* context,
                                                             const grpc::ByteBuffer* request,
                                                             grpc::ByteBuffer* response) {
  return new UnarySessionCall(this, context, SessionOp::kRelease, request, response);
}

grpc::ServerUnaryReactor* SessionServiceImpl::GetSession(grpc::CallbackServerContext* context,
                                                         const grpc::ByteBuffer* request,
                                                         grpc::ByteBuffer* response) {
  return new UnarySessionCall(this, context, SessionOp::kGet, request, response);
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* SessionServiceImpl::SessionStream(
    grpc::CallbackServerContext* context) {
  return new SessionStreamCall(this, context);
}

absl::Status SessionServiceImpl::ReserveAnswer(SessionCall& call) {
  AnswerBudget* budget = options_.answer_budget;
  if (call.answer_checked || budget == nullptr ||
      call.request.call_case() != v1::SessionRequest::kAttend) {
    return absl::OkStatus();
  }
  call.answer_checked = true;
  const v1::AttendRequest& r = call.request.attend();
  // o has q's size; lse one float per query row and head (validation checks the shape later).
  int64_t bytes = static_cast<int64_t>(r.q().data().size());
  if (r.return_lse() && r.q().shape_size() >= 2) {
    const int64_t rows = r.q().shape(0), heads = r.q().shape(1);
    if (rows > 0 && heads > 0 && rows <= INT32_MAX && heads <= INT32_MAX) {
      bytes += rows * heads * int64_t{sizeof(float)};
    }
  }
  if (!budget->Reserve(bytes)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "answers waiting to be sent hold ", budget->pending(), " bytes; this Attend's o and lse (",
        bytes, " bytes) would pass the bound of ", budget->limit(),
        " bytes (--max_pending_answer_bytes): read the answers of your streams, retry later"));
  }
  call.answer_budget = budget;
  call.reserved_answer_bytes = bytes;
  return absl::OkStatus();
}

void SessionServiceImpl::Run(SessionCall* call) {
  if (draining()) {
    call->Done(DrainingStatus());
    return;
  }
  if (absl::Status reserved = ReserveAnswer(*call); !reserved.ok()) {
    call->Done(reserved);
    return;
  }
  switch (call->request.call_case()) {
    case v1::SessionRequest::kCreate:
      RunCreate(call);
      return;
    case v1::SessionRequest::kGet:
      RunGet(call);
      return;
    case v1::SessionRequest::CALL_NOT_SET:
      call->Done(absl::InvalidArgumentError(
          "call: no call set (one of create, append, attend, fork, truncate, release, get)"));
      return;
    default:
      RunInTurn(call);
      return;
  }
}

void SessionServiceImpl::RunCreate(SessionCall* call) {
  absl::StatusOr<session::SessionSpec> spec =
      ValidateCreateSession(call->request.create(), options_.limits);
  if (spec.ok() && options_.check_kernel) {
    KernelConfig attend;
    attend.kind = WorkKind::kPagedDecode;
    attend.dtype = spec->dtype;
    attend.head_dim = spec->head_dim;
    attend.q_heads = attend.kv_heads = spec->kv_heads;
    attend.softmax_scale = 1.f;
    if (absl::Status served = options_.check_kernel(attend); !served.ok()) {
      call->Done(absl::Status(
          served.code(),
          absl::StrCat("sessions of dtype ", v1::DType_Name(ContractDType(spec->dtype)),
                       ", head_dim ", spec->head_dim, " cannot attend here: ", served.message())));
      return;
    }
  }
  absl::StatusOr<session::SessionId> id = spec.ok() ? store_->CreateSession(*spec) : spec.status();
  absl::StatusOr<session::SessionInfo> info = id.ok() ? store_->GetSession(*id) : id.status();
  if (!info.ok()) {
    call->Done(info.status());
    return;
  }
  v1::CreateSessionResponse* r = call->response.mutable_create();
  r->set_session_id(SessionIdText(*id, options_.replica));
  r->set_replica(options_.replica);
  r->set_page_size(info->page_size);
  r->set_max_tokens(info->spec.max_tokens);
  r->set_idle_ttl_ms(absl::ToInt64Milliseconds(info->spec.idle_ttl));
  call->Done(absl::OkStatus());
}

void SessionServiceImpl::RunGet(SessionCall* call) {
  absl::StatusOr<session::SessionId> id =
      ParseSessionIdText(call->request.get().session_id(), options_.replica);
  absl::StatusOr<session::SessionInfo> info = id.ok() ? store_->GetSession(*id) : id.status();
  if (!info.ok()) {
    call->Done(info.status());
    return;
  }
  v1::GetSessionResponse* r = call->response.mutable_get();
  r->set_session_id(SessionIdText(*id, options_.replica));
  r->set_replica(options_.replica);
  r->set_layers(info->spec.layers);
  r->set_kv_heads(info->spec.kv_heads);
  r->set_head_dim(info->spec.head_dim);
  r->set_dtype(ContractDType(info->spec.dtype));
  r->set_page_size(info->page_size);
  r->set_max_tokens(info->spec.max_tokens);
  r->set_idle_ttl_ms(absl::ToInt64Milliseconds(info->spec.idle_ttl));
  for (int64_t tokens : info->tokens) r->add_tokens(tokens);
  r->set_pages(info->pages);
  r->set_shared_pages(info->shared_pages);
  r->set_created_unix_ms(UnixMillis(info->created));
  r->set_last_use_unix_ms(UnixMillis(info->last_use));
  call->Done(absl::OkStatus());
}

namespace {

// The steps that run in a session's turn. Each answers its call exactly once through
// AnswerInTurn; `turn` ends when the step returns (after the answer), unless the step hands it to
// an Attend's job.

// Unpins the session, then answers: a caller holding the answer finds the session idle (it can be
// evicted for another session's pages, its idle time runs). The turn passes on after the answer.
void AnswerInTurn(SessionCall* call, session::Turn& turn, const absl::Status& status) {
  turn.Unpin();
  call->Done(status);
}

void AppendStep(SessionServiceImpl& service, SessionCall* call, const session::SessionId& id,
                session::Turn& turn) {
  const v1::AppendRequest& r = call->request.append();
  session::SessionStore& store = *service.store();
  absl::StatusOr<session::ReadView> view = store.View(id, r.layer());
  if (!view.ok()) {
    AnswerInTurn(call, turn, view.status());
    return;
  }
  const session::PageLayout layout = view->layout();
  view->Reset();
  absl::StatusOr<int64_t> rows = ValidateAppend(r, layout, service.options().limits);
  absl::StatusOr<session::AppendResult> appended =
      rows.ok() ? store.AppendRows(id, r.layer(), *rows, r.k().data().data(), r.v().data().data())
                : rows.status();
  if (!appended.ok()) {
    AnswerInTurn(call, turn, appended.status());
    return;
  }
  appended->view.Reset();
  call->response.mutable_append()->set_tokens(appended->first_token + *rows);
  AnswerInTurn(call, turn, absl::OkStatus());
}

void AttendStep(SessionServiceImpl& service, SessionCall* call, const session::SessionId& id,
                session::Turn turn) {
  step_trace::Stamp(step_trace::kInTurn);
  const v1::AttendRequest& r = call->request.attend();
  session::SessionStore& store = *service.store();
  const ValidationLimits& limits = service.options().limits;
  absl::StatusOr<session::ReadView> view = store.View(id, r.layer());
  if (!view.ok()) {
    AnswerInTurn(call, turn, view.status());
    return;
  }
  absl::StatusOr<AttendInputs> inputs = ValidateAttend(r, view->layout(), limits);
  if (!inputs.ok()) {
    view->Reset();
    AnswerInTurn(call, turn, inputs.status());
    return;
  }
  int64_t first_token = -1;  // where k_new / v_new went, -1 if none
  PendingRows pending;
  if (inputs->appends) {
    view->Reset();  // else the append copies the layer's page list the view holds
    // In stream (the default): only the rows' slots are reserved here; the executor writes them
    // right before its kernel (PendingRows), so that a GPU step makes no CUDA call of its own for
    // them. Otherwise they are written now (on a GPU: uploaded and scattered on a staging lane).
    absl::StatusOr<session::AppendResult> appended =
        service.append_in_stream()
            ? store.Append(id, r.layer(), inputs->n_new)
            : store.AppendRows(id, r.layer(), inputs->n_new, r.k_new().data().data(),
                               r.v_new().data().data());
    if (!appended.ok()) {
      AnswerInTurn(call, turn, appended.status());
      return;
    }
    first_token = appended->first_token;
    if (service.append_in_stream()) {
      call->store = &store;
      pending.k = r.k_new().data().data();
      pending.v = r.v_new().data().data();
      pending.slots = std::move(appended->slots);
      pending.first_token = first_token;
    }
    *view = std::move(appended->view);
  }
  auto job = std::make_unique<Job>();
  job->q_header = &r.q();
  job->spec = std::move(inputs->spec);
  job->paged = std::make_unique<PagedContext>();
  job->paged->view = std::move(*view);
  job->paged->rows = std::move(pending);
  job->completion = call;
  job->accepted = call->accepted;
  job->deadline = call->deadline;
  job->cancelled = call->cancelled;
  absl::Status queued = CompleteAttendSpec(r, inputs->n_new, limits, job->paged.get(), job->spec);
  if (queued.ok()) {
    job->paged->turn = std::move(turn);
    step_trace::Stamp(step_trace::kEnqueue);
    queued = service.batcher()->Enqueue(job);
    // On OK the job (and the turn) belong to the batcher, and the call may be answered already.
    if (queued.ok()) return;
    turn = std::move(job->paged->turn);
  }
  // Refused: nothing of this Attend stays. The view goes first, so that undoing the append does
  // not copy the layer's page list.
  job.reset();
  if (first_token >= 0) store.UndoAppend(id, r.layer(), first_token, inputs->n_new);
  AnswerInTurn(call, turn, queued);
}

void ForkStep(SessionServiceImpl& service, SessionCall* call, const session::SessionId& id,
              session::Turn& turn) {
  absl::StatusOr<session::SessionId> child =
      service.store()->Fork(id, call->request.fork().prefix_tokens());
  if (!child.ok()) {
    AnswerInTurn(call, turn, child.status());
    return;
  }
  v1::ForkResponse* r = call->response.mutable_fork();
  r->set_session_id(SessionIdText(*child, service.options().replica));
  r->set_replica(service.options().replica);
  AnswerInTurn(call, turn, absl::OkStatus());
}

}  // namespace

void SessionServiceImpl::RunInTurn(SessionCall* call) {
  absl::StatusOr<session::SessionId> id =
      ParseSessionIdText(SessionIdOf(call->request), options_.replica);
  if (!id.ok()) {
    call->Done(id.status());
    return;
  }
  store_->RunInTurn(*id, [this, call, id = *id](absl::StatusOr<session::Turn> turn) mutable {
    if (!turn.ok()) {
      call->Done(turn.status());
      return;
    }
    if (absl::Status gone = call->Abandoned(); !gone.ok()) {
      AnswerInTurn(call, *turn, gone);
      return;
    }
    switch (call->request.call_case()) {
      case v1::SessionRequest::kAppend:
        AppendStep(*this, call, id, *turn);
        return;
      case v1::SessionRequest::kAttend:
        AttendStep(*this, call, id, std::move(*turn));
        return;
      case v1::SessionRequest::kFork:
        ForkStep(*this, call, id, *turn);
        return;
      case v1::SessionRequest::kTruncate: {
        const absl::Status done = store_->Truncate(id, call->request.truncate().tokens());
        if (done.ok()) call->response.mutable_truncate();
        AnswerInTurn(call, *turn, done);
        return;
      }
      case v1::SessionRequest::kRelease: {
        const absl::Status done = store_->Release(id);
        if (done.ok()) call->response.mutable_release();
        AnswerInTurn(call, *turn, done);
        return;
      }
      default:
        AnswerInTurn(call, *turn,
                     absl::InternalError("call: not a call that runs in a session's turn"));
        return;
    }
  });
}

void SessionServiceImpl::StartDrain() { DrainStreams(); }

}  // namespace attention::server
