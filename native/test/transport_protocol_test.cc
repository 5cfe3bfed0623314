// Protocol tests in eRPC's style: feed packets straight into an endpoint and compare what it sent
// with the expected transcript. Each duplicate/reorder case of the digest's table (§2.2) has its
// own step below, on the server side and on the client side.
#include "test.h"
#include "transport_support.h"

using namespace squall::test;
using namespace squall::transport;

namespace {
using Lines = std::vector<std::string>;

std::string Join(const Lines& lines) {
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}
#define CHECK_LINES(io, ...)                                                      \
  do {                                                                            \
    const Lines expected_ = __VA_ARGS__;                                          \
    const Lines got_ = (io).Take();                                               \
    if (got_ != expected_) {                                                      \
      ::squall::test::Fail(__FILE__, __LINE__,                                    \
                           "transcript differs\nexpected:\n" + Join(expected_) +  \
                               "got:\n" + Join(got_));                            \
    }                                                                             \
  } while (0)

uint64_t DropCount(const Endpoint& e, DropReason r) {
  return e.stats().drops[static_cast<size_t>(r)];
}

EndpointConfig SmallPackets() {
  EndpointConfig c;
  c.packet_bytes_max = 256;  // 208 data bytes per packet, so small messages span packets
  return c;
}

// A server endpoint with one accepted session from client session 77.
struct Server {
  RecordingIo io;
  Endpoint endpoint{SmallPackets(), &io};
  PeerAddress client = Addr("127.0.0.1:5000");
  uint32_t session = 0;
  std::vector<Event> events;

  Server() {
    endpoint.SetHandled(1, true);
    endpoint.OnPacket(client, ConnectRequest(77, 256), 0);
    endpoint.TakeEvents(&events);
    if (events.size() == 1) session = events[0].session;
    events.clear();
  }
  void Send(PacketType type, uint64_t r, uint32_t p, uint32_t m, size_t len, uint8_t seed = 0) {
    Header h;
    h.type = type;
    h.request_type = 1;
    h.dest_session = session;
    h.request_number = r;
    h.packet_number = p;
    h.message_bytes = m;
    endpoint.OnPacket(client, Packet(h, Pattern(len, seed)), 10);
  }
  std::vector<Event> Take() {
    std::vector<Event> out;
    endpoint.TakeEvents(&out);
    return out;
  }
};
}  // namespace

TEST(transport_wire_header_round_trips_little_endian) {
  Header h;
  h.type = PacketType::kResponse;
  h.request_type = 200;
  h.dest_session = 0x01020304;
  h.message_bytes = 0x00800000;
  h.packet_number = 77;
  h.aux = 3;
  h.request_number = 0x1122334455667788ull;
  std::vector<uint8_t> bytes = Packet(h);
  CHECK_EQ(bytes.size(), kHeaderBytes);
  CHECK_EQ(bytes[0], 0x53);  // 'S'
  CHECK_EQ(bytes[1], 0x51);  // 'Q'
  CHECK_EQ(bytes[8], 0x04);  // little-endian session number
  CHECK_EQ(bytes[24], 0x88);
  Header back;
  CHECK(Decode(bytes, &back) == DecodeError::kNone);
  CHECK(back.type == PacketType::kResponse);
  CHECK_EQ(back.dest_session, h.dest_session);
  CHECK_EQ(back.request_number, h.request_number);
  CHECK_EQ(back.message_bytes, h.message_bytes);
  bytes[2] = 9;
  CHECK(Decode(bytes, &back) == DecodeError::kBadVersion);
  bytes[2] = squall::kWireVersion;
  bytes[3] = 200;
  CHECK(Decode(bytes, &back) == DecodeError::kBadType);
  bytes[3] = 0;
  bytes[4] = kFlagEncrypted | kFlagRekeyRequested | kFlagBatch;  // known: the endpoint decides
  CHECK(Decode(bytes, &back) == DecodeError::kNone);
  bytes[4] = 0x08;
  CHECK(Decode(bytes, &back) == DecodeError::kBadFlags);
  bytes[0] = 0;
  CHECK(Decode(bytes, &back) == DecodeError::kBadMagic);
  CHECK(Decode(std::span<const uint8_t>(bytes.data(), 31), &back) == DecodeError::kTruncated);
}

TEST(transport_server_accepts_and_answers_duplicate_connect) {
  Server s;
  CHECK_EQ(s.session, 1u);
  CHECK_LINES(s.io, {"CONNECT_RESP s=77 r=43981 p=256 m=0 a=1 len=0"});
  Header h;
  h.type = PacketType::kConnectRequest;
  h.dest_session = kNoSession;
  h.aux = 77;
  h.packet_number = 256;
  h.request_type = 8;
  h.request_number = 0xABCD;
  s.endpoint.OnPacket(s.client, Packet(h), 5);  // duplicate: same session, no new event
  CHECK_LINES(s.io, {"CONNECT_RESP s=77 r=43981 p=256 m=0 a=1 len=0"});
  CHECK(s.Take().empty());
  CHECK_EQ(s.endpoint.stats().sessions_server, 1u);
}

TEST(transport_server_small_request_duplicates_and_order) {
  Server s;
  s.io.Take();
  // New request on slot 0: the handler runs; nothing is sent until it responds.
  s.Send(PacketType::kRequest, 8, 0, 10, 10);
  auto events = s.Take();
  CHECK_EQ(events.size(), 1u);
  CHECK(events[0].kind == EventKind::kRequest);
  CHECK_EQ(events[0].id, 8u);
  CHECK_EQ(events[0].slot, 0u);
  CHECK(events[0].bytes == Pattern(10, 0));
  CHECK_LINES(s.io, {});
  // Duplicate while the handler runs: dropped (the client will retransmit).
  s.Send(PacketType::kRequest, 8, 0, 10, 10);
  CHECK_LINES(s.io, {});
  CHECK_EQ(DropCount(s.endpoint, DropReason::kHandlerRunning), 1u);
  s.endpoint.Respond({s.session, 0, 8}, CallStatus::kOk, Pattern(5, 1), 20);
  CHECK_LINES(s.io, {"RESP s=77 r=8 p=0 m=5 a=0 len=5"});
  // Duplicate after the response: answered from the kept response, handler not run again.
  s.Send(PacketType::kRequest, 8, 0, 10, 10);
  CHECK_LINES(s.io, {"RESP s=77 r=8 p=0 m=5 a=0 len=5"});
  CHECK_EQ(s.endpoint.stats().duplicate_responses, 1u);
  CHECK_EQ(s.endpoint.stats().handlers_run, 1u);
  // An older request number on the slot: dropped.
  s.Send(PacketType::kRequest, 0, 0, 10, 10);
  CHECK_EQ(DropCount(s.endpoint, DropReason::kStale), 1u);
  // The next request number buries the kept response and runs the handler once.
  s.Send(PacketType::kRequest, 16, 0, 3, 3);
  CHECK_EQ(s.Take().size(), 1u);
  CHECK_EQ(s.endpoint.stats().handlers_run, 2u);
  s.Send(PacketType::kRequest, 8, 0, 10, 10);  // the old request again: stale now
  CHECK_EQ(DropCount(s.endpoint, DropReason::kStale), 2u);
  s.endpoint.Respond({s.session, 0, 8}, CallStatus::kOk, Pattern(5, 1), 30);  // stale respond
  CHECK_EQ(s.endpoint.stats().stale_responds, 1u);
  // A new request that does not start at packet 0: future, dropped.
  s.Send(PacketType::kRequest, 24, 1, 300, 92);
  CHECK_EQ(DropCount(s.endpoint, DropReason::kOutOfOrder), 1u);
  CHECK_LINES(s.io, {});
  // An unregistered request type is answered with a no-handler status, no event.
  Header h;
  h.type = PacketType::kRequest;
  h.request_type = 9;
  h.dest_session = s.session;
  h.request_number = 9;
  s.endpoint.OnPacket(s.client, Packet(h), 40);
  CHECK_LINES(s.io, {"RESP s=77 r=9 p=0 m=0 a=1 len=0"});
  CHECK(s.Take().empty());
}

TEST(transport_server_large_request_credit_returns_and_rfr) {
  Server s;
  s.io.Take();
  // A 500-byte request is 3 packets of 208, 208, 84 bytes.
  s.Send(PacketType::kRequest, 9, 0, 500, 208, 0);
  CHECK_LINES(s.io, {"CR s=77 r=9 p=0 m=0 a=0 len=0"});
  s.Send(PacketType::kRequest, 9, 2, 500, 84, 2);  // future packet: dropped
  CHECK_LINES(s.io, {});
  CHECK_EQ(DropCount(s.endpoint, DropReason::kOutOfOrder), 1u);
  s.Send(PacketType::kRequest, 9, 1, 500, 208, 1);
  CHECK_LINES(s.io, {"CR s=77 r=9 p=1 m=0 a=0 len=0"});
  s.Send(PacketType::kRequest, 9, 0, 500, 208, 0);  // duplicate non-last: CR again
  CHECK_LINES(s.io, {"CR s=77 r=9 p=0 m=0 a=0 len=0"});
  s.Send(PacketType::kRequest, 9, 1, 500, 100, 1);  // wrong length for its position
  CHECK_EQ(DropCount(s.endpoint, DropReason::kBadLength), 0u);  // duplicate: answered, not read
  CHECK_LINES(s.io, {"CR s=77 r=9 p=1 m=0 a=0 len=0"});
  s.Send(PacketType::kRequest, 9, 2, 500, 84, 2);
  auto events = s.Take();
  CHECK_EQ(events.size(), 1u);
  std::vector<uint8_t> expected = Pattern(208, 0);
  auto p1 = Pattern(208, 1);
  auto p2 = Pattern(84, 2);
  expected.insert(expected.end(), p1.begin(), p1.end());
  expected.insert(expected.end(), p2.begin(), p2.end());
  CHECK(events.size() == 1 && events[0].bytes == expected);
  CHECK_EQ(events.size() == 1 ? events[0].slot : 99u, 1u);
  s.Send(PacketType::kRequest, 9, 2, 500, 84, 2);  // duplicate last packet, handler running
  CHECK_EQ(DropCount(s.endpoint, DropReason::kHandlerRunning), 1u);
  // A 700-byte response is 4 packets; response packet 0 answers request packet 2.
  s.endpoint.Respond({s.session, 1, 9}, CallStatus::kOk, Pattern(700, 5), 20);
  CHECK_LINES(s.io, {"RESP s=77 r=9 p=2 m=700 a=0 len=208"});
  s.Send(PacketType::kRequest, 9, 2, 500, 84, 2);  // duplicate last packet: response 0 again
  CHECK_LINES(s.io, {"RESP s=77 r=9 p=2 m=700 a=0 len=208"});
  s.Send(PacketType::kRequestForResponse, 9, 4, 500, 0);  // future RFR: dropped
  CHECK_EQ(DropCount(s.endpoint, DropReason::kOutOfOrder), 2u);
  s.Send(PacketType::kRequestForResponse, 9, 3, 500, 0);
  CHECK_LINES(s.io, {"RESP s=77 r=9 p=3 m=700 a=0 len=208"});
  s.Send(PacketType::kRequestForResponse, 9, 3, 500, 0);  // duplicate RFR: re-sent
  CHECK_LINES(s.io, {"RESP s=77 r=9 p=3 m=700 a=0 len=208"});
  s.Send(PacketType::kRequestForResponse, 9, 4, 500, 0);
  s.Send(PacketType::kRequestForResponse, 9, 5, 500, 0);
  CHECK_LINES(s.io, {"RESP s=77 r=9 p=4 m=700 a=0 len=208", "RESP s=77 r=9 p=5 m=700 a=0 len=76"});
  s.Send(PacketType::kRequestForResponse, 9, 6, 500, 0);  // beyond the response
  CHECK_EQ(DropCount(s.endpoint, DropReason::kBadPacketNumber), 1u);
  s.Send(PacketType::kRequestForResponse, 1, 3, 500, 0);  // old request number
  CHECK_EQ(DropCount(s.endpoint, DropReason::kStale), 1u);
  CHECK_LINES(s.io, {});
  CHECK_EQ(s.endpoint.stats().handlers_run, 1u);
  CHECK_EQ(s.endpoint.stats().duplicate_responses, 2u);
}

TEST(transport_server_drops_bad_sessions_peers_and_sizes) {
  Server s;
  s.io.Take();
  Header h;
  h.type = PacketType::kRequest;
  h.request_type = 1;
  h.dest_session = 999;
  h.request_number = 8;
  s.endpoint.OnPacket(s.client, Packet(h), 1);
  CHECK_EQ(DropCount(s.endpoint, DropReason::kUnknownSession), 1u);
  h.dest_session = s.session;
  s.endpoint.OnPacket(Addr("127.0.0.1:5001"), Packet(h), 1);
  CHECK_EQ(DropCount(s.endpoint, DropReason::kWrongPeer), 1u);
  h.message_bytes = (8u << 20) + 1;
  s.endpoint.OnPacket(s.client, Packet(h, Pattern(208, 0)), 1);
  CHECK_EQ(DropCount(s.endpoint, DropReason::kTooLarge), 1u);
  h.type = PacketType::kCreditReturn;  // a client-bound type sent to a server session
  h.message_bytes = 0;
  s.endpoint.OnPacket(s.client, Packet(h), 1);
  CHECK_EQ(DropCount(s.endpoint, DropReason::kBadState), 1u);
  CHECK_LINES(s.io, {});
  CHECK(s.Take().empty());
}

namespace {
// A client endpoint connected to a server at 127.0.0.1:6000 whose session number is 55.
struct Client {
  RecordingIo io;
  Endpoint endpoint;
  PeerAddress server = Addr("127.0.0.1:6000");
  uint32_t session = 0;
  uint64_t token = 0;
  explicit Client(EndpointConfig config = SmallPackets()) : endpoint(config, &io) {
    session = endpoint.Connect(server, 0);
    if (!io.packets.empty()) token = io.packets[0].header.request_number;
  }
  void Accept() {
    Header h;
    h.type = PacketType::kConnectResponse;
    h.dest_session = session;
    h.aux = 55;
    h.packet_number = 256;
    h.request_number = token;
    endpoint.OnPacket(server, Packet(h), 100);
  }
  void Send(PacketType type, uint64_t r, uint32_t p, uint32_t m, size_t len, uint64_t now = 200,
            uint32_t aux = 0) {
    Header h;
    h.type = type;
    h.request_type = 1;
    h.dest_session = session;
    h.request_number = r;
    h.packet_number = p;
    h.message_bytes = m;
    h.aux = aux;
    endpoint.OnPacket(server, Packet(h, Pattern(len, 9)), now);
  }
  std::vector<Event> Take() {
    std::vector<Event> out;
    endpoint.TakeEvents(&out);
    return out;
  }
  void RunTimersUntil(uint64_t until_us) {
    while (endpoint.NextTimerUs() <= until_us) endpoint.OnTimers(endpoint.NextTimerUs());
  }
};
}  // namespace

TEST(transport_client_handshake_and_small_response_order) {
  Client c;
  CHECK_LINES(c.io, {"CONNECT s=4294967295 r=" + std::to_string(c.token) +
                         " p=256 m=0 a=1 len=0"});  // m: incarnation tag (0)
  c.Accept();
  auto events = c.Take();
  CHECK(events.size() == 1 && events[0].kind == EventKind::kSession &&
        events[0].code == static_cast<uint8_t>(SessionEventKind::kConnected));
  CHECK(c.endpoint.Call(c.session, 1, 100, Pattern(10, 3), 0, 150) == CallStatus::kOk);
  CHECK_LINES(c.io, {"REQ s=55 r=8 p=0 m=10 a=0 len=10"});
  c.Send(PacketType::kResponse, 8, 1, 3, 3);  // not the packet we wait for
  c.Send(PacketType::kResponse, 16, 0, 3, 3);  // another request number
  CHECK_EQ(DropCount(c.endpoint, DropReason::kStale), 2u);
  CHECK(c.Take().empty());
  c.Send(PacketType::kResponse, 8, 0, 3, 3);
  events = c.Take();
  CHECK(events.size() == 1 && events[0].kind == EventKind::kResponse && events[0].id == 100 &&
        events[0].code == 0 && events[0].bytes == Pattern(3, 9));
  c.Send(PacketType::kResponse, 8, 0, 3, 3);  // duplicate after completion
  CHECK_EQ(DropCount(c.endpoint, DropReason::kStale), 3u);
  CHECK(c.Take().empty());
  CHECK_LINES(c.io, {});
}

TEST(transport_client_credits_multi_packet_and_go_back_n) {
  EndpointConfig config = SmallPackets();
  config.credits_per_session = 2;
  Client c(config);
  c.Accept();
  c.Take();
  c.io.Take();
  CHECK(c.endpoint.Call(c.session, 1, 7, Pattern(500, 1), 0, 1000) == CallStatus::kOk);
  // Before the session's first RTT sample a slot has one packet in flight (initial window).
  CHECK_LINES(c.io, {"REQ s=55 r=8 p=0 m=500 a=0 len=208"});
  c.Send(PacketType::kCreditReturn, 8, 1, 0, 0, 1050);  // not sent yet: dropped
  CHECK_EQ(DropCount(c.endpoint, DropReason::kStale), 1u);
  // Its answer is the first sample: the window opens to the credits. Two credits: two request
  // packets go out, the third waits for a credit return.
  c.Send(PacketType::kCreditReturn, 8, 0, 0, 0, 1100);
  CHECK_LINES(c.io, {"REQ s=55 r=8 p=1 m=500 a=0 len=208", "REQ s=55 r=8 p=2 m=500 a=0 len=84"});
  c.Send(PacketType::kCreditReturn, 8, 1, 0, 0, 1200);
  CHECK_LINES(c.io, {});
  // Response packet 0 (answering REQ 2) says 300 bytes = 2 packets: one RFR pulls the rest.
  c.Send(PacketType::kResponse, 8, 2, 300, 208, 1300);
  CHECK_LINES(c.io, {"RFR s=55 r=8 p=3 m=500 a=0 len=0"});
  c.Send(PacketType::kResponse, 8, 3, 300, 92, 1400);
  auto events = c.Take();
  CHECK(events.size() == 1 && events[0].bytes.size() == 300 && events[0].id == 7);
  // Go-Back-N: nothing answers, the timeout rolls back to the first unanswered packet.
  CHECK(c.endpoint.Call(c.session, 1, 8, Pattern(500, 2), 0, 2000) == CallStatus::kOk);
  CHECK_LINES(c.io, {"REQ s=55 r=16 p=0 m=500 a=0 len=208", "REQ s=55 r=16 p=1 m=500 a=0 len=208"});
  c.Send(PacketType::kCreditReturn, 16, 0, 0, 0, 2100);
  CHECK_LINES(c.io, {"REQ s=55 r=16 p=2 m=500 a=0 len=84"});
  // Adaptive RTO: the handshake and the answers so far took ~100 µs, so srtt + 4 x rttvar is
  // below the floor and the RTO is retransmit_timeout_min_us. The session's one timer entry,
  // armed when the call started, finds progress at 2,100 µs, moves itself to 2,100 + RTO and
  // rolls the slot back exactly then.
  const uint64_t rto = c.endpoint.SessionRtoUs(c.session);
  CHECK_EQ(rto, config.retransmit_timeout_min_us);
  CHECK(c.endpoint.SessionSrttUs(c.session) > 0 && c.endpoint.SessionSrttUs(c.session) < 200);
  c.RunTimersUntil(2100 + rto - 1);
  CHECK_EQ(c.endpoint.stats().retransmissions, 0u);
  // RTO probe: the expiry resends only the first unanswered packet; packet 2 stays in flight
  // (the peer may only have been descheduled, with the window in its socket buffer).
  c.RunTimersUntil(2100 + rto);
  CHECK_EQ(c.endpoint.stats().rto_probes, 1u);
  CHECK_EQ(c.endpoint.stats().rollbacks, 0u);
  CHECK_EQ(c.endpoint.stats().retransmissions, 1u);
  CHECK_LINES(c.io, {"REQ s=55 r=16 p=1 m=500 a=0 len=208"});
  // Backoff: the next expiry waits twice as long, until a fresh sample arrives; with still no
  // answer at all it probes again (the same one packet).
  CHECK_EQ(c.endpoint.SessionRtoUs(c.session), 2 * rto);
  const uint64_t second = 2100 + rto + 2 * rto;
  c.RunTimersUntil(second - 1);
  CHECK_EQ(c.endpoint.stats().retransmissions, 1u);
  c.RunTimersUntil(second);
  CHECK_EQ(c.endpoint.stats().rto_probes, 2u);
  CHECK_LINES(c.io, {"REQ s=55 r=16 p=1 m=500 a=0 len=208"});
  CHECK_EQ(c.endpoint.SessionRtoUs(c.session), 4 * rto);
  // The answer to packet 1 (from either copy) is in order: accepted, and packet 2 is not resent.
  c.Send(PacketType::kCreditReturn, 16, 1, 0, 0, second + 100);
  CHECK_LINES(c.io, {});
  // No sample from a resent packet (Karn), but the answer ends the backoff: the peer is alive.
  CHECK_EQ(c.endpoint.SessionRtoUs(c.session), rto);
  // Packet 2 stays unanswered for an RTO: the answers stopped partway through the window that
  // was out at the probe, so the rest was lost. Go-Back-N resends from packet 2.
  c.RunTimersUntil(second + 100 + rto - 1);
  CHECK_EQ(c.endpoint.stats().rollbacks, 0u);
  c.RunTimersUntil(second + 100 + rto);
  CHECK_EQ(c.endpoint.stats().rollbacks, 1u);
  CHECK_EQ(c.endpoint.stats().retransmissions, 3u);
  CHECK_LINES(c.io, {"REQ s=55 r=16 p=2 m=500 a=0 len=84"});
  c.Send(PacketType::kResponse, 16, 2, 0, 0, second + 200 + rto);
  events = c.Take();
  CHECK(events.size() == 1 && events[0].id == 8 && events[0].bytes.empty());
}

TEST(transport_client_deadlines_fail_running_and_queued_calls) {
  EndpointConfig config = SmallPackets();
  config.slots_per_session = 1;
  config.retransmit_timeout_min_us = config.retransmit_timeout_us;  // no rollback before 6 ms
  Client c(config);
  c.Accept();
  c.Take();
  CHECK(c.endpoint.Call(c.session, 1, 1, Pattern(4, 1), 5000, 1000) == CallStatus::kOk);
  CHECK(c.endpoint.Call(c.session, 1, 2, Pattern(4, 1), 3000, 1000) == CallStatus::kOk);
  c.io.Take();
  c.RunTimersUntil(4000);  // the queued call's deadline passes first
  auto events = c.Take();
  CHECK(events.size() == 1 && events[0].id == 2 &&
        events[0].code == static_cast<uint8_t>(CallStatus::kTimeout));
  c.RunTimersUntil(6000);
  events = c.Take();
  CHECK(events.size() == 1 && events[0].id == 1 &&
        events[0].code == static_cast<uint8_t>(CallStatus::kTimeout));
  // The slot moved on: the next call uses the next request number and the late response of
  // the timed-out one is dropped.
  CHECK(c.endpoint.Call(c.session, 1, 3, Pattern(4, 1), 0, 6000) == CallStatus::kOk);
  CHECK_LINES(c.io, {"REQ s=55 r=2 p=0 m=4 a=0 len=4"});
  c.Send(PacketType::kResponse, 1, 0, 0, 0, 6100);
  CHECK(c.Take().empty());
  CHECK(c.endpoint.Call(c.session, 1, 4, Pattern(300, 1), 0, 6000) == CallStatus::kOk);
  CHECK(c.endpoint.Call(99, 1, 5, Pattern(1, 1), 0, 6000) == CallStatus::kUnknownSession);
  std::vector<uint8_t> huge((8u << 20) + 1);
  CHECK(c.endpoint.Call(c.session, 1, 6, huge, 0, 6000) == CallStatus::kTooLarge);
}

TEST(transport_client_declares_silent_peer_failed_and_fails_pending) {
  EndpointConfig config = SmallPackets();
  config.peer_failure_timeout_us = 400'000;
  Client c(config);
  c.Accept();
  c.Take();
  CHECK(c.endpoint.Call(c.session, 1, 1, Pattern(4, 1), 0, 1000) == CallStatus::kOk);
  CHECK(c.endpoint.Call(c.session, 1, 2, Pattern(4, 1), 0, 1000) == CallStatus::kOk);
  c.io.Take();
  c.RunTimersUntil(399'000);
  CHECK(c.Take().empty());
  const Lines sent = c.io.Take();
  size_t pings = 0;
  for (const auto& l : sent) pings += l.rfind("PING", 0) == 0 ? 1 : 0;
  CHECK(pings >= 2);  // keepalives asked the peer for a sign of life
  CHECK(c.endpoint.stats().retransmissions >= 10);
  c.RunTimersUntil(400'200);
  auto events = c.Take();
  CHECK_EQ(events.size(), 3u);
  size_t failed_calls = 0;
  bool session_event = false;
  for (auto& e : events) {
    if (e.kind == EventKind::kResponse && e.code == static_cast<uint8_t>(CallStatus::kPeerFailed))
      ++failed_calls;
    if (e.kind == EventKind::kSession &&
        e.code == static_cast<uint8_t>(SessionEventKind::kPeerFailed))
      session_event = true;
  }
  CHECK_EQ(failed_calls, 2u);
  CHECK(session_event);
  CHECK_EQ(c.endpoint.stats().sessions_client, 0u);
}

TEST(transport_client_connect_times_out_or_is_refused) {
  EndpointConfig config = SmallPackets();
  config.connect_timeout_us = 200'000;
  Client c(config);
  c.RunTimersUntil(199'000);
  CHECK(c.io.Take().size() >= 4);  // retried every connect_retry_us
  c.RunTimersUntil(200'000);
  auto events = c.Take();
  CHECK(events.size() == 1 && events[0].code == static_cast<uint8_t>(
                                                    SessionEventKind::kConnectFailed) &&
        events[0].id == static_cast<uint64_t>(ConnectError::kTimedOut));
  Client refused(config);
  Header h;
  h.type = PacketType::kConnectResponse;
  h.dest_session = refused.session;
  h.aux = kNoSession;
  h.message_bytes = static_cast<uint32_t>(ConnectError::kTooManySessions);
  h.request_number = refused.token;
  refused.endpoint.OnPacket(refused.server, Packet(h), 10);
  events = refused.Take();
  CHECK(events.size() == 1 && events[0].id == static_cast<uint64_t>(
                                                  ConnectError::kTooManySessions));
}

TEST(transport_session_management_packets_ping_disconnect_and_late_connect_response) {
  // Server side: PING is answered with PONG; DISCONNECT ends the session and is answered even
  // when repeated (the first answer may have been lost).
  Server s;
  s.io.Take();
  Header ping;
  ping.type = PacketType::kPing;
  ping.dest_session = s.session;
  s.endpoint.OnPacket(s.client, Packet(ping), 1);
  CHECK_LINES(s.io, {"PONG s=77 r=0 p=0 m=0 a=0 len=0"});
  Header bye;
  bye.type = PacketType::kDisconnectRequest;
  bye.dest_session = s.session;
  bye.aux = 77;
  bye.request_number = 0xABCD;
  s.endpoint.OnPacket(s.client, Packet(bye), 2);
  CHECK_LINES(s.io, {"DISCONNECT_RESP s=77 r=43981 p=0 m=0 a=0 len=0"});
  auto events = s.Take();
  CHECK(events.size() == 1 && events[0].code == static_cast<uint8_t>(SessionEventKind::kDisconnected));
  CHECK_EQ(s.endpoint.stats().sessions_server, 0u);
  s.endpoint.OnPacket(s.client, Packet(bye), 3);
  CHECK_LINES(s.io, {"DISCONNECT_RESP s=77 r=43981 p=0 m=0 a=0 len=0"});
  CHECK(s.Take().empty());

  // Client side: a duplicate connect response after connecting is dropped; disconnect fails
  // the pending call, sends DISCONNECT and completes on DISCONNECT_RESP.
  Client c;
  c.Accept();
  c.Take();
  c.Accept();
  CHECK_EQ(DropCount(c.endpoint, DropReason::kDuplicate), 1u);
  CHECK(c.Take().empty());
  CHECK(c.endpoint.Call(c.session, 1, 42, Pattern(4, 1), 0, 300) == CallStatus::kOk);
  c.io.Take();
  CHECK(c.endpoint.Disconnect(c.session, 400));
  CHECK_LINES(c.io, {"DISCONNECT s=55 r=" + std::to_string(c.token) + " p=0 m=0 a=1 len=0"});
  events = c.Take();
  CHECK(events.size() == 1 && events[0].id == 42 &&
        events[0].code == static_cast<uint8_t>(CallStatus::kSessionClosed));
  Header done;
  done.type = PacketType::kDisconnectResponse;
  done.dest_session = c.session;
  done.request_number = c.token;
  c.endpoint.OnPacket(c.server, Packet(done), 500);
  events = c.Take();
  CHECK(events.size() == 1 && events[0].code == static_cast<uint8_t>(SessionEventKind::kDisconnected));
  CHECK(!c.endpoint.Disconnect(c.session, 600));  // gone
  CHECK_EQ(c.endpoint.stats().sessions_client, 0u);
}

TEST(transport_server_forgets_a_silent_client_and_closing_server_tells_clients) {
  Server s;
  s.io.Take();
  // Default failure timeout 2 s: nothing heard from the client -> the session is dropped.
  while (s.endpoint.NextTimerUs() <= 2'100'000) s.endpoint.OnTimers(s.endpoint.NextTimerUs());
  auto events = s.Take();
  CHECK(events.size() == 1 && events[0].code == static_cast<uint8_t>(SessionEventKind::kPeerFailed));
  CHECK_EQ(s.endpoint.stats().sessions_server, 0u);
  Server closing;
  closing.io.Take();
  closing.endpoint.Shutdown(true, 10);
  CHECK_LINES(closing.io, {"DISCONNECT_RESP s=77 r=43981 p=0 m=0 a=1 len=0"});
  Client c;
  c.Accept();
  c.Take();
  CHECK(c.endpoint.Call(c.session, 1, 9, Pattern(4, 1), 0, 300) == CallStatus::kOk);
  c.Take();
  Header told;
  told.type = PacketType::kDisconnectResponse;
  told.dest_session = c.session;
  told.aux = 1;
  told.request_number = c.token;
  c.endpoint.OnPacket(c.server, Packet(told), 400);
  events = c.Take();
  CHECK_EQ(events.size(), 2u);  // the call fails at once, then the session ends
  CHECK(events.size() == 2 && events[0].code == static_cast<uint8_t>(CallStatus::kSessionClosed));
}
