#include "server/session_flags.h"

#include <unistd.h>

#include <chrono>
#include <climits>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "server/session/page_storage.h"
#include "server/session_validation.h"

ABSL_FLAG(std::string, replica_name, "",
          "This replica's name: CreateSession answers it and session ids carry it, so that "
          "clients send a session's calls to the replica that holds it (a StatefulSet pod's name "
          "is its host name). Empty: the host name");
ABSL_FLAG(int64_t, session_page_bytes, 64 * 1024,
          "Bytes per K/V session page (K and V halves; a multiple of 256). 64 KiB holds 16 tokens "
          "of 8 KV heads x head_dim 128 x bf16");
ABSL_FLAG(int64_t, session_pages, 4096,
          "Pages in each device's session pool: a pool takes session_pages x session_page_bytes of "
          "memory (on the CUDA backend device memory on every GPU, allocated at start-up; on the "
          "CPU backend host memory, touched as it is used)");
ABSL_FLAG(int64_t, session_max_tokens, 128 * 1024,
          "Most tokens per layer of one session (CreateSession may ask for fewer)");
ABSL_FLAG(int32_t, session_max_layers, 256, "Most layers of one session");
ABSL_FLAG(int64_t, session_max_sessions, 64 * 1024, "Most live sessions, forks included");
ABSL_FLAG(int64_t, session_idle_ttl_s, 600,
          "Idle time after which a session expires when CreateSession gives no TTL");
ABSL_FLAG(int64_t, session_max_idle_ttl_s, 24 * 3600, "Longest idle TTL a session may ask for");

namespace attention::server {
namespace {

// How often the session gauges are refreshed: as often as a scrape is useful.
constexpr std::chrono::milliseconds kMetricsInterval{1000};

std::string HostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

absl::Status Positive(const char* flag, int64_t value) {
  if (value > 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("--", flag, " must be > 0, got ", value));
}

}  // namespace

int64_t SessionPoolBytesFromFlags() {
  const int64_t pages = absl::GetFlag(FLAGS_session_pages);
  const int64_t page_bytes = absl::GetFlag(FLAGS_session_page_bytes);
  if (pages <= 0 || page_bytes <= 0 || pages > INT64_MAX / page_bytes) return 0;
  return pages * page_bytes;
}

absl::StatusOr<SessionPools> HostSessionPools(const session::PoolOptions& options) {
  absl::StatusOr<std::unique_ptr<session::HostPageStorage>> storage =
      session::HostPageStorage::Create(options);
  if (!storage.ok()) return storage.status();
  SessionPools pools;
  pools.storages.push_back(std::move(*storage));
  pools.labels.push_back("cpu");
  return pools;
}

absl::StatusOr<SessionStoreParts> MakeSessionStore(const std::string& backend,
                                                   const MakeSessionPools& make_pools,
                                                   std::shared_ptr<prometheus::Registry> registry) {
  SessionStoreParts parts;
  parts.backend = backend;
  parts.replica = absl::GetFlag(FLAGS_replica_name);
  if (parts.replica.empty()) parts.replica = HostName();
  if (absl::Status s = CheckReplicaName(parts.replica, "--replica_name"); !s.ok()) return s;

  for (auto [flag, value] : std::initializer_list<std::pair<const char*, int64_t>>{
           {"session_page_bytes", absl::GetFlag(FLAGS_session_page_bytes)},
           {"session_pages", absl::GetFlag(FLAGS_session_pages)},
           {"session_max_tokens", absl::GetFlag(FLAGS_session_max_tokens)},
           {"session_max_layers", absl::GetFlag(FLAGS_session_max_layers)},
           {"session_max_sessions", absl::GetFlag(FLAGS_session_max_sessions)},
           {"session_idle_ttl_s", absl::GetFlag(FLAGS_session_idle_ttl_s)},
           {"session_max_idle_ttl_s", absl::GetFlag(FLAGS_session_max_idle_ttl_s)}}) {
    if (absl::Status s = Positive(flag, value); !s.ok()) return s;
  }
  // The kernels' seqlen_k is an int, and a context is at most max_tokens.
  if (absl::GetFlag(FLAGS_session_max_tokens) > INT32_MAX) {
    return absl::InvalidArgumentError("--session_max_tokens must be below 2^31");
  }
  if (absl::GetFlag(FLAGS_session_idle_ttl_s) > absl::GetFlag(FLAGS_session_max_idle_ttl_s)) {
    return absl::InvalidArgumentError(
        "--session_idle_ttl_s must be at most --session_max_idle_ttl_s");
  }

  session::PoolOptions pool;
  pool.page_bytes = absl::GetFlag(FLAGS_session_page_bytes);
  pool.num_pages = absl::GetFlag(FLAGS_session_pages);
  absl::StatusOr<SessionPools> pools = make_pools(pool);
  if (!pools.ok()) {
    return absl::Status(
        pools.status().code(),
        absl::StrCat("--session_page_bytes / --session_pages: ", pools.status().message()));
  }

  session::StoreOptions options;
  options.limits.max_tokens = absl::GetFlag(FLAGS_session_max_tokens);
  options.limits.max_layers = absl::GetFlag(FLAGS_session_max_layers);
  options.limits.max_sessions = absl::GetFlag(FLAGS_session_max_sessions);
  options.limits.default_idle_ttl = absl::Seconds(absl::GetFlag(FLAGS_session_idle_ttl_s));
  options.limits.max_idle_ttl = absl::Seconds(absl::GetFlag(FLAGS_session_max_idle_ttl_s));
  absl::StatusOr<std::unique_ptr<session::SessionStore>> store =
      session::SessionStore::Create(options, std::move(pools->storages));
  if (!store.ok()) return store.status();
  parts.store = std::move(*store);

  parts.metrics = std::make_unique<SessionMetrics>(std::move(registry), std::move(pools->labels));
  parts.metrics->StartPolling(parts.store.get(), kMetricsInterval);
  return parts;
}

SessionServiceOptions SessionServiceOptionsFor(const SessionStoreParts& parts,
                                               const ValidationLimits& limits,
                                               int max_stream_in_flight) {
  SessionServiceOptions options;
  options.replica = parts.replica;
  options.limits = limits;
  options.max_stream_in_flight = max_stream_in_flight;
  return options;
}

}  // namespace attention::server
