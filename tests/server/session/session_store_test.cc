// The session store's calls one at a time: allocation and slots, fork sharing and copy-on-write,
// truncate then re-append, release, LRU eviction (only idle sessions, shared pages counted once,
// all or nothing), TTL expiry with a fake clock, pinned views, turns, counters, several pools,
// failures of the storage, and a long random sequence of calls checked against a model.
#include "server/session/session_store.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "tests/server/session/session_test_util.h"

namespace attention::session {
namespace {

using ::attention::session::testing::AppendTags;
using ::attention::session::testing::Concat;
using ::attention::session::testing::FakeClock;
using ::attention::session::testing::kTagPageBytes;
using ::attention::session::testing::kTagPageSize;
using ::attention::session::testing::MakeStore;
using ::attention::session::testing::ReadTags;
using ::attention::session::testing::Tags;
using ::attention::session::testing::TagSpec;

bool HasMessage(const absl::Status& status, const std::string& text) {
  return status.message().find(text) != std::string::npos;
}

std::vector<int32_t> Table(const ReadView& view) {
  return {view.page_table().begin(), view.page_table().end()};
}

class SessionStoreTest : public ::testing::Test {
 protected:
  // A store of `num_pages` 8-token pages.
  void Init(int64_t num_pages, StoreOptions options = {}, int pools = 1) {
    options.sweep_interval = absl::ZeroDuration();
    store_ = MakeStore(kTagPageBytes, num_pages, &clock_, options, pools);
    ASSERT_NE(store_, nullptr);
  }

  SessionId Create(int layers = 1, SessionSpec spec = TagSpec()) {
    spec.layers = layers;
    absl::StatusOr<SessionId> id = store_->CreateSession(spec);
    EXPECT_TRUE(id.ok()) << id.status();
    return id.ok() ? *id : SessionId{};
  }

  // Appends tags and drops the view the append returned.
  void Append(const SessionId& id, int layer, const std::vector<float>& tags) {
    absl::StatusOr<AppendResult> result = AppendTags(*store_, id, layer, tags);
    ASSERT_TRUE(result.ok()) << result.status();
  }

  std::vector<float> Read(const SessionId& id, int layer = 0) {
    absl::StatusOr<ReadView> view = store_->View(id, layer);
    EXPECT_TRUE(view.ok()) << view.status();
    return view.ok() ? ReadTags(*view) : std::vector<float>{};
  }

  std::vector<int32_t> TableOf(const SessionId& id, int layer = 0) {
    absl::StatusOr<ReadView> view = store_->View(id, layer);
    EXPECT_TRUE(view.ok()) << view.status();
    return view.ok() ? Table(*view) : std::vector<int32_t>{};
  }

  int32_t used() const { return store_->pool(0).used_pages(); }

  FakeClock clock_;
  std::unique_ptr<SessionStore> store_;
};

TEST_F(SessionStoreTest, CreateSessionChecksTheSpecNamingTheField) {
  StoreOptions options;
  options.limits.max_layers = 4;
  options.limits.max_tokens = 1000;
  options.limits.max_idle_ttl = absl::Hours(1);
  Init(16, options);
  struct Case {
    SessionSpec spec;
    std::string message;
  };
  std::vector<Case> cases;
  auto add = [&](auto edit, const std::string& message) {
    SessionSpec spec = TagSpec();
    edit(spec);
    cases.push_back({spec, message});
  };
  add([](SessionSpec& s) { s.layers = 0; }, "layers: must be in [1, 4], got 0");
  add([](SessionSpec& s) { s.layers = 5; }, "layers: must be in [1, 4], got 5");
  add([](SessionSpec& s) { s.kv_heads = 0; }, "kv_heads: must be >= 1, got 0");
  add([](SessionSpec& s) { s.head_dim = 257; }, "head_dim: must be in [1, 256], got 257");
  add([](SessionSpec& s) { s.head_dim = 64; }, "does not fit half a page");
  add([](SessionSpec& s) { s.max_tokens = 1001; },
      "max_tokens: must be in [0, 1000] (0: the server's limit), got 1001");
  add([](SessionSpec& s) { s.max_tokens = -1; }, "max_tokens: must be in [0, 1000]");
  add([](SessionSpec& s) { s.idle_ttl = absl::Hours(2); },
      "idle_ttl: must be in [0, 1h] (0: the server's default), got 2h");
  add([](SessionSpec& s) { s.idle_ttl = -absl::Seconds(1); }, "idle_ttl: must be in [0, 1h]");
  add([](SessionSpec& s) { s.pool = 1; }, "pool: must be -1 (any) or in [0, 1), got 1");
  add([](SessionSpec& s) { s.pool = -2; }, "pool: must be -1 (any) or in [0, 1), got -2");
  for (const Case& c : cases) {
    absl::StatusOr<SessionId> id = store_->CreateSession(c.spec);
    ASSERT_FALSE(id.ok()) << c.message;
    EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument) << id.status();
    EXPECT_TRUE(HasMessage(id.status(), c.message)) << id.status();
  }
  EXPECT_EQ(store_->counters().sessions_live, 0);
}

TEST_F(SessionStoreTest, CreateSessionResolvesTheDefaults) {
  StoreOptions options;
  options.limits.max_tokens = 500;
  options.limits.default_idle_ttl = absl::Seconds(30);
  Init(16, options);
  const absl::Time before = clock_.Now();
  const SessionId id = Create(3);
  absl::StatusOr<SessionInfo> info = store_->GetSession(id);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->id, id);
  EXPECT_EQ(info->spec.layers, 3);
  EXPECT_EQ(info->spec.kv_heads, 1);
  EXPECT_EQ(info->spec.head_dim, 4);
  EXPECT_EQ(info->spec.dtype, DType::kFloat32);
  EXPECT_EQ(info->spec.max_tokens, 500);
  EXPECT_EQ(info->spec.idle_ttl, absl::Seconds(30));
  EXPECT_EQ(info->spec.pool, 0);
  EXPECT_EQ(info->page_size, kTagPageSize);
  EXPECT_EQ(info->tokens, (std::vector<int64_t>{0, 0, 0}));
  EXPECT_EQ(info->pages, 0);
  EXPECT_EQ(info->created, before);
  EXPECT_EQ(info->last_use, before);

  SessionSpec spec = TagSpec();
  spec.max_tokens = 20;
  spec.idle_ttl = absl::Seconds(5);
  absl::StatusOr<SessionId> custom = store_->CreateSession(spec);
  ASSERT_TRUE(custom.ok());
  info = store_->GetSession(*custom);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->spec.max_tokens, 20);
  EXPECT_EQ(info->spec.idle_ttl, absl::Seconds(5));
  EXPECT_NE(*custom, id);
}

TEST_F(SessionStoreTest, AppendReservesSlotsPageByPage) {
  Init(16);
  const SessionId id = Create();
  absl::StatusOr<AppendResult> first = store_->Append(id, 0, 10);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->first_token, 0);
  ASSERT_EQ(first->view.tokens(), 10);
  const std::vector<int32_t> table = Table(first->view);
  ASSERT_EQ(table.size(), 2u);
  ASSERT_EQ(first->slots.size(), 10u);
  for (int64_t t = 0; t < 10; ++t) {
    EXPECT_EQ(first->slots[t], table[t / kTagPageSize] * kTagPageSize + t % kTagPageSize) << t;
  }
  EXPECT_EQ(first->view.layer(), 0);
  EXPECT_EQ(first->view.pool(), 0);
  EXPECT_EQ(first->view.layout().page_size, kTagPageSize);
  EXPECT_EQ(first->view.base(), store_->pool(0).storage().base());
  EXPECT_EQ(used(), 2);
  first->view.Reset();

  absl::StatusOr<AppendResult> none = store_->Append(id, 0, 0);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->slots.empty());
  EXPECT_EQ(none->first_token, 10);
  EXPECT_EQ(none->view.tokens(), 10);
  none->view.Reset();

  // The partial second page fills first, then one new page.
  absl::StatusOr<AppendResult> second = store_->Append(id, 0, 8);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->first_token, 10);
  const std::vector<int32_t> grown = Table(second->view);
  ASSERT_EQ(grown.size(), 3u);
  EXPECT_EQ(grown[0], table[0]);
  EXPECT_EQ(grown[1], table[1]);
  for (int64_t i = 0; i < 8; ++i) {
    const int64_t t = 10 + i;
    EXPECT_EQ(second->slots[i], grown[t / kTagPageSize] * kTagPageSize + t % kTagPageSize);
  }
  EXPECT_EQ(used(), 3);
}

TEST_F(SessionStoreTest, RowsReadBackThroughTheViewPerLayer) {
  Init(16);
  const SessionId id = Create(2);
  Append(id, 0, Tags(100, 5));
  Append(id, 1, Tags(200, 12));
  Append(id, 0, Tags(105, 7));
  EXPECT_EQ(Read(id, 0), Tags(100, 12));
  EXPECT_EQ(Read(id, 1), Tags(200, 12));
  absl::StatusOr<SessionInfo> info = store_->GetSession(id);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->tokens, (std::vector<int64_t>{12, 12}));
  EXPECT_EQ(info->pages, 4);
  EXPECT_EQ(info->shared_pages, 0);
}

TEST_F(SessionStoreTest, CallsCheckTheirArgumentsNamingTheField) {
  Init(16);
  const SessionId id = Create(2);
  absl::Status status = store_->Append(id, 2, 1).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(HasMessage(status, "layer: must be in [0, 2) for this session, got 2")) << status;
  EXPECT_EQ(store_->Append(id, -1, 1).status().code(), absl::StatusCode::kInvalidArgument);
  status = store_->Append(id, 0, -1).status();
  EXPECT_TRUE(HasMessage(status, "rows: must be >= 0, got -1")) << status;
  EXPECT_EQ(store_->View(id, 5).status().code(), absl::StatusCode::kInvalidArgument);
  status = store_->Fork(id, -3).status();
  EXPECT_TRUE(HasMessage(status, "prefix_tokens: must be >= 0, got -3")) << status;
  status = store_->Truncate(id, -1);
  EXPECT_TRUE(HasMessage(status, "tokens: must be >= 0, got -1")) << status;
}

TEST_F(SessionStoreTest, MaxTokensIsPerLayerAndLeavesTheLayerUnchanged) {
  Init(16);
  SessionSpec spec = TagSpec(2);
  spec.max_tokens = 12;
  absl::StatusOr<SessionId> id = store_->CreateSession(spec);
  ASSERT_TRUE(id.ok());
  Append(*id, 0, Tags(0, 10));
  absl::Status status = AppendTags(*store_, *id, 0, Tags(10, 3)).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(HasMessage(status, "max_tokens: layer 0 of session " + id->ShortForm() +
                                     " holds 10 tokens; 3 more would exceed its max_tokens of 12"))
      << status;
  EXPECT_EQ(Read(*id, 0), Tags(0, 10));
  EXPECT_EQ(used(), 2);
  Append(*id, 0, Tags(10, 2));
  Append(*id, 1, Tags(50, 12));
  EXPECT_EQ(Read(*id, 0), Tags(0, 12));
}

TEST_F(SessionStoreTest, ForkSharesFullPagesAndCopiesASharedPartialPageOnWrite) {
  Init(16);
  const SessionId parent = Create();
  Append(parent, 0, Tags(0, 20));  // pages A B C, C holding 4 rows
  const std::vector<int32_t> parent_table = TableOf(parent);
  ASSERT_EQ(parent_table.size(), 3u);

  absl::StatusOr<SessionId> child = store_->Fork(parent, 20);
  ASSERT_TRUE(child.ok()) << child.status();
  EXPECT_EQ(TableOf(*child), parent_table);
  EXPECT_EQ(Read(*child), Tags(0, 20));
  EXPECT_EQ(used(), 3);
  absl::StatusOr<SessionInfo> info = store_->GetSession(*child);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->pages, 3);
  EXPECT_EQ(info->shared_pages, 3);
  for (int32_t page : parent_table) EXPECT_EQ(store_->pool(0).refcount(page), 2);

  // The child writes into the shared partial page C: it gets a copy C' first.
  Append(*child, 0, Tags(100, 2));
  const std::vector<int32_t> child_table = TableOf(*child);
  ASSERT_EQ(child_table.size(), 3u);
  EXPECT_EQ(child_table[0], parent_table[0]);
  EXPECT_EQ(child_table[1], parent_table[1]);
  EXPECT_NE(child_table[2], parent_table[2]);
  EXPECT_EQ(Read(*child), Concat(Tags(0, 20), Tags(100, 2)));
  EXPECT_EQ(Read(parent), Tags(0, 20));
  EXPECT_EQ(store_->counters().cow_copies, 1);
  EXPECT_EQ(used(), 4);

  // C is the parent's alone now: written in place, no copy.
  Append(parent, 0, Tags(50, 3));
  EXPECT_EQ(TableOf(parent), parent_table);
  EXPECT_EQ(Read(parent), Concat(Tags(0, 20), Tags(50, 3)));
  EXPECT_EQ(Read(*child), Concat(Tags(0, 20), Tags(100, 2)));
  EXPECT_EQ(store_->counters().cow_copies, 1);
  EXPECT_EQ(store_->counters().forked, 1);

  // Full pages stay shared as both grow past them.
  Append(parent, 0, Tags(60, 8));
  Append(*child, 0, Tags(110, 8));
  EXPECT_EQ(TableOf(parent)[0], TableOf(*child)[0]);
  EXPECT_EQ(Read(parent), Concat(Concat(Tags(0, 20), Tags(50, 3)), Tags(60, 8)));
  EXPECT_EQ(Read(*child), Concat(Concat(Tags(0, 20), Tags(100, 2)), Tags(110, 8)));
}

TEST_F(SessionStoreTest, ForkOfAPrefixAndOfUnequalLayers) {
  Init(32);
  const SessionId parent = Create(2);
  Append(parent, 0, Tags(0, 20));
  Append(parent, 1, Tags(100, 5));

  absl::StatusOr<SessionId> child = store_->Fork(parent, 10);
  ASSERT_TRUE(child.ok());
  absl::StatusOr<SessionInfo> info = store_->GetSession(*child);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->tokens, (std::vector<int64_t>{10, 5}));
  EXPECT_EQ(info->pages, 3);  // A, B (2 of its 8 rows) in layer 0, one page in layer 1
  EXPECT_EQ(Read(*child, 0), Tags(0, 10));
  EXPECT_EQ(Read(*child, 1), Tags(100, 5));
  // Page B is full in the parent and shared: the child's append copies its first 2 rows.
  Append(*child, 0, Tags(500, 3));
  EXPECT_EQ(Read(*child, 0), Concat(Tags(0, 10), Tags(500, 3)));
  EXPECT_EQ(Read(parent, 0), Tags(0, 20));

  absl::StatusOr<SessionId> empty = store_->Fork(parent, 0);
  ASSERT_TRUE(empty.ok());
  info = store_->GetSession(*empty);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->tokens, (std::vector<int64_t>{0, 0}));
  EXPECT_EQ(info->pages, 0);

  absl::Status status = store_->Fork(parent, 21).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(HasMessage(
      status, "prefix_tokens: must be at most the session's longest layer (20 tokens), got 21"))
      << status;
}

TEST_F(SessionStoreTest, TruncateFreesPagesAndReappendOverwrites) {
  Init(16);
  const SessionId id = Create(2);
  Append(id, 0, Tags(0, 20));
  Append(id, 1, Tags(100, 6));
  EXPECT_EQ(used(), 4);
  ASSERT_TRUE(store_->Truncate(id, 9).ok());
  absl::StatusOr<SessionInfo> info = store_->GetSession(id);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->tokens, (std::vector<int64_t>{9, 6}));  // the shorter layer stays
  EXPECT_EQ(used(), 3);
  EXPECT_EQ(Read(id, 0), Tags(0, 9));
  Append(id, 0, Tags(900, 10));
  EXPECT_EQ(Read(id, 0), Concat(Tags(0, 9), Tags(900, 10)));
  EXPECT_EQ(Read(id, 1), Tags(100, 6));
  EXPECT_EQ(store_->counters().cow_copies, 0);

  absl::Status status = store_->Truncate(id, 20);
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(
      HasMessage(status, "tokens: must be at most the session's longest layer (19 tokens), got 20"))
      << status;
  ASSERT_TRUE(store_->Truncate(id, 0).ok());
  EXPECT_EQ(used(), 0);
  Append(id, 1, Tags(7, 1));
  EXPECT_EQ(Read(id, 1), Tags(7, 1));
}

TEST_F(SessionStoreTest, APinnedViewKeepsItsRowsThroughTruncateAndReappend) {
  Init(16);
  const SessionId id = Create();
  Append(id, 0, Tags(0, 12));
  absl::StatusOr<ReadView> old = store_->View(id, 0);
  ASSERT_TRUE(old.ok());
  ASSERT_TRUE(store_->Truncate(id, 10).ok());
  // Rows 10, 11 of page B are still read by the old view: the append copies B first.
  Append(id, 0, Tags(500, 4));
  EXPECT_EQ(ReadTags(*old), Tags(0, 12));
  EXPECT_EQ(Read(id), Concat(Tags(0, 10), Tags(500, 4)));
  EXPECT_EQ(store_->counters().cow_copies, 1);
  EXPECT_EQ(used(), 3);  // A, the old B (the view's only), the new B
  old->Reset();
  EXPECT_EQ(used(), 2);
}

TEST_F(SessionStoreTest, AViewSharesTheLayersPageListUntilTheLayerChanges) {
  Init(16);
  const SessionId id = Create();
  Append(id, 0, Tags(0, 16));  // two full pages
  absl::StatusOr<ReadView> first = store_->View(id, 0);
  absl::StatusOr<ReadView> second = store_->View(id, 0);
  ASSERT_TRUE(first.ok() && second.ok());
  // The views share the layer's list: no page gains a reference, the tables are one array.
  EXPECT_EQ(first->page_table().data(), second->page_table().data());
  for (int32_t page : first->page_table()) EXPECT_EQ(store_->pool(0).refcount(page), 1);
  EXPECT_EQ(store_->counters().list_copies, 0);

  // Appending while they exist copies the list (not the full pages) and leaves theirs as it was.
  Append(id, 0, Tags(16, 3));
  EXPECT_EQ(store_->counters().list_copies, 1);
  EXPECT_EQ(store_->counters().cow_copies, 0);
  EXPECT_EQ(first->page_table().size(), 2u);
  EXPECT_EQ(first->tokens(), 16);
  EXPECT_EQ(ReadTags(*second), Tags(0, 16));
  for (int32_t page : first->page_table()) EXPECT_EQ(store_->pool(0).refcount(page), 2);
  first->Reset();
  second->Reset();
  for (int32_t page : TableOf(id)) EXPECT_EQ(store_->pool(0).refcount(page), 1);

  // Without a view, the list changes in place.
  Append(id, 0, Tags(19, 3));
  Append(id, 0, Tags(22, 10));
  EXPECT_EQ(store_->counters().list_copies, 1);
  EXPECT_EQ(Read(id), Tags(0, 32));
  // A truncate that keeps every page needs no copy even with a view held; the next append does.
  absl::StatusOr<ReadView> held = store_->View(id, 0);
  ASSERT_TRUE(held.ok());
  ASSERT_TRUE(store_->Truncate(id, 30).ok());
  EXPECT_EQ(store_->counters().list_copies, 1);
  EXPECT_EQ(held->tokens(), 32);
  Append(id, 0, Tags(100, 1));
  EXPECT_EQ(store_->counters().list_copies, 2);
  EXPECT_EQ(store_->counters().cow_copies, 1);
  EXPECT_EQ(ReadTags(*held), Tags(0, 32));
  EXPECT_EQ(Read(id), Concat(Tags(0, 30), Tags(100, 1)));
}

TEST_F(SessionStoreTest, ReleaseEndsTheSessionAndFreesItsPages) {
  Init(16);
  const SessionId id = Create();
  const SessionId other = Create();
  Append(id, 0, Tags(0, 17));
  Append(other, 0, Tags(0, 1));
  EXPECT_EQ(store_->counters().sessions_live, 2);
  ASSERT_TRUE(store_->Release(id).ok());
  EXPECT_EQ(used(), 1);
  const std::string released = "session_id: session " + id.ShortForm() + " was released";
  for (const absl::Status& status :
       {store_->Append(id, 0, 1).status(), store_->View(id, 0).status(),
        store_->Fork(id, 0).status(), store_->Truncate(id, 0), store_->Release(id),
        store_->GetSession(id).status()}) {
    EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
    EXPECT_TRUE(HasMessage(status, released)) << status;
  }
  StoreCounters counters = store_->counters();
  EXPECT_EQ(counters.sessions_live, 1);
  EXPECT_EQ(counters.released, 1);
  EXPECT_EQ(counters.created, 2);
  EXPECT_EQ(Read(other), Tags(0, 1));
}

TEST_F(SessionStoreTest, UnknownIdsAndEndsTooOldToRememberSayUnknown) {
  StoreOptions options;
  options.shards = 1;
  options.max_remembered_ends = 2;
  Init(16, options);
  absl::StatusOr<SessionId> stranger = SessionId::Generate();
  ASSERT_TRUE(stranger.ok());
  absl::Status status = store_->View(*stranger, 0).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(HasMessage(status, "session_id: no session " + stranger->ShortForm() +
                                     " here (never created on this replica, or it ended too "
                                     "long ago to be remembered)"))
      << status;
  const SessionId a = Create(), b = Create(), c = Create();
  for (const SessionId& id : {a, b, c}) ASSERT_TRUE(store_->Release(id).ok());
  EXPECT_TRUE(HasMessage(store_->View(a, 0).status(), "no session " + a.ShortForm()));
  EXPECT_TRUE(HasMessage(store_->View(b, 0).status(), "was released"));
  EXPECT_TRUE(HasMessage(store_->View(c, 0).status(), "was released"));
}

TEST_F(SessionStoreTest, APinnedViewOutlivesReleaseOfItsSession) {
  Init(16);
  const SessionId id = Create();
  Append(id, 0, Tags(0, 20));
  absl::StatusOr<ReadView> view = store_->View(id, 0);
  ASSERT_TRUE(view.ok());
  ASSERT_TRUE(store_->Release(id).ok());
  EXPECT_EQ(store_->counters().sessions_live, 0);
  EXPECT_EQ(used(), 3);  // held by the view
  // A new session cannot take them while the view reads them.
  const SessionId next = Create();
  Append(next, 0, Tags(1000, 24));
  EXPECT_EQ(ReadTags(*view), Tags(0, 20));
  ReadView moved = std::move(*view);
  EXPECT_TRUE(view->empty());
  EXPECT_EQ(ReadTags(moved), Tags(0, 20));
  moved.Reset();
  EXPECT_TRUE(moved.empty());
  EXPECT_EQ(used(), 3);  // next's
}

TEST_F(SessionStoreTest, EvictionTakesTheLeastRecentlyUsedIdleSessionsFirst) {
  Init(8);
  const SessionId a = Create(), b = Create(), c = Create();
  for (const SessionId& id : {a, b, c}) {
    clock_.Advance(absl::Seconds(1));
    Append(id, 0, Tags(0, 16));  // 2 pages each
  }
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(Read(a), Tags(0, 16));  // a is now the most recently used: b, c, a
  clock_.Advance(absl::Seconds(1));
  const SessionId d = Create();
  Append(d, 0, Tags(0, 32));  // 4 pages, 2 free: b goes
  absl::Status status = store_->View(b, 0).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(HasMessage(status, "session_id: session " + b.ShortForm() +
                                     " was evicted to free K/V pages (its pool was full and it "
                                     "was the least recently used idle session)"))
      << status;
  EXPECT_EQ(Read(c), Tags(0, 16));  // c is now more recent than a
  EXPECT_EQ(store_->counters().evicted, 1);
  clock_.Advance(absl::Seconds(1));
  Append(d, 0, Tags(32, 9));  // 2 more pages: a goes
  EXPECT_EQ(store_->View(a, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Read(c), Tags(0, 16));
  EXPECT_EQ(Read(d), Tags(0, 41));
  StoreCounters counters = store_->counters();
  EXPECT_EQ(counters.evicted, 2);
  EXPECT_EQ(counters.sessions_live, 2);
  EXPECT_EQ(counters.pools[0].pages_used, 8);
}

TEST_F(SessionStoreTest, EvictionSparesPinnedSessionsAndSessionsInATurn) {
  Init(6);
  const SessionId pinned = Create(), in_turn = Create(), idle = Create();
  for (const SessionId& id : {pinned, in_turn, idle}) {
    clock_.Advance(absl::Seconds(1));
    Append(id, 0, Tags(0, 16));
  }
  absl::StatusOr<ReadView> view = store_->View(pinned, 0);
  ASSERT_TRUE(view.ok());
  Turn turn;
  store_->RunInTurn(in_turn, [&turn](absl::StatusOr<Turn> t) {
    ASSERT_TRUE(t.ok()) << t.status();
    turn = *std::move(t);
  });
  ASSERT_FALSE(turn.ended());
  clock_.Advance(absl::Seconds(1));
  // `idle` was used last, yet it is the only one that may go.
  const SessionId d = Create();
  Append(d, 0, Tags(0, 16));
  EXPECT_EQ(store_->View(idle, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ReadTags(*view), Tags(0, 16));
  EXPECT_EQ(Read(in_turn), Tags(0, 16));
  // Nothing else may go: the next append fails and changes nothing.
  absl::Status status = AppendTags(*store_, d, 0, Tags(16, 1)).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  turn.End();
  Append(d, 0, Tags(16, 1));  // now in_turn is idle and goes
  EXPECT_EQ(store_->View(in_turn, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ReadTags(*view), Tags(0, 16));
}

TEST_F(SessionStoreTest, ExhaustionChangesNothingAndTheSameAppendLaterSucceeds) {
  Init(6);
  const SessionId old_idle = Create(), pinned = Create(), appender = Create();
  clock_.Advance(absl::Seconds(1));
  Append(old_idle, 0, Tags(0, 16));
  clock_.Advance(absl::Seconds(1));
  Append(pinned, 0, Tags(100, 16));
  clock_.Advance(absl::Seconds(1));
  Append(appender, 0, Tags(200, 3));  // 1 page; 1 free
  absl::StatusOr<ReadView> view = store_->View(pinned, 0);
  ASSERT_TRUE(view.ok());
  const std::vector<int32_t> appender_table = TableOf(appender);

  // 37 more rows need 4 more pages: 1 free + 2 from old_idle is not enough, so old_idle stays.
  absl::Status status = AppendTags(*store_, appender, 0, Tags(203, 37)).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(HasMessage(status,
                         "K/V pool 0: the append needs 4 pages; 1 of 6 are free and "
                         "evicting every idle session would free 2 more (sessions in "
                         "use are kept); the session is unchanged"))
      << status;
  EXPECT_EQ(Read(appender), Tags(200, 3));
  EXPECT_EQ(TableOf(appender), appender_table);
  EXPECT_EQ(Read(old_idle), Tags(0, 16));
  EXPECT_EQ(ReadTags(*view), Tags(100, 16));
  StoreCounters counters = store_->counters();
  EXPECT_EQ(counters.evicted, 0);
  EXPECT_EQ(counters.sessions_live, 3);
  EXPECT_EQ(counters.pools[0].pages_used, 5);

  // Unpinned, the same append evicts both, oldest first, and succeeds.
  view->Reset();
  Append(appender, 0, Tags(203, 37));
  EXPECT_EQ(Read(appender), Tags(200, 40));
  EXPECT_EQ(store_->View(old_idle, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->View(pinned, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->counters().evicted, 2);
}

TEST_F(SessionStoreTest, EvictionCountsAPageSharedByAForkOnlyWhenEveryHolderGoes) {
  Init(4);
  const SessionId parent = Create();
  clock_.Advance(absl::Seconds(1));
  Append(parent, 0, Tags(0, 16));
  clock_.Advance(absl::Seconds(1));
  absl::StatusOr<SessionId> child = store_->Fork(parent, 16);  // shares both pages
  ASSERT_TRUE(child.ok());
  clock_.Advance(absl::Seconds(1));
  const SessionId appender = Create();
  {
    // With the child pinned, evicting the parent frees nothing: no one is evicted.
    absl::StatusOr<ReadView> view = store_->View(*child, 0);
    ASSERT_TRUE(view.ok());
    absl::Status status = AppendTags(*store_, appender, 0, Tags(0, 24)).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
    EXPECT_TRUE(HasMessage(status, "evicting every idle session would free 0 more")) << status;
    EXPECT_EQ(Read(parent), Tags(0, 16));
    EXPECT_EQ(store_->counters().evicted, 0);
  }
  // Both idle: both must go for the two pages to come free.
  Append(appender, 0, Tags(0, 24));
  EXPECT_EQ(store_->View(parent, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->View(*child, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->counters().evicted, 2);
  EXPECT_EQ(Read(appender), Tags(0, 24));
}

TEST_F(SessionStoreTest, IdleSessionsExpireAfterTheirTtl) {
  StoreOptions options;
  options.limits.default_idle_ttl = absl::Minutes(10);
  Init(16, options);
  SessionSpec spec = TagSpec();
  spec.idle_ttl = absl::Seconds(10);
  absl::StatusOr<SessionId> short_lived = store_->CreateSession(spec);
  ASSERT_TRUE(short_lived.ok());
  const SessionId long_lived = Create();
  Append(*short_lived, 0, Tags(0, 9));
  Append(long_lived, 0, Tags(0, 1));

  clock_.Advance(absl::Seconds(10));          // exactly the TTL: still alive
  EXPECT_EQ(Read(*short_lived), Tags(0, 9));  // and used again now
  clock_.Advance(absl::Seconds(9));
  ASSERT_TRUE(store_->GetSession(*short_lived).ok());  // not a use
  clock_.Advance(absl::Seconds(2));
  absl::Status status = store_->View(*short_lived, 0).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(HasMessage(status, "session_id: session " + short_lived->ShortForm() +
                                     " expired after 10s idle (its TTL)"))
      << status;
  EXPECT_EQ(used(), 1);
  EXPECT_EQ(store_->counters().expired, 1);
  EXPECT_EQ(Read(long_lived), Tags(0, 1));
}

TEST_F(SessionStoreTest, SweepEndsExpiredSessionsButNotPinnedOnes) {
  Init(16);
  const SessionId a = Create(), b = Create(), c = Create();
  for (const SessionId& id : {a, b, c}) Append(id, 0, Tags(0, 8));
  absl::StatusOr<ReadView> view = store_->View(b, 0);
  ASSERT_TRUE(view.ok());
  clock_.Advance(absl::Minutes(5));
  Append(c, 0, Tags(8, 1));
  clock_.Advance(absl::Minutes(5) + absl::Nanoseconds(1));
  EXPECT_EQ(store_->SweepExpired(), 1);  // a; b is pinned, c was used 5 minutes ago
  EXPECT_EQ(store_->counters().expired, 1);
  EXPECT_EQ(used(), 3);
  EXPECT_TRUE(HasMessage(store_->View(a, 0).status(), "expired after 10m idle"));
  EXPECT_EQ(ReadTags(*view), Tags(0, 8));
  view->Reset();
  EXPECT_EQ(store_->SweepExpired(), 1);  // b, idle since before the view
  EXPECT_EQ(store_->SweepExpired(), 0);
  EXPECT_EQ(used(), 2);
  EXPECT_EQ(Read(c), Tags(0, 9));
}

TEST(SessionStoreSweeperTest, TheSweeperThreadEndsExpiredSessions) {
  FakeClock clock;
  StoreOptions options;
  options.sweep_interval = absl::Milliseconds(5);
  std::unique_ptr<SessionStore> store = MakeStore(kTagPageBytes, 8, &clock, options);
  ASSERT_NE(store, nullptr);
  absl::StatusOr<SessionId> id = store->CreateSession(TagSpec());
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(AppendTags(*store, *id, 0, Tags(0, 3)).ok());
  clock.Advance(options.limits.default_idle_ttl + absl::Seconds(1));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (store->counters().expired == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(store->counters().expired, 1);
  EXPECT_EQ(store->pool(0).used_pages(), 0);
}

TEST_F(SessionStoreTest, TurnsRunOneAtATimeInArrivalOrder) {
  Init(16);
  const SessionId id = Create();
  std::vector<int> order;
  Turn first;
  store_->RunInTurn(id, [&](absl::StatusOr<Turn> turn) {
    ASSERT_TRUE(turn.ok());
    EXPECT_EQ(turn->id(), id);
    order.push_back(1);
    first = *std::move(turn);  // handed on: the turn outlives this fn
  });
  store_->RunInTurn(id, [&](absl::StatusOr<Turn> turn) {
    ASSERT_TRUE(turn.ok());
    order.push_back(2);
    Append(id, 0, Tags(0, 1));  // ends with the fn
  });
  store_->RunInTurn(id, [&](absl::StatusOr<Turn> turn) {
    ASSERT_TRUE(turn.ok());
    order.push_back(3);
    ASSERT_TRUE(store_->Release(id).ok());
  });
  store_->RunInTurn(id, [&](absl::StatusOr<Turn> turn) {
    ASSERT_FALSE(turn.ok());
    EXPECT_TRUE(HasMessage(turn.status(), "was released")) << turn.status();
    order.push_back(4);
  });
  EXPECT_EQ(order, (std::vector<int>{1}));
  // Another session's turns do not wait.
  const SessionId other = Create();
  bool other_ran = false;
  store_->RunInTurn(other, [&](absl::StatusOr<Turn> turn) { other_ran = turn.ok(); });
  EXPECT_TRUE(other_ran);
  // Ending the first turn on another thread runs the rest there, in order.
  std::thread ender([&first] { first.End(); });
  ender.join();
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3, 4}));

  absl::StatusOr<SessionId> stranger = SessionId::Generate();
  ASSERT_TRUE(stranger.ok());
  bool answered = false;
  store_->RunInTurn(*stranger, [&](absl::StatusOr<Turn> turn) {
    answered = true;
    EXPECT_EQ(turn.status().code(), absl::StatusCode::kNotFound);
  });
  EXPECT_TRUE(answered);
}

TEST_F(SessionStoreTest, AnUnpinnedTurnLetsItsSessionGoButStillHoldsTheNextCall) {
  Init(2);
  const SessionId answered = Create();
  Append(answered, 0, Tags(0, 16));  // both pages
  Turn turn;
  store_->RunInTurn(answered, [&](absl::StatusOr<Turn> t) { turn = *std::move(t); });
  bool next_ran = false;
  absl::Status next_status;
  store_->RunInTurn(answered, [&](absl::StatusOr<Turn> t) {
    next_ran = true;
    next_status = t.status();
  });
  const SessionId other = Create();
  // Pinned by its turn: the other session cannot take its pages.
  EXPECT_EQ(AppendTags(*store_, other, 0, Tags(0, 1)).status().code(),
            absl::StatusCode::kResourceExhausted);
  turn.Unpin();  // as a call does right before its answer
  turn.Unpin();  // a second time changes nothing
  EXPECT_FALSE(next_ran);
  Append(other, 0, Tags(0, 1));  // the answered session is idle now and goes
  EXPECT_EQ(store_->counters().evicted, 1);
  EXPECT_FALSE(next_ran);
  turn.End();  // the next call runs, and finds the session gone
  EXPECT_TRUE(next_ran);
  EXPECT_EQ(next_status.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(HasMessage(next_status, "evicted")) << next_status;
}

TEST_F(SessionStoreTest, ATurnKeepsItsSessionFromExpiringAndCountsAsAUse) {
  Init(16);
  const SessionId id = Create();
  Append(id, 0, Tags(0, 3));
  Turn turn;
  store_->RunInTurn(id, [&](absl::StatusOr<Turn> t) { turn = *std::move(t); });
  clock_.Advance(absl::Hours(1));
  EXPECT_EQ(store_->SweepExpired(), 0);
  EXPECT_EQ(Read(id), Tags(0, 3));
  clock_.Advance(absl::Hours(1));
  turn.End();  // the idle time starts now
  clock_.Advance(absl::Minutes(9));
  EXPECT_EQ(store_->SweepExpired(), 0);
  clock_.Advance(absl::Minutes(2));
  EXPECT_EQ(store_->SweepExpired(), 1);
}

TEST_F(SessionStoreTest, CountersFollowSessionsPagesAndEnds) {
  StoreOptions options;
  options.limits.max_sessions = 3;
  Init(4, options);
  const SessionId a = Create(), b = Create();
  Append(a, 0, Tags(0, 9));                             // pages P (full) and Q
  absl::StatusOr<SessionId> fork = store_->Fork(a, 8);  // shares P
  ASSERT_TRUE(fork.ok());
  Append(b, 0, Tags(0, 1));
  absl::Status full = store_->CreateSession(TagSpec()).status();
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(HasMessage(full, "max_sessions: 3 sessions are live")) << full;
  EXPECT_EQ(store_->Fork(a, 0).status().code(), absl::StatusCode::kResourceExhausted);
  StoreCounters counters = store_->counters();
  EXPECT_EQ(counters.sessions_live, 3);
  EXPECT_EQ(counters.created, 2);
  EXPECT_EQ(counters.forked, 1);
  ASSERT_EQ(counters.pools.size(), 1u);
  EXPECT_EQ(counters.pools[0].pages_total, 4);
  EXPECT_EQ(counters.pools[0].pages_used, 3);
  EXPECT_EQ(counters.pools[0].pages_free, 1);
  EXPECT_EQ(counters.pools[0].page_bytes, kTagPageBytes);
  EXPECT_EQ(counters.pools[0].kv_bytes_held, 3 * kTagPageBytes);

  ASSERT_TRUE(store_->Release(b).ok());
  clock_.Advance(absl::Seconds(1));
  // 23 more rows need 3 pages; 2 are free and evicting a frees Q (P stays, the fork holds it).
  Append(*fork, 0, Tags(8, 23));
  counters = store_->counters();
  EXPECT_EQ(counters.sessions_live, 1);
  EXPECT_EQ(counters.released, 1);
  EXPECT_EQ(counters.evicted, 1);
  EXPECT_EQ(counters.expired, 0);
  EXPECT_EQ(counters.cow_copies, 0);
  EXPECT_EQ(counters.pools[0].pages_used, 4);
  EXPECT_EQ(Read(*fork), Tags(0, 31));
  EXPECT_EQ(EndReasonName(EndReason::kReleased), "released");
  EXPECT_EQ(EndReasonName(EndReason::kEvicted), "evicted");
  EXPECT_EQ(EndReasonName(EndReason::kExpired), "expired");
}

TEST_F(SessionStoreTest, SessionsGoToTheEmptiestPoolAndEvictOnlyThere) {
  Init(4, {}, /*pools=*/2);
  ASSERT_EQ(store_->num_pools(), 2);
  const SessionId a = Create();
  Append(a, 0, Tags(0, 24));  // pool 0: 3 of 4
  const SessionId b = Create();
  absl::StatusOr<SessionInfo> info = store_->GetSession(b);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->spec.pool, 1);
  Append(b, 0, Tags(0, 8));  // pool 1: 1 of 4
  SessionSpec spec = TagSpec();
  spec.pool = 0;
  absl::StatusOr<SessionId> c = store_->CreateSession(spec);
  ASSERT_TRUE(c.ok());
  clock_.Advance(absl::Seconds(1));
  absl::StatusOr<AppendResult> appended = AppendTags(*store_, *c, 0, Tags(0, 16));  // evicts a
  ASSERT_TRUE(appended.ok()) << appended.status();
  EXPECT_EQ(appended->view.pool(), 0);
  EXPECT_EQ(appended->view.base(), store_->pool(0).storage().base());
  EXPECT_EQ(store_->View(a, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Read(b), Tags(0, 8));
  EXPECT_EQ(store_->pool(1).used_pages(), 1);
}

// A host storage whose writes and copies can be made to fail, as a device's can.
class FlakyStorage final : public PageStorage {
 public:
  explicit FlakyStorage(std::unique_ptr<PageStorage> inner) : inner_(std::move(inner)) {}
  int64_t page_bytes() const override { return inner_->page_bytes(); }
  int32_t num_pages() const override { return inner_->num_pages(); }
  void* base() const override { return inner_->base(); }
  bool host_resident() const override { return true; }
  absl::Status CopyPage(int32_t src, int32_t dst, int64_t half_bytes) override {
    if (fail_copy) return absl::InternalError("device copy failed");
    return inner_->CopyPage(src, dst, half_bytes);
  }
  absl::Status WriteRows(const PageLayout& layout, absl::Span<const int32_t> slots, const void* k,
                         const void* v) override {
    if (fail_write) return absl::InternalError("device write failed");
    return inner_->WriteRows(layout, slots, k, v);
  }
  bool fail_copy = false;
  bool fail_write = false;

 private:
  std::unique_ptr<PageStorage> inner_;
};

TEST(SessionStoreFailureTest, FailedCopiesAndWritesLeaveTheSessionAsItWas) {
  FakeClock clock;
  PoolOptions pool_options;
  pool_options.page_bytes = kTagPageBytes;
  pool_options.num_pages = 8;
  absl::StatusOr<std::unique_ptr<HostPageStorage>> host = HostPageStorage::Create(pool_options);
  ASSERT_TRUE(host.ok());
  auto flaky = std::make_unique<FlakyStorage>(*std::move(host));
  FlakyStorage* storage = flaky.get();
  std::vector<std::unique_ptr<PageStorage>> storages;
  storages.push_back(std::move(flaky));
  StoreOptions options;
  options.sweep_interval = absl::ZeroDuration();
  absl::StatusOr<std::unique_ptr<SessionStore>> created =
      SessionStore::Create(options, std::move(storages), &clock);
  ASSERT_TRUE(created.ok()) << created.status();
  SessionStore& store = **created;

  absl::StatusOr<SessionId> parent = store.CreateSession(TagSpec());
  ASSERT_TRUE(parent.ok());
  ASSERT_TRUE(AppendTags(store, *parent, 0, Tags(0, 5)).ok());
  absl::StatusOr<SessionId> child = store.Fork(*parent, 5);
  ASSERT_TRUE(child.ok());

  storage->fail_copy = true;
  absl::Status status = AppendTags(store, *child, 0, Tags(50, 2)).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(store.pool(0).used_pages(), 1);
  storage->fail_copy = false;

  storage->fail_write = true;
  status = AppendTags(store, *child, 0, Tags(50, 12)).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  // The new page is freed again; the child keeps its copy of the shared page (the same rows).
  EXPECT_EQ(store.pool(0).used_pages(), 2);
  absl::StatusOr<SessionInfo> info = store.GetSession(*child);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->tokens, (std::vector<int64_t>{5}));
  storage->fail_write = false;

  ASSERT_TRUE(AppendTags(store, *child, 0, Tags(50, 12)).ok());
  absl::StatusOr<ReadView> view = store.View(*child, 0);
  ASSERT_TRUE(view.ok());
  EXPECT_EQ(ReadTags(*view), Concat(Tags(0, 5), Tags(50, 12)));
  view = store.View(*parent, 0);
  ASSERT_TRUE(view.ok());
  EXPECT_EQ(ReadTags(*view), Tags(0, 5));
}

// A storage with geometry only: the store's checks never touch its memory.
class GeometryStorage final : public PageStorage {
 public:
  GeometryStorage(int64_t page_bytes, int32_t num_pages)
      : page_bytes_(page_bytes), num_pages_(num_pages) {}
  int64_t page_bytes() const override { return page_bytes_; }
  int32_t num_pages() const override { return num_pages_; }
  void* base() const override { return nullptr; }
  bool host_resident() const override { return false; }
  absl::Status CopyPage(int32_t, int32_t, int64_t) override {
    return absl::UnimplementedError("geometry only");
  }
  absl::Status WriteRows(const PageLayout&, absl::Span<const int32_t>, const void*,
                         const void*) override {
    return absl::UnimplementedError("geometry only");
  }

 private:
  const int64_t page_bytes_;
  const int32_t num_pages_;
};

TEST(SessionStoreCreateTest, ShapesWhoseSlotsWouldPassInt32AreRejected) {
  FakeClock clock;
  std::vector<std::unique_ptr<PageStorage>> storages;
  // 16384 pages of 1 MiB: 2-byte rows give 2^18 rows per page, 2^32 slots.
  storages.push_back(std::make_unique<GeometryStorage>(1 << 20, 16384));
  StoreOptions options;
  options.sweep_interval = absl::ZeroDuration();
  absl::StatusOr<std::unique_ptr<SessionStore>> store =
      SessionStore::Create(options, std::move(storages), &clock);
  ASSERT_TRUE(store.ok()) << store.status();
  SessionSpec spec;
  spec.layers = 1;
  spec.kv_heads = 1;
  spec.head_dim = 1;
  spec.dtype = DType::kFloat16;
  absl::Status status = (*store)->CreateSession(spec).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(HasMessage(status,
                         "kv_heads x head_dim: rows of 2 bytes give pool 0 4294967296 "
                         "token slots, more than int32 slot indices address"))
      << status;
  spec.kv_heads = 8;
  spec.head_dim = 128;  // 2 KiB rows: 256 per page, 2^22 slots
  EXPECT_TRUE((*store)->CreateSession(spec).ok());
}

TEST(SessionStoreCreateTest, RejectsBadOptionsNamingTheField) {
  FakeClock clock;
  auto storages = [] {
    std::vector<std::unique_ptr<PageStorage>> out;
    out.push_back(*HostPageStorage::Create(PoolOptions{256, 4}));
    return out;
  };
  EXPECT_TRUE(HasMessage(SessionStore::Create({}, {}, &clock).status(),
                         "storages: at least one pool is needed"));
  EXPECT_TRUE(HasMessage(SessionStore::Create({}, storages(), nullptr).status(), "clock:"));
  StoreOptions options;
  options.shards = 0;
  EXPECT_TRUE(HasMessage(SessionStore::Create(options, storages(), &clock).status(),
                         "shards: must be >= 1, got 0"));
  options = {};
  options.limits.default_idle_ttl = absl::Hours(48);
  EXPECT_TRUE(HasMessage(SessionStore::Create(options, storages(), &clock).status(),
                         "default_idle_ttl, max_idle_ttl: must satisfy 0 < default <= max"));
  options = {};
  options.limits.max_layers = 0;
  EXPECT_TRUE(HasMessage(SessionStore::Create(options, storages(), &clock).status(),
                         "max_layers: must be >= 1, got 0"));
  options = {};
  options.sweep_interval = -absl::Seconds(1);
  EXPECT_TRUE(HasMessage(SessionStore::Create(options, storages(), &clock).status(),
                         "sweep_interval: must be >= 0"));
}

// A long random sequence of calls on a small pool against a model of every session's rows:
// every live session and every held view reads exactly its rows, and the pool's used pages are
// exactly the distinct pages that sessions and views list. A session leaves the model when the
// store says it was evicted, which only an append may do; an append that fails changes nothing.
TEST_F(SessionStoreTest, RandomCallsMatchAModel) {
  Init(24);
  std::mt19937 rng(20261206);
  using Rows = std::vector<std::vector<float>>;  // per layer
  std::map<std::string, std::pair<SessionId, Rows>> model;
  std::vector<std::pair<ReadView, std::vector<float>>> views;
  float next_tag = 1;
  auto longest = [](const Rows& rows) {
    size_t n = 0;
    for (const auto& layer : rows) n = std::max(n, layer.size());
    return static_cast<int64_t>(n);
  };
  int exhausted = 0, forks = 0;
  for (int step = 0; step < 4000; ++step) {
    clock_.Advance(absl::Milliseconds(1));
    const int op = std::uniform_int_distribution<int>(0, 9)(rng);
    std::pair<SessionId, Rows>* entry = nullptr;
    if (!model.empty()) {
      auto it = model.begin();
      std::advance(it, std::uniform_int_distribution<size_t>(0, model.size() - 1)(rng));
      entry = &it->second;
    }
    bool appended = false;
    if (op == 0 || entry == nullptr) {
      if (model.size() >= 8) continue;
      const SessionId id = Create(2);
      model[id.ToString()] = {id, Rows(2)};
    } else if (op <= 4) {
      const int layer = std::uniform_int_distribution<int>(0, 1)(rng);
      const int n = std::uniform_int_distribution<int>(1, 20)(rng);
      const std::vector<float> tags = Tags(next_tag, n);
      next_tag += static_cast<float>(n);
      absl::StatusOr<AppendResult> result = AppendTags(*store_, entry->first, layer, tags);
      appended = true;
      if (result.ok()) {
        std::vector<float>& rows = entry->second[static_cast<size_t>(layer)];
        rows.insert(rows.end(), tags.begin(), tags.end());
      } else {
        ASSERT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted) << result.status();
        ++exhausted;
      }
    } else if (op == 5) {
      if (model.size() >= 8) continue;
      const int64_t prefix = std::uniform_int_distribution<int64_t>(0, longest(entry->second))(rng);
      absl::StatusOr<SessionId> child = store_->Fork(entry->first, prefix);
      ASSERT_TRUE(child.ok()) << child.status();
      Rows rows = entry->second;
      for (auto& layer : rows) layer.resize(std::min<size_t>(layer.size(), prefix));
      model[child->ToString()] = {*child, rows};
      ++forks;
    } else if (op == 6) {
      const int64_t keep = std::uniform_int_distribution<int64_t>(0, longest(entry->second))(rng);
      ASSERT_TRUE(store_->Truncate(entry->first, keep).ok());
      for (auto& layer : entry->second) layer.resize(std::min<size_t>(layer.size(), keep));
    } else if (op == 7) {
      if (std::uniform_int_distribution<int>(0, 3)(rng) != 0) continue;
      const SessionId id = entry->first;
      ASSERT_TRUE(store_->Release(id).ok());
      model.erase(id.ToString());
    } else if (op == 8) {
      if (views.size() >= 3) continue;
      const int layer = std::uniform_int_distribution<int>(0, 1)(rng);
      absl::StatusOr<ReadView> view = store_->View(entry->first, layer);
      ASSERT_TRUE(view.ok()) << view.status();
      views.emplace_back(*std::move(view), entry->second[static_cast<size_t>(layer)]);
    } else if (!views.empty()) {
      views.erase(views.begin() + std::uniform_int_distribution<size_t>(0, views.size() - 1)(rng));
    }

    // Every session and every held view reads its rows; the used pages are the listed ones.
    absl::flat_hash_set<int32_t> listed;
    for (auto it = model.begin(); it != model.end();) {
      const auto& [id, rows] = it->second;
      absl::StatusOr<ReadView> view = store_->View(id, 0);
      if (!view.ok()) {
        ASSERT_TRUE(appended) << "step " << step << ": " << view.status();
        ASSERT_TRUE(HasMessage(view.status(), "was evicted")) << view.status();
        it = model.erase(it);
        continue;
      }
      for (int layer = 0; layer < 2; ++layer) {
        if (layer == 1) {
          view = store_->View(id, 1);
          ASSERT_TRUE(view.ok()) << view.status();
        }
        ASSERT_EQ(ReadTags(*view), rows[static_cast<size_t>(layer)]) << "step " << step;
        listed.insert(view->page_table().begin(), view->page_table().end());
      }
      ++it;
    }
    for (const auto& [view, tags] : views) {
      ASSERT_EQ(ReadTags(view), tags) << "step " << step;
      listed.insert(view.page_table().begin(), view.page_table().end());
    }
    ASSERT_EQ(static_cast<size_t>(used()), listed.size()) << "step " << step;
    ASSERT_EQ(store_->counters().sessions_live, static_cast<int64_t>(model.size()));
  }
  // The sequence exercised what it is for.
  const StoreCounters counters = store_->counters();
  EXPECT_GT(counters.evicted, 20);
  EXPECT_GT(counters.cow_copies, 20);
  EXPECT_GT(exhausted, 5);
  EXPECT_GT(forks, 20);
  views.clear();
  for (auto& [text, entry] : model) ASSERT_TRUE(store_->Release(entry.first).ok());
  EXPECT_EQ(used(), 0);
  EXPECT_EQ(store_->counters().sessions_live, 0);
}

}  // namespace
}  // namespace attention::session
