#include "server/drain.h"

#include <algorithm>

namespace attention::server {

Clock::time_point LingerUntil(Clock::time_point last_answer, Clock::time_point deadline) {
  return std::min(last_answer + kClientLinger, deadline);
}

DrainResult RunDrain(DrainTarget& target, Clock::time_point deadline, Clock::duration stuck_grace,
                     const std::function<void(const DrainResult&)>& on_started) {
  DrainResult r;
  target.SetNotServing();
  r.queued_at_start = target.QueuedRequests();
  r.batches_at_start = target.BatchesInFlight();
  target.StopAcceptingCalls();
  target.StopAcceptingJobs();
  if (on_started) on_started(r);
  r.drained = target.DrainQueue(deadline);
  r.abandoned = target.QueuedRequests();
  if (!target.ShutdownBatcher(deadline + stuck_grace)) {
    r.stuck = true;
    return r;
  }
  r.calls_done = target.WaitForCalls(deadline);
  if (r.calls_done) {
    const Clock::time_point until = LingerUntil(target.LastAnswer(), deadline);
    if (until > Clock::now()) target.Linger(until);
  }
  target.ShutdownServer();
  target.ShutdownExecutors();
  return r;
}

}  // namespace attention::server
