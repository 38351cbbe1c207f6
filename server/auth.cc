#include "server/auth.h"

#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "server/log.h"

namespace attention::server {
namespace {

constexpr absl::string_view kBearer = "bearer ";

// Equality that reads every byte of both strings whatever they hold, so that the time taken does
// not tell an attacker how long a prefix of a token they guessed (only whether the lengths match).
bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i]) ^ static_cast<unsigned char>(b[i]);
  }
  return diff == 0;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ParseTokens(absl::string_view contents) {
  std::vector<std::string> tokens;
  for (absl::string_view line : absl::StrSplit(contents, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    tokens.emplace_back(line);
  }
  if (tokens.empty()) {
    return absl::InvalidArgumentError("holds no token (one per line; '#' starts a comment)");
  }
  return tokens;
}

bool TokenAuthenticator::FileVersion::operator==(const FileVersion& o) const {
  return device == o.device && inode == o.inode && size == o.size &&
         modified.tv_sec == o.modified.tv_sec && modified.tv_nsec == o.modified.tv_nsec;
}

TokenAuthenticator::TokenAuthenticator(std::string path) : path_(std::move(path)) {}

absl::StatusOr<std::unique_ptr<TokenAuthenticator>> TokenAuthenticator::Create(
    const std::string& path, std::chrono::seconds reload_interval) {
  std::unique_ptr<TokenAuthenticator> auth(new TokenAuthenticator(path));
  if (absl::Status s = auth->Load(); !s.ok()) return s;
  if (reload_interval.count() > 0) {
    auth->reloader_ =
        std::thread([a = auth.get(), reload_interval] { a->ReloadLoop(reload_interval); });
  }
  return auth;
}

TokenAuthenticator::~TokenAuthenticator() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  if (reloader_.joinable()) reloader_.join();
}

absl::Status TokenAuthenticator::Load() {
  struct stat st {};
  if (stat(path_.c_str(), &st) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--auth_token_file ", path_, ": cannot stat"));
  }
  FileVersion version;
  version.device = st.st_dev;
  version.inode = st.st_ino;
  version.size = st.st_size;
  version.modified = st.st_mtim;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (loads_ > 0 && version == version_) return absl::OkStatus();
  }
  std::ifstream in(path_, std::ios::binary);
  std::stringstream contents;
  contents << in.rdbuf();
  if (!in.good() && !in.eof()) {
    return absl::InvalidArgumentError(absl::StrCat("--auth_token_file ", path_, ": cannot read"));
  }
  absl::StatusOr<std::vector<std::string>> tokens = ParseTokens(contents.str());
  if (!tokens.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--auth_token_file ", path_, ": ", tokens.status().message()));
  }
  const size_t count = tokens->size();
  int loads = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    tokens_ = std::make_shared<const std::vector<std::string>>(std::move(*tokens));
    version_ = version;
    loads = ++loads_;
  }
  LogLine(LogLevel::kInfo, "auth_tokens_loaded")
      .Kv("file", path_)
      .Kv("tokens", count)
      .Kv("load", loads);
  return absl::OkStatus();
}

void TokenAuthenticator::ReloadLoop(std::chrono::seconds interval) {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_cv_.wait_for(lock, interval, [this] { return stopping_; })) {
    lock.unlock();
    if (absl::Status s = Load(); !s.ok()) {
      LogLine(LogLevel::kWarning, "auth_tokens_reload_failed")
          .Kv("error", s.message())
          .Kv("kept", "previous tokens");
    }
    lock.lock();
  }
}

int TokenAuthenticator::loads() const {
  std::lock_guard<std::mutex> lock(mu_);
  return loads_;
}

absl::Status TokenAuthenticator::Check(
    const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) const {
  const auto it = metadata.find("authorization");
  if (it == metadata.end()) return CheckHeader(nullptr);
  const absl::string_view value(it->second.data(), it->second.size());
  return CheckHeader(&value);
}

absl::Status TokenAuthenticator::CheckHeader(const absl::string_view* authorization) const {
  if (authorization == nullptr) {
    return absl::UnauthenticatedError(
        "missing 'authorization: Bearer <token>' metadata (this server requires a token)");
  }
  if (authorization->size() < kBearer.size() ||
      !absl::EqualsIgnoreCase(authorization->substr(0, kBearer.size()), kBearer)) {
    return absl::UnauthenticatedError("authorization metadata must be 'Bearer <token>'");
  }
  const absl::string_view presented =
      absl::StripAsciiWhitespace(authorization->substr(kBearer.size()));
  std::shared_ptr<const std::vector<std::string>> tokens;
  {
    std::lock_guard<std::mutex> lock(mu_);
    tokens = tokens_;
  }
  bool known = false;
  for (const std::string& token : *tokens) known |= ConstantTimeEquals(presented, token);
  if (!known) return absl::UnauthenticatedError("unknown bearer token");
  return absl::OkStatus();
}

}  // namespace attention::server
