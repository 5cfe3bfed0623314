#pragma once
// A timing wheel rate limiter (Carousel, SIGCOMM'17; eRPC's timing_wheel.h): packets are
// inserted at their desired transmit time into one of slot_count slots of slot_width_ns each,
// and Reap(now) hands back everything due, in time order. Insert is O(1). Reap costs
// O(due entries + elapsed slots / 64): an occupancy bitmap skips empty slots, so idle time and
// idle sessions cost nothing (nothing walks sessions; an idle wheel jumps straight to now).
// Pure: time is nanoseconds on the caller's monotonic clock.
#include <cstddef>
#include <cstdint>
#include <vector>

namespace squall::cc {

struct WheelEntry {
  uint64_t tx_time_ns = 0;  // desired transmit time as inserted
  uint64_t payload = 0;     // opaque to the wheel: e.g. session number << 32 | packet index
};

struct TimingWheelConfig {
  uint64_t slot_width_ns = 1'000;  // release granularity
  // Power of two. Horizon = slot_width_ns * slot_count must cover the longest gap a session can
  // be scheduled ahead: credits * packet bytes / minimum rate (eRPC sizes it the same way).
  // 8192 x 1 µs = 8.2 ms covers 32 x 4 KiB at 15 MB/s.
  uint32_t slot_count = 8192;
  uint32_t entries_max = 65'536;  // pool size: every packet that can be in flight at once
};

enum class WheelInsertStatus : uint8_t {
  kOk,
  kClampedToHorizon,  // inserted, but its time was beyond the horizon: released at the horizon
  kFull,              // entries_max entries already waiting: not inserted
};

class TimingWheel {
 public:
  // start_ns: the clock's current time; slots are aligned to multiples of slot_width_ns.
  TimingWheel(const TimingWheelConfig& config, uint64_t start_ns);

  // Schedules payload for tx_time_ns. A time already past goes into the next slot not yet
  // released (so it leaves with the first Reap that reaches a new slot).
  WheelInsertStatus Insert(uint64_t tx_time_ns, uint64_t payload);

  // Appends to ready every entry whose slot starts at or before now_ns, in slot order (FIFO
  // within a slot), and removes them. An entry leaves at most one slot width before its time.
  // Returns the number appended. now_ns must not go backwards (asserted).
  size_t Reap(uint64_t now_ns, std::vector<WheelEntry>& ready);

  // Start time of the earliest occupied slot: when the event loop must wake to release it (use
  // it as the blocking wait's timeout, so pacing never needs busy polling). UINT64_MAX if empty.
  // Costs at most slot_count / 64 word tests.
  uint64_t NextDueNs() const;

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  uint64_t horizon_ns() const { return config_.slot_width_ns * config_.slot_count; }

  // Stats.
  uint64_t clamped_inserts() const { return clamped_inserts_; }
  uint64_t occupied_slot_visits() const { return occupied_slot_visits_; }

 private:
  static constexpr uint32_t kNone = 0xFFFFFFFFu;
  struct Node {
    WheelEntry entry;
    uint32_t next = kNone;
  };
  struct Slot {
    uint32_t head = kNone;
    uint32_t tail = kNone;
  };
  void ReleaseSlot(uint32_t slot_index, std::vector<WheelEntry>& ready);
  // Offset (0..span-1) from start_index of the next occupied slot, or span if none.
  uint64_t NextOccupied(uint64_t start_index, uint64_t span) const;

  TimingWheelConfig config_;
  uint64_t current_slot_;  // absolute slot number (time / width) of the next slot to release
  size_t size_ = 0;
  std::vector<Slot> slots_;
  std::vector<uint64_t> occupied_;  // bit per slot
  std::vector<Node> nodes_;
  uint32_t free_head_ = kNone;
  uint64_t clamped_inserts_ = 0;
  uint64_t occupied_slot_visits_ = 0;
};

}  // namespace squall::cc
