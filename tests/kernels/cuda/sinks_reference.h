// Sinks for the float64 reference: a reference computed without sinks, with the sinks folded in
// afterwards, so that the float32 tests do not depend on the reference's own sinks support.
#ifndef ATTENTION_TESTS_KERNELS_CUDA_SINKS_REFERENCE_H_
#define ATTENTION_TESTS_KERNELS_CUDA_SINKS_REFERENCE_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/attention_params.h"

namespace attention::testing {

// Folds one sink logit per (sequence, head) into a reference computed without sinks: the sink is
// a partial with lse = sink and no value, merged as DESIGN.md merges partials:
// lse' = log(e^lse + e^sink), o' = e^(lse - lse') o (a row with no key: o = 0, lse = sink).
inline void ApplySinks(const AttentionParams& p, const std::vector<float>& sinks, double* o,
                       double* lse) {
  for (int b = 0; b < p.batch; ++b) {
    const int64_t q0 = p.is_varlen() ? p.cu_seqlens_q[b] : 0;
    const int64_t len_q = p.is_varlen() ? p.cu_seqlens_q[b + 1] - q0 : p.seqlen_q;
    for (int h = 0; h < p.q_heads; ++h) {
      const double sink = sinks[b * p.sink_batch_stride + h];
      for (int64_t i = 0; i < len_q; ++i) {
        double& l = lse[b * p.lse_batch_stride + h * p.lse_head_stride + q0 + i];
        double* row = o + b * p.o_batch_stride + (q0 + i) * p.o_row_stride + h * p.o_head_stride;
        if (std::isinf(l) && l < 0) {
          l = sink;
          continue;
        }
        const double top = std::max(l, sink);
        const double merged = top + std::log(std::exp(l - top) + std::exp(sink - top));
        const double f = std::exp(l - merged);
        for (int d = 0; d < p.head_dim; ++d) row[d] *= f;
        l = merged;
      }
    }
  }
}

}  // namespace attention::testing

#endif  // ATTENTION_TESTS_KERNELS_CUDA_SINKS_REFERENCE_H_
