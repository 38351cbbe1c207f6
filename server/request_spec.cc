#include "server/request_spec.h"

namespace attention::server {

int64_t RequestSpec::queued_bytes() const {
  const int64_t slopes =
      alibi_slopes == nullptr ? 0 : int64_t{4} * q_heads * (alibi_batch_stride == 0 ? 1 : batch);
  return q_bytes + 2 * kv_bytes + mask_bytes + slopes;
}

double RequestSpec::flops() const {
  double per_head = 0;
  for (int b = 0; b < batch; ++b) {
    per_head += 4.0 * static_cast<double>(seqlen_q_of(b)) * static_cast<double>(seqlen_k_of(b));
  }
  return per_head * head_dim * q_heads * (causal ? 0.5 : 1.0);
}

}  // namespace attention::server
