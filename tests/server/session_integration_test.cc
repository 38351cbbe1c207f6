// The session service through its public RPCs (the C++ Session client over SessionStream, and the
// unary methods), on an in-process server with the CPU executor, against the float64 reference
// over each session's whole history (session_test_harness.h): interleaved sessions of several
// shapes, GQA and MQA, every dtype, fork then divergence, truncate then re-append, windows over
// long contexts, partial last pages, page sizes from 1 to 64 tokens, key ranges merged back,
// eviction and re-creation, the pool exhausted and recovered, per-session ordering on a stream
// (an append sent right behind an attend), and the contract's errors.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <future>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention/client/session.h"
#include "attention/v1/attention.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"
#include "tests/server/session_test_harness.h"

namespace attention::testing {
namespace {

using client::Session;
using client::SessionClient;
using ::testing::HasSubstr;

std::unique_ptr<InProcessSessionServer> StartServer(const SessionServerOptions& options = {}) {
  std::string error;
  std::unique_ptr<InProcessSessionServer> server = InProcessSessionServer::Start(options, &error);
  EXPECT_NE(server, nullptr) << error;
  return server;
}

// A session as the test drives it: the client's handle and the model of what it holds.
struct Tracked {
  Session session;
  SessionModel model;
};

Tracked Create(const SessionClient& client, v1::DType dtype, int layers, int kv_heads,
               int head_dim) {
  client::SessionOptions options;
  options.layers = layers;
  options.kv_heads = kv_heads;
  options.head_dim = head_dim;
  options.dtype = dtype;
  absl::StatusOr<Session> session = client.CreateSession(options);
  EXPECT_TRUE(session.ok()) << session.status();
  return Tracked{session.ok() ? *session : Session(),
                 SessionModel(dtype, layers, kv_heads, head_dim)};
}

// Appends `n` random rows to `layer` through Append, and to the model.
void AppendRows(Tracked& t, int layer, int64_t n, std::mt19937& rng) {
  const std::vector<int64_t> shape = {n, t.model.kv_heads, t.model.head_dim};
  const std::string k = RandomValues(t.model.dtype, n * t.model.kv_heads * t.model.head_dim, rng);
  const std::string v = RandomValues(t.model.dtype, n * t.model.kv_heads * t.model.head_dim, rng);
  absl::StatusOr<int64_t> tokens =
      t.session.Append(layer, {t.model.dtype, k.data(), shape}, {t.model.dtype, v.data(), shape});
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  t.model.Append(layer, k, v);
  EXPECT_EQ(*tokens, t.model.tokens(layer));
}

struct StepOptions {
  int64_t n_new = 1;
  int q_heads = 0;  // 0: the session's kv_heads x 2
  bool append = true;
  bool causal = true;
  int window_left = -1, window_right = -1;
  float softcap = 0.f;
  bool alibi = false;
  bool sinks = false;
  bool return_lse = true;
};

v1::AttendRequest MakeAttend(const std::string& session_id, const SessionModel& m, int layer,
                             const StepOptions& o, std::mt19937& rng) {
  const int q_heads = o.q_heads > 0 ? o.q_heads : 2 * m.kv_heads;
  v1::AttendRequest a;
  a.set_session_id(session_id);
  a.set_layer(layer);
  *a.mutable_q() = RandomTensor(m.dtype, {o.n_new, q_heads, m.head_dim}, rng);
  if (o.append) {
    *a.mutable_k_new() = RandomTensor(m.dtype, {o.n_new, m.kv_heads, m.head_dim}, rng);
    *a.mutable_v_new() = RandomTensor(m.dtype, {o.n_new, m.kv_heads, m.head_dim}, rng);
  }
  a.set_causal(o.causal);
  if (o.window_left != -1 || o.window_right != -1) {
    a.mutable_window()->set_left(o.window_left);
    a.mutable_window()->set_right(o.window_right);
  }
  a.set_softcap(o.softcap);
  std::uniform_real_distribution<float> slope(0.f, 0.5f), sink(-1.f, 2.f);
  if (o.alibi) {
    std::vector<float> slopes(static_cast<size_t>(q_heads));
    for (float& s : slopes) s = slope(rng);
    a.mutable_alibi_slopes()->set_dtype(v1::FLOAT32);
    a.mutable_alibi_slopes()->add_shape(q_heads);
    a.mutable_alibi_slopes()->set_data(slopes.data(), slopes.size() * sizeof(float));
  }
  if (o.sinks) {
    std::vector<float> sinks(static_cast<size_t>(q_heads));
    for (float& s : sinks) s = sink(rng);
    a.mutable_sinks()->set_dtype(v1::FLOAT32);
    a.mutable_sinks()->add_shape(q_heads);
    a.mutable_sinks()->set_data(sinks.data(), sinks.size() * sizeof(float));
  }
  a.set_return_lse(o.return_lse);
  return a;
}

v1::AttendRequest MakeAttend(const Tracked& t, int layer, const StepOptions& o, std::mt19937& rng) {
  return MakeAttend(t.session.id(), t.model, layer, o, rng);
}

// Sends `attend` on the session's stream and waits.
absl::StatusOr<v1::AttentionResponse> Send(const Session& session, const v1::AttendRequest& a) {
  v1::SessionRequest request;
  *request.mutable_attend() = a;
  std::promise<absl::StatusOr<v1::SessionResponse>> promise;
  auto answer = promise.get_future();
  session.Call(std::move(request), [&promise](absl::StatusOr<v1::SessionResponse> r) {
    promise.set_value(std::move(r));
  });
  absl::StatusOr<v1::SessionResponse> r = answer.get();
  if (!r.ok()) return r.status();
  return r->attend();
}

// One Attend step, checked against the reference over the model's history.
void Step(Tracked& t, int layer, const StepOptions& o, std::mt19937& rng) {
  const v1::AttendRequest a = MakeAttend(t, layer, o, rng);
  absl::StatusOr<v1::AttentionResponse> r = Send(t.session, a);
  ASSERT_TRUE(r.ok()) << r.status();
  // The oracle tells a history short of the new rows apart (it is not vacuous): the answer is
  // closer to the reference with them than without, over all of o (not "fails the tolerance
  // without them": one row among hundreds can move an element by less than the GPU's bfloat16
  // tolerance, while rounding noise does not add up over o as the missing row's effect does).
  if (a.has_k_new()) {
    const double without = OutputSquaredError(ReferenceRequest(t.model, a), *r);
    t.model.Append(layer, a.k_new().data(), a.v_new().data());
    const double with = OutputSquaredError(ReferenceRequest(t.model, a), *r);
    EXPECT_LT(with, without) << "the answer is not closer to the history with the new rows";
  }
  EXPECT_EQ(CheckAttend(t.model, a, *r), "")
      << "layer " << layer << ", context " << t.model.tokens(layer) << ", n_new " << o.n_new;
}

class SessionIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = StartServer(options_);
    ASSERT_NE(server_, nullptr);
    absl::StatusOr<SessionClient> client = SessionClient::Create(server_->address());
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = std::make_unique<SessionClient>(std::move(*client));
  }
  void TearDown() override {
    client_.reset();
    server_.reset();
  }

  SessionServerOptions options_;
  std::unique_ptr<InProcessSessionServer> server_;
  std::unique_ptr<SessionClient> client_;
  std::mt19937 rng_{20261205};
};

TEST_F(SessionIntegrationTest, InterleavedSessionsOfEveryShapeMatchTheReference) {
  // GQA bf16, MQA fp16, MHA fp32; each with its own prefill, then interleaved decode steps,
  // verify steps (several new rows) and steps without new rows, with every option.
  std::vector<Tracked> sessions;
  sessions.push_back(Create(*client_, v1::BFLOAT16, 2, 2, 64));
  sessions.push_back(Create(*client_, v1::FLOAT16, 2, 1, 32));
  sessions.push_back(Create(*client_, v1::FLOAT32, 2, 2, 16));
  const int64_t prefill[] = {37, 5, 64};
  for (size_t s = 0; s < sessions.size(); ++s) {
    for (int layer = 0; layer < 2; ++layer) AppendRows(sessions[s], layer, prefill[s], rng_);
  }
  const StepOptions kinds[] = {
      {},                                   // decode
      {.n_new = 4},                         // verify
      {.n_new = 3, .causal = false},        // non-causal chunk
      {.n_new = 2, .append = false},        // no new rows
      {.window_left = 8},                   // window
      {.softcap = 5.f, .alibi = true},      // softcap + ALiBi
      {.n_new = 2, .sinks = true},          // sinks
      {.q_heads = 0, .return_lse = false},  // o only
  };
  for (int round = 0; round < 3; ++round) {
    for (const StepOptions& kind : kinds) {
      for (Tracked& t : sessions) {
        for (int layer = 0; layer < 2; ++layer) {
          Step(t, layer, kind, rng_);
          if (HasFailure()) return;
        }
      }
    }
  }
  for (Tracked& t : sessions) EXPECT_TRUE(t.session.Release().ok());
}

TEST_F(SessionIntegrationTest, MqaAndWideGqa) {
  Tracked mqa = Create(*client_, v1::BFLOAT16, 1, 1, 128);
  Tracked gqa = Create(*client_, v1::BFLOAT16, 1, 2, 128);
  AppendRows(mqa, 0, 20, rng_);
  AppendRows(gqa, 0, 20, rng_);
  for (int i = 0; i < 4; ++i) {
    Step(mqa, 0, {.q_heads = 8}, rng_);
    Step(gqa, 0, {.q_heads = 16}, rng_);
  }
}

TEST_F(SessionIntegrationTest, ForkThenDivergence) {
  // 64 KiB pages of 4 x 32 x bf16 rows hold 128 tokens: a fork at 37 shares a partial page,
  // which whichever session appends first copies.
  Tracked parent = Create(*client_, v1::BFLOAT16, 2, 4, 32);
  for (int layer = 0; layer < 2; ++layer) AppendRows(parent, layer, 60, rng_);
  absl::StatusOr<Session> forked = parent.session.Fork(37);
  ASSERT_TRUE(forked.ok()) << forked.status();
  Tracked child{*forked, parent.model.Fork(37)};
  for (int i = 0; i < 6; ++i) {
    for (int layer = 0; layer < 2; ++layer) {
      Step(child, layer, {.n_new = 1 + i % 3}, rng_);
      Step(parent, layer, {}, rng_);
    }
  }
  // A fork of a fork, of more than the longest layer: the whole session.
  absl::StatusOr<Session> grandchild = child.session.Fork(child.model.tokens(0));
  ASSERT_TRUE(grandchild.ok());
  Tracked g{*grandchild, child.model.Fork(child.model.tokens(0))};
  Step(g, 1, {.n_new = 2}, rng_);
  Step(child, 1, {}, rng_);
  // Releasing the parent leaves the forks' shared pages alone.
  ASSERT_TRUE(parent.session.Release().ok());
  Step(child, 0, {}, rng_);
  Step(g, 0, {}, rng_);
  absl::StatusOr<v1::GetSessionResponse> info = g.session.Info();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->tokens(0), g.model.tokens(0));
  EXPECT_EQ(info->tokens(1), g.model.tokens(1));
}

TEST_F(SessionIntegrationTest, TruncateThenReappend) {
  Tracked t = Create(*client_, v1::FLOAT16, 2, 2, 32);
  AppendRows(t, 0, 300, rng_);
  AppendRows(t, 1, 290, rng_);
  // Speculative decoding: 5 draft tokens verified, 3 accepted, the rest rolled back.
  Step(t, 0, {.n_new = 5}, rng_);
  Step(t, 1, {.n_new = 5}, rng_);
  ASSERT_TRUE(t.session.Truncate(298).ok());
  t.model.Truncate(298);
  for (int layer = 0; layer < 2; ++layer) Step(t, layer, {}, rng_);
  // Back across a page boundary (page_size 512 here: 64 KiB / (2 x 32 x 2) / 2), then forward.
  ASSERT_TRUE(t.session.Truncate(100).ok());
  t.model.Truncate(100);
  AppendRows(t, 0, 7, rng_);
  for (int layer = 0; layer < 2; ++layer) Step(t, layer, {.n_new = 3}, rng_);
  absl::Status too_far = t.session.Truncate(10000);
  EXPECT_EQ(too_far.code(), absl::StatusCode::kOutOfRange) << too_far;
  Step(t, 0, {}, rng_);
}

TEST_F(SessionIntegrationTest, WindowsOverLongContexts) {
  Tracked t = Create(*client_, v1::BFLOAT16, 1, 2, 64);
  AppendRows(t, 0, 1500, rng_);
  for (int i = 0; i < 3; ++i) {
    Step(t, 0, {.window_left = 64}, rng_);
    Step(t, 0, {.n_new = 4, .window_left = 200, .alibi = true}, rng_);
    Step(t, 0, {.n_new = 2, .causal = false, .window_left = 30, .window_right = 5}, rng_);
  }
}

TEST_F(SessionIntegrationTest, KeyRangesMergeBackToTheWholeContext) {
  Tracked t = Create(*client_, v1::BFLOAT16, 1, 2, 32);
  AppendRows(t, 0, 200, rng_);
  for (const int64_t split : {0, 1, 77, 150, 199, 200}) {
    // The rows are appended by the first partial only; the second reads the same context.
    v1::AttendRequest a = MakeAttend(t, 0, {.n_new = 3, .alibi = split == 77}, rng_);
    v1::AttendRequest rest = a;
    rest.clear_k_new();
    rest.clear_v_new();
    a.mutable_key_range()->set_start(0);
    a.mutable_key_range()->set_end(split);
    rest.mutable_key_range()->set_start(split);
    rest.mutable_key_range()->set_end(1 << 20);  // past the context: clipped
    absl::StatusOr<v1::AttentionResponse> first = Send(t.session, a);
    absl::StatusOr<v1::AttentionResponse> second = Send(t.session, rest);
    ASSERT_TRUE(first.ok()) << first.status();
    ASSERT_TRUE(second.ok()) << second.status();
    t.model.Append(0, a.k_new().data(), a.v_new().data());
    const v1::AttentionResponse merged = MergePartials(*first, *second);
    v1::AttendRequest whole = a;
    whole.clear_key_range();
    EXPECT_EQ(CheckAttend(t.model, whole, merged), "") << "split at " << split;
  }
}

TEST_F(SessionIntegrationTest, AnAppendRightBehindAnAttendWaitsForIt) {
  // The attend and the append go out back to back on the stream: the attend reads the context
  // as it was when it arrived, then the append applies (per-session arrival order).
  Tracked t = Create(*client_, v1::FLOAT32, 1, 2, 16);
  AppendRows(t, 0, 40, rng_);
  for (int i = 0; i < 20; ++i) {
    const v1::AttendRequest a = MakeAttend(t, 0, {.n_new = 2}, rng_);
    v1::SessionRequest attend, append;
    *attend.mutable_attend() = a;
    append.mutable_append()->set_session_id(t.session.id());
    *append.mutable_append()->mutable_k() = RandomTensor(v1::FLOAT32, {3, 2, 16}, rng_);
    *append.mutable_append()->mutable_v() = RandomTensor(v1::FLOAT32, {3, 2, 16}, rng_);
    const std::string k = append.append().k().data(), v = append.append().v().data();
    std::promise<absl::StatusOr<v1::SessionResponse>> p1, p2;
    auto f1 = p1.get_future(), f2 = p2.get_future();
    t.session.Call(attend,
                   [&p1](absl::StatusOr<v1::SessionResponse> r) { p1.set_value(std::move(r)); });
    t.session.Call(append,
                   [&p2](absl::StatusOr<v1::SessionResponse> r) { p2.set_value(std::move(r)); });
    absl::StatusOr<v1::SessionResponse> r1 = f1.get(), r2 = f2.get();
    ASSERT_TRUE(r1.ok()) << r1.status();
    ASSERT_TRUE(r2.ok()) << r2.status();
    t.model.Append(0, a.k_new().data(), a.v_new().data());
    EXPECT_EQ(CheckAttend(t.model, a, r1->attend()), "");
    t.model.Append(0, k, v);
    EXPECT_EQ(r2->append().tokens(), t.model.tokens(0));
  }
}

TEST_F(SessionIntegrationTest, ManySessionsSteppingTogetherShareLaunches) {
  // 16 sessions of one configuration send their decode steps at once, behind a long Attend of
  // another configuration that keeps the executor busy: the batcher packs the steps into shared
  // launches, and each answer matches its own history.
  std::vector<Tracked> sessions;
  for (int i = 0; i < 16; ++i) {
    sessions.push_back(Create(*client_, v1::BFLOAT16, 1, 2, 32));
    AppendRows(sessions.back(), 0, 10 + 7 * i, rng_);
  }
  Tracked blocker = Create(*client_, v1::FLOAT32, 1, 4, 64);
  AppendRows(blocker, 0, 4096, rng_);
  int most_sequences = 0;
  for (int step = 0; step < 4; ++step) {
    // About 0.5 GFLOP: tens of milliseconds on the CPU backend.
    std::promise<absl::StatusOr<v1::SessionResponse>> blocked;
    v1::SessionRequest block;
    *block.mutable_attend() = MakeAttend(blocker, 0, {.n_new = 64, .append = false}, rng_);
    blocker.session.Call(std::move(block), [&blocked](absl::StatusOr<v1::SessionResponse> a) {
      blocked.set_value(std::move(a));
    });
    std::vector<v1::AttendRequest> requests;
    std::vector<std::promise<absl::StatusOr<v1::SessionResponse>>> promises(sessions.size());
    for (size_t i = 0; i < sessions.size(); ++i) {
      requests.push_back(MakeAttend(sessions[i], 0, {}, rng_));
      v1::SessionRequest r;
      *r.mutable_attend() = requests.back();
      sessions[i].session.Call(std::move(r), [&promises, i](absl::StatusOr<v1::SessionResponse> a) {
        promises[i].set_value(std::move(a));
      });
    }
    for (size_t i = 0; i < sessions.size(); ++i) {
      absl::StatusOr<v1::SessionResponse> r = promises[i].get_future().get();
      ASSERT_TRUE(r.ok()) << r.status();
      sessions[i].model.Append(0, requests[i].k_new().data(), requests[i].v_new().data());
      EXPECT_EQ(CheckAttend(sessions[i].model, requests[i], r->attend()), "");
      most_sequences = std::max(most_sequences, r->attend().batch().sequences());
    }
    EXPECT_TRUE(blocked.get_future().get().ok());
  }
  // The first step finds an idle executor and launches alone; the rest queue behind it.
  EXPECT_GT(most_sequences, 1);
}

TEST_F(SessionIntegrationTest, UnaryMethods) {
  auto stub = v1::SessionService::NewStub(server_->Channel());
  v1::CreateSessionRequest create;
  create.set_layers(1);
  create.set_kv_heads(2);
  create.set_head_dim(16);
  create.set_dtype(v1::FLOAT32);
  create.set_idle_ttl_ms(60000);
  v1::CreateSessionResponse created;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(stub->CreateSession(&context, create, &created).ok());
  }
  EXPECT_EQ(created.replica(), "replica-0");
  EXPECT_THAT(created.session_id(), ::testing::EndsWith("@replica-0"));
  EXPECT_EQ(created.page_size(), 64 * 1024 / 2 / (2 * 16 * 4));
  EXPECT_EQ(created.idle_ttl_ms(), 60000);
  SessionModel model(v1::FLOAT32, 1, 2, 16);
  v1::AppendRequest append;
  append.set_session_id(created.session_id());
  *append.mutable_k() = RandomTensor(v1::FLOAT32, {9, 2, 16}, rng_);
  *append.mutable_v() = RandomTensor(v1::FLOAT32, {9, 2, 16}, rng_);
  v1::AppendResponse appended;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(stub->Append(&context, append, &appended).ok());
  }
  EXPECT_EQ(appended.tokens(), 9);
  model.Append(0, append.k().data(), append.v().data());
  const v1::AttendRequest attend = MakeAttend(created.session_id(), model, 0, {.n_new = 2}, rng_);
  v1::AttentionResponse answer;
  {
    grpc::ClientContext context;
    const grpc::Status s = stub->Attend(&context, attend, &answer);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  model.Append(0, attend.k_new().data(), attend.v_new().data());
  EXPECT_EQ(CheckAttend(model, attend, answer), "");
  v1::GetSessionRequest get;
  get.set_session_id(created.session_id());
  v1::GetSessionResponse info;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(stub->GetSession(&context, get, &info).ok());
  }
  EXPECT_EQ(info.tokens_size(), 1);
  EXPECT_EQ(info.tokens(0), 11);
  EXPECT_EQ(info.pages(), 1);
  EXPECT_EQ(info.dtype(), v1::FLOAT32);
  v1::ForkRequest fork;
  fork.set_session_id(created.session_id());
  fork.set_prefix_tokens(5);
  v1::ForkResponse forked;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(stub->Fork(&context, fork, &forked).ok());
  }
  EXPECT_NE(forked.session_id(), created.session_id());
  v1::TruncateRequest truncate;
  truncate.set_session_id(forked.session_id());
  truncate.set_tokens(2);
  v1::TruncateResponse truncated;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(stub->Truncate(&context, truncate, &truncated).ok());
  }
  for (const std::string& id : {created.session_id(), forked.session_id()}) {
    v1::ReleaseSessionRequest release;
    release.set_session_id(id);
    v1::ReleaseSessionResponse released;
    grpc::ClientContext context;
    ASSERT_TRUE(stub->ReleaseSession(&context, release, &released).ok());
  }
  grpc::ClientContext context;
  const grpc::Status gone = stub->GetSession(&context, get, &info);
  EXPECT_EQ(gone.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(gone.error_message(), HasSubstr("was released"));
}

TEST_F(SessionIntegrationTest, ErrorsNameTheFieldAndTheRule) {
  auto stub = v1::SessionService::NewStub(server_->Channel());
  auto create = [&](int layers, int kv_heads, int head_dim, v1::DType dtype) {
    v1::CreateSessionRequest r;
    r.set_layers(layers);
    r.set_kv_heads(kv_heads);
    r.set_head_dim(head_dim);
    r.set_dtype(dtype);
    v1::CreateSessionResponse out;
    grpc::ClientContext context;
    return stub->CreateSession(&context, r, &out);
  };
  EXPECT_THAT(create(0, 1, 16, v1::FLOAT32).error_message(), HasSubstr("layers: must be >= 1"));
  EXPECT_THAT(create(1, 1, 300, v1::FLOAT32).error_message(), HasSubstr("head_dim"));
  EXPECT_THAT(create(1, 1, 16, v1::BOOL).error_message(), HasSubstr("dtype"));
  EXPECT_EQ(create(1, 1, 16, v1::DTYPE_UNSPECIFIED).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  Tracked t = Create(*client_, v1::BFLOAT16, 2, 2, 32);
  AppendRows(t, 0, 3, rng_);
  auto attend_error = [&](v1::AttendRequest a) {
    absl::StatusOr<v1::AttentionResponse> r = Send(t.session, a);
    return r.ok() ? std::string("OK")
                  : absl::StrCat(static_cast<int>(r.status().code()), " ", r.status().message());
  };
  v1::AttendRequest good = MakeAttend(t, 0, {}, rng_);
  v1::AttendRequest bad = good;
  bad.mutable_q()->set_dtype(v1::FLOAT16);
  EXPECT_THAT(attend_error(bad), HasSubstr("q.dtype: must be the session's dtype BFLOAT16"));
  bad = good;
  *bad.mutable_q() = RandomTensor(v1::BFLOAT16, {1, 3, 32}, rng_);
  EXPECT_THAT(attend_error(bad), HasSubstr("must be a multiple of the session's kv_heads 2"));
  bad = good;
  bad.clear_v_new();
  EXPECT_THAT(attend_error(bad), HasSubstr("k_new, v_new: give both or neither"));
  bad = good;
  *bad.mutable_k_new() = RandomTensor(v1::BFLOAT16, {2, 2, 32}, rng_);
  EXPECT_THAT(attend_error(bad), HasSubstr("k_new.shape"));
  bad = good;
  bad.set_layer(2);
  EXPECT_THAT(attend_error(bad), HasSubstr("layer"));
  bad = good;
  bad.mutable_key_range()->set_start(5);
  bad.mutable_key_range()->set_end(4);
  EXPECT_THAT(attend_error(bad), HasSubstr("key_range"));
  bad = good;
  bad.set_softmax_scale(std::numeric_limits<float>::infinity());
  EXPECT_THAT(attend_error(bad), HasSubstr("softmax_scale"));
  // A refused Attend leaves the session as it was: the good one still sees 3 rows + its own.
  absl::StatusOr<v1::AttentionResponse> r = Send(t.session, good);
  ASSERT_TRUE(r.ok()) << r.status();
  t.model.Append(0, good.k_new().data(), good.v_new().data());
  EXPECT_EQ(CheckAttend(t.model, good, *r), "");

  // Ids: malformed, of another replica, unknown here.
  bad = good;
  bad.set_session_id("not-an-id");
  EXPECT_THAT(attend_error(bad), HasSubstr("3 session_id"));
  const std::string hex = t.session.id().substr(0, 32);
  bad.set_session_id(hex + "@replica-7");
  EXPECT_THAT(attend_error(bad),
              HasSubstr("is held by replica replica-7, not replica-0: send its calls there"));
  EXPECT_THAT(attend_error(bad), ::testing::StartsWith("9 "));  // FAILED_PRECONDITION
  bad.set_session_id(std::string(32, 'a') + "@replica-0");
  EXPECT_THAT(attend_error(bad), HasSubstr("5 session_id: no session aaaaaaaa here"));

  // A SessionRequest without a call is answered, and the stream goes on.
  std::promise<absl::StatusOr<v1::SessionResponse>> p;
  t.session.Call(v1::SessionRequest(),
                 [&p](absl::StatusOr<v1::SessionResponse> a) { p.set_value(std::move(a)); });
  absl::StatusOr<v1::SessionResponse> empty = p.get_future().get();
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(empty.status().message(), HasSubstr("call: no call set"));
  Step(t, 1, {}, rng_);
}

TEST_F(SessionIntegrationTest, AppendsFromAnotherStreamNeverTearAnAttend) {
  // One stream attends (no new rows) while another appends to the same layer: each Attend reads
  // the context as some whole number of appends left it, never a torn one.
  Tracked t = Create(*client_, v1::FLOAT32, 1, 2, 16);
  AppendRows(t, 0, 30, rng_);
  absl::StatusOr<SessionClient> other = SessionClient::Create(server_->address());
  ASSERT_TRUE(other.ok());
  absl::StatusOr<Session> writer = other->Attach(t.session.id());
  ASSERT_TRUE(writer.ok());
  constexpr int kAppends = 20, kRows = 3;
  SessionModel full = t.model;
  std::vector<std::pair<std::string, std::string>> chunks;
  for (int i = 0; i < kAppends; ++i) {
    chunks.emplace_back(RandomValues(v1::FLOAT32, kRows * 2 * 16, rng_),
                        RandomValues(v1::FLOAT32, kRows * 2 * 16, rng_));
    full.Append(0, chunks.back().first, chunks.back().second);
  }
  std::thread appender([&] {
    for (const auto& [k, v] : chunks) {
      const std::vector<int64_t> shape = {kRows, 2, 16};
      EXPECT_TRUE(
          writer->Append(0, {v1::FLOAT32, k.data(), shape}, {v1::FLOAT32, v.data(), shape}).ok());
    }
  });
  std::vector<v1::AttendRequest> requests;
  std::vector<absl::StatusOr<v1::AttentionResponse>> answers;
  for (int i = 0; i < 30; ++i) {
    requests.push_back(MakeAttend(t, 0, {.n_new = 2, .append = false}, rng_));
    answers.push_back(Send(t.session, requests.back()));
  }
  appender.join();
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(answers[i].ok()) << answers[i].status();
    bool matched = false;
    for (int appends = 0; appends <= kAppends && !matched; ++appends) {
      matched = CheckAttend(full.Fork(30 + appends * kRows), requests[i], *answers[i]).empty();
    }
    EXPECT_TRUE(matched) << "attend " << i << " read no whole number of appends";
  }
}

// A stream's steps in flight together (the lone-request fast path, server/cuda, must leave this
// as it was): answered once each, in arrival order, read while earlier ones run, none lost to a
// drain.

TEST_F(SessionIntegrationTest, PipelinedStepsOnOneStreamAreAnsweredOnceInArrivalOrder) {
  // 24 decode steps sent back to back without waiting: each one appends its row and reads the
  // context its predecessors left, so any reordering or a lost or repeated append fails the
  // reference; every callback fires once (a second answer would set its promise twice).
  Tracked t = Create(*client_, v1::FLOAT32, 1, 2, 16);
  AppendRows(t, 0, 20, rng_);
  constexpr int kSteps = 24;
  std::vector<v1::AttendRequest> requests;
  std::vector<std::promise<absl::StatusOr<v1::SessionResponse>>> promises(kSteps);
  for (int i = 0; i < kSteps; ++i) {
    requests.push_back(MakeAttend(t, 0, {}, rng_));
    v1::SessionRequest r;
    *r.mutable_attend() = requests.back();
    t.session.Call(std::move(r), [&promises, i](absl::StatusOr<v1::SessionResponse> a) {
      promises[i].set_value(std::move(a));
    });
  }
  for (int i = 0; i < kSteps; ++i) {
    absl::StatusOr<v1::SessionResponse> r = promises[i].get_future().get();
    ASSERT_TRUE(r.ok()) << r.status();
    t.model.Append(0, requests[i].k_new().data(), requests[i].v_new().data());
    EXPECT_EQ(CheckAttend(t.model, requests[i], r->attend()), "") << "step " << i;
  }
}

TEST_F(SessionIntegrationTest, AStreamReadsItsNextMessageWhileALoneAttendRuns) {
  // A long Attend finds the server idle and runs; the stream's next message (another session's
  // step) is read meanwhile, not after it: it waits in the queue for about as long as the long
  // one runs. A reaction that waited for its device work would hold the read back (gRPC runs the
  // next read's reaction on the same thread, after the current one returns), which this catches.
  Tracked blocker = Create(*client_, v1::FLOAT32, 1, 4, 64);
  AppendRows(blocker, 0, 8192, rng_);
  Tracked small = Create(*client_, v1::FLOAT32, 1, 2, 16);
  AppendRows(small, 0, 10, rng_);
  // Both sessions' calls go out on one stream: the client keeps one per replica.
  std::promise<absl::StatusOr<v1::SessionResponse>> long_done, step_done;
  v1::SessionRequest long_call, step_call;
  // About 1 GFLOP: tens of milliseconds on the CPU backend.
  *long_call.mutable_attend() = MakeAttend(blocker, 0, {.n_new = 64, .append = false}, rng_);
  const v1::AttendRequest step = MakeAttend(small, 0, {}, rng_);
  *step_call.mutable_attend() = step;
  blocker.session.Call(std::move(long_call), [&long_done](absl::StatusOr<v1::SessionResponse> a) {
    long_done.set_value(std::move(a));
  });
  small.session.Call(std::move(step_call), [&step_done](absl::StatusOr<v1::SessionResponse> a) {
    step_done.set_value(std::move(a));
  });
  absl::StatusOr<v1::SessionResponse> long_answer = long_done.get_future().get();
  absl::StatusOr<v1::SessionResponse> step_answer = step_done.get_future().get();
  ASSERT_TRUE(long_answer.ok()) << long_answer.status();
  ASSERT_TRUE(step_answer.ok()) << step_answer.status();
  small.model.Append(0, step.k_new().data(), step.v_new().data());
  EXPECT_EQ(CheckAttend(small.model, step, step_answer->attend()), "");
  // Timed on the CPU backend only, where the long Attend runs for milliseconds (on a GPU it may
  // be done before the step is read at all).
  if (ServerBackendUnderTest() == "cuda") return;
  const int64_t long_kernel_ns = long_answer->attend().timings().kernel_ns();
  ASSERT_GT(long_kernel_ns, 2'000'000) << "the long Attend is too short to tell";
  ASSERT_LT(long_answer->attend().batch().batch_id(), step_answer->attend().batch().batch_id());
  // A quarter: on a loaded host the step's read may lag the long launch a little.
  EXPECT_GT(step_answer->attend().timings().queue_ns(), long_kernel_ns / 4)
      << "the step was read only after the long Attend was answered";
}

TEST(SessionDrain, DrainWithStepsInFlightAnswersEveryCallOnce) {
  // Steps pipelined on a stream while the server drains and shuts down: every call gets exactly
  // one answer (OK, or UNAVAILABLE / CANCELLED for those the drain refused), none is lost, and
  // the drain does not hang.
  std::string error;
  std::unique_ptr<InProcessSessionServer> server = InProcessSessionServer::Start({}, &error);
  ASSERT_NE(server, nullptr) << error;
  absl::StatusOr<SessionClient> client = SessionClient::Create(server->address());
  ASSERT_TRUE(client.ok()) << client.status();
  std::mt19937 rng(7);
  Tracked t = Create(*client, v1::FLOAT32, 1, 2, 16);
  AppendRows(t, 0, 64, rng);
  constexpr int kSteps = 64;
  std::vector<std::promise<absl::StatusOr<v1::SessionResponse>>> promises(kSteps);
  std::vector<std::future<absl::StatusOr<v1::SessionResponse>>> answers;
  for (auto& p : promises) answers.push_back(p.get_future());
  std::atomic<int> callbacks{0};
  for (int i = 0; i < kSteps; ++i) {
    v1::SessionRequest r;
    *r.mutable_attend() = MakeAttend(t, 0, {.n_new = 4}, rng);
    t.session.Call(std::move(r), [&promises, &callbacks, i](absl::StatusOr<v1::SessionResponse> a) {
      callbacks.fetch_add(1);
      promises[i].set_value(std::move(a));
    });
  }
  // The drain starts once the steps are being served (the first one answered), not before the
  // first one arrives.
  answers[0].wait();
  server.reset();  // drains: StartDrain, the batcher's Drain, then shutdown
  int ok = 0;
  for (int i = 0; i < kSteps; ++i) {
    absl::StatusOr<v1::SessionResponse> r = answers[i].get();
    if (r.ok() && !r->has_error()) {
      ++ok;
      continue;
    }
    const absl::StatusCode code =
        r.ok() ? static_cast<absl::StatusCode>(r->error().code()) : r.status().code();
    EXPECT_TRUE(code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kCancelled)
        << "step " << i << ": " << (r.ok() ? r->error().message() : r.status().ToString());
  }
  EXPECT_EQ(callbacks.load(), kSteps);
  EXPECT_GT(ok, 0);
}

TEST_F(SessionIntegrationTest, ConcurrentForksAndARelease) {
  // Threads fork one session while another releases it: each fork either succeeds (and its
  // session holds the parent's rows) or is answered NOT_FOUND "was released"; nothing else.
  Tracked parent = Create(*client_, v1::BFLOAT16, 2, 2, 32);
  for (int layer = 0; layer < 2; ++layer) AppendRows(parent, layer, 45, rng_);
  std::atomic<int> forked{0}, refused{0};
  std::mutex mu;
  std::vector<Session> children;
  std::vector<std::thread> threads;
  for (int thread = 0; thread < 4; ++thread) {
    threads.emplace_back([&] {
      for (int i = 0; i < 25; ++i) {
        absl::StatusOr<Session> child = parent.session.Fork(30);
        if (child.ok()) {
          ++forked;
          std::lock_guard<std::mutex> lock(mu);
          children.push_back(*child);
        } else {
          EXPECT_EQ(child.status().code(), absl::StatusCode::kNotFound) << child.status();
          EXPECT_THAT(child.status().message(), HasSubstr("was released"));
          ++refused;
        }
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_TRUE(parent.session.Release().ok());
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(forked + refused, 100);
  for (size_t i = 0; i < children.size(); i += 7) {
    Tracked child{children[i], parent.model.Fork(30)};
    Step(child, i % 2, {.n_new = 2}, rng_);
  }
  for (const Session& child : children) EXPECT_TRUE(child.Release().ok());
  const session::StoreCounters counters = server_->store().counters();
  EXPECT_EQ(counters.sessions_live, 0);
  EXPECT_EQ(counters.pools[0].pages_used, 0);
}

TEST(SessionAvailability, ABackendWithoutSessionsRefusesCreateSession) {
  SessionServerOptions options;
  options.availability = absl::UnimplementedError("sessions: not on this backend");
  std::unique_ptr<InProcessSessionServer> server = StartServer(options);
  ASSERT_NE(server, nullptr);
  absl::StatusOr<SessionClient> client = SessionClient::Create(server->address());
  ASSERT_TRUE(client.ok());
  client::SessionOptions shape;
  shape.layers = 1;
  shape.kv_heads = 1;
  shape.head_dim = 16;
  absl::StatusOr<Session> refused = client->CreateSession(shape);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(refused.status().message(), HasSubstr("not on this backend"));
}

// A session call as a test drives it: answered by recording the status.
struct RecordedCall final : server::SessionCall {
  void Done(const absl::Status& status) override { answered = status; }
  absl::Status answered;
};

std::unique_ptr<RecordedCall> AttendCall(int rows, int heads, int head_dim, bool lse) {
  auto call = std::make_unique<RecordedCall>();
  v1::AttendRequest* attend = call->request.mutable_attend();
  v1::Tensor* q = attend->mutable_q();
  q->set_dtype(v1::FLOAT32);
  for (int64_t d : {rows, heads, head_dim}) q->add_shape(d);
  q->set_data(std::string(static_cast<size_t>(rows) * heads * head_dim * 4, '\0'));
  attend->set_return_lse(lse);
  return call;
}

TEST(SessionAnswerBudget, AnAttendHoldsItsAnswerInTheSharedBudgetUntilTheCallIsGone) {
  server::AnswerBudget budget(10000);
  server::SessionServiceOptions options;
  options.answer_budget = &budget;
  server::SessionServiceImpl service(options, nullptr, nullptr, nullptr);
  std::unique_ptr<RecordedCall> first = AttendCall(1, 4, 128, true);  // 2048 + 16 bytes
  ASSERT_TRUE(service.ReserveAnswer(*first).ok());
  EXPECT_EQ(budget.pending(), 2064);
  ASSERT_TRUE(service.ReserveAnswer(*first).ok());  // once per call
  EXPECT_EQ(budget.pending(), 2064);
  std::unique_ptr<RecordedCall> second = AttendCall(2, 4, 128, false);  // 4096 bytes
  ASSERT_TRUE(service.ReserveAnswer(*second).ok());
  EXPECT_EQ(budget.pending(), 6160);
  std::unique_ptr<RecordedCall> over = AttendCall(2, 4, 128, false);
  const absl::Status refused = service.ReserveAnswer(*over);
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.message(), HasSubstr("--max_pending_answer_bytes"));
  EXPECT_EQ(budget.pending(), 6160);
  RecordedCall create;  // calls other than Attend answer no tensors
  create.request.mutable_create();
  EXPECT_TRUE(service.ReserveAnswer(create).ok());
  EXPECT_EQ(budget.pending(), 6160);
  first.reset();  // answered and written: its bytes come back
  EXPECT_EQ(budget.pending(), 4096);
  over.reset();
  second.reset();
  EXPECT_EQ(budget.pending(), 0);
}

class SmallPoolTest : public SessionIntegrationTest {
 protected:
  void SetUp() override {
    // 8 pages of 4 KiB: rows of 1 x 16 x fp32 (64 bytes) give 32 tokens per page.
    options_.page_bytes = 4096;
    options_.num_pages = 8;
    SessionIntegrationTest::SetUp();
  }
};

TEST_F(SmallPoolTest, EvictionThenRecreation) {
  Tracked a = Create(*client_, v1::FLOAT32, 1, 1, 16);
  AppendRows(a, 0, 5 * 32, rng_);  // 5 pages
  Step(a, 0, {}, rng_);            // a 6th page
  Tracked b = Create(*client_, v1::FLOAT32, 1, 1, 16);
  AppendRows(b, 0, 4 * 32, rng_);  // needs 4 pages, 2 free: a, idle, is evicted
  Step(b, 0, {}, rng_);
  absl::StatusOr<v1::AttentionResponse> gone = Send(a.session, MakeAttend(a, 0, {}, rng_));
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(gone.status().message(), HasSubstr("was evicted to free K/V pages"));
  // The client rebuilds it: a new session, its context appended again.
  SessionModel history = a.model;
  a = Create(*client_, v1::FLOAT32, 1, 1, 16);
  ASSERT_TRUE(b.session.Release().ok());
  const std::vector<int64_t> shape = {history.tokens(0), 1, 16};
  ASSERT_TRUE(a.session
                  .Append(0, {v1::FLOAT32, history.k[0].data(), shape},
                          {v1::FLOAT32, history.v[0].data(), shape})
                  .ok());
  a.model = history;
  Step(a, 0, {.n_new = 3}, rng_);
}

TEST_F(SmallPoolTest, PoolExhaustedThenRecovered) {
  Tracked busy = Create(*client_, v1::FLOAT32, 1, 1, 16);
  AppendRows(busy, 0, 100, rng_);  // 4 pages
  Tracked big = Create(*client_, v1::FLOAT32, 1, 1, 16);
  AppendRows(big, 0, 10, rng_);
  // 9 more pages than the pool has, even after evicting `busy`: refused, nothing changes.
  v1::AttendRequest huge = MakeAttend(big, 0, {.n_new = 300}, rng_);
  absl::StatusOr<v1::AttentionResponse> refused = Send(big.session, huge);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  Step(big, 0, {}, rng_);
  Step(busy, 0, {}, rng_);
  // Once `busy` is released there is room for 200 more rows.
  ASSERT_TRUE(busy.session.Release().ok());
  Step(big, 0, {.n_new = 200}, rng_);
  Step(big, 0, {}, rng_);
}

TEST(SessionUndo, AnAttendRefusedAfterItsAppendLeavesTheSessionAsItWas) {
  // The work limit is checked once the context (with k_new) is known, after the append: the
  // refusal must take the new row back out, and the page it opened.
  SessionServerOptions options;
  options.limits_per_request.max_request_work = 1e6;
  std::unique_ptr<InProcessSessionServer> server = StartServer(options);
  ASSERT_NE(server, nullptr);
  absl::StatusOr<SessionClient> client = SessionClient::Create(server->address());
  ASSERT_TRUE(client.ok());
  std::mt19937 rng(17);
  // 2 KV heads x 64 x bf16 = 256-byte rows: 128 tokens per 64 KiB page, 2048 tokens = 16 pages.
  Tracked t = Create(*client, v1::BFLOAT16, 1, 2, 64);
  AppendRows(t, 0, 2048, rng);
  const v1::AttendRequest a = MakeAttend(t, 0, {.q_heads = 8}, rng);
  absl::StatusOr<v1::AttentionResponse> refused = Send(t.session, a);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("--max_request_gflop"));
  absl::StatusOr<v1::GetSessionResponse> info = t.session.Info();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->tokens(0), 2048);
  EXPECT_EQ(info->pages(), 16);
  EXPECT_EQ(server->store().counters().pools[0].pages_used, 16);
}

TEST(SessionRowAppends, OnTheGpuAStepsRowsGoWithItsLaunchUnlessTheyDoNotFitItsSlot) {
  // The GPU executor writes a step's k_new / v_new in the batch's own stream, uploaded with q,
  // never through the pool's staging lanes, unless they do not fit the batch's pipeline slot beside
  // its buffers: then through the lanes, ordered before the attention. Pinned slots of 24 KiB:
  // a 16-row step of 4 KV heads x 64 x bf16 (MHA) needs about 17 KiB of buffers and 16 KiB more
  // for its rows; a 1-row step fits whole.
  if (ServerBackendUnderTest() != "cuda") {
    GTEST_SKIP() << "the GPU executor's pipeline slots (ATTN_TEST_BACKEND=cuda)";
  }
  const char* in_stream = std::getenv("ATTN_APPEND_IN_STREAM");
  if (in_stream != nullptr && std::string(in_stream) == "0") {
    GTEST_SKIP() << "ATTN_APPEND_IN_STREAM=0: every step's rows go through the lanes";
  }
  SessionServerOptions options;
  options.pinned_host_bytes = 6 * 24 * 1024;
  options.device_memory_bytes = 6 * (int64_t{4} << 20);
  std::unique_ptr<InProcessSessionServer> server = StartServer(options);
  ASSERT_NE(server, nullptr);
  absl::StatusOr<SessionClient> client = SessionClient::Create(server->address());
  ASSERT_TRUE(client.ok());
  std::mt19937 rng(29);
  Tracked t = Create(*client, v1::BFLOAT16, 1, 4, 64);
  AppendRows(t, 0, 100, rng);
  const int64_t lanes = server->device_pool_row_writes();
  Step(t, 0, {.q_heads = 4}, rng);
  EXPECT_EQ(server->device_pool_row_writes(), lanes) << "a 1-row step's rows went through a lane";
  Step(t, 0, {.n_new = 16, .q_heads = 4}, rng);
  EXPECT_EQ(server->device_pool_row_writes(), lanes + 1)
      << "a 16-row step's rows, too large for the slot, did not go through a lane";
  // The next step reads the lane's rows and writes its own in its stream.
  Step(t, 0, {.q_heads = 4}, rng);
  EXPECT_EQ(server->device_pool_row_writes(), lanes + 1);
  Step(t, 0, {.n_new = 3, .q_heads = 4, .window_left = 40}, rng);
}

TEST(SessionPageSizes, EveryPageSizeMatchesTheReference) {
  // Rows of 1 KV head x 32 x fp32 = 128 bytes: page sizes of 1, 3, 8, 17 and 64 tokens.
  for (const int64_t page_bytes : {256, 768, 2048, 4352, 16384}) {
    SCOPED_TRACE(absl::StrCat("page_bytes ", page_bytes));
    SessionServerOptions options;
    options.page_bytes = page_bytes;
    options.num_pages = 4096;
    std::unique_ptr<InProcessSessionServer> server = StartServer(options);
    ASSERT_NE(server, nullptr);
    absl::StatusOr<SessionClient> client = SessionClient::Create(server->address());
    ASSERT_TRUE(client.ok());
    std::mt19937 rng(static_cast<uint32_t>(page_bytes));
    Tracked t = Create(*client, v1::FLOAT32, 1, 1, 32);
    EXPECT_EQ(t.session.page_size(), page_bytes / 2 / 128);
    AppendRows(t, 0, 50, rng);  // a partial last page for every size but 1
    absl::StatusOr<Session> forked = t.session.Fork(20);
    ASSERT_TRUE(forked.ok());
    Tracked f{*forked, t.model.Fork(20)};
    for (int i = 0; i < 3; ++i) {
      Step(t, 0, {.n_new = 2, .window_left = 9}, rng);
      Step(f, 0, {.n_new = 1 + i}, rng);
    }
  }
}

}  // namespace
}  // namespace attention::testing
