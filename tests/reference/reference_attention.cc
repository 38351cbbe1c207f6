#include "tests/reference/reference_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <vector>

#include "kernels/dtype.h"

namespace attention::testing {

double LoadElement(DType dtype, const void* data, int64_t index) {
  switch (dtype) {
    case DType::kFloat32:
      return static_cast<const float*>(data)[index];
    case DType::kFloat16:
      return HalfToFloat(static_cast<const uint16_t*>(data)[index]);
    case DType::kBFloat16:
      return BFloat16ToFloat(static_cast<const uint16_t*>(data)[index]);
    case DType::kFloat8E4M3:
      return E4M3ToFloat(static_cast<const uint8_t*>(data)[index]);
  }
  return std::numeric_limits<double>::quiet_NaN();
}

void ReferenceAttention(const AttentionParams& p, double* o, double* lse) {
  const double kNegInf = -std::numeric_limits<double>::infinity();
  const int group = p.q_heads / p.kv_heads;
  std::vector<double> scores;
  for (int b = 0; b < p.batch; ++b) {
    const int64_t q_offset = p.is_varlen() ? p.cu_seqlens_q[b] : 0;
    const int64_t len_q = p.is_varlen() ? p.cu_seqlens_q[b + 1] - q_offset : p.seqlen_q;
    // Key rows: contiguous (dense or packed by cu_seqlens_k), or paged: key j of sequence b is row
    // j % page_size of page page_table[b * page_table_stride + j / page_size].
    const bool paged = p.is_paged();
    const int64_t k_offset = !paged && p.is_varlen() ? p.cu_seqlens_k[b] : 0;
    const int64_t len_k = paged           ? p.seqlens_k[b]
                          : p.is_varlen() ? p.cu_seqlens_k[b + 1] - k_offset
                                          : p.seqlen_k;
    const auto key_row = [&](int64_t j, int64_t batch_stride, int64_t row_stride) {
      if (!paged) return b * batch_stride + (k_offset + j) * row_stride;
      const int64_t page = p.page_table[b * p.page_table_stride + j / p.page_size];
      return page * batch_stride + (j % p.page_size) * row_stride;
    };
    // Allowed keys before the window: [key_begin, key_end).
    int64_t key_begin = 0, key_end = len_k;
    if (p.key_range != nullptr) {
      key_begin = std::max<int64_t>(key_begin, p.key_range[2 * b]);
      key_end = std::min<int64_t>(key_end, p.key_range[2 * b + 1]);
    }
    scores.assign(len_k, 0.0);
    for (int h = 0; h < p.q_heads; ++h) {
      const int kv_h = h / group;
      const double slope = p.alibi_slopes ? p.alibi_slopes[b * p.alibi_batch_stride + h] : 0.0;
      const double sink = p.sinks ? p.sink_logits[b * p.sink_batch_stride + h] : kNegInf;
      // FP8 dequantization factors (1 when absent): q.k and v scale by them exactly as the
      // elements would.
      const double qk_descale =
          (p.q_descale ? p.q_descale[b * p.q_descale_batch_stride + h * p.q_descale_head_stride]
                       : 1.0) *
          (p.k_descale ? p.k_descale[b * p.k_descale_batch_stride + kv_h * p.k_descale_head_stride]
                       : 1.0);
      const double v_descale =
          p.v_descale ? p.v_descale[b * p.v_descale_batch_stride + kv_h * p.v_descale_head_stride]
                      : 1.0;
      for (int64_t i = 0; i < len_q; ++i) {
        const int64_t pos = i + len_k - len_q;  // bottom-right aligned key position of row i
        const int64_t q_row =
            b * p.q_batch_stride + (q_offset + i) * p.q_row_stride + h * p.q_head_stride;
        double row_max = kNegInf;
        for (int64_t j = 0; j < len_k; ++j) {
          scores[j] = kNegInf;
          if (j < key_begin || j >= key_end) continue;
          const int64_t right = p.causal ? 0 : p.window_right;
          if (p.window_left >= 0 && j < pos - p.window_left) continue;
          if (right >= 0 && j > pos + right) continue;
          const int64_t mask_index = b * p.mask_batch_stride + h * p.mask_head_stride +
                                     i * p.mask_row_stride + j * p.mask_col_stride;
          if (p.mask_kind == MaskKind::kBool &&
              static_cast<const uint8_t*>(p.mask)[mask_index] == 0) {
            continue;
          }
          const int64_t k_row =
              key_row(j, p.k_batch_stride, p.k_row_stride) + kv_h * p.k_head_stride;
          double dot = 0.0;
          for (int d = 0; d < p.head_dim; ++d) {
            dot += LoadElement(p.dtype, p.q, q_row + d) * LoadElement(p.dtype, p.k, k_row + d);
          }
          double s = p.softmax_scale * qk_descale * dot;
          if (p.softcap > 0.f) s = p.softcap * std::tanh(s / p.softcap);
          if (p.alibi_slopes) s -= slope * static_cast<double>(std::llabs(pos - j));
          if (p.mask_kind == MaskKind::kAdditive) {
            s += static_cast<const float*>(p.mask)[mask_index];
          }
          scores[j] = s;
          if (s > row_max) row_max = s;
        }
        const int64_t o_row =
            b * p.o_batch_stride + (q_offset + i) * p.o_row_stride + h * p.o_head_stride;
        double* lse_out =
            lse ? lse + b * p.lse_batch_stride + h * p.lse_head_stride + q_offset + i : nullptr;
        if (row_max == kNegInf) {  // no allowed key: o = 0, lse = the sink (-inf without one)
          for (int d = 0; d < p.head_dim; ++d) o[o_row + d] = 0.0;
          if (lse_out) *lse_out = sink;
          continue;
        }
        // The sink joins the denominator with no value vector.
        row_max = std::max(row_max, sink);
        double sum = sink == kNegInf ? 0.0 : std::exp(sink - row_max);
        for (int64_t j = 0; j < len_k; ++j) {
          scores[j] = scores[j] == kNegInf ? 0.0 : std::exp(scores[j] - row_max);
          sum += scores[j];
        }
        for (int d = 0; d < p.head_dim; ++d) {
          double acc = 0.0;
          for (int64_t j = 0; j < len_k; ++j) {
            if (scores[j] == 0.0) continue;
            const int64_t v_row =
                key_row(j, p.v_batch_stride, p.v_row_stride) + kv_h * p.v_head_stride;
            acc += scores[j] * LoadElement(p.dtype, p.v, v_row + d);
          }
          o[o_row + d] = v_descale * acc / sum;
        }
        if (lse_out) *lse_out = row_max + std::log(sum);
      }
    }
  }
}

}  // namespace attention::testing
