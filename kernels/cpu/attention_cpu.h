// Host API of the CPU backend: the same tiled online-softmax algorithm as the CUDA kernel
// (tiles of Q against tiles of K/V, running max and sum, float32 accumulation, no
// seqlen_q x seqlen_k buffer), multi-threaded over (sequence, head, query tile).
//
// Extra memory per worker thread is O(tile): about 4 * (3 * block_q * head_dim +
// 2 * block_k * head_dim + block_k * block_q) bytes, whatever the sequence lengths.
#ifndef ATTENTION_KERNELS_CPU_ATTENTION_CPU_H_
#define ATTENTION_KERNELS_CPU_ATTENTION_CPU_H_

#include <cstdint>
#include <memory>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "kernels/cpu/attention_backward_cpu.h"

namespace attention::cpu {

// Instruction sets the tile kernel is compiled for. The same source is built once per entry;
// Run() picks the best one the CPU supports (checked at run time), capped by
// CpuBackendOptions::max_isa.
enum class CpuIsa : uint8_t {
  kGeneric,  // 128-bit vectors, baseline flags (SSE2 on x86-64, NEON on Arm64)
  kAvx2,     // AVX2 + FMA + F16C, 256-bit vectors (x86-64 only)
  kAvx512,   // AVX-512 F/BW/DQ/VL + FMA + F16C, 512-bit vectors (x86-64 only)
};

// "generic", "avx2" or "avx512".
const char* CpuIsaName(CpuIsa isa);

// The best instruction set this build and this CPU support.
CpuIsa BestCpuIsa();

// Whether the CPU backend computes `config`: every configuration CheckConfig accepts (every
// dtype, head_dim, option, sinks and paged K/V; float32 at full precision whatever the requested
// Precision, which only bounds the error), of every kind: forward, paged decode, and backward
// (RunBackward; its launches take no paged K/V). FP8 (kFloat8E4M3, forward only) is computed
// from the dequantized values e4m3 x descale at float32 accuracy, o written as bfloat16 (round to
// nearest even). INVALID_ARGUMENT otherwise.
absl::Status CheckSupported(const KernelConfig& config);

// The precision the CPU backend computes `config` at: kFull always (float32 inputs in float32
// with float32 accumulation, whatever reduced precision a request allowed).
inline Precision ComputedPrecision(const KernelConfig&) { return Precision::kFull; }

struct CpuBackendOptions {
  // Worker threads, the calling thread included; <= 0 means one per CPU this process may run on.
  int num_threads = 0;
  // Upper bound on the instruction set (tests and benchmarks use it to compare the variants).
  CpuIsa max_isa = CpuIsa::kAvx512;
  // Query rows and key rows per tile; 0 means the default (see attention_cpu.cc for the
  // measurements behind it): block_q 128, or 64 for a request with few work items, chosen per
  // request. block_q is rounded up to a multiple of 32 (at most 512).
  int block_q = 0;
  int block_k = 0;
  // Copy float32 K/V tiles into contiguous per-thread scratch before the products instead of
  // reading them in place (16-bit inputs are always converted into it). A tuning knob; see
  // attention_cpu.cc for the measurements behind the default.
  bool copy_float32_kv = true;
};

// One CPU backend instance owns its worker threads. Run() is thread-safe: concurrent calls
// share the workers (each caller also works on its own call).
class CpuBackend {
 public:
  // num_threads <= 0 means one per hardware thread.
  explicit CpuBackend(int num_threads = 0);
  explicit CpuBackend(const CpuBackendOptions& options);
  ~CpuBackend();
  CpuBackend(const CpuBackend&) = delete;
  CpuBackend& operator=(const CpuBackend&) = delete;

  // Computes attention for `p` (host pointers, every dtype and option of the contract) and
  // returns when o (and lse) are written. INVALID_ARGUMENT for params CheckParams rejects and,
  // for a packed batch, for cu_seqlens that do not start at 0, decrease, end at total_q /
  // total_k or exceed seqlen_q / seqlen_k.
  absl::Status Run(const AttentionParams& p);

  // The same, with a cooperative stop: every worker asks `should_stop` before each work item it
  // takes (block_q query rows of one sequence and head, against every key they see), and once it
  // returns true no further item starts; the items already running finish, and Run returns
  // CANCELLED with o and lse partly written. A stop therefore frees every thread within one work
  // item: at most block_q x seqlen_k scores of one head. `should_stop` is called concurrently
  // from every thread, once per item, so it must be thread-safe and cheap, and once true stay
  // true.
  absl::Status Run(const AttentionParams& p, absl::FunctionRef<bool()> should_stop);

  // The backward pass (kind kBackward) on this backend's worker threads and instruction set:
  // attention::cpu::AttentionBackward (attention_backward_cpu.h) for `p`, returning when dq, dk
  // and dv are written. The same cooperative stop as Run(): every worker asks `should_stop`
  // before each task (one key tile of one KV head against every query row that sees it, or one
  // query tile of one query head against every key it sees), and once it returns true no
  // further task starts; the call returns CANCELLED with dq, dk and dv partly written.
  // Thread-safe like Run().
  absl::Status RunBackward(const AttentionBackwardParams& p, absl::FunctionRef<bool()> should_stop);

  int num_threads() const;
  // The instruction set Run() uses.
  CpuIsa isa() const;
  // The fixed block_q, or 0 when Run() chooses it per request.
  int block_q() const;
  int block_k() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace attention::cpu

#endif  // ATTENTION_KERNELS_CPU_ATTENTION_CPU_H_
