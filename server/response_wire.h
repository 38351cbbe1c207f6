// Answers without a copy of their output. protobuf's serializer copies every `bytes` field into
// the message it writes; for o (nearly all of an answer's bytes) that is one more pass over the
// output after the executor already copied it out of the device's staging buffer.
// SerializeResponseWithoutCopy writes the same message, with o's data handed to gRPC as a slice
// of its own instead.
#ifndef ATTENTION_SERVER_RESPONSE_WIRE_H_
#define ATTENTION_SERVER_RESPONSE_WIRE_H_

#include "attention/v1/attention.pb.h"
#include "grpcpp/support/byte_buffer.h"

namespace attention::server {

// Serializes `response` into `wire`: bytes any protobuf parser reads as `response` (o comes
// first instead of in field-number order, which the wire format allows). o's data string moves
// into a slice of `wire` and is freed when gRPC releases the slice; the rest is serialized as
// usual. Small outputs (below kMinZeroCopyBytes) are serialized the ordinary way. Clears
// `response`.
void SerializeResponseWithoutCopy(v1::AttentionResponse* response, grpc::ByteBuffer* wire);

// Below this size of o's data, a copy costs less than the extra slices.
inline constexpr size_t kMinZeroCopyBytes = 16 * 1024;

}  // namespace attention::server

#endif  // ATTENTION_SERVER_RESPONSE_WIRE_H_
