// SessionStore: the K/V sessions of one server, kept in paged pools (one per device) so that a
// decode step sends only q and the new token's k and v (issue 20). No gRPC here: the service maps
// the RPCs onto these calls and these statuses onto the wire one to one.
//
// A session holds, per layer, a list of pages and a token count (its context). Append reserves
// rows at the end of one layer and says where each goes (slots); the caller writes the rows there
// (PageStorage::WriteRows on the host, the append kernel on a GPU). A ReadView is what Attend
// reads: one layer's page table and context length, pinned (its page list held, its session kept
// from eviction) until the view is dropped. Fork shares the prefix's pages; the first append
// that would write into a page someone else references copies that page first (copy-on-write).
// Truncate rolls a session back; Release ends it; idle sessions are evicted least recently used
// first when a pool runs out of pages, and expire when their idle TTL passes. server/session/
// README.md has the design and the lock order.
//
// Thread-safe. Each call on a session applies atomically under that session's own mutex; calls on
// different sessions run in parallel (the session map is sharded, each pool's free list has its
// own short lock). A call's effects are atomic, but a whole RPC (append, write the rows, attend)
// spans several calls and, on a GPU, the device's time: RunInTurn serializes such RPCs per
// session, in arrival order.
#ifndef ATTENTION_SERVER_SESSION_SESSION_STORE_H_
#define ATTENTION_SERVER_SESSION_SESSION_STORE_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "server/session/clock.h"
#include "server/session/page_pool.h"
#include "server/session/page_storage.h"
#include "server/session/session_id.h"

namespace attention::session {

namespace internal {
struct Session;
struct PageList;
// Drops one holder of a page list; the last one drops the list's page references.
void DropPageList(PageList* list);
}  // namespace internal

class SessionStore;

// Limits on one session, and its defaults (the server's flags fill them).
struct SessionLimits {
  // Layers of one session (the largest common models have 126).
  int max_layers = 256;
  // Tokens in one layer of one session; CreateSession may ask for less. 128 Ki tokens: the
  // longest context of common models.
  int64_t max_tokens = 128 * 1024;
  // Live sessions, forks included. A session without pages costs a few hundred bytes; the bound
  // keeps a client that creates sessions in a loop from growing the server without limit.
  int64_t max_sessions = 64 * 1024;
  // Idle time after which a session expires, when CreateSession gives none, and the most it may
  // ask for.
  absl::Duration default_idle_ttl = absl::Minutes(10);
  absl::Duration max_idle_ttl = absl::Hours(24);
};

struct StoreOptions {
  SessionLimits limits;
  // Shards of the session map, each with its own mutex: lookups of different sessions rarely
  // wait for each other.
  int shards = 16;
  // Ended sessions remembered (per store), so that a call on one says whether it was released,
  // evicted or expired; older ones are answered as unknown. About 64 bytes each.
  int64_t max_remembered_ends = 64 * 1024;
  // How often a background thread ends the sessions whose idle TTL has passed (pages of clients
  // that vanished come back within this); zero: no thread, the owner calls SweepExpired. A call
  // on an expired session fails whether or not it has been swept.
  absl::Duration sweep_interval = absl::Seconds(1);
};

// What CreateSession makes.
struct SessionSpec {
  int layers = 0;
  int kv_heads = 0;
  int head_dim = 0;
  DType dtype = DType::kBFloat16;
  // Most tokens per layer; 0: SessionLimits::max_tokens.
  int64_t max_tokens = 0;
  // Idle time after which the session expires; zero: SessionLimits::default_idle_ttl.
  absl::Duration idle_ttl = absl::ZeroDuration();
  // Pool (device) to hold the session's pages; -1: the pool with the most free pages.
  int pool = -1;
};

// Why a session ended.
enum class EndReason : uint8_t {
  kReleased,  // Release
  kEvicted,   // evicted, least recently used first, to free pages for another session's append
  kExpired,   // idle for longer than its TTL
};

// "released", "evicted", "expired": the metric label.
absl::string_view EndReasonName(EndReason reason);

// A session as GetSession reports it to operators.
struct SessionInfo {
  SessionId id;
  SessionSpec spec;             // as resolved: max_tokens, idle_ttl and pool filled in
  int page_size = 0;            // tokens per page of this session's shape
  std::vector<int64_t> tokens;  // per layer
  int64_t pages = 0;            // pages listed by its layers
  int64_t shared_pages = 0;     // of which also referenced by a fork or a pinned view
  absl::Time created;
  absl::Time last_use;  // the last call on it, GetSession not counted
};

// One pool's occupancy.
struct PoolCounters {
  int32_t pages_total = 0;
  int32_t pages_used = 0;
  int32_t pages_free = 0;
  int64_t page_bytes = 0;
  int64_t kv_bytes_held = 0;  // pages_used * page_bytes: what the pool's sessions and views hold
};

// What the server exports as metrics. Event counts are since the store was created.
struct StoreCounters {
  int64_t sessions_live = 0;
  int64_t created = 0;                             // by CreateSession
  int64_t forked = 0;                              // by Fork
  int64_t released = 0, evicted = 0, expired = 0;  // sessions ended, by reason
  int64_t cow_copies = 0;                          // shared partial pages copied by an append
  // Page lists copied because a view still held the layer's list when it was appended to or
  // truncated: views held too long.
  int64_t list_copies = 0;
  std::vector<PoolCounters> pools;
};

// One layer of one session as a kernel reads it: rows [0, tokens()) in the pages of
// page_table(), row j in page page_table()[j / page_size] at row j % page_size (the paged fields
// of kernels/attention_params.h; SetPagedKV fills the rest). Pinned while it exists: its page
// table and rows stay as they were, and the session is not evicted or expired (a Release still
// ends the session at once; the view's pages are freed when the view goes). Taking and dropping
// a view costs O(1) whatever the context: the view shares the layer's page list. A later append
// or truncate of the layer while the view exists copies that list (O(pages)) and, if it writes
// into the view's last page, that page too: drop a view as soon as its kernel has read it, before
// answering. Move-only; must not outlive the store.
class ReadView {
 public:
  ReadView() = default;
  ReadView(ReadView&& other) noexcept;
  ReadView& operator=(ReadView&& other) noexcept;
  ReadView(const ReadView&) = delete;
  ReadView& operator=(const ReadView&) = delete;
  ~ReadView() { Reset(); }

  // Unpins now; the view is empty afterwards.
  void Reset();

  bool empty() const { return session_ == nullptr; }
  int pool() const { return pool_index_; }
  int layer() const { return layer_; }
  const PageLayout& layout() const { return layout_; }
  // The pool's page 0 (PageStorage::base): host memory or device memory.
  void* base() const { return pool_->storage().base(); }
  // The memory behind the view's pool: where an append's reserved rows are written
  // (PageStorage::WriteRows). Not empty().
  PageStorage& storage() const { return pool_->storage(); }
  absl::Span<const int32_t> page_table() const { return pages_; }
  int64_t tokens() const { return tokens_; }

 private:
  friend class SessionStore;

  std::shared_ptr<internal::Session> session_;
  PagePool* pool_ = nullptr;
  int pool_index_ = -1;
  int layer_ = -1;
  PageLayout layout_;
  internal::PageList* list_ = nullptr;  // one holder; null for an empty layer
  absl::Span<const int32_t> pages_;     // list_'s pages, unchanged while held
  int64_t tokens_ = 0;
};

// Append's answer.
struct AppendResult {
  // The layer's token count before the append: new row i is token first_token + i.
  int64_t first_token = 0;
  // Where new row i goes: page * page_size + row (the append kernel's and WriteRows' input; a
  // pool's slots fit int32, CreateSession checks it).
  std::vector<int32_t> slots;
  // The layer with the new rows, for the attention that follows. Its last rows hold whatever the
  // pages held before until the caller writes them.
  ReadView view;
};

// A session's turn (RunInTurn): while a Turn exists, no other turn of its session runs. It pins
// the session as a ReadView does, and its end counts as the session's last use. Ending it
// (destruction or End) runs the session's next waiting fn on the ending thread, so do not end a
// turn while holding a lock that fns take. Move-only; must not outlive the store.
class Turn {
 public:
  Turn() = default;
  Turn(Turn&& other) noexcept;
  Turn& operator=(Turn&& other) noexcept;
  Turn(const Turn&) = delete;
  Turn& operator=(const Turn&) = delete;
  ~Turn() { End(); }

  // Unpins the session and counts now as its last use, but keeps the turn: the session's next
  // call still waits for End. For a call about to answer: whoever reads the answer then finds the
  // session idle (evictable, its idle time running), and the session's answers keep their order.
  // Nothing of the session may be touched after it. Ending the turn implies it.
  void Unpin();
  void End();
  bool ended() const { return session_ == nullptr; }
  const SessionId& id() const;

 private:
  friend class SessionStore;

  SessionStore* store_ = nullptr;
  std::shared_ptr<internal::Session> session_;
  bool pinned_ = false;
};

class SessionStore {
 public:
  // A store over one pool per storage (pool i is storages[i], typically device i). `clock` must
  // outlive the store. INVALID_ARGUMENT naming the option for bad options or no storage.
  static absl::StatusOr<std::unique_ptr<SessionStore>> Create(
      const StoreOptions& options, std::vector<std::unique_ptr<PageStorage>> storages,
      const Clock* clock = &Clock::Real());
  // Views and turns must have ended.
  ~SessionStore();

  SessionStore(const SessionStore&) = delete;
  SessionStore& operator=(const SessionStore&) = delete;

  // A new session without tokens. INVALID_ARGUMENT naming the field for a spec outside the
  // limits; RESOURCE_EXHAUSTED at max_sessions.
  absl::StatusOr<SessionId> CreateSession(const SessionSpec& spec);

  // Reserves `rows` rows at the end of `layer` (rows >= 0) and answers where they go and the view
  // to read. Takes free pages, evicting idle sessions of the pool if it must, and copies the
  // layer's last page first if it is partial and referenced elsewhere. All or nothing: on
  // RESOURCE_EXHAUSTED (over the session's max_tokens, or the pool short of pages even after
  // every idle session of the pool would be evicted, in which case none is) or a failed page
  // copy, the session is as it was and no other session was touched.
  //
  // The rows must be written before any view of them is read and before the session's next
  // RPC begins (on a GPU: within this RPC's turn).
  absl::StatusOr<AppendResult> Append(const SessionId& id, int layer, int64_t rows);

  // Append, then WriteRows of k and v ([rows, kv_heads, head_dim] of the session's dtype, host
  // memory) into the pool's storage. A failed write rolls the layer back to its earlier length.
  absl::StatusOr<AppendResult> AppendRows(const SessionId& id, int layer, int64_t rows,
                                          const void* k, const void* v);

  // Undoes an append of `rows` rows at `first_token` (its AppendResult::first_token) of `layer`
  // if the layer is still as that append left it (nothing appended or truncated since), freeing
  // the pages only it took; otherwise does nothing. For a caller whose work after the append
  // failed (an Attend whose attention could not be queued) while it holds the session's turn.
  // Drop the append's view first, else the layer's page list is copied.
  void UndoAppend(const SessionId& id, int layer, int64_t first_token, int64_t rows);

  // `layer` as it is now, pinned.
  absl::StatusOr<ReadView> View(const SessionId& id, int layer);

  // A new session sharing the first min(prefix_tokens, its length) rows of every layer of `id`:
  // full pages by reference, a partial last page too (copied by whichever session writes into it
  // first). Same spec as `id`, fresh last use and TTL. OUT_OF_RANGE if prefix_tokens exceeds the
  // longest layer; RESOURCE_EXHAUSTED at max_sessions.
  absl::StatusOr<SessionId> Fork(const SessionId& id, int64_t prefix_tokens);

  // Keeps the first `tokens` rows of every layer (a shorter layer stays as it is) and frees the
  // pages no longer listed. OUT_OF_RANGE if tokens exceeds the longest layer.
  absl::Status Truncate(const SessionId& id, int64_t tokens);

  // Ends the session; its pages are freed once no view reads them.
  absl::Status Release(const SessionId& id);

  // For operators; does not count as a use.
  absl::StatusOr<SessionInfo> GetSession(const SessionId& id);

  // Runs fn once with the session's turn: at once on this thread if no turn of the session is
  // held, else on the thread that ends the turns before it, in the order RunInTurn was called
  // (one stream's calls keep their arrival order). fn gets NOT_FOUND (why, as every call does)
  // instead of a turn if the session is gone by then. fn must not block; it may end its turn
  // itself or hand it on (to a batch that ends it when its kernel has run).
  void RunInTurn(const SessionId& id, absl::AnyInvocable<void(absl::StatusOr<Turn>)> fn);

  // Ends every unpinned session whose idle TTL has passed; returns how many it ended.
  int SweepExpired();

  StoreCounters counters() const;
  int num_pools() const { return static_cast<int>(pools_.size()); }
  const PagePool& pool(int i) const { return *pools_[i]; }

  // Every call on a session that is not live answers NOT_FOUND with one of these messages, naming
  // the first 8 hex digits of its id:
  //   "session_id: session 0123abcd was released"
  //   "session_id: session 0123abcd was evicted to free K/V pages (its pool was full and it was
  //    the least recently used idle session); create a new session and append its context again"
  //   "session_id: session 0123abcd expired after 10m idle (its TTL); create a new session ..."
  //   "session_id: no session 0123abcd here (never created on this replica, or it ended too long
  //    ago to be remembered)"

 private:
  struct Shard;
  struct Ended;
  struct Victim;
  friend class Turn;

  SessionStore(const StoreOptions& options, std::vector<std::unique_ptr<PagePool>> pools,
               const Clock* clock);

  Shard& ShardOf(const SessionId& id) const;
  // The session `id` from the map (live, or ended and not yet forgotten); NOT_FOUND naming why
  // if it is not there.
  absl::StatusOr<std::shared_ptr<internal::Session>> Find(const SessionId& id) const;
  // Locks `session` into `lock` if it is live: its TTL checked (an expired one is ended here) and,
  // if `touch`, its last use set to now; NOT_FOUND naming why otherwise (unlocked then).
  absl::Status Acquire(internal::Session& session, bool touch, std::unique_lock<std::mutex>& lock);
  // Find + Acquire.
  absl::StatusOr<std::shared_ptr<internal::Session>> Lock(const SessionId& id, bool touch,
                                                          std::unique_lock<std::mutex>& lock);
  // Marks the locked session ended and drops its pages' references.
  void EndLocked(internal::Session& session, EndReason reason);
  // Moves an ended session from the live map to the remembered ends.
  void Forget(const internal::Session& session, EndReason reason);
  bool IsExpired(const internal::Session& session, absl::Time now) const;
  // Counts one more live session; RESOURCE_EXHAUSTED at max_sessions.
  absl::Status ReserveSessionSlot();
  // Puts a new session (its slot reserved) into the map.
  absl::Status Insert(const std::shared_ptr<internal::Session>& session);
  ReadView MakeViewLocked(const std::shared_ptr<internal::Session>& session, int layer);
  // The layer's page list, to change: made if the layer has none, copied first if a view holds
  // it.
  std::vector<int32_t>& MutablePagesLocked(internal::Session& session, int layer);
  // `n` pages of `self`'s pool, evicting idle sessions if it must (see Append).
  absl::Status AllocateLocked(internal::Session& self, int64_t n, std::vector<int32_t>& pages);
  // Locks the idle sessions whose eviction frees `n` - free pages, least recently used first,
  // into `victims`; false (and none locked) if evicting every idle session would not.
  bool PlanEviction(const internal::Session& self, int64_t n, std::vector<Victim>& victims,
                    int64_t& would_free);
  void StartTurns(const std::shared_ptr<internal::Session>& session);
  void UnpinTurn(internal::Session& session);
  void PassTurn(const std::shared_ptr<internal::Session>& session);
  void SweepLoop();

  const StoreOptions options_;
  const std::vector<std::unique_ptr<PagePool>> pools_;
  const Clock* const clock_;
  const std::unique_ptr<Shard[]> shards_;

  std::atomic<int64_t> sessions_live_{0};
  std::atomic<int64_t> created_{0}, forked_{0}, released_{0}, evicted_{0}, expired_{0};
  std::atomic<int64_t> cow_copies_{0}, list_copies_{0};

  std::mutex sweep_mu_;
  std::condition_variable sweep_cv_;
  bool stopping_ = false;  // guarded by sweep_mu_
  std::thread sweeper_;
};

}  // namespace attention::session

#endif  // ATTENTION_SERVER_SESSION_SESSION_STORE_H_
