#include "server/metrics/process_collector.h"

#include <dirent.h>
#include <unistd.h>

#include <charconv>
#include <fstream>
#include <sstream>
#include <utility>

#include "prometheus/client_metric.h"
#include "prometheus/metric_type.h"

namespace attention::server {
namespace {

std::optional<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream content;
  content << in.rdbuf();
  if (in.bad()) return std::nullopt;
  return content.str();
}

template <typename T>
bool ParseNumber(std::string_view token, T* value) {
  const char* end = token.data() + token.size();
  auto [ptr, ec] = std::from_chars(token.data(), end, *value);
  return ec == std::errc() && ptr == end;
}

// Open descriptors of this process: the entries of <proc_root>/self/fd, less the one the
// directory listing itself holds open.
std::optional<int64_t> CountOpenFds(const std::string& proc_root) {
  DIR* dir = opendir((proc_root + "/self/fd").c_str());
  if (dir == nullptr) return std::nullopt;
  const std::string own_fd = std::to_string(dirfd(dir));
  int64_t count = 0;
  while (const dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.' && own_fd != entry->d_name) ++count;
  }
  closedir(dir);
  return count;
}

prometheus::MetricFamily Family(std::string name, std::string help, prometheus::MetricType type,
                                double value) {
  prometheus::MetricFamily family;
  family.name = std::move(name);
  family.help = std::move(help);
  family.type = type;
  prometheus::ClientMetric metric;
  if (type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
  return family;
}

}  // namespace

std::optional<ProcStat> ParseProcStat(std::string_view text) {
  const size_t close = text.rfind(')');
  if (close == std::string_view::npos) return std::nullopt;
  // Tokens after the command name, starting at field 3 (state).
  std::vector<std::string_view> fields;
  size_t pos = close + 1;
  while (pos < text.size()) {
    while (pos < text.size() && (text[pos] == ' ' || text[pos] == '\n')) ++pos;
    size_t end = pos;
    while (end < text.size() && text[end] != ' ' && text[end] != '\n') ++end;
    if (end > pos) fields.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  // Field n sits at fields[n - 3].
  constexpr size_t kUtime = 14 - 3, kStime = 15 - 3, kStart = 22 - 3, kVsize = 23 - 3,
                   kRss = 24 - 3;
  if (fields.size() <= kRss) return std::nullopt;
  ProcStat stat;
  if (!ParseNumber(fields[kUtime], &stat.utime_ticks) ||
      !ParseNumber(fields[kStime], &stat.stime_ticks) ||
      !ParseNumber(fields[kStart], &stat.starttime_ticks) ||
      !ParseNumber(fields[kVsize], &stat.vsize_bytes) ||
      !ParseNumber(fields[kRss], &stat.rss_pages)) {
    return std::nullopt;
  }
  return stat;
}

std::optional<int64_t> ParseBootTime(std::string_view proc_stat_text) {
  constexpr std::string_view kKey = "btime ";
  size_t pos = 0;
  while (pos < proc_stat_text.size()) {
    size_t end = proc_stat_text.find('\n', pos);
    if (end == std::string_view::npos) end = proc_stat_text.size();
    const std::string_view line = proc_stat_text.substr(pos, end - pos);
    if (line.substr(0, kKey.size()) == kKey) {
      int64_t value = 0;
      if (ParseNumber(line.substr(kKey.size()), &value)) return value;
      return std::nullopt;
    }
    pos = end + 1;
  }
  return std::nullopt;
}

std::optional<int64_t> ParseMaxOpenFiles(std::string_view limits_text) {
  constexpr std::string_view kKey = "Max open files";
  const size_t start = limits_text.find(kKey);
  if (start == std::string_view::npos) return std::nullopt;
  size_t pos = start + kKey.size();
  while (pos < limits_text.size() && limits_text[pos] == ' ') ++pos;
  size_t end = pos;
  while (end < limits_text.size() && limits_text[end] != ' ' && limits_text[end] != '\n') ++end;
  int64_t value = 0;
  if (!ParseNumber(limits_text.substr(pos, end - pos), &value)) return std::nullopt;
  return value;
}

ProcessCollector::ProcessCollector(std::string proc_root)
    : proc_root_(std::move(proc_root)),
      ticks_per_second_(static_cast<double>(sysconf(_SC_CLK_TCK))),
      page_size_bytes_(static_cast<double>(sysconf(_SC_PAGESIZE))) {}

std::vector<prometheus::MetricFamily> ProcessCollector::Collect() const {
  using prometheus::MetricType;
  std::vector<prometheus::MetricFamily> families;

  const std::optional<std::string> stat_text = ReadFile(proc_root_ + "/self/stat");
  const std::optional<ProcStat> stat =
      stat_text ? ParseProcStat(*stat_text) : std::optional<ProcStat>();
  if (stat && ticks_per_second_ > 0) {
    families.push_back(
        Family("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
               MetricType::Counter,
               static_cast<double>(stat->utime_ticks + stat->stime_ticks) / ticks_per_second_));
  }
  if (stat) {
    families.push_back(Family("process_resident_memory_bytes", "Resident memory size in bytes.",
                              MetricType::Gauge,
                              static_cast<double>(stat->rss_pages) * page_size_bytes_));
    families.push_back(Family("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                              MetricType::Gauge, static_cast<double>(stat->vsize_bytes)));
  }
  const std::optional<std::string> proc_stat_text = ReadFile(proc_root_ + "/stat");
  const std::optional<int64_t> boot_time =
      proc_stat_text ? ParseBootTime(*proc_stat_text) : std::optional<int64_t>();
  if (stat && boot_time && ticks_per_second_ > 0) {
    families.push_back(Family("process_start_time_seconds",
                              "Start time of the process since unix epoch in seconds.",
                              MetricType::Gauge,
                              static_cast<double>(*boot_time) +
                                  static_cast<double>(stat->starttime_ticks) / ticks_per_second_));
  }
  if (const std::optional<int64_t> fds = CountOpenFds(proc_root_)) {
    families.push_back(Family("process_open_fds", "Number of open file descriptors.",
                              MetricType::Gauge, static_cast<double>(*fds)));
  }
  const std::optional<std::string> limits_text = ReadFile(proc_root_ + "/self/limits");
  if (const std::optional<int64_t> max_fds =
          limits_text ? ParseMaxOpenFiles(*limits_text) : std::optional<int64_t>()) {
    families.push_back(Family("process_max_fds", "Maximum number of open file descriptors.",
                              MetricType::Gauge, static_cast<double>(*max_fds)));
  }
  return families;
}

}  // namespace attention::server
