// The drain sequence (server/drain.h): its order, what it reports, and that a stuck batch stops it
// before anything is torn down.
#include "server/drain.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace attention::server {
namespace {

// Records every call in order; the waits answer as configured.
class RecordingTarget final : public DrainTarget {
 public:
  bool queue_drains = true;
  bool batches_finish = true;
  bool calls_end = true;
  int64_t queued = 3;
  std::vector<std::string> calls;
  Clock::time_point drain_deadline, batcher_deadline, calls_deadline;
  Clock::time_point last_answer = Clock::now();
  Clock::time_point lingered_until;

  void SetNotServing() override { calls.push_back("not_serving"); }
  void StopAcceptingCalls() override { calls.push_back("stop_calls"); }
  void StopAcceptingJobs() override { calls.push_back("stop_jobs"); }
  int64_t QueuedRequests() override { return queued; }
  int64_t BatchesInFlight() override { return 2; }
  bool DrainQueue(Clock::time_point deadline) override {
    calls.push_back("drain_queue");
    drain_deadline = deadline;
    if (queue_drains) queued = 0;
    return queue_drains;
  }
  bool ShutdownBatcher(Clock::time_point deadline) override {
    calls.push_back("shutdown_batcher");
    batcher_deadline = deadline;
    return batches_finish;
  }
  bool WaitForCalls(Clock::time_point deadline) override {
    calls.push_back("wait_calls");
    calls_deadline = deadline;
    return calls_end;
  }
  Clock::time_point LastAnswer() override { return last_answer; }
  void Linger(Clock::time_point until) override {
    calls.push_back("linger");
    lingered_until = until;
  }
  void ShutdownServer() override { calls.push_back("shutdown_server"); }
  void ShutdownExecutors() override { calls.push_back("shutdown_executors"); }
};

TEST(DrainTest, StepsRunInOrder) {
  RecordingTarget target;
  const Clock::time_point deadline = Clock::now() + std::chrono::seconds(30);
  std::vector<std::string> at_start;
  const DrainResult r =
      RunDrain(target, deadline, std::chrono::seconds(5), [&](const DrainResult& started) {
        at_start = target.calls;
        EXPECT_EQ(started.queued_at_start, 3);
        EXPECT_EQ(started.batches_at_start, 2);
      });
  // Health, calls and jobs are all refused before the "draining" line (on_started).
  EXPECT_EQ(at_start, (std::vector<std::string>{"not_serving", "stop_calls", "stop_jobs"}));
  EXPECT_EQ(target.calls,
            (std::vector<std::string>{"not_serving", "stop_calls", "stop_jobs", "drain_queue",
                                      "shutdown_batcher", "wait_calls", "linger", "shutdown_server",
                                      "shutdown_executors"}));
  // The connections stay open for kClientLinger after the last answer.
  EXPECT_EQ(target.lingered_until, target.last_answer + kClientLinger);
  EXPECT_EQ(target.drain_deadline, deadline);
  EXPECT_EQ(target.batcher_deadline, deadline + std::chrono::seconds(5));
  EXPECT_EQ(target.calls_deadline, deadline);
  EXPECT_TRUE(r.drained);
  EXPECT_FALSE(r.stuck);
  EXPECT_TRUE(r.calls_done);
  EXPECT_EQ(r.abandoned, 0);
}

TEST(DrainTest, QueueLeftAtTheDeadlineIsReportedAbandoned) {
  RecordingTarget target;
  target.queue_drains = false;
  target.calls_end = false;
  const DrainResult r = RunDrain(target, Clock::now(), std::chrono::seconds(5));
  EXPECT_FALSE(r.drained);
  EXPECT_EQ(r.abandoned, 3);
  EXPECT_FALSE(r.calls_done);
  // Still shuts everything down, in order.
  EXPECT_EQ(target.calls.back(), "shutdown_executors");
}

TEST(DrainTest, LingerEndsAtTheDeadlineAndOnlyAfterRecentAnswers) {
  const Clock::time_point t0 = Clock::now();
  EXPECT_EQ(LingerUntil(t0, t0 + std::chrono::seconds(30)), t0 + kClientLinger);
  EXPECT_EQ(LingerUntil(t0, t0 + std::chrono::milliseconds(1)), t0 + std::chrono::milliseconds(1));

  // The last answer went out long ago: its client has read it, no linger.
  RecordingTarget old_answers;
  old_answers.last_answer = Clock::now() - std::chrono::seconds(10);
  RunDrain(old_answers, Clock::now() + std::chrono::seconds(30), std::chrono::seconds(5));
  for (const std::string& call : old_answers.calls) EXPECT_NE(call, "linger");

  // Calls still open at the deadline: they are cancelled at once, nothing to linger for.
  RecordingTarget open_calls;
  open_calls.calls_end = false;
  RunDrain(open_calls, Clock::now() + std::chrono::seconds(30), std::chrono::seconds(5));
  for (const std::string& call : open_calls.calls) EXPECT_NE(call, "linger");
  EXPECT_EQ(open_calls.calls.back(), "shutdown_executors");
}

TEST(DrainTest, StuckBatchTearsNothingDown) {
  RecordingTarget target;
  target.batches_finish = false;
  const DrainResult r = RunDrain(target, Clock::now(), std::chrono::seconds(5));
  EXPECT_TRUE(r.stuck);
  EXPECT_EQ(target.calls.back(), "shutdown_batcher");
  for (const std::string& call : target.calls) {
    EXPECT_NE(call, "shutdown_server");
    EXPECT_NE(call, "shutdown_executors");
  }
}

}  // namespace
}  // namespace attention::server
