// attention_cli health: grpc.health.v1.Health/Check against the server.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "client/cli/commands.h"
#include "client/cli/common.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace attention::client::cli {
namespace {

constexpr char kUsage[] =
    "Usage: attention_cli health --target=HOST:PORT [--service=NAME] [--timeout_ms=2000]\n"
    "\n"
    "Prints the serving status of the server (--service=\"\") or of one service, e.g.\n"
    "attention.v1.AttentionService. Exit code 0 when SERVING, 1 otherwise.";

}  // namespace

int HealthCommand(const std::vector<std::string>& args) {
  ConnectionFlags connection;
  std::string service;
  int64_t timeout_ms = 2000;
  FlagSet flags(kUsage);
  connection.Register(flags);
  flags.Add("service", &service, "Service to ask about (\"\": the whole server)");
  flags.Add("timeout_ms", &timeout_ms, "Deadline of the check, connecting included");
  if (absl::Status status = flags.Parse(args); !status.ok()) return Fail(status);
  if (flags.help_requested()) {
    std::printf("%s", flags.Usage().c_str());
    return 0;
  }
  absl::StatusOr<Client> client = connection.Connect();
  if (!client.ok()) return Fail(client.status());

  std::unique_ptr<grpc::health::v1::Health::Stub> stub =
      grpc::health::v1::Health::NewStub(client->channel());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  context.set_wait_for_ready(true);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) {
    std::printf("%s: %s (%s)\n", connection.target.c_str(),
                status.error_code() == grpc::StatusCode::NOT_FOUND ? "SERVICE_UNKNOWN" : "ERROR",
                status.error_message().c_str());
    return 1;
  }
  std::printf("%s%s%s: %s\n", connection.target.c_str(), service.empty() ? "" : " ",
              service.c_str(),
              grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()).c_str());
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 1;
}

}  // namespace attention::client::cli
