// The VAES AES-GCM path (gcm_vaes.h) against OpenSSL's EVP: same ciphertext and tag for every
// size around the AES block, the 64-byte vector, the 256-byte loop turn, the transport's packet
// sizes and AAD lengths and splits, both key sizes, in place and out of place; each opens the other's
// output; a flipped bit anywhere is refused and leaves no plaintext behind.
#include <algorithm>
#include <vector>

#include "crypto/gcm_vaes.h"
#include "crypto_test_support.h"
#include "test.h"

using namespace squall::crypto;

namespace {
std::vector<uint8_t> Pattern(size_t size, uint32_t seed) {
  std::vector<uint8_t> bytes(size);
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < size; ++i) {
    x = x * 1103515245u + 12345u;
    bytes[i] = static_cast<uint8_t>(x >> 24);
  }
  return bytes;
}

std::vector<size_t> BodySizes() {
  std::vector<size_t> sizes;
  for (size_t s = 0; s <= 600; ++s) sizes.push_back(s);  // every tail shape, 0..2 loop turns
  for (size_t s : {1000, 1023, 1024, 1025, 1448, 4096, 8943, 8944, 8945, 64943, 64944, 64945,
                   65536, 100000}) {
    sizes.push_back(s);
  }
  return sizes;
}
}  // namespace

// Proves: the VAES path is byte-for-byte OpenSSL's AES-GCM (ciphertext and tag) for bodies of
// 0..600 bytes and the packet sizes, AAD of 0..300 bytes in two pieces, AES-128 and AES-256;
// opening either one's output with the other gives back the plaintext. Skips (passes vacuously,
// and says so) on a CPU without VAES, where only EVP ever runs.
TEST(crypto_vaes_gcm_equals_openssl) {
  if (!VaesGcmSupported()) {
    std::printf("  (no AVX-512 VAES on this CPU: the EVP path is the only one)\n");
    return;
  }
  for (AeadAlgorithm algorithm : {AeadAlgorithm::kAes128Gcm, AeadAlgorithm::kAes256Gcm}) {
    const std::vector<uint8_t> key = Pattern(KeyBytes(algorithm), static_cast<uint32_t>(algorithm));
    AeadContext vaes_seal, evp_seal, vaes_open, evp_open;
    CHECK(vaes_seal.Init(algorithm, key, AeadContext::Direction::kSeal));
    CHECK(evp_seal.Init(algorithm, key, AeadContext::Direction::kSeal, AeadBackend::kOpenSsl));
    CHECK(vaes_open.Init(algorithm, key, AeadContext::Direction::kOpen));
    CHECK(evp_open.Init(algorithm, key, AeadContext::Direction::kOpen, AeadBackend::kOpenSsl));
    CHECK(vaes_seal.uses_vaes() && vaes_open.uses_vaes());
    CHECK(!evp_seal.uses_vaes() && !evp_open.uses_vaes());
    uint32_t round = 0;
    for (size_t size : BodySizes()) {
      ++round;
      // AAD lengths cycle through 0..300 (the transport's is header + 8), split unevenly; every
      // 50th round has 511..700 bytes (several GHASH loop turns of associated data).
      const size_t aad_bytes = round % 50 == 0 ? 511 + (round / 50) * 47 % 190 : (round * 37) % 301;
      const std::vector<uint8_t> aad = Pattern(aad_bytes, round + 7);
      const size_t split = aad_bytes / 3;
      const Bytes aad_first(aad.data(), split), aad_second(aad.data() + split, aad_bytes - split);
      Nonce nonce;
      const std::vector<uint8_t> nonce_bytes = Pattern(kNonceBytes, round + 99);
      std::copy(nonce_bytes.begin(), nonce_bytes.end(), nonce.begin());
      const std::vector<uint8_t> plain = Pattern(size, round);
      // VAES out of place (with guard bytes), EVP in place.
      std::vector<uint8_t> fast(size + 2, 0xA5), reference = plain;
      Tag fast_tag{}, reference_tag{};
      CHECK(vaes_seal.Seal(nonce, aad_first, aad_second, Bytes(plain.data(), size), fast.data() + 1,
                           fast_tag));
      CHECK(evp_seal.Seal(nonce, aad_first, aad_second, MutableBytes(reference.data(), size),
                          reference_tag));
      CHECK(std::equal(reference.begin(), reference.end(), fast.begin() + 1));
      CHECK(fast_tag == reference_tag);
      CHECK(fast[0] == 0xA5 && fast[size + 1] == 0xA5);
      // VAES in place gives the same bytes.
      std::vector<uint8_t> in_place = plain;
      Tag in_place_tag{};
      CHECK(vaes_seal.Seal(nonce, aad_first, aad_second, MutableBytes(in_place.data(), size),
                           in_place_tag));
      CHECK(in_place == reference && in_place_tag == reference_tag);
      // Cross-open: VAES opens EVP's output out of place, EVP opens VAES's in place.
      std::vector<uint8_t> opened(size + 2, 0x5A);
      CHECK(vaes_open.Open(nonce, aad_first, aad_second, Bytes(reference.data(), size),
                           opened.data() + 1, reference_tag));
      CHECK(std::equal(plain.begin(), plain.end(), opened.begin() + 1));
      CHECK(opened[0] == 0x5A && opened[size + 1] == 0x5A);
      CHECK(evp_open.Open(nonce, aad_first, aad_second, MutableBytes(fast.data() + 1, size),
                          fast_tag));
      CHECK(std::equal(plain.begin(), plain.end(), fast.begin() + 1));
      CHECK(vaes_open.Open(nonce, aad_first, aad_second, MutableBytes(in_place.data(), size),
                           in_place_tag));
      CHECK(in_place == plain);
    }
  }
}

// Proves: a flipped bit in the AAD, the body or the tag, or a different nonce, is refused by
// both paths, out of place and in place, and the destination holds zeros afterwards (no
// unauthenticated plaintext); the source of an out-of-place open is untouched.
TEST(crypto_aead_refused_open_leaves_no_plaintext) {
  for (AeadBackend backend : {AeadBackend::kFastest, AeadBackend::kOpenSsl}) {
    const std::vector<uint8_t> key = Pattern(16, 3);
    AeadContext sealer, opener;
    CHECK(sealer.Init(AeadAlgorithm::kAes128Gcm, key, AeadContext::Direction::kSeal, backend));
    CHECK(opener.Init(AeadAlgorithm::kAes128Gcm, key, AeadContext::Direction::kOpen, backend));
    for (size_t size : {size_t{1}, size_t{33}, size_t{300}, size_t{8944}}) {
      const std::vector<uint8_t> aad = Pattern(40, 5), plain = Pattern(size, 6);
      Nonce nonce{};
      nonce[0] = 9;
      std::vector<uint8_t> sealed = plain;
      Tag tag{};
      CHECK(sealer.Seal(nonce, aad, Bytes(), MutableBytes(sealed.data(), size), tag));
      const size_t bits = (aad.size() + size + kTagBytes) * 8;
      const size_t step = size > 1000 ? 97 : 1;
      for (size_t bit = 0; bit < bits; bit += step) {
        std::vector<uint8_t> bad_aad = aad, bad_body = sealed;
        Tag bad_tag = tag;
        const size_t byte = bit / 8;
        const auto flip = static_cast<uint8_t>(1u << (bit % 8));
        if (byte < aad.size()) {
          bad_aad[byte] ^= flip;
        } else if (byte < aad.size() + size) {
          bad_body[byte - aad.size()] ^= flip;
        } else {
          bad_tag[byte - aad.size() - size] ^= flip;
        }
        std::vector<uint8_t> out(size, 0xCC);
        const std::vector<uint8_t> source = bad_body;
        CHECK(!opener.Open(nonce, bad_aad, Bytes(), Bytes(bad_body.data(), size), out.data(),
                           bad_tag));
        CHECK(std::all_of(out.begin(), out.end(), [](uint8_t b) { return b == 0; }));
        CHECK(bad_body == source);
        CHECK(!opener.Open(nonce, bad_aad, Bytes(), MutableBytes(bad_body.data(), size), bad_tag));
        CHECK(std::all_of(bad_body.begin(), bad_body.end(), [](uint8_t b) { return b == 0; }));
      }
      Nonce other = nonce;
      other[11] ^= 1;
      std::vector<uint8_t> out(size, 0xCC);
      CHECK(!opener.Open(other, aad, Bytes(), Bytes(sealed.data(), size), out.data(), tag));
      CHECK(std::all_of(out.begin(), out.end(), [](uint8_t b) { return b == 0; }));
      CHECK(opener.Open(nonce, aad, Bytes(), Bytes(sealed.data(), size), out.data(), tag));
      CHECK(out == plain);
    }
  }
}

// Proves: the hash-key setup and key expansion are right for any key, not just the two above:
// 256 keys per key size (so both ways the doubled hash key's top bit can fall, many times),
// each sealing a transport-shaped packet (AAD 32 + 8, body 0, 1,000 and 64,944 bytes) exactly
// as EVP does.
TEST(crypto_vaes_gcm_equals_openssl_for_many_keys) {
  if (!VaesGcmSupported()) return;
  for (AeadAlgorithm algorithm : {AeadAlgorithm::kAes128Gcm, AeadAlgorithm::kAes256Gcm}) {
    for (uint32_t k = 0; k < 256; ++k) {
      const std::vector<uint8_t> key = Pattern(KeyBytes(algorithm), 1000 + k);
      AeadContext vaes, evp;
      CHECK(vaes.Init(algorithm, key, AeadContext::Direction::kSeal));
      CHECK(evp.Init(algorithm, key, AeadContext::Direction::kSeal, AeadBackend::kOpenSsl));
      const std::vector<uint8_t> header = Pattern(32, k), sequence = Pattern(8, k + 1);
      Nonce nonce{};
      nonce[0] = static_cast<uint8_t>(k);
      for (size_t size : {size_t{0}, size_t{1000}, size_t{64944}}) {
        const std::vector<uint8_t> plain = Pattern(size, k + 2);
        std::vector<uint8_t> a(size), b(size);
        Tag tag_a{}, tag_b{};
        CHECK(vaes.Seal(nonce, header, sequence, Bytes(plain.data(), size), a.data(), tag_a));
        CHECK(evp.Seal(nonce, header, sequence, Bytes(plain.data(), size), b.data(), tag_b));
        CHECK(a == b && tag_a == tag_b);
      }
    }
  }
}
