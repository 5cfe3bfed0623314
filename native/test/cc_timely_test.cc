// Timely on synthetic RTT series: falls on rising RTT, recovers when it falls, never below the
// floor, bypasses the common case, and uses thresholds derived from the measured base RTT.
#include <vector>

#include "cc/timely.h"
#include "test.h"

using namespace squall::cc;

namespace {
constexpr uint64_t kBaseRttNs = 50'000;  // loopback with blocking sockets on these VMs
constexpr double kMaxRate = 1.25e9;

// Feeds samples spaced one base RTT apart starting at *now_ns; returns the rates after each.
std::vector<double> Feed(Timely& timely, uint64_t& now_ns, const std::vector<uint64_t>& rtts) {
  std::vector<double> rates;
  for (uint64_t rtt : rtts) {
    now_ns += kBaseRttNs;
    timely.OnRttSample(now_ns, rtt);
    rates.push_back(timely.rate_bytes_per_s());
  }
  return rates;
}
}  // namespace

// Proves: thresholds come from the measured RTT, not eRPC's constants, and an RTT of 60 µs
// (above eRPC's 50 µs t_low, the collapse seen on this machine) leaves the rate at the max.
TEST(cc_timely_thresholds_from_measured_rtt) {
  const TimelyConfig config = TimelyConfig::FromMeasuredRtt(kBaseRttNs, kMaxRate);
  CHECK(config.Valid());
  CHECK_EQ(config.t_low_ns, 4 * kBaseRttNs);
  CHECK_EQ(config.t_high_ns, 40 * kBaseRttNs);
  Timely timely(config);
  uint64_t now_ns = 0;
  std::vector<uint64_t> rtts(1000, 60'000);
  Feed(timely, now_ns, rtts);
  CHECK(timely.rate_bytes_per_s() == kMaxRate);
  CHECK(timely.uncongested());
  // Every one of these was the common case: no rate computation at all.
  CHECK_EQ(timely.bypassed_samples(), uint64_t{1000});
  CHECK_EQ(timely.updates(), uint64_t{0});
}

// Proves: a steadily rising RTT (queue building) lowers the rate monotonically, and a falling
// RTT afterwards brings it back up to the maximum.
TEST(cc_timely_falls_on_rising_rtt_and_recovers) {
  Timely timely(TimelyConfig::FromMeasuredRtt(kBaseRttNs, kMaxRate));
  uint64_t now_ns = 0;
  std::vector<uint64_t> rising;
  for (uint64_t i = 0; i < 40; ++i) rising.push_back(250'000 + i * 20'000);  // 250 µs .. 1030 µs
  const std::vector<double> falling_rates = Feed(timely, now_ns, rising);
  for (size_t i = 2; i < falling_rates.size(); ++i) CHECK(falling_rates[i] <= falling_rates[i - 1]);
  const double congested_rate = timely.rate_bytes_per_s();
  CHECK(congested_rate < kMaxRate / 4);
  CHECK(!timely.uncongested());
  CHECK(timely.updates() > 0);

  // The queue drains: RTT falls back to the base, then stays there.
  std::vector<uint64_t> draining;
  for (uint64_t i = 0; i < 40; ++i) draining.push_back(1'030'000 - i * 24'000);
  const std::vector<double> draining_rates = Feed(timely, now_ns, draining);
  CHECK(draining_rates.back() > congested_rate);
  std::vector<uint64_t> calm(2000, kBaseRttNs);
  Feed(timely, now_ns, calm);
  CHECK(timely.rate_bytes_per_s() == kMaxRate);
  CHECK(timely.uncongested());
}

// Proves: RTTs far above t_high for a long time drive the rate down to the floor and never
// below it; no single step more than halves the rate.
TEST(cc_timely_never_below_floor) {
  const TimelyConfig config = TimelyConfig::FromMeasuredRtt(kBaseRttNs, kMaxRate);
  Timely timely(config);
  uint64_t now_ns = 0;
  std::vector<uint64_t> terrible(5000, 50 * config.t_high_ns);
  double previous = timely.rate_bytes_per_s();
  bool halved_at_most = true;
  bool above_floor = true;
  for (uint64_t rtt : terrible) {
    now_ns += kBaseRttNs;
    timely.OnRttSample(now_ns, rtt);
    halved_at_most = halved_at_most && timely.rate_bytes_per_s() >= previous * 0.5;
    above_floor = above_floor && timely.rate_bytes_per_s() >= config.rate_min_bytes_per_s;
    previous = timely.rate_bytes_per_s();
  }
  CHECK(halved_at_most);
  CHECK(above_floor);
  CHECK(timely.rate_bytes_per_s() == config.rate_min_bytes_per_s);
}

// Proves: a gradient between the thresholds decides: flat RTT in the band increases the rate,
// rising RTT in the band decreases it; samples below the minimum are ignored.
TEST(cc_timely_gradient_band_and_ignored_samples) {
  const TimelyConfig config = TimelyConfig::FromMeasuredRtt(kBaseRttNs, kMaxRate);
  Timely timely(config);
  uint64_t now_ns = 0;
  // Push the rate down first with a high RTT.
  Feed(timely, now_ns, std::vector<uint64_t>(30, 3 * config.t_high_ns));
  const double low = timely.rate_bytes_per_s();
  // Flat RTT inside (t_low, t_high): gradient zero, so additive (then hyper) increase.
  Feed(timely, now_ns, std::vector<uint64_t>(20, 5 * kBaseRttNs));
  const double after_flat = timely.rate_bytes_per_s();
  CHECK(after_flat > low);
  // Rising RTT inside the band: decrease.
  std::vector<uint64_t> rising;
  for (uint64_t i = 0; i < 10; ++i) rising.push_back(5 * kBaseRttNs + i * kBaseRttNs);
  Feed(timely, now_ns, rising);
  CHECK(timely.rate_bytes_per_s() < after_flat);
  const double before_ignored = timely.rate_bytes_per_s();
  Feed(timely, now_ns, std::vector<uint64_t>(10, config.rtt_sample_min_ns - 1));
  CHECK(timely.rate_bytes_per_s() == before_ignored);
  CHECK_EQ(timely.ignored_samples(), uint64_t{10});
}

// Proves: the pacer spaces packets by size / rate and gives an idle session no burst credit.
TEST(cc_pacer_spacing) {
  Pacer pacer;
  const double rate = 1e8;  // 100 MB/s: 1000 bytes every 10 µs
  CHECK_EQ(pacer.Schedule(1'000'000, 1000, rate), uint64_t{1'000'000});
  CHECK_EQ(pacer.Schedule(1'000'000, 1000, rate), uint64_t{1'010'000});
  CHECK_EQ(pacer.Schedule(1'000'500, 1000, rate), uint64_t{1'020'000});
  // Idle for a long time: the next packet goes at now, not in a burst of "saved" slots.
  CHECK_EQ(pacer.Schedule(5'000'000, 1000, rate), uint64_t{5'000'000});
  CHECK_EQ(pacer.Schedule(5'000'000, 1000, rate), uint64_t{5'010'000});
}

// Proves: many samples inside one base RTT do not multiply the reaction: 100 samples spaced
// base/100 apart cut the rate about as much as a single sample one base RTT later.
TEST(cc_timely_reaction_scaled_by_time_since_update) {
  const TimelyConfig config = TimelyConfig::FromMeasuredRtt(kBaseRttNs, kMaxRate);
  Timely dense(config);
  Timely sparse(config);
  uint64_t now_ns = 1'000'000;
  // Both start with one congested sample far above t_high.
  dense.OnRttSample(now_ns, 3 * config.t_high_ns);
  sparse.OnRttSample(now_ns, 3 * config.t_high_ns);
  for (int i = 1; i <= 100; ++i) {
    dense.OnRttSample(now_ns + static_cast<uint64_t>(i) * kBaseRttNs / 100, 3 * config.t_high_ns);
  }
  sparse.OnRttSample(now_ns + kBaseRttNs, 3 * config.t_high_ns);
  const double ratio = dense.rate_bytes_per_s() / sparse.rate_bytes_per_s();
  CHECK(ratio > 0.8 && ratio < 1.25);
  CHECK(dense.rate_bytes_per_s() < kMaxRate);
}
