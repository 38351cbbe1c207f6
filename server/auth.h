// Bearer-token authentication of AttentionService calls (--auth_token_file).
//
// A call is admitted when its `authorization` metadata is `Bearer <token>` (scheme
// case-insensitive, RFC 6750) and <token> is one of the tokens in the file. The file holds one
// token per line; surrounding whitespace is trimmed, and blank lines and lines starting with '#'
// are skipped. Several tokens let an operator rotate them without a gap: add the new one, move the
// clients, remove the old one. The file is re-read when it changes (checked every reload
// interval), so rotation needs no restart; a file that becomes unreadable or empty keeps the
// tokens last loaded (and logs a warning).
//
// Tokens are checked on a call's headers, before any of its messages is read (CallGate, a gRPC
// AuthMetadataProcessor run by the port's credentials): a refused call ends UNAUTHENTICATED
// before its payload is buffered. Every method is guarded except grpc.health.v1.Health (the
// kubelet's probes) and server reflection (the public schema), which stay open.
#ifndef ATTENTION_SERVER_AUTH_H_
#define ATTENTION_SERVER_AUTH_H_

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <ctime>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/security/auth_metadata_processor.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/support/string_ref.h"

namespace attention::server {

// The tokens of a token file's contents (format above); INVALID_ARGUMENT when there is none.
absl::StatusOr<std::vector<std::string>> ParseTokens(absl::string_view contents);

class TokenAuthenticator {
 public:
  // Loads `path` (INVALID_ARGUMENT naming it when unreadable or without a token) and, when
  // `reload_interval` > 0, starts a thread that re-reads it whenever its size, modification time
  // or inode changed.
  static absl::StatusOr<std::unique_ptr<TokenAuthenticator>> Create(
      const std::string& path, std::chrono::seconds reload_interval);
  // Stops the reload thread.
  ~TokenAuthenticator();
  TokenAuthenticator(const TokenAuthenticator&) = delete;
  TokenAuthenticator& operator=(const TokenAuthenticator&) = delete;

  // OK when `metadata` (a call's client metadata) carries a known bearer token, else
  // UNAUTHENTICATED saying what is missing; the message never echoes the token. Thread-safe and
  // cheap (one mutex acquisition, one constant-time comparison per token).
  absl::Status Check(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) const;
  // The same for the value of one `authorization` header (nullptr: absent).
  absl::Status CheckHeader(const absl::string_view* authorization) const;

  // Successful loads so far (1 after Create).
  int loads() const;

 private:
  // What identifies one version of the file.
  struct FileVersion {
    dev_t device = 0;
    ino_t inode = 0;
    off_t size = -1;
    timespec modified{};
    bool operator==(const FileVersion& o) const;
  };

  explicit TokenAuthenticator(std::string path);
  // Reads the file; on success replaces the tokens.
  absl::Status Load();
  void ReloadLoop(std::chrono::seconds interval);

  const std::string path_;
  mutable std::mutex mu_;
  std::shared_ptr<const std::vector<std::string>> tokens_;  // guarded by mu_
  FileVersion version_;                                     // guarded by mu_
  int loads_ = 0;                                           // guarded by mu_
  bool stopping_ = false;                                   // guarded by mu_
  std::condition_variable stop_cv_;
  std::thread reloader_;
};

class Metrics;

// Whether a call to `path` (":path", e.g. "/grpc.health.v1.Health/Check") needs no token: health
// checking and server reflection (v1 and v1alpha).
bool IsOpenMethod(absl::string_view path);

// The gate every call passes on its headers, before gRPC reads its messages or hands it to a
// service: open methods (IsOpenMethod) pass; every other call is refused UNAUTHENTICATED with
// `refusal` when that is set (a port that serves health checks only), else checked against
// `auth` (null: no tokens, every call passes). A refused call is counted in `metrics` (may be
// null) as answered UNAUTHENTICATED, since it never reaches the service that counts the others.
// Runs inline on gRPC's transport thread (IsBlocking() false): one map lookup and
// TokenAuthenticator::Check, which never blocks for long.
class CallGate final : public grpc::AuthMetadataProcessor {
 public:
  CallGate(const TokenAuthenticator* auth, std::string refusal, Metrics* metrics);

  bool IsBlocking() const override { return false; }
  grpc::Status Process(const InputMetadata& auth_metadata, grpc::AuthContext* context,
                       OutputMetadata* consumed_auth_metadata,
                       OutputMetadata* response_metadata) override;

 private:
  const TokenAuthenticator* const auth_;
  const std::string refusal_;
  Metrics* const metrics_;
};

// `credentials` (null: plaintext) with `gate` run on every call of the port. TLS credentials take
// the gate as they are; plaintext ones are made through gRPC's C API, since the C++
// InsecureServerCredentials() refuses a metadata processor (it asserts).
std::shared_ptr<grpc::ServerCredentials> GatedCredentials(
    std::shared_ptr<grpc::ServerCredentials> credentials, std::shared_ptr<CallGate> gate);

}  // namespace attention::server

#endif  // ATTENTION_SERVER_AUTH_H_
