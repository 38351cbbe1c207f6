// Helpers for the server's tests: random AttentionRequests of any layout and option, and a check
// of a response against the float64 reference. The reference's params are derived here from the
// request alone (not through the server's validation or packing), so that they are an
// independent oracle.
#ifndef ATTENTION_TESTS_SERVER_SERVER_TEST_UTIL_H_
#define ATTENTION_TESTS_SERVER_SERVER_TEST_UTIL_H_

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "attention/v1/attention.pb.h"
#include "kernels/attention_params.h"

namespace attention::testing {

struct RequestOptions {
  v1::DType dtype = v1::BFLOAT16;
  // Dense layout: batch x seqlen_q / seqlen_k. Packed when seqlens_q is not empty (then
  // seqlens_k must have the same size).
  int batch = 1;
  int seqlen_q = 16, seqlen_k = 16;
  std::vector<int> seqlens_q, seqlens_k;
  int q_heads = 4, kv_heads = 4, head_dim = 32;
  bool causal = false;
  int window_left = -1, window_right = -1;  // window set when either is not -1
  float softcap = 0.f;
  std::optional<float> softmax_scale;
  // 0: none, 1: [q_heads], 2: [batch, q_heads].
  int alibi = 0;
  // Mask dtype (BOOL, FLOAT32, FLOAT16, BFLOAT16) and shape, empty shape for no mask.
  v1::DType mask_dtype = v1::BOOL;
  std::vector<int64_t> mask_shape;
  bool return_lse = false;
  // Attention sinks: FLOAT32 [q_heads] logits in [-1, 2].
  bool sinks = false;
  // FLOAT8_E4M3 requests: the q, k and v descale factors. 0: none (the codes hold values in
  // [-1, 1] themselves), 1: per tensor ([1]), 2: per head ([q_heads] / [kv_heads]). With factors,
  // each tensor's codes hold values in [-1, 1] divided by its factors (random in [1/256, 1/64]),
  // so that the codes use most of e4m3's range.
  int descale = 0;
};

// `n` random bytes (e.g. the payload of a tensor whose values do not matter).
std::string RandomBytes(std::mt19937& rng, size_t n);

// A request with random q, k, v in [-1, 1] (and random slopes / mask) as `options` describe.
v1::AttentionRequest MakeRequest(const RequestOptions& options, uint64_t request_id,
                                 std::mt19937& rng);

// The backend the integration tests start the server with: $ATTN_TEST_BACKEND, default "cpu"
// ("cuda" runs the same suite against the GPU executor, with the GPU's tolerances).
std::string ServerBackendUnderTest();

// Compares `response` (o, and lse when the request asked for it) with the float64 reference of
// `request`; returns an empty string when they match within the dtype's tolerance, else the first
// mismatch. Tolerances: |got - want| <= atol + rtol * |want| with (atol, rtol) = (1e-4, 1e-4) for
// FLOAT32, (2e-3, 2e-3) for FLOAT16, (1.6e-2, 1.6e-2) for BFLOAT16 and FLOAT8_E4M3 (whose o is
// BFLOAT16; the reference reads the dequantized inputs, e4m3 x descale) on o (one rounding of the
// output to the storage type plus float32 accumulation); lse (1e-3, 1e-4). A FLOAT32 answer is
// held to the precision it reports (AttentionResponse.precision): PRECISION_TF32 4e-3 on o and
// lse, PRECISION_BF16 the BFLOAT16 tolerance on o and 2e-2 on lse. With ATTN_TEST_BACKEND=cuda:
// FLOAT16 5e-3, BFLOAT16 2.5e-2, FLOAT8_E4M3 7e-2 (its kernel rounds P to e4m3: up to 2^-4 of
// sum_j p_j |v_j| / sum_j p_j with |v| <= 1), and FLOAT8_E4M3's lse per row within
// 1e-3 + 2^-8 |scale| sum_d |q_id| max_j,d |k_jd| (dequantized; FP8 tensor-core accumulation, or
// the bfloat16 copies of q and k for what the FP8 kernel lacks).
std::string CompareWithReference(const v1::AttentionRequest& request,
                                 const v1::AttentionResponse& response);

// o of `request` in float64 (its layout: [batch, seqlen_q, q_heads, head_dim] or packed), from the
// same reference CompareWithReference uses; and element i of a response's o as a double.
std::vector<double> ReferenceOutput(const v1::AttentionRequest& request);
double OutputValue(const v1::Tensor& o, int64_t i);
// sum over o of (o - reference o)^2, `response` against the float64 reference of `request`
// (infinity when o's size does not match).
double OutputSquaredError(const v1::AttentionRequest& request,
                          const v1::AttentionResponse& response);

// The backward request of a forward `forward` answered with `answer` (which holds o and lse:
// `forward` asked for return_lse): the same inputs and options, backward = true, o and lse from
// the answer, and a random grad_o in [-1, 1] of q's dtype and shape.
v1::AttentionRequest MakeBackwardRequest(const v1::AttentionRequest& forward,
                                         const v1::AttentionResponse& answer, uint64_t request_id,
                                         std::mt19937& rng);

// dq, dk and dv in float64, laid out as q, k and v of `p` (contiguous: element i of dq is
// element i of q).
struct BackwardGradients {
  std::vector<double> dq, dk, dv;
};

// The float64 gradients of sum(o * grad_o) for the forward `p` (host pointers, contiguous
// strides; grad_o laid out as o), from the definition, row by row with no tiling: the row's
// scores (scale, softcap, ALiBi, mask, window, sinks in the denominator), P = e^(s - lse),
// dP = grad_o v^T, D = sum_j P_j dP_j, dS = P (dP - D) (1 - tanh^2(raw / softcap) with softcap),
// dq = scale dS k, dk = scale dS^T q and dv = P^T grad_o summed over each KV head's query group.
// It reads neither the request's o nor its lse: both are recomputed in float64.
BackwardGradients ReferenceBackward(const AttentionParams& p, const void* grad_o);

// The tolerance of a backward answer per tensor: max |got - reference| <= tol x max |reference|,
// with tol 2e-5 for FLOAT32, 2e-3 for FLOAT16 and 1.5e-2 for BFLOAT16 (the CPU backward kernel's
// own, kernels/cpu/attention_backward_cpu.h, with float32's doubled: the forward's o and lse
// that the kernel reads came through the service too).
double BackwardTolerance(v1::DType dtype);

// Compares a backward `response` (dq, dk, dv: dtype, shape, size, every element finite, values
// within BackwardTolerance) with ReferenceBackward of the backward request `request`; "" when
// they match, else the first mismatch.
std::string CompareBackwardWithReference(const v1::AttentionRequest& request,
                                         const v1::AttentionResponse& response);

}  // namespace attention::testing

#endif  // ATTENTION_TESTS_SERVER_SERVER_TEST_UTIL_H_
