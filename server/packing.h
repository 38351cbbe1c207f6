// Packing helpers shared by the batcher and every executor: how jobs of one kernel
// configuration become one variable-length launch, how its inputs are staged into one contiguous
// host block, which AttentionParams run it, and how its outputs go back into each response.
//
// Packed layout: every job, dense or packed, contributes spec.batch sequences. Its q rows are
// already contiguous [total_q, q_heads, head_dim] in the request (a dense [batch, seqlen, ...]
// tensor is the same bytes as [batch * seqlen, ...]), so the batch's q is the concatenation of
// the jobs' q bytes, likewise k, v and o. Only lse changes layout: the batch's is
// [q_heads, total_q]; a dense job's is [batch, q_heads, seqlen_q] (ScatterOutputs rearranges).
#ifndef ATTENTION_SERVER_PACKING_H_
#define ATTENTION_SERVER_PACKING_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/attention_params.h"
#include "server/executor.h"
#include "server/request_spec.h"

namespace attention::server {

// The kernel configuration `spec` belongs to.
BucketKey MakeBucketKey(const RequestSpec& spec);

// Appends `job` (whose key equals batch.key; the first job sets it) to the batch: its slice,
// cu_seqlens, expanded slopes, totals and flops. A job with a mask must be alone in its batch.
void AddJob(Batch& batch, std::unique_ptr<Job> job);

// Bytes the batch's buffers would take (BatchLayout::total_bytes()) if `spec` were added to a
// batch of `sequences` sequences and `total_q` / `total_k` rows (all 0 for an empty batch).
// What the batcher checks against Executor::max_batch_bytes() before adding a job.
int64_t BatchBytesWith(const BucketKey& key, int sequences, int64_t total_q, int64_t total_k,
                       bool want_lse, const RequestSpec& spec);

// Computes batch.layout once every job was added.
void SealBatch(Batch& batch);

// One contiguous host copy: `bytes` bytes from `src` to `dst`. Executors split these across
// threads (staging a batch's inputs, scattering its outputs).
struct HostCopy {
  char* dst = nullptr;
  const char* src = nullptr;
  int64_t bytes = 0;
};
// Runs every copy, in order, on the calling thread.
void RunCopies(const std::vector<HostCopy>& copies);

// The copies that stage job `index`'s q, k and v (one per span they lie in) into `inputs`, a host
// buffer of at least layout.input_bytes (e.g. pinned staging), appended to `copies`.
void AppendJobInputCopies(const Batch& batch, size_t index, char* inputs,
                          std::vector<HostCopy>* copies);

// Copies job `index`'s q, k and v bytes from its request to their place in `inputs`. Jobs can be
// staged concurrently.
void StageJobInputs(const Batch& batch, size_t index, char* inputs);
// Copies cu_seqlens, slopes and mask into `inputs`.
void StageMetadata(const Batch& batch, char* inputs);
// Both of the above for every job.
void StageInputs(const Batch& batch, char* inputs);

// The params of the packed launch over the input block at `inputs` and the output block at
// `outputs` (host or device addresses; same layout either way).
AttentionParams MakeBatchParams(const Batch& batch, const void* inputs, void* outputs);

// Writes each job's o (and lse when it asked) into its response from the output block at
// `outputs` (host memory: pinned staging or a plain buffer). One copy per byte of o. The same as
// SizeBatchOutputs followed by every job's AppendJobOutputCopies.
void ScatterOutputs(const Batch& batch, const char* outputs);

// Sets the dtype and shape of every job's o (and lse) and sizes their data, so that the memory
// is allocated and touched before the results exist (an executor does this while the device
// computes, keeping page faults off the path from the device to the caller).
void SizeBatchOutputs(const Batch& batch);
// The copies that move job `index`'s o (and lse, one run per sequence and head) from `outputs`
// into its response, which SizeBatchOutputs has sized; appended to `copies`.
void AppendJobOutputCopies(const Batch& batch, size_t index, const char* outputs,
                           std::vector<HostCopy>* copies);

// For running a single job in place (CPU backend): sets the dtype and shape of the response's o
// (and lse) and sizes their data (spec.q_bytes, spec.lse_bytes); *o and *lse (null unless the
// request asked for lse) point at that data.
void SizeJobOutputs(const Job& job, char** o, float** lse);

// Params that run a single job in place, dense or packed as the request was: q, k, v, mask and
// slopes read straight from the request, o and lse written to `o` and `lse` (as SizeJobOutputs
// gives them). Host memory only; the job's spec.inputs_contiguous() must hold (else stage it).
AttentionParams MakeJobParams(const Job& job, void* o, float* lse);

// For a job whose inputs are not contiguous (spec.inputs_contiguous() false): copies its q, k and
// v into `buffer` (resized to q_bytes + 2 kv_bytes, capacity reused) and points p->q, p->k and
// p->v at them, so that MakeJobParams' params can run in place.
void GatherJobInputs(const Job& job, std::vector<char>* buffer, AttentionParams* p);

}  // namespace attention::server

#endif  // ATTENTION_SERVER_PACKING_H_
