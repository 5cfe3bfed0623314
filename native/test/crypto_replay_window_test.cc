// The replay window on its own: fresh, duplicate and too-old counters, slides and big jumps.
#include "crypto/replay_window.h"
#include "crypto_test_support.h"
#include "test.h"

using squall::crypto::ReplayWindow;
using Verdict = ReplayWindow::Verdict;

// Proves: duplicates are rejected, reordering inside the window is accepted exactly once,
// counters below the window are too old, and a jump wider than the window clears stale bits.
TEST(crypto_replay_window_verdicts) {
  ReplayWindow window;
  CHECK_STATUS(window.Check(0), Verdict::kFresh);
  window.Mark(0);
  CHECK_STATUS(window.Check(0), Verdict::kReplay);
  window.Mark(5);
  for (uint64_t c : {1, 2, 3, 4}) CHECK_STATUS(window.Check(c), Verdict::kFresh);
  window.Mark(3);
  CHECK_STATUS(window.Check(3), Verdict::kReplay);
  CHECK_STATUS(window.Check(4), Verdict::kFresh);
  const uint64_t top = 5 + ReplayWindow::kWindowPackets;
  window.Mark(top);
  CHECK_STATUS(window.Check(5), Verdict::kTooOld);
  CHECK_STATUS(window.Check(6), Verdict::kFresh);  // never seen, just inside the window
  CHECK_STATUS(window.Check(top), Verdict::kReplay);
  // A jump of several windows: everything below falls out, nothing stale stays marked.
  const uint64_t far = top + 5 * ReplayWindow::kWindowPackets + 17;
  window.Mark(far);
  for (uint64_t c = far - ReplayWindow::kWindowPackets + 1; c < far; ++c) {
    if (window.Check(c) != Verdict::kFresh) CHECK(false);
  }
  CHECK_STATUS(window.Check(far - ReplayWindow::kWindowPackets), Verdict::kTooOld);
  CHECK_EQ(window.highest(), far);
}

// Proves: a sliding sequence with random-ish reordering accepts each counter exactly once.
TEST(crypto_replay_window_each_counter_once) {
  ReplayWindow window;
  uint64_t accepted = 0, rejected = 0;
  for (uint64_t base = 0; base < 20000; base += 8) {
    // Deliver 8 counters in a scrambled order, each twice.
    for (uint64_t k : {3, 0, 7, 1, 6, 2, 5, 4, 0, 3, 7}) {
      const uint64_t c = base + k;
      if (window.Check(c) == Verdict::kFresh) {
        window.Mark(c);
        ++accepted;
      } else {
        ++rejected;
      }
    }
  }
  CHECK_EQ(accepted, uint64_t{20000});
  CHECK_EQ(rejected, uint64_t{2500 * 3});
}
