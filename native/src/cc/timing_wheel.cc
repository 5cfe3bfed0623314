#include "cc/timing_wheel.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace squall::cc {

namespace {
void Require(bool condition, const char* why) {
  if (!condition) {
    std::fprintf(stderr, "squall timing wheel: %s\n", why);
    std::abort();
  }
}
}  // namespace

TimingWheel::TimingWheel(const TimingWheelConfig& config, uint64_t start_ns)
    : config_(config),
      current_slot_(start_ns / std::max<uint64_t>(config.slot_width_ns, 1)),
      slots_(config.slot_count),
      occupied_((config.slot_count + 63) / 64, 0),
      nodes_(config.entries_max) {
  Require(config.slot_width_ns > 0, "slot width is positive");
  Require(config.slot_count >= 64 && (config.slot_count & (config.slot_count - 1)) == 0,
          "slot count is a power of two, at least 64");
  Require(config.entries_max > 0 && config.entries_max < kNone, "entry pool size");
  // Free list through the pool, in index order.
  for (uint32_t i = 0; i + 1 < config.entries_max; ++i) nodes_[i].next = i + 1;
  nodes_[config.entries_max - 1].next = kNone;
  free_head_ = 0;
}

WheelInsertStatus TimingWheel::Insert(uint64_t tx_time_ns, uint64_t payload) {
  if (free_head_ == kNone) return WheelInsertStatus::kFull;
  WheelInsertStatus status = WheelInsertStatus::kOk;
  uint64_t slot = std::max(tx_time_ns / config_.slot_width_ns, current_slot_);
  if (slot - current_slot_ >= config_.slot_count) {
    slot = current_slot_ + config_.slot_count - 1;
    ++clamped_inserts_;
    status = WheelInsertStatus::kClampedToHorizon;
  }
  const uint32_t node_index = free_head_;
  Node& node = nodes_[node_index];
  free_head_ = node.next;
  node.entry = WheelEntry{tx_time_ns, payload};
  node.next = kNone;
  const uint32_t index = static_cast<uint32_t>(slot & (config_.slot_count - 1));
  Slot& target = slots_[index];
  if (target.tail == kNone) {
    target.head = node_index;
  } else {
    nodes_[target.tail].next = node_index;
  }
  target.tail = node_index;
  occupied_[index / 64] |= uint64_t{1} << (index % 64);
  ++size_;
  return status;
}

uint64_t TimingWheel::NextOccupied(uint64_t start_index, uint64_t span) const {
  const uint64_t mask = config_.slot_count - 1;
  uint64_t offset = 0;
  while (offset < span) {
    const uint64_t index = (start_index + offset) & mask;
    const uint64_t word = occupied_[index / 64] >> (index % 64);
    if (word != 0) {
      const uint64_t found = offset + static_cast<uint64_t>(__builtin_ctzll(word));
      return std::min(found, span);
    }
    offset += 64 - index % 64;  // skip the rest of this (empty) word
  }
  return span;
}

void TimingWheel::ReleaseSlot(uint32_t slot_index, std::vector<WheelEntry>& ready) {
  Slot& slot = slots_[slot_index];
  ++occupied_slot_visits_;
  uint32_t node_index = slot.head;
  while (node_index != kNone) {
    Node& node = nodes_[node_index];
    ready.push_back(node.entry);
    const uint32_t next = node.next;
    node.next = free_head_;
    free_head_ = node_index;
    node_index = next;
    --size_;
  }
  slot = Slot{};
  occupied_[slot_index / 64] &= ~(uint64_t{1} << (slot_index % 64));
}

uint64_t TimingWheel::NextDueNs() const {
  if (size_ == 0) return UINT64_MAX;
  const uint64_t offset = NextOccupied(current_slot_, config_.slot_count);
  Require(offset < config_.slot_count, "a non-empty wheel has an occupied slot");
  return (current_slot_ + offset) * config_.slot_width_ns;
}

size_t TimingWheel::Reap(uint64_t now_ns, std::vector<WheelEntry>& ready) {
  const uint64_t now_slot = now_ns / config_.slot_width_ns;
  Require(now_slot + 1 >= current_slot_, "time never goes backwards");
  if (now_slot < current_slot_) return 0;
  const size_t before = ready.size();
  // Slots current_slot_ .. now_slot are due; at most one full turn of the ring holds entries.
  const uint64_t span = std::min<uint64_t>(now_slot - current_slot_ + 1, config_.slot_count);
  uint64_t offset = 0;
  while (size_ > 0 && offset < span) {
    offset += NextOccupied(current_slot_ + offset, span - offset);
    if (offset >= span) break;
    ReleaseSlot(static_cast<uint32_t>((current_slot_ + offset) & (config_.slot_count - 1)),
                ready);
    ++offset;
  }
  current_slot_ = now_slot + 1;
  return ready.size() - before;
}

}  // namespace squall::cc
