// server/step_trace.h: a lone step's timeline (ATTN_STEP_TRACE=1). Each step's stamps are folded
// into per-point means at the next step's read; a point stamped through StampOf with an older
// step's generation (a thread that passed it after the next step was read) is left out, and
// kWriteDone counts only once the step's write started.
#include <cstdlib>
#include <thread>

#include "gtest/gtest.h"
#include "server/step_trace.h"

namespace attention::server::step_trace {
namespace {

class StepTraceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { setenv("ATTN_STEP_TRACE", "1", 1); }
};

TEST_F(StepTraceTest, FoldsEachStepsStampsAtTheNextRead) {
  ASSERT_TRUE(Enabled());
  State& s = Global();
  Begin();  // folds whatever came before, then starts a step
  const int64_t before_steps = s.steps;
  const int64_t before_parsed = s.count[kParsed];
  const int64_t before_write_done = s.count[kWriteDone];
  const int64_t before_turn_ended = s.count[kTurnEnded];
  const int64_t sum_parsed = s.sum[kParsed];

  const int64_t generation = Generation();
  Stamp(kParsed);
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  Stamp(kParsed);    // a second pass keeps the first stamp
  StampWriteDone();  // no write started: not stamped
  EXPECT_EQ(s.stamp[kWriteDone].load(), 0);
  Stamp(kWriteStarted);
  StampWriteDone();
  EXPECT_NE(s.stamp[kWriteDone].load(), 0);
  Begin();  // the next step: the first one's stamps are folded
  EXPECT_EQ(Generation(), generation + 1);
  // A thread that passed kTurnEnded of the first step only now: left out of the second.
  StampOf(generation, kTurnEnded);
  EXPECT_EQ(s.stamp[kTurnEnded].load(), 0);
  StampOf(Generation(), kTurnEnded);
  EXPECT_NE(s.stamp[kTurnEnded].load(), 0);

  EXPECT_EQ(s.steps, before_steps + 1);
  EXPECT_EQ(s.count[kParsed], before_parsed + 1);
  EXPECT_EQ(s.count[kWriteDone], before_write_done + 1);
  EXPECT_EQ(s.count[kTurnEnded], before_turn_ended);
  // The first stamp of kParsed, taken right after the read: well under the 2 ms slept after it.
  EXPECT_GE(s.sum[kParsed] - sum_parsed, 0);
  EXPECT_LT(s.sum[kParsed] - sum_parsed, 2'000'000);
}

TEST_F(StepTraceTest, ReportsAndRestartsEveryReportSteps) {
  State& s = Global();
  Begin();
  for (int64_t i = 0; i < kReportSteps + 1; ++i) {
    Stamp(kEnqueue);
    Begin();
  }
  // Every kReportSteps folded steps the means are printed and the sums start over.
  EXPECT_GE(s.steps, 1);
  EXPECT_LE(s.steps, kReportSteps);
  EXPECT_EQ(s.count[kEnqueue], s.steps);
}

}  // namespace
}  // namespace attention::server::step_trace
