// The one parameter struct that crosses every layer of the attention kernels: the server fills
// it, the host dispatch checks and routes it, the CPU backend and the CUDA kernels read it.
// Plain data only (no gRPC, no absl), so CUDA translation units can include it.
#ifndef ATTENTION_KERNELS_ATTENTION_PARAMS_H_
#define ATTENTION_KERNELS_ATTENTION_PARAMS_H_

#include <cstdint>

#include "kernels/kernel_config.h"

namespace attention {

// One attention launch over a (possibly packed, variable-length) batch.
//
// Addressing rule, the same for q, k, v, o and lse: row r of sequence b at head h of tensor X is
//   X + b * X_batch_stride + (row_offset(b) + r) * X_row_stride + h * X_head_stride
// where row_offset(b) = cu_seqlens ? cu_seqlens[b] : 0 (cu_seqlens_q for q, o, lse; cu_seqlens_k
// for k, v). Packed batches therefore use batch_stride 0. Strides are in elements; the head_dim
// dimension is contiguous (stride 1). o holds OutputDType(dtype) elements (bfloat16 for FP8
// inputs) and its strides count those elements.
//
// Pointers are host pointers for the CPU backend and device pointers for the CUDA backend
// (cu_seqlens, alibi_slopes, sinks and mask included).
//
// The kernel configuration (dtype, head_dim, heads, scale, softcap, window, whether ALiBi, sinks
// and a mask are used) is the KernelConfig base: as FlashAttention's params derive from their
// q/k/v params, so every field reads `p.head_dim`.
struct AttentionParams : KernelConfig {
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
  // Packed variable-length batch: [batch + 1] int32 offsets, both set or both null.
  const int32_t* cu_seqlens_q = nullptr;
  const int32_t* cu_seqlens_k = nullptr;

  // float32 ALiBi slopes, set iff `alibi`: score -= slope * |p(i) - j|. Slope for (b, h) is
  // alibi_slopes[b * alibi_batch_stride + h]; alibi_batch_stride is 0 for [q_heads] slopes.
  const float* alibi_slopes = nullptr;
  int64_t alibi_batch_stride = 0;

  // float32 attention sink logits, set iff `sinks` (the configuration's flag): one extra logit
  // per (sequence, head) in each row's softmax denominator, with no value vector:
  //   o_i = sum_j e^(s_ij - m) v_j / (e^(sink - m) + sum_j e^(s_ij - m)),  lse includes the sink,
  // and a row with no allowed key gives o = 0, lse = sink. The sink is a raw logit: not scaled by
  // softmax_scale, not softcapped. Sink for (b, h) is sink_logits[b * sink_batch_stride + h];
  // sink_batch_stride is 0 for [q_heads] sinks.
  const float* sink_logits = nullptr;
  int64_t sink_batch_stride = 0;

  // FP8 only (dtype kFloat8E4M3; null for every other dtype): float32 dequantization factors, the
  // real value of a stored element of q being e4m3 x q_descale (k, v alike). Null = 1.0. Factor
  // for (sequence b, head h):
  //   q_descale[b * q_descale_batch_stride + h * q_descale_head_stride]
  // (head stride 0 = one factor per tensor, batch stride 0 = one set for the whole launch); k and
  // v are indexed by kv head. Finite and > 0 (the server checks it).
  const float* q_descale = nullptr;
  const float* k_descale = nullptr;
  const float* v_descale = nullptr;
  int64_t q_descale_batch_stride = 0, q_descale_head_stride = 0;
  int64_t k_descale_batch_stride = 0, k_descale_head_stride = 0;
  int64_t v_descale_batch_stride = 0, v_descale_head_stride = 0;

  // Optional mask indexed by (b, h, i, j) with i, j local to the sequence:
  //   mask + b * mask_batch_stride + h * mask_head_stride + i * mask_row_stride + j *
  //   mask_col_stride
  // A broadcast dimension has stride 0.
  // The mask's kind is the configuration's `mask_kind`; `mask` is set iff it is not kNone.
  const void* mask = nullptr;
  int64_t mask_batch_stride = 0, mask_head_stride = 0, mask_row_stride = 0, mask_col_stride = 0;

  // Paged K/V (a session's context, kernels reading WorkKind::kPagedDecode or a paged forward):
  // when page_table is set, k and v point at page pools [num_pages, page_size, kv_heads,
  // head_dim], k_batch_stride / v_batch_stride are the strides between pages (elements), and key
  // row j of sequence b lives in page page_table[b * page_table_stride + j / page_size] at row
  // j % page_size. seqlens_k[b] is then sequence b's context length (cu_seqlens_k is null; q, o
  // and lse are dense or packed by cu_seqlens_q as usual, and seqlen_k is the longest context).
  // Dense K/V is the special case of one page per sequence (page_size >= seqlen_k).
  const int32_t* page_table = nullptr;
  int64_t page_table_stride = 0;
  int page_size = 0;
  const int32_t* seqlens_k = nullptr;
  // Optional key range per sequence, [batch, 2] int32 {begin, end}: only keys begin <= j < end
  // are allowed (positions keep their absolute values for causal, window and ALiBi), giving the
  // partial o and lse of that range. Null: every key.
  const int32_t* key_range = nullptr;

  bool is_varlen() const { return cu_seqlens_q != nullptr; }
  bool is_paged() const { return page_table != nullptr; }
};

// One backward launch (issue 22; the CPU backward in kernels/cpu/attention_backward_cpu.h, the CUDA
// one in kernels/cuda/attention_cuda.h). The AttentionParams base describes the forward that
// produced o and lse (kind must be WorkKind::kBackward; q, k, v, o, lse are inputs here, and lse is
// required: the forward's float32 log-sum-exp, -inf for a row with no allowed key, the sink logit
// for such a row with sinks). The four gradient tensors share the strides (and dtype) of their
// primal:
//   do_ [.., seqlen_q, q_heads, head_dim]  o's strides    (input: dLoss/do)
//   dq  [.., seqlen_q, q_heads, head_dim]  q's strides    (output)
//   dk  [.., seqlen_k, kv_heads, head_dim] k's strides    (output; GQA/MQA: summed over the
//   dv  [.., seqlen_k, kv_heads, head_dim] v's strides     query heads of the KV head's group)
// Every element of dq, dk and dv inside the described rows and heads is written (0 for a query
// row with no allowed key and for a key no query row sees); nothing else is. The outputs must not
// overlap the inputs or each other.
struct AttentionBackwardParams : AttentionParams {
  const void* do_ = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
};

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
