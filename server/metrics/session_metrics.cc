#include "server/metrics/session_metrics.h"

#include <algorithm>
#include <array>
#include <utility>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "server/metrics/metrics.h"
#include "server/thread_name.h"

namespace attention::server {
namespace {

// grpc::StatusCode runs from OK (0) to UNAUTHENTICATED (16).
constexpr int kNumCodes = 17;
constexpr std::array<std::string_view, 3> kEndReasons = {"released", "evicted", "expired"};

int CodeIndex(grpc::StatusCode code) {
  const int index = static_cast<int>(code);
  return index < 0 || index >= kNumCodes ? static_cast<int>(grpc::StatusCode::UNKNOWN) : index;
}

// A counter advanced to follow a count kept elsewhere (the store's, since its start).
void Advance(prometheus::Counter* counter, int64_t now, int64_t before) {
  if (now > before) counter->Increment(static_cast<double>(now - before));
}

}  // namespace

std::string_view SessionOpLabel(SessionOp op) {
  switch (op) {
    case SessionOp::kCreate:
      return "create";
    case SessionOp::kAppend:
      return "append";
    case SessionOp::kAttend:
      return "attend";
    case SessionOp::kFork:
      return "fork";
    case SessionOp::kTruncate:
      return "truncate";
    case SessionOp::kRelease:
      return "release";
    case SessionOp::kGet:
      return "get";
  }
  return "unknown";
}

// Pointers into families the registry owns; the registry outlives them through `registry`.
struct SessionMetrics::Families {
  struct Pool {
    prometheus::Gauge* pages_used;
    prometheus::Gauge* pages_free;
    prometheus::Gauge* kv_bytes;
    prometheus::Gauge* pool_bytes;
  };
  std::shared_ptr<prometheus::Registry> registry;
  prometheus::Gauge* live = nullptr;
  std::vector<Pool> pools;
  prometheus::Counter* created = nullptr;
  prometheus::Counter* forked = nullptr;
  std::array<prometheus::Counter*, kEndReasons.size()> ended{};
  prometheus::Counter* cow_copies = nullptr;
  prometheus::Counter* list_copies = nullptr;
  std::array<std::array<prometheus::Counter*, kNumCodes>, kNumSessionOps> calls{};
  std::array<prometheus::Histogram*, kNumSessionOps> latency{};
  std::array<prometheus::Counter*, kNumSessionOps> received{};
  std::array<prometheus::Counter*, kNumSessionOps> sent{};
};

SessionMetrics::SessionMetrics(std::shared_ptr<prometheus::Registry> registry,
                               std::vector<std::string> pool_devices)
    : families_(std::make_unique<Families>()) {
  Families& f = *families_;
  f.registry = std::move(registry);
  prometheus::Registry& r = *f.registry;

  f.live = &prometheus::BuildGauge()
                .Name("attention_sessions_live")
                .Help("K/V sessions alive on this replica, forks included.")
                .Register(r)
                .Add({});
  auto& pages = prometheus::BuildGauge()
                    .Name("attention_session_pages")
                    .Help(
                        "Pages of each device's K/V session pool, by state: used (listed by a "
                        "session or held by an Attend in flight) or free.")
                    .Register(r);
  auto& kv_bytes = prometheus::BuildGauge()
                       .Name("attention_session_kv_bytes")
                       .Help(
                           "Bytes of K/V held by each device's session pool (used pages x "
                           "page bytes).")
                       .Register(r);
  auto& pool_bytes = prometheus::BuildGauge()
                         .Name("attention_session_pool_bytes")
                         .Help("Size of each device's session pool (pages x page bytes).")
                         .Register(r);
  for (const std::string& device : pool_devices) {
    f.pools.push_back(Families::Pool{&pages.Add({{"device", device}, {"state", "used"}}),
                                     &pages.Add({{"device", device}, {"state", "free"}}),
                                     &kv_bytes.Add({{"device", device}}),
                                     &pool_bytes.Add({{"device", device}})});
  }

  auto& created = prometheus::BuildCounter()
                      .Name("attention_sessions_created_total")
                      .Help("Sessions created, by how: create (CreateSession) or fork (Fork).")
                      .Register(r);
  f.created = &created.Add({{"how", "create"}});
  f.forked = &created.Add({{"how", "fork"}});
  auto& ended = prometheus::BuildCounter()
                    .Name("attention_sessions_ended_total")
                    .Help(
                        "Sessions ended, by reason: released (ReleaseSession), evicted (least "
                        "recently used idle session, to free pages for another's append) or "
                        "expired (idle past its TTL).")
                    .Register(r);
  for (size_t i = 0; i < kEndReasons.size(); ++i) {
    f.ended[i] = &ended.Add({{"reason", std::string(kEndReasons[i])}});
  }
  f.cow_copies = &prometheus::BuildCounter()
                      .Name("attention_session_cow_copies_total")
                      .Help(
                          "Shared partial pages copied before an append wrote into them "
                          "(copy-on-write after Fork).")
                      .Register(r)
                      .Add({});
  f.list_copies = &prometheus::BuildCounter()
                       .Name("attention_session_list_copies_total")
                       .Help(
                           "Page lists copied because an Attend still held the layer when it "
                           "was appended to or truncated.")
                       .Register(r)
                       .Add({});

  auto& calls = prometheus::BuildCounter()
                    .Name("attention_session_calls_total")
                    .Help(
                        "Answered session calls (unary and stream), by operation and gRPC "
                        "status code.")
                    .Register(r);
  auto& latency = prometheus::BuildHistogram()
                      .Name("attention_session_call_seconds")
                      .Help(
                          "Server-side latency of answered session calls, from arrival to the "
                          "answer handed to gRPC (an Attend's includes its queue and kernel).")
                      .Register(r);
  auto& received = prometheus::BuildCounter()
                       .Name("attention_session_received_bytes_total")
                       .Help("Serialized size of session calls received, by operation.")
                       .Register(r);
  auto& sent = prometheus::BuildCounter()
                   .Name("attention_session_sent_bytes_total")
                   .Help("Serialized size of session answers sent, by operation.")
                   .Register(r);
  for (int op = 0; op < kNumSessionOps; ++op) {
    const std::string label(SessionOpLabel(static_cast<SessionOp>(op)));
    for (int c = 0; c < kNumCodes; ++c) {
      f.calls[op][c] =
          &calls.Add({{"op", label},
                      {"code", std::string(StatusCodeLabel(static_cast<grpc::StatusCode>(c)))}});
    }
    f.latency[op] = &latency.Add({{"op", label}}, RequestLatencyBuckets());
    f.received[op] = &received.Add({{"op", label}});
    f.sent[op] = &sent.Add({{"op", label}});
  }
}

SessionMetrics::~SessionMetrics() { StopPolling(); }

void SessionMetrics::CallDone(SessionOp op, grpc::StatusCode code, double seconds,
                              int64_t request_bytes, int64_t response_bytes) {
  const int i = static_cast<int>(op);
  if (i < 0 || i >= kNumSessionOps) return;
  Families& f = *families_;
  f.calls[i][CodeIndex(code)]->Increment();
  f.latency[i]->Observe(seconds);
  f.received[i]->Increment(static_cast<double>(request_bytes));
  f.sent[i]->Increment(static_cast<double>(response_bytes));
}

void SessionMetrics::Update(const session::StoreCounters& c) {
  Families& f = *families_;
  std::lock_guard<std::mutex> lock(mu_);
  f.live->Set(static_cast<double>(c.sessions_live));
  const size_t pools = std::min(f.pools.size(), c.pools.size());
  for (size_t i = 0; i < pools; ++i) {
    const session::PoolCounters& p = c.pools[i];
    f.pools[i].pages_used->Set(p.pages_used);
    f.pools[i].pages_free->Set(p.pages_free);
    f.pools[i].kv_bytes->Set(static_cast<double>(p.kv_bytes_held));
    f.pools[i].pool_bytes->Set(static_cast<double>(p.pages_total) *
                               static_cast<double>(p.page_bytes));
  }
  Advance(f.created, c.created, last_.created);
  Advance(f.forked, c.forked, last_.forked);
  Advance(f.ended[0], c.released, last_.released);
  Advance(f.ended[1], c.evicted, last_.evicted);
  Advance(f.ended[2], c.expired, last_.expired);
  Advance(f.cow_copies, c.cow_copies, last_.cow_copies);
  Advance(f.list_copies, c.list_copies, last_.list_copies);
  last_ = c;
}

void SessionMetrics::StartPolling(const session::SessionStore* store,
                                  std::chrono::milliseconds interval) {
  StopPolling();
  Update(store->counters());
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = false;
  }
  poller_ = std::thread([this, store, interval] {
    NameThisThread("attn-sess-metric");
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_cv_.wait_for(lock, interval, [this] { return stop_; })) {
      lock.unlock();
      Update(store->counters());
      lock.lock();
    }
  });
}

void SessionMetrics::StopPolling() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  stop_cv_.notify_all();
  if (poller_.joinable()) poller_.join();
}

}  // namespace attention::server
