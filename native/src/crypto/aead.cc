#include "crypto/aead.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/modes.h>

#include <cstring>

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
    : context_(other.context_), ecb_(other.ecb_), gcm_(other.gcm_),
      small_body_bytes_max_(other.small_body_bytes_max_), direction_(other.direction_) {
  other.context_ = nullptr;
  other.ecb_ = nullptr;
  other.gcm_ = nullptr;
}

AeadContext& AeadContext::operator=(AeadContext&& other) noexcept {
  if (this != &other) {
    Free();
    context_ = other.context_;
    ecb_ = other.ecb_;
    gcm_ = other.gcm_;
    small_body_bytes_max_ = other.small_body_bytes_max_;
    direction_ = other.direction_;
    other.context_ = nullptr;
    other.ecb_ = nullptr;
    other.gcm_ = nullptr;
  }
  return *this;
}

void AeadContext::Free() {
  // EVP_CIPHER_CTX_free and CRYPTO_gcm128_release cleanse key schedule and H before freeing.
  if (context_ != nullptr) EVP_CIPHER_CTX_free(context_);
  if (gcm_ != nullptr) CRYPTO_gcm128_release(gcm_);
  if (ecb_ != nullptr) EVP_CIPHER_CTX_free(ecb_);
  context_ = nullptr;
  gcm_ = nullptr;
  ecb_ = nullptr;
}

namespace {
// The small route's block cipher and counter-mode stream: AES-ECB under the key (the GCM mode
// functions pass our ECB context back as `key`). Counter blocks increment their last 32 bits,
// big-endian, as GCM's ctr32 requires.
void EcbBlock(const unsigned char in[16], unsigned char out[16], const void* key) {
  int length = 0;
  EVP_EncryptUpdate(static_cast<EVP_CIPHER_CTX*>(const_cast<void*>(key)), out, &length, in, 16);
}

void EcbCtr32(const unsigned char* in, unsigned char* out, size_t blocks, const void* key,
              const unsigned char ivec[16]) {
  constexpr size_t kBatchBlocks = 16;
  unsigned char stream[16 * kBatchBlocks];
  uint32_t counter = (uint32_t{ivec[12]} << 24) | (uint32_t{ivec[13]} << 16) |
                     (uint32_t{ivec[14]} << 8) | uint32_t{ivec[15]};
  EVP_CIPHER_CTX* ecb = static_cast<EVP_CIPHER_CTX*>(const_cast<void*>(key));
  while (blocks > 0) {
    const size_t n = blocks < kBatchBlocks ? blocks : kBatchBlocks;
    for (size_t i = 0; i < n; ++i) {
      unsigned char* block = stream + 16 * i;
      std::memcpy(block, ivec, 12);
      const uint32_t value = counter + static_cast<uint32_t>(i);
      block[12] = static_cast<unsigned char>(value >> 24);
      block[13] = static_cast<unsigned char>(value >> 16);
      block[14] = static_cast<unsigned char>(value >> 8);
      block[15] = static_cast<unsigned char>(value);
    }
    int length = 0;
    EVP_EncryptUpdate(ecb, stream, &length, stream, static_cast<int>(16 * n));
    for (size_t i = 0; i < 16 * n; ++i) out[i] = static_cast<unsigned char>(in[i] ^ stream[i]);
    counter += static_cast<uint32_t>(n);
    blocks -= n;
    in += 16 * n;
    out += 16 * n;
  }
  OPENSSL_cleanse(stream, sizeof(stream));
}
}  // namespace

bool AeadContext::Init(AeadAlgorithm algorithm, Bytes key, Direction direction) {
  Free();
  SQUALL_CRYPTO_ASSERT(key.size() == KeyBytes(algorithm), "AEAD key length matches algorithm");
  const EVP_CIPHER* cipher =
      algorithm == AeadAlgorithm::kAes128Gcm ? EVP_aes_128_gcm() : EVP_aes_256_gcm();
  context_ = EVP_CIPHER_CTX_new();
  if (context_ == nullptr) return false;
  direction_ = direction;
  const int encrypt = direction == Direction::kSeal ? 1 : 0;
  // The key schedule runs here, once; per packet only the nonce is set (key argument null).
  bool ok = EVP_CipherInit_ex(context_, cipher, nullptr, nullptr, nullptr, encrypt) == 1 &&
            EVP_CIPHER_CTX_ctrl(context_, EVP_CTRL_GCM_SET_IVLEN, kNonceBytes, nullptr) == 1 &&
            EVP_CipherInit_ex(context_, nullptr, nullptr, key.data(), nullptr, encrypt) == 1;
  // The small route: the same key in an ECB context (both directions encrypt: counter mode),
  // and the GCM state, whose H = E_K(0) CRYPTO_gcm128_new computes through it.
  ecb_ = ok ? EVP_CIPHER_CTX_new() : nullptr;
  const EVP_CIPHER* ecb_cipher =
      algorithm == AeadAlgorithm::kAes128Gcm ? EVP_aes_128_ecb() : EVP_aes_256_ecb();
  ok = ok && ecb_ != nullptr &&
       EVP_EncryptInit_ex(ecb_, ecb_cipher, nullptr, key.data(), nullptr) == 1 &&
       EVP_CIPHER_CTX_set_padding(ecb_, 0) == 1;
  gcm_ = ok ? CRYPTO_gcm128_new(ecb_, EcbBlock) : nullptr;
  ok = ok && gcm_ != nullptr;
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
}  // namespace

bool AeadContext::SealSmall(const Nonce& nonce, Bytes aad_first, Bytes aad_second,
                            MutableBytes body, Tag& tag) {
  CRYPTO_gcm128_setiv(gcm_, nonce.data(), kNonceBytes);
  bool ok = CRYPTO_gcm128_aad(gcm_, aad_first.data(), aad_first.size()) == 0 &&
            CRYPTO_gcm128_aad(gcm_, aad_second.data(), aad_second.size()) == 0 &&
            CRYPTO_gcm128_encrypt_ctr32(gcm_, body.data(), body.data(), body.size(),
                                        EcbCtr32) == 0;
  if (ok) CRYPTO_gcm128_tag(gcm_, tag.data(), kTagBytes);
  return ok;
}

bool AeadContext::OpenSmall(const Nonce& nonce, Bytes aad_first, Bytes aad_second,
                            MutableBytes body, const Tag& tag) {
  CRYPTO_gcm128_setiv(gcm_, nonce.data(), kNonceBytes);
  // CRYPTO_gcm128_finish compares the tags with CRYPTO_memcmp (constant time): 0 if equal.
  return CRYPTO_gcm128_aad(gcm_, aad_first.data(), aad_first.size()) == 0 &&
         CRYPTO_gcm128_aad(gcm_, aad_second.data(), aad_second.size()) == 0 &&
         CRYPTO_gcm128_decrypt_ctr32(gcm_, body.data(), body.data(), body.size(),
                                     EcbCtr32) == 0 &&
         CRYPTO_gcm128_finish(gcm_, tag.data(), kTagBytes) == 0;
}

bool AeadContext::Seal(const Nonce& nonce, Bytes aad_first, Bytes aad_second, MutableBytes body,
                       Tag& tag) {
  SQUALL_CRYPTO_ASSERT(context_ != nullptr && direction_ == Direction::kSeal, "seal context");
  SQUALL_CRYPTO_ASSERT(body.size() <= kAeadBodyBytesMax, "AEAD body size limit");
  SQUALL_CRYPTO_ASSERT(aad_first.size() + aad_second.size() <= kAeadBodyBytesMax, "AAD limit");
  if (body.size() <= small_body_bytes_max_) {
    return SealSmall(nonce, aad_first, aad_second, body, tag);
  }
  int length = 0;
  bool ok = EVP_EncryptInit_ex(context_, nullptr, nullptr, nullptr, nonce.data()) == 1 &&
            FeedAad(context_, aad_first) && FeedAad(context_, aad_second);
  if (ok && !body.empty()) {
    ok = EVP_EncryptUpdate(context_, body.data(), &length, body.data(),
                           static_cast<int>(body.size())) == 1;
  }
  uint8_t final_block[16];  // GCM emits nothing at final; EVP still wants a place to write
  ok = ok && EVP_EncryptFinal_ex(context_, final_block, &length) == 1 &&
       EVP_CIPHER_CTX_ctrl(context_, EVP_CTRL_GCM_GET_TAG, kTagBytes, tag.data()) == 1;
  return ok;
}

bool AeadContext::Open(const Nonce& nonce, Bytes aad_first, Bytes aad_second, MutableBytes body,
                       const Tag& tag) {
  SQUALL_CRYPTO_ASSERT(context_ != nullptr && direction_ == Direction::kOpen, "open context");
  if (body.size() > kAeadBodyBytesMax) return false;
  if (aad_first.size() + aad_second.size() > kAeadBodyBytesMax) return false;
  if (body.size() <= small_body_bytes_max_) {
    return OpenSmall(nonce, aad_first, aad_second, body, tag);
  }
  Tag expected = tag;  // EVP's set-tag control takes a non-const pointer
  int length = 0;
  bool ok = EVP_DecryptInit_ex(context_, nullptr, nullptr, nullptr, nonce.data()) == 1 &&
            FeedAad(context_, aad_first) && FeedAad(context_, aad_second);
  if (ok && !body.empty()) {
    ok = EVP_DecryptUpdate(context_, body.data(), &length, body.data(),
                           static_cast<int>(body.size())) == 1;
  }
  ok = ok && EVP_CIPHER_CTX_ctrl(context_, EVP_CTRL_GCM_SET_TAG, kTagBytes, expected.data()) == 1;
  // DecryptFinal is where GCM compares tags (in constant time); it returns <= 0 on mismatch.
  uint8_t final_block[16];
  ok = ok && EVP_DecryptFinal_ex(context_, final_block, &length) == 1;
  return ok;
}

}  // namespace squall::crypto
