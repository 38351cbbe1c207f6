// Threads racing on shared sessions: appends, forks, truncates, releases and reads through turns
// (some handed to another thread that ends them later, as a batch does), views pinned and dropped
// outside turns, a small pool that forces evictions, a clock that makes idle sessions expire and
// the sweeper thread ending them. Every read inside a turn must match the model of the session's
// rows; at the end every page is free again. Also run under ThreadSanitizer
// (deploy/scripts/sanitize tsan), which checks that turns order the rows' writes and reads.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "server/session/session_store.h"
#include "tests/server/session/session_test_util.h"

namespace attention::session {
namespace {

using ::attention::session::testing::AppendTags;
using ::attention::session::testing::FakeClock;
using ::attention::session::testing::kTagPageBytes;
using ::attention::session::testing::MakeStore;
using ::attention::session::testing::ReadTags;
using ::attention::session::testing::Tags;
using ::attention::session::testing::TagSpec;

constexpr int kLayers = 2;
constexpr size_t kMaxSessions = 16;

// A session as the test knows it. `rows` is touched only inside the session's turns.
struct Entry {
  SessionId id;
  std::vector<std::vector<float>> rows = std::vector<std::vector<float>>(kLayers);
};

class Registry {
 public:
  void Add(std::shared_ptr<Entry> entry) {
    std::lock_guard<std::mutex> lock(mu_);
    entries_[entry->id.ToString()] = std::move(entry);
  }
  void Remove(const SessionId& id) {
    std::lock_guard<std::mutex> lock(mu_);
    entries_.erase(id.ToString());
  }
  std::shared_ptr<Entry> Pick(std::mt19937& rng) {
    std::lock_guard<std::mutex> lock(mu_);
    if (entries_.empty()) return nullptr;
    auto it = entries_.begin();
    std::advance(it, std::uniform_int_distribution<size_t>(0, entries_.size() - 1)(rng));
    return it->second;
  }
  size_t size() {
    std::lock_guard<std::mutex> lock(mu_);
    return entries_.size();
  }
  std::vector<std::shared_ptr<Entry>> All() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::shared_ptr<Entry>> all;
    for (auto& [key, entry] : entries_) all.push_back(entry);
    return all;
  }

 private:
  std::mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Entry>> entries_;
};

// Ends the turns handed to it, on its own thread, a little later.
class Finisher {
 public:
  Finisher() : thread_([this] { Loop(); }) {}
  ~Finisher() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void Hand(Turn turn) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      turns_.push_back(std::move(turn));
    }
    cv_.notify_all();
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return stopping_ || !turns_.empty(); });
      if (turns_.empty()) return;  // stopping, nothing left
      Turn turn = std::move(turns_.front());
      turns_.pop_front();
      lock.unlock();
      std::this_thread::yield();
      turn.End();  // may run the session's next fns here, which may hand turns back
      lock.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Turn> turns_;
  bool stopping_ = false;
  std::thread thread_;  // last: starts after the rest is constructed
};

bool Gone(const absl::Status& status) { return status.code() == absl::StatusCode::kNotFound; }

TEST(SessionStoreConcurrencyTest, RacingCallsKeepEverySessionsRowsAndFreeEveryPage) {
  FakeClock clock;
  StoreOptions options;
  options.shards = 4;
  options.limits.default_idle_ttl = absl::Seconds(60);
  options.sweep_interval = absl::Milliseconds(2);
  std::unique_ptr<SessionStore> store = MakeStore(kTagPageBytes, 32, &clock, options);
  ASSERT_NE(store, nullptr);

  Registry registry;
  std::atomic<int64_t> pending{0};  // fns given to RunInTurn and not yet run
  std::atomic<int64_t> checked_reads{0}, mismatches{0}, unexpected{0}, handed{0};
  std::atomic<int64_t> next_tag{1};
  std::atomic<bool> stop_clock{false};
  // 5 simulated seconds per real 50 us or more: a session idle for ~1 ms of real time expires.
  std::thread ticker([&] {
    while (!stop_clock.load()) {
      clock.Advance(absl::Seconds(5));
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  });

  {
    Finisher finisher;
    // `in_flight`: the calling worker's fns not yet run; each worker keeps a few in flight so
    // that sessions' queues stay short and most fns find their session live.
    auto in_turn = [&](std::shared_ptr<Entry> entry, int op, int layer, int n, bool hand_on,
                       uint32_t seed, std::atomic<int>* in_flight) {
      pending.fetch_add(1);
      in_flight->fetch_add(1);
      store->RunInTurn(
          entry->id, [&, entry, op, layer, n, hand_on, seed, in_flight](absl::StatusOr<Turn> turn) {
            if (!turn.ok()) {
              if (!Gone(turn.status())) unexpected.fetch_add(1);
              registry.Remove(entry->id);
              in_flight->fetch_sub(1);
              pending.fetch_sub(1);
              return;
            }
            std::vector<float>& rows = entry->rows[static_cast<size_t>(layer)];
            absl::Status status;
            if (op == 0) {
              const std::vector<float> tags = Tags(static_cast<float>(next_tag.fetch_add(n)), n);
              absl::StatusOr<AppendResult> result = AppendTags(*store, entry->id, layer, tags);
              status = result.status();
              if (result.ok()) rows.insert(rows.end(), tags.begin(), tags.end());
              if (status.code() == absl::StatusCode::kResourceExhausted) status = absl::OkStatus();
            } else if (op == 1 && registry.size() < kMaxSessions) {
              size_t longest = 0;
              for (const auto& layer_rows : entry->rows)
                longest = std::max(longest, layer_rows.size());
              const int64_t prefix = static_cast<int64_t>(seed % (longest + 1));
              absl::StatusOr<SessionId> child = store->Fork(entry->id, prefix);
              status = child.status();
              if (child.ok()) {
                auto copy = std::make_shared<Entry>();
                copy->id = *child;
                for (int l = 0; l < kLayers; ++l) {
                  const auto& from = entry->rows[static_cast<size_t>(l)];
                  copy->rows[static_cast<size_t>(l)].assign(
                      from.begin(), from.begin() + std::min<int64_t>(prefix, from.size()));
                }
                registry.Add(copy);
              }
            } else if (op == 2) {
              size_t longest = 0;
              for (const auto& layer_rows : entry->rows)
                longest = std::max(longest, layer_rows.size());
              const int64_t keep = static_cast<int64_t>(seed % (longest + 1));
              status = store->Truncate(entry->id, keep);
              if (status.ok()) {
                for (auto& layer_rows : entry->rows) {
                  layer_rows.resize(std::min<size_t>(layer_rows.size(), keep));
                }
              }
            } else if (op == 3 && seed % 3 == 0) {
              status = store->Release(entry->id);
              if (status.ok()) registry.Remove(entry->id);
            }
            if (status.ok() && !(op == 3 && seed % 3 == 0)) {
              absl::StatusOr<ReadView> view = store->View(entry->id, layer);
              status = view.status();
              if (view.ok()) {
                checked_reads.fetch_add(1);
                if (ReadTags(*view) != rows) mismatches.fetch_add(1);
              }
            }
            if (!status.ok()) {
              // Only another thread's Release can end a session in its turn.
              if (!Gone(status)) unexpected.fetch_add(1);
              registry.Remove(entry->id);
            }
            if (hand_on) {
              handed.fetch_add(1);
              finisher.Hand(*std::move(turn));
            }
            in_flight->fetch_sub(1);
            pending.fetch_sub(1);
          });
    };

    auto worker = [&](uint32_t seed) {
      std::mt19937 rng(seed);
      std::atomic<int> in_flight{0};
      for (int i = 0; i < 1500; ++i) {
        while (in_flight.load() >= 3) std::this_thread::yield();
        std::shared_ptr<Entry> entry = registry.Pick(rng);
        // Of 24: create, pin a view, release (a third of the time); in a turn: append (15), fork
        // (2), truncate (2), release (a third of the time), read only.
        const int op = std::uniform_int_distribution<int>(0, 23)(rng);
        if (entry == nullptr || op == 0) {
          if (registry.size() >= kMaxSessions) continue;
          absl::StatusOr<SessionId> id = store->CreateSession(TagSpec(kLayers));
          if (!id.ok()) {
            unexpected.fetch_add(1);
            continue;
          }
          auto created = std::make_shared<Entry>();
          created->id = *id;
          registry.Add(created);
        } else if (op == 1) {
          // Pinned and dropped outside any turn: references only, no rows read.
          absl::StatusOr<ReadView> view = store->View(entry->id, 0);
          if (!view.ok() && !Gone(view.status())) unexpected.fetch_add(1);
        } else if (op == 2) {
          if (std::uniform_int_distribution<int>(0, 2)(rng) != 0) continue;
          absl::Status status = store->Release(entry->id);
          if (!status.ok() && !Gone(status)) unexpected.fetch_add(1);
          registry.Remove(entry->id);
        } else {
          const int turn_op = op <= 17 ? 0 : op <= 19 ? 1 : op <= 21 ? 2 : op == 22 ? 3 : 4;
          in_turn(entry, turn_op, std::uniform_int_distribution<int>(0, kLayers - 1)(rng),
                  std::uniform_int_distribution<int>(1, 12)(rng),
                  std::uniform_int_distribution<int>(0, 3)(rng) == 0, rng(), &in_flight);
        }
      }
      while (in_flight.load() > 0) std::this_thread::yield();  // its fns point at in_flight
    };
    std::vector<std::thread> workers;
    for (uint32_t t = 0; t < 6; ++t) workers.emplace_back(worker, 1000 + t);
    for (std::thread& w : workers) w.join();
    // Turns handed to the finisher run the fns queued behind them there.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (pending.load() > 0 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ASSERT_EQ(pending.load(), 0);
  }  // the finisher ends what it still holds
  stop_clock.store(true);
  ticker.join();

  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_EQ(unexpected.load(), 0);
  EXPECT_GT(checked_reads.load(), 1000);
  EXPECT_GT(handed.load(), 200);
  const StoreCounters counters = store->counters();
  SCOPED_TRACE(::testing::Message()
               << "created " << counters.created << ", forked " << counters.forked << ", released "
               << counters.released << ", evicted " << counters.evicted << ", expired "
               << counters.expired << ", copies " << counters.cow_copies << ", reads "
               << checked_reads.load() << ", turns handed on " << handed.load());
  EXPECT_GT(counters.evicted, 0);
  EXPECT_GT(counters.cow_copies, 0);
  EXPECT_GT(counters.forked, 0);
  for (const std::shared_ptr<Entry>& entry : registry.All()) {
    absl::Status status = store->Release(entry->id);
    EXPECT_TRUE(status.ok() || Gone(status)) << status;
  }
  EXPECT_EQ(store->counters().sessions_live, 0);
  EXPECT_EQ(store->pool(0).used_pages(), 0);
}

}  // namespace
}  // namespace attention::session
