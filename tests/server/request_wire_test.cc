// ParseWithoutTensorData against protobuf's own parse: the same message (q, k and v's data
// apart), the same data bytes, the same accept / reject decision, for requests split into
// pieces at random points (as gRPC's slices split them) and for corrupted bytes; and the data
// spans point into the received pieces, not at copies.
#include "server/request_wire.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "attention/v1/attention.pb.h"
#include "google/protobuf/util/message_differencer.h"
#include "tests/server/server_test_util.h"

namespace attention::server {
namespace {

using testing::RandomBytes;

using v1::AttentionRequest;

AttentionRequest RandomRequest(std::mt19937& rng) {
  AttentionRequest r;
  r.set_request_id(rng() % 1000);
  v1::Tensor* tensors[3] = {r.mutable_q(), r.mutable_k(), r.mutable_v()};
  for (v1::Tensor* t : tensors) {
    if (rng() % 8 == 0) continue;  // absent
    t->set_dtype(v1::BFLOAT16);
    t->add_shape(1);
    t->add_shape(static_cast<int64_t>(1 + rng() % 300));
    t->add_shape(2);
    t->add_shape(8);
    if (rng() % 6 != 0) t->set_data(RandomBytes(rng, rng() % 2 == 0 ? rng() % 40000 : rng() % 50));
  }
  r.set_causal(rng() % 2 == 0);
  if (rng() % 3 == 0) r.set_softcap(30.f);
  if (rng() % 4 == 0) {
    r.mutable_mask()->set_dtype(v1::BOOL);
    r.mutable_mask()->add_shape(4);
    r.mutable_mask()->set_data(RandomBytes(rng, 4));
  }
  return r;
}

// `bytes` split at random points, with an empty piece now and then.
WirePieces Split(const std::string& bytes, std::mt19937& rng) {
  WirePieces pieces;
  size_t at = 0;
  while (at < bytes.size()) {
    if (rng() % 10 == 0) pieces.emplace_back(bytes.data() + at, 0);
    const size_t n = std::min(bytes.size() - at, static_cast<size_t>(1 + rng() % 20000));
    pieces.emplace_back(bytes.data() + at, n);
    at += n;
  }
  return pieces;
}

std::string Join(const TensorPieces& spans) {
  std::string s;
  for (const absl::string_view span : spans) s.append(span.data(), span.size());
  return s;
}

// Whether every span lies inside one of `pieces`.
bool InsidePieces(const TensorPieces& spans, const WirePieces& pieces) {
  for (const absl::string_view span : spans) {
    bool inside = false;
    for (const absl::string_view piece : pieces) {
      inside = inside || (span.data() >= piece.data() &&
                          span.data() + span.size() <= piece.data() + piece.size());
    }
    if (!inside) return false;
  }
  return true;
}

// The check: both parses agree, and the spans hold the data protobuf found.
void ExpectSameAsProtobuf(const std::string& bytes, const WirePieces& pieces) {
  AttentionRequest want;
  const bool want_ok = want.ParseFromString(bytes);
  AttentionRequest got;
  TensorData data;
  const bool got_ok = ParseWithoutTensorData(pieces, &got, &data);
  ASSERT_EQ(got_ok, want_ok);
  if (!want_ok) return;
  EXPECT_EQ(Join(data.q), want.q().data());
  EXPECT_EQ(Join(data.k), want.k().data());
  EXPECT_EQ(Join(data.v), want.v().data());
  // The message itself, with the data fields as protobuf left them where `got` kept them.
  if (got.q().data().empty() && got.has_q()) got.mutable_q()->set_data(Join(data.q));
  if (got.k().data().empty() && got.has_k()) got.mutable_k()->set_data(Join(data.k));
  if (got.v().data().empty() && got.has_v()) got.mutable_v()->set_data(Join(data.v));
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(got, want))
      << "got " << got.ShortDebugString().substr(0, 300) << "\nwant "
      << want.ShortDebugString().substr(0, 300);
}

TEST(RequestWireTest, MatchesProtobufOnRandomRequestsAndSplits) {
  std::mt19937 rng(20261122);
  for (int i = 0; i < 300; ++i) {
    const std::string bytes = RandomRequest(rng).SerializeAsString();
    ExpectSameAsProtobuf(bytes, Split(bytes, rng));
    ExpectSameAsProtobuf(bytes, {bytes});
    if (HasFatalFailure()) return;
  }
}

TEST(RequestWireTest, TensorsAreSpansOfTheReceivedPiecesNotCopies) {
  std::mt19937 rng(7);
  AttentionRequest r = RandomRequest(rng);
  r.mutable_q()->set_data(RandomBytes(rng, 1 << 20));
  const std::string bytes = r.SerializeAsString();
  AttentionRequest got;
  TensorData data;
  ASSERT_TRUE(ParseWithoutTensorData({bytes}, &got, &data));
  EXPECT_TRUE(got.q().data().empty());
  ASSERT_EQ(data.q.size(), 1u);  // one piece in, one span out
  EXPECT_TRUE(InsidePieces(data.q, {bytes}));
  EXPECT_EQ(Join(data.q), r.q().data());

  // As gRPC delivers it: 16 KiB pieces, so the 1 MiB tensor straddles 65 or so of them.
  WirePieces pieces;
  for (size_t at = 0; at < bytes.size(); at += 16384) {
    pieces.emplace_back(bytes.data() + at, std::min<size_t>(16384, bytes.size() - at));
  }
  ASSERT_TRUE(ParseWithoutTensorData(pieces, &got, &data));
  EXPECT_GE(data.q.size(), 64u);
  EXPECT_TRUE(InsidePieces(data.q, pieces));
  EXPECT_TRUE(InsidePieces(data.k, pieces));
  EXPECT_TRUE(InsidePieces(data.v, pieces));
  EXPECT_EQ(Join(data.q), r.q().data());
  EXPECT_EQ(Join(data.k), r.k().data());
}

TEST(RequestWireTest, RepeatedFieldsFollowProtobufRules) {
  // q twice (protobuf merges the two: the later data wins), data twice inside one tensor, a k
  // without data after a k with data (the earlier data stays).
  AttentionRequest a, b, c;
  a.mutable_q()->set_data("first");
  a.mutable_q()->add_shape(5);
  a.mutable_k()->set_data("kdata");
  b.mutable_q()->set_data("second");
  b.mutable_k()->add_shape(3);
  c.mutable_q()->set_data("third-in-same");
  const std::string bytes = a.SerializeAsString() + b.SerializeAsString() + c.SerializeAsString();
  std::mt19937 rng(3);
  ExpectSameAsProtobuf(bytes, Split(bytes, rng));
  ExpectSameAsProtobuf(bytes, {bytes});
}

TEST(RequestWireTest, CorruptedBytesAreRejectedOrParsedLikeProtobuf) {
  std::mt19937 rng(99);
  for (int i = 0; i < 2000; ++i) {
    std::string bytes = RandomRequest(rng).SerializeAsString();
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips && !bytes.empty(); ++f) {
      bytes[rng() % bytes.size()] = static_cast<char>(rng() & 0xff);
    }
    if (rng() % 5 == 0) bytes.resize(rng() % (bytes.size() + 1));  // truncated
    ExpectSameAsProtobuf(bytes, Split(bytes, rng));
    if (HasFatalFailure()) return;
  }
  for (int i = 0; i < 500; ++i) {
    const std::string bytes = RandomBytes(rng, rng() % 64);
    ExpectSameAsProtobuf(bytes, Split(bytes, rng));
    if (HasFatalFailure()) return;
  }
}

TEST(RequestWireTest, GroupsTakeProtobufsOwnParse) {
  // An unknown field 20 as a group (wire types 3 and 4) around a varint, then q with data.
  AttentionRequest q_only;
  q_only.mutable_q()->set_data("payload");
  const std::string bytes = std::string("\xa3\x01\x08\x05\xa4\x01", 6) + q_only.SerializeAsString();
  ExpectSameAsProtobuf(bytes, {bytes});
  AttentionRequest got;
  TensorData data;
  ASSERT_TRUE(ParseWithoutTensorData({bytes}, &got, &data));
  EXPECT_EQ(Join(data.q), "payload");
}

TEST(RequestWireTest, TagsPastThirtyTwoBitsFollowProtobuf) {
  // Found by the fuzzer: a 5-byte tag whose value (field 907668779, length-delimited) does not
  // fit 32 bits; protobuf truncates it and keeps the field as unknown.
  std::string tag;
  for (uint64_t v = (uint64_t{907668779} << 3) | 2;; v >>= 7) {
    tag.push_back(static_cast<char>(v >= 0x80 ? (v & 0x7f) | 0x80 : v));
    if (v < 0x80) break;
  }
  AttentionRequest q_only;
  q_only.mutable_q()->set_data("payload");
  const std::string bytes = q_only.SerializeAsString() + tag + "\x01x";
  std::mt19937 rng(5);
  ExpectSameAsProtobuf(bytes, {bytes});
  ExpectSameAsProtobuf(bytes, Split(bytes, rng));
}

}  // namespace
}  // namespace attention::server
