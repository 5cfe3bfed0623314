#pragma once
// Helpers shared by the crypto tests: deterministic group keys, a complete in-memory handshake,
// and packet builders. Test-only.
#include <cstring>
#include <memory>
#include <vector>

#include "crypto/handshake.h"
#include "crypto/keyring.h"
#include "crypto/session_crypto.h"

namespace squall::crypto::testing {

inline GroupKey MakeGroupKey(uint32_t key_id, uint8_t fill) {
  GroupKey key;
  key.key_id = key_id;
  for (size_t i = 0; i < key.secret.size(); ++i) key.secret[i] = static_cast<uint8_t>(fill + i);
  return key;
}

inline ClientHelloParams MakeParams(uint32_t client_session, uint16_t epoch_proposed = 0) {
  ClientHelloParams params;
  params.client_session = client_session;
  params.client_address = EndpointAddress::Ipv4(0x7f000001, 40001);
  params.server_address = EndpointAddress::Ipv4(0x7f000001, 40002);
  params.epoch_proposed = epoch_proposed;
  return params;
}

struct HandshakeOutcome {
  HandshakeStatus client_status = HandshakeStatus::kInternal;
  HandshakeStatus server_status = HandshakeStatus::kInternal;
  std::optional<SessionKeys> client_keys;
  std::optional<SessionKeys> server_keys;
};

// Runs ClientHello -> ServerHello -> Confirm between two keyrings, delivering every reply
// (including Refuse messages) to the other side, as the transport would.
inline HandshakeOutcome RunHandshake(const Keyring& client_ring, const Keyring& server_ring,
                                     CryptoCounters* client_counters,
                                     CryptoCounters* server_counters,
                                     const HandshakeConfig& client_config = {},
                                     const HandshakeConfig& server_config = {},
                                     uint16_t epoch_proposed = 0, uint16_t epoch_min = 0,
                                     uint64_t now_ms = 0) {
  HandshakeOutcome outcome;
  ClientHandshake client(client_config, client_counters);
  ServerHandshake server(server_config, server_counters);
  HandshakeStep hello = client.Start(client_ring, MakeParams(7, epoch_proposed));
  outcome.client_status = hello.status;
  if (hello.status != HandshakeStatus::kInProgress) return outcome;
  HandshakeStep server_hello = server.OnClientHello(hello.reply, server_ring, 9, epoch_min, now_ms);
  outcome.server_status = server_hello.status;
  HandshakeStep client_done = client.OnMessage(server_hello.reply);
  outcome.client_status = client_done.status;
  outcome.client_keys = std::move(client_done.keys);
  if (server_hello.status != HandshakeStatus::kInProgress) return outcome;
  HandshakeStep server_done = server.OnMessage(client_done.reply);
  outcome.server_status = server_done.status;
  outcome.server_keys = std::move(server_done.keys);
  return outcome;
}

struct SessionPair {
  std::unique_ptr<SessionCrypto> client;
  std::unique_ptr<SessionCrypto> server;
};

// A connected client/server pair under one freshly handshaken key.
inline SessionPair MakeSessionPair(CryptoCounters* client_counters,
                                   CryptoCounters* server_counters,
                                   AeadAlgorithm algorithm = AeadAlgorithm::kAes128Gcm,
                                   const SessionLimits& limits = SessionLimits{}) {
  Keyring ring;
  ring.Install(MakeGroupKey(1, 0x40));
  HandshakeConfig config;
  config.algorithm = algorithm;
  HandshakeOutcome outcome =
      RunHandshake(ring, ring, client_counters, server_counters, config, config);
  SessionPair pair;
  if (!outcome.client_keys || !outcome.server_keys) return pair;
  pair.client = SessionCrypto::Create(Role::kClient, std::move(*outcome.client_keys),
                                      client_counters, limits);
  pair.server = SessionCrypto::Create(Role::kServer, std::move(*outcome.server_keys),
                                      server_counters, limits);
  return pair;
}

constexpr size_t kTestHeaderBytes = 16;

// A packet with a recognisable header and body, sized for sealing.
inline std::vector<uint8_t> MakePacket(size_t body_bytes, uint8_t seed) {
  std::vector<uint8_t> packet(SealedBytes(kTestHeaderBytes, body_bytes));
  for (size_t i = 0; i < kTestHeaderBytes + body_bytes; ++i) {
    packet[i] = static_cast<uint8_t>(seed * 31 + i * 7);
  }
  return packet;
}

inline uint64_t TotalDrops(const CryptoCounters& counters) {
  return counters.drop_truncated + counters.drop_unknown_epoch + counters.drop_replay +
         counters.drop_too_old + counters.drop_bad_tag;
}

}  // namespace squall::crypto::testing

// CHECK_EQ for enum statuses (the harness prints numbers).
#define CHECK_STATUS(a, b) CHECK_EQ(static_cast<int>(a), static_cast<int>(b))
