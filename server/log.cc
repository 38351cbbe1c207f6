#include "server/log.h"

#include <atomic>
#include <cstdio>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace attention::server {
namespace {

std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

}  // namespace

bool ParseLogLevel(absl::string_view name, LogLevel* level) {
  for (LogLevel l : {LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarning, LogLevel::kError}) {
    if (name == LevelName(l)) {
      *level = l;
      return true;
    }
  }
  return false;
}

void SetLogLevel(LogLevel level) { g_level.store(static_cast<int>(level)); }

bool LogEnabled(LogLevel level) { return static_cast<int>(level) >= g_level.load(); }

LogLine::LogLine(LogLevel level, absl::string_view event) : enabled_(LogEnabled(level)) {
  if (!enabled_) return;
  line_ = absl::StrCat(
      "ts=", absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", absl::Now(), absl::UTCTimeZone()),
      " level=", LevelName(level), " event=", event);
}

LogLine::~LogLine() {
  if (!enabled_) return;
  line_.push_back('\n');
  std::fwrite(line_.data(), 1, line_.size(), stderr);
}

void LogLine::Append(absl::string_view key, absl::string_view value) {
  absl::StrAppend(&line_, " ", key, "=");
  if (!value.empty() && value.find_first_of(" \"=\t\n") == absl::string_view::npos) {
    line_.append(value.data(), value.size());
    return;
  }
  line_.push_back('"');
  for (char c : value) {
    if (c == '"' || c == '\\') line_.push_back('\\');
    if (c == '\n') {
      line_.append("\\n");
      continue;
    }
    line_.push_back(c);
  }
  line_.push_back('"');
}

}  // namespace attention::server
