// Prometheus metrics of the K/V sessions (issue 20): the store's occupancy and events, polled
// from SessionStore::counters(), and the SessionService's calls by operation. Registered on the
// same registry as Metrics (metrics.h), under the prefix `attention_session`; docs/metrics.md
// lists them.
//
//   attention_sessions_live                        gauge     sessions alive (forks included)
//   attention_session_pages{device,state}          gauge     pages of each pool, state used|free
//   attention_session_kv_bytes{device}             gauge     bytes of K/V the pool's pages hold
//   attention_session_pool_bytes{device}           gauge     the pool's size (pages x page bytes)
//   attention_sessions_created_total{how}          counter   how = create|fork
//   attention_sessions_ended_total{reason}         counter   reason = released|evicted|expired
//   attention_session_cow_copies_total             counter   shared partial pages copied
//   attention_session_list_copies_total            counter   page lists copied (views held late)
//   attention_session_calls_total{op,code}         counter   answered calls, unary and stream
//   attention_session_call_seconds{op}             histogram arrival to answer, server side
//   attention_session_received_bytes_total{op}     counter   call messages' bytes
//   attention_session_sent_bytes_total{op}         counter   answers' bytes
//
// op = create|append|attend|fork|truncate|release|get. Every series exists from the start at
// zero. Thread-safe.
#ifndef ATTENTION_SERVER_METRICS_SESSION_METRICS_H_
#define ATTENTION_SERVER_METRICS_SESSION_METRICS_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "grpcpp/support/status_code_enum.h"
#include "server/session/session_store.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace attention::server {

// The session RPCs, as the `op` label.
enum class SessionOp { kCreate, kAppend, kAttend, kFork, kTruncate, kRelease, kGet };
inline constexpr int kNumSessionOps = 7;

// "create", "append", "attend", "fork", "truncate", "release", "get".
std::string_view SessionOpLabel(SessionOp op);

class SessionMetrics {
 public:
  // `pool_devices`: the `device` label of each pool of the store, in pool order ("cpu", or
  // "cuda:N" for a GPU's pool).
  SessionMetrics(std::shared_ptr<prometheus::Registry> registry,
                 std::vector<std::string> pool_devices);
  // Stops polling.
  ~SessionMetrics();
  SessionMetrics(const SessionMetrics&) = delete;
  SessionMetrics& operator=(const SessionMetrics&) = delete;

  // One answered call (result or error), from its arrival to its answer.
  void CallDone(SessionOp op, grpc::StatusCode code, double seconds, int64_t request_bytes,
                int64_t response_bytes);

  // Sets the gauges from `counters` and advances each counter by what it grew since the last
  // Update (the store's counts are since its start).
  void Update(const session::StoreCounters& counters);

  // Calls Update(store->counters()) now and then every `interval` on a thread of its own until
  // StopPolling or destruction. `store` must outlive the polling.
  void StartPolling(const session::SessionStore* store, std::chrono::milliseconds interval);
  void StopPolling();

 private:
  struct Families;
  std::unique_ptr<Families> families_;

  std::mutex mu_;  // Update's previous counts; the polling thread's stop flag
  session::StoreCounters last_;
  std::condition_variable stop_cv_;
  bool stop_ = false;
  std::thread poller_;
};

}  // namespace attention::server

#endif  // ATTENTION_SERVER_METRICS_SESSION_METRICS_H_
