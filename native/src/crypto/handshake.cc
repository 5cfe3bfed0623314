#include "crypto/handshake.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cstring>

#include "crypto/kdf.h"

namespace squall::crypto {

namespace {

constexpr size_t kNonceFieldBytes = 32;
constexpr size_t kPublicKeyBytes = 32;
constexpr uint8_t kFlagX25519 = 1;
// ClientHello offsets.
constexpr size_t kChCipher = 2, kChFlags = 3, kChKeyId = 4, kChEpoch = 8, kChReserved = 10,
                 kChSession = 12, kChClientAddress = 16, kChServerAddress = 34, kChNonce = 52,
                 kChPublic = 84, kChMac = 116;
// ServerHello offsets.
constexpr size_t kShCipher = 2, kShFlags = 3, kShKeyId = 4, kShEpoch = 8, kShReserved = 10,
                 kShSession = 12, kShNonce = 16, kShPublic = 48, kShMac = 80;
// Confirm offsets.
constexpr size_t kCfReserved = 2, kCfKeyId = 4, kCfMac = 8;
static_assert(kChMac + kDigestBytes == kClientHelloBytes);
static_assert(kShMac + kDigestBytes == kServerHelloBytes);
static_assert(kCfMac + kDigestBytes == kConfirmBytes);

bool HasHeader(Bytes message, HandshakeMessageType type, size_t size) {
  return message.size() == size && message[0] == static_cast<uint8_t>(type) &&
         message[1] == kHandshakeVersion;
}

bool IsRefuse(Bytes message) {
  return message.size() == kRefuseBytes &&
         message[0] == static_cast<uint8_t>(HandshakeMessageType::kRefuse);
}

HandshakeStatus RefuseReason(Bytes message) {
  const uint8_t reason = message[2];
  if (reason < static_cast<uint8_t>(HandshakeStatus::kMalformed) ||
      reason > static_cast<uint8_t>(HandshakeStatus::kInternal)) {
    return HandshakeStatus::kMalformed;
  }
  return static_cast<HandshakeStatus>(reason);
}

void CountFailure(CryptoCounters* counters, HandshakeStatus status) {
  switch (status) {
    case HandshakeStatus::kMalformed: ++counters->handshake_malformed; break;
    case HandshakeStatus::kUnknownKeyId: ++counters->handshake_unknown_key_id; break;
    case HandshakeStatus::kBadMac: ++counters->handshake_bad_mac; break;
    case HandshakeStatus::kCipherMismatch: ++counters->handshake_cipher_mismatch; break;
    case HandshakeStatus::kBadPeerKey: ++counters->handshake_bad_peer_key; break;
    case HandshakeStatus::kRefusedByPeer: ++counters->handshake_refused_by_peer; break;
    default: break;
  }
}

// Generates an ephemeral X25519 key pair; writes its raw public key.
EVP_PKEY* GenerateEphemeral(uint8_t* public_key) {
  EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "X25519");
  if (key == nullptr) return nullptr;
  size_t length = kPublicKeyBytes;
  if (EVP_PKEY_get_raw_public_key(key, public_key, &length) != 1 || length != kPublicKeyBytes) {
    EVP_PKEY_free(key);
    return nullptr;
  }
  return key;
}

// X25519(mine, peer). False if the peer's key is invalid (OpenSSL refuses an all-zero result,
// i.e. a low-order point) or OpenSSL fails.
bool DeriveShared(EVP_PKEY* mine, const uint8_t* peer_public, MutableBytes shared) {
  EVP_PKEY* peer =
      EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nullptr, peer_public, kPublicKeyBytes);
  if (peer == nullptr) return false;
  EVP_PKEY_CTX* context = EVP_PKEY_CTX_new(mine, nullptr);
  size_t length = shared.size();
  const bool ok = context != nullptr && EVP_PKEY_derive_init(context) == 1 &&
                  EVP_PKEY_derive_set_peer(context, peer) == 1 &&
                  EVP_PKEY_derive(context, shared.data(), &length) == 1 &&
                  length == kPublicKeyBytes;
  EVP_PKEY_CTX_free(context);
  EVP_PKEY_free(peer);
  return ok;
}

// The key schedule after both hellos are known (see handshake.h).
SessionKeys DeriveSessionKeys(AeadAlgorithm algorithm, uint32_t key_id, uint16_t epoch,
                              const Digest& session_base_key, Bytes client_hello,
                              Bytes server_hello, Bytes shared_secret, Digest& confirm_key) {
  SessionKeys keys;
  keys.algorithm = algorithm;
  keys.key_id = key_id;
  keys.epoch = epoch;
  keys.forward_secret = !shared_secret.empty();
  const Digest transcript = Sha256({client_hello, server_hello});
  keys.session_id = transcript;
  keys.client_session = LoadLe32(client_hello.data() + kChSession);
  keys.server_session = LoadLe32(server_hello.data() + kShSession);
  std::memcpy(keys.client_address.data(), client_hello.data() + kChClientAddress, 18);
  std::memcpy(keys.server_address.data(), client_hello.data() + kChServerAddress, 18);
  uint8_t salt[2 * kNonceFieldBytes];
  std::memcpy(salt, client_hello.data() + kChNonce, kNonceFieldBytes);
  std::memcpy(salt + kNonceFieldBytes, server_hello.data() + kShNonce, kNonceFieldBytes);
  // HKDF-Extract(salt, ikm) with ikm = session_base_key || shared_secret (empty without X25519).
  Digest prk = HmacSha256(salt, {session_base_key, shared_secret});
  const size_t key_bytes = KeyBytes(algorithm);
  HkdfExpand(prk, {Label("squall c2s key"), transcript},
             MutableBytes(keys.client_to_server.key.data(), key_bytes));
  HkdfExpand(prk, {Label("squall c2s salt"), transcript}, keys.client_to_server.salt);
  HkdfExpand(prk, {Label("squall s2c key"), transcript},
             MutableBytes(keys.server_to_client.key.data(), key_bytes));
  HkdfExpand(prk, {Label("squall s2c salt"), transcript}, keys.server_to_client.salt);
  HkdfExpand(prk, {Label("squall confirm"), transcript}, confirm_key);
  Cleanse(prk);
  return keys;
}

}  // namespace

EndpointAddress EndpointAddress::Ipv4(uint32_t address_host_order, uint16_t port) {
  EndpointAddress address;
  address.bytes[10] = 0xff;
  address.bytes[11] = 0xff;
  for (int i = 0; i < 4; ++i) {
    address.bytes[static_cast<size_t>(12 + i)] =
        static_cast<uint8_t>(address_host_order >> (24 - 8 * i));
  }
  address.bytes[16] = static_cast<uint8_t>(port >> 8);
  address.bytes[17] = static_cast<uint8_t>(port);
  return address;
}

const char* Describe(HandshakeStatus status) {
  switch (status) {
    case HandshakeStatus::kOk: return "handshake complete";
    case HandshakeStatus::kInProgress: return "handshake in progress";
    case HandshakeStatus::kMalformed:
      return "malformed handshake message (wrong size, type, version or epoch). Fix: run the same "
             "Squall wire version on both nodes";
    case HandshakeStatus::kUnknownKeyId:
      return "the peer named a group key id this node does not hold, or whose rotation grace "
             "period has ended. Fix: install the current key file on both nodes";
    case HandshakeStatus::kBadMac:
      return "peer does not hold the group key: the handshake MAC does not verify under this "
             "key id. Fix: give both nodes the same key file";
    case HandshakeStatus::kCipherMismatch:
      return "the two nodes are configured for different ciphers. Fix: configure the same "
             "cipher (AES-128-GCM or AES-256-GCM) on both";
    case HandshakeStatus::kBadPeerKey:
      return "the peer sent an invalid X25519 public key; handshake refused";
    case HandshakeStatus::kRefusedByPeer:
      return "the peer refused the handshake (its reason is in peer_reason)";
    case HandshakeStatus::kWrongState:
      return "handshake message out of order for this handshake; ignored";
    case HandshakeStatus::kInternal:
      return "random generator or OpenSSL failure on this node";
  }
  return "unknown handshake status";
}

std::vector<uint8_t> EncodeRefuse(HandshakeStatus reason, uint32_t key_id) {
  std::vector<uint8_t> message(kRefuseBytes, 0);
  message[0] = static_cast<uint8_t>(HandshakeMessageType::kRefuse);
  message[1] = kHandshakeVersion;
  message[2] = static_cast<uint8_t>(reason);
  StoreLe32(message.data() + 4, key_id);
  return message;
}

// ---------------------------------------------------------------------------------------------
// Client

ClientHandshake::ClientHandshake(const HandshakeConfig& config, CryptoCounters* counters)
    : config_(config), counters_(counters) {
  SQUALL_CRYPTO_ASSERT(counters != nullptr, "handshakes count into the endpoint's counters");
}

ClientHandshake::~ClientHandshake() {
  EVP_PKEY_free(ephemeral_);
  Cleanse(handshake_mac_key_);
  Cleanse(session_base_key_);
}

HandshakeStep ClientHandshake::Fail(HandshakeStatus status, bool tell_peer) {
  HandshakeStep step;
  step.status = status;
  CountFailure(counters_, status);
  if (tell_peer) step.reply = EncodeRefuse(status, key_id_);
  state_ = State::kFailed;
  EVP_PKEY_free(ephemeral_);
  ephemeral_ = nullptr;
  return step;
}

HandshakeStep ClientHandshake::Start(const Keyring& keyring, const ClientHelloParams& params) {
  SQUALL_CRYPTO_ASSERT(state_ == State::kIdle, "Start is called once per handshake");
  const KeyringEntry* key = keyring.Primary();
  if (key == nullptr) return Fail(HandshakeStatus::kUnknownKeyId, false);
  key_id_ = key->key_id;
  epoch_proposed_ = params.epoch_proposed;
  handshake_mac_key_ = key->handshake_mac_key;
  session_base_key_ = key->session_base_key;
  uint8_t* hello = hello_.data();
  hello[0] = static_cast<uint8_t>(HandshakeMessageType::kClientHello);
  hello[1] = kHandshakeVersion;
  hello[kChCipher] = static_cast<uint8_t>(config_.algorithm);
  hello[kChFlags] = config_.forward_secrecy ? kFlagX25519 : 0;
  StoreLe32(hello + kChKeyId, key_id_);
  StoreLe16(hello + kChEpoch, params.epoch_proposed);
  StoreLe16(hello + kChReserved, 0);
  StoreLe32(hello + kChSession, params.client_session);
  std::memcpy(hello + kChClientAddress, params.client_address.bytes.data(), 18);
  std::memcpy(hello + kChServerAddress, params.server_address.bytes.data(), 18);
  if (!RandomBytes(MutableBytes(hello + kChNonce, kNonceFieldBytes))) {
    return Fail(HandshakeStatus::kInternal, false);
  }
  if (config_.forward_secrecy) {
    ephemeral_ = GenerateEphemeral(hello + kChPublic);
    if (ephemeral_ == nullptr) return Fail(HandshakeStatus::kInternal, false);
  }
  const Digest mac =
      HmacSha256(handshake_mac_key_, {Label("squall hello client"), Bytes(hello, kChMac)});
  std::memcpy(hello + kChMac, mac.data(), kDigestBytes);
  state_ = State::kAwaitServerHello;
  HandshakeStep step;
  step.status = HandshakeStatus::kInProgress;
  step.reply.assign(hello_.begin(), hello_.end());
  return step;
}

HandshakeStep ClientHandshake::OnMessage(Bytes message) {
  if (IsRefuse(message) && state_ == State::kAwaitServerHello) {
    HandshakeStep step = Fail(HandshakeStatus::kRefusedByPeer, false);
    step.peer_reason = RefuseReason(message);
    return step;
  }
  if (state_ == State::kDone && ConstantTimeEqual(message, server_hello_)) {
    HandshakeStep step;  // our Confirm was lost: send it again
    step.status = HandshakeStatus::kInProgress;
    step.reply = confirm_;
    return step;
  }
  if (state_ != State::kAwaitServerHello) {
    HandshakeStep step;
    step.status = HandshakeStatus::kWrongState;
    return step;
  }
  if (!HasHeader(message, HandshakeMessageType::kServerHello, kServerHelloBytes) ||
      LoadLe16(message.data() + kShReserved) != 0) {
    return Fail(HandshakeStatus::kMalformed, true);
  }
  // Authenticate before believing any field: the MAC covers our hello and every byte here.
  const Digest expected = HmacSha256(handshake_mac_key_, {Label("squall hello server"), hello_,
                                                          message.first(kShMac)});
  if (!ConstantTimeEqual(expected, message.subspan(kShMac, kDigestBytes))) {
    return Fail(HandshakeStatus::kBadMac, true);
  }
  const uint16_t epoch = LoadLe16(message.data() + kShEpoch);
  const bool uses_x25519 = (message[kShFlags] & kFlagX25519) != 0;
  if (LoadLe32(message.data() + kShKeyId) != key_id_ || epoch < epoch_proposed_ ||
      (uses_x25519 && ephemeral_ == nullptr) || (message[kShFlags] & ~kFlagX25519) != 0) {
    return Fail(HandshakeStatus::kMalformed, true);
  }
  if (message[kShCipher] != static_cast<uint8_t>(config_.algorithm)) {
    return Fail(HandshakeStatus::kCipherMismatch, true);
  }
  std::array<uint8_t, 32> shared{};
  if (uses_x25519 && !DeriveShared(ephemeral_, message.data() + kShPublic, shared)) {
    return Fail(HandshakeStatus::kBadPeerKey, true);
  }
  std::copy(message.begin(), message.end(), server_hello_.begin());
  Digest confirm_key{};
  HandshakeStep step;
  step.keys = DeriveSessionKeys(config_.algorithm, key_id_, epoch, session_base_key_, hello_,
                                server_hello_, uses_x25519 ? Bytes(shared) : Bytes(), confirm_key);
  Cleanse(shared);
  const Digest transcript = step.keys->session_id;
  confirm_.assign(kConfirmBytes, 0);
  confirm_[0] = static_cast<uint8_t>(HandshakeMessageType::kConfirm);
  confirm_[1] = kHandshakeVersion;
  StoreLe32(confirm_.data() + kCfKeyId, key_id_);
  const Digest mac = HmacSha256(confirm_key, {Label("squall confirm"), transcript});
  Cleanse(confirm_key);
  std::memcpy(confirm_.data() + kCfMac, mac.data(), kDigestBytes);
  EVP_PKEY_free(ephemeral_);  // forward secrecy: the ephemeral private key is gone now
  ephemeral_ = nullptr;
  state_ = State::kDone;
  ++counters_->handshake_ok;
  step.status = HandshakeStatus::kOk;
  step.reply = confirm_;
  return step;
}

// ---------------------------------------------------------------------------------------------
// Server

ServerHandshake::ServerHandshake(const HandshakeConfig& config, CryptoCounters* counters)
    : config_(config), counters_(counters) {
  SQUALL_CRYPTO_ASSERT(counters != nullptr, "handshakes count into the endpoint's counters");
}

ServerHandshake::~ServerHandshake() { Cleanse(confirm_key_); }

HandshakeStep ServerHandshake::Fail(HandshakeStatus status, bool tell_peer) {
  HandshakeStep step;
  step.status = status;
  CountFailure(counters_, status);
  if (tell_peer) step.reply = EncodeRefuse(status, key_id_);
  state_ = State::kFailed;
  pending_keys_.reset();
  Cleanse(confirm_key_);
  return step;
}

HandshakeStep ServerHandshake::OnClientHello(Bytes message, const Keyring& keyring,
                                             uint32_t server_session, uint16_t epoch_min,
                                             uint64_t now_ms) {
  if (state_ != State::kIdle) {
    HandshakeStep step;
    step.status = HandshakeStatus::kWrongState;
    if (state_ == State::kAwaitConfirm && ConstantTimeEqual(message, hello_)) {
      step.status = HandshakeStatus::kInProgress;  // our ServerHello was lost: resend it
      step.reply = server_hello_;
    }
    return step;
  }
  if (!HasHeader(message, HandshakeMessageType::kClientHello, kClientHelloBytes) ||
      LoadLe16(message.data() + kChReserved) != 0) {
    return Fail(HandshakeStatus::kMalformed, true);
  }
  key_id_ = LoadLe32(message.data() + kChKeyId);
  const KeyringEntry* key = keyring.FindAccepted(key_id_, now_ms);
  if (key == nullptr) return Fail(HandshakeStatus::kUnknownKeyId, true);
  const Digest expected = HmacSha256(key->handshake_mac_key,
                                     {Label("squall hello client"), message.first(kChMac)});
  if (!ConstantTimeEqual(expected, message.subspan(kChMac, kDigestBytes))) {
    return Fail(HandshakeStatus::kBadMac, true);
  }
  if ((message[kChFlags] & ~kFlagX25519) != 0) return Fail(HandshakeStatus::kMalformed, true);
  if (message[kChCipher] != static_cast<uint8_t>(config_.algorithm)) {
    return Fail(HandshakeStatus::kCipherMismatch, true);
  }
  std::copy(message.begin(), message.end(), hello_.begin());
  const uint16_t epoch = std::max(LoadLe16(message.data() + kChEpoch), epoch_min);
  const bool uses_x25519 = config_.forward_secrecy && (message[kChFlags] & kFlagX25519) != 0;
  server_hello_.assign(kServerHelloBytes, 0);
  uint8_t* reply = server_hello_.data();
  reply[0] = static_cast<uint8_t>(HandshakeMessageType::kServerHello);
  reply[1] = kHandshakeVersion;
  reply[kShCipher] = static_cast<uint8_t>(config_.algorithm);
  reply[kShFlags] = uses_x25519 ? kFlagX25519 : 0;
  StoreLe32(reply + kShKeyId, key_id_);
  StoreLe16(reply + kShEpoch, epoch);
  StoreLe32(reply + kShSession, server_session);
  if (!RandomBytes(MutableBytes(reply + kShNonce, kNonceFieldBytes))) {
    return Fail(HandshakeStatus::kInternal, true);
  }
  std::array<uint8_t, 32> shared{};
  if (uses_x25519) {
    EVP_PKEY* ephemeral = GenerateEphemeral(reply + kShPublic);
    if (ephemeral == nullptr) return Fail(HandshakeStatus::kInternal, true);
    const bool ok = DeriveShared(ephemeral, hello_.data() + kChPublic, shared);
    EVP_PKEY_free(ephemeral);  // used once; forward secrecy needs it gone
    if (!ok) return Fail(HandshakeStatus::kBadPeerKey, true);
  }
  const Digest mac = HmacSha256(key->handshake_mac_key,
                                {Label("squall hello server"), hello_, Bytes(reply, kShMac)});
  std::memcpy(reply + kShMac, mac.data(), kDigestBytes);
  pending_keys_ = DeriveSessionKeys(config_.algorithm, key_id_, epoch, key->session_base_key,
                                    hello_, server_hello_,
                                    uses_x25519 ? Bytes(shared) : Bytes(), confirm_key_);
  Cleanse(shared);
  state_ = State::kAwaitConfirm;
  HandshakeStep step;
  step.status = HandshakeStatus::kInProgress;
  step.reply = server_hello_;
  return step;
}

HandshakeStep ServerHandshake::OnMessage(Bytes message) {
  if (IsRefuse(message) && state_ == State::kAwaitConfirm) {
    HandshakeStep step = Fail(HandshakeStatus::kRefusedByPeer, false);
    step.peer_reason = RefuseReason(message);
    return step;
  }
  if (state_ != State::kAwaitConfirm) {
    HandshakeStep step;
    step.status = HandshakeStatus::kWrongState;
    return step;
  }
  if (!HasHeader(message, HandshakeMessageType::kConfirm, kConfirmBytes) ||
      LoadLe16(message.data() + kCfReserved) != 0 ||
      LoadLe32(message.data() + kCfKeyId) != key_id_) {
    return Fail(HandshakeStatus::kMalformed, true);
  }
  const Digest expected =
      HmacSha256(confirm_key_, {Label("squall confirm"), pending_keys_->session_id});
  if (!ConstantTimeEqual(expected, message.subspan(kCfMac, kDigestBytes))) {
    return Fail(HandshakeStatus::kBadMac, true);
  }
  Cleanse(confirm_key_);
  state_ = State::kDone;
  ++counters_->handshake_ok;
  HandshakeStep step;
  step.status = HandshakeStatus::kOk;
  step.keys = std::move(pending_keys_);
  pending_keys_.reset();
  return step;
}

}  // namespace squall::crypto
