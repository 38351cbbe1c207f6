// Session ids: 128 bits from the operating system's CSPRNG (getrandom), written as 32 lowercase
// hex digits.
//
// An id is the only credential a session has: whoever knows it may append to, read from, fork or
// release the session. It is therefore drawn from the OS CSPRNG, never from a seeded generator,
// and carries 128 random bits (a random UUID carries 122): guessing a live id among a million
// sessions takes about 2^108 tries.
#ifndef ATTENTION_SERVER_SESSION_SESSION_ID_H_
#define ATTENTION_SERVER_SESSION_SESSION_ID_H_

#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace attention::session {

struct SessionId {
  // hi holds the first 16 hex digits of the text form, lo the last 16.
  uint64_t hi = 0, lo = 0;

  // Hex digits in the text form.
  static constexpr int kTextLength = 32;

  // A fresh id: 16 bytes from getrandom(2). Fails (INTERNAL, naming errno) only if the kernel
  // cannot supply them; it blocks only before the kernel's pool is first seeded at boot.
  static absl::StatusOr<SessionId> Generate();

  // The id written as `text` by ToString(). INVALID_ARGUMENT naming `field` and the rule otherwise
  // (length, or the first character that is not a lowercase hex digit).
  static absl::StatusOr<SessionId> Parse(absl::string_view text,
                                         absl::string_view field = "session_id");

  // 32 lowercase hex digits.
  std::string ToString() const;
  // The first 8 hex digits, for logs and error messages: enough to tell sessions apart, not
  // enough to act on one.
  std::string ShortForm() const;

  friend bool operator==(const SessionId& a, const SessionId& b) {
    return a.hi == b.hi && a.lo == b.lo;
  }
  friend bool operator!=(const SessionId& a, const SessionId& b) { return !(a == b); }
  template <typename H>
  friend H AbslHashValue(H h, const SessionId& id) {
    return H::combine(std::move(h), id.hi, id.lo);
  }
};

}  // namespace attention::session

#endif  // ATTENTION_SERVER_SESSION_SESSION_ID_H_
