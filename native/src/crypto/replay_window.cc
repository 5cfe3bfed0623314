#include "crypto/replay_window.h"

#include "crypto/crypto_common.h"

namespace squall::crypto {

bool ReplayWindow::Bit(uint64_t counter) const {
  const uint64_t index = counter % kWindowPackets;
  return (bits_[index / 64] >> (index % 64)) & 1;
}
void ReplayWindow::SetBit(uint64_t counter) {
  const uint64_t index = counter % kWindowPackets;
  bits_[index / 64] |= uint64_t{1} << (index % 64);
}
void ReplayWindow::ClearBit(uint64_t counter) {
  const uint64_t index = counter % kWindowPackets;
  bits_[index / 64] &= ~(uint64_t{1} << (index % 64));
}

ReplayWindow::Verdict ReplayWindow::Check(uint64_t counter) const {
  if (!any_accepted_ || counter > highest_) return Verdict::kFresh;
  if (highest_ - counter >= kWindowPackets) return Verdict::kTooOld;
  return Bit(counter) ? Verdict::kReplay : Verdict::kFresh;
}

void ReplayWindow::Mark(uint64_t counter) {
  SQUALL_CRYPTO_ASSERT(Check(counter) == Verdict::kFresh, "mark only fresh counters");
  if (any_accepted_ && counter <= highest_) {
    SetBit(counter);
    return;
  }
  // Slide: counters in (highest_, counter) were never seen; clear their (recycled) bits.
  if (!any_accepted_ || counter - highest_ >= kWindowPackets) {
    bits_.fill(0);
  } else {
    for (uint64_t skipped = highest_ + 1; skipped < counter; ++skipped) ClearBit(skipped);
    ClearBit(counter);
  }
  any_accepted_ = true;
  highest_ = counter;
  SetBit(counter);
}

}  // namespace squall::crypto
