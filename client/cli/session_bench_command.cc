// attention_cli session-bench: decode steps against server-held K/V sessions (issue 20). Creates
// --sessions sessions, fills each layer with --context tokens (Append), then has every session
// step through its layers, one Attend in flight per session (q and the new token's k and v: a
// decode step), all sessions on one SessionStream per replica. Reports steps/s, the step latency
// percentiles, the bytes a step puts on the wire against those of the stateless Attention call
// that computes the same step (which ships the whole context), and optionally the round trip of
// an echo server (fake_attention_server) for a message of the step's size, measured in the same
// run.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "attention/client/session.h"
#include "client/cli/commands.h"
#include "client/cli/common.h"

namespace attention::client::cli {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kUsage[] =
    "Usage: attention_cli session-bench --target=HOST:PORT [--sessions=64] [--layers=1]\n"
    "           [--context=8192] [--heads=32 --kv_heads=8 --head_dim=128 --dtype=bf16]\n"
    "           [--steps=64] [--warmup_steps=4] [--replica_pattern={replica}.NAME:PORT]\n"
    "           [--echo_target=HOST:PORT] [--json=out.json]\n"
    "       attention_cli session-bench --ab_targets=NAME=HOST:PORT,... --echo_target=HOST:PORT\n"
    "           [--ab_rounds=4] [--sessions=1] [...as above]\n"
    "\n"
    "Creates --sessions sessions of --layers layers, appends --context random tokens to every\n"
    "layer, then has each session run --steps decode steps (round robin over its layers; one\n"
    "Attend with q [1, heads, head_dim] and the new token's k and v in flight per session).\n"
    "Prints steps/s, step latency percentiles and the bytes per step against the stateless call.\n"
    "The server's session pool must hold sessions x layers x (context + steps) tokens\n"
    "(--session_pages x --session_page_bytes). A progress bar is drawn when stdout is a terminal.\n"
    "\n"
    "With --ab_targets (an A/B of servers in one process): fills the sessions of every named\n"
    "server once, then runs --ab_rounds rounds; each round runs every server in turn (the order\n"
    "rotated by one each round), each run truncating its sessions back to --context, stepping\n"
    "--warmup_steps + --steps and timing --echo_calls echo round trips right after. Prints a line\n"
    "per run and writes every run's figures to --json.";

struct SessionBenchFlags {
  int sessions = 64;
  int layers = 1;
  int64_t context = 8192;
  int heads = 32;
  int kv_heads = 8;
  int head_dim = 128;
  std::string dtype = "bf16";
  int64_t steps = 64;
  int64_t warmup_steps = 4;
  int64_t seed = 1;
  std::string replica_pattern;
  std::string echo_target;
  int64_t echo_calls = 200;
  std::string json;
  std::string ab_targets;
  int64_t ab_rounds = 4;
  int64_t ab_block = 0;
};

double Percentile(const std::vector<int64_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  const size_t rank = static_cast<size_t>(std::ceil(p * static_cast<double>(sorted.size())));
  return static_cast<double>(sorted[std::min(sorted.size(), std::max<size_t>(rank, 1)) - 1]);
}

// A progress bar on stdout when it is a terminal: "<phase> [####....]  n/total".
class Progress {
 public:
  explicit Progress(std::string phase, int64_t total)
      : phase_(std::move(phase)), total_(total), enabled_(isatty(STDOUT_FILENO) == 1) {}
  ~Progress() {
    if (enabled_) std::printf("\r%*s\r", 100, "");
    std::fflush(stdout);
  }
  void Update(int64_t done) {
    if (!enabled_) return;
    const Clock::time_point now = Clock::now();
    if (done < total_ && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    constexpr int kWidth = 30;
    const double fraction = total_ > 0 ? std::clamp(double(done) / total_, 0.0, 1.0) : 1;
    const int filled = static_cast<int>(fraction * kWidth);
    std::printf("\r%-8s [%s%s] %3.0f%%  %lld/%lld   ", phase_.c_str(),
                std::string(filled, '#').c_str(), std::string(kWidth - filled, '.').c_str(),
                fraction * 100, static_cast<long long>(done), static_cast<long long>(total_));
    std::fflush(stdout);
  }

 private:
  const std::string phase_;
  const int64_t total_;
  const bool enabled_;
  Clock::time_point last_;
};

// Random values of `dtype` (standard normal, rounded), reused for every row of the run: the
// values do not change the work.
std::string RandomBytes(v1::DType dtype, int64_t elements, std::mt19937_64& rng) {
  std::normal_distribution<float> normal;
  std::string bytes(static_cast<size_t>(elements * DTypeSize(dtype)), '\0');
  for (int64_t i = 0; i < elements; ++i) {
    const float f = normal(rng);
    if (dtype == v1::FLOAT32) {
      std::memcpy(&bytes[4 * i], &f, 4);
    } else {
      // Rounding is irrelevant here: truncation to the upper half is a valid bfloat16, and
      // float16 gets the same bit pattern's value (finite for |f| < 65504).
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      const uint16_t half = dtype == v1::BFLOAT16 ? static_cast<uint16_t>(bits >> 16)
                                                  : static_cast<uint16_t>(0x3c00 | (bits & 0x3ff));
      std::memcpy(&bytes[2 * i], &half, 2);
    }
  }
  return bytes;
}

struct Results {
  double fill_s = 0, decode_s = 0;
  int64_t steps_ok = 0, steps_failed = 0;
  std::vector<int64_t> latency_ns;  // measured steps, sorted
  double steps_per_s = 0;
  int64_t step_request_bytes = 0, step_response_bytes = 0;
  int64_t stateless_request_bytes = 0, stateless_response_bytes = 0;
  double batch_sequences_mean = 0;
  std::vector<int64_t> echo_ns;  // sorted
  int64_t echo_request_bytes = 0;
  std::string first_error;
};

// Each session's chain of steps: the next Attend is sent from the previous one's callback.
class Decoder {
 public:
  Decoder(const SessionBenchFlags& flags, std::vector<Session> sessions, v1::DType dtype,
          const std::string& q, const std::string& k, const std::string& v)
      : flags_(flags), sessions_(std::move(sessions)), dtype_(dtype), q_(q), k_(k), v_(v) {}

  void Run(Results& results) {
    Progress progress("decode", static_cast<int64_t>(sessions_.size()) * TotalSteps());
    {
      std::lock_guard<std::mutex> lock(mu_);
      active_ = static_cast<int>(sessions_.size());
    }
    for (size_t s = 0; s < sessions_.size(); ++s) Step(s, 0);
    std::unique_lock<std::mutex> lock(mu_);
    while (
        !done_cv_.wait_for(lock, std::chrono::milliseconds(100), [this] { return active_ == 0; })) {
      progress.Update(completed_);
    }
    progress.Update(completed_);
    results.decode_s = std::chrono::duration<double>(last_ - measure_start_).count();
    results.steps_ok = static_cast<int64_t>(latency_ns_.size());
    results.steps_failed = failed_;
    results.first_error = first_error_;
    std::sort(latency_ns_.begin(), latency_ns_.end());
    results.latency_ns = latency_ns_;
    results.steps_per_s = results.decode_s > 0 ? results.steps_ok / results.decode_s : 0;
    results.batch_sequences_mean =
        results.steps_ok > 0 ? static_cast<double>(batch_sequences_sum_) / results.steps_ok : 0;
  }

  // The AttendArgs of one step (the same q, k and v every time).
  AttendArgs StepArgs() const {
    AttendArgs args;
    args.q = {dtype_, q_.data(), {1, flags_.heads, flags_.head_dim}};
    args.k_new = TensorView{dtype_, k_.data(), {1, flags_.kv_heads, flags_.head_dim}};
    args.v_new = TensorView{dtype_, v_.data(), {1, flags_.kv_heads, flags_.head_dim}};
    args.causal = true;
    return args;
  }

 private:
  int64_t TotalSteps() const { return flags_.warmup_steps + flags_.steps; }

  void Step(size_t s, int64_t step) {
    const Clock::time_point sent = Clock::now();
    if (step == flags_.warmup_steps) {
      std::lock_guard<std::mutex> lock(mu_);
      if (measure_start_ == Clock::time_point()) measure_start_ = sent;
    }
    sessions_[s].AttendAsync(
        static_cast<int>(step % flags_.layers), StepArgs(),
        [this, s, step, sent](absl::StatusOr<v1::AttentionResponse> answer) {
          const Clock::time_point now = Clock::now();
          bool next = false;
          {
            std::lock_guard<std::mutex> lock(mu_);
            ++completed_;
            if (!answer.ok()) {
              ++failed_;
              if (first_error_.empty()) first_error_ = answer.status().ToString();
            } else if (step >= flags_.warmup_steps) {
              latency_ns_.push_back(
                  std::chrono::duration_cast<std::chrono::nanoseconds>(now - sent).count());
              batch_sequences_sum_ += answer->batch().sequences();
              last_ = std::max(last_, now);
            }
            next = answer.ok() && step + 1 < TotalSteps();
            if (!next) {
              completed_ += TotalSteps() - step - 1;  // the steps this session will not run
              if (--active_ == 0) done_cv_.notify_all();
            }
          }
          if (next) Step(s, step + 1);
        });
  }

  const SessionBenchFlags& flags_;
  std::vector<Session> sessions_;
  const v1::DType dtype_;
  const std::string& q_;
  const std::string& k_;
  const std::string& v_;

  std::mutex mu_;
  std::condition_variable done_cv_;
  int active_ = 0;
  int64_t completed_ = 0, failed_ = 0;
  Clock::time_point measure_start_, last_;
  std::vector<int64_t> latency_ns_;
  int64_t batch_sequences_sum_ = 0;
  std::string first_error_;
};

// The echo's request for a step of `bytes` bytes: q [1, n, 1, head_dim] holding the step's bytes;
// k and v one row.
v1::AttentionRequest EchoRequest(const SessionBenchFlags& flags, int64_t bytes, v1::DType dtype) {
  const int64_t row = int64_t{flags.head_dim} * DTypeSize(dtype);
  const int64_t rows = std::max<int64_t>(1, bytes / row);
  v1::AttentionRequest request;
  for (v1::Tensor* t : {request.mutable_q(), request.mutable_k(), request.mutable_v()}) {
    t->set_dtype(dtype);
    t->add_shape(1);
    t->add_shape(t == request.mutable_q() ? rows : 1);
    t->add_shape(1);
    t->add_shape(flags.head_dim);
    t->set_data(
        std::string(static_cast<size_t>((t == request.mutable_q() ? rows : 1) * row), '\0'));
  }
  return request;
}

// `calls` echo round trips after `warmup` unmeasured ones, one at a time; appends their times.
absl::Status EchoCalls(const Client& echo, const v1::AttentionRequest& request, int64_t warmup,
                       int64_t calls, std::vector<int64_t>& ns, Progress* progress = nullptr) {
  for (int64_t i = 0; i < warmup + calls; ++i) {
    const Clock::time_point sent = Clock::now();
    absl::StatusOr<v1::AttentionResponse> answer = echo.Attention(request);
    if (!answer.ok()) return answer.status();
    if (i >= warmup) {
      ns.push_back(
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - sent).count());
      if (progress != nullptr) progress->Update(i - warmup + 1);
    }
  }
  return absl::OkStatus();
}

// Round trips of AttentionRequests of `bytes` bytes to an echo server, one at a time.
absl::Status MeasureEcho(const ConnectionFlags& connection, const SessionBenchFlags& flags,
                         int64_t bytes, v1::DType dtype, Results& results) {
  absl::StatusOr<ClientOptions> options = connection.Options();
  if (!options.ok()) return options.status();
  absl::StatusOr<Client> echo = Client::Create(flags.echo_target, *options);
  if (!echo.ok()) return echo.status();
  const v1::AttentionRequest request = EchoRequest(flags, bytes, dtype);
  results.echo_request_bytes = static_cast<int64_t>(request.ByteSizeLong());
  Progress progress("echo", flags.echo_calls);
  if (absl::Status s = EchoCalls(*echo, request, 10, flags.echo_calls, results.echo_ns, &progress);
      !s.ok()) {
    return s;
  }
  std::sort(results.echo_ns.begin(), results.echo_ns.end());
  return absl::OkStatus();
}

void PrintResults(const std::string& target, const SessionBenchFlags& f, const Results& r) {
  const auto row = [](const char* name, const std::string& value) {
    std::printf("%-22s %s\n", name, value.c_str());
  };
  row("target", absl::StrFormat("%s  %d sessions x %d layers, one stream per replica", target,
                                f.sessions, f.layers));
  row("problem", absl::StrFormat("%s  q [1, %d, %d]  k/v [1, %d, %d] per step  context %d", f.dtype,
                                 f.heads, f.head_dim, f.kv_heads, f.head_dim, f.context));
  row("fill", absl::StrFormat("%.2f s (Append of %d tokens to %d layers)", r.fill_s, f.context,
                              f.sessions * f.layers));
  row("measured", absl::StrFormat("%.2f s: %d steps ok, %d failed (after %d warmup steps each)",
                                  r.decode_s, r.steps_ok, r.steps_failed, f.warmup_steps));
  row("throughput", absl::StrFormat("%.1f steps/s   %.2f sequences per launch (mean)",
                                    r.steps_per_s, r.batch_sequences_mean));
  row("step latency (ms)",
      absl::StrFormat("p50 %.3f   p90 %.3f   p99 %.3f   max %.3f",
                      Percentile(r.latency_ns, 0.5) * 1e-6, Percentile(r.latency_ns, 0.9) * 1e-6,
                      Percentile(r.latency_ns, 0.99) * 1e-6,
                      r.latency_ns.empty() ? 0.0 : r.latency_ns.back() * 1e-6));
  const double step_bytes = static_cast<double>(r.step_request_bytes + r.step_response_bytes);
  const double stateless_bytes =
      static_cast<double>(r.stateless_request_bytes + r.stateless_response_bytes);
  row("bytes per step",
      absl::StrFormat("session %d + %d   stateless %d + %d   (%.0fx fewer)", r.step_request_bytes,
                      r.step_response_bytes, r.stateless_request_bytes, r.stateless_response_bytes,
                      step_bytes > 0 ? stateless_bytes / step_bytes : 0.0));
  if (!r.echo_ns.empty()) {
    const double echo = Percentile(r.echo_ns, 0.5);
    row("echo round trip (ms)",
        absl::StrFormat("p50 %.3f for %d request bytes   lone-step p50 / echo p50 = %.2f",
                        echo * 1e-6, r.echo_request_bytes,
                        echo > 0 ? Percentile(r.latency_ns, 0.5) / echo : 0.0));
  }
  if (!r.first_error.empty()) row("error", r.first_error);
}

std::string ResultsJson(const std::string& target, const SessionBenchFlags& f, const Results& r) {
  return absl::StrFormat(
      "{\n"
      "  \"target\": \"%s\",\n"
      "  \"sessions\": %d, \"layers\": %d, \"context\": %d,\n"
      "  \"problem\": {\"dtype\": \"%s\", \"q_heads\": %d, \"kv_heads\": %d, \"head_dim\": %d},\n"
      "  \"fill_s\": %.6f,\n"
      "  \"decode_s\": %.6f,\n"
      "  \"steps_ok\": %d,\n"
      "  \"steps_failed\": %d,\n"
      "  \"steps_per_s\": %.3f,\n"
      "  \"batch_sequences_mean\": %.3f,\n"
      "  \"step_latency_ms\": {\"p50\": %.6f, \"p90\": %.6f, \"p99\": %.6f},\n"
      "  \"bytes_per_step\": {\"session_request\": %d, \"session_response\": %d, "
      "\"stateless_request\": %d, \"stateless_response\": %d},\n"
      "  \"echo\": {\"request_bytes\": %d, \"p50_ms\": %.6f}\n"
      "}\n",
      target, f.sessions, f.layers, f.context, f.dtype, f.heads, f.kv_heads, f.head_dim, r.fill_s,
      r.decode_s, r.steps_ok, r.steps_failed, r.steps_per_s, r.batch_sequences_mean,
      Percentile(r.latency_ns, 0.5) * 1e-6, Percentile(r.latency_ns, 0.9) * 1e-6,
      Percentile(r.latency_ns, 0.99) * 1e-6, r.step_request_bytes, r.step_response_bytes,
      r.stateless_request_bytes, r.stateless_response_bytes, r.echo_request_bytes,
      Percentile(r.echo_ns, 0.5) * 1e-6);
}

// Appends `context` rows to every layer of every session, in messages of at most ~4 MiB.
absl::Status Fill(const std::vector<Session>& sessions, const SessionBenchFlags& f, v1::DType dtype,
                  const std::string& chunk, int64_t chunk_rows) {
  Progress progress("fill", static_cast<int64_t>(sessions.size()) * f.layers);
  int64_t done = 0;
  for (const Session& session : sessions) {
    for (int layer = 0; layer < f.layers; ++layer) {
      for (int64_t filled = 0; filled < f.context; filled += chunk_rows) {
        const int64_t n = std::min(chunk_rows, f.context - filled);
        const TensorView rows{dtype, chunk.data(), {n, f.kv_heads, f.head_dim}};
        absl::StatusOr<int64_t> tokens = session.Append(layer, rows, rows);
        if (!tokens.ok()) {
          return absl::Status(tokens.status().code(),
                              absl::StrCat("Append: ", tokens.status().message()));
        }
      }
      progress.Update(++done);
    }
  }
  return absl::OkStatus();
}

// The wire bytes of one of `decoder`'s steps on `session` (a SessionRequest).
absl::StatusOr<int64_t> StepRequestBytes(const Session& session, const Decoder& decoder) {
  absl::StatusOr<v1::AttendRequest> attend =
      BuildAttendRequest(session.id(), 0, decoder.StepArgs());
  if (!attend.ok()) return attend.status();
  v1::SessionRequest step;
  *step.mutable_attend() = *attend;
  step.set_request_id(1 << 20);
  return static_cast<int64_t>(step.ByteSizeLong());
}

// One run of an A/B on `sessions`: --warmup_steps, then --steps steps and --echo_calls echo
// round trips in alternating blocks of --ab_block each (both see the host as it is at the time),
// or all steps then all echo calls when --ab_block is 0. Sorted step and echo times in `results`.
absl::Status AbRun(const ConnectionFlags& connection, const SessionBenchFlags& f,
                   const std::vector<Session>& sessions, v1::DType dtype, const std::string& q,
                   const std::string& k, const std::string& v, Results& results) {
  absl::StatusOr<ClientOptions> options = connection.Options();
  if (!options.ok()) return options.status();
  absl::StatusOr<Client> echo = Client::Create(f.echo_target, *options);
  if (!echo.ok()) return echo.status();
  {
    const Decoder shape(f, sessions, dtype, q, k, v);
    absl::StatusOr<int64_t> step_bytes = StepRequestBytes(sessions[0], shape);
    if (!step_bytes.ok()) return step_bytes.status();
    const v1::AttentionRequest request = EchoRequest(f, *step_bytes, dtype);
    results.echo_request_bytes = static_cast<int64_t>(request.ByteSizeLong());
    if (absl::Status s = EchoCalls(*echo, request, 10, 0, results.echo_ns); !s.ok()) return s;
    const int64_t block = f.ab_block > 0 ? f.ab_block : std::max(f.steps, f.echo_calls);
    std::vector<int64_t> steps_ns;
    int64_t steps_left = f.steps, echo_left = f.echo_calls;
    bool first = true;
    while (steps_left > 0 || echo_left > 0) {
      if (steps_left > 0) {
        SessionBenchFlags part = f;
        part.steps = std::min(block, steps_left);
        part.warmup_steps = first ? f.warmup_steps : 0;
        Decoder decoder(part, sessions, dtype, q, k, v);
        Results got;
        decoder.Run(got);
        steps_ns.insert(steps_ns.end(), got.latency_ns.begin(), got.latency_ns.end());
        results.steps_failed += got.steps_failed;
        if (results.first_error.empty()) results.first_error = got.first_error;
        if (got.steps_failed > 0) break;
        steps_left -= part.steps;
        first = false;
      }
      if (echo_left > 0) {
        const int64_t calls = std::min(block, echo_left);
        if (absl::Status s = EchoCalls(*echo, request, 0, calls, results.echo_ns); !s.ok()) {
          return s;
        }
        echo_left -= calls;
      }
    }
    std::sort(steps_ns.begin(), steps_ns.end());
    results.latency_ns = std::move(steps_ns);
    std::sort(results.echo_ns.begin(), results.echo_ns.end());
  }
  return absl::OkStatus();
}

// One server of an A/B (--ab_targets): its name, address, client and sessions.
struct AbServer {
  std::string name, target;
  std::optional<SessionClient> client;
  std::vector<Session> sessions;
};

// --ab_targets: NAME=HOST:PORT pairs, comma-separated.
absl::StatusOr<std::vector<AbServer>> ParseAbTargets(const std::string& text) {
  std::vector<AbServer> servers;
  size_t begin = 0;
  while (begin <= text.size()) {
    const size_t end = std::min(text.find(',', begin), text.size());
    const std::string item = text.substr(begin, end - begin);
    const size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == item.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--ab_targets: each item must be NAME=HOST:PORT, got \"", item, "\""));
    }
    AbServer server;
    server.name = item.substr(0, eq);
    server.target = item.substr(eq + 1);
    servers.push_back(std::move(server));
    begin = end + 1;
  }
  return servers;
}

// The A/B mode (--ab_targets; kUsage). Returns the process's exit code.
int RunAb(const ConnectionFlags& flags, const SessionBenchFlags& f, v1::DType dtype,
          const SessionOptions& shape, const std::string& chunk, int64_t chunk_rows,
          const std::string& q, const std::string& k, const std::string& v) {
  absl::StatusOr<std::vector<AbServer>> servers = ParseAbTargets(f.ab_targets);
  if (!servers.ok()) return Fail(servers.status());
  // The connection options of every server (and the echo's), whatever --target says.
  ConnectionFlags connection = flags;
  connection.target = servers->front().target;
  const Clock::time_point start = Clock::now();
  absl::StatusOr<ClientOptions> options = connection.Options();
  if (!options.ok()) return Fail(options.status());
  for (AbServer& server : *servers) {
    SessionClientOptions session_options;
    session_options.client = *options;
    absl::StatusOr<SessionClient> client = SessionClient::Create(server.target, session_options);
    if (!client.ok()) return Fail(client.status());
    server.client.emplace(std::move(*client));
    for (int i = 0; i < f.sessions; ++i) {
      CallOptions call;
      call.wait_for_ready = true;
      call.timeout = std::chrono::seconds(30);
      absl::StatusOr<Session> session = server.client->CreateSession(shape, call);
      if (!session.ok()) return Fail(session.status());
      server.sessions.push_back(*session);
    }
    if (absl::Status filled = Fill(server.sessions, f, dtype, chunk, chunk_rows); !filled.ok()) {
      return Fail(filled);
    }
  }
  const double fill_s = std::chrono::duration<double>(Clock::now() - start).count();
  std::string rows;
  int failed = 0;
  const size_t n = servers->size();
  for (int64_t round = 0; round < f.ab_rounds; ++round) {
    for (size_t i = 0; i < n; ++i) {
      AbServer& server = (*servers)[(i + static_cast<size_t>(round)) % n];
      for (const Session& session : server.sessions) {
        if (absl::Status cut = session.Truncate(f.context); !cut.ok()) return Fail(cut);
      }
      Results results;
      if (absl::Status ran = AbRun(connection, f, server.sessions, dtype, q, k, v, results);
          !ran.ok()) {
        return Fail(ran);
      }
      const double step = Percentile(results.latency_ns, 0.5) * 1e-6;
      const double echo = Percentile(results.echo_ns, 0.5) * 1e-6;
      failed += results.steps_failed > 0 ? 1 : 0;
      std::printf(
          "%-8s round %lld: step p50 %.3f ms, echo p50 %.3f ms, ratio %.2f  (step p90 "
          "%.3f, p99 %.3f)%s\n",
          server.name.c_str(), static_cast<long long>(round + 1), step, echo,
          echo > 0 ? step / echo : 0.0, Percentile(results.latency_ns, 0.9) * 1e-6,
          Percentile(results.latency_ns, 0.99) * 1e-6,
          results.first_error.empty() ? "" : ("  error: " + results.first_error).c_str());
      std::fflush(stdout);
      absl::StrAppend(
          &rows, rows.empty() ? "" : ",\n",
          absl::StrFormat("  {\"server\": \"%s\", \"round\": %d, \"step_p50_ms\": %.6f, "
                          "\"step_p90_ms\": %.6f, \"step_p99_ms\": %.6f, "
                          "\"echo_p50_ms\": %.6f, \"steps_failed\": %d}",
                          server.name, round + 1, step, Percentile(results.latency_ns, 0.9) * 1e-6,
                          Percentile(results.latency_ns, 0.99) * 1e-6, echo, results.steps_failed));
    }
  }
  for (const AbServer& server : *servers) {
    for (const Session& s : server.sessions) s.Release().IgnoreError();
  }
  std::printf("ab: %lld runs in %.1f s after %.1f s of sessions created and filled\n",
              static_cast<long long>(f.ab_rounds * static_cast<int64_t>(n)),
              std::chrono::duration<double>(Clock::now() - start).count() - fill_s, fill_s);
  if (!f.json.empty()) {
    std::FILE* out = std::fopen(f.json.c_str(), "w");
    const std::string json = absl::StrCat("[\n", rows, "\n]\n");
    if (out == nullptr || std::fwrite(json.data(), 1, json.size(), out) != json.size() ||
        std::fclose(out) != 0) {
      return Fail(absl::InternalError(absl::StrCat("--json: cannot write ", f.json)));
    }
  }
  return failed == 0 ? 0 : 1;
}

}  // namespace

int SessionBenchCommand(const std::vector<std::string>& args) {
  ConnectionFlags connection;
  SessionBenchFlags f;
  FlagSet flags(kUsage);
  connection.Register(flags);
  flags.Add("sessions", &f.sessions, "Sessions stepping at once");
  flags.Add("layers", &f.layers, "Layers per session (steps go round robin over them)");
  flags.Add("context", &f.context, "Tokens appended to every layer before the steps");
  flags.Add("heads", &f.heads, "Query heads");
  flags.Add("kv_heads", &f.kv_heads, "K/V heads");
  flags.Add("head_dim", &f.head_dim, "Head dimension");
  flags.Add("dtype", &f.dtype, "bf16, fp16 or fp32");
  flags.Add("steps", &f.steps, "Measured decode steps per session");
  flags.Add("warmup_steps", &f.warmup_steps, "Unmeasured steps per session first");
  flags.Add("seed", &f.seed, "Seed of the random values");
  flags.Add("replica_pattern", &f.replica_pattern,
            "Address of a replica from its name, e.g. {replica}.attention-sessions:50051 (empty: "
            "every call goes to --target)");
  flags.Add("echo_target", &f.echo_target,
            "An echo server (fake_attention_server): also time its round trip for a message of "
            "the step's size");
  flags.Add("echo_calls", &f.echo_calls, "Measured echo round trips");
  flags.Add("json", &f.json, "Also write the results as JSON to this file");
  flags.Add("ab_targets", &f.ab_targets,
            "NAME=HOST:PORT,...: an A/B of these servers in one process instead of --target "
            "(needs --echo_target)");
  flags.Add("ab_rounds", &f.ab_rounds, "Rounds of the A/B (every server once a round)");
  flags.Add("ab_block", &f.ab_block,
            "A/B runs alternate blocks of this many steps and echo calls (0: all steps, then all "
            "echo calls)");
  if (absl::Status status = flags.Parse(args); !status.ok()) return Fail(status);
  if (flags.help_requested()) {
    std::printf("%s", flags.Usage().c_str());
    return 0;
  }
  for (const auto& [name, value] :
       std::initializer_list<std::pair<const char*, int64_t>>{{"sessions", f.sessions},
                                                              {"layers", f.layers},
                                                              {"heads", f.heads},
                                                              {"kv_heads", f.kv_heads},
                                                              {"head_dim", f.head_dim},
                                                              {"steps", f.steps},
                                                              {"echo_calls", f.echo_calls},
                                                              {"ab_rounds", f.ab_rounds}}) {
    if (value < 1)
      return Fail(absl::InvalidArgumentError(absl::StrCat("--", name, ": must be >= 1")));
  }
  if (f.context < 0 || f.warmup_steps < 0) {
    return Fail(absl::InvalidArgumentError("--context and --warmup_steps: must be >= 0"));
  }
  absl::StatusOr<v1::DType> dtype = ParseDType(f.dtype);
  if (!dtype.ok() || *dtype == v1::BOOL || *dtype == v1::FLOAT8_E4M3) {
    return Fail(absl::InvalidArgumentError(
        "--dtype: must be bf16, fp16 or fp32 (sessions do not take fp8)"));
  }

  SessionOptions shape;
  shape.layers = f.layers;
  shape.kv_heads = f.kv_heads;
  shape.head_dim = f.head_dim;
  shape.dtype = *dtype;
  shape.max_tokens = f.context + f.warmup_steps + f.steps;

  std::mt19937_64 rng(static_cast<uint64_t>(f.seed));
  const int64_t row_elements = int64_t{f.kv_heads} * f.head_dim;
  const int64_t row_bytes = row_elements * DTypeSize(*dtype);
  const int64_t chunk_rows =
      std::clamp<int64_t>((4 << 20) / row_bytes, 1, std::max<int64_t>(f.context, 1));
  const std::string chunk = RandomBytes(*dtype, chunk_rows * row_elements, rng);
  const std::string q = RandomBytes(*dtype, int64_t{f.heads} * f.head_dim, rng);
  const std::string k = RandomBytes(*dtype, row_elements, rng);
  const std::string v = RandomBytes(*dtype, row_elements, rng);
  if (!f.ab_targets.empty()) {
    if (f.echo_target.empty()) {
      return Fail(absl::InvalidArgumentError("--ab_targets: needs --echo_target"));
    }
    return RunAb(connection, f, *dtype, shape, chunk, chunk_rows, q, k, v);
  }

  absl::StatusOr<ClientOptions> options = connection.Options();
  if (!options.ok()) return Fail(options.status());
  SessionClientOptions session_options;
  session_options.client = *options;
  if (!f.replica_pattern.empty())
    session_options.resolve = ReplicaAddressPattern(f.replica_pattern);
  absl::StatusOr<SessionClient> client = SessionClient::Create(connection.target, session_options);
  if (!client.ok()) return Fail(client.status());

  std::vector<Session> sessions;
  for (int i = 0; i < f.sessions; ++i) {
    CallOptions call;
    call.wait_for_ready = true;
    call.timeout = std::chrono::seconds(30);
    absl::StatusOr<Session> session = client->CreateSession(shape, call);
    if (!session.ok()) return Fail(session.status());
    sessions.push_back(*session);
  }

  Results results;
  const Clock::time_point fill_start = Clock::now();
  if (absl::Status filled = Fill(sessions, f, *dtype, chunk, chunk_rows); !filled.ok()) {
    for (const Session& s : sessions) s.Release().IgnoreError();
    return Fail(filled);
  }
  results.fill_s = std::chrono::duration<double>(Clock::now() - fill_start).count();

  Decoder decoder(f, sessions, *dtype, q, k, v);
  // The wire bytes of one step, and of the stateless call that computes it: q and the whole
  // context (context + the new token) as k and v, answered with o.
  {
    absl::StatusOr<v1::AttendRequest> attend =
        BuildAttendRequest(sessions[0].id(), 0, decoder.StepArgs());
    if (!attend.ok()) return Fail(attend.status());
    v1::SessionRequest step;
    *step.mutable_attend() = *attend;
    step.set_request_id(1 << 20);
    results.step_request_bytes = static_cast<int64_t>(step.ByteSizeLong());
    const int64_t o_bytes = static_cast<int64_t>(q.size());
    const int64_t kv_bytes = (f.context + 1) * row_bytes;
    v1::AttentionRequest stateless;
    stateless.set_request_id(1 << 20);
    *stateless.mutable_q() = attend->q();
    for (v1::Tensor* t : {stateless.mutable_k(), stateless.mutable_v()}) {
      t->set_dtype(*dtype);
      for (int64_t d : {int64_t{1}, f.context + 1, int64_t{f.kv_heads}, int64_t{f.head_dim}}) {
        t->add_shape(d);
      }
      t->mutable_data()->resize(static_cast<size_t>(kv_bytes));
    }
    stateless.mutable_q()->clear_shape();
    for (int64_t d : {1, 1, f.heads, f.head_dim}) stateless.mutable_q()->add_shape(d);
    stateless.set_causal(true);
    results.stateless_request_bytes = static_cast<int64_t>(stateless.ByteSizeLong());
    // Both answers are an AttentionResponse with o of q's size (the stream's wraps it in a
    // SessionResponse: a few bytes more); timings and batch as measured below.
    v1::SessionResponse answer;
    answer.set_request_id(1 << 20);
    v1::AttentionResponse* o = answer.mutable_attend();
    o->mutable_o()->set_dtype(*dtype);
    for (int64_t d : {1, f.heads, f.head_dim}) o->mutable_o()->add_shape(d);
    o->mutable_o()->mutable_data()->resize(static_cast<size_t>(o_bytes));
    o->mutable_timings()->set_total_ns(1 << 20);
    o->mutable_batch()->set_device("cpu");
    results.step_response_bytes = static_cast<int64_t>(answer.ByteSizeLong());
    results.stateless_response_bytes = static_cast<int64_t>(o->ByteSizeLong());
  }
  decoder.Run(results);
  if (!f.echo_target.empty()) {
    if (absl::Status echo = MeasureEcho(connection, f, results.step_request_bytes, *dtype, results);
        !echo.ok()) {
      return Fail(echo);
    }
  }
  for (const Session& s : sessions) s.Release().IgnoreError();

  PrintResults(connection.target, f, results);
  if (!f.json.empty()) {
    std::FILE* out = std::fopen(f.json.c_str(), "w");
    if (out == nullptr) {
      return Fail(absl::PermissionDeniedError(absl::StrCat("--json: cannot create ", f.json)));
    }
    const std::string json = ResultsJson(connection.target, f, results);
    const bool written = std::fwrite(json.data(), 1, json.size(), out) == json.size();
    if (std::fclose(out) != 0 || !written) {
      return Fail(absl::InternalError(absl::StrCat("--json: cannot write ", f.json)));
    }
  }
  return results.steps_ok > 0 && results.steps_failed == 0 ? 0 : 1;
}

}  // namespace attention::client::cli
