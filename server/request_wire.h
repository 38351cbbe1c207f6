// Received requests without a copy of their tensors. protobuf's parser copies every `bytes`
// field out of gRPC's receive buffers; for q, k and v (almost all of a request's bytes) that copy
// was most of an idle server's arrival-to-launch time (bench/results/serving_2026-11-22_h100.md).
// ParseWithoutTensorData lets protobuf parse everything else and leaves q, k and v's data where
// gRPC received it; the executors' staging copy then reads it from there.
#ifndef ATTENTION_SERVER_REQUEST_WIRE_H_
#define ATTENTION_SERVER_REQUEST_WIRE_H_

#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "attention/v1/attention.pb.h"

namespace attention::server {

// Where q, k and v's data of a request are, when not in the request itself.
struct TensorData {
  absl::string_view q, k, v;
};

// One received message: the contiguous pieces it arrived in (gRPC slices), in order.
using WirePieces = std::vector<absl::string_view>;

// Parses the serialized AttentionRequest held in `pieces` into `request` exactly as
// `request->ParseFromString(concatenation)` would, except that q, k and v's `data` stay empty and
// `*data` points at their bytes instead: inside `pieces` when a tensor's bytes lie in one piece,
// else in `spill` (copied; at most three strings). Messages the scan does not take apart itself
// (wire-format groups, tags past 32 bits, malformed framing: nothing a client library sends) take
// protobuf's own parse over one copy, and `*data` points into `request`; so protobuf alone
// decides what is valid. Returns false when the bytes are not a valid AttentionRequest. The views
// stay valid while `pieces`' memory, `spill` and `request` live.
bool ParseWithoutTensorData(const WirePieces& pieces, v1::AttentionRequest* request,
                            TensorData* data, std::string (&spill)[3]);

}  // namespace attention::server

#endif  // ATTENTION_SERVER_REQUEST_WIRE_H_
