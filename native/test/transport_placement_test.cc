// Receiving in place (udp_socket.h SetPlacement, endpoint.h ReceivePlacement): the packets of a
// large plaintext request are received by the kernel straight into the request's buffer, and
// whatever else lands in a guessed place is made whole again before it is handled.
#include <poll.h>
#include <sys/socket.h>

#include <functional>
#include <map>
#include <memory>

#include "test.h"
#include "transport/udp_socket.h"
#include "transport_support.h"

using namespace squall::test;
using namespace squall::transport;

namespace {
PeerAddress LoopbackAddress(const UdpSocket& socket) {
  PeerAddress a;
  CHECK(PeerAddress::Parse("127.0.0.1:" + std::to_string(socket.local().port()), &a));
  return a;
}

// A receiving socket and a socket that sends it raw datagrams.
struct SocketPair {
  std::unique_ptr<UdpSocket> receiver, sender;
  SocketPair() {
    std::string error;
    receiver = UdpSocket::Open("127.0.0.1", 0, 65000, &error);
    sender = UdpSocket::Open("127.0.0.1", 0, 65000, &error);
    CHECK(receiver && sender);
  }
  bool ok() const { return receiver && sender; }
  void Send(const std::vector<uint8_t>& datagram) const {
    sendto(sender->fd(), datagram.data(), datagram.size(), 0,
           reinterpret_cast<const sockaddr*>(&receiver->local().storage), receiver->local().length);
  }
  // Receives (on_packet for plain datagrams) until `done()` or about half a second passed.
  void ReceiveUntil(const std::function<bool()>& done,
                    const std::function<void(std::span<const uint8_t>)>& on_packet) {
    for (int i = 0; i < 50 && !done(); ++i) {
      pollfd fd = {receiver->fd(), POLLIN, 0};
      poll(&fd, 1, 10);
      receiver->Receive([&](const PeerAddress&, std::span<const uint8_t> bytes) { on_packet(bytes); }, 64);
    }
  }
};

// `client_count` clients each send `calls` rounds of two requests of about 1 MiB and a small one
// to one server, one call at a time each, as the multicast driver sends its large frames (with
// two clients, their packets interleave finely at the server: both are pumped in turn on this
// thread); every request must arrive intact (the server answers with a digest of it). Returns
// the server's counters.
struct Outcome {
  UdpStats udp;
  Stats endpoint;
  bool intact = false;
};
uint32_t Digest(std::span<const uint8_t> bytes) {
  uint32_t h = 2166136261u;
  for (uint8_t b : bytes) h = (h ^ b) * 16777619u;
  return h;
}
Outcome ToOneServer(bool placing, int client_count, int calls) {
  EndpointConfig config;
  UdpNode server("127.0.0.1", config, placing), a("127.0.0.1", config), b("127.0.0.1", config);
  Outcome out;
  CHECK(server.socket && a.socket && b.socket);
  if (!server.socket || !a.socket || !b.socket) return out;
  server.endpoint->SetHandled(1, true);
  const uint64_t start = MonotonicNowUs();
  std::vector<UdpNode*> clients = {&a, &b};
  clients.resize(static_cast<size_t>(client_count));
  uint32_t sessions[2];
  for (int c = 0; c < client_count; ++c) {
    sessions[c] = clients[c]->endpoint->Connect(LoopbackAddress(*server.socket), start);
    clients[c]->socket->Flush();
  }
  std::map<uint64_t, uint32_t> expected;  // tag -> digest of the request
  std::map<uint64_t, uint32_t> answered;
  std::vector<std::vector<std::pair<uint64_t, size_t>>> planned(clients.size());  // tag, bytes
  uint64_t tag = 1;
  for (int i = 0; i < calls; ++i) {
    for (size_t c = 0; c < clients.size(); ++c) {
      for (size_t bytes : {size_t{1} << 20, size_t{100}, (size_t{1} << 20) - 12345}) {
        planned[c].emplace_back(tag++, bytes);
      }
    }
  }
  std::vector<size_t> next(clients.size(), 0);
  auto call_next = [&](size_t c, uint64_t now) {
    if (next[c] >= planned[c].size()) return;
    const auto [t, bytes] = planned[c][next[c]++];
    const std::vector<uint8_t> request = Pattern(bytes, static_cast<uint8_t>(t * 7 + c));
    expected[t] = Digest(request);
    CHECK(clients[c]->endpoint->Call(sessions[c], 1, t, request, 0, now) == CallStatus::kOk);
    clients[c]->socket->Flush();
  };
  for (size_t c = 0; c < clients.size(); ++c) call_next(c, start);
  const size_t total = static_cast<size_t>(calls) * 3 * clients.size();
  while (answered.size() < total && MonotonicNowUs() - start < 20'000'000) {
    pollfd fds[3] = {{server.socket->fd(), POLLIN, 0}, {a.socket->fd(), POLLIN, 0},
                     {b.socket->fd(), POLLIN, 0}};
    poll(fds, 3, 5);
    const uint64_t now = MonotonicNowUs();
    server.Pump(now);
    std::vector<Event> events;
    server.endpoint->TakeEvents(&events);
    for (auto& e : events) {
      if (e.kind != EventKind::kRequest) continue;
      const uint32_t digest = Digest(e.bytes);
      std::vector<uint8_t> answer(4);
      std::memcpy(answer.data(), &digest, 4);
      server.endpoint->Respond({e.session, e.slot, e.id}, CallStatus::kOk, answer, now);
    }
    server.socket->Flush();
    for (size_t c = 0; c < clients.size(); ++c) {
      clients[c]->Pump(now);
      events.clear();
      clients[c]->endpoint->TakeEvents(&events);
      for (auto& e : events) {
        if (e.kind != EventKind::kResponse || e.bytes.size() != 4) continue;
        uint32_t digest;
        std::memcpy(&digest, e.bytes.data(), 4);
        answered[e.id] = digest;
        call_next(c, now);
      }
    }
  }
  CHECK_EQ(answered.size(), total);
  out.intact = answered == expected;
  out.udp = server.socket->stats();
  out.endpoint = server.endpoint->stats();
  return out;
}
}  // namespace

TEST(transport_placement_large_requests_are_received_into_their_buffer_intact) {
  // One client: its requests' packets arrive in order, and nearly all but each request's first
  // are received in place (the first sizes the buffer; the guesses follow it).
  const Outcome placed = ToOneServer(true, 1, 6);
  CHECK(placed.intact);
  const uint64_t data_packets = placed.endpoint.packets_received_by_type[0];
  std::printf("  placed %llu, misses %llu, into message %llu, REQ %llu, calls %llu\n",
              static_cast<unsigned long long>(placed.udp.datagrams_placed),
              static_cast<unsigned long long>(placed.udp.placement_misses),
              static_cast<unsigned long long>(placed.endpoint.received_into_message),
              static_cast<unsigned long long>(data_packets),
              static_cast<unsigned long long>(placed.udp.receive_calls));
  CHECK(data_packets > 12 * 16);
  CHECK(placed.udp.datagrams_placed * 4 > data_packets * 3);
  CHECK(placed.endpoint.received_into_message * 4 > data_packets * 3);
  CHECK(placed.endpoint.received_into_message <= placed.udp.datagrams_placed);
  // Without it: the same requests, nothing placed.
  const Outcome plain = ToOneServer(false, 1, 2);
  CHECK(plain.intact);
  CHECK_EQ(plain.udp.datagrams_placed, 0u);
  CHECK_EQ(plain.endpoint.received_into_message, 0u);
}

TEST(transport_placement_interleaved_messages_arrive_intact) {
  // Two clients pumped in turn: their packets interleave at the server, so some guesses miss
  // (each costs a copy more: moved back whole, then copied into its own message).
  const Outcome interleaved = ToOneServer(true, 2, 6);
  CHECK(interleaved.intact);
  CHECK(interleaved.udp.datagrams_placed > 0);
  CHECK(interleaved.udp.placement_misses * 4 < interleaved.endpoint.packets_received_by_type[0]);
}

TEST(transport_placement_guessing_backs_off_when_it_keeps_missing) {
  // A planner whose guesses never come true: after one window of misses the socket stops asking
  // it for a while, so the misses (a copy more each) stay near one window, not one per datagram.
  SocketPair pair;
  if (!pair.ok()) return;
  std::vector<uint8_t> never(64 * 2000);
  Header guessed;
  guessed.dest_session = 7;
  guessed.message_bytes = static_cast<uint32_t>(never.size());
  guessed.request_number = 42;
  pair.receiver->SetPlacement(
      [&](std::span<ReceivePlacement> out) -> size_t {
        for (size_t k = 0; k < out.size() && k < 4; ++k) {
          guessed.packet_number = static_cast<uint32_t>(k);
          Encode(guessed, out[k].header);
          out[k].body = never.data() + 2000 * k;
          out[k].body_bytes = 2000;
        }
        return std::min<size_t>(out.size(), 4);
      },
      [&](const PeerAddress&, std::span<const uint8_t>, std::span<const uint8_t>) { CHECK(false); });
  Header other = guessed;
  other.request_number = 43;
  const std::vector<uint8_t> datagram = Packet(other, Pattern(1500, 9));
  size_t received = 0;
  for (size_t round = 0; round < 100; ++round) {
    for (int i = 0; i < 4; ++i) pair.Send(datagram);
    pair.ReceiveUntil([&] { return received == (round + 1) * 4; }, [&](std::span<const uint8_t> bytes) {
      CHECK(std::equal(bytes.begin(), bytes.end(), datagram.begin(), datagram.end()));
      ++received;
    });
  }
  CHECK_EQ(received, 400u);
  CHECK(pair.receiver->stats().placement_backoffs >= 1);
  CHECK(pair.receiver->stats().placement_misses <= 80);
}

namespace {
// The header the socket-level tests guess: packet 1 of request 42 (3,000 bytes) on session 7.
Header GuessedPacket1() {
  Header h;
  h.dest_session = 7;
  h.message_bytes = 3000;
  h.request_number = 42;
  h.packet_number = 1;
  return h;
}
}  // namespace

TEST(transport_placement_a_datagram_of_another_message_is_made_whole_before_it_is_handled) {
  // Socket level: guesses for two datagrams; the first is of the guessed message (placed, its
  // body where the guess said), the second is not and is longer than the guessed body (its bytes
  // reach on_packet whole and in order), the third is past the guesses (as before).
  SocketPair pair;
  if (!pair.ok()) return;
  std::vector<uint8_t> message(3000, 0xEE);
  const Header guessed = GuessedPacket1();
  int plans = 0;
  std::vector<std::pair<std::vector<uint8_t>, const uint8_t*>> placed;  // body bytes, where
  std::vector<std::vector<uint8_t>> plain;
  pair.receiver->SetPlacement(
      [&](std::span<ReceivePlacement> out) -> size_t {
        if (plans++ > 0 || out.size() < 2) return 0;
        for (size_t k = 0; k < 2; ++k) {
          Header h = guessed;
          h.packet_number = 1 + static_cast<uint32_t>(k);
          Encode(h, out[k].header);
          out[k].body = message.data() + 1000 * (1 + k);
          out[k].body_bytes = 1000;
        }
        return 2;
      },
      [&](const PeerAddress&, std::span<const uint8_t> header, std::span<const uint8_t> body) {
        CHECK_EQ(header.size(), kHeaderBytes);
        placed.emplace_back(std::vector<uint8_t>(body.begin(), body.end()), body.data());
      });
  Header other = guessed;
  other.request_number = 43;  // another message
  const std::vector<uint8_t> first = Packet(guessed, Pattern(1000, 1));
  const std::vector<uint8_t> second = Packet(other, Pattern(1500, 2));
  const std::vector<uint8_t> third = Packet(other, Pattern(700, 3));
  for (const auto* d : {&first, &second, &third}) pair.Send(*d);
  pair.ReceiveUntil([&] { return placed.size() + plain.size() == 3; },
                    [&](std::span<const uint8_t> bytes) { plain.emplace_back(bytes.begin(), bytes.end()); });
  CHECK_EQ(placed.size(), 1u);
  CHECK_EQ(plain.size(), 2u);
  if (placed.size() != 1 || plain.size() != 2) return;
  CHECK(placed[0].first == Pattern(1000, 1));
  CHECK(placed[0].second == message.data() + 1000);
  CHECK(std::equal(message.begin() + 1000, message.begin() + 2000, Pattern(1000, 1).begin()));
  CHECK(plain[0] == second);
  CHECK(plain[1] == third);
  CHECK_EQ(pair.receiver->stats().datagrams_placed, 1u);
  CHECK_EQ(pair.receiver->stats().placement_misses, 1u);
  // The guessed place the second one landed in lies in the unreceived part (bytes 2000-2999):
  // written, but never handed to anyone.
  CHECK(std::equal(message.begin(), message.begin() + 1000, std::vector<uint8_t>(1000, 0xEE).begin()));
}

TEST(transport_placement_guesses_point_past_what_was_received_and_a_body_elsewhere_is_dropped) {
  // Endpoint level, no socket: a server session assembling a 1,000-byte request in packets of
  // 208 bytes. PlanReceive guesses its next packets in order, into the request's own buffer; a
  // placed packet whose body lies there is accepted without a copy; one whose body lies
  // anywhere else (its request moved on before it was handled) is dropped as stale, unread.
  EndpointConfig config;
  config.packet_bytes_max = 256;
  RecordingIo io;
  Endpoint server(config, &io);
  server.SetHandled(1, true);
  const PeerAddress client = Addr("127.0.0.1:5000");
  server.OnPacket(client, ConnectRequest(77, 256), 0);
  std::vector<Event> events;
  server.TakeEvents(&events);
  CHECK_EQ(events.size(), 1u);
  if (events.size() != 1) return;
  const uint32_t session = events[0].session;
  ReceivePlacement out[8];
  CHECK_EQ(server.PlanReceive(out), 0u);  // nothing assembled yet
  Header h;
  h.type = PacketType::kRequest;
  h.request_type = 1;
  h.dest_session = session;
  h.request_number = 8;
  h.message_bytes = 1000;
  const std::vector<uint8_t> request = Pattern(1000, 3);
  auto slice = [&](uint32_t p) {
    return std::vector<uint8_t>(request.begin() + 208 * p, request.begin() + std::min<size_t>(1000, 208 * (p + 1)));
  };
  h.packet_number = 0;
  server.OnPacket(client, Packet(h, slice(0)), 1);
  // Packets 1-4 (the last one 168 bytes), each guessed at its place in the request's buffer.
  CHECK_EQ(server.PlanReceive(out), 4u);
  for (uint32_t k = 0; k < 4; ++k) {
    h.packet_number = 1 + k;
    uint8_t expected[kHeaderBytes];
    Encode(h, expected);
    CHECK(std::memcmp(out[k].header, expected, kHeaderBytes) == 0);
    CHECK(out[k].body == out[0].body + 208 * k);
    CHECK_EQ(out[k].body_bytes, k < 3 ? 208u : 168u);
  }
  // Packet 1 placed where the guess said: accepted, not copied.
  h.packet_number = 1;
  uint8_t header[kHeaderBytes];
  Encode(h, header);
  std::vector<uint8_t> one = slice(1);
  std::memcpy(out[0].body, one.data(), one.size());
  server.OnPlacedPacket(client, header, std::span<const uint8_t>(out[0].body, one.size()), 2);
  CHECK_EQ(server.stats().received_into_message, 1u);
  CHECK_EQ(server.PlanReceive(out), 3u);  // from packet 2 on now
  // Packet 2 with its body outside the request's buffer: dropped, and still expected.
  const uint64_t stale = server.stats().drops[static_cast<size_t>(DropReason::kStale)];
  h.packet_number = 2;
  Encode(h, header);
  const std::vector<uint8_t> elsewhere = slice(2);
  server.OnPlacedPacket(client, header, elsewhere, 3);
  CHECK_EQ(server.stats().drops[static_cast<size_t>(DropReason::kStale)], stale + 1);
  CHECK_EQ(server.PlanReceive(out), 3u);
  // The rest arrive the ordinary way; the request is intact.
  for (uint32_t p = 2; p < 5; ++p) {
    h.packet_number = p;
    server.OnPacket(client, Packet(h, slice(p)), 4);
  }
  events.clear();
  server.TakeEvents(&events);
  CHECK_EQ(events.size(), 1u);
  if (events.size() == 1) CHECK(std::vector<uint8_t>(events[0].bytes.begin(), events[0].bytes.end()) == request);
  CHECK_EQ(server.PlanReceive(out), 0u);  // complete: no guess
  // A session that does not exist: stale too.
  h.dest_session = session + 100;
  Encode(h, header);
  server.OnPlacedPacket(client, header, elsewhere, 5);
  CHECK_EQ(server.stats().drops[static_cast<size_t>(DropReason::kStale)], stale + 2);
}

TEST(transport_placement_probes_after_guesses_outlast_receives_that_find_the_socket_empty) {
  // After a batch with guesses, the next datagrams come one per receive (one of them may be the
  // packet 0 the next guesses need) for a few batches. Receives that find the socket empty
  // (every readable turn ends with one) must not use those probes up: after 20 empty turns,
  // three datagrams still come one by one.
  SocketPair pair;
  if (!pair.ok()) return;
  std::vector<uint8_t> message(3000, 0);
  const Header guessed = GuessedPacket1();
  int plans = 0;
  size_t placed = 0;
  pair.receiver->SetPlacement(
      [&](std::span<ReceivePlacement> out) -> size_t {
        if (plans++ > 0 || out.empty()) return 0;
        Encode(guessed, out[0].header);
        out[0].body = message.data() + 1000;
        out[0].body_bytes = 1000;
        return 1;
      },
      [&](const PeerAddress&, std::span<const uint8_t>, std::span<const uint8_t>) { ++placed; });
  pair.Send(Packet(guessed, Pattern(1000, 1)));
  size_t plain = 0;
  pair.ReceiveUntil([&] { return placed == 1; }, [&](std::span<const uint8_t>) { ++plain; });
  CHECK_EQ(placed, 1u);
  for (int turn = 0; turn < 20; ++turn) {
    pair.receiver->Receive([&](const PeerAddress&, std::span<const uint8_t>) { ++plain; }, 64);
  }
  CHECK_EQ(plain, 0u);
  Header other = guessed;
  other.request_number = 43;
  for (int i = 0; i < 3; ++i) pair.Send(Packet(other, Pattern(500, static_cast<uint8_t>(i))));
  const uint64_t calls = pair.receiver->stats().receive_calls;
  const uint64_t probes = pair.receiver->stats().placement_probes;
  pair.ReceiveUntil([&] { return plain == 3; }, [&](std::span<const uint8_t>) { ++plain; });
  CHECK_EQ(plain, 3u);
  CHECK_EQ(pair.receiver->stats().placement_probes - probes, 3u);
  CHECK(pair.receiver->stats().receive_calls - calls >= 3);
}

TEST(transport_placement_a_socket_that_never_guesses_receives_in_full_batches) {
  // A planner that never guesses (small messages, large responses, an encrypting endpoint):
  // large datagrams are received in full batches as before, not one by one.
  SocketPair pair;
  if (!pair.ok()) return;
  pair.receiver->SetPlacement([](std::span<ReceivePlacement>) -> size_t { return 0; },
                              [](const PeerAddress&, std::span<const uint8_t>, std::span<const uint8_t>) {});
  Header h;
  h.dest_session = 7;
  const std::vector<uint8_t> datagram = Packet(h, Pattern(2000, 5));
  for (int i = 0; i < 20; ++i) pair.Send(datagram);
  size_t received = 0;
  pair.ReceiveUntil([&] { return received == 20; }, [&](std::span<const uint8_t>) { ++received; });
  CHECK_EQ(received, 20u);
  CHECK(pair.receiver->stats().receive_calls <= 3);
}

namespace {
// A MemoryWire port that counts what the endpoint sent pinned (PacketIo::SendPinned).
class PinCountingPort : public MemoryWire::Port {
 public:
  using MemoryWire::Port::Port;
  void SendPinned(const PeerAddress& to, std::span<const uint8_t> header,
                  std::span<const uint8_t> payload) override {
    ++pinned;
    pinned_headers.push_back(header.size());
    Send(to, header, payload);
  }
  size_t pinned = 0;
  std::vector<size_t> pinned_headers;
};
}  // namespace

TEST(transport_lent_request_packet_spanning_head_and_body_is_sent_pinned) {
  // A lent request with a 48-byte head (the multicast's frame and block header) and a 300,000-
  // byte body: every packet above the bundling size is sent pinned from the lent body, the first one too (its head part
  // travels with the wire header), and the server gets the request intact.
  MemoryWire wire(0.0, false, 3);
  const PeerAddress client_address = Addr("10.0.0.1:1000"), server_address = Addr("10.0.0.2:2000");
  PinCountingPort client_port(&wire, client_address);
  MemoryWire::Port server_port(&wire, server_address);
  Endpoint client(EndpointConfig{}, &client_port);
  Endpoint server(EndpointConfig{}, &server_port);
  server.SetHandled(3, true);
  wire.Attach(client_address, &client);
  wire.Attach(server_address, &server);
  uint64_t now = 1;
  const uint32_t session = client.Connect(server_address, now);
  wire.DeliverAll(now);
  std::vector<Event> events;
  client.TakeEvents(&events);
  const std::vector<uint8_t> head = Pattern(48, 1);
  const auto body = std::make_shared<std::vector<uint8_t>>(Pattern(300'000, 2));
  CHECK(client.CallLent(session, 3, 1, head, *body, body, 0, now) == CallStatus::kOk);
  Event request;
  for (int turn = 0; turn < 100 && request.bytes.empty(); ++turn) {
    now += 10;
    wire.DeliverAll(now);
    events.clear();
    server.TakeEvents(&events);
    for (Event& e : events) {
      if (e.kind == EventKind::kRequest) request = std::move(e);
    }
  }
  std::vector<uint8_t> expected = head;
  expected.insert(expected.end(), body->begin(), body->end());
  CHECK(std::vector<uint8_t>(request.bytes.begin(), request.bytes.end()) == expected);
  const size_t per_packet = client.SessionDataBytesPerPacket(session);  // a path's MTU here
  CHECK(per_packet > 48);
  CHECK_EQ(client_port.pinned, (300'048 + per_packet - 1) / per_packet);
  CHECK_EQ(client.stats().spanning_packets_pinned, 1u);
  CHECK(!client_port.pinned_headers.empty() && client_port.pinned_headers[0] == kHeaderBytes + 48);
}
