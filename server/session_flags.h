// The sessions' part of attention_server (issue 20): the --replica_name and --session_* flags,
// the store they size, its metrics, and the SessionService options. main.cc's Serve() makes the
// store before the batcher (queued Attend jobs hold views and turns of it, so it must outlive the
// batcher) and the service after it.
#ifndef ATTENTION_SERVER_SESSION_FLAGS_H_
#define ATTENTION_SERVER_SESSION_FLAGS_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/metrics/session_metrics.h"
#include "server/session/page_storage.h"
#include "server/session/session_store.h"
#include "server/session_service.h"
#include "server/validation.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace attention::server {

inline constexpr char kSessionServiceName[] = "attention.v1.SessionService";

// The store and its metrics. Destroy the metrics first (they poll the store): members go in
// reverse order.
struct SessionStoreParts {
  std::unique_ptr<session::SessionStore> store;
  std::unique_ptr<SessionMetrics> metrics;
  std::string replica;  // --replica_name, or the host name
  std::string backend;  // the server's backend ("cpu" or "cuda")
};

// The pools of a backend: one per device, in executor order (pool i is read by executor i), each
// with its metrics label ("cpu", "cuda:0", ...).
struct SessionPools {
  std::vector<std::unique_ptr<session::PageStorage>> storages;
  std::vector<std::string> labels;
};
using MakeSessionPools =
    std::function<absl::StatusOr<SessionPools>(const session::PoolOptions& options)>;

// The bytes of one pool as the flags size it (--session_pages x --session_page_bytes, 0 when
// they are out of range): what a GPU executor leaves free for it.
int64_t SessionPoolBytesFromFlags();

// One pool of host memory, which the CPU backend reads in place.
absl::StatusOr<SessionPools> HostSessionPools(const session::PoolOptions& options);

// From the flags: the pools `make_pools` allocates (each --session_pages pages of
// --session_page_bytes), the limits, the replica's name, and metrics on `registry` polled every
// second. INVALID_ARGUMENT naming the flag; RESOURCE_EXHAUSTED naming the flags when a pool cannot
// be allocated.
absl::StatusOr<SessionStoreParts> MakeSessionStore(const std::string& backend,
                                                   const MakeSessionPools& make_pools,
                                                   std::shared_ptr<prometheus::Registry> registry);

// The service's options: the replica, the attention service's limits and stream bound.
SessionServiceOptions SessionServiceOptionsFor(const SessionStoreParts& parts,
                                               const ValidationLimits& limits,
                                               int max_stream_in_flight);

}  // namespace attention::server

#endif  // ATTENTION_SERVER_SESSION_FLAGS_H_
