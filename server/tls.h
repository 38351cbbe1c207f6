// TLS and mutual TLS for the gRPC port (--tls_cert, --tls_key, --tls_client_ca).
//
// The credentials are gRPC's TlsServerCredentials over a FileWatcherCertificateProvider: the
// certificate chain, its key and the client CA bundle are re-read from their files every reload
// interval, and a new connection's handshake uses whatever was read last. Rotating a certificate
// is then replacing the files, no restart: established connections keep the session they
// negotiated. gRPC loads a key / certificate pair only when the key matches the certificate, so a
// half-written update keeps the previous pair; replace the files atomically anyway (write
// elsewhere, then rename; a Kubernetes Secret volume does this).
//
// With a client CA the server requires a client certificate and verifies it against that CA
// (mutual TLS); without one it asks for none.
#ifndef ATTENTION_SERVER_TLS_H_
#define ATTENTION_SERVER_TLS_H_

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "grpcpp/security/server_credentials.h"

namespace attention::server {

struct TlsFiles {
  std::string cert;       // PEM certificate chain, leaf first (--tls_cert)
  std::string key;        // PEM private key of the leaf (--tls_key)
  std::string client_ca;  // PEM CA bundle for client certificates; empty: no mutual TLS
};

// Checks the files as they are now: readable, PEM, the key matches the leaf certificate, the CA
// bundle holds at least one certificate. INVALID_ARGUMENT naming the flag and the problem, so
// that a bad configuration stops the server at start-up instead of failing every handshake.
absl::Status CheckTlsFiles(const TlsFiles& files);

// The server credentials for `files`, re-read every `reload_interval` (at least 1 s).
std::shared_ptr<grpc::ServerCredentials> MakeTlsServerCredentials(
    const TlsFiles& files, std::chrono::seconds reload_interval);

}  // namespace attention::server

#endif  // ATTENTION_SERVER_TLS_H_
