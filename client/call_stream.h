// The client side of a bidirectional stream of calls answered by request_id, shared by
// StreamSession (AttentionStream, client/stream_session.cc) and the session client's
// SessionStreamConnection (SessionStream, client/session.cc); not installed.
#ifndef ATTENTION_CLIENT_CALL_STREAM_H_
#define ATTENTION_CLIENT_CALL_STREAM_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "client/internal.h"
#include "grpcpp/grpcpp.h"

namespace attention::client {

// Writes one request at a time from a queue (gRPC allows one outstanding write), keeps one read
// outstanding, and pairs answers with requests by request_id. `Queued` is what the queue holds
// for a request: the request itself, or a shared_ptr to it. A derived class binds the call to
// this reactor with its stub (`stub()->async()->Method(context(), this)`), then StartStream.
//
// Lifetime: a hold taken before StartCall keeps gRPC from calling OnDone while this side may
// still start a write from outside a reaction (Submit, Finish). The thread that owns the writer
// role (`writing_`) is the only one that starts writes, so the hold is released exactly once, by
// that role's owner or, when no write is under way, under the mutex: after StartWritesDone
// (Finish), after a failed write, or when the stream ended under us.
template <typename Stub, typename Request, typename Response, typename Queued>
class CallStream : public grpc::ClientBidiReactor<Request, Response> {
 public:
  using Callback = std::function<void(absl::StatusOr<Response>)>;

  // What the stream says in its errors.
  struct Words {
    const char* name;        // the stream's name: "stream session"
    const char* request;     // what it calls a request: "request"
    const char* unanswered;  // a request left unanswered by a stream that ended OK
  };

  CallStream(std::shared_ptr<Stub> stub, Words words) : stub_(std::move(stub)), words_(words) {}

  grpc::ClientContext* context() { return &context_; }

  // Queues `request` under the next request_id and starts writing it unless a write is under
  // way; once the stream takes no more requests, `done` runs at once with Refusal(closing).
  // Returns the request_id.
  uint64_t Submit(Queued request, Callback done) {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t id = next_id_++;
    if (closing_ || broken_) {
      const absl::Status refusal = Refusal(closing_);
      lock.unlock();
      done(refusal);
      return id;
    }
    RequestOf(request).set_request_id(id);
    pending_.emplace(id, Pending{std::move(done), false, std::nullopt});
    queue_.push_back(std::move(request));
    if (writing_) return id;
    writing_ = true;
    const Request* next = &RequestOf(queue_.front());
    lock.unlock();
    this->StartWrite(next);
    return id;
  }

  // Half-closes: no more requests; the stream ends once every answer arrived.
  void Finish() {
    std::unique_lock<std::mutex> lock(mu_);
    if (closing_) return;
    closing_ = true;
    if (writing_ || hold_released_) return;  // the writer role's owner ends the writes
    hold_released_ = true;
    lock.unlock();
    this->StartWritesDone();
    this->RemoveHold();
  }

  // Cancels the call (gRPC's TryCancel): what is pending fails CANCELLED.
  void Cancel() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled_ = true;
    }
    context_.TryCancel();
  }

  // Blocks until OnDone has run; the stream may be destroyed once this returns. Returns how the
  // stream ended.
  absl::Status Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [this] { return done_; });
    return final_status_;
  }

  // Whether OnDone has run (the stream may be destroyed).
  bool done() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }

  // Whether the stream still takes requests.
  bool usable() {
    std::lock_guard<std::mutex> lock(mu_);
    return !closing_ && !broken_;
  }

  int64_t in_flight() {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int64_t>(pending_.size());
  }

  void OnWriteDone(bool ok) override {
    std::optional<Completion> completion;
    const Request* next = nullptr;
    bool writes_done = false, release = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const uint64_t id = RequestOf(queue_.front()).request_id();
      queue_.pop_front();
      auto it = pending_.find(id);
      if (it != pending_.end()) {
        it->second.written = true;
        if (it->second.answer) completion = Take(it);
      }
      if (!ok || broken_) {
        broken_ = true;
        release = true;
      } else if (!queue_.empty()) {
        next = &RequestOf(queue_.front());
      } else if (closing_) {
        writes_done = release = true;
      } else {
        writing_ = false;
      }
      if (release) {
        writing_ = false;
        hold_released_ = true;
      }
    }
    if (completion) completion->Run();
    if (next != nullptr) this->StartWrite(next);
    if (writes_done) this->StartWritesDone();
    if (release) this->RemoveHold();
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      EndWrites();
      return;
    }
    std::optional<Completion> completion;
    bool unknown_id = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = pending_.find(response_.request_id());
      if (it == pending_.end()) {
        unknown_id = true;
        protocol_error_ = absl::InternalError(
            absl::StrCat(words_.name, ": the server answered request_id ", response_.request_id(),
                         " which has no ", words_.request, " waiting"));
      } else {
        absl::Status status = AnswerStatus(response_);
        if (status.ok()) {
          it->second.answer = std::move(response_);
        } else {
          it->second.answer = std::move(status);
        }
        if (it->second.written) completion = Take(it);
      }
    }
    if (completion) completion->Run();
    if (unknown_id) {
      Cancel();
      EndWrites();
      return;
    }
    response_.Clear();
    this->StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    std::vector<Completion> failed;
    std::unique_lock<std::mutex> lock(mu_);
    // No more requests (a read is outstanding until the stream ends, so OnReadDone(false) has
    // said so already).
    broken_ = true;
    final_status_ = protocol_error_.ok() ? FromGrpcStatus(status) : protocol_error_;
    if (final_status_.code() == absl::StatusCode::kCancelled && !cancelled_) {
      // Not this side's cancel: the server cancelled the stream (a shutdown's last step, or the
      // server went away), which for the calls still pending means what UNAVAILABLE means:
      // retry, on another replica.
      final_status_ = absl::UnavailableError(
          absl::StrCat(words_.name, " ended by the server (", final_status_.message(),
                       "): the server is shutting down or went away; retry on another replica"));
    }
    const absl::Status leftover =
        final_status_.ok() ? absl::InternalError(words_.unanswered) : final_status_;
    for (auto& [id, pending] : pending_) {
      failed.push_back(Completion{std::move(pending.done), pending.answer.value_or(leftover)});
    }
    pending_.clear();
    queue_.clear();
    lock.unlock();
    for (Completion& completion : failed) completion.Run();
    lock.lock();
    done_ = true;
    done_cv_.notify_all();
    // The owner may destroy this stream as soon as the mutex is released.
  }

 protected:
  Stub* stub() { return stub_.get(); }

  // Starts the call bound to this reactor, with its hold and the first read.
  void StartStream() {
    this->AddHold();
    this->StartRead(&response_);
    this->StartCall();
  }

  // What Submit answers once the stream takes no more requests: `closing` after Finish or
  // Cancel, else the stream has ended.
  virtual absl::Status Refusal(bool closing) const = 0;

 private:
  struct Pending {
    Callback done;
    // OnWriteDone ran: the callback may run (queue_ held the request until then).
    bool written;
    // An answer that arrived before OnWriteDone of its request.
    std::optional<absl::StatusOr<Response>> answer;
  };
  // A callback to run outside the mutex.
  struct Completion {
    Callback done;
    absl::StatusOr<Response> result;
    void Run() { done(std::move(result)); }
  };

  static Request& RequestOf(Request& request) { return request; }
  static Request& RequestOf(const std::shared_ptr<Request>& request) { return *request; }

  // The answer's error, or OK when it carries none (or code 0).
  static absl::Status AnswerStatus(const Response& response) {
    if (!response.has_error() || response.error().code() == 0) return absl::OkStatus();
    return absl::Status(static_cast<absl::StatusCode>(response.error().code()),
                        response.error().message());
  }

  // The stream is ending (no more reads): refuses further requests and releases the hold unless
  // a write is under way, whose OnWriteDone then releases it.
  void EndWrites() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      broken_ = true;
      if (writing_ || hold_released_) return;
      hold_released_ = true;
    }
    this->RemoveHold();
  }

  Completion Take(typename std::unordered_map<uint64_t, Pending>::iterator it) {
    Completion completion{std::move(it->second.done), std::move(*it->second.answer)};
    pending_.erase(it);
    return completion;
  }

  std::shared_ptr<Stub> stub_;
  grpc::ClientContext context_;
  Response response_;  // the outstanding read's target
  const Words words_;

  std::mutex mu_;
  std::condition_variable done_cv_;
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, Pending> pending_;
  // Not yet written; the front is being written while writing_. gRPC reads a message until its
  // OnWriteDone, so the queue owns it until then.
  std::deque<Queued> queue_;
  bool writing_ = false;
  bool closing_ = false;        // Finish (or Cancel) called: no more requests
  bool broken_ = false;         // a write or read failed: the stream is ending
  bool cancelled_ = false;      // this side cancelled the call (Cancel)
  bool hold_released_ = false;  // no write will be started any more
  bool done_ = false;           // OnDone ran
  absl::Status protocol_error_;
  absl::Status final_status_;
};

}  // namespace attention::client

#endif  // ATTENTION_CLIENT_CALL_STREAM_H_
