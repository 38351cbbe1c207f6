// CheckFinite (server/service.h): a computed answer holding a NaN or an infinity in o, or a NaN or
// +inf in lse, is refused; -inf in lse (a row with no allowed key) is not. Every dtype, every
// position (the vectorized body and the scalar tail), both kinds.
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/service.h"

namespace attention::server {
namespace {

using ::testing::HasSubstr;

// `elements` finite values of `dtype` (1.5 in every element), the one at `poisoned` replaced by
// `bits` (an element's bit pattern) unless `poisoned` is negative.
std::string Output(DType dtype, int elements, int poisoned, uint32_t bits) {
  const int size = static_cast<int>(DTypeSize(dtype));
  std::string o(static_cast<size_t>(elements) * size, '\0');
  const uint32_t finite = dtype == DType::kFloat32   ? 0x3fc00000u
                          : dtype == DType::kFloat16 ? 0x3e00u
                                                     : 0x3fc0u;
  for (int i = 0; i < elements; ++i) {
    const uint32_t value = i == poisoned ? bits : finite;
    std::memcpy(o.data() + static_cast<size_t>(i) * size, &value, size);  // little-endian
  }
  return o;
}

TEST(CheckFiniteTest, RefusesNanAndInfinityInOAtEveryPosition) {
  struct Kind {
    DType dtype;
    uint32_t nan, inf, minus_inf, largest;
  };
  const Kind kinds[] = {
      {DType::kFloat32, 0x7fc00000u, 0x7f800000u, 0xff800000u, 0x7f7fffffu},
      {DType::kFloat16, 0x7e00u, 0x7c00u, 0xfc00u, 0x7bffu},
      {DType::kBFloat16, 0x7fc0u, 0x7f80u, 0xff80u, 0x7f7fu},
  };
  for (const Kind& kind : kinds) {
    // 100 elements: the 64-byte steps and a tail of 2-byte or 4-byte elements.
    for (int position : {0, 1, 7, 31, 32, 63, 64, 95, 99}) {
      for (uint32_t bits : {kind.nan, kind.inf, kind.minus_inf}) {
        Job job;
        job.spec.dtype = kind.dtype;
        job.outputs.o = Output(kind.dtype, 100, position, bits);
        const absl::Status status = CheckFinite(job);
        EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument)
            << "dtype " << static_cast<int>(kind.dtype) << " position " << position << " bits "
            << bits;
        EXPECT_THAT(std::string(status.message()), HasSubstr("o: the result is not finite"));
      }
      // The largest finite value is finite.
      Job job;
      job.spec.dtype = kind.dtype;
      job.outputs.o = Output(kind.dtype, 100, position, kind.largest);
      EXPECT_TRUE(CheckFinite(job).ok()) << "position " << position;
    }
  }
}

TEST(CheckFiniteTest, LseMayHoldMinusInfinityButNotNanOrPlusInfinity) {
  const float inf = std::numeric_limits<float>::infinity();
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), inf}) {
    Job job;
    job.spec.dtype = DType::kFloat16;
    job.outputs.o = Output(DType::kFloat16, 8, -1, 0);
    const float lse[3] = {0.5f, -inf, bad};
    job.outputs.lse.assign(reinterpret_cast<const char*>(lse), sizeof(lse));
    const absl::Status status = CheckFinite(job);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(status.message()), HasSubstr("lse: the result is not finite"));
  }
  Job job;
  job.spec.dtype = DType::kFloat16;
  job.outputs.o = Output(DType::kFloat16, 8, -1, 0);
  const float lse[2] = {0.5f, -inf};
  job.outputs.lse.assign(reinterpret_cast<const char*>(lse), sizeof(lse));
  EXPECT_TRUE(CheckFinite(job).ok());
  // An empty answer (no rows) is finite.
  Job empty;
  EXPECT_TRUE(CheckFinite(empty).ok());
}

}  // namespace
}  // namespace attention::server
