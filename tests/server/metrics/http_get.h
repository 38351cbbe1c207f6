// A minimal blocking HTTP/1.0 GET over loopback TCP, enough to scrape an exposer in tests
// without a client library.
#ifndef ATTENTION_TESTS_SERVER_METRICS_HTTP_GET_H_
#define ATTENTION_TESTS_SERVER_METRICS_HTTP_GET_H_

#include <string>

#include "absl/status/statusor.h"

namespace attention::testing {

struct HttpResponse {
  int status = 0;            // e.g. 200
  std::string content_type;  // the Content-Type header's value, "" when absent
  std::string body;
};

// GET http://127.0.0.1:<port><path>. UNAVAILABLE when the connection fails, INTERNAL when the
// answer is not HTTP.
absl::StatusOr<HttpResponse> HttpGet(int port, const std::string& path);

}  // namespace attention::testing

#endif  // ATTENTION_TESTS_SERVER_METRICS_HTTP_GET_H_
