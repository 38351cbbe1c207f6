// A small command-line flag parser for attention_cli's subcommands: --name=value, --name value,
// and for booleans --name, --name=true|false, --noname. Each subcommand has its own FlagSet, so a
// flag another subcommand takes is an error here, with the flag named.
#ifndef ATTENTION_CLIENT_CLI_FLAGS_H_
#define ATTENTION_CLIENT_CLI_FLAGS_H_

#include <cstdint>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"

namespace attention::client::cli {

class FlagSet {
 public:
  // `usage` is printed above the flag list by Usage().
  explicit FlagSet(std::string usage) : usage_(std::move(usage)) {}

  // Registers a flag; the variable's value when Parse starts is its default.
  void Add(const std::string& name, std::string* value, const std::string& help);
  void Add(const std::string& name, int* value, const std::string& help);
  void Add(const std::string& name, int64_t* value, const std::string& help);
  void Add(const std::string& name, double* value, const std::string& help);
  void Add(const std::string& name, bool* value, const std::string& help);

  // Parses args (without the program and subcommand names). INVALID_ARGUMENT naming the flag for
  // an unknown flag, a missing or malformed value, or a positional argument.
  absl::Status Parse(const std::vector<std::string>& args);

  // Whether the flag appeared on the command line.
  bool IsSet(const std::string& name) const { return set_.count(name) > 0; }
  bool help_requested() const { return help_; }

  // The usage line and every flag with its default and help.
  std::string Usage() const;

 private:
  using Target = std::variant<std::string*, int*, int64_t*, double*, bool*>;
  struct Flag {
    std::string name;
    Target target;
    std::string help;
    std::string default_value;
  };

  void AddFlag(const std::string& name, Target target, const std::string& help);
  absl::Status Assign(const Flag& flag, const std::string& value) const;

  std::string usage_;
  std::vector<Flag> flags_;
  std::set<std::string> set_;
  bool help_ = false;
};

}  // namespace attention::client::cli

#endif  // ATTENTION_CLIENT_CLI_FLAGS_H_
