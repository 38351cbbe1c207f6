// An Attend's k_new / v_new between the session service, the batcher and an executor
// (PendingRows, server/executor.h), on a host pool and a fake executor whose batches the test
// holds and finishes by hand: who writes the rows and when (the batcher before Submit for an
// executor without a way of its own, the executor itself otherwise, the service when the job
// comes back without them), that the session's next call waits for them, that a queued Attend's
// rows stay appended whatever happens to its attention (attention.proto, AttendRequest), that
// rows which cannot be written at all leave the session as it was, and the old order
// (append_in_stream off: the service writes before queueing).
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "server/batcher.h"
#include "server/executor.h"
#include "server/session/page_storage.h"
#include "server/session/session_store.h"
#include "server/session_service.h"
#include "server/session_validation.h"

namespace attention::server {
namespace {

using namespace std::chrono_literals;

// Generous bound for anything that should happen "at once" on a loaded 2-core machine.
constexpr auto kPrompt = 5s;

// 2 KV heads x 16 x float32: 128-byte rows, 16 tokens per 4 KiB page.
constexpr int kKvHeads = 2, kHeadDim = 16, kQHeads = 4;
constexpr int64_t kRowBytes = int64_t{kKvHeads} * kHeadDim * 4;
constexpr int64_t kPageBytes = 4096;
constexpr int64_t kPrefill = 20;
const std::string kReplica = "replica-0";

// A host pool whose writes the test counts and can make fail (a device that failed).
class CountingStorage final : public session::PageStorage {
 public:
  explicit CountingStorage(std::unique_ptr<session::PageStorage> inner)
      : inner_(std::move(inner)) {}
  int64_t page_bytes() const override { return inner_->page_bytes(); }
  int32_t num_pages() const override { return inner_->num_pages(); }
  void* base() const override { return inner_->base(); }
  bool host_resident() const override { return true; }
  absl::Status CopyPage(int32_t src, int32_t dst, int64_t half_bytes) override {
    return inner_->CopyPage(src, dst, half_bytes);
  }
  absl::Status WriteRows(const session::PageLayout& layout, absl::Span<const int32_t> slots,
                         const void* k, const void* v) override {
    writes.fetch_add(1);
    if (fail_writes.load()) return absl::InternalError("device write failed");
    return inner_->WriteRows(layout, slots, k, v);
  }
  std::atomic<int> writes{0};
  std::atomic<bool> fail_writes{false};

 private:
  std::unique_ptr<session::PageStorage> inner_;
};

// Holds every submitted batch until the test finishes it, one at a time (pipeline depth 1: while
// it holds one, the batcher queues the rest). `writes_rows`: whether it claims to write its jobs'
// pending rows itself (as the GPU executor does, on its stream).
class HoldingExecutor final : public Executor {
 public:
  explicit HoldingExecutor(bool writes_rows) : writes_rows_(writes_rows) {}
  const std::string& device() const override { return name_; }
  int pipeline_depth() const override { return 1; }
  int64_t max_batch_bytes() const override { return int64_t{1} << 30; }
  absl::Status Admit(const Job&) const override { return absl::OkStatus(); }
  bool writes_pending_rows() const override { return writes_rows_; }
  void Submit(std::unique_ptr<Batch> batch) override {
    std::lock_guard<std::mutex> lock(mu_);
    batches_.push_back(std::move(batch));
    cv_.notify_all();
  }
  void Shutdown() override {}

  // The oldest batch not yet finished, once there is one (null after kPrompt).
  Batch* WaitForBatch() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, kPrompt, [this] { return !batches_.empty(); });
    return batches_.empty() ? nullptr : batches_.front().get();
  }
  // Finishes the oldest batch with `status`, first writing its pending rows if `write_rows` (what
  // an executor that writes them does before its kernel).
  void FinishOldest(const absl::Status& status, bool write_rows) {
    std::unique_ptr<Batch> batch;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ASSERT_FALSE(batches_.empty());
      batch = std::move(batches_.front());
      batches_.pop_front();
    }
    if (write_rows) {
      EXPECT_TRUE(WritePendingRows(*batch).ok());
    }
    batch->device = name_;
    batch->timings.started = Clock::now();
    FinishBatch(std::move(batch), status);
  }
  // Fails every batch still held (a test that stopped early), so that the batcher can shut down.
  void FailAll() {
    while (true) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (batches_.empty()) return;
      }
      FinishOldest(absl::AbortedError("the test ended"), /*write_rows=*/false);
    }
  }

 private:
  const bool writes_rows_;
  const std::string name_ = "holding";
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Batch>> batches_;
};

// A call the test owns: Done records the status once.
class TestCall final : public SessionCall {
 public:
  void Done(const absl::Status& status) override {
    std::lock_guard<std::mutex> lock(mu_);
    EXPECT_FALSE(status_.has_value()) << "answered twice";
    status_ = status;
    cv_.notify_all();
  }
  // The answer, once given (nullopt after `timeout`).
  std::optional<absl::Status> Wait(std::chrono::milliseconds timeout = kPrompt) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [this] { return status_.has_value(); });
    return status_;
  }
  bool answered() {
    std::lock_guard<std::mutex> lock(mu_);
    return status_.has_value();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<absl::Status> status_;
};

std::string RandomRows(int64_t rows, std::mt19937& rng) {
  std::uniform_real_distribution<float> value(-1.f, 1.f);
  std::vector<float> values(static_cast<size_t>(rows * kKvHeads * kHeadDim));
  for (float& x : values) x = value(rng);
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
}

void SetTensor(v1::Tensor* t, const std::vector<int64_t>& shape, std::string data) {
  t->set_dtype(v1::FLOAT32);
  for (int64_t d : shape) t->add_shape(d);
  t->set_data(std::move(data));
}

class SessionAppendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* in_stream = std::getenv("ATTN_APPEND_IN_STREAM");
    if (in_stream != nullptr && std::string(in_stream) == "0") {
      GTEST_SKIP() << "ATTN_APPEND_IN_STREAM=0 forces the old order on every service";
    }
  }

  // Starts the store, batcher and service over an executor that writes rows itself or not.
  void Start(bool executor_writes_rows, bool append_in_stream = true) {
    session::PoolOptions pool;
    pool.page_bytes = kPageBytes;
    pool.num_pages = 64;
    absl::StatusOr<std::unique_ptr<session::HostPageStorage>> host =
        session::HostPageStorage::Create(pool);
    ASSERT_TRUE(host.ok()) << host.status();
    auto counting = std::make_unique<CountingStorage>(*std::move(host));
    storage_ = counting.get();
    std::vector<std::unique_ptr<session::PageStorage>> storages;
    storages.push_back(std::move(counting));
    session::StoreOptions store_options;
    store_options.sweep_interval = absl::ZeroDuration();
    absl::StatusOr<std::unique_ptr<session::SessionStore>> store =
        session::SessionStore::Create(store_options, std::move(storages));
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    executor_ = std::make_unique<HoldingExecutor>(executor_writes_rows);
    batcher_ = std::make_unique<Batcher>(BatcherOptions{}, std::vector<Executor*>{executor_.get()},
                                         nullptr);
    SessionServiceOptions options;
    options.replica = kReplica;
    options.append_in_stream = append_in_stream;
    service_ = std::make_unique<SessionServiceImpl>(options, store_.get(), batcher_.get(), nullptr);

    session::SessionSpec spec;
    spec.layers = 1;
    spec.kv_heads = kKvHeads;
    spec.head_dim = kHeadDim;
    spec.dtype = DType::kFloat32;
    absl::StatusOr<session::SessionId> id = store_->CreateSession(spec);
    ASSERT_TRUE(id.ok()) << id.status();
    id_ = *id;
    k_ = RandomRows(kPrefill, rng_);
    v_ = RandomRows(kPrefill, rng_);
    ASSERT_TRUE(store_->AppendRows(id_, 0, kPrefill, k_.data(), v_.data()).ok());
    prefill_writes_ = storage_->writes.load();
  }

  void TearDown() override {
    // The batcher goes before the store (its jobs hold views and turns).
    if (executor_ != nullptr) executor_->FailAll();
    if (batcher_ != nullptr) batcher_->Shutdown();
    service_.reset();
    batcher_.reset();
    store_.reset();
  }

  // A decode step (one new row) of the session, run through the service; the rows it sends are
  // added to k_ / v_ only by the test, once it expects them in the session.
  std::unique_ptr<TestCall> Attend(std::string* k_row, std::string* v_row,
                                   const std::atomic<bool>* cancelled = nullptr) {
    auto call = std::make_unique<TestCall>();
    v1::AttendRequest* a = call->request.mutable_attend();
    a->set_session_id(SessionIdText(id_, kReplica));
    a->set_layer(0);
    std::uniform_real_distribution<float> value(-1.f, 1.f);
    std::vector<float> q(static_cast<size_t>(kQHeads * kHeadDim));
    for (float& x : q) x = value(rng_);
    SetTensor(a->mutable_q(), {1, kQHeads, kHeadDim},
              std::string(reinterpret_cast<const char*>(q.data()), q.size() * sizeof(float)));
    *k_row = RandomRows(1, rng_);
    *v_row = RandomRows(1, rng_);
    SetTensor(a->mutable_k_new(), {1, kKvHeads, kHeadDim}, *k_row);
    SetTensor(a->mutable_v_new(), {1, kKvHeads, kHeadDim}, *v_row);
    a->set_causal(true);
    call->accepted = Clock::now();
    call->cancelled = cancelled;
    service_->Run(call.get());
    return call;
  }

  // An Append of one row through the service.
  std::unique_ptr<TestCall> AppendOne(std::string* k_row, std::string* v_row) {
    auto call = std::make_unique<TestCall>();
    v1::AppendRequest* a = call->request.mutable_append();
    a->set_session_id(SessionIdText(id_, kReplica));
    a->set_layer(0);
    *k_row = RandomRows(1, rng_);
    *v_row = RandomRows(1, rng_);
    SetTensor(a->mutable_k(), {1, kKvHeads, kHeadDim}, *k_row);
    SetTensor(a->mutable_v(), {1, kKvHeads, kHeadDim}, *v_row);
    call->accepted = Clock::now();
    service_->Run(call.get());
    return call;
  }

  int64_t Tokens() {
    absl::StatusOr<session::SessionInfo> info = store_->GetSession(id_);
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? info->tokens[0] : -1;
  }

  // Whether the session's K and V rows in the pool are exactly k_ and v_ (and as many).
  ::testing::AssertionResult PoolHoldsTheHistory() {
    absl::StatusOr<session::ReadView> view = store_->View(id_, 0);
    if (!view.ok()) return ::testing::AssertionFailure() << view.status();
    const int64_t tokens = static_cast<int64_t>(k_.size()) / kRowBytes;
    if (view->tokens() != tokens) {
      return ::testing::AssertionFailure()
             << "the session holds " << view->tokens() << " tokens, the history " << tokens;
    }
    const session::PageLayout& layout = view->layout();
    const char* base = static_cast<const char*>(view->base());
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t page = view->page_table()[static_cast<size_t>(t / layout.page_size)];
      const int64_t row = t % layout.page_size;
      if (std::memcmp(base + layout.k_row_offset(page, row), k_.data() + t * kRowBytes,
                      kRowBytes) != 0 ||
          std::memcmp(base + layout.v_row_offset(page, row), v_.data() + t * kRowBytes,
                      kRowBytes) != 0) {
        return ::testing::AssertionFailure() << "token " << t << " differs from the history";
      }
    }
    return ::testing::AssertionSuccess();
  }

  std::mt19937 rng_{20261206};
  CountingStorage* storage_ = nullptr;
  std::unique_ptr<session::SessionStore> store_;
  std::unique_ptr<HoldingExecutor> executor_;
  std::unique_ptr<Batcher> batcher_;
  std::unique_ptr<SessionServiceImpl> service_;
  session::SessionId id_;
  int prefill_writes_ = 0;
  std::string k_, v_;  // the session's history as the test expects it
};

TEST_F(SessionAppendTest, AnExecutorWithoutAWayOfItsOwnGetsTheRowsWrittenBeforeSubmit) {
  Start(/*executor_writes_rows=*/false);
  std::string k, v;
  std::unique_ptr<TestCall> step = Attend(&k, &v);
  Batch* batch = executor_->WaitForBatch();
  ASSERT_NE(batch, nullptr);
  ASSERT_EQ(batch->jobs.size(), 1u);
  const PendingRows& rows = batch->jobs[0]->paged->rows;
  EXPECT_EQ(rows.slots.size(), 1u);
  EXPECT_TRUE(rows.written);
  EXPECT_EQ(storage_->writes.load(), prefill_writes_ + 1);
  // In the pool before the batch runs: the attention reads them.
  k_ += k;
  v_ += v;
  EXPECT_EQ(batch->jobs[0]->paged->view.tokens(), kPrefill + 1);
  executor_->FinishOldest(absl::OkStatus(), /*write_rows=*/false);
  ASSERT_TRUE(step->Wait().has_value());
  EXPECT_TRUE(step->Wait()->ok()) << *step->Wait();
  EXPECT_EQ(storage_->writes.load(), prefill_writes_ + 1) << "the rows were written twice";
  EXPECT_TRUE(PoolHoldsTheHistory());
}

TEST_F(SessionAppendTest, AnExecutorThatWritesTheRowsGetsThemPendingAndTheNextCallWaits) {
  Start(/*executor_writes_rows=*/true);
  std::string k1, v1_row, k2, v2;
  std::unique_ptr<TestCall> step = Attend(&k1, &v1_row);
  Batch* batch = executor_->WaitForBatch();
  ASSERT_NE(batch, nullptr);
  const PendingRows& rows = batch->jobs[0]->paged->rows;
  ASSERT_EQ(rows.slots.size(), 1u);
  EXPECT_FALSE(rows.written);
  EXPECT_EQ(storage_->writes.load(), prefill_writes_) << "written before the executor ran";
  // The view already counts the reserved row: the attention reads it once the executor wrote it.
  EXPECT_EQ(batch->jobs[0]->paged->view.tokens(), kPrefill + 1);
  // The session's next call waits for the step's turn.
  std::unique_ptr<TestCall> append = AppendOne(&k2, &v2);
  EXPECT_FALSE(append->Wait(100ms).has_value()) << "the Append ran inside the Attend's turn";
  executor_->FinishOldest(absl::OkStatus(), /*write_rows=*/true);
  ASSERT_TRUE(step->Wait().has_value());
  EXPECT_TRUE(step->Wait()->ok()) << *step->Wait();
  ASSERT_TRUE(append->Wait().has_value());
  EXPECT_TRUE(append->Wait()->ok()) << *append->Wait();
  EXPECT_EQ(append->response.append().tokens(), kPrefill + 2);
  k_ += k1 + k2;
  v_ += v1_row + v2;
  EXPECT_TRUE(PoolHoldsTheHistory());
}

TEST_F(SessionAppendTest, ABatchThatFailsBeforeWritingTheRowsStillAppendsThem) {
  // Once queued, k_new / v_new stay appended whatever happens to the attention (attention.proto):
  // the service writes them when the job comes back without them, within the turn.
  Start(/*executor_writes_rows=*/true);
  std::string k, v;
  std::unique_ptr<TestCall> step = Attend(&k, &v);
  ASSERT_NE(executor_->WaitForBatch(), nullptr);
  executor_->FinishOldest(absl::InternalError("the launch failed"), /*write_rows=*/false);
  ASSERT_TRUE(step->Wait().has_value());
  EXPECT_EQ(step->Wait()->code(), absl::StatusCode::kInternal);
  EXPECT_EQ(Tokens(), kPrefill + 1);
  k_ += k;
  v_ += v;
  EXPECT_TRUE(PoolHoldsTheHistory());
}

TEST_F(SessionAppendTest, AStepDroppedByTheBatcherBeforeLaunchKeepsItsRows) {
  Start(/*executor_writes_rows=*/true);
  // Another session's step keeps the executor busy, so the step below waits in the queue.
  session::SessionSpec spec;
  spec.layers = 1;
  spec.kv_heads = kKvHeads;
  spec.head_dim = kHeadDim;
  spec.dtype = DType::kFloat32;
  absl::StatusOr<session::SessionId> other = store_->CreateSession(spec);
  ASSERT_TRUE(other.ok());
  const session::SessionId mine = id_;
  id_ = *other;
  std::string ko, vo;
  std::unique_ptr<TestCall> busy = Attend(&ko, &vo);
  ASSERT_NE(executor_->WaitForBatch(), nullptr);
  id_ = mine;
  std::atomic<bool> cancelled{false};
  std::string k, v;
  std::unique_ptr<TestCall> step = Attend(&k, &v, &cancelled);
  EXPECT_FALSE(step->Wait(50ms).has_value()) << "the step did not wait in the queue";
  EXPECT_EQ(batcher_->queued_requests(), 1);
  cancelled.store(true);
  batcher_->NotifyCancelled();
  ASSERT_TRUE(step->Wait().has_value());
  EXPECT_EQ(step->Wait()->code(), absl::StatusCode::kCancelled);
  k_ += k;
  v_ += v;
  EXPECT_EQ(Tokens(), kPrefill + 1);
  EXPECT_TRUE(PoolHoldsTheHistory());
  executor_->FinishOldest(absl::OkStatus(), /*write_rows=*/true);
  ASSERT_TRUE(busy->Wait().has_value());
}

TEST_F(SessionAppendTest, RowsThatCannotBeWrittenAtAllAreTakenBack) {
  // A device that failed: neither the executor nor the service can write the rows. The session is
  // then as it was before the step (never holding rows that were not written), its pages too.
  Start(/*executor_writes_rows=*/true);
  const int32_t pages_before = store_->counters().pools[0].pages_used;
  // 20 tokens fill 2 pages of 16; the step's row opens no page, so take 12 more steps' worth of
  // room first: 32 tokens, then the failing step opens the third page.
  std::string k12 = RandomRows(12, rng_), v12 = RandomRows(12, rng_);
  ASSERT_TRUE(store_->AppendRows(id_, 0, 12, k12.data(), v12.data()).ok());
  k_ += k12;
  v_ += v12;
  EXPECT_EQ(store_->counters().pools[0].pages_used, pages_before);
  storage_->fail_writes.store(true);
  std::string k, v;
  std::unique_ptr<TestCall> step = Attend(&k, &v);
  Batch* batch = executor_->WaitForBatch();
  ASSERT_NE(batch, nullptr);
  EXPECT_EQ(store_->counters().pools[0].pages_used, pages_before + 1);
  executor_->FinishOldest(absl::UnavailableError("the device failed"), /*write_rows=*/false);
  ASSERT_TRUE(step->Wait().has_value());
  EXPECT_EQ(step->Wait()->code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Tokens(), kPrefill + 12);
  EXPECT_EQ(store_->counters().pools[0].pages_used, pages_before);
  storage_->fail_writes.store(false);
  EXPECT_TRUE(PoolHoldsTheHistory());
}

TEST_F(SessionAppendTest, WithAppendInStreamOffTheServiceWritesTheRowsBeforeQueueing) {
  Start(/*executor_writes_rows=*/true, /*append_in_stream=*/false);
  std::string k, v;
  std::unique_ptr<TestCall> step = Attend(&k, &v);
  Batch* batch = executor_->WaitForBatch();
  ASSERT_NE(batch, nullptr);
  EXPECT_TRUE(batch->jobs[0]->paged->rows.slots.empty()) << "rows were left to the executor";
  EXPECT_EQ(storage_->writes.load(), prefill_writes_ + 1);
  k_ += k;
  v_ += v;
  EXPECT_TRUE(PoolHoldsTheHistory());
  executor_->FinishOldest(absl::OkStatus(), /*write_rows=*/true);
  ASSERT_TRUE(step->Wait().has_value());
  EXPECT_TRUE(step->Wait()->ok()) << *step->Wait();
  EXPECT_EQ(storage_->writes.load(), prefill_writes_ + 1);
}

}  // namespace
}  // namespace attention::server
