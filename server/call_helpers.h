// Small helpers both services' call objects use (server/service.cc, server/session_service.cc).
#ifndef ATTENTION_SERVER_CALL_HELPERS_H_
#define ATTENTION_SERVER_CALL_HELPERS_H_

#include <chrono>
#include <string>

#include "absl/status/status.h"
#include "grpcpp/grpcpp.h"
#include "server/executor.h"

namespace attention::server {

inline grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

inline double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The call's deadline on the steady clock (max() when it has none).
inline Clock::time_point SteadyDeadline(const grpc::CallbackServerContext* context,
                                        Clock::time_point now) {
  const auto deadline = context->deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return Clock::time_point::max();
  const auto left = deadline - std::chrono::system_clock::now();
  if (left > std::chrono::hours(24 * 365)) return Clock::time_point::max();
  return now + std::chrono::duration_cast<Clock::duration>(left);
}

}  // namespace attention::server

#endif  // ATTENTION_SERVER_CALL_HELPERS_H_
