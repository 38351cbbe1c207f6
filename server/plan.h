// Plan: how one sealed batch runs, decided once when the batcher seals it (FlashInfer's
// plan / run split), then run by whichever executor gets the batch. It holds the batch's buffer
// layout, the copies that stage its inputs, the copies that deliver its outputs to each job, and
// the kernel params; an executor only binds them to its own memory:
//
//   CPU:  inputs -> staging ; kernel ; outputs -> each job's outputs
//         (a lone job runs in place instead: the kernel reads its request and writes its outputs)
//   GPU:  inputs -> pinned ; upload ; kernel ; download ; outputs -> each job's outputs
//
// Outputs leave by this one route, into Job::outputs; the service writes the answers from there.
#ifndef ATTENTION_SERVER_PLAN_H_
#define ATTENTION_SERVER_PLAN_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/attention_params.h"

namespace attention::server {

struct Batch;
struct Job;

// Byte offsets of one batch's buffers, every one 256-byte aligned, in two blocks:
//   inputs  = q | k | v | cu_seqlens_q | cu_seqlens_k | alibi slopes | sink logits | mask
//             | page table | seqlens_k | key ranges | q, k, v descales | saved o | grad_o
//             | saved lse
//   outputs = o | lse              (forward and paged work)
//             dq | dk | dv         (kind kBackward)
// so that a GPU executor uploads one block and downloads one block. Absent buffers have size 0:
// a paged batch (kind kPagedDecode) has no k, v, cu_seqlens_k or mask (its K/V are in the
// session pool), a forward batch no page table, seqlens_k or key ranges, and only a backward
// batch has the saved o and lse (the forward's, [total_q, q_heads, head_dim] and float32
// [q_heads, total_q]), grad_o (o's layout), dq (q's), dk and dv (k's); its o and lse are empty.
// Only an FP8 batch (dtype kFloat8E4M3) has the descales (float32 [sequences, q_heads] for q,
// [sequences, kv_heads] for k and v); its o is bfloat16 (OutputDType), the rest of the batch's
// rows e4m3.
struct BatchLayout {
  static constexpr int64_t kAlignment = 256;
  int64_t q = 0, k = 0, v = 0, cu_seqlens_q = 0, cu_seqlens_k = 0, alibi = 0, sinks = 0, mask = 0;
  int64_t page_table = 0, seqlens_k = 0, key_range = 0;
  int64_t q_descale = 0, k_descale = 0, v_descale = 0;
  int64_t saved_o = 0, grad_o = 0, saved_lse = 0;
  int64_t input_bytes = 0;
  int64_t o = 0, lse = 0;
  int64_t dq = 0, dk = 0, dv = 0;
  int64_t output_bytes = 0;
  int64_t total_bytes() const { return input_bytes + output_bytes; }
};

// One contiguous host copy: `bytes` bytes from `src` to `dst`. Executors split lists of these
// across threads.
struct HostCopy {
  char* dst = nullptr;
  const char* src = nullptr;
  int64_t bytes = 0;
};
// Runs every copy, in order, on the calling thread.
void RunCopies(const std::vector<HostCopy>& copies);

// A copy into the input block: `bytes` from `src` (a request's bytes, or the batch's own
// metadata) to offset `dst` of the block.
struct InputCopy {
  int64_t dst = 0;
  const char* src = nullptr;
  int64_t bytes = 0;
};

// Which of a job's outputs (JobOutputs) an output copy writes.
enum class OutputTensor : uint8_t { kO, kLse, kDq, kDk, kDv };

// A copy out of the output block: `bytes` from offset `src` of the block to offset `dst` of job
// `job`'s output `tensor`.
struct OutputCopy {
  int job = 0;
  OutputTensor tensor = OutputTensor::kO;
  int64_t dst = 0;
  int64_t src = 0;
  int64_t bytes = 0;
};

// The head_dim of a batch's buffers and kernel: the request's, rounded up to a multiple of
// kPlanHeadDimMultiple for the stateless kinds (forward, backward). The GPU kernels read rows of
// 16-byte chunks (8 16-bit elements); a padded row carries zeros after the request's elements,
// which add nothing to Q K^T, and the padded columns of o, dq, dk and dv are left out of the
// answer, so every head_dim runs on them with the request's softmax_scale. Paged work keeps the
// session pool's own rows (a backend that cannot read them refuses the session's shape).
// FP8 rows (dtype kFloat8E4M3) take a multiple of 16 instead: a 16-byte chunk is 16 e4m3
// elements, and the FP8 kernel takes head dims that are multiples of 16.
inline constexpr int kPlanHeadDimMultiple = 8;
inline constexpr int kPlanHeadDimMultipleFp8 = 16;
int PlanHeadDim(const KernelConfig& config);

// The layout of a batch of `sequences` sequences and `total_q` / `total_k` rows of `config`;
// `page_table_entries` (paged batches) = sequences x the longest page list.
BatchLayout LayoutFor(const KernelConfig& config, int sequences, int64_t total_q, int64_t total_k,
                      bool want_lse, int64_t mask_bytes, int64_t page_table_entries = 0,
                      bool key_ranges = false);

struct Plan {
  BatchLayout layout;
  // In job order (each job's q, k, v spans), then the metadata; an executor may split them.
  std::vector<InputCopy> inputs;
  // Job j's copies are inputs[first_input[j] .. first_input[j + 1]); the metadata's start at
  // first_input.back().
  std::vector<size_t> first_input;
  // In job order.
  std::vector<OutputCopy> outputs;
  // The packed launch's params; its pointers are set by BindParams.
  AttentionParams params;
};

// Makes batch.plan once every job was added (SealBatch calls it).
void MakePlan(Batch& batch);

// The plan's params over the input block at `inputs` and the output block at `outputs` (host or
// device addresses; the same layout either way). For a backward batch, o and lse point at the
// saved o and lse in the input block (read only).
AttentionParams BindParams(const Plan& plan, const void* inputs, void* outputs);

// A backward batch's other buffers (kind kBackward), over the same blocks as BindParams: grad_o in
// the input block ([total_q, q_heads, head_dim], o's strides), dq, dk and dv in the output block
// (q's, k's and v's strides).
struct BackwardBuffers {
  const void* grad_o = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
};
BackwardBuffers BindBackward(const Plan& plan, const void* inputs, void* outputs);

// The copies that stage the plan's inputs into `inputs` (a host buffer of at least
// layout.input_bytes), appended to `copies`: of every job, or (with `job` >= 0) of that job only,
// or (with `job` == kMetadata) of the batch's metadata only.
inline constexpr int kAllInputs = -1;
inline constexpr int kMetadata = -2;
void AppendInputCopies(const Batch& batch, char* inputs, std::vector<HostCopy>* copies,
                       int job = kAllInputs);

// Sizes every job's outputs (Job::outputs, from the output pool), so that their memory is
// allocated and touched before the results exist: an executor calls it where page faults cost
// least (a GPU executor while the device computes).
void AllocateOutputs(Batch& batch);

// The copies that deliver the outputs from the output block at `outputs` (host) into each job's
// outputs (AllocateOutputs first), appended to `copies`.
void AppendOutputCopies(const Batch& batch, const char* outputs, std::vector<HostCopy>* copies);

// Params that run a batch's lone forward job in place (host memory only): q, k, v, mask, slopes and
// sinks read straight from its request (its q, k and v gathered into `gathered` first when they lie
// in several received pieces), o and lse written straight into its outputs (AllocateOutputs first).
AttentionParams InPlaceParams(Batch& batch, std::vector<char>* gathered);

}  // namespace attention::server

#endif  // ATTENTION_SERVER_PLAN_H_
