// A test fixture whose tests share one attention_server process (ServerProcess): started once
// per suite with Suite::ServerFlags(), and drained at the end, where it must exit 0 (it survived
// every test). Each test gets its own AttentionService stub on the shared channel.
#ifndef ATTENTION_TESTS_SERVER_SHARED_SERVER_TEST_H_
#define ATTENTION_TESTS_SERVER_SHARED_SERVER_TEST_H_

#include <signal.h>

#include <chrono>
#include <memory>
#include <string>

#include "attention/v1/attention.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/server/server_process.h"

namespace attention::testing {

// Suite derives from SharedServerTest<Suite> and has `static std::vector<std::string>
// ServerFlags()`.
template <typename Suite>
class SharedServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new ServerProcess();
    const std::string error = server_->Start(Suite::ServerFlags());
    if (!error.empty()) {
      ADD_FAILURE() << error;
      return;
    }
    channel_ = Connect(server_->address());
  }
  static void TearDownTestSuite() {
    channel_.reset();
    server_->Signal(SIGTERM);
    EXPECT_EQ(server_->Wait(std::chrono::seconds(60)), 0);
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(channel_, nullptr);
    stub_ = ::attention::v1::AttentionService::NewStub(channel_);
  }

  // One unary Attention call on the shared server, with a 60 s deadline.
  grpc::Status Call(const ::attention::v1::AttentionRequest& request,
                    ::attention::v1::AttentionResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    return stub_->Attention(&context, request, response);
  }

  static inline ServerProcess* server_ = nullptr;
  static inline std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<::attention::v1::AttentionService::Stub> stub_;
};

}  // namespace attention::testing

#endif  // ATTENTION_TESTS_SERVER_SHARED_SERVER_TEST_H_
