// The drain sequence of a SIGTERM (or a fatal device error), as one function over an interface so
// that its order is tested (tests/server/drain_test.cc) apart from a real server.
//
// The order, and why:
//   1. health NOT_SERVING, new calls refused (UNAVAILABLE) and streams told to end, new jobs
//      refused: anyone who sees the "draining" log line finds all three already in force;
//   2. the queue drains: everything queued is launched (until the drain deadline);
//   3. the batcher shuts down: what is still queued is answered UNAVAILABLE, and the batches on
//      the devices get until the deadline plus a grace period to finish. One that never finishes
//      still points into its calls, so nothing may be torn down: the drain reports `stuck`;
//   4. every call ends (answers written, streams finished), until the deadline;
//   5. once they all have, the connections stay open for kClientLinger after the last answer
//      (never past the deadline): an answer counts as written once it is in the socket, and a
//      process that exits while a client's frames (window updates, pings) arrive makes the kernel
//      reset the connection, which discards what that client had not read yet: its answer;
//   6. the gRPC server shuts down (cancelling only what is left at the deadline), then the
//      executors stop.
#ifndef ATTENTION_SERVER_DRAIN_H_
#define ATTENTION_SERVER_DRAIN_H_

#include <cstdint>
#include <functional>

#include "server/executor.h"

namespace attention::server {

// What the drain acts on; main.cc binds it to the health service, the service, the batcher, the
// gRPC server and the executors.
class DrainTarget {
 public:
  virtual ~DrainTarget() = default;
  // Health turns NOT_SERVING.
  virtual void SetNotServing() = 0;
  // The service refuses new calls with UNAVAILABLE and ends open streams once their answers are
  // written.
  virtual void StopAcceptingCalls() = 0;
  // The batcher refuses new jobs with UNAVAILABLE.
  virtual void StopAcceptingJobs() = 0;
  // Requests queued and batches on the devices (for the log).
  virtual int64_t QueuedRequests() = 0;
  virtual int64_t BatchesInFlight() = 0;
  // Waits until nothing is queued or in flight, or `deadline`: true when drained.
  virtual bool DrainQueue(Clock::time_point deadline) = 0;
  // Answers what is still queued with UNAVAILABLE and waits for the batches on the devices until
  // `deadline`: false when one did not finish.
  virtual bool ShutdownBatcher(Clock::time_point deadline) = 0;
  // Waits until every call ended, or `deadline`: true when they all did.
  virtual bool WaitForCalls(Clock::time_point deadline) = 0;
  // When the last call ended (its answer written).
  virtual Clock::time_point LastAnswer() = 0;
  // Waits until `until` with the connections open (step 5).
  virtual void Linger(Clock::time_point until) = 0;
  // Shuts the gRPC server down (cancelling what is left) and waits for it.
  virtual void ShutdownServer() = 0;
  // Stops every executor's threads.
  virtual void ShutdownExecutors() = 0;
};

struct DrainResult {
  int64_t queued_at_start = 0;
  int64_t batches_at_start = 0;
  bool drained = false;     // the queue drained before the deadline
  int64_t abandoned = 0;    // requests still queued at the deadline (answered UNAVAILABLE)
  bool stuck = false;       // a batch never finished: nothing was torn down (step 3)
  bool calls_done = false;  // every call ended before the deadline
};

// How long the connections stay open after the last answer (step 5): a client on the same host
// reads its answer within milliseconds; half a second covers a loaded host and a proxy between
// (a container runtime's port forwarding) while adding at most that to a drain.
inline constexpr Clock::duration kClientLinger = std::chrono::milliseconds(500);

// Until when step 5 lingers: kClientLinger after the last answer, never past the drain deadline
// (already past when the last answer is older than kClientLinger).
Clock::time_point LingerUntil(Clock::time_point last_answer, Clock::time_point deadline);

// Runs the sequence above. `deadline` is the drain deadline (--drain_timeout_s from the signal);
// `stuck_grace` the extra time a batch on a device gets after it. `on_started` runs after step 1
// (main.cc logs the "draining" line there).
DrainResult RunDrain(DrainTarget& target, Clock::time_point deadline, Clock::duration stuck_grace,
                     const std::function<void(const DrainResult&)>& on_started = nullptr);

}  // namespace attention::server

#endif  // ATTENTION_SERVER_DRAIN_H_
