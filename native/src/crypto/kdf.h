#pragma once
// SHA-256, HMAC-SHA256 and HKDF-SHA256 (RFC 5869) over OpenSSL 3's EVP interfaces, plus the
// random source and constant-time helpers the handshake uses. Handshake-time only: these
// allocate, which is fine once per session and never on the packet path.
#include <array>
#include <cstdint>
#include <initializer_list>

#include "crypto/crypto_common.h"

namespace squall::crypto {

inline constexpr size_t kDigestBytes = 32;
using Digest = std::array<uint8_t, kDigestBytes>;

// SHA-256 of the concatenation of parts.
Digest Sha256(std::initializer_list<Bytes> parts);
// HMAC-SHA256(key, concatenation of parts).
Digest HmacSha256(Bytes key, std::initializer_list<Bytes> parts);
// HKDF-Extract(salt, ikm) = HMAC(salt, ikm).
Digest HkdfExtract(Bytes salt, Bytes ikm);
// HKDF-Expand(prk, info, out.size()); info is the concatenation of info_parts.
// out.size() must be at most 255 * 32 bytes (RFC 5869 limit, asserted).
void HkdfExpand(const Digest& prk, std::initializer_list<Bytes> info_parts, MutableBytes out);

// Fills out from OpenSSL's CSPRNG. Returns false if the generator failed (caller refuses).
bool RandomBytes(MutableBytes out);
// Constant-time comparison (CRYPTO_memcmp), so a MAC check leaks no prefix length.
bool ConstantTimeEqual(Bytes a, Bytes b);
// Wipes secrets (OPENSSL_cleanse: not optimised away).
void Cleanse(MutableBytes secret);

// Byte view of a string literal label, without its terminating NUL.
template <size_t N>
Bytes Label(const char (&text)[N]) {
  return Bytes(reinterpret_cast<const uint8_t*>(text), N - 1);
}

}  // namespace squall::crypto
