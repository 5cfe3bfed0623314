#include "crypto/keyring.h"

#include <algorithm>
#include <fstream>
#include <sstream>

namespace squall::crypto {

namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::vector<std::string_view> SplitWords(std::string_view line) {
  std::vector<std::string_view> words;
  size_t at = 0;
  while (at < line.size()) {
    while (at < line.size() && (line[at] == ' ' || line[at] == '\t')) ++at;
    size_t end = at;
    while (end < line.size() && line[end] != ' ' && line[end] != '\t') ++end;
    if (end > at) words.push_back(line.substr(at, end - at));
    at = end;
  }
  return words;
}

KeyFileResult Failure(KeyFileStatus status, std::string_view source, size_t line_number,
                      const std::string& what, const char* fix) {
  KeyFileResult result;
  result.status = status;
  result.error = std::string(source) + " line " + std::to_string(line_number) + ": " + what +
                 ". Fix: " + fix;
  return result;
}

constexpr const char* kLineFix =
    "each key line must read \"squall-key v1 <key-id> <64 hex digits>\", e.g. "
    "\"squall-key v1 1 $(openssl rand -hex 32)\"";

}  // namespace

KeyFileResult ParseKeyFile(std::string_view text, std::string_view source_name) {
  KeyFileResult result;
  size_t line_number = 0;
  size_t at = 0;
  while (at < text.size()) {
    size_t end = text.find('\n', at);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(at, end - at);
    at = end + 1;
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    const std::vector<std::string_view> words = SplitWords(line);
    if (words.empty() || words[0].front() == '#') continue;
    if (words[0] != "squall-key" || words.size() != 4) {
      return Failure(KeyFileStatus::kBadLine, source_name, line_number,
                     "expected 4 words starting with \"squall-key\", found " +
                         std::to_string(words.size()) + " word(s)",
                     kLineFix);
    }
    if (words[1] != "v1") {
      return Failure(KeyFileStatus::kBadVersion, source_name, line_number,
                     "key format version \"" + std::string(words[1]) + "\" is not supported",
                     "this build reads \"v1\" key lines only");
    }
    uint64_t key_id = 0;
    bool id_ok = !words[2].empty() && words[2].size() <= 10;
    for (char c : words[2]) {
      id_ok = id_ok && c >= '0' && c <= '9';
      if (id_ok) key_id = key_id * 10 + static_cast<uint64_t>(c - '0');
    }
    if (!id_ok || key_id == 0 || key_id > 0xFFFFFFFFull) {
      return Failure(KeyFileStatus::kBadKeyId, source_name, line_number,
                     "key id \"" + std::string(words[2]) + "\" is not a number in [1, 4294967295]",
                     "give each key a distinct decimal id, e.g. 1, then 2 for the next rotation");
    }
    GroupKey key;
    key.key_id = static_cast<uint32_t>(key_id);
    const std::string_view hex = words[3];
    bool secret_ok = hex.size() == 2 * kGroupSecretBytes;
    for (size_t i = 0; secret_ok && i < kGroupSecretBytes; ++i) {
      const int high = HexValue(hex[2 * i]);
      const int low = HexValue(hex[2 * i + 1]);
      secret_ok = high >= 0 && low >= 0;
      if (secret_ok) key.secret[i] = static_cast<uint8_t>(high * 16 + low);
    }
    if (!secret_ok) {
      return Failure(KeyFileStatus::kBadSecret, source_name, line_number,
                     "the secret of key " + std::to_string(key_id) + " is " +
                         std::to_string(hex.size()) + " characters, not 64 hex digits",
                     "generate one with \"openssl rand -hex 32\"");
    }
    if (std::all_of(key.secret.begin(), key.secret.end(), [](uint8_t b) { return b == 0; })) {
      return Failure(KeyFileStatus::kZeroSecret, source_name, line_number,
                     "key " + std::to_string(key_id) + " is all zeros",
                     "generate a real secret with \"openssl rand -hex 32\"");
    }
    for (const GroupKey& seen : result.keys) {
      if (seen.key_id == key.key_id) {
        return Failure(KeyFileStatus::kDuplicateKeyId, source_name, line_number,
                       "key id " + std::to_string(key_id) + " appears twice",
                       "give the new key the next unused id");
      }
    }
    result.keys.push_back(key);
  }
  if (result.keys.empty()) {
    return Failure(KeyFileStatus::kNoKeys, source_name, line_number, "no key lines", kLineFix);
  }
  return result;
}

KeyFileResult LoadKeyFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream text;
  if (file) text << file.rdbuf();
  if (!file || file.bad()) {
    KeyFileResult result;
    result.status = KeyFileStatus::kUnreadable;
    result.error = "key file " + path +
                   " could not be read. Fix: check the path named in the config and that this "
                   "process may read it (the file should be mode 0600)";
    return result;
  }
  std::string contents = text.str();
  KeyFileResult result = ParseKeyFile(contents, "key file " + path);
  Cleanse(MutableBytes(reinterpret_cast<uint8_t*>(contents.data()), contents.size()));
  return result;
}

std::string FormatKeyLine(const GroupKey& key) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string line = "squall-key v1 " + std::to_string(key.key_id) + " ";
  for (uint8_t byte : key.secret) {
    line.push_back(kHex[byte >> 4]);
    line.push_back(kHex[byte & 15]);
  }
  return line;
}

KeyringStatus Keyring::Install(const GroupKey& key) {
  if (key.key_id == 0) return KeyringStatus::kZeroKeyId;
  if (entries_.size() >= kKeysMax) return KeyringStatus::kFull;
  for (const KeyringEntry& entry : entries_) {
    if (entry.key_id == key.key_id) return KeyringStatus::kDuplicateKeyId;
  }
  // PRK_G = HKDF-Extract("squall group v1", G); the two derived keys are independent, so the
  // handshake MAC key reveals nothing about the session base key and vice versa.
  Digest group_prk = HkdfExtract(Label("squall group v1"), key.secret);
  uint8_t id_bytes[4];
  StoreLe32(id_bytes, key.key_id);
  KeyringEntry entry;
  entry.key_id = key.key_id;
  HkdfExpand(group_prk, {Label("squall handshake mac v1"), id_bytes}, entry.handshake_mac_key);
  HkdfExpand(group_prk, {Label("squall session base v1"), id_bytes}, entry.session_base_key);
  Cleanse(group_prk);
  entries_.push_back(entry);
  if (primary_key_id_ == 0) primary_key_id_ = key.key_id;
  return KeyringStatus::kOk;
}

KeyringStatus Keyring::InstallAll(const std::vector<GroupKey>& keys) {
  uint32_t highest = 0;
  for (const GroupKey& key : keys) {
    const KeyringStatus status = Install(key);
    if (status != KeyringStatus::kOk) return status;
    highest = std::max(highest, key.key_id);
  }
  if (highest != 0) primary_key_id_ = highest;
  return KeyringStatus::kOk;
}

KeyringStatus Keyring::Rotate(const GroupKey& new_key, uint64_t now_ms, uint64_t grace_ms) {
  const KeyringStatus status = Install(new_key);
  if (status != KeyringStatus::kOk) return status;
  const uint64_t until_ms = grace_ms > UINT64_MAX - now_ms ? UINT64_MAX : now_ms + grace_ms;
  for (KeyringEntry& entry : entries_) {
    if (entry.key_id == new_key.key_id) continue;
    entry.accept_until_ms = std::min(entry.accept_until_ms, until_ms);
  }
  primary_key_id_ = new_key.key_id;
  return KeyringStatus::kOk;
}

void Keyring::PruneExpired(uint64_t now_ms) {
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (it->key_id != primary_key_id_ && now_ms >= it->accept_until_ms) {
      it = entries_.erase(it);
    } else {
      ++it;
    }
  }
}

const KeyringEntry* Keyring::Primary() const {
  for (const KeyringEntry& entry : entries_) {
    if (entry.key_id == primary_key_id_) return &entry;
  }
  return nullptr;
}

const KeyringEntry* Keyring::FindAccepted(uint32_t key_id, uint64_t now_ms) const {
  for (const KeyringEntry& entry : entries_) {
    if (entry.key_id == key_id) return now_ms < entry.accept_until_ms ? &entry : nullptr;
  }
  return nullptr;
}

}  // namespace squall::crypto
