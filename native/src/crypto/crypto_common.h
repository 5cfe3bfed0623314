#pragma once
// Shared pieces of the crypto module: an always-on assertion for internal invariants (never for
// bad input, which gets a status), little-endian helpers for the byte layouts this module owns,
// and the endpoint-wide counters every drop and refusal is recorded in.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>

// Invariants of this module (nonce uniqueness, limits). Stays on in release builds, as in
// TigerBeetle: a broken invariant here means a reused nonce, which must never reach the wire.
#define SQUALL_CRYPTO_ASSERT(cond, why)                                                    \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      std::fprintf(stderr, "squall crypto invariant broken at %s:%d: %s (%s)\n", __FILE__, \
                   __LINE__, #cond, why);                                                  \
      std::abort();                                                                        \
    }                                                                                      \
  } while (0)

namespace squall::crypto {

using Bytes = std::span<const uint8_t>;
using MutableBytes = std::span<uint8_t>;

inline void StoreLe16(uint8_t* out, uint16_t value) {
  out[0] = static_cast<uint8_t>(value);
  out[1] = static_cast<uint8_t>(value >> 8);
}
inline void StoreLe32(uint8_t* out, uint32_t value) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<uint8_t>(value >> (8 * i));
}
inline void StoreLe64(uint8_t* out, uint64_t value) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(value >> (8 * i));
}
inline uint16_t LoadLe16(const uint8_t* in) {
  return static_cast<uint16_t>(in[0] | (in[1] << 8));
}
inline uint32_t LoadLe32(const uint8_t* in) {
  uint32_t value = 0;
  for (int i = 3; i >= 0; --i) value = (value << 8) | in[i];
  return value;
}
inline uint64_t LoadLe64(const uint8_t* in) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | in[i];
  return value;
}

// Endpoint-wide counters. One instance per endpoint, owned by the transport and passed by pointer
// to every SessionCrypto and handshake of that endpoint; it must outlive them. Single-threaded:
// the endpoint's thread is the only writer (as with every other per-endpoint stat).
struct CryptoCounters {
  uint64_t sealed_packets = 0;
  uint64_t opened_packets = 0;
  uint64_t sealed_vaes = 0;  // of sealed_packets, those sealed on the VAES path (gcm_vaes.h)
  // Packet drops by reason (SessionCrypto::Open).
  uint64_t drop_truncated = 0;      // shorter than header + trailer
  uint64_t drop_unknown_epoch = 0;  // no receive key for the epoch in the trailer
  uint64_t drop_replay = 0;         // counter already accepted (inside the window)
  uint64_t drop_too_old = 0;        // counter below the replay window
  uint64_t drop_bad_tag = 0;        // forged, tampered, or sealed under another key
  // Seal refusals: the key reached its hard packet limit (a rekey was overdue).
  uint64_t seal_refused_key_exhausted = 0;
  // Handshake refusals by reason (ClientHandshake / ServerHandshake).
  uint64_t handshake_ok = 0;
  uint64_t handshake_malformed = 0;
  uint64_t handshake_unknown_key_id = 0;
  uint64_t handshake_bad_mac = 0;
  uint64_t handshake_cipher_mismatch = 0;
  uint64_t handshake_bad_peer_key = 0;
  uint64_t handshake_refused_by_peer = 0;
};

}  // namespace squall::crypto
