// The rules of one stream (server/stream_state.h), without gRPC.
#include "server/stream_state.h"

#include "gtest/gtest.h"

namespace attention::server {
namespace {

TEST(StreamStateTest, FlowControlPausesAndResumesReading) {
  StreamState s(2);
  s.RequestAccepted();
  EXPECT_TRUE(s.ShouldReadNext());
  s.RequestAccepted();
  EXPECT_FALSE(s.ShouldReadNext());  // 2 in flight: paused
  EXPECT_TRUE(s.StartWriting());
  EXPECT_FALSE(s.StartWriting());  // one write outstanding at a time
  EXPECT_TRUE(s.AnswerWritten(true, 0));  // back to 1 in flight: resume
  s.SetWriting(false);
  EXPECT_EQ(s.in_flight(), 1);
  EXPECT_FALSE(s.AnswerWritten(true, 0));  // not paused any more: nothing to resume
}

// A request refused for the server's answer budget pauses reading until one of this stream's
// answers is written: a client that never reads its answers is not read any more either.
TEST(StreamStateTest, AnswerBudgetPausesReadingUntilAnAnswerIsWritten) {
  StreamState s(8);
  s.RequestAccepted();
  EXPECT_TRUE(s.ShouldReadNext());
  s.RequestAccepted();  // refused for the budget (its error answer is in flight)
  s.PauseForAnswerBudget();
  EXPECT_FALSE(s.ShouldReadNext());
  EXPECT_TRUE(s.StartWriting());
  EXPECT_TRUE(s.AnswerWritten(true, 0));  // the client read one: resume
  s.SetWriting(false);
  EXPECT_FALSE(s.budget_paused());
  EXPECT_TRUE(s.ShouldReadNext());
  // A failed write does not resume reading: the stream is ending.
  s.PauseForAnswerBudget();
  EXPECT_FALSE(s.ShouldReadNext());
  EXPECT_TRUE(s.StartWriting());
  EXPECT_FALSE(s.AnswerWritten(false, 0));
  EXPECT_TRUE(s.Ending());
}

TEST(StreamStateTest, FinishesOnceAfterHalfCloseWithOk) {
  StreamState s(4);
  s.RequestAccepted();
  s.ReadsDone();
  EXPECT_TRUE(s.Ending());
  EXPECT_FALSE(s.TryFinish());  // an answer is still in flight
  EXPECT_TRUE(s.StartWriting());
  s.AnswerWritten(true, 0);
  EXPECT_FALSE(s.TryFinish());  // still writing
  s.SetWriting(false);
  EXPECT_TRUE(s.TryFinish());
  EXPECT_FALSE(s.TryFinish());  // exactly once
  EXPECT_TRUE(s.FinishStatus().ok());
}

TEST(StreamStateTest, FinishStatusSaysWhy) {
  {
    StreamState s(4);
    s.Cancel();
    EXPECT_TRUE(s.answers_dropped());
    ASSERT_TRUE(s.TryFinish());
    EXPECT_EQ(s.FinishStatus().error_code(), grpc::StatusCode::CANCELLED);
  }
  {
    StreamState s(4);
    s.Malformed("message 3 of this stream: not an AttentionRequest");
    ASSERT_TRUE(s.TryFinish());
    EXPECT_EQ(s.FinishStatus().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(s.FinishStatus().error_message(), "message 3 of this stream: not an AttentionRequest");
  }
  {
    StreamState s(4);
    s.Drain();
    ASSERT_TRUE(s.TryFinish());
    EXPECT_EQ(s.FinishStatus().error_code(), grpc::StatusCode::UNAVAILABLE);
  }
  {
    StreamState s(4);
    s.Drain();
    s.ReadsDone();  // the client had half-closed: its stream ended normally
    ASSERT_TRUE(s.TryFinish());
    EXPECT_TRUE(s.FinishStatus().ok());
  }
}

TEST(StreamStateTest, FailedWriteDropsQueuedAnswersAndCancels) {
  StreamState s(8);
  for (int i = 0; i < 3; ++i) s.RequestAccepted();
  EXPECT_TRUE(s.StartWriting());
  // The write of the first answer fails with two more queued: all three leave.
  EXPECT_FALSE(s.AnswerWritten(false, 2));
  s.SetWriting(false);
  EXPECT_EQ(s.in_flight(), 0);
  EXPECT_TRUE(s.answers_dropped());
  EXPECT_TRUE(s.Ending());
  ASSERT_TRUE(s.TryFinish());
  EXPECT_EQ(s.FinishStatus().error_code(), grpc::StatusCode::CANCELLED);
}

TEST(StreamStateTest, RefusedAtOpenFinishesOnce) {
  StreamState s(4);
  EXPECT_TRUE(s.FinishAtOpen());
  EXPECT_FALSE(s.FinishAtOpen());
  EXPECT_FALSE(s.TryFinish());
}

TEST(StreamStateTest, CancelFlagIsWhatJobsWatch) {
  StreamState s(4);
  const std::atomic<bool>* flag = s.cancelled_flag();
  EXPECT_FALSE(flag->load());
  s.Cancel();
  EXPECT_TRUE(flag->load());
}

}  // namespace
}  // namespace attention::server
