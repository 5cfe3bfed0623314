#pragma once
// The SendGate that runs Timely per client session with one timing wheel per endpoint
// (native/src/cc/README.md, eRPC §3): the transport's congestion control.
//
// Per session: a Timely rate, a Pacer (next transmit time), the minimum RTT seen, and whether
// the session waits in the wheel. MaySend:
//   - bypass: while the session is uncongested (at its maximum rate) and not waiting, admit at
//     once, with no pacing arithmetic (eRPC's kCcOptWheelBypass);
//   - otherwise pace: admit if the session's next transmit time has come (advancing it by
//     bytes / rate), else put the session in the wheel at that time and refuse. The core stops
//     sending for the session; TakeDue() hands it back when its slot is reaped, and the core
//     kicks it. The wheel holds one entry per waiting session (not per packet), so its pool is
//     bounded by the sessions, and an idle or uncongested session costs the wheel nothing.
// Rates move only on RTT samples (OnRttSample); an uncongested sample below t_low is counted
// and skipped (Timely's own bypass).
//
// Thresholds: unless configured, each session derives them from its measured path RTT
// (TimelyConfig::FromMeasuredRtt on the handshake round trip), and scales them down when a
// later sample shows the path is faster (a handshake timed in a connect storm). The base RTT
// is never below the time the session's own full window (credits x packet size) takes to
// drain at size_ns_per_byte_max: with 64 KB packets the window is ~2 MB, and a lone session
// that fills it queues behind itself for ~2 ms (more on a busy VM). Thresholds below that --
// from a small packet's tens of µs -- ratchet every large transfer down (measured: 900 MB/s
// fell to 300 MB/s in eight 8 MiB calls), the collapse the issue warns of. The congestion that
// matters, many sessions' windows at one receiver, still shows as RTTs far above t_low.
//
// Packet size: on kernel UDP a 64 KB datagram's round trip includes copying it through the
// kernel (~50-100 µs here), several times a small packet's RTT. Thresholds derived from small
// packets would call every large packet congested (eRPC's collapse to the floor, NOTES.md). So
// each session also keeps the smallest RTT of a large packet and its size, and subtracts that
// per-byte excess (min large RTT - base RTT, in proportion to the sample's bytes) from every
// sample before Timely sees it: the rate reacts to queueing, not to size.
//
// Pure: no clock, no I/O; time is the core's microseconds.
#include <cstdint>
#include <vector>

#include "cc/timely.h"
#include "cc/timing_wheel.h"
#include "transport/endpoint.h"
#include "transport/session_table.h"

namespace squall::transport {

// Packets up to this payload count as small (their RTT is the path's base RTT).
constexpr size_t kSmallBytes = 1024;

struct CongestionConfig {
  bool enabled = true;
  // A session's ceiling and starting rate. Uncongested sessions run here and bypass pacing.
  double rate_max_bytes_per_s = 5e9;
  // The floor. eRPC's 15 MB/s assumes a receiver that drains at NIC speed; a kernel-UDP
  // receiver on a shared core may drain a few hundred MB/s, so a 50-way incast needs a floor
  // well below that / 50. 0: derived (min(15 MB/s, max / 4)).
  double rate_min_bytes_per_s = 2e6;
  // 0: derived per session (t_low = 4 x base, t_high = 40 x base, base = the larger of the
  // measured path RTT and the window's drain time; see above). Set both to fix the thresholds
  // (e.g. eRPC's 50 µs / 1 ms); the base RTT is then t_low / 4.
  uint64_t t_low_us = 0;
  uint64_t t_high_us = 0;
  // RTT assumed when a session's handshake could not be timed (it was retried).
  uint64_t default_rtt_us = 100;
  // A handshake RTT above this is taken as this when deriving thresholds: sessions opened in a
  // burst (a connect storm, a busy event loop) time their handshakes in milliseconds, and
  // thresholds derived from that would never see congestion. Later uncongested samples lower
  // the base further (rebase). Paths really slower than this should set t_low/t_high.
  uint64_t derived_rtt_max_us = 250;
  // After a late wakeup a paced session may catch up on this much of its schedule at once: the
  // event loop's timers tick in milliseconds (libuv), so strict spacing would cap a paced
  // session at one packet per tick.
  uint64_t burst_us = 1'000;
  // The most of a large packet's RTT that may be put down to its size rather than to queueing,
  // per byte (1 ns/byte = carrying it at 1 GB/s). Bounds the correction when a session's first
  // large packets were already queued (an incast), so queueing is not mistaken for size.
  double size_ns_per_byte_max = 1.0;
  // Wheel: slot width and count (horizon = width x count must cover credits x packet bytes /
  // rate_min; later entries are clamped to the horizon and simply re-checked when released).
  uint64_t wheel_slot_us = 2;
  uint32_t wheel_slots = 8192;
};

// Empty if usable, else what is wrong (names the config key's meaning).
std::string ValidateCongestionConfig(const CongestionConfig& config);

struct CongestionStats {
  uint64_t bypassed_sends = 0;   // admitted on the uncongested fast path
  uint64_t paced_sends = 0;      // admitted by the pacer
  uint64_t deferrals = 0;        // refused: the session went into the wheel
  uint64_t wheel_inserts = 0;
  uint64_t wheel_full = 0;       // wheel pool exhausted: admitted instead (fail open)
  uint64_t rate_updates = 0;     // samples that ran the Timely computation
  uint64_t bypassed_samples = 0; // uncongested samples below t_low (skipped)
  uint64_t rebases = 0;          // thresholds scaled down to a faster measured path
  uint64_t losses = 0;           // fast retransmits reported
  uint64_t loss_decreases = 0;   // of those, with the RTT above t_low: the rate was halved
  uint64_t congested_sessions = 0;  // sessions currently below their maximum rate
};

struct SessionCongestion {
  double rate_bytes_per_s = 0;
  uint64_t last_rtt_us = 0;
  uint64_t min_rtt_us = 0;
  uint64_t t_low_us = 0;
  uint64_t t_high_us = 0;
  bool waiting = false;
};

class CongestionGate final : public SendGate {
 public:
  CongestionGate(const CongestionConfig& config, uint32_t sessions_max, uint64_t now_us);

  bool MaySend(uint32_t session, size_t bytes, uint64_t now_us) override;
  void OnConnected(uint32_t session, uint64_t rtt_us, size_t window_bytes,
                   uint64_t now_us) override;
  void OnRttSample(uint32_t session, uint64_t rtt_us, size_t bytes, uint64_t now_us) override;
  void OnLoss(uint32_t session, uint64_t now_us) override;
  void OnClosed(uint32_t session) override;
  void TakeDue(uint64_t now_us, std::vector<uint32_t>* sessions) override;
  uint64_t NextDueUs() const override;
  size_t BytesPerSession() const override;
  void PrefetchEntry(uint32_t session) const override { sessions_.Prefetch(session); }
  void PrefetchState(uint32_t session) const override;

  // False if the session is unknown (not a connected client session).
  bool Session(uint32_t session, SessionCongestion* out) const;
  const CongestionStats& stats() const { return stats_; }
  const CongestionConfig& config() const { return config_; }
  size_t waiting() const { return wheel_.size(); }

 private:
  struct State {
    explicit State(const cc::TimelyConfig& c) : timely(c) {}
    cc::Timely timely;
    cc::Pacer pacer;
    uint64_t min_rtt_ns = 0;        // smallest (size-adjusted) RTT: the path's base RTT
    uint64_t min_small_rtt_ns = 0;  // smallest RTT of a small packet (handshake included)
    uint64_t base_floor_ns = 0;     // the session's own window, drained at 1 ns/byte
    uint64_t min_large_rtt_ns = 0;  // smallest RTT of a packet above kSmallBytes ...
    size_t large_bytes = 0;         // ... and that packet's size
    bool waiting = false;  // has an entry in the wheel
    bool congested = false;  // counted in stats_.congested_sessions
  };
  cc::TimelyConfig TimelyFor(uint64_t rtt_us, uint64_t base_floor_ns) const;
  void Track(State* state);
  // Releases due wheel entries into due_ (the wheel must be caught up before an insert, or a
  // time beyond its stale horizon would be clamped short).
  void Advance(uint64_t now_us);

  CongestionConfig config_;
  cc::TimingWheel wheel_;
  // By session number: one flat table line, then the state (session_table.h), so a batch can
  // load both ahead (PrefetchEntry / PrefetchState); a std::unordered_map cost a bucket and a
  // node miss per packet with 20,000 sessions.
  SessionTable<State> sessions_;
  std::vector<cc::WheelEntry> reaped_;
  std::vector<uint32_t> due_;  // released, not yet handed out by TakeDue
  CongestionStats stats_;
};

}  // namespace squall::transport
