#include "server/auth.h"

#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "grpc/grpc_security.h"
#include "server/log.h"
#include "server/metrics/metrics.h"

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

constexpr absl::string_view kAttentionService = "/attention.v1.AttentionService/";

// The C metadata processor of a plaintext port (GatedCredentials): hands the call's metadata to
// the C++ processor in `state` and reports its verdict at once (the processor does not block).
void ProcessThroughGate(void* state, grpc_auth_context* /*context*/, const grpc_metadata* md,
                        size_t num_md, grpc_process_auth_metadata_done_cb done, void* user_data) {
  grpc::AuthMetadataProcessor& processor =
      **static_cast<std::shared_ptr<grpc::AuthMetadataProcessor>*>(state);
  grpc::AuthMetadataProcessor::InputMetadata metadata;
  for (size_t i = 0; i < num_md; ++i) {
    metadata.emplace(
        grpc::string_ref(reinterpret_cast<const char*>(GRPC_SLICE_START_PTR(md[i].key)),
                         GRPC_SLICE_LENGTH(md[i].key)),
        grpc::string_ref(reinterpret_cast<const char*>(GRPC_SLICE_START_PTR(md[i].value)),
                         GRPC_SLICE_LENGTH(md[i].value)));
  }
  grpc::AuthMetadataProcessor::OutputMetadata consumed, response;
  const grpc::Status status = processor.Process(metadata, nullptr, &consumed, &response);
  // gRPC copies the message before this returns.
  done(user_data, nullptr, 0, nullptr, 0, static_cast<grpc_status_code>(status.error_code()),
       status.ok() ? nullptr : status.error_message().c_str());
}

// Plaintext credentials with a metadata processor, built through the C API.
class PlaintextGatedCredentials final : public grpc::ServerCredentials {
 public:
  explicit PlaintextGatedCredentials(std::shared_ptr<grpc::AuthMetadataProcessor> processor)
      : processor_(std::move(processor)) {}
  // Must not block: the C adapter calls it inline whatever its IsBlocking() says.
  void SetAuthMetadataProcessor(
      const std::shared_ptr<grpc::AuthMetadataProcessor>& processor) override {
    processor_ = processor;
  }

 private:
  int AddPortToServer(const std::string& addr, grpc_server* server) override {
    grpc_server_credentials* credentials = grpc_insecure_server_credentials_create();
    grpc_auth_metadata_processor processor;
    processor.process = &ProcessThroughGate;
    processor.destroy = [](void* state) {
      delete static_cast<std::shared_ptr<grpc::AuthMetadataProcessor>*>(state);
    };
    processor.state = new std::shared_ptr<grpc::AuthMetadataProcessor>(processor_);
    grpc_server_credentials_set_auth_metadata_processor(credentials, processor);
    const int port = grpc_server_add_http2_port(server, addr.c_str(), credentials);
    grpc_server_credentials_release(credentials);
    return port;
  }

  std::shared_ptr<grpc::AuthMetadataProcessor> processor_;
};

}  // namespace

bool IsOpenMethod(absl::string_view path) {
  return absl::StartsWith(path, "/grpc.health.v1.Health/") ||
         absl::StartsWith(path, "/grpc.reflection.v1alpha.ServerReflection/") ||
         absl::StartsWith(path, "/grpc.reflection.v1.ServerReflection/");
}

CallGate::CallGate(const TokenAuthenticator* auth, std::string refusal, Metrics* metrics)
    : auth_(auth), refusal_(std::move(refusal)), metrics_(metrics) {}

grpc::Status CallGate::Process(const InputMetadata& auth_metadata, grpc::AuthContext* /*context*/,
                               OutputMetadata* /*consumed_auth_metadata*/,
                               OutputMetadata* /*response_metadata*/) {
  const auto path_it = auth_metadata.find(":path");
  // gRPC always sends :path; a call without one is guarded like any other.
  const absl::string_view path =
      path_it == auth_metadata.end()
          ? absl::string_view()
          : absl::string_view(path_it->second.data(), path_it->second.size());
  if (IsOpenMethod(path)) return grpc::Status::OK;
  absl::Status status;
  if (!refusal_.empty()) {
    status = absl::UnauthenticatedError(refusal_);
  } else if (auth_ != nullptr) {
    status = auth_->Check(auth_metadata);
  }
  if (status.ok()) return grpc::Status::OK;
  LogLine(LogLevel::kDebug, "unauthenticated").Kv("path", path).Kv("error", status.message());
  // The attention service counts every other answer; these never reach it.
  if (metrics_ != nullptr && absl::StartsWith(path, kAttentionService)) {
    const Method method = path.substr(kAttentionService.size()) == "AttentionStream"
                              ? Method::kAttentionStream
                              : Method::kAttention;
    metrics_->RequestDone(method, grpc::StatusCode::UNAUTHENTICATED, 0, 0, 0);
  }
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, std::string(status.message()));
}

std::shared_ptr<grpc::ServerCredentials> GatedCredentials(
    std::shared_ptr<grpc::ServerCredentials> credentials, std::shared_ptr<CallGate> gate) {
  if (credentials == nullptr) return std::make_shared<PlaintextGatedCredentials>(std::move(gate));
  credentials->SetAuthMetadataProcessor(gate);
  return credentials;
}

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
