// Request validation: the only place that reads shapes and options from an AttentionRequest.
// A pure function from the request (and the server's limits) to a RequestSpec, or a status whose
// message names the field and the rule it breaks, e.g.
//   "q.shape: rank must be 4 (dense [batch, seqlen_q, q_heads, head_dim]) or 3 (packed with
//    cu_seqlens_q), got 2"
//
// Status codes:
//   INVALID_ARGUMENT   the request breaks the contract of attention.proto: a missing or wrong
//                      dtype, rank, dimension < 1, inconsistent shapes, data length != elements x
//                      dtype size, q_heads % kv_heads != 0, bad cu_seqlens, a scale, softcap,
//                      slope, sink or mask value outside its bound (Values below), a window side
//                      < -1, a mask that does not broadcast, or a head_dim above kMaxHeadDim (what
//                      the kernels support); for a backward request (`backward`), a missing o,
//                      lse or grad_o, an o or grad_o unlike q (dtype, shape), an lse that is not
//                      FLOAT32 in the forward's lse shape or holds NaN or +inf; for a forward
//                      request, any of o, lse, grad_o set; FLOAT8_E4M3 on a backward request;
//                      a q_descale, k_descale or v_descale on a request whose inputs are not
//                      FLOAT8_E4M3, or one that is not FLOAT32 [1] or [heads], or holds a factor
//                      that is not finite and > 0.
//   RESOURCE_EXHAUSTED a well-formed request over a limit this server was configured with
//                      (ValidationLimits: tokens, sequences, heads, work, answer size).
//
// Values: the options are bounded so that, for q, k and v of magnitude at most 2^48 (every finite
// FLOAT16 value), every score the kernels form (scale x q.k, softcap, ALiBi, additive mask, sink,
// in float32 and times log2(e)) and every output stays finite. Larger q, k or v values
// (BFLOAT16 / FLOAT32) can still overflow float32: the service checks each result and answers a
// non-finite one INVALID_ARGUMENT (CheckFinite, server/service.h), never OK. For FLOAT8_E4M3
// inputs the values are the dequantized ones (e4m3 x descale, at most 448 x the factor), and an
// e4m3 NaN code (0x7f / 0xff) is not looked for (a scan of every input byte would cost more than
// the FP8 kernel saves): it makes the rows that see it NaN, answered as any non-finite result.
//
// Nothing is allocated from request numbers before every check passed: element counts are
// products checked for overflow and compared with the data actually received. The one allocation
// (widening a FLOAT16 / BFLOAT16 additive mask to float32, as the kernels read additive masks in
// float32) happens last, sized by a mask whose byte length was already checked.
#ifndef ATTENTION_SERVER_VALIDATION_H_
#define ATTENTION_SERVER_VALIDATION_H_

#include <cstdint>
#include <limits>

#include "absl/status/statusor.h"
#include "attention/v1/attention.pb.h"
#include "server/request_spec.h"
#include "server/request_wire.h"

namespace attention::server {

// Value bounds (see Values above). Multipliers of a score: |softmax_scale| and |ALiBi slope| at
// most 2^16, a softcap 0 (off) or within [2^-16, 2^16] (the kernels divide by it and multiply by
// it). Logits: additive mask values (besides -inf, which drops the key) and sink logits of
// magnitude at most 2^100. With |q|, |k| <= 2^48 and head_dim <= 256 a score is at most
// 2^16 x 2^8 x 2^96 + 2^16 x 2^31 + 2^100 < 2^121, below float32's 2^128 even times log2(e) and
// as the difference of two scores; 2^100 leaves any mask a client means as a bias (or as "nearly
// -inf") alone, while the float32 extremes that produced NaN (3e38, about 2^128) are refused.
inline constexpr float kMaxScoreMultiplier = 65536.f;       // 2^16
inline constexpr float kMinSoftcap = 1.f / 65536.f;         // 2^-16
inline constexpr float kMaxLogit = 1.2676506002282294e30f;  // 2^100

// Work estimate (the unit of --max_request_gflop and --max_queue_gflop): floating-point operations
// as FlashAttention counts them, 4 x head_dim per score (q.k and p.v), plus kSoftmaxFlopsPerScore
// per score for the softmax (scale, max, exp, sum, the options), over the scores a window or
// causal mask allows, plus up to kTileSlackKeys keys per query row where a window cuts the key
// range (the kernels compute whole tiles there).
//
// kSoftmaxFlopsPerScore: the CPU backend (AVX-512, one thread of the 2-core VM, 2026-12-05,
// bench/cpu/attention_cpu_bench, seqlen 1024, 16 heads, fp32) took 0.31 / 0.44 / 0.55 / 0.70 ns
// per score at head_dim 1 / 4 / 8 / 16 and 2.3 / 5.0 / 9.2 ns at 64 / 128 / 256; the large head
// dims run at ~110 GFLOP/s (0.009 ns per flop), and the intercept, 0.28 ns, is ~32 flops' worth.
// Without it a head_dim 1 request (4 flops per score) would cost 8x what it is charged.
// kTileSlackKeys: the CPU tiles keys by 64 over column blocks of 32 rows, the GPU kernels by 64 to
// 128 keys over 64 to 128 rows.
inline constexpr double kSoftmaxFlopsPerScore = 32;
inline constexpr int64_t kTileSlackKeys = 128;

// Scores allowed for `len_q` query rows against `len_k` keys (bottom-right aligned) under the
// window (window_left, window_right), -1 = unbounded on that side: sum over rows i of the keys j
// with p(i) - left <= j <= p(i) + right, 0 <= j < len_k, p(i) = i + len_k - len_q. Exact, in
// O(1).
double AllowedScores(int64_t len_q, int64_t len_k, int64_t window_left, int64_t window_right);

// The work of `spec` (validated: its sequences, heads, head_dim and window are set) in
// floating-point operations, as defined above, times kBackwardWorkFactor (2.5) for a backward
// request; O(sequences).
double RequestWork(const RequestSpec& spec);

// Bytes an answer carries besides o's and lse's data: field tags and lengths, o's and lse's shape,
// the timings, the batch (its device string) and the request id come to under 200 bytes; 1 KiB
// keeps the bound safe as fields are added.
inline constexpr int64_t kAnswerOverheadBytes = 1024;

// Per-request limits, from the server's flags. Exceeding one is RESOURCE_EXHAUSTED.
struct ValidationLimits {
  // Rows of q, and rows of k, in one request (--max_request_tokens).
  int64_t max_request_tokens = int64_t{1} << 20;
  // Sequences in one request: dense batch or cu_seqlens size - 1 (--max_request_sequences).
  int64_t max_request_sequences = 65536;
  // Query heads (--max_heads).
  int64_t max_heads = 1024;
  // RequestWork, in floating-point operations (--max_request_gflop x 1e9). Unlimited unless set:
  // the server sets its backend's default (server/main.cc).
  double max_request_work = std::numeric_limits<double>::infinity();
  // Largest answer (o, lse and kAnswerOverheadBytes): the message limit (--max_message_bytes), so
  // that an answer that could not be sent is refused before it is computed.
  int64_t max_answer_bytes = int64_t{1} << 30;
};

// Validates `request` against the contract and `limits`. On success the RequestSpec points into
// `request` (which must outlive it). With `data`, q, k and v's bytes are taken from there instead
// of the request's own (empty) data fields (request_wire.h); they must outlive the spec too.
absl::StatusOr<RequestSpec> ValidateRequest(const v1::AttentionRequest& request,
                                            const ValidationLimits& limits,
                                            const TensorData* data = nullptr);

}  // namespace attention::server

#endif  // ATTENTION_SERVER_VALIDATION_H_
