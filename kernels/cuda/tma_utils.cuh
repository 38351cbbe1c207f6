// Hopper (sm_90) wrappers for the warp-specialized forward kernel (flash_fwd_sm90ws_kernel.cuh):
// transaction-count mbarriers, bulk tensor copies (TMA) that complete on them, named barriers
// between warpgroups and the register reallocation of setmaxnreg; and the bulk async-groups that
// the backward's bulk reductions (flash_bwd_bulk.cuh) share with the forward's bulk stores.
// Device code only.
//
// The mbarrier protocol the kernel builds on (PTX ISA, "mbarrier"): a barrier is initialized
// with an arrival count; a phase completes once that many arrivals have come and every byte a
// producer announced with arrive.expect_tx has landed (the bulk copies' complete_tx). Waiters
// name the parity of the phase they wait for; a freshly initialized barrier treats the phase
// before its first one (parity 1) as complete, which lets a producer wait for "buffer empty"
// with parity 1 before any consumer has released it.
#ifndef ATTENTION_KERNELS_CUDA_TMA_UTILS_CUH_
#define ATTENTION_KERNELS_CUDA_TMA_UTILS_CUH_

#include <cuda.h>

#include <cstdint>

#include "kernels/cuda/wgmma_ops.cuh"

namespace attention::cuda {

// Bulk async-groups (PTX ISA, "bulk async-groups"), for bulk tensor stores (TmaStore4d) and
// reductions (flash_bwd_bulk.cuh's BulkReduceAdd3d) alike: the issuing thread tracks its bulk
// operations in groups. BulkCommit closes the current group; BulkWaitRead<n> waits until at most
// n of the thread's groups still read shared memory (their sources may be written again);
// BulkWait<n> until at most n are unfinished (their writes to global memory done).
__device__ __forceinline__ void BulkCommit() {
#ifdef ATTN_HAVE_WGMMA
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#endif
}
template <int kPending>
__device__ __forceinline__ void BulkWaitRead() {
#ifdef ATTN_HAVE_WGMMA
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(kPending) : "memory");
#endif
}
template <int kPending>
__device__ __forceinline__ void BulkWait() {
#ifdef ATTN_HAVE_WGMMA
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
}

}  // namespace attention::cuda

namespace attention::cuda::fwd {

// Initializes the mbarrier at shared address `bar` (8 bytes, 8-aligned) for `count` arrivals per
// phase. One thread initializes; FenceMbarrierInit and a block barrier publish it.
__device__ __forceinline__ void MbarrierInit(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

// Makes the initializations visible to the async proxy (the bulk copies' complete_tx) as well.
__device__ __forceinline__ void FenceMbarrierInit() {
#ifdef ATTN_HAVE_WGMMA
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

// One arrival that also announces `bytes` of bulk copies the current phase must wait for.
__device__ __forceinline__ void MbarrierArriveExpectTx(uint32_t bar, uint32_t bytes) {
#ifdef ATTN_HAVE_WGMMA
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
#endif
}

// One plain arrival (release semantics: this thread's earlier accesses happen before the phase
// completes for the waiters).
__device__ __forceinline__ void MbarrierArrive(uint32_t bar) {
#ifdef ATTN_HAVE_WGMMA
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#endif
}

// One try_wait: whether the phase of parity `parity` of `bar` has completed (the hardware may
// suspend the thread for a while before answering no).
__device__ __forceinline__ bool MbarrierTryWait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
#ifdef ATTN_HAVE_WGMMA
  asm volatile(
      "{\n.reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
#endif
  return done != 0;
}

// Spins until the phase of parity `parity` of `bar` has completed (acquire semantics: the bytes
// its bulk copies wrote are visible afterwards). No deadlock bound: a __trap after a bounded
// number of tries (to turn a pipeline bug into a launch error) made ptxas spill 150-2000 bytes
// in every configuration, so a hung launch is the caller's timeout to catch.
__device__ __forceinline__ void MbarrierWait(uint32_t bar, uint32_t parity) {
  while (!MbarrierTryWait(bar, parity)) {
  }
}

// Bulk tensor copy of one box of the 4-D tensor `map` (a __grid_constant__ kernel parameter, in
// its own address space) at coordinates {c0, c1, c2, c3} (innermost first) into shared memory at
// `smem_dst`, counted against the transaction bytes of `bar`. The box lands in the layout the map
// was encoded with (here 128-byte rows with the 128-byte swizzle); elements outside the tensor
// are zero-filled and still count as transferred bytes.
__device__ __forceinline__ void TmaLoad4d(uint32_t smem_dst, const CUtensorMap* map, uint32_t bar,
                                          int c0, int c1, int c2, int c3) {
#ifdef ATTN_HAVE_WGMMA
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5, %6}], [%2];\n" ::"r"(smem_dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
#endif
}

// Prefetches the box of `map` at coordinates {c0, c1, c2, c3} (as TmaLoad4d's) from global
// memory into L2, without a destination or an mbarrier: a hint that a later TmaLoad4d of the same
// box will find it there. Boxes past the tensor prefetch nothing.
__device__ __forceinline__ void TmaPrefetch4d(const CUtensorMap* map, int c0, int c1, int c2,
                                              int c3) {
#ifdef ATTN_HAVE_WGMMA
  asm volatile("cp.async.bulk.prefetch.tensor.4d.L2.global.tile [%0, {%1, %2, %3, %4}];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(c0), "r"(c1), "r"(c2), "r"(c3)
               : "memory");
#endif
}

// Bulk tensor store of one box of `map` at coordinates {c0, c1, c2, c3} from shared memory at
// `smem_src` (in the map's layout and swizzle, as TmaLoad4d lands it): elements outside the
// tensor are not written. The issuing thread tracks it as part of its next bulk async-group:
// BulkCommit closes the group, BulkWaitRead<n> waits until at most n of its groups still read
// shared memory (the source may be written again), BulkWait<n> until at most n are unfinished
// (their global writes done). The writers of the source run FenceProxyAsyncShared
// and a barrier over them before the store is issued.
__device__ __forceinline__ void TmaStore4d(const CUtensorMap* map, uint32_t smem_src, int c0,
                                           int c1, int c2, int c3) {
#ifdef ATTN_HAVE_WGMMA
  asm volatile(
      "cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(smem_src), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
#endif
}
// Sixteen zero bytes at shared address `smem_addr` (16-byte aligned), a generic-proxy store: a
// bulk copy's or wgmma's later access needs FenceProxyAsyncShared after it.
__device__ __forceinline__ void StoreSharedZero128(uint32_t smem_addr) {
  asm volatile("st.shared.v4.b32 [%0], {%1, %1, %1, %1};\n" ::"r"(smem_addr), "r"(0) : "memory");
}

// Named barrier `id` (1..15; 0 is __syncthreads) over `threads` threads (a multiple of 32):
// Sync waits for all of them, Arrive counts this warp without waiting.
__device__ __forceinline__ void NamedBarrierSync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void NamedBarrierArrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Register reallocation between warpgroups (sm_90a): every warp of a warpgroup executes the same
// one. Takes effect only when the kernel has a register cap at entry (__launch_bounds__ with a
// minimum of blocks per SM); ptxas warns (C7508) when it cannot honour it.
template <int kRegs>
__device__ __forceinline__ void SetMaxRegistersDecrease() {
  static_assert(kRegs % 8 == 0 && kRegs >= 24 && kRegs <= 256, "setmaxnreg's range");
#ifdef ATTN_HAVE_WGMMA
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
#endif
}
template <int kRegs>
__device__ __forceinline__ void SetMaxRegistersIncrease() {
  static_assert(kRegs % 8 == 0 && kRegs >= 24 && kRegs <= 256, "setmaxnreg's range");
#ifdef ATTN_HAVE_WGMMA
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
#endif
}

}  // namespace attention::cuda::fwd

#endif  // ATTENTION_KERNELS_CUDA_TMA_UTILS_CUH_
