#include "client/cli/flags.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace attention::client::cli {
namespace {

std::string Show(const std::string* v) { return absl::StrCat("\"", *v, "\""); }
std::string Show(const int* v) { return absl::StrCat(*v); }
std::string Show(const int64_t* v) { return absl::StrCat(*v); }
std::string Show(const double* v) { return absl::StrFormat("%g", *v); }
std::string Show(const bool* v) { return *v ? "true" : "false"; }

}  // namespace

void FlagSet::AddFlag(const std::string& name, Target target, const std::string& help) {
  const std::string default_value = std::visit([](auto* v) { return Show(v); }, target);
  flags_.push_back(Flag{name, target, help, default_value});
}

void FlagSet::Add(const std::string& name, std::string* value, const std::string& help) {
  AddFlag(name, value, help);
}
void FlagSet::Add(const std::string& name, int* value, const std::string& help) {
  AddFlag(name, value, help);
}
void FlagSet::Add(const std::string& name, int64_t* value, const std::string& help) {
  AddFlag(name, value, help);
}
void FlagSet::Add(const std::string& name, double* value, const std::string& help) {
  AddFlag(name, value, help);
}
void FlagSet::Add(const std::string& name, bool* value, const std::string& help) {
  AddFlag(name, value, help);
}

absl::Status FlagSet::Assign(const Flag& flag, const std::string& value) const {
  const auto bad = [&](const char* want) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag.name, ": '", value, "' is not ", want));
  };
  if (auto* s = std::get_if<std::string*>(&flag.target)) {
    **s = value;
  } else if (auto* i = std::get_if<int*>(&flag.target)) {
    if (!absl::SimpleAtoi(value, *i)) return bad("an integer");
  } else if (auto* l = std::get_if<int64_t*>(&flag.target)) {
    if (!absl::SimpleAtoi(value, *l)) return bad("an integer");
  } else if (auto* d = std::get_if<double*>(&flag.target)) {
    if (!absl::SimpleAtod(value, *d)) return bad("a number");
  } else if (auto* b = std::get_if<bool*>(&flag.target)) {
    if (!absl::SimpleAtob(value, *b)) return bad("true or false");
  }
  return absl::OkStatus();
}

absl::Status FlagSet::Parse(const std::vector<std::string>& args) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") {
      help_ = true;
      continue;
    }
    if (arg.size() < 3 || arg.compare(0, 2, "--") != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument '", arg, "' (flags are --name=value)"));
    }
    const size_t eq = arg.find('=');
    std::string name = arg.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
    bool negated = false;
    auto flag =
        std::find_if(flags_.begin(), flags_.end(), [&](const Flag& f) { return f.name == name; });
    if (flag == flags_.end() && name.compare(0, 2, "no") == 0) {
      flag = std::find_if(flags_.begin(), flags_.end(), [&](const Flag& f) {
        return f.name == name.substr(2) && std::holds_alternative<bool*>(f.target);
      });
      negated = flag != flags_.end();
    }
    if (flag == flags_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, ": unknown flag (see --help)"));
    }
    std::string value;
    if (eq != std::string::npos) {
      if (negated) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, ": takes no value"));
      }
      value = arg.substr(eq + 1);
    } else if (std::holds_alternative<bool*>(flag->target)) {
      value = negated ? "false" : "true";
    } else if (i + 1 < args.size()) {
      value = args[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--", name, ": needs a value"));
    }
    absl::Status status = Assign(*flag, value);
    if (!status.ok()) return status;
    set_.insert(flag->name);
  }
  return absl::OkStatus();
}

std::string FlagSet::Usage() const {
  std::string out = absl::StrCat(usage_, "\n\nFlags:\n");
  for (const Flag& flag : flags_) {
    absl::StrAppend(&out, "  --", flag.name, " (default ", flag.default_value, ")\n      ",
                    flag.help, "\n");
  }
  return out;
}

}  // namespace attention::client::cli
