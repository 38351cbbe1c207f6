// Session ids: the text form and its parse, and that ids look like 128 independent fair coin flips
// (distinct, every bit set about half the time, consecutive ids about 64 bits apart).
#include "server/session/session_id.h"

#include <gtest/gtest.h>

#include <bitset>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"

namespace attention::session {
namespace {

TEST(SessionIdTest, TextIs32LowercaseHexDigitsAndParsesBack) {
  for (int i = 0; i < 100; ++i) {
    absl::StatusOr<SessionId> id = SessionId::Generate();
    ASSERT_TRUE(id.ok()) << id.status();
    const std::string text = id->ToString();
    ASSERT_EQ(text.size(), 32u);
    for (char c : text) {
      ASSERT_TRUE((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) << text;
    }
    EXPECT_EQ(id->ShortForm(), text.substr(0, 8));
    absl::StatusOr<SessionId> parsed = SessionId::Parse(text);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, *id);
  }
}

TEST(SessionIdTest, KnownValueRoundTrips) {
  SessionId id;
  id.hi = 0x0123456789abcdefULL;
  id.lo = 0xfedcba9876543210ULL;
  EXPECT_EQ(id.ToString(), "0123456789abcdeffedcba9876543210");
  EXPECT_EQ(id.ShortForm(), "01234567");
  absl::StatusOr<SessionId> parsed = SessionId::Parse("0123456789abcdeffedcba9876543210");
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->hi, id.hi);
  EXPECT_EQ(parsed->lo, id.lo);
}

TEST(SessionIdTest, ParseRejectsOtherTextNamingTheFieldAndTheRule) {
  const std::string good = "0123456789abcdeffedcba9876543210";
  struct Case {
    std::string text;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"", "got 0 characters"},
      {good.substr(1), "got 31 characters"},
      {good + "0", "got 33 characters"},
      {"0123456789ABCDEFfedcba9876543210", "character 10 is not one"},
      {"0123456789abcdeffedcba987654321g", "character 31 is not one"},
      {"0123456789abcdef-edcba9876543210", "character 16 is not one"},
      {std::string(31, '0') + '\0', "character 31 is not one"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<SessionId> parsed = SessionId::Parse(c.text);
    ASSERT_FALSE(parsed.ok()) << c.text;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(parsed.status().message().find("session_id: must be 32 lowercase hex digits"),
              std::string::npos)
        << parsed.status();
    EXPECT_NE(parsed.status().message().find(c.message), std::string::npos) << parsed.status();
  }
  EXPECT_NE(SessionId::Parse("x", "parent_id").status().message().find("parent_id: "),
            std::string::npos);
}

// 20000 ids: each bit's share of ones has standard deviation 0.0035 around 0.5, so [0.46, 0.54]
// is more than 11 standard deviations wide; the mean distance between consecutive ids has
// standard deviation 0.04 around 64 bits. A counter, a time stamp or a stuck byte fails these.
TEST(SessionIdTest, BitsLookIndependentAndFair) {
  constexpr int kIds = 20000;
  absl::flat_hash_set<SessionId> seen;
  std::vector<int> ones(128, 0);
  double distance_sum = 0;
  SessionId previous;
  for (int i = 0; i < kIds; ++i) {
    absl::StatusOr<SessionId> id = SessionId::Generate();
    ASSERT_TRUE(id.ok()) << id.status();
    ASSERT_TRUE(seen.insert(*id).second) << "duplicate id " << id->ToString();
    for (int b = 0; b < 64; ++b) {
      ones[b] += static_cast<int>((id->hi >> b) & 1);
      ones[64 + b] += static_cast<int>((id->lo >> b) & 1);
    }
    if (i > 0) {
      distance_sum += static_cast<double>(std::bitset<64>(id->hi ^ previous.hi).count() +
                                          std::bitset<64>(id->lo ^ previous.lo).count());
    }
    previous = *id;
  }
  for (int b = 0; b < 128; ++b) {
    const double share = static_cast<double>(ones[b]) / kIds;
    EXPECT_GT(share, 0.46) << "bit " << b;
    EXPECT_LT(share, 0.54) << "bit " << b;
  }
  const double mean_distance = distance_sum / (kIds - 1);
  EXPECT_GT(mean_distance, 63.5);
  EXPECT_LT(mean_distance, 64.5);
}

}  // namespace
}  // namespace attention::session
