// A few hundred megabytes through the client in each direction: a 320 MiB bf16 q echoed by the
// fake server, unary and on a stream, compared bit for bit.
#include <cstring>
#include <random>
#include <vector>

#include "attention/client/client.h"
#include "attention/client/stream_session.h"
#include "gtest/gtest.h"
#include "tests/client/fake_attention_service.h"

namespace attention::client {
namespace {

using ::attention::testing::FakeAttentionService;
using ::attention::testing::FakeServer;

TEST(LargeTensorTest, HundredsOfMegabytesRoundTrip) {
  // q [1, 40960, 32, 128] bf16 = 320 MiB; k and v are small.
  const std::vector<int64_t> q_shape = {1, 40960, 32, 128};
  std::vector<uint16_t> q(static_cast<size_t>(NumElements(q_shape)));
  std::mt19937_64 rng(11);
  for (size_t i = 0; i < q.size(); i += 4) {
    const uint64_t bits = rng();
    std::memcpy(&q[i], &bits, sizeof(bits));
  }
  const std::vector<uint16_t> kv(1 * 64 * 32 * 128, 0x3f80);
  AttentionArgs args;
  args.q = {v1::BFLOAT16, q.data(), q_shape};
  args.k = args.v = {v1::BFLOAT16, kv.data(), {1, 64, 32, 128}};

  FakeAttentionService service;
  FakeServer server(&service);
  absl::StatusOr<Client> client = Client::Create(server.address());
  ASSERT_TRUE(client.ok()) << client.status();

  std::vector<uint16_t> out(q.size());
  {
    absl::StatusOr<v1::AttentionResponse> response = client->Attention(args);
    ASSERT_TRUE(response.ok()) << response.status();
    ASSERT_TRUE(CopyTensor(response->o(), {v1::BFLOAT16, out.data(), q_shape}).ok());
    EXPECT_EQ(std::memcmp(out.data(), q.data(), q.size() * 2), 0);
  }
  {
    std::unique_ptr<StreamSession> session = client->OpenStream();
    absl::StatusOr<v1::AttentionResponse> response = session->Submit(*BuildRequest(args)).get();
    ASSERT_TRUE(response.ok()) << response.status();
    absl::StatusOr<TensorView> o = ViewTensor(response->o());
    ASSERT_TRUE(o.ok());
    EXPECT_EQ(std::memcmp(o->data, q.data(), q.size() * 2), 0);
    EXPECT_TRUE(session->Finish().ok());
  }
}

}  // namespace
}  // namespace attention::client
