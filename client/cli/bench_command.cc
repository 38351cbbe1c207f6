// attention_cli bench: the load generator of the serving benchmarks. Keeps `concurrency`
// requests in flight (unary calls, or one stream per channel with --stream) for a duration or a
// request count after a warmup, and reports client-side throughput and latency percentiles with
// the medians of the server-reported timings, as a table and optionally as JSON. With --backward
// the requests are backward ones (AttentionBackward, or backward = true on the stream) for the
// answer of one forward call made first.
#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "attention/client/stream_session.h"
#include "client/cli/commands.h"
#include "client/cli/common.h"

namespace attention::client::cli {
namespace {

using Clock = std::chrono::steady_clock;

// True while this thread is inside StreamSession::Submit: a completion seen then is a refusal.
thread_local bool t_submitting = false;

constexpr char kUsage[] =
    "Usage: attention_cli bench --target=HOST:PORT [--concurrency=64] [--batch=1 --seqlen=128\n"
    "           --seqlen_k=N --heads=16 --kv_heads=N --head_dim=64 --dtype=bf16|fp16|fp32|fp8]\n"
    "           [--causal ...options] (--duration_s=10 | --requests=N) [--warmup_s=1]\n"
    "           [--stream] [--channels=1] [--json=out.json] [--backward [--deterministic]]\n"
    "\n"
    "Sends one random request shape over and over with --concurrency requests in flight and\n"
    "prints throughput (requests/s, query tokens/s, request and response bytes/s), client-side\n"
    "latency percentiles and the medians of the server's timings. Requests issued during the\n"
    "warmup are not counted. A progress bar is drawn when stdout is a terminal. --backward times\n"
    "the backward pass instead: one forward call (with lse) first, then its AttentionBackward\n"
    "request (random grad_o) over and over; unary backward calls block, one thread per slot.";

struct BenchFlags {
  int concurrency = 64;
  double duration_s = 10;
  int64_t requests = 0;
  double warmup_s = 1;
  bool stream = false;
  int channels = 1;
  int64_t timeout_ms = 0;
  std::string json;
  bool backward = false;
  bool deterministic = false;
};

double Percentile(const std::vector<int64_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  const size_t rank = static_cast<size_t>(std::ceil(p * static_cast<double>(sorted.size())));
  return static_cast<double>(sorted[std::min(sorted.size(), std::max<size_t>(rank, 1)) - 1]);
}

double MedianMs(std::vector<int64_t>& values) {
  std::sort(values.begin(), values.end());
  return Percentile(values, 0.5) * 1e-6;
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      absl::StrAppendFormat(&out, "\\u%04x", c);
    } else {
      out += c;
    }
  }
  return out + "\"";
}

// What the measured requests (issued after the warmup) gave.
struct Report {
  double duration_s = 0;
  int64_t ok = 0, failed = 0;
  double requests_per_s = 0, tokens_per_s = 0;
  double request_bytes_per_s = 0, response_bytes_per_s = 0;
  double p50_ms = 0, p90_ms = 0, p99_ms = 0, max_ms = 0, mean_ms = 0;
  double queue_ms = 0, transfer_ms = 0, kernel_ms = 0, total_ms = 0;  // medians
  double batch_requests_mean = 0;
  // CPU time of this process (all threads) over the whole run, warmup included, per wall second:
  // the cores the load generator itself took from a host it shares with the server.
  double client_cpu_cores = 0;
  // Status code name -> count and the first message.
  std::map<std::string, std::pair<int64_t, std::string>> errors;
};

class LoadGenerator {
 public:
  LoadGenerator(const BenchFlags& flags, std::vector<Client> clients,
                const v1::AttentionRequest& request, const ProblemShape& shape)
      : flags_(flags), clients_(std::move(clients)) {
    if (flags_.timeout_ms > 0) call_.timeout = std::chrono::milliseconds(flags_.timeout_ms);
    tokens_per_request_ = shape.query_tokens;
    request_bytes_ = static_cast<int64_t>(request.ByteSizeLong());
    if (flags_.backward && !flags_.stream) {
      backward_request_.emplace(request);
    } else if (flags_.stream) {
      // A stream rewrites request_id, so each slot sends its own copy.
      for (int slot = 0; slot < flags_.concurrency; ++slot) {
        slot_requests_.push_back(std::make_shared<v1::AttentionRequest>(request));
      }
      for (const Client& client : clients_) sessions_.push_back(client.OpenStream());
    } else {
      // Serialized once: the generator's CPU goes to the transport, not to re-encoding the same
      // tensors for every call.
      request_.emplace(request);
    }
  }

  // Runs the load to the end; draws progress on stdout when it is a terminal.
  Report Run() {
    const bool progress = isatty(STDOUT_FILENO) == 1;
    {
      std::lock_guard<std::mutex> lock(mu_);
      start_ = Clock::now();
      measure_start_ = start_ + ToDuration(flags_.warmup_s);
      issue_end_ = measure_start_ + ToDuration(flags_.duration_s);
      last_completion_ = measure_start_;
      active_slots_ = flags_.concurrency;
    }
    const double cpu_start_s = ProcessCpuSeconds();
    const Clock::time_point wall_start = Clock::now();
    std::vector<std::thread> backward_threads;
    for (int slot = 0; slot < flags_.concurrency; ++slot) {
      if (backward_request_.has_value()) {
        backward_threads.emplace_back([this, slot] { BackwardLoop(slot); });
      } else {
        Issue(slot);
      }
    }
    std::unique_lock<std::mutex> lock(mu_);
    int64_t last_completed = 0;
    Clock::time_point last_draw = Clock::now();
    while (!done_cv_.wait_for(lock, std::chrono::milliseconds(200),
                              [this] { return active_slots_ == 0; })) {
      if (!progress) continue;
      const Clock::time_point now = Clock::now();
      const double rate =
          (completed_ - last_completed) / std::chrono::duration<double>(now - last_draw).count();
      last_completed = completed_;
      last_draw = now;
      DrawProgress(now, rate);
    }
    lock.unlock();
    for (std::thread& thread : backward_threads) thread.join();
    const double wall_s = std::chrono::duration<double>(Clock::now() - wall_start).count();
    const double client_cpu_cores = wall_s > 0 ? (ProcessCpuSeconds() - cpu_start_s) / wall_s : 0;
    if (progress) std::printf("\r%*s\r", 100, "");
    for (const std::unique_ptr<StreamSession>& session : sessions_) {
      absl::Status status = session->Finish();
      if (!status.ok()) std::fprintf(stderr, "stream ended with %s\n", status.ToString().c_str());
    }
    Report report = Summarize();
    report.client_cpu_cores = client_cpu_cores;
    return report;
  }

 private:
  static double ProcessCpuSeconds() {
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    const auto seconds = [](const timeval& t) { return t.tv_sec + t.tv_usec * 1e-6; };
    return seconds(usage.ru_utime) + seconds(usage.ru_stime);
  }

  static Clock::duration ToDuration(double seconds) {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  }

  bool StopIssuing(Clock::time_point now) const {
    if (flags_.requests > 0) return measured_issued_ >= flags_.requests;
    return now >= issue_end_;
  }

  // Claims the slot's next request at `now` (sets `measured`), or retires the slot and returns
  // false when the run is over.
  bool Claim(Clock::time_point now, bool* measured) {
    std::lock_guard<std::mutex> lock(mu_);
    if (StopIssuing(now)) {
      if (--active_slots_ == 0) done_cv_.notify_all();
      return false;
    }
    *measured = now >= measure_start_;
    if (*measured) ++measured_issued_;
    return true;
  }

  // A slot of unary backward calls: the client's AttentionBackward blocks, so each slot has its
  // thread, which sends the next call when the last one is answered.
  void BackwardLoop(int slot) {
    for (;;) {
      const Clock::time_point now = Clock::now();
      bool measured;
      if (!Claim(now, &measured)) return;
      Record(now, measured,
             clients_[slot % clients_.size()].AttentionBackward(*backward_request_, call_));
    }
  }

  // Sends the slot's next request, or retires the slot when the run is over.
  void Issue(int slot) {
    const Clock::time_point now = Clock::now();
    bool measured;
    if (!Claim(now, &measured)) return;
    if (!flags_.stream) {
      clients_[slot % clients_.size()].AttentionAsync(
          *request_,
          [this, slot, now, measured](absl::StatusOr<v1::AttentionResponse> result) {
            Record(now, measured, result);
            Issue(slot);
          },
          call_);
      return;
    }
    // A session that has ended refuses at once, on this thread: the slot retires instead of
    // spinning through refusals.
    t_submitting = true;
    sessions_[slot % sessions_.size()]->Submit(
        slot_requests_[slot],
        [this, slot, now, measured](absl::StatusOr<v1::AttentionResponse> result) {
          Record(now, measured, result);
          if (t_submitting) {
            std::lock_guard<std::mutex> lock(mu_);
            if (--active_slots_ == 0) done_cv_.notify_all();
            return;
          }
          Issue(slot);
        });
    t_submitting = false;
  }

  void Record(Clock::time_point issued, bool measured,
              const absl::StatusOr<v1::AttentionResponse>& result) {
    const Clock::time_point now = Clock::now();
    const int64_t response_bytes = result.ok() ? static_cast<int64_t>(result->ByteSizeLong()) : 0;
    std::lock_guard<std::mutex> lock(mu_);
    ++completed_;
    if (!result.ok()) ++failed_total_;
    if (!measured) return;
    last_completion_ = std::max(last_completion_, now);
    if (!result.ok()) {
      ++failed_;
      auto& [count, message] = errors_[absl::StatusCodeToString(result.status().code())];
      if (count++ == 0) message = std::string(result.status().message());
      return;
    }
    latency_ns_.push_back(
        std::chrono::duration_cast<std::chrono::nanoseconds>(now - issued).count());
    const v1::Timings& t = result->timings();
    queue_ns_.push_back(t.queue_ns());
    transfer_ns_.push_back(t.transfer_ns());
    kernel_ns_.push_back(t.kernel_ns());
    total_ns_.push_back(t.total_ns());
    batch_requests_sum_ += result->batch().requests();
    response_bytes_ += response_bytes;
  }

  void DrawProgress(Clock::time_point now, double rate) const {
    double fraction;
    const bool warmup = now < measure_start_;
    const double warmup_s = flags_.warmup_s;
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    if (warmup) {
      fraction = warmup_s > 0 ? elapsed / warmup_s : 1;
    } else if (flags_.requests > 0) {
      fraction = static_cast<double>(latency_ns_.size() + failed_) / flags_.requests;
    } else {
      fraction = (elapsed - warmup_s) / flags_.duration_s;
    }
    fraction = std::clamp(fraction, 0.0, 1.0);
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(fraction * kWidth);
    std::printf(
        "\r%s [%s%s] %3.0f%%  %lld ok  %lld failed  %.1f req/s   ", warmup ? "warmup " : "running",
        std::string(filled, '#').c_str(), std::string(kWidth - filled, '.').c_str(), fraction * 100,
        static_cast<long long>(latency_ns_.size()), static_cast<long long>(failed_total_), rate);
    std::fflush(stdout);
  }

  Report Summarize() {
    std::lock_guard<std::mutex> lock(mu_);
    Report r;
    r.ok = static_cast<int64_t>(latency_ns_.size());
    r.failed = failed_;
    r.errors = errors_;
    r.duration_s = std::chrono::duration<double>(last_completion_ - measure_start_).count();
    if (r.duration_s > 0) {
      r.requests_per_s = r.ok / r.duration_s;
      r.tokens_per_s = static_cast<double>(r.ok * tokens_per_request_) / r.duration_s;
      r.request_bytes_per_s =
          static_cast<double>((r.ok + r.failed) * request_bytes_) / r.duration_s;
      r.response_bytes_per_s = static_cast<double>(response_bytes_) / r.duration_s;
    }
    std::sort(latency_ns_.begin(), latency_ns_.end());
    r.p50_ms = Percentile(latency_ns_, 0.5) * 1e-6;
    r.p90_ms = Percentile(latency_ns_, 0.9) * 1e-6;
    r.p99_ms = Percentile(latency_ns_, 0.99) * 1e-6;
    r.max_ms = latency_ns_.empty() ? 0 : latency_ns_.back() * 1e-6;
    double sum = 0;
    for (const int64_t ns : latency_ns_) sum += static_cast<double>(ns);
    r.mean_ms = r.ok > 0 ? sum / r.ok * 1e-6 : 0;
    r.queue_ms = MedianMs(queue_ns_);
    r.transfer_ms = MedianMs(transfer_ns_);
    r.kernel_ms = MedianMs(kernel_ns_);
    r.total_ms = MedianMs(total_ns_);
    r.batch_requests_mean = r.ok > 0 ? static_cast<double>(batch_requests_sum_) / r.ok : 0;
    return r;
  }

  const BenchFlags flags_;
  std::vector<Client> clients_;
  CallOptions call_;
  std::optional<SerializedRequest> request_;                          // unary forward
  std::optional<v1::AttentionRequest> backward_request_;              // unary backward
  std::vector<std::shared_ptr<v1::AttentionRequest>> slot_requests_;  // stream
  std::vector<std::unique_ptr<StreamSession>> sessions_;              // stream
  int64_t tokens_per_request_ = 0;
  int64_t request_bytes_ = 0;

  std::mutex mu_;
  std::condition_variable done_cv_;
  Clock::time_point start_, measure_start_, issue_end_, last_completion_;
  int active_slots_ = 0;
  int64_t measured_issued_ = 0;
  int64_t completed_ = 0, failed_total_ = 0;  // all requests, warmup included (progress)
  int64_t failed_ = 0;                        // measured
  std::vector<int64_t> latency_ns_, queue_ns_, transfer_ns_, kernel_ns_, total_ns_;
  int64_t batch_requests_sum_ = 0;
  int64_t response_bytes_ = 0;
  std::map<std::string, std::pair<int64_t, std::string>> errors_;
};

std::string Shape(const v1::Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.shape(), ", "), "]");
}

void PrintReport(const std::string& target, const BenchFlags& flags,
                 const v1::AttentionRequest& request, const ProblemShape& shape, const Report& r) {
  const auto row = [](const char* name, const std::string& value) {
    std::printf("%-22s %s\n", name, value.c_str());
  };
  row("target",
      absl::StrFormat("%s  %s%s  concurrency=%d  channels=%d", target,
                      flags.stream ? "stream" : "unary", flags.backward ? " backward" : "",
                      flags.concurrency, flags.channels));
  row("problem", absl::StrFormat("%s q%s k/v%s causal=%s  %d query tokens, %.1f KiB/request",
                                 DTypeName(request.q().dtype()), Shape(request.q()),
                                 Shape(request.k()), request.causal() ? "true" : "false",
                                 shape.query_tokens, request.ByteSizeLong() / 1024.0));
  row("measured", absl::StrFormat("%.2f s after %.1f s warmup: %d ok, %d failed", r.duration_s,
                                  flags.warmup_s, r.ok, r.failed));
  row("throughput", absl::StrFormat("%.1f req/s   %.0f tokens/s   request %.1f MB/s   "
                                    "response %.1f MB/s",
                                    r.requests_per_s, r.tokens_per_s, r.request_bytes_per_s / 1e6,
                                    r.response_bytes_per_s / 1e6));
  row("latency (client, ms)", absl::StrFormat("p50 %.3f   p90 %.3f   p99 %.3f   max %.3f   "
                                              "mean %.3f",
                                              r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms, r.mean_ms));
  row("server median (ms)", absl::StrFormat("queue %.3f   transfer %.3f   kernel %.3f   "
                                            "total %.3f",
                                            r.queue_ms, r.transfer_ms, r.kernel_ms, r.total_ms));
  row("server batch", absl::StrFormat("%.2f requests per launch (mean)", r.batch_requests_mean));
  row("load generator",
      absl::StrFormat("%.2f CPU cores busy (mean over the run)", r.client_cpu_cores));
  for (const auto& [code, error] : r.errors) {
    row("error", absl::StrFormat("%s x %d: %s", code, error.first, error.second));
  }
}

std::string ReportJson(const std::string& target, const BenchFlags& flags,
                       const v1::AttentionRequest& request, const ProblemShape& shape,
                       const Report& r) {
  std::string errors;
  for (const auto& [code, error] : r.errors) {
    absl::StrAppend(&errors, errors.empty() ? "" : ", ", JsonString(code),
                    absl::StrFormat(": {\"count\": %d, \"message\": ", error.first),
                    JsonString(error.second), "}");
  }
  return absl::StrFormat(
      "{\n"
      "  \"target\": %s,\n"
      "  \"mode\": \"%s\",\n"
      "  \"pass\": \"%s\",\n"
      "  \"concurrency\": %d,\n"
      "  \"channels\": %d,\n"
      "  \"problem\": {\"dtype\": \"%s\", \"layout\": \"%s\", \"batch\": %d, "
      "\"seqlen_q\": %d, \"seqlen_k\": %d, \"q_heads\": %d, \"kv_heads\": %d, "
      "\"head_dim\": %d, \"causal\": %s, \"query_tokens\": %d, \"request_bytes\": %d},\n"
      "  \"warmup_s\": %g,\n"
      "  \"duration_s\": %.6f,\n"
      "  \"requests_ok\": %d,\n"
      "  \"requests_failed\": %d,\n"
      "  \"throughput\": {\"requests_per_s\": %.3f, \"tokens_per_s\": %.3f, "
      "\"request_bytes_per_s\": %.1f, \"response_bytes_per_s\": %.1f},\n"
      "  \"latency_ms\": {\"p50\": %.6f, \"p90\": %.6f, \"p99\": %.6f, \"max\": %.6f, "
      "\"mean\": %.6f},\n"
      "  \"server_ms\": {\"queue_p50\": %.6f, \"transfer_p50\": %.6f, \"kernel_p50\": %.6f, "
      "\"total_p50\": %.6f},\n"
      "  \"server_batch_requests_mean\": %.3f,\n"
      "  \"client_cpu_cores\": %.3f,\n"
      "  \"errors\": {%s}\n"
      "}\n",
      JsonString(target), flags.stream ? "stream" : "unary",
      flags.backward ? "backward" : "forward", flags.concurrency, flags.channels,
      DTypeName(request.q().dtype()), shape.packed ? "packed" : "dense", shape.batch,
      shape.seqlen_q, shape.seqlen_k, shape.q_heads, shape.kv_heads, shape.head_dim,
      request.causal() ? "true" : "false", shape.query_tokens, request.ByteSizeLong(),
      flags.warmup_s, r.duration_s, r.ok, r.failed, r.requests_per_s, r.tokens_per_s,
      r.request_bytes_per_s, r.response_bytes_per_s, r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms,
      r.mean_ms, r.queue_ms, r.transfer_ms, r.kernel_ms, r.total_ms, r.batch_requests_mean,
      r.client_cpu_cores, errors);
}

}  // namespace

int BenchCommand(const std::vector<std::string>& args) {
  ConnectionFlags connection;
  ProblemFlags problem;
  BenchFlags bench;
  FlagSet flags(kUsage);
  connection.Register(flags);
  problem.Register(flags, /*with_shape=*/true);
  flags.Add("concurrency", &bench.concurrency, "Requests in flight");
  flags.Add("duration_s", &bench.duration_s, "Measured seconds (after the warmup)");
  flags.Add("requests", &bench.requests, "Measured requests instead of a duration (0: duration)");
  flags.Add("warmup_s", &bench.warmup_s, "Seconds of load before measuring");
  flags.Add("stream", &bench.stream, "Send on AttentionStream (one stream per channel)");
  flags.Add("channels", &bench.channels, "TCP connections (each its own gRPC channel)");
  flags.Add("timeout_ms", &bench.timeout_ms, "Deadline of each request (0: none)");
  flags.Add("json", &bench.json, "Also write the results as JSON to this file");
  flags.Add("backward", &bench.backward,
            "Time the backward pass: the answer of one forward call (with lse) sent back as "
            "AttentionBackward requests with a random grad_o");
  flags.Add("deterministic", &bench.deterministic,
            "With --backward: ask for bit-identical gradients (AttentionRequest.deterministic)");
  if (absl::Status status = flags.Parse(args); !status.ok()) return Fail(status);
  if (flags.help_requested()) {
    std::printf("%s", flags.Usage().c_str());
    return 0;
  }
  if (flags.IsSet("duration_s") && flags.IsSet("requests")) {
    return Fail(
        absl::InvalidArgumentError("--requests: give --duration_s or --requests, not both"));
  }
  if (bench.concurrency <= 0) return Fail(absl::InvalidArgumentError("--concurrency: must be > 0"));
  if (bench.channels <= 0) return Fail(absl::InvalidArgumentError("--channels: must be > 0"));
  if (bench.requests < 0) return Fail(absl::InvalidArgumentError("--requests: must be >= 0"));
  if (bench.requests == 0 && !(bench.duration_s > 0)) {
    return Fail(absl::InvalidArgumentError("--duration_s: must be > 0"));
  }
  if (!(bench.warmup_s >= 0)) return Fail(absl::InvalidArgumentError("--warmup_s: must be >= 0"));
  if (bench.deterministic && !bench.backward) {
    return Fail(absl::InvalidArgumentError("--deterministic: needs --backward"));
  }

  // Before the channels' threads allocate. Every call frees a response of the request's size or
  // so, and glibc's dynamic thresholds hand such blocks back to the system and fault them in
  // again page by page on the next call: with 256 KiB answers that was a third of the generator's
  // CPU time, taken from the server it shares the host with. Blocks up to 32 MiB now come from
  // the heap, which keeps up to 1 GiB of freed memory (a load generator's memory is not the
  // measurement).
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  absl::StatusOr<v1::AttentionRequest> request = RandomRequest(problem);
  if (!request.ok()) return Fail(request.status());
  absl::StatusOr<ProblemShape> shape = ShapeOf(*request);
  if (!shape.ok()) return Fail(shape.status());
  std::vector<Client> clients;
  for (int i = 0; i < bench.channels; ++i) {
    absl::StatusOr<ClientOptions> options = connection.Options(bench.channels > 1);
    if (!options.ok()) return Fail(options.status());
    absl::StatusOr<Client> client = Client::Create(connection.target, *options);
    if (!client.ok()) return Fail(client.status());
    if (!client->WaitForConnected(std::chrono::seconds(10))) {
      return Fail(absl::UnavailableError(
          absl::StrCat("--target: cannot connect to ", connection.target, " within 10 s")));
    }
    clients.push_back(*std::move(client));
  }

  if (bench.backward) {
    // The forward once, for o and lse; its request then becomes the backward one.
    request->set_return_lse(true);
    CallOptions call;
    if (bench.timeout_ms > 0) call.timeout = std::chrono::milliseconds(bench.timeout_ms);
    absl::StatusOr<v1::AttentionResponse> answer = clients.front().Attention(*request, call);
    if (!answer.ok()) return Fail(answer.status());
    request = BackwardRequest(*request, *answer, problem.seed, bench.deterministic);
    if (!request.ok()) return Fail(request.status());
  }
  LoadGenerator generator(bench, std::move(clients), *request, *shape);
  const Report report = generator.Run();
  PrintReport(connection.target, bench, *request, *shape, report);
  if (!bench.json.empty()) {
    std::FILE* out = std::fopen(bench.json.c_str(), "w");
    if (out == nullptr) {
      return Fail(absl::PermissionDeniedError(absl::StrCat("--json: cannot create ", bench.json)));
    }
    const std::string json = ReportJson(connection.target, bench, *request, *shape, report);
    const bool written = std::fwrite(json.data(), 1, json.size(), out) == json.size();
    if (std::fclose(out) != 0 || !written) {
      return Fail(absl::InternalError(absl::StrCat("--json: cannot write ", bench.json)));
    }
  }
  return report.ok > 0 ? 0 : 1;
}

}  // namespace attention::client::cli
