// The one parameter struct that crosses every layer of the attention kernels: the server fills
// it, the host dispatch checks and routes it, the CPU backend and the CUDA kernels read it.
// Plain data only (no gRPC, no absl), so CUDA translation units can include it.
#ifndef ATTENTION_KERNELS_ATTENTION_PARAMS_H_
#define ATTENTION_KERNELS_ATTENTION_PARAMS_H_

#include <cstdint>

namespace attention {

// Element type of q, k, v and o.
enum class DType : uint8_t { kFloat32, kFloat16, kBFloat16 };

// What `AttentionParams::mask` holds.
enum class MaskKind : uint8_t {
  kNone,
  // uint8 per element, 0 drops the key.
  kBool,
  // float32 per element, added to the score.
  kAdditive,
};

// One attention launch over a (possibly packed, variable-length) batch.
//
// Addressing rule, the same for q, k, v, o and lse: row r of sequence b at head h of tensor X is
//   X + b * X_batch_stride + (row_offset(b) + r) * X_row_stride + h * X_head_stride
// where row_offset(b) = cu_seqlens ? cu_seqlens[b] : 0 (cu_seqlens_q for q, o, lse; cu_seqlens_k
// for k, v). Packed batches therefore use batch_stride 0. Strides are in elements; the head_dim
// dimension is contiguous (stride 1).
//
// Pointers are host pointers for the CPU backend and device pointers for the CUDA backend
// (cu_seqlens, alibi_slopes and mask included).
struct AttentionParams {
  DType dtype = DType::kBFloat16;

  const void* q = nullptr;  // [batch, seqlen_q, q_heads, head_dim] or [total_q, q_heads, head_dim]
  const void* k = nullptr;  // [batch, seqlen_k, kv_heads, head_dim] or [total_k, ...]
  const void* v = nullptr;  // as k
  void* o = nullptr;        // as q
  int64_t q_batch_stride = 0, q_row_stride = 0, q_head_stride = 0;
  int64_t k_batch_stride = 0, k_row_stride = 0, k_head_stride = 0;
  int64_t v_batch_stride = 0, v_row_stride = 0, v_head_stride = 0;
  int64_t o_batch_stride = 0, o_row_stride = 0, o_head_stride = 0;

  // Optional float32 log-sum-exp per (sequence, head, query row), natural log; -inf for a row
  // with no allowed key. Dense: [batch, q_heads, seqlen_q]; packed: [q_heads, total_q].
  float* lse = nullptr;
  int64_t lse_batch_stride = 0, lse_head_stride = 0;  // row stride is 1

  int batch = 0;
  // Dense: the sequence lengths. Packed: the longest sequence (sizes the grid).
  int seqlen_q = 0, seqlen_k = 0;
  // Packed only: rows of q (= cu_seqlens_q[batch]) and of k and v (= cu_seqlens_k[batch]).
  int64_t total_q = 0, total_k = 0;
  int q_heads = 0, kv_heads = 0;  // q_heads % kv_heads == 0
  int head_dim = 0;

  // Packed variable-length batch: [batch + 1] int32 offsets, both set or both null.
  const int32_t* cu_seqlens_q = nullptr;
  const int32_t* cu_seqlens_k = nullptr;

  float softmax_scale = 0.f;  // multiplies q.k
  float softcap = 0.f;        // 0 = off, else score = softcap * tanh(score / softcap)

  // Key j is allowed for query row i iff p(i) - window_left <= j <= p(i) + window_right, where
  // p(i) = i + seqlen_k(b) - seqlen_q(b); -1 = unbounded. `causal` means window_right == 0 and
  // is kept as a flag so that kernels can pick their causal variant; Normalize() enforces it.
  bool causal = false;
  int window_left = -1, window_right = -1;

  // Optional float32 ALiBi slopes: score -= slope * |p(i) - j|. Slope for (b, h) is
  // alibi_slopes[b * alibi_batch_stride + h]; alibi_batch_stride is 0 for [q_heads] slopes.
  const float* alibi_slopes = nullptr;
  int64_t alibi_batch_stride = 0;

  // Optional mask indexed by (b, h, i, j) with i, j local to the sequence:
  //   mask + b * mask_batch_stride + h * mask_head_stride + i * mask_row_stride + j * mask_col_stride
  // A broadcast dimension has stride 0.
  MaskKind mask_kind = MaskKind::kNone;
  const void* mask = nullptr;
  int64_t mask_batch_stride = 0, mask_head_stride = 0, mask_row_stride = 0, mask_col_stride = 0;

  bool is_varlen() const { return cu_seqlens_q != nullptr; }
  bool has_window() const { return window_left >= 0 || window_right >= 0; }
};

// Folds `causal` into the window (right = 0, clamping a wider right side) and sets `causal` when
// the window already says right == 0 with an unbounded left side, so kernels see one canonical
// form.
inline void Normalize(AttentionParams& p) {
  if (p.causal) {
    p.window_right = 0;
  } else if (p.window_right == 0 && p.window_left < 0) {
    p.causal = true;
  }
}

// Size in bytes of one element of `dtype`.
constexpr int64_t DTypeSize(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

// Fills the strides of a dense, contiguous batch: q/o [batch, seqlen_q, q_heads, head_dim],
// k/v [batch, seqlen_k, kv_heads, head_dim], lse [batch, q_heads, seqlen_q]. With
// cu_seqlens set (and total_q filled in) the batch strides are 0, the rows are the packed rows
// and lse is [q_heads, total_q].
inline void SetContiguousStrides(AttentionParams& p) {
  const int64_t d = p.head_dim;
  const bool packed = p.is_varlen();
  p.q_head_stride = p.o_head_stride = d;
  p.q_row_stride = p.o_row_stride = d * p.q_heads;
  p.k_head_stride = p.v_head_stride = d;
  p.k_row_stride = p.v_row_stride = d * p.kv_heads;
  p.q_batch_stride = p.o_batch_stride = packed ? 0 : p.q_row_stride * p.seqlen_q;
  p.k_batch_stride = p.v_batch_stride = packed ? 0 : p.k_row_stride * p.seqlen_k;
  p.lse_batch_stride = packed ? 0 : int64_t{p.q_heads} * p.seqlen_q;
  p.lse_head_stride = packed ? p.total_q : p.seqlen_q;
}

}  // namespace attention

#endif  // ATTENTION_KERNELS_ATTENTION_PARAMS_H_
