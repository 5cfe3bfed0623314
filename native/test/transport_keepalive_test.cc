// Per-peer liveness (endpoint.cc, "Peers"): sessions to one remote endpoint incarnation share
// one keepalive and one failure timer. Thousands of idle sessions cost O(peers) PINGs and timer
// fires per keepalive interval; a silent peer fails every session at once within the failure
// timeout; traffic on one session keeps the idle others alive; a peer restarted at the same
// address is another incarnation, whose traffic does not keep the old sessions alive; a session
// the peer dropped still fails on its own once used, and a long handler keeps its session alive.
// Orphans: a server session its client gave up on without the server hearing (lost DISCONNECTs,
// a connect given up after the server accepted) is reaped within two failure timeouts, found by
// the census the client's PINGs carry, while live idle sessions stay.
// Virtual time over the in-memory wire, dropping packets by header where a test says so.
#include <map>
#include <memory>

#include "test.h"
#include "transport_support.h"

using namespace squall::test;
using namespace squall::transport;

namespace {
constexpr uint64_t kFailureUs = 2'000'000;  // peer_failure_timeout_us (the default)
constexpr uint64_t kKeepaliveUs = kFailureUs / 4;

EndpointConfig Config(uint64_t incarnation) {
  EndpointConfig c;
  c.sessions_max = 8192;
  c.peer_failure_timeout_us = kFailureUs;
  c.incarnation = incarnation;  // what the binding draws per endpoint
  return c;
}

// A client endpoint with many sessions to one server endpoint, run in virtual time.
struct Rig {
  MemoryWire wire{0.0, false, 5};  // lossless, in order; wire.drop filters
  PeerAddress client_address = Addr("10.0.0.1:1000");
  PeerAddress server_address = Addr("10.0.0.2:2000");
  MemoryWire::Port client_port{&wire, client_address};
  MemoryWire::Port server_port{&wire, server_address};
  Endpoint client{Config(0x1111), &client_port};
  std::unique_ptr<Endpoint> server;
  uint64_t now = 1;
  // Handler time: requests are answered this long after they arrive.
  uint64_t handler_us = 0;
  std::vector<std::pair<uint64_t, ServerRequest>> pending;  // (answer at, request)
  std::map<uint32_t, uint64_t> client_failed_at;            // session -> kPeerFailed time
  std::map<uint64_t, CallStatus> completed;                 // tag -> status
  uint64_t connected = 0, server_failed = 0;
  uint64_t next_tag = 1;

  Rig() { StartServer(0x2222); wire.Attach(client_address, &client); }
  void StartServer(uint64_t incarnation) {
    server = std::make_unique<Endpoint>(Config(incarnation), &server_port);
    server->SetHandled(3, true);
    wire.Attach(server_address, server.get());
  }
  void Pump() {
    wire.DeliverAll(now);
    std::vector<Event> events;
    server->TakeEvents(&events);
    for (Event& e : events) {
      if (e.kind == EventKind::kRequest) pending.push_back({now + handler_us, {e.session, e.slot, e.id}});
      if (e.kind == EventKind::kSession &&
          e.code == static_cast<uint8_t>(SessionEventKind::kPeerFailed)) {
        ++server_failed;
      }
    }
    for (size_t i = 0; i < pending.size();) {
      if (pending[i].first > now) {
        ++i;
        continue;
      }
      server->Respond(pending[i].second, CallStatus::kOk, std::vector<uint8_t>(32, 7), now);
      pending.erase(pending.begin() + static_cast<long>(i));
    }
    wire.DeliverAll(now);
    events.clear();
    client.TakeEvents(&events);
    for (Event& e : events) {
      if (e.kind == EventKind::kResponse) completed[e.id] = static_cast<CallStatus>(e.code);
      if (e.kind != EventKind::kSession) continue;
      if (e.code == static_cast<uint8_t>(SessionEventKind::kConnected)) ++connected;
      if (e.code == static_cast<uint8_t>(SessionEventKind::kPeerFailed)) {
        client_failed_at.emplace(e.session, now);
      }
    }
    wire.DeliverAll(now);
  }
  // Runs timers, packets and handlers up to `until` (each step 10 µs of wire latency).
  void RunUntil(uint64_t until) {
    for (;;) {
      Pump();
      uint64_t next = std::min(client.NextTimerUs(), server->NextTimerUs());
      for (const auto& p : pending) next = std::min(next, p.first);
      if (next > until) break;
      now = std::max(now + 10, next);
      client.OnTimers(now);
      server->OnTimers(now);
    }
    now = std::max(now, until);
  }
  std::vector<uint32_t> Connect(size_t n) {
    std::vector<uint32_t> numbers;
    for (size_t i = 0; i < n; ++i) numbers.push_back(client.Connect(server_address, now));
    RunUntil(now + 1000);
    return numbers;
  }
  uint64_t Call(uint32_t session) {
    const uint64_t tag = next_tag++;
    CHECK(client.Call(session, 3, tag, std::vector<uint8_t>(32, 1), 0, now) == CallStatus::kOk);
    return tag;
  }
  uint64_t Pings() const {
    return client.stats().packets_sent_by_type[static_cast<size_t>(PacketType::kPing)];
  }
};

size_t CountConnected(const Endpoint& e, const std::vector<uint32_t>& numbers) {
  size_t n = 0;
  for (uint32_t s : numbers) n += e.SessionIsConnected(s) ? 1 : 0;
  return n;
}
}  // namespace

TEST(keepalive_2000_idle_sessions_to_one_peer_cost_one_ping_per_interval) {
  Rig r;
  const std::vector<uint32_t> sessions = r.Connect(2000);
  CHECK_EQ(r.connected, 2000u);
  for (uint32_t s : sessions) r.Call(s);  // every session used once, then idle
  r.RunUntil(r.now + 1000);
  CHECK_EQ(r.completed.size(), 2000u);
  CHECK_EQ(r.client.stats().peers, 1u);
  CHECK_EQ(r.server->stats().peers, 1u);
  const uint64_t pings = r.Pings();
  const uint64_t client_fires = r.client.stats().session_timer_fires + r.client.stats().peer_timer_fires;
  const uint64_t server_fires = r.server->stats().session_timer_fires + r.server->stats().peer_timer_fires;
  const uint64_t intervals = 10;
  r.RunUntil(r.now + intervals * kKeepaliveUs);
  const uint64_t sent = r.Pings() - pings;
  const uint64_t fired = r.client.stats().session_timer_fires + r.client.stats().peer_timer_fires - client_fires;
  const uint64_t server_fired =
      r.server->stats().session_timer_fires + r.server->stats().peer_timer_fires - server_fires;
  std::printf("  2000 idle sessions, %llu keepalive intervals: %llu pings, %llu client timer fires, "
              "%llu server timer fires\n",
              static_cast<unsigned long long>(intervals), static_cast<unsigned long long>(sent),
              static_cast<unsigned long long>(fired), static_cast<unsigned long long>(server_fired));
  // One PING per interval for the one peer (per-session keepalives sent 2000 per interval).
  CHECK(sent >= intervals - 1 && sent <= intervals + 1);
  CHECK(fired <= 2 * intervals + 2);
  CHECK(server_fired <= intervals + 2);
  CHECK_EQ(CountConnected(r.client, sessions), 2000u);
  CHECK_EQ(r.server->stats().sessions_server, 2000u);
  CHECK(r.client_failed_at.empty());
  CHECK_EQ(r.server_failed, 0u);
}

TEST(keepalive_a_silent_peer_fails_every_session_within_the_failure_timeout) {
  Rig r;
  const std::vector<uint32_t> sessions = r.Connect(2000);
  r.RunUntil(r.now + 3 * kKeepaliveUs);
  const uint64_t pending_tag = r.Call(sessions[17]);
  r.handler_us = 10 * kFailureUs;  // this call's answer never comes
  r.RunUntil(r.now + 1000);
  // The peer stops answering (a hung or cut-off process: no ICMP, nothing at all).
  const uint64_t died = r.now;
  r.wire.drop = [](const MemoryWire::InFlight&, const Header&) { return true; };
  r.RunUntil(died + kFailureUs + kKeepaliveUs);
  CHECK_EQ(r.client_failed_at.size(), 2000u);
  uint64_t last = 0;
  for (const auto& [session, at] : r.client_failed_at) last = std::max(last, at);
  std::printf("  2000 sessions failed %llu us after the peer went silent (timeout %llu us)\n",
              static_cast<unsigned long long>(last - died),
              static_cast<unsigned long long>(kFailureUs));
  CHECK(last <= died + kFailureUs + 1000);
  CHECK(r.completed[pending_tag] == CallStatus::kPeerFailed);
  CHECK_EQ(r.client.stats().sessions_client, 0u);
  CHECK_EQ(r.client.stats().peers, 0u);
  // The server side forgets them too (it heard nothing from the client either).
  CHECK_EQ(r.server_failed, 2000u);
  CHECK_EQ(r.server->stats().peers, 0u);
}

TEST(keepalive_traffic_on_one_session_keeps_the_idle_others_alive) {
  Rig r;
  const std::vector<uint32_t> sessions = r.Connect(2000);
  // No PONG gets through: only the shared "last heard" keeps the idle sessions alive. (The
  // client's PINGs pass: they carry the census that tells the server its idle sessions are
  // still the client's, "Orphans".)
  r.wire.drop = [](const MemoryWire::InFlight&, const Header& h) {
    return h.type == PacketType::kPong;
  };
  const uint64_t start = r.now;
  while (r.now < start + 4 * kFailureUs) {
    r.Call(sessions[0]);
    r.RunUntil(r.now + kKeepaliveUs / 2);
  }
  CHECK_EQ(CountConnected(r.client, sessions), 2000u);
  CHECK_EQ(r.server->stats().sessions_server, 2000u);
  CHECK(r.client_failed_at.empty());
  CHECK_EQ(r.server_failed, 0u);
  // And no keepalive was needed: the only PINGs are the census, one per half failure timeout.
  CHECK(r.Pings() <= 4 * kFailureUs / (kFailureUs / 2) + 1);
  CHECK_EQ(r.server->stats().orphan_audits, 0u);
}

TEST(keepalive_a_peer_restarted_at_the_same_address_is_another_incarnation) {
  Rig r;
  const std::vector<uint32_t> old_sessions = r.Connect(300);
  r.RunUntil(r.now + kKeepaliveUs);
  // kill -9 and restart at the same address (no goodbye, no ICMP: the port is bound again).
  const uint64_t restarted = r.now;
  r.StartServer(0x3333);
  const std::vector<uint32_t> new_sessions = r.Connect(300);
  CHECK_EQ(r.client.stats().peers, 2u);  // same address, two incarnations
  // The new incarnation talks all the time; the old one never again.
  while (r.now < restarted + kFailureUs + 2 * kKeepaliveUs) {
    r.Call(new_sessions[r.now % new_sessions.size()]);
    r.RunUntil(r.now + 50'000);
  }
  CHECK_EQ(CountConnected(r.client, old_sessions), 0u);
  CHECK_EQ(r.client_failed_at.size(), 300u);
  for (uint32_t s : old_sessions) {
    CHECK(r.client_failed_at.count(s) == 1 && r.client_failed_at[s] <= restarted + kFailureUs + 1000);
  }
  CHECK_EQ(CountConnected(r.client, new_sessions), 300u);
  size_t ok = 0;
  for (const auto& [tag, status] : r.completed) ok += status == CallStatus::kOk ? 1 : 0;
  CHECK(ok > 20 && ok == r.completed.size());
  CHECK_EQ(r.client.stats().peers, 1u);
}

TEST(keepalive_a_session_the_peer_dropped_fails_alone_and_a_long_handler_stays_alive) {
  Rig r;
  const std::vector<uint32_t> sessions = r.Connect(100);
  // The server loses the session of `victim` (as after a lost disconnect): from now on nothing
  // the client sends on it arrives, while every other session is answered. Its server-side
  // number is learnt from the first request on it.
  const uint32_t victim = sessions[5];
  uint32_t dropped_remote = kNoSession;
  r.wire.drop = [&](const MemoryWire::InFlight& p, const Header& h) {
    if (p.from == r.client_address && h.type == PacketType::kRequest) dropped_remote = h.dest_session;
    return false;
  };
  r.Call(victim);
  r.RunUntil(r.now + 1000);
  CHECK(dropped_remote != kNoSession);
  r.wire.drop = [&](const MemoryWire::InFlight& p, const Header& h) {
    return p.from == r.client_address && h.dest_session == dropped_remote;
  };
  const uint64_t start = r.now;
  const uint64_t lost_tag = r.Call(victim);
  // A call on another session whose handler runs 1.5 failure timeouts: its session PINGs on
  // its own while it waits, and lives.
  r.handler_us = kFailureUs + kFailureUs / 2;
  const uint64_t slow_tag = r.Call(sessions[6]);
  r.RunUntil(r.now + 1000);
  r.handler_us = 0;
  while (r.now < start + kFailureUs + kKeepaliveUs) {
    r.Call(sessions[0]);  // the peer is alive and heard from all along
    r.RunUntil(r.now + 100'000);
  }
  r.RunUntil(start + 2 * kFailureUs);
  CHECK(r.completed[lost_tag] == CallStatus::kPeerFailed);
  CHECK(r.client_failed_at.count(victim) == 1);
  CHECK(r.client_failed_at[victim] >= start + kFailureUs &&
        r.client_failed_at[victim] <= start + kFailureUs + kKeepaliveUs);
  CHECK_EQ(r.client_failed_at.size(), 1u);
  CHECK(r.completed.count(slow_tag) == 1 && r.completed[slow_tag] == CallStatus::kOk);
  CHECK_EQ(CountConnected(r.client, sessions), 99u);
}

namespace {
// Disconnects `victims` with every DISCONNECT of theirs lost: the client gives up after its
// tries, the server keeps the sessions. Returns when the client has given up.
void DisconnectLost(Rig& r, const std::vector<uint32_t>& victims) {
  r.wire.drop = [](const MemoryWire::InFlight&, const Header& h) {
    return h.type == PacketType::kDisconnectRequest;
  };
  for (uint32_t v : victims) CHECK(r.client.Disconnect(v, r.now));
  r.RunUntil(r.now + 500'000);  // three tries 50 ms apart, then kDisconnected
  for (uint32_t v : victims) CHECK(!r.client.SessionIsConnected(v));
  r.wire.drop = nullptr;
}

// Runs until the server holds `sessions` server sessions (at most three failure timeouts after
// the client gave up on its `orphans`) and checks they went within two, failed as orphans.
void ExpectReaped(Rig& r, uint64_t gave_up, uint64_t sessions, uint64_t orphans) {
  while (r.now < gave_up + 3 * kFailureUs && r.server->stats().sessions_server != sessions) {
    r.RunUntil(r.now + 10'000);
  }
  std::printf("  %llu orphan(s) reaped %llu us after the client gave up (failure timeout %llu us); "
              "%llu audits, %llu probe PINGs\n",
              static_cast<unsigned long long>(orphans),
              static_cast<unsigned long long>(r.now - gave_up),
              static_cast<unsigned long long>(kFailureUs),
              static_cast<unsigned long long>(r.server->stats().orphan_audits),
              static_cast<unsigned long long>(r.server->stats().orphan_probes));
  CHECK_EQ(r.server->stats().sessions_server, sessions);
  CHECK(r.now <= gave_up + 2 * kFailureUs + kKeepaliveUs);
  CHECK_EQ(r.server->stats().orphans_reaped, orphans);
  CHECK_EQ(r.server_failed, orphans);
}
}  // namespace

TEST(orphan_a_server_session_whose_disconnects_were_lost_is_reaped_and_the_idle_others_live) {
  Rig r;
  const std::vector<uint32_t> sessions = r.Connect(2000);
  for (uint32_t s : sessions) r.Call(s);  // every session used once, then idle
  r.RunUntil(r.now + 1000);
  const uint32_t victim = sessions[1234];
  DisconnectLost(r, {victim});
  const uint64_t gave_up = r.now;
  CHECK_EQ(r.server->stats().sessions_server, 2000u);  // the orphan
  ExpectReaped(r, gave_up, 1999, 1);
  // One session differed: the census sums named it, so only it was asked about.
  CHECK_EQ(r.server->stats().orphan_audits, 1u);
  CHECK(r.server->stats().orphan_probes <= 4);
  // The live idle sessions stay, on both sides, long after, and all still answer.
  r.RunUntil(r.now + 3 * kFailureUs);
  CHECK_EQ(r.server->stats().sessions_server, 1999u);
  CHECK(r.client_failed_at.empty());
  CHECK_EQ(CountConnected(r.client, sessions), 1999u);
  const size_t before = r.completed.size();
  for (uint32_t s : sessions) {
    if (s != victim) r.Call(s);
  }
  r.RunUntil(r.now + 1000);
  CHECK_EQ(r.completed.size(), before + 1999);
  for (const auto& [tag, status] : r.completed) CHECK(status == CallStatus::kOk);
}

TEST(orphan_a_connect_given_up_after_the_server_accepted_is_reaped_while_traffic_flows) {
  Rig r;
  const std::vector<uint32_t> sessions = r.Connect(200);
  // Every answer to the next connect is lost: the client times out, the server holds it.
  r.wire.drop = [](const MemoryWire::InFlight&, const Header& h) {
    return h.type == PacketType::kConnectResponse;
  };
  const uint32_t lost = r.client.Connect(r.server_address, r.now);
  const uint64_t start = r.now;
  // Traffic all along (a call every 100 ms): no keepalive is ever due, the census still goes.
  uint64_t gave_up = 0;
  while (r.now < start + 5 * kFailureUs) {
    r.Call(sessions[(r.now / 100'000) % sessions.size()]);
    r.RunUntil(r.now + 100'000);
    if (gave_up == 0 && !r.client.SessionIsConnected(lost) &&
        r.client.SessionPeer(lost).empty()) {
      gave_up = r.now;
      r.wire.drop = nullptr;
    }
    if (gave_up != 0 && r.server->stats().sessions_server == 200) break;
  }
  CHECK(gave_up != 0 && gave_up >= start + 2'000'000);  // connect_timeout_us
  std::printf("  connect given up at +%llu us, its server session reaped at +%llu us\n",
              static_cast<unsigned long long>(gave_up - start),
              static_cast<unsigned long long>(r.now - start));
  CHECK_EQ(r.server->stats().sessions_server, 200u);
  CHECK(r.now <= gave_up + 2 * kFailureUs + kKeepaliveUs);
  CHECK_EQ(r.server->stats().orphans_reaped, 1u);
  // Found by a census the busy client sent (the sums named it), not by the no-census fallback,
  // which would have asked about every idle session.
  CHECK_EQ(r.server->stats().orphan_audits, 1u);
  CHECK(r.server->stats().orphan_probes <= 4);
  CHECK(r.client_failed_at.empty());
  CHECK_EQ(CountConnected(r.client, sessions), 200u);
  for (const auto& [tag, status] : r.completed) CHECK(status == CallStatus::kOk);
}

TEST(orphan_several_orphans_are_found_by_one_look_at_the_record_and_only_they_go) {
  Rig r;
  const std::vector<uint32_t> sessions = r.Connect(500);
  r.RunUntil(r.now + 1000);
  const std::vector<uint32_t> victims = {sessions[3], sessions[77], sessions[250], sessions[499]};
  DisconnectLost(r, victims);
  const uint64_t gave_up = r.now;
  // Four differ, so the sums name none: every idle session of the record is asked about, and
  // the 496 live ones answer.
  ExpectReaped(r, gave_up, 496, 4);
  r.RunUntil(r.now + 3 * kFailureUs);
  CHECK_EQ(r.server->stats().sessions_server, 496u);
  CHECK(r.client_failed_at.empty());
  CHECK_EQ(CountConnected(r.client, sessions), 496u);
  // One look at every session, then one audit that PINGed each at most four times.
  CHECK_EQ(r.server->stats().orphan_audits, 1u);
  CHECK(r.server->stats().orphan_probes <= 4 * 500u);
}
