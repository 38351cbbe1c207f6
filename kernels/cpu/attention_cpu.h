// Host API of the CPU backend: the same tiled online-softmax algorithm as the CUDA kernel
// (tiles of Q against tiles of K/V, running max and sum, float32 accumulation, no
// seqlen_q x seqlen_k buffer), multi-threaded over (sequence, head, query tile).
#ifndef ATTENTION_KERNELS_CPU_ATTENTION_CPU_H_
#define ATTENTION_KERNELS_CPU_ATTENTION_CPU_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "kernels/attention_params.h"

namespace attention::cpu {

// One CPU backend instance owns its worker threads. Run() is thread-safe: concurrent calls
// share the workers.
class CpuBackend {
 public:
  // num_threads <= 0 means one per hardware thread.
  explicit CpuBackend(int num_threads = 0);
  ~CpuBackend();
  CpuBackend(const CpuBackend&) = delete;
  CpuBackend& operator=(const CpuBackend&) = delete;

  // Computes attention for `p` (host pointers, every dtype and option of the contract) and
  // returns when o (and lse) are written. INVALID_ARGUMENT for params CheckParams rejects.
  absl::Status Run(const AttentionParams& p);

  int num_threads() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace attention::cpu

#endif  // ATTENTION_KERNELS_CPU_ATTENTION_CPU_H_
