// How jobs of one kernel configuration become one variable-length launch: the batcher adds jobs
// to a Batch (AddJob), checks what a job would add (BatchBytesWith), and seals it (SealBatch),
// which makes the batch's Plan (server/plan.h) that the executors run.
//
// Packed layout: every job, dense or packed, contributes spec.batch sequences. Its q rows are
// already contiguous [total_q, q_heads, head_dim] in the request (a dense [batch, seqlen, ...]
// tensor is the same bytes as [batch * seqlen, ...]), so the batch's q is the concatenation of
// the jobs' q bytes, likewise k, v and o. Only lse changes layout: the batch's is
// [q_heads, total_q]; a dense job's is [batch, q_heads, seqlen_q] (the plan's output copies
// rearrange it).
#ifndef ATTENTION_SERVER_PACKING_H_
#define ATTENTION_SERVER_PACKING_H_

#include <cstdint>
#include <memory>

#include "kernels/kernel_config.h"
#include "server/executor.h"
#include "server/request_spec.h"

namespace attention::server {

// Appends `job` (whose configuration equals batch.config; the first job sets it) to the batch:
// its slice, cu_seqlens, expanded slopes and sinks, totals and flops. A job with a mask must be
// alone in its batch.
void AddJob(Batch& batch, std::unique_ptr<Job> job);

// Bytes the batch's buffers would take (BatchLayout::total_bytes()) if `spec` were added to a
// batch of `sequences` sequences and `total_q` / `total_k` rows (all 0 for an empty batch).
// What the batcher checks against Executor::max_batch_bytes() before adding a job.
int64_t BatchBytesWith(const KernelConfig& config, int sequences, int64_t total_q,
                       int64_t total_k, bool want_lse, const RequestSpec& spec);

// Makes the batch's plan once every job was added.
void SealBatch(Batch& batch);

}  // namespace attention::server

#endif  // ATTENTION_SERVER_PACKING_H_
