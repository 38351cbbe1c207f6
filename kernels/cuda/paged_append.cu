#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/paged_append.h"

namespace attention::cuda {
namespace {

// Copies one Unit (16 bytes, or one element) of k and of v per thread, over the flattened
// (token, head, unit) index: consecutive threads copy consecutive units of one row, so both the
// reads of the dense new rows and the writes into a page row coalesce. Strides and head_dim are
// counted in Units here. The first pull_units indices of the grid-stride loop copy the pull
// instead (16 bytes each; PagedAppendParams::pull_src).
template <typename Unit>
__global__ void PagedAppendKernel(const Unit* __restrict__ k_new, const Unit* __restrict__ v_new,
                                  int64_t new_row_stride, int64_t new_head_stride,
                                  Unit* __restrict__ k_pool, Unit* __restrict__ v_pool,
                                  int64_t page_stride, int64_t row_stride, int64_t head_stride,
                                  int page_size, const int32_t* __restrict__ slots, int num_tokens,
                                  int kv_heads, int units_per_row,
                                  const uint4* __restrict__ pull_src, uint4* __restrict__ pull_dst,
                                  int64_t pull_units) {
  const int64_t total = pull_units + int64_t{num_tokens} * kv_heads * units_per_row;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    if (i < pull_units) {
      pull_dst[i] = pull_src[i];
      continue;
    }
    const int64_t idx = i - pull_units;
    const int unit = static_cast<int>(idx % units_per_row);
    const int64_t th = idx / units_per_row;
    const int head = static_cast<int>(th % kv_heads);
    const int token = static_cast<int>(th / kv_heads);
    const int32_t slot = slots[token];
    if (slot < 0) continue;
    const int64_t src = token * new_row_stride + head * new_head_stride + unit;
    const int64_t dst = (slot / page_size) * page_stride + (slot % page_size) * row_stride +
                        head * head_stride + unit;
    k_pool[dst] = k_new[src];
    v_pool[dst] = v_new[src];
  }
}

template <typename Unit>
cudaError_t Launch(const PagedAppendParams& p, int elems_per_unit, cudaStream_t stream) {
  const int units_per_row = p.head_dim / elems_per_unit;
  const int64_t pull_units = p.pull_bytes / 16;
  const int64_t total = pull_units + int64_t{p.num_tokens} * p.kv_heads * units_per_row;
  constexpr int kThreads = 256;
  // A grid-stride loop: at most 4096 blocks (enough to fill any current GPU several times).
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 4096);
  PagedAppendKernel<Unit><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<const Unit*>(p.k_new), static_cast<const Unit*>(p.v_new),
      p.new_row_stride / elems_per_unit, p.new_head_stride / elems_per_unit,
      static_cast<Unit*>(p.k_pool), static_cast<Unit*>(p.v_pool),
      p.pool_page_stride / elems_per_unit, p.pool_row_stride / elems_per_unit,
      p.pool_head_stride / elems_per_unit, p.page_size, p.slots, p.num_tokens, p.kv_heads,
      units_per_row, static_cast<const uint4*>(p.pull_src), static_cast<uint4*>(p.pull_dst),
      pull_units);
  return cudaGetLastError();
}

// Whether every pointer and stride is a whole number of 16-byte units.
bool Vectorizable(const PagedAppendParams& p, int64_t elem_bytes) {
  const int64_t per_unit = 16 / elem_bytes;
  for (const void* ptr :
       {p.k_new, p.v_new, static_cast<const void*>(p.k_pool), static_cast<const void*>(p.v_pool)}) {
    if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return false;
  }
  for (int64_t stride : {int64_t{p.head_dim}, p.new_row_stride, p.new_head_stride,
                         p.pool_page_stride, p.pool_row_stride, p.pool_head_stride}) {
    if (stride % per_unit != 0) return false;
  }
  return true;
}

absl::Status Invalid(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("PagedAppendParams.", what));
}

}  // namespace

absl::Status CheckPagedAppend(const PagedAppendParams& p) {
  if (p.dtype != DType::kFloat32 && p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16) {
    return Invalid(absl::StrCat("dtype ", static_cast<int>(p.dtype), " is not a known DType"));
  }
  if (p.num_tokens < 0) return Invalid(absl::StrCat("num_tokens ", p.num_tokens, " must be >= 0"));
  if (p.kv_heads <= 0) return Invalid(absl::StrCat("kv_heads ", p.kv_heads, " must be positive"));
  if (p.head_dim <= 0) return Invalid(absl::StrCat("head_dim ", p.head_dim, " must be positive"));
  if (p.page_size <= 0) return Invalid(absl::StrCat("page_size ", p.page_size, " must be > 0"));
  if (int64_t{p.num_tokens} * p.kv_heads * p.head_dim > INT64_MAX / 16) {
    return Invalid("num_tokens * kv_heads * head_dim is too large");
  }
  if (p.num_tokens > 0 && (p.k_new == nullptr || p.v_new == nullptr || p.k_pool == nullptr ||
                           p.v_pool == nullptr || p.slots == nullptr)) {
    return Invalid("k_new, v_new, k_pool, v_pool and slots must not be null");
  }
  if (p.new_row_stride < 0 || p.new_head_stride < 0 || p.pool_page_stride < 0 ||
      p.pool_row_stride < 0 || p.pool_head_stride < 0) {
    return Invalid("strides must be >= 0");
  }
  if (p.pull_bytes < 0 || p.pull_bytes % 16 != 0) {
    return Invalid(absl::StrCat("pull_bytes ", p.pull_bytes, " must be a multiple of 16, >= 0"));
  }
  if (p.pull_bytes > 0 && (p.pull_src == nullptr || p.pull_dst == nullptr ||
                           reinterpret_cast<uintptr_t>(p.pull_src) % 16 != 0 ||
                           reinterpret_cast<uintptr_t>(p.pull_dst) % 16 != 0)) {
    return Invalid("pull_src and pull_dst must be set and 16-byte aligned when pull_bytes > 0");
  }
  return absl::OkStatus();
}

absl::Status RunPagedAppend(const PagedAppendParams& p, cudaStream_t stream) {
  if (absl::Status s = CheckPagedAppend(p); !s.ok()) return s;
  if (p.num_tokens == 0 && p.pull_bytes == 0) return absl::OkStatus();
  const int64_t elem_bytes = DTypeSize(p.dtype);
  cudaError_t err;
  if (Vectorizable(p, elem_bytes)) {
    err = Launch<uint4>(p, static_cast<int>(16 / elem_bytes), stream);
  } else if (elem_bytes == 4) {
    err = Launch<uint32_t>(p, 1, stream);
  } else {
    err = Launch<uint16_t>(p, 1, stream);
  }
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(
      "paged append kernel launch failed: ", cudaGetErrorName(err), ": ", cudaGetErrorString(err)));
}

}  // namespace attention::cuda
