// The mechanics both bidirectional streams share: AttentionStream's StreamCall (server/service.cc)
// and SessionStream's SessionStreamCall (server/session_service.cc). Each message read becomes an
// Item that is owned by its work (a job, or a session call) while it runs and comes back to the
// stream in ItemDone, which queues its answer for writing. The stream's rules (flow control, when
// it ends, with which status) are StreamState's (server/stream_state.h); StreamReactor holds it
// under mu_ and does what it decides: start reads and writes (one write outstanding at a time),
// finish. gRPC then calls OnDone, which deletes the stream.
//
// What differs between the two streams is the derived class's (CRTP: `Derived` befriends its
// StreamReactor and has these members):
//   static grpc::Status DrainingStatus();  // the UNAVAILABLE a draining stream finishes with
//   absl::Status Parse(Item&);             // the message read (wire_in) -> the item's request
//   void CountMalformed(const Item&);      // a message that did not parse ends the stream
//   void CountUnanswered(const Item&, grpc::StatusCode);  // Accept refused it: never answered
//   grpc::StatusCode DroppedCode() const;  // what the client saw end an answer never written
//   void Start(std::unique_ptr<Item>);     // an accepted item starts: owned by its work, or
//                                          // answered at once through ItemDone
//   void BuildAnswer(Item&, const absl::Status&);  // the answer (result or error), outside mu_
//   void AnswerReady(Item&, bool dropped); // under mu_: the answer is queued, or dropped (the
//                                          // stream will never write it)
//   void WriteEnded(Item&, bool written);  // under mu_: a queued answer was written, or dropped
//   void SerializeAnswer(Item&);           // into wire_out, before its write starts
//   void Cancelled();                      // first step of OnCancel
// `Item` has a constructor taking `Derived*` and the members wire_in, wire_out (the message as
// read, released once parsed; the answer as written), accepted and request_bytes. `Service` has
// batcher(), draining(), options().max_stream_in_flight, Register / Unregister(Derived*) and
// CallDone().
#ifndef ATTENTION_SERVER_STREAM_REACTOR_H_
#define ATTENTION_SERVER_STREAM_REACTOR_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "server/executor.h"
#include "server/step_trace.h"
#include "server/stream_state.h"

namespace attention::server {

template <typename Derived, typename Service, typename Item>
class StreamReactor : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  void OnReadDone(bool ok) override {
    if (!ok) {
      std::unique_lock<std::mutex> lock(mu_);
      state_.ReadsDone();
      MaybeFinish(lock);
      return;
    }
    step_trace::Begin();
    std::unique_ptr<Item> item = std::move(next_);
    item->accepted = Clock::now();
    item->request_bytes = static_cast<int64_t>(item->wire_in.Length());
    ++messages_read_;
    step_trace::Stamp(step_trace::kParseBegins);
    if (absl::Status parsed = derived().Parse(*item); !parsed.ok()) {
      derived().CountMalformed(*item);
      RefuseMalformed(parsed);
      return;
    }
    step_trace::Stamp(step_trace::kParsed);
    if (!Accept(*item)) return;
    derived().Start(std::move(item));
    std::unique_lock<std::mutex> lock(mu_);
    if (state_.ShouldReadNext()) ReadNext(lock);
  }

  void OnWriteDone(bool ok) override {
    step_trace::StampWriteDone();
    std::unique_ptr<Item> written;
    std::deque<std::unique_ptr<Item>> dropped;
    std::unique_lock<std::mutex> lock(mu_);
    written = std::move(write_queue_.front());
    write_queue_.pop_front();
    // A failed write: the client is gone, the answers still queued are dropped.
    if (!ok) dropped.swap(write_queue_);
    // The answer's fate is known now: written, or never to arrive.
    derived().WriteEnded(*written, ok);
    for (const auto& item : dropped) derived().WriteEnded(*item, false);
    const bool resume_reading = state_.AnswerWritten(ok, static_cast<int>(dropped.size()));
    state_.SetWriting(!write_queue_.empty());
    // The front item stays queued (and alive) until its own OnWriteDone.
    Item* next = state_.writing() ? write_queue_.front().get() : nullptr;
    if (resume_reading) {
      ReadNext(lock);
      lock.lock();
    }
    if (next != nullptr) {
      lock.unlock();
      Write(next);
      return;
    }
    // The items (their buffers) are freed on return, outside mu_ and possibly after the stream
    // finished: they do not refer to it.
    MaybeFinish(lock);
  }

  void OnCancel() override {
    derived().Cancelled();
    state_.Cancel();
    service_->batcher()->NotifyCancelled();
    std::unique_lock<std::mutex> lock(mu_);
    MaybeFinish(lock);
  }

  void OnDone() override {
    Service* service = service_;
    service->Unregister(&derived());
    delete &derived();
    service->CallDone();
  }

  // The server is draining: end the stream once its outstanding answers are written.
  void Drain() {
    std::unique_lock<std::mutex> lock(mu_);
    state_.Drain();
    MaybeFinish(lock);
  }

  // Answers `item` (result or error, from its work or from Start) by queueing its answer for
  // writing, or drops it when the stream will never write it.
  void ItemDone(std::unique_ptr<Item> item, const absl::Status& status) {
    const int64_t traced = step_trace::Generation();
    derived().BuildAnswer(*item, status);
    step_trace::Stamp(step_trace::kAnswerBuilt);
    std::unique_lock<std::mutex> lock(mu_);
    const bool dropped = state_.answers_dropped();
    derived().AnswerReady(*item, dropped);
    if (dropped) {
      // Decided under this hold, and nothing after it touches `this`: once the answer is
      // counted out and mu_ is released, another completion (the batcher dropping a queued
      // item, the executor answering one) may finish the stream and gRPC delete it. The item
      // (its buffers) is freed on return, outside mu_; it does not refer to the stream.
      state_.AnswerDropped();
      MaybeFinish(lock);
      return;
    }
    write_queue_.push_back(std::move(item));
    if (!state_.StartWriting()) return;
    Item* next = write_queue_.front().get();
    lock.unlock();
    Write(next);
    step_trace::StampOf(traced, step_trace::kWriteStarted);
  }

 protected:
  StreamReactor(Service* service, Clock::time_point deadline)
      : service_(service), deadline_(deadline), state_(service->options().max_stream_in_flight) {}

  // Registers the stream with its service and starts reading, or finishes it at once while the
  // server drains. The derived constructor's last step.
  void Open() {
    service_->Register(&derived());
    if (!service_->draining()) {
      next_ = std::make_unique<Item>(&derived());
      StartRead(&next_->wire_in);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      // StartDrain may have finished this stream already (Register made it visible): one Finish.
      state_.Drain();
      if (!state_.FinishAtOpen()) return;
    }
    Finish(Derived::DrainingStatus());
  }

  // A request was refused because the answers waiting to be sent are at the server's bound:
  // the stream reads on once one of its answers is written.
  void PauseForAnswerBudget() {
    std::lock_guard<std::mutex> lock(mu_);
    state_.PauseForAnswerBudget();
  }

  // The flag this stream's work watches (Job::cancelled); valid as long as the stream.
  const std::atomic<bool>* cancelled_flag() const { return state_.cancelled_flag(); }
  Clock::time_point deadline() const { return deadline_; }

  Service* const service_;

 private:
  Derived& derived() { return static_cast<Derived&>(*this); }

  // A message that is not the stream's request: the stream's framing is broken, the request
  // cannot be answered by its request_id, so the stream ends with INVALID_ARGUMENT once the
  // answers in flight are written.
  void RefuseMalformed(const absl::Status& parsed) {
    std::unique_lock<std::mutex> lock(mu_);
    state_.Malformed(
        absl::StrCat("message ", messages_read_, " of this stream: ", parsed.message()));
    MaybeFinish(lock);
  }

  // Counts a parsed request in flight; false when the stream already finished (cancelled,
  // draining, a failed write) while it was being read, which MaybeFinish allows since nothing was
  // in flight then. It can no longer be answered, and work started now would outlive the stream
  // (gRPC deletes it once this callback returns) and reach it through the cancel flag and the
  // item's stream pointer.
  bool Accept(const Item& item) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!state_.finished()) {
      state_.RequestAccepted();
      return true;
    }
    const grpc::StatusCode code =
        state_.answers_dropped() ? derived().DroppedCode() : grpc::StatusCode::UNAVAILABLE;
    lock.unlock();
    derived().CountUnanswered(item, code);
    return false;
  }

  // Starts writing `item`'s answer (one write outstanding at a time).
  void Write(Item* item) {
    derived().SerializeAnswer(*item);
    StartWrite(&item->wire_out);
  }

  // Starts the next read; unlocks `lock`.
  void ReadNext(std::unique_lock<std::mutex>& lock) {
    next_ = std::make_unique<Item>(&derived());
    grpc::ByteBuffer* wire = &next_->wire_in;
    lock.unlock();
    StartRead(wire);
  }

  // Finishes the stream if nothing is left to do; unlocks `lock`.
  void MaybeFinish(std::unique_lock<std::mutex>& lock) {
    if (!state_.TryFinish()) return;
    grpc::Status status = state_.FinishStatus();
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE) status = Derived::DrainingStatus();
    lock.unlock();
    Finish(status);
  }

  const Clock::time_point deadline_;
  // The item the outstanding read fills (touched only by the reading path).
  std::unique_ptr<Item> next_;
  int64_t messages_read_ = 0;  // reading path only

  std::mutex mu_;
  StreamState state_;                              // under mu_ (its cancel flag is atomic)
  std::deque<std::unique_ptr<Item>> write_queue_;  // front() is being written while writing
};

}  // namespace attention::server

#endif  // ATTENTION_SERVER_STREAM_REACTOR_H_
