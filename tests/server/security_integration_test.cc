// TLS, mutual TLS, certificate reload and bearer tokens on the real attention_server, with
// certificates made by the openssl binary at test time (the test exits 77, SKIP, without it):
// two CAs, server certificates from each, client certificates from each. Clients are the
// project's client library (attention::client) on a private connection each, retries off, so
// that every check opens its own TLS handshake.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "attention/client/client.h"
#include "attention/client/stream_session.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/server_process.h"
#include "tests/server/server_test_util.h"

namespace attention::server {

// A test PKI in a temporary directory (made by main()).
class TestPki;
TestPki* pki = nullptr;

namespace {

using ::attention::testing::CompareWithReference;
using ::attention::testing::HealthStatus;
using ::attention::testing::MakeRequest;
using ::attention::testing::RequestOptions;
using ::attention::testing::ServerProcess;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << contents;
}

// Replaces `path` atomically (write beside it, then rename), as an operator rotating a file should.
void ReplaceFile(const std::string& path, const std::string& contents) {
  WriteFile(path + ".new", contents);
  ASSERT_EQ(std::rename((path + ".new").c_str(), path.c_str()), 0);
}

}  // namespace

// A test PKI in a temporary directory: CAs ca1 and ca2; server1 (ca1) and server2 (ca2) for
// DNS:attention.test; client1 (ca1) and client2 (ca2). Files NAME.pem and NAME.key.
class TestPki {
 public:
  // False when openssl is missing or fails.
  bool Make() {
    dir_ = ::testing::TempDir() + "/attention_pki_XXXXXX";
    if (mkdtemp(dir_.data()) == nullptr) return false;
    return Ca("ca1") && Ca("ca2") && Leaf("server1", "ca1", "DNS:attention.test") &&
           Leaf("server2", "ca2", "DNS:attention.test") &&
           Leaf("client1", "ca1", "DNS:client.test") && Leaf("client2", "ca2", "DNS:client.test");
  }
  std::string Path(const std::string& name, const char* ext) const {
    return dir_ + "/" + name + "." + ext;
  }
  std::string Pem(const std::string& name) const { return ReadFile(Path(name, "pem")); }
  std::string Key(const std::string& name) const { return ReadFile(Path(name, "key")); }
  const std::string& dir() const { return dir_; }

 private:
  bool Run(const std::string& command) {
    return std::system((command + " >/dev/null 2>&1").c_str()) == 0;
  }
  bool Ca(const std::string& name) {
    return Run(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
        "-subj /CN=" +
        name + "-test-ca -keyout " + Path(name, "key") + " -out " + Path(name, "pem"));
  }
  bool Leaf(const std::string& name, const std::string& ca, const std::string& san) {
    const std::string ext = dir_ + "/" + name + ".ext";
    WriteFile(ext, "subjectAltName=" + san + "\nbasicConstraints=CA:FALSE\n");
    return Run("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "
               "/CN=" +
               name + " -keyout " + Path(name, "key") + " -out " + dir_ + "/" + name + ".csr") &&
           Run("openssl x509 -req -in " + dir_ + "/" + name + ".csr -CA " + Path(ca, "pem") +
               " -CAkey " + Path(ca, "key") + " -CAcreateserial -days 2 -extfile " + ext +
               " -out " + Path(name, "pem"));
  }
  std::string dir_;
};

namespace {

// How a test client connects.
struct Connection {
  std::string roots;     // CA name whose certificate the client trusts; empty: plaintext
  std::string identity;  // client certificate name; empty: none
  std::string token;     // bearer token; empty: none
};

absl::StatusOr<client::Client> MakeClient(const std::string& address, const Connection& c) {
  client::ClientOptions options;
  options.retry.max_attempts = 1;
  options.private_connection = true;
  options.default_timeout = 20s;
  if (!c.roots.empty()) {
    client::TlsOptions tls;
    tls.root_certs_pem = pki->Pem(c.roots);
    tls.server_name_override = "attention.test";
    if (!c.identity.empty()) {
      tls.client_cert_pem = pki->Pem(c.identity);
      tls.client_key_pem = pki->Key(c.identity);
    }
    options.tls = tls;
  }
  if (!c.token.empty()) options.metadata.push_back({"authorization", "Bearer " + c.token});
  return client::Client::Create(address, options);
}

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(pki, nullptr);
    RequestOptions o;
    o.seqlen_q = o.seqlen_k = 8;
    o.head_dim = 16;
    request_ = MakeRequest(o, 1, rng_);
  }

  // One call on a fresh connection: the status (and the answer checked when OK).
  absl::Status Call(const std::string& address, const Connection& c) {
    absl::StatusOr<client::Client> client = MakeClient(address, c);
    if (!client.ok()) return client.status();
    absl::StatusOr<v1::AttentionResponse> response = client->Attention(request_);
    if (!response.ok()) return response.status();
    const std::string mismatch = CompareWithReference(request_, *response);
    return mismatch.empty() ? absl::OkStatus() : absl::InternalError(mismatch);
  }

  // The server stops cleanly at the end of each test.
  static void Stop(ServerProcess& server) {
    server.Signal(SIGTERM);
    EXPECT_EQ(server.Wait(30s), 0);
  }

  std::mt19937 rng_{5};
  v1::AttentionRequest request_;
};

TEST_F(SecurityTest, TlsServesVerifiedClientsAndRefusesPlaintextAndWrongCa) {
  ServerProcess server;
  ASSERT_EQ(server.Start({"--tls_cert=" + pki->Path("server1", "pem"),
                          "--tls_key=" + pki->Path("server1", "key")}),
            "");
  EXPECT_NE(server.Line("event=listening").find("tls=on"), std::string::npos);
  EXPECT_TRUE(Call(server.address(), {"ca1", "", ""}).ok());
  // Without mutual TLS a client certificate is not asked for, and not in the way.
  EXPECT_TRUE(Call(server.address(), {"ca1", "client2", ""}).ok());
  // A plaintext client cannot talk to a TLS port; a client trusting another CA refuses the
  // server's certificate.
  EXPECT_EQ(Call(server.address(), {}).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Call(server.address(), {"ca2", "", ""}).code(), absl::StatusCode::kUnavailable);
  Stop(server);
}

TEST_F(SecurityTest, MutualTlsRequiresAClientCertificateFromTheClientCa) {
  ServerProcess server;
  ASSERT_EQ(server.Start({"--tls_cert=" + pki->Path("server1", "pem"),
                          "--tls_key=" + pki->Path("server1", "key"),
                          "--tls_client_ca=" + pki->Path("ca1", "pem")}),
            "");
  EXPECT_NE(server.Line("event=listening").find("tls=mutual"), std::string::npos);
  EXPECT_TRUE(Call(server.address(), {"ca1", "client1", ""}).ok());
  EXPECT_EQ(Call(server.address(), {"ca1", "", ""}).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Call(server.address(), {"ca1", "client2", ""}).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Call(server.address(), {}).code(), absl::StatusCode::kUnavailable);
  Stop(server);
}

TEST_F(SecurityTest, ReplacedCertificateFilesServeNewConnectionsWithoutRestart) {
  // The server reads its files from a directory of its own, which the test rotates.
  const std::string dir = pki->dir() + "/rotating";
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
  WriteFile(dir + "/cert.pem", pki->Pem("server1"));
  WriteFile(dir + "/key.pem", pki->Key("server1"));
  WriteFile(dir + "/client_ca.pem", pki->Pem("ca1"));
  ServerProcess server;
  ASSERT_EQ(server.Start({"--tls_cert=" + dir + "/cert.pem", "--tls_key=" + dir + "/key.pem",
                          "--tls_client_ca=" + dir + "/client_ca.pem",
                          "--credentials_reload_interval_s=1"}),
            "");
  absl::StatusOr<client::Client> before = MakeClient(server.address(), {"ca1", "client1", ""});
  ASSERT_TRUE(before.ok());
  ASSERT_TRUE(before->Attention(request_).ok());

  // Rotate to the other CA: server certificate, then key (the pair is loaded only once they
  // match), then the client CA.
  ReplaceFile(dir + "/cert.pem", pki->Pem("server2"));
  ReplaceFile(dir + "/key.pem", pki->Key("server2"));
  ReplaceFile(dir + "/client_ca.pem", pki->Pem("ca2"));
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  absl::Status rotated;
  do {
    std::this_thread::sleep_for(200ms);
    rotated = Call(server.address(), {"ca2", "client2", ""});
  } while (!rotated.ok() && std::chrono::steady_clock::now() < deadline);
  EXPECT_TRUE(rotated.ok()) << rotated;
  // New connections now see only the new certificate and CA.
  EXPECT_EQ(Call(server.address(), {"ca1", "client1", ""}).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Call(server.address(), {"ca2", "client1", ""}).code(), absl::StatusCode::kUnavailable);
  // The connection made before the rotation keeps its session.
  EXPECT_TRUE(before->Attention(request_).ok());
  Stop(server);
}

TEST_F(SecurityTest, PlaintextHealthPortServesHealthOnly) {
  ServerProcess server;
  ASSERT_EQ(
      server.Start({"--tls_cert=" + pki->Path("server1", "pem"),
                    "--tls_key=" + pki->Path("server1", "key"), "--health_address=127.0.0.1:0"}),
      "");
  const std::string listening = server.Line("event=listening");
  const size_t at = listening.find(" health_address=127.0.0.1:");
  ASSERT_NE(at, std::string::npos) << listening;
  const std::string health_target =
      listening.substr(at + 16, listening.find(' ', at + 1) - at - 16);
  // Kubernetes' gRPC probes speak plaintext: health answers there...
  auto channel = ::attention::testing::Connect(health_target);
  EXPECT_EQ(HealthStatus(channel, ""), "SERVING");
  EXPECT_EQ(HealthStatus(channel, "attention.v1.AttentionService"), "SERVING");
  // ... and the attention service does not.
  const absl::Status plaintext = Call(health_target, {});
  EXPECT_EQ(plaintext.code(), absl::StatusCode::kUnauthenticated) << plaintext;
  EXPECT_THAT(std::string(plaintext.message()), HasSubstr("health checks only"));
  EXPECT_TRUE(Call(server.address(), {"ca1", "", ""}).ok());
  Stop(server);
}

TEST_F(SecurityTest, BadTlsFilesStopTheServerAtStartUp) {
  {
    ServerProcess server;
    // The key of another certificate.
    EXPECT_NE(server.Start({"--tls_cert=" + pki->Path("server1", "pem"),
                            "--tls_key=" + pki->Path("server2", "key")}),
              "");
    EXPECT_EQ(server.Wait(10s), 2);
    EXPECT_THAT(server.Line("event=bad_flags"), HasSubstr("does not match"));
  }
  {
    ServerProcess server;
    EXPECT_NE(server.Start({"--tls_cert=" + pki->Path("server1", "pem"),
                            "--tls_key=" + pki->Path("server1", "key"),
                            "--tls_client_ca=" + pki->dir() + "/missing.pem"}),
              "");
    EXPECT_EQ(server.Wait(10s), 2);
    EXPECT_THAT(server.Line("event=bad_flags"), HasSubstr("--tls_client_ca"));
  }
  {
    ServerProcess server;
    EXPECT_NE(server.Start({"--tls_cert=" + pki->Path("server1", "pem")}), "");
    EXPECT_EQ(server.Wait(10s), 2);
    EXPECT_THAT(server.Line("event=bad_flags"), HasSubstr("--tls_cert and --tls_key"));
  }
}

TEST_F(SecurityTest, BearerTokensGuardTheServiceButNotHealth) {
  const std::string tokens = pki->dir() + "/tokens";
  WriteFile(tokens, "# clients of team a\n  token-a  \n\ntoken-b\n");
  ServerProcess server;
  ASSERT_EQ(server.Start({"--tls_cert=" + pki->Path("server1", "pem"),
                          "--tls_key=" + pki->Path("server1", "key"), "--auth_token_file=" + tokens,
                          "--credentials_reload_interval_s=1"}),
            "");
  EXPECT_NE(server.Line("event=listening").find("auth=bearer"), std::string::npos);
  EXPECT_TRUE(Call(server.address(), {"ca1", "", "token-a"}).ok());
  EXPECT_TRUE(Call(server.address(), {"ca1", "", "token-b"}).ok());
  const absl::Status missing = Call(server.address(), {"ca1", "", ""});
  EXPECT_EQ(missing.code(), absl::StatusCode::kUnauthenticated) << missing;
  const absl::Status wrong = Call(server.address(), {"ca1", "", "token-c"});
  EXPECT_EQ(wrong.code(), absl::StatusCode::kUnauthenticated) << wrong;
  EXPECT_THAT(std::string(wrong.message()), ::testing::Not(HasSubstr("token-c")));

  // A stream without a token ends UNAUTHENTICATED and its requests with it.
  {
    absl::StatusOr<client::Client> client = MakeClient(server.address(), {"ca1", "", ""});
    ASSERT_TRUE(client.ok());
    std::unique_ptr<client::StreamSession> session = client->OpenStream();
    auto answer = session->Submit(request_);
    EXPECT_EQ(answer.get().status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(session->Finish().code(), absl::StatusCode::kUnauthenticated);
  }
  // ... and with one, it serves.
  {
    absl::StatusOr<client::Client> client = MakeClient(server.address(), {"ca1", "", "token-b"});
    ASSERT_TRUE(client.ok());
    std::unique_ptr<client::StreamSession> session = client->OpenStream();
    auto answer = session->Submit(request_);
    absl::StatusOr<v1::AttentionResponse> response = answer.get();
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(CompareWithReference(request_, *response), "");
    EXPECT_TRUE(session->Finish().ok());
  }
  // Health answers without a token (kubelet probes carry none).
  {
    absl::StatusOr<client::Client> client = MakeClient(server.address(), {"ca1", "", ""});
    ASSERT_TRUE(client.ok());
    EXPECT_EQ(HealthStatus(client->channel(), ""), "SERVING");
    EXPECT_EQ(HealthStatus(client->channel(), "attention.v1.AttentionService"), "SERVING");
  }

  // Rotation: the file is re-read when it changes; token-a is retired, token-d added.
  ReplaceFile(tokens, "token-b\ntoken-d\n");
  ASSERT_NE(server.Line("load=2", 10s), "");
  EXPECT_TRUE(Call(server.address(), {"ca1", "", "token-d"}).ok());
  EXPECT_EQ(Call(server.address(), {"ca1", "", "token-a"}).code(),
            absl::StatusCode::kUnauthenticated);
  // A file emptied by mistake keeps the tokens last loaded.
  ReplaceFile(tokens, "\n");
  ASSERT_NE(server.Line("event=auth_tokens_reload_failed", 10s), "");
  EXPECT_TRUE(Call(server.address(), {"ca1", "", "token-d"}).ok());
  Stop(server);
}

TEST_F(SecurityTest, TokensWithoutTlsWork) {
  const std::string tokens = pki->dir() + "/plain_tokens";
  WriteFile(tokens, "plain-token\n");
  ServerProcess server;
  ASSERT_EQ(server.Start({"--auth_token_file=" + tokens}), "");
  EXPECT_NE(server.Line("event=plaintext_tokens"), "");
  EXPECT_TRUE(Call(server.address(), {"", "", "plain-token"}).ok());
  EXPECT_EQ(Call(server.address(), {}).code(), absl::StatusCode::kUnauthenticated);
  Stop(server);
}

}  // namespace
}  // namespace attention::server

// Makes the PKI once; exit 77 (SKIP) when openssl cannot.
int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  attention::server::TestPki made;
  if (!made.Make()) {
    std::fprintf(stderr, "SKIP: the openssl binary could not make the test certificates\n");
    return 77;
  }
  attention::server::pki = &made;
  const int result = RUN_ALL_TESTS();
  std::system(("rm -rf " + made.dir()).c_str());
  return result;
}
