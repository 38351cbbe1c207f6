#include "server/service.h"

#include <chrono>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpcpp/support/slice.h"
#include "proto/contract_types.h"
#include "server/call_helpers.h"
#include "server/log.h"
#include "server/metrics/metrics.h"
#include "server/request_wire.h"
#include "server/response_wire.h"
#include "server/stream_reactor.h"

namespace attention::server {
namespace {

using Request = v1::AttentionRequest;
using Response = v1::AttentionResponse;

// A received request: the message without q, k and v's data, and the gRPC slices those bytes
// still lie in (request_wire.h). Everything stays alive until the request is answered, so the
// request is held once, in the buffers it arrived in.
struct ReceivedRequest {
  Request message;
  TensorData data;
  std::vector<grpc::Slice> slices;

  // Drops the inputs once they are no longer needed.
  void Release() {
    message.Clear();
    data = TensorData();
    slices.clear();
  }
};

// Takes one wire message apart into `received` (the slices are referenced, not copied) and
// releases the ByteBuffer. INVALID_ARGUMENT when the bytes are not an AttentionRequest; gRPC
// itself would answer UNIMPLEMENTED with no message (unary) or end a stream as if the client had
// half-closed.
absl::Status ParseRequest(grpc::ByteBuffer* wire, ReceivedRequest* received) {
  received->slices.clear();
  bool parsed = wire->Dump(&received->slices).ok();
  wire->Clear();
  if (parsed) {
    WirePieces pieces;
    pieces.reserve(received->slices.size());
    for (const grpc::Slice& slice : received->slices) {
      pieces.emplace_back(reinterpret_cast<const char*>(slice.begin()), slice.size());
    }
    parsed = ParseWithoutTensorData(pieces, &received->message, &received->data);
  }
  if (parsed) return absl::OkStatus();
  received->Release();
  return absl::InvalidArgumentError(
      "request: the message is not a valid attention.v1.AttentionRequest (protobuf wire format)");
}

// gRPC does not tell a server why a call was cancelled. A client's deadline passes on its own
// clock, and it then cancels the call; the server's deadline for the call is that instant plus
// the time the call's headers took to arrive, so an expired deadline reaches the server as a
// cancel shortly before the deadline it knows (0.4 to 12 ms on loopback under load). A cancel
// within this slack of the deadline is therefore counted DEADLINE_EXCEEDED; a client that really
// cancels that close to its deadline cannot be told apart.
constexpr Clock::duration kDeadlineSlack = std::chrono::milliseconds(100);

// When a call was cancelled (OnCancel), for CodeSeenByClient; set once, from any thread.
class CancelTime {
 public:
  void Set() { at_.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed); }
  // The time of the cancel, or the epoch when there was none.
  Clock::time_point Get() const {
    return Clock::time_point(Clock::duration(at_.load(std::memory_order_relaxed)));
  }

 private:
  std::atomic<Clock::rep> at_{0};
};

// The code the caller of a request saw: DEADLINE_EXCEEDED once its deadline passed and CANCELLED
// once it cancelled (gRPC ends the call on the client's side then, and drops what the server
// answers), else the server's answer. `cancelled_at` is the epoch when the call was not
// cancelled.
grpc::StatusCode CodeSeenByClient(grpc::StatusCode answered, Clock::time_point deadline,
                                  Clock::time_point cancelled_at) {
  const bool has_deadline = deadline != Clock::time_point::max();
  if (cancelled_at != Clock::time_point{}) {
    return has_deadline && cancelled_at >= deadline - kDeadlineSlack
               ? grpc::StatusCode::DEADLINE_EXCEEDED
               : grpc::StatusCode::CANCELLED;
  }
  if (has_deadline && Clock::now() >= deadline) return grpc::StatusCode::DEADLINE_EXCEEDED;
  return answered;
}

grpc::StatusCode CodeOf(const absl::Status& status) {
  return static_cast<grpc::StatusCode>(status.code());
}

// Bytes an answer's tensors take (what the answer budget reserves): o and lse, or dq, dk, dv.
int64_t AnswerBytes(const RequestSpec& spec) { return spec.answer_bytes(); }

// Whether `bytes` of `dtype` elements hold a NaN or an infinity.
bool AnyNotFinite(DType dtype, const std::string& bytes);

// Whether `bytes` bytes of `Lane` elements hold one whose exponent bits (`exponent`) are all ones:
// a NaN or an infinity. 64 bytes per step in four 16-byte vectors (GCC / Clang vector extensions,
// SSE2 or NEON), so the scan runs at memory speed instead of one compare per element.
template <typename Lane>
bool AnyExponentAllOnes(const char* data, size_t bytes, Lane exponent) {
  typedef Lane Vec __attribute__((vector_size(16)));
  typedef decltype(Vec{} == Vec{}) Mask;
  const Vec ones = exponent - Vec{};
  Mask found = {};
  size_t i = 0;
  for (; i + 4 * sizeof(Vec) <= bytes; i += 4 * sizeof(Vec)) {
    Vec v[4];
    std::memcpy(v, data + i, sizeof(v));
    found |= ((v[0] & ones) == ones) | ((v[1] & ones) == ones) | ((v[2] & ones) == ones) |
             ((v[3] & ones) == ones);
  }
  for (size_t lane = 0; lane < sizeof(Vec) / sizeof(Lane); ++lane) {
    if (found[lane] != 0) return true;
  }
  for (; i + sizeof(Lane) <= bytes; i += sizeof(Lane)) {
    Lane element;
    std::memcpy(&element, data + i, sizeof(Lane));
    if ((element & exponent) == exponent) return true;
  }
  return false;
}

bool AnyNotFinite(DType dtype, const std::string& bytes) {
  return dtype == DType::kFloat32
             ? AnyExponentAllOnes<uint32_t>(bytes.data(), bytes.size(), 0x7f800000u)
         : dtype == DType::kFloat16
             ? AnyExponentAllOnes<uint16_t>(bytes.data(), bytes.size(), 0x7c00u)
             : AnyExponentAllOnes<uint16_t>(bytes.data(), bytes.size(), 0x7f80u);
}

// o (and lse when asked) of a forward job.
void WriteForwardOutputs(Job& job, Response* response);

// `out` = `data` (moved) with `header`'s dtype and shape.
void SetTensor(const v1::Tensor& header, std::string* data, v1::Tensor* out) {
  out->set_dtype(header.dtype());
  out->mutable_shape()->CopyFrom(header.shape());
  out->mutable_data()->swap(*data);
}

}  // namespace

void WriteAnswer(Job& job, Response* response) {
  const RequestSpec& s = job.spec;
  if (s.kind == WorkKind::kBackward) {
    // dq in q's dtype and shape; dk and dv in k's (v's shape equals k's).
    SetTensor(job.request->q(), &job.outputs.dq, response->mutable_dq());
    SetTensor(job.request->k(), &job.outputs.dk, response->mutable_dk());
    SetTensor(job.request->v(), &job.outputs.dv, response->mutable_dv());
  } else {
    WriteForwardOutputs(job, response);
  }
  response->set_precision(ContractPrecision(job.result.precision));
  const JobResult& r = job.result;
  v1::Timings* timings = response->mutable_timings();
  timings->set_queue_ns(r.queue_ns);
  timings->set_transfer_ns(r.transfer_ns);
  timings->set_kernel_ns(r.kernel_ns);
  v1::BatchInfo* info = response->mutable_batch();
  info->set_batch_id(r.batch_id);
  info->set_requests(r.requests);
  info->set_sequences(r.sequences);
  info->set_tokens_q(r.tokens_q);
  info->set_tokens_k(r.tokens_k);
  info->set_device(r.device);
}

namespace {

void WriteForwardOutputs(Job& job, Response* response) {
  const RequestSpec& s = job.spec;
  v1::Tensor* o = response->mutable_o();
  o->set_dtype(ContractDType(OutputDType(s.dtype)));  // q's, but BFLOAT16 for FLOAT8_E4M3
  o->mutable_shape()->CopyFrom(job.q_header->shape());
  o->mutable_data()->swap(job.outputs.o);
  if (s.return_lse) {
    v1::Tensor* lse = response->mutable_lse();
    lse->set_dtype(v1::FLOAT32);
    auto* shape = lse->mutable_shape();
    shape->Clear();
    if (s.packed) {
      shape->Add(s.q_heads);
      shape->Add(s.total_q);
    } else {
      shape->Add(s.batch);
      shape->Add(s.q_heads);
      shape->Add(s.seqlen_q);
    }
    lse->mutable_data()->swap(job.outputs.lse);
  }
}

}  // namespace

absl::Status CheckFinite(const Job& job) {
  const RequestSpec& s = job.spec;
  if (s.kind == WorkKind::kBackward) {
    const JobOutputs& out = job.outputs;
    const char* bad = AnyNotFinite(s.dtype, out.dq)   ? "dq"
                      : AnyNotFinite(s.dtype, out.dk) ? "dk"
                      : AnyNotFinite(s.dtype, out.dv) ? "dv"
                                                      : nullptr;
    if (bad == nullptr) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(
        bad,
        ": the result is not finite: float32 overflowed on these inputs (q, k, v, o or grad_o "
        "values too large or not finite, or an lse that is not the forward's; attention.proto, "
        "\"Values\"), so it is not answered"));
  }
  const bool o_bad = AnyNotFinite(OutputDType(s.dtype), job.outputs.o);
  bool lse_bad = false;
  const std::string& lse = job.outputs.lse;
  for (size_t i = 0; !lse_bad && i + 4 <= lse.size(); i += 4) {
    float value;
    std::memcpy(&value, lse.data() + i, 4);
    lse_bad = !(value < std::numeric_limits<float>::infinity());  // NaN or +inf
  }
  if (!o_bad && !lse_bad) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      o_bad ? "o" : "lse",
      ": the result is not finite: float32 overflowed on these inputs (q, k and v values of "
      "magnitude above 2^48, or not finite, FLOAT8_E4M3 NaN codes included; attention.proto, "
      "\"Values\"), so it is not answered"));
}

namespace {

// What StartJob reserved and why it refused.
struct JobStart {
  // Bytes reserved in the answer budget (0 when nothing was): the caller gives them back once
  // the answer has been handed to the transport (or failed).
  int64_t reserved_answer_bytes = 0;
  // The request was refused because the answer budget is full (RESOURCE_EXHAUSTED).
  bool answer_budget_full = false;
};

// Validates `received`, reserves its answer's bytes and queues it as a job answered through
// `completion`. On an error nothing was queued or reserved and the caller answers with the
// status. `start` is written before the job is queued (once queued, the job may be answered and
// the caller's object deleted before this returns).
absl::Status StartJob(AttentionServiceImpl& service, const ReceivedRequest& received,
                      JobCompletion* completion, Clock::time_point accepted,
                      Clock::time_point deadline, const std::atomic<bool>* cancelled,
                      JobStart* start) {
  const Request& request = received.message;
  absl::StatusOr<RequestSpec> spec =
      ValidateRequest(request, service.options().limits, &received.data);
  if (!spec.ok()) {
    if (service.metrics() != nullptr) {
      service.metrics()->RequestRejected(absl::IsResourceExhausted(spec.status()) ? "too_large"
                                                                                  : "invalid");
    }
    LogLine(LogLevel::kDebug, "request_invalid")
        .Kv("request_id", request.request_id())
        .Kv("error", spec.status().message());
    return spec.status();
  }
  const int64_t answer_bytes = AnswerBytes(*spec);
  if (!service.answer_budget().Reserve(answer_bytes)) {
    const int64_t limit = service.answer_budget().limit();
    if (service.metrics() != nullptr) {
      service.metrics()->RequestRejected(answer_bytes > limit ? "too_large" : "answer_budget");
    }
    start->answer_budget_full = answer_bytes <= limit;
    return absl::ResourceExhaustedError(absl::StrCat(
        "answers waiting to be sent hold ", service.answer_budget().pending(),
        " bytes; this one's o and lse (", answer_bytes, " bytes) would pass the bound of ", limit,
        " bytes (--max_pending_answer_bytes): read the answers of your streams, retry later"));
  }
  start->reserved_answer_bytes = answer_bytes;
  auto job = std::make_unique<Job>();
  job->request = &request;
  job->q_header = &request.q();
  job->spec = std::move(*spec);
  job->completion = completion;
  job->accepted = accepted;
  job->deadline = deadline;
  job->cancelled = cancelled;
  absl::Status status = service.batcher()->Enqueue(job);
  if (!status.ok()) {
    // Refused: the job is still here and the caller's object alive.
    service.answer_budget().Release(answer_bytes);
    start->reserved_answer_bytes = 0;
  }
  return status;
}

// One unary call. Deletes itself in OnDone, which gRPC calls after Finish, so the request and
// response outlive the job.
class UnaryCall final : public grpc::ServerUnaryReactor, public JobCompletion {
 public:
  // `method`: kAttention (a forward request; backward = true is refused) or kAttentionBackward
  // (every request is a backward one).
  UnaryCall(AttentionServiceImpl* service, grpc::CallbackServerContext* context,
            const grpc::ByteBuffer* request_wire, grpc::ByteBuffer* response_wire, Method method)
      : service_(service),
        method_(method),
        response_wire_(response_wire),
        request_bytes_(static_cast<int64_t>(request_wire->Length())),
        accepted_(Clock::now()),
        deadline_(SteadyDeadline(context, accepted_)) {
    service_->CallStarted();
    if (service_->metrics() != nullptr) service_->metrics()->AddInFlight(1);
    // gRPC allocated the request buffer for this call and only reads it back to destroy it.
    absl::Status status = ParseRequest(const_cast<grpc::ByteBuffer*>(request_wire), &request_);
    if (status.ok()) status = SetKind();
    if (status.ok()) {
      status = StartJob(*service_, request_, this, accepted_, deadline_, &cancelled_, &start_);
    }
    // Once the job is queued another thread may answer it (and this object be deleted): nothing
    // after this point touches `this` unless the job was refused.
    if (!status.ok()) Answer(status);
  }

  void Complete(std::unique_ptr<Job> job, const absl::Status& status) override {
    absl::Status answer = status.ok() ? CheckFinite(*job) : status;
    if (answer.ok()) WriteAnswer(*job, &response_);
    job.reset();
    Answer(answer);
  }

  void OnCancel() override {
    cancel_time_.Set();
    cancelled_.store(true, std::memory_order_relaxed);
    service_->batcher()->NotifyCancelled();
  }

  void OnDone() override {
    AttentionServiceImpl* service = service_;
    // gRPC has sent the answer (or given up on it): its bytes leave the budget.
    service->answer_budget().Release(start_.reserved_answer_bytes);
    delete this;
    service->CallDone();
  }

 private:
  void Answer(const absl::Status& status) {
    int64_t response_bytes = 0;
    if (status.ok()) {
      response_.set_request_id(request_.message.request_id());
      response_.mutable_timings()->set_total_ns(NanosSince(accepted_));
      request_.Release();  // the inputs are no longer needed
      SerializeResponseWithoutCopy(&response_, response_wire_);
      response_bytes = static_cast<int64_t>(response_wire_->Length());
    }
    if (Metrics* metrics = service_->metrics(); metrics != nullptr) {
      const grpc::StatusCode seen = CodeSeenByClient(CodeOf(status), deadline_, cancel_time_.Get());
      metrics->RequestDone(method_, seen, SecondsSince(accepted_), request_bytes_,
                           seen == grpc::StatusCode::OK ? response_bytes : 0);
      metrics->AddInFlight(-1);
    }
    Finish(ToGrpc(status));
  }

  // The request's kind follows the RPC: AttentionBackward makes it a backward one, Attention
  // refuses one that says it is.
  absl::Status SetKind() {
    if (method_ == Method::kAttentionBackward) {
      request_.message.set_backward(true);
      return absl::OkStatus();
    }
    if (!request_.message.backward()) return absl::OkStatus();
    if (service_->metrics() != nullptr) service_->metrics()->RequestRejected("invalid");
    return absl::InvalidArgumentError(
        "backward: must be false on the Attention RPC; call AttentionBackward (or set it on "
        "AttentionStream) for the backward pass");
  }

  AttentionServiceImpl* const service_;
  const Method method_;
  grpc::ByteBuffer* const response_wire_;
  const int64_t request_bytes_;
  const Clock::time_point accepted_;
  const Clock::time_point deadline_;
  ReceivedRequest request_;
  Response response_;
  JobStart start_;
  CancelTime cancel_time_;
  std::atomic<bool> cancelled_{false};
};

class StreamItem;

}  // namespace

// One AttentionStream: StreamReactor's mechanics (server/stream_reactor.h) with an Item per
// request, answered by its job; an answer is counted (metrics, the answer budget) when it is
// written or dropped.
class StreamCall final : public StreamReactor<StreamCall, AttentionServiceImpl, StreamItem> {
 public:
  StreamCall(AttentionServiceImpl* service, grpc::CallbackServerContext* context)
      : StreamReactor(service, SteadyDeadline(context, Clock::now())) {
    Open();
  }

 private:
  friend class StreamReactor<StreamCall, AttentionServiceImpl, StreamItem>;

  static grpc::Status DrainingStatus() {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "server is draining: open the stream on another replica");
  }

  absl::Status Parse(StreamItem& item);

  // A message that is not an AttentionRequest: counted, invalid (the stream then ends with
  // INVALID_ARGUMENT once the answers in flight are written).
  void CountMalformed(const StreamItem& item);

  // A request read after the stream finished, never answered.
  void CountUnanswered(const StreamItem& item, grpc::StatusCode code);

  // What the client of this stream saw for an answer it will never get: the stream ended at its
  // deadline, or was cancelled (a failed write means the same: the client is gone).
  grpc::StatusCode DroppedCode() const {
    const Clock::time_point cancelled_at = cancel_time_.Get();
    // A failed write without a cancel (yet): the client went away now.
    return CodeSeenByClient(grpc::StatusCode::CANCELLED, deadline(),
                            cancelled_at != Clock::time_point{} ? cancelled_at : Clock::now());
  }

  // Queues the request as a job; a refused one is answered at once.
  void Start(std::unique_ptr<StreamItem> item);

  // The answer, result or error; it is counted when written (OnWriteDone), or now when the
  // stream will never write it (AnswerReady).
  void BuildAnswer(StreamItem& item, const absl::Status& status);

  // Under mu_.
  void AnswerReady(StreamItem& item, bool dropped) {
    if (dropped) AnswerLeft(item, DroppedCode());
  }

  // The answer's fate is known now: written (its code), or never to arrive (what the client saw
  // end its stream). Either way its bytes leave the answer budget. Under mu_.
  void WriteEnded(StreamItem& item, bool written);

  // o's data handed over as its own slice (response_wire.h).
  void SerializeAnswer(StreamItem& item);

  void Cancelled() { cancel_time_.Set(); }

  // An answer left the stream, written (`code` is then its own) or dropped: counted as what the
  // client saw, out of the in-flight gauge, and out of the answer budget. Under mu_.
  void AnswerLeft(StreamItem& item, grpc::StatusCode code);

  CancelTime cancel_time_;
};

namespace {

// One request of a stream: its request and response, and its own JobCompletion. Owned by its
// job while queued or running; comes back to the stream in ItemDone.
class StreamItem final : public JobCompletion {
 public:
  explicit StreamItem(StreamCall* call) : call(call) {}
  void Complete(std::unique_ptr<Job> job, const absl::Status& status) override {
    absl::Status answer = status.ok() ? CheckFinite(*job) : status;
    if (answer.ok()) WriteAnswer(*job, &response);
    job.reset();
    call->ItemDone(std::unique_ptr<StreamItem>(this), answer);
  }
  StreamCall* const call;
  grpc::ByteBuffer wire_in;   // the message as read, released once parsed
  grpc::ByteBuffer wire_out;  // the answer as written
  ReceivedRequest request;
  Response response;
  Clock::time_point accepted;
  int64_t request_bytes = 0;
  JobStart start;  // the answer budget's reservation (StartJob)
  // The answer, once BuildAnswer built it: its code and serialized size.
  grpc::StatusCode code = grpc::StatusCode::OK;
  int64_t response_bytes = 0;
};

}  // namespace

absl::Status StreamCall::Parse(StreamItem& item) {
  return ParseRequest(&item.wire_in, &item.request);
}

void StreamCall::CountMalformed(const StreamItem& item) {
  if (Metrics* metrics = service_->metrics(); metrics != nullptr) {
    metrics->RequestRejected("invalid");
    metrics->RequestDone(Method::kAttentionStream, grpc::StatusCode::INVALID_ARGUMENT,
                         SecondsSince(item.accepted), item.request_bytes, 0);
  }
}

void StreamCall::CountUnanswered(const StreamItem& item, grpc::StatusCode code) {
  if (Metrics* metrics = service_->metrics(); metrics != nullptr) {
    metrics->RequestDone(Method::kAttentionStream, code, SecondsSince(item.accepted),
                         item.request_bytes, 0);
  }
}

void StreamCall::Start(std::unique_ptr<StreamItem> item) {
  if (service_->metrics() != nullptr) service_->metrics()->AddInFlight(1);
  const absl::Status status = StartJob(*service_, item->request, item.get(), item->accepted,
                                       deadline(), cancelled_flag(), &item->start);
  if (status.ok()) {
    item.release();  // owned by its job until StreamItem::Complete (maybe already answered)
    return;
  }
  if (item->start.answer_budget_full) PauseForAnswerBudget();
  ItemDone(std::move(item), status);
}

void StreamCall::BuildAnswer(StreamItem& item, const absl::Status& status) {
  Response& response = item.response;
  if (status.ok()) {
    response.mutable_timings()->set_total_ns(NanosSince(item.accepted));
  } else {
    response.Clear();
    response.mutable_error()->set_code(static_cast<int32_t>(status.code()));
    response.mutable_error()->set_message(std::string(status.message()));
    // No o or lse will be sent: the reservation goes back now, not when the error is written.
    service_->answer_budget().Release(item.start.reserved_answer_bytes);
    item.start.reserved_answer_bytes = 0;
  }
  response.set_request_id(item.request.message.request_id());
  item.code = CodeOf(status);
  item.response_bytes = static_cast<int64_t>(response.ByteSizeLong());
  item.request.Release();  // the inputs are no longer needed
}

void StreamCall::WriteEnded(StreamItem& item, bool written) {
  AnswerLeft(item, written ? item.code : DroppedCode());
}

void StreamCall::SerializeAnswer(StreamItem& item) {
  SerializeResponseWithoutCopy(&item.response, &item.wire_out);
}

void StreamCall::AnswerLeft(StreamItem& item, grpc::StatusCode code) {
  if (Metrics* metrics = service_->metrics(); metrics != nullptr) {
    metrics->RequestDone(Method::kAttentionStream, code, SecondsSince(item.accepted),
                         item.request_bytes, code == item.code ? item.response_bytes : 0);
    metrics->AddInFlight(-1);
  }
  service_->answer_budget().Release(item.start.reserved_answer_bytes);
  item.start.reserved_answer_bytes = 0;
}

AttentionServiceImpl::AttentionServiceImpl(const ServiceOptions& options, Batcher* batcher,
                                           Metrics* metrics, AnswerBudget* answer_budget)
    : options_(options),
      batcher_(batcher),
      metrics_(metrics),
      own_budget_(answer_budget == nullptr
                      ? std::make_unique<AnswerBudget>(options.max_pending_answer_bytes)
                      : nullptr),
      answer_budget_(answer_budget != nullptr ? answer_budget : own_budget_.get()) {}

AttentionServiceImpl::~AttentionServiceImpl() = default;

grpc::ServerUnaryReactor* AttentionServiceImpl::Attention(grpc::CallbackServerContext* context,
                                                          const grpc::ByteBuffer* request,
                                                          grpc::ByteBuffer* response) {
  return new UnaryCall(this, context, request, response, Method::kAttention);
}

grpc::ServerUnaryReactor* AttentionServiceImpl::AttentionBackward(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return new UnaryCall(this, context, request, response, Method::kAttentionBackward);
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* AttentionServiceImpl::AttentionStream(
    grpc::CallbackServerContext* context) {
  return new StreamCall(this, context);
}

void AttentionServiceImpl::StartDrain() { DrainStreams(); }

}  // namespace attention::server
