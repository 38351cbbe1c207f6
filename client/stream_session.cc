#include "attention/client/stream_session.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/internal.h"
#include "grpcpp/grpcpp.h"

namespace attention::client {

// Writes one request at a time from a queue (gRPC allows one outstanding write), keeps one read
// outstanding, and pairs answers with requests by request_id.
//
// Lifetime: a hold taken before StartCall keeps gRPC from calling OnDone while this side may
// still start a write from outside a reaction (Submit, Finish). The thread that owns the writer
// role (`writing_`) is the only one that starts writes, so the hold is released exactly once, by
// that role's owner or, when no write is under way, under the mutex: after StartWritesDone
// (Finish), after a failed write, or when the stream ended under us.
class StreamSession::Reactor
    : public grpc::ClientBidiReactor<v1::AttentionRequest, v1::AttentionResponse> {
 public:
  Reactor(const std::shared_ptr<v1::AttentionService::Stub>& stub) : stub_(stub) {}

  void Start() {
    stub_->async()->AttentionStream(&context_, this);
    AddHold();
    StartRead(&response_);
    StartCall();
  }

  grpc::ClientContext* context() { return &context_; }

  uint64_t Submit(std::shared_ptr<v1::AttentionRequest> request, AttentionCallback done) {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t id = next_id_++;
    if (closing_ || broken_) {
      const absl::Status refusal =
          closing_
              ? absl::FailedPreconditionError("stream session: Submit after Finish or Cancel")
              : absl::UnavailableError("stream session: the stream has ended; open a new session");
      lock.unlock();
      done(refusal);
      return id;
    }
    request->set_request_id(id);
    pending_.emplace(id, Pending{std::move(done), false, std::nullopt});
    queue_.push_back(std::move(request));
    if (writing_) return id;
    writing_ = true;
    const v1::AttentionRequest* next = queue_.front().get();
    lock.unlock();
    StartWrite(next);
    return id;
  }

  void Finish() {
    std::unique_lock<std::mutex> lock(mu_);
    if (closing_) return;
    closing_ = true;
    if (writing_ || hold_released_) return;  // the writer role's owner ends the writes
    hold_released_ = true;
    lock.unlock();
    StartWritesDone();
    RemoveHold();
  }

  absl::Status Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [this] { return done_; });
    return final_status_;
  }

  bool done() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }

  int64_t in_flight() {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int64_t>(pending_.size());
  }

  void OnWriteDone(bool ok) override {
    std::optional<Completion> completion;
    const v1::AttentionRequest* next = nullptr;
    bool writes_done = false, release = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const uint64_t id = queue_.front()->request_id();
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
        next = queue_.front().get();
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
    if (next != nullptr) StartWrite(next);
    if (writes_done) StartWritesDone();
    if (release) RemoveHold();
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
            absl::StrCat("stream session: the server answered request_id ", response_.request_id(),
                         " which has no request waiting"));
      } else {
        absl::Status status = ResponseStatus(response_);
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
      context_.TryCancel();
      EndWrites();
      return;
    }
    response_.Clear();
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    std::vector<Completion> failed;
    std::unique_lock<std::mutex> lock(mu_);
    final_status_ = protocol_error_.ok() ? FromGrpcStatus(status) : protocol_error_;
    const absl::Status leftover = final_status_.ok()
                                      ? absl::InternalError(
                                            "stream session: the stream ended without an "
                                            "answer to this request")
                                      : final_status_;
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
  }

 private:
  struct Pending {
    AttentionCallback done;
    // OnWriteDone ran: the callback may run (queue_ held the request until then).
    bool written;
    // An answer that arrived before OnWriteDone of its request.
    std::optional<absl::StatusOr<v1::AttentionResponse>> answer;
  };
  // A callback to run outside the mutex.
  struct Completion {
    AttentionCallback done;
    absl::StatusOr<v1::AttentionResponse> result;
    void Run() { done(std::move(result)); }
  };

  // The stream is ending (no more reads): refuses further Submits and releases the hold unless a
  // write is under way, whose OnWriteDone then releases it.
  void EndWrites() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      broken_ = true;
      if (writing_ || hold_released_) return;
      hold_released_ = true;
    }
    RemoveHold();
  }

  Completion Take(std::unordered_map<uint64_t, Pending>::iterator it) {
    Completion completion{std::move(it->second.done), std::move(*it->second.answer)};
    pending_.erase(it);
    return completion;
  }

  std::shared_ptr<v1::AttentionService::Stub> stub_;
  grpc::ClientContext context_;
  v1::AttentionResponse response_;  // the outstanding read's target

  std::mutex mu_;
  std::condition_variable done_cv_;
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, Pending> pending_;
  // Not yet written; the front is being written while writing_. gRPC reads a message until its
  // OnWriteDone, so the queue owns it until then.
  std::deque<std::shared_ptr<v1::AttentionRequest>> queue_;
  bool writing_ = false;
  bool closing_ = false;        // Finish or Cancel called: no more Submits
  bool broken_ = false;         // a write or read failed: the stream is ending
  bool hold_released_ = false;  // no write will be started any more
  bool done_ = false;           // OnDone ran
  absl::Status protocol_error_;
  absl::Status final_status_;
};

StreamSession::StreamSession(const Client& client, const CallOptions& call)
    : reactor_(std::make_unique<Reactor>(client.stub_)) {
  client.ConfigureContext(call, /*unary=*/false, reactor_->context());
  reactor_->Start();
}

StreamSession::~StreamSession() {
  if (!reactor_->done()) Cancel();
  reactor_->Wait().IgnoreError();
}

uint64_t StreamSession::Submit(std::shared_ptr<v1::AttentionRequest> request,
                               AttentionCallback done) {
  return reactor_->Submit(std::move(request), std::move(done));
}

uint64_t StreamSession::Submit(v1::AttentionRequest request, AttentionCallback done) {
  return Submit(std::make_shared<v1::AttentionRequest>(std::move(request)), std::move(done));
}

std::future<absl::StatusOr<v1::AttentionResponse>> StreamSession::Submit(
    v1::AttentionRequest request) {
  auto promise = std::make_shared<std::promise<absl::StatusOr<v1::AttentionResponse>>>();
  std::future<absl::StatusOr<v1::AttentionResponse>> future = promise->get_future();
  Submit(std::move(request), [promise](absl::StatusOr<v1::AttentionResponse> result) {
    promise->set_value(std::move(result));
  });
  return future;
}

absl::Status StreamSession::Finish() {
  reactor_->Finish();
  return reactor_->Wait();
}

void StreamSession::Cancel() {
  reactor_->Finish();
  reactor_->context()->TryCancel();
}

int64_t StreamSession::in_flight() const { return reactor_->in_flight(); }

}  // namespace attention::client
