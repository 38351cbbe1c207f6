// A timeline of a lone session step through the server (ATTN_STEP_TRACE=1; off by default): each
// point of the step's path (stream read, parse, turn, batcher, executor launch, device wait,
// answer, write) stamps the steady clock, and the server prints to stderr, every kReportSteps
// steps, each point's mean offset (us) from the step's read. Meant for one step in flight at a
// time (attention_cli session-bench --sessions=1): the stamps are process-wide, a step's begin
// folds the previous step's into the means, and overlapping steps would mix theirs. Off, a stamp
// is one relaxed load of a flag that is read once.
#ifndef ATTENTION_SERVER_STEP_TRACE_H_
#define ATTENTION_SERVER_STEP_TRACE_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace attention::server::step_trace {

// The points, in the order a lone step passes them (a point a step does not pass is left out of
// that step's means).
enum Point : int {
  kRead = 0,       // StreamReactor::OnReadDone: the message is read
  kParseBegins,    // the message's parse begins
  kParsed,         // the SessionRequest is parsed
  kInTurn,         // the Attend's step runs in the session's turn
  kEnqueue,        // its job goes to Batcher::Enqueue
  kSubmit,         // Executor::Submit
  kLaunch,         // CudaExecutor::Launch begins
  kStaged,         // the inputs are in pinned memory
  kUploadIssued,   // the upload (and its event) is enqueued
  kAppendIssued,   // the row append kernel is enqueued
  kKernelsIssued,  // the attention kernels and the last event are enqueued
  kLaunched,       // Launch returns (outputs allocated)
  kWaitBegins,     // a thread begins to wait for the device (stream or event)
  kDeviceDone,     // that wait returned
  kFinish,         // FinishSlot: the outputs are copied into the answer
  kComplete,       // SessionCall::Complete
  kAnswerBuilt,    // the answer is serialized (ItemDone, before the stream's lock)
  kWriteStarted,   // StartWrite returned
  kTurnEnded,      // the session's turn ended (Complete returns)
  kWriteDone,      // OnWriteDone: gRPC wrote the answer
  kPoints
};

inline const char* PointName(int p) {
  static const char* const kNames[kPoints] = {
      "read",   "parse",    "parsed", "in_turn",       "enqueue",    "submit",    "launch",
      "staged", "upload",   "append", "kernels",       "launched",   "wait",      "device_done",
      "finish", "complete", "built",  "write_started", "turn_ended", "write_done"};
  return kNames[p];
}

constexpr int64_t kReportSteps = 500;

inline bool Enabled() {
  static const bool on = [] {
    const char* value = std::getenv("ATTN_STEP_TRACE");
    return value != nullptr && std::string(value) == "1";
  }();
  return on;
}

struct State {
  std::atomic<int64_t> stamp[kPoints] = {};  // ns on the steady clock, 0: not passed
  int64_t sum[kPoints] = {};                 // reading path only (Begin)
  int64_t count[kPoints] = {};
  int64_t steps = 0;
  std::atomic<int64_t> generation{0};  // counts Begin: which step the stamps are of
  std::atomic<bool> folding{false};    // one Begin folds at a time; another skips its fold
};

inline State& Global() {
  static State* state = new State();
  return *state;
}

inline int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Stamps `p` (the first time this step passes it).
inline void Stamp(Point p) {
  if (!Enabled()) return;
  int64_t expected = 0;
  Global().stamp[p].compare_exchange_strong(expected, NowNs(), std::memory_order_relaxed);
}

// The step being traced now: a point that a thread may pass after the next step was read (the
// answer's write can return after its client sent the next step) stamps through StampOf with the
// generation it took earlier on the same path.
inline int64_t Generation() {
  return Enabled() ? Global().generation.load(std::memory_order_relaxed) : 0;
}

inline void StampOf(int64_t generation, Point p) {
  if (!Enabled() || Global().generation.load(std::memory_order_relaxed) != generation) return;
  Stamp(p);
}

// kWriteDone, only once this step's answer started its write (gRPC writes one answer at a time,
// so a write that ends later is this step's).
inline void StampWriteDone() {
  if (!Enabled() || Global().stamp[kWriteStarted].load(std::memory_order_relaxed) == 0) return;
  Stamp(kWriteDone);
}

// A step is read: folds the previous step's stamps into the means (printing them every
// kReportSteps steps), then stamps kRead.
inline void Begin() {
  if (!Enabled()) return;
  State& s = Global();
  if (s.folding.exchange(true, std::memory_order_acquire)) return;
  const int64_t read = s.stamp[kRead].load(std::memory_order_relaxed);
  if (read != 0) {
    for (int p = 0; p < kPoints; ++p) {
      const int64_t t = s.stamp[p].load(std::memory_order_relaxed);
      if (t >= read) {
        s.sum[p] += t - read;
        ++s.count[p];
      }
    }
    if (++s.steps == kReportSteps) {
      char line[1024];
      int used =
          std::snprintf(line, sizeof(line),
                        "step_trace steps=%lld us_from_read:", static_cast<long long>(s.steps));
      for (int p = 1; p < kPoints && used > 0 && used < static_cast<int>(sizeof(line)); ++p) {
        if (s.count[p] == 0) continue;
        used += std::snprintf(
            line + used, sizeof(line) - static_cast<size_t>(used), " %s=%.1f", PointName(p),
            1e-3 * static_cast<double>(s.sum[p]) / static_cast<double>(s.count[p]));
        // A point some steps did not pass (or passed after the next step's read): how many did.
        if (s.count[p] < s.steps && used > 0 && used < static_cast<int>(sizeof(line))) {
          used += std::snprintf(line + used, sizeof(line) - static_cast<size_t>(used), "/n%lld",
                                static_cast<long long>(s.count[p]));
        }
      }
      std::fprintf(stderr, "%s\n", line);
      std::memset(s.sum, 0, sizeof(s.sum));
      std::memset(s.count, 0, sizeof(s.count));
      s.steps = 0;
    }
  }
  for (int p = 0; p < kPoints; ++p) s.stamp[p].store(0, std::memory_order_relaxed);
  s.generation.fetch_add(1, std::memory_order_relaxed);
  s.stamp[kRead].store(NowNs(), std::memory_order_relaxed);
  s.folding.store(false, std::memory_order_release);
}

}  // namespace attention::server::step_trace

#endif  // ATTENTION_SERVER_STEP_TRACE_H_
