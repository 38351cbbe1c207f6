// The store's cost on a decode step's path, per call, on host pages already touched once (a pool
// page's first write faults its memory in; that is the OS's cost, not the store's): one layer of
// 8 KV heads x 128 x bf16 (4 KiB of K and V per token), 64 KiB pages, at 1 k, 8 k and 32 k tokens
// of context.
//
//   session_store_benchmark [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "server/session/session_store.h"

namespace attention::session {
namespace {

constexpr int kKvHeads = 8, kHeadDim = 128;
// Appended rows past the context before a truncate brings it back.
constexpr int64_t kGrowth = 1024;

struct Fixture {
  explicit Fixture(int64_t context) : context(context) {
    PoolOptions pool;
    pool.num_pages = 8192;  // 512 MiB of address space; the context's pages are touched below
    std::vector<std::unique_ptr<PageStorage>> storages;
    storages.push_back(*HostPageStorage::Create(pool));
    StoreOptions options;
    options.sweep_interval = absl::ZeroDuration();
    store = *SessionStore::Create(options, std::move(storages));
    SessionSpec spec;
    spec.layers = 1;
    spec.kv_heads = kKvHeads;
    spec.head_dim = kHeadDim;
    spec.dtype = DType::kBFloat16;
    id = *store->CreateSession(spec);
    k.assign(kKvHeads * kHeadDim, 0x3f80);  // bf16 1.0
    v.assign(kKvHeads * kHeadDim, 0x4000);  // bf16 2.0
    std::vector<uint16_t> rows_k(static_cast<size_t>(context + kGrowth) * k.size(), 0x3f80);
    std::vector<uint16_t> rows_v(rows_k.size(), 0x4000);
    (void)*store->AppendRows(id, 0, context + kGrowth, rows_k.data(), rows_v.data());
    (void)store->Truncate(id, context);
  }

  // Keeps the context within [context, context + kGrowth).
  void AppendOne() {
    if (++appended == kGrowth) {
      (void)store->Truncate(id, context);
      appended = 0;
    }
    absl::StatusOr<AppendResult> result = store->AppendRows(id, 0, 1, k.data(), v.data());
    benchmark::DoNotOptimize(result);
  }

  const int64_t context;
  std::unique_ptr<SessionStore> store;
  SessionId id;
  std::vector<uint16_t> k, v;
  int64_t appended = 0;
};

// Append one token's k and v (reserve, write, the view it answers) and drop the view.
void BM_AppendOneToken(benchmark::State& state) {
  Fixture f(state.range(0));
  for (auto _ : state) f.AppendOne();
}
BENCHMARK(BM_AppendOneToken)->Arg(1024)->Arg(8192)->Arg(32768);

// Take and drop the view an attention reads.
void BM_View(benchmark::State& state) {
  Fixture f(state.range(0));
  for (auto _ : state) {
    absl::StatusOr<ReadView> view = f.store->View(f.id, 0);
    benchmark::DoNotOptimize(view);
  }
}
BENCHMARK(BM_View)->Arg(1024)->Arg(8192)->Arg(32768);

// Append one token while the previous step's view is still held: the layer's page list is copied
// (and, once per page, its partial last page). What a caller pays for answering before dropping
// its view.
void BM_AppendOneTokenWithViewHeld(benchmark::State& state) {
  Fixture f(state.range(0));
  absl::StatusOr<ReadView> held = f.store->View(f.id, 0);
  for (auto _ : state) {
    f.AppendOne();
    held = f.store->View(f.id, 0);
  }
}
BENCHMARK(BM_AppendOneTokenWithViewHeld)->Arg(1024)->Arg(8192)->Arg(32768);

// Fork the whole context (parallel sampling, a shared prompt) and release the fork.
void BM_ForkAndRelease(benchmark::State& state) {
  Fixture f(state.range(0));
  for (auto _ : state) {
    absl::StatusOr<SessionId> child = f.store->Fork(f.id, f.context);
    (void)f.store->Release(*child);
  }
}
BENCHMARK(BM_ForkAndRelease)->Arg(1024)->Arg(8192)->Arg(32768);

}  // namespace
}  // namespace attention::session

BENCHMARK_MAIN();
