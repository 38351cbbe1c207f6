// attention_cli: command-line client of attention.v1.AttentionService.
//   attention_cli call   one request (random or .npy inputs), o written as .npy, optional check
//   attention_cli bench  load generator: throughput and latency percentiles, JSON output
//   attention_cli health grpc.health.v1 status of the server
//   attention_cli session-bench  decode steps against K/V sessions (attention.v1.SessionService)
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "client/cli/commands.h"

namespace {

constexpr char kUsage[] =
    "Usage: attention_cli <command> --target=HOST:PORT [flags]\n"
    "\n"
    "Commands:\n"
    "  call    send one attention request (random or .npy inputs), write o as .npy, --check it\n"
    "          against the local CPU backend\n"
    "  bench   keep --concurrency requests in flight; report throughput and latency percentiles\n"
    "  health  print the server's grpc.health.v1 serving status\n"
    "  session-bench  decode steps against server-held K/V sessions: steps/s, step latency,\n"
    "          bytes per step against the stateless call\n"
    "\n"
    "attention_cli <command> --help lists the command's flags.\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    std::fprintf(argc < 2 ? stderr : stdout, "%s", kUsage);
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "call") return attention::client::cli::CallCommand(args);
  if (command == "bench") return attention::client::cli::BenchCommand(args);
  if (command == "health") return attention::client::cli::HealthCommand(args);
  if (command == "session-bench") return attention::client::cli::SessionBenchCommand(args);
  std::fprintf(stderr, "error: unknown command '%s'\n\n%s", command.c_str(), kUsage);
  return 2;
}
