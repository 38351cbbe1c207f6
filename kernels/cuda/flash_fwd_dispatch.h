// Host dispatch of the forward kernel: turns the run-time dtype, head_dim and options of an
// AttentionParams into the template arguments of one compiled kernel (flash_fwd_launch.h).
#ifndef ATTENTION_KERNELS_CUDA_FLASH_FWD_DISPATCH_H_
#define ATTENTION_KERNELS_CUDA_FLASH_FWD_DISPATCH_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/kernel_traits.h"

namespace attention::cuda {

// The smallest head-dim bucket compiled into this build that holds `head_dim`, or 0 if none
// does (head_dim above the largest compiled bucket).
int CompiledHeadDimBucket(int head_dim);

// The compiled head-dim buckets, e.g. "32, 64, 96, 128, 160, 192, 224, 256".
std::string CompiledHeadDimBuckets();

// Whether kernels for 16-bit element type `dtype` are compiled into this build.
bool DTypeCompiled(DType dtype);

// The kernel variant `p` needs (see FwdVariant): the paged ones when p.page_table is set.
// Attention sinks (p.sink_logits) run in every variant.
FwdVariant SelectVariant(const AttentionParams& p);

// Whether the paged variants (paged K/V, key ranges) are compiled into this build.
bool PagedKernelsCompiled();

// What the forward kernels need of the paged fields of `p` (attention_params.h), for the host
// API's launch checks: without a page_table, seqlens_k and key_range null; with one, a build that
// has the paged variants (else UNIMPLEMENTED), a 16-bit dtype (UNIMPLEMENTED for float32),
// page_size a power of two in [kMinPageSize, kMaxPageSize], seqlens_k set, cu_seqlens_k null
// (q may be packed by cu_seqlens_q), a positive page_table_stride for more than one sequence
// and positive page strides (k/v_batch_stride). INVALID_ARGUMENT naming the field otherwise.
// Reads no device memory: the page-table entries, seqlens_k (each <= seqlen_k) and key ranges
// are the caller's to keep valid; the kernel clamps a key range to [0, seqlens_k[b]) and reads
// only the page-table entries and pages that hold keys of it.
absl::Status CheckPagedForward(const AttentionParams& p);

// Which of the two forward kernels runs `p`: the mma.sync kernel (sm_80 and later, every head-dim
// bucket) or the Hopper wgmma kernel (compute capability 9.0, buckets 64 / 128 / 192 / 256, builds
// that include sm_90a). Setting the environment variable ATTN_CUDA_KERNELS=sm80 before the first
// launch keeps every launch on the mma.sync kernel (tests and benchmarks compare the two);
// ATTN_CUDA_KERNELS=sm90 also runs the wgmma kernel of buckets 32 / 96 / 160 / 224, which are not
// routed to it by default yet (kernel_traits.h, Sm90KernelRoutedByDefault). kSm90Ws is the
// warp-specialized Hopper kernel (flash_fwd_sm90ws.h), taken for what it covers when
// RoutesToFlashFwdSm90Ws says so (its switch, or ATTN_CUDA_KERNELS=sm90ws).
enum class KernelFamily : uint8_t { kSm80, kSm90, kSm90Ws };
KernelFamily SelectKernelFamily(const AttentionParams& p);
const char* KernelFamilyName(KernelFamily family);

// Enqueues the kernel for `p` (normalized, checked, 16-bit dtype) on `stream`. UNIMPLEMENTED
// naming the value when this build has no kernel for its dtype or head_dim; INTERNAL with the
// CUDA error string when the launch fails.
absl::Status DispatchFlashFwd(const AttentionParams& p, cudaStream_t stream);

// DispatchFlashFwd without the warp-specialized kernel: the mma.sync or wgmma kernel's variant for
// `p` whatever RoutesToFlashFwdSm90Ws says (the paged benchmark times the paged variants beside
// the warp-specialized kernel's).
absl::Status DispatchFlashFwdWithoutSm90Ws(const AttentionParams& p, cudaStream_t stream);

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_FWD_DISPATCH_H_
