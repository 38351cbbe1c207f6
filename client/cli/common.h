// What attention_cli's subcommands share: connection flags, the problem description (shape,
// dtype, options), random or .npy inputs, and the check of an answer against the local CPU
// backend.
#ifndef ATTENTION_CLIENT_CLI_COMMON_H_
#define ATTENTION_CLIENT_CLI_COMMON_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/client/client.h"
#include "attention/v1/attention.pb.h"
#include "client/cli/flags.h"

namespace attention::client::cli {

// --target and how to reach it.
struct ConnectionFlags {
  std::string target;
  std::string tls_ca, tls_cert, tls_key, tls_server_name;
  std::string auth_token_file;
  int64_t max_message_bytes = int64_t{1} << 30;
  int retry_attempts = 4;

  void Register(FlagSet& flags);
  // ClientOptions from the flags (reads the PEM and token files). `private_connection` gives the
  // client its own TCP connection.
  absl::StatusOr<ClientOptions> Options(bool private_connection = false) const;
  absl::StatusOr<Client> Connect() const;
};

// Shape, element type and options of the attention problem. Dense layout:
// q [batch, seqlen, heads, head_dim], k and v [batch, seqlen_k, kv_heads, head_dim]; packed
// layout when cu_seqlens_q and cu_seqlens_k are given: q [total_q, heads, head_dim], k and v
// [total_k, kv_heads, head_dim] with total_* the last offset.
struct ProblemFlags {
  int batch = 1;
  int seqlen = 128;
  int seqlen_k = 0;  // 0: seqlen
  int heads = 16;
  int kv_heads = 0;  // 0: heads
  int head_dim = 64;
  std::string dtype = "bf16";
  bool causal = false;
  int window_left = -1, window_right = -1;
  double softcap = 0;
  double softmax_scale = 0;  // 0: 1 / sqrt(head_dim)
  bool return_lse = false;
  int64_t seed = 1;
  // Packed layout: batch + 1 comma-separated offsets each, "0,30,74".
  std::string cu_seqlens_q, cu_seqlens_k;

  // Shape flags (batch .. dtype, seed) only when `with_shape`; the options always.
  void Register(FlagSet& flags, bool with_shape);
  // Sets the request's options (causal, window, softcap, softmax_scale, return_lse) and
  // cu_seqlens. INVALID_ARGUMENT for malformed offsets.
  absl::Status ApplyOptions(v1::AttentionRequest* request) const;
};

// A request with random q, k, v (standard normal values rounded to the dtype) as `problem`
// describes, dense or packed, options included. INVALID_ARGUMENT naming the flag for a bad shape
// or dtype.
absl::StatusOr<v1::AttentionRequest> RandomRequest(const ProblemFlags& problem);

// A request from .npy files: dense (rank 4) or packed (rank 3, with problem.cu_seqlens_*), with
// the options of `problem`.
absl::StatusOr<v1::AttentionRequest> RequestFromFiles(const std::string& q_path,
                                                      const std::string& k_path,
                                                      const std::string& v_path,
                                                      const ProblemFlags& problem);

// The dimensions of a request, dense or packed (seqlen_* is the longest sequence when packed).
struct ProblemShape {
  bool packed = false;
  int64_t batch = 0, seqlen_q = 0, seqlen_k = 0, q_heads = 0, kv_heads = 0, head_dim = 0;
  int64_t query_tokens = 0;  // batch * seqlen_q (dense) or total_q (packed)
};
// INVALID_ARGUMENT when q, k and v are not rank 4 (dense) or rank 3 with cu_seqlens (packed).
absl::StatusOr<ProblemShape> ShapeOf(const v1::AttentionRequest& request);

// The answer compared with the local CPU backend (attention::cpu::CpuBackend) run on the same
// request. Tolerance per element: |got - want| <= tol * (1 + |want|) with tol = 1e-4 (float32),
// 2e-3 (float16), 1.6e-2 (bfloat16): one rounding to the storage type plus float32 accumulation.
struct CheckResult {
  double max_abs_error = 0;
  // ||got - want||_2 / ||want||_2 over o.
  double relative_l2_error = 0;
  double lse_max_abs_error = 0;  // 0 without lse
  double tolerance = 0;
  int64_t mismatches = 0;  // elements beyond tolerance (o and lse)
};
absl::StatusOr<CheckResult> CheckWithCpuBackend(const v1::AttentionRequest& request,
                                                const v1::AttentionResponse& response);

// The backward request of `forward` after its answer `answer` (which must carry lse: send the
// forward with return_lse): backward = true, the answer's o and lse, and a random grad_o
// (standard normal values rounded to q's dtype, seeded from `seed`), deterministic as given.
// FAILED_PRECONDITION when the answer has no lse or its o does not match q.
absl::StatusOr<v1::AttentionRequest> BackwardRequest(const v1::AttentionRequest& forward,
                                                     const v1::AttentionResponse& answer,
                                                     int64_t seed, bool deterministic);

// A backward answer's dq, dk and dv compared with the local CPU backend's backward
// (CpuBackend::RunBackward) on the same backward request (its o, lse and grad_o), with the
// forward's per-element tolerance; max_abs_error, relative_l2_error and mismatches cover the
// three tensors together, lse_max_abs_error stays 0.
absl::StatusOr<CheckResult> CheckBackwardWithCpuBackend(const v1::AttentionRequest& request,
                                                        const v1::AttentionResponse& response);

// Prints "error: <status>" to stderr and returns the exit code for it (2 for INVALID_ARGUMENT,
// which is how flag errors come back, else 1).
int Fail(const absl::Status& status);

}  // namespace attention::client::cli

#endif  // ATTENTION_CLIENT_CLI_COMMON_H_
