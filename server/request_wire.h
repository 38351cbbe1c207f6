// Received requests without a copy of their tensors. protobuf's parser copies every `bytes`
// field out of gRPC's receive buffers; for q, k and v (almost all of a request's bytes) that copy
// was most of an idle server's arrival-to-launch time (bench/results/serving_2026-11-22_h100.md).
// ParseWithoutTensorData lets protobuf parse everything else and leaves q, k and v's data where
// gRPC received it, as the list of pieces it arrived in; the executors' staging copy then reads
// each piece from there (one copy per byte, into pinned memory on a GPU).
#ifndef ATTENTION_SERVER_REQUEST_WIRE_H_
#define ATTENTION_SERVER_REQUEST_WIRE_H_

#include <vector>

#include "absl/strings/string_view.h"
#include "attention/v1/attention.pb.h"
#include "server/request_spec.h"

namespace attention::server {

// Where q, k and v's data of a request are, when not in the request itself: each the spans of its
// bytes in order (empty for an empty or absent data field).
struct TensorData {
  TensorPieces q, k, v;
};

// One received message: the contiguous pieces it arrived in (gRPC slices), in order.
using WirePieces = std::vector<absl::string_view>;

// Parses the serialized AttentionRequest held in `pieces` into `request` exactly as
// `request->ParseFromString(concatenation)` would, except that q, k and v's `data` stay empty and
// `*data` lists the spans of `pieces` that hold their bytes instead. Messages the scan does not
// take apart itself (wire-format groups, tags past 32 bits, malformed framing: nothing a client
// library sends) take protobuf's own parse over one copy, and `*data` then points into `request`
// (one span per tensor); so protobuf alone decides what is valid. Returns false when the bytes
// are not a valid AttentionRequest. The spans stay valid while `pieces`' memory and `request` live.
bool ParseWithoutTensorData(const WirePieces& pieces, v1::AttentionRequest* request,
                            TensorData* data);

}  // namespace attention::server

#endif  // ATTENTION_SERVER_REQUEST_WIRE_H_
