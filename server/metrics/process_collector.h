// The standard process metrics (the names every Prometheus client library exports), read from
// /proc on each scrape:
//   process_cpu_seconds_total      counter  user + system CPU time
//   process_resident_memory_bytes  gauge    resident set size
//   process_virtual_memory_bytes   gauge    virtual memory size
//   process_start_time_seconds     gauge    start time, seconds since the Unix epoch
//   process_open_fds               gauge    open file descriptors
//   process_max_fds                gauge    soft limit on open file descriptors
// A value that cannot be read is left out of that scrape rather than reported as 0.
#ifndef ATTENTION_SERVER_METRICS_PROCESS_COLLECTOR_H_
#define ATTENTION_SERVER_METRICS_PROCESS_COLLECTOR_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace attention::server {

// The fields of /proc/<pid>/stat the collector uses, in their raw units.
struct ProcStat {
  uint64_t utime_ticks = 0;      // field 14
  uint64_t stime_ticks = 0;      // field 15
  uint64_t starttime_ticks = 0;  // field 22, clock ticks after boot
  uint64_t vsize_bytes = 0;      // field 23
  int64_t rss_pages = 0;         // field 24
};

// Parses the content of /proc/<pid>/stat. The command name (field 2) may hold spaces and
// parentheses, so fields are counted from the last ')'. nullopt when the text is malformed.
std::optional<ProcStat> ParseProcStat(std::string_view text);

// The `btime` line of /proc/stat: boot time in seconds since the Unix epoch.
std::optional<int64_t> ParseBootTime(std::string_view proc_stat_text);

// The soft "Max open files" limit from /proc/<pid>/limits; nullopt when absent or "unlimited".
std::optional<int64_t> ParseMaxOpenFiles(std::string_view limits_text);

class ProcessCollector : public prometheus::Collectable {
 public:
  // `proc_root` is the /proc mount; the collector reads <proc_root>/self/{stat,limits,fd} and
  // <proc_root>/stat.
  explicit ProcessCollector(std::string proc_root = "/proc");

  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  std::string proc_root_;
  double ticks_per_second_;
  double page_size_bytes_;
};

}  // namespace attention::server

#endif  // ATTENTION_SERVER_METRICS_PROCESS_COLLECTOR_H_
