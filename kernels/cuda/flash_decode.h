// Host API of the CUDA decode kernel (Flash-Decoding): attention of 1..16 query rows per sequence
// against a long context read through page tables, split along the keys across thread blocks, and
// a second pass that merges the splits' partial O and LSE exactly. Compiled by the host compiler;
// no device code here.
//
// What `p` (AttentionParams) may hold:
//   - q, o: dense [batch, seqlen_q, q_heads, head_dim] or packed [total_q, q_heads, head_dim]
//     with cu_seqlens_q, seqlen_q <= kDecodeMaxQueryRows (16), or any seqlen_q for float32
//     pages (no other kernel reads them; more rows are more query tiles); lse optional.
//   - K / V paged (page_table set): pools [num_pages, page_size, kv_heads, head_dim] with
//     k_batch_stride / v_batch_stride between pages, sequence b's context length seqlens_k[b]
//     (or seqlen_k for all when seqlens_k is null), cu_seqlens_k null.
//   - K / V dense (page_table null): [batch, seqlen_k, kv_heads, head_dim], or packed with
//     cu_seqlens_k (the stateless Attention call's layouts, one page per sequence); seqlens_k
//     then overrides seqlen_k per sequence when set (cu_seqlens_k null).
//   - causal (bottom-right against each sequence's context length), window, softcap, ALiBi,
//     sinks, key_range; dtype bf16 / fp16 (tensor cores) or float32 (float32 FMA, float32
//     accuracy); head_dim any multiple of 8 up to 256 in a compiled head-dim bucket. No mask.
// Every query head of a KV group lives in one block, so each K/V byte is read once per launch.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_DECODE_H_
#define ATTENTION_KERNELS_CUDA_FLASH_DECODE_H_

#include <cuda_runtime_api.h>

#include <cstddef>

#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/decode_heuristics.h"
#include "kernels/kernel_config.h"

namespace attention::cuda {

// How a decode launch splits the keys.
struct DecodeOptions {
  // 0: DecodeSplitHeuristic over the launch and the device. > 0: exactly this many splits of each
  // sequence's visited key span (at most kDecodeMaxSplitsHard; 1 = no combine pass).
  int num_splits = 0;
  // Batch-invariant results: each sequence's keys are cut at fixed multiples of split_tokens
  // (rounded up to whole 64-key tiles), counted from the first key its rows may see, so a
  // sequence's o and lse are bitwise the same whatever else shares the launch (given the same
  // configuration and the same largest query-row count, which picks the block layout), and from
  // run to run. Takes precedence over num_splits.
  bool deterministic = false;
  int split_tokens = kDecodeDefaultSplitTokens;
  // Kernel variant for decode_bench and its tests: an index of kDecodeVariants
  // (decode_heuristics.h); 0 is the production kernel. The others exist only in a build with
  // ATTN_BENCH_DECODE_VARIANTS=ON (DecodeVariantsCompiled) and take bf16 launches of head-dim
  // bucket 128 with at most 16 packed rows per (sequence, KV head) only (else UNIMPLEMENTED).
  int variant = 0;
  // Optional: `zeroed_counter_count` unsigned ints of device memory that are all 0 when the launch
  // starts and that the launch leaves all 0 once it has run (the GPU executor keeps such a block
  // per stream, zeroed once). A split launch takes its tickets there instead of zeroing counters
  // in its workspace with a kernel of its own. Null: it zeroes its own.
  unsigned int* zeroed_counters = nullptr;
  int64_t zeroed_counter_count = 0;
};

// Whether this build has decode_bench's candidate kernels (DecodeOptions::variant > 0): CMake
// option ATTN_BENCH_DECODE_VARIANTS, with bf16 and head-dim bucket 128 compiled.
bool DecodeVariantsCompiled();

// Whether this build has a decode kernel for `config` (kind kForward or kPagedDecode; dtype,
// head_dim, options): OK, or INVALID_ARGUMENT / UNIMPLEMENTED naming the value. Masks are not
// supported (UNIMPLEMENTED).
absl::Status CheckDecodeSupported(const KernelConfig& config);

// Whether the decode kernel takes a paged launch of `rows` query rows per sequence: up to
// kDecodeMaxQueryRows (more run faster on the forward kernel's paged variant), any number for
// float32 pages (no other kernel reads them; more rows are more query tiles).
inline bool DecodeTakesPagedRows(DType dtype, int rows) {
  return rows <= kDecodeMaxQueryRows || dtype == DType::kFloat32;
}

// CheckDecodeSupported plus the launch's own fields (pointers, lengths, strides, alignment).
absl::Status CheckDecodeParams(const AttentionParams& p);

// Whether the stateless Attention call's `p` should take the decode kernel instead of the
// forward kernel: at most kDecodeMaxQueryRows query rows per sequence, no mask, a decode kernel
// compiled for it, 16-byte-aligned 16-bit rows (or float32), and keys at least as many as query
// rows (the forward kernel's 128-row tiles waste 7/8 of their work below 16 rows, and read K/V
// once per query head instead of once per KV group).
bool DecodeExpectedToWin(const AttentionParams& p);

// The number of splits RunFlashDecode uses for `p` on the current device (1 = no combine pass).
int DecodeNumSplits(const AttentionParams& p, const DecodeOptions& opt);

// Bytes of device scratch RunFlashDecode needs for `p` and `opt` on the current device: the
// splits' float32 partial O and LSE; 0 when it does not split.
size_t DecodeWorkspaceBytes(const AttentionParams& p, const DecodeOptions& opt);

// Enqueues the decode kernel (and, when split, the combine kernel) for `p` (device pointers) on
// `stream` and returns without waiting. `workspace` holds at least DecodeWorkspaceBytes(p, opt)
// bytes (may be null when that is 0). Never allocates. Errors: INVALID_ARGUMENT / UNIMPLEMENTED
// as CheckDecodeParams, INTERNAL for a launch failure (with the CUDA error string).
absl::Status RunFlashDecode(const AttentionParams& p, const DecodeOptions& opt, void* workspace,
                            cudaStream_t stream);

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_DECODE_H_
