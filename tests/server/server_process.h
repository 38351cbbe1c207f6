// The real attention_server binary as a child process, for the integration, security and fault
// tests: started on a free loopback port ($ATTN_SERVER_BINARY, the backend from
// ServerBackendUnderTest()), its output collected and searchable, its /metrics scraped, its
// health asked through gRPC.
#ifndef ATTENTION_TESTS_SERVER_SERVER_PROCESS_H_
#define ATTENTION_TESTS_SERVER_SERVER_PROCESS_H_

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "grpcpp/grpcpp.h"

namespace attention::testing {

class ServerProcess {
 public:
  ServerProcess() = default;
  // SIGKILLs the server if it still runs.
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  // Starts the server with --address=127.0.0.1:0 --metrics_address= (off) --backend=<under test>
  // --cpu_threads=2, then `flags` (a later flag overrides an earlier one:
  // --metrics_address=127.0.0.1:0 turns metrics on), with `env` ("NAME=value") added to the
  // environment, and waits up to 30 s for its "listening address=" line. Returns "" on success,
  // else what went wrong (with the server's output).
  std::string Start(const std::vector<std::string>& flags,
                    const std::vector<std::string>& env = {});

  // "127.0.0.1:PORT" of the gRPC port; the metrics port (0 when off).
  const std::string& address() const { return address_; }
  int metrics_port() const { return metrics_port_; }
  pid_t pid() const { return pid_; }

  // The first output line containing `text`, waiting for it up to `timeout` ("" if none).
  std::string Line(const std::string& text, std::chrono::milliseconds timeout = {});
  // Everything the server wrote so far (stdout and stderr).
  std::string Output();

  void Signal(int sig);

  // Waits for the process to exit: its exit code, -1 when killed by a signal or still running
  // after `timeout`.
  int Wait(std::chrono::milliseconds timeout);

 private:
  pid_t pid_ = -1;
  int output_fd_ = -1;
  std::thread reader_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::string output_;
  bool output_closed_ = false;  // the server closed its output (exited)
  std::string address_;
  int metrics_port_ = 0;
};

// The integer after " key=" in a log line, -1 if absent.
int64_t LogField(const std::string& line, const std::string& key);

// GET http://127.0.0.1:port/path: the body, or "" on any error.
std::string HttpGet(int port, const std::string& path);

// Sample values of a Prometheus text exposition, keyed by the series as written
// ("attention_requests_total{method=\"Attention\",code=\"OK\"}").
std::map<std::string, double> ParseMetrics(const std::string& exposition);
// The sum of every series of metric `name` whose labels contain each of `label_filters`
// (e.g. {"code=\"OK\""}); 0 when none.
double SumMetric(const std::map<std::string, double>& metrics, const std::string& name,
                 const std::vector<std::string>& label_filters = {});

// A channel to `address` in plaintext, messages up to 1 GiB.
std::shared_ptr<grpc::Channel> Connect(const std::string& address);

// grpc.health.v1.Health/Check for `service` through the generic stub: "SERVING",
// "NOT_SERVING", or "error: <message>".
std::string HealthStatus(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                         std::chrono::milliseconds timeout = std::chrono::seconds(10));

grpc::ByteBuffer ToBuffer(const std::string& bytes);
std::string FromBuffer(const grpc::ByteBuffer& buffer);

}  // namespace attention::testing

#endif  // ATTENTION_TESTS_SERVER_SERVER_PROCESS_H_
