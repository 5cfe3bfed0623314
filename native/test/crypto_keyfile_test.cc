// The key file format: valid files load; every malformed kind is refused with a message that
// names the line and the fix.
#include <unistd.h>

#include <cstdio>
#include <string>

#include "crypto_test_support.h"
#include "test.h"

using namespace squall::crypto;
using namespace squall::crypto::testing;

namespace {
const std::string kHexA = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
const std::string kHexB = std::string(62, 'a') + "01";

bool Mentions(const KeyFileResult& result, const std::string& text) {
  return result.error.find(text) != std::string::npos;
}
}  // namespace

// Proves: comments, blank lines, CRLF, tabs and upper-case hex are accepted; ids and secrets
// parse exactly; the highest id becomes the keyring's primary; FormatKeyLine round-trips.
TEST(crypto_key_file_valid) {
  const std::string text = "# squall group keys\r\n\n  squall-key v1 1 " + kHexA +
                           "\r\nsquall-key\tv1 7 " + kHexB + "\n";
  const KeyFileResult result = ParseKeyFile(text);
  CHECK_STATUS(result.status, KeyFileStatus::kOk);
  CHECK(result.error.empty());
  CHECK_EQ(result.keys.size(), size_t{2});
  if (result.keys.size() != 2) return;
  CHECK_EQ(result.keys[0].key_id, 1u);
  CHECK_EQ(static_cast<int>(result.keys[0].secret[1]), 0x11);
  CHECK_EQ(static_cast<int>(result.keys[0].secret[31]), 0xff);
  CHECK_EQ(result.keys[1].key_id, 7u);
  Keyring ring;
  CHECK_STATUS(ring.InstallAll(result.keys), KeyringStatus::kOk);
  CHECK_EQ(ring.Primary()->key_id, 7u);
  const KeyFileResult again = ParseKeyFile(FormatKeyLine(result.keys[0]));
  CHECK(again.status == KeyFileStatus::kOk && again.keys[0].secret == result.keys[0].secret);
  CHECK_STATUS(ring.Install(result.keys[0]), KeyringStatus::kDuplicateKeyId);
}

// Proves: each malformed form is refused with its own status, and the message names the line
// number and ends with a fix.
TEST(crypto_key_file_malformed_refused) {
  struct Case {
    std::string text;
    KeyFileStatus status;
    const char* mention;
  };
  const Case cases[] = {
      {"", KeyFileStatus::kNoKeys, "no key lines"},
      {"# only a comment\n\n", KeyFileStatus::kNoKeys, "no key lines"},
      {"squall-key v1 1\n", KeyFileStatus::kBadLine, "line 1"},
      {"squall-key v1 1 " + kHexA + " extra\n", KeyFileStatus::kBadLine, "5 word"},
      {"squall-secret v1 1 " + kHexA, KeyFileStatus::kBadLine, "squall-key"},
      {"squall-key v2 1 " + kHexA, KeyFileStatus::kBadVersion, "\"v2\""},
      {"squall-key v1 0 " + kHexA, KeyFileStatus::kBadKeyId, "\"0\""},
      {"squall-key v1 -3 " + kHexA, KeyFileStatus::kBadKeyId, "\"-3\""},
      {"squall-key v1 4294967296 " + kHexA, KeyFileStatus::kBadKeyId, "4294967296"},
      {"squall-key v1 abc " + kHexA, KeyFileStatus::kBadKeyId, "abc"},
      {"squall-key v1 1 " + kHexA.substr(1), KeyFileStatus::kBadSecret, "63 characters"},
      {"squall-key v1 1 " + kHexA + "0", KeyFileStatus::kBadSecret, "65 characters"},
      {"squall-key v1 1 " + kHexA.substr(0, 63) + "g", KeyFileStatus::kBadSecret, "hex"},
      {"squall-key v1 1 " + std::string(64, '0'), KeyFileStatus::kZeroSecret, "all zeros"},
      {"squall-key v1 3 " + kHexA + "\n# x\nsquall-key v1 3 " + kHexB,
       KeyFileStatus::kDuplicateKeyId, "line 3"},
  };
  for (const Case& c : cases) {
    const KeyFileResult result = ParseKeyFile(c.text, "test.key");
    CHECK_STATUS(result.status, c.status);
    CHECK(result.keys.empty());
    if (!Mentions(result, c.mention) || !Mentions(result, "test.key line") ||
        !Mentions(result, "Fix:")) {
      std::fprintf(stderr, "  unexpected message: %s\n", result.error.c_str());
      CHECK(false);
    }
  }
}

// Proves: LoadKeyFile reads a real file and reports a missing one clearly.
TEST(crypto_key_file_load_from_disk) {
  char path[] = "/tmp/squall-crypto-test-XXXXXX";
  const int fd = mkstemp(path);
  CHECK(fd >= 0);
  if (fd < 0) return;
  const std::string text = "squall-key v1 42 " + kHexB + "\n";
  CHECK_EQ(write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
  close(fd);
  const KeyFileResult loaded = LoadKeyFile(path);
  CHECK_STATUS(loaded.status, KeyFileStatus::kOk);
  CHECK(loaded.keys.size() == 1 && loaded.keys[0].key_id == 42u);
  unlink(path);
  const KeyFileResult missing = LoadKeyFile(path);
  CHECK_STATUS(missing.status, KeyFileStatus::kUnreadable);
  CHECK(Mentions(missing, path) && Mentions(missing, "Fix:"));
}
