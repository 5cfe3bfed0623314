#include "cc/timely.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace squall::cc {

namespace {
void Require(bool condition, const char* why) {
  // Limits and contracts stay checked in production (house style); a bad config is a
  // programmer error caught at construction.
  if (!condition) {
    std::fprintf(stderr, "squall cc: %s\n", why);
    std::abort();
  }
}
}  // namespace

TimelyConfig TimelyConfig::FromMeasuredRtt(uint64_t base_rtt_ns, double rate_max_bytes_per_s) {
  TimelyConfig config;
  config.base_rtt_ns = std::max<uint64_t>(base_rtt_ns, 1'000);
  config.t_low_ns = 4 * config.base_rtt_ns;
  config.t_high_ns = 40 * config.base_rtt_ns;
  config.rtt_sample_min_ns = config.base_rtt_ns / 4;
  config.rate_max_bytes_per_s = rate_max_bytes_per_s;
  config.rate_min_bytes_per_s = std::min(15e6, rate_max_bytes_per_s / 4);
  config.add_rate_bytes_per_s = rate_max_bytes_per_s / 256;
  return config;
}

bool TimelyConfig::Valid() const {
  return rate_min_bytes_per_s > 0 && rate_max_bytes_per_s >= rate_min_bytes_per_s &&
         base_rtt_ns > 0 && t_low_ns >= base_rtt_ns && t_high_ns > t_low_ns &&
         add_rate_bytes_per_s > 0 && ewma_alpha > 0 && ewma_alpha <= 1 && beta > 0 &&
         beta < 1 && hai_threshold > 0;
}

Timely::Timely(const TimelyConfig& config)
    : config_(config), rate_bytes_per_s_(config.rate_max_bytes_per_s) {
  Require(config.Valid(), "invalid Timely configuration (see TimelyConfig::Valid)");
}

void Timely::OnRttSample(uint64_t now_ns, uint64_t rtt_ns) {
  if (rtt_ns < config_.rtt_sample_min_ns) {
    ++ignored_samples_;
    return;
  }
  last_rtt_ns_ = rtt_ns;
  if (config_.bypass_when_uncongested && uncongested() && rtt_ns <= config_.t_low_ns) {
    // The common case: nothing to compute. Forget the gradient history so a later congestion
    // episode starts from fresh samples rather than a stale difference.
    ++bypassed_samples_;
    have_prev_rtt_ = false;
    avg_rtt_diff_ns_ = 0;
    last_update_ns_ = now_ns;
    return;
  }
  ++updates_;
  const double base_rtt = static_cast<double>(config_.base_rtt_ns);
  // Scale steps by the time since the last update, in base RTTs (capped at 1), so that a
  // session with many samples per RTT does not react many times to one RTT's worth of signal.
  const double since_update = now_ns > last_update_ns_
                                  ? static_cast<double>(now_ns - last_update_ns_) : 0.0;
  const double delta_factor = std::min(since_update / base_rtt, 1.0);
  last_update_ns_ = now_ns;
  const double rtt = static_cast<double>(rtt_ns);
  const double rtt_diff = have_prev_rtt_ ? rtt - static_cast<double>(prev_rtt_ns_) : 0.0;
  prev_rtt_ns_ = rtt_ns;
  have_prev_rtt_ = true;
  avg_rtt_diff_ns_ = (1 - config_.ewma_alpha) * avg_rtt_diff_ns_ + config_.ewma_alpha * rtt_diff;
  const double gradient = avg_rtt_diff_ns_ / base_rtt;  // normalised by the base RTT
  const double rate = rate_bytes_per_s_;
  double new_rate;
  if (rtt_ns < config_.t_low_ns) {
    new_rate = rate + config_.add_rate_bytes_per_s * delta_factor;
    negative_gradient_count_ = 0;
  } else if (rtt_ns > config_.t_high_ns) {
    const double t_high = static_cast<double>(config_.t_high_ns);
    new_rate = rate * (1 - config_.beta * delta_factor * (1 - t_high / rtt));
    negative_gradient_count_ = 0;
  } else if (gradient <= 0) {
    ++negative_gradient_count_;
    const double steps = negative_gradient_count_ >= config_.hai_threshold ? 5.0 : 1.0;
    new_rate = rate + steps * config_.add_rate_bytes_per_s * delta_factor;
  } else {
    negative_gradient_count_ = 0;
    new_rate = rate * (1 - config_.beta * delta_factor * std::min(gradient, 1.0));
  }
  // eRPC's clamps: never halve in one step, never above the max, never below the floor.
  new_rate = std::max(new_rate, rate * 0.5);
  rate_bytes_per_s_ =
      std::max(std::min(new_rate, config_.rate_max_bytes_per_s), config_.rate_min_bytes_per_s);
}

void Timely::Rebase(uint64_t base_rtt_ns) {
  if (base_rtt_ns == 0 || base_rtt_ns >= config_.base_rtt_ns) return;
  const double ratio = static_cast<double>(base_rtt_ns) / static_cast<double>(config_.base_rtt_ns);
  auto scale = [ratio](uint64_t v) {
    return std::max<uint64_t>(1, static_cast<uint64_t>(static_cast<double>(v) * ratio));
  };
  config_.base_rtt_ns = base_rtt_ns;
  config_.t_low_ns = std::max(scale(config_.t_low_ns), base_rtt_ns);
  config_.t_high_ns = std::max(scale(config_.t_high_ns), config_.t_low_ns + 1);
  config_.rtt_sample_min_ns = scale(config_.rtt_sample_min_ns);
}

void Timely::OnLoss(uint64_t now_ns) {
  rate_bytes_per_s_ = std::max(rate_bytes_per_s_ / 2, config_.rate_min_bytes_per_s);
  negative_gradient_count_ = 0;
  last_update_ns_ = now_ns;
  ++updates_;
}

uint64_t Pacer::Schedule(uint64_t now_ns, uint64_t packet_bytes, double rate_bytes_per_s,
                         uint64_t burst_ns) {
  Require(rate_bytes_per_s > 0, "pacing rate is positive");
  const double gap_ns = static_cast<double>(packet_bytes) * 1e9 / rate_bytes_per_s;
  // Kept in double so sub-nanosecond gaps do not truncate and drift the rate over a burst.
  const double earliest = static_cast<double>(now_ns) - static_cast<double>(std::min(burst_ns, now_ns));
  const double desired = std::max(next_free_ns_, earliest);
  next_free_ns_ = desired + gap_ns;
  return static_cast<uint64_t>(desired);
}

}  // namespace squall::cc
