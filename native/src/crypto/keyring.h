#pragma once
// Group secrets: the key file format, its parser, and the keyring an endpoint consults during
// handshakes. The group secret never encrypts traffic itself; it only authenticates handshakes
// and seeds the per-session key derivation (see README.md, "Key schedule").
#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "crypto/crypto_common.h"
#include "crypto/kdf.h"

namespace squall::crypto {

inline constexpr size_t kGroupSecretBytes = 32;

// One group secret and its id. The id travels in handshakes so the receiver picks the right
// secret; 0 is reserved (never valid).
struct GroupKey {
  uint32_t key_id = 0;
  std::array<uint8_t, kGroupSecretBytes> secret{};
  GroupKey() = default;
  GroupKey(const GroupKey&) = default;
  GroupKey& operator=(const GroupKey&) = default;
  ~GroupKey() { Cleanse(secret); }  // every copy wipes itself (parser results, keyring input)
};

// Key file, UTF-8 text, one key per line:
//   squall-key v1 <key-id> <64 hex digits>
// <key-id> is decimal in [1, 4294967295]; the 64 hex digits (either case) are the 32-byte secret.
// Blank lines and lines starting with '#' are ignored. Ids must be unique. At least one key.
// An all-zero secret is refused (a placeholder, not a secret).
enum class KeyFileStatus : uint8_t {
  kOk,
  kUnreadable,      // the file could not be opened or read
  kNoKeys,          // nothing but blank lines and comments
  kBadLine,         // not "squall-key v1 <key-id> <hex>"
  kBadVersion,      // "squall-key" followed by a version this build does not read
  kBadKeyId,        // id not a decimal number in [1, 4294967295]
  kBadSecret,       // not exactly 64 hex digits
  kZeroSecret,      // all-zero secret
  kDuplicateKeyId,  // the same id twice
};

struct KeyFileResult {
  KeyFileStatus status = KeyFileStatus::kOk;
  std::string error;  // empty when ok; otherwise what, where (line), and the fix
  std::vector<GroupKey> keys;
};

KeyFileResult ParseKeyFile(std::string_view text, std::string_view source_name = "key file");
KeyFileResult LoadKeyFile(const std::string& path);
// Renders one key as a key-file line (for tools and tests).
std::string FormatKeyLine(const GroupKey& key);

// A group key with the secrets derived from it, and how long it is accepted.
struct KeyringEntry {
  uint32_t key_id = 0;
  // HMAC key for the hello messages: HKDF-Expand(PRK_G, "squall handshake mac v1" || key_id).
  Digest handshake_mac_key{};
  // Input to every session's key derivation: HKDF-Expand(PRK_G, "squall session base v1" || id).
  Digest session_base_key{};
  // Handshakes naming this key are accepted while now_ms < accept_until_ms.
  uint64_t accept_until_ms = std::numeric_limits<uint64_t>::max();
  KeyringEntry() = default;
  KeyringEntry(const KeyringEntry&) = default;
  KeyringEntry& operator=(const KeyringEntry&) = default;
  ~KeyringEntry() {
    Cleanse(handshake_mac_key);
    Cleanse(session_base_key);
  }
};

enum class KeyringStatus : uint8_t { kOk, kDuplicateKeyId, kZeroKeyId, kFull };

// The keys one endpoint accepts. Time is passed in (milliseconds on any monotonic clock the
// caller owns); the keyring reads no clock. Not thread-safe: owned by the endpoint's thread.
class Keyring {
 public:
  static constexpr size_t kKeysMax = 16;  // a rotation needs 2; the rest is operator slack

  Keyring() { entries_.reserve(kKeysMax); }  // no reallocation leaves stale copies behind
  ~Keyring() = default;
  Keyring(const Keyring&) = delete;
  Keyring& operator=(const Keyring&) = delete;

  // Pointers returned by Primary() and FindAccepted() stay valid until the next Install,
  // Rotate or PruneExpired; handshakes copy what they need, so none is held across calls.

  // Installs every key of a parsed key file; the highest key id becomes primary.
  KeyringStatus InstallAll(const std::vector<GroupKey>& keys);
  // Installs one key, accepted indefinitely. The first key installed becomes primary.
  KeyringStatus Install(const GroupKey& key);
  // Installs new_key as primary (new client handshakes use it) and limits every other key to
  // now_ms + grace_ms. Sessions already established keep their session keys and keep working;
  // the transport should re-handshake them under the new key before the grace ends.
  KeyringStatus Rotate(const GroupKey& new_key, uint64_t now_ms, uint64_t grace_ms);
  // Forgets keys whose grace has ended (wiping their derived secrets).
  void PruneExpired(uint64_t now_ms);

  // The key new client handshakes use; nullptr if the keyring is empty.
  const KeyringEntry* Primary() const;
  // The key a peer's handshake names, if it is still accepted at now_ms; else nullptr.
  const KeyringEntry* FindAccepted(uint32_t key_id, uint64_t now_ms) const;
  size_t size() const { return entries_.size(); }

 private:
  std::vector<KeyringEntry> entries_;
  uint32_t primary_key_id_ = 0;
};

}  // namespace squall::crypto
