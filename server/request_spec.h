// RequestSpec: the validated, kernel-ready description of one AttentionRequest. Produced by
// ValidateRequest (server/validation.h) and read by the batcher, the packing helpers and every
// executor; nothing downstream of validation re-reads shapes from the proto.
#ifndef ATTENTION_SERVER_REQUEST_SPEC_H_
#define ATTENTION_SERVER_REQUEST_SPEC_H_

#include <cstdint>
#include <vector>

#include "absl/strings/string_view.h"
#include "kernels/attention_params.h"
#include "kernels/kernel_config.h"

namespace attention::server {

// A backward request's work against its forward's, as FlashAttention counts it: the forward has
// two products per score (q.k, p.v), the backward five (q.k recomputed, do.v, p^T do, ds^T q,
// ds k).
inline constexpr double kBackwardWorkFactor = 2.5;

// The bytes of one input tensor as the spans they arrived in, in order (the pieces of gRPC's
// receive buffers a message came in: server/request_wire.h).
using TensorPieces = std::vector<absl::string_view>;

// Every pointer points into the AttentionRequest it was validated from (or into
// `converted_mask`, or the received pieces of q, k and v), so a RequestSpec is valid only while
// that request lives and must not be copied once `converted_mask` is in use (moving is fine: a
// vector's buffer survives a move).
//
// The request's kernel configuration is the KernelConfig base (`spec.head_dim`, `spec.causal`,
// ...): validation fills it once, and the batcher buckets by it as it is.
struct RequestSpec : KernelConfig {
  // Packed variable-length request (cu_seqlens_q and cu_seqlens_k given) or dense.
  bool packed = false;
  // Sequences in the request: dense batch, or cu_seqlens_q size - 1.
  int batch = 0;
  // Dense: the sequence lengths. Packed: the longest sequence of the request.
  int seqlen_q = 0, seqlen_k = 0;
  // Rows of q (and o) and of k and v: dense batch * seqlen, packed the first dimension.
  int64_t total_q = 0, total_k = 0;

  // q, k, v bytes (contiguous rows [total, heads, head_dim]): q_data when they lie in one span
  // (the request's own data, or one received piece), else null and q_pieces lists the spans in
  // order (the server's TensorData, which outlives the spec like the request). Likewise k, v.
  const char* q_data = nullptr;
  const char* k_data = nullptr;
  const char* v_data = nullptr;
  const TensorPieces* q_pieces = nullptr;
  const TensorPieces* k_pieces = nullptr;
  const TensorPieces* v_pieces = nullptr;
  // Whether q, k and v each lie in one span, so that a backend can read them in place.
  bool inputs_contiguous() const {
    return q_data != nullptr && k_data != nullptr && v_data != nullptr;
  }
  // Packed only: batch + 1 offsets inside the request, else null.
  const int32_t* cu_seqlens_q = nullptr;
  const int32_t* cu_seqlens_k = nullptr;

  // The configuration's softmax_scale is resolved (the request's value or 1 / sqrt(head_dim)) and
  // its window Normalize()d (causal implies window_right == 0, and the reverse for an unbounded
  // left side).

  // ALiBi slopes (float32) inside the request, set iff `alibi`: [q_heads] (alibi_batch_stride 0)
  // or [batch, q_heads] (alibi_batch_stride q_heads).
  const float* alibi_slopes = nullptr;
  int64_t alibi_batch_stride = 0;

  // Attention sink logits (float32) inside the request, set iff `sinks`: [q_heads].
  const float* sink_logits = nullptr;

  // FP8 (dtype kFloat8E4M3) only: the float32 dequantization factors inside the request
  // (AttentionRequest.q_descale, k_descale, v_descale), each null (absent: 1.0), [1] (head stride
  // 0) or [heads] (head stride 1; q_heads for q, kv_heads for k and v). Every one finite and > 0.
  const float* q_descale = nullptr;
  const float* k_descale = nullptr;
  const float* v_descale = nullptr;
  int64_t q_descale_head_stride = 0, k_descale_head_stride = 0, v_descale_head_stride = 0;

  // Mask as the kernels read it: kBool is uint8 per element, kAdditive float32 per element.
  // Strides index (sequence, head, row, col) of the request, 0 on broadcast dimensions.
  // Additive FLOAT16 / BFLOAT16 masks are widened to float32 into `converted_mask`. The kind is
  // the configuration's mask_kind.
  int64_t mask_batch_stride = 0, mask_head_stride = 0, mask_row_stride = 0, mask_col_stride = 0;
  // Bytes of mask data the kernels read (elements x 1 for bool, x 4 for additive).
  int64_t mask_bytes = 0;
  const void* mask_raw = nullptr;     // the request's own bytes (BOOL or FLOAT32 masks)
  std::vector<float> converted_mask;  // widened FLOAT16 / BFLOAT16 additive mask
  const void* mask() const {
    return converted_mask.empty() ? mask_raw : static_cast<const void*>(converted_mask.data());
  }

  bool return_lse = false;

  // A backward request (kind kBackward): the forward's o and the incoming gradient grad_o (q's
  // dtype and layout, q_bytes each) and its lse (float32, lse_bytes: dense
  // [batch, q_heads, seqlen_q], packed [q_heads, total_q]), inside the request. Null otherwise.
  // The answer's dq (q_bytes) and dk, dv (kv_bytes each) are the job's outputs.
  const char* o_data = nullptr;
  const char* grad_o_data = nullptr;
  const float* lse_data = nullptr;

  // A session's Attend (kind kPagedDecode): tokens per page of the pool its context lies in (the
  // batcher's bound on a batch's page table), 0 otherwise.
  int page_size = 0;

  // Sizes in bytes: q, each of k and v, and lse (float32 [q_heads, total_q] worth; an output of a
  // forward request that asked for it, an input of every backward request).
  int64_t q_bytes = 0, kv_bytes = 0, lse_bytes = 0;
  // o's bytes: q's elements in OutputDType(dtype), so q_bytes but for FP8 (o bfloat16: twice).
  int64_t o_bytes() const { return q_bytes / DTypeSize(dtype) * DTypeSize(OutputDType(dtype)); }
  // Bytes of the answer's tensors: o (and lse when asked), or a backward's dq, dk and dv.
  int64_t answer_bytes() const {
    return kind == WorkKind::kBackward ? q_bytes + 2 * kv_bytes : o_bytes() + lse_bytes;
  }

  // Estimated work in floating-point operations (RequestWork, server/validation.h): what
  // --max_request_gflop, --max_queue_gflop and a batch's work bound count.
  double work = 0;

  // Bytes the request holds while queued (q, k, v, mask, slopes, descales): what
  // --max_queue_bytes counts.
  int64_t queued_bytes() const;
  // FlashAttention-convention floating-point operations: 4 * len_q * len_k * head_dim per head and
  // sequence, halved when causal; kBackwardWorkFactor times that for a backward request.
  double flops() const;
  // Query and key rows of sequence b (0 <= b < batch).
  int64_t seqlen_q_of(int b) const {
    return packed ? cu_seqlens_q[b + 1] - cu_seqlens_q[b] : seqlen_q;
  }
  // A paged context (a session's Attend, one sequence) has seqlen_k keys and no cu_seqlens_k.
  int64_t seqlen_k_of(int b) const {
    return packed && cu_seqlens_k != nullptr ? cu_seqlens_k[b + 1] - cu_seqlens_k[b] : seqlen_k;
  }
};

}  // namespace attention::server

#endif  // ATTENTION_SERVER_REQUEST_SPEC_H_
