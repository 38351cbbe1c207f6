// The AttentionService on gRPC's callback API. Reactions never block: a request is decoded,
// validated and queued on the batcher from the reaction that received it, and answered from the
// completion path (JobCompletion) on whichever thread finished it.
//
// Unary Attention and AttentionBackward: errors travel as the call's status; the response is only
// sent on OK. A backward request (AttentionRequest.backward, implied by AttentionBackward) is a job
// of kind kBackward, batched like a forward one, answered with dq, dk and dv.
// AttentionStream: any number of requests in flight on one stream, answered in completion order
// with their request_id; a request that fails is answered with AttentionResponse.error and the
// stream stays open. A message that is not an AttentionRequest at all (no request_id to answer
// it by) ends the stream with INVALID_ARGUMENT once the answers in flight are written. One Write is
// outstanding at a time, the rest wait in a queue. The stream ends with OK once the client
// half-closed and every answer was written; on a client cancel the remaining answers are dropped
// (queued jobs are dropped before launch) and it ends CANCELLED once no job refers to it any more.
// While draining, a stream ends with UNAVAILABLE as soon as its outstanding answers are written.
//
// Authentication happens before a call reaches the service, on its headers (server/auth.h,
// CallGate): a call without a known token never gets here and its message is never buffered.
//
// Answers waiting to be sent are memory the client controls (it may never read them): every
// accepted request reserves its answer's size (o and lse) against one budget for the whole server
// (ServiceOptions::max_pending_answer_bytes) until the answer has been handed to the transport.
// A request that does not fit is refused RESOURCE_EXHAUSTED (in-band on a stream, which then
// stops reading until one of its answers is written).
//
// Metrics count every answer under the code its client saw: a request whose caller's deadline
// passed counts DEADLINE_EXCEEDED and one whose caller cancelled counts CANCELLED, whatever the
// server answered meanwhile (gRPC drops that answer); a stream's answer counts when it is written
// (or dropped).
#ifndef ATTENTION_SERVER_SERVICE_H_
#define ATTENTION_SERVER_SERVICE_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>

#include "attention/v1/attention.grpc.pb.h"
#include "server/answer_budget.h"
#include "server/batcher.h"
#include "server/open_calls.h"
#include "server/validation.h"

namespace attention::server {

class Metrics;
class StreamCall;

// Writes a computed job's answer into `response`, the one place an answer is written from a job:
// o in q's dtype and shape, lse when asked (a backward job: dq in q's shape, dk and dv in k's),
// the precision it ran at, the timings and the batch it ran in. The job's output buffers move
// into the response (o is never copied here).
void WriteAnswer(Job& job, v1::AttentionResponse* response);

// INVALID_ARGUMENT when a computed job's o holds a NaN or an infinity, or its lse a NaN or +inf
// (-inf is a row with no allowed key): float32 overflowed on inputs beyond the contract's value
// bounds (server/validation.h, Values), or q, k or v held non-finite values. Such a result is
// never answered OK. One pass over o (8 bytes at a time) and lse; a backward job's dq, dk, dv.
absl::Status CheckFinite(const Job& job);

struct ServiceOptions {
  ValidationLimits limits;
  // Requests of one stream accepted and not yet written back; at this bound the stream stops
  // reading until answers drain (flow control for clients that send faster than they read).
  int max_stream_in_flight = 1024;
  // Bytes of o and lse of every accepted request whose answer has not yet been handed to the
  // transport, across all calls (--max_pending_answer_bytes); beyond it RESOURCE_EXHAUSTED.
  int64_t max_pending_answer_bytes = int64_t{1} << 30;
};

// Both methods are registered "raw" (grpc::ByteBuffer in and out): the service parses each
// message itself, so that bytes that are not an AttentionRequest are answered INVALID_ARGUMENT
// (gRPC 1.51's typed callback handlers answer UNIMPLEMENTED with no message on a unary call and
// end a stream as if the client had half-closed), and so that the wire bytes of a request are
// released as soon as it is parsed.
using AttentionServiceBase = v1::AttentionService::WithRawCallbackMethod_Attention<
    v1::AttentionService::WithRawCallbackMethod_AttentionStream<
        v1::AttentionService::WithRawCallbackMethod_AttentionBackward<
            v1::AttentionService::Service>>>;

class AttentionServiceImpl final : public AttentionServiceBase, public ServiceCalls<StreamCall> {
 public:
  // `batcher` outlives the service and the gRPC server it is registered on; `metrics` may be null.
  // `answer_budget` (shared with the session service; not owned) may be null: then the service
  // keeps its own of options.max_pending_answer_bytes.
  AttentionServiceImpl(const ServiceOptions& options, Batcher* batcher, Metrics* metrics,
                       AnswerBudget* answer_budget = nullptr);
  ~AttentionServiceImpl() override;

  grpc::ServerUnaryReactor* Attention(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* AttentionStream(
      grpc::CallbackServerContext* context) override;
  // The unary call of a backward request (as Attention, with every request a backward one).
  grpc::ServerUnaryReactor* AttentionBackward(grpc::CallbackServerContext* context,
                                              const grpc::ByteBuffer* request,
                                              grpc::ByteBuffer* response) override;

  // Draining: new requests are refused with UNAVAILABLE (by the batcher), and every open stream
  // ends with UNAVAILABLE once its outstanding answers are written. WaitForCalls, open_streams,
  // draining and the call objects' CallStarted, CallDone, Register, Unregister: ServiceCalls.
  void StartDrain();

  // The answer budget (see above).
  AnswerBudget& answer_budget() const { return *answer_budget_; }
  int64_t pending_answer_bytes() const { return answer_budget_->pending(); }

  // Shared by the call objects (service.cc).
  const ServiceOptions& options() const { return options_; }
  Batcher* batcher() const { return batcher_; }
  Metrics* metrics() const { return metrics_; }

 private:
  const ServiceOptions options_;
  Batcher* const batcher_;
  Metrics* const metrics_;
  const std::unique_ptr<AnswerBudget> own_budget_;
  AnswerBudget* const answer_budget_;
};

}  // namespace attention::server

#endif  // ATTENTION_SERVER_SERVICE_H_
