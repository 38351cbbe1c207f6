// A naive float64 attention reference that is obviously right: for every (sequence, head, query
// row) it scores every key, applies the options in the order the contract states, and normalizes
// in double precision. No tiling, no online softmax: it is what the backends are checked against.
#ifndef ATTENTION_TESTS_REFERENCE_REFERENCE_ATTENTION_H_
#define ATTENTION_TESTS_REFERENCE_REFERENCE_ATTENTION_H_

#include <cstdint>

#include "kernels/attention_params.h"

namespace attention::testing {

// Element `index` of a q/k/v/o-typed buffer, widened to double.
double LoadElement(DType dtype, const void* data, int64_t index);

// Computes attention for `p` (host pointers; p.o and p.lse are ignored) in float64.
// `o` is written with p.o_* strides as if it were a double buffer shaped like p.o; `lse`, when
// not null, with p.lse_* strides. A row with no allowed key gets o = 0 and lse = -inf (the sink's
// logit with attention sinks). Follows every field of attention_params.h: attention sinks
// (p.sinks, p.sink_logits), paged K/V (p.page_table, page_size, seqlens_k: only the pages of
// allowed keys are read), key ranges (p.key_range) and FP8 descale factors (p.q_descale, ...: the
// reference computes on the dequantized values e4m3 x descale).
void ReferenceAttention(const AttentionParams& p, double* o, double* lse);

}  // namespace attention::testing

#endif  // ATTENTION_TESTS_REFERENCE_REFERENCE_ATTENTION_H_
