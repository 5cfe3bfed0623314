// The transport under load, in virtual time: the congestion gate on its own (bypass, pacing,
// the wheel handing sessions back), an incast through a simulated bottleneck (one link into the
// server with a finite buffer, as a receive socket buffer is on one machine), 8 MiB transfers
// under injected loss, and 20,000 sessions on one endpoint.
#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <queue>

#include "test.h"
#include "transport/congestion_gate.h"
#include "transport_support.h"

using namespace squall::test;
using namespace squall::transport;

namespace {
unsigned long long U(uint64_t v) { return v; }
}  // namespace

TEST(cc_gate_bypasses_uncongested_sessions_and_paces_congested_ones) {
  CongestionConfig config;
  config.rate_max_bytes_per_s = 1e9;
  CongestionGate gate(config, 16, 0);
  gate.OnConnected(1, 50, 0, 0);  // thresholds from a 50 µs path: t_low 200 µs, t_high 2 ms
  SessionCongestion info;
  CHECK(gate.Session(1, &info));
  CHECK_EQ(info.t_low_us, 200u);
  CHECK_EQ(info.t_high_us, 2000u);
  // Uncongested: every packet admitted with no pacing, samples below t_low skipped.
  for (int i = 0; i < 100; ++i) CHECK(gate.MaySend(1, 10'000, 10));
  gate.OnRttSample(1, 60, 0, 100);
  CHECK_EQ(gate.stats().bypassed_sends, 100u);
  CHECK_EQ(gate.stats().bypassed_samples, 1u);
  CHECK_EQ(gate.stats().rate_updates, 0u);
  CHECK_EQ(gate.NextDueUs(), UINT64_MAX);
  // RTT far above t_high for a while: the rate falls (never below the floor).
  uint64_t now = 1000;
  for (int i = 0; i < 200; ++i, now += 100) gate.OnRttSample(1, 20'000, 0, now);
  CHECK(gate.Session(1, &info));
  CHECK(info.rate_bytes_per_s < 1e9 && info.rate_bytes_per_s >= config.rate_min_bytes_per_s);
  CHECK_EQ(gate.stats().congested_sessions, 1u);
  const double rate = info.rate_bytes_per_s;
  // Congested: packets are spaced by bytes / rate. 1 ms of schedule may be caught up at once
  // (burst), then the session waits in the wheel until its next transmit time.
  size_t admitted = 0;
  while (gate.MaySend(1, 10'000, now)) ++admitted;
  const double burst_packets = 1e-3 * rate / 10'000;
  CHECK(static_cast<double>(admitted) >= burst_packets && static_cast<double>(admitted) <= burst_packets + 2);
  CHECK(!gate.MaySend(1, 10'000, now));  // waiting: refused without touching the pacer
  CHECK_EQ(gate.waiting(), 1u);
  const uint64_t due = gate.NextDueUs();
  CHECK(due > now && due <= now + static_cast<uint64_t>(10'000 / rate * 1e6) + 3);
  std::vector<uint32_t> sessions;
  gate.TakeDue(due - 3, &sessions);
  CHECK(sessions.empty());
  gate.TakeDue(due, &sessions);
  CHECK(sessions.size() == 1 && sessions[0] == 1);
  CHECK(gate.MaySend(1, 10'000, due));
  // A closed session's wheel entry is skipped.
  CHECK(!gate.MaySend(1, 10'000, due));
  gate.OnClosed(1);
  sessions.clear();
  gate.TakeDue(due + 1'000'000, &sessions);
  CHECK(sessions.empty());
  CHECK_EQ(gate.stats().congested_sessions, 0u);
  CHECK(gate.MaySend(1, 10'000, due + 1'000'000));  // unknown session: not gated
}

TEST(cc_gate_halves_the_rate_on_a_loss_only_when_the_rtt_shows_queueing) {
  CongestionConfig config;
  config.rate_max_bytes_per_s = 1e9;
  config.rate_min_bytes_per_s = 100e6;
  CongestionGate gate(config, 16, 0);
  gate.OnConnected(1, 50, 0, 0);  // t_low 200 µs
  SessionCongestion info;
  // A loss on an idle path (last RTT 60 µs, below t_low): not congestion, the rate stays.
  gate.OnRttSample(1, 60, 0, 100);
  gate.OnLoss(1, 200);
  CHECK(gate.Session(1, &info));
  CHECK_EQ(info.rate_bytes_per_s, 1e9);
  CHECK_EQ(gate.stats().losses, 1u);
  CHECK_EQ(gate.stats().loss_decreases, 0u);
  // With the RTT above t_low, each loss halves the rate, down to the floor and no further.
  gate.OnRttSample(1, 500, 0, 300);
  const double before = gate.Session(1, &info) ? info.rate_bytes_per_s : 0;
  gate.OnLoss(1, 400);
  CHECK(gate.Session(1, &info));
  CHECK_EQ(info.rate_bytes_per_s, before / 2);
  CHECK_EQ(gate.stats().congested_sessions, 1u);
  for (int i = 0; i < 10; ++i) gate.OnLoss(1, 500);
  CHECK(gate.Session(1, &info));
  CHECK_EQ(info.rate_bytes_per_s, config.rate_min_bytes_per_s);
  CHECK_EQ(gate.stats().loss_decreases, 11u);
}

TEST(cc_gate_scales_thresholds_down_to_a_faster_path_unless_configured) {
  CongestionConfig config;
  CongestionGate gate(config, 4, 0);
  gate.OnConnected(1, 10'000, 0, 0);  // timed in a connect storm: 10 ms
  gate.OnConnected(2, 0, 0, 0);       // not timed: default RTT
  SessionCongestion info;
  CHECK(gate.Session(2, &info) && info.t_low_us == 4 * config.default_rtt_us);
  gate.OnRttSample(1, 40, 0, 10);
  CHECK(gate.Session(1, &info));
  CHECK_EQ(info.min_rtt_us, 40u);
  CHECK_EQ(info.t_low_us, 160u);
  CHECK_EQ(info.t_high_us, 1600u);
  CHECK_EQ(gate.stats().rebases, 1u);
  config.t_low_us = 50;
  config.t_high_us = 1000;  // eRPC's constants, fixed
  CongestionGate fixed(config, 4, 0);
  fixed.OnConnected(1, 10'000, 0, 0);
  fixed.OnRttSample(1, 40, 0, 10);
  CHECK(fixed.Session(1, &info) && info.t_low_us == 50 && info.t_high_us == 1000);
  CHECK(ValidateCongestionConfig(config).empty());
  config.t_high_us = 0;
  CHECK(!ValidateCongestionConfig(config).empty());
}

namespace {
// The first windows of an incast arrive before any RTT sample: only the buffer absorbs them.
constexpr uint64_t kFirstWindowsUs = 20'000;

// A network in virtual time with one bottleneck: every packet to the server crosses one link of
// `link_bytes_per_us` behind a FIFO of at most `buffer_bytes` (the server's receive socket
// buffer: a packet that does not fit is dropped, as the kernel does). Other packets only take
// the propagation delay.
class Bottleneck {
 public:
  struct Config {
    double link_bytes_per_us = 1000;  // 1 GB/s
    uint64_t propagation_us = 10;
    size_t buffer_bytes = 2u << 20;
  };
  class Port : public PacketIo {
   public:
    Port(Bottleneck* net, PeerAddress self) : net_(net), self_(self) {}
    void Send(const PeerAddress& to, std::span<const uint8_t> header,
              std::span<const uint8_t> payload) override {
      std::vector<uint8_t> bytes(header.begin(), header.end());
      bytes.insert(bytes.end(), payload.begin(), payload.end());
      net_->Push(self_, to, std::move(bytes));
    }

   private:
    Bottleneck* net_;
    PeerAddress self_;
  };

  Bottleneck(Config config, PeerAddress server) : config_(config), server_(server) {}
  void Attach(const PeerAddress& a, Endpoint* e) { endpoints_[a.ToString()] = e; }
  void Push(const PeerAddress& from, const PeerAddress& to, std::vector<uint8_t> bytes) {
    if (drop) {
      Header h;
      if (Decode(bytes, &h) == DecodeError::kNone && drop(h)) return;
    }
    InFlight p{0, seq_++, from, to, std::move(bytes), false};
    if (to == server_) {
      if (queued_bytes_ + p.bytes.size() > config_.buffer_bytes) {
        ++overflow_drops;
        if (now > kFirstWindowsUs) ++late_drops;
        return;
      }
      const double start = std::max(static_cast<double>(now), link_free_);
      link_free_ = start + static_cast<double>(p.bytes.size()) / config_.link_bytes_per_us;
      p.at = static_cast<uint64_t>(link_free_) + config_.propagation_us;
      p.queued = true;
      queued_bytes_ += p.bytes.size();
      max_queued_bytes = std::max(max_queued_bytes, queued_bytes_);
      ++to_server;
    } else {
      p.at = now + config_.propagation_us;
    }
    queue_.push(std::move(p));
  }
  uint64_t NextAt() const { return queue_.empty() ? UINT64_MAX : queue_.top().at; }
  void DeliverDue() {
    std::vector<InFlight> held;
    while (!queue_.empty() && queue_.top().at <= now) {
      InFlight p = queue_.top();
      queue_.pop();
      if (p.to == server_ && now < server_paused_until) {
        // The server process is descheduled: its packets wait in the socket buffer, in order.
        p.at = server_paused_until;
        held.push_back(std::move(p));
        continue;
      }
      if (p.queued) queued_bytes_ -= p.bytes.size();
      auto it = endpoints_.find(p.to.ToString());
      if (it != endpoints_.end()) it->second->OnPacket(p.from, p.bytes, now);
    }
    for (InFlight& p : held) queue_.push(std::move(p));
  }
  size_t queued_bytes() const { return queued_bytes_; }

  uint64_t now = 0;
  uint64_t server_paused_until = 0;  // the server receives nothing before then (a stall)
  std::function<bool(const Header&)> drop;  // injected loss: true drops the packet
  uint64_t overflow_drops = 0, to_server = 0;
  uint64_t late_drops = 0;  // after kFirstWindowsUs (the first windows)
  size_t max_queued_bytes = 0;

 private:
  struct InFlight {
    uint64_t at, seq;
    PeerAddress from, to;
    std::vector<uint8_t> bytes;
    bool queued;
    bool operator>(const InFlight& o) const { return at != o.at ? at > o.at : seq > o.seq; }
  };
  Config config_;
  PeerAddress server_;
  double link_free_ = 0;
  size_t queued_bytes_ = 0;
  uint64_t seq_ = 0;
  std::priority_queue<InFlight, std::vector<InFlight>, std::greater<InFlight>> queue_;
  std::map<std::string, Endpoint*> endpoints_;
};

// `clients` endpoints, one session each to one server, each running `calls` sequential calls of
// `request_bytes` (8-byte answers), over a Bottleneck; congestion control on or off.
struct Incast {
  struct Client {
    std::unique_ptr<Bottleneck::Port> port;
    std::unique_ptr<CongestionGate> gate;
    std::unique_ptr<Endpoint> endpoint;
    uint32_t session = 0;
    uint64_t started = 0, done = 0;
  };
  Bottleneck net;
  PeerAddress server_address = Addr("127.0.0.1:1");
  Bottleneck::Port server_port{&net, server_address};
  Endpoint server;
  std::vector<Client> clients;
  uint64_t handler_runs = 0, failures = 0;
  uint64_t queue_sum = 0, queue_samples = 0;  // bottleneck queue x µs, and the µs
  std::function<void()> on_step;  // called once per loop turn (fault injection at a time)

  Incast(size_t count, const EndpointConfig& config, bool cc, Bottleneck::Config link,
         const CongestionConfig& cc_config = {})
      : net(link, Addr("127.0.0.1:1")), server(config, &server_port), clients(count) {
    net.Attach(server_address, &server);
    server.SetHandled(3, true);
    for (size_t i = 0; i < count; ++i) {
      Client& c = clients[i];
      const PeerAddress a = Addr(("127.0.1." + std::to_string(i + 1) + ":1").c_str());
      c.port = std::make_unique<Bottleneck::Port>(&net, a);
      c.endpoint = std::make_unique<Endpoint>(config, c.port.get());
      if (cc) {
        c.gate = std::make_unique<CongestionGate>(cc_config, config.sessions_max, 0);
        c.endpoint->SetSendGate(c.gate.get());
      }
      net.Attach(a, c.endpoint.get());
      c.session = c.endpoint->Connect(server_address, 0);
    }
  }
  // Runs until every client finished `calls` calls; false if the virtual time budget ran out.
  bool Run(uint64_t calls, size_t request_bytes, uint64_t budget_us) {
    const std::vector<uint8_t> request(request_bytes, 7);
    const std::vector<uint8_t> ack(8, 1);
    std::vector<Event> events;
    while (net.now < budget_us) {
      if (on_step) on_step();
      net.DeliverDue();
      server.OnTimers(net.now);
      events.clear();
      server.TakeEvents(&events);
      for (Event& e : events) {
        if (e.kind != EventKind::kRequest) continue;
        ++handler_runs;
        if (e.bytes.size() != request_bytes) ++failures;
        server.Respond({e.session, e.slot, e.id}, CallStatus::kOk, ack, net.now);
      }
      bool all_done = true;
      for (Client& c : clients) {
        c.endpoint->OnTimers(net.now);
        events.clear();
        c.endpoint->TakeEvents(&events);
        for (Event& e : events) {
          if (e.kind == EventKind::kResponse) {
            if (e.code != 0 || e.bytes != ack) ++failures;
            ++c.done;
          }
        }
        if (c.started == c.done && c.started < calls &&
            c.endpoint->SessionIsConnected(c.session)) {
          ++c.started;
          if (c.endpoint->Call(c.session, 3, c.started, request, 0, net.now) != CallStatus::kOk) {
            ++failures;
          }
        }
        all_done = all_done && c.done == calls;
      }
      if (all_done) return true;
      uint64_t next = net.NextAt();
      next = std::min(next, server.NextTimerUs());
      for (Client& c : clients) next = std::min(next, c.endpoint->NextTimerUs());
      if (next == UINT64_MAX) return false;
      next = std::max(net.now + 1, next);
      if (net.now > kFirstWindowsUs) {  // past the first windows: weighted by time, not by turn
        queue_sum += net.queued_bytes() * (next - net.now);
        queue_samples += next - net.now;
      }
      net.now = next;
    }
    return false;
  }
  void PrintRtx(const char* label) const {
    uint64_t probes = 0, rollbacks = 0, fast = 0;
    for (const Client& c : clients) {
      probes += c.endpoint->stats().rto_probes;
      rollbacks += c.endpoint->stats().rollbacks;
      fast += c.endpoint->stats().fast_retransmits;
    }
    std::printf("  %s: probes %llu rollbacks %llu fast %llu\n", label, U(probes), U(rollbacks), U(fast));
  }
  uint64_t Retransmissions() const {
    uint64_t total = 0;
    for (const Client& c : clients) total += c.endpoint->stats().retransmissions;
    return total;
  }
};

EndpointConfig IncastConfig() {
  EndpointConfig config;
  config.packet_bytes_max = 8192;
  config.peer_failure_timeout_us = 60'000'000;
  config.connect_timeout_us = 60'000'000;
  return config;
}
}  // namespace

TEST(transport_incast_16_to_1_congestion_control_keeps_the_buffer_from_overflowing) {
  // 16 clients, 256 KiB requests (32 packets of 8 KiB, the whole credit window), into a 1 GB/s
  // link with a 2 MiB buffer. Without congestion control the 16 windows (4 MiB) keep the
  // buffer full and overflowing; with it, Timely holds the queue near its thresholds (t_high
  // 800 µs = 0.8 MB of queue here) and the only overflow is the first windows, before any RTT
  // sample. Thresholds are fixed as for a 20 µs path (4x / 40x): the default would derive them
  // from the window's drain time (see congestion_gate.h), which in this 1 GB/s model equals
  // the buffer, and this test is about the control loop.
  Bottleneck::Config link;
  CongestionConfig cc;
  cc.t_low_us = 80;
  cc.t_high_us = 800;
  Incast with(16, IncastConfig(), true, link, cc);
  CHECK(with.Run(40, 256 * 1024, 10'000'000));
  Incast without(16, IncastConfig(), false, link);
  CHECK(without.Run(40, 256 * 1024, 10'000'000));
  for (Incast* run : {&with, &without}) {
    CHECK_EQ(run->failures, 0u);
    CHECK_EQ(run->handler_runs, 16u * 40u);  // every request executed exactly once
  }
  with.PrintRtx("with"); without.PrintRtx("without");
  const double queue_with = static_cast<double>(with.queue_sum) / static_cast<double>(with.queue_samples);
  const double queue_without = static_cast<double>(without.queue_sum) / static_cast<double>(without.queue_samples);
  std::printf("  incast: late drops %llu vs %llu\n", U(with.net.late_drops), U(without.net.late_drops));
  std::printf("  incast: drops %llu vs %llu without cc, mean queue %.0f vs %.0f bytes, rtx %llu vs %llu, end %llu vs %llu us\n",
              static_cast<unsigned long long>(with.net.overflow_drops),
              static_cast<unsigned long long>(without.net.overflow_drops), queue_with, queue_without,
              static_cast<unsigned long long>(with.Retransmissions()),
              static_cast<unsigned long long>(without.Retransmissions()),
              static_cast<unsigned long long>(with.net.now), static_cast<unsigned long long>(without.net.now));
  // After the first windows (which only the buffer can absorb: 4 MiB sent before any RTT
  // sample), almost nothing overflows with congestion control (measured 9 vs 446, mean queue
  // over time 0.70 vs 0.96 MB); without it the buffer keeps overflowing (less than it would: a
  // rolled-back slot resends one packet until answered, the loss window; and since RTO probes,
  // an expiry resends one packet, not a window: 634 late drops before them).
  CHECK(without.net.late_drops > 200);
  CHECK(with.net.late_drops * 40 < without.net.late_drops);
  CHECK(with.net.overflow_drops * 2 < without.net.overflow_drops);
  // Timely holds the RTT inside [t_low, t_high]: the queue below t_high's 0.8 MB at 1 GB/s.
  CHECK(queue_with < 800'000 && queue_with < queue_without);
  // Goodput kept (the link stays busy): within 10% of the uncontrolled run's completion time.
  CHECK(with.net.now * 10 <= without.net.now * 11);
  CHECK(with.clients[0].gate->stats().rate_updates > 100);
}

TEST(transport_8mib_transfers_under_injected_loss_keep_their_goodput) {
  // One client, 8 MiB requests over the 1 GB/s bottleneck (16 KiB packets), each endpoint
  // dropping its own sends at the given rate. Goodput in virtual time, against the lossless run.
  auto goodput = [](double loss, uint64_t* retransmissions) {
    Bottleneck::Config link;
    link.buffer_bytes = 16u << 20;
    EndpointConfig config = IncastConfig();
    config.packet_bytes_max = 16384;  // 513 packets per transfer: enough for 1e-4 to bite
    Incast run(1, config, true, link);
    run.server.SetDropProbability(loss);
    run.clients[0].endpoint->SetDropProbability(loss);
    const uint64_t transfers = 60;
    const bool done = run.Run(transfers, 8u << 20, 60'000'000);
    CHECK(done);
    CHECK_EQ(run.failures, 0u);
    CHECK_EQ(run.handler_runs, transfers);  // exactly once, whatever was lost
    *retransmissions = run.Retransmissions();
    return done ? static_cast<double>(transfers * (8u << 20)) / static_cast<double>(run.net.now) : 0.0;
  };
  uint64_t rtx[4] = {};
  const double lossless = goodput(0, &rtx[0]);
  const double e5 = goodput(1e-5, &rtx[1]);
  const double e4 = goodput(1e-4, &rtx[2]);
  const double e3 = goodput(1e-3, &rtx[3]);
  std::printf("  8 MiB goodput MB/s: %.0f, 1e-5 %.0f, 1e-4 %.0f, 1e-3 %.0f (rollbacks %llu %llu %llu %llu)\n",
              lossless, e5, e4, e3, U(rtx[0]), U(rtx[1]), U(rtx[2]), U(rtx[3]));
  CHECK_EQ(rtx[0], 0u);
  CHECK(rtx[2] > 0 && rtx[3] > rtx[2]);  // the loss was real
  CHECK(e5 >= 0.9 * lossless);
  CHECK(e4 >= 0.9 * lossless);  // 0.7 is the target; fast retransmit gives ~0.98
  // Each loss used to cost a whole RTO (5 ms, about 5 MB at this link rate): 0.65x at 1e-3.
  CHECK(e3 >= 0.8 * lossless);
}

TEST(transport_an_isolated_loss_is_resent_without_waiting_for_the_rto) {
  // One 8 MiB request over the 1 GB/s link (8 KiB packets), lossless except for one packet
  // dropped mid-transfer: a request packet (the server NACKs once it sees three beyond it), or a
  // credit return (the client sees three answers beyond it). Either way the slot resends at once,
  // so the transfer ends well within one RTO floor (5 ms) of the lossless run.
  auto run_with = [](int drop_at /* 0 none, 1 client's send, 2 server's send */,
                     Stats* client_stats, Stats* server_stats) {
    Bottleneck::Config link;
    link.buffer_bytes = 16u << 20;
    Incast run(1, IncastConfig(), true, link);
    bool dropped = false;
    uint64_t requests_seen = 0;
    run.on_step = [&] {
      // Mid-transfer: once the server has answered a few hundred packets of the first call.
      const uint64_t sent = run.server.stats().packets_sent;
      if (drop_at == 0 || dropped || sent < 400) return;
      (drop_at == 1 ? run.clients[0].endpoint.get() : &run.server)->DropNext(1);
      dropped = true;
      requests_seen = sent;
    };
    CHECK(run.Run(1, 8u << 20, 10'000'000));
    CHECK_EQ(run.handler_runs, 1u);
    CHECK_EQ(run.failures, 0u);
    CHECK(drop_at == 0 || requests_seen > 0);
    *client_stats = run.clients[0].endpoint->stats();
    *server_stats = run.server.stats();
    return run.net.now;
  };
  Stats c0, s0, c1, s1, c2, s2;
  const uint64_t lossless = run_with(0, &c0, &s0);
  const uint64_t request_lost = run_with(1, &c1, &s1);
  const uint64_t answer_lost = run_with(2, &c2, &s2);
  std::printf("  isolated loss: lossless %llu us, request packet lost %llu us, credit return "
              "lost %llu us\n", U(lossless), U(request_lost), U(answer_lost));
  CHECK_EQ(c0.retransmissions, 0u);
  // A lost request packet: the server NACKed it, the client resent from it at once.
  CHECK_EQ(s1.nacks_sent, 1u);
  CHECK_EQ(c1.fast_retransmits, 1u);
  CHECK_EQ(c1.retransmissions, 1u);  // no RTO rollback besides
  CHECK(request_lost < lossless + 1'000);
  // A lost credit return: three later ones told the client.
  CHECK_EQ(c2.fast_retransmits, 1u);
  CHECK_EQ(c2.retransmissions, 1u);
  CHECK(answer_lost < lossless + 1'000);
}

TEST(transport_20000_sessions_on_one_endpoint_connect_call_and_disconnect) {
  EndpointConfig config;
  config.sessions_max = 20'000;
  config.peer_failure_timeout_us = 600'000'000;
  config.connect_timeout_us = 600'000'000;
  MemoryWire wire(0.0, false, 3);
  const PeerAddress client_address = Addr("127.0.0.1:1000");
  const PeerAddress server_address = Addr("127.0.0.1:2000");
  MemoryWire::Port client_port(&wire, client_address), server_port(&wire, server_address);
  Endpoint client(config, &client_port), server(config, &server_port);
  CongestionGate gate(CongestionConfig{}, config.sessions_max, 0);
  client.SetSendGate(&gate);
  wire.Attach(client_address, &client);
  wire.Attach(server_address, &server);
  server.SetHandled(3, true);
  const uint32_t sessions = 20'000;
  std::vector<uint32_t> numbers(sessions);
  for (uint32_t i = 0; i < sessions; ++i) numbers[i] = client.Connect(server_address, 0);
  uint64_t now = 0;
  uint64_t connected = 0, responses = 0, disconnected = 0, server_closed = 0;
  size_t heap_max = 0;
  std::vector<Event> events;
  auto pump = [&]() {
    for (;;) {
      const bool delivered = wire.DeliverOne(now);
      now += 1;
      events.clear();
      server.TakeEvents(&events);
      for (Event& e : events) {
        if (e.kind == EventKind::kRequest) {
          server.Respond({e.session, e.slot, e.id}, CallStatus::kOk, e.bytes, now);
        } else if (e.kind == EventKind::kSession &&
                   e.code == static_cast<uint8_t>(SessionEventKind::kDisconnected)) {
          ++server_closed;
        }
      }
      events.clear();
      client.TakeEvents(&events);
      for (Event& e : events) {
        if (e.kind == EventKind::kResponse) {
          if (e.code == 0 && e.bytes.size() == 32 && e.bytes[0] == static_cast<uint8_t>(e.id)) ++responses;
        } else if (e.code == static_cast<uint8_t>(SessionEventKind::kConnected)) {
          ++connected;
        } else if (e.code == static_cast<uint8_t>(SessionEventKind::kDisconnected)) {
          ++disconnected;
        }
      }
      heap_max = std::max(heap_max, client.timer_entries());
      if (!delivered && wire.in_flight() == 0) return;
    }
  };
  pump();
  CHECK_EQ(connected, sessions);
  CHECK_EQ(server.stats().sessions_server, sessions);
  // Two calls on every session.
  for (uint64_t round = 0; round < 2; ++round) {
    for (uint32_t i = 0; i < sessions; ++i) {
      const uint64_t tag = round * sessions + i + 1;
      std::vector<uint8_t> request(32, static_cast<uint8_t>(tag));
      CHECK(client.Call(numbers[i], 3, tag, request, 0, now) == CallStatus::kOk);
    }
    pump();
  }
  CHECK_EQ(responses, 2u * sessions);
  CHECK_EQ(server.stats().handlers_run, 2u * sessions);
  CHECK_EQ(client.stats().retransmissions, 0u);
  // Memory per session, reported and bounded (no per-session buffers beyond the slots).
  const size_t client_bytes = client.BytesPerSession(), server_bytes = server.BytesPerSession();
  std::printf("  bytes per session: client %zu, server %zu\n", client_bytes, server_bytes);
  CHECK(client_bytes > 500 && client_bytes < 4096);
  CHECK(server_bytes > 500 && server_bytes < 4096);
  // One session timer and at most one retransmit timer per session (plus stale entries that
  // compaction bounds): timers never need a walk over all sessions.
  CHECK(heap_max <= 3u * sessions + 4096);
  // Idle now: firing the due timers touches only sessions whose entries are due.
  const uint64_t fires = client.stats().retransmit_timer_fires;
  client.OnTimers(now + config.retransmit_timeout_us + 1);
  CHECK(client.stats().retransmit_timer_fires - fires <= sessions);
  CHECK_EQ(client.stats().retransmissions, 0u);
  for (uint32_t i = 0; i < sessions; ++i) CHECK(client.Disconnect(numbers[i], now));
  pump();
  CHECK_EQ(disconnected, sessions);
  CHECK_EQ(server_closed, sessions);
  CHECK_EQ(client.stats().sessions_client, 0u);
  CHECK_EQ(server.stats().sessions_server, 0u);
  CHECK_EQ(client.BytesPerSession(), 0u);
}

TEST(transport_a_stalled_receiver_costs_probes_not_a_window_resend) {
  // One client, 8 MiB requests over the 1 GB/s link (8 KiB packets, a 32-packet window). Mid-
  // way through the second transfer the server stops receiving for 30 ms (a process
  // descheduled on a loaded VM), then takes everything queued. The RTO (5 ms floor) expires
  // during the stall: it may resend a probe packet per expiry (backed off: 5, 10, 20 ms), but
  // must not roll the window back, since nothing was lost.
  auto run_with = [](uint64_t stall_us, Stats* client_stats, Stats* server_stats) {
    Bottleneck::Config link;
    link.buffer_bytes = 16u << 20;
    Incast run(1, IncastConfig(), true, link);
    bool stalled = false;
    run.on_step = [&] {
      if (stall_us == 0 || stalled || run.server.stats().handlers_run < 1 ||
          run.server.stats().packets_sent < 1500) {
        return;
      }
      run.net.server_paused_until = run.net.now + stall_us;
      stalled = true;
    };
    CHECK(run.Run(3, 8u << 20, 10'000'000));
    CHECK_EQ(run.handler_runs, 3u);
    CHECK_EQ(run.failures, 0u);
    CHECK(stall_us == 0 || stalled);
    *client_stats = run.clients[0].endpoint->stats();
    *server_stats = run.server.stats();
    return run.net.now;
  };
  Stats c0, s0, c1, s1;
  const uint64_t smooth = run_with(0, &c0, &s0);
  const uint64_t stalled = run_with(30'000, &c1, &s1);
  std::printf("  stall: %llu us vs %llu us without; probes %llu, rollbacks %llu, client packets "
              "%llu vs %llu\n", U(stalled), U(smooth), U(c1.rto_probes), U(c1.rollbacks),
              U(c1.packets_sent), U(c0.packets_sent));
  CHECK_EQ(c0.retransmissions, 0u);
  CHECK(c1.rto_probes >= 1 && c1.rto_probes <= 3);
  CHECK_EQ(c1.rollbacks, 0u);
  CHECK_EQ(c1.retransmissions, c1.rto_probes);
  // Nothing resent but the probes: the window stayed in flight.
  CHECK_EQ(c1.packets_sent, c0.packets_sent + c1.rto_probes);
  // The stall costs its own length and little more (a probe's backed-off wait is not added).
  CHECK(stalled < smooth + 30'000 + 2'000);
}

TEST(transport_a_lost_tail_is_recovered_by_a_probe_then_a_rollback) {
  // A loss at the end of a request has no later packets to reveal it (no NACK, no answers
  // beyond): the RTO repairs it. The last request packet lost: the probe resends exactly it and
  // the call completes, no rollback. The server's response lost: the probe (the last request
  // packet again) is answered from the kept response, the handler is not run twice. The last
  // three request packets lost: the probe's answer comes, the two after it do not, so the next
  // expiry rolls back and resends them.
  auto run_with = [](int case_kind /* 1 last REQ, 2 the RESP, 3 last three REQs */,
                     Stats* client_stats, Stats* server_stats) {
    Bottleneck::Config link;
    link.buffer_bytes = 16u << 20;
    Incast run(1, IncastConfig(), true, link);
    // 8 KiB packets carry 8,192 - 32 (header) - 16 (trailer room) bytes.
    const uint32_t packets = ((8u << 20) + 8144 - 1) / 8144;
    uint32_t dropped = 0;
    run.net.drop = [&](const Header& h) {
      const bool drop =
          (case_kind == 1 && h.type == PacketType::kRequest && h.packet_number == packets - 1) ||
          (case_kind == 2 && h.type == PacketType::kResponse) ||
          (case_kind == 3 && h.type == PacketType::kRequest && h.packet_number + 3 >= packets);
      if (!drop || dropped >= (case_kind == 3 ? 3u : 1u)) return false;
      ++dropped;
      return true;
    };
    CHECK(run.Run(1, 8u << 20, 10'000'000));
    CHECK(dropped);
    CHECK_EQ(run.handler_runs, 1u);
    CHECK_EQ(run.failures, 0u);
    *client_stats = run.clients[0].endpoint->stats();
    *server_stats = run.server.stats();
    return run.net.now;
  };
  Stats c1, s1, c2, s2, c3, s3;
  run_with(1, &c1, &s1);
  run_with(2, &c2, &s2);
  run_with(3, &c3, &s3);
  std::printf("  tail loss: probes/rollbacks %llu/%llu (last REQ), %llu/%llu (RESP), %llu/%llu "
              "(last 3 REQs)\n", U(c1.rto_probes), U(c1.rollbacks), U(c2.rto_probes),
              U(c2.rollbacks), U(c3.rto_probes), U(c3.rollbacks));
  CHECK_EQ(c1.rto_probes, 1u);
  CHECK_EQ(c1.rollbacks, 0u);
  CHECK_EQ(c2.rto_probes, 1u);
  CHECK_EQ(c2.rollbacks, 0u);
  CHECK_EQ(s2.duplicate_responses, 1u);  // answered from the kept response, not run again
  CHECK_EQ(c3.rto_probes, 1u);
  CHECK_EQ(c3.rollbacks, 1u);
  CHECK_EQ(c3.fast_retransmits, 0u);
}
