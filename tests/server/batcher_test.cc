// The batcher driven through a fake executor whose batches the test finishes by hand: idle
// launch, delay flush, size flushes, bucketing, varlen packing, cancellation, deadlines, queue
// bounds, least-loaded placement, drain and shutdown, exactly one answer per job, and the host
// stage histograms FinishBatch observes.
#include "server/batcher.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "server/metrics/metrics.h"
#include "server/packing.h"
#include "server/service.h"
#include "server/validation.h"
#include "tests/server/server_test_util.h"

namespace attention::server {
namespace {

using namespace std::chrono_literals;
using testing::MakeRequest;
using testing::RequestOptions;

// Generous bound for anything that should happen "at once" on a loaded 2-core machine.
constexpr auto kPrompt = 5s;

class FakeExecutor final : public Executor {
 public:
  explicit FakeExecutor(int depth, std::string name = "fake") : depth_(depth), name_(name) {}

  const std::string& device() const override { return name_; }
  int pipeline_depth() const override {
    std::lock_guard<std::mutex> lock(hook_mu_);
    if (on_pipeline_depth_) on_pipeline_depth_();
    return depth_;
  }
  // Runs `hook` whenever the batcher asks for the pipeline depth, which it does while it decides
  // where to launch (with its own lock held): a way to change a job at that moment.
  void OnPipelineDepth(std::function<void()> hook) {
    std::lock_guard<std::mutex> lock(hook_mu_);
    on_pipeline_depth_ = std::move(hook);
  }
  int64_t max_batch_bytes() const override { return max_batch_bytes_; }
  absl::Status Admit(const Job& job) const override {
    if (job.spec.q_bytes > max_job_q_bytes_) return absl::ResourceExhaustedError("too large");
    return absl::OkStatus();
  }
  bool serving() const override { return serving_.load(); }
  // Like a CUDA executor after a sticky error: serving() false, and every batch submitted fails
  // at once, inside Submit.
  void Break() { serving_.store(false); }
  void Submit(std::unique_ptr<Batch> batch) override {
    if (!serving_.load()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++refused_;
      }
      batch->device = name_;
      FinishBatch(std::move(batch), absl::UnavailableError(name_ + " is not serving"));
      return;
    }
    std::lock_guard<std::mutex> lock(mu_);
    submitted_at_.push_back(Clock::now());
    batches_.push_back(std::move(batch));
    ++total_submitted_;
    cv_.notify_all();
  }
  void Shutdown() override {}

  // Waits for the index-th submitted batch and returns it while unfinished (null after
  // `timeout`).
  Batch* WaitForBatch(size_t index, Clock::duration timeout = kPrompt) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return total_submitted_ > index; });
    return total_submitted_ > index ? batch_at(index) : nullptr;
  }
  // Finishes the oldest unfinished batch with `status`.
  void FinishOldest(const absl::Status& status = absl::OkStatus()) {
    std::unique_ptr<Batch> batch;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ASSERT_FALSE(batches_.empty());
      batch = std::move(batches_.front());
      batches_.pop_front();
      ++finished_;
    }
    batch->device = name_;
    batch->timings.started = Clock::now();
    FinishBatch(std::move(batch), status);
  }
  // Takes the oldest unfinished batch for the test to finish itself (its timings as set).
  std::unique_ptr<Batch> TakeOldest() {
    std::lock_guard<std::mutex> lock(mu_);
    EXPECT_FALSE(batches_.empty());
    if (batches_.empty()) return nullptr;
    std::unique_ptr<Batch> batch = std::move(batches_.front());
    batches_.pop_front();
    ++finished_;
    return batch;
  }
  int submitted() {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int>(total_submitted_);
  }
  // Batches failed at once because the executor was broken.
  int refused() {
    std::lock_guard<std::mutex> lock(mu_);
    return refused_;
  }
  Clock::time_point submitted_at(size_t index) {
    std::lock_guard<std::mutex> lock(mu_);
    return submitted_at_[index];
  }

  int64_t max_batch_bytes_ = int64_t{1} << 40;
  int64_t max_job_q_bytes_ = int64_t{1} << 40;

 private:
  Batch* batch_at(size_t index) {
    const size_t unfinished_index = index - finished_;
    return unfinished_index < batches_.size() ? batches_[unfinished_index].get() : nullptr;
  }

  const int depth_;
  const std::string name_;
  mutable std::mutex hook_mu_;
  std::function<void()> on_pipeline_depth_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Batch>> batches_;  // submitted, not finished
  std::vector<Clock::time_point> submitted_at_;
  size_t total_submitted_ = 0;
  size_t finished_ = 0;
  int refused_ = 0;
  std::atomic<bool> serving_{true};
};

// Owns each test request's messages and records every answer.
class Calls final : public JobCompletion {
 public:
  struct Call {
    v1::AttentionRequest request;
    v1::AttentionResponse response;
    std::atomic<bool> cancelled{false};
    int answers = 0;
    absl::Status status;
  };

  // A job for a new request made from `options`.
  std::unique_ptr<Job> NewJob(const RequestOptions& options,
                              Clock::time_point deadline = Clock::time_point::max()) {
    std::lock_guard<std::mutex> lock(mu_);
    const uint64_t id = calls_.size();
    auto& call = calls_[id];
    call = std::make_unique<Call>();
    call->request = MakeRequest(options, id, rng_);
    absl::StatusOr<RequestSpec> spec = ValidateRequest(call->request, {});
    EXPECT_TRUE(spec.ok()) << spec.status();
    auto job = std::make_unique<Job>();
    job->request = &call->request;
    job->q_header = &call->request.q();
    job->spec = std::move(*spec);
    job->completion = this;
    job->accepted = Clock::now();
    job->deadline = deadline;
    job->cancelled = &call->cancelled;
    return job;
  }

  void Complete(std::unique_ptr<Job> job, const absl::Status& status) override {
    std::lock_guard<std::mutex> lock(mu_);
    Call& call = *calls_.at(job->request->request_id());
    if (status.ok()) WriteAnswer(*job, &call.response);
    ++call.answers;
    call.status = status;
    ++answered_;
    cv_.notify_all();
  }

  Call& call(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    return *calls_.at(id);
  }
  bool WaitAnswered(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kPrompt, [&] { return answered_ >= n; });
  }
  int answered() {
    std::lock_guard<std::mutex> lock(mu_);
    return answered_;
  }
  // Every call answered exactly once.
  void ExpectEachAnsweredOnce() {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [id, call] : calls_) EXPECT_EQ(call->answers, 1) << "request " << id;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, std::unique_ptr<Call>> calls_;
  int answered_ = 0;
  std::mt19937 rng_{5};
};

RequestOptions Small(int seqlen = 8, int head_dim = 16) {
  RequestOptions o;
  o.seqlen_q = seqlen;
  o.seqlen_k = seqlen;
  o.q_heads = 2;
  o.kv_heads = 2;
  o.head_dim = head_dim;
  return o;
}

BatcherOptions Options(std::chrono::microseconds delay = std::chrono::seconds(30)) {
  BatcherOptions o;
  o.max_queue_delay = delay;
  return o;
}

void Enqueue(Batcher& batcher, std::unique_ptr<Job> job) {
  ASSERT_TRUE(batcher.Enqueue(job).ok());
  ASSERT_EQ(job, nullptr);  // ownership taken
}

TEST(BatcherTest, CancelledWhileAnIdleServerLaunchesItIsAnsweredOnceAndNothingLaunches) {
  // The caller cancels after Enqueue decided to launch the job itself but before the batch is
  // formed (the flag is set by a gRPC thread, without the batcher's lock): the job is dropped,
  // answered CANCELLED, and no empty batch reaches the executor.
  FakeExecutor executor(2);
  Calls calls;
  Batcher batcher(Options(), {&executor}, nullptr);
  std::unique_ptr<Job> job = calls.NewJob(Small());
  std::atomic<bool>* cancelled = &calls.call(0).cancelled;
  executor.OnPipelineDepth([cancelled] { cancelled->store(true); });
  Enqueue(batcher, std::move(job));
  executor.OnPipelineDepth(nullptr);
  ASSERT_TRUE(calls.WaitAnswered(1));
  EXPECT_EQ(calls.call(0).status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(executor.submitted(), 0);
  // The batcher serves on.
  Enqueue(batcher, calls.NewJob(Small()));
  ASSERT_NE(executor.WaitForBatch(0), nullptr);
  executor.FinishOldest();
  ASSERT_TRUE(calls.WaitAnswered(2));
  EXPECT_TRUE(calls.call(1).status.ok());
  calls.ExpectEachAnsweredOnce();
}

TEST(BatcherTest, IdleServerLaunchesAtOnce) {
  FakeExecutor executor(2);
  Calls calls;
  Batcher batcher(Options(), {&executor}, nullptr);  // delay 30 s
  const auto start = Clock::now();
  Enqueue(batcher, calls.NewJob(Small()));
  // Submitted by Enqueue itself: no hand-off to the batcher thread.
  EXPECT_EQ(executor.submitted(), 1);
  Batch* batch = executor.WaitForBatch(0);
  ASSERT_NE(batch, nullptr);
  EXPECT_LT(executor.submitted_at(0) - start, kPrompt);
  EXPECT_EQ(batch->jobs.size(), 1u);
  executor.FinishOldest();
  ASSERT_TRUE(calls.WaitAnswered(1));
  EXPECT_TRUE(calls.call(0).status.ok());
  const v1::AttentionResponse& response = calls.call(0).response;
  EXPECT_EQ(response.batch().requests(), 1);
  EXPECT_EQ(response.batch().device(), "fake");
  EXPECT_EQ(response.batch().tokens_q(), 8);
  EXPECT_GE(response.timings().queue_ns(), 0);
}

TEST(BatcherTest, DelayFlushWhileBusy) {
  FakeExecutor executor(2);
  Calls calls;
  const auto delay = std::chrono::milliseconds(100);
  Batcher batcher(Options(delay), {&executor}, nullptr);
  Enqueue(batcher, calls.NewJob(Small()));
  ASSERT_NE(executor.WaitForBatch(0), nullptr);  // executor now busy, not idle
  const auto enqueued = Clock::now();
  Enqueue(batcher, calls.NewJob(Small()));
  Enqueue(batcher, calls.NewJob(Small(5)));
  Batch* second = executor.WaitForBatch(1);
  ASSERT_NE(second, nullptr);
  // Held for the delay (measured from the first queued job's acceptance), then both packed.
  EXPECT_GE(executor.submitted_at(1) - enqueued, delay - std::chrono::milliseconds(1));
  EXPECT_EQ(second->jobs.size(), 2u);
  executor.FinishOldest();
  executor.FinishOldest();
  ASSERT_TRUE(calls.WaitAnswered(3));
  calls.ExpectEachAnsweredOnce();
}

TEST(BatcherTest, SizeFlushByRequests) {
  FakeExecutor executor(2);
  Calls calls;
  BatcherOptions options = Options();  // delay 30 s: only size can flush
  options.max_batch_requests = 4;
  Batcher batcher(options, {&executor}, nullptr);
  Enqueue(batcher, calls.NewJob(Small()));
  ASSERT_NE(executor.WaitForBatch(0), nullptr);
  for (int i = 0; i < 5; ++i) Enqueue(batcher, calls.NewJob(Small()));
  Batch* full = executor.WaitForBatch(1);
  ASSERT_NE(full, nullptr);
  EXPECT_EQ(full->jobs.size(), 4u);
  EXPECT_EQ(batcher.queued_requests(), 1);  // the fifth waits: not full, not due, executor busy
  executor.FinishOldest();
  executor.FinishOldest();
  // Idle again: the remaining job launches at once.
  Batch* rest = executor.WaitForBatch(2);
  ASSERT_NE(rest, nullptr);
  EXPECT_EQ(rest->jobs.size(), 1u);
  executor.FinishOldest();
  ASSERT_TRUE(calls.WaitAnswered(6));
  calls.ExpectEachAnsweredOnce();
}

TEST(BatcherTest, SizeFlushByTokens) {
  FakeExecutor executor(2);
  Calls calls;
  BatcherOptions options = Options();
  options.max_batch_tokens = 64;
  Batcher batcher(options, {&executor}, nullptr);
  Enqueue(batcher, calls.NewJob(Small()));
  ASSERT_NE(executor.WaitForBatch(0), nullptr);
  Enqueue(batcher, calls.NewJob(Small(40)));
  EXPECT_EQ(executor.submitted(), 1);
  Enqueue(batcher, calls.NewJob(Small(30)));  // 70 tokens queued >= 64: full
  Batch* batch = executor.WaitForBatch(1);
  ASSERT_NE(batch, nullptr);
  // 40 + 30 exceeds the limit: the batch takes the first job only.
  EXPECT_EQ(batch->jobs.size(), 1u);
  EXPECT_EQ(batch->total_q, 40);
  executor.FinishOldest();
  executor.FinishOldest();
  ASSERT_NE(executor.WaitForBatch(2), nullptr);
  executor.FinishOldest();
  ASSERT_TRUE(calls.WaitAnswered(3));
}

TEST(BatcherTest, BucketsByKernelConfigAndPacksVarlen) {
  FakeExecutor executor(1);
  Calls calls;
  Batcher batcher(Options(), {&executor}, nullptr);
  Enqueue(batcher, calls.NewJob(Small()));  // occupies the only slot
  ASSERT_NE(executor.WaitForBatch(0), nullptr);
  RequestOptions packed = Small(0, 16);
  packed.seqlens_q = {3, 9};
  packed.seqlens_k = {5, 1};
  Enqueue(batcher, calls.NewJob(Small(7, 16)));   // id 1, bucket A (head_dim 16)
  Enqueue(batcher, calls.NewJob(Small(12, 32)));  // id 2, bucket B (head_dim 32)
  Enqueue(batcher, calls.NewJob(packed));         // id 3, bucket A
  RequestOptions causal = Small(4, 16);
  causal.causal = true;
  Enqueue(batcher, calls.NewJob(causal));  // id 4, bucket C (causal)
  executor.FinishOldest();

  // The bucket with the oldest job goes first, with all its jobs, as one varlen launch.
  Batch* a = executor.WaitForBatch(1);
  ASSERT_NE(a, nullptr);
  ASSERT_EQ(a->jobs.size(), 2u);
  EXPECT_EQ(a->jobs[0]->request->request_id(), 1u);
  EXPECT_EQ(a->jobs[1]->request->request_id(), 3u);
  EXPECT_EQ(a->sequences, 3);
  EXPECT_EQ(a->cu_seqlens_q, (std::vector<int32_t>{0, 7, 10, 19}));
  EXPECT_EQ(a->cu_seqlens_k, (std::vector<int32_t>{0, 7, 12, 13}));
  EXPECT_EQ(a->max_seqlen_q, 9);
  EXPECT_EQ(a->config.head_dim, 16);
  EXPECT_FALSE(a->config.causal);
  EXPECT_EQ(a->plan.layout.total_bytes(),
            BatchBytesWith(a->config, 1, 7, 7, false, a->jobs[1]->spec));
  executor.FinishOldest();
  Batch* b = executor.WaitForBatch(2);
  ASSERT_NE(b, nullptr);
  ASSERT_EQ(b->jobs.size(), 1u);
  EXPECT_EQ(b->jobs[0]->request->request_id(), 2u);
  executor.FinishOldest();
  Batch* c = executor.WaitForBatch(3);
  ASSERT_NE(c, nullptr);
  EXPECT_TRUE(c->config.causal);
  executor.FinishOldest();
  ASSERT_TRUE(calls.WaitAnswered(5));
  calls.ExpectEachAnsweredOnce();
  EXPECT_EQ(calls.call(3).response.batch().requests(), 2);
  EXPECT_EQ(calls.call(3).response.batch().sequences(), 3);
}

TEST(BatcherTest, MaskedJobsRunAloneAndBatchingOffRunsEachAlone) {
  for (bool batching : {true, false}) {
    FakeExecutor executor(1);
    Calls calls;
    BatcherOptions options = Options();
    options.batching = batching;
    Batcher batcher(options, {&executor}, nullptr);
    Enqueue(batcher, calls.NewJob(Small()));
    ASSERT_NE(executor.WaitForBatch(0), nullptr);
    RequestOptions o = Small();
    if (batching) {
      o.mask_dtype = v1::BOOL;
      o.mask_shape = {8, 8};
    }
    for (int i = 0; i < 3; ++i) Enqueue(batcher, calls.NewJob(o));
    executor.FinishOldest();
    for (int i = 1; i <= 3; ++i) {
      Batch* batch = executor.WaitForBatch(i);
      ASSERT_NE(batch, nullptr);
      EXPECT_EQ(batch->jobs.size(), 1u);
      executor.FinishOldest();
    }
    ASSERT_TRUE(calls.WaitAnswered(4));
  }
}

TEST(BatcherTest, CancelledJobIsDroppedBeforeLaunch) {
  FakeExecutor executor(1);
  Calls calls;
  Batcher batcher(Options(), {&executor}, nullptr);
  Enqueue(batcher, calls.NewJob(Small()));
  ASSERT_NE(executor.WaitForBatch(0), nullptr);
  Enqueue(batcher, calls.NewJob(Small()));
  Enqueue(batcher, calls.NewJob(Small()));
  calls.call(1).cancelled = true;
  batcher.NotifyCancelled();
  // Answered at once, while the executor is still busy.
  ASSERT_TRUE(calls.WaitAnswered(1));
  EXPECT_EQ(calls.call(1).status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(batcher.queued_requests(), 1);
  executor.FinishOldest();
  Batch* batch = executor.WaitForBatch(1);
  ASSERT_NE(batch, nullptr);
  ASSERT_EQ(batch->jobs.size(), 1u);
  EXPECT_EQ(batch->jobs[0]->request->request_id(), 2u);
  executor.FinishOldest();
  ASSERT_TRUE(calls.WaitAnswered(3));
  calls.ExpectEachAnsweredOnce();
}

TEST(BatcherTest, ExpiredJobIsDroppedBeforeLaunch) {
  FakeExecutor executor(1);
  Calls calls;
  Batcher batcher(Options(), {&executor}, nullptr);
  Enqueue(batcher, calls.NewJob(Small()));
  ASSERT_NE(executor.WaitForBatch(0), nullptr);
  Enqueue(batcher, calls.NewJob(Small(), Clock::now() + 20ms));
  Enqueue(batcher, calls.NewJob(Small()));
  std::this_thread::sleep_for(40ms);
  executor.FinishOldest();
  Batch* batch = executor.WaitForBatch(1);
  ASSERT_NE(batch, nullptr);
  ASSERT_EQ(batch->jobs.size(), 1u);
  EXPECT_EQ(batch->jobs[0]->request->request_id(), 2u);
  executor.FinishOldest();
  ASSERT_TRUE(calls.WaitAnswered(3));
  EXPECT_EQ(calls.call(1).status.code(), absl::StatusCode::kDeadlineExceeded);
  calls.ExpectEachAnsweredOnce();
}

TEST(BatcherTest, QueueBoundsAndAdmission) {
  FakeExecutor executor(1);
  executor.max_job_q_bytes_ = 1000;
  Calls calls;
  BatcherOptions options = Options();
  options.max_queue_requests = 2;
  Batcher batcher(options, {&executor}, nullptr);
  Enqueue(batcher, calls.NewJob(Small()));
  ASSERT_NE(executor.WaitForBatch(0), nullptr);
  Enqueue(batcher, calls.NewJob(Small()));
  Enqueue(batcher, calls.NewJob(Small()));
  std::unique_ptr<Job> third = calls.NewJob(Small());
  absl::Status status = batcher.Enqueue(third);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(status.message().find("--max_queue_requests=2"), absl::string_view::npos) << status;
  EXPECT_NE(third, nullptr);  // still the caller's

  std::unique_ptr<Job> huge = calls.NewJob(Small(64, 64));  // q: 64 * 2 * 64 * 2 bytes > 1000
  status = batcher.Enqueue(huge);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(huge, nullptr);
  executor.FinishOldest();
  ASSERT_NE(executor.WaitForBatch(1), nullptr);
  executor.FinishOldest();
  ASSERT_TRUE(calls.WaitAnswered(3));
}

TEST(BatcherTest, QueueByteBound) {
  FakeExecutor executor(1);
  Calls calls;
  BatcherOptions options = Options();
  std::unique_ptr<Job> probe = calls.NewJob(Small());
  options.max_queue_bytes = 2 * probe->spec.queued_bytes();
  Batcher batcher(options, {&executor}, nullptr);
  Enqueue(batcher, std::move(probe));
  ASSERT_NE(executor.WaitForBatch(0), nullptr);
  Enqueue(batcher, calls.NewJob(Small()));
  Enqueue(batcher, calls.NewJob(Small()));
  std::unique_ptr<Job> over = calls.NewJob(Small());
  EXPECT_EQ(batcher.Enqueue(over).code(), absl::StatusCode::kResourceExhausted);
  std::unique_ptr<Job> too_big = calls.NewJob(Small(32));
  const absl::Status status = batcher.Enqueue(too_big);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(status.message().find("--max_queue_bytes"), absl::string_view::npos) << status;
  executor.FinishOldest();
  ASSERT_NE(executor.WaitForBatch(1), nullptr);
  executor.FinishOldest();
  ASSERT_TRUE(calls.WaitAnswered(3));
}

TEST(BatcherTest, BatchBytesCapSplitsBatches) {
  FakeExecutor executor(1);
  Calls calls;
  std::unique_ptr<Job> first = calls.NewJob(Small());
  std::unique_ptr<Job> a = calls.NewJob(Small());
  // Room for exactly two small jobs.
  executor.max_batch_bytes_ = BatchBytesWith(a->spec, 1, 8, 8, false, a->spec);
  Batcher batcher(Options(), {&executor}, nullptr);
  Enqueue(batcher, std::move(first));
  ASSERT_NE(executor.WaitForBatch(0), nullptr);
  Enqueue(batcher, std::move(a));
  for (int i = 0; i < 2; ++i) Enqueue(batcher, calls.NewJob(Small()));
  executor.FinishOldest();
  Batch* batch = executor.WaitForBatch(1);
  ASSERT_NE(batch, nullptr);
  EXPECT_EQ(batch->jobs.size(), 2u);
  EXPECT_LE(batch->plan.layout.total_bytes(), executor.max_batch_bytes_);
  executor.FinishOldest();
  ASSERT_NE(executor.WaitForBatch(2), nullptr);
  executor.FinishOldest();
  ASSERT_TRUE(calls.WaitAnswered(4));
}

TEST(BatcherTest, LeastLoadedExecutor) {
  FakeExecutor e0(2, "e0"), e1(2, "e1");
  Calls calls;
  Batcher batcher(Options(), {&e0, &e1}, nullptr);
  Enqueue(batcher, calls.NewJob(Small()));
  ASSERT_NE(e0.WaitForBatch(0), nullptr);
  Enqueue(batcher, calls.NewJob(Small()));  // e1 is idle: launched there at once
  ASSERT_NE(e1.WaitForBatch(0), nullptr);
  EXPECT_EQ(e0.submitted(), 1);
  e0.FinishOldest();
  e1.FinishOldest();
  ASSERT_TRUE(calls.WaitAnswered(2));
  EXPECT_EQ(calls.call(0).response.batch().device(), "e0");
  EXPECT_EQ(calls.call(1).response.batch().device(), "e1");
}

// A job bound to a device (a session's Attend: its K/V are in that device's page pool).
std::unique_ptr<Job> Bound(Calls& calls, int device, int seqlen = 8) {
  std::unique_ptr<Job> job = calls.NewJob(Small(seqlen));
  job->spec.device = device;
  return job;
}

TEST(BatcherTest, BoundWorkRunsOnlyOnItsDeviceAndNeverSharesALaunchWithOtherDevices) {
  FakeExecutor e0(1, "e0"), e1(1, "e1");
  Calls calls;
  Batcher batcher(Options(), {&e0, &e1}, nullptr);
  // Both idle: bound to e1, it goes to e1 though e0 is first and as idle.
  Enqueue(batcher, Bound(calls, 1));
  ASSERT_NE(e1.WaitForBatch(0), nullptr);
  // e1 is full (depth 1): work bound to it waits, though e0 is idle; unbound work takes e0.
  Enqueue(batcher, Bound(calls, 1));
  Enqueue(batcher, Bound(calls, 1, 16));
  Enqueue(batcher, calls.NewJob(Small()));
  ASSERT_NE(e0.WaitForBatch(0), nullptr);
  EXPECT_EQ(e0.WaitForBatch(0)->jobs.size(), 1u);
  EXPECT_EQ(e1.submitted(), 1);
  // Same configuration as the unbound job but bound to e0: its own bucket, its own launch.
  Enqueue(batcher, Bound(calls, 0));
  e1.FinishOldest();  // the two waiting jobs bound to e1 launch there, together
  ASSERT_NE(e1.WaitForBatch(1), nullptr);
  EXPECT_EQ(e1.WaitForBatch(1)->jobs.size(), 2u);
  e0.FinishOldest();
  ASSERT_NE(e0.WaitForBatch(1), nullptr);
  EXPECT_EQ(e0.WaitForBatch(1)->jobs.size(), 1u);
  e0.FinishOldest();
  e1.FinishOldest();
  ASSERT_TRUE(calls.WaitAnswered(5));
  for (uint64_t id : {0, 1, 2}) EXPECT_EQ(calls.call(id).response.batch().device(), "e1") << id;
  for (uint64_t id : {3, 4}) EXPECT_EQ(calls.call(id).response.batch().device(), "e0") << id;
  calls.ExpectEachAnsweredOnce();
}

TEST(BatcherTest, BoundWorkGoesToItsBrokenDeviceAndFailsThere) {
  FakeExecutor e0(2, "e0"), e1(2, "e1");
  e1.Break();
  Calls calls;
  Batcher batcher(Options(1ms), {&e0, &e1}, nullptr);
  Enqueue(batcher, Bound(calls, 1));  // only e1 holds its K/V: failed there, not held forever
  ASSERT_TRUE(calls.WaitAnswered(1));
  EXPECT_EQ(calls.call(0).status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(e1.refused(), 1);
  Enqueue(batcher, calls.NewJob(Small()));  // unbound work still avoids the broken one
  ASSERT_NE(e0.WaitForBatch(0), nullptr);
  e0.FinishOldest();
  ASSERT_TRUE(calls.WaitAnswered(2));
  EXPECT_EQ(calls.call(1).response.batch().device(), "e0");
  std::unique_ptr<Job> nowhere = Bound(calls, 2);
  EXPECT_EQ(batcher.Enqueue(nowhere).code(), absl::StatusCode::kInternal);
  EXPECT_NE(nowhere, nullptr);
}

TEST(BatcherTest, BrokenExecutorGetsNoBatchWhileAnotherServes) {
  // A broken executor fails each batch at once, so it is always the least loaded one: without
  // looking at serving() the batcher would send it (nearly) everything.
  FakeExecutor e0(4, "e0"), e1(4, "e1");
  e0.Break();
  Calls calls;
  Batcher batcher(Options(1ms), {&e0, &e1}, nullptr);
  for (int i = 0; i < 3; ++i) {
    Enqueue(batcher, calls.NewJob(Small(8, 16 * (i + 1))));  // three buckets, three batches
    ASSERT_NE(e1.WaitForBatch(static_cast<size_t>(i)), nullptr);
  }
  EXPECT_EQ(e0.refused(), 0);
  for (int i = 0; i < 3; ++i) e1.FinishOldest();
  ASSERT_TRUE(calls.WaitAnswered(3));
  for (uint64_t id = 0; id < 3; ++id) {
    EXPECT_TRUE(calls.call(id).status.ok()) << calls.call(id).status;
    EXPECT_EQ(calls.call(id).response.batch().device(), "e1");
  }
  calls.ExpectEachAnsweredOnce();
}

TEST(BatcherTest, WhenNoExecutorServesBatchesFailAtOnce) {
  FakeExecutor e0(2, "e0");
  e0.Break();
  Calls calls;
  Batcher batcher(Options(), {&e0}, nullptr);
  Enqueue(batcher, calls.NewJob(Small()));
  Enqueue(batcher, calls.NewJob(Small(8, 32)));
  ASSERT_TRUE(calls.WaitAnswered(2));  // not held until a drain ends
  EXPECT_EQ(calls.call(0).status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(calls.call(1).status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(e0.refused(), 2);
  calls.ExpectEachAnsweredOnce();
}

TEST(BatcherTest, JobCancelledBeforeEnqueueIsRefusedAndStaysWithTheCaller) {
  FakeExecutor executor(2);
  Calls calls;
  Batcher batcher(Options(), {&executor}, nullptr);
  Enqueue(batcher, calls.NewJob(Small()));  // busy, so a new job would wait in its bucket
  ASSERT_NE(executor.WaitForBatch(0), nullptr);
  std::unique_ptr<Job> job = calls.NewJob(Small(8, 32));
  calls.call(1).cancelled.store(true);
  EXPECT_EQ(batcher.Enqueue(job).code(), absl::StatusCode::kCancelled);
  EXPECT_NE(job, nullptr);  // the caller answers it
  EXPECT_EQ(batcher.queued_requests(), 0);
  executor.FinishOldest();
  ASSERT_TRUE(calls.WaitAnswered(1));
  EXPECT_EQ(calls.call(1).answers, 0);
}

TEST(BatcherTest, BatchFailureAnswersEveryJob) {
  FakeExecutor executor(1);
  Calls calls;
  Batcher batcher(Options(), {&executor}, nullptr);
  Enqueue(batcher, calls.NewJob(Small()));
  ASSERT_NE(executor.WaitForBatch(0), nullptr);
  Enqueue(batcher, calls.NewJob(Small()));
  Enqueue(batcher, calls.NewJob(Small(3)));
  executor.FinishOldest();
  ASSERT_NE(executor.WaitForBatch(1), nullptr);
  executor.FinishOldest(absl::ResourceExhaustedError("out of device memory"));
  ASSERT_TRUE(calls.WaitAnswered(3));
  EXPECT_EQ(calls.call(1).status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(calls.call(2).status.code(), absl::StatusCode::kResourceExhausted);
  // And the batcher keeps serving.
  Enqueue(batcher, calls.NewJob(Small()));
  ASSERT_NE(executor.WaitForBatch(2), nullptr);
  executor.FinishOldest();
  ASSERT_TRUE(calls.WaitAnswered(4));
  calls.ExpectEachAnsweredOnce();
}

TEST(BatcherTest, DrainFinishesEverythingQueuedAndRefusesNewWork) {
  FakeExecutor executor(1);
  Calls calls;
  Batcher batcher(Options(), {&executor}, nullptr);
  Enqueue(batcher, calls.NewJob(Small()));
  ASSERT_NE(executor.WaitForBatch(0), nullptr);
  Enqueue(batcher, calls.NewJob(Small()));
  Enqueue(batcher, calls.NewJob(Small(4, 32)));  // another bucket
  std::atomic<bool> drained{false};
  std::thread drainer([&] { drained = batcher.Drain(Clock::now() + 20s); });
  // Wait until draining refuses new work.
  absl::Status refused;
  for (int i = 0; i < 500; ++i) {
    std::unique_ptr<Job> late = calls.NewJob(Small());
    refused = batcher.Enqueue(late);
    if (!refused.ok()) break;
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(drained);
  // Keep finishing until the drain completes.
  size_t next = 0;
  for (int i = 0; i < 100 && !drained; ++i) {
    if (executor.WaitForBatch(next, 100ms) == nullptr) continue;
    executor.FinishOldest();
    ++next;
  }
  drainer.join();
  EXPECT_TRUE(drained);
  batcher.Shutdown();
  EXPECT_GE(calls.answered(), 3);
  for (uint64_t id = 0; id < 3; ++id) {
    EXPECT_EQ(calls.call(id).answers, 1);
    EXPECT_TRUE(calls.call(id).status.ok()) << calls.call(id).status;
  }
}

TEST(BatcherTest, DrainTimesOutThenShutdownAnswersQueued) {
  FakeExecutor executor(1);
  Calls calls;
  Batcher batcher(Options(), {&executor}, nullptr);
  Enqueue(batcher, calls.NewJob(Small()));
  ASSERT_NE(executor.WaitForBatch(0), nullptr);
  Enqueue(batcher, calls.NewJob(Small()));
  EXPECT_FALSE(batcher.Drain(Clock::now() + 50ms));  // the executor never finishes on its own
  std::thread stopper([&] { batcher.Shutdown(); });
  ASSERT_TRUE(calls.WaitAnswered(1));
  EXPECT_EQ(calls.call(1).status.code(), absl::StatusCode::kUnavailable);
  executor.FinishOldest();  // Shutdown waits for the batch the executor holds
  stopper.join();
  calls.ExpectEachAnsweredOnce();
  EXPECT_TRUE(calls.call(0).status.ok());
}

TEST(BatcherTest, ShutdownGivesUpOnABatchThatNeverFinishes) {
  FakeExecutor executor(1);
  Calls calls;
  Batcher batcher(Options(), {&executor}, nullptr);
  Enqueue(batcher, calls.NewJob(Small()));
  ASSERT_NE(executor.WaitForBatch(0), nullptr);
  Enqueue(batcher, calls.NewJob(Small()));
  const Clock::time_point start = Clock::now();
  EXPECT_FALSE(batcher.Shutdown(start + 100ms));  // the device never completes
  EXPECT_GE(Clock::now() - start, 100ms);
  EXPECT_LT(Clock::now() - start, 10s);
  EXPECT_EQ(calls.call(1).status.code(), absl::StatusCode::kUnavailable);  // the queued one
  EXPECT_EQ(calls.call(0).answers, 0);
  EXPECT_EQ(batcher.batches_in_flight(), 1);
  // Should the batch finish after all, a later Shutdown still ends cleanly.
  executor.FinishOldest();
  EXPECT_TRUE(batcher.Shutdown(Clock::now() + 10s));
  calls.ExpectEachAnsweredOnce();
  EXPECT_TRUE(calls.call(0).status.ok());
}

// Many producers, random cancellations and an executor finishing batches on its own thread:
// every job is answered exactly once.
TEST(BatcherTest, ExactlyOneAnswerUnderConcurrency) {
  FakeExecutor executor(3);
  Calls calls;
  BatcherOptions options = Options(std::chrono::microseconds(300));
  options.max_batch_requests = 8;
  Batcher batcher(options, {&executor}, nullptr);
  std::atomic<bool> stop{false};
  std::thread finisher([&] {
    size_t index = 0;
    while (!stop) {
      if (executor.WaitForBatch(index, 20ms) != nullptr) {
        executor.FinishOldest(index % 7 == 3 ? absl::InternalError("injected") : absl::OkStatus());
        ++index;
      }
    }
  });
  constexpr int kProducers = 4, kPerProducer = 60;
  std::vector<std::thread> producers;
  for (int t = 0; t < kProducers; ++t) {
    producers.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < kPerProducer; ++i) {
        std::unique_ptr<Job> job =
            calls.NewJob(Small(1 + static_cast<int>(rng() % 16), rng() % 2 ? 16 : 32));
        const uint64_t id = job->request->request_id();
        ASSERT_TRUE(batcher.Enqueue(job).ok());
        if (rng() % 5 == 0) {
          calls.call(id).cancelled = true;
          batcher.NotifyCancelled();
        }
      }
    });
  }
  for (auto& p : producers) p.join();
  ASSERT_TRUE(calls.WaitAnswered(kProducers * kPerProducer));
  stop = true;
  finisher.join();
  batcher.Shutdown();
  calls.ExpectEachAnsweredOnce();
}

// The host-clock stage histograms come from the executor's milestones: each is observed once per
// batch with the interval between two milestones, and a milestone the executor did not record
// (the fake executor records none) observes nothing.
TEST(BatcherTest, FinishBatchObservesTheHostStagesBetweenTheExecutorsMilestones) {
  auto registry = std::make_shared<prometheus::Registry>();
  Metrics metrics(registry, BuildInfo{"1", "abc", "", "cpu", "test"}, 1, true);
  const auto stage = [&registry](const std::string& name) {
    for (const prometheus::MetricFamily& family : registry->Collect()) {
      if (family.name != "attention_stage_duration_seconds") continue;
      for (const prometheus::ClientMetric& m : family.metric) {
        for (const prometheus::ClientMetric::Label& label : m.label) {
          if (label.name == "stage" && label.value == name) {
            return std::make_pair(m.histogram.sample_count, m.histogram.sample_sum);
          }
        }
      }
    }
    ADD_FAILURE() << "no stage " << name;
    return std::make_pair(uint64_t{0}, 0.0);
  };
  FakeExecutor executor(2);
  Calls calls;
  Batcher batcher(Options(), {&executor}, &metrics);
  // Milestones unset: only the answer stage (timed by FinishBatch itself) and queue_wait.
  Enqueue(batcher, calls.NewJob(Small()));
  ASSERT_NE(executor.WaitForBatch(0), nullptr);
  executor.FinishOldest();
  ASSERT_TRUE(calls.WaitAnswered(1));
  for (const char* name : {"staging", "device", "scatter"})
    EXPECT_EQ(stage(name).first, 0u) << name;
  EXPECT_EQ(stage("answer").first, 1u);
  EXPECT_EQ(stage("queue_wait").first, 1u);

  Enqueue(batcher, calls.NewJob(Small()));
  Batch* batch = executor.WaitForBatch(1);
  ASSERT_NE(batch, nullptr);
  const Clock::time_point t0 = Clock::now();
  batch->timings.started = t0;
  batch->timings.staged = t0 + 1ms;
  batch->timings.device_done = t0 + 3ms;
  batch->timings.scattered = t0 + 3500us;
  std::unique_ptr<Batch> owned = executor.TakeOldest();
  FinishBatch(std::move(owned), absl::OkStatus());
  ASSERT_TRUE(calls.WaitAnswered(2));
  EXPECT_EQ(stage("staging").first, 1u);
  EXPECT_DOUBLE_EQ(stage("staging").second, 1e-3);
  EXPECT_EQ(stage("device").first, 1u);
  EXPECT_DOUBLE_EQ(stage("device").second, 2e-3);
  EXPECT_EQ(stage("scatter").first, 1u);
  EXPECT_DOUBLE_EQ(stage("scatter").second, 0.5e-3);
  EXPECT_EQ(stage("answer").first, 2u);
  calls.ExpectEachAnsweredOnce();
}

}  // namespace
}  // namespace attention::server

namespace attention::server {
namespace {

// gRPC cancels a call when its deadline passes, so an expired job is usually marked cancelled
// too: its caller saw DEADLINE_EXCEEDED, and so must the answer (and the metrics counting it).
// Before issue 26 the cancel flag was asked first and the job was answered CANCELLED.
TEST(BatcherTest, ExpiredJobMarkedCancelledIsAnsweredDeadlineExceeded) {
  FakeExecutor executor(1);
  Calls calls;
  Batcher batcher(Options(), {&executor}, nullptr);
  Enqueue(batcher, calls.NewJob(Small()));
  ASSERT_NE(executor.WaitForBatch(0), nullptr);
  Enqueue(batcher, calls.NewJob(Small(), Clock::now() + 20ms));
  std::this_thread::sleep_for(40ms);
  calls.call(1).cancelled.store(true);  // what the call's OnCancel does at its deadline
  batcher.NotifyCancelled();
  ASSERT_TRUE(calls.WaitAnswered(1));
  EXPECT_EQ(calls.call(1).status.code(), absl::StatusCode::kDeadlineExceeded)
      << calls.call(1).status;
  executor.FinishOldest();
  ASSERT_TRUE(calls.WaitAnswered(2));
  calls.ExpectEachAnsweredOnce();
}

// The queue holds at most max_queue_work of estimated work: one caller's large requests cannot
// make everyone else wait behind an unbounded amount of it.
TEST(BatcherTest, QueueWorkBound) {
  FakeExecutor executor(1);
  Calls calls;
  BatcherOptions options = Options();
  std::unique_ptr<Job> probe = calls.NewJob(Small());
  const double work = probe->spec.work;
  ASSERT_GT(work, 0);
  options.max_queue_work = 2.5 * work;
  Batcher batcher(options, {&executor}, nullptr);
  Enqueue(batcher, std::move(probe));  // launched at once: not queued
  ASSERT_NE(executor.WaitForBatch(0), nullptr);
  Enqueue(batcher, calls.NewJob(Small()));
  Enqueue(batcher, calls.NewJob(Small()));
  std::unique_ptr<Job> over = calls.NewJob(Small());
  absl::Status status = batcher.Enqueue(over);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(status.message().find("queue full"), absl::string_view::npos) << status;
  EXPECT_NE(status.message().find("--max_queue_gflop"), absl::string_view::npos) << status;
  EXPECT_NE(over, nullptr);
  // A request above the whole bound can never be queued.
  std::unique_ptr<Job> too_big = calls.NewJob(Small(32));
  ASSERT_GT(too_big->spec.work, options.max_queue_work);
  status = batcher.Enqueue(too_big);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(status.message().find("more than the queue's bound"), absl::string_view::npos)
      << status;
  executor.FinishOldest();
  ASSERT_NE(executor.WaitForBatch(1), nullptr);
  executor.FinishOldest();
  ASSERT_TRUE(calls.WaitAnswered(3));
  // The queue is empty again: work fits.
  Enqueue(batcher, std::move(over));
  ASSERT_NE(executor.WaitForBatch(2), nullptr);
  executor.FinishOldest();
  ASSERT_TRUE(calls.WaitAnswered(4));
  for (uint64_t id : {0, 1, 2, 3}) EXPECT_EQ(calls.call(id).answers, 1) << "request " << id;
  EXPECT_EQ(calls.call(4).answers, 0);  // refused: the caller answers it
}

// A launch holds at most max_batch_work (the per-request limit), so no batch runs longer than the
// largest request may; a bucket holding that much is full and launches without waiting.
TEST(BatcherTest, BatchWorkBoundSplitsBatches) {
  FakeExecutor executor(1);
  Calls calls;
  BatcherOptions options = Options();
  std::unique_ptr<Job> first = calls.NewJob(Small());
  options.max_batch_work = 2 * first->spec.work;
  Batcher batcher(options, {&executor}, nullptr);
  Enqueue(batcher, std::move(first));
  ASSERT_NE(executor.WaitForBatch(0), nullptr);
  for (int i = 0; i < 3; ++i) Enqueue(batcher, calls.NewJob(Small()));
  executor.FinishOldest();
  Batch* batch = executor.WaitForBatch(1);
  ASSERT_NE(batch, nullptr);
  EXPECT_EQ(batch->jobs.size(), 2u);
  executor.FinishOldest();
  batch = executor.WaitForBatch(2);
  ASSERT_NE(batch, nullptr);
  EXPECT_EQ(batch->jobs.size(), 1u);
  executor.FinishOldest();
  ASSERT_TRUE(calls.WaitAnswered(4));
  calls.ExpectEachAnsweredOnce();
}

}  // namespace
}  // namespace attention::server
