#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/compiled_head_dims.h"
#include "kernels/cuda/flash_bwd_dispatch.h"
#include "kernels/cuda/flash_bwd_fp32.h"
#include "kernels/cuda/flash_bwd_launch.h"
#include "kernels/cuda/flash_fwd_dispatch.h"

// Built with ATTN_KERNEL_HEAD_DIMS (kernels/cuda/CMakeLists.txt): the float32 backward is
// compiled for every compiled head-dim bucket, as the float32 forward.

namespace attention::cuda {
namespace {

absl::Status Unsupported(const std::string& what) {
  return absl::UnimplementedError(absl::StrCat("CUDA float32 attention backward kernel: ", what));
}

absl::Status LaunchStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("CUDA float32 attention backward: ", what,
                                          " launch failed: ", cudaGetErrorName(err), ": ",
                                          cudaGetErrorString(err)));
}

absl::Status CheckTensor(const char* name, const void* ptr, int64_t batch_stride,
                         int64_t row_stride, int64_t head_stride) {
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) {
    return Unsupported(absl::StrCat(name, " must be 16-byte aligned"));
  }
  const int64_t strides[] = {batch_stride, row_stride, head_stride};
  const char* names[] = {"_batch_stride", "_row_stride", "_head_stride"};
  for (int i = 0; i < 3; ++i) {
    if (strides[i] % 4 != 0) {
      return Unsupported(absl::StrCat(name, names[i], " ", strides[i],
                                      " must be a multiple of 4 elements (16-byte rows)"));
    }
  }
  return absl::OkStatus();
}

// The layout of the float32 backward's workspace: BackwardWorkspaceLayout's, deterministic (no
// dq_accum), whatever p.deterministic says.
AttentionParams WithoutDqAccum(const AttentionParams& p) {
  AttentionParams q = p;
  q.deterministic = true;
  return q;
}

}  // namespace

absl::Status CheckBackwardFp32Supported(const KernelConfig& c) {
  if (c.head_dim % 4 != 0) {
    return Unsupported(
        absl::StrCat("head_dim ", c.head_dim, " must be a multiple of 4 (16-byte float32 rows)"));
  }
  if (SmallestCompiledBucket(c.head_dim) == 0) {
    return Unsupported(absl::StrCat("head_dim ", c.head_dim, " has no kernel in this build (",
                                    "head-dim buckets compiled: ", CompiledHeadDimBuckets(), ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckBackwardFp32Layout(const AttentionBackwardParams& p) {
  if (p.is_paged() || p.key_range != nullptr) {
    return Unsupported("paged K/V (page_table) and key_range are not supported");
  }
  for (absl::Status s :
       {CheckTensor("q", p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride),
        CheckTensor("k", p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride),
        CheckTensor("v", p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride),
        CheckTensor("o", p.o, p.o_batch_stride, p.o_row_stride, p.o_head_stride),
        CheckTensor("do", p.do_, p.o_batch_stride, p.o_row_stride, p.o_head_stride),
        CheckTensor("dq", p.dq, p.q_batch_stride, p.q_row_stride, p.q_head_stride),
        CheckTensor("dk", p.dk, p.k_batch_stride, p.k_row_stride, p.k_head_stride),
        CheckTensor("dv", p.dv, p.v_batch_stride, p.v_row_stride, p.v_head_stride)}) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

int64_t BackwardFp32WorkspaceBytes(const AttentionParams& p) {
  return BackwardWorkspaceLayout(WithoutDqAccum(p)).total;
}

absl::Status DispatchFlashBwdFp32(const AttentionBackwardParams& params, void* workspace,
                                  cudaStream_t stream) {
  AttentionBackwardParams layout_params = params;
  layout_params.deterministic = true;
  BwdParams p = BindBackwardWorkspace(layout_params, workspace);
  p.deterministic = params.deterministic;
  p.dq_accum = nullptr;
  if (absl::Status s = LaunchStatus(RunBwdFp32Preprocess(p, stream), "preprocess"); !s.ok()) {
    return s;
  }
  return VisitCompiledHeadDim(
      SmallestCompiledBucket(p.head_dim),
      [&](auto head_dim) {
        return LaunchStatus(RunFlashBwdFp32<decltype(head_dim)::value>(p, stream),
                            p.deterministic ? "dK/dV or dQ" : "dK/dV");
      },
      Unsupported(absl::StrCat("head_dim ", p.head_dim, " has no kernel in this build (head-dim ",
                               "buckets compiled: ", CompiledHeadDimBuckets(), ")")));
}

}  // namespace attention::cuda
