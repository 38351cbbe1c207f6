#include "server/packing.h"

#include <algorithm>
#include <utility>

#include "server/plan.h"

namespace attention::server {

void AddJob(Batch& batch, std::unique_ptr<Job> job) {
  const RequestSpec& s = job->spec;
  if (batch.jobs.empty()) {
    batch.config = s;
    batch.cu_seqlens_q.assign(1, 0);
    batch.cu_seqlens_k.assign(1, 0);
  }
  batch.slices.push_back(JobSlice{batch.sequences, batch.total_q, batch.total_k});
  for (int b = 0; b < s.batch; ++b) {
    const int64_t len_q = s.seqlen_q_of(b);
    const int64_t len_k = s.seqlen_k_of(b);
    batch.cu_seqlens_q.push_back(static_cast<int32_t>(batch.cu_seqlens_q.back() + len_q));
    batch.cu_seqlens_k.push_back(static_cast<int32_t>(batch.cu_seqlens_k.back() + len_k));
    batch.max_seqlen_q = std::max<int>(batch.max_seqlen_q, static_cast<int>(len_q));
    batch.max_seqlen_k = std::max<int>(batch.max_seqlen_k, static_cast<int>(len_k));
    if (s.alibi) {
      const float* slopes = s.alibi_slopes + b * s.alibi_batch_stride;
      batch.alibi_slopes.insert(batch.alibi_slopes.end(), slopes, slopes + s.q_heads);
    }
    if (s.sinks) {
      batch.sink_logits.insert(batch.sink_logits.end(), s.sink_logits, s.sink_logits + s.q_heads);
    }
    if (s.dtype == DType::kFloat8E4M3) {
      const auto expand = [](const float* factors, int64_t head_stride, int heads,
                             std::vector<float>* out) {
        for (int h = 0; h < heads; ++h) out->push_back(factors ? factors[h * head_stride] : 1.0f);
      };
      expand(s.q_descale, s.q_descale_head_stride, s.q_heads, &batch.q_descale);
      expand(s.k_descale, s.k_descale_head_stride, s.kv_heads, &batch.k_descale);
      expand(s.v_descale, s.v_descale_head_stride, s.kv_heads, &batch.v_descale);
    }
  }
  batch.sequences += s.batch;
  batch.total_q += s.total_q;
  batch.total_k += s.total_k;
  batch.want_lse = batch.want_lse || s.return_lse;
  batch.flops += s.flops();
  batch.jobs.push_back(std::move(job));
}

int64_t BatchBytesWith(const KernelConfig& config, int sequences, int64_t total_q, int64_t total_k,
                       bool want_lse, const RequestSpec& spec) {
  // A paged job's page-table row: its context's pages, counted for every sequence (a bound;
  // the plan pads each row to the longest list).
  int64_t table_entries = 0;
  if (config.kind == WorkKind::kPagedDecode && spec.page_size > 0) {
    table_entries = (int64_t{sequences} + spec.batch) *
                    ((spec.seqlen_k + spec.page_size - 1) / spec.page_size + 1);
  }
  return LayoutFor(config, sequences + spec.batch, total_q + spec.total_q, total_k + spec.total_k,
                   want_lse || spec.return_lse, spec.mask_bytes, table_entries,
                   config.kind == WorkKind::kPagedDecode)
      .total_bytes();
}

void SealBatch(Batch& batch) { MakePlan(batch); }

}  // namespace attention::server
