#include "kernels/cuda/flash_fwd_dispatch.h"

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/compiled_head_dims.h"
#include "kernels/cuda/flash_fwd_launch.h"
#include "kernels/cuda/flash_fwd_sm90ws.h"
#include "kernels/cuda/kernel_traits.h"
#include "kernels/cuda/paged_layout_check.h"

// The build defines ATTN_KERNEL_HEAD_DIMS (the compiled buckets, comma-separated, read through
// compiled_head_dims.h), one ATTN_KERNEL_DTYPE_<type> macro per compiled element type
// (kernels/cuda/CMakeLists.txt, options ATTN_KERNEL_HEAD_DIMS and ATTN_KERNEL_DTYPES), and
// ATTN_KERNEL_PAGED when the paged variants are compiled (option ATTN_KERNEL_PAGED).

namespace attention::cuda {
namespace {

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "float32";
    case DType::kFloat16:
      return "float16";
    case DType::kBFloat16:
      return "bfloat16";
    case DType::kFloat8E4M3:
      return "float8_e4m3";
  }
  return "unknown";
}

absl::Status LaunchStatus(cudaError_t err) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("CUDA attention kernel launch failed: ",
                                          cudaGetErrorName(err), ": ", cudaGetErrorString(err)));
}

#ifdef ATTN_KERNEL_SM90
// Whether the current device runs the sm_90a kernels: compute capability 9.0, cached per device
// (the attribute query is a driver call; launches come many times per second).
bool CurrentDeviceIsSm90() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int8_t> known[kMaxDevices];  // 0 unknown, 1 yes, -1 no
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return false;
  int8_t v = known[device].load(std::memory_order_relaxed);
  if (v == 0) {
    int major = 0;
    int minor = 0;
    const bool ok =
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess;
    v = ok && major == 9 && minor == 0 ? 1 : -1;
    known[device].store(v, std::memory_order_relaxed);
  }
  return v == 1;
}

// Which head-dim buckets launches may run on the sm_90a kernel, from ATTN_CUDA_KERNELS (read
// once): "sm80" none, "sm90" every bucket with one (HasSm90Kernel), anything else the buckets
// routed by default (Sm90KernelRoutedByDefault).
enum class Sm90Choice : uint8_t { kNone, kRouted, kAll };

Sm90Choice Sm90ChoiceFromEnvironment() {
  static const Sm90Choice choice = [] {
    const char* env = std::getenv("ATTN_CUDA_KERNELS");
    if (env == nullptr) return Sm90Choice::kRouted;
    const std::string_view value(env);
    if (value == "sm80") return Sm90Choice::kNone;
    if (value == "sm90") return Sm90Choice::kAll;
    return Sm90Choice::kRouted;
  }();
  return choice;
}

// Whether launches of head-dim bucket `bucket` take the sm_90a kernel: the bucket has one, the
// environment's choice includes it, and the device is a compute capability 9.0 one.
bool Sm90KernelUsable(int bucket) {
  if (!HasSm90Kernel(bucket)) return false;
  switch (Sm90ChoiceFromEnvironment()) {
    case Sm90Choice::kNone:
      return false;
    case Sm90Choice::kRouted:
      if (!Sm90KernelRoutedByDefault(bucket)) return false;
      break;
    case Sm90Choice::kAll:
      break;
  }
  return CurrentDeviceIsSm90();
}
#endif  // ATTN_KERNEL_SM90

template <DType kDType, int kHeadDim, FwdVariant kVariant>
cudaError_t RunFamily(const AttentionParams& p, cudaStream_t stream) {
#ifdef ATTN_KERNEL_SM90
  if constexpr (HasSm90Kernel(kHeadDim)) {
    if (Sm90KernelUsable(kHeadDim)) return RunFlashFwdSm90<kDType, kHeadDim, kVariant>(p, stream);
  }
#endif
  return RunFlashFwd<kDType, kHeadDim, kVariant>(p, stream);
}

template <DType kDType, int kHeadDim>
absl::Status DispatchVariant(const AttentionParams& p, cudaStream_t stream) {
  switch (SelectVariant(p)) {
    case FwdVariant::kDense:
      return LaunchStatus(RunFamily<kDType, kHeadDim, FwdVariant::kDense>(p, stream));
    case FwdVariant::kWindow:
      return LaunchStatus(RunFamily<kDType, kHeadDim, FwdVariant::kWindow>(p, stream));
    case FwdVariant::kGeneral:
      return LaunchStatus(RunFamily<kDType, kHeadDim, FwdVariant::kGeneral>(p, stream));
#ifdef ATTN_KERNEL_PAGED
    case FwdVariant::kPaged:
      return LaunchStatus(RunFamily<kDType, kHeadDim, FwdVariant::kPaged>(p, stream));
    case FwdVariant::kPagedGeneral:
      return LaunchStatus(RunFamily<kDType, kHeadDim, FwdVariant::kPagedGeneral>(p, stream));
#else
    case FwdVariant::kPaged:
    case FwdVariant::kPagedGeneral:
      return absl::UnimplementedError(
          "paged K/V has no forward kernel in this build (configured with ATTN_KERNEL_PAGED=OFF)");
#endif
  }
  return absl::InternalError("unknown forward kernel variant");
}

template <DType kDType>
absl::Status DispatchHeadDim(const AttentionParams& p, cudaStream_t stream) {
  return VisitCompiledHeadDim(
      CompiledHeadDimBucket(p.head_dim),
      [&](auto head_dim) { return DispatchVariant<kDType, decltype(head_dim)::value>(p, stream); },
      absl::UnimplementedError(absl::StrCat("head_dim ", p.head_dim,
                                            " has no CUDA kernel in this build (head-dim ",
                                            "buckets compiled: ", CompiledHeadDimBuckets(), ")")));
}

}  // namespace

int CompiledHeadDimBucket(int head_dim) { return SmallestCompiledBucket(head_dim); }

std::string CompiledHeadDimBuckets() { return absl::StrJoin(kCompiledHeadDims, ", "); }

bool DTypeCompiled(DType dtype) {
  switch (dtype) {
    case DType::kBFloat16:
#ifdef ATTN_KERNEL_DTYPE_BF16
      return true;
#else
      return false;
#endif
    case DType::kFloat16:
#ifdef ATTN_KERNEL_DTYPE_FP16
      return true;
#else
      return false;
#endif
    case DType::kFloat32:
    case DType::kFloat8E4M3:
      return false;
  }
  return false;
}

KernelFamily SelectKernelFamily(const AttentionParams& p) {
  if (RoutesToFlashFwdSm90Ws(p)) return KernelFamily::kSm90Ws;
#ifdef ATTN_KERNEL_SM90
  const int bucket = CompiledHeadDimBucket(p.head_dim);
  if (bucket != 0 && Sm90KernelUsable(bucket)) {
    return KernelFamily::kSm90;
  }
#else
  (void)p;
#endif
  return KernelFamily::kSm80;
}

const char* KernelFamilyName(KernelFamily family) {
  switch (family) {
    case KernelFamily::kSm90Ws:
      return "sm90ws (warp-specialized TMA)";
    case KernelFamily::kSm90:
      return "sm90 (wgmma)";
    case KernelFamily::kSm80:
      break;
  }
  return "sm80 (mma.sync)";
}

FwdVariant SelectVariant(const AttentionParams& p) {
  // The fast variants fold a positive softmax scale into exp2 and track the max of raw scores,
  // which is only the max of the logits when the scale is positive.
  const bool general = p.alibi_slopes != nullptr || p.softcap > 0.f ||
                       p.mask_kind != MaskKind::kNone || !(p.softmax_scale > 0.f);
  // Paged K/V, with or without a window, runs the window-capable paged variant: its tile loop
  // costs the same as the dense one's, and key ranges need its lower-bound masking anyway.
  if (p.is_paged()) return general ? FwdVariant::kPagedGeneral : FwdVariant::kPaged;
  if (general) return FwdVariant::kGeneral;
  return p.has_window() ? FwdVariant::kWindow : FwdVariant::kDense;
}

bool PagedKernelsCompiled() {
#ifdef ATTN_KERNEL_PAGED
  return true;
#else
  return false;
#endif
}

absl::Status CheckPagedForward(const AttentionParams& p) {
  if (!p.is_paged()) {
    if (p.seqlens_k != nullptr || p.key_range != nullptr) {
      return absl::InvalidArgumentError(
          "AttentionParams.seqlens_k and key_range must be null without a page_table (the "
          "forward kernel reads them only for paged K/V)");
    }
    return absl::OkStatus();
  }
  if (!PagedKernelsCompiled()) {
    return absl::UnimplementedError(
        "CUDA attention kernel: paged K/V has no forward kernel in this build "
        "(configured with ATTN_KERNEL_PAGED=OFF)");
  }
  if (p.dtype == DType::kFloat32) {
    return absl::UnimplementedError(
        "CUDA attention kernel: paged K/V needs float16 or bfloat16 pages (the float32 path "
        "converts contiguous k and v only)");
  }
  return CheckPagedLayout(p);
}

absl::Status DispatchFlashFwd(const AttentionParams& p, cudaStream_t stream) {
  if (RoutesToFlashFwdSm90Ws(p)) return RunFlashFwdSm90Ws(p, stream);
  return DispatchFlashFwdWithoutSm90Ws(p, stream);
}

absl::Status DispatchFlashFwdWithoutSm90Ws(const AttentionParams& p, cudaStream_t stream) {
  switch (p.dtype) {
#ifdef ATTN_KERNEL_DTYPE_BF16
    case DType::kBFloat16:
      return DispatchHeadDim<DType::kBFloat16>(p, stream);
#endif
#ifdef ATTN_KERNEL_DTYPE_FP16
    case DType::kFloat16:
      return DispatchHeadDim<DType::kFloat16>(p, stream);
#endif
    default:
      return absl::UnimplementedError(
          absl::StrCat("dtype ", DTypeName(p.dtype), " has no CUDA kernel in this build"));
  }
}

}  // namespace attention::cuda
