#include "tests/server/server_process.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <future>
#include <iostream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "grpc/grpc.h"
#include "grpcpp/generic/generic_stub.h"
#include "tests/server/server_test_util.h"

extern char** environ;

namespace attention::testing {

using namespace std::chrono_literals;

namespace {

// Keeps gRPC initialized for the whole test process. Otherwise the destruction of the last
// channel runs grpc_shutdown, which in gRPC 1.51 joins a poller thread that may sleep until the
// next timer it knew of (e.g. a finished call's deadline): seconds of dead time per test.
[[maybe_unused]] const bool kGrpcKeptInitialized = [] {
  grpc_init();
  return true;
}();

}  // namespace

ServerProcess::~ServerProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (reader_.joinable()) reader_.join();
  if (output_fd_ >= 0) close(output_fd_);
}

std::string ServerProcess::Start(const std::vector<std::string>& flags,
                                 const std::vector<std::string>& env) {
  const char* binary = std::getenv("ATTN_SERVER_BINARY");
  if (binary == nullptr) return "ATTN_SERVER_BINARY is not set";
  std::vector<std::string> args = {binary, "--address=127.0.0.1:0",
                                   "--metrics_address=", "--backend=" + ServerBackendUnderTest(),
                                   "--cpu_threads=2"};
  // A bounded device pool, so that several test servers can share one GPU.
  if (ServerBackendUnderTest() == "cuda") args.push_back("--device_memory_bytes=4294967296");
  args.insert(args.end(), flags.begin(), flags.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> environment;
  for (char** e = environ; *e != nullptr; ++e) environment.emplace_back(*e);
  environment.insert(environment.end(), env.begin(), env.end());
  std::vector<char*> envp;
  for (auto& e : environment) envp.push_back(e.data());
  envp.push_back(nullptr);

  int fds[2];
  if (pipe(fds) != 0) return "pipe failed";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  const int rc = posix_spawn(&pid_, binary, &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  output_fd_ = fds[0];
  if (rc != 0) {
    pid_ = -1;
    return absl::StrCat("cannot start ", binary);
  }
  reader_ = std::thread([this] {
    char buf[4096];
    ssize_t n;
    while ((n = read(output_fd_, buf, sizeof(buf))) > 0) {
      std::cerr.write(buf, n);
      std::lock_guard<std::mutex> lock(mu_);
      output_.append(buf, static_cast<size_t>(n));
      cv_.notify_all();
    }
    std::lock_guard<std::mutex> lock(mu_);
    output_closed_ = true;
    cv_.notify_all();
  });
  // The plain stdout line "listening address=HOST:PORT" (the structured log line holds the same
  // text after "event=", hence the line start).
  std::string plain;
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, 30s, [&] {
      for (absl::string_view l : absl::StrSplit(output_, '\n')) {
        if (absl::StartsWith(l, "listening address=") &&
            output_.find('\n', static_cast<size_t>(l.data() - output_.data())) !=
                std::string::npos) {
          plain = std::string(l.substr(18));
          return true;
        }
      }
      return output_closed_;  // the server exited
    });
  }
  if (plain.empty()) return absl::StrCat("server did not print its address; output: ", Output());
  address_ = plain;
  const std::string event = Line("event=listening");
  const size_t at = event.find(" metrics_address=");
  if (at != std::string::npos) {
    const size_t colon = event.find(':', at);
    const size_t end = event.find(' ', at + 1);
    if (colon != std::string::npos && colon < end) {
      metrics_port_ = std::atoi(event.substr(colon + 1, end - colon - 1).c_str());
    }
  }
  return "";
}

std::string ServerProcess::Line(const std::string& text, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  size_t at = std::string::npos;
  cv_.wait_for(lock, timeout, [&] {
    at = output_.find(text);
    return (at != std::string::npos && output_.find('\n', at) != std::string::npos) ||
           output_closed_;
  });
  if (at == std::string::npos) return "";
  const size_t begin = output_.rfind('\n', at);
  const size_t end = output_.find('\n', at);
  return output_.substr(begin == std::string::npos ? 0 : begin + 1,
                        end == std::string::npos ? std::string::npos : end - begin - 1);
}

std::string ServerProcess::Output() {
  std::lock_guard<std::mutex> lock(mu_);
  return output_;
}

void ServerProcess::Signal(int sig) {
  if (pid_ > 0) kill(pid_, sig);
}

int ServerProcess::Wait(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (pid_ > 0) {
    int status = 0;
    const pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    if (std::chrono::steady_clock::now() >= deadline) return -1;
    std::this_thread::sleep_for(10ms);
  }
  return -1;
}

int64_t LogField(const std::string& line, const std::string& key) {
  const size_t at = line.find(" " + key + "=");
  return at == std::string::npos ? -1 : std::atoll(line.c_str() + at + key.size() + 2);
}

std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval timeout{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request =
        absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
        static_cast<ssize_t>(request.size())) {
      char buf[16384];
      ssize_t n;
      while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) response.append(buf, static_cast<size_t>(n));
    }
  }
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (!absl::StartsWith(response, "HTTP/1.") || response.find(" 200 ") > 12 ||
      body == std::string::npos) {
    return "";
  }
  return response.substr(body + 4);
}

std::map<std::string, double> ParseMetrics(const std::string& exposition) {
  std::map<std::string, double> out;
  for (absl::string_view line : absl::StrSplit(exposition, '\n')) {
    if (line.empty() || line.front() == '#') continue;
    const size_t space = line.rfind(' ');
    if (space == absl::string_view::npos) continue;
    double value = 0;
    if (!absl::SimpleAtod(line.substr(space + 1), &value)) continue;
    out[std::string(line.substr(0, space))] = value;
  }
  return out;
}

double SumMetric(const std::map<std::string, double>& metrics, const std::string& name,
                 const std::vector<std::string>& label_filters) {
  double sum = 0;
  for (const auto& [series, value] : metrics) {
    if (series != name && !absl::StartsWith(series, name + "{")) continue;
    bool match = true;
    for (const std::string& f : label_filters) match = match && absl::StrContains(series, f);
    if (match) sum += value;
  }
  return sum;
}

std::shared_ptr<grpc::Channel> Connect(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(1 << 30);
  args.SetMaxSendMessageSize(1 << 30);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

grpc::ByteBuffer ToBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

std::string FromBuffer(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

std::string HealthStatus(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                         std::chrono::milliseconds timeout) {
  grpc::GenericStub stub(channel);
  // HealthCheckRequest { string service = 1; }
  std::string request = {0x0a, static_cast<char>(service.size())};
  request += service;
  const grpc::ByteBuffer request_buffer = ToBuffer(request);
  grpc::ByteBuffer response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request_buffer,
                 &response, [&](grpc::Status s) { done.set_value(s); });
  const grpc::Status status = done.get_future().get();
  if (!status.ok()) return "error: " + status.error_message();
  const std::string bytes = FromBuffer(response);
  // HealthCheckResponse { ServingStatus status = 1; }: SERVING = 1, NOT_SERVING = 2.
  if (bytes == std::string{0x08, 0x01}) return "SERVING";
  if (bytes == std::string{0x08, 0x02}) return "NOT_SERVING";
  return "unexpected response";
}

}  // namespace attention::testing
