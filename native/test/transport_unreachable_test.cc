// ICMP "port unreachable" as a peer-failure signal (endpoint.cc, "Unreachable peers";
// UdpSocket::DrainErrors). First the core's rule with reports fed straight in, then real UDP
// sockets on loopback: a closed peer port fails an established session with reason
// kPortUnreachable long before the failure timeout, a session connecting to a port bound only
// later still connects, and pending socket errors never cost the receive path a datagram.
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>

#include "test.h"
#include "transport/udp_socket.h"
#include "transport_support.h"

using namespace squall::test;
using namespace squall::transport;

namespace {
constexpr uint32_t kServerSession = 55;

// A client endpoint with one session to 127.0.0.1:6000, accepted by server session 55.
struct Client {
  RecordingIo io;
  Endpoint endpoint;
  PeerAddress server = Addr("127.0.0.1:6000");
  uint32_t session = 0;
  explicit Client(EndpointConfig config = {}) : endpoint(config, &io) {
    session = endpoint.Connect(server, 0);
  }
  std::vector<uint8_t> ConnectRequest() const { return io.packets.at(0).bytes; }
  void Accept(uint64_t now_us = 100) {
    Header h;
    h.type = PacketType::kConnectResponse;
    h.dest_session = session;
    h.aux = kServerSession;
    h.packet_number = 1024;
    h.request_number = io.packets.at(0).header.request_number;
    endpoint.OnPacket(server, Packet(h), now_us);
  }
  void Pong(uint64_t now_us) {
    Header h;
    h.type = PacketType::kPong;
    h.dest_session = session;
    endpoint.OnPacket(server, Packet(h), now_us);
  }
  std::vector<Event> Take() {
    std::vector<Event> out;
    endpoint.TakeEvents(&out);
    return out;
  }
  // The bytes of the last packet the client sent (what an ICMP message would quote).
  std::vector<uint8_t> LastSent() const { return io.packets.back().bytes; }
};

bool IsPeerFailed(const Event& e, PeerFailure why) {
  return e.kind == EventKind::kSession &&
         e.code == static_cast<uint8_t>(SessionEventKind::kPeerFailed) &&
         e.id == static_cast<uint64_t>(why);
}
}  // namespace

TEST(transport_unreachable_two_reports_fail_an_established_session_with_their_reason) {
  Client c;
  c.Accept();
  c.Take();
  CHECK(c.endpoint.Call(c.session, 1, 7, Pattern(10, 1), 0, 200) == CallStatus::kOk);
  const std::vector<uint8_t> request = c.LastSent();
  c.io.Take();
  // The first report asks the peer for a sign of life at once and fails nothing.
  c.endpoint.OnUnreachable(c.server, request, 300);
  CHECK(c.Take().empty());
  CHECK(c.io.packets.size() == 1 && c.io.packets[0].header.type == PacketType::kPing &&
        c.io.packets[0].header.dest_session == kServerSession);
  const std::vector<uint8_t> ping = c.LastSent();
  // The ping bounces too: the session fails now, its call with it, both saying why.
  c.endpoint.OnUnreachable(c.server, ping, 400);
  const std::vector<Event> events = c.Take();
  CHECK_EQ(events.size(), 2u);
  if (events.size() == 2) {
    CHECK(events[0].kind == EventKind::kResponse && events[0].id == 7 &&
          events[0].code == static_cast<uint8_t>(CallStatus::kPeerFailed) &&
          events[0].bytes == std::vector<uint8_t>{1});
    CHECK(IsPeerFailed(events[1], PeerFailure::kPortUnreachable));
  }
  const Stats& st = c.endpoint.stats();
  CHECK_EQ(st.unreachable_reports, 2u);
  CHECK_EQ(st.peer_failures_unreachable, 1u);
  CHECK_EQ(st.peer_failures, 1u);
  CHECK_EQ(st.sessions_client, 0u);
  // Reports still queued for the dead session match nothing now.
  c.endpoint.OnUnreachable(c.server, ping, 500);
  CHECK_EQ(c.endpoint.stats().unreachable_unmatched, 1u);
}

TEST(transport_unreachable_a_packet_from_the_peer_between_reports_voids_them) {
  Client c;
  c.Accept();
  c.Take();
  c.endpoint.OnTimers(600'000);  // a keepalive ping: something to quote
  const std::vector<uint8_t> ping = c.LastSent();
  c.endpoint.OnUnreachable(c.server, ping, 600'100);
  c.Pong(600'200);  // the peer answered after all
  c.endpoint.OnUnreachable(c.server, ping, 600'300);
  CHECK(c.Take().empty());
  CHECK(c.endpoint.SessionIsConnected(c.session));
  c.endpoint.OnUnreachable(c.server, ping, 600'400);  // two with silence between: failed
  const std::vector<Event> events = c.Take();
  CHECK(events.size() == 1 && IsPeerFailed(events[0], PeerFailure::kPortUnreachable));
}

TEST(transport_unreachable_a_connecting_session_is_never_failed_by_reports) {
  // Founders start in any order: connect requests to a port nobody has bound yet bounce.
  EndpointConfig config;
  config.connect_retry_us = 50'000;
  config.connect_timeout_us = 2'000'000;
  Client c(config);
  const std::vector<uint8_t> connect = c.ConnectRequest();
  for (uint64_t t = 1; t <= 10; ++t) c.endpoint.OnUnreachable(c.server, connect, t * 1000);
  CHECK(c.Take().empty());
  CHECK_EQ(c.endpoint.stats().unreachable_unmatched, 10u);
  CHECK_EQ(c.endpoint.stats().unreachable_reports, 0u);
  c.endpoint.OnTimers(60'000);  // still retrying
  CHECK(c.io.packets.back().header.type == PacketType::kConnectRequest);
  c.Accept(70'000);  // the peer bound its port and answered
  const std::vector<Event> events = c.Take();
  CHECK(events.size() == 1 && events[0].code == static_cast<uint8_t>(SessionEventKind::kConnected));
  // Late reports of the connect requests do not touch the established session.
  for (int i = 0; i < 5; ++i) c.endpoint.OnUnreachable(c.server, connect, 80'000);
  CHECK(c.endpoint.SessionIsConnected(c.session));
  CHECK(c.Take().empty());
}

TEST(transport_unreachable_reports_naming_another_session_or_address_are_ignored) {
  Client c;
  c.Accept();
  c.Take();
  CHECK(c.endpoint.Call(c.session, 1, 7, Pattern(10, 1), 0, 200) == CallStatus::kOk);
  std::vector<uint8_t> request = c.LastSent();
  // Another address (a different port on the same host) quoting the same bytes.
  for (int i = 0; i < 3; ++i) c.endpoint.OnUnreachable(Addr("127.0.0.1:6001"), request, 300);
  // The right address, but another session number: a datagram of an earlier session, e.g. to
  // the process that held this address before the peer restarted there.
  Header renumbered;
  Decode(request, &renumbered);
  renumbered.dest_session = kServerSession + 1;
  const std::vector<uint8_t> other = Packet(renumbered, Pattern(10, 1));
  for (int i = 0; i < 3; ++i) c.endpoint.OnUnreachable(c.server, other, 300);
  // Quotes too short to name a session (a router quoting 8 bytes of the UDP datagram: none of
  // ours), and foreign bytes.
  c.endpoint.OnUnreachable(c.server, {}, 300);
  c.endpoint.OnUnreachable(c.server, std::span<const uint8_t>(request.data(), 11), 300);
  std::vector<uint8_t> foreign(64, 0xEE);
  c.endpoint.OnUnreachable(c.server, foreign, 300);
  CHECK(c.Take().empty());
  CHECK(c.endpoint.SessionIsConnected(c.session));
  CHECK_EQ(c.endpoint.stats().unreachable_unmatched, 9u);
  CHECK_EQ(c.endpoint.stats().unreachable_reports, 0u);
}

TEST(transport_unreachable_bundles_name_every_packets_session_and_zero_disables_failing) {
  EndpointConfig config;
  config.unreachable_reports_to_fail = 0;  // count only
  Client c(config);
  c.Accept();
  c.Take();
  // A bundle datagram: an unrelated session's packet first, then one of ours; the quote is cut
  // inside the second item (its header is complete).
  Header first;
  first.type = PacketType::kPing;
  first.dest_session = 999;
  Header ours;
  ours.type = PacketType::kRequest;
  ours.dest_session = kServerSession;
  const std::vector<uint8_t> a = Packet(first), b = Packet(ours, Pattern(40, 2));
  std::vector<uint8_t> bundle(kHeaderBytes, 0);
  Encode(Header{}, bundle.data());
  bundle[3] = kBundleType;
  for (const auto* item : {&a, &b}) {
    const uint16_t bytes = static_cast<uint16_t>(item->size());
    bundle.push_back(static_cast<uint8_t>(bytes & 0xff));
    bundle.push_back(static_cast<uint8_t>(bytes >> 8));
    bundle.insert(bundle.end(), item->begin(), item->end());
  }
  bundle.resize(bundle.size() - 20);
  for (int i = 0; i < 5; ++i) c.endpoint.OnUnreachable(c.server, bundle, 300 + i);
  CHECK_EQ(c.endpoint.stats().unreachable_reports, 5u);
  CHECK(c.Take().empty());  // 0: counted, never acted on
  CHECK(c.endpoint.SessionIsConnected(c.session));
}

TEST(transport_unreachable_server_sessions_fail_by_the_same_rule) {
  RecordingIo io;
  Endpoint server(EndpointConfig{}, &io);
  const PeerAddress client = Addr("127.0.0.1:5000");
  server.OnPacket(client, ConnectRequest(77, 1024), 0);
  std::vector<Event> events;
  server.TakeEvents(&events);
  CHECK(events.size() == 1);
  const std::vector<uint8_t> answer = io.packets.back().bytes;  // names client session 77
  server.OnUnreachable(client, answer, 10);
  server.OnUnreachable(client, answer, 20);
  events.clear();
  server.TakeEvents(&events);
  CHECK(events.size() == 1 && IsPeerFailed(events[0], PeerFailure::kPortUnreachable));
  CHECK_EQ(server.stats().sessions_server, 0u);
}

// ---- Real sockets -------------------------------------------------------------------------

namespace {
// An endpoint on a real socket, pumped with poll() as the addon pumps it with libuv (the
// unreachable handler wired the same way).
struct Node {
  std::unique_ptr<UdpSocket> socket;
  std::unique_ptr<Endpoint> endpoint;
  std::vector<Event> events;
  Node(const char* host, uint16_t port, const EndpointConfig& config) {
    std::string error;
    socket = UdpSocket::Open(host, port, config.packet_bytes_max, &error);
    if (!socket) return;
    endpoint = std::make_unique<Endpoint>(config, socket.get());
    endpoint->SetHandled(1, true);
    Endpoint* e = endpoint.get();
    socket->SetUnreachableHandler([e](const PeerAddress& to, std::span<const uint8_t> quoted) {
      e->OnUnreachable(to, quoted, MonotonicNowUs());
    });
  }
  bool ok() const { return endpoint != nullptr; }
  void Pump() {
    const uint64_t now = MonotonicNowUs();
    socket->Receive([&](const PeerAddress& from, std::span<const uint8_t> bytes) {
      endpoint->OnPacket(from, bytes, now);
    }, 256);
    socket->DrainErrors();
    endpoint->OnTimers(now);
    std::vector<Event> fresh;
    endpoint->TakeEvents(&fresh);
    for (Event& e : fresh) {
      if (e.kind == EventKind::kRequest) {
        endpoint->Respond({e.session, e.slot, e.id}, CallStatus::kOk, e.bytes, now);
      }
      events.push_back(std::move(e));
    }
    socket->Flush();
  }
  // Pumps `nodes` until `done` or `timeout_us` passes; false on timeout.
  template <typename F>
  static bool PumpUntil(std::initializer_list<Node*> nodes, uint64_t timeout_us, F done) {
    const uint64_t end = MonotonicNowUs() + timeout_us;
    while (!done()) {
      if (MonotonicNowUs() > end) return false;
      std::vector<pollfd> fds;
      for (Node* n : nodes) fds.push_back({n->socket->fd(), POLLIN | POLLPRI, 0});
      poll(fds.data(), fds.size(), 2);
      for (Node* n : nodes) n->Pump();
    }
    return true;
  }
  const Event* Find(SessionEventKind kind) const {
    for (const Event& e : events) {
      if (e.kind == EventKind::kSession && e.code == static_cast<uint8_t>(kind)) return &e;
    }
    return nullptr;
  }
};

// Makes one call with tag `tag` on `session` and pumps both until it is answered OK.
bool CallAnswered(Node* client, Node* server, uint32_t session, uint64_t tag) {
  const uint8_t seed = static_cast<uint8_t>(tag);
  if (client->endpoint->Call(session, 1, tag, Pattern(64, seed), 0, MonotonicNowUs()) !=
      CallStatus::kOk) {
    return false;
  }
  client->socket->Flush();
  return Node::PumpUntil({client, server}, 20'000'000, [&] {
    for (const Event& e : client->events) {
      if (e.kind == EventKind::kResponse && e.id == tag && e.code == 0) return true;
    }
    return false;
  });
}

PeerAddress Local(const char* prefix, const UdpSocket& socket) {
  return Addr((std::string(prefix) + std::to_string(socket.local().port())).c_str());
}

void KilledPeerIsFailedByPortUnreachable(const char* host, const char* prefix) {
  // The failure timeout is far away (30 s): only the ICMP reports can fail the session within
  // the test, and the event's reason says which signal did.
  EndpointConfig config;
  config.peer_failure_timeout_us = 30'000'000;
  Node client(host, 0, config);
  auto server = std::make_unique<Node>(host, 0, config);
  CHECK(client.ok() && server->ok());
  if (!client.ok() || !server->ok()) return;
  PeerAddress server_address;  // as the addon does: IPv4 peers of a dual-stack socket mapped
  CHECK(client.socket->Normalize(Local(prefix, *server->socket), &server_address));
  const uint32_t session = client.endpoint->Connect(server_address, MonotonicNowUs());
  CHECK(Node::PumpUntil({&client, server.get()}, 10'000'000,
                        [&] { return client.Find(SessionEventKind::kConnected) != nullptr; }));
  server.reset();  // the process is gone: its port is closed, the host is alive
  const uint64_t killed = MonotonicNowUs();
  CHECK(client.endpoint->Call(session, 1, 1, Pattern(100, 1), 0, killed) == CallStatus::kOk);
  client.socket->Flush();
  CHECK(Node::PumpUntil({&client}, 20'000'000,
                        [&] { return client.Find(SessionEventKind::kPeerFailed) != nullptr; }));
  const Event* failed = client.Find(SessionEventKind::kPeerFailed);
  CHECK(failed != nullptr && failed->id == static_cast<uint64_t>(PeerFailure::kPortUnreachable));
  CHECK(MonotonicNowUs() - killed < config.peer_failure_timeout_us / 2);
  CHECK(client.socket->stats().port_unreachable >= 2);
  CHECK_EQ(client.endpoint->stats().peer_failures_unreachable, 1u);
  CHECK_EQ(client.socket->stats().error_queue_other, 0u);
}
}  // namespace

TEST(transport_udp_killed_peer_fails_by_port_unreachable_ipv4) {
  KilledPeerIsFailedByPortUnreachable("127.0.0.1", "127.0.0.1:");
}
TEST(transport_udp_killed_peer_fails_by_port_unreachable_dual_stack_v4_peer) {
  // A dual-stack socket's IPv4 peers: ICMPv4 errors, reported through IP_RECVERR.
  KilledPeerIsFailedByPortUnreachable("::", "127.0.0.1:");
}
TEST(transport_udp_killed_peer_fails_by_port_unreachable_ipv6) {
  KilledPeerIsFailedByPortUnreachable("::", "[::1]:");
}

TEST(transport_udp_connect_to_a_port_bound_later_still_connects) {
  EndpointConfig config;
  config.connect_retry_us = 10'000;
  config.connect_timeout_us = 30'000'000;
  // A free port: bind one, note it, let it go.
  uint16_t port = 0;
  {
    std::string error;
    auto probe = UdpSocket::Open("127.0.0.1", 0, 1500, &error);
    CHECK(probe != nullptr);
    if (!probe) return;
    port = probe->local().port();
  }
  Node client("127.0.0.1", 0, config);
  CHECK(client.ok());
  if (!client.ok()) return;
  const PeerAddress server_address = Addr(("127.0.0.1:" + std::to_string(port)).c_str());
  const uint32_t session = client.endpoint->Connect(server_address, MonotonicNowUs());
  client.socket->Flush();
  // Connect requests bounce off the closed port for a while.
  CHECK(Node::PumpUntil({&client}, 10'000'000,
                        [&] { return client.endpoint->stats().unreachable_unmatched >= 3; }));
  CHECK(client.events.empty());
  Node server("127.0.0.1", port, config);  // the peer starts and binds its port
  CHECK(server.ok());
  if (!server.ok()) return;
  CHECK(Node::PumpUntil({&client, &server}, 20'000'000,
                        [&] { return client.Find(SessionEventKind::kConnected) != nullptr; }));
  CHECK(client.Find(SessionEventKind::kPeerFailed) == nullptr);
  CHECK(client.Find(SessionEventKind::kConnectFailed) == nullptr);
  CHECK(CallAnswered(&client, &server, session, 5));  // and it serves
  CHECK(client.socket->stats().port_unreachable >= 3);
}

TEST(transport_udp_a_pending_socket_error_does_not_hold_back_queued_datagrams) {
  // With IP_RECVERR an ICMP error makes the next receive fail (ECONNREFUSED) even with
  // datagrams queued behind it. Receive must drain the error and hand over the datagrams in
  // the same call, and a send must not fail on it.
  std::string error;
  auto a = UdpSocket::Open("127.0.0.1", 0, 1500, &error);
  auto b = UdpSocket::Open("127.0.0.1", 0, 1500, &error);
  auto dead = UdpSocket::Open("127.0.0.1", 0, 1500, &error);
  CHECK(a && b && dead);
  if (!a || !b || !dead) return;
  const PeerAddress dead_address = Local("127.0.0.1:", *dead);
  dead.reset();
  size_t reports = 0;
  a->SetUnreachableHandler([&](const PeerAddress& to, std::span<const uint8_t> quoted) {
    reports += to == dead_address && quoted.size() == kHeaderBytes + 8 ? 1 : 0;
  });
  Header h;
  const std::vector<uint8_t> header = Packet(h), payload(8, 1);
  a->Send(dead_address, header, payload);
  a->Flush();
  // Wait for the report: the socket polls with POLLERR (and POLLPRI: SO_SELECT_ERR_QUEUE).
  pollfd fd = {a->fd(), POLLPRI, 0};
  CHECK(poll(&fd, 1, 5000) == 1 && (fd.revents & POLLPRI) != 0 && (fd.revents & POLLERR) != 0);
  for (int i = 0; i < 3; ++i) b->Send(a->local(), header, payload);
  b->Flush();
  pollfd in = {a->fd(), POLLIN, 0};
  CHECK(poll(&in, 1, 5000) == 1);
  // One datagram (the three packets travel as one bundle): the kernel reports a pending error
  // in place of the datagram when a receive asks for just one.
  size_t received = 0;
  a->Receive([&](const PeerAddress&, std::span<const uint8_t>) { ++received; }, 1);
  CHECK_EQ(received, 3u);
  CHECK_EQ(reports, 1u);
  CHECK(a->stats().receive_errors >= 1);
  CHECK_EQ(a->stats().port_unreachable, 1u);
  // The error is gone: nothing polls any more, and sends go out.
  pollfd after = {a->fd(), POLLIN | POLLPRI, 0};
  CHECK_EQ(poll(&after, 1, 0), 0);
  a->Send(b->local(), header, payload);
  a->Flush();
  CHECK_EQ(a->stats().send_errors, 0u);
}

TEST(transport_udp_a_peer_restarted_at_the_same_address_is_not_failed_by_old_reports) {
  // The peer dies and a new process binds the same port (as a node restarted over its data
  // dir). Reports about datagrams of the session to the earlier process -- late ones too --
  // name that process's session number and never touch the session to the new one.
  EndpointConfig config;
  config.peer_failure_timeout_us = 30'000'000;
  EndpointConfig first = config, second = config;
  first.incarnation = 11;  // the addon draws these from the OS per endpoint
  second.incarnation = 22;
  Node client("127.0.0.1", 0, config);
  auto old_peer = std::make_unique<Node>("127.0.0.1", 0, first);
  CHECK(client.ok() && old_peer->ok());
  if (!client.ok() || !old_peer->ok()) return;
  const PeerAddress address = Local("127.0.0.1:", *old_peer->socket);
  const uint32_t old_session = client.endpoint->Connect(address, MonotonicNowUs());
  CHECK(Node::PumpUntil({&client, old_peer.get()}, 10'000'000, [&] {
    return client.endpoint->SessionIsConnected(old_session) &&
           old_peer->Find(SessionEventKind::kAccepted) != nullptr;
  }));
  // The number the client's datagrams on the old session carry (the old server's session).
  const Event* accepted = old_peer->Find(SessionEventKind::kAccepted);
  const uint32_t old_number = accepted != nullptr ? accepted->session : 0;
  old_peer.reset();
  Node new_peer("127.0.0.1", address.port(), second);  // restarted before anything bounced
  CHECK(new_peer.ok());
  if (!new_peer.ok()) return;
  const uint32_t new_session = client.endpoint->Connect(address, MonotonicNowUs());
  CHECK(Node::PumpUntil({&client, &new_peer}, 10'000'000, [&] {
    return client.endpoint->SessionIsConnected(new_session) &&
           new_peer.Find(SessionEventKind::kAccepted) != nullptr;
  }));
  const Event* renewed = new_peer.Find(SessionEventKind::kAccepted);
  CHECK(renewed != nullptr && renewed->session != old_number);
  // Late reports quoting the old session's datagrams.
  Header old_request;
  old_request.type = PacketType::kRequest;
  old_request.dest_session = old_number;
  const uint64_t unmatched_before = client.endpoint->stats().unreachable_unmatched;
  for (int i = 0; i < 3; ++i) {
    client.endpoint->OnUnreachable(address, Packet(old_request), MonotonicNowUs());
  }
  CHECK(client.endpoint->SessionIsConnected(new_session));
  // The old session still looks connected to the client (its peer vanished silently), so the
  // reports count against it, not the new one; two of them fail it.
  CHECK(!client.endpoint->SessionIsConnected(old_session));
  CHECK_EQ(client.endpoint->stats().unreachable_unmatched, unmatched_before + 1);
  client.Pump();  // collects the events
  const Event* failed = client.Find(SessionEventKind::kPeerFailed);
  CHECK(failed != nullptr && failed->session == old_session);
  CHECK(CallAnswered(&client, &new_peer, new_session, 2));  // the new session serves
  CHECK(client.endpoint->SessionIsConnected(new_session));
}
