// Host API of the paged K/V append kernel: writes a batch's new k and v rows into their slots of
// the page pools that the decode kernel (flash_decode.h) reads. Compiled by the host compiler.
#ifndef ATTENTION_KERNELS_CUDA_PAGED_APPEND_H_
#define ATTENTION_KERNELS_CUDA_PAGED_APPEND_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/kernel_config.h"

namespace attention::cuda {

// One append launch. Strides are in elements; head_dim is contiguous.
//   k_new, v_new: [num_tokens, kv_heads, head_dim] (row stride new_row_stride, head stride
//                 new_head_stride, the same for both), device memory, `dtype` elements.
//   k_pool, v_pool: [num_pages, page_size, kv_heads, head_dim] page pools (page stride
//                 pool_page_stride, row stride pool_row_stride, head stride pool_head_stride,
//                 the same for both), as AttentionParams' paged K/V.
//   slots: [num_tokens] int32, device memory: token t goes to page slots[t] / page_size, row
//          slots[t] % page_size; a negative slot skips the token (padding). Slots must be
//          distinct and below num_pages * page_size (the kernel cannot check device data).
struct PagedAppendParams {
  DType dtype = DType::kBFloat16;
  int num_tokens = 0;
  int kv_heads = 0;
  int head_dim = 0;
  const void* k_new = nullptr;
  const void* v_new = nullptr;
  int64_t new_row_stride = 0, new_head_stride = 0;
  void* k_pool = nullptr;
  void* v_pool = nullptr;
  int64_t pool_page_stride = 0, pool_row_stride = 0, pool_head_stride = 0;
  int page_size = 0;
  const int32_t* slots = nullptr;
  // Optional, beside the rows: `pull_bytes` bytes copied by the same launch from `pull_src`, host
  // memory the device reaches (pinned, mapped: unified addressing), to `pull_dst`, device memory.
  // A small batch's whole upload then needs no cudaMemcpyAsync of its own (one host API call
  // less on its path); k_new, v_new and slots may point into that host memory too. Both pointers
  // and pull_bytes are multiples of 16 bytes; the ranges must not overlap anything the rows
  // write.
  const void* pull_src = nullptr;
  void* pull_dst = nullptr;
  int64_t pull_bytes = 0;
};

// OK, or INVALID_ARGUMENT naming the field and the rule.
absl::Status CheckPagedAppend(const PagedAppendParams& p);

// Enqueues the copy on `stream` and returns without waiting: 16-byte copies when every pointer
// and stride allows them, element copies otherwise (the pull is always 16-byte copies, in the same
// launch). Errors: as CheckPagedAppend, INTERNAL for a launch failure.
absl::Status RunPagedAppend(const PagedAppendParams& p, cudaStream_t stream);

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_PAGED_APPEND_H_
