// SessionMetrics: every series exists at zero from the start, Update sets the gauges and advances
// the counters by what the store's counts grew, CallDone counts by operation and code, and
// polling follows a live store.
#include "server/metrics/session_metrics.h"

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"
#include "server/session/page_storage.h"

namespace attention::server {
namespace {

// "name{label=value,...}" -> value (counter, gauge; histograms by their sample count).
std::map<std::string, double> Collect(prometheus::Registry& registry) {
  std::map<std::string, double> values;
  for (const prometheus::MetricFamily& family : registry.Collect()) {
    for (const prometheus::ClientMetric& metric : family.metric) {
      std::string key = family.name + "{";
      for (const prometheus::ClientMetric::Label& label : metric.label) {
        key += label.name + "=" + label.value + ",";
      }
      key += "}";
      switch (family.type) {
        case prometheus::MetricType::Counter:
          values[key] = metric.counter.value;
          break;
        case prometheus::MetricType::Gauge:
          values[key] = metric.gauge.value;
          break;
        case prometheus::MetricType::Histogram:
          values[key] = static_cast<double>(metric.histogram.sample_count);
          break;
        default:
          break;
      }
    }
  }
  return values;
}

TEST(SessionMetricsTest, EverySeriesStartsAtZero) {
  auto registry = std::make_shared<prometheus::Registry>();
  SessionMetrics metrics(registry, {"cpu"});
  const std::map<std::string, double> v = Collect(*registry);
  EXPECT_EQ(v.at("attention_sessions_live{}"), 0);
  EXPECT_EQ(v.at("attention_session_pages{device=cpu,state=used,}"), 0);
  EXPECT_EQ(v.at("attention_session_pages{device=cpu,state=free,}"), 0);
  EXPECT_EQ(v.at("attention_sessions_ended_total{reason=evicted,}"), 0);
  EXPECT_EQ(v.at("attention_sessions_created_total{how=fork,}"), 0);
  EXPECT_EQ(v.at("attention_session_calls_total{code=NOT_FOUND,op=attend,}"), 0);
  EXPECT_EQ(v.at("attention_session_call_seconds{op=truncate,}"), 0);
  // 7 operations x 17 codes.
  int calls = 0;
  for (const auto& [key, value] : v) calls += key.rfind("attention_session_calls_total{", 0) == 0;
  EXPECT_EQ(calls, 7 * 17);
}

TEST(SessionMetricsTest, UpdateFollowsTheStoresCounts) {
  auto registry = std::make_shared<prometheus::Registry>();
  SessionMetrics metrics(registry, {"cuda:0", "cuda:1"});
  session::StoreCounters c;
  c.sessions_live = 5;
  c.created = 6;
  c.forked = 2;
  c.released = 1;
  c.evicted = 2;
  c.cow_copies = 3;
  c.pools.resize(2);
  c.pools[0] = {100, 30, 70, 4096, 30 * 4096};
  c.pools[1] = {100, 1, 99, 4096, 4096};
  metrics.Update(c);
  c.sessions_live = 4;
  c.evicted = 5;
  c.expired = 1;
  c.pools[0].pages_used = 10;
  c.pools[0].pages_free = 90;
  c.pools[0].kv_bytes_held = 10 * 4096;
  metrics.Update(c);
  const std::map<std::string, double> v = Collect(*registry);
  EXPECT_EQ(v.at("attention_sessions_live{}"), 4);
  EXPECT_EQ(v.at("attention_sessions_created_total{how=create,}"), 6);
  EXPECT_EQ(v.at("attention_sessions_created_total{how=fork,}"), 2);
  EXPECT_EQ(v.at("attention_sessions_ended_total{reason=released,}"), 1);
  EXPECT_EQ(v.at("attention_sessions_ended_total{reason=evicted,}"), 5);
  EXPECT_EQ(v.at("attention_sessions_ended_total{reason=expired,}"), 1);
  EXPECT_EQ(v.at("attention_session_cow_copies_total{}"), 3);
  EXPECT_EQ(v.at("attention_session_pages{device=cuda:0,state=used,}"), 10);
  EXPECT_EQ(v.at("attention_session_pages{device=cuda:0,state=free,}"), 90);
  EXPECT_EQ(v.at("attention_session_pages{device=cuda:1,state=used,}"), 1);
  EXPECT_EQ(v.at("attention_session_kv_bytes{device=cuda:0,}"), 10 * 4096);
  EXPECT_EQ(v.at("attention_session_pool_bytes{device=cuda:1,}"), 100 * 4096);
}

TEST(SessionMetricsTest, CallsByOperationAndCode) {
  auto registry = std::make_shared<prometheus::Registry>();
  SessionMetrics metrics(registry, {"cpu"});
  metrics.CallDone(SessionOp::kAttend, grpc::StatusCode::OK, 0.001, 100, 200);
  metrics.CallDone(SessionOp::kAttend, grpc::StatusCode::OK, 0.002, 100, 200);
  metrics.CallDone(SessionOp::kFork, grpc::StatusCode::NOT_FOUND, 0.0001, 50, 0);
  const std::map<std::string, double> v = Collect(*registry);
  EXPECT_EQ(v.at("attention_session_calls_total{code=OK,op=attend,}"), 2);
  EXPECT_EQ(v.at("attention_session_calls_total{code=NOT_FOUND,op=fork,}"), 1);
  EXPECT_EQ(v.at("attention_session_call_seconds{op=attend,}"), 2);
  EXPECT_EQ(v.at("attention_session_received_bytes_total{op=attend,}"), 200);
  EXPECT_EQ(v.at("attention_session_sent_bytes_total{op=attend,}"), 400);
}

TEST(SessionMetricsTest, PollingFollowsALiveStore) {
  session::PoolOptions pool;
  pool.page_bytes = 4096;
  pool.num_pages = 16;
  std::vector<std::unique_ptr<session::PageStorage>> storages;
  storages.push_back(*session::HostPageStorage::Create(pool));
  session::StoreOptions options;
  options.sweep_interval = absl::ZeroDuration();
  auto store = *session::SessionStore::Create(options, std::move(storages));
  auto registry = std::make_shared<prometheus::Registry>();
  SessionMetrics metrics(registry, {"cpu"});
  metrics.StartPolling(store.get(), std::chrono::milliseconds(5));
  session::SessionSpec spec;
  spec.layers = 1;
  spec.kv_heads = 1;
  spec.head_dim = 16;
  spec.dtype = DType::kFloat32;
  const session::SessionId id = *store->CreateSession(spec);
  ASSERT_TRUE(store->Append(id, 0, 40).ok());  // 32 rows per page: 2 pages
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  std::map<std::string, double> v;
  do {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    v = Collect(*registry);
    // The poller sets one gauge after another: wait for the last of those checked below too.
  } while ((v.at("attention_session_pages{device=cpu,state=used,}") != 2 ||
            v.at("attention_sessions_live{}") != 1) &&
           std::chrono::steady_clock::now() < deadline);
  EXPECT_EQ(v.at("attention_sessions_live{}"), 1);
  EXPECT_EQ(v.at("attention_session_pages{device=cpu,state=used,}"), 2);
  EXPECT_EQ(v.at("attention_session_pages{device=cpu,state=free,}"), 14);
  metrics.StopPolling();
}

}  // namespace
}  // namespace attention::server
