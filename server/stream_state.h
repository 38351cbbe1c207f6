// The bookkeeping of one stream (AttentionStream's StreamCall, SessionStream's
// SessionStreamCall), apart from gRPC so that its rules are tested on their own
// (tests/server/stream_state_test.cc). StreamReactor (server/stream_reactor.h) holds it under its
// mutex and performs what it decides: read the next request, write the next answer, finish the
// stream with a status.
//
// The rules:
//   - reading stops at max_in_flight requests read and not yet written (flow control), and
//     resumes as answers are written;
//   - reading also stops when a request was refused because the server's answers waiting to be
//     sent are at their global bound (--max_pending_answer_bytes), and resumes when one of this
//     stream's answers is written: a client that does not read its answers is not read either;
//   - no more requests are read once the client half-closed, the server drains, a write failed,
//     a message was malformed, or the call was cancelled ("ending");
//   - the stream finishes once it is ending, nothing is in flight and nothing is being written,
//     exactly once, with CANCELLED (cancel or failed write), INVALID_ARGUMENT (a malformed
//     message), UNAVAILABLE (draining before the client half-closed) or OK.
#ifndef ATTENTION_SERVER_STREAM_STATE_H_
#define ATTENTION_SERVER_STREAM_STATE_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <utility>

#include "grpcpp/support/status.h"

namespace attention::server {

class StreamState {
 public:
  explicit StreamState(int max_in_flight) : max_in_flight_(max_in_flight) {}

  // A request was read and accepted for an answer (queued, or answered at once).
  void RequestAccepted() { ++in_flight_; }
  // After a read was handled: true when the next read should start now, false when reading
  // pauses (flow control, the answer budget, or ending); a paused stream resumes in
  // AnswerWritten.
  bool ShouldReadNext();
  // A request of this stream was refused because the answers waiting to be sent are at the
  // server's bound: reading pauses until one of this stream's answers is written.
  void PauseForAnswerBudget() { budget_paused_ = true; }
  bool budget_paused() const { return budget_paused_; }
  // An answer was dropped instead of written (the client is gone).
  void AnswerDropped() { --in_flight_; }
  // An answer is queued for writing: true when the caller must start writing it (no write was
  // outstanding).
  bool StartWriting();
  // The outstanding write finished: `ok` false when the client is gone (then `dropped_queued`
  // answers still queued are dropped too). Returns true when a paused read should resume now.
  bool AnswerWritten(bool ok, int dropped_queued);
  // Whether another write follows the one that finished (the queue is not empty).
  void SetWriting(bool writing) { writing_ = writing; }
  bool draining() const { return draining_; }

  void ReadsDone() { reads_done_ = true; }
  void Drain() { draining_ = true; }
  // The client cancelled; may be called without the caller's mutex (jobs read the flag).
  void Cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }
  // The flag jobs of this stream watch (Job::cancelled); valid as long as the state.
  const std::atomic<bool>* cancelled_flag() const { return &cancelled_; }
  // A message that is not an AttentionRequest: the stream ends INVALID_ARGUMENT with `why`.
  void Malformed(std::string why) { malformed_ = std::move(why); }

  // Answers of this stream will never be written (cancelled, or a write failed).
  bool answers_dropped() const { return cancelled() || write_failed_; }
  bool write_failed() const { return write_failed_; }
  // No more requests will be read.
  bool Ending() const {
    return reads_done_ || draining_ || write_failed_ || !malformed_.empty() || cancelled();
  }
  // Marks the stream finished and returns true when it may finish now (at most once).
  bool TryFinish();
  // Marks the stream finished whatever is in flight (it never started: refused at open).
  bool FinishAtOpen();
  bool finished() const { return finished_; }
  // The status the stream finishes with (call after TryFinish returned true).
  grpc::Status FinishStatus() const;

  int in_flight() const { return in_flight_; }
  bool writing() const { return writing_; }

 private:
  const int max_in_flight_;
  int in_flight_ = 0;           // requests read and not yet written (or dropped)
  bool writing_ = false;        // a write is outstanding
  bool read_paused_ = false;    // no read outstanding because of max_in_flight or the budget
  bool budget_paused_ = false;  // a request was refused for the answer budget
  bool reads_done_ = false;     // the client half-closed (or the stream broke)
  bool draining_ = false;
  std::atomic<bool> cancelled_{false};
  bool write_failed_ = false;
  bool finished_ = false;
  std::string malformed_;  // why the stream ends INVALID_ARGUMENT, empty if it does not
};

}  // namespace attention::server

#endif  // ATTENTION_SERVER_STREAM_STATE_H_
