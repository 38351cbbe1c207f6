// Structured one-line logs on stderr: `ts=... level=info event=start key=value ...`, one write per
// line so lines from different threads never interleave. Values with spaces, quotes or '=' are
// quoted. The server logs start-up, shutdown and errors; nothing per request at level info.
#ifndef ATTENTION_SERVER_LOG_H_
#define ATTENTION_SERVER_LOG_H_

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace attention::server {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// "debug", "info", "warning" or "error"; false for anything else.
bool ParseLogLevel(absl::string_view name, LogLevel* level);
// Lines below `level` are dropped. Default: info. Set once at start-up, before other threads.
void SetLogLevel(LogLevel level);
bool LogEnabled(LogLevel level);

// One log line, written when the object is destroyed:
//   LogLine(LogLevel::kInfo, "start").Kv("address", address).Kv("threads", 4);
class LogLine {
 public:
  LogLine(LogLevel level, absl::string_view event);
  ~LogLine();
  LogLine(const LogLine&) = delete;
  LogLine& operator=(const LogLine&) = delete;

  template <typename T>
  LogLine& Kv(absl::string_view key, const T& value) {
    if (enabled_) Append(key, absl::StrCat(value));
    return *this;
  }
  LogLine& Kv(absl::string_view key, bool value) {
    if (enabled_) Append(key, value ? "true" : "false");
    return *this;
  }

 private:
  void Append(absl::string_view key, absl::string_view value);

  const bool enabled_;
  std::string line_;
};

}  // namespace attention::server

#endif  // ATTENTION_SERVER_LOG_H_
