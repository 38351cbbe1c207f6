// Backend-independent host API of the attention kernels: the structural checks every backend runs
// on a KernelConfig (before it queues work) and on an AttentionParams (before it touches any
// pointer). The one structural validator: the CPU and CUDA backends both call these, and add only
// what their own kernels cannot do.
#ifndef ATTENTION_KERNELS_ATTENTION_H_
#define ATTENTION_KERNELS_ATTENTION_H_

#include "absl/status/status.h"
#include "kernels/attention_params.h"

namespace attention {

// Structural checks of a kernel configuration, the same for every backend: known kind, dtype,
// precision and mask kind (dtype kFloat8E4M3 with kind kForward only); positive head_dim (at
// most kMaxHeadDim), q_heads and kv_heads with q_heads % kv_heads == 0; window sides >= -1; a
// finite softmax_scale; a finite softcap >= 0. INVALID_ARGUMENT naming the field and the rule.
absl::Status CheckConfig(const KernelConfig& c);

// Structural checks of `p`, the same for every backend: CheckConfig, then known dtype and mask
// kind, positive dimensions, q_heads % kv_heads == 0, non-null q/k/v/o, non-negative strides (row
// strides positive, head strides positive when there is more than one head, batch strides positive
// for a dense batch of more than one sequence and zero for a packed one), window sides >= -1, a
// finite softmax_scale, a finite softcap >= 0, mask pointer set iff mask_kind != kNone,
// cu_seqlens_q and cu_seqlens_k both set or both null (and total_q, total_k >= 1 when set),
// descale pointers null unless dtype is kFloat8E4M3 and their strides >= 0.
//
// Reads no memory behind the pointers (they may be device pointers), so it does not check the
// contents of cu_seqlens; the backends do where they can. This is not the server's request
// validation: a violation here is a bug of the caller, reported as INVALID_ARGUMENT naming the
// field and the rule.
absl::Status CheckParams(const AttentionParams& p);

// Structural checks of a backward launch: CheckParams on the base, then kind == kBackward,
// non-null lse, do_, dq, dk and dv, and no paged K/V (page_table, seqlens_k, key_range are
// forward-only). Reads no memory behind the pointers. INVALID_ARGUMENT naming the field and the
// rule.
absl::Status CheckBackwardParams(const AttentionBackwardParams& p);

}  // namespace attention

#endif  // ATTENTION_KERNELS_ATTENTION_H_
