// The CPU backward kernel of attention (issue 22): dq, dk, dv from q, k, v, o, lse and do, the
// exact gradients of the forward that kernels/cpu computes (its AttentionParams contract is the
// definition), for every option of that contract except paged K/V.
//
// Algorithm: FlashAttention-2's backward. Per (sequence, query head) row i:
//   D_i = rowsum(dO_i * O_i)
// and per (query tile, key tile) pair, with P recomputed from the forward's lse (no seqlen_q x
// seqlen_k buffer, no running max):
//   S = options(scale * Q K^T)           (softcap, ALiBi, masks and window as in the forward)
//   P = exp(S - lse)                      (0 where a key is dropped or the row has lse = -inf)
//   dV += P^T dO,  dP = dO V^T,  dS = P * (dP - D) * softcap'(S)
//   dK += scale * dS^T Q,  dQ += scale * dS K
// where softcap'(S) = 1 - tanh^2(scale q.k / softcap) (1 without softcap). A sink logit joins
// lse (the forward's lse already includes it) and has no value vector, so it changes nothing
// else; the sink logit's own gradient is not computed. A mask gets no gradient.
//
// Parallelization, in three passes over one ThreadPool, each output element written by exactly
// one task in a fixed order, so results are bitwise deterministic whatever the thread count:
//   pass 0: one task per (sequence, query head, query tile) computes D of its rows (float64
//     sums, kept as float32: 4 bytes per row and query head, the only allocation sized by the
//     problem);
//   pass 1: one task per (sequence, KV head, key tile) owns its dK and dV rows: it visits every
//     query head of the KV head's group and every query tile that can see the key tile;
//   pass 2: one task per (sequence, query head, query tile) owns its dQ rows: it visits every key
//     tile the query tile can see (recomputing S, P and dP: two more tile products than a
//     single pass, in exchange for no dQ partials and no atomics).
// The five tile products of a pair (S = Q K^T, dP = dO V^T, dV += P^T dO, dK += dS^T Q,
// dQ += dS K) run on the forward's per-instruction-set micro-kernels (tile_kernel.h:
// TileMatMul, register blocks of fused multiply-adds in float32, in a fixed order), and so does
// P and dS, softcap and ALiBi included (TileSoftmaxGrad); a mask takes a scalar path.
// The sums across tiles (dK and dV over query tiles and heads, dQ over key tiles) accumulate in
// float64. Extra memory besides D is per worker thread and O(tile): about
// 4 * (7 * block * head_dim + 2 * block^2) + 16 * block * head_dim bytes (head_dim and the key
// block rounded up to 32; 780 KiB at 64 x 64, head_dim 256). Speed: bench/cpu/backward_cpu.md.
//
// Accuracy (tests/kernels/cpu/attention_backward_cpu_test.cc, against a float64 reference):
// max |error| of each of dq, dk, dv <= 1e-5 x its max |value| for float32, 2e-3 for float16 and
// 1.5e-2 for bfloat16 (largest seen: 1.4e-6, 4.6e-4, 3.5e-3; for 16-bit inputs mostly the
// rounding of o, which D reads, and of the outputs).
#ifndef ATTENTION_KERNELS_CPU_ATTENTION_BACKWARD_CPU_H_
#define ATTENTION_KERNELS_CPU_ATTENTION_BACKWARD_CPU_H_

#include <cstdint>
#include <optional>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "kernels/attention.h"
#include "kernels/attention_params.h"
#include "kernels/cpu/thread_pool.h"

namespace attention::cpu {

enum class CpuIsa : uint8_t;  // attention_cpu.h

// Tile sizes of the backward kernel; 0 means the default (64 x 64).
struct CpuBackwardOptions {
  int block_q = 0;
  int block_k = 0;
  // Upper bound on the instruction set of the tile kernels; unset: the best the CPU has
  // (BestCpuIsa()). Tests use it to check every variant.
  std::optional<CpuIsa> max_isa;
};

// Computes dq, dk and dv for `p` (host pointers) on `pool`'s threads (the caller's included), or
// on the calling thread alone when `pool` is null, and returns when they are written.
// INVALID_ARGUMENT for params CheckBackwardParams rejects and, for a packed batch, for cu_seqlens
// that do not start at 0, decrease, end at total_q / total_k or exceed seqlen_q / seqlen_k;
// RESOURCE_EXHAUSTED when a thread's tile scratch cannot be allocated (outputs then incomplete).
absl::Status AttentionBackward(const AttentionBackwardParams& p, ThreadPool* pool,
                               const CpuBackwardOptions& options = {});

// The same, with a cooperative stop, as CpuBackend::Run's: every thread asks `should_stop`
// before each task it takes (one key tile of one KV head, or one query tile of one query head),
// and once it returns true no further task starts; the tasks already running finish and the
// call returns CANCELLED with dq, dk and dv partly written. `should_stop` is called
// concurrently, so it must be thread-safe and cheap, and once true stay true.
absl::Status AttentionBackward(const AttentionBackwardParams& p, ThreadPool* pool,
                               absl::FunctionRef<bool()> should_stop,
                               const CpuBackwardOptions& options = {});

}  // namespace attention::cpu

#endif  // ATTENTION_KERNELS_CPU_ATTENTION_BACKWARD_CPU_H_
