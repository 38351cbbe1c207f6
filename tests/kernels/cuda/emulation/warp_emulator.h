// A CPU emulator of one CUDA thread block, enough to run the float32 attention kernel's device
// code (kernels/cuda/flash_fwd_fp32_kernel.cuh) compiled by the host compiler: every thread is a
// fiber (ucontext) on one OS thread, and the operations that exchange data between threads -- the
// block barrier, warp shuffles and votes, ldmatrix and the m16n8k8 TF32 MMA -- are collectives
// that run once all the threads they involve have reached them, as the hardware's do.
//
// What it checks: the kernel's indexing, fragment layouts, masking, online softmax, epilogue and
// the order of its barriers (a thread waiting at a collective the others never reach is reported
// as a deadlock, warp divergence at a collective as an error), cp.async waits (a copy lands at the
// wait that covers it, its destination NaN until then) and, with Schedule::kSerialReversed,
// shared-memory races between warps. What it does not: timing, races both schedules miss
// (compute-sanitizer's racecheck on a GPU covers them) and the tensor cores' exact rounding
// (products exact, sums in double).
//
// Include this before the kernel header, with tests/kernels/cuda/emulation/ ahead of the
// repository root on the include path: it substitutes kernels/cuda/device_utils.cuh and
// kernels/cuda/flash_fwd_fp32_ops.cuh with the emulated instructions.
#ifndef ATTENTION_TESTS_KERNELS_CUDA_EMULATION_WARP_EMULATOR_H_
#define ATTENTION_TESTS_KERNELS_CUDA_EMULATION_WARP_EMULATOR_H_

#include <cuda_runtime_api.h>
#include <ucontext.h>
#include <vector_functions.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

// CUDA C++ that host_defines.h leaves to nvcc.
#define __launch_bounds__(...)

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

inline uint32_t __float_as_uint(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float __uint_as_float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

namespace attention::cuda::emu {

// The shared memory of the block being run (the kernel's `extern __shared__` array is defined by
// the test as this storage).
inline constexpr int kSmemBytes = 228 * 1024;

enum class Op { kNone, kBarrier, kShflXor, kAny, kLdsmX4, kLdsmX4Trans, kMmaTf32, kMma16 };

// Fiber switches: a fiber starts by swapcontext and from then on yields and resumes by
// __builtin_setjmp / __builtin_longjmp, which save three registers and make no system call.
// swapcontext's two signal-mask system calls per switch, with the zero-filled stacks below, made
// one case of backward_kernel_emulation_test take 133 s instead of 0.6 s. Buffers of five words,
// as GCC's builtins require.
using JumpBuffer = void* [5];

struct Thread {
  ucontext_t context;
  char* stack = nullptr;  // kStackBytes from StackPool()
  JumpBuffer resume;      // where the fiber continues once started
  bool started = false;
  bool done = false;
  Op op = Op::kNone;  // the collective this thread waits at, kNone when runnable
  // Arguments and results of the pending collective; pointers into the fiber's own stack, which
  // stays alive while it waits.
  float value = 0.f;
  int lane_mask = 0;
  bool pred = false;
  uint32_t address = 0;
  uint32_t* ldsm_out = nullptr;
  float* mma_d = nullptr;
  uint32_t mma_a[4] = {0, 0, 0, 0};
  uint32_t mma_b[2] = {0, 0};
  bool mma_bf16 = false;  // kMma16: bfloat16 (else float16) operands
  // cp.async copies issued and not yet waited for (device_utils.cuh's emulation), in issue order,
  // each with the number of groups committed before it.
  struct PendingCopy {
    uint32_t smem;
    const void* src;  // null: zero fill
    uint32_t bytes;
    int group;
  };
  std::vector<PendingCopy> copies;
  int groups_committed = 0;
};

struct Block {
  dim3 block_idx, grid_dim;
  int threads = 0;
  unsigned char* smem = nullptr;
  int smem_bytes = kSmemBytes;  // the launch's dynamic shared memory: accesses past it are errors
  std::vector<Thread> thread;
  std::function<void()> body;
  ucontext_t scheduler;
  JumpBuffer scheduler_resume;
  int current = 0;
  std::string error;  // what a fiber threw; RunBlock rethrows it
};

// Fiber stacks, allocated once and reused by every block (uninitialized: zero-filling 512 KiB for
// each of 256 threads of every block dominated the run time).
inline constexpr size_t kStackBytes = 512 * 1024;
inline std::vector<std::unique_ptr<char[]>>& StackPool() {
  static std::vector<std::unique_ptr<char[]>> pool;
  return pool;
}

inline Block*& CurrentBlock() {
  static Block* block = nullptr;
  return block;
}

inline Thread& Self() { return CurrentBlock()->thread[CurrentBlock()->current]; }

// How RunBlock orders the threads between barriers. kLockstep: every runnable thread runs to its
// next collective, then the collectives of every warp complete, and again (warps advance
// together). kSerialReversed: one warp at a time, from the last to the first and each from its
// last lane, runs as far as it can (its collectives completing as soon as its 32 lanes reach
// them) before the next starts. A kernel that reads shared memory another warp writes without a
// barrier between them reads it before it is written in one of the two.
enum class Schedule { kLockstep, kSerialReversed };
inline Schedule& BlockSchedule() {
  static Schedule schedule = Schedule::kLockstep;
  return schedule;
}

// Back to the scheduler's frame in RunThread (never returns). Not in a function that calls
// __builtin_setjmp, as GCC requires.
[[gnu::noinline]] inline void JumpToScheduler(Block& b) {
  __builtin_longjmp(b.scheduler_resume, 1);
}
[[gnu::noinline]] inline void JumpToFiber(Thread& t) { __builtin_longjmp(t.resume, 1); }

// Parks the calling thread at collective `op` until the scheduler has run it.
[[gnu::noinline]] inline void Wait(Op op) {
  Thread& self = Self();
  self.op = op;
  if (__builtin_setjmp(self.resume) == 0) JumpToScheduler(*CurrentBlock());
}

// A fiber's body. An exception ends the fiber and is rethrown by RunBlock; the fiber jumps back to
// the scheduler instead of returning (its ucontext link is stale once switches use jumps).
inline void ThreadMain() {
  Block& b = *CurrentBlock();
  try {
    b.body();
  } catch (const std::exception& e) {
    if (b.error.empty()) b.error = e.what();
  }
  b.thread[b.current].done = true;
  JumpToScheduler(b);
}

// Runs thread i of `b` until it waits at a collective or ends.
[[gnu::noinline]] inline void RunThread(Block& b, int i) {
  Thread& t = b.thread[i];
  b.current = i;
  if (__builtin_setjmp(b.scheduler_resume) == 0) {
    if (t.started) JumpToFiber(t);
    t.started = true;
    swapcontext(&b.scheduler, &t.context);
  }
}

inline float TruncateToTf32(uint32_t bits) { return __uint_as_float(bits & 0xffffe000u); }

// An MMA's float32 result as the tensor cores round it: toward zero, not to nearest (NVIDIA's
// tensor cores truncate when they normalize the sum; measured on V100 to H100 by Fasi et al.,
// "Numerical behavior of NVIDIA tensor cores", 2021, and later work). Each MMA that adds into a
// running accumulator thus loses up to an ulp of it, always toward zero: over a long chain of
// MMAs into one accumulator this bias grows linearly, which is what a kernel must keep short.
inline float RoundMmaResult(double sum) {
  float f = static_cast<float>(sum);
  if (std::isfinite(f) && std::abs(static_cast<double>(f)) > std::abs(sum)) {
    f = std::nextafter(f, 0.f);
  }
  return f;
}

// A 16-bit operand (bits in the low half of `bits`) as a float.
inline double Operand16(uint32_t bits, bool bf16) {
  const uint16_t h = static_cast<uint16_t>(bits & 0xffffu);
  if (bf16) return __uint_as_float(uint32_t{h} << 16);
  const uint32_t sign = (h & 0x8000u) ? 1u : 0u;
  const int exponent = (h >> 10) & 0x1f;
  const uint32_t mantissa = h & 0x3ffu;
  double v;
  if (exponent == 0) {
    v = std::ldexp(static_cast<double>(mantissa), -24);
  } else if (exponent == 31) {
    v = mantissa != 0 ? NAN : INFINITY;
  } else {
    v = std::ldexp(static_cast<double>(mantissa | 0x400u), exponent - 25);
  }
  return sign ? -v : v;
}

// Runs collective `op` for the 32 threads of warp `w`, all waiting at it.
inline void RunWarpCollective(Block& b, int w, Op op) {
  Thread* lane = &b.thread[32 * w];
  switch (op) {
    case Op::kShflXor: {
      float v[32];
      for (int l = 0; l < 32; ++l) v[l] = lane[l].value;
      for (int l = 0; l < 32; ++l) lane[l].value = v[l ^ lane[l].lane_mask];
      break;
    }
    case Op::kAny: {
      bool any = false;
      for (int l = 0; l < 32; ++l) any |= lane[l].pred;
      for (int l = 0; l < 32; ++l) lane[l].pred = any;
      break;
    }
    case Op::kLdsmX4: {
      // Matrix i: lanes 8i .. 8i + 7 give its 8 row addresses (16 bytes each); lane l receives
      // the 32-bit word l % 4 of row l / 4 of every matrix.
      for (int l = 0; l < 32; ++l) {
        for (int i = 0; i < 4; ++i) {
          const uint32_t addr = lane[8 * i + l / 4].address + 4 * (l % 4);
          if (addr + 4 > static_cast<uint32_t>(b.smem_bytes) || addr % 4 != 0) {
            throw std::runtime_error("ldmatrix address out of shared memory");
          }
          std::memcpy(&lane[l].ldsm_out[i], b.smem + addr, 4);
        }
      }
      break;
    }
    case Op::kLdsmX4Trans: {
      // As kLdsmX4 with each 8x8 matrix transposed: lane l receives the 16-bit elements
      // (row 2 (l % 4), column l / 4) and (row 2 (l % 4) + 1, column l / 4) of matrix i.
      for (int l = 0; l < 32; ++l) {
        for (int i = 0; i < 4; ++i) {
          uint16_t half[2];
          for (int h = 0; h < 2; ++h) {
            const uint32_t addr = lane[8 * i + 2 * (l % 4) + h].address + 2 * (l / 4);
            if (addr + 2 > static_cast<uint32_t>(b.smem_bytes)) {
              throw std::runtime_error("ldmatrix address out of shared memory");
            }
            std::memcpy(&half[h], b.smem + addr, 2);
          }
          lane[l].ldsm_out[i] = uint32_t{half[0]} | (uint32_t{half[1]} << 16);
        }
      }
      break;
    }
    case Op::kMma16: {
      // m16n8k16 with 16-bit operands: A 16x16 (a0: row g, k 2t, 2t + 1; a1: row g + 8; a2: k + 8;
      // a3: row g + 8, k + 8), B 16x8 (b0: k 2t, 2t + 1, column g; b1: k + 8), C / D as kMmaTf32.
      // Products exact, sums in double, the result rounded as RoundMmaResult says.
      const bool bf16 = lane[0].mma_bf16;
      double a[16][16], bm[16][8], c[16][8];
      for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        for (int h = 0; h < 2; ++h) {
          a[g][2 * t + h] = Operand16(lane[l].mma_a[0] >> (16 * h), bf16);
          a[g + 8][2 * t + h] = Operand16(lane[l].mma_a[1] >> (16 * h), bf16);
          a[g][2 * t + 8 + h] = Operand16(lane[l].mma_a[2] >> (16 * h), bf16);
          a[g + 8][2 * t + 8 + h] = Operand16(lane[l].mma_a[3] >> (16 * h), bf16);
          bm[2 * t + h][g] = Operand16(lane[l].mma_b[0] >> (16 * h), bf16);
          bm[2 * t + 8 + h][g] = Operand16(lane[l].mma_b[1] >> (16 * h), bf16);
        }
        c[g][2 * t] = lane[l].mma_d[0];
        c[g][2 * t + 1] = lane[l].mma_d[1];
        c[g + 8][2 * t] = lane[l].mma_d[2];
        c[g + 8][2 * t + 1] = lane[l].mma_d[3];
      }
      for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        for (int e = 0; e < 4; ++e) {
          const int row = g + 8 * (e / 2);
          const int col = 2 * t + e % 2;
          double sum = c[row][col];
          for (int k = 0; k < 16; ++k) sum += a[row][k] * bm[k][col];
          lane[l].mma_d[e] = RoundMmaResult(sum);
        }
      }
      break;
    }
    case Op::kMmaTf32: {
      // A 16x8 (a0: row g, k t; a1: g + 8, t; a2: g, t + 4; a3: g + 8, t + 4), B 8x8 (b0: k t,
      // column g; b1: k t + 4), C / D 16x8 (d0, d1: row g, columns 2t, 2t + 1; d2, d3: row g + 8).
      // TF32 operands: the 13 low bits of each are ignored, as the tensor cores do.
      double a[16][8], bm[8][8], c[16][8];
      for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        a[g][t] = TruncateToTf32(lane[l].mma_a[0]);
        a[g + 8][t] = TruncateToTf32(lane[l].mma_a[1]);
        a[g][t + 4] = TruncateToTf32(lane[l].mma_a[2]);
        a[g + 8][t + 4] = TruncateToTf32(lane[l].mma_a[3]);
        bm[t][g] = TruncateToTf32(lane[l].mma_b[0]);
        bm[t + 4][g] = TruncateToTf32(lane[l].mma_b[1]);
        c[g][2 * t] = lane[l].mma_d[0];
        c[g][2 * t + 1] = lane[l].mma_d[1];
        c[g + 8][2 * t] = lane[l].mma_d[2];
        c[g + 8][2 * t + 1] = lane[l].mma_d[3];
      }
      for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        for (int e = 0; e < 4; ++e) {
          const int row = g + 8 * (e / 2);
          const int col = 2 * t + e % 2;
          double sum = c[row][col];
          for (int k = 0; k < 8; ++k) sum += a[row][k] * bm[k][col];
          lane[l].mma_d[e] = RoundMmaResult(sum);
        }
      }
      break;
    }
    case Op::kNone:
    case Op::kBarrier:
      break;
  }
  for (int l = 0; l < 32; ++l) lane[l].op = Op::kNone;
}

// Runs `body` as every thread of block `block_idx` of a grid `grid_dim` of `threads`-thread
// blocks (a multiple of 32) over the shared memory `smem`, of which the launch has `smem_bytes`.
// Throws std::runtime_error on a deadlock, a warp that diverges at a collective, or a shared-memory
// access (ldmatrix, cp.async, the emulated loads and stores) past smem_bytes.
inline void RunBlock(dim3 grid_dim, dim3 block_idx, int threads, unsigned char* smem,
                     std::function<void()> body, int smem_bytes = kSmemBytes) {
  Block b;
  b.smem_bytes = smem_bytes;
  b.block_idx = block_idx;
  b.grid_dim = grid_dim;
  b.threads = threads;
  b.smem = smem;
  b.body = std::move(body);
  b.thread.resize(threads);
  CurrentBlock() = &b;
  auto& pool = StackPool();
  while (pool.size() < static_cast<size_t>(threads)) pool.emplace_back(new char[kStackBytes]);
  for (int i = 0; i < threads; ++i) {
    Thread& t = b.thread[i];
    t.stack = pool[i].get();
    getcontext(&t.context);
    t.context.uc_stack.ss_sp = t.stack;
    t.context.uc_stack.ss_size = kStackBytes;
    t.context.uc_link = &b.scheduler;
    makecontext(&t.context, reinterpret_cast<void (*)()>(&ThreadMain), 0);
  }
  const int warps = threads / 32;
  const bool serial = BlockSchedule() == Schedule::kSerialReversed;
  // Runs the runnable threads of warp w to their next collective (barrier included).
  const auto run_warp = [&](int w) {
    bool ran = false;
    for (int n = 0; n < 32; ++n) {
      const int i = 32 * w + (serial ? 31 - n : n);
      if (b.thread[i].done || b.thread[i].op != Op::kNone) continue;
      RunThread(b, i);
      ran = true;
    }
    if (!b.error.empty()) {
      CurrentBlock() = nullptr;
      throw std::runtime_error(b.error);
    }
    return ran;
  };
  // Completes warp w's collective (not a barrier) once its 32 lanes wait at it.
  const auto complete_collective = [&](int w) {
    const Op op = b.thread[32 * w].op;
    if (op == Op::kNone || op == Op::kBarrier) return false;
    bool all = true;
    for (int l = 0; l < 32; ++l) {
      const Thread& t = b.thread[32 * w + l];
      if (t.done || (t.op != Op::kNone && t.op != op)) {
        throw std::runtime_error("warp " + std::to_string(w) + " diverges at a collective");
      }
      all &= t.op == op;
    }
    if (all) RunWarpCollective(b, w, op);
    return all;
  };
  for (;;) {
    bool ran = false, resolved = false;
    if (serial) {
      for (int w = warps - 1; w >= 0; --w) {
        for (;;) {
          const bool warp_ran = run_warp(w);
          const bool warp_resolved = complete_collective(w);
          ran |= warp_ran;
          resolved |= warp_resolved;
          if (!warp_ran && !warp_resolved) break;
        }
      }
    } else {
      for (int w = 0; w < warps; ++w) ran |= run_warp(w);
      for (int w = 0; w < warps; ++w) resolved |= complete_collective(w);
    }
    bool all_done = true, all_at_barrier = true, any_at_barrier = false;
    for (const Thread& t : b.thread) {
      if (t.done) continue;
      all_done = false;
      all_at_barrier &= t.op == Op::kBarrier;
      any_at_barrier |= t.op == Op::kBarrier;
    }
    if (all_done) break;
    if (all_at_barrier && any_at_barrier) {
      for (Thread& t : b.thread) t.op = Op::kNone;
      resolved = true;
    }
    if (!ran && !resolved) {
      CurrentBlock() = nullptr;
      throw std::runtime_error("deadlock: threads wait at collectives that cannot complete");
    }
  }
  CurrentBlock() = nullptr;
}

inline dim3 ThreadIdx() { return dim3(static_cast<unsigned>(CurrentBlock()->current), 1, 1); }
inline dim3 BlockIdx() { return CurrentBlock()->block_idx; }
inline dim3 GridDim() { return CurrentBlock()->grid_dim; }

}  // namespace attention::cuda::emu

#define threadIdx (::attention::cuda::emu::ThreadIdx())
#define blockIdx (::attention::cuda::emu::BlockIdx())
#define gridDim (::attention::cuda::emu::GridDim())

inline void __syncthreads() { ::attention::cuda::emu::Wait(::attention::cuda::emu::Op::kBarrier); }

inline float __shfl_xor_sync(unsigned /*mask*/, float value, int lane_mask) {
  auto& self = ::attention::cuda::emu::Self();
  self.value = value;
  self.lane_mask = lane_mask;
  ::attention::cuda::emu::Wait(::attention::cuda::emu::Op::kShflXor);
  return ::attention::cuda::emu::Self().value;
}

// Fibers run one at a time on one OS thread: a read-modify-write is atomic.
inline float atomicAdd(float* address, float value) {
  const float old = *address;
  *address = old + value;
  return old;
}

// Declared for the forward's shared device code (flash_fwd_common.cuh), which the backward
// kernels include but whose paged and epilogue parts they do not run: a __syncwarp there would
// have to be a collective.
inline int __ffs(int x) { return __builtin_ffs(x); }
inline void __syncwarp() { throw std::runtime_error("__syncwarp is not emulated"); }

#ifndef __grid_constant__
#define __grid_constant__
#endif

inline bool __any_sync(unsigned /*mask*/, bool pred) {
  auto& self = ::attention::cuda::emu::Self();
  self.pred = pred;
  ::attention::cuda::emu::Wait(::attention::cuda::emu::Op::kAny);
  return ::attention::cuda::emu::Self().pred;
}

#endif  // ATTENTION_TESTS_KERNELS_CUDA_EMULATION_WARP_EMULATOR_H_
