#include "server/metrics/process_collector.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "prometheus/metric_type.h"

namespace attention::server {
namespace {

namespace fs = std::filesystem;

// Collects and returns name -> (type, value) of each single-series family.
std::map<std::string, std::pair<prometheus::MetricType, double>> Values(
    const ProcessCollector& collector) {
  std::map<std::string, std::pair<prometheus::MetricType, double>> values;
  for (const prometheus::MetricFamily& f : collector.Collect()) {
    EXPECT_EQ(f.metric.size(), 1u) << f.name;
    EXPECT_FALSE(f.help.empty()) << f.name;
    if (f.metric.empty()) continue;
    const auto& m = f.metric.front();
    EXPECT_TRUE(m.label.empty()) << f.name;
    values[f.name] = {f.type,
                      f.type == prometheus::MetricType::Counter ? m.counter.value : m.gauge.value};
  }
  return values;
}

// A /proc/self/stat line: pid, (comm), then fields 3.. with the ones the collector reads set.
std::string StatLine(const std::string& comm, uint64_t utime, uint64_t stime, uint64_t start,
                     uint64_t vsize, int64_t rss) {
  std::string line = "4242 (" + comm + ") S";
  for (int field = 4; field <= 52; ++field) {
    line += " ";
    switch (field) {
      case 14:
        line += std::to_string(utime);
        break;
      case 15:
        line += std::to_string(stime);
        break;
      case 22:
        line += std::to_string(start);
        break;
      case 23:
        line += std::to_string(vsize);
        break;
      case 24:
        line += std::to_string(rss);
        break;
      default:
        line += std::to_string(field * 3);
    }
  }
  return line + "\n";
}

TEST(ParseProcStatTest, CountsFieldsFromTheLastParenthesis) {
  for (const std::string comm : {"attention_server", "a b", "x) y (z", ")", "((("}) {
    SCOPED_TRACE(comm);
    const auto stat = ParseProcStat(StatLine(comm, 123, 45, 9876543, 1 << 30, 2048));
    ASSERT_TRUE(stat.has_value());
    EXPECT_EQ(stat->utime_ticks, 123u);
    EXPECT_EQ(stat->stime_ticks, 45u);
    EXPECT_EQ(stat->starttime_ticks, 9876543u);
    EXPECT_EQ(stat->vsize_bytes, uint64_t{1} << 30);
    EXPECT_EQ(stat->rss_pages, 2048);
  }
}

TEST(ParseProcStatTest, RejectsMalformedText) {
  EXPECT_FALSE(ParseProcStat("").has_value());
  EXPECT_FALSE(ParseProcStat("4242 no parenthesis S 1 2 3").has_value());
  EXPECT_FALSE(ParseProcStat("4242 (short) S 1 2 3 4 5 6 7 8 9 10 11 12").has_value());
  std::string bad = StatLine("x", 1, 2, 3, 4, 5);
  bad.replace(bad.find(" 1 "), 3, " z ");  // utime not a number
  EXPECT_FALSE(ParseProcStat(bad).has_value());
}

TEST(ParseBootTimeTest, ReadsTheBtimeLine) {
  EXPECT_EQ(ParseBootTime("cpu  1 2 3\nintr 5\nbtime 1700000000\nprocesses 9\n"), 1700000000);
  EXPECT_EQ(ParseBootTime("btime 42"), 42);
  EXPECT_FALSE(ParseBootTime("cpu 1 2\nprocesses 9\n").has_value());
  EXPECT_FALSE(ParseBootTime("btime soon\n").has_value());
  EXPECT_FALSE(ParseBootTime("xbtime 5\n").has_value());
}

TEST(ParseMaxOpenFilesTest, ReadsTheSoftLimit) {
  const std::string limits =
      "Limit                     Soft Limit           Hard Limit           Units     \n"
      "Max processes             96365                96365                processes \n"
      "Max open files            20000                524288               files     \n";
  EXPECT_EQ(ParseMaxOpenFiles(limits), 20000);
  EXPECT_FALSE(ParseMaxOpenFiles("Max open files  unlimited  unlimited  files\n").has_value());
  EXPECT_FALSE(ParseMaxOpenFiles("Max processes 5 5 processes\n").has_value());
}

class FakeProcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/attention_fake_proc_XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    root_ = pattern;
    fs::create_directories(root_ / "self" / "fd");
  }
  void TearDown() override { fs::remove_all(root_); }
  void Write(const fs::path& relative, const std::string& text) {
    std::ofstream(root_ / relative) << text;
  }
  fs::path root_;
};

TEST_F(FakeProcTest, ExportsExactValuesFromTheFiles) {
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  Write("self/stat", StatLine("fake (server)", 250, 150, 5 * 100, 777777, 1000));
  Write("stat", "cpu 1 2 3\nbtime 1600000000\n");
  Write("self/limits",
        "Max open files            4096                 8192                 files\n");
  for (int fd = 1000; fd < 1005; ++fd) Write("self/fd/" + std::to_string(fd), "");

  const auto values = Values(ProcessCollector(root_.string()));
  using prometheus::MetricType;
  ASSERT_EQ(values.size(), 6u);
  EXPECT_EQ(values.at("process_cpu_seconds_total").first, MetricType::Counter);
  EXPECT_DOUBLE_EQ(values.at("process_cpu_seconds_total").second, 400 / ticks);
  EXPECT_DOUBLE_EQ(values.at("process_resident_memory_bytes").second, 1000 * page);
  EXPECT_DOUBLE_EQ(values.at("process_virtual_memory_bytes").second, 777777);
  EXPECT_DOUBLE_EQ(values.at("process_start_time_seconds").second, 1600000000 + 500 / ticks);
  EXPECT_DOUBLE_EQ(values.at("process_open_fds").second, 5);
  EXPECT_DOUBLE_EQ(values.at("process_max_fds").second, 4096);
  for (const auto& [name, value] : values) {
    if (name != "process_cpu_seconds_total") {
      EXPECT_EQ(value.first, MetricType::Gauge) << name;
    }
  }
}

TEST_F(FakeProcTest, LeavesOutWhatCannotBeRead) {
  Write("self/stat", "garbage");
  const auto values = Values(ProcessCollector(root_.string()));
  // Only the (empty) fd directory is readable.
  ASSERT_EQ(values.size(), 1u);
  EXPECT_EQ(values.at("process_open_fds").second, 0);
  EXPECT_TRUE(Values(ProcessCollector((root_ / "missing").string())).empty());
}

TEST(ProcessCollectorTest, TracksThisProcess) {
  ProcessCollector collector;
  const auto before = Values(collector);
  ASSERT_EQ(before.size(), 6u);

  std::vector<int> fds;
  for (int i = 0; i < 10; ++i) fds.push_back(open("/dev/null", O_RDONLY));
  // Burn CPU until the kernel has charged at least 0.05 s more.
  const double cpu0 = before.at("process_cpu_seconds_total").second;
  volatile double sink = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (Values(collector).at("process_cpu_seconds_total").second < cpu0 + 0.05 &&
         std::chrono::steady_clock::now() < deadline) {
    for (int i = 0; i < 1000000; ++i) sink = sink + std::sqrt(static_cast<double>(i));
  }
  const auto during = Values(collector);
  for (int fd : fds) close(fd);
  const auto after = Values(collector);

  EXPECT_EQ(during.at("process_open_fds").second, before.at("process_open_fds").second + 10);
  EXPECT_EQ(after.at("process_open_fds").second, before.at("process_open_fds").second);
  EXPECT_GE(during.at("process_cpu_seconds_total").second, cpu0 + 0.05);
  EXPECT_GT(before.at("process_resident_memory_bytes").second, 1 << 20);
  EXPECT_GE(before.at("process_virtual_memory_bytes").second,
            before.at("process_resident_memory_bytes").second);
  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  const double start = before.at("process_start_time_seconds").second;
  EXPECT_LE(start, now + 1);
  EXPECT_GT(start, now - 3600) << "this test process started within the hour";
  EXPECT_GE(before.at("process_max_fds").second, 64);
}

}  // namespace
}  // namespace attention::server
