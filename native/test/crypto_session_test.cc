// Packet protection: seal/open round trips, tampering, truncation, replay, rekey limits.
#include <random>
#include <set>

#include "crypto_test_support.h"
#include "test.h"

using namespace squall::crypto;
using namespace squall::crypto::testing;

namespace {
// Seals a fresh packet of body_bytes on sender and returns the datagram bytes.
std::vector<uint8_t> SealPacket(SessionCrypto& sender, size_t body_bytes, uint8_t seed) {
  std::vector<uint8_t> packet = MakePacket(body_bytes, seed);
  const SealStatus status = sender.Seal(packet, kTestHeaderBytes, body_bytes);
  if (status != SealStatus::kOk) packet.clear();
  return packet;
}
}  // namespace

// Proves: every size round-trips both ways under both ciphers, the header stays plaintext, the
// body is really encrypted on the wire, and the opened body equals what was sealed.
TEST(crypto_seal_open_round_trip) {
  for (AeadAlgorithm algorithm : {AeadAlgorithm::kAes128Gcm, AeadAlgorithm::kAes256Gcm}) {
    CryptoCounters client_counters, server_counters;
    SessionPair pair = MakeSessionPair(&client_counters, &server_counters, algorithm);
    CHECK(pair.client != nullptr && pair.server != nullptr);
    if (!pair.client || !pair.server) return;
    for (size_t body_bytes : {size_t{0}, size_t{1}, size_t{32}, size_t{1000}, size_t{8192},
                              size_t{65536}}) {
      for (int direction = 0; direction < 2; ++direction) {
        SessionCrypto& sender = direction == 0 ? *pair.client : *pair.server;
        SessionCrypto& receiver = direction == 0 ? *pair.server : *pair.client;
        const std::vector<uint8_t> plain = MakePacket(body_bytes, 3);
        std::vector<uint8_t> packet = SealPacket(sender, body_bytes, 3);
        CHECK_EQ(packet.size(), SealedBytes(kTestHeaderBytes, body_bytes));
        CHECK(std::equal(plain.begin(), plain.begin() + kTestHeaderBytes, packet.begin()));
        if (body_bytes >= 16) {
          CHECK(!std::equal(plain.begin() + kTestHeaderBytes,
                            plain.begin() + static_cast<long>(kTestHeaderBytes + body_bytes),
                            packet.begin() + kTestHeaderBytes));
        }
        const OpenResult result = receiver.Open(packet, kTestHeaderBytes);
        CHECK_STATUS(result.status, OpenStatus::kOk);
        CHECK_EQ(result.body_bytes, body_bytes);
        CHECK(std::equal(plain.begin(), plain.begin() + static_cast<long>(kTestHeaderBytes +
                                                                           body_bytes),
                         packet.begin()));
      }
    }
    CHECK_EQ(client_counters.sealed_packets, uint64_t{6});
    CHECK_EQ(server_counters.opened_packets, uint64_t{6});
    CHECK_EQ(TotalDrops(server_counters) + TotalDrops(client_counters), uint64_t{0});
  }
}

// Proves: flipping any single bit of a sealed datagram (header, body, sequence or tag) makes it
// rejected and counted, and the body is never reported as delivered; the pristine copy then
// still opens (the forgeries did not disturb the receiver).
TEST(crypto_bit_flip_anywhere_rejected) {
  CryptoCounters client_counters, server_counters;
  SessionPair pair = MakeSessionPair(&client_counters, &server_counters);
  if (!pair.client || !pair.server) {
    CHECK(false);
    return;
  }
  const std::vector<uint8_t> sealed = SealPacket(*pair.client, 64, 9);
  size_t rejected = 0;
  for (size_t bit = 0; bit < sealed.size() * 8; ++bit) {
    std::vector<uint8_t> forged = sealed;
    forged[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    const OpenResult result = pair.server->Open(forged, kTestHeaderBytes);
    if (result.status != OpenStatus::kOk) ++rejected;
  }
  CHECK_EQ(rejected, sealed.size() * 8);
  CHECK_EQ(TotalDrops(server_counters), uint64_t{sealed.size() * 8});
  CHECK_EQ(server_counters.opened_packets, uint64_t{0});
  // Flips in the 16 epoch bits name no key; every other flip fails the tag.
  CHECK_EQ(server_counters.drop_unknown_epoch, uint64_t{16});
  CHECK_EQ(server_counters.drop_bad_tag, uint64_t{sealed.size() * 8 - 16});
  std::vector<uint8_t> pristine = sealed;
  CHECK_STATUS(pair.server->Open(pristine, kTestHeaderBytes).status, OpenStatus::kOk);
}

// Proves: a datagram shorter than header + trailer is refused as truncated, never read past.
TEST(crypto_truncated_rejected) {
  CryptoCounters client_counters, server_counters;
  SessionPair pair = MakeSessionPair(&client_counters, &server_counters);
  if (!pair.client || !pair.server) {
    CHECK(false);
    return;
  }
  const std::vector<uint8_t> sealed = SealPacket(*pair.client, 100, 1);
  for (size_t length = 0; length < kTestHeaderBytes + kTrailerBytes; ++length) {
    std::vector<uint8_t> cut(sealed.begin(), sealed.begin() + static_cast<long>(length));
    CHECK_STATUS(pair.server->Open(cut, kTestHeaderBytes).status, OpenStatus::kTruncated);
  }
  // Cutting inside the body leaves a long enough datagram whose trailer is read from the wrong
  // place: it names no key (or fails the tag) and is dropped.
  std::vector<uint8_t> shortened(sealed.begin(), sealed.end() - 10);
  CHECK(pair.server->Open(shortened, kTestHeaderBytes).status != OpenStatus::kOk);
  CHECK_EQ(server_counters.opened_packets, uint64_t{0});
  // A header length beyond the limit is refused without reading.
  std::vector<uint8_t> copy = sealed;
  CHECK_STATUS(pair.server->Open(copy, kHeaderBytesMax + 1).status, OpenStatus::kTruncated);
  CHECK_EQ(server_counters.drop_truncated, uint64_t{kTestHeaderBytes + kTrailerBytes + 1});
}

// Proves: a captured packet replayed later is dropped as a replay, also after other traffic.
TEST(crypto_replay_rejected) {
  CryptoCounters client_counters, server_counters;
  SessionPair pair = MakeSessionPair(&client_counters, &server_counters);
  if (!pair.client || !pair.server) {
    CHECK(false);
    return;
  }
  const std::vector<uint8_t> captured = SealPacket(*pair.client, 32, 5);
  std::vector<uint8_t> first = captured;
  CHECK_STATUS(pair.server->Open(first, kTestHeaderBytes).status, OpenStatus::kOk);
  for (int i = 0; i < 100; ++i) {
    std::vector<uint8_t> other = SealPacket(*pair.client, 32, 6);
    CHECK_STATUS(pair.server->Open(other, kTestHeaderBytes).status, OpenStatus::kOk);
  }
  std::vector<uint8_t> replayed = captured;
  CHECK_STATUS(pair.server->Open(replayed, kTestHeaderBytes).status, OpenStatus::kReplay);
  CHECK_EQ(server_counters.drop_replay, uint64_t{1});
  // Reflection: a client packet sent back to the client fails (the directions' keys differ).
  std::vector<uint8_t> reflected = captured;
  CHECK_STATUS(pair.client->Open(reflected, kTestHeaderBytes).status, OpenStatus::kBadTag);
}

// Proves: packets reordered inside the window are accepted once; a packet that fell below the
// 2048-packet window is rejected as too old.
TEST(crypto_old_window_rejected) {
  CryptoCounters client_counters, server_counters;
  SessionPair pair = MakeSessionPair(&client_counters, &server_counters);
  if (!pair.client || !pair.server) {
    CHECK(false);
    return;
  }
  const std::vector<uint8_t> oldest = SealPacket(*pair.client, 8, 1);
  const std::vector<uint8_t> late = SealPacket(*pair.client, 8, 2);
  for (uint64_t i = 0; i + 1 < ReplayWindow::kWindowPackets; ++i) {
    std::vector<uint8_t> packet = SealPacket(*pair.client, 8, 3);
    CHECK_STATUS(pair.server->Open(packet, kTestHeaderBytes).status, OpenStatus::kOk);
  }
  // The highest counter is now 2048. Counter 1 is 2047 below it: the last one inside the
  // window. Counter 0 is 2048 below it: out.
  std::vector<uint8_t> late_copy = late;
  CHECK_STATUS(pair.server->Open(late_copy, kTestHeaderBytes).status, OpenStatus::kOk);
  std::vector<uint8_t> oldest_copy = oldest;
  CHECK_STATUS(pair.server->Open(oldest_copy, kTestHeaderBytes).status, OpenStatus::kTooOld);
  CHECK_EQ(server_counters.drop_too_old, uint64_t{1});
}

// Proves: nonces never repeat under heavy retransmission. A Go-Back-N sender with 30% loss
// re-seals every retransmitted packet; we record every (key, nonce) put on the wire and assert
// no repeats, across a rekey; and the receiver accepts every retransmission that arrives (the
// replay window never rejects a legitimate retransmission).
TEST(crypto_nonce_unique_under_retransmission) {
  CryptoCounters client_counters, server_counters;
  SessionPair pair = MakeSessionPair(&client_counters, &server_counters);
  if (!pair.client || !pair.server) {
    CHECK(false);
    return;
  }
  std::mt19937 random(12345);
  std::set<std::pair<uint16_t, uint64_t>> seen_sequences;  // (epoch, sequence) per key
  uint64_t repeats = 0, wire_packets = 0, delivered = 0, rejected = 0;
  constexpr uint64_t kLogicalPackets = 3000;
  constexpr uint64_t kWindowPackets = 32;  // Go-Back-N window (session credits)
  uint64_t next_unacked = 0;
  Keyring ring;
  ring.Install(MakeGroupKey(1, 0x40));
  bool rekeyed = false;
  while (next_unacked < kLogicalPackets) {
    if (!rekeyed && next_unacked >= kLogicalPackets / 2) {
      // A rekey handshake midway: both sides adopt epoch NextEpoch().
      HandshakeOutcome outcome = RunHandshake(ring, ring, &client_counters, &server_counters, {},
                                              {}, static_cast<uint16_t>(pair.client->NextEpoch()),
                                              static_cast<uint16_t>(pair.server->NextEpoch()));
      CHECK(outcome.client_keys.has_value() && outcome.server_keys.has_value());
      if (!outcome.client_keys || !outcome.server_keys) return;
      CHECK(pair.client->Adopt(std::move(*outcome.client_keys)));
      CHECK(pair.server->Adopt(std::move(*outcome.server_keys)));
      // A server response under the new epoch moves the client's sending onto it.
      std::vector<uint8_t> response = SealPacket(*pair.server, 8, 1);
      CHECK_STATUS(pair.client->Open(response, kTestHeaderBytes).status, OpenStatus::kOk);
      CHECK_EQ(static_cast<int>(pair.client->send_epoch()), 1);
      rekeyed = true;
    }
    // Send the window [next_unacked, next_unacked + 32); each is lost with probability 0.3.
    // In-order acceptance: the first loss stops progress; the rest is retransmitted next round.
    uint64_t accepted_in_order = next_unacked;
    bool gap = false;
    for (uint64_t logical = next_unacked;
         logical < std::min(next_unacked + kWindowPackets, kLogicalPackets); ++logical) {
      std::vector<uint8_t> packet = SealPacket(*pair.client, 48, static_cast<uint8_t>(logical));
      ++wire_packets;
      const uint16_t epoch = pair.client->send_epoch();
      const uint64_t sequence =
          LoadLe64(packet.data() + kTestHeaderBytes + 48);
      if (!seen_sequences.insert({epoch, sequence}).second) ++repeats;
      if (random() % 10 < 3) {
        gap = true;
        continue;
      }
      const OpenResult result = pair.server->Open(packet, kTestHeaderBytes);
      if (result.status == OpenStatus::kOk) ++delivered; else ++rejected;
      if (!gap) accepted_in_order = logical + 1;
    }
    next_unacked = accepted_in_order;
  }
  CHECK(rekeyed);
  CHECK_EQ(repeats, uint64_t{0});
  CHECK_EQ(rejected, uint64_t{0});
  CHECK_EQ(seen_sequences.size(), wire_packets);
  CHECK(wire_packets > kLogicalPackets * 2);  // the loss really forced many retransmissions
  CHECK_EQ(delivered + (wire_packets - delivered - rejected), wire_packets);
}

// Proves: the send key asks for a rekey at rekey_after_packets and refuses to seal at the hard
// limit (so a counter can never wrap); adopting new keys restarts the count under a new epoch.
TEST(crypto_key_exhaustion_forces_rekey) {
  CryptoCounters client_counters, server_counters;
  SessionLimits limits;
  limits.rekey_after_packets = 5;
  limits.seal_limit_packets = 8;
  SessionPair pair =
      MakeSessionPair(&client_counters, &server_counters, AeadAlgorithm::kAes128Gcm, limits);
  if (!pair.client || !pair.server) {
    CHECK(false);
    return;
  }
  for (int i = 0; i < 8; ++i) {
    CHECK_EQ(pair.client->RekeyDue(), i >= 5);
    std::vector<uint8_t> packet = MakePacket(10, 1);
    CHECK_STATUS(pair.client->Seal(packet, kTestHeaderBytes, 10), SealStatus::kOk);
  }
  std::vector<uint8_t> refused = MakePacket(10, 1);
  CHECK_STATUS(pair.client->Seal(refused, kTestHeaderBytes, 10), SealStatus::kKeyExhausted);
  CHECK_EQ(client_counters.seal_refused_key_exhausted, uint64_t{1});
  std::vector<uint8_t> small(kTestHeaderBytes + 10 + kTrailerBytes - 1);
  CHECK_STATUS(pair.client->Seal(small, kTestHeaderBytes, 10), SealStatus::kBufferTooSmall);

  Keyring ring;
  ring.Install(MakeGroupKey(1, 0x40));
  HandshakeOutcome outcome = RunHandshake(ring, ring, &client_counters, &server_counters, {}, {},
                                          static_cast<uint16_t>(pair.client->NextEpoch()),
                                          static_cast<uint16_t>(pair.server->NextEpoch()));
  if (!outcome.client_keys || !outcome.server_keys) {
    CHECK(false);
    return;
  }
  CHECK_EQ(static_cast<int>(outcome.client_keys->epoch), 1);
  CHECK(pair.client->Adopt(std::move(*outcome.client_keys)));
  CHECK(pair.server->Adopt(std::move(*outcome.server_keys)));
  CHECK(!pair.client->RekeyDue());
  // The client waits for in-band proof before switching, but its old key is spent: the next
  // Seal switches at once rather than refusing.
  CHECK(pair.client->send_switch_pending());
  std::vector<uint8_t> packet = MakePacket(10, 2);
  CHECK_STATUS(pair.client->Seal(packet, kTestHeaderBytes, 10), SealStatus::kOk);
  CHECK_EQ(static_cast<int>(pair.client->send_epoch()), 1);
  CHECK(!pair.client->send_switch_pending());
  CHECK_STATUS(pair.server->Open(packet, kTestHeaderBytes).status, OpenStatus::kOk);
}

// Proves: a rekey in a busy session drops nothing. The server switches sending at once; the
// client keeps sending under the old key (accepted through the server's previous receive key)
// until a server packet under the new epoch proves the server has it, then switches. Packets
// in flight under the old epoch open until the previous key is retired, then are refused.
TEST(crypto_rekey_switches_in_band_without_drops) {
  CryptoCounters client_counters, server_counters;
  SessionPair pair = MakeSessionPair(&client_counters, &server_counters);
  if (!pair.client || !pair.server) {
    CHECK(false);
    return;
  }
  const std::vector<uint8_t> in_flight_a = SealPacket(*pair.client, 20, 1);
  const std::vector<uint8_t> in_flight_b = SealPacket(*pair.client, 20, 2);
  Keyring ring;
  ring.Install(MakeGroupKey(1, 0x40));
  HandshakeOutcome outcome = RunHandshake(ring, ring, &client_counters, &server_counters, {}, {},
                                          1, 1);
  if (!outcome.client_keys || !outcome.server_keys) {
    CHECK(false);
    return;
  }
  // The client adopts on the ServerHello, before the server has seen the Confirm.
  CHECK(pair.client->Adopt(std::move(*outcome.client_keys)));
  CHECK(pair.client->send_switch_pending());
  std::vector<uint8_t> before_confirm = SealPacket(*pair.client, 20, 3);
  CHECK_STATUS(pair.server->Open(before_confirm, kTestHeaderBytes).status, OpenStatus::kOk);
  // The server adopts on the Confirm and answers under the new epoch.
  CHECK(pair.server->Adopt(std::move(*outcome.server_keys)));
  CHECK_EQ(static_cast<int>(pair.server->send_epoch()), 1);
  std::vector<uint8_t> from_client_old = SealPacket(*pair.client, 20, 4);
  CHECK_STATUS(pair.server->Open(from_client_old, kTestHeaderBytes).status, OpenStatus::kOk);
  std::vector<uint8_t> response = SealPacket(*pair.server, 20, 5);
  CHECK_STATUS(pair.client->Open(response, kTestHeaderBytes).status, OpenStatus::kOk);
  CHECK(!pair.client->send_switch_pending());
  CHECK_EQ(static_cast<int>(pair.client->send_epoch()), 1);
  std::vector<uint8_t> fresh = SealPacket(*pair.client, 20, 6);
  CHECK_STATUS(pair.server->Open(fresh, kTestHeaderBytes).status, OpenStatus::kOk);
  std::vector<uint8_t> a = in_flight_a;
  CHECK_STATUS(pair.server->Open(a, kTestHeaderBytes).status, OpenStatus::kOk);
  CHECK_EQ(TotalDrops(server_counters) + TotalDrops(client_counters), uint64_t{0});
  pair.server->RetirePreviousReceiveKey();
  std::vector<uint8_t> b = in_flight_b;
  CHECK_STATUS(pair.server->Open(b, kTestHeaderBytes).status, OpenStatus::kUnknownEpoch);
  // ActivatePendingSend is the fallback for a session with no server traffic.
  CHECK(!pair.client->send_switch_pending());
  pair.client->ActivatePendingSend();  // nothing pending: no-op
  CHECK_EQ(static_cast<int>(pair.client->send_epoch()), 1);
}

// Proves: Open never aborts or accepts on arbitrary input: 20,000 random datagrams of random
// lengths (including empty) and random header lengths are all refused and each is counted once.
TEST(crypto_open_survives_random_input) {
  CryptoCounters client_counters, server_counters;
  SessionPair pair = MakeSessionPair(&client_counters, &server_counters);
  if (!pair.client || !pair.server) {
    CHECK(false);
    return;
  }
  std::mt19937 random(99);
  uint64_t accepted = 0;
  constexpr uint64_t kTrials = 20000;
  for (uint64_t trial = 0; trial < kTrials; ++trial) {
    std::vector<uint8_t> datagram(random() % 300);
    for (uint8_t& byte : datagram) byte = static_cast<uint8_t>(random());
    // Epoch bits 0 half the time, so most reach the tag check instead of the epoch check.
    if (datagram.size() >= 40 && random() % 2 == 0) {
      const size_t header_bytes = random() % 16;
      const size_t sequence_at = datagram.size() - kTrailerBytes;
      if (sequence_at >= header_bytes) {
        datagram[sequence_at + 6] = 0;
        datagram[sequence_at + 7] = 0;
      }
      if (pair.server->Open(datagram, header_bytes).status == OpenStatus::kOk) ++accepted;
    } else {
      const size_t header_bytes = random() % 400;
      if (pair.server->Open(datagram, header_bytes).status == OpenStatus::kOk) ++accepted;
    }
  }
  CHECK_EQ(accepted, uint64_t{0});
  CHECK_EQ(TotalDrops(server_counters), kTrials);
  CHECK(server_counters.drop_bad_tag > kTrials / 10);  // the tag check was really exercised
}
