// The authenticated handshake: same key talks, wrong key refused on both sides with a reason,
// tampering and replays refused, idempotent retries, key rotation with a grace period.
#include <random>

#include "crypto_test_support.h"
#include "test.h"

using namespace squall::crypto;
using namespace squall::crypto::testing;

namespace {
// Sends one packet each way between two sessions; true if both open.
bool ExchangeOk(SessionCrypto& client, SessionCrypto& server) {
  std::vector<uint8_t> request = MakePacket(40, 1);
  std::vector<uint8_t> response = MakePacket(40, 2);
  return client.Seal(request, kTestHeaderBytes, 40) == SealStatus::kOk &&
         server.Open(request, kTestHeaderBytes).status == OpenStatus::kOk &&
         server.Seal(response, kTestHeaderBytes, 40) == SealStatus::kOk &&
         client.Open(response, kTestHeaderBytes).status == OpenStatus::kOk;
}
}  // namespace

// Proves: two endpoints with the same key complete the handshake with and without forward
// secrecy, derive matching keys, and talk; two handshakes give different keys (fresh per session,
// so a restart or re-created session never reuses a key); a packet of one session does not open
// in the other.
TEST(crypto_handshake_same_key_talks) {
  Keyring ring;
  CHECK_STATUS(ring.Install(MakeGroupKey(1, 0x11)), KeyringStatus::kOk);
  for (bool forward_secrecy : {true, false}) {
    CryptoCounters client_counters, server_counters;
    HandshakeConfig config;
    config.forward_secrecy = forward_secrecy;
    HandshakeOutcome first =
        RunHandshake(ring, ring, &client_counters, &server_counters, config, config);
    HandshakeOutcome second =
        RunHandshake(ring, ring, &client_counters, &server_counters, config, config);
    CHECK_STATUS(first.client_status, HandshakeStatus::kOk);
    CHECK_STATUS(first.server_status, HandshakeStatus::kOk);
    if (!first.client_keys || !first.server_keys || !second.client_keys || !second.server_keys) {
      CHECK(false);
      return;
    }
    CHECK_EQ(first.client_keys->forward_secret, forward_secrecy);
    // The authenticated identity reaches both sides (RunHandshake: client 7, server 9).
    CHECK_EQ(first.client_keys->server_session, 9u);
    CHECK_EQ(first.server_keys->client_session, 7u);
    CHECK(first.server_keys->client_address == MakeParams(7).client_address.bytes);
    CHECK(first.client_keys->session_id == first.server_keys->session_id);
    CHECK(first.client_keys->client_to_server.key == first.server_keys->client_to_server.key);
    CHECK(first.client_keys->client_to_server.key != first.client_keys->server_to_client.key);
    CHECK(first.client_keys->client_to_server.key != second.client_keys->client_to_server.key);
    CHECK(first.client_keys->session_id != second.client_keys->session_id);
    auto client_a = SessionCrypto::Create(Role::kClient, std::move(*first.client_keys),
                                          &client_counters);
    auto server_a = SessionCrypto::Create(Role::kServer, std::move(*first.server_keys),
                                          &server_counters);
    auto server_b = SessionCrypto::Create(Role::kServer, std::move(*second.server_keys),
                                          &server_counters);
    CHECK(ExchangeOk(*client_a, *server_a));
    std::vector<uint8_t> packet = MakePacket(40, 3);
    CHECK_STATUS(client_a->Seal(packet, kTestHeaderBytes, 40), SealStatus::kOk);
    CHECK_STATUS(server_b->Open(packet, kTestHeaderBytes).status, OpenStatus::kBadTag);
    CHECK_EQ(client_counters.handshake_ok, uint64_t{2});
    CHECK_EQ(server_counters.handshake_ok, uint64_t{2});
  }
}

// Proves: with different secrets under the same key id the server refuses the hello ("peer does
// not hold the group key"), sends a Refuse, and the client reports the refusal and its reason:
// both sides fail with a clear event and no keys.
TEST(crypto_handshake_wrong_key_refused_both_sides) {
  Keyring client_ring, server_ring;
  client_ring.Install(MakeGroupKey(1, 0x11));
  server_ring.Install(MakeGroupKey(1, 0x99));
  CryptoCounters client_counters, server_counters;
  HandshakeOutcome outcome = RunHandshake(client_ring, server_ring, &client_counters,
                                          &server_counters);
  CHECK_STATUS(outcome.server_status, HandshakeStatus::kBadMac);
  CHECK_STATUS(outcome.client_status, HandshakeStatus::kRefusedByPeer);
  CHECK(!outcome.client_keys && !outcome.server_keys);
  CHECK_EQ(server_counters.handshake_bad_mac, uint64_t{1});
  CHECK_EQ(client_counters.handshake_refused_by_peer, uint64_t{1});
  CHECK(std::string(Describe(HandshakeStatus::kBadMac)).find("peer does not hold the group key") !=
        std::string::npos);

  // The client learns the server's reason from the Refuse message.
  ClientHandshake client({}, &client_counters);
  ServerHandshake server({}, &server_counters);
  HandshakeStep hello = client.Start(client_ring, MakeParams(1));
  HandshakeStep refusal = server.OnClientHello(hello.reply, server_ring, 2, 0, 0);
  CHECK_EQ(refusal.reply.size(), kRefuseBytes);
  HandshakeStep reported = client.OnMessage(refusal.reply);
  CHECK_STATUS(reported.status, HandshakeStatus::kRefusedByPeer);
  CHECK_STATUS(reported.peer_reason, HandshakeStatus::kBadMac);

  // A server hello that fails the client's check (a server without the key, simulated by
  // altering one byte in flight) is refused by the client, which tells the server why.
  ClientHandshake client2({}, &client_counters);
  ServerHandshake server2({}, &server_counters);
  HandshakeStep hello2 = client2.Start(client_ring, MakeParams(1));
  HandshakeStep server_hello = server2.OnClientHello(hello2.reply, client_ring, 2, 0, 0);
  CHECK_STATUS(server_hello.status, HandshakeStatus::kInProgress);
  server_hello.reply[20] ^= 1;  // inside the server nonce
  HandshakeStep client_verdict = client2.OnMessage(server_hello.reply);
  CHECK_STATUS(client_verdict.status, HandshakeStatus::kBadMac);
  CHECK(!client_verdict.keys.has_value());
  HandshakeStep server_verdict = server2.OnMessage(client_verdict.reply);
  CHECK_STATUS(server_verdict.status, HandshakeStatus::kRefusedByPeer);
  CHECK_STATUS(server_verdict.peer_reason, HandshakeStatus::kBadMac);
}

// Proves: forward secrecy is used only when both sides enable it, and either way the two sides
// agree on the keys.
TEST(crypto_handshake_forward_secrecy_negotiation) {
  Keyring ring;
  ring.Install(MakeGroupKey(1, 0x11));
  CryptoCounters client_counters, server_counters;
  HandshakeConfig on, off;
  off.forward_secrecy = false;
  for (int mode = 0; mode < 4; ++mode) {
    const HandshakeConfig& client_config = (mode & 1) ? on : off;
    const HandshakeConfig& server_config = (mode & 2) ? on : off;
    HandshakeOutcome outcome = RunHandshake(ring, ring, &client_counters, &server_counters,
                                            client_config, server_config);
    if (!outcome.client_keys || !outcome.server_keys) {
      CHECK(false);
      continue;
    }
    CHECK_EQ(outcome.client_keys->forward_secret, mode == 3);
    CHECK_EQ(outcome.server_keys->forward_secret, mode == 3);
    CHECK(outcome.client_keys->client_to_server.key == outcome.server_keys->client_to_server.key);
  }
}

// Proves: a key id the server does not hold is refused as unknown; a cipher mismatch is refused
// with its own reason.
TEST(crypto_handshake_unknown_key_id_and_cipher_mismatch) {
  Keyring client_ring, server_ring;
  client_ring.Install(MakeGroupKey(5, 0x11));
  server_ring.Install(MakeGroupKey(1, 0x11));
  CryptoCounters client_counters, server_counters;
  HandshakeOutcome unknown =
      RunHandshake(client_ring, server_ring, &client_counters, &server_counters);
  CHECK_STATUS(unknown.server_status, HandshakeStatus::kUnknownKeyId);
  CHECK_STATUS(unknown.client_status, HandshakeStatus::kRefusedByPeer);
  CHECK_EQ(server_counters.handshake_unknown_key_id, uint64_t{1});

  HandshakeConfig aes256;
  aes256.algorithm = AeadAlgorithm::kAes256Gcm;
  HandshakeOutcome mismatch =
      RunHandshake(server_ring, server_ring, &client_counters, &server_counters, aes256, {});
  CHECK_STATUS(mismatch.server_status, HandshakeStatus::kCipherMismatch);
  CHECK_STATUS(mismatch.client_status, HandshakeStatus::kRefusedByPeer);
}

// Proves: changing any byte of a ClientHello or a Confirm makes the server refuse it (MAC or
// format check); nothing unauthenticated is acted upon.
TEST(crypto_handshake_tampered_messages_refused) {
  Keyring ring;
  ring.Install(MakeGroupKey(1, 0x11));
  CryptoCounters client_counters, server_counters;
  ClientHandshake client({}, &client_counters);
  const HandshakeStep hello = client.Start(ring, MakeParams(1));
  size_t refused = 0;
  for (size_t i = 0; i < hello.reply.size(); ++i) {
    std::vector<uint8_t> forged = hello.reply;
    forged[i] ^= 0x40;
    ServerHandshake server({}, &server_counters);
    const HandshakeStep step = server.OnClientHello(forged, ring, 2, 0, 0);
    if (step.status != HandshakeStatus::kInProgress && !step.keys) ++refused;
  }
  CHECK_EQ(refused, hello.reply.size());

  ServerHandshake server({}, &server_counters);
  const HandshakeStep server_hello = server.OnClientHello(hello.reply, ring, 2, 0, 0);
  const HandshakeStep confirm = client.OnMessage(server_hello.reply);
  CHECK_STATUS(confirm.status, HandshakeStatus::kOk);
  std::vector<uint8_t> forged_confirm = confirm.reply;
  forged_confirm[kConfirmBytes - 1] ^= 1;
  const HandshakeStep verdict = server.OnMessage(forged_confirm);
  CHECK_STATUS(verdict.status, HandshakeStatus::kBadMac);
  CHECK(!verdict.keys.has_value());
}

// Proves: a recorded ClientHello + Confirm replayed to a server by someone without the key
// gets a ServerHello but cannot complete: the old Confirm does not match the new server nonce.
TEST(crypto_handshake_replayed_hello_cannot_complete) {
  Keyring ring;
  ring.Install(MakeGroupKey(1, 0x11));
  CryptoCounters client_counters, server_counters;
  ClientHandshake client({}, &client_counters);
  ServerHandshake server({}, &server_counters);
  const HandshakeStep hello = client.Start(ring, MakeParams(1));
  const HandshakeStep server_hello = server.OnClientHello(hello.reply, ring, 2, 0, 0);
  const HandshakeStep confirm = client.OnMessage(server_hello.reply);
  CHECK_STATUS(server.OnMessage(confirm.reply).status, HandshakeStatus::kOk);

  ServerHandshake victim({}, &server_counters);
  const HandshakeStep replay_reply = victim.OnClientHello(hello.reply, ring, 3, 0, 0);
  CHECK_STATUS(replay_reply.status, HandshakeStatus::kInProgress);
  const HandshakeStep replay_done = victim.OnMessage(confirm.reply);
  CHECK_STATUS(replay_done.status, HandshakeStatus::kBadMac);
  CHECK(!replay_done.keys.has_value());
}

// Proves: retries are idempotent. A repeated ClientHello (our ServerHello was lost) gets the
// same ServerHello; a repeated ServerHello (our Confirm was lost) gets the same Confirm; and the
// handshake still completes with matching keys.
TEST(crypto_handshake_retries_are_idempotent) {
  Keyring ring;
  ring.Install(MakeGroupKey(1, 0x11));
  CryptoCounters client_counters, server_counters;
  ClientHandshake client({}, &client_counters);
  ServerHandshake server({}, &server_counters);
  const HandshakeStep hello = client.Start(ring, MakeParams(1));
  const HandshakeStep server_hello = server.OnClientHello(hello.reply, ring, 2, 0, 0);
  const HandshakeStep server_hello_again = server.OnClientHello(hello.reply, ring, 2, 0, 0);
  CHECK(server_hello.reply == server_hello_again.reply);
  HandshakeStep confirm = client.OnMessage(server_hello.reply);
  CHECK_STATUS(confirm.status, HandshakeStatus::kOk);
  const HandshakeStep confirm_again = client.OnMessage(server_hello_again.reply);
  CHECK_STATUS(confirm_again.status, HandshakeStatus::kInProgress);
  CHECK(confirm.reply == confirm_again.reply);
  HandshakeStep done = server.OnMessage(confirm_again.reply);
  CHECK_STATUS(done.status, HandshakeStatus::kOk);
  if (!confirm.keys || !done.keys) {
    CHECK(false);
    return;
  }
  CHECK(confirm.keys->session_id == done.keys->session_id);
}

// Proves: the negotiated epoch is the larger of the client's proposal and the server's minimum,
// so a rekey never reuses an epoch either side has used.
TEST(crypto_handshake_epoch_negotiation) {
  Keyring ring;
  ring.Install(MakeGroupKey(1, 0x11));
  CryptoCounters client_counters, server_counters;
  HandshakeOutcome outcome = RunHandshake(ring, ring, &client_counters, &server_counters, {}, {},
                                          /*epoch_proposed=*/3, /*epoch_min=*/7);
  if (!outcome.client_keys || !outcome.server_keys) {
    CHECK(false);
    return;
  }
  CHECK_EQ(static_cast<int>(outcome.client_keys->epoch), 7);
  CHECK_EQ(static_cast<int>(outcome.server_keys->epoch), 7);
}

// Proves key rotation while running: after Rotate(), new handshakes under the new key succeed,
// handshakes under the old key are still accepted during the grace period and refused after it;
// an established session keeps working throughout and then rekeys onto the new key without
// dropping in-flight packets.
TEST(crypto_rotation_old_and_new_accepted_in_grace) {
  const GroupKey old_key = MakeGroupKey(1, 0x11);
  const GroupKey new_key = MakeGroupKey(2, 0x22);
  Keyring server_ring, old_client_ring, new_client_ring;
  server_ring.Install(old_key);
  old_client_ring.Install(old_key);
  CryptoCounters client_counters, server_counters;
  HandshakeOutcome initial =
      RunHandshake(old_client_ring, server_ring, &client_counters, &server_counters);
  if (!initial.client_keys || !initial.server_keys) {
    CHECK(false);
    return;
  }
  auto client = SessionCrypto::Create(Role::kClient, std::move(*initial.client_keys),
                                      &client_counters);
  auto server = SessionCrypto::Create(Role::kServer, std::move(*initial.server_keys),
                                      &server_counters);
  CHECK_EQ(client->key_id(), 1u);

  // Rotate at t = 1000 ms with a 5000 ms grace.
  CHECK_STATUS(server_ring.Rotate(new_key, 1000, 5000), KeyringStatus::kOk);
  CHECK_STATUS(new_client_ring.InstallAll({old_key, new_key}), KeyringStatus::kOk);
  CHECK_EQ(new_client_ring.Primary()->key_id, 2u);
  CHECK_EQ(server_ring.Primary()->key_id, 2u);
  CHECK(ExchangeOk(*client, *server));  // the established session is untouched

  HandshakeOutcome old_in_grace = RunHandshake(old_client_ring, server_ring, &client_counters,
                                               &server_counters, {}, {}, 0, 0, 3000);
  CHECK_STATUS(old_in_grace.server_status, HandshakeStatus::kOk);
  HandshakeOutcome new_in_grace = RunHandshake(new_client_ring, server_ring, &client_counters,
                                               &server_counters, {}, {}, 0, 0, 3000);
  CHECK_STATUS(new_in_grace.server_status, HandshakeStatus::kOk);
  CHECK(new_in_grace.server_keys && new_in_grace.server_keys->key_id == 2u);

  // The session rekeys onto key 2 (the transport does this for sessions whose key_id is not
  // the primary). A packet sealed before the switch is still in flight and must open.
  std::vector<uint8_t> in_flight = MakePacket(40, 9);
  CHECK_STATUS(client->Seal(in_flight, kTestHeaderBytes, 40), SealStatus::kOk);
  HandshakeOutcome rekey = RunHandshake(new_client_ring, server_ring, &client_counters,
                                        &server_counters, {}, {},
                                        static_cast<uint16_t>(client->NextEpoch()),
                                        static_cast<uint16_t>(server->NextEpoch()), 4000);
  if (!rekey.client_keys || !rekey.server_keys) {
    CHECK(false);
    return;
  }
  CHECK(client->Adopt(std::move(*rekey.client_keys)));
  CHECK(server->Adopt(std::move(*rekey.server_keys)));
  CHECK_EQ(server->key_id(), 2u);
  CHECK_STATUS(server->Open(in_flight, kTestHeaderBytes).status, OpenStatus::kOk);
  CHECK(ExchangeOk(*client, *server));

  // After the grace period the old key is refused; pruning forgets it.
  HandshakeOutcome old_after = RunHandshake(old_client_ring, server_ring, &client_counters,
                                            &server_counters, {}, {}, 0, 0, 6000);
  CHECK_STATUS(old_after.server_status, HandshakeStatus::kUnknownKeyId);
  CHECK_STATUS(old_after.client_status, HandshakeStatus::kRefusedByPeer);
  server_ring.PruneExpired(6000);
  CHECK_EQ(server_ring.size(), size_t{1});
  CHECK(ExchangeOk(*client, *server));  // the rekeyed session carries on
}

// Proves: over a channel that loses 40% and duplicates 20% of messages, a client that resends
// its last message on every timeout always completes, and both sides end with the same keys.
TEST(crypto_handshake_completes_over_lossy_channel) {
  Keyring ring;
  ring.Install(MakeGroupKey(1, 0x11));
  std::mt19937 random(2024);
  int completed = 0;
  constexpr int kTrials = 200;
  for (int trial = 0; trial < kTrials; ++trial) {
    CryptoCounters client_counters, server_counters;
    ClientHandshake client({}, &client_counters);
    ServerHandshake server({}, &server_counters);
    std::vector<uint8_t> client_last = client.Start(ring, MakeParams(1)).reply;
    std::optional<SessionKeys> client_keys, server_keys;
    // Delivers message to the other side 0, 1 or 2 times; returns the replies produced.
    auto deliver = [&](const std::vector<uint8_t>& message, bool to_server) {
      std::vector<std::vector<uint8_t>> replies;
      const int copies = random() % 10 < 4 ? 0 : (random() % 10 < 2 ? 2 : 1);
      for (int copy = 0; copy < copies; ++copy) {
        HandshakeStep step;
        if (to_server) {
          step = message.size() == kClientHelloBytes
                     ? server.OnClientHello(message, ring, 2, 0, 0)
                     : server.OnMessage(message);
          if (step.keys) server_keys = std::move(step.keys);
        } else {
          step = client.OnMessage(message);
          if (step.keys) client_keys = std::move(step.keys);
          if (!step.reply.empty()) client_last = step.reply;
        }
        if (!step.reply.empty()) replies.push_back(step.reply);
      }
      return replies;
    };
    for (int round = 0; round < 100 && !(client_keys && server_keys); ++round) {
      // Timeout: the client resends its last message (hello, then confirm).
      for (const auto& to_client : deliver(client_last, true)) {
        for (const auto& to_server : deliver(to_client, false)) deliver(to_server, true);
      }
    }
    if (client_keys && server_keys && client_keys->session_id == server_keys->session_id &&
        client_keys->client_to_server.key == server_keys->client_to_server.key) {
      ++completed;
    }
  }
  CHECK_EQ(completed, kTrials);
}
