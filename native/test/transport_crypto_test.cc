// Encryption in the endpoint (eeRPC issue), on an in-memory wire in virtual time: the same key
// talks and nothing readable crosses the wire; a wrong key or a plaintext peer is refused with an
// event on both sides; flipped bits, truncation, forgery and replay are dropped and counted and
// never reach a handler; sequence numbers never repeat under one key through heavy loss; a
// re-created session has fresh keys; rekeying and group-key rotation under traffic drop nothing.
#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <tuple>

#include "crypto_test_support.h"
#include "test.h"
#include "transport_support.h"

using namespace squall::test;
using namespace squall::transport;
using squall::crypto::testing::MakeGroupKey;

namespace {

struct Datagram {
  PeerAddress from, to;
  std::vector<uint8_t> bytes;
};

// Two endpoints over a lossy in-memory wire. Every datagram is recorded as sent (before loss),
// and `hold` lets a test take packets off the wire instead of delivering them.
struct Net {
  class Port : public PacketIo {
   public:
    Port(Net* net, PeerAddress self) : net_(net), self_(self) {}
    void Send(const PeerAddress& to, std::span<const uint8_t> header,
              std::span<const uint8_t> payload) override {
      Settle();
      Datagram d{self_, to, std::vector<uint8_t>(header.begin(), header.end())};
      d.bytes.insert(d.bytes.end(), payload.begin(), payload.end());
      net_->Push(std::move(d));
    }
    // With net.reserve, large sealed datagrams are written straight into a buffer of ours (as
    // into UdpSocket's send batch); it goes on the wire at our next call or the next step.
    uint8_t* Reserve(const PeerAddress& to, size_t bytes) override {
      if (!net_->reserve) return nullptr;
      Settle();
      pending_ = Datagram{self_, to, std::vector<uint8_t>(bytes, 0xEE)};
      has_pending_ = true;
      ++net_->reserved;
      return pending_.bytes.data();
    }
    void Unreserve() override {
      has_pending_ = false;
      --net_->reserved;
    }
    void Settle() {
      if (has_pending_) net_->Push(std::move(pending_));
      has_pending_ = false;
    }

   private:
    Net* net_;
    PeerAddress self_;
    Datagram pending_;
    bool has_pending_ = false;
  };

  PeerAddress client_address = Addr("10.0.0.1:1000");
  PeerAddress server_address = Addr("10.0.0.2:2000");
  Port client_port{this, client_address};
  Port server_port{this, server_address};
  Endpoint client;
  Endpoint server;
  double loss = 0;
  bool reserve = false;   // ports offer PacketIo::Reserve
  uint64_t reserved = 0;  // datagrams written through it
  std::mt19937_64 rng{99};
  std::deque<Datagram> queue;
  std::vector<Datagram> sent;  // everything either side sent, in order
  std::function<bool(const Datagram&)> hold;  // true: keep it in `held`, do not deliver
  std::vector<Datagram> held;
  uint64_t now_us = 0;
  std::vector<Event> client_events, server_events;
  std::map<uint64_t, std::vector<uint8_t>> responses;  // tag -> bytes
  uint64_t handler_runs = 0;
  std::vector<Event>* kept_requests = nullptr;  // set: request events are kept here (answered)

  Net(const EndpointConfig& client_config, const EndpointConfig& server_config)
      : client(client_config, &client_port), server(server_config, &server_port) {
    server.SetHandled(3, true);
  }
  void Push(Datagram d) {
    sent.push_back(d);
    if (loss > 0 && std::uniform_real_distribution<double>(0, 1)(rng) < loss) return;
    queue.push_back(std::move(d));
  }
  void Deliver(const Datagram& d) {
    Endpoint* to = d.to == client_address ? &client : &server;
    to->OnPacket(d.from, d.bytes, now_us);
  }
  void Step() {
    std::vector<Event> events;
    server.TakeEvents(&events);
    for (auto& e : events) {
      if (e.kind == EventKind::kRequest) {
        ++handler_runs;
        std::vector<uint8_t> answer(e.bytes.rbegin(), e.bytes.rend());
        server.Respond({e.session, e.slot, e.id}, CallStatus::kOk, answer, now_us);
        if (kept_requests != nullptr) kept_requests->push_back(std::move(e));
      } else {
        server_events.push_back(std::move(e));
      }
    }
    events.clear();
    client.TakeEvents(&events);
    for (auto& e : events) {
      if (e.kind == EventKind::kResponse && e.code == 0) responses[e.id].assign(e.bytes.begin(), e.bytes.end());
      client_events.push_back(std::move(e));
    }
  }
  // Runs until `done` holds or the virtual time budget is spent; 5 µs per delivered packet.
  bool RunUntil(uint64_t until_us, const std::function<bool()>& done) {
    while (now_us < until_us) {
      client_port.Settle();
      server_port.Settle();
      Step();
      if (done()) return true;
      if (!queue.empty()) {
        Datagram d = std::move(queue.front());
        queue.pop_front();
        if (hold && hold(d)) {
          held.push_back(std::move(d));
        } else {
          Deliver(d);
        }
        now_us += 5;
      } else {
        const uint64_t next = std::min(client.NextTimerUs(), server.NextTimerUs());
        if (next == UINT64_MAX) {
          Step();
          return done();
        }
        now_us = std::max(now_us + 1, next);
      }
      client.OnTimers(now_us);
      server.OnTimers(now_us);
    }
    return false;
  }
  uint32_t Connect() {
    const uint32_t session = client.Connect(server_address, now_us);
    RunUntil(now_us + 5'000'000, [&] { return client.SessionIsConnected(session); });
    return session;
  }
  bool HasEvent(const std::vector<Event>& events, SessionEventKind kind) const {
    return std::any_of(events.begin(), events.end(), [&](const Event& e) {
      return e.kind == EventKind::kSession && e.code == static_cast<uint8_t>(kind);
    });
  }
  const Event* FindEvent(const std::vector<Event>& events, SessionEventKind kind) const {
    for (const Event& e : events) {
      if (e.kind == EventKind::kSession && e.code == static_cast<uint8_t>(kind)) return &e;
    }
    return nullptr;
  }
};

EndpointConfig Encrypted(std::vector<squall::crypto::GroupKey> keys, bool forward_secrecy = true) {
  EndpointConfig c;
  c.packet_bytes_max = 1024;
  c.retransmit_timeout_us = 2000;
  c.retransmit_timeout_min_us = 1000;
  c.peer_failure_timeout_us = 60'000'000;
  c.connect_timeout_us = 30'000'000;
  c.connect_retry_us = 5000;
  c.encryption.enabled = true;
  c.encryption.keys = std::move(keys);
  c.encryption.forward_secrecy = forward_secrecy;
  return c;
}

std::vector<uint8_t> Marked(size_t bytes, uint8_t seed) {
  // A recognisable pattern, so a test can tell whether plaintext crossed the wire.
  std::vector<uint8_t> out(bytes);
  for (size_t i = 0; i < bytes; ++i) out[i] = static_cast<uint8_t>(0xA0 ^ seed ^ (i * 13));
  return out;
}

bool Contains(const std::vector<uint8_t>& haystack, const std::vector<uint8_t>& needle) {
  return std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end()) !=
         haystack.end();
}

uint64_t Drops(const Endpoint& e, DropReason r) { return e.stats().drops[static_cast<size_t>(r)]; }

Header HeaderOf(const Datagram& d) {
  Header h;
  Decode(d.bytes, &h);
  return h;
}

uint64_t SequenceOf(const Datagram& d) {
  const uint8_t* trailer = d.bytes.data() + d.bytes.size() - kSealTrailerBytes;
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | trailer[i];
  return v;
}

std::string Text(const Event& e) { return std::string(e.bytes.begin(), e.bytes.end()); }
}  // namespace

TEST(crypto_transport_same_key_talks_and_nothing_readable_crosses_the_wire) {
  Net net(Encrypted({MakeGroupKey(1, 0x11)}), Encrypted({MakeGroupKey(1, 0x11)}));
  const uint32_t session = net.Connect();
  CHECK(net.client.SessionIsConnected(session));
  CHECK(net.HasEvent(net.server_events, SessionEventKind::kAccepted));
  std::vector<std::vector<uint8_t>> requests;
  for (uint64_t tag = 1; tag <= 20; ++tag) {
    requests.push_back(Marked(tag % 4 == 0 ? 5000 : 40 + tag, static_cast<uint8_t>(tag)));
    CHECK(net.client.Call(session, 3, tag, requests.back(), 0, net.now_us) == CallStatus::kOk);
  }
  CHECK(net.RunUntil(net.now_us + 5'000'000, [&] { return net.responses.size() == 20; }));
  for (uint64_t tag = 1; tag <= 20; ++tag) {
    const auto& request = requests[tag - 1];
    CHECK(net.responses[tag] == std::vector<uint8_t>(request.rbegin(), request.rend()));
  }
  // Every packet but the handshake is sealed, and no 32-byte run of any request or response
  // appears on the wire.
  size_t sealed = 0;
  for (const Datagram& d : net.sent) {
    const Header h = HeaderOf(d);
    const bool handshake = (h.type == PacketType::kConnectRequest ||
                            h.type == PacketType::kConnectResponse ||
                            h.type == PacketType::kConnectConfirm) &&
                           (h.flags & kFlagEncrypted) == 0;
    CHECK(handshake || (h.flags & kFlagEncrypted) != 0);
    if (!handshake) ++sealed;
    for (const auto& request : requests) {
      const std::vector<uint8_t> run(request.begin() + 8, request.begin() + 40);
      CHECK(!Contains(d.bytes, run));
      CHECK(!Contains(d.bytes, std::vector<uint8_t>(run.rbegin(), run.rend())));
    }
  }
  CHECK(sealed >= 40);
  const SecurityStats cs = net.client.security_stats();
  const SecurityStats ss = net.server.security_stats();
  CHECK(cs.enabled && ss.enabled);
  CHECK_EQ(cs.crypto.sealed_packets, ss.crypto.opened_packets);
  CHECK_EQ(ss.crypto.sealed_packets, cs.crypto.opened_packets);
  CHECK_EQ(cs.crypto.handshake_ok, 1u);
  CHECK_EQ(ss.crypto.handshake_ok, 1u);
  CHECK_EQ(net.client.stats().DropsTotal() + net.server.stats().DropsTotal(), 0u);
  // A sealed packet keeps within the session's datagram limit.
  for (const Datagram& d : net.sent) CHECK(d.bytes.size() <= 1024);
}

TEST(crypto_transport_wrong_key_is_refused_on_both_sides) {
  // Same key id, different secret: the server's MAC check fails.
  Net net(Encrypted({MakeGroupKey(1, 0x11)}), Encrypted({MakeGroupKey(1, 0x99)}));
  const uint32_t session = net.client.Connect(net.server_address, 0);
  net.RunUntil(1'000'000, [&] { return !net.client_events.empty(); });
  const Event* failed = net.FindEvent(net.client_events, SessionEventKind::kConnectFailed);
  CHECK(failed != nullptr);
  if (failed != nullptr) {
    CHECK_EQ(failed->session, session);
    CHECK_EQ(failed->id, static_cast<uint64_t>(ConnectError::kAuthenticationFailed));
    CHECK(Text(*failed).find("does not hold the group key") != std::string::npos);
  }
  const Event* refused = net.FindEvent(net.server_events, SessionEventKind::kRefused);
  CHECK(refused != nullptr);
  if (refused != nullptr) {
    CHECK(Text(*refused).find("10.0.0.1:1000") != std::string::npos);
    CHECK(Text(*refused).find("does not hold the group key") != std::string::npos);
  }
  CHECK(!net.HasEvent(net.server_events, SessionEventKind::kAccepted));
  CHECK_EQ(net.server.stats().sessions_opened, 0u);
  CHECK_EQ(net.server.security_stats().crypto.handshake_bad_mac, 1u);
  CHECK_EQ(net.server.security_stats().endpoint.handshakes_refused, 1u);
  CHECK_EQ(net.client.stats().sessions_client, 0u);

  // A key id the server does not hold at all.
  Net other(Encrypted({MakeGroupKey(7, 0x11)}), Encrypted({MakeGroupKey(1, 0x11)}));
  other.client.Connect(other.server_address, 0);
  other.RunUntil(1'000'000, [&] { return !other.client_events.empty(); });
  const Event* unknown = other.FindEvent(other.client_events, SessionEventKind::kConnectFailed);
  CHECK(unknown != nullptr && Text(*unknown).find("key id") != std::string::npos);
  CHECK(other.HasEvent(other.server_events, SessionEventKind::kRefused));
}

TEST(crypto_transport_plaintext_and_encrypting_peers_refuse_each_other) {
  EndpointConfig plain = Encrypted({});
  plain.encryption.enabled = false;
  for (int encrypted_server = 0; encrypted_server < 2; ++encrypted_server) {
    Net net(encrypted_server ? plain : Encrypted({MakeGroupKey(1, 0x11)}),
            encrypted_server ? Encrypted({MakeGroupKey(1, 0x11)}) : plain);
    net.client.Connect(net.server_address, 0);
    net.RunUntil(1'000'000, [&] { return !net.client_events.empty(); });
    const Event* failed = net.FindEvent(net.client_events, SessionEventKind::kConnectFailed);
    CHECK(failed != nullptr &&
          failed->id == static_cast<uint64_t>(ConnectError::kEncryptionMismatch));
    const Event* refused = net.FindEvent(net.server_events, SessionEventKind::kRefused);
    CHECK(refused != nullptr && Text(*refused).find("encrypt") != std::string::npos);
    CHECK_EQ(net.server.stats().sessions_opened, 0u);
  }
}

TEST(crypto_transport_flipped_bits_truncation_forgery_and_replay_are_dropped_and_counted) {
  Net net(Encrypted({MakeGroupKey(1, 0x11)}), Encrypted({MakeGroupKey(1, 0x11)}));
  const uint32_t session = net.Connect();
  // Take the client's request off the wire before the server sees it.
  net.hold = [&](const Datagram& d) { return HeaderOf(d).type == PacketType::kRequest; };
  const std::vector<uint8_t> request = Marked(100, 1);
  CHECK(net.client.Call(session, 3, 1, request, 0, net.now_us) == CallStatus::kOk);
  net.RunUntil(net.now_us + 100, [&] { return !net.held.empty(); });
  CHECK_EQ(net.held.size(), 1u);
  if (net.held.empty()) return;
  const Datagram original = net.held[0];
  net.hold = nullptr;
  auto deliver = [&](std::vector<uint8_t> bytes) {
    net.server.OnPacket(net.client_address, bytes, net.now_us);
    net.Step();
  };
  // Every single flipped bit: dropped, counted, no handler, no answer.
  const uint64_t drops_before = net.server.stats().DropsTotal();
  const size_t sent_before = net.sent.size();
  const size_t bits = original.bytes.size() * 8;
  for (size_t bit = 0; bit < bits; ++bit) {
    std::vector<uint8_t> bytes = original.bytes;
    bytes[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    deliver(bytes);
  }
  CHECK_EQ(net.server.stats().DropsTotal() - drops_before, bits);
  CHECK_EQ(net.handler_runs, 0u);
  CHECK_EQ(net.sent.size(), sent_before);
  // Flips in the body, trailer or authenticated header fields fail the tag.
  CHECK(net.server.security_stats().crypto.drop_bad_tag > original.bytes.size() * 8 / 2);
  // Every truncation: dropped.
  for (size_t length = 0; length < original.bytes.size(); ++length) {
    deliver(std::vector<uint8_t>(original.bytes.begin(), original.bytes.begin() + length));
  }
  CHECK_EQ(net.server.stats().DropsTotal() - drops_before, bits + original.bytes.size());
  // A forgery: a well-formed header for the live session with a made-up body and trailer.
  std::vector<uint8_t> forged = original.bytes;
  for (size_t i = kHeaderBytes; i < forged.size(); ++i) forged[i] = static_cast<uint8_t>(i * 31);
  deliver(forged);
  // The header without the sealed flag (a plaintext packet for an encrypted session).
  std::vector<uint8_t> unsealed(original.bytes.begin(), original.bytes.begin() + kHeaderBytes);
  unsealed.insert(unsealed.end(), request.begin(), request.end());
  unsealed.at(4) = 0;
  deliver(unsealed);
  CHECK(Drops(net.server, DropReason::kUnsealed) >= 1);
  CHECK_EQ(net.handler_runs, 0u);
  // The untouched packet is accepted exactly once; its replay is dropped as a replay.
  deliver(original.bytes);
  CHECK_EQ(net.handler_runs, 1u);
  const uint64_t replays = net.server.security_stats().crypto.drop_replay;
  deliver(original.bytes);
  CHECK_EQ(net.server.security_stats().crypto.drop_replay, replays + 1);
  CHECK_EQ(net.handler_runs, 1u);
  // The session still serves, and the endpoint never aborted.
  CHECK(net.RunUntil(net.now_us + 1'000'000, [&] { return net.responses.size() == 1; }));
  CHECK(net.responses[1] == std::vector<uint8_t>(request.rbegin(), request.rend()));
}

TEST(crypto_transport_a_sealed_batch_carries_many_packets_under_one_tag) {
  Net net(Encrypted({MakeGroupKey(1, 0x11)}), Encrypted({MakeGroupKey(1, 0x11)}));
  const uint32_t session = net.Connect();
  net.hold = [&](const Datagram& d) { return HeaderOf(d).type == PacketType::kRequest; };
  // Eight calls submitted in one batch (as the addon does per submission): one datagram.
  const uint64_t seals = net.client.security_stats().crypto.sealed_packets;
  net.client.BeginBatch();
  for (uint64_t tag = 1; tag <= 8; ++tag) {
    CHECK(net.client.Call(session, 3, tag, Marked(40, static_cast<uint8_t>(tag)), 0,
                          net.now_us) == CallStatus::kOk);
  }
  CHECK(net.held.empty() && net.queue.empty());  // nothing leaves before the batch ends
  net.client.EndBatch();
  net.RunUntil(net.now_us + 100, [&] { return !net.held.empty(); });
  CHECK_EQ(net.held.size(), 1u);
  if (net.held.empty()) return;
  const Datagram batch = net.held[0];
  net.hold = nullptr;
  CHECK((HeaderOf(batch).flags & (kFlagBatch | kFlagEncrypted)) == (kFlagBatch | kFlagEncrypted));
  CHECK_EQ(net.client.security_stats().crypto.sealed_packets, seals + 1);
  CHECK_EQ(net.client.stats().sealed_batches, 1u);
  CHECK_EQ(net.client.stats().sealed_batch_packets, 8u);
  auto deliver = [&](std::vector<uint8_t> bytes) {
    net.server.OnPacket(net.client_address, bytes, net.now_us);
    net.Step();
  };
  // Any flipped bit or truncation: the whole batch is dropped, no handler runs.
  const uint64_t drops_before = net.server.stats().DropsTotal();
  for (size_t bit = 0; bit < batch.bytes.size() * 8; ++bit) {
    std::vector<uint8_t> bytes = batch.bytes;
    bytes[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    deliver(bytes);
  }
  for (size_t length = 0; length < batch.bytes.size(); ++length) {
    deliver(std::vector<uint8_t>(batch.bytes.begin(), batch.bytes.begin() + length));
  }
  CHECK_EQ(net.server.stats().DropsTotal() - drops_before, batch.bytes.size() * 9);
  CHECK_EQ(net.handler_runs, 0u);
  // A batch flag without the sealed flag is malformed.
  std::vector<uint8_t> unsealed = batch.bytes;
  unsealed.at(4) = kFlagBatch;
  const uint64_t bad_flags = Drops(net.server, DropReason::kBadFlags);
  deliver(unsealed);
  CHECK_EQ(Drops(net.server, DropReason::kBadFlags), bad_flags + 1);
  // The untouched batch runs all eight handlers once; a replay of it runs none.
  deliver(batch.bytes);
  CHECK_EQ(net.handler_runs, 8u);
  deliver(batch.bytes);
  CHECK_EQ(net.handler_runs, 8u);
  CHECK(net.RunUntil(net.now_us + 1'000'000, [&] { return net.responses.size() == 8; }));
  CHECK(net.responses[8] == [] {
    std::vector<uint8_t> m = Marked(40, 8);
    return std::vector<uint8_t>(m.rbegin(), m.rend());
  }());
}

TEST(crypto_transport_large_packets_seal_into_the_send_batch_and_open_into_the_request) {
  // Off loopback the path caps packets at 1,472 bytes (1,416 of data each).
  EndpointConfig config = Encrypted({MakeGroupKey(1, 0x11)});
  config.packet_bytes_max = 9000;
  Net net(config, config);
  net.reserve = true;
  const uint32_t session = net.Connect();
  // A small call first: its answer is the session's first RTT sample, which opens the window
  // (before it a slot has one packet in flight) so the large request goes out whole.
  CHECK(net.client.Call(session, 3, 100, Marked(10, 1), 0, net.now_us) == CallStatus::kOk);
  CHECK(net.RunUntil(net.now_us + 1'000'000, [&] { return net.responses.count(100) == 1; }));
  const uint64_t runs_before = net.handler_runs;
  net.hold = [&](const Datagram& d) { return HeaderOf(d).type == PacketType::kRequest; };
  const std::vector<uint8_t> request = Marked(8200, 5);  // 6 packets, each sealed > 1 KiB
  const uint64_t reserved_before = net.reserved;
  CHECK(net.client.Call(session, 3, 1, request, 0, net.now_us) == CallStatus::kOk);
  net.RunUntil(net.now_us + 1000, [&] { return net.held.size() == 6; });
  CHECK_EQ(net.held.size(), 6u);
  if (net.held.size() != 6) return;
  net.hold = nullptr;
  // Every request packet was sealed straight into the I/O's buffer, and is ciphertext.
  CHECK_EQ(net.reserved - reserved_before, 6u);
  CHECK_EQ(net.client.stats().sealed_into_send_batch, 6u);
  const std::vector<uint8_t> marker(request.begin() + 1500, request.begin() + 1564);
  for (const Datagram& d : net.held) {
    CHECK(d.bytes.size() > 1024);
    CHECK(!Contains(d.bytes, marker));
  }
  auto deliver = [&](std::vector<uint8_t>& bytes) {
    net.server.OnPacket(net.client_address, bytes, net.now_us);
    net.Step();
  };
  // Packet 0 starts the request: opened in place (its buffer now holds plaintext).
  std::vector<uint8_t> first = net.held[0].bytes;
  deliver(first);
  CHECK(first != net.held[0].bytes);
  // Packet 1 would be opened straight into the request's buffer. Tampered copies (every 97th
  // bit, and every bit of the header and trailer) are refused and counted, and whatever they
  // decrypted into the not-yet-accepted part of the buffer is overwritten by the genuine one.
  const Datagram& second = net.held[1];
  const uint64_t drops_before = net.server.stats().DropsTotal();
  const uint64_t bad_tags = net.server.security_stats().crypto.drop_bad_tag;
  uint64_t tampered = 0;
  const size_t bits = second.bytes.size() * 8;
  for (size_t bit = 0; bit < bits; ++bit) {
    const bool edge = bit < kHeaderBytes * 8 || bit >= (second.bytes.size() - kSealTrailerBytes) * 8;
    if (!edge && bit % 97 != 0) continue;
    std::vector<uint8_t> bytes = second.bytes;
    bytes[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    deliver(bytes);
    ++tampered;
  }
  CHECK_EQ(net.server.stats().DropsTotal() - drops_before, tampered);
  CHECK(net.server.security_stats().crypto.drop_bad_tag - bad_tags > tampered / 2);
  CHECK_EQ(net.handler_runs, runs_before);
  // The genuine packet 1 is opened out of place: its datagram buffer keeps the ciphertext.
  std::vector<uint8_t> genuine = second.bytes;
  CHECK_EQ(net.server.stats().opened_into_message, 0u);
  deliver(genuine);
  CHECK(genuine == second.bytes);
  CHECK_EQ(net.server.stats().opened_into_message, 1u);
  // Its replay is refused before decryption.
  const uint64_t replays = net.server.security_stats().crypto.drop_replay;
  deliver(genuine);
  CHECK_EQ(net.server.security_stats().crypto.drop_replay, replays + 1);
  // Packet 3 before packet 2 (a gap): refused by Go-Back-N after opening, nothing accepted.
  std::vector<uint8_t> early = net.held[3].bytes;
  deliver(early);
  for (size_t i = 2; i < 6; ++i) {
    std::vector<uint8_t> bytes = net.held[i].bytes;
    // Packet 3 was opened once already (as the early one): its sequence is now a replay, so the
    // client's Go-Back-N retransmission (a fresh seal) has to bring it (4 and 5 are then gaps).
    if (i == 3) continue;
    deliver(bytes);
  }
  CHECK(net.RunUntil(net.now_us + 2'000'000, [&] { return net.responses.count(1) == 1; }));
  CHECK_EQ(net.handler_runs, runs_before + 1);
  CHECK(net.responses[1] == std::vector<uint8_t>(request.rbegin(), request.rend()));
  // Request packets 2-5 went straight into the request too (3-5 as resent), and the 6-packet
  // response, sealed into the server's send batch, into the client's response buffer after its
  // packet 0.
  CHECK(net.server.stats().opened_into_message >= 5u);
  CHECK(net.server.stats().sealed_into_send_batch >= 6u);
  CHECK_EQ(net.client.stats().opened_into_message, 5u);
}

TEST(crypto_transport_replayed_packet_later_is_dropped_and_handler_never_reruns) {
  Net net(Encrypted({MakeGroupKey(1, 0x11)}), Encrypted({MakeGroupKey(1, 0x11)}));
  const uint32_t session = net.Connect();
  for (uint64_t tag = 1; tag <= 50; ++tag) {
    CHECK(net.client.Call(session, 3, tag, Marked(60, static_cast<uint8_t>(tag)), 0,
                          net.now_us) == CallStatus::kOk);
  }
  CHECK(net.RunUntil(net.now_us + 5'000'000, [&] { return net.responses.size() == 50; }));
  CHECK_EQ(net.handler_runs, 50u);
  // Replay every client packet of the run, long after, into the live session.
  const uint64_t drops = net.server.stats().DropsTotal();
  uint64_t replayed = 0;
  for (const Datagram& d : std::vector<Datagram>(net.sent)) {
    if (d.from == net.client_address && (HeaderOf(d).flags & kFlagEncrypted) != 0) {
      net.server.OnPacket(d.from, d.bytes, net.now_us + 1'000'000);
      ++replayed;
    }
  }
  net.Step();
  CHECK(replayed >= 50);
  CHECK_EQ(net.server.stats().DropsTotal() - drops, replayed);
  CHECK_EQ(net.handler_runs, 50u);
}

TEST(crypto_transport_sequence_never_repeats_under_heavy_retransmission_and_recreation) {
  // 30% loss both ways: Go-Back-N resends a lot, and every resend is sealed again.
  EndpointConfig config = Encrypted({MakeGroupKey(1, 0x11)}, false);
  config.encryption.limits.rekey_after_packets = 300;  // a few rekeys midway, too
  Net net(config, config);
  net.loss = 0.3;
  std::set<std::tuple<std::string, uint32_t, uint64_t>> seen;  // (sender, dest session, seq)
  uint64_t sealed = 0, repeats = 0;
  auto record = [&](size_t from_index) {
    for (size_t i = from_index; i < net.sent.size(); ++i) {
      const Datagram& d = net.sent[i];
      const Header h = HeaderOf(d);
      if ((h.flags & kFlagEncrypted) == 0) continue;
      ++sealed;
      if (!seen.insert({d.from.ToString(), h.dest_session, SequenceOf(d)}).second) ++repeats;
    }
  };
  uint64_t tag = 0;
  std::vector<uint8_t> first_request_of_session[2];
  for (int round = 0; round < 2; ++round) {  // the second round re-creates the session
    const size_t start = net.sent.size();
    const uint32_t session = net.Connect();
    CHECK(net.client.SessionIsConnected(session));
    for (int i = 0; i < 150; ++i) {
      ++tag;
      CHECK(net.client.Call(session, 3, tag, Marked(i % 10 == 0 ? 3000 : 50, 7), 0,
                            net.now_us) == CallStatus::kOk);
    }
    CHECK(net.RunUntil(net.now_us + 600'000'000, [&] { return net.responses.size() == tag; }));
    record(start);
    for (size_t i = start; i < net.sent.size(); ++i) {
      if (HeaderOf(net.sent[i]).type == PacketType::kRequest) {
        first_request_of_session[round] = net.sent[i].bytes;
        break;
      }
    }
    net.client.Disconnect(session, net.now_us);
    net.loss = 0;
    net.RunUntil(net.now_us + 1'000'000, [&] { return net.client.stats().sessions_client == 0; });
    net.loss = 0.3;
  }
  CHECK_EQ(repeats, 0u);
  std::printf("  sealed datagrams %llu (%llu of them batches)\n",
              static_cast<unsigned long long>(sealed),
              static_cast<unsigned long long>(net.client.stats().sealed_batches +
                                              net.server.stats().sealed_batches));
  CHECK(sealed > 1000);  // sealed datagrams: a sealed batch of packets is one
  CHECK(net.client.stats().retransmissions > 50);
  CHECK(net.client.security_stats().endpoint.rekeys_completed >= 2);
  CHECK_EQ(net.handler_runs, tag);  // at-most-once held through loss and rekeys
  // The re-created session started its counter again, under a new key: the first session's
  // first request, addressed to the second session, does not open.
  const auto& old_packet = first_request_of_session[0];
  const auto& new_packet = first_request_of_session[1];
  CHECK(!old_packet.empty() && !new_packet.empty());
  if (old_packet.empty() || new_packet.empty()) return;
  std::vector<uint8_t> moved = old_packet;
  std::copy(new_packet.begin() + 8, new_packet.begin() + 12, moved.begin() + 8);
  const uint64_t bad_tags = net.server.security_stats().crypto.drop_bad_tag;
  const uint64_t unknown = Drops(net.server, DropReason::kUnknownSession);
  net.server.OnPacket(net.client_address, moved, net.now_us);
  CHECK(net.server.security_stats().crypto.drop_bad_tag + Drops(net.server, DropReason::kUnknownSession) ==
        bad_tags + unknown + 1);
}

TEST(crypto_transport_rekey_and_group_key_rotation_while_traffic_flows) {
  EndpointConfig config = Encrypted({MakeGroupKey(1, 0x11)});
  Net net(config, config);
  const uint32_t session = net.Connect();
  uint64_t tag = 0;
  auto traffic = [&](int calls) {
    const uint64_t want = tag + static_cast<uint64_t>(calls);
    for (int i = 0; i < calls; ++i) {
      ++tag;
      CHECK(net.client.Call(session, 3, tag, Marked(i % 8 == 0 ? 2500 : 80, 3), 0, net.now_us) ==
            CallStatus::kOk);
    }
    return want;
  };
  // Explicit rekey with calls in flight.
  uint64_t want = traffic(40);
  CHECK(net.client.Rekey(session, net.now_us));
  CHECK(net.RunUntil(net.now_us + 10'000'000, [&] { return net.responses.size() == want; }));
  CHECK_EQ(net.client.SessionSendEpoch(session), 1);
  CHECK_EQ(net.client.security_stats().endpoint.rekeys_completed, 1u);
  CHECK_EQ(net.server.security_stats().endpoint.rekeys_completed, 1u);
  // Rotation: the server takes key 2 first (its session asks the client to rekey, which can
  // only rekey under key 1 until it has key 2 too), then the client; traffic flows throughout.
  const uint64_t grace_us = 50'000'000;
  CHECK(net.server.RotateKey(MakeGroupKey(2, 0x22), grace_us, net.now_us));
  want = traffic(30);
  CHECK(net.RunUntil(net.now_us + 10'000'000, [&] { return net.responses.size() == want; }));
  CHECK_EQ(net.client.SessionKeyId(session), 1u);  // still the old key: client lacks key 2
  CHECK(net.client.RotateKey(MakeGroupKey(2, 0x22), grace_us, net.now_us));
  want = traffic(30);
  CHECK(net.RunUntil(net.now_us + 10'000'000, [&] { return net.responses.size() == want; }));
  CHECK_EQ(net.client.SessionKeyId(session), 2u);
  CHECK_EQ(net.server.SessionKeyId(net.server_events.empty() ? 0 : net.server_events[0].session),
           2u);
  // Past the grace: key 1 is pruned on both, the session (already on key 2) lives on.
  net.now_us += grace_us;
  net.client.OnTimers(net.now_us);
  net.server.OnTimers(net.now_us);
  want = traffic(10);
  CHECK(net.RunUntil(net.now_us + 10'000'000, [&] { return net.responses.size() == want; }));
  CHECK(net.client.SessionIsConnected(session));
  CHECK_EQ(net.client.stats().sessions_closed, 0u);
  CHECK_EQ(net.server.stats().sessions_closed, 0u);
  CHECK_EQ(net.handler_runs, tag);
  CHECK_EQ(net.client.stats().DropsTotal(), 0u);
  // A node that never learned key 2 can no longer connect after the grace.
  Net late(Encrypted({MakeGroupKey(1, 0x11)}), config);
  CHECK(late.server.RotateKey(MakeGroupKey(2, 0x22), 1000, 0));
  late.now_us = 5000;
  late.server.OnTimers(late.now_us);
  late.client.Connect(late.server_address, late.now_us);
  late.RunUntil(late.now_us + 1'000'000, [&] { return !late.client_events.empty(); });
  CHECK(late.HasEvent(late.client_events, SessionEventKind::kConnectFailed));
  CHECK(late.HasEvent(late.server_events, SessionEventKind::kRefused));
}

TEST(crypto_transport_session_on_a_retired_key_is_closed_after_the_grace) {
  EndpointConfig config = Encrypted({MakeGroupKey(1, 0x11)});
  Net net(config, config);
  const uint32_t session = net.Connect();
  CHECK(net.client.SessionIsConnected(session));
  // Only the server rotates; the client never takes key 2, so its session stays on key 1.
  CHECK(net.server.RotateKey(MakeGroupKey(2, 0x22), 100'000, net.now_us));
  net.now_us += 200'000;
  net.server.OnTimers(net.now_us);
  net.Step();
  CHECK(net.HasEvent(net.server_events, SessionEventKind::kDisconnected));
  CHECK_EQ(net.server.security_stats().endpoint.sessions_closed_key_retired, 1u);
  CHECK_EQ(net.server.stats().sessions_server, 0u);
}

TEST(crypto_transport_50000_hostile_packets_never_break_an_encrypting_endpoint) {
  Net net(Encrypted({MakeGroupKey(1, 0x11)}), Encrypted({MakeGroupKey(1, 0x11)}));
  const uint32_t session = net.Connect();
  CHECK(net.client.Call(session, 3, 1, Marked(50, 1), 0, net.now_us) == CallStatus::kOk);
  CHECK(net.RunUntil(net.now_us + 1'000'000, [&] { return net.responses.size() == 1; }));
  const uint32_t server_session = net.server_events.empty() ? 0 : net.server_events[0].session;
  std::mt19937_64 rng(5);
  auto random_bytes = [&](size_t n) {
    std::vector<uint8_t> out(n);
    for (auto& b : out) b = static_cast<uint8_t>(rng());
    return out;
  };
  const uint64_t drops_before = net.server.stats().DropsTotal() + net.client.stats().DropsTotal();
  const uint64_t packets = 50'000;
  uint64_t answered_handshakes = 0;
  for (uint64_t i = 0; i < packets; ++i) {
    Header h;
    const PacketType types[] = {PacketType::kConnectRequest, PacketType::kConnectConfirm,
                                PacketType::kRequest, PacketType::kRekey,
                                PacketType::kConnectResponse};
    h.type = types[rng() % 5];
    h.dest_session = rng() % 3 == 0 ? server_session : static_cast<uint32_t>(rng() % 8);
    h.aux = 1 + static_cast<uint32_t>(rng() % 100);
    h.packet_number = 256 + static_cast<uint32_t>(rng() % 2000);
    h.request_type = 8;
    h.request_number = rng();
    h.flags = static_cast<uint8_t>(rng() % 4);
    // Handshake-sized payloads half the time, so the MAC checks (not the size checks) are hit.
    const size_t sizes[] = {squall::crypto::kClientHelloBytes, squall::crypto::kConfirmBytes,
                            squall::crypto::kServerHelloBytes, 8, static_cast<size_t>(rng() % 300)};
    std::vector<uint8_t> packet = Packet(h, random_bytes(sizes[rng() % 5]));
    if (rng() % 2 == 0 && packet.size() > kHeaderBytes) packet[kHeaderBytes] = static_cast<uint8_t>(1 + rng() % 4);
    const PeerAddress from = rng() % 4 == 0 ? net.client_address
                                           : Addr(("10.7." + std::to_string(rng() % 200) + ".1:" +
                                                   std::to_string(1 + rng() % 60000)).c_str());
    Endpoint& target = h.type == PacketType::kConnectResponse ? net.client : net.server;
    const size_t sent_before = net.queue.size();
    target.OnPacket(from, packet, net.now_us);
    answered_handshakes += net.queue.size() - sent_before;
    net.queue.clear();  // answers to forged peers go nowhere
  }
  net.Step();
  // Every hostile packet was dropped or answered with a refusal; nothing was accepted.
  const uint64_t drops = net.server.stats().DropsTotal() + net.client.stats().DropsTotal() - drops_before;
  CHECK(drops + answered_handshakes >= packets);
  CHECK_EQ(net.server.stats().sessions_server, 1u);
  CHECK_EQ(net.server.stats().sessions_opened, 1u);
  CHECK_EQ(net.handler_runs, 1u);
  CHECK(!net.HasEvent(net.client_events, SessionEventKind::kDisconnected));
  CHECK_EQ(net.server.security_stats().crypto.handshake_ok, 1u);
  CHECK(net.server.security_stats().endpoint.handshakes_refused > 1000);
  // The session still serves.
  CHECK(net.client.Call(session, 3, 2, Marked(70, 2), 0, net.now_us) == CallStatus::kOk);
  CHECK(net.RunUntil(net.now_us + 1'000'000, [&] { return net.responses.size() == 2; }));
}

TEST(crypto_transport_a_tampered_confirm_is_refused_on_both_sides) {
  Net net(Encrypted({MakeGroupKey(1, 0x11)}), Encrypted({MakeGroupKey(1, 0x11)}));
  // Flip one bit of the Confirm's MAC on its way to the server.
  net.hold = [&](const Datagram& d) { return HeaderOf(d).type == PacketType::kConnectConfirm; };
  const uint32_t session = net.client.Connect(net.server_address, 0);
  net.RunUntil(100'000, [&] { return !net.held.empty(); });
  CHECK(!net.held.empty());
  if (net.held.empty()) return;
  net.hold = nullptr;
  Datagram confirm = net.held[0];
  confirm.bytes.back() ^= 0x01;
  net.Deliver(confirm);
  net.RunUntil(net.now_us + 1'000'000, [&] { return !net.client_events.empty(); });
  const Event* failed = net.FindEvent(net.client_events, SessionEventKind::kConnectFailed);
  CHECK(failed != nullptr && failed->session == session &&
        failed->id == static_cast<uint64_t>(ConnectError::kAuthenticationFailed));
  CHECK(net.HasEvent(net.server_events, SessionEventKind::kRefused));
  CHECK(!net.HasEvent(net.server_events, SessionEventKind::kAccepted));
  CHECK_EQ(net.server.stats().sessions_opened, 0u);
  CHECK_EQ(net.server.security_stats().crypto.handshake_bad_mac, 1u);
}

// --- Lent requests (Endpoint::CallLent): the body is read in place until the call ends ---

namespace {
// A lent body: its lender poisons the bytes (0xDD) when the endpoint drops its reference, so a
// packet read from them afterwards carries the poison and the response check fails.
struct LentBody {
  std::vector<uint8_t> bytes;
  bool released = false;
  Lender Lend() {
    return std::shared_ptr<const void>(this, [](const void* p) {
      auto* self = static_cast<LentBody*>(const_cast<void*>(p));
      std::fill(self->bytes.begin(), self->bytes.end(), uint8_t{0xDD});
      self->released = true;
    });
  }
};

std::vector<uint8_t> Joined(const std::vector<uint8_t>& head, const std::vector<uint8_t>& body) {
  std::vector<uint8_t> out = head;
  out.insert(out.end(), body.begin(), body.end());
  return out;
}
}  // namespace

namespace {
// Multi-packet messages under loss, sealed or not. Encrypted: packets large enough to be
// sealed into the I/O's buffer (SealRoom).
EndpointConfig LossyLarge(bool encrypted) {
  EndpointConfig config = encrypted ? Encrypted({MakeGroupKey(1, 0x11)}) : EndpointConfig{};
  config.packet_bytes_max = encrypted ? 9000 : 1024;
  config.retransmit_timeout_us = 2000;
  config.retransmit_timeout_min_us = 1000;
  config.peer_failure_timeout_us = 60'000'000;
  return config;
}
}  // namespace

TEST(transport_lent_request_is_sent_from_the_lent_bytes_under_loss_and_released_at_its_end) {
  for (const bool encrypted : {false, true}) {
    const EndpointConfig config = LossyLarge(encrypted);
    Net net(config, config);
    net.reserve = encrypted;  // sealed straight from the lent bytes into the I/O's buffer
    const uint32_t session = net.Connect();
    CHECK(net.client.SessionIsConnected(session));
    net.loss = 0.1;  // retransmissions read the lent bytes again, long after CallLent returned
    // A 13-byte head (copied) and a body spanning many packets: packet 0 joins the two.
    const std::vector<uint8_t> head = Marked(13, 1);
    LentBody body{Marked(40'000, 2)};
    const std::vector<uint8_t> request = Joined(head, body.bytes);
    CHECK(net.client.CallLent(session, 3, 7, head, body.bytes, body.Lend(), 0, net.now_us) ==
          CallStatus::kOk);
    CHECK_EQ(net.client.stats().requests_lent, 1u);
    CHECK(!body.released);
    CHECK(net.RunUntil(net.now_us + 20'000'000, [&] { return net.responses.count(7) == 1; }));
    CHECK(net.client.stats().retransmissions > 0);
    CHECK_EQ(net.handler_runs, 1u);
    CHECK(net.responses[7] == std::vector<uint8_t>(request.rbegin(), request.rend()));
    CHECK(body.released);  // dropped when the call completed
    // Encrypted: sealed out of place from the lent bytes, and no plaintext crossed the wire.
    if (encrypted) {
      CHECK(net.client.stats().sealed_into_send_batch > 0);
      const std::vector<uint8_t> plain(request.begin() + 3000, request.begin() + 3064);
      for (const Datagram& d : net.sent) CHECK(!Contains(d.bytes, plain));
    }
  }
}

TEST(transport_lent_request_is_released_on_every_ending_and_never_kept_when_refused) {
  EndpointConfig config;
  config.packet_bytes_max = 1024;
  config.slots_per_session = 1;  // a second call waits in the backlog
  config.retransmit_timeout_us = 2000;
  config.retransmit_timeout_min_us = 1000;
  config.peer_failure_timeout_us = 60'000'000;
  config.message_bytes_max = 64 * 1024;
  // Declared before the endpoints, so that they outlive every reference the endpoints hold.
  LentBody huge{std::vector<uint8_t>(65 * 1024, 1)};
  LentBody running{Marked(5000, 4)}, queued{Marked(5000, 5)};
  LentBody closed_slot{Marked(5000, 6)}, closed_queue{Marked(5000, 7)};
  LentBody at_exit{Marked(5000, 8)};
  Net net(config, config);
  uint32_t session = net.Connect();
  const std::vector<uint8_t> head = Marked(8, 3);
  // Refused at once (too large): no reference kept.
  CHECK(net.client.CallLent(session, 3, 1, head, huge.bytes, huge.Lend(), 0, net.now_us) ==
        CallStatus::kTooLarge);
  CHECK(huge.released);
  // The server hears nothing: the first call times out in its slot, the second in the backlog.
  net.hold = [](const Datagram&) { return true; };
  CHECK(net.client.CallLent(session, 3, 2, head, running.bytes, running.Lend(), 30'000,
                            net.now_us) == CallStatus::kOk);
  CHECK(net.client.CallLent(session, 3, 3, head, queued.bytes, queued.Lend(), 20'000,
                            net.now_us) == CallStatus::kOk);
  net.RunUntil(net.now_us + 25'000, [&] { return queued.released; });
  CHECK(queued.released);  // its deadline passed while it waited for the slot
  CHECK(!running.released);
  net.RunUntil(net.now_us + 25'000, [&] { return running.released; });
  CHECK(running.released);  // its deadline passed while its packets went unanswered
  // Session closed locally (its calls end at once), and the endpoint destroyed.
  CHECK(net.client.CallLent(session, 3, 4, head, closed_slot.bytes, closed_slot.Lend(), 0,
                            net.now_us) == CallStatus::kOk);
  CHECK(net.client.CallLent(session, 3, 5, head, closed_queue.bytes, closed_queue.Lend(), 0,
                            net.now_us) == CallStatus::kOk);
  CHECK(net.client.Disconnect(session, net.now_us));
  CHECK(closed_slot.released && closed_queue.released);
  {
    Net other(config, config);
    session = other.Connect();
    other.hold = [](const Datagram&) { return true; };
    CHECK(other.client.CallLent(session, 3, 6, head, at_exit.bytes, at_exit.Lend(), 0,
                                other.now_us) == CallStatus::kOk);
    other.RunUntil(other.now_us + 5'000, [] { return false; });
    CHECK(!at_exit.released);
  }
  CHECK(at_exit.released);
}

// --- Large message buffers (BufferPool): reused only once given back ---

TEST(transport_buffer_pool_reuses_fitting_buffers_within_its_bound) {
  BufferPool pool(1000, 5000);
  Bytes a = pool.Take(2000);
  CHECK_EQ(a.size(), 2000u);
  CHECK_EQ(pool.fresh(), 1u);
  const uint8_t* memory = a.data();
  pool.Give(std::move(a));
  CHECK_EQ(pool.kept_bytes(), 2000u);
  Bytes b = pool.Take(1500);  // fits: 2,000 is at least 1,500 and at most twice it
  CHECK_EQ(pool.reused(), 1u);
  CHECK(b.data() == memory);
  CHECK_EQ(b.size(), 1500u);
  CHECK_EQ(pool.kept_bytes(), 0u);
  pool.Give(std::move(b));
  Bytes c = pool.Take(900);  // 2,000 is more than twice 900: a fresh one
  CHECK(c.data() != memory);
  CHECK_EQ(pool.fresh(), 2u);
  pool.Give(std::move(c));           // 900 < min_bytes: not kept
  pool.Give(Bytes(2500));            // kept: 4,500 in all
  pool.Give(Bytes(1000));            // beyond the 5,000 bound: freed
  CHECK_EQ(pool.kept_bytes(), 4500u);
}

TEST(transport_large_requests_assemble_in_pooled_buffers_given_back_by_the_application) {
  for (const bool encrypted : {false, true}) {
    const EndpointConfig config = LossyLarge(encrypted);
    Net net(config, config);
    net.reserve = encrypted;
    auto pool = std::make_shared<BufferPool>(10'000, 1u << 20);
    net.server.SetBufferPool(pool);
    const uint32_t session = net.Connect();
    net.loss = 0.1;
    // The server keeps each request's event (as the addon hands its buffer to JS) until the
    // test gives the buffer back.
    std::vector<Event> held;
    net.kept_requests = &held;
    auto run = [&](uint64_t tag, const std::vector<uint8_t>& request) {
      CHECK(net.client.Call(session, 3, tag, request, 0, net.now_us) == CallStatus::kOk);
      CHECK(net.RunUntil(net.now_us + 20'000'000, [&] { return net.responses.count(tag) == 1; }));
    };
    const std::vector<uint8_t> first = Marked(30'000, 1), second = Marked(30'000, 2);
    run(1, first);
    CHECK_EQ(held.size(), 1u);
    CHECK(held[0].bytes == first);
    const uint8_t* memory = held[0].bytes.data();
    // Still held: the next request gets another buffer, and the held one is untouched.
    run(2, second);
    CHECK_EQ(held.size(), 2u);
    CHECK(held[1].bytes.data() != memory);
    CHECK(held[0].bytes == first);
    CHECK(held[1].bytes == second);
    CHECK_EQ(pool->reused(), 0u);
    // Given back: the next request is assembled in that memory, and is exactly itself.
    pool->Give(std::move(held[0].bytes));
    const std::vector<uint8_t> third = Marked(25'000, 3);
    run(3, third);
    CHECK_EQ(held.size(), 3u);
    CHECK_EQ(pool->reused(), 1u);
    CHECK(held[2].bytes.data() == memory);
    CHECK(held[2].bytes == third);
    CHECK(held[1].bytes == second);
  }
}

TEST(crypto_transport_port_unreachable_reports_name_sealed_sessions_by_their_clear_header) {
  // An ICMP report quotes the sealed datagram: its header (associated data, in the clear)
  // still names the session, so the port-unreachable rule works on encrypted sessions too.
  const auto key = MakeGroupKey(1, 0x11);
  Net net(Encrypted({key}), Encrypted({key}));
  const uint32_t session = net.Connect();
  CHECK(net.client.SessionIsConnected(session));
  CHECK(net.client.Call(session, 3, 1, Marked(40, 1), 0, net.now_us) == CallStatus::kOk);
  const Datagram request = net.sent.back();  // sealed, from the client
  CHECK(request.from == net.client_address && (HeaderOf(request).flags & kFlagEncrypted) != 0);
  net.queue.clear();  // the server is gone: nothing reaches it any more
  net.client.OnUnreachable(net.server_address, request.bytes, net.now_us + 10);
  const Datagram ping = net.sent.back();  // the confirming PING, sealed as well
  CHECK(HeaderOf(ping).type == PacketType::kPing && (HeaderOf(ping).flags & kFlagEncrypted) != 0);
  net.client.OnUnreachable(net.server_address, ping.bytes, net.now_us + 20);
  net.Step();
  const Event* failed = net.FindEvent(net.client_events, SessionEventKind::kPeerFailed);
  CHECK(failed != nullptr && failed->id == static_cast<uint64_t>(PeerFailure::kPortUnreachable));
  CHECK_EQ(net.client.stats().peer_failures_unreachable, 1u);
}

TEST(crypto_transport_an_orphaned_server_session_is_reaped_through_sealed_pings) {
  // "Orphans" on an encrypting pair: the server's PINGs about a suspect and the client's PONGs
  // are sealed under the session's keys like any other packet, so a live session answers and a
  // session the client no longer has (its DISCONNECTs all lost) goes.
  const auto key = MakeGroupKey(1, 0x11);
  EndpointConfig config = Encrypted({key});
  config.peer_failure_timeout_us = 2'000'000;
  Net net(config, config);
  const uint32_t kept = net.Connect();
  const uint32_t orphan = net.Connect();
  CHECK(net.client.SessionIsConnected(kept) && net.client.SessionIsConnected(orphan));
  net.hold = [&](const Datagram& d) { return HeaderOf(d).type == PacketType::kDisconnectRequest; };
  CHECK(net.client.Disconnect(orphan, net.now_us));
  CHECK(net.RunUntil(net.now_us + 1'000'000, [&] {
    return net.HasEvent(net.client_events, SessionEventKind::kDisconnected);
  }));
  net.hold = nullptr;
  CHECK_EQ(net.server.stats().sessions_server, 2u);
  const uint64_t failure_us = config.peer_failure_timeout_us;
  net.RunUntil(net.now_us + 3 * failure_us, [&] { return false; });
  CHECK_EQ(net.server.stats().sessions_server, 1u);
  CHECK_EQ(net.server.stats().orphans_reaped, 1u);
  CHECK(net.server.stats().orphan_probes >= 1);
  CHECK(net.client.SessionIsConnected(kept));
  CHECK_EQ(net.client.stats().drops[static_cast<size_t>(DropReason::kUnsealed)], 0u);
  CHECK(net.client.Call(kept, 3, 1, Marked(40, 1), 0, net.now_us) == CallStatus::kOk);
  CHECK(net.RunUntil(net.now_us + 1'000'000, [&] { return net.responses.size() == 1; }));
}
