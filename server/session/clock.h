// The time source of the session store: last use, creation and idle TTLs. Tests inject a clock
// they advance by hand.
#ifndef ATTENTION_SERVER_SESSION_CLOCK_H_
#define ATTENTION_SERVER_SESSION_CLOCK_H_

#include "absl/time/time.h"

namespace attention::session {

class Clock {
 public:
  virtual ~Clock() = default;
  // Never decreases.
  virtual absl::Time Now() const = 0;

  // The process's clock: the wall time when it was first used plus the steady clock's time
  // since, so that an NTP step neither expires every session at once nor keeps one alive, while
  // the times it gives still read as dates for operators. Thread-safe; never destroyed.
  static const Clock& Real();
};

}  // namespace attention::session

#endif  // ATTENTION_SERVER_SESSION_CLOCK_H_
