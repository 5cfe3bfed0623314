#include "crypto/aead.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <cstdint>
#include <cstring>
#include <new>

#include "crypto/gcm_vaes.h"

namespace squall::crypto {

size_t KeyBytes(AeadAlgorithm algorithm) {
  switch (algorithm) {
    case AeadAlgorithm::kAes128Gcm: return 16;
    case AeadAlgorithm::kAes256Gcm: return 32;
  }
  return 0;
}

bool IsKnownAlgorithm(uint8_t value) {
  return value == static_cast<uint8_t>(AeadAlgorithm::kAes128Gcm) ||
         value == static_cast<uint8_t>(AeadAlgorithm::kAes256Gcm);
}

const char* AlgorithmName(AeadAlgorithm algorithm) {
  switch (algorithm) {
    case AeadAlgorithm::kAes128Gcm: return "AES-128-GCM";
    case AeadAlgorithm::kAes256Gcm: return "AES-256-GCM";
  }
  return "unknown";
}

AeadContext::~AeadContext() { Free(); }

AeadContext::AeadContext(AeadContext&& other) noexcept
    : context_(other.context_), vaes_(other.vaes_), direction_(other.direction_) {
  other.context_ = nullptr;
  other.vaes_ = nullptr;
}

AeadContext& AeadContext::operator=(AeadContext&& other) noexcept {
  if (this != &other) {
    Free();
    context_ = other.context_;
    vaes_ = other.vaes_;
    direction_ = other.direction_;
    other.context_ = nullptr;
    other.vaes_ = nullptr;
  }
  return *this;
}

void AeadContext::Free() {
  // EVP_CIPHER_CTX_free cleanses the key schedule before freeing it.
  if (context_ != nullptr) EVP_CIPHER_CTX_free(context_);
  context_ = nullptr;
  if (vaes_ != nullptr) {
    OPENSSL_cleanse(vaes_, sizeof(VaesGcmKey));
    delete vaes_;
  }
  vaes_ = nullptr;
}

bool AeadContext::Init(AeadAlgorithm algorithm, Bytes key, Direction direction,
                       AeadBackend backend) {
  Free();
  SQUALL_CRYPTO_ASSERT(key.size() == KeyBytes(algorithm), "AEAD key length matches algorithm");
  direction_ = direction;
  if (backend == AeadBackend::kFastest && VaesGcmSupported()) {
    // No EVP context then: the VAES path serves every call (less memory per session).
    vaes_ = new (std::nothrow) VaesGcmKey;
    if (vaes_ == nullptr) return false;
    VaesGcmInit(*vaes_, key.data(), key.size());
    return true;
  }
  const EVP_CIPHER* cipher =
      algorithm == AeadAlgorithm::kAes128Gcm ? EVP_aes_128_gcm() : EVP_aes_256_gcm();
  context_ = EVP_CIPHER_CTX_new();
  if (context_ == nullptr) return false;
  const int encrypt = direction == Direction::kSeal ? 1 : 0;
  // The key schedule runs here, once; per packet only the nonce is set (key argument null).
  const bool ok = EVP_CipherInit_ex(context_, cipher, nullptr, nullptr, nullptr, encrypt) == 1 &&
                  EVP_CIPHER_CTX_ctrl(context_, EVP_CTRL_GCM_SET_IVLEN, kNonceBytes, nullptr) == 1 &&
                  EVP_CipherInit_ex(context_, nullptr, nullptr, key.data(), nullptr, encrypt) == 1;
  if (!ok) Free();
  return ok;
}

namespace {
bool FeedAad(EVP_CIPHER_CTX* context, Bytes aad) {
  if (aad.empty()) return true;
  int length = 0;
  return EVP_CipherUpdate(context, nullptr, &length, aad.data(), static_cast<int>(aad.size())) ==
         1;
}

// EVP transforms in place or between disjoint buffers; a partial overlap would corrupt the body.
bool InPlaceOrDisjoint(Bytes in, const uint8_t* out) {
  if (in.empty() || out == in.data()) return true;
  const auto a = reinterpret_cast<uintptr_t>(in.data());
  const auto b = reinterpret_cast<uintptr_t>(out);
  return a + in.size() <= b || b + in.size() <= a;
}
}  // namespace

bool AeadContext::Seal(const Nonce& nonce, Bytes aad_first, Bytes aad_second, Bytes in,
                       uint8_t* out, Tag& tag) {
  SQUALL_CRYPTO_ASSERT(ready() && direction_ == Direction::kSeal, "seal context");
  SQUALL_CRYPTO_ASSERT(in.size() <= kAeadBodyBytesMax, "AEAD body size limit");
  SQUALL_CRYPTO_ASSERT(InPlaceOrDisjoint(in, out), "seal in place or into a disjoint buffer");
  SQUALL_CRYPTO_ASSERT(aad_first.size() + aad_second.size() <= kAeadBodyBytesMax, "AAD limit");
  if (vaes_ != nullptr) {
    VaesGcmSeal(*vaes_, nonce.data(), aad_first.data(), aad_first.size(), aad_second.data(),
                aad_second.size(), in.data(), in.size(), out, tag.data());
    return true;
  }
  int length = 0;
  bool ok = EVP_EncryptInit_ex(context_, nullptr, nullptr, nullptr, nonce.data()) == 1 &&
            FeedAad(context_, aad_first) && FeedAad(context_, aad_second);
  if (ok && !in.empty()) {
    ok = EVP_EncryptUpdate(context_, out, &length, in.data(), static_cast<int>(in.size())) == 1;
  }
  uint8_t final_block[16];  // GCM emits nothing at final; EVP still wants a place to write
  ok = ok && EVP_EncryptFinal_ex(context_, final_block, &length) == 1 &&
       EVP_CIPHER_CTX_ctrl(context_, EVP_CTRL_GCM_GET_TAG, kTagBytes, tag.data()) == 1;
  return ok;
}

bool AeadContext::Open(const Nonce& nonce, Bytes aad_first, Bytes aad_second, Bytes in,
                       uint8_t* out, const Tag& tag) {
  SQUALL_CRYPTO_ASSERT(ready() && direction_ == Direction::kOpen, "open context");
  SQUALL_CRYPTO_ASSERT(InPlaceOrDisjoint(in, out), "open in place or into a disjoint buffer");
  if (in.size() > kAeadBodyBytesMax) return false;
  if (aad_first.size() + aad_second.size() > kAeadBodyBytesMax) return false;
  if (vaes_ != nullptr) {
    return VaesGcmOpen(*vaes_, nonce.data(), aad_first.data(), aad_first.size(), aad_second.data(),
                       aad_second.size(), in.data(), in.size(), out, tag.data());
  }
  Tag expected = tag;  // EVP's set-tag control takes a non-const pointer
  int length = 0;
  bool ok = EVP_DecryptInit_ex(context_, nullptr, nullptr, nullptr, nonce.data()) == 1 &&
            FeedAad(context_, aad_first) && FeedAad(context_, aad_second);
  if (ok && !in.empty()) {
    ok = EVP_DecryptUpdate(context_, out, &length, in.data(), static_cast<int>(in.size())) == 1;
  }
  ok = ok && EVP_CIPHER_CTX_ctrl(context_, EVP_CTRL_GCM_SET_TAG, kTagBytes, expected.data()) == 1;
  // DecryptFinal is where GCM compares tags (in constant time); it returns <= 0 on mismatch.
  uint8_t final_block[16];
  ok = ok && EVP_DecryptFinal_ex(context_, final_block, &length) == 1;
  if (!ok && !in.empty()) std::memset(out, 0, in.size());  // no unauthenticated plaintext
  return ok;
}

}  // namespace squall::crypto
