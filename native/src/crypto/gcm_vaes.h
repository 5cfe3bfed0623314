#pragma once
// AES-GCM (128- and 256-bit keys, 96-bit nonces, 16-byte tags) with VAES and VPCLMULQDQ on
// 512-bit vectors: 16 AES blocks and 16 GHASH blocks per loop turn, one pass over the data.
//
// Why it exists: OpenSSL 3.0 (the one Node bundles) has no VAES path; its AES-NI GCM runs at
// ~0.155 ns/byte per direction here, which alone puts encrypted 8 MiB transfers above the
// issue's 25 % budget. This path is about twice as fast on CPUs with AVX-512 VAES (Ice Lake and
// later). AeadContext uses it when VaesGcmSupported() and EVP otherwise; both give the same
// bytes (native/test/crypto_vaes_gcm_test.cc compares them, size by size).
//
// GHASH arithmetic (how the code below is derived, so it can be checked):
//   R(a) is a 16-byte block byte-reversed, read as a 128-bit integer: the block's first bit
//   (coefficient of x^0 in GCM's bit order) is integer bit 127. A carry-less product of
//   R(a) and R(b) holds coefficient k of a*b at bit 254 - k. Storing the hash key as
//   R(H * x^-1) (R(H) shifted left by one, reduced) makes the product hold a polynomial
//   congruent to a*H with coefficient k at bit 255 - k. Reduction folds the low 64 bits
//   (degrees 192..255) and then the next 64 (128..191) down with x^128 = x^7 + x^2 + x + 1,
//   which in this bit order is one carry-less multiply by 0xc200000000000000 plus a swap of
//   the two 64-bit halves per fold. 16 blocks are multiplied by H^16..H^1, the unreduced
//   products summed, and reduced once.
#include <cstddef>
#include <cstdint>

namespace squall::crypto {

// True if this CPU (and OS) runs AVX-512F/BW/VL, VAES and VPCLMULQDQ. Checked once.
bool VaesGcmSupported();

// The expanded key: round keys and the hash key powers. 64-byte aligned, no pointers; wipe
// with OPENSSL_cleanse before freeing.
struct alignas(64) VaesGcmKey {
  uint8_t hash_powers[16][16];  // R(H^16 x^-1) .. R(H^1 x^-1), highest power first (aligned)
  uint8_t round_keys[15][16];
  int rounds = 0;               // 10 (AES-128) or 14 (AES-256)
};

// key_bytes is 16 or 32. Only call when VaesGcmSupported().
void VaesGcmInit(VaesGcmKey& key, const uint8_t* key_bytes_ptr, size_t key_bytes);

// Associated data is aad_first || aad_second, any lengths (either may be empty / null).
// Encrypts in[0, bytes) into out (in place when out == in, else disjoint) and writes the tag.
void VaesGcmSeal(const VaesGcmKey& key, const uint8_t nonce[12], const uint8_t* aad_first,
                 size_t aad_first_bytes, const uint8_t* aad_second, size_t aad_second_bytes,
                 const uint8_t* in, size_t bytes, uint8_t* out, uint8_t tag[16]);

// Decrypts in[0, bytes) into out and checks the tag in constant time. On a mismatch, out[0,
// bytes) is zeroed before returning false: no unauthenticated plaintext is left behind.
bool VaesGcmOpen(const VaesGcmKey& key, const uint8_t nonce[12], const uint8_t* aad_first,
                 size_t aad_first_bytes, const uint8_t* aad_second, size_t aad_second_bytes,
                 const uint8_t* in, size_t bytes, uint8_t* out, const uint8_t tag[16]);

}  // namespace squall::crypto
