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
// Only the attention service checks tokens. grpc.health.v1.Health (the kubelet's probes) and
// server reflection (the public schema) stay open.
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

}  // namespace attention::server

#endif  // ATTENTION_SERVER_AUTH_H_
