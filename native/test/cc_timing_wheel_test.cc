// The timing wheel: releases in time order within one slot width, O(1) insert, idle time costs
// nothing, limits (pool, horizon) are enforced, and it paces a session at its rate.
#include <cstdio>
#include <random>
#include <vector>

#include "cc/timely.h"
#include "cc/timing_wheel.h"
#include "test.h"

using namespace squall::cc;

// Proves: random inserts are released in non-decreasing slot order, never more than one slot
// width before their time, never after the Reap that passes their slot, and each exactly once.
TEST(cc_timing_wheel_releases_in_time_order) {
  TimingWheelConfig config;
  config.slot_width_ns = 1'000;
  config.slot_count = 1024;
  config.entries_max = 4096;
  const uint64_t start = 10'000'000;
  TimingWheel wheel(config, start);
  std::mt19937_64 random(7);
  std::vector<uint64_t> inserted_time(3000);
  for (uint64_t i = 0; i < inserted_time.size(); ++i) {
    inserted_time[i] = start + random() % (900 * config.slot_width_ns);
    CHECK(wheel.Insert(inserted_time[i], i) == WheelInsertStatus::kOk);
  }
  CHECK_EQ(wheel.size(), size_t{3000});
  std::vector<WheelEntry> ready;
  std::vector<int> released(inserted_time.size(), 0);
  uint64_t last_slot = 0;
  bool in_order = true, never_early = true, never_late = true;
  for (uint64_t now = start; now < start + 1'000'000; now += 3'700) {
    ready.clear();
    wheel.Reap(now, ready);
    for (const WheelEntry& entry : ready) {
      const uint64_t slot = entry.tx_time_ns / config.slot_width_ns;
      in_order = in_order && slot >= last_slot;
      last_slot = slot;
      never_early = never_early && entry.tx_time_ns < now + config.slot_width_ns;
      never_late = never_late && entry.tx_time_ns + 3'700 + config.slot_width_ns > now;
      ++released[entry.payload];
    }
  }
  CHECK(in_order);
  CHECK(never_early);
  CHECK(never_late);
  CHECK(wheel.empty());
  bool each_once = true;
  for (int count : released) each_once = each_once && count == 1;
  CHECK(each_once);
}

// Proves: Reap visits only occupied slots (the bitmap skips empty ones), so a long idle period
// or a mostly idle wheel costs nothing per empty slot; FIFO holds within a slot.
TEST(cc_timing_wheel_skips_idle_slots) {
  TimingWheelConfig config;
  config.slot_width_ns = 1'000;
  config.slot_count = 8192;
  config.entries_max = 64;
  TimingWheel wheel(config, 0);
  CHECK(wheel.Insert(5'500, 1) == WheelInsertStatus::kOk);
  CHECK(wheel.Insert(5'100, 2) == WheelInsertStatus::kOk);  // same slot: FIFO, not time sort
  CHECK(wheel.Insert(7'000'000, 3) == WheelInsertStatus::kOk);
  CHECK_EQ(wheel.NextDueNs(), uint64_t{5'000});
  std::vector<WheelEntry> ready;
  CHECK_EQ(wheel.Reap(4'999, ready), size_t{0});
  CHECK_EQ(wheel.Reap(5'000, ready), size_t{2});
  CHECK(ready.size() == 2 && ready[0].payload == 1 && ready[1].payload == 2);
  CHECK_EQ(wheel.NextDueNs(), uint64_t{7'000'000});
  CHECK_EQ(wheel.Reap(7'500'000, ready), size_t{1});
  CHECK_EQ(wheel.NextDueNs(), UINT64_MAX);
  CHECK_EQ(wheel.occupied_slot_visits(), uint64_t{2});
  // Hours of idle time: nothing to visit.
  CHECK_EQ(wheel.Reap(3'600'000'000'000ull, ready), size_t{0});
  CHECK_EQ(wheel.occupied_slot_visits(), uint64_t{2});
  // A time in the past goes out with the next Reap that reaches a new slot.
  CHECK(wheel.Insert(1, 4) == WheelInsertStatus::kOk);
  CHECK_EQ(wheel.Reap(3'600'000'000'999ull, ready), size_t{0});
  CHECK_EQ(wheel.Reap(3'600'000'001'000ull, ready), size_t{1});
}

// Proves: the limits hold. Inserting past the horizon clamps (released at the horizon, counted);
// a full pool refuses; freed entries are reused.
TEST(cc_timing_wheel_limits) {
  TimingWheelConfig config;
  config.slot_width_ns = 1'000;
  config.slot_count = 64;
  config.entries_max = 3;
  TimingWheel wheel(config, 0);
  CHECK(wheel.Insert(1'000'000, 1) == WheelInsertStatus::kClampedToHorizon);
  CHECK_EQ(wheel.clamped_inserts(), uint64_t{1});
  CHECK(wheel.Insert(2'000, 2) == WheelInsertStatus::kOk);
  CHECK(wheel.Insert(3'000, 3) == WheelInsertStatus::kOk);
  CHECK(wheel.Insert(4'000, 4) == WheelInsertStatus::kFull);
  std::vector<WheelEntry> ready;
  CHECK_EQ(wheel.Reap(62'999, ready), size_t{2});
  CHECK_EQ(wheel.Reap(63'000, ready), size_t{1});  // the clamped one, at the horizon's last slot
  CHECK(ready.back().payload == 1);
  CHECK(wheel.Insert(70'000, 5) == WheelInsertStatus::kOk);
}

// Proves: a session paced through Pacer + wheel at rate R sends N packets in N * size / R of
// simulated time (within a slot), and many sessions share one wheel without interfering.
TEST(cc_timing_wheel_paces_at_rate) {
  TimingWheelConfig config;
  TimingWheel wheel(config, 0);
  constexpr int kSessions = 100;
  constexpr int kPacketsPerSession = 50;
  constexpr uint64_t kPacketBytes = 1000;
  std::vector<Pacer> pacers(kSessions);
  std::vector<double> rates(kSessions);
  for (int s = 0; s < kSessions; ++s) {
    rates[s] = 20e6 + 10e6 * s;  // 20 MB/s .. 1 GB/s
    for (int p = 0; p < kPacketsPerSession; ++p) {
      const uint64_t when = pacers[s].Schedule(0, kPacketBytes, rates[s]);
      CHECK(wheel.Insert(when, static_cast<uint64_t>(s)) == WheelInsertStatus::kOk);
    }
  }
  std::vector<uint64_t> last_release_ns(kSessions, 0);
  std::vector<int> sent(kSessions, 0);
  std::vector<WheelEntry> ready;
  for (uint64_t now = 0; !wheel.empty(); now += config.slot_width_ns) {
    ready.clear();
    wheel.Reap(now, ready);
    for (const WheelEntry& entry : ready) {
      ++sent[entry.payload];
      last_release_ns[entry.payload] = now;
    }
  }
  bool all_on_time = true;
  for (int s = 0; s < kSessions; ++s) {
    const double expected_ns = (kPacketsPerSession - 1) * kPacketBytes * 1e9 / rates[s];
    const double actual_ns = static_cast<double>(last_release_ns[s]);
    if (sent[s] != kPacketsPerSession || actual_ns < expected_ns - 1000 ||
        actual_ns > expected_ns + 1000)
      std::fprintf(stderr, "session %d sent %d last %.0f expected %.0f\n", s, sent[s], actual_ns,
                   expected_ns);
    all_on_time = all_on_time && sent[s] == kPacketsPerSession &&
                  actual_ns >= expected_ns - static_cast<double>(config.slot_width_ns) &&
                  actual_ns <= expected_ns + static_cast<double>(config.slot_width_ns);
  }
  CHECK(all_on_time);
}
