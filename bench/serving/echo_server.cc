// attention_echo_server: the serving benchmark's baseline. The same AttentionService on the same
// gRPC callback API and message limits as attention_server, but it computes nothing: each answer
// is o = the request's q bytes (same dtype and shape), so a load generator sees the transport and
// serialization cost of real-sized messages alone.
#include <malloc.h>
#include <signal.h>

#include <cstdio>
#include <deque>
#include <memory>
#include <mutex>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "attention/v1/attention.grpc.pb.h"
#include "grpcpp/grpcpp.h"

ABSL_FLAG(std::string, address, "127.0.0.1:50052",
          "Listening address host:port (port 0 picks a free one, printed as 'listening "
          "address=HOST:PORT')");
ABSL_FLAG(int64_t, max_message_bytes, int64_t{1} << 30, "Largest message, as attention_server's");

namespace attention::bench {
namespace {

using Request = v1::AttentionRequest;
using Response = v1::AttentionResponse;

void Echo(const Request& request, Response* response) {
  response->set_request_id(request.request_id());
  v1::Tensor* o = response->mutable_o();
  o->set_dtype(request.q().dtype());
  o->mutable_shape()->CopyFrom(request.q().shape());
  o->set_data(request.q().data());
}

// Bidirectional echo: reads continue while answers are written one at a time.
class EchoStream final : public grpc::ServerBidiReactor<Request, Response> {
 public:
  EchoStream() { StartRead(&request_); }

  void OnReadDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (!ok) {
      reads_done_ = true;
      MaybeFinish(lock);
      return;
    }
    pending_.emplace_back();
    Echo(request_, &pending_.back());
    const bool start_write = pending_.size() == 1;
    lock.unlock();
    if (start_write) StartWrite(&pending_.front());
    StartRead(&request_);
  }

  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mu_);
    pending_.pop_front();
    if (!ok) {
      pending_.clear();
      reads_done_ = true;
    }
    if (!pending_.empty()) {
      const Response* next = &pending_.front();
      lock.unlock();
      StartWrite(next);
      return;
    }
    MaybeFinish(lock);
  }

  void OnDone() override { delete this; }

 private:
  // Finishes once the client half-closed and every answer is written; unlocks `lock`.
  void MaybeFinish(std::unique_lock<std::mutex>& lock) {
    if (!reads_done_ || !pending_.empty() || finished_) return;
    finished_ = true;
    lock.unlock();
    Finish(grpc::Status::OK);
  }

  Request request_;
  std::mutex mu_;
  std::deque<Response> pending_;  // front() is being written
  bool reads_done_ = false;
  bool finished_ = false;
};

class EchoService final : public v1::AttentionService::CallbackService {
  grpc::ServerUnaryReactor* Attention(grpc::CallbackServerContext* context, const Request* request,
                                      Response* response) override {
    Echo(*request, response);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  grpc::ServerBidiReactor<Request, Response>* AttentionStream(
      grpc::CallbackServerContext*) override {
    return new EchoStream();
  }
};

int Serve() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  EchoService service;
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  const std::string address = absl::GetFlag(FLAGS_address);
  int port = 0;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  const int max_message = static_cast<int>(absl::GetFlag(FLAGS_max_message_bytes));
  builder.SetMaxReceiveMessageSize(max_message);
  builder.SetMaxSendMessageSize(max_message);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "event=bind_failed address=%s\n", address.c_str());
    return 1;
  }
  std::printf("listening address=%s:%d\n", address.substr(0, address.rfind(':')).c_str(), port);
  std::fflush(stdout);
  int signal_number = 0;
  sigwait(&signals, &signal_number);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  return 0;
}

}  // namespace
}  // namespace attention::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("attention_echo_server: the serving benchmark's echo baseline");
  absl::ParseCommandLine(argc, argv);
  // As strong a baseline as the allocator allows: each call parses three tensors into fresh
  // strings and frees them, and with glibc's dynamic thresholds those blocks went back to the
  // system and were faulted in again on the next call. Heap up to 32 MiB blocks, keep 1 GiB.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  return attention::bench::Serve();
}
