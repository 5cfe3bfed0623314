#pragma once
// Timely congestion control (Mittal et al., SIGCOMM'15) per client session, as eRPC runs it
// (research/erpc.md §3.1), with one change that matters on kernel UDP: the thresholds are not
// eRPC's datacenter constants (t_low 50 µs, t_high 1 ms, which throttle large transfers to
// ~10 MB/s on this machine's 45-80 µs loopback RTT) but multiples of a base RTT measured on the
// path. Pure: no clock, no I/O; time arrives as nanoseconds on the caller's monotonic clock.
#include <cstdint>

namespace squall::cc {

struct TimelyConfig {
  // The session's ceiling and starting rate ("link bandwidth" in eRPC). On kernel UDP this is a
  // configured per-session maximum, not a NIC speed.
  double rate_max_bytes_per_s = 1.25e9;
  // Floor: the rate never goes below this (eRPC: 15 MB/s).
  double rate_min_bytes_per_s = 15e6;
  // Uncongested RTT of the path, measured (minimum of a few idle pings at connect).
  uint64_t base_rtt_ns = 50'000;
  // Below t_low: additive increase. Above t_high: multiplicative decrease whatever the gradient.
  // Between: the gradient decides.
  uint64_t t_low_ns = 200'000;
  uint64_t t_high_ns = 2'000'000;
  // Samples below this are not RTTs (e.g. a response to an earlier transmission after a
  // retransmission); they are ignored.
  uint64_t rtt_sample_min_ns = 12'500;
  double add_rate_bytes_per_s = 5e6;  // additive step δ (eRPC: 5 MB/s)
  double ewma_alpha = 0.46;           // RTT-difference smoothing (eRPC, Timely paper)
  double beta = 0.26;                 // multiplicative decrease factor (eRPC)
  uint32_t hai_threshold = 5;         // consecutive non-positive gradients before 5x increase
  // Skip the rate computation when uncongested (rate at max) and the RTT is below t_low:
  // eRPC's kCcOptTimelyBypass, the common case.
  bool bypass_when_uncongested = true;

  // Defaults derived from a measured base RTT: t_low = 4 x base (room for the kernel's own
  // scheduling jitter, which on these VMs is of the order of the base RTT itself), t_high =
  // 40 x base (eRPC's t_high / t_low ratio is 20; we keep 10 like the Timely paper), δ = max /
  // 256 so recovery from the floor to the max takes ~50 RTTs with hyper-increase.
  static TimelyConfig FromMeasuredRtt(uint64_t base_rtt_ns, double rate_max_bytes_per_s);
  // True if the configuration is usable (positive, ordered thresholds and rates).
  bool Valid() const;
};

class Timely {
 public:
  explicit Timely(const TimelyConfig& config);

  // Feeds one RTT sample taken at now_ns. Adjusts the rate unless bypassed or ignored.
  void OnRttSample(uint64_t now_ns, uint64_t rtt_ns);

  double rate_bytes_per_s() const { return rate_bytes_per_s_; }
  // True while the session runs at its maximum rate: its packets may skip the rate limiter
  // (if none of its packets is waiting in the wheel, to keep order).
  bool uncongested() const { return rate_bytes_per_s_ >= config_.rate_max_bytes_per_s; }
  uint64_t last_rtt_ns() const { return last_rtt_ns_; }
  const TimelyConfig& config() const { return config_; }
  // The path turned out faster than the base RTT the thresholds were derived from: scale
  // base, t_low, t_high and the sample floor down by new / old (never up). For sessions whose
  // first RTT was measured under load (a connect storm), so their thresholds come down to the
  // path's real RTT once an uncongested sample shows it.
  void Rebase(uint64_t base_rtt_ns);
  // A packet of this session was lost (the transport's fast retransmit saw the gap): halve the
  // rate, not below the floor, as TCP does on three duplicate ACKs. Timely itself only sees
  // delay; without this a sender whose loss came from an overflowing queue would resend into it
  // at full rate.
  void OnLoss(uint64_t now_ns);

  // Stats (publish per session).
  uint64_t updates() const { return updates_; }
  uint64_t bypassed_samples() const { return bypassed_samples_; }
  uint64_t ignored_samples() const { return ignored_samples_; }

 private:
  TimelyConfig config_;
  double rate_bytes_per_s_;
  double avg_rtt_diff_ns_ = 0;
  uint64_t prev_rtt_ns_ = 0;
  uint64_t last_rtt_ns_ = 0;
  uint64_t last_update_ns_ = 0;
  bool have_prev_rtt_ = false;
  uint32_t negative_gradient_count_ = 0;
  uint64_t updates_ = 0;
  uint64_t bypassed_samples_ = 0;
  uint64_t ignored_samples_ = 0;
};

// Per-session transmit schedule for the rate limiter: packets are spaced by size / rate, and a
// session that was idle starts at now (no burst credit accumulates while idle). eRPC's
// Session::cc_getupdate_tx_tsc.
class Pacer {
 public:
  // Desired transmit time of the next packet of packet_bytes at rate. `burst_ns` lets a session
  // whose sender woke late (an event loop whose timers tick in milliseconds) catch up on at most
  // that much of its schedule, so the average rate holds; 0 = strict spacing, no catching up.
  uint64_t Schedule(uint64_t now_ns, uint64_t packet_bytes, double rate_bytes_per_s,
                    uint64_t burst_ns = 0);
  uint64_t next_free_ns() const { return static_cast<uint64_t>(next_free_ns_); }

 private:
  double next_free_ns_ = 0;
};

}  // namespace squall::cc
