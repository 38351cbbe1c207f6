// Helpers of the session service's tests: an in-process server (CPU or GPU executor, batcher,
// session store and SessionService on a loopback port), a model of every session's K/V history, and
// the float64 reference of an Attend as the equivalent packed AttentionRequest over that history
// (checked with CompareWithReference, server_test_util.h), so that the oracle never reads the
// server's pages.
#ifndef ATTENTION_TESTS_SERVER_SESSION_TEST_HARNESS_H_
#define ATTENTION_TESTS_SERVER_SESSION_TEST_HARNESS_H_

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "attention/v1/attention.pb.h"
#include "grpcpp/grpcpp.h"
#include "server/batcher.h"
#include "server/cpu_executor.h"
#include "server/metrics/session_metrics.h"
#include "server/session/session_store.h"
#include "server/session_service.h"

namespace attention::testing {

struct SessionServerOptions {
  int64_t page_bytes = 64 * 1024;
  int64_t num_pages = 1024;
  session::SessionLimits limits;
  std::string replica = "replica-0";
  // Zero: no sweeper thread.
  absl::Duration sweep_interval = absl::Milliseconds(50);
  server::BatcherOptions batcher;
  int cpu_threads = 2;
  // With a registry: the SessionMetrics, polled every 50 ms.
  std::shared_ptr<prometheus::Registry> registry;
  // Not OK: SessionServiceOptions::check_kernel refuses every session with it.
  absl::Status availability;
  // SessionServiceOptions::limits.
  server::ValidationLimits limits_per_request;
  // The GPU executor's pools (ExecutorOptions); 0: their defaults.
  int64_t device_memory_bytes = 0;
  int64_t pinned_host_bytes = 0;
};

// A SessionService over a fresh store on 127.0.0.1:<free port>, with the CPU executor and a host
// pool, or with ATTN_TEST_BACKEND=cuda the GPU executor of device 0 and a pool in its memory. Shuts
// everything down in order when destroyed (server, batcher, executor, service, store).
class InProcessSessionServer {
 public:
  // Empty error string on success.
  static std::unique_ptr<InProcessSessionServer> Start(const SessionServerOptions& options,
                                                       std::string* error);
  ~InProcessSessionServer();

  const std::string& address() const { return address_; }
  session::SessionStore& store() { return *store_; }
  server::SessionServiceImpl& service() { return *service_; }
  std::shared_ptr<grpc::Channel> Channel() const;
  // With the GPU executor: the row writes its device pool made through its staging lanes
  // (DevicePageStorage::row_writes; an Attend's rows written in the batch's stream are not
  // counted). -1 with the CPU executor.
  int64_t device_pool_row_writes() const;

 private:
  InProcessSessionServer() = default;

  std::unique_ptr<session::SessionStore> store_;
  std::unique_ptr<server::SessionMetrics> metrics_;
  std::unique_ptr<server::Executor> executor_;
  std::unique_ptr<server::Batcher> batcher_;
  std::unique_ptr<server::SessionServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

// `rows` x `per_row` random values in [-1, 1] of `dtype`, as the contract's bytes.
std::string RandomValues(v1::DType dtype, int64_t count, std::mt19937& rng);

// A tensor of `dtype` and `shape` with random values in [-1, 1].
v1::Tensor RandomTensor(v1::DType dtype, const std::vector<int64_t>& shape, std::mt19937& rng);

// What a session holds, as the client appended it: per layer, the K rows and V rows (contract
// bytes, [tokens, kv_heads, head_dim] each).
struct SessionModel {
  v1::DType dtype = v1::BFLOAT16;
  int layers = 1, kv_heads = 1, head_dim = 1;
  std::vector<std::string> k, v;

  SessionModel() = default;
  SessionModel(v1::DType dtype, int layers, int kv_heads, int head_dim);
  int64_t row_bytes() const;
  int64_t tokens(int layer) const;
  void Append(int layer, const std::string& k_rows, const std::string& v_rows);
  // Every layer longer than `tokens` cut to it.
  void Truncate(int64_t tokens);
  // The first min(prefix, tokens) rows of every layer.
  SessionModel Fork(int64_t prefix) const;
};

// The packed AttentionRequest that computes `attend` on `model`'s `layer` (whose rows already
// include attend's k_new / v_new): q [n, q_heads, d], k and v the layer's rows, cu_seqlens
// {0, n} / {0, L}, the same options. Without a key range.
v1::AttentionRequest ReferenceRequest(const SessionModel& model, const v1::AttendRequest& attend);

// The float64 reference of `attend` (without a key range) on `model` compared with `response`
// (empty string: match), with CompareWithReference's tolerances.
std::string CheckAttend(const SessionModel& model, const v1::AttendRequest& attend,
                        const v1::AttentionResponse& response);

// Merges two partial answers of disjoint key ranges (o in the session's dtype and float32 lse,
// DESIGN.md "Merging partials") into one answer of the same dtype and shape.
v1::AttentionResponse MergePartials(const v1::AttentionResponse& a, const v1::AttentionResponse& b);

}  // namespace attention::testing

#endif  // ATTENTION_TESTS_SERVER_SESSION_TEST_HARNESS_H_
