#include "server/metrics/metrics.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <map>
#include <memory>
#include <new>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/metric_family.h"
#include "prometheus/metric_type.h"
#include "prometheus/registry.h"

// ThreadSanitizer's runtime defines the global operator new and delete itself (a second
// definition does not link): under TSan the allocation count below is left out and the test
// that needs it skipped.
#if defined(__SANITIZE_THREAD__)
#define ATTN_COUNT_ALLOCATIONS 0
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define ATTN_COUNT_ALLOCATIONS 0
#endif
#endif
#ifndef ATTN_COUNT_ALLOCATIONS
#define ATTN_COUNT_ALLOCATIONS 1
#endif

// Counts heap allocations made by the current thread while `g_count_allocations` is set, to
// check that recording a metric allocates nothing.
namespace {
thread_local bool g_count_allocations = false;
thread_local int64_t g_allocations = 0;
}  // namespace

#if ATTN_COUNT_ALLOCATIONS
void* operator new(std::size_t size) {
  if (g_count_allocations) ++g_allocations;
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
// GCC cannot see that the replaced operator new above is malloc-based, and inlines the library's
// allocators into this file; the pairing is correct.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop
#endif  // ATTN_COUNT_ALLOCATIONS

namespace attention::server {
namespace {

using prometheus::MetricFamily;
using prometheus::MetricType;
using Labels = std::map<std::string, std::string>;

BuildInfo TestBuildInfo() { return BuildInfo{"1.2.3", "abc1234", "13.0", "cuda", "Test GPU"}; }

class MetricsTest : public ::testing::Test {
 protected:
  std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();

  std::vector<MetricFamily> Collect() const { return registry_->Collect(); }

  // The family called `name`; fails the test when it is missing.
  static const MetricFamily& Find(const std::vector<MetricFamily>& families,
                                  const std::string& name) {
    for (const MetricFamily& f : families) {
      if (f.name == name) return f;
    }
    ADD_FAILURE() << "no family " << name;
    static const MetricFamily kEmpty;
    return kEmpty;
  }

  static Labels LabelsOf(const prometheus::ClientMetric& m) {
    Labels labels;
    for (const auto& l : m.label) labels[l.name] = l.value;
    return labels;
  }

  // The series of `name` with exactly `labels`; fails the test when it is missing.
  const prometheus::ClientMetric& Series(const std::string& name, const Labels& labels) {
    collected_ = Collect();
    for (const auto& m : Find(collected_, name).metric) {
      if (LabelsOf(m) == labels) return m;
    }
    ADD_FAILURE() << "no series " << name << " with the given labels";
    static const prometheus::ClientMetric kEmpty;
    return kEmpty;
  }

  double CounterValue(const std::string& name, const Labels& labels) {
    return Series(name, labels).counter.value;
  }
  double GaugeValue(const std::string& name, const Labels& labels) {
    return Series(name, labels).gauge.value;
  }
  prometheus::ClientMetric::Histogram HistogramOf(const std::string& name, const Labels& labels) {
    return Series(name, labels).histogram;
  }

 private:
  std::vector<MetricFamily> collected_;
};

const std::vector<std::string> kCodes = {
    "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};
const std::vector<std::string> kMethods = {"Attention", "AttentionStream", "AttentionBackward"};
const std::vector<std::string> kStages = {"queue_wait",     "host_to_device", "kernel",
                                          "device_to_host", "staging",        "device",
                                          "scatter",        "answer"};

// Every family: name, type, and the label names of its series.
struct FamilySpec {
  std::string name;
  MetricType type;
  std::set<std::string> label_names;
  size_t series;  // for a 2-device CUDA instance
};

TEST_F(MetricsTest, EveryFamilyExistsWithItsTypeLabelsAndSeriesAfterConstruction) {
  Metrics metrics(registry_, TestBuildInfo(), 2, /*cpu_backend=*/false);
  const std::vector<FamilySpec> specs = {
      {"attention_requests_total", MetricType::Counter, {"method", "code"}, 3 * 17},
      {"attention_request_duration_seconds", MetricType::Histogram, {"method"}, 3},
      {"attention_request_bytes_total", MetricType::Counter, {"method"}, 3},
      {"attention_response_bytes_total", MetricType::Counter, {"method"}, 3},
      {"attention_stage_duration_seconds", MetricType::Histogram, {"stage"}, 8},
      {"attention_requests_rejected_total", MetricType::Counter, {"reason"}, 6},
      {"attention_batch_size_requests", MetricType::Histogram, {}, 1},
      {"attention_batch_size_tokens", MetricType::Histogram, {}, 1},
      {"attention_floating_point_operations_total", MetricType::Counter, {}, 1},
      {"attention_queue_requests", MetricType::Gauge, {}, 1},
      {"attention_queue_bytes", MetricType::Gauge, {}, 1},
      {"attention_in_flight_requests", MetricType::Gauge, {}, 1},
      {"attention_queue_limit_requests", MetricType::Gauge, {}, 1},
      {"attention_queue_limit_bytes", MetricType::Gauge, {}, 1},
      {"attention_device_memory_used_bytes", MetricType::Gauge, {"device"}, 2},
      {"attention_device_pool_capacity_bytes", MetricType::Gauge, {"device"}, 2},
      {"attention_device_pool_high_water_bytes", MetricType::Gauge, {"device"}, 2},
      {"attention_device_memory_total_bytes", MetricType::Gauge, {"device"}, 2},
      {"attention_device_memory_free_bytes", MetricType::Gauge, {"device"}, 2},
      {"attention_pinned_host_pool_capacity_bytes", MetricType::Gauge, {}, 1},
      {"attention_pinned_host_pool_used_bytes", MetricType::Gauge, {}, 1},
      {"attention_build_info",
       MetricType::Gauge,
       {"version", "git_commit", "cuda_version", "backend", "device_name"},
       1},
  };
  const std::vector<MetricFamily> families = Collect();
  EXPECT_EQ(families.size(), specs.size()) << "a family was added without a spec here";
  for (const FamilySpec& spec : specs) {
    SCOPED_TRACE(spec.name);
    const MetricFamily& family = Find(families, spec.name);
    EXPECT_EQ(family.type, spec.type);
    EXPECT_FALSE(family.help.empty());
    ASSERT_EQ(family.metric.size(), spec.series);
    for (const auto& m : family.metric) {
      std::set<std::string> names;
      for (const auto& l : m.label) names.insert(l.name);
      EXPECT_EQ(names, spec.label_names);
      if (spec.name != "attention_build_info") {
        EXPECT_EQ(m.counter.value + m.gauge.value + m.histogram.sample_count, 0.0);
      }
    }
  }
  // Each method x code pair, each stage and each device is its own series.
  for (const std::string& method : kMethods) {
    for (const std::string& code : kCodes) {
      EXPECT_EQ(CounterValue("attention_requests_total", {{"method", method}, {"code", code}}), 0);
    }
  }
  for (const std::string& stage : kStages) {
    EXPECT_EQ(HistogramOf("attention_stage_duration_seconds", {{"stage", stage}}).sample_count, 0u);
  }
  EXPECT_EQ(metrics.device_labels(), (std::vector<std::string>{"cuda:0", "cuda:1"}));
  EXPECT_EQ(GaugeValue("attention_build_info", {{"version", "1.2.3"},
                                                {"git_commit", "abc1234"},
                                                {"cuda_version", "13.0"},
                                                {"backend", "cuda"},
                                                {"device_name", "Test GPU"}}),
            1);
}

TEST_F(MetricsTest, CpuBackendHasOneDeviceLabelledCpuAndCudaVersionNone) {
  Metrics metrics(registry_, BuildInfo{"1.2.3", "abc1234", "", "cpu", "Some CPU"}, 1,
                  /*cpu_backend=*/true);
  EXPECT_EQ(metrics.num_devices(), 1);
  EXPECT_EQ(metrics.device_labels(), std::vector<std::string>{"cpu"});
  metrics.SetDeviceMemory(0, 4096, 8192, 6144, 0, 0);
  EXPECT_EQ(GaugeValue("attention_device_memory_used_bytes", {{"device", "cpu"}}), 4096);
  EXPECT_EQ(GaugeValue("attention_build_info", {{"version", "1.2.3"},
                                                {"git_commit", "abc1234"},
                                                {"cuda_version", "none"},
                                                {"backend", "cpu"},
                                                {"device_name", "Some CPU"}}),
            1);
}

TEST_F(MetricsTest, EmptyVersionAndCommitDefaultToTheConfiguredOnes) {
  Metrics metrics(registry_, BuildInfo{"", "", "", "cpu", "Some CPU"}, 1, /*cpu_backend=*/true);
  EXPECT_EQ(GaugeValue("attention_build_info", {{"version", std::string(ServiceVersion())},
                                                {"git_commit", std::string(ServiceGitCommit())},
                                                {"cuda_version", "none"},
                                                {"backend", "cpu"},
                                                {"device_name", "Some CPU"}}),
            1);
}

TEST(CpuModelNameTest, IsNonEmptyAndTrimmed) {
  const std::string name = CpuModelName();
  ASSERT_FALSE(name.empty());
  EXPECT_NE(name.front(), ' ');
  EXPECT_NE(name.back(), ' ');
  EXPECT_EQ(name.find('\n'), std::string::npos);
  EXPECT_EQ(name.find(':'), std::string::npos) << name;
}

TEST_F(MetricsTest, RequestDoneCountsOnlyItsMethodAndCodeAndAddsBytes) {
  Metrics metrics(registry_, TestBuildInfo(), 1, false);
  metrics.RequestDone(Method::kAttention, grpc::StatusCode::OK, 0.001, 1000, 500);
  metrics.RequestDone(Method::kAttention, grpc::StatusCode::OK, 0.002, 10, 5);
  metrics.RequestDone(Method::kAttentionStream, grpc::StatusCode::RESOURCE_EXHAUSTED, 0.0001, 300,
                      0);
  // Codes without a name (a code a later gRPC might add) count as UNKNOWN rather than indexing
  // out of bounds. grpc::StatusCode (-1 to 16) holds the values -32 to 31: 17 is one of them,
  // whereas a cast of a value outside that range would itself be undefined (UBSan stops there).
  metrics.RequestDone(Method::kAttention, static_cast<grpc::StatusCode>(17), 0.001, 0, 0);
  metrics.RequestDone(Method::kAttention, grpc::StatusCode::DO_NOT_USE, 0.001, 0, 0);

  for (const std::string& method : kMethods) {
    for (const std::string& code : kCodes) {
      double expected = 0;
      if (method == "Attention" && code == "OK") expected = 2;
      if (method == "Attention" && code == "UNKNOWN") expected = 2;
      if (method == "AttentionStream" && code == "RESOURCE_EXHAUSTED") expected = 1;
      EXPECT_EQ(CounterValue("attention_requests_total", {{"method", method}, {"code", code}}),
                expected)
          << method << " " << code;
    }
  }
  EXPECT_EQ(CounterValue("attention_request_bytes_total", {{"method", "Attention"}}), 1010);
  EXPECT_EQ(CounterValue("attention_response_bytes_total", {{"method", "Attention"}}), 505);
  EXPECT_EQ(CounterValue("attention_request_bytes_total", {{"method", "AttentionStream"}}), 300);
  EXPECT_EQ(CounterValue("attention_response_bytes_total", {{"method", "AttentionStream"}}), 0);
  const auto unary = HistogramOf("attention_request_duration_seconds", {{"method", "Attention"}});
  EXPECT_EQ(unary.sample_count, 4u);
  EXPECT_NEAR(unary.sample_sum, 0.005, 1e-12);
  EXPECT_EQ(HistogramOf("attention_request_duration_seconds", {{"method", "AttentionStream"}})
                .sample_count,
            1u);
}

TEST(BucketsTest, RangesAndOrderAreAsDocumented) {
  const auto check = [](const std::vector<double>& b, double first, double last) {
    ASSERT_FALSE(b.empty());
    EXPECT_DOUBLE_EQ(b.front(), first);
    EXPECT_DOUBLE_EQ(b.back(), last);
    EXPECT_TRUE(std::is_sorted(b.begin(), b.end()));
    EXPECT_EQ(std::adjacent_find(b.begin(), b.end()), b.end());
    // No gap wider than 3x, so quantiles stay meaningful across the whole range.
    for (size_t i = 1; i < b.size(); ++i) EXPECT_LE(b[i] / b[i - 1], 3.0 + 1e-9) << b[i];
  };
  check(RequestLatencyBuckets(), 50e-6, 60);
  check(StageLatencyBuckets(), 10e-6, 30);
  check(BatchRequestsBuckets(), 1, 1024);
  check(BatchTokensBuckets(), 16, 1024 * 1024);
  EXPECT_EQ(BatchRequestsBuckets().size(), 11u);
  EXPECT_EQ(BatchTokensBuckets().size(), 17u);
}

// Observes `value` into a fresh instance via `observe` and returns the index of the first bucket
// whose cumulative count became 1 (buckets.size() for +Inf).
template <typename Observe>
size_t BucketOf(double value, const std::string& name, const Labels& labels, Observe observe) {
  auto registry = std::make_shared<prometheus::Registry>();
  Metrics metrics(registry, TestBuildInfo(), 1, false);
  observe(metrics, value);
  for (const MetricFamily& f : registry->Collect()) {
    if (f.name != name) continue;
    for (const auto& m : f.metric) {
      Labels got;
      for (const auto& l : m.label) got[l.name] = l.value;
      if (got != labels) continue;
      const auto& buckets = m.histogram.bucket;
      for (size_t i = 0; i < buckets.size(); ++i) {
        if (buckets[i].cumulative_count == 1) return i;
      }
    }
  }
  ADD_FAILURE() << "observation of " << value << " not found in " << name;
  return 0;
}

TEST(BucketsTest, ObservationsLandInTheBucketWhoseUpperBoundIsTheFirstAtOrAboveThem) {
  struct Case {
    std::string name;
    Labels labels;
    const std::vector<double>* bounds;
    void (*observe)(Metrics&, double);
  };
  const std::vector<Case> cases = {
      {"attention_request_duration_seconds",
       {{"method", "AttentionStream"}},
       &RequestLatencyBuckets(),
       [](Metrics& m, double v) {
         m.RequestDone(Method::kAttentionStream, grpc::StatusCode::OK, v, 0, 0);
       }},
      {"attention_stage_duration_seconds",
       {{"stage", "kernel"}},
       &StageLatencyBuckets(),
       [](Metrics& m, double v) { m.ObserveStage(Stage::kKernel, v); }},
      {"attention_stage_duration_seconds",
       {{"stage", "device_to_host"}},
       &StageLatencyBuckets(),
       [](Metrics& m, double v) { m.ObserveStage(Stage::kDeviceToHost, v); }},
      {"attention_batch_size_requests",
       {},
       &BatchRequestsBuckets(),
       [](Metrics& m, double v) { m.BatchLaunched(static_cast<int>(v), 1, 0); }},
      {"attention_batch_size_tokens",
       {},
       &BatchTokensBuckets(),
       [](Metrics& m, double v) { m.BatchLaunched(1, static_cast<int64_t>(v), 0); }},
  };
  std::mt19937 rng(7);
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::vector<double>& b = *c.bounds;
    const bool integral = c.name.rfind("attention_batch", 0) == 0;
    for (size_t i = 0; i < b.size(); ++i) {
      // The bound itself is inside its bucket (le is inclusive).
      EXPECT_EQ(BucketOf(b[i], c.name, c.labels, c.observe), i) << b[i];
      // A random value strictly between the previous bound and this one.
      const double lo = i == 0 ? b[0] / 2 : b[i - 1];
      double v = std::uniform_real_distribution<double>(lo, b[i])(rng);
      if (integral) v = std::floor(v) + 1;
      if (v > lo && v <= b[i]) {
        EXPECT_EQ(BucketOf(v, c.name, c.labels, c.observe), i) << v;
      }
    }
    const double above = integral ? b.back() + 1 : b.back() * 1.5;
    EXPECT_EQ(BucketOf(above, c.name, c.labels, c.observe), b.size()) << "+Inf only";
  }
}

TEST_F(MetricsTest, StageObservationsGoToTheirOwnStage) {
  Metrics metrics(registry_, TestBuildInfo(), 1, false);
  metrics.ObserveStage(Stage::kQueueWait, 0.5);
  metrics.ObserveStage(Stage::kHostToDevice, 0.25);
  metrics.ObserveStage(Stage::kHostToDevice, 0.25);
  metrics.ObserveStage(Stage::kKernel, 0.125);
  metrics.ObserveStage(Stage::kScatter, 0.0625);
  const std::map<std::string, std::pair<uint64_t, double>> expected = {
      {"queue_wait", {1, 0.5}}, {"host_to_device", {2, 0.5}},
      {"kernel", {1, 0.125}},   {"device_to_host", {0, 0}},
      {"staging", {0, 0}},      {"device", {0, 0}},
      {"scatter", {1, 0.0625}}, {"answer", {0, 0}}};
  for (const auto& [stage, count_sum] : expected) {
    const auto h = HistogramOf("attention_stage_duration_seconds", {{"stage", stage}});
    EXPECT_EQ(h.sample_count, count_sum.first) << stage;
    EXPECT_DOUBLE_EQ(h.sample_sum, count_sum.second) << stage;
  }
}

TEST_F(MetricsTest, BatchGaugesDevicesPinnedAndRejections) {
  Metrics metrics(registry_, TestBuildInfo(), 2, false);
  metrics.BatchLaunched(4, 1000, 2.5e9);
  metrics.BatchLaunched(1, 24, 0.5e9);
  EXPECT_EQ(CounterValue("attention_floating_point_operations_total", {}), 3e9);
  EXPECT_EQ(HistogramOf("attention_batch_size_requests", {}).sample_sum, 5);
  EXPECT_EQ(HistogramOf("attention_batch_size_tokens", {}).sample_sum, 1024);

  metrics.SetQueueDepth(7, 1 << 20);
  EXPECT_EQ(GaugeValue("attention_queue_requests", {}), 7);
  EXPECT_EQ(GaugeValue("attention_queue_bytes", {}), 1 << 20);
  metrics.SetQueueLimits(1024, int64_t{1} << 32);
  EXPECT_EQ(GaugeValue("attention_queue_limit_requests", {}), 1024);
  EXPECT_EQ(GaugeValue("attention_queue_limit_bytes", {}), 4294967296.0);
  metrics.AddInFlight(5);
  metrics.AddInFlight(-2);
  EXPECT_EQ(GaugeValue("attention_in_flight_requests", {}), 3);

  const int64_t gib = int64_t{1} << 30;
  metrics.SetDeviceMemory(1, 3 * gib, 8 * gib, 5 * gib, 80 * gib, 60 * gib);
  metrics.SetDeviceMemory(2, 1, 1, 1, 1, 1);   // no such device: ignored
  metrics.SetDeviceMemory(-1, 1, 1, 1, 1, 1);  // likewise
  const Labels dev1 = {{"device", "cuda:1"}}, dev0 = {{"device", "cuda:0"}};
  EXPECT_EQ(GaugeValue("attention_device_memory_used_bytes", dev1), 3.0 * gib);
  EXPECT_EQ(GaugeValue("attention_device_pool_capacity_bytes", dev1), 8.0 * gib);
  EXPECT_EQ(GaugeValue("attention_device_pool_high_water_bytes", dev1), 5.0 * gib);
  EXPECT_EQ(GaugeValue("attention_device_memory_total_bytes", dev1), 80.0 * gib);
  EXPECT_EQ(GaugeValue("attention_device_memory_free_bytes", dev1), 60.0 * gib);
  EXPECT_EQ(GaugeValue("attention_device_memory_used_bytes", dev0), 0);
  EXPECT_EQ(Series("attention_device_memory_used_bytes", dev0).label.size(), 1u);

  metrics.SetPinnedHostMemory(256 << 20, 3 << 20);
  EXPECT_EQ(GaugeValue("attention_pinned_host_pool_capacity_bytes", {}), 256 << 20);
  EXPECT_EQ(GaugeValue("attention_pinned_host_pool_used_bytes", {}), 3 << 20);

  metrics.RequestRejected("queue_full");
  metrics.RequestRejected("queue_full");
  metrics.RequestRejected("too_large");
  metrics.RequestRejected("draining");
  metrics.RequestRejected("invalid");
  metrics.RequestRejected("answer_budget");
  metrics.RequestRejected("something new");
  metrics.RequestRejected("");
  const std::map<std::string, double> rejected = {{"queue_full", 2},    {"too_large", 1},
                                                  {"answer_budget", 1}, {"draining", 1},
                                                  {"invalid", 1},       {"other", 2}};
  for (const auto& [reason, count] : rejected) {
    EXPECT_EQ(CounterValue("attention_requests_rejected_total", {{"reason", reason}}), count)
        << reason;
  }
}

TEST_F(MetricsTest, RecordingAllocatesNothing) {
  if (!ATTN_COUNT_ALLOCATIONS) GTEST_SKIP() << "allocations are not counted under TSan";
  Metrics metrics(registry_, TestBuildInfo(), 2, false);
  g_allocations = 0;
  g_count_allocations = true;
  for (int i = 0; i < 1000; ++i) {
    metrics.RequestDone(i % 2 ? Method::kAttention : Method::kAttentionStream,
                        static_cast<grpc::StatusCode>(i % 17), 1e-4 * i, 100, 200);
    metrics.ObserveStage(static_cast<Stage>(i % 4), 1e-5 * i);
    metrics.BatchLaunched(i % 64 + 1, i * 16, 1e6);
    metrics.SetQueueDepth(i, i * 100);
    metrics.AddInFlight(i % 2 ? 1 : -1);
    metrics.SetDeviceMemory(i % 2, i, 2 * i, 3 * i, 4 * i, 5 * i);
    metrics.SetPinnedHostMemory(i, i);
    metrics.RequestRejected(i % 2 ? "queue_full" : "draining");
  }
  g_count_allocations = false;
  EXPECT_EQ(g_allocations, 0);
  EXPECT_EQ(
      HistogramOf("attention_request_duration_seconds", {{"method", "Attention"}}).sample_count,
      500u);
}

TEST_F(MetricsTest, ConcurrentRecordingLosesNothing) {
  Metrics metrics(registry_, TestBuildInfo(), 1, false);
  constexpr int kThreads = 8, kPerThread = 5000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&metrics] {
      for (int i = 0; i < kPerThread; ++i) {
        metrics.RequestDone(Method::kAttention, grpc::StatusCode::OK, 0.001, 3, 1);
        metrics.ObserveStage(Stage::kKernel, 0.0001);
        metrics.AddInFlight(1);
      }
    });
  }
  // Scrape while recording: collection must not block or corrupt the writers.
  for (int i = 0; i < 20; ++i) Collect();
  for (auto& t : threads) t.join();
  const double n = kThreads * kPerThread;
  EXPECT_EQ(CounterValue("attention_requests_total", {{"method", "Attention"}, {"code", "OK"}}), n);
  EXPECT_EQ(CounterValue("attention_request_bytes_total", {{"method", "Attention"}}), 3 * n);
  EXPECT_EQ(HistogramOf("attention_stage_duration_seconds", {{"stage", "kernel"}}).sample_count,
            static_cast<uint64_t>(n));
  EXPECT_EQ(GaugeValue("attention_in_flight_requests", {}), n);
}

TEST(LabelsTest, LabelValuesAreTheDocumentedOnes) {
  EXPECT_EQ(MethodLabel(Method::kAttention), "Attention");
  EXPECT_EQ(MethodLabel(Method::kAttentionStream), "AttentionStream");
  EXPECT_EQ(StageLabel(Stage::kQueueWait), "queue_wait");
  EXPECT_EQ(StageLabel(Stage::kHostToDevice), "host_to_device");
  EXPECT_EQ(StageLabel(Stage::kKernel), "kernel");
  EXPECT_EQ(StageLabel(Stage::kDeviceToHost), "device_to_host");
  EXPECT_EQ(StageLabel(Stage::kStaging), "staging");
  EXPECT_EQ(StageLabel(Stage::kDevice), "device");
  EXPECT_EQ(StageLabel(Stage::kScatter), "scatter");
  EXPECT_EQ(StageLabel(Stage::kAnswer), "answer");
  for (int c = 0; c < 17; ++c) {
    EXPECT_EQ(StatusCodeLabel(static_cast<grpc::StatusCode>(c)), kCodes[c]);
  }
  EXPECT_EQ(StatusCodeLabel(grpc::StatusCode::DO_NOT_USE), "UNKNOWN");
  EXPECT_EQ(StatusCodeLabel(static_cast<grpc::StatusCode>(31)), "UNKNOWN");
  EXPECT_FALSE(ServiceVersion().empty());
  EXPECT_FALSE(ServiceGitCommit().empty());
}

}  // namespace
}  // namespace attention::server
