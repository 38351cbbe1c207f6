#include "kernels/cuda/attention_cuda.h"

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/attention.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/block_info.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/flash_bwd_dispatch.h"
#include "kernels/cuda/flash_bwd_fp32.h"
#include "kernels/cuda/flash_decode.h"
#include "kernels/cuda/flash_fwd_dispatch.h"
#include "kernels/cuda/flash_fwd_fp32.h"
#include "kernels/cuda/flash_fwd_fp8.h"
#include "kernels/cuda/kernel_traits.h"

namespace attention::cuda {
namespace {

// The kernels RunAttention and RunAttentionBackward route to, each a switch so that one can be
// put in or out of service alone. They were written without a GPU; each is routed once its
// correctness check on a GPU passed (against float64, poisoned outputs, ragged tails: H100,
// 2026-12-06, bench/results/gpu_checks_2026-12-06.md):
// - the split-KV decode kernel (flash_decode.h: stateless decode shapes; off, the forward kernel);
// - paged K/V and sinks (the decode kernel and the forward kernels' kPaged* variants and sink
//   epilogue: sessions' Attend and attention sinks; off, UNIMPLEMENTED naming them, and a GPU
//   server refuses CreateSession);
// - the backward kernels (flash_bwd_kernel.cuh: AttentionBackward; off, UNIMPLEMENTED);
// - the float32 kernel (flash_fwd_fp32.h: FLOAT32 at PRECISION_FULL / TF32; off, float32 runs
//   the bfloat16 conversion and reports PRECISION_BF16), routed after its second check (H100,
//   2026-12-06, bench/results/gpu_2026-12-06b.md: PRECISION_FULL within 3.1e-6 x max|o| over
//   the whole float32 suite once each K/V tile's P V got its own accumulator).
// - the float32 backward (flash_bwd_fp32.h: AttentionBackward with FLOAT32 tensors; off,
//   UNIMPLEMENTED: a CPU server answers it), routed after its first GPU check (H100, 2026-12-06,
//   bench/results/gpu_2026-12-06c.md: attention_backward_fp32_test within 2.9e-6 x max|grad| of
//   float64, memcheck and racecheck clean, the GPU server's backward suite passing).
constexpr bool kRouteFloat32Kernel = true;
constexpr bool kRouteFloat32Backward = true;
constexpr bool kRouteDecodeKernel = true;
constexpr bool kRoutePagedKernels = true;
constexpr bool kRouteBackwardKernels = true;

// CUDA grid limit of the y (heads) and z (sequences) dimensions.
constexpr int kMaxGridYZ = 65535;
constexpr int64_t kWorkspaceAlignment = 256;

absl::Status Unsupported(const std::string& what) {
  return absl::UnimplementedError(absl::StrCat("CUDA attention kernel: ", what));
}

int64_t QRows(const AttentionParams& p) {
  return p.is_varlen() ? p.total_q : int64_t{p.batch} * p.seqlen_q;
}

int64_t KRows(const AttentionParams& p) {
  return p.is_varlen() ? p.total_k : int64_t{p.batch} * p.seqlen_k;
}

int64_t AlignUp(int64_t bytes) {
  return (bytes + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment;
}

// Where the bfloat16 copies of a float32 request live inside the workspace.
struct WorkspaceLayout {
  int64_t q = 0, k = 0, v = 0, o = 0, total = 0;
};

WorkspaceLayout LayoutFor(const AttentionParams& p) {
  WorkspaceLayout w;
  const int64_t q_bytes = AlignUp(QRows(p) * p.q_heads * p.head_dim * 2);
  const int64_t kv_bytes = AlignUp(KRows(p) * p.kv_heads * p.head_dim * 2);
  w.q = 0;
  w.k = w.q + q_bytes;
  w.v = w.k + kv_bytes;
  w.o = w.v + kv_bytes;
  w.total = w.o + q_bytes;
  return w;
}

// One float32 tensor of `p` seen as [outer, rows, heads, head_dim].
StridedShape ShapeOf(const AttentionParams& p, bool is_q, int64_t batch_stride, int64_t row_stride,
                     int64_t head_stride) {
  StridedShape s;
  s.outer = p.is_varlen() ? 1 : p.batch;
  s.rows = p.is_varlen() ? (is_q ? p.total_q : p.total_k) : (is_q ? p.seqlen_q : p.seqlen_k);
  s.heads = is_q ? p.q_heads : p.kv_heads;
  s.head_dim = p.head_dim;
  s.outer_stride = p.is_varlen() ? 0 : batch_stride;
  s.row_stride = row_stride;
  s.head_stride = head_stride;
  return s;
}

absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat(what, " failed: ", cudaGetErrorName(err), ": ", cudaGetErrorString(err)));
}

// 16-byte rows for cp.async: 16-bit tensors need 16-byte aligned base pointers and strides
// that are multiples of 8 elements.
absl::Status CheckVectorLayout(const char* name, const void* ptr, int64_t batch_stride,
                               int64_t row_stride, int64_t head_stride) {
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) {
    return Unsupported(absl::StrCat(name, " must be 16-byte aligned"));
  }
  const int64_t strides[] = {batch_stride, row_stride, head_stride};
  const char* names[] = {"_batch_stride", "_row_stride", "_head_stride"};
  for (int i = 0; i < 3; ++i) {
    if (strides[i] % 8 != 0) {
      return Unsupported(absl::StrCat(name, names[i], " ", strides[i],
                                      " must be a multiple of 8 elements (16-byte rows)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status BackwardKernelsRouted() {
  if (kRouteBackwardKernels) return absl::OkStatus();
  return Unsupported(
      "the backward pass (AttentionBackward) is not routed to its CUDA kernels in this build "
      "(they await their first GPU check); a CPU server answers it");
}

absl::Status Float32BackwardRouted() {
  if (kRouteFloat32Backward) return absl::OkStatus();
  return Unsupported(
      "float32 has no backward kernel routed on this backend in this build (the float32 backward "
      "kernel awaits its first GPU check); run float32 backward on a CPU server (--backend=cpu)");
}

namespace {

// What the backward kernels compute, whether or not they are routed (CheckSupported adds the
// switch; CheckBackwardLaunch, which the kernels' own tests reach, does not).
absl::Status CheckBackwardKernels(const KernelConfig& c) {
  if (absl::Status s = CheckConfig(c); !s.ok()) return s;
  if (c.kind != WorkKind::kBackward) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AttentionBackwardParams.kind must be kBackward, got ", static_cast<int>(c.kind)));
  }
  if (c.q_heads > kMaxGridYZ) {
    return Unsupported(absl::StrCat("q_heads ", c.q_heads, " exceeds ", kMaxGridYZ));
  }
  return CheckBackwardSupported(c);
}

}  // namespace

absl::Status PagedKernelsRouted() {
  if (kRoutePagedKernels) return absl::OkStatus();
  return Unsupported(
      "paged K/V (a session's Attend) is not routed to its kernels in this build (they await "
      "their first GPU check)");
}

absl::Status CheckSupported(const KernelConfig& c) {
  if (absl::Status s = CheckConfig(c); !s.ok()) return s;
  // FP8 (E4M3): the FP8 forward kernel alone (flash_fwd_fp8.h), behind its routing switch.
  if (c.dtype == DType::kFloat8E4M3) {
    // The FP8 kernel where it takes the configuration; else (ALiBi, masks, windows other than
    // causal, a head-dim bucket or build without it) the 16-bit kernels on bfloat16 copies of the
    // dequantized inputs (Fp8ByBFloat16). Neither serves backward or paged work.
    const absl::Status fp8 = CheckFp8Config(c);
    if (fp8.ok() || c.kind != WorkKind::kForward) return fp8;
    KernelConfig copies = c;
    copies.dtype = DType::kBFloat16;
    if (absl::Status s = CheckSupported(copies); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("FLOAT8_E4M3 (on bfloat16 copies, as ",
                                                 fp8.message(), "): ", s.message()));
    }
    return absl::OkStatus();
  }
  if (c.kind == WorkKind::kPagedDecode) {
    if (absl::Status routed = PagedKernelsRouted(); !routed.ok()) return routed;
    // Every paged launch can take the decode kernel (up to 16 query rows per sequence);
    // CheckPagedRows says when more rows can run.
    return CheckDecodeSupported(c);
  }
  if (c.kind == WorkKind::kBackward) {
    if (absl::Status routed = BackwardKernelsRouted(); !routed.ok()) return routed;
    if (c.dtype == DType::kFloat32) {
      if (absl::Status routed = Float32BackwardRouted(); !routed.ok()) return routed;
    }
    return CheckBackwardKernels(c);
  }
  if (c.kind != WorkKind::kForward) {
    return Unsupported(
        absl::StrCat("kind ", static_cast<int>(c.kind), " has no kernel in this backend"));
  }
  if (c.head_dim % 8 != 0) {
    return Unsupported(absl::StrCat("head_dim ", c.head_dim, " must be a multiple of 8"));
  }
  if (CompiledHeadDimBucket(c.head_dim) == 0) {
    return Unsupported(absl::StrCat("head_dim ", c.head_dim, " has no kernel in this build (",
                                    "head-dim buckets compiled: ", CompiledHeadDimBuckets(), ")"));
  }
  const DType compute = c.dtype == DType::kFloat32 ? DType::kBFloat16 : c.dtype;
  if (!DTypeCompiled(compute)) {
    return Unsupported(absl::StrCat("dtype ",
                                    c.dtype == DType::kFloat32   ? "float32 (computed in bfloat16)"
                                    : c.dtype == DType::kFloat16 ? "float16"
                                                                 : "bfloat16",
                                    " has no kernel in this build"));
  }
  if (c.q_heads > kMaxGridYZ) {
    return Unsupported(absl::StrCat("q_heads ", c.q_heads, " exceeds ", kMaxGridYZ));
  }
  if (c.sinks && !kRoutePagedKernels) {
    return Unsupported("attention sinks are not routed to their CUDA kernels in this build");
  }
  return absl::OkStatus();
}

absl::Status CheckPagedRows(const KernelConfig& c, int max_rows, int page_size) {
  if (DecodeTakesPagedRows(c.dtype, max_rows)) return absl::OkStatus();
  const bool power_of_two = page_size > 0 && (page_size & (page_size - 1)) == 0;
  if (!power_of_two || page_size < kMinPageSize || page_size > kMaxPageSize) {
    return Unsupported(absl::StrCat(
        max_rows, " query rows: more than ", kDecodeMaxQueryRows,
        " rows per sequence against paged K/V need 16-bit pages of a power-of-two page_size in [",
        kMinPageSize, ", ", kMaxPageSize, "] on this backend (this one: page_size ", page_size,
        "); send at most ", kDecodeMaxQueryRows, " rows per call"));
  }
  return absl::OkStatus();
}

absl::Status CheckLaunch(const AttentionParams& p) {
  if (absl::Status s = CheckSupported(p); !s.ok()) return s;
  if (absl::Status s = CheckParams(p); !s.ok()) return s;
  if (p.is_paged()) {
    if (DecodeTakesPagedRows(p.dtype, p.seqlen_q)) return CheckDecodeParams(p);
    if (absl::Status s = CheckPagedRows(p, p.seqlen_q, p.page_size); !s.ok()) return s;
    if (absl::Status s = CheckPagedForward(p); !s.ok()) return s;
  }
  if (p.batch > kMaxGridYZ) {
    return Unsupported(absl::StrCat("batch ", p.batch, " exceeds ", kMaxGridYZ));
  }
  if (p.dtype != DType::kFloat32) {
    for (absl::Status s :
         {CheckVectorLayout("q", p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride),
          CheckVectorLayout("k", p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride),
          CheckVectorLayout("v", p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride),
          CheckVectorLayout("o", p.o, p.o_batch_stride, p.o_row_stride, p.o_head_stride)}) {
      if (!s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

absl::Status CheckBackwardLaunch(const AttentionBackwardParams& p) {
  if (absl::Status s = CheckBackwardKernels(p); !s.ok()) return s;
  if (absl::Status s = CheckBackwardParams(p); !s.ok()) return s;
  if (p.batch > kMaxGridYZ) {
    return Unsupported(absl::StrCat("batch ", p.batch, " exceeds ", kMaxGridYZ));
  }
  if (p.dtype == DType::kFloat32) return CheckBackwardFp32Layout(p);
  // do_ has o's strides, dq q's, dk k's and dv v's (attention_params.h).
  for (absl::Status s :
       {CheckVectorLayout("q", p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride),
        CheckVectorLayout("k", p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride),
        CheckVectorLayout("v", p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride),
        CheckVectorLayout("o", p.o, p.o_batch_stride, p.o_row_stride, p.o_head_stride),
        CheckVectorLayout("do", p.do_, p.o_batch_stride, p.o_row_stride, p.o_head_stride),
        CheckVectorLayout("dq", p.dq, p.q_batch_stride, p.q_row_stride, p.q_head_stride),
        CheckVectorLayout("dk", p.dk, p.k_batch_stride, p.k_row_stride, p.k_head_stride),
        CheckVectorLayout("dv", p.dv, p.v_batch_stride, p.v_row_stride, p.v_head_stride)}) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

size_t BackwardWorkspaceBytes(const AttentionParams& p) {
  if (p.dtype == DType::kFloat32) return static_cast<size_t>(BackwardFp32WorkspaceBytes(p));
  return static_cast<size_t>(BackwardWorkspaceLayout(p).total);
}

absl::Status RunAttentionBackward(const AttentionBackwardParams& params, void* workspace,
                                  cudaStream_t stream) {
  if (absl::Status s = CheckBackwardLaunch(params); !s.ok()) return s;
  AttentionBackwardParams p = params;
  Normalize(p);
  ClampWindow(p.seqlen_q, p.seqlen_k, p.window_left, p.window_right);
  if (p.batch == 0 || (QRows(p) == 0 && KRows(p) == 0)) return absl::OkStatus();
  if (workspace == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("RunAttentionBackward: needs a workspace of BackwardWorkspaceBytes(p) = ",
                     BackwardWorkspaceBytes(p), " bytes"));
  }
  return DispatchFlashBwd(p, workspace, stream);
}

namespace {

bool RoutesToDecode(const AttentionParams& p) {
  return kRouteDecodeKernel && DecodeExpectedToWin(p);
}

bool TakesDecodeForPages(const AttentionParams& p) {
  return p.is_paged() && DecodeTakesPagedRows(p.dtype, p.seqlen_q);
}

bool RoutesToFloat32Kernel(const KernelConfig& c) {
  return kRouteFloat32Kernel && c.dtype == DType::kFloat32 && c.precision != Precision::kBF16;
}

// FP8 requests the FP8 kernel does not take (CheckFp8Config; CheckSupported accepts them when
// the 16-bit kernels do): q, k, v dequantized into bfloat16 copies in the workspace (e4m3 x
// descale rounded to bfloat16, 2^-9 relative: well inside FLOAT8_E4M3's stated error, which the
// FP8 kernel's e4m3 P sets), then the bfloat16 kernel writes the bfloat16 o in place.
bool Fp8ByBFloat16(const KernelConfig& c) {
  return c.dtype == DType::kFloat8E4M3 && !CheckFp8Config(c).ok();
}

// `p` reading the bfloat16 copies of its q, k and v at `layout` in `workspace` (contiguous rows),
// o and everything else as in `p`.
AttentionParams OnBFloat16Copies(const AttentionParams& p, char* workspace,
                                 const WorkspaceLayout& layout) {
  AttentionParams half = p;
  half.dtype = DType::kBFloat16;
  half.q = workspace + layout.q;
  half.k = workspace + layout.k;
  half.v = workspace + layout.v;
  half.q_descale = half.k_descale = half.v_descale = nullptr;
  const int64_t d = p.head_dim;
  half.q_head_stride = half.k_head_stride = half.v_head_stride = d;
  half.q_row_stride = d * p.q_heads;
  half.k_row_stride = half.v_row_stride = d * p.kv_heads;
  half.q_batch_stride = p.is_varlen() ? 0 : half.q_row_stride * p.seqlen_q;
  half.k_batch_stride = half.v_batch_stride = p.is_varlen() ? 0 : half.k_row_stride * p.seqlen_k;
  return half;
}

absl::Status RunFp8ByBFloat16(const AttentionParams& p, void* workspace, cudaStream_t stream) {
  if (workspace == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "RunAttention: this FLOAT8_E4M3 launch runs on bfloat16 copies and needs a workspace of "
        "WorkspaceBytes(p) = ",
        WorkspaceBytes(p), " bytes"));
  }
  const WorkspaceLayout layout = LayoutFor(p);
  char* ws = static_cast<char*>(workspace);
  // One tensor of q, k, v: its data and strides, its factors, where its copy goes.
  struct Tensor {
    const char* name;
    bool is_q;
    const void* data;
    int64_t batch_stride, row_stride, head_stride;
    const float* factors;
    int64_t factor_batch_stride, factor_head_stride;
    int64_t copy_offset;
  };
  const Tensor tensors[] = {
      {"q", true, p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride, p.q_descale,
       p.q_descale_batch_stride, p.q_descale_head_stride, layout.q},
      {"k", false, p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride, p.k_descale,
       p.k_descale_batch_stride, p.k_descale_head_stride, layout.k},
      {"v", false, p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride, p.v_descale,
       p.v_descale_batch_stride, p.v_descale_head_stride, layout.v},
  };
  for (const Tensor& t : tensors) {
    Fp8Descale descale;
    descale.factors = t.factors;
    descale.batch_stride = t.factor_batch_stride;
    descale.head_stride = t.factor_head_stride;
    descale.cu_seqlens = t.is_q ? p.cu_seqlens_q : p.cu_seqlens_k;
    descale.batch = p.batch;
    const cudaError_t err = ConvertE4m3ToBFloat16(
        t.data, ShapeOf(p, t.is_q, t.batch_stride, t.row_stride, t.head_stride), descale,
        ws + t.copy_offset, stream);
    if (err != cudaSuccess) {
      return CudaStatus(err, absl::StrCat("e4m3 -> bfloat16 dequantization of ", t.name).c_str());
    }
  }
  return DispatchFlashFwd(OnBFloat16Copies(p, ws, layout), stream);
}

}  // namespace

Precision ComputedPrecision(const KernelConfig& config) {
  // The backward always runs at full precision (the float32 backward kernel has no other).
  if (config.dtype != DType::kFloat32 || config.kind == WorkKind::kBackward) {
    return Precision::kFull;
  }
  return RoutesToFloat32Kernel(config) ? config.precision : Precision::kBF16;
}

size_t WorkspaceBytes(const AttentionParams& p) {
  // FP8: V^T (the FP8 kernel reads V K-major); "no workspace" holds for 16-bit inputs.
  if (p.dtype == DType::kFloat8E4M3) {
    // The bfloat16 copies of q, k and v (LayoutFor's o slot is not used: o is written in place).
    return Fp8ByBFloat16(p) ? static_cast<size_t>(LayoutFor(p).o) : Fp8WorkspaceBytes(p);
  }
  if (RoutesToDecode(p) || TakesDecodeForPages(p)) {
    return DecodeWorkspaceBytes(p, DecodeOptions{});
  }
  if (p.dtype != DType::kFloat32 || RoutesToFloat32Kernel(p)) return 0;
  return static_cast<size_t>(LayoutFor(p).total);
}

absl::Status RunAttention(const AttentionParams& params, void* workspace, cudaStream_t stream,
                          const StreamScratch& scratch) {
  if (absl::Status s = CheckLaunch(params); !s.ok()) return s;
  AttentionParams p = params;
  Normalize(p);
  ClampWindow(p.seqlen_q, p.seqlen_k, p.window_left, p.window_right);
  if (p.batch == 0 || p.seqlen_q == 0 || QRows(p) == 0) return absl::OkStatus();
  if (p.dtype == DType::kFloat8E4M3) {
    return Fp8ByBFloat16(p) ? RunFp8ByBFloat16(p, workspace, stream)
                            : RunFlashFwdFp8(p, workspace, stream);
  }
  // Decode shapes (a few query rows per sequence), and every paged launch of at most 16 rows: the
  // split-KV decode kernel (flash_decode.h). More rows against pages: the forward kernel's paged
  // variant.
  if (RoutesToDecode(p) || TakesDecodeForPages(p)) {
    DecodeOptions opt;
    opt.zeroed_counters = scratch.zeroed_counters;
    opt.zeroed_counter_count = scratch.zeroed_counter_count;
    return RunFlashDecode(p, opt, workspace, stream);
  }
  if (p.dtype != DType::kFloat32) return DispatchFlashFwd(p, stream);
  // float32 at precision FULL (split-TF32 products, float32 accuracy) or TF32: the float32 kernel
  // reads q, k, v and writes o directly (flash_fwd_fp32.h).
  if (RoutesToFloat32Kernel(p)) {
    if (absl::Status s = CheckFp32Layout(p); !s.ok()) return s;
    return DispatchFlashFwdFp32(p, stream);
  }

  // float32 by bfloat16 copies (PRECISION_BF16): q, k, v -> bfloat16 workspace, 16-bit kernel
  // into a bfloat16 o, o -> float32.
  if (workspace == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("RunAttention: a float32 request needs a workspace of WorkspaceBytes(p) = ",
                     WorkspaceBytes(p), " bytes"));
  }
  const WorkspaceLayout layout = LayoutFor(p);
  char* ws = static_cast<char*>(workspace);
  const StridedShape q_shape = ShapeOf(p, true, p.q_batch_stride, p.q_row_stride, p.q_head_stride);
  const StridedShape k_shape = ShapeOf(p, false, p.k_batch_stride, p.k_row_stride, p.k_head_stride);
  const StridedShape v_shape = ShapeOf(p, false, p.v_batch_stride, p.v_row_stride, p.v_head_stride);
  const StridedShape o_shape = ShapeOf(p, true, p.o_batch_stride, p.o_row_stride, p.o_head_stride);
  for (absl::Status s : {
           CudaStatus(ConvertFloatToBFloat16(static_cast<const float*>(p.q), q_shape, ws + layout.q,
                                             stream),
                      "float32 -> bfloat16 conversion of q"),
           CudaStatus(ConvertFloatToBFloat16(static_cast<const float*>(p.k), k_shape, ws + layout.k,
                                             stream),
                      "float32 -> bfloat16 conversion of k"),
           CudaStatus(ConvertFloatToBFloat16(static_cast<const float*>(p.v), v_shape, ws + layout.v,
                                             stream),
                      "float32 -> bfloat16 conversion of v"),
       }) {
    if (!s.ok()) return s;
  }
  AttentionParams half = OnBFloat16Copies(p, ws, layout);
  half.o = ws + layout.o;
  half.o_head_stride = half.q_head_stride;
  half.o_row_stride = half.q_row_stride;
  half.o_batch_stride = half.q_batch_stride;
  if (absl::Status s = DispatchFlashFwd(half, stream); !s.ok()) return s;
  return CudaStatus(
      ConvertBFloat16ToFloat(ws + layout.o, o_shape, static_cast<float*>(p.o), stream),
      "bfloat16 -> float32 conversion of o");
}

}  // namespace attention::cuda
