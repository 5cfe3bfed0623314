#include "transport/congestion_gate.h"

#include <algorithm>
#include <limits>

namespace squall::transport {
namespace {
constexpr uint64_t kNs = 1000;  // the core counts microseconds, Timely nanoseconds
}  // namespace

std::string ValidateCongestionConfig(const CongestionConfig& c) {
  if (!(c.rate_max_bytes_per_s >= 1e6)) return "the maximum session rate must be at least 1 MB/s";
  if (c.rate_min_bytes_per_s < 0 || c.rate_min_bytes_per_s > c.rate_max_bytes_per_s) {
    return "the minimum session rate must be in [0, maximum rate]";
  }
  if ((c.t_low_us == 0) != (c.t_high_us == 0)) {
    return "set both congestion thresholds (t_low and t_high) or neither";
  }
  if (c.t_low_us != 0 && c.t_high_us <= c.t_low_us) return "t_high must be above t_low";
  if (c.default_rtt_us == 0 || c.derived_rtt_max_us == 0) return "RTT defaults must be positive";
  if (c.wheel_slot_us == 0) return "the wheel slot width must be positive";
  if (!(c.size_ns_per_byte_max >= 0)) return "the size correction must not be negative";
  if (c.wheel_slots < 64 || (c.wheel_slots & (c.wheel_slots - 1)) != 0) {
    return "the wheel slot count must be a power of two, at least 64";
  }
  return "";
}

CongestionGate::CongestionGate(const CongestionConfig& config, uint32_t sessions_max,
                               uint64_t now_us)
    : config_(config),
      // One wheel entry per waiting session at most, so the pool never runs out.
      wheel_(cc::TimingWheelConfig{config.wheel_slot_us * kNs, config.wheel_slots,
                                   std::max<uint32_t>(sessions_max, 1)},
             now_us * kNs) {}

cc::TimelyConfig CongestionGate::TimelyFor(uint64_t rtt_us, uint64_t base_floor_ns) const {
  const uint64_t base_us =
      rtt_us == 0 ? config_.default_rtt_us : std::min(rtt_us, config_.derived_rtt_max_us);
  // The base RTT is at least the session's own window drain time, so a lone session that
  // fills its window stays below t_low (4 x base) and the gradient is normalised on that scale.
  cc::TimelyConfig c = cc::TimelyConfig::FromMeasuredRtt(
      std::max(base_us * kNs, base_floor_ns), config_.rate_max_bytes_per_s);
  // Samples below a quarter of the path's RTT cannot be round trips; the window floor does not
  // change what the path can do, so it does not raise this.
  c.rtt_sample_min_ns = base_us * kNs / 4;
  if (config_.rate_min_bytes_per_s > 0) c.rate_min_bytes_per_s = config_.rate_min_bytes_per_s;
  if (config_.t_low_us != 0) {
    c.t_low_ns = config_.t_low_us * kNs;
    c.t_high_ns = config_.t_high_us * kNs;
    c.base_rtt_ns = std::min(c.base_rtt_ns, std::max<uint64_t>(c.t_low_ns / 4, 1));  // t_low = 4 x base
    c.rtt_sample_min_ns = std::min(c.rtt_sample_min_ns, c.base_rtt_ns / 4);
  }
  return c;
}

void CongestionGate::OnConnected(uint32_t session, uint64_t rtt_us, size_t window_bytes,
                                 uint64_t /*now_us*/) {
  const uint64_t floor_ns =
      static_cast<uint64_t>(static_cast<double>(window_bytes) * config_.size_ns_per_byte_max);
  State* s = sessions_.Find(session);
  if (s == nullptr) {
    s = sessions_.Insert(session, std::make_unique<State>(TimelyFor(rtt_us, floor_ns)));
  } else {
    if (s->congested) --stats_.congested_sessions;
    *s = State(TimelyFor(rtt_us, floor_ns));
  }
  const uint64_t path_ns =
      (rtt_us == 0 ? config_.default_rtt_us : std::min(rtt_us, config_.derived_rtt_max_us)) * kNs;
  s->min_rtt_ns = path_ns;
  s->min_small_rtt_ns = path_ns;
  s->base_floor_ns = floor_ns;
}

void CongestionGate::OnClosed(uint32_t session) {
  const State* s = sessions_.Find(session);
  if (s == nullptr) return;
  if (s->congested) --stats_.congested_sessions;
  sessions_.Erase(session);  // a wheel entry it may have is skipped when reaped
}

void CongestionGate::Track(State* s) {
  const bool congested = !s->timely.uncongested();
  if (congested == s->congested) return;
  s->congested = congested;
  if (congested) {
    ++stats_.congested_sessions;
  } else {
    --stats_.congested_sessions;
  }
}

bool CongestionGate::MaySend(uint32_t session, size_t bytes, uint64_t now_us) {
  if (!config_.enabled) return true;
  State* found = sessions_.Find(session);
  if (found == nullptr) return true;
  State& s = *found;
  if (s.waiting) {
    ++stats_.deferrals;
    return false;
  }
  if (s.timely.uncongested()) {
    ++stats_.bypassed_sends;
    return true;
  }
  const uint64_t now_ns = now_us * kNs;
  // The session's next transmit time; Schedule() advances it only when we admit.
  // The wheel releases a session up to one slot before its time: admit within that slot.
  const uint64_t next_free = s.pacer.next_free_ns();
  if (next_free <= now_ns + config_.wheel_slot_us * kNs) {
    s.pacer.Schedule(now_ns, bytes, s.timely.rate_bytes_per_s(), config_.burst_us * kNs);
    ++stats_.paced_sends;
    return true;
  }
  ++stats_.deferrals;
  Advance(now_us);
  switch (wheel_.Insert(next_free, session)) {
    case cc::WheelInsertStatus::kFull:
      // Cannot happen with one entry per session; fail open rather than stall a session.
      ++stats_.wheel_full;
      s.pacer.Schedule(now_ns, bytes, s.timely.rate_bytes_per_s(), config_.burst_us * kNs);
      return true;
    case cc::WheelInsertStatus::kOk:
    case cc::WheelInsertStatus::kClampedToHorizon:
      break;
  }
  ++stats_.wheel_inserts;
  s.waiting = true;
  return false;
}

void CongestionGate::OnRttSample(uint32_t session, uint64_t rtt_us, size_t bytes,
                                 uint64_t now_us) {
  State* found = sessions_.Find(session);
  if (found == nullptr) return;
  State& s = *found;
  uint64_t rtt_ns = rtt_us * kNs;
  if (bytes <= kSmallBytes) {
    if (s.min_small_rtt_ns == 0 || rtt_ns < s.min_small_rtt_ns) s.min_small_rtt_ns = rtt_ns;
  } else {
    if (s.min_large_rtt_ns == 0 || rtt_ns < s.min_large_rtt_ns) {
      s.min_large_rtt_ns = rtt_ns;
      s.large_bytes = bytes;
    }
    // Remove the size-dependent part: (min large RTT - min small RTT) scaled to this packet's
    // bytes. Only raw samples feed these minima, so the correction cannot feed on itself.
    const uint64_t base = s.min_small_rtt_ns;
    if (s.min_large_rtt_ns > base) {
      const double per_byte = std::min(static_cast<double>(s.min_large_rtt_ns - base) /
                                           static_cast<double>(s.large_bytes),
                                       config_.size_ns_per_byte_max);
      const uint64_t size_ns = static_cast<uint64_t>(per_byte * static_cast<double>(bytes));
      // Never below the small-packet minimum: a per-byte cost estimated from a short "large"
      // packet overstates it for a full one.
      rtt_ns = std::max(rtt_ns > size_ns ? rtt_ns - size_ns : 0,
                        std::min(rtt_ns, s.min_small_rtt_ns));
    }
  }
  if (s.min_rtt_ns == 0 || rtt_ns < s.min_rtt_ns) s.min_rtt_ns = rtt_ns;
  const uint64_t base_ns = std::max(s.min_rtt_ns, s.base_floor_ns);
  if (config_.t_low_us == 0 && 2 * base_ns < s.timely.config().base_rtt_ns) {
    s.timely.Rebase(base_ns);
    ++stats_.rebases;
  }
  const uint64_t updates = s.timely.updates();
  const uint64_t bypassed = s.timely.bypassed_samples();
  s.timely.OnRttSample(now_us * kNs, rtt_ns);
  stats_.rate_updates += s.timely.updates() - updates;
  stats_.bypassed_samples += s.timely.bypassed_samples() - bypassed;
  Track(&s);
}

void CongestionGate::OnLoss(uint32_t session, uint64_t now_us) {
  if (!config_.enabled) return;
  State* found = sessions_.Find(session);
  if (found == nullptr) return;
  ++stats_.losses;
  // Only a loss that comes with queueing (the latest RTT above t_low) is taken as congestion: a
  // packet lost on an idle path (corruption, a random drop) says nothing about the rate.
  State& s = *found;
  if (s.timely.last_rtt_ns() <= s.timely.config().t_low_ns) return;
  s.timely.OnLoss(now_us * kNs);
  ++stats_.rate_updates;
  ++stats_.loss_decreases;
  Track(&s);
}

void CongestionGate::Advance(uint64_t now_us) {
  reaped_.clear();
  wheel_.Reap(now_us * kNs, reaped_);
  for (const cc::WheelEntry& e : reaped_) {
    const uint32_t session = static_cast<uint32_t>(e.payload);
    State* s = sessions_.Find(session);
    if (s == nullptr || !s->waiting) continue;  // closed since
    s->waiting = false;
    due_.push_back(session);
  }
}

void CongestionGate::TakeDue(uint64_t now_us, std::vector<uint32_t>* out) {
  if (!wheel_.empty()) Advance(now_us);
  out->insert(out->end(), due_.begin(), due_.end());
  due_.clear();
}

uint64_t CongestionGate::NextDueUs() const {
  if (!due_.empty()) return 0;  // released while inserting: kick at the next turn
  const uint64_t due_ns = wheel_.NextDueNs();
  return due_ns == std::numeric_limits<uint64_t>::max() ? due_ns : (due_ns + kNs - 1) / kNs;
}

size_t CongestionGate::BytesPerSession() const {
  // The state in 16-byte allocator granules (plus malloc's 8-byte header), its share of the
  // table, and the wheel's entry (one per session: 24 bytes).
  const size_t state = (sizeof(State) + 8 + 15) & ~size_t{15};
  return state + sessions_.TableBytes() / std::max<size_t>(sessions_.size(), 1) + 24;
}

void CongestionGate::PrefetchState(uint32_t session) const {
  const State* s = sessions_.Find(session);
  if (s != nullptr) __builtin_prefetch(s);
}

bool CongestionGate::Session(uint32_t session, SessionCongestion* out) const {
  const State* found = sessions_.Find(session);
  if (found == nullptr) return false;
  const State& s = *found;
  out->rate_bytes_per_s = s.timely.rate_bytes_per_s();
  out->last_rtt_us = s.timely.last_rtt_ns() / kNs;
  out->min_rtt_us = s.min_rtt_ns / kNs;
  out->t_low_us = s.timely.config().t_low_ns / kNs;
  out->t_high_us = s.timely.config().t_high_ns / kNs;
  out->waiting = s.waiting;
  return true;
}

}  // namespace squall::transport
