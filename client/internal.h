// Helpers shared by the client library's sources; not installed.
#ifndef ATTENTION_CLIENT_INTERNAL_H_
#define ATTENTION_CLIENT_INTERNAL_H_

#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/status.h"

namespace attention::client {

// gRPC status -> absl::Status; the two code enums share their numbers (google.rpc.Code).
inline absl::Status FromGrpcStatus(const grpc::Status& status) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

// Debian's abseil is built with its own string_view type, which std::string_view does not
// convert to implicitly.
inline absl::string_view AsAbsl(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

}  // namespace attention::client

#endif  // ATTENTION_CLIENT_INTERNAL_H_
