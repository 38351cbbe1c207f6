// WorkerPool: every task runs exactly once per Run, concurrent callers each get all their tasks
// and none waits for another's, and Copy moves every byte whatever the piece size.
#include "server/worker_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

namespace attention::server {
namespace {

TEST(WorkerPoolTest, EveryTaskRunsExactlyOnce) {
  for (int threads : {0, 1, 3}) {
    WorkerPool pool(threads);
    for (size_t n : {size_t{0}, size_t{1}, size_t{2}, size_t{7}, size_t{100}, size_t{1000}}) {
      std::vector<std::atomic<int>> runs(n);
      pool.ParallelFor(n, [&runs](size_t i) { runs[i].fetch_add(1); });
      for (size_t i = 0; i < n; ++i) {
        ASSERT_EQ(runs[i].load(), 1) << "threads " << threads << " n " << n << " task " << i;
      }
    }
  }
}

TEST(WorkerPoolTest, ConcurrentCallersShareTheWorkersAndEachGetsAllItsTasks) {
  WorkerPool pool(3);
  constexpr int kCallers = 4;
  constexpr int kRounds = 200;
  std::vector<int64_t> sums(kCallers, 0);
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&pool, &sums, c] {
      for (int round = 0; round < kRounds; ++round) {
        std::atomic<int64_t> sum{0};
        const size_t n = static_cast<size_t>(1 + (round * 7 + c) % 40);
        pool.ParallelFor(n, [&sum](size_t i) { sum.fetch_add(static_cast<int64_t>(i) + 1); });
        // Run returned: every task of this call has finished.
        EXPECT_EQ(sum.load(), static_cast<int64_t>(n * (n + 1) / 2));
        sums[static_cast<size_t>(c)] += sum.load();
      }
    });
  }
  for (std::thread& t : callers) t.join();
  for (int c = 0; c < kCallers; ++c) EXPECT_GT(sums[static_cast<size_t>(c)], 0);
}

// A call whose tasks are all blocked (here: until a second caller's call has finished) holds
// neither the workers' other callers nor the pool: the second caller runs its own tasks.
TEST(WorkerPoolTest, ACallDoesNotWaitForAnotherCallersBlockedTasks) {
  WorkerPool pool(1);
  std::mutex mu;
  std::condition_variable cv;
  bool first_started = false, second_done = false;
  std::thread first([&] {
    pool.ParallelFor(2, [&](size_t) {
      std::unique_lock<std::mutex> lock(mu);
      first_started = true;
      cv.notify_all();
      // Both the worker and the first caller block here until the second call has returned.
      EXPECT_TRUE(cv.wait_for(lock, std::chrono::seconds(20), [&] { return second_done; }))
          << "the second caller's Run waited for the first's";
    });
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return first_started; });
  }
  std::atomic<int> ran{0};
  pool.ParallelFor(3, [&ran](size_t) { ran.fetch_add(1); });
  EXPECT_EQ(ran.load(), 3);
  {
    std::lock_guard<std::mutex> lock(mu);
    second_done = true;
  }
  cv.notify_all();
  first.join();
}

TEST(WorkerPoolTest, CopyMovesEveryByteForAnyPieceSize) {
  std::mt19937 rng(7);
  std::vector<char> src(1 << 20);
  for (char& b : src) b = static_cast<char>(rng());
  WorkerPool pool(2);
  for (int64_t piece : {int64_t{1} << 10, int64_t{4097}, int64_t{1} << 20, int64_t{8} << 20}) {
    std::vector<char> dst(src.size() + 64, 0x5a);
    // Three uneven spans, out of order, leaving a 64-byte gap at the end untouched.
    const std::vector<HostCopy> copies = {
        {dst.data() + 700000, src.data() + 700000, static_cast<int64_t>(src.size()) - 700000},
        {dst.data(), src.data(), 1},
        {dst.data() + 1, src.data() + 1, 699999},
    };
    pool.Copy(copies, piece);
    ASSERT_TRUE(std::equal(src.begin(), src.end(), dst.begin())) << "piece " << piece;
    for (size_t i = src.size(); i < dst.size(); ++i) ASSERT_EQ(dst[i], 0x5a);
  }
}

TEST(WorkerPoolTest, CopyGroupsManySmallSpansAndMovesEveryByte) {
  // A request's tensors as received: many small spans (and some empty ones), copied in an order
  // other than their destinations'.
  std::mt19937 rng(8);
  std::vector<char> src(3 << 20);
  for (char& b : src) b = static_cast<char>(rng());
  std::vector<HostCopy> copies;
  for (int64_t at = 0; at < static_cast<int64_t>(src.size());) {
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(src.size()) - at, 1 + rng() % 20000);
    copies.push_back({nullptr, src.data() + at, n});
    if (rng() % 7 == 0) copies.push_back({nullptr, src.data() + at, 0});
    at += n;
  }
  std::shuffle(copies.begin(), copies.end(), rng);
  for (int threads : {0, 3}) {
    WorkerPool pool(threads);
    for (int64_t piece : {int64_t{1} << 16, int64_t{2} << 20, int64_t{7}}) {
      std::vector<char> dst(src.size(), 0);
      for (HostCopy& c : copies) c.dst = dst.data() + (c.src - src.data());
      pool.Copy(copies, piece);
      ASSERT_TRUE(std::equal(src.begin(), src.end(), dst.begin()))
          << "threads " << threads << " piece " << piece;
    }
  }
}

}  // namespace
}  // namespace attention::server
