// Request validation: the only place that reads shapes and options from an AttentionRequest.
// A pure function from the request (and the server's limits) to a RequestSpec, or a status whose
// message names the field and the rule it breaks, e.g.
//   "q.shape: rank must be 4 (dense [batch, seqlen_q, q_heads, head_dim]) or 3 (packed with
//    cu_seqlens_q), got 2"
//
// Status codes:
//   INVALID_ARGUMENT   the request breaks the contract of attention.proto: a missing or wrong
//                      dtype, rank, dimension < 1, inconsistent shapes, data length != elements x
//                      dtype size, q_heads % kv_heads != 0, bad cu_seqlens, non-finite scale,
//                      softcap or slopes, a window side < -1, a mask that does not broadcast, or a
//                      head_dim above kMaxHeadDim (what the kernels support).
//   RESOURCE_EXHAUSTED a well-formed request over a limit this server was configured with
//                      (ValidationLimits: tokens, sequences, heads).
//
// Nothing is allocated from request numbers before every check passed: element counts are
// products checked for overflow and compared with the data actually received. The one allocation
// (widening a FLOAT16 / BFLOAT16 additive mask to float32, as the kernels read additive masks in
// float32) happens last, sized by a mask whose byte length was already checked.
#ifndef ATTENTION_SERVER_VALIDATION_H_
#define ATTENTION_SERVER_VALIDATION_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "attention/v1/attention.pb.h"
#include "server/request_spec.h"
#include "server/request_wire.h"

namespace attention::server {

// The largest head_dim the kernels (CUDA and CPU) accept.

// Per-request limits, from the server's flags. Exceeding one is RESOURCE_EXHAUSTED.
struct ValidationLimits {
  // Rows of q, and rows of k, in one request (--max_request_tokens).
  int64_t max_request_tokens = int64_t{1} << 20;
  // Sequences in one request: dense batch or cu_seqlens size - 1 (--max_request_sequences).
  int64_t max_request_sequences = 65536;
  // Query heads (--max_heads).
  int64_t max_heads = 1024;
};

// Validates `request` against the contract and `limits`. On success the RequestSpec points into
// `request` (which must outlive it). With `data`, q, k and v's bytes are taken from there instead
// of the request's own (empty) data fields (request_wire.h); they must outlive the spec too.
absl::StatusOr<RequestSpec> ValidateRequest(const v1::AttentionRequest& request,
                                            const ValidationLimits& limits,
                                            const TensorData* data = nullptr);

}  // namespace attention::server

#endif  // ATTENTION_SERVER_VALIDATION_H_
