// OutputPool: answers' buffers come back resident, of the size asked for, within the pool's
// bound, and the pool stays consistent when many threads take and give at once.
#include "server/output_pool.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace attention::server {
namespace {

constexpr size_t kKiB = 1024;

TEST(OutputPoolTest, AGivenBufferIsTakenAgainForTheSameSize) {
  OutputPool pool(int64_t{4} << 20);
  std::string first = pool.Take(256 * kKiB);
  ASSERT_EQ(first.size(), 256 * kKiB);
  const char* buffer = first.data();
  pool.Give(std::move(first));
  EXPECT_EQ(pool.kept_bytes(), static_cast<int64_t>(256 * kKiB));
  const std::string second = pool.Take(256 * kKiB);
  EXPECT_EQ(second.data(), buffer);
  EXPECT_EQ(second.size(), 256 * kKiB);
  EXPECT_EQ(pool.kept_bytes(), 0);
  EXPECT_EQ(pool.reused(), 1);
}

TEST(OutputPoolTest, ASmallerAnswerReusesABufferUpToTwiceItsSize) {
  OutputPool pool(int64_t{4} << 20);
  std::string big = pool.Take(256 * kKiB);
  const char* buffer = big.data();
  pool.Give(std::move(big));
  std::string smaller = pool.Take(200 * kKiB);
  EXPECT_EQ(smaller.data(), buffer);
  EXPECT_EQ(smaller.size(), 200 * kKiB);
  pool.Give(std::move(smaller));  // keeps its 256 KiB capacity
  EXPECT_EQ(pool.kept_bytes(), static_cast<int64_t>(256 * kKiB));
  const std::string much_smaller = pool.Take(100 * kKiB);  // 256 > 2 x 100: a new buffer
  EXPECT_NE(much_smaller.data(), buffer);
  EXPECT_EQ(much_smaller.size(), 100 * kKiB);
  EXPECT_EQ(pool.kept_bytes(), static_cast<int64_t>(256 * kKiB));
  EXPECT_EQ(pool.reused(), 1);
}

TEST(OutputPoolTest, AGrownBufferKeepsWhatWasWrittenBeforeTheGrowth) {
  OutputPool pool(int64_t{4} << 20);
  std::string s = pool.Take(512 * kKiB);
  pool.Give(std::move(s));
  std::string a = pool.Take(300 * kKiB);
  std::memset(a.data(), 0x5a, a.size());
  pool.Give(std::move(a));
  const std::string b = pool.Take(400 * kKiB);  // same buffer, 100 KiB longer
  ASSERT_EQ(b.size(), 400 * kKiB);
  EXPECT_EQ(static_cast<unsigned char>(b[300 * kKiB - 1]), 0x5a);
}

TEST(OutputPoolTest, KeptBytesStayWithinTheCapacity) {
  OutputPool pool(600 * kKiB);
  std::vector<std::string> buffers;
  for (int i = 0; i < 3; ++i) buffers.push_back(pool.Take(256 * kKiB));
  for (std::string& b : buffers) pool.Give(std::move(b));
  EXPECT_EQ(pool.kept_bytes(), static_cast<int64_t>(512 * kKiB));  // the third was freed
  pool.SetCapacity(300 * kKiB);
  EXPECT_EQ(pool.kept_bytes(), static_cast<int64_t>(256 * kKiB));
  pool.SetCapacity(0);
  EXPECT_EQ(pool.kept_bytes(), 0);
  pool.Give(pool.Take(256 * kKiB));
  EXPECT_EQ(pool.kept_bytes(), 0);
}

TEST(OutputPoolTest, SmallBuffersAreNotKept) {
  OutputPool pool(int64_t{4} << 20);
  pool.Give(std::string(OutputPool::kMinKeptBytes / 2, 'x'));
  EXPECT_EQ(pool.kept_bytes(), 0);
  EXPECT_EQ(pool.Take(1000).size(), 1000u);
  EXPECT_EQ(pool.reused(), 0);
}

TEST(OutputPoolTest, ThreadsTakingAndGivingAtOnce) {
  OutputPool pool(int64_t{2} << 20);
  std::vector<std::thread> threads;
  std::vector<int> wrong_size(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&pool, &wrong_size, t] {
      for (int i = 0; i < 2000; ++i) {
        const size_t bytes = (64 + 64 * ((i + t) % 4)) * kKiB;
        std::string b = pool.Take(bytes);
        if (b.size() != bytes) ++wrong_size[t];
        b[0] = static_cast<char>(t);
        b[bytes - 1] = static_cast<char>(i);
        pool.Give(std::move(b));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(wrong_size[t], 0) << "thread " << t;
  EXPECT_LE(pool.kept_bytes(), int64_t{2} << 20);
  EXPECT_GT(pool.reused(), 0);
}

}  // namespace
}  // namespace attention::server
