// attention_cli's subcommands. Each takes the arguments after its name and returns the process
// exit code: 0 success, 1 failure (an RPC error, a failed check, an unhealthy server), 2 bad
// usage.
#ifndef ATTENTION_CLIENT_CLI_COMMANDS_H_
#define ATTENTION_CLIENT_CLI_COMMANDS_H_

#include <string>
#include <vector>

namespace attention::client::cli {

int CallCommand(const std::vector<std::string>& args);
int BenchCommand(const std::vector<std::string>& args);
int HealthCommand(const std::vector<std::string>& args);
int SessionBenchCommand(const std::vector<std::string>& args);

}  // namespace attention::client::cli

#endif  // ATTENTION_CLIENT_CLI_COMMANDS_H_
