// The CPU backend's cooperative stop (CpuBackend::Run with should_stop) and the thread pool's
// ParallelForUntil under it: a stop frees every thread within one work item, however much work
// is left, and a run that is never stopped computes what Run(p) does.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/attention_params.h"
#include "kernels/cpu/attention_cpu.h"
#include "kernels/cpu/thread_pool.h"

namespace attention::cpu {
namespace {

TEST(ThreadPoolTest, ParallelForUntilClaimsNothingAfterAStop) {
  for (int threads : {1, 2, 4}) {
    ThreadPool pool(threads);
    constexpr int64_t kItems = 1 << 20;
    constexpr int64_t kStopAt = 1000;
    std::atomic<int64_t> calls{0};
    const bool finished = pool.ParallelForUntil(kItems, [&](int64_t i) {
      calls.fetch_add(1);
      return i < kStopAt;
    });
    EXPECT_FALSE(finished);
    // Indices are claimed in order: every index up to the stop ran, and after it at most one
    // claim per thread was already made.
    EXPECT_GE(calls.load(), kStopAt + 1);
    EXPECT_LE(calls.load(), kStopAt + 1 + threads) << threads << " threads";
    // A loop that never stops runs every index once.
    std::vector<std::atomic<int>> seen(4096);
    EXPECT_TRUE(pool.ParallelForUntil(4096, [&](int64_t i) {
      seen[i].fetch_add(1);
      return true;
    }));
    for (const auto& s : seen) ASSERT_EQ(s.load(), 1);
  }
}

// One head of `seqlen` x `seqlen` float32 scores at head_dim 64: seqlen / 64 work items of
// 64 (or 128) query rows each, every one against all `seqlen` keys.
struct Problem {
  int seqlen;
  std::vector<float> q, k, v, o;
  AttentionParams p;
  explicit Problem(int n) : seqlen(n) {
    const int d = 64;
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    for (auto* t : {&q, &k, &v}) {
      t->resize(static_cast<size_t>(n) * d);
      for (float& x : *t) x = u(rng);
    }
    o.assign(static_cast<size_t>(n) * d, 0.f);
    p.dtype = DType::kFloat32;
    p.head_dim = d;
    p.q_heads = p.kv_heads = 1;
    p.softmax_scale = 0.125f;
    p.batch = 1;
    p.seqlen_q = p.seqlen_k = n;
    p.q = q.data();
    p.k = k.data();
    p.v = v.data();
    p.o = o.data();
    SetContiguousStrides(p);
  }
};

TEST(CpuBackendStopTest, NeverStoppedEqualsRun) {
  CpuBackend backend(2);
  Problem a(1000), b(1000);
  ASSERT_TRUE(backend.Run(a.p).ok());
  ASSERT_TRUE(backend.Run(b.p, [] { return false; }).ok());
  EXPECT_EQ(std::memcmp(a.o.data(), b.o.data(), a.o.size() * sizeof(float)), 0);
}

TEST(CpuBackendStopTest, StopIsAskedBeforeEveryItemAndEndsTheRunWithinOneItemPerThread) {
  for (int threads : {1, 2}) {
    CpuBackend backend(threads);
    Problem problem(64 * 256);  // at least 128 work items
    std::atomic<int> asked{0};
    constexpr int kStopAfter = 5;
    const absl::Status status =
        backend.Run(problem.p, [&] { return asked.fetch_add(1) >= kStopAfter; });
    EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
    // kStopAfter items ran; then each thread asked once more at most.
    EXPECT_LE(asked.load(), kStopAfter + 1 + threads);
  }
}

// The stop frees the cores promptly in wall-clock terms too: a run of ~4096 items is stopped
// 20 ms in and returns long before it would have finished.
TEST(CpuBackendStopTest, AStopFreesTheCoresLongBeforeTheEnd) {
  CpuBackend backend(2);
  Problem problem(1 << 15);  // 2^30 scores at head_dim 64: seconds of work on two cores
  const auto start = std::chrono::steady_clock::now();
  const auto stop_at = start + std::chrono::milliseconds(20);
  const absl::Status status =
      backend.Run(problem.p, [&] { return std::chrono::steady_clock::now() >= stop_at; });
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - stop_at).count();
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
  // One item is 128 rows x 32768 keys x (4 x 64 + 32) flops = 1.2 GFLOP: ~10 ms on one of this
  // VM's cores, 0.1 s on a very slow or busy one. The whole run is ~100 times that.
  EXPECT_LT(seconds, 1.0);
}

}  // namespace
}  // namespace attention::cpu
