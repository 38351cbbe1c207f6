// Emulated stand-in for kernels/cuda/device_utils.cuh (warp_emulator.h): the same functions over
// the emulated block's shared memory. cp.async copies land at the wait that covers them.
#ifndef ATTENTION_KERNELS_CUDA_DEVICE_UTILS_CUH_
#define ATTENTION_KERNELS_CUDA_DEVICE_UTILS_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#include "kernels/dtype.h"
#include "warp_emulator.h"

namespace attention::cuda::fwd {

inline unsigned char* EmulatedSmem() { return ::attention::cuda::emu::CurrentBlock()->smem; }

inline void CheckSmem(uint32_t smem_addr, uint32_t bytes) {
  if (smem_addr % bytes != 0 ||
      smem_addr + bytes >
          static_cast<uint32_t>(::attention::cuda::emu::CurrentBlock()->smem_bytes)) {
    throw std::runtime_error("shared-memory access out of range or misaligned");
  }
}

inline uint32_t SmemAddress(const void* ptr) {
  return static_cast<uint32_t>(static_cast<const unsigned char*>(ptr) - EmulatedSmem());
}

// A copy lands at the latest moment the hardware allows: at the cp.async.wait_group that covers
// its group; until then its destination holds NaN bytes, so a read before the wait, or a copy
// issued over data another thread still reads, shows up as NaN.
inline void CpAsync16(uint32_t smem_addr, const void* gmem, bool pred) {
  CheckSmem(smem_addr, 16);
  if (pred && reinterpret_cast<uintptr_t>(gmem) % 16 != 0) {
    throw std::runtime_error("cp.async source not 16-byte aligned");
  }
  auto& self = ::attention::cuda::emu::Self();
  std::memset(EmulatedSmem() + smem_addr, 0xff, 16);
  self.copies.push_back({smem_addr, pred ? gmem : nullptr, 16, self.groups_committed});
}

inline void CpAsyncCommit() { ++::attention::cuda::emu::Self().groups_committed; }

// Lands this thread's copies of every group but the kPending most recent committed ones (copies
// not committed yet belong to no group and stay pending).
template <int kPending>
inline void CpAsyncWait() {
  auto& self = ::attention::cuda::emu::Self();
  const int complete = self.groups_committed - kPending;
  size_t kept = 0;
  for (const auto& c : self.copies) {
    if (c.group < complete) {
      if (c.src != nullptr) {
        std::memcpy(EmulatedSmem() + c.smem, c.src, c.bytes);
      } else {
        std::memset(EmulatedSmem() + c.smem, 0, c.bytes);
      }
    } else {
      self.copies[kept++] = c;
    }
  }
  self.copies.resize(kept);
}

inline void LdsmX4(uint32_t (&r)[4], uint32_t smem_addr) {
  CheckSmem(smem_addr, 16);
  auto& self = ::attention::cuda::emu::Self();
  self.address = smem_addr;
  self.ldsm_out = r;
  ::attention::cuda::emu::Wait(::attention::cuda::emu::Op::kLdsmX4);
}

inline uint4 LoadShared128(uint32_t smem_addr) {
  CheckSmem(smem_addr, 16);
  uint4 v;
  std::memcpy(&v, EmulatedSmem() + smem_addr, 16);
  return v;
}

inline void StoreShared32(uint32_t smem_addr, uint32_t value) {
  CheckSmem(smem_addr, 4);
  std::memcpy(EmulatedSmem() + smem_addr, &value, 4);
}

inline void LdsmX4Trans(uint32_t (&r)[4], uint32_t smem_addr) {
  CheckSmem(smem_addr, 16);
  auto& self = ::attention::cuda::emu::Self();
  self.address = smem_addr;
  self.ldsm_out = r;
  ::attention::cuda::emu::Wait(::attention::cuda::emu::Op::kLdsmX4Trans);
}

// The m16n8k16 MMA of 16-bit operands as a warp collective, and the round-to-nearest-even packing
// of cvt.rn.{bf16x2,f16x2}.f32.
template <typename Element>
struct MmaOps {
  static constexpr bool kBf16 = std::is_same_v<Element, __nv_bfloat16>;
  static void Mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    auto& self = ::attention::cuda::emu::Self();
    for (int i = 0; i < 4; ++i) self.mma_a[i] = a[i];
    self.mma_b[0] = b0;
    self.mma_b[1] = b1;
    self.mma_d = d;
    self.mma_bf16 = kBf16;
    ::attention::cuda::emu::Wait(::attention::cuda::emu::Op::kMma16);
  }
  static uint32_t Pack(float lo, float hi) {
    if constexpr (kBf16) {
      return uint32_t{FloatToBFloat16(lo)} | (uint32_t{FloatToBFloat16(hi)} << 16);
    } else {
      return uint32_t{FloatToHalf(lo)} | (uint32_t{FloatToHalf(hi)} << 16);
    }
  }
};

// ex2.approx.ftz: -inf -> 0.
inline float Exp2(float x) { return std::exp2(x); }

inline float Tanh(float x) { return std::tanh(x); }

}  // namespace attention::cuda::fwd

#endif  // ATTENTION_KERNELS_CUDA_DEVICE_UTILS_CUH_
