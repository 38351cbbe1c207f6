#include "server/session/session_store.h"

#include <algorithm>
#include <deque>
#include <tuple>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"

namespace attention::session {

namespace internal {

// The pages of one layer, shared by the layer and the views taken of it. While more than one
// holds it, it does not change: the layer copies it before an append or truncate.
struct PageList {
  PageList(PagePool* pool, std::vector<int32_t> pages) : pool(pool), pages(std::move(pages)) {}

  PagePool* const pool;
  std::vector<int32_t> pages;  // one page reference held on each
  // acq_rel: a view's reads of the pages happen before the layer, seeing itself the only
  // holder, writes into them.
  std::atomic<int32_t> holders{1};
};

void DropPageList(PageList* list) {
  if (list->holders.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  list->pool->Unref(list->pages);
  delete list;
}

// One layer of a session: its rows are tokens [0, tokens), row j in list->pages[j / page_size].
struct LayerPages {
  PageList* list = nullptr;  // one holder; null until the layer first has pages
  int64_t tokens = 0;

  size_t num_pages() const { return list != nullptr ? list->pages.size() : 0; }
};

using TurnFn = absl::AnyInvocable<void(absl::StatusOr<Turn>)>;

struct Session {
  Session(const SessionId& id, int pool, const PageLayout& layout, int layers, int64_t max_tokens,
          absl::Duration idle_ttl, absl::Time now)
      : id(id),
        pool(pool),
        layout(layout),
        max_tokens(max_tokens),
        idle_ttl(idle_ttl),
        created(now),
        last_use_ns(absl::ToUnixNanos(now)),
        layer_pages(static_cast<size_t>(layers)) {}
  // An ended session has dropped its lists; one still live when the store goes drops them here.
  ~Session() {
    for (LayerPages& layer : layer_pages) {
      if (layer.list != nullptr) DropPageList(layer.list);
    }
  }

  const SessionId id;
  const int pool;
  const PageLayout layout;
  const int64_t max_tokens;
  const absl::Duration idle_ttl;
  const absl::Time created;

  // Read without mu by eviction and the sweeper, which re-check them under mu.
  std::atomic<int64_t> last_use_ns;
  std::atomic<int32_t> pins{0};  // views + turns; raised only under mu, lowered anywhere
  std::atomic<int64_t> pages_held{0};

  std::mutex mu;
  std::vector<LayerPages> layer_pages;  // guarded by mu
  bool ended = false;                   // guarded by mu; set once
  EndReason end_reason = EndReason::kReleased;

  // The turns (RunInTurn).
  std::mutex turn_mu;
  std::deque<TurnFn> waiting;  // guarded by turn_mu, as the three flags
  bool turn_busy = false;      // a turn is held, or a thread is starting the waiting ones
  bool in_call = false;        // that thread is inside a waiting fn
  bool ended_in_call = false;  // the turn it gave that fn ended before fn returned

  int64_t longest_layer() const {  // requires mu
    int64_t longest = 0;
    for (const LayerPages& layer : layer_pages) longest = std::max(longest, layer.tokens);
    return longest;
  }
};

}  // namespace internal

using internal::LayerPages;
using internal::Session;

namespace {

// Rounds of evict-then-allocate before giving up: another append of the same pool may take the
// pages an eviction freed (its allocation needs no eviction lock); each round evicts again.
constexpr int kEvictionRounds = 3;

absl::Status EndedStatus(const SessionId& id, EndReason reason, absl::Duration idle_ttl) {
  const std::string who = absl::StrCat("session_id: session ", id.ShortForm());
  switch (reason) {
    case EndReason::kReleased:
      return absl::NotFoundError(absl::StrCat(who, " was released"));
    case EndReason::kEvicted:
      return absl::NotFoundError(absl::StrCat(
          who,
          " was evicted to free K/V pages (its pool was full and it was the least recently used "
          "idle session); create a new session and append its context again"));
    case EndReason::kExpired:
      return absl::NotFoundError(absl::StrCat(who, " expired after ",
                                              absl::FormatDuration(idle_ttl),
                                              " idle (its TTL); create a new session and append "
                                              "its context again"));
  }
  return absl::InternalError(absl::StrCat(who, " ended for an unknown reason"));
}

absl::Status UnknownStatus(const SessionId& id) {
  return absl::NotFoundError(absl::StrCat(
      "session_id: no session ", id.ShortForm(),
      " here (never created on this replica, or it ended too long ago to be remembered)"));
}

absl::Status CheckLayer(const Session& session, int layer) {
  const int layers = static_cast<int>(session.layer_pages.size());
  if (layer < 0 || layer >= layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer: must be in [0, ", layers, ") for this session, got ", layer));
  }
  return absl::OkStatus();
}

}  // namespace

absl::string_view EndReasonName(EndReason reason) {
  switch (reason) {
    case EndReason::kReleased:
      return "released";
    case EndReason::kEvicted:
      return "evicted";
    case EndReason::kExpired:
      return "expired";
  }
  return "unknown";
}

struct SessionStore::Ended {
  EndReason reason;
  absl::Duration idle_ttl;  // for the message of an expired session
};

struct SessionStore::Shard {
  std::mutex mu;  // a leaf lock: nothing else is locked while it is held
  absl::flat_hash_map<SessionId, std::shared_ptr<Session>> live;  // guarded by mu
  absl::flat_hash_map<SessionId, Ended> ended;                    // guarded by mu
  std::deque<SessionId> ended_order;  // guarded by mu; oldest first, bounds `ended`
};

struct SessionStore::Victim {
  std::shared_ptr<Session> session;
  std::unique_lock<std::mutex> lock;
  bool expired = false;
};

// ReadView and Turn.

ReadView::ReadView(ReadView&& other) noexcept { *this = std::move(other); }

ReadView& ReadView::operator=(ReadView&& other) noexcept {
  if (this != &other) {
    Reset();
    session_ = std::move(other.session_);
    pool_ = other.pool_;
    pool_index_ = other.pool_index_;
    layer_ = other.layer_;
    layout_ = other.layout_;
    list_ = other.list_;
    pages_ = other.pages_;
    tokens_ = other.tokens_;
    other.session_ = nullptr;
    other.list_ = nullptr;
    other.pages_ = {};
    other.tokens_ = 0;
  }
  return *this;
}

void ReadView::Reset() {
  if (session_ == nullptr) return;
  if (list_ != nullptr) internal::DropPageList(list_);
  session_->pins.fetch_sub(1, std::memory_order_acq_rel);
  session_ = nullptr;
  list_ = nullptr;
  pages_ = {};
  tokens_ = 0;
}

Turn::Turn(Turn&& other) noexcept { *this = std::move(other); }

Turn& Turn::operator=(Turn&& other) noexcept {
  if (this != &other) {
    End();
    store_ = other.store_;
    session_ = std::move(other.session_);
    pinned_ = other.pinned_;
    other.session_ = nullptr;
    other.pinned_ = false;
  }
  return *this;
}

void Turn::Unpin() {
  if (session_ == nullptr || !pinned_) return;
  pinned_ = false;
  store_->UnpinTurn(*session_);
}

void Turn::End() {
  if (session_ == nullptr) return;
  Unpin();
  std::shared_ptr<Session> session = std::move(session_);
  session_ = nullptr;
  store_->PassTurn(session);
}

const SessionId& Turn::id() const {
  static const SessionId kNone;
  return session_ != nullptr ? session_->id : kNone;
}

// Construction.

absl::StatusOr<std::unique_ptr<SessionStore>> SessionStore::Create(
    const StoreOptions& options, std::vector<std::unique_ptr<PageStorage>> storages,
    const Clock* clock) {
  const SessionLimits& limits = options.limits;
  if (storages.empty()) return absl::InvalidArgumentError("storages: at least one pool is needed");
  if (clock == nullptr) return absl::InvalidArgumentError("clock: must not be null");
  if (limits.max_layers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_layers: must be >= 1, got ", limits.max_layers));
  }
  if (limits.max_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens: must be >= 1, got ", limits.max_tokens));
  }
  if (limits.max_sessions < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_sessions: must be >= 1, got ", limits.max_sessions));
  }
  if (limits.max_idle_ttl <= absl::ZeroDuration() ||
      limits.default_idle_ttl <= absl::ZeroDuration() ||
      limits.default_idle_ttl > limits.max_idle_ttl) {
    return absl::InvalidArgumentError(
        absl::StrCat("default_idle_ttl, max_idle_ttl: must satisfy 0 < default <= max, got ",
                     absl::FormatDuration(limits.default_idle_ttl), " and ",
                     absl::FormatDuration(limits.max_idle_ttl)));
  }
  if (options.shards < 1) {
    return absl::InvalidArgumentError(absl::StrCat("shards: must be >= 1, got ", options.shards));
  }
  if (options.max_remembered_ends < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_remembered_ends: must be >= 0, got ", options.max_remembered_ends));
  }
  if (options.sweep_interval < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("sweep_interval: must be >= 0, got ",
                                                   absl::FormatDuration(options.sweep_interval)));
  }
  std::vector<std::unique_ptr<PagePool>> pools;
  for (std::unique_ptr<PageStorage>& storage : storages) {
    absl::StatusOr<std::unique_ptr<PagePool>> pool = PagePool::Create(std::move(storage));
    if (!pool.ok()) return pool.status();
    pools.push_back(*std::move(pool));
  }
  return std::unique_ptr<SessionStore>(new SessionStore(options, std::move(pools), clock));
}

SessionStore::SessionStore(const StoreOptions& options,
                           std::vector<std::unique_ptr<PagePool>> pools, const Clock* clock)
    : options_(options),
      pools_(std::move(pools)),
      clock_(clock),
      shards_(new Shard[static_cast<size_t>(options.shards)]) {
  if (options_.sweep_interval > absl::ZeroDuration()) {
    sweeper_ = std::thread([this] { SweepLoop(); });
  }
}

SessionStore::~SessionStore() {
  {
    std::lock_guard<std::mutex> lock(sweep_mu_);
    stopping_ = true;
  }
  sweep_cv_.notify_all();
  if (sweeper_.joinable()) sweeper_.join();
}

// Lookup, locking and ending.

SessionStore::Shard& SessionStore::ShardOf(const SessionId& id) const {
  // The id's bits are uniformly random: any of them picks a shard evenly.
  return shards_[id.lo % static_cast<uint64_t>(options_.shards)];
}

absl::StatusOr<std::shared_ptr<Session>> SessionStore::Find(const SessionId& id) const {
  Shard& shard = ShardOf(id);
  std::lock_guard<std::mutex> lock(shard.mu);
  if (auto it = shard.live.find(id); it != shard.live.end()) return it->second;
  if (auto it = shard.ended.find(id); it != shard.ended.end()) {
    return EndedStatus(id, it->second.reason, it->second.idle_ttl);
  }
  return UnknownStatus(id);
}

bool SessionStore::IsExpired(const Session& session, absl::Time now) const {
  return session.pins.load(std::memory_order_acquire) == 0 &&
         now - absl::FromUnixNanos(session.last_use_ns.load(std::memory_order_relaxed)) >
             session.idle_ttl;
}

absl::Status SessionStore::Acquire(Session& session, bool touch,
                                   std::unique_lock<std::mutex>& lock) {
  lock = std::unique_lock<std::mutex>(session.mu);
  if (session.ended) {
    lock.unlock();
    return EndedStatus(session.id, session.end_reason, session.idle_ttl);
  }
  const absl::Time now = clock_->Now();
  if (IsExpired(session, now)) {
    EndLocked(session, EndReason::kExpired);
    lock.unlock();
    Forget(session, EndReason::kExpired);
    return EndedStatus(session.id, EndReason::kExpired, session.idle_ttl);
  }
  if (touch) session.last_use_ns.store(absl::ToUnixNanos(now), std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Session>> SessionStore::Lock(const SessionId& id, bool touch,
                                                            std::unique_lock<std::mutex>& lock) {
  absl::StatusOr<std::shared_ptr<Session>> session = Find(id);
  if (!session.ok()) return session.status();
  if (absl::Status live = Acquire(**session, touch, lock); !live.ok()) return live;
  return session;
}

void SessionStore::EndLocked(Session& session, EndReason reason) {
  session.ended = true;
  session.end_reason = reason;
  for (LayerPages& layer : session.layer_pages) {
    if (layer.list != nullptr) internal::DropPageList(layer.list);  // views keep theirs
    layer.list = nullptr;
    layer.tokens = 0;
  }
  session.pages_held.store(0, std::memory_order_relaxed);
  sessions_live_.fetch_sub(1, std::memory_order_relaxed);
  switch (reason) {
    case EndReason::kReleased:
      released_.fetch_add(1, std::memory_order_relaxed);
      break;
    case EndReason::kEvicted:
      evicted_.fetch_add(1, std::memory_order_relaxed);
      break;
    case EndReason::kExpired:
      expired_.fetch_add(1, std::memory_order_relaxed);
      break;
  }
}

void SessionStore::Forget(const Session& session, EndReason reason) {
  Shard& shard = ShardOf(session.id);
  std::lock_guard<std::mutex> lock(shard.mu);
  shard.live.erase(session.id);
  const int64_t keep = options_.max_remembered_ends / options_.shards;
  if (keep < 1) return;
  if (shard.ended.insert_or_assign(session.id, Ended{reason, session.idle_ttl}).second) {
    shard.ended_order.push_back(session.id);
  }
  while (static_cast<int64_t>(shard.ended_order.size()) > keep) {
    shard.ended.erase(shard.ended_order.front());
    shard.ended_order.pop_front();
  }
}

absl::Status SessionStore::ReserveSessionSlot() {
  const int64_t max = options_.limits.max_sessions;
  if (sessions_live_.fetch_add(1, std::memory_order_relaxed) >= max) {
    sessions_live_.fetch_sub(1, std::memory_order_relaxed);
    return absl::ResourceExhaustedError(
        absl::StrCat("max_sessions: ", max, " sessions are live; release one first"));
  }
  return absl::OkStatus();
}

absl::Status SessionStore::Insert(const std::shared_ptr<Session>& session) {
  {
    Shard& shard = ShardOf(session->id);
    std::lock_guard<std::mutex> lock(shard.mu);
    if (shard.live.emplace(session->id, session).second) return absl::OkStatus();
  }
  // Two equal 128-bit random ids: not expected in the life of the universe, but not undefined.
  std::lock_guard<std::mutex> lock(session->mu);
  EndLocked(*session, EndReason::kReleased);
  released_.fetch_sub(1, std::memory_order_relaxed);
  return absl::InternalError("session_id: the random id generated is already in use");
}

ReadView SessionStore::MakeViewLocked(const std::shared_ptr<Session>& session, int layer) {
  ReadView view;
  const LayerPages& pages = session->layer_pages[static_cast<size_t>(layer)];
  if (pages.list != nullptr) {
    pages.list->holders.fetch_add(1, std::memory_order_relaxed);  // taken under the session's mu
    view.list_ = pages.list;
    view.pages_ = pages.list->pages;
  }
  session->pins.fetch_add(1, std::memory_order_acq_rel);
  view.session_ = session;
  view.pool_ = pools_[session->pool].get();
  view.pool_index_ = session->pool;
  view.layer_ = layer;
  view.layout_ = session->layout;
  view.tokens_ = pages.tokens;
  return view;
}

std::vector<int32_t>& SessionStore::MutablePagesLocked(Session& session, int layer) {
  LayerPages& pages = session.layer_pages[static_cast<size_t>(layer)];
  PagePool* pool = pools_[session.pool].get();
  if (pages.list == nullptr) {
    pages.list = new internal::PageList(pool, {});
  } else if (pages.list->holders.load(std::memory_order_acquire) > 1) {
    auto* copy = new internal::PageList(pool, pages.list->pages);
    for (int32_t page : copy->pages) pool->Ref(page);
    internal::DropPageList(pages.list);  // the views keep the old list
    pages.list = copy;
    list_copies_.fetch_add(1, std::memory_order_relaxed);
  }
  return pages.list->pages;
}

// Sessions.

absl::StatusOr<SessionId> SessionStore::CreateSession(const SessionSpec& spec) {
  const SessionLimits& limits = options_.limits;
  if (spec.layers < 1 || spec.layers > limits.max_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layers: must be in [1, ", limits.max_layers, "], got ", spec.layers));
  }
  if (spec.max_tokens < 0 || spec.max_tokens > limits.max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens: must be in [0, ", limits.max_tokens,
                                                   "] (0: the server's limit), got ",
                                                   spec.max_tokens));
  }
  if (spec.idle_ttl < absl::ZeroDuration() || spec.idle_ttl > limits.max_idle_ttl) {
    return absl::InvalidArgumentError(
        absl::StrCat("idle_ttl: must be in [0, ", absl::FormatDuration(limits.max_idle_ttl),
                     "] (0: the server's default), got ", absl::FormatDuration(spec.idle_ttl)));
  }
  int pool = spec.pool;
  if (pool == -1) {
    pool = 0;
    for (int i = 1; i < num_pools(); ++i) {
      if (pools_[i]->free_pages() > pools_[pool]->free_pages()) pool = i;
    }
  } else if (pool < 0 || pool >= num_pools()) {
    return absl::InvalidArgumentError(
        absl::StrCat("pool: must be -1 (any) or in [0, ", num_pools(), "), got ", spec.pool));
  }
  absl::StatusOr<PageLayout> layout =
      PageLayout::For(spec.kv_heads, spec.head_dim, spec.dtype, pools_[pool]->page_bytes());
  if (!layout.ok()) return layout.status();
  // Slots are int32, as the kernels' page tables and the append kernel's slots: only rows of a
  // few bytes in a pool of many GiB could exceed that.
  if (int64_t{pools_[pool]->num_pages()} * layout->page_size > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_heads x head_dim: rows of ", layout->row_bytes, " bytes give pool ", pool,
                     " ", int64_t{pools_[pool]->num_pages()} * layout->page_size,
                     " token slots, more than int32 slot indices address"));
  }
  absl::StatusOr<SessionId> id = SessionId::Generate();
  if (!id.ok()) return id.status();

  if (absl::Status slot = ReserveSessionSlot(); !slot.ok()) return slot;
  auto session = std::make_shared<Session>(
      *id, pool, *layout, spec.layers, spec.max_tokens > 0 ? spec.max_tokens : limits.max_tokens,
      spec.idle_ttl > absl::ZeroDuration() ? spec.idle_ttl : limits.default_idle_ttl,
      clock_->Now());
  if (absl::Status inserted = Insert(session); !inserted.ok()) return inserted;
  created_.fetch_add(1, std::memory_order_relaxed);
  return *id;
}

absl::StatusOr<AppendResult> SessionStore::Append(const SessionId& id, int layer, int64_t rows) {
  if (rows < 0) return absl::InvalidArgumentError(absl::StrCat("rows: must be >= 0, got ", rows));
  std::unique_lock<std::mutex> lock;
  absl::StatusOr<std::shared_ptr<Session>> found = Lock(id, /*touch=*/true, lock);
  if (!found.ok()) return found.status();
  Session& session = **found;
  if (absl::Status valid = CheckLayer(session, layer); !valid.ok()) return valid;
  LayerPages& pages = session.layer_pages[static_cast<size_t>(layer)];
  if (rows > session.max_tokens - pages.tokens) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "max_tokens: layer ", layer, " of session ", id.ShortForm(), " holds ", pages.tokens,
        " tokens; ", rows, " more would exceed its max_tokens of ", session.max_tokens));
  }

  const PageLayout& layout = session.layout;
  PagePool& pool = *pools_[session.pool];
  const int64_t used_in_last = pages.tokens % layout.page_size;
  // The rows go after the last row of a partial last page; if anyone else references that page
  // (a fork, or a view through the list), its rows are copied to a page of our own first.
  const bool copy_last = rows > 0 && used_in_last != 0 &&
                         (pages.list->holders.load(std::memory_order_acquire) > 1 ||
                          pool.refcount(pages.list->pages.back()) > 1);
  const int64_t new_pages = layout.PagesFor(pages.tokens + rows) -
                            static_cast<int64_t>(pages.num_pages()) + (copy_last ? 1 : 0);
  std::vector<int32_t> fresh;
  if (absl::Status got = AllocateLocked(session, new_pages, fresh); !got.ok()) return got;

  AppendResult result;
  result.first_token = pages.tokens;
  if (rows > 0) {
    std::vector<int32_t>& list = MutablePagesLocked(session, layer);
    auto next = fresh.begin();
    if (copy_last) {
      const int32_t shared = list.back();
      absl::Status copied = pool.storage().CopyPage(shared, *next, used_in_last * layout.row_bytes);
      if (!copied.ok()) {
        pool.Unref(fresh);
        return copied;
      }
      list.back() = *next++;
      pool.Unref({shared});
      cow_copies_.fetch_add(1, std::memory_order_relaxed);
    }
    list.insert(list.end(), next, fresh.end());
    session.pages_held.fetch_add(fresh.end() - next, std::memory_order_relaxed);
    result.slots.reserve(static_cast<size_t>(rows));
    for (int64_t token = pages.tokens; token < pages.tokens + rows; ++token) {
      const int64_t page = list[static_cast<size_t>(token / layout.page_size)];
      result.slots.push_back(
          static_cast<int32_t>(page * layout.page_size + token % layout.page_size));
    }
    pages.tokens += rows;
  }
  result.view = MakeViewLocked(*found, layer);
  return result;
}

absl::StatusOr<AppendResult> SessionStore::AppendRows(const SessionId& id, int layer, int64_t rows,
                                                      const void* k, const void* v) {
  absl::StatusOr<AppendResult> result = Append(id, layer, rows);
  if (!result.ok()) return result;
  absl::Status written =
      pools_[result->view.pool()]->storage().WriteRows(result->view.layout(), result->slots, k, v);
  if (written.ok()) return result;
  // Rolls back only this layer, and only if it is still as this append left it.
  result->view.Reset();  // else the rollback would copy the list the view holds
  UndoAppend(id, layer, result->first_token, rows);
  return written;
}

void SessionStore::UndoAppend(const SessionId& id, int layer, int64_t first_token, int64_t rows) {
  std::unique_lock<std::mutex> lock;
  absl::StatusOr<std::shared_ptr<Session>> locked = Lock(id, /*touch=*/false, lock);
  if (!locked.ok()) return;
  Session& session = **locked;
  if (layer < 0 || static_cast<size_t>(layer) >= session.layer_pages.size()) return;
  LayerPages& pages = session.layer_pages[static_cast<size_t>(layer)];
  if (pages.tokens != first_token + rows) return;
  const size_t keep = static_cast<size_t>(session.layout.PagesFor(first_token));
  std::vector<int32_t>& list = MutablePagesLocked(session, layer);
  const std::vector<int32_t> dropped(list.begin() + keep, list.end());
  list.resize(keep);
  pages.tokens = first_token;
  session.pages_held.fetch_sub(static_cast<int64_t>(dropped.size()), std::memory_order_relaxed);
  pools_[session.pool]->Unref(dropped);
}

absl::StatusOr<ReadView> SessionStore::View(const SessionId& id, int layer) {
  std::unique_lock<std::mutex> lock;
  absl::StatusOr<std::shared_ptr<Session>> session = Lock(id, /*touch=*/true, lock);
  if (!session.ok()) return session.status();
  if (absl::Status valid = CheckLayer(**session, layer); !valid.ok()) return valid;
  return MakeViewLocked(*session, layer);
}

absl::StatusOr<SessionId> SessionStore::Fork(const SessionId& id, int64_t prefix_tokens) {
  if (prefix_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("prefix_tokens: must be >= 0, got ", prefix_tokens));
  }
  absl::StatusOr<SessionId> child_id = SessionId::Generate();
  if (!child_id.ok()) return child_id.status();

  std::unique_lock<std::mutex> lock;
  absl::StatusOr<std::shared_ptr<Session>> found = Lock(id, /*touch=*/true, lock);
  if (!found.ok()) return found.status();
  const Session& parent = **found;
  const int64_t longest = parent.longest_layer();
  if (prefix_tokens > longest) {
    return absl::OutOfRangeError(absl::StrCat("prefix_tokens: must be at most the session's ",
                                              "longest layer (", longest, " tokens), got ",
                                              prefix_tokens));
  }
  if (absl::Status slot = ReserveSessionSlot(); !slot.ok()) return slot;
  auto child = std::make_shared<Session>(*child_id, parent.pool, parent.layout,
                                         static_cast<int>(parent.layer_pages.size()),
                                         parent.max_tokens, parent.idle_ttl, clock_->Now());
  PagePool& pool = *pools_[parent.pool];
  int64_t held = 0;
  for (size_t layer = 0; layer < parent.layer_pages.size(); ++layer) {
    const LayerPages& from = parent.layer_pages[layer];
    LayerPages& to = child->layer_pages[layer];
    to.tokens = std::min(prefix_tokens, from.tokens);
    const int64_t shared = parent.layout.PagesFor(to.tokens);
    if (shared == 0) continue;
    to.list = new internal::PageList(
        &pool, std::vector<int32_t>(from.list->pages.begin(), from.list->pages.begin() + shared));
    for (int32_t page : to.list->pages) pool.Ref(page);
    held += shared;
  }
  child->pages_held.store(held, std::memory_order_relaxed);
  lock.unlock();
  if (absl::Status inserted = Insert(child); !inserted.ok()) return inserted;
  forked_.fetch_add(1, std::memory_order_relaxed);
  return *child_id;
}

absl::Status SessionStore::Truncate(const SessionId& id, int64_t tokens) {
  if (tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("tokens: must be >= 0, got ", tokens));
  }
  std::unique_lock<std::mutex> lock;
  absl::StatusOr<std::shared_ptr<Session>> found = Lock(id, /*touch=*/true, lock);
  if (!found.ok()) return found.status();
  Session& session = **found;
  const int64_t longest = session.longest_layer();
  if (tokens > longest) {
    return absl::OutOfRangeError(
        absl::StrCat("tokens: must be at most the session's longest layer (", longest,
                     " tokens), got ", tokens));
  }
  const size_t keep = static_cast<size_t>(session.layout.PagesFor(tokens));
  std::vector<int32_t> dropped;
  for (size_t layer = 0; layer < session.layer_pages.size(); ++layer) {
    LayerPages& pages = session.layer_pages[layer];
    if (pages.tokens <= tokens) continue;
    pages.tokens = tokens;
    if (pages.num_pages() == keep) continue;  // no page to drop: the list stays as views see it
    std::vector<int32_t>& list = MutablePagesLocked(session, static_cast<int>(layer));
    dropped.insert(dropped.end(), list.begin() + keep, list.end());
    list.resize(keep);
  }
  session.pages_held.fetch_sub(static_cast<int64_t>(dropped.size()), std::memory_order_relaxed);
  pools_[session.pool]->Unref(dropped);
  return absl::OkStatus();
}

absl::Status SessionStore::Release(const SessionId& id) {
  std::unique_lock<std::mutex> lock;
  absl::StatusOr<std::shared_ptr<Session>> found = Lock(id, /*touch=*/false, lock);
  if (!found.ok()) return found.status();
  EndLocked(**found, EndReason::kReleased);
  lock.unlock();
  Forget(**found, EndReason::kReleased);
  return absl::OkStatus();
}

absl::StatusOr<SessionInfo> SessionStore::GetSession(const SessionId& id) {
  std::unique_lock<std::mutex> lock;
  absl::StatusOr<std::shared_ptr<Session>> found = Lock(id, /*touch=*/false, lock);
  if (!found.ok()) return found.status();
  const Session& session = **found;
  const PagePool& pool = *pools_[session.pool];
  SessionInfo info;
  info.id = session.id;
  info.spec.layers = static_cast<int>(session.layer_pages.size());
  info.spec.kv_heads = session.layout.kv_heads;
  info.spec.head_dim = session.layout.head_dim;
  info.spec.dtype = session.layout.dtype;
  info.spec.max_tokens = session.max_tokens;
  info.spec.idle_ttl = session.idle_ttl;
  info.spec.pool = session.pool;
  info.page_size = session.layout.page_size;
  for (const LayerPages& layer : session.layer_pages) {
    info.tokens.push_back(layer.tokens);
    info.pages += static_cast<int64_t>(layer.num_pages());
    if (layer.list == nullptr) continue;
    for (int32_t page : layer.list->pages) info.shared_pages += pool.refcount(page) > 1 ? 1 : 0;
  }
  info.created = session.created;
  info.last_use = absl::FromUnixNanos(session.last_use_ns.load(std::memory_order_relaxed));
  return info;
}

// Eviction.

absl::Status SessionStore::AllocateLocked(Session& self, int64_t n, std::vector<int32_t>& pages) {
  PagePool& pool = *pools_[self.pool];
  if (pool.Allocate(n, pages)) return absl::OkStatus();
  std::lock_guard<std::mutex> evicting(pool.eviction_mutex());
  int64_t would_free = 0;
  for (int round = 0; round < kEvictionRounds; ++round) {
    if (pool.Allocate(n, pages)) return absl::OkStatus();
    std::vector<Victim> victims;
    if (!PlanEviction(self, n, victims, would_free)) break;
    for (Victim& victim : victims) {
      const EndReason reason = victim.expired ? EndReason::kExpired : EndReason::kEvicted;
      EndLocked(*victim.session, reason);
      victim.lock.unlock();
      Forget(*victim.session, reason);
    }
  }
  if (pool.Allocate(n, pages)) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "K/V pool ", self.pool, ": the append needs ", n, " pages; ", pool.free_pages(), " of ",
      pool.num_pages(), " are free and evicting every idle session would free ", would_free,
      " more (sessions in use are kept); the session is unchanged"));
}

bool SessionStore::PlanEviction(const Session& self, int64_t n, std::vector<Victim>& victims,
                                int64_t& would_free) {
  PagePool& pool = *pools_[self.pool];
  const int64_t needed = n - pool.free_pages();
  would_free = 0;
  if (needed <= 0) return true;

  struct Candidate {
    bool expired;
    int64_t last_use_ns;
    std::shared_ptr<Session> session;
  };
  std::vector<Candidate> candidates;
  const absl::Time now = clock_->Now();
  for (int i = 0; i < options_.shards; ++i) {
    std::lock_guard<std::mutex> lock(shards_[i].mu);
    for (const auto& [id, session] : shards_[i].live) {
      if (session.get() == &self || session->pool != self.pool ||
          session->pins.load(std::memory_order_acquire) > 0 ||
          session->pages_held.load(std::memory_order_relaxed) == 0) {
        continue;
      }
      candidates.push_back({IsExpired(*session, now),
                            session->last_use_ns.load(std::memory_order_relaxed), session});
    }
  }
  // Expired sessions first, then least recently used first.
  std::sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
    return std::make_tuple(!a.expired, a.last_use_ns) < std::make_tuple(!b.expired, b.last_use_ns);
  });

  // A victim's page is freed only if every reference on it belongs to a victim: count down the
  // references the planned evictions drop.
  absl::flat_hash_map<int32_t, int32_t> references_left;
  for (Candidate& candidate : candidates) {
    if (would_free >= needed) break;
    // A session whose lock is held is in a call: in use, not evicted (and try_lock cannot
    // deadlock against a call that holds its lock and waits for this pool's eviction lock).
    std::unique_lock<std::mutex> lock(candidate.session->mu, std::try_to_lock);
    if (!lock.owns_lock() || candidate.session->ended ||
        candidate.session->pins.load(std::memory_order_acquire) > 0) {
      continue;
    }
    for (const LayerPages& layer : candidate.session->layer_pages) {
      if (layer.list == nullptr) continue;
      for (int32_t page : layer.list->pages) {
        auto [it, inserted] = references_left.try_emplace(page, pool.refcount(page));
        if (--it->second == 0) ++would_free;
      }
    }
    victims.push_back({candidate.session, std::move(lock), IsExpired(*candidate.session, now)});
  }
  if (would_free < needed) {
    victims.clear();  // unlocks them, untouched
    return false;
  }
  return true;
}

int SessionStore::SweepExpired() {
  const absl::Time now = clock_->Now();
  std::vector<std::shared_ptr<Session>> candidates;
  for (int i = 0; i < options_.shards; ++i) {
    std::lock_guard<std::mutex> lock(shards_[i].mu);
    for (const auto& [id, session] : shards_[i].live) {
      if (IsExpired(*session, now)) candidates.push_back(session);
    }
  }
  int ended = 0;
  for (const std::shared_ptr<Session>& session : candidates) {
    std::unique_lock<std::mutex> lock(session->mu);
    if (session->ended || !IsExpired(*session, now)) continue;
    EndLocked(*session, EndReason::kExpired);
    lock.unlock();
    Forget(*session, EndReason::kExpired);
    ++ended;
  }
  return ended;
}

void SessionStore::SweepLoop() {
  std::unique_lock<std::mutex> lock(sweep_mu_);
  while (!sweep_cv_.wait_for(lock, absl::ToChronoNanoseconds(options_.sweep_interval),
                             [this] { return stopping_; })) {
    lock.unlock();
    SweepExpired();
    lock.lock();
  }
}

// Turns.

void SessionStore::RunInTurn(const SessionId& id,
                             absl::AnyInvocable<void(absl::StatusOr<Turn>)> fn) {
  absl::StatusOr<std::shared_ptr<Session>> found = Find(id);
  if (!found.ok()) {
    fn(found.status());
    return;
  }
  const std::shared_ptr<Session>& session = *found;
  {
    std::lock_guard<std::mutex> lock(session->turn_mu);
    session->waiting.push_back(std::move(fn));
    if (session->turn_busy) return;  // the turn's end starts this one
    session->turn_busy = true;
  }
  StartTurns(session);
}

void SessionStore::StartTurns(const std::shared_ptr<Session>& session) {
  // Runs the waiting fns one after the other while each ends its turn before returning; returns
  // when one hands its turn on (that turn's End comes back here) or none is left.
  for (;;) {
    internal::TurnFn fn;
    {
      std::lock_guard<std::mutex> lock(session->turn_mu);
      if (session->waiting.empty()) {
        session->turn_busy = false;
        return;
      }
      fn = std::move(session->waiting.front());
      session->waiting.pop_front();
      session->in_call = true;
      session->ended_in_call = false;
    }
    absl::StatusOr<Turn> turn;
    {
      std::unique_lock<std::mutex> lock;
      absl::Status live = Acquire(*session, /*touch=*/true, lock);
      if (live.ok()) {
        session->pins.fetch_add(1, std::memory_order_acq_rel);
        Turn held;
        held.store_ = this;
        held.session_ = session;
        held.pinned_ = true;
        turn = std::move(held);
      } else {
        turn = live;
      }
    }
    const bool held = turn.ok();
    fn(std::move(turn));
    std::lock_guard<std::mutex> lock(session->turn_mu);
    session->in_call = false;
    if (held && !session->ended_in_call) return;
  }
}

void SessionStore::UnpinTurn(Session& session) {
  // The call ends now: the idle time counts from here.
  session.last_use_ns.store(absl::ToUnixNanos(clock_->Now()), std::memory_order_relaxed);
  session.pins.fetch_sub(1, std::memory_order_acq_rel);
}

void SessionStore::PassTurn(const std::shared_ptr<Session>& session) {
  {
    std::lock_guard<std::mutex> lock(session->turn_mu);
    if (session->in_call) {
      session->ended_in_call = true;  // StartTurns goes on when the fn returns
      return;
    }
  }
  StartTurns(session);
}

StoreCounters SessionStore::counters() const {
  StoreCounters c;
  c.sessions_live = sessions_live_.load(std::memory_order_relaxed);
  c.created = created_.load(std::memory_order_relaxed);
  c.forked = forked_.load(std::memory_order_relaxed);
  c.released = released_.load(std::memory_order_relaxed);
  c.evicted = evicted_.load(std::memory_order_relaxed);
  c.expired = expired_.load(std::memory_order_relaxed);
  c.cow_copies = cow_copies_.load(std::memory_order_relaxed);
  c.list_copies = list_copies_.load(std::memory_order_relaxed);
  for (const std::unique_ptr<PagePool>& pool : pools_) {
    PoolCounters p;
    p.pages_total = pool->num_pages();
    p.pages_free = pool->free_pages();
    p.pages_used = p.pages_total - p.pages_free;
    p.page_bytes = pool->page_bytes();
    p.kv_bytes_held = int64_t{p.pages_used} * p.page_bytes;
    c.pools.push_back(p);
  }
  return c;
}

}  // namespace attention::session
