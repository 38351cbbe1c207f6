// Host API of the warp-specialized Hopper forward kernel (flash_fwd_sm90ws_kernel.cuh: TMA
// copies, a producer warpgroup and two consumer warpgroups in ping-pong), the first step of
// issue 23. Routed behind kRouteSm90Ws (on since its GPU check, 2026-12-06) and Sm90WsFasterFor:
// the forward dispatch (flash_fwd_dispatch.cc) asks RoutesToFlashFwdSm90Ws and launches it through
// RunFlashFwdSm90Ws; its test and the benchmark's --ws mode call it here directly.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_FWD_SM90WS_H_
#define ATTENTION_KERNELS_CUDA_FLASH_FWD_SM90WS_H_

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/flash_fwd_sm90ws_launch.h"

namespace attention::cuda {

// Whether the kernel covers `p` (normalized: Normalize and ClampWindow applied) in this build on
// the current device: OK, or UNIMPLEMENTED naming what it lacks (a build without sm_90a or
// without the dtype / head-dim bucket, a device other than compute capability 9.0, paged K/V in
// a build without ATTN_KERNEL_PAGED, seqlens_k or key ranges without a page table, a window
// other than causal, ALiBi, masks, a softmax_scale <= 0) or INVALID_ARGUMENT naming the field
// and the rule the bulk copies need (16-byte aligned q, k, v, o and row / head / batch strides
// that are multiples of 8 elements, head_dim a multiple of 8, packed batches with both
// cu_seqlens and total_q / total_k below 2^31 - 256; paged K/V with CheckPagedForward's rules:
// page_size a power of two in [16, 256], seqlens_k set, cu_seqlens_k null, positive page
// strides). Dense and packed (varlen: per-sequence lengths, Sq != Sk, empty sequences) batches,
// paged K/V (q dense or packed by cu_seqlens_q, contexts of seqlens_k keys, key ranges, pages
// shared between sequences), GQA / MQA, causal (bottom-right), softcap, attention sinks and the
// LSE are covered. Reads no device memory: cu_seqlens and seqlens_k are the caller's to keep
// consistent with seqlen_q / seqlen_k (the longest sequences) and total_q / total_k.
absl::Status CheckFlashFwdSm90Ws(const AttentionParams& p);

// The current device as the Hopper kernels' host code needs it (this kernel's and the FP8
// kernel's, flash_fwd_fp8.cc), read once per device: whether it is compute capability 9.0, its
// SM count and L2 size; all zero when the driver queries fail.
struct Sm90Device {
  bool sm90 = false;
  int sms = 0;
  int64_t l2_bytes = 0;
};
Sm90Device CurrentSm90Device();

// The routing switch: whether the forward dispatch (RunAttention) sends what this kernel covers
// to it instead of the wgmma / mma.sync kernels. On since its GPU checks (H100, 2026-12-06,
// bench/results/gpu_2026-12-06d.md, call 4: its suite with the varlen cases and
// attention_cuda_test routed through it pass, memcheck / racecheck clean, 0.86-1.37x the wgmma
// kernel as packed batches). ATTN_CUDA_KERNELS=sm90ws routes everything it covers to it.
inline constexpr bool kRouteSm90Ws = true;

// The routing switch of paged K/V (sessions' prefill and Attend, issue 21): with it, paged
// launches this kernel covers come here where Sm90WsFasterFor holds (causal launches under 2048
// keys at buckets 64 and 128 and under 1024 at 256 keep the wgmma kernel's paged variant, which
// measured faster there),
// the rest keep the wgmma / mma.sync kernels' paged variants; ATTN_CUDA_KERNELS=sm90ws routes
// every covered launch here. On since device call 2 of 2026-12-06 (H100, 17:13, bundle 52a57f8):
// its paged cases passed against the float64 reference (every page size, forks, key ranges,
// GQA / MQA; memcheck and racecheck clean) and attention_kernel_bench --paged 64 ran it at
// 0.959x the routed dense kernel (geometric mean of the standard grid; old paged variant
// 0.807x).
inline constexpr bool kRouteSm90WsPaged = true;

// Where the switch routes, what it covers goes to this kernel unless the wgmma kernel measured
// faster there (call 4, packed batches, bf16): causal launches of fewer than 2048 keys at
// head-dim bucket 64 (0.86x at 512, 0.93x at 1024) and fewer than 1024 at bucket 256 (0.88x at
// 512, 1.07x at 1024); at bucket 128 it is 1.02x and up everywhere, except paged causal
// launches of fewer than 2048 keys (device call 2 of 2026-12-06, pages of 64: the wgmma kernel's
// paged variant 0.909 / 0.867x the dense kernel at 512 / 1024, this one 0.843 / 0.853x).
bool Sm90WsFasterFor(const AttentionParams& p);

// Whether the forward dispatch runs `p` (normalized, 16-bit dtype) on this kernel: the switch is
// on and Sm90WsFasterFor(p) (or ATTN_CUDA_KERNELS=sm90ws, read once, which skips that test;
// ATTN_CUDA_KERNELS=sm80 and sm90, which pick the other kernels, turn it off), and
// CheckFlashFwdSm90Ws(p) is OK.
bool RoutesToFlashFwdSm90Ws(const AttentionParams& p);

// The schedule of a launch over `batch` sequences of seqlen_q query rows in tiles of `block_m`,
// q_heads query heads sharing kv_heads K / V heads of seqlen_k x head_dim 16-bit elements, on a
// device of `sms` SMs with `l2_bytes` of L2: heads per group such that the group's K and V fit in
// half of L2 (at least 1), grid = min(num_tiles, sms) when persistent, num_tiles otherwise. The
// caller checks that num_tiles fits an int (MakeFwdSm90WsArgs).
// `snake` reverses the odd complete rounds of a persistent grid (FwdSm90WsSchedule::snake);
// `fold` gives a persistent grid slots of two tiles (FwdSm90WsSchedule::fold; then no snake);
// `pair_major` a persistent grid a pair's tiles together (FwdSm90WsSchedule::pair_major; without
// fold, then no snake).
FwdSm90WsSchedule MakeFwdSm90WsSchedule(int batch, int seqlen_q, int seqlen_k, int q_heads,
                                        int kv_heads, int head_dim, int block_m, int sms,
                                        int64_t l2_bytes, bool persistent, bool snake = false,
                                        bool fold = false, bool pair_major = false);

// Fills `args` for tile configuration `config` and `p` (normalized, checked): p, the schedule
// (a persistent grid of one block per SM, or one block per query tile) and the tensor maps of q,
// k and v. INVALID_ARGUMENT when the query tiles exceed the grid, INTERNAL when the driver refuses
// a map (with its error code).
absl::Status MakeFwdSm90WsArgs(const AttentionParams& p, const Sm90WsTileConfig& config,
                               bool persistent, FwdSm90WsArgs& args);

// Enqueues the kernel for `p` (device pointers, 16-bit dtype, fields as RunAttention takes them)
// on `stream` with DefaultSm90WsTileConfig, Sm90WsDensePersistentFor and Sm90WsPairMajorFor (paged:
// PagedSm90WsTileConfig, Sm90WsPersistentFor, the plain order): normalizes a copy of p,
// checks it (CheckFlashFwdSm90Ws), builds the maps and launches. No workspace. INTERNAL with the
// CUDA error string when the launch fails.
absl::Status RunFlashFwdSm90Ws(const AttentionParams& p, cudaStream_t stream);

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_FWD_SM90WS_H_
