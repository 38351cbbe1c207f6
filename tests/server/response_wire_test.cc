// SerializeResponseWithoutCopy against protobuf: the bytes it writes parse back to the same
// response, and o's data reaches gRPC as the very buffer the executor wrote, not a copy.
#include "server/response_wire.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "attention/v1/attention.pb.h"
#include "google/protobuf/util/message_differencer.h"
#include "grpcpp/support/slice.h"
#include "server/output_pool.h"
#include "tests/server/server_test_util.h"

namespace attention::server {
namespace {

using testing::RandomBytes;

using v1::AttentionResponse;

AttentionResponse MakeResponse(std::mt19937& rng, size_t o_bytes, bool lse) {
  AttentionResponse r;
  r.set_request_id(123456789);
  v1::Tensor* o = r.mutable_o();
  o->set_dtype(v1::BFLOAT16);
  for (int64_t d : {1, 128, 16, 64}) o->add_shape(d);
  o->set_data(RandomBytes(rng, o_bytes));
  if (lse) {
    r.mutable_lse()->set_dtype(v1::FLOAT32);
    r.mutable_lse()->add_shape(16);
    r.mutable_lse()->set_data(RandomBytes(rng, 16 * 4));
  }
  r.mutable_timings()->set_queue_ns(1000);
  r.mutable_timings()->set_kernel_ns(20000);
  r.mutable_timings()->set_total_ns(99999);
  r.mutable_batch()->set_requests(7);
  r.mutable_batch()->set_device("cuda:0");
  return r;
}

std::vector<grpc::Slice> Slices(const grpc::ByteBuffer& wire) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(wire.Dump(&slices).ok());
  return slices;
}

std::string Concatenate(const std::vector<grpc::Slice>& slices) {
  std::string bytes;
  for (const grpc::Slice& s : slices)
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return bytes;
}

void ExpectRoundTrip(const AttentionResponse& want) {
  AttentionResponse response = want;
  grpc::ByteBuffer wire;
  SerializeResponseWithoutCopy(&response, &wire);
  EXPECT_EQ(response.ByteSizeLong(), 0u);  // cleared
  AttentionResponse got;
  ASSERT_TRUE(got.ParseFromString(Concatenate(Slices(wire))));
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(got, want))
      << got.ShortDebugString().substr(0, 300);
  EXPECT_EQ(wire.Length(), want.ByteSizeLong());
}

TEST(ResponseWireTest, LargeOutputsParseBackToTheSameResponse) {
  std::mt19937 rng(1);
  for (size_t bytes : {kMinZeroCopyBytes, size_t{256} << 10, size_t{3} << 20}) {
    ExpectRoundTrip(MakeResponse(rng, bytes, /*lse=*/true));
    ExpectRoundTrip(MakeResponse(rng, bytes, /*lse=*/false));
  }
}

TEST(ResponseWireTest, SmallOutputsAndErrorsParseBackToTheSameResponse) {
  std::mt19937 rng(2);
  ExpectRoundTrip(MakeResponse(rng, 0, true));
  ExpectRoundTrip(MakeResponse(rng, kMinZeroCopyBytes - 1, true));
  AttentionResponse error;
  error.set_request_id(5);
  error.mutable_error()->set_code(3);
  error.mutable_error()->set_message("q.shape: rank must be 4");
  ExpectRoundTrip(error);
  AttentionResponse only_o;  // nothing but o: the wire holds no third piece
  only_o.mutable_o()->set_data(RandomBytes(rng, size_t{64} << 10));
  ExpectRoundTrip(only_o);
}

TEST(ResponseWireTest, OutputBufferIsHandedOverNotCopied) {
  std::mt19937 rng(3);
  AttentionResponse response = MakeResponse(rng, size_t{1} << 20, true);
  const char* o_buffer = response.o().data().data();
  grpc::ByteBuffer wire;
  SerializeResponseWithoutCopy(&response, &wire);
  bool found = false;
  for (const grpc::Slice& s : Slices(wire)) {
    found = found || (reinterpret_cast<const char*>(s.begin()) == o_buffer && s.size() == 1u << 20);
  }
  EXPECT_TRUE(found);
}

TEST(ResponseWireTest, OutputBufferGoesBackToThePoolWhenGrpcReleasesIt) {
  OutputPool& pool = OutputPool::Process();
  pool.SetCapacity(int64_t{4} << 20);
  std::mt19937 rng(4);
  AttentionResponse response = MakeResponse(rng, size_t{1} << 20, false);
  const char* o_buffer = response.o().data().data();
  {
    grpc::ByteBuffer wire;
    SerializeResponseWithoutCopy(&response, &wire);
    EXPECT_EQ(pool.kept_bytes(), 0);  // still gRPC's
  }
  EXPECT_GE(pool.kept_bytes(), int64_t{1} << 20);
  const std::string next = pool.Take(size_t{1} << 20);
  EXPECT_EQ(next.data(), o_buffer);
  pool.SetCapacity(0);
}

}  // namespace
}  // namespace attention::server
