// Out-of-place sealing and opening (the transport seals a message's slice straight into the
// socket's send batch and opens a request's packets straight into the request's buffer): the
// bytes on the wire are exactly those of the in-place path, for every size around the packet
// and AES/GHASH block boundaries, and an out-of-place open refuses what the in-place one does.
#include <algorithm>

#include "crypto_test_support.h"
#include "test.h"

using namespace squall::crypto;
using namespace squall::crypto::testing;

namespace {
// Fixed key material, so two SessionCrypto objects seal identically (a test-only situation: the
// handshake never hands one key to two sealers).
SessionKeys FixedKeys(AeadAlgorithm algorithm) {
  SessionKeys keys;
  keys.algorithm = algorithm;
  keys.key_id = 1;
  keys.epoch = 0;
  for (size_t i = 0; i < kKeyBytesMax; ++i) {
    keys.client_to_server.key[i] = static_cast<uint8_t>(i * 7 + 1);
    keys.server_to_client.key[i] = static_cast<uint8_t>(i * 11 + 3);
  }
  keys.client_to_server.salt = {1, 2, 3, 4};
  keys.server_to_client.salt = {5, 6, 7, 8};
  return keys;
}

// Body sizes around AES blocks (16), small packets, the 1 KiB batch/bundle limit, and the 9000-
// and 65000-byte datagram sizes (header 32 and trailer 24 taken off).
std::vector<uint8_t> Body(size_t size, uint8_t seed) {
  std::vector<uint8_t> body(size);
  for (size_t i = 0; i < size; ++i) body[i] = static_cast<uint8_t>(seed * 29 + i * 5);
  return body;
}

const size_t kSizes[] = {0,    1,    15,   16,   17,   31,   32,   33,   255,   256,   1000,
                         1023, 1024, 1025, 1048, 4096, 8943, 8944, 8945, 64943, 64944, 64945};
}  // namespace

// Proves: AeadContext out of place writes the same ciphertext and tag as in place, leaves its
// input untouched, and opens back (both ways) to the plaintext.
TEST(crypto_aead_out_of_place_equals_in_place) {
  for (AeadAlgorithm algorithm : {AeadAlgorithm::kAes128Gcm, AeadAlgorithm::kAes256Gcm}) {
    std::vector<uint8_t> key(KeyBytes(algorithm), 0x42);
    AeadContext in_place, out_of_place, opener;
    CHECK(in_place.Init(algorithm, key, AeadContext::Direction::kSeal));
    CHECK(out_of_place.Init(algorithm, key, AeadContext::Direction::kSeal));
    CHECK(opener.Init(algorithm, key, AeadContext::Direction::kOpen));
    const std::vector<uint8_t> aad(32, 0x17), aad2(8, 0x29);
    Nonce nonce{};
    for (size_t size : kSizes) {
      nonce[11] = static_cast<uint8_t>(nonce[11] + 1);
      const std::vector<uint8_t> plain = Body(size, static_cast<uint8_t>(size));
      std::vector<uint8_t> a = plain, b(size + 16, 0xEE);
      Tag tag_a{}, tag_b{};
      CHECK(in_place.Seal(nonce, aad, aad2, MutableBytes(a.data(), size), tag_a));
      CHECK(out_of_place.Seal(nonce, aad, aad2, Bytes(plain.data(), size), b.data() + 8, tag_b));
      CHECK(std::equal(a.begin(), a.end(), b.begin() + 8));
      CHECK(tag_a == tag_b);
      CHECK(b[7] == 0xEE && b[size + 8] == 0xEE);  // nothing written outside the body
      // Open out of place from the sealed copy, and in place: both give the plaintext.
      std::vector<uint8_t> opened(size + 1, 0);
      CHECK(opener.Open(nonce, aad, aad2, Bytes(a.data(), size), opened.data(), tag_a));
      CHECK(std::equal(plain.begin(), plain.end(), opened.begin()));
      CHECK(opener.Open(nonce, aad, aad2, MutableBytes(b.data() + 8, size), tag_b));
      CHECK(std::equal(plain.begin(), plain.end(), b.begin() + 8));
    }
  }
}

// Proves: SessionCrypto::SealInto (header and body read from elsewhere) produces the very
// datagram the in-place Seal produces at the same counter, for every size; the receiver opens it
// in place and out of place alike; and an out-of-place open refuses every flipped bit (sampled
// across header, body and trailer) and replays exactly as the in-place one does, counting each.
TEST(crypto_session_seal_into_equals_seal_and_open_into_refuses_the_same) {
  for (AeadAlgorithm algorithm : {AeadAlgorithm::kAes128Gcm, AeadAlgorithm::kAes256Gcm}) {
    CryptoCounters counters_a, counters_b, counters_r;
    auto a = SessionCrypto::Create(Role::kClient, FixedKeys(algorithm), &counters_a);
    auto b = SessionCrypto::Create(Role::kClient, FixedKeys(algorithm), &counters_b);
    auto receiver = SessionCrypto::Create(Role::kServer, FixedKeys(algorithm), &counters_r);
    CHECK(a != nullptr && b != nullptr && receiver != nullptr);
    if (!a || !b || !receiver) return;
    for (size_t size : kSizes) {
      const std::vector<uint8_t> plain = MakePacket(size, static_cast<uint8_t>(size + 1));
      std::vector<uint8_t> sealed_in_place = plain;  // MakePacket leaves room for the trailer
      CHECK(a->Seal(sealed_in_place, kTestHeaderBytes, size) == SealStatus::kOk);
      std::vector<uint8_t> sealed_into(SealedBytes(kTestHeaderBytes, size), 0xEE);
      CHECK(b->SealInto(sealed_into, Bytes(plain.data(), kTestHeaderBytes),
                        Bytes(plain.data() + kTestHeaderBytes, size)) == SealStatus::kOk);
      CHECK(sealed_in_place == sealed_into);
      // Too small a destination is refused and consumes no counter.
      std::vector<uint8_t> small(SealedBytes(kTestHeaderBytes, size) - 1);
      CHECK(b->SealInto(small, Bytes(plain.data(), kTestHeaderBytes),
                        Bytes(plain.data() + kTestHeaderBytes, size)) ==
            SealStatus::kBufferTooSmall);
      CHECK_EQ(a->send_counter_next(), b->send_counter_next());

      // Flipped bits (every 61st bit, and every bit of the header's first bytes and the
      // trailer) are refused out of place; the datagram's own bytes stay as they were, and the
      // destination holds no plaintext.
      const size_t bits = sealed_into.size() * 8;
      uint64_t flips = 0;
      for (size_t bit = 0; bit < bits; ++bit) {
        const bool in_trailer = bit >= (sealed_into.size() - kTrailerBytes) * 8;
        if (bit % 61 != 0 && bit >= 64 && !in_trailer) continue;
        std::vector<uint8_t> tampered = sealed_into;
        tampered[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
        const std::vector<uint8_t> before = tampered;
        std::vector<uint8_t> out(size, 0xCC);
        const OpenResult r = receiver->Open(tampered, kTestHeaderBytes, out);
        CHECK(r.status != OpenStatus::kOk);
        CHECK(tampered == before);
        // No unauthenticated plaintext in the destination: zeros after a tag failure, and
        // untouched when the trailer's flipped sequence was refused before decryption.
        const uint8_t left = r.status == OpenStatus::kBadTag ? 0x00 : 0xCC;
        CHECK(std::all_of(out.begin(), out.end(), [left](uint8_t v) { return v == left; }));
        ++flips;
      }
      CHECK_EQ(TotalDrops(counters_r), flips);
      counters_r = CryptoCounters{};
      // The genuine datagram opens out of place (its buffer untouched) ...
      std::vector<uint8_t> copy = sealed_into;
      std::vector<uint8_t> out(size + 3, 0);
      const OpenResult r = receiver->Open(copy, kTestHeaderBytes, out);
      CHECK(r.status == OpenStatus::kOk);
      CHECK_EQ(r.body_bytes, size);
      CHECK(copy == sealed_into);
      if (size > 0) CHECK(r.body == out.data());
      CHECK(std::equal(plain.begin() + kTestHeaderBytes,
                       plain.begin() + static_cast<long>(kTestHeaderBytes + size), r.body));
      // ... and its replay is refused before anything is written.
      std::vector<uint8_t> untouched(size, 0x5A);
      CHECK(receiver->Open(copy, kTestHeaderBytes, untouched).status == OpenStatus::kReplay);
      CHECK(std::all_of(untouched.begin(), untouched.end(), [](uint8_t v) { return v == 0x5A; }));
      CHECK_EQ(counters_r.drop_replay, 1u);
      counters_r = CryptoCounters{};
    }
    // The in-place twin (a's output) opens in place, and a too-small destination falls back to
    // in place rather than overflowing it.
    const std::vector<uint8_t> plain = MakePacket(100, 9);
    std::vector<uint8_t> packet = plain;
    CHECK(a->Seal(packet, kTestHeaderBytes, 100) == SealStatus::kOk);
    std::vector<uint8_t> tiny(99, 0x33);
    const OpenResult r = receiver->Open(packet, kTestHeaderBytes, tiny);
    CHECK(r.status == OpenStatus::kOk);
    CHECK(r.body == packet.data() + kTestHeaderBytes);
    CHECK(std::equal(plain.begin() + kTestHeaderBytes, plain.begin() + kTestHeaderBytes + 100,
                     r.body));
    CHECK(std::all_of(tiny.begin(), tiny.end(), [](uint8_t v) { return v == 0x33; }));
  }
}
