#include "server/tls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"

namespace attention::server {
namespace {

struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Deleter {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyDeleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using BioPtr = std::unique_ptr<BIO, BioDeleter>;
using X509Ptr = std::unique_ptr<X509, X509Deleter>;
using KeyPtr = std::unique_ptr<EVP_PKEY, KeyDeleter>;

absl::Status Bad(const char* flag, const std::string& path, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, " ", path, ": ", problem));
}

// The file's contents, or an error naming the flag.
absl::Status ReadPem(const char* flag, const std::string& path, std::string* contents) {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat("--", flag, " is empty"));
  std::ifstream in(path, std::ios::binary);
  if (!in) return Bad(flag, path, "cannot open");
  std::stringstream s;
  s << in.rdbuf();
  *contents = s.str();
  if (contents->empty()) return Bad(flag, path, "is empty");
  return absl::OkStatus();
}

BioPtr MemoryBio(const std::string& pem) {
  return BioPtr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// Certificates in a PEM bundle (0 when none parses).
int CountCertificates(const std::string& pem) {
  BioPtr bio = MemoryBio(pem);
  int count = 0;
  while (bio != nullptr) {
    X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (cert == nullptr) break;
    ++count;
  }
  ERR_clear_error();  // the read that ended the loop left "no start line" behind
  return count;
}

}  // namespace

absl::Status CheckTlsFiles(const TlsFiles& files) {
  std::string cert_pem, key_pem;
  if (absl::Status s = ReadPem("tls_cert", files.cert, &cert_pem); !s.ok()) return s;
  if (absl::Status s = ReadPem("tls_key", files.key, &key_pem); !s.ok()) return s;
  BioPtr cert_bio = MemoryBio(cert_pem);
  X509Ptr leaf(cert_bio == nullptr ? nullptr
                                   : PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr));
  if (leaf == nullptr) {
    ERR_clear_error();
    return Bad("tls_cert", files.cert, "holds no PEM certificate");
  }
  BioPtr key_bio = MemoryBio(key_pem);
  KeyPtr key(key_bio == nullptr
                 ? nullptr
                 : PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
  if (key == nullptr) {
    ERR_clear_error();
    return Bad("tls_key", files.key, "holds no unencrypted PEM private key");
  }
  if (X509_check_private_key(leaf.get(), key.get()) != 1) {
    ERR_clear_error();
    return Bad("tls_key", files.key,
               absl::StrCat("does not match the first certificate of --tls_cert ", files.cert));
  }
  if (!files.client_ca.empty()) {
    std::string ca_pem;
    if (absl::Status s = ReadPem("tls_client_ca", files.client_ca, &ca_pem); !s.ok()) return s;
    if (CountCertificates(ca_pem) == 0) {
      return Bad("tls_client_ca", files.client_ca, "holds no PEM certificate");
    }
  }
  return absl::OkStatus();
}

std::shared_ptr<grpc::ServerCredentials> MakeTlsServerCredentials(
    const TlsFiles& files, std::chrono::seconds reload_interval) {
  const unsigned interval = static_cast<unsigned>(std::max<int64_t>(1, reload_interval.count()));
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      files.key, files.cert, files.client_ca, interval);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (files.client_ca.empty()) {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

}  // namespace attention::server
