#include "server/stream_state.h"

namespace attention::server {

bool StreamState::ShouldReadNext() {
  if (in_flight_ < max_in_flight_ && !budget_paused_ && !Ending()) return true;
  read_paused_ = true;
  return false;
}

bool StreamState::StartWriting() {
  if (writing_) return false;
  writing_ = true;
  return true;
}

bool StreamState::AnswerWritten(bool ok, int dropped_queued) {
  --in_flight_;
  if (!ok) {
    write_failed_ = true;
    in_flight_ -= dropped_queued;
  }
  // The client reads again: what it took frees room in the budget.
  if (ok) budget_paused_ = false;
  if (read_paused_ && !Ending() && in_flight_ < max_in_flight_) {
    read_paused_ = false;
    return true;
  }
  return false;
}

bool StreamState::TryFinish() {
  if (finished_ || in_flight_ > 0 || writing_ || !Ending()) return false;
  finished_ = true;
  return true;
}

bool StreamState::FinishAtOpen() {
  if (finished_) return false;
  finished_ = true;
  return true;
}

grpc::Status StreamState::FinishStatus() const {
  if (cancelled() || write_failed_) {
    return grpc::Status(grpc::StatusCode::CANCELLED, "stream cancelled");
  }
  if (!malformed_.empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, malformed_);
  if (draining_ && !reads_done_) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "server is draining: open the stream on another replica");
  }
  return grpc::Status::OK;
}

}  // namespace attention::server
