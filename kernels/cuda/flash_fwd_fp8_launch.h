// Launch layer of the FP8 (E4M3) Hopper forward kernel (flash_fwd_fp8_kernel.cuh), as seen from
// host code: the kernel's argument block, the workspace layout of V^T, the tile table and the
// launch function templates, explicitly instantiated per head-dim bucket in
// instantiations/flash_fwd_fp8_hdim*.cu. Host-compilable and free of absl, so that both the host
// API (flash_fwd_fp8.cc) and the instantiation files include it.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_FWD_FP8_LAUNCH_H_
#define ATTENTION_KERNELS_CUDA_FLASH_FWD_FP8_LAUNCH_H_

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/attention_params.h"
#include "kernels/cuda/flash_fwd_sm90ws_launch.h"

namespace attention::cuda {

// V^T, the workspace the kernel reads V through. FP8 wgmma reads both operands K-major, and the
// K dimension of O += P V is the keys, so a pre-pass (TransposeVFp8) writes V^T: for each KV
// head h, head_dim rows of `cols` bytes,
//   vt[(h * head_dim + dim) * cols + col],
// sequence b's keys from column Fp8VtColumn(b) on. Within every aligned group of 16 keys the
// columns are permuted (Fp8VtKeyAt): P's fragments are built straight from the S accumulators,
// whose lane l holds keys 2 (l % 4), + 1, + 8, + 9 of each 16, where the k32 A fragment expects
// 4 (l % 4) .. + 3; permuting V's keys the same way makes the two agree without moving P.
// The kVtTail columns after a sequence's last key (and the permuted tail of its last group) are
// zeros, so a KV tile that reaches past its sequence reads zeros, never the next sequence's
// values (0 x NaN would spoil a neighbour's output); kVtGap keeps consecutive sequences that
// far apart. Columns are a multiple of 16 (the tensor map's row stride, 16-byte stores).
inline constexpr int kFp8VtTail = 256;  // >= the largest KV tile (kBlockN) minus one
inline constexpr int kFp8VtGap = 288;   // >= kFp8VtTail + 2 x 15 (alignment of the starts)

ATTN_HOST_DEVICE constexpr int64_t RoundUp16(int64_t x) { return (x + 15) / 16 * 16; }

// Workspace column of key 0 of sequence b, whose first key row is k_start (cu_seqlens_k[b], or
// b * seqlen_k for a dense batch): 16-aligned, at least kFp8VtGap past the previous sequence's
// written columns.
ATTN_HOST_DEVICE constexpr int64_t Fp8VtColumn(int b, int64_t k_start) {
  return RoundUp16(k_start) + int64_t{b} * kFp8VtGap;
}

// Columns written for a sequence of len_k keys: its keys and the zero tail.
ATTN_HOST_DEVICE constexpr int64_t Fp8VtWritten(int64_t len_k) {
  return RoundUp16(len_k) + kFp8VtTail;
}

// Columns of the whole workspace for `key_rows` rows of k over `batch` sequences.
ATTN_HOST_DEVICE constexpr int64_t Fp8VtColumns(int64_t key_rows, int batch) {
  return RoundUp16(key_rows) + int64_t{batch} * kFp8VtGap;
}

// The key stored at position `pos` of its sequence's columns: positions 4 t + i of a group of 16
// (t, i in 0..3) hold keys 2 t + (i & 1) + 8 (i >> 1).
ATTN_HOST_DEVICE constexpr int Fp8VtKeyAt(int pos) {
  const int q = pos & 15;
  return (pos & ~15) + 2 * (q >> 2) + (q & 1) + 8 * ((q >> 1) & 1);
}

// Everything one launch reads: the checked, normalized params, the schedule (FwdSm90WsSchedule,
// the warp-specialized kernel's) and the bulk-copy maps: q and k as 4-D {head_dim, heads, rows,
// batch} of bytes in boxes of {min(bucket, 128), 1, tile rows, 1} (one panel of 128-byte rows,
// 128-byte swizzle; 64-byte rows and swizzle at bucket 64), a packed batch as one sequence of
// all rows (as FwdSm90WsArgs); vt as {cols, head_dim, kv_heads, 1} in boxes of
// {min(kBlockN, 128), bucket, 1, 1}. `vt` is the workspace's device address (TransposeVFp8
// writes it before the kernel reads it).
struct FwdFp8Args {
  AttentionParams p;
  FwdSm90WsSchedule sched;
  CUtensorMap q;
  CUtensorMap k;
  CUtensorMap vt;
};

// One tile configuration: query tiles of 64 * consumers rows, KV tiles of block_n keys through
// `stages` shared buffers each for K and V^T, O (bfloat16) staged in a tile of its own.
// fma_exp: of every 4 n8 tiles of S, how many take their exponentials on the FMA pipe
// (Fp8Traits::kFmaExp); tree: the softmax's row max and sum as four partial results
// (Fp8Traits::kTree); sum_mma: the row sums on the tensor cores (Fp8Traits::kSumMma); lazy: the
// running max moves only by more than 2^8 in P (Fp8Traits::kLazy); spec: exponentials against the
// running max before the tile's row max is known (Fp8Traits::kSpec: 1 the max reduced beside
// them, 2 P's bytes checked instead; with lazy and sum_mma);
// no_turns: the consumers issue their products without the ping-pong's turns (kNoTurns);
// lse_f32: with sum_mma, the LSE from float32 sums of the unrounded P (kLseF32).
struct Fp8TileConfig {
  int block_n;
  int stages;
  int consumers;
  int fma_exp = 0;
  bool tree = false;
  bool sum_mma = false;
  bool lazy = false;
  int spec = 0;
  bool no_turns = false;
  bool lse_f32 = false;
};

// Shared memory (1-byte elements): Q 64 * consumers x d, stages x (K + V^T) block_n x d, O
// 2 x 64 * consumers x d.
//  - d = 64: 128 x 128 tiles, 4 stages (8 + 64 + 16 KB). Registers: O 32, S 64 floats.
//  - d = 128: 128 x 128, 4 stages (16 + 128 + 32 = 176 KB, + 4 KB of V^T's rows of ones). O 64,
//    S 64, P 16 registers: the bf16 kernel's 128 x 128 with half the bytes per stage, hence twice
//    the stages. Softmax /m/l/s/x: the row sums of the rounded P on the tensor cores (sum_mma,
//    dividing O), lazy rescaling, speculative exponentials (spec 1) and float32 sums for the LSE.
//    Device call B of session 8 (H200, bf16 and the plain softmax interleaved in one process,
//    cold L2): 1.02 / 1.08 / 1.07x the plain softmax at 1k / 4k / 16k dense, 0.96 / 1.02 / 1.03x
//    causal (bench/cuda/fp8_notes.md).
//  - d = 256: 128 x 64, 2 stages (32 + 64 + 64 = 160 KB): O alone is 128 registers, as in the
//    bf16 kernel's 128 x 64.
constexpr Fp8TileConfig DefaultFp8TileConfig(int head_dim_bucket) {
  if (head_dim_bucket <= 64) return {128, 4, 2};
  if (head_dim_bucket <= 128) return {128, 4, 2, 0, false, true, true, 1, false, true};
  return {64, 2, 2};
}

// Whether a launch runs a persistent grid: as the bf16 kernel (Sm90WsPersistentFor).
constexpr bool Fp8PersistentFor(bool causal, int seqlen_k, int head_dim_bucket) {
  return Sm90WsPersistentFor(causal, seqlen_k, head_dim_bucket);
}

// The head-dim buckets the kernel is compiled for.
constexpr bool HasFp8Kernel(int head_dim_bucket) {
  return head_dim_bucket == 64 || head_dim_bucket == 128 || head_dim_bucket == 256;
}

// Enqueues the kernel on `stream` for `args` (params checked by CheckFlashFwdFp8, maps built by
// the host API for the same configuration), head_dim <= kHeadDim; kCausal iff p.causal.
// Returns the launch's CUDA error.
template <int kHeadDim, bool kCausal, int kBlockN, int kStages, int kConsumers, int kFmaExp = 0,
          bool kTree = false, bool kSumMma = false, bool kLazy = false, int kSpec = 0,
          bool kNoTurns = false, bool kLseF32 = false>
cudaError_t LaunchFlashFwdFp8(const FwdFp8Args& args, cudaStream_t stream);

// The same with DefaultFp8TileConfig(kHeadDim): the one the host API launches.
template <int kHeadDim, bool kCausal>
cudaError_t LaunchFlashFwdFp8Default(const FwdFp8Args& args, cudaStream_t stream);

// What TransposeVFp8 reads and writes: v (e4m3) with p's strides, vt the workspace of
// Fp8VtColumns(rows of k, batch) columns.
struct Fp8TransposeArgs {
  const uint8_t* v;
  int64_t v_batch_stride, v_row_stride, v_head_stride;
  uint8_t* vt;
  int64_t cols;
  int head_dim;
  int kv_heads;
  int batch;
  int seqlen_k;  // dense: every sequence's; packed: the longest
  const int32_t* cu_seqlens_k;
};

// Enqueues the V^T pre-pass (flash_fwd_fp8_transpose.cu). Returns the launch's CUDA error.
cudaError_t LaunchTransposeVFp8(const Fp8TransposeArgs& args, cudaStream_t stream);

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_FWD_FP8_LAUNCH_H_
