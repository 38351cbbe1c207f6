// Helpers of the reliability tests: the server's own accounting read from /metrics (answered
// requests by code, requests in flight, queue depth, launches), waiting for it to settle, and
// the checks every fault test ends with.
#ifndef ATTENTION_TESTS_RELIABILITY_RELIABILITY_UTIL_H_
#define ATTENTION_TESTS_RELIABILITY_RELIABILITY_UTIL_H_

#include <chrono>
#include <functional>
#include <map>
#include <random>
#include <string>

#include "tests/server/server_process.h"

namespace attention::reliability {

using Metrics = std::map<std::string, double>;
using Clock = std::chrono::steady_clock;

// The server's metrics now (it must run with --metrics_address=127.0.0.1:0).
Metrics Scrape(testing::ServerProcess& server);

// attention_requests_total, all codes or one ("OK", "CANCELLED", ...).
double Answered(const Metrics& m, const std::string& code = "");
// attention_in_flight_requests: accepted and not yet answered.
double InFlight(const Metrics& m);
// attention_queue_requests: accepted and not yet launched.
double Queued(const Metrics& m);
// Kernel launches so far (attention_batch_size_requests_count).
double Launches(const Metrics& m);

// Polls the server's metrics until `done` holds for them (true) or `timeout` passes (false).
bool WaitForMetrics(testing::ServerProcess& server, const std::function<bool(const Metrics&)>& done,
                    std::chrono::milliseconds timeout = std::chrono::seconds(15));

// Exactly one answer per request, server side: waits until nothing is in flight and the
// answered count grew by `received` since `before`, then checks that it stays there.
void ExpectBalanced(testing::ServerProcess& server, const Metrics& before, double received);

// The server reports SERVING and answers a small request correctly.
void ExpectServing(testing::ServerProcess& server, std::mt19937& rng);

}  // namespace attention::reliability

#endif  // ATTENTION_TESTS_RELIABILITY_RELIABILITY_UTIL_H_
