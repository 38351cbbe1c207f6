// The calls a service has open, for its drain (both services use one): every call object counts
// itself when it is created and again in OnDone, and a stream also registers itself, so that a
// drain can reach every open stream and then wait until no call is left.
#ifndef ATTENTION_SERVER_OPEN_CALLS_H_
#define ATTENTION_SERVER_OPEN_CALLS_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

#include "absl/container/flat_hash_set.h"

namespace attention::server {

template <typename Stream>
class OpenCalls {
 public:
  // A unary call (or any call that is not registered) starts and ends.
  void Started() {
    std::lock_guard<std::mutex> lock(mu_);
    ++calls_;
  }
  void Done() {
    std::lock_guard<std::mutex> lock(mu_);
    last_done_ = std::chrono::steady_clock::now();
    if (--calls_ == 0) none_open_.notify_all();
  }
  // A stream starts (counted as a call) and, in its OnDone, leaves; Done() follows Unregister.
  void Register(Stream* stream) {
    std::lock_guard<std::mutex> lock(mu_);
    ++calls_;
    streams_.insert(stream);
  }
  void Unregister(Stream* stream) {
    std::lock_guard<std::mutex> lock(mu_);
    streams_.erase(stream);
  }
  // Runs fn(stream) for every open stream, under the lock (fn must not call back into this).
  template <typename Fn>
  void ForEachStream(Fn fn) {
    std::lock_guard<std::mutex> lock(mu_);
    for (Stream* stream : streams_) fn(stream);
  }
  // Waits until no call is open or `deadline`; true if none is.
  bool WaitForNone(std::chrono::steady_clock::time_point deadline) {
    std::unique_lock<std::mutex> lock(mu_);
    return none_open_.wait_until(lock, deadline, [this] { return calls_ == 0; });
  }
  int streams() const {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int>(streams_.size());
  }
  // When the last call ended (its answer written); the epoch if none has.
  std::chrono::steady_clock::time_point last_done() const {
    std::lock_guard<std::mutex> lock(mu_);
    return last_done_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable none_open_;
  int64_t calls_ = 0;  // open calls, unary and stream
  std::chrono::steady_clock::time_point last_done_{};
  absl::flat_hash_set<Stream*> streams_;
};

// What a service with streams keeps for its drain (both services derive from it): whether it
// drains, and its open calls. The call objects report themselves: CallStarted / CallDone (a unary
// call), Register / Unregister then CallDone (a stream, in its OnDone).
template <typename Stream>
class ServiceCalls {
 public:
  bool draining() const { return draining_.load(std::memory_order_acquire); }

  // Waits until no call is open (every answer written, every stream finished) or `deadline`;
  // true if none is. Used by the drain before the gRPC server shuts down, so that shutting down
  // cancels nothing.
  bool WaitForCalls(std::chrono::steady_clock::time_point deadline) {
    return open_.WaitForNone(deadline);
  }

  // Streams currently open (tests).
  int open_streams() const { return open_.streams(); }

  // When the last call ended (the drain's client linger counts from it).
  std::chrono::steady_clock::time_point LastCallDone() const { return open_.last_done(); }

  void CallStarted() { open_.Started(); }
  void CallDone() { open_.Done(); }
  void Register(Stream* stream) { open_.Register(stream); }
  void Unregister(Stream* stream) { open_.Unregister(stream); }

 protected:
  // Draining from now on: every open stream ends once its outstanding answers are written
  // (Stream::Drain). Call where Stream is complete (the service's StartDrain).
  void DrainStreams() {
    draining_.store(true, std::memory_order_release);
    open_.ForEachStream([](Stream* stream) { stream->Drain(); });
  }

 private:
  std::atomic<bool> draining_{false};
  OpenCalls<Stream> open_;
};

}  // namespace attention::server

#endif  // ATTENTION_SERVER_OPEN_CALLS_H_
