// Host-side conversions between float32 and the 16-bit and 8-bit storage types of the contract
// (IEEE binary16, bfloat16, OCP E4M3FN), round-to-nearest-even, NaN and infinity preserved
// (E4M3FN has no infinity: see FloatToE4M3).
// Used by the CPU backend, the tests' reference and the tools; device code uses cuda_fp16.h /
// cuda_bf16.h instead.
#ifndef ATTENTION_KERNELS_DTYPE_H_
#define ATTENTION_KERNELS_DTYPE_H_

#include <cstdint>
#include <cstring>

namespace attention {

inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline float BFloat16ToFloat(uint16_t h) { return BitsFloat(uint32_t{h} << 16); }

// A normal float's magnitude bits `magnitude` as a count of subnormal units of a narrower type,
// rounded to nearest even: the implicit-one mantissa shifted right by `shift` (>= 1; from 32 on
// everything shifts out and the count is 0, the magnitude being below half a unit).
inline uint32_t SubnormalUnits(uint32_t magnitude, uint32_t shift) {
  if (shift >= 32) return 0;
  const uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
  const uint32_t units = mantissa >> shift;
  const uint32_t remainder = mantissa & ((1u << shift) - 1);
  const uint32_t halfway = 1u << (shift - 1);
  return units + (remainder > halfway || (remainder == halfway && (units & 1u)) ? 1 : 0);
}

inline uint16_t FloatToBFloat16(float f) {
  const uint32_t u = FloatBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = uint32_t{h & 0x8000u} << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return BitsFloat(sign | 0x7f800000u | (mantissa << 13));  // inf / NaN
  if (exponent != 0) return BitsFloat(sign | ((exponent + 112) << 23) | (mantissa << 13));
  if (mantissa == 0) return BitsFloat(sign);
  // Subnormal: value = mantissa * 2^-24.
  const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
  return sign ? -magnitude : magnitude;
}

inline uint16_t FloatToHalf(float f) {
  const uint32_t u = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t magnitude = u & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u;  // rounds to or beyond infinity
  if (magnitude < 0x38800000u) {                        // below the smallest normal half
    if (magnitude < 0x33000000u) return sign;           // rounds to zero
    // Subnormal half: shift the implicit-one mantissa into place, round to nearest even.
    const uint32_t exponent = magnitude >> 23;
    return sign | static_cast<uint16_t>(SubnormalUnits(magnitude, 126 - exponent));  // 14..24
  }
  // Normal half: rebias the exponent, round the mantissa to 10 bits (carry may bump exponent).
  const uint32_t rebased = magnitude - 0x38000000u;
  const uint32_t rounding = 0xfffu + ((rebased >> 13) & 1u);
  return sign | static_cast<uint16_t>((rebased + rounding) >> 13);
}

// OCP E4M3FN (kernels/kernel_config.h, DType::kFloat8E4M3): sign, 4 exponent bits (bias 7),
// 3 mantissa bits; exponent 0 is subnormal (mantissa x 2^-9), 0x7f / 0xff are NaN, there is no
// infinity, the largest finite magnitude is 448 (0x7e). Every value is exact in a float.
inline float E4M3ToFloat(uint8_t b) {
  const uint32_t sign = uint32_t{b & 0x80u} << 24;
  const uint32_t exponent = (b >> 3) & 0xfu;
  const uint32_t mantissa = b & 0x7u;
  if (exponent == 0xf && mantissa == 0x7) return BitsFloat(sign | 0x7fc00000u);  // NaN
  if (exponent != 0) return BitsFloat(sign | ((exponent + 120) << 23) | (mantissa << 20));
  // Subnormal (or zero): mantissa x 2^-9.
  const float magnitude = static_cast<float>(mantissa) * 0.001953125f;
  return sign ? -magnitude : magnitude;
}

// The nearest E4M3FN value to `f`, ties to even. NaN gives 0x7f (sign kept); magnitudes that
// round above 448 (from 464 up, infinity included) saturate to +-448, as the conversion of
// scaled data to FP8 usually does (cuda_fp8.h's __NV_SATFINITE).
inline uint8_t FloatToE4M3(float f) {
  const uint32_t u = FloatBits(f);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const uint32_t magnitude = u & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return sign | 0x7fu;   // NaN
  if (magnitude >= 0x43e80000u) return sign | 0x7eu;  // >= 464 (halfway 448..512): saturate
  if (magnitude < 0x3c800000u) {                      // below 2^-6, the smallest normal
    // Subnormal: |f| in units of 2^-9, 0..8 (8 is the smallest normal, 0x08), ties to even. A
    // float of biased exponent e holds mantissa x 2^(e - 150), so units = mantissa >> (141 - e);
    // float subnormals (e = 0) are far below half a unit.
    const uint32_t exponent = magnitude >> 23;
    if (exponent == 0) return sign;
    return sign | static_cast<uint8_t>(SubnormalUnits(magnitude, 141 - exponent));
  }
  // Normal: rebias the exponent (127 -> 7), round the mantissa to 3 bits (a carry may bump the
  // exponent; 0x43e00000 = 448 plus less than half a step stays 0x7e).
  const uint32_t rebased = magnitude - (120u << 23);
  const uint32_t rounding = 0x7ffffu + ((rebased >> 20) & 1u);
  return sign | static_cast<uint8_t>((rebased + rounding) >> 20);
}

}  // namespace attention

#endif  // ATTENTION_KERNELS_DTYPE_H_
