// The hostile-load probes of issue 26 against the real attention_server binary
// ($ATTN_SERVER_BINARY, CPU backend): cheap requests that made the server of 2026-12-05 (f91a896)
// compute for minutes, ignore its callers' deadlines, exit 1 on SIGTERM, hold unread answers
// without bound, buffer unauthenticated payloads, end a stream over one oversized answer, count
// outcomes under codes its clients never saw, and answer NaN with OK. Each test drives one probe
// from a real client and fails on that server.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <future>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "attention/v1/attention.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/reliability/reliability_util.h"
#include "tests/server/server_process.h"
#include "tests/server/server_test_util.h"

// The ASan tree builds the server with the test: its freed-memory quarantine (256 MiB) and redzones
// raise resident memory.
#if defined(__SANITIZE_ADDRESS__)
#define ATTN_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ATTN_TEST_ASAN 1
#endif
#endif
#ifndef ATTN_TEST_ASAN
#define ATTN_TEST_ASAN 0
#endif

namespace attention::reliability {
namespace {

using ::attention::testing::CompareWithReference;
using ::attention::testing::Connect;
using ::attention::testing::HealthStatus;
using ::attention::testing::MakeRequest;
using ::attention::testing::RequestOptions;
using ::attention::testing::ServerProcess;
using ::attention::testing::SumMetric;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

// A field of /proc/PID/status in kB ("VmRSS", "VmHWM"), -1 when unreadable.
int64_t ProcStatusKb(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::atoll(line.c_str() + field.size() + 1);
  }
  return -1;
}

// The probe: FLOAT16, `rows` query and key rows, one head, head_dim 1 (131072 rows:
// 786 KB on the wire, 0.6 TFLOP of work as the server estimates it).
v1::AttentionRequest HeadDimOneProbe(std::mt19937& rng, uint64_t id, int rows) {
  RequestOptions o;
  o.dtype = v1::FLOAT16;
  o.seqlen_q = o.seqlen_k = rows;
  o.q_heads = o.kv_heads = 1;
  o.head_dim = 1;
  return MakeRequest(o, id, rng);
}

// Long work for a one-thread server: one head of seqlen x seqlen bf16 scores at head_dim 64,
// (4 x 64 + 32) x seqlen^2 flops: 16384 is 77 GFLOP, ~0.7 s on one core of the 2-core VM.
v1::AttentionRequest Long(std::mt19937& rng, uint64_t id, int seqlen = 16384) {
  RequestOptions o;
  o.seqlen_q = o.seqlen_k = seqlen;
  o.q_heads = o.kv_heads = 1;
  o.head_dim = 64;
  return MakeRequest(o, id, rng);
}

// The same work in fewer bytes (head_dim 16: 1 MiB per tensor at 32768 rows, 103 GFLOP, ~1 s on
// one core), for a server whose message limit is a few MiB.
v1::AttentionRequest LongLean(std::mt19937& rng, uint64_t id) {
  RequestOptions o;
  o.seqlen_q = o.seqlen_k = 32768;
  o.q_heads = o.kv_heads = 1;
  o.head_dim = 16;
  return MakeRequest(o, id, rng);
}

v1::AttentionRequest Small(std::mt19937& rng, uint64_t id) {
  RequestOptions o;
  o.seqlen_q = o.seqlen_k = 32;
  o.head_dim = 32;
  return MakeRequest(o, id, rng);
}

// One asynchronous unary call and its outcome.
struct AsyncCall {
  v1::AttentionRequest request;
  v1::AttentionResponse response;
  grpc::ClientContext context;
  std::promise<grpc::Status> done;
  std::shared_future<grpc::Status> result = done.get_future().share();
  Clock::time_point finished;

  void Start(v1::AttentionService::Stub& stub) {
    stub.async()->Attention(&context, &request, &response, [this](grpc::Status s) {
      finished = Clock::now();
      done.set_value(s);
    });
  }
  grpc::Status Wait() { return result.get(); }
};

grpc::Status CallOnce(v1::AttentionService::Stub& stub, const v1::AttentionRequest& request,
                      v1::AttentionResponse* response,
                      std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  return stub.Attention(&context, request, response);
}

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// The `code` label of attention_requests_total for a gRPC code.
std::string CodeLabel(grpc::StatusCode code) {
  static const char* const kNames[] = {"OK",
                                       "CANCELLED",
                                       "UNKNOWN",
                                       "INVALID_ARGUMENT",
                                       "DEADLINE_EXCEEDED",
                                       "NOT_FOUND",
                                       "ALREADY_EXISTS",
                                       "PERMISSION_DENIED",
                                       "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION",
                                       "ABORTED",
                                       "OUT_OF_RANGE",
                                       "UNIMPLEMENTED",
                                       "INTERNAL",
                                       "UNAVAILABLE",
                                       "DATA_LOSS",
                                       "UNAUTHENTICATED"};
  return kNames[static_cast<int>(code)];
}

class HostileLoadTest : public ::testing::Test {
 protected:
  std::mt19937 rng_{26};
};

// Probe 1a: a 786 KB request worth minutes of CPU. The server computed it for 4.7 CPU-seconds
// after its caller's 0.5 s deadline had passed while another client's tiny request waited 4.35 s
// in the queue. Now it is refused at admission, naming the limit, and the tiny one is served at
// once. The 6 MB version (2^20 rows) is refused too.
TEST_F(HostileLoadTest, WorkBudgetRefusesTheHeadDimOneProbeAndOthersAreServedAtOnce) {
  ServerProcess server;
  ASSERT_EQ(server.Start({"--metrics_address=127.0.0.1:0"}), "");
  auto stub = v1::AttentionService::NewStub(Connect(server.address()));
  auto other = v1::AttentionService::NewStub(Connect(server.address()));
  const Metrics before = Scrape(server);

  v1::AttentionResponse response;
  const grpc::Status probe = CallOnce(*stub, HeadDimOneProbe(rng_, 1, 131072), &response, 500ms);
  EXPECT_EQ(probe.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << probe.error_message();
  EXPECT_THAT(probe.error_message(), HasSubstr("--max_request_gflop"));
  const auto start = Clock::now();
  const v1::AttentionRequest tiny = Small(rng_, 2);
  const grpc::Status served = CallOnce(*other, tiny, &response);
  ASSERT_TRUE(served.ok()) << served.error_message();
  EXPECT_EQ(CompareWithReference(tiny, response), "");
  std::printf("tiny request after the probe: %.3f s\n", Seconds(Clock::now() - start));
  EXPECT_LT(Seconds(Clock::now() - start), 1.0) << "the tiny request waited";

  const grpc::Status big = CallOnce(*stub, HeadDimOneProbe(rng_, 3, 1 << 20), &response, 5s);
  EXPECT_EQ(big.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << big.error_message();
  const Metrics after = Scrape(server);
  EXPECT_EQ(SumMetric(after, "attention_requests_rejected_total", {"reason=\"too_large\""}) -
                SumMetric(before, "attention_requests_rejected_total", {"reason=\"too_large\""}),
            2);
  EXPECT_EQ(Launches(after) - Launches(before), 1);  // only the tiny request ran
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(30s), 0);
}

// Probe 1b: work nobody waits for stops. A request within a raised limit (700 GFLOP, about 6 s on
// the one thread) whose deadline passes while it runs, then one whose caller cancels: the CPU
// backend stops each between tiles, so a small request queued behind is answered within a
// fraction of a second of the deadline or cancel (before: after the whole computation).
TEST_F(HostileLoadTest, DeadlineOrCancelWhileRunningStopsTheWorkAndFreesTheCores) {
  ServerProcess server;
  ASSERT_EQ(server.Start({"--cpu_threads=1", "--batching=false", "--max_request_gflop=2000",
                          "--metrics_address=127.0.0.1:0"}),
            "");
  auto stub = v1::AttentionService::NewStub(Connect(server.address()));
  for (const bool cancel : {false, true}) {
    const Metrics before = Scrape(server);
    AsyncCall running;
    running.request = Long(rng_, 1, 49152);
    // Late enough that the request is running by then on a loaded machine.
    const auto deadline = std::chrono::system_clock::now() + 1500ms;
    const auto gone = Clock::now() + 1500ms;
    if (!cancel) running.context.set_deadline(deadline);
    running.Start(*stub);
    ASSERT_TRUE(
        WaitForMetrics(server, [&](const Metrics& m) { return Launches(m) > Launches(before); }));
    ASSERT_LT(Clock::now(), gone) << "the request did not start before its deadline";
    AsyncCall behind;
    behind.request = Small(rng_, 2);
    behind.Start(*stub);
    if (cancel) {
      std::this_thread::sleep_until(gone);
      running.context.TryCancel();
    }
    EXPECT_EQ(running.Wait().error_code(),
              cancel ? grpc::StatusCode::CANCELLED : grpc::StatusCode::DEADLINE_EXCEEDED);
    ASSERT_TRUE(behind.Wait().ok());
    EXPECT_EQ(CompareWithReference(behind.request, behind.response), "");
    std::printf("%s while running: the request behind it answered %.3f s after\n",
                cancel ? "cancel" : "deadline", Seconds(behind.finished - gone));
    // One work item is 128 rows x 49152 keys: ~20 ms here; the whole request ~6 s.
    EXPECT_LT(Seconds(behind.finished - gone), 1.0)
        << (cancel ? "cancelled" : "expired") << " work kept the core";
    // The caller saw DEADLINE_EXCEEDED or CANCELLED; so do the metrics.
    ASSERT_TRUE(WaitForMetrics(server, [&](const Metrics& m) {
      return InFlight(m) == 0 && Answered(m) - Answered(before) == 2;
    }));
    const Metrics after = Scrape(server);
    const std::string code = cancel ? "CANCELLED" : "DEADLINE_EXCEEDED";
    EXPECT_EQ(Answered(after, code) - Answered(before, code), 1) << code;
    EXPECT_EQ(Answered(after, "OK") - Answered(before, "OK"), 1);
  }
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(30s), 0);
}

// Probe 2: SIGTERM while such a request runs exited 1 (drain_stuck) once it needed longer than
// --drain_timeout_s + 5 s. Under the default limits the probe is refused and a request at the
// limit still running when the drain's deadline passes is stopped between tiles and answered
// UNAVAILABLE: the server exits 0, promptly.
TEST_F(HostileLoadTest, SigtermUnderTheDefaultLimitsExitsZero) {
  ServerProcess server;
  ASSERT_EQ(server.Start({"--drain_timeout_s=0", "--metrics_address=127.0.0.1:0"}), "");
  auto stub = v1::AttentionService::NewStub(Connect(server.address()));
  const Metrics before = Scrape(server);
  AsyncCall probe;
  probe.request = HeadDimOneProbe(rng_, 1, 1 << 20);
  probe.Start(*stub);
  // 25000^2 scores x (4 x 64 + 32) = 180 GFLOP, under the 2-thread default of 200: ~1 s here.
  AsyncCall at_limit;
  at_limit.request = Long(rng_, 2, 25000);
  at_limit.Start(*stub);
  ASSERT_TRUE(
      WaitForMetrics(server, [&](const Metrics& m) { return Launches(m) > Launches(before); }));
  const auto signalled = Clock::now();
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(30s), 0) << server.Output();
  std::printf("SIGTERM with work at the limit running: exited after %.3f s\n",
              Seconds(Clock::now() - signalled));
  EXPECT_LT(Seconds(Clock::now() - signalled), 5.0);
  EXPECT_EQ(server.Line("event=drain_stuck"), "");
  EXPECT_EQ(probe.Wait().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  const grpc::Status limit_status = at_limit.Wait();
  EXPECT_TRUE(limit_status.ok() || limit_status.error_code() == grpc::StatusCode::UNAVAILABLE)
      << limit_status.error_message();
}

// Probe 3: streams that never read their answers. One reached 376 MB resident after ~1055
// answers, three on one connection 1077 MB. Now answers waiting to be sent count against
// --max_pending_answer_bytes (64 MiB here): past it the server refuses those streams' requests
// in-band (RESOURCE_EXHAUSTED) and stops reading them, so resident memory stays near the budget;
// once the client reads, every request has exactly one answer and the streams serve again.
TEST_F(HostileLoadTest, UnreadAnswersStayWithinTheAnswerBudget) {
  constexpr int64_t kBudget = 64 << 20;
  ServerProcess server;
  ASSERT_EQ(server.Start({"--max_pending_answer_bytes=" + std::to_string(kBudget),
                          "--metrics_address=127.0.0.1:0"}),
            "");
  auto stub = v1::AttentionService::NewStub(Connect(server.address()));
  const int64_t rss_before_kb = ProcStatusKb(server.pid(), "VmRSS");
  // o is 256 KiB (FLOAT32 [1, 256, 4, 64]); k and v are 16 rows, so the request is ~260 KiB.
  RequestOptions o;
  o.dtype = v1::FLOAT32;
  o.seqlen_q = 256;
  o.seqlen_k = 16;
  o.q_heads = o.kv_heads = 4;
  o.head_dim = 64;
  const v1::AttentionRequest problem = MakeRequest(o, 0, rng_);
  constexpr int kStreams = 3, kPerStream = 1024;  // 768 MiB of answers in all

  struct Stream {
    grpc::ClientContext context;
    std::unique_ptr<grpc::ClientReaderWriter<v1::AttentionRequest, v1::AttentionResponse>> rw;
    std::thread writer;
    std::atomic<int> written{0};
    std::map<uint64_t, int> answers;
    int ok = 0, exhausted = 0;
  };
  std::vector<std::unique_ptr<Stream>> streams;
  for (int s = 0; s < kStreams; ++s) {
    streams.push_back(std::make_unique<Stream>());
    Stream& st = *streams.back();
    st.rw = stub->AttentionStream(&st.context);
    st.writer = std::thread([&st, &problem, s] {
      for (int i = 0; i < kPerStream; ++i) {
        v1::AttentionRequest r = problem;
        r.set_request_id(uint64_t(s) * 100000 + i);
        if (!st.rw->Write(r)) return;
        st.written.fetch_add(1);
      }
      st.rw->WritesDone();
    });
  }
  // Nobody reads. Wait until the server stopped taking requests (what it received stays the
  // same for a second), then look at its memory.
  double received = -1;
  for (int settled = 0; settled < 4;) {
    std::this_thread::sleep_for(250ms);
    const Metrics m = Scrape(server);
    const double now = Answered(m) + InFlight(m);
    settled = now == received ? settled + 1 : 0;
    received = now;
  }
  const int64_t peak_kb = ProcStatusKb(server.pid(), "VmHWM");
  const Metrics stalled = Scrape(server);
  EXPECT_GT(SumMetric(stalled, "attention_requests_rejected_total", {"reason=\"answer_budget\""}),
            0);
  int written = 0;
  for (const auto& st : streams) written += st->written.load();
  EXPECT_LT(written, kStreams * kPerStream) << "the server kept reading streams nobody reads";
  // The budget (64 MiB of answers), about as many inputs accepted and not yet computed, and
  // gRPC's flow-control windows: 204 to 255 MiB measured on the 2-core VM. The unbounded server
  // held 768 MiB of answers here (993 MiB above idle).
  std::printf("unread answers: peak resident %lld MiB, %lld MiB above the idle server\n",
              static_cast<long long>(peak_kb / 1024),
              static_cast<long long>((peak_kb - rss_before_kb) / 1024));
  // Under ASan (quarantine, redzones) 501 MiB were measured.
  const int64_t bound_mib = ATTN_TEST_ASAN ? 800 : 400;
  EXPECT_LT((peak_kb - rss_before_kb) / 1024, bound_mib) << "peak " << peak_kb / 1024 << " MiB";

  // The client reads: every request gets exactly one answer, OK or refused in-band.
  for (auto& stp : streams) {
    Stream& st = *stp;
    v1::AttentionResponse r;
    while (st.rw->Read(&r)) {
      ++st.answers[r.request_id()];
      if (r.has_error()) {
        EXPECT_EQ(r.error().code(), static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED))
            << r.error().message();
        EXPECT_THAT(r.error().message(), HasSubstr("--max_pending_answer_bytes"));
        ++st.exhausted;
      } else {
        ++st.ok;
      }
    }
    st.writer.join();
    EXPECT_TRUE(st.rw->Finish().ok());
    EXPECT_EQ(st.ok + st.exhausted, kPerStream);
    EXPECT_EQ(static_cast<int>(st.answers.size()), kPerStream);
    for (const auto& [id, n] : st.answers) EXPECT_EQ(n, 1) << "request " << id;
    EXPECT_GT(st.ok, 0);
  }
  ASSERT_TRUE(WaitForMetrics(server, [](const Metrics& m) { return InFlight(m) == 0; }));
  // The budget is free again: a stream is served.
  grpc::ClientContext context;
  auto again = stub->AttentionStream(&context);
  ASSERT_TRUE(again->Write(problem));
  again->WritesDone();
  v1::AttentionResponse answer;
  ASSERT_TRUE(again->Read(&answer));
  EXPECT_FALSE(answer.has_error()) << answer.error().message();
  EXPECT_EQ(CompareWithReference(problem, answer), "");
  EXPECT_TRUE(again->Finish().ok());
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(30s), 0);
}

// Probe 4: three 100 MiB calls without a token were all answered UNAUTHENTICATED, but only after
// the server had buffered them: peak memory 17 MB -> 299 MB. The token is now checked on the
// headers (an AuthMetadataProcessor), before a message is read. Health stays open.
TEST_F(HostileLoadTest, UnauthenticatedCallsAreRefusedBeforeTheirBytesAreBuffered) {
  const std::string tokens = ::testing::TempDir() + "/hostile_tokens";
  {
    std::ofstream out(tokens);
    out << "secret-token\n";
  }
  ServerProcess server;
  ASSERT_EQ(server.Start({"--auth_token_file=" + tokens, "--metrics_address=127.0.0.1:0"}), "");
  auto channel = Connect(server.address());
  const Metrics before = Scrape(server);
  const int64_t peak_before_kb = ProcStatusKb(server.pid(), "VmHWM");
  grpc::GenericStub generic(channel);
  constexpr int kCalls = 3;
  const std::string payload(100 << 20, '\0');
  std::vector<std::thread> threads;
  std::vector<grpc::Status> statuses(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    threads.emplace_back([&, i] {
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + 60s);
      grpc::Slice slice(payload);
      grpc::ByteBuffer request(&slice, 1);
      grpc::ByteBuffer response;
      std::promise<grpc::Status> done;
      generic.UnaryCall(&context, "/attention.v1.AttentionService/Attention", grpc::StubOptions(),
                        &request, &response, [&done](grpc::Status s) { done.set_value(s); });
      statuses[i] = done.get_future().get();
    });
  }
  for (auto& t : threads) t.join();
  for (const grpc::Status& s : statuses) {
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << s.error_message();
  }
  const int64_t peak_after_kb = ProcStatusKb(server.pid(), "VmHWM");
  std::printf("unauthenticated 3 x 100 MiB: peak resident %lld -> %lld MiB\n",
              static_cast<long long>(peak_before_kb / 1024),
              static_cast<long long>(peak_after_kb / 1024));
  EXPECT_LT((peak_after_kb - peak_before_kb) / 1024, 40)
      << "peak " << peak_before_kb / 1024 << " -> " << peak_after_kb / 1024 << " MiB";
  // A stream without a token ends the same way; health needs none; a token is served.
  {
    auto stub = v1::AttentionService::NewStub(channel);
    grpc::ClientContext context;
    auto stream = stub->AttentionStream(&context);
    stream->Write(Small(rng_, 1));
    v1::AttentionResponse r;
    EXPECT_FALSE(stream->Read(&r));
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(HealthStatus(channel, "attention.v1.AttentionService"), "SERVING");
    grpc::ClientContext with_token;
    with_token.AddMetadata("authorization", "Bearer secret-token");
    const v1::AttentionRequest request = Small(rng_, 2);
    EXPECT_TRUE(stub->Attention(&with_token, request, &r).ok());
    EXPECT_EQ(CompareWithReference(request, r), "");
  }
  // The refusals are counted as the clients saw them.
  const Metrics after = Scrape(server);
  EXPECT_EQ(Answered(after, "UNAUTHENTICATED") - Answered(before, "UNAUTHENTICATED"), kCalls + 1);
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(30s), 0);
}

// FLOAT16 head_dim 1 with lse: the request is ~2 MiB (q 2^20 x 2 bytes), the answer 6 MiB (o
// 2 MiB and lse 4 MiB), over a 4 MiB message limit.
v1::AttentionRequest OversizedAnswer(std::mt19937& rng, uint64_t id) {
  RequestOptions o;
  o.dtype = v1::FLOAT16;
  o.seqlen_q = 1 << 20;
  o.seqlen_k = 16;
  o.q_heads = o.kv_heads = 1;
  o.head_dim = 1;
  o.return_lse = true;
  return MakeRequest(o, id, rng);
}

// Probe 5: an answer larger than --max_message_bytes was computed, then failed: on a stream that
// ended the stream (RESOURCE_EXHAUSTED) with the next request never answered, and the metrics
// counted it OK. Now it is refused before compute, in-band, and the stream stays open.
TEST_F(HostileLoadTest, AnswerOverTheMessageLimitIsRefusedInBandAndTheStreamStaysOpen) {
  ServerProcess server;
  ASSERT_EQ(server.Start({"--max_message_bytes=4194304", "--metrics_address=127.0.0.1:0"}), "");
  auto stub = v1::AttentionService::NewStub(Connect(server.address()));
  const Metrics before = Scrape(server);
  grpc::ClientContext context;
  auto stream = stub->AttentionStream(&context);
  ASSERT_TRUE(stream->Write(OversizedAnswer(rng_, 1)));
  const v1::AttentionRequest next = Small(rng_, 2);
  ASSERT_TRUE(stream->Write(next));
  stream->WritesDone();
  std::map<uint64_t, v1::AttentionResponse> answers;
  v1::AttentionResponse r;
  while (stream->Read(&r)) answers[r.request_id()] = r;
  EXPECT_TRUE(stream->Finish().ok());
  ASSERT_EQ(answers.count(1), 1u);
  EXPECT_EQ(answers[1].error().code(), static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
  EXPECT_THAT(answers[1].error().message(), HasSubstr("--max_message_bytes"));
  ASSERT_EQ(answers.count(2), 1u);
  EXPECT_FALSE(answers[2].has_error()) << answers[2].error().message();
  EXPECT_EQ(CompareWithReference(next, answers[2]), "");
  // Unary: the status.
  const grpc::Status unary = CallOnce(*stub, OversizedAnswer(rng_, 3), &r);
  EXPECT_EQ(unary.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  ASSERT_TRUE(WaitForMetrics(server, [](const Metrics& m) { return InFlight(m) == 0; }));
  const Metrics after = Scrape(server);
  EXPECT_EQ(Answered(after, "RESOURCE_EXHAUSTED") - Answered(before, "RESOURCE_EXHAUSTED"), 2);
  EXPECT_EQ(Answered(after, "OK") - Answered(before, "OK"), 1);
  EXPECT_EQ(Launches(after) - Launches(before), 1);  // nothing computed for the oversized ones
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(30s), 0);
}

// Sets a FLOAT32 additive mask [seqlen_q, seqlen_k] of zeros with `value` at element 0.
void SetMask(v1::AttentionRequest& r, float value) {
  const int64_t rows = r.q().shape(1), cols = r.k().shape(1);
  std::vector<float> mask(static_cast<size_t>(rows * cols), 0.f);
  mask[0] = value;
  v1::Tensor* m = r.mutable_mask();
  m->set_dtype(v1::FLOAT32);
  m->clear_shape();
  m->add_shape(rows);
  m->add_shape(cols);
  m->set_data(std::string(reinterpret_cast<const char*>(mask.data()), mask.size() * 4));
}

// Probe 7: finite but extreme values (softmax_scale 3e38, ALiBi slopes +-3e38, float masks of
// 3e38) gave NaN answers with status OK, and masks holding NaN or +inf were accepted (all-NaN
// output). Each is refused now, naming the field; BFLOAT16 inputs near float32's limit, which
// validation does not scan, overflow in the kernel and are answered INVALID_ARGUMENT, not OK.
TEST_F(HostileLoadTest, ExtremeValuesAreRefusedNeverAnsweredNaN) {
  ServerProcess server;
  ASSERT_EQ(server.Start({}), "");
  auto stub = v1::AttentionService::NewStub(Connect(server.address()));
  const v1::AttentionRequest base = Small(rng_, 1);
  struct Case {
    std::string name;
    std::function<void(v1::AttentionRequest&)> make;
    std::string field;
  };
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<Case> cases = {
      {"scale", [](auto& r) { r.set_softmax_scale(3e38f); }, "softmax_scale"},
      {"slopes+",
       [](auto& r) {
         std::vector<float> slopes(4, 3e38f);
         r.mutable_alibi_slopes()->set_dtype(v1::FLOAT32);
         r.mutable_alibi_slopes()->add_shape(4);
         r.mutable_alibi_slopes()->set_data(slopes.data(), 16);
       },
       "alibi_slopes[0]"},
      {"slopes-",
       [](auto& r) {
         std::vector<float> slopes(4, -3e38f);
         r.mutable_alibi_slopes()->set_dtype(v1::FLOAT32);
         r.mutable_alibi_slopes()->add_shape(4);
         r.mutable_alibi_slopes()->set_data(slopes.data(), 16);
       },
       "alibi_slopes[0]"},
      {"mask 3e38", [](auto& r) { SetMask(r, 3e38f); }, "mask[0]"},
      {"mask nan", [](auto& r) { SetMask(r, std::nanf("")); }, "mask[0]"},
      {"mask +inf", [inf](auto& r) { SetMask(r, inf); }, "mask[0]"},
      {"sinks",
       [](auto& r) {
         std::vector<float> sinks(4, 3e38f);
         r.mutable_sinks()->set_dtype(v1::FLOAT32);
         r.mutable_sinks()->add_shape(4);
         r.mutable_sinks()->set_data(sinks.data(), 16);
       },
       "sinks[0]"},
      {"bf16 inputs near the float32 limit",
       [](auto& r) {
         for (v1::Tensor* t : {r.mutable_q(), r.mutable_k()}) {
           std::string& data = *t->mutable_data();
           for (size_t i = 0; i + 1 < data.size(); i += 2) {
             data[i] = 0x16;  // 0x7f16: about 2e38
             data[i + 1] = 0x7f;
           }
         }
       },
       "o: the result is not finite"},
  };
  for (const Case& c : cases) {
    v1::AttentionRequest r = base;
    c.make(r);
    v1::AttentionResponse response;
    const grpc::Status status = CallOnce(*stub, r, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << c.name << ": " << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr(c.field)) << c.name;
  }
  // -inf in an additive mask drops the key, as a BOOL false: a valid request.
  v1::AttentionRequest dropped = base;
  SetMask(dropped, -inf);
  v1::AttentionResponse response;
  const grpc::Status status = CallOnce(*stub, dropped, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(CompareWithReference(dropped, response), "");
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(30s), 0);
}

// Probe 6, the metrics' truth: every outcome a client can see, driven from real clients, each
// tallied by the client under the code it saw, against the server's attention_requests_total by
// method and code. Before issue 26 deadlines in the queue counted CANCELLED, and abandoned work
// and oversized answers counted OK.
TEST_F(HostileLoadTest, MetricsCountEveryOutcomeAsTheClientSawIt) {
  const std::string tokens = ::testing::TempDir() + "/truth_tokens";
  {
    std::ofstream out(tokens);
    out << "truth\n";
  }
  ServerProcess server;
  ASSERT_EQ(server.Start({"--cpu_threads=1", "--batching=false", "--max_request_gflop=150",
                          "--max_message_bytes=4194304", "--auth_token_file=" + tokens,
                          "--metrics_address=127.0.0.1:0"}),
            "");
  auto channel = Connect(server.address());
  auto stub = v1::AttentionService::NewStub(channel);
  const Metrics before = Scrape(server);
  std::map<std::pair<std::string, grpc::StatusCode>, int> seen;
  std::mutex seen_mu;
  auto tally = [&](const std::string& method, grpc::StatusCode code) {
    std::lock_guard<std::mutex> lock(seen_mu);
    ++seen[{method, code}];
  };
  auto authorize = [](grpc::ClientContext& context) {
    context.AddMetadata("authorization", "Bearer truth");
  };
  auto unary = [&](const v1::AttentionRequest& request, bool token = true) {
    grpc::ClientContext context;
    if (token) authorize(context);
    context.set_deadline(std::chrono::system_clock::now() + 60s);
    v1::AttentionResponse response;
    const grpc::Status status = stub->Attention(&context, request, &response);
    tally("Attention", status.error_code());
    return status;
  };

  // OK, INVALID_ARGUMENT (a contract rule, an extreme value), RESOURCE_EXHAUSTED (the work limit,
  // an oversized answer), UNAUTHENTICATED.
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(unary(Small(rng_, i)).ok());
  v1::AttentionRequest bad = Small(rng_, 10);
  bad.mutable_q()->clear_shape();
  EXPECT_EQ(unary(bad).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  bad = Small(rng_, 11);
  bad.set_softmax_scale(3e38f);
  EXPECT_EQ(unary(bad).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(unary(HeadDimOneProbe(rng_, 12, 131072)).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(unary(OversizedAnswer(rng_, 13)).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(unary(Small(rng_, 14), /*token=*/false).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);

  // Deadlines passing in the queue behind a running request, a cancel in the queue, then that
  // running request cancelled, and another whose deadline passes while it runs.
  auto start = [&](AsyncCall& call, std::chrono::milliseconds deadline) {
    authorize(call.context);
    if (deadline.count() > 0) {
      call.context.set_deadline(std::chrono::system_clock::now() + deadline);
    }
    call.Start(*stub);
  };
  const Metrics launched_before = Scrape(server);
  AsyncCall blocker;
  blocker.request = LongLean(rng_, 20);
  start(blocker, 0ms);
  ASSERT_TRUE(WaitForMetrics(
      server, [&](const Metrics& m) { return Launches(m) > Launches(launched_before); }));
  AsyncCall expiring[2], cancelled_queued;
  for (int i = 0; i < 2; ++i) {
    expiring[i].request = Small(rng_, 21 + i);
    start(expiring[i], 100ms);
  }
  cancelled_queued.request = Small(rng_, 23);
  start(cancelled_queued, 0ms);
  std::this_thread::sleep_for(50ms);
  cancelled_queued.context.TryCancel();
  for (AsyncCall* call : {&expiring[0], &expiring[1], &cancelled_queued}) {
    tally("Attention", call->Wait().error_code());
  }
  blocker.context.TryCancel();
  tally("Attention", blocker.Wait().error_code());
  AsyncCall expiring_running;
  expiring_running.request = LongLean(rng_, 24);
  start(expiring_running, 200ms);
  tally("Attention", expiring_running.Wait().error_code());
  EXPECT_EQ(expiring[0].Wait().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(cancelled_queued.Wait().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(blocker.Wait().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(expiring_running.Wait().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);

  // A stream: answers and in-band errors, each under the code in its answer; then a stream
  // cancelled with requests in flight, whose unanswered requests the client saw CANCELLED.
  {
    grpc::ClientContext context;
    authorize(context);
    auto stream = stub->AttentionStream(&context);
    ASSERT_TRUE(stream->Write(Small(rng_, 30)));
    ASSERT_TRUE(stream->Write(Small(rng_, 31)));
    v1::AttentionRequest invalid = Small(rng_, 32);
    invalid.set_causal(true);
    invalid.mutable_window()->set_left(-3);
    ASSERT_TRUE(stream->Write(invalid));
    ASSERT_TRUE(stream->Write(OversizedAnswer(rng_, 33)));
    stream->WritesDone();
    v1::AttentionResponse r;
    int answers = 0;
    while (stream->Read(&r)) {
      ++answers;
      tally("AttentionStream",
            r.has_error() ? static_cast<grpc::StatusCode>(r.error().code()) : grpc::StatusCode::OK);
    }
    EXPECT_EQ(answers, 4);
    EXPECT_TRUE(stream->Finish().ok());
  }
  {
    grpc::ClientContext context;
    authorize(context);
    auto stream = stub->AttentionStream(&context);
    const Metrics stream_before = Scrape(server);
    ASSERT_TRUE(stream->Write(LongLean(rng_, 40)));
    ASSERT_TRUE(stream->Write(Small(rng_, 41)));
    // Both read by the server (one running, one queued): each is answered, then dropped.
    ASSERT_TRUE(WaitForMetrics(server, [&](const Metrics& m) {
      return Launches(m) > Launches(stream_before) && InFlight(m) == 2;
    }));
    context.TryCancel();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
    tally("AttentionStream", grpc::StatusCode::CANCELLED);
    tally("AttentionStream", grpc::StatusCode::CANCELLED);
  }

  int total = 0;
  for (const auto& [key, n] : seen) total += n;
  const bool settled = WaitForMetrics(server, [&](const Metrics& m) {
    return InFlight(m) == 0 && Answered(m) - Answered(before) >= total;
  });
  const Metrics now = Scrape(server);
  ASSERT_TRUE(settled) << "in flight " << InFlight(now) << ", answered "
                       << Answered(now) - Answered(before) << " of " << total;
  const Metrics after = Scrape(server);
  std::set<std::string> methods = {"Attention", "AttentionStream"};
  std::map<std::pair<std::string, std::string>, double> server_counts;
  for (const std::string& method : methods) {
    for (int code = 0; code <= 16; ++code) {
      const std::string name = CodeLabel(static_cast<grpc::StatusCode>(code));
      const std::vector<std::string> labels = {"method=\"" + method + "\"",
                                               "code=\"" + name + "\""};
      const double n = SumMetric(after, "attention_requests_total", labels) -
                       SumMetric(before, "attention_requests_total", labels);
      const auto it = seen.find({method, static_cast<grpc::StatusCode>(code)});
      EXPECT_EQ(n, it == seen.end() ? 0 : it->second) << method << " " << name;
    }
  }
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(30s), 0);
}

}  // namespace
}  // namespace attention::reliability
