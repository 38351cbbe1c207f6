// Pieces every GPU test of the CUDA kernels repeats, for new tests to share: the run's random
// seed (fresh per run, printed, replayable with ATTN_TEST_SEED) and CUDA_OK, a gtest assertion
// on a CUDA runtime call.
#ifndef ATTENTION_TESTS_KERNELS_CUDA_CUDA_TEST_UTIL_H_
#define ATTENTION_TESTS_KERNELS_CUDA_CUDA_TEST_UTIL_H_

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace attention::cuda::testing {

// The seed of this run: ATTN_TEST_SEED when set, else the clock; printed once as
// "<test>: ATTN_TEST_SEED=<seed>" so that a failure can be replayed.
inline uint64_t TestSeed(const char* test) {
  static const uint64_t seed = [test] {
    const char* env = std::getenv("ATTN_TEST_SEED");
    const uint64_t s =
        env != nullptr
            ? std::strtoull(env, nullptr, 10)
            : static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    std::printf("%s: ATTN_TEST_SEED=%llu\n", test, static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

}  // namespace attention::cuda::testing

// Asserts that a CUDA runtime call succeeded, naming the call and the error.
#define CUDA_OK(expr)                                                          \
  do {                                                                         \
    const cudaError_t err_ = (expr);                                           \
    ASSERT_EQ(err_, cudaSuccess) << #expr << ": " << cudaGetErrorString(err_); \
  } while (0)

#endif  // ATTENTION_TESTS_KERNELS_CUDA_CUDA_TEST_UTIL_H_
