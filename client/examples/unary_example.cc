// Unary calls with the C++ client: one synchronous call on views of the caller's memory, then
// several asynchronous ones in flight at once.
//   attention_unary_example HOST:PORT
#include <chrono>
#include <cstdio>
#include <future>
#include <memory>
#include <random>
#include <vector>

#include "attention/client/client.h"

namespace ac = attention::client;
namespace v1 = attention::v1;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s HOST:PORT\n", argv[0]);
    return 2;
  }
  ac::ClientOptions options;
  options.default_timeout = std::chrono::seconds(30);
  absl::StatusOr<ac::Client> client = ac::Client::Create(argv[1], options);
  if (!client.ok()) {
    std::fprintf(stderr, "%s\n", client.status().ToString().c_str());
    return 1;
  }

  // q [batch=1, seqlen=128, heads=8, head_dim=64]; k, v with 2 KV heads (GQA), float32.
  constexpr int kSeqlen = 128, kHeads = 8, kKvHeads = 2, kHeadDim = 64;
  std::mt19937 rng(42);
  std::normal_distribution<float> normal;
  std::vector<float> q(kSeqlen * kHeads * kHeadDim), k(kSeqlen * kKvHeads * kHeadDim), v(k.size());
  for (std::vector<float>* t : {&q, &k, &v}) {
    for (float& x : *t) x = normal(rng);
  }
  ac::AttentionArgs args;
  args.q = {v1::FLOAT32, q.data(), {1, kSeqlen, kHeads, kHeadDim}};
  args.k = {v1::FLOAT32, k.data(), {1, kSeqlen, kKvHeads, kHeadDim}};
  args.v = {v1::FLOAT32, v.data(), {1, kSeqlen, kKvHeads, kHeadDim}};
  args.causal = true;

  // Synchronous: the answer's o has q's dtype and shape; copy it into our own buffer.
  absl::StatusOr<v1::AttentionResponse> response = client->Attention(args);
  if (!response.ok()) {
    std::fprintf(stderr, "Attention: %s\n", response.status().ToString().c_str());
    return 1;
  }
  std::vector<float> o(q.size());
  if (absl::Status s = ac::CopyTensor(response->o(), {v1::FLOAT32, o.data(), args.q.shape});
      !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("o: float32 [1, %d, %d, %d], o[0] = %.6f; server: queue %.3f ms, kernel %.3f ms\n",
              kSeqlen, kHeads, kHeadDim, o[0], response->timings().queue_ns() * 1e-6,
              response->timings().kernel_ns() * 1e-6);

  // Asynchronous: build the request once and send it several times concurrently.
  absl::StatusOr<v1::AttentionRequest> request = ac::BuildRequest(args);
  if (!request.ok()) return 1;
  auto shared = std::make_shared<const v1::AttentionRequest>(*std::move(request));
  std::vector<std::future<absl::StatusOr<v1::AttentionResponse>>> futures;
  for (int i = 0; i < 8; ++i) futures.push_back(client->AttentionFuture(shared));
  int ok = 0;
  for (auto& future : futures) {
    absl::StatusOr<v1::AttentionResponse> r = future.get();
    if (r.ok()) {
      ++ok;
    } else {
      std::fprintf(stderr, "async: %s\n", r.status().ToString().c_str());
    }
  }
  std::printf("async: %d of %zu calls succeeded\n", ok, futures.size());
  return ok == static_cast<int>(futures.size()) ? 0 : 1;
}
