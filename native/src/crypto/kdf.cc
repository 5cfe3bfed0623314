#include "crypto/kdf.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <vector>

namespace squall::crypto {

Digest Sha256(std::initializer_list<Bytes> parts) {
  Digest digest{};
  EVP_MD_CTX* context = EVP_MD_CTX_new();
  SQUALL_CRYPTO_ASSERT(context != nullptr, "EVP_MD_CTX_new failed (out of memory)");
  bool ok = EVP_DigestInit_ex(context, EVP_sha256(), nullptr) == 1;
  for (Bytes part : parts) ok = ok && EVP_DigestUpdate(context, part.data(), part.size()) == 1;
  unsigned int length = 0;
  ok = ok && EVP_DigestFinal_ex(context, digest.data(), &length) == 1;
  EVP_MD_CTX_free(context);
  SQUALL_CRYPTO_ASSERT(ok && length == kDigestBytes, "SHA-256 failed");
  return digest;
}

Digest HmacSha256(Bytes key, std::initializer_list<Bytes> parts) {
  Digest mac{};
  EVP_MAC* algorithm = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  SQUALL_CRYPTO_ASSERT(algorithm != nullptr, "OpenSSL has no HMAC");
  EVP_MAC_CTX* context = EVP_MAC_CTX_new(algorithm);
  SQUALL_CRYPTO_ASSERT(context != nullptr, "EVP_MAC_CTX_new failed (out of memory)");
  char digest_name[] = "SHA256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest_name, 0),
      OSSL_PARAM_construct_end()};
  // HMAC with an empty key is legal (HKDF-Extract with no salt); OpenSSL wants a non-null pointer.
  static constexpr uint8_t kEmpty[1] = {0};
  const uint8_t* key_data = key.empty() ? kEmpty : key.data();
  bool ok = EVP_MAC_init(context, key_data, key.size(), params) == 1;
  for (Bytes part : parts) ok = ok && EVP_MAC_update(context, part.data(), part.size()) == 1;
  size_t length = 0;
  ok = ok && EVP_MAC_final(context, mac.data(), &length, mac.size()) == 1;
  EVP_MAC_CTX_free(context);
  EVP_MAC_free(algorithm);
  SQUALL_CRYPTO_ASSERT(ok && length == kDigestBytes, "HMAC-SHA256 failed");
  return mac;
}

Digest HkdfExtract(Bytes salt, Bytes ikm) { return HmacSha256(salt, {ikm}); }

void HkdfExpand(const Digest& prk, std::initializer_list<Bytes> info_parts, MutableBytes out) {
  SQUALL_CRYPTO_ASSERT(out.size() <= 255 * kDigestBytes, "HKDF-Expand output limit");
  std::vector<uint8_t> info;
  for (Bytes part : info_parts) info.insert(info.end(), part.begin(), part.end());
  Digest block{};
  size_t block_bytes = 0;  // 0 for T(0), the empty string
  size_t written = 0;
  for (uint8_t counter = 1; written < out.size(); ++counter) {
    const uint8_t counter_byte[1] = {counter};
    block = HmacSha256(prk, {Bytes(block.data(), block_bytes), info, counter_byte});
    block_bytes = kDigestBytes;
    const size_t take = std::min(out.size() - written, kDigestBytes);
    std::copy_n(block.begin(), take, out.begin() + static_cast<std::ptrdiff_t>(written));
    written += take;
  }
  Cleanse(block);
}

bool RandomBytes(MutableBytes out) {
  SQUALL_CRYPTO_ASSERT(out.size() <= 1 << 20, "random request size limit");
  return RAND_bytes(out.data(), static_cast<int>(out.size())) == 1;
}

bool ConstantTimeEqual(Bytes a, Bytes b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

void Cleanse(MutableBytes secret) { OPENSSL_cleanse(secret.data(), secret.size()); }

}  // namespace squall::crypto
