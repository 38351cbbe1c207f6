// Fuzz target of the session service: untrusted bytes -> a sequence of SessionRequests -> the
// SessionService (SessionServiceImpl::Run, as the unary and stream reactors call it, minus gRPC)
// over a small store, with Attend executed by the CPU executor through the batcher. Built as a
// libFuzzer binary with clang (tests/fuzz/CMakeLists.txt) and, in every build, as a program that
// replays the checked-in corpus (session_corpus/, through corpus_main.cc).
//
// Input: a protobuf stream of field-1 length-delimited records (what `repeated SessionRequest
// calls = 1;` would serialize to), at most kMaxCalls of them. A session_id "#k" stands for the
// k-th session this input created (by create or fork), so that inputs can name the 128-bit
// random ids of sessions they make; any other text is sent as it is.
//
// Besides the sanitizers' findings, it checks the contract on every input:
//   - every call is answered exactly once, within 30 s;
//   - a refusal has a code of the contract (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, NOT_FOUND,
//     FAILED_PRECONDITION, OUT_OF_RANGE) and a "field: rule" message;
//   - an answer has the kind of its call: CreateSession and Fork an id of this replica, Append
//     the layer's new length, Attend o in q's dtype and shape (and lse [q_heads, n_new]);
//   - after every call, each live session's layers hold exactly the tokens a model of the calls
//     that succeeded says (a refused Append or Attend leaves the session as it was);
//   - once the input's sessions are released, the store holds no session and no page.
// A broken rule prints what broke and aborts.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "attention/v1/attention.pb.h"
#include "google/protobuf/io/coded_stream.h"
#include "server/batcher.h"
#include "server/cpu_executor.h"
#include "server/session/page_storage.h"
#include "server/session/session_store.h"
#include "server/session_service.h"

namespace attention::server {
namespace {

constexpr int kMaxCalls = 64;
constexpr char kReplica[] = "fuzz-0";

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "session_fuzzer: contract broken: %s\n", what.c_str());
  std::abort();
}

// The service over a store of 16 pages of 4 KiB (16..32 tokens of small shapes per page: small
// enough for a seed to fill it), the CPU executor with one thread. Never destroyed (libFuzzer exits
// from anywhere).
struct Env {
  std::unique_ptr<session::SessionStore> store;
  std::unique_ptr<CpuExecutor> executor;
  std::unique_ptr<Batcher> batcher;
  std::unique_ptr<SessionServiceImpl> service;
};

Env& Environment() {
  static Env* env = [] {
    auto* e = new Env;
    session::PoolOptions pool;
    pool.page_bytes = 4096;
    pool.num_pages = 16;
    std::vector<std::unique_ptr<session::PageStorage>> storages;
    storages.push_back(*session::HostPageStorage::Create(pool));
    session::StoreOptions options;
    options.limits.max_layers = 8;
    options.limits.max_tokens = 1024;
    options.limits.max_sessions = 64;
    options.sweep_interval = absl::ZeroDuration();
    e->store = *session::SessionStore::Create(options, std::move(storages));
    ExecutorOptions executor;
    executor.cpu_threads = 1;
    e->executor = std::make_unique<CpuExecutor>(executor, nullptr);
    e->batcher = std::make_unique<Batcher>(BatcherOptions(),
                                           std::vector<Executor*>{e->executor.get()}, nullptr);
    SessionServiceOptions service;
    service.replica = kReplica;
    service.limits.max_request_tokens = 256;
    service.limits.max_heads = 16;
    service.limits.max_request_work = 5e7;
    e->service =
        std::make_unique<SessionServiceImpl>(service, e->store.get(), e->batcher.get(), nullptr);
    return e;
  }();
  return *env;
}

// A call answered into a promise.
class FuzzCall final : public SessionCall {
 public:
  void Done(const absl::Status& status) override {
    if (answered_) Fail("a call was answered twice");
    answered_ = true;
    status_ = status;
    done_.set_value();
  }
  absl::Status Wait() {
    if (done_.get_future().wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
      Fail("a call was not answered within 30 s");
    }
    return status_;
  }

 private:
  bool answered_ = false;
  absl::Status status_;
  std::promise<void> done_;
};

std::string* SessionIdField(v1::SessionRequest& r) {
  switch (r.call_case()) {
    case v1::SessionRequest::kAppend:
      return r.mutable_append()->mutable_session_id();
    case v1::SessionRequest::kAttend:
      return r.mutable_attend()->mutable_session_id();
    case v1::SessionRequest::kFork:
      return r.mutable_fork()->mutable_session_id();
    case v1::SessionRequest::kTruncate:
      return r.mutable_truncate()->mutable_session_id();
    case v1::SessionRequest::kRelease:
      return r.mutable_release()->mutable_session_id();
    case v1::SessionRequest::kGet:
      return r.mutable_get()->mutable_session_id();
    default:
      return nullptr;
  }
}

// What the calls that succeeded left in one session.
struct Model {
  std::string id;
  std::vector<int64_t> tokens;  // per layer
  bool live = true;
};

std::string Describe(const v1::SessionRequest& r) {
  std::string text = r.ShortDebugString();
  if (text.size() > 300) text = text.substr(0, 300) + "...";
  return text;
}

void CheckRefusal(const absl::Status& status, const v1::SessionRequest& r) {
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      break;
    default:
      Fail(absl::StrCat("refusal with code ", absl::StatusCodeToString(status.code()), ": ",
                        status.message(), " for ", Describe(r)));
  }
  if (!absl::StrContains(status.message(), ": ")) {
    Fail(absl::StrCat("refusal without 'field: rule': ", status.message()));
  }
}

// Each live session's layers against the model. A session may have ended without a Release:
// evicted by another's append, or expired (an input may ask for a TTL of a millisecond).
void CheckModels(Env& env, std::vector<Model>& models) {
  for (Model& m : models) {
    if (!m.live) continue;
    FuzzCall get;
    get.request.mutable_get()->set_session_id(m.id);
    env.service->Run(&get);
    const absl::Status status = get.Wait();
    if (absl::IsNotFound(status) && (absl::StrContains(status.message(), "was evicted") ||
                                     absl::StrContains(status.message(), "expired after"))) {
      m.live = false;
      continue;
    }
    if (!status.ok()) Fail(absl::StrCat("GetSession of a live session: ", status.ToString()));
    const auto& tokens = get.response.get().tokens();
    if (std::vector<int64_t>(tokens.begin(), tokens.end()) != m.tokens) {
      Fail(absl::StrCat("session holds [", absl::StrJoin(tokens, ","), "], the model [",
                        absl::StrJoin(m.tokens, ","), "]"));
    }
  }
}

// Applies an answered call to the models and checks its answer's kind.
void Apply(const v1::SessionRequest& r, const v1::SessionResponse& answer, int target,
           std::vector<Model>& models) {
  switch (r.call_case()) {
    case v1::SessionRequest::kCreate: {
      if (!answer.has_create() || !absl::EndsWith(answer.create().session_id(), "@fuzz-0")) {
        Fail("CreateSession answered no id of this replica");
      }
      models.push_back({answer.create().session_id(),
                        std::vector<int64_t>(static_cast<size_t>(r.create().layers()), 0)});
      return;
    }
    case v1::SessionRequest::kFork: {
      Model child = models[target];
      child.id = answer.fork().session_id();
      for (int64_t& t : child.tokens) t = std::min(t, r.fork().prefix_tokens());
      models.push_back(child);
      return;
    }
    case v1::SessionRequest::kAppend: {
      int64_t& tokens = models[target].tokens[static_cast<size_t>(r.append().layer())];
      tokens += r.append().k().shape(0);
      if (answer.append().tokens() != tokens) Fail("Append answered another length");
      return;
    }
    case v1::SessionRequest::kAttend: {
      const v1::AttendRequest& a = r.attend();
      if (a.has_k_new()) {
        models[target].tokens[static_cast<size_t>(a.layer())] += a.k_new().shape(0);
      }
      const v1::AttentionResponse& o = answer.attend();
      if (o.o().dtype() != a.q().dtype() ||
          std::vector<int64_t>(o.o().shape().begin(), o.o().shape().end()) !=
              std::vector<int64_t>(a.q().shape().begin(), a.q().shape().end()) ||
          o.o().data().size() != a.q().data().size()) {
        Fail("Attend answered o unlike q");
      }
      if (a.return_lse() && (o.lse().shape_size() != 2 || o.lse().shape(0) != a.q().shape(1) ||
                             o.lse().shape(1) != a.q().shape(0))) {
        Fail("Attend answered lse of another shape than [q_heads, n_new]");
      }
      return;
    }
    case v1::SessionRequest::kTruncate:
      for (int64_t& t : models[target].tokens) t = std::min(t, r.truncate().tokens());
      return;
    case v1::SessionRequest::kRelease:
      models[target].live = false;
      return;
    default:
      return;
  }
}

}  // namespace
}  // namespace attention::server

// 0: no call in the input; 1: some call was refused; 2: every call succeeded.
extern "C" int AttentionFuzzRun(const uint8_t* data, size_t size) {
  using namespace attention;
  using namespace attention::server;
  Env& env = Environment();
  std::vector<v1::SessionRequest> calls;
  google::protobuf::io::CodedInputStream in(data, static_cast<int>(size));
  while (calls.size() < kMaxCalls) {
    const uint32_t tag = in.ReadTag();
    if (tag != ((1u << 3) | 2u)) break;  // field 1, length-delimited; anything else ends it
    uint32_t length = 0;
    if (!in.ReadVarint32(&length)) break;
    std::string bytes;
    if (!in.ReadString(&bytes, static_cast<int>(length))) break;
    v1::SessionRequest request;
    // Bytes that are not a SessionRequest: the stream would end INVALID_ARGUMENT, no call runs.
    if (request.ParseFromString(bytes)) calls.push_back(std::move(request));
  }
  if (calls.empty()) return 0;

  std::vector<Model> models;
  bool all_ok = true;
  for (v1::SessionRequest& request : calls) {
    int target = -1;
    if (std::string* id = SessionIdField(request);
        id != nullptr && !id->empty() && (*id)[0] == '#') {
      const int k = std::atoi(id->c_str() + 1);
      if (k >= 0 && k < static_cast<int>(models.size())) {
        target = k;
        *id = models[k].id;
      }
    }
    FuzzCall call;
    call.request = request;
    env.service->Run(&call);
    const absl::Status status = call.Wait();
    if (status.ok()) {
      if (request.call_case() != v1::SessionRequest::kCreate &&
          request.call_case() != v1::SessionRequest::kGet && target < 0) {
        Fail(absl::StrCat("a call on an id this input did not create succeeded: ",
                          Describe(request)));
      }
      Apply(request, call.response, target, models);
    } else {
      all_ok = false;
      if (request.call_case() == v1::SessionRequest::CALL_NOT_SET) {
        if (status.code() != absl::StatusCode::kInvalidArgument) Fail("an empty call not refused");
      } else {
        CheckRefusal(status, request);
      }
    }
    CheckModels(env, models);
  }

  for (const Model& m : models) {
    if (!m.live) continue;
    FuzzCall release;
    release.request.mutable_release()->set_session_id(m.id);
    env.service->Run(&release);
    const absl::Status released = release.Wait();
    if (!released.ok() && !absl::IsNotFound(released)) {
      Fail(absl::StrCat("releasing the input's sessions: ", released.ToString()));
    }
  }
  // Sessions that expired unseen are ended by the sweep (the fuzz store has no sweeper thread).
  env.store->SweepExpired();
  const session::StoreCounters counters = env.store->counters();
  if (counters.sessions_live != 0 || counters.pools[0].pages_used != 0) {
    Fail(absl::StrCat("after releasing every session: ", counters.sessions_live, " sessions live, ",
                      counters.pools[0].pages_used, " pages used"));
  }
  return all_ok ? 2 : 1;
}

#ifdef ATTN_LIBFUZZER
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  AttentionFuzzRun(data, size);
  return 0;
}
#endif
