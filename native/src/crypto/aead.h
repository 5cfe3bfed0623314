#pragma once
// AES-GCM with one OpenSSL EVP context per key and direction, initialised once with the key
// schedule and reused for every packet: a packet only sets the 96-bit nonce, feeds the associated
// data and transforms the body, in place or from one buffer into another (one EVP update call per
// body, however large). No allocation per packet. On CPUs with AVX-512 VAES and VPCLMULQDQ the
// packets go through gcm_vaes.h instead (same bytes, about twice OpenSSL 3.0's speed on large
// bodies and without EVP's per-call dispatch), and no EVP context is made.
#include <array>
#include <cstdint>

#include "crypto/crypto_common.h"

typedef struct evp_cipher_ctx_st EVP_CIPHER_CTX;

namespace squall::crypto {

struct VaesGcmKey;

enum class AeadAlgorithm : uint8_t {
  kAes128Gcm = 1,  // default: AES-NI makes both fast; 128-bit keys are ample for session keys
  kAes256Gcm = 2,
};
inline constexpr size_t kTagBytes = 16;
inline constexpr size_t kNonceBytes = 12;
inline constexpr size_t kKeyBytesMax = 32;
// Largest body one call accepts; EVP takes int lengths, and no packet comes near this.
inline constexpr size_t kAeadBodyBytesMax = size_t{1} << 24;

// Key length of the algorithm, in bytes; 0 for a value that names no algorithm.
size_t KeyBytes(AeadAlgorithm algorithm);
// True if the byte read off the wire names an algorithm this build supports.
bool IsKnownAlgorithm(uint8_t value);
const char* AlgorithmName(AeadAlgorithm algorithm);

using Nonce = std::array<uint8_t, kNonceBytes>;

// Which code runs the cipher. kFastest: the VAES path when the CPU has it, else OpenSSL EVP.
// kOpenSsl: EVP always (tests compare the two; benchmarks measure the difference).
enum class AeadBackend : uint8_t { kFastest, kOpenSsl };
using Tag = std::array<uint8_t, kTagBytes>;

// One AES-GCM key in one direction (seal or open). Move-only; frees its EVP context.
// Not thread-safe: one context serves one thread at a time (the endpoint's thread).
class AeadContext {
 public:
  enum class Direction : uint8_t { kSeal, kOpen };

  AeadContext() = default;
  ~AeadContext();
  AeadContext(AeadContext&& other) noexcept;
  AeadContext& operator=(AeadContext&& other) noexcept;
  AeadContext(const AeadContext&) = delete;
  AeadContext& operator=(const AeadContext&) = delete;

  // Runs the key schedule. key.size() must equal KeyBytes(algorithm). Returns false only on
  // out of memory (or an OpenSSL failure); the context is then unusable.
  bool Init(AeadAlgorithm algorithm, Bytes key, Direction direction,
            AeadBackend backend = AeadBackend::kFastest);
  bool ready() const { return context_ != nullptr || vaes_ != nullptr; }
  // True if packets go through the VAES path (gcm_vaes.h), false if through EVP.
  bool uses_vaes() const { return vaes_ != nullptr; }

  // Encrypts `in` into out[0, in.size()) and writes the tag. out == in.data() encrypts in place;
  // any other overlap is refused (asserted). Associated data is aad_first then aad_second
  // (either may be empty). Returns false only on an OpenSSL failure (the VAES path cannot
  // fail).
  bool Seal(const Nonce& nonce, Bytes aad_first, Bytes aad_second, Bytes in, uint8_t* out,
            Tag& tag);
  bool Seal(const Nonce& nonce, Bytes aad_first, Bytes aad_second, MutableBytes body, Tag& tag) {
    return Seal(nonce, aad_first, aad_second, Bytes(body.data(), body.size()), body.data(), tag);
  }
  // Decrypts `in` into out[0, in.size()) (out == in.data(): in place; no other overlap) and checks
  // the tag. Returns false if authentication fails; out[0, in.size()) is then zeroed, so no
  // unauthenticated plaintext is left behind (in place, the ciphertext is gone too).
  bool Open(const Nonce& nonce, Bytes aad_first, Bytes aad_second, Bytes in, uint8_t* out,
            const Tag& tag);
  bool Open(const Nonce& nonce, Bytes aad_first, Bytes aad_second, MutableBytes body,
            const Tag& tag) {
    return Open(nonce, aad_first, aad_second, Bytes(body.data(), body.size()), body.data(), tag);
  }

 private:
  void Free();
  EVP_CIPHER_CTX* context_ = nullptr;
  VaesGcmKey* vaes_ = nullptr;  // owned; null when EVP does the work
  Direction direction_ = Direction::kSeal;
};

}  // namespace squall::crypto
