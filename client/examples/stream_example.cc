// Many requests in flight on one stream: requests of different lengths are submitted without
// waiting, and each answer is matched to its request by the session (the server may answer out
// of order).
//   attention_stream_example HOST:PORT
#include <cstdint>
#include <cstdio>
#include <future>
#include <vector>

#include "attention/client/stream_session.h"

namespace ac = attention::client;
namespace v1 = attention::v1;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s HOST:PORT\n", argv[0]);
    return 2;
  }
  absl::StatusOr<ac::Client> client = ac::Client::Create(argv[1]);
  if (!client.ok()) {
    std::fprintf(stderr, "%s\n", client.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<ac::StreamSession> session = client->OpenStream();

  // 32 decode-like requests of one query token against 16..512 keys, bf16 (zeros here; real
  // callers pass their activations).
  constexpr int kHeads = 16, kHeadDim = 128;
  std::vector<std::vector<uint16_t>> q(32), kv(32);
  std::vector<std::future<absl::StatusOr<v1::AttentionResponse>>> answers;
  for (int i = 0; i < 32; ++i) {
    const int seqlen_k = 16 * (i + 1);
    q[i].assign(kHeads * kHeadDim, 0);
    kv[i].assign(static_cast<size_t>(seqlen_k) * kHeads * kHeadDim, 0x3f80);  // bf16 1.0
    ac::AttentionArgs args;
    args.q = {v1::BFLOAT16, q[i].data(), {1, 1, kHeads, kHeadDim}};
    args.k = args.v = {v1::BFLOAT16, kv[i].data(), {1, seqlen_k, kHeads, kHeadDim}};
    absl::StatusOr<v1::AttentionRequest> request = ac::BuildRequest(args);
    if (!request.ok()) return 1;
    answers.push_back(session->Submit(*std::move(request)));
  }
  int ok = 0;
  for (auto& answer : answers) {
    absl::StatusOr<v1::AttentionResponse> r = answer.get();
    if (!r.ok()) {
      std::fprintf(stderr, "request failed: %s\n", r.status().ToString().c_str());
      continue;
    }
    absl::StatusOr<ac::TensorView> o = ac::ViewTensor(r->o());
    if (o.ok() && o->shape == std::vector<int64_t>{1, 1, kHeads, kHeadDim}) ++ok;
  }
  const absl::Status stream = session->Finish();
  std::printf("stream: %d of %zu answers, stream status %s\n", ok, answers.size(),
              stream.ToString().c_str());
  return ok == static_cast<int>(answers.size()) && stream.ok() ? 0 : 1;
}
