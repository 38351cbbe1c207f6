// .npy encoding and decoding: round trips for every element type, headers as NumPy writes them,
// and rejection of what the client cannot represent.
#include "attention/client/npy.h"

#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attention::client {
namespace {

using ::testing::HasSubstr;

// A version 1.0 file with the given header dict and data, padded like NumPy pads it.
std::string NpyFile(const std::string& dict, const std::string& data) {
  std::string header = dict;
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string out = "\x93NUMPY\x01";
  out += '\0';
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>(header.size() >> 8);
  return out + header + data;
}

TEST(NpyTest, RoundTripsEveryDType) {
  std::mt19937 rng(7);
  for (const DType dtype : {v1::FLOAT32, v1::FLOAT16, v1::BFLOAT16, v1::BOOL}) {
    for (const std::vector<int64_t>& shape :
         std::vector<std::vector<int64_t>>{{}, {5}, {2, 3, 7}, {1, 0, 4}}) {
      std::string bytes(static_cast<size_t>(NumElements(shape) * DTypeSize(dtype)), '\0');
      for (char& c : bytes) c = static_cast<char>(rng());
      absl::StatusOr<std::string> file = EncodeNpy({dtype, bytes.data(), shape});
      ASSERT_TRUE(file.ok()) << file.status();
      EXPECT_EQ((file->size() - bytes.size()) % 64, 0u);
      absl::StatusOr<NpyArray> array = ParseNpy(*file);
      ASSERT_TRUE(array.ok()) << array.status();
      EXPECT_EQ(array->dtype, dtype);
      EXPECT_EQ(array->shape, shape);
      EXPECT_EQ(array->data, bytes);
    }
  }
}

TEST(NpyTest, WritesNumpyHeaders) {
  const float values[3] = {1.f, 2.f, 3.f};
  absl::StatusOr<std::string> file = EncodeNpy({v1::FLOAT32, values, {3}});
  ASSERT_TRUE(file.ok());
  EXPECT_THAT(*file, HasSubstr("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }"));
  const uint16_t bits[4] = {};
  file = EncodeNpy({v1::BFLOAT16, bits, {2, 2}});
  EXPECT_THAT(*file, HasSubstr("'descr': '<u2'"));
  EXPECT_THAT(*file, HasSubstr("'shape': (2, 2)"));
}

TEST(NpyTest, ReadsHeadersInOtherSpellings) {
  const std::string data(24, '\x01');
  absl::StatusOr<NpyArray> array = ParseNpy(NpyFile(
      "{\"shape\": (2,3), \"fortran_order\": False, \"descr\": \"<f2\"}", data.substr(0, 12)));
  ASSERT_TRUE(array.ok()) << array.status();
  EXPECT_EQ(array->dtype, v1::FLOAT16);
  EXPECT_THAT(array->shape, ::testing::ElementsAre(2, 3));
  array = ParseNpy(NpyFile("{'descr': '|u1', 'fortran_order': False, 'shape': (24,), }", data));
  ASSERT_TRUE(array.ok()) << array.status();
  EXPECT_EQ(array->dtype, v1::BOOL);
}

TEST(NpyTest, RejectsWhatItCannotRepresent) {
  const std::string data(48, '\0');
  const auto error = [&](const std::string& dict, const std::string& bytes) {
    return std::string(ParseNpy(NpyFile(dict, bytes)).status().message());
  };
  EXPECT_THAT(error("{'descr': '<f8', 'fortran_order': False, 'shape': (6,), }", data),
              HasSubstr("descr '<f8'"));
  EXPECT_THAT(error("{'descr': '>f4', 'fortran_order': False, 'shape': (12,), }", data),
              HasSubstr("descr '>f4'"));
  EXPECT_THAT(error("{'descr': '<f4', 'fortran_order': True, 'shape': (3, 4), }", data),
              HasSubstr("fortran_order"));
  EXPECT_THAT(error("{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", data),
              HasSubstr("48 bytes do not hold shape (5)"));
  EXPECT_THAT(error("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", data),
              HasSubstr("'shape' entry '-1'"));
  EXPECT_THAT(error("{'descr': '<f4', 'fortran_order': False}", data), HasSubstr("'shape'"));
  EXPECT_THAT(std::string(ParseNpy("PK\x03\x04 not npy").status().message()),
              HasSubstr("not a .npy file"));
  const std::string truncated =
      NpyFile("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", "").substr(0, 30);
  EXPECT_THAT(std::string(ParseNpy(truncated).status().message()), HasSubstr("truncated"));
}

TEST(NpyTest, FileRoundTripAndIoErrors) {
  const std::string path = ::testing::TempDir() + "/npy_test_array.npy";
  std::vector<float> values(100000);
  for (size_t i = 0; i < values.size(); ++i) values[i] = 0.5f * float(i);
  ASSERT_TRUE(WriteNpy(path, {v1::FLOAT32, values.data(), {100, 1000}}).ok());
  absl::StatusOr<NpyArray> array = ReadNpy(path);
  ASSERT_TRUE(array.ok()) << array.status();
  EXPECT_THAT(array->shape, ::testing::ElementsAre(100, 1000));
  ASSERT_EQ(array->data.size(), values.size() * 4);
  EXPECT_EQ(std::memcmp(array->data.data(), values.data(), array->data.size()), 0);
  std::remove(path.c_str());

  absl::StatusOr<NpyArray> missing = ReadNpy(path);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr(path));
  EXPECT_FALSE(WriteNpy("/nonexistent-dir/x.npy", {v1::FLOAT32, values.data(), {1}}).ok());
}

}  // namespace
}  // namespace attention::client
