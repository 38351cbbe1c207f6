#include "server/session/session_id.h"

#include <sys/random.h>

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace attention::session {
namespace {

constexpr char kHexDigits[] = "0123456789abcdef";

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

void AppendHex(uint64_t word, int digits, std::string& out) {
  for (int i = 0; i < digits; ++i) {
    out.push_back(kHexDigits[(word >> (60 - 4 * i)) & 0xf]);
  }
}

}  // namespace

absl::StatusOr<SessionId> SessionId::Generate() {
  unsigned char bytes[16];
  size_t filled = 0;
  while (filled < sizeof(bytes)) {
    // getrandom returns at most 256 bytes per call and may be interrupted by a signal before
    // it returns any; 16 bytes from the (seeded) pool arrive in one call otherwise.
    const ssize_t n = getrandom(bytes + filled, sizeof(bytes) - filled, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(
          absl::StrCat("session id: getrandom failed: ", std::strerror(errno)));
    }
    filled += static_cast<size_t>(n);
  }
  SessionId id;
  for (int i = 0; i < 8; ++i) {
    id.hi = (id.hi << 8) | bytes[i];
    id.lo = (id.lo << 8) | bytes[8 + i];
  }
  return id;
}

absl::StatusOr<SessionId> SessionId::Parse(absl::string_view text, absl::string_view field) {
  if (text.size() != kTextLength) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": must be ", kTextLength,
                                                   " lowercase hex digits, got ", text.size(),
                                                   " characters"));
  }
  SessionId id;
  for (int i = 0; i < kTextLength; ++i) {
    const int digit = HexValue(text[i]);
    if (digit < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": must be ", kTextLength, " lowercase hex digits, character ", i, " is not one"));
    }
    uint64_t& word = i < 16 ? id.hi : id.lo;
    word = (word << 4) | static_cast<uint64_t>(digit);
  }
  return id;
}

std::string SessionId::ToString() const {
  std::string out;
  out.reserve(kTextLength);
  AppendHex(hi, 16, out);
  AppendHex(lo, 16, out);
  return out;
}

std::string SessionId::ShortForm() const {
  std::string out;
  AppendHex(hi, 8, out);
  return out;
}

}  // namespace attention::session
