// The last step of the online softmax, shared by the forward kernels' epilogue (device) and the
// unit test (host): a row's running max and sum, and the attention sink that joins its
// denominator, turned into the factor O is multiplied by and the row's log-sum-exp.
#ifndef ATTENTION_KERNELS_CUDA_SOFTMAX_EPILOGUE_H_
#define ATTENTION_KERNELS_CUDA_SOFTMAX_EPILOGUE_H_

#include <cmath>

#include "kernels/cuda/kernel_traits.h"

namespace attention::cuda {

struct RowNormalization {
  float scale;  // O *= scale
  float lse;    // natural log
};

// A row whose online softmax ended with running max `row_max` and sum `sum` (the P values
// exp2(x - row_max) summed, row_max = -inf and sum = 0 when no key was allowed; both in base-2
// logits), with the sink's base-2 logit `sink` (-inf without attention sinks) joining the
// denominator with no value vector:
//   t = max(row_max, sink), total = sum * 2^(row_max - t) + 2^(sink - t),
//   scale = 2^(row_max - t) / total, lse = (t + log2(total)) ln 2,
// computed against t so that neither term overflows whatever the sink. Without a sink this is
// scale = 1 / sum and lse = (row_max + log2(sum)) ln 2 (2^0 = 1, 2^-inf = 0); a row without an
// allowed key gets scale 0 and lse = sink (-inf without one). `exp2` is the exponential the
// caller computes P with (the kernels' ex2.approx; exp2f on the host).
template <typename Exp2>
ATTN_HOST_DEVICE inline RowNormalization NormalizeRow(float row_max, float sum, float sink,
                                                      Exp2 exp2) {
  constexpr float kLn2 = 0.6931471805599453f;
  const float top = fmaxf(row_max, sink);
  const float ref = top == -INFINITY ? 0.f : top;
  const float keep = exp2(row_max - ref);
  const float total = fmaf(sum, keep, exp2(sink - ref));
  if (total == 0.f) return {0.f, -INFINITY};
  return {keep / total, (ref + log2f(total)) * kLn2};
}

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_SOFTMAX_EPILOGUE_H_
