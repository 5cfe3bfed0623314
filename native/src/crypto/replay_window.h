#pragma once
// Sliding-window replay filter over one receive key's packet counters (the IPsec scheme of
// RFC 4303 §3.4.3 / RFC 6479). It remembers the highest authenticated counter and, for the
// kWindowPackets counters below it, which were accepted. Check() before decrypting (cheap
// rejection); Mark() only after the tag verified, so forged packets cannot move the window.
#include <array>
#include <cstddef>
#include <cstdint>

namespace squall::crypto {

class ReplayWindow {
 public:
  // 2048 packets: far more than a session has in flight (credits are ~32 packets per session),
  // so reordering inside the kernel's queues never pushes a legitimate packet below the window.
  static constexpr uint64_t kWindowPackets = 2048;
  static constexpr std::size_t kWords = kWindowPackets / 64;
  static_assert(kWindowPackets % 64 == 0, "the bitmap is whole 64-bit words");

  enum class Verdict : uint8_t { kFresh, kReplay, kTooOld };

  Verdict Check(uint64_t counter) const;
  // Records counter as accepted. Requires Check(counter) == kFresh (asserted).
  void Mark(uint64_t counter);

  uint64_t highest() const { return highest_; }
  bool empty() const { return !any_accepted_; }

 private:
  bool Bit(uint64_t counter) const;
  void SetBit(uint64_t counter);
  void ClearBit(uint64_t counter);

  bool any_accepted_ = false;
  uint64_t highest_ = 0;
  // Ring bitmap: bit (counter % kWindowPackets) belongs to the counter in
  // (highest_ - kWindowPackets, highest_] that maps there.
  std::array<uint64_t, kWords> bits_{};
};

}  // namespace squall::crypto
