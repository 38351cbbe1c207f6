// fake_attention_server: the tests' fake AttentionService as a process, for the command-line,
// Python and install tests. Prints "listening address=HOST:PORT" like attention_server and runs
// until SIGTERM or SIGINT.
//   fake_attention_server [--address=127.0.0.1:0] [--delay_ms=0] [--unavailable_times=0]
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "tests/client/fake_attention_service.h"

int main(int argc, char** argv) {
  std::string address = "127.0.0.1:0";
  attention::testing::FakeBehavior behavior;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    const std::string name = arg.substr(0, eq), value = eq == arg.npos ? "" : arg.substr(eq + 1);
    if (name == "--address") {
      address = value;
    } else if (name == "--delay_ms") {
      behavior.delay = std::chrono::milliseconds(std::atoi(value.c_str()));
    } else if (name == "--unavailable_times") {
      behavior.unavailable_times = std::atoi(value.c_str());
    } else {
      std::fprintf(stderr, "fake_attention_server: unknown flag %s\n", arg.c_str());
      return 2;
    }
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // gRPC's threads inherit the mask

  attention::testing::FakeAttentionService service;
  service.set_behavior(behavior);
  attention::testing::FakeServer server(&service, address);
  std::printf("listening address=%s\n", server.address().c_str());
  std::fflush(stdout);
  int signal = 0;
  sigwait(&signals, &signal);
  return 0;
}
