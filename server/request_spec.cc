#include "server/request_spec.h"

namespace attention::server {

int64_t RequestSpec::queued_bytes() const {
  const int64_t slopes =
      alibi_slopes == nullptr ? 0 : int64_t{4} * q_heads * (alibi_batch_stride == 0 ? 1 : batch);
  // A backward request also holds o, grad_o and lse.
  const int64_t backward = kind == WorkKind::kBackward ? 2 * q_bytes + lse_bytes : 0;
  const auto descale = [](const float* factors, int64_t head_stride, int heads) -> int64_t {
    return factors == nullptr ? 0 : 4 * (head_stride == 0 ? 1 : heads);
  };
  const int64_t descales = descale(q_descale, q_descale_head_stride, q_heads) +
                           descale(k_descale, k_descale_head_stride, kv_heads) +
                           descale(v_descale, v_descale_head_stride, kv_heads);
  return q_bytes + 2 * kv_bytes + mask_bytes + slopes + backward + descales;
}

double RequestSpec::flops() const {
  double per_head = 0;
  for (int b = 0; b < batch; ++b) {
    per_head += 4.0 * static_cast<double>(seqlen_q_of(b)) * static_cast<double>(seqlen_k_of(b));
  }
  const double forward = per_head * head_dim * q_heads * (causal ? 0.5 : 1.0);
  // The backward pass: 2.5x the forward's (five products per score instead of two).
  return kind == WorkKind::kBackward ? kBackwardWorkFactor * forward : forward;
}

}  // namespace attention::server
