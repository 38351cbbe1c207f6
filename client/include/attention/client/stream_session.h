// One long-lived AttentionStream carrying many requests in flight. The server may answer out of
// order; the session pairs each answer with its request by request_id and completes that
// request's callback or future. A failed request (AttentionResponse.error) fails only that
// request; the stream stays open. When the stream itself ends, every request still waiting fails
// with the stream's status.
//
//   std::unique_ptr<StreamSession> session = client.OpenStream();
//   std::future<absl::StatusOr<v1::AttentionResponse>> a = session->Submit(std::move(req_a));
//   std::future<absl::StatusOr<v1::AttentionResponse>> b = session->Submit(std::move(req_b));
//   absl::Status stream_status = session->Finish();  // after a and b are complete
#ifndef ATTENTION_CLIENT_STREAM_SESSION_H_
#define ATTENTION_CLIENT_STREAM_SESSION_H_

#include <cstdint>
#include <future>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/client/client.h"
#include "attention/v1/attention.pb.h"

namespace attention::client {

// Thread-safe: any thread may Submit while answers arrive.
class StreamSession {
 public:
  // Cancels the stream unless Finish() returned (requests still waiting fail with CANCELLED) and
  // waits until gRPC has released it.
  ~StreamSession();
  StreamSession(const StreamSession&) = delete;
  StreamSession& operator=(const StreamSession&) = delete;

  // Queues `request` for sending and returns the request_id the session gave it (ids are unique
  // within the session; the caller's request_id is overwritten). `done` runs once, on a gRPC
  // thread or, for a request refused because the session is closed, on the caller's thread; it
  // runs after the request has been written, so the caller may then reuse `request`. Until then
  // the caller must not touch it. Requests are written in Submit order and never block the caller.
  uint64_t Submit(std::shared_ptr<::attention::v1::AttentionRequest> request,
                  AttentionCallback done);
  uint64_t Submit(::attention::v1::AttentionRequest request, AttentionCallback done);
  std::future<absl::StatusOr<::attention::v1::AttentionResponse>> Submit(
      ::attention::v1::AttentionRequest request);

  // Closes the sending side, waits for every answer and the end of the stream, and returns the
  // stream's final status. Later Submits fail with FAILED_PRECONDITION. Idempotent.
  absl::Status Finish();

  // Ends the stream now; waiting requests fail with CANCELLED. Finish() still waits for the end.
  void Cancel();

  // Requests submitted and not yet completed.
  int64_t in_flight() const;

 private:
  friend class Client;
  class Reactor;

  explicit StreamSession(const Client& client, const CallOptions& call);

  std::unique_ptr<Reactor> reactor_;
};

}  // namespace attention::client

#endif  // ATTENTION_CLIENT_STREAM_SESSION_H_
