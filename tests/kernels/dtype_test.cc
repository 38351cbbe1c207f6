// kernels/dtype.h against definitions that are obviously right: decoding by the binary16 /
// bfloat16 formulas, encoding as "the nearest representable value, ties to the even pattern,
// overflow to infinity", found by binary search over the sorted positive bit patterns.
#include "kernels/dtype.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace attention {
namespace {

double HalfValue(uint16_t h) {
  const int sign = h >> 15, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  double v;
  if (exponent == 0x1f) {
    v = mantissa ? std::numeric_limits<double>::quiet_NaN()
                 : std::numeric_limits<double>::infinity();
  } else if (exponent == 0) {
    v = std::ldexp(mantissa, -24);
  } else {
    v = std::ldexp(1024 + mantissa, exponent - 25);
  }
  return sign ? -v : v;
}

// Nearest encoding of |x| among the positive finite patterns [0, max_finite], ties to even,
// with infinity (pattern max_finite + 1) standing at `inf_value` for rounding purposes.
template <typename ValueFn>
uint16_t NearestPattern(double x, uint16_t max_finite, double inf_value, ValueFn value) {
  const double a = std::abs(x);
  uint16_t lo = 0, hi = max_finite + 1;  // value(lo) <= a < value(hi)
  auto val = [&](uint16_t h) { return h == max_finite + 1 ? inf_value : value(h); };
  if (a >= inf_value) return hi;
  while (hi - lo > 1) {
    const uint16_t mid = static_cast<uint16_t>((lo + hi) / 2);
    if (val(mid) <= a) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  const double dlo = a - val(lo), dhi = val(hi) - a;
  if (dlo < dhi) return lo;
  if (dhi < dlo) return hi;
  return (lo & 1) ? hi : lo;
}

uint16_t ReferenceToHalf(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  return sign | NearestPattern(f, 0x7bff, 65536.0, HalfValue);
}

uint16_t ReferenceToBFloat16(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  return sign | NearestPattern(f, 0x7f7f, std::ldexp(1.0, 128),
                               [](uint16_t h) { return double(BFloat16ToFloat(h)); });
}

TEST(Dtype, HalfToFloatEveryPattern) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const double want = HalfValue(static_cast<uint16_t>(h));
    const float got = HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << h;
    } else {
      ASSERT_EQ(double(got), want) << "pattern " << h;
      ASSERT_EQ(std::signbit(got), (h & 0x8000) != 0) << h;
    }
  }
}

TEST(Dtype, HalfRoundTripEveryPattern) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint16_t back = FloatToHalf(HalfToFloat(static_cast<uint16_t>(h)));
    if (std::isnan(HalfValue(static_cast<uint16_t>(h)))) {
      EXPECT_TRUE(std::isnan(HalfToFloat(back))) << h;
    } else {
      ASSERT_EQ(back, h);
    }
  }
}

TEST(Dtype, BFloat16RoundTripEveryPattern) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = BFloat16ToFloat(static_cast<uint16_t>(h));
    const uint32_t bits = FloatBits(f);
    ASSERT_EQ(bits, h << 16);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(f)))) << h;
    } else {
      ASSERT_EQ(FloatToBFloat16(f), h);
    }
  }
}

// Values around every rounding decision: each half (bfloat16) value, the midpoints between
// neighbours and one float ulp either side, plus random floats of every magnitude.
std::vector<float> Probes() {
  std::vector<float> probes = {0.f,
                               -0.f,
                               65504.f,
                               65519.99f,
                               65520.f,
                               65536.f,
                               1e-8f,
                               2.98e-8f,
                               2.9802322e-8f,
                               5.96e-8f,
                               6.1e-5f,
                               3.4e38f,
                               std::numeric_limits<float>::infinity(),
                               std::numeric_limits<float>::denorm_min(),
                               std::numeric_limits<float>::max()};
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const double a = HalfValue(static_cast<uint16_t>(h));
    const double mid = (a + HalfValue(static_cast<uint16_t>(h + 1))) / 2;
    for (double x : {a, mid}) {
      const float f = static_cast<float>(x);
      probes.insert(probes.end(), {f, std::nextafter(f, 0.f), std::nextafter(f, 1e30f)});
    }
  }
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> bits(0, 0x7f7fffffu);
  for (int i = 0; i < 200000; ++i) probes.push_back(BitsFloat(bits(rng)));
  const size_t n = probes.size();
  for (size_t i = 0; i < n; ++i) probes.push_back(-probes[i]);
  return probes;
}

TEST(Dtype, FloatToHalfRoundsToNearestEven) {
  for (float f : Probes()) {
    ASSERT_EQ(FloatToHalf(f), ReferenceToHalf(f)) << "f = " << f << " bits " << FloatBits(f);
  }
  EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(std::numeric_limits<float>::quiet_NaN()))));
}

TEST(Dtype, FloatToBFloat16RoundsToNearestEven) {
  std::vector<float> probes = Probes();
  for (uint32_t h = 0; h < 0x7f80; h += 3) {  // bfloat16 midpoints: bit 15 set, lower bits 0
    const float mid = BitsFloat((h << 16) | 0x8000u);
    probes.insert(probes.end(), {mid, std::nextafter(mid, 0.f), std::nextafter(mid, 1e38f)});
  }
  for (float f : probes) {
    ASSERT_EQ(FloatToBFloat16(f), ReferenceToBFloat16(f))
        << "f = " << f << " bits " << FloatBits(f);
  }
  const uint16_t nan = FloatToBFloat16(BitsFloat(0x7f800001u));  // signalling NaN stays NaN
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(nan)));
}

// OCP E4M3FN by its formula: (1 + m / 8) 2^(e - 7), subnormal m 2^-9, 0x7f / 0xff NaN.
double E4M3Value(uint16_t b) {
  const int sign = b >> 7, exponent = (b >> 3) & 0xf, mantissa = b & 0x7;
  if (exponent == 0xf && mantissa == 0x7) return std::numeric_limits<double>::quiet_NaN();
  const double v =
      exponent == 0 ? std::ldexp(mantissa, -9) : std::ldexp(8 + mantissa, exponent - 10);
  return sign ? -v : v;
}

TEST(Dtype, E4M3ToFloatEveryCode) {
  for (int b = 0; b < 256; ++b) {
    const double want = E4M3Value(static_cast<uint16_t>(b));
    const float got = E4M3ToFloat(static_cast<uint8_t>(b));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << b;
    } else {
      EXPECT_EQ(got, want) << b;
      EXPECT_EQ(FloatToE4M3(got), b) << b;  // every code round-trips, -0 (0x80) included
    }
  }
}

// Nearest code, ties to even, and saturation: 480 (the value past 448 were there one) stands in
// for "too large", and everything from the midpoint 464 up becomes 448 (0x7e).
TEST(Dtype, FloatToE4M3RoundsToNearestEvenAndSaturates) {
  std::vector<float> probes = Probes();
  for (int b = 0; b < 0x7e; ++b) {  // every midpoint and its neighbours
    const float mid = static_cast<float>((E4M3Value(b) + E4M3Value(b + 1)) / 2);
    probes.insert(probes.end(), {mid, std::nextafter(mid, 0.f), std::nextafter(mid, 1e38f)});
  }
  for (float f : probes) {
    if (std::isnan(f)) continue;
    const uint16_t nearest = NearestPattern(f, 0x7e, 480.0, E4M3Value);
    const uint8_t want =
        static_cast<uint8_t>((std::signbit(f) ? 0x80 : 0) | std::min<int>(nearest, 0x7e));
    ASSERT_EQ(FloatToE4M3(f), want) << "f = " << f << " bits " << FloatBits(f);
  }
  EXPECT_EQ(FloatToE4M3(std::numeric_limits<float>::infinity()), 0x7e);
  EXPECT_EQ(FloatToE4M3(-std::numeric_limits<float>::infinity()), 0xfe);
  EXPECT_EQ(FloatToE4M3(std::numeric_limits<float>::quiet_NaN()), 0x7f);
}

}  // namespace
}  // namespace attention
