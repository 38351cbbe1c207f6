#include "server/session/clock.h"

#include <chrono>

#include "absl/time/clock.h"

namespace attention::session {
namespace {

class RealClock final : public Clock {
 public:
  RealClock() : wall_start_(absl::Now()), steady_start_(std::chrono::steady_clock::now()) {}

  absl::Time Now() const override {
    return wall_start_ + absl::FromChrono(std::chrono::steady_clock::now() - steady_start_);
  }

 private:
  const absl::Time wall_start_;
  const std::chrono::steady_clock::time_point steady_start_;
};

}  // namespace

const Clock& Clock::Real() {
  static const RealClock* clock = new RealClock;  // never destroyed: used until exit
  return *clock;
}

}  // namespace attention::session
